//! A container's environment and command line, with the kubelet's semantics (pure).
//!
//! - `envFrom` sources first (each key, with the source's `prefix`), then `env` in order; a later
//!   definition of a name replaces an earlier one.
//! - A literal `value` is expanded with `$(VAR)` against the variables defined *before* it
//!   (kubelet: `third_party/forked/golang/expansion`): `$$` is an escaped `$`, `$(UNKNOWN)` and an
//!   unterminated `$(` stay as written, a `$` before anything else stays.
//! - `valueFrom` values are not expanded: `fieldRef` (the downward API fields the kubelet allows
//!   in env), `resourceFieldRef` (limits/requests, node allocatable when no limit is set),
//!   `secretKeyRef` and `configMapKeyRef` (an `optional` reference to a missing object or key
//!   leaves the variable out; a required one is a `CreateContainerConfigError`).
//! - `command` and `args` are expanded against the container's final environment.
//!
//! The objects a container refers to are fetched by the caller ([`referenced_objects`]) and
//! handed in as [`EnvSources`], so everything here is synchronous and unit tested.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a container's environment cannot be built (the kubelet's `CreateContainerConfigError`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    /// A required Secret does not exist.
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    /// A required ConfigMap does not exist.
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    /// A required key is missing from a Secret or ConfigMap.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    KeyNotFound {
        /// `Secret` or `ConfigMap`.
        kind: &'static str,
        /// The object's namespace.
        namespace: String,
        /// The object's name.
        name: String,
        /// The missing key.
        key: String,
    },
    /// A `fieldRef` path the kubelet does not support in this place.
    #[error("unsupported fieldPath: {0}")]
    UnsupportedFieldPath(String),
    /// A `resourceFieldRef` resource the kubelet does not support.
    #[error("unsupported container resource: {0}")]
    UnsupportedResource(String),
    /// A `resourceFieldRef` naming a container the Pod does not have.
    #[error("container {0} not found in the pod")]
    NoSuchContainer(String),
    /// A quantity that cannot be parsed.
    #[error("invalid quantity {0:?}")]
    InvalidQuantity(String),
    /// A `valueFrom` with no source, or a source this agent does not implement.
    #[error("env var {0}: {1}")]
    InvalidSource(String, &'static str),
}

/// The data of the Secrets and ConfigMaps a container refers to, by name; `None` when the
/// object does not exist.
#[derive(Clone, Debug, Default)]
pub struct EnvSources {
    /// Secret name -> its data (decoded bytes, as text), or `None` when it does not exist.
    pub secrets: BTreeMap<String, Option<BTreeMap<String, String>>>,
    /// ConfigMap name -> its data, or `None` when it does not exist.
    pub config_maps: BTreeMap<String, Option<BTreeMap<String, String>>>,
}

/// What the downward API reads besides the Pod object itself.
#[derive(Clone, Debug, Default)]
pub struct FieldContext {
    /// The Pod's IP (what `status.podIP` will say).
    pub pod_ip: Option<String>,
    /// The node's IP (`status.hostIP`).
    pub host_ip: Option<String>,
    /// The node's allocatable resources, used for `resourceFieldRef` limits that are not set.
    pub node_allocatable: BTreeMap<String, Quantity>,
}

/// The Secret and ConfigMap names a container's `env` and `envFrom` refer to.
pub fn referenced_objects(container: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut secrets = BTreeSet::new();
    let mut config_maps = BTreeSet::new();
    for source in container.env_from.iter().flatten() {
        if let Some(s) = &source.secret_ref {
            secrets.insert(s.name.clone());
        }
        if let Some(c) = &source.config_map_ref {
            config_maps.insert(c.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(s) = &from.secret_key_ref {
            secrets.insert(s.name.clone());
        }
        if let Some(c) = &from.config_map_key_ref {
            config_maps.insert(c.name.clone());
        }
    }
    (secrets, config_maps)
}

/// An ordered environment: names in the order they were first defined, each with its last value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    /// An empty environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name`, replacing an earlier value in place.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.vars.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name, value)),
        }
    }

    /// Sets `name` only when it is not defined yet.
    pub fn set_default(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        if self.get(&name).is_none() {
            self.vars.push((name, value.into()));
        }
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The variables in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// `self` with every variable of `over` set on top (`over` wins).
    pub fn overlaid(&self, over: &Env) -> Env {
        let mut out = self.clone();
        for (n, v) in over.iter() {
            out.set(n, v);
        }
        out
    }
}

