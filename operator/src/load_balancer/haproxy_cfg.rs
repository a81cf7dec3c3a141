//! `haproxy.cfg` for the sticky MQTT load balancer, rendered by a pure function of an [`LbConfig`].
//!
//! HAProxy runs as the StatefulSet `<cluster>-lb` (`haproxy -W -db -S /var/run/haproxy/master.sock
//! -f <cfg> -L <pod name>`). A sidecar agent sets each broker server's address and state through
//! the runtime API socket [`ADMIN_SOCKET`] and reloads the master when this file changes. Every
//! fact below marked *measured* was checked with HAProxy 2.6.12 (Debian bookworm).
//!
//! # What is rendered
//! - `global`: logs to stdout (`log stdout format raw local0`), `maxconn`, the admin socket with
//!   `expose-fd listeners` (seamless reloads) and `hard-stop-after` (see *Reloads*).
//! - `defaults`: `mode tcp`, `option redispatch`, `retries 3`, MQTT timeouts (see *Timeouts*).
//! - `peers mooring`: one `peer <pod> <address>:<port>` per LB replica; the stick table is shared
//!   through it, and it is also what carries the table over a reload (measured: without a peers
//!   section the table was lost on reload).
//! - Frontend and backend `mqtt` (plain MQTT): everything that is not a valid MQTT CONNECT is
//!   rejected (`mqtt_is_valid`, within [`INSPECT_DELAY`]); clients stick on their CONNECT client
//!   id.
//! - Optional `mqtt_ws`, `mqtt_tls` and `mqtt_wss` frontends and backends: TCP passthrough.
//! - Frontend `stats` on its own port: Prometheus metrics at `/metrics`, the read-only stats page
//!   at `/stats`.
//!
//! # Stickiness per listener
//! - **MQTT** (1883): by client id. The key is the CONNECT's client identifier
//!   (`mqtt_field_value(connect,client_identifier)`, MQTT 3.1, 3.1.1 and 5 alike), stored in a
//!   `type string len 1024` table with `srvkey name` (entries name the broker Pod, not a numeric
//!   server id, so replicas and reloads agree even if server order changed). An entry expires
//!   [`LbConfig::stick_expiry_seconds`] after the last *new connection* with that id, not after the
//!   last traffic (measured): the default, two days, is well above the brokers' session expiry
//!   (EMQX 2 h, RabbitMQ 1 day by default). An empty client id is not stored and is balanced
//!   normally. The table is shared by all LB replicas through `peers`.
//! - **WebSocket** (8083), **TLS** (8883), **WSS**: by client source address. The CONNECT travels
//!   inside WebSocket frames or TLS records, where HAProxy's MQTT converters cannot see it, so
//!   these backends use `balance source` + `hash-type consistent`: a client address maps to the
//!   same broker on every replica as long as the set of usable brokers is the same, and a broker
//!   coming or going moves only about 1/N of the addresses. Clients behind one NAT share a broker,
//!   a client whose address changes may move, and HAProxy must see real client addresses (a Service
//!   with `externalTrafficPolicy: Local`), otherwise everything hashes on a few node addresses. TLS
//!   is not terminated: certificates stay on the brokers. The frontends only check that the first
//!   bytes are a TLS ClientHello (`req.ssl_hello_type 1`) or an HTTP request (`req.proto_http`).
//!
//! Stickiness keeps a client on the broker that holds its session; a clustered broker still takes
//! a session over when the same client id connects to another node, so a lost entry costs a
//! session move, not correctness.
//!
//! # Decisions
//! - **Key length [`STICK_KEY_LEN`] = 1024 bytes.** Client ids may in theory be 65535 bytes; real
//!   ones are far shorter (brokers must accept 23 bytes; cloud brokers commonly cap at 128). A
//!   longer id is truncated to its first 1024 bytes on store and on match alike, so it still
//!   sticks; ids that share their first 1024 bytes share one entry and therefore one broker.
//!   Each entry reserves the full length: memory is about `size × (1024 + ~100)` bytes (≈ 110 MiB
//!   for the default 100 000 entries); a full table drops its oldest entries. (The EMQX docs'
//!   `len 32` truncates real ids.)
//! - **`balance leastconn`** for MQTT: connections last hours or days, so new client ids should go
//!   where there are fewest connections; `roundrobin` ignores load, and would leave a restarted
//!   broker nearly empty (measured: leastconn placed new ids away from a loaded broker). Stuck ids
//!   are unaffected.
//! - **Timeouts**: `timeout client`/`server` = [`LbConfig::idle_timeout_seconds`] (default 1 h),
//!   well above MQTT keepalives (60 s typically; brokers close at 1.5 × keepalive, so HAProxy's
//!   timeout is only a backstop for clients that asked for no keepalive). `timeout connect 5s`,
//!   `timeout check 3s`, half-closed connections 30 s.
//! - **Health check**: a real MQTT 3.1.1 CONNECT (clean session, keepalive 60, client id
//!   [`HEALTH_CHECK_CLIENT_ID`], with username and password when anonymous access is disabled),
//!   expecting CONNACK "accepted" (`20020000`), then DISCONNECT. A TCP-only check misses a frozen
//!   broker (measured with `kill -STOP`). Bad credentials give CONNACK 4 or 5: the server goes
//!   down, visible in the stats as `L7RSP` (measured against mosquitto 2.0.11 without anonymous
//!   access: the right credentials gave `L7OK` and a clean DISCONNECT, a wrong password `L7RSP`).
//!   `tcp-check connect default linger` (`tcp-check connect linger` with the PROXY protocol, see
//!   below): `linger` closes with FIN instead of RST (fewer "connection reset" lines in broker
//!   logs). `inter 2s fall 2 rise 2`:
//!   a broker is out after two failed checks (about 4 s when it refuses connections, up to about
//!   10 s when it hangs and each check waits 3 s). `on-marked-down shutdown-sessions` closes its
//!   clients so they reconnect (and `option redispatch` re-places them). Passthrough servers do not
//!   check on their own: they `track mqtt/<pod>`, so a broker has one health state for all
//!   listeners and is probed once per LB replica (measured: maintenance, drain and down propagate
//!   to trackers, and `shutdown-sessions` closes tracked sessions).
//! - **PROXY protocol** ([`LbConfig::proxy_protocol`]): `send-proxy-v2` on every server. Every
//!   broker listener behind this LB (MQTT, WebSocket, TLS, WSS) must then require the PROXY header
//!   (EMQX: `listeners.<type>.default.proxy_protocol = true`; RabbitMQ: `mqtt.proxy_protocol =
//!   true`, `web_mqtt.proxy_protocol = true`), so the health check sends one too. Not through
//!   `check-send-proxy`: HAProxy's checks then send a v2 `LOCAL` header, on which RabbitMQ 3.10
//!   crashes the connection (measured with 3.10.8: the check failed with `L7RSP`). The
//!   check connects with a plain `tcp-check connect linger` (which sends no header, measured) and
//!   sends a v2 `PROXY` header from `0.0.0.0:0` to `0.0.0.0:0`
//!   ([`super::proxy_header::health_check`]) in front of its CONNECT (measured: `L7OK` against
//!   RabbitMQ 3.10.8 with `mqtt.proxy_protocol = true`).
//! - **Client id in the logs**: captured after JSON escaping (`json(utf8s)`), at most
//!   [`LOG_CLIENT_ID_LEN`] bytes, and logged last on the line as `clientid=...`. Measured: without
//!   the escaping, a client id containing a newline writes a forged second log line.
//! - **Reloads**: the old worker keeps its MQTT connections, which may live for days; after
//!   `hard-stop-after 30m` it closes them and the clients reconnect to the new worker, which has
//!   learnt the table from the old one (so they return to the same brokers).
//! - **Binds** are IPv4 (`bind :<port>`); broker and peer addresses may be IPv4 or IPv6.
//!
//! # Addresses and the agent's part
//! Server and peer addresses are IPs or DNS names. Peer names are resolved once at startup and a
//! name that does not resolve is a fatal error (measured), so the agent should pass Pod IPs and
//! list only replicas whose IP is known (always including itself), re-rendering when they change.
//! Server names are resolved with `init-addr libc,none`: an unresolvable name leaves that server
//! without an address instead of stopping HAProxy, but such a server cannot be given an address
//! through the runtime API afterwards (measured: "only supported through configuration file"), only
//! by a reload. A server without a known address is rendered as `0.0.0.0:<port>` and `disabled`.
//!
//! Every backend ([`backends`]) holds one server per broker Pod, named after the Pod. To put a
//! broker in service the agent must, on **every** backend, first `set server <backend>/<pod> addr
//! <ip>` and then `set server <backend>/<pod> state ready` (`drain`/`maint` to take it out). Never
//! the other way round: `0.0.0.0` connects to the LB Pod itself, where the LB's own frontend on the
//! same port listens. Maintenance and drain set on `mqtt/<pod>` also reach the passthrough servers,
//! but a passthrough server rendered `disabled` stays in maintenance until it is set ready itself.
//! The MQTT table is `show table mqtt`.
//!
//! # Validation
//! Every string that reaches the file is checked against an allowlist and rejected with an
//! [`LbConfigError`] naming the field: the cluster, server and peer names are DNS-1123 labels,
//! addresses are IPv4, IPv6 or DNS-1123 subdomains (lowercase, last label not all digits, which
//! libc would read as an IPv4 address). Credentials never appear as text: they only reach the file
//! hex-encoded inside the health check's CONNECT. They are in the file, though: keep the rendered
//! configuration in a Secret, not a ConfigMap.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The runtime API socket the sidecar agent uses (`level admin`).
pub const ADMIN_SOCKET: &str = "/var/run/haproxy/admin.sock";
/// Name of the `peers` section the LB replicas share the stick table through.
pub const PEERS_SECTION: &str = "mooring";
/// Frontend and backend for plain MQTT; also the stick table's name (`show table mqtt`).
pub const MQTT_BACKEND: &str = "mqtt";
/// Frontend and backend for MQTT over WebSocket.
pub const WEBSOCKET_BACKEND: &str = "mqtt_ws";
/// Frontend and backend for MQTT over TLS.
pub const TLS_BACKEND: &str = "mqtt_tls";
/// Frontend and backend for MQTT over secure WebSocket.
pub const WSS_BACKEND: &str = "mqtt_wss";
/// Maximum number of bytes of a client id that the stick table compares and stores.
pub const STICK_KEY_LEN: usize = 1024;
/// Maximum number of bytes of the (JSON-escaped) client id written to a log line.
pub const LOG_CLIENT_ID_LEN: usize = 256;
/// How long a new connection may take to send a complete first packet (CONNECT, ClientHello, HTTP
/// request) before it is closed.
pub const INSPECT_DELAY: &str = "10s";
/// Client id of the MQTT health check.
pub const HEALTH_CHECK_CLIENT_ID: &str = "mooring-lb-check";
/// Keepalive the health check's CONNECT announces, in seconds.
pub const HEALTH_CHECK_KEEPALIVE_SECONDS: u16 = 60;
/// CONNACK, MQTT 3.1.1, no session present, return code 0 (accepted), as HAProxy hex.
pub const CONNACK_ACCEPTED_HEX: &str = "20020000";
/// The start of any CONNACK (type and remaining length), as HAProxy hex.
pub const CONNACK_ANY_HEX: &str = "2002";
/// DISCONNECT, as HAProxy hex.
pub const DISCONNECT_HEX: &str = "e000";
/// Longest health check username accepted, in bytes.
pub const MAX_USERNAME_BYTES: usize = 1024;
/// Longest health check password accepted, in bytes (room for a JWT; the whole CONNECT must fit in
/// HAProxy's 16 KiB check buffer).
pub const MAX_PASSWORD_BYTES: usize = 4096;
/// Largest timer HAProxy accepts, in seconds (2^31 − 1 ms, about 24.8 days; measured: one more is
/// a "timer overflow" error).
pub const MAX_TIMER_SECONDS: u32 = 2_147_483;
/// Default stick table expiry: two days, well above the brokers' session expiry.
pub const DEFAULT_STICK_EXPIRY_SECONDS: u32 = 2 * 24 * 3600;
/// Default number of stick table entries.
pub const DEFAULT_STICK_TABLE_SIZE: u32 = 100_000;
/// Largest stick table accepted (entries).
pub const MAX_STICK_TABLE_SIZE: u32 = 100_000_000;
/// Default idle timeout of client and server connections, in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECONDS: u32 = 3600;
/// Default global `maxconn`. HAProxy needs about two file descriptors per connection and refuses to
/// start when it cannot raise its descriptor limit that far (measured).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 50_000;
/// Largest `maxconn` accepted.
pub const MAX_MAX_CONNECTIONS: u32 = 10_000_000;

