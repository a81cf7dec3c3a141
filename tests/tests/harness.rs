//! Self-tests of the control-plane harness: it starts, authenticates and authorises as declared,
//! runs the controller manager when asked, and leaves nothing behind.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::Api;
use mooring_tests::{create_unique_namespace, ControlPlane, ControlPlaneOptions};

fn pid_alive(pid: &str) -> bool {
    std::path::Path::new("/proc").join(pid).exists()
}

/// PIDs of the processes whose command line mentions `needle`.
fn pids_mentioning(needle: &str) -> Vec<String> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                pids.push(name);
            }
        }
    }
    pids
}

#[tokio::test]
async fn api_server_starts_authorises_and_cleans_up() -> Result<()> {
    let cp = ControlPlane::start(
        ControlPlaneOptions::default().with_user("viewer", &["mooring-test-viewers"]),
    )
    .await?;
    eprintln!(
        "control plane (etcd + kube-apiserver) ready in {:?}",
        cp.started_in()
    );
    let state = cp.state_dir().to_path_buf();
    assert!(cp.kubeconfig_path().is_file());
    assert!(cp.log_path("kube-apiserver").is_file());

    let admin = cp.client().await?;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .list(&ListParams::default())
        .await
        .context("admin lists namespaces")?;

    // The declared token user is authenticated but not authorised until bound.
    let viewer = cp.client_as("viewer").await?;
    let as_viewer: Api<Namespace> = Api::all(viewer);
    match as_viewer.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {
            assert!(s.message.contains("\"viewer\""), "{}", s.message);
        }
        other => bail!("viewer listing namespaces before any binding: {other:?}"),
    }
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    roles
        .create(
            &PostParams::default(),
            &ClusterRole {
                metadata: ObjectMeta {
                    name: Some("ns-reader".into()),
                    ..Default::default()
                },
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["namespaces".into()]),
                    verbs: vec!["list".into()],
                    ..Default::default()
                }]),
                ..Default::default()
            },
        )
        .await?;
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    bindings
        .create(
            &PostParams::default(),
            &ClusterRoleBinding {
                metadata: ObjectMeta {
                    name: Some("ns-reader".into()),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: "ns-reader".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "Group".into(),
                    name: "mooring-test-viewers".into(),
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    ..Default::default()
                }]),
            },
        )
        .await?;
    // RBAC changes reach the authorizer through an informer: allow a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match as_viewer.list(&ListParams::default()).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("viewer not yet allowed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context("viewer lists namespaces after the binding"),
        }
    }

    // Impersonation and ServiceAccount tokens.
    let nobody = cp.client_impersonating("nobody", &["nobodies"]).await?;
    let as_nobody: Api<Namespace> = Api::all(nobody);
    match as_nobody.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => bail!("impersonated nobody listing namespaces: {other:?}"),
    }
    let ns = create_unique_namespace(&admin, "harness").await?;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    sas.create(
        &PostParams::default(),
        &ServiceAccount {
            metadata: ObjectMeta {
                name: Some("robot".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;
    let robot = cp.client_for_service_account(&ns, "robot").await?;
    let as_robot: Api<ConfigMap> = Api::namespaced(robot, &ns);
    match as_robot.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {
            assert!(
                s.message
                    .contains(&format!("system:serviceaccount:{ns}:robot")),
                "{}",
                s.message
            );
        }
        other => bail!("ServiceAccount listing ConfigMaps without a binding: {other:?}"),
    }

    let pids = pids_mentioning(&state.display().to_string());
    assert!(
        pids.len() >= 2,
        "expected etcd and kube-apiserver running, found {pids:?}"
    );
    let begin = Instant::now();
    drop(cp);
    eprintln!("control plane stopped in {:?}", begin.elapsed());
    for pid in &pids {
        assert!(!pid_alive(pid), "process {pid} outlived the control plane");
    }
    if std::env::var_os(mooring_tests::KEEP_STATE_ENV).is_none() {
        assert!(!state.exists(), "{} was not removed", state.display());
    }
    Ok(())
}

#[tokio::test]
async fn controller_manager_collects_garbage() -> Result<()> {
    let cp = ControlPlane::start(ControlPlaneOptions::default().with_controller_manager()).await?;
    eprintln!(
        "control plane with kube-controller-manager ready in {:?}",
        cp.started_in()
    );
    let client = cp.client().await?;
    let ns = create_unique_namespace(&client, "gc").await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    let uid = owner.metadata.uid.context("the owner has no uid")?;
    cms.create(
        &PostParams::default(),
        &ConfigMap {
            metadata: ObjectMeta {
                name: Some("owned".into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: "owner".into(),
                    uid,
                    ..Default::default()
                }]),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;
    cms.delete("owner", &DeleteParams::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while cms.get_opt("owned").await?.is_some() {
        if Instant::now() >= deadline {
            bail!(
                "the garbage collector did not delete the owned ConfigMap within 60 s; \
                 kube-controller-manager log ends with:\n{}",
                cp.log_tail("kube-controller-manager", 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
