//! What the dashboard shows, as the server sends it to the browser. Shared by both halves, so
//! plain data only: no secret ever goes into one of these.

use serde::{Deserialize, Serialize};

/// What a signed-in user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Sees everything, changes nothing.
    Viewer,
    /// May also kick clients and change the metered topics.
    Admin,
}

impl Role {
    /// `viewer` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }

    /// Parses `viewer` or `admin`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "viewer" => Some(Role::Viewer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The signed-in user, as the pages need it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    /// The user (or token) name.
    pub user: String,
    /// What they may do.
    pub role: Role,
    /// The token every changing call must carry (bound to this session).
    pub csrf: String,
}

/// A cluster as the overview lists it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterSummary {
    /// Namespace of the BrokerCluster.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `emqx` or `rabbitmq`.
    pub broker: String,
    /// Broker version (spec).
    pub version: String,
    /// The Ready condition is True.
    pub ready: bool,
    /// The Ready condition's reason (or `Unknown`).
    pub reason: String,
    /// The Ready condition's message.
    pub message: String,
    /// Nodes asked for.
    pub replicas: i32,
    /// Pods ready.
    pub ready_replicas: i32,
    /// Nodes that answered the last telemetry round and run the broker.
    pub nodes_up: usize,
    /// Nodes that are members of the cluster by their own view (joined).
    pub nodes_joined: usize,
    /// Client connections over the nodes (last round).
    pub connections: u64,
    /// Alerts firing for this cluster.
    pub active_alerts: usize,
    /// Mooring runs the sticky load balancer in front of it.
    pub load_balancer: bool,
}

/// One condition of a cluster's status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionRow {
    /// `Ready`, `Progressing`, `MembershipConsistent`, ...
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable reason.
    pub reason: String,
    /// What happened.
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub since: String,
}

/// One broker node on the cluster page.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    /// The Pod that runs it.
    pub pod: String,
    /// The broker's node name.
    pub node: String,
    /// `core`, `replicant`, `disc`, ... when the broker tells.
    pub role: Option<String>,
    /// `up`, `down` or `unknown` (no telemetry yet).
    pub status: String,
    /// The membership state Mooring found: `joined`, `stray`, `unreachable`, ...
    pub membership: String,
    /// The node passes its health checks (None: not checked yet).
    pub healthy: Option<bool>,
    /// Failed health checks.
    pub failed_checks: Vec<String>,
    /// Client connections.
    pub connections: Option<u64>,
    /// The most connections it can hold.
    pub connections_limit: Option<u64>,
    /// Memory used, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Memory it may use, bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Uptime, seconds.
    pub uptime_seconds: Option<u64>,
    /// CPU use in percent of the Pod's limit (needs metrics-server).
    pub cpu_percent: Option<u16>,
    /// Broker version it reports.
    pub version: Option<String>,
    /// Why there are no figures.
    pub error: Option<String>,
    /// The last repair of this node: when and how it went.
    pub last_repair: Option<String>,
}

/// Which node sees which as a member: `rows[i].sees[j]` is node i's view of `columns[j]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipMatrix {
    /// Every node named by anyone: the expected ones first, then ghosts.
    pub columns: Vec<String>,
    /// One row per expected node.
    pub rows: Vec<MatrixRow>,
}

/// One node's own view of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixRow {
    /// The node whose view this is.
    pub node: String,
    /// Per column: `Some(true)` it lists it, `Some(false)` it does not, `None` no view (the node
    /// did not answer).
    pub sees: Vec<Option<bool>>,
}

/// One broker server as one HAProxy replica of the sticky load balancer sees it (from its stats
/// page, read by the collector).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRow {
    /// The HAProxy Pod.
    pub lb_pod: String,
    /// The broker Pod behind the server.
    pub server: String,
    /// Where HAProxy sends clients.
    pub address: String,
    /// HAProxy's status: `UP`, `DOWN`, `DRAIN`, `MAINT`, ...
    pub state: String,
    /// The last health check (for example `L7OK`, `L4CON (Layer4 connection problem)`), or why
    /// the replica could not be asked.
    pub reason: String,
}

/// A Kubernetes Event about the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    /// When it last happened (RFC 3339).
    pub time: String,
    /// `Normal` or `Warning`.
    pub type_: String,
    /// Machine-readable reason.
    pub reason: String,
    /// What happened.
    pub message: String,
    /// How many times.
    pub count: i32,
}

