//! Every Kubernetes API permission the operator process needs, in one table.
//!
//! The Helm chart (`charts/mooring/templates/rbac.yaml`) grants exactly these rules, and
//! `tests/tests/helm_chart.rs` fails when the two differ (a missing right, or one granted that this
//! table does not list). Adding an API call to the operator means adding its row here, then to the
//! chart. Each row names the code that needs it.

/// Where a permission is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PermissionScope {
    /// In every namespace the operator watches (cluster-wide, or each `--namespace`): the
    /// BrokerClusters and everything Mooring creates for them.
    Watched,
    /// Only in the operator's own namespace (`POD_NAMESPACE`): the leader Lease.
    OperatorNamespace,
}

/// One API group and resource with the verbs the operator uses on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource (with its subresource, `brokerclusters/status`).
    pub resource: &'static str,
    /// Verbs, sorted.
    pub verbs: &'static [&'static str],
    /// Where.
    pub scope: PermissionScope,
}

const fn watched(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
) -> Permission {
    Permission {
        group,
        resource,
        verbs,
        scope: PermissionScope::Watched,
    }
}

/// Server-side apply (`apply::apply`) sends a PATCH; when the object does not exist yet the API
/// server also checks `create`.
const APPLY: [&str; 2] = ["create", "patch"];

/// The operator's permissions. Server-side apply needs `create` and `patch`; the controller's
/// `.owns()` watches need `list` and `watch`; `apply::delete_unwanted` needs `list` and `delete`.
pub const OPERATOR_PERMISSIONS: &[Permission] = &[
    // The controller's watch, `runner::wait_for_crd` (list), the monitors' `get`; the load
    // balancer's Role grants get/list/watch on its cluster, which the operator must hold itself
    // to create that Role (RBAC escalation prevention). The dashboard patches
    // `spec.monitoring.meteredTopics` (`dashboard::backend`).
    watched(
        "mooring.dev",
        "brokerclusters",
        &["get", "list", "patch", "watch"],
    ),
    // `controller::status` (patch_status, server-side apply).
    watched("mooring.dev", "brokerclusters/status", &["patch"]),
    // Children (`controller::reconcile`): owned watches and server-side apply.
    watched("", "configmaps", &["create", "list", "patch", "watch"]),
    // Also read (`get_opt`: the credentials are generated once; the drivers read them); the load
    // balancer's Role grants `get` on the credentials Secret.
    watched("", "secrets", &["create", "get", "list", "patch", "watch"]),
    // The load balancer's Services are removed when it is turned off (`delete_unwanted`).
    watched(
        "",
        "services",
        &["create", "delete", "list", "patch", "watch"],
    ),
    // `delete_orphaning` recreates a StatefulSet whose claim templates changed; the membership
    // stores watch StatefulSets; `pod_command` reads the broker's.
    watched(
        "apps",
        "statefulsets",
        &["create", "delete", "get", "list", "patch", "watch"],
    ),
    watched(
        "policy",
        "poddisruptionbudgets",
        &["create", "delete", "list", "patch", "watch"],
    ),
    // The load balancer's ServiceAccount, Role and RoleBinding (created and removed with it).
    watched(
        "",
        "serviceaccounts",
        &["create", "delete", "list", "patch"],
    ),
    watched(
        "rbac.authorization.k8s.io",
        "roles",
        &["create", "delete", "list", "patch"],
    ),
    watched(
        "rbac.authorization.k8s.io",
        "rolebindings",
        &["create", "delete", "list", "patch"],
    ),
    // The membership stores watch broker Pods; `pod_command` creates, watches and deletes command
    // Pods; repairs delete a broker Pod (restart); the scale-down reads the leaving Pod.
    watched("", "pods", &["create", "delete", "get", "list", "watch"]),
    // kube's `Recorder` (events.k8s.io/v1): creates an Event, patches it when it repeats; the
    // dashboard lists a cluster's Events.
    watched("events.k8s.io", "events", &["create", "list", "patch"]),
    // The collector's CPU figures (`collector::pod_metrics`): the broker Pods' metrics from
    // metrics-server, when it is installed.
    watched("metrics.k8s.io", "pods", &["list"]),
    // kube-lease-manager (`leader`): reads, creates and renews (server-side apply) the Lease.
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["create", "get", "patch"],
        scope: PermissionScope::OperatorNamespace,
    },
    // `leader::label_own_pod`: the leading replica labels its own Pod (the dashboard Service
    // selects it).
    Permission {
        group: "",
        resource: "pods",
        verbs: &["patch"],
        scope: PermissionScope::OperatorNamespace,
    },
    // The dashboard's users Secret (`dashboard::users`: a watch of the one Secret by name).
    Permission {
        group: "",
        resource: "secrets",
        verbs: &["get", "list", "watch"],
        scope: PermissionScope::OperatorNamespace,
    },
];

/// The verbs of server-side apply, for callers that reason about it.
pub const APPLY_VERBS: &[&str] = &APPLY;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_sorted_unique_and_never_wildcards() {
        for p in OPERATOR_PERMISSIONS {
            let mut sorted = p.verbs.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted, p.verbs, "{p:?}");
            assert!(!p.verbs.contains(&"*"), "{p:?}");
            assert_ne!(p.resource, "*");
            assert_ne!(p.group, "*");
        }
    }

    #[test]
    fn every_applied_kind_can_be_created_and_patched() {
        for p in OPERATOR_PERMISSIONS {
            // The status, the dashboard's metered topics and the leader label are patched, never
            // applied.
            if p.verbs.contains(&"patch")
                && !matches!(p.resource, "brokerclusters/status" | "brokerclusters")
                && !(p.resource == "pods" && matches!(p.scope, PermissionScope::OperatorNamespace))
            {
                for v in APPLY_VERBS {
                    assert!(p.verbs.contains(v), "{p:?} lacks {v}");
                }
            }
        }
    }

    #[test]
    fn each_resource_appears_once_per_scope() {
        let mut seen = std::collections::BTreeSet::new();
        for p in OPERATOR_PERMISSIONS {
            assert!(seen.insert((p.scope, p.group, p.resource)), "{p:?}");
        }
    }
}
