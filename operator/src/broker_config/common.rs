//! Helpers shared by the renderers: environment variables, ports, probes, validation of what the
//! spec puts into configuration files, and Kubernetes quantities.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Probe,
    SecretKeySelector, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mooring_crds::BrokerClusterSpec;

use super::{port_names, ClusterNames, RenderError};

/// The environment variable holding the Pod's name, set from the downward API. Variables that
/// use `$(POD_NAME)` must come after it.
pub(crate) const POD_NAME_ENV: &str = "POD_NAME";

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RenderError {
    RenderError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

pub(crate) fn unsupported(broker: &'static str, what: impl Into<String>) -> RenderError {
    RenderError::Unsupported {
        broker,
        what: what.into(),
    }
}

/// `name=value`.
pub(crate) fn env_value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// `name` from a field of the Pod (downward API).
pub(crate) fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: field_path.into(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// `POD_NAME` from `metadata.name`.
pub(crate) fn env_pod_name() -> EnvVar {
    env_field(POD_NAME_ENV, "metadata.name")
}

/// `name` from a key of a Secret in the Pod's namespace.
pub(crate) fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// A named TCP container port.
pub(crate) fn tcp_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

/// Probe timings: initial delay, period, timeout and failure threshold, in that order.
#[derive(Clone, Copy)]
pub(crate) struct Timing {
    pub initial_delay: i32,
    pub period: i32,
    pub timeout: i32,
    pub failure_threshold: i32,
}

fn probe(timing: Timing) -> Probe {
    Probe {
        initial_delay_seconds: Some(timing.initial_delay),
        period_seconds: Some(timing.period),
        timeout_seconds: Some(timing.timeout),
        failure_threshold: Some(timing.failure_threshold),
        success_threshold: Some(1),
        ..Probe::default()
    }
}

/// An HTTP GET probe (no auth) on a port of the container.
pub(crate) fn http_probe(path: &str, port: i32, timing: Timing) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        ..probe(timing)
    }
}

/// A TCP connect probe on a port of the container.
pub(crate) fn tcp_probe(port: i32, timing: Timing) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            host: None,
        }),
        ..probe(timing)
    }
}

/// The client listeners the spec turns on, as container ports: MQTT, WebSocket, TLS, WSS.
pub(crate) fn listener_ports(spec: &BrokerClusterSpec) -> Vec<ContainerPort> {
    let l = &spec.listeners;
    let mut ports = vec![tcp_port(port_names::MQTT, l.mqtt.port)];
    if l.websocket.enabled {
        ports.push(tcp_port(port_names::WEBSOCKET, l.websocket.port));
    }
    if let Some(tls) = &l.tls {
        ports.push(tcp_port(port_names::MQTTS, tls.port));
    }
    if let Some(wss) = &l.wss {
        ports.push(tcp_port(port_names::WSS, wss.port));
    }
    ports
}

/// Checks the listeners: MQTT over TCP is on, and no listener takes a port the broker uses itself
/// (`reserved`: what uses it, port).
pub(crate) fn validate_listeners(
    spec: &BrokerClusterSpec,
    reserved: &[(&str, i32)],
) -> Result<(), RenderError> {
    let l = &spec.listeners;
    if !l.mqtt.enabled {
        return Err(invalid(
            "listeners.mqtt.enabled",
            "the MQTT TCP listener cannot be turned off",
        ));
    }
    let mut listeners = vec![("listeners.mqtt.port", l.mqtt.port)];
    if l.websocket.enabled {
        listeners.push(("listeners.websocket.port", l.websocket.port));
    }
    if let Some(tls) = &l.tls {
        listeners.push(("listeners.tls.port", tls.port));
    }
    if let Some(wss) = &l.wss {
        listeners.push(("listeners.wss.port", wss.port));
    }
    for (i, (field, port)) in listeners.iter().enumerate() {
        if !(1..=65535).contains(port) {
            return Err(invalid(
                *field,
                format!("{port} is not a port (1 to 65535)"),
            ));
        }
        if let Some((user, _)) = reserved.iter().find(|(_, p)| p == port) {
            return Err(invalid(
                *field,
                format!("port {port} is taken by {user}; choose another"),
            ));
        }
        if listeners[..i].iter().any(|(_, p)| p == port) {
            return Err(invalid(
                *field,
                format!("port {port} is used by two listeners"),
            ));
        }
    }
    Ok(())
}

