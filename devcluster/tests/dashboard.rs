//! The dashboard end to end, in Debian's chromium (playwright-core), against a real 3-node
//! RabbitMQ cluster behind Mooring's HAProxy on devcluster, with the operator (controller,
//! collector and dashboard) in-process:
//! 1. sign-in: a wrong password is refused, a page asked for without a session goes to the login
//!    page and comes back after it; the overview lists the cluster;
//! 2. the cluster page shows 3 nodes up and joined, the full membership matrix, every HAProxy
//!    backend UP and the Events, updating live;
//! 3. an admin kicks a real MQTT client (after confirming): its TCP connection is closed;
//! 4. a viewer sees no kick button, and the server function refuses the viewer's direct call:
//!    the client stays connected;
//! 5. messages published for real make the topic chart move;
//! 6. a node's VM crash-loops: `NodeDown` fires on the alerts page, and resolves once the node is
//!    back and rejoined.
//!
//! Every page is screenshotted into `$MOORING_ARTIFACTS/dashboard` (or
//! `$CARGO_TARGET_DIR/dashboard-screenshots`). Needs root (devcluster), chromium, node and the
//! browser tests' npm packages (scripts/setup.sh installs them).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use mooring_dashboard::auth::Auth;
use mooring_dashboard::server::DashboardConfig;
use mooring_operator::dashboard::users::keep_loaded;
use mooring_operator::dashboard::OperatorBackend;
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish, Subscribe};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::brokers::{healthy, Env, NS};

const CLUSTER: &str = "dash";
const TOPIC: &str = "demo/temperature";
const ADMIN_PASSWORD: &str = "admin-password-1";
const VIEWER_PASSWORD: &str = "viewer-password-1";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("devcluster/ has a parent")
        .to_path_buf()
}

/// The built site: MOORING_DASHBOARD_SITE (scripts/test sets it), else built now.
fn site() -> PathBuf {
    if let Ok(site) = std::env::var("MOORING_DASHBOARD_SITE") {
        return PathBuf::from(site);
    }
    let out = std::process::Command::new(workspace().join("scripts/build-dashboard"))
        .output()
        .expect("run scripts/build-dashboard");
    assert!(
        out.status.success(),
        "scripts/build-dashboard failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("the site dir").trim())
}

fn screenshots() -> PathBuf {
    match std::env::var("MOORING_ARTIFACTS") {
        Ok(dir) => PathBuf::from(dir).join("dashboard"),
        Err(_) => {
            PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
                .join("dashboard-screenshots")
        }
    }
}

struct Browser {
    url: String,
    shots: PathBuf,
}

impl Browser {
    /// Runs one phase of tests/browser/dashboard.mjs as `user`; panics with its output if it fails.
    async fn phase(&self, user: &str, phase: &str, arg: Option<&str>) {
        let password = if user == "admin" {
            ADMIN_PASSWORD
        } else {
            VIEWER_PASSWORD
        };
        let dir = workspace().join("tests/browser");
        assert!(
            dir.join("node_modules/playwright-core").is_dir(),
            "tests/browser/node_modules is missing: run scripts/setup.sh"
        );
        let started = Instant::now();
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg("dashboard.mjs").arg(phase);
        if let Some(arg) = arg {
            cmd.arg(arg);
        }
        let out = cmd
            .current_dir(&dir)
            .env("DASHBOARD_URL", &self.url)
            .env("DASHBOARD_USER", user)
            .env("DASHBOARD_PASSWORD", password)
            .env("CLUSTER", format!("{NS}/{CLUSTER}"))
            .env("SCREENSHOT_DIR", &self.shots)
            .kill_on_drop(true)
            .output()
            .await
            .expect("run node");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "browser phase {phase} as {user} failed:\n{text}"
        );
        eprintln!(
            "[dashboard] {phase} as {user}: {} ({:.0?})",
            text.trim(),
            started.elapsed()
        );
    }
}

/// An MQTT client on `ip:1883` that subscribed to a topic; resolves when the broker closes
/// its connection.
async fn client(ip: &str, id: &str) -> tokio::task::JoinHandle<()> {
    let mut stream = TcpStream::connect((ip, 1883))
        .await
        .expect("connect to the broker");
    let mut out = BytesMut::new();
    let mut connect = Connect::new(id);
    connect.keep_alive = 600;
    connect.write(&mut out).expect("encode CONNECT");
    Subscribe::new("dash/#", QoS::AtLeastOnce)
        .write(&mut out)
        .expect("encode SUBSCRIBE");
    stream.write_all(&out).await.expect("send CONNECT");
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match Packet::read(&mut buf, 1 << 16) {
            Ok(Packet::ConnAck(a)) => {
                assert_eq!(
                    a.code,
                    rumqttc::mqttbytes::v4::ConnectReturnCode::Success,
                    "CONNACK"
                );
                break;
            }
            Ok(_) => continue,
            Err(_) => {
                let n = stream.read_buf(&mut buf).await.expect("read CONNACK");
                assert!(n > 0, "the broker closed the connection of {id} at once");
            }
        }
    }
    tokio::spawn(async move {
        let mut scratch = vec![0u8; 4096];
        while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
    })
}

/// Publishes to `topic` on `ip:1883` at about `per_second` for `seconds` (QoS 0).
async fn publish_for(ip: String, topic: &str, per_second: u32, seconds: u64) {
    let mut stream = TcpStream::connect((ip.as_str(), 1883))
        .await
        .expect("connect");
    let mut out = BytesMut::new();
    Connect::new("dash-publisher")
        .write(&mut out)
        .expect("encode CONNECT");
    stream.write_all(&out).await.expect("send CONNECT");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    let mut i = 0u64;
    while Instant::now() < deadline {
        tick.tick().await;
        let mut b = BytesMut::new();
        Publish::new(topic, QoS::AtMostOnce, i.to_string().into_bytes())
            .write(&mut b)
            .expect("encode PUBLISH");
        if stream.write_all(&b).await.is_err() {
            break;
        }
        i += 1;
    }
}

