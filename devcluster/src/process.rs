//! Daemons (started in their own session, output to a log file, pid in a pidfile, marked with
//! [`MARKER_ENV`]) and finding and stopping every process of a devcluster.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use mooring_localkube::components::logged_command;
use mooring_localkube::IoContext as _;

use crate::state::{StateDir, MARKER_ENV};
use crate::Result;

/// A component started by this process.
#[derive(Debug)]
pub struct Daemon {
    pub name: String,
    pub pid: u32,
    child: Child,
}

impl Daemon {
    /// Starts `program args...` as a daemon: a new session (so a Ctrl-C in the terminal does not
    /// reach it and it outlives `up`), stdin from /dev/null, stdout and stderr to
    /// `logs/<name>.log` (truncated), the marker and `env` in its environment, its pid in
    /// `run/<name>.pid`.
    pub fn start(
        state: &StateDir,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Self> {
        fs::create_dir_all(state.logs())
            .io_context(|| format!("cannot create {}", state.logs().display()))?;
        let mut cmd = logged_command(program, args, state.root(), &state.log(name))?;
        cmd.env(MARKER_ENV, state.marker())
            .envs(env.iter().map(|(k, v)| (k, v)));
        // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .io_context(|| format!("cannot start {name} ({})", program.display()))?;
        let pid = child.id();
        state.write_pid(name, pid)?;
        Ok(Self {
            name: name.to_string(),
            pid,
            child,
        })
    }

    /// `Some(status)` once it has exited (and is reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain anything.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// Whether `pid` carries `MARKER_ENV=<marker>` in its environment.
pub fn carries_marker(pid: u32, marker: &str) -> bool {
    let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let wanted = format!("{MARKER_ENV}={marker}");
    environ
        .split(|b| *b == 0)
        .any(|entry| entry == wanted.as_bytes())
}

/// The inode of a process's network namespace.
fn net_ns_inode(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// This process and its ancestors: never ours to kill.
fn self_and_ancestors() -> HashSet<u32> {
    let mut set = HashSet::new();
    let mut pid = std::process::id();
    while pid > 1 && set.insert(pid) {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            break;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        match ppid {
            Some(p) => pid = p,
            None => break,
        }
    }
    set
}

fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

/// Every live process of this devcluster: those with the marker in their environment and those in
/// one of the network namespaces `netns_inodes` (the pods'), except this process and its
/// ancestors.
pub fn find_ours(marker: &str, netns_inodes: &HashSet<u64>) -> BTreeSet<u32> {
    let exclude = self_and_ancestors();
    all_pids()
        .into_iter()
        .filter(|pid| !exclude.contains(pid))
        .filter(|&pid| {
            carries_marker(pid, marker)
                || net_ns_inode(pid).is_some_and(|ino| netns_inodes.contains(&ino))
        })
        .filter(|&pid| alive(pid))
        .collect()
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) touches no memory; a stale pid at worst gets ESRCH.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// SIGTERM to `pids`, up to `grace` for them to exit, then SIGKILL to the rest and up to 2 s more.
/// Returns the pids still alive after that (normally none).
pub fn terminate(pids: &BTreeSet<u32>, grace: Duration) -> BTreeSet<u32> {
    for &pid in pids {
        signal(pid, libc::SIGTERM);
    }
    let mut left = wait_gone(pids, grace);
    if !left.is_empty() {
        tracing::info!(pids = ?left, "still running after {grace:?}: SIGKILL");
        for &pid in &left {
            signal(pid, libc::SIGKILL);
        }
        left = wait_gone(&left, Duration::from_secs(2));
    }
    left
}

/// Waits until none of `pids` is alive or `timeout` passes; returns those still alive.
fn wait_gone(pids: &BTreeSet<u32>, timeout: Duration) -> BTreeSet<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: BTreeSet<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_unmarked() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(!carries_marker(me, "/nowhere/at/all"));
        assert!(self_and_ancestors().contains(&me));
    }

    #[test]
    fn marked_children_are_found_and_terminated() {
        let marker = format!("/tmp/devcluster-unit-{}", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env(MARKER_ENV, &marker)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        // The environment is readable as soon as exec has happened.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !carries_marker(pid, &marker) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let found = find_ours(&marker, &HashSet::new());
        assert!(found.contains(&pid), "{found:?} lacks {pid}");
        // `sleep` is our child: reap it in the background so that it does not stay a zombie
        // (terminate treats zombies as gone anyway).
        let left = terminate(&found, Duration::from_secs(5));
        assert!(left.is_empty());
        let _ = child.wait();
        assert!(find_ours(&marker, &HashSet::new()).is_empty());
    }
}
