//! The EMQX 5 driver: a thin client of the REST API that every node serves on its dashboard
//! listener (`http://<pod ip>:18083/api/v5`), authenticated with HTTP Basic `key:secret` of the API
//! key Mooring writes into EMQX's API key bootstrap file ([`DriverConfig::username`] and
//! [`DriverConfig::password`]). Shapes and status codes follow EMQX 5.8.9's source, with the
//! differences of 5.0-5.8 tolerated (missing fields are `None`).
//!
//! | Operation | Call (on the given node) |
//! |---|---|
//! | [`health`](EmqxDriver::health) | `GET /status?format=json` (no auth), then `GET /nodes/{node}` |
//! | [`cluster_view`](EmqxDriver::cluster_view) | `GET /cluster` and `GET /nodes` |
//! | [`join`](EmqxDriver::join) | 5.5+: `PUT /cluster/{stray}/invite` on the seed; older: `emqx ctl cluster join` |
//! | [`remove_member`](EmqxDriver::remove_member) | `DELETE /cluster/{ghost}/force_leave` |
//! | [`clients`](EmqxDriver::clients) | `GET /clients?page=&limit=[&like_clientid=][&like_username=]` |
//! | [`kick`](EmqxDriver::kick) | `DELETE /clients/{clientid}` |
//! | [`topic_metrics`](EmqxDriver::topic_metrics) | `GET /mqtt/topic_metrics`, `POST` for topics not registered yet |
//! | [`alarms`](EmqxDriver::alarms) | `GET /alarms?activated=true`, every page |
//! | [`node_stats`](EmqxDriver::node_stats) | `GET /nodes/{node}` |
//!
//! Client ids and node names in paths, and query values, are percent-encoded (everything but
//! RFC 3986 unreserved characters).
//!
//! # Joining
//!
//! From 5.5 the seed *invites* the stray: `PUT /cluster/{stray}/invite` with `{"timeout":15000}`
//! on the seed makes the stray run `ekka:join(seed)` and answers when the join is done, so that
//! one call gets up to 15 s more than [`DriverConfig::http_timeout`]. A 400 whose message names
//! `already_in_cluster` is success (the stray is a member already); other 400s (`node_down`,
//! `Cannot invite self`) are errors. Before 5.5 the invite takes no timeout, so the stray joins
//! itself with `emqx ctl cluster join <seed>` through [`DriverConfig::commands`] (a command Pod
//! that reaches the stray over Erlang distribution). That CLI prints its failures and still exits
//! 0: its output decides (`Failed to join the cluster: {already_in_cluster,...}` is success, any
//! other `Failed ...` or `Ignore.` is an error). A version that does not parse (the renderer
//! rejects those) is taken as recent: the invite.
//!
//! # What EMQX does not have
//!
//! A node the cluster forgot boots and can join again (mria replaces the joining node's local
//! database with the cluster's), so [`reset_forgotten`](EmqxDriver::reset_forgotten) is
//! [`DriverError::Unsupported`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::ACCEPT;
use reqwest::{Method, RequestBuilder};
use serde::de::{DeserializeOwned, Deserializer};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, warn};

use super::{
    Alarm, ClientInfo, ClientPage, ClientQuery, ClusterView, DriverConfig, DriverError, Health,
    HealthCheck, NodeStats, NodeTarget, TopicMetric,
};
use crate::broker_config::emqx::DASHBOARD_PORT;
use crate::broker_config::BrokerVersion;

/// The API's prefix on the dashboard listener.
const API_PREFIX: &str = "/api/v5";
/// The dashboard listener's port when [`DriverConfig::management_port`] is unset.
const DEFAULT_PORT: u16 = DASHBOARD_PORT as u16;
/// The first version whose invite takes a timeout.
const INVITE_VERSION: BrokerVersion = BrokerVersion::new(5, 5, 0);
/// The join timeout sent with an invite (EMQX's default; it refuses less than 5000).
const INVITE_TIMEOUT_MS: u64 = 15_000;
/// The largest page of clients every 5.x accepts (5.5 raised it to 10000).
const MAX_CLIENTS_LIMIT: u32 = 1000;
/// Alarms per page.
const ALARMS_LIMIT: u32 = 100;
/// The most alarm pages read (a guard against a `hasnext` that never ends).
const MAX_ALARM_PAGES: u32 = 20;
/// How much of an unexpected body an error message quotes.
const SNIPPET: usize = 200;
/// Characters encoded in path segments and query values: all but RFC 3986 unreserved ones.
const ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The EMQX 5 driver (see the module documentation).
#[derive(Clone, Debug)]
pub struct EmqxDriver {
    config: DriverConfig,
    client: reqwest::Client,
}

impl EmqxDriver {
    /// A driver with this configuration: one HTTP client with [`DriverConfig::http_timeout`] per
    /// call.
    pub fn new(config: DriverConfig) -> Result<Self, DriverError> {
        let client =
            super::shared_http(config.http_timeout).map_err(|e| DriverError::Unreachable {
                op: "new",
                target: "EMQX".into(),
                message: format!("cannot build the HTTP client: {}", error_chain(&e)),
            })?;
        Ok(Self { config, client })
    }

