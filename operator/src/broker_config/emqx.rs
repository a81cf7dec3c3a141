//! EMQX 5 (5.1 and later): `emqx.conf` (HOCON), `acl.conf`, bootstrap files and environment.
//!
//! # What the StatefulSet builder must mount
//!
//! | What | Where | How |
//! |---|---|---|
//! | ConfigMap (`emqx.conf`, `acl.conf`) | [`CONFIG_DIR`] | read-only |
//! | ConfigMap key `emqx.conf` | [`ETC_CONF_PATH`] | read-only `subPath` (see [`super::config_file_mounts`]) |
//! | operator-owned Secret (`api-keys.txt`, `auth-users.json`) | [`SECRET_DIR`] | read-only |
//! | data volume | [`DATA_DIR`] | read-write |
//! | TLS Secrets | `/opt/emqx/etc/certs/<mqtts\|wss>` | see [`super::tls_mounts`] |
//!
//! EMQX reads its configuration from `etc/emqx.conf` and nowhere else (`EMQX_ETC_DIR` is fixed by
//! the release, and the rest of `etc/` — `vm.args`, `base.hocon`, the default certificates — must
//! stay), so Mooring's `emqx.conf` replaces the shipped one through a `subPath` mount; the whole
//! ConfigMap is also mounted at [`CONFIG_DIR`] for `acl.conf`. The shipped file only sets the node
//! name, cookie, data directory and cluster name, which Mooring sets too. The image runs as uid
//! 1000: the Pod needs [`pod_security_context`] (`fsGroup: 1000`) to read the Secret, mounted 0400.
//!
//! # Precedence
//!
//! `base.hocon` < `data/configs/cluster.hocon` (changes made in the dashboard) < `emqx.conf` <
//! environment. Everything Mooring renders therefore wins over dashboard edits, and
//! `configOverrides` (appended last) wins over Mooring.
//!
//! # Secrets
//!
//! Nothing secret is in the ConfigMap. The node cookie and the dashboard's first admin come from
//! the Secret as environment variables (`secretKeyRef`); the JWT HMAC secret comes from the user's
//! Secret as `EMQX_AUTHENTICATION__<n>__SECRET` (EMQX's HOCON has no environment interpolation, but
//! it applies `EMQX_*` variables as overrides, indexing arrays from 1). EMQX parses such values as
//! HOCON and falls back to the raw string when that fails: use secrets made of letters, digits and
//! `-_.~+/=` so a `#` or a quote cannot change their meaning.
//!
//! # Limits that come from EMQX
//!
//! - The API key file is applied on every boot of a core node (an entry with the same key is
//!   replaced), so admin password changes take effect on restart.
//! - The users file is a *bootstrap*: EMQX adds users that do not exist and never changes or
//!   removes existing ones. Password changes and removals in `auth.users` must be applied through
//!   the REST API (`/api/v5/authentication/password_based:built_in_database/users`).
//! - EMQX 5 has no anonymous fallback: when any authenticator is configured, a client none of them
//!   accepts is refused. `allowAnonymous` together with `users` or `jwt` is therefore unsupported.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, PodSecurityContext};
use mooring_crds::{AclAction, AclPermission, AclRule, JwtFrom};

use super::common::{
    env_pod_name, env_secret, env_value, has_line_break_or_control, http_probe, invalid,
    listener_ports, tcp_port, unsupported, validate_listeners, validate_names, validate_overrides,
    Timing, POD_NAME_ENV,
};
use super::{
    broker_version, port_names, secret_keys, tls_mounts, version_string, BrokerLayout,
    BrokerVersion, ClusterNames, Credentials, RenderError, RenderInput, TlsMount,
};

const BROKER: &str = "EMQX";

/// Where the ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/opt/emqx/etc/mooring";
/// The file EMQX reads its configuration from; Mooring's `emqx.conf` is mounted over it.
pub const ETC_CONF_PATH: &str = "/opt/emqx/etc/emqx.conf";
/// Where the operator-owned Secret is mounted.
pub const SECRET_DIR: &str = "/opt/emqx/etc/mooring-secrets";
/// EMQX's data directory (`node.data_dir`), on the data volume.
pub const DATA_DIR: &str = "/opt/emqx/data";
/// Parent of the TLS Secret mounts (`<TLS_DIR>/<listener>/tls.crt`).
pub const TLS_DIR: &str = "/opt/emqx/etc/certs";
/// The HOCON configuration, in `config_files`.
pub const CONF_FILE: &str = "emqx.conf";
/// The file authorizer's rules, in `config_files` (only when `auth.acl` has rules).
pub const ACL_FILE: &str = "acl.conf";
/// The API key bootstrap file (`key:secret` lines), in `secret_files`.
pub const API_KEY_FILE: &str = "api-keys.txt";
/// The built-in database's bootstrap users (JSON), in `secret_files` (only with `auth.users`).
pub const USERS_FILE: &str = "auth-users.json";
/// Dashboard and REST API.
pub const DASHBOARD_PORT: i32 = 18083;
/// Erlang distribution (ekka) for a node whose short name has no trailing digits.
pub const EKKA_PORT: i32 = 4370;
/// gen_rpc with `rpc.port_discovery = manual`.
pub const GENRPC_PORT: i32 = 5369;
/// The node name's short part: nodes are `emqx@<pod fqdn>`.
pub const NODE_SHORT_NAME: &str = "emqx";
/// The uid (and gid) the official image runs as.
pub const UID: i64 = 1000;

