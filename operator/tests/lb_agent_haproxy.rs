//! The lb-agent's runtime API client against a real HAProxy in front of two real MQTT brokers
//! (mosquitto), with real MQTT clients (`mosquitto_pub`, `mosquitto_sub`) going through HAProxy.
//!
//! The renderer writes the admin socket at its fixed path ([`ADMIN_SOCKET`]); the test replaces that
//! path in the rendered text with one in its temporary directory. The two brokers listen on the same
//! port on 127.0.0.1 and 127.0.0.2 (every broker Pod listens on the same port).
//!
//! Needs `haproxy` (2.6), `mosquitto` and `mosquitto-clients`:
//! `apt-get install -y haproxy mosquitto mosquitto-clients`.

use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff;
use mooring_crds::AlertThresholds;
use mooring_operator::alerts::Severity;
use mooring_operator::collector::lb_stats::{self, LbSample};
use mooring_operator::collector::rules;
use mooring_operator::collector::sample::Sample;

use mooring_operator::lb_agent::runtime_api::{
    RuntimeError, ServerAdminState, ServerStateRow, DEFAULT_RELOAD_TIMEOUT,
};
use mooring_operator::lb_agent::{write_atomic, DesiredServer, Haproxy};
use mooring_operator::load_balancer::haproxy_cfg::{
    render, BackendServer, LbConfig, ListenerPorts, ADMIN_SOCKET, MQTT_BACKEND, WEBSOCKET_BACKEND,
};
use ServerAdminState::{Drain, Maint, Ready};

mod support;

const HINT: &str = "install them with: apt-get install -y haproxy mosquitto mosquitto-clients";

