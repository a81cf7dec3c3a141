//! What membership repair concludes from what every node said (pure).
//!
//! Inputs are the StatefulSet's Pods with each ready Pod's OWN view of the cluster; the output
//! is each node's state, the verdict, and at most one repair. The rules:
//! - a view is a node's list of running members; a **partition** is a view that the nodes it
//!   lists confirm themselves. The **majority partition** is the one confirmed by more than half
//!   of the desired replicas: one node's word is never enough (unless the cluster has one node);
//! - a ready Pod whose node is outside the majority and whose own view does not know the
//!   majority's nodes is a **stray**: it is joined to a majority member (a seed), after it was
//!   seen stray twice in a row (a node that is still forming its cluster at boot is left alone);
//! - a member the majority knows (running or stopped) without an expected Pod is a **ghost**
//!   (left by a scale-down): it is removed once it has been a ghost for the grace period;
//! - an expected Pod whose broker keeps failing to boot while the majority does not list its
//!   node (neither running nor stopped) is **forgotten**: the cluster dropped it, so its data is
//!   useless to the cluster (RabbitMQ refuses to boot on it: `inconsistent_cluster`); its data
//!   is moved aside so that it starts empty and joins again;
//! - nothing is repaired without a majority, during a rollout, while paused or disabled, or
//!   during the backoff after a failed repair; then the reason is reported instead.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;

use crate::drivers::{ClusterView, HealthCheck};

/// How long a stray must have been seen before it is joined: two consecutive checks.
pub const STRAY_CHECKS_BEFORE_JOIN: u32 = 2;

/// One Pod of the StatefulSet as observed this round.
#[derive(Clone, Debug, PartialEq)]
pub struct PodObservation {
    /// Pod name.
    pub pod: String,
    /// Its StatefulSet ordinal.
    pub ordinal: i32,
    /// The broker node name the Pod runs.
    pub node: String,
    /// Whether the Pod is Ready (only ready Pods are asked for their view).
    pub ready: bool,
    /// Whether the Pod is being deleted.
    pub terminating: bool,
    /// What the node said about the cluster (None when it was not asked).
    pub view: Option<Result<ClusterView, String>>,
    /// The checks the node failed (None when it was not checked or did not answer).
    pub failed_checks: Option<Vec<HealthCheck>>,
    /// The broker keeps failing to boot: restarted at least twice and now crashed or backing
    /// off. Only set for brokers that refuse to boot when the cluster forgot them (RabbitMQ's
    /// `inconsistent_cluster`).
    pub crash_looping: bool,
}

/// Everything [`assess`] needs.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The StatefulSet's Pods.
    pub pods: &'a [PodObservation],
    /// The node names of ordinals `0..replicas`.
    pub expected: &'a [String],
    /// A rollout (template change or scale) is under way.
    pub rollout_in_progress: bool,
    /// `spec.repair.enabled`.
    pub repair_enabled: bool,
    /// The pause annotation is set.
    pub paused: bool,
    /// Time left of the backoff after a failed repair.
    pub backoff_left: Option<Duration>,
    /// How many consecutive checks each node has been seen stray before this one.
    pub stray_streak: &'a BTreeMap<String, u32>,
    /// For how long each ghost has been seen.
    pub ghost_age: &'a BTreeMap<String, Duration>,
    /// How many consecutive checks each node has failed its virtual-hosts check before this one.
    pub vhosts_down_streak: &'a BTreeMap<String, u32>,
    /// How many consecutive checks each node has refused MQTT clients before this one.
    pub mqtt_refused_streak: &'a BTreeMap<String, u32>,
    /// How long a ghost is left before it is removed.
    pub ghost_grace: Duration,
}

/// A node's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum NodeState {
    /// In the majority partition.
    Joined,
    /// Running, outside the majority, in a cluster of its own.
    Stray,
    /// A member the majority lists with no Pod behind it.
    Ghost,
    /// Cannot boot: the cluster forgot it.
    Forgotten,
    /// Not ready, or being deleted: not asked.
    NotReady,
    /// Asked, no usable answer; or no majority to compare with.
    Unknown,
}

impl NodeState {
    /// The spelling in `status.members[].state`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joined => "Joined",
            NodeState::Stray => "Stray",
            NodeState::Ghost => "Ghost",
            NodeState::Forgotten => "Forgotten",
            NodeState::NotReady => "NotReady",
            NodeState::Unknown => "Unknown",
        }
    }
}

