//! Scale-down, one node at a time, highest ordinal first. The StatefulSet keeps the leaving
//! node's Pod until the node has left the cluster:
//!
//! 1. **Draining** (with the load balancer): the LB agents put the node's server in `drain` and
//!    clear its stick-table entries as soon as `spec.replicas` no longer covers its ordinal, so
//!    no client is sent to it any more; connected clients stay. Mooring counts them (the
//!    broker's own client list) until none is left or `spec.loadBalancer.drainSeconds` pass.
//! 2. **MovingClients**: the clients still connected are disconnected (the broker's kick); they
//!    reconnect through the load balancer and land on the nodes that stay.
//! 3. **Leaving**: the node leaves the cluster (RabbitMQ `stop_app` + `reset`, EMQX
//!    `force_leave`), so that no ghost member is left behind; then the StatefulSet is lowered by
//!    one and its Pod removed.
//!
//! Without the load balancer there is nothing to drain through: the node leaves at once and its
//! clients reconnect through the Service. A leaving Pod that is not running is not asked
//! anything (the StatefulSet is lowered; a member left behind is a ghost, removed by membership
//! repair after `spec.repair.ghostGraceSeconds`). After [`MAX_LEAVE_FAILURES`] failed leaves
//! the StatefulSet is lowered anyway, with a Warning Event.
//!
//! [`decide`] is the pure part; [`run`] reads, acts and reports.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use mooring_crds::{BrokerCluster, BrokerKind, ScaleDownStatus};
use tracing::{info, warn};

use super::{pod_reference, publish_related};
use crate::broker_config::rabbitmq;
use crate::context::Context;
use crate::drivers::{cluster as cluster_driver, ClientQuery, Driver, DriverError, NodeTarget};
use crate::membership::node_name;
use crate::resources::ChildNames;

/// How often a scale-down under way is looked at again.
pub const POLL: Duration = Duration::from_secs(5);
/// Failed leaves after which the StatefulSet is lowered anyway.
pub const MAX_LEAVE_FAILURES: i32 = 3;
/// Clients disconnected per round while moving them (each reconnects, so not all at once).
pub const MOVE_BATCH: usize = 200;
/// The most clients read from the broker per page when counting.
const PAGE: u32 = 1000;

/// Phases, as written to `status.scaleDown.phase`.
pub mod phases {
    /// No new clients; waiting for the connected ones to leave.
    pub const DRAINING: &str = "Draining";
    /// Disconnecting the clients still connected.
    pub const MOVING_CLIENTS: &str = "MovingClients";
    /// Leaving the cluster.
    pub const LEAVING: &str = "Leaving";
}

/// What [`decide`] looks at.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// `spec.replicas`.
    pub desired: i32,
    /// The StatefulSet's replicas now (`None`: no StatefulSet yet).
    pub current: Option<i32>,
    /// The leaving Pod's name (ordinal `current - 1`).
    pub pod: &'a str,
    /// Its broker node name.
    pub node: &'a str,
    /// The leaving Pod exists, is ready and is not being deleted.
    pub running: bool,
    /// `spec.loadBalancer.enabled`.
    pub load_balancer: bool,
    /// `spec.loadBalancer.drainSeconds`.
    pub drain: Duration,
    /// The recorded scale-down, if any.
    pub previous: Option<&'a ScaleDownStatus>,
    /// MQTT clients connected to the leaving node (`None`: they could not be counted).
    pub clients: Option<i64>,
    /// Now.
    pub now: Timestamp,
}

/// What to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// No scale-down: the StatefulSet gets `spec.replicas`.
    Idle,
    /// Keep the StatefulSet at its replicas, record `status`, do `act` (if any).
    Hold {
        /// What to record.
        status: ScaleDownStatus,
        /// What to do now.
        act: Option<Act>,
    },
    /// Lower the StatefulSet by one; `why` says why without a leave (for an Event).
    Lower {
        /// The new replicas.
        to: i32,
        /// Set when the node could not be made to leave.
        why: Option<String>,
    },
}

