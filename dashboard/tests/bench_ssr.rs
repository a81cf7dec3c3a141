//! Benchmark (ignored; `scripts/bench` runs it): the server-rendered clients page with 10,000
//! connected clients listed through paging, as the dashboard serves it (the router, the session
//! guard, Leptos SSR, the server functions), over a backend that holds the clients in memory and
//! pages them like a broker does. Prints p50/p99 per request.
//!
//!   cargo test --release -p mooring-dashboard --features ssr --test bench_ssr -- --ignored --nocapture

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use mooring_dashboard::auth::{Auth, COOKIE};
use mooring_dashboard::backend::{Backend, BackendError};
use mooring_dashboard::model::*;
use mooring_dashboard::server::{router, DashboardConfig};
use tower::ServiceExt;

const CLIENTS: usize = 10_000;
const REQUESTS: usize = 200;

struct TenThousand {
    clients: Vec<ClientRow>,
}

#[async_trait]
impl Backend for TenThousand {
    async fn clusters(&self) -> Result<Vec<ClusterSummary>, BackendError> {
        Ok(vec![])
    }
    async fn cluster(&self, ns: &str, name: &str) -> Result<ClusterDetail, BackendError> {
        Err(BackendError::NotFound(format!("{ns}/{name}")))
    }
    async fn clients(
        &self,
        _: &str,
        _: &str,
        s: &ClientSearch,
    ) -> Result<ClientsPage, BackendError> {
        let matching: Vec<&ClientRow> = self
            .clients
            .iter()
            .filter(|c| s.text.is_empty() || c.client_id.contains(&s.text))
            .collect();
        let from = (s.page as usize - 1) * s.limit as usize;
        Ok(ClientsPage {
            clients: matching
                .iter()
                .skip(from)
                .take(s.limit as usize)
                .map(|c| (*c).clone())
                .collect(),
            page: s.page,
            limit: s.limit,
            has_next: from + (s.limit as usize) < matching.len(),
            total: Some(matching.len() as u64),
        })
    }
    async fn kick(&self, _: &str, _: &str, _: &str, _: &str) -> Result<bool, BackendError> {
        Ok(false)
    }
    async fn topics(&self, _: &str, _: &str) -> Result<TopicsView, BackendError> {
        Ok(TopicsView::default())
    }
    async fn set_metered_topics(
        &self,
        _: &str,
        _: &str,
        _: Vec<String>,
        _: &str,
    ) -> Result<(), BackendError> {
        Ok(())
    }
    async fn alerts(&self) -> Result<AlertsView, BackendError> {
        Ok(AlertsView::default())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn measure(
    app: &axum::Router,
    cookie: &str,
    req: impl Fn() -> Request<Body>,
) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(REQUESTS);
    let mut size = 0;
    for _ in 0..REQUESTS {
        let mut r = req();
        r.headers_mut().insert(
            header::COOKIE,
            format!("{COOKIE}={cookie}").parse().unwrap(),
        );
        let started = Instant::now();
        let res = app.clone().oneshot(r).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = axum::body::to_bytes(res.into_body(), 1 << 24)
            .await
            .unwrap();
        times.push(started.elapsed());
        size = body.len();
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99), size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: scripts/bench runs it"]
async fn server_rendered_clients_page_with_ten_thousand_clients() {
    let clients = (0..CLIENTS)
        .map(|i| ClientRow {
            client_id: format!("device-{i:05}"),
            username: Some(format!("fleet-{}", i % 20)),
            node: format!("rabbit@bus-{}.bus-headless.iot.svc.cluster.local", i % 3),
            connected: true,
            connected_at: Some("2026-11-24T10:00:00Z".into()),
            address: Some(format!("10.1.{}.{}:{}", i / 250, i % 250, 40000 + i % 1000)),
            protocol: Some("MQTT 3.1.1".into()),
            subscriptions: Some(2),
            queue_len: Some(0),
        })
        .collect();
    let auth = Arc::new(Auth::default());
    auth.load(&BTreeMap::from([(
        "admin".to_string(),
        b"admin:bench-password".to_vec(),
    )]));
    let cookie = auth.sign_in("admin", "bench-password").unwrap();
    let site = std::env::temp_dir().join("mooring-bench-site");
    std::fs::create_dir_all(site.join("pkg")).unwrap();
    let app = router(DashboardConfig {
        backend: Arc::new(TenThousand { clients }),
        auth,
        site_root: site,
    });

    // Warm-up.
    let page = || {
        Request::get("/clusters/iot/bus/clients")
            .body(Body::empty())
            .unwrap()
    };
    measure(&app, &cookie, page).await;

    let (p50, p99, html) = measure(&app, &cookie, page).await;
    let deep = || {
        Request::post("/api/clients")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(
                "namespace=iot&name=bus&text=&by_username=false&page=150&limit=50",
            ))
            .unwrap()
    };
    let (d50, d99, json) = measure(&app, &cookie, deep).await;
    let search = || {
        Request::post("/api/clients")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(
                "namespace=iot&name=bus&text=device-099&by_username=false&page=1&limit=50",
            ))
            .unwrap()
    };
    let (s50, s99, _) = measure(&app, &cookie, search).await;
    println!();
    println!(
        "dashboard, {CLIENTS} connected clients, {REQUESTS} requests each (aim: p99 <= 100 ms)"
    );
    println!("| request | p50 | p99 | response |");
    println!("| --- | --- | --- | --- |");
    println!("| server-rendered clients page (page 1 of 200, 50 rows) | {p50:.2?} | {p99:.2?} | {html} B HTML |");
    println!("| live update, page 150 (server function) | {d50:.2?} | {d99:.2?} | {json} B JSON |");
    println!("| search by client id (server function) | {s50:.2?} | {s99:.2?} | |");
}
