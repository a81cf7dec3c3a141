//! Finding (and, once per machine, building) the control-plane binaries.

use std::path::PathBuf;

use anyhow::Result;

pub use mooring_localkube::DEFAULT_K8S_VERSION;

/// The binaries the harness itself starts.
pub const REQUIRED_BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// The directory that holds etcd, kube-apiserver and kube-controller-manager (and kubectl, helm).
///
/// 1. `MOORING_K8S_BINS` when set (it must hold the binaries; nothing is built then);
/// 2. else `$MOORING_CACHE/k8s-bins/<version>` (`MOORING_CACHE` defaults to `$HOME/.cache/mooring`,
///    the version to `MOORING_K8S_VERSION` or [`DEFAULT_K8S_VERSION`]) when complete;
/// 3. else runs `scripts/build-control-plane.sh` (15-30 minutes, once per machine) under a file lock,
///    so that parallel test binaries build once, and uses the directory it prints on its last line.
///
/// This blocks (possibly for a long time): call it from `spawn_blocking` in async code.
pub fn locate_binaries() -> Result<PathBuf> {
    Ok(mooring_localkube::locate_binaries(&REQUIRED_BINARIES)?)
}
