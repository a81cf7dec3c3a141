//! A RabbitMQ BrokerCluster on a devcluster with the operator in-process, and what the
//! membership tests and the repair benchmark do to it: reset a node to standalone, kill its VM,
//! check that MQTT messages cross the cluster.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mooring_crds::{BrokerCluster, MemberStatus};
use mooring_operator::context::State;
use mooring_operator::controller::Scope;
use mooring_operator::leader::LeaseConfig;
use mooring_operator::pod_command;
use mooring_operator::resources::load_balancer::LbImages;
use mooring_operator::runner::lead_and_control;
use tokio_util::sync::CancellationToken;

use super::Devcluster;

pub const NS: &str = "members";
pub const POLL: Duration = Duration::from_millis(500);
/// Time allowed for a repair to show, from the moment it is possible.
pub const REPAIR_WITHIN: Duration = Duration::from_secs(150);

pub struct Env {
    pub dc: Devcluster,
    pub client: Client,
    pub clusters: Api<BrokerCluster>,
    pub state: Arc<State>,
}

pub fn node(cluster: &str, ordinal: u32) -> String {
    format!("rabbit@{cluster}-{ordinal}.{cluster}-headless.{NS}.svc.cluster.local")
}

pub fn condition(bc: &BrokerCluster, type_: &str) -> Option<(String, String, String)> {
    bc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub fn members(bc: &BrokerCluster) -> Vec<MemberStatus> {
    bc.status
        .as_ref()
        .map(|s| s.members.clone())
        .unwrap_or_default()
}

pub fn member_state(bc: &BrokerCluster, pod: &str) -> Option<String> {
    members(bc)
        .into_iter()
        .find(|m| m.pod == pod)
        .map(|m| m.state)
}

/// Ready, membership consistent, and every expected node Joined.
pub fn healthy(bc: &BrokerCluster) -> bool {
    let joined = members(bc).iter().filter(|m| m.state == "Joined").count();
    condition(bc, "Ready").is_some_and(|c| c.0 == "True")
        && condition(bc, "MembershipConsistent").is_some_and(|c| c.0 == "True")
        && i32::try_from(joined).ok() == Some(bc.spec.replicas)
}

impl Env {
    pub async fn start(
        tag: &str,
    ) -> (
        Self,
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        // The in-process operator's logs, shown with the test's output (RUST_LOG overrides).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("RUST_LOG")
                    .unwrap_or_else(|_| "mooring_operator=info,kube=warn".into()),
            ))
            .with_test_writer()
            .try_init();
        let dc = Devcluster::up(tag);
        let client = dc.client().await;
        mooring_tests::install_crd(&client)
            .await
            .expect("install the CRD");
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": NS}}))
            .expect("a namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create the namespace");
        let state = State::new();
        let stop = CancellationToken::new();
        let operator = {
            let (client, stop, state) = (client.clone(), stop.clone(), state.clone());
            let lease = LeaseConfig {
                name: "mooring-operator".into(),
                namespace: NS.into(),
                identity: "membership-test".into(),
                duration: Duration::from_secs(5),
            };
            let scope = Scope {
                namespaces: vec![NS.into()],
                // devcluster's images.yaml runs `mooring` images with this build's binary.
                lb_images: LbImages {
                    haproxy: "haproxy:2.6".into(),
                    agent: "mooring".into(),
                },
                ..Scope::default()
            };
            tokio::spawn(async move { lead_and_control(client, state, lease, scope, &stop).await })
        };
        let clusters = Api::namespaced(client.clone(), NS);
        (
            Self {
                dc,
                client,
                clusters,
                state,
            },
            stop,
            operator,
        )
    }

    /// Creates a RabbitMQ cluster (persistence on, membership checked every 3 s) and waits
    /// until it is Ready with every node Joined.
    pub async fn create(&self, name: &str, replicas: i32) -> BrokerCluster {
        self.create_with(name, replicas, 3).await
    }

    /// [`Env::create`] with membership checked every `interval_seconds`.
    pub async fn create_with(
        &self,
        name: &str,
        replicas: i32,
        interval_seconds: i64,
    ) -> BrokerCluster {
        self.create_spec(
            name,
            serde_json::json!({
                "replicas": replicas,
                "persistence": {"enabled": true, "size": "1Gi"},
                "repair": {"intervalSeconds": interval_seconds},
            }),
        )
        .await
    }

    /// Creates a RabbitMQ 3.10 cluster (anonymous MQTT allowed) with `spec` merged over that,
    /// and waits until it is Ready with every node Joined.
    pub async fn create_spec(&self, name: &str, spec: serde_json::Value) -> BrokerCluster {
        let mut full = serde_json::json!({
            "broker": {"kind": "rabbitmq", "version": "3.10.8"},
            "auth": {"allowAnonymous": true},
        });
        if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
            for (k, v) in extra {
                full.insert(k.clone(), v.clone());
            }
        }
        let replicas = full["replicas"].as_i64().unwrap_or(3);
        let bc: BrokerCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "mooring.dev/v1alpha1",
            "kind": "BrokerCluster",
            "metadata": {"name": name},
            "spec": full,
        }))
        .expect("a BrokerCluster");
        self.clusters
            .create(&PostParams::default(), &bc)
            .await
            .expect("create the BrokerCluster");
        let bc = self
            .wait(
                name,
                "Ready with every node Joined",
                Duration::from_secs(300),
                healthy,
            )
            .await;
        self.dc
            .elapsed(&format!("{name}: {replicas} nodes Ready and Joined"));
        bc
    }

    pub async fn wait(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        test: impl Fn(&BrokerCluster) -> bool,
    ) -> BrokerCluster {
        let mut last = None;
        let found = tokio::time::timeout(timeout, async {
            loop {
                if let Ok(bc) = self.clusters.get(name).await {
                    if test(&bc) {
                        return bc;
                    }
                    last = Some(bc);
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        match found {
            Ok(bc) => bc,
            Err(_) => panic!(
                "timed out after {timeout:?} waiting for {name}: {what}; last status: {}",
                serde_json::to_string_pretty(&last.and_then(|b| b.status)).unwrap_or_default()
            ),
        }
    }

    pub async fn patch(&self, name: &str, spec: serde_json::Value) {
        self.clusters
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": spec })),
            )
            .await
            .expect("patch the BrokerCluster");
    }

    /// Runs a shell script in a command Pod of the cluster (rabbitmqctl over Erlang
    /// distribution, as the operator does); it must succeed.
    pub async fn sh(&self, bc: &BrokerCluster, script: &str) -> String {
        let out = pod_command::run(
            &self.client,
            bc,
            &["sh".to_string(), "-c".to_string(), script.to_string()],
            Duration::from_secs(120),
        )
        .await
        .unwrap_or_else(|e| panic!("command pod for {script:?}: {e}"));
        assert_eq!(out.exit_code, 0, "{script}: {}", out.output);
        out.output
    }

    /// Makes node `ordinal` of `bc` a stray: it leaves the cluster (`reset`) and boots again
    /// while its peers are unreachable from its network namespace (as when DNS or the network
    /// is not ready at boot), so that peer discovery finds nobody and it forms a cluster of its
    /// own. Returns when it runs (standalone) and its peers are reachable again.
    pub async fn make_standalone(&self, bc: &BrokerCluster, ordinal: u32) {
        let name = bc.metadata.name.clone().expect("a named cluster");
        let node = node(&name, ordinal);
        let ctl = format!("rabbitmqctl -q -l -n {node}");
        self.sh(bc, &format!("{ctl} stop_app && {ctl} reset")).await;
        let netns = self.dc.netns(&self.pod(&format!("{name}-{ordinal}")).await);
        let mut peers = Vec::new();
        for i in (0..bc.spec.replicas).filter_map(|i| u32::try_from(i).ok()) {
            if i != ordinal {
                peers.push(self.pod_ip(&format!("{name}-{i}")).await);
            }
        }
        let route = |op: &str, ip: &str| {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &netns, "ip", "route", op, "unreachable"])
                .arg(format!("{ip}/32"))
                .output()
                .expect("run ip");
            assert!(
                out.status.success() || op == "del",
                "ip route {op} unreachable {ip}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ip in &peers {
            route("add", ip);
        }
        let started = tokio::time::timeout(
            Duration::from_secs(150),
            pod_command::run(
                &self.client,
                bc,
                &[
                    "sh".to_string(),
                    "-c".to_string(),
                    format!("{ctl} start_app"),
                ],
                Duration::from_secs(140),
            ),
        )
        .await;
        for ip in &peers {
            route("del", ip);
        }
        let out = started
            .expect("start_app within 150 s")
            .expect("start_app ran");
        assert_eq!(out.exit_code, 0, "start_app: {}", out.output);
    }

    /// Kills the broker VM (`beam.smp`) of Pod `pod` with SIGKILL; the devcluster agent restarts
    /// the container.
    pub async fn kill_vm(&self, pod: &str) {
        let killed = self.kill_vm_if_running(pod).await;
        assert!(
            killed > 0,
            "no beam.smp process in the network namespace of {pod}"
        );
    }

    /// [`Env::kill_vm`] without asking that a VM runs (a crash loop); returns how many it killed.
    pub async fn kill_vm_if_running(&self, pod: &str) -> usize {
        let Ok(p) = Api::<Pod>::namespaced(self.client.clone(), NS)
            .get(pod)
            .await
        else {
            return 0;
        };
        let netns = self.dc.netns(&p);
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", &netns])
            .output()
            .expect("run ip netns pids");
        let mut killed = 0;
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "beam.smp" {
                let status = std::process::Command::new("kill")
                    .args(["-9", pid])
                    .status()
                    .expect("run kill");
                killed += usize::from(status.success());
            }
        }
        killed
    }

    pub async fn pod(&self, name: &str) -> Pod {
        Api::<Pod>::namespaced(self.client.clone(), NS)
            .get(name)
            .await
            .expect("get the pod")
    }

    pub async fn pod_ip(&self, name: &str) -> String {
        self.pod(name)
            .await
            .status
            .and_then(|s| s.pod_ip)
            .expect("the pod has an IP")
    }

    /// Events about cluster `name` with `reason`, oldest first: (time, note).
    pub async fn events(
        &self,
        name: &str,
        reason: &str,
    ) -> Vec<(k8s_openapi::jiff::Timestamp, String)> {
        let mut out: Vec<_> = Api::<Event>::namespaced(self.client.clone(), NS)
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .map(|e| {
                let time = e
                    .event_time
                    .map(|t| t.0)
                    .or_else(|| e.metadata.creation_timestamp.map(|t| t.0))
                    .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
                (time, e.note.unwrap_or_default())
            })
            .collect();
        out.sort_by_key(|(t, _)| *t);
        out
    }
}

