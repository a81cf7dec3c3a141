//! MQTT topics in RabbitMQ: AMQP topic matching, MQTT filters and topics as routing keys, the
//! subscription queues (`mqtt-subscription-<client id>qos<0|1>`) and the figures of a topic (see
//! the driver's module documentation).

use std::collections::BTreeMap;

use super::model::{ApiBinding, ApiQueue};
use crate::drivers::TopicMetric;

/// The exchange MQTT publishes to and subscriptions are bound to.
pub const MQTT_EXCHANGE: &str = "amq.topic";
/// The prefix of MQTT subscription queues: `mqtt-subscription-<client id>qos<0|1>`.
pub const SUBSCRIPTION_QUEUE_PREFIX: &str = "mqtt-subscription-";

/// The client id of a subscription queue name (`mqtt-subscription-<id>qos<0|1>`).
pub fn subscription_client_id(queue: &str) -> Option<&str> {
    let rest = queue.strip_prefix(SUBSCRIPTION_QUEUE_PREFIX)?;
    rest.strip_suffix("qos0")
        .or_else(|| rest.strip_suffix("qos1"))
}

/// The subscription queues bound from the MQTT exchange, with their bindings' routing keys.
pub(super) fn subscription_bindings(bindings: &[ApiBinding]) -> BTreeMap<&str, Vec<&str>> {
    let mut by_queue: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for b in bindings.iter().filter(|b| {
        (b.source.is_empty() || b.source == MQTT_EXCHANGE)
            && b.destination_type == "queue"
            && subscription_client_id(&b.destination).is_some()
    }) {
        by_queue
            .entry(b.destination.as_str())
            .or_default()
            .push(b.routing_key.as_str());
    }
    by_queue
}

/// An MQTT topic filter as the routing key RabbitMQ binds it with: `/` becomes `.`, `+` becomes
/// `*`, `#` stays `#`.
pub fn filter_to_routing_key(filter: &str) -> String {
    filter
        .split('/')
        .map(|level| if level == "+" { "*" } else { level })
        .collect::<Vec<_>>()
        .join(".")
}

/// An MQTT topic name as the routing key its messages are published with (`/` becomes `.`; a
/// `.` inside a level stays and so separates words too).
pub fn topic_to_routing_key(topic: &str) -> String {
    topic.replace('/', ".")
}

/// AMQP topic matching as RabbitMQ's topic exchange does it: both are split at `.`; `*` in the
/// pattern matches exactly one word, `#` zero or more words, anything else itself. An empty
/// key or pattern has no words (`a.` has two, the second empty), as in RabbitMQ.
pub fn routing_key_matches(pattern: &str, routing_key: &str) -> bool {
    fn words(s: &str) -> Vec<&str> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split('.').collect()
        }
    }
    let pattern = words(pattern);
    let key = words(routing_key);
    // matches[j]: the pattern so far matches the first j words of the key.
    let mut matches = vec![false; key.len() + 1];
    matches[0] = true;
    for word in pattern {
        matches = if word == "#" {
            // Zero or more words: reachable from any shorter prefix.
            matches
                .iter()
                .scan(false, |any, &m| {
                    *any |= m;
                    Some(*any)
                })
                .collect()
        } else {
            // Exactly one word (`*`: any word).
            std::iter::once(false)
                .chain(
                    key.iter()
                        .zip(&matches)
                        .map(|(k, &m)| m && (word == "*" || *k == word)),
                )
                .collect()
        };
    }
    matches[key.len()]
}

