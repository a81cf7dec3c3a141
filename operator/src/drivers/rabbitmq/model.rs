//! The management API's answers: tolerant serde types for its JSON and the pure mapping from
//! them to the driver types ([`ClusterView`], [`Alarm`], [`ClientPage`], [`NodeStats`]).

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use tracing::debug;

use super::topics::{subscription_bindings, subscription_client_id};
use crate::drivers::{
    Alarm, ClientInfo, ClientPage, ClientQuery, ClusterView, DriverError, NodeStats, NodeTarget,
};

/// The items of a JSON list that can be read as `T` (the others are skipped).
pub(super) fn list<T: DeserializeOwned>(
    op: &'static str,
    node: &NodeTarget,
    value: Value,
) -> Result<Vec<T>, DriverError> {
    let Value::Array(items) = value else {
        return Err(DriverError::Decode {
            op,
            target: node.node.clone(),
            message: format!("expected a list, got {}", kind_of(&value)),
        });
    };
    Ok(items
        .into_iter()
        .filter_map(|item| match serde_json::from_value(item) {
            Ok(t) => Some(t),
            Err(e) => {
                debug!(op, error = %e, "skipped an entry that cannot be read");
                None
            }
        })
        .collect())
}

/// A JSON object read as `T`.
pub(super) fn object<T: DeserializeOwned>(
    op: &'static str,
    node: &NodeTarget,
    value: Value,
) -> Result<T, DriverError> {
    if !value.is_object() {
        return Err(DriverError::Decode {
            op,
            target: node.node.clone(),
            message: format!("expected an object, got {}", kind_of(&value)),
        });
    }
    serde_json::from_value(value).map_err(|e| DriverError::Decode {
        op,
        target: node.node.clone(),
        message: e.to_string(),
    })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `/api/nodes` entries and `/api/nodes/<name>`.
#[derive(Clone, Debug, Default, Deserialize)]
pub(super) struct ApiNode {
    pub(super) name: String,
    #[serde(default, deserialize_with = "lenient")]
    pub(super) running: Option<bool>,
    #[serde(default, rename = "type", deserialize_with = "lenient")]
    pub(super) kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(super) partitions: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient")]
    pub(super) mem_alarm: Option<bool>,
    #[serde(default, deserialize_with = "lenient")]
    pub(super) disk_free_alarm: Option<bool>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub(super) mem_used: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub(super) mem_limit: Option<u64>,
    /// Milliseconds.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub(super) uptime: Option<u64>,
    /// The node's socket limit (gone from newer versions, where `fd_total` stands in).
    #[serde(default, deserialize_with = "lenient_u64")]
    pub(super) sockets_total: Option<u64>,
    /// The node's file descriptor limit.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub(super) fd_total: Option<u64>,
}

/// `/api/overview`.
#[derive(Clone, Debug, Default, Deserialize)]
pub(super) struct ApiOverview {
    #[serde(default, deserialize_with = "lenient")]
    pub(super) node: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(super) rabbitmq_version: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(super) product_version: Option<String>,
}

/// `/api/connections` entries.
#[derive(Clone, Debug, Default, Deserialize)]
pub(super) struct ApiConnection {
    pub(super) name: String,
    #[serde(default, deserialize_with = "lenient")]
    pub(super) node: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(super) user: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(super) peer_host: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub(super) peer_port: Option<u16>,
    /// Milliseconds since the epoch.
    #[serde(default, deserialize_with = "lenient")]
    pub(super) connected_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient")]
    pub(super) protocol: Option<String>,
    #[serde(default)]
    pub(super) client_properties: Value,
    #[serde(default)]
    pub(super) variable_map: Value,
}

/// A binding of the MQTT exchange.
#[derive(Clone, Debug, Default, Deserialize)]
pub(super) struct ApiBinding {
    #[serde(default)]
    pub(super) source: String,
    pub(super) destination: String,
    #[serde(default)]
    pub(super) destination_type: String,
    #[serde(default)]
    pub(super) routing_key: String,
}

/// `/api/queues/<vhost>` entries.
#[derive(Clone, Debug, Default, Deserialize)]
pub(super) struct ApiQueue {
    pub(super) name: String,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub(super) messages: Option<u64>,
    /// An object, or `[]` when the queue has no figures yet.
    #[serde(default, deserialize_with = "lenient")]
    pub(super) message_stats: Option<MessageStats>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub(super) struct MessageStats {
    #[serde(default, deserialize_with = "lenient_u64")]
    pub(super) deliver_get: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub(super) deliver_get_details: Option<RateDetails>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub(super) struct RateDetails {
    #[serde(default, deserialize_with = "lenient")]
    pub(super) rate: Option<f64>,
}

/// Any value that does not read as `T` is `None`.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

/// A count: an unsigned integer, a non-negative float (truncated) or a numeric string.
fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

// ----- pure mapping -----

/// The answering node's view: running and stopped members (deduplicated, sorted), and the
/// union of their partitions. The answering node is always counted as running.
pub(super) fn cluster_view_of(own: &str, nodes: &[ApiNode]) -> ClusterView {
    let mut running = BTreeSet::new();
    let mut stopped = BTreeSet::new();
    let mut partitions = BTreeSet::new();
    for n in nodes {
        if n.running.unwrap_or(false) || n.name == own {
            running.insert(n.name.clone());
        } else {
            stopped.insert(n.name.clone());
        }
        partitions.extend(n.partitions.iter().flatten().cloned());
    }
    running.insert(own.to_string());
    let stopped = stopped.difference(&running).cloned().collect();
    ClusterView {
        node: own.to_string(),
        running: running.into_iter().collect(),
        stopped,
        partitions: partitions.into_iter().collect(),
    }
}

/// The alarms in `/api/nodes`: `memory`, `disk_free`, `partition`; sorted by node and name.
pub(super) fn alarms_of(nodes: &[ApiNode]) -> Vec<Alarm> {
    let mut alarms = Vec::new();
    for n in nodes {
        let alarm = |name: &str, message: String| Alarm {
            node: n.name.clone(),
            name: name.to_string(),
            message,
            activated_at: None,
        };
        if n.mem_alarm == Some(true) {
            alarms.push(alarm(
                "memory",
                "memory use is above the high watermark: publishers are blocked".into(),
            ));
        }
        if n.disk_free_alarm == Some(true) {
            alarms.push(alarm(
                "disk_free",
                "free disk space is below the limit: publishers are blocked".into(),
            ));
        }
        let partitions = n.partitions.clone().unwrap_or_default();
        if !partitions.is_empty() {
            alarms.push(alarm(
                "partition",
                format!("network partition with {}", partitions.join(", ")),
            ));
        }
    }
    alarms.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    alarms
}

/// An MQTT connection, as the driver uses it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Connection {
    pub(super) name: String,
    pub(super) client_id: Option<String>,
    pub(super) node: String,
    pub(super) user: Option<String>,
    pub(super) peer_host: Option<String>,
    pub(super) peer_port: Option<u16>,
    pub(super) connected_at: Option<i64>,
    pub(super) protocol: Option<String>,
}

/// The MQTT connections (`protocol` starting with `MQTT`) of `/api/connections`, with the
/// client id from `client_properties.client_id` (3.10 also has it in `variable_map`).
pub(super) fn mqtt_connections_of(rows: Vec<ApiConnection>) -> Vec<Connection> {
    rows.into_iter()
        .filter(|r| r.protocol.as_deref().is_some_and(|p| p.starts_with("MQTT")))
        .map(|r| {
            let client_id = [&r.client_properties, &r.variable_map]
                .into_iter()
                .find_map(|v| v.get("client_id").and_then(Value::as_str))
                .map(str::to_string);
            Connection {
                name: r.name,
                client_id,
                node: r.node.unwrap_or_default(),
                user: r.user,
                peer_host: r.peer_host,
                peer_port: r.peer_port,
                connected_at: r.connected_at,
                protocol: r.protocol,
            }
        })
        .collect()
}

/// Epoch milliseconds as RFC 3339.
fn rfc3339_millis(ms: i64) -> Option<String> {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(|t| t.to_string())
}

/// The page `query` asks for: matching clients (substrings of client id and username) sorted
/// by client id (then connection name).
pub(super) fn client_page(connections: &[Connection], query: &ClientQuery) -> ClientPage {
    let page = query.page.max(1);
    let limit = query.limit.clamp(1, 1000);
    let mut matching: Vec<&Connection> = connections
        .iter()
        .filter(|c| {
            query
                .client_id
                .as_deref()
                .is_none_or(|want| c.client_id.as_deref().unwrap_or_default().contains(want))
        })
        .filter(|c| {
            query
                .username
                .as_deref()
                .is_none_or(|want| c.user.as_deref().unwrap_or_default().contains(want))
        })
        .collect();
    matching.sort_by(|a, b| (&a.client_id, &a.name).cmp(&(&b.client_id, &b.name)));
    let total = matching.len();
    let start = (page as usize - 1).saturating_mul(limit as usize);
    let clients = matching
        .into_iter()
        .skip(start)
        .take(limit as usize)
        .map(|c| ClientInfo {
            client_id: c.client_id.clone().unwrap_or_default(),
            username: c.user.clone(),
            node: c.node.clone(),
            ip_address: c.peer_host.clone(),
            port: c.peer_port,
            connected: true,
            connected_at: c.connected_at.and_then(rfc3339_millis),
            protocol: c.protocol.clone(),
            subscriptions: None,
            queue_len: None,
            keepalive: None,
        })
        .collect();
    ClientPage {
        clients,
        page,
        limit,
        has_next: start.saturating_add(limit as usize) < total,
        total: Some(total as u64),
    }
}

/// Adds each client's subscriptions (its bindings) and queued messages (its subscription
/// queues' messages).
pub(super) fn add_sessions(
    clients: &mut [ClientInfo],
    bindings: &[ApiBinding],
    queues: &[ApiQueue],
) {
    let bound = subscription_bindings(bindings);
    for client in clients {
        let own = |queue: &str| subscription_client_id(queue) == Some(client.client_id.as_str());
        let subscriptions = bound
            .iter()
            .filter(|(q, _)| own(q))
            .map(|(_, keys)| keys.len() as u64)
            .sum();
        let queue_len = queues
            .iter()
            .filter(|q| own(&q.name))
            .map(|q| q.messages.unwrap_or(0))
            .sum();
        client.subscriptions = Some(subscriptions);
        client.queue_len = Some(queue_len);
    }
}

/// The node's figures.
pub(super) fn node_stats_of(
    name: &str,
    info: &ApiNode,
    overview: &ApiOverview,
    connections: &[Connection],
) -> NodeStats {
    let name = if info.name.is_empty() {
        name
    } else {
        &info.name
    };
    NodeStats {
        node: name.to_string(),
        running: info.running.unwrap_or(false),
        role: info.kind.clone(),
        version: overview
            .rabbitmq_version
            .clone()
            .or_else(|| overview.product_version.clone()),
        connections: Some(connections.iter().filter(|c| c.node == name).count() as u64),
        memory_used_bytes: info.mem_used,
        memory_limit_bytes: info.mem_limit,
        uptime_seconds: info.uptime.map(|ms| ms / 1000),
        connections_limit: info.sockets_total.or(info.fd_total),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{items, target, N1, N2};
    use super::*;

    #[test]
    fn a_single_node_sees_itself_running() {
        let v = cluster_view_of(N1, &items(fixture!("nodes_single.json")));
        assert_eq!(v.node, N1);
        assert_eq!(v.running, [N1]);
        assert!(v.stopped.is_empty() && v.partitions.is_empty());
    }

    #[test]
    fn two_running_members() {
        let v = cluster_view_of(N1, &items(fixture!("nodes_two_running.json")));
        assert_eq!(v.running, [N1, N2]);
        assert!(v.stopped.is_empty());
    }

    #[test]
    fn a_stopped_member_has_only_a_name() {
        let nodes: Vec<ApiNode> = items(fixture!("nodes_one_stopped.json"));
        assert_eq!(nodes.len(), 2);
        let v = cluster_view_of(N1, &nodes);
        assert_eq!(v.running, [N1]);
        assert_eq!(v.stopped, [N2]);
        assert_eq!(v.members(), [N1, N2]);
        assert!(alarms_of(&nodes).is_empty());
    }

    #[test]
    fn a_stray_lists_only_itself() {
        let v = cluster_view_of(N2, &items(fixture!("nodes_stray.json")));
        assert_eq!(v.running, [N2]);
        assert!(v.stopped.is_empty());
    }

    #[test]
    fn the_answering_node_is_running_and_partitions_are_merged() {
        let nodes = vec![
            ApiNode {
                name: "b@x".into(),
                running: Some(true),
                partitions: Some(vec!["c@x".into()]),
                ..ApiNode::default()
            },
            ApiNode {
                name: "a@x".into(),
                running: None,
                partitions: Some(vec!["c@x".into(), "d@x".into()]),
                ..ApiNode::default()
            },
            ApiNode {
                name: "c@x".into(),
                running: Some(false),
                ..ApiNode::default()
            },
            ApiNode {
                name: "c@x".into(),
                running: Some(false),
                ..ApiNode::default()
            },
        ];
        let v = cluster_view_of("a@x", &nodes);
        assert_eq!(v.running, ["a@x", "b@x"]);
        assert_eq!(v.stopped, ["c@x"]);
        assert_eq!(v.partitions, ["c@x", "d@x"]);
        let alarms = alarms_of(&nodes);
        assert_eq!(alarms.len(), 2);
        assert_eq!(
            (alarms[0].node.as_str(), alarms[0].name.as_str()),
            ("a@x", "partition")
        );
        assert!(alarms[0].message.contains("c@x, d@x"));
    }

    #[test]
    fn the_overview_names_the_node_and_version() {
        let o: ApiOverview = object("test", &target(N1), fixture!("overview.json")).unwrap();
        assert_eq!(o.node.as_deref(), Some(N1));
        assert_eq!(o.rabbitmq_version.as_deref(), Some("3.10.8"));
    }

    #[test]
    fn a_memory_alarm_is_reported() {
        let alarms = alarms_of(&items(fixture!("nodes_mem_alarm.json")));
        assert_eq!(alarms.len(), 1);
        assert_eq!(alarms[0].node, N2);
        assert_eq!(alarms[0].name, "memory");
        assert!(alarms_of(&items(fixture!("nodes_single.json"))).is_empty());
    }

    #[test]
    fn node_stats_from_the_node_and_overview() {
        let info: ApiNode = object("test", &target(N1), fixture!("node_self.json")).unwrap();
        let overview: ApiOverview = object("test", &target(N1), fixture!("overview.json")).unwrap();
        let conns = mqtt_connections_of(items(fixture!("connections.json")));
        let s = node_stats_of(N1, &info, &overview, &conns);
        assert_eq!(s.node, N1);
        assert!(s.running);
        assert_eq!(s.role.as_deref(), Some("disc"));
        assert_eq!(s.version.as_deref(), Some("3.10.8"));
        assert_eq!(s.connections, Some(2));
        assert_eq!(s.memory_limit_bytes, Some(512_000_000));
        assert!(s.memory_used_bytes.unwrap() > 0);
        assert_eq!(s.uptime_seconds, Some(176));
        assert_eq!(s.connections_limit, Some(17910), "sockets_total");
        let fds_only = ApiNode {
            fd_total: Some(20000),
            ..ApiNode::default()
        };
        let f = node_stats_of("x@y", &fds_only, &overview, &conns);
        assert_eq!(f.connections_limit, Some(20000));
        let other = node_stats_of("x@y", &ApiNode::default(), &overview, &conns);
        assert_eq!((other.node.as_str(), other.connections), ("x@y", Some(0)));
        assert_eq!(other.connections_limit, None);
    }

    #[test]
    fn the_duplicate_client_properties_key_is_read_last_wins() {
        let raw = include_str!("../../../tests/fixtures/rabbitmq/connections.json");
        assert_eq!(raw.matches("\"client_properties\":{}").count(), 2);
        // Straight into a struct the duplicate key is an error: hence Value first.
        assert!(serde_json::from_str::<Vec<ApiConnection>>(raw).is_err());
        for name in ["connections.json", "connections_columns.json"] {
            let text = match name {
                "connections.json" => raw,
                _ => include_str!("../../../tests/fixtures/rabbitmq/connections_columns.json"),
            };
            let conns = mqtt_connections_of(items(serde_json::from_str(text).unwrap()));
            let ids: Vec<_> = conns.iter().map(|c| c.client_id.as_deref()).collect();
            assert_eq!(ids, [Some("sensor-alpha"), Some("dash-beta")], "{name}");
        }
    }

    #[test]
    fn clients_are_filtered_sorted_and_paged() {
        let conns = mqtt_connections_of(items(fixture!("connections.json")));
        let all = client_page(&conns, &ClientQuery::default());
        assert_eq!(all.total, Some(2));
        assert!(!all.has_next);
        let first = &all.clients[0];
        assert_eq!(first.client_id, "dash-beta");
        assert_eq!(first.username.as_deref(), Some("mooring"));
        assert_eq!(first.node, N1);
        assert_eq!(first.ip_address.as_deref(), Some("127.0.0.1"));
        assert!(first.port.is_some() && first.connected);
        assert_eq!(first.protocol.as_deref(), Some("MQTT 3.1.1"));
        assert_eq!(all.clients[1].protocol.as_deref(), Some("MQTT 3.1.0"));
        let at = first.connected_at.as_deref().unwrap();
        assert!(at.starts_with("2026-11-23T") && at.ends_with('Z'), "{at}");

        let one = client_page(
            &conns,
            &ClientQuery {
                limit: 1,
                ..ClientQuery::default()
            },
        );
        assert_eq!(
            (one.clients.len(), one.has_next, one.total),
            (1, true, Some(2))
        );
        let second = client_page(
            &conns,
            &ClientQuery {
                page: 2,
                limit: 1,
                ..ClientQuery::default()
            },
        );
        assert_eq!(second.clients[0].client_id, "sensor-alpha");
        assert!(!second.has_next);
        let beyond = client_page(
            &conns,
            &ClientQuery {
                page: 9,
                limit: 1,
                ..ClientQuery::default()
            },
        );
        assert!(beyond.clients.is_empty() && !beyond.has_next);

        let by_id = client_page(
            &conns,
            &ClientQuery {
                client_id: Some("alpha".into()),
                ..ClientQuery::default()
            },
        );
        assert_eq!(by_id.total, Some(1));
        assert_eq!(by_id.clients[0].client_id, "sensor-alpha");
        let by_user = client_page(
            &conns,
            &ClientQuery {
                username: Some("nobody".into()),
                ..ClientQuery::default()
            },
        );
        assert_eq!(by_user.total, Some(0));
    }

    #[test]
    fn only_mqtt_connections_count() {
        let rows: Vec<ApiConnection> = items(serde_json::json!([
            {"name": "a", "protocol": "AMQP 0-9-1", "client_properties": {"product": "x"}},
            {"name": "b", "protocol": "MQTT 3.1.1", "client_properties": [], "variable_map": {"client_id": "v"}},
            {"name": "c"},
            {"protocol": "MQTT 3.1.1"},
        ]));
        let conns = mqtt_connections_of(rows);
        assert_eq!(conns.len(), 1);
        assert_eq!(conns[0].client_id.as_deref(), Some("v"));
    }

    #[test]
    fn sessions_come_from_the_subscription_queues() {
        let bindings: Vec<ApiBinding> = items(fixture!("bindings_amq_topic.json"));
        let queues: Vec<ApiQueue> = items(fixture!("queues_columns.json"));
        let mut clients = vec![
            ClientInfo {
                client_id: "dash-beta".into(),
                ..ClientInfo::default()
            },
            ClientInfo {
                client_id: "offline-gamma".into(),
                ..ClientInfo::default()
            },
            ClientInfo {
                client_id: "nobody".into(),
                ..ClientInfo::default()
            },
        ];
        add_sessions(&mut clients, &bindings, &queues);
        assert_eq!(
            (clients[0].subscriptions, clients[0].queue_len),
            (Some(2), Some(0))
        );
        assert_eq!(
            (clients[1].subscriptions, clients[1].queue_len),
            (Some(2), Some(3))
        );
        assert_eq!(
            (clients[2].subscriptions, clients[2].queue_len),
            (Some(0), Some(0))
        );
    }

    #[test]
    fn lists_skip_unreadable_entries_and_refuse_non_lists() {
        let nodes: Vec<ApiNode> = items(serde_json::json!([
            {"name": "a@x", "running": "yes", "mem_used": 1.5e3, "uptime": "42", "partitions": null},
            {"running": true},
            "junk",
        ]));
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].running, None);
        assert_eq!(nodes[0].mem_used, Some(1500));
        assert_eq!(nodes[0].uptime, Some(42));
        assert_eq!(nodes[0].partitions, None);
        let e = list::<ApiNode>("test", &target(N1), serde_json::json!({"a": 1})).unwrap_err();
        assert_eq!(e.reason(), "BadAnswer");
        let e = object::<ApiOverview>("test", &target(N1), serde_json::json!([])).unwrap_err();
        assert_eq!(e.reason(), "BadAnswer");
    }
}
