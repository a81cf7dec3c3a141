//! The BrokerCluster controller against a real kube-apiserver, etcd and kube-controller-manager
//! (garbage collection, the StatefulSet controller that creates claims). Each test runs the
//! controller in-process, scoped to its own namespace, through the same runner the binary uses.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mooring_crds::{BrokerCluster, Condition};
use mooring_operator::context::State;
use mooring_operator::controller::Scope;
use mooring_operator::leader::LeaseConfig;
use mooring_operator::runner::lead_and_control;
use mooring_tests::{
    create_unique_namespace, install_crd, ControlPlaneOptions, SharedControlPlane,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

static CP: SharedControlPlane =
    SharedControlPlane::new(|| ControlPlaneOptions::default().with_controller_manager());

const TIMEOUT: Duration = Duration::from_secs(60);

/// A control plane with the CRD, a fresh namespace and a client.
async fn setup(prefix: &str) -> Result<(Client, String)> {
    let cp = CP.get().await?;
    let client = cp.client().await?;
    install_crd(&client).await?;
    let ns = create_unique_namespace(&client, prefix).await?;
    Ok((client, ns))
}

/// One operator replica running in this process.
struct Operator {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Operator {
    fn start(client: &Client, ns: &str, identity: &str) -> Self {
        let stop = CancellationToken::new();
        let lease = LeaseConfig {
            name: "mooring-operator".into(),
            namespace: ns.into(),
            identity: identity.into(),
            duration: Duration::from_secs(5),
        };
        let scope = Scope {
            namespaces: vec![ns.into()],
            ..Scope::default()
        };
        let (client, token) = (client.clone(), stop.clone());
        let task = tokio::spawn(async move {
            lead_and_control(client, State::new(), lease, scope, &token).await
        });
        Self { stop, task }
    }

    async fn stop(self) -> Result<()> {
        self.stop.cancel();
        self.task.await.context("operator task")?
    }
}

async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut last_err = None;
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(format!("{e:#}")),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn create_cluster(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<BrokerCluster> {
    let api: Api<BrokerCluster> = Api::namespaced(client.clone(), ns);
    let bc: BrokerCluster = serde_json::from_value(json!({
        "apiVersion": "mooring.dev/v1alpha1",
        "kind": "BrokerCluster",
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    Ok(api.create(&PostParams::default(), &bc).await?)
}

async fn get<K>(client: &Client, ns: &str, name: &str) -> Result<Option<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?)
}

/// Waits until the object exists and `check` holds for it.
async fn wait_for<K>(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&K) -> bool,
) -> Result<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    eventually(what, || async {
        Ok(get::<K>(client, ns, name).await?.filter(|o| check(o)))
    })
    .await
}

async fn wait_gone<K>(client: &Client, ns: &str, name: &str) -> Result<()>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    eventually(
        &format!("{} {name} to be deleted", K::kind(&())),
        || async { Ok(get::<K>(client, ns, name).await?.is_none().then_some(())) },
    )
    .await
}

fn condition<'a>(bc: &'a BrokerCluster, type_: &str) -> Option<&'a Condition> {
    bc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn checksum(sts: &StatefulSet) -> String {
    sts.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get("mooring.dev/config-checksum"))
        .cloned()
        .unwrap_or_default()
}

fn sts_replicas(sts: &StatefulSet) -> i32 {
    sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1)
}

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

async fn patch_spec(client: &Client, ns: &str, name: &str, spec: serde_json::Value) -> Result<()> {
    let api: Api<BrokerCluster> = Api::namespaced(client.clone(), ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": spec})),
    )
    .await?;
    Ok(())
}

async fn status_generation(
    client: &Client,
    ns: &str,
    name: &str,
    generation: i64,
) -> Result<BrokerCluster> {
    wait_for::<BrokerCluster>(
        client,
        ns,
        name,
        &format!("status of generation {generation}"),
        |bc| bc.status.as_ref().and_then(|s| s.observed_generation) == Some(generation),
    )
    .await
}

/// Every file of a ConfigMap, joined.
fn config_text(cm: &ConfigMap) -> String {
    cm.data
        .clone()
        .unwrap_or_default()
        .into_values()
        .collect::<Vec<_>>()
        .join("\n")
}

