//! The Node: registration, status and the heartbeat Lease in `kube-node-lease`.
//!
//! The Node is registered Ready with the machine's capacity (CPUs, memory, 110 pods), the
//! gateway as InternalIP and the pod network as podCIDR. Every [`HEARTBEAT`] the agent renews its
//! Lease and posts the status again (fresh `lastHeartbeatTime`). The `not-ready`/`unreachable`
//! taints that admission puts on a new Node are removed (devcluster runs no node lifecycle
//! controller that would do it).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

/// How often the Lease and the status are renewed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// The Lease's duration.
const LEASE_SECONDS: i32 = 40;

/// The field manager of everything the agent writes.
pub const FIELD_MANAGER: &str = "devcluster-agent";

/// The taints the agent removes from its Node.
const STALE_TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// Errors talking about the Node.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct NodeError {
    context: String,
    source: kube::Error,
}

fn err(context: impl Into<String>) -> impl FnOnce(kube::Error) -> NodeError {
    let context = context.into();
    move |source| NodeError { context, source }
}

/// What the Node says about the machine.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// The Node's name.
    pub name: String,
    /// Its InternalIP (the bridge's address).
    pub address: String,
    /// The pod network.
    pub pod_cidr: String,
    /// `capacity` (and `allocatable`).
    pub capacity: BTreeMap<String, Quantity>,
    /// `nodeInfo`.
    pub system: NodeSystemInfo,
    /// When the agent started (the Ready condition's transition time).
    pub since: Timestamp,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The machine's capacity: CPUs, memory (from `/proc/meminfo`), 110 pods.
pub fn machine_capacity() -> BTreeMap<String, Quantity> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cpus.to_string())),
        ("memory".to_string(), Quantity(format!("{mem_kib}Ki"))),
        ("pods".to_string(), Quantity("110".to_string())),
    ])
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".to_string())
}

fn arch() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
    .to_string()
}

impl NodeInfo {
    /// The machine as a Node; `kubelet_version` is the API server's version.
    pub fn detect(name: &str, address: &str, pod_cidr: &str, kubelet_version: &str) -> Self {
        let machine_id = read_trimmed("/etc/machine-id");
        Self {
            name: name.to_string(),
            address: address.to_string(),
            pod_cidr: pod_cidr.to_string(),
            capacity: machine_capacity(),
            system: NodeSystemInfo {
                architecture: arch(),
                boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
                container_runtime_version: "devcluster://processes".to_string(),
                kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
                kube_proxy_version: String::new(),
                kubelet_version: kubelet_version.to_string(),
                machine_id: machine_id.clone(),
                operating_system: "linux".to_string(),
                os_image: os_image(),
                system_uuid: machine_id,
                swap: None,
            },
            since: Timestamp::now(),
        }
    }

    /// The Node object the agent applies (metadata and spec).
    pub fn node(&self) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(BTreeMap::from([
                    ("kubernetes.io/hostname".to_string(), self.name.clone()),
                    ("kubernetes.io/os".to_string(), "linux".to_string()),
                    ("kubernetes.io/arch".to_string(), arch()),
                    ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
                    ("beta.kubernetes.io/arch".to_string(), arch()),
                ])),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some(self.pod_cidr.clone()),
                pod_cidrs: Some(vec![self.pod_cidr.clone()]),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The Node's status at `now`.
    pub fn status(&self, now: Timestamp) -> NodeStatus {
        let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            last_heartbeat_time: Some(Time(now)),
            last_transition_time: Some(Time(self.since)),
        };
        NodeStatus {
            capacity: Some(self.capacity.clone()),
            allocatable: Some(self.capacity.clone()),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".to_string(),
                    address: self.address.clone(),
                },
                NodeAddress {
                    type_: "Hostname".to_string(),
                    address: self.name.clone(),
                },
            ]),
            conditions: Some(vec![
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                condition(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "devcluster agent is posting ready status",
                ),
            ]),
            node_info: Some(self.system.clone()),
            ..Default::default()
        }
    }
}

