//! What the load balancer should look like, as a pure function of what the agent reads: the
//! BrokerCluster, its broker Pods, the LB Pods and (for RabbitMQ without anonymous access) the
//! admin credentials.
//!
//! # Servers
//! One server per broker ordinal `0..max(spec.replicas, highest existing ordinal + 1)`, named after
//! its Pod (`<cluster>-<ordinal>`), at the Pod's IP. Its runtime state, in this order:
//! 1. no Pod or no IP: `maint` (nothing to send clients to);
//! 2. member state `Stray` or `Forgotten`: `maint` (a node outside the cluster gets no clients until
//!    it is repaired);
//! 3. ordinal `>= spec.replicas`: `drain` (leaving in a scale-down: no new clients, and the agent
//!    clears its stick-table entries every round so that clients stuck to it go elsewhere too;
//!    connected ones stay until the operator moves them, see `controller::scale_down`);
//! 4. the Pod is being deleted: `drain` (it is about to stop; its clients move when it goes);
//! 5. otherwise `ready`: `Joined`, `NotReady`, `Unknown`, `Ghost`, a state Mooring does not know, a
//!    Pod without a member entry and a status without members alike. HAProxy's MQTT health check
//!    then decides whether the node takes clients.
//!
//! A server is rendered enabled in the file exactly when its state is `ready` (and it has an IP),
//! so a freshly started or reloaded HAProxy begins close to the runtime state.
//!
//! # Peers
//! The LB Pods with a known IP, sorted by name. The agent's own Pod must be among them (HAProxy
//! finds itself in `peers` by its `-L` name); when its IP is not known yet, `own_ip` stands in,
//! and when that is unknown too there are no peers at all (a `peers` section without the local
//! peer is dropped by HAProxy anyway).
//!
//! # Health check credentials
//! Only RabbitMQ without anonymous access needs them: its admin user may log in over MQTT. With
//! anonymous access there is nothing to send. EMQX without anonymous access has no MQTT user
//! Mooring could use: the check stays anonymous and EMQX refuses it (see
//! [`emqx_check_is_refused`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use mooring_crds::{BrokerCluster, BrokerKind};

use super::runtime_api::ServerAdminState;
use crate::broker_config::secret_keys;
use crate::load_balancer::haproxy_cfg::{
    backends, BackendServer, HealthCheckCredentials, LbConfig, ListenerPorts, Peer,
    MAX_TIMER_SECONDS, MQTT_BACKEND, TLS_BACKEND, WEBSOCKET_BACKEND, WSS_BACKEND,
};

/// Broker ordinals at or above this are ignored (the CRD allows at most 99 replicas; a Pod with a
/// larger ordinal is not one of ours).
pub const MAX_ORDINAL: u32 = 1000;

/// What the agent read, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// The BrokerCluster (spec and status).
    pub cluster: &'a BrokerCluster,
    /// Its broker Pods (any order; Pods not named `<cluster>-<ordinal>` are ignored).
    pub broker_pods: &'a [Pod],
    /// Its LB Pods (any order).
    pub lb_pods: &'a [Pod],
    /// The agent's own Pod name (its `haproxy -L` name).
    pub own_pod: &'a str,
    /// The agent's own IP when the API does not show it yet (e.g. from `/etc/hosts`).
    pub own_ip: Option<IpAddr>,
    /// The broker admin credentials, if read; required when [`needs_credentials`] says so.
    pub credentials: Option<&'a HealthCheckCredentials>,
}

/// One server on one backend as it should be at runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredServer {
    /// The backend (`mqtt`, `mqtt_ws`, ...).
    pub backend: String,
    /// The server, named after the broker Pod.
    pub server: String,
    /// The Pod's IP; `None` when unknown (the address HAProxy has is then left alone).
    pub addr: Option<IpAddr>,
    /// The broker port of this backend.
    pub port: u16,
    /// The runtime state.
    pub state: ServerAdminState,
}

