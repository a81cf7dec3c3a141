//! The BrokerCluster API as a real kube-apiserver enforces it: the CRD installs, valid objects are
//! accepted and defaulted, invalid ones are rejected with a message that names the field.
//!
//! All tests share one control plane (started by the first test, ~3 s); each test takes its own
//! client (clients are bound to the test's runtime) and works in its own namespace.

use anyhow::{bail, Context, Result};
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Client};
use mooring_crds::{BrokerCluster, BrokerKind, TOPIC_FILTER_MESSAGE};
use mooring_tests::{
    create_unique_namespace, install_crd, ControlPlaneOptions, SharedControlPlane, CRD_NAME,
};
use serde_json::{json, Value};

static CP: SharedControlPlane = SharedControlPlane::new(ControlPlaneOptions::default);

/// A client of the shared control plane with the CRD installed, and a fresh namespace.
async fn setup(prefix: &str) -> Result<(Client, String)> {
    let cp = CP.get().await?;
    let client = cp.client().await?;
    install_crd(&client).await?;
    let ns = create_unique_namespace(&client, prefix).await?;
    Ok((client, ns))
}

fn dynamic_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<BrokerCluster>(&());
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// The spec for a failure message, cut to a readable length.
fn show(spec: &Value) -> String {
    let text = spec.to_string();
    match text.char_indices().nth(400) {
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], text.len()),
        None => text,
    }
}

