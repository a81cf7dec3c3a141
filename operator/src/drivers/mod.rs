//! Broker drivers: one per broker kind, each a thin async client of the broker's own management
//! interface (EMQX's REST API, RabbitMQ's management API and CLI). Every call has a timeout; every
//! answer is parsed tolerantly (fields missing in older versions are `None`, never an error).
//!
//! The membership repair loop and the telemetry collector talk to brokers only through
//! [`Driver`]; which node a call goes to is always explicit ([`NodeTarget`]): Mooring asks every
//! node for its own view and never trusts a single node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use mooring_crds::BrokerKind;
use serde::Serialize;

use crate::pod_command::{CommandOutput, PodCommandError};

pub mod cluster;
pub mod emqx;
pub mod mqtt_probe;
pub mod pod_runner;
pub mod rabbitmq;

/// The default time limit of one HTTP call to a broker.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// The time limit of one CLI command (a command Pod's start, the CLI's VM and the command).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest wait for a TCP connection to a broker (capped by the call's time limit).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The HTTP client of every driver with this call time limit: one per limit for the whole
/// process, so that a thousand clusters share one connection pool and one TLS setup (a client
/// each cost the operator ~100 KiB per cluster). No proxy: brokers are always reached directly.
pub fn shared_http(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    static CLIENTS: OnceLock<Mutex<HashMap<Duration, reqwest::Client>>> = OnceLock::new();
    let mut clients = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(c) = clients.get(&timeout) {
        return Ok(c.clone());
    }
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .no_proxy()
        .build()?;
    clients.insert(timeout, client.clone());
    Ok(client)
}

/// One broker node, addressed directly (never through a Service).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeTarget {
    /// The Pod that runs the node.
    pub pod: String,
    /// Where the node's management interface is reached: the Pod IP (or a host name).
    pub host: String,
    /// The broker's node name, for example `rabbit@bus-0.bus-headless.iot.svc.cluster.local`.
    pub node: String,
}

/// Whether a node can serve clients, check by check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Health {
    /// All checks passed.
    pub healthy: bool,
    /// Each check with its outcome.
    pub checks: Vec<HealthCheck>,
}

impl Health {
    /// Health from checks: healthy when every check passed.
    pub fn from_checks(checks: Vec<HealthCheck>) -> Self {
        Self {
            healthy: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}

/// One health check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthCheck {
    /// What was checked, for example `mqtt-connect` or `alarms`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was seen (empty when it passed).
    pub detail: String,
}

/// A node's OWN view of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// The node that answered (its own name, as it reports it).
    pub node: String,
    /// Members it sees running, itself included, sorted.
    pub running: Vec<String>,
    /// Members it knows of that are not running, sorted.
    pub stopped: Vec<String>,
    /// Nodes it reports a network partition with (RabbitMQ), sorted.
    pub partitions: Vec<String>,
}

impl ClusterView {
    /// Every member the node knows of, running or not, sorted.
    pub fn members(&self) -> Vec<String> {
        let mut all: Vec<String> = self.running.iter().chain(&self.stopped).cloned().collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Which clients to list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientQuery {
    /// 1-based page number.
    pub page: u32,
    /// Clients per page (1..=1000).
    pub limit: u32,
    /// Only clients whose id contains this text.
    pub client_id: Option<String>,
    /// Only clients whose username contains this text.
    pub username: Option<String>,
}

impl Default for ClientQuery {
    fn default() -> Self {
        Self {
            page: 1,
            limit: 100,
            client_id: None,
            username: None,
        }
    }
}

/// One page of clients.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClientPage {
    /// The clients on this page.
    pub clients: Vec<ClientInfo>,
    /// The page number (1-based).
    pub page: u32,
    /// The page size asked for.
    pub limit: u32,
    /// Whether a next page exists.
    pub has_next: bool,
    /// How many clients match in all, when the broker says so.
    pub total: Option<u64>,
}

/// One connected (or, for EMQX, disconnected-with-session) MQTT client.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClientInfo {
    /// The MQTT client id.
    pub client_id: String,
    /// The username it logged in with.
    pub username: Option<String>,
    /// The broker node it is connected to.
    pub node: String,
    /// Its address.
    pub ip_address: Option<String>,
    /// Its source port.
    pub port: Option<u16>,
    /// Whether it is connected now.
    pub connected: bool,
    /// When it connected (RFC 3339).
    pub connected_at: Option<String>,
    /// `MQTT 3.1.1`, `MQTT 5`, ...
    pub protocol: Option<String>,
    /// Its number of subscriptions.
    pub subscriptions: Option<u64>,
    /// Messages queued for it.
    pub queue_len: Option<u64>,
    /// Keepalive in seconds.
    pub keepalive: Option<u64>,
}

