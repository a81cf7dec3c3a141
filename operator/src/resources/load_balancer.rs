//! The sticky MQTT load balancer's objects (pure): HAProxy in a StatefulSet `<name>-lb` whose Pods
//! each run an init container that renders `haproxy.cfg`, HAProxy itself, and the Mooring agent
//! that follows cluster membership (see [`crate::lb_agent`]); its ServiceAccount and Role (read
//! the BrokerCluster and Pods, read the credentials Secret); a headless Service for the peers; the
//! Service clients use (type from `spec.loadBalancer.serviceType`); a PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection, DownwardAPIVolumeFile,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, Service, ServiceAccount,
    ServiceAccountTokenProjection, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use mooring_crds::BrokerCluster;

use super::{labels, owner_reference, BuildError, ChildNames, MANAGED_BY};
use crate::broker_config::{port_names, BrokerLayout};

/// The `app.kubernetes.io/component` of the load balancer's objects.
pub const COMPONENT_LOAD_BALANCER: &str = "load-balancer";
/// HAProxy's image when the operator is not told otherwise.
pub const DEFAULT_HAPROXY_IMAGE: &str = "haproxy:2.6";
/// Where HAProxy's sockets live (an emptyDir shared with the agent).
pub const RUN_DIR: &str = "/var/run/haproxy";
/// Where `haproxy.cfg` lives (an emptyDir written by the agent).
pub const CONFIG_DIR: &str = "/usr/local/etc/haproxy";
/// The HAProxy master socket (reloads).
pub const MASTER_SOCKET: &str = "/var/run/haproxy/master.sock";
/// Port of the stats page and the Prometheus exporter.
pub const STATS_PORT: i32 = 8404;
/// Port the replicas share the stick table on.
pub const PEERS_PORT: i32 = 10000;
/// The volume with the agent's API credentials.
const API_ACCESS_VOLUME: &str = "kube-api-access";
/// Where in-cluster clients look for them.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The uid and gid of the official HAProxy image's `haproxy` user.
pub const HAPROXY_UID: i64 = 99;

/// The images the load balancer runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbImages {
    /// HAProxy.
    pub haproxy: String,
    /// Mooring (the agent), usually the operator's own image.
    pub agent: String,
}

impl Default for LbImages {
    fn default() -> Self {
        Self {
            haproxy: DEFAULT_HAPROXY_IMAGE.into(),
            agent: format!("ghcr.io/mooring-dev/mooring:{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Names of the load balancer's objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbNames {
    /// StatefulSet, ServiceAccount, Role, RoleBinding, PDB and client Service: `<name>-lb`.
    pub name: String,
    /// The headless Service of the peers: `<name>-lb-headless`.
    pub headless: String,
}

impl LbNames {
    /// The names for cluster `name`.
    pub fn of(name: &str) -> Self {
        Self {
            name: format!("{name}-lb"),
            headless: format!("{name}-lb-headless"),
        }
    }
}

/// Every object of the load balancer.
#[derive(Clone, Debug, PartialEq)]
pub struct LbChildren {
    /// The agent's identity.
    pub service_account: ServiceAccount,
    /// What the agent may read.
    pub role: Role,
    /// Binds the Role to the ServiceAccount.
    pub role_binding: RoleBinding,
    /// The peers' DNS names.
    pub headless_service: Service,
    /// Where clients connect.
    pub service: Service,
    /// The HAProxy Pods.
    pub stateful_set: StatefulSet,
    /// One replica down at a time; absent for a single replica.
    pub pdb: Option<PodDisruptionBudget>,
}

/// The load balancer's selector labels.
pub fn lb_selector_labels(bc: &BrokerCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_string(), bc.name_any()),
        (
            "app.kubernetes.io/component".to_string(),
            COMPONENT_LOAD_BALANCER.to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
    ])
}

fn lb_labels(bc: &BrokerCluster) -> BTreeMap<String, String> {
    let mut l = labels(bc);
    l.extend(lb_selector_labels(bc));
    l.insert("app.kubernetes.io/name".into(), "haproxy".into());
    l
}

fn meta(bc: &BrokerCluster, name: &str, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: bc.namespace(),
        labels: Some(lb_labels(bc)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The client listener ports the load balancer serves (MQTT, WebSocket, TLS, WSS), the same
/// numbers as the brokers'.
pub fn listener_ports(layout: &BrokerLayout) -> Vec<ContainerPort> {
    let wanted = [
        port_names::MQTT,
        port_names::WEBSOCKET,
        port_names::MQTTS,
        port_names::WSS,
    ];
    layout
        .client_ports
        .iter()
        .filter(|p| p.name.as_deref().is_some_and(|n| wanted.contains(&n)))
        .cloned()
        .collect()
}

/// Builds the load balancer's objects, or `None` when `spec.loadBalancer.enabled` is false.
pub fn build(
    bc: &BrokerCluster,
    layout: &BrokerLayout,
    images: &LbImages,
) -> Result<Option<LbChildren>, BuildError> {
    if !bc.spec.load_balancer.enabled {
        return Ok(None);
    }
    let names = ChildNames::of(bc)?;
    let owner = owner_reference(bc)?;
    let lb = LbNames::of(&names.cluster.name);
    let listeners = listener_ports(layout);
    let ns = names.cluster.namespace.clone();

    let service_account = ServiceAccount {
        metadata: meta(bc, &lb.name, &owner),
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    };
    let rule =
        |group: &str, resource: &str, names: Option<Vec<String>>, verbs: &[&str]| PolicyRule {
            api_groups: Some(vec![group.to_string()]),
            resources: Some(vec![resource.to_string()]),
            resource_names: names,
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            ..PolicyRule::default()
        };
    let role = Role {
        metadata: meta(bc, &lb.name, &owner),
        rules: Some(vec![
            rule(
                "mooring.dev",
                "brokerclusters",
                Some(vec![names.cluster.name.clone()]),
                &["get", "list", "watch"],
            ),
            rule("", "pods", None, &["get", "list", "watch"]),
            rule("", "secrets", Some(vec![names.secret.clone()]), &["get"]),
        ]),
    };
    let role_binding = RoleBinding {
        metadata: meta(bc, &lb.name, &owner),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: lb.name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: lb.name.clone(),
            namespace: Some(ns.clone()),
            ..Subject::default()
        }]),
    };

