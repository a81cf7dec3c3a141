//! Alerts the operator raises about a cluster: deduplicated by (cluster, name, labels), each
//! firing until it is resolved, with a severity, start and end times and a bounded history of
//! transitions per cluster ([`history`]); exported as `mooring_alerts_firing`, sent to webhooks
//! in Alertmanager's format ([`webhook`], in the background) and announced as Kubernetes Events
//! by whoever raises them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, OnceLock};

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::metrics::{AlertLabels, Metrics};

pub mod history;
pub mod webhook;

pub use history::{Change, History, Transition};

/// How bad an alert is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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

/// An alert's own labels (for example `node`); empty for a cluster-wide alert.
pub type Labels = BTreeMap<String, String>;

/// One firing alert.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// `namespace/name` of the cluster.
    pub cluster: String,
    /// The alert's name, for example `MembershipNoMajority`.
    pub name: String,
    /// Its own labels: alerts of one name differ by them (one per node, per broker alarm...).
    pub labels: Labels,
    /// Its severity.
    pub severity: Severity,
    /// What is wrong, for people.
    pub message: String,
    /// When it started firing.
    pub since: Timestamp,
}

type Key = (String, String, Labels);

/// The alerts that fire now, their history, and where they are sent.
#[derive(Default)]
pub struct Alerts {
    active: Mutex<BTreeMap<Key, Alert>>,
    history: Mutex<History>,
    notifier: OnceLock<webhook::Notifier>,
    /// Each cluster's own webhook (`spec.monitoring.webhook`).
    routes: Mutex<HashMap<String, String>>,
}

impl Alerts {
    /// Fires a cluster-wide alert; see [`Alerts::fire_labelled`].
    pub fn fire(
        &self,
        metrics: &Metrics,
        cluster: &str,
        name: &str,
        severity: Severity,
        message: String,
    ) -> bool {
        self.fire_labelled(metrics, cluster, name, &Labels::new(), severity, message)
    }

    /// Fires an alert; returns true when it was not firing yet. Firing it again only updates its
    /// message and severity (it keeps its start time, and nothing is recorded or sent).
    pub fn fire_labelled(
        &self,
        metrics: &Metrics,
        cluster: &str,
        name: &str,
        labels: &Labels,
        severity: Severity,
        message: String,
    ) -> bool {
        let mut active = lock(&self.active);
        let key = (cluster.to_string(), name.to_string(), labels.clone());
        if let Some(a) = active.get_mut(&key) {
            a.message = message;
            if a.severity != severity {
                let old = a.severity;
                a.severity = severity;
                update_gauge(metrics, &active, cluster, name, old);
                update_gauge(metrics, &active, cluster, name, severity);
            }
            return false;
        }
        let alert = Alert {
            cluster: cluster.to_string(),
            name: name.to_string(),
            labels: labels.clone(),
            severity,
            message,
            since: Timestamp::now(),
        };
        active.insert(key, alert.clone());
        update_gauge(metrics, &active, cluster, name, severity);
        drop(active);
        self.transition(&alert, Change::Fired, alert.since);
        true
    }

    /// Resolves every alert `name` of `cluster`, whatever its labels; returns one of them when
    /// any was firing.
    pub fn resolve(&self, metrics: &Metrics, cluster: &str, name: &str) -> Option<Alert> {
        let keys: Vec<Key> = lock(&self.active)
            .keys()
            .filter(|(c, n, _)| c == cluster && n == name)
            .cloned()
            .collect();
        let mut first = None;
        for (_, _, labels) in keys {
            let gone = self.resolve_labelled(metrics, cluster, name, &labels);
            first = first.or(gone);
        }
        first
    }

    /// Resolves one alert; returns it when it was firing.
    pub fn resolve_labelled(
        &self,
        metrics: &Metrics,
        cluster: &str,
        name: &str,
        labels: &Labels,
    ) -> Option<Alert> {
        let mut active = lock(&self.active);
        let gone = active.remove(&(cluster.to_string(), name.to_string(), labels.clone()))?;
        update_gauge(metrics, &active, cluster, name, gone.severity);
        drop(active);
        self.transition(&gone, Change::Resolved, Timestamp::now());
        Some(gone)
    }

    /// Every firing alert of `cluster`.
    pub fn of_cluster(&self, cluster: &str) -> Vec<Alert> {
        lock(&self.active)
            .values()
            .filter(|a| a.cluster == cluster)
            .cloned()
            .collect()
    }

    /// Every firing alert.
    pub fn all(&self) -> Vec<Alert> {
        lock(&self.active).values().cloned().collect()
    }

    /// The last transitions of `cluster`, oldest first.
    pub fn history(&self, cluster: &str) -> Vec<Transition> {
        lock(&self.history).of_cluster(cluster)
    }

