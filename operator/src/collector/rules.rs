//! Alert rules over a cluster's samples and its spec's thresholds (pure: no clock, no I/O).
//!
//! The collector owns the alerts named in [`names`]; membership repair raises its own
//! (no majority, inconsistent membership, failed repair, unhealthy node).

use std::sync::Arc;

use mooring_crds::AlertThresholds;

use super::sample::{NodeSample, Sample};
use crate::alerts::{Alert, Labels, Severity};

/// Names of the alerts the collector raises.
pub mod names {
    /// A node has not answered (or not run the broker) for [`super::NODE_DOWN_SAMPLES`] samples.
    pub const NODE_DOWN: &str = "NodeDown";
    /// A node uses more memory than `spec.monitoring.alerts.memoryPercent` of its limit.
    pub const MEMORY_HIGH: &str = "NodeMemoryHigh";
    /// A node's Pod uses more CPU than `spec.monitoring.alerts.cpuPercent` of its limit.
    pub const CPU_HIGH: &str = "NodeCpuHigh";
    /// A node holds more connections than `spec.monitoring.alerts.connectionsPercent` of the most
    /// it can hold.
    pub const CONNECTIONS_NEAR_LIMIT: &str = "NodeConnectionsNearLimit";
    /// The metered topics' dropped-message counts rose since the previous sample.
    pub const MESSAGES_DROPPED: &str = "MessagesDropped";
    /// The broker raised an alarm (one alert per alarm name and node).
    pub const BROKER_ALARM: &str = "BrokerAlarm";
    /// A load balancer replica's health checks fail for a broker server, so it sends it no
    /// clients (one alert per server).
    pub const LB_BACKEND_DOWN: &str = "LoadBalancerBackendDown";
    /// Every name above.
    pub const ALL: [&str; 7] = [
        NODE_DOWN,
        MEMORY_HIGH,
        CPU_HIGH,
        CONNECTIONS_NEAR_LIMIT,
        MESSAGES_DROPPED,
        BROKER_ALARM,
        LB_BACKEND_DOWN,
    ];
}

/// Consecutive samples a node must be down in before [`names::NODE_DOWN`] fires (one minute at
/// 10 s): a Pod restarting in a rollout is down for less.
pub const NODE_DOWN_SAMPLES: usize = 6;
/// The same for a node never seen up (five minutes at 10 s).
pub const NEW_NODE_DOWN_SAMPLES: usize = 30;

/// Broker alarms that are critical: RabbitMQ's memory and disk alarms block every publisher, and
/// a partition splits the cluster (the names of [`crate::drivers::rabbitmq`]'s alarms). The
/// others (EMQX's, which warn before a limit) are warnings.
const CRITICAL_ALARMS: [&str; 3] = ["memory", "disk_free", "partition"];

/// An alert that should fire now.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// One of [`names`].
    pub name: &'static str,
    /// Its labels (`node`, `pod`, `alarm`).
    pub labels: Labels,
    /// Its severity.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
}

/// What the rules concluded from the samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    /// The alerts that should fire; every other alert of [`names::ALL`] should not...
    pub firing: Vec<Desired>,
    /// ...except those named here: the newest sample could not tell (a call failed), so they
    /// stay as they are.
    pub unknown: Vec<&'static str>,
}

/// Evaluates every rule over `samples` (oldest first).
pub fn evaluate(samples: &[Arc<Sample>], thresholds: &AlertThresholds) -> Evaluation {
    let mut out = Evaluation::default();
    let Some(latest) = samples.last() else {
        out.unknown = names::ALL.to_vec();
        return out;
    };
    node_down(samples, &mut out);
    memory_high(latest, thresholds, &mut out);
    cpu_high(latest, thresholds, &mut out);
    connections_near_limit(latest, thresholds, &mut out);
    match samples.len().checked_sub(2).map(|i| &samples[i]) {
        Some(previous) if latest.topics.is_some() => messages_dropped(previous, latest, &mut out),
        Some(_) => out.unknown.push(names::MESSAGES_DROPPED),
        None => {}
    }
    match &latest.alarms {
        Some(alarms) => {
            for a in alarms {
                let severity = if CRITICAL_ALARMS.contains(&a.name.as_str()) {
                    Severity::Critical
                } else {
                    Severity::Warning
                };
                out.firing.push(Desired {
                    name: names::BROKER_ALARM,
                    labels: Labels::from([
                        ("alarm".to_string(), a.name.clone()),
                        ("node".to_string(), a.node.clone()),
                    ]),
                    severity,
                    message: format!("broker alarm {} on {}: {}", a.name, a.node, a.message),
                });
            }
        }
        None => out.unknown.push(names::BROKER_ALARM),
    }
    lb_backend_down(samples, &mut out);
    out
}

