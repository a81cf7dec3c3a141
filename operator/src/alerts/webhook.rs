//! Sends alert transitions to webhooks in Alertmanager's webhook JSON format (version 4), with
//! bounded retries, from a background task: whoever fires an alert never waits for a webhook.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Alert;

/// Alertmanager's `endsAt` of an alert that still fires.
pub const NOT_ENDED: &str = "0001-01-01T00:00:00Z";
/// Deliveries waiting to be sent; beyond this, new ones are dropped (with a warning).
pub const QUEUE_LEN: usize = 1024;
/// Time limit of one POST.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The receiver name in the messages.
pub const RECEIVER: &str = "mooring";

/// `firing` or `resolved`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The alert fires.
    Firing,
    /// The alert stopped firing.
    Resolved,
}

/// One alert in a webhook message.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAlert {
    /// Firing or resolved.
    pub status: Status,
    /// `alertname`, `cluster`, `namespace`, `severity` and the alert's own labels.
    pub labels: BTreeMap<String, String>,
    /// `summary` and `description`.
    pub annotations: BTreeMap<String, String>,
    /// When it started firing (RFC 3339).
    pub starts_at: String,
    /// When it stopped firing, or [`NOT_ENDED`].
    pub ends_at: String,
    /// Where it comes from (empty: Mooring has no page per alert).
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    /// A stable id of the label set.
    pub fingerprint: String,
}

/// An Alertmanager webhook message (version 4).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Always `"4"`.
    pub version: String,
    /// Identifies the group (here: the alert's label set).
    pub group_key: String,
    /// Alerts left out (never any).
    pub truncated_alerts: u32,
    /// Firing when any alert fires.
    pub status: Status,
    /// [`RECEIVER`].
    pub receiver: String,
    /// Labels the message is grouped by.
    pub group_labels: BTreeMap<String, String>,
    /// Labels every alert has.
    pub common_labels: BTreeMap<String, String>,
    /// Annotations every alert has.
    pub common_annotations: BTreeMap<String, String>,
    /// Link back to the sender (empty).
    #[serde(rename = "externalURL")]
    pub external_url: String,
    /// The alerts.
    pub alerts: Vec<WebhookAlert>,
}

/// The Alertmanager labels of `alert`: its own, then `alertname`, `cluster` (the BrokerCluster's
/// name), `namespace` and `severity`.
pub fn labels_of(alert: &Alert) -> BTreeMap<String, String> {
    let (namespace, name) = alert
        .cluster
        .split_once('/')
        .unwrap_or(("", alert.cluster.as_str()));
    let mut labels = alert.labels.clone();
    labels.insert("alertname".into(), alert.name.clone());
    labels.insert("cluster".into(), name.to_string());
    labels.insert("namespace".into(), namespace.to_string());
    labels.insert("severity".into(), alert.severity.as_str().to_string());
    labels
}

/// The message announcing that `alert` fires (`ended: None`) or stopped firing at `ended`.
pub fn message(alert: &Alert, ended: Option<Timestamp>) -> Message {
    let labels = labels_of(alert);
    let status = if ended.is_some() {
        Status::Resolved
    } else {
        Status::Firing
    };
    let annotations = BTreeMap::from([
        (
            "summary".to_string(),
            format!("{} on {}", alert.name, alert.cluster),
        ),
        ("description".to_string(), alert.message.clone()),
    ]);
    let fingerprint = fingerprint(&labels);
    Message {
        version: "4".into(),
        group_key: format!("{{}}:{{fingerprint=\"{fingerprint}\"}}"),
        truncated_alerts: 0,
        status,
        receiver: RECEIVER.into(),
        group_labels: BTreeMap::new(),
        common_labels: labels.clone(),
        common_annotations: annotations.clone(),
        external_url: String::new(),
        alerts: vec![WebhookAlert {
            status,
            labels,
            annotations,
            starts_at: alert.since.to_string(),
            ends_at: ended.map_or_else(|| NOT_ENDED.to_string(), |t| t.to_string()),
            generator_url: String::new(),
            fingerprint,
        }],
    }
}