/// The configuration to render and the runtime state to converge to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// What `haproxy.cfg` is rendered from.
    pub config: LbConfig,
    /// Every server on every backend, backend by backend (`mqtt` first), ordinal by ordinal.
    pub servers: Vec<DesiredServer>,
}

/// Why no desired state can be computed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    /// A listener port is outside 1..=65535.
    #[error("spec.listeners.{listener}.port {port} is not a TCP port")]
    InvalidPort {
        /// Which listener.
        listener: &'static str,
        /// The value.
        port: i32,
    },
    /// The health check needs the admin credentials and they were not given.
    #[error(
        "the MQTT health check needs the broker admin credentials (RabbitMQ without anonymous \
         access): the Secret {secret} was not read"
    )]
    MissingCredentials {
        /// The Secret they come from.
        secret: String,
    },
    /// The credentials Secret lacks a key or holds something that is not UTF-8.
    #[error("Secret {secret}: key {key} is missing, empty or not UTF-8")]
    BadSecret {
        /// The Secret.
        secret: String,
        /// The key.
        key: &'static str,
    },
}

/// Name of the Secret with the broker admin credentials.
pub fn credentials_secret_name(cluster: &str) -> String {
    format!("{cluster}-credentials")
}

/// Whether the health check must log in (RabbitMQ without anonymous access), i.e. whether the agent
/// must read [`credentials_secret_name`].
pub fn needs_credentials(cluster: &BrokerCluster) -> bool {
    cluster.spec.broker.kind == BrokerKind::Rabbitmq && !cluster.spec.auth.allow_anonymous
}

/// Whether the health check is anonymous although the broker refuses anonymous clients: EMQX
/// without anonymous access. EMQX then answers the check's CONNECT with "not authorised" and
/// HAProxy marks every broker down, unless the renderer learns to accept any CONNACK or an MQTT
/// user for the check is provisioned.
pub fn emqx_check_is_refused(cluster: &BrokerCluster) -> bool {
    cluster.spec.broker.kind == BrokerKind::Emqx && !cluster.spec.auth.allow_anonymous
}

/// Reads the admin username and password from the cluster's credentials Secret.
pub fn credentials_from_secret(secret: &Secret) -> Result<HealthCheckCredentials, DesiredError> {
    let name = secret.name_any();
    let value = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key).cloned())
            })
            .filter(|v| !v.is_empty())
            .ok_or(DesiredError::BadSecret {
                secret: name.clone(),
                key,
            })
    };
    Ok(HealthCheckCredentials {
        username: value(secret_keys::ADMIN_USERNAME)?,
        password: value(secret_keys::ADMIN_PASSWORD)?,
    })
}

