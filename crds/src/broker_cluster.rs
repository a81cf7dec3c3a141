//! The `BrokerCluster` kind: one clustered MQTT broker (EMQX or RabbitMQ) and what Mooring runs around it.
//!
//! Doc comments here become the schema descriptions `kubectl explain` shows. Validation that the API
//! server enforces lives next to the fields it guards: schemars attributes for ranges and lengths, CEL
//! rules (`x_kube(validation = ...)`) for anything that spans fields or needs a pattern with a message.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::BrokerClusterStatus;

/// The CEL rule every MQTT topic filter must pass: `#` only as the whole last level, `+` only as a
/// whole level, no empty filter and no NUL.
pub const TOPIC_FILTER_RULE: &str =
    r"self.matches('^(#|(\\+|[^+#/\\x00]*)(/(\\+|[^+#/\\x00]*))*(/#)?)$') && size(self) > 0";
/// The message the API server returns when [`TOPIC_FILTER_RULE`] fails.
pub const TOPIC_FILTER_MESSAGE: &str =
    "must be a valid MQTT topic filter: '#' only as the whole last level, '+' only as a whole level";

/// Desired state of a clustered MQTT broker managed by Mooring.
// clippy reads the repeated `type_ = ...` of the printcolumns below as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mooring.dev",
    version = "v1alpha1",
    kind = "BrokerCluster",
    namespaced,
    shortname = "bc",
    category = "mooring",
    status = "BrokerClusterStatus",
    derive = "PartialEq",
    doc = "A clustered MQTT broker (EMQX or RabbitMQ) that Mooring runs, keeps clustered and load-balances.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(name = "Broker", type_ = "string", json_path = ".spec.broker.kind"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.broker.version"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Members",
        type_ = "string",
        description = "Whether every broker node sees the same cluster members",
        json_path = ".status.conditions[?(@.type==\"MembershipConsistent\")].status"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = kube::core::Rule::new("self.broker.kind == oldSelf.broker.kind")
        .message("broker.kind cannot be changed: create a new BrokerCluster and move clients to it")
        .field_path(".broker.kind"),
    validation = kube::core::Rule::new("self.broker.kind != 'rabbitmq' || !has(self.auth.jwt)")
        .message("auth.jwt is supported for broker kind emqx only")
        .field_path(".auth.jwt"),
    validation = kube::core::Rule::new("self.broker.kind != 'rabbitmq' || !self.session.exclusiveSubscriptions")
        .message("session.exclusiveSubscriptions is supported for broker kind emqx only")
        .field_path(".session.exclusiveSubscriptions"),
    // `acl` is omitted when empty, and CEL fails on a missing key: hence the has() guard.
    validation = kube::core::Rule::new("self.broker.kind != 'rabbitmq' || !has(self.auth.acl) || self.auth.acl.all(r, r.permission == 'allow')")
        .message("rabbitmq topic authorisation can only allow: list what to allow and leave the rest denied")
        .field_path(".auth.acl"),
)]
#[serde(rename_all = "camelCase")]
pub struct BrokerClusterSpec {
    /// Which broker runs the cluster, from which image, at which version.
    #[serde(default)]
    pub broker: BrokerSpec,

    /// Number of broker nodes. Use an odd number (3, 5) so that a majority survives one node's loss.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 99))]
    pub replicas: i32,

    /// Client listeners. MQTT over TCP is always on; WebSocket, TLS and WSS are optional.
    #[serde(default)]
    pub listeners: ListenersSpec,

    /// Who may connect and what they may publish or subscribe to.
    #[serde(default)]
    pub auth: AuthSpec,

    /// Per-client session settings.
    #[serde(default)]
    pub session: SessionSpec,

    /// Where the broker keeps its data, and what happens to it when the cluster is deleted.
    #[serde(default)]
    pub persistence: PersistenceSpec,

    /// CPU and memory for each broker container. The broker's memory limit is derived from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels a broker Pod's node must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations for the broker Pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Affinity for the broker Pods. When unset, Mooring prefers to spread them over nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Extra environment variables for the broker container. They come after Mooring's own, so they
    /// win on a name clash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// Raw broker configuration appended after everything Mooring renders, so it wins on a clash.
    /// EMQX: HOCON keys (`mqtt.max_packet_size: 2MB`). RabbitMQ: rabbitmq.conf keys
    /// (`mqtt.prefetch: 20`). A change rolls the broker Pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_overrides: BTreeMap<String, String>,

    /// The sticky MQTT load balancer (HAProxy) Mooring runs in front of the cluster.
    #[serde(default)]
    pub load_balancer: LoadBalancerSpec,

