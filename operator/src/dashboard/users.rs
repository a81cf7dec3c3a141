//! Keeps the dashboard's users in step with their Secret (`--dashboard-users-secret`).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use mooring_dashboard::auth::Auth;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// `namespace/name` split, or why not.
pub fn parse_secret_ref(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!(
            "--dashboard-users-secret must be <namespace>/<name>, not {s:?}"
        )),
    }
}

/// The Secret's data as bytes per key.
fn data_of(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    data
}

/// Watches the Secret until `stop`, loading it into `auth` on every change (an absent Secret:
/// nobody can sign in). Logs the counts and the names of bad entries, never a value.
pub async fn keep_loaded(
    client: Client,
    namespace: String,
    name: String,
    auth: Arc<Auth>,
    stop: CancellationToken,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let load = |data: BTreeMap<String, Vec<u8>>| {
        let report = auth.load(&data);
        info!(
            secret = %format!("{namespace}/{name}"),
            users = report.users,
            tokens = report.tokens,
            "dashboard users loaded"
        );
        for p in &report.problems {
            warn!(secret = %format!("{namespace}/{name}"), problem = %p, "dashboard users: entry skipped");
        }
    };
    let stream = watcher(api, config).default_backoff().for_each(|event| {
        match event {
            Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => load(data_of(&s)),
            Ok(watcher::Event::Delete(_)) => load(BTreeMap::new()),
            Ok(watcher::Event::Init) | Ok(watcher::Event::InitDone) => {}
            Err(e) => warn!(error = %e, "dashboard users Secret watch failed (retrying)"),
        }
        futures::future::ready(())
    });
    tokio::select! {
        _ = stop.cancelled() => {},
        _ = stream => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn the_secret_is_named_namespace_slash_name() {
        assert_eq!(
            parse_secret_ref("mooring/users").unwrap(),
            ("mooring".to_string(), "users".to_string())
        );
        for bad in ["users", "/users", "mooring/", "a/b/c"] {
            assert!(parse_secret_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn data_and_string_data_are_both_read() {
        let secret = Secret {
            data: Some(BTreeMap::from([(
                "alice".to_string(),
                ByteString(b"admin:alice-password".to_vec()),
            )])),
            string_data: Some(BTreeMap::from([(
                "bob".to_string(),
                "viewer:bob-password".to_string(),
            )])),
            ..Secret::default()
        };
        let data = data_of(&secret);
        assert_eq!(data.len(), 2);
        let auth = Auth::default();
        assert_eq!(auth.load(&data).users, 2);
    }
}