/// Whether a message published on `pub_ip` reaches a subscriber on `sub_ip` within `within`.
pub async fn crosses(sub_ip: &str, pub_ip: &str, topic: &str, within: Duration) -> bool {
    let secs = within.as_secs().max(2).to_string();
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", sub_ip, "-V", "mqttv311", "-q", "1", "-t", topic])
        .args(["-i", &format!("sub-{topic}"), "-C", "1", "-W", &secs])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run mosquitto_sub");
    let waiting = tokio::spawn(sub.wait_with_output());
    let publisher = async {
        loop {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let _ = tokio::process::Command::new("mosquitto_pub")
                .args(["-h", pub_ip, "-V", "mqttv311", "-q", "1", "-t", topic])
                .args(["-i", &format!("pub-{topic}"), "-m", "hello"])
                .output()
                .await;
        }
    };
    let out = tokio::select! {
        out = waiting => out,
        _ = publisher => unreachable!("the publisher loops"),
    };
    matches!(out, Ok(Ok(o)) if String::from_utf8_lossy(&o.stdout).trim() == "hello")
}

/// Like [`crosses`], retried until `deadline` (a subscriber that connects while the node's MQTT
/// service is still starting is refused).
pub async fn eventually_crosses(
    sub_ip: &str,
    pub_ip: &str,
    topic: &str,
    deadline: Duration,
) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if crosses(sub_ip, pub_ip, topic, Duration::from_secs(10)).await {
            return true;
        }
    }
    false
}