/// The desired configuration and runtime state (see the module documentation for the rules).
pub fn desired(input: &Inputs<'_>) -> Result<Desired, DesiredError> {
    let cluster = input.cluster;
    let spec = &cluster.spec;
    let name = cluster.name_any();
    let replicas = u32::try_from(spec.replicas).unwrap_or(0);

    let mut by_ordinal: BTreeMap<u32, &Pod> = BTreeMap::new();
    for pod in input.broker_pods {
        if let Some(ordinal) = ordinal_of(&name, &pod.name_any()) {
            by_ordinal.insert(ordinal, pod);
        }
    }
    let count = by_ordinal
        .keys()
        .next_back()
        .map_or(replicas, |last| replicas.max(last + 1));

    let members: BTreeMap<&str, &str> = cluster
        .status
        .iter()
        .flat_map(|s| &s.members)
        .map(|m| (m.pod.as_str(), m.state.as_str()))
        .collect();

    let mut servers = Vec::new();
    let mut states = Vec::new();
    for ordinal in 0..count {
        let pod_name = format!("{name}-{ordinal}");
        let pod = by_ordinal.get(&ordinal);
        let ip = pod.and_then(|p| pod_ip(p));
        let terminating = pod.is_some_and(|p| p.metadata.deletion_timestamp.is_some());
        let state = server_state(ServerFacts {
            has_ip: ip.is_some(),
            member_state: members.get(pod_name.as_str()).copied(),
            leaving: ordinal >= replicas,
            terminating,
        });
        servers.push(BackendServer {
            name: pod_name.clone(),
            address: ip.map(|ip| ip.to_string()),
            initially_enabled: state == ServerAdminState::Ready && ip.is_some(),
        });
        states.push((pod_name, ip, state));
    }

    let l = &spec.listeners;
    let port = |listener: &'static str, port: i32| {
        u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .map(ListenerPorts::same)
            .ok_or(DesiredError::InvalidPort { listener, port })
    };
    let mqtt = port("mqtt", l.mqtt.port)?;
    let websocket = l
        .websocket
        .enabled
        .then(|| port("websocket", l.websocket.port))
        .transpose()?;
    let tls = l.tls.as_ref().map(|t| port("tls", t.port)).transpose()?;
    let wss = l.wss.as_ref().map(|t| port("wss", t.port)).transpose()?;

    let credentials = if needs_credentials(cluster) {
        Some(
            input
                .credentials
                .cloned()
                .ok_or_else(|| DesiredError::MissingCredentials {
                    secret: credentials_secret_name(&name),
                })?,
        )
    } else {
        None
    };

    let expiry = spec
        .load_balancer
        .stickiness_expiry_seconds
        .clamp(1, i64::from(MAX_TIMER_SECONDS));
    let config = LbConfig {
        servers,
        mqtt,
        websocket,
        tls,
        wss,
        stick_expiry_seconds: u32::try_from(expiry).unwrap_or(MAX_TIMER_SECONDS),
        peers: peers(input),
        health_check_credentials: credentials,
        accept_refused_connack: emqx_check_is_refused(cluster),
        proxy_protocol: spec.load_balancer.sends_proxy_protocol(),
        ..LbConfig::new(name)
    };

    let mut desired_servers = Vec::new();
    for backend in backends(&config) {
        let Some(port) = backend_port(&config, backend) else {
            continue;
        };
        for (server, addr, state) in &states {
            desired_servers.push(DesiredServer {
                backend: backend.to_string(),
                server: server.clone(),
                addr: *addr,
                port,
                state: *state,
            });
        }
    }
    Ok(Desired {
        config,
        servers: desired_servers,
    })
}

/// What decides one server's state.
#[derive(Clone, Copy, Debug)]
struct ServerFacts<'a> {
    has_ip: bool,
    member_state: Option<&'a str>,
    leaving: bool,
    terminating: bool,
}

fn server_state(f: ServerFacts<'_>) -> ServerAdminState {
    if !f.has_ip || matches!(f.member_state, Some("Stray" | "Forgotten")) {
        ServerAdminState::Maint
    } else if f.leaving || f.terminating {
        ServerAdminState::Drain
    } else {
        ServerAdminState::Ready
    }
}

/// The broker port a backend forwards to.
fn backend_port(cfg: &LbConfig, backend: &str) -> Option<u16> {
    match backend {
        MQTT_BACKEND => Some(cfg.mqtt.backend),
        WEBSOCKET_BACKEND => cfg.websocket.map(|p| p.backend),
        TLS_BACKEND => cfg.tls.map(|p| p.backend),
        WSS_BACKEND => cfg.wss.map(|p| p.backend),
        _ => None,
    }
}

fn peers(input: &Inputs<'_>) -> Vec<Peer> {
    let mut by_name: BTreeMap<String, IpAddr> = input
        .lb_pods
        .iter()
        .filter_map(|p| pod_ip(p).map(|ip| (p.name_any(), ip)))
        .collect();
    if !by_name.contains_key(input.own_pod) {
        match input.own_ip {
            Some(ip) => {
                by_name.insert(input.own_pod.to_string(), ip);
            }
            None => return Vec::new(),
        }
    }
    by_name
        .into_iter()
        .map(|(name, ip)| Peer {
            name,
            address: ip.to_string(),
        })
        .collect()
}

