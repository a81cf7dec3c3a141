//! Telemetry of every BrokerCluster and the alert rules over it.
//!
//! Every [`poller::INTERVAL`], the collector asks each broker node of each cluster for its
//! figures through the cluster's driver (clusters polled [`poller::CLUSTER_CONCURRENCY`] at a
//! time, every call with a time limit), and one node that answered for the metered topics
//! (`spec.monitoring.meteredTopics`: EMQX topic metrics, registered by the driver; RabbitMQ: its
//! subscription queues) and the broker's alarms. One round costs one call per node plus two per
//! cluster: it grows linearly with the number of nodes. Each round's [`Sample`] goes into the
//! cluster's bounded [`History`] (one hour at 10 s), into the per-node and per-cluster gauges at
//! `/metrics`, and through the [`rules`] (pure) into the alerts registry, which records the
//! transitions and sends them to webhooks; the collector turns each transition into an Event.
//!
//! Its rules: a node down (one minute; five for a node never seen up), memory and connections
//! above `spec.monitoring.alerts` (of the node's memory limit and of the most connections it
//! can hold), dropped messages rising on the metered topics, and every broker alarm. Membership
//! repair raises its own alerts (no majority, inconsistent membership, failed repair, unhealthy
//! node) through the same registry. Not evaluated yet: CPU (`cpuPercent`; the drivers report no
//! CPU use) and load balancer backends.

pub mod lb_stats;
pub mod pod_metrics;
pub mod poller;
pub mod rules;
pub mod sample;

pub use poller::run;
pub use sample::{Histories, History, NodeSample, Sample, Totals, HISTORY_LEN};
