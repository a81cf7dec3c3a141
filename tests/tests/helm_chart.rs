//! The Helm chart (`charts/mooring`) against its sources and a real kube-apiserver:
//!
//! - its CRD is the generated `crds/brokercluster.yaml`, byte for byte;
//! - `helm lint --strict` passes in both RBAC modes, and the values schema rejects bad values;
//! - `helm template` output (CRD included) and `examples/*.yaml` pass a server-side dry-run apply
//!   with strict field validation, in both RBAC modes;
//! - no Role or ClusterRole has a wildcard, and the rules bound to the operator's ServiceAccount
//!   are exactly `mooring_operator::rbac::OPERATOR_PERMISSIONS`, in the right namespaces;
//! - the operator, run in-process as the chart's ServiceAccount (a real token, only the chart's
//!   RBAC), reconciles a BrokerCluster with the load balancer to all its children and status, and
//!   the API server's audit log shows not one request of that ServiceAccount denied.
//!
//! helm: `MOORING_HELM`, else `helm` in the control-plane binaries directory (`MOORING_K8S_BINS`,
//! which `scripts/test` sets from `scripts/setup.sh`, or the cache that
//! `scripts/build-control-plane.sh` fills).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::{pinned_kind, Scope as ResourceScope};
use kube::{Api, Client};
use mooring_crds::BrokerCluster;
use mooring_dashboard::auth::Auth;
use mooring_dashboard::backend::{Backend, BackendError};
use mooring_operator::context::State;
use mooring_operator::controller::Scope;
use mooring_operator::dashboard::users::keep_loaded;
use mooring_operator::dashboard::OperatorBackend;
use mooring_operator::leader::LeaseConfig;
use mooring_operator::rbac::{PermissionScope, OPERATOR_PERMISSIONS};
use mooring_operator::runner::{lead_and_control, wait_for_crd};
use mooring_tests::{
    create_namespace, install_crd, ControlPlane, ControlPlaneOptions, SharedControlPlane,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

static CP: SharedControlPlane = SharedControlPlane::new(ControlPlaneOptions::default);

const RELEASE: &str = "mooring";
const RELEASE_NS: &str = "mooring-system";
/// The ServiceAccount (and ClusterRole) name for release `mooring`: the chart's full name.
const SERVICE_ACCOUNT: &str = "mooring";
const FIELD_MANAGER: &str = "mooring-helm-test";
const TIMEOUT: Duration = Duration::from_secs(60);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn chart_dir() -> PathBuf {
    workspace().join("charts/mooring")
}

fn helm() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("MOORING_HELM") {
        return Ok(PathBuf::from(h));
    }
    let helm = mooring_tests::locate_binaries()?.join("helm");
    ensure!(
        helm.is_file(),
        "{} is missing: run scripts/build-control-plane.sh",
        helm.display()
    );
    Ok(helm)
}

