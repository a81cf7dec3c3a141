//! `mooring lb-agent`: the sidecar that keeps one HAProxy replica of a BrokerCluster's load balancer
//! in line with the cluster.
//!
//! Every round (every `--interval-ms`, and whenever the BrokerCluster or one of its Pods changes)
//! the agent reads the BrokerCluster, its broker and LB Pods (through watches) and, for RabbitMQ
//! without anonymous access, the admin credentials; computes the [`desired`] configuration and
//! runtime state; renders `haproxy.cfg`; and then:
//! 1. writes the file (temporary file + rename) when its text differs from the file on disk;
//! 2. asks the master to reload when the file's *structure* differs from what HAProxy runs;
//! 3. converges every server on every backend through the admin socket
//!    ([`runtime_api::converge`]): address first, then state, only what differs.
//!
//! Errors are logged and the round is retried; the agent only stops on SIGTERM or SIGINT.
//! With `--once` (the init container) it writes the file and exits, retrying until it can.
//!
//! # Decisions
//! - **Reload only for structural changes.** A server's address and its enabled flag are set
//!   through the runtime API, so a change of only those (a broker Pod restarted with a new IP, a
//!   node turned stray) rewrites the file but does not reload: every reload starts a new worker
//!   while the old one keeps its MQTT connections for up to `hard-stop-after`, so a rolling
//!   restart of the brokers would otherwise leave a trail of old workers. Everything else (servers
//!   added or removed, ports, peers, credentials, timeouts) needs a reload. See
//!   [`structure_key`]. The file on disk stays current, so a restarted or reloaded HAProxy starts
//!   with the current addresses and states.
//! - **What HAProxy runs** is remembered as the structure key of the last configuration it loaded,
//!   kept in memory and in `<config>.loaded` next to the file (written by `--once` and after each
//!   successful reload), so that an agent restarted between writing the file and reloading still
//!   reloads. Without that file the agent assumes HAProxy runs the file on disk.
//! - **A failed reload** (HAProxy rejected the file, or the master did not answer) is retried every
//!   [`RELOAD_RETRY`]; meanwhile the runtime state is still converged.
//! - **The file is written with mode 0644** although it carries the health check's credentials
//!   (hex-encoded): it lives in an emptyDir only this Pod's containers mount, and HAProxy (the
//!   official image runs as `haproxy`, uid 99) must read it whichever user the agent runs as. The
//!   sockets are another matter: HAProxy creates the admin socket with mode 600, so the agent must
//!   run as HAProxy's user (or as root) to use it.
//! - **The admin credentials** are read with a GET (the agent may not watch Secrets), at most
//!   every [`CREDENTIALS_TTL`]; when a read fails, the last credentials read are kept.

pub mod desired;
pub mod runtime_api;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use mooring_crds::BrokerCluster;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use desired::{
    credentials_from_secret, credentials_secret_name, desired, emqx_check_is_refused,
    needs_credentials, Desired, DesiredError, DesiredServer, Inputs,
};
use runtime_api::{AdminApi, ConvergeReport, MasterApi, RuntimeError};

use crate::load_balancer::haproxy_cfg::{
    render, HealthCheckCredentials, LbConfigError, ADMIN_SOCKET, MQTT_BACKEND,
};
use crate::resources::COMPONENT_BROKER;
use crate::telemetry::{self, LogFormat};

/// The component label of the load balancer's objects.
pub use crate::resources::load_balancer::COMPONENT_LOAD_BALANCER;
/// Where HAProxy reads its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/usr/local/etc/haproxy/haproxy.cfg";
/// The master CLI socket (`haproxy -W -S <socket>`).
pub const DEFAULT_MASTER_SOCKET: &str = "/var/run/haproxy/master.sock";
/// Suffix of the file, next to the configuration, that records what HAProxy runs.
pub const LOADED_SUFFIX: &str = ".loaded";
/// How long after a failed reload the agent tries again.
pub const RELOAD_RETRY: Duration = Duration::from_secs(10);
/// How often an error that persists round after round is logged again at warn level.
pub const ERROR_REPEAT: Duration = Duration::from_secs(60);
/// How long the admin credentials are reused before the Secret is read again.
pub const CREDENTIALS_TTL: Duration = Duration::from_secs(60);

