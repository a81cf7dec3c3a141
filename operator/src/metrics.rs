//! Prometheus metrics of the operator, served at `/metrics`.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`crate::Error::reason`].
    pub reason: String,
}

/// Labels of the repair counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepairLabels {
    /// `JoinStray`, `RemoveGhost` or `ResetForgotten`.
    pub kind: String,
    /// `success` or `failure`.
    pub result: String,
}

/// Labels of per-cluster gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// `namespace/name` of the BrokerCluster.
    pub cluster: String,
}

/// Labels of the firing-alerts gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// `namespace/name` of the BrokerCluster.
    pub cluster: String,
    /// The alert's name.
    pub alert: String,
    /// `critical` or `warning`.
    pub severity: String,
}

/// The operator's metrics.
pub struct Metrics {
    /// Reconciles run.
    pub reconciliations: Counter,
    /// Reconciles that failed, by reason.
    pub failures: Family<ErrorLabels, Counter>,
    /// Reconcile duration.
    pub duration: Histogram,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// Membership checks run (one per cluster per interval).
    pub membership_checks: Counter,
    /// Membership repairs, by kind and result.
    pub repairs: Family<RepairLabels, Counter>,
    /// From a problem's detection to the repair that fixed it.
    pub time_to_repair: Histogram,
    /// Nodes outside the majority partition (strays and forgotten nodes), per cluster.
    pub nodes_out_of_cluster: Family<ClusterLabels, Gauge>,
    /// 1 per alert that fires.
    pub alerts_firing: Family<AlertLabels, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            reconciliations: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            leader: Gauge::default(),
            membership_checks: Counter::default(),
            repairs: Family::default(),
            time_to_repair: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            nodes_out_of_cluster: Family::default(),
            alerts_firing: Family::default(),
        };
        registry.register(
            "mooring_reconciliations",
            "BrokerCluster reconciles run",
            m.reconciliations.clone(),
        );
        registry.register(
            "mooring_reconcile_failures",
            "BrokerCluster reconciles that failed, by reason",
            m.failures.clone(),
        );
        registry.register(
            "mooring_reconcile_duration_seconds",
            "Duration of one BrokerCluster reconcile",
            m.duration.clone(),
        );
        registry.register(
            "mooring_leader",
            "1 while this operator replica holds the leader lease",
            m.leader.clone(),
        );
        registry.register(
            "mooring_membership_checks",
            "Membership checks run: every ready node asked for its own view",
            m.membership_checks.clone(),
        );
        registry.register(
            "mooring_membership_repairs",
            "Membership repairs, by kind and result",
            m.repairs.clone(),
        );
        registry.register(
            "mooring_membership_time_to_repair_seconds",
            "From detecting a stray, forgotten or ghost node to the repair that fixed it",
            m.time_to_repair.clone(),
        );
        registry.register(
            "mooring_membership_nodes_out_of_cluster",
            "Broker nodes outside the majority partition (stray or forgotten), per cluster",
            m.nodes_out_of_cluster.clone(),
        );
        registry.register(
            "mooring_alerts_firing",
            "Alerts that fire, by cluster, name and severity",
            m.alerts_firing.clone(),
        );
        m
    }

    /// Counts a repair.
    pub fn repaired(&self, kind: &str, ok: bool) {
        self.repairs
            .get_or_create(&RepairLabels {
                kind: kind.to_string(),
                result: if ok { "success" } else { "failure" }.to_string(),
            })
            .inc();
    }

    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn start_reconcile(&self) -> ReconcileTimer<'_> {
        self.reconciliations.inc();
        ReconcileTimer {
            histogram: &self.duration,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn failed(&self, reason: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// Records the reconcile duration when dropped.
pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn reconciles_failures_and_durations_are_exported() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        drop(m.start_reconcile());
        m.failed("ApplyFailed");
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(out.contains("mooring_reconciliations_total 1"), "{out}");
        assert!(
            out.contains("mooring_reconcile_failures_total{reason=\"ApplyFailed\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("mooring_reconcile_duration_seconds_count 1"),
            "{out}"
        );
    }
}