/// One point of a cluster-wide figure over time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TotalsPoint {
    /// Unix seconds.
    pub at: i64,
    /// Nodes up.
    pub nodes_up: usize,
    /// Client connections.
    pub connections: u64,
}

/// Everything the cluster page shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterDetail {
    /// The overview line.
    pub summary: ClusterSummary,
    /// Status conditions.
    pub conditions: Vec<ConditionRow>,
    /// Nodes, in ordinal order.
    pub nodes: Vec<NodeRow>,
    /// Who sees whom.
    pub matrix: MembershipMatrix,
    /// Load balancer servers (empty without the load balancer).
    pub backends: Vec<BackendRow>,
    /// Recent Events, newest first.
    pub events: Vec<EventRow>,
    /// A scale-down in progress, described.
    pub scale_down: Option<String>,
    /// Cluster-wide figures over the kept history, oldest first.
    pub history: Vec<TotalsPoint>,
    /// Seconds between telemetry rounds.
    pub interval_seconds: u64,
}

/// Which clients to list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSearch {
    /// Text the client id (or username, with `by_username`) contains; empty for all.
    pub text: String,
    /// Search usernames instead of client ids.
    pub by_username: bool,
    /// 1-based page.
    pub page: u32,
    /// Clients per page (1..=500).
    pub limit: u32,
}

impl Default for ClientSearch {
    fn default() -> Self {
        Self {
            text: String::new(),
            by_username: false,
            page: 1,
            limit: 50,
        }
    }
}

/// One connected client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRow {
    /// MQTT client id.
    pub client_id: String,
    /// Username.
    pub username: Option<String>,
    /// Broker node it is connected to.
    pub node: String,
    /// Connected now.
    pub connected: bool,
    /// Connected since (RFC 3339).
    pub connected_at: Option<String>,
    /// Address:port.
    pub address: Option<String>,
    /// Protocol version.
    pub protocol: Option<String>,
    /// Subscriptions.
    pub subscriptions: Option<u64>,
    /// Messages queued for it.
    pub queue_len: Option<u64>,
}

/// A page of clients.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientsPage {
    /// This page.
    pub clients: Vec<ClientRow>,
    /// Page number.
    pub page: u32,
    /// Page size.
    pub limit: u32,
    /// A next page exists.
    pub has_next: bool,
    /// Matches in all, when the broker counts them.
    pub total: Option<u64>,
}

/// One point of a topic's rates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RatePoint {
    /// Unix seconds.
    pub at: i64,
    /// Messages per second in (None: no figure in that round).
    pub rate_in: Option<f64>,
    /// Messages per second out.
    pub rate_out: Option<f64>,
}

/// A metered topic over time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TopicSeries {
    /// The topic.
    pub topic: String,
    /// Its rates, oldest first.
    pub points: Vec<RatePoint>,
    /// Messages in, in all (last round).
    pub messages_in: Option<u64>,
    /// Messages out, in all (last round).
    pub messages_out: Option<u64>,
    /// Messages dropped (last round).
    pub messages_dropped: Option<u64>,
    /// Subscribers (last round).
    pub subscribers: Option<u64>,
    /// Messages queued in its subscriptions (last round).
    pub queued: Option<u64>,
}

/// The topics page.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TopicsView {
    /// The metered topics (spec.monitoring.meteredTopics).
    pub metered: Vec<String>,
    /// One series per metered topic.
    pub series: Vec<TopicSeries>,
    /// Seconds between telemetry rounds.
    pub interval_seconds: u64,
    /// Why the last round has no topic figures, if it has none.
    pub error: Option<String>,
}

/// An alert, firing or in the history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRow {
    /// `namespace/name` of the cluster.
    pub cluster: String,
    /// Alert name, for example `NodeDown`.
    pub name: String,
    /// `critical`, `warning` or `info`.
    pub severity: String,
    /// `firing` or `resolved`.
    pub state: String,
    /// The labels that tell this alert from others of its name (node, alarm), `k=v` joined.
    pub subject: String,
    /// What is wrong.
    pub message: String,
    /// When it fired (active) or changed (history), RFC 3339.
    pub at: String,
}

/// The alerts page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsView {
    /// Firing now.
    pub active: Vec<AlertRow>,
    /// Fired and resolved, newest first.
    pub history: Vec<AlertRow>,
}
