//! Pod sandboxes: a network namespace per Pod with a veth pair to the bridge and an address of
//! the pod network (allocations kept in `<state>/network.json`), and the `hosts` and
//! `resolv.conf` that `ip netns exec` mounts over `/etc` in it.
//!
//! Names come from the Pod's uid: netns `<netns_prefix><first 12 hex digits of the uid>`, host
//! veth `<veth_prefix><first 8 hex digits>`; the Pod's end is `eth0`, created directly in the
//! namespace.
//!
//! Name resolution is a hosts file per Pod (rendered by [`hosts_file`]) that lists every Pod the
//! agent runs and the Services that select them; `resolv.conf` points at the Pod's own loopback,
//! where no DNS server listens, so any other name fails at once instead of reaching the host's
//! resolver. The files are rewritten in place (same inode: `ip netns exec` bind-mounted them).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Seek as _, SeekFrom, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::process::{self, system_binary};
use crate::network::NetNames;

/// Where `ip netns exec` finds a namespace's `hosts` and `resolv.conf`.
const ETC_NETNS: &str = "/etc/netns";

/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Errors setting up or tearing down a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A command (`ip ...`) failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        source: std::io::Error,
    },
    /// The pod network is full or invalid.
    #[error("{0}")]
    Addresses(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

/// The pod network.
#[derive(Clone, Debug)]
pub struct PodNetwork {
    /// Names of the bridge, namespaces and veths.
    pub names: NetNames,
    /// The network address.
    pub network: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The bridge's address (the Pods' default gateway, the node's InternalIP).
    pub gateway: Ipv4Addr,
}

impl PodNetwork {
    /// Parses `10.244.0.0/24` and the gateway.
    pub fn new(names: NetNames, cidr: &str, gateway: &str) -> Result<Self, SandboxError> {
        let bad = || SandboxError::Addresses(format!("invalid pod network {cidr:?}"));
        let (net, len) = cidr.split_once('/').ok_or_else(bad)?;
        let network: Ipv4Addr = net.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix_len) {
            return Err(bad());
        }
        let gateway: Ipv4Addr = gateway
            .split('/')
            .next()
            .unwrap_or(gateway)
            .parse()
            .map_err(|_| SandboxError::Addresses(format!("invalid gateway {gateway:?}")))?;
        Ok(Self {
            names,
            network,
            prefix_len,
            gateway,
        })
    }

    /// The addresses Pods may get: the network without its first (network), the gateway, the
    /// last two (one kept free, and broadcast).
    pub fn pod_addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let base = u32::from(self.network);
        let size = 1u32 << (32 - u32::from(self.prefix_len));
        let gateway = self.gateway;
        (1..size.saturating_sub(2))
            .map(move |i| Ipv4Addr::from(base + i))
            .filter(move |a| *a != gateway)
    }

    /// The sandbox names of the Pod with this uid.
    pub fn sandbox_names(&self, uid: &str) -> (String, String) {
        let hex: String = uid.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        let short = |n: usize| hex.chars().take(n).collect::<String>();
        (
            self.names.netns_name(&short(12)),
            self.names.veth_name(&short(8)),
        )
    }
}

/// One allocation in `network.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Allocation {
    /// The address.
    pub ip: Ipv4Addr,
    /// The Pod's namespace.
    pub namespace: String,
    /// The Pod's name.
    pub name: String,
}

/// `network.json`: the addresses in use (by Pod uid) and the last address of each Pod name.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Allocations {
    /// uid -> allocation.
    #[serde(default)]
    pub pods: BTreeMap<String, Allocation>,
    /// `<namespace>/<name>` -> the address that name had last.
    #[serde(default)]
    pub last: BTreeMap<String, Ipv4Addr>,
}

