//! The EMQX driver against its documented REST API: a fake EMQX serves answers written from the
//! EMQX 5 source (`tests/fixtures/emqx/`, see `shared/reference/emqx-5-api-and-k8s.md`) and records
//! every request, so each test checks what the driver sends (method, path and query, Basic auth,
//! body) and how it reads the answer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Router;
use base64::Engine as _;
use futures::future::BoxFuture;
use mooring_crds::BrokerKind;
use mooring_operator::drivers::emqx::EmqxDriver;
use mooring_operator::drivers::{
    ClientQuery, CommandRunner, Driver, DriverConfig, DriverError, NodeTarget,
};
use mooring_operator::pod_command::{CommandOutput, PodCommandError};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const KEY: &str = "mooring-admin";
const SECRET: &str = "Zm9vYmFy-s3cr3t_~.";
const NODE0: &str = "emqx@emqx-0.bus-headless.iot.svc.cluster.local";
const NODE1: &str = "emqx@emqx-1.bus-headless.iot.svc.cluster.local";
const NODE2: &str = "emqx@emqx-2.bus-headless.iot.svc.cluster.local";
const NODE0_PATH: &str = "emqx%40emqx-0.bus-headless.iot.svc.cluster.local";
const NODE2_PATH: &str = "emqx%40emqx-2.bus-headless.iot.svc.cluster.local";

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("fixtures/emqx/", $name))
    };
}

/// One request the fake received.
#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    /// Path and query exactly as sent (still percent-encoded).
    uri: String,
    authorization: Option<String>,
    body: String,
}

impl Recorded {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// One canned answer: for `method path` (the raw path), when the query contains `query`.
#[derive(Clone)]
struct Route {
    method: &'static str,
    path: String,
    query: Option<&'static str>,
    status: u16,
    body: String,
    content_type: &'static str,
}

fn on(method: &'static str, path: impl Into<String>, status: u16, body: &str) -> Route {
    Route {
        method,
        path: format!("/api/v5{}", path.into()),
        query: None,
        status,
        body: body.to_string(),
        content_type: "application/json",
    }
}

impl Route {
    fn when_query(mut self, query: &'static str) -> Self {
        self.query = Some(query);
        self
    }
    fn text(mut self) -> Self {
        self.content_type = "text/plain";
        self
    }
}

#[derive(Clone)]
struct FakeState {
    routes: Arc<Vec<Route>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

/// A fake EMQX API on a loopback address.
struct FakeEmqx {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeEmqx {
    async fn start(routes: Vec<Route>) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), routes).await
    }

    async fn start_at(addr: SocketAddr, routes: Vec<Route>) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = FakeState {
            routes: Arc::new(routes),
            requests: Arc::default(),
        };
        let requests = state.requests.clone();
        let app = Router::new().fallback(answer).with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, requests }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// `METHOD uri` of every request, in order.
    fn calls(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.uri))
            .collect()
    }

    fn target(&self, node: &str) -> NodeTarget {
        NodeTarget {
            pod: node
                .trim_start_matches("emqx@")
                .split('.')
                .next()
                .unwrap()
                .to_string(),
            host: self.addr.ip().to_string(),
            node: node.to_string(),
        }
    }
}

async fn answer(State(state): State<FakeState>, request: Request) -> Response {
    let method = request.method().to_string();
    let uri = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_string());
    let body = to_bytes(request.into_body(), usize::MAX).await.unwrap();
    state.requests.lock().unwrap().push(Recorded {
        method: method.clone(),
        uri: uri.clone(),
        authorization,
        body: String::from_utf8(body.to_vec()).unwrap(),
    });
    let route = state.routes.iter().find(|r| {
        r.method == method && r.path == path && r.query.is_none_or(|q| query.contains(q))
    });
    let (status, body, content_type) = match route {
        Some(r) => (r.status, r.body.clone(), r.content_type),
        None => (
            404,
            json!({"code": "NOT_FOUND", "message": format!("no fixture for {method} {uri}")})
                .to_string(),
            "application/json",
        ),
    };
    let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
    if !body.is_empty() {
        response = response.header(header::CONTENT_TYPE, content_type);
    }
    response.body(Body::from(body)).unwrap()
}

/// One command the driver asked to run.
#[derive(Clone, Debug)]
struct Command {
    argv: Vec<String>,
    data_of: Option<String>,
    timeout: Duration,
}