/// Checks that the derived names are plain DNS names, since they land in configuration files.
pub(crate) fn validate_names(names: &ClusterNames) -> Result<(), RenderError> {
    for (field, value) in [
        ("name", &names.name),
        ("namespace", &names.namespace),
        ("headlessService", &names.headless_service),
        ("clusterDomain", &names.cluster_domain),
    ] {
        let ok = !value.is_empty()
            && value.len() <= 253
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && !value.starts_with(['.', '-'])
            && !value.ends_with(['.', '-']);
        if !ok {
            return Err(invalid(
                format!("names.{field}"),
                format!("{value:?} is not a DNS name"),
            ));
        }
    }
    Ok(())
}

/// Whether `s` contains a control character or a Unicode line or paragraph separator: anything
/// that could end a line of a configuration file.
pub(crate) fn has_line_break_or_control(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
}

/// Checks `configOverrides`: every key is a dotted path of `[A-Za-z0-9_-]` words, every value is
/// one non-empty line. They are appended verbatim, so this is what keeps one entry from spilling
/// into others.
pub(crate) fn validate_overrides(overrides: &BTreeMap<String, String>) -> Result<(), RenderError> {
    for (key, value) in overrides {
        let field = format!("configOverrides[{key:?}]");
        let key_ok = !key.is_empty()
            && key.len() <= 256
            && key.split('.').all(|segment| {
                !segment.is_empty()
                    && segment
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !key_ok {
            return Err(invalid(
                field,
                "a key is a dotted path of letters, digits, '_' and '-' (for example mqtt.max_packet_size)",
            ));
        }
        if value.trim().is_empty() {
            return Err(invalid(field, "the value is empty"));
        }
        if has_line_break_or_control(value) {
            return Err(invalid(
                field,
                "the value must be a single line without control characters",
            ));
        }
    }
    Ok(())
}

/// Bytes in a Kubernetes quantity (`512Mi`, `1.5Gi`, `2G`, `1e9`, `129M`), rounded down; `None`
/// when it cannot be read or is negative.
pub(crate) fn quantity_bytes(q: &Quantity) -> Option<u128> {
    let s = q.0.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(end);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
        return None;
    }
    let mantissa: u128 = format!("{int_part}{frac_part}").parse().ok()?;
    let mut den: u128 = 10u128.checked_pow(u32::try_from(frac_part.len()).ok()?)?;
    let num: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "m" => {
            den = den.checked_mul(1_000)?;
            1
        }
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            let pow = 10u128.checked_pow(e.unsigned_abs())?;
            if e >= 0 {
                pow
            } else {
                den = den.checked_mul(pow)?;
                1
            }
        }
        _ => return None,
    };
    Some(mantissa.checked_mul(num)? / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Option<u128> {
        quantity_bytes(&Quantity(s.into()))
    }

    #[test]
    fn quantities_in_binary_decimal_and_exponent_forms_are_read_as_bytes() {
        assert_eq!(bytes("512Mi"), Some(512 * 1024 * 1024));
        assert_eq!(bytes("1.5Gi"), Some(3 * 512 * 1024 * 1024));
        assert_eq!(bytes("2G"), Some(2_000_000_000));
        assert_eq!(bytes("1e9"), Some(1_000_000_000));
        assert_eq!(bytes("129M"), Some(129_000_000));
        assert_eq!(bytes("1000"), Some(1000));
        assert_eq!(bytes("1500m"), Some(1));
        assert_eq!(bytes("+1Ki"), Some(1024));
    }

    #[test]
    fn unreadable_or_negative_quantities_are_refused() {
        for q in ["", "-1Gi", "1.2.3Gi", "1Qi", "Gi", "1e", "."] {
            assert_eq!(bytes(q), None, "{q:?}");
        }
    }

    #[test]
    fn overrides_with_line_breaks_or_odd_keys_are_refused() {
        let one = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(validate_overrides(&one("mqtt.max_packet_size", "2MB")).is_ok());
        for (k, v) in [
            ("mqtt.prefetch", "10\nloopback_users = guest"),
            ("mqtt.prefetch", "10\r"),
            ("mqtt.prefetch", "10\u{2028}x"),
            ("mqtt.prefetch", "  "),
            ("mqtt.prefetch\nx", "1"),
            ("mqtt..prefetch", "1"),
            ("mqtt.prefetch = 1 #", "1"),
            ("", "1"),
        ] {
            assert!(
                matches!(
                    validate_overrides(&one(k, v)),
                    Err(RenderError::Invalid { .. })
                ),
                "{k:?} = {v:?}"
            );
        }
    }

    #[test]
    fn names_that_are_not_dns_names_are_refused() {
        let mut names = ClusterNames {
            name: "demo".into(),
            namespace: "ns1".into(),
            headless_service: "demo-headless".into(),
            cluster_domain: "cluster.local".into(),
        };
        assert!(validate_names(&names).is_ok());
        names.namespace = "ns1\nx".into();
        assert!(validate_names(&names).is_err());
    }
}
