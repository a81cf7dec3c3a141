//! The collector's I/O: watches the BrokerClusters, polls their nodes, records the samples and
//! raises or resolves the collector's alerts (with an Event each).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use mooring_crds::BrokerCluster;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::lb_stats::{self, LbSample};
use super::pod_metrics;
use super::rules::{self, names};
use super::sample::{NodeSample, Sample};
use crate::alerts::{Alert, Labels};
use crate::context::Context;
use crate::controller::{object_key, pod_reference, publish_related};
use crate::drivers::cluster as cluster_driver;
use crate::drivers::{Driver, NodeTarget};
use crate::membership::node_name;
use crate::metrics::{Metrics, NodeFigures};
use crate::resources::ChildNames;

/// Time between two rounds.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Clusters polled at once.
pub const CLUSTER_CONCURRENCY: usize = 16;
/// Time limit of one driver call (the drivers' own HTTP limit is shorter; a call may make
/// several requests).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the collector until `stop`, then resolves its alerts and removes its gauges.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, stop: CancellationToken) {
    let api: Api<BrokerCluster> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let (store, writer) = reflector::store();
    let watch = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .for_each(|event| {
            if let Err(e) = event {
                warn!(error = %e, "collector: BrokerCluster watch failed (retrying)");
            }
            futures::future::ready(())
        });
    let watch_stop = stop.clone();
    let watch_task = tokio::spawn(async move {
        tokio::select! {
            _ = watch_stop.cancelled() => {},
            _ = watch => {},
        }
    });
    info!("telemetry collector started");
    let mut collector = Collector {
        ctx,
        namespace,
        drivers: HashMap::new(),
        nodes: HashMap::new(),
        cpu_unavailable: None,
    };
    let ready = tokio::select! {
        _ = stop.cancelled() => false,
        r = store.wait_until_ready() => r.is_ok(),
    };
    if ready {
        let mut ticker = tokio::time::interval(INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {},
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = collector.round(&store) => {},
            }
        }
    }
    collector.clear();
    stop.cancel();
    if let Err(e) = watch_task.await {
        warn!(error = %e, "collector watch task failed");
    }
    info!("telemetry collector stopped");
}

/// A cluster's driver, kept while its uid and [`cluster_driver::driver_key`] stay the same.
struct CachedDriver {
    uid: String,
    driver_key: String,
    /// Keeps the driver's command Pods following the newest spec.
    cluster: watch::Sender<Arc<BrokerCluster>>,
    driver: Driver,
}

struct Collector {
    ctx: Arc<Context>,
    /// The namespace polled (`None`: all).
    namespace: Option<String>,
    /// Why the resource metrics API gave no CPU figures last time (logged once per change).
    cpu_unavailable: Option<String>,
    drivers: HashMap<String, CachedDriver>,
    /// The nodes exported per cluster (to remove the gauges of nodes that left).
    nodes: HashMap<String, BTreeSet<String>>,
}

/// One expected node: where to reach it, or why it cannot be reached.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its Pod.
    pub pod: String,
    /// The broker's node name.
    pub node: String,
    /// Where to ask it, or why it cannot be asked.
    pub target: Result<NodeTarget, String>,
}

