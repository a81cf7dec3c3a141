//! The RabbitMQ driver against two real RabbitMQ nodes on this machine (Debian's
//! `rabbitmq-server` 3.10, run directly from `/usr/lib/rabbitmq/bin`, and `mosquitto_sub`/
//! `mosquitto_pub` as MQTT clients).
//!
//! The nodes are set up like Mooring's Pods, on loopback: long node names
//! (`RABBITMQ_USE_LONGNAME=true`), node 1 `rabbit-mooring-test-1@127.0.0.1` and node 2
//! `rabbit-mooring-test-2@127.0.0.2`, each on its own loopback address with the SAME ports (as
//! Pods have their own IPs), so one driver reaches both like in a cluster. Everything else is
//! private to the test: its own epmd on a free port (`ERL_EPMD_PORT`), a temporary directory per
//! node (data, logs, config, `HOME` with a 0400 `.erlang.cookie`), no host configuration.
//!
//! The CLI commands of the driver run through [`LocalRunner`], a [`CommandRunner`] that runs the
//! argv here (instead of in a command Pod) with `HOME` at a copy of the cookie, `rabbitmqctl` from
//! `/usr/lib/rabbitmq/bin` on `PATH` and the test's epmd port. The argv is the driver's own, with
//! one rewrite: for a command that must see a node's data volume (`data_of`), the data path
//! (`/var/lib/rabbitmq/mnesia`) becomes that node's data directory. The `-l` (long names) flag is
//! NOT rewritten: the node names are long names with IP addresses, which need no DNS.
//!
//! The nodes are killed (their process groups) and the epmd stopped when the test ends, also on
//! a panic; the directory is kept (and its path printed) when the test fails.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use mooring_operator::broker_config::rabbitmq::DATA_DIR;
use mooring_operator::drivers::rabbitmq::{RabbitmqDriver, QUARANTINE_DIR};
use mooring_operator::drivers::{
    mqtt_probe, ClientQuery, CommandRunner, DriverConfig, DriverError, NodeTarget,
};
use mooring_operator::pod_command::{CommandOutput, PodCommandError};

mod support;
use support::free_ports;

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL_DIR: &str = "/usr/lib/rabbitmq/bin";
const USER: &str = "mooring";
const PASSWORD: &str = "not-a-secret-0";
const COOKIE: &str = "MOORINGDRIVERTESTCOOKIE";

/// Ports shared by both nodes (each on its own loopback address), and the per-node ones.
#[derive(Clone, Copy, Debug)]
struct Ports {
    amqp: u16,
    management: u16,
    mqtt: u16,
    epmd: u16,
    dist: [u16; 2],
}

/// One RabbitMQ node of the test.
struct Node {
    index: usize,
    name: String,
    ip: String,
    dir: PathBuf,
    process: Option<Child>,
}

impl Node {
    fn target(&self) -> NodeTarget {
        NodeTarget {
            pod: format!("node-{}", self.index),
            host: self.ip.clone(),
            node: self.name.clone(),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("mnesia")
    }

    /// Starts `rabbitmq-server` in its own process group.
    fn start(&mut self, ports: Ports) {
        assert!(self.process.is_none(), "{} runs already", self.name);
        let out = fs::File::create(self.dir.join("server.out")).unwrap();
        let err = out.try_clone().unwrap();
        let d = |p: &str| self.dir.join(p);
        let child = Command::new(SERVER)
            .env_clear()
            .env("PATH", format!("{CTL_DIR}:/usr/bin:/bin:/usr/sbin:/sbin"))
            .env("LANG", "C.UTF-8")
            .env("HOME", &self.dir)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_USE_LONGNAME", "true")
            .env("RABBITMQ_NODE_IP_ADDRESS", &self.ip)
            .env("RABBITMQ_NODE_PORT", ports.amqp.to_string())
            .env("RABBITMQ_DIST_PORT", ports.dist[self.index - 1].to_string())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                format!(
                    "-kernel inet_dist_use_interface {{{}}}",
                    self.ip.replace('.', ",")
                ),
            )
            .env("ERL_EPMD_PORT", ports.epmd.to_string())
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
        self.process = Some(child);
    }

