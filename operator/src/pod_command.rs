//! Running a command against a broker cluster: a short-lived **command Pod**, not `pods/exec`.
//!
//! Membership repair and diagnostics need the broker's own CLI (`rabbitmqctl -n <node>
//! cluster_status / stop_app / join_cluster / start_app`). These CLIs talk Erlang distribution to
//! the target node; they do not have to run *inside* the broker's container. So [`run`] starts a
//! Pod in the cluster's namespace and network that is a copy of one broker node minus the
//! broker: the broker's image, its environment and its configuration and Secret mounts exactly as
//! the StatefulSet the operator applied has them (so the Erlang cookie is at
//! `$HOME/.erlang.cookie` with mode 0400 and `RABBITMQ_USE_LONGNAME=true` is set, in every
//! environment), no probes, no ports, no data volume, `restartPolicy: Never`, and the given
//! argv as its command. The operator watches the Pod until its container has terminated, takes
//! the exit code and the output from `status.containerStatuses[0].state.terminated`, and deletes
//! the Pod (also on a timeout or an error).
//!
//! Why not `kubectl exec` (`pods/exec`):
//! - the operator needs no `pods/exec` (nor `pods/log`) permission, which is a remote shell in
//!   every broker Pod; it needs `create`, `get`, `list`, `watch` and `delete` on `pods`;
//! - the same path works in devcluster (whose node agent implements termination messages like
//!   the kubelet) and in any real cluster: nothing depends on a container runtime's exec, a
//!   SPDY/WebSocket stream or on the broker container being healthy enough to exec into;
//! - a node that is down or stuck can still be inspected and repaired from outside it.
//!
//! The costs:
//! - the output travels in the kubelet's **termination message**, of which the kubelet keeps the
//!   **last 4096 bytes** ([`MAX_OUTPUT`]). A `sh -c` wrapper (the image needs `sh`) writes the
//!   command's stdout and stderr to `/dev/termination-log` ([`TERMINATION_LOG`]); output longer
//!   than 4000 bytes is written gzipped and base64-encoded behind [`GZIP_PREFIX`] when the image
//!   has `gzip` and `base64` (RabbitMQ's and EMQX's do), which [`output_of`] decodes: about
//!   20-40 KB of CLI text fit (`rabbitmqctl cluster_status --formatter json` of three nodes is
//!   ~5 KB). [`CommandOutput::truncated`] says when the output was cut all the same; commands
//!   should still print little (`-q`, `--formatter json`, `eval` of a small term).
//!   `terminationMessagePolicy: FallbackToLogsOnError` reports a wrapper that cannot even start;
//! - each command is a Pod start: 1.0-1.9 s measured in devcluster for `cluster_status`
//!   (schedule, start, the CLI's Erlang VM, delete), more where images are pulled, instead of
//!   the 0.6-0.8 s of the CLI itself.
//!
//! A command Pod is named `<cluster>-cmd-<5 random characters>`, labelled
//! `app.kubernetes.io/{managed-by=mooring,instance=<cluster>,component=command}`, owned by the
//! BrokerCluster (deleting the cluster deletes a leftover), and has `activeDeadlineSeconds` of
//! the timeout (a real kubelet stops it even if the operator dies before deleting it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Container, ContainerStateTerminated, PersistentVolumeClaimVolumeSource, Pod, PodSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, ResourceExt};
use mooring_crds::BrokerCluster;
use rand::distr::{Alphanumeric, SampleString};
use tracing::{debug, info, warn};

use crate::resources::{self, BuildError, ChildNames, MANAGED_BY};