/// Consecutive samples a server must be down in, in some load balancer replica, before
/// [`names::LB_BACKEND_DOWN`] fires (30 s at 10 s): brokers still starting, or restarting in a
/// rollout, are down for less.
pub const LB_DOWN_SAMPLES: usize = 3;

/// Broker servers a load balancer replica marks DOWN (its health checks fail) in each of the last
/// [`LB_DOWN_SAMPLES`] samples. Servers the agents put in maintenance (stray nodes) or drain (a
/// scale-down) on purpose are not down. When no replica answered, the rule cannot tell.
fn lb_backend_down(samples: &[Arc<Sample>], out: &mut Evaluation) {
    let Some(latest) = samples.last() else {
        return;
    };
    let Some(lb) = &latest.lb else {
        return;
    };
    // A server never seen UP (its broker is still booting: a new cluster or node) gets the
    // longer grace of a new node.
    let ever_up = |server: &str| {
        samples.iter().any(|s| {
            s.lb.as_ref().is_some_and(|lb| {
                lb.servers
                    .iter()
                    .any(|x| x.server == server && x.status == "UP")
            })
        })
    };
    let down_before = |server: &str| {
        let needed = if ever_up(server) {
            LB_DOWN_SAMPLES
        } else {
            NEW_NODE_DOWN_SAMPLES
        };
        let Some(from) = samples.len().checked_sub(needed) else {
            return false;
        };
        samples[from..].iter().all(|s| {
            s.lb.as_ref()
                .is_some_and(|lb| lb.servers.iter().any(|x| x.server == server && x.is_down()))
        })
    };
    if lb.servers.is_empty() && !lb.unreachable.is_empty() {
        out.unknown.push(names::LB_BACKEND_DOWN);
        return;
    }
    let mut down: Vec<(&str, Vec<String>)> = Vec::new();
    for s in lb
        .servers
        .iter()
        .filter(|s| s.is_down() && down_before(&s.server))
    {
        let seen_by = format!("{} ({})", s.lb_pod, s.check);
        match down.iter_mut().find(|(server, _)| *server == s.server) {
            Some((_, by)) => by.push(seen_by),
            None => down.push((&s.server, vec![seen_by])),
        }
    }
    let replicas: std::collections::BTreeSet<&str> =
        lb.servers.iter().map(|s| s.lb_pod.as_str()).collect();
    for (server, by) in down {
        // Down in every replica: no client reaches the node through the load balancer.
        let severity = if by.len() == replicas.len() {
            Severity::Critical
        } else {
            Severity::Warning
        };
        out.firing.push(Desired {
            name: names::LB_BACKEND_DOWN,
            labels: Labels::from([("server".to_string(), server.to_string())]),
            severity,
            message: format!(
                "the load balancer sends no client to {server}: its health check fails in {}",
                by.join(", ")
            ),
        });
    }
}

/// The collector's alerts among `firing` (a cluster's firing alerts) that `evaluation` no longer
/// wants, as (name, labels): every other alert is left alone (membership's, and those whose rule
/// could not tell this time).
pub fn resolutions(firing: &[Alert], evaluation: &Evaluation) -> Vec<(String, Labels)> {
    firing
        .iter()
        .filter(|a| names::ALL.contains(&a.name.as_str()))
        .filter(|a| !evaluation.unknown.contains(&a.name.as_str()))
        .filter(|a| {
            !evaluation
                .firing
                .iter()
                .any(|d| d.name == a.name && d.labels == a.labels)
        })
        .map(|a| (a.name.clone(), a.labels.clone()))
        .collect()
}

fn node_labels(n: &NodeSample) -> Labels {
    Labels::from([
        ("node".to_string(), n.node.to_string()),
        ("pod".to_string(), n.pod.to_string()),
    ])
}

