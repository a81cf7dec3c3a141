//! The monitor of one cluster: observe every node, assess, repair one thing at a time, report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::DeleteParams;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use mooring_crds::{BrokerCluster, BrokerKind};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::plan::{self, Assessment, NodeState, PodObservation, Repair, Verdict};
use super::{alert_names, RepairRecord, Report};
use crate::alerts::Severity;
use crate::broker_config::{self, ClusterNames};
use crate::context::{backoff, Context};
use crate::controller::{is_paused, object_key, pod_reference, publish, publish_related};
use crate::drivers::cluster as cluster_driver;
use crate::drivers::{Driver, NodeTarget};
use crate::resources::ChildNames;

/// How soon a stray seen for the first time is looked at again (to confirm it before joining).
const CONFIRM_DELAY: Duration = Duration::from_secs(2);
/// How soon after a repair the cluster is looked at again.
const AFTER_REPAIR_DELAY: Duration = Duration::from_secs(1);
/// Rounds without a StatefulSet after which the monitor checks whether its cluster still exists.
const MISSING_ROUNDS: u32 = 3;
/// Restarts after which a broker that is not ready counts as unable to boot.
const CRASH_LOOP_RESTARTS: i32 = 2;

/// Starts the monitor of `bc`, or hands it the newest spec if it runs already.
pub fn spawn(ctx: &Arc<Context>, bc: &Arc<BrokerCluster>) {
    let key = object_key(bc);
    let registry = &ctx.membership;
    if registry.update(&key, bc) {
        return;
    }
    let (tx, rx) = watch::channel(bc.clone());
    let stop = registry.shutdown.child_token();
    registry.insert(&key, bc.uid().unwrap_or_default(), tx, stop.clone());
    let monitor = Monitor {
        ctx: ctx.clone(),
        key,
        cluster: rx,
        stop,
        driver: None,
        stray_streak: BTreeMap::new(),
        vhosts_down_streak: BTreeMap::new(),
        mqtt_refused_streak: BTreeMap::new(),
        ghost_since: BTreeMap::new(),
        detected_at: BTreeMap::new(),
        repairs: recorded_repairs(bc),
        failures: 0,
        backoff_until: None,
        failing: None,
        previous: None,
        missing_rounds: 0,
    };
    tokio::spawn(monitor.run());
}

/// The last repairs the status records (kept across operator restarts).
fn recorded_repairs(bc: &BrokerCluster) -> BTreeMap<String, RepairRecord> {
    bc.status
        .iter()
        .flat_map(|s| &s.members)
        .filter_map(|m| {
            let time = m.last_repair_time.clone()?;
            let result = m.last_repair_result.clone().unwrap_or_default();
            Some((
                m.node.clone(),
                RepairRecord {
                    time,
                    ok: !result.contains("failed"),
                    result,
                },
            ))
        })
        .collect()
}

struct Monitor {
    ctx: Arc<Context>,
    key: String,
    cluster: watch::Receiver<Arc<BrokerCluster>>,
    stop: CancellationToken,
    /// The driver and the broker version it was made for.
    driver: Option<(String, Driver)>,
    stray_streak: BTreeMap<String, u32>,
    vhosts_down_streak: BTreeMap<String, u32>,
    mqtt_refused_streak: BTreeMap<String, u32>,
    ghost_since: BTreeMap<String, Instant>,
    /// When each node was first seen out of the cluster (for the time-to-repair metric).
    detected_at: BTreeMap<String, Instant>,
    repairs: BTreeMap<String, RepairRecord>,
    failures: u32,
    backoff_until: Option<Instant>,
    failing: Option<String>,
    previous: Option<Assessment>,
    missing_rounds: u32,
}