fn broker_cluster(name: &str, spec: Value) -> Result<DynamicObject> {
    serde_json::from_value(json!({
        "apiVersion": "mooring.dev/v1alpha1",
        "kind": "BrokerCluster",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .context("test object does not parse as a DynamicObject")
}

/// Creates `spec` and expects the API server to refuse it as invalid, with a message containing
/// every one of `expected` (the field path and the rule's message).
async fn expect_rejected(name: &str, spec: Value, expected: &[&str]) -> Result<()> {
    let (client, ns) = setup(name).await?;
    let api = dynamic_api(&client, &ns);
    let obj = broker_cluster(name, spec.clone())?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => bail!(
            "the API server accepted an invalid BrokerCluster: spec {}",
            show(&spec)
        ),
        Err(kube::Error::Api(status)) => {
            let missing: Vec<&&str> = expected
                .iter()
                .filter(|e| !status.message.contains(**e))
                .collect();
            if status.code != 422 || status.reason != "Invalid" || !missing.is_empty() {
                bail!(
                    "spec {} was rejected, but not as expected.\n  code {} reason {:?}\n  \
                     message: {}\n  missing from the message: {missing:?}",
                    show(&spec),
                    status.code,
                    status.reason,
                    status.message
                );
            }
            eprintln!("rejected as expected: {}", status.message);
            Ok(())
        }
        Err(e) => {
            Err(e).with_context(|| format!("creating spec {} failed unexpectedly", show(&spec)))
        }
    }
}

/// Creates `spec`, expects it accepted, and returns it as stored (defaults applied).
async fn expect_accepted(name: &str, spec: Value) -> Result<BrokerCluster> {
    let (client, ns) = setup(name).await?;
    let obj = broker_cluster(name, spec.clone())?;
    dynamic_api(&client, &ns)
        .create(&PostParams::default(), &obj)
        .await
        .with_context(|| {
            format!(
                "the API server refused a valid BrokerCluster: spec {}",
                show(&spec)
            )
        })?;
    let typed: Api<BrokerCluster> = Api::namespaced(client, &ns);
    typed
        .get(name)
        .await
        .with_context(|| format!("cannot read back {ns}/{name} as a BrokerCluster"))
}

#[tokio::test]
async fn crd_installs_and_is_established() -> Result<()> {
    let cp = CP.get().await?;
    eprintln!("shared control plane started in {:?}", cp.started_in());
    let client = cp.client().await?;
    let crd = install_crd(&client).await?;
    assert_eq!(crd.metadata.name.as_deref(), Some(CRD_NAME));
    // Applying it again is a no-op, not an error.
    install_crd(&client).await?;
    Ok(())
}

#[tokio::test]
async fn minimal_emqx_cluster_is_accepted_and_defaulted() -> Result<()> {
    let bc = expect_accepted("minimal-emqx", json!({ "broker": { "kind": "emqx" } })).await?;
    assert_eq!(bc.spec.broker.kind, BrokerKind::Emqx);
    assert_eq!(bc.spec.replicas, 3, "replicas default");
    assert_eq!(bc.spec.listeners.mqtt.port, 1883, "mqtt port default");
    assert!(bc.spec.listeners.mqtt.enabled);
    assert_eq!(
        bc.spec.listeners.websocket.port, 8083,
        "websocket port default"
    );
    assert!(bc.spec.listeners.websocket.enabled);
    assert_eq!(bc.spec.session.max_queued_messages, 1000);
    assert!(bc.spec.repair.enabled);
    Ok(())
}

#[tokio::test]
async fn empty_spec_defaults_to_emqx() -> Result<()> {
    let bc = expect_accepted("empty-spec", json!({})).await?;
    assert_eq!(bc.spec.broker.kind, BrokerKind::Emqx);
    assert_eq!(bc.spec.replicas, 3);
    Ok(())
}

#[tokio::test]
async fn minimal_rabbitmq_cluster_is_accepted_and_defaulted() -> Result<()> {
    let bc = expect_accepted(
        "minimal-rabbitmq",
        json!({ "broker": { "kind": "rabbitmq" } }),
    )
    .await?;
    assert_eq!(bc.spec.broker.kind, BrokerKind::Rabbitmq);
    assert_eq!(bc.spec.replicas, 3, "replicas default");
    assert_eq!(bc.spec.listeners.mqtt.port, 1883, "mqtt port default");
    assert_eq!(
        bc.spec.listeners.websocket.port, 8083,
        "websocket port default"
    );
    Ok(())
}

#[tokio::test]
async fn rabbitmq_with_allow_acl_is_accepted() -> Result<()> {
    expect_accepted(
        "rabbitmq-acl",
        json!({
            "broker": { "kind": "rabbitmq" },
            "auth": { "acl": [
                { "username": "sensor", "action": "publish", "topic": "sensors/+/temp", "permission": "allow" },
                { "all": true, "action": "subscribe", "topic": "#", "permission": "allow" }
            ] }
        }),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn rejects_deny_acl_with_rabbitmq() -> Result<()> {
    expect_rejected(
        "rabbitmq-deny",
        json!({
            "broker": { "kind": "rabbitmq" },
            "auth": { "acl": [
                { "all": true, "action": "all", "topic": "secret/#", "permission": "deny" }
            ] }
        }),
        &[
            "spec.auth.acl",
            "rabbitmq topic authorisation can only allow",
        ],
    )
    .await
}

/// The largest ACL the schema allows (256 rules of 4096-character topics) stays within the API
/// server's runtime CEL cost budget.
#[tokio::test]
async fn accepts_acl_at_its_size_limits() -> Result<()> {
    let level = "x".repeat(4094);
    let rules: Vec<Value> = (0..256)
        .map(|i| {
            json!({ "username": format!("u{i}"), "action": "all", "topic": format!("{level}/+"), "permission": "allow" })
        })
        .collect();
    expect_accepted(
        "acl-limits",
        json!({ "broker": { "kind": "rabbitmq" }, "auth": { "acl": rules } }),
    )
    .await?;
    Ok(())
}

/// 512 metered topics (the maximum) of 2 KiB each stay within the runtime CEL budget. (At 4 KiB
/// each, the object is larger than etcd stores, 1.5 MiB by default.)
#[tokio::test]
async fn accepts_a_megabyte_of_metered_topics() -> Result<()> {
    let topics: Vec<String> = (0..512)
        .map(|i| format!("{i:04}{}", "y".repeat(2044)))
        .collect();
    expect_accepted(
        "metered-limits",
        json!({ "monitoring": { "meteredTopics": topics } }),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn rejects_acl_topic_longer_than_4096() -> Result<()> {
    expect_rejected(
        "acl-topic-too-long",
        json!({ "auth": { "acl": [
            { "all": true, "action": "all", "topic": "z".repeat(4097), "permission": "allow" }
        ] } }),
        &["spec.auth.acl[0].topic", "may not be more than 4096"],
    )
    .await
}

#[tokio::test]
async fn rejects_zero_replicas() -> Result<()> {
    expect_rejected(
        "zero-replicas",
        json!({ "replicas": 0 }),
        &["spec.replicas", "should be greater than or equal to 1"],
    )
    .await
}

#[tokio::test]
async fn rejects_unknown_broker_kind() -> Result<()> {
    expect_rejected(
        "kafka",
        json!({ "broker": { "kind": "kafka" } }),
        &["spec.broker.kind", "Unsupported value: \"kafka\""],
    )
    .await
}

#[tokio::test]
async fn rejects_hash_wildcard_before_the_last_level() -> Result<()> {
    expect_rejected(
        "acl-hash-middle",
        json!({ "auth": { "acl": [
            { "all": true, "action": "subscribe", "topic": "a/#/b", "permission": "allow" }
        ] } }),
        &["spec.auth.acl[0].topic", TOPIC_FILTER_MESSAGE],
    )
    .await
}

#[tokio::test]
async fn rejects_plus_wildcard_inside_a_level() -> Result<()> {
    expect_rejected(
        "acl-plus-partial",
        json!({ "auth": { "acl": [
            { "username": "u", "action": "publish", "topic": "ok/+", "permission": "allow" },
            { "username": "u", "action": "publish", "topic": "+x", "permission": "deny" }
        ] } }),
        &["spec.auth.acl[1].topic", TOPIC_FILTER_MESSAGE],
    )
    .await
}

#[tokio::test]
async fn rejects_listener_port_above_65535() -> Result<()> {
    expect_rejected(
        "port-70000",
        json!({ "listeners": { "mqtt": { "port": 70000 } } }),
        &[
            "spec.listeners.mqtt.port",
            "should be less than or equal to 65535",
        ],
    )
    .await
}

#[tokio::test]
async fn rejects_tls_listener_secret_ref_without_name() -> Result<()> {
    expect_rejected(
        "tls-no-secret-name",
        json!({ "listeners": { "tls": { "port": 8883, "secretRef": {} } } }),
        &["spec.listeners.tls.secretRef.name", "Required value"],
    )
    .await
}

#[tokio::test]
async fn rejects_jwt_auth_with_rabbitmq() -> Result<()> {
    expect_rejected(
        "rabbitmq-jwt",
        json!({
            "broker": { "kind": "rabbitmq" },
            "auth": { "jwt": { "secretRef": { "name": "jwt", "key": "secret" } } }
        }),
        &[
            "spec.auth.jwt",
            "auth.jwt is supported for broker kind emqx only",
        ],
    )
    .await
}

#[tokio::test]
async fn rejects_wildcard_metered_topic() -> Result<()> {
    expect_rejected(
        "metered-wildcard",
        json!({ "monitoring": { "meteredTopics": ["a/b", "a/+"] } }),
        &[
            "spec.monitoring.meteredTopics",
            "metered topics must be exact topics, without + or #",
        ],
    )
    .await
}

#[tokio::test]
async fn rejects_changing_the_broker_kind() -> Result<()> {
    let (client, ns) = setup("kindchange").await?;
    let api = dynamic_api(&client, &ns);
    api.create(
        &PostParams::default(),
        &broker_cluster("k", json!({"broker": {"kind": "emqx"}}))?,
    )
    .await?;
    let err = api
        .patch(
            "k",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"broker": {"kind": "rabbitmq"}}})),
        )
        .await
        .err()
        .context("the API server accepted a change of broker kind")?;
    let message = err.to_string();
    assert!(
        message.contains("spec.broker.kind") && message.contains("cannot be changed"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn proxy_protocol_defaults_off_and_is_accepted_with_the_load_balancer() -> Result<()> {
    let bc = expect_accepted(
        "proxy-protocol",
        json!({
            "broker": { "kind": "rabbitmq" },
            "loadBalancer": { "enabled": true, "proxyProtocol": true }
        }),
    )
    .await?;
    assert!(bc.spec.load_balancer.proxy_protocol);
    let plain = expect_accepted("proxy-protocol-default", json!({})).await?;
    assert!(!plain.spec.load_balancer.proxy_protocol, "default off");
    Ok(())
}

#[tokio::test]
async fn rejects_proxy_protocol_without_the_load_balancer() -> Result<()> {
    expect_rejected(
        "proxy-protocol-no-lb",
        json!({ "loadBalancer": { "proxyProtocol": true } }),
        &[
            "spec.loadBalancer.proxyProtocol",
            "loadBalancer.proxyProtocol needs loadBalancer.enabled",
        ],
    )
    .await
}
