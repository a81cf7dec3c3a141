//! What the devcluster integration tests share: a [`Devcluster`] guard (its own state directory,
//! free ports, bridge, name prefixes and pod network; `down` when dropped) and [`wait_for`].
//!
//! Every test file includes this module (`mod support;`) and so is its own crate with its own
//! copy of it.

// Each test file (a crate of its own) uses only part of this module; the rest would warn as
// unused in that crate.
#![allow(dead_code)]

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;

pub mod brokers;

pub const BIN: &str = env!("CARGO_BIN_EXE_devcluster");

/// The network names of a devcluster: unique per test process and tag, so that two runs of the
/// tests (or a developer's devcluster) do not collide. All devclusters of a process with the same
/// tag share them (`up_down.rs` relies on that: a second `up` on the same bridge is refused).
pub struct Net {
    pub bridge: String,
    pub netns_prefix: String,
    pub veth_prefix: String,
    pub pod_cidr: String,
}

/// The tags of this process in the order they were first used: a tag's index is its slot.
static TAGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl Net {
    /// The names of `tag` in this process: from the process id and the tag's slot (the tags of a
    /// process get slots 0, 1, … in the order they are first used, so they never share names).
    pub fn of(tag: &str) -> Self {
        let slot = {
            let mut tags = TAGS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match tags.iter().position(|t| t == tag) {
                Some(slot) => slot,
                None => {
                    tags.push(tag.to_string());
                    tags.len() - 1
                }
            }
        };
        assert!(slot < 8, "at most 8 devcluster tags per test process");
        let id = std::process::id();
        // Fixed widths: no name of one devcluster is a prefix of another's.
        let key = format!("{:04}{}", id % 10_000, char::from(b'a' + slot as u8));
        Self {
            bridge: format!("mdb{key}"),
            netns_prefix: format!("mdn{key}-"),
            // 6 characters, room for 8 hex digits within the 15 of an interface name.
            veth_prefix: format!("m{key}"),
            // 10.244.0.0/24 is a developer's devcluster; 10.244-10.251 by slot, the third octet
            // (1-250) from the pid.
            pod_cidr: format!("10.{}.{}.0/24", 244 + slot, 1 + id % 250),
        }
    }
}

/// A devcluster of a test; `down` when dropped. When the test fails (or
/// `MOORING_KEEP_TEST_STATE` is set) its state directory with all logs is kept and its path
/// printed.
pub struct Devcluster {
    pub dir: PathBuf,
    pub ports: [u16; 3],
    pub net: Net,
    started: Instant,
}

impl Devcluster {
    /// A devcluster that is not up yet: the network of `tag` ([`Net::of`]), a fresh state
    /// directory named from `tag`, the process id and `name` (may be empty), free ports.
    pub fn new(tag: &str, name: &str) -> Self {
        assert!(
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() } == 0,
            "the devcluster tests ({tag}) need root (bridges, network namespaces, mounts)"
        );
        let id = std::process::id();
        let dir = std::env::temp_dir().join(if name.is_empty() {
            format!("mooring-devcluster-{tag}-{id}")
        } else {
            format!("mooring-devcluster-{tag}-{id}-{name}")
        });
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the state directory");
        let dir = fs::canonicalize(&dir).expect("canonical state directory");
        Self {
            dir,
            ports: mooring_localkube::components::free_ports::<3>().expect("free ports"),
            net: Net::of(tag),
            started: Instant::now(),
        }
    }

    /// [`Devcluster::new`] for `tag`, then `devcluster up`, which must succeed.
    pub fn up(tag: &str) -> Self {
        let cluster = Self::new(tag, "");
        cluster.ok(&["up"]);
        cluster.elapsed("devcluster up");
        cluster
    }

    /// `devcluster <args>` on this devcluster (its state directory, ports and network).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("MOORING_DEVCLUSTER_DIR", &self.dir)
            .env("MOORING_DEVCLUSTER_API_PORT", self.ports[0].to_string())
            .env("MOORING_DEVCLUSTER_ETCD_PORT", self.ports[1].to_string())
            .env(
                "MOORING_DEVCLUSTER_ETCD_PEER_PORT",
                self.ports[2].to_string(),
            )
            .env("MOORING_DEVCLUSTER_BRIDGE", &self.net.bridge)
            .env("MOORING_DEVCLUSTER_NETNS_PREFIX", &self.net.netns_prefix)
            .env("MOORING_DEVCLUSTER_VETH_PREFIX", &self.net.veth_prefix)
            .env("MOORING_DEVCLUSTER_POD_CIDR", &self.net.pod_cidr)
            .env_remove("MOORING_DEVCLUSTER")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `devcluster <args>`; its output is echoed for the test log.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run devcluster");
        eprintln!(
            "$ devcluster {} -> {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `devcluster <args>`, which must succeed; returns stdout and stderr together.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "devcluster {} failed ({}); component logs in {}",
            args.join(" "),
            out.status,
            self.dir.join("logs").display()
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    pub async fn client(&self) -> Client {
        mooring_devcluster::kube_client(&self.kubeconfig())
            .await
            .expect("a client for the devcluster")
    }

    /// Prints `what` with the time since the devcluster was created.
    pub fn elapsed(&self, what: &str) {
        eprintln!("[{:6.1} s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// The Pod's network namespace (from its uid, as the agent names it).
    pub fn netns(&self, pod: &Pod) -> String {
        let hex: String = pod
            .metadata
            .uid
            .as_deref()
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_hexdigit())
            .take(12)
            .collect();
        format!("{}{hex}", self.net.netns_prefix)
    }

    /// What the container of the Pod wrote (its log file in the state directory).
    pub fn pod_log(&self, pod: &Pod, container: &str) -> String {
        let dir = format!(
            "{}_{}_{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default(),
            pod.metadata.uid.as_deref().unwrap_or_default()
        );
        fs::read_to_string(
            self.dir
                .join("pods")
                .join(dir)
                .join("logs")
                .join(format!("{container}.log")),
        )
        .unwrap_or_default()
    }
}

impl Drop for Devcluster {
    fn drop(&mut self) {
        // Whatever happened, take it all down; keep the state when the test failed.
        let failed = std::thread::panicking();
        if failed {
            let log = fs::read_to_string(self.dir.join("logs/agent.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!(
                "--- agent.log (last 60 lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            // `down` removes the pods' directories: keep their container logs with the others.
            let keep = self.dir.join("logs/pods");
            for pod in fs::read_dir(self.dir.join("pods"))
                .into_iter()
                .flatten()
                .flatten()
            {
                for log in fs::read_dir(pod.path().join("logs"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let _ = fs::create_dir_all(&keep);
                    let name = format!(
                        "{}-{}",
                        pod.file_name().to_string_lossy(),
                        log.file_name().to_string_lossy()
                    );
                    let _ = fs::copy(log.path(), keep.join(name));
                }
            }
        }
        let _ = self.command(&["down"]).output();
        if failed || std::env::var_os("MOORING_KEEP_TEST_STATE").is_some() {
            eprintln!("state (logs) kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Polls `f` every 250 ms until it returns `Some`, for at most `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_for_every(Duration::from_millis(250), what, timeout, f).await
}

/// Polls `f` every `every` until it returns `Some`, for at most `timeout`.
pub async fn wait_for_every<T, F, Fut>(
    every: Duration,
    what: &str,
    timeout: Duration,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}
