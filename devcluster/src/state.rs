//! The state directory (outside the repository), the settings a running devcluster was started
//! with, pidfiles and the lock that serialises `up` and `down`.

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use mooring_localkube::IoContext as _;

use crate::{Error, Result};

/// The state directory; default `$HOME/.local/share/mooring/devcluster`.
pub const STATE_DIR_ENV: &str = "MOORING_DEVCLUSTER_DIR";
/// Set, to the state directory, in the environment of every process devcluster starts (and, by
/// the agent, of every pod process): `down` finds leftovers by it.
pub const MARKER_ENV: &str = "MOORING_DEVCLUSTER";
/// kube-apiserver's port on 127.0.0.1; default [`DEFAULT_API_PORT`].
pub const API_PORT_ENV: &str = "MOORING_DEVCLUSTER_API_PORT";
/// etcd's client port on 127.0.0.1; default [`DEFAULT_ETCD_PORT`].
pub const ETCD_PORT_ENV: &str = "MOORING_DEVCLUSTER_ETCD_PORT";
/// etcd's peer port on 127.0.0.1; default [`DEFAULT_ETCD_PEER_PORT`].
pub const ETCD_PEER_PORT_ENV: &str = "MOORING_DEVCLUSTER_ETCD_PEER_PORT";
/// The bridge pods attach to; default [`DEFAULT_BRIDGE`].
pub const BRIDGE_ENV: &str = "MOORING_DEVCLUSTER_BRIDGE";
/// The pod network; default [`DEFAULT_POD_CIDR`]. The bridge gets its first address.
pub const POD_CIDR_ENV: &str = "MOORING_DEVCLUSTER_POD_CIDR";
/// The prefix of the pods' network namespaces; default [`DEFAULT_NETNS_PREFIX`].
pub const NETNS_PREFIX_ENV: &str = "MOORING_DEVCLUSTER_NETNS_PREFIX";
/// The prefix of the host ends of the pods' veth pairs; default [`DEFAULT_VETH_PREFIX`].
pub const VETH_PREFIX_ENV: &str = "MOORING_DEVCLUSTER_VETH_PREFIX";

pub const DEFAULT_API_PORT: u16 = 6443;
pub const DEFAULT_ETCD_PORT: u16 = 12379;
pub const DEFAULT_ETCD_PEER_PORT: u16 = 12380;
pub const DEFAULT_BRIDGE: &str = "mooring0";
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/24";
pub const DEFAULT_NETNS_PREFIX: &str = "mooring-";
pub const DEFAULT_VETH_PREFIX: &str = "mvh";
/// The ClusterIP range.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The one Node, registered by the agent.
pub const NODE_NAME: &str = "devcluster";

/// The components `up` starts, in start order (`down` stops them in reverse).
pub const COMPONENTS: [&str; 5] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "agent",
];

/// The state directory and the paths in it. Always absolute (and canonical once it exists), so that
/// the marker and the mount table agree with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// `$MOORING_DEVCLUSTER_DIR`, else `$HOME/.local/share/mooring/devcluster`.
    pub fn from_env() -> Result<Self> {
        if let Some(dir) = std::env::var_os(STATE_DIR_ENV).filter(|d| !d.is_empty()) {
            return Self::new(PathBuf::from(dir));
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::Config(format!("neither {STATE_DIR_ENV} nor HOME is set")))?;
        Self::new(PathBuf::from(home).join(".local/share/mooring/devcluster"))
    }

    /// The state directory at `root` (made absolute; resolved when it exists). `/` and other
    /// directories that cannot be ours are refused: `down` deletes the contents.
    pub fn new(root: PathBuf) -> Result<Self> {
        let absolute = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()
                .io_context(|| "cannot read the current directory".to_string())?
                .join(root)
        };
        let root = fs::canonicalize(&absolute).unwrap_or(absolute);
        if root.components().count() < 3 {
            return Err(Error::Config(format!(
                "refusing {} as the devcluster state directory: too close to /",
                root.display()
            )));
        }
        Ok(Self { root })
    }

    /// Creates the directory (and resolves the path again, in case a parent is a symlink).
    pub fn create(&mut self) -> Result<()> {
        fs::create_dir_all(&self.root)
            .io_context(|| format!("cannot create {}", self.root.display()))?;
        self.root = fs::canonicalize(&self.root)
            .io_context(|| format!("cannot resolve {}", self.root.display()))?;
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The value of [`MARKER_ENV`] for this state directory.
    pub fn marker(&self) -> String {
        self.root.display().to_string()
    }

    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// The self-signed certificate kube-apiserver writes: the CA of the kubeconfigs.
    pub fn ca(&self) -> PathBuf {
        self.pki().join("apiserver.crt")
    }

    pub fn etcd(&self) -> PathBuf {
        self.root.join("etcd")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// `logs/<component>.log`.
    pub fn log(&self, component: &str) -> PathBuf {
        self.logs().join(format!("{component}.log"))
    }

    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }

    /// `run/<component>.pid`.
    pub fn pidfile(&self, component: &str) -> PathBuf {
        self.run().join(format!("{component}.pid"))
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }

    pub fn settings(&self) -> PathBuf {
        self.root.join("settings.json")
    }

    /// The agent's pod directories, `pods/<namespace>_<pod>_<uid>/`.
    pub fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// The agent's persistent claims, `volumes/pvc/<namespace>/<claim>/`.
    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    /// The agent's IP allocations.
    pub fn network_json(&self) -> PathBuf {
        self.root.join("network.json")
    }

    /// The lock file that serialises `up` and `down`; `down` keeps it.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// Records a component's pid.
    pub fn write_pid(&self, component: &str, pid: u32) -> Result<()> {
        fs::create_dir_all(self.run())
            .io_context(|| format!("cannot create {}", self.run().display()))?;
        let path = self.pidfile(component);
        fs::write(&path, format!("{pid}\n"))
            .io_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// A component's recorded pid, if any.
    pub fn read_pid(&self, component: &str) -> Option<u32> {
        fs::read_to_string(self.pidfile(component))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Every recorded `(component, pid)`, known components in start order first.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut names: Vec<String> = COMPONENTS.iter().map(|c| c.to_string()).collect();
        if let Ok(entries) = fs::read_dir(self.run()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(c) = name.strip_suffix(".pid") {
                    if !names.iter().any(|n| n == c) {
                        names.push(c.to_string());
                    }
                }
            }
        }
        names
            .into_iter()
            .filter_map(|c| self.read_pid(&c).map(|pid| (c, pid)))
            .collect()
    }
}