/// An action on the leaving node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Disconnect (up to [`MOVE_BATCH`] of) its clients.
    MoveClients,
    /// Make it leave the cluster; on success lower the StatefulSet at once.
    Leave,
}

/// The pure decision of one reconcile.
pub fn decide(o: &Observed<'_>) -> Decision {
    let Some(current) = o.current else {
        return Decision::Idle;
    };
    if current <= o.desired {
        return Decision::Idle;
    }
    let previous = o.previous.filter(|p| p.pod == o.pod);
    if !o.running {
        return Decision::Lower {
            to: current - 1,
            why: Some(format!(
                "{} is not running: it cannot be drained or asked to leave",
                o.pod
            )),
        };
    }
    let failures = previous.map_or(0, |p| p.leave_failures);
    if failures >= MAX_LEAVE_FAILURES {
        return Decision::Lower {
            to: current - 1,
            why: Some(format!(
                "{} failed to leave the cluster {failures} times; membership repair removes it as a ghost",
                o.node
            )),
        };
    }
    let since = previous.map_or(o.now, |p| p.since.0);
    let elapsed = o.now.duration_since(since).unsigned_abs();
    let status = |phase: &str, message: String| ScaleDownStatus {
        pod: o.pod.to_string(),
        node: o.node.to_string(),
        phase: phase.to_string(),
        since: Time(since),
        clients: o.clients,
        leave_failures: failures,
        message,
    };
    let leave = |o: &Observed<'_>| Decision::Hold {
        status: status(
            phases::LEAVING,
            format!("{} leaves the cluster, then {} is removed", o.node, o.pod),
        ),
        act: Some(Act::Leave),
    };
    let already_leaving = previous.is_some_and(|p| p.phase == phases::LEAVING);
    if !o.load_balancer || already_leaving {
        return leave(o);
    }
    let drained = elapsed >= o.drain;
    match o.clients {
        Some(0) => leave(o),
        None if drained => leave(o),
        None => Decision::Hold {
            status: status(
                phases::DRAINING,
                format!(
                    "{} takes no new clients; its clients cannot be counted now",
                    o.pod
                ),
            ),
            act: None,
        },
        Some(n) if !drained => Decision::Hold {
            status: status(
                phases::DRAINING,
                format!(
                    "{} takes no new clients; {n} still connected, moved after {}s",
                    o.pod,
                    o.drain.as_secs()
                ),
            ),
            act: None,
        },
        Some(n) => Decision::Hold {
            status: status(
                phases::MOVING_CLIENTS,
                format!(
                    "{n} clients still on {}: disconnecting them so that they reconnect to the nodes that stay",
                    o.pod
                ),
            ),
            act: Some(Act::MoveClients),
        },
    }
}

/// What the reconcile applies and records.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The StatefulSet's replicas.
    pub replicas: i32,
    /// `status.scaleDown` (`None`: nothing under way).
    pub status: Option<ScaleDownStatus>,
}

impl Outcome {
    /// Whether a scale-down is still under way (look again after [`POLL`]).
    pub fn in_progress(&self) -> bool {
        self.status.is_some()
    }
}