/// Message figures of one topic.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TopicMetric {
    /// The topic.
    pub topic: String,
    /// Messages published to it (cluster-wide), when the broker counts them.
    pub messages_in: Option<u64>,
    /// Messages delivered from it to subscribers.
    pub messages_out: Option<u64>,
    /// Messages dropped.
    pub messages_dropped: Option<u64>,
    /// Messages per second in.
    pub rate_in: Option<f64>,
    /// Messages per second out.
    pub rate_out: Option<f64>,
    /// Subscriptions that match it (RabbitMQ: subscription queues bound to it).
    pub subscribers: Option<u64>,
    /// Messages waiting in those subscriptions.
    pub queued: Option<u64>,
}

/// An active broker alarm.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Alarm {
    /// The node that raised it.
    pub node: String,
    /// Its name, for example `high_system_memory_usage` or `memory`.
    pub name: String,
    /// What the broker says about it.
    pub message: String,
    /// When it was raised (RFC 3339), when the broker says so.
    pub activated_at: Option<String>,
}

/// A node's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeStats {
    /// The node's name.
    pub node: String,
    /// Whether the broker application runs.
    pub running: bool,
    /// `core`, `replicant`, `disc`, `ram`, when known.
    pub role: Option<String>,
    /// Broker version.
    pub version: Option<String>,
    /// Client connections on the node.
    pub connections: Option<u64>,
    /// Memory used, in bytes.
    pub memory_used_bytes: Option<u64>,
    /// The memory the broker may use (its limit or high watermark), in bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Uptime in seconds.
    pub uptime_seconds: Option<u64>,
    /// The most client connections the node can hold, when the broker tells: every connection
    /// takes a file descriptor (EMQX `max_fds`) or a socket (RabbitMQ `sockets_total`, else
    /// `fd_total`).
    pub connections_limit: Option<u64>,
}

/// Why a driver call failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// No answer in time.
    #[error("{op} on {target}: no answer within {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The node or address.
        target: String,
        /// The time limit.
        after: Duration,
    },
    /// The node could not be reached.
    #[error("{op} on {target}: cannot connect: {message}")]
    Unreachable {
        /// The operation.
        op: &'static str,
        /// The node or address.
        target: String,
        /// Why.
        message: String,
    },
    /// The broker answered with an error status.
    #[error("{op} on {target}: HTTP {status}{}: {message}", code.as_ref().map(|c| format!(" {c}")).unwrap_or_default())]
    Http {
        /// The operation.
        op: &'static str,
        /// The node or address.
        target: String,
        /// The HTTP status.
        status: u16,
        /// The broker's error code (EMQX `code`, RabbitMQ `error`).
        code: Option<String>,
        /// The broker's message.
        message: String,
    },
    /// The answer could not be understood.
    #[error("{op} on {target}: unexpected answer: {message}")]
    Decode {
        /// The operation.
        op: &'static str,
        /// The node or address.
        target: String,
        /// What was wrong.
        message: String,
    },
    /// A CLI command could not be run, or ran and failed.
    #[error("{op} on {target}: {message}")]
    Command {
        /// The operation.
        op: &'static str,
        /// The node.
        target: String,
        /// What happened (exit code and output, or why it could not run).
        message: String,
    },
    /// The broker (or this version of it) cannot do this.
    #[error("{op} is not supported: {why}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// Why not.
        why: String,
    },
}

