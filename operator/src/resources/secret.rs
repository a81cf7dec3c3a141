//! The operator-owned Secret: generated credentials (kept for the cluster's life) plus the rendered
//! configuration files that contain secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use mooring_crds::BrokerCluster;

use super::{child_meta, ChildNames};
use crate::broker_config::BrokerLayout;

/// The credentials Secret. `credentials` are the generated keys (see
/// [`crate::credentials`]); the layout's secret files are added beside them.
pub fn credentials_secret(
    bc: &BrokerCluster,
    names: &ChildNames,
    owner: &OwnerReference,
    credentials: &BTreeMap<String, String>,
    layout: &BrokerLayout,
) -> Secret {
    let mut data = credentials.clone();
    data.extend(layout.secret_files.clone());
    Secret {
        metadata: child_meta(bc, &names.secret, owner),
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::*;
    use crate::resources::owner_reference;

    #[test]
    fn the_secret_holds_the_credentials_and_the_secret_files() {
        let bc = cluster("demo", mooring_crds::BrokerKind::Rabbitmq);
        let mut layout = layout();
        layout
            .secret_files
            .insert("definitions.json".into(), "{}".into());
        let creds = BTreeMap::from([("erlang-cookie".to_string(), "c".to_string())]);
        let s = credentials_secret(
            &bc,
            &ChildNames::of(&bc).unwrap(),
            &owner_reference(&bc).unwrap(),
            &creds,
            &layout,
        );
        assert_eq!(s.metadata.name.as_deref(), Some("demo-credentials"));
        let data = s.data.unwrap();
        assert_eq!(data["erlang-cookie"].0, b"c");
        assert_eq!(data["definitions.json"].0, b"{}");
    }
}