/// The port clients connect to on the LB and the broker port it forwards to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerPorts {
    /// Port HAProxy binds for clients.
    pub frontend: u16,
    /// The brokers' port for this listener.
    pub backend: u16,
}

impl ListenerPorts {
    /// Clients use the brokers' port.
    pub fn same(port: u16) -> Self {
        Self {
            frontend: port,
            backend: port,
        }
    }
}

/// One broker Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendServer {
    /// The Pod's name; also the HAProxy server name in every backend.
    pub name: String,
    /// IP or DNS name; `None` renders the `0.0.0.0` placeholder, always `disabled`.
    pub address: Option<String>,
    /// Whether the server takes clients as soon as HAProxy starts (a joined member); otherwise it
    /// is rendered `disabled` (maintenance) until the agent sets it ready.
    pub initially_enabled: bool,
}

/// One LB replica in the `peers` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The replica's Pod name, as given to `haproxy -L`.
    pub name: String,
    /// Its IP (preferred) or a DNS name that resolves when HAProxy starts.
    pub address: String,
}

/// MQTT credentials for the health check, when the brokers refuse anonymous clients.
#[derive(Clone, PartialEq, Eq)]
pub struct HealthCheckCredentials {
    /// MQTT username.
    pub username: String,
    /// MQTT password.
    pub password: String,
}