/// Registers the Node (or takes over an existing one) and posts its status.
pub async fn register(client: &Client, info: &NodeInfo) -> Result<(), NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let existing = nodes
        .get_opt(&info.name)
        .await
        .map_err(err("cannot read the Node"))?;
    let mut node = info.node();
    if let Some(spec) = existing.as_ref().and_then(|n| n.spec.as_ref()) {
        // podCIDR cannot change once set.
        if spec.pod_cidr.as_deref().is_some_and(|c| !c.is_empty()) {
            if let Some(s) = node.spec.as_mut() {
                s.pod_cidr = None;
                s.pod_cidrs = None;
            }
        }
    }
    nodes
        .patch(&info.name, &params, &Patch::Apply(&node))
        .await
        .map_err(err("cannot register the Node"))?;
    post_status(client, info).await?;
    remove_stale_taints(client, &info.name).await
}

/// Posts the Node's status with a fresh heartbeat.
pub async fn post_status(client: &Client, info: &NodeInfo) -> Result<(), NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let status = Node {
        metadata: ObjectMeta {
            name: Some(info.name.clone()),
            ..Default::default()
        },
        spec: None,
        status: Some(info.status(Timestamp::now())),
    };
    nodes
        .patch_status(&info.name, &params, &Patch::Apply(&status))
        .await
        .map_err(err("cannot post the Node status"))?;
    Ok(())
}

async fn remove_stale_taints(client: &Client, name: &str) -> Result<(), NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(node) = nodes
        .get_opt(name)
        .await
        .map_err(err("cannot read the Node"))?
    else {
        return Ok(());
    };
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let kept: Vec<_> = taints
        .iter()
        .filter(|t| !STALE_TAINTS.contains(&t.key.as_str()))
        .cloned()
        .collect();
    if kept.len() == taints.len() {
        return Ok(());
    }
    tracing::info!("removing the not-ready taints from the Node");
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": kept}})),
        )
        .await
        .map_err(err("cannot remove the Node's taints"))?;
    Ok(())
}

/// Renews the Node's Lease.
pub async fn renew_lease(client: &Client, info: &NodeInfo) -> Result<(), NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let owner = nodes
        .get_opt(&info.name)
        .await
        .map_err(err("cannot read the Node"))?
        .and_then(|n| n.metadata.uid)
        .map(|uid| OwnerReference {
            api_version: "v1".to_string(),
            kind: "Node".to_string(),
            name: info.name.clone(),
            uid,
            ..Default::default()
        });
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(info.name.clone()),
            namespace: Some("kube-node-lease".to_string()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(info.name.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    };
    leases
        .patch(
            &info.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await
        .map_err(err("cannot renew the node Lease"))?;
    Ok(())
}

/// Renews the Lease and the status every [`HEARTBEAT`]; re-registers a deleted Node.
pub async fn heartbeat(client: Client, info: NodeInfo) {
    loop {
        if let Err(e) = renew_lease(&client, &info).await {
            tracing::warn!(error = %e, "node heartbeat failed");
        }
        let posted = post_status(&client, &info).await;
        if let Err(e) = posted {
            tracing::warn!(error = %e, "node status update failed; registering again");
            if let Err(e) = register(&client, &info).await {
                tracing::warn!(error = %e, "cannot register the Node");
            }
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_is_ready_with_the_machines_capacity() {
        let info = NodeInfo::detect("devcluster", "10.244.0.1", "10.244.0.0/24", "v1.34.4");
        let node = info.node();
        assert_eq!(
            node.spec.as_ref().unwrap().pod_cidr.as_deref(),
            Some("10.244.0.0/24")
        );
        let now = Timestamp::now();
        let status = info.status(now);
        let ready = status
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_heartbeat_time, Some(Time(now)));
        let cap = status.capacity.unwrap();
        assert_eq!(cap["pods"], Quantity("110".into()));
        assert!(cap["memory"].0.ends_with("Ki"));
        assert_ne!(cap["cpu"].0, "0");
        assert_eq!(status.addresses.unwrap()[0].address, "10.244.0.1");
    }
}
