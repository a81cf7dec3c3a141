//! Child processes that cannot outlive the test process.
//!
//! Every component runs in its own process group (so that stopping it reaches anything it forks)
//! and with `PR_SET_PDEATHSIG = SIGKILL`. The kernel sends that signal when the *thread* that
//! forked the child ends, not the process; tests run on short-lived threads (and tokio runtimes have
//! their own), so all children are forked by one spawner thread that lives as long as the process.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
pub use mooring_localkube::components::log_tail;
use mooring_localkube::components::logged_command;

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        // Never joined: it must live (and so keep the children's parent-death signal armed) until
        // the process exits.
        let spawned = std::thread::Builder::new()
            .name("mooring-cp-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // The receiver only goes away if the caller gave up; nothing to do then.
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = spawned {
            // Without the thread every spawn below fails with a clear error instead.
            eprintln!("mooring-tests: cannot start the spawner thread: {e}");
        }
        Mutex::new(tx)
    })
}

/// Spawns `cmd` in its own process group, killed (SIGKILL) when this process dies.
fn spawn_guarded(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id();
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec; it only calls prctl and getppid, which are
    // async-signal-safe, and allocates only on the error path (the child is about to fail anyway).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other("parent exited before exec"));
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("spawner lock poisoned"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the spawner thread did not answer"))?
}

/// One running component (etcd, kube-apiserver, ...), its output going to a log file.
pub(crate) struct Process {
    pub(crate) name: String,
    pub(crate) log: PathBuf,
    child: Child,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Starts `program args...` with stdout and stderr appended to `log`.
    pub(crate) fn start(
        name: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
        cwd: &Path,
    ) -> Result<Self> {
        let cmd = logged_command(program, args, cwd, &log)?;
        let child = spawn_guarded(cmd)
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_string(),
            log,
            child,
            exited: None,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub(crate) fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// The last `lines` lines of the component's log.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    fn signal_group(&self, signal: libc::c_int) {
        if self.exited.is_none() {
            // The child leads its own process group (process_group(0)), so its pid is the pgid.
            // SAFETY: kill(2) with a negative pid signals that group; no memory is involved.
            unsafe {
                libc::kill(-(self.pid() as libc::pid_t), signal);
            }
        }
    }
}

/// SIGTERM to every process group, up to `grace` for them to exit, then SIGKILL and reap.
pub(crate) fn stop_all(processes: &mut [Process], grace: Duration) {
    for p in processes.iter_mut() {
        if p.exit_status().is_none() {
            p.signal_group(libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if processes.iter_mut().all(|p| p.exit_status().is_some()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in processes.iter_mut() {
        if p.exit_status().is_none() {
            p.signal_group(libc::SIGKILL);
            p.exited = p.child.wait().ok();
        }
    }
}