impl Collector {
    async fn round(&mut self, store: &Store<BrokerCluster>) {
        let started = Instant::now();
        let clusters: Vec<Arc<BrokerCluster>> = store
            .state()
            .into_iter()
            .filter(|bc| bc.metadata.deletion_timestamp.is_none())
            .collect();
        let keys: BTreeSet<String> = clusters.iter().map(|bc| object_key(bc)).collect();
        let gone: BTreeSet<String> = self
            .nodes
            .keys()
            .chain(self.drivers.keys())
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.forget(&key);
        }
        let Some(stores) = self.ctx.membership.stores().cloned() else {
            debug!("collector: the Pod caches are not ready yet");
            return;
        };
        let client = self.ctx.client.clone();
        let cpu = Arc::new(self.cpu_usage().await);
        let jobs = clusters.into_iter().map(|bc| {
            let key = object_key(&bc);
            let cached = self.drivers.get(&key).filter(|c| {
                c.uid == bc.uid().unwrap_or_default()
                    && c.driver_key == cluster_driver::driver_key(&bc)
            });
            if let Some(c) = cached {
                c.cluster.send_replace(bc.clone());
            }
            let cached = cached.map(|c| c.driver.clone());
            let targets = targets(&bc, &stores.of(&bc).0);
            let lb_pods = bc
                .spec
                .load_balancer
                .enabled
                .then(|| stores.lb_pods_of(&bc));
            let client = client.clone();
            let ctx = self.ctx.clone();
            let cpu = cpu.clone();
            async move {
                let (driver, fresh) = match cached {
                    Some(d) => (d, None),
                    None => {
                        let (tx, rx) = watch::channel(bc.clone());
                        match cluster_driver::for_cluster(&client, &bc, rx).await {
                            Ok(d) => (d.clone(), Some((tx, d))),
                            Err(e) => {
                                debug!(cluster = %key, error = %e, "collector: no driver yet");
                                return (bc, None, None);
                            }
                        }
                    }
                };
                let metrics = &ctx.state.metrics;
                let (mut sample, lb) =
                    futures::join!(collect(&driver, &bc, targets, metrics), async {
                        match &lb_pods {
                            Some(pods) => Some(collect_lb(pods, metrics).await),
                            None => None,
                        }
                    });
                sample.lb = lb;
                if let Some(allowance) = pod_metrics::cpu_allowance(&bc) {
                    let ns = bc.namespace().unwrap_or_default();
                    for n in &mut sample.nodes {
                        n.cpu_percent = cpu
                            .get(&format!("{ns}/{}", n.pod))
                            .and_then(|used| pod_metrics::percent(*used, allowance));
                    }
                }
                (bc, fresh, Some(sample))
            }
        });
        let results: Vec<_> = futures::stream::iter(jobs)
            .buffer_unordered(CLUSTER_CONCURRENCY)
            .collect()
            .await;
        for (bc, fresh, sample) in results {
            let key = object_key(&bc);
            if let Some((cluster, driver)) = fresh {
                self.drivers.insert(
                    key.clone(),
                    CachedDriver {
                        uid: bc.uid().unwrap_or_default(),
                        driver_key: cluster_driver::driver_key(&bc),
                        cluster,
                        driver,
                    },
                );
            }
            if let Some(sample) = sample {
                self.record(&key, &bc, sample).await;
            }
        }
        let metrics = &self.ctx.state.metrics;
        metrics.collector_rounds.inc();
        metrics
            .collector_duration
            .observe(started.elapsed().as_secs_f64());
    }

    /// CPU cores in use per broker Pod (`namespace/pod`), or nothing when the resource metrics API
    /// (metrics-server) does not answer.
    async fn cpu_usage(&mut self) -> HashMap<String, f64> {
        match pod_metrics::broker_cpu(&self.ctx.client, self.namespace.as_deref()).await {
            Ok(cpu) => {
                if self.cpu_unavailable.take().is_some() {
                    info!("collector: CPU figures available again (metrics.k8s.io)");
                }
                cpu
            }
            Err(e) => {
                let why = e.to_string();
                if self.cpu_unavailable.as_deref() != Some(why.as_str()) {
                    info!(error = %why, "collector: no CPU figures (is metrics-server installed?); CPU alerts cannot fire");
                    self.cpu_unavailable = Some(why);
                }
                self.ctx.state.metrics.collector_call_failed("pod_metrics");
                HashMap::new()
            }
        }
    }

    /// Exports, stores and evaluates one sample.
    async fn record(&mut self, key: &str, bc: &BrokerCluster, sample: Sample) {
        self.export(key, &sample);
        let ctx = self.ctx.clone();
        let state = &ctx.state;
        state.alerts.set_webhook(
            key,
            bc.spec.monitoring.webhook.as_ref().map(|w| w.url.as_str()),
        );
        let samples = state.samples.record(key, sample);
        let evaluation = rules::evaluate(&samples, &bc.spec.monitoring.alerts);
        let firing = state.alerts.of_cluster(key);
        for (name, labels) in rules::resolutions(&firing, &evaluation) {
            if let Some(a) = state
                .alerts
                .resolve_labelled(&state.metrics, key, &name, &labels)
            {
                info!(cluster = %key, alert = %name, ?labels, "alert resolved");
                announce(&ctx, bc, &a, false).await;
            }
        }
        for d in evaluation.firing {
            let message = d.message.clone();
            if state.alerts.fire_labelled(
                &state.metrics,
                key,
                d.name,
                &d.labels,
                d.severity,
                d.message,
            ) {
                warn!(cluster = %key, alert = d.name, labels = ?d.labels, %message, "alert firing");
                let alert = Alert {
                    cluster: key.to_string(),
                    name: d.name.to_string(),
                    labels: d.labels,
                    severity: d.severity,
                    message,
                    since: Timestamp::now(),
                };
                announce(&ctx, bc, &alert, true).await;
            }
        }
    }

    /// Sets the cluster's gauges; removes those of nodes no longer expected.
    fn export(&mut self, key: &str, sample: &Sample) {
        let metrics = &self.ctx.state.metrics;
        let now: BTreeSet<String> = sample.nodes.iter().map(|n| n.node.to_string()).collect();
        for n in &sample.nodes {
            metrics.set_node(
                key,
                &n.node,
                NodeFigures {
                    up: n.up,
                    connections: n.connections,
                    connections_limit: n.connections_limit,
                    memory_used_bytes: n.memory_used_bytes,
                    memory_limit_bytes: n.memory_limit_bytes,
                },
            );
        }
        if let Some(before) = self.nodes.insert(key.to_string(), now.clone()) {
            for left in before.difference(&now) {
                metrics.remove_node(key, left);
            }
        }
        let totals = sample.totals();
        metrics.set_cluster(key, totals.nodes_up, totals.connections);
    }

    /// Forgets a cluster that is gone: its driver, history, gauges and alerts.
    fn forget(&mut self, key: &str) {
        self.drivers.remove(key);
        let state = &self.ctx.state;
        if let Some(nodes) = self.nodes.remove(key) {
            for n in nodes {
                state.metrics.remove_node(key, &n);
            }
        }
        state.metrics.remove_cluster(key);
        state.samples.forget(key);
        for name in names::ALL {
            state.alerts.resolve(&state.metrics, key, name);
        }
        state.alerts.forget(key);
        debug!(cluster = %key, "collector forgot a cluster that is gone");
    }

    /// On stop (no longer leading): resolves the collector's alerts and removes its gauges; the
    /// histories stay for the dashboard until a replica collects again.
    fn clear(&mut self) {
        let state = &self.ctx.state;
        let keys: Vec<String> = self.nodes.keys().cloned().collect();
        for key in keys {
            if let Some(nodes) = self.nodes.remove(&key) {
                for n in nodes {
                    state.metrics.remove_node(&key, &n);
                }
            }
            state.metrics.remove_cluster(&key);
            for name in names::ALL {
                state.alerts.resolve(&state.metrics, &key, name);
            }
        }
        self.drivers.clear();
    }
}

