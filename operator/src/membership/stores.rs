//! Caches of the broker Pods and StatefulSets, kept by watches, so that checking every cluster
//! every few seconds costs no API requests.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use mooring_crds::BrokerCluster;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::controller::scoped_api;
use crate::resources::load_balancer::COMPONENT_LOAD_BALANCER;
use crate::resources::{ChildNames, COMPONENT_BROKER, MANAGED_BY};

/// The Pod and StatefulSet caches: one pair per watched namespace (or one for all).
#[derive(Clone)]
pub struct Stores {
    caches: Vec<Caches>,
}

/// The caches of one watch.
#[derive(Clone)]
struct Caches {
    /// The namespace watched, `None` for all.
    namespace: Option<String>,
    pods: Store<Pod>,
    stateful_sets: Store<StatefulSet>,
}

impl Stores {
    /// Starts the watches (one per entry of `watches`: a namespace, or `None` for every
    /// namespace) until `stop`; returns once every cache has its first full list.
    pub async fn start(
        client: &Client,
        watches: &[Option<String>],
        stop: &CancellationToken,
    ) -> Self {
        let caches = futures::future::join_all(
            watches
                .iter()
                .map(|ns| Caches::start(client, ns.as_deref(), stop)),
        )
        .await;
        Self { caches }
    }

    fn caches_of(&self, ns: &str) -> Option<&Caches> {
        self.caches
            .iter()
            .find(|c| c.namespace.is_none() || c.namespace.as_deref() == Some(ns))
    }

    /// The broker Pods of `bc` (by name) and its StatefulSet, as cached (nothing when no watch
    /// covers its namespace).
    pub fn of(&self, bc: &BrokerCluster) -> (Vec<Arc<Pod>>, Option<Arc<StatefulSet>>) {
        let ns = bc.namespace().unwrap_or_default();
        let Some(caches) = self.caches_of(&ns) else {
            return (Vec::new(), None);
        };
        let sts_name = ChildNames::new(&bc.name_any(), &ns).stateful_set;
        let sts = caches
            .stateful_sets
            .get(&ObjectRef::new(&sts_name).within(&ns));
        (caches.pods_of(bc, COMPONENT_BROKER), sts)
    }

    /// The load balancer's (HAProxy) Pods of `bc`, by name, as cached.
    pub fn lb_pods_of(&self, bc: &BrokerCluster) -> Vec<Arc<Pod>> {
        let ns = bc.namespace().unwrap_or_default();
        self.caches_of(&ns)
            .map(|c| c.pods_of(bc, COMPONENT_LOAD_BALANCER))
            .unwrap_or_default()
    }
}

impl Caches {
    /// The cached Pods of `bc` with `component`, by name.
    fn pods_of(&self, bc: &BrokerCluster, component: &str) -> Vec<Arc<Pod>> {
        let ns = bc.namespace().unwrap_or_default();
        let name = bc.name_any();
        let mut pods: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(ns.as_str())
                    && p.labels().get("app.kubernetes.io/instance") == Some(&name)
                    && p.labels()
                        .get("app.kubernetes.io/component")
                        .map(String::as_str)
                        == Some(component)
            })
            .collect();
        pods.sort_by_key(|p| p.name_any());
        pods
    }

    /// Starts the watches of one namespace (or all).
    async fn start(client: &Client, namespace: Option<&str>, stop: &CancellationToken) -> Self {
        let pods_api: Api<Pod> = scoped_api(client, namespace);
        let sts_api: Api<StatefulSet> = scoped_api(client, namespace);
        // Broker Pods for the monitors and the collector, load balancer Pods for the collector.
        let pod_labels = format!(
            "app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/component in ({COMPONENT_BROKER},{COMPONENT_LOAD_BALANCER})"
        );
        let sts_labels = format!("app.kubernetes.io/managed-by={MANAGED_BY}");
        let (pods, pods_writer) = reflector::store();
        let (stateful_sets, sts_writer) = reflector::store();
        // The caches keep only what the monitors read (labels, deletion, status; the
        // StatefulSet's replicas and status): full objects with their managed fields and Pod
        // templates cost tens of KiB each, times every cluster.
        let pod_stream = reflector::reflector(
            pods_writer,
            watcher(pods_api, watcher::Config::default().labels(&pod_labels)).modify(slim_pod),
        )
        .default_backoff()
        .for_each(|event| {
            if let Err(e) = event {
                warn!(error = %e, "membership cache watch failed (retrying); check the operator's RBAC for pods and statefulsets");
            }
            futures::future::ready(())
        });
        let sts_stream = reflector::reflector(
            sts_writer,
            watcher(sts_api, watcher::Config::default().labels(&sts_labels))
                .modify(slim_stateful_set),
        )
        .default_backoff()
        .for_each(|event| {
            if let Err(e) = event {
                warn!(error = %e, "membership cache watch failed (retrying); check the operator's RBAC for pods and statefulsets");
            }
            futures::future::ready(())
        });
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {},
                _ = futures::future::join(pod_stream, sts_stream) => {},
            }
            debug!("membership caches stopped");
        });
        // Readiness of the caches only fails when the writers are dropped (shutdown).
        let _ =
            futures::future::join(pods.wait_until_ready(), stateful_sets.wait_until_ready()).await;
        Self {
            namespace: namespace.map(str::to_string),
            pods,
            stateful_sets,
        }
    }
}

/// Drops what the monitors never read from a cached Pod.
fn slim_pod(p: &mut Pod) {
    p.metadata.managed_fields = None;
    p.metadata.annotations = None;
    p.spec = None;
}

/// Drops what the monitors never read from a cached StatefulSet (its template above all).
fn slim_stateful_set(s: &mut StatefulSet) {
    s.metadata.managed_fields = None;
    s.metadata.annotations = None;
    if let Some(spec) = s.spec.as_mut() {
        spec.template = Default::default();
        spec.volume_claim_templates = None;
    }
}