impl Monitor {
    async fn run(mut self) {
        info!(cluster = %self.key, "membership monitor started");
        let mut delay = Duration::ZERO;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(delay) => {},
            }
            match self.round().await {
                Some(next) => delay = next,
                None => break,
            }
        }
        self.resolve_all();
        info!(cluster = %self.key, "membership monitor stopped");
    }

    fn interval(&self) -> Duration {
        let secs = self.cluster.borrow().spec.repair.interval_seconds.max(1);
        Duration::from_secs(u64::try_from(secs).unwrap_or(5))
    }

    /// One check (and at most one repair). `None` when the cluster is gone.
    async fn round(&mut self) -> Option<Duration> {
        let bc = self.cluster.borrow().clone();
        let interval = self.interval();
        let Some(stores) = self.ctx.membership.stores() else {
            return Some(interval);
        };
        let (pods, sts) = stores.of(&bc);
        let Some(sts) = sts else {
            self.missing_rounds += 1;
            if self.missing_rounds >= MISSING_ROUNDS && self.cluster_gone(&bc).await {
                self.ctx
                    .membership
                    .remove(&self.key, &bc.uid().unwrap_or_default());
                return None;
            }
            return Some(interval);
        };
        self.missing_rounds = 0;
        if pods.is_empty() {
            // Nothing to ask yet (the StatefulSet has not created its Pods).
            return Some(interval);
        }
        let driver = match self.driver(&bc).await {
            Ok(d) => d,
            Err(message) => {
                debug!(cluster = %self.key, %message, "no driver yet");
                return Some(interval);
            }
        };
        self.ctx.state.metrics.membership_checks.inc();

        let names = ChildNames::new(&bc.name_any(), &bc.namespace().unwrap_or_default());
        let observations = observe(&driver, &bc, &names.cluster, &pods).await;
        let expected: Vec<String> = (0..bc.spec.replicas)
            .map(|i| node_name(bc.spec.broker.kind, &names.cluster, i))
            .collect();
        let now = Instant::now();
        let ghost_age: BTreeMap<String, Duration> = self
            .ghost_since
            .iter()
            .map(|(n, t)| (n.clone(), now.duration_since(*t)))
            .collect();
        let grace =
            Duration::from_secs(u64::try_from(bc.spec.repair.ghost_grace_seconds).unwrap_or(0));
        let assessment = plan::assess(&plan::Input {
            pods: &observations,
            expected: &expected,
            rollout_in_progress: rolling(&sts, bc.spec.replicas),
            repair_enabled: bc.spec.repair.enabled,
            paused: is_paused(&bc),
            backoff_left: self
                .backoff_until
                .and_then(|t| t.checked_duration_since(now))
                .filter(|d| !d.is_zero()),
            stray_streak: &self.stray_streak,
            ghost_age: &ghost_age,
            vhosts_down_streak: &self.vhosts_down_streak,
            mqtt_refused_streak: &self.mqtt_refused_streak,
            ghost_grace: grace,
        });
        self.track(&assessment, now);
        self.announce(&bc, &assessment).await;
        self.publish(&bc, assessment.clone());

        if let Some(repair) = &assessment.repair {
            self.repair(&bc, &driver, repair, &pods).await;
            self.publish(&bc, assessment.clone());
            return Some(AFTER_REPAIR_DELAY);
        }
        let first_sighting = assessment
            .members
            .iter()
            .any(|m| m.state == NodeState::Stray && self.stray_streak.get(&m.node) == Some(&1));
        if first_sighting && assessment.blocked.is_none() {
            return Some(CONFIRM_DELAY.min(interval));
        }
        Some(interval)
    }

    /// Whether the BrokerCluster is gone (or replaced by one with another uid).
    async fn cluster_gone(&self, bc: &BrokerCluster) -> bool {
        let api: Api<BrokerCluster> =
            Api::namespaced(self.ctx.client.clone(), &bc.namespace().unwrap_or_default());
        match api.get_opt(&bc.name_any()).await {
            Ok(None) => true,
            Ok(Some(now)) => now.uid() != bc.uid(),
            Err(e) => {
                debug!(cluster = %self.key, error = %e, "cannot read the cluster");
                false
            }
        }
    }

    /// The driver for the cluster's broker version, made with the credentials Secret.
    async fn driver(&mut self, bc: &BrokerCluster) -> Result<Driver, String> {
        let version = cluster_driver::driver_key(bc);
        if let Some((v, d)) = &self.driver {
            if *v == version {
                return Ok(d.clone());
            }
        }
        let driver = cluster_driver::for_cluster(&self.ctx.client, bc, self.cluster.clone())
            .await
            .map_err(|e| e.to_string())?;
        self.driver = Some((version, driver.clone()));
        Ok(driver)
    }

    /// Updates the per-node counters from a new assessment; records time to repair.
    fn track(&mut self, a: &Assessment, now: Instant) {
        let mut out_of_cluster = 0i64;
        let mut seen = BTreeSet::new();
        for m in &a.members {
            seen.insert(m.node.clone());
            match m.state {
                NodeState::Stray => {
                    *self.stray_streak.entry(m.node.clone()).or_default() += 1;
                }
                _ => {
                    self.stray_streak.remove(&m.node);
                }
            }
            if m.vhosts_down() {
                *self.vhosts_down_streak.entry(m.node.clone()).or_default() += 1;
            } else {
                self.vhosts_down_streak.remove(&m.node);
            }
            if m.fails(plan::MQTT_CHECK) {
                *self.mqtt_refused_streak.entry(m.node.clone()).or_default() += 1;
            } else {
                self.mqtt_refused_streak.remove(&m.node);
            }
            if m.state == NodeState::Ghost {
                self.ghost_since.entry(m.node.clone()).or_insert(now);
            } else {
                self.ghost_since.remove(&m.node);
            }
            match m.state {
                NodeState::Stray | NodeState::Forgotten | NodeState::Ghost => {
                    out_of_cluster += i64::from(m.state != NodeState::Ghost);
                    self.detected_at.entry(m.node.clone()).or_insert(now);
                }
                NodeState::Joined => self.repaired(&m.node, now),
                NodeState::NotReady | NodeState::Unknown => {}
            }
        }
        // A ghost that disappeared was removed.
        let gone: Vec<String> = self
            .detected_at
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for n in gone {
            self.repaired(&n, now);
        }
        self.ctx
            .state
            .metrics
            .nodes_out_of_cluster
            .get_or_create(&crate::metrics::ClusterLabels {
                cluster: self.key.clone(),
            })
            .set(out_of_cluster);
    }

    fn repaired(&mut self, node: &str, now: Instant) {
        if let Some(t) = self.detected_at.remove(node) {
            let secs = now.duration_since(t).as_secs_f64();
            self.ctx.state.metrics.time_to_repair.observe(secs);
            info!(cluster = %self.key, node, seconds = secs, "node back in the cluster");
        }
    }

    fn publish(&self, bc: &BrokerCluster, assessment: Assessment) {
        self.ctx.membership.publish(
            &self.key,
            bc,
            Report {
                assessment,
                repairs: self.repairs.clone(),
                failing: self.failing.clone(),
            },
        );
    }

    /// Events and alerts for what changed since the previous check.
    async fn announce(&mut self, bc: &BrokerCluster, a: &Assessment) {
        let before: BTreeMap<&str, NodeState> = self
            .previous
            .iter()
            .flat_map(|p| p.members.iter().map(|m| (m.node.as_str(), m.state)))
            .collect();
        let mut notes = Vec::new();
        for m in &a.members {
            if before.get(m.node.as_str()) == Some(&m.state) {
                continue;
            }
            let reason = match m.state {
                NodeState::Stray => "StrayNode",
                NodeState::Forgotten => "ForgottenNode",
                NodeState::Ghost => "GhostMember",
                _ => continue,
            };
            let related = (!m.pod.is_empty()).then(|| pod_reference(bc, &m.pod));
            notes.push((
                EventType::Warning,
                reason,
                "CheckMembership",
                format!("{}: {}", m.node, a.message),
                related,
            ));
        }
        let was_no_majority = self
            .previous
            .as_ref()
            .is_some_and(|p| p.verdict == Verdict::NoMajority);
        if a.verdict == Verdict::NoMajority && !was_no_majority {
            notes.push((
                EventType::Warning,
                "NoMajority",
                "CheckMembership",
                a.message.clone(),
                None,
            ));
        }
        let blocked_before = self.previous.as_ref().and_then(|p| p.blocked.clone());
        if let Some(b) = &a.blocked {
            if blocked_before.as_ref() != Some(b) {
                // One Event series per cause: the recorder keeps a series' first note.
                notes.push((
                    EventType::Normal,
                    "RepairWaiting",
                    b.cause,
                    b.message.clone(),
                    Some(pod_reference(bc, &b.pod)),
                ));
            }
        }
        for (type_, reason, action, note, related) in notes {
            publish_related(&self.ctx, bc, type_, reason, action, note, related).await;
        }

        let out = a
            .members
            .iter()
            .any(|m| matches!(m.state, NodeState::Stray | NodeState::Forgotten));
        self.alert(
            bc,
            alert_names::NO_MAJORITY,
            Severity::Critical,
            (a.verdict == Verdict::NoMajority).then(|| a.message.clone()),
        )
        .await;
        self.alert(
            bc,
            alert_names::INCONSISTENT,
            Severity::Warning,
            out.then(|| a.message.clone()),
        )
        .await;
        let unhealthy = a.unhealthy();
        self.alert(
            bc,
            alert_names::NODE_UNHEALTHY,
            Severity::Warning,
            unhealthy,
        )
        .await;
        self.previous = Some(a.clone());
    }

    /// Fires (`Some(message)`) or resolves (`None`) an alert, with an Event on each change.
    async fn alert(
        &self,
        bc: &BrokerCluster,
        name: &str,
        severity: Severity,
        firing: Option<String>,
    ) {
        let state = &self.ctx.state;
        match firing {
            Some(message) => {
                if state
                    .alerts
                    .fire(&state.metrics, &self.key, name, severity, message.clone())
                {
                    warn!(cluster = %self.key, alert = name, %message, "alert firing");
                    publish(
                        &self.ctx,
                        bc,
                        EventType::Warning,
                        "AlertFiring",
                        name,
                        format!("{name} ({}): {message}", severity.as_str()),
                    )
                    .await;
                }
            }
            None => {
                if state
                    .alerts
                    .resolve(&state.metrics, &self.key, name)
                    .is_some()
                {
                    info!(cluster = %self.key, alert = name, "alert resolved");
                    publish(
                        &self.ctx,
                        bc,
                        EventType::Normal,
                        "AlertResolved",
                        name,
                        format!("{name} resolved"),
                    )
                    .await;
                }
            }
        }
    }

    fn resolve_all(&self) {
        let state = &self.ctx.state;
        for a in state.alerts.of_cluster(&self.key) {
            state.alerts.resolve(&state.metrics, &self.key, &a.name);
        }
        state
            .metrics
            .nodes_out_of_cluster
            .remove(&crate::metrics::ClusterLabels {
                cluster: self.key.clone(),
            });
    }

    /// Runs one repair and records its outcome (Events, metrics, status, backoff, alert).
    async fn repair(
        &mut self,
        bc: &BrokerCluster,
        driver: &Driver,
        repair: &Repair,
        pods: &[Arc<Pod>],
    ) {
        let what = repair.describe();
        info!(cluster = %self.key, repair = %what, "repairing membership");
        let related = || Some(pod_reference(bc, repair.pod()));
        publish_related(
            &self.ctx,
            bc,
            EventType::Normal,
            "Repairing",
            repair.kind(),
            what.clone(),
            related(),
        )
        .await;
        let started = Instant::now();
        let target = |pod: &str, node: &str| NodeTarget {
            pod: pod.to_string(),
            host: pod_ip(pods, pod).unwrap_or_default(),
            node: node.to_string(),
        };
        let result = match repair {
            Repair::Join {
                pod,
                node,
                seed_pod,
                seed_node,
            } => driver
                .join(&target(pod, node), &target(seed_pod, seed_node))
                .await
                .map_err(|e| e.to_string()),
            Repair::RemoveGhost {
                node,
                via_pod,
                via_node,
            } => driver
                .remove_member(&target(via_pod, via_node), node)
                .await
                .map_err(|e| e.to_string()),
            Repair::RestartVhosts { pod, node } => driver
                .restart_vhosts(&target(pod, node))
                .await
                .map_err(|e| e.to_string()),
            Repair::RestartApp { pod, node } => driver
                .restart_app(&target(pod, node))
                .await
                .map_err(|e| e.to_string()),
            Repair::ResetForgotten { pod, node } => {
                self.reset_forgotten(bc, driver, &target(pod, node)).await
            }
        };
        let took = started.elapsed().as_secs_f64();
        let kind = repair.kind();
        self.ctx.state.metrics.repaired(kind, result.is_ok());
        let time = Time(Timestamp::now());
        match result {
            Ok(()) => {
                let summary = format!("{what}: done in {took:.1}s");
                info!(cluster = %self.key, repair = kind, seconds = took, "repair done");
                self.failures = 0;
                self.backoff_until = None;
                self.failing = None;
                self.repairs.insert(
                    repair.node().to_string(),
                    RepairRecord {
                        time,
                        result: summary.clone(),
                        ok: true,
                    },
                );
                publish_related(
                    &self.ctx,
                    bc,
                    EventType::Normal,
                    "Repaired",
                    kind,
                    summary,
                    related(),
                )
                .await;
                self.alert(bc, alert_names::REPAIR_FAILED, Severity::Warning, None)
                    .await;
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                let wait = backoff(self.failures);
                self.backoff_until = Some(Instant::now() + wait);
                let summary = format!("{what}: failed after {took:.1}s: {error}");
                warn!(cluster = %self.key, repair = kind, %error, retry_in = ?wait, "repair failed");
                self.failing = Some(error);
                self.repairs.insert(
                    repair.node().to_string(),
                    RepairRecord {
                        time,
                        result: summary.clone(),
                        ok: false,
                    },
                );
                publish_related(
                    &self.ctx,
                    bc,
                    EventType::Warning,
                    "RepairFailed",
                    kind,
                    format!("{summary}; next try in {}s", wait.as_secs()),
                    related(),
                )
                .await;
                self.alert(
                    bc,
                    alert_names::REPAIR_FAILED,
                    Severity::Warning,
                    Some(summary),
                )
                .await;
            }
        }
    }

    /// Moves the forgotten node's data aside (when it lives on a claim; an emptyDir goes with
    /// the Pod) and deletes its Pod, so that it starts at once, empty, and joins.
    async fn reset_forgotten(
        &self,
        bc: &BrokerCluster,
        driver: &Driver,
        target: &NodeTarget,
    ) -> Result<(), String> {
        if bc.spec.persistence.enabled {
            driver
                .reset_forgotten(target)
                .await
                .map_err(|e| e.to_string())?;
        }
        let api: Api<Pod> =
            Api::namespaced(self.ctx.client.clone(), &bc.namespace().unwrap_or_default());
        match api.delete(&target.pod, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(format!("cannot restart Pod {}: {e}", target.pod)),
        }
    }
}

