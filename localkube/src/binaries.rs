//! Finding (and, once per machine, building) the control-plane binaries.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, IoContext as _, Result};

/// The Kubernetes version run unless `MOORING_K8S_VERSION` says otherwise. It must match the default
/// of `scripts/build-control-plane.sh`.
pub const DEFAULT_K8S_VERSION: &str = "v1.34.4";

/// The build script, relative to this crate.
fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-control-plane.sh")
}

/// The directory that holds the `required` binaries (of etcd, kube-apiserver,
/// kube-controller-manager, kube-scheduler, kubectl, helm).
///
/// 1. `MOORING_K8S_BINS` when set (it must hold the binaries; nothing is built then);
/// 2. else `$MOORING_CACHE/k8s-bins/<version>` (`MOORING_CACHE` defaults to `$HOME/.cache/mooring`,
///    the version to `MOORING_K8S_VERSION` or [`DEFAULT_K8S_VERSION`]) when complete;
/// 3. else runs `scripts/build-control-plane.sh` (15-30 minutes, once per machine) under a file lock,
///    so that parallel test binaries build once, and uses the directory it prints on its last line.
///
/// This blocks (possibly for a long time): call it from `spawn_blocking` in async code.
pub fn locate_binaries(required: &[&str]) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MOORING_K8S_BINS") {
        let dir = PathBuf::from(dir);
        check_complete(&dir, required).map_err(|e| {
            Error::Build(format!(
                "MOORING_K8S_BINS={} does not hold the control-plane binaries: {e}",
                dir.display()
            ))
        })?;
        return Ok(dir);
    }
    let cache = cache_dir()?;
    let version =
        std::env::var("MOORING_K8S_VERSION").unwrap_or_else(|_| DEFAULT_K8S_VERSION.to_string());
    let dir = cache.join("k8s-bins").join(&version);
    if check_complete(&dir, required).is_ok() {
        return Ok(dir);
    }

    fs::create_dir_all(cache.join("k8s-bins"))
        .io_context(|| format!("cannot create {}", cache.join("k8s-bins").display()))?;
    let _lock = FileLock::exclusive(&cache.join("k8s-bins").join(".build.lock"))?;
    // Somebody else may have finished the build while we waited for the lock.
    if check_complete(&dir, required).is_ok() {
        return Ok(dir);
    }
    let built = run_build_script()?;
    check_complete(&built, required).map_err(|e| {
        Error::Build(format!(
            "{} finished but {} is incomplete: {e}",
            build_script().display(),
            built.display()
        ))
    })?;
    Ok(built)
}

/// `$MOORING_CACHE`, else `$HOME/.cache/mooring`: where the binaries and the cargo target live.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MOORING_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let home: OsString = std::env::var_os("HOME").ok_or_else(|| {
        Error::Build("neither MOORING_K8S_BINS, MOORING_CACHE nor HOME is set".to_string())
    })?;
    Ok(PathBuf::from(home).join(".cache/mooring"))
}

fn check_complete(dir: &Path, required: &[&str]) -> Result<()> {
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|b| !is_executable(&dir.join(b)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingBinaries {
            dir: dir.display().to_string(),
            missing: missing.join(", "),
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn run_build_script() -> Result<PathBuf> {
    let script = build_script();
    eprintln!(
        "mooring: control-plane binaries missing; running {} (one-time, 15-30 minutes)",
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .io_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        return Err(Error::Build(format!(
            "{} failed ({}); see its output above",
            script.display(),
            out.status
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(|| Error::Build(format!("{} printed no directory", script.display())))?;
    Ok(PathBuf::from(last))
}

/// An exclusive `flock` held until dropped (the kernel releases it if the process dies).
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Waits for and takes the lock on `path` (created if missing, never truncated).
    pub fn exclusive(path: &Path) -> Result<Self> {
        Self::take(path, libc::LOCK_EX)
    }

    /// Takes the lock on `path` if nobody holds it; an error (`EWOULDBLOCK`) otherwise.
    pub fn try_exclusive(path: &Path) -> Result<Self> {
        Self::take(path, libc::LOCK_EX | libc::LOCK_NB)
    }

    fn take(path: &Path, operation: libc::c_int) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .io_context(|| format!("cannot open lock file {}", path.display()))?;
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
            if rc == 0 {
                return Ok(Self { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).io_context(|| format!("cannot lock {}", path.display()));
            }
        }
    }
}
