//! The alert webhook sender against a local HTTP server that fails its first requests: the
//! Alertmanager JSON it receives, and the bounded retries.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use mooring_operator::alerts::webhook::{self, DeliveryError, RetryPolicy};
use mooring_operator::alerts::{Alerts, Labels, Severity};
use mooring_operator::metrics::Metrics;
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A webhook that answers `fail_with` to its first `failures` requests, then 200.
#[derive(Default)]
struct Hook {
    failures: u32,
    fail_with: u16,
    seen: AtomicU32,
    bodies: Mutex<Vec<Value>>,
}

async fn receive(AxumState(hook): AxumState<Arc<Hook>>, Json(body): Json<Value>) -> StatusCode {
    let n = hook.seen.fetch_add(1, Ordering::SeqCst);
    hook.bodies.lock().unwrap().push(body);
    if n < hook.failures {
        StatusCode::from_u16(hook.fail_with).unwrap()
    } else {
        StatusCode::OK
    }
}

/// Serves `hook` on a free local port; returns its URL.
async fn serve(hook: Arc<Hook>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/hook", post(receive)).with_state(hook);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hook")
}

fn hook(failures: u32, fail_with: u16) -> Arc<Hook> {
    Arc::new(Hook {
        failures,
        fail_with,
        ..Hook::default()
    })
}

fn fast(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        base: Duration::from_millis(10),
        max: Duration::from_millis(40),
    }
}

fn sample_message() -> webhook::Message {
    let alert = mooring_operator::alerts::Alert {
        cluster: "iot/bus".into(),
        name: "NodeDown".into(),
        labels: Labels::from([("node".to_string(), "emqx@bus-0".to_string())]),
        severity: Severity::Critical,
        message: "no answer".into(),
        since: k8s_openapi::jiff::Timestamp::now(),
    };
    webhook::message(&alert, None)
}

#[tokio::test]
async fn a_failing_webhook_is_retried_until_it_accepts() {
    let h = hook(2, 503);
    let url = serve(h.clone()).await;
    let tries = webhook::deliver(&reqwest::Client::new(), &url, &sample_message(), &fast(5))
        .await
        .unwrap();
    assert_eq!(tries, 3);
    let bodies = h.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 3);
    // The same message every time.
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    let b = &bodies[0];
    assert_eq!(b["version"], "4");
    assert_eq!(b["status"], "firing");
    assert_eq!(b["alerts"][0]["labels"]["alertname"], "NodeDown");
    assert_eq!(b["alerts"][0]["labels"]["namespace"], "iot");
    assert_eq!(b["alerts"][0]["labels"]["cluster"], "bus");
    assert_eq!(b["alerts"][0]["labels"]["severity"], "critical");
    assert_eq!(b["alerts"][0]["endsAt"], webhook::NOT_ENDED);
}

#[tokio::test]
async fn retries_are_bounded() {
    let h = hook(u32::MAX, 500);
    let url = serve(h.clone()).await;
    let err = webhook::deliver(&reqwest::Client::new(), &url, &sample_message(), &fast(3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeliveryError::GaveUp { attempts: 3, .. }),
        "{err}"
    );
    assert_eq!(h.seen.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_refusal_is_not_retried_but_too_many_requests_is() {
    let h = hook(1, 400);
    let url = serve(h.clone()).await;
    let err = webhook::deliver(&reqwest::Client::new(), &url, &sample_message(), &fast(5))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeliveryError::Refused { status: 400, .. }),
        "{err}"
    );
    assert_eq!(h.seen.load(Ordering::SeqCst), 1);

    let h = hook(1, 429);
    let url = serve(h.clone()).await;
    let tries = webhook::deliver(&reqwest::Client::new(), &url, &sample_message(), &fast(5))
        .await
        .unwrap();
    assert_eq!(tries, 2);
}

#[tokio::test]
async fn fired_and_resolved_alerts_reach_the_webhook_in_the_background() {
    let h = hook(1, 503);
    let url = serve(h.clone()).await;
    let stop = CancellationToken::new();
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let alerts = Alerts::default();
    alerts.set_notifier(webhook::spawn(Some(url), fast(5), stop.clone()).unwrap());
    // Firing returns at once, even though the webhook fails first.
    assert!(alerts.fire(
        &metrics,
        "iot/bus",
        "MembershipNoMajority",
        Severity::Critical,
        "split".into()
    ));
    assert!(alerts
        .resolve(&metrics, "iot/bus", "MembershipNoMajority")
        .is_some());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.seen.load(Ordering::SeqCst) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "webhook not called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let bodies = h.bodies.lock().unwrap();
    let statuses: Vec<&str> = bodies
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    // The first try failed and was retried before the resolution was sent.
    assert_eq!(statuses, ["firing", "firing", "resolved"]);
    let resolved = &bodies[2]["alerts"][0];
    assert_eq!(resolved["labels"]["alertname"], "MembershipNoMajority");
    assert_ne!(resolved["endsAt"], webhook::NOT_ENDED);
    assert_eq!(resolved["startsAt"], bodies[0]["alerts"][0]["startsAt"]);
}
