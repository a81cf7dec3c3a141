//! The `mooring` binary against a real API server: it becomes ready, takes the lease, reconciles,
//! serves metrics, and on SIGTERM stops the controller and the server together and releases the
//! lease.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::PostParams;
use kube::Api;
use mooring_crds::BrokerCluster;
use mooring_tests::{create_unique_namespace, install_crd, ControlPlane, ControlPlaneOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.0 GET on loopback: (status code, body).
async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Ok((code, body))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn until<F, Fut>(what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..240 {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("timed out waiting for {what}")
}

#[tokio::test]
async fn the_binary_reconciles_serves_metrics_and_shuts_down_gracefully() -> Result<()> {
    let cp = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = cp.client().await?;
    install_crd(&client).await?;
    let ns = create_unique_namespace(&client, "bin").await?;
    let port = free_port()?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mooring"))
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("MOORING_LISTEN", format!("127.0.0.1:{port}"))
        .env("MOORING_WATCH_NAMESPACE", &ns)
        .env("POD_NAMESPACE", &ns)
        .env("POD_NAME", "operator-0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the mooring binary")?;

    until("/readyz 200", || async {
        matches!(http_get(port, "/readyz").await, Ok((200, _)))
    })
    .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    until("the lease held by operator-0", || async {
        leases
            .get_opt("mooring-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            == Some("operator-0".to_string())
    })
    .await?;

    let bc: BrokerCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "mooring.dev/v1alpha1", "kind": "BrokerCluster",
        "metadata": {"name": "bin"}, "spec": {"broker": {"kind": "rabbitmq"}},
    }))?;
    Api::<BrokerCluster>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &bc)
        .await?;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    until("the StatefulSet", || async {
        sts.get_opt("bin").await.ok().flatten().is_some()
    })
    .await?;

    let (code, metrics) = http_get(port, "/metrics").await?;
    assert_eq!(code, 200);
    assert!(metrics.contains("mooring_leader 1"), "{metrics}");
    let reconciles: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mooring_reconciliations_total "))
        .and_then(|v| v.trim().parse().ok())
        .context("mooring_reconciliations_total")?;
    assert!(reconciles >= 1.0, "{metrics}");
    assert!(metrics.contains("mooring_reconcile_duration_seconds_count"));

    let pid = child.id().context("pid")?;
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .context("the operator did not stop within 20 s of SIGTERM")??;
    assert!(status.success(), "exit status {status}");
    let lease = leases.get("mooring-operator").await?;
    let holder = lease.spec.and_then(|s| s.holder_identity);
    assert!(
        holder.is_none() || holder.as_deref() == Some(""),
        "the lease was released: {holder:?}"
    );
    assert!(
        http_get(port, "/healthz").await.is_err(),
        "the HTTP server stopped too"
    );
    Ok(())
}