    /// See [`super::Driver::health`]: the `status` check (`/status`: the broker is started and
    /// the emqx application runs) and, when it passed, the `node-running` check (the node's own
    /// `/nodes/{node}` says `running`).
    pub async fn health(&self, node: &NodeTarget) -> Result<Health, DriverError> {
        const OP: &str = "health";
        let answer = self
            .send(
                OP,
                node,
                self.request(node, Method::GET, "/status?format=json"),
            )
            .await?;
        let status = status_check(answer.status, &answer.body);
        let running = if status.ok {
            let path = format!("/nodes/{}", encode(&node.node));
            let answer = self
                .send(OP, node, self.request(node, Method::GET, &path))
                .await?;
            if answer.status == 404 {
                // `{node}` must name a running member: the node does not know itself by this name.
                let (_, message) = error_parts(answer.status, &answer.body);
                check("node-running", false, format!("HTTP 404: {message}"))
            } else {
                let info: NodeInfo = answer.ok(OP, node)?.json(OP, node)?;
                match info.node_status.as_deref() {
                    Some("running") => check("node-running", true, String::new()),
                    other => check(
                        "node-running",
                        false,
                        format!("node_status is {}", other.unwrap_or("missing")),
                    ),
                }
            }
        } else {
            check("node-running", false, "not checked: /status failed".into())
        };
        Ok(Health::from_checks(vec![status, running]))
    }

    /// See [`super::Driver::cluster_view`]: `/cluster` (running nodes, itself) and `/nodes`
    /// (every known node with its status), both from this node.
    pub async fn cluster_view(&self, node: &NodeTarget) -> Result<ClusterView, DriverError> {
        const OP: &str = "cluster_view";
        let (cluster, nodes) = futures::try_join!(
            self.get_json::<ClusterInfo>(OP, node, "/cluster"),
            self.get_json::<Vec<NodeInfo>>(OP, node, "/nodes"),
        )?;
        Ok(cluster_view_of(&node.node, cluster, &nodes))
    }

    /// See [`super::Driver::join`] and the module documentation: the seed invites the stray
    /// (5.5+), or the stray runs `emqx ctl cluster join <seed>`.
    pub async fn join(&self, stray: &NodeTarget, seed: &NodeTarget) -> Result<(), DriverError> {
        const OP: &str = "join";
        if !uses_invite(&self.config.version) {
            return self.join_with_cli(stray, seed).await;
        }
        let path = format!("/cluster/{}/invite", encode(&stray.node));
        let timeout = Duration::from_millis(INVITE_TIMEOUT_MS) + self.config.http_timeout;
        let request = self
            .request(seed, Method::PUT, &path)
            .json(&json!({ "timeout": INVITE_TIMEOUT_MS }))
            .timeout(timeout);
        let answer = self.send_within(OP, seed, request, timeout).await?;
        if answer.is_success() {
            return Ok(());
        }
        let error = answer.error(OP, seed);
        match &error {
            DriverError::Http {
                status: 400,
                message,
                ..
            } if message.contains("already_in_cluster") => {
                debug!(stray = %stray.node, seed = %seed.node, "already in the seed's cluster");
                Ok(())
            }
            _ => Err(error),
        }
    }

    /// Runs `emqx ctl cluster join <seed>` against the stray (versions without the invite's
    /// timeout).
    async fn join_with_cli(
        &self,
        stray: &NodeTarget,
        seed: &NodeTarget,
    ) -> Result<(), DriverError> {
        const OP: &str = "join";
        let argv = join_argv(&stray.node, &seed.node);
        let output = self
            .config
            .commands
            .run(argv, None, self.config.command_timeout)
            .await
            .map_err(|e| DriverError::Command {
                op: OP,
                target: stray.node.clone(),
                message: e.to_string(),
            })?;
        cli_join_outcome(output.exit_code, &output.output).map_err(|message| DriverError::Command {
            op: OP,
            target: stray.node.clone(),
            message,
        })
    }

    /// See [`super::Driver::remove_member`]: `force_leave` of the ghost, asking `via`.
    pub async fn remove_member(&self, via: &NodeTarget, ghost: &str) -> Result<(), DriverError> {
        const OP: &str = "remove_member";
        let path = format!("/cluster/{}/force_leave", encode(ghost));
        self.send(OP, via, self.request(via, Method::DELETE, &path))
            .await?
            .ok(OP, via)?;
        Ok(())
    }

    /// See [`super::Driver::reset_forgotten`]: EMQX has no such failure mode.
    pub async fn reset_forgotten(&self, _node: &NodeTarget) -> Result<(), DriverError> {
        Err(DriverError::Unsupported {
            op: "reset_forgotten",
            why: "an EMQX node the cluster forgot still boots, and joining replaces its local \
                  database with the cluster's (mria): there is nothing to move aside"
                .into(),
        })
    }

    /// See [`super::Driver::restart_vhosts`]: EMQX has no virtual hosts.
    pub async fn restart_vhosts(&self, _node: &NodeTarget) -> Result<(), DriverError> {
        Err(DriverError::Unsupported {
            op: "restart_vhosts",
            why: "EMQX has no virtual hosts".into(),
        })
    }

    /// See [`super::Driver::restart_app`]: not done for EMQX (its health has no MQTT-level
    /// check that would call for it).
    pub async fn restart_app(&self, _node: &NodeTarget) -> Result<(), DriverError> {
        Err(DriverError::Unsupported {
            op: "restart_app",
            why: "not implemented for EMQX".into(),
        })
    }

