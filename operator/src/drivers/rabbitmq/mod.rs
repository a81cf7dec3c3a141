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
//!
//! # Layout
//!
//! This module holds the driver and its thin HTTP layer; the rest is pure and lives in
//! submodules: `model` (the management API's answers and their mapping to the driver types),
//! `topics` (AMQP topic matching and the topic figures) and `scripts` (the `rabbitmqctl`
//! commands and scripts).

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use tracing::{debug, info};

use super::mqtt_probe::ProxyHeader;
use super::*;
use crate::broker_config::rabbitmq::DATA_DIR;

/// A fixture of `operator/tests/fixtures/rabbitmq/` as JSON (for the unit tests of this module
/// and its submodules).
#[cfg(test)]
macro_rules! fixture {
    ($name:literal) => {
        serde_json::from_str::<serde_json::Value>(include_str!(concat!(
            "../../../tests/fixtures/rabbitmq/",
            $name
        )))
        .unwrap()
    };
}

mod model;
mod scripts;
mod topics;

use model::{
    add_sessions, alarms_of, client_page, cluster_view_of, list, mqtt_connections_of,
    node_stats_of, object, ApiBinding, ApiConnection, ApiNode, ApiOverview, ApiQueue, Connection,
};
use scripts::{command_failed, forget_outcome, valid_node, Forget};
pub use scripts::{
    forget_argv, join_argv, join_script, leave_script, partition_handling_script, quarantine_argv,
    quarantine_script, restart_app_script, restart_vhost_argv, sh_quote, QUARANTINE_DIR,
    RUNTIME_PARTITION_MODES,
};
use topics::topic_metrics_of;
pub use topics::{
    filter_to_routing_key, routing_key_matches, subscription_client_id, topic_to_routing_key,
    MQTT_EXCHANGE, SUBSCRIPTION_QUEUE_PREFIX,
};

/// The management API's port.
pub const MANAGEMENT_PORT: u16 = 15672;
/// The MQTT port for the MQTT-level health check.
pub const MQTT_PORT: u16 = 1883;
/// The `X-Reason` of a kick (RabbitMQ logs it).
pub const KICK_REASON: &str = "kicked by Mooring";
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
const NODE_COLUMNS: &str = "name,running,type,mem_used,mem_limit,uptime,sockets_total,fd_total";
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
    /// What the MQTT health check writes before its `CONNECT`.
    mqtt_proxy_header: ProxyHeader,
}

impl RabbitmqDriver {
    /// A driver with this configuration (one HTTP client for all nodes; no proxy: brokers are
    /// always reached directly).
    pub fn new(config: DriverConfig) -> Result<Self, DriverError> {
        let http =
            super::shared_http(config.http_timeout).map_err(|e| DriverError::Unsupported {
                op: "new",
                why: format!("cannot build the HTTP client: {}", error_chain(&e)),
            })?;
        Ok(Self {
            config,
            http,
            mqtt_proxy_header: ProxyHeader::None,
        })
    }

