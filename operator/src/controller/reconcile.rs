//! One reconcile of one BrokerCluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use mooring_crds::{BrokerCluster, SecretRef, PAUSED_ANNOTATION};
use tracing::{info, instrument};

use super::scale_down;
use super::status::{self, rollout_of};
use super::{object_key, publish};
use crate::apply::{apply, delete_orphaning, delete_unwanted, get_opt};
use crate::broker_config::{self, BrokerLayout, RenderInput};
use crate::conditions::{self, Computed, Outcome};
use crate::context::Context;
use crate::credentials;
use crate::membership;
use crate::resources::load_balancer::{self, LbChildren, LbNames, COMPONENT_LOAD_BALANCER};
use crate::resources::{self, children_selector, ChildNames, Children, COMPONENT_BROKER};
use crate::{Error, Result};

/// How often a settled cluster is looked at again without any event.
const RESYNC: Duration = Duration::from_secs(300);
/// How often a cluster that is still rolling out is looked at without any event. StatefulSet
/// status changes already trigger a reconcile through the owned-object watch; this is a safety net.
const PROGRESS_POLL: Duration = Duration::from_secs(60);

/// Whether the pause annotation is set to `"true"`.
pub fn is_paused(bc: &BrokerCluster) -> bool {
    bc.annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Why converging stopped short.
enum Stop {
    /// The spec cannot be rendered: nothing is written until it changes.
    Invalid(String),
    /// A failure worth retrying.
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

/// What was applied.
struct Applied {
    stateful_set: StatefulSet,
    layout: BrokerLayout,
    scale_down: scale_down::Outcome,
}

/// Reconciles one BrokerCluster.
#[instrument(skip(bc, ctx), fields(cluster = %object_key(&bc)))]
pub async fn reconcile(bc: Arc<BrokerCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.state.metrics.start_reconcile();
    let key = object_key(&bc);
    let names = ChildNames::of(&bc)?;

    if is_paused(&bc) {
        membership::spawn(&ctx, &bc);
        status::write(&ctx, &bc, vec![conditions::paused()], None, None, None).await?;
        ctx.reset_backoff(&key);
        return Ok(Action::requeue(RESYNC));
    }

    match converge(&bc, &ctx, &names).await {
        Ok(applied) => {
            membership::spawn(&ctx, &bc);
            let rollout = rollout_of(&applied.stateful_set, bc.spec.replicas);
            let mut computed = conditions::compute(&rollout, &Outcome::Applied);
            let scaling = applied.scale_down.status.clone();
            if let Some(s) = &scaling {
                conditions::replace(
                    &mut computed,
                    Computed::new(
                        conditions::types::PROGRESSING,
                        conditions::Status::True,
                        "ScalingDown",
                        s.message.clone(),
                    ),
                );
            }
            let endpoints =
                status::endpoints(&names, &applied.layout, bc.spec.load_balancer.enabled);
            status::write(
                &ctx,
                &bc,
                computed,
                Some(&rollout),
                Some(endpoints),
                Some(scaling),
            )
            .await?;
            ctx.reset_backoff(&key);
            Ok(Action::requeue(if applied.scale_down.in_progress() {
                scale_down::POLL
            } else if rollout.in_progress() {
                PROGRESS_POLL
            } else {
                RESYNC
            }))
        }
        Err(Stop::Invalid(message)) => {
            ctx.state.metrics.failed("InvalidSpec");
            let computed = conditions::compute(
                &status::last_rollout(&bc),
                &Outcome::InvalidSpec(message.clone()),
            );
            publish(
                &ctx,
                &bc,
                EventType::Warning,
                "InvalidSpec",
                "Render",
                message,
            )
            .await;
            status::write(&ctx, &bc, computed, None, None, None).await?;
            Ok(Action::await_change())
        }
        Err(Stop::Failed(error)) => {
            ctx.state.metrics.failed(error.reason());
            let message = error.to_string();
            let computed = conditions::compute(
                &status::last_rollout(&bc),
                &Outcome::Failed(error.reason().to_string(), message.clone()),
            );
            publish(
                &ctx,
                &bc,
                EventType::Warning,
                error.reason(),
                "Reconcile",
                message,
            )
            .await;
            // Best effort: the reconcile error below is what drives the retry.
            if let Err(e) = status::write(&ctx, &bc, computed, None, None, None).await {
                tracing::warn!(error = %e, "cannot record the failure in status");
            }
            Err(error)
        }
    }
}

/// Reads what the spec refers to, renders, builds and applies every child.
async fn converge(bc: &BrokerCluster, ctx: &Context, names: &ChildNames) -> Result<Applied, Stop> {
    let client = &ctx.client;
    let ns = names.cluster.namespace.as_str();

    // dereference
    let existing_secret: Option<Secret> = get_opt(client, ns, &names.secret).await?;
    let creds = credentials::resolve(existing_secret.as_ref());
    let users = match &bc.spec.auth.users {
        Some(r) => secret_strings(&read_secret(ctx, ns, r, "auth.users").await?),
        None => BTreeMap::new(),
    };
    for (field, r) in referenced_secrets(bc) {
        let s = read_secret(ctx, ns, r, field).await?;
        if let Some(k) = &r.key {
            if !s.data.as_ref().is_some_and(|d| d.contains_key(k)) {
                return Err(Error::MissingSecret(format!(
                    "{field}: Secret {ns}/{} has no key {k}",
                    r.name
                ))
                .into());
            }
        }
    }

    // render + build (pure)
    let layout = broker_config::render(&RenderInput {
        spec: &bc.spec,
        names: &names.cluster,
        credentials: &creds.credentials,
        users: &users,
        secret_name: &names.secret,
    })
    .map_err(|e| Stop::Invalid(e.to_string()))?;
    let Children {
        config_map,
        secret,
        headless_service,
        client_service,
        mut stateful_set,
        pdb,
    } = resources::build(bc, &layout, &creds.data).map_err(Error::from)?;

    // apply
    apply(client, ns, &secret).await?;
    if creds.generated {
        info!("generated cluster credentials");
    }
    apply(client, ns, &config_map).await?;
    apply(client, ns, &headless_service).await?;
    apply(client, ns, &client_service).await?;
    let existing_sts: Option<StatefulSet> = get_opt(client, ns, &names.stateful_set).await?;
    let current_replicas = existing_sts
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas);
    let current_template = existing_sts
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .map(|s| s.template.clone());
    if let Some(existing) = existing_sts {
        if resources::claim_templates_changed(&existing, &stateful_set) {
            replace_stateful_set(ctx, bc, names).await?;
        }
    }
    // A node leaves the cluster before its Pod goes: the StatefulSet is lowered one node at a
    // time, when the scale-down says so.
    let scale_down = scale_down::run(ctx, bc, current_replicas).await;
    if let Some(spec) = stateful_set.spec.as_mut() {
        spec.replicas = Some(scale_down.replicas);
        // While a node drains and leaves, the Pods keep their template: a changed configuration
        // (the node list, partition handling) would otherwise start a rolling restart that
        // deletes the draining Pod first. It rolls once the scale-down is done.
        if let (true, Some(template)) = (scale_down.in_progress(), current_template) {
            spec.template = template;
        }
    }
    let applied_sts = apply(client, ns, &stateful_set).await?;
    let keep_pdb: Vec<String> = pdb.iter().map(|p| p.name_any()).collect();
    if let Some(pdb) = &pdb {
        apply(client, ns, pdb).await?;
    }
    let removed = delete_unwanted::<PodDisruptionBudget>(
        client,
        ns,
        &format!(
            "{},app.kubernetes.io/component={COMPONENT_BROKER}",
            children_selector(&names.cluster.name)
        ),
        &keep_pdb,
    )
    .await?;
    for name in removed {
        info!(pdb = %name, "removed a PodDisruptionBudget the spec no longer wants");
    }
    converge_load_balancer(bc, ctx, names, &layout).await?;
    Ok(Applied {
        stateful_set: applied_sts,
        layout,
        scale_down,
    })
}

/// Applies the sticky load balancer's objects when `spec.loadBalancer.enabled`; deletes them
/// when it is not (or the ones a smaller spec no longer wants, such as the PDB of one replica).
async fn converge_load_balancer(
    bc: &BrokerCluster,
    ctx: &Context,
    names: &ChildNames,
    layout: &BrokerLayout,
) -> Result<()> {
    let client = &ctx.client;
    let ns = names.cluster.namespace.as_str();
    let (mut keep, mut keep_pdb) = (Vec::new(), Vec::new());
    if let Some(LbChildren {
        service_account,
        role,
        role_binding,
        headless_service,
        service,
        stateful_set,
        pdb,
    }) = load_balancer::build(bc, layout, &ctx.lb_images)?
    {
        apply(client, ns, &service_account).await?;
        apply(client, ns, &role).await?;
        apply(client, ns, &role_binding).await?;
        apply(client, ns, &headless_service).await?;
        apply(client, ns, &service).await?;
        apply(client, ns, &stateful_set).await?;
        if let Some(pdb) = &pdb {
            apply(client, ns, pdb).await?;
            keep_pdb.push(pdb.name_any());
        }
        keep.push(stateful_set.name_any());
    }
    let selector = format!(
        "{},app.kubernetes.io/component={COMPONENT_LOAD_BALANCER}",
        children_selector(&names.cluster.name)
    );
    let lb = LbNames::of(&names.cluster.name);
    let services = if keep.is_empty() {
        Vec::new()
    } else {
        vec![lb.name.clone(), lb.headless.clone()]
    };
    let mut removed =
        delete_unwanted::<PodDisruptionBudget>(client, ns, &selector, &keep_pdb).await?;
    removed.extend(delete_unwanted::<StatefulSet>(client, ns, &selector, &keep).await?);
    removed.extend(delete_unwanted::<Service>(client, ns, &selector, &services).await?);
    removed.extend(delete_unwanted::<RoleBinding>(client, ns, &selector, &keep).await?);
    removed.extend(delete_unwanted::<Role>(client, ns, &selector, &keep).await?);
    removed.extend(delete_unwanted::<ServiceAccount>(client, ns, &selector, &keep).await?);
    for name in removed {
        info!(object = %name, "removed a load balancer object the spec no longer wants");
    }
    Ok(())
}

/// Deletes the StatefulSet, leaving its Pods (and claims) in place, and waits until it is gone so
/// that it can be created with new claim templates.
async fn replace_stateful_set(ctx: &Context, bc: &BrokerCluster, names: &ChildNames) -> Result<()> {
    let ns = names.cluster.namespace.as_str();
    delete_orphaning::<StatefulSet>(&ctx.client, ns, &names.stateful_set).await?;
    for _ in 0..50 {
        if get_opt::<StatefulSet>(&ctx.client, ns, &names.stateful_set)
            .await?
            .is_none()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publish(
        ctx,
        bc,
        EventType::Normal,
        "StatefulSetReplaced",
        "Apply",
        "persistence settings changed: the StatefulSet was recreated; running Pods were kept"
            .into(),
    )
    .await;
    Ok(())
}

/// The Secrets the spec refers to besides the users Secret, with the field naming each.
fn referenced_secrets(bc: &BrokerCluster) -> Vec<(&'static str, &SecretRef)> {
    let l = &bc.spec.listeners;
    let mut out = Vec::new();
    if let Some(t) = &l.tls {
        out.push(("listeners.tls.secretRef", &t.secret_ref));
    }
    if let Some(t) = &l.wss {
        out.push(("listeners.wss.secretRef", &t.secret_ref));
    }
    if let Some(j) = &bc.spec.auth.jwt {
        out.push(("auth.jwt.secretRef", &j.secret_ref));
    }
    out
}

async fn read_secret(ctx: &Context, ns: &str, r: &SecretRef, field: &str) -> Result<Secret> {
    get_opt::<Secret>(&ctx.client, ns, &r.name)
        .await?
        .ok_or_else(|| {
            Error::MissingSecret(format!("{field}: Secret {ns}/{} does not exist", r.name))
        })
}

/// A Secret's values as UTF-8 strings (values that are not UTF-8 are skipped).
fn secret_strings(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .iter()
        .flatten()
        .filter_map(|(k, v)| String::from_utf8(v.0.clone()).ok().map(|v| (k.clone(), v)))
        .collect()
}