/// Expands `$(VAR)` references in `input` with the kubelet's rules (see the module docs).
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.extend_from_slice(&bytes[checkpoint..cursor]);
            let rest = &bytes[cursor + 1..];
            let advance = match rest[0] {
                b'$' => {
                    out.push(b'$');
                    1
                }
                b'(' => match rest.iter().position(|&b| b == b')') {
                    Some(close) => {
                        let name = String::from_utf8_lossy(&rest[1..close]);
                        match lookup(&name) {
                            Some(value) => out.extend_from_slice(value.as_bytes()),
                            None => {
                                out.extend_from_slice(b"$(");
                                out.extend_from_slice(name.as_bytes());
                                out.push(b')');
                            }
                        }
                        close + 1
                    }
                    None => {
                        out.extend_from_slice(b"$(");
                        1
                    }
                },
                other => {
                    out.push(b'$');
                    out.push(other);
                    1
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    if checkpoint < bytes.len() {
        out.extend_from_slice(&bytes[checkpoint..]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The container's own environment (`envFrom` then `env`), without image defaults.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    sources: &EnvSources,
    fields: &FieldContext,
) -> Result<Env, EnvError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env = Env::new();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(s) = &source.secret_ref {
            match sources.secrets.get(&s.name).cloned().flatten() {
                Some(data) => data
                    .iter()
                    .for_each(|(k, v)| env.set(format!("{prefix}{k}"), v)),
                None if s.optional == Some(true) => {}
                None => return Err(EnvError::SecretNotFound(s.name.clone())),
            }
        }
        if let Some(c) = &source.config_map_ref {
            match sources.config_maps.get(&c.name).cloned().flatten() {
                Some(data) => data
                    .iter()
                    .for_each(|(k, v)| env.set(format!("{prefix}{k}"), v)),
                None if c.optional == Some(true) => {}
                None => return Err(EnvError::ConfigMapNotFound(c.name.clone())),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let raw = var.value.clone().unwrap_or_default();
                Some(expand(&raw, |n| env.get(n).map(str::to_string)))
            }
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    Some(field_value(pod, &f.field_path, fields, false)?)
                } else if let Some(r) = &from.resource_field_ref {
                    let name = r.container_name.as_deref().unwrap_or(&container.name);
                    Some(resource_value(
                        pod,
                        name,
                        &r.resource,
                        r.divisor.as_ref(),
                        fields,
                    )?)
                } else if let Some(s) = &from.secret_key_ref {
                    lookup_key(
                        "Secret",
                        &namespace,
                        &s.name,
                        &s.key,
                        s.optional == Some(true),
                        sources.secrets.get(&s.name),
                        EnvError::SecretNotFound,
                    )?
                } else if let Some(c) = &from.config_map_key_ref {
                    lookup_key(
                        "ConfigMap",
                        &namespace,
                        &c.name,
                        &c.key,
                        c.optional == Some(true),
                        sources.config_maps.get(&c.name),
                        EnvError::ConfigMapNotFound,
                    )?
                } else if from.file_key_ref.is_some() {
                    return Err(EnvError::InvalidSource(
                        var.name.clone(),
                        "fileKeyRef is not supported by the devcluster agent",
                    ));
                } else {
                    return Err(EnvError::InvalidSource(
                        var.name.clone(),
                        "valueFrom names no source",
                    ));
                }
            }
        };
        if let Some(value) = value {
            env.set(var.name.clone(), value);
        }
    }
    Ok(env)
}

fn lookup_key(
    kind: &'static str,
    namespace: &str,
    name: &str,
    key: &str,
    optional: bool,
    object: Option<&Option<BTreeMap<String, String>>>,
    not_found: fn(String) -> EnvError,
) -> Result<Option<String>, EnvError> {
    match object.cloned().flatten() {
        None if optional => Ok(None),
        None => Err(not_found(name.to_string())),
        Some(data) => match data.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(EnvError::KeyNotFound {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
                key: key.to_string(),
            }),
        },
    }
}