impl fmt::Debug for HealthCheckCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheckCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Everything `haproxy.cfg` is rendered from: the spec plus the current membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbConfig {
    /// The BrokerCluster's name (appears in the header comment only).
    pub cluster_name: String,
    /// The broker Pods, by StatefulSet ordinal.
    pub servers: Vec<BackendServer>,
    /// Plain MQTT (1883).
    pub mqtt: ListenerPorts,
    /// MQTT over WebSocket (8083), passed through.
    pub websocket: Option<ListenerPorts>,
    /// MQTT over TLS (8883), passed through.
    pub tls: Option<ListenerPorts>,
    /// MQTT over secure WebSocket (8084), passed through.
    pub wss: Option<ListenerPorts>,
    /// Seconds a client id stays pinned after its last new connection.
    pub stick_expiry_seconds: u32,
    /// Maximum number of entries in the stick table.
    pub stick_table_size: u32,
    /// The LB replicas sharing the stick table; empty renders no `peers` section (the table is then
    /// neither shared nor kept over a reload).
    pub peers: Vec<Peer>,
    /// Port the peers listen on and connect to.
    pub peer_port: u16,
    /// Credentials of the health check; `None` when anonymous access is allowed.
    pub health_check_credentials: Option<HealthCheckCredentials>,
    /// Count any CONNACK as healthy, whatever its return code: for brokers that refuse the
    /// check's anonymous CONNECT and offer no MQTT user to it (EMQX without anonymous access).
    /// A broker that answers CONNACK at all is alive and speaks MQTT.
    pub accept_refused_connack: bool,
    /// Send the PROXY protocol (v2) to the brokers.
    pub proxy_protocol: bool,
    /// Port of the stats page and the Prometheus exporter.
    pub stats_port: u16,
    /// Global `maxconn`.
    pub max_connections: u32,
    /// `timeout client` and `timeout server`, in seconds.
    pub idle_timeout_seconds: u32,
}

impl LbConfig {
    /// The defaults: MQTT on 1883, no other listener, no server, no peer, peers on 10000, stats on
    /// 8404, anonymous health check, no PROXY protocol.
    pub fn new(cluster_name: impl Into<String>) -> Self {
        Self {
            cluster_name: cluster_name.into(),
            servers: Vec::new(),
            mqtt: ListenerPorts::same(1883),
            websocket: None,
            tls: None,
            wss: None,
            stick_expiry_seconds: DEFAULT_STICK_EXPIRY_SECONDS,
            stick_table_size: DEFAULT_STICK_TABLE_SIZE,
            peers: Vec::new(),
            peer_port: 10000,
            health_check_credentials: None,
            accept_refused_connack: false,
            proxy_protocol: false,
            stats_port: 8404,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout_seconds: DEFAULT_IDLE_TIMEOUT_SECONDS,
        }
    }
}

/// Why a configuration cannot be rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LbConfigError {
    /// A string does not match its allowlist.
    #[error("{field}: {value:?} is not {expected}")]
    InvalidValue {
        /// Path of the field, e.g. `servers[1].address`.
        field: String,
        /// The offending value (cut to 64 characters).
        value: String,
        /// What the field must be.
        expected: &'static str,
    },
    /// A secret is invalid; its value is not repeated.
    #[error("{field}: {reason}")]
    InvalidSecret {
        /// Path of the field.
        field: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A number is outside what HAProxy or Mooring accepts.
    #[error("{field}: {value} is outside {min}..={max}")]
    OutOfRange {
        /// Path of the field.
        field: String,
        /// The value.
        value: u64,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// The health check's PROXY protocol header could not be encoded.
    #[error("proxyProtocol: cannot encode the health check's PROXY header: {reason}")]
    ProxyHeader {
        /// What the encoder said.
        reason: String,
    },
    /// A name or port that must be unique is used twice.
    #[error("{field}: {value:?} is used more than once")]
    Duplicate {
        /// Which names or ports.
        field: String,
        /// The repeated value.
        value: String,
    },
}

/// Names of the backends `render` produces for this configuration, `mqtt` first. Each holds one
/// server per broker Pod.
pub fn backends(cfg: &LbConfig) -> Vec<&'static str> {
    let mut names = vec![MQTT_BACKEND];
    for (listener, name) in [
        (cfg.websocket, WEBSOCKET_BACKEND),
        (cfg.tls, TLS_BACKEND),
        (cfg.wss, WSS_BACKEND),
    ] {
        if listener.is_some() {
            names.push(name);
        }
    }
    names
}

/// An address that passed validation, in the form HAProxy reads.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Address {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Host(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::V4(ip) => write!(f, "{ip}"),
            Address::V6(ip) => write!(f, "[{ip}]"),
            Address::Host(host) => f.write_str(host),
        }
    }
}

/// A passthrough listener that passed validation.
struct Passthrough {
    name: &'static str,
    ports: ListenerPorts,
    /// ACL the first bytes must satisfy.
    accept: &'static str,
}

struct ValidServer<'a> {
    name: &'a str,
    address: Option<Address>,
    enabled: bool,
}

struct ValidPeer<'a> {
    name: &'a str,
    address: Address,
}

