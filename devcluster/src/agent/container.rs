//! One container's life: build its environment and command line, start it, run its probes and
//! hooks, stop it, and restart it by the Pod's `restartPolicy` with the kubelet's back-off.
//!
//! - The environment: `PATH` (the image mapping's), `HOSTNAME`, `HOME=/root`, the API server's
//!   `KUBERNETES_SERVICE_*`, then the image's ENV, then the container's own (`envFrom`, `env`),
//!   and the devcluster process marker last.
//! - Restarts: the first one at once, then after 10 s, doubling up to 5 min; a container that ran
//!   10 min starts over ([`Backoff`]). While it waits the container shows `CrashLoopBackOff`.
//! - A liveness or startup probe failure runs `preStop` and stops the container (SIGTERM, the
//!   probe's or the Pod's grace period, SIGKILL), which then restarts by the same rules.
//! - Termination messages: each run gets an empty file mounted at its `terminationMessagePath`;
//!   when it exits, [`termination::message`] fills `state.terminated.message` (and so
//!   `lastState` after a restart).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use tokio::sync::{mpsc, watch, Notify};

use super::env::{self, Env, EnvSources};
use super::images::{self, ResolvedImage};
use super::probes::{self, ProbeEvent, Probes, Target};
use super::process::{self, Launch};
use super::sandbox::Sandbox;
use super::status::{
    ContainerRuntime, PodRuntime, State, Termination, REASON_BACKOFF, REASON_CONFIG_ERROR,
    REASON_CREATING, REASON_RUN_ERROR,
};
use super::termination;
use super::volumes::{self, Materialised, PodPaths};
use super::Agent;

/// The first restart delay after the immediate one.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// The longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container that ran this long starts its back-off over.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// How long a configuration error waits before the next attempt.
const RETRY: Duration = Duration::from_secs(10);

/// The kubelet's restart back-off of one container (pure).
#[derive(Clone, Debug, Default)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The delay before the next start, given how long the last run lasted.
    pub fn next(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= BACKOFF_RESET {
            self.next = Duration::ZERO;
        }
        let delay = self.next;
        self.next = if delay.is_zero() {
            BACKOFF_INITIAL
        } else {
            (delay * 2).min(BACKOFF_MAX)
        };
        delay
    }
}

/// Which container of the Pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// `initContainers[i]`.
    Init(usize),
    /// `containers[i]`.
    Main(usize),
}

/// Whether a container that ended with `exit_code` starts again.
pub fn should_restart(slot: Slot, restart_policy: &str, exit_code: i32) -> bool {
    match slot {
        Slot::Init(_) => exit_code != 0 && restart_policy != "Never",
        Slot::Main(_) => match restart_policy {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        },
    }
}

/// The Pod's runtime state, shared by its containers and its worker.
#[derive(Debug)]
pub struct Shared {
    /// What the status is built from.
    pub runtime: Mutex<PodRuntime>,
    /// Signalled on every change.
    pub changed: Notify,
}

impl Shared {
    /// Wraps a runtime.
    pub fn new(runtime: PodRuntime) -> Arc<Self> {
        Arc::new(Self {
            runtime: Mutex::new(runtime),
            changed: Notify::new(),
        })
    }

    /// Changes the runtime and signals it.
    pub fn update(&self, f: impl FnOnce(&mut PodRuntime)) {
        {
            let mut rt = self
                .runtime
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut rt);
        }
        self.changed.notify_one();
    }

    /// A copy of the runtime.
    pub fn snapshot(&self) -> PodRuntime {
        self.runtime
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Changes one container's runtime.
    pub fn update_container(&self, slot: Slot, f: impl FnOnce(&mut ContainerRuntime)) {
        self.update(|rt| {
            let c = match slot {
                Slot::Init(i) => rt.init_containers.get_mut(i),
                Slot::Main(i) => rt.containers.get_mut(i),
            };
            if let Some(c) = c {
                f(c);
            }
        });
    }
}

/// What the containers of a started Pod share.
pub struct PodContext {
    /// The agent.
    pub agent: Arc<Agent>,
    /// The Pod as it was when it started.
    pub pod: Arc<Pod>,
    /// Its sandbox.
    pub sandbox: Sandbox,
    /// Its directories.
    pub paths: PodPaths,
    /// Its volumes.
    pub volumes: BTreeMap<String, Materialised>,
    /// Its runtime state.
    pub shared: Arc<Shared>,
    /// The containers' hostname.
    pub hostname: String,
}