/// A users Secret (username -> password) as `spec.auth.users` refers to.
async fn create_users_secret(
    client: &Client,
    ns: &str,
    name: &str,
    user: &str,
    password: &str,
) -> Result<()> {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            user.to_string(),
            ByteString(password.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_rabbitmq_cluster_gets_every_child_with_its_content() -> Result<()> {
    let (client, ns) = setup("rmq").await?;
    create_users_secret(&client, &ns, "mqtt-users", "alice", "s3cret").await?;
    create_cluster(&client, &ns, "rmq", json!({
        "broker": {"kind": "rabbitmq", "version": "3.13.7"},
        "replicas": 3,
        "auth": {"users": {"name": "mqtt-users"},
                 "acl": [{"username": "alice", "action": "publish", "topic": "sensors/+/temp", "permission": "allow"}]},
    })).await?;
    let op = Operator::start(&client, &ns, "op-a");

    let sts: StatefulSet = wait_for(&client, &ns, "rmq", "StatefulSet rmq", |_| true).await?;
    let spec = sts.spec.clone().context("sts spec")?;
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("rmq-headless"));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(checksum(&sts).len(), 64);
    let owners = sts.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].kind, "BrokerCluster");
    let pod = spec.template.spec.context("pod spec")?;
    let c = &pod.containers[0];
    assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    assert!(c
        .ports
        .as_ref()
        .is_some_and(|p| p.iter().any(|p| p.container_port == 1883)));

    let cm: ConfigMap = wait_for(&client, &ns, "rmq-config", "ConfigMap", |_| true).await?;
    let conf = config_text(&cm);
    for ordinal in 0..3 {
        let node = format!("rabbit@rmq-{ordinal}.rmq-headless.{ns}.svc.cluster.local");
        assert!(
            conf.contains(&node),
            "the config lists {node} for discovery:\n{conf}"
        );
    }
    assert!(!conf.contains("s3cret"), "no password in the ConfigMap");

    let secret: Secret = wait_for(&client, &ns, "rmq-credentials", "Secret", |_| true).await?;
    assert_eq!(
        secret_value(&secret, "erlang-cookie").map(|c| c.len()),
        Some(64)
    );
    assert!(secret_value(&secret, "admin-password").is_some_and(|p| p.len() >= 32));
    let all_secret_files = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_values()
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        all_secret_files.contains("alice"),
        "the users reach the broker's definitions"
    );

    let headless: Service =
        wait_for(&client, &ns, "rmq-headless", "headless Service", |_| true).await?;
    let hs = headless.spec.context("headless spec")?;
    assert_eq!(hs.cluster_ip.as_deref(), Some("None"));
    assert_eq!(hs.publish_not_ready_addresses, Some(true));
    let svc: Service = wait_for(&client, &ns, "rmq", "client Service", |_| true).await?;
    assert!(svc
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .iter()
        .any(|p| p.port == 1883));
    let pdb: PodDisruptionBudget =
        wait_for(&client, &ns, "rmq", "PodDisruptionBudget", |_| true).await?;
    assert_eq!(
        pdb.spec.and_then(|s| s.max_unavailable),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );

    let bc = status_generation(&client, &ns, "rmq", 1).await?;
    let status = bc.status.clone().context("status")?;
    for t in [
        "Ready",
        "Available",
        "Progressing",
        "Degraded",
        "ReconcileSuccess",
        "Paused",
        "MembershipConsistent",
    ] {
        let c = condition(&bc, t).with_context(|| format!("condition {t}"))?;
        assert_eq!(c.observed_generation, Some(1), "{t} carries the generation");
        assert!(!c.reason.is_empty());
    }
    assert_eq!(
        condition(&bc, "ReconcileSuccess").map(|c| c.status.as_str()),
        Some("True")
    );
    // No kubelet runs here: the Pods never become ready, so the cluster is still coming up.
    assert_eq!(
        condition(&bc, "Progressing").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(
        condition(&bc, "Ready").map(|c| c.status.as_str()),
        Some("False")
    );
    assert!(status
        .endpoints
        .iter()
        .any(|e| e.address.ends_with(":1883") && e.address.starts_with("rmq.")));
    op.stop().await
}

