//! The pod network's bridge, and finding and removing what a devcluster leaves in the host: network
//! namespaces, veth ends, the bridge, `/etc/netns/<prefix>*` and mounts under the state directory.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::state::{
    Settings, BRIDGE_ENV, DEFAULT_BRIDGE, DEFAULT_NETNS_PREFIX, DEFAULT_VETH_PREFIX,
    NETNS_PREFIX_ENV, VETH_PREFIX_ENV,
};
use mooring_localkube::IoContext as _;

use crate::{Error, Result};

/// Where `ip netns` keeps its namespaces (bind mounts of `/proc/<pid>/ns/net`).
const NETNS_DIR: &str = "/run/netns";
/// Where `ip netns exec` finds per-namespace `hosts` and `resolv.conf`.
const ETC_NETNS_DIR: &str = "/etc/netns";
/// Linux's limit on interface names (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// The names of a devcluster's network objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetNames {
    /// The bridge (`mooring0`).
    pub bridge: String,
    /// The pods' network namespaces start with this (`mooring-`).
    pub netns_prefix: String,
    /// The host ends of the pods' veth pairs start with this (`mvh`).
    pub veth_prefix: String,
}

impl NetNames {
    /// The names in the environment (`MOORING_DEVCLUSTER_BRIDGE`, `..._NETNS_PREFIX`,
    /// `..._VETH_PREFIX`), defaults where unset. The agent process gets them from `up`.
    pub fn from_env() -> Self {
        let get = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        Self {
            bridge: get(BRIDGE_ENV, DEFAULT_BRIDGE),
            netns_prefix: get(NETNS_PREFIX_ENV, DEFAULT_NETNS_PREFIX),
            veth_prefix: get(VETH_PREFIX_ENV, DEFAULT_VETH_PREFIX),
        }
    }

    pub fn from_settings(s: &Settings) -> Self {
        Self {
            bridge: s.bridge.clone(),
            netns_prefix: s.netns_prefix.clone(),
            veth_prefix: s.veth_prefix.clone(),
        }
    }

    /// The environment that passes these names on (to the agent).
    pub fn to_env(&self) -> Vec<(String, String)> {
        vec![
            (BRIDGE_ENV.to_string(), self.bridge.clone()),
            (NETNS_PREFIX_ENV.to_string(), self.netns_prefix.clone()),
            (VETH_PREFIX_ENV.to_string(), self.veth_prefix.clone()),
        ]
    }

    /// `<netns_prefix><id>`, `id` reduced to letters, digits, `-`, `_` and `.`.
    pub fn netns_name(&self, id: &str) -> String {
        let clean: String = id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        format!("{}{clean}", self.netns_prefix)
    }

    /// `<veth_prefix><id>`, cut to 15 characters (pass something unique in its first characters,
    /// such as a hash of the pod uid).
    pub fn veth_name(&self, id: &str) -> String {
        let clean: String = id.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        let mut name = format!("{}{clean}", self.veth_prefix);
        name.truncate(IFNAME_MAX);
        name
    }
}

fn run_ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().io_context(|| {
        format!(
            "cannot run `ip {}` (is iproute2 installed?)",
            args.join(" ")
        )
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Whether a link of that name exists in this network namespace.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Creates the bridge with the gateway address and brings it up (idempotent).
pub fn setup_bridge(settings: &Settings) -> Result<()> {
    let bridge = settings.bridge.as_str();
    if !link_exists(bridge) {
        run_ip(&["link", "add", bridge, "type", "bridge"])?;
    }
    run_ip(&["addr", "replace", &settings.gateway_cidr()?, "dev", bridge])?;
    run_ip(&["link", "set", bridge, "up"])
}

fn names_in(dir: &str, prefix: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// The network namespaces named `<prefix>*`.
pub fn list_netns(prefix: &str) -> Vec<String> {
    names_in(NETNS_DIR, prefix)
}

/// The links named `<prefix>*` in this network namespace.
pub fn list_links(prefix: &str) -> Vec<String> {
    names_in("/sys/class/net", prefix)
}

/// The namespace inodes of the network namespaces named `<prefix>*` (to find their processes).
pub fn netns_inodes(prefix: &str) -> HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    list_netns(prefix)
        .iter()
        .filter_map(|n| fs::metadata(Path::new(NETNS_DIR).join(n)).ok())
        .map(|m| m.ino())
        .collect()
}

/// Mount points at or below `dir`, deepest first (from `/proc/self/mountinfo`).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut mounts: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts.dedup();
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn lazy_unmount(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a NUL byte in the path"))?;
    // SAFETY: umount2 reads the NUL-terminated path we own for the duration of the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Lazily unmounts everything at or below `dir`, deepest first, until nothing is left (stacked
/// mounts take several rounds). Returns what could not be unmounted.
pub fn unmount_under(dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    for _ in 0..16 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return errors;
        }
        errors.clear();
        for m in mounts {
            if let Err(e) = lazy_unmount(&m) {
                errors.push(format!("cannot unmount {}: {e}", m.display()));
            }
        }
    }
    let left = mounts_under(dir);
    if left.is_empty() {
        Vec::new()
    } else if errors.is_empty() {
        left.iter()
            .map(|m| format!("{} is still mounted", m.display()))
            .collect()
    } else {
        errors
    }
}

/// What of a devcluster's network and mounts is present in the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetLeftovers {
    pub netns: Vec<String>,
    /// veth ends and the bridge.
    pub links: Vec<String>,
    pub etc_netns: Vec<String>,
    pub mounts: Vec<PathBuf>,
}

