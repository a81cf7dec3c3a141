//! `up`, `down` and `status`: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the
//! node agent as daemons, and the removal of everything a devcluster made.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::{Api, Client};
use mooring_localkube::binaries::FileLock;
use mooring_localkube::components::{
    controller_manager_args, etcd_args, kubeconfig_yaml, log_tail, readyz, token_csv,
    write_private, ApiServer, TokenUser,
};
use mooring_localkube::{locate_binaries, pki};

use crate::network::{self, NetNames};
use crate::process::{alive, carries_marker, find_ours, terminate, Daemon};
use crate::state::{
    Settings, StateDir, API_PORT_ENV, BRIDGE_ENV, COMPONENTS, SERVICE_CIDR, STATE_DIR_ENV,
};
use mooring_localkube::{IoContext as _, KubeContext as _};

use crate::{Error, Result};

/// The binaries `up` runs (besides itself, as the agent).
pub const REQUIRED_BINARIES: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// The kubeconfig's cluster, context and user name.
pub const CONTEXT: &str = "devcluster";
/// The admin's user name in the token file (group `system:masters`).
const ADMIN_USER: &str = "admin";
/// kube-scheduler's user: the bootstrap RBAC policy grants it what the scheduler needs.
const SCHEDULER_USER: &str = "system:kube-scheduler";
/// How long a component gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How many lines of a component's log an error quotes.
const LOG_TAIL_LINES: usize = 15;
/// What `down` keeps in the state directory.
const KEPT: [&str; 2] = ["logs", "lock"];

/// How `up` went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpOutcome {
    /// Everything was running and healthy already; nothing was touched.
    AlreadyUp,
    /// Started from scratch.
    Started {
        took: Duration,
        /// Whether leftovers of an earlier devcluster were removed first.
        cleaned: bool,
    },
}

/// `up`'s options.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// How long the whole start may take.
    pub timeout: Duration,
}

/// Starts a devcluster in `state` (idempotent): when one is up and healthy, returns
/// [`UpOutcome::AlreadyUp`]; otherwise removes whatever an earlier one left and starts etcd,
/// kube-apiserver, kube-controller-manager, kube-scheduler and the agent as daemons, and waits until
/// the API server is ready, the `default` ServiceAccount exists and the Node is Ready. On an error,
/// Ctrl-C or SIGTERM it removes what it started (the logs stay) before returning the error.
pub async fn up(mut state: StateDir, opts: &UpOptions) -> Result<UpOutcome> {
    let _lock = lock(&mut state).await?;
    if let Ok(Some(settings)) = Settings::load(&state) {
        match health(&state, &settings).await {
            Ok(()) => return Ok(UpOutcome::AlreadyUp),
            Err(why) => tracing::info!("an earlier devcluster is incomplete ({why}): removing it"),
        }
    }
    let cleaned = blocking_teardown(&state).await?.found_anything();
    let begin = Instant::now();
    let mut daemons = Vec::new();
    let started = tokio::select! {
        r = start(&state, opts, &mut daemons) => r,
        signal = interrupted() => Err(Error::Startup(format!("interrupted by {signal}"))),
    };
    match started {
        Ok(()) => Ok(UpOutcome::Started {
            took: begin.elapsed(),
            cleaned,
        }),
        Err(e) => {
            tracing::info!(
                "removing what was started (logs stay in {})",
                state.logs().display()
            );
            if let Err(td) = blocking_teardown(&state).await {
                tracing::warn!("{td}");
            }
            // Reap what this process started, now that it is gone.
            for d in &mut daemons {
                let _ = d.exited();
            }
            Err(e)
        }
    }
}

/// What `down` found and removed.
#[derive(Clone, Debug, Default)]
pub struct DownReport {
    /// Components stopped through their pidfiles.
    pub components: Vec<String>,
    /// Other processes stopped (pods, strays).
    pub other_processes: usize,
    /// Network objects and mounts removed.
    pub removed: network::NetLeftovers,
}

impl DownReport {
    pub fn found_anything(&self) -> bool {
        !self.components.is_empty() || self.other_processes > 0 || !self.removed.is_empty()
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        if !self.found_anything() {
            return "nothing was running".to_string();
        }
        let mut parts = Vec::new();
        if !self.components.is_empty() {
            parts.push(format!("stopped {}", self.components.join(", ")));
        }
        if self.other_processes > 0 {
            parts.push(format!("{} other processes", self.other_processes));
        }
        parts.extend(
            self.removed
                .describe()
                .into_iter()
                .map(|l| format!("removed {l}")),
        );
        parts.join("; ")
    }
}