#[tokio::test]
async fn an_emqx_cluster_gets_every_child_with_its_content() -> Result<()> {
    let (client, ns) = setup("emqx").await?;
    create_cluster(&client, &ns, "bus", json!({
        "replicas": 3,
        "auth": {"allowAnonymous": false,
                 "acl": [{"all": true, "action": "subscribe", "topic": "$SYS/#", "permission": "deny"}]},
        "session": {"maxQueuedMessages": 5000},
    })).await?;
    let op = Operator::start(&client, &ns, "op-a");
    let sts: StatefulSet = wait_for(&client, &ns, "bus", "StatefulSet bus", |_| true).await?;
    let pod = sts
        .spec
        .clone()
        .and_then(|s| s.template.spec)
        .context("pod spec")?;
    let c = &pod.containers[0];
    assert!(
        c.image.as_deref().is_some_and(|i| i.contains("emqx")),
        "{:?}",
        c.image
    );
    assert!(c
        .ports
        .as_ref()
        .is_some_and(|p| p.iter().any(|p| p.container_port == 18083)));
    let cm: ConfigMap = wait_for(&client, &ns, "bus-config", "ConfigMap", |_| true).await?;
    let conf = config_text(&cm);
    assert!(
        conf.contains("max_mqueue_len = 5000"),
        "max queued messages rendered:\n{conf}"
    );
    assert!(
        conf.contains("{deny, all, subscribe, [\"$SYS/#\"]}."),
        "ACL rendered:\n{conf}"
    );
    let headless: Service =
        wait_for(&client, &ns, "bus-headless", "headless Service", |_| true).await?;
    assert!(headless
        .spec
        .and_then(|s| s.ports)
        .unwrap_or_default()
        .iter()
        .any(|p| p.port == 4370));
    let bc = status_generation(&client, &ns, "bus", 1).await?;
    assert_eq!(
        condition(&bc, "ReconcileSuccess").map(|c| c.status.as_str()),
        Some("True")
    );
    op.stop().await
}

#[tokio::test]
async fn replicas_and_config_changes_update_the_stateful_set() -> Result<()> {
    let (client, ns) = setup("upd").await?;
    create_cluster(
        &client,
        &ns,
        "c",
        json!({"broker": {"kind": "rabbitmq"}, "replicas": 3}),
    )
    .await?;
    let op = Operator::start(&client, &ns, "op-a");
    let first: StatefulSet = wait_for(&client, &ns, "c", "StatefulSet", |_| true).await?;
    let secret_before: Secret = wait_for(&client, &ns, "c-credentials", "Secret", |_| true).await?;

    patch_spec(&client, &ns, "c", json!({"replicas": 5})).await?;
    let scaled: StatefulSet =
        wait_for(&client, &ns, "c", "5 replicas", |s| sts_replicas(s) == 5).await?;
    let scaled_sum = checksum(&scaled);
    let _ = status_generation(&client, &ns, "c", 2).await?;

    patch_spec(
        &client,
        &ns,
        "c",
        json!({"session": {"maxQueuedMessages": 42}}),
    )
    .await?;
    let changed: StatefulSet = wait_for(&client, &ns, "c", "a new config checksum", |s| {
        checksum(s) != scaled_sum
    })
    .await?;
    assert_ne!(checksum(&changed), checksum(&first));
    let bc = status_generation(&client, &ns, "c", 3).await?;
    for c in &bc.status.clone().context("status")?.conditions {
        if c.type_ != "MembershipConsistent" {
            assert_eq!(
                c.observed_generation,
                Some(3),
                "{} follows the generation",
                c.type_
            );
        }
    }
    wait_for::<PodDisruptionBudget>(&client, &ns, "c", "the PodDisruptionBudget", |_| true).await?;
    patch_spec(&client, &ns, "c", json!({"replicas": 1})).await?;
    wait_gone::<PodDisruptionBudget>(&client, &ns, "c").await?;
    wait_for::<StatefulSet>(&client, &ns, "c", "1 replica", |s| sts_replicas(s) == 1).await?;
    let secret_after: Secret = wait_for(&client, &ns, "c-credentials", "Secret", |_| true).await?;
    assert_eq!(
        secret_value(&secret_before, "erlang-cookie"),
        secret_value(&secret_after, "erlang-cookie"),
        "reconciles never rotate the cookie"
    );
    assert_eq!(
        secret_value(&secret_before, "admin-password"),
        secret_value(&secret_after, "admin-password")
    );
    op.stop().await
}

