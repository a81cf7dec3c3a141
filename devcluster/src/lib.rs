//! devcluster: a local Kubernetes for development and tests. The real control plane (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler, built from their Go modules) runs as
//! daemons, and a node agent of our own plays the kubelet of one Node (`devcluster`), running each
//! Pod's containers as local processes in their own namespaces. Services of type LoadBalancer are
//! reachable on 127.0.0.1 ([`lb`]). Development and test infrastructure, not part of the product.
//!
//! Modules: [`state`] (the state directory, settings, pidfiles), [`process`] (daemons, finding and
//! stopping our processes), [`network`] (the bridge and leftover cleanup), [`control_plane`]
//! (`up`, `down`, `status`), [`lb`] (the LoadBalancer forwarder) and [`agent`] (the node agent).
//!
//! # Conventions shared by the platform (`up`/`down`) and the node agent
//!
//! - **State directory** ([`state::StateDir`]): `$MOORING_DEVCLUSTER_DIR`, default
//!   `$HOME/.local/share/mooring/devcluster`, always absolute. Layout: `pki/`, `etcd/`,
//!   `logs/<component>.log`, `run/<component>.pid`, `kubeconfig`, `settings.json`, and the
//!   agent's `pods/<namespace>_<pod>_<uid>/` (container output in
//!   `pods/<namespace>_<pod>_<uid>/logs/<container>.log`), `volumes/pvc/<namespace>/<claim>/`,
//!   `network.json`. `down` removes everything but `logs/` (and the `lock` file).
//! - **Process marker**: every process devcluster starts has [`state::MARKER_ENV`]
//!   (`MOORING_DEVCLUSTER`) set to the state directory. The agent inherits it; **every process the
//!   agent starts (`ip netns exec`, `unshare`, and the containers' own processes) must carry it
//!   too**: containers get an environment of their own, so the agent must add
//!   `MOORING_DEVCLUSTER=<state dir>` to it explicitly. `down` kills whatever carries the marker
//!   (and whatever runs in one of our network namespaces), SIGTERM first, SIGKILL after 10 s.
//! - **Network names** ([`network::NetNames`], read with `NetNames::from_env()` in the agent):
//!   the bridge is `AgentOptions::bridge` (default `mooring0`, with `AgentOptions::gateway`
//!   `10.244.0.1/24`, created by `up` before the agent starts); per-pod network namespaces are named
//!   `<netns_prefix><something>` (default prefix `mooring-`) and the host ends of veth pairs
//!   `<veth_prefix><something>` (default `mvh`, at most 15 characters in all:
//!   [`network::NetNames::veth_name`]). Tests use other prefixes so that they do not collide with a
//!   developer's devcluster: `up` passes them to the agent as `MOORING_DEVCLUSTER_NETNS_PREFIX` and
//!   `MOORING_DEVCLUSTER_VETH_PREFIX`. `down` deletes every such netns (`ip netns del`), every such
//!   link, the bridge, `/etc/netns/<netns_prefix>*`, and every mount under the state directory (the
//!   names come from the state directory's `settings.json`: another devcluster is left alone).
//! - **The agent process**: `devcluster agent ...` runs [`agent::run`] next to [`lb::run`]. On
//!   SIGTERM/SIGINT the process gives `agent::run` up to [`AGENT_STOP_GRACE`] to return (stopping
//!   its pods) before it exits; `agent::run` may listen for the signals itself.
//! - **API server from inside a pod**: the API server listens on 127.0.0.1 only; the agent process
//!   forwards `<gateway>:<api port>` to it ([`lb::forward_api`]), and the serving certificate is
//!   valid for the gateway address. The port is `MOORING_DEVCLUSTER_API_PORT` in the agent's
//!   environment (`KUBERNETES_SERVICE_HOST=<gateway>`, `KUBERNETES_SERVICE_PORT=<port>` for pods).
//!   The ServiceAccount admission plugin is off: Pods get no projected token volume.

pub mod agent;
pub mod control_plane;
pub mod lb;
pub mod network;
pub mod process;
pub mod state;

use std::path::Path;
use std::time::Duration;

use mooring_localkube::KubeContext as _;

/// How long the agent process waits for `agent::run` to return after SIGTERM/SIGINT.
pub const AGENT_STOP_GRACE: Duration = Duration::from_secs(8);

/// What can go wrong in devcluster's library modules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file, process, socket or API operation failed (with its context), or one of the shared
    /// control-plane pieces (binaries, keys, flags).
    #[error(transparent)]
    Common(#[from] mooring_localkube::Error),
    /// A command (`ip ...`) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A setting (an environment variable, `settings.json`) is invalid.
    #[error("{0}")]
    Config(String),
    /// A component did not start or did not become ready.
    #[error("{0}")]
    Startup(String),
    /// `down` could not remove everything.
    #[error("{0}")]
    Leftovers(String),
}

/// devcluster's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A client for the kubeconfig at `path` (its current context).
pub async fn kube_client(path: &Path) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| {
        Error::Config(format!(
            "cannot read the kubeconfig {}: {e}",
            path.display()
        ))
    })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| Error::Config(format!("cannot load {}: {e}", path.display())))?;
    Ok(kube::Client::try_from(config)
        .kube_context(|| format!("cannot build a client from {}", path.display()))?)
}
