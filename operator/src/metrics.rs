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

/// Labels of per-node gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// `namespace/name` of the BrokerCluster.
    pub cluster: String,
    /// The broker's node name.
    pub node: String,
}

/// Labels of the collector's failed-call counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The driver operation (`node_stats`, `topic_metrics`, `alarms`).
    pub op: String,
}

/// One node's figures, as the collector last saw them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeFigures {
    /// It answered and runs the broker.
    pub up: bool,
    /// Client connections.
    pub connections: Option<u64>,
    /// The most connections it can hold.
    pub connections_limit: Option<u64>,
    /// Memory used, in bytes.
    pub memory_used_bytes: Option<u64>,
    /// Its memory limit or high watermark, in bytes.
    pub memory_limit_bytes: Option<u64>,
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
    /// Alerts that fire, by cluster, name and severity.
    pub alerts_firing: Family<AlertLabels, Gauge>,
    /// Collection rounds run (every cluster's nodes polled once).
    pub collector_rounds: Counter,
    /// Duration of one collection round.
    pub collector_duration: Histogram,
    /// Driver calls of the collector that failed or timed out, by operation.
    pub collector_call_failures: Family<CallLabels, Counter>,
    /// 1 when the node answered and runs the broker, else 0.
    pub node_up: Family<NodeLabels, Gauge>,
    /// Client connections per node.
    pub node_connections: Family<NodeLabels, Gauge>,
    /// The most connections a node can hold.
    pub node_connections_limit: Family<NodeLabels, Gauge>,
    /// Memory used per node, in bytes.
    pub node_memory_used: Family<NodeLabels, Gauge>,
    /// Memory limit (or high watermark) per node, in bytes.
    pub node_memory_limit: Family<NodeLabels, Gauge>,
    /// Nodes that answered and run the broker, per cluster.
    pub cluster_nodes_up: Family<ClusterLabels, Gauge>,
    /// Client connections per cluster.
    pub cluster_connections: Family<ClusterLabels, Gauge>,
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
            collector_rounds: Counter::default(),
            collector_duration: Histogram::new(exponential_buckets(0.05, 2.0, 10)),
            collector_call_failures: Family::default(),
            node_up: Family::default(),
            node_connections: Family::default(),
            node_connections_limit: Family::default(),
            node_memory_used: Family::default(),
            node_memory_limit: Family::default(),
            cluster_nodes_up: Family::default(),
            cluster_connections: Family::default(),
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
        registry.register(
            "mooring_collector_rounds",
            "Telemetry collection rounds run (every cluster's nodes polled once)",
            m.collector_rounds.clone(),
        );
        registry.register(
            "mooring_collector_round_duration_seconds",
            "Duration of one telemetry collection round over every cluster",
            m.collector_duration.clone(),
        );
        registry.register(
            "mooring_collector_call_failures",
            "Broker calls of the telemetry collector that failed or timed out, by operation",
            m.collector_call_failures.clone(),
        );
        registry.register(
            "mooring_node_up",
            "1 when the broker node answered and runs the broker, else 0",
            m.node_up.clone(),
        );
        registry.register(
            "mooring_node_connections",
            "Client connections per broker node",
            m.node_connections.clone(),
        );
        registry.register(
            "mooring_node_connections_limit",
            "The most client connections a broker node can hold (its file descriptor or socket limit)",
            m.node_connections_limit.clone(),
        );
        registry.register(
            "mooring_node_memory_used_bytes",
            "Memory used per broker node",
            m.node_memory_used.clone(),
        );
        registry.register(
            "mooring_node_memory_limit_bytes",
            "Memory limit (EMQX) or high watermark (RabbitMQ) per broker node",
            m.node_memory_limit.clone(),
        );
        registry.register(
            "mooring_cluster_nodes_up",
            "Broker nodes that answered and run the broker, per cluster",
            m.cluster_nodes_up.clone(),
        );
        registry.register(
            "mooring_cluster_connections",
            "Client connections per cluster",
            m.cluster_connections.clone(),
        );
        m
    }

    /// Exports one node's figures (a figure the broker did not give is left out).
    pub fn set_node(&self, cluster: &str, node: &str, figures: NodeFigures) {
        let labels = NodeLabels {
            cluster: cluster.to_string(),
            node: node.to_string(),
        };
        self.node_up
            .get_or_create(&labels)
            .set(i64::from(figures.up));
        for (family, value) in [
            (&self.node_connections, figures.connections),
            (&self.node_connections_limit, figures.connections_limit),
            (&self.node_memory_used, figures.memory_used_bytes),
            (&self.node_memory_limit, figures.memory_limit_bytes),
        ] {
            match value {
                Some(v) => {
                    family
                        .get_or_create(&labels)
                        .set(i64::try_from(v).unwrap_or(i64::MAX));
                }
                None => {
                    family.remove(&labels);
                }
            }
        }
    }

    /// Stops exporting a node (it left the cluster).
    pub fn remove_node(&self, cluster: &str, node: &str) {
        let labels = NodeLabels {
            cluster: cluster.to_string(),
            node: node.to_string(),
        };
        for family in [
            &self.node_up,
            &self.node_connections,
            &self.node_connections_limit,
            &self.node_memory_used,
            &self.node_memory_limit,
        ] {
            family.remove(&labels);
        }
    }

    /// Exports a cluster's totals.
    pub fn set_cluster(&self, cluster: &str, nodes_up: usize, connections: u64) {
        let labels = ClusterLabels {
            cluster: cluster.to_string(),
        };
        self.cluster_nodes_up
            .get_or_create(&labels)
            .set(i64::try_from(nodes_up).unwrap_or(i64::MAX));
        self.cluster_connections
            .get_or_create(&labels)
            .set(i64::try_from(connections).unwrap_or(i64::MAX));
    }

    /// Stops exporting a cluster's totals (its nodes are removed with [`Metrics::remove_node`]).
    pub fn remove_cluster(&self, cluster: &str) {
        let labels = ClusterLabels {
            cluster: cluster.to_string(),
        };
        self.cluster_nodes_up.remove(&labels);
        self.cluster_connections.remove(&labels);
    }

    /// Counts a failed collector call.
    pub fn collector_call_failed(&self, op: &str) {
        self.collector_call_failures
            .get_or_create(&CallLabels { op: op.to_string() })
            .inc();
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

    #[test]
    fn per_cluster_and_per_node_figures_are_exported_and_removed() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let figures = NodeFigures {
            up: true,
            connections: Some(42),
            connections_limit: Some(1000),
            memory_used_bytes: Some(1024),
            memory_limit_bytes: None,
        };
        m.set_node("iot/bus", "emqx@bus-0", figures);
        m.set_node("iot/bus", "emqx@bus-1", NodeFigures::default());
        m.set_cluster("iot/bus", 1, 42);
        m.collector_call_failed("node_stats");
        m.collector_rounds.inc();
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        for line in [
            "mooring_node_up{cluster=\"iot/bus\",node=\"emqx@bus-0\"} 1",
            "mooring_node_up{cluster=\"iot/bus\",node=\"emqx@bus-1\"} 0",
            "mooring_node_connections{cluster=\"iot/bus\",node=\"emqx@bus-0\"} 42",
            "mooring_node_connections_limit{cluster=\"iot/bus\",node=\"emqx@bus-0\"} 1000",
            "mooring_node_memory_used_bytes{cluster=\"iot/bus\",node=\"emqx@bus-0\"} 1024",
            "mooring_cluster_nodes_up{cluster=\"iot/bus\"} 1",
            "mooring_cluster_connections{cluster=\"iot/bus\"} 42",
            "mooring_collector_call_failures_total{op=\"node_stats\"} 1",
            "mooring_collector_rounds_total 1",
        ] {
            assert!(out.contains(line), "{line} missing from\n{out}");
        }
        // Unknown figures are left out rather than exported as 0.
        assert!(!out.contains("mooring_node_memory_limit_bytes{"), "{out}");
        assert!(!out.contains("mooring_node_connections{cluster=\"iot/bus\",node=\"emqx@bus-1\"}"));

        m.remove_node("iot/bus", "emqx@bus-0");
        m.remove_node("iot/bus", "emqx@bus-1");
        m.remove_cluster("iot/bus");
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(!out.contains("iot/bus"), "{out}");
    }
}
