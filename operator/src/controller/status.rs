//! Writes `BrokerCluster.status` (server-side apply on the status subresource) and emits Events when
//! a condition that people watch changes.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use mooring_crds::{BrokerCluster, BrokerClusterStatus, Condition, Endpoint, ScaleDownStatus};

use super::publish;
use crate::broker_config::{port_names, BrokerLayout};
use crate::conditions::{self, types, Computed, Rollout};
use crate::context::Context;
use crate::membership;
use crate::resources::load_balancer::{listener_ports, LbNames};
use crate::resources::{ChildNames, FIELD_MANAGER};
use crate::{Error, Result};

/// The rollout figures of an applied StatefulSet.
pub fn rollout_of(sts: &StatefulSet, desired: i32) -> Rollout {
    let generation = sts.metadata.generation;
    let s = sts.status.clone().unwrap_or_default();
    Rollout {
        desired,
        replicas: s.replicas,
        ready: s.ready_replicas.unwrap_or(0),
        updated: s.updated_replicas.unwrap_or(0),
        observed: s.observed_generation.is_some() && s.observed_generation == generation,
        revision_current: s.current_revision.is_some() && s.current_revision == s.update_revision,
    }
}

/// The rollout as the last status recorded it (used when nothing could be read this time).
pub fn last_rollout(bc: &BrokerCluster) -> Rollout {
    let s = bc.status.clone().unwrap_or_default();
    Rollout {
        desired: bc.spec.replicas,
        replicas: s.replicas,
        ready: s.ready_replicas,
        updated: s.replicas,
        observed: true,
        revision_current: true,
    }
}

/// Client endpoints: the client Service's DNS name with each published port, and with the load
/// balancer on, its Service with each listener (`loadBalancer` for MQTT, `loadBalancer-<name>`
/// for the others).
pub fn endpoints(names: &ChildNames, layout: &BrokerLayout, load_balancer: bool) -> Vec<Endpoint> {
    let host = |service: &str| {
        format!(
            "{service}.{}.svc.{}",
            names.cluster.namespace, names.cluster.cluster_domain
        )
    };
    let direct = host(&names.client_service);
    let mut out: Vec<Endpoint> = layout
        .client_ports
        .iter()
        .map(|p| Endpoint {
            name: p
                .name
                .clone()
                .unwrap_or_else(|| p.container_port.to_string()),
            address: format!("{direct}:{}", p.container_port),
        })
        .collect();
    if load_balancer {
        let lb = host(&LbNames::of(&names.cluster.name).name);
        for p in listener_ports(layout) {
            let name = match p.name.as_deref() {
                Some(port_names::MQTT) => "loadBalancer".to_string(),
                Some(other) => format!("loadBalancer-{other}"),
                None => continue,
            };
            out.push(Endpoint {
                name,
                address: format!("{lb}:{}", p.container_port),
            });
        }
    }
    out
}

/// Merges `computed` into the cluster's status and writes it if anything changed. `rollout`,
/// `endpoints` and `scale_down` replace the recorded values when given (`Some(None)` clears the
/// scale-down). `observedGeneration` moves only when the cluster was reconciled (not while
/// paused).
pub async fn write(
    ctx: &Context,
    bc: &BrokerCluster,
    mut computed: Vec<Computed>,
    rollout: Option<&Rollout>,
    endpoints: Option<Vec<Endpoint>>,
    scale_down: Option<Option<ScaleDownStatus>>,
) -> Result<()> {
    let previous = bc.status.clone().unwrap_or_default();
    let paused = computed
        .iter()
        .any(|c| c.type_ == types::PAUSED && c.status == conditions::Status::True);
    let report = ctx.membership.report(&super::object_key(bc));
    match &report {
        Some(r) if !paused => membership::apply_to_conditions(&mut computed, r),
        Some(r) => computed.push(r.condition()),
        None if conditions::find(&previous.conditions, types::MEMBERSHIP_CONSISTENT).is_none() => {
            computed.push(conditions::membership_unchecked());
        }
        None => {}
    }
    let generation = bc.metadata.generation;
    let now = Time(Timestamp::now());
    let mut next = previous.clone();
    next.conditions = conditions::merge(&previous.conditions, &computed, generation, &now);
    if !paused {
        next.observed_generation = generation;
    }
    if let Some(r) = rollout {
        next.replicas = r.replicas;
        next.ready_replicas = r.ready;
    }
    if let Some(e) = endpoints {
        next.endpoints = e;
    }
    if let Some(s) = scale_down {
        next.scale_down = s;
    }
    if let Some(r) = &report {
        next.members = r.members();
    }
    if same_ignoring_times(&previous, &next) {
        return Ok(());
    }
    announce_transitions(ctx, bc, &previous.conditions, &next.conditions).await;

    let api: Api<BrokerCluster> =
        Api::namespaced(ctx.client.clone(), &bc.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": "mooring.dev/v1alpha1",
        "kind": "BrokerCluster",
        "status": next,
    });
    api.patch_status(
        &bc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::Status)?;
    Ok(())
}

/// Equal apart from condition transition times (which `merge` keeps for unchanged statuses anyway).
fn same_ignoring_times(a: &BrokerClusterStatus, b: &BrokerClusterStatus) -> bool {
    let strip = |s: &BrokerClusterStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}

/// Events for the transitions people act on: Ready, Degraded and Paused.
async fn announce_transitions(
    ctx: &Context,
    bc: &BrokerCluster,
    before: &[Condition],
    after: &[Condition],
) {
    for c in after {
        let was = conditions::find(before, &c.type_).map(|p| p.status.as_str());
        if was == Some(c.status.as_str()) {
            continue;
        }
        let (type_, reason) = match (c.type_.as_str(), c.status.as_str()) {
            (types::READY, "True") => (EventType::Normal, "Ready"),
            (types::READY, "False") if was.is_some() => (EventType::Warning, "NotReady"),
            (types::DEGRADED, "True") => (EventType::Warning, "Degraded"),
            (types::DEGRADED, "False") if was == Some("True") => (EventType::Normal, "Recovered"),
            (types::PAUSED, "True") => (EventType::Normal, "Paused"),
            (types::PAUSED, "False") if was == Some("True") => (EventType::Normal, "Resumed"),
            _ => continue,
        };
        publish(
            ctx,
            bc,
            type_,
            reason,
            "StatusChange",
            format!("{}: {}", c.reason, c.message),
        )
        .await;
    }
}