/// What a devcluster was started with (`settings.json`): `down`, `status` and a second `up` use the
/// saved values, not the environment of the moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub api_port: u16,
    pub etcd_port: u16,
    pub etcd_peer_port: u16,
    pub bridge: String,
    pub pod_cidr: String,
    pub netns_prefix: String,
    pub veth_prefix: String,
    pub node_name: String,
}

/// A port setting: the value and whether the environment asked for it (then it must be free).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PortSetting {
    port: u16,
    explicit: bool,
}

impl Settings {
    /// The settings the environment asks for (defaults where it says nothing), ports not checked.
    pub fn from_env() -> Result<Self> {
        let s = Self {
            api_port: port_from_env(API_PORT_ENV, DEFAULT_API_PORT)?.port,
            etcd_port: port_from_env(ETCD_PORT_ENV, DEFAULT_ETCD_PORT)?.port,
            etcd_peer_port: port_from_env(ETCD_PEER_PORT_ENV, DEFAULT_ETCD_PEER_PORT)?.port,
            bridge: string_from_env(BRIDGE_ENV, DEFAULT_BRIDGE),
            pod_cidr: string_from_env(POD_CIDR_ENV, DEFAULT_POD_CIDR),
            netns_prefix: string_from_env(NETNS_PREFIX_ENV, DEFAULT_NETNS_PREFIX),
            veth_prefix: string_from_env(VETH_PREFIX_ENV, DEFAULT_VETH_PREFIX),
            node_name: NODE_NAME.to_string(),
        };
        s.validate()?;
        Ok(s)
    }

    /// [`Settings::from_env`] with the ports checked: a port set in the environment must be free;
    /// a default one that is taken is replaced by a free one (and said so).
    pub fn for_new_cluster() -> Result<Self> {
        let mut s = Self::from_env()?;
        let mut chosen = Vec::new();
        for (env, default, slot) in [
            (API_PORT_ENV, DEFAULT_API_PORT, &mut s.api_port),
            (ETCD_PORT_ENV, DEFAULT_ETCD_PORT, &mut s.etcd_port),
            (
                ETCD_PEER_PORT_ENV,
                DEFAULT_ETCD_PEER_PORT,
                &mut s.etcd_peer_port,
            ),
        ] {
            let setting = port_from_env(env, default)?;
            *slot = choose_port(env, setting, &chosen)?;
            chosen.push(*slot);
        }
        Ok(s)
    }

    fn validate(&self) -> Result<()> {
        parse_cidr(&self.pod_cidr)?;
        let name_ok = |s: &str, max: usize| {
            !s.is_empty()
                && s.len() <= max
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name_ok(&self.bridge, 15) {
            return Err(Error::Config(format!(
                "{BRIDGE_ENV}={:?}: an interface name of 1-15 letters, digits, - or _",
                self.bridge
            )));
        }
        if !name_ok(&self.netns_prefix, 32) {
            return Err(Error::Config(format!(
                "{NETNS_PREFIX_ENV}={:?}: 1-32 letters, digits, - or _",
                self.netns_prefix
            )));
        }
        if !name_ok(&self.veth_prefix, 6) {
            return Err(Error::Config(format!(
                "{VETH_PREFIX_ENV}={:?}: 1-6 letters, digits, - or _ (interface names have 15)",
                self.veth_prefix
            )));
        }
        if self.bridge.starts_with(&self.veth_prefix) {
            return Err(Error::Config(format!(
                "the bridge {:?} must not start with the veth prefix {:?}",
                self.bridge, self.veth_prefix
            )));
        }
        Ok(())
    }

    /// The bridge's address, the first in the pod network (`10.244.0.1`).
    pub fn gateway(&self) -> Result<Ipv4Addr> {
        let (network, _) = parse_cidr(&self.pod_cidr)?;
        Ok(Ipv4Addr::from(u32::from(network) + 1))
    }

    /// The bridge's address with the pod network's prefix length (`10.244.0.1/24`).
    pub fn gateway_cidr(&self) -> Result<String> {
        let (_, len) = parse_cidr(&self.pod_cidr)?;
        Ok(format!("{}/{len}", self.gateway()?))
    }

    /// `https://127.0.0.1:<api port>`.
    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// The saved settings, if `up` got as far as saving them.
    pub fn load(state: &StateDir) -> Result<Option<Self>> {
        let path = state.settings();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                Err::<String, _>(e).io_context(|| format!("cannot read {}", path.display()))?
            }
        };
        let s: Self = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{} is not valid: {e}", path.display())))?;
        s.validate()?;
        Ok(Some(s))
    }

    pub fn save(&self, state: &StateDir) -> Result<()> {
        let path = state.settings();
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Config(format!("cannot serialise the settings: {e}")))?;
        fs::write(&path, text + "\n").io_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