/// One node's assessment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Member {
    /// The Pod (empty for a ghost).
    pub pod: String,
    /// The broker node name.
    pub node: String,
    /// The members it reports running (empty when not asked or no answer).
    pub view: Vec<String>,
    /// Its state.
    pub state: NodeState,
    /// Why it is Unknown (the driver's error), if it is.
    pub error: Option<String>,
    /// The health checks it failed as `name: detail` (None when not checked).
    pub failed_checks: Option<Vec<String>>,
}

impl Member {
    /// Whether the node failed its virtual-hosts check (RabbitMQ: a vhost down on that node).
    pub fn vhosts_down(&self) -> bool {
        self.fails(VHOSTS_CHECK)
    }
    /// Whether the node failed the health check `check`.
    pub fn fails(&self, check: &str) -> bool {
        self.failed_checks
            .as_ref()
            .is_some_and(|f| f.iter().any(|c| c.split(':').next() == Some(check)))
    }
}

/// The health check that fails when a node refuses MQTT clients (a real CONNECT/CONNACK).
pub const MQTT_CHECK: &str = "mqtt-connect";
/// Consecutive checks a member must refuse MQTT clients (while another member accepts them)
/// before its broker application is restarted: about 30 s at the default interval. RabbitMQ 3.10
/// can stay in this state for minutes when its client-id tracker has not found its Raft leader.
pub const MQTT_REFUSED_CHECKS_BEFORE_RESTART: u32 = 6;

/// The health check that fails when a virtual host is down on a node.
pub const VHOSTS_CHECK: &str = "virtual-hosts";

/// The overall verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Every ready node reports the same members and every expected node is among them.
    Consistent,
    /// A majority exists, but something is off (strays, ghosts, forgotten nodes or views that
    /// differ while a node catches up).
    Inconsistent,
    /// The nodes that answered are split and no partition has a majority.
    NoMajority,
    /// Too few nodes answered to tell.
    Unknown,
}

/// One repair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Repair {
    /// Join the stray `pod` (node `node`) to the cluster through `seed_pod`.
    Join {
        /// The stray's Pod.
        pod: String,
        /// The stray's node.
        node: String,
        /// A majority member's Pod.
        seed_pod: String,
        /// Its node.
        seed_node: String,
    },
    /// Remove the ghost member `node`, asking `via_pod`.
    RemoveGhost {
        /// The ghost's node name.
        node: String,
        /// A majority member's Pod.
        via_pod: String,
        /// Its node.
        via_node: String,
    },
    /// Restart the virtual hosts that are down on `pod` (a member that refuses every client).
    RestartVhosts {
        /// The Pod.
        pod: String,
        /// Its node.
        node: String,
    },
    /// Restart the broker application on `pod` (a member that refuses MQTT clients while others
    /// accept them).
    RestartApp {
        /// The Pod.
        pod: String,
        /// Its node.
        node: String,
    },
    /// Move aside the data of the forgotten `pod` and restart it.
    ResetForgotten {
        /// The Pod.
        pod: String,
        /// Its node.
        node: String,
    },
}

impl Repair {
    /// The node the repair is about.
    pub fn node(&self) -> &str {
        match self {
            Repair::Join { node, .. }
            | Repair::RemoveGhost { node, .. }
            | Repair::RestartVhosts { node, .. }
            | Repair::RestartApp { node, .. }
            | Repair::ResetForgotten { node, .. } => node,
        }
    }
    /// The Pod the repair works on (for a ghost: the member it asks).
    pub fn pod(&self) -> &str {
        match self {
            Repair::Join { pod, .. }
            | Repair::ResetForgotten { pod, .. }
            | Repair::RestartVhosts { pod, .. }
            | Repair::RestartApp { pod, .. } => pod,
            Repair::RemoveGhost { via_pod, .. } => via_pod,
        }
    }
    /// A CamelCase name for Events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Repair::Join { .. } => "JoinStray",
            Repair::RemoveGhost { .. } => "RemoveGhost",
            Repair::RestartVhosts { .. } => "RestartVhosts",
            Repair::RestartApp { .. } => "RestartApp",
            Repair::ResetForgotten { .. } => "ResetForgotten",
        }
    }
    /// A sentence for Events and status.
    pub fn describe(&self) -> String {
        match self {
            Repair::Join { node, seed_node, .. } => {
                format!("join stray node {node} to the cluster through {seed_node}")
            }
            Repair::RemoveGhost { node, via_node, .. } => {
                format!("remove ghost member {node} (no Pod runs it) through {via_node}")
            }
            Repair::RestartApp { node, .. } => format!(
                "restart the broker application on {node}, which refuses MQTT clients while the other nodes accept them"
            ),
            Repair::RestartVhosts { node, .. } => format!(
                "restart the virtual hosts that are down on {node}, which refuses their clients"
            ),
            Repair::ResetForgotten { node, .. } => format!(
                "move aside the data of {node}, which the cluster forgot, so that it starts empty and joins again"
            ),
        }
    }
}