#[tokio::test]
async fn the_dashboard_in_a_real_browser_against_a_real_cluster() {
    let started = Instant::now();
    let (env, stop, operator) = Env::start("dashboard").await;

    // The users Secret and the dashboard, served in-process as `mooring` serves it.
    let users: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "mooring-dashboard-users"},
        "stringData": {
            "admin": format!("admin:{ADMIN_PASSWORD}"),
            "viewer": format!("viewer:{VIEWER_PASSWORD}"),
        },
    }))
    .expect("a Secret");
    Api::<Secret>::namespaced(env.client.clone(), NS)
        .create(&PostParams::default(), &users)
        .await
        .expect("create the users Secret");
    let auth = Arc::new(Auth::default());
    tokio::spawn(keep_loaded(
        env.client.clone(),
        NS.into(),
        "mooring-dashboard-users".into(),
        auth.clone(),
        stop.clone(),
    ));
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("its address")
    };
    let config = DashboardConfig {
        backend: Arc::new(OperatorBackend::new(
            env.client.clone(),
            env.state.clone(),
            vec![NS.into()],
            "dashboard-test",
        )),
        auth: auth.clone(),
        site_root: site(),
    };
    let server = tokio::spawn(mooring_operator::server::serve(
        addr,
        env.state.clone(),
        Some(config),
        stop.clone().cancelled_owned(),
    ));
    let shots = screenshots();
    let _ = std::fs::remove_dir_all(&shots);
    let browser = Browser {
        url: format!("http://{addr}"),
        shots: shots.clone(),
    };

    env.create_spec(
        CLUSTER,
        serde_json::json!({
            "replicas": 3,
            "repair": {"intervalSeconds": 3},
            "loadBalancer": {"enabled": true, "replicas": 1},
            "monitoring": {"meteredTopics": [TOPIC]},
        }),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !auth.configured() {
        assert!(Instant::now() < deadline, "the users Secret was not loaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 1-2. Sign-in, overview, the cluster page.
    browser.phase("admin", "login", None).await;
    browser.phase("admin", "nodes", None).await;

    // 3. An admin kicks a real client: the broker closes its connection.
    let ip0 = env.pod_ip(&format!("{CLUSTER}-0")).await;
    let kicked = client(&ip0, "dash-kick-me").await;
    browser.phase("admin", "kick", Some("dash-kick-me")).await;
    tokio::time::timeout(Duration::from_secs(15), kicked)
        .await
        .expect("the kicked client's connection was closed")
        .expect("client task");

    // 4. A viewer cannot: no button, and the server refuses the call; the client stays.
    let kept = client(&ip0, "dash-keep-me").await;
    browser
        .phase("viewer", "viewer-cannot-kick", Some("dash-keep-me"))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !kept.is_finished(),
        "the viewer's refused call disconnected the client"
    );
    kept.abort();

    // 5. Real messages move the topic chart.
    let publisher = tokio::spawn(publish_for(ip0.clone(), TOPIC, 20, 60));
    let subscriber = client(&ip0, "dash-topic-reader").await;
    // A subscription on the metered topic, so that RabbitMQ counts deliveries on it.
    let reader = {
        let ip = ip0.clone();
        tokio::spawn(async move {
            let mut stream = TcpStream::connect((ip.as_str(), 1883))
                .await
                .expect("connect");
            let mut out = BytesMut::new();
            Connect::new("dash-topic-sub")
                .write(&mut out)
                .expect("CONNECT");
            Subscribe::new(TOPIC, QoS::AtMostOnce)
                .write(&mut out)
                .expect("SUBSCRIBE");
            stream.write_all(&out).await.expect("send");
            let mut scratch = vec![0u8; 1 << 16];
            while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
        })
    };
    browser.phase("admin", "topics", Some(TOPIC)).await;
    publisher.abort();
    reader.abort();
    subscriber.abort();

    // 6. A node crash-loops for 80 s (its VM killed as soon as it is back): NodeDown fires,
    //    then resolves once it is back and rejoined.
    let crash_loop = {
        let pod = format!("{CLUSTER}-2");
        let until = Instant::now() + Duration::from_secs(80);
        let env = &env;
        async move {
            while Instant::now() < until {
                env.kill_vm_if_running(&pod).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let fires = browser.phase("admin", "alert-fires", Some("NodeDown"));
    tokio::join!(crash_loop, fires);
    env.wait(
        CLUSTER,
        "every node back and joined",
        Duration::from_secs(300),
        healthy,
    )
    .await;
    browser
        .phase("admin", "alert-resolves", Some("NodeDown"))
        .await;

    let mut names: Vec<String> = std::fs::read_dir(&shots)
        .expect("the screenshots")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let expected: BTreeMap<&str, ()> = [
        "02-overview.png",
        "03-cluster.png",
        "06-kicked.png",
        "07-clients-viewer.png",
        "08-topics.png",
        "09-alert-firing.png",
        "10-alert-resolved.png",
    ]
    .into_iter()
    .map(|n| (n, ()))
    .collect();
    for n in expected.keys() {
        assert!(
            names.iter().any(|x| x == n),
            "no screenshot {n} in {names:?}"
        );
    }
    eprintln!(
        "[dashboard] screenshots in {}: {names:?} ({:.0?} in all)",
        shots.display(),
        started.elapsed()
    );

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), operator).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}
