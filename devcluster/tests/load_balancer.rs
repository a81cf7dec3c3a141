//! The sticky MQTT load balancer end to end on a devcluster: the operator (in-process) runs a
//! 3-node RabbitMQ cluster with `spec.loadBalancer` on; two HAProxy Pods (Debian's haproxy) with
//! Mooring's agent (this build's `mooring` binary) sit in front; mosquitto clients connect to
//! the HAProxy Pods and the brokers say where each client landed.
//!
//! 1. 20 client ids x 3 reconnects: every id always lands on the same node; ids use all nodes.
//! 2. The second HAProxy replica sends every id to the same node (shared stick table).
//! 3. Garbage bytes and an HTTP request are rejected.
//! 4. Killing one broker moves only its clients; the others stay where they were.
//! 5. A stray node receives no new clients until it is rejoined.
//!
//! Needs root, the control-plane binaries, Debian's `rabbitmq-server` and `haproxy`, and the
//! `mooring` binary next to `devcluster` (`cargo build -p mooring-operator`; `cargo test
//! --workspace` builds it).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

mod support;
use support::brokers::*;
use support::wait_for_every;

const CLUSTER: &str = "lbus";

/// Connects `ids` through `host`, waits until the brokers list all of them, returns where each
/// landed and the clients (dropping them disconnects).
async fn connect_all(
    env: &Env,
    host: &str,
    ids: &[String],
) -> (BTreeMap<String, String>, Vec<tokio::process::Child>) {
    let clients: Vec<_> = ids.iter().map(|id| mqtt_client(host, id)).collect();
    let wanted: BTreeSet<&String> = ids.iter().collect();
    let placed = wait_for_every(
        Duration::from_secs(1),
        "the brokers list every client",
        Duration::from_secs(60),
        || async {
            let p = env.placement(CLUSTER).await;
            let found: BTreeMap<String, String> = p
                .into_iter()
                .filter(|(id, _)| wanted.contains(id))
                .collect();
            (found.len() == wanted.len()).then_some(found)
        },
    )
    .await;
    (placed, clients)
}

/// Waits until the brokers list none of `ids` any more.
async fn all_gone(env: &Env, ids: &[String]) {
    wait_for_every(
        Duration::from_secs(1),
        "the clients disconnected",
        Duration::from_secs(60),
        || async {
            let p = env.placement(CLUSTER).await;
            ids.iter().all(|id| !p.contains_key(id)).then_some(())
        },
    )
    .await;
}

/// Sends `bytes` to `host:1883` and returns what came back before the LB closed the connection.
fn probe(host: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect((host, 1883)).expect("connect to the LB");
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("a read timeout");
    s.write_all(bytes).expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset is a rejection too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the LB neither answered nor closed: {e}"),
        }
    }
}

