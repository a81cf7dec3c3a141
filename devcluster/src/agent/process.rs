//! Container processes: launch in the Pod's namespaces, signal, wait, reap.
//!
//! A container runs as
//! `ip netns exec <netns> unshare --mount --uts --pid --fork --kill-child --mount-proc
//! --propagation private -- /bin/sh <init script> <argv...>`: `ip netns exec` enters the Pod's
//! network namespace and bind-mounts `/etc/netns/<netns>/{hosts,resolv.conf}` over `/etc`, then
//! becomes `unshare`, which forks the container's PID 1 in fresh mount, UTS and PID namespaces.
//! That PID 1 is the generated init script ([`init_script`]): it sets the hostname, makes `/dev`
//! private, bind-mounts the volumes at their mount paths and `exec`s the container's program,
//! which so becomes the container's PID 1. `unshare` ignores SIGTERM, so signals go to that PID 1 (its host pid is
//! `unshare`'s only child); `--kill-child` takes it down if `unshare` dies, and when it exits
//! the kernel kills everything else in its PID namespace.
//!
//! The agent is a child subreaper ([`become_subreaper`]): a process that loses its parent is
//! re-parented to the agent, and [`reap_orphans`] collects those that become zombies without
//! taking the exit status of the agent's own children from tokio.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::env::Env;

/// Errors starting a container.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A file (the init script, the log) could not be written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// Where a volume goes inside the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The host path (a directory, or a file for a `subPath` to a file).
    pub source: PathBuf,
    /// The mount path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The kernel's exit report of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The exit code; 128 + signal when a signal killed it.
    pub code: i32,
    /// The signal that killed it.
    pub signal: Option<i32>,
}

impl From<ExitStatus> for Exit {
    fn from(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit { code, signal: None },
            (None, Some(sig)) => Exit {
                code: 128 + sig,
                signal: Some(sig),
            },
            (None, None) => Exit {
                code: 255,
                signal: None,
            },
        }
    }
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The part of the init script that gives the container a private `/dev`: an overlay whose lower
/// layer is the host's `/dev` (every device stays usable) and whose upper layer is a small tmpfs
/// in the stage directory, with the host's `/dev` submounts (`pts`, `shm`, `mqueue`, ...) bound
/// again on top. Files the container (or the init script: the termination message file's mount
/// point `/dev/termination-log`) creates in `/dev` so land in that tmpfs, never in the host's
/// `/dev`; they vanish with the container's mount namespace. Without overlayfs the container does
/// not start (the reason is in its log).
const PRIVATE_DEV: &str = "\
# A private /dev: the host's devices below, a tmpfs above for files created in it.
mkdir dev
mount -t tmpfs -o mode=0755,size=1m devcluster-dev dev
mkdir dev/upper dev/work dev/host
mount --rbind /dev dev/host
mount -t overlay devcluster-dev -o lowerdir=/dev,upperdir=dev/upper,workdir=dev/work /dev
for __devcluster_m in $(awk '$5 ~ \"^/dev/[^/]+$\" {print $5}' /proc/self/mountinfo | sort -u); do
  mount --rbind \"dev/host/${__devcluster_m#/dev/}\" \"$__devcluster_m\"
done
unset __devcluster_m
";

/// The init script of a container: hostname, mounts, working directory, then `exec "$@"` (the
/// container's argv comes as the script's arguments, so nothing of it is quoted into the script).
///
/// `/dev` is made private first ([`PRIVATE_DEV`]). Every source is then bind-mounted under
/// `stage` (a directory of the Pod's), and the container's mount paths are bound from there,
/// parents before children, with read-only remounts last: so a mount path such as `/tmp` cannot hide a source that lives below it (the
/// state directory may be under `/tmp`), and a read-only parent does not stop a child's mount
/// point from being created.
pub fn init_script(
    hostname: &str,
    mounts: &[Mount],
    stage: &Path,
    working_dir: Option<&str>,
) -> String {
    let mut mounts: Vec<&Mount> = mounts.iter().collect();
    mounts.sort_by_key(|m| Path::new(&m.target).components().count());
    let mut s = String::from(
        "#!/bin/sh\n\
         # Generated by the devcluster agent: PID 1 of a container. It sets up the container's\n\
         # own mount and UTS namespaces, then becomes the container's program.\n\
         set -e\n\
         __devcluster_path=\"$PATH\"\n\
         PATH=/usr/sbin:/usr/bin:/sbin:/bin\n",
    );
    s.push_str(&format!("hostname {}\n", shell_quote(hostname)));
    let stage = shell_quote(&stage.display().to_string());
    s.push_str(&format!("rm -rf {stage}\nmkdir -p {stage}\ncd {stage}\n"));
    s.push_str(PRIVATE_DEV);
    for (i, m) in mounts.iter().enumerate() {
        let src = shell_quote(&m.source.display().to_string());
        if m.source.is_dir() {
            s.push_str(&format!("mkdir {i}\n"));
        } else {
            s.push_str(&format!(": > {i}\n"));
        }
        s.push_str(&format!("mount --bind {src} {i}\n"));
    }
    for (i, m) in mounts.iter().enumerate() {
        let dst = shell_quote(&m.target);
        if m.source.is_dir() {
            s.push_str(&format!("mkdir -p {dst}\n"));
        } else {
            let parent = Path::new(&m.target)
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "/".into());
            s.push_str(&format!(
                "mkdir -p {}\n[ -e {dst} ] || : > {dst}\n",
                shell_quote(&parent)
            ));
        }
        s.push_str(&format!("mount --bind {i} {dst}\n"));
    }
    for m in mounts.iter().filter(|m| m.read_only) {
        s.push_str(&format!(
            "mount -o remount,bind,ro {}\n",
            shell_quote(&m.target)
        ));
    }
    s.push_str("cd /\nPATH=\"$__devcluster_path\"\nunset __devcluster_path\n");
    if let Some(dir) = working_dir.filter(|d| !d.is_empty()) {
        let dir = shell_quote(dir);
        s.push_str(&format!("mkdir -p {dir}\ncd {dir}\n"));
    }
    s.push_str("exec \"$@\"\n");
    s
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The Pod's network namespace.
    pub netns: String,
    /// The init script (written by the caller).
    pub init_script: PathBuf,
    /// The container's argv.
    pub argv: Vec<String>,
    /// Its full environment.
    pub env: Env,
    /// Where stdout and stderr go (appended).
    pub log: PathBuf,
}