fn binary(name: &str) -> PathBuf {
    support::binary(name, HINT)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The test's processes and directory; kills and removes everything when dropped, also on panic
/// (then it prints HAProxy's log).
struct Lab {
    dir: PathBuf,
    brokers: Vec<Child>,
    haproxy: Option<Child>,
}

impl Lab {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("mooring-lbit-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the test directory");
        Self {
            dir,
            brokers: Vec::new(),
            haproxy: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn log_file(&self, name: &str) -> Stdio {
        std::fs::File::create(self.path(name))
            .map(Stdio::from)
            .expect("create a log file")
    }

    /// Starts mosquitto on `ip:port`, anonymous clients allowed, and waits until it accepts.
    fn start_broker(&mut self, ip: &str, port: u16) {
        let n = self.brokers.len();
        let conf = self.path(&format!("mosquitto-{n}.conf"));
        // Run as root, mosquitto drops to its own user unless told to stay.
        let root = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        let user = if root { "user root\n" } else { "" };
        std::fs::write(
            &conf,
            format!("listener {port} {ip}\nallow_anonymous true\npersistence false\n{user}"),
        )
        .expect("write the mosquitto configuration");
        let child = Command::new(binary("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdout(self.log_file(&format!("mosquitto-{n}.log")))
            .stderr(self.log_file(&format!("mosquitto-{n}.err")))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto: {e}; {HINT}"));
        self.brokers.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((ip, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto on {ip}:{port} did not start: {}",
                self.read(&format!("mosquitto-{n}.err"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_haproxy(&mut self, cfg: &Path) {
        let child = Command::new(binary("haproxy"))
            .arg("-W")
            .arg("-db")
            .arg("-S")
            .arg(self.path("master.sock"))
            .arg("-f")
            .arg(cfg)
            .stdout(self.log_file("haproxy.log"))
            .stderr(self.log_file("haproxy.err"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start haproxy: {e}; {HINT}"));
        self.haproxy = Some(child);
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut master) = self.haproxy.take() {
            // SIGTERM: the master stops its workers, old and new, before exiting.
            Command::new("kill")
                .arg("-TERM")
                .arg(master.id().to_string())
                .status()
                .ok();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(master.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            master.kill().ok();
            master.wait().ok();
        }
        for broker in &mut self.brokers {
            broker.kill().ok();
            broker.wait().ok();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- haproxy stdout:\n{}\n--- haproxy stderr:\n{}",
                self.read("haproxy.log"),
                self.read("haproxy.err")
            );
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// The ports of the test's brokers and load balancer.
#[derive(Clone, Copy)]
struct Ports {
    broker_mqtt: u16,
    broker_ws: u16,
    lb_mqtt: u16,
    lb_ws: u16,
    stats: u16,
}

impl Ports {
    /// Free ports for everything.
    fn free() -> Self {
        Self {
            broker_mqtt: free_port(),
            broker_ws: free_port(),
            lb_mqtt: free_port(),
            lb_ws: free_port(),
            stats: free_port(),
        }
    }
}

fn lb_config(ports: Ports, servers: Vec<BackendServer>) -> LbConfig {
    LbConfig {
        servers,
        mqtt: ListenerPorts {
            frontend: ports.lb_mqtt,
            backend: ports.broker_mqtt,
        },
        // Only for its tracking servers: nothing listens on the brokers' WebSocket port.
        websocket: Some(ListenerPorts {
            frontend: ports.lb_ws,
            backend: ports.broker_ws,
        }),
        stats_port: ports.stats,
        stick_expiry_seconds: 3600,
        stick_table_size: 1000,
        max_connections: 1000,
        ..LbConfig::new("demo")
    }
}

fn server(name: &str, address: Option<&str>, enabled: bool) -> BackendServer {
    BackendServer {
        name: name.into(),
        address: address.map(Into::into),
        initially_enabled: enabled,
    }
}

/// Renders `cfg` with the admin socket moved into the test's directory.
fn text(cfg: &LbConfig, admin: &Path) -> String {
    let text = render(cfg).expect("render");
    assert!(
        text.contains(ADMIN_SOCKET),
        "the renderer no longer writes {ADMIN_SOCKET}: update this test"
    );
    text.replace(ADMIN_SOCKET, &admin.display().to_string())
}

const ONE: &str = "127.0.0.1";
const TWO: &str = "127.0.0.2";

/// The desired state of demo-0 (at 127.0.0.1) and demo-1 (at 127.0.0.2) on both backends.
fn desired(ports: Ports, states: [ServerAdminState; 2]) -> Vec<DesiredServer> {
    let mut out = Vec::new();
    for (backend, port) in [
        (MQTT_BACKEND, ports.broker_mqtt),
        (WEBSOCKET_BACKEND, ports.broker_ws),
    ] {
        for (i, ip) in [ONE, TWO].into_iter().enumerate() {
            out.push(DesiredServer {
                backend: backend.into(),
                server: format!("demo-{i}"),
                addr: Some(ip.parse().expect("ip")),
                port,
                state: states[i],
            });
        }
    }
    out
}

async fn rows(h: &Haproxy, backend: &str) -> Vec<ServerStateRow> {
    h.admin()
        .show_servers_state(backend)
        .await
        .unwrap_or_else(|e| panic!("show servers state {backend}: {e}"))
}

/// (server, own state, address) of every server of `backend`.
async fn states(h: &Haproxy, backend: &str) -> Vec<(String, ServerAdminState, Option<IpAddr>)> {
    rows(h, backend)
        .await
        .into_iter()
        .map(|r| (r.server.clone(), r.state(), r.addr))
        .collect()
}

fn expect(
    list: &[(&str, ServerAdminState, &str)],
) -> Vec<(String, ServerAdminState, Option<IpAddr>)> {
    list.iter()
        .map(|(s, st, ip)| (s.to_string(), *st, Some(ip.parse().expect("ip"))))
        .collect()
}

async fn converge(h: &Haproxy, desired: &[DesiredServer]) -> usize {
    let report = h.converge(desired).await;
    assert!(report.is_clean(), "converge failed: {report:?}");
    report.applied.len()
}

/// The stick table of `mqtt`, as `show table mqtt` prints it.
async fn stick_table(h: &Haproxy) -> String {
    h.admin()
        .client()
        .send("show table mqtt")
        .await
        .expect("show table")
}

/// Waits until every listed server of `mqtt` is up (its MQTT health check passes).
async fn wait_running(h: &Haproxy, servers: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = rows(h, MQTT_BACKEND).await;
        if servers
            .iter()
            .all(|s| rows.iter().any(|r| r.server == *s && r.is_running()))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "servers {servers:?} never came up: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs an MQTT client program through the load balancer; Ok(stdout) when it exits 0.
async fn mqtt(program: &str, args: &[&str]) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(binary(program));
    cmd.args(args).kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(20), cmd.output()).await {
        Err(_) => Err(format!("{program} {args:?} hung")),
        Ok(Err(e)) => panic!("cannot run {program}: {e}; {HINT}"),
        Ok(Ok(out)) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Ok(Ok(out)) => Err(format!(
            "{program} {args:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Publishes one message through the load balancer as client `id`.
async fn publish(ports: Ports, id: &str, extra: &[&str]) -> Result<String, String> {
    let port = ports.lb_mqtt.to_string();
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-i",
        id,
        "-q",
        "1",
        "-t",
        "mooring/test",
        "-m",
        "hello",
    ];
    args.extend_from_slice(extra);
    mqtt("mosquitto_pub", &args).await
}

#[tokio::test]
async fn the_runtime_api_client_drives_a_real_haproxy() {
    let mut lab = Lab::new();
    let ports = Ports::free();
    lab.start_broker(ONE, ports.broker_mqtt);
    lab.start_broker(TWO, ports.broker_mqtt);

    // demo-0 known and enabled; demo-1 without an address yet (the disabled placeholder).
    let admin = lab.path("admin.sock");
    let cfg_path = lab.path("haproxy.cfg");
    let initial = lb_config(
        ports,
        vec![
            server("demo-0", Some(ONE), true),
            server("demo-1", None, false),
        ],
    );
    std::fs::write(&cfg_path, text(&initial, &admin)).expect("write haproxy.cfg");
    lab.start_haproxy(&cfg_path);

    let mut h = Haproxy::new(
        &cfg_path,
        &admin,
        lab.path("master.sock"),
        Duration::from_secs(5),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.admin().show_servers_state(MQTT_BACKEND).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "HAProxy did not open its admin socket"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1. What HAProxy starts with.
    for backend in [MQTT_BACKEND, WEBSOCKET_BACKEND] {
        assert_eq!(
            states(&h, backend).await,
            expect(&[("demo-0", Ready, ONE), ("demo-1", Maint, "0.0.0.0")]),
            "{backend}"
        );
    }
    let mqtt_rows = rows(&h, MQTT_BACKEND).await;
    assert_eq!(mqtt_rows[0].port, Some(ports.broker_mqtt));
    let ws_rows = rows(&h, WEBSOCKET_BACKEND).await;
    assert_eq!(ws_rows[0].port, Some(ports.broker_ws));

    // 2. Both ready: demo-1 gets its address, then its state, on both backends.
    let applied = converge(&h, &desired(ports, [Ready, Ready])).await;
    assert_eq!(applied, 4, "address and state of demo-1 on two backends");
    for backend in [MQTT_BACKEND, WEBSOCKET_BACKEND] {
        assert_eq!(
            states(&h, backend).await,
            expect(&[("demo-0", Ready, ONE), ("demo-1", Ready, TWO)]),
            "{backend}"
        );
    }
    assert_eq!(
        rows(&h, WEBSOCKET_BACKEND).await[1].port,
        Some(ports.broker_ws)
    );
    assert_eq!(
        converge(&h, &desired(ports, [Ready, Ready])).await,
        0,
        "idempotent"
    );
    wait_running(&h, &["demo-0", "demo-1"]).await;
    publish(ports, "anyone", &[])
        .await
        .expect("publish through HAProxy");

    // 3. Only demo-1 takes clients: a client id sticks to it; a subscriber there gets the retained
    //    message a publisher left there.
    assert_eq!(converge(&h, &desired(ports, [Maint, Ready])).await, 2);
    publish(ports, "stuck-on-1", &["-r"])
        .await
        .expect("publish to demo-1");
    let table = h
        .admin()
        .client()
        .send("show table mqtt")
        .await
        .expect("show table mqtt");
    let entry = table
        .lines()
        .find(|l| l.contains("key=stuck-on-1 "))
        .unwrap_or_else(|| panic!("no stick entry for stuck-on-1 in:\n{table}"));
    assert!(entry.contains("server_key=demo-1"), "{entry}");
    let port = ports.lb_mqtt.to_string();
    let received = mqtt(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            "reader",
            "-t",
            "mooring/test",
            "-C",
            "1",
            "-W",
            "10",
        ],
    )
    .await
    .expect("subscribe through HAProxy");
    assert_eq!(received.trim(), "hello");

    // 4. demo-1 drains: its stick entries are cleared, so neither the client stuck to it nor a
    //    new client id gets in (demo-0 is in maintenance).
    assert!(stick_table(&h).await.contains("key=stuck-on-1"));
    assert_eq!(converge(&h, &desired(ports, [Maint, Drain])).await, 2);
    for backend in [MQTT_BACKEND, WEBSOCKET_BACKEND] {
        assert_eq!(
            states(&h, backend).await,
            expect(&[("demo-0", Maint, ONE), ("demo-1", Drain, TWO)]),
            "{backend}"
        );
    }
    assert!(
        !stick_table(&h).await.contains("key=stuck-on-1"),
        "the entry of a draining server is cleared: {}",
        stick_table(&h).await
    );
    for id in ["stuck-on-1", "newcomer"] {
        let refused = publish(ports, id, &[]).await;
        assert!(
            refused.is_err(),
            "{id} must not reach a draining server: {refused:?}"
        );
    }

    // 5. Both in maintenance: nobody gets in.
    assert_eq!(converge(&h, &desired(ports, [Maint, Maint])).await, 2);
    for id in ["stuck-on-1", "newcomer"] {
        let refused = publish(ports, id, &[]).await;
        assert!(
            refused.is_err(),
            "{id} got in with every server in maintenance: {refused:?}"
        );
    }

    // 6. Back to ready.
    assert_eq!(converge(&h, &desired(ports, [Ready, Ready])).await, 4);
    wait_running(&h, &["demo-0", "demo-1"]).await;
    publish(ports, "newcomer", &[])
        .await
        .expect("publish after maintenance");

    // 7. A reload through the master socket starts a new worker from the file (demo-1 is back at the
    //    placeholder); converging puts the runtime state back.
    let before = h.master().show_proc().await.expect("show proc");
    let reloaded = h
        .master()
        .reload(DEFAULT_RELOAD_TIMEOUT)
        .await
        .expect("reload");
    assert_eq!(reloaded.after.reloads, before.reloads + 1);
    assert!(
        reloaded
            .after
            .workers
            .iter()
            .all(|w| !before.workers.contains(w)),
        "{reloaded:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The old worker may still answer for a moment.
        if states(&h, MQTT_BACKEND).await
            == expect(&[("demo-0", Ready, ONE), ("demo-1", Maint, "0.0.0.0")])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new worker did not start from the file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(converge(&h, &desired(ports, [Ready, Ready])).await, 4);
    assert_eq!(
        states(&h, WEBSOCKET_BACKEND).await,
        expect(&[("demo-0", Ready, ONE), ("demo-1", Ready, TWO)])
    );
    wait_running(&h, &["demo-0", "demo-1"]).await;
    publish(ports, "after-reload", &[])
        .await
        .expect("publish after the reload");

    // 8. The agent's file handling: an address-only change is written without a reload...
    h.learn_loaded().await.expect("learn what HAProxy runs");
    let known = lb_config(
        ports,
        vec![
            server("demo-0", Some(ONE), true),
            server("demo-1", Some(TWO), true),
        ],
    );
    let workers = h.master().show_proc().await.expect("show proc").workers;
    let outcome = h
        .apply_config(&text(&known, &admin))
        .await
        .expect("apply the config");
    assert!(outcome.written && !outcome.reloaded, "{outcome:?}");
    assert_eq!(
        h.master().show_proc().await.expect("show proc").workers,
        workers
    );

    // ... a new server reloads, and the new worker starts with the file's current addresses.
    let grown = lb_config(
        ports,
        vec![
            server("demo-0", Some(ONE), true),
            server("demo-1", Some(TWO), true),
            server("demo-2", None, false),
        ],
    );
    let outcome = h
        .apply_config(&text(&grown, &admin))
        .await
        .expect("apply the grown config");
    assert!(outcome.written && outcome.reloaded, "{outcome:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = expect(&[
        ("demo-0", Ready, ONE),
        ("demo-1", Ready, TWO),
        ("demo-2", Maint, "0.0.0.0"),
    ]);
    while states(&h, MQTT_BACKEND).await != want {
        assert!(Instant::now() < deadline, "the new worker lacks demo-2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut with_demo_2 = desired(ports, [Ready, Ready]);
    for (backend, port) in [
        (MQTT_BACKEND, ports.broker_mqtt),
        (WEBSOCKET_BACKEND, ports.broker_ws),
    ] {
        with_demo_2.push(DesiredServer {
            backend: backend.into(),
            server: "demo-2".into(),
            addr: None,
            port,
            state: Maint,
        });
    }
    assert_eq!(
        converge(&h, &with_demo_2).await,
        0,
        "the file already says it all"
    );

    // 9. A configuration HAProxy rejects: the reload is reported failed, the old worker serves on.
    let good = text(&grown, &admin);
    write_atomic(&cfg_path, &format!("{good}\n    no-such-directive\n"))
        .await
        .expect("write a bad config");
    let err = h
        .master()
        .reload(DEFAULT_RELOAD_TIMEOUT)
        .await
        .expect_err("the reload must fail");
    assert!(matches!(err, RuntimeError::ReloadFailed { .. }), "{err}");
    wait_running(&h, &["demo-0", "demo-1"]).await;
    publish(ports, "after-failed-reload", &[])
        .await
        .expect("the old worker still serves");
    write_atomic(&cfg_path, &good)
        .await
        .expect("restore the config");
    let reloaded = h
        .master()
        .reload(DEFAULT_RELOAD_TIMEOUT)
        .await
        .expect("reload again");
    assert_eq!(reloaded.after.failed_reloads, 0);
}

/// The collector's view of a real HAProxy: its stats page read and parsed, and the backend-down
/// rule over it. demo-1 points at an address where no broker listens, so its health check fails.
#[tokio::test]
async fn the_collector_reads_real_haproxy_stats_and_alerts_on_a_down_backend() {
    let mut lab = Lab::new();
    let ports = Ports::free();
    lab.start_broker(ONE, ports.broker_mqtt);
    let admin = lab.path("admin.sock");
    let cfg_path = lab.path("haproxy.cfg");
    let cfg = lb_config(
        ports,
        vec![
            server("demo-0", Some(ONE), true),
            server("demo-1", Some(TWO), true),
        ],
    );
    std::fs::write(&cfg_path, text(&cfg, &admin)).expect("write haproxy.cfg");
    lab.start_haproxy(&cfg_path);

    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let servers = loop {
        let seen = lb_stats::fetch(&http, "lb-0", ONE, ports.stats).await;
        if let Ok(servers) = &seen {
            let status = |name: &str| {
                servers
                    .iter()
                    .find(|s| s.server == name)
                    .map(|s| s.status.clone())
            };
            if status("demo-0").as_deref() == Some("UP")
                && status("demo-1").as_deref() == Some("DOWN")
            {
                break servers.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "HAProxy's stats never showed demo-0 UP and demo-1 DOWN: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(servers.len(), 2, "only the plain MQTT backend: {servers:?}");
    let demo1 = servers
        .iter()
        .find(|s| s.server == "demo-1")
        .expect("demo-1");
    assert!(demo1.is_down());
    assert!(demo1.check.starts_with("L4"), "{demo1:?}");

    let sample = Sample {
        at: jiff::Timestamp::now(),
        nodes: vec![],
        topics: Some(vec![]),
        alarms: Some(vec![]),
        lb: Some(LbSample {
            servers,
            unreachable: vec![],
        }),
    };
    // Both servers were UP once (demo-1's broker went away), then down long enough.
    let mut was_up = sample.clone();
    if let Some(lb) = was_up.lb.as_mut() {
        for s in &mut lb.servers {
            s.status = "UP".into();
        }
    }
    let mut history = vec![Arc::new(was_up)];
    let sample = Arc::new(sample);
    history.extend((0..rules::LB_DOWN_SAMPLES).map(|_| sample.clone()));
    let evaluation = rules::evaluate(&history, &AlertThresholds::default());
    let down: Vec<_> = evaluation
        .firing
        .iter()
        .filter(|d| d.name == rules::names::LB_BACKEND_DOWN)
        .collect();
    assert_eq!(down.len(), 1, "{:?}", evaluation.firing);
    assert_eq!(down[0].labels["server"], "demo-1");
    assert_eq!(down[0].severity, Severity::Critical);

    // A replica that does not answer is reported, not mistaken for a healthy one.
    let err = lb_stats::fetch(&http, "lb-1", ONE, free_port())
        .await
        .expect_err("nothing listens there");
    assert!(err.to_string().contains("lb-1"), "{err}");
}
