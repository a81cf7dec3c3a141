//! Probes and lifecycle hooks, as the kubelet runs them.
//!
//! - `tcpSocket` and `httpGet` connect from the host to the Pod's address (reachable over the
//!   bridge); `httpGet` succeeds on a status 200-399. `https` and `grpc` are checked as a TCP
//!   connect (the agent has no TLS or gRPC client).
//! - `exec` runs the command in the container's namespaces
//!   (`nsenter --target <pid 1> --net --mount --uts --pid`) with the container's environment; a
//!   command that outlives `timeoutSeconds` fails.
//! - Timing: `initialDelaySeconds` from the container's start, then every `periodSeconds`; a
//!   result changes after `successThreshold` / `failureThreshold` consecutive outcomes. A
//!   `startupProbe` gates the others; until it succeeds `started` is false. Without a readiness
//!   probe a started container is ready.
//!
//! [`prober`] runs all probes of one container and reports [`ProbeEvent`]s.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::env::Env;
use super::process::{self, system_binary};

/// What a probe's outcome changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeEvent {
    /// The startup probe succeeded (or there is none).
    Started,
    /// The readiness result changed.
    Ready(bool),
    /// The liveness probe failed `failureThreshold` times: restart the container.
    LivenessFailed(String),
    /// The startup probe failed `failureThreshold` times: restart the container.
    StartupFailed(String),
}

/// Where probes go.
#[derive(Clone, Debug)]
pub struct Target {
    /// The Pod's address.
    pub pod_ip: Ipv4Addr,
    /// The host pid of the container's PID 1 (for `exec`).
    pub pid1: Option<u32>,
    /// The container's environment (for `exec`).
    pub env: Env,
    /// The container's named ports.
    pub ports: BTreeMap<String, u16>,
}

impl Target {
    /// The target of `container` in a Pod at `pod_ip`.
    pub fn new(container: &Container, pod_ip: Ipv4Addr, pid1: Option<u32>, env: Env) -> Self {
        let ports = container
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        Self {
            pod_ip,
            pid1,
            env,
            ports,
        }
    }

    fn port(&self, port: &IntOrString) -> Result<u16, String> {
        match port {
            IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("invalid port {p}")),
            IntOrString::String(name) => match name.parse::<u16>() {
                Ok(p) => Ok(p),
                Err(_) => self
                    .ports
                    .get(name)
                    .copied()
                    .ok_or_else(|| format!("the container has no port named {name:?}")),
            },
        }
    }

    fn host(&self, host: Option<&String>) -> String {
        host.filter(|h| !h.is_empty())
            .cloned()
            .unwrap_or_else(|| self.pod_ip.to_string())
    }
}

/// A probe's timing with the kubelet's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// `initialDelaySeconds` (0).
    pub initial_delay: Duration,
    /// `periodSeconds` (10).
    pub period: Duration,
    /// `timeoutSeconds` (1).
    pub timeout: Duration,
    /// `successThreshold` (1).
    pub success_threshold: u32,
    /// `failureThreshold` (3).
    pub failure_threshold: u32,
}

impl Timing {
    /// The timing of `probe`.
    pub fn of(probe: &Probe) -> Self {
        let secs = |v: Option<i32>, default: u64, min: u64| {
            Duration::from_secs(v.map(|v| v.max(0) as u64).unwrap_or(default).max(min))
        };
        let count = |v: Option<i32>, default: u32| v.map(|v| v.max(1) as u32).unwrap_or(default);
        Self {
            initial_delay: secs(probe.initial_delay_seconds, 0, 0),
            period: secs(probe.period_seconds, 10, 1),
            timeout: secs(probe.timeout_seconds, 1, 1),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// Counts consecutive outcomes and says when the result flips (pure).
#[derive(Clone, Debug)]
pub struct Threshold {
    timing: Timing,
    result: bool,
    successes: u32,
    failures: u32,
}

impl Threshold {
    /// Starts at `initial` (readiness starts false, liveness true).
    pub fn new(timing: Timing, initial: bool) -> Self {
        Self {
            timing,
            result: initial,
            successes: 0,
            failures: 0,
        }
    }

    /// Records an outcome; `Some(new result)` when the result changes.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if !self.result && self.successes >= self.timing.success_threshold {
                self.result = true;
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.result && self.failures >= self.timing.failure_threshold {
                self.result = false;
                return Some(false);
            }
        }
        None
    }
}

/// Runs one probe (or hook action) once: `Ok` or why it failed.
pub async fn check(probe: &Probe, target: &Target, timeout: Duration) -> Result<(), String> {
    if let Some(tcp) = &probe.tcp_socket {
        tcp_check(tcp, target, timeout).await
    } else if let Some(http) = &probe.http_get {
        http_check(http, target, timeout).await
    } else if let Some(exec) = &probe.exec {
        exec_check(exec, target, timeout).await
    } else if let Some(grpc) = &probe.grpc {
        let port = u16::try_from(grpc.port).map_err(|_| format!("invalid port {}", grpc.port))?;
        connect(&target.pod_ip.to_string(), port, timeout).await
    } else {
        Err("the probe has no handler".into())
    }
}

async fn connect(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
        Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
    }
}

