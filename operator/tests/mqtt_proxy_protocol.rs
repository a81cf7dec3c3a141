//! `loadBalancer.proxyProtocol` against a real RabbitMQ node (Debian's `rabbitmq-server` 3.10.8,
//! run from `/usr/lib/rabbitmq/bin`) and a real HAProxy (2.6) rendered by Mooring:
//!
//! - the node runs with the `proxy_protocol` keys Mooring's renderer writes for such a cluster
//!   (`mqtt.proxy_protocol` and `web_mqtt.proxy_protocol`; the node boots with both);
//! - Mooring's MQTT probe gets an accepting CONNACK with its PROXY v2 header, and fails without
//!   it; the RabbitMQ driver's health follows (healthy only with the header);
//! - HAProxy with Mooring's `haproxy.cfg` (`proxy_protocol: true`) finds the node healthy
//!   (`L7OK`: its own check sends a PROXY header too), and a client connecting through HAProxy
//!   from 127.0.0.3 is listed by the broker (the driver's `clients`, from `/api/connections`)
//!   with its own address and port, not HAProxy's.
//!
//! The node listens on 127.0.0.2, HAProxy on 127.0.0.1; it has its own epmd on a free port and a
//! temporary directory (kept, with its path printed, when the test fails). Everything is killed
//! when the test ends, also on a panic.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::future::BoxFuture;
use mooring_crds::BrokerClusterSpec;
use mooring_operator::broker_config::{rabbitmq, ClusterNames, Credentials, RenderInput};
use mooring_operator::drivers::mqtt_probe::{self, ProxyHeader};
use mooring_operator::drivers::rabbitmq::RabbitmqDriver;
use mooring_operator::drivers::{ClientQuery, CommandRunner, DriverConfig, NodeTarget};
use mooring_operator::load_balancer::haproxy_cfg::{
    render, BackendServer, HealthCheckCredentials, LbConfig, ListenerPorts, ADMIN_SOCKET,
};
use mooring_operator::pod_command::{CommandOutput, PodCommandError};
use rumqttc::mqttbytes::v4::{Connect, Packet};
use rumqttc::ConnectReturnCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

mod support;
use support::{binary, free_ports};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL_DIR: &str = "/usr/lib/rabbitmq/bin";
const NODE_IP: &str = "127.0.0.2";
const CLIENT_IP: &str = "127.0.0.3";
const USER: &str = "mooring";
const PASSWORD: &str = "not-a-secret-0";
const COOKIE: &str = "MOORINGPROXYTESTCOOKIE";
const CLIENT_ID: &str = "proxied-client";

#[derive(Clone, Copy, Debug)]
struct Ports {
    amqp: u16,
    management: u16,
    mqtt: u16,
    web_mqtt: u16,
    epmd: u16,
    dist: u16,
    lb_mqtt: u16,
    lb_stats: u16,
}

/// The node, its epmd and HAProxy; all stopped when dropped.
struct Lab {
    dir: PathBuf,
    ports: Ports,
    node_name: String,
    epmd: Option<Child>,
    node: Option<Child>,
    haproxy: Option<Child>,
    started: Instant,
}