impl Allocations {
    /// Reads `path` (empty when it does not exist or is unreadable).
    pub fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), SandboxError> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| SandboxError::Addresses(format!("cannot encode allocations: {e}")))?;
        std::fs::write(&tmp, text).map_err(io(format!("cannot write {}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(io(format!("cannot write {}", path.display())))
    }

    /// The address of the Pod `uid` (`namespace/name`): the one it has, else the one its name
    /// had last if free, else the lowest free address no other name had last, else the lowest
    /// free one.
    pub fn allocate(
        &mut self,
        network: &PodNetwork,
        uid: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Ipv4Addr, SandboxError> {
        if let Some(a) = self.pods.get(uid) {
            return Ok(a.ip);
        }
        let key = format!("{namespace}/{name}");
        let used: BTreeSet<Ipv4Addr> = self.pods.values().map(|a| a.ip).collect();
        let remembered: BTreeSet<Ipv4Addr> = self
            .last
            .iter()
            .filter(|(k, _)| **k != key)
            .map(|(_, ip)| *ip)
            .collect();
        let previous = self
            .last
            .get(&key)
            .copied()
            .filter(|ip| !used.contains(ip) && network.pod_addresses().any(|a| a == *ip));
        let ip = previous
            .or_else(|| {
                network
                    .pod_addresses()
                    .find(|a| !used.contains(a) && !remembered.contains(a))
            })
            .or_else(|| network.pod_addresses().find(|a| !used.contains(a)))
            .ok_or_else(|| SandboxError::Addresses("the pod network has no free address".into()))?;
        self.pods.insert(
            uid.to_string(),
            Allocation {
                ip,
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
        );
        self.last.insert(key, ip);
        Ok(ip)
    }

    /// Frees the address of `uid`.
    pub fn release(&mut self, uid: &str) {
        self.pods.remove(uid);
    }
}

/// A Pod's sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// The network namespace.
    pub netns: String,
    /// The host end of the veth pair.
    pub veth: String,
    /// The Pod's address.
    pub ip: Ipv4Addr,
}

impl Sandbox {
    /// `/etc/netns/<netns>`.
    pub fn etc_dir(&self) -> PathBuf {
        Path::new(ETC_NETNS).join(&self.netns)
    }

    /// The hosts file mounted in the Pod.
    pub fn hosts_path(&self) -> PathBuf {
        self.etc_dir().join("hosts")
    }
}

async fn ip(args: &[&str]) -> Result<(), SandboxError> {
    let mut cmd = Command::new(system_binary("ip"));
    cmd.args(args);
    let out = process::output(&mut cmd)
        .await
        .map_err(io(format!("cannot run ip {}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SandboxError::Command {
            command: format!("ip {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The pids of the processes in network namespace `netns`.
pub async fn netns_pids(netns: &str) -> Vec<u32> {
    let mut cmd = Command::new(system_binary("ip"));
    cmd.args(["netns", "pids", netns]);
    match process::output(&mut cmd).await {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => vec![],
    }
}

fn netns_exists(netns: &str) -> bool {
    Path::new("/run/netns").join(netns).exists()
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Creates the sandbox (replacing leftovers of the same name) with empty `hosts` and the
/// `resolv.conf`.
pub async fn create(
    network: &PodNetwork,
    sandbox: &Sandbox,
    namespace: &str,
) -> Result<(), SandboxError> {
    destroy(sandbox).await;
    let ns = sandbox.netns.as_str();
    let cidr = format!("{}/{}", sandbox.ip, network.prefix_len);
    let gateway = network.gateway.to_string();
    ip(&["netns", "add", ns]).await?;
    ip(&[
        "link",
        "add",
        &sandbox.veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns,
    ])
    .await?;
    ip(&[
        "link",
        "set",
        &sandbox.veth,
        "master",
        &network.names.bridge,
    ])
    .await?;
    ip(&["link", "set", &sandbox.veth, "up"]).await?;
    ip(&["-n", ns, "link", "set", "lo", "up"]).await?;
    ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"]).await?;
    ip(&["-n", ns, "link", "set", "eth0", "up"]).await?;
    ip(&["-n", ns, "route", "add", "default", "via", &gateway]).await?;
    let etc = sandbox.etc_dir();
    std::fs::create_dir_all(&etc).map_err(io(format!("cannot create {}", etc.display())))?;
    write_in_place(&sandbox.hosts_path(), "")?;
    write_in_place(&etc.join("resolv.conf"), &resolv_conf(namespace))?;
    Ok(())
}

/// Removes the sandbox: kills what still runs in it, deletes the namespace, the veth and
/// `/etc/netns/<netns>`. Best effort.
pub async fn destroy(sandbox: &Sandbox) {
    for _ in 0..2 {
        let pids = netns_pids(&sandbox.netns).await;
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            process::send_signal(pid, libc::SIGKILL);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    if netns_exists(&sandbox.netns) {
        if let Err(e) = ip(&["netns", "del", &sandbox.netns]).await {
            tracing::warn!(netns = %sandbox.netns, error = %e, "cannot delete a network namespace");
        }
    }
    if link_exists(&sandbox.veth) {
        if let Err(e) = ip(&["link", "del", &sandbox.veth]).await {
            tracing::warn!(veth = %sandbox.veth, error = %e, "cannot delete a veth");
        }
    }
    let etc = sandbox.etc_dir();
    if etc.exists() {
        if let Err(e) = std::fs::remove_dir_all(&etc) {
            tracing::warn!(dir = %etc.display(), error = %e, "cannot remove a netns config");
        }
    }
}

/// The Pods' `resolv.conf`: the search path of the namespace, and a nameserver where nothing
/// listens (the Pod's own loopback) so that names not in `hosts` fail at once.
pub fn resolv_conf(namespace: &str) -> String {
    format!(
        "# devcluster: names resolve through /etc/hosts only; nothing listens at this nameserver.\n\
         nameserver 127.0.0.1\n\
         search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n\
         options ndots:5 timeout:1 attempts:1\n"
    )
}

/// Replaces a file's contents keeping its inode (it may be bind-mounted in running Pods):
/// writes from the start, then cuts the file to the new length, so a reader never sees it empty.
/// Unchanged contents are not written.
pub fn write_in_place(path: &Path, contents: &str) -> Result<bool, SandboxError> {
    if std::fs::read(path).ok().as_deref() == Some(contents.as_bytes()) {
        return Ok(false);
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(io(format!("cannot open {}", path.display())))?;
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(contents.as_bytes()))
        .and_then(|_| f.set_len(contents.len() as u64))
        .and_then(|_| f.flush())
        .map_err(io(format!("cannot write {}", path.display())))?;
    Ok(true)
}

/// A Pod as name resolution sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEntry {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `spec.hostname`, else the name.
    pub hostname: String,
    /// `spec.subdomain`.
    pub subdomain: Option<String>,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Whether it is Ready.
    pub ready: bool,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// A Service as name resolution sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its selector (a Service without one lists no Pods).
    pub selector: BTreeMap<String, String>,
    /// `publishNotReadyAddresses`.
    pub publish_not_ready: bool,
}

/// The hosts file of a Pod in `namespace`: localhost, every Pod (`<ip> <hostname>.<subdomain>.
/// <ns>.svc.cluster.local ... <name>`; the short names only for Pods of the same namespace), and
/// every Service with a selector, one line per ready Pod it selects (every Pod with
/// `publishNotReadyAddresses`). Services are resolved to Pod addresses whether headless or not:
/// there is no kube-proxy for cluster IPs.
pub fn hosts_file(namespace: &str, pods: &[PodEntry], services: &[ServiceEntry]) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file (devcluster agent).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    let mut pods: Vec<&PodEntry> = pods.iter().collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for p in &pods {
        let same = p.namespace == namespace;
        let mut names = Vec::new();
        if let Some(sub) = p.subdomain.as_deref().filter(|s| !s.is_empty()) {
            let base = format!("{}.{sub}.{}", p.hostname, p.namespace);
            names.push(format!("{base}.svc.{CLUSTER_DOMAIN}"));
            names.push(format!("{base}.svc"));
            names.push(base);
            if same {
                names.push(format!("{}.{sub}", p.hostname));
            }
        }
        names.push(format!(
            "{}.{}.pod.{CLUSTER_DOMAIN}",
            p.ip.to_string().replace('.', "-"),
            p.namespace
        ));
        if same {
            names.push(p.hostname.clone());
            if p.name != p.hostname {
                names.push(p.name.clone());
            }
        }
        out.push_str(&format!("{}\t{}\n", p.ip, names.join(" ")));
    }
    let mut services: Vec<&ServiceEntry> = services.iter().collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for s in services {
        if s.selector.is_empty() {
            continue;
        }
        let mut names = vec![
            format!("{}.{}.svc.{CLUSTER_DOMAIN}", s.name, s.namespace),
            format!("{}.{}.svc", s.name, s.namespace),
            format!("{}.{}", s.name, s.namespace),
        ];
        if s.namespace == namespace {
            names.push(s.name.clone());
        }
        let names = names.join(" ");
        for p in &pods {
            let selected = p.namespace == s.namespace
                && s.selector.iter().all(|(k, v)| p.labels.get(k) == Some(v));
            if selected && (p.ready || s.publish_not_ready) {
                out.push_str(&format!("{}\t{names}\n", p.ip));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> PodNetwork {
        PodNetwork::new(
            NetNames {
                bridge: "mooring0".into(),
                netns_prefix: "mooring-".into(),
                veth_prefix: "mvh".into(),
            },
            "10.244.0.0/24",
            "10.244.0.1",
        )
        .unwrap()
    }

    #[test]
    fn names_come_from_the_uid_and_fit_interface_limits() {
        let (ns, veth) = net().sandbox_names("0a1b2c3d-4e5f-6789-abcd-ef0123456789");
        assert_eq!(ns, "mooring-0a1b2c3d4e5f");
        assert_eq!(veth, "mvh0a1b2c3d");
        assert!(veth.len() <= 15);
    }

    #[test]
    fn addresses_skip_network_gateway_and_the_top() {
        let n = net();
        let all: Vec<Ipv4Addr> = n.pod_addresses().collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(10, 244, 0, 2)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(10, 244, 0, 253)));
        assert_eq!(all.len(), 252);
    }

    #[test]
    fn a_recreated_pod_gets_its_old_address_back_when_free() {
        let n = net();
        let mut a = Allocations::default();
        let ip0 = a.allocate(&n, "u0", "iot", "bus-0").unwrap();
        let ip1 = a.allocate(&n, "u1", "iot", "bus-1").unwrap();
        assert_eq!(ip0, Ipv4Addr::new(10, 244, 0, 2));
        assert_eq!(ip1, Ipv4Addr::new(10, 244, 0, 3));
        assert_eq!(a.allocate(&n, "u0", "iot", "bus-0").unwrap(), ip0);
        a.release("u0");
        // A new pod does not take the address another name had last.
        assert_eq!(
            a.allocate(&n, "u9", "iot", "other").unwrap(),
            Ipv4Addr::new(10, 244, 0, 4)
        );
        // The recreated bus-0 gets its address back.
        assert_eq!(a.allocate(&n, "u2", "iot", "bus-0").unwrap(), ip0);
        let dir = std::env::temp_dir().join(format!("devcluster-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("network.json");
        a.save(&path).unwrap();
        assert_eq!(Allocations::load(&path), a);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn entry(ns: &str, name: &str, ip: u8, ready: bool) -> PodEntry {
        PodEntry {
            namespace: ns.into(),
            name: name.into(),
            hostname: name.into(),
            subdomain: Some("bus-headless".into()),
            ip: Ipv4Addr::new(10, 244, 0, ip),
            ready,
            labels: BTreeMap::from([("app".into(), "bus".into())]),
        }
    }

    #[test]
    fn hosts_list_pod_dns_names_and_services() {
        let pods = [
            entry("iot", "bus-0", 2, true),
            entry("iot", "bus-1", 3, false),
            PodEntry {
                subdomain: None,
                labels: BTreeMap::new(),
                ..entry("other", "client", 9, true)
            },
        ];
        let services = [
            ServiceEntry {
                namespace: "iot".into(),
                name: "bus-headless".into(),
                selector: BTreeMap::from([("app".into(), "bus".into())]),
                publish_not_ready: true,
            },
            ServiceEntry {
                namespace: "iot".into(),
                name: "bus".into(),
                selector: BTreeMap::from([("app".into(), "bus".into())]),
                publish_not_ready: false,
            },
        ];
        let h = hosts_file("iot", &pods, &services);
        assert!(h.contains(
            "10.244.0.2\tbus-0.bus-headless.iot.svc.cluster.local bus-0.bus-headless.iot.svc \
             bus-0.bus-headless.iot bus-0.bus-headless 10-244-0-2.iot.pod.cluster.local bus-0\n"
        ));
        // Another namespace's pod has no short name here.
        assert!(
            h.contains("10.244.0.9\t10-244-0-9.other.pod.cluster.local\n"),
            "{h}"
        );
        // publishNotReadyAddresses lists unready pods too; the plain Service only ready ones.
        assert!(h.contains("10.244.0.3\tbus-headless.iot.svc.cluster.local"));
        assert!(h.contains("10.244.0.2\tbus.iot.svc.cluster.local bus.iot.svc bus.iot bus\n"));
        assert!(!h.contains("10.244.0.3\tbus.iot.svc.cluster.local"));
        assert!(h.starts_with("# Kubernetes-managed hosts file"));

        let other = hosts_file("other", &pods, &services);
        assert!(other.contains("10.244.0.9\t10-244-0-9.other.pod.cluster.local client\n"));
        assert!(other.contains(
            "10.244.0.2\tbus-0.bus-headless.iot.svc.cluster.local bus-0.bus-headless.iot.svc \
             bus-0.bus-headless.iot 10-244-0-2.iot.pod.cluster.local\n"
        ));
    }

    #[test]
    fn in_place_writes_keep_the_inode() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = std::env::temp_dir().join(format!("devcluster-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        assert!(write_in_place(&path, "a long first version\n").unwrap());
        let inode = std::fs::metadata(&path).unwrap().ino();
        assert!(write_in_place(&path, "short\n").unwrap());
        assert!(!write_in_place(&path, "short\n").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "short\n");
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
