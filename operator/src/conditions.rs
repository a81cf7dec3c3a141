//! Status conditions: computed from what was observed (pure), then merged with the previous ones so
//! that `lastTransitionTime` only moves when a status really changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use mooring_crds::Condition;

/// Condition types Mooring sets.
pub mod types {
    /// Every node is ready, the rollout is complete and nothing is wrong.
    pub const READY: &str = "Ready";
    /// A majority of nodes is ready: clients can be served.
    pub const AVAILABLE: &str = "Available";
    /// A rollout, scale or first start is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something needs a person: an invalid spec, a failed reconcile, or too few nodes.
    pub const DEGRADED: &str = "Degraded";
    /// The last reconcile applied everything.
    pub const RECONCILE_SUCCESS: &str = "ReconcileSuccess";
    /// The pause annotation is set; Mooring writes nothing but status.
    pub const PAUSED: &str = "Paused";
    /// Every node sees the same members (set by membership repair).
    pub const MEMBERSHIP_CONSISTENT: &str = "MembershipConsistent";
}

/// A condition before its transition time is known.
#[derive(Clone, Debug, PartialEq)]
pub struct Computed {
    /// Condition type.
    pub type_: &'static str,
    /// True, False or Unknown.
    pub status: Status,
    /// CamelCase reason.
    pub reason: String,
    /// Human sentence.
    pub message: String,
}

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// True.
    True,
    /// False.
    False,
    /// Unknown.
    Unknown,
}

impl Status {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
    /// True when `b`, else False.
    pub fn from_bool(b: bool) -> Self {
        if b {
            Status::True
        } else {
            Status::False
        }
    }
}

impl Computed {
    /// Builds a computed condition.
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The StatefulSet figures the conditions are computed from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rollout {
    /// Desired broker nodes.
    pub desired: i32,
    /// Pods that exist.
    pub replicas: i32,
    /// Pods that are ready.
    pub ready: i32,
    /// Pods on the newest revision.
    pub updated: i32,
    /// Whether the StatefulSet controller has seen the newest StatefulSet spec.
    pub observed: bool,
    /// Whether every Pod runs the update revision.
    pub revision_current: bool,
}

impl Rollout {
    /// Whether a rollout, scale or start is still under way.
    pub fn in_progress(&self) -> bool {
        !self.observed
            || !self.revision_current
            || self.updated < self.desired
            || self.replicas != self.desired
            || self.ready < self.desired
    }
    /// Ready nodes form a majority of the desired ones.
    pub fn has_majority(&self) -> bool {
        self.ready > self.desired / 2
    }
}

/// What the reconcile achieved.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every child was applied.
    Applied,
    /// The spec cannot be rendered; nothing was changed.
    InvalidSpec(String),
    /// Something failed (reason, message); the reconcile will be retried.
    Failed(String, String),
}