/// Runs helm; Ok(stdout) on success, Err with stderr otherwise.
fn run_helm(args: &[&str]) -> Result<String> {
    let out = Command::new(helm()?)
        .args(args)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("mooring-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("mooring-helm-config"),
        )
        .output()
        .context("cannot run helm")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "helm {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// Every non-empty YAML document of `text`, as JSON.
fn documents(text: &str) -> Result<Vec<Value>> {
    use serde::Deserialize as _;
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(de).context("invalid YAML")?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The two RBAC modes the chart has.
#[derive(Clone, Copy, Debug)]
enum Mode {
    ClusterWide,
    /// Watches the namespaces of `WATCHED_NS` only.
    Namespaced,
}

/// The namespaces a namespaced install watches: two, so that one watch per namespace is tested.
const WATCHED_NS: [&str; 2] = ["iot", "factory"];

impl Mode {
    fn values(self) -> Vec<String> {
        match self {
            Mode::ClusterWide => vec![],
            Mode::Namespaced => vec![
                "--set".into(),
                format!("watchNamespaces={{{}}}", WATCHED_NS.join(",")),
            ],
        }
    }

    /// Where the operator's `Watched` permissions apply: `None` for cluster-wide.
    /// The namespaces watched; empty for all.
    fn watched(self) -> Vec<String> {
        match self {
            Mode::ClusterWide => vec![],
            Mode::Namespaced => WATCHED_NS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// `helm template` of the chart for `mode` (with its CRD when `crds`), as JSON documents.
fn template(mode: Mode, crds: bool, extra: &[&str]) -> Result<Vec<Value>> {
    let chart = chart_dir();
    let mut args: Vec<String> = vec![
        "template".into(),
        RELEASE.into(),
        chart.display().to_string(),
        "--namespace".into(),
        RELEASE_NS.into(),
    ];
    if crds {
        args.push("--include-crds".into());
    }
    args.extend(mode.values());
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    documents(&run_helm(&refs)?)
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// One granted right: (namespace or `None` for cluster-wide, group, resource, verb).
type Grant = (Option<String>, String, String, String);

/// Every right the chart's bindings give `system:serviceaccount:<sa_ns>:<sa>`.
fn granted_to(docs: &[Value], sa_ns: &str, sa: &str) -> Result<BTreeSet<Grant>> {
    let mut grants = BTreeSet::new();
    for b in docs
        .iter()
        .filter(|d| matches!(kind(d), "ClusterRoleBinding" | "RoleBinding"))
    {
        let binds_sa =
            b["subjects"].as_array().into_iter().flatten().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == sa_ns
            });
        if !binds_sa {
            continue;
        }
        let ns = (kind(b) == "RoleBinding")
            .then(|| b["metadata"]["namespace"].as_str().map(str::to_string))
            .flatten();
        let role_kind = b["roleRef"]["kind"].as_str().unwrap_or_default();
        let role_name = b["roleRef"]["name"].as_str().unwrap_or_default();
        let role = docs
            .iter()
            .find(|d| {
                kind(d) == role_kind
                    && name(d) == role_name
                    && (role_kind == "ClusterRole"
                        || d["metadata"]["namespace"] == b["metadata"]["namespace"])
            })
            .with_context(|| {
                format!(
                    "{} {} binds a missing {role_kind} {role_name}",
                    kind(b),
                    name(b)
                )
            })?;
        for rule in role["rules"].as_array().into_iter().flatten() {
            ensure!(
                rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
                "unexpected rule shape in {role_name}: {rule}"
            );
            for g in strings(&rule["apiGroups"]) {
                for r in strings(&rule["resources"]) {
                    for v in strings(&rule["verbs"]) {
                        grants.insert((ns.clone(), g.clone(), r.clone(), v));
                    }
                }
            }
        }
    }
    Ok(grants)
}

/// What the operator needs in `mode` (its release in `RELEASE_NS`).
fn needed(mode: Mode) -> BTreeSet<Grant> {
    let mut needed = BTreeSet::new();
    for p in OPERATOR_PERMISSIONS {
        let namespaces: Vec<Option<String>> = match p.scope {
            PermissionScope::Watched if mode.watched().is_empty() => vec![None],
            PermissionScope::Watched => mode.watched().into_iter().map(Some).collect(),
            PermissionScope::OperatorNamespace => vec![Some(RELEASE_NS.to_string())],
        };
        for ns in namespaces {
            for v in p.verbs {
                needed.insert((ns.clone(), p.group.into(), p.resource.into(), v.to_string()));
            }
        }
    }
    needed
}

#[test]
fn the_charts_crd_is_the_generated_crd() -> Result<()> {
    let generated = std::fs::read_to_string(workspace().join("crds/brokercluster.yaml"))?;
    let in_chart = std::fs::read_to_string(chart_dir().join("crds/brokercluster.yaml"))?;
    ensure!(
        generated == in_chart,
        "charts/mooring/crds/brokercluster.yaml differs from crds/brokercluster.yaml; run \
         cp crds/brokercluster.yaml charts/mooring/crds/"
    );
    Ok(())
}

#[test]
fn helm_lint_passes_in_both_modes_and_the_schema_rejects_bad_values() -> Result<()> {
    let chart = chart_dir().display().to_string();
    run_helm(&["lint", "--strict", &chart])?;
    run_helm(&[
        "lint",
        "--strict",
        &chart,
        "--set",
        "watchNamespaces={iot,factory}",
    ])?;
    run_helm(&["lint", "--strict", &chart, "--set", "ingress.enabled=true"])?;
    for bad in [
        "replicaCount=-1",
        "operator.logFormat=xml",
        "watchNamespaces={iot,iot}",
        "watchNamespaces={Not_A_Namespace}",
        "service.port=70000",
        "unknownValue=1",
    ] {
        let err = run_helm(&["lint", &chart, "--set", bad])
            .err()
            .with_context(|| format!("helm lint accepted --set {bad}"))?;
        ensure!(
            format!("{err:#}").contains("values don't meet the specifications of the schema"),
            "--set {bad} failed, but not on the schema: {err:#}"
        );
    }
    Ok(())
}

#[test]
fn the_deployment_is_hardened_and_runs_two_leader_elected_replicas() -> Result<()> {
    let docs = template(Mode::ClusterWide, false, &[])?;
    let dep = docs
        .iter()
        .find(|d| kind(d) == "Deployment")
        .context("no Deployment")?;
    let spec = &dep["spec"]["template"]["spec"];
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(spec["automountServiceAccountToken"], false);
    let c = &spec["containers"][0];
    assert_eq!(c["image"], "ghcr.io/mooring-dev/mooring:0.1.0");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    let env: Vec<&str> = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for needed in [
        "POD_NAME",
        "POD_NAMESPACE",
        "MOORING_LEASE_NAME",
        "MOORING_AGENT_IMAGE",
    ] {
        assert!(env.contains(&needed), "{needed} missing from {env:?}");
    }
    assert!(!env.contains(&"MOORING_WATCH_NAMESPACE"));
    let token = &spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["path"], "token");

    // A changed image tag changes the Pod template (`helm upgrade` rolls the operator), and the
    // agent sidecar follows the operator's image.
    let docs = template(Mode::Namespaced, false, &["--set", "image.tag=0.2.0"])?;
    let dep = docs
        .iter()
        .find(|d| kind(d) == "Deployment")
        .context("no Deployment")?;
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "ghcr.io/mooring-dev/mooring:0.2.0");
    let env = c["env"].as_array().context("env")?;
    assert!(env.contains(
        &json!({"name": "MOORING_AGENT_IMAGE", "value": "ghcr.io/mooring-dev/mooring:0.2.0"})
    ));
    assert!(env.contains(&json!({"name": "MOORING_WATCH_NAMESPACE", "value": "iot,factory"})));
    Ok(())
}

#[test]
fn no_role_has_a_wildcard_and_the_operator_gets_exactly_the_permissions_it_uses() -> Result<()> {
    for mode in [Mode::ClusterWide, Mode::Namespaced] {
        let docs = template(mode, false, &["--set", "ingress.enabled=true"])?;
        let roles: Vec<&Value> = docs
            .iter()
            .filter(|d| matches!(kind(d), "ClusterRole" | "Role"))
            .collect();
        ensure!(!roles.is_empty(), "{mode:?}: no roles rendered");
        for role in &roles {
            for rule in role["rules"].as_array().into_iter().flatten() {
                for field in ["apiGroups", "resources", "verbs", "nonResourceURLs"] {
                    ensure!(
                        !strings(&rule[field]).iter().any(|s| s.contains('*')),
                        "{mode:?}: {} {} has a wildcard in {field}: {rule}",
                        kind(role),
                        name(role)
                    );
                }
            }
        }
        let granted = granted_to(&docs, RELEASE_NS, SERVICE_ACCOUNT)?;
        let needed = needed(mode);
        let missing: Vec<_> = needed.difference(&granted).collect();
        let extra: Vec<_> = granted.difference(&needed).collect();
        ensure!(
            missing.is_empty() && extra.is_empty(),
            "{mode:?}: the chart's RBAC differs from OPERATOR_PERMISSIONS (operator/src/rbac.rs)\n\
             missing: {missing:#?}\nextra: {extra:#?}"
        );
        if let Mode::Namespaced = mode {
            ensure!(
                !docs.iter().any(|d| kind(d) == "ClusterRoleBinding"),
                "namespaced mode binds a ClusterRole"
            );
        }
    }
    Ok(())
}

/// Server-side applies `doc` (in `ns` unless it names its own namespace or is cluster-scoped),
/// with strict field validation; `dry_run` leaves nothing behind.
async fn apply_doc(client: &Client, doc: &Value, ns: &str, dry_run: bool) -> Result<()> {
    let api_version = doc["apiVersion"].as_str().context("no apiVersion")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind(doc));
    let (resource, caps) = pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the API server does not serve {api_version} {}", kind(doc)))?;
    let api: Api<DynamicObject> = match caps.scope {
        ResourceScope::Cluster => Api::all_with(client.clone(), &resource),
        ResourceScope::Namespaced => {
            let ns = doc["metadata"]["namespace"].as_str().unwrap_or(ns);
            Api::namespaced_with(client.clone(), ns, &resource)
        }
    };
    let mut params = PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation_strict();
    if dry_run {
        params = params.dry_run();
    }
    api.patch(name(doc), &params, &Patch::Apply(doc))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => {
                anyhow::anyhow!("{} {}: {} ({})", kind(doc), name(doc), s.message, s.code)
            }
            e => anyhow::Error::new(e).context(format!("{} {}", kind(doc), name(doc))),
        })?;
    Ok(())
}

