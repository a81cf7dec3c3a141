//! RabbitMQ 3.10 to 4.x with the MQTT plugin: `rabbitmq.conf`, `enabled_plugins`, a definitions
//! file and the environment.
//!
//! # What the StatefulSet builder must mount
//!
//! | What | Where | How |
//! |---|---|---|
//! | ConfigMap (`rabbitmq.conf`, `enabled_plugins`) | [`CONFIG_DIR`] | read-only |
//! | operator-owned Secret (`definitions.json`, `.erlang.cookie`, …) | [`SECRET_DIR`] | read-only, `defaultMode: 0400`, no `fsGroup` |
//! | data volume | [`DATA_DIR`] | read-write |
//! | TLS Secrets | `/etc/rabbitmq/certs/<mqtts\|wss>` | see [`super::tls_mounts`] |
//!
//! # The Erlang cookie
//!
//! The cookie is rendered into `secret_files` as [`COOKIE_FILE`] (`.erlang.cookie`), so the plain
//! Secret volume at [`SECRET_DIR`] with `defaultMode: 0400` holds `<SECRET_DIR>/.erlang.cookie`,
//! and `HOME` points at [`SECRET_DIR`]: the VM and every CLI tool run in the container
//! (`rabbitmqctl`, `rabbitmq-diagnostics`) read `$HOME/.erlang.cookie`. This works the same on 3.10
//! and on 3.13/4.x, unlike `RABBITMQ_ERLANG_COOKIE`, which is deprecated, makes every CLI call print
//! a warning on stdout (breaking JSON output), and does not stop the VM from checking the file.
//! The VM refuses a cookie file that anyone but its owner can read, so:
//! - no `fsGroup` on the Pod (the kubelet would widen 0400 to 0440), and
//! - the broker runs as the owner of the Secret's files, root: the [`BrokerLayout::command`]
//!   `rabbitmq-server` replaces the official image's entrypoint (which would switch to uid 999),
//!   and the local devcluster maps it to Debian's `/usr/lib/rabbitmq/bin/rabbitmq-server`.
//!
//! A cookie kept on the data volume would be regenerated when the volume is wiped, and the node
//! would silently fail to join; from the Secret it never changes.
//!
//! # Definitions
//!
//! `definitions.json` (in the Secret: it holds password hashes) is loaded on every boot with
//! `load_definitions`. Hashes use `rabbit_password_hashing_sha256` with a salt derived from the
//! cookie and the username, so the same input renders byte-identical files (a checksum of them
//! rolls the Pods). Importing only creates and updates: users removed from `auth.users` stay
//! until deleted through the management API. To keep later imports from leaving stale state,
//! every MQTT user always gets explicit topic permissions (`.*` when there are no ACL rules), the
//! queue policy is always present, and the anonymous user is always defined (with a password
//! nobody knows while anonymous access is off).
//!
//! # Version-specific keys
//!
//! - Session expiry: `mqtt.subscription_ttl` (ms) before 3.13 (which rejects it),
//!   `mqtt.max_session_expiry_interval_seconds` from 3.13.
//! - Anonymous MQTT clients log in as [`ANONYMOUS_USER`]: `mqtt.default_user`/`default_pass`
//!   before 4.0, `anonymous_login_user`/`anonymous_login_pass` from 4.0 (which removed the MQTT
//!   keys; there it also applies to AMQP's ANONYMOUS mechanism, with the same narrow rights).
//!
//! # Limits that come from RabbitMQ
//!
//! - Topic authorisation can only allow; deny rules and client-id rules are unsupported.
//! - The MQTT plugin turns `/` into `.` in routing keys and keeps `.` as it is, so a `.` inside a
//!   topic level acts as a level separator for the topic permissions.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use mooring_crds::{AclAction, AclPermission, AclRule, BrokerClusterSpec};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::common::{
    env_pod_name, env_value, has_line_break_or_control, invalid, listener_ports, quantity_bytes,
    tcp_port, tcp_probe, unsupported, validate_listeners, validate_names, validate_overrides,
    Timing, POD_NAME_ENV,
};
use super::{
    broker_version, port_names, tls_mounts, version_string, BrokerLayout, BrokerVersion,
    ClusterNames, Credentials, RenderError, RenderInput,
};

const BROKER: &str = "RabbitMQ";

/// Where the ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/rabbitmq/mooring";
/// Where the operator-owned Secret is mounted (0400, no `fsGroup`); also `HOME`.
pub const SECRET_DIR: &str = "/etc/rabbitmq/mooring-secrets";
/// `RABBITMQ_MNESIA_BASE`, on the data volume: node data, feature flags, expanded plugins.
pub const DATA_DIR: &str = "/var/lib/rabbitmq/mnesia";
/// Parent of the TLS Secret mounts (`<TLS_DIR>/<listener>/tls.crt`).
pub const TLS_DIR: &str = "/etc/rabbitmq/certs";
/// `rabbitmq.conf`, in `config_files`.
pub const CONF_FILE: &str = "rabbitmq.conf";
/// The enabled plugins file, in `config_files`.
pub const PLUGINS_FILE: &str = "enabled_plugins";
/// The definitions file, in `secret_files`.
pub const DEFINITIONS_FILE: &str = "definitions.json";
/// The Erlang cookie, in `secret_files` (and so at `$HOME/.erlang.cookie`).
pub const COOKIE_FILE: &str = ".erlang.cookie";
/// AMQP.
pub const AMQP_PORT: i32 = 5672;
/// The management plugin's HTTP API.
pub const MANAGEMENT_PORT: i32 = 15672;
/// epmd.
pub const EPMD_PORT: i32 = 4369;
/// Erlang distribution (AMQP port + 20000).
pub const DIST_PORT: i32 = 25672;
/// The user anonymous MQTT clients act as.
pub const ANONYMOUS_USER: &str = "mqtt-anonymous";
/// The policy capping the MQTT subscription queues.
pub const QUEUE_POLICY: &str = "mooring-mqtt-subscriptions";
/// The node name's short part: nodes are `rabbit@<pod fqdn>`.
pub const NODE_SHORT_NAME: &str = "rabbit";
/// The memory high watermark when `resources.limits.memory` is unset.
pub const DEFAULT_WATERMARK_BYTES: u128 = 512 * 1024 * 1024;
/// The memory high watermark, in percent of the container's memory limit.
pub const WATERMARK_PERCENT: u128 = 40;

