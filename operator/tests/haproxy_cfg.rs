//! The real `haproxy -c` accepts what `render` writes.
//!
//! Broker and peer addresses are IPs: HAProxy resolves peer names when it parses the file, and a
//! peer name that does not resolve is a fatal error. Configurations with IPs only are checked in
//! zero-warning mode (`-dW`), with `-L` naming one of the peers as the local one (otherwise HAProxy
//! drops the peers section with a warning). One case shows that an unresolvable broker host name is
//! only a warning, thanks to `init-addr libc,none`.

use std::path::PathBuf;
use std::process::Command;

use mooring_operator::load_balancer::haproxy_cfg::{
    render, BackendServer, HealthCheckCredentials, LbConfig, ListenerPorts, Peer,
    MAX_PASSWORD_BYTES, MAX_STICK_TABLE_SIZE, MAX_TIMER_SECONDS, MAX_USERNAME_BYTES,
};

fn servers(n: usize) -> Vec<BackendServer> {
    (0..n)
        .map(|i| BackendServer {
            name: format!("demo-{i}"),
            address: Some(format!("10.0.0.{}", 10 + i)),
            initially_enabled: true,
        })
        .collect()
}

fn peers(n: usize) -> Vec<Peer> {
    (0..n)
        .map(|i| Peer {
            name: format!("demo-lb-{i}"),
            address: format!("10.0.1.{}", 10 + i),
        })
        .collect()
}

fn base() -> LbConfig {
    LbConfig {
        servers: servers(3),
        peers: peers(1),
        ..LbConfig::new("demo")
    }
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mooring-haproxy-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Writes the rendered configuration and runs `haproxy -c` on it; returns HAProxy's output.
fn haproxy_check(name: &str, cfg: &LbConfig, zero_warnings: bool) -> String {
    let text = render(cfg).unwrap_or_else(|e| panic!("{name}: render failed: {e}"));
    let path = temp_dir().join(format!("{name}.cfg"));
    std::fs::write(&path, &text).expect("write config");
    let mut cmd = Command::new("haproxy");
    cmd.arg("-c");
    if zero_warnings {
        cmd.arg("-dW");
    }
    cmd.arg("-f").arg(&path);
    if let Some(local) = cfg.peers.first() {
        cmd.arg("-L").arg(&local.name);
    }
    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "haproxy is not installed (needed by this test): run scripts/setup.sh, \
             or apt-get install -y haproxy"
        ),
        Err(e) => panic!("cannot run haproxy: {e}"),
    };
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "haproxy -c rejected {name} ({}):\n{log}\n--- {}:\n{text}",
        output.status,
        path.display()
    );
    let _ = std::fs::remove_file(&path);
    log
}

#[test]
fn anonymous_single_replica() {
    haproxy_check("anonymous", &base(), true);
}

#[test]
fn with_credentials() {
    let cfg = LbConfig {
        health_check_credentials: Some(HealthCheckCredentials {
            username: "mooring-probe".into(),
            password: "p\"a ss\nword#;{}".repeat(200),
        }),
        ..base()
    };
    haproxy_check("credentials", &cfg, true);
}

#[test]
fn with_proxy_protocol_and_every_listener() {
    let cfg = LbConfig {
        proxy_protocol: true,
        websocket: Some(ListenerPorts::same(8083)),
        tls: Some(ListenerPorts::same(8883)),
        wss: Some(ListenerPorts {
            frontend: 443,
            backend: 8084,
        }),
        ..base()
    };
    haproxy_check("proxy-protocol", &cfg, true);
}

#[test]
fn websocket_and_tls_without_proxy_protocol() {
    let cfg = LbConfig {
        websocket: Some(ListenerPorts::same(8083)),
        tls: Some(ListenerPorts::same(8883)),
        ..base()
    };
    haproxy_check("ws-tls", &cfg, true);
}

#[test]
fn three_peers_and_ipv6() {
    let mut cfg = LbConfig {
        peers: peers(3),
        ..base()
    };
    cfg.peers[2].address = "fd00::12".into();
    cfg.servers[2].address = Some("fd00::2".into());
    haproxy_check("three-peers", &cfg, true);
}

#[test]
fn no_peers() {
    let cfg = LbConfig {
        peers: Vec::new(),
        ..base()
    };
    haproxy_check("no-peers", &cfg, true);
}

#[test]
fn disabled_servers_with_and_without_address() {
    let mut cfg = LbConfig {
        websocket: Some(ListenerPorts::same(8083)),
        ..base()
    };
    cfg.servers[1].initially_enabled = false;
    cfg.servers[2].address = None;
    haproxy_check("disabled", &cfg, true);
}

#[test]
fn no_servers_yet() {
    let cfg = LbConfig {
        servers: Vec::new(),
        tls: Some(ListenerPorts::same(8883)),
        ..base()
    };
    haproxy_check("no-servers", &cfg, true);
}

#[test]
fn limits_haproxy_accepts() {
    let cfg = LbConfig {
        stick_expiry_seconds: MAX_TIMER_SECONDS,
        idle_timeout_seconds: MAX_TIMER_SECONDS,
        stick_table_size: MAX_STICK_TABLE_SIZE,
        health_check_credentials: Some(HealthCheckCredentials {
            username: "u".repeat(MAX_USERNAME_BYTES),
            password: "p".repeat(MAX_PASSWORD_BYTES),
        }),
        ..base()
    };
    haproxy_check("limits", &cfg, true);
}

#[test]
fn an_unresolvable_broker_name_is_only_a_warning() {
    let mut cfg = base();
    cfg.servers[0].address = Some("demo-0.demo-headless.mooring.invalid".into());
    let log = haproxy_check("unresolvable", &cfg, false);
    assert!(log.contains("could not resolve address"), "{log}");
}