impl Assessment {
    /// The nodes that failed health checks, with the checks, or `None` when all passed.
    pub fn unhealthy(&self) -> Option<String> {
        let failing: Vec<String> = self
            .members
            .iter()
            .filter_map(|m| {
                let f = m.failed_checks.as_ref().filter(|f| !f.is_empty())?;
                Some(format!("{} ({})", m.node, f.join("; ")))
            })
            .collect();
        (!failing.is_empty()).then(|| failing.join(", "))
    }
}

/// What [`assess`] concludes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Assessment {
    /// Every Pod, then every ghost.
    pub members: Vec<Member>,
    /// The majority partition's nodes, sorted.
    pub majority: Option<Vec<String>>,
    /// The verdict.
    pub verdict: Verdict,
    /// A CamelCase reason for the MembershipConsistent condition.
    pub reason: String,
    /// A sentence for people.
    pub message: String,
    /// The repair to run now, if any.
    pub repair: Option<Repair>,
    /// Why a needed repair is not run now.
    pub blocked: Option<Blocked>,
}

/// Why a needed repair waits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Blocked {
    /// `Rollout`, `Paused`, `Disabled` or `Backoff`.
    pub cause: &'static str,
    /// A sentence for people: the repair and why it waits.
    pub message: String,
    /// The Pod the waiting repair works on.
    pub pod: String,
}

