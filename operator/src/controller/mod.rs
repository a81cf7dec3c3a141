//! The BrokerCluster controller: watches BrokerClusters and the children they own, and reconciles
//! each through dereference -> render -> build -> apply -> status.

use std::future::Future;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{self as runtime_controller, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
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

/// Where the controller watches (some namespaces or all) and how many reconciles run at once.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The namespaces watched; empty for every namespace.
    pub namespaces: Vec<String>,
    /// Most reconciles in flight at once.
    pub concurrency: u16,
    /// The images of the sticky load balancers.
    pub lb_images: LbImages,
}

impl Default for Scope {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            concurrency: DEFAULT_CONCURRENCY,
            lb_images: LbImages::default(),
        }
    }
}

impl Scope {
    /// One watch per namespace, or `[None]`: one watch of every namespace.
    pub fn watches(&self) -> Vec<Option<String>> {
        watches(&self.namespaces)
    }
}

/// One watch per namespace of `namespaces` (sorted, without repeats), or `[None]` for every
/// namespace when it is empty.
pub fn watches(namespaces: &[String]) -> Vec<Option<String>> {
    if namespaces.is_empty() {
        return vec![None];
    }
    let mut all: Vec<String> = namespaces.to_vec();
    all.sort();
    all.dedup();
    all.into_iter().map(Some).collect()
}

/// The API of `K` in `namespace`, or in every namespace for `None`.
pub fn scoped_api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    scope: Scope,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let watches = scope.watches();
    let stores = Stores::start(&client, &watches, &ctx.membership.shutdown).await;
    ctx.membership.set_stores(stores);
    // Membership monitors ask for a reconcile when their report changes (status is written there);
    // each request goes to the controller that watches the cluster's namespace.
    let mut senders = Vec::new();
    let mut triggers = Vec::new();
    for _ in &watches {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<ObjectRef<BrokerCluster>>();
        senders.push(tx);
        triggers.push(rx);
    }
    if let Some(mut rx) = ctx.membership.take_triggers() {
        let watches = watches.clone();
        tokio::spawn(async move {
            while let Some(obj) = rx.recv().await {
                let i = watches
                    .iter()
                    .position(|w| w.is_none() || w.as_deref() == obj.namespace.as_deref());
                if let Some(tx) = i.and_then(|i| senders.get(i)) {
                    let _ = tx.send(obj);
                }
            }
        });
    }
    let membership_stop = ctx.membership.shutdown.clone();
    let shutdown = shutdown.shared();
    let controllers = watches.iter().zip(triggers).map(|(ns, rx)| {
        let triggers =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        let ns = ns.as_deref();
        let owned = watcher::Config::default().labels(OWNED_SELECTOR);
        Controller::new(
            scoped_api::<BrokerCluster>(&client, ns),
            watcher::Config::default(),
        )
        .reconcile_on(triggers)
        .with_config(runtime_controller::Config::default().concurrency(scope.concurrency))
        .owns(scoped_api::<StatefulSet>(&client, ns), owned.clone())
        .owns(scoped_api::<ConfigMap>(&client, ns), owned.clone())
        .owns(scoped_api::<Secret>(&client, ns), owned.clone())
        .owns(scoped_api::<Service>(&client, ns), owned.clone())
        .owns(scoped_api::<PodDisruptionBudget>(&client, ns), owned)
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(cluster = %obj, "reconciled"),
                // Already logged (with the cluster) by `error_policy`.
                Err(runtime_controller::Error::ReconcilerFailed(..)) => {}
                Err(e) => warn!(error = %e, "controller error"),
            }
        })
    });
    futures::future::join_all(controllers).await;
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
