//! The node agent: plays the kubelet for the single Node of a devcluster and runs each Pod's
//! containers as local processes in namespaces of their own.
//!
//! - [`node`]: the Node (Ready, capacity, podCIDR) and its heartbeat Lease.
//! - [`pod`]: one worker per Pod bound to the Node (watched with `spec.nodeName=<node>`), from
//!   sandbox to deletion; [`container`]: one container's life, probes and restarts.
//! - [`sandbox`]: network namespace, veth, address (`<state>/network.json`), hosts files;
//!   [`volumes`], [`pvc`] (the agent binds claims itself), [`env`], [`images`] (the mapping file
//!   `devcluster/images.yaml`), [`process`] (launch, signals, reaping), [`probes`], [`status`], [`termination`]
//!   (termination messages).
//!
//! Layout in the state directory: `pods/<ns>_<pod>_<uid>/` (`volumes/`, `logs/<container>.log`,
//! `run/<container>.sh` init scripts, `termination/<container>` termination message files,
//! `tmp/`), `volumes/pvc/<ns>/<claim>/`, `network.json`.
//! Every process the agent starts carries `MOORING_DEVCLUSTER=<state dir>`.

pub mod container;
pub mod env;
pub mod images;
pub mod node;
pub mod pod;
pub mod probes;
pub mod process;
pub mod pvc;
pub mod sandbox;
pub mod status;
pub mod termination;
pub mod volumes;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::env::{Env, FieldContext};
use self::images::{ImageError, ImageMapping};
use self::node::NodeInfo;
use self::pod::PodUpdate;
use self::sandbox::{Allocations, PodEntry, PodNetwork, Sandbox, ServiceEntry};
use crate::network::NetNames;

/// What `devcluster up` passes to the agent (`devcluster agent --kubeconfig ... --state-dir ...`).
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The admin kubeconfig (`<state>/kubeconfig`).
    pub kubeconfig: PathBuf,
    /// The devcluster state directory (absolute).
    pub state_dir: PathBuf,
    /// The Node to register (`devcluster`).
    pub node_name: String,
    /// The bridge pods attach to (`mooring0`), already up with the gateway address.
    pub bridge: String,
    /// The pod network, for example `10.244.0.0/24`.
    pub pod_cidr: String,
    /// The bridge's address in `pod_cidr`, for example `10.244.0.1`.
    pub gateway: String,
}

/// A Pod in the hosts files.
#[derive(Clone, Debug)]
struct DnsPod {
    entry: PodEntry,
    sandbox: Sandbox,
    aliases: String,
}

#[derive(Debug, Default)]
struct Dns {
    pods: BTreeMap<String, DnsPod>,
    services: BTreeMap<String, ServiceEntry>,
}

/// What the Pod workers share.
pub struct Agent {
    /// The API client.
    pub client: Client,
    /// The options the agent was started with.
    pub opts: AgentOptions,
    /// The pod network.
    pub network: PodNetwork,
    /// The value of the process marker.
    pub marker: String,
    api_port: Option<u16>,
    node_allocatable: BTreeMap<String, Quantity>,
    allocations: Mutex<Allocations>,
    dns: Mutex<Dns>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn host_aliases(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_aliases.clone())
        .unwrap_or_default()
        .iter()
        .filter(|a| !a.hostnames.as_ref().is_none_or(|h| h.is_empty()))
        .map(|a| {
            format!(
                "{}\t{}\n",
                a.ip,
                a.hostnames.clone().unwrap_or_default().join(" ")
            )
        })
        .collect()
}

impl Agent {
    fn network_json(&self) -> PathBuf {
        self.opts.state_dir.join("network.json")
    }

    /// The mapping file, read again (so edits and installs take effect).
    pub fn image_mapping(&self) -> Result<ImageMapping, ImageError> {
        ImageMapping::load()
    }