/// `$(VAR)`-expands a command or argument list against the container's environment.
pub fn expand_all(items: &[String], env: &Env) -> Vec<String> {
    items
        .iter()
        .map(|item| expand(item, |n| env.get(n).map(str::to_string)))
        .collect()
}

/// A downward API `fieldRef` value. `whole_maps` allows `metadata.labels` and
/// `metadata.annotations` (volumes only), rendered as sorted `key="value"` lines.
pub fn field_value(
    pod: &Pod,
    path: &str,
    fields: &FieldContext,
    whole_maps: bool,
) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let subscript = |prefix: &str| -> Option<String> {
        let rest = path.strip_prefix(prefix)?.strip_prefix('[')?;
        let rest = rest.strip_suffix(']')?;
        let key = rest
            .strip_prefix('\'')
            .and_then(|r| r.strip_suffix('\''))
            .or_else(|| rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')))
            .unwrap_or(rest);
        Some(key.to_string())
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" if whole_maps => format_map(meta.labels.as_ref()),
        "metadata.annotations" if whole_maps => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => fields.host_ip.clone().unwrap_or_default(),
        "status.podIP" | "status.podIPs" => fields.pod_ip.clone().unwrap_or_default(),
        _ => {
            if let Some(key) = subscript("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&key).cloned())
                    .unwrap_or_default()
            } else if let Some(key) = subscript("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(&key).cloned())
                    .unwrap_or_default()
            } else {
                return Err(EnvError::UnsupportedFieldPath(path.to_string()));
            }
        }
    };
    Ok(value)
}

fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}\n"))
        .collect()
}

/// A downward API `resourceFieldRef` value: the container's limit or request divided by
/// `divisor` (default 1) and rounded up; a limit that is not set reads the node's allocatable.
pub fn resource_value(
    pod: &Pod,
    container_name: &str,
    resource: &str,
    divisor: Option<&Quantity>,
    fields: &FieldContext,
) -> Result<String, EnvError> {
    let container = pod
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == container_name)
        .ok_or_else(|| EnvError::NoSuchContainer(container_name.to_string()))?;
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| EnvError::UnsupportedResource(resource.to_string()))?;
    if !matches!(name, "cpu" | "memory" | "ephemeral-storage") && !name.starts_with("hugepages-") {
        return Err(EnvError::UnsupportedResource(resource.to_string()));
    }
    let pick = |r: &ResourceRequirements, kind: &str| -> Option<Quantity> {
        let map = if kind == "limits" {
            r.limits.as_ref()
        } else {
            r.requests.as_ref()
        };
        map.and_then(|m| m.get(name).cloned())
    };
    let resources = container.resources.clone().unwrap_or_default();
    let quantity = match kind {
        "limits" => pick(&resources, "limits")
            .or_else(|| fields.node_allocatable.get(name).cloned())
            .unwrap_or_else(|| Quantity("0".into())),
        "requests" => pick(&resources, "requests")
            .or_else(|| pick(&resources, "limits"))
            .unwrap_or_else(|| Quantity("0".into())),
        _ => return Err(EnvError::UnsupportedResource(resource.to_string())),
    };
    let value = parse_quantity(&quantity.0)?;
    let divisor = match divisor {
        Some(d) => parse_quantity(&d.0)?,
        None => 1.0,
    };
    if divisor <= 0.0 {
        return Err(EnvError::InvalidQuantity(format!("{divisor}")));
    }
    // Rounded up, as the kubelet does (250m of CPU is "1").
    Ok(format!("{}", (value / divisor).ceil() as i64))
}