    /// Kills the node's process group and reaps the server script.
    fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
    }

    /// Waits for the server script to exit (after a `stop`, or a boot that fails).
    fn wait_exit(&mut self, within: Duration) -> bool {
        let Some(child) = self.process.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                // The VM is gone; clean up what may be left of the group.
                self.kill();
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    fn log(&self) -> String {
        let mut text = fs::read_to_string(self.dir.join("server.out")).unwrap_or_default();
        text.push_str(
            &fs::read_to_string(self.dir.join("log").join(format!("{}.log", self.name)))
                .unwrap_or_default(),
        );
        text
    }
}

/// The test's nodes, epmd and MQTT clients; all stopped when dropped.
struct Lab {
    dir: PathBuf,
    ports: Ports,
    epmd: Option<Child>,
    nodes: Vec<Node>,
    clients: Vec<Child>,
    started: Instant,
}

impl Lab {
    fn new() -> Self {
        assert!(
            Path::new(SERVER).exists() && Path::new("/usr/bin/mosquitto_sub").exists(),
            "this test runs real RabbitMQ: it needs {SERVER} (apt-get install rabbitmq-server) \
             and mosquitto_sub/mosquitto_pub (apt-get install mosquitto-clients)"
        );
        let dir =
            std::env::temp_dir().join(format!("mooring-rabbitmq-driver-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let [amqp, management, mqtt, epmd, dist1, dist2] =
            free_ports::<6>(Ipv4Addr::new(127, 0, 0, 2));
        let ports = Ports {
            amqp,
            management,
            mqtt,
            epmd,
            dist: [dist1, dist2],
        };
        write_home(&dir.join("cli"));
        let epmd = Command::new("epmd")
            .args([
                "-port",
                &epmd.to_string(),
                "-address",
                "127.0.0.1,127.0.0.2",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start epmd");
        let mut lab = Self {
            dir,
            ports,
            epmd: Some(epmd),
            nodes: Vec::new(),
            clients: Vec::new(),
            started: Instant::now(),
        };
        for index in 1..=2 {
            lab.nodes.push(lab.prepare(index));
        }
        lab
    }

    /// The directory, configuration and cookie of node `index`.
    fn prepare(&self, index: usize) -> Node {
        let ip = format!("127.0.0.{index}");
        let dir = self.dir.join(format!("node-{index}"));
        write_home(&dir);
        let p = self.ports;
        fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = {ip}:{amqp}\n\
                 management.tcp.ip = {ip}\n\
                 management.tcp.port = {management}\n\
                 mqtt.listeners.tcp.default = {ip}:{mqtt}\n\
                 loopback_users = none\n\
                 default_user = {USER}\n\
                 default_pass = {PASSWORD}\n\
                 vm_memory_high_watermark.absolute = 512MB\n\
                 collect_statistics_interval = 1000\n",
                amqp = p.amqp,
                management = p.management,
                mqtt = p.mqtt,
            ),
        )
        .unwrap();
        fs::write(dir.join("advanced.config"), "[].\n").unwrap();
        fs::write(
            dir.join("enabled_plugins"),
            "[rabbitmq_management,rabbitmq_mqtt].\n",
        )
        .unwrap();
        Node {
            index,
            name: format!("rabbit-mooring-test-{index}@{ip}"),
            ip,
            dir,
            process: None,
        }
    }

    fn node(&mut self, index: usize) -> &mut Node {
        &mut self.nodes[index - 1]
    }

    fn elapsed(&self, what: &str) {
        eprintln!("[{:6.1} s] {what}", self.started.elapsed().as_secs_f64());
    }

    fn mosquitto(&mut self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(["-h", "127.0.0.1", "-p", &self.ports.mqtt.to_string()])
            .args(["-u", USER, "-P", PASSWORD])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// A `mosquitto_sub` of node 1 that runs until killed; returns its index in `clients`.
    fn subscribe(&mut self, args: &[&str]) -> usize {
        let child = self
            .mosquitto("mosquitto_sub", args)
            .spawn()
            .expect("start mosquitto_sub");
        self.clients.push(child);
        self.clients.len() - 1
    }

    fn stop_client(&mut self, index: usize) {
        let child = &mut self.clients[index];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// `mosquitto_pub` to node 1, which must succeed.
    fn publish(&mut self, topic: &str, messages: usize) {
        for i in 0..messages {
            let status = self
                .mosquitto(
                    "mosquitto_pub",
                    &["-q", "1", "-t", topic, "-m", &format!("m{i}")],
                )
                .status()
                .expect("run mosquitto_pub");
            assert!(status.success(), "mosquitto_pub {topic}: {status}");
        }
    }

    fn runner(&self) -> Arc<LocalRunner> {
        Arc::new(LocalRunner {
            home: self.dir.join("cli"),
            epmd_port: self.ports.epmd,
            data_dirs: self
                .nodes
                .iter()
                .map(|n| (n.target().pod, n.data_dir()))
                .collect(),
            calls: Mutex::new(Vec::new()),
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for client in &mut self.clients {
            let _ = client.kill();
            let _ = client.wait();
        }
        for node in &mut self.nodes {
            node.kill();
        }
        if let Some(mut epmd) = self.epmd.take() {
            let _ = epmd.kill();
            let _ = epmd.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "the nodes' directories (logs) are kept in {}",
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A `HOME` with the test's Erlang cookie (owner-only, as the VM and the CLI require).
fn write_home(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let cookie = dir.join(".erlang.cookie");
    fs::write(&cookie, COOKIE).unwrap();
    fs::set_permissions(&cookie, fs::Permissions::from_mode(0o400)).unwrap();
}

/// Runs the driver's commands here instead of in a command Pod (see the file's documentation).
struct LocalRunner {
    home: PathBuf,
    epmd_port: u16,
    /// Pod name -> that node's data directory (stands for the data volume at [`DATA_DIR`]).
    data_dirs: BTreeMap<String, PathBuf>,
    /// Every command run: its argv (as the driver gave it) and `data_of`.
    calls: Mutex<Vec<(Vec<String>, Option<String>)>>,
}

impl CommandRunner for LocalRunner {
    fn run<'a>(
        &'a self,
        argv: Vec<String>,
        data_of: Option<&'a str>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<CommandOutput, PodCommandError>> {
        async move {
            self.calls
                .lock()
                .unwrap()
                .push((argv.clone(), data_of.map(String::from)));
            let mut argv = argv;
            if let Some(pod) = data_of {
                let dir = self.data_dirs.get(pod).expect("a known pod");
                for arg in &mut argv {
                    *arg = arg.replace(DATA_DIR, dir.to_str().unwrap());
                }
            }
            if argv.is_empty() {
                return Err(PodCommandError::EmptyCommand);
            }
            let started = Instant::now();
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .env_clear()
                .env("PATH", format!("{CTL_DIR}:/usr/bin:/bin:/usr/sbin:/sbin"))
                .env("LANG", "C.UTF-8")
                .env("HOME", &self.home)
                .env("ERL_EPMD_PORT", self.epmd_port.to_string())
                .stdin(Stdio::null())
                .kill_on_drop(true);
            let output = match tokio::time::timeout(timeout, cmd.output()).await {
                Ok(output) => output.expect("run a command"),
                Err(_) => {
                    return Err(PodCommandError::Timeout {
                        pod: "local".into(),
                        timeout,
                        state: "running".into(),
                    })
                }
            };
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            let exit_code = output.status.code().unwrap_or(-1);
            eprintln!(
                "    $ {} -> exit {exit_code} in {:.1} s\n{}",
                argv.join(" ").replace('\n', "\n      "),
                started.elapsed().as_secs_f64(),
                text.trim_end()
            );
            Ok(CommandOutput {
                exit_code,
                output: text,
                truncated: false,
            })
        }
        .boxed()
    }
}

fn config(ports: Ports, runner: Arc<LocalRunner>) -> DriverConfig {
    DriverConfig {
        version: "3.10.8".into(),
        username: USER.into(),
        password: PASSWORD.into(),
        http_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(120),
        commands: runner,
        management_port: Some(ports.management),
        mqtt_port: Some(ports.mqtt),
    }
}

/// Polls `check` every 250 ms until it returns `Some`, at most `within`.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + within;
    let mut last = String::new();
    loop {
        match check().await {
            Ok(Some(t)) => return t,
            Ok(None) => {}
            Err(e) => last = e,
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?} (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_healthy(driver: &RabbitmqDriver, node: &NodeTarget, within: Duration) {
    wait_for(&format!("{} healthy", node.node), within, || async {
        match driver.health(node).await {
            Ok(h) if h.healthy => Ok(Some(())),
            Ok(h) => Err(format!("{:?}", h.checks)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_driver_against_real_nodes() {
    let mut lab = Lab::new();
    let ports = lab.ports;
    let runner = lab.runner();
    let driver = RabbitmqDriver::new(config(ports, runner.clone())).unwrap();
    let (n1, n2) = (lab.node(1).target(), lab.node(2).target());

    // Two independent nodes: node 2 is a stray from the start.
    lab.node(1).start(ports);
    lab.node(2).start(ports);
    wait_healthy(&driver, &n1, Duration::from_secs(90)).await;
    wait_healthy(&driver, &n2, Duration::from_secs(90)).await;
    lab.elapsed("both nodes are healthy");

    // ----- health -----
    let health = driver.health(&n1).await.unwrap();
    let names: Vec<&str> = health.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["alarms", "mqtt-listener", "virtual-hosts", "mqtt-connect"]
    );
    assert!(health.checks.iter().all(|c| c.ok && c.detail.is_empty()));
    // MQTT CONNECT to a port that speaks AMQP, not MQTT: the node is not healthy.
    let amqp_as_mqtt = RabbitmqDriver::new(DriverConfig {
        mqtt_port: Some(ports.amqp),
        ..config(ports, runner.clone())
    })
    .unwrap();
    let health = amqp_as_mqtt.health(&n1).await.unwrap();
    assert!(!health.healthy);
    let connect = health
        .checks
        .iter()
        .find(|c| c.name == "mqtt-connect")
        .unwrap();
    assert!(
        !connect.ok && connect.detail.contains(&ports.amqp.to_string()),
        "{connect:?}"
    );
    assert!(
        health.checks.iter().filter(|c| c.ok).count() == 3,
        "{health:?}"
    );
    eprintln!("    mqtt-connect against AMQP: {}", connect.detail);
    // The probe itself: accepted with the admin user, refused with a wrong password.
    mqtt_probe::connect_check(
        "127.0.0.1",
        ports.mqtt,
        USER,
        PASSWORD,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let refused = mqtt_probe::connect_check(
        "127.0.0.1",
        ports.mqtt,
        USER,
        "wrong",
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(refused.contains("refused"), "{refused}");
    assert!(!refused.contains("wrong"));
    // Nothing listens: no verdict, an error.
    let nowhere = NodeTarget {
        host: "127.0.0.3".into(),
        ..n1.clone()
    };
    let e = driver.health(&nowhere).await.unwrap_err();
    assert_eq!(e.reason(), "Unreachable", "{e}");
    // Wrong credentials are no verdict either.
    let bad_login = RabbitmqDriver::new(DriverConfig {
        password: "wrong".into(),
        ..config(ports, runner.clone())
    })
    .unwrap();
    match bad_login.health(&n1).await {
        Err(DriverError::Http { status: 401, .. }) => {}
        other => panic!("expected HTTP 401, got {other:?}"),
    }

    // ----- cluster views: each node lists only itself -----
    let v1 = driver.cluster_view(&n1).await.unwrap();
    assert_eq!(v1.node, n1.node);
    assert_eq!(v1.running, [n1.node.as_str()]);
    assert!(v1.stopped.is_empty() && v1.partitions.is_empty());
    let v2 = driver.cluster_view(&n2).await.unwrap();
    assert_eq!(v2.running, [n2.node.as_str()], "a stray lists only itself");

    // ----- clients -----
    let alpha = lab.subscribe(&[
        "-i",
        "sensor-alpha",
        "-c",
        "-q",
        "1",
        "-t",
        "sensors/+/temp",
    ]);
    lab.subscribe(&[
        "-i",
        "dash-beta",
        "-q",
        "1",
        "-t",
        "sensors/#",
        "-t",
        "alerts/x",
    ]);
    let page = wait_for(
        "two subscribed clients",
        Duration::from_secs(20),
        || async {
            let page = driver
                .clients(&n1, &ClientQuery::default())
                .await
                .map_err(|e| e.to_string())?;
            let subscribed = page
                .clients
                .iter()
                .filter(|c| c.subscriptions >= Some(1))
                .count();
            Ok((subscribed == 2).then_some(page))
        },
    )
    .await;
    assert_eq!(page.total, Some(2));
    assert!(!page.has_next);
    let ids: Vec<&str> = page.clients.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(ids, ["dash-beta", "sensor-alpha"]);
    let beta = &page.clients[0];
    assert_eq!(beta.username.as_deref(), Some(USER));
    assert_eq!(beta.node, n1.node);
    assert_eq!(beta.ip_address.as_deref(), Some("127.0.0.1"));
    assert!(beta.port.is_some() && beta.connected && beta.connected_at.is_some());
    assert_eq!(beta.protocol.as_deref(), Some("MQTT 3.1.1"));
    assert_eq!(beta.subscriptions, Some(2));
    assert_eq!(page.clients[1].subscriptions, Some(1));
    let filtered = driver
        .clients(
            &n1,
            &ClientQuery {
                client_id: Some("alph".into()),
                ..ClientQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(filtered.total, Some(1));
    assert_eq!(filtered.clients[0].client_id, "sensor-alpha");
    let first = driver
        .clients(
            &n1,
            &ClientQuery {
                limit: 1,
                ..ClientQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (first.clients.len(), first.has_next, first.total),
        (1, true, Some(2))
    );
    let nobody = driver
        .clients(
            &n1,
            &ClientQuery {
                username: Some("someone-else".into()),
                ..ClientQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(nobody.total, Some(0));
    lab.elapsed("clients listed");

    // ----- topic metrics -----
    let topics: Vec<String> = [
        "sensors/a/temp",
        "sensors/b/hum",
        "alerts/x",
        "nothing/here",
    ]
    .map(String::from)
    .to_vec();
    let m = driver.topic_metrics(&n1, &topics).await.unwrap();
    assert_eq!(
        m.iter().map(|t| t.subscribers).collect::<Vec<_>>(),
        [Some(2), Some(1), Some(1), Some(0)]
    );
    assert!(m
        .iter()
        .all(|t| t.messages_in.is_none() && t.rate_in.is_none()));
    lab.publish("sensors/a/temp", 3);
    let m = wait_for("deliveries counted", Duration::from_secs(20), || async {
        let m = driver
            .topic_metrics(&n1, &topics)
            .await
            .map_err(|e| e.to_string())?;
        Ok((m[0].messages_out >= Some(6)).then_some(m))
    })
    .await;
    assert_eq!(
        m[0].messages_out,
        Some(6),
        "3 messages to 2 subscribers: {m:?}"
    );
    assert_eq!(m[0].queued, Some(0));
    // sensor-alpha goes away; its persistent session (QoS 1) keeps what arrives.
    lab.stop_client(alpha);
    lab.publish("sensors/a/temp", 2);
    let m = wait_for("messages queued", Duration::from_secs(20), || async {
        let m = driver
            .topic_metrics(&n1, &topics)
            .await
            .map_err(|e| e.to_string())?;
        Ok((m[0].queued == Some(2)).then_some(m))
    })
    .await;
    assert_eq!(
        m[0].subscribers,
        Some(2),
        "the offline session still subscribes"
    );
    let clients = driver.clients(&n1, &ClientQuery::default()).await.unwrap();
    assert_eq!(clients.total, Some(1), "only dash-beta is connected");
    lab.elapsed("topic metrics");

    // ----- kick -----
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    let mut options = rumqttc::MqttOptions::new("kick-me", "127.0.0.1", ports.mqtt);
    options
        .set_credentials(USER, PASSWORD)
        .set_keep_alive(Duration::from_secs(30));
    let (_client, mut events) = rumqttc::AsyncClient::new(options, 4);
    let session = tokio::spawn(async move {
        let mut connected_tx = Some(connected_tx);
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    if let Some(tx) = connected_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), connected_rx)
        .await
        .expect("kick-me connects")
        .unwrap();
    wait_for("kick-me listed", Duration::from_secs(10), || async {
        let page = driver
            .clients(
                &n1,
                &ClientQuery {
                    client_id: Some("kick-me".into()),
                    ..ClientQuery::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok((page.total == Some(1)).then_some(()))
    })
    .await;
    assert!(driver.kick(&n1, "kick-me").await.unwrap());
    let ended = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the kicked client is disconnected")
        .unwrap();
    eprintln!("    kicked client saw: {ended}");
    assert!(!driver.kick(&n1, "no-such-client").await.unwrap());

    // ----- alarms and node figures -----
    assert_eq!(driver.alarms(&n1).await.unwrap(), []);
    let stats = driver.node_stats(&n1).await.unwrap();
    assert_eq!(stats.node, n1.node);
    assert!(stats.running);
    assert_eq!(stats.role.as_deref(), Some("disc"));
    assert!(
        stats
            .version
            .as_deref()
            .unwrap_or_default()
            .starts_with("3.10."),
        "{stats:?}"
    );
    assert!(stats.memory_used_bytes.unwrap_or(0) > 0);
    assert_eq!(stats.memory_limit_bytes, Some(512_000_000));
    assert!(stats.uptime_seconds.is_some());
    assert_eq!(stats.connections, Some(1), "dash-beta: {stats:?}");
    let stats2 = driver.node_stats(&n2).await.unwrap();
    assert_eq!(
        (stats2.node.as_str(), stats2.connections),
        (n2.node.as_str(), Some(0))
    );
    lab.elapsed("kick, alarms, node figures");

    // ----- join -----
    // A join that fails (the seed does not exist) still starts the app again.
    let ghost = NodeTarget {
        node: "rabbit-mooring-test-9@127.0.0.1".into(),
        ..n1.clone()
    };
    let e = driver.join(&n2, &ghost).await.unwrap_err();
    assert_eq!(e.reason(), "CommandFailed", "{e}");
    assert!(e.to_string().contains("start_app exited 0"), "{e}");
    wait_healthy(&driver, &n2, Duration::from_secs(30)).await;
    assert_eq!(
        driver.cluster_view(&n2).await.unwrap().running,
        [n2.node.as_str()]
    );
    lab.elapsed("a failed join left node 2 running");

    driver.join(&n2, &n1).await.unwrap();
    let both = vec![n1.node.clone(), n2.node.clone()];
    for n in [&n1, &n2] {
        let view = wait_for(
            "both nodes see the cluster",
            Duration::from_secs(30),
            || async {
                let v = driver.cluster_view(n).await.map_err(|e| e.to_string())?;
                Ok((v.running.len() == 2).then_some(v))
            },
        )
        .await;
        assert_eq!(view.running, both);
        assert_eq!(view.node, n.node);
    }
    wait_healthy(&driver, &n2, Duration::from_secs(30)).await;
    {
        let calls = runner.calls.lock().unwrap();
        let (argv, data_of) = calls.last().unwrap();
        assert_eq!(argv[..2], ["sh", "-c"]);
        assert!(argv[2].contains(&format!("join_cluster '{}'", n1.node)));
        assert!(data_of.is_none());
    }
    // Connections of the whole cluster, asked of either node.
    let via2 = driver.clients(&n2, &ClientQuery::default()).await.unwrap();
    assert_eq!(via2.total, Some(1));
    lab.elapsed("node 2 joined node 1");

    // ----- restart_vhosts: the default vhost restarts and the node serves MQTT again -----
    driver.restart_vhosts(&n2).await.unwrap();
    {
        let calls = runner.calls.lock().unwrap();
        let (argv, _) = calls.last().unwrap();
        assert_eq!(argv[argv.len() - 3..], ["restart_vhost", "-p", "/"]);
    }
    wait_healthy(&driver, &n2, Duration::from_secs(30)).await;
    lab.elapsed("the vhost of node 2 restarted");

    // ----- remove_member -----
    let stop = runner
        .run(
            vec![
                "rabbitmqctl".into(),
                "-q".into(),
                "-l".into(),
                "-n".into(),
                n2.node.clone(),
                "stop".into(),
            ],
            None,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(stop.exit_code, 0, "{}", stop.output);
    assert!(
        lab.node(2).wait_exit(Duration::from_secs(30)),
        "node 2 stops"
    );
    let view = wait_for(
        "node 1 sees node 2 stopped",
        Duration::from_secs(30),
        || async {
            let v = driver.cluster_view(&n1).await.map_err(|e| e.to_string())?;
            Ok((v.stopped == [n2.node.as_str()]).then_some(v))
        },
    )
    .await;
    assert_eq!(view.running, [n1.node.as_str()]);
    assert_eq!(view.members(), both);
    driver.remove_member(&n1, &n2.node).await.unwrap();
    let view = driver.cluster_view(&n1).await.unwrap();
    assert_eq!(view.running, [n1.node.as_str()]);
    assert!(view.stopped.is_empty(), "{view:?}");
    // Again: not a member any more, which is what was wanted.
    driver.remove_member(&n1, &n2.node).await.unwrap();
    lab.elapsed("node 2 removed");

    // ----- reset_forgotten -----
    // The forgotten node cannot boot: `inconsistent_cluster`.
    lab.node(2).start(ports);
    assert!(
        lab.node(2).wait_exit(Duration::from_secs(60)),
        "node 2's boot fails"
    );
    assert!(
        lab.node(2).log().contains("inconsistent_cluster"),
        "{}",
        lab.node(2).log()
    );
    lab.elapsed("node 2's boot failed with inconsistent_cluster");
    driver.reset_forgotten(&n2).await.unwrap();
    {
        let calls = runner.calls.lock().unwrap();
        let (argv, data_of) = calls.last().unwrap();
        assert_eq!(data_of.as_deref(), Some(n2.pod.as_str()));
        assert!(argv[2].contains(DATA_DIR));
    }
    let data = lab.node(2).data_dir();
    let quarantines: Vec<_> = fs::read_dir(data.join(QUARANTINE_DIR)).unwrap().collect();
    assert_eq!(quarantines.len(), 1);
    let quarantine = quarantines.into_iter().next().unwrap().unwrap().path();
    assert!(
        quarantine.join(&n2.node).is_dir(),
        "{}",
        quarantine.display()
    );
    assert!(!data.join(&n2.node).exists());
    // Nothing left to move: a no-op.
    driver.reset_forgotten(&n2).await.unwrap();
    // It boots empty, as a stray, and joins again.
    lab.node(2).start(ports);
    wait_healthy(&driver, &n2, Duration::from_secs(90)).await;
    assert_eq!(
        driver.cluster_view(&n2).await.unwrap().running,
        [n2.node.as_str()]
    );
    lab.elapsed("node 2 booted empty after the reset");
    driver.join(&n2, &n1).await.unwrap();
    let view = wait_for("node 2 is back", Duration::from_secs(30), || async {
        let v = driver.cluster_view(&n1).await.map_err(|e| e.to_string())?;
        Ok((v.running.len() == 2).then_some(v))
    })
    .await;
    assert_eq!(view.running, both);
    lab.elapsed("node 2 joined again");
}
