//! Mooring's operator: the BrokerCluster controller, its HTTP server (health, metrics, and later the
//! dashboard), leader election and the pure builders behind them.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod apply;
pub mod broker_config;
pub mod collector;
pub mod conditions;
pub mod context;
pub mod controller;
pub mod credentials;
pub mod dashboard;
pub mod drivers;
pub mod lb_agent;
pub mod leader;
pub mod load_balancer;
pub mod membership;
pub mod metrics;
pub mod pod_command;
pub mod rbac;
pub mod resources;
pub mod runner;
pub mod server;
pub mod telemetry;

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing a child failed.
    #[error("cannot apply {kind} {name}: {source}")]
    Apply {
        /// Object kind.
        kind: String,
        /// Object name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading an object failed.
    #[error("cannot read {kind} {name}: {source}")]
    Read {
        /// Object kind.
        kind: String,
        /// Object name or selector.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Deleting an object failed.
    #[error("cannot delete {kind} {name}: {source}")]
    Delete {
        /// Object kind.
        kind: String,
        /// Object name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the BrokerCluster's status failed.
    #[error("cannot update status: {0}")]
    Status(#[source] kube::Error),
    /// A Secret the spec refers to does not exist or lacks a key.
    #[error("{0}")]
    MissingSecret(String),
    /// A desired object could not be built.
    #[error(transparent)]
    Build(#[from] resources::BuildError),
}

impl Error {
    /// A short label for metrics and condition reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Apply { .. } => "ApplyFailed",
            Error::Read { .. } => "ReadFailed",
            Error::Delete { .. } => "DeleteFailed",
            Error::Status(_) => "StatusUpdateFailed",
            Error::MissingSecret(_) => "SecretNotFound",
            Error::Build(_) => "BuildFailed",
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
