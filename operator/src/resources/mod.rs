//! Pure builders of the Kubernetes objects a BrokerCluster owns. No client, no I/O: every function
//! here maps (cluster, rendered broker layout, credentials) to the desired object.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use mooring_crds::BrokerCluster;
use sha2::{Digest, Sha256};

use crate::broker_config::{BrokerLayout, ClusterNames};

mod config_map;
pub mod load_balancer;
mod pdb;
mod secret;
mod services;
mod stateful_set;

pub use config_map::config_map;
pub use pdb::pod_disruption_budget;
pub use secret::credentials_secret;
pub use services::{client_service, headless_service};
pub use stateful_set::{claim_templates_changed, stateful_set};

/// The field manager of every server-side apply Mooring makes.
pub const FIELD_MANAGER: &str = "mooring";
/// Annotation on the Pod template that changes whenever the broker configuration does.
pub const CONFIG_CHECKSUM_ANNOTATION: &str = "mooring.dev/config-checksum";
/// The `app.kubernetes.io/managed-by` value on everything Mooring owns.
pub const MANAGED_BY: &str = "mooring";
/// The component label value of broker objects.
pub const COMPONENT_BROKER: &str = "broker";
/// The cluster DNS domain Pods are named in.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Why a desired object could not be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BuildError {
    /// The BrokerCluster has no namespace or uid (it was not read from the API server).
    #[error("BrokerCluster {0} lacks {1}; it must come from the API server")]
    MissingMetadata(String, &'static str),
}

/// Names of every child of one BrokerCluster.
#[derive(Clone, Debug, PartialEq)]
pub struct ChildNames {
    /// Broker names shared with the configuration renderers.
    pub cluster: ClusterNames,
    /// The client Service (same as the cluster name).
    pub client_service: String,
    /// The ConfigMap with the broker configuration.
    pub config_map: String,
    /// The operator-owned Secret with credentials and secret configuration files.
    pub secret: String,
    /// The StatefulSet (same as the cluster name, so Pods are `<name>-<ordinal>`).
    pub stateful_set: String,
    /// The PodDisruptionBudget.
    pub pdb: String,
}

impl ChildNames {
    /// Derives every child name from the cluster's name and namespace.
    pub fn new(name: &str, namespace: &str) -> Self {
        Self {
            cluster: ClusterNames {
                name: name.to_string(),
                namespace: namespace.to_string(),
                headless_service: format!("{name}-headless"),
                cluster_domain: CLUSTER_DOMAIN.to_string(),
            },
            client_service: name.to_string(),
            config_map: format!("{name}-config"),
            secret: format!("{name}-credentials"),
            stateful_set: name.to_string(),
            pdb: name.to_string(),
        }
    }

    /// The names of the given cluster (which must have a namespace).
    pub fn of(bc: &BrokerCluster) -> Result<Self, BuildError> {
        let ns = bc
            .namespace()
            .ok_or_else(|| BuildError::MissingMetadata(bc.name_any(), "a namespace"))?;
        Ok(Self::new(&bc.name_any(), &ns))
    }
}

/// Every object one BrokerCluster owns. Destructure it without `..` so that a new child kind
/// fails to compile until apply and cleanup handle it.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// Broker configuration files.
    pub config_map: ConfigMap,
    /// Credentials and secret configuration files.
    pub secret: Secret,
    /// Headless Service for Pod DNS names and clustering.
    pub headless_service: Service,
    /// Service clients connect to.
    pub client_service: Service,
    /// The broker nodes.
    pub stateful_set: StatefulSet,
    /// Keeps voluntary disruptions to one node at a time; absent for a single node.
    pub pdb: Option<PodDisruptionBudget>,
}

/// Builds every child of `bc` from its rendered broker layout and the Secret's data.
pub fn build(
    bc: &BrokerCluster,
    layout: &BrokerLayout,
    secret_data: &BTreeMap<String, String>,
) -> Result<Children, BuildError> {
    let names = ChildNames::of(bc)?;
    let owner = owner_reference(bc)?;
    let checksum = config_checksum(layout);
    Ok(Children {
        config_map: config_map(bc, &names, &owner, layout),
        secret: credentials_secret(bc, &names, &owner, secret_data, layout),
        headless_service: headless_service(bc, &names, &owner, layout),
        client_service: client_service(bc, &names, &owner, layout),
        stateful_set: stateful_set(bc, &names, &owner, layout, &checksum),
        pdb: pod_disruption_budget(bc, &names, &owner),
    })
}