/// Nodes down in each of the last [`NODE_DOWN_SAMPLES`] samples, or, for a node never seen up
/// in the history (a new cluster or node still starting: image pulls, volume binding), in each
/// of the last [`NEW_NODE_DOWN_SAMPLES`].
fn node_down(samples: &[Arc<Sample>], out: &mut Evaluation) {
    let Some(latest) = samples.last() else {
        return;
    };
    let state_of = |s: &Sample, node: &str| s.nodes.iter().find(|m| &*m.node == node).map(|m| m.up);
    for n in latest.nodes.iter().filter(|n| !n.up) {
        let ever_up = samples.iter().any(|s| state_of(s, &n.node) == Some(true));
        let needed = if ever_up {
            NODE_DOWN_SAMPLES
        } else {
            NEW_NODE_DOWN_SAMPLES
        };
        let Some(from) = samples.len().checked_sub(needed) else {
            continue;
        };
        if samples[from..]
            .iter()
            .all(|s| state_of(s, &n.node) == Some(false))
        {
            let why = n
                .error
                .clone()
                .unwrap_or_else(|| "the broker application does not run".into());
            out.firing.push(Desired {
                name: names::NODE_DOWN,
                labels: node_labels(n),
                severity: Severity::Critical,
                message: format!("{} ({}) is down: {why}", n.node, n.pod),
            });
        }
    }
}

/// Nodes above the memory threshold (of their limit or high watermark).
fn memory_high(latest: &Sample, thresholds: &AlertThresholds, out: &mut Evaluation) {
    for n in &latest.nodes {
        let (Some(used), Some(limit)) = (n.memory_used_bytes, n.memory_limit_bytes) else {
            continue;
        };
        if limit == 0 {
            continue;
        }
        let percent = used.saturating_mul(100) / limit;
        if percent >= u64::try_from(thresholds.memory_percent).unwrap_or(100) {
            out.firing.push(Desired {
                name: names::MEMORY_HIGH,
                labels: node_labels(n),
                severity: Severity::Warning,
                message: format!(
                    "{} uses {percent}% of its memory limit ({used} of {limit} bytes), above {}%",
                    n.node, thresholds.memory_percent
                ),
            });
        }
    }
}

/// Nodes whose Pod is above the CPU threshold. Without any CPU figure (no metrics-server, or its
/// API did not answer) the rule cannot tell.
fn cpu_high(latest: &Sample, thresholds: &AlertThresholds, out: &mut Evaluation) {
    if latest.nodes.iter().all(|n| n.cpu_percent.is_none()) {
        out.unknown.push(names::CPU_HIGH);
        return;
    }
    let limit = u16::try_from(thresholds.cpu_percent).unwrap_or(100);
    for n in &latest.nodes {
        let Some(percent) = n.cpu_percent else {
            continue;
        };
        if percent >= limit {
            out.firing.push(Desired {
                name: names::CPU_HIGH,
                labels: node_labels(n),
                severity: Severity::Warning,
                message: format!(
                    "{} ({}) uses {percent}% of its CPU limit, above {}%",
                    n.node, n.pod, thresholds.cpu_percent
                ),
            });
        }
    }
}

/// Nodes above the connections threshold (of the most connections they can hold).
fn connections_near_limit(latest: &Sample, thresholds: &AlertThresholds, out: &mut Evaluation) {
    for n in &latest.nodes {
        let (Some(connections), Some(limit)) = (n.connections, n.connections_limit) else {
            continue;
        };
        if limit == 0 {
            continue;
        }
        let percent = connections.saturating_mul(100) / limit;
        if percent >= u64::try_from(thresholds.connections_percent).unwrap_or(100) {
            out.firing.push(Desired {
                name: names::CONNECTIONS_NEAR_LIMIT,
                labels: node_labels(n),
                severity: Severity::Warning,
                message: format!(
                    "{} holds {connections} connections, {percent}% of the {limit} it can hold, above {}%",
                    n.node, thresholds.connections_percent
                ),
            });
        }
    }
}

