//! Continuous cluster-membership repair.
//!
//! One **monitor** task per BrokerCluster (started by the reconcile, stopped when the cluster is
//! deleted or the operator stops leading) asks every ready broker node for its own view of the
//! cluster every `spec.repair.intervalSeconds`, assesses the views ([`plan::assess`], pure) and
//! runs at most one repair at a time through the broker's driver. Its latest [`Report`] is kept
//! here; when the report changes, the monitor asks the controller for a reconcile, which writes
//! `status.members` and the `MembershipConsistent` condition (the reconcile stays the only
//! writer of the status).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use mooring_crds::{BrokerCluster, MemberStatus};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::conditions::{types, Computed, Status};

mod monitor;
pub mod plan;
mod stores;

pub use monitor::{node_name, spawn};
pub use plan::{Assessment, Blocked, NodeState, Repair, Verdict};
pub use stores::Stores;

/// Alert names raised by membership repair.
pub mod alert_names {
    /// No partition has a majority.
    pub const NO_MAJORITY: &str = "MembershipNoMajority";
    /// A node is outside the cluster (stray or forgotten).
    pub const INCONSISTENT: &str = "MembershipInconsistent";
    /// The last repair failed.
    pub const REPAIR_FAILED: &str = "MembershipRepairFailed";
    /// A node that is a member fails health checks (it cannot serve its clients).
    pub const NODE_UNHEALTHY: &str = "NodeUnhealthy";
}

/// The last repair of one node.
#[derive(Clone, Debug, PartialEq)]
pub struct RepairRecord {
    /// When it finished.
    pub time: Time,
    /// What was done and how it ended.
    pub result: String,
    /// Whether it succeeded.
    pub ok: bool,
}

/// What the monitor of one cluster last concluded.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The assessment of the last check.
    pub assessment: Assessment,
    /// The last repair of each node, by node name.
    pub repairs: BTreeMap<String, RepairRecord>,
    /// The error of the last repair, while no repair has succeeded since.
    pub failing: Option<String>,
}

impl Report {
    /// `status.members`.
    pub fn members(&self) -> Vec<MemberStatus> {
        self.assessment
            .members
            .iter()
            .map(|m| {
                let last = self.repairs.get(&m.node);
                MemberStatus {
                    pod: m.pod.clone(),
                    node: m.node.clone(),
                    view: m.view.clone(),
                    state: m.state.as_str().to_string(),
                    healthy: m.failed_checks.as_ref().map(|f| f.is_empty()),
                    failed_checks: m.failed_checks.clone().unwrap_or_default(),
                    last_repair_time: last.map(|r| r.time.clone()),
                    last_repair_result: last.map(|r| r.result.clone()),
                }
            })
            .collect()
    }

    /// The `MembershipConsistent` condition.
    pub fn condition(&self) -> Computed {
        let a = &self.assessment;
        let status = match a.verdict {
            Verdict::Consistent => Status::True,
            Verdict::Inconsistent | Verdict::NoMajority => Status::False,
            Verdict::Unknown => Status::Unknown,
        };
        let mut message = a.message.clone();
        if let Some(b) = &a.blocked {
            message = format!("{message}; {}", b.message);
        }
        if let Some(f) = &self.failing {
            message = format!("{message}; last repair failed: {f}");
        }
        Computed::new(
            types::MEMBERSHIP_CONSISTENT,
            status,
            a.reason.clone(),
            message,
        )
    }

    /// Why the cluster is degraded because of its membership, if it is: no majority, a node
    /// outside the cluster, or a failing repair.
    pub fn degraded(&self) -> Option<(&'static str, String)> {
        let a = &self.assessment;
        match (&a.verdict, a.reason.as_str()) {
            (Verdict::NoMajority, _) => Some(("NoMajorityPartition", a.message.clone())),
            (Verdict::Inconsistent, "StrayNode" | "ForgottenNode") => {
                Some(("MembershipInconsistent", a.message.clone()))
            }
            _ => self
                .failing
                .as_ref()
                .map(|f| {
                    (
                        "RepairFailed",
                        format!("the last membership repair failed: {f}"),
                    )
                })
                .or_else(|| {
                    self.assessment
                        .unhealthy()
                        .map(|m| ("NodesUnhealthy", format!("health checks fail: {m}")))
                }),
        }
    }
}