    /// The same driver, its MQTT health check sending `header` first (brokers behind a load
    /// balancer with `loadBalancer.proxyProtocol` require one).
    pub fn with_mqtt_proxy_header(mut self, header: ProxyHeader) -> Self {
        self.mqtt_proxy_header = header;
        self
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
            super::mqtt_probe::connect_check_with(
                &node.host,
                mqtt_port,
                &self.config.username,
                &self.config.password,
                self.config.http_timeout,
                self.mqtt_proxy_header,
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

    /// See [`Driver::set_partition_handling`]: [`partition_handling_script`], asked of the
    /// first node.
    pub async fn set_partition_handling(
        &self,
        nodes: &[String],
        mode: &str,
    ) -> Result<(), DriverError> {
        const OP: &str = "set_partition_handling";
        let Some(first) = nodes.first() else {
            return Ok(());
        };
        for n in nodes {
            valid_node(OP, n)?;
        }
        if !RUNTIME_PARTITION_MODES.contains(&mode) {
            return Err(DriverError::Command {
                op: OP,
                target: first.clone(),
                message: format!("{mode:?} cannot be set at runtime"),
            });
        }
        let argv = vec![
            "sh".into(),
            "-c".into(),
            partition_handling_script(nodes, mode),
        ];
        let out = self.run(OP, first, argv, None).await?;
        if out.exit_code != 0 {
            return Err(command_failed(OP, first, &out));
        }
        info!(?nodes, mode, "switched partition handling at runtime");
        Ok(())
    }

    /// See [`Driver::leave`]: [`leave_script`] run for the node.
    pub async fn leave(&self, node: &NodeTarget) -> Result<(), DriverError> {
        const OP: &str = "leave";
        valid_node(OP, &node.node)?;
        let argv = vec!["sh".into(), "-c".into(), leave_script(&node.node)];
        let out = self.run(OP, &node.node, argv, None).await?;
        if out.exit_code != 0 {
            return Err(command_failed(OP, &node.node, &out));
        }
        info!(node = %node.node, "the node left the cluster");
        Ok(())
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

    /// See [`Driver::restart_vhosts`]: `restart_vhost -p /` asked of the node over Erlang
    /// distribution ([`restart_vhost_argv`]).
    pub async fn restart_vhosts(&self, node: &NodeTarget) -> Result<(), DriverError> {
        const OP: &str = "restart_vhosts";
        valid_node(OP, &node.node)?;
        let out = self
            .run(OP, &node.node, restart_vhost_argv(&node.node), None)
            .await?;
        if out.exit_code != 0 {
            return Err(command_failed(OP, &node.node, &out));
        }
        info!(node = %node.node, "restarted the default vhost");
        Ok(())
    }

    /// See [`Driver::restart_app`]: [`restart_app_script`] against the node.
    pub async fn restart_app(&self, node: &NodeTarget) -> Result<(), DriverError> {
        const OP: &str = "restart_app";
        valid_node(OP, &node.node)?;
        let argv = vec!["sh".into(), "-c".into(), restart_app_script(&node.node)];
        let out = self.run(OP, &node.node, argv, None).await?;
        if out.exit_code != 0 {
            return Err(command_failed(OP, &node.node, &out));
        }
        info!(node = %node.node, "restarted the broker application");
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

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;

    use super::*;

    pub(super) const N1: &str = "rabbit-mooring-test-1@127.0.0.1";
    pub(super) const N2: &str = "rabbit-mooring-test-2@127.0.0.1";

    pub(super) fn target(node: &str) -> NodeTarget {
        NodeTarget {
            pod: "bus-0".into(),
            host: "10.0.0.1".into(),
            node: node.into(),
        }
    }

    pub(super) fn items<T: DeserializeOwned>(v: Value) -> Vec<T> {
        list("test", &target(N1), v).unwrap()
    }

    #[test]
    fn error_bodies_are_read() {
        let (code, message) = error_parts(
            StatusCode::UNAUTHORIZED,
            include_bytes!("../../../tests/fixtures/rabbitmq/error_401.json"),
        );
        assert_eq!(code.as_deref(), Some("not_authorized"));
        assert_eq!(message, "Login failed");
        let (code, message) = error_parts(
            StatusCode::NOT_FOUND,
            include_bytes!("../../../tests/fixtures/rabbitmq/error_404.json"),
        );
        assert_eq!(code.as_deref(), Some("Object Not Found"));
        assert_eq!(message, "Not Found");
        let (code, message) = error_parts(
            StatusCode::SERVICE_UNAVAILABLE,
            include_bytes!("../../../tests/fixtures/rabbitmq/health_local_alarms_failed.json"),
        );
        assert_eq!(code, None);
        assert_eq!(message, "There are alarms in effect on the node (memory)");
        let (_, message) = error_parts(
            StatusCode::SERVICE_UNAVAILABLE,
            include_bytes!("../../../tests/fixtures/rabbitmq/health_failed.json"),
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
}
