//! `spec.loadBalancer.proxyProtocol` end to end on a devcluster: the operator (in-process) runs a
//! 3-node RabbitMQ 3.10 cluster with the load balancer on and the PROXY protocol from HAProxy to
//! the brokers (so every broker's MQTT listener requires the PROXY header).
//!
//! 1. The cluster becomes Ready with every member Joined and healthy: Mooring's own MQTT check
//!    (part of each member's health) sends the header and gets CONNACK.
//! 2. HAProxy sees every broker UP with a passed MQTT check (`L7OK`): its check sends a PROXY
//!    header too.
//! 3. A `mosquitto_sub` connected through the HAProxy Pod is listed by the broker (the driver's
//!    `clients`, from `/api/connections`) with its own source address and port, not the HAProxy
//!    Pod's IP.
//! 4. A message published through the load balancer reaches that subscriber.
//! 5. A client connecting to a broker Pod directly, without the header, is refused.
//!
//! Needs root, the control-plane binaries, Debian's `rabbitmq-server`, `haproxy`,
//! `mosquitto-clients`, `iproute2` (`ss`), and this build's `mooring` binary next to
//! `devcluster` (`cargo build -p mooring-operator`): the HAProxy Pods' agent renders
//! `haproxy.cfg` with it.

use std::process::Stdio;
use std::time::Duration;

use mooring_operator::drivers::{ClientQuery, NodeTarget};

mod support;
use support::brokers::*;
use support::wait_for_every;

const CLUSTER: &str = "ppbus";
const SUBSCRIBER: &str = "proxied-sub";
const TOPIC: &str = "pp/hello";

/// How many servers of the `mqtt` backend HAProxy at `ip` reports UP after a passed MQTT check
/// (`L7OK` in its stats CSV: servers start UP before their first check).
async fn servers_checked_up(ip: &str) -> usize {
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "3",
            &format!("http://{ip}:8404/stats;csv"),
        ])
        .output()
        .await
        .expect("run curl");
    let csv = String::from_utf8_lossy(&out.stdout);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (Some(status), Some(check)) = (column("status"), column("check_status")) else {
        return 0;
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| {
            f.first() == Some(&"mqtt")
                && f.get(1)
                    .is_some_and(|s| *s != "BACKEND" && *s != "FRONTEND")
                && f.get(status) == Some(&"UP")
                && f.get(check) == Some(&"L7OK")
        })
        .count()
}