    let service_ports = |ports: &[ContainerPort]| -> Vec<ServicePort> {
        ports
            .iter()
            .map(|p| ServicePort {
                name: p.name.clone(),
                port: p.container_port,
                target_port: Some(IntOrString::Int(p.container_port)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            })
            .collect()
    };
    let stats = ContainerPort {
        name: Some("stats".into()),
        container_port: STATS_PORT,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let peers = ContainerPort {
        name: Some("peers".into()),
        container_port: PEERS_PORT,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let headless_service = Service {
        metadata: meta(bc, &lb.headless, &owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(lb_selector_labels(bc)),
            ports: Some(service_ports(std::slice::from_ref(&peers))),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let mut client_ports = listeners.clone();
    client_ports.push(stats.clone());
    let service = Service {
        metadata: meta(bc, &lb.name, &owner),
        spec: Some(ServiceSpec {
            type_: Some(bc.spec.load_balancer.service_type.as_str().into()),
            selector: Some(lb_selector_labels(bc)),
            ports: Some(service_ports(&client_ports)),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        EnvVar {
            name: "MOORING_CLUSTER".into(),
            value: Some(names.cluster.name.clone()),
            ..EnvVar::default()
        },
    ];
    let mounts = vec![
        VolumeMount {
            name: "run".into(),
            mount_path: RUN_DIR.into(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            ..VolumeMount::default()
        },
    ];
    // Only the agent talks to the API server: the token is mounted into its containers alone
    // (not into HAProxy's), as the usual projected volume.
    let mut agent_mounts = mounts.clone();
    agent_mounts.push(VolumeMount {
        name: API_ACCESS_VOLUME.into(),
        mount_path: SERVICE_ACCOUNT_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    let agent = |name: &str, args: Vec<String>| Container {
        name: name.into(),
        image: Some(images.agent.clone()),
        args: Some(args),
        env: Some(env.clone()),
        volume_mounts: Some(agent_mounts.clone()),
        ..Container::default()
    };
    let mqtt_port = listeners
        .iter()
        .find(|p| p.name.as_deref() == Some(port_names::MQTT))
        .map(|p| p.container_port)
        .unwrap_or(1883);
    let tcp_probe = |port: i32, period: i32| Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let mut haproxy_ports = listeners.clone();
    haproxy_ports.push(stats);
    haproxy_ports.push(peers);
    let haproxy = Container {
        name: "haproxy".into(),
        image: Some(images.haproxy.clone()),
        command: Some(
            [
                "haproxy",
                "-W",
                "-db",
                "-S",
                MASTER_SOCKET,
                "-f",
                &format!("{CONFIG_DIR}/haproxy.cfg"),
                "-L",
                "$(POD_NAME)",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ),
        env: Some(vec![field_env("POD_NAME", "metadata.name")]),
        ports: Some(haproxy_ports),
        readiness_probe: Some(tcp_probe(mqtt_port, 5)),
        liveness_probe: Some(tcp_probe(STATS_PORT, 10)),
        volume_mounts: Some(mounts.clone()),
        ..Container::default()
    };
    let replicas = bc.spec.load_balancer.replicas;
    let stateful_set = StatefulSet {
        metadata: meta(bc, &lb.name, &owner),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(lb.headless.clone()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(lb_selector_labels(bc)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(lb_labels(bc)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(lb.name.clone()),
                    automount_service_account_token: Some(false),
                    // The official HAProxy image runs as `haproxy` (99); the agent shares its
                    // sockets (mode 600) and its configuration directory.
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(HAPROXY_UID),
                        run_as_group: Some(HAPROXY_UID),
                        fs_group: Some(HAPROXY_UID),
                        run_as_non_root: Some(true),
                        ..PodSecurityContext::default()
                    }),
                    init_containers: Some(vec![agent(
                        "render",
                        vec!["lb-agent".into(), "--once".into()],
                    )]),
                    containers: vec![haproxy, agent("agent", vec!["lb-agent".into()])],
                    volumes: Some(vec![
                        Volume {
                            name: "run".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        },
                        Volume {
                            name: "config".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        },
                        api_access_volume(),
                    ]),
                    termination_grace_period_seconds: Some(30),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    let pdb = (replicas >= 2).then(|| PodDisruptionBudget {
        metadata: meta(bc, &lb.name, &owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(lb_selector_labels(bc)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    });
    Ok(Some(LbChildren {
        service_account,
        role,
        role_binding,
        headless_service,
        service,
        stateful_set,
        pdb,
    }))
}

/// The agent's API credentials: what Kubernetes would automount (a bound token, the cluster CA
/// and the namespace), mounted explicitly into the agent's containers only.
fn api_access_volume() -> Volume {
    Volume {
        name: API_ACCESS_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o444),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(3607),
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            ..KeyToPath::default()
                        }]),
                        ..ConfigMapProjection::default()
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "metadata.namespace".into(),
                                ..ObjectFieldSelector::default()
                            }),
                            ..DownwardAPIVolumeFile::default()
                        }]),
                    }),
                    ..VolumeProjection::default()
                },
            ]),
        }),
        ..Volume::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::*;