    /// See [`super::Driver::clients`]. The limit is clamped to 1..=1000 (the largest page every
    /// 5.x accepts).
    pub async fn clients(
        &self,
        via: &NodeTarget,
        query: &ClientQuery,
    ) -> Result<ClientPage, DriverError> {
        let (path, page, limit) = clients_path(query);
        let answer: Paged<ClientRow> = self.get_json("clients", via, &path).await?;
        Ok(client_page(answer, page, limit))
    }

    /// See [`super::Driver::kick`]: 204 is `true`, 404 `CLIENTID_NOT_FOUND` is `false`.
    pub async fn kick(&self, via: &NodeTarget, client_id: &str) -> Result<bool, DriverError> {
        const OP: &str = "kick";
        let path = format!("/clients/{}", encode(client_id));
        let answer = self
            .send(OP, via, self.request(via, Method::DELETE, &path))
            .await?;
        if answer.status == 404 && answer.code().as_deref() == Some("CLIENTID_NOT_FOUND") {
            return Ok(false);
        }
        answer.ok(OP, via)?;
        Ok(true)
    }

    /// See [`super::Driver::topic_metrics`]. Topics not registered for metrics yet are registered
    /// (EMQX counts from then on, at most 512 topics); figures are cluster-wide.
    pub async fn topic_metrics(
        &self,
        via: &NodeTarget,
        topics: &[String],
    ) -> Result<Vec<TopicMetric>, DriverError> {
        const OP: &str = "topic_metrics";
        let rows: Vec<TopicMetricsRow> = self.get_json(OP, via, "/mqtt/topic_metrics").await?;
        let mut known: BTreeMap<String, TopicMetricsRow> =
            rows.into_iter().map(|r| (r.topic.clone(), r)).collect();
        for topic in topics {
            if known.contains_key(topic) {
                continue;
            }
            let request = self
                .request(via, Method::POST, "/mqtt/topic_metrics")
                .json(&json!({ "topic": topic }));
            let answer = self.send(OP, via, request).await?;
            if !answer.is_success() {
                return Err(name_topic(answer.error(OP, via), topic));
            }
            // 5.x answers 200 with the new entry; the schema says 204 (no body).
            let row = if answer.body.iter().all(u8::is_ascii_whitespace) {
                TopicMetricsRow::default()
            } else {
                answer.json(OP, via)?
            };
            known.insert(topic.clone(), row);
        }
        Ok(topics
            .iter()
            .map(|t| topic_metric(t, known.get(t)))
            .collect())
    }

    /// See [`super::Driver::alarms`]: the active alarms of every node, page by page.
    pub async fn alarms(&self, via: &NodeTarget) -> Result<Vec<Alarm>, DriverError> {
        const OP: &str = "alarms";
        let mut alarms = Vec::new();
        for page in 1..=MAX_ALARM_PAGES {
            let path = format!("/alarms?activated=true&page={page}&limit={ALARMS_LIMIT}");
            let answer: Paged<AlarmRow> = self.get_json(OP, via, &path).await?;
            alarms.extend(answer.data.into_iter().map(alarm));
            if answer.meta.hasnext != Some(true) {
                return Ok(alarms);
            }
        }
        warn!(node = %via.node, pages = MAX_ALARM_PAGES, "more alarm pages than read");
        Ok(alarms)
    }

    /// See [`super::Driver::node_stats`]: the node's own `/nodes/{node}`.
    pub async fn node_stats(&self, node: &NodeTarget) -> Result<NodeStats, DriverError> {
        let path = format!("/nodes/{}", encode(&node.node));
        let info: NodeInfo = self.get_json("node_stats", node, &path).await?;
        Ok(node_stats_of(&node.node, info))
    }

    /// A request to `path` (under `/api/v5`) of the node's API, authenticated.
    fn request(&self, node: &NodeTarget, method: Method, path: &str) -> RequestBuilder {
        let port = self.config.management_port.unwrap_or(DEFAULT_PORT);
        let url = format!("{}{path}", base_url(&node.host, port));
        self.client
            .request(method, url)
            .basic_auth(&self.config.username, Some(&self.config.password))
            .header(ACCEPT, "application/json")
    }

    /// Sends a request with the default time limit; any status is an [`Answer`].
    async fn send(
        &self,
        op: &'static str,
        node: &NodeTarget,
        request: RequestBuilder,
    ) -> Result<Answer, DriverError> {
        self.send_within(op, node, request, self.config.http_timeout)
            .await
    }

    /// Sends a request whose time limit is `after`; any status is an [`Answer`].
    async fn send_within(
        &self,
        op: &'static str,
        node: &NodeTarget,
        request: RequestBuilder,
        after: Duration,
    ) -> Result<Answer, DriverError> {
        let transport = |e: reqwest::Error| transport_error(op, node, after, &e);
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(transport)?.to_vec();
        debug!(op, node = %node.node, status, "EMQX API answered");
        Ok(Answer { status, body })
    }

    /// `GET path`, a 2xx answer and its JSON body.
    async fn get_json<T: DeserializeOwned>(
        &self,
        op: &'static str,
        node: &NodeTarget,
        path: &str,
    ) -> Result<T, DriverError> {
        self.send(op, node, self.request(node, Method::GET, path))
            .await?
            .ok(op, node)?
            .json(op, node)
    }
}