impl DriverError {
    /// A short CamelCase label for metrics, Events and status.
    pub fn reason(&self) -> &'static str {
        match self {
            DriverError::Timeout { .. } => "Timeout",
            DriverError::Unreachable { .. } => "Unreachable",
            DriverError::Http { .. } => "HttpError",
            DriverError::Decode { .. } => "BadAnswer",
            DriverError::Command { .. } => "CommandFailed",
            DriverError::Unsupported { .. } => "Unsupported",
        }
    }
}

/// Runs a CLI command next to the broker (in production: a command Pod, see
/// [`crate::pod_command`]). A trait so that contract tests can record the commands.
pub trait CommandRunner: Send + Sync {
    /// Runs `argv` and waits at most `timeout`. `data_of` names a broker Pod whose data volume
    /// the command must see (at the broker's data path), for commands that repair a node's data.
    fn run<'a>(
        &'a self,
        argv: Vec<String>,
        data_of: Option<&'a str>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<CommandOutput, PodCommandError>>;
}

/// How a driver reaches and authenticates to the brokers.
#[derive(Clone)]
pub struct DriverConfig {
    /// The broker version the cluster runs (selects version-specific calls).
    pub version: String,
    /// The management user (RabbitMQ) or API key (EMQX).
    pub username: String,
    /// Its password or API secret.
    pub password: String,
    /// Time limit of one HTTP call.
    pub http_timeout: Duration,
    /// Time limit of one CLI command.
    pub command_timeout: Duration,
    /// Runs CLI commands.
    pub commands: Arc<dyn CommandRunner>,
    /// The management API port (defaults to the broker's).
    pub management_port: Option<u16>,
    /// The MQTT port for MQTT-level health checks (defaults to 1883).
    pub mqtt_port: Option<u16>,
}

