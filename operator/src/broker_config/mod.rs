//! What each broker kind needs to run in a StatefulSet: its configuration files, environment,
//! ports, probes and paths. Pure functions of the spec; the StatefulSet builder assembles the result.
//!
//! Secret material never goes into the ConfigMap: files that contain credentials (RabbitMQ
//! definitions with password hashes, EMQX bootstrap files) are returned in `secret_files` and end up
//! in the cluster's operator-owned Secret, mounted read-only.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerPort, EnvVar, PodSecurityContext, Probe};
use mooring_crds::{BrokerClusterSpec, BrokerKind};

mod common;
pub mod emqx;
pub mod rabbitmq;

/// Names every rendered file and address is derived from.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterNames {
    /// The BrokerCluster's name; also the StatefulSet's.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The headless Service that gives every Pod a DNS name.
    pub headless_service: String,
    /// The cluster DNS domain, normally `cluster.local`.
    pub cluster_domain: String,
}

impl ClusterNames {
    /// Fully qualified DNS name of the Pod with this ordinal.
    pub fn pod_fqdn(&self, ordinal: i32) -> String {
        format!(
            "{}-{ordinal}.{}.{}.svc.{}",
            self.name, self.headless_service, self.namespace, self.cluster_domain
        )
    }
    /// Fully qualified DNS name of the headless Service.
    pub fn headless_fqdn(&self) -> String {
        format!(
            "{}.{}.svc.{}",
            self.headless_service, self.namespace, self.cluster_domain
        )
    }
}

/// Credentials Mooring generates once per cluster and keeps in the cluster's Secret.
#[derive(Clone, PartialEq)]
pub struct Credentials {
    /// Erlang distribution cookie shared by all nodes.
    pub erlang_cookie: String,
    /// Broker admin / management API user (EMQX: API key name).
    pub admin_username: String,
    /// Its password (EMQX: API secret).
    pub admin_password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("admin_username", &self.admin_username)
            .finish_non_exhaustive()
    }
}

/// Keys of the operator-owned Secret that hold the generated credentials.
pub mod secret_keys {
    /// The Erlang cookie.
    pub const ERLANG_COOKIE: &str = "erlang-cookie";
    /// The admin user name.
    pub const ADMIN_USERNAME: &str = "admin-username";
    /// The admin password.
    pub const ADMIN_PASSWORD: &str = "admin-password";
}

/// Everything a renderer needs.
#[derive(Clone, Debug)]
pub struct RenderInput<'a> {
    /// The desired state.
    pub spec: &'a BrokerClusterSpec,
    /// Derived names.
    pub names: &'a ClusterNames,
    /// Generated credentials.
    pub credentials: &'a Credentials,
    /// Username -> password, read from `spec.auth.users` (empty when unset).
    pub users: &'a BTreeMap<String, String>,
    /// Name of the operator-owned Secret (holds `secret_keys::*` and `secret_files`).
    pub secret_name: &'a str,
}

/// What a broker kind contributes to the StatefulSet and its ConfigMap/Secret.
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerLayout {
    /// Container image.
    pub image: String,
    /// Container command (empty: the image's entrypoint).
    pub command: Vec<String>,
    /// Container args.
    pub args: Vec<String>,
    /// Mooring's environment for the broker container (secret values by `secretKeyRef` only).
    pub env: Vec<EnvVar>,
    /// Non-secret configuration files, file name -> content; they go into the ConfigMap.
    pub config_files: BTreeMap<String, String>,
    /// Where the ConfigMap's files are mounted.
    pub config_mount_path: String,
    /// Files with secret content, file name -> content; they go into the operator-owned Secret.
    pub secret_files: BTreeMap<String, String>,
    /// Where the Secret's files (including `secret_keys::ERLANG_COOKIE`) are mounted.
    pub secret_mount_path: String,
    /// Where the data volume (PVC or emptyDir) is mounted.
    pub data_mount_path: String,
    /// Container ports (MQTT, WebSocket, TLS, WSS, management, clustering).
    pub ports: Vec<ContainerPort>,
    /// Ports the headless Service publishes (clustering included).
    pub headless_ports: Vec<ContainerPort>,
    /// Ports the client Service publishes (client listeners and the management API).
    pub client_ports: Vec<ContainerPort>,
    /// Readiness probe.
    pub readiness_probe: Probe,
    /// Liveness probe.
    pub liveness_probe: Probe,
    /// Startup probe, if the broker needs one.
    pub startup_probe: Option<Probe>,
    /// Port of the management / REST API.
    pub management_port: i32,
    /// Seconds the broker needs to stop cleanly.
    pub termination_grace_period_seconds: i64,
}

