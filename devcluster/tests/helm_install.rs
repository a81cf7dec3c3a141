//! The Helm chart end to end on a devcluster, as a user installs Mooring:
//!
//! 1. `helm install` of `charts/mooring` (the CRD from the chart's `crds/`, the image pointed at
//!    `mooring`, which devcluster runs as this build's binary): both operator Pods run and are
//!    ready, with only the chart's RBAC (their token is the chart's ServiceAccount's; nothing else
//!    is bound to it), and one holds the Lease and is the only one that ever ran the controller;
//! 2. `examples/quickstart.yaml` (3 RabbitMQ nodes and the sticky load balancer) becomes Ready
//!    with every node Joined,
//!    and neither operator Pod logged a denied (403 / forbidden) API call;
//! 3. `helm upgrade` with a changed value rolls the operator: new Pods with the value, both
//!    ready, the old ones gone;
//! 4. `helm uninstall` removes the operator but leaves the CRD and the running cluster.
//!
//! Needs root, the control-plane binaries (helm among them), Debian's `rabbitmq-server` and
//! `haproxy`, and the `mooring` binary next to `devcluster` (`cargo build -p mooring-operator`;
//! `cargo test --workspace` builds it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams};
use kube::Api;
use mooring_crds::BrokerCluster;

mod support;
use support::brokers::healthy;
use support::{wait_for, Devcluster};

const RELEASE: &str = "mooring";
const OPERATOR_NS: &str = "mooring-system";
const CLUSTER_NS: &str = "default";
const SELECTOR: &str = "app.kubernetes.io/name=mooring,app.kubernetes.io/instance=mooring";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("devcluster/ has a parent")
        .to_path_buf()
}

fn helm(dc: &Devcluster, args: &[&str]) -> String {
    let helm = match std::env::var_os("MOORING_HELM") {
        Some(h) => PathBuf::from(h),
        None => bins().join("helm"),
    };
    run(dc, helm, args)
}

fn bins() -> PathBuf {
    mooring_tests::locate_binaries().expect("the control-plane binaries")
}

/// `kubectl <args>` on the devcluster, which must succeed; its output is printed (the README
/// quotes it).
fn kubectl(dc: &Devcluster, args: &[&str]) -> String {
    run(dc, bins().join("kubectl"), args)
}