async fn helm_template_async(mode: Mode, crds: bool, extra: Vec<String>) -> Result<Vec<Value>> {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
        template(mode, crds, &refs)
    })
    .await?
}

#[tokio::test]
async fn the_rendered_chart_and_the_examples_pass_a_server_side_dry_run() -> Result<()> {
    let cp = CP.get().await?;
    let client = cp.client().await?;
    install_crd(&client).await?;
    for ns in [RELEASE_NS, "examples"].into_iter().chain(WATCHED_NS) {
        create_namespace(&client, ns).await?;
    }
    for mode in [Mode::ClusterWide, Mode::Namespaced] {
        let extra = vec!["--set".to_string(), "ingress.enabled=true".to_string()];
        let docs = helm_template_async(mode, true, extra).await?;
        ensure!(docs.len() >= 8, "{mode:?}: only {} documents", docs.len());
        for doc in &docs {
            apply_doc(&client, doc, RELEASE_NS, true)
                .await
                .with_context(|| format!("{mode:?}"))?;
        }
    }
    let mut examples = 0;
    for entry in std::fs::read_dir(workspace().join("examples"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let docs = documents(&std::fs::read_to_string(&path)?)?;
            for doc in &docs {
                apply_doc(&client, doc, "examples", true)
                    .await
                    .with_context(|| path.display().to_string())?;
            }
            examples += 1;
        }
    }
    ensure!(examples >= 2, "only {examples} examples");
    Ok(())
}