/// Why a spec could not be rendered for its broker.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RenderError {
    /// The spec asks for something this broker kind (or version) cannot do.
    #[error("{broker} cannot {what}")]
    Unsupported {
        /// The broker kind.
        broker: &'static str,
        /// What it cannot do, as a sentence fragment.
        what: String,
    },
    /// A value is not usable in the broker's configuration.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The spec field.
        field: String,
        /// Why.
        reason: String,
    },
}

/// Names of the container ports, shared by both broker kinds so that Services, HAProxy and probes
/// can refer to them by name.
pub mod port_names {
    /// MQTT over TCP.
    pub const MQTT: &str = "mqtt";
    /// MQTT over WebSocket.
    pub const WEBSOCKET: &str = "ws";
    /// MQTT over TLS.
    pub const MQTTS: &str = "mqtts";
    /// MQTT over secure WebSocket.
    pub const WSS: &str = "wss";
    /// The management / REST API (EMQX dashboard, RabbitMQ management plugin).
    pub const MANAGEMENT: &str = "management";
    /// EMQX: Erlang distribution (ekka).
    pub const EKKA: &str = "ekka";
    /// EMQX: gen_rpc.
    pub const GENRPC: &str = "genrpc";
    /// RabbitMQ: AMQP 0-9-1 / 1.0.
    pub const AMQP: &str = "amqp";
    /// RabbitMQ: the Erlang port mapper.
    pub const EPMD: &str = "epmd";
    /// RabbitMQ: Erlang distribution.
    pub const DIST: &str = "dist";
}

/// The version a spec asks for, when `spec.broker.version` is unset.
pub const DEFAULT_EMQX_VERSION: &str = "5.8.9";
/// The version a spec asks for, when `spec.broker.version` is unset.
pub const DEFAULT_RABBITMQ_VERSION: &str = "3.13.7";

/// A broker version, reduced to the numbers that select version-specific configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BrokerVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch (0 when the version has none).
    pub patch: u32,
}

impl BrokerVersion {
    /// A version from its numbers.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Reads `5.8.9`, `5.8`, `5.8.9-rc.1`, `3.13.7+build`: the numbers before any suffix.
    pub fn parse(version: &str) -> Option<Self> {
        let numeric = version.split(['-', '+']).next()?;
        let mut parts = numeric.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(Self::new(major, minor, patch))
    }
}

impl std::fmt::Display for BrokerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The version string the spec runs: `spec.broker.version`, or the broker kind's default.
pub fn version_string(spec: &BrokerClusterSpec) -> &str {
    match (&spec.broker.version, spec.broker.kind) {
        (Some(v), _) => v,
        (None, BrokerKind::Emqx) => DEFAULT_EMQX_VERSION,
        (None, BrokerKind::Rabbitmq) => DEFAULT_RABBITMQ_VERSION,
    }
}

/// The parsed version the spec runs.
pub fn broker_version(spec: &BrokerClusterSpec) -> Result<BrokerVersion, RenderError> {
    let raw = version_string(spec);
    BrokerVersion::parse(raw).ok_or_else(|| RenderError::Invalid {
        field: "broker.version".into(),
        reason: format!("{raw:?} is not a version such as 5.8.9 or 3.13.7"),
    })
}

