//! The bounded history of alert transitions of each cluster (pure: no clock, no I/O).

use std::collections::{BTreeMap, HashMap, VecDeque};

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::Severity;

/// Transitions kept per cluster; older ones are dropped first.
pub const HISTORY_PER_CLUSTER: usize = 200;

/// Whether an alert started or stopped firing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// It started firing.
    Fired,
    /// It stopped firing.
    Resolved,
}

/// One alert starting or stopping to fire.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    /// When it happened.
    pub at: Timestamp,
    /// `namespace/name` of the cluster.
    pub cluster: String,
    /// The alert's name.
    pub name: String,
    /// The alert's own labels (for example `node`), empty for cluster-wide alerts.
    pub labels: BTreeMap<String, String>,
    /// Its severity.
    pub severity: Severity,
    /// Fired or resolved.
    pub change: Change,
    /// What was wrong.
    pub message: String,
}

/// The last transitions of every cluster, at most `capacity` per cluster.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    clusters: HashMap<String, VecDeque<Transition>>,
}

impl Default for History {
    fn default() -> Self {
        Self::with_capacity(HISTORY_PER_CLUSTER)
    }
}

impl History {
    /// A history that keeps `capacity` transitions per cluster (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            clusters: HashMap::new(),
        }
    }

    /// Records a transition, dropping the cluster's oldest one when full.
    pub fn record(&mut self, t: Transition) {
        let entries = self.clusters.entry(t.cluster.clone()).or_default();
        while entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back(t);
    }

    /// The transitions of `cluster`, oldest first.
    pub fn of_cluster(&self, cluster: &str) -> Vec<Transition> {
        self.clusters
            .get(cluster)
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a cluster that is gone.
    pub fn forget(&mut self, cluster: &str) {
        self.clusters.remove(cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(cluster: &str, i: i64) -> Transition {
        Transition {
            at: Timestamp::from_second(i).unwrap(),
            cluster: cluster.into(),
            name: format!("A{i}"),
            labels: BTreeMap::new(),
            severity: Severity::Warning,
            change: Change::Fired,
            message: String::new(),
        }
    }

    #[test]
    fn the_history_keeps_the_last_transitions_of_each_cluster() {
        let mut h = History::with_capacity(3);
        for i in 0..5 {
            h.record(t("ns/a", i));
        }
        h.record(t("ns/b", 9));
        let names: Vec<String> = h.of_cluster("ns/a").into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["A2", "A3", "A4"]);
        assert_eq!(h.of_cluster("ns/b").len(), 1);
        h.forget("ns/a");
        assert!(h.of_cluster("ns/a").is_empty());
    }
}