const MIN_VERSION: BrokerVersion = BrokerVersion::new(5, 1, 0);
const USERS_BOOTSTRAP_VERSION: BrokerVersion = BrokerVersion::new(5, 7, 0);
const TERMINATION_GRACE_SECONDS: i64 = 60;

/// The Erlang node name of the Pod with this ordinal.
pub fn node_name(names: &ClusterNames, ordinal: i32) -> String {
    format!("{NODE_SHORT_NAME}@{}", names.pod_fqdn(ordinal))
}

/// uid/gid 1000 and `fsGroup: 1000`, as the official Helm chart.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_user: Some(UID),
        run_as_group: Some(UID),
        run_as_non_root: Some(true),
        fs_group: Some(UID),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        ..PodSecurityContext::default()
    }
}

/// Renders the EMQX layout.
pub fn render(input: &RenderInput<'_>) -> Result<BrokerLayout, RenderError> {
    let spec = input.spec;
    let version = broker_version(spec)?;
    if version.major != 5 || version < MIN_VERSION {
        return Err(unsupported(
            BROKER,
            format!("run version {version}: Mooring supports EMQX 5.1 and later 5.x releases"),
        ));
    }
    validate_names(input.names)?;
    validate_overrides(&spec.config_overrides)?;
    validate_listeners(
        spec,
        &[
            ("the EMQX dashboard", DASHBOARD_PORT),
            ("Erlang distribution (ekka)", EKKA_PORT),
            ("gen_rpc", GENRPC_PORT),
        ],
    )?;
    validate_credentials(input.credentials)?;

    let auth = plan_auth(input, version)?;
    let acl = render_acl(&spec.auth.acl)?;
    let tls = tls_mounts(spec);

    let mut config_files = BTreeMap::from([(
        CONF_FILE.to_string(),
        render_conf(input, &auth, acl.is_some(), &tls),
    )]);
    if let Some(acl) = acl {
        config_files.insert(ACL_FILE.to_string(), acl);
    }
    let mut secret_files = BTreeMap::from([(
        API_KEY_FILE.to_string(),
        format!(
            "{}:{}\n",
            input.credentials.admin_username, input.credentials.admin_password
        ),
    )]);
    if let Some(users) = auth.users_file {
        secret_files.insert(USERS_FILE.to_string(), users);
    }

    let mut env = vec![
        env_pod_name(),
        env_value("EMQX_NAME", NODE_SHORT_NAME),
        env_value(
            "EMQX_HOST",
            format!("$({POD_NAME_ENV}).{}", input.names.headless_fqdn()),
        ),
        env_secret(
            "EMQX_NODE__COOKIE",
            input.secret_name,
            secret_keys::ERLANG_COOKIE,
        ),
        // Only seed the dashboard's admin record when EMQX first creates it; replaces admin/public.
        env_secret(
            "EMQX_DASHBOARD__DEFAULT_USERNAME",
            input.secret_name,
            secret_keys::ADMIN_USERNAME,
        ),
        env_secret(
            "EMQX_DASHBOARD__DEFAULT_PASSWORD",
            input.secret_name,
            secret_keys::ADMIN_PASSWORD,
        ),
    ];
    env.extend(auth.env);

    let mut ports = listener_ports(spec);
    let client_ports = {
        let mut p = ports.clone();
        p.push(tcp_port(port_names::MANAGEMENT, DASHBOARD_PORT));
        p
    };
    ports.extend([
        tcp_port(port_names::MANAGEMENT, DASHBOARD_PORT),
        tcp_port(port_names::EKKA, EKKA_PORT),
        tcp_port(port_names::GENRPC, GENRPC_PORT),
    ]);

    Ok(BrokerLayout {
        image: spec
            .broker
            .image
            .clone()
            .unwrap_or_else(|| format!("emqx/emqx:{}", version_string(spec))),
        // The image's entrypoint derives EMQX_NODE_NAME from EMQX_NAME@EMQX_HOST.
        command: vec![],
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
        // As the official chart: /status needs no auth and answers 200 once the node runs.
        readiness_probe: http_probe(
            "/status",
            DASHBOARD_PORT,
            Timing {
                initial_delay: 10,
                period: 5,
                timeout: 5,
                failure_threshold: 30,
            },
        ),
        liveness_probe: http_probe(
            "/status",
            DASHBOARD_PORT,
            Timing {
                initial_delay: 60,
                period: 30,
                timeout: 5,
                failure_threshold: 10,
            },
        ),
        startup_probe: None,
        management_port: DASHBOARD_PORT,
        termination_grace_period_seconds: TERMINATION_GRACE_SECONDS,
    })
}