/// Decides and acts for one reconcile. `current` is the existing StatefulSet's replicas.
pub async fn run(ctx: &Context, bc: &BrokerCluster, current: Option<i32>) -> Outcome {
    let desired = bc.spec.replicas;
    let idle = Outcome {
        replicas: desired,
        status: None,
    };
    let Some(now_replicas) = current.filter(|c| *c > desired) else {
        return idle;
    };
    let ns = bc.namespace().unwrap_or_default();
    let names = ChildNames::new(&bc.name_any(), &ns);
    let ordinal = now_replicas - 1;
    let pod_name = format!("{}-{ordinal}", names.stateful_set);
    let node = node_name(bc.spec.broker.kind, &names.cluster, ordinal);
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let pod = match pods.get_opt(&pod_name).await {
        Ok(p) => p,
        Err(e) => {
            warn!(pod = %pod_name, error = %e, "scale-down: cannot read the leaving Pod");
            None
        }
    };
    let running = pod.as_ref().is_some_and(is_serving);
    let leaving = NodeTarget {
        pod: pod_name.clone(),
        host: pod_ip(pod.as_ref()),
        node: node.clone(),
    };
    let driver = if running {
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(bc.clone()));
        match cluster_driver::for_cluster(&ctx.client, bc, rx).await {
            Ok(d) => Some(d),
            Err(e) => {
                warn!(error = %e, "scale-down: no broker driver");
                None
            }
        }
    } else {
        None
    };
    let previous = bc.status.as_ref().and_then(|s| s.scale_down.as_ref());
    let lb = bc.spec.load_balancer.enabled;
    let clients = match (&driver, lb) {
        (Some(d), true) => clients_on(d, &leaving).await.map(|c| c.len()),
        _ => None,
    };
    let decision = decide(&Observed {
        desired,
        current,
        pod: &pod_name,
        node: &node,
        running,
        load_balancer: lb,
        drain: Duration::from_secs(u64::try_from(bc.spec.load_balancer.drain_seconds).unwrap_or(0)),
        previous,
        clients: clients.and_then(|c| i64::try_from(c).ok()),
        now: Timestamp::now(),
    });
    let related = Some(pod_reference(bc, &pod_name));
    match decision {
        Decision::Idle => idle,
        Decision::Lower { to, why } => {
            if let Some(why) = why {
                warn!(pod = %pod_name, %why, "scale-down without a leave");
                publish_related(
                    ctx,
                    bc,
                    EventType::Warning,
                    "ScaleDownWithoutLeave",
                    "ScaleDown",
                    why,
                    related,
                )
                .await;
            }
            lowered(to, desired, &pod_name)
        }
        Decision::Hold { mut status, act } => {
            if previous.is_none_or(|p| p.pod != status.pod || p.phase != status.phase) {
                info!(pod = %pod_name, phase = %status.phase, message = %status.message, "scale-down");
                publish_related(
                    ctx,
                    bc,
                    EventType::Normal,
                    "ScalingDown",
                    &status.phase,
                    status.message.clone(),
                    related.clone(),
                )
                .await;
            }
            let Some(driver) = driver else {
                return Outcome {
                    replicas: now_replicas,
                    status: Some(status),
                };
            };
            match act {
                None => {}
                Some(Act::MoveClients) => move_clients(&driver, &leaving).await,
                Some(Act::Leave) => {
                    let seed = format!("{}-0", names.stateful_set);
                    let via = NodeTarget {
                        host: pod_ip(pods.get_opt(&seed).await.ok().flatten().as_ref()),
                        pod: seed,
                        node: node_name(bc.spec.broker.kind, &names.cluster, 0),
                    };
                    let left = match prepare_remaining(&driver, bc, &names, now_replicas).await {
                        Ok(()) => driver.leave(&leaving, &via).await,
                        Err(e) => Err(e),
                    };
                    match left {
                        Ok(()) => {
                            publish_related(
                                ctx,
                                bc,
                                EventType::Normal,
                                "NodeLeft",
                                "ScaleDown",
                                format!(
                                    "{node} left the cluster; the StatefulSet goes to {}",
                                    now_replicas - 1
                                ),
                                related,
                            )
                            .await;
                            return lowered(now_replicas - 1, desired, &pod_name);
                        }
                        Err(e) => {
                            status.leave_failures += 1;
                            status.message = format!(
                                "{node} failed to leave the cluster ({} of {MAX_LEAVE_FAILURES}): {e}",
                                status.leave_failures
                            );
                            warn!(%node, error = %e, "scale-down: the node did not leave");
                            publish_related(
                                ctx,
                                bc,
                                EventType::Warning,
                                "LeaveFailed",
                                "ScaleDown",
                                status.message.clone(),
                                related,
                            )
                            .await;
                        }
                    }
                }
            }
            Outcome {
                replicas: now_replicas,
                status: Some(status),
            }
        }
    }
}