/// A TLS Secret (from `spec.listeners.tls` or `.wss`) that the StatefulSet must mount read-only.
///
/// Convention: one Secret volume per listener, named after [`TlsMount::listener`], mounted at
/// [`TlsMount::mount_path`] with `defaultMode` [`TLS_SECRET_MODE`] and no `items` (so an optional
/// `ca.crt` does not have to exist). The broker configuration points at
/// `<mount_path>/tls.crt` and `<mount_path>/tls.key`.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsMount {
    /// The listener: [`port_names::MQTTS`] or [`port_names::WSS`].
    pub listener: &'static str,
    /// The user's Secret of type `kubernetes.io/tls`.
    pub secret_name: String,
    /// The directory the Secret is mounted at.
    pub mount_path: String,
}

impl TlsMount {
    /// Path of the certificate (chain) the broker reads.
    pub fn cert_file(&self) -> String {
        format!("{}/tls.crt", self.mount_path)
    }
    /// Path of the private key the broker reads.
    pub fn key_file(&self) -> String {
        format!("{}/tls.key", self.mount_path)
    }
}

/// Mode of TLS Secret volumes: owner and group read. EMQX reads them through its `fsGroup`
/// (see [`pod_security_context`]), RabbitMQ as root.
pub const TLS_SECRET_MODE: i32 = 0o440;

/// The TLS Secrets the spec's listeners need mounted, in listener order (TLS, then WSS).
pub fn tls_mounts(spec: &BrokerClusterSpec) -> Vec<TlsMount> {
    let base = match spec.broker.kind {
        BrokerKind::Emqx => emqx::TLS_DIR,
        BrokerKind::Rabbitmq => rabbitmq::TLS_DIR,
    };
    [
        (port_names::MQTTS, spec.listeners.tls.as_ref()),
        (port_names::WSS, spec.listeners.wss.as_ref()),
    ]
    .into_iter()
    .filter_map(|(listener, tls)| {
        tls.map(|t| TlsMount {
            listener,
            secret_name: t.secret_ref.name.clone(),
            mount_path: format!("{base}/{listener}"),
        })
    })
    .collect()
}

/// A ConfigMap file that must also be mounted on its own, at a path outside `config_mount_path`
/// (a read-only `subPath` mount of the same ConfigMap).
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigFileMount {
    /// The file's key in `config_files` (and the ConfigMap): the `subPath`.
    pub file: &'static str,
    /// Where it is mounted.
    pub mount_path: &'static str,
}

/// The single-file mounts a broker kind needs besides `config_mount_path`.
///
/// EMQX reads its configuration from `etc/emqx.conf` only (`EMQX_ETC_DIR` cannot be moved and the
/// rest of `etc/` must stay), so Mooring's `emqx.conf` is mounted over that one file.
pub fn config_file_mounts(kind: BrokerKind) -> Vec<ConfigFileMount> {
    match kind {
        BrokerKind::Emqx => vec![ConfigFileMount {
            file: emqx::CONF_FILE,
            mount_path: emqx::ETC_CONF_PATH,
        }],
        BrokerKind::Rabbitmq => vec![],
    }
}

/// The Pod security context a broker kind needs, if any.
///
/// - EMQX's image runs as uid 1000; `fsGroup: 1000` makes the operator-owned Secret (mounted
///   0400, which the kubelet widens to 0440 with an `fsGroup`), the TLS Secrets and a data claim
///   readable and writable by it.
/// - RabbitMQ: `None`, and the Pod must NOT get an `fsGroup`: the Erlang VM refuses a cookie file
///   that its group can read. RabbitMQ runs as the image's default user (root: the `command`
///   bypasses the official image's entrypoint, which would switch to uid 999), which owns the
///   Secret's files.
pub fn pod_security_context(kind: BrokerKind) -> Option<PodSecurityContext> {
    match kind {
        BrokerKind::Emqx => Some(emqx::pod_security_context()),
        BrokerKind::Rabbitmq => None,
    }
}

/// Renders the layout for the spec's broker kind.
pub fn render(input: &RenderInput<'_>) -> Result<BrokerLayout, RenderError> {
    match input.spec.broker.kind {
        BrokerKind::Emqx => emqx::render(input),
        BrokerKind::Rabbitmq => rabbitmq::render(input),
    }
}