#[tokio::test]
async fn deleted_children_come_back_and_hand_edits_are_put_back() -> Result<()> {
    let (client, ns) = setup("heal").await?;
    create_cluster(&client, &ns, "h", json!({"broker": {"kind": "rabbitmq"}})).await?;
    let op = Operator::start(&client, &ns, "op-a");
    let cm: ConfigMap = wait_for(&client, &ns, "h-config", "ConfigMap", |_| true).await?;
    let uid = cm.metadata.uid.clone();
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .delete("h-config", &DeleteParams::default())
        .await?;
    wait_for::<ConfigMap>(&client, &ns, "h-config", "a recreated ConfigMap", |c| {
        c.metadata.uid != uid
    })
    .await?;

    let _: Service = wait_for(&client, &ns, "h-headless", "headless Service", |_| true).await?;
    Api::<Service>::namespaced(client.clone(), &ns)
        .patch("h-headless", &PatchParams::apply("kubectl-edit").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service", "spec": {"publishNotReadyAddresses": false}})))
        .await?;
    wait_for::<Service>(
        &client,
        &ns,
        "h-headless",
        "publishNotReadyAddresses put back",
        |s| s.spec.as_ref().and_then(|s| s.publish_not_ready_addresses) == Some(true),
    )
    .await?;

    Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .patch(
            "h",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await?;
    wait_for::<StatefulSet>(&client, &ns, "h", "replicas put back to 3", |s| {
        sts_replicas(s) == 3
    })
    .await?;
    op.stop().await
}

#[tokio::test]
async fn the_pause_annotation_stops_writes_and_sets_paused() -> Result<()> {
    let (client, ns) = setup("pause").await?;
    create_cluster(&client, &ns, "p", json!({"broker": {"kind": "rabbitmq"}})).await?;
    let op = Operator::start(&client, &ns, "op-a");
    wait_for::<StatefulSet>(&client, &ns, "p", "StatefulSet", |_| true).await?;
    let api: Api<BrokerCluster> = Api::namespaced(client.clone(), &ns);
    api.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"mooring.dev/paused": "true"}}})),
    )
    .await?;
    wait_for::<BrokerCluster>(&client, &ns, "p", "Paused=True", |bc| {
        condition(bc, "Paused").is_some_and(|c| c.status == "True")
    })
    .await?;
    patch_spec(&client, &ns, "p", json!({"replicas": 4})).await?;
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .delete("p-config", &DeleteParams::default())
        .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sts: StatefulSet = get(&client, &ns, "p").await?.context("sts")?;
    assert_eq!(sts_replicas(&sts), 3, "no write while paused");
    assert!(
        get::<ConfigMap>(&client, &ns, "p-config").await?.is_none(),
        "no child recreated while paused"
    );
    let bc: BrokerCluster = get(&client, &ns, "p").await?.context("bc")?;
    assert_eq!(
        bc.status.as_ref().and_then(|s| s.observed_generation),
        Some(1),
        "the new generation was not acted on"
    );
    assert_eq!(
        condition(&bc, "Paused").and_then(|c| c.observed_generation),
        Some(2)
    );

    api.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"mooring.dev/paused": null}}})),
    )
    .await?;
    wait_for::<StatefulSet>(&client, &ns, "p", "replicas 4 after resuming", |s| {
        sts_replicas(s) == 4
    })
    .await?;
    wait_for::<ConfigMap>(
        &client,
        &ns,
        "p-config",
        "ConfigMap back after resuming",
        |_| true,
    )
    .await?;
    wait_for::<BrokerCluster>(&client, &ns, "p", "Paused=False", |bc| {
        condition(bc, "Paused").is_some_and(|c| c.status == "False")
    })
    .await?;
    op.stop().await
}

