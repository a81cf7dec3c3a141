//! PersistentVolumeClaims without a provisioner: the agent binds every claim itself, statically.
//!
//! For each `Pending` claim without a volume, the agent creates a `hostPath` PersistentVolume
//! `pvc-<claim uid>` on the claim's directory `<state>/volumes/pvc/<namespace>/<claim>` with
//! `claimRef` pre-set to the claim (name, namespace, uid) and the claim's storage class, access
//! modes and size, reclaim policy `Retain`. kube-controller-manager's PV binder then completes
//! the binding (pre-bound volumes are bound at once, whatever the class's binding mode), so the
//! scheduler, which does not place a Pod whose immediate claim is unbound, schedules the Pod. When
//! no binder acts within [`BIND_FALLBACK`], the agent completes the binding as the binder would.
//!
//! The directory belongs to the claim's namespace and name, not to a Pod: it survives Pod
//! deletion and restarts (and a claim deleted and created again finds its data).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;

/// How long the agent leaves binding to kube-controller-manager before doing it itself.
pub const BIND_FALLBACK: Duration = Duration::from_secs(10);

/// The label on the PersistentVolumes the agent creates.
pub const PV_LABEL: &str = "devcluster.mooring.dev/claim-dir";

/// Errors resolving or binding claims.
#[derive(Debug, thiserror::Error)]
pub enum PvcError {
    /// An API request failed.
    #[error("{context}: {source}")]
    Api {
        /// What was being done.
        context: String,
        /// Why.
        source: kube::Error,
    },
    /// The claim directory cannot be created.
    #[error("cannot create {path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The claim does not exist.
    #[error("persistentvolumeclaim {0:?} not found")]
    NotFound(String),
}

/// The directory of a claim.
pub fn claim_dir(state_dir: &Path, namespace: &str, claim: &str) -> PathBuf {
    state_dir
        .join("volumes")
        .join("pvc")
        .join(namespace)
        .join(claim)
}

fn create_dir(path: &Path) -> Result<(), PvcError> {
    std::fs::create_dir_all(path).map_err(|source| PvcError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The host directory behind a claim: its bound volume's `hostPath` when it has one, else the
/// claim's own directory (created).
pub async fn claim_path(
    client: &Client,
    state_dir: &Path,
    namespace: &str,
    claim: &str,
) -> Result<PathBuf, PvcError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pvc = claims
        .get_opt(claim)
        .await
        .map_err(|source| PvcError::Api {
            context: format!("cannot read persistentvolumeclaim {namespace}/{claim}"),
            source,
        })?
        .ok_or_else(|| PvcError::NotFound(format!("{namespace}/{claim}")))?;
    let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.clone());
    if let Some(volume) = volume.filter(|v| !v.is_empty()) {
        let pvs: Api<PersistentVolume> = Api::all(client.clone());
        let pv = pvs.get_opt(&volume).await.map_err(|source| PvcError::Api {
            context: format!("cannot read persistentvolume {volume}"),
            source,
        })?;
        if let Some(path) = pv
            .and_then(|pv| pv.spec)
            .and_then(|s| s.host_path)
            .map(|h| PathBuf::from(h.path))
        {
            create_dir(&path)?;
            return Ok(path);
        }
    }
    let dir = claim_dir(state_dir, namespace, claim);
    create_dir(&dir)?;
    Ok(dir)
}

/// The name of the volume the agent creates for a claim.
pub fn volume_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// The PersistentVolume that pre-binds `claim` to its directory (pure).
pub fn volume_for(claim: &PersistentVolumeClaim, dir: &Path) -> Option<PersistentVolume> {
    let uid = claim.metadata.uid.clone()?;
    let spec = claim.spec.clone().unwrap_or_default();
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .unwrap_or_else(|| Quantity("1Gi".into()));
    let access_modes = spec
        .access_modes
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume_name(&uid)),
            labels: Some(BTreeMap::from([(PV_LABEL.to_string(), "true".to_string())])),
            annotations: Some(BTreeMap::from([(
                "pv.kubernetes.io/provisioned-by".to_string(),
                "devcluster-agent".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), storage)])),
            access_modes: Some(access_modes),
            volume_mode: spec.volume_mode.clone(),
            storage_class_name: spec.storage_class_name.clone(),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            host_path: Some(HostPathVolumeSource {
                path: dir.display().to_string(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: Some(uid),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })
}

fn needs_volume(claim: &PersistentVolumeClaim) -> bool {
    let pending = claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|p| p == "Pending");
    let unbound = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_none_or(str::is_empty);
    pending && unbound && claim.metadata.deletion_timestamp.is_none()
}