/// One HTTP answer, whatever its status.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The answer when its status is 2xx, else the [`DriverError::Http`] it carries.
    fn ok(self, op: &'static str, node: &NodeTarget) -> Result<Self, DriverError> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(self.error(op, node))
        }
    }

    fn json<T: DeserializeOwned>(
        &self,
        op: &'static str,
        node: &NodeTarget,
    ) -> Result<T, DriverError> {
        serde_json::from_slice(&self.body).map_err(|e| DriverError::Decode {
            op,
            target: node.node.clone(),
            message: format!("{e} in {:?}", snippet(&self.body)),
        })
    }

    /// EMQX's error `code`, when the body has one.
    fn code(&self) -> Option<String> {
        serde_json::from_slice::<ErrorBody>(&self.body).ok()?.code
    }

    /// The answer as a [`DriverError::Http`], with EMQX's `code` and `message` when the body has
    /// them.
    fn error(&self, op: &'static str, node: &NodeTarget) -> DriverError {
        let (code, message) = error_parts(self.status, &self.body);
        DriverError::Http {
            op,
            target: node.node.clone(),
            status: self.status,
            code,
            message,
        }
    }
}

/// `code` and `message` of an EMQX error body; a body that is not one is quoted (or named empty).
fn error_parts(status: u16, body: &[u8]) -> (Option<String>, String) {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            code,
            message: Some(message),
        }) => {
            let message = match message {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (code, message)
        }
        Ok(ErrorBody {
            code,
            message: None,
        }) => (code, snippet(body)),
        Err(_) if body.iter().all(u8::is_ascii_whitespace) => {
            let reason = reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error");
            (None, format!("{reason} (empty body)"))
        }
        Err(_) => (None, snippet(body)),
    }
}

/// The first [`SNIPPET`] characters of a body.
fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(SNIPPET)
        .collect()
}

/// A transport failure as a driver error: connect errors are `Unreachable`, time limits
/// `Timeout`.
fn transport_error(
    op: &'static str,
    node: &NodeTarget,
    after: Duration,
    error: &reqwest::Error,
) -> DriverError {
    let target = format!("{} ({})", node.node, node.host);
    if error.is_connect() {
        DriverError::Unreachable {
            op,
            target,
            message: error_chain(error),
        }
    } else if error.is_timeout() {
        DriverError::Timeout { op, target, after }
    } else {
        DriverError::Unreachable {
            op,
            target,
            message: error_chain(error),
        }
    }
}

/// An error and its sources, `: `-separated (reqwest's own message hides the cause).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// `http://host:port/api/v5`, with an IPv6 address in brackets.
fn base_url(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("http://[{host}]:{port}{API_PREFIX}")
    } else {
        format!("http://{host}:{port}{API_PREFIX}")
    }
}

/// A path segment or query value, percent-encoded.
fn encode(text: &str) -> String {
    utf8_percent_encode(text, ENCODED).to_string()
}

fn check(name: &str, ok: bool, detail: String) -> HealthCheck {
    HealthCheck {
        name: name.into(),
        ok,
        detail,
    }
}

/// The `status` check from `/status`: 200 with a started broker and a running emqx application.
/// Bodies are JSON (`?format=json`, 5.0.25+) or text (`Node n is started\nemqx is running`).
fn status_check(status: u16, body: &[u8]) -> HealthCheck {
    let reported = status_of_body(body);
    let detail = match (&reported, status) {
        (Some((broker, app)), 200) if broker == "started" && app == "running" => String::new(),
        (None, 200) => String::new(),
        (Some((broker, app)), _) => format!("HTTP {status}: broker {broker}, emqx {app}"),
        (None, 503) if body.iter().all(u8::is_ascii_whitespace) => {
            "HTTP 503 with an empty body: the dashboard listeners are not ready".into()
        }
        (None, _) => format!("HTTP {status}: {}", snippet(body)),
    };
    check("status", detail.is_empty(), detail)
}

/// `(broker_status, app_status)` of a `/status` body, JSON or text.
fn status_of_body(body: &[u8]) -> Option<(String, String)> {
    if let Ok(status) = serde_json::from_slice::<StatusBody>(body) {
        return Some((status.broker_status?, status.app_status?));
    }
    let text = std::str::from_utf8(body).ok()?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let last_word = |line: &str| line.split_whitespace().last().map(str::to_string);
    let broker = last_word(lines.next()?)?;
    let app = last_word(lines.next()?)?;
    Some((broker, app))
}

/// The view of the node `fallback` names (used when `/cluster` has no `self`): running is
/// `/cluster`'s nodes and every `/nodes` entry that runs; stopped the other `/nodes` entries.
fn cluster_view_of(fallback: &str, cluster: ClusterInfo, nodes: &[NodeInfo]) -> ClusterView {
    let mut running: BTreeSet<String> = cluster.nodes.into_iter().collect();
    running.extend(
        nodes
            .iter()
            .filter(|n| n.node_status.as_deref() == Some("running"))
            .map(|n| n.node.clone()),
    );
    let stopped: BTreeSet<String> = nodes
        .iter()
        .map(|n| n.node.clone())
        .filter(|n| !n.is_empty() && !running.contains(n))
        .collect();
    ClusterView {
        node: cluster
            .self_node
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| fallback.to_string()),
        running: running.into_iter().filter(|n| !n.is_empty()).collect(),
        stopped: stopped.into_iter().collect(),
        partitions: Vec::new(),
    }
}

