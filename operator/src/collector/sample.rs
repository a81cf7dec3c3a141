//! What one collection round saw of a cluster, and the bounded history of those samples (pure).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::lb_stats::LbSample;
use crate::drivers::{Alarm, NodeStats, TopicMetric};

/// Samples kept per cluster: one hour at the default 10 s interval.
pub const HISTORY_LEN: usize = 360;

/// One broker node in a sample: figures only, its names shared with the previous sample
/// ([`Sample::share_names`]), so that an hour of samples stays small (about 170 bytes per node
/// and sample).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeSample {
    /// The Pod that runs it.
    #[serde(serialize_with = "as_str")]
    pub pod: Arc<str>,
    /// The broker's node name.
    #[serde(serialize_with = "as_str")]
    pub node: Arc<str>,
    /// It answered and runs the broker.
    pub up: bool,
    /// Client connections.
    pub connections: Option<u64>,
    /// The most connections it can hold, when the broker tells.
    pub connections_limit: Option<u64>,
    /// Memory used, in bytes.
    pub memory_used_bytes: Option<u64>,
    /// The memory the broker may use (its limit or high watermark), in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Uptime in seconds.
    pub uptime_seconds: Option<u64>,
    /// CPU use in percent of the Pod's CPU limit (else request), from the resource metrics API.
    pub cpu_percent: Option<u16>,
    /// Broker version.
    #[serde(serialize_with = "as_opt_str")]
    pub version: Option<Arc<str>>,
    /// Why there are no figures (no Pod, no Pod IP, the call failed).
    pub error: Option<String>,
}

impl NodeSample {
    /// A node that answered its stats call.
    pub fn answered(pod: &str, node: &str, stats: &NodeStats) -> Self {
        Self {
            pod: pod.into(),
            node: node.into(),
            up: stats.running,
            connections: stats.connections,
            connections_limit: stats.connections_limit,
            memory_used_bytes: stats.memory_used_bytes,
            memory_limit_bytes: stats.memory_limit_bytes,
            uptime_seconds: stats.uptime_seconds,
            cpu_percent: None,
            version: stats.version.as_deref().map(Arc::from),
            error: None,
        }
    }

    /// A node that could not be asked, or did not answer.
    pub fn failed(pod: &str, node: &str, error: String) -> Self {
        Self {
            pod: pod.into(),
            node: node.into(),
            up: false,
            connections: None,
            connections_limit: None,
            memory_used_bytes: None,
            memory_limit_bytes: None,
            uptime_seconds: None,
            cpu_percent: None,
            version: None,
            error: Some(error),
        }
    }
}

fn as_str<S: serde::Serializer>(s: &Arc<str>, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s)
}

fn as_opt_str<S: serde::Serializer>(s: &Option<Arc<str>>, ser: S) -> Result<S::Ok, S::Error> {
    match s {
        Some(s) => ser.serialize_some(&**s),
        None => ser.serialize_none(),
    }
}

/// `candidate`, or the equal string of `previous` (one allocation for every sample).
fn share(candidate: &mut Arc<str>, previous: &Arc<str>) {
    if **candidate == **previous {
        *candidate = previous.clone();
    }
}

/// One collection round of one cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// When the round started.
    pub at: Timestamp,
    /// Every expected node, in ordinal order.
    pub nodes: Vec<NodeSample>,
    /// Figures of the metered topics (`None` when the call failed or no node could be asked).
    pub topics: Option<Vec<TopicMetric>>,
    /// The broker's active alarms (`None` when the call failed or no node could be asked).
    pub alarms: Option<Vec<Alarm>>,
    /// What each HAProxy replica of the load balancer thinks of the brokers (`None` without a
    /// load balancer).
    pub lb: Option<LbSample>,
}

/// Cluster-wide figures of a sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Nodes that answered and run the broker.
    pub nodes_up: usize,
    /// Nodes expected.
    pub nodes: usize,
    /// Client connections over the nodes that answered.
    pub connections: u64,
    /// Memory used over the nodes that answered, in bytes.
    pub memory_used_bytes: u64,
}

impl Sample {
    /// Cluster-wide figures.
    pub fn totals(&self) -> Totals {
        Totals {
            nodes_up: self.nodes.iter().filter(|n| n.up).count(),
            nodes: self.nodes.len(),
            connections: self.nodes.iter().filter_map(|n| n.connections).sum(),
            memory_used_bytes: self.nodes.iter().filter_map(|n| n.memory_used_bytes).sum(),
        }
    }

    /// Replaces the node names and versions equal to those of `previous` (same position) by
    /// `previous`'s, so that the history keeps one copy of each.
    pub fn share_names(&mut self, previous: &Sample) {
        for (n, p) in self.nodes.iter_mut().zip(&previous.nodes) {
            share(&mut n.pod, &p.pod);
            share(&mut n.node, &p.node);
            if let (Some(v), Some(pv)) = (n.version.as_mut(), p.version.as_ref()) {
                share(v, pv);
            }
        }
    }

    /// Messages dropped on the metered topics so far, when the broker counts them.
    pub fn dropped(&self) -> Option<u64> {
        let topics = self.topics.as_ref()?;
        let counted: Vec<u64> = topics.iter().filter_map(|t| t.messages_dropped).collect();
        (!counted.is_empty()).then(|| counted.iter().sum())
    }
}

/// The last samples of one cluster, oldest first, at most `capacity`.
#[derive(Clone, Debug)]
pub struct History {
    capacity: usize,
    samples: VecDeque<Arc<Sample>>,
}

impl Default for History {
    fn default() -> Self {
        Self::with_capacity(HISTORY_LEN)
    }
}