/// Records the commands it is asked to run and answers each with the same output.
struct RecordingCommands {
    calls: Mutex<Vec<Command>>,
    /// `None`: the command cannot be run at all.
    reply: Option<(i32, String)>,
}

impl RecordingCommands {
    fn answering(exit_code: i32, output: &str) -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::default(),
            reply: Some((exit_code, output.to_string())),
        })
    }

    fn calls(&self) -> Vec<Command> {
        self.calls.lock().unwrap().clone()
    }
}

impl CommandRunner for RecordingCommands {
    fn run<'a>(
        &'a self,
        argv: Vec<String>,
        data_of: Option<&'a str>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<CommandOutput, PodCommandError>> {
        self.calls.lock().unwrap().push(Command {
            argv,
            data_of: data_of.map(str::to_string),
            timeout,
        });
        let reply = self.reply.clone();
        Box::pin(async move {
            let (exit_code, output) = reply.ok_or(PodCommandError::EmptyCommand)?;
            Ok(CommandOutput {
                exit_code,
                output,
                truncated: false,
            })
        })
    }
}

fn config(version: &str, port: u16, commands: Arc<RecordingCommands>) -> DriverConfig {
    DriverConfig {
        version: version.into(),
        username: KEY.into(),
        password: SECRET.into(),
        http_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(42),
        commands,
        management_port: Some(port),
        mqtt_port: None,
    }
}

fn driver_for(fake: &FakeEmqx) -> EmqxDriver {
    driver_with(fake, "5.8.9", RecordingCommands::answering(0, ""))
}

fn driver_with(fake: &FakeEmqx, version: &str, commands: Arc<RecordingCommands>) -> EmqxDriver {
    EmqxDriver::new(config(version, fake.addr.port(), commands)).unwrap()
}

fn basic_auth() -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{KEY}:{SECRET}"));
    format!("Basic {token}")
}

// ---------------------------------------------------------------------------------------------
// Authentication and transport

#[tokio::test]
async fn every_call_sends_basic_auth_of_the_api_key_and_secret() {
    let fake = FakeEmqx::start(vec![
        on("GET", "/cluster", 200, fixture!("cluster.json")),
        on("GET", "/nodes", 200, fixture!("nodes-5.8.json")),
        on(
            "GET",
            format!("/nodes/{NODE0_PATH}"),
            200,
            fixture!("node-5.8.json"),
        ),
    ])
    .await;
    let driver = Driver::new(
        BrokerKind::Emqx,
        config(
            "5.8.9",
            fake.addr.port(),
            RecordingCommands::answering(0, ""),
        ),
    )
    .unwrap();
    let node = fake.target(NODE0);
    driver.cluster_view(&node).await.unwrap();
    driver.node_stats(&node).await.unwrap();

    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    for request in &requests {
        assert_eq!(
            request.authorization.as_deref(),
            Some(basic_auth().as_str()),
            "{request:?}"
        );
    }
    assert_eq!(
        basic_auth(),
        "Basic bW9vcmluZy1hZG1pbjpabTl2WW1GeS1zM2NyM3Rffi4=",
        "base64 of key:secret"
    );
}