    /// Continuous cluster-membership repair.
    #[serde(default)]
    pub repair: RepairSpec,

    /// Telemetry, metered topics and alerting.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
}

fn default_replicas() -> i32 {
    3
}

/// The broker software.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSpec {
    /// The broker kind: `emqx` or `rabbitmq` (RabbitMQ with its MQTT plugin).
    #[serde(default)]
    pub kind: BrokerKind,

    /// Container image. Defaults to the broker's official image at `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Broker version, used for the default image and to render version-specific configuration
    /// (for example EMQX before and after 5.5). Defaults to 5.8.9 for EMQX and 3.13.7 for RabbitMQ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9]+\\\\.[0-9]+(\\\\.[0-9]+)?([-+.][0-9A-Za-z.-]+)?$')")
        .message("must be a version such as 5.8.9 or 3.13.7"))]
    pub version: Option<String>,
}

impl Default for BrokerSpec {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Emqx,
            image: None,
            version: None,
        }
    }
}

/// A supported broker.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// EMQX 5.
    #[default]
    Emqx,
    /// RabbitMQ 3.10 or later with the MQTT and management plugins.
    Rabbitmq,
}

impl BrokerKind {
    /// The lowercase name used in the API and in labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Emqx => "emqx",
            BrokerKind::Rabbitmq => "rabbitmq",
        }
    }
}

/// Client listeners of every broker node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = kube::core::Rule::new(
        "[self.mqtt.port, self.websocket.port].all(p, p != (has(self.tls) ? self.tls.port : 0) && p != (has(self.wss) ? self.wss.port : 0)) && (!has(self.tls) || !has(self.wss) || self.tls.port != self.wss.port) && (!self.websocket.enabled || self.mqtt.port != self.websocket.port)"
    ).message("listener ports must be distinct"),
)]
#[serde(rename_all = "camelCase")]
pub struct ListenersSpec {
    /// MQTT over TCP.
    #[serde(default = "ListenerSpec::mqtt")]
    pub mqtt: ListenerSpec,
    /// MQTT over WebSocket (path `/mqtt` on EMQX, `/ws` on RabbitMQ).
    #[serde(default = "ListenerSpec::websocket")]
    pub websocket: ListenerSpec,
    /// MQTT over TLS, with the certificate from a Secret. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsListenerSpec>,
    /// MQTT over secure WebSocket, with the certificate from a Secret. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wss: Option<TlsListenerSpec>,
}

impl Default for ListenersSpec {
    fn default() -> Self {
        Self {
            mqtt: ListenerSpec::mqtt(),
            websocket: ListenerSpec::websocket(),
            tls: None,
            wss: None,
        }
    }
}

/// A plain listener.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSpec {
    /// Whether the listener is on. The MQTT TCP listener cannot be turned off.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Container port, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl ListenerSpec {
    fn mqtt() -> Self {
        Self {
            enabled: true,
            port: 1883,
        }
    }
    fn websocket() -> Self {
        Self {
            enabled: true,
            port: 8083,
        }
    }
}

/// A TLS listener.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsListenerSpec {
    /// Container port, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// A Secret of type kubernetes.io/tls (keys `tls.crt`, `tls.key`, optionally `ca.crt`) in the
    /// cluster's namespace.
    pub secret_ref: SecretRef,
}

/// A reference to a Secret in the BrokerCluster's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret, where the field needs a single value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// Client authentication and topic authorisation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Let clients connect without credentials. Off by default.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Username/password users: every key of the Secret is a username, its value the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<SecretRef>,
    /// JWT authentication with an HMAC secret (EMQX only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuthSpec>,
    /// Topic authorisation rules, checked in order; the first match decides. Clients that match no
    /// rule are denied. RabbitMQ supports allow rules only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub acl: Vec<AclRule>,
}

/// JWT authentication with an HMAC-signed token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtAuthSpec {
    /// The HMAC secret: a Secret name and the key holding the secret.
    #[x_kube(validation = kube::core::Rule::new("has(self.key)").message("jwt.secretRef needs a key"))]
    pub secret_ref: SecretRef,
    /// Which CONNECT field carries the token: `password` (default) or `username`.
    #[serde(default)]
    pub from: JwtFrom,
}

/// Where the token is taken from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum JwtFrom {
    /// The CONNECT password.
    #[default]
    Password,
    /// The CONNECT username.
    Username,
}

/// One topic authorisation rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("[has(self.username), has(self.clientId), has(self.all) && self.all].exists_one(x, x)")
    .message("an ACL rule names exactly one of username, clientId or all: true"))]