/// Before a RabbitMQ cluster shrinks from 3 nodes to 2 (or 1), the nodes that stay switch
/// from `pause_minority` to `autoheal` at runtime: the configuration says so after the
/// scale-down, but applying it takes a rolling restart, during which a 2-node cluster still on
/// `pause_minority` would pause its only running node and stall.
async fn prepare_remaining(
    driver: &Driver,
    bc: &BrokerCluster,
    names: &ChildNames,
    now_replicas: i32,
) -> Result<(), DriverError> {
    if bc.spec.broker.kind != BrokerKind::Rabbitmq {
        return Ok(());
    }
    let before = rabbitmq::partition_handling(&bc.spec, now_replicas);
    let after = rabbitmq::partition_handling(&bc.spec, now_replicas - 1);
    if before == after {
        return Ok(());
    }
    let staying: Vec<String> = (0..now_replicas - 1)
        .map(|i| node_name(bc.spec.broker.kind, &names.cluster, i))
        .collect();
    driver.set_partition_handling(&staying, &after).await
}

/// The StatefulSet lowered to `to` after `pod` went. When more nodes are to leave, a status
/// naming the removed Pod keeps the reconcile polling; the next reconcile starts the next
/// node's drain afresh (another Pod).
fn lowered(to: i32, desired: i32, pod: &str) -> Outcome {
    Outcome {
        replicas: to,
        status: (to > desired).then(|| ScaleDownStatus {
            pod: pod.to_string(),
            node: String::new(),
            phase: phases::LEAVING.to_string(),
            since: Time(Timestamp::now()),
            clients: None,
            leave_failures: 0,
            message: format!("{pod} removed; the next node leaves next"),
        }),
    }
}

fn pod_ip(pod: Option<&Pod>) -> String {
    pod.and_then(|p| p.status.as_ref())
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

/// The client ids connected to `node`, read through the node itself.
async fn clients_on(driver: &Driver, node: &NodeTarget) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut page = 1;
    loop {
        let query = ClientQuery {
            page,
            limit: PAGE,
            ..ClientQuery::default()
        };
        let got = match driver.clients(node, &query).await {
            Ok(p) => p,
            Err(e) => {
                warn!(node = %node.node, error = %e, "scale-down: cannot count the node's clients");
                return None;
            }
        };
        let more = got.has_next;
        out.extend(
            got.clients
                .into_iter()
                .filter(|c| c.connected && c.node == node.node)
                .map(|c| c.client_id),
        );
        if !more || page >= 100 {
            return Some(out);
        }
        page += 1;
    }
}

/// Disconnects up to [`MOVE_BATCH`] of the node's clients.
async fn move_clients(driver: &Driver, node: &NodeTarget) {
    let Some(ids) = clients_on(driver, node).await else {
        return;
    };
    let mut moved = 0;
    for id in ids.iter().take(MOVE_BATCH) {
        match driver.kick(node, id).await {
            Ok(true) => moved += 1,
            Ok(false) => {}
            Err(e) => warn!(client_id = %id, error = %e, "scale-down: cannot disconnect a client"),
        }
    }
    info!(node = %node.node, moved, left = ids.len().saturating_sub(moved), "scale-down: disconnected clients so that they move");
}