/// Stops and removes everything of the devcluster in `state` (idempotent; also after a crash
/// half-way through `up`): the agent first (it may stop its pods), then the control plane, then
/// every other process with the marker or in one of its network namespaces (SIGTERM, SIGKILL after
/// 10 s), the network namespaces, veth ends and bridge, `/etc/netns/<prefix>*`, mounts under the
/// state directory, and the state directory's contents except `logs/`.
pub async fn down(mut state: StateDir) -> Result<DownReport> {
    let _lock = lock(&mut state).await?;
    blocking_teardown(&state).await
}

async fn lock(state: &mut StateDir) -> Result<FileLock> {
    state.create()?;
    let path = state.lock_file();
    if let Ok(lock) = FileLock::try_exclusive(&path) {
        return Ok(lock);
    }
    tracing::info!(
        "waiting for another devcluster up/down on {}",
        state.root().display()
    );
    let lock = tokio::task::spawn_blocking(move || FileLock::exclusive(&path))
        .await
        .map_err(|e| Error::Startup(format!("the lock task failed: {e}")))??;
    Ok(lock)
}

async fn blocking_teardown(state: &StateDir) -> Result<DownReport> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || teardown(&state))
        .await
        .map_err(|e| Error::Leftovers(format!("the teardown task failed: {e}")))?
}

/// The pids recorded for `components` that are alive and ours.
fn recorded(state: &StateDir, components: impl Fn(&str) -> bool) -> Vec<(String, u32)> {
    let marker = state.marker();
    state
        .pids()
        .into_iter()
        .filter(|(c, pid)| components(c) && alive(*pid) && carries_marker(*pid, &marker))
        .collect()
}

fn teardown(state: &StateDir) -> Result<DownReport> {
    // Network objects are this devcluster's only when its saved settings name them: `up` saves
    // them before it creates any, and another devcluster may use the same names.
    let names = match Settings::load(state) {
        Ok(settings) => settings.map(|s| NetNames::from_settings(&s)),
        Err(e) => {
            tracing::warn!("{e}; using the network names of the environment");
            Some(NetNames::from_env())
        }
    };
    let root = state.root();
    let marker = state.marker();
    let netns_inodes = || {
        names
            .as_ref()
            .map(|n| network::netns_inodes(&n.netns_prefix))
            .unwrap_or_default()
    };
    let net_leftovers = || match &names {
        Some(n) => network::leftovers(n, root),
        None => network::NetLeftovers {
            mounts: network::mounts_under(root),
            ..Default::default()
        },
    };
    let net_teardown = || match &names {
        Some(n) => network::teardown(n, root),
        None => network::unmount_under(root),
    };
    let mut report = DownReport::default();

    // The agent first, alone: it may stop its pods on SIGTERM.
    // Then the control plane, all together.
    for group in [
        recorded(state, |c| c == "agent"),
        recorded(state, |c| c != "agent"),
    ] {
        if group.is_empty() {
            continue;
        }
        let names: Vec<&str> = group.iter().map(|(c, _)| c.as_str()).collect();
        tracing::info!("stopping {}", names.join(", "));
        let pids: BTreeSet<u32> = group.iter().map(|(_, p)| *p).collect();
        terminate(&pids, STOP_GRACE);
        report.components.extend(group.into_iter().map(|(c, _)| c));
    }

    // Pods and anything else with the marker or in our network namespaces.
    let others = find_ours(&marker, &netns_inodes());
    if !others.is_empty() {
        tracing::info!("stopping {} other processes", others.len());
        report.other_processes = others.len();
        terminate(&others, STOP_GRACE);
    }

    report.removed = net_leftovers();
    let mut problems = net_teardown();
    // A dying agent may have started something after the scan.
    let late = find_ours(&marker, &netns_inodes());
    if !late.is_empty() {
        report.other_processes += late.len();
        terminate(&late, STOP_GRACE);
        problems.extend(net_teardown());
    }

    let procs = find_ours(&marker, &netns_inodes());
    if !procs.is_empty() {
        problems.push(format!("processes still running: {procs:?}"));
    }
    problems.extend(net_leftovers().describe());
    if problems.is_empty() {
        // Only now: with something still mounted, deleting could reach outside the directory,
        // and the settings are needed to try again.
        problems.extend(remove_contents(root));
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        problems.dedup();
        Err(Error::Leftovers(format!(
            "devcluster down could not remove everything (run it again, or remove by hand):\n  {}",
            problems.join("\n  ")
        )))
    }
}