#[serde(rename_all = "camelCase")]
pub struct AclRule {
    /// Applies to this username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub username: Option<String>,
    /// Applies to this client id (EMQX only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub client_id: Option<String>,
    /// Applies to every client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// What the rule covers: `publish`, `subscribe` or `all`.
    pub action: AclAction,
    /// MQTT topic filter: `+` matches one level, `#` the rest (last level only). At most 4096
    /// characters.
    // The max length bounds the API server's CEL cost estimate of the rule below (with 65535 the
    // CRD was rejected: "estimated rule cost exceeds budget by factor of 8.1x").
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = kube::core::Rule::new(TOPIC_FILTER_RULE).message(TOPIC_FILTER_MESSAGE))]
    pub topic: String,
    /// `allow` or `deny`.
    pub permission: AclPermission,
}

/// What an ACL rule covers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AclAction {
    /// PUBLISH only.
    Publish,
    /// SUBSCRIBE only.
    Subscribe,
    /// Both.
    All,
}

/// Whether an ACL rule allows or denies.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AclPermission {
    /// Allow.
    Allow,
    /// Deny.
    Deny,
}

/// Per-client session settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionSpec {
    /// Most messages queued for an offline or slow client before the oldest are dropped (EMQX
    /// `mqtt.max_mqueue_len`; RabbitMQ `max-length` on the subscription queues). 0 means unlimited.
    #[serde(default = "default_max_queued")]
    #[schemars(range(min = 0, max = 10_000_000))]
    pub max_queued_messages: i64,
    /// How long a disconnected client's session is kept, in seconds (MQTT 3 clients; MQTT 5 clients
    /// send their own, capped by the broker).
    #[serde(default = "default_session_expiry")]
    #[schemars(range(min = 0, max = 4_294_967))]
    pub expiry_seconds: i64,
    /// Allow `$exclusive/<topic>` subscriptions (EMQX only).
    #[serde(default)]
    pub exclusive_subscriptions: bool,
}

fn default_max_queued() -> i64 {
    1000
}
fn default_session_expiry() -> i64 {
    7200
}

impl Default for SessionSpec {
    fn default() -> Self {
        Self {
            max_queued_messages: default_max_queued(),
            expiry_seconds: default_session_expiry(),
            exclusive_subscriptions: false,
        }
    }
}

/// Broker data storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("!self.enabled || has(self.size)")
    .message("persistence.size is required when persistence is enabled"))]
#[serde(rename_all = "camelCase")]
pub struct PersistenceSpec {
    /// Keep broker data on a PersistentVolumeClaim per node. When off, data lives in an emptyDir and
    /// is lost with the Pod.
    #[serde(default)]
    pub enabled: bool,
    /// StorageClass of the claims; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Size of each node's claim, for example `10Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// What happens to the claims when the BrokerCluster is deleted: `Retain` (default) keeps them,
    /// `Delete` removes them.
    #[serde(default)]
    pub reclaim_policy: VolumeReclaimPolicy,
}

impl Default for PersistenceSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            storage_class_name: None,
            size: None,
            reclaim_policy: VolumeReclaimPolicy::Retain,
        }
    }
}

/// What happens to volumes when their BrokerCluster is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VolumeReclaimPolicy {
    /// Keep the claims (and the data).
    #[default]
    Retain,
    /// Delete the claims with the cluster.
    Delete,
}