const VHOST: &str = "/";
const DEFAULT_EXCHANGE: &str = "amq.topic";
const MIN_VERSION: BrokerVersion = BrokerVersion::new(3, 10, 0);
const SESSION_EXPIRY_VERSION: BrokerVersion = BrokerVersion::new(3, 13, 0);
const ANONYMOUS_LOGIN_VERSION: BrokerVersion = BrokerVersion::new(4, 0, 0);
const TERMINATION_GRACE_SECONDS: i64 = 60;

/// The `cluster_partition_handling` Mooring renders for `replicas` nodes: with a majority to
/// keep, pause the minority side of a partition; with one or two nodes there is none, so heal
/// automatically.
pub fn default_partition_handling(replicas: i32) -> &'static str {
    if replicas >= 3 {
        "pause_minority"
    } else {
        "autoheal"
    }
}

/// The `cluster_partition_handling` a cluster of `replicas` nodes runs with: `configOverrides`
/// wins over [`default_partition_handling`].
pub fn partition_handling(spec: &BrokerClusterSpec, replicas: i32) -> String {
    spec.config_overrides
        .get("cluster_partition_handling")
        .cloned()
        .unwrap_or_else(|| default_partition_handling(replicas).to_string())
}

/// The Erlang node name of the Pod with this ordinal.
pub fn node_name(names: &ClusterNames, ordinal: i32) -> String {
    format!("{NODE_SHORT_NAME}@{}", names.pod_fqdn(ordinal))
}

/// Renders the RabbitMQ layout.
pub fn render(input: &RenderInput<'_>) -> Result<BrokerLayout, RenderError> {
    let spec = input.spec;
    let version = broker_version(spec)?;
    if version < MIN_VERSION || version.major > 4 {
        return Err(unsupported(
            BROKER,
            format!("run version {version}: Mooring supports RabbitMQ 3.10 to 4.x"),
        ));
    }
    validate_names(input.names)?;
    validate_overrides(&spec.config_overrides)?;
    if spec.config_overrides.contains_key("mqtt.vhost") {
        return Err(invalid(
            "configOverrides[\"mqtt.vhost\"]",
            "Mooring defines the vhost \"/\" and its permissions; another vhost would have no users",
        ));
    }
    validate_listeners(
        spec,
        &[
            ("AMQP", AMQP_PORT),
            ("the management API", MANAGEMENT_PORT),
            ("epmd", EPMD_PORT),
            ("Erlang distribution", DIST_PORT),
        ],
    )?;
    validate_features(spec)?;
    validate_credentials(input.credentials)?;
    validate_users(input)?;

    let exchange = spec
        .config_overrides
        .get("mqtt.exchange")
        .map(|e| e.trim())
        .unwrap_or(DEFAULT_EXCHANGE);
    let web_mqtt = spec.listeners.websocket.enabled || spec.listeners.wss.is_some();

    let config_files = BTreeMap::from([
        (CONF_FILE.to_string(), render_conf(input, version)?),
        (PLUGINS_FILE.to_string(), plugins(web_mqtt)),
    ]);
    let secret_files = BTreeMap::from([
        (DEFINITIONS_FILE.to_string(), definitions(input, exchange)?),
        (
            COOKIE_FILE.to_string(),
            input.credentials.erlang_cookie.clone(),
        ),
    ]);

    let env = vec![
        env_pod_name(),
        env_value("RABBITMQ_USE_LONGNAME", "true"),
        env_value(
            "RABBITMQ_NODENAME",
            format!(
                "{NODE_SHORT_NAME}@$({POD_NAME_ENV}).{}",
                input.names.headless_fqdn()
            ),
        ),
        env_value("RABBITMQ_CONFIG_FILE", format!("{CONFIG_DIR}/{CONF_FILE}")),
        env_value(
            "RABBITMQ_ENABLED_PLUGINS_FILE",
            format!("{CONFIG_DIR}/{PLUGINS_FILE}"),
        ),
        env_value("RABBITMQ_MNESIA_BASE", DATA_DIR),
        // The VM and the CLI tools read $HOME/.erlang.cookie.
        env_value("HOME", SECRET_DIR),
    ];

    let listeners = listener_ports(spec);
    let mut client_ports = listeners.clone();
    client_ports.push(tcp_port(port_names::MANAGEMENT, MANAGEMENT_PORT));
    let mut ports = listeners;
    ports.extend([
        tcp_port(port_names::AMQP, AMQP_PORT),
        tcp_port(port_names::MANAGEMENT, MANAGEMENT_PORT),
        tcp_port(port_names::EPMD, EPMD_PORT),
        tcp_port(port_names::DIST, DIST_PORT),
    ]);

    Ok(BrokerLayout {
        image: spec
            .broker
            .image
            .clone()
            .unwrap_or_else(|| format!("rabbitmq:{}-management", version_string(spec))),
        command: vec!["rabbitmq-server".into()],
        args: vec![],
        env,
        config_files,
        config_mount_path: CONFIG_DIR.into(),
        secret_files,
        secret_mount_path: SECRET_DIR.into(),
        data_mount_path: DATA_DIR.into(),
        headless_ports: ports.clone(),
        ports,
        client_ports,
        // The MQTT listener opens once the node has booted and joined (or given up joining):
        // ready means "accepts MQTT clients". No credentials or CLI needed.
        readiness_probe: tcp_probe(
            spec.listeners.mqtt.port,
            Timing {
                initial_delay: 10,
                period: 10,
                timeout: 5,
                failure_threshold: 3,
            },
        ),
        // The distribution port stays open while the app is stopped for a repair
        // (stop_app, join_cluster, start_app can take over a minute when peers are away), so a
        // repair never gets the node killed.
        liveness_probe: tcp_probe(
            DIST_PORT,
            Timing {
                initial_delay: 60,
                period: 30,
                timeout: 10,
                failure_threshold: 10,
            },
        ),
        startup_probe: None,
        management_port: MANAGEMENT_PORT,
        termination_grace_period_seconds: TERMINATION_GRACE_SECONDS,
    })
}

