//! `bench`: figures of the operator binary on a real kube-apiserver + etcd (no
//! kube-controller-manager, so nothing but the operator acts on BrokerClusters).
//!
//! 1. starts the control plane, installs the CRD, creates namespace `bench`;
//! 2. spawns the operator, waits until it is ready and leads, measures its idle RSS;
//! 3. creates `--latency-samples` BrokerClusters one at a time and measures, for each, the time
//!    from the create call returning until all six children exist (watched, not polled);
//! 4. creates `--clusters` more as fast as it can (16 at a time) and measures the time until every
//!    one reports `observedGeneration: 1` and `ReconcileSuccess=True`;
//! 5. measures RSS and peak RSS at that scale, then prints a table with the aims beside the figures.
//!
//! Run it through `scripts/bench`, which builds the operator in release first.

use std::collections::HashMap;
use std::fmt::Debug;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::serde::de::DeserializeOwned;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{ApiResource, DynamicObject, ListParams, PartialObjectMeta, PostParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use mooring_crds::BrokerCluster;
use mooring_tests::{create_namespace, install_crd, ControlPlane, ControlPlaneOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The namespace everything runs in.
const NS: &str = "bench";
/// The operator's leader Lease (its default name).
const LEASE: &str = "mooring-operator";
/// How many creates run at once in the scale phase.
const CREATE_CONCURRENCY: usize = 16;
/// How often the scale phase lists the clusters.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long one latency sample may take before the bench gives up.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the operator may take to become ready and to lead.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the operator may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the operator sits idle before its idle RSS is read.
const IDLE_FOR: Duration = Duration::from_secs(3);

/// The aims the figures are held against.
const AIM_P50_MS: f64 = 150.0;
const AIM_CONVERGE_S: f64 = 60.0;
const AIM_RSS_MIB: f64 = 60.0;

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Benchmark of the Mooring operator on a real kube-apiserver + etcd"
)]
struct Args {
    /// The operator binary (build it with `cargo build --release -p mooring-operator --bin mooring`).
    #[arg(long)]
    operator: PathBuf,
    /// BrokerClusters created at once for the convergence figure.
    #[arg(long, default_value_t = 500)]
    clusters: usize,
    /// BrokerClusters created one at a time for the latency figures.
    #[arg(long, default_value_t = 50)]
    latency_samples: usize,
    /// Seconds the scale phase may take before it is reported as not converged.
    #[arg(long, default_value_t = 600)]
    converge_timeout: u64,
    /// Seconds to keep the operator running at scale after convergence before reading its RSS
    /// once more (0: do not).
    #[arg(long, default_value_t = 0)]
    hold: u64,
    /// Extra environment of the operator, `KEY=VALUE` (repeatable), e.g. `MALLOC_ARENA_MAX=2`.
    #[arg(long = "operator-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    operator_env: Vec<(String, String)>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// What the bench measured.
#[derive(Debug, Default)]
struct Figures {
    ready_after: Option<Duration>,
    leading_after: Option<Duration>,
    rss_idle_kib: Option<u64>,
    latencies: Vec<Duration>,
    converge: Option<Convergence>,
    rss_scaled_kib: Option<u64>,
    peak_rss_kib: Option<u64>,
    metrics: Vec<String>,
    /// CPU seconds each process used during the scale phase, and the phase's wall time.
    scale_cpu: Vec<(String, f64)>,
    scale_wall: Option<Duration>,
    /// RSS after `--hold` seconds more at scale.
    rss_held_kib: Option<u64>,
}

#[derive(Debug)]
struct Convergence {
    clusters: usize,
    creates_took: Duration,
    /// `None` when not every cluster converged in time; then `converged` says how many did.
    took: Option<Duration>,
    converged: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.operator.is_file(),
        "--operator {}: no such file (build it with `cargo build --release -p mooring-operator --bin mooring`)",
        args.operator.display()
    );
    let operator = std::fs::canonicalize(&args.operator)
        .with_context(|| format!("cannot resolve {}", args.operator.display()))?;