/// Renders `haproxy.cfg`, or says which field is invalid.
pub fn render(cfg: &LbConfig) -> Result<String, LbConfigError> {
    let LbConfig {
        cluster_name,
        servers,
        mqtt,
        websocket,
        tls,
        wss,
        stick_expiry_seconds,
        stick_table_size,
        peers,
        peer_port,
        health_check_credentials,
        accept_refused_connack,
        proxy_protocol,
        stats_port,
        max_connections,
        idle_timeout_seconds,
    } = cfg;

    check_label("cluster_name", cluster_name)?;
    let servers = validate_servers(servers)?;
    let peers = validate_peers(peers)?;
    check_range(
        "stick_expiry_seconds",
        *stick_expiry_seconds,
        1,
        MAX_TIMER_SECONDS,
    )?;
    check_range(
        "stick_table_size",
        *stick_table_size,
        1,
        MAX_STICK_TABLE_SIZE,
    )?;
    check_range(
        "idle_timeout_seconds",
        *idle_timeout_seconds,
        1,
        MAX_TIMER_SECONDS,
    )?;
    check_range("max_connections", *max_connections, 1, MAX_MAX_CONNECTIONS)?;
    let passthrough: Vec<Passthrough> = [
        (*websocket, WEBSOCKET_BACKEND, "req.proto_http"),
        (*tls, TLS_BACKEND, "req.ssl_hello_type 1"),
        (*wss, WSS_BACKEND, "req.ssl_hello_type 1"),
    ]
    .into_iter()
    .filter_map(|(ports, name, accept)| {
        ports.map(|ports| Passthrough {
            name,
            ports,
            accept,
        })
    })
    .collect();
    check_ports(
        mqtt,
        &passthrough,
        *stats_port,
        *peer_port,
        !peers.is_empty(),
    )?;
    let connect = mqtt_connect_packet(HEALTH_CHECK_CLIENT_ID, health_check_credentials.as_ref())?;
    let check_proxy_header = if *proxy_protocol {
        super::proxy_header::health_check().map_err(|e| LbConfigError::ProxyHeader {
            reason: e.to_string(),
        })?
    } else {
        Vec::new()
    };

    let mut out = Out::default();
    out.raw(&format!(
        "# haproxy.cfg of the load balancer of BrokerCluster {cluster_name}."
    ));
    out.raw("# Rendered by Mooring: do not edit, every change is overwritten.");

    out.section("global");
    out.line("log stdout format raw local0");
    out.line(&format!("maxconn {max_connections}"));
    out.line(&format!(
        "stats socket {ADMIN_SOCKET} mode 600 level admin expose-fd listeners"
    ));
    out.line("stats timeout 30s");
    out.line("hard-stop-after 30m");

    out.section("defaults");
    out.line("mode tcp");
    out.line("log global");
    out.line("option dontlognull");
    out.line("option redispatch");
    out.line("retries 3");
    out.line("timeout connect 5s");
    out.line(&format!("timeout client {idle_timeout_seconds}s"));
    out.line(&format!("timeout server {idle_timeout_seconds}s"));
    out.line("timeout client-fin 30s");
    out.line("timeout server-fin 30s");
    out.line("timeout check 3s");

    if !peers.is_empty() {
        out.section(&format!("peers {PEERS_SECTION}"));
        for peer in &peers {
            out.line(&format!("peer {} {}:{peer_port}", peer.name, peer.address));
        }
    }

    out.section(&format!("frontend {MQTT_BACKEND}"));
    out.line(&format!("bind :{}", mqtt.frontend));
    out.line(&format!("tcp-request inspect-delay {INSPECT_DELAY}"));
    out.line("tcp-request content reject unless { req.payload(0,0),mqtt_is_valid }");
    out.line(&format!(
        "tcp-request content capture req.payload(0,0),mqtt_field_value(connect,client_identifier),json(utf8s) len {LOG_CLIENT_ID_LEN}"
    ));
    out.line(
        "log-format \"%ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc %sq/%bq clientid=%[capture.req.hdr(0)]\"",
    );
    out.line(&format!("default_backend {MQTT_BACKEND}"));

    let proxy_server = if *proxy_protocol {
        " send-proxy-v2"
    } else {
        ""
    };
    out.section(&format!("backend {MQTT_BACKEND}"));
    out.line("balance leastconn");
    let peers_clause = if peers.is_empty() {
        String::new()
    } else {
        format!(" peers {PEERS_SECTION}")
    };
    out.line(&format!(
        "stick-table type string len {STICK_KEY_LEN} size {stick_table_size} expire {stick_expiry_seconds}s srvkey name{peers_clause}"
    ));
    out.line("stick on req.payload(0,0),mqtt_field_value(connect,client_identifier)");
    out.line("option tcp-check");
    if *proxy_protocol {
        // No `default`: the check must not send HAProxy's own (LOCAL) header; it sends its own.
        out.line("tcp-check connect linger");
        out.line(&format!(
            "tcp-check send-binary {}{}",
            hex(&check_proxy_header),
            hex(&connect)
        ));
    } else {
        out.line("tcp-check connect default linger");
        out.line(&format!("tcp-check send-binary {}", hex(&connect)));
    }
    if *accept_refused_connack {
        // CONNACK's fixed header and length; the return code may be a refusal.
        out.line(&format!("tcp-check expect binary {CONNACK_ANY_HEX}"));
    } else {
        out.line(&format!("tcp-check expect binary {CONNACK_ACCEPTED_HEX}"));
    }
    out.line(&format!("tcp-check send-binary {DISCONNECT_HEX}"));
    out.line(&format!(
        "default-server inter 2s fall 2 rise 2 on-marked-down shutdown-sessions init-addr libc,none{proxy_server}"
    ));
    for server in &servers {
        out.line(&server_line(server, mqtt.backend, "check"));
    }

    for listener in &passthrough {
        out.section(&format!("frontend {}", listener.name));
        out.line(&format!("bind :{}", listener.ports.frontend));
        out.line("option tcplog");
        out.line(&format!("tcp-request inspect-delay {INSPECT_DELAY}"));
        out.line(&format!(
            "tcp-request content reject unless {{ {} }}",
            listener.accept
        ));
        out.line(&format!("default_backend {}", listener.name));

        out.section(&format!("backend {}", listener.name));
        out.line("balance source");
        out.line("hash-type consistent");
        out.line(&format!(
            "default-server on-marked-down shutdown-sessions init-addr libc,none{proxy_server}"
        ));
        for server in &servers {
            let track = format!("track {MQTT_BACKEND}/{}", server.name);
            out.line(&server_line(server, listener.ports.backend, &track));
        }
    }

    out.section("frontend stats");
    out.line("mode http");
    out.line(&format!("bind :{stats_port}"));
    out.line("timeout client 30s");
    out.line("timeout http-request 10s");
    out.line("no log");
    out.line("http-request use-service prometheus-exporter if { path /metrics }");
    out.line("stats enable");
    out.line("stats uri /stats");
    out.line("stats refresh 10s");

    Ok(out.text)
}

fn server_line(server: &ValidServer<'_>, port: u16, check: &str) -> String {
    let address = server
        .address
        .as_ref()
        .map_or_else(|| Ipv4Addr::UNSPECIFIED.to_string(), ToString::to_string);
    let disabled = if server.enabled && server.address.is_some() {
        ""
    } else {
        " disabled"
    };
    format!("server {} {address}:{port} {check}{disabled}", server.name)
}

/// The text being rendered: section headers at column 0, directives indented.
#[derive(Default)]
struct Out {
    text: String,
}

impl Out {
    fn raw(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }
    fn section(&mut self, header: &str) {
        self.text.push('\n');
        self.raw(header);
    }
    fn line(&mut self, directive: &str) {
        self.text.push_str("    ");
        self.raw(directive);
    }
}

fn validate_servers(servers: &[BackendServer]) -> Result<Vec<ValidServer<'_>>, LbConfigError> {
    let mut names = BTreeSet::new();
    servers
        .iter()
        .enumerate()
        .map(|(i, server)| {
            check_label(&format!("servers[{i}].name"), &server.name)?;
            if !names.insert(server.name.as_str()) {
                return Err(LbConfigError::Duplicate {
                    field: "servers[].name".into(),
                    value: server.name.clone(),
                });
            }
            let address = server
                .address
                .as_deref()
                .map(|a| parse_address(&format!("servers[{i}].address"), a))
                .transpose()?;
            Ok(ValidServer {
                name: &server.name,
                address,
                enabled: server.initially_enabled,
            })
        })
        .collect()
}

fn validate_peers(peers: &[Peer]) -> Result<Vec<ValidPeer<'_>>, LbConfigError> {
    let mut names = BTreeSet::new();
    peers
        .iter()
        .enumerate()
        .map(|(i, peer)| {
            check_label(&format!("peers[{i}].name"), &peer.name)?;
            if !names.insert(peer.name.as_str()) {
                return Err(LbConfigError::Duplicate {
                    field: "peers[].name".into(),
                    value: peer.name.clone(),
                });
            }
            Ok(ValidPeer {
                name: &peer.name,
                address: parse_address(&format!("peers[{i}].address"), &peer.address)?,
            })
        })
        .collect()
}