/// Applies a membership report to freshly computed conditions: adds `MembershipConsistent`,
/// and turns `Degraded` True and `Ready` False when membership is broken.
pub fn apply_to_conditions(computed: &mut Vec<Computed>, report: &Report) {
    computed.retain(|c| c.type_ != types::MEMBERSHIP_CONSISTENT);
    computed.push(report.condition());
    let Some((reason, message)) = report.degraded() else {
        return;
    };
    for c in computed.iter_mut() {
        if c.type_ == types::DEGRADED && c.status != Status::True {
            *c = Computed::new(types::DEGRADED, Status::True, reason, message.clone());
        }
        if c.type_ == types::READY && c.status == Status::True {
            *c = Computed::new(types::READY, Status::False, reason, message.clone());
        }
    }
}

/// A running monitor.
struct MonitorHandle {
    uid: String,
    cluster: watch::Sender<Arc<BrokerCluster>>,
    stop: CancellationToken,
}

/// Monitors, their reports, and the channel through which they ask for reconciles. One per
/// leadership term (it lives in the controller's [`crate::context::Context`]).
pub struct Registry {
    monitors: Mutex<HashMap<String, MonitorHandle>>,
    reports: Mutex<HashMap<String, Arc<Report>>>,
    trigger: mpsc::UnboundedSender<ObjectRef<BrokerCluster>>,
    trigger_rx: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<BrokerCluster>>>>,
    stores: OnceLock<Stores>,
    /// Cancelled when the controller stops: every monitor ends.
    pub shutdown: CancellationToken,
}

impl Default for Registry {
    fn default() -> Self {
        let (trigger, rx) = mpsc::unbounded_channel();
        Self {
            monitors: Mutex::new(HashMap::new()),
            reports: Mutex::new(HashMap::new()),
            trigger,
            trigger_rx: Mutex::new(Some(rx)),
            stores: OnceLock::new(),
            shutdown: CancellationToken::new(),
        }
    }
}

impl Registry {
    /// The receiving end of reconcile requests (taken once, by the controller).
    pub fn take_triggers(&self) -> Option<mpsc::UnboundedReceiver<ObjectRef<BrokerCluster>>> {
        lock(&self.trigger_rx).take()
    }

    /// Sets the Pod and StatefulSet caches (once, by the controller).
    pub fn set_stores(&self, stores: Stores) {
        let _ = self.stores.set(stores);
    }

    /// The Pod and StatefulSet caches, once the controller has set them.
    pub fn stores(&self) -> Option<&Stores> {
        self.stores.get()
    }

    /// The latest report of `key` (`namespace/name`).
    pub fn report(&self, key: &str) -> Option<Arc<Report>> {
        lock(&self.reports).get(key).cloned()
    }