/// 16 hex digits identifying a label set.
fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update([0xff]);
        h.update(v.as_bytes());
        h.update([0xfe]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How often and how patiently a delivery is tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all (at least one).
    pub attempts: u32,
    /// Wait after the first failure; doubled after each further one.
    pub base: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `n`th failed try (1-based): base, 2 base, 4 base ... capped at max.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32 << n.saturating_sub(1).min(16);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// Why a delivery failed for good.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The webhook refused the message (a 4xx other than 408 and 429): not retried.
    #[error("{url} refused the alert: HTTP {status}")]
    Refused {
        /// The webhook.
        url: String,
        /// Its answer.
        status: u16,
    },
    /// Every try failed.
    #[error("{url}: {attempts} tries failed, the last: {last}")]
    GaveUp {
        /// The webhook.
        url: String,
        /// Tries made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

/// POSTs `message` to `url`, retrying network errors, 5xx, 408 and 429 with exponential backoff;
/// returns the number of tries it took.
pub async fn deliver(
    http: &reqwest::Client,
    url: &str,
    message: &Message,
    policy: &RetryPolicy,
) -> Result<u32, DeliveryError> {
    let attempts = policy.attempts.max(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        match http.post(url).json(message).send().await {
            Ok(r) if r.status().is_success() => return Ok(attempt),
            Ok(r) => {
                let status = r.status();
                if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
                    return Err(DeliveryError::Refused {
                        url: url.to_string(),
                        status: status.as_u16(),
                    });
                }
                last = format!("HTTP {}", status.as_u16());
            }
            Err(e) => last = e.to_string(),
        }
        if attempt < attempts {
            let wait = policy.delay(attempt);
            debug!(%url, attempt, %last, ?wait, "alert webhook failed, retrying");
            tokio::time::sleep(wait).await;
        }
    }
    Err(DeliveryError::GaveUp {
        url: url.to_string(),
        attempts,
        last,
    })
}

/// One message for one webhook.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The webhook.
    pub url: String,
    /// What to send.
    pub message: Message,
}

/// Queues deliveries for the background sender.
#[derive(Clone, Debug)]
pub struct Notifier {
    default_url: Option<String>,
    tx: mpsc::Sender<Delivery>,
}

impl Notifier {
    /// The webhook every alert goes to (besides its cluster's own), if any.
    pub fn default_url(&self) -> Option<&str> {
        self.default_url.as_deref()
    }

    /// A notifier that queues into `tx` (for tests of what is sent).
    #[cfg(test)]
    pub(crate) fn for_test(default_url: Option<String>, tx: mpsc::Sender<Delivery>) -> Self {
        Self { default_url, tx }
    }

    /// Queues a delivery without waiting; drops it (with a warning) when the queue is full or
    /// the sender has stopped.
    pub fn send(&self, delivery: Delivery) {
        if let Err(e) = self.tx.try_send(delivery) {
            warn!(error = %e, "alert webhook queue unavailable, notification dropped");
        }
    }
}

/// Why the sender could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The default webhook is not an http(s) URL.
    #[error("alert webhook URL {0:?} is not an http or https URL")]
    BadUrl(String),
    /// The HTTP client could not be built.
    #[error("cannot build the alert webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Whether `url` is an absolute http or https URL.
