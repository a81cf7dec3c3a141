//! A real control plane on loopback: etcd, kube-apiserver and (optionally) kube-controller-manager.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use mooring_localkube::components::{
    controller_manager_args, etcd_args, free_ports, kubeconfig_yaml, readyz, token_csv,
    write_private, ApiServer, TokenUser,
};
use mooring_localkube::pki;

use crate::binaries::locate_binaries;
use crate::process::{log_tail, stop_all, Process};

/// The environment variable that keeps a control plane's state directory (logs, etcd data, keys,
/// kubeconfig) after it stops.
pub const KEEP_STATE_ENV: &str = "MOORING_KEEP_TEST_STATE";

/// The user name (and kubeconfig context) of the `system:masters` admin.
pub const ADMIN_USER: &str = "admin";

/// How many lines of a component's log an error message quotes.
const LOG_TAIL_LINES: usize = 40;

/// A user known to the API server through its static token file. Tokens are generated; get a
/// client with [`ControlPlane::client_as`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestUser {
    /// The user name (`kubectl auth whoami` shows it). Not `admin`; no commas or quotes.
    pub name: String,
    /// Its groups, for example `["mooring-readers"]`. `system:authenticated` is added by the API
    /// server.
    pub groups: Vec<String>,
}

impl TestUser {
    /// A user with the given groups.
    pub fn new(name: impl Into<String>, groups: &[&str]) -> Self {
        Self {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    /// Also run kube-controller-manager (garbage collection, namespace deletion, default
    /// ServiceAccounts, Deployment/StatefulSet controllers that create Pods). Off by default: the
    /// API server alone starts faster. No kubelet runs: Pods are created, never started.
    pub controller_manager: bool,
    /// kube-controller-manager's `--controllers`; default `["*"]` (every default controller).
    /// Example: `["*", "-nodelifecycle"]`.
    pub controllers: Vec<String>,
    /// Extra token-authenticated users (for RBAC tests). The admin always exists.
    pub users: Vec<TestUser>,
    /// How long each component may take to become ready.
    pub start_timeout: Duration,
    /// Extra kube-apiserver flags (`--feature-gates=...`), appended last so they win.
    pub apiserver_args: Vec<String>,
    /// Extra kube-controller-manager flags, appended last.
    pub controller_manager_args: Vec<String>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            controller_manager: false,
            controllers: vec!["*".to_string()],
            users: Vec::new(),
            start_timeout: Duration::from_secs(120),
            apiserver_args: Vec::new(),
            controller_manager_args: Vec::new(),
        }
    }
}

impl ControlPlaneOptions {
    /// Also run kube-controller-manager.
    pub fn with_controller_manager(mut self) -> Self {
        self.controller_manager = true;
        self
    }

    /// Adds a token-authenticated user with these groups.
    pub fn with_user(mut self, name: &str, groups: &[&str]) -> Self {
        self.users.push(TestUser::new(name, groups));
        self
    }
}

/// A running control plane. Dropping it stops every component (SIGTERM, then SIGKILL after a grace
/// period) and removes its state directory unless `MOORING_KEEP_TEST_STATE` is set. The components
/// also die with the test process, whatever way it ends.
pub struct ControlPlane {
    state_dir: PathBuf,
    keep_state: bool,
    bins: PathBuf,
    server: String,
    kubeconfig: PathBuf,
    users: Vec<TestUser>,
    started_in: Duration,
    processes: Mutex<Vec<Process>>,
    stopped: AtomicBool,
}

/// Why one start attempt failed: a port taken between picking and binding is worth another try.
enum AttemptError {
    PortClash(anyhow::Error),
    Fatal(anyhow::Error),
}

impl From<anyhow::Error> for AttemptError {
    fn from(e: anyhow::Error) -> Self {
        AttemptError::Fatal(e)
    }
}