/// Conditions for a reconciled (not paused) cluster.
pub fn compute(rollout: &Rollout, outcome: &Outcome) -> Vec<Computed> {
    use types::*;
    let progressing = rollout.in_progress();
    let available = rollout.has_majority();
    let mut out = Vec::new();

    out.push(match outcome {
        Outcome::Applied => Computed::new(
            RECONCILE_SUCCESS,
            Status::True,
            "Applied",
            "every child object is applied",
        ),
        Outcome::InvalidSpec(m) => {
            Computed::new(RECONCILE_SUCCESS, Status::False, "InvalidSpec", m.clone())
        }
        Outcome::Failed(r, m) => {
            Computed::new(RECONCILE_SUCCESS, Status::False, r.clone(), m.clone())
        }
    });

    let nodes = format!("{}/{} broker nodes ready", rollout.ready, rollout.desired);
    out.push(if available {
        Computed::new(AVAILABLE, Status::True, "MajorityReady", nodes.clone())
    } else {
        Computed::new(AVAILABLE, Status::False, "NoMajority", nodes.clone())
    });

    out.push(if progressing {
        let reason = if rollout.replicas == 0 && rollout.ready == 0 {
            "Creating"
        } else if rollout.replicas != rollout.desired {
            "Scaling"
        } else if !rollout.revision_current || rollout.updated < rollout.desired {
            "RollingUpdate"
        } else {
            "WaitingForReady"
        };
        Computed::new(
            PROGRESSING,
            Status::True,
            reason,
            format!(
                "{nodes}, {} of {} on the newest revision",
                rollout.updated, rollout.desired
            ),
        )
    } else {
        Computed::new(PROGRESSING, Status::False, "Complete", "rollout complete")
    });

    let degraded = match outcome {
        Outcome::InvalidSpec(m) => Some(("InvalidSpec", m.clone())),
        Outcome::Failed(r, m) => Some((r.as_str(), m.clone())),
        Outcome::Applied if !available && !progressing => {
            Some(("NoMajority", format!("only {nodes}")))
        }
        Outcome::Applied if !progressing && rollout.ready < rollout.desired => {
            Some(("NodesNotReady", format!("only {nodes}")))
        }
        Outcome::Applied => None,
    };
    out.push(match degraded {
        Some((r, m)) => Computed::new(DEGRADED, Status::True, r, m),
        None => Computed::new(
            DEGRADED,
            Status::False,
            "Healthy",
            "nothing needs attention",
        ),
    });

    let ready = matches!(outcome, Outcome::Applied) && !progressing && degraded_is_false(&out);
    out.push(if ready {
        Computed::new(READY, Status::True, "AllNodesReady", nodes)
    } else if !matches!(outcome, Outcome::Applied) {
        Computed::new(
            READY,
            Status::False,
            "ReconcileFailed",
            "see ReconcileSuccess",
        )
    } else {
        Computed::new(READY, Status::False, "NotAllNodesReady", nodes)
    });

    out.push(Computed::new(
        PAUSED,
        Status::False,
        "Reconciling",
        "not paused",
    ));
    out
}

fn degraded_is_false(out: &[Computed]) -> bool {
    out.iter()
        .any(|c| c.type_ == types::DEGRADED && c.status == Status::False)
}

/// The Paused condition for a paused cluster; every other condition keeps what it had.
pub fn paused() -> Computed {
    Computed::new(
        types::PAUSED,
        Status::True,
        "PausedByAnnotation",
        format!(
            "the annotation {}=\"true\" is set: Mooring changes nothing until it is removed",
            mooring_crds::PAUSED_ANNOTATION
        ),
    )
}

/// The MembershipConsistent condition until membership repair has looked at the cluster.
pub fn membership_unchecked() -> Computed {
    Computed::new(
        types::MEMBERSHIP_CONSISTENT,
        Status::Unknown,
        "NotChecked",
        "cluster membership has not been checked yet",
    )
}

/// Merges freshly computed conditions into the previous list: an unchanged status keeps its
/// `lastTransitionTime`; every computed condition gets `generation`. Previous conditions of other
/// types are kept as they were (with the generation they were computed for).
pub fn merge(
    previous: &[Condition],
    computed: &[Computed],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|p| !computed.iter().any(|c| c.type_ == p.type_))
        .cloned()
        .collect();
    for c in computed {
        let old = previous.iter().find(|p| p.type_ == c.type_);
        let since = match old {
            Some(o) if o.status == c.status.as_str() => o.last_transition_time.clone(),
            _ => now.clone(),
        };
        out.push(Condition {
            type_: c.type_.to_string(),
            status: c.status.as_str().to_string(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_transition_time: since,
            observed_generation: generation,
        });
    }
    let order = [
        types::READY,
        types::AVAILABLE,
        types::PROGRESSING,
        types::DEGRADED,
        types::RECONCILE_SUCCESS,
        types::PAUSED,
        types::MEMBERSHIP_CONSISTENT,
    ];
    out.sort_by_key(|c| {
        order
            .iter()
            .position(|t| *t == c.type_)
            .unwrap_or(order.len())
    });
    out
}