/// The nodes `bc` should have (ordinals below `spec.replicas`; a node leaving in a scale-down is
/// not asked) and where its Pods are.
pub fn targets(bc: &BrokerCluster, pods: &[Arc<Pod>]) -> Vec<Target> {
    let names = ChildNames::new(&bc.name_any(), &bc.namespace().unwrap_or_default());
    (0..bc.spec.replicas.max(0))
        .map(|i| {
            let pod = format!("{}-{i}", names.stateful_set);
            let node = node_name(bc.spec.broker.kind, &names.cluster, i);
            let target = match pods.iter().find(|p| p.name_any() == pod) {
                None => Err(format!("Pod {pod} does not exist")),
                Some(p) => match p.status.as_ref().and_then(|s| s.pod_ip.clone()) {
                    None => Err(format!("Pod {pod} has no IP")),
                    Some(host) => Ok(NodeTarget {
                        pod: pod.clone(),
                        host,
                        node: node.clone(),
                    }),
                },
            };
            Target { pod, node, target }
        })
        .collect()
}

/// Polls one cluster: every node's figures, then the metered topics and the alarms from a node
/// that answered. Failed calls are counted in `metrics`.
pub async fn collect(
    driver: &Driver,
    bc: &BrokerCluster,
    targets: Vec<Target>,
    metrics: &Metrics,
) -> Sample {
    let at = Timestamp::now();
    let nodes = futures::future::join_all(targets.iter().map(|t| async move {
        match &t.target {
            Err(why) => NodeSample::failed(&t.pod, &t.node, why.clone()),
            Ok(target) => match call(metrics, "node_stats", driver.node_stats(target)).await {
                Ok(stats) => NodeSample::answered(&t.pod, &t.node, &stats),
                Err(e) => NodeSample::failed(&t.pod, &t.node, e),
            },
        }
    }))
    .await;
    let via = targets
        .iter()
        .zip(&nodes)
        .find(|(_, n)| n.up)
        .and_then(|(t, _)| t.target.as_ref().ok());
    let topics = &bc.spec.monitoring.metered_topics;
    let (topics, alarms) = match via {
        None => (None, None),
        Some(via) => {
            let topics = async {
                if topics.is_empty() {
                    return Some(Vec::new());
                }
                call(metrics, "topic_metrics", driver.topic_metrics(via, topics))
                    .await
                    .ok()
            };
            let alarms = async { call(metrics, "alarms", driver.alarms(via)).await.ok() };
            futures::join!(topics, alarms)
        }
    };
    Sample {
        at,
        nodes,
        topics,
        alarms,
        lb: None,
    }
}

