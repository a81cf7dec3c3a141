//! The collector's CPU figures read through a real kube-apiserver.
//!
//! metrics-server cannot run here (it scrapes kubelets, and there is none), so the resource metrics
//! API (`metrics.k8s.io/v1beta1`, `pods`) is served by a CustomResourceDefinition of the same
//! group, version, plural and object shape, with the objects metrics-server would report. The
//! operator's code path is the real one: a label-selected list of `PodMetrics` through the API
//! server, parsed into CPU cores per Pod. The second test checks the other case every cluster
//! without metrics-server is in: the API is not served, and the call says so.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, PostParams};
use kube::{Api, Client};
use mooring_operator::collector::pod_metrics::{broker_cpu, pod_metrics_resource};
use mooring_tests::{create_unique_namespace, ControlPlaneOptions, SharedControlPlane};
use serde_json::json;

static CP: SharedControlPlane = SharedControlPlane::new(ControlPlaneOptions::default);

async fn serve_pod_metrics_api(client: &Client) -> Result<()> {
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "pods.metrics.k8s.io",
            // Groups under k8s.io need this annotation; a test stand-in is "unapproved".
            "annotations": {"api-approved.kubernetes.io": "unapproved, test stand-in for metrics-server"},
        },
        "spec": {
            "group": "metrics.k8s.io",
            "scope": "Namespaced",
            "names": {"plural": "pods", "singular": "podmetrics", "kind": "PodMetrics", "listKind": "PodMetricsList"},
            "versions": [{
                "name": "v1beta1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "timestamp": {"type": "string"},
                        "window": {"type": "string"},
                        "containers": {"type": "array", "items": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "usage": {"type": "object", "additionalProperties": {"type": "string"}},
                            },
                        }},
                    },
                }},
            }],
        },
    }))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).context("creating the PodMetrics CRD"),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let established = crds
            .get("pods.metrics.k8s.io")
            .await?
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the PodMetrics CRD was not established"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pod_metrics(name: &str, component: &str, cpu: &[&str]) -> Result<DynamicObject> {
    let containers: Vec<_> = cpu
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"name": format!("c{i}"), "usage": {"cpu": c, "memory": "100Mi"}}))
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "metrics.k8s.io/v1beta1",
        "kind": "PodMetrics",
        "metadata": {"name": name, "labels": {
            "app.kubernetes.io/managed-by": "mooring",
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/instance": "bus",
        }},
        "timestamp": "2026-11-23T10:00:00Z",
        "window": "15s",
        "containers": containers,
    }))?)
}

#[tokio::test]
async fn cpu_figures_are_read_from_the_resource_metrics_api() -> Result<()> {
    let cp = CP.get().await?;
    let client = cp.client().await?;
    serve_pod_metrics_api(&client).await?;
    let ns = create_unique_namespace(&client, "cpu").await?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &pod_metrics_resource());
    for obj in [
        pod_metrics("bus-0", "broker", &["900m", "100m"])?,
        pod_metrics("bus-1", "broker", &["250000000n"])?,
        pod_metrics("bus-lb-0", "load-balancer", &["2"])?,
    ] {
        api.create(&PostParams::default(), &obj).await?;
    }
    let cpu = broker_cpu(&client, Some(&ns)).await?;
    ensure!(cpu.len() == 2, "only the broker Pods: {cpu:?}");
    ensure!(cpu[&format!("{ns}/bus-0")] == 1.0, "{cpu:?}");
    ensure!((cpu[&format!("{ns}/bus-1")] - 0.25).abs() < 1e-9, "{cpu:?}");
    // Every namespace at once (a cluster-wide operator makes one call per round).
    let all = broker_cpu(&client, None).await?;
    ensure!(all.contains_key(&format!("{ns}/bus-0")), "{all:?}");
    Ok(())
}

#[tokio::test]
async fn without_metrics_server_the_call_fails_and_says_why() -> Result<()> {
    // A control plane of its own: the shared one may serve the stand-in API already.
    let cp = mooring_tests::ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = cp.client().await?;
    let err = broker_cpu(&client, Some("default"))
        .await
        .expect_err("metrics.k8s.io is not served");
    ensure!(
        matches!(&err, kube::Error::Api(e) if e.code == 404),
        "expected a 404, got {err}"
    );
    Ok(())
}