#[tokio::test]
async fn a_bad_api_key_surfaces_as_401_with_its_code() {
    let fake = FakeEmqx::start(vec![
        on("GET", "/cluster", 401, fixture!("error-bad-api-key.json")),
        on("GET", "/nodes", 401, fixture!("error-bad-api-key.json")),
    ])
    .await;
    let node = fake.target(NODE0);
    let error = driver_for(&fake)
        .cluster_view(&node)
        .await
        .expect_err("401 must fail");
    match &error {
        DriverError::Http {
            status,
            code,
            message,
            ..
        } => {
            assert_eq!(*status, 401);
            assert_eq!(code.as_deref(), Some("BAD_API_KEY_OR_SECRET"));
            assert_eq!(message, "Check api_key/api_secret");
        }
        other => panic!("expected Http, got {other:?}"),
    }
    assert_eq!(error.reason(), "HttpError");
    assert!(!error.to_string().contains(SECRET));
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_timeout_within_the_configured_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts connections and keeps them open without ever answering.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut config = config("5.8.9", addr.port(), RecordingCommands::answering(0, ""));
    config.http_timeout = Duration::from_millis(300);
    let driver = EmqxDriver::new(config).unwrap();
    let node = NodeTarget {
        pod: "emqx-0".into(),
        host: "127.0.0.1".into(),
        node: NODE0.into(),
    };

    let started = Instant::now();
    let error = driver.node_stats(&node).await.expect_err("no answer");
    let elapsed = started.elapsed();
    match error {
        DriverError::Timeout { op, after, target } => {
            assert_eq!(op, "node_stats");
            assert_eq!(after, Duration::from_millis(300));
            assert!(target.contains(NODE0), "{target}");
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let driver =
        EmqxDriver::new(config("5.8.9", port, RecordingCommands::answering(0, ""))).unwrap();
    let node = NodeTarget {
        pod: "emqx-0".into(),
        host: "127.0.0.1".into(),
        node: NODE0.into(),
    };
    let error = driver.health(&node).await.expect_err("nothing listens");
    assert!(
        matches!(&error, DriverError::Unreachable { op: "health", target, .. } if target.contains("127.0.0.1")),
        "{error:?}"
    );
    assert_eq!(error.reason(), "Unreachable");
}

#[tokio::test]
async fn an_undecodable_answer_is_a_decode_error() {
    let fake = FakeEmqx::start(vec![on(
        "GET",
        format!("/nodes/{NODE0_PATH}"),
        200,
        "<html>dashboard</html>",
    )
    .text()])
    .await;
    let error = driver_for(&fake)
        .node_stats(&fake.target(NODE0))
        .await
        .expect_err("HTML is no node");
    assert!(
        matches!(&error, DriverError::Decode { op: "node_stats", message, .. } if message.contains("<html>")),
        "{error:?}"
    );
}

#[tokio::test]
async fn the_driver_debug_output_hides_the_secret() {
    let fake = FakeEmqx::start(vec![]).await;
    let shown = format!("{:?}", driver_for(&fake));
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("<hidden>"), "{shown}");
}

// ---------------------------------------------------------------------------------------------
// Health

#[tokio::test]
async fn health_asks_status_as_json_then_the_node_itself() {
    let fake = FakeEmqx::start(vec![
        on("GET", "/status", 200, fixture!("status-ok.json")).when_query("format=json"),
        on(
            "GET",
            format!("/nodes/{NODE0_PATH}"),
            200,
            fixture!("node-5.8.json"),
        ),
    ])
    .await;
    let health = driver_for(&fake).health(&fake.target(NODE0)).await.unwrap();
    assert!(health.healthy, "{health:?}");
    let names: Vec<_> = health
        .checks
        .iter()
        .map(|c| (c.name.as_str(), c.ok))
        .collect();
    assert_eq!(names, [("status", true), ("node-running", true)]);
    assert_eq!(
        fake.calls(),
        [
            "GET /api/v5/status?format=json".to_string(),
            format!("GET /api/v5/nodes/{NODE0_PATH}"),
        ]
    );
}

#[tokio::test]
async fn health_accepts_the_text_status_of_older_versions() {
    let fake = FakeEmqx::start(vec![
        on("GET", "/status", 200, fixture!("status-5.0.txt")).text(),
        on(
            "GET",
            format!("/nodes/{NODE0_PATH}"),
            200,
            fixture!("node-5.0.json"),
        ),
    ])
    .await;
    let health = driver_for(&fake).health(&fake.target(NODE0)).await.unwrap();
    assert!(health.healthy, "{health:?}");
}

#[tokio::test]
async fn health_503_with_an_empty_body_is_unhealthy_and_skips_the_node_check() {
    let fake = FakeEmqx::start(vec![on("GET", "/status", 503, "")]).await;
    let health = driver_for(&fake).health(&fake.target(NODE0)).await.unwrap();
    assert!(!health.healthy);
    assert_eq!(health.checks[0].name, "status");
    assert!(!health.checks[0].ok);
    assert!(
        health.checks[0].detail.contains("empty body"),
        "{:?}",
        health.checks[0]
    );
    assert_eq!(health.checks[1].name, "node-running");
    assert!(!health.checks[1].ok);
    assert_eq!(fake.calls(), ["GET /api/v5/status?format=json"]);
}

#[tokio::test]
async fn health_503_not_running_names_the_reason() {
    let fake = FakeEmqx::start(vec![on(
        "GET",
        "/status",
        503,
        fixture!("status-not-running.json"),
    )])
    .await;
    let health = driver_for(&fake).health(&fake.target(NODE0)).await.unwrap();
    assert!(!health.healthy);
    assert_eq!(
        health.checks[0].detail,
        "HTTP 503: broker stopped, emqx not_running"
    );
}

#[tokio::test]
async fn health_fails_the_node_check_when_the_node_does_not_know_its_name() {
    let fake = FakeEmqx::start(vec![
        on("GET", "/status", 200, fixture!("status-ok.json")),
        on(
            "GET",
            format!("/nodes/{NODE0_PATH}"),
            404,
            fixture!("error-node-not-found.json"),
        ),
    ])
    .await;
    let health = driver_for(&fake).health(&fake.target(NODE0)).await.unwrap();
    assert!(!health.healthy);
    assert!(health.checks[0].ok);
    assert!(!health.checks[1].ok);
    assert!(
        health.checks[1].detail.contains("Node not found"),
        "{:?}",
        health.checks[1]
    );
}

// ---------------------------------------------------------------------------------------------
// Cluster view and membership

#[tokio::test]
async fn cluster_view_of_5_8_splits_running_and_stopped() {
    let fake = FakeEmqx::start(vec![
        on("GET", "/cluster", 200, fixture!("cluster.json")),
        on("GET", "/nodes", 200, fixture!("nodes-5.8.json")),
    ])
    .await;
    let view = driver_for(&fake)
        .cluster_view(&fake.target(NODE0))
        .await
        .unwrap();
    assert_eq!(view.node, NODE0);
    assert_eq!(view.running, [NODE0, NODE1]);
    assert_eq!(view.stopped, [NODE2]);
    assert!(view.partitions.is_empty());
    let mut calls = fake.calls();
    calls.sort();
    assert_eq!(calls, ["GET /api/v5/cluster", "GET /api/v5/nodes"]);
}

#[tokio::test]
async fn cluster_view_of_5_0_tolerates_roleless_stopped_nodes_and_no_self() {
    let fake = FakeEmqx::start(vec![
        on("GET", "/cluster", 200, fixture!("cluster-5.0.json")),
        on("GET", "/nodes", 200, fixture!("nodes-5.0-stopped.json")),
    ])
    .await;
    let view = driver_for(&fake)
        .cluster_view(&fake.target(NODE0))
        .await
        .unwrap();
    assert_eq!(view.node, NODE0, "falls back to the asked node's name");
    assert_eq!(view.running, [NODE0]);
    assert_eq!(view.stopped, [NODE1]);
    assert_eq!(view.members(), [NODE0, NODE1]);
}

#[tokio::test]
async fn join_on_5_8_9_makes_the_seed_invite_the_stray() {
    let seed_fake = FakeEmqx::start_at(
        "127.0.0.2:0".parse().unwrap(),
        vec![on("PUT", format!("/cluster/{NODE2_PATH}/invite"), 200, "")],
    )
    .await;
    let port = seed_fake.addr.port();
    let stray_fake = FakeEmqx::start_at(SocketAddr::from(([127, 0, 0, 3], port)), vec![]).await;
    let commands = RecordingCommands::answering(0, "");
    let driver = driver_with(&seed_fake, "5.8.9", commands.clone());

    driver
        .join(&stray_fake.target(NODE2), &seed_fake.target(NODE0))
        .await
        .unwrap();

    let requests = seed_fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].method, "PUT");
    assert_eq!(
        requests[0].uri,
        format!("/api/v5/cluster/{NODE2_PATH}/invite")
    );
    assert_eq!(requests[0].json(), json!({"timeout": 15000}));
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some(basic_auth().as_str())
    );
    assert!(stray_fake.requests().is_empty(), "the stray is not asked");
    assert!(commands.calls().is_empty(), "no CLI with the invite");
}

