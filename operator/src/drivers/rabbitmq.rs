//! The RabbitMQ driver (3.10 to 4.x with the MQTT plugin): the management API of every node
//! (`http://<pod ip>:15672/api`, HTTP Basic with the admin user of
//! [`DriverConfig::username`]/[`DriverConfig::password`]), an MQTT-level probe
//! ([`super::mqtt_probe`]) and, for membership, `rabbitmqctl` through the
//! [`CommandRunner`] (there is no HTTP join).
//!
//! # What the management API says, and how it is read
//!
//! Facts measured on RabbitMQ 3.10.8 (the answers are kept as fixtures in
//! `operator/tests/fixtures/rabbitmq/`):
//! - `GET /api/nodes` asked of a node is THAT node's view, and lists only the nodes it considers
//!   cluster members: a stray (a node the cluster forgot, booted with fresh data) lists only
//!   itself, and its former peers list only themselves. A member that is down appears as
//!   `{"name", "running": false, "type", "cluster_links"}` without any figures.
//! - `GET /api/overview` has the answering node's own name in `node`; `cluster_name` comes from
//!   configuration and says nothing about membership.
//! - `GET /api/connections` repeats the key `client_properties` for MQTT connections (first `{}`,
//!   then the real one); answers are therefore parsed into [`serde_json::Value`] first (the last
//!   key wins) and only then into types. `message_stats` of a queue without deliveries is `[]`,
//!   not an object. Every field is read tolerantly: what is missing or odd is `None`, and a list
//!   entry that cannot be read is skipped, never fatal.
//! - The bindings of an exchange are at `/api/exchanges/%2F/amq.topic/bindings/source`
//!   (`/api/bindings/%2F/e/amq.topic/source` answers 400).
//! - `/api/nodes/<unknown node>` answers 500 with an empty body.
//! - The `columns=` query parameter works (also with dotted paths such as
//!   `message_stats.deliver_get`) and keeps answers small; the driver uses it everywhere.
//!
//! # Topic metrics: what RabbitMQ can tell
//!
//! RabbitMQ has no per-topic figures (`/api/exchanges/%2F/amq.topic` only has totals). What it
//! has are the subscriptions: every MQTT subscription is a binding from the MQTT exchange
//! ([`MQTT_EXCHANGE`], `amq.topic`) to the client's queue `mqtt-subscription-<client id>qos<0|1>`
//! with the topic filter as routing key (`/` becomes `.`, `+` becomes `*`, `#` stays `#`; see
//! [`filter_to_routing_key`]). For each exact topic asked for, Mooring finds the subscription
//! queues with a binding whose pattern matches the topic the way the broker routes
//! ([`routing_key_matches`], AMQP topic matching) and reports:
//! - `subscribers`: how many such queues (a queue gets one copy however many of its bindings
//!   match);
//! - `queued`: the sum of their `messages` (waiting, for example for an offline persistent
//!   session);
//! - `messages_out` and `rate_out`: the sum of their `message_stats.deliver_get` and its rate.
//!   These count everything the queues delivered, also messages of other topics their filters
//!   match (a `sensors/#` subscriber counts all of `sensors/`): an upper bound, exact when the
//!   subscriptions are specific;
//! - `messages_in`, `rate_in`, `messages_dropped`: `None`; the broker does not count publishes per
//!   topic (Mooring's own metering fills them later).
//!
//! # Membership commands
//!
//! `rabbitmqctl -q -l -n <node>` (long names: nodes are `rabbit@<pod fqdn>`), run through the
//! [`CommandRunner`] (a command Pod with the broker's image, environment and cookie):
//! - join: one `sh -c` script ([`join_script`]) `stop_app`, `join_cluster <seed>`, and always
//!   `start_app` (a failed join never leaves the node stopped);
//! - remove: `forget_cluster_node <ghost>` asked of a member ([`forget_argv`]); a ghost that is
//!   no longer a member (`not_a_cluster_node`) counts as removed;
//! - reset of a forgotten node (its boot fails with `inconsistent_cluster`): a script
//!   ([`quarantine_script`]) run with the node's data volume that MOVES the node's data aside into
//!   `mooring-quarantine/<UTC timestamp>/` (never deletes it; only the newest quarantine is kept).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use tracing::{debug, info};

use super::*;
use crate::broker_config::rabbitmq::DATA_DIR;

/// The management API's port.
pub const MANAGEMENT_PORT: u16 = 15672;
/// The MQTT port for the MQTT-level health check.
pub const MQTT_PORT: u16 = 1883;
/// The exchange MQTT publishes to and subscriptions are bound to.
pub const MQTT_EXCHANGE: &str = "amq.topic";
/// The prefix of MQTT subscription queues: `mqtt-subscription-<client id>qos<0|1>`.
pub const SUBSCRIPTION_QUEUE_PREFIX: &str = "mqtt-subscription-";
/// The directory (in the data directory) that quarantined node data is moved into.
pub const QUARANTINE_DIR: &str = "mooring-quarantine";
/// The `X-Reason` of a kick (RabbitMQ logs it).
pub const KICK_REASON: &str = "kicked by Mooring";
/// The CLI.
const CTL: &str = "rabbitmqctl";
/// The longest time spent connecting to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The part of an error body kept in a message.
const SNIPPET: usize = 300;

/// Path segment encoding: everything but unreserved characters (`/` in the vhost is `%2F`, `@`
/// in node names `%40`).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

const NODES_PATH: &str = "/nodes?columns=name,running,type,partitions,mem_alarm,disk_free_alarm";
const NODE_COLUMNS: &str = "name,running,type,mem_used,mem_limit,uptime";
const OVERVIEW_PATH: &str = "/overview?columns=node,rabbitmq_version,product_version";
const CONNECTIONS_PATH: &str = "/connections?columns=name,node,user,peer_host,peer_port,\
    connected_at,protocol,client_properties,variable_map";
const BINDING_COLUMNS: &str = "source,destination,destination_type,routing_key";
const QUEUE_COLUMNS: &str =
    "name,messages,message_stats.deliver_get,message_stats.deliver_get_details.rate";

/// The RabbitMQ driver.
#[derive(Clone, Debug)]
pub struct RabbitmqDriver {
    config: DriverConfig,
    http: reqwest::Client,
}