/// A running container.
#[derive(Debug)]
pub struct Running {
    child: Child,
    /// The host pid of `unshare`.
    pub unshare_pid: u32,
    /// The host pid of the container's PID 1, once known.
    pub pid1: Option<u32>,
    /// When it started.
    pub started: Instant,
}

/// The pids the agent waits on itself (never reaped by [`reap_orphans`]).
static OWN_CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn own_children() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    OWN_CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Finds a program in the standard directories (for `ip`, `unshare`, `nsenter`).
pub fn system_binary(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Starts a container.
pub async fn launch(spec: &Launch) -> Result<Running, ProcessError> {
    if let Some(dir) = spec.log.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| ProcessError::Io {
                context: format!("cannot create {}", dir.display()),
                source,
            })?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|source| ProcessError::Io {
            context: format!("cannot open {}", spec.log.display()),
            source,
        })?;
    let err = log.try_clone().map_err(|source| ProcessError::Io {
        context: format!("cannot open {}", spec.log.display()),
        source,
    })?;
    let mut cmd = Command::new(system_binary("ip"));
    cmd.arg("netns")
        .arg("exec")
        .arg(&spec.netns)
        .arg(system_binary("unshare"))
        .args([
            "--mount",
            "--uts",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
        ])
        .arg(&spec.init_script)
        .args(&spec.argv)
        .env_clear()
        .envs(spec.env.iter())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        .process_group(0);
    let child = cmd.spawn().map_err(|source| ProcessError::Io {
        context: "cannot run ip netns exec".to_string(),
        source,
    })?;
    let unshare_pid = child.id().unwrap_or(0);
    own_children().insert(unshare_pid);
    let mut running = Running {
        child,
        unshare_pid,
        pid1: None,
        started: Instant::now(),
    };
    running.pid1 = find_pid1(&mut running).await;
    Ok(running)
}