    step("starting the control plane (etcd + kube-apiserver, no controller manager)");
    // The harness's Service range (/16) has room for one ClusterIP Service per cluster.
    let options = ControlPlaneOptions::default();
    let cp = ControlPlane::start(options)
        .await
        .context("cannot start the control plane")?;
    eprintln!(
        "    API server {} ready in {:.1} s",
        cp.server_url(),
        cp.started_in().as_secs_f64()
    );
    let result = bench(&args, &operator, &cp).await;
    step("stopping the control plane");
    cp.shutdown();
    result
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

async fn bench(args: &Args, operator: &Path, cp: &ControlPlane) -> Result<()> {
    let client = cp
        .client()
        .await
        .context("no client for the control plane")?;
    install_crd(&client).await?;
    create_namespace(&client, NS).await?;

    let work_dir = std::env::temp_dir().join(format!("mooring-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("cannot create {}", work_dir.display()))?;
    let log_path = work_dir.join("operator.log");

    step(&format!("starting the operator {}", operator.display()));
    let mut op = Operator::spawn(
        operator,
        cp.kubeconfig_path(),
        &log_path,
        &args.operator_env,
    )?;
    eprintln!(
        "    pid {}, listening on 127.0.0.1:{}, log {}",
        op.pid,
        op.port,
        log_path.display()
    );

    let mut figures = Figures::default();
    let measured = measure(args, &client, &mut op, &mut figures).await;

    step("stopping the operator (SIGTERM)");
    let stopped = op.stop().await;
    match &stopped {
        Ok((status, took)) => eprintln!(
            "    exited with {} after {:.2} s",
            describe_exit(status),
            took.as_secs_f64()
        ),
        Err(e) => eprintln!("    {e:#}"),
    }
    print_log_summary(&log_path);

    print_table(args, &figures);
    measured?;
    let (status, _) = stopped?;
    ensure!(
        status.success(),
        "the operator did not exit cleanly on SIGTERM: {}",
        describe_exit(&status)
    );
    Ok(())
}

/// Every phase; fills `figures` as it goes so that a failure still leaves what was measured.
async fn measure(
    args: &Args,
    client: &Client,
    op: &mut Operator,
    figures: &mut Figures,
) -> Result<()> {
    let (ready_after, leading_after) = op.wait_until_leading(client).await?;
    figures.ready_after = Some(ready_after);
    figures.leading_after = Some(leading_after);
    eprintln!(
        "    ready after {:.2} s, leading after {:.2} s",
        ready_after.as_secs_f64(),
        leading_after.as_secs_f64()
    );
    tokio::time::sleep(IDLE_FOR).await;
    figures.rss_idle_kib = Some(op.proc_status_kib("VmRSS")?);

    let clusters = cluster_api(client);
    if args.latency_samples > 0 {
        step(&format!(
            "apply-to-all-children latency: {} clusters, one at a time",
            args.latency_samples
        ));
        latency_phase(args, client, &clusters, op, figures).await?;
        let names: Vec<String> = (0..args.latency_samples)
            .map(|i| format!("lat-{i}"))
            .collect();
        let started = Instant::now();
        let waited = wait_converged(client, &names, Duration::from_secs(120), false).await?;
        ensure!(
            waited.done_at.is_some(),
            "the latency clusters did not all converge: {}/{}",
            waited.converged,
            names.len()
        );
        eprintln!(
            "    the latency clusters all converged {:.2} s after the last sample",
            waited
                .done_at
                .map(|at| at.saturating_duration_since(started))
                .unwrap_or_default()
                .as_secs_f64()
        );
    }

    if args.clusters > 0 {
        step(&format!(
            "convergence at scale: {} clusters, {CREATE_CONCURRENCY} creates at a time",
            args.clusters
        ));
        let names: Vec<String> = (0..args.clusters).map(|i| format!("scale-{i}")).collect();
        let cpu_before = cpu_seconds_by_process(op.pid);
        let begin = Instant::now();
        let creates = async {
            futures::stream::iter(names.iter().map(|name| create_cluster(&clusters, name)))
                .buffer_unordered(CREATE_CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            Ok::<Duration, anyhow::Error>(begin.elapsed())
        };
        let timeout = Duration::from_secs(args.converge_timeout);
        let (creates_took, waited) =
            tokio::try_join!(creates, wait_converged(client, &names, timeout, true))?;
        let took = waited.done_at.map(|at| at.saturating_duration_since(begin));
        figures.converge = Some(Convergence {
            clusters: args.clusters,
            creates_took,
            took,
            converged: waited.converged,
        });
        op.check_alive()?;
        figures.rss_scaled_kib = Some(op.proc_status_kib("VmRSS")?);
        figures.scale_wall = Some(begin.elapsed());
        let cpu_after = cpu_seconds_by_process(op.pid);
        figures.scale_cpu = cpu_after
            .into_iter()
            .map(|(name, after)| {
                let before = cpu_before
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(0.0, |(_, b)| *b);
                (name, after - before)
            })
            .collect();
    }
    if args.hold > 0 {
        step(&format!("holding {} s at scale", args.hold));
        tokio::time::sleep(Duration::from_secs(args.hold)).await;
        op.check_alive()?;
        figures.rss_held_kib = Some(op.proc_status_kib("VmRSS")?);
    }
    figures.peak_rss_kib = Some(op.proc_status_kib("VmHWM")?);
    figures.metrics = op.metrics().await.unwrap_or_else(|e| {
        eprintln!("    cannot read the operator's metrics: {e:#}");
        Vec::new()
    });
    Ok(())
}

/// Creates the latency clusters one at a time, each timed by watchers started before the first.
async fn latency_phase(
    args: &Args,
    client: &Client,
    clusters: &Api<DynamicObject>,
    op: &mut Operator,
    figures: &mut Figures,
) -> Result<()> {
    let arrivals = Arc::new(Arrivals::new());
    let mut watchers = Vec::new();
    let mut ready = Vec::new();
    let mut watch = |kind: &'static str,
                     spawned: fn(
        &Client,
        &'static str,
        Arc<Arrivals>,
        oneshot::Sender<()>,
    ) -> JoinHandle<()>| {
        let (tx, rx) = oneshot::channel();
        watchers.push(spawned(client, kind, arrivals.clone(), tx));
        ready.push(rx);
    };
    watch("StatefulSet", spawn_watcher::<StatefulSet>);
    watch("ConfigMap", spawn_watcher::<ConfigMap>);
    watch("Secret", spawn_watcher::<Secret>);
    watch("Service", spawn_watcher::<Service>);
    watch("PodDisruptionBudget", spawn_watcher::<PodDisruptionBudget>);
    let result = async {
        for rx in ready {
            tokio::time::timeout(Duration::from_secs(30), rx)
                .await
                .context("a watcher did not finish its initial list in 30 s")?
                .context("a watcher ended before its initial list")?;
        }
        for i in 0..args.latency_samples {
            let name = format!("lat-{i}");
            create_cluster(clusters, &name).await?;
            let created = Instant::now();
            let latency = arrivals
                .wait_for_children(&name, created, SAMPLE_TIMEOUT)
                .await
                .with_context(|| format!("latency sample {name}"))?;
            op.check_alive()?;
            figures.latencies.push(latency);
            if (i + 1) % 10 == 0 || i + 1 == args.latency_samples {
                eprintln!("    {} samples", i + 1);
            }
        }
        Ok(())
    }
    .await;
    for w in watchers {
        w.abort();
    }
    result
}

/// When each child was first seen, keyed by (kind, name); a tick on every arrival.
struct Arrivals {
    seen: Mutex<HashMap<(&'static str, String), Instant>>,
    tick: watch::Sender<u64>,
}

impl Arrivals {
    fn new() -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            tick: watch::Sender::new(0),
        }
    }

    fn seen(&self) -> MutexGuard<'_, HashMap<(&'static str, String), Instant>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, kind: &'static str, name: String, at: Instant) {
        self.seen().entry((kind, name)).or_insert(at);
        self.tick.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Waits until all six children of cluster `name` have arrived; the time from `created` to
    /// the last arrival.
    async fn wait_for_children(
        &self,
        name: &str,
        created: Instant,
        timeout: Duration,
    ) -> Result<Duration> {
        let wanted = children_of(name);
        let mut tick = self.tick.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            tick.borrow_and_update();
            let missing: Vec<String> = {
                let seen = self.seen();
                let mut last = None;
                let mut missing = Vec::new();
                for key in &wanted {
                    match seen.get(key) {
                        Some(at) => last = last.max(Some(*at)),
                        None => missing.push(format!("{} {}", key.0, key.1)),
                    }
                }
                if let (true, Some(last)) = (missing.is_empty(), last) {
                    return Ok(last.saturating_duration_since(created));
                }
                missing
            };
            match tokio::time::timeout_at(deadline, tick.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the watchers stopped"),
                Err(_) => bail!(
                    "after {timeout:?} these children do not exist yet: {}",
                    missing.join(", ")
                ),
            }
        }
    }
}

/// The six children the operator makes for cluster `name`.
fn children_of(name: &str) -> [(&'static str, String); 6] {
    [
        ("StatefulSet", name.to_string()),
        ("ConfigMap", format!("{name}-config")),
        ("Secret", format!("{name}-credentials")),
        ("Service", format!("{name}-headless")),
        ("Service", name.to_string()),
        ("PodDisruptionBudget", name.to_string()),
    ]
}

/// Watches the metadata of one kind in the namespace, recording first arrivals; `ready` fires once
/// the initial list is done.
fn spawn_watcher<K>(
    client: &Client,
    kind: &'static str,
    arrivals: Arc<Arrivals>,
    ready: oneshot::Sender<()>,
) -> JoinHandle<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<PartialObjectMeta<K>> = Api::namespaced(client.clone(), NS);
    tokio::spawn(async move {
        let mut ready = Some(ready);
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let at = Instant::now();
            match event {
                Ok(Event::Apply(obj)) | Ok(Event::InitApply(obj)) => {
                    arrivals.record(kind, obj.name_any(), at)
                }
                Ok(Event::InitDone) => {
                    if let Some(tx) = ready.take() {
                        // The receiver only goes if the bench gave up.
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("    watch of {kind}s: {e}"),
            }
        }
    })
}

fn cluster_api(client: &Client) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<BrokerCluster>(&());
    Api::namespaced_with(client.clone(), NS, &ar)
}

/// Creates one rabbitmq BrokerCluster with three replicas.
async fn create_cluster(api: &Api<DynamicObject>, name: &str) -> Result<()> {
    let body: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "mooring.dev/v1alpha1",
        "kind": "BrokerCluster",
        "metadata": { "name": name },
        "spec": { "broker": { "kind": "rabbitmq" }, "replicas": 3 },
    }))
    .context("building a BrokerCluster")?;
    api.create(&PostParams::default(), &body)
        .await
        .with_context(|| format!("cannot create BrokerCluster {NS}/{name}"))?;
    Ok(())
}

