//! Pod status as a kubelet reports it, built from what the agent knows about the Pod's
//! containers (pure).
//!
//! - `phase` follows the kubelet's `getPhase`: `Pending` while an init container has not
//!   succeeded or a container has never started, `Running` once every container has started and
//!   one runs (or will restart), `Succeeded`/`Failed` when every container terminated for good.
//! - Conditions, in the kubelet's order: `PodReadyToStartContainers` (the sandbox exists),
//!   `Initialized`, `Ready`, `ContainersReady`, `PodScheduled` (the scheduler's, kept). A
//!   condition's `lastTransitionTime` moves only when its status changes.
//! - `containerStatuses` and `initContainerStatuses` in spec order, with `state`, `lastState`,
//!   `restartCount`, `ready`, `started`.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The waiting reason before a container's first start.
pub const REASON_CREATING: &str = "ContainerCreating";
/// The waiting reason while a container waits for its restart back-off.
pub const REASON_BACKOFF: &str = "CrashLoopBackOff";
/// The waiting reason when a container's environment cannot be built.
pub const REASON_CONFIG_ERROR: &str = "CreateContainerConfigError";
/// The waiting reason when a container's process cannot be started.
pub const REASON_RUN_ERROR: &str = "RunContainerError";
/// The waiting reason of an init container that has not run yet.
pub const REASON_INITIALIZING: &str = "PodInitializing";

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Termination {
    /// The exit code (128 + signal when killed by a signal).
    pub exit_code: i32,
    /// The signal that killed the process, if one did.
    pub signal: Option<i32>,
    /// `Completed` (exit 0) or `Error`.
    pub reason: String,
    /// Extra detail (for example a failed liveness probe).
    pub message: Option<String>,
    /// When the process started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Timestamp,
    /// The container's id while it ran.
    pub container_id: Option<String>,
}

impl Termination {
    /// A termination with the kubelet's reason for `exit_code`.
    pub fn new(exit_code: i32, signal: Option<i32>, started_at: Option<Timestamp>) -> Self {
        Self {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.to_string(),
            message: None,
            started_at,
            finished_at: Timestamp::now(),
            container_id: None,
        }
    }
}

/// A container's current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Not running: why.
    Waiting {
        /// For example [`REASON_CREATING`].
        reason: String,
        /// For people.
        message: Option<String>,
    },
    /// Running since `started_at`.
    Running {
        /// When the process started.
        started_at: Timestamp,
    },
    /// Ended and not restarted (yet).
    Terminated(Termination),
}

impl State {
    /// A waiting state.
    pub fn waiting(reason: &str, message: Option<String>) -> Self {
        State::Waiting {
            reason: reason.to_string(),
            message,
        }
    }
}

/// What the agent knows about one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRuntime {
    /// The container's name.
    pub name: String,
    /// Its image, as in the spec.
    pub image: String,
    /// Its state.
    pub state: State,
    /// How the previous run ended.
    pub last_termination: Option<Termination>,
    /// How many times it was restarted.
    pub restart_count: i32,
    /// Whether its readiness probe passes (and it runs).
    pub ready: bool,
    /// Whether its startup probe passed (and it runs).
    pub started: bool,
    /// Its id while it runs (`devcluster://<pid of the container's init>`).
    pub container_id: Option<String>,
}

impl ContainerRuntime {
    /// A container that has not started yet.
    pub fn waiting(name: &str, image: &str, reason: &str, message: Option<String>) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            state: State::waiting(reason, message),
            last_termination: None,
            restart_count: 0,
            ready: false,
            started: false,
            container_id: None,
        }
    }

    fn succeeded(&self) -> bool {
        matches!(&self.state, State::Terminated(t) if t.exit_code == 0)
    }
}

/// What the agent knows about one Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRuntime {
    /// The Pod's IP once its sandbox exists.
    pub pod_ip: Option<String>,
    /// The node's IP.
    pub host_ip: String,
    /// When the agent accepted the Pod.
    pub start_time: Timestamp,
    /// Whether the network namespace and volumes are set up.
    pub sandbox_ready: bool,
    /// Init containers, in spec order.
    pub init_containers: Vec<ContainerRuntime>,
    /// Containers, in spec order.
    pub containers: Vec<ContainerRuntime>,
}