/// The `lb-agent` subcommand's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The BrokerCluster this load balancer serves.
    #[arg(long, env = "MOORING_CLUSTER")]
    pub cluster: String,
    /// Its namespace (the agent's own).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// The agent's Pod name, also HAProxy's `-L` peer name.
    #[arg(long, env = "POD_NAME")]
    pub pod: String,
    /// The HAProxy configuration file to write.
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// HAProxy's admin socket (runtime API).
    #[arg(long, default_value = ADMIN_SOCKET)]
    pub admin_socket: PathBuf,
    /// HAProxy's master CLI socket.
    #[arg(long, default_value = DEFAULT_MASTER_SOCKET)]
    pub master_socket: PathBuf,
    /// Milliseconds between rounds when nothing changes.
    #[arg(long, default_value_t = 2000)]
    pub interval_ms: u64,
    /// Write the configuration once and exit (the init container).
    #[arg(long)]
    pub once: bool,
    /// Log format.
    #[arg(long, env = "MOORING_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// What a round can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An API call failed.
    #[error("cannot read {what}: {source}")]
    Kube {
        /// What was read.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The BrokerCluster is not (yet) known.
    #[error("BrokerCluster {0} not found")]
    ClusterNotFound(String),
    /// No desired state could be computed.
    #[error(transparent)]
    Desired(#[from] DesiredError),
    /// The configuration could not be rendered.
    #[error("cannot render haproxy.cfg: {0}")]
    Render(#[from] LbConfigError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The runtime API failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Converging the runtime state failed in part (every failure, joined).
    #[error("converging the runtime state: {0}")]
    Converge(String),
}

/// The label selector of the broker Pods of `cluster`.
pub fn broker_pod_selector(cluster: &str) -> String {
    format!("app.kubernetes.io/instance={cluster},app.kubernetes.io/component={COMPONENT_BROKER}")
}

/// The label selector of the LB Pods of `cluster`.
pub fn lb_pod_selector(cluster: &str) -> String {
    format!(
        "app.kubernetes.io/instance={cluster},app.kubernetes.io/component={COMPONENT_LOAD_BALANCER}"
    )
}

/// One selector for both (the agent watches them with one watch).
fn pods_selector(cluster: &str) -> String {
    format!(
        "app.kubernetes.io/instance={cluster},app.kubernetes.io/component in ({COMPONENT_BROKER},{COMPONENT_LOAD_BALANCER})"
    )
}

/// Splits Pods into broker and LB Pods by their component label.
fn split_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> (Vec<Pod>, Vec<Pod>) {
    let mut brokers = Vec::new();
    let mut lbs = Vec::new();
    for pod in pods {
        match pod
            .labels()
            .get("app.kubernetes.io/component")
            .map(String::as_str)
        {
            Some(COMPONENT_BROKER) => brokers.push(pod.clone()),
            Some(COMPONENT_LOAD_BALANCER) => lbs.push(pod.clone()),
            _ => {}
        }
    }
    (brokers, lbs)
}

/// A fingerprint of everything in `haproxy.cfg` that only a reload can change: the text with each
/// `server` line's address and `disabled` flag removed (both are set through the runtime API).
pub fn structure_key(cfg_text: &str) -> String {
    let mut h = Sha256::new();
    for line in cfg_text.lines() {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"server") && words.len() >= 3 {
            let port = words[2].rsplit_once(':').map_or("", |(_, port)| port);
            words[2] = port;
            words.retain(|w| *w != "disabled");
            h.update(words.join(" ").as_bytes());
        } else {
            h.update(line.trim_end().as_bytes());
        }
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The IP `/etc/hosts` gives `name` (Kubernetes writes the Pod's own IP and hostname there).
pub fn ip_from_hosts(hosts: &str, name: &str) -> Option<IpAddr> {
    hosts.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let ip: IpAddr = words.next()?.parse().ok()?;
        let matches = words.any(|host| host == name || host.split('.').next() == Some(name));
        (matches && !ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    })
}

/// Writes `text` to `path` through a temporary file in the same directory and a rename, so that
/// HAProxy never reads a partial file. Mode 0644 (see the module documentation).
pub async fn write_atomic(path: &Path, text: &str) -> Result<(), AgentError> {
    let io = |source| AgentError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "haproxy.cfg".into());
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = async {
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .await?;
        // Explicitly, whatever the umask.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .await?;
        f.write_all(text.as_bytes()).await?;
        f.sync_all().await?;
        drop(f);
        tokio::fs::rename(&tmp, path).await
    }
    .await;
    if result.is_err() {
        tokio::fs::remove_file(&tmp).await.ok();
    }
    result.map_err(io)
}

async fn read_optional(path: &Path) -> Result<Option<String>, AgentError> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AgentError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// What [`Haproxy::apply_config`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigOutcome {
    /// The file was (re)written.
    pub written: bool,
    /// The master reloaded.
    pub reloaded: bool,
    /// A reload is needed but waits for [`RELOAD_RETRY`] after a failure.
    pub reload_pending: bool,
}

/// One HAProxy replica: its configuration file, admin socket and master socket.
#[derive(Debug)]
pub struct Haproxy {
    config: PathBuf,
    admin: AdminApi,
    master: MasterApi,
    /// Structure key of the configuration HAProxy runs, when known.
    loaded: Option<String>,
    /// No reload before this instant (after a failure).
    retry_reload_at: Option<Instant>,
    /// How long a reload may take.
    reload_timeout: Duration,
}

impl Haproxy {
    /// Drives the HAProxy that reads `config` and listens on the two sockets; `timeout` bounds each
    /// socket call. Call [`Haproxy::learn_loaded`] before the first [`Haproxy::apply_config`].
    pub fn new(
        config: impl Into<PathBuf>,
        admin_socket: impl Into<PathBuf>,
        master_socket: impl Into<PathBuf>,
        timeout: Duration,
    ) -> Self {
        Self {
            config: config.into(),
            admin: AdminApi::new(admin_socket, timeout),
            master: MasterApi::new(master_socket, timeout),
            loaded: None,
            retry_reload_at: None,
            reload_timeout: runtime_api::DEFAULT_RELOAD_TIMEOUT,
        }
    }

    /// The admin socket client.
    pub fn admin(&self) -> &AdminApi {
        &self.admin
    }

    /// The master socket client.
    pub fn master(&self) -> &MasterApi {
        &self.master
    }

    fn loaded_path(&self) -> PathBuf {
        let mut p = self.config.clone().into_os_string();
        p.push(LOADED_SUFFIX);
        PathBuf::from(p)
    }

    /// Learns what HAProxy runs: `<config>.loaded` if present, else the file on disk (HAProxy
    /// loaded it when it started).
    pub async fn learn_loaded(&mut self) -> Result<(), AgentError> {
        self.loaded = match read_optional(&self.loaded_path()).await? {
            Some(key) if !key.trim().is_empty() => Some(key.trim().to_string()),
            _ => read_optional(&self.config)
                .await?
                .map(|text| structure_key(&text)),
        };
        Ok(())
    }

    /// Writes the configuration HAProxy will load when it starts (the init container's job) and
    /// records it as loaded.
    pub async fn write_initial(&mut self, text: &str) -> Result<bool, AgentError> {
        let written = self.write_if_changed(text).await?;
        self.record_loaded(structure_key(text)).await?;
        Ok(written)
    }

    async fn write_if_changed(&self, text: &str) -> Result<bool, AgentError> {
        if read_optional(&self.config).await?.as_deref() == Some(text) {
            return Ok(false);
        }
        write_atomic(&self.config, text).await?;
        info!(path = %self.config.display(), "wrote the HAProxy configuration");
        Ok(true)
    }

    async fn record_loaded(&mut self, key: String) -> Result<(), AgentError> {
        let path = self.loaded_path();
        self.loaded = Some(key.clone());
        write_atomic(&path, &format!("{key}\n")).await
    }

    /// Writes `text` if it differs from the file on disk, and reloads HAProxy if its structure
    /// differs from what HAProxy runs (see the module documentation).
    pub async fn apply_config(&mut self, text: &str) -> Result<ConfigOutcome, AgentError> {
        let written = self.write_if_changed(text).await?;
        let key = structure_key(text);
        let mut outcome = ConfigOutcome {
            written,
            reloaded: false,
            reload_pending: false,
        };
        if self.loaded.as_deref() == Some(key.as_str()) {
            return Ok(outcome);
        }
        if self.retry_reload_at.is_some_and(|at| Instant::now() < at) {
            outcome.reload_pending = true;
            return Ok(outcome);
        }
        match self.master.reload(self.reload_timeout).await {
            Ok(r) => {
                info!(
                    workers = ?r.after.workers,
                    previous = ?r.workers_before,
                    old_workers = r.after.old_workers.len(),
                    "HAProxy reloaded with the new configuration"
                );
                self.retry_reload_at = None;
                if let Err(e) = self.record_loaded(key.clone()).await {
                    warn!(error = %e, "cannot record the loaded configuration");
                    self.loaded = Some(key);
                }
                outcome.reloaded = true;
                Ok(outcome)
            }
            Err(e) => {
                self.retry_reload_at = Some(Instant::now() + RELOAD_RETRY);
                Err(e.into())
            }
        }
    }

    /// Converges every desired server (see [`runtime_api::converge`]).
    pub async fn converge(&self, servers: &[DesiredServer]) -> ConvergeReport {
        runtime_api::converge(&self.admin, servers, &[MQTT_BACKEND]).await
    }
}

/// The agent's view of the API: the BrokerCluster and its Pods, kept by watches.
struct Watched {
    clusters: Store<BrokerCluster>,
    pods: Store<Pod>,
    changed: Arc<Notify>,
}

impl Watched {
    fn start(client: &Client, args: &Args, stop: &CancellationToken) -> Self {
        let clusters_api: Api<BrokerCluster> = Api::namespaced(client.clone(), &args.namespace);
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), &args.namespace);
        let (clusters, clusters_writer) = reflector::store();
        let (pods, pods_writer) = reflector::store();
        let changed = Arc::new(Notify::new());
        let cluster_events = reflector::reflector(
            clusters_writer,
            watcher(
                clusters_api,
                watcher::Config::default().fields(&format!("metadata.name={}", args.cluster)),
            ),
        )
        .default_backoff()
        .map(|e| e.map(|_| ()));
        let pod_events = reflector::reflector(
            pods_writer,
            watcher(
                pods_api,
                watcher::Config::default().labels(&pods_selector(&args.cluster)),
            ),
        )
        .default_backoff()
        .map(|e| e.map(|_| ()));
        let events = futures::stream::select(cluster_events, pod_events);
        let notify = changed.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let forward = events.for_each(|event| {
                match event {
                    Ok(()) => notify.notify_one(),
                    Err(e) => warn!(error = %e, "watch error (retrying)"),
                }
                futures::future::ready(())
            });
            tokio::select! {
                _ = stop.cancelled() => {},
                _ = forward => {},
            }
            debug!("watches stopped");
        });
        Self {
            clusters,
            pods,
            changed,
        }
    }

    /// Waits until both caches hold a first list; false on shutdown.
    async fn ready(&self, stop: &CancellationToken) -> bool {
        tokio::select! {
            _ = stop.cancelled() => false,
            r = futures::future::join(self.clusters.wait_until_ready(), self.pods.wait_until_ready()) => {
                r.0.is_ok() && r.1.is_ok()
            }
        }
    }

    fn snapshot(&self, cluster: &str) -> Result<(BrokerCluster, Vec<Pod>, Vec<Pod>), AgentError> {
        let bc = self
            .clusters
            .state()
            .into_iter()
            .find(|c| c.name_any() == cluster)
            .map(|c| (*c).clone())
            .ok_or_else(|| AgentError::ClusterNotFound(cluster.to_string()))?;
        let pods = self.pods.state();
        let (brokers, lbs) = split_pods(pods.iter().map(|p| p.as_ref()));
        Ok((bc, brokers, lbs))
    }
}