/// The generated credentials end up in HOCON (via the environment) and in the `key:secret` API key
/// file, so they must be plain tokens.
fn validate_credentials(c: &Credentials) -> Result<(), RenderError> {
    let token = |s: &str, extra: &str| {
        !s.is_empty()
            && s.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || extra.contains(ch))
    };
    if !token(&c.erlang_cookie, "-_") {
        return Err(invalid(
            "credentials.erlangCookie",
            "EMQX reads the cookie from the environment as HOCON: use letters, digits, '-' and '_'",
        ));
    }
    let name_ok = c.admin_username.len() <= 256
        && c.admin_username
            .starts_with(|ch: char| ch.is_ascii_alphabetic())
        && token(&c.admin_username, "-_");
    if !name_ok {
        return Err(invalid(
            "credentials.adminUsername",
            "an EMQX API key name starts with a letter, then letters, digits, '-' and '_'",
        ));
    }
    if !token(&c.admin_password, "-_.~+/=") {
        return Err(invalid(
            "credentials.adminPassword",
            "the API key secret must be letters, digits and -_.~+/= (no ':', spaces or quotes)",
        ));
    }
    Ok(())
}

/// The authentication chain and what it needs besides `emqx.conf`.
struct Auth {
    /// HOCON objects of the `authentication` array, in order.
    authenticators: Vec<String>,
    /// Environment for the authenticators (the JWT secret).
    env: Vec<EnvVar>,
    /// The built-in database's bootstrap users, JSON.
    users_file: Option<String>,
}

fn plan_auth(input: &RenderInput<'_>, version: BrokerVersion) -> Result<Auth, RenderError> {
    let a = &input.spec.auth;
    let has_users = a.users.is_some();
    if a.allow_anonymous && (has_users || a.jwt.is_some()) {
        return Err(unsupported(
            BROKER,
            "allow anonymous clients together with auth.users or auth.jwt: EMQX 5 refuses a \
             client that no authenticator accepts, so turn allowAnonymous off or drop users and jwt",
        ));
    }
    if has_users && version < USERS_BOOTSTRAP_VERSION {
        return Err(unsupported(
            BROKER,
            format!(
                "load auth.users at version {version}: bootstrapping users from a Secret needs \
                 EMQX 5.7.0 or later"
            ),
        ));
    }

    let mut authenticators = Vec::new();
    let mut env = Vec::new();
    if let Some(jwt) = &a.jwt {
        let key = jwt.secret_ref.key.as_deref().ok_or_else(|| {
            invalid(
                "auth.jwt.secretRef.key",
                "name the key that holds the HMAC secret",
            )
        })?;
        let index = authenticators.len() + 1;
        env.push(env_secret(
            &format!("EMQX_AUTHENTICATION__{index}__SECRET"),
            &jwt.secret_ref.name,
            key,
        ));
        let from = match jwt.from {
            JwtFrom::Password => "password",
            JwtFrom::Username => "username",
        };
        authenticators.push(format!(
            "  {{\n    mechanism = jwt\n    use_jwks = false\n    algorithm = \"hmac-based\"\n    \
             from = {from}\n    secret_base64_encoded = false\n    \
             # secret: from the environment, EMQX_AUTHENTICATION__{index}__SECRET\n  }}"
        ));
    }
    // A chain with only an empty built-in database refuses everyone: that is what "no anonymous
    // access and no way to log in" means. An empty chain lets everyone in.
    if has_users || (!a.allow_anonymous && a.jwt.is_none()) {
        let mut block = String::from(
            "  {\n    mechanism = password_based\n    backend = built_in_database\n    \
             user_id_type = username\n    \
             password_hash_algorithm {name = sha256, salt_position = prefix}\n",
        );
        if version >= USERS_BOOTSTRAP_VERSION {
            let file = if has_users {
                format!("{SECRET_DIR}/{USERS_FILE}")
            } else {
                String::new()
            };
            block.push_str(&format!(
                "    bootstrap_file = {}\n    bootstrap_type = plain\n",
                hocon_str(&file)
            ));
        }
        block.push_str("  }");
        authenticators.push(block);
    }
    let users_file = if has_users {
        Some(users_json(input.users)?)
    } else {
        None
    };
    Ok(Auth {
        authenticators,
        env,
        users_file,
    })
}

fn users_json(users: &BTreeMap<String, String>) -> Result<String, RenderError> {
    let mut list = Vec::with_capacity(users.len());
    for (name, password) in users {
        let field = format!("auth.users[{name:?}]");
        if name.is_empty() || has_line_break_or_control(name) {
            return Err(invalid(
                field,
                "a username must be non-empty, without control characters",
            ));
        }
        if password.is_empty() {
            return Err(invalid(field, "the password is empty"));
        }
        list.push(serde_json::json!({
            "user_id": name,
            "password": password,
            "is_superuser": false,
        }));
    }
    serde_json::to_string_pretty(&list)
        .map(|s| s + "\n")
        .map_err(|e| invalid("auth.users", e.to_string()))
}