/// Assesses one round of observations.
pub fn assess(input: &Input<'_>) -> Assessment {
    let desired = input.expected.len();
    let views: BTreeMap<&str, &ClusterView> = input
        .pods
        .iter()
        .filter(|p| p.ready && !p.terminating)
        .filter_map(|p| match &p.view {
            Some(Ok(v)) => Some((p.node.as_str(), v)),
            _ => None,
        })
        .collect();
    let majority = majority_partition(&views, desired);
    let majority_members: BTreeSet<String> = majority
        .as_ref()
        .map(|m| {
            // Everything a confirming node knows, running or stopped.
            m.iter()
                .filter_map(|n| views.get(n.as_str()))
                .flat_map(|v| v.members())
                .collect()
        })
        .unwrap_or_default();

    let mut members = Vec::new();
    for p in input.pods {
        let (view, error) = match &p.view {
            Some(Ok(v)) => (v.running.clone(), None),
            Some(Err(e)) => (Vec::new(), Some(e.clone())),
            None => (Vec::new(), None),
        };
        let failed_checks = p.failed_checks.as_ref().map(|f| {
            f.iter()
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect::<Vec<_>>()
        });
        let state = node_state(p, majority.as_deref(), &majority_members);
        members.push(Member {
            pod: p.pod.clone(),
            node: p.node.clone(),
            view,
            state,
            error,
            failed_checks,
        });
    }
    let pod_nodes: BTreeSet<&str> = input.pods.iter().map(|p| p.node.as_str()).collect();
    let ghosts: Vec<String> = majority_members
        .iter()
        .filter(|n| !input.expected.contains(n) && !pod_nodes.contains(n.as_str()))
        .cloned()
        .collect();
    for g in &ghosts {
        members.push(Member {
            pod: String::new(),
            node: g.clone(),
            view: Vec::new(),
            state: NodeState::Ghost,
            error: None,
            failed_checks: None,
        });
    }

    let answered = views.len();
    let count = |s: NodeState| members.iter().filter(|m| m.state == s).count();
    let names = |s: NodeState| -> String {
        members
            .iter()
            .filter(|m| m.state == s)
            .map(|m| m.node.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };

    let Some(majority) = majority else {
        let (verdict, reason, message) = if answered * 2 > desired || split(&views) {
            (
                Verdict::NoMajority,
                "NoMajority",
                format!(
                    "the {answered} nodes that answered are split and no partition has a majority of {desired}: {}; nothing is repaired until one does",
                    describe_views(&views)
                ),
            )
        } else {
            (
                Verdict::Unknown,
                "TooFewAnswers",
                format!("only {answered} of {desired} nodes answered: membership cannot be judged"),
            )
        };
        return Assessment {
            members,
            majority: None,
            verdict,
            reason: reason.into(),
            message,
            repair: None,
            blocked: None,
        };
    };

    let strays = count(NodeState::Stray);
    let forgotten = count(NodeState::Forgotten);
    let differ = views.values().any(|v| v.running != majority);
    let (verdict, reason, message) = if strays > 0 {
        (
            Verdict::Inconsistent,
            "StrayNode",
            format!(
                "{} not in the cluster of {}: clients on it miss messages published elsewhere",
                names(NodeState::Stray),
                majority.join(", ")
            ),
        )
    } else if forgotten > 0 {
        (
            Verdict::Inconsistent,
            "ForgottenNode",
            format!(
                "the cluster forgot {}, which cannot boot (inconsistent_cluster)",
                names(NodeState::Forgotten)
            ),
        )
    } else if !ghosts.is_empty() {
        (
            Verdict::Inconsistent,
            "GhostMember",
            format!(
                "the cluster still lists {} without a Pod",
                ghosts.join(", ")
            ),
        )
    } else if differ {
        (
            Verdict::Inconsistent,
            "ViewsDiffer",
            format!("views differ: {}", describe_views(&views)),
        )
    } else {
        let not_ready = count(NodeState::NotReady) + count(NodeState::Unknown);
        let joined = count(NodeState::Joined);
        let message = if not_ready == 0 {
            format!("all {joined} nodes see the same {} members", majority.len())
        } else {
            format!(
                "{joined} nodes see the same {} members; {not_ready} not checked",
                majority.len()
            )
        };
        (Verdict::Consistent, "Consistent", message)
    };

    let wanted = wanted_repair(input, &members, &majority, &ghosts);
    let (repair, blocked) = match wanted {
        None => (None, None),
        Some(r) => match block_reason(input) {
            Some((cause, why)) => (
                None,
                Some(Blocked {
                    cause,
                    message: format!("{} is waiting: {why}", r.describe()),
                    pod: r.pod().to_string(),
                }),
            ),
            None => (Some(r), None),
        },
    };
    Assessment {
        members,
        majority: Some(majority),
        verdict,
        reason: reason.into(),
        message,
        repair,
        blocked,
    }
}

/// The view confirmed by more than half of `desired` nodes: each confirming node lists it as
/// its own view and is in it.
fn majority_partition(views: &BTreeMap<&str, &ClusterView>, desired: usize) -> Option<Vec<String>> {
    let mut support: BTreeMap<&Vec<String>, usize> = BTreeMap::new();
    for (node, v) in views {
        if v.running.iter().any(|r| r == node) {
            *support.entry(&v.running).or_default() += 1;
        }
    }
    support
        .into_iter()
        .filter(|(_, n)| n * 2 > desired)
        .max_by_key(|(_, n)| *n)
        .map(|(v, _)| v.clone())
}

/// Whether the answering nodes report at least two disjoint clusters.
fn split(views: &BTreeMap<&str, &ClusterView>) -> bool {
    let distinct: BTreeSet<&Vec<String>> = views.values().map(|v| &v.running).collect();
    distinct.len() > 1
        && distinct.iter().any(|a| {
            distinct
                .iter()
                .any(|b| a != b && a.iter().all(|n| !b.contains(n)))
        })
}

fn node_state(
    p: &PodObservation,
    majority: Option<&[String]>,
    majority_members: &BTreeSet<String>,
) -> NodeState {
    let in_majority = majority.is_some_and(|m| m.contains(&p.node));
    if p.terminating {
        return NodeState::NotReady;
    }
    if !p.ready {
        if majority.is_some() && p.crash_looping && !majority_members.contains(&p.node) {
            return NodeState::Forgotten;
        }
        return NodeState::NotReady;
    }
    match (&p.view, majority) {
        (Some(Ok(_)), _) if in_majority => NodeState::Joined,
        (Some(Ok(v)), Some(m)) => {
            // A node that already knows the majority's nodes is catching up, not stray.
            if v.members().iter().any(|n| m.contains(n)) {
                NodeState::Joined
            } else {
                NodeState::Stray
            }
        }
        _ => NodeState::Unknown,
    }
}

/// The one repair the round calls for, most urgent first: strays (clients are losing
/// messages), then forgotten nodes, then ghosts past their grace period.
fn wanted_repair(
    input: &Input<'_>,
    members: &[Member],
    majority: &[String],
    ghosts: &[String],
) -> Option<Repair> {
    let seed = input
        .pods
        .iter()
        .filter(|p| p.ready && !p.terminating && majority.contains(&p.node))
        .min_by_key(|p| p.ordinal)?;
    let stray = members.iter().find(|m| {
        m.state == NodeState::Stray
            && input.stray_streak.get(&m.node).copied().unwrap_or(0) + 1 >= STRAY_CHECKS_BEFORE_JOIN
    });
    if let Some(s) = stray {
        return Some(Repair::Join {
            pod: s.pod.clone(),
            node: s.node.clone(),
            seed_pod: seed.pod.clone(),
            seed_node: seed.node.clone(),
        });
    }
    if let Some(f) = members.iter().find(|m| m.state == NodeState::Forgotten) {
        return Some(Repair::ResetForgotten {
            pod: f.pod.clone(),
            node: f.node.clone(),
        });
    }
    let vhosts_down = members.iter().find(|m| {
        m.state == NodeState::Joined
            && m.vhosts_down()
            && input.vhosts_down_streak.get(&m.node).copied().unwrap_or(0) + 1
                >= STRAY_CHECKS_BEFORE_JOIN
    });
    if let Some(v) = vhosts_down {
        return Some(Repair::RestartVhosts {
            pod: v.pod.clone(),
            node: v.node.clone(),
        });
    }
    // Only when another member accepts MQTT clients: a cluster-wide refusal (credentials, a
    // listener setting) is not fixed by restarting nodes.
    let someone_accepts = members
        .iter()
        .any(|m| m.state == NodeState::Joined && m.failed_checks.is_some() && !m.fails(MQTT_CHECK));
    let refusing = members.iter().find(|m| {
        m.state == NodeState::Joined
            && m.fails(MQTT_CHECK)
            && input.mqtt_refused_streak.get(&m.node).copied().unwrap_or(0) + 1
                >= MQTT_REFUSED_CHECKS_BEFORE_RESTART
    });
    if let (true, Some(r)) = (someone_accepts, refusing) {
        return Some(Repair::RestartApp {
            pod: r.pod.clone(),
            node: r.node.clone(),
        });
    }
    ghosts
        .iter()
        .find(|g| {
            input
                .ghost_age
                .get(*g)
                .is_some_and(|age| *age >= input.ghost_grace)
        })
        .map(|g| Repair::RemoveGhost {
            node: g.clone(),
            via_pod: seed.pod.clone(),
            via_node: seed.node.clone(),
        })
}

fn block_reason(input: &Input<'_>) -> Option<(&'static str, String)> {
    if input.paused {
        Some(("Paused", "the cluster is paused".into()))
    } else if !input.repair_enabled {
        Some((
            "Disabled",
            "repair is disabled (spec.repair.enabled: false)".into(),
        ))
    } else if input.rollout_in_progress {
        Some((
            "Rollout",
            "a rollout is in progress; repairs wait until it completes".into(),
        ))
    } else {
        input.backoff_left.map(|d| {
            (
                "Backoff",
                format!(
                    "backing off for {}s after a failed repair",
                    d.as_secs().max(1)
                ),
            )
        })
    }
}

fn describe_views(views: &BTreeMap<&str, &ClusterView>) -> String {
    views
        .iter()
        .map(|(n, v)| format!("{n} sees [{}]", v.running.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: i32) -> String {
        format!("rabbit@bus-{i}")
    }

    fn view(of: i32, running: &[i32], stopped: &[i32]) -> Option<Result<ClusterView, String>> {
        let mut running: Vec<String> = running.iter().map(|i| node(*i)).collect();
        running.sort();
        Some(Ok(ClusterView {
            node: node(of),
            running,
            stopped: stopped.iter().map(|i| node(*i)).collect(),
            partitions: Vec::new(),
        }))
    }

    fn pod(i: i32, v: Option<Result<ClusterView, String>>) -> PodObservation {
        PodObservation {
            pod: format!("bus-{i}"),
            ordinal: i,
            node: node(i),
            ready: true,
            terminating: false,
            view: v,
            failed_checks: Some(Vec::new()),
            crash_looping: false,
        }
    }

    struct Case {
        pods: Vec<PodObservation>,
        expected: Vec<String>,
        rollout: bool,
        enabled: bool,
        paused: bool,
        backoff: Option<Duration>,
        streak: BTreeMap<String, u32>,
        ghost_age: BTreeMap<String, Duration>,
        vhosts: BTreeMap<String, u32>,
        mqtt: BTreeMap<String, u32>,
    }

    impl Case {
        fn new(replicas: i32, pods: Vec<PodObservation>) -> Self {
            Self {
                pods,
                expected: (0..replicas).map(node).collect(),
                rollout: false,
                enabled: true,
                paused: false,
                backoff: None,
                streak: BTreeMap::new(),
                ghost_age: BTreeMap::new(),
                vhosts: BTreeMap::new(),
                mqtt: BTreeMap::new(),
            }
        }
        fn assess(&self) -> Assessment {
            assess(&Input {
                pods: &self.pods,
                expected: &self.expected,
                rollout_in_progress: self.rollout,
                repair_enabled: self.enabled,
                paused: self.paused,
                backoff_left: self.backoff,
                stray_streak: &self.streak,
                ghost_age: &self.ghost_age,
                vhosts_down_streak: &self.vhosts,
                mqtt_refused_streak: &self.mqtt,
                ghost_grace: Duration::from_secs(300),
            })
        }
    }

    fn states(a: &Assessment) -> Vec<(&str, NodeState)> {
        a.members
            .iter()
            .map(|m| (m.node.as_str(), m.state))
            .collect()
    }

    #[test]
    fn three_nodes_that_agree_are_consistent() {
        let a = Case::new(
            3,
            (0..3).map(|i| pod(i, view(i, &[0, 1, 2], &[]))).collect(),
        )
        .assess();
        assert_eq!(a.verdict, Verdict::Consistent);
        assert_eq!(a.majority, Some(vec![node(0), node(1), node(2)]));
        assert!(a.members.iter().all(|m| m.state == NodeState::Joined));
        assert_eq!(a.repair, None);
    }

    #[test]
    fn a_stray_is_reported_at_once_and_joined_on_the_second_sighting() {
        let pods = vec![
            pod(0, view(0, &[0, 1], &[])),
            pod(1, view(1, &[0, 1], &[])),
            pod(2, view(2, &[2], &[])),
        ];
        let mut case = Case::new(3, pods);
        let first = case.assess();
        assert_eq!(first.verdict, Verdict::Inconsistent);
        assert_eq!(first.reason, "StrayNode");
        assert_eq!(states(&first)[2], (node(2).as_str(), NodeState::Stray));
        assert_eq!(first.repair, None, "a first sighting is not acted on");

        case.streak.insert(node(2), 1);
        let second = case.assess();
        assert_eq!(
            second.repair,
            Some(Repair::Join {
                pod: "bus-2".into(),
                node: node(2),
                seed_pod: "bus-0".into(),
                seed_node: node(0),
            })
        );
    }

    #[test]
    fn one_node_alone_is_never_trusted_to_be_the_majority() {
        // Node 0 claims everybody runs; nobody else confirms it.
        let pods = vec![
            pod(0, view(0, &[0, 1, 2], &[])),
            pod(1, Some(Err("timeout".into()))),
            pod(2, Some(Err("timeout".into()))),
        ];
        let a = Case::new(3, pods).assess();
        assert_eq!(a.verdict, Verdict::Unknown);
        assert_eq!(a.majority, None);
        assert_eq!(a.repair, None);
        assert_eq!(states(&a)[1].1, NodeState::Unknown);
    }

    #[test]
    fn two_partitions_without_a_majority_are_left_alone() {
        let mut case = Case::new(
            2,
            vec![pod(0, view(0, &[0], &[1])), pod(1, view(1, &[1], &[]))],
        );
        case.streak.insert(node(0), 5);
        case.streak.insert(node(1), 5);
        let a = case.assess();
        assert_eq!(a.verdict, Verdict::NoMajority);
        assert_eq!(a.reason, "NoMajority");
        assert_eq!(a.repair, None);
        assert!(
            a.message.contains("no partition has a majority"),
            "{}",
            a.message
        );

        let four = Case::new(
            4,
            vec![
                pod(0, view(0, &[0, 1], &[])),
                pod(1, view(1, &[0, 1], &[])),
                pod(2, view(2, &[2, 3], &[])),
                pod(3, view(3, &[2, 3], &[])),
            ],
        )
        .assess();
        assert_eq!(four.verdict, Verdict::NoMajority);
        assert_eq!(four.repair, None);
    }

    #[test]
    fn a_restarted_node_that_is_not_ready_is_not_a_stray() {
        let mut p2 = pod(2, None);
        p2.ready = false;
        let a = Case::new(
            3,
            vec![
                pod(0, view(0, &[0, 1], &[2])),
                pod(1, view(1, &[0, 1], &[2])),
                p2,
            ],
        )
        .assess();
        assert_eq!(a.verdict, Verdict::Consistent);
        assert_eq!(states(&a)[2].1, NodeState::NotReady);
        assert_eq!(a.repair, None);
        assert!(a.message.contains("1 not checked"), "{}", a.message);
    }

    #[test]
    fn a_node_catching_up_is_not_joined_again() {
        // Node 2 is back and sees everybody; the others have not noticed yet.
        let pods = vec![
            pod(0, view(0, &[0, 1], &[2])),
            pod(1, view(1, &[0, 1], &[2])),
            pod(2, view(2, &[0, 1, 2], &[])),
        ];
        let mut case = Case::new(3, pods);
        case.streak.insert(node(2), 3);
        let a = case.assess();
        assert_eq!(a.reason, "ViewsDiffer");
        assert_eq!(states(&a)[2].1, NodeState::Joined);
        assert_eq!(a.repair, None);
    }

    #[test]
    fn repairs_wait_for_rollouts_pause_disable_and_backoff() {
        let pods = vec![
            pod(0, view(0, &[0, 1], &[])),
            pod(1, view(1, &[0, 1], &[])),
            pod(2, view(2, &[2], &[])),
        ];
        let mut case = Case::new(3, pods);
        case.streak.insert(node(2), 1);
        case.rollout = true;
        let a = case.assess();
        assert_eq!(a.repair, None);
        let b = a.blocked.unwrap();
        assert_eq!(b.cause, "Rollout");
        assert_eq!(b.pod, "bus-2", "the Event names the stray's Pod");
        assert!(b.message.contains("rollout"));
        assert_eq!(a.reason, "StrayNode", "the stray is still reported");

        case.rollout = false;
        case.paused = true;
        assert!(case.assess().blocked.unwrap().message.contains("paused"));
        case.paused = false;
        case.enabled = false;
        assert!(case.assess().blocked.unwrap().message.contains("disabled"));
        case.enabled = true;
        case.backoff = Some(Duration::from_secs(8));
        assert!(case.assess().blocked.unwrap().message.contains("8s"));
        case.backoff = None;
        assert!(case.assess().repair.is_some());
    }

    #[test]
    fn a_forgotten_node_is_reset_only_when_the_majority_does_not_list_it() {
        let mut p2 = pod(2, None);
        p2.ready = false;
        p2.crash_looping = true;
        let a = Case::new(
            3,
            vec![
                pod(0, view(0, &[0, 1], &[])),
                pod(1, view(1, &[0, 1], &[])),
                p2.clone(),
            ],
        )
        .assess();
        assert_eq!(a.reason, "ForgottenNode");
        assert_eq!(
            a.repair,
            Some(Repair::ResetForgotten {
                pod: "bus-2".into(),
                node: node(2)
            })
        );

        // Still a (stopped) member: the failure is something else; leave its data alone.
        let b = Case::new(
            3,
            vec![
                pod(0, view(0, &[0, 1], &[2])),
                pod(1, view(1, &[0, 1], &[2])),
                p2,
            ],
        )
        .assess();
        assert_eq!(states(&b)[2].1, NodeState::NotReady);
        assert_eq!(b.repair, None);
    }

    #[test]
    fn a_ghost_is_removed_after_its_grace_period() {
        // Scaled from 4 to 3: node 3 has no Pod, the others still list it as stopped.
        let pods: Vec<_> = (0..3).map(|i| pod(i, view(i, &[0, 1, 2], &[3]))).collect();
        let mut case = Case::new(3, pods);
        let a = case.assess();
        assert_eq!(a.reason, "GhostMember");
        assert_eq!(states(&a)[3], (node(3).as_str(), NodeState::Ghost));
        assert_eq!(a.repair, None, "not before the grace period");

        case.ghost_age.insert(node(3), Duration::from_secs(301));
        assert_eq!(
            case.assess().repair,
            Some(Repair::RemoveGhost {
                node: node(3),
                via_pod: "bus-0".into(),
                via_node: node(0),
            })
        );
    }

    #[test]
    fn a_terminating_pod_of_a_scale_down_is_not_a_ghost() {
        let mut p3 = pod(3, None);
        p3.terminating = true;
        let mut pods: Vec<_> = (0..3)
            .map(|i| pod(i, view(i, &[0, 1, 2, 3], &[])))
            .collect();
        pods.push(p3);
        let a = Case::new(3, pods).assess();
        assert!(a.members.iter().all(|m| m.state != NodeState::Ghost));
        assert_eq!(a.repair, None);
    }

    #[test]
    fn strays_go_first_one_at_a_time() {
        let pods = vec![
            pod(0, view(0, &[0, 1, 2], &[])),
            pod(1, view(1, &[0, 1, 2], &[])),
            pod(2, view(2, &[0, 1, 2], &[])),
            pod(3, view(3, &[3], &[])),
            pod(4, view(4, &[4], &[])),
        ];
        let mut case = Case::new(5, pods);
        case.streak.insert(node(3), 1);
        case.streak.insert(node(4), 1);
        let a = case.assess();
        assert_eq!(a.repair.as_ref().map(Repair::node), Some(node(3).as_str()));
        assert!(a.message.contains(&node(3)) && a.message.contains(&node(4)));
    }

    #[test]
    fn a_member_whose_vhost_is_down_gets_it_restarted_on_the_second_sighting() {
        let mut p1 = pod(1, view(1, &[0, 1, 2], &[]));
        p1.failed_checks = Some(vec![HealthCheck {
            name: VHOSTS_CHECK.into(),
            ok: false,
            detail: "vhost '/' is down".into(),
        }]);
        let pods = vec![
            pod(0, view(0, &[0, 1, 2], &[])),
            p1,
            pod(2, view(2, &[0, 1, 2], &[])),
        ];
        let mut case = Case::new(3, pods);
        let first = case.assess();
        assert_eq!(
            first.verdict,
            Verdict::Consistent,
            "membership itself is fine"
        );
        assert_eq!(
            first.members[1].failed_checks,
            Some(vec!["virtual-hosts: vhost '/' is down".to_string()])
        );
        assert_eq!(first.repair, None);
        case.vhosts.insert(node(1), 1);
        assert_eq!(
            case.assess().repair,
            Some(Repair::RestartVhosts {
                pod: "bus-1".into(),
                node: node(1)
            })
        );
    }

    #[test]
    fn a_member_refusing_mqtt_is_restarted_only_while_others_accept() {
        let refusing = |i: i32| {
            let mut p = pod(i, view(i, &[0, 1, 2], &[]));
            p.failed_checks = Some(vec![HealthCheck {
                name: MQTT_CHECK.into(),
                ok: false,
                detail: "no CONNACK within 5s".into(),
            }]);
            p
        };
        let mut case = Case::new(
            3,
            vec![
                pod(0, view(0, &[0, 1, 2], &[])),
                refusing(1),
                pod(2, view(2, &[0, 1, 2], &[])),
            ],
        );
        case.mqtt
            .insert(node(1), MQTT_REFUSED_CHECKS_BEFORE_RESTART - 2);
        assert_eq!(case.assess().repair, None, "not yet");
        case.mqtt
            .insert(node(1), MQTT_REFUSED_CHECKS_BEFORE_RESTART - 1);
        assert_eq!(
            case.assess().repair,
            Some(Repair::RestartApp {
                pod: "bus-1".into(),
                node: node(1)
            })
        );
        // Every node refuses: not a node's fault; nothing is restarted.
        let mut all = Case::new(3, (0..3).map(refusing).collect());
        for i in 0..3 {
            all.mqtt.insert(node(i), 100);
        }
        assert_eq!(all.assess().repair, None);
    }

    #[test]
    fn a_single_node_cluster_is_its_own_majority() {
        let a = Case::new(1, vec![pod(0, view(0, &[0], &[]))]).assess();
        assert_eq!(a.verdict, Verdict::Consistent);
    }
}
