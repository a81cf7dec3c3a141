//! The ConfigMap holding the broker's non-secret configuration files.

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use mooring_crds::BrokerCluster;

use super::{child_meta, ChildNames};
use crate::broker_config::BrokerLayout;

/// The broker configuration ConfigMap.
pub fn config_map(
    bc: &BrokerCluster,
    names: &ChildNames,
    owner: &OwnerReference,
    layout: &BrokerLayout,
) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(bc, &names.config_map, owner),
        data: Some(layout.config_files.clone()),
        ..ConfigMap::default()
    }
}