pub fn is_http_url(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

/// Starts the background sender (until `stop`); alerts go to `default_url` (if any) and to their
/// cluster's own webhook. Deliveries are sent one after the other, in order.
pub fn spawn(
    default_url: Option<String>,
    policy: RetryPolicy,
    stop: CancellationToken,
) -> Result<Notifier, SetupError> {
    if let Some(url) = default_url.as_deref().filter(|u| !is_http_url(u)) {
        return Err(SetupError::BadUrl(url.to_string()));
    }
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let (tx, mut rx) = mpsc::channel::<Delivery>(QUEUE_LEN);
    tokio::spawn(async move {
        loop {
            let delivery = tokio::select! {
                _ = stop.cancelled() => break,
                d = rx.recv() => match d { Some(d) => d, None => break },
            };
            let sent = tokio::select! {
                _ = stop.cancelled() => break,
                r = deliver(&http, &delivery.url, &delivery.message, &policy) => r,
            };
            match sent {
                Ok(tries) => debug!(url = %delivery.url, tries, "alert sent to webhook"),
                Err(e) => warn!(error = %e, "alert webhook delivery failed"),
            }
        }
        debug!("alert webhook sender stopped");
    });
    Ok(Notifier { default_url, tx })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Severity;

    fn alert() -> Alert {
        Alert {
            cluster: "iot/bus".into(),
            name: "NodeDown".into(),
            labels: BTreeMap::from([("node".to_string(), "emqx@bus-1".to_string())]),
            severity: Severity::Critical,
            message: "bus-1 does not answer".into(),
            since: Timestamp::from_second(1_700_000_000).unwrap(),
        }
    }

    #[test]
    fn a_firing_alert_is_an_alertmanager_v4_message() {
        let json = serde_json::to_value(message(&alert(), None)).unwrap();
        assert_eq!(json["version"], "4");
        assert_eq!(json["status"], "firing");
        assert_eq!(json["receiver"], "mooring");
        let a = &json["alerts"][0];
        assert_eq!(a["status"], "firing");
        assert_eq!(a["labels"]["alertname"], "NodeDown");
        assert_eq!(a["labels"]["cluster"], "bus");
        assert_eq!(a["labels"]["namespace"], "iot");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["labels"]["node"], "emqx@bus-1");
        assert_eq!(a["annotations"]["summary"], "NodeDown on iot/bus");
        assert_eq!(a["annotations"]["description"], "bus-1 does not answer");
        assert_eq!(a["startsAt"], "2023-11-14T22:13:20Z");
        assert_eq!(a["endsAt"], NOT_ENDED);
        assert_eq!(a["fingerprint"].as_str().unwrap().len(), 16);
        assert!(json.get("externalURL").is_some() && a.get("generatorURL").is_some());
    }

    #[test]
    fn a_resolved_alert_has_its_end_and_the_same_fingerprint() {
        let end = Timestamp::from_second(1_700_000_060).unwrap();
        let firing = message(&alert(), None);
        let resolved = message(&alert(), Some(end));
        assert_eq!(resolved.status, Status::Resolved);
        assert_eq!(resolved.alerts[0].ends_at, "2023-11-14T22:14:20Z");
        assert_eq!(firing.alerts[0].fingerprint, resolved.alerts[0].fingerprint);
        let mut other = alert();
        other.labels.insert("node".into(), "emqx@bus-2".into());
        assert_ne!(
            message(&other, None).alerts[0].fingerprint,
            firing.alerts[0].fingerprint
        );
    }

    #[test]
    fn only_http_urls_are_webhooks() {
        assert!(is_http_url(
            "http://alertmanager.monitoring:9093/api/v2/alerts"
        ));
        assert!(is_http_url("https://hooks.example.com/x"));
        for bad in ["", "alertmanager:9093", "ftp://x/y", "http://"] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_bad_default_url_stops_the_start() {
        let stop = CancellationToken::new();
        let err = spawn(
            Some("not a url".into()),
            RetryPolicy::default(),
            stop.clone(),
        );
        assert!(matches!(err, Err(SetupError::BadUrl(_))));
        assert!(spawn(None, RetryPolicy::default(), stop.clone()).is_ok());
        stop.cancel();
    }

    #[test]
    fn retry_delays_double_and_are_capped() {
        let p = RetryPolicy {
            attempts: 9,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let d: Vec<u128> = (1..=6).map(|n| p.delay(n).as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay(1000), Duration::from_secs(1));
    }
}
