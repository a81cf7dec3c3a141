//! The pieces of a local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler built from source by `scripts/build-control-plane.sh`) that two programs share:
//! the test harness `mooring-tests`, whose control planes live as long as a test process, and
//! `devcluster`, whose control plane runs as daemons until `devcluster down`.
//!
//! - [`binaries`]: finding (and once per machine building) the binaries;
//! - [`pki`]: the service-account key pair and bearer tokens;
//! - [`components`]: the components' flags, the token file, kubeconfigs, free ports, readiness and
//!   log tails.

pub mod binaries;
pub mod components;
pub mod pki;

pub use binaries::{cache_dir, locate_binaries, DEFAULT_K8S_VERSION};

/// What can go wrong here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed; `context` says which.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A request to the API server failed; `context` says which.
    #[error("{context}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    /// The binaries are not where they should be.
    #[error("missing in {dir}: {missing}")]
    MissingBinaries { dir: String, missing: String },
    /// `scripts/build-control-plane.sh` failed or printed nothing usable.
    #[error("{0}")]
    Build(String),
    /// Key or random number generation failed.
    #[error("{0}")]
    Crypto(&'static str),
    /// The API server answered, but not as hoped.
    #[error("{0}")]
    Unexpected(String),
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a context message to I/O errors.
pub trait IoContext<T> {
    /// Wraps the error as [`Error::Io`] with the message `f()` returns.
    fn io_context<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_context<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: f(),
            source,
        })
    }
}

/// Adds a context message to API errors.
pub trait KubeContext<T> {
    /// Wraps the error as [`Error::Kube`] with the message `f()` returns.
    fn kube_context<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> KubeContext<T> for std::result::Result<T, kube::Error> {
    fn kube_context<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|source| Error::Kube {
            context: f(),
            source,
        })
    }
}