/// Asks every ready Pod for its own view, all at once.
async fn observe(
    driver: &Driver,
    bc: &BrokerCluster,
    names: &ClusterNames,
    pods: &[Arc<Pod>],
) -> Vec<PodObservation> {
    let sts_prefix = format!("{}-", names.name);
    let kind = bc.spec.broker.kind;
    let asks = pods.iter().filter_map(|p| {
        let name = p.name_any();
        let ordinal: i32 = name.strip_prefix(&sts_prefix)?.parse().ok()?;
        let node = node_name(kind, names, ordinal);
        let ready = is_ready(p);
        let terminating = p.metadata.deletion_timestamp.is_some();
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
        // RabbitMQ refuses to boot when the cluster forgot it; EMQX boots and can be joined.
        let crash_looping = kind == BrokerKind::Rabbitmq && crash_looping(p);
        Some(async move {
            let (view, failed_checks) = match ip {
                Some(host) if ready && !terminating => {
                    let target = NodeTarget {
                        pod: name.clone(),
                        host,
                        node: node.clone(),
                    };
                    let (view, health) =
                        futures::join!(driver.cluster_view(&target), driver.health(&target));
                    let failed = health
                        .ok()
                        .map(|h| h.checks.into_iter().filter(|c| !c.ok).collect());
                    (Some(view.map_err(|e| e.to_string())), failed)
                }
                _ => (None, None),
            };
            PodObservation {
                pod: name,
                ordinal,
                node,
                ready,
                terminating,
                view,
                failed_checks,
                crash_looping,
            }
        })
    });
    let mut out = futures::future::join_all(asks).await;
    out.sort_by_key(|o| o.ordinal);
    out
}