/// Every port HAProxy binds must be distinct and non-zero; broker ports must be non-zero.
fn check_ports(
    mqtt: &ListenerPorts,
    passthrough: &[Passthrough],
    stats_port: u16,
    peer_port: u16,
    has_peers: bool,
) -> Result<(), LbConfigError> {
    let mut bound: Vec<(String, u16)> = vec![
        ("mqtt.frontend".into(), mqtt.frontend),
        ("stats_port".into(), stats_port),
    ];
    let mut brokers = vec![("mqtt.backend".to_string(), mqtt.backend)];
    for listener in passthrough {
        let field = match listener.name {
            WEBSOCKET_BACKEND => "websocket",
            TLS_BACKEND => "tls",
            _ => "wss",
        };
        bound.push((format!("{field}.frontend"), listener.ports.frontend));
        brokers.push((format!("{field}.backend"), listener.ports.backend));
    }
    if has_peers {
        bound.push(("peer_port".into(), peer_port));
    }
    for (field, port) in bound.iter().chain(&brokers) {
        check_range(field, *port, 1, u16::MAX)?;
    }
    let mut seen = BTreeSet::new();
    for (_, port) in &bound {
        if !seen.insert(*port) {
            return Err(LbConfigError::Duplicate {
                field: "listening ports (frontends, stats_port, peer_port)".into(),
                value: port.to_string(),
            });
        }
    }
    Ok(())
}

fn check_range<T: Into<u64> + Copy>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), LbConfigError> {
    let (value, min, max) = (value.into(), min.into(), max.into());
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(LbConfigError::OutOfRange {
            field: field.into(),
            value,
            min,
            max,
        })
    }
}

fn invalid(field: &str, value: &str, expected: &'static str) -> LbConfigError {
    const SHOWN: usize = 64;
    let mut shown: String = value.chars().take(SHOWN).collect();
    if value.chars().nth(SHOWN).is_some() {
        shown.push('…');
    }
    LbConfigError::InvalidValue {
        field: field.into(),
        value: shown,
        expected,
    }
}

/// RFC 1123 label as Kubernetes checks it: 1 to 63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
}

/// RFC 1123 subdomain as Kubernetes checks it: dot-separated labels, at most 253 bytes.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn check_label(field: &str, value: &str) -> Result<(), LbConfigError> {
    if is_dns1123_label(value) {
        Ok(())
    } else {
        Err(invalid(
            field,
            value,
            "a DNS-1123 label (1-63 of a-z, 0-9, '-', alphanumeric at both ends)",
        ))
    }
}

fn parse_address(field: &str, value: &str) -> Result<Address, LbConfigError> {
    let address = if let Ok(ip) = value.parse::<Ipv4Addr>() {
        Address::V4(ip)
    } else if let Ok(ip) = value.parse::<Ipv6Addr>() {
        Address::V6(ip)
    } else if is_dns1123_subdomain(value)
        && !value
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        Address::Host(value.to_string())
    } else {
        return Err(invalid(
            field,
            value,
            "an IPv4 address, an IPv6 address or a DNS-1123 host name (last label not all digits)",
        ));
    };
    let unspecified = match &address {
        Address::V4(ip) => ip.is_unspecified(),
        Address::V6(ip) => ip.is_unspecified(),
        Address::Host(_) => false,
    };
    if unspecified {
        return Err(invalid(
            field,
            value,
            "a specific address (the unspecified address connects to the LB itself)",
        ));
    }
    Ok(address)
}

/// Lowercase hex, as `tcp-check send-binary` reads it.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// An MQTT 3.1.1 CONNECT packet: clean session, keepalive [`HEALTH_CHECK_KEEPALIVE_SECONDS`], the
/// given client id, and username and password when credentials are given.
pub fn mqtt_connect_packet(
    client_id: &str,
    credentials: Option<&HealthCheckCredentials>,
) -> Result<Vec<u8>, LbConfigError> {
    const CLEAN_SESSION: u8 = 0x02;
    const PASSWORD: u8 = 0x40;
    const USERNAME: u8 = 0x80;

    if client_id.contains('\0') || client_id.len() > usize::from(u16::MAX) {
        return Err(invalid(
            "client_id",
            client_id,
            "an MQTT string (at most 65535 bytes, no U+0000)",
        ));
    }
    if let Some(c) = credentials {
        if c.username.is_empty() {
            return Err(LbConfigError::InvalidSecret {
                field: "health_check_credentials.username".into(),
                reason: "must not be empty (give no credentials for anonymous access)",
            });
        }
        if c.username.len() > MAX_USERNAME_BYTES || c.username.contains('\0') {
            return Err(invalid(
                "health_check_credentials.username",
                &c.username,
                "an MQTT user name of at most 1024 bytes without U+0000",
            ));
        }
        if c.password.len() > MAX_PASSWORD_BYTES {
            return Err(LbConfigError::InvalidSecret {
                field: "health_check_credentials.password".into(),
                reason: "is longer than 4096 bytes",
            });
        }
    }

    let mut body = Vec::new();
    push_mqtt_bytes(&mut body, b"MQTT");
    body.push(4); // protocol level: 3.1.1
    let mut flags = CLEAN_SESSION;
    if credentials.is_some() {
        flags |= USERNAME | PASSWORD;
    }
    body.push(flags);
    body.extend_from_slice(&HEALTH_CHECK_KEEPALIVE_SECONDS.to_be_bytes());
    push_mqtt_bytes(&mut body, client_id.as_bytes());
    if let Some(c) = credentials {
        push_mqtt_bytes(&mut body, c.username.as_bytes());
        push_mqtt_bytes(&mut body, c.password.as_bytes());
    }

    let mut packet = vec![0x10];
    push_remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    Ok(packet)
}

