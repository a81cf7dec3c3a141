//! The cluster's generated credentials: made once with a CSPRNG, then read back from the Secret on
//! every reconcile and never rotated by one. Values are never logged (`Credentials` hides them in
//! `Debug`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use rand::distr::{Alphanumeric, SampleString};

use crate::broker_config::{secret_keys, Credentials};

/// The admin user Mooring creates in every broker (an EMQX API key name must start with a letter).
pub const ADMIN_USERNAME: &str = "mooring";
const COOKIE_LEN: usize = 64;
const PASSWORD_LEN: usize = 40;

/// Credentials taken from the existing Secret where present, generated where missing.
/// Deliberately not `Debug`: it holds secret values.
#[derive(Clone, PartialEq)]
pub struct Resolved {
    /// The credentials to render with.
    pub credentials: Credentials,
    /// The Secret keys holding them.
    pub data: BTreeMap<String, String>,
    /// Whether any key was generated now (the Secret did not have it yet).
    pub generated: bool,
}

/// Reads the generated keys from `existing`, generating any that are missing or not UTF-8.
pub fn resolve(existing: Option<&Secret>) -> Resolved {
    let stored = |key: &str| -> Option<String> {
        existing
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|v| !v.is_empty())
    };
    let mut generated = false;
    let mut take = |key: &str, make: &dyn Fn() -> String| -> String {
        stored(key).unwrap_or_else(|| {
            generated = true;
            make()
        })
    };
    let erlang_cookie = take(secret_keys::ERLANG_COOKIE, &|| random_token(COOKIE_LEN));
    let admin_username = take(secret_keys::ADMIN_USERNAME, &|| ADMIN_USERNAME.to_string());
    let admin_password = take(secret_keys::ADMIN_PASSWORD, &|| random_token(PASSWORD_LEN));
    let data = BTreeMap::from([
        (
            secret_keys::ERLANG_COOKIE.to_string(),
            erlang_cookie.clone(),
        ),
        (
            secret_keys::ADMIN_USERNAME.to_string(),
            admin_username.clone(),
        ),
        (
            secret_keys::ADMIN_PASSWORD.to_string(),
            admin_password.clone(),
        ),
    ]);
    Resolved {
        credentials: Credentials {
            erlang_cookie,
            admin_username,
            admin_password,
        },
        data,
        generated,
    }
}

/// A random alphanumeric token from the operating system's CSPRNG-seeded generator.
fn random_token(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn missing_credentials_are_generated_once_and_then_kept() {
        let first = resolve(None);
        assert!(first.generated);
        assert_eq!(first.credentials.erlang_cookie.len(), COOKIE_LEN);
        assert_eq!(first.credentials.admin_username, ADMIN_USERNAME);
        let secret = Secret {
            data: Some(
                first
                    .data
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                    .collect(),
            ),
            ..Secret::default()
        };
        let again = resolve(Some(&secret));
        assert!(!again.generated);
        assert!(again.data == first.data && again.credentials == first.credentials);
    }

    #[test]
    fn two_clusters_get_different_secrets() {
        assert_ne!(
            resolve(None).credentials.erlang_cookie,
            resolve(None).credentials.erlang_cookie
        );
    }

    #[test]
    fn debug_output_hides_the_secrets() {
        let r = resolve(None);
        let shown = format!("{:?}", r.credentials);
        assert!(!shown.contains(&r.credentials.erlang_cookie));
        assert!(!shown.contains(&r.credentials.admin_password));
    }
}
