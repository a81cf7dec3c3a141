//! One collection round against a fake EMQX: a node that answers, one that hangs (the per-call
//! time limit), one without a Pod IP; then the alert rules over the sample.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::RawQuery;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use mooring_crds::{AlertThresholds, BrokerCluster, BrokerClusterSpec, BrokerKind};
use mooring_operator::collector::poller::{collect, Target};
use mooring_operator::collector::rules::{self, names};
use mooring_operator::drivers::{CommandRunner, Driver, DriverConfig, NodeTarget};
use mooring_operator::metrics::Metrics;
use mooring_operator::pod_command::{CommandOutput, PodCommandError};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

const NODE0: &str = "emqx@emqx-0.bus-headless.iot.svc.cluster.local";

/// The collector never runs CLI commands.
struct NoCommands;

impl CommandRunner for NoCommands {
    fn run<'a>(
        &'a self,
        _argv: Vec<String>,
        _data_of: Option<&'a str>,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<CommandOutput, PodCommandError>> {
        panic!("the collector ran a command")
    }
}

async fn alarms(RawQuery(q): RawQuery) -> &'static str {
    if q.unwrap_or_default().contains("page=2") {
        include_str!("fixtures/emqx/alarms-page2.json")
    } else {
        include_str!("fixtures/emqx/alarms-page1.json")
    }
}

/// A fake EMQX on 127.0.0.1 and, on the same port of 127.0.0.2, a node that never answers.
async fn fake_emqx() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route(
            "/api/v5/nodes/{node}",
            get(|| async { include_str!("fixtures/emqx/node-5.8.json") }),
        )
        .route("/api/v5/alarms", get(alarms))
        .route(
            "/api/v5/mqtt/topic_metrics",
            get(|| async { include_str!("fixtures/emqx/topic_metrics.json") }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let hanging = TcpListener::bind(("127.0.0.2", port)).await.unwrap();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = hanging.accept().await {
            open.push(conn);
        }
    });
    port
}

fn driver(port: u16) -> Driver {
    Driver::new(
        BrokerKind::Emqx,
        DriverConfig {
            version: "5.8.9".into(),
            username: "key".into(),
            password: "secret".into(),
            http_timeout: Duration::from_millis(300),
            command_timeout: Duration::from_secs(1),
            commands: Arc::new(NoCommands),
            management_port: Some(port),
            mqtt_port: None,
        },
    )
    .unwrap()
}

fn cluster() -> BrokerCluster {
    let spec: BrokerClusterSpec = serde_json::from_value(serde_json::json!({
        "broker": {"kind": "emqx", "version": "5.8.9"},
        "replicas": 3,
        "monitoring": {"meteredTopics": ["a/b"]},
    }))
    .unwrap();
    let mut bc = BrokerCluster::new("bus", spec);
    bc.metadata.namespace = Some("iot".into());
    bc
}

fn target(i: usize, host: Option<&str>) -> Target {
    let node = format!("emqx@emqx-{i}.bus-headless.iot.svc.cluster.local");
    Target {
        pod: format!("bus-{i}"),
        node: node.clone(),
        target: match host {
            Some(h) => Ok(NodeTarget {
                pod: format!("bus-{i}"),
                host: h.into(),
                node,
            }),
            None => Err(format!("Pod bus-{i} has no IP")),
        },
    }
}

#[tokio::test]
async fn a_round_samples_every_node_within_the_call_time_limit() {
    let port = fake_emqx().await;
    let targets = vec![
        target(0, Some("127.0.0.1")),
        target(1, Some("127.0.0.2")),
        target(2, None),
    ];
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let started = Instant::now();
    let sample = collect(&driver(port), &cluster(), targets, &metrics).await;
    // The hanging node costs one time limit, not more: nodes are asked at once.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let n0 = &sample.nodes[0];
    assert!(n0.up, "{n0:?}");
    assert_eq!(&*n0.node, NODE0);
    assert_eq!(n0.version.as_deref(), Some("5.8.9"));
    assert_eq!(n0.connections_limit, Some(1_048_576));
    assert_eq!(n0.connections, Some(10), "live connections");
    assert!(n0.memory_used_bytes.is_some_and(|m| m > 1_000_000_000));
    let e1 = sample.nodes[1].error.as_deref().unwrap();
    assert!(e1.contains("no answer"), "{e1}");
    assert_eq!(
        sample.nodes[2].error.as_deref(),
        Some("Pod bus-2 has no IP")
    );
    let totals = sample.totals();
    assert_eq!(
        (totals.nodes_up, totals.nodes, totals.connections),
        (1, 3, 10)
    );

    // One failed call: the node that hangs (a Pod without IP is not called).
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("mooring_collector_call_failures_total{op=\"node_stats\"} 1"),
        "{text}"
    );

    // Cluster-wide figures come from the node that answered.
    let topics = sample.topics.as_ref().unwrap();
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].topic, "a/b");
    assert_eq!(sample.dropped(), Some(0));
    let alarms = sample.alarms.as_ref().unwrap();
    assert_eq!(alarms.len(), 2, "both pages of alarms");

    // The rules forward the broker's alarms at once; the nodes are not down long enough yet.
    let evaluation = rules::evaluate(&[Arc::new(sample)], &AlertThresholds::default());
    let fired: Vec<&str> = evaluation.firing.iter().map(|d| d.name).collect();
    assert!(fired.contains(&names::BROKER_ALARM), "{fired:?}");
    assert!(!fired.contains(&names::NODE_DOWN), "{fired:?}");
    // Only the CPU rule cannot tell: CPU comes from metrics-server, not from the broker.
    assert_eq!(evaluation.unknown, [names::CPU_HIGH]);
}

#[tokio::test]
async fn without_any_node_answering_cluster_figures_are_unknown() {
    let port = fake_emqx().await;
    let sample = collect(
        &driver(port),
        &cluster(),
        vec![target(0, Some("127.0.0.2")), target(1, None)],
        &Metrics::new(&mut Registry::default()),
    )
    .await;
    assert!(sample.nodes.iter().all(|n| !n.up));
    assert!(sample.topics.is_none() && sample.alarms.is_none());
    let evaluation = rules::evaluate(&[Arc::new(sample)], &AlertThresholds::default());
    assert!(evaluation.unknown.contains(&names::BROKER_ALARM));
}