/// Asks the API server whether the operator's ServiceAccount may do `verb` on `resource`.
async fn allowed(
    admin: &Client,
    ns: Option<&str>,
    group: &str,
    resource: &str,
    verb: &str,
) -> Result<bool> {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r.to_string(), Some(s.to_string())),
        None => (resource.to_string(), None),
    };
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!(
                "system:serviceaccount:{RELEASE_NS}:{SERVICE_ACCOUNT}"
            )),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{RELEASE_NS}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: ns.map(str::to_string),
                group: Some(group.into()),
                resource: Some(resource),
                subresource,
                verb: Some(verb.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(admin.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// The audit log's requests of `user` that were answered 403.
fn denied_requests(audit_log: &Path, user: &str) -> Result<(usize, Vec<String>)> {
    let text = std::fs::read_to_string(audit_log)
        .with_context(|| format!("cannot read {}", audit_log.display()))?;
    let mut seen = 0;
    let mut denied = Vec::new();
    for line in text.lines() {
        let Ok(ev) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if ev["user"]["username"] != user {
            continue;
        }
        seen += 1;
        if ev["responseStatus"]["code"] == 403 {
            denied.push(format!("{} {}", ev["verb"], ev["requestURI"]));
        }
    }
    Ok((seen, denied))
}

async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut last = None;
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(format!("{e:#}")),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what} (last error: {last:?})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A control plane that writes an audit log (every request, metadata level).
async fn audited_control_plane() -> Result<(ControlPlane, PathBuf, tempdir::Dir)> {
    let dir = tempdir::Dir::new("mooring-helm-audit")?;
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n",
    )?;
    let log = dir.path().join("audit.log");
    let opts = ControlPlaneOptions {
        apiserver_args: vec![
            format!("--audit-policy-file={}", policy.display()),
            format!("--audit-log-path={}", log.display()),
            "--audit-log-mode=blocking".into(),
        ],
        ..ControlPlaneOptions::default()
    };
    let cp = ControlPlane::start(opts).await?;
    Ok((cp, log, dir))
}