/// The `app.kubernetes.io/component` of command Pods.
pub const COMPONENT_COMMAND: &str = "command";
/// The command container's name.
pub const CONTAINER: &str = "command";
/// Where the command's output goes (the container's `terminationMessagePath`).
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// The most output the kubelet keeps (its last bytes): `MaxContainerTerminationMessageLength`.
pub const MAX_OUTPUT: usize = 4096;
/// The volume of the broker's data, never mounted by a command Pod.
const DATA_VOLUME: &str = "data";
/// The prefix of output the wrapper compressed: gzip, then base64 (one line).
pub const GZIP_PREFIX: &str = "mooring-gzip-base64:";
/// The most decompressed output accepted (a guard against a gzip bomb).
const MAX_DECOMPRESSED: u64 = 1 << 20;
/// `sh -c` script: runs its arguments, stdout and stderr together, and writes the output to the
/// termination message file, compressed ([`GZIP_PREFIX`]) when it is longer than 4000 bytes and
/// the image has `gzip` and `base64`; exits with the command's exit code.
const WRAPPER: &str = r#"out=$("$@" 2>&1); rc=$?
if [ ${#out} -gt 4000 ] && command -v gzip >/dev/null 2>&1 && command -v base64 >/dev/null 2>&1; then
  { printf '%s' 'mooring-gzip-base64:'; printf '%s\n' "$out" | gzip -c | base64 | tr -d '\n'; } > /dev/termination-log
else
  printf '%s\n' "$out" > /dev/termination-log
fi
exit $rc"#;
/// The grace period of a command Pod that is deleted while it still runs.
const GRACE_SECONDS: i64 = 5;

/// What a command printed and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    /// The command's exit code.
    pub exit_code: i32,
    /// Its stdout and stderr (the last [`MAX_OUTPUT`] bytes).
    pub output: String,
    /// Whether the output filled the limit, so that its beginning may be missing.
    pub truncated: bool,
}

/// Why a command could not be run (a command that ran and failed is a [`CommandOutput`] with a
/// non-zero exit code).
#[derive(Debug, thiserror::Error)]
pub enum PodCommandError {
    /// The BrokerCluster was not read from the API server.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The cluster's StatefulSet does not exist (yet).
    #[error("StatefulSet {namespace}/{name} does not exist: the cluster has not been reconciled")]
    NoStatefulSet {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The StatefulSet has no Pod template container to copy.
    #[error("StatefulSet {0} has no broker container")]
    NoBrokerContainer(String),
    /// A command needs a broker's data, which is not in a PersistentVolumeClaim.
    #[error("StatefulSet {0} keeps its data in an emptyDir: no claim to mount")]
    NoDataClaim(String),
    /// No command to run.
    #[error("empty command")]
    EmptyCommand,
    /// An API request failed.
    #[error("cannot {action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Watching the Pod failed.
    #[error("cannot watch command pod {pod}: {source}")]
    Watch {
        /// The Pod.
        pod: String,
        /// Why.
        #[source]
        source: kube::runtime::wait::Error,
    },
    /// The container cannot run (its image cannot be pulled or is not runnable here, its
    /// configuration is wrong).
    #[error("command pod {pod} cannot run: {reason}: {message}")]
    NotRunnable {
        /// The Pod.
        pod: String,
        /// The container's waiting reason (`ErrImagePull`, `ImageNotMapped`, ...).
        reason: String,
        /// The waiting message.
        message: String,
    },
    /// The Pod failed without its container terminating (for example `DeadlineExceeded`).
    #[error("command pod {pod} failed: {reason}: {message}")]
    PodFailed {
        /// The Pod.
        pod: String,
        /// The Pod's reason.
        reason: String,
        /// The Pod's message.
        message: String,
    },
    /// Somebody else deleted the Pod before it finished.
    #[error("command pod {0} was deleted before it finished")]
    Deleted(String),
    /// The command did not finish in time.
    #[error("command pod {pod} did not finish within {timeout:?} ({state})")]
    Timeout {
        /// The Pod.
        pod: String,
        /// The time limit.
        timeout: Duration,
        /// What the Pod was doing.
        state: String,
    },
}

/// Waiting reasons that do not go away by waiting: the command is reported at once.
const FATAL_REASONS: &[&str] = &[
    "ImageNotMapped",
    "ImageNotInstalled",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
];

/// The labels of a command Pod of `cluster`.
pub fn command_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/managed-by".into(), MANAGED_BY.into()),
        ("app.kubernetes.io/instance".into(), cluster.into()),
        (
            "app.kubernetes.io/component".into(),
            COMPONENT_COMMAND.into(),
        ),
    ])
}