/// The figures of each topic (see the driver's module documentation).
pub(super) fn topic_metrics_of(
    topics: &[String],
    bindings: &[ApiBinding],
    queues: &[ApiQueue],
) -> Vec<TopicMetric> {
    let bound = subscription_bindings(bindings);
    let queues: BTreeMap<&str, &ApiQueue> = queues.iter().map(|q| (q.name.as_str(), q)).collect();
    topics
        .iter()
        .map(|topic| {
            let key = topic_to_routing_key(topic);
            let matching: Vec<&str> = bound
                .iter()
                .filter(|(_, patterns)| patterns.iter().any(|p| routing_key_matches(p, &key)))
                .map(|(q, _)| *q)
                .collect();
            let stats = || {
                matching
                    .iter()
                    .filter_map(|q| queues.get(q))
                    .filter_map(|q| q.message_stats.as_ref())
            };
            let queued = matching
                .iter()
                .filter_map(|q| queues.get(q))
                .map(|q| q.messages.unwrap_or(0))
                .sum();
            TopicMetric {
                topic: topic.clone(),
                messages_in: None,
                messages_out: Some(stats().map(|s| s.deliver_get.unwrap_or(0)).sum()),
                messages_dropped: None,
                rate_in: None,
                rate_out: Some(
                    stats()
                        .filter_map(|s| s.deliver_get_details.as_ref()?.rate)
                        .sum(),
                ),
                subscribers: Some(matching.len() as u64),
                queued: Some(queued),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::items;
    use super::*;

    #[test]
    fn subscription_queue_names() {
        assert_eq!(subscription_client_id("mqtt-subscription-aqos1"), Some("a"));
        assert_eq!(
            subscription_client_id("mqtt-subscription-x-qos0-yqos0"),
            Some("x-qos0-y")
        );
        assert_eq!(subscription_client_id("mqtt-subscription-aqos2"), None);
        assert_eq!(subscription_client_id("orders"), None);
    }

    #[test]
    fn filters_become_routing_keys() {
        assert_eq!(filter_to_routing_key("sensors/+/temp"), "sensors.*.temp");
        assert_eq!(filter_to_routing_key("sensors/#"), "sensors.#");
        assert_eq!(filter_to_routing_key("a+b/c"), "a+b.c");
        assert_eq!(topic_to_routing_key("a/b.c/d"), "a.b.c.d");
    }

    #[test]
    fn amqp_topic_matching() {
        let yes = [
            ("sensors.*.temp", "sensors.a.temp"),
            ("sensors.#", "sensors"),
            ("sensors.#", "sensors.a.b.c"),
            ("#", "anything.at.all"),
            ("#", ""),
            ("#.temp", "temp"),
            ("#.temp", "a.b.temp"),
            ("a.#.z", "a.z"),
            ("a.#.z", "a.b.c.z"),
            ("*.*", "a."),
            ("a..b", "a..b"),
            ("#.#", "a"),
            ("*.#", "a"),
            ("exact", "exact"),
            ("", ""),
        ];
        for (p, k) in yes {
            assert!(routing_key_matches(p, k), "{p} should match {k}");
        }
        let no = [
            ("sensors.*.temp", "sensors.temp"),
            ("sensors.*.temp", "sensors.a.b.temp"),
            ("sensors.*", "sensors"),
            ("*", ""),
            ("#.temp", "temp.x"),
            ("a.#.z", "a.b"),
            ("*.*", "a"),
            ("exact", "exactly"),
            ("sensors.#", "sensorsx.a"),
            ("", "a"),
            ("a", ""),
        ];
        for (p, k) in no {
            assert!(!routing_key_matches(p, k), "{p} should not match {k}");
        }
        // Through the MQTT conversions.
        let m = |filter: &str, topic: &str| {
            routing_key_matches(&filter_to_routing_key(filter), &topic_to_routing_key(topic))
        };
        assert!(m("sensors/+/temp", "sensors/a/temp"));
        assert!(!m("sensors/+/temp", "sensors/a/hum"));
        assert!(m("sensors/#", "sensors/a/temp"));
        assert!(m("sensors/#", "sensors"));
    }

    #[test]
    fn topic_metrics_from_the_subscription_queues() {
        let bindings: Vec<ApiBinding> = items(fixture!("bindings_amq_topic.json"));
        let queues: Vec<ApiQueue> = items(fixture!("queues_columns.json"));
        // offline-gamma's queue has no figures yet: `message_stats: []`.
        assert!(queues.iter().any(|q| q
            .message_stats
            .as_ref()
            .and_then(|s| s.deliver_get)
            .is_none()));
        let topics: Vec<String> = ["sensors/a/temp", "sensors/b/hum", "alerts/x", "other"]
            .map(String::from)
            .to_vec();
        let m = topic_metrics_of(&topics, &bindings, &queues);
        // sensors/a/temp: dash-beta (sensors/#), offline-gamma (sensors/#, sensors/a/+),
        // sensor-alpha (sensors/+/temp).
        assert_eq!(m[0].topic, "sensors/a/temp");
        assert_eq!(m[0].subscribers, Some(3));
        assert_eq!(m[0].queued, Some(3));
        assert_eq!(m[0].messages_out, Some(7 + 5));
        assert!((m[0].rate_out.unwrap() - 1.0).abs() < 1e-9);
        assert_eq!((m[0].messages_in, m[0].rate_in), (None, None));
        // sensors/b/hum: dash-beta and offline-gamma.
        assert_eq!((m[1].subscribers, m[1].queued), (Some(2), Some(3)));
        assert_eq!((m[2].subscribers, m[2].messages_out), (Some(1), Some(7)));
        assert_eq!(
            (m[3].subscribers, m[3].queued, m[3].messages_out),
            (Some(0), Some(0), Some(0))
        );
    }
}