    fn enabled(replicas: i32) -> BrokerCluster {
        let mut bc = cluster("demo", mooring_crds::BrokerKind::Rabbitmq);
        bc.spec.load_balancer.enabled = true;
        bc.spec.load_balancer.replicas = replicas;
        bc.spec.load_balancer.service_type = mooring_crds::ServiceType::LoadBalancer;
        bc
    }

    #[test]
    fn nothing_is_built_when_disabled() {
        let bc = cluster("demo", mooring_crds::BrokerKind::Rabbitmq);
        assert_eq!(build(&bc, &layout(), &LbImages::default()), Ok(None));
    }

    #[test]
    fn haproxy_runs_with_its_agent_behind_a_service_of_the_spec_type() {
        let lb = build(&enabled(2), &layout(), &LbImages::default())
            .unwrap()
            .unwrap();
        let sts = lb.stateful_set.spec.unwrap();
        assert_eq!(sts.replicas, Some(2));
        assert_eq!(sts.service_name.as_deref(), Some("demo-lb-headless"));
        let pod = sts.template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("demo-lb"));
        let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["haproxy", "agent"]);
        let haproxy = &pod.containers[0];
        let cmd = haproxy.command.clone().unwrap();
        assert!(cmd.contains(&"-W".to_string()) && cmd.contains(&"$(POD_NAME)".to_string()));
        let ports: Vec<i32> = haproxy
            .ports
            .clone()
            .unwrap()
            .iter()
            .map(|p| p.container_port)
            .collect();
        assert!(
            ports.contains(&1883) && ports.contains(&STATS_PORT) && ports.contains(&PEERS_PORT)
        );
        assert_eq!(
            pod.init_containers.unwrap()[0].args.clone().unwrap(),
            ["lb-agent", "--once"]
        );
        let svc = lb.service.spec.unwrap();
        assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(
            svc.selector.unwrap()["app.kubernetes.io/component"],
            "load-balancer"
        );
        assert!(lb.pdb.is_some());
    }

    #[test]
    fn the_agent_may_read_only_its_cluster_its_pods_and_its_credentials() {
        let lb = build(&enabled(1), &layout(), &LbImages::default())
            .unwrap()
            .unwrap();
        let rules = lb.role.rules.unwrap();
        let secrets = rules
            .iter()
            .find(|r| r.resources.as_deref() == Some(&["secrets".to_string()][..]))
            .unwrap();
        assert_eq!(secrets.verbs, ["get"]);
        assert_eq!(
            secrets.resource_names.clone().unwrap(),
            ["demo-credentials"]
        );
        assert!(rules.iter().all(|r| !r
            .verbs
            .iter()
            .any(|v| v == "create" || v == "update" || v == "patch" || v == "delete")));
        assert!(lb.pdb.is_none(), "one replica: no budget");
    }
}
