//! Commands against a broker cluster through a command Pod (`mooring_operator::pod_command`), end
//! to end on a devcluster: the operator's controller (in-process) runs a 3-node RabbitMQ
//! BrokerCluster; `rabbitmqctl cluster_status` run from a command Pod over Erlang distribution
//! sees all three nodes running; a failing command returns its exit code and output; a command
//! that overruns its timeout is reported; no command Pod is left behind. Then a LoadBalancer
//! Service in front of the brokers answers MQTT on 127.0.0.1 through devcluster's forwarder.
//!
//! Needs root, the control-plane binaries and Debian's `rabbitmq-server` (as `pods.rs`). The
//! devcluster has its own state directory, ports, bridge, name prefixes and pod network.

use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use mooring_crds::BrokerCluster;
use mooring_operator::context::State;
use mooring_operator::controller::Scope;
use mooring_operator::leader::LeaseConfig;
use mooring_operator::pod_command::{self, PodCommandError};
use mooring_operator::runner::lead_and_control;
use tokio_util::sync::CancellationToken;

mod support;
use support::{wait_for_every, Devcluster};

const NS: &str = "cmd";
const CLUSTER: &str = "bus";
/// How often `wait_for_every` polls.
const POLL: Duration = Duration::from_millis(500);

fn ready(bc: &BrokerCluster) -> bool {
    bc.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn argv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

async fn command_pods(client: &Client) -> Vec<String> {
    Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels("app.kubernetes.io/component=command"))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmqctl_runs_in_a_command_pod_over_erlang_distribution() {
    let dc = Devcluster::up("cmd");
    let client = dc.client().await;
    mooring_tests::install_crd(&client)
        .await
        .expect("install the CRD");
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).expect("a namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create the namespace");

    let stop = CancellationToken::new();
    let operator = {
        let (client, stop) = (client.clone(), stop.clone());
        let lease = LeaseConfig {
            name: "mooring-operator".into(),
            namespace: NS.into(),
            identity: "command-pod-test".into(),
            duration: Duration::from_secs(5),
        };
        let scope = Scope {
            namespaces: vec![NS.into()],
            ..Scope::default()
        };
        tokio::spawn(
            async move { lead_and_control(client, State::new(), lease, scope, &stop).await },
        )
    };

    let clusters: Api<BrokerCluster> = Api::namespaced(client.clone(), NS);
    let bc: BrokerCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "mooring.dev/v1alpha1",
        "kind": "BrokerCluster",
        "metadata": {"name": CLUSTER},
        "spec": {"broker": {"kind": "rabbitmq", "version": "3.10.8"}, "replicas": 3,
                 "auth": {"allowAnonymous": true}},
    }))
    .expect("a BrokerCluster");
    clusters
        .create(&PostParams::default(), &bc)
        .await
        .expect("create the BrokerCluster");
    let bc = wait_for_every(
        POLL,
        "the cluster Ready",
        Duration::from_secs(240),
        || async { clusters.get(CLUSTER).await.ok().filter(ready) },
    )
    .await;
    dc.elapsed("BrokerCluster Ready");

    // cluster_status from outside the brokers, over Erlang distribution.
    let node = |ordinal: u32| {
        format!("rabbit@{CLUSTER}-{ordinal}.{CLUSTER}-headless.{NS}.svc.cluster.local")
    };
    let t = Instant::now();
    let status = pod_command::run(
        &client,
        &bc,
        &argv(&[
            "rabbitmqctl",
            "-q",
            "-l",
            "-n",
            &node(0),
            "cluster_status",
            "--formatter",
            "json",
        ]),
        Duration::from_secs(90),
    )
    .await
    .expect("cluster_status ran");
    let took = t.elapsed();
    dc.elapsed(&format!(
        "cluster_status in a command pod: {took:?}, {} bytes of output",
        status.output.len()
    ));
    assert_eq!(status.exit_code, 0, "{status:?}");
    assert!(!status.truncated, "{status:?}");
    let json: serde_json::Value = serde_json::from_str(status.output.trim())
        .unwrap_or_else(|e| panic!("cluster_status prints JSON ({e}): {}", status.output));
    let mut running: Vec<String> = json["running_nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("running_nodes: {json}"))
        .iter()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect();
    running.sort();
    assert_eq!(running, [node(0), node(1), node(2)], "{json}");

    // A command that fails: its exit code and its output.
    let t = Instant::now();
    let failed = pod_command::run(
        &client,
        &bc,
        &argv(&[
            "rabbitmqctl",
            "-l",
            "-n",
            // A host that resolves, a node name its epmd does not know: fails at once (an
            // unresolvable host makes the CLI retry for ~50 s).
            &format!("nonexistent@{CLUSTER}-0.{CLUSTER}-headless.{NS}.svc.cluster.local"),
            "status",
        ]),
        Duration::from_secs(90),
    )
    .await
    .expect("the failing command ran");
    dc.elapsed(&format!(
        "a failing command in {:?}: exit {}: {:?}",
        t.elapsed(),
        failed.exit_code,
        failed.output.lines().next().unwrap_or_default()
    ));
    assert_ne!(failed.exit_code, 0, "{failed:?}");
    assert!(!failed.output.trim().is_empty(), "{failed:?}");

    // A command that overruns its time limit.
    let t = Instant::now();
    let overrun = pod_command::run(
        &client,
        &bc,
        &argv(&["sleep", "60"]),
        Duration::from_secs(3),
    )
    .await;
    assert!(
        matches!(overrun, Err(PodCommandError::Timeout { .. })),
        "{overrun:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    dc.elapsed(&format!("timeout reported: {}", overrun.unwrap_err()));

    // Every command Pod is deleted.
    wait_for_every(POLL, "no command pods", Duration::from_secs(30), || async {
        command_pods(&client).await.is_empty().then_some(())
    })
    .await;
    dc.elapsed("command pods deleted");

    // A LoadBalancer Service in front of the brokers answers on 127.0.0.1 (like `minikube
    // tunnel`): MQTT through the forwarder reaches the cluster.
    let lb_port = mooring_localkube::components::free_ports::<1>().expect("a free port")[0];
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bus-lb"},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app.kubernetes.io/instance": CLUSTER, "app.kubernetes.io/component": "broker"},
            "ports": [{"name": "mqtt", "port": lb_port, "targetPort": 1883}],
        },
    }))
    .expect("a Service");
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    services
        .create(&PostParams::default(), &svc)
        .await
        .expect("create the LoadBalancer Service");
    wait_for_every(
        POLL,
        "ingress 127.0.0.1",
        Duration::from_secs(30),
        || async {
            let s = services.get("bus-lb").await.ok()?;
            let ingress = s.status?.load_balancer?.ingress?;
            ingress
                .iter()
                .any(|i| i.ip.as_deref() == Some("127.0.0.1"))
                .then_some(())
        },
    )
    .await;
    // The subscriber and the publisher may land on different nodes (round robin): the message
    // crosses the cluster. A subscriber that could not connect yet is started again.
    let port = lb_port.to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let mut received = false;
    while !received && Instant::now() < deadline {
        let sub = tokio::process::Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv311", "-q", "1"])
            .args(["-i", "lb-sub", "-t", "lb/test", "-C", "1", "-W", "15"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run mosquitto_sub");
        let waiting = tokio::spawn(sub.wait_with_output());
        let publisher = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = tokio::process::Command::new("mosquitto_pub")
                    .args(["-h", "127.0.0.1", "-p", &port, "-V", "mqttv311", "-q", "1"])
                    .args(["-i", "lb-pub", "-t", "lb/test", "-m", "through-lb"])
                    .output()
                    .await;
            }
        };
        let out = tokio::select! {
            out = waiting => out,
            _ = publisher => unreachable!("the publisher loops"),
        };
        if let Ok(Ok(out)) = out {
            last = format!(
                "{} {}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            received = String::from_utf8_lossy(&out.stdout).trim() == "through-lb";
        }
    }
    assert!(
        received,
        "a subscriber behind 127.0.0.1:{lb_port} got the message (last attempt: {last:?})"
    );
    dc.elapsed("MQTT through the LoadBalancer forwarder on 127.0.0.1");

    stop.cancel();
    operator
        .await
        .expect("operator task")
        .expect("the operator stopped cleanly");
}