#[tokio::test]
async fn join_treats_already_in_cluster_as_success() {
    let fake = FakeEmqx::start(vec![on(
        "PUT",
        format!("/cluster/{NODE2_PATH}/invite"),
        400,
        fixture!("error-already-in-cluster.json"),
    )])
    .await;
    driver_with(&fake, "5.10.0-rc.1", RecordingCommands::answering(0, ""))
        .join(&fake.target(NODE2), &fake.target(NODE0))
        .await
        .unwrap();
    assert_eq!(
        fake.calls(),
        [format!("PUT /api/v5/cluster/{NODE2_PATH}/invite")]
    );
}

#[tokio::test]
async fn join_surfaces_node_down_as_an_http_error() {
    let fake = FakeEmqx::start(vec![on(
        "PUT",
        format!("/cluster/{NODE2_PATH}/invite"),
        400,
        fixture!("error-node-down.json"),
    )])
    .await;
    let error = driver_for(&fake)
        .join(&fake.target(NODE2), &fake.target(NODE0))
        .await
        .expect_err("node_down");
    match error {
        DriverError::Http {
            op,
            status,
            code,
            message,
            ..
        } => {
            assert_eq!((op, status), ("join", 400));
            assert_eq!(code.as_deref(), Some("BAD_REQUEST"));
            assert!(message.contains("node_down"), "{message}");
        }
        other => panic!("expected Http, got {other:?}"),
    }
}