/// Parses a Kubernetes quantity (`500m`, `2Gi`, `1e3`, `10M`) into a number.
pub fn parse_quantity(text: &str) -> Result<f64, EnvError> {
    let t = text.trim();
    let invalid = || EnvError::InvalidQuantity(text.to_string());
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0f64.powi(2),
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| invalid())?;
            10f64.powi(exp)
        }
        _ => return Err(invalid()),
    };
    Ok(number * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource,
        ObjectFieldSelector, PodSpec, SecretKeySelector,
    };
    use kube::api::ObjectMeta;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |n| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn expansion_follows_the_kubelet_rules() {
        let vars = [("A", "alpha"), ("B", "beta"), ("EMPTY", "")];
        let cases = [
            ("$(A)", "alpha"),
            ("x-$(A)-$(B)-y", "x-alpha-beta-y"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$alpha"),
            ("$$$$(A)", "$$(A)"),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$(EMPTY)x", "x"),
            ("$(A", "$(A"),
            ("$A", "$A"),
            ("$", "$"),
            ("a$", "a$"),
            ("$)", "$)"),
            ("100$", "100$"),
            ("$(A)$(B)", "alphabeta"),
            ("é$(A)é", "éalphaé"),
            ("$é", "$é"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, lookup(&vars)), want, "input {input:?}");
        }
    }

    fn pod(containers: Vec<Container>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("bus-0".into()),
                namespace: Some("iot".into()),
                uid: Some("uid-1".into()),
                labels: Some(BTreeMap::from([("app".into(), "bus".into())])),
                annotations: Some(BTreeMap::from([("a/b".into(), "c".into())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers,
                node_name: Some("devcluster".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn var_from(name: &str, from: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(from),
        }
    }

    fn field(path: &str) -> EnvVarSource {
        EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..Default::default()
        }
    }

    fn fields() -> FieldContext {
        FieldContext {
            pod_ip: Some("10.244.0.7".into()),
            host_ip: Some("10.244.0.1".into()),
            node_allocatable: BTreeMap::from([
                ("cpu".into(), Quantity("2".into())),
                ("memory".into(), Quantity("8Gi".into())),
            ]),
        }
    }

    #[test]
    fn env_values_expand_earlier_variables_and_field_refs() {
        let c = Container {
            name: "rabbitmq".into(),
            env: Some(vec![
                var_from("POD_NAME", field("metadata.name")),
                var(
                    "RABBITMQ_NODENAME",
                    "rabbit@$(POD_NAME).bus-headless.iot.svc.cluster.local",
                ),
                var("LATER", "$(DEFINED_AFTER)"),
                var("DEFINED_AFTER", "x"),
                var("ESCAPED", "$$(POD_NAME)"),
                var_from("IP", field("status.podIP")),
                var_from("NS", field("metadata.namespace")),
                var_from("LABEL", field("metadata.labels['app']")),
                var_from("ANN", field("metadata.annotations['a/b']")),
                var_from("NODE", field("spec.nodeName")),
            ]),
            ..Default::default()
        };
        let p = pod(vec![c.clone()]);
        let env = container_env(&p, &c, &EnvSources::default(), &fields()).unwrap();
        assert_eq!(
            env.get("RABBITMQ_NODENAME"),
            Some("rabbit@bus-0.bus-headless.iot.svc.cluster.local")
        );
        assert_eq!(env.get("LATER"), Some("$(DEFINED_AFTER)"));
        assert_eq!(env.get("ESCAPED"), Some("$(POD_NAME)"));
        assert_eq!(env.get("IP"), Some("10.244.0.7"));
        assert_eq!(env.get("NS"), Some("iot"));
        assert_eq!(env.get("LABEL"), Some("bus"));
        assert_eq!(env.get("ANN"), Some("c"));
        assert_eq!(env.get("NODE"), Some("devcluster"));
    }

    #[test]
    fn whole_label_maps_are_only_for_volumes() {
        let p = pod(vec![]);
        assert_eq!(
            field_value(&p, "metadata.labels", &fields(), true).unwrap(),
            "app=\"bus\"\n"
        );
        assert!(matches!(
            field_value(&p, "metadata.labels", &fields(), false),
            Err(EnvError::UnsupportedFieldPath(_))
        ));
    }

    #[test]
    fn secrets_and_config_maps_resolve_and_optional_ones_may_be_missing() {
        let c = Container {
            name: "c".into(),
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "cm".into(),
                    optional: None,
                }),
                prefix: Some("CM_".into()),
                secret_ref: None,
            }]),
            env: Some(vec![
                var_from(
                    "PASS",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "creds".into(),
                            key: "password".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                var_from(
                    "OPT",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "missing".into(),
                            key: "k".into(),
                            optional: Some(true),
                        }),
                        ..Default::default()
                    },
                ),
                var_from(
                    "MODE",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cm".into(),
                            key: "mode".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                var("REF", "$(PASS)/$(CM_mode)"),
            ]),
            ..Default::default()
        };
        let p = pod(vec![c.clone()]);
        let (secrets, cms) = referenced_objects(&c);
        assert_eq!(
            secrets.into_iter().collect::<Vec<_>>(),
            ["creds", "missing"]
        );
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), ["cm"]);
        let sources = EnvSources {
            secrets: BTreeMap::from([
                (
                    "creds".into(),
                    Some(BTreeMap::from([("password".into(), "s3cret".into())])),
                ),
                ("missing".into(), None),
            ]),
            config_maps: BTreeMap::from([(
                "cm".into(),
                Some(BTreeMap::from([("mode".into(), "fast".into())])),
            )]),
        };
        let env = container_env(&p, &c, &sources, &fields()).unwrap();
        assert_eq!(env.get("PASS"), Some("s3cret"));
        assert_eq!(env.get("OPT"), None);
        assert_eq!(env.get("MODE"), Some("fast"));
        assert_eq!(env.get("CM_mode"), Some("fast"));
        assert_eq!(env.get("REF"), Some("s3cret/fast"));

        let mut without = sources.clone();
        without.secrets.insert("creds".into(), None);
        assert_eq!(
            container_env(&p, &c, &without, &fields()),
            Err(EnvError::SecretNotFound("creds".into()))
        );
        let mut no_key = sources;
        no_key.secrets.insert("creds".into(), Some(BTreeMap::new()));
        let err = container_env(&p, &c, &no_key, &fields()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "couldn't find key password in Secret iot/creds"
        );
    }

    #[test]
    fn commands_expand_against_the_final_environment() {
        let mut env = Env::new();
        env.set("NAME", "bus-0");
        env.set("PORT", "1883");
        let args = vec![
            "--name=$(NAME)".to_string(),
            "$(PORT)".into(),
            "$$(NAME)".into(),
            "$(NOPE)".into(),
        ];
        assert_eq!(
            expand_all(&args, &env),
            ["--name=bus-0", "1883", "$(NAME)", "$(NOPE)"]
        );
    }

    #[test]
    fn env_set_replaces_in_place_and_overlay_wins() {
        let mut base = Env::new();
        base.set("PATH", "/bin");
        base.set("HOME", "/root");
        let mut over = Env::new();
        over.set("HOME", "/data");
        over.set("X", "1");
        let merged = base.overlaid(&over);
        assert_eq!(
            merged.iter().collect::<Vec<_>>(),
            [("PATH", "/bin"), ("HOME", "/data"), ("X", "1")]
        );
        base.set_default("PATH", "/usr/bin");
        assert_eq!(base.get("PATH"), Some("/bin"));
    }

    #[test]
    fn resource_fields_divide_and_round_up_with_node_allocatable_as_default_limit() {
        let c = Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                limits: Some(BTreeMap::from([("memory".into(), Quantity("2Gi".into()))])),
                requests: Some(BTreeMap::from([("cpu".into(), Quantity("250m".into()))])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = pod(vec![c]);
        let f = fields();
        let mi = Quantity("1Mi".into());
        assert_eq!(
            resource_value(&p, "c", "limits.memory", Some(&mi), &f).unwrap(),
            "2048"
        );
        assert_eq!(
            resource_value(&p, "c", "requests.cpu", None, &f).unwrap(),
            "1"
        );
        let m = Quantity("1m".into());
        assert_eq!(
            resource_value(&p, "c", "requests.cpu", Some(&m), &f).unwrap(),
            "250"
        );
        assert_eq!(
            resource_value(&p, "c", "limits.cpu", None, &f).unwrap(),
            "2"
        );
        assert!(resource_value(&p, "x", "limits.cpu", None, &f).is_err());
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_quantity("500m").unwrap(), 0.5);
        assert_eq!(
            parse_quantity("2Gi").unwrap(),
            2.0 * 1024.0 * 1024.0 * 1024.0
        );
        assert_eq!(parse_quantity("1e3").unwrap(), 1000.0);
        assert_eq!(parse_quantity("10M").unwrap(), 1e7);
        assert!(parse_quantity("ten").is_err());
    }
}