/// The sticky MQTT load balancer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("!self.proxyProtocol || self.enabled")
    .message("loadBalancer.proxyProtocol needs loadBalancer.enabled: without the load balancer no client could send the PROXY header the brokers would require")
    .field_path(".proxyProtocol"))]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    /// Run HAProxy in front of the cluster, sticky by MQTT client id.
    #[serde(default)]
    pub enabled: bool,
    /// HAProxy replicas; they share the stick table.
    #[serde(default = "default_lb_replicas")]
    #[schemars(range(min = 1, max = 9))]
    pub replicas: i32,
    /// Type of the Service in front of HAProxy.
    #[serde(default)]
    pub service_type: ServiceType,
    /// How long a client id stays pinned to a node after its last new connection, in seconds.
    /// Keep it well above the session expiry. At most 2147483 (about 24.8 days, HAProxy's
    /// largest timer).
    #[serde(default = "default_stickiness")]
    #[schemars(range(min = 60, max = 2_147_483))]
    pub stickiness_expiry_seconds: i64,
    /// In a scale-down, how long the leaving node is drained (no new clients; connected ones
    /// stay) before its remaining clients are disconnected so that they reconnect, through the
    /// load balancer, to the nodes that stay. Then the node leaves the cluster.
    #[serde(default = "default_drain_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_seconds: i64,
    /// Send the PROXY protocol (v2) from HAProxy to the brokers, so that the brokers see each
    /// client's real address instead of HAProxy's (in their connection lists, logs, and
    /// address-based rules). Every MQTT listener of every broker node (MQTT, WebSocket, TLS, WSS)
    /// then REQUIRES the PROXY header: clients that connect to a broker directly (the `<name>`
    /// Service, Pod IPs) can no longer connect, only clients through the load balancer can.
    /// Mooring sets EMQX `listeners.<tcp|ws|ssl|wss>.default.proxy_protocol = true`, and RabbitMQ
    /// `mqtt.proxy_protocol = true` (MQTT and MQTT over TLS) and `web_mqtt.proxy_protocol = true`
    /// (WebSocket and WSS); its own MQTT health checks send the header too. Changing it rolls the
    /// broker Pods. Needs `enabled`.
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl LoadBalancerSpec {
    /// Whether the brokers must require the PROXY protocol: the load balancer runs and sends it.
    pub fn sends_proxy_protocol(&self) -> bool {
        self.enabled && self.proxy_protocol
    }
}

fn default_lb_replicas() -> i32 {
    2
}
fn default_stickiness() -> i64 {
    86_400
}
fn default_drain_seconds() -> i64 {
    60
}

impl Default for LoadBalancerSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            replicas: default_lb_replicas(),
            service_type: ServiceType::ClusterIP,
            stickiness_expiry_seconds: default_stickiness(),
            drain_seconds: default_drain_seconds(),
            proxy_protocol: false,
        }
    }
}

/// A Service type.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// On a port of every node.
    NodePort,
    /// Through the platform's load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Continuous membership repair.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RepairSpec {
    /// Join stray nodes and remove ghost members automatically. When off, Mooring still reports.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How often every node is asked for its view of the cluster, in seconds.
    #[serde(default = "default_repair_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: i64,
    /// How long a member without a Pod (left by a scale-down, a "ghost") stays in the cluster
    /// before Mooring removes it, in seconds. A node that comes back within it is left alone.
    #[serde(default = "default_ghost_grace")]
    #[schemars(range(min = 0, max = 604800))]
    pub ghost_grace_seconds: i64,
}

fn default_repair_interval() -> i64 {
    5
}

fn default_ghost_grace() -> i64 {
    300
}

impl Default for RepairSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_seconds: default_repair_interval(),
            ghost_grace_seconds: default_ghost_grace(),
        }
    }
}

/// Telemetry and alerting.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Topics whose message rates are metered (EMQX topic metrics; measured by Mooring elsewhere).
    /// Exact topics, no wildcards, each at most 4096 characters.
    // The item max length bounds the API server's CEL cost estimate of the rule below (unbounded,
    // the CRD was rejected: "estimated rule cost exceeds budget by factor of 32.2x").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 512), inner(length(max = 4096)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(t, size(t) > 0 && !t.contains('+') && !t.contains('#'))")
        .message("metered topics must be exact topics, without + or #"))]
    pub metered_topics: Vec<String>,
    /// Alert thresholds.
    #[serde(default)]
    pub alerts: AlertThresholds,
    /// Where alerts are sent, in Alertmanager's webhook format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
}

/// Alert thresholds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlertThresholds {
    /// Memory use, in percent of the limit, above which a node alerts.
    #[serde(default = "default_memory_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub memory_percent: i32,
    /// CPU use, in percent of the limit, above which a node alerts.
    #[serde(default = "default_cpu_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub cpu_percent: i32,
    /// Connections per node, in percent of the node's limit, above which a node alerts.
    #[serde(default = "default_connections_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub connections_percent: i32,
}

fn default_memory_percent() -> i32 {
    80
}
fn default_cpu_percent() -> i32 {
    90
}
fn default_connections_percent() -> i32 {
    90
}

impl Default for AlertThresholds {
    fn default() -> Self {
        Self {
            memory_percent: default_memory_percent(),
            cpu_percent: default_cpu_percent(),
            connections_percent: default_connections_percent(),
        }
    }
}

/// An alert webhook.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// The URL alerts are POSTed to (http or https).
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('http://') || self.startsWith('https://')")
        .message("webhook.url must be an http or https URL"))]
    #[schemars(length(min = 8, max = 2048))]
    pub url: String,
}

fn default_true() -> bool {
    true
}