/// The local `address:port` of process `pid`'s TCP connection to `peer:port` (from `ss`).
async fn local_end(pid: u32, peer: &str, port: u16) -> Option<String> {
    let out = tokio::process::Command::new("ss")
        .args([
            "-Htnp",
            "state",
            "established",
            "dst",
            &format!("{peer}:{port}"),
        ])
        .output()
        .await
        .expect("run ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(&format!("pid={pid},")))
        .and_then(|l| l.split_whitespace().nth(2).map(String::from))
}

/// Every member Joined, checked and healthy (no failed check).
fn members_healthy(bc: &mooring_crds::BrokerCluster) -> bool {
    let m = members(bc);
    healthy(bc)
        && m.iter()
            .all(|m| m.healthy == Some(true) && m.failed_checks.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_behind_the_proxy_protocol_see_real_client_addresses() {
    let (env, stop, operator) = Env::start("pprt").await;
    // 1. Ready, Joined, healthy.
    env.create_spec(
        CLUSTER,
        serde_json::json!({
            "replicas": 3,
            "loadBalancer": {"enabled": true, "replicas": 1, "proxyProtocol": true},
            "repair": {"intervalSeconds": 3},
        }),
    )
    .await;
    let bc = env
        .wait(
            CLUSTER,
            "every member healthy (Mooring's MQTT check through the PROXY header)",
            Duration::from_secs(120),
            members_healthy,
        )
        .await;
    for m in members(&bc) {
        assert_eq!(m.state, "Joined", "{m:?}");
        assert_eq!(m.healthy, Some(true), "{m:?}");
    }
    env.dc
        .elapsed("Ready, 3 members Joined and healthy with proxyProtocol");

    // 2. HAProxy's own checks pass.
    let lb_pod = format!("{CLUSTER}-lb-0");
    let lb_ip = wait_for_every(
        Duration::from_secs(1),
        "the HAProxy Pod has an IP",
        Duration::from_secs(120),
        || async { env.pod(&lb_pod).await.status.and_then(|s| s.pod_ip) },
    )
    .await;
    wait_for_every(
        Duration::from_secs(1),
        "HAProxy's MQTT check (with its PROXY header) passes on every broker",
        Duration::from_secs(120),
        || async { (servers_checked_up(&lb_ip).await == 3).then_some(()) },
    )
    .await;
    env.dc
        .elapsed("HAProxy: 3 brokers UP, check L7OK (its check sends a PROXY header)");

    // 3. A subscriber through the LB, seen with its own address.
    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", &lb_ip, "-V", "mqttv311", "-q", "1", "-i", SUBSCRIBER])
        .args(["-t", TOPIC, "-C", "1", "-W", "120", "-k", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run mosquitto_sub");
    let pid = sub.id().expect("mosquitto_sub runs");
    let source = wait_for_every(
        Duration::from_millis(500),
        "mosquitto_sub connected to the LB",
        Duration::from_secs(30),
        || local_end(pid, &lb_ip, 1883),
    )
    .await;
    let driver = env.driver(CLUSTER).await;
    let query = ClientQuery {
        client_id: Some(SUBSCRIBER.into()),
        ..ClientQuery::default()
    };
    let seen = wait_for_every(
        Duration::from_secs(1),
        "a broker lists the subscriber",
        Duration::from_secs(60),
        || async {
            for ordinal in 0..3u32 {
                let pod = format!("{CLUSTER}-{ordinal}");
                let Some(host) = env.pod(&pod).await.status.and_then(|s| s.pod_ip) else {
                    continue;
                };
                let via = NodeTarget {
                    pod,
                    host,
                    node: node(CLUSTER, ordinal),
                };
                if let Ok(page) = driver.clients(&via, &query).await {
                    if let Some(c) = page.clients.into_iter().find(|c| c.client_id == SUBSCRIBER) {
                        return Some(c);
                    }
                }
            }
            None
        },
    )
    .await;
    let seen_at = format!(
        "{}:{}",
        seen.ip_address.as_deref().unwrap_or("?"),
        seen.port.unwrap_or(0)
    );
    assert_ne!(
        seen.ip_address.as_deref(),
        Some(lb_ip.as_str()),
        "the broker sees HAProxy's address, not the client's: {seen:?}"
    );
    assert_eq!(
        seen_at, source,
        "the broker sees the client's own source address and port"
    );
    env.dc.elapsed(&format!(
        "the broker lists {SUBSCRIBER} at {seen_at} (its own address; HAProxy is at {lb_ip})"
    ));

    // 4. A message through the LB reaches it.
    let publish = async {
        loop {
            let _ = tokio::process::Command::new("mosquitto_pub")
                .args(["-h", &lb_ip, "-V", "mqttv311", "-q", "1", "-t", TOPIC])
                .args([
                    "-i",
                    "proxied-pub",
                    "-m",
                    "hello through the PROXY protocol",
                ])
                .output()
                .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let out = tokio::select! {
        out = sub.wait_with_output() => out.expect("mosquitto_sub output"),
        _ = publish => unreachable!("the publisher loops"),
    };
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello through the PROXY protocol",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.dc
        .elapsed("a message published through the LB reached the subscriber");

    // 5. Directly to a broker, without the header: refused (the listener closes).
    let broker_ip = env.pod_ip(&format!("{CLUSTER}-0")).await;
    let direct = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("mosquitto_pub")
            .args(["-h", &broker_ip, "-V", "mqttv311", "-q", "1", "-t", TOPIC])
            .args(["-i", "direct-pub", "-m", "direct"])
            .kill_on_drop(true)
            .output(),
    )
    .await;
    // Either it exits with an error, or it never gets a CONNACK and is stopped.
    if let Ok(out) = direct {
        let out = out.expect("run mosquitto_pub");
        assert!(
            !out.status.success(),
            "a direct client without the PROXY header connected"
        );
    }
    env.dc
        .elapsed("a direct client without the header is refused");

    stop.cancel();
    operator
        .await
        .expect("operator task")
        .expect("the operator stopped cleanly");
}