fn validate_features(spec: &BrokerClusterSpec) -> Result<(), RenderError> {
    if spec.auth.jwt.is_some() {
        return Err(unsupported(
            BROKER,
            "authenticate with auth.jwt (EMQX only)",
        ));
    }
    if spec.session.exclusive_subscriptions {
        return Err(unsupported(
            BROKER,
            "offer session.exclusiveSubscriptions (EMQX only)",
        ));
    }
    for (i, rule) in spec.auth.acl.iter().enumerate() {
        if rule.permission == AclPermission::Deny {
            return Err(unsupported(
                BROKER,
                format!("apply auth.acl[{i}]: topic permissions can only allow; list what to allow and leave the rest denied"),
            ));
        }
        if rule.client_id.is_some() {
            return Err(unsupported(
                BROKER,
                format!(
                    "apply auth.acl[{i}]: rules by clientId are EMQX only; use username or all"
                ),
            ));
        }
        let one_subject = matches!(
            (&rule.username, rule.all),
            (Some(_), None | Some(false)) | (None, Some(true))
        );
        if !one_subject {
            return Err(invalid(
                format!("auth.acl[{i}]"),
                "a rule names exactly one of username or all: true",
            ));
        }
        if rule.topic.is_empty() {
            return Err(invalid(
                format!("auth.acl[{i}].topic"),
                "the topic filter is empty",
            ));
        }
    }
    Ok(())
}

fn validate_credentials(c: &Credentials) -> Result<(), RenderError> {
    if c.erlang_cookie.is_empty() || !c.erlang_cookie.chars().all(|ch| ch.is_ascii_graphic()) {
        return Err(invalid(
            "credentials.erlangCookie",
            "an Erlang cookie is printable ASCII without spaces",
        ));
    }
    check_username("credentials.adminUsername", &c.admin_username)?;
    if c.admin_username == ANONYMOUS_USER {
        return Err(invalid(
            "credentials.adminUsername",
            format!("{ANONYMOUS_USER} is reserved for anonymous clients"),
        ));
    }
    if c.admin_password.is_empty() {
        return Err(invalid(
            "credentials.adminPassword",
            "RabbitMQ refuses empty passwords",
        ));
    }
    Ok(())
}

fn validate_users(input: &RenderInput<'_>) -> Result<(), RenderError> {
    for (name, password) in input.users {
        let field = format!("auth.users[{name:?}]");
        check_username(&field, name)?;
        if name == ANONYMOUS_USER || *name == input.credentials.admin_username {
            return Err(invalid(
                field,
                "this username is reserved (anonymous clients or Mooring's admin)",
            ));
        }
        if password.is_empty() {
            return Err(invalid(field, "RabbitMQ refuses empty passwords"));
        }
    }
    Ok(())
}

/// A username RabbitMQ's MQTT plugin can take: non-empty, printable, trimmed, and without `:`
/// (the plugin reads `vhost:user` from a username with a colon).
fn check_username(field: &str, name: &str) -> Result<(), RenderError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !has_line_break_or_control(name)
        && !name.contains(':')
        && name.trim() == name;
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{name:?} cannot be a RabbitMQ MQTT username: use 1 to 255 printable characters \
                 without ':' or surrounding spaces"
            ),
        ))
    }
}

fn plugins(web_mqtt: bool) -> String {
    if web_mqtt {
        "[rabbitmq_management,rabbitmq_mqtt,rabbitmq_web_mqtt].\n".into()
    } else {
        "[rabbitmq_management,rabbitmq_mqtt].\n".into()
    }
}

fn render_conf(input: &RenderInput<'_>, version: BrokerVersion) -> Result<String, RenderError> {
    let spec = input.spec;
    let names = input.names;
    let l = &spec.listeners;
    let cookie = &input.credentials.erlang_cookie;
    let mut kv: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| kv.push((k.to_string(), v));

    set("cluster_name", names.name.clone());
    set(
        "cluster_formation.peer_discovery_backend",
        "classic_config".into(),
    );
    for ordinal in 0..spec.replicas {
        set(
            &format!("cluster_formation.classic_config.nodes.{}", ordinal + 1),
            node_name(names, ordinal),
        );
    }
    set(
        "cluster_partition_handling",
        default_partition_handling(spec.replicas).into(),
    );
    set("loopback_users", "none".into());
    set("listeners.tcp.default", AMQP_PORT.to_string());
    set("management.tcp.port", MANAGEMENT_PORT.to_string());
    set(
        "load_definitions",
        format!("{SECRET_DIR}/{DEFINITIONS_FILE}"),
    );
    set(
        "vm_memory_high_watermark.absolute",
        memory_watermark(spec)?.to_string(),
    );
    set("log.console", "true".into());
    set("log.console.level", "info".into());
    set("log.file", "false".into());

    set("mqtt.listeners.tcp.default", l.mqtt.port.to_string());
    set(
        "mqtt.allow_anonymous",
        spec.auth.allow_anonymous.to_string(),
    );
    if version >= ANONYMOUS_LOGIN_VERSION {
        if spec.auth.allow_anonymous {
            set("anonymous_login_user", ANONYMOUS_USER.into());
            set("anonymous_login_pass", anonymous_password(cookie));
        } else {
            set("anonymous_login_user", "none".into());
        }
    } else if spec.auth.allow_anonymous {
        // Not a secret worth hiding: with anonymous access on, anyone may act as this user anyway;
        // with it off the user's password is changed to one nobody knows.
        set("mqtt.default_user", ANONYMOUS_USER.into());
        set("mqtt.default_pass", anonymous_password(cookie));
    }
    let expiry = spec.session.expiry_seconds.max(0);
    if version >= SESSION_EXPIRY_VERSION {
        set(
            "mqtt.max_session_expiry_interval_seconds",
            expiry.to_string(),
        );
    } else {
        // A queue's x-expires must be positive: 1 ms is "gone at once".
        set(
            "mqtt.subscription_ttl",
            (expiry.saturating_mul(1000)).max(1).to_string(),
        );
    }

    for mount in tls_mounts(spec) {
        if mount.listener == port_names::MQTTS {
            if let Some(tls) = &l.tls {
                set("mqtt.listeners.ssl.default", tls.port.to_string());
                set("ssl_options.certfile", mount.cert_file());
                set("ssl_options.keyfile", mount.key_file());
                set("ssl_options.verify", "verify_none".into());
                set("ssl_options.fail_if_no_peer_cert", "false".into());
            }
        } else if let Some(wss) = &l.wss {
            set("web_mqtt.ssl.port", wss.port.to_string());
            set("web_mqtt.ssl.certfile", mount.cert_file());
            set("web_mqtt.ssl.keyfile", mount.key_file());
        }
    }
    if l.websocket.enabled {
        set("web_mqtt.tcp.port", l.websocket.port.to_string());
    } else if l.wss.is_some() {
        // The plugin runs for WSS; keep its plain listener (15675 by default) closed.
        set("web_mqtt.tcp.listener", "none".into());
    }
    if spec.load_balancer.sends_proxy_protocol() {
        // Every MQTT listener requires the header HAProxy sends: `mqtt.` covers MQTT and MQTT
        // over TLS, `web_mqtt.` WebSocket and WSS (a key of a plugin that is off would stop
        // the node from booting).
        set("mqtt.proxy_protocol", "true".into());
        if l.websocket.enabled || l.wss.is_some() {
            set("web_mqtt.proxy_protocol", "true".into());
        }
    }

    // Overrides win: drop what they replace instead of relying on duplicate-key order.
    let overrides = &spec.config_overrides;
    let watermark_overridden = overrides
        .keys()
        .any(|k| k.starts_with("vm_memory_high_watermark."));
    kv.retain(|(k, _)| {
        let replaced = overrides.contains_key(k)
            || (watermark_overridden && k.starts_with("vm_memory_high_watermark."));
        !replaced
    });

    let mut out = format!(
        "# Rendered by Mooring for BrokerCluster {}/{}; do not edit, Mooring overwrites it.\n",
        names.namespace, names.name
    );
    for (k, v) in &kv {
        out.push_str(&format!("{k} = {v}\n"));
    }
    if !overrides.is_empty() {
        out.push_str("# configOverrides\n");
        for (k, v) in overrides {
            out.push_str(&format!("{k} = {}\n", v.trim()));
        }
    }
    Ok(out)
}