/// A fresh command Pod name: `<cluster>-cmd-<5 random lowercase characters or digits>`.
pub fn pod_name(cluster: &str) -> String {
    let suffix = Alphanumeric
        .sample_string(&mut rand::rng(), 5)
        .to_ascii_lowercase();
    format!("{cluster}-cmd-{suffix}")
}

/// Escapes `$` so that the kubelet's `$(VAR)` expansion leaves an argument as it is (`$$` is
/// read as `$`).
fn literal(arg: &str) -> String {
    arg.replace('$', "$$")
}

/// A broker Pod's data volume, for a command that repairs that node's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataAccess {
    /// The PersistentVolumeClaim holding the data (`data-<pod>`).
    pub claim: String,
    /// The node the broker Pod is bound to: a ReadWriteOnce volume can only be mounted there.
    pub node_name: Option<String>,
}

/// The command Pod (pure): a copy of the broker container of `sts` (image, pull policy,
/// environment, security context, working directory, and every volume mount but the data
/// volume, with those volumes) running `argv` once. `deadline` becomes `activeDeadlineSeconds`.
/// With `data`, the broker's data mount is kept and backed by that claim, on that node.
pub fn command_pod(
    bc: &BrokerCluster,
    sts: &StatefulSet,
    name: &str,
    argv: &[String],
    deadline: Duration,
    data: Option<&DataAccess>,
) -> Result<Pod, PodCommandError> {
    if argv.is_empty() {
        return Err(PodCommandError::EmptyCommand);
    }
    let names = ChildNames::of(bc)?;
    let owner = resources::owner_reference(bc)?;
    let template = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .ok_or_else(|| PodCommandError::NoBrokerContainer(sts.name_any()))?;
    let broker_name = bc.spec.broker.kind.as_str();
    let broker = template
        .containers
        .iter()
        .find(|c| c.name == broker_name)
        .or_else(|| template.containers.first())
        .ok_or_else(|| PodCommandError::NoBrokerContainer(sts.name_any()))?;

    let data_volume = data.map(|d| Volume {
        name: DATA_VOLUME.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: d.claim.clone(),
            read_only: Some(false),
        }),
        ..Volume::default()
    });
    let volumes: BTreeMap<&str, _> = template
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.name != DATA_VOLUME)
        .chain(data_volume.iter())
        .map(|v| (v.name.as_str(), v))
        .collect();
    // Mounts of volumes the template defines (claim templates, the data volume, are left out).
    let mounts: Vec<_> = broker
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| volumes.contains_key(m.name.as_str()))
        .cloned()
        .collect();
    let used: BTreeSet<&str> = mounts.iter().map(|m| m.name.as_str()).collect();
    let volumes: Vec<_> = volumes
        .into_iter()
        .filter(|(n, _)| used.contains(n))
        .map(|(_, v)| v.clone())
        .collect();

    let mut command = vec![
        "sh".to_string(),
        "-c".to_string(),
        literal(WRAPPER),
        "mooring-command".to_string(),
    ];
    command.extend(argv.iter().map(|a| literal(a)));
    let container = Container {
        name: CONTAINER.into(),
        image: broker.image.clone(),
        image_pull_policy: broker.image_pull_policy.clone(),
        command: Some(command),
        env: broker.env.clone(),
        env_from: broker.env_from.clone(),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        security_context: broker.security_context.clone(),
        working_dir: broker.working_dir.clone(),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let deadline_secs = i64::try_from(deadline.as_secs().max(1)).unwrap_or(i64::MAX);
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(names.cluster.namespace.clone()),
            labels: Some(command_labels(&names.cluster.name)),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: (!volumes.is_empty()).then_some(volumes),
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(deadline_secs),
            termination_grace_period_seconds: Some(GRACE_SECONDS),
            // A DNS name under the headless Service's domain: Erlang long node names of the
            // CLI need a fully qualified host name.
            subdomain: Some(names.cluster.headless_service.clone()),
            security_context: template.security_context.clone(),
            service_account_name: template.service_account_name.clone(),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            node_selector: template.node_selector.clone(),
            node_name: data.and_then(|d| d.node_name.clone()),
            tolerations: template.tolerations.clone(),
            image_pull_secrets: template.image_pull_secrets.clone(),
            ..PodSpec::default()
        }),
        status: None,
    })
}