    /// The address of Pod `uid`, allocated (and saved) if it has none.
    pub fn allocate_ip(
        &self,
        uid: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Ipv4Addr, sandbox::SandboxError> {
        let mut a = lock(&self.allocations);
        let ip = a.allocate(&self.network, uid, namespace, name)?;
        a.save(&self.network_json())?;
        Ok(ip)
    }

    /// The address Pod `uid` has, if any.
    pub fn allocated_ip(&self, uid: &str) -> Option<Ipv4Addr> {
        lock(&self.allocations).pods.get(uid).map(|a| a.ip)
    }

    /// Frees the address of Pod `uid`.
    pub fn release_ip(&self, uid: &str) {
        let mut a = lock(&self.allocations);
        a.release(uid);
        if let Err(e) = a.save(&self.network_json()) {
            tracing::warn!(error = %e, "cannot save the address allocations");
        }
    }

    /// What the downward API reads besides the Pod.
    pub fn field_context(&self, pod_ip: Option<String>) -> FieldContext {
        FieldContext {
            pod_ip,
            host_ip: Some(self.opts.gateway.clone()),
            node_allocatable: self.node_allocatable.clone(),
        }
    }

    /// The `kubernetes` Service's variables (the API server as forwarded on the gateway).
    pub fn service_env(&self) -> Env {
        let mut env = Env::new();
        if let Some(port) = self.api_port {
            let host = &self.opts.gateway;
            env.set("KUBERNETES_SERVICE_HOST", host.clone());
            env.set("KUBERNETES_SERVICE_PORT", port.to_string());
            env.set("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string());
            env.set("KUBERNETES_PORT", format!("tcp://{host}:{port}"));
            env.set(
                format!("KUBERNETES_PORT_{port}_TCP"),
                format!("tcp://{host}:{port}"),
            );
            env.set(format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp");
            env.set(format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string());
            env.set(format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.clone());
        }
        env
    }

    /// Adds a Pod with its sandbox to the hosts files.
    pub fn dns_add_pod(&self, uid: &str, pod: &Pod, sandbox: Sandbox) {
        let entry = pod_entry_for(pod, sandbox.ip, false);
        lock(&self.dns).pods.insert(
            uid.to_string(),
            DnsPod {
                entry,
                sandbox,
                aliases: host_aliases(pod),
            },
        );
        self.refresh_hosts();
    }

    /// Updates a Pod's labels and aliases in the hosts files.
    pub fn dns_update_pod(&self, uid: &str, pod: &Pod) {
        let changed = {
            let mut dns = lock(&self.dns);
            match dns.pods.get_mut(uid) {
                Some(p) => {
                    let entry = pod_entry_for(pod, p.entry.ip, p.entry.ready);
                    let aliases = host_aliases(pod);
                    let changed = entry != p.entry || aliases != p.aliases;
                    p.entry = entry;
                    p.aliases = aliases;
                    changed
                }
                None => false,
            }
        };
        if changed {
            self.refresh_hosts();
        }
    }

    /// Records a Pod's readiness (Services without `publishNotReadyAddresses` list only ready
    /// Pods).
    pub fn dns_set_ready(&self, uid: &str, ready: bool) {
        let changed = {
            let mut dns = lock(&self.dns);
            match dns.pods.get_mut(uid) {
                Some(p) if p.entry.ready != ready => {
                    p.entry.ready = ready;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.refresh_hosts();
        }
    }

    /// Removes a Pod from the hosts files.
    pub fn dns_remove(&self, uid: &str) {
        if lock(&self.dns).pods.remove(uid).is_some() {
            self.refresh_hosts();
        }
    }

    fn set_services(&self, services: BTreeMap<String, ServiceEntry>) {
        let changed = {
            let mut dns = lock(&self.dns);
            let changed = dns.services != services;
            dns.services = services;
            changed
        };
        if changed {
            self.refresh_hosts();
        }
    }

    /// Rewrites every Pod's hosts file (in place; unchanged files are not touched).
    fn refresh_hosts(&self) {
        let dns = lock(&self.dns);
        let entries: Vec<PodEntry> = dns.pods.values().map(|p| p.entry.clone()).collect();
        let services: Vec<ServiceEntry> = dns.services.values().cloned().collect();
        let mut by_namespace: HashMap<&str, String> = HashMap::new();
        for p in dns.pods.values() {
            let base = by_namespace
                .entry(p.entry.namespace.as_str())
                .or_insert_with(|| sandbox::hosts_file(&p.entry.namespace, &entries, &services));
            let mut text = base.clone();
            if !p.aliases.is_empty() {
                text.push_str("\n# Entries added by HostAliases.\n");
                text.push_str(&p.aliases);
            }
            if let Err(e) = sandbox::write_in_place(&p.sandbox.hosts_path(), &text) {
                tracing::warn!(netns = %p.sandbox.netns, error = %e, "cannot write a hosts file");
            }
        }
    }
}

fn pod_entry_for(pod: &Pod, ip: Ipv4Addr, ready: bool) -> PodEntry {
    let spec = pod.spec.as_ref();
    PodEntry {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        hostname: spec
            .and_then(|s| s.hostname.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default()),
        subdomain: spec
            .and_then(|s| s.subdomain.clone())
            .filter(|s| !s.is_empty()),
        ip,
        ready,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
    }
}

fn service_entry(svc: &Service) -> Option<(String, ServiceEntry)> {
    let namespace = svc.metadata.namespace.clone()?;
    let name = svc.metadata.name.clone()?;
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    Some((
        format!("{namespace}/{name}"),
        ServiceEntry {
            namespace,
            name,
            selector: spec.selector.unwrap_or_default(),
            publish_not_ready: spec.publish_not_ready_addresses == Some(true),
        },
    ))
}

async fn watch_services(agent: Arc<Agent>) {
    let api: Api<Service> = Api::all(agent.client.clone());
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut current: BTreeMap<String, ServiceEntry> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, ServiceEntry>> = None;
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init) => relist = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(s)) => {
                if let (Some(r), Some((k, e))) = (relist.as_mut(), service_entry(&s)) {
                    r.insert(k, e);
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(r) = relist.take() {
                    current = r;
                    agent.set_services(current.clone());
                }
            }
            Ok(watcher::Event::Apply(s)) => {
                if let Some((k, e)) = service_entry(&s) {
                    current.insert(k, e);
                    agent.set_services(current.clone());
                }
            }
            Ok(watcher::Event::Delete(s)) => {
                if let Some((k, _)) = service_entry(&s) {
                    current.remove(&k);
                    agent.set_services(current.clone());
                }
            }
            Err(e) => tracing::warn!(error = %e, "service watch failed; retrying"),
        }
    }
}

struct Worker {
    updates: watch::Sender<PodUpdate>,
    handle: JoinHandle<()>,
}

/// Removes what belongs to no current Pod: addresses, network namespaces, Pod directories.
async fn collect_garbage(agent: &Agent, live: &BTreeSet<String>) {
    let stale: Vec<String> = lock(&agent.allocations)
        .pods
        .keys()
        .filter(|uid| !live.contains(*uid))
        .cloned()
        .collect();
    for uid in &stale {
        agent.release_ip(uid);
    }
    let wanted: BTreeSet<String> = live
        .iter()
        .map(|uid| agent.network.sandbox_names(uid).0)
        .collect();
    let prefix = agent.network.names.netns_prefix.clone();
    let existing: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    for netns in existing.into_iter().filter(|n| !wanted.contains(n)) {
        tracing::info!(netns, "removing a leftover network namespace");
        let hex = netns.trim_start_matches(&prefix).to_string();
        let veth = agent
            .network
            .names
            .veth_name(&hex.chars().take(8).collect::<String>());
        sandbox::destroy(&Sandbox {
            netns,
            veth,
            ip: Ipv4Addr::UNSPECIFIED,
        })
        .await;
    }
    let pods_dir = agent.opts.state_dir.join("pods");
    if let Ok(dir) = std::fs::read_dir(&pods_dir) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let uid = name.rsplit('_').next().unwrap_or_default();
            if !live.contains(uid) {
                tracing::info!(dir = %e.path().display(), "removing a leftover pod directory");
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove");
                }
            }
        }
    }
}