/// Whether a cluster's status says its first generation was reconciled successfully.
fn is_converged(bc: &BrokerCluster) -> bool {
    bc.status.as_ref().is_some_and(|s| {
        s.observed_generation == Some(1)
            && s.conditions
                .iter()
                .any(|c| c.type_ == "ReconcileSuccess" && c.status == "True")
    })
}

/// A line on why a cluster has not converged: its observed generation and ReconcileSuccess.
fn why_not_converged(bc: Option<&BrokerCluster>) -> String {
    let Some(bc) = bc else {
        return "does not exist".into();
    };
    let Some(status) = &bc.status else {
        return "no status yet".into();
    };
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "ReconcileSuccess")
        .map_or("no ReconcileSuccess condition".to_string(), |c| {
            let message: String = c.message.chars().take(300).collect();
            format!("ReconcileSuccess={} {}: {message}", c.status, c.reason)
        });
    format!(
        "observedGeneration {:?}, {condition}",
        status.observed_generation
    )
}

struct Waited {
    /// When the poll that saw every cluster converged returned; `None` on timeout.
    done_at: Option<Instant>,
    converged: usize,
}

/// Lists the namespace's clusters every [`POLL_EVERY`] until every one of `names` has converged.
async fn wait_converged(
    client: &Client,
    names: &[String],
    timeout: Duration,
    progress: bool,
) -> Result<Waited> {
    let api: Api<BrokerCluster> = Api::namespaced(client.clone(), NS);
    let started = Instant::now();
    let mut last_report = started;
    loop {
        let list = api
            .list(&ListParams::default())
            .await
            .context("cannot list BrokerClusters")?;
        let by_name: HashMap<String, &BrokerCluster> =
            list.items.iter().map(|bc| (bc.name_any(), bc)).collect();
        let converged = names
            .iter()
            .filter(|n| by_name.get(*n).is_some_and(|bc| is_converged(bc)))
            .count();
        if converged == names.len() {
            return Ok(Waited {
                done_at: Some(Instant::now()),
                converged,
            });
        }
        if started.elapsed() >= timeout {
            eprintln!(
                "    not converged after {timeout:?}: {converged}/{} clusters",
                names.len()
            );
            for name in names
                .iter()
                .filter(|n| !by_name.get(*n).is_some_and(|bc| is_converged(bc)))
                .take(3)
            {
                eprintln!(
                    "      {name}: {}",
                    why_not_converged(by_name.get(name).copied())
                );
            }
            return Ok(Waited {
                done_at: None,
                converged,
            });
        }
        if progress && last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "    {:>5.1} s: {} created, {converged} converged",
                started.elapsed().as_secs_f64(),
                names
                    .iter()
                    .filter(|n| by_name.contains_key(n.as_str()))
                    .count()
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The operator under test, a child process with its output in a log file.
struct Operator {
    child: tokio::process::Child,
    pid: u32,
    port: u16,
    log: PathBuf,
    spawned: Instant,
}

impl Operator {
    fn spawn(
        binary: &Path,
        kubeconfig: &Path,
        log: &Path,
        extra_env: &[(String, String)],
    ) -> Result<Self> {
        let port = free_port()?;
        let out = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone().context("cannot duplicate the log file")?;
        let mut cmd = tokio::process::Command::new(binary);
        cmd.env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", NS)
            .env("MOORING_LISTEN", format!("127.0.0.1:{port}"))
            .env("MOORING_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        cmd.envs(extra_env.iter().map(|(k, v)| (k, v)));
        let parent = std::process::id();
        // SAFETY: runs between fork and exec and only calls prctl and getppid (async-signal-safe);
        // it allocates only on the error path. The main thread forks, and it lives as long as the
        // bench, so the parent-death signal fires only when the bench is gone.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("the bench exited before exec"));
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("the operator has no pid")?;
        Ok(Self {
            child,
            pid,
            port,
            log: log.to_path_buf(),
            spawned: Instant::now(),
        })
    }

    /// Fails with the log's tail when the operator has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self
            .child
            .try_wait()
            .context("cannot check on the operator")?
        {
            bail!(
                "the operator exited ({}); last lines of its log:\n{}",
                describe_exit(&status),
                mooring_tests::log_tail(&self.log, 30)
            );
        }
        Ok(())
    }

    /// Waits for `/readyz` to answer 200 and then for the Lease to have a holder; the times from
    /// the spawn.
    async fn wait_until_leading(&mut self, client: &Client) -> Result<(Duration, Duration)> {
        let deadline = self.spawned + START_TIMEOUT;
        let ready_after = loop {
            self.check_alive()?;
            match self.get("/readyz").await {
                Ok((200, _)) => break self.spawned.elapsed(),
                Ok(_) | Err(_) if Instant::now() < deadline => {}
                Ok((code, body)) => bail!(
                    "/readyz still answers {code} {body:?} after {START_TIMEOUT:?}; log:\n{}",
                    mooring_tests::log_tail(&self.log, 30)
                ),
                Err(e) => {
                    return Err(e.context(format!(
                        "/readyz does not answer after {START_TIMEOUT:?}; log:\n{}",
                        mooring_tests::log_tail(&self.log, 30)
                    )))
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
        let leading_after = loop {
            self.check_alive()?;
            let lease = leases
                .get_opt(LEASE)
                .await
                .with_context(|| format!("cannot read the Lease {NS}/{LEASE}"))?;
            let holder = lease
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .filter(|h| !h.is_empty());
            if holder.is_some() {
                break self.spawned.elapsed();
            }
            if Instant::now() >= deadline {
                bail!(
                    "the Lease {NS}/{LEASE} has no holder after {START_TIMEOUT:?}; log:\n{}",
                    mooring_tests::log_tail(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok((ready_after, leading_after))
    }

    /// A plain HTTP/1.0 GET on the operator's server: status code and body.
    async fn get(&self, path: &str) -> Result<(u16, String)> {
        let port = self.port;
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .with_context(|| format!("cannot connect to 127.0.0.1:{port}"))?;
            let request = format!(
                "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            );
            stream
                .write_all(request.as_bytes())
                .await
                .context("cannot send the request")?;
            let mut response = Vec::new();
            stream
                .read_to_end(&mut response)
                .await
                .context("cannot read the response")?;
            Ok::<Vec<u8>, anyhow::Error>(response)
        };
        let response = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .with_context(|| format!("GET {path}: no answer in 5 s"))??;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .with_context(|| format!("GET {path}: not an HTTP response: {head:?}"))?;
        Ok((code, body.to_string()))
    }

    /// The operator's own metrics (`mooring_*` samples).
    async fn metrics(&self) -> Result<Vec<String>> {
        let (code, body) = self.get("/metrics").await?;
        ensure!(code == 200, "GET /metrics answered {code}");
        Ok(body
            .lines()
            .filter(|l| l.starts_with("mooring_"))
            .map(str::to_string)
            .collect())
    }

    /// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
    fn proc_status_kib(&self, field: &str) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        text.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{path} has no {field}"))
    }

    /// SIGTERM, then waits (SIGKILL after [`STOP_TIMEOUT`]); the exit status and how long it took.
    async fn stop(&mut self) -> Result<(ExitStatus, Duration)> {
        if let Some(status) = self
            .child
            .try_wait()
            .context("cannot check on the operator")?
        {
            return Ok((status, Duration::ZERO));
        }
        let begin = Instant::now();
        let pid = libc::pid_t::try_from(self.pid).context("the operator's pid is out of range")?;
        // SAFETY: plain kill(2) on our own child, which has not been reaped (try_wait above).
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot send SIGTERM");
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => Ok((
                status.context("cannot wait for the operator")?,
                begin.elapsed(),
            )),
            Err(_) => {
                self.child
                    .kill()
                    .await
                    .context("cannot kill the operator")?;
                bail!("the operator did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it")
            }
        }
    }
}

/// CPU seconds (user + system) used so far by the operator, the bench itself and the
/// control-plane components (children of the bench: etcd, kube-apiserver). Best effort: a process
/// whose `/proc` entry cannot be read is left out.
fn cpu_seconds_by_process(operator: u32) -> Vec<(String, f64)> {
    let me = std::process::id();
    let mut out = Vec::new();
    if let Some(cpu) = cpu_seconds(operator) {
        out.push(("operator".to_string(), cpu));
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        let mut children: Vec<(String, f64)> = entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != operator && parent_of(*pid) == Some(me))
            .filter_map(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                Some((comm.trim().to_string(), cpu_seconds(pid)?))
            })
            .collect();
        children.sort_by(|a, b| a.0.cmp(&b.0));
        out.extend(children);
    }
    if let Some(cpu) = cpu_seconds(me) {
        out.push(("bench".to_string(), cpu));
    }
    out
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3, the state, first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let fields = stat_fields(pid)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free local port")?;
    Ok(listener
        .local_addr()
        .context("cannot read a local address")?
        .port())
}

fn describe_exit(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

/// Prints how many warnings and errors the operator logged and the first few of them.
fn print_log_summary(log: &Path) {
    let text = match std::fs::read_to_string(log) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("    cannot read the operator's log {}: {e}", log.display());
            return;
        }
    };
    let is_level = |line: &str, level: &str| line.split_whitespace().nth(1) == Some(level);
    let warnings = text.lines().filter(|l| is_level(l, "WARN")).count();
    let errors = text.lines().filter(|l| is_level(l, "ERROR")).count();
    eprintln!(
        "    operator log: {} lines, {warnings} WARN, {errors} ERROR ({})",
        text.lines().count(),
        log.display()
    );
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(10)
        .map(|l| l.chars().take(400).collect::<String>())
    {
        eprintln!("      {line}");
    }
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}

fn print_table(args: &Args, f: &Figures) {
    let mut lat = f.latencies.clone();
    lat.sort();
    let p50 = percentile(&lat, 50.0);
    let p95 = percentile(&lat, 95.0);
    let max = lat.last().copied();
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let total = f
        .converge
        .as_ref()
        .map_or(args.latency_samples, |c| args.latency_samples + c.clusters);

    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut row = |name: String, value: Option<String>, aim: &str, ok: Option<bool>| {
        rows.push((
            name,
            value.unwrap_or_else(|| "-".into()),
            aim.to_string(),
            ok.map(verdict).unwrap_or("").to_string(),
        ));
    };
    row(
        "operator ready / leading after start".into(),
        f.ready_after
            .zip(f.leading_after)
            .map(|(r, l)| format!("{:.2} s / {:.2} s", r.as_secs_f64(), l.as_secs_f64())),
        "",
        None,
    );
    row(
        "operator RSS, idle".into(),
        f.rss_idle_kib.map(|k| format!("{:.1} MiB", mib(k))),
        "",
        None,
    );
    let n = lat.len();
    row(
        format!("apply-to-all-children latency p50 (n={n})"),
        ms(p50).map(|v| format!("{v:.0} ms")),
        &format!("<= {AIM_P50_MS:.0} ms"),
        ms(p50).map(|v| v <= AIM_P50_MS),
    );
    row(
        format!("apply-to-all-children latency p95 (n={n})"),
        ms(p95).map(|v| format!("{v:.0} ms")),
        "",
        None,
    );
    row(
        format!("apply-to-all-children latency max (n={n})"),
        ms(max).map(|v| format!("{v:.0} ms")),
        "",
        None,
    );
    if let Some(c) = &f.converge {
        let name = format!("{} clusters converged (all created in)", c.clusters);
        let aim = format!("<= {AIM_CONVERGE_S:.0} s");
        match c.took {
            Some(t) => row(
                name,
                Some(format!(
                    "{:.1} s ({:.1} s)",
                    t.as_secs_f64(),
                    c.creates_took.as_secs_f64()
                )),
                &aim,
                Some(t.as_secs_f64() <= AIM_CONVERGE_S),
            ),
            None => row(
                name,
                Some(format!(
                    "timeout: {}/{} after {} s",
                    c.converged, c.clusters, args.converge_timeout
                )),
                &aim,
                Some(false),
            ),
        }
    }
    let aim_rss = format!("<= {AIM_RSS_MIB:.0} MiB");
    row(
        format!("operator RSS at {total} clusters"),
        f.rss_scaled_kib.map(|k| format!("{:.1} MiB", mib(k))),
        &aim_rss,
        f.rss_scaled_kib.map(|k| mib(k) <= AIM_RSS_MIB),
    );
    if let Some(k) = f.rss_held_kib {
        row(
            format!("operator RSS {} s later", args.hold),
            Some(format!("{:.1} MiB", mib(k))),
            &aim_rss,
            Some(mib(k) <= AIM_RSS_MIB),
        );
    }
    row(
        "operator peak RSS (VmHWM)".into(),
        f.peak_rss_kib.map(|k| format!("{:.1} MiB", mib(k))),
        &aim_rss,
        f.peak_rss_kib.map(|k| mib(k) <= AIM_RSS_MIB),
    );

    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(8);
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0).max(3);
    println!();
    println!(
        "Mooring operator benchmark: rabbitmq BrokerClusters, 3 replicas, kube-apiserver + etcd only"
    );
    if !args.operator_env.is_empty() {
        let env: Vec<String> = args
            .operator_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("operator environment added: {}", env.join(" "));
    }
    println!("{:<w0$}  {:>w1$}  {:<w2$}", "figure", "measured", "aim");
    println!("{}", "-".repeat(w0 + w1 + w2 + 12));
    for (name, value, aim, ok) in &rows {
        println!("{name:<w0$}  {value:>w1$}  {aim:<w2$}  {ok}");
    }
    if let (Some(wall), false) = (f.scale_wall, f.scale_cpu.is_empty()) {
        println!();
        println!(
            "CPU seconds used during the scale phase ({:.1} s wall, {} cores):",
            wall.as_secs_f64(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        for (name, cpu) in &f.scale_cpu {
            println!("  {name:<16} {cpu:>7.1} s");
        }
    }
    if !f.metrics.is_empty() {
        println!();
        println!("operator metrics at the end:");
        for line in &f.metrics {
            println!("  {line}");
        }
    }
}