/// Two-byte big-endian length and the bytes; callers have checked the length fits.
fn push_mqtt_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// MQTT's variable-length "remaining length": 7 bits a byte, high bit set on all but the last.
fn push_remaining_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        // `len % 128` is below 128, so the cast cannot truncate.
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn server(name: &str, address: Option<&str>, enabled: bool) -> BackendServer {
        BackendServer {
            name: name.into(),
            address: address.map(Into::into),
            initially_enabled: enabled,
        }
    }

    fn peer(name: &str, address: &str) -> Peer {
        Peer {
            name: name.into(),
            address: address.into(),
        }
    }

    fn creds(username: &str, password: &str) -> HealthCheckCredentials {
        HealthCheckCredentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Three brokers (one without address), all listeners, two peers, credentials, PROXY protocol.
    fn full() -> LbConfig {
        LbConfig {
            servers: vec![
                server("demo-0", Some("10.0.0.10"), true),
                server("demo-1", Some("fd00::11"), false),
                server("demo-2", None, true),
            ],
            websocket: Some(ListenerPorts::same(8083)),
            tls: Some(ListenerPorts::same(8883)),
            wss: Some(ListenerPorts::same(8084)),
            peers: vec![peer("demo-lb-0", "10.0.1.1"), peer("demo-lb-1", "10.0.1.2")],
            health_check_credentials: Some(creds("probe", "s3cret")),
            proxy_protocol: true,
            ..LbConfig::new("demo")
        }
    }

    fn lines_starting<'a>(cfg: &'a str, prefix: &str) -> Vec<&'a str> {
        cfg.lines()
            .map(str::trim)
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// A minimal decoder of an MQTT 3.1.1 CONNECT, independent of the encoder.
    #[derive(Debug, PartialEq)]
    struct Connect {
        protocol: Vec<u8>,
        level: u8,
        flags: u8,
        keepalive: u16,
        client_id: Vec<u8>,
        username: Option<Vec<u8>>,
        password: Option<Vec<u8>>,
    }

    struct Cursor<'a>(&'a [u8]);

    impl Cursor<'_> {
        fn take(&mut self, n: usize) -> Vec<u8> {
            let (head, tail) = self.0.split_at(n);
            self.0 = tail;
            head.to_vec()
        }
        fn string(&mut self) -> Vec<u8> {
            let len = self.take(2);
            self.take(usize::from(u16::from_be_bytes([len[0], len[1]])))
        }
    }

    fn decode_connect(bytes: &[u8]) -> Connect {
        assert_eq!(bytes[0], 0x10, "packet type CONNECT, flags 0");
        let (mut remaining, mut multiplier, mut i) = (0usize, 1usize, 1);
        loop {
            let b = bytes[i];
            remaining += usize::from(b & 0x7f) * multiplier;
            multiplier *= 128;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        assert!(i <= 5, "remaining length uses at most 4 bytes");
        assert_eq!(bytes.len() - i, remaining, "remaining length matches");
        let mut c = Cursor(&bytes[i..]);
        let protocol = c.string();
        let level = c.take(1)[0];
        let flags = c.take(1)[0];
        let keepalive = c.take(2);
        let client_id = c.string();
        let username = (flags & 0x80 != 0).then(|| c.string());
        let password = (flags & 0x40 != 0).then(|| c.string());
        assert!(c.0.is_empty(), "no trailing bytes");
        Connect {
            protocol,
            level,
            flags,
            keepalive: u16::from_be_bytes([keepalive[0], keepalive[1]]),
            client_id,
            username,
            password,
        }
    }

    #[test]
    fn anonymous_connect_with_empty_id_matches_the_measured_packet() {
        let packet = mqtt_connect_packet("", None).unwrap();
        assert_eq!(hex(&packet), "100c00044d5154540402003c0000");
    }

    #[test]
    fn anonymous_connect_carries_the_check_client_id() {
        let packet = mqtt_connect_packet(HEALTH_CHECK_CLIENT_ID, None).unwrap();
        assert_eq!(
            hex(&packet),
            "101c00044d5154540402003c00106d6f6f72696e672d6c622d636865636b"
        );
        assert_eq!(
            decode_connect(&packet),
            Connect {
                protocol: b"MQTT".to_vec(),
                level: 4,
                flags: 0x02,
                keepalive: 60,
                client_id: b"mooring-lb-check".to_vec(),
                username: None,
                password: None,
            }
        );
    }

    #[test]
    fn connect_with_credentials_decodes_back() {
        let packet =
            mqtt_connect_packet(HEALTH_CHECK_CLIENT_ID, Some(&creds("probe", "s3cret"))).unwrap();
        assert_eq!(
            decode_connect(&packet),
            Connect {
                protocol: b"MQTT".to_vec(),
                level: 4,
                flags: 0xc2,
                keepalive: 60,
                client_id: b"mooring-lb-check".to_vec(),
                username: Some(b"probe".to_vec()),
                password: Some(b"s3cret".to_vec()),
            }
        );
        // Fixed header, then flags 0xc2 and the three strings, by hand.
        assert_eq!(
            hex(&packet),
            format!(
                "102b{}{}{}{}",
                "00044d51545404c2003c",
                "00106d6f6f72696e672d6c622d636865636b",
                "000570726f6265",
                "0006733363726574"
            )
        );
    }

    #[test]
    fn long_credentials_use_a_multi_byte_remaining_length() {
        let password = "p".repeat(MAX_PASSWORD_BYTES);
        let packet =
            mqtt_connect_packet(HEALTH_CHECK_CLIENT_ID, Some(&creds("probe", &password))).unwrap();
        assert!(packet[1] & 0x80 != 0, "two-byte remaining length");
        let decoded = decode_connect(&packet);
        assert_eq!(decoded.password, Some(password.into_bytes()));
        assert!(packet.len() < 16 * 1024, "fits HAProxy's check buffer");
    }

    #[test]
    fn remaining_length_encoding_matches_the_spec_examples() {
        for (len, expected) in [
            (0, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (2_097_151, vec![0xff, 0xff, 0x7f]),
            (268_435_455, vec![0xff, 0xff, 0xff, 0x7f]),
        ] {
            let mut out = Vec::new();
            push_remaining_length(&mut out, len);
            assert_eq!(out, expected, "{len}");
        }
    }

    #[test]
    fn bad_credentials_are_rejected_without_echoing_the_password() {
        let too_long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        let err = render(&LbConfig {
            health_check_credentials: Some(creds("probe", &too_long)),
            ..full()
        })
        .unwrap_err();
        assert!(!err.to_string().contains("xxxx"), "{err}");
        assert!(err.to_string().contains("password"), "{err}");

        let err = render(&LbConfig {
            health_check_credentials: Some(creds("", "pw")),
            ..full()
        })
        .unwrap_err();
        assert!(err.to_string().contains("username"), "{err}");

        let err = render(&LbConfig {
            health_check_credentials: Some(creds("a\0b", "pw")),
            ..full()
        })
        .unwrap_err();
        assert!(err.to_string().contains("username"), "{err}");
        assert!(format!("{:?}", creds("u", "hunter2")).contains("u"));
        assert!(!format!("{:?}", creds("u", "hunter2")).contains("hunter2"));
    }

    #[test]
    fn the_mqtt_listener_rejects_non_mqtt_and_sticks_on_the_client_id() {
        let cfg = render(&full()).unwrap();
        assert!(cfg.contains(
            "\n    tcp-request content reject unless { req.payload(0,0),mqtt_is_valid }\n"
        ));
        assert!(cfg.contains(&format!(
            "\n    tcp-request inspect-delay {INSPECT_DELAY}\n"
        )));
        assert!(cfg.contains(
            "\n    stick on req.payload(0,0),mqtt_field_value(connect,client_identifier)\n"
        ));
        assert_eq!(
            lines_starting(&cfg, "stick-table"),
            ["stick-table type string len 1024 size 100000 expire 172800s srvkey name peers mooring"]
        );
        assert!(cfg.contains("\n    balance leastconn\n"));
        assert!(cfg.contains("\n    default_backend mqtt\n"));
        let log_format = lines_starting(&cfg, "log-format");
        assert_eq!(log_format.len(), 1);
        assert!(log_format[0].ends_with("clientid=%[capture.req.hdr(0)]\""));
        assert!(cfg.contains(
            "capture req.payload(0,0),mqtt_field_value(connect,client_identifier),json(utf8s) len 256"
        ));
    }

    #[test]
    fn global_and_defaults_suit_long_lived_mqtt_connections() {
        let cfg = render(&LbConfig {
            idle_timeout_seconds: 7200,
            max_connections: 1234,
            ..full()
        })
        .unwrap();
        for expected in [
            "stats socket /var/run/haproxy/admin.sock mode 600 level admin expose-fd listeners",
            "log stdout format raw local0",
            "maxconn 1234",
            "mode tcp",
            "option redispatch",
            "retries 3",
            "timeout client 7200s",
            "timeout server 7200s",
        ] {
            assert!(cfg.contains(&format!("\n    {expected}\n")), "{expected}");
        }
    }

    #[test]
    fn the_health_check_is_mqtt_and_carries_the_credentials() {
        let cfg = render(&LbConfig {
            proxy_protocol: false,
            ..full()
        })
        .unwrap();
        let packet =
            mqtt_connect_packet(HEALTH_CHECK_CLIENT_ID, Some(&creds("probe", "s3cret"))).unwrap();
        assert_eq!(
            lines_starting(&cfg, "tcp-check"),
            [
                "tcp-check connect default linger".to_string(),
                format!("tcp-check send-binary {}", hex(&packet)),
                "tcp-check expect binary 20020000".to_string(),
                "tcp-check send-binary e000".to_string(),
            ]
        );
        assert!(!cfg.contains("s3cret"), "the password is only hex-encoded");
        assert!(cfg.contains("\n    option tcp-check\n"));

        let anonymous = render(&LbConfig {
            health_check_credentials: None,
            proxy_protocol: false,
            ..full()
        })
        .unwrap();
        let anonymous_packet = mqtt_connect_packet(HEALTH_CHECK_CLIENT_ID, None).unwrap();
        assert!(anonymous.contains(&format!("send-binary {}\n", hex(&anonymous_packet))));
    }

    #[test]
    fn proxy_protocol_goes_to_every_server_and_check() {
        let with = render(&full()).unwrap();
        let default_servers = lines_starting(&with, "default-server");
        assert_eq!(default_servers.len(), 4, "mqtt, ws, tls, wss");
        assert!(default_servers[0].contains("inter 2s fall 2 rise 2"));
        for line in &default_servers {
            assert!(line.ends_with(" send-proxy-v2"), "{line}");
            assert!(line.contains("on-marked-down shutdown-sessions"), "{line}");
        }
        // The check sends its own PROXY (not LOCAL) header, then the CONNECT.
        assert!(!with.contains("check-send-proxy"));
        assert_eq!(
            lines_starting(&with, "tcp-check connect"),
            vec!["tcp-check connect linger"]
        );
        let header = crate::load_balancer::proxy_header::health_check().unwrap();
        let connect = mqtt_connect_packet(
            HEALTH_CHECK_CLIENT_ID,
            full().health_check_credentials.as_ref(),
        )
        .unwrap();
        let sends = lines_starting(&with, "tcp-check send-binary");
        assert_eq!(
            sends[0],
            format!("tcp-check send-binary {}{}", hex(&header), hex(&connect))
        );
        assert!(sends[0].starts_with("tcp-check send-binary 0d0a0d0a000d0a515549540a2111000c"));

        let without = render(&LbConfig {
            proxy_protocol: false,
            ..full()
        })
        .unwrap();
        assert!(!without.contains("send-proxy"));
        assert!(without.contains("tcp-check connect default linger\n"));
        assert!(without.contains(&format!("tcp-check send-binary {}\n", hex(&connect))));
    }

    #[test]
    fn a_refused_check_can_count_as_alive() {
        let strict = render(&full()).unwrap();
        assert!(strict.contains(&format!("tcp-check expect binary {CONNACK_ACCEPTED_HEX}\n")));
        let lenient = render(&LbConfig {
            accept_refused_connack: true,
            health_check_credentials: None,
            ..full()
        })
        .unwrap();
        assert!(lenient.contains(&format!("tcp-check expect binary {CONNACK_ANY_HEX}\n")));
        assert!(!lenient.contains(CONNACK_ACCEPTED_HEX));
    }

    #[test]
    fn servers_are_rendered_with_their_state_and_placeholder() {
        let cfg = render(&full()).unwrap();
        assert_eq!(
            lines_starting(&cfg, "server "),
            [
                "server demo-0 10.0.0.10:1883 check",
                "server demo-1 [fd00::11]:1883 check disabled",
                "server demo-2 0.0.0.0:1883 check disabled",
                "server demo-0 10.0.0.10:8083 track mqtt/demo-0",
                "server demo-1 [fd00::11]:8083 track mqtt/demo-1 disabled",
                "server demo-2 0.0.0.0:8083 track mqtt/demo-2 disabled",
                "server demo-0 10.0.0.10:8883 track mqtt/demo-0",
                "server demo-1 [fd00::11]:8883 track mqtt/demo-1 disabled",
                "server demo-2 0.0.0.0:8883 track mqtt/demo-2 disabled",
                "server demo-0 10.0.0.10:8084 track mqtt/demo-0",
                "server demo-1 [fd00::11]:8084 track mqtt/demo-1 disabled",
                "server demo-2 0.0.0.0:8084 track mqtt/demo-2 disabled",
            ]
        );
        assert_eq!(
            backends(&full()),
            ["mqtt", "mqtt_ws", "mqtt_tls", "mqtt_wss"]
        );
    }

    #[test]
    fn passthrough_listeners_hash_on_the_source_address() {
        let cfg = render(&LbConfig {
            websocket: Some(ListenerPorts {
                frontend: 80,
                backend: 8083,
            }),
            ..full()
        })
        .unwrap();
        assert_eq!(lines_starting(&cfg, "balance source").len(), 3);
        assert_eq!(lines_starting(&cfg, "hash-type consistent").len(), 3);
        assert!(cfg.contains("frontend mqtt_ws\n    bind :80\n"));
        assert!(cfg.contains("server demo-0 10.0.0.10:8083 track mqtt/demo-0\n"));
        assert!(cfg.contains("reject unless { req.proto_http }"));
        assert_eq!(
            lines_starting(
                &cfg,
                "tcp-request content reject unless { req.ssl_hello_type 1 }"
            )
            .len(),
            2
        );

        let plain = render(&LbConfig::new("demo")).unwrap();
        assert!(!plain.contains("balance source"));
        assert!(!plain.contains("mqtt_ws"));
        assert_eq!(backends(&LbConfig::new("demo")), ["mqtt"]);
    }

    #[test]
    fn peers_list_every_replica_and_stats_have_their_own_port() {
        let cfg = render(&LbConfig {
            peer_port: 10001,
            ..full()
        })
        .unwrap();
        assert!(cfg.contains(
            "\npeers mooring\n    peer demo-lb-0 10.0.1.1:10001\n    peer demo-lb-1 10.0.1.2:10001\n"
        ));
        assert!(cfg.contains("\nfrontend stats\n    mode http\n    bind :8404\n"));
        assert!(cfg
            .contains("\n    http-request use-service prometheus-exporter if { path /metrics }\n"));
        assert!(cfg.contains("\n    stats enable\n    stats uri /stats\n"));

        let alone = render(&LbConfig::new("demo")).unwrap();
        assert!(!alone.contains("peers"));
        assert!(alone.contains("expire 172800s srvkey name\n"));
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases: Vec<(LbConfig, &str)> = vec![
            (LbConfig::new("Demo"), "cluster_name"),
            (
                LbConfig {
                    servers: vec![server(
                        "demo-0",
                        Some("10.0.0.1\n    server evil 1.2.3.4:1"),
                        true,
                    )],
                    ..full()
                },
                "servers[0].address",
            ),
            (
                LbConfig {
                    servers: vec![server("demo-0", None, true), server("demo 1", None, true)],
                    ..full()
                },
                "servers[1].name",
            ),
            (
                LbConfig {
                    servers: vec![server("demo-0", Some("0.0.0.0"), true)],
                    ..full()
                },
                "servers[0].address",
            ),
            (
                LbConfig {
                    servers: vec![server("demo-0", Some("127.1"), true)],
                    ..full()
                },
                "servers[0].address",
            ),
            (
                LbConfig {
                    peers: vec![peer("lb-0", "::")],
                    ..full()
                },
                "peers[0].address",
            ),
            (
                LbConfig {
                    peers: vec![peer("lb_0", "10.0.0.1")],
                    ..full()
                },
                "peers[0].name",
            ),
            (
                LbConfig {
                    servers: vec![server("a", None, true), server("a", None, true)],
                    ..full()
                },
                "servers[].name",
            ),
            (
                LbConfig {
                    peers: vec![peer("a", "10.0.0.1"), peer("a", "10.0.0.2")],
                    ..full()
                },
                "peers[].name",
            ),
            (
                LbConfig {
                    stats_port: 1883,
                    ..full()
                },
                "listening ports",
            ),
            (
                LbConfig {
                    peer_port: 8883,
                    ..full()
                },
                "listening ports",
            ),
            (
                LbConfig {
                    tls: Some(ListenerPorts::same(0)),
                    ..full()
                },
                "tls.frontend",
            ),
            (
                LbConfig {
                    stick_expiry_seconds: MAX_TIMER_SECONDS + 1,
                    ..full()
                },
                "stick_expiry_seconds",
            ),
            (
                LbConfig {
                    stick_table_size: 0,
                    ..full()
                },
                "stick_table_size",
            ),
            (
                LbConfig {
                    idle_timeout_seconds: 0,
                    ..full()
                },
                "idle_timeout_seconds",
            ),
            (
                LbConfig {
                    max_connections: 0,
                    ..full()
                },
                "max_connections",
            ),
        ];
        for (cfg, field) in cases {
            let err = render(&cfg).expect_err(field);
            let message = err.to_string();
            assert!(message.starts_with(field), "{field}: {message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn addresses_accept_ips_and_host_names() {
        for ok in [
            "10.0.0.1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "demo-0.demo-headless.ns.svc.cluster.local",
            "localhost",
            "b2",
        ] {
            assert!(parse_address("a", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.1:1883",
            "[fd00::1]",
            "fe80::1%eth0",
            "1.2.3",
            "Demo.example",
            "a..b",
            "-a.b",
            "ipv4@10.0.0.1",
            "10.0.0.1 backup",
        ] {
            assert!(parse_address("a", bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_address("a", "fd00:0::1").unwrap().to_string(),
            "[fd00::1]"
        );
    }

    #[test]
    fn error_values_are_cut() {
        let err = render(&LbConfig::new("x".repeat(1000))).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    /// Line count, and each line's first word, word count and `#` count: the shape an injected
    /// line or directive would change.
    fn shape(cfg: &str) -> Vec<(String, usize, usize)> {
        cfg.split('\n')
            .map(|line| {
                let mut words = line.split_whitespace();
                let first = words.next().unwrap_or_default().to_string();
                (first, 1 + words.count(), line.matches('#').count())
            })
            .collect()
    }

    fn directives(cfg: &str) -> BTreeSet<String> {
        cfg.lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }

    /// Strings built from what could break a line or a token, plus arbitrary Unicode.
    fn nasty() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z0-9.:\\-\n\r# \"'\\\\\t\0{}\\[\\]%@;é☃]{0,24}",
            "[a-z0-9][a-z0-9.\\-]{0,20}[a-z0-9]",
            "[0-9a-f:.]{1,20}",
            Just("10.0.0.1\n    server evil 10.6.6.6:1883".to_string()),
            Just("a\r\nglobal".to_string()),
            Just("a # comment".to_string()),
            Just("a\0b".to_string()),
        ]
    }

    /// Renders `field` set to `value` in the `full()` configuration.
    fn with_field(field: usize, value: &str) -> LbConfig {
        let mut cfg = full();
        match field {
            0 => cfg.cluster_name = value.into(),
            1 => cfg.servers[0].name = value.into(),
            2 => cfg.servers[0].address = Some(value.into()),
            3 => cfg.peers[0].name = value.into(),
            4 => cfg.peers[0].address = value.into(),
            5 => {
                cfg.health_check_credentials = Some(creds(value, "s3cret"));
            }
            _ => {
                cfg.health_check_credentials = Some(creds("probe", value));
            }
        }
        cfg
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn no_string_can_inject_a_line_or_directive(field in 0usize..7, value in nasty()) {
            let benign = render(&full()).unwrap();
            if let Ok(cfg) = render(&with_field(field, &value)) {
                prop_assert_eq!(shape(&cfg), shape(&benign));
                prop_assert_eq!(directives(&cfg), directives(&benign));
                prop_assert!(!cfg.contains('\r') && !cfg.contains('\0'));
                prop_assert!(cfg.is_ascii(), "only ASCII reaches the file");
            }
        }

        #[test]
        fn valid_looking_names_render_and_keep_the_shape(
            name in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
            field in 0usize..2,
        ) {
            let cfg = render(&with_field(if field == 0 { 1 } else { 3 }, &name)).unwrap();
            prop_assert_eq!(shape(&cfg), shape(&render(&full()).unwrap()));
        }

        #[test]
        fn connect_packets_decode_back(
            client_id in "[^\u{0}]{0,40}",
            username in "[^\u{0}]{1,300}",
            password in any::<String>(),
            with_credentials in any::<bool>(),
        ) {
            prop_assume!(username.len() <= MAX_USERNAME_BYTES);
            prop_assume!(password.len() <= MAX_PASSWORD_BYTES);
            let credentials = creds(&username, &password);
            let packet = mqtt_connect_packet(
                &client_id,
                with_credentials.then_some(&credentials),
            ).unwrap();
            let decoded = decode_connect(&packet);
            prop_assert_eq!(decoded.client_id, client_id.into_bytes());
            prop_assert_eq!(decoded.flags & 0x02, 0x02);
            prop_assert_eq!(decoded.keepalive, 60);
            if with_credentials {
                prop_assert_eq!(decoded.username, Some(username.into_bytes()));
                prop_assert_eq!(decoded.password, Some(password.into_bytes()));
            } else {
                prop_assert_eq!(decoded.username, None);
                prop_assert_eq!(decoded.password, None);
            }
        }
    }
}