/// Minimal temporary directory (no new dependency).
mod tempdir {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(prefix: &str) -> std::io::Result<Self> {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default();
            let p = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p)?;
            Ok(Self(p))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            if std::env::var_os(mooring_tests::KEEP_STATE_ENV).is_none() {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}

/// Installs the chart's objects for real (as `helm install` would; the Deployment included,
/// though no kubelet runs it), runs the operator in-process as the chart's ServiceAccount, and
/// checks what it achieved and that the API server never denied it anything.
async fn operator_runs_with_only_the_charts_rbac(mode: Mode) -> Result<()> {
    let (cp, audit_log, _dir) = audited_control_plane().await?;
    let admin = cp.client().await?;
    // Cluster-wide, the clusters go to "brokers"; namespaced, one to each watched namespace, and
    // one to "elsewhere", which the operator must leave alone.
    let watched = mode.watched();
    let cluster_namespaces: Vec<String> = if watched.is_empty() {
        vec!["brokers".into()]
    } else {
        watched.clone()
    };
    let watched_ns = cluster_namespaces[0].as_str();
    for ns in [RELEASE_NS, "elsewhere"]
        .into_iter()
        .chain(cluster_namespaces.iter().map(String::as_str))
    {
        create_namespace(&admin, ns).await?;
    }
    for doc in helm_template_async(mode, true, vec![]).await? {
        apply_doc(&admin, &doc, RELEASE_NS, false).await?;
    }
    install_crd(&admin).await?; // waits until the chart's CRD is Established

    // Every permission of the table, asked of the RBAC authorizer: allowed where it should be.
    for p in OPERATOR_PERMISSIONS {
        let namespaces: Vec<&str> = match p.scope {
            PermissionScope::Watched => cluster_namespaces.iter().map(String::as_str).collect(),
            PermissionScope::OperatorNamespace => vec![RELEASE_NS],
        };
        for ns in namespaces {
            for v in p.verbs {
                ensure!(
                    allowed(&admin, Some(ns), p.group, p.resource, v).await?,
                    "{mode:?}: the chart does not allow {v} {}/{} in {ns}",
                    p.group,
                    p.resource
                );
            }
        }
    }
    // And a few it must not have.
    for (ns, group, resource, verb) in [
        (
            Some("kube-system"),
            "coordination.k8s.io",
            "leases",
            "patch",
        ),
        (Some(watched_ns), "", "pods", "update"),
        (Some(watched_ns), "", "pods/exec", "create"),
        (None, "rbac.authorization.k8s.io", "clusterroles", "create"),
        (None, "", "nodes", "list"),
        (
            Some(watched_ns),
            "rbac.authorization.k8s.io",
            "roles",
            "escalate",
        ),
        (
            Some(watched_ns),
            "rbac.authorization.k8s.io",
            "roles",
            "bind",
        ),
    ] {
        ensure!(
            !allowed(&admin, ns, group, resource, verb).await?,
            "{mode:?}: the operator may {verb} {group}/{resource} in {ns:?}"
        );
    }
    if let Mode::Namespaced = mode {
        ensure!(
            !allowed(&admin, Some("elsewhere"), "", "secrets", "get").await?,
            "namespaced mode: the operator can read Secrets outside {WATCHED_NS:?}"
        );
    }

    // The operator itself, authenticated with a real token of the chart's ServiceAccount.
    let sa_client = cp
        .client_for_service_account(RELEASE_NS, SERVICE_ACCOUNT)
        .await?;
    let stop = CancellationToken::new();
    ensure!(
        tokio::time::timeout(TIMEOUT, wait_for_crd(&sa_client, &watched, &stop))
            .await
            .unwrap_or(false),
        "{mode:?}: the operator cannot list BrokerClusters with the chart's RBAC"
    );
    let lease = LeaseConfig {
        name: "mooring-operator".into(),
        namespace: RELEASE_NS.into(),
        identity: "mooring-0".into(),
        duration: Duration::from_secs(15),
    };
    let scope = Scope {
        namespaces: watched.clone(),
        ..Scope::default()
    };
    let task = {
        let (client, stop) = (sa_client.clone(), stop.clone());
        tokio::spawn(
            async move { lead_and_control(client, State::new(), lease, scope, &stop).await },
        )
    };

    let bc: BrokerCluster = serde_json::from_value(json!({
        "apiVersion": "mooring.dev/v1alpha1",
        "kind": "BrokerCluster",
        "metadata": {"name": "bus"},
        "spec": {
            "broker": {"kind": "rabbitmq", "version": "3.10.8"},
            "replicas": 3,
            "auth": {"allowAnonymous": true},
            "loadBalancer": {"enabled": true, "replicas": 2},
        },
    }))?;
    let mut all_namespaces = cluster_namespaces.clone();
    if !watched.is_empty() {
        all_namespaces.push("elsewhere".into());
    }
    for ns in &all_namespaces {
        Api::<BrokerCluster>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &bc)
            .await?;
    }
    let result = async {
        for ns in &cluster_namespaces {
            let clusters: Api<BrokerCluster> = Api::namespaced(admin.clone(), ns);
            eventually(&format!("the status of {ns}/bus to be written"), || async {
                let bc = clusters.get("bus").await?;
                let observed = bc.status.as_ref().and_then(|s| s.observed_generation);
                Ok((observed.is_some() && observed == bc.metadata.generation).then_some(()))
            })
            .await?;
            for sts in ["bus", "bus-lb"] {
                eventually(&format!("StatefulSet {ns}/{sts}"), || async {
                    Ok(Api::<StatefulSet>::namespaced(admin.clone(), ns)
                        .get_opt(sts)
                        .await?)
                })
                .await?;
            }
        }
        if !watched.is_empty() {
            // Every watched namespace is done, so the unwatched one had its chance too.
            let other = Api::<BrokerCluster>::namespaced(admin.clone(), "elsewhere")
                .get("bus")
                .await?;
            ensure!(
                other.status.is_none(),
                "the operator touched a cluster outside its namespaces"
            );
            ensure!(
                Api::<StatefulSet>::namespaced(admin.clone(), "elsewhere")
                    .get_opt("bus")
                    .await?
                    .is_none(),
                "the operator created a StatefulSet outside its namespaces"
            );
        }
        // The load balancer's Role: created by the operator without `escalate`, because it holds
        // every right it grants.
        eventually("the load balancer's Role", || async {
            Ok(Api::<Role>::namespaced(admin.clone(), watched_ns)
                .get_opt("bus-lb")
                .await?)
        })
        .await?;
        let lease: Lease = Api::namespaced(admin.clone(), RELEASE_NS)
            .get("mooring-operator")
            .await?;
        ensure!(
            lease.spec.and_then(|s| s.holder_identity).as_deref() == Some("mooring-0"),
            "the operator does not hold the Lease"
        );
        dashboard_works_with_the_charts_rbac(&admin, &sa_client, &watched, watched_ns, &stop)
            .await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    stop.cancel();
    let stopped = tokio::time::timeout(TIMEOUT, task).await;
    result.with_context(|| format!("{mode:?}"))?;
    stopped.context("the operator did not stop")???;

    let user = format!("system:serviceaccount:{RELEASE_NS}:{SERVICE_ACCOUNT}");
    let (seen, denied) = denied_requests(&audit_log, &user)?;
    ensure!(
        seen > 20,
        "{mode:?}: only {seen} requests of {user} in the audit log"
    );
    ensure!(
        denied.is_empty(),
        "{mode:?}: the API server denied the operator:\n{}",
        denied.join("\n")
    );
    eprintln!("{mode:?}: {seen} requests of the operator, none denied");
    Ok(())
}

/// The dashboard's calls, made with the chart's ServiceAccount: the users Secret is watched in
/// the release namespace, a cluster's page lists its Events, and the metered topics are patched
/// (the API server's CEL rule refusing a wildcard comes back as the user's error).
async fn dashboard_works_with_the_charts_rbac(
    admin: &Client,
    sa_client: &Client,
    watched: &[String],
    ns: &str,
    stop: &CancellationToken,
) -> Result<()> {
    let users: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "mooring-dashboard-users"},
        "stringData": {"alice": "admin:alice-password"},
    }))?;
    Api::<Secret>::namespaced(admin.clone(), RELEASE_NS)
        .create(&PostParams::default(), &users)
        .await?;
    let auth = Arc::new(Auth::default());
    tokio::spawn(keep_loaded(
        sa_client.clone(),
        RELEASE_NS.into(),
        "mooring-dashboard-users".into(),
        auth.clone(),
        stop.clone(),
    ));
    eventually("the dashboard users to load", || async {
        Ok(auth.sign_in("alice", "alice-password").map(|_| ()))
    })
    .await?;

    let backend = OperatorBackend::new(
        sa_client.clone(),
        State::new(),
        watched.to_vec(),
        "mooring-0",
    );
    let clusters = backend.clusters().await.map_err(anyhow::Error::msg)?;
    ensure!(
        clusters
            .iter()
            .any(|c| c.namespace == ns && c.name == "bus"),
        "the dashboard does not list {ns}/bus: {clusters:?}"
    );
    let detail = backend
        .cluster(ns, "bus")
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(detail.summary.name == "bus");
    backend
        .set_metered_topics(ns, "bus", vec!["sensors/t".into()], "alice")
        .await
        .map_err(anyhow::Error::msg)?;
    let bc = Api::<BrokerCluster>::namespaced(admin.clone(), ns)
        .get("bus")
        .await?;
    ensure!(
        bc.spec.monitoring.metered_topics == ["sensors/t"],
        "{:?}",
        bc.spec.monitoring
    );
    let refused = backend
        .set_metered_topics(ns, "bus", vec!["sensors/#".into()], "alice")
        .await
        .expect_err("the CEL rule refuses wildcards");
    ensure!(
        matches!(&refused, BackendError::Invalid(m) if m.contains("without + or #")),
        "{refused:?}"
    );
    eventually("the dashboard's Event", || async {
        let events = backend
            .cluster(ns, "bus")
            .await
            .map_err(anyhow::Error::msg)?
            .events;
        Ok(events
            .iter()
            .any(|e| e.reason == "MeteredTopicsChanged")
            .then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_operator_runs_cluster_wide_with_only_the_charts_rbac() -> Result<()> {
    operator_runs_with_only_the_charts_rbac(Mode::ClusterWide).await
}

#[tokio::test]
async fn the_operator_runs_in_two_namespaces_with_only_the_charts_roles() -> Result<()> {
    operator_runs_with_only_the_charts_rbac(Mode::Namespaced).await
}