/// The owner reference every child carries (controller, blocking deletion of the owner until the
/// garbage collector has handled the child when foreground deletion is asked for).
pub fn owner_reference(bc: &BrokerCluster) -> Result<OwnerReference, BuildError> {
    bc.controller_owner_ref(&())
        .ok_or_else(|| BuildError::MissingMetadata(bc.name_any(), "a uid"))
}

/// Labels on every child: the recommended `app.kubernetes.io/*` set.
pub fn labels(bc: &BrokerCluster) -> BTreeMap<String, String> {
    let mut l = selector_labels(bc);
    l.insert(
        "app.kubernetes.io/name".into(),
        bc.spec.broker.kind.as_str().into(),
    );
    l.insert("app.kubernetes.io/part-of".into(), "mooring".into());
    if let Some(v) = &bc.spec.broker.version {
        l.insert("app.kubernetes.io/version".into(), label_value(v));
    }
    l
}

/// Labels that select the broker Pods; stable for the cluster's life (selectors are immutable).
pub fn selector_labels(bc: &BrokerCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_string(), bc.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            COMPONENT_BROKER.to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
    ])
}

/// The label selector (as a string) that finds every child of the named cluster.
pub fn children_selector(name: &str) -> String {
    format!("app.kubernetes.io/instance={name},app.kubernetes.io/managed-by={MANAGED_BY}")
}

/// Metadata shared by every child.
pub fn child_meta(bc: &BrokerCluster, name: &str, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: bc.namespace(),
        labels: Some(labels(bc)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// A checksum over every rendered configuration file, public and secret, so that any change to
/// what the broker reads at boot rolls the Pods.
pub fn config_checksum(layout: &BrokerLayout) -> String {
    let mut h = Sha256::new();
    for (section, files) in [
        ("config", &layout.config_files),
        ("secret", &layout.secret_files),
    ] {
        for (name, content) in files {
            h.update(section.as_bytes());
            h.update([0]);
            h.update(name.as_bytes());
            h.update([0]);
            h.update(content.as_bytes());
            h.update([0]);
        }
    }
    let digest = h.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A label value: at most 63 characters of `[A-Za-z0-9._-]`.
fn label_value(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect::<String>()
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests {
    use super::*;
    use fixtures::*;

    #[test]
    fn every_child_is_owned_by_the_cluster_and_labelled() {
        let bc = cluster("demo", mooring_crds::BrokerKind::Rabbitmq);
        let children = build(&bc, &layout(), &BTreeMap::new()).unwrap();
        let Children {
            config_map,
            secret,
            headless_service,
            client_service,
            stateful_set,
            pdb,
        } = children;
        let metas = [
            config_map.metadata,
            secret.metadata,
            headless_service.metadata,
            client_service.metadata,
            stateful_set.metadata,
            pdb.unwrap().metadata,
        ];
        for m in metas {
            let owners = m.owner_references.unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "BrokerCluster");
            assert_eq!(owners[0].controller, Some(true));
            let labels = m.labels.unwrap();
            assert_eq!(labels["app.kubernetes.io/instance"], "demo");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "mooring");
            assert_eq!(labels["app.kubernetes.io/name"], "rabbitmq");
            assert_eq!(m.namespace.as_deref(), Some("ns1"));
        }
    }

    #[test]
    fn a_cluster_without_uid_cannot_be_built() {
        let mut bc = cluster("demo", mooring_crds::BrokerKind::Emqx);
        bc.metadata.uid = None;
        assert!(matches!(
            build(&bc, &layout(), &BTreeMap::new()),
            Err(BuildError::MissingMetadata(_, "a uid"))
        ));
    }

    #[test]
    fn the_checksum_changes_with_any_file_and_only_then() {
        let a = layout();
        let mut b = layout();
        assert_eq!(config_checksum(&a), config_checksum(&b));
        b.secret_files.insert("x".into(), "1".into());
        assert_ne!(config_checksum(&a), config_checksum(&b));
        let mut c = layout();
        c.config_files
            .insert("broker.conf".into(), "changed".into());
        assert_ne!(config_checksum(&a), config_checksum(&c));
    }

    #[test]
    fn label_values_are_sanitised() {
        assert_eq!(label_value("3.13.7"), "3.13.7");
        assert_eq!(label_value("5.8.9+build/1"), "5.8.9_build_1");
    }
}
