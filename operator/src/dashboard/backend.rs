//! The operator's side of the dashboard: BrokerClusters and Events through the API server,
//! figures and alerts from the collector, clients through the broker drivers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use mooring_crds::BrokerCluster;
use mooring_dashboard::backend::{Backend, BackendError};
use mooring_dashboard::model::{
    AlertsView, ClientSearch, ClientsPage, ClusterDetail, ClusterSummary, TopicsView,
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::view;
use crate::collector::poller::{targets, CALL_TIMEOUT, INTERVAL};
use crate::context::State;
use crate::controller::{object_key, scoped_api, watches};
use crate::drivers::cluster as cluster_driver;
use crate::drivers::{ClientQuery, Driver, NodeTarget};
use crate::resources::selector_labels;

/// A driver kept while the cluster's uid and driver key stay the same.
struct CachedDriver {
    uid: String,
    key: String,
    cluster: watch::Sender<Arc<BrokerCluster>>,
    driver: Driver,
}

/// Answers the dashboard for the namespaces the operator watches.
pub struct OperatorBackend {
    client: Client,
    state: Arc<State>,
    namespaces: Vec<String>,
    recorder: Recorder,
    drivers: Mutex<HashMap<String, CachedDriver>>,
}

impl OperatorBackend {
    /// A backend over `namespaces` (empty: every namespace); Events it records name `identity`.
    pub fn new(client: Client, state: Arc<State>, namespaces: Vec<String>, identity: &str) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "mooring-dashboard".into(),
                instance: Some(identity.to_string()),
            },
        );
        Self {
            client,
            state,
            namespaces,
            recorder,
            drivers: Mutex::new(HashMap::new()),
        }
    }

    fn watched(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace)
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<BrokerCluster, BackendError> {
        if !self.watched(namespace) {
            return Err(BackendError::NotFound(format!("{namespace}/{name}")));
        }
        Api::<BrokerCluster>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| unavailable("reading the BrokerCluster", e))?
            .ok_or_else(|| BackendError::NotFound(format!("{namespace}/{name}")))
    }

    async fn list(&self) -> Result<Vec<BrokerCluster>, BackendError> {
        let mut all = Vec::new();
        for ns in watches(&self.namespaces) {
            let api: Api<BrokerCluster> = scoped_api(&self.client, ns.as_deref());
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(|e| unavailable("listing BrokerClusters", e))?;
            all.extend(list.items);
        }
        all.sort_by_key(object_key);
        Ok(all)
    }

    /// The cluster's driver and a node to ask: one the last sample saw up, else any with an IP.
    async fn driver_and_node(
        &self,
        bc: &BrokerCluster,
    ) -> Result<(Driver, NodeTarget), BackendError> {
        let ns = bc.namespace().unwrap_or_default();
        let selector = selector_labels(bc)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods: Vec<Arc<Pod>> = Api::<Pod>::namespaced(self.client.clone(), &ns)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| unavailable("listing the broker Pods", e))?
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        let up: Vec<String> = self
            .state
            .samples
            .latest(&object_key(bc))
            .map(|s| {
                s.nodes
                    .iter()
                    .filter(|n| n.up)
                    .map(|n| n.pod.to_string())
                    .collect()
            })
            .unwrap_or_default();
        let candidates: Vec<NodeTarget> = targets(bc, &pods)
            .into_iter()
            .filter_map(|t| t.target.ok())
            .collect();
        let node = candidates
            .iter()
            .find(|t| up.contains(&t.pod))
            .or_else(|| candidates.first())
            .cloned()
            .ok_or_else(|| BackendError::Unavailable("no broker node can be asked".into()))?;
        Ok((self.driver(bc).await?, node))
    }

    async fn driver(&self, bc: &BrokerCluster) -> Result<Driver, BackendError> {
        let key = object_key(bc);
        let uid = bc.uid().unwrap_or_default();
        let driver_key = cluster_driver::driver_key(bc);
        {
            let cache = self.drivers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache
                .get(&key)
                .filter(|c| c.uid == uid && c.key == driver_key)
            {
                c.cluster.send_replace(Arc::new(bc.clone()));
                return Ok(c.driver.clone());
            }
        }
        let (tx, rx) = watch::channel(Arc::new(bc.clone()));
        let driver = cluster_driver::for_cluster(&self.client, bc, rx)
            .await
            .map_err(|e| BackendError::Unavailable(format!("no broker driver: {e}")))?;
        self.drivers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                key,
                CachedDriver {
                    uid,
                    key: driver_key,
                    cluster: tx,
                    driver: driver.clone(),
                },
            );
        Ok(driver)
    }

    async fn event(&self, bc: &BrokerCluster, reason: &str, note: String) {
        let ev = Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &bc.object_ref(&())).await {
            warn!(cluster = %object_key(bc), error = %e, "cannot publish event");
        }
    }
}

fn unavailable(what: &str, e: kube::Error) -> BackendError {
    BackendError::Unavailable(format!("{what}: {e}"))
}

/// A broker call with the collector's time limit.
async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, crate::drivers::DriverError>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(BackendError::Unavailable(format!("{what}: {e}"))),
        Err(_) => Err(BackendError::Unavailable(format!(
            "{what}: no answer within {CALL_TIMEOUT:?}"
        ))),
    }
}