/// How far a command Pod got (pure).
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// Still scheduling, starting or running.
    Running,
    /// Its container terminated.
    Terminated(ContainerStateTerminated),
    /// It cannot run: the container's waiting reason and message.
    NotRunnable(String, String),
    /// The Pod failed without a terminated container: its reason and message.
    Failed(String, String),
    /// It is gone.
    Deleted,
}

/// Where a command Pod is (pure).
pub fn progress(pod: Option<&Pod>) -> Progress {
    let Some(pod) = pod else {
        return Progress::Deleted;
    };
    let Some(status) = pod.status.as_ref() else {
        return Progress::Running;
    };
    let state = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER)
        .and_then(|c| c.state.as_ref());
    if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        return Progress::Terminated(t.clone());
    }
    if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
        let reason = w.reason.clone().unwrap_or_default();
        if FATAL_REASONS.contains(&reason.as_str()) {
            return Progress::NotRunnable(reason, w.message.clone().unwrap_or_default());
        }
    }
    if status.phase.as_deref() == Some("Failed") {
        return Progress::Failed(
            status.reason.clone().unwrap_or_else(|| "Failed".into()),
            status.message.clone().unwrap_or_default(),
        );
    }
    Progress::Running
}

/// What a Pod that has not finished is doing, for a timeout's message (pure).
pub fn describe(pod: Option<&Pod>) -> String {
    let Some(status) = pod.and_then(|p| p.status.as_ref()) else {
        return "no status yet".into();
    };
    let phase = status.phase.as_deref().unwrap_or("Unknown");
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .map(|w| {
            format!(
                "waiting: {}: {}",
                w.reason.as_deref().unwrap_or_default(),
                w.message.as_deref().unwrap_or_default()
            )
        })
        .next();
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            format!(
                "not scheduled: {}",
                c.message.as_deref().unwrap_or_default()
            )
        });
    match waiting.or(unscheduled) {
        Some(detail) => format!("phase {phase}, {detail}"),
        None => format!("phase {phase}"),
    }
}

/// Decodes output the wrapper compressed ([`GZIP_PREFIX`]); `None` when `message` is not such
/// output or does not decode (cut by the limit).
pub fn decompress(message: &str) -> Option<String> {
    use base64::Engine as _;
    use std::io::Read as _;
    let encoded = message.trim_end().strip_prefix(GZIP_PREFIX)?;
    let gz = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let mut out = String::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .take(MAX_DECOMPRESSED)
        .read_to_string(&mut out)
        .ok()?;
    Some(out)
}

/// The result of a terminated command container (pure).
pub fn output_of(t: &ContainerStateTerminated) -> CommandOutput {
    let message = t.message.clone().unwrap_or_default();
    let full = message.len() >= MAX_OUTPUT;
    match decompress(&message) {
        Some(output) => CommandOutput {
            exit_code: t.exit_code,
            output,
            truncated: false,
        },
        None => CommandOutput {
            exit_code: t.exit_code,
            output: message,
            truncated: full,
        },
    }
}

/// Where the data of broker Pod `pod` lives: its claim from the StatefulSet's `data` claim
/// template, and the node it runs on.
async fn data_access(
    api: &Api<Pod>,
    sts: &StatefulSet,
    pod: &str,
) -> Result<DataAccess, PodCommandError> {
    let has_claim = sts
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .is_some_and(|t| {
            t.iter()
                .any(|c| c.metadata.name.as_deref() == Some(DATA_VOLUME))
        });
    if !has_claim {
        return Err(PodCommandError::NoDataClaim(sts.name_any()));
    }
    let broker = api
        .get_opt(pod)
        .await
        .map_err(|source| PodCommandError::Api {
            action: format!("read broker pod {pod}"),
            source,
        })?;
    Ok(DataAccess {
        claim: format!("{DATA_VOLUME}-{pod}"),
        node_name: broker.and_then(|p| p.spec).and_then(|s| s.node_name),
    })
}