/// The ordinal of `pod` if it is named `<cluster>-<ordinal>` (no sign, no leading zero).
fn ordinal_of(cluster: &str, pod: &str) -> Option<u32> {
    let digits = pod.strip_prefix(cluster)?.strip_prefix('-')?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok().filter(|o| *o < MAX_ORDINAL)
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status
        .as_ref()?
        .pod_ip
        .as_deref()?
        .parse::<IpAddr>()
        .ok()
        .filter(|ip| !ip.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_balancer::haproxy_cfg::{render, DEFAULT_STICK_TABLE_SIZE};
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::ByteString;
    use mooring_crds::status::{BrokerClusterStatus, MemberStatus};
    use mooring_crds::BrokerClusterSpec;
    use ServerAdminState::{Drain, Maint, Ready};

    fn cluster(spec: serde_json::Value) -> BrokerCluster {
        let spec: BrokerClusterSpec = serde_json::from_value(spec).unwrap();
        let mut bc = BrokerCluster::new("demo", spec);
        bc.metadata.namespace = Some("ns".into());
        bc
    }

    fn with_members(mut bc: BrokerCluster, members: &[(&str, &str)]) -> BrokerCluster {
        bc.status = Some(BrokerClusterStatus {
            members: members
                .iter()
                .map(|(pod, state)| MemberStatus {
                    pod: pod.to_string(),
                    node: format!("node@{pod}"),
                    state: state.to_string(),
                    ..MemberStatus::default()
                })
                .collect(),
            ..BrokerClusterStatus::default()
        });
        bc
    }

    fn pod(name: &str, ip: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.status = Some(PodStatus {
            pod_ip: ip.map(Into::into),
            ..PodStatus::default()
        });
        p
    }

    fn brokers(n: usize) -> Vec<Pod> {
        (0..n)
            .map(|i| pod(&format!("demo-{i}"), Some(&format!("10.0.0.{}", 10 + i))))
            .collect()
    }

    fn lb_pods() -> Vec<Pod> {
        vec![
            pod("demo-lb-1", Some("10.0.1.2")),
            pod("demo-lb-0", Some("10.0.1.1")),
        ]
    }

    fn inputs<'a>(bc: &'a BrokerCluster, broker_pods: &'a [Pod], lb: &'a [Pod]) -> Inputs<'a> {
        Inputs {
            cluster: bc,
            broker_pods,
            lb_pods: lb,
            own_pod: "demo-lb-0",
            own_ip: None,
            credentials: None,
        }
    }

    fn states(d: &Desired, backend: &str) -> Vec<(String, ServerAdminState)> {
        d.servers
            .iter()
            .filter(|s| s.backend == backend)
            .map(|s| (s.server.clone(), s.state))
            .collect()
    }

    fn named(list: &[(&str, ServerAdminState)]) -> Vec<(String, ServerAdminState)> {
        list.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    #[test]
    fn a_healthy_cluster_is_all_ready_on_mqtt_and_websocket() {
        let bc = with_members(
            cluster(serde_json::json!({"replicas": 3})),
            &[
                ("demo-0", "Joined"),
                ("demo-1", "Joined"),
                ("demo-2", "Joined"),
            ],
        );
        let pods = brokers(3);
        let lb = lb_pods();
        let d = desired(&inputs(&bc, &pods, &lb)).unwrap();
        assert_eq!(backends(&d.config), ["mqtt", "mqtt_ws"]);
        assert_eq!(d.servers.len(), 6);
        assert_eq!(
            d.servers[0],
            DesiredServer {
                backend: "mqtt".into(),
                server: "demo-0".into(),
                addr: Some("10.0.0.10".parse().unwrap()),
                port: 1883,
                state: Ready,
            }
        );
        assert_eq!(d.servers[3].backend, "mqtt_ws");
        assert_eq!(d.servers[3].port, 8083);
        assert_eq!(d.servers[5].server, "demo-2");
        assert!(d.servers.iter().all(|s| s.state == Ready));
        assert_eq!(
            d.config.servers,
            (0..3)
                .map(|i| BackendServer {
                    name: format!("demo-{i}"),
                    address: Some(format!("10.0.0.{}", 10 + i)),
                    initially_enabled: true,
                })
                .collect::<Vec<_>>()
        );
        assert_eq!(d.config.cluster_name, "demo");
        assert_eq!(d.config.mqtt, ListenerPorts::same(1883));
        assert_eq!(d.config.websocket, Some(ListenerPorts::same(8083)));
        assert_eq!((d.config.tls, d.config.wss), (None, None));
        assert_eq!(d.config.stick_expiry_seconds, 86_400);
        assert_eq!(d.config.stick_table_size, DEFAULT_STICK_TABLE_SIZE);
        assert_eq!(d.config.health_check_credentials, None);
        assert!(render(&d.config).is_ok());
    }

    #[test]
    fn member_states_decide_ready_or_maint() {
        let bc = with_members(
            cluster(serde_json::json!({"replicas": 7})),
            &[
                ("demo-0", "Joined"),
                ("demo-1", "Stray"),
                ("demo-2", "Forgotten"),
                ("demo-3", "NotReady"),
                ("demo-4", "Unknown"),
                ("demo-5", "Ghost"),
                ("demo-6", "SomethingNew"),
            ],
        );
        let pods = brokers(7);
        let d = desired(&inputs(&bc, &pods, &[])).unwrap();
        assert_eq!(
            states(&d, "mqtt"),
            named(&[
                ("demo-0", Ready),
                ("demo-1", Maint),
                ("demo-2", Maint),
                ("demo-3", Ready),
                ("demo-4", Ready),
                ("demo-5", Ready),
                ("demo-6", Ready),
            ])
        );
        assert_eq!(
            states(&d, "mqtt_ws"),
            states(&d, "mqtt"),
            "every backend alike"
        );
        let enabled: Vec<bool> = d
            .config
            .servers
            .iter()
            .map(|s| s.initially_enabled)
            .collect();
        assert_eq!(enabled, [true, false, false, true, true, true, true]);
    }

    #[test]
    fn without_members_yet_every_server_with_an_ip_is_ready() {
        let bc = cluster(serde_json::json!({"replicas": 3}));
        let pods = brokers(3);
        let d = desired(&inputs(&bc, &pods, &[])).unwrap();
        assert!(d.servers.iter().all(|s| s.state == Ready));

        let bc = with_members(
            cluster(serde_json::json!({"replicas": 3})),
            &[("demo-0", "Joined")],
        );
        let d = desired(&inputs(&bc, &pods, &[])).unwrap();
        assert!(
            d.servers.iter().all(|s| s.state == Ready),
            "a Pod without a member entry is left to the health check"
        );
    }

    #[test]
    fn missing_pods_and_ips_are_maint_without_address() {
        let bc = cluster(serde_json::json!({"replicas": 3}));
        let pods = vec![pod("demo-0", Some("10.0.0.10")), pod("demo-2", None)];
        let d = desired(&inputs(&bc, &pods, &[])).unwrap();
        assert_eq!(
            states(&d, "mqtt"),
            named(&[("demo-0", Ready), ("demo-1", Maint), ("demo-2", Maint)])
        );
        assert_eq!(d.servers[1].addr, None);
        assert_eq!(d.config.servers[1].address, None);
        assert!(!d.config.servers[1].initially_enabled);
        assert!(render(&d.config)
            .unwrap()
            .contains("server demo-1 0.0.0.0:1883 check disabled"));
    }

    #[test]
    fn nodes_leaving_in_a_scale_down_drain() {
        let bc = with_members(
            cluster(serde_json::json!({"replicas": 2})),
            &[
                ("demo-0", "Joined"),
                ("demo-1", "Joined"),
                ("demo-2", "Joined"),
                ("demo-3", "Stray"),
            ],
        );
        let pods = brokers(4);
        let d = desired(&inputs(&bc, &pods, &[])).unwrap();
        assert_eq!(
            states(&d, "mqtt"),
            named(&[
                ("demo-0", Ready),
                ("demo-1", Ready),
                ("demo-2", Drain),
                ("demo-3", Maint),
            ]),
            "a stray leaving node is in maintenance, not drain"
        );
        assert!(!d.config.servers[2].initially_enabled);
    }

    #[test]
    fn servers_cover_the_spec_and_every_existing_ordinal() {
        let bc = cluster(serde_json::json!({"replicas": 5}));
        let pods = brokers(2);
        let d = desired(&inputs(&bc, &pods, &[])).unwrap();
        assert_eq!(d.config.servers.len(), 5, "scale-up: Pods not created yet");
        assert_eq!(
            states(&d, "mqtt")[2..],
            named(&[("demo-2", Maint), ("demo-3", Maint), ("demo-4", Maint)])[..]
        );

        let bc = cluster(serde_json::json!({"replicas": 1}));
        let pods = vec![
            pod("demo-0", Some("10.0.0.10")),
            pod("demo-3", Some("10.0.0.13")),
        ];
        let d = desired(&inputs(&bc, &pods, &[])).unwrap();
        assert_eq!(
            states(&d, "mqtt"),
            named(&[
                ("demo-0", Ready),
                ("demo-1", Maint),
                ("demo-2", Maint),
                ("demo-3", Drain),
            ])
        );
    }

    #[test]
    fn pods_not_named_after_an_ordinal_are_ignored() {
        let bc = cluster(serde_json::json!({"replicas": 1}));
        let pods = vec![
            pod("demo-0", Some("10.0.0.10")),
            pod("demo-lb-0", Some("10.0.9.1")),
            pod("demo-01", Some("10.0.9.2")),
            pod("demo-+1", Some("10.0.9.3")),
            pod("demo-1000", Some("10.0.9.4")),
            pod("demox-1", Some("10.0.9.5")),
            pod("other-1", Some("10.0.9.6")),
        ];
        let d = desired(&inputs(&bc, &pods, &[])).unwrap();
        assert_eq!(states(&d, "mqtt"), named(&[("demo-0", Ready)]));
        assert_eq!(ordinal_of("demo", "demo-999"), Some(999));
        assert_eq!(ordinal_of("demo", "demo-"), None);
    }

    #[test]
    fn terminating_pods_drain_and_unusable_ips_count_as_none() {
        let bc = cluster(serde_json::json!({"replicas": 3}));
        let mut pods = brokers(3);
        pods[1].metadata.deletion_timestamp = Some(Time(Default::default()));
        pods[2].status.as_mut().unwrap().pod_ip = Some("not-an-ip".into());
        let d = desired(&inputs(&bc, &pods, &[])).unwrap();
        assert_eq!(
            states(&d, "mqtt"),
            named(&[("demo-0", Ready), ("demo-1", Drain), ("demo-2", Maint)])
        );
    }

    #[test]
    fn listeners_follow_the_spec() {
        let bc = cluster(serde_json::json!({
            "replicas": 1,
            "listeners": {
                "mqtt": {"port": 1884},
                "websocket": {"enabled": false, "port": 8083},
                "tls": {"port": 8883, "secretRef": {"name": "c"}},
                "wss": {"port": 8084, "secretRef": {"name": "c"}}
            }
        }));
        let pods = brokers(1);
        let d = desired(&inputs(&bc, &pods, &[])).unwrap();
        assert_eq!(d.config.mqtt, ListenerPorts::same(1884));
        assert_eq!(d.config.websocket, None);
        assert_eq!(d.config.tls, Some(ListenerPorts::same(8883)));
        assert_eq!(d.config.wss, Some(ListenerPorts::same(8084)));
        let ports: Vec<(&str, u16)> = d
            .servers
            .iter()
            .map(|s| (s.backend.as_str(), s.port))
            .collect();
        assert_eq!(
            ports,
            [("mqtt", 1884), ("mqtt_tls", 8883), ("mqtt_wss", 8084)]
        );
        assert!(render(&d.config).is_ok());

        let bad = cluster(serde_json::json!({"listeners": {"mqtt": {"port": 70000}}}));
        assert_eq!(
            desired(&inputs(&bad, &pods, &[])).unwrap_err(),
            DesiredError::InvalidPort {
                listener: "mqtt",
                port: 70000
            }
        );
    }

    #[test]
    fn proxy_protocol_follows_the_spec_and_needs_the_load_balancer_on() {
        let pods = brokers(1);
        for (lb, expected) in [
            (
                serde_json::json!({"enabled": true, "proxyProtocol": true}),
                true,
            ),
            (serde_json::json!({"enabled": true}), false),
            (
                serde_json::json!({"enabled": true, "proxyProtocol": false}),
                false,
            ),
            // Refused by the CRD's rule; never sent even if it got through.
            (
                serde_json::json!({"enabled": false, "proxyProtocol": true}),
                false,
            ),
        ] {
            let bc = cluster(serde_json::json!({ "loadBalancer": lb.clone() }));
            let d = desired(&inputs(&bc, &pods, &[])).unwrap();
            assert_eq!(d.config.proxy_protocol, expected, "{lb}");
            assert_eq!(
                render(&d.config).unwrap().contains("send-proxy-v2"),
                expected,
                "{lb}"
            );
        }
    }

    #[test]
    fn stickiness_expiry_comes_from_the_spec_within_haproxys_limit() {
        let pods = brokers(1);
        for (spec, expected) in [(3600, 3600), (2_592_000, MAX_TIMER_SECONDS), (0, 1)] {
            let bc =
                cluster(serde_json::json!({"loadBalancer": {"stickinessExpirySeconds": spec}}));
            let d = desired(&inputs(&bc, &pods, &[])).unwrap();
            assert_eq!(d.config.stick_expiry_seconds, expected, "{spec}");
            assert!(render(&d.config).is_ok());
        }
    }

    #[test]
    fn peers_are_the_lb_pods_with_an_ip_including_itself() {
        let bc = cluster(serde_json::json!({}));
        let pods = brokers(1);
        let mut lb = lb_pods();
        lb.push(pod("demo-lb-2", None));
        let d = desired(&inputs(&bc, &pods, &lb)).unwrap();
        assert_eq!(
            d.config.peers,
            [
                Peer {
                    name: "demo-lb-0".into(),
                    address: "10.0.1.1".into()
                },
                Peer {
                    name: "demo-lb-1".into(),
                    address: "10.0.1.2".into()
                },
            ]
        );

        // Its own IP is not in the API yet: the fallback stands in.
        let lb = vec![pod("demo-lb-0", None), pod("demo-lb-1", Some("10.0.1.2"))];
        let own = Inputs {
            own_ip: Some("10.0.1.9".parse().unwrap()),
            ..inputs(&bc, &pods, &lb)
        };
        let d = desired(&own).unwrap();
        assert_eq!(d.config.peers[0].name, "demo-lb-0");
        assert_eq!(d.config.peers[0].address, "10.0.1.9");

        // Nothing known about itself: no peers section at all.
        let d = desired(&inputs(&bc, &pods, &lb)).unwrap();
        assert!(d.config.peers.is_empty());
        let d = desired(&inputs(&bc, &pods, &[])).unwrap();
        assert!(d.config.peers.is_empty());
    }

    fn creds() -> HealthCheckCredentials {
        HealthCheckCredentials {
            username: "mooring-admin".into(),
            password: "s3cret".into(),
        }
    }

    #[test]
    fn rabbitmq_without_anonymous_access_checks_with_the_admin_credentials() {
        let pods = brokers(1);
        let bc = cluster(serde_json::json!({"broker": {"kind": "rabbitmq"}}));
        assert!(needs_credentials(&bc));
        assert!(!emqx_check_is_refused(&bc));
        assert_eq!(
            desired(&inputs(&bc, &pods, &[])).unwrap_err(),
            DesiredError::MissingCredentials {
                secret: "demo-credentials".into()
            }
        );
        let c = creds();
        let with = Inputs {
            credentials: Some(&c),
            ..inputs(&bc, &pods, &[])
        };
        assert_eq!(
            desired(&with).unwrap().config.health_check_credentials,
            Some(creds())
        );

        let anonymous = cluster(serde_json::json!({
            "broker": {"kind": "rabbitmq"},
            "auth": {"allowAnonymous": true}
        }));
        assert!(!needs_credentials(&anonymous));
        let with = Inputs {
            credentials: Some(&c),
            ..inputs(&anonymous, &pods, &[])
        };
        assert_eq!(
            desired(&with).unwrap().config.health_check_credentials,
            None
        );
    }

    #[test]
    fn emqx_never_gets_credentials() {
        let pods = brokers(1);
        let c = creds();
        for anonymous in [false, true] {
            let bc = cluster(serde_json::json!({
                "broker": {"kind": "emqx"},
                "auth": {"allowAnonymous": anonymous}
            }));
            assert!(!needs_credentials(&bc));
            assert_eq!(emqx_check_is_refused(&bc), !anonymous);
            let with = Inputs {
                credentials: Some(&c),
                ..inputs(&bc, &pods, &[])
            };
            assert_eq!(
                desired(&with).unwrap().config.health_check_credentials,
                None
            );
        }
    }

    #[test]
    fn credentials_are_read_from_the_secret() {
        let mut secret = Secret::default();
        secret.metadata.name = Some("demo-credentials".into());
        secret.data = Some(BTreeMap::from([
            (
                "admin-username".to_string(),
                ByteString(b"mooring-admin".to_vec()),
            ),
            ("admin-password".to_string(), ByteString(b"s3cret".to_vec())),
            ("erlang-cookie".to_string(), ByteString(b"x".to_vec())),
        ]));
        assert_eq!(credentials_from_secret(&secret).unwrap(), creds());

        let mut bad = secret.clone();
        if let Some(d) = bad.data.as_mut() {
            d.insert("admin-password".into(), ByteString(vec![0xff, 0xfe]));
        }
        assert_eq!(
            credentials_from_secret(&bad).unwrap_err(),
            DesiredError::BadSecret {
                secret: "demo-credentials".into(),
                key: "admin-password"
            }
        );
        let mut empty = secret;
        if let Some(d) = empty.data.as_mut() {
            d.remove("admin-username");
        }
        assert!(credentials_from_secret(&empty).is_err());
    }

    #[test]
    fn the_result_is_deterministic_whatever_the_pod_order() {
        let bc = with_members(
            cluster(serde_json::json!({"replicas": 3})),
            &[("demo-1", "Stray")],
        );
        let pods = brokers(3);
        let mut reversed = pods.clone();
        reversed.reverse();
        let lb = lb_pods();
        let mut lb_reversed = lb.clone();
        lb_reversed.reverse();
        assert_eq!(
            desired(&inputs(&bc, &pods, &lb)).unwrap(),
            desired(&inputs(&bc, &reversed, &lb_reversed)).unwrap()
        );
    }
}