/// Asks every HAProxy replica of a load balancer for its view of the broker servers.
pub async fn collect_lb(pods: &[Arc<Pod>], metrics: &Metrics) -> LbSample {
    let http = match crate::drivers::shared_http(lb_stats::STATS_TIMEOUT) {
        Ok(http) => http,
        Err(e) => {
            return LbSample {
                servers: Vec::new(),
                unreachable: vec![("*".into(), format!("no HTTP client: {e}"))],
            }
        }
    };
    let answers = futures::future::join_all(pods.iter().map(|p| {
        let http = http.clone();
        async move {
            let pod = p.name_any();
            match p.status.as_ref().and_then(|s| s.pod_ip.clone()) {
                None => (pod.clone(), Err(format!("Pod {pod} has no IP"))),
                Some(ip) => {
                    let port = crate::resources::load_balancer::STATS_PORT as u16;
                    let r = lb_stats::fetch(&http, &pod, &ip, port)
                        .await
                        .map_err(|e| e.to_string());
                    (pod, r)
                }
            }
        }
    }))
    .await;
    let mut out = LbSample::default();
    for (pod, answer) in answers {
        match answer {
            Ok(servers) => out.servers.extend(servers),
            Err(e) => {
                debug!(lb_pod = %pod, error = %e, "collector: load balancer stats failed");
                metrics.collector_call_failed("lb_stats");
                out.unreachable.push((pod, e));
            }
        }
    }
    out
}

