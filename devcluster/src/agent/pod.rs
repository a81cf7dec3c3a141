//! One Pod's worker: from acceptance to deletion.
//!
//! 1. Every container image is resolved through the mapping; an image that cannot run leaves the
//!    Pod `Pending` with the container waiting (`ImageNotMapped`/`ImageNotInstalled`), retried
//!    every 30 s (the mapping file is read again).
//! 2. The sandbox: an address, the network namespace, the veth; the Pod joins the hosts files.
//! 3. Volumes are materialised (a missing ConfigMap/Secret is retried every 5 s).
//! 4. Init containers run one after the other to completion, then the containers run together.
//! 5. The status is written (status subresource) whenever what it is built from changes.
//! 6. When the Pod gets a `deletionTimestamp`: its names leave the hosts files, `preStop` runs,
//!    containers get SIGTERM and, after `deletionGracePeriodSeconds`, SIGKILL; the sandbox and the
//!    Pod directory are removed (claims' directories stay) and the Pod is deleted with grace
//!    period 0 and its uid as precondition, as the kubelet does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::container::{self, PodContext, Shared, Slot};
use super::images::ResolvedImage;
use super::sandbox::{self, Sandbox};
use super::status::{self, ContainerRuntime, PodRuntime, REASON_CREATING, REASON_INITIALIZING};
use super::volumes::{self, PodPaths};
use super::Agent;

/// How long a Pod stopped because the agent shuts down may take at most.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the pod watcher tells a worker.
#[derive(Clone, Debug)]
pub struct PodUpdate {
    /// The Pod as last seen.
    pub pod: Arc<Pod>,
    /// The Pod is gone from the API (deleted without the agent).
    pub gone: bool,
}

/// How a worker ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Deleted(Duration),
    Gone,
    Shutdown,
}

fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The Pod's directory name: `<namespace>_<name>_<uid>`.
pub fn dir_name(pod: &Pod) -> String {
    format!(
        "{}_{}_{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// The hostname of the Pod's containers: `spec.hostname` or the name (63 characters at most),
/// the FQDN with `setHostnameAsFQDN`.
pub fn hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let mut host = spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    host.truncate(63);
    let sub = spec
        .and_then(|s| s.subdomain.clone())
        .filter(|s| !s.is_empty());
    match (spec.and_then(|s| s.set_hostname_as_fqdn), sub) {
        (Some(true), Some(sub)) => format!(
            "{host}.{sub}.{}.svc.{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            sandbox::CLUSTER_DOMAIN
        ),
        _ => host,
    }
}

fn deletion_grace(pod: &Pod) -> Option<Duration> {
    pod.metadata.deletion_timestamp.as_ref()?;
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Some(Duration::from_secs(secs.max(0) as u64))
}

fn initial_runtime(pod: &Pod, host_ip: &str) -> PodRuntime {
    let spec = pod.spec.clone().unwrap_or_default();
    let has_init = spec.init_containers.as_ref().is_some_and(|i| !i.is_empty());
    let waiting = |c: &k8s_openapi::api::core::v1::Container, reason: &str| {
        ContainerRuntime::waiting(
            &c.name,
            c.image.as_deref().unwrap_or_default(),
            reason,
            None,
        )
    };
    PodRuntime {
        pod_ip: None,
        host_ip: host_ip.to_string(),
        start_time: pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now),
        sandbox_ready: false,
        init_containers: spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| waiting(c, REASON_INITIALIZING))
            .collect(),
        containers: spec
            .containers
            .iter()
            .map(|c| {
                waiting(
                    c,
                    if has_init {
                        REASON_INITIALIZING
                    } else {
                        REASON_CREATING
                    },
                )
            })
            .collect(),
    }
}

/// Writes the Pod's status when it changed.
struct StatusWriter {
    agent: Arc<Agent>,
    last: Option<PodStatus>,
    dirty: bool,
}

impl StatusWriter {
    async fn write(&mut self, pod: &Pod, rt: &PodRuntime) {
        let previous = self.last.clone().or_else(|| pod.status.clone());
        let status = status::pod_status(pod, rt, previous.as_ref(), Timestamp::now());
        if !self.dirty && self.last.as_ref() == Some(&status) {
            return;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.agent.client.clone(), &ns);
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        {
            Ok(_) => {
                self.last = Some(status);
                self.dirty = false;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                self.last = Some(status);
                self.dirty = false;
            }
            Err(e) => {
                tracing::warn!(pod = %key(pod), error = %e, "cannot write the pod status");
                self.dirty = true;
            }
        }
    }
}