impl RabbitmqDriver {
    /// A driver with this configuration (one HTTP client for all nodes; no proxy: brokers are
    /// always reached directly).
    pub fn new(config: DriverConfig) -> Result<Self, DriverError> {
        let http = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(config.http_timeout))
            .no_proxy()
            .build()
            .map_err(|e| DriverError::Unsupported {
                op: "new",
                why: format!("cannot build the HTTP client: {}", error_chain(&e)),
            })?;
        Ok(Self { config, http })
    }

    /// See [`Driver::health`]: the node's local alarms, its MQTT listener, its virtual hosts
    /// (management health checks) and a real MQTT `CONNECT` ([`super::mqtt_probe`]).
    /// `Err` only when the management API gave no answer to any check (cannot connect, no
    /// answer in time, refused credentials); a check that answers "failed" is an unhealthy
    /// [`Health`].
    pub async fn health(&self, node: &NodeTarget) -> Result<Health, DriverError> {
        let mqtt_port = self.config.mqtt_port.unwrap_or(MQTT_PORT);
        let (alarms, listener, vhosts, connect) = futures::join!(
            self.health_check(node, "health/checks/local-alarms"),
            self.health_check(node, "health/checks/protocol-listener/mqtt"),
            self.health_check(node, "health/checks/virtual-hosts"),
            super::mqtt_probe::connect_check(
                &node.host,
                mqtt_port,
                &self.config.username,
                &self.config.password,
                self.config.http_timeout,
            ),
        );
        let answers = [
            ("alarms", alarms),
            ("mqtt-listener", listener),
            ("virtual-hosts", vhosts),
        ];
        // No answer to any check (cannot connect, no time, refused credentials): not a verdict.
        let unanswered = answers
            .iter()
            .all(|(_, a)| matches!(a, Err(e) if !is_verdict(e)));
        let mut checks = Vec::with_capacity(answers.len() + 1);
        for (name, answer) in answers {
            match answer {
                Ok(()) => checks.push(check(name, true, String::new())),
                Err(e) if unanswered => return Err(e),
                Err(e) => checks.push(check(name, false, verdict_detail(&e))),
            }
        }
        checks.push(match connect {
            Ok(()) => check("mqtt-connect", true, String::new()),
            Err(e) => check(
                "mqtt-connect",
                false,
                format!("MQTT CONNECT to {}:{mqtt_port}: {e}", node.host),
            ),
        });
        Ok(Health::from_checks(checks))
    }

    /// See [`Driver::cluster_view`]: `GET /api/nodes` and `GET /api/overview` asked of `node`.
    pub async fn cluster_view(&self, node: &NodeTarget) -> Result<ClusterView, DriverError> {
        const OP: &str = "cluster_view";
        let (nodes, overview) = futures::try_join!(
            self.get(OP, node, NODES_PATH),
            self.get(OP, node, OVERVIEW_PATH),
        )?;
        let nodes: Vec<ApiNode> = list(OP, node, nodes)?;
        let overview: ApiOverview = object(OP, node, overview)?;
        Ok(cluster_view_of(
            overview.node.as_deref().unwrap_or(&node.node),
            &nodes,
        ))
    }

    /// See [`Driver::join`]: [`join_script`] run against the stray over Erlang distribution.
    pub async fn join(&self, stray: &NodeTarget, seed: &NodeTarget) -> Result<(), DriverError> {
        const OP: &str = "join";
        valid_node(OP, &stray.node)?;
        valid_node(OP, &seed.node)?;
        let out = self
            .run(OP, &stray.node, join_argv(&stray.node, &seed.node), None)
            .await?;
        if out.exit_code != 0 {
            return Err(command_failed(OP, &stray.node, &out));
        }
        info!(stray = %stray.node, seed = %seed.node, "joined the cluster");
        Ok(())
    }

    /// See [`Driver::remove_member`]: `forget_cluster_node` asked of `via` ([`forget_argv`]).
    /// A ghost that is not a member any more counts as removed.
    pub async fn remove_member(&self, via: &NodeTarget, ghost: &str) -> Result<(), DriverError> {
        const OP: &str = "remove_member";
        valid_node(OP, &via.node)?;
        valid_node(OP, ghost)?;
        let out = self
            .run(OP, &via.node, forget_argv(&via.node, ghost), None)
            .await?;
        match forget_outcome(&out) {
            Forget::Removed => {
                info!(via = %via.node, ghost, "removed a cluster member");
                Ok(())
            }
            Forget::NotAMember => {
                info!(via = %via.node, ghost, "the node is not a cluster member (any more)");
                Ok(())
            }
            Forget::Failed => Err(command_failed(OP, &via.node, &out)),
        }
    }

    /// See [`Driver::reset_forgotten`]: [`quarantine_script`] run with the node's data volume.
    pub async fn reset_forgotten(&self, node: &NodeTarget) -> Result<(), DriverError> {
        const OP: &str = "reset_forgotten";
        valid_node(OP, &node.node)?;
        let out = self
            .run(
                OP,
                &node.node,
                quarantine_argv(DATA_DIR, &node.node),
                Some(&node.pod),
            )
            .await?;
        if out.exit_code != 0 {
            return Err(command_failed(OP, &node.node, &out));
        }
        info!(node = %node.node, output = %out.output.trim(), "moved the forgotten node's data aside");
        Ok(())
    }

    /// See [`Driver::clients`]: the MQTT connections of the whole cluster (`GET
    /// /api/connections`), filtered, sorted by client id and paged here; subscriptions and
    /// queued messages of the page's clients from their subscription queues (`None` when those
    /// cannot be read). Disconnected persistent sessions are not listed.
    pub async fn clients(
        &self,
        via: &NodeTarget,
        query: &ClientQuery,
    ) -> Result<ClientPage, DriverError> {
        const OP: &str = "clients";
        let connections = self.mqtt_connections(OP, via).await?;
        let mut page = client_page(&connections, query);
        if !page.clients.is_empty() {
            match self.subscriptions(OP, via).await {
                Ok((bindings, queues)) => add_sessions(&mut page.clients, &bindings, &queues),
                Err(e) => debug!(error = %e, "cannot read the subscription queues"),
            }
        }
        Ok(page)
    }

    /// See [`Driver::kick`]: `DELETE /api/connections/<name>` of the client's connections
    /// (with `X-Reason: kicked by Mooring`).
    pub async fn kick(&self, via: &NodeTarget, client_id: &str) -> Result<bool, DriverError> {
        const OP: &str = "kick";
        let connections = self.mqtt_connections(OP, via).await?;
        let mut kicked = false;
        for c in connections
            .iter()
            .filter(|c| c.client_id.as_deref() == Some(client_id))
        {
            let path = format!("/connections/{}", enc(&c.name));
            let response = self
                .send(
                    OP,
                    via,
                    self.request(via, Method::DELETE, &path)
                        .header("X-Reason", KICK_REASON),
                )
                .await?;
            match response.status {
                s if s.is_success() => kicked = true,
                StatusCode::NOT_FOUND => {}
                _ => return Err(response.error(OP, via)),
            }
        }
        if kicked {
            info!(client_id, via = %via.node, "kicked a client");
        }
        Ok(kicked)
    }

    /// See [`Driver::topic_metrics`] and the module documentation: figures of the subscription
    /// queues that match each exact topic.
    pub async fn topic_metrics(
        &self,
        via: &NodeTarget,
        topics: &[String],
    ) -> Result<Vec<TopicMetric>, DriverError> {
        if topics.is_empty() {
            return Ok(Vec::new());
        }
        let (bindings, queues) = self.subscriptions("topic_metrics", via).await?;
        Ok(topic_metrics_of(topics, &bindings, &queues))
    }

    /// See [`Driver::alarms`]: memory and disk alarms and partitions of the members `via` knows
    /// (`GET /api/nodes`).
    pub async fn alarms(&self, via: &NodeTarget) -> Result<Vec<Alarm>, DriverError> {
        const OP: &str = "alarms";
        let nodes = self.get(OP, via, NODES_PATH).await?;
        Ok(alarms_of(&list(OP, via, nodes)?))
    }

    /// See [`Driver::node_stats`]: `GET /api/nodes/<node>`, the version from `/api/overview` and
    /// the node's MQTT connections.
    pub async fn node_stats(&self, node: &NodeTarget) -> Result<NodeStats, DriverError> {
        const OP: &str = "node_stats";
        let path = format!("/nodes/{}?columns={NODE_COLUMNS}", enc(&node.node));
        let (info, overview, connections) = futures::try_join!(
            self.get(OP, node, &path),
            self.get(OP, node, OVERVIEW_PATH),
            self.mqtt_connections(OP, node),
        )?;
        let info: ApiNode = object(OP, node, info)?;
        let overview: ApiOverview = object(OP, node, overview)?;
        Ok(node_stats_of(&node.node, &info, &overview, &connections))
    }

    // ----- the commands -----

    async fn run(
        &self,
        op: &'static str,
        target: &str,
        argv: Vec<String>,
        data_of: Option<&str>,
    ) -> Result<CommandOutput, DriverError> {
        let timeout = self.config.command_timeout;
        debug!(op, target, ?argv, "running a command");
        self.config
            .commands
            .run(argv, data_of, timeout)
            .await
            .map_err(|e| match e {
                PodCommandError::Timeout { .. } => DriverError::Timeout {
                    op,
                    target: target.to_string(),
                    after: timeout,
                },
                other => DriverError::Command {
                    op,
                    target: target.to_string(),
                    message: other.to_string(),
                },
            })
    }

    // ----- the HTTP layer -----

    fn request(&self, node: &NodeTarget, method: Method, path: &str) -> RequestBuilder {
        let port = self.config.management_port.unwrap_or(MANAGEMENT_PORT);
        self.http
            .request(method, format!("{}{path}", base_url(&node.host, port)))
            .basic_auth(&self.config.username, Some(&self.config.password))
    }

    async fn send(
        &self,
        op: &'static str,
        node: &NodeTarget,
        request: RequestBuilder,
    ) -> Result<Answer, DriverError> {
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(op, node, &e, self.config.http_timeout))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(op, node, &e, self.config.http_timeout))?;
        Ok(Answer {
            status,
            body: body.to_vec(),
        })
    }

    /// `GET` of `path` (below `/api`), as JSON.
    async fn get(
        &self,
        op: &'static str,
        node: &NodeTarget,
        path: &str,
    ) -> Result<Value, DriverError> {
        let answer = self
            .send(op, node, self.request(node, Method::GET, path))
            .await?;
        if !answer.status.is_success() {
            return Err(answer.error(op, node));
        }
        serde_json::from_slice(&answer.body).map_err(|e| DriverError::Decode {
            op,
            target: node.node.clone(),
            message: format!("{path}: {e}"),
        })
    }

    /// A management health check: `Ok` on 2xx, the error (503 with the reason) otherwise.
    async fn health_check(&self, node: &NodeTarget, path: &str) -> Result<(), DriverError> {
        self.get("health", node, &format!("/{path}"))
            .await
            .map(drop)
    }

    async fn mqtt_connections(
        &self,
        op: &'static str,
        node: &NodeTarget,
    ) -> Result<Vec<Connection>, DriverError> {
        let answer = self.get(op, node, CONNECTIONS_PATH).await?;
        let rows: Vec<ApiConnection> = list(op, node, answer)?;
        Ok(mqtt_connections_of(rows))
    }

    async fn subscriptions(
        &self,
        op: &'static str,
        node: &NodeTarget,
    ) -> Result<(Vec<ApiBinding>, Vec<ApiQueue>), DriverError> {
        let vhost = enc("/");
        let bindings = format!(
            "/exchanges/{vhost}/{}/bindings/source?columns={BINDING_COLUMNS}",
            enc(MQTT_EXCHANGE)
        );
        let queues = format!("/queues/{vhost}?columns={QUEUE_COLUMNS}");
        let (bindings, queues) =
            futures::try_join!(self.get(op, node, &bindings), self.get(op, node, &queues))?;
        Ok((list(op, node, bindings)?, list(op, node, queues)?))
    }
}