#[tokio::test]
async fn join_on_5_4_1_runs_the_cli_against_the_stray() {
    let fake = FakeEmqx::start(vec![]).await;
    let commands = RecordingCommands::answering(
        0,
        "Join the cluster successfully.\nCluster status: #{running_nodes => [...]}\n",
    );
    driver_with(&fake, "5.4.1", commands.clone())
        .join(&fake.target(NODE2), &fake.target(NODE0))
        .await
        .unwrap();

    let calls = commands.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].argv,
        [
            "env".to_string(),
            format!("EMQX_NODE__NAME={NODE2}"),
            "emqx".into(),
            "ctl".into(),
            "cluster".into(),
            "join".into(),
            NODE0.into(),
        ]
    );
    assert_eq!(calls[0].data_of, None);
    assert_eq!(calls[0].timeout, Duration::from_secs(42));
    assert!(fake.requests().is_empty(), "no HTTP with the CLI");
}

#[tokio::test]
async fn cli_join_failures_are_command_errors_with_the_output() {
    let fake = FakeEmqx::start(vec![]).await;
    let stray = fake.target(NODE2);
    let seed = fake.target(NODE0);

    // The CLI prints its failure and exits 0.
    let printed = RecordingCommands::answering(
        0,
        "Failed to join the cluster: {node_down,'emqx@emqx-0.bus-headless.iot.svc.cluster.local'}\n",
    );
    let error = driver_with(&fake, "5.4.1", printed)
        .join(&stray, &seed)
        .await
        .expect_err("node_down");
    assert!(
        matches!(&error, DriverError::Command { op: "join", target, message } if target == NODE2 && message.contains("node_down")),
        "{error:?}"
    );

    let exited = RecordingCommands::answering(1, "Node not responding to pings.");
    let error = driver_with(&fake, "5.4.1", exited)
        .join(&stray, &seed)
        .await
        .expect_err("exit 1");
    assert!(
        matches!(&error, DriverError::Command { message, .. } if message.contains("exit code 1") && message.contains("pings")),
        "{error:?}"
    );

    let cannot_run = Arc::new(RecordingCommands {
        calls: Mutex::default(),
        reply: None,
    });
    let error = driver_with(&fake, "5.4.1", cannot_run)
        .join(&stray, &seed)
        .await
        .expect_err("no command Pod");
    assert_eq!(error.reason(), "CommandFailed");

    let already = RecordingCommands::answering(
        0,
        "Failed to join the cluster: {already_in_cluster,'emqx@emqx-0.bus-headless.iot.svc.cluster.local'}\n",
    );
    driver_with(&fake, "5.4.1", already)
        .join(&stray, &seed)
        .await
        .unwrap();
}

#[tokio::test]
async fn remove_member_force_leaves_the_ghost() {
    let fake = FakeEmqx::start(vec![on(
        "DELETE",
        format!("/cluster/{NODE2_PATH}/force_leave"),
        204,
        "",
    )])
    .await;
    driver_for(&fake)
        .remove_member(&fake.target(NODE0), NODE2)
        .await
        .unwrap();
    assert_eq!(
        fake.calls(),
        [format!("DELETE /api/v5/cluster/{NODE2_PATH}/force_leave")]
    );
}