/// Puts `c` in place of the computed condition of its type (or adds it).
pub fn replace(computed: &mut Vec<Computed>, c: Computed) {
    computed.retain(|x| x.type_ != c.type_);
    computed.push(c);
}

/// The condition of this type, if any.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn steady(desired: i32, ready: i32) -> Rollout {
        Rollout {
            desired,
            replicas: desired,
            ready,
            updated: desired,
            observed: true,
            revision_current: true,
        }
    }

    fn status_of(cs: &[Computed], t: &str) -> Status {
        cs.iter().find(|c| c.type_ == t).unwrap().status
    }

    #[test]
    fn a_fully_ready_cluster_is_ready_available_and_not_progressing() {
        let cs = compute(&steady(3, 3), &Outcome::Applied);
        assert_eq!(status_of(&cs, types::READY), Status::True);
        assert_eq!(status_of(&cs, types::AVAILABLE), Status::True);
        assert_eq!(status_of(&cs, types::PROGRESSING), Status::False);
        assert_eq!(status_of(&cs, types::DEGRADED), Status::False);
        assert_eq!(status_of(&cs, types::PAUSED), Status::False);
    }

    #[test]
    fn a_new_cluster_is_progressing_and_not_yet_available() {
        let r = Rollout {
            desired: 3,
            ..Rollout::default()
        };
        let cs = compute(&r, &Outcome::Applied);
        assert_eq!(status_of(&cs, types::PROGRESSING), Status::True);
        assert_eq!(
            cs.iter()
                .find(|c| c.type_ == types::PROGRESSING)
                .unwrap()
                .reason,
            "Creating"
        );
        assert_eq!(status_of(&cs, types::AVAILABLE), Status::False);
        assert_eq!(status_of(&cs, types::READY), Status::False);
        assert_eq!(status_of(&cs, types::DEGRADED), Status::False);
    }

    #[test]
    fn two_of_three_nodes_is_available_but_not_ready() {
        let mut r = steady(3, 2);
        r.observed = true;
        let cs = compute(&r, &Outcome::Applied);
        assert_eq!(status_of(&cs, types::AVAILABLE), Status::True);
        assert_eq!(status_of(&cs, types::READY), Status::False);
    }

    #[test]
    fn an_invalid_spec_is_degraded_and_not_ready() {
        let cs = compute(&steady(3, 3), &Outcome::InvalidSpec("bad".into()));
        assert_eq!(status_of(&cs, types::DEGRADED), Status::True);
        assert_eq!(status_of(&cs, types::RECONCILE_SUCCESS), Status::False);
        assert_eq!(status_of(&cs, types::READY), Status::False);
    }

    #[test]
    fn merging_keeps_the_transition_time_of_an_unchanged_status() {
        let t0 = Time(Timestamp::from_second(1_000).unwrap());
        let t1 = Time(Timestamp::from_second(2_000).unwrap());
        let first = merge(
            &[],
            &compute(&steady(3, 3), &Outcome::Applied),
            Some(1),
            &t0,
        );
        let again = merge(
            &first,
            &compute(&steady(3, 3), &Outcome::Applied),
            Some(2),
            &t1,
        );
        let ready = find(&again, types::READY).unwrap();
        assert_eq!(ready.last_transition_time, t0);
        assert_eq!(ready.observed_generation, Some(2));
        let changed = merge(
            &again,
            &compute(&steady(3, 1), &Outcome::Applied),
            Some(3),
            &t1,
        );
        assert_eq!(
            find(&changed, types::READY).unwrap().last_transition_time,
            t1
        );
        assert!(changed.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn merging_keeps_conditions_it_did_not_compute() {
        let t0 = Time(Timestamp::from_second(1_000).unwrap());
        let first = merge(&[], &[membership_unchecked()], Some(1), &t0);
        let next = merge(&first, &[paused()], Some(2), &t0);
        let m = find(&next, types::MEMBERSHIP_CONSISTENT).unwrap();
        assert_eq!(m.observed_generation, Some(1));
        assert_eq!(find(&next, types::PAUSED).unwrap().status, "True");
    }
}