/// Whether this version joins by invite (5.5+; unparseable versions are taken as recent).
fn uses_invite(version: &str) -> bool {
    BrokerVersion::parse(version).is_none_or(|v| v >= INVITE_VERSION)
}

/// `emqx ctl cluster join <seed>` against the stray node.
fn join_argv(stray: &str, seed: &str) -> Vec<String> {
    [
        "env".to_string(),
        format!("EMQX_NODE__NAME={stray}"),
        "emqx".into(),
        "ctl".into(),
        "cluster".into(),
        "join".into(),
        seed.to_string(),
    ]
    .into()
}

/// Whether `emqx ctl cluster join` succeeded: it prints its failures and exits 0 all the same.
fn cli_join_outcome(exit_code: i32, output: &str) -> Result<(), String> {
    let output = output.trim();
    if exit_code != 0 {
        return Err(format!("exit code {exit_code}: {output}"));
    }
    if output.contains("already_in_cluster") {
        return Ok(());
    }
    if output.contains("Failed") || output.lines().any(|l| l.trim() == "Ignore.") {
        return Err(format!("the join failed: {output}"));
    }
    Ok(())
}

/// Names the topic in an error's message.
fn name_topic(error: DriverError, topic: &str) -> DriverError {
    match error {
        DriverError::Http {
            op,
            target,
            status,
            code,
            message,
        } => DriverError::Http {
            op,
            target,
            status,
            code,
            message: format!("topic {topic:?}: {message}"),
        },
        other => other,
    }
}

/// The `/clients` path for a query, with the page and the (clamped) limit asked for.
fn clients_path(query: &ClientQuery) -> (String, u32, u32) {
    let page = query.page.max(1);
    let limit = query.limit.clamp(1, MAX_CLIENTS_LIMIT);
    let mut path = format!("/clients?page={page}&limit={limit}");
    if let Some(id) = &query.client_id {
        path.push_str(&format!("&like_clientid={}", encode(id)));
    }
    if let Some(user) = &query.username {
        path.push_str(&format!("&like_username={}", encode(user)));
    }
    (path, page, limit)
}

fn client_page(answer: Paged<ClientRow>, page: u32, limit: u32) -> ClientPage {
    let meta = answer.meta;
    let narrow = |n: Option<u64>| n.and_then(|n| u32::try_from(n).ok());
    ClientPage {
        clients: answer.data.into_iter().map(client_info).collect(),
        page: narrow(meta.page).unwrap_or(page),
        limit: narrow(meta.limit).unwrap_or(limit),
        has_next: meta.hasnext.unwrap_or(false),
        total: meta.count,
    }
}

fn client_info(row: ClientRow) -> ClientInfo {
    ClientInfo {
        protocol: protocol(row.proto_name.as_deref(), row.proto_ver.as_ref()),
        client_id: row.clientid,
        username: row.username,
        node: row.node,
        ip_address: row.ip_address,
        port: row.port,
        connected: row.connected.unwrap_or(false),
        connected_at: row.connected_at,
        subscriptions: row.subscriptions_cnt,
        queue_len: row.mqueue_len,
        keepalive: row.keepalive,
    }
}

/// `MQTT 5`, `MQTT 3.1.1` (protocol level 4), `MQTT 3.1` (3); other protocols as they name
/// themselves.
fn protocol(name: Option<&str>, version: Option<&Value>) -> Option<String> {
    let name = name?;
    let version = match version {
        Some(Value::Number(n)) if name.eq_ignore_ascii_case("MQTT") => match n.as_u64() {
            Some(3) => "3.1".to_string(),
            Some(4) => "3.1.1".to_string(),
            _ => n.to_string(),
        },
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => return Some(name.to_string()),
    };
    Some(format!("{name} {version}"))
}

fn topic_metric(topic: &str, row: Option<&TopicMetricsRow>) -> TopicMetric {
    let value = |key: &str| row.and_then(|r| r.metrics.get(key));
    let count = |key: &str| value(key).and_then(as_u64);
    let rate = |key: &str| value(key).and_then(Value::as_f64);
    TopicMetric {
        topic: topic.to_string(),
        messages_in: count("messages.in.count"),
        messages_out: count("messages.out.count"),
        messages_dropped: count("messages.dropped.count"),
        rate_in: rate("messages.in.rate"),
        rate_out: rate("messages.out.rate"),
        subscribers: None,
        queued: None,
    }
}

fn alarm(row: AlarmRow) -> Alarm {
    Alarm {
        node: row.node,
        name: row.name,
        message: row.message.unwrap_or_default(),
        activated_at: row.activate_at,
    }
}

fn node_stats_of(fallback: &str, info: NodeInfo) -> NodeStats {
    NodeStats {
        node: if info.node.is_empty() {
            fallback.to_string()
        } else {
            info.node
        },
        running: info.node_status.as_deref() == Some("running"),
        role: info.role,
        version: info.version,
        connections: info.live_connections.or(info.connections),
        memory_used_bytes: info.memory_used.as_ref().and_then(parse_kmg),
        memory_limit_bytes: info.memory_total.as_ref().and_then(parse_kmg),
        uptime_seconds: info.uptime.map(|ms| ms / 1000),
        connections_limit: info.max_fds,
    }
}