/// [`WATERMARK_PERCENT`] of the memory limit, or [`DEFAULT_WATERMARK_BYTES`] without one. Each
/// node would otherwise size its watermark after the whole machine's memory.
fn memory_watermark(spec: &BrokerClusterSpec) -> Result<u128, RenderError> {
    let limit = spec
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"));
    match limit {
        None => Ok(DEFAULT_WATERMARK_BYTES),
        Some(q) => {
            let bytes = quantity_bytes(q).ok_or_else(|| {
                invalid(
                    "resources.limits.memory",
                    format!("{:?} is not a memory quantity", q.0),
                )
            })?;
            Ok((bytes * WATERMARK_PERCENT / 100).max(1))
        }
    }
}

fn definitions(input: &RenderInput<'_>, exchange: &str) -> Result<String, RenderError> {
    let c = input.credentials;
    let cookie = &c.erlang_cookie;
    let rules = &input.spec.auth.acl;

    let mut users = vec![json!({
        "name": c.admin_username,
        "password_hash": password_hash(cookie, &c.admin_username, &c.admin_password),
        "hashing_algorithm": "rabbit_password_hashing_sha256",
        "tags": ["administrator"],
    })];
    let mut permissions = vec![json!({
        "user": c.admin_username, "vhost": VHOST,
        "configure": ".*", "write": ".*", "read": ".*",
    })];
    let mut topic_permissions = Vec::new();

    let anonymous_pw = if input.spec.auth.allow_anonymous {
        anonymous_password(cookie)
    } else {
        locked_password(cookie)
    };
    let mqtt_users = std::iter::once((ANONYMOUS_USER, anonymous_pw.as_str()))
        .chain(input.users.iter().map(|(u, p)| (u.as_str(), p.as_str())));
    // What the MQTT plugin needs: declare and delete its own queues, bind them to the exchange,
    // publish to the exchange, consume.
    let exchange_re = regex_escape(exchange);
    let own = "mqtt-(?:subscription|will)-.*";
    for (name, password) in mqtt_users {
        users.push(json!({
            "name": name,
            "password_hash": password_hash(cookie, name, password),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [],
        }));
        permissions.push(json!({
            "user": name, "vhost": VHOST,
            "configure": format!("^{own}$"),
            "write": format!("^(?:{exchange_re}|{own})$"),
            "read": format!("^(?:{exchange_re}|{own})$"),
        }));
        let (write, read) = topic_permission(name, rules);
        topic_permissions.push(json!({
            "user": name, "vhost": VHOST, "exchange": exchange,
            "write": write, "read": read,
        }));
    }

    let mut policy = serde_json::Map::new();
    if input.spec.session.max_queued_messages > 0 {
        policy.insert(
            "max-length".into(),
            json!(input.spec.session.max_queued_messages),
        );
    }
    policy.insert("overflow".into(), json!("drop-head"));

    let doc = json!({
        "users": users,
        "vhosts": [{"name": VHOST}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "policies": [{
            "vhost": VHOST,
            "name": QUEUE_POLICY,
            "pattern": "^mqtt-subscription-",
            "apply-to": "queues",
            "priority": 0,
            "definition": policy,
        }],
    });
    serde_json::to_string_pretty(&doc)
        .map(|s| s + "\n")
        .map_err(|e| invalid("definitions", e.to_string()))
}

/// The topic permission (write, read) of `user` on the MQTT exchange: `.*` without ACL rules;
/// otherwise the filters of the rules that apply to the user (by username or `all`), publish
/// rules for write and subscribe rules for read, and `^$` (nothing) when none applies.
fn topic_permission(user: &str, rules: &[AclRule]) -> (String, String) {
    if rules.is_empty() {
        return (".*".into(), ".*".into());
    }
    let applies = |r: &&AclRule| {
        r.permission == AclPermission::Allow
            && (r.all == Some(true) || r.username.as_deref() == Some(user))
    };
    let pattern = |wanted: AclAction| {
        let mut alternatives: Vec<String> = Vec::new();
        for r in rules.iter().filter(applies) {
            if r.action == wanted || r.action == AclAction::All {
                let re = mqtt_filter_regex(&r.topic);
                if !alternatives.contains(&re) {
                    alternatives.push(re);
                }
            }
        }
        if alternatives.is_empty() {
            "^$".to_string()
        } else {
            format!("^(?:{})$", alternatives.join("|"))
        }
    };
    (pattern(AclAction::Publish), pattern(AclAction::Subscribe))
}

/// The regex (unanchored body) that matches the routing keys an MQTT topic filter covers.
///
/// RabbitMQ checks publishes against the topic's routing key (`/` becomes `.`) and subscriptions
/// against the filter's (`+` becomes `*`, `#` stays), so the regex must match both: a `+` level is
/// `[^.#]*` (any one level, including `*`, never `#`), a trailing `/#` is `(?:\..*)?` (the parent
/// level and anything below it, including `#`), a lone `#` is `.*`, and the rest is literal.
pub fn mqtt_filter_regex(filter: &str) -> String {
    let levels: Vec<&str> = filter.split('/').collect();
    let (levels, multi) = match levels.split_last() {
        Some((&"#", rest)) => (rest, true),
        _ => (&levels[..], false),
    };
    let body = levels
        .iter()
        .map(|level| {
            if *level == "+" {
                "[^.#]*".to_string()
            } else {
                regex_escape(level)
            }
        })
        .collect::<Vec<_>>()
        .join("\\.");
    match (multi, levels.is_empty()) {
        (true, true) => ".*".into(),
        (true, false) => format!("{body}(?:\\..*)?"),
        (false, _) => body,
    }
}

/// Escapes PCRE metacharacters (and `{`/`}`, which would also trigger RabbitMQ's `{username}`
/// variable expansion).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if "\\^$.|?*+()[]{}".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// `rabbit_password_hashing_sha256`: base64(salt ++ sha256(salt ++ password)), with a 4-byte salt
/// derived from the cookie and the username so that rendering is deterministic.
fn password_hash(cookie: &str, username: &str, password: &str) -> String {
    let seed = Sha256::new()
        .chain_update(cookie.as_bytes())
        .chain_update([0u8])
        .chain_update(username.as_bytes())
        .finalize();
    let salt = &seed[..4];
    let hash = Sha256::new()
        .chain_update(salt)
        .chain_update(password.as_bytes())
        .finalize();
    let mut bytes = salt.to_vec();
    bytes.extend_from_slice(&hash);
    BASE64.encode(bytes)
}

fn derived_token(tag: &str, cookie: &str) -> String {
    Sha256::new()
        .chain_update(tag.as_bytes())
        .chain_update([0u8])
        .chain_update(cookie.as_bytes())
        .finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The anonymous user's password while anonymous access is on.
fn anonymous_password(cookie: &str) -> String {
    derived_token("mooring/mqtt-anonymous", cookie)
}

/// The anonymous user's password while anonymous access is off: written nowhere, derived from the
/// secret cookie, so nobody can log in as that user.
fn locked_password(cookie: &str) -> String {
    derived_token("mooring/mqtt-anonymous/locked", cookie)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde_json::Value;

    fn names() -> ClusterNames {
        ClusterNames {
            name: "demo".into(),
            namespace: "ns1".into(),
            headless_service: "demo-headless".into(),
            cluster_domain: "cluster.local".into(),
        }
    }

    fn creds() -> Credentials {
        Credentials {
            erlang_cookie: "Cookie0123456789".into(),
            admin_username: "mooring".into(),
            admin_password: "Secr3tPassw0rd".into(),
        }
    }

    fn spec(extra: Value) -> BrokerClusterSpec {
        let mut v = json!({"broker": {"kind": "rabbitmq"}});
        if let (Some(base), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    fn version(v: &str) -> Value {
        json!({"kind": "rabbitmq", "version": v})
    }

    fn render_with(
        spec: &BrokerClusterSpec,
        users: &BTreeMap<String, String>,
    ) -> Result<BrokerLayout, RenderError> {
        render(&RenderInput {
            spec,
            names: &names(),
            credentials: &creds(),
            users,
            secret_name: "demo-mooring",
        })
    }

    fn layout(spec: &BrokerClusterSpec) -> BrokerLayout {
        render_with(spec, &BTreeMap::new()).unwrap()
    }

    fn users(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect()
    }

    fn conf(l: &BrokerLayout) -> &str {
        &l.config_files[CONF_FILE]
    }

    fn defs(l: &BrokerLayout) -> Value {
        serde_json::from_str(&l.secret_files[DEFINITIONS_FILE]).unwrap()
    }

    fn env<'a>(l: &'a BrokerLayout, name: &str) -> Option<&'a str> {
        l.env
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    fn entry<'a>(list: &'a Value, user: &str) -> &'a Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|e| e["user"] == user || e["name"] == user)
            .unwrap()
    }

    /// Checks a `rabbit_password_hashing_sha256` hash the way RabbitMQ does.
    fn hash_matches(hash: &str, password: &str) -> bool {
        let bytes = BASE64.decode(hash).unwrap();
        let (salt, digest) = bytes.split_at(4);
        Sha256::new()
            .chain_update(salt)
            .chain_update(password.as_bytes())
            .finalize()
            .as_slice()
            == digest
    }

    #[test]
    fn classic_config_lists_every_node_by_its_long_name() {
        let l = layout(&spec(json!({"replicas": 3})));
        let c = conf(&l);
        assert!(c.contains("cluster_formation.peer_discovery_backend = classic_config\n"));
        for i in 0..3 {
            assert!(c.contains(&format!(
                "cluster_formation.classic_config.nodes.{} = rabbit@demo-{i}.demo-headless.ns1.svc.cluster.local\n",
                i + 1
            )));
        }
        assert!(!c.contains("nodes.4"));
        assert!(c.contains("cluster_partition_handling = pause_minority\n"));
        assert_eq!(env(&l, "RABBITMQ_USE_LONGNAME"), Some("true"));
        assert_eq!(
            env(&l, "RABBITMQ_NODENAME"),
            Some("rabbit@$(POD_NAME).demo-headless.ns1.svc.cluster.local")
        );
        assert_eq!(l.env[0].name, "POD_NAME");
        let field = l.env[0]
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap();
        assert_eq!(field.field_path, "metadata.name");
    }

    #[test]
    fn files_data_and_the_cookie_are_where_the_environment_says() {
        let l = layout(&spec(json!({})));
        assert_eq!(
            env(&l, "RABBITMQ_CONFIG_FILE"),
            Some("/etc/rabbitmq/mooring/rabbitmq.conf")
        );
        assert_eq!(
            env(&l, "RABBITMQ_ENABLED_PLUGINS_FILE"),
            Some("/etc/rabbitmq/mooring/enabled_plugins")
        );
        assert_eq!(
            env(&l, "RABBITMQ_MNESIA_BASE"),
            Some(l.data_mount_path.as_str())
        );
        assert_eq!(env(&l, "HOME"), Some(l.secret_mount_path.as_str()));
        assert_eq!(l.secret_files[COOKIE_FILE], "Cookie0123456789");
        assert!(conf(&l)
            .contains("load_definitions = /etc/rabbitmq/mooring-secrets/definitions.json\n"));
        assert!(conf(&l).contains("loopback_users = none\n"));
        assert_eq!(l.command, ["rabbitmq-server"]);
        assert_eq!(l.image, "rabbitmq:3.13.7-management");
        assert!(super::super::pod_security_context(mooring_crds::BrokerKind::Rabbitmq).is_none());
        for text in l.config_files.values() {
            assert!(!text.contains("Cookie0123456789") && !text.contains("Secr3tPassw0rd"));
        }
    }

    #[test]
    fn definitions_hold_the_admin_every_user_the_vhost_and_their_permissions() {
        let s = spec(json!({"auth": {"users": {"name": "mqtt-users"}}}));
        let l = render_with(&s, &users(&[("alice", "pw-a"), ("bob", "pw-b")])).unwrap();
        let d = defs(&l);
        assert_eq!(d["vhosts"], json!([{"name": "/"}]));
        let names: Vec<_> = d["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["mooring", "mqtt-anonymous", "alice", "bob"]);
        let admin = entry(&d["users"], "mooring");
        assert_eq!(admin["tags"], json!(["administrator"]));
        assert_eq!(admin["hashing_algorithm"], "rabbit_password_hashing_sha256");
        assert!(hash_matches(
            admin["password_hash"].as_str().unwrap(),
            "Secr3tPassw0rd"
        ));
        let alice = entry(&d["users"], "alice");
        assert_eq!(alice["tags"], json!([]));
        assert!(hash_matches(
            alice["password_hash"].as_str().unwrap(),
            "pw-a"
        ));
        assert!(!hash_matches(
            alice["password_hash"].as_str().unwrap(),
            "pw-b"
        ));
        assert_eq!(entry(&d["permissions"], "mooring")["configure"], ".*");
        let p = entry(&d["permissions"], "alice");
        assert_eq!(p["configure"], "^mqtt-(?:subscription|will)-.*$");
        assert_eq!(
            p["write"],
            "^(?:amq\\.topic|mqtt-(?:subscription|will)-.*)$"
        );
        assert!(!l.secret_files[DEFINITIONS_FILE].contains("pw-a"));
    }

    #[test]
    fn password_hashes_are_deterministic_and_rendering_is_byte_identical() {
        let s = spec(json!({
            "auth": {"users": {"name": "u"}, "acl": [
                {"username": "a", "action": "publish", "topic": "x/+", "permission": "allow"}
            ]},
            "listeners": {"tls": {"port": 8883, "secretRef": {"name": "c"}}},
            "configOverrides": {"mqtt.prefetch": "20"}
        }));
        let u = users(&[("z", "1"), ("a", "2")]);
        assert_eq!(render_with(&s, &u).unwrap(), render_with(&s, &u).unwrap());
        assert_eq!(password_hash("c", "u", "p"), password_hash("c", "u", "p"));
        assert_ne!(password_hash("c", "u", "p"), password_hash("c", "v", "p"));
        assert_ne!(password_hash("c", "u", "p"), password_hash("d", "u", "p"));
    }

    #[test]
    fn mqtt_filters_become_routing_key_regexes() {
        assert_eq!(
            mqtt_filter_regex("sensors/+/temp"),
            "sensors\\.[^.#]*\\.temp"
        );
        assert_eq!(mqtt_filter_regex("a/#"), "a(?:\\..*)?");
        assert_eq!(mqtt_filter_regex("#"), ".*");
        assert_eq!(mqtt_filter_regex("+"), "[^.#]*");
        assert_eq!(
            mqtt_filter_regex("a.b/(c)*[d]{username}$"),
            "a\\.b\\.\\(c\\)\\*\\[d\\]\\{username\\}\\$"
        );
    }

    #[test]
    fn allow_rules_become_topic_permissions_and_the_rest_is_denied() {
        let s = spec(json!({
            "auth": {"users": {"name": "u"}, "acl": [
                {"username": "alice", "action": "publish", "topic": "sensors/alice/#", "permission": "allow"},
                {"all": true, "action": "subscribe", "topic": "sensors/+/temp", "permission": "allow"},
                {"username": "bob", "action": "all", "topic": "bob", "permission": "allow"}
            ]}
        }));
        let l = render_with(&s, &users(&[("alice", "1"), ("bob", "2"), ("carol", "3")])).unwrap();
        let d = defs(&l);
        let tp = &d["topic_permissions"];
        let alice = entry(tp, "alice");
        assert_eq!(alice["exchange"], "amq.topic");
        assert_eq!(alice["vhost"], "/");
        assert_eq!(alice["write"], "^(?:sensors\\.alice(?:\\..*)?)$");
        assert_eq!(alice["read"], "^(?:sensors\\.[^.#]*\\.temp)$");
        let bob = entry(tp, "bob");
        assert_eq!(bob["write"], "^(?:bob)$");
        assert_eq!(bob["read"], "^(?:sensors\\.[^.#]*\\.temp|bob)$");
        let carol = entry(tp, "carol");
        assert_eq!(carol["write"], "^$");
        assert_eq!(entry(tp, "mqtt-anonymous")["write"], "^$");
    }

    #[test]
    fn without_acl_rules_topic_permissions_allow_everything_explicitly() {
        let s = spec(json!({"auth": {"users": {"name": "u"}}}));
        let l = render_with(&s, &users(&[("alice", "1")])).unwrap();
        let alice = entry(&defs(&l)["topic_permissions"], "alice").clone();
        assert_eq!(
            (alice["write"].as_str(), alice["read"].as_str()),
            (Some(".*"), Some(".*"))
        );
    }

    #[test]
    fn deny_rules_client_id_rules_jwt_and_exclusive_subscriptions_are_unsupported() {
        for extra in [
            json!({"auth": {"acl": [{"all": true, "action": "all", "topic": "#", "permission": "deny"}]}}),
            json!({"auth": {"acl": [{"clientId": "c", "action": "all", "topic": "#", "permission": "allow"}]}}),
            json!({"auth": {"jwt": {"secretRef": {"name": "j", "key": "k"}}}}),
            json!({"session": {"exclusiveSubscriptions": true}}),
        ] {
            assert!(
                matches!(
                    render_with(&spec(extra.clone()), &BTreeMap::new()),
                    Err(RenderError::Unsupported { .. })
                ),
                "{extra}"
            );
        }
    }

    #[test]
    fn the_queue_policy_caps_subscription_queues_and_drops_the_oldest() {
        let d = defs(&layout(&spec(
            json!({"session": {"maxQueuedMessages": 500}}),
        )));
        assert_eq!(
            d["policies"],
            json!([{
                "vhost": "/", "name": "mooring-mqtt-subscriptions",
                "pattern": "^mqtt-subscription-", "apply-to": "queues", "priority": 0,
                "definition": {"max-length": 500, "overflow": "drop-head"}
            }])
        );
        let d = defs(&layout(&spec(json!({"session": {"maxQueuedMessages": 0}}))));
        assert_eq!(
            d["policies"][0]["definition"],
            json!({"overflow": "drop-head"})
        );
    }

    #[test]
    fn anonymous_clients_act_as_a_dedicated_user_with_version_specific_keys() {
        let anon = json!({"allowAnonymous": true});
        let l = layout(&spec(json!({"auth": anon})));
        let pw = anonymous_password("Cookie0123456789");
        assert!(conf(&l).contains("mqtt.allow_anonymous = true\n"));
        assert!(conf(&l).contains("mqtt.default_user = mqtt-anonymous\n"));
        assert!(conf(&l).contains(&format!("mqtt.default_pass = {pw}\n")));
        let user = entry(&defs(&l)["users"], "mqtt-anonymous").clone();
        assert!(hash_matches(user["password_hash"].as_str().unwrap(), &pw));

        let l = layout(&spec(json!({"broker": version("4.1.0"), "auth": anon})));
        assert!(!conf(&l).contains("mqtt.default_user"));
        assert!(conf(&l).contains("anonymous_login_user = mqtt-anonymous\n"));
        assert!(conf(&l).contains(&format!("anonymous_login_pass = {pw}\n")));

        let l = layout(&spec(json!({"broker": version("4.1.0")})));
        assert!(conf(&l).contains("mqtt.allow_anonymous = false\n"));
        assert!(conf(&l).contains("anonymous_login_user = none\n"));

        let l = layout(&spec(json!({})));
        assert!(!conf(&l).contains("mqtt.default_pass"));
        let user = entry(&defs(&l)["users"], "mqtt-anonymous").clone();
        assert!(!hash_matches(user["password_hash"].as_str().unwrap(), &pw));
    }

    #[test]
    fn session_expiry_uses_the_key_of_the_running_version() {
        let s = |v: &str, secs: i64| {
            spec(json!({"broker": version(v), "session": {"expirySeconds": secs}}))
        };
        let c = conf(&layout(&s("3.10.8", 300))).to_string();
        assert!(c.contains("mqtt.subscription_ttl = 300000\n"));
        assert!(!c.contains("max_session_expiry"));
        assert!(conf(&layout(&s("3.10.8", 0))).contains("mqtt.subscription_ttl = 1\n"));
        let c = conf(&layout(&s("3.13.7", 300))).to_string();
        assert!(c.contains("mqtt.max_session_expiry_interval_seconds = 300\n"));
        assert!(!c.contains("subscription_ttl"));
        assert!(conf(&layout(&s("4.0.9", 300))).contains("max_session_expiry_interval_seconds"));
    }

    #[test]
    fn versions_outside_3_10_to_4_x_are_unsupported() {
        for v in ["3.9.29", "3.8.0", "5.0.0"] {
            let r = render_with(&spec(json!({"broker": version(v)})), &BTreeMap::new());
            assert!(matches!(r, Err(RenderError::Unsupported { .. })), "{v}");
        }
        let l = layout(&spec(json!({"broker": version("3.10.8")})));
        assert_eq!(l.image, "rabbitmq:3.10.8-management");
    }

    #[test]
    fn the_memory_watermark_follows_the_memory_limit() {
        let l = layout(&spec(json!({"resources": {"limits": {"memory": "1Gi"}}})));
        assert!(conf(&l).contains(&format!(
            "vm_memory_high_watermark.absolute = {}\n",
            (1u128 << 30) * 40 / 100
        )));
        let l = layout(&spec(json!({})));
        assert!(conf(&l).contains("vm_memory_high_watermark.absolute = 536870912\n"));
        let l = layout(&spec(
            json!({"configOverrides": {"vm_memory_high_watermark.relative": "0.6"}}),
        ));
        assert!(!conf(&l).contains("vm_memory_high_watermark.absolute"));
        assert!(conf(&l).contains("vm_memory_high_watermark.relative = 0.6\n"));
    }

    #[test]
    fn web_mqtt_is_enabled_only_for_websocket_listeners() {
        let l = layout(&spec(json!({})));
        assert_eq!(
            l.config_files[PLUGINS_FILE],
            "[rabbitmq_management,rabbitmq_mqtt,rabbitmq_web_mqtt].\n"
        );
        assert!(conf(&l).contains("web_mqtt.tcp.port = 8083\n"));
        let l = layout(&spec(
            json!({"listeners": {"websocket": {"enabled": false, "port": 8083}}}),
        ));
        assert_eq!(
            l.config_files[PLUGINS_FILE],
            "[rabbitmq_management,rabbitmq_mqtt].\n"
        );
        assert!(!conf(&l).contains("web_mqtt"));
    }

    #[test]
    fn proxy_protocol_is_required_on_every_mqtt_listener_behind_the_load_balancer() {
        let every_listener = json!({
            "tls": {"port": 8883, "secretRef": {"name": "mqtt-cert"}},
            "wss": {"port": 8084, "secretRef": {"name": "wss-cert"}}
        });
        let l = layout(&spec(json!({
            "listeners": every_listener,
            "loadBalancer": {"enabled": true, "proxyProtocol": true}
        })));
        let c = conf(&l);
        assert!(c.contains("mqtt.proxy_protocol = true\n"), "{c}");
        assert!(c.contains("web_mqtt.proxy_protocol = true\n"), "{c}");
        // Probes never speak MQTT: the TCP readiness probe opens and closes the connection
        // (RabbitMQ drops a connection without a header silently, measured).
        assert!(l.readiness_probe.tcp_socket.is_some());
        assert!(l.readiness_probe.exec.is_none() && l.liveness_probe.exec.is_none());

        // No WebSocket listener: the plugin is off, and its key would stop the node booting.
        let l = layout(&spec(json!({
            "listeners": {"websocket": {"enabled": false, "port": 8083}},
            "loadBalancer": {"enabled": true, "proxyProtocol": true}
        })));
        assert!(conf(&l).contains("mqtt.proxy_protocol = true\n"));
        assert!(!conf(&l).contains("web_mqtt"));

        for lb in [
            json!({"enabled": true}),
            json!({"enabled": true, "proxyProtocol": false}),
            json!({"enabled": false, "proxyProtocol": true}),
        ] {
            let l = layout(&spec(
                json!({"listeners": every_listener, "loadBalancer": lb}),
            ));
            assert!(!conf(&l).contains("proxy_protocol"), "{lb}");
        }
    }

    #[test]
    fn tls_listeners_use_the_certificates_of_their_mounted_secrets() {
        let l = layout(&spec(json!({"listeners": {
            "websocket": {"enabled": false, "port": 8083},
            "tls": {"port": 8883, "secretRef": {"name": "mqtt-cert"}},
            "wss": {"port": 8084, "secretRef": {"name": "wss-cert"}}
        }})));
        let c = conf(&l);
        for line in [
            "mqtt.listeners.ssl.default = 8883",
            "ssl_options.certfile = /etc/rabbitmq/certs/mqtts/tls.crt",
            "ssl_options.keyfile = /etc/rabbitmq/certs/mqtts/tls.key",
            "web_mqtt.ssl.port = 8084",
            "web_mqtt.ssl.certfile = /etc/rabbitmq/certs/wss/tls.crt",
            "web_mqtt.ssl.keyfile = /etc/rabbitmq/certs/wss/tls.key",
            "web_mqtt.tcp.listener = none",
        ] {
            assert!(c.contains(&format!("{line}\n")), "{line}");
        }
        assert!(l.config_files[PLUGINS_FILE].contains("rabbitmq_web_mqtt"));
        let names: Vec<_> = l
            .client_ports
            .iter()
            .map(|p| p.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["mqtt", "mqtts", "wss", "management"]);
    }

    #[test]
    fn ports_and_probes_need_neither_credentials_nor_the_cli() {
        let l = layout(&spec(json!({})));
        let ports: Vec<_> = l
            .ports
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [
                ("mqtt".to_string(), 1883),
                ("ws".to_string(), 8083),
                ("amqp".to_string(), 5672),
                ("management".to_string(), 15672),
                ("epmd".to_string(), 4369),
                ("dist".to_string(), 25672),
            ]
        );
        assert_eq!(l.headless_ports, l.ports);
        let r = l.readiness_probe.tcp_socket.as_ref().unwrap();
        assert_eq!(r.port, IntOrString::Int(1883));
        let lv = l.liveness_probe.tcp_socket.as_ref().unwrap();
        assert_eq!(lv.port, IntOrString::Int(25672));
        assert_eq!(l.liveness_probe.initial_delay_seconds, Some(60));
        assert_eq!(l.management_port, 15672);
        assert_eq!(l.termination_grace_period_seconds, 60);
    }

    #[test]
    fn config_overrides_come_last_and_replace_what_mooring_renders() {
        let l = layout(&spec(json!({"configOverrides": {
            "mqtt.prefetch": "20", "cluster_partition_handling": "autoheal"
        }})));
        let c = conf(&l);
        assert_eq!(c.matches("cluster_partition_handling").count(), 1);
        assert!(c.ends_with(
            "# configOverrides\ncluster_partition_handling = autoheal\nmqtt.prefetch = 20\n"
        ));
    }

    #[test]
    fn overrides_that_inject_lines_or_move_the_vhost_are_refused() {
        for overrides in [
            json!({"mqtt.prefetch": "20\nloopback_users.guest = true"}),
            json!({"mqtt.prefetch\r": "20"}),
            json!({"mqtt.vhost": "other"}),
        ] {
            let r = render_with(
                &spec(json!({"configOverrides": overrides})),
                &BTreeMap::new(),
            );
            assert!(matches!(r, Err(RenderError::Invalid { .. })), "{overrides}");
        }
    }

    #[test]
    fn a_custom_mqtt_exchange_gets_the_permissions_and_topic_permissions() {
        let s = spec(json!({"configOverrides": {"mqtt.exchange": "mqtt.x"}}));
        let d = defs(&layout(&s));
        let anon = entry(&d["permissions"], "mqtt-anonymous");
        assert_eq!(
            anon["write"],
            "^(?:mqtt\\.x|mqtt-(?:subscription|will)-.*)$"
        );
        assert_eq!(
            entry(&d["topic_permissions"], "mqtt-anonymous")["exchange"],
            "mqtt.x"
        );
    }

    #[test]
    fn usernames_rabbitmq_cannot_take_are_refused() {
        let s = spec(json!({"auth": {"users": {"name": "u"}}}));
        for name in [
            "vhost:bob",
            "bob\n",
            " bob",
            "mqtt-anonymous",
            "mooring",
            "",
        ] {
            let r = render_with(&s, &users(&[(name, "pw")]));
            assert!(matches!(r, Err(RenderError::Invalid { .. })), "{name:?}");
        }
        assert!(render_with(&s, &users(&[("bob", "")])).is_err());
        assert!(render_with(&s, &users(&[("bob.smith-1_x", "pw")])).is_ok());
    }
}