fn render_conf(input: &RenderInput<'_>, auth: &Auth, has_acl: bool, tls: &[TlsMount]) -> String {
    let spec = input.spec;
    let names = input.names;
    let l = &spec.listeners;
    let s = &spec.session;
    let mut c = format!(
        "# Rendered by Mooring for BrokerCluster {}/{}; do not edit, Mooring overwrites it.\n\
         # Node name, cookie, dashboard admin and secrets come from the environment.\n\n",
        names.namespace, names.name
    );

    c.push_str(&format!(
        "node {{\n  data_dir = {}\n}}\n\n",
        hocon_str(DATA_DIR)
    ));
    c.push_str(&format!(
        "cluster {{\n  name = {}\n  discovery_strategy = dns\n  dns {{\n    name = {}\n    \
         record_type = srv\n  }}\n}}\n\n",
        hocon_str(&names.name),
        hocon_str(&names.headless_fqdn())
    ));
    c.push_str("rpc {\n  port_discovery = manual\n}\n\n");
    c.push_str(&format!(
        "dashboard {{\n  listeners.http.bind = {DASHBOARD_PORT}\n}}\n\n"
    ));
    c.push_str(&format!(
        "api_key {{\n  bootstrap_file = {}\n}}\n\n",
        hocon_str(&format!("{SECRET_DIR}/{API_KEY_FILE}"))
    ));

    let tls_for = |listener: &str| tls.iter().find(|t| t.listener == listener);
    // Behind a load balancer that sends the PROXY protocol, every listener requires the header.
    let proxy = if spec.load_balancer.sends_proxy_protocol() {
        "    proxy_protocol = true\n"
    } else {
        ""
    };
    c.push_str("listeners {\n");
    c.push_str(&format!(
        "  tcp.default {{\n    enable = true\n    bind = {}\n{proxy}  }}\n",
        bind(l.mqtt.port)
    ));
    if l.websocket.enabled {
        c.push_str(&format!(
            "  ws.default {{\n    enable = true\n    bind = {}\n    \
             websocket.mqtt_path = \"/mqtt\"\n{proxy}  }}\n",
            bind(l.websocket.port)
        ));
    } else {
        c.push_str("  ws.default {\n    enable = false\n  }\n");
    }
    match (&l.tls, tls_for(port_names::MQTTS)) {
        (Some(t), Some(m)) => c.push_str(&format!(
            "  ssl.default {{\n    enable = true\n    bind = {}\n{proxy}{}  }}\n",
            bind(t.port),
            ssl_options(m)
        )),
        _ => c.push_str("  ssl.default {\n    enable = false\n  }\n"),
    }
    match (&l.wss, tls_for(port_names::WSS)) {
        (Some(t), Some(m)) => c.push_str(&format!(
            "  wss.default {{\n    enable = true\n    bind = {}\n    \
             websocket.mqtt_path = \"/mqtt\"\n{proxy}{}  }}\n",
            bind(t.port),
            ssl_options(m)
        )),
        _ => c.push_str("  wss.default {\n    enable = false\n  }\n"),
    }
    c.push_str("}\n\n");

    let mqueue = if s.max_queued_messages == 0 {
        "infinity".to_string()
    } else {
        s.max_queued_messages.to_string()
    };
    c.push_str(&format!(
        "mqtt {{\n  max_mqueue_len = {mqueue}\n  session_expiry_interval = \"{}s\"\n  \
         exclusive_subscription = {}\n}}\n\n",
        s.expiry_seconds, s.exclusive_subscriptions
    ));

    if auth.authenticators.is_empty() {
        c.push_str("# Anonymous access: no authenticator, every client is accepted.\n");
        c.push_str("authentication = []\n\n");
    } else {
        c.push_str("authentication = [\n");
        c.push_str(&auth.authenticators.join(",\n"));
        c.push_str("\n]\n\n");
    }

    if has_acl {
        c.push_str(&format!(
            "authorization {{\n  no_match = deny\n  deny_action = ignore\n  sources = [\n    \
             {{type = file, enable = true, path = {}}}\n  ]\n}}\n",
            hocon_str(&format!("{CONFIG_DIR}/{ACL_FILE}"))
        ));
    } else {
        c.push_str("# No ACL rules: every client may publish and subscribe to anything.\n");
        c.push_str("authorization {\n  no_match = allow\n  sources = []\n}\n");
    }

    if !spec.config_overrides.is_empty() {
        c.push_str("\n# configOverrides\n");
        for (key, value) in &spec.config_overrides {
            c.push_str(&format!("{key} = {value}\n"));
        }
    }
    c
}

fn bind(port: i32) -> String {
    hocon_str(&format!("0.0.0.0:{port}"))
}

fn ssl_options(m: &TlsMount) -> String {
    format!(
        "    ssl_options {{\n      certfile = {}\n      keyfile = {}\n      \
         verify = verify_none\n    }}\n",
        hocon_str(&m.cert_file()),
        hocon_str(&m.key_file())
    )
}

/// A HOCON quoted string: `"`, `\` and control characters escaped (`\uXXXX`).
fn hocon_str(s: &str) -> String {
    quoted(s, |c| format!("\\u{:04x}", c as u32))
}

/// An Erlang string literal for `file:consult`: `"`, `\` and control characters escaped.
fn erl_str(s: &str) -> String {
    quoted(s, |c| format!("\\x{{{:X}}}", c as u32))
}