#[tokio::test]
async fn deleting_the_cluster_removes_its_children_and_volumes_follow_the_policy() -> Result<()> {
    let (client, ns) = setup("del").await?;
    for (name, policy) in [("keep", "Retain"), ("drop", "Delete")] {
        create_cluster(
            &client,
            &ns,
            name,
            json!({
                "broker": {"kind": "rabbitmq"}, "replicas": 1,
                "persistence": {"enabled": true, "size": "1Gi", "reclaimPolicy": policy},
            }),
        )
        .await?;
    }
    let op = Operator::start(&client, &ns, "op-a");
    for name in ["keep", "drop"] {
        // The StatefulSet controller creates each Pod's claim (no kubelet runs the Pod).
        wait_for::<PersistentVolumeClaim>(&client, &ns, &format!("data-{name}-0"), "claim", |_| {
            true
        })
        .await?;
    }
    let api: Api<BrokerCluster> = Api::namespaced(client.clone(), &ns);
    for name in ["keep", "drop"] {
        api.delete(name, &DeleteParams::background()).await?;
    }
    for name in ["keep", "drop"] {
        wait_gone::<StatefulSet>(&client, &ns, name).await?;
        wait_gone::<ConfigMap>(&client, &ns, &format!("{name}-config")).await?;
        wait_gone::<Secret>(&client, &ns, &format!("{name}-credentials")).await?;
        wait_gone::<Service>(&client, &ns, &format!("{name}-headless")).await?;
        wait_gone::<Service>(&client, &ns, name).await?;
    }
    wait_gone::<PersistentVolumeClaim>(&client, &ns, "data-drop-0").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        get::<PersistentVolumeClaim>(&client, &ns, "data-keep-0")
            .await?
            .is_some(),
        "reclaimPolicy Retain keeps the claim"
    );
    op.stop().await
}

#[tokio::test]
async fn a_missing_secret_is_reported_and_the_cluster_recovers_once_it_exists() -> Result<()> {
    let (client, ns) = setup("sec").await?;
    create_cluster(
        &client,
        &ns,
        "s",
        json!({"broker": {"kind": "rabbitmq"}, "auth": {"users": {"name": "later"}}}),
    )
    .await?;
    let op = Operator::start(&client, &ns, "op-a");
    let bc = wait_for::<BrokerCluster>(&client, &ns, "s", "ReconcileSuccess=False", |bc| {
        condition(bc, "ReconcileSuccess").is_some_and(|c| c.status == "False")
    })
    .await?;
    let c = condition(&bc, "ReconcileSuccess").context("condition")?;
    assert_eq!(c.reason, "SecretNotFound");
    assert!(
        c.message.contains("auth.users") && c.message.contains("later"),
        "{}",
        c.message
    );
    assert_eq!(
        condition(&bc, "Degraded").map(|c| c.status.as_str()),
        Some("True")
    );
    let events = eventually("a SecretNotFound event", || async {
        let list = Api::<Event>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().fields("involvedObject.name=s"))
            .await?;
        Ok(list
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("SecretNotFound")))
    })
    .await?;
    assert_eq!(events.type_.as_deref(), Some("Warning"));

    create_users_secret(&client, &ns, "later", "bob", "pw").await?;
    wait_for::<BrokerCluster>(
        &client,
        &ns,
        "s",
        "ReconcileSuccess=True after the Secret appears",
        |bc| condition(bc, "ReconcileSuccess").is_some_and(|c| c.status == "True"),
    )
    .await?;
    op.stop().await
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_a_standby_takes_over() -> Result<()> {
    let (client, ns) = setup("lead").await?;
    let a = Operator::start(&client, &ns, "op-a");
    let lease: Lease = wait_for(
        &client,
        &ns,
        "mooring-operator",
        "a lease holder",
        |l: &Lease| {
            l.spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .is_some()
        },
    )
    .await?;
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("op-a")
    );
    let b = Operator::start(&client, &ns, "op-b");
    create_cluster(&client, &ns, "l", json!({"broker": {"kind": "rabbitmq"}})).await?;
    wait_for::<StatefulSet>(&client, &ns, "l", "StatefulSet", |_| true).await?;
    let still: Lease = get(&client, &ns, "mooring-operator")
        .await?
        .context("lease")?;
    assert_eq!(
        still.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("op-a"),
        "the standby does not take the lease"
    );

    a.stop().await?;
    wait_for::<Lease>(
        &client,
        &ns,
        "mooring-operator",
        "op-b holding the lease",
        |l| l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some("op-b"),
    )
    .await?;
    patch_spec(&client, &ns, "l", json!({"replicas": 5})).await?;
    wait_for::<StatefulSet>(
        &client,
        &ns,
        "l",
        "the new leader applying replicas 5",
        |s| sts_replicas(s) == 5,
    )
    .await?;
    b.stop().await
}

