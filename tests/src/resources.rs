//! Putting Mooring's API and test namespaces into a control plane.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use mooring_crds::BrokerCluster;

use mooring_localkube::pki;

/// The name of Mooring's CRD.
pub const CRD_NAME: &str = "brokerclusters.mooring.dev";

/// How long the API server may take to establish the CRD.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Applies `mooring_crds::BrokerCluster::crd()` (server-side apply, field manager `mooring-tests`,
/// forced) and waits until the CRD is `Established`. Idempotent. A rejection of the CRD itself
/// (schema, CEL cost or compile errors) comes back with the API server's message.
pub async fn install_crd(client: &Client) -> Result<CustomResourceDefinition> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = BrokerCluster::crd();
    let params = PatchParams::apply("mooring-tests").force();
    match crds.patch(CRD_NAME, &params, &Patch::Apply(&crd)).await {
        Ok(_) => {}
        // The status message lists every problem; kube's error adds a long Debug dump of it.
        Err(kube::Error::Api(status)) => bail!(
            "the API server rejected the CRD {CRD_NAME} ({} {}): {}",
            status.code,
            status.reason,
            status.message
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot apply the CRD {CRD_NAME}")),
    }

    let deadline = Instant::now() + ESTABLISH_TIMEOUT;
    loop {
        let current = crds
            .get(CRD_NAME)
            .await
            .with_context(|| format!("cannot read back the CRD {CRD_NAME}"))?;
        let conditions = current
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let established = conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(current);
        }
        if let Some(c) = conditions
            .iter()
            .find(|c| c.type_ == "NamesAccepted" && c.status == "False")
        {
            bail!(
                "the CRD {CRD_NAME} names were not accepted: {} ({})",
                c.message.as_deref().unwrap_or(""),
                c.reason.as_deref().unwrap_or("")
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the CRD {CRD_NAME} is not Established after {ESTABLISH_TIMEOUT:?}; conditions: {conditions:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a namespace; an existing one of that name is fine and returned as it is.
pub async fn create_namespace(client: &Client, name: &str) -> Result<Namespace> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(status)) if status.code == 409 => namespaces
            .get(name)
            .await
            .with_context(|| format!("cannot read namespace {name}")),
        Err(e) => Err(e).with_context(|| format!("cannot create namespace {name}")),
    }
}

/// Creates a fresh namespace `<prefix>-<random>` and returns its name: tests that share a control
/// plane each work in their own.
pub async fn create_unique_namespace(client: &Client, prefix: &str) -> Result<String> {
    let name = format!("{prefix}-{}", pki::random_suffix(6)?);
    create_namespace(client, &name).await?;
    Ok(name)
}