/// How many servers of the `mqtt` backend HAProxy at `ip` reports UP (its Prometheus exporter).
async fn servers_up(ip: &str) -> usize {
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

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_balancer_is_sticky_by_client_id_and_follows_membership() {
    let (env, stop, operator) = Env::start("lbal").await;
    env.create_spec(
        CLUSTER,
        serde_json::json!({
            "replicas": 3,
            "loadBalancer": {"enabled": true, "replicas": 2},
            "repair": {"intervalSeconds": 3},
        }),
    )
    .await;
    let lb_pods = [format!("{CLUSTER}-lb-0"), format!("{CLUSTER}-lb-1")];
    for pod in &lb_pods {
        wait_for_every(
            Duration::from_secs(1),
            "the HAProxy Pod ready",
            Duration::from_secs(120),
            || async {
                let p = env.pod(pod).await;
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                ready.then_some(())
            },
        )
        .await;
    }
    let lb0 = env.pod_ip(&lb_pods[0]).await;
    let lb1 = env.pod_ip(&lb_pods[1]).await;
    for ip in [&lb0, &lb1] {
        wait_for_every(
            Duration::from_secs(1),
            "HAProxy sees every broker up",
            Duration::from_secs(90),
            || async { (servers_up(ip).await == 3).then_some(()) },
        )
        .await;
    }
    env.dc.elapsed("both HAProxy Pods ready, every broker up");

    // 1. Stickiness across reconnects, spread over the nodes.
    let sticky = ids("sticky", 20);
    let mut first: Option<BTreeMap<String, String>> = None;
    for round in 0..3 {
        let (placed, clients) = connect_all(&env, &lb0, &sticky).await;
        drop(clients);
        match &first {
            None => {
                let nodes: BTreeSet<&String> = placed.values().collect();
                assert_eq!(nodes.len(), 3, "20 ids use all 3 nodes: {placed:?}");
                first = Some(placed);
            }
            Some(f) => assert_eq!(&placed, f, "round {round}: every id on the same node"),
        }
        all_gone(&env, &sticky).await;
    }
    let first = first.expect("placements");
    env.dc.elapsed("20 ids x 3 reconnects: sticky and spread");

    // 2. The other replica knows the same ids (peers share the table).
    let (placed, clients) = connect_all(&env, &lb1, &sticky).await;
    assert_eq!(
        placed, first,
        "the second HAProxy sends every id to the same node"
    );
    drop(clients);
    all_gone(&env, &sticky).await;
    env.dc.elapsed("second replica: same placement");

    // 3. Not MQTT: closed without an answer.
    assert!(probe(&lb0, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_empty());
    assert!(probe(&lb0, &[0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02, 0x03]).is_empty());
    env.dc.elapsed("garbage and HTTP rejected");

    // 4. Kill one broker: only its clients move.
    let (placed, _clients) = connect_all(&env, &lb0, &sticky).await;
    let victim = placed
        .values()
        .next()
        .cloned()
        .expect("a node with clients");
    env.kill_vm(&victim).await;
    env.dc.elapsed(&format!("{victim} killed"));
    let moved = wait_for_every(
        Duration::from_secs(1),
        "the victim's clients reconnected elsewhere",
        Duration::from_secs(120),
        || async {
            let now = env.placement(CLUSTER).await;
            let all_back = sticky.iter().all(|id| now.contains_key(id));
            let none_on_victim = now.values().all(|n| *n != victim);
            (all_back && none_on_victim).then_some(now)
        },
    )
    .await;
    for (id, node) in &placed {
        if *node != victim {
            assert_eq!(moved.get(id), Some(node), "{id} stayed on {node}");
        }
    }
    env.dc.elapsed("only the killed node's clients moved");
    drop(_clients);
    all_gone(&env, &sticky).await;
    env.wait(
        CLUSTER,
        "the killed node back",
        Duration::from_secs(150),
        healthy,
    )
    .await;

    // 5. A stray gets no new clients until it is rejoined.
    env.patch(CLUSTER, serde_json::json!({"repair": {"enabled": false}}))
        .await;
    let bc = env.clusters.get(CLUSTER).await.expect("the cluster");
    env.make_standalone(&bc, 2).await;
    let stray = format!("{CLUSTER}-2");
    env.wait(
        CLUSTER,
        "node 2 reported Stray",
        Duration::from_secs(60),
        |bc| member_state(bc, &stray).as_deref() == Some("Stray"),
    )
    .await;
    // The agents poll every 2 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fresh = ids("fresh", 12);
    let (placed, clients) = connect_all(&env, &lb0, &fresh).await;
    assert!(
        placed.values().all(|n| *n != stray),
        "no new client on the stray: {placed:?}"
    );
    drop(clients);
    all_gone(&env, &fresh).await;
    env.dc.elapsed("the stray got no new clients");
    env.patch(CLUSTER, serde_json::json!({"repair": {"enabled": true}}))
        .await;
    env.wait(
        CLUSTER,
        "node 2 rejoined",
        Duration::from_secs(150),
        healthy,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = ids("later", 12);
    let (placed, clients) = connect_all(&env, &lb0, &later).await;
    assert!(
        placed.values().any(|n| *n == stray),
        "after the repair new clients reach node 2 again: {placed:?}"
    );
    drop(clients);
    env.dc.elapsed("rejoined node takes new clients");

    stop.cancel();
    operator
        .await
        .expect("operator task")
        .expect("the operator stopped cleanly");
}
