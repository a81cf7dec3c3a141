//! The BrokerCluster controller: watches BrokerClusters and the children they own, and reconciles
//! each through dereference -> render -> build -> apply -> status.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{self as runtime_controller, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use mooring_crds::BrokerCluster;
use tracing::{info, warn};

use crate::context::Context;
use crate::membership::Stores;
use crate::resources::load_balancer::LbImages;
use crate::Error;

mod reconcile;
pub mod scale_down;
mod status;

pub use reconcile::{is_paused, reconcile};

/// A reference to the Pod `name` in the cluster's namespace, for [`publish_related`].
pub(crate) fn pod_reference(bc: &BrokerCluster, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.to_string()),
        namespace: bc.namespace(),
        ..ObjectReference::default()
    }
}

/// Label selector of the children the controller watches.
const OWNED_SELECTOR: &str = "app.kubernetes.io/managed-by=mooring";

/// Reconciles run at once by default. Unbounded, a burst of new clusters opens one API connection
/// per reconcile (hundreds), which costs memory and overloads the API server (see the benchmark).
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// Where the controller watches (one namespace or all) and how many reconciles run at once.
#[derive(Clone, Debug)]
pub struct Scope {
    /// `None` for every namespace.
    pub namespace: Option<String>,
    /// Most reconciles in flight at once.
    pub concurrency: u16,
    /// The images of the sticky load balancers.
    pub lb_images: LbImages,
}

impl Default for Scope {
    fn default() -> Self {
        Self {
            namespace: None,
            concurrency: DEFAULT_CONCURRENCY,
            lb_images: LbImages::default(),
        }
    }
}

impl Scope {
    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    scope: Scope,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let clusters: Api<BrokerCluster> = scope.api(&client);
    let owned = watcher::Config::default().labels(OWNED_SELECTOR);
    let stores = Stores::start(
        &client,
        scope.namespace.as_deref(),
        &ctx.membership.shutdown,
    )
    .await;
    ctx.membership.set_stores(stores);
    // Membership monitors ask for a reconcile when their report changes (status is written there).
    let triggers = ctx.membership.take_triggers().map(|rx| {
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) })
    });
    let membership_stop = ctx.membership.shutdown.clone();
    Controller::new(clusters, watcher::Config::default())
        .reconcile_on(futures::stream::iter(triggers).flatten())
        .with_config(runtime_controller::Config::default().concurrency(scope.concurrency))
        .owns(scope.api::<StatefulSet>(&client), owned.clone())
        .owns(scope.api::<ConfigMap>(&client), owned.clone())
        .owns(scope.api::<Secret>(&client), owned.clone())
        .owns(scope.api::<Service>(&client), owned.clone())
        .owns(scope.api::<PodDisruptionBudget>(&client), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(cluster = %obj, "reconciled"),
                // Already logged (with the cluster) by `error_policy`.
                Err(runtime_controller::Error::ReconcilerFailed(..)) => {}
                Err(e) => warn!(error = %e, "controller error"),
            }
        })
        .await;
    membership_stop.cancel();
    info!("controller stopped");
}

/// On failure: count it, emit a Warning Event, and retry with exponential backoff.
fn error_policy(bc: Arc<BrokerCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = object_key(&bc);
    let delay = ctx.next_backoff(&key);
    warn!(cluster = %key, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// `namespace/name` of a cluster.
pub fn object_key(bc: &BrokerCluster) -> String {
    format!("{}/{}", bc.namespace().unwrap_or_default(), bc.name_any())
}

/// Publishes an Event on the cluster; a failure to publish is logged, never fatal.
pub(crate) async fn publish(
    ctx: &Context,
    bc: &BrokerCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_related(ctx, bc, type_, reason, action, note, None).await;
}

/// [`publish`] with a related object (`related` of the Event), for example the broker Pod a
/// repair is about. kube's recorder folds Events with the same type, reason, action and related
/// object within minutes into one series that keeps the FIRST note: Events about different
/// Pods or different actions must differ in one of those.
pub(crate) async fn publish_related(
    ctx: &Context,
    bc: &BrokerCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    let ev = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: related,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &bc.object_ref(&())).await {
        warn!(cluster = %object_key(bc), error = %e, "cannot publish event");
    }
}
