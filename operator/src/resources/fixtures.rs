//! Test objects for the builders.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerPort, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mooring_crds::{BrokerCluster, BrokerClusterSpec, BrokerKind};

use crate::broker_config::BrokerLayout;

/// A BrokerCluster as read from the API server (namespace, uid, generation set), defaults applied.
pub fn cluster(name: &str, kind: BrokerKind) -> BrokerCluster {
    let spec: BrokerClusterSpec =
        serde_json::from_value(serde_json::json!({"broker": {"kind": kind.as_str()}})).unwrap();
    let mut bc = BrokerCluster::new(name, spec);
    bc.metadata.namespace = Some("ns1".into());
    bc.metadata.uid = Some("0000-uid".into());
    bc.metadata.generation = Some(1);
    bc
}

fn port(name: &str, p: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: p,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// A small broker layout.
pub fn layout() -> BrokerLayout {
    let probe = Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(1883),
            ..Default::default()
        }),
        ..Default::default()
    };
    BrokerLayout {
        image: "example/broker:1".into(),
        command: vec![],
        args: vec![],
        env: vec![],
        config_files: BTreeMap::from([("broker.conf".into(), "a = 1\n".into())]),
        config_mount_path: "/etc/broker".into(),
        secret_files: BTreeMap::new(),
        secret_mount_path: "/etc/broker-secret".into(),
        data_mount_path: "/data".into(),
        ports: vec![port("mqtt", 1883), port("cluster", 4370)],
        headless_ports: vec![port("mqtt", 1883), port("cluster", 4370)],
        client_ports: vec![port("mqtt", 1883)],
        readiness_probe: probe.clone(),
        liveness_probe: probe,
        startup_probe: None,
        management_port: 18083,
        termination_grace_period_seconds: 60,
    }
}