fn all_ready(rt: &PodRuntime) -> bool {
    rt.containers
        .iter()
        .all(|c| c.ready && matches!(c.state, status::State::Running { .. }))
}

/// Runs the Pod until it is deleted, gone, or the agent shuts down.
pub async fn run(
    agent: Arc<Agent>,
    mut updates: watch::Receiver<PodUpdate>,
    shutdown: CancellationToken,
) {
    let mut pod = updates.borrow().pod.clone();
    let pod_key = key(&pod);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let paths = PodPaths {
        dir: agent.opts.state_dir.join("pods").join(dir_name(&pod)),
        state_dir: agent.opts.state_dir.clone(),
    };
    let shared = Shared::new(initial_runtime(&pod, &agent.opts.gateway));
    let mut writer = StatusWriter {
        agent: agent.clone(),
        last: None,
        dirty: false,
    };
    let (stop_tx, stop_rx) = watch::channel::<Option<Duration>>(None);
    let terminal = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");

    let end = deletion_grace(&pod).map(End::Deleted);
    let mut runner = if end.is_none() && !terminal {
        tracing::info!(pod = %pod_key, uid, "starting pod");
        Some(tokio::spawn(start(
            agent.clone(),
            pod.clone(),
            paths.clone(),
            shared.clone(),
            stop_rx.clone(),
        )))
    } else {
        None
    };

    let mut ready = false;
    let mut retry = tokio::time::interval(Duration::from_secs(5));
    let end = match end {
        Some(end) => end,
        None => loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break End::Shutdown,
                _ = shared.changed.notified(), if !terminal => {
                    // Let a burst of changes settle into one write.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let rt = shared.snapshot();
                    let now_ready = all_ready(&rt);
                    if now_ready != ready {
                        ready = now_ready;
                        agent.dns_set_ready(&uid, ready);
                    }
                    writer.write(&pod, &rt).await;
                }
                changed = updates.changed() => {
                    if changed.is_err() {
                        break End::Gone;
                    }
                    let update = updates.borrow_and_update().clone();
                    if update.gone {
                        break End::Gone;
                    }
                    pod = update.pod;
                    if let Some(grace) = deletion_grace(&pod) {
                        break End::Deleted(grace);
                    }
                    agent.dns_update_pod(&uid, &pod);
                }
                _ = retry.tick(), if writer.dirty => {
                    writer.write(&pod, &shared.snapshot()).await;
                }
                _ = finished(&mut runner), if runner.is_some() => {
                    // Every container ended for good (or the Pod could not start): a Pod in a
                    // terminal phase gives its sandbox back, as the kubelet does.
                    runner = None;
                    let rt = shared.snapshot();
                    let spec = pod.spec.clone().unwrap_or_default();
                    let phase = status::phase(
                        spec.restart_policy.as_deref().unwrap_or("Always"),
                        &rt.init_containers,
                        &rt.containers,
                    );
                    if phase == "Succeeded" || phase == "Failed" {
                        tracing::info!(pod = %pod_key, phase, "pod finished: removing its sandbox");
                        agent.dns_remove(&uid);
                        release_sandbox(&agent, &uid).await;
                    }
                }
            }
        },
    };

    // Stop: names first (clients stop resolving it), then the containers.
    agent.dns_remove(&uid);
    let grace = match end {
        End::Deleted(g) => g,
        End::Gone => Duration::from_secs(2),
        End::Shutdown => SHUTDOWN_GRACE,
    };
    tracing::info!(pod = %pod_key, uid, ?end, grace_secs = grace.as_secs(), "stopping pod");
    let _ = stop_tx.send(Some(grace));
    if let Some(runner) = runner {
        let abort = runner.abort_handle();
        if tokio::time::timeout(grace + Duration::from_secs(15), runner)
            .await
            .is_err()
        {
            tracing::warn!(pod = %pod_key, "the pod's containers did not stop in time");
            abort.abort();
        }
    }
    if matches!(end, End::Deleted(_)) && !terminal {
        writer.write(&pod, &shared.snapshot()).await;
    }
    release_sandbox(&agent, &uid).await;
    if end == End::Shutdown {
        tracing::info!(pod = %pod_key, "pod stopped (agent shutdown)");
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(&paths.dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(pod = %pod_key, dir = %paths.dir.display(), error = %e, "cannot remove the pod directory");
        }
    }
    if end == End::Gone {
        tracing::info!(pod = %pod_key, "pod removed (deleted from the API)");
        return;
    }
    let api: Api<Pod> = Api::namespaced(
        agent.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
    );
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    for attempt in 0..5 {
        match api.delete(&name, &params).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => break,
            Err(e) => {
                tracing::warn!(pod = %pod_key, error = %e, attempt, "cannot delete the pod");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    tracing::info!(pod = %pod_key, "pod deleted");
}

/// Waits for the runner to end (never, without one).
async fn finished(runner: &mut Option<tokio::task::JoinHandle<()>>) {
    match runner {
        Some(handle) => {
            if let Err(e) = handle.await {
                tracing::warn!(error = %e, "a pod runner failed");
            }
        }
        None => std::future::pending().await,
    }
}

/// Removes the Pod's sandbox (if it has one) and frees its address.
async fn release_sandbox(agent: &Agent, uid: &str) {
    if let Some(ip) = agent.allocated_ip(uid) {
        let (netns, veth) = agent.network.sandbox_names(uid);
        sandbox::destroy(&Sandbox { netns, veth, ip }).await;
        agent.release_ip(uid);
    }
}

/// Resolves every image of the Pod: the images in container order (init first), or the
/// runtime updated with the reasons.
fn resolve_images(
    agent: &Agent,
    pod: &Pod,
    shared: &Shared,
) -> Option<(Vec<ResolvedImage>, Vec<ResolvedImage>)> {
    let mapping = match agent.image_mapping() {
        Ok(m) => m,
        Err(e) => {
            let msg = e.to_string();
            shared.update(|rt| {
                for c in rt
                    .init_containers
                    .iter_mut()
                    .chain(rt.containers.iter_mut())
                {
                    c.state =
                        status::State::waiting(super::images::REASON_NOT_MAPPED, Some(msg.clone()));
                }
            });
            return None;
        }
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let exists = |p: &str| std::path::Path::new(p).exists();
    let resolve = |c: &k8s_openapi::api::core::v1::Container| {
        mapping.resolve(
            c.image.as_deref().unwrap_or_default(),
            &super::images::process_vars,
            &exists,
        )
    };
    let init: Vec<_> = spec.init_containers.iter().flatten().map(resolve).collect();
    let main: Vec<_> = spec.containers.iter().map(resolve).collect();
    if init.iter().chain(main.iter()).all(|r| r.is_ok()) {
        return Some((
            init.into_iter().flatten().collect(),
            main.into_iter().flatten().collect(),
        ));
    }
    shared.update(|rt| {
        let pairs = rt
            .init_containers
            .iter_mut()
            .zip(init.iter())
            .chain(rt.containers.iter_mut().zip(main.iter()));
        for (c, r) in pairs {
            if let Err(why) = r {
                c.state = status::State::waiting(why.reason, Some(why.message.clone()));
            }
        }
    });
    None
}

async fn start(
    agent: Arc<Agent>,
    pod: Arc<Pod>,
    paths: PodPaths,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let pod_key = key(&pod);
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();

    let mut attempts = 0;
    let (init_images, images) = loop {
        if let Some(images) = resolve_images(&agent, &pod, &shared) {
            break images;
        }
        attempts += 1;
        let rt = shared.snapshot();
        let reasons: Vec<String> = rt
            .containers
            .iter()
            .filter_map(|c| match &c.state {
                status::State::Waiting {
                    message: Some(m), ..
                } => Some(m.clone()),
                _ => None,
            })
            .collect();
        if attempts == 1 {
            tracing::warn!(pod = %pod_key, reasons = ?reasons, "pod cannot run here");
        } else {
            tracing::debug!(pod = %pod_key, reasons = ?reasons, "pod still cannot run here");
        }
        if container::sleep_or_stop(Duration::from_secs(30), &mut stop).await {
            return;
        }
    };

    let sandbox = loop {
        let attempt = async {
            let ip =
                agent.allocate_ip(&uid, &ns, pod.metadata.name.as_deref().unwrap_or_default())?;
            let (netns, veth) = agent.network.sandbox_names(&uid);
            let sb = Sandbox { netns, veth, ip };
            sandbox::create(&agent.network, &sb, &ns).await?;
            Ok::<_, sandbox::SandboxError>(sb)
        };
        match attempt.await {
            Ok(sb) => break sb,
            Err(e) => {
                let msg = format!("cannot create the pod sandbox: {e}");
                tracing::warn!(pod = %pod_key, "{msg}");
                set_creating(&shared, Some(msg));
                if container::sleep_or_stop(Duration::from_secs(5), &mut stop).await {
                    return;
                }
            }
        }
    };
    tracing::info!(pod = %pod_key, ip = %sandbox.ip, netns = %sandbox.netns, "sandbox ready");
    agent.dns_add_pod(&uid, &pod, sandbox.clone());
    shared.update(|rt| {
        rt.pod_ip = Some(sandbox.ip.to_string());
        rt.sandbox_ready = true;
    });

    let fields = agent.field_context(Some(sandbox.ip.to_string()));
    let volumes = loop {
        match volumes::materialise(&agent.client, &pod, &paths, &fields).await {
            Ok(v) => break v,
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(pod = %pod_key, "{msg}");
                set_creating(&shared, Some(msg));
                if container::sleep_or_stop(Duration::from_secs(5), &mut stop).await {
                    return;
                }
            }
        }
    };
    set_creating(&shared, None);

    let ctx = Arc::new(PodContext {
        agent: agent.clone(),
        pod: pod.clone(),
        sandbox,
        paths,
        volumes,
        shared: shared.clone(),
        hostname: hostname(&pod),
    });
    let spec = pod.spec.clone().unwrap_or_default();
    for (i, (c, image)) in spec
        .init_containers
        .iter()
        .flatten()
        .zip(init_images)
        .enumerate()
    {
        let end =
            container::supervise(ctx.clone(), Slot::Init(i), c.clone(), image, stop.clone()).await;
        if stop.borrow().is_some() {
            return;
        }
        if end.is_none_or(|t| t.exit_code != 0) {
            tracing::warn!(pod = %pod_key, container = %c.name, "init container failed: the pod does not start");
            return;
        }
    }
    if !spec
        .init_containers
        .iter()
        .flatten()
        .collect::<Vec<_>>()
        .is_empty()
    {
        shared.update(|rt| {
            for c in rt.containers.iter_mut() {
                c.state = status::State::waiting(REASON_CREATING, None);
            }
        });
    }
    let runs: Vec<_> = spec
        .containers
        .iter()
        .zip(images)
        .enumerate()
        .map(|(i, (c, image))| {
            tokio::spawn(container::supervise(
                ctx.clone(),
                Slot::Main(i),
                c.clone(),
                image,
                stop.clone(),
            ))
        })
        .collect();
    let ends: BTreeMap<usize, _> = futures::future::join_all(runs)
        .await
        .into_iter()
        .enumerate()
        .collect();
    tracing::debug!(pod = %pod_key, ends = ?ends, "all containers ended");
}

fn set_creating(shared: &Shared, message: Option<String>) {
    shared.update(|rt| {
        for c in rt
            .init_containers
            .iter_mut()
            .chain(rt.containers.iter_mut())
        {
            if let status::State::Waiting { reason, .. } = &c.state {
                if reason == REASON_CREATING || reason == REASON_INITIALIZING {
                    let reason = reason.clone();
                    c.state = status::State::waiting(&reason, message.clone());
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use kube::api::ObjectMeta;

    fn pod(hostname: Option<&str>, sub: Option<&str>, fqdn: Option<bool>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("bus-0".into()),
                namespace: Some("iot".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                hostname: hostname.map(Into::into),
                subdomain: sub.map(Into::into),
                set_hostname_as_fqdn: fqdn,
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn hostnames_follow_the_spec() {
        assert_eq!(hostname(&pod(None, None, None)), "bus-0");
        assert_eq!(hostname(&pod(Some("h"), Some("s"), None)), "h");
        assert_eq!(
            hostname(&pod(None, Some("bus-headless"), Some(true))),
            "bus-0.bus-headless.iot.svc.cluster.local"
        );
        assert_eq!(dir_name(&pod(None, None, None)), "iot_bus-0_u-1");
    }
}