impl NetLeftovers {
    pub fn is_empty(&self) -> bool {
        self.netns.is_empty()
            && self.links.is_empty()
            && self.etc_netns.is_empty()
            && self.mounts.is_empty()
    }

    /// One line per kind of leftover.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.netns.is_empty() {
            lines.push(format!("network namespaces: {}", self.netns.join(" ")));
        }
        if !self.links.is_empty() {
            lines.push(format!("interfaces: {}", self.links.join(" ")));
        }
        if !self.etc_netns.is_empty() {
            lines.push(format!(
                "{ETC_NETNS_DIR} entries: {}",
                self.etc_netns.join(" ")
            ));
        }
        if !self.mounts.is_empty() {
            let m: Vec<String> = self
                .mounts
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            lines.push(format!("mounts: {}", m.join(" ")));
        }
        lines
    }
}

/// The network namespaces, links, `/etc/netns` entries and mounts (under `state_root`) present.
pub fn leftovers(names: &NetNames, state_root: &Path) -> NetLeftovers {
    let mut links = list_links(&names.veth_prefix);
    if link_exists(&names.bridge) {
        links.push(names.bridge.clone());
    }
    NetLeftovers {
        netns: list_netns(&names.netns_prefix),
        links,
        etc_netns: names_in(ETC_NETNS_DIR, &names.netns_prefix),
        mounts: mounts_under(state_root),
    }
}

/// Removes the network namespaces, veth ends, the bridge, `/etc/netns/<prefix>*` and every mount
/// under `state_root`. Run it after the processes are gone (a namespace with processes in it
/// outlives its name). Returns what could not be removed, as messages.
pub fn teardown(names: &NetNames, state_root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for ns in list_netns(&names.netns_prefix) {
        if let Err(e) = run_ip(&["netns", "del", &ns]) {
            // What `ip netns del` does, in case `ip` itself is the problem.
            let path = Path::new(NETNS_DIR).join(&ns);
            let _ = lazy_unmount(&path);
            if let Err(rm) = fs::remove_file(&path) {
                problems.push(format!("{e}; removing {} failed too: {rm}", path.display()));
            }
        }
    }
    // A veth end goes away with its peer's namespace; what is left is deleted here.
    let mut links = list_links(&names.veth_prefix);
    links.push(names.bridge.clone());
    for link in links {
        if link_exists(&link) {
            if let Err(e) = run_ip(&["link", "del", &link]) {
                if link_exists(&link) {
                    problems.push(e.to_string());
                }
            }
        }
    }
    for entry in names_in(ETC_NETNS_DIR, &names.netns_prefix) {
        let path = Path::new(ETC_NETNS_DIR).join(entry);
        // `ip netns exec` bind-mounts these files in a private mount namespace: nothing of theirs
        // is mounted in ours.
        if let Err(e) = fs::remove_dir_all(&path) {
            problems.push(format!("cannot remove {}: {e}", path.display()));
        }
    }
    problems.extend(unmount_under(state_root));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/a\\134b\\011"), "/a\\b\t");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/trail\\04"), "/trail\\04");
    }

    #[test]
    fn names_fit_interfaces() {
        let n = NetNames {
            bridge: "mooring0".into(),
            netns_prefix: "mooring-".into(),
            veth_prefix: "mvh".into(),
        };
        assert_eq!(n.veth_name("0123456789abcdef0123"), "mvh0123456789ab");
        assert_eq!(n.netns_name("iot_bus-0/x"), "mooring-iot_bus-0x");
    }

    #[test]
    fn root_mounts_are_listed_under_slash() {
        // `/` is always a mount point; a path nothing is mounted on yields nothing.
        assert!(!mounts_under(Path::new("/")).is_empty());
        assert!(mounts_under(Path::new("/nonexistent/devcluster/state")).is_empty());
    }
}
