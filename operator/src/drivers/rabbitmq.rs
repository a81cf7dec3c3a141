//! Stub: replaced by the real driver.

use super::*;

/// The Rabbitmq driver.
#[derive(Clone, Debug)]
pub struct RabbitmqDriver {
    config: DriverConfig,
}

fn todo(op: &'static str) -> DriverError {
    DriverError::Unsupported {
        op,
        why: "not written yet".into(),
    }
}

impl RabbitmqDriver {
    /// A driver with this configuration.
    pub fn new(config: DriverConfig) -> Result<Self, DriverError> {
        Ok(Self { config })
    }
    /// See [`Driver::health`].
    pub async fn health(&self, _node: &NodeTarget) -> Result<Health, DriverError> {
        let _ = &self.config;
        Err(todo("health"))
    }
    /// See [`Driver::cluster_view`].
    pub async fn cluster_view(&self, _node: &NodeTarget) -> Result<ClusterView, DriverError> {
        Err(todo("cluster_view"))
    }
    /// See [`Driver::join`].
    pub async fn join(&self, _stray: &NodeTarget, _seed: &NodeTarget) -> Result<(), DriverError> {
        Err(todo("join"))
    }
    /// See [`Driver::remove_member`].
    pub async fn remove_member(&self, _via: &NodeTarget, _ghost: &str) -> Result<(), DriverError> {
        Err(todo("remove_member"))
    }
    /// See [`Driver::reset_forgotten`].
    pub async fn reset_forgotten(&self, _node: &NodeTarget) -> Result<(), DriverError> {
        Err(todo("reset_forgotten"))
    }
    /// See [`Driver::clients`].
    pub async fn clients(
        &self,
        _via: &NodeTarget,
        _q: &ClientQuery,
    ) -> Result<ClientPage, DriverError> {
        Err(todo("clients"))
    }
    /// See [`Driver::kick`].
    pub async fn kick(&self, _via: &NodeTarget, _client_id: &str) -> Result<bool, DriverError> {
        Err(todo("kick"))
    }
    /// See [`Driver::topic_metrics`].
    pub async fn topic_metrics(
        &self,
        _via: &NodeTarget,
        _topics: &[String],
    ) -> Result<Vec<TopicMetric>, DriverError> {
        Err(todo("topic_metrics"))
    }
    /// See [`Driver::alarms`].
    pub async fn alarms(&self, _via: &NodeTarget) -> Result<Vec<Alarm>, DriverError> {
        Err(todo("alarms"))
    }
    /// See [`Driver::node_stats`].
    pub async fn node_stats(&self, _node: &NodeTarget) -> Result<NodeStats, DriverError> {
        Err(todo("node_stats"))
    }
}