impl Lab {
    fn new() -> Self {
        assert!(
            Path::new(SERVER).exists(),
            "this test runs real RabbitMQ: apt-get install rabbitmq-server"
        );
        let dir =
            std::env::temp_dir().join(format!("mooring-proxy-protocol-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the test directory");
        let [amqp, management, mqtt, web_mqtt, epmd, dist, lb_mqtt, lb_stats] =
            free_ports::<8>(NODE_IP.parse().expect("an IPv4 address"));
        let ports = Ports {
            amqp,
            management,
            mqtt,
            web_mqtt,
            epmd,
            dist,
            lb_mqtt,
            lb_stats,
        };
        let cookie = dir.join(".erlang.cookie");
        fs::write(&cookie, COOKIE).expect("write the cookie");
        fs::set_permissions(&cookie, fs::Permissions::from_mode(0o400)).expect("chmod the cookie");
        let epmd = Command::new("epmd")
            .args([
                "-port",
                &epmd.to_string(),
                "-address",
                &format!("127.0.0.1,{NODE_IP}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start epmd");
        Self {
            dir,
            ports,
            node_name: format!("rabbit-mooring-proxy@{NODE_IP}"),
            epmd: Some(epmd),
            node: None,
            haproxy: None,
            started: Instant::now(),
        }
    }

    fn elapsed(&self, what: &str) {
        eprintln!("[{:6.1} s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// Starts the node with a minimal configuration plus the `proxy_protocol` lines Mooring
    /// renders for `spec`.
    fn start_node(&mut self, proxy_lines: &[String]) {
        let p = self.ports;
        let d = |name: &str| self.dir.join(name);
        let conf = format!(
            "listeners.tcp.default = {NODE_IP}:{amqp}\n\
             management.tcp.ip = {NODE_IP}\n\
             management.tcp.port = {management}\n\
             mqtt.listeners.tcp.default = {NODE_IP}:{mqtt}\n\
             web_mqtt.tcp.ip = {NODE_IP}\n\
             web_mqtt.tcp.port = {web_mqtt}\n\
             loopback_users = none\n\
             default_user = {USER}\n\
             default_pass = {PASSWORD}\n\
             vm_memory_high_watermark.absolute = 512MB\n\
             collect_statistics_interval = 1000\n\
             {proxy}\n",
            amqp = p.amqp,
            management = p.management,
            mqtt = p.mqtt,
            web_mqtt = p.web_mqtt,
            proxy = proxy_lines.join("\n"),
        );
        fs::write(d("rabbitmq.conf"), conf).expect("write rabbitmq.conf");
        fs::write(d("advanced.config"), "[].\n").expect("write advanced.config");
        fs::write(
            d("enabled_plugins"),
            "[rabbitmq_management,rabbitmq_mqtt,rabbitmq_web_mqtt].\n",
        )
        .expect("write enabled_plugins");
        let out = fs::File::create(d("server.out")).expect("create server.out");
        let err = out.try_clone().expect("clone server.out");
        let child = Command::new(SERVER)
            .env_clear()
            .env("PATH", format!("{CTL_DIR}:/usr/bin:/bin:/usr/sbin:/sbin"))
            .env("LANG", "C.UTF-8")
            .env("HOME", &self.dir)
            .env("RABBITMQ_NODENAME", &self.node_name)
            .env("RABBITMQ_USE_LONGNAME", "true")
            .env("RABBITMQ_NODE_IP_ADDRESS", NODE_IP)
            .env("RABBITMQ_NODE_PORT", p.amqp.to_string())
            .env("RABBITMQ_DIST_PORT", p.dist.to_string())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                format!(
                    "-kernel inet_dist_use_interface {{{}}}",
                    NODE_IP.replace('.', ",")
                ),
            )
            .env("ERL_EPMD_PORT", p.epmd.to_string())
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("start rabbitmq-server");
        self.node = Some(child);
    }

    /// Starts HAProxy with `cfg`, its admin socket moved into the test's directory.
    fn start_haproxy(&mut self, cfg: &str) {
        let cfg = cfg.replace(
            ADMIN_SOCKET,
            &self.dir.join("admin.sock").display().to_string(),
        );
        let path = self.dir.join("haproxy.cfg");
        fs::write(&path, cfg).expect("write haproxy.cfg");
        let log = fs::File::create(self.dir.join("haproxy.log")).expect("create haproxy.log");
        let err = log.try_clone().expect("clone haproxy.log");
        let child = Command::new(binary("haproxy", "apt-get install -y haproxy"))
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start haproxy");
        self.haproxy = Some(child);
    }

    fn node_log(&self) -> String {
        let mut text = fs::read_to_string(self.dir.join("server.out")).unwrap_or_default();
        text.push_str(
            &fs::read_to_string(self.dir.join("log").join(format!("{}.log", self.node_name)))
                .unwrap_or_default(),
        );
        text
    }

    fn target(&self) -> NodeTarget {
        NodeTarget {
            pod: "node-0".into(),
            host: NODE_IP.into(),
            node: self.node_name.clone(),
        }
    }

    fn driver(&self, header: ProxyHeader) -> RabbitmqDriver {
        RabbitmqDriver::new(DriverConfig {
            version: "3.10.8".into(),
            username: USER.into(),
            password: PASSWORD.into(),
            http_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            commands: Arc::new(NoCommands),
            management_port: Some(self.ports.management),
            mqtt_port: Some(self.ports.mqtt),
        })
        .expect("a driver")
        .with_mqtt_proxy_header(header)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut haproxy) = self.haproxy.take() {
            let _ = haproxy.kill();
            let _ = haproxy.wait();
        }
        if let Some(mut node) = self.node.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", node.id())])
                .status();
            let _ = node.wait();
        }
        if let Some(mut epmd) = self.epmd.take() {
            let _ = epmd.kill();
            let _ = epmd.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "the test's directory (logs) is kept in {}",
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Health checks run no commands.
struct NoCommands;

impl CommandRunner for NoCommands {
    fn run<'a>(
        &'a self,
        _argv: Vec<String>,
        _data_of: Option<&'a str>,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<CommandOutput, PodCommandError>> {
        Box::pin(async { Err(PodCommandError::EmptyCommand) })
    }
}

/// The `proxy_protocol` lines of the `rabbitmq.conf` Mooring renders for a cluster with
/// `loadBalancer: {enabled: true, proxyProtocol: true}` and WebSocket on.
fn rendered_proxy_lines() -> Vec<String> {
    let spec: BrokerClusterSpec = serde_json::from_value(serde_json::json!({
        "broker": {"kind": "rabbitmq", "version": "3.10.8"},
        "loadBalancer": {"enabled": true, "proxyProtocol": true}
    }))
    .expect("a spec");
    let layout = rabbitmq::render(&RenderInput {
        spec: &spec,
        names: &ClusterNames {
            name: "demo".into(),
            namespace: "ns".into(),
            headless_service: "demo-headless".into(),
            cluster_domain: "cluster.local".into(),
        },
        credentials: &Credentials {
            erlang_cookie: COOKIE.into(),
            admin_username: USER.into(),
            admin_password: PASSWORD.into(),
        },
        users: &BTreeMap::new(),
        secret_name: "demo-mooring",
    })
    .expect("Mooring renders the configuration");
    let lines: Vec<String> = layout.config_files[rabbitmq::CONF_FILE]
        .lines()
        .filter(|l| l.contains("proxy_protocol"))
        .map(String::from)
        .collect();
    assert_eq!(
        lines,
        [
            "mqtt.proxy_protocol = true",
            "web_mqtt.proxy_protocol = true"
        ]
    );
    lines
}

/// An MQTT client of its own: connects from `CLIENT_IP` to `to`, sends CONNECT as
/// [`CLIENT_ID`] and returns the open stream after an accepting CONNACK.
async fn mqtt_client(to: SocketAddr) -> Result<TcpStream, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(CLIENT_IP.parse().expect("an IP"), 0))
        .map_err(|e| format!("bind {CLIENT_IP}: {e}"))?;
    let mut stream = socket
        .connect(to)
        .await
        .map_err(|e| format!("connect to {to}: {e}"))?;
    let mut connect = Connect::new(CLIENT_ID);
    connect.keep_alive = 60;
    connect.set_login(USER, PASSWORD);
    let mut out = BytesMut::new();
    connect.write(&mut out).map_err(|e| e.to_string())?;
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buffer = BytesMut::new();
    let packet = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match Packet::read(&mut buffer, 1024) {
                Ok(packet) => return Ok(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(e.to_string()),
            }
            match stream.read_buf(&mut buffer).await {
                Ok(0) => return Err("closed without CONNACK".to_string()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "no CONNACK within 5 s".to_string())??;
    match packet {
        Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => Ok(stream),
        other => Err(format!("expected an accepting CONNACK, got {other:?}")),
    }
}

/// HAProxy's status and check status of server `server` in backend `backend` (stats CSV).
async fn server_status(stats_port: u16, backend: &str, server: &str) -> Option<(String, String)> {
    let csv = reqwest::get(format!("http://127.0.0.1:{stats_port}/stats;csv"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (status, check) = (column("status")?, column("check_status")?);
    lines.find_map(|line| {
        let fields: Vec<&str> = line.split(',').collect();
        (fields.first() == Some(&backend) && fields.get(1) == Some(&server)).then(|| {
            (
                fields.get(status).unwrap_or(&"").to_string(),
                fields.get(check).unwrap_or(&"").to_string(),
            )
        })
    })
}

#[tokio::test]
async fn brokers_behind_proxy_protocol_see_real_client_addresses_and_mooring_still_checks_them() {
    let mut lab = Lab::new();
    let ports = lab.ports;
    lab.start_node(&rendered_proxy_lines());
    lab.elapsed("node starting with mqtt.proxy_protocol and web_mqtt.proxy_protocol");

    // 1. Mooring's probe with the header: an accepting CONNACK once the node is up.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last;
    loop {
        match mqtt_probe::connect_check_with(
            NODE_IP,
            ports.mqtt,
            USER,
            PASSWORD,
            Duration::from_secs(3),
            ProxyHeader::V2,
        )
        .await
        {
            Ok(()) => break,
            Err(e) => last = e,
        }
        assert!(
            Instant::now() < deadline,
            "the probe with a PROXY header never got CONNACK (last: {last})\n{}",
            lab.node_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    lab.elapsed("the probe with a PROXY v2 header got an accepting CONNACK");

    // 2. Without the header the listener drops the connection.
    let without =
        mqtt_probe::connect_check(NODE_IP, ports.mqtt, USER, PASSWORD, Duration::from_secs(5))
            .await;
    let e = without.expect_err("a listener that requires the PROXY header refused a bare CONNECT");
    assert!(e.contains("without CONNACK"), "{e}");
    lab.elapsed(&format!("without the header: {e}"));

    // 3. The driver's health follows its header setting.
    let node = lab.target();
    let healthy = lab
        .driver(ProxyHeader::V2)
        .health(&node)
        .await
        .expect("health");
    assert!(healthy.healthy, "{healthy:?}");
    let unhealthy = lab
        .driver(ProxyHeader::None)
        .health(&node)
        .await
        .expect("health");
    assert!(!unhealthy.healthy, "{unhealthy:?}");
    let failed: Vec<&str> = unhealthy
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(failed, ["mqtt-connect"], "{unhealthy:?}");
    lab.elapsed("the driver is healthy with the header, its mqtt-connect check fails without");

    // 4. HAProxy with Mooring's configuration in front of the node.
    let cfg = render(&LbConfig {
        servers: vec![BackendServer {
            name: "node-0".into(),
            address: Some(NODE_IP.into()),
            initially_enabled: true,
        }],
        mqtt: ListenerPorts {
            frontend: ports.lb_mqtt,
            backend: ports.mqtt,
        },
        stats_port: ports.lb_stats,
        health_check_credentials: Some(HealthCheckCredentials {
            username: USER.into(),
            password: PASSWORD.into(),
        }),
        proxy_protocol: true,
        // Within the test machine's file descriptor limit.
        max_connections: 1000,
        ..LbConfig::new("demo")
    })
    .expect("haproxy.cfg renders");
    lab.start_haproxy(&cfg);
    // Servers start UP; the check must have passed at least once (L7OK) and keep it UP.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = server_status(ports.lb_stats, "mqtt", "node-0").await;
        if let Some((up, check)) = &status {
            if up == "UP" && check == "L7OK" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "HAProxy's check never passed: {status:?}\n{}",
            fs::read_to_string(lab.dir.join("haproxy.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    lab.elapsed("HAProxy's MQTT check with its PROXY header is L7OK");

    // 5. A client through HAProxy, seen by the broker with its own address.
    let lb: SocketAddr = format!("127.0.0.1:{}", ports.lb_mqtt)
        .parse()
        .expect("an address");
    let client = mqtt_client(lb).await.expect("a client through HAProxy");
    let local = client.local_addr().expect("the client's address");
    assert_eq!(local.ip().to_string(), CLIENT_IP);
    let driver = lab.driver(ProxyHeader::V2);
    let query = ClientQuery {
        client_id: Some(CLIENT_ID.into()),
        ..ClientQuery::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let page = driver.clients(&node, &query).await.expect("clients");
        if let Some(c) = page.clients.into_iter().find(|c| c.client_id == CLIENT_ID) {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the broker never listed {CLIENT_ID}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(seen.ip_address.as_deref(), Some(CLIENT_IP), "{seen:?}");
    assert_eq!(seen.port, Some(local.port()), "{seen:?}");
    lab.elapsed(&format!(
        "the broker lists {CLIENT_ID} at {}:{} (the client's own address; HAProxy is at 127.0.0.1)",
        CLIENT_IP,
        local.port()
    ));

    // The connections without a header or with HAProxy's check header never crashed a reader
    // (RabbitMQ 3.10 crashes on a LOCAL header, which Mooring never sends).
    let log = lab.node_log();
    assert!(!log.contains("badmatch"), "{log}");
    drop(client);
}
