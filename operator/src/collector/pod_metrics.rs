//! CPU use of the broker Pods, from the Kubernetes resource metrics API (`metrics.k8s.io`, served
//! by metrics-server: what `kubectl top pod` shows). Neither broker reports its CPU use in
//! percent through its own API (EMQX gives load averages, RabbitMQ nothing), and the limit that
//! matters is the Pod's. Without metrics-server the figures are simply absent.

use std::collections::HashMap;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Api, Client};
use mooring_crds::BrokerCluster;

use crate::resources::{COMPONENT_BROKER, MANAGED_BY};

/// The resource metrics API's Pod metrics.
pub fn pod_metrics_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("metrics.k8s.io", "v1beta1", "PodMetrics"),
        "pods",
    )
}

/// CPU cores in use per broker Pod (`namespace/pod`), summed over its containers, in the
/// namespace (or every namespace for `None`). `Err` when the API is not served or refused.
pub async fn broker_cpu(
    client: &Client,
    namespace: Option<&str>,
) -> Result<HashMap<String, f64>, kube::Error> {
    let resource = pod_metrics_resource();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let selector = format!(
        "app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/component={COMPONENT_BROKER}"
    );
    let list = api.list(&ListParams::default().labels(&selector)).await?;
    Ok(list
        .items
        .iter()
        .filter_map(|m| {
            let key = format!(
                "{}/{}",
                m.metadata.namespace.as_deref()?,
                m.metadata.name.as_deref()?
            );
            Some((key, cores_in_use(&m.data)?))
        })
        .collect())
}

/// The CPU cores a PodMetrics' containers use, summed (`None` when none reports CPU).
pub fn cores_in_use(data: &serde_json::Value) -> Option<f64> {
    let containers = data.get("containers")?.as_array()?;
    let used: Vec<f64> = containers
        .iter()
        .filter_map(|c| parse_cpu(c.get("usage")?.get("cpu")?.as_str()?))
        .collect();
    (!used.is_empty()).then(|| used.iter().sum())
}

/// The CPU a broker Pod may use, in cores: its limit, else its request (`None` without either).
pub fn cpu_allowance(bc: &BrokerCluster) -> Option<f64> {
    let resources = bc.spec.resources.as_ref()?;
    let pick = |m: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| { m.as_ref()?.get("cpu").and_then(|q| parse_cpu(&q.0)) };
    pick(&resources.limits)
        .or_else(|| pick(&resources.requests))
        .filter(|c| *c > 0.0)
}

/// `used` in percent of `allowance`, rounded, capped at 1000 %.
pub fn percent(used: f64, allowance: f64) -> Option<u16> {
    if allowance <= 0.0 || !used.is_finite() || used < 0.0 {
        return None;
    }
    let p = (used / allowance * 100.0).round().min(1000.0);
    // In 0..=1000 after the checks above.
    Some(p as u16)
}

/// A CPU quantity in cores: `250m`, `1`, `0.5`, `123456789n`, `12u`, `2k`.
pub fn parse_cpu(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| {
            !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-' || c == 'e' || c == 'E')
        })
        .unwrap_or(q.len());
    // "e" is also an exponent; a suffix only ever follows the number.
    let (number, suffix) = q.split_at(split);
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cpu_quantities_are_read_in_cores() {
        assert_eq!(parse_cpu("250m"), Some(0.25));
        assert_eq!(parse_cpu("2"), Some(2.0));
        assert_eq!(parse_cpu("0.5"), Some(0.5));
        assert!((parse_cpu("123456789n").unwrap() - 0.123456789).abs() < 1e-12);
        assert!((parse_cpu("1500u").unwrap() - 0.0015).abs() < 1e-12);
        assert_eq!(parse_cpu("1e3"), Some(1000.0));
        assert_eq!(parse_cpu("abc"), None);
        assert_eq!(parse_cpu("5Gi"), None);
        assert_eq!(parse_cpu("-1"), None);
    }

    #[test]
    fn a_pods_cpu_is_the_sum_of_its_containers() {
        let data = json!({"containers": [
            {"name": "rabbitmq", "usage": {"cpu": "900m", "memory": "200Mi"}},
            {"name": "sidecar", "usage": {"cpu": "100m", "memory": "10Mi"}},
        ]});
        assert_eq!(cores_in_use(&data), Some(1.0));
        assert_eq!(cores_in_use(&json!({"containers": []})), None);
        assert_eq!(cores_in_use(&json!({})), None);
    }

    #[test]
    fn the_allowance_is_the_limit_else_the_request() {
        let bc = |resources: serde_json::Value| -> BrokerCluster {
            serde_json::from_value(json!({
                "apiVersion": "mooring.dev/v1alpha1", "kind": "BrokerCluster",
                "metadata": {"name": "bus", "namespace": "iot"},
                "spec": {"broker": {"kind": "rabbitmq"}, "replicas": 1, "resources": resources},
            }))
            .unwrap()
        };
        assert_eq!(
            cpu_allowance(&bc(
                json!({"limits": {"cpu": "2"}, "requests": {"cpu": "500m"}})
            )),
            Some(2.0)
        );
        assert_eq!(
            cpu_allowance(&bc(json!({"requests": {"cpu": "500m"}}))),
            Some(0.5)
        );
        assert_eq!(
            cpu_allowance(&bc(json!({"limits": {"memory": "1Gi"}}))),
            None
        );
        assert_eq!(percent(0.45, 0.5), Some(90));
        assert_eq!(percent(1.0, 0.0), None);
        assert_eq!(percent(100.0, 0.001), Some(1000));
    }
}