fn string_from_env(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn port_from_env(name: &str, default: u16) -> Result<PortSetting> {
    match std::env::var(name).ok().filter(|v| !v.is_empty()) {
        None => Ok(PortSetting {
            port: default,
            explicit: false,
        }),
        Some(v) => match v.parse::<u16>() {
            Ok(port) if port > 0 => Ok(PortSetting {
                port,
                explicit: true,
            }),
            _ => Err(Error::Config(format!(
                "{name}={v:?} is not a port (1-65535)"
            ))),
        },
    }
}

fn port_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

fn choose_port(env: &str, setting: PortSetting, taken: &[u16]) -> Result<u16> {
    if !taken.contains(&setting.port) && port_free(setting.port) {
        return Ok(setting.port);
    }
    if setting.explicit {
        return Err(Error::Config(format!(
            "port 127.0.0.1:{} ({env}) is taken",
            setting.port
        )));
    }
    loop {
        let [port] = mooring_localkube::components::free_ports::<1>()?;
        if !taken.contains(&port) {
            tracing::info!(
                "port {} is taken; using {port} instead (set {env} to choose)",
                setting.port
            );
            return Ok(port);
        }
    }
}

/// `a.b.c.d/n` (n in 8..=30) as the network address and n; host bits must be zero.
pub fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8)> {
    let bad = || {
        Error::Config(format!(
            "{cidr:?} is not an IPv4 network like 10.244.0.0/24"
        ))
    };
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&len) {
        return Err(bad());
    }
    let mask = u32::MAX << (32 - u32::from(len));
    if u32::from(addr) & !mask != 0 {
        return Err(bad());
    }
    Ok((addr, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_gateway() {
        assert_eq!(
            parse_cidr("10.244.0.0/24").unwrap(),
            (Ipv4Addr::new(10, 244, 0, 0), 24)
        );
        assert!(parse_cidr("10.244.0.1/24").is_err());
        assert!(parse_cidr("10.244.0.0").is_err());
        assert!(parse_cidr("10.244.0.0/31").is_err());
        let s = Settings {
            api_port: 1,
            etcd_port: 2,
            etcd_peer_port: 3,
            bridge: "mooring0".into(),
            pod_cidr: "10.244.7.0/24".into(),
            netns_prefix: "mooring-".into(),
            veth_prefix: "mvh".into(),
            node_name: NODE_NAME.into(),
        };
        assert_eq!(s.gateway().unwrap(), Ipv4Addr::new(10, 244, 7, 1));
        assert_eq!(s.gateway_cidr().unwrap(), "10.244.7.1/24");
        assert!(s.validate().is_ok());
        let bad = Settings {
            bridge: "mvh0".into(),
            ..s.clone()
        };
        assert!(bad.validate().is_err());
        let long = Settings {
            bridge: "a-very-long-bridge-name".into(),
            ..s
        };
        assert!(long.validate().is_err());
    }

    #[test]
    fn state_dir_paths() {
        let s = StateDir::new(PathBuf::from("/nonexistent/mooring/dc")).unwrap();
        assert_eq!(s.marker(), "/nonexistent/mooring/dc");
        assert_eq!(
            s.log("etcd"),
            PathBuf::from("/nonexistent/mooring/dc/logs/etcd.log")
        );
        assert_eq!(
            s.pidfile("agent"),
            PathBuf::from("/nonexistent/mooring/dc/run/agent.pid")
        );
        assert!(StateDir::new(PathBuf::from("/")).is_err());
        assert!(StateDir::new(PathBuf::from("/tmp")).is_err());
    }

    #[test]
    fn explicit_taken_port_is_an_error_default_is_replaced() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let explicit = PortSetting {
            port,
            explicit: true,
        };
        assert!(choose_port("X", explicit, &[]).is_err());
        let default = PortSetting {
            port,
            explicit: false,
        };
        let other = choose_port("X", default, &[]).unwrap();
        assert_ne!(other, port);
    }
}