async fn signalled() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Runs the agent until SIGTERM/SIGINT; then stops every Pod's containers (within
/// [`pod::SHUTDOWN_GRACE`]) and removes their sandboxes before returning.
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    if let Err(e) = process::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child subreaper: orphaned processes may stay zombies");
    }
    let signal = signalled();
    tokio::pin!(signal);
    let client = crate::kube_client(&opts.kubeconfig).await?;
    let mut names = NetNames::from_env();
    names.bridge = opts.bridge.clone();
    let network = PodNetwork::new(names, &opts.pod_cidr, &opts.gateway)?;
    for dir in [
        opts.state_dir.join("pods"),
        opts.state_dir.join("volumes/pvc"),
    ] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let version = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_else(|_| "v0.0.0".into());
    let info = NodeInfo::detect(&opts.node_name, &opts.gateway, &opts.pod_cidr, &version);
    loop {
        tokio::select! {
            r = node::register(&client, &info) => match r {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "cannot register the Node; retrying"),
            },
            s = &mut signal => {
                tracing::info!("{s} before the Node was registered: stopping");
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tracing::info!(node = %opts.node_name, "node registered");

    let api_port = std::env::var(crate::state::API_PORT_ENV)
        .ok()
        .and_then(|p| p.parse().ok());
    let agent = Arc::new(Agent {
        client: client.clone(),
        marker: opts.state_dir.display().to_string(),
        network,
        api_port,
        node_allocatable: info.capacity.clone(),
        allocations: Mutex::new(Allocations::load(&opts.state_dir.join("network.json"))),
        dns: Mutex::new(Dns::default()),
        opts: opts.clone(),
    });
    let background = vec![
        tokio::spawn(node::heartbeat(client.clone(), info.clone())),
        tokio::spawn(pvc::run_binder(client.clone(), opts.state_dir.clone())),
        tokio::spawn(process::reap_orphans(Duration::from_secs(5))),
        tokio::spawn(watch_services(agent.clone())),
    ];

    let shutdown = CancellationToken::new();
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", opts.node_name));
    let mut stream = watcher(pods, config).default_backoff().boxed();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut relist: Option<BTreeSet<String>> = None;
    let mut tidy = tokio::time::interval(Duration::from_secs(5));

    let reason = loop {
        tokio::select! {
            event = stream.next() => {
                let Some(event) = event else { break "the pod watch ended" };
                match event {
                    Ok(watcher::Event::Init) => relist = Some(BTreeSet::new()),
                    Ok(watcher::Event::InitApply(p)) | Ok(watcher::Event::Apply(p)) => {
                        let Some(uid) = p.metadata.uid.clone() else { continue };
                        if let Some(r) = relist.as_mut() {
                            r.insert(uid.clone());
                        }
                        if finished.contains(&uid) {
                            continue;
                        }
                        let update = PodUpdate { pod: Arc::new(p), gone: false };
                        match workers.get(&uid) {
                            Some(w) => {
                                let _ = w.updates.send(update);
                            }
                            None => {
                                let (tx, rx) = watch::channel(update);
                                let handle = tokio::spawn(pod::run(agent.clone(), rx, shutdown.clone()));
                                workers.insert(uid, Worker { updates: tx, handle });
                            }
                        }
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        let Some(uid) = p.metadata.uid.clone() else { continue };
                        if let Some(w) = workers.get(&uid) {
                            let _ = w.updates.send(PodUpdate { pod: Arc::new(p), gone: true });
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(seen) = relist.take() {
                            for (uid, w) in &workers {
                                if !seen.contains(uid) {
                                    let pod = w.updates.borrow().pod.clone();
                                    let _ = w.updates.send(PodUpdate { pod, gone: true });
                                }
                            }
                            let live: BTreeSet<String> = workers.keys().cloned().collect();
                            collect_garbage(&agent, &live).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                }
            }
            _ = tidy.tick() => {
                let done: Vec<String> = workers
                    .iter()
                    .filter(|(_, w)| w.handle.is_finished())
                    .map(|(uid, _)| uid.clone())
                    .collect();
                for uid in done {
                    workers.remove(&uid);
                    finished.insert(uid);
                }
                if finished.len() > 10_000 {
                    finished.clear();
                }
            }
            s = &mut signal => break s,
        }
    };
    tracing::info!("{reason}: stopping {} pod(s)", workers.len());
    shutdown.cancel();
    // The senders stay alive until the workers are done: a closed channel reads as "deleted".
    let (senders, handles): (Vec<_>, Vec<JoinHandle<()>>) =
        workers.into_values().map(|w| (w.updates, w.handle)).unzip();
    let all = futures::future::join_all(handles);
    if tokio::time::timeout(pod::SHUTDOWN_GRACE + Duration::from_secs(2), all)
        .await
        .is_err()
    {
        tracing::warn!("some pods did not stop in time");
    }
    drop(senders);
    for task in background {
        task.abort();
    }
    Ok(())
}