/// Removes everything in `root` but [`KEPT`]. Symlinks are removed, not followed.
fn remove_contents(root: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        if KEPT.iter().any(|k| name == *k) {
            continue;
        }
        let path = e.path();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let result = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(e) = result {
            problems.push(format!("cannot remove {}: {e}", path.display()));
        }
    }
    problems
}

/// Resolves on Ctrl-C, SIGTERM or SIGHUP, naming it.
pub async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return "Ctrl-C";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

async fn start(state: &StateDir, opts: &UpOptions, daemons: &mut Vec<Daemon>) -> Result<()> {
    let deadline = Instant::now() + opts.timeout;
    let settings = Settings::for_new_cluster()?;
    // This state directory's leftovers are gone: a bridge of that name belongs to someone else.
    // (Checked before the settings are saved: `down` then leaves that bridge alone.)
    if network::link_exists(&settings.bridge) {
        return Err(Error::Config(format!(
            "the interface {} exists already: another devcluster (another {STATE_DIR_ENV}) uses it; \
             set {BRIDGE_ENV} (and the other MOORING_DEVCLUSTER_* names) to run a second one, or \
             remove it (`ip link del {}`) if nothing uses it",
            settings.bridge, settings.bridge
        )));
    }
    for dir in [state.pki(), state.etcd(), state.logs(), state.run()] {
        fs::create_dir_all(&dir).io_context(|| format!("cannot create {}", dir.display()))?;
    }
    settings.save(state)?;
    let bins = tokio::task::spawn_blocking(|| locate_binaries(&REQUIRED_BINARIES))
        .await
        .map_err(|e| Error::Startup(format!("the task locating the binaries failed: {e}")))??;
    tracing::info!("control-plane binaries: {}", bins.display());

    let files = write_credentials(state, &settings)?;
    network::setup_bridge(&settings)?;
    tracing::info!(
        "bridge {} with {}",
        settings.bridge,
        settings.gateway_cidr()?
    );

    let etcd = etcd_args(
        "devcluster",
        &state.etcd(),
        settings.etcd_port,
        settings.etcd_peer_port,
    );
    spawn(state, daemons, "etcd", &bins.join("etcd"), &etcd, &[])?;
    let api = ApiServer {
        etcd_url: format!("http://127.0.0.1:{}", settings.etcd_port),
        port: settings.api_port,
        // Also puts the gateway into the serving certificate: pods reach the API server there
        // (the agent forwards it).
        advertise_address: settings.gateway()?.to_string(),
        cert_dir: state.pki(),
        service_cluster_ip_range: SERVICE_CIDR.to_string(),
        sa_public_key: files.sa_public.clone(),
        sa_private_key: files.sa_private.clone(),
        token_file: files.tokens.clone(),
    };
    let api_bin = bins.join("kube-apiserver");
    spawn(state, daemons, "kube-apiserver", &api_bin, &api.args(), &[])?;
    let kubeconfig = state.kubeconfig();
    wait_for(
        state,
        daemons,
        deadline,
        "kube-apiserver",
        "/readyz",
        || async {
            // Built anew each time: the CA file appears when the API server has started.
            Ok(readyz(&crate::kube_client(&kubeconfig).await?).await?)
        },
    )
    .await?;
    tracing::info!("kube-apiserver ready on {}", settings.api_url());
    let client = crate::kube_client(&kubeconfig).await?;

    // Node lifecycle stays off: nothing evicts the pods or taints the Node if a heartbeat is late.
    let controllers = ["*".to_string(), "-nodelifecycle".to_string()];
    let kcm = controller_manager_args(&kubeconfig, &files.sa_private, &state.ca(), &controllers);
    let kcm_bin = bins.join("kube-controller-manager");
    spawn(
        state,
        daemons,
        "kube-controller-manager",
        &kcm_bin,
        &kcm,
        &[],
    )?;
    let scheduler = vec![
        format!("--kubeconfig={}", files.scheduler_kubeconfig.display()),
        "--leader-elect=false".to_string(),
        "--secure-port=0".to_string(),
        // A Pod found unschedulable before its claim was bound waits for a cluster event to be
        // tried again; once in CI none came and the Pod stayed Pending for 4 minutes (the default
        // is 5). Retry such Pods within seconds: devcluster is one node with nothing to wait for.
        "--pod-max-in-unschedulable-pods-duration=10s".to_string(),
    ];
    let sched_bin = bins.join("kube-scheduler");
    spawn(
        state,
        daemons,
        "kube-scheduler",
        &sched_bin,
        &scheduler,
        &[],
    )?;
    let agent = vec![
        "agent".to_string(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--state-dir={}", state.root().display()),
        format!("--node-name={}", settings.node_name),
        format!("--bridge={}", settings.bridge),
        format!("--pod-cidr={}", settings.pod_cidr),
        format!("--gateway={}", settings.gateway()?),
    ];
    let mut env = NetNames::from_settings(&settings).to_env();
    env.push((API_PORT_ENV.to_string(), settings.api_port.to_string()));
    if std::env::var_os("RUST_LOG").is_none() {
        env.push(("RUST_LOG".to_string(), "info".to_string()));
    }
    // The same binary, whatever happens to its file meanwhile.
    spawn(
        state,
        daemons,
        "agent",
        Path::new("/proc/self/exe"),
        &agent,
        &env,
    )?;

    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    wait_for(
        state,
        daemons,
        deadline,
        "kube-controller-manager",
        "the ServiceAccount default/default",
        || async {
            let sa = sas
                .get_opt("default")
                .await
                .kube_context(|| "GET serviceaccount default/default".to_string())?;
            match sa {
                Some(_) => Ok(()),
                None => Err(Error::Startup("not created yet".to_string())),
            }
        },
    )
    .await?;
    tracing::info!("kube-controller-manager working (ServiceAccount default/default exists)");
    wait_for(
        state,
        daemons,
        deadline,
        "agent",
        &format!("the Node {} to be Ready", settings.node_name),
        || node_ready(&client, &settings.node_name),
    )
    .await?;
    tracing::info!("node {} Ready", settings.node_name);
    check_daemons(state, daemons)?;
    Ok(())
}

fn spawn(
    state: &StateDir,
    daemons: &mut Vec<Daemon>,
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
) -> Result<()> {
    let d = Daemon::start(state, name, program, args, env)?;
    tracing::info!(
        "started {name} (pid {}, log {})",
        d.pid,
        state.log(name).display()
    );
    daemons.push(d);
    Ok(())
}

/// The files `up` writes before starting anything.
struct CredentialFiles {
    sa_private: PathBuf,
    sa_public: PathBuf,
    tokens: PathBuf,
    scheduler_kubeconfig: PathBuf,
}

fn write_credentials(state: &StateDir, settings: &Settings) -> Result<CredentialFiles> {
    let pki_dir = state.pki();
    let sa = pki::service_account_key()?;
    let files = CredentialFiles {
        sa_private: pki_dir.join("sa.key"),
        sa_public: pki_dir.join("sa.pub"),
        tokens: pki_dir.join("tokens.csv"),
        scheduler_kubeconfig: pki_dir.join("kube-scheduler.kubeconfig"),
    };
    write_private(&files.sa_private, &sa.private_pem)?;
    write_private(&files.sa_public, &sa.public_pem)?;
    let admin_token = pki::random_token()?;
    let scheduler_token = pki::random_token()?;
    let users = [
        TokenUser {
            name: ADMIN_USER.to_string(),
            token: admin_token.clone(),
            groups: vec!["system:masters".to_string()],
        },
        TokenUser {
            name: SCHEDULER_USER.to_string(),
            token: scheduler_token.clone(),
            groups: Vec::new(),
        },
    ];
    write_private(&files.tokens, &token_csv(&users))?;
    let url = settings.api_url();
    let ca = state.ca();
    write_private(
        &state.kubeconfig(),
        &kubeconfig_yaml(CONTEXT, &url, &ca, &[(CONTEXT, &admin_token)], CONTEXT),
    )?;
    write_private(
        &files.scheduler_kubeconfig,
        &kubeconfig_yaml(
            CONTEXT,
            &url,
            &ca,
            &[("kube-scheduler", &scheduler_token)],
            "kube-scheduler",
        ),
    )?;
    Ok(files)
}

/// An error naming the first daemon that exited, with the end of its log.
fn check_daemons(state: &StateDir, daemons: &mut [Daemon]) -> Result<()> {
    for d in daemons.iter_mut() {
        if let Some(status) = d.exited() {
            let log = state.log(&d.name);
            return Err(Error::Startup(format!(
                "{} exited ({status}) while devcluster started; read {}, which ends with:\n{}",
                d.name,
                log.display(),
                log_tail(&log, LOG_TAIL_LINES)
            )));
        }
    }
    Ok(())
}

/// Polls `probe` until it succeeds; fails when a daemon exits or at `deadline`, naming
/// `component`'s log.
async fn wait_for<F, Fut>(
    state: &StateDir,
    daemons: &mut [Daemon],
    deadline: Instant,
    component: &str,
    what: &str,
    mut probe: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    loop {
        check_daemons(state, daemons)?;
        let last = match tokio::time::timeout(Duration::from_secs(5), probe()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => error_chain(&e),
            Err(_) => "no answer within 5 s".to_string(),
        };
        if Instant::now() >= deadline {
            let log = state.log(component);
            return Err(Error::Startup(format!(
                "timed out waiting for {what} (last check: {last}); read {}, which ends with:\n{}",
                log.display(),
                log_tail(&log, LOG_TAIL_LINES)
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let _ = write!(s, ": {inner}");
        source = inner.source();
    }
    s
}

async fn node_ready(client: &Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes
        .get_opt(name)
        .await
        .kube_context(|| format!("GET node {name}"))?
        .ok_or_else(|| Error::Startup("not registered yet".to_string()))?;
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready");
    match ready {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(Error::Startup(format!(
            "Ready is {} ({})",
            c.status,
            c.message.unwrap_or_default()
        ))),
        None => Err(Error::Startup("no Ready condition yet".to_string())),
    }
}

/// `Ok` when every component runs, the API server is ready and the Node is Ready; else why not.
async fn health(state: &StateDir, settings: &Settings) -> Result<(), String> {
    let marker = state.marker();
    let missing: Vec<&str> = COMPONENTS
        .iter()
        .copied()
        .filter(|c| {
            !state
                .read_pid(c)
                .is_some_and(|pid| alive(pid) && carries_marker(pid, &marker))
        })
        .collect();
    if !missing.is_empty() {
        return Err(format!("not running: {}", missing.join(", ")));
    }
    let probe = async {
        let client = crate::kube_client(&state.kubeconfig()).await?;
        readyz(&client).await?;
        node_ready(&client, &settings.node_name).await
    };
    match tokio::time::timeout(Duration::from_secs(10), probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err("the API server did not answer within 10 s".to_string()),
    }
}

/// What `status` reports.
#[derive(Clone, Debug)]
pub struct Status {
    /// Everything runs and answers.
    pub healthy: bool,
    /// Lines for people.
    pub text: String,
}

/// The state of each component, the API server and the Node.
pub async fn status(state: &StateDir) -> Result<Status> {
    let settings = Settings::load(state)?;
    let mut text = String::new();
    let _ = writeln!(text, "state directory: {}", state.root().display());
    let Some(settings) = settings else {
        let _ = writeln!(text, "devcluster is not up");
        return Ok(Status {
            healthy: false,
            text,
        });
    };
    let marker = state.marker();
    for c in COMPONENTS {
        let line = match state.read_pid(c) {
            Some(pid) if alive(pid) && carries_marker(pid, &marker) => {
                format!("running (pid {pid})")
            }
            Some(pid) => format!("NOT running (pid {pid} gone)"),
            None => "NOT started".to_string(),
        };
        let _ = writeln!(text, "{c:<24} {line:<24} log {}", state.log(c).display());
    }
    let health = health(state, &settings).await;
    let _ = writeln!(text, "API server: {}", settings.api_url());
    let _ = writeln!(text, "kubeconfig: {}", state.kubeconfig().display());
    let _ = writeln!(
        text,
        "pod network: {} on bridge {} (gateway {})",
        settings.pod_cidr,
        settings.bridge,
        settings.gateway()?
    );
    let _ = writeln!(
        text,
        "container logs: {}/<namespace>_<pod>_<uid>/logs/<container>.log",
        state.pods().display()
    );
    match &health {
        Ok(()) => {
            let _ = writeln!(text, "healthy");
        }
        Err(why) => {
            let _ = writeln!(text, "NOT healthy: {why}");
        }
    }
    Ok(Status {
        healthy: health.is_ok(),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_contents_keeps_logs_and_lock() {
        let root = std::env::temp_dir().join(format!("devcluster-rc-{}", std::process::id()));
        fs::create_dir_all(root.join("logs")).unwrap();
        fs::create_dir_all(root.join("pods/a_b_c/logs")).unwrap();
        fs::write(root.join("lock"), "").unwrap();
        fs::write(root.join("settings.json"), "{}").unwrap();
        fs::write(root.join("logs/etcd.log"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        assert!(remove_contents(&root).is_empty());
        let mut left: Vec<String> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["lock", "logs"]);
        assert!(Path::new("/etc/hostname").exists() || Path::new("/etc").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn report_summary() {
        assert_eq!(DownReport::default().summary(), "nothing was running");
        let r = DownReport {
            components: vec!["etcd".into()],
            other_processes: 2,
            removed: network::NetLeftovers {
                links: vec!["mooring0".into()],
                ..Default::default()
            },
        };
        assert_eq!(
            r.summary(),
            "stopped etcd; 2 other processes; removed interfaces: mooring0"
        );
    }
}
