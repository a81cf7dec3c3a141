//! The StatefulSet running the broker nodes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec,
    SecretVolumeSource, Volume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use mooring_crds::{BrokerCluster, VolumeReclaimPolicy};

use super::{child_meta, labels, selector_labels, ChildNames, CONFIG_CHECKSUM_ANNOTATION};
use crate::broker_config::{
    config_file_mounts, pod_security_context, tls_mounts, BrokerLayout, TLS_SECRET_MODE,
};

/// Name of the data volume (and of the volumeClaimTemplate when persistence is on).
pub const DATA_VOLUME: &str = "data";
const CONFIG_VOLUME: &str = "config";
const SECRET_VOLUME: &str = "credentials";
/// Owner-only read: the Erlang cookie is refused by the VM with any wider mode.
const SECRET_MODE: i32 = 0o400;

/// The broker StatefulSet. `checksum` is [`super::config_checksum`] of the layout; it is set on the
/// Pod template so that a configuration change rolls the Pods.
pub fn stateful_set(
    bc: &BrokerCluster,
    names: &ChildNames,
    owner: &OwnerReference,
    layout: &BrokerLayout,
    checksum: &str,
) -> StatefulSet {
    let spec = &bc.spec;
    let persistence = &spec.persistence;
    let mut env = layout.env.clone();
    env.extend(spec.env.iter().cloned());

    let mut mounts = vec![
        VolumeMount {
            name: CONFIG_VOLUME.into(),
            mount_path: layout.config_mount_path.clone(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: SECRET_VOLUME.into(),
            mount_path: layout.secret_mount_path.clone(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: layout.data_mount_path.clone(),
            ..VolumeMount::default()
        },
    ];
    // Files the broker only reads from a fixed path (EMQX's etc/emqx.conf).
    mounts.extend(
        config_file_mounts(spec.broker.kind)
            .into_iter()
            .map(|f| VolumeMount {
                name: CONFIG_VOLUME.into(),
                mount_path: f.mount_path.into(),
                sub_path: Some(f.file.into()),
                read_only: Some(true),
                ..VolumeMount::default()
            }),
    );
    let tls = tls_mounts(spec);
    for t in &tls {
        mounts.push(VolumeMount {
            name: tls_volume(t.listener),
            mount_path: t.mount_path.clone(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let container = Container {
        name: spec.broker.kind.as_str().to_string(),
        image: Some(layout.image.clone()),
        command: non_empty(&layout.command),
        args: non_empty(&layout.args),
        env: non_empty(&env),
        ports: non_empty(&layout.ports),
        readiness_probe: Some(layout.readiness_probe.clone()),
        liveness_probe: Some(layout.liveness_probe.clone()),
        startup_probe: layout.startup_probe.clone(),
        resources: spec.resources.clone(),
        volume_mounts: Some(mounts),
        // A broker that fails with a non-zero exit leaves its last log lines in
        // `lastState.terminated.message` (`kubectl describe pod` shows why it crashed).
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };

    let mut volumes = vec![
        Volume {
            name: CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config_map.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: SECRET_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.secret.clone()),
                default_mode: Some(SECRET_MODE),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    volumes.extend(tls.iter().map(|t| Volume {
        name: tls_volume(t.listener),
        secret: Some(SecretVolumeSource {
            secret_name: Some(t.secret_name.clone()),
            default_mode: Some(TLS_SECRET_MODE),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }));
    let claim_templates = if persistence.enabled {
        Some(vec![data_claim_template(bc)])
    } else {
        volumes.push(Volume {
            name: DATA_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        None
    };

    let pod_labels = labels(bc);
    let pod_spec = PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
        tolerations: non_empty(&spec.tolerations),
        affinity: Some(
            spec.affinity
                .clone()
                .unwrap_or_else(|| spread_over_nodes(bc)),
        ),
        termination_grace_period_seconds: Some(layout.termination_grace_period_seconds),
        enable_service_links: Some(false),
        security_context: pod_security_context(spec.broker.kind),
        ..PodSpec::default()
    };

    StatefulSet {
        metadata: child_meta(bc, &names.stateful_set, owner),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(names.cluster.headless_service.clone()),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector_labels(bc)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_CHECKSUM_ANNOTATION.to_string(),
                        checksum.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            volume_claim_templates: claim_templates,
            persistent_volume_claim_retention_policy: persistence.enabled.then(|| {
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(reclaim(persistence.reclaim_policy).into()),
                    when_scaled: Some("Retain".into()),
                }
            }),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn tls_volume(listener: &str) -> String {
    format!("tls-{listener}")
}

fn reclaim(p: VolumeReclaimPolicy) -> &'static str {
    match p {
        VolumeReclaimPolicy::Retain => "Retain",
        VolumeReclaimPolicy::Delete => "Delete",
    }
}

fn data_claim_template(bc: &BrokerCluster) -> PersistentVolumeClaim {
    let p = &bc.spec.persistence;
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(selector_labels(bc)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: p.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: p
                    .size
                    .clone()
                    .map(|size| BTreeMap::from([("storage".to_string(), size)])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// Prefer one broker node per Kubernetes node, so that losing a node costs one member.
fn spread_over_nodes(bc: &BrokerCluster) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(bc)),
                            ..LabelSelector::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn non_empty<T: Clone>(v: &[T]) -> Option<Vec<T>> {
    (!v.is_empty()).then(|| v.to_vec())
}

/// Whether an existing StatefulSet's immutable claim templates differ from the desired ones, so
/// that it must be replaced (deleted with orphaned Pods, then created again).
pub fn claim_templates_changed(existing: &StatefulSet, desired: &StatefulSet) -> bool {
    let summary = |s: &StatefulSet| -> Vec<(Option<String>, Option<String>, Option<String>)> {
        s.spec
            .as_ref()
            .and_then(|s| s.volume_claim_templates.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|t| {
                let spec = t.spec.unwrap_or_default();
                let size = spec
                    .resources
                    .and_then(|r| r.requests)
                    .and_then(|r| r.get("storage").map(|q| q.0.clone()));
                (t.metadata.name, spec.storage_class_name, size)
            })
            .collect()
    };
    summary(existing) != summary(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::*;
    use crate::resources::owner_reference;
    use k8s_openapi::api::core::v1::EnvVar;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn build(bc: &BrokerCluster) -> StatefulSet {
        let names = ChildNames::of(bc).unwrap();
        stateful_set(bc, &names, &owner_reference(bc).unwrap(), &layout(), "sum1")
    }

    #[test]
    fn pods_start_in_parallel_behind_the_headless_service() {
        let bc = cluster("demo", mooring_crds::BrokerKind::Rabbitmq);
        let spec = build(&bc).spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("demo-headless"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let tmpl = spec.template;
        assert_eq!(
            tmpl.metadata.unwrap().annotations.unwrap()[CONFIG_CHECKSUM_ANNOTATION],
            "sum1"
        );
        let pod = tmpl.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.name, "rabbitmq");
        assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
        assert_eq!(pod.termination_grace_period_seconds, Some(60));
    }

    #[test]
    fn without_persistence_data_lives_in_an_empty_dir() {
        let bc = cluster("demo", mooring_crds::BrokerKind::Rabbitmq);
        let spec = build(&bc).spec.unwrap();
        assert!(spec.volume_claim_templates.is_none());
        let vols = spec.template.spec.unwrap().volumes.unwrap();
        let data = vols.iter().find(|v| v.name == DATA_VOLUME).unwrap();
        assert!(data.empty_dir.is_some());
        let secret = vols.iter().find(|v| v.name == SECRET_VOLUME).unwrap();
        assert_eq!(secret.secret.as_ref().unwrap().default_mode, Some(0o400));
    }

    #[test]
    fn with_persistence_each_node_gets_a_claim_that_follows_the_reclaim_policy() {
        let mut bc = cluster("demo", mooring_crds::BrokerKind::Rabbitmq);
        bc.spec.persistence.enabled = true;
        bc.spec.persistence.size = Some(Quantity("2Gi".into()));
        bc.spec.persistence.storage_class_name = Some("fast".into());
        bc.spec.persistence.reclaim_policy = VolumeReclaimPolicy::Delete;
        let spec = build(&bc).spec.unwrap();
        let claims = spec.volume_claim_templates.unwrap();
        assert_eq!(claims.len(), 1);
        let c = claims[0].spec.clone().unwrap();
        assert_eq!(c.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            c.resources.unwrap().requests.unwrap()["storage"],
            Quantity("2Gi".into())
        );
        let policy = spec.persistent_volume_claim_retention_policy.unwrap();
        assert_eq!(policy.when_deleted.as_deref(), Some("Delete"));
        assert_eq!(policy.when_scaled.as_deref(), Some("Retain"));
        let vols = spec.template.spec.unwrap().volumes.unwrap();
        assert!(vols.iter().all(|v| v.name != DATA_VOLUME));
    }

    #[test]
    fn user_env_comes_after_mooring_env_and_scheduling_is_passed_through() {
        let mut bc = cluster("demo", mooring_crds::BrokerKind::Emqx);
        bc.spec.env = vec![EnvVar {
            name: "EXTRA".into(),
            value: Some("1".into()),
            ..EnvVar::default()
        }];
        bc.spec.node_selector = BTreeMap::from([("disk".into(), "ssd".into())]);
        let pod = build(&bc).spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.containers[0].env.as_ref().unwrap().last().unwrap().name,
            "EXTRA"
        );
        assert_eq!(pod.node_selector.unwrap()["disk"], "ssd");
        assert!(pod.affinity.unwrap().pod_anti_affinity.is_some());
    }

    #[test]
    fn tls_listeners_mount_their_secrets_and_emqx_gets_its_config_file_and_fs_group() {
        let mut bc = cluster("demo", mooring_crds::BrokerKind::Emqx);
        bc.spec.listeners.tls = Some(mooring_crds::TlsListenerSpec {
            port: 8883,
            secret_ref: mooring_crds::SecretRef {
                name: "demo-tls".into(),
                key: None,
            },
        });
        let pod = build(&bc).spec.unwrap().template.spec.unwrap();
        let vol = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("demo-tls"))
            .expect("a volume for the TLS Secret");
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        let tls = mounts.iter().find(|m| m.name == vol.name).unwrap();
        assert!(tls.mount_path.ends_with("/mqtts"), "{}", tls.mount_path);
        assert!(mounts
            .iter()
            .any(|m| m.sub_path.as_deref() == Some("emqx.conf")
                && m.mount_path == "/opt/emqx/etc/emqx.conf"));
        assert!(pod.security_context.and_then(|s| s.fs_group).is_some());
    }

    #[test]
    fn a_rabbitmq_pod_gets_no_fs_group_that_would_widen_the_cookie_mode() {
        let bc = cluster("demo", mooring_crds::BrokerKind::Rabbitmq);
        let pod = build(&bc).spec.unwrap().template.spec.unwrap();
        assert!(pod.security_context.is_none());
    }

    #[test]
    fn a_changed_claim_size_requires_replacing_the_stateful_set() {
        let mut bc = cluster("demo", mooring_crds::BrokerKind::Rabbitmq);
        bc.spec.persistence.enabled = true;
        bc.spec.persistence.size = Some(Quantity("1Gi".into()));
        let a = build(&bc);
        assert!(!claim_templates_changed(&a, &a));
        bc.spec.persistence.size = Some(Quantity("2Gi".into()));
        assert!(claim_templates_changed(&a, &build(&bc)));
        bc.spec.persistence.enabled = false;
        assert!(claim_templates_changed(&a, &build(&bc)));
    }
}