/// `s` in double quotes with `"`, `\`, `\n`, `\r` and `\t` escaped the way HOCON and Erlang
/// share; other control characters (and U+2028/U+2029) through `control`, whose syntax differs.
fn quoted(s: &str, control: impl Fn(char) -> String) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => out.push_str(&control(c)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `acl.conf` of the file authorizer, or `None` when there are no rules (then the
/// authorizer is off and everything is allowed).
///
/// Rules keep their order (the first match decides) and end with `{deny, all}.` (clients that match
/// no rule are denied). Topics may use EMQX's `${username}` and `${clientid}` placeholders. A topic
/// that starts with `eq ` means "this exact topic" to EMQX, so such a topic is written as
/// `{eq, "..."}` when it has no wildcard, and refused otherwise.
fn render_acl(rules: &[AclRule]) -> Result<Option<String>, RenderError> {
    if rules.is_empty() {
        return Ok(None);
    }
    let mut out = String::from(
        "%% -*- coding: utf-8 -*-\n\
         %% Rendered by Mooring from spec.auth.acl: the first matching rule decides.\n",
    );
    for (i, r) in rules.iter().enumerate() {
        let field = format!("auth.acl[{i}]");
        let who = match (&r.username, &r.client_id, r.all) {
            (Some(u), None, None | Some(false)) => format!("{{username, {}}}", erl_str(u)),
            (None, Some(c), None | Some(false)) => format!("{{clientid, {}}}", erl_str(c)),
            (None, None, Some(true)) => "all".to_string(),
            _ => {
                return Err(invalid(
                    field,
                    "a rule names exactly one of username, clientId or all: true",
                ))
            }
        };
        let permission = match r.permission {
            AclPermission::Allow => "allow",
            AclPermission::Deny => "deny",
        };
        let action = match r.action {
            AclAction::Publish => "publish",
            AclAction::Subscribe => "subscribe",
            AclAction::All => "all",
        };
        if r.topic.is_empty() {
            return Err(invalid(
                format!("{field}.topic"),
                "the topic filter is empty",
            ));
        }
        let topic = if r.topic.starts_with("eq ") {
            if r.topic.contains(['+', '#']) {
                return Err(invalid(
                    format!("{field}.topic"),
                    "EMQX reads a filter starting with \"eq \" as an exact topic; such a filter \
                     cannot have wildcards",
                ));
            }
            format!("{{eq, {}}}", erl_str(&r.topic))
        } else {
            erl_str(&r.topic)
        };
        out.push_str(&format!("{{{permission}, {who}, {action}, [{topic}]}}.\n"));
    }
    out.push_str("{deny, all}.\n");
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Probe;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use mooring_crds::BrokerClusterSpec;
    use serde_json::json;

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

    fn spec(extra: serde_json::Value) -> BrokerClusterSpec {
        let mut v = json!({"broker": {"kind": "emqx"}});
        if let (Some(base), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(v).unwrap()
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

    fn conf(l: &BrokerLayout) -> &str {
        &l.config_files[CONF_FILE]
    }

    fn env<'a>(l: &'a BrokerLayout, name: &str) -> &'a EnvVar {
        l.env.iter().find(|e| e.name == name).unwrap()
    }

    fn users(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect()
    }

    #[test]
    fn nodes_are_named_after_their_pod_and_find_each_other_through_srv_records() {
        let l = layout(&spec(json!({"replicas": 3})));
        assert_eq!(
            (0..3).map(|i| node_name(&names(), i)).collect::<Vec<_>>(),
            [
                "emqx@demo-0.demo-headless.ns1.svc.cluster.local",
                "emqx@demo-1.demo-headless.ns1.svc.cluster.local",
                "emqx@demo-2.demo-headless.ns1.svc.cluster.local",
            ]
        );
        let pod = env(&l, "POD_NAME");
        let field = pod.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(field.field_path, "metadata.name");
        assert_eq!(
            l.env[0].name, "POD_NAME",
            "POD_NAME must come before its uses"
        );
        assert_eq!(env(&l, "EMQX_NAME").value.as_deref(), Some("emqx"));
        assert_eq!(
            env(&l, "EMQX_HOST").value.as_deref(),
            Some("$(POD_NAME).demo-headless.ns1.svc.cluster.local")
        );
        let c = conf(&l);
        assert!(c.contains("discovery_strategy = dns"));
        assert!(c.contains("name = \"demo-headless.ns1.svc.cluster.local\""));
        assert!(c.contains("record_type = srv"));
        assert!(c.contains("port_discovery = manual"));
        assert!(c.contains("data_dir = \"/opt/emqx/data\""));
        assert_eq!(l.data_mount_path, DATA_DIR);
        assert_eq!(l.image, "emqx/emqx:5.8.9");
    }

    #[test]
    fn the_cookie_and_dashboard_admin_come_from_the_secret_by_reference() {
        let l = layout(&spec(json!({})));
        for (var, key) in [
            ("EMQX_NODE__COOKIE", secret_keys::ERLANG_COOKIE),
            (
                "EMQX_DASHBOARD__DEFAULT_USERNAME",
                secret_keys::ADMIN_USERNAME,
            ),
            (
                "EMQX_DASHBOARD__DEFAULT_PASSWORD",
                secret_keys::ADMIN_PASSWORD,
            ),
        ] {
            let e = env(&l, var);
            assert!(e.value.is_none());
            let r = e
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            assert_eq!((r.name.as_str(), r.key.as_str()), ("demo-mooring", key));
        }
        for text in l.config_files.values() {
            assert!(!text.contains("Cookie0123456789") && !text.contains("Secr3tPassw0rd"));
        }
    }

    #[test]
    fn the_api_key_bootstrap_file_holds_the_admin_credentials() {
        let l = layout(&spec(json!({})));
        assert_eq!(l.secret_files[API_KEY_FILE], "mooring:Secr3tPassw0rd\n");
        assert_eq!(l.secret_mount_path, SECRET_DIR);
        assert!(
            conf(&l).contains("bootstrap_file = \"/opt/emqx/etc/mooring-secrets/api-keys.txt\"")
        );
    }

    #[test]
    fn admin_credentials_that_would_break_the_key_file_are_refused() {
        let spec = spec(json!({}));
        let mut c = creds();
        c.admin_password = "a:b".into();
        let r = render(&RenderInput {
            spec: &spec,
            names: &names(),
            credentials: &c,
            users: &BTreeMap::new(),
            secret_name: "s",
        });
        assert!(matches!(r, Err(RenderError::Invalid { .. })));
    }

    #[test]
    fn listeners_follow_the_spec_and_unused_default_listeners_are_turned_off() {
        let l = layout(&spec(json!({"listeners": {
            "mqtt": {"port": 1884},
            "websocket": {"enabled": false, "port": 8083}
        }})));
        let c = conf(&l);
        assert!(c.contains("tcp.default {\n    enable = true\n    bind = \"0.0.0.0:1884\""));
        assert!(c.contains("ws.default {\n    enable = false"));
        assert!(c.contains("ssl.default {\n    enable = false"));
        assert!(c.contains("wss.default {\n    enable = false"));
        let names: Vec<_> = l.ports.iter().map(|p| p.name.clone().unwrap()).collect();
        assert_eq!(names, ["mqtt", "management", "ekka", "genrpc"]);
        assert_eq!(l.ports[0].container_port, 1884);
        let client: Vec<_> = l.client_ports.iter().map(|p| p.container_port).collect();
        assert_eq!(client, [1884, 18083]);
        assert_eq!(l.headless_ports, l.ports);
    }

    #[test]
    fn proxy_protocol_is_required_on_every_listener_behind_the_load_balancer() {
        let every_listener = json!({
            "tls": {"port": 8883, "secretRef": {"name": "mqtt-cert"}},
            "wss": {"port": 8084, "secretRef": {"name": "wss-cert"}}
        });
        let l = layout(&spec(json!({
            "listeners": every_listener,
            "loadBalancer": {"enabled": true, "proxyProtocol": true}
        })));
        let c = conf(&l);
        assert_eq!(c.matches("    proxy_protocol = true\n").count(), 4, "{c}");
        for listener in ["tcp", "ws", "ssl", "wss"] {
            let block = c
                .split(&format!("  {listener}.default {{\n"))
                .nth(1)
                .and_then(|rest| rest.split("\n  }\n").next())
                .unwrap();
            assert!(
                block.contains("proxy_protocol = true"),
                "{listener}: {block}"
            );
        }
        // The probes ask the dashboard's HTTP status endpoint, never an MQTT listener.
        assert!(l.readiness_probe.http_get.is_some() && l.liveness_probe.http_get.is_some());

        // A listener that is off gets nothing.
        let l = layout(&spec(json!({
            "listeners": {"websocket": {"enabled": false, "port": 8083}},
            "loadBalancer": {"enabled": true, "proxyProtocol": true}
        })));
        assert_eq!(conf(&l).matches("proxy_protocol").count(), 1);
        assert!(conf(&l).contains("ws.default {\n    enable = false\n  }"));

        for lb in [
            json!({"enabled": true}),
            json!({"enabled": false, "proxyProtocol": true}),
        ] {
            let l = layout(&spec(
                json!({"listeners": every_listener, "loadBalancer": lb}),
            ));
            assert!(!conf(&l).contains("proxy_protocol"), "{lb}");
        }
    }

    #[test]
    fn tls_listeners_read_their_certificates_from_the_mounted_secrets() {
        let s = spec(json!({"listeners": {
            "tls": {"port": 8883, "secretRef": {"name": "mqtt-cert"}},
            "wss": {"port": 8084, "secretRef": {"name": "wss-cert"}}
        }}));
        let l = layout(&s);
        let c = conf(&l);
        assert!(c.contains("ssl.default {\n    enable = true\n    bind = \"0.0.0.0:8883\""));
        assert!(c.contains("certfile = \"/opt/emqx/etc/certs/mqtts/tls.crt\""));
        assert!(c.contains("keyfile = \"/opt/emqx/etc/certs/mqtts/tls.key\""));
        assert!(c.contains("wss.default {\n    enable = true\n    bind = \"0.0.0.0:8084\""));
        assert!(c.contains("certfile = \"/opt/emqx/etc/certs/wss/tls.crt\""));
        let mounts = tls_mounts(&s);
        assert_eq!(
            mounts,
            [
                TlsMount {
                    listener: "mqtts",
                    secret_name: "mqtt-cert".into(),
                    mount_path: "/opt/emqx/etc/certs/mqtts".into(),
                },
                TlsMount {
                    listener: "wss",
                    secret_name: "wss-cert".into(),
                    mount_path: "/opt/emqx/etc/certs/wss".into(),
                },
            ]
        );
        let ports: Vec<_> = l
            .client_ports
            .iter()
            .map(|p| p.name.clone().unwrap())
            .collect();
        assert_eq!(ports, ["mqtt", "ws", "mqtts", "wss", "management"]);
    }

    #[test]
    fn a_listener_on_a_port_emqx_uses_itself_is_refused() {
        let r = render_with(
            &spec(json!({"listeners": {"mqtt": {"port": 18083}}})),
            &BTreeMap::new(),
        );
        assert!(
            matches!(r, Err(RenderError::Invalid { field, .. }) if field == "listeners.mqtt.port")
        );
    }

    #[test]
    fn anonymous_access_alone_means_an_empty_authentication_chain() {
        let l = layout(&spec(json!({"auth": {"allowAnonymous": true}})));
        assert!(conf(&l).contains("authentication = []"));
        assert!(!conf(&l).contains("allow_anonymous"));
    }

    #[test]
    fn without_anonymous_access_or_users_every_client_is_refused() {
        let l = layout(&spec(json!({})));
        let c = conf(&l);
        assert!(c.contains("backend = built_in_database"));
        assert!(c.contains("bootstrap_file = \"\""));
        assert!(!l.secret_files.contains_key(USERS_FILE));
    }

    #[test]
    fn users_are_bootstrapped_into_the_built_in_database_from_a_secret_file() {
        let s = spec(json!({"auth": {"users": {"name": "mqtt-users"}}}));
        let l = render_with(&s, &users(&[("bob", "pw\"2"), ("alice", "pw1")])).unwrap();
        let c = conf(&l);
        assert!(c.contains(
            "bootstrap_file = \"/opt/emqx/etc/mooring-secrets/auth-users.json\"\n    \
             bootstrap_type = plain"
        ));
        let parsed: serde_json::Value = serde_json::from_str(&l.secret_files[USERS_FILE]).unwrap();
        assert_eq!(
            parsed,
            json!([
                {"user_id": "alice", "password": "pw1", "is_superuser": false},
                {"user_id": "bob", "password": "pw\"2", "is_superuser": false},
            ])
        );
        assert!(!c.contains("pw1"));
    }

    #[test]
    fn users_need_emqx_5_7_and_a_clear_error_says_so_before() {
        let s = spec(json!({
            "broker": {"kind": "emqx", "version": "5.6.1"},
            "auth": {"users": {"name": "mqtt-users"}}
        }));
        let err = render_with(&s, &users(&[("a", "b")])).unwrap_err();
        assert!(err.to_string().contains("5.7.0"), "{err}");
        // Without users, 5.6 renders the built-in database without the 5.7 bootstrap keys.
        let s = spec(json!({"broker": {"kind": "emqx", "version": "5.6.1"}}));
        let l = layout(&s);
        assert!(!conf(&l).contains("bootstrap_file = \"\""));
        assert_eq!(l.image, "emqx/emqx:5.6.1");
    }

    #[test]
    fn versions_before_5_1_and_other_majors_are_unsupported() {
        for v in ["5.0.26", "4.4.19", "6.0.0"] {
            let s = spec(json!({"broker": {"kind": "emqx", "version": v}}));
            assert!(
                matches!(
                    render_with(&s, &BTreeMap::new()),
                    Err(RenderError::Unsupported { .. })
                ),
                "{v}"
            );
        }
    }

    #[test]
    fn jwt_takes_its_hmac_secret_from_the_users_secret_through_the_environment() {
        let s = spec(json!({"auth": {
            "users": {"name": "mqtt-users"},
            "jwt": {"secretRef": {"name": "jwt", "key": "hmac"}, "from": "username"}
        }}));
        let l = render_with(&s, &users(&[("a", "b")])).unwrap();
        let c = conf(&l);
        let jwt_at = c.find("mechanism = jwt").unwrap();
        let db_at = c.find("backend = built_in_database").unwrap();
        assert!(jwt_at < db_at, "JWT first: it ignores non-JWT passwords");
        assert!(c.contains("algorithm = \"hmac-based\""));
        assert!(c.contains("from = username"));
        assert!(!c.contains("secret ="));
        let e = env(&l, "EMQX_AUTHENTICATION__1__SECRET");
        let r = e
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("jwt", "hmac"));
    }

    #[test]
    fn anonymous_access_cannot_be_combined_with_users_or_jwt() {
        let s = spec(json!({"auth": {"allowAnonymous": true, "users": {"name": "u"}}}));
        assert!(matches!(
            render_with(&s, &users(&[("a", "b")])),
            Err(RenderError::Unsupported { .. })
        ));
    }

    #[test]
    fn acl_rules_become_an_ordered_file_authorizer_that_denies_the_rest() {
        let s = spec(json!({"auth": {"acl": [
            {"username": "alice", "action": "publish", "topic": "sensors/+/temp", "permission": "allow"},
            {"clientId": "dev-1", "action": "subscribe", "topic": "cmd/#", "permission": "allow"},
            {"all": true, "action": "all", "topic": "#", "permission": "deny"}
        ]}}));
        let l = layout(&s);
        assert_eq!(
            l.config_files[ACL_FILE],
            "%% -*- coding: utf-8 -*-\n\
             %% Rendered by Mooring from spec.auth.acl: the first matching rule decides.\n\
             {allow, {username, \"alice\"}, publish, [\"sensors/+/temp\"]}.\n\
             {allow, {clientid, \"dev-1\"}, subscribe, [\"cmd/#\"]}.\n\
             {deny, all, all, [\"#\"]}.\n\
             {deny, all}.\n"
        );
        let c = conf(&l);
        assert!(c.contains("no_match = deny"));
        assert!(
            c.contains("{type = file, enable = true, path = \"/opt/emqx/etc/mooring/acl.conf\"}")
        );
    }

    #[test]
    fn acl_strings_are_escaped_so_they_cannot_add_rules() {
        let s = spec(json!({"auth": {"acl": [
            {"username": "x\"}, publish, [\"#\"]}.\n{allow, all}.\n%", "action": "publish",
             "topic": "a\\b\"c", "permission": "allow"},
            {"all": true, "action": "publish", "topic": "eq a/b", "permission": "allow"}
        ]}}));
        let acl = &layout(&s).config_files[ACL_FILE];
        assert_eq!(acl.lines().count(), 5, "{acl}");
        assert!(acl.contains(
            "{allow, {username, \"x\\\"}, publish, [\\\"#\\\"]}.\\n{allow, all}.\\n%\"}, \
             publish, [\"a\\\\b\\\"c\"]}.\n"
        ));
        assert!(acl.contains("{allow, all, publish, [{eq, \"eq a/b\"}]}.\n"));
        let s = spec(json!({"auth": {"acl": [
            {"all": true, "action": "publish", "topic": "eq a/#", "permission": "allow"}
        ]}}));
        assert!(render_with(&s, &BTreeMap::new()).is_err());
    }

    #[test]
    fn without_acl_rules_everything_is_allowed_and_no_acl_file_is_rendered() {
        let l = layout(&spec(json!({})));
        assert!(!l.config_files.contains_key(ACL_FILE));
        assert!(conf(&l).contains("authorization {\n  no_match = allow\n  sources = []\n}"));
    }

    #[test]
    fn session_settings_map_to_mqtt_keys_and_zero_queue_means_infinity() {
        let l = layout(&spec(json!({"session": {
            "maxQueuedMessages": 0, "expirySeconds": 300,
            "exclusiveSubscriptions": true
        }})));
        let c = conf(&l);
        assert!(c.contains("max_mqueue_len = infinity"));
        assert!(c.contains("session_expiry_interval = \"300s\""));
        assert!(c.contains("exclusive_subscription = true"));
        let l = layout(&spec(json!({})));
        assert!(conf(&l).contains("max_mqueue_len = 1000"));
        assert!(conf(&l).contains("session_expiry_interval = \"7200s\""));
    }

    #[test]
    fn config_overrides_come_last_and_line_breaks_are_refused() {
        let l = layout(&spec(json!({"configOverrides": {
            "mqtt.max_packet_size": "2MB", "authorization.no_match": "allow"
        }})));
        let c = conf(&l);
        assert!(c.ends_with(
            "# configOverrides\nauthorization.no_match = allow\nmqtt.max_packet_size = 2MB\n"
        ));
        let s = spec(json!({"configOverrides": {"mqtt.max_packet_size": "2MB\nnode.cookie = x"}}));
        assert!(matches!(
            render_with(&s, &BTreeMap::new()),
            Err(RenderError::Invalid { .. })
        ));
    }

    #[test]
    fn rendering_is_deterministic() {
        let s = spec(json!({
            "auth": {"users": {"name": "u"}, "acl": [
                {"username": "a", "action": "all", "topic": "a/#", "permission": "allow"}
            ]},
            "listeners": {"tls": {"port": 8883, "secretRef": {"name": "c"}}},
            "configOverrides": {"b.c": "1", "a.b": "2"}
        }));
        let u = users(&[("z", "1"), ("a", "2"), ("m", "3")]);
        assert_eq!(render_with(&s, &u).unwrap(), render_with(&s, &u).unwrap());
    }

    #[test]
    fn probes_hit_the_status_endpoint_on_the_dashboard_port() {
        let l = layout(&spec(json!({})));
        let check = |p: &Probe, delay, period, failures| {
            let get = p.http_get.as_ref().unwrap();
            assert_eq!(get.path.as_deref(), Some("/status"));
            assert_eq!(get.port, IntOrString::Int(18083));
            assert_eq!(p.initial_delay_seconds, Some(delay));
            assert_eq!(p.period_seconds, Some(period));
            assert_eq!(p.failure_threshold, Some(failures));
        };
        check(&l.readiness_probe, 10, 5, 30);
        check(&l.liveness_probe, 60, 30, 10);
        assert_eq!(l.management_port, 18083);
        assert_eq!(l.termination_grace_period_seconds, 60);
        assert!(l.command.is_empty());
    }

    #[test]
    fn the_configuration_replaces_etc_emqx_conf_and_the_pod_runs_with_fs_group_1000() {
        let mounts = super::super::config_file_mounts(mooring_crds::BrokerKind::Emqx);
        assert_eq!(mounts[0].file, CONF_FILE);
        assert_eq!(mounts[0].mount_path, "/opt/emqx/etc/emqx.conf");
        let ctx = super::super::pod_security_context(mooring_crds::BrokerKind::Emqx).unwrap();
        assert_eq!(ctx.fs_group, Some(1000));
    }
}