pub fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map(|c| c.restart_count)
        .unwrap_or(0)
}

/// A command runner for drivers used by tests only for HTTP calls.
struct NoCommands;

impl mooring_operator::drivers::CommandRunner for NoCommands {
    fn run<'a>(
        &'a self,
        _argv: Vec<String>,
        _data_of: Option<&'a str>,
        _timeout: Duration,
    ) -> futures::future::BoxFuture<
        'a,
        Result<mooring_operator::pod_command::CommandOutput, pod_command::PodCommandError>,
    > {
        Box::pin(async { Err(pod_command::PodCommandError::EmptyCommand) })
    }
}

impl Env {
    /// The RabbitMQ driver with the cluster's admin credentials.
    pub async fn driver(&self, cluster: &str) -> mooring_operator::drivers::Driver {
        use mooring_operator::drivers::{Driver, DriverConfig};
        let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(self.client.clone(), NS)
            .get(&format!("{cluster}-credentials"))
            .await
            .expect("the credentials Secret");
        let value = |k: &str| {
            String::from_utf8(secret.data.as_ref().expect("data")[k].0.clone()).expect("utf-8")
        };
        Driver::new(
            mooring_crds::BrokerKind::Rabbitmq,
            DriverConfig {
                version: "3.10.8".into(),
                username: value("admin-username"),
                password: value("admin-password"),
                http_timeout: Duration::from_secs(5),
                command_timeout: Duration::from_secs(5),
                commands: Arc::new(NoCommands),
                management_port: None,
                mqtt_port: None,
            },
        )
        .expect("a driver")
    }