/// An HTTP answer.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

impl Answer {
    fn error(&self, op: &'static str, node: &NodeTarget) -> DriverError {
        let (code, message) = error_parts(self.status, &self.body);
        DriverError::Http {
            op,
            target: node.node.clone(),
            status: self.status.as_u16(),
            code,
            message,
        }
    }
}

/// The management API's base URL (`http://host:port/api`; IPv6 literals in brackets).
fn base_url(host: &str, port: u16) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("http://[{host}]:{port}/api")
    } else {
        format!("http://{host}:{port}/api")
    }
}

/// One percent-encoded path segment.
fn enc(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// A reqwest error as a driver error: connecting failed (also in time) is `Unreachable`, no
/// answer in time is `Timeout`, anything else on the way is `Unreachable`.
fn transport_error(
    op: &'static str,
    node: &NodeTarget,
    e: &reqwest::Error,
    after: Duration,
) -> DriverError {
    if e.is_timeout() && !e.is_connect() {
        DriverError::Timeout {
            op,
            target: node.node.clone(),
            after,
        }
    } else {
        DriverError::Unreachable {
            op,
            target: node.node.clone(),
            message: error_chain(e),
        }
    }
}

/// An error and its sources, joined by `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// The code and message of an error answer: RabbitMQ's `{"error": .., "reason": ..}`, the
/// health checks' `{"status": "failed", "reason": .., "alarms"/"missing": ..}`, or the body's
/// beginning, or the status text.
fn error_parts(status: StatusCode, body: &[u8]) -> (Option<String>, String) {
    let fallback = || {
        let text = String::from_utf8_lossy(body).trim().to_string();
        if text.is_empty() {
            status.canonical_reason().unwrap_or("error").to_string()
        } else {
            text.chars().take(SNIPPET).collect()
        }
    };
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return (None, fallback());
    };
    let code = map.get("error").map(text_of);
    let mut message = map.get("reason").map(text_of).unwrap_or_else(fallback);
    let resources: Vec<String> = map
        .get("alarms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("resource").map(text_of))
        .collect();
    if !resources.is_empty() {
        message.push_str(&format!(" ({})", resources.join(", ")));
    }
    if let Some(missing) = map.get("missing") {
        message.push_str(&format!(" (missing: {})", text_of(missing)));
    }
    (code, message)
}

/// A JSON value as text (strings without quotes).
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether an error is the node's answer to a health check (rather than no answer).
fn is_verdict(e: &DriverError) -> bool {
    matches!(e, DriverError::Http { status, .. } if *status != 401 && *status != 403)
}

/// What a failed health check shows.
fn verdict_detail(e: &DriverError) -> String {
    match e {
        DriverError::Http {
            status, message, ..
        } => format!("HTTP {status}: {message}"),
        other => other.to_string(),
    }
}

fn check(name: &str, ok: bool, detail: String) -> HealthCheck {
    HealthCheck {
        name: name.to_string(),
        ok,
        detail,
    }
}

// ----- the management API's answers -----

/// The items of a JSON list that can be read as `T` (the others are skipped).
fn list<T: DeserializeOwned>(
    op: &'static str,
    node: &NodeTarget,
    value: Value,
) -> Result<Vec<T>, DriverError> {
    let Value::Array(items) = value else {
        return Err(DriverError::Decode {
            op,
            target: node.node.clone(),
            message: format!("expected a list, got {}", kind_of(&value)),
        });
    };
    Ok(items
        .into_iter()
        .filter_map(|item| match serde_json::from_value(item) {
            Ok(t) => Some(t),
            Err(e) => {
                debug!(op, error = %e, "skipped an entry that cannot be read");
                None
            }
        })
        .collect())
}

/// A JSON object read as `T`.
fn object<T: DeserializeOwned>(
    op: &'static str,
    node: &NodeTarget,
    value: Value,
) -> Result<T, DriverError> {
    if !value.is_object() {
        return Err(DriverError::Decode {
            op,
            target: node.node.clone(),
            message: format!("expected an object, got {}", kind_of(&value)),
        });
    }
    serde_json::from_value(value).map_err(|e| DriverError::Decode {
        op,
        target: node.node.clone(),
        message: e.to_string(),
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `/api/nodes` entries and `/api/nodes/<name>`.
#[derive(Clone, Debug, Default, Deserialize)]
struct ApiNode {
    name: String,
    #[serde(default, deserialize_with = "lenient")]
    running: Option<bool>,
    #[serde(default, rename = "type", deserialize_with = "lenient")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    partitions: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient")]
    mem_alarm: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    disk_free_alarm: Option<bool>,
    #[serde(default, deserialize_with = "lenient_u64")]
    mem_used: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    mem_limit: Option<u64>,
    /// Milliseconds.
    #[serde(default, deserialize_with = "lenient_u64")]
    uptime: Option<u64>,
}

/// `/api/overview`.
#[derive(Clone, Debug, Default, Deserialize)]
struct ApiOverview {
    #[serde(default, deserialize_with = "lenient")]
    node: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    rabbitmq_version: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    product_version: Option<String>,
}

/// `/api/connections` entries.
#[derive(Clone, Debug, Default, Deserialize)]
struct ApiConnection {
    name: String,
    #[serde(default, deserialize_with = "lenient")]
    node: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    user: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    peer_host: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    peer_port: Option<u16>,
    /// Milliseconds since the epoch.
    #[serde(default, deserialize_with = "lenient")]
    connected_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    protocol: Option<String>,
    #[serde(default)]
    client_properties: Value,
    #[serde(default)]
    variable_map: Value,
}

/// A binding of the MQTT exchange.
#[derive(Clone, Debug, Default, Deserialize)]
struct ApiBinding {
    #[serde(default)]
    source: String,
    destination: String,
    #[serde(default)]
    destination_type: String,
    #[serde(default)]
    routing_key: String,
}

/// `/api/queues/<vhost>` entries.
#[derive(Clone, Debug, Default, Deserialize)]
struct ApiQueue {
    name: String,
    #[serde(default, deserialize_with = "lenient_u64")]
    messages: Option<u64>,
    /// An object, or `[]` when the queue has no figures yet.
    #[serde(default, deserialize_with = "lenient")]
    message_stats: Option<MessageStats>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct MessageStats {
    #[serde(default, deserialize_with = "lenient_u64")]
    deliver_get: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    deliver_get_details: Option<RateDetails>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct RateDetails {
    #[serde(default, deserialize_with = "lenient")]
    rate: Option<f64>,
}

/// Any value that does not read as `T` is `None`.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

/// A count: an unsigned integer, a non-negative float (truncated) or a numeric string.
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

// ----- pure mapping -----

/// The answering node's view: running and stopped members (deduplicated, sorted), and the
/// union of their partitions. The answering node is always counted as running.
fn cluster_view_of(own: &str, nodes: &[ApiNode]) -> ClusterView {
    let mut running = BTreeSet::new();
    let mut stopped = BTreeSet::new();
    let mut partitions = BTreeSet::new();
    for n in nodes {
        if n.running.unwrap_or(false) || n.name == own {
            running.insert(n.name.clone());
        } else {
            stopped.insert(n.name.clone());
        }
        partitions.extend(n.partitions.iter().flatten().cloned());
    }
    running.insert(own.to_string());
    let stopped = stopped.difference(&running).cloned().collect();
    ClusterView {
        node: own.to_string(),
        running: running.into_iter().collect(),
        stopped,
        partitions: partitions.into_iter().collect(),
    }
}

/// The alarms in `/api/nodes`: `memory`, `disk_free`, `partition`; sorted by node and name.
fn alarms_of(nodes: &[ApiNode]) -> Vec<Alarm> {
    let mut alarms = Vec::new();
    for n in nodes {
        let alarm = |name: &str, message: String| Alarm {
            node: n.name.clone(),
            name: name.to_string(),
            message,
            activated_at: None,
        };
        if n.mem_alarm == Some(true) {
            alarms.push(alarm(
                "memory",
                "memory use is above the high watermark: publishers are blocked".into(),
            ));
        }
        if n.disk_free_alarm == Some(true) {
            alarms.push(alarm(
                "disk_free",
                "free disk space is below the limit: publishers are blocked".into(),
            ));
        }
        let partitions = n.partitions.clone().unwrap_or_default();
        if !partitions.is_empty() {
            alarms.push(alarm(
                "partition",
                format!("network partition with {}", partitions.join(", ")),
            ));
        }
    }
    alarms.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    alarms
}

/// An MQTT connection, as the driver uses it.
#[derive(Clone, Debug, Default, PartialEq)]
struct Connection {
    name: String,
    client_id: Option<String>,
    node: String,
    user: Option<String>,
    peer_host: Option<String>,
    peer_port: Option<u16>,
    connected_at: Option<i64>,
    protocol: Option<String>,
}

/// The MQTT connections (`protocol` starting with `MQTT`) of `/api/connections`, with the
/// client id from `client_properties.client_id` (3.10 also has it in `variable_map`).
fn mqtt_connections_of(rows: Vec<ApiConnection>) -> Vec<Connection> {
    rows.into_iter()
        .filter(|r| r.protocol.as_deref().is_some_and(|p| p.starts_with("MQTT")))
        .map(|r| {
            let client_id = [&r.client_properties, &r.variable_map]
                .into_iter()
                .find_map(|v| v.get("client_id").and_then(Value::as_str))
                .map(str::to_string);
            Connection {
                name: r.name,
                client_id,
                node: r.node.unwrap_or_default(),
                user: r.user,
                peer_host: r.peer_host,
                peer_port: r.peer_port,
                connected_at: r.connected_at,
                protocol: r.protocol,
            }
        })
        .collect()
}

/// Epoch milliseconds as RFC 3339.
fn rfc3339_millis(ms: i64) -> Option<String> {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(|t| t.to_string())
}

/// The page `query` asks for: matching clients (substrings of client id and username) sorted
/// by client id (then connection name).
fn client_page(connections: &[Connection], query: &ClientQuery) -> ClientPage {
    let page = query.page.max(1);
    let limit = query.limit.clamp(1, 1000);
    let mut matching: Vec<&Connection> = connections
        .iter()
        .filter(|c| {
            query
                .client_id
                .as_deref()
                .is_none_or(|want| c.client_id.as_deref().unwrap_or_default().contains(want))
        })
        .filter(|c| {
            query
                .username
                .as_deref()
                .is_none_or(|want| c.user.as_deref().unwrap_or_default().contains(want))
        })
        .collect();
    matching.sort_by(|a, b| (&a.client_id, &a.name).cmp(&(&b.client_id, &b.name)));
    let total = matching.len();
    let start = (page as usize - 1).saturating_mul(limit as usize);
    let clients = matching
        .into_iter()
        .skip(start)
        .take(limit as usize)
        .map(|c| ClientInfo {
            client_id: c.client_id.clone().unwrap_or_default(),
            username: c.user.clone(),
            node: c.node.clone(),
            ip_address: c.peer_host.clone(),
            port: c.peer_port,
            connected: true,
            connected_at: c.connected_at.and_then(rfc3339_millis),
            protocol: c.protocol.clone(),
            subscriptions: None,
            queue_len: None,
            keepalive: None,
        })
        .collect();
    ClientPage {
        clients,
        page,
        limit,
        has_next: start.saturating_add(limit as usize) < total,
        total: Some(total as u64),
    }
}

/// The client id of a subscription queue name (`mqtt-subscription-<id>qos<0|1>`).
pub fn subscription_client_id(queue: &str) -> Option<&str> {
    let rest = queue.strip_prefix(SUBSCRIPTION_QUEUE_PREFIX)?;
    rest.strip_suffix("qos0")
        .or_else(|| rest.strip_suffix("qos1"))
}

/// The subscription queues bound from the MQTT exchange, with their bindings' routing keys.
fn subscription_bindings(bindings: &[ApiBinding]) -> BTreeMap<&str, Vec<&str>> {
    let mut by_queue: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for b in bindings.iter().filter(|b| {
        (b.source.is_empty() || b.source == MQTT_EXCHANGE)
            && b.destination_type == "queue"
            && subscription_client_id(&b.destination).is_some()
    }) {
        by_queue
            .entry(b.destination.as_str())
            .or_default()
            .push(b.routing_key.as_str());
    }
    by_queue
}

/// Adds each client's subscriptions (its bindings) and queued messages (its subscription
/// queues' messages).
fn add_sessions(clients: &mut [ClientInfo], bindings: &[ApiBinding], queues: &[ApiQueue]) {
    let bound = subscription_bindings(bindings);
    for client in clients {
        let own = |queue: &str| subscription_client_id(queue) == Some(client.client_id.as_str());
        let subscriptions = bound
            .iter()
            .filter(|(q, _)| own(q))
            .map(|(_, keys)| keys.len() as u64)
            .sum();
        let queue_len = queues
            .iter()
            .filter(|q| own(&q.name))
            .map(|q| q.messages.unwrap_or(0))
            .sum();
        client.subscriptions = Some(subscriptions);
        client.queue_len = Some(queue_len);
    }
}

/// An MQTT topic filter as the routing key RabbitMQ binds it with: `/` becomes `.`, `+` becomes
/// `*`, `#` stays `#`.
pub fn filter_to_routing_key(filter: &str) -> String {
    filter
        .split('/')
        .map(|level| if level == "+" { "*" } else { level })
        .collect::<Vec<_>>()
        .join(".")
}

/// An MQTT topic name as the routing key its messages are published with (`/` becomes `.`; a
/// `.` inside a level stays and so separates words too).
pub fn topic_to_routing_key(topic: &str) -> String {
    topic.replace('/', ".")
}

/// AMQP topic matching as RabbitMQ's topic exchange does it: both are split at `.`; `*` in the
/// pattern matches exactly one word, `#` zero or more words, anything else itself. An empty
/// key or pattern has no words (`a.` has two, the second empty), as in RabbitMQ.
pub fn routing_key_matches(pattern: &str, routing_key: &str) -> bool {
    fn words(s: &str) -> Vec<&str> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split('.').collect()
        }
    }
    let pattern = words(pattern);
    let key = words(routing_key);
    // matches[j]: the pattern so far matches the first j words of the key.
    let mut matches = vec![false; key.len() + 1];
    matches[0] = true;
    for word in pattern {
        matches = if word == "#" {
            // Zero or more words: reachable from any shorter prefix.
            matches
                .iter()
                .scan(false, |any, &m| {
                    *any |= m;
                    Some(*any)
                })
                .collect()
        } else {
            // Exactly one word (`*`: any word).
            std::iter::once(false)
                .chain(
                    key.iter()
                        .zip(&matches)
                        .map(|(k, &m)| m && (word == "*" || *k == word)),
                )
                .collect()
        };
    }
    matches[key.len()]
}

/// The figures of each topic (see the module documentation).
fn topic_metrics_of(
    topics: &[String],
    bindings: &[ApiBinding],
    queues: &[ApiQueue],
) -> Vec<TopicMetric> {
    let bound = subscription_bindings(bindings);
    let queues: BTreeMap<&str, &ApiQueue> = queues.iter().map(|q| (q.name.as_str(), q)).collect();
    topics
        .iter()
        .map(|topic| {
            let key = topic_to_routing_key(topic);
            let matching: Vec<&str> = bound
                .iter()
                .filter(|(_, patterns)| patterns.iter().any(|p| routing_key_matches(p, &key)))
                .map(|(q, _)| *q)
                .collect();
            let stats = || {
                matching
                    .iter()
                    .filter_map(|q| queues.get(q))
                    .filter_map(|q| q.message_stats.as_ref())
            };
            let queued = matching
                .iter()
                .filter_map(|q| queues.get(q))
                .map(|q| q.messages.unwrap_or(0))
                .sum();
            TopicMetric {
                topic: topic.clone(),
                messages_in: None,
                messages_out: Some(stats().map(|s| s.deliver_get.unwrap_or(0)).sum()),
                messages_dropped: None,
                rate_in: None,
                rate_out: Some(
                    stats()
                        .filter_map(|s| s.deliver_get_details.as_ref()?.rate)
                        .sum(),
                ),
                subscribers: Some(matching.len() as u64),
                queued: Some(queued),
            }
        })
        .collect()
}

/// The node's figures.
fn node_stats_of(
    name: &str,
    info: &ApiNode,
    overview: &ApiOverview,
    connections: &[Connection],
) -> NodeStats {
    let name = if info.name.is_empty() {
        name
    } else {
        &info.name
    };
    NodeStats {
        node: name.to_string(),
        running: info.running.unwrap_or(false),
        role: info.kind.clone(),
        version: overview
            .rabbitmq_version
            .clone()
            .or_else(|| overview.product_version.clone()),
        connections: Some(connections.iter().filter(|c| c.node == name).count() as u64),
        memory_used_bytes: info.mem_used,
        memory_limit_bytes: info.mem_limit,
        uptime_seconds: info.uptime.map(|ms| ms / 1000),
    }
}

// ----- the commands -----

/// `text` quoted for `sh`: in single quotes, with `'` written as `'\''`.
pub fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Refuses node names that cannot be RabbitMQ node names (empty, no `@`, white space, control
/// characters, `/` or glob characters): they are never put into a command.
fn valid_node(op: &'static str, node: &str) -> Result<(), DriverError> {
    let ok = !node.is_empty()
        && node.contains('@')
        && !node
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '*' | '?' | '['));
    if ok {
        Ok(())
    } else {
        Err(DriverError::Command {
            op,
            target: node.to_string(),
            message: format!("{node:?} is not a RabbitMQ node name"),
        })
    }
}

/// The `sh` script that joins `stray` to `seed`'s cluster: `stop_app`, then (when it stopped)
/// `join_cluster`, then ALWAYS `start_app`. Exits with the first failure of `stop_app` or
/// `join_cluster`, else with `start_app`'s exit code; prints one line per step.
pub fn join_script(stray: &str, seed: &str) -> String {
    let ctl = format!("{CTL} -q -l -n {}", sh_quote(stray));
    let seed = sh_quote(seed);
    format!(
        "{ctl} stop_app; rc=$?\n\
         echo \"mooring: stop_app exited $rc\"\n\
         if [ \"$rc\" -eq 0 ]; then\n  \
           {ctl} join_cluster {seed}; rc=$?\n  \
           echo \"mooring: join_cluster exited $rc\"\n\
         fi\n\
         {ctl} start_app; started=$?\n\
         echo \"mooring: start_app exited $started\"\n\
         if [ \"$rc\" -ne 0 ]; then exit \"$rc\"; fi\n\
         exit \"$started\"\n"
    )
}

/// `sh -c` [`join_script`].
pub fn join_argv(stray: &str, seed: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), join_script(stray, seed)]
}

/// `rabbitmqctl -q -l -n <via> forget_cluster_node <ghost>`.
pub fn forget_argv(via: &str, ghost: &str) -> Vec<String> {
    [CTL, "-q", "-l", "-n", via, "forget_cluster_node", ghost]
        .into_iter()
        .map(String::from)
        .collect()
}

/// How `forget_cluster_node` ended.
#[derive(Debug, PartialEq, Eq)]
enum Forget {
    Removed,
    /// The ghost is not (any more) a member: `{:not_a_cluster_node, ...}`.
    NotAMember,
    Failed,
}

fn forget_outcome(out: &CommandOutput) -> Forget {
    if out.exit_code == 0 {
        Forget::Removed
    } else if out.output.contains("not_a_cluster_node") {
        Forget::NotAMember
    } else {
        Forget::Failed
    }
}

/// The `sh` script that moves the data of `node` aside: every entry of `data_dir` named
/// `<node>` or `<node>-*` goes into `<data_dir>/mooring-quarantine/<UTC timestamp>/`; then the
/// older quarantines are removed (only the newest is kept). Prints what it moved; a no-op
/// success when nothing matches; fails when `data_dir` does not exist.
pub fn quarantine_script(data_dir: &str, node: &str) -> String {
    format!(
        r#"dir={dir}
node={node}
if [ ! -d "$dir" ]; then echo "mooring: no data directory $dir"; exit 1; fi
cd "$dir" || exit 1
q="{quarantine}/$(date -u +%Y%m%dT%H%M%SZ)"
n=1; base="$q"
while [ -e "$q" ]; do q="$base-$n"; n=$((n + 1)); done
moved=0
for f in "$node" "$node"-*; do
  if [ ! -e "$f" ] && [ ! -L "$f" ]; then continue; fi
  if [ "$moved" -eq 0 ]; then mkdir -p "$q" || exit 1; fi
  mv -- "$f" "$q/" || exit 1
  echo "mooring: moved $dir/$f to $dir/$q/"
  moved=$((moved + 1))
done
if [ "$moved" -eq 0 ]; then echo "mooring: nothing of $node in $dir"; exit 0; fi
for old in {quarantine}/*; do
  if [ "$old" != "$q" ] && [ -d "$old" ]; then
    rm -rf -- "$old" && echo "mooring: removed the older quarantine $dir/$old"
  fi
done
exit 0
"#,
        dir = sh_quote(data_dir),
        node = sh_quote(node),
        quarantine = QUARANTINE_DIR,
    )
}

/// `sh -c` [`quarantine_script`].
pub fn quarantine_argv(data_dir: &str, node: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), quarantine_script(data_dir, node)]
}

/// A command that ran and failed.
fn command_failed(op: &'static str, target: &str, out: &CommandOutput) -> DriverError {
    let output = out.output.trim();
    let mut message = format!("exit code {}", out.exit_code);
    if !output.is_empty() {
        message.push_str(": ");
        if out.truncated {
            message.push_str("...");
        }
        message.push_str(output);
    }
    DriverError::Command {
        op,
        target: target.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            serde_json::from_str::<Value>(include_str!(concat!(
                "../../tests/fixtures/rabbitmq/",
                $name
            )))
            .unwrap()
        };
    }

    const N1: &str = "rabbit-mooring-test-1@127.0.0.1";
    const N2: &str = "rabbit-mooring-test-2@127.0.0.1";

    fn target(node: &str) -> NodeTarget {
        NodeTarget {
            pod: "bus-0".into(),
            host: "10.0.0.1".into(),
            node: node.into(),
        }
    }

    fn items<T: DeserializeOwned>(v: Value) -> Vec<T> {
        list("test", &target(N1), v).unwrap()
    }

    #[test]
    fn a_single_node_sees_itself_running() {
        let v = cluster_view_of(N1, &items(fixture!("nodes_single.json")));
        assert_eq!(v.node, N1);
        assert_eq!(v.running, [N1]);
        assert!(v.stopped.is_empty() && v.partitions.is_empty());
    }

    #[test]
    fn two_running_members() {
        let v = cluster_view_of(N1, &items(fixture!("nodes_two_running.json")));
        assert_eq!(v.running, [N1, N2]);
        assert!(v.stopped.is_empty());
    }

    #[test]
    fn a_stopped_member_has_only_a_name() {
        let nodes: Vec<ApiNode> = items(fixture!("nodes_one_stopped.json"));
        assert_eq!(nodes.len(), 2);
        let v = cluster_view_of(N1, &nodes);
        assert_eq!(v.running, [N1]);
        assert_eq!(v.stopped, [N2]);
        assert_eq!(v.members(), [N1, N2]);
        assert!(alarms_of(&nodes).is_empty());
    }

    #[test]
    fn a_stray_lists_only_itself() {
        let v = cluster_view_of(N2, &items(fixture!("nodes_stray.json")));
        assert_eq!(v.running, [N2]);
        assert!(v.stopped.is_empty());
    }

    #[test]
    fn the_answering_node_is_running_and_partitions_are_merged() {
        let nodes = vec![
            ApiNode {
                name: "b@x".into(),
                running: Some(true),
                partitions: Some(vec!["c@x".into()]),
                ..ApiNode::default()
            },
            ApiNode {
                name: "a@x".into(),
                running: None,
                partitions: Some(vec!["c@x".into(), "d@x".into()]),
                ..ApiNode::default()
            },
            ApiNode {
                name: "c@x".into(),
                running: Some(false),
                ..ApiNode::default()
            },
            ApiNode {
                name: "c@x".into(),
                running: Some(false),
                ..ApiNode::default()
            },
        ];
        let v = cluster_view_of("a@x", &nodes);
        assert_eq!(v.running, ["a@x", "b@x"]);
        assert_eq!(v.stopped, ["c@x"]);
        assert_eq!(v.partitions, ["c@x", "d@x"]);
        let alarms = alarms_of(&nodes);
        assert_eq!(alarms.len(), 2);
        assert_eq!(
            (alarms[0].node.as_str(), alarms[0].name.as_str()),
            ("a@x", "partition")
        );
        assert!(alarms[0].message.contains("c@x, d@x"));
    }

    #[test]
    fn the_overview_names_the_node_and_version() {
        let o: ApiOverview = object("test", &target(N1), fixture!("overview.json")).unwrap();
        assert_eq!(o.node.as_deref(), Some(N1));
        assert_eq!(o.rabbitmq_version.as_deref(), Some("3.10.8"));
    }

    #[test]
    fn a_memory_alarm_is_reported() {
        let alarms = alarms_of(&items(fixture!("nodes_mem_alarm.json")));
        assert_eq!(alarms.len(), 1);
        assert_eq!(alarms[0].node, N2);
        assert_eq!(alarms[0].name, "memory");
        assert!(alarms_of(&items(fixture!("nodes_single.json"))).is_empty());
    }

    #[test]
    fn node_stats_from_the_node_and_overview() {
        let info: ApiNode = object("test", &target(N1), fixture!("node_self.json")).unwrap();
        let overview: ApiOverview = object("test", &target(N1), fixture!("overview.json")).unwrap();
        let conns = mqtt_connections_of(items(fixture!("connections.json")));
        let s = node_stats_of(N1, &info, &overview, &conns);
        assert_eq!(s.node, N1);
        assert!(s.running);
        assert_eq!(s.role.as_deref(), Some("disc"));
        assert_eq!(s.version.as_deref(), Some("3.10.8"));
        assert_eq!(s.connections, Some(2));
        assert_eq!(s.memory_limit_bytes, Some(512_000_000));
        assert!(s.memory_used_bytes.unwrap() > 0);
        assert_eq!(s.uptime_seconds, Some(176));
        let other = node_stats_of("x@y", &ApiNode::default(), &overview, &conns);
        assert_eq!((other.node.as_str(), other.connections), ("x@y", Some(0)));
    }

    #[test]
    fn the_duplicate_client_properties_key_is_read_last_wins() {
        let raw = include_str!("../../tests/fixtures/rabbitmq/connections.json");
        assert_eq!(raw.matches("\"client_properties\":{}").count(), 2);
        // Straight into a struct the duplicate key is an error: hence Value first.
        assert!(serde_json::from_str::<Vec<ApiConnection>>(raw).is_err());
        for name in ["connections.json", "connections_columns.json"] {
            let text = match name {
                "connections.json" => raw,
                _ => include_str!("../../tests/fixtures/rabbitmq/connections_columns.json"),
            };
            let conns = mqtt_connections_of(items(serde_json::from_str(text).unwrap()));
            let ids: Vec<_> = conns.iter().map(|c| c.client_id.as_deref()).collect();
            assert_eq!(ids, [Some("sensor-alpha"), Some("dash-beta")], "{name}");
        }
    }

    #[test]
    fn clients_are_filtered_sorted_and_paged() {
        let conns = mqtt_connections_of(items(fixture!("connections.json")));
        let all = client_page(&conns, &ClientQuery::default());
        assert_eq!(all.total, Some(2));
        assert!(!all.has_next);
        let first = &all.clients[0];
        assert_eq!(first.client_id, "dash-beta");
        assert_eq!(first.username.as_deref(), Some("mooring"));
        assert_eq!(first.node, N1);
        assert_eq!(first.ip_address.as_deref(), Some("127.0.0.1"));
        assert!(first.port.is_some() && first.connected);
        assert_eq!(first.protocol.as_deref(), Some("MQTT 3.1.1"));
        assert_eq!(all.clients[1].protocol.as_deref(), Some("MQTT 3.1.0"));
        let at = first.connected_at.as_deref().unwrap();
        assert!(at.starts_with("2026-11-23T") && at.ends_with('Z'), "{at}");

        let one = client_page(
            &conns,
            &ClientQuery {
                limit: 1,
                ..ClientQuery::default()
            },
        );
        assert_eq!(
            (one.clients.len(), one.has_next, one.total),
            (1, true, Some(2))
        );
        let second = client_page(
            &conns,
            &ClientQuery {
                page: 2,
                limit: 1,
                ..ClientQuery::default()
            },
        );
        assert_eq!(second.clients[0].client_id, "sensor-alpha");
        assert!(!second.has_next);
        let beyond = client_page(
            &conns,
            &ClientQuery {
                page: 9,
                limit: 1,
                ..ClientQuery::default()
            },
        );
        assert!(beyond.clients.is_empty() && !beyond.has_next);

        let by_id = client_page(
            &conns,
            &ClientQuery {
                client_id: Some("alpha".into()),
                ..ClientQuery::default()
            },
        );
        assert_eq!(by_id.total, Some(1));
        assert_eq!(by_id.clients[0].client_id, "sensor-alpha");
        let by_user = client_page(
            &conns,
            &ClientQuery {
                username: Some("nobody".into()),
                ..ClientQuery::default()
            },
        );
        assert_eq!(by_user.total, Some(0));
    }

    #[test]
    fn only_mqtt_connections_count() {
        let rows: Vec<ApiConnection> = items(serde_json::json!([
            {"name": "a", "protocol": "AMQP 0-9-1", "client_properties": {"product": "x"}},
            {"name": "b", "protocol": "MQTT 3.1.1", "client_properties": [], "variable_map": {"client_id": "v"}},
            {"name": "c"},
            {"protocol": "MQTT 3.1.1"},
        ]));
        let conns = mqtt_connections_of(rows);
        assert_eq!(conns.len(), 1);
        assert_eq!(conns[0].client_id.as_deref(), Some("v"));
    }

    #[test]
    fn sessions_come_from_the_subscription_queues() {
        let bindings: Vec<ApiBinding> = items(fixture!("bindings_amq_topic.json"));
        let queues: Vec<ApiQueue> = items(fixture!("queues_columns.json"));
        let mut clients = vec![
            ClientInfo {
                client_id: "dash-beta".into(),
                ..ClientInfo::default()
            },
            ClientInfo {
                client_id: "offline-gamma".into(),
                ..ClientInfo::default()
            },
            ClientInfo {
                client_id: "nobody".into(),
                ..ClientInfo::default()
            },
        ];
        add_sessions(&mut clients, &bindings, &queues);
        assert_eq!(
            (clients[0].subscriptions, clients[0].queue_len),
            (Some(2), Some(0))
        );
        assert_eq!(
            (clients[1].subscriptions, clients[1].queue_len),
            (Some(2), Some(3))
        );
        assert_eq!(
            (clients[2].subscriptions, clients[2].queue_len),
            (Some(0), Some(0))
        );
    }

    #[test]
    fn subscription_queue_names() {
        assert_eq!(subscription_client_id("mqtt-subscription-aqos1"), Some("a"));
        assert_eq!(
            subscription_client_id("mqtt-subscription-x-qos0-yqos0"),
            Some("x-qos0-y")
        );
        assert_eq!(subscription_client_id("mqtt-subscription-aqos2"), None);
        assert_eq!(subscription_client_id("orders"), None);
    }

    #[test]
    fn filters_become_routing_keys() {
        assert_eq!(filter_to_routing_key("sensors/+/temp"), "sensors.*.temp");
        assert_eq!(filter_to_routing_key("sensors/#"), "sensors.#");
        assert_eq!(filter_to_routing_key("a+b/c"), "a+b.c");
        assert_eq!(topic_to_routing_key("a/b.c/d"), "a.b.c.d");
    }

    #[test]
    fn amqp_topic_matching() {
        let yes = [
            ("sensors.*.temp", "sensors.a.temp"),
            ("sensors.#", "sensors"),
            ("sensors.#", "sensors.a.b.c"),
            ("#", "anything.at.all"),
            ("#", ""),
            ("#.temp", "temp"),
            ("#.temp", "a.b.temp"),
            ("a.#.z", "a.z"),
            ("a.#.z", "a.b.c.z"),
            ("*.*", "a."),
            ("a..b", "a..b"),
            ("#.#", "a"),
            ("*.#", "a"),
            ("exact", "exact"),
            ("", ""),
        ];
        for (p, k) in yes {
            assert!(routing_key_matches(p, k), "{p} should match {k}");
        }
        let no = [
            ("sensors.*.temp", "sensors.temp"),
            ("sensors.*.temp", "sensors.a.b.temp"),
            ("sensors.*", "sensors"),
            ("*", ""),
            ("#.temp", "temp.x"),
            ("a.#.z", "a.b"),
            ("*.*", "a"),
            ("exact", "exactly"),
            ("sensors.#", "sensorsx.a"),
            ("", "a"),
            ("a", ""),
        ];
        for (p, k) in no {
            assert!(!routing_key_matches(p, k), "{p} should not match {k}");
        }
        // Through the MQTT conversions.
        let m = |filter: &str, topic: &str| {
            routing_key_matches(&filter_to_routing_key(filter), &topic_to_routing_key(topic))
        };
        assert!(m("sensors/+/temp", "sensors/a/temp"));
        assert!(!m("sensors/+/temp", "sensors/a/hum"));
        assert!(m("sensors/#", "sensors/a/temp"));
        assert!(m("sensors/#", "sensors"));
    }

    #[test]
    fn topic_metrics_from_the_subscription_queues() {
        let bindings: Vec<ApiBinding> = items(fixture!("bindings_amq_topic.json"));
        let queues: Vec<ApiQueue> = items(fixture!("queues_columns.json"));
        // offline-gamma's queue has no figures yet: `message_stats: []`.
        assert!(queues.iter().any(|q| q
            .message_stats
            .as_ref()
            .and_then(|s| s.deliver_get)
            .is_none()));
        let topics: Vec<String> = ["sensors/a/temp", "sensors/b/hum", "alerts/x", "other"]
            .map(String::from)
            .to_vec();
        let m = topic_metrics_of(&topics, &bindings, &queues);
        // sensors/a/temp: dash-beta (sensors/#), offline-gamma (sensors/#, sensors/a/+),
        // sensor-alpha (sensors/+/temp).
        assert_eq!(m[0].topic, "sensors/a/temp");
        assert_eq!(m[0].subscribers, Some(3));
        assert_eq!(m[0].queued, Some(3));
        assert_eq!(m[0].messages_out, Some(7 + 5));
        assert!((m[0].rate_out.unwrap() - 1.0).abs() < 1e-9);
        assert_eq!((m[0].messages_in, m[0].rate_in), (None, None));
        // sensors/b/hum: dash-beta and offline-gamma.
        assert_eq!((m[1].subscribers, m[1].queued), (Some(2), Some(3)));
        assert_eq!((m[2].subscribers, m[2].messages_out), (Some(1), Some(7)));
        assert_eq!(
            (m[3].subscribers, m[3].queued, m[3].messages_out),
            (Some(0), Some(0), Some(0))
        );
    }

    #[test]
    fn error_bodies_are_read() {
        let (code, message) = error_parts(
            StatusCode::UNAUTHORIZED,
            include_bytes!("../../tests/fixtures/rabbitmq/error_401.json"),
        );
        assert_eq!(code.as_deref(), Some("not_authorized"));
        assert_eq!(message, "Login failed");
        let (code, message) = error_parts(
            StatusCode::NOT_FOUND,
            include_bytes!("../../tests/fixtures/rabbitmq/error_404.json"),
        );
        assert_eq!(code.as_deref(), Some("Object Not Found"));
        assert_eq!(message, "Not Found");
        let (code, message) = error_parts(
            StatusCode::SERVICE_UNAVAILABLE,
            include_bytes!("../../tests/fixtures/rabbitmq/health_local_alarms_failed.json"),
        );
        assert_eq!(code, None);
        assert_eq!(message, "There are alarms in effect on the node (memory)");
        let (_, message) = error_parts(
            StatusCode::SERVICE_UNAVAILABLE,
            include_bytes!("../../tests/fixtures/rabbitmq/health_failed.json"),
        );
        assert_eq!(message, "No active listener (missing: stomp)");
        assert_eq!(
            error_parts(StatusCode::INTERNAL_SERVER_ERROR, b""),
            (None, "Internal Server Error".into())
        );
        let long = "x".repeat(1000);
        assert_eq!(
            error_parts(StatusCode::BAD_GATEWAY, long.as_bytes())
                .1
                .len(),
            SNIPPET
        );
    }

    #[test]
    fn verdicts_are_answers_not_transport_errors() {
        let http = |status| DriverError::Http {
            op: "health",
            target: N1.into(),
            status,
            code: None,
            message: "No active listener".into(),
        };
        assert!(is_verdict(&http(503)));
        assert!(!is_verdict(&http(401)));
        assert!(!is_verdict(&DriverError::Unreachable {
            op: "health",
            target: N1.into(),
            message: "refused".into()
        }));
        assert_eq!(verdict_detail(&http(503)), "HTTP 503: No active listener");
    }

    #[test]
    fn lists_skip_unreadable_entries_and_refuse_non_lists() {
        let nodes: Vec<ApiNode> = items(serde_json::json!([
            {"name": "a@x", "running": "yes", "mem_used": 1.5e3, "uptime": "42", "partitions": null},
            {"running": true},
            "junk",
        ]));
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].running, None);
        assert_eq!(nodes[0].mem_used, Some(1500));
        assert_eq!(nodes[0].uptime, Some(42));
        assert_eq!(nodes[0].partitions, None);
        let e = list::<ApiNode>("test", &target(N1), serde_json::json!({"a": 1})).unwrap_err();
        assert_eq!(e.reason(), "BadAnswer");
        let e = object::<ApiOverview>("test", &target(N1), serde_json::json!([])).unwrap_err();
        assert_eq!(e.reason(), "BadAnswer");
    }

    #[test]
    fn urls_and_path_segments() {
        assert_eq!(base_url("10.1.2.3", 15672), "http://10.1.2.3:15672/api");
        assert_eq!(base_url("fd00::1", 15672), "http://[fd00::1]:15672/api");
        assert_eq!(enc("/"), "%2F");
        assert_eq!(
            enc("rabbit@bus-0.bus-headless.iot.svc.cluster.local"),
            "rabbit%40bus-0.bus-headless.iot.svc.cluster.local"
        );
        assert_eq!(
            enc("10.0.0.7:51514 -> 10.0.0.1:1883"),
            "10.0.0.7%3A51514%20-%3E%2010.0.0.1%3A1883"
        );
    }

    #[test]
    fn sh_quoting() {
        assert_eq!(sh_quote("rabbit@a.b"), "'rabbit@a.b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn node_names_are_checked_before_any_command() {
        for ok in [
            "rabbit@bus-0.bus-headless.iot.svc.cluster.local",
            "r@127.0.0.1",
        ] {
            assert!(valid_node("join", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "rabbit",
            "rabbit@a b",
            "rabbit@a/../b",
            "rabbit@*",
            "r@a\n",
        ] {
            assert!(valid_node("join", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_join_script_always_starts_the_app() {
        let stray = "rabbit@bus-2.bus-headless.iot.svc.cluster.local";
        let seed = "rabbit@bus-0.bus-headless.iot.svc.cluster.local";
        let argv = join_argv(stray, seed);
        assert_eq!(argv[..2], ["sh", "-c"]);
        let script = &argv[2];
        let stop = script
            .find(&format!("rabbitmqctl -q -l -n '{stray}' stop_app"))
            .unwrap();
        let join = script
            .find(&format!(
                "rabbitmqctl -q -l -n '{stray}' join_cluster '{seed}'"
            ))
            .unwrap();
        let start = script
            .find(&format!("rabbitmqctl -q -l -n '{stray}' start_app"))
            .unwrap();
        assert!(stop < join && join < start);
        // start_app is outside the conditional.
        assert!(script[..start].trim_end().ends_with("fi"));
    }

    /// Runs `script` with `sh`, `rabbitmqctl` replaced by a shell function that logs its
    /// arguments and fails for the verbs in `fail`.
    fn run_with_fake_ctl(script: &str, fail: &[&str]) -> (i32, String) {
        let fake = format!(
            "rabbitmqctl() {{ for v in {fails}; do for a in \"$@\"; do if [ \"$a\" = \"$v\" ]; then echo \"ctl $*: failed\"; return 69; fi; done; done; echo \"ctl $*\"; }}\n",
            fails = if fail.is_empty() { "none".to_string() } else { fail.join(" ") },
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{fake}{script}"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn the_join_script_reports_the_first_failure_and_still_starts() {
        let script = join_script("r@a", "r@b");
        let (rc, out) = run_with_fake_ctl(&script, &[]);
        assert_eq!(rc, 0, "{out}");
        assert!(out.contains("ctl -q -l -n r@a join_cluster r@b"));
        let (rc, out) = run_with_fake_ctl(&script, &["join_cluster"]);
        assert_eq!(rc, 69, "{out}");
        assert!(out.contains("ctl -q -l -n r@a start_app"), "{out}");
        let (rc, out) = run_with_fake_ctl(&script, &["stop_app"]);
        assert_eq!(rc, 69);
        assert!(!out.contains("join_cluster"), "{out}");
        assert!(out.contains("start_app"), "{out}");
        let (rc, out) = run_with_fake_ctl(&script, &["start_app"]);
        assert_eq!(rc, 69, "{out}");
    }

    #[test]
    fn forget_argv_and_outcomes() {
        assert_eq!(
            forget_argv("r@a", "r@b"),
            [
                "rabbitmqctl",
                "-q",
                "-l",
                "-n",
                "r@a",
                "forget_cluster_node",
                "r@b"
            ]
        );
        let out = |exit_code, output: &str| CommandOutput {
            exit_code,
            output: output.into(),
            truncated: false,
        };
        assert_eq!(forget_outcome(&out(0, "")), Forget::Removed);
        assert_eq!(
            forget_outcome(&out(
                69,
                "Error:\n{:not_a_cluster_node, 'The node selected is not in the cluster.'}"
            )),
            Forget::NotAMember
        );
        assert_eq!(
            forget_outcome(&out(69, "Error: unable to perform")),
            Forget::Failed
        );
        let e = command_failed("remove_member", "r@a", &out(69, "  boom\n"));
        assert_eq!(e.to_string(), "remove_member on r@a: exit code 69: boom");
    }

    #[test]
    fn the_quarantine_script_quotes_and_moves() {
        let script = quarantine_script(DATA_DIR, "rabbit@x-2.x-headless.ns.svc.cluster.local");
        assert!(script.contains("dir='/var/lib/rabbitmq/mnesia'"));
        assert!(script.contains("node='rabbit@x-2.x-headless.ns.svc.cluster.local'"));
        assert!(script.contains("mv -- "));
        assert!(!script.contains("rm -rf -- \"$f\""));
        assert_eq!(quarantine_argv("/d", "r@a")[..2], ["sh", "-c"]);
    }

    /// The script itself, on a temporary directory.
    #[test]
    fn the_quarantine_script_moves_only_the_node_and_keeps_the_newest() {
        let dir =
            std::env::temp_dir().join(format!("mooring-quarantine-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let node = "rabbit@x-2.x-headless.ns.svc.cluster.local";
        for d in [
            node.to_string(),
            format!("{node}-plugins-expand"),
            "rabbit@x-1.x-headless.ns.svc.cluster.local".into(),
        ] {
            std::fs::create_dir_all(dir.join(&d).join("sub")).unwrap();
        }
        std::fs::write(dir.join(format!("{node}-feature_flags")), "[]").unwrap();
        std::fs::write(dir.join(format!("{node}.pid")), "1").unwrap();
        std::fs::create_dir_all(dir.join(QUARANTINE_DIR).join("20000101T000000Z")).unwrap();
        let run = || {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(quarantine_script(dir.to_str().unwrap(), node))
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        let (rc, out) = run();
        assert_eq!(rc, Some(0), "{out}");
        assert_eq!(out.matches("mooring: moved").count(), 3, "{out}");
        assert!(out.contains("removed the older quarantine"), "{out}");
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                QUARANTINE_DIR.to_string(),
                "rabbit@x-1.x-headless.ns.svc.cluster.local".into(),
                format!("{node}.pid"),
            ]
        );
        let kept: Vec<_> = std::fs::read_dir(dir.join(QUARANTINE_DIR))
            .unwrap()
            .collect();
        assert_eq!(kept.len(), 1);
        let kept = kept.into_iter().next().unwrap().unwrap().path();
        assert!(kept.join(node).join("sub").is_dir());
        assert!(kept.join(format!("{node}-feature_flags")).is_file());
        // Nothing left to move: a no-op success that keeps the quarantine.
        let (rc, out) = run();
        assert_eq!(rc, Some(0));
        assert!(out.contains("nothing of"), "{out}");
        assert!(kept.is_dir());
        std::fs::remove_dir_all(&dir).unwrap();
        // No data directory: a failure.
        let (rc, out) = run();
        assert_eq!(rc, Some(1), "{out}");
    }
}
