//! What the dashboard shows, built from the BrokerCluster, the collector's samples, the alerts and
//! the Events (pure: no I/O, no clock).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use mooring_crds::BrokerCluster;
use mooring_dashboard::model::{
    AlertRow, BackendRow, ClientRow, ClientsPage, ClusterSummary, ConditionRow, EventRow,
    MatrixRow, MembershipMatrix, NodeRow, RatePoint, TopicSeries, TotalsPoint,
};

use crate::alerts::history::{Change, Transition};
use crate::alerts::Alert;
use crate::collector::sample::Sample;
use crate::drivers::{ClientInfo, ClientPage};

/// A time as people read it: `2026-11-24 00:42:16 UTC`.
pub fn when(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Events shown on a cluster's page.
pub const MAX_EVENTS: usize = 25;

/// The overview line of a cluster.
pub fn summary(
    bc: &BrokerCluster,
    latest: Option<&Sample>,
    active_alerts: usize,
) -> ClusterSummary {
    let status = bc.status.clone().unwrap_or_default();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    let totals = latest.map(|s| s.totals()).unwrap_or_default();
    ClusterSummary {
        namespace: bc.namespace().unwrap_or_default(),
        name: bc.name_any(),
        broker: bc.spec.broker.kind.as_str().to_string(),
        version: bc.spec.broker.version.clone().unwrap_or_default(),
        ready: ready.is_some_and(|c| c.status == "True"),
        reason: ready.map_or_else(|| "Unknown".to_string(), |c| c.reason.clone()),
        message: ready.map(|c| c.message.clone()).unwrap_or_default(),
        replicas: bc.spec.replicas,
        ready_replicas: status.ready_replicas,
        nodes_up: totals.nodes_up,
        nodes_joined: status
            .members
            .iter()
            .filter(|m| m.state.eq_ignore_ascii_case("joined"))
            .count(),
        connections: totals.connections,
        active_alerts,
        load_balancer: bc.spec.load_balancer.enabled,
    }
}

/// The status conditions.
pub fn conditions(bc: &BrokerCluster) -> Vec<ConditionRow> {
    bc.status
        .iter()
        .flat_map(|s| &s.conditions)
        .map(|c| ConditionRow {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            since: when(c.last_transition_time.0),
        })
        .collect()
}

/// The nodes: every node the last sample expected (ordinal order), with the membership state
/// the status reports, then members the sample did not have.
pub fn nodes(bc: &BrokerCluster, latest: Option<&Sample>) -> Vec<NodeRow> {
    let members: Vec<_> = bc.status.iter().flat_map(|s| &s.members).collect();
    let mut rows: Vec<NodeRow> = Vec::new();
    for n in latest.iter().flat_map(|s| &s.nodes) {
        let member = members.iter().find(|m| m.pod == *n.pod);
        rows.push(NodeRow {
            pod: n.pod.to_string(),
            node: n.node.to_string(),
            role: None,
            status: if n.up { "up" } else { "down" }.to_string(),
            membership: member.map_or_else(|| "unknown".into(), |m| m.state.to_ascii_lowercase()),
            healthy: member.and_then(|m| m.healthy),
            failed_checks: member.map(|m| m.failed_checks.clone()).unwrap_or_default(),
            connections: n.connections,
            connections_limit: n.connections_limit,
            memory_used_bytes: n.memory_used_bytes,
            memory_limit_bytes: n.memory_limit_bytes,
            uptime_seconds: n.uptime_seconds,
            cpu_percent: n.cpu_percent,
            version: n.version.as_deref().map(str::to_string),
            error: n.error.clone(),
            last_repair: member.and_then(|m| last_repair(m)),
        });
    }
    for m in members {
        if rows.iter().any(|r| r.pod == m.pod) {
            continue;
        }
        rows.push(NodeRow {
            pod: m.pod.clone(),
            node: m.node.clone(),
            status: "unknown".into(),
            membership: m.state.to_ascii_lowercase(),
            healthy: m.healthy,
            failed_checks: m.failed_checks.clone(),
            last_repair: last_repair(m),
            ..NodeRow::default()
        });
    }
    rows
}

fn last_repair(m: &mooring_crds::MemberStatus) -> Option<String> {
    let result = m.last_repair_result.as_ref()?;
    Some(match &m.last_repair_time {
        Some(t) => format!("last repair {}: {result}", when(t.0)),
        None => format!("last repair: {result}"),
    })
}

/// Who sees whom, from each member's own view: columns are the expected nodes, then any other
/// node a view names (a ghost); a member without a view (it did not answer) has `None` cells.
pub fn matrix(bc: &BrokerCluster) -> MembershipMatrix {
    let members: Vec<_> = bc.status.iter().flat_map(|s| &s.members).collect();
    let mut columns: Vec<String> = members.iter().map(|m| m.node.clone()).collect();
    for m in &members {
        for seen in &m.view {
            if !columns.contains(seen) {
                columns.push(seen.clone());
            }
        }
    }
    let rows = members
        .iter()
        .map(|m| {
            let answered = !m.view.is_empty();
            MatrixRow {
                node: m.node.clone(),
                sees: columns
                    .iter()
                    .map(|c| answered.then(|| m.view.contains(c)))
                    .collect(),
            }
        })
        .collect();
    MembershipMatrix { columns, rows }
}

/// Each HAProxy replica's view of each broker server, and the replicas that did not answer.
pub fn backends(latest: Option<&Sample>) -> Vec<BackendRow> {
    let Some(lb) = latest.and_then(|s| s.lb.as_ref()) else {
        return Vec::new();
    };
    let mut rows: Vec<BackendRow> = lb
        .servers
        .iter()
        .map(|s| BackendRow {
            lb_pod: s.lb_pod.clone(),
            server: s.server.clone(),
            address: s.address.clone().unwrap_or_default(),
            state: s.status.clone(),
            reason: s.check.clone(),
        })
        .collect();
    rows.extend(lb.unreachable.iter().map(|(pod, why)| BackendRow {
        lb_pod: pod.clone(),
        server: "—".into(),
        address: String::new(),
        state: "unreachable".into(),
        reason: why.clone(),
    }));
    rows
}

/// Cluster-wide figures over the history.
pub fn history(samples: &[Arc<Sample>]) -> Vec<TotalsPoint> {
    samples
        .iter()
        .map(|s| {
            let t = s.totals();
            TotalsPoint {
                at: s.at.as_second(),
                nodes_up: t.nodes_up,
                connections: t.connections,
            }
        })
        .collect()
}

/// One series per metered topic: the broker's rates where it has them, else the change of its
/// counters between two samples over the seconds between them (a counter that went down, a
/// broker restart, gives no point).
pub fn topic_series(metered: &[String], samples: &[Arc<Sample>]) -> Vec<TopicSeries> {
    metered
        .iter()
        .map(|topic| {
            let figures: Vec<(i64, Option<&crate::drivers::TopicMetric>)> = samples
                .iter()
                .map(|s| {
                    let m = s
                        .topics
                        .as_ref()
                        .and_then(|ts| ts.iter().find(|t| t.topic == *topic));
                    (s.at.as_second(), m)
                })
                .collect();
            let mut points = Vec::with_capacity(figures.len());
            for (i, (at, m)) in figures.iter().enumerate() {
                let previous = i.checked_sub(1).and_then(|j| figures.get(j));
                let counted = |count: fn(&crate::drivers::TopicMetric) -> Option<u64>| {
                    let (before_at, before) = previous?;
                    let (now, then) = (count((*m)?)?, count((*before)?)?);
                    let seconds = (at - before_at) as f64;
                    (now >= then && seconds > 0.0).then(|| (now - then) as f64 / seconds)
                };
                let rate_in = m
                    .and_then(|m| m.rate_in)
                    .or_else(|| counted(|t| t.messages_in));
                let rate_out = m
                    .and_then(|m| m.rate_out)
                    .or_else(|| counted(|t| t.messages_out));
                points.push(RatePoint {
                    at: *at,
                    rate_in,
                    rate_out,
                });
            }
            let last = figures.iter().rev().find_map(|(_, m)| *m);
            TopicSeries {
                topic: topic.clone(),
                points,
                messages_in: last.and_then(|m| m.messages_in),
                messages_out: last.and_then(|m| m.messages_out),
                messages_dropped: last.and_then(|m| m.messages_dropped),
                subscribers: last.and_then(|m| m.subscribers),
                queued: last.and_then(|m| m.queued),
            }
        })
        .collect()
}

fn subject(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A firing alert as a row.
pub fn active_alert(a: &Alert) -> AlertRow {
    AlertRow {
        cluster: a.cluster.clone(),
        name: a.name.clone(),
        severity: a.severity.as_str().to_string(),
        state: "firing".into(),
        subject: subject(&a.labels),
        message: a.message.clone(),
        at: when(a.since),
    }
}

/// An alert's transition as a history row.
pub fn transition(t: &Transition) -> AlertRow {
    AlertRow {
        cluster: t.cluster.clone(),
        name: t.name.clone(),
        severity: t.severity.as_str().to_string(),
        state: match t.change {
            Change::Fired => "firing",
            Change::Resolved => "resolved",
        }
        .into(),
        subject: subject(&t.labels),
        message: t.message.clone(),
        at: when(t.at),
    }
}

/// Events, newest first, at most [`MAX_EVENTS`].
pub fn events(mut list: Vec<Event>) -> Vec<EventRow> {
    let time_of = |e: &Event| {
        e.series
            .as_ref()
            .map(|s| s.last_observed_time.0)
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    list.sort_by_key(|e| std::cmp::Reverse(time_of(e)));
    list.into_iter()
        .take(MAX_EVENTS)
        .map(|e| EventRow {
            time: time_of(&e).map(when).unwrap_or_default(),
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.note.clone().unwrap_or_default(),
            count: e.series.as_ref().map_or(1, |s| s.count),
        })
        .collect()
}

/// A driver's page of clients as the dashboard shows it.
pub fn clients_page(page: ClientPage) -> ClientsPage {
    ClientsPage {
        clients: page.clients.into_iter().map(client_row).collect(),
        page: page.page,
        limit: page.limit,
        has_next: page.has_next,
        total: page.total,
    }
}

fn client_row(c: ClientInfo) -> ClientRow {
    let address = match (&c.ip_address, c.port) {
        (Some(ip), Some(port)) => Some(format!("{ip}:{port}")),
        (Some(ip), None) => Some(ip.clone()),
        _ => None,
    };
    ClientRow {
        client_id: c.client_id,
        username: c.username,
        node: c.node,
        connected: c.connected,
        connected_at: c.connected_at,
        address,
        protocol: c.protocol,
        subscriptions: c.subscriptions,
        queue_len: c.queue_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::lb_stats::{LbSample, ServerState};
    use crate::collector::sample::tests::{down, sample, up};
    use crate::drivers::TopicMetric;
    use serde_json::json;

    fn cluster() -> BrokerCluster {
        serde_json::from_value(json!({
            "apiVersion": "mooring.dev/v1alpha1", "kind": "BrokerCluster",
            "metadata": {"name": "bus", "namespace": "iot"},
            "spec": {"broker": {"kind": "emqx", "version": "5.8.9"}, "replicas": 3,
                     "loadBalancer": {"enabled": true}},
            "status": {
                "replicas": 3, "readyReplicas": 2,
                "conditions": [{"type": "Ready", "status": "False", "reason": "MembershipInconsistent",
                                "message": "emqx@bus-2 is stray", "lastTransitionTime": "2026-11-23T10:00:00Z"}],
                "members": [
                    {"pod": "bus-0", "node": "emqx@bus-0", "state": "Joined", "healthy": true,
                     "view": ["emqx@bus-0", "emqx@bus-1", "emqx@ghost"]},
                    {"pod": "bus-1", "node": "emqx@bus-1", "state": "Joined",
                     "view": ["emqx@bus-0", "emqx@bus-1"]},
                    {"pod": "bus-2", "node": "emqx@bus-2", "state": "Stray", "healthy": false,
                     "failedChecks": ["mqtt-connect: refused"], "lastRepairResult": "join failed"},
                ],
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_summary_counts_joined_members_and_the_last_samples_figures() {
        let s = sample(0, vec![up(0, 10, 1, 2), up(1, 5, 1, 2), down(2)]);
        let sum = summary(&cluster(), Some(&s), 2);
        assert_eq!(
            (sum.nodes_up, sum.nodes_joined, sum.connections),
            (2, 2, 15)
        );
        assert!(!sum.ready);
        assert_eq!(sum.reason, "MembershipInconsistent");
        assert_eq!(
            (sum.replicas, sum.ready_replicas, sum.active_alerts),
            (3, 2, 2)
        );
        assert!(sum.load_balancer);
        assert_eq!(summary(&cluster(), None, 0).nodes_up, 0);
    }

    #[test]
    fn nodes_join_the_sample_with_the_membership_state() {
        let s = sample(0, vec![up(0, 10, 1, 2), up(1, 5, 1, 2), down(2)]);
        let rows = nodes(&cluster(), Some(&s));
        assert_eq!(rows.len(), 3);
        assert_eq!(
            (rows[0].status.as_str(), rows[0].membership.as_str()),
            ("up", "joined")
        );
        assert_eq!(
            (rows[2].status.as_str(), rows[2].membership.as_str()),
            ("down", "stray")
        );
        assert_eq!(rows[2].failed_checks, ["mqtt-connect: refused"]);
        assert_eq!(
            rows[2].last_repair.as_deref(),
            Some("last repair: join failed")
        );
        // Before the first telemetry round the members still show.
        let rows = nodes(&cluster(), None);
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.status == "unknown"));
    }

    #[test]
    fn the_matrix_shows_each_view_with_ghosts_and_silent_nodes() {
        let m = matrix(&cluster());
        assert_eq!(
            m.columns,
            ["emqx@bus-0", "emqx@bus-1", "emqx@bus-2", "emqx@ghost"]
        );
        assert_eq!(
            m.rows[0].sees,
            [Some(true), Some(true), Some(false), Some(true)]
        );
        assert_eq!(
            m.rows[1].sees,
            [Some(true), Some(true), Some(false), Some(false)]
        );
        assert_eq!(m.rows[2].sees, [None, None, None, None]);
    }

    #[test]
    fn backends_list_every_replicas_view_and_the_silent_replicas() {
        let mut s = sample(0, vec![]);
        s.lb = Some(LbSample {
            servers: vec![ServerState {
                lb_pod: "bus-lb-0".into(),
                server: "bus-1".into(),
                status: "DOWN".into(),
                check: "L4CON".into(),
                address: Some("10.0.0.6:1883".into()),
            }],
            unreachable: vec![("bus-lb-1".into(), "timed out".into())],
        });
        let rows = backends(Some(&s));
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].state.as_str(), rows[0].address.as_str()),
            ("DOWN", "10.0.0.6:1883")
        );
        assert_eq!(
            (rows[1].lb_pod.as_str(), rows[1].state.as_str()),
            ("bus-lb-1", "unreachable")
        );
        assert!(backends(None).is_empty());
    }

    fn with_topic(second: i64, metric: Option<TopicMetric>) -> Arc<Sample> {
        let mut s = sample(second, vec![]);
        s.topics = Some(metric.into_iter().collect());
        Arc::new(s)
    }

    #[test]
    fn topic_rates_come_from_the_broker_or_from_counter_differences() {
        let counted = |second, n| {
            with_topic(
                second,
                Some(TopicMetric {
                    topic: "t".into(),
                    messages_in: Some(n),
                    messages_out: Some(2 * n),
                    ..TopicMetric::default()
                }),
            )
        };
        let samples = vec![
            counted(0, 100),
            counted(10, 300),
            counted(20, 50),
            with_topic(30, None),
        ];
        let series = topic_series(&["t".into(), "quiet".into()], &samples);
        let rates: Vec<_> = series[0]
            .points
            .iter()
            .map(|p| (p.rate_in, p.rate_out))
            .collect();
        // No previous sample; 20/s; a reset counter; no figure.
        assert_eq!(
            rates,
            [
                (None, None),
                (Some(20.0), Some(40.0)),
                (None, None),
                (None, None)
            ]
        );
        assert_eq!(series[0].messages_in, Some(50));
        assert!(series[1].points.iter().all(|p| p.rate_in.is_none()));

        let brokers_rate = with_topic(
            0,
            Some(TopicMetric {
                topic: "t".into(),
                rate_in: Some(7.5),
                ..TopicMetric::default()
            }),
        );
        assert_eq!(
            topic_series(&["t".into()], &[brokers_rate])[0].points[0].rate_in,
            Some(7.5)
        );
    }

    #[test]
    fn clients_show_their_address_with_the_port() {
        let page = clients_page(ClientPage {
            clients: vec![ClientInfo {
                client_id: "dev-1".into(),
                ip_address: Some("10.1.0.9".into()),
                port: Some(50_000),
                ..ClientInfo::default()
            }],
            page: 2,
            limit: 50,
            has_next: true,
            total: Some(120),
        });
        assert_eq!(page.clients[0].address.as_deref(), Some("10.1.0.9:50000"));
        assert_eq!((page.page, page.has_next, page.total), (2, true, Some(120)));
    }
}