    /// Sends every transition from now on through `notifier` (set once, at startup).
    pub fn set_notifier(&self, notifier: webhook::Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// Sets (or clears) the cluster's own webhook.
    pub fn set_webhook(&self, cluster: &str, url: Option<&str>) {
        let mut routes = lock(&self.routes);
        match url {
            Some(u) => {
                routes.insert(cluster.to_string(), u.to_string());
            }
            None => {
                routes.remove(cluster);
            }
        }
    }

    /// Forgets a cluster that is gone: its history and its webhook (resolve its alerts first).
    pub fn forget(&self, cluster: &str) {
        lock(&self.history).forget(cluster);
        lock(&self.routes).remove(cluster);
    }

    fn transition(&self, alert: &Alert, change: Change, at: Timestamp) {
        lock(&self.history).record(Transition {
            at,
            cluster: alert.cluster.clone(),
            name: alert.name.clone(),
            labels: alert.labels.clone(),
            severity: alert.severity,
            change,
            message: alert.message.clone(),
        });
        let Some(notifier) = self.notifier.get() else {
            return;
        };
        let own = lock(&self.routes).get(&alert.cluster).cloned();
        let ended = (change == Change::Resolved).then_some(at);
        let message = webhook::message(alert, ended);
        let mut urls: Vec<String> = notifier
            .default_url()
            .map(str::to_string)
            .into_iter()
            .collect();
        urls.extend(own.filter(|u| !urls.contains(u)));
        for url in urls {
            notifier.send(webhook::Delivery {
                url,
                message: message.clone(),
            });
        }
    }
}

/// Sets the firing gauge of (cluster, name, severity) to the number of such alerts.
fn update_gauge(
    metrics: &Metrics,
    active: &BTreeMap<Key, Alert>,
    cluster: &str,
    name: &str,
    severity: Severity,
) {
    let n = active
        .values()
        .filter(|a| a.cluster == cluster && a.name == name && a.severity == severity)
        .count();
    let labels = AlertLabels {
        cluster: cluster.to_string(),
        alert: name.to_string(),
        severity: severity.as_str().to_string(),
    };
    if n == 0 {
        metrics.alerts_firing.remove(&labels);
    } else {
        metrics
            .alerts_firing
            .get_or_create(&labels)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        encode(&mut out, registry).unwrap();
        out
    }

    fn node(n: &str) -> Labels {
        Labels::from([("node".to_string(), n.to_string())])
    }

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
        let out = render(&registry);
        assert!(
            out.contains(
                "mooring_alerts_firing{cluster=\"ns/bus\",alert=\"X\",severity=\"critical\"} 1"
            ),
            "{out}"
        );
        assert!(alerts.resolve(&metrics, "ns/bus", "X").is_some());
        assert!(alerts.resolve(&metrics, "ns/bus", "X").is_none());
        assert!(!render(&registry).contains("alert=\"X\""));
    }

    #[test]
    fn alerts_of_one_name_are_deduplicated_by_their_labels() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let alerts = Alerts::default();
        let w = Severity::Warning;
        assert!(alerts.fire_labelled(&metrics, "ns/b", "Down", &node("a"), w, "m".into()));
        assert!(alerts.fire_labelled(&metrics, "ns/b", "Down", &node("b"), w, "m".into()));
        assert!(!alerts.fire_labelled(&metrics, "ns/b", "Down", &node("a"), w, "m".into()));
        assert_eq!(alerts.all().len(), 2);
        let out = render(&registry);
        assert!(
            out.contains(
                "mooring_alerts_firing{cluster=\"ns/b\",alert=\"Down\",severity=\"warning\"} 2"
            ),
            "{out}"
        );
        assert!(alerts
            .resolve_labelled(&metrics, "ns/b", "Down", &node("a"))
            .is_some());
        assert!(render(&registry).contains("severity=\"warning\"} 1"));
        // A change of severity moves the alert to the other gauge.
        let c = Severity::Critical;
        assert!(!alerts.fire_labelled(&metrics, "ns/b", "Down", &node("b"), c, "m".into()));
        let out = render(&registry);
        assert!(out.contains("severity=\"critical\"} 1"), "{out}");
        assert!(!out.contains("severity=\"warning\""), "{out}");
        // Resolving by name resolves every label set.
        alerts.fire_labelled(&metrics, "ns/b", "Down", &node("c"), c, "m".into());
        assert!(alerts.resolve(&metrics, "ns/b", "Down").is_some());
        assert!(alerts.all().is_empty());
    }

    #[test]
    fn every_transition_is_recorded_in_the_clusters_history() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let alerts = Alerts::default();
        alerts.fire(&metrics, "ns/b", "X", Severity::Warning, "first".into());
        alerts.fire(&metrics, "ns/b", "X", Severity::Warning, "again".into());
        alerts.resolve(&metrics, "ns/b", "X");
        let h = alerts.history("ns/b");
        let changes: Vec<(Change, &str)> =
            h.iter().map(|t| (t.change, t.message.as_str())).collect();
        assert_eq!(
            changes,
            [(Change::Fired, "first"), (Change::Resolved, "again")]
        );
        assert!(h[0].at <= h[1].at);
        alerts.forget("ns/b");
        assert!(alerts.history("ns/b").is_empty());
    }

    #[tokio::test]
    async fn transitions_are_queued_for_the_default_and_the_clusters_webhook() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let alerts = Alerts::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        alerts.set_notifier(webhook::Notifier::for_test(Some("http://all".into()), tx));
        alerts.set_webhook("ns/b", Some("http://b"));
        alerts.fire(&metrics, "ns/b", "X", Severity::Warning, "m".into());
        alerts.fire(&metrics, "ns/c", "X", Severity::Warning, "m".into());
        alerts.resolve(&metrics, "ns/b", "X");
        let mut got = Vec::new();
        while let Ok(d) = rx.try_recv() {
            got.push((
                d.url,
                d.message.status,
                d.message.alerts[0].labels["cluster"].clone(),
            ));
        }
        use webhook::Status::{Firing, Resolved};
        assert_eq!(
            got,
            [
                ("http://all".into(), Firing, "b".to_string()),
                ("http://b".into(), Firing, "b".into()),
                ("http://all".into(), Firing, "c".into()),
                ("http://all".into(), Resolved, "b".into()),
                ("http://b".into(), Resolved, "b".into()),
            ]
        );
    }
}