#[async_trait]
impl Backend for OperatorBackend {
    async fn clusters(&self) -> Result<Vec<ClusterSummary>, BackendError> {
        let alerts = self.state.alerts.all();
        Ok(self
            .list()
            .await?
            .iter()
            .map(|bc| {
                let key = object_key(bc);
                let firing = alerts.iter().filter(|a| a.cluster == key).count();
                view::summary(bc, self.state.samples.latest(&key).as_deref(), firing)
            })
            .collect())
    }

    async fn cluster(&self, namespace: &str, name: &str) -> Result<ClusterDetail, BackendError> {
        let bc = self.get(namespace, name).await?;
        let key = object_key(&bc);
        let samples = self.state.samples.of_cluster(&key);
        let latest = samples.last().map(|s| s.as_ref());
        let firing = self.state.alerts.of_cluster(&key).len();
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let events = match events
            .list(&ListParams::default().fields(&format!("regarding.name={name}")))
            .await
        {
            Ok(list) => list
                .items
                .into_iter()
                .filter(|e| {
                    e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("BrokerCluster")
                })
                .collect(),
            Err(e) => {
                warn!(cluster = %key, error = %e, "dashboard: cannot list Events");
                Vec::new()
            }
        };
        Ok(ClusterDetail {
            summary: view::summary(&bc, latest, firing),
            conditions: view::conditions(&bc),
            nodes: view::nodes(&bc, latest),
            matrix: view::matrix(&bc),
            backends: view::backends(latest),
            events: view::events(events),
            scale_down: bc
                .status
                .as_ref()
                .and_then(|s| s.scale_down.as_ref())
                .map(|s| {
                    format!(
                        "Scaling down: {} ({}) is {} since {}. {}",
                        s.pod,
                        s.node,
                        s.phase,
                        view::when(s.since.0),
                        s.message
                    )
                }),
            history: view::history(&samples),
            interval_seconds: INTERVAL.as_secs(),
        })
    }

    async fn clients(
        &self,
        namespace: &str,
        name: &str,
        search: &ClientSearch,
    ) -> Result<ClientsPage, BackendError> {
        let bc = self.get(namespace, name).await?;
        let (driver, via) = self.driver_and_node(&bc).await?;
        let text = Some(search.text.clone()).filter(|t| !t.is_empty());
        let query = ClientQuery {
            page: search.page,
            limit: search.limit,
            client_id: text.clone().filter(|_| !search.by_username),
            username: text.filter(|_| search.by_username),
        };
        let page = timed("listing clients", driver.clients(&via, &query)).await?;
        Ok(view::clients_page(page))
    }

    async fn kick(
        &self,
        namespace: &str,
        name: &str,
        client_id: &str,
        actor: &str,
    ) -> Result<bool, BackendError> {
        let bc = self.get(namespace, name).await?;
        let (driver, via) = self.driver_and_node(&bc).await?;
        let kicked = timed("disconnecting the client", driver.kick(&via, client_id)).await?;
        info!(cluster = %object_key(&bc), client_id, actor, kicked, "dashboard: kick");
        if kicked {
            self.event(
                &bc,
                "ClientKicked",
                format!("{actor} disconnected client {client_id} from the dashboard"),
            )
            .await;
        }
        Ok(kicked)
    }

    async fn topics(&self, namespace: &str, name: &str) -> Result<TopicsView, BackendError> {
        let bc = self.get(namespace, name).await?;
        let samples = self.state.samples.of_cluster(&object_key(&bc));
        let metered = bc.spec.monitoring.metered_topics.clone();
        let error = match samples.last() {
            None => Some("No telemetry round yet (every 10 s).".to_string()),
            Some(s) if s.topics.is_none() && !metered.is_empty() => {
                Some("The last round got no topic figures: no broker node answered.".to_string())
            }
            Some(_) => None,
        };
        Ok(TopicsView {
            series: view::topic_series(&metered, &samples),
            metered,
            interval_seconds: INTERVAL.as_secs(),
            error,
        })
    }

    async fn set_metered_topics(
        &self,
        namespace: &str,
        name: &str,
        topics: Vec<String>,
        actor: &str,
    ) -> Result<(), BackendError> {
        let bc = self.get(namespace, name).await?;
        let patch = serde_json::json!({"spec": {"monitoring": {"meteredTopics": topics}}});
        Api::<BrokerCluster>::namespaced(self.client.clone(), namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
                    BackendError::Invalid(s.message)
                }
                e => unavailable("changing the metered topics", e),
            })?;
        self.event(
            &bc,
            "MeteredTopicsChanged",
            format!(
                "{actor} set the metered topics to [{}] from the dashboard",
                topics.join(", ")
            ),
        )
        .await;
        Ok(())
    }

    async fn alerts(&self) -> Result<AlertsView, BackendError> {
        let mut active: Vec<_> = self
            .state
            .alerts
            .all()
            .iter()
            .filter(|a| self.watched(a.cluster.split('/').next().unwrap_or_default()))
            .map(view::active_alert)
            .collect();
        active.sort_by(|a, b| b.at.cmp(&a.at));
        let mut clusters: Vec<String> = self.list().await?.iter().map(object_key).collect();
        clusters.extend(self.state.samples.clusters());
        clusters.sort();
        clusters.dedup();
        let mut history: Vec<_> = clusters
            .iter()
            .flat_map(|c| self.state.alerts.history(c))
            .collect();
        history.sort_by_key(|t| std::cmp::Reverse(t.at));
        Ok(AlertsView {
            active,
            history: history.iter().map(view::transition).collect(),
        })
    }
}