    /// Every cluster's latest report.
    pub fn reports(&self) -> Vec<(String, Arc<Report>)> {
        lock(&self.reports)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Records a report; asks for a reconcile when it differs from the previous one.
    fn publish(&self, key: &str, bc: &BrokerCluster, report: Report) {
        let changed = {
            let mut reports = lock(&self.reports);
            let changed = reports.get(key).is_none_or(|old| **old != report);
            reports.insert(key.to_string(), Arc::new(report));
            changed
        };
        if changed {
            let _ = self.trigger.send(ObjectRef::from_obj(bc));
        }
    }

    /// Forgets a cluster that is gone.
    fn remove(&self, key: &str, uid: &str) {
        let mut monitors = lock(&self.monitors);
        if monitors.get(key).is_some_and(|m| m.uid == uid) {
            monitors.remove(key);
            lock(&self.reports).remove(key);
        }
    }

    /// Hands the newest BrokerCluster to its monitor; returns false when none runs for it
    /// (then the caller starts one with [`spawn`]).
    fn update(&self, key: &str, bc: &Arc<BrokerCluster>) -> bool {
        let uid = bc.uid().unwrap_or_default();
        let mut monitors = lock(&self.monitors);
        match monitors.get(key) {
            Some(m) if m.uid == uid && !m.stop.is_cancelled() => {
                m.cluster.send_replace(bc.clone());
                true
            }
            Some(m) => {
                m.stop.cancel();
                monitors.remove(key);
                false
            }
            None => false,
        }
    }

    fn insert(
        &self,
        key: &str,
        uid: String,
        cluster: watch::Sender<Arc<BrokerCluster>>,
        stop: CancellationToken,
    ) {
        lock(&self.monitors).insert(key.to_string(), MonitorHandle { uid, cluster, stop });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn report(verdict: Verdict, reason: &str) -> Report {
        Report {
            assessment: Assessment {
                members: vec![plan::Member {
                    pod: "bus-2".into(),
                    node: "rabbit@bus-2".into(),
                    view: vec!["rabbit@bus-2".into()],
                    state: NodeState::Stray,
                    error: None,
                    failed_checks: None,
                }],
                majority: None,
                verdict,
                reason: reason.into(),
                message: "m".into(),
                repair: None,
                blocked: Some(plan::Blocked {
                    cause: "Rollout",
                    message: "a rollout is in progress".into(),
                    pod: "bus-2".into(),
                }),
            },
            repairs: BTreeMap::from([(
                "rabbit@bus-2".to_string(),
                RepairRecord {
                    time: Time(Timestamp::UNIX_EPOCH),
                    result: "joined".into(),
                    ok: true,
                },
            )]),
            failing: None,
        }
    }

    fn healthy() -> Vec<Computed> {
        vec![
            Computed::new(types::DEGRADED, Status::False, "Healthy", ""),
            Computed::new(types::READY, Status::True, "AllNodesReady", ""),
        ]
    }

    #[test]
    fn a_stray_makes_the_cluster_degraded_and_not_ready() {
        let r = report(Verdict::Inconsistent, "StrayNode");
        let mut c = healthy();
        apply_to_conditions(&mut c, &r);
        let find = |t: &str| c.iter().find(|x| x.type_ == t).unwrap().clone();
        assert_eq!(find(types::DEGRADED).status, Status::True);
        assert_eq!(find(types::DEGRADED).reason, "MembershipInconsistent");
        assert_eq!(find(types::READY).status, Status::False);
        let m = find(types::MEMBERSHIP_CONSISTENT);
        assert_eq!((m.status, m.reason.as_str()), (Status::False, "StrayNode"));
        assert!(m.message.contains("rollout"), "{}", m.message);
        let members = r.members();
        assert_eq!(members[0].state, "Stray");
        assert_eq!(members[0].last_repair_result.as_deref(), Some("joined"));
    }

    #[test]
    fn no_majority_is_degraded_and_views_that_differ_are_not() {
        let mut c = healthy();
        apply_to_conditions(&mut c, &report(Verdict::NoMajority, "NoMajority"));
        assert!(c
            .iter()
            .any(|x| x.type_ == types::DEGRADED && x.reason == "NoMajorityPartition"));

        let mut c = healthy();
        apply_to_conditions(&mut c, &report(Verdict::Inconsistent, "ViewsDiffer"));
        assert!(c
            .iter()
            .any(|x| x.type_ == types::READY && x.status == Status::True));
    }

    #[test]
    fn a_failing_repair_is_degraded() {
        let mut r = report(Verdict::Consistent, "Consistent");
        r.failing = Some("join timed out".into());
        let mut c = healthy();
        apply_to_conditions(&mut c, &r);
        assert!(c
            .iter()
            .any(|x| x.type_ == types::DEGRADED && x.reason == "RepairFailed"));
        assert!(c.iter().any(
            |x| x.type_ == types::MEMBERSHIP_CONSISTENT && x.message.contains("join timed out")
        ));
    }
}