/// Bytes from `emqx_mgmt_util:kmg`: `"1.20G"`, `"512.00M"`, `"800.00K"` (powers of 1024), or a
/// plain count of bytes (a number, or its text in newer versions).
fn parse_kmg(value: &Value) -> Option<u64> {
    let text = match value {
        Value::Number(n) => return as_u64(&Value::Number(n.clone())),
        Value::String(s) => s.trim(),
        _ => return None,
    };
    let (number, scale) = match text.char_indices().last()? {
        (i, 'K' | 'k') => (&text[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&text[..i], 1 << 20),
        (i, 'G' | 'g') => (&text[..i], 1 << 30),
        (i, 'T' | 't') => (&text[..i], 1 << 40),
        _ => (text, 1),
    };
    let number: f64 = number.trim().parse().ok()?;
    // A negative, infinite or NaN figure is no size.
    (number.is_finite() && number >= 0.0).then(|| (number * scale as f64).round() as u64)
}

/// A count from a JSON integer, a whole float or a numeric string.
fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f.round() as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A field that is `None` when it is missing, `null` or of another type.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.and_then(|v| serde_json::from_value(v).ok()))
}

/// A count that is `None` when it is missing, `null` or not a count (`"infinity"`).
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Option::<Value>::deserialize(d)?.as_ref().and_then(as_u64))
}

/// An EMQX error body.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default, deserialize_with = "lenient")]
    code: Option<String>,
    #[serde(default)]
    message: Option<Value>,
}

/// `/status?format=json`.
#[derive(Deserialize)]
struct StatusBody {
    #[serde(default, deserialize_with = "lenient")]
    broker_status: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    app_status: Option<String>,
}

/// `/cluster`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct ClusterInfo {
    nodes: Vec<String>,
    #[serde(rename = "self", deserialize_with = "lenient")]
    self_node: Option<String>,
}

/// One entry of `/nodes`, or `/nodes/{node}` (stopped nodes have only `node`, `node_status` and,
/// after 5.0, `role`).
#[derive(Default, Deserialize)]
#[serde(default)]
struct NodeInfo {
    node: String,
    #[serde(deserialize_with = "lenient")]
    node_status: Option<String>,
    #[serde(deserialize_with = "lenient")]
    role: Option<String>,
    #[serde(deserialize_with = "lenient")]
    version: Option<String>,
    #[serde(deserialize_with = "lenient_u64")]
    uptime: Option<u64>,
    #[serde(deserialize_with = "lenient_u64")]
    connections: Option<u64>,
    #[serde(deserialize_with = "lenient_u64")]
    live_connections: Option<u64>,
    /// The node's file descriptor limit: the most connections it can hold.
    #[serde(deserialize_with = "lenient_u64")]
    max_fds: Option<u64>,
    memory_total: Option<Value>,
    memory_used: Option<Value>,
}

/// A paged answer: `{"data":[...],"meta":{...}}`.
#[derive(Deserialize)]
struct Paged<T> {
    data: Vec<T>,
    #[serde(default)]
    meta: PageMeta,
}

/// `meta` of a paged answer (`count` is left out when it would need a full scan).
#[derive(Default, Deserialize)]
#[serde(default)]
struct PageMeta {
    #[serde(deserialize_with = "lenient_u64")]
    page: Option<u64>,
    #[serde(deserialize_with = "lenient_u64")]
    limit: Option<u64>,
    #[serde(deserialize_with = "lenient")]
    hasnext: Option<bool>,
    #[serde(deserialize_with = "lenient_u64")]
    count: Option<u64>,
}

/// One `/clients` row (the fields Mooring shows).
#[derive(Default, Deserialize)]
#[serde(default)]
struct ClientRow {
    clientid: String,
    #[serde(deserialize_with = "lenient")]
    username: Option<String>,
    node: String,
    #[serde(deserialize_with = "lenient")]
    ip_address: Option<String>,
    #[serde(deserialize_with = "lenient")]
    port: Option<u16>,
    #[serde(deserialize_with = "lenient")]
    connected: Option<bool>,
    #[serde(deserialize_with = "lenient")]
    connected_at: Option<String>,
    #[serde(deserialize_with = "lenient")]
    proto_name: Option<String>,
    proto_ver: Option<Value>,
    #[serde(deserialize_with = "lenient_u64")]
    keepalive: Option<u64>,
    #[serde(deserialize_with = "lenient_u64")]
    subscriptions_cnt: Option<u64>,
    #[serde(deserialize_with = "lenient_u64")]
    mqueue_len: Option<u64>,
}

/// One `/mqtt/topic_metrics` entry.
#[derive(Default, Deserialize)]
#[serde(default)]
struct TopicMetricsRow {
    topic: String,
    metrics: BTreeMap<String, Value>,
}

/// One `/alarms` row.
#[derive(Default, Deserialize)]
#[serde(default)]
struct AlarmRow {
    node: String,
    name: String,
    #[serde(deserialize_with = "lenient")]
    message: Option<String>,
    #[serde(deserialize_with = "lenient")]
    activate_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(json: Value) -> Vec<NodeInfo> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn kmg_sizes_are_powers_of_1024() {
        let kmg = |s: &str| parse_kmg(&Value::String(s.into()));
        assert_eq!(kmg("1.20G"), Some(1_288_490_189));
        assert_eq!(kmg("7.65G"), Some(8_214_124_954));
        assert_eq!(kmg("512.00M"), Some(512 << 20));
        assert_eq!(kmg("800K"), Some(800 << 10));
        assert_eq!(kmg("800.50K"), Some(819_712));
        assert_eq!(kmg("2048.00G"), Some(2048 << 30));
        assert_eq!(kmg(" 900 "), Some(900));
        assert_eq!(parse_kmg(&json!(900)), Some(900));
    }