async fn tcp_check(
    tcp: &TCPSocketAction,
    target: &Target,
    timeout: Duration,
) -> Result<(), String> {
    let port = target.port(&tcp.port)?;
    connect(&target.host(tcp.host.as_ref()), port, timeout).await
}

async fn http_check(
    http: &HTTPGetAction,
    target: &Target,
    timeout: Duration,
) -> Result<(), String> {
    let port = target.port(&http.port)?;
    let host = target.host(http.host.as_ref());
    if http
        .scheme
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    {
        return connect(&host, port, timeout).await;
    }
    let path = http
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let mut headers = BTreeMap::from([
        ("Host".to_string(), format!("{host}:{port}")),
        ("User-Agent".to_string(), "kube-probe/1.34".to_string()),
        ("Accept".to_string(), "*/*".to_string()),
    ]);
    for h in http.http_headers.iter().flatten() {
        headers.insert(h.name.clone(), h.value.clone());
    }
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    for (k, v) in &headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let url = format!("http://{host}:{port}{path}");
    let exchange = async {
        let mut stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("Get {url:?}: dial tcp: {e}"))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("Get {url:?}: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 8192 {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("Get {url:?}: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("Get {url:?}: malformed HTTP response"))?;
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {status}"))
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// Runs `argv` in the container's namespaces with its environment; the exit code and output.
pub async fn exec_in(
    argv: &[String],
    target: &Target,
    timeout: Duration,
) -> Result<(i32, String), String> {
    let Some(pid1) = target.pid1 else {
        return Err("the container's process is not known".into());
    };
    if argv.is_empty() {
        return Err("exec: no command".into());
    }
    let mut cmd = Command::new(system_binary("nsenter"));
    cmd.arg("--target")
        .arg(pid1.to_string())
        .args(["--net", "--mount", "--uts", "--pid", "--"])
        .args(argv)
        .env_clear()
        .envs(target.env.iter())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run nsenter: {e}"))?;
    let pgid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            text.truncate(1024);
            Ok((process::Exit::from(out.status).code, text))
        }
        Ok(Err(e)) => Err(format!("exec failed: {e}")),
        Err(_) => {
            if let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: killpg(2) on the process group the probe command was started in.
                unsafe { libc::killpg(pgid, libc::SIGKILL) };
            }
            Err(format!(
                "command {:?} timed out after {}s",
                argv.join(" "),
                timeout.as_secs()
            ))
        }
    }
}

async fn exec_check(exec: &ExecAction, target: &Target, timeout: Duration) -> Result<(), String> {
    let argv = exec.command.clone().unwrap_or_default();
    match exec_in(&argv, target, timeout).await? {
        (0, _) => Ok(()),
        (code, out) => Err(format!(
            "command {:?} exited with {code}: {}",
            argv.join(" "),
            out.trim()
        )),
    }
}

/// Runs a lifecycle hook (`postStart`/`preStop`) within `budget`.
pub async fn run_hook(
    hook: &LifecycleHandler,
    target: &Target,
    budget: Duration,
) -> Result<(), String> {
    if let Some(sleep) = &hook.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(budget)).await;
        return Ok(());
    }
    let probe = Probe {
        exec: hook.exec.clone(),
        http_get: hook.http_get.clone(),
        tcp_socket: hook.tcp_socket.clone(),
        ..Default::default()
    };
    check(&probe, target, budget).await
}

/// The probes of a container.
#[derive(Clone, Debug, Default)]
pub struct Probes {
    /// `startupProbe`.
    pub startup: Option<Probe>,
    /// `livenessProbe`.
    pub liveness: Option<Probe>,
    /// `readinessProbe`.
    pub readiness: Option<Probe>,
}

impl Probes {
    /// The probes of `container`.
    pub fn of(container: &Container) -> Self {
        Self {
            startup: container.startup_probe.clone(),
            liveness: container.liveness_probe.clone(),
            readiness: container.readiness_probe.clone(),
        }
    }
}

async fn sleep_until_due(started: Instant, timing: &Timing) {
    tokio::time::sleep_until(started + timing.initial_delay).await;
}