/// The kubelet's phase for these containers under `restart_policy`.
pub fn phase(
    restart_policy: &str,
    init: &[ContainerRuntime],
    containers: &[ContainerRuntime],
) -> &'static str {
    let mut pending_init = 0;
    let mut failed_init = 0;
    for c in init {
        match &c.state {
            State::Terminated(t) if t.exit_code == 0 => {}
            State::Terminated(_) => failed_init += 1,
            State::Waiting { .. }
                if c.last_termination
                    .as_ref()
                    .is_some_and(|t| t.exit_code != 0) =>
            {
                failed_init += 1
            }
            _ => pending_init += 1,
        }
    }
    if failed_init > 0 && restart_policy == "Never" {
        return "Failed";
    }
    if pending_init > 0 || failed_init > 0 {
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in containers {
        match &c.state {
            State::Running { .. } => running += 1,
            State::Terminated(t) => {
                stopped += 1;
                if t.exit_code == 0 {
                    succeeded += 1;
                }
            }
            State::Waiting { .. } => {
                if c.last_termination.is_some() {
                    stopped += 1;
                } else {
                    waiting += 1;
                }
            }
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match restart_policy {
            "Always" => "Running",
            "OnFailure" if stopped == succeeded => "Succeeded",
            "OnFailure" => "Running",
            _ if stopped == succeeded => "Succeeded",
            _ => "Failed",
        }
    } else {
        "Pending"
    }
}

fn time(t: Timestamp) -> Time {
    Time(t)
}

fn container_state(state: &State) -> ContainerState {
    match state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(time(*started_at)),
            }),
            ..Default::default()
        },
        State::Terminated(t) => ContainerState {
            terminated: Some(terminated(t)),
            ..Default::default()
        },
    }
}

fn terminated(t: &Termination) -> ContainerStateTerminated {
    ContainerStateTerminated {
        container_id: t.container_id.clone(),
        exit_code: t.exit_code,
        finished_at: Some(time(t.finished_at)),
        message: t.message.clone(),
        reason: Some(t.reason.clone()),
        signal: t.signal,
        started_at: t.started_at.map(time),
    }
}

fn container_status(c: &ContainerRuntime) -> ContainerStatus {
    let running = matches!(c.state, State::Running { .. });
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: String::new(),
        container_id: if running {
            c.container_id.clone()
        } else {
            None
        },
        state: Some(container_state(&c.state)),
        last_state: Some(
            c.last_termination
                .as_ref()
                .map(|t| ContainerState {
                    terminated: Some(terminated(t)),
                    ..Default::default()
                })
                .unwrap_or_default(),
        ),
        ready: c.ready && running,
        restart_count: c.restart_count,
        started: Some(c.started && running),
        ..Default::default()
    }
}