    #[test]
    fn kmg_refuses_what_is_no_size() {
        for bad in ["", "G", "-1.00G", "1.2X", "lots", "NaNG", "infG"] {
            assert_eq!(parse_kmg(&Value::String(bad.into())), None, "{bad:?}");
        }
        assert_eq!(parse_kmg(&json!(null)), None);
        assert_eq!(parse_kmg(&json!(-5)), None);
    }

    #[test]
    fn protocol_names_mqtt_levels_by_their_version() {
        let p = |name: Option<&str>, ver: Value| protocol(name, Some(&ver));
        assert_eq!(p(Some("MQTT"), json!(5)).as_deref(), Some("MQTT 5"));
        assert_eq!(p(Some("MQTT"), json!(4)).as_deref(), Some("MQTT 3.1.1"));
        assert_eq!(p(Some("MQTT"), json!(3)).as_deref(), Some("MQTT 3.1"));
        assert_eq!(
            p(Some("MQTT-SN"), json!("1.2")).as_deref(),
            Some("MQTT-SN 1.2")
        );
        assert_eq!(protocol(Some("MQTT"), None).as_deref(), Some("MQTT"));
        assert_eq!(protocol(None, Some(&json!(4))), None);
    }

    #[test]
    fn status_is_ok_only_when_started_and_running() {
        let json_ok = br#"{"node_name":"emqx@a","rel_vsn":"v5.8.9","broker_status":"started","app_status":"running"}"#;
        assert!(status_check(200, json_ok).ok);
        assert!(status_check(200, b"Node emqx@a is started\nemqx is running").ok);

        let text_down = status_check(200, b"Node emqx@a is started\nemqx is not_running");
        assert!(!text_down.ok);
        assert_eq!(
            text_down.detail,
            "HTTP 200: broker started, emqx not_running"
        );

        let json_down = br#"{"broker_status":"stopped","app_status":"not_running"}"#;
        assert_eq!(
            status_check(503, json_down).detail,
            "HTTP 503: broker stopped, emqx not_running"
        );
        let empty = status_check(503, b"");
        assert!(!empty.ok);
        assert!(empty.detail.contains("empty body"), "{}", empty.detail);
        assert_eq!(status_check(500, b"boom").detail, "HTTP 500: boom");
    }

    #[test]
    fn cluster_view_merges_cluster_and_nodes() {
        let cluster = ClusterInfo {
            nodes: vec!["emqx@b".into(), "emqx@a".into()],
            self_node: Some("emqx@a".into()),
        };
        let nodes = nodes(json!([
            {"node": "emqx@a", "node_status": "running", "role": "core"},
            {"node": "emqx@c", "node_status": "stopped"},
            {"node": "emqx@d", "node_status": "running"},
            {"node": "emqx@c", "node_status": "stopped", "role": "core"}
        ]));
        let view = cluster_view_of("emqx@fallback", cluster, &nodes);
        assert_eq!(view.node, "emqx@a");
        assert_eq!(view.running, ["emqx@a", "emqx@b", "emqx@d"]);
        assert_eq!(view.stopped, ["emqx@c"]);
        assert!(view.partitions.is_empty());
    }

    #[test]
    fn cluster_view_falls_back_to_the_asked_name() {
        let view = cluster_view_of("emqx@x", ClusterInfo::default(), &[]);
        assert_eq!(view.node, "emqx@x");
        assert!(view.running.is_empty() && view.stopped.is_empty());
    }

    #[test]
    fn invite_from_5_5() {
        for v in ["5.5", "5.5.0", "5.8.9", "5.10.0-rc.1", "6.0.0", "latest"] {
            assert!(uses_invite(v), "{v}");
        }
        for v in ["5.4.1", "5.1", "5.0.26"] {
            assert!(!uses_invite(v), "{v}");
        }
    }

    #[test]
    fn cli_join_reads_the_output() {
        assert!(cli_join_outcome(0, "Join the cluster successfully.\nCluster status: #{}").is_ok());
        assert!(cli_join_outcome(
            0,
            "Failed to join the cluster: {already_in_cluster,'emqx@a'}"
        )
        .is_ok());
        let down = cli_join_outcome(0, "Failed to join the cluster: {node_down,'emqx@a'}");
        assert!(down.is_err_and(|m| m.contains("node_down")));
        assert!(cli_join_outcome(0, "Ignore.\n").is_err());
        let exit = cli_join_outcome(1, "Node 'emqx@b' not responding to pings.\n");
        assert_eq!(
            exit,
            Err("exit code 1: Node 'emqx@b' not responding to pings.".into())
        );
    }