/// Runs every probe of a container that started at `started`, reporting on `events` until the
/// receiver goes away or a startup/liveness failure was reported.
pub async fn prober(
    probes: Probes,
    target: Target,
    started: Instant,
    events: mpsc::Sender<ProbeEvent>,
) {
    if let Some(startup) = &probes.startup {
        let timing = Timing::of(startup);
        sleep_until_due(started, &timing).await;
        let mut failures = 0;
        loop {
            match check(startup, &target, timing.timeout).await {
                Ok(()) => break,
                Err(why) => {
                    failures += 1;
                    if failures >= timing.failure_threshold {
                        let _ = events
                            .send(ProbeEvent::StartupFailed(format!(
                                "Startup probe failed: {why}"
                            )))
                            .await;
                        return;
                    }
                }
            }
            tokio::time::sleep(timing.period).await;
        }
    }
    if events.send(ProbeEvent::Started).await.is_err() {
        return;
    }
    let readiness = async {
        let Some(probe) = &probes.readiness else {
            let _ = events.send(ProbeEvent::Ready(true)).await;
            return std::future::pending::<()>().await;
        };
        let timing = Timing::of(probe);
        sleep_until_due(started, &timing).await;
        let mut threshold = Threshold::new(timing, false);
        loop {
            let outcome = check(probe, &target, timing.timeout).await;
            if let Err(why) = &outcome {
                tracing::debug!(why, "readiness probe failed");
            }
            if let Some(result) = threshold.record(outcome.is_ok()) {
                if events.send(ProbeEvent::Ready(result)).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(timing.period).await;
        }
    };
    let liveness = async {
        let Some(probe) = &probes.liveness else {
            return std::future::pending::<()>().await;
        };
        let timing = Timing::of(probe);
        sleep_until_due(started, &timing).await;
        let mut threshold = Threshold::new(timing, true);
        loop {
            let outcome = check(probe, &target, timing.timeout).await;
            let why = outcome.as_ref().err().cloned().unwrap_or_default();
            if threshold.record(outcome.is_ok()) == Some(false) {
                let _ = events
                    .send(ProbeEvent::LivenessFailed(format!(
                        "Liveness probe failed: {why}"
                    )))
                    .await;
                return;
            }
            tokio::time::sleep(timing.period).await;
        }
    };
    // Both run until the receiver goes away; liveness also ends once it reported a failure.
    tokio::select! {
        _ = readiness => {}
        _ = liveness => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    fn timing(success: u32, failure: u32) -> Timing {
        Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn thresholds_need_consecutive_outcomes() {
        let mut t = Threshold::new(timing(2, 3), false);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
        assert_eq!(t.record(false), None);
    }

    #[test]
    fn defaults_are_the_kubelets() {
        let t = Timing::of(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        assert_eq!(t.initial_delay, Duration::ZERO);
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let c = Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("mqtt".into()),
                container_port: 1883,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let t = Target::new(&c, Ipv4Addr::new(10, 244, 0, 2), None, Env::new());
        assert_eq!(t.port(&IntOrString::String("mqtt".into())), Ok(1883));
        assert_eq!(t.port(&IntOrString::String("8080".into())), Ok(8080));
        assert_eq!(t.port(&IntOrString::Int(15672)), Ok(15672));
        assert!(t.port(&IntOrString::String("nope".into())).is_err());
    }

    #[tokio::test]
    async fn liveness_runs_next_to_a_container_without_readiness_probe() {
        // A port where nothing listens: the liveness probe fails at once.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let probes = Probes {
            startup: None,
            readiness: None,
            liveness: Some(Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::Int(i32::from(port)),
                    host: None,
                }),
                period_seconds: Some(1),
                failure_threshold: Some(2),
                ..Default::default()
            }),
        };
        let target = Target {
            pod_ip: Ipv4Addr::LOCALHOST,
            pid1: None,
            env: Env::new(),
            ports: BTreeMap::new(),
        };
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(prober(probes, target, Instant::now(), tx));
        let mut events = Vec::new();
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            events.push(e);
        }
        task.await.unwrap();
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[0], ProbeEvent::Started);
        assert_eq!(events[1], ProbeEvent::Ready(true));
        assert!(
            matches!(&events[2], ProbeEvent::LivenessFailed(m) if m.starts_with("Liveness probe failed: dial tcp")),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn tcp_and_http_checks_talk_to_real_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable", "200 OK"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let target = Target {
            pod_ip: Ipv4Addr::LOCALHOST,
            pid1: None,
            env: Env::new(),
            ports: BTreeMap::new(),
        };
        let http = Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/status".into()),
                port: IntOrString::Int(i32::from(port)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = Duration::from_secs(2);
        assert_eq!(check(&http, &target, t).await, Ok(()));
        let err = check(&http, &target, t).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(port)),
                host: None,
            }),
            ..Default::default()
        };
        assert_eq!(check(&tcp, &target, t).await, Ok(()));
        server.await.unwrap();
        // Nothing listens any more.
        assert!(check(&tcp, &target, t).await.is_err());
    }
}
