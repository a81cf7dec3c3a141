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
//! 6. A scale-down from 3 to 2 drains the leaving node first: from the drain on, no client lands
//!    on it (neither new ids nor ids stuck to it), its connected clients stay until the drain
//!    time is over, are then moved to the nodes that stay, the node leaves the cluster (no ghost
//!    member) and only then is its Pod removed.
//!
//! Needs root, the control-plane binaries, Debian's `rabbitmq-server` and `haproxy`, and the
//! `mooring` binary next to `devcluster` (`cargo build -p mooring-operator`; `cargo test
//! --workspace` builds it).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Api;

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
    all_gone(&env, &later).await;

    // 6. Scale down from 3 to 2: node 2 is drained first.
    let leaving = format!("{CLUSTER}-2");
    let stuck_to_leaving: Vec<String> = placed
        .iter()
        .filter(|(_, n)| **n == leaving)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        !stuck_to_leaving.is_empty(),
        "some ids are stuck to {leaving}: {placed:?}"
    );
    let staying = ids("staying", 18);
    let (before, staying_clients) = connect_all(&env, &lb0, &staying).await;
    let on_leaving: BTreeSet<String> = before
        .iter()
        .filter(|(_, n)| **n == leaving)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        !on_leaving.is_empty(),
        "some clients on {leaving}: {before:?}"
    );
    env.patch(
        CLUSTER,
        serde_json::json!({"replicas": 2, "loadBalancer": {"enabled": true, "replicas": 2, "drainSeconds": 20}}),
    )
    .await;
    env.wait(
        CLUSTER,
        "the scale-down draining node 2",
        Duration::from_secs(30),
        |bc| {
            bc.status
                .as_ref()
                .and_then(|s| s.scale_down.as_ref())
                .is_some_and(|d| d.pod == leaving && d.phase == "Draining")
        },
    )
    .await;
    // The agents poll every 2 s; from here on nothing new may land on node 2.
    tokio::time::sleep(Duration::from_secs(5)).await;
    env.dc.elapsed("scale-down: node 2 draining");
    let sts_api: Api<StatefulSet> = Api::namespaced(env.client.clone(), NS);
    assert_eq!(
        sts_api
            .get(CLUSTER)
            .await
            .expect("the StatefulSet")
            .spec
            .and_then(|s| s.replicas),
        Some(3),
        "the Pod stays while its node drains"
    );
    let fresh = ids("drained", 12);
    let (placed, fresh_clients) = connect_all(&env, &lb0, &fresh).await;
    assert!(
        placed.values().all(|n| *n != leaving),
        "no new id lands on the draining node: {placed:?}"
    );
    let (placed, stuck_clients) = connect_all(&env, &lb1, &stuck_to_leaving).await;
    assert!(
        placed.values().all(|n| *n != leaving),
        "ids stuck to the draining node go elsewhere too: {placed:?}"
    );
    let now = env.placement(CLUSTER).await;
    for id in &on_leaving {
        assert_eq!(
            now.get(id),
            Some(&leaving),
            "{id} stays connected to the draining node until the drain time is over"
        );
    }
    // Until the StatefulSet is lowered, only clients that were on node 2 before the drain may
    // be on it; then they are all elsewhere and the node has left the cluster.
    let lowered = wait_for_every(
        Duration::from_secs(1),
        "node 2's clients moved and the StatefulSet lowered to 2",
        Duration::from_secs(180),
        || async {
            let now = env.placement(CLUSTER).await;
            for (id, n) in &now {
                assert!(
                    *n != leaving || on_leaving.contains(id),
                    "{id} landed on the draining node"
                );
            }
            let replicas = sts_api
                .get(CLUSTER)
                .await
                .ok()
                .and_then(|s| s.spec)
                .and_then(|s| s.replicas);
            let moved = staying
                .iter()
                .all(|id| now.get(id).is_some_and(|n| *n != leaving));
            (replicas == Some(2) && moved).then_some(now)
        },
    )
    .await;
    assert!(lowered.values().all(|n| *n != leaving));
    env.dc
        .elapsed("scale-down: clients moved, StatefulSet at 2");
    drop((staying_clients, fresh_clients, stuck_clients));
    let done = env
        .wait(
            CLUSTER,
            "2 members, consistent, no scale-down left",
            // After the scale-down the 2 nodes roll: partition handling goes to autoheal.
            Duration::from_secs(300),
            |bc| {
                healthy(bc)
                    && members(bc).len() == 2
                    && bc.status.as_ref().is_some_and(|s| s.scale_down.is_none())
            },
        )
        .await;
    let leaving_node = node(CLUSTER, 2);
    for m in members(&done) {
        assert!(
            !m.view.contains(&leaving_node),
            "{} still lists {leaving_node}: no ghost after a scale-down",
            m.pod
        );
    }
    let notes: Vec<String> = env
        .events(CLUSTER, "ScalingDown")
        .await
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("takes no new clients"))
            && notes.iter().any(|n| n.contains("disconnecting")),
        "Events tell the drain and the move: {notes:?}"
    );
    assert!(!env.events(CLUSTER, "NodeLeft").await.is_empty());
    env.dc
        .elapsed("scale-down: node 2 left the cluster, no ghost");

    stop.cancel();
    operator
        .await
        .expect("operator task")
        .expect("the operator stopped cleanly");
}