/// The broker node name of ordinal `i`.
pub fn node_name(kind: BrokerKind, names: &ClusterNames, i: i32) -> String {
    match kind {
        BrokerKind::Emqx => broker_config::emqx::node_name(names, i),
        BrokerKind::Rabbitmq => broker_config::rabbitmq::node_name(names, i),
    }
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(pods: &[Arc<Pod>], name: &str) -> Option<String> {
    pods.iter()
        .find(|p| p.name_any() == name)
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.pod_ip.clone())
}

/// Whether the Pod's first container keeps failing: restarted at least
/// [`CRASH_LOOP_RESTARTS`] times and now backing off or terminated (not while it boots). (RabbitMQ's start script
/// exits 0 even when the broker fails to boot, so neither the exit code nor a
/// `FallbackToLogsOnError` message tells why: the restarts do.)
fn crash_looping(p: &Pod) -> bool {
    let Some(c) = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
    else {
        return false;
    };
    let state = c.state.as_ref();
    let backing_off = state
        .and_then(|s| s.waiting.as_ref())
        .is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"));
    let terminated = state.is_some_and(|s| s.terminated.is_some());
    c.restart_count >= CRASH_LOOP_RESTARTS && !c.ready && (backing_off || terminated)
}

/// Whether the StatefulSet is rolling out (a template change or a scale), readiness aside: a
/// node that cannot boot must not block its own repair.
fn rolling(sts: &StatefulSet, desired: i32) -> bool {
    let s = sts.status.clone().unwrap_or_default();
    let observed =
        s.observed_generation.is_some() && s.observed_generation == sts.metadata.generation;
    let current = s.current_revision.is_some() && s.current_revision == s.update_revision;
    !observed || !current || s.updated_replicas.unwrap_or(0) < desired || s.replicas != desired
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodStatus,
    };

    fn sts(status: StatefulSetStatus) -> StatefulSet {
        let mut s = StatefulSet::default();
        s.metadata.generation = Some(2);
        s.status = Some(status);
        s
    }

    #[test]
    fn a_rollout_is_a_revision_or_scale_change_not_an_unready_pod() {
        let settled = StatefulSetStatus {
            observed_generation: Some(2),
            current_revision: Some("r1".into()),
            update_revision: Some("r1".into()),
            replicas: 3,
            updated_replicas: Some(3),
            ready_replicas: Some(2),
            ..StatefulSetStatus::default()
        };
        assert!(!rolling(&sts(settled.clone()), 3));
        let mut updating = settled.clone();
        updating.update_revision = Some("r2".into());
        assert!(rolling(&sts(updating), 3));
        assert!(rolling(&sts(settled.clone()), 4), "scaling");
        let mut unobserved = settled;
        unobserved.observed_generation = Some(1);
        assert!(rolling(&sts(unobserved), 3));
    }

    fn pod_with(restarts: i32, ready: bool, waiting: Option<&str>) -> Pod {
        Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    restart_count: restarts,
                    ready,
                    state: Some(ContainerState {
                        waiting: waiting.map(|r| ContainerStateWaiting {
                            reason: Some(r.into()),
                            ..ContainerStateWaiting::default()
                        }),
                        ..ContainerState::default()
                    }),
                    last_state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 0,
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn a_broker_that_keeps_failing_to_boot_is_crash_looping() {
        assert!(crash_looping(&pod_with(3, false, Some("CrashLoopBackOff"))));
        assert!(
            !crash_looping(&pod_with(1, false, Some("CrashLoopBackOff"))),
            "one crash"
        );
        assert!(!crash_looping(&pod_with(5, true, None)), "running again");
        assert!(!crash_looping(&pod_with(5, false, None)), "booting");
        assert!(!crash_looping(&Pod::default()));
    }
}
