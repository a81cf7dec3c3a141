//! Alerts the operator raises about a cluster: deduplicated by (cluster, name), each firing until
//! it is resolved, exported as `mooring_alerts_firing` and announced as Kubernetes Events by
//! whoever raises them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::metrics::{AlertLabels, Metrics};

/// How bad an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Clients are affected now, or will be on the next failure.
    Critical,
    /// Needs a look.
    Warning,
}

impl Severity {
    /// The lowercase spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        }
    }
}

/// One firing alert.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// `namespace/name` of the cluster.
    pub cluster: String,
    /// The alert's name, for example `MembershipNoMajority`.
    pub name: String,
    /// Its severity.
    pub severity: Severity,
    /// What is wrong, for people.
    pub message: String,
    /// When it started firing.
    pub since: Timestamp,
}

/// The alerts that fire now.
#[derive(Default)]
pub struct Alerts {
    active: Mutex<BTreeMap<(String, String), Alert>>,
}

impl Alerts {
    /// Fires an alert; returns true when it was not firing yet (an update of the message of a
    /// firing alert returns false and keeps its start time).
    pub fn fire(
        &self,
        metrics: &Metrics,
        cluster: &str,
        name: &str,
        severity: Severity,
        message: String,
    ) -> bool {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let key = (cluster.to_string(), name.to_string());
        if let Some(a) = active.get_mut(&key) {
            a.message = message;
            return false;
        }
        metrics
            .alerts_firing
            .get_or_create(&labels(cluster, name, severity))
            .set(1);
        active.insert(
            key,
            Alert {
                cluster: cluster.to_string(),
                name: name.to_string(),
                severity,
                message,
                since: Timestamp::now(),
            },
        );
        true
    }

    /// Resolves an alert; returns it when it was firing.
    pub fn resolve(&self, metrics: &Metrics, cluster: &str, name: &str) -> Option<Alert> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let gone = active.remove(&(cluster.to_string(), name.to_string()))?;
        metrics
            .alerts_firing
            .remove(&labels(cluster, name, gone.severity));
        Some(gone)
    }

    /// Every firing alert of `cluster`.
    pub fn of_cluster(&self, cluster: &str) -> Vec<Alert> {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active
            .values()
            .filter(|a| a.cluster == cluster)
            .cloned()
            .collect()
    }

    /// Every firing alert.
    pub fn all(&self) -> Vec<Alert> {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        active.values().cloned().collect()
    }
}

fn labels(cluster: &str, name: &str, severity: Severity) -> AlertLabels {
    AlertLabels {
        cluster: cluster.to_string(),
        alert: name.to_string(),
        severity: severity.as_str().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    #[test]
    fn alerts_fire_once_update_and_resolve_with_their_gauge() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let alerts = Alerts::default();
        assert!(alerts.fire(&metrics, "ns/bus", "X", Severity::Critical, "a".into()));
        let since = alerts.all()[0].since;
        assert!(!alerts.fire(&metrics, "ns/bus", "X", Severity::Critical, "b".into()));
        assert_eq!(alerts.of_cluster("ns/bus")[0].message, "b");
        assert_eq!(alerts.all()[0].since, since);
        assert!(alerts.of_cluster("ns/other").is_empty());
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(
                "mooring_alerts_firing{cluster=\"ns/bus\",alert=\"X\",severity=\"critical\"} 1"
            ),
            "{out}"
        );
        assert!(alerts.resolve(&metrics, "ns/bus", "X").is_some());
        assert!(alerts.resolve(&metrics, "ns/bus", "X").is_none());
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(!out.contains("alert=\"X\""), "{out}");
    }
}