    /// Which broker Pod each connected MQTT client is on, as the brokers report it (RabbitMQ's
    /// management statistics lag by up to 5 s): client id -> Pod name. Asks the first node
    /// that answers; empty when none does.
    pub async fn placement(&self, cluster: &str) -> std::collections::BTreeMap<String, String> {
        let driver = self.driver(cluster).await;
        for ordinal in 0..3u32 {
            let pod = format!("{cluster}-{ordinal}");
            let Some(host) = self.pod(&pod).await.status.and_then(|s| s.pod_ip) else {
                continue;
            };
            let via = mooring_operator::drivers::NodeTarget {
                pod,
                host,
                node: node(cluster, ordinal),
            };
            if let Some(found) = all_clients(&driver, &via).await {
                return found;
            }
        }
        std::collections::BTreeMap::new()
    }
}

async fn all_clients(
    driver: &mooring_operator::drivers::Driver,
    via: &mooring_operator::drivers::NodeTarget,
) -> Option<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    let mut page = 1;
    loop {
        let p = driver
            .clients(
                via,
                &mooring_operator::drivers::ClientQuery {
                    page,
                    limit: 500,
                    ..Default::default()
                },
            )
            .await
            .ok()?;
        for c in p.clients {
            // rabbit@<pod>.<svc>... -> <pod>
            let pod = c
                .node
                .split('@')
                .nth(1)
                .and_then(|h| h.split('.').next())
                .unwrap_or_default()
                .to_string();
            out.insert(c.client_id, pod);
        }
        if !p.has_next {
            return Some(out);
        }
        page += 1;
    }
}

/// How many servers of the `mqtt` backend HAProxy at `ip` reports UP (its Prometheus exporter).
pub async fn servers_up(ip: &str) -> usize {
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "3",
            &format!("http://{ip}:8404/metrics"),
        ])
        .output()
        .await
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.starts_with("haproxy_server_status{proxy=\"mqtt\"")
                && l.contains("state=\"UP\"")
                && l.ends_with(" 1")
        })
        .count()
}

/// A long-lived MQTT client (`mosquitto_sub`) connected to `host`; killed when dropped.
pub fn mqtt_client(host: &str, id: &str) -> tokio::process::Child {
    tokio::process::Command::new("mosquitto_sub")
        .args(["-h", host, "-V", "mqttv311", "-q", "1", "-i", id])
        .args(["-t", &format!("lb/{id}"), "-k", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run mosquitto_sub")
}
