//! The driver of one BrokerCluster: broker kind and version from its spec, the admin
//! credentials from the Secret Mooring owns for it, commands run in command Pods.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use mooring_crds::BrokerCluster;
use tokio::sync::watch;

use super::pod_runner::PodCommandRunner;
use super::{Driver, DriverConfig, DriverError, COMMAND_TIMEOUT, HTTP_TIMEOUT};
use crate::broker_config::{self, secret_keys};
use crate::resources::ChildNames;

/// Why a cluster's driver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The credentials Secret could not be read.
    #[error("cannot read Secret {0}: {1}")]
    Read(String, #[source] kube::Error),
    /// The credentials Secret does not exist (yet).
    #[error("Secret {0} does not exist yet")]
    Missing(String),
    /// The credentials Secret lacks a key.
    #[error("Secret {0} has no {1}")]
    MissingKey(String, &'static str),
    /// The driver refused the configuration.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

/// The version string the driver of `bc` is built for (a driver is rebuilt when it changes).
pub fn version(bc: &BrokerCluster) -> String {
    broker_config::version_string(&bc.spec).to_string()
}

/// Builds the driver of `bc`; command Pods follow the cluster `cluster` carries.
pub async fn for_cluster(
    client: &Client,
    bc: &BrokerCluster,
    cluster: watch::Receiver<Arc<BrokerCluster>>,
) -> Result<Driver, SetupError> {
    let ns = bc.namespace().unwrap_or_default();
    let names = ChildNames::new(&bc.name_any(), &ns);
    let key = format!("{ns}/{}", names.secret);
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get_opt(&names.secret)
        .await
        .map_err(|e| SetupError::Read(key.clone(), e))?
        .ok_or_else(|| SetupError::Missing(key.clone()))?;
    let value = |name: &'static str| -> Result<String, SetupError> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(name))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .ok_or_else(|| SetupError::MissingKey(key.clone(), name))
    };
    let config = DriverConfig {
        version: version(bc),
        username: value(secret_keys::ADMIN_USERNAME)?,
        password: value(secret_keys::ADMIN_PASSWORD)?,
        http_timeout: HTTP_TIMEOUT,
        command_timeout: COMMAND_TIMEOUT,
        commands: Arc::new(PodCommandRunner::new(client.clone(), cluster)),
        management_port: None,
        mqtt_port: None,
    };
    Ok(Driver::new(bc.spec.broker.kind, config)?)
}
