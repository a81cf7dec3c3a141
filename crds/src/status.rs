//! The observed state Mooring writes to `BrokerCluster.status`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a BrokerCluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BrokerClusterStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: Ready, Available, Progressing, Degraded, ReconcileSuccess, Paused and
    /// MembershipConsistent. Each carries the generation it was computed for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Broker Pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Broker Pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Every broker node with its own view of the cluster (filled by membership repair).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Where clients and operators reach the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// The scale-down under way: the node leaving now (one at a time, highest ordinal first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScaleDownStatus>,
}

/// One node leaving the cluster in a scale-down: drained, its clients moved, then it leaves the
/// cluster, and only then is the StatefulSet lowered.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDownStatus {
    /// The Pod leaving.
    pub pod: String,
    /// Its broker node name.
    #[serde(default)]
    pub node: String,
    /// `Draining` (the load balancer sends it no new client), `MovingClients` (its remaining
    /// clients are disconnected and reconnect elsewhere) or `Leaving` (it leaves the cluster).
    pub phase: String,
    /// When the drain started.
    pub since: Time,
    /// MQTT clients still connected to it when last counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clients: Option<i64>,
    /// Failed attempts to make it leave the cluster.
    #[serde(default)]
    pub leave_failures: i32,
    /// What is happening, for people.
    #[serde(default)]
    pub message: String,
}

/// One condition, shaped like `metav1.Condition`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, for example `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word that says why.
    pub reason: String,
    /// A sentence for people.
    #[serde(default)]
    pub message: String,
    /// When the status last changed.
    pub last_transition_time: Time,
    /// The generation this condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One broker node as Mooring sees it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// The Pod running the node.
    pub pod: String,
    /// The broker's node name, for example `rabbit@x-0.x-headless.ns.svc.cluster.local`.
    #[serde(default)]
    pub node: String,
    /// The members this node itself reports as running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub view: Vec<String>,
    /// `Joined`, `Stray`, `Forgotten`, `Ghost`, `NotReady` or `Unknown`.
    #[serde(default)]
    pub state: String,
    /// Whether the node passed every health check of the last round (unset when not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// The health checks it failed, with what was seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_checks: Vec<String>,
    /// When Mooring last repaired this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_repair_time: Option<Time>,
    /// What the last repair did and how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_repair_result: Option<String>,
}

/// An address clients or operators use.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// What it is for: `mqtt`, `websocket`, `mqtts`, `wss`, `management`, `loadBalancer`.
    pub name: String,
    /// `host:port` or a URL.
    pub address: String,
}