/// Waits (up to 5 s) for `unshare` to fork the container's PID 1 and returns its host pid.
async fn find_pid1(running: &mut Running) -> Option<u32> {
    let pid = running.unshare_pid;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = running.child.try_wait() {
            return None;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "unshare" {
            if let Some(child) = children_of(pid).into_iter().next() {
                return Some(child);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The children of `pid` (from `/proc/<pid>/task/<pid>/children`, else a scan of `/proc`).
pub fn children_of(pid: u32) -> Vec<u32> {
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| proc_stat(*p).map(|s| s.ppid) == Some(pid))
        .collect()
}

struct ProcStat {
    state: char,
    ppid: u32,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(ProcStat { state, ppid })
}

/// Sends `signal` to `pid`; false when it does not exist.
pub fn send_signal(pid: u32, signal: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 1 {
        return false;
    }
    // SAFETY: kill(2) has no memory effects; the pid is a process we started.
    unsafe { libc::kill(pid, signal) == 0 }
}

impl Running {
    /// The container's id as the status shows it.
    pub fn container_id(&self) -> String {
        format!("devcluster://{}", self.pid1.unwrap_or(self.unshare_pid))
    }

    /// Waits for the container to exit.
    pub async fn wait(&mut self) -> Exit {
        let exit = match self.child.wait().await {
            Ok(status) => Exit::from(status),
            Err(e) => {
                tracing::warn!(pid = self.unshare_pid, error = %e, "cannot wait for a container");
                Exit {
                    code: 255,
                    signal: None,
                }
            }
        };
        own_children().remove(&self.unshare_pid);
        exit
    }

    /// Stops the container the way the kubelet does: SIGTERM to its PID 1, then SIGKILL when it
    /// is still running after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Exit {
        if let Ok(Some(status)) = self.child.try_wait() {
            own_children().remove(&self.unshare_pid);
            return Exit::from(status);
        }
        match self.pid1 {
            Some(pid1) => {
                send_signal(pid1, libc::SIGTERM);
            }
            None => {
                send_signal(self.unshare_pid, libc::SIGKILL);
            }
        }
        if let Ok(exit) = tokio::time::timeout(grace, self.wait_inner()).await {
            return exit;
        }
        tracing::info!(
            pid = self.pid1.unwrap_or(self.unshare_pid),
            grace_secs = grace.as_secs(),
            "the container did not stop within its grace period: SIGKILL"
        );
        if let Some(pid1) = self.pid1 {
            send_signal(pid1, libc::SIGKILL);
        }
        send_signal(self.unshare_pid, libc::SIGKILL);
        self.wait().await
    }

    async fn wait_inner(&mut self) -> Exit {
        self.wait().await
    }
}

/// Makes the agent the reaper of its descendants' orphans (`PR_SET_CHILD_SUBREAPER`).
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer and changes no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Collects zombie children the agent did not start itself: every `period`, the zombies
/// that were already zombies at the previous pass (tokio reaps its own children at once) and
/// are not waited on by the agent are reaped by pid.
pub async fn reap_orphans(period: Duration) {
    let me = std::process::id();
    let mut seen: BTreeSet<u32> = BTreeSet::new();
    loop {
        tokio::time::sleep(period).await;
        let zombies: BTreeSet<u32> = children_of(me)
            .into_iter()
            .filter(|p| proc_stat(*p).is_some_and(|s| s.state == 'Z'))
            .collect();
        let own = own_children().clone();
        for pid in zombies.intersection(&seen) {
            if own.contains(pid) {
                continue;
            }
            let Ok(raw) = i32::try_from(*pid) else {
                continue;
            };
            let mut status = 0;
            // SAFETY: waitpid on one specific zombie child; `status` is a valid out pointer.
            let rc = unsafe { libc::waitpid(raw, &mut status, libc::WNOHANG) };
            if rc == raw {
                tracing::debug!(pid, "reaped an orphaned process");
            }
        }
        seen = zombies;
    }
}

/// Runs a command to completion with the pids registered as the agent's own.
pub async fn output(cmd: &mut Command) -> std::io::Result<std::process::Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn()?;
    let pid = child.id();
    if let Some(pid) = pid {
        own_children().insert(pid);
    }
    let out = child.wait_with_output().await;
    if let Some(pid) = pid {
        own_children().remove(&pid);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn the_init_script_mounts_parents_first_and_execs_the_arguments() {
        let dir = std::env::temp_dir();
        let file = dir.join(format!("devcluster-init-test-{}", std::process::id()));
        std::fs::write(&file, "x").unwrap();
        let s = init_script(
            "bus-0",
            &[
                Mount {
                    source: dir.clone(),
                    target: "/etc/rabbitmq/certs/mqtts".into(),
                    read_only: true,
                },
                Mount {
                    source: dir.clone(),
                    target: "/etc/rabbitmq".into(),
                    read_only: false,
                },
                Mount {
                    source: file.clone(),
                    target: "/opt/emqx/etc/emqx.conf".into(),
                    read_only: false,
                },
            ],
            Path::new("/pod/run/stage-c"),
            Some("/var/lib/x"),
        );
        std::fs::remove_file(&file).unwrap();
        // Sources are staged first (parents first), then bound to their targets.
        assert!(s.contains(&format!("mkdir 0\nmount --bind '{}' 0\n", dir.display())));
        assert!(s.contains(&format!(": > 2\nmount --bind '{}' 2\n", file.display())));
        let parent = s.find("mount --bind 0 '/etc/rabbitmq'\n").unwrap();
        let child = s
            .find("mount --bind 1 '/etc/rabbitmq/certs/mqtts'\n")
            .unwrap();
        let ro = s.find("mount -o remount,bind,ro").unwrap();
        assert!(parent < child && child < ro);
        assert!(s.contains("cd '/pod/run/stage-c'\n"));
        // /dev is made private (an overlay on a tmpfs) before anything is mounted in it.
        let dev = s.find("mount -t overlay devcluster-dev").unwrap();
        assert!(dev > s.find("cd '/pod/run/stage-c'\n").unwrap());
        assert!(dev < s.find("mount --bind 0 '/etc/rabbitmq'\n").unwrap());
        assert!(s.contains("mount -o remount,bind,ro '/etc/rabbitmq/certs/mqtts'"));
        assert!(s.contains("[ -e '/opt/emqx/etc/emqx.conf' ] || : > '/opt/emqx/etc/emqx.conf'"));
        assert!(s.contains("hostname 'bus-0'"));
        assert!(s.contains("cd '/var/lib/x'"));
        assert!(s.ends_with("exec \"$@\"\n"));
    }

    #[test]
    fn exits_by_signal_read_as_128_plus_the_signal() {
        let killed = ExitStatus::from_raw(9);
        assert_eq!(
            Exit::from(killed),
            Exit {
                code: 137,
                signal: Some(9)
            }
        );
        let normal = ExitStatus::from_raw(3 << 8);
        assert_eq!(
            Exit::from(normal),
            Exit {
                code: 3,
                signal: None
            }
        );
    }
}