fn run(dc: &Devcluster, program: PathBuf, args: &[&str]) -> String {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = Command::new(program)
        .args(args)
        .arg("--kubeconfig")
        .arg(dc.kubeconfig())
        .env("HELM_CACHE_HOME", dc.dir.join("helm/cache"))
        .env("HELM_CONFIG_HOME", dc.dir.join("helm/config"))
        .env("HELM_DATA_HOME", dc.dir.join("helm/data"))
        .output()
        .expect("run helm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("$ {name} {} -> {}\n{text}", args.join(" "), out.status);
    assert!(out.status.success(), "{name} {} failed", args.join(" "));
    text
}

fn ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn env_value(pod: &Pod, name: &str) -> Option<String> {
    pod.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

/// The operator Pods once exactly two are ready with `RUST_LOG=<log_level>` and no other exists.
async fn operator_pods(pods: &Api<Pod>, log_level: &str) -> Vec<Pod> {
    wait_for(
        &format!("two ready operator Pods with RUST_LOG={log_level} and no others"),
        Duration::from_secs(180),
        || async {
            let list = pods
                .list(&ListParams::default().labels(SELECTOR))
                .await
                .ok()?;
            let all = list.items;
            (all.len() == 2
                && all
                    .iter()
                    .all(|p| ready(p) && env_value(p, "RUST_LOG").as_deref() == Some(log_level)))
            .then_some(all)
        },
    )
    .await
}

/// What an operator Pod logged that says the API server refused it.
fn denials(dc: &Devcluster, pod: &Pod) -> Vec<String> {
    dc.pod_log(pod, "operator")
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("forbidden") || l.contains("\"code\":403") || l.contains(" 403 ")
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_runs_the_quickstart_upgrade_rolls_and_uninstall_keeps_the_clusters() {
    let dc = Devcluster::up("helm");
    let client = dc.client().await;
    let chart = workspace().join("charts/mooring");
    let chart = chart.to_str().expect("a UTF-8 path");

    // 1. Install, as the README says (the image is this build's `mooring`).
    helm(
        &dc,
        &[
            "install",
            RELEASE,
            chart,
            "--namespace",
            OPERATOR_NS,
            "--create-namespace",
            "--set",
            "image.repository=mooring",
            "--set",
            "image.tag=dev",
            "--set",
            "operator.logFormat=text",
            "--wait",
            "--timeout",
            "180s",
        ],
    );
    dc.elapsed("helm install --wait returned");
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    let first = operator_pods(&pods, "info").await;
    for p in &first {
        let spec = p.spec.as_ref().expect("a spec");
        assert_eq!(spec.service_account_name.as_deref(), Some("mooring"));
    }
    let names: Vec<String> = first
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    let holder = wait_for(
        "an operator Pod to hold the Lease",
        Duration::from_secs(60),
        || async {
            let lease = leases.get_opt("mooring-operator").await.ok()??;
            lease.spec?.holder_identity.filter(|h| names.contains(h))
        },
    )
    .await;
    dc.elapsed(&format!("operator Pods ready, {holder} leads"));
    // The leader labels its own Pod, and only it: the dashboard Service selects that label.
    wait_for(
        "the leader label on the lease holder's Pod only",
        Duration::from_secs(60),
        || async {
            let labelled: Vec<String> = pods
                .list(&ListParams::default().labels("mooring.dev/leader=true"))
                .await
                .ok()?
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            (labelled == [holder.clone()]).then_some(())
        },
    )
    .await;

    // 2. The quickstart, unchanged, becomes Ready under the chart-installed operator.
    let text = std::fs::read_to_string(workspace().join("examples/quickstart.yaml"))
        .expect("examples/quickstart.yaml");
    let bc: BrokerCluster = serde_yaml::from_str(&text).expect("a BrokerCluster");
    let clusters: Api<BrokerCluster> = Api::namespaced(client.clone(), CLUSTER_NS);
    clusters
        .create(&PostParams::default(), &bc)
        .await
        .expect("create the quickstart BrokerCluster");
    wait_for(
        "the quickstart to be Ready with every node Joined",
        Duration::from_secs(300),
        || async { clusters.get("quickstart").await.ok().filter(healthy) },
    )
    .await;
    dc.elapsed("quickstart Ready");
    let table = kubectl(&dc, &["get", "brokerclusters", "-n", CLUSTER_NS]);
    assert!(table.contains("quickstart"), "{table}");
    kubectl(&dc, &["explain", "brokercluster.spec"]);
    // Leader election held: exactly one of the two replicas ever ran the controller.
    let leaders: Vec<_> = first
        .iter()
        .filter(|p| {
            dc.pod_log(p, "operator")
                .contains("leading: starting the controller")
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(leaders, vec![holder.clone()], "the replicas that led");
    for p in &first {
        let denied = denials(&dc, p);
        assert!(
            denied.is_empty(),
            "{:?} was refused by the API server:\n{}",
            p.metadata.name,
            denied.join("\n")
        );
    }

    // 3. An upgrade with a changed value rolls the Deployment.
    helm(
        &dc,
        &[
            "upgrade",
            RELEASE,
            chart,
            "--namespace",
            OPERATOR_NS,
            "--reuse-values",
            "--set",
            "operator.logLevel=debug",
            "--wait",
            "--timeout",
            "180s",
        ],
    );
    let second = operator_pods(&pods, "debug").await;
    for p in &second {
        assert!(
            !names.contains(p.metadata.name.as_ref().expect("a name")),
            "{:?} was not replaced",
            p.metadata.name
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NS);
    let dep = deployments.get(RELEASE).await.expect("the Deployment");
    assert_eq!(dep.metadata.generation, Some(2));
    dc.elapsed("helm upgrade rolled the operator");

    // 4. Uninstall: the operator goes, the CRD and the cluster stay.
    helm(
        &dc,
        &["uninstall", RELEASE, "--namespace", OPERATOR_NS, "--wait"],
    );
    wait_for(
        "the operator Pods to go",
        Duration::from_secs(120),
        || async {
            let list = pods
                .list(&ListParams::default().labels(SELECTOR))
                .await
                .ok()?;
            list.items.is_empty().then_some(())
        },
    )
    .await;
    assert!(deployments.get_opt(RELEASE).await.expect("read").is_none());
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(
        crds.get_opt("brokerclusters.mooring.dev")
            .await
            .expect("read the CRD")
            .is_some(),
        "helm uninstall removed the CRD"
    );
    let bc = clusters
        .get("quickstart")
        .await
        .expect("the quickstart BrokerCluster is still there");
    assert!(bc.metadata.deletion_timestamp.is_none());
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), CLUSTER_NS);
    let sts = sts.get("quickstart").await.expect("its StatefulSet");
    assert_eq!(sts.status.and_then(|s| s.ready_replicas), Some(3));
    kubectl(
        &dc,
        &["get", "brokerclusters,statefulsets", "-n", CLUSTER_NS],
    );
    dc.elapsed("helm uninstall kept the CRD and the running cluster");
}