/// Ready and not being deleted.
fn is_serving(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn observed<'a>(
        previous: Option<&'a ScaleDownStatus>,
        clients: Option<i64>,
        now: i64,
    ) -> Observed<'a> {
        Observed {
            desired: 2,
            current: Some(3),
            pod: "bus-2",
            node: "rabbit@bus-2",
            running: true,
            load_balancer: true,
            drain: Duration::from_secs(30),
            previous,
            clients,
            now: at(now),
        }
    }

    fn held(d: &Decision) -> (&str, Option<Act>, Timestamp) {
        match d {
            Decision::Hold { status, act } => (status.phase.as_str(), *act, status.since.0),
            other => panic!("expected a hold, got {other:?}"),
        }
    }

    #[test]
    fn nothing_to_do_without_a_scale_down() {
        let mut o = observed(None, Some(3), 0);
        o.current = Some(2);
        assert_eq!(decide(&o), Decision::Idle);
        o.current = Some(1);
        assert_eq!(
            decide(&o),
            Decision::Idle,
            "a scale-up is the StatefulSet's business"
        );
        o.current = None;
        assert_eq!(decide(&o), Decision::Idle);
    }

    #[test]
    fn drains_then_moves_clients_then_leaves() {
        let first = decide(&observed(None, Some(3), 0));
        assert_eq!(held(&first), (phases::DRAINING, None, at(0)));
        let Decision::Hold { status, .. } = first else {
            unreachable!()
        };

        let waiting = decide(&observed(Some(&status), Some(2), 29));
        assert_eq!(
            held(&waiting),
            (phases::DRAINING, None, at(0)),
            "the drain start is kept"
        );

        let moving = decide(&observed(Some(&status), Some(2), 30));
        assert_eq!(
            held(&moving),
            (phases::MOVING_CLIENTS, Some(Act::MoveClients), at(0))
        );

        let leaving = decide(&observed(Some(&status), Some(0), 35));
        assert_eq!(held(&leaving), (phases::LEAVING, Some(Act::Leave), at(0)));
    }

    #[test]
    fn no_clients_leaves_at_once_and_uncounted_clients_wait_for_the_drain() {
        assert_eq!(
            held(&decide(&observed(None, Some(0), 0))).1,
            Some(Act::Leave)
        );
        assert_eq!(held(&decide(&observed(None, None, 0))).0, phases::DRAINING);
        let Decision::Hold { status, .. } = decide(&observed(None, None, 0)) else {
            unreachable!()
        };
        assert_eq!(
            held(&decide(&observed(Some(&status), None, 31))).1,
            Some(Act::Leave)
        );
    }

    #[test]
    fn without_a_load_balancer_the_node_leaves_at_once() {
        let mut o = observed(None, Some(5), 0);
        o.load_balancer = false;
        assert_eq!(held(&decide(&o)).1, Some(Act::Leave));
    }

    #[test]
    fn once_leaving_it_keeps_leaving_and_gives_up_after_the_failures() {
        let Decision::Hold { mut status, .. } = decide(&observed(None, Some(0), 0)) else {
            unreachable!()
        };
        status.leave_failures = 1;
        assert_eq!(
            held(&decide(&observed(Some(&status), Some(4), 5))).1,
            Some(Act::Leave),
            "clients that came back do not restart the drain"
        );
        status.leave_failures = MAX_LEAVE_FAILURES;
        assert!(matches!(
            decide(&observed(Some(&status), Some(0), 9)),
            Decision::Lower {
                to: 2,
                why: Some(_)
            }
        ));
    }

    #[test]
    fn a_node_that_is_not_running_is_not_asked() {
        let mut o = observed(None, Some(0), 0);
        o.running = false;
        assert!(matches!(
            decide(&o),
            Decision::Lower {
                to: 2,
                why: Some(_)
            }
        ));
    }

    #[test]
    fn a_record_of_another_pod_starts_afresh() {
        let Decision::Hold { status, .. } = decide(&observed(None, Some(1), 0)) else {
            unreachable!()
        };
        let mut o = observed(Some(&status), Some(1), 100);
        o.current = Some(4);
        o.pod = "bus-3";
        let d = decide(&o);
        let (phase, _, since) = held(&d);
        assert_eq!((phase, since), (phases::DRAINING, at(100)));
    }
}