/// The Pod's status. `previous` is the status last written (or the Pod's own), whose
/// conditions' transition times are kept when their status does not change; `now` stamps the
/// ones that change.
pub fn pod_status(
    pod: &Pod,
    rt: &PodRuntime,
    previous: Option<&PodStatus>,
    now: Timestamp,
) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let restart_policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let phase = phase(restart_policy, &rt.init_containers, &rt.containers);
    let generation = pod.metadata.generation;
    let previous_conditions = previous
        .and_then(|p| p.conditions.clone())
        .or_else(|| pod.status.as_ref().and_then(|s| s.conditions.clone()))
        .unwrap_or_default();
    let condition = |type_: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
        let status = if ok { "True" } else { "False" };
        let last = previous_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone());
        PodCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.map(str::to_string),
            message,
            last_transition_time: Some(last.unwrap_or_else(|| time(now))),
            last_probe_time: None,
            observed_generation: generation,
        }
    };

    let terminal = phase == "Succeeded" || phase == "Failed";
    let incomplete_init: Vec<&str> = rt
        .init_containers
        .iter()
        .filter(|c| !c.succeeded())
        .map(|c| c.name.as_str())
        .collect();
    let initialized = incomplete_init.is_empty() || terminal && phase == "Succeeded";
    let unready: Vec<&str> = rt
        .containers
        .iter()
        .filter(|c| !(c.ready && matches!(c.state, State::Running { .. })))
        .map(|c| c.name.as_str())
        .collect();
    let containers_ready = unready.is_empty();
    let (ready_reason, ready_message) = if terminal {
        (Some("PodCompleted"), None)
    } else if !containers_ready {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    } else {
        (None, None)
    };
    let ready = containers_ready && !terminal;

    let scheduled = previous_conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .cloned()
        .unwrap_or_else(|| condition("PodScheduled", true, None, None));

    let conditions = vec![
        condition("PodReadyToStartContainers", rt.sandbox_ready, None, None),
        if initialized {
            condition(
                "Initialized",
                true,
                terminal
                    .then_some("PodCompleted")
                    .filter(|_| !rt.init_containers.is_empty()),
                None,
            )
        } else {
            condition(
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(format!(
                    "containers with incomplete status: [{}]",
                    incomplete_init.join(" ")
                )),
            )
        },
        condition("Ready", ready, ready_reason, ready_message.clone()),
        condition("ContainersReady", ready, ready_reason, ready_message),
        scheduled,
    ];

    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(rt.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: rt.host_ip.clone(),
        }]),
        pod_ip: rt.pod_ip.clone(),
        pod_ips: rt.pod_ip.as_ref().map(|ip| vec![PodIP { ip: ip.clone() }]),
        start_time: Some(time(rt.start_time)),
        init_container_statuses: (!rt.init_containers.is_empty())
            .then(|| rt.init_containers.iter().map(container_status).collect()),
        container_statuses: Some(rt.containers.iter().map(container_status).collect()),
        qos_class: pod.status.as_ref().and_then(|s| s.qos_class.clone()),
        observed_generation: generation,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::api::ObjectMeta;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn running(name: &str, ready: bool) -> ContainerRuntime {
        ContainerRuntime {
            state: State::Running {
                started_at: ts("2026-01-01T00:00:00Z"),
            },
            ready,
            started: true,
            container_id: Some("devcluster://42".into()),
            ..ContainerRuntime::waiting(name, "rabbitmq:3.13", REASON_CREATING, None)
        }
    }

    fn exited(name: &str, code: i32) -> ContainerRuntime {
        ContainerRuntime {
            state: State::Terminated(Termination::new(code, None, None)),
            ..ContainerRuntime::waiting(name, "img", REASON_CREATING, None)
        }
    }

    fn backing_off(name: &str) -> ContainerRuntime {
        ContainerRuntime {
            state: State::waiting(REASON_BACKOFF, Some("back-off 10s".into())),
            last_termination: Some(Termination::new(1, None, None)),
            restart_count: 1,
            ..ContainerRuntime::waiting(name, "img", REASON_CREATING, None)
        }
    }

    fn creating(name: &str) -> ContainerRuntime {
        ContainerRuntime::waiting(name, "img", REASON_CREATING, None)
    }

    #[test]
    fn phase_follows_the_kubelet() {
        assert_eq!(phase("Always", &[], &[creating("a")]), "Pending");
        assert_eq!(phase("Always", &[], &[running("a", false)]), "Running");
        assert_eq!(
            phase("Always", &[], &[running("a", true), creating("b")]),
            "Pending"
        );
        assert_eq!(phase("Always", &[], &[backing_off("a")]), "Running");
        assert_eq!(phase("Always", &[], &[exited("a", 0)]), "Running");
        assert_eq!(phase("OnFailure", &[], &[exited("a", 0)]), "Succeeded");
        assert_eq!(phase("OnFailure", &[], &[exited("a", 1)]), "Running");
        assert_eq!(phase("Never", &[], &[exited("a", 1)]), "Failed");
        assert_eq!(
            phase("Never", &[], &[exited("a", 0), exited("b", 0)]),
            "Succeeded"
        );
        assert_eq!(
            phase("Never", &[], &[exited("a", 0), running("b", true)]),
            "Running"
        );
        assert_eq!(
            phase("Always", &[running("init", false)], &[creating("a")]),
            "Pending"
        );
        assert_eq!(
            phase("Never", &[exited("init", 2)], &[creating("a")]),
            "Failed"
        );
        assert_eq!(
            phase("Always", &[exited("init", 0)], &[running("a", true)]),
            "Running"
        );
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("bus-0".into()),
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "rabbitmq".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(ts("2025-12-31T00:00:00Z"))),
                    ..Default::default()
                }]),
                qos_class: Some("BestEffort".into()),
                ..Default::default()
            }),
        }
    }

    fn runtime(containers: Vec<ContainerRuntime>) -> PodRuntime {
        PodRuntime {
            pod_ip: Some("10.244.0.5".into()),
            host_ip: "10.244.0.1".into(),
            start_time: ts("2026-01-01T00:00:00Z"),
            sandbox_ready: true,
            init_containers: vec![],
            containers,
        }
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn readiness_drives_ready_and_containers_ready() {
        let now = ts("2026-01-01T00:01:00Z");
        let s = pod_status(
            &pod(),
            &runtime(vec![running("rabbitmq", false)]),
            None,
            now,
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(
            cond(&s, "Ready").message.as_deref(),
            Some("containers with unready status: [rabbitmq]")
        );
        assert_eq!(cond(&s, "ContainersReady").status, "False");
        assert_eq!(cond(&s, "Initialized").status, "True");
        assert_eq!(cond(&s, "PodReadyToStartContainers").status, "True");
        // The scheduler's condition is kept as it was.
        assert_eq!(
            cond(&s, "PodScheduled").last_transition_time,
            Some(Time(ts("2025-12-31T00:00:00Z")))
        );
        assert_eq!(s.pod_ip.as_deref(), Some("10.244.0.5"));
        assert_eq!(s.pod_ips.as_ref().unwrap()[0].ip, "10.244.0.5");
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
        assert_eq!(s.observed_generation, Some(3));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.state.as_ref().unwrap().running.is_some());
        assert_eq!(cs.container_id.as_deref(), Some("devcluster://42"));

        let later = ts("2026-01-01T00:02:00Z");
        let s2 = pod_status(
            &pod(),
            &runtime(vec![running("rabbitmq", true)]),
            Some(&s),
            later,
        );
        assert_eq!(cond(&s2, "Ready").status, "True");
        assert_eq!(cond(&s2, "Ready").last_transition_time, Some(Time(later)));
        // Unchanged conditions keep their transition time.
        assert_eq!(
            cond(&s2, "Initialized").last_transition_time,
            Some(Time(now))
        );
        let s3 = pod_status(
            &pod(),
            &runtime(vec![running("rabbitmq", true)]),
            Some(&s2),
            ts("2026-01-01T00:03:00Z"),
        );
        assert_eq!(s3, s2);
    }

    #[test]
    fn restarts_show_last_state_and_count() {
        let mut c = running("rabbitmq", true);
        c.restart_count = 1;
        c.last_termination = Some(Termination {
            signal: Some(9),
            ..Termination::new(137, Some(9), Some(ts("2026-01-01T00:00:00Z")))
        });
        let s = pod_status(&pod(), &runtime(vec![c]), None, Timestamp::now());
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 1);
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(last.exit_code, 137);
        assert_eq!(last.reason.as_deref(), Some("Error"));
        assert_eq!(cs.started, Some(true));
        assert!(cs.ready);
    }

    #[test]
    fn an_unmapped_image_is_pending_with_its_reason() {
        let c = ContainerRuntime::waiting(
            "emqx",
            "emqx/emqx:5.8.9",
            "ImageNotMapped",
            Some("EMQX cannot run on this machine".into()),
        );
        let mut rt = runtime(vec![c]);
        rt.pod_ip = None;
        rt.sandbox_ready = false;
        let s = pod_status(&pod(), &rt, None, Timestamp::now());
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "PodScheduled").status, "True");
        assert_eq!(cond(&s, "PodReadyToStartContainers").status, "False");
        let w = s.container_statuses.as_ref().unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .waiting
            .clone()
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("ImageNotMapped"));
        assert!(s.pod_ip.is_none());
    }

    #[test]
    fn completed_pods_are_not_ready() {
        let mut p = pod();
        p.spec.as_mut().unwrap().restart_policy = Some("Never".into());
        let s = pod_status(
            &p,
            &runtime(vec![exited("rabbitmq", 0)]),
            None,
            Timestamp::now(),
        );
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
    }

    #[test]
    fn init_containers_gate_initialized() {
        let mut rt = runtime(vec![creating("rabbitmq")]);
        rt.init_containers = vec![running("setup", false)];
        let s = pod_status(&pod(), &rt, None, Timestamp::now());
        assert_eq!(cond(&s, "Initialized").status, "False");
        assert_eq!(
            cond(&s, "Initialized").message.as_deref(),
            Some("containers with incomplete status: [setup]")
        );
        assert_eq!(s.init_container_statuses.as_ref().unwrap().len(), 1);
    }
}