/// Reads what the agent needs once, without watches (for `--once`).
async fn read_once(
    client: &Client,
    args: &Args,
) -> Result<(BrokerCluster, Vec<Pod>, Vec<Pod>), AgentError> {
    let bc = Api::<BrokerCluster>::namespaced(client.clone(), &args.namespace)
        .get_opt(&args.cluster)
        .await
        .map_err(|source| AgentError::Kube {
            what: format!("BrokerCluster {}", args.cluster),
            source,
        })?
        .ok_or_else(|| AgentError::ClusterNotFound(args.cluster.clone()))?;
    let pods = Api::<Pod>::namespaced(client.clone(), &args.namespace)
        .list(&ListParams::default().labels(&pods_selector(&args.cluster)))
        .await
        .map_err(|source| AgentError::Kube {
            what: "Pods".into(),
            source,
        })?;
    let (brokers, lbs) = split_pods(&pods.items);
    Ok((bc, brokers, lbs))
}

/// The admin credentials, read at most every [`CREDENTIALS_TTL`].
#[derive(Default)]
struct CredentialsCache {
    value: Option<(HealthCheckCredentials, Instant)>,
}

impl CredentialsCache {
    async fn get(
        &mut self,
        client: &Client,
        namespace: &str,
        bc: &BrokerCluster,
    ) -> Result<Option<HealthCheckCredentials>, AgentError> {
        if !needs_credentials(bc) {
            return Ok(None);
        }
        if let Some((c, at)) = &self.value {
            if at.elapsed() < CREDENTIALS_TTL {
                return Ok(Some(c.clone()));
            }
        }
        let name = credentials_secret_name(&bc.name_any());
        let read = Api::<Secret>::namespaced(client.clone(), namespace)
            .get(&name)
            .await
            .map_err(|source| AgentError::Kube {
                what: format!("Secret {name}"),
                source,
            })
            .and_then(|s| credentials_from_secret(&s).map_err(AgentError::from));
        match (read, &self.value) {
            (Ok(c), _) => {
                self.value = Some((c.clone(), Instant::now()));
                Ok(Some(c))
            }
            (Err(e), Some((c, _))) => {
                warn!(error = %e, "cannot read the admin credentials again; keeping the last ones");
                Ok(Some(c.clone()))
            }
            (Err(e), None) => Err(e),
        }
    }
}

