//! What the dashboard asks of the operator (server half only). The operator implements it over
//! its API client, telemetry history, alerts and broker drivers; the server functions call it.

use async_trait::async_trait;

use crate::model::{
    AlertsView, ClientSearch, ClientsPage, ClusterDetail, ClusterSummary, TopicsView,
};

/// Why the backend could not answer. Its text is shown to the user, so it never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No such cluster.
    #[error("cluster {0} not found")]
    NotFound(String),
    /// The request was wrong (bad topic, bad page ...).
    #[error("{0}")]
    Invalid(String),
    /// The API server or a broker did not answer.
    #[error("{0}")]
    Unavailable(String),
}

/// The operator's side of the dashboard.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Every BrokerCluster the operator watches.
    async fn clusters(&self) -> Result<Vec<ClusterSummary>, BackendError>;

    /// One cluster: nodes, membership, load balancer, Events, history.
    async fn cluster(&self, namespace: &str, name: &str) -> Result<ClusterDetail, BackendError>;

    /// Connected clients, paged, asking the broker.
    async fn clients(
        &self,
        namespace: &str,
        name: &str,
        search: &ClientSearch,
    ) -> Result<ClientsPage, BackendError>;

    /// Disconnects a client. `Ok(false)` when it was not connected. `actor` is the user who asked
    /// (recorded in the Event).
    async fn kick(
        &self,
        namespace: &str,
        name: &str,
        client_id: &str,
        actor: &str,
    ) -> Result<bool, BackendError>;

    /// Metered topics and their rates over the kept history.
    async fn topics(&self, namespace: &str, name: &str) -> Result<TopicsView, BackendError>;

    /// Replaces the metered topics (spec.monitoring.meteredTopics).
    async fn set_metered_topics(
        &self,
        namespace: &str,
        name: &str,
        topics: Vec<String>,
        actor: &str,
    ) -> Result<(), BackendError>;

    /// Alerts firing now and the history, of every cluster.
    async fn alerts(&self) -> Result<AlertsView, BackendError>;
}