impl PodContext {
    fn namespace(&self) -> String {
        self.pod.metadata.namespace.clone().unwrap_or_default()
    }

    fn name(&self) -> String {
        self.pod.metadata.name.clone().unwrap_or_default()
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    fn grace(&self) -> Duration {
        let secs = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64)
    }
}

/// Waits until a stop is requested; its grace period.
pub async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match stop.wait_for(|s| s.is_some()).await {
        Ok(grace) => grace.unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

/// Sleeps `d` unless a stop comes first; true when stopped.
pub async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<Option<Duration>>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop_requested(stop) => true,
    }
}

enum Prepared {
    Ready(Launch, Env),
    ConfigError(String),
    RunError(String),
}

async fn env_sources(ctx: &PodContext, container: &Container) -> Result<EnvSources, String> {
    let (secrets, config_maps) = env::referenced_objects(container);
    let ns = ctx.namespace();
    let client = &ctx.agent.client;
    let mut sources = EnvSources::default();
    for name in secrets {
        let s = Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt(&name)
            .await
            .map_err(|e| format!("cannot read secret {name:?}: {e}"))?;
        let data = s.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect()
        });
        sources.secrets.insert(name, data);
    }
    for name in config_maps {
        let c = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get_opt(&name)
            .await
            .map_err(|e| format!("cannot read configmap {name:?}: {e}"))?;
        sources
            .config_maps
            .insert(name, c.map(|c| c.data.unwrap_or_default()));
    }
    Ok(sources)
}

async fn prepare(ctx: &PodContext, container: &Container, image: &ResolvedImage) -> Prepared {
    let sources = match env_sources(ctx, container).await {
        Ok(s) => s,
        Err(e) => return Prepared::ConfigError(e),
    };
    let fields = ctx.agent.field_context(Some(ctx.sandbox.ip.to_string()));
    let own = match env::container_env(&ctx.pod, container, &sources, &fields) {
        Ok(e) => e,
        Err(e) => return Prepared::ConfigError(e.to_string()),
    };
    let service = ctx.agent.service_env();
    let mut full = Env::new();
    full.set("PATH", image.path.clone());
    full.set("HOSTNAME", ctx.hostname.clone());
    full.set("HOME", "/root");
    let full = full.overlaid(&service);
    let mut full = image
        .env
        .iter()
        .fold(full, |mut e, (k, v)| {
            e.set(k.clone(), v.clone());
            e
        })
        .overlaid(&own);
    full.set(crate::state::MARKER_ENV, ctx.agent.marker.clone());

    let visible = service.overlaid(&own);
    let command = env::expand_all(container.command.as_deref().unwrap_or_default(), &visible);
    let args = env::expand_all(container.args.as_deref().unwrap_or_default(), &visible);
    let argv = match images::argv(image, &command, &args) {
        Ok(a) => a,
        Err(e) => return Prepared::RunError(e.to_string()),
    };
    let mut mounts = match volumes::container_mounts(container, &ctx.volumes, &ctx.paths, &own) {
        Ok(m) => m,
        Err(e) => return Prepared::RunError(e.to_string()),
    };
    if let Some(target) = termination::path_of(container) {
        // A fresh, empty file for each run, writable by any user of the container.
        let file = ctx.paths.termination(&container.name);
        let created = file
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(&file, b""))
            .and_then(|_| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)));
        if let Err(e) = created {
            return Prepared::RunError(format!("cannot create {}: {e}", file.display()));
        }
        mounts.push(process::Mount {
            source: file,
            target,
            read_only: false,
        });
    }
    let script_path: PathBuf = ctx.paths.init_script(&container.name);
    let stage = ctx
        .paths
        .dir
        .join("run")
        .join(format!("stage-{}", container.name));
    let script = process::init_script(
        &ctx.hostname,
        &mounts,
        &stage,
        container.working_dir.as_deref(),
    );
    let written = script_path
        .parent()
        .map(std::fs::create_dir_all)
        .transpose()
        .and_then(|_| std::fs::create_dir_all(ctx.paths.tmp()))
        .and_then(|_| std::fs::write(&script_path, script));
    if let Err(e) = written {
        return Prepared::RunError(format!("cannot write {}: {e}", script_path.display()));
    }
    Prepared::Ready(
        Launch {
            netns: ctx.sandbox.netns.clone(),
            init_script: script_path,
            argv,
            env: full.clone(),
            log: ctx.paths.log(&container.name),
        },
        full,
    )
}