impl std::fmt::Debug for DriverConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverConfig")
            .field("version", &self.version)
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("http_timeout", &self.http_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// A driver for one cluster's broker kind.
#[derive(Clone, Debug)]
pub enum Driver {
    /// EMQX 5.
    Emqx(emqx::EmqxDriver),
    /// RabbitMQ 3.10+.
    Rabbitmq(rabbitmq::RabbitmqDriver),
}

/// Dispatches one call to the kind's driver.
macro_rules! dispatch {
    ($self:ident, $d:ident => $call:expr) => {
        match $self {
            Driver::Emqx($d) => $call,
            Driver::Rabbitmq($d) => $call,
        }
    };
}

impl Driver {
    /// The driver for `kind`.
    pub fn new(kind: BrokerKind, config: DriverConfig) -> Result<Self, DriverError> {
        Ok(match kind {
            BrokerKind::Emqx => Driver::Emqx(emqx::EmqxDriver::new(config)?),
            BrokerKind::Rabbitmq => Driver::Rabbitmq(rabbitmq::RabbitmqDriver::new(config)?),
        })
    }

    /// The same driver, its MQTT-level checks sending `header` before their `CONNECT` (the
    /// brokers' listeners require one behind a load balancer with `loadBalancer.proxyProtocol`).
    /// EMQX's driver speaks only HTTP to the brokers: nothing changes.
    pub fn with_mqtt_proxy_header(self, header: mqtt_probe::ProxyHeader) -> Self {
        match self {
            Driver::Rabbitmq(d) => Driver::Rabbitmq(d.with_mqtt_proxy_header(header)),
            emqx @ Driver::Emqx(_) => emqx,
        }
    }

    /// Whether the node can serve clients.
    pub async fn health(&self, node: &NodeTarget) -> Result<Health, DriverError> {
        dispatch!(self, d => d.health(node).await)
    }

    /// The node's own view of the cluster members.
    pub async fn cluster_view(&self, node: &NodeTarget) -> Result<ClusterView, DriverError> {
        dispatch!(self, d => d.cluster_view(node).await)
    }

    /// Joins `stray` to the cluster `seed` belongs to. The stray's own data is replaced by the
    /// cluster's.
    pub async fn join(&self, stray: &NodeTarget, seed: &NodeTarget) -> Result<(), DriverError> {
        dispatch!(self, d => d.join(stray, seed).await)
    }

    /// Removes `ghost` (a member without a running node) from the cluster, asking `via`.
    pub async fn remove_member(&self, via: &NodeTarget, ghost: &str) -> Result<(), DriverError> {
        dispatch!(self, d => d.remove_member(via, ghost).await)
    }

    /// Switches how the nodes react to a partition, at runtime, where the broker has such a
    /// setting (RabbitMQ `cluster_partition_handling`; EMQX: nothing to do).
    pub async fn set_partition_handling(
        &self,
        nodes: &[String],
        mode: &str,
    ) -> Result<(), DriverError> {
        match self {
            Driver::Rabbitmq(d) => d.set_partition_handling(nodes, mode).await,
            Driver::Emqx(_) => Ok(()),
        }
    }

    /// Makes `node` leave the cluster for good, before its Pod is removed in a scale-down.
    /// RabbitMQ: `stop_app` and `reset` on the node (the members forget it; its data is wiped so
    /// that a later scale-up starts blank and joins). EMQX: `force_leave` asked of `via`.
    pub async fn leave(&self, node: &NodeTarget, via: &NodeTarget) -> Result<(), DriverError> {
        match self {
            Driver::Rabbitmq(d) => d.leave(node).await,
            Driver::Emqx(d) => d.remove_member(via, &node.node).await,
        }
    }

    /// Moves aside the data of a node the cluster has forgotten and that therefore cannot boot,
    /// so that it starts empty and can join again (RabbitMQ `inconsistent_cluster`).
    pub async fn reset_forgotten(&self, node: &NodeTarget) -> Result<(), DriverError> {
        dispatch!(self, d => d.reset_forgotten(node).await)
    }

    /// Restarts the node's virtual hosts that are down (RabbitMQ: a node whose vhost failed to
    /// start refuses every client of it while it looks healthy otherwise).
    pub async fn restart_vhosts(&self, node: &NodeTarget) -> Result<(), DriverError> {
        dispatch!(self, d => d.restart_vhosts(node).await)
    }

    /// Restarts the broker application on the node (the Erlang VM keeps running): for a member
    /// stuck refusing clients.
    pub async fn restart_app(&self, node: &NodeTarget) -> Result<(), DriverError> {
        dispatch!(self, d => d.restart_app(node).await)
    }

    /// Clients, paged, asking `via` (both brokers answer for the whole cluster).
    pub async fn clients(
        &self,
        via: &NodeTarget,
        query: &ClientQuery,
    ) -> Result<ClientPage, DriverError> {
        dispatch!(self, d => d.clients(via, query).await)
    }

    /// Disconnects a client. `Ok(false)` when no such client is connected.
    pub async fn kick(&self, via: &NodeTarget, client_id: &str) -> Result<bool, DriverError> {
        dispatch!(self, d => d.kick(via, client_id).await)
    }

    /// Message figures of `topics`.
    pub async fn topic_metrics(
        &self,
        via: &NodeTarget,
        topics: &[String],
    ) -> Result<Vec<TopicMetric>, DriverError> {
        dispatch!(self, d => d.topic_metrics(via, topics).await)
    }

    /// Active alarms of the whole cluster, asking `via`.
    pub async fn alarms(&self, via: &NodeTarget) -> Result<Vec<Alarm>, DriverError> {
        dispatch!(self, d => d.alarms(via).await)
    }

    /// The node's own figures.
    pub async fn node_stats(&self, node: &NodeTarget) -> Result<NodeStats, DriverError> {
        dispatch!(self, d => d.node_stats(node).await)
    }
}
