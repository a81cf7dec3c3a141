//! The driver of one BrokerCluster: broker kind and version from its spec, the admin
//! credentials from the Secret Mooring owns for it, commands run in command Pods.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use mooring_crds::BrokerCluster;
use tokio::sync::watch;

use super::mqtt_probe::ProxyHeader;
use super::pod_runner::PodCommandRunner;
use super::rabbitmq::MQTT_PORT;
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

/// What the driver of `bc` is built from, as one string: the broker version, plus the MQTT port
/// and PROXY header of its MQTT checks when they differ from the defaults (a driver is rebuilt
/// when it changes).
pub fn driver_key(bc: &BrokerCluster) -> String {
    let mut key = broker_config::version_string(&bc.spec).to_string();
    let mqtt_port = bc.spec.listeners.mqtt.port;
    if mqtt_port != i32::from(MQTT_PORT) {
        key.push_str(&format!(" mqtt:{mqtt_port}"));
    }
    if mqtt_proxy_header(bc) == ProxyHeader::V2 {
        key.push_str(" proxy-protocol");
    }
    key
}

/// What Mooring's MQTT checks write before their `CONNECT`: a PROXY header when the brokers'
/// listeners require one (behind a load balancer with `loadBalancer.proxyProtocol`).
pub fn mqtt_proxy_header(bc: &BrokerCluster) -> ProxyHeader {
    if bc.spec.load_balancer.sends_proxy_protocol() {
        ProxyHeader::V2
    } else {
        ProxyHeader::None
    }
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
        version: broker_config::version_string(&bc.spec).to_string(),
        username: value(secret_keys::ADMIN_USERNAME)?,
        password: value(secret_keys::ADMIN_PASSWORD)?,
        http_timeout: HTTP_TIMEOUT,
        command_timeout: COMMAND_TIMEOUT,
        commands: Arc::new(PodCommandRunner::new(client.clone(), cluster)),
        management_port: None,
        mqtt_port: u16::try_from(bc.spec.listeners.mqtt.port).ok(),
    };
    Ok(Driver::new(bc.spec.broker.kind, config)?.with_mqtt_proxy_header(mqtt_proxy_header(bc)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mooring_crds::BrokerClusterSpec;

    fn cluster(spec: serde_json::Value) -> BrokerCluster {
        let spec: BrokerClusterSpec = serde_json::from_value(spec).unwrap();
        BrokerCluster::new("demo", spec)
    }

    #[test]
    fn checks_send_the_proxy_header_only_when_the_load_balancer_sends_it() {
        let rabbit = serde_json::json!({"kind": "rabbitmq", "version": "3.10.8"});
        for (lb, expected) in [
            (
                serde_json::json!({"enabled": true, "proxyProtocol": true}),
                ProxyHeader::V2,
            ),
            (serde_json::json!({"enabled": true}), ProxyHeader::None),
            (
                serde_json::json!({"enabled": false, "proxyProtocol": true}),
                ProxyHeader::None,
            ),
        ] {
            let bc = cluster(serde_json::json!({"broker": rabbit, "loadBalancer": lb}));
            assert_eq!(mqtt_proxy_header(&bc), expected, "{lb}");
        }
    }

    #[test]
    fn the_driver_is_rebuilt_when_its_mqtt_check_changes() {
        let rabbit = serde_json::json!({"kind": "rabbitmq", "version": "3.10.8"});
        let plain = cluster(serde_json::json!({"broker": rabbit}));
        assert_eq!(driver_key(&plain), "3.10.8");
        let proxied = cluster(serde_json::json!({
            "broker": rabbit, "loadBalancer": {"enabled": true, "proxyProtocol": true}
        }));
        assert_eq!(driver_key(&proxied), "3.10.8 proxy-protocol");
        let other_port = cluster(serde_json::json!({
            "broker": rabbit, "listeners": {"mqtt": {"port": 1884}}
        }));
        assert_eq!(driver_key(&other_port), "3.10.8 mqtt:1884");
    }
}