/// Dropped messages counted between the previous sample and the newest.
fn messages_dropped(previous: &Sample, latest: &Sample, out: &mut Evaluation) {
    let (Some(before), Some(now)) = (previous.dropped(), latest.dropped()) else {
        return;
    };
    // A counter that went down was reset (a node restarted): not a drop.
    if now > before {
        let seconds = latest.at.as_second() - previous.at.as_second();
        out.firing.push(Desired {
            name: names::MESSAGES_DROPPED,
            labels: Labels::new(),
            severity: Severity::Warning,
            message: format!(
                "{} messages were dropped on the metered topics in the last {seconds} s",
                now - before
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::lb_stats::{LbSample, ServerState};
    use crate::collector::sample::tests::{down, sample, up};
    use crate::drivers::{Alarm, TopicMetric};

    const GIB: u64 = 1 << 30;

    fn history(samples: Vec<Sample>) -> Vec<Arc<Sample>> {
        samples.into_iter().map(Arc::new).collect()
    }

    fn named<'a>(e: &'a Evaluation, name: &str) -> Vec<&'a Desired> {
        e.firing.iter().filter(|d| d.name == name).collect()
    }

    #[test]
    fn a_node_is_down_only_after_it_failed_every_recent_sample() {
        let t = AlertThresholds::default();
        // Up once, then down.
        let mut samples = vec![sample(0, vec![up(0, 1, GIB, 4 * GIB), up(1, 0, 0, 1)])];
        samples.extend(
            (1..NODE_DOWN_SAMPLES as i64)
                .map(|i| sample(i * 10, vec![up(0, 1, GIB, 4 * GIB), down(1)])),
        );
        assert!(named(&evaluate(&history(samples.clone()), &t), names::NODE_DOWN).is_empty());
        samples.push(sample(100, vec![up(0, 1, GIB, 4 * GIB), down(1)]));
        let e = evaluate(&history(samples.clone()), &t);
        let down_alerts = named(&e, names::NODE_DOWN);
        assert_eq!(down_alerts.len(), 1);
        assert_eq!(down_alerts[0].labels["node"], "emqx@bus-1");
        assert_eq!(down_alerts[0].labels["pod"], "bus-1");
        assert_eq!(down_alerts[0].severity, Severity::Critical);
        assert!(
            down_alerts[0].message.contains("no answer"),
            "{}",
            down_alerts[0].message
        );
        // One answer in the window (a restart that came back) and it does not fire.
        let i = samples.len() - 3;
        samples[i] = sample(70, vec![up(0, 1, GIB, 4 * GIB), up(1, 0, 0, 1)]);
        assert!(named(&evaluate(&history(samples), &t), names::NODE_DOWN).is_empty());
    }

    #[test]
    fn a_node_never_seen_up_gets_longer_to_start() {
        let t = AlertThresholds::default();
        let mut samples: Vec<Sample> = (0..NEW_NODE_DOWN_SAMPLES as i64 - 1)
            .map(|i| sample(i * 10, vec![down(0)]))
            .collect();
        assert!(named(&evaluate(&history(samples.clone()), &t), names::NODE_DOWN).is_empty());
        samples.push(sample(1000, vec![down(0)]));
        assert_eq!(
            named(&evaluate(&history(samples), &t), names::NODE_DOWN).len(),
            1
        );
    }

    #[test]
    fn a_node_that_answers_without_running_the_broker_is_down() {
        let mut n = up(0, 0, 0, 1);
        n.up = false;
        let samples = (0..NEW_NODE_DOWN_SAMPLES as i64)
            .map(|i| sample(i, vec![n.clone()]))
            .collect();
        let e = evaluate(&history(samples), &AlertThresholds::default());
        assert!(named(&e, names::NODE_DOWN)[0]
            .message
            .contains("does not run"));
    }

    #[test]
    fn memory_above_the_threshold_alerts_per_node() {
        let t = AlertThresholds {
            memory_percent: 75,
            ..AlertThresholds::default()
        };
        let s = history(vec![sample(
            0,
            vec![
                up(0, 0, 3 * GIB, 4 * GIB),
                up(1, 0, 2 * GIB, 4 * GIB),
                down(2),
            ],
        )]);
        let e = evaluate(&s, &t);
        let high = named(&e, names::MEMORY_HIGH);
        assert_eq!(high.len(), 1);
        assert_eq!(high[0].labels["node"], "emqx@bus-0");
        assert!(high[0].message.contains("75%"), "{}", high[0].message);
        // Only the CPU rule cannot tell: these nodes have no CPU figures.
        assert_eq!(e.unknown, [names::CPU_HIGH]);
    }

    #[test]
    fn connections_near_the_limit_alert_per_node_when_the_limit_is_known() {
        let t = AlertThresholds {
            connections_percent: 80,
            ..AlertThresholds::default()
        };
        // The test nodes can hold 1000 connections.
        let mut unknown = up(2, 990, 0, 1);
        unknown.connections_limit = None;
        let s = history(vec![sample(
            0,
            vec![up(0, 800, 0, 1), up(1, 799, 0, 1), unknown],
        )]);
        let e = evaluate(&s, &t);
        let near = named(&e, names::CONNECTIONS_NEAR_LIMIT);
        assert_eq!(near.len(), 1);
        assert_eq!(near[0].labels["node"], "emqx@bus-0");
        assert!(
            near[0].message.contains("80% of the 1000"),
            "{}",
            near[0].message
        );
    }

    fn with_drops(second: i64, dropped: Option<u64>) -> Sample {
        let mut s = sample(second, vec![]);
        s.topics = Some(vec![TopicMetric {
            topic: "t".into(),
            messages_dropped: dropped,
            ..TopicMetric::default()
        }]);
        s
    }

    #[test]
    fn rising_drops_alert_and_a_reset_counter_does_not() {
        let t = AlertThresholds::default();
        let e = evaluate(
            &history(vec![with_drops(0, Some(5)), with_drops(10, Some(9))]),
            &t,
        );
        let d = named(&e, names::MESSAGES_DROPPED);
        assert_eq!(d.len(), 1);
        assert!(d[0].message.starts_with("4 messages"), "{}", d[0].message);
        assert!(d[0].message.contains("10 s"), "{}", d[0].message);
        for pair in [
            vec![with_drops(0, Some(9)), with_drops(10, Some(9))],
            vec![with_drops(0, Some(9)), with_drops(10, Some(2))],
            vec![with_drops(0, None), with_drops(10, Some(2))],
        ] {
            assert!(named(&evaluate(&history(pair), &t), names::MESSAGES_DROPPED).is_empty());
        }
        let mut failed = with_drops(10, None);
        failed.topics = None;
        let e = evaluate(&history(vec![with_drops(0, Some(1)), failed]), &t);
        assert!(e.unknown.contains(&names::MESSAGES_DROPPED));
        assert!(!e.unknown.contains(&names::BROKER_ALARM));
    }

    #[test]
    fn only_the_collectors_known_alerts_that_are_no_longer_wanted_are_resolved() {
        let alert = |name: &str, node: &str| Alert {
            cluster: "ns/b".into(),
            name: name.into(),
            labels: if node.is_empty() {
                Labels::new()
            } else {
                Labels::from([("node".to_string(), node.to_string())])
            },
            severity: Severity::Warning,
            message: String::new(),
            since: k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        };
        let firing = vec![
            alert(names::MEMORY_HIGH, "a"),
            alert(names::MEMORY_HIGH, "b"),
            alert(names::BROKER_ALARM, "a"),
            alert("MembershipNoMajority", ""),
        ];
        let evaluation = Evaluation {
            firing: vec![Desired {
                name: names::MEMORY_HIGH,
                labels: Labels::from([("node".to_string(), "a".to_string())]),
                severity: Severity::Warning,
                message: String::new(),
            }],
            unknown: vec![names::BROKER_ALARM],
        };
        assert_eq!(
            resolutions(&firing, &evaluation),
            [(
                names::MEMORY_HIGH.to_string(),
                Labels::from([("node".to_string(), "b".to_string())])
            )]
        );
    }

    #[test]
    fn broker_alarms_are_forwarded_by_name_and_node() {
        let mut s = sample(0, vec![]);
        s.alarms = Some(vec![
            Alarm {
                node: "rabbit@bus-0".into(),
                name: "memory".into(),
                message: "memory alarm".into(),
                activated_at: None,
            },
            Alarm {
                node: "emqx@bus-1".into(),
                name: "high_system_memory_usage".into(),
                message: "92%".into(),
                activated_at: None,
            },
            Alarm {
                node: "rabbit@bus-1".into(),
                name: "disk_free".into(),
                message: "disk alarm".into(),
                activated_at: None,
            },
        ]);
        let e = evaluate(&history(vec![s.clone()]), &AlertThresholds::default());
        let alarms = named(&e, names::BROKER_ALARM);
        assert_eq!(alarms.len(), 3);
        assert_eq!(alarms[0].labels["alarm"], "memory");
        assert_eq!(alarms[0].severity, Severity::Critical);
        assert_eq!(alarms[1].labels["node"], "emqx@bus-1");
        assert_eq!(alarms[1].severity, Severity::Warning);
        assert_eq!(alarms[2].labels["alarm"], "disk_free");
        assert_eq!(alarms[2].severity, Severity::Critical);

        s.alarms = None;
        let e = evaluate(&history(vec![s]), &AlertThresholds::default());
        assert!(e.unknown.contains(&names::BROKER_ALARM));
        assert!(evaluate(&[], &AlertThresholds::default()).unknown.len() == names::ALL.len());
    }

    #[test]
    fn cpu_above_the_threshold_alerts_and_no_figures_cannot_tell() {
        let mut s = sample(0, vec![up(0, 1, 1, 10), up(1, 1, 1, 10), down(2)]);
        let e = evaluate(&history(vec![s.clone()]), &AlertThresholds::default());
        assert!(e.unknown.contains(&names::CPU_HIGH));
        s.nodes[0].cpu_percent = Some(95);
        s.nodes[1].cpu_percent = Some(40);
        let e = evaluate(&history(vec![s]), &AlertThresholds::default());
        let high = named(&e, names::CPU_HIGH);
        assert_eq!(high.len(), 1);
        assert_eq!(high[0].labels["pod"], "bus-0");
        assert!(high[0].message.contains("95%"), "{}", high[0].message);
        assert!(!e.unknown.contains(&names::CPU_HIGH));
    }

    fn server(lb_pod: &str, server: &str, status: &str) -> ServerState {
        ServerState {
            lb_pod: lb_pod.into(),
            server: server.into(),
            status: status.into(),
            check: "L4CON".into(),
            address: None,
        }
    }

    #[test]
    fn a_server_down_in_the_load_balancer_alerts_and_is_critical_when_down_everywhere() {
        let mut s = sample(0, vec![]);
        s.lb = Some(LbSample {
            servers: vec![
                server("lb-0", "bus-0", "UP"),
                server("lb-0", "bus-1", "DOWN"),
                server("lb-0", "bus-2", "MAINT"),
                server("lb-1", "bus-0", "DOWN"),
                server("lb-1", "bus-1", "DOWN"),
                server("lb-1", "bus-2", "DRAIN"),
            ],
            unreachable: vec![],
        });
        // Seen UP once, then down for less than LB_DOWN_SAMPLES samples: a restart, no alert yet.
        let mut all_up = s.clone();
        if let Some(lb) = all_up.lb.as_mut() {
            for x in &mut lb.servers {
                x.status = "UP".into();
            }
        }
        let mut samples = vec![all_up];
        samples.extend(vec![s.clone(); LB_DOWN_SAMPLES - 1]);
        let e = evaluate(&history(samples.clone()), &AlertThresholds::default());
        assert!(named(&e, names::LB_BACKEND_DOWN).is_empty());
        // bus-1 was never UP (booting): the longer grace of a new node; bus-0 is UP in lb-0.
        let e = evaluate(
            &history(vec![s.clone(); LB_DOWN_SAMPLES]),
            &AlertThresholds::default(),
        );
        let down = named(&e, names::LB_BACKEND_DOWN);
        assert_eq!(down.len(), 1, "{down:?}");
        assert_eq!(down[0].labels["server"], "bus-0");
        samples.push(s.clone());
        let e = evaluate(&history(samples), &AlertThresholds::default());
        let down = named(&e, names::LB_BACKEND_DOWN);
        assert_eq!(down.len(), 2, "{down:?}");
        let bus0 = down.iter().find(|d| d.labels["server"] == "bus-0").unwrap();
        assert_eq!(bus0.severity, Severity::Warning);
        assert!(bus0.message.contains("lb-1 (L4CON)"), "{}", bus0.message);
        let bus1 = down.iter().find(|d| d.labels["server"] == "bus-1").unwrap();
        assert_eq!(bus1.severity, Severity::Critical);

        // No replica answered: the rule cannot tell, so its alerts stay as they are.
        s.lb = Some(LbSample {
            servers: vec![],
            unreachable: vec![("lb-0".into(), "connection refused".into())],
        });
        let e = evaluate(&history(vec![s.clone()]), &AlertThresholds::default());
        assert!(e.unknown.contains(&names::LB_BACKEND_DOWN));
        // Without a load balancer there is nothing to tell.
        s.lb = None;
        let e = evaluate(&history(vec![s]), &AlertThresholds::default());
        assert!(named(&e, names::LB_BACKEND_DOWN).is_empty());
        assert!(!e.unknown.contains(&names::LB_BACKEND_DOWN));
    }
}