#[tokio::test]
async fn the_load_balancer_follows_spec_load_balancer() -> Result<()> {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let (client, ns) = setup("lb").await?;
    create_cluster(
        &client,
        &ns,
        "bus",
        json!({
            "broker": {"kind": "rabbitmq"}, "replicas": 3,
            "loadBalancer": {"enabled": true, "replicas": 2, "serviceType": "NodePort"},
        }),
    )
    .await?;
    let op = Operator::start(&client, &ns, "op-a");
    let sts =
        wait_for::<StatefulSet>(&client, &ns, "bus-lb", "the LB StatefulSet", |_| true).await?;
    let spec = sts.spec.clone().context("LB spec")?;
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(spec.service_name.as_deref(), Some("bus-lb-headless"));
    let containers: Vec<String> = spec
        .template
        .spec
        .context("pod spec")?
        .containers
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(containers, ["haproxy", "agent"]);
    let svc = wait_for::<Service>(&client, &ns, "bus-lb", "the LB Service", |_| true).await?;
    assert_eq!(svc.spec.and_then(|s| s.type_).as_deref(), Some("NodePort"));
    wait_for::<Service>(
        &client,
        &ns,
        "bus-lb-headless",
        "the peers' Service",
        |_| true,
    )
    .await?;
    wait_for::<ServiceAccount>(&client, &ns, "bus-lb", "the agent's account", |_| true).await?;
    wait_for::<Role>(&client, &ns, "bus-lb", "the agent's Role", |_| true).await?;
    wait_for::<RoleBinding>(&client, &ns, "bus-lb", "the agent's RoleBinding", |_| true).await?;
    wait_for::<PodDisruptionBudget>(&client, &ns, "bus-lb", "the LB budget", |_| true).await?;
    // The broker's own budget is still there (the LB's cleanup must not take it).
    wait_for::<PodDisruptionBudget>(&client, &ns, "bus", "the broker budget", |_| true).await?;
    let bc = wait_for::<BrokerCluster>(&client, &ns, "bus", "the LB endpoint", |bc| {
        bc.status
            .as_ref()
            .is_some_and(|s| s.endpoints.iter().any(|e| e.name == "loadBalancer"))
    })
    .await?;
    let endpoint = bc
        .status
        .context("status")?
        .endpoints
        .into_iter()
        .find(|e| e.name == "loadBalancer")
        .context("loadBalancer endpoint")?;
    assert_eq!(
        endpoint.address,
        format!("bus-lb.{ns}.svc.cluster.local:1883")
    );

    // One replica: no budget. Disabled: everything goes.
    patch_spec(
        &client,
        &ns,
        "bus",
        json!({"loadBalancer": {"replicas": 1}}),
    )
    .await?;
    wait_gone::<PodDisruptionBudget>(&client, &ns, "bus-lb").await?;
    patch_spec(
        &client,
        &ns,
        "bus",
        json!({"loadBalancer": {"enabled": false}}),
    )
    .await?;
    wait_gone::<StatefulSet>(&client, &ns, "bus-lb").await?;
    wait_gone::<Service>(&client, &ns, "bus-lb").await?;
    wait_gone::<Service>(&client, &ns, "bus-lb-headless").await?;
    wait_gone::<RoleBinding>(&client, &ns, "bus-lb").await?;
    wait_gone::<Role>(&client, &ns, "bus-lb").await?;
    wait_gone::<ServiceAccount>(&client, &ns, "bus-lb").await?;
    assert!(get::<Service>(&client, &ns, "bus").await?.is_some());
    assert!(get::<PodDisruptionBudget>(&client, &ns, "bus")
        .await?
        .is_some());
    op.stop().await
}
