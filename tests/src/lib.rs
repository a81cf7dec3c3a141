//! Mooring's test harness: a real Kubernetes control plane on loopback (etcd, kube-apiserver and,
//! when asked, kube-controller-manager, built from source by `scripts/build-control-plane.sh`), and
//! helpers to install Mooring's CRD into it.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use mooring_tests::{ControlPlane, ControlPlaneOptions};
//! let cp = ControlPlane::start(ControlPlaneOptions::default()).await?;
//! let client = cp.client().await?;
//! mooring_tests::install_crd(&client).await?;
//! mooring_tests::create_namespace(&client, "demo").await?;
//! # Ok(()) }
//! ```
//!
//! Environment: `MOORING_K8S_BINS` (a directory with the binaries; otherwise the cache
//! `${MOORING_CACHE:-$HOME/.cache/mooring}/k8s-bins/${MOORING_K8S_VERSION:-v1.34.4}`, built by
//! `scripts/build-control-plane.sh` on first use), `MOORING_KEEP_TEST_STATE` (keep the state
//! directory with logs, etcd data, keys and kubeconfig after the control plane stops).

mod binaries;
mod control_plane;
mod process;
mod resources;
mod shared;

pub use binaries::{locate_binaries, DEFAULT_K8S_VERSION, REQUIRED_BINARIES};
pub use control_plane::{ControlPlane, ControlPlaneOptions, TestUser, ADMIN_USER, KEEP_STATE_ENV};
pub use process::log_tail;
pub use resources::{create_namespace, create_unique_namespace, install_crd, CRD_NAME};
pub use shared::SharedControlPlane;