/// One driver call with [`CALL_TIMEOUT`]; the error as text (and counted).
async fn call<T>(
    metrics: &Metrics,
    op: &'static str,
    f: impl std::future::Future<Output = Result<T, crate::drivers::DriverError>>,
) -> Result<T, String> {
    let result = match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("{op}: no answer within {CALL_TIMEOUT:?}"),
    };
    debug!(op, error = %result, "collector call failed");
    metrics.collector_call_failed(op);
    Err(result)
}

/// A Kubernetes Event for an alert that fired or resolved.
async fn announce(ctx: &Context, bc: &BrokerCluster, alert: &Alert, fired: bool) {
    let related = alert.labels.get("pod").map(|p| pod_reference(bc, p));
    let (type_, reason, note) = if fired {
        (
            EventType::Warning,
            "AlertFiring",
            format!(
                "{} ({}): {}",
                alert.name,
                alert.severity.as_str(),
                alert.message
            ),
        )
    } else {
        (
            EventType::Normal,
            "AlertResolved",
            format!("{} resolved{}", alert.name, describe(&alert.labels)),
        )
    };
    publish_related(ctx, bc, type_, reason, &action(alert), note, related).await;
}

/// The Event action of an alert: its name, and the broker alarm's name (kube folds Events with
/// the same action and related object into one series that keeps the first note).
fn action(alert: &Alert) -> String {
    let mut a = match alert.labels.get("alarm") {
        Some(alarm) => format!("{}:{alarm}", alert.name),
        None => alert.name.clone(),
    };
    // The API server limits an Event's action to 128 characters.
    if let Some((i, _)) = a.char_indices().nth(128) {
        a.truncate(i);
    }
    a
}

fn describe(labels: &Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" ({})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Severity;
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;
    use mooring_crds::BrokerClusterSpec;

    fn cluster(replicas: i32) -> BrokerCluster {
        let spec: BrokerClusterSpec = serde_json::from_value(serde_json::json!({
            "broker": {"kind": "emqx"},
            "replicas": replicas,
        }))
        .unwrap();
        let mut bc = BrokerCluster::new("bus", spec);
        bc.metadata.namespace = Some("iot".into());
        bc
    }

    fn pod(name: &str, ip: Option<&str>) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                pod_ip: ip.map(str::to_string),
                ..PodStatus::default()
            }),
            ..Pod::default()
        })
    }

    #[test]
    fn every_expected_node_is_a_target_or_says_why_not() {
        let bc = cluster(3);
        let pods = [
            pod("bus-0", Some("10.0.0.1")),
            pod("bus-1", None),
            pod("bus-3", Some("10.0.0.4")),
        ];
        let t = targets(&bc, &pods);
        assert_eq!(t.len(), 3);
        let first = t[0].target.as_ref().unwrap();
        assert_eq!(
            (first.pod.as_str(), first.host.as_str()),
            ("bus-0", "10.0.0.1")
        );
        assert_eq!(first.node, t[0].node);
        assert!(t[0].node.starts_with("emqx@bus-0"), "{}", t[0].node);
        assert_eq!(t[1].target.as_ref().unwrap_err(), "Pod bus-1 has no IP");
        assert_eq!(
            t[2].target.as_ref().unwrap_err(),
            "Pod bus-2 does not exist"
        );
    }

    #[test]
    fn event_actions_name_the_alarm_and_stay_short() {
        let mut a = Alert {
            cluster: "iot/bus".into(),
            name: names::BROKER_ALARM.into(),
            labels: Labels::from([("alarm".to_string(), "memory".to_string())]),
            severity: Severity::Critical,
            message: String::new(),
            since: Timestamp::UNIX_EPOCH,
        };
        assert_eq!(action(&a), "BrokerAlarm:memory");
        a.labels.insert("alarm".into(), "x".repeat(300));
        assert_eq!(action(&a).chars().count(), 128);
        assert_eq!(describe(&Labels::new()), "");
        assert_eq!(
            describe(&Labels::from([("node".to_string(), "n".to_string())])),
            " (node=n)"
        );
    }
}