/// The agent's own IP from `/etc/hosts`, when the API does not show it yet.
fn own_ip_from_hosts(pod: &str) -> Option<IpAddr> {
    std::fs::read_to_string("/etc/hosts")
        .ok()
        .and_then(|hosts| ip_from_hosts(&hosts, pod))
}

fn desired_for(
    args: &Args,
    bc: &BrokerCluster,
    brokers: &[Pod],
    lbs: &[Pod],
    credentials: Option<&HealthCheckCredentials>,
) -> Result<Desired, AgentError> {
    let own_listed = lbs.iter().any(|p| {
        p.name_any() == args.pod && p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some()
    });
    let own_ip = if own_listed {
        None
    } else {
        own_ip_from_hosts(&args.pod)
    };
    let mut d = desired(&Inputs {
        cluster: bc,
        broker_pods: brokers,
        lb_pods: lbs,
        own_pod: &args.pod,
        own_ip,
        credentials,
    })?;
    // HAProxy refuses to start when it cannot get two descriptors per connection; the agent runs
    // in the same Pod, under the same limits.
    if let Some(max) = fd_limited_max_connections() {
        d.config.max_connections = d.config.max_connections.min(max);
    }
    Ok(d)
}

/// [`max_connections_for`] this process's limits, read once (they do not change).
fn fd_limited_max_connections() -> Option<u32> {
    static MAX: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        max_connections_for(&std::fs::read_to_string("/proc/self/limits").unwrap_or_default())
    })
}

