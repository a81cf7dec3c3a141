//! Leader election on a Lease: only the replica holding it runs the controller (and so writes).

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (its Pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
}

/// The lease manager for `cfg`.
pub async fn manager(
    client: Client,
    cfg: &LeaseConfig,
) -> Result<LeaseManager, kube_lease_manager::LeaseManagerError> {
    LeaseManagerBuilder::new(client, &cfg.name)
        .with_namespace(&cfg.namespace)
        .with_identity(&cfg.identity)
        .with_duration(cfg.duration.as_secs())
        .with_grace(5)
        // One field manager per replica: the API server refuses a server-side apply that takes
        // the Lease's holder from another manager, which is what keeps two replicas that
        // campaign at the same moment from both leading (a shared manager never conflicts).
        .with_field_manager(field_manager(&cfg.identity))
        .build()
        .await
}

/// This replica's field manager on the Lease: unique per identity (the API server allows at most
/// 128 characters).
fn field_manager(identity: &str) -> String {
    format!("mooring-leader-{identity}")
        .chars()
        .take(128)
        .collect()
}

/// Waits until `rx` says this replica leads (true) or the channel closes (false).
pub async fn wait_for(rx: &mut watch::Receiver<bool>, leading: bool) -> bool {
    loop {
        if *rx.borrow_and_update() == leading {
            return true;
        }
        if rx.changed().await.is_err() {
            return false;
        }
    }
}

/// The label the leading replica puts on its own Pod, so that the dashboard's Service (which
/// selects it) sends people to the replica whose telemetry and alerts are live.
pub const LEADER_LABEL: &str = "mooring.dev/leader";

/// Sets (`leading`) or removes [`LEADER_LABEL`] on this replica's Pod, `namespace`/`pod`. A
/// replica that does not run in a Pod of that name (the tests, the demo) has nothing to label:
/// that is logged, never fatal.
pub async fn label_own_pod(client: &Client, namespace: &str, pod: &str, leading: bool) {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, Patch, PatchParams};

    let value = if leading {
        serde_json::Value::from("true")
    } else {
        serde_json::Value::Null
    };
    let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}});
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match api
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => tracing::info!(pod, leading, "leader label set on this replica's Pod"),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::debug!(pod, "no Pod of this replica's name: no leader label")
        }
        Err(e) => {
            tracing::warn!(pod, error = %e, "cannot set the leader label on this replica's Pod")
        }
    }
}