/// Deletes the Pod in the background when dropped (a cancelled [`run`] leaves nothing behind).
struct Cleanup {
    api: Api<Pod>,
    name: String,
    armed: bool,
}

impl Cleanup {
    async fn delete(mut self) {
        self.armed = false;
        delete(&self.api, &self.name).await;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (api, name) = (self.api.clone(), self.name.clone());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { delete(&api, &name).await });
        }
    }
}

async fn delete(api: &Api<Pod>, name: &str) {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => debug!(pod = name, "deleted the command pod"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => warn!(pod = name, error = %e, "cannot delete a command pod"),
    }
}

/// Runs `argv` in a command Pod of `bc` (see the module documentation) and waits at most
/// `timeout` for it to finish. The Pod is deleted afterwards in every case.
pub async fn run(
    client: &Client,
    bc: &BrokerCluster,
    argv: &[String],
    timeout: Duration,
) -> Result<CommandOutput, PodCommandError> {
    run_with(client, bc, argv, timeout, None).await
}

/// Like [`run`], with the data volume of the broker Pod `data_of` mounted at the broker's data
/// path (for commands that repair that node's data). The cluster must keep its data in
/// PersistentVolumeClaims (`persistence.enabled`).
pub async fn run_with(
    client: &Client,
    bc: &BrokerCluster,
    argv: &[String],
    timeout: Duration,
    data_of: Option<&str>,
) -> Result<CommandOutput, PodCommandError> {
    let names = ChildNames::of(bc)?;
    let ns = names.cluster.namespace.as_str();
    let sts = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get_opt(&names.stateful_set)
        .await
        .map_err(|source| PodCommandError::Api {
            action: format!("read StatefulSet {ns}/{}", names.stateful_set),
            source,
        })?
        .ok_or_else(|| PodCommandError::NoStatefulSet {
            namespace: ns.to_string(),
            name: names.stateful_set.clone(),
        })?;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let data = match data_of {
        Some(pod) => Some(data_access(&api, &sts, pod).await?),
        None => None,
    };
    let name = pod_name(&names.cluster.name);
    let pod = command_pod(bc, &sts, &name, argv, timeout, data.as_ref())?;
    let started = tokio::time::Instant::now();
    api.create(&PostParams::default(), &pod)
        .await
        .map_err(|source| PodCommandError::Api {
            action: format!("create command pod {ns}/{name}"),
            source,
        })?;
    let cleanup = Cleanup {
        api: api.clone(),
        name: name.clone(),
        armed: true,
    };
    debug!(pod = %name, ?argv, "command pod created");

    let finished = tokio::time::timeout(
        timeout,
        await_condition(api.clone(), &name, |p: Option<&Pod>| {
            progress(p) != Progress::Running
        }),
    )
    .await;
    let result = match finished {
        Ok(Ok(pod)) => match progress(pod.as_ref()) {
            Progress::Terminated(t) => Ok(output_of(&t)),
            Progress::NotRunnable(reason, message) => Err(PodCommandError::NotRunnable {
                pod: name.clone(),
                reason,
                message,
            }),
            Progress::Failed(reason, message) => Err(PodCommandError::PodFailed {
                pod: name.clone(),
                reason,
                message,
            }),
            Progress::Deleted | Progress::Running => Err(PodCommandError::Deleted(name.clone())),
        },
        Ok(Err(source)) => Err(PodCommandError::Watch {
            pod: name.clone(),
            source,
        }),
        Err(_) => {
            let last = api.get_opt(&name).await.ok().flatten();
            Err(PodCommandError::Timeout {
                pod: name.clone(),
                timeout,
                state: describe(last.as_ref()),
            })
        }
    };
    cleanup.delete().await;
    match &result {
        Ok(out) => info!(
            pod = %name,
            exit_code = out.exit_code,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "command finished"
        ),
        Err(e) => warn!(pod = %name, error = %e, "command failed"),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker_config::{render, Credentials, RenderInput};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus,
    };
    use mooring_crds::BrokerClusterSpec;

    fn cluster(spec: serde_json::Value) -> BrokerCluster {
        let spec: BrokerClusterSpec = serde_json::from_value(spec).unwrap();
        let mut bc = BrokerCluster::new("bus", spec);
        bc.metadata.namespace = Some("iot".into());
        bc.metadata.uid = Some("uid-1".into());
        bc
    }

    fn stateful_set(bc: &BrokerCluster) -> StatefulSet {
        let names = ChildNames::of(bc).unwrap();
        let creds = Credentials {
            erlang_cookie: "COOKIE".into(),
            admin_username: "admin".into(),
            admin_password: "pw".into(),
        };
        let users = BTreeMap::new();
        let input = RenderInput {
            spec: &bc.spec,
            names: &names.cluster,
            credentials: &creds,
            users: &users,
            secret_name: &names.secret,
        };
        let layout = render(&input).unwrap();
        resources::build(bc, &layout, &BTreeMap::new())
            .unwrap()
            .stateful_set
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_rabbitmq_command_pod_is_the_broker_container_minus_the_broker() {
        let bc = cluster(serde_json::json!({
            "broker": {"kind": "rabbitmq", "version": "3.10.8"},
            "replicas": 3,
            "persistence": {"enabled": true},
            "resources": {"limits": {"memory": "2Gi"}},
        }));
        let sts = stateful_set(&bc);
        let cmd = argv(&[
            "rabbitmqctl",
            "-l",
            "-n",
            "rabbit@bus-0.bus-headless.iot.svc.cluster.local",
            "cluster_status",
            "--formatter",
            "json",
        ]);
        let pod = command_pod(
            &bc,
            &sts,
            "bus-cmd-abcde",
            &cmd,
            Duration::from_secs(60),
            None,
        )
        .unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("bus-cmd-abcde"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("iot"));
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels["app.kubernetes.io/component"], "command");
        assert_eq!(labels["app.kubernetes.io/instance"], "bus");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "mooring");
        let owner = &pod.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("BrokerCluster", "bus")
        );

        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.active_deadline_seconds, Some(60));
        assert_eq!(spec.subdomain.as_deref(), Some("bus-headless"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        let c = &spec.containers[0];
        let broker = &sts
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert_eq!(c.name, CONTAINER);
        assert_eq!(c.image, broker.image);
        assert_eq!(c.image.as_deref(), Some("rabbitmq:3.10.8-management"));
        assert_eq!(c.env, broker.env);
        let env: BTreeMap<_, _> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["RABBITMQ_USE_LONGNAME"], "true");
        assert_eq!(env["HOME"], crate::broker_config::rabbitmq::SECRET_DIR);
        let wrapper = literal(WRAPPER);
        let mut expected = vec!["sh", "-c", &wrapper, "mooring-command"];
        expected.extend(cmd.iter().map(String::as_str));
        assert_eq!(c.command.clone().unwrap(), expected);
        assert_eq!(c.args, None);
        assert!(c.readiness_probe.is_none() && c.liveness_probe.is_none());
        assert!(c.startup_probe.is_none() && c.ports.is_none() && c.resources.is_none());
        assert_eq!(c.termination_message_path.as_deref(), Some(TERMINATION_LOG));
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );

        // The Secret exactly as the broker mounts it (0400 cookie at $HOME); no data volume.
        let mounts = c.volume_mounts.clone().unwrap();
        let secret_mount = mounts
            .iter()
            .find(|m| m.mount_path == crate::broker_config::rabbitmq::SECRET_DIR)
            .expect("the Secret mount");
        assert_eq!(secret_mount.read_only, Some(true));
        assert!(mounts.iter().all(|m| m.name != DATA_VOLUME));
        let volumes = spec.volumes.unwrap();
        let secret = volumes
            .iter()
            .find(|v| v.name == secret_mount.name)
            .and_then(|v| v.secret.clone())
            .expect("the Secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("bus-credentials"));
        assert_eq!(secret.default_mode, Some(0o400));
        assert!(volumes.iter().all(|v| v.name != DATA_VOLUME));
        assert_eq!(volumes.len(), mounts.len());
        assert!(spec.security_context.is_none(), "no fsGroup for RabbitMQ");
    }

    #[test]
    fn an_emqx_command_pod_keeps_the_fs_group_and_a_data_empty_dir_is_left_out() {
        let bc = cluster(serde_json::json!({"broker": {"kind": "emqx"}}));
        let sts = stateful_set(&bc);
        let pod = command_pod(
            &bc,
            &sts,
            "bus-cmd-x",
            &argv(&["emqx", "ctl", "cluster", "status"]),
            Duration::from_millis(10),
            None,
        )
        .unwrap();
        let spec = pod.spec.unwrap();
        assert!(spec.security_context.and_then(|s| s.fs_group).is_some());
        assert_eq!(spec.active_deadline_seconds, Some(1));
        assert!(spec.volumes.unwrap().iter().all(|v| v.name != DATA_VOLUME));
    }

    #[test]
    fn a_data_command_mounts_the_broker_pods_claim_on_its_node() {
        let bc = cluster(serde_json::json!({"broker": {"kind": "rabbitmq"}}));
        let sts = stateful_set(&bc);
        let data = DataAccess {
            claim: "data-bus-2".into(),
            node_name: Some("node-a".into()),
        };
        let pod = command_pod(
            &bc,
            &sts,
            "p",
            &argv(&["ls", "/var/lib/rabbitmq/mnesia"]),
            Duration::from_secs(5),
            Some(&data),
        )
        .unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-a"));
        let volume = spec
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == DATA_VOLUME)
            .expect("the data volume");
        assert_eq!(
            volume.persistent_volume_claim.unwrap().claim_name,
            "data-bus-2"
        );
        let mount = spec.containers[0]
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .find(|m| m.name == DATA_VOLUME)
            .expect("the data mount");
        assert_eq!(mount.mount_path, "/var/lib/rabbitmq/mnesia");
    }

    #[test]
    fn arguments_are_protected_from_variable_expansion_and_must_exist() {
        let bc = cluster(serde_json::json!({"broker": {"kind": "rabbitmq"}}));
        let sts = stateful_set(&bc);
        let pod = command_pod(
            &bc,
            &sts,
            "p",
            &argv(&["echo", "$(HOME)", "a$b"]),
            Duration::from_secs(5),
            None,
        )
        .unwrap();
        let command = pod.spec.unwrap().containers[0].command.clone().unwrap();
        assert_eq!(&command[4..], ["echo", "$$(HOME)", "a$$b"]);
        assert!(matches!(
            command_pod(&bc, &sts, "p", &[], Duration::from_secs(5), None),
            Err(PodCommandError::EmptyCommand)
        ));
        let mut unread = bc.clone();
        unread.metadata.uid = None;
        assert!(matches!(
            command_pod(
                &unread,
                &sts,
                "p",
                &argv(&["true"]),
                Duration::from_secs(5),
                None
            ),
            Err(PodCommandError::Build(_))
        ));
    }

    /// Runs the wrapper here (`sh`, `gzip`, `base64` of the host) with the termination message
    /// file moved to a temporary file: its exit code and the message it leaves.
    fn wrapped(script: &str) -> (i32, ContainerStateTerminated) {
        let file = std::env::temp_dir().join(format!(
            "mooring-wrapper-{}-{}",
            std::process::id(),
            pod_name("t")
        ));
        let wrapper = WRAPPER.replace(TERMINATION_LOG, &file.display().to_string());
        let status = std::process::Command::new("sh")
            .args(["-c", &wrapper, "mooring-command", "sh", "-c", script])
            .status()
            .unwrap();
        let message = std::fs::read(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        // The kubelet keeps the last 4096 bytes.
        let kept = &message[message.len().saturating_sub(MAX_OUTPUT)..];
        let code = status.code().unwrap();
        let t = ContainerStateTerminated {
            exit_code: code,
            message: Some(String::from_utf8_lossy(kept).into_owned()),
            ..ContainerStateTerminated::default()
        };
        (code, t)
    }

    #[test]
    fn the_wrapper_keeps_the_exit_code_and_compresses_long_output() {
        let (code, t) = wrapped("echo out; echo err >&2; exit 3");
        assert_eq!(code, 3);
        let out = output_of(&t);
        assert_eq!((out.exit_code, out.output.as_str()), (3, "out\nerr\n"));
        assert!(!out.truncated);

        // ~9 KB of JSON-like text: compressed, decoded whole.
        let (code, t) = wrapped(
            r#"i=0; while [ $i -lt 200 ]; do echo "{\"node\":\"rabbit@bus-$i\",\"state\":\"running\"}"; i=$((i+1)); done"#,
        );
        assert_eq!(code, 0);
        let raw = t.message.clone().unwrap();
        assert!(
            raw.starts_with(GZIP_PREFIX) && raw.len() < MAX_OUTPUT,
            "{}",
            raw.len()
        );
        let out = output_of(&t);
        assert_eq!(out.output.lines().count(), 200);
        assert!(out.output.len() > 7000 && !out.truncated);
        assert!(out
            .output
            .ends_with("{\"node\":\"rabbit@bus-199\",\"state\":\"running\"}\n"));
        assert!(WRAPPER.contains("-gt 4000") && WRAPPER.contains(GZIP_PREFIX));

        // Not compressible below the limit: the end is kept and the output marked truncated.
        let (_, t) = wrapped("head -c 30000 /dev/urandom | base64");
        let out = output_of(&t);
        assert!(out.truncated && out.output.len() == MAX_OUTPUT);
        assert_eq!(decompress("plain output"), None);
    }

    #[test]
    fn names_are_unique_and_valid() {
        let a = pod_name("bus");
        assert!(
            a.starts_with("bus-cmd-") && a.len() == "bus-cmd-".len() + 5,
            "{a}"
        );
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_ne!(a, pod_name("bus"));
    }

    fn with_state(phase: &str, state: ContainerState) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: CONTAINER.into(),
                    state: Some(state),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn waiting(reason: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some("why".into()),
            }),
            ..ContainerState::default()
        }
    }

    #[test]
    fn progress_reads_the_termination_state_and_fatal_waiting_reasons() {
        assert_eq!(progress(None), Progress::Deleted);
        assert_eq!(progress(Some(&Pod::default())), Progress::Running);
        assert_eq!(
            progress(Some(&with_state("Pending", waiting("ContainerCreating")))),
            Progress::Running
        );
        assert_eq!(
            progress(Some(&with_state("Pending", waiting("ImagePullBackOff")))),
            Progress::Running
        );
        assert_eq!(
            progress(Some(&with_state("Pending", waiting("ImageNotMapped")))),
            Progress::NotRunnable("ImageNotMapped".into(), "why".into())
        );
        let t = ContainerStateTerminated {
            exit_code: 3,
            message: Some("Error: unable to perform an operation on node".into()),
            ..ContainerStateTerminated::default()
        };
        let done = with_state(
            "Failed",
            ContainerState {
                terminated: Some(t.clone()),
                ..ContainerState::default()
            },
        );
        assert_eq!(progress(Some(&done)), Progress::Terminated(t.clone()));
        assert_eq!(
            output_of(&t),
            CommandOutput {
                exit_code: 3,
                output: "Error: unable to perform an operation on node".into(),
                truncated: false,
            }
        );
        let full = ContainerStateTerminated {
            message: Some("x".repeat(MAX_OUTPUT)),
            ..ContainerStateTerminated::default()
        };
        assert!(output_of(&full).truncated);
        let mut deadline = with_state("Failed", waiting("ContainerCreating"));
        if let Some(s) = deadline.status.as_mut() {
            s.reason = Some("DeadlineExceeded".into());
            s.message =
                Some("Pod was active on the node longer than the specified deadline".into());
        }
        assert!(
            matches!(progress(Some(&deadline)), Progress::Failed(r, _) if r == "DeadlineExceeded")
        );
        assert_eq!(
            describe(Some(&with_state("Pending", waiting("ImagePullBackOff")))),
            "phase Pending, waiting: ImagePullBackOff: why"
        );
        assert_eq!(describe(None), "no status yet");
    }
}
