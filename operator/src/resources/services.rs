//! The headless Service (stable Pod DNS names, clustering) and the client Service.

use k8s_openapi::api::core::v1::{ContainerPort, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mooring_crds::BrokerCluster;

use super::{child_meta, selector_labels, ChildNames};
use crate::broker_config::BrokerLayout;

fn service_ports(ports: &[ContainerPort]) -> Vec<ServicePort> {
    ports
        .iter()
        .map(|p| ServicePort {
            name: p.name.clone(),
            port: p.container_port,
            target_port: Some(IntOrString::Int(p.container_port)),
            protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
            ..ServicePort::default()
        })
        .collect()
}

/// The headless Service: every Pod gets `<pod>.<name>-headless.<ns>.svc.cluster.local`, published
/// before it is ready so that nodes can find each other while they boot.
pub fn headless_service(
    bc: &BrokerCluster,
    names: &ChildNames,
    owner: &OwnerReference,
    layout: &BrokerLayout,
) -> Service {
    Service {
        metadata: child_meta(bc, &names.cluster.headless_service, owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(bc)),
            ports: Some(service_ports(&layout.headless_ports)),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Service clients and operators use: ready Pods only.
pub fn client_service(
    bc: &BrokerCluster,
    names: &ChildNames,
    owner: &OwnerReference,
    layout: &BrokerLayout,
) -> Service {
    Service {
        metadata: child_meta(bc, &names.client_service, owner),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(bc)),
            ports: Some(service_ports(&layout.client_ports)),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::*;
    use crate::resources::owner_reference;

    #[test]
    fn the_headless_service_publishes_not_ready_pods_and_clustering_ports() {
        let bc = cluster("demo", mooring_crds::BrokerKind::Emqx);
        let names = ChildNames::of(&bc).unwrap();
        let svc = headless_service(&bc, &names, &owner_reference(&bc).unwrap(), &layout());
        assert_eq!(svc.metadata.name.as_deref(), Some("demo-headless"));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let ports: Vec<i32> = spec.ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(ports, vec![1883, 4370]);
        assert_eq!(spec.selector.unwrap(), selector_labels(&bc));
    }

    #[test]
    fn the_client_service_exposes_the_client_ports() {
        let bc = cluster("demo", mooring_crds::BrokerKind::Emqx);
        let names = ChildNames::of(&bc).unwrap();
        let svc = client_service(&bc, &names, &owner_reference(&bc).unwrap(), &layout());
        assert_eq!(svc.metadata.name.as_deref(), Some("demo"));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.publish_not_ready_addresses, None);
        assert_eq!(spec.ports.unwrap()[0].name.as_deref(), Some("mqtt"));
    }
}