    #[test]
    fn error_parts_reads_emqx_bodies_and_tolerates_others() {
        let (code, message) = error_parts(
            404,
            br#"{"code":"CLIENTID_NOT_FOUND","message":"Client ID not found"}"#,
        );
        assert_eq!(code.as_deref(), Some("CLIENTID_NOT_FOUND"));
        assert_eq!(message, "Client ID not found");
        let (code, message) = error_parts(400, br#"{"code":"BAD_REQUEST","message":{"k":1}}"#);
        assert_eq!(
            (code.as_deref(), message.as_str()),
            (Some("BAD_REQUEST"), r#"{"k":1}"#)
        );
        assert_eq!(
            error_parts(503, b""),
            (None, "Service Unavailable (empty body)".into())
        );
        assert_eq!(
            error_parts(502, b"<html>bad gateway</html>"),
            (None, "<html>bad gateway</html>".into())
        );
    }

    #[test]
    fn client_rows_of_5_0_and_5_8_map() {
        let rows: Vec<ClientRow> = serde_json::from_value(json!([
            {"clientid": "dev-1", "username": null, "node": "emqx@a", "ip_address": "10.1.2.3",
             "port": 52571, "connected": true, "connected_at": "2025-01-01T12:00:00.123+00:00",
             "proto_name": "MQTT", "proto_ver": 5, "keepalive": 60, "subscriptions_cnt": 1,
             "subscriptions_max": "infinity", "mqueue_len": 3},
            {"clientid": "old", "node": "emqx@b", "proto_name": "MQTT", "proto_ver": 4,
             "keepalive": "60", "mqueue_len": null}
        ]))
        .unwrap();
        let infos: Vec<ClientInfo> = rows.into_iter().map(client_info).collect();
        assert_eq!(
            infos[0],
            ClientInfo {
                client_id: "dev-1".into(),
                username: None,
                node: "emqx@a".into(),
                ip_address: Some("10.1.2.3".into()),
                port: Some(52571),
                connected: true,
                connected_at: Some("2025-01-01T12:00:00.123+00:00".into()),
                protocol: Some("MQTT 5".into()),
                subscriptions: Some(1),
                queue_len: Some(3),
                keepalive: Some(60),
            }
        );
        assert_eq!(infos[1].protocol.as_deref(), Some("MQTT 3.1.1"));
        assert_eq!(infos[1].keepalive, Some(60));
        assert_eq!(
            (infos[1].queue_len, infos[1].port, infos[1].connected),
            (None, None, false)
        );
    }

    #[test]
    fn clients_path_clamps_and_encodes() {
        let query = ClientQuery {
            page: 0,
            limit: 5000,
            client_id: Some("dev/1 a+b".into()),
            username: Some("ü@x".into()),
        };
        let (path, page, limit) = clients_path(&query);
        assert_eq!(
            path,
            "/clients?page=1&limit=1000&like_clientid=dev%2F1%20a%2Bb&like_username=%C3%BC%40x"
        );
        assert_eq!((page, limit), (1, 1000));
        let (path, _, limit) = clients_path(&ClientQuery {
            limit: 0,
            ..ClientQuery::default()
        });
        assert_eq!((path.as_str(), limit), ("/clients?page=1&limit=1", 1));
    }

    #[test]
    fn topic_metric_reads_messages_keys() {
        let row: TopicMetricsRow = serde_json::from_value(json!({
            "topic": "a/b",
            "metrics": {"messages.in.count": 10, "messages.in.rate": 0.5, "messages.out.count": 8,
                        "messages.out.rate": 0.4, "messages.dropped.count": 1,
                        "message.in.count": 999}
        }))
        .unwrap();
        let metric = topic_metric("a/b", Some(&row));
        assert_eq!(
            (
                metric.messages_in,
                metric.messages_out,
                metric.messages_dropped
            ),
            (Some(10), Some(8), Some(1))
        );
        assert_eq!((metric.rate_in, metric.rate_out), (Some(0.5), Some(0.4)));
        assert_eq!((metric.subscribers, metric.queued), (None, None));
        assert_eq!(
            topic_metric("x", None),
            TopicMetric {
                topic: "x".into(),
                ..TopicMetric::default()
            }
        );
    }

    #[test]
    fn node_stats_prefer_live_connections() {
        let info: NodeInfo = serde_json::from_value(json!({
            "node": "emqx@a", "node_status": "running", "role": "core", "version": "5.8.9",
            "uptime": 5_120_999, "connections": 12, "live_connections": 10,
            "memory_total": "7.65G", "memory_used": "1.20G", "max_fds": 1_048_576
        }))
        .unwrap();
        let stats = node_stats_of("emqx@a", info);
        assert_eq!(stats.connections, Some(10));
        assert_eq!(stats.connections_limit, Some(1_048_576));
        assert_eq!(stats.uptime_seconds, Some(5120));
        assert_eq!(stats.memory_used_bytes, Some(1_288_490_189));
        let stopped: NodeInfo =
            serde_json::from_value(json!({"node": "emqx@c", "node_status": "stopped"})).unwrap();
        let stats = node_stats_of("emqx@c", stopped);
        assert!(!stats.running);
        assert_eq!(
            (stats.role, stats.connections, stats.uptime_seconds),
            (None, None, None)
        );
        assert_eq!(stats.connections_limit, None);
    }

    #[test]
    fn base_url_brackets_ipv6_addresses() {
        assert_eq!(base_url("10.0.0.7", 18083), "http://10.0.0.7:18083/api/v5");
        assert_eq!(base_url("fd00::7", 18083), "http://[fd00::7]:18083/api/v5");
        assert_eq!(
            base_url("emqx-0.h.ns.svc", 8080),
            "http://emqx-0.h.ns.svc:8080/api/v5"
        );
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("emqx@emqx-0.h.ns.svc"), "emqx%40emqx-0.h.ns.svc");
        assert_eq!(encode("a~b_c/d e+f#g?h%"), "a~b_c%2Fd%20e%2Bf%23g%3Fh%25");
    }
}
