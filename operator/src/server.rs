//! The operator's HTTP server: `/healthz`, `/readyz`, `/metrics` (never behind a login), and the
//! dashboard (everything else) when it is configured.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;

use mooring_dashboard::server::DashboardConfig;

use crate::context::State;

/// The router with every operator endpoint, and the dashboard's when given.
pub fn router(state: Arc<State>, dashboard: Option<DashboardConfig>) -> Router {
    let ops = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    match dashboard {
        Some(config) => ops.merge(mooring_dashboard::server::router(config)),
        None => ops,
    }
}

async fn readyz(AxumState(state): AxumState<Arc<State>>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics(AxumState(state): AxumState<Arc<State>>) -> impl IntoResponse {
    let mut body = String::new();
    match encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<State>,
    dashboard: Option<DashboardConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, dashboard = dashboard.is_some(), "serving health, metrics and the dashboard");
    axum::serve(listener, router(state, dashboard))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_status(state: Arc<State>, path: &str) -> (StatusCode, String) {
        let res = router(state, None)
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readiness_follows_the_state_and_metrics_are_served() {
        let state = State::new();
        assert_eq!(
            get_status(state.clone(), "/healthz").await.0,
            StatusCode::OK
        );
        assert_eq!(
            get_status(state.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.set_ready(true);
        assert_eq!(get_status(state.clone(), "/readyz").await.0, StatusCode::OK);
        drop(state.metrics.start_reconcile());
        let (code, body) = get_status(state, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("mooring_reconciliations_total 1"), "{body}");
    }
}