impl From<mooring_localkube::Error> for AttemptError {
    fn from(e: mooring_localkube::Error) -> Self {
        AttemptError::Fatal(e.into())
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver (and kube-controller-manager when asked) and waits until the
    /// API server is ready (`/readyz`) and, with the controller manager, until it works (the
    /// `default` ServiceAccount exists). Finds the binaries with
    /// [`locate_binaries`](crate::locate_binaries), which may build them once (15-30 min).
    pub async fn start(opts: ControlPlaneOptions) -> Result<Self> {
        let begin = Instant::now();
        validate_users(&opts.users)?;
        let bins = tokio::task::spawn_blocking(locate_binaries)
            .await
            .context("the task locating the control-plane binaries panicked")??;
        let mut clashes = Vec::new();
        for _ in 0..3 {
            match Self::attempt(&bins, &opts, begin).await {
                Ok(cp) => return Ok(cp),
                Err(AttemptError::PortClash(e)) => clashes.push(format!("{e:#}")),
                Err(AttemptError::Fatal(e)) => return Err(e),
            }
        }
        bail!(
            "the control plane lost a port race three times:\n{}",
            clashes.join("\n---\n")
        )
    }

    async fn attempt(
        bins: &Path,
        opts: &ControlPlaneOptions,
        begin: Instant,
    ) -> Result<Self, AttemptError> {
        let [etcd_port, peer_port, api_port] = free_ports::<3>()?;
        let state_dir = create_state_dir()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let mut cp = ControlPlane {
            keep_state: std::env::var_os(KEEP_STATE_ENV).is_some(),
            bins: bins.to_path_buf(),
            server: server.clone(),
            kubeconfig: state_dir.join("kubeconfig"),
            users: opts.users.clone(),
            started_in: Duration::ZERO,
            processes: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            state_dir,
        };
        // From here on, `cp` going out of scope on an error stops what started and cleans up.
        if cp.keep_state {
            write_private(&cp.state_dir.join(KEPT_MARKER), "")?;
        }
        let pki_dir = cp.state_dir.join("pki");
        std::fs::create_dir(&pki_dir)
            .with_context(|| format!("cannot create {}", pki_dir.display()))?;

        let sa = pki::service_account_key()?;
        let sa_key = pki_dir.join("sa.key");
        write_private(&sa_key, &sa.private_pem)?;
        let sa_pub = pki_dir.join("sa.pub");
        write_private(&sa_pub, &sa.public_pem)?;
        let mut tokens = BTreeMap::new();
        tokens.insert(ADMIN_USER.to_string(), pki::random_token()?);
        for u in &opts.users {
            tokens.insert(u.name.clone(), pki::random_token()?);
        }
        let token_file = pki_dir.join("tokens.csv");
        write_private(&token_file, &token_csv(&token_users(&tokens, &opts.users)))?;
        let ca = pki_dir.join("apiserver.crt");
        write_private(&cp.kubeconfig, &harness_kubeconfig(&server, &ca, &tokens))?;

        let etcd_args = etcd_args("test", &cp.state_dir.join("etcd"), etcd_port, peer_port);
        let mut api_args = ApiServer {
            etcd_url: format!("http://127.0.0.1:{etcd_port}"),
            port: api_port,
            advertise_address: "127.0.0.1".to_string(),
            cert_dir: pki_dir.clone(),
            service_cluster_ip_range: "10.0.0.0/16".to_string(),
            sa_public_key: sa_pub,
            sa_private_key: sa_key.clone(),
            token_file,
        }
        .args();
        api_args.extend(opts.apiserver_args.iter().cloned());

        cp.spawn("etcd", &etcd_args)?;
        cp.spawn("kube-apiserver", &api_args)?;
        // The client is built anew on every probe: the kubeconfig names the CA file, which the API
        // server writes (self-signed) only once it starts.
        let this = &cp;
        cp.wait_until(
            "kube-apiserver /readyz",
            opts.start_timeout,
            move || async move { Ok(readyz(&this.client().await?).await?) },
        )
        .await?;

        if opts.controller_manager {
            let mut kcm_args =
                controller_manager_args(&cp.kubeconfig, &sa_key, &ca, &opts.controllers);
            kcm_args.extend(opts.controller_manager_args.iter().cloned());
            cp.spawn("kube-controller-manager", &kcm_args)?;
            if serviceaccount_controller_enabled(&opts.controllers) {
                let sas: Api<ServiceAccount> = Api::namespaced(cp.client().await?, "default");
                cp.wait_until(
                    "kube-controller-manager (ServiceAccount default/default)",
                    opts.start_timeout,
                    || {
                        let sas = sas.clone();
                        async move {
                            match sas.get_opt("default").await {
                                Ok(Some(_)) => Ok(()),
                                Ok(None) => Err(anyhow!("not created yet")),
                                Err(e) => Err(e.into()),
                            }
                        }
                    },
                )
                .await?;
            } else {
                // Nothing observable to wait for: at least make sure it did not exit at once.
                cp.wait_until(
                    "kube-controller-manager (alive for 1 s)",
                    opts.start_timeout,
                    || async {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Ok(())
                    },
                )
                .await?;
                cp.check_alive()?;
            }
        }
        cp.started_in = begin.elapsed();
        Ok(cp)
    }

    fn spawn(&self, name: &str, args: &[String]) -> Result<()> {
        let log = self.state_dir.join(format!("{name}.log"));
        let p = Process::start(name, &self.bins.join(name), args, log, &self.state_dir)?;
        self.lock_processes().push(p);
        Ok(())
    }

    fn lock_processes(&self) -> MutexGuard<'_, Vec<Process>> {
        self.processes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An error naming the first component that exited, with the tail of its log.
    fn check_alive(&self) -> Result<(), AttemptError> {
        let mut procs = self.lock_processes();
        for p in procs.iter_mut() {
            if let Some(status) = p.exit_status() {
                let tail = p.log_tail(LOG_TAIL_LINES);
                let err = anyhow!(
                    "{} exited ({status}) while the control plane started; its log {} ends with:\n{tail}",
                    p.name,
                    p.log.display()
                );
                return Err(if tail.contains("address already in use") {
                    AttemptError::PortClash(err)
                } else {
                    AttemptError::Fatal(err)
                });
            }
        }
        Ok(())
    }

    /// Polls `probe` until it succeeds, a component exits, or `timeout` passes.
    async fn wait_until<F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: F,
    ) -> Result<(), AttemptError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let last = match tokio::time::timeout(Duration::from_secs(5), probe()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => "probe timed out after 5 s".to_string(),
            };
            if Instant::now() >= deadline {
                let mut msg = format!(
                    "{what} not ready after {timeout:?} (last probe: {last}); state in {}",
                    self.state_dir.display()
                );
                for p in self.lock_processes().iter() {
                    let _ = write!(
                        msg,
                        "\n--- {} log {} ends with:\n{}",
                        p.name,
                        p.log.display(),
                        p.log_tail(LOG_TAIL_LINES)
                    );
                }
                return Err(AttemptError::Fatal(anyhow!(msg)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A client authenticated as the admin (`system:masters`). Build one per test (per tokio
    /// runtime): a `kube::Client` is bound to the runtime it was created on.
    pub async fn client(&self) -> Result<Client> {
        Client::try_from(self.config_for_context(ADMIN_USER).await?)
            .context("cannot build the admin client")
    }

    /// A client authenticated (by token) as one of the [`ControlPlaneOptions::users`].
    pub async fn client_as(&self, user: &str) -> Result<Client> {
        if !self.users.iter().any(|u| u.name == user) {
            bail!(
                "no user {user:?} in this control plane; declare it with ControlPlaneOptions::with_user"
            );
        }
        Client::try_from(self.config_for_context(user).await?)
            .with_context(|| format!("cannot build a client for user {user}"))
    }

    /// A client that acts as `user` with `groups` through impersonation by the admin: RBAC then
    /// applies to that user exactly as if it had authenticated. Any name works, no declaration needed.
    pub async fn client_impersonating(&self, user: &str, groups: &[&str]) -> Result<Client> {
        let mut config = self.config_for_context(ADMIN_USER).await?;
        config.auth_info.impersonate = Some(user.to_string());
        config.auth_info.impersonate_groups = if groups.is_empty() {
            None
        } else {
            Some(groups.iter().map(|g| g.to_string()).collect())
        };
        Client::try_from(config)
            .with_context(|| format!("cannot build a client impersonating {user}"))
    }

    /// A client authenticated as an existing ServiceAccount, with a fresh token from the
    /// TokenRequest API (valid for an hour). This is how the operator itself authenticates in a
    /// cluster, so it is the way to test the chart's RBAC for real.
    pub async fn client_for_service_account(&self, namespace: &str, name: &str) -> Result<Client> {
        let admin = self.client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(admin, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let token = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("cannot get a token for ServiceAccount {namespace}/{name}"))?
            .status
            .map(|s| s.token)
            .with_context(|| format!("the TokenRequest for {namespace}/{name} has no status"))?;
        let ca = self.state_dir.join("pki/apiserver.crt");
        let mut tokens = BTreeMap::new();
        tokens.insert(ADMIN_USER.to_string(), token);
        let kubeconfig = Kubeconfig::from_yaml(&harness_kubeconfig(&self.server, &ca, &tokens))
            .context("cannot parse the generated ServiceAccount kubeconfig")?;
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("cannot load the generated ServiceAccount kubeconfig")?;
        config.default_namespace = namespace.to_string();
        Client::try_from(config)
            .with_context(|| format!("cannot build a client for ServiceAccount {namespace}/{name}"))
    }

    async fn config_for_context(&self, context: &str) -> Result<Config> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("cannot read {}", self.kubeconfig.display()))?;
        let options = KubeConfigOptions {
            context: Some(context.to_string()),
            ..Default::default()
        };
        Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .with_context(|| {
                format!(
                    "cannot load context {context} of {}",
                    self.kubeconfig.display()
                )
            })
    }

    /// The kubeconfig file (admin as current context; one context per extra user, named after it),
    /// usable by `kubectl --kubeconfig` and `helm --kubeconfig`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The state directory: `<component>.log`, `etcd/`, `pki/` (apiserver.crt, sa.key, sa.pub, tokens.csv)
    /// and `kubeconfig`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The directory holding the binaries (etcd, kube-apiserver, ..., kubectl and helm when built by
    /// the build script).
    pub fn bins_dir(&self) -> &Path {
        &self.bins
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// How long [`ControlPlane::start`] took, binaries lookup included.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The log file of a component: `etcd`, `kube-apiserver` or `kube-controller-manager`.
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.state_dir.join(format!("{component}.log"))
    }

    /// The last `lines` lines of a component's log, for failure messages.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        log_tail(&self.log_path(component), lines)
    }

    /// Stops every component and removes the state directory (unless kept). Idempotent; `Drop`
    /// calls it, and so does process exit for a [`SharedControlPlane`](crate::SharedControlPlane).
    pub fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        {
            let mut procs = self.lock_processes();
            // The API server and the controller manager first, etcd (which they use) last.
            let split = procs
                .iter()
                .position(|p| p.name == "etcd")
                .map_or(0, |i| i + 1);
            let (etcd, rest) = procs.split_at_mut(split);
            stop_all(rest, Duration::from_secs(5));
            stop_all(etcd, Duration::from_secs(5));
            procs.clear();
        }
        if self.keep_state {
            eprintln!(
                "mooring-tests: kept control-plane state in {} ({KEEP_STATE_ENV} is set)",
                self.state_dir.display()
            );
        } else if let Err(e) = std::fs::remove_dir_all(&self.state_dir) {
            eprintln!(
                "mooring-tests: cannot remove {}: {e}",
                self.state_dir.display()
            );
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("state_dir", &self.state_dir)
            .field("bins", &self.bins)
            .finish_non_exhaustive()
    }
}

fn serviceaccount_controller_enabled(controllers: &[String]) -> bool {
    let all = controllers.iter().any(|c| c == "*");
    let named = controllers.iter().any(|c| c == "serviceaccount");
    let disabled = controllers.iter().any(|c| c == "-serviceaccount");
    (all || named) && !disabled
}

fn validate_users(users: &[TestUser]) -> Result<()> {
    for u in users {
        let bad = |s: &str| s.is_empty() || s.contains([',', '"', '\n', '\r']);
        if u.name == ADMIN_USER || bad(&u.name) || u.groups.iter().any(|g| bad(g)) {
            bail!(
                "invalid test user {u:?}: the name must not be {ADMIN_USER:?}, and names and groups \
                 must be non-empty without commas, quotes or newlines"
            );
        }
    }
    Ok(())
}

/// Marks a state directory kept on purpose ([`KEEP_STATE_ENV`]): the stale sweep leaves it alone.
const KEPT_MARKER: &str = "KEPT";

fn create_state_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    remove_stale_state_dirs(&base);
    for _ in 0..10 {
        let dir = base.join(format!(
            "mooring-cp-{}-{}",
            std::process::id(),
            pki::random_suffix(8)?
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
        }
    }
    bail!(
        "cannot create a unique state directory in {}",
        base.display()
    )
}

/// Removes `mooring-cp-<pid>-*` directories of test processes that died without cleaning up
/// (SIGKILL, abort), unless they were kept on purpose.
fn remove_stale_state_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("mooring-cp-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let owner_alive = Path::new("/proc").join(pid.to_string()).exists();
        if !owner_alive && !path.join(KEPT_MARKER).exists() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// The harness's users for the token file: the admin in `system:masters`, the others with their
/// declared groups.
fn token_users(tokens: &BTreeMap<String, String>, users: &[TestUser]) -> Vec<TokenUser> {
    tokens
        .iter()
        .map(|(name, token)| TokenUser {
            name: name.clone(),
            token: token.clone(),
            groups: if name == ADMIN_USER {
                vec!["system:masters".to_string()]
            } else {
                users
                    .iter()
                    .find(|u| &u.name == name)
                    .map(|u| u.groups.clone())
                    .unwrap_or_default()
            },
        })
        .collect()
}

/// A kubeconfig with one context per user (named after it); `admin` is the current context.
fn harness_kubeconfig(server: &str, ca: &Path, tokens: &BTreeMap<String, String>) -> String {
    let users: Vec<(&str, &str)> = tokens
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    kubeconfig_yaml("mooring-test", server, ca, &users, ADMIN_USER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_quotes_groups() {
        let mut tokens = BTreeMap::new();
        tokens.insert("admin".to_string(), "t1".to_string());
        tokens.insert("reader".to_string(), "t2".to_string());
        let users = vec![TestUser::new("reader", &["g1", "g2"])];
        assert_eq!(
            token_csv(&token_users(&tokens, &users)),
            "t1,admin,admin-uid,\"system:masters\"\nt2,reader,reader-uid,\"g1,g2\"\n"
        );
    }

    #[test]
    fn kubeconfig_parses_with_a_context_per_user() {
        let mut tokens = BTreeMap::new();
        tokens.insert("admin".to_string(), "t1".to_string());
        tokens.insert("reader".to_string(), "t2".to_string());
        let yaml = harness_kubeconfig("https://127.0.0.1:1", Path::new("/x/ca.crt"), &tokens);
        let kc = Kubeconfig::from_yaml(&yaml).expect("kubeconfig parses");
        assert_eq!(kc.current_context.as_deref(), Some("admin"));
        assert_eq!(kc.contexts.len(), 2);
        assert_eq!(kc.auth_infos.len(), 2);
    }

    #[test]
    fn serviceaccount_controller_detection() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(serviceaccount_controller_enabled(&v(&["*"])));
        assert!(!serviceaccount_controller_enabled(&v(&[
            "*",
            "-serviceaccount"
        ])));
        assert!(!serviceaccount_controller_enabled(&v(&[
            "garbagecollector"
        ])));
    }

    #[test]
    fn rejects_bad_users() {
        assert!(validate_users(&[TestUser::new("admin", &[])]).is_err());
        assert!(validate_users(&[TestUser::new("a,b", &[])]).is_err());
        assert!(validate_users(&[TestUser::new("ok", &["g\"x"])]).is_err());
        assert!(validate_users(&[TestUser::new("ok", &["g"])]).is_ok());
    }
}