/// The most connections HAProxy can take under the open-file limit of `/proc/self/limits`
/// (its hard limit, which HAProxy raises its soft limit to): two descriptors per connection and
/// some room for listeners, checks and peers. `None` when the limit is unknown or unlimited.
pub fn max_connections_for(proc_limits: &str) -> Option<u32> {
    let line = proc_limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?;
    let hard: u64 = line.split_whitespace().nth(4)?.parse().ok()?;
    let usable = hard.saturating_sub(1000) / 2;
    u32::try_from(usable).ok().filter(|n| *n > 0)
}

/// Runs the agent until SIGTERM/SIGINT (`shutdown`), or, with `--once`, until the configuration is
/// written. Installs the log subscriber.
pub async fn run(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("no Kubernetes API access (set KUBECONFIG or run in a Pod): {e}")
    })?;
    let interval = Duration::from_millis(args.interval_ms.max(100));
    let mut haproxy = Haproxy::new(
        &args.config,
        &args.admin_socket,
        &args.master_socket,
        runtime_api::DEFAULT_TIMEOUT,
    );
    info!(
        cluster = %args.cluster,
        namespace = %args.namespace,
        pod = %args.pod,
        once = args.once,
        "lb-agent starting"
    );
    if args.once {
        return run_once(&client, &args, &mut haproxy, interval, &shutdown).await;
    }

    if let Err(e) = haproxy.learn_loaded().await {
        warn!(error = %e, "cannot tell which configuration HAProxy runs; the next change reloads");
    }
    let watched = Watched::start(&client, &args, &shutdown);
    if !watched.ready(&shutdown).await {
        return Ok(());
    }
    let mut credentials = CredentialsCache::default();
    // The last error and when it was last logged at warn level (an error that persists is
    // repeated every ERROR_REPEAT, not every round).
    let mut last_error: Option<(String, Instant)> = None;
    let mut warned_emqx = false;
    loop {
        let result = async {
            let (bc, brokers, lbs) = watched.snapshot(&args.cluster)?;
            if emqx_check_is_refused(&bc) && !warned_emqx {
                info!(
                    "EMQX refuses anonymous clients and the MQTT health check has no user: \
                     any CONNACK counts as healthy"
                );
                warned_emqx = true;
            }
            let creds = credentials.get(&client, &args.namespace, &bc).await?;
            let d = desired_for(&args, &bc, &brokers, &lbs, creds.as_ref())?;
            // The runtime state is converged even when the file cannot be written or reloaded.
            let config_result = match render(&d.config) {
                Ok(text) => haproxy.apply_config(&text).await.map(|_| ()),
                Err(e) => Err(AgentError::from(e)),
            };
            let report = haproxy.converge(&d.servers).await;
            config_result?;
            if report.errors.is_empty() {
                Ok(())
            } else {
                let all: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
                Err(AgentError::Converge(all.join("; ")))
            }
        }
        .await;
        match result {
            Ok(()) => {
                if last_error.take().is_some() {
                    info!("lb-agent round succeeded again");
                }
            }
            Err(e) => {
                let message = e.to_string();
                match &last_error {
                    Some((last, at)) if *last == message && at.elapsed() < ERROR_REPEAT => {
                        debug!(error = %message, "lb-agent round failed again");
                    }
                    _ => {
                        warn!(error = %message, "lb-agent round failed; retrying");
                        last_error = Some((message, Instant::now()));
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = watched.changed.notified() => {},
            _ = tokio::time::sleep(interval) => {},
        }
    }
    info!("lb-agent stopped");
    Ok(())
}

async fn run_once(
    client: &Client,
    args: &Args,
    haproxy: &mut Haproxy,
    interval: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut credentials = CredentialsCache::default();
    loop {
        let result = async {
            let (bc, brokers, lbs) = read_once(client, args).await?;
            let creds = credentials.get(client, &args.namespace, &bc).await?;
            let d = desired_for(args, &bc, &brokers, &lbs, creds.as_ref())?;
            let text = render(&d.config)?;
            haproxy.write_initial(&text).await
        }
        .await;
        match result {
            Ok(written) => {
                info!(written, "lb-agent wrote the initial configuration");
                return Ok(());
            }
            Err(e) => error!(error = %e, "cannot write the initial configuration; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => anyhow::bail!("stopped before the configuration was written"),
            _ = tokio::time::sleep(interval) => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_follow_the_open_file_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             96355                96355                processes\n\
                      Max open files            20000                20000                files\n";
        assert_eq!(max_connections_for(limits), Some(9500));
        let unlimited =
            "Max open files            1024                 unlimited            files\n";
        assert_eq!(max_connections_for(unlimited), None);
        assert_eq!(max_connections_for(""), None);
    }
    use crate::load_balancer::haproxy_cfg::{BackendServer, LbConfig, ListenerPorts, Peer};
    use clap::Parser;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mooring-lb-agent-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn config(addresses: [Option<&str>; 2], enabled: [bool; 2]) -> LbConfig {
        LbConfig {
            servers: (0..2)
                .map(|i| BackendServer {
                    name: format!("demo-{i}"),
                    address: addresses[i].map(Into::into),
                    initially_enabled: enabled[i],
                })
                .collect(),
            websocket: Some(ListenerPorts::same(8083)),
            peers: vec![Peer {
                name: "demo-lb-0".into(),
                address: "10.0.1.1".into(),
            }],
            ..LbConfig::new("demo")
        }
    }

    fn key(cfg: &LbConfig) -> String {
        structure_key(&render(cfg).unwrap())
    }

    #[test]
    fn addresses_and_enabled_flags_are_not_structure() {
        let base = key(&config([Some("10.0.0.1"), None], [true, false]));
        assert_eq!(
            base,
            key(&config([Some("10.0.0.9"), Some("fd00::2")], [false, true]))
        );
        assert_eq!(base, key(&config([None, None], [true, true])));
    }

    #[test]
    fn everything_else_is_structure() {
        let base_cfg = config([Some("10.0.0.1"), None], [true, false]);
        let base = key(&base_cfg);
        let mut three = base_cfg.clone();
        three.servers.push(BackendServer {
            name: "demo-2".into(),
            address: None,
            initially_enabled: false,
        });
        let mut renamed = base_cfg.clone();
        renamed.servers[1].name = "demo-7".into();
        let mut peers = base_cfg.clone();
        peers.peers[0].address = "10.0.1.2".into();
        let mut ports = base_cfg.clone();
        ports.mqtt = ListenerPorts::same(1884);
        let mut no_ws = base_cfg.clone();
        no_ws.websocket = None;
        let mut expiry = base_cfg.clone();
        expiry.stick_expiry_seconds = 60;
        let mut creds = base_cfg.clone();
        creds.health_check_credentials = Some(HealthCheckCredentials {
            username: "u".into(),
            password: "p".into(),
        });
        for (what, cfg) in [
            ("server added", three),
            ("server renamed", renamed),
            ("peer moved", peers),
            ("port", ports),
            ("listener", no_ws),
            ("expiry", expiry),
            ("credentials", creds),
        ] {
            assert_ne!(key(&cfg), base, "{what}");
        }
    }

    #[test]
    fn hosts_file_gives_the_own_ip() {
        let hosts = "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n\
                     fe00::0\tip6-mcastprefix\n10.244.1.7\tdemo-lb-0.demo-lb.ns.svc.cluster.local\tdemo-lb-0\n";
        assert_eq!(
            ip_from_hosts(hosts, "demo-lb-0"),
            Some("10.244.1.7".parse().unwrap())
        );
        let fqdn_only = "10.244.1.8 demo-lb-1.demo-lb.ns.svc.cluster.local # comment\n";
        assert_eq!(
            ip_from_hosts(fqdn_only, "demo-lb-1"),
            Some("10.244.1.8".parse().unwrap())
        );
        assert_eq!(ip_from_hosts(hosts, "demo-lb-1"), None);
        assert_eq!(ip_from_hosts("127.0.1.1 demo-lb-0\n", "demo-lb-0"), None);
        assert_eq!(ip_from_hosts("# 10.0.0.1 demo-lb-0\n", "demo-lb-0"), None);
    }

    #[test]
    fn selectors_and_pod_split() {
        assert_eq!(
            broker_pod_selector("demo"),
            "app.kubernetes.io/instance=demo,app.kubernetes.io/component=broker"
        );
        assert_eq!(
            lb_pod_selector("demo"),
            "app.kubernetes.io/instance=demo,app.kubernetes.io/component=load-balancer"
        );
        assert_eq!(
            pods_selector("demo"),
            "app.kubernetes.io/instance=demo,app.kubernetes.io/component in (broker,load-balancer)"
        );
        let pod = |name: &str, component: &str| {
            let mut p = Pod::default();
            p.metadata.name = Some(name.into());
            p.metadata.labels = Some(
                [(
                    "app.kubernetes.io/component".to_string(),
                    component.to_string(),
                )]
                .into(),
            );
            p
        };
        let pods = [
            pod("demo-0", "broker"),
            pod("demo-lb-0", "load-balancer"),
            pod("x", "command"),
        ];
        let (brokers, lbs) = split_pods(&pods);
        assert_eq!(brokers.len(), 1);
        assert_eq!(lbs[0].name_any(), "demo-lb-0");
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_and_defaults() {
        let cli = Cli::try_parse_from([
            "lb-agent",
            "--cluster",
            "demo",
            "--namespace",
            "ns",
            "--pod",
            "demo-lb-0",
        ])
        .unwrap();
        let a = cli.args;
        assert_eq!(a.config, PathBuf::from(DEFAULT_CONFIG_PATH));
        assert_eq!(a.admin_socket, PathBuf::from(ADMIN_SOCKET));
        assert_eq!(
            a.master_socket,
            PathBuf::from("/var/run/haproxy/master.sock")
        );
        assert_eq!(a.interval_ms, 2000);
        assert!(!a.once);
        let cli = Cli::try_parse_from([
            "lb-agent",
            "--cluster=demo",
            "--namespace=ns",
            "--pod=demo-lb-0",
            "--once",
            "--interval-ms=500",
            "--config=/tmp/h.cfg",
            "--admin-socket=/tmp/a.sock",
            "--master-socket=/tmp/m.sock",
        ])
        .unwrap();
        assert!(cli.args.once);
        assert_eq!(cli.args.interval_ms, 500);
        assert_eq!(cli.args.admin_socket, PathBuf::from("/tmp/a.sock"));
    }

    #[tokio::test]
    async fn write_atomic_replaces_the_file_with_mode_0644() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("write");
        let path = dir.join("haproxy.cfg");
        write_atomic(&path, "one\n").await.unwrap();
        write_atomic(&path, "two\n").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        assert!(write_atomic(&dir.join("missing/haproxy.cfg"), "x")
            .await
            .is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A fake master CLI: counts reloads and answers `show proc` accordingly.
    fn fake_master(path: &Path, fail: bool) -> Arc<AtomicU32> {
        let reloads = Arc::new(AtomicU32::new(0));
        let listener = UnixListener::bind(path).unwrap();
        let count = reloads.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err() {
                    continue;
                }
                let answer = match line.trim() {
                    "reload" => {
                        count.fetch_add(1, Ordering::SeqCst);
                        String::new()
                    }
                    "show proc" => {
                        let n = count.load(Ordering::SeqCst);
                        format!(
                            "#<PID> <type> <reloads> <uptime> <version>\n\
                             1 master {n} [failed: {}] 0d 2.6\n# workers\n{} worker 0 0d 2.6\n",
                            if fail && n > 0 { 1 } else { 0 },
                            if fail { 100 } else { 100 + n }
                        )
                    }
                    _ => "Unknown command.\n".into(),
                };
                write.write_all(answer.as_bytes()).await.ok();
            }
        });
        reloads
    }

    #[tokio::test]
    async fn only_structural_changes_reload() {
        let dir = temp_dir("reload");
        let cfg_path = dir.join("haproxy.cfg");
        let reloads = fake_master(&dir.join("master.sock"), false);
        let text = |a: [Option<&str>; 2], e: [bool; 2]| render(&config(a, e)).unwrap();

        // The init container writes the first file.
        let mut init = Haproxy::new(
            &cfg_path,
            dir.join("admin.sock"),
            dir.join("master.sock"),
            Duration::from_secs(1),
        );
        assert!(init
            .write_initial(&text([Some("10.0.0.1"), None], [true, false]))
            .await
            .unwrap());

        let mut h = Haproxy::new(
            &cfg_path,
            dir.join("admin.sock"),
            dir.join("master.sock"),
            Duration::from_secs(1),
        );
        h.learn_loaded().await.unwrap();
        let same = h
            .apply_config(&text([Some("10.0.0.1"), None], [true, false]))
            .await
            .unwrap();
        assert_eq!(
            same,
            ConfigOutcome {
                written: false,
                reloaded: false,
                reload_pending: false
            }
        );

        let address_only = text([Some("10.0.0.1"), Some("10.0.0.2")], [true, true]);
        let out = h.apply_config(&address_only).await.unwrap();
        assert_eq!(
            out,
            ConfigOutcome {
                written: true,
                reloaded: false,
                reload_pending: false
            }
        );
        assert_eq!(std::fs::read_to_string(&cfg_path).unwrap(), address_only);
        assert_eq!(reloads.load(Ordering::SeqCst), 0);

        let mut structural = config([Some("10.0.0.1"), Some("10.0.0.2")], [true, true]);
        structural.stick_expiry_seconds = 600;
        let structural = render(&structural).unwrap();
        let out = h.apply_config(&structural).await.unwrap();
        assert_eq!(
            out,
            ConfigOutcome {
                written: true,
                reloaded: true,
                reload_pending: false
            }
        );
        assert_eq!(reloads.load(Ordering::SeqCst), 1);
        let out = h.apply_config(&structural).await.unwrap();
        assert!(!out.written && !out.reloaded);

        // A restarted agent knows what HAProxy runs from `<config>.loaded`.
        let mut again = Haproxy::new(
            &cfg_path,
            dir.join("admin.sock"),
            dir.join("master.sock"),
            Duration::from_secs(1),
        );
        again.learn_loaded().await.unwrap();
        assert_eq!(again.loaded, Some(structure_key(&structural)));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn a_failed_reload_is_retried_later_and_recorded_as_not_loaded() {
        let dir = temp_dir("failed");
        let cfg_path = dir.join("haproxy.cfg");
        let reloads = fake_master(&dir.join("master.sock"), true);
        let mut h = Haproxy::new(
            &cfg_path,
            dir.join("admin.sock"),
            dir.join("master.sock"),
            Duration::from_secs(1),
        );
        h.reload_timeout = Duration::from_secs(2);
        h.write_initial(&render(&config([None, None], [false, false])).unwrap())
            .await
            .unwrap();
        let mut changed = config([None, None], [false, false]);
        changed.stick_expiry_seconds = 600;
        let changed = render(&changed).unwrap();
        let err = h.apply_config(&changed).await.unwrap_err();
        assert!(
            matches!(
                err,
                AgentError::Runtime(RuntimeError::ReloadFailed { failed: 1 })
            ),
            "{err}"
        );
        let out = h.apply_config(&changed).await.unwrap();
        assert_eq!(
            out,
            ConfigOutcome {
                written: false,
                reloaded: false,
                reload_pending: true
            }
        );
        assert_eq!(
            reloads.load(Ordering::SeqCst),
            1,
            "no second reload before RELOAD_RETRY"
        );
        let mut restarted = Haproxy::new(
            &cfg_path,
            dir.join("admin.sock"),
            dir.join("master.sock"),
            Duration::from_secs(1),
        );
        restarted.learn_loaded().await.unwrap();
        assert_ne!(
            restarted.loaded,
            Some(structure_key(&changed)),
            "still pending after a restart"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