/// The kubelet's termination message of a run that ended with `exit_code` ([`termination`]).
fn termination_message(
    ctx: &PodContext,
    container: &Container,
    exit_code: i32,
    log_start: u64,
    launch: &Launch,
) -> Option<String> {
    termination::path_of(container)?;
    let file = termination::read_tail(
        &ctx.paths.termination(&container.name),
        0,
        termination::MAX_MESSAGE,
    );
    let fallback = termination::falls_back_to_logs(container);
    let log = if fallback {
        termination::read_tail(&launch.log, log_start, termination::FALLBACK_BYTES)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    termination::message(fallback, file.as_deref(), exit_code, &log)
}

/// Runs a container until it ends for good (by its restart policy) or a stop is requested;
/// returns how it ended last.
pub async fn supervise(
    ctx: Arc<PodContext>,
    slot: Slot,
    container: Container,
    image: ResolvedImage,
    mut stop: watch::Receiver<Option<Duration>>,
) -> Option<Termination> {
    let pod_key = format!("{}/{}", ctx.namespace(), ctx.name());
    let name = container.name.clone();
    let shared = ctx.shared.clone();
    let probes = Probes::of(&container);
    let lifecycle = container.lifecycle.clone().unwrap_or_default();
    let mut backoff = Backoff::default();
    let mut last: Option<Termination> = None;
    loop {
        if stop.borrow().is_some() {
            return last;
        }
        let (launch, env) = match prepare(&ctx, &container, &image).await {
            Prepared::Ready(l, e) => (l, e),
            Prepared::ConfigError(msg) | Prepared::RunError(msg) if stop.borrow().is_some() => {
                tracing::debug!(pod = %pod_key, container = %name, msg, "not started: stopping");
                return last;
            }
            Prepared::ConfigError(msg) => {
                tracing::warn!(pod = %pod_key, container = %name, "{msg}");
                shared.update_container(slot, |c| {
                    c.state = State::waiting(REASON_CONFIG_ERROR, Some(msg));
                });
                if sleep_or_stop(RETRY, &mut stop).await {
                    return last;
                }
                continue;
            }
            Prepared::RunError(msg) => {
                tracing::warn!(pod = %pod_key, container = %name, "{msg}");
                shared.update_container(slot, |c| {
                    c.state = State::waiting(REASON_RUN_ERROR, Some(msg));
                });
                if sleep_or_stop(RETRY, &mut stop).await {
                    return last;
                }
                continue;
            }
        };
        let log_start = termination::size_of(&launch.log);
        let mut running = match process::launch(&launch).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(pod = %pod_key, container = %name, error = %e, "cannot start");
                shared.update_container(slot, |c| {
                    c.state = State::waiting(REASON_RUN_ERROR, Some(e.to_string()));
                });
                if sleep_or_stop(RETRY, &mut stop).await {
                    return last;
                }
                continue;
            }
        };
        let started_at = Timestamp::now();
        let container_id = running.container_id();
        tracing::info!(
            pod = %pod_key,
            container = %name,
            pid = running.pid1.unwrap_or(running.unshare_pid),
            argv = ?launch.argv,
            "container started"
        );
        shared.update_container(slot, |c| {
            c.state = State::Running { started_at };
            c.container_id = Some(container_id.clone());
            c.started = probes.startup.is_none();
            c.ready = false;
        });
        let target = Target::new(&container, ctx.sandbox.ip, running.pid1, env);
        let grace = ctx.grace();

        let mut failure: Option<String> = None;
        if let Some(hook) = &lifecycle.post_start {
            if let Err(why) = probes::run_hook(hook, &target, Duration::from_secs(30)).await {
                let msg = format!("PostStartHookError: {why}");
                tracing::warn!(pod = %pod_key, container = %name, "{msg}");
                failure = Some(msg);
            }
        }
        let (tx, mut rx) = mpsc::channel(8);
        let prober = tokio::spawn(probes::prober(
            probes.clone(),
            target.clone(),
            tokio::time::Instant::now(),
            tx,
        ));
        let pre_stop = |budget: Duration| {
            let hook = lifecycle.pre_stop.clone();
            let target = target.clone();
            async move {
                let started = tokio::time::Instant::now();
                if let Some(hook) = hook {
                    if let Err(why) = probes::run_hook(&hook, &target, budget).await {
                        tracing::info!(why, "preStop hook failed");
                    }
                }
                budget.saturating_sub(started.elapsed())
            }
        };
        let (exit, message, stopped) = if let Some(msg) = failure {
            let exit = running.stop(grace).await;
            (exit, Some(msg), false)
        } else {
            loop {
                tokio::select! {
                    exit = running.wait() => break (exit, None, false),
                    Some(event) = rx.recv() => match event {
                        ProbeEvent::Started => shared.update_container(slot, |c| c.started = true),
                        ProbeEvent::Ready(ready) => {
                            tracing::info!(pod = %pod_key, container = %name, ready, "readiness changed");
                            shared.update_container(slot, |c| c.ready = ready);
                        }
                        ProbeEvent::LivenessFailed(msg) | ProbeEvent::StartupFailed(msg) => {
                            tracing::info!(pod = %pod_key, container = %name, "{msg}: restarting the container");
                            let probe_grace = probes
                                .liveness
                                .as_ref()
                                .and_then(|p| p.termination_grace_period_seconds)
                                .map(|s| Duration::from_secs(s.max(0) as u64))
                                .unwrap_or(grace);
                            let left = pre_stop(probe_grace).await;
                            let exit = running.stop(left).await;
                            break (exit, Some(msg), false);
                        }
                    },
                    stop_grace = stop_requested(&mut stop) => {
                        let left = pre_stop(stop_grace).await;
                        let exit = running.stop(left).await;
                        break (exit, None, true);
                    }
                }
            }
        };
        prober.abort();
        let ran_for = running.started.elapsed();
        let mut termination = Termination::new(exit.code, exit.signal, Some(started_at));
        termination.message =
            termination_message(&ctx, &container, exit.code, log_start, &launch).or(message);
        termination.container_id = Some(container_id);
        tracing::info!(
            pod = %pod_key,
            container = %name,
            exit_code = exit.code,
            signal = exit.signal,
            "container exited"
        );
        let restart = !stopped && should_restart(slot, &ctx.restart_policy(), exit.code);
        if !restart {
            let t = termination.clone();
            shared.update_container(slot, |c| {
                c.state = State::Terminated(t);
                c.ready = false;
            });
            return Some(termination);
        }
        let delay = backoff.next(ran_for);
        let t = termination.clone();
        let pod_name = ctx.name();
        shared.update_container(slot, |c| {
            c.restart_count += 1;
            c.last_termination = Some(t);
            c.ready = false;
            c.started = false;
            c.state = if delay.is_zero() {
                State::waiting(REASON_CREATING, None)
            } else {
                State::waiting(
                    REASON_BACKOFF,
                    Some(format!(
                        "back-off {}s restarting failed container={} pod={}",
                        delay.as_secs(),
                        name,
                        pod_name
                    )),
                )
            };
        });
        last = Some(termination);
        if !delay.is_zero() && sleep_or_stop(delay, &mut stop).await {
            return last;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_then_doubles_to_five_minutes_and_resets() {
        let mut b = Backoff::default();
        let short = Duration::from_secs(1);
        let delays: Vec<u64> = (0..8).map(|_| b.next(short).as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.next(Duration::from_secs(601)), Duration::ZERO);
        assert_eq!(b.next(short), BACKOFF_INITIAL);
    }

    #[test]
    fn restart_policies() {
        assert!(should_restart(Slot::Main(0), "Always", 0));
        assert!(should_restart(Slot::Main(0), "Always", 1));
        assert!(!should_restart(Slot::Main(0), "OnFailure", 0));
        assert!(should_restart(Slot::Main(0), "OnFailure", 137));
        assert!(!should_restart(Slot::Main(0), "Never", 1));
        assert!(!should_restart(Slot::Init(0), "Always", 0));
        assert!(should_restart(Slot::Init(0), "Always", 1));
        assert!(!should_restart(Slot::Init(0), "Never", 1));
    }
}