impl History {
    /// A history of at most `capacity` samples (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample, dropping the oldest when full.
    pub fn push(&mut self, sample: Arc<Sample>) {
        while self.samples.len() >= self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Arc<Sample>> {
        self.samples.iter().cloned().collect()
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<Arc<Sample>> {
        self.samples.back().cloned()
    }

    /// How many samples it holds.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// The histories of every cluster, shared with the HTTP server (and the dashboard).
#[derive(Default)]
pub struct Histories {
    clusters: Mutex<HashMap<String, History>>,
}

impl Histories {
    /// Adds a sample of `cluster` (sharing its names with the previous one); returns its
    /// history's samples, oldest first.
    pub fn record(&self, cluster: &str, mut sample: Sample) -> Vec<Arc<Sample>> {
        let mut clusters = self.lock();
        let h = clusters.entry(cluster.to_string()).or_default();
        if let Some(previous) = h.latest() {
            sample.share_names(&previous);
        }
        h.push(Arc::new(sample));
        h.samples()
    }

    /// The samples of `cluster`, oldest first.
    pub fn of_cluster(&self, cluster: &str) -> Vec<Arc<Sample>> {
        self.lock()
            .get(cluster)
            .map(History::samples)
            .unwrap_or_default()
    }

    /// The newest sample of `cluster`.
    pub fn latest(&self, cluster: &str) -> Option<Arc<Sample>> {
        self.lock().get(cluster).and_then(History::latest)
    }

    /// The clusters with a history.
    pub fn clusters(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.lock().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Forgets a cluster that is gone.
    pub fn forget(&self, cluster: &str) {
        self.lock().remove(cluster);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, History>> {
        self.clusters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A node that answered with these figures.
    pub(crate) fn up(i: usize, connections: u64, used: u64, limit: u64) -> NodeSample {
        let node = format!("emqx@bus-{i}");
        NodeSample::answered(
            &format!("bus-{i}"),
            &node,
            &NodeStats {
                node: node.clone(),
                running: true,
                connections: Some(connections),
                memory_used_bytes: Some(used),
                memory_limit_bytes: Some(limit),
                connections_limit: Some(1000),
                version: Some("5.8.9".into()),
                ..NodeStats::default()
            },
        )
    }

    /// A node whose stats call failed.
    pub(crate) fn down(i: usize) -> NodeSample {
        NodeSample::failed(
            &format!("bus-{i}"),
            &format!("emqx@bus-{i}"),
            "node_stats: no answer within 5s".into(),
        )
    }

    pub(crate) fn sample(second: i64, nodes: Vec<NodeSample>) -> Sample {
        Sample {
            at: Timestamp::from_second(second).unwrap(),
            nodes,
            topics: Some(Vec::new()),
            alarms: Some(Vec::new()),
            lb: None,
        }
    }

    #[test]
    fn a_node_sample_is_small_and_serializes_its_names_as_text() {
        assert!(std::mem::size_of::<NodeSample>() <= 176);
        let json = serde_json::to_value(up(0, 1, 2, 3)).unwrap();
        assert_eq!(json["node"], "emqx@bus-0");
        assert_eq!(json["version"], "5.8.9");
        assert_eq!(json["up"], true);
        assert_eq!(
            serde_json::to_value(down(1)).unwrap()["version"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn totals_count_the_nodes_that_answered() {
        let s = sample(0, vec![up(0, 10, 100, 1000), up(1, 5, 50, 1000), down(2)]);
        assert_eq!(
            s.totals(),
            Totals {
                nodes_up: 2,
                nodes: 3,
                connections: 15,
                memory_used_bytes: 150
            }
        );
    }

    #[test]
    fn drops_are_summed_over_the_topics_that_count_them() {
        let mut s = sample(0, vec![]);
        assert_eq!(s.dropped(), None);
        s.topics = Some(vec![
            TopicMetric {
                topic: "a".into(),
                messages_dropped: Some(3),
                ..TopicMetric::default()
            },
            TopicMetric {
                topic: "b".into(),
                messages_dropped: Some(4),
                ..TopicMetric::default()
            },
            TopicMetric {
                topic: "c".into(),
                ..TopicMetric::default()
            },
        ]);
        assert_eq!(s.dropped(), Some(7));
        s.topics = None;
        assert_eq!(s.dropped(), None);
    }

    #[test]
    fn the_history_is_bounded_and_keeps_the_newest() {
        let mut h = History::with_capacity(3);
        for i in 0..5 {
            h.push(Arc::new(sample(i, vec![])));
        }
        assert_eq!(h.len(), 3);
        let secs: Vec<i64> = h.samples().iter().map(|s| s.at.as_second()).collect();
        assert_eq!(secs, [2, 3, 4]);
        assert_eq!(h.latest().unwrap().at.as_second(), 4);
        assert_eq!(History::default().capacity, HISTORY_LEN);

        let all = Histories::default();
        all.record("ns/a", sample(1, vec![up(0, 0, 0, 1)]));
        let kept = all.record("ns/a", sample(2, vec![up(0, 0, 0, 1)]));
        assert_eq!(kept.len(), 2);
        // One copy of the names for the whole history.
        assert!(Arc::ptr_eq(&kept[0].nodes[0].node, &kept[1].nodes[0].node));
        assert!(Arc::ptr_eq(&kept[0].nodes[0].pod, &kept[1].nodes[0].pod));
        let (v0, v1) = (&kept[0].nodes[0].version, &kept[1].nodes[0].version);
        assert!(Arc::ptr_eq(v0.as_ref().unwrap(), v1.as_ref().unwrap()));
        assert_eq!(all.latest("ns/a").unwrap().at.as_second(), 2);
        assert_eq!(all.clusters(), ["ns/a"]);
        all.forget("ns/a");
        assert!(all.of_cluster("ns/a").is_empty() && all.latest("ns/a").is_none());
    }
}
