//! The PodDisruptionBudget: voluntary disruptions (drains) take one broker node at a time.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mooring_crds::BrokerCluster;

use super::{child_meta, selector_labels, ChildNames};

/// The PDB, or `None` for a single-node cluster (a budget there could only block drains forever or
/// protect nothing).
pub fn pod_disruption_budget(
    bc: &BrokerCluster,
    names: &ChildNames,
    owner: &OwnerReference,
) -> Option<PodDisruptionBudget> {
    if bc.spec.replicas < 2 {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: child_meta(bc, &names.pdb, owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(bc)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::*;
    use crate::resources::owner_reference;

    #[test]
    fn a_multi_node_cluster_allows_one_disruption_at_a_time() {
        let bc = cluster("demo", mooring_crds::BrokerKind::Emqx);
        let names = ChildNames::of(&bc).unwrap();
        let pdb = pod_disruption_budget(&bc, &names, &owner_reference(&bc).unwrap()).unwrap();
        assert_eq!(pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn a_single_node_cluster_has_no_budget() {
        let mut bc = cluster("demo", mooring_crds::BrokerKind::Emqx);
        bc.spec.replicas = 1;
        let names = ChildNames::of(&bc).unwrap();
        assert!(pod_disruption_budget(&bc, &names, &owner_reference(&bc).unwrap()).is_none());
    }
}