/// Watches every claim and binds the pending ones (see the module docs). Runs until cancelled.
pub async fn run_binder(client: Client, state_dir: PathBuf) {
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let mut first_seen: BTreeMap<String, Instant> = BTreeMap::new();
    let mut pending: BTreeMap<String, PersistentVolumeClaim> = BTreeMap::new();
    let mut stream = watcher(claims, watcher::Config::default()).boxed();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            event = stream.next() => {
                let Some(event) = event else { return };
                match event {
                    Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                        let Some(uid) = c.metadata.uid.clone() else { continue };
                        if needs_volume(&c) {
                            ensure_volume(&client, &state_dir, &c).await;
                            first_seen.entry(uid.clone()).or_insert_with(Instant::now);
                            pending.insert(uid, c);
                        } else {
                            first_seen.remove(&uid);
                            pending.remove(&uid);
                        }
                    }
                    Ok(watcher::Event::Delete(c)) => {
                        if let Some(uid) = c.metadata.uid {
                            first_seen.remove(&uid);
                            pending.remove(&uid);
                        }
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "persistentvolumeclaim watch failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            _ = tick.tick() => {
                let due: Vec<PersistentVolumeClaim> = pending
                    .iter()
                    .filter(|(uid, _)| first_seen.get(*uid).is_some_and(|t| t.elapsed() >= BIND_FALLBACK))
                    .map(|(_, c)| c.clone())
                    .collect();
                for claim in due {
                    if let Some(uid) = claim.metadata.uid.clone() {
                        // Try again later if it fails; the watch removes it once bound.
                        first_seen.insert(uid, Instant::now());
                    }
                    if let Err(e) = bind(&client, &claim).await {
                        tracing::warn!(error = %e, "cannot bind a claim");
                    }
                }
            }
        }
    }
}

async fn ensure_volume(client: &Client, state_dir: &Path, claim: &PersistentVolumeClaim) {
    let ns = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let dir = claim_dir(state_dir, &ns, &name);
    if let Err(e) = create_dir(&dir) {
        tracing::warn!(error = %e, "cannot create a claim directory");
        return;
    }
    let Some(pv) = volume_for(claim, &dir) else {
        return;
    };
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    match pvs.create(&PostParams::default(), &pv).await {
        Ok(_) => {
            tracing::info!(claim = %format!("{ns}/{name}"), dir = %dir.display(), "created a volume for a claim")
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => {
            tracing::warn!(claim = %format!("{ns}/{name}"), error = %e, "cannot create a volume for a claim")
        }
    }
}

/// Completes a binding as kube-controller-manager's binder does: the claim's `volumeName` and
/// bind annotations, then both statuses `Bound`.
async fn bind(client: &Client, claim: &PersistentVolumeClaim) -> Result<(), PvcError> {
    let ns = claim.metadata.namespace.clone().unwrap_or_default();
    let name = claim.metadata.name.clone().unwrap_or_default();
    let Some(uid) = claim.metadata.uid.clone() else {
        return Ok(());
    };
    let volume = volume_name(&uid);
    let api_err = |context: String| move |source| PvcError::Api { context, source };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = pvs
        .get_opt(&volume)
        .await
        .map_err(api_err(format!("cannot read persistentvolume {volume}")))?;
    let Some(pv) = pv else {
        return Ok(());
    };
    tracing::info!(claim = %format!("{ns}/{name}"), volume, "binding a claim (no binder did)");
    let params = PatchParams::default();
    claims
        .patch(
            &name,
            &params,
            &Patch::Merge(json!({
                "metadata": {"annotations": {
                    "pv.kubernetes.io/bind-completed": "yes",
                    "pv.kubernetes.io/bound-by-controller": "yes"
                }},
                "spec": {"volumeName": volume}
            })),
        )
        .await
        .map_err(api_err(format!(
            "cannot bind persistentvolumeclaim {ns}/{name}"
        )))?;
    let spec = pv.spec.unwrap_or_default();
    pvs.patch_status(
        &volume,
        &params,
        &Patch::Merge(json!({"status": {"phase": "Bound"}})),
    )
    .await
    .map_err(api_err(format!("cannot update persistentvolume {volume}")))?;
    claims
        .patch_status(
            &name,
            &params,
            &Patch::Merge(json!({"status": {
                "phase": "Bound",
                "accessModes": spec.access_modes,
                "capacity": spec.capacity,
            }})),
        )
        .await
        .map_err(api_err(format!(
            "cannot update persistentvolumeclaim {ns}/{name}"
        )))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};

    fn claim() -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data-bus-0".into()),
                namespace: Some("iot".into()),
                uid: Some("1234".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: Some("fast".into()),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".into(),
                        Quantity("10Gi".into()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn the_volume_pre_binds_the_claim_to_its_directory() {
        let dir = claim_dir(Path::new("/state"), "iot", "data-bus-0");
        assert_eq!(dir, Path::new("/state/volumes/pvc/iot/data-bus-0"));
        let pv = volume_for(&claim(), &dir).unwrap();
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-1234"));
        let spec = pv.spec.unwrap();
        let r = spec.claim_ref.unwrap();
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref(), r.uid.as_deref()),
            (Some("iot"), Some("data-bus-0"), Some("1234"))
        );
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(spec.capacity.unwrap()["storage"], Quantity("10Gi".into()));
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Retain")
        );
        assert_eq!(
            spec.host_path.unwrap().path,
            "/state/volumes/pvc/iot/data-bus-0"
        );
    }

    #[test]
    fn only_pending_unbound_claims_need_a_volume() {
        let mut c = claim();
        assert!(needs_volume(&c));
        c.spec.as_mut().unwrap().volume_name = Some("pvc-1234".into());
        assert!(!needs_volume(&c));
    }
}