#[tokio::test]
async fn remove_member_400_is_an_http_error_with_the_code() {
    let fake = FakeEmqx::start(vec![on(
        "DELETE",
        format!("/cluster/{NODE0_PATH}/force_leave"),
        400,
        fixture!("error-cannot-leave-self.json"),
    )])
    .await;
    let error = driver_for(&fake)
        .remove_member(&fake.target(NODE0), NODE0)
        .await
        .expect_err("cannot leave self");
    match error {
        DriverError::Http {
            op,
            status,
            code,
            message,
            target,
        } => {
            assert_eq!((op, status), ("remove_member", 400));
            assert_eq!(code.as_deref(), Some("BAD_REQUEST"));
            assert_eq!(message, "Can't leave self");
            assert_eq!(target, NODE0);
        }
        other => panic!("expected Http, got {other:?}"),
    }
}

#[tokio::test]
async fn reset_forgotten_is_unsupported_and_sends_nothing() {
    let fake = FakeEmqx::start(vec![]).await;
    let error = driver_for(&fake)
        .reset_forgotten(&fake.target(NODE0))
        .await
        .expect_err("unsupported");
    assert!(
        matches!(&error, DriverError::Unsupported { op: "reset_forgotten", why } if why.contains("mria")),
        "{error:?}"
    );
    assert!(fake.requests().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Clients

#[tokio::test]
async fn clients_pages_and_maps_5_8_rows() {
    let fake = FakeEmqx::start(vec![on(
        "GET",
        "/clients",
        200,
        fixture!("clients-page1.json"),
    )
    .when_query("page=2&limit=2")])
    .await;
    let query = ClientQuery {
        page: 2,
        limit: 2,
        ..ClientQuery::default()
    };
    let page = driver_for(&fake)
        .clients(&fake.target(NODE0), &query)
        .await
        .unwrap();
    assert_eq!(fake.calls(), ["GET /api/v5/clients?page=2&limit=2"]);
    assert_eq!(
        (page.page, page.limit, page.has_next, page.total),
        (2, 2, true, Some(7))
    );
    assert_eq!(page.clients.len(), 2);

    let first = &page.clients[0];
    assert_eq!(first.client_id, "dev-1");
    assert_eq!(first.username, None);
    assert_eq!(first.node, NODE0);
    assert_eq!(
        (first.ip_address.as_deref(), first.port),
        (Some("10.1.2.3"), Some(52571))
    );
    assert!(first.connected);
    assert_eq!(
        first.connected_at.as_deref(),
        Some("2025-01-01T12:00:00.123+00:00")
    );
    assert_eq!(first.protocol.as_deref(), Some("MQTT 5"));
    assert_eq!(
        (first.subscriptions, first.queue_len, first.keepalive),
        (Some(1), Some(0), Some(60))
    );

    let second = &page.clients[1];
    assert_eq!(second.client_id, "sensor/7");
    assert_eq!(second.username.as_deref(), Some("plant-a"));
    assert!(!second.connected);
    assert_eq!(second.protocol.as_deref(), Some("MQTT 3.1.1"));
    assert_eq!(
        (second.subscriptions, second.queue_len),
        (Some(2), Some(17))
    );
}

#[tokio::test]
async fn clients_filters_encode_values_and_clamp_the_limit() {
    let fake = FakeEmqx::start(vec![on(
        "GET",
        "/clients",
        200,
        fixture!("clients-like.json"),
    )])
    .await;
    let query = ClientQuery {
        page: 1,
        limit: 5000,
        client_id: Some("dev/1 a+b".into()),
        username: Some("plant a".into()),
    };
    let page = driver_for(&fake)
        .clients(&fake.target(NODE0), &query)
        .await
        .unwrap();
    assert_eq!(
        fake.calls(),
        ["GET /api/v5/clients?page=1&limit=1000&like_clientid=dev%2F1%20a%2Bb&like_username=plant%20a"]
    );
    assert_eq!(page.total, None, "like_* answers have no count");
    assert!(!page.has_next);
    assert_eq!(page.limit, 1000);
    assert_eq!(page.clients[0].client_id, "dev/1 a+b");
    assert_eq!(page.clients[0].protocol.as_deref(), Some("MQTT 3.1"));
}

#[tokio::test]
async fn clients_tolerate_the_minimal_rows_of_5_0() {
    let fake = FakeEmqx::start(vec![on(
        "GET",
        "/clients",
        200,
        fixture!("client-row-minimal-5.0.json"),
    )])
    .await;
    let page = driver_for(&fake)
        .clients(&fake.target(NODE0), &ClientQuery::default())
        .await
        .unwrap();
    assert_eq!(fake.calls(), ["GET /api/v5/clients?page=1&limit=100"]);
    let row = &page.clients[0];
    assert_eq!(row.client_id, "legacy");
    assert_eq!(
        (row.username.as_ref(), row.connected_at.as_ref()),
        (None, None)
    );
    assert_eq!((row.subscriptions, row.queue_len), (None, Some(0)));
    assert_eq!(row.protocol.as_deref(), Some("MQTT 3.1.1"));
    assert_eq!(page.total, Some(1));
}

#[tokio::test]
async fn kick_encodes_the_client_id_and_reads_204_and_404() {
    let fake = FakeEmqx::start(vec![
        on("DELETE", "/clients/dev%2F1%20a%2Bb", 204, ""),
        on(
            "DELETE",
            "/clients/gone",
            404,
            fixture!("error-clientid-not-found.json"),
        ),
    ])
    .await;
    let driver = driver_for(&fake);
    let via = fake.target(NODE0);
    assert!(driver.kick(&via, "dev/1 a+b").await.unwrap());
    assert!(!driver.kick(&via, "gone").await.unwrap());
    assert_eq!(
        fake.calls(),
        [
            "DELETE /api/v5/clients/dev%2F1%20a%2Bb",
            "DELETE /api/v5/clients/gone"
        ]
    );
}

#[tokio::test]
async fn kick_of_another_404_is_an_error() {
    // A 404 that is not CLIENTID_NOT_FOUND (here: no such route) must not read as "not connected".
    let fake = FakeEmqx::start(vec![]).await;
    let error = driver_for(&fake)
        .kick(&fake.target(NODE0), "x")
        .await
        .expect_err("unknown 404");
    assert!(
        matches!(&error, DriverError::Http { status: 404, code: Some(c), .. } if c == "NOT_FOUND"),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Topic metrics, alarms, node stats

#[tokio::test]
async fn topic_metrics_registers_missing_topics_and_reads_messages_keys() {
    let fake = FakeEmqx::start(vec![
        on(
            "GET",
            "/mqtt/topic_metrics",
            200,
            fixture!("topic_metrics.json"),
        ),
        on(
            "POST",
            "/mqtt/topic_metrics",
            200,
            fixture!("topic_metric-created.json"),
        ),
    ])
    .await;
    let topics = vec!["a/b".to_string(), "plant/7/temp".to_string()];
    let metrics = driver_for(&fake)
        .topic_metrics(&fake.target(NODE0), &topics)
        .await
        .unwrap();
    let requests = fake.requests();
    assert_eq!(
        fake.calls(),
        [
            "GET /api/v5/mqtt/topic_metrics",
            "POST /api/v5/mqtt/topic_metrics"
        ]
    );
    assert_eq!(requests[1].json(), json!({"topic": "plant/7/temp"}));

    assert_eq!(metrics.len(), 2);
    let ab = &metrics[0];
    assert_eq!(ab.topic, "a/b");
    assert_eq!(
        (ab.messages_in, ab.messages_out, ab.messages_dropped),
        (Some(10), Some(8), Some(0))
    );
    assert_eq!((ab.rate_in, ab.rate_out), (Some(0.5), Some(0.4)));
    assert_eq!((ab.subscribers, ab.queued), (None, None));
    let created = &metrics[1];
    assert_eq!(created.topic, "plant/7/temp");
    assert_eq!((created.messages_in, created.rate_in), (Some(0), Some(0.0)));
}

#[tokio::test]
async fn topic_metrics_accepts_204_on_register() {
    let fake = FakeEmqx::start(vec![
        on("GET", "/mqtt/topic_metrics", 200, "[]"),
        on("POST", "/mqtt/topic_metrics", 204, ""),
    ])
    .await;
    let metrics = driver_for(&fake)
        .topic_metrics(&fake.target(NODE0), &["x/y".to_string()])
        .await
        .unwrap();
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0].topic, "x/y");
    assert_eq!((metrics[0].messages_in, metrics[0].rate_in), (None, None));
}

#[tokio::test]
async fn topic_metrics_errors_name_the_topic() {
    for (status, fixture, code) in [
        (409, fixture!("error-exceed-limit.json"), "EXCEED_LIMIT"),
        (400, fixture!("error-bad-topic.json"), "BAD_TOPIC"),
    ] {
        let fake = FakeEmqx::start(vec![
            on(
                "GET",
                "/mqtt/topic_metrics",
                200,
                fixture!("topic_metrics.json"),
            ),
            on("POST", "/mqtt/topic_metrics", status, fixture),
        ])
        .await;
        let error = driver_for(&fake)
            .topic_metrics(
                &fake.target(NODE0),
                &["a/b".to_string(), "plant/#".to_string()],
            )
            .await
            .expect_err("refused");
        match error {
            DriverError::Http {
                status: s,
                code: c,
                message,
                ..
            } => {
                assert_eq!((s, c.as_deref()), (status, Some(code)));
                assert!(message.contains("\"plant/#\""), "{message}");
            }
            other => panic!("expected Http, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn alarms_follow_hasnext_and_map_rows() {
    let fake = FakeEmqx::start(vec![
        on("GET", "/alarms", 200, fixture!("alarms-page1.json")).when_query("page=1&"),
        on("GET", "/alarms", 200, fixture!("alarms-page2.json")).when_query("page=2&"),
    ])
    .await;
    let alarms = driver_for(&fake).alarms(&fake.target(NODE0)).await.unwrap();
    assert_eq!(
        fake.calls(),
        [
            "GET /api/v5/alarms?activated=true&page=1&limit=100",
            "GET /api/v5/alarms?activated=true&page=2&limit=100",
        ]
    );
    assert_eq!(alarms.len(), 2);
    assert_eq!(alarms[0].node, NODE0);
    assert_eq!(alarms[0].name, "high_system_memory_usage");
    assert_eq!(alarms[0].message, "System memory usage is higher than 70%");
    assert_eq!(
        alarms[0].activated_at.as_deref(),
        Some("2025-01-01T11:52:52.548+08:00")
    );
    assert_eq!(alarms[1].node, NODE1);
    assert_eq!(alarms[1].activated_at, None);
}

#[tokio::test]
async fn alarms_stop_at_the_page_cap() {
    // A broker whose every page says hasnext: the driver stops instead of looping forever.
    let fake = FakeEmqx::start(vec![on(
        "GET",
        "/alarms",
        200,
        fixture!("alarms-page1.json"),
    )])
    .await;
    let alarms = driver_for(&fake).alarms(&fake.target(NODE0)).await.unwrap();
    let pages = fake.requests().len();
    assert!((2..=100).contains(&pages), "{pages} pages");
    assert_eq!(alarms.len(), pages);
}

#[tokio::test]
async fn node_stats_of_5_8_read_live_connections_and_kmg_memory() {
    let fake = FakeEmqx::start(vec![on(
        "GET",
        format!("/nodes/{NODE0_PATH}"),
        200,
        fixture!("node-5.8.json"),
    )])
    .await;
    let stats = driver_for(&fake)
        .node_stats(&fake.target(NODE0))
        .await
        .unwrap();
    assert_eq!(fake.calls(), [format!("GET /api/v5/nodes/{NODE0_PATH}")]);
    assert_eq!(stats.node, NODE0);
    assert!(stats.running);
    assert_eq!(stats.role.as_deref(), Some("core"));
    assert_eq!(stats.version.as_deref(), Some("5.8.9"));
    assert_eq!(
        stats.connections,
        Some(10),
        "live_connections, not sessions"
    );
    assert_eq!(stats.memory_used_bytes, Some(1_288_490_189), "1.20G");
    assert_eq!(stats.memory_limit_bytes, Some(8_214_124_954), "7.65G");
    assert_eq!(stats.uptime_seconds, Some(5120));
    assert_eq!(stats.connections_limit, Some(1_048_576), "max_fds");
}

#[tokio::test]
async fn node_stats_of_5_0_fall_back_to_connections() {
    let fake = FakeEmqx::start(vec![on(
        "GET",
        format!("/nodes/{NODE0_PATH}"),
        200,
        fixture!("node-5.0.json"),
    )])
    .await;
    let stats = driver_for(&fake)
        .node_stats(&fake.target(NODE0))
        .await
        .unwrap();
    assert_eq!(stats.role, None);
    assert_eq!(stats.connections, Some(4));
    assert_eq!(stats.memory_used_bytes, Some(512 << 20));
    assert_eq!(stats.uptime_seconds, Some(120));
}
