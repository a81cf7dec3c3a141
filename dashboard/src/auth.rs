//! Who may use the dashboard: users and tokens from a Kubernetes Secret, signed session cookies,
//! and the CSRF token bound to each session (server half only).
//!
//! The Secret's `data`: each key is a user name with the value `<role>:<password>`, or
//! `token.<name>` with `<role>:<token>` (tokens are sent as `Authorization: Bearer <token>`, for
//! scripts). Roles are `viewer` and `admin`.
//!
//! Sessions are stateless, so that every operator replica accepts them: the cookie carries the
//! user, role and expiry, signed with HMAC-SHA256 under a key derived from the whole Secret. A
//! changed Secret (a password rotated, a user removed) therefore signs everyone out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::{Me, Role};

/// The session cookie's name.
pub const COOKIE: &str = "mooring_session";
/// How long a sign-in lasts.
pub const SESSION_SECONDS: u64 = 12 * 3600;
/// Key prefix of token entries.
const TOKEN_PREFIX: &str = "token.";

type HmacSha256 = Hmac<Sha256>;

/// A signed-in user (or token) for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The user or token name.
    pub user: String,
    /// What they may do.
    pub role: Role,
    /// The CSRF token of this session (empty for bearer tokens, which browsers never send on
    /// their own).
    pub csrf: String,
    /// Signed in with a bearer token rather than the cookie.
    pub bearer: bool,
}

impl Session {
    /// Whether `token` is this session's CSRF token (bearer sessions need none).
    pub fn csrf_matches(&self, token: &str) -> bool {
        if self.bearer {
            return true;
        }
        !self.csrf.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(token.as_bytes()))
    }

    /// What the pages show of the session.
    pub fn me(&self) -> Me {
        Me {
            user: self.user.clone(),
            role: self.role,
            csrf: self.csrf.clone(),
        }
    }
}

/// What loading a Secret found. Never carries a password.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Users that may sign in with a password.
    pub users: usize,
    /// Bearer tokens.
    pub tokens: usize,
    /// Entries skipped, and why (names only).
    pub problems: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    User,
    Token,
}

struct Entry {
    role: Role,
    secret: Vec<u8>,
    kind: Kind,
}

#[derive(Default)]
struct Users {
    entries: HashMap<String, Entry>,
    key: [u8; 32],
}

/// Who may sign in, replaced whole when the Secret changes.
#[derive(Default)]
pub struct Auth {
    users: RwLock<Arc<Users>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("entries", &self.current().entries.len())
            .finish()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    /// Replaces the users and tokens with the Secret's `data`.
    pub fn load(&self, data: &BTreeMap<String, Vec<u8>>) -> LoadReport {
        let mut report = LoadReport::default();
        let mut entries = HashMap::new();
        let mut digest = Sha256::new();
        digest.update(b"mooring-dashboard-session-v1");
        for (key, value) in data {
            digest.update((key.len() as u64).to_be_bytes());
            digest.update(key.as_bytes());
            digest.update((value.len() as u64).to_be_bytes());
            digest.update(value);
            let (name, kind) = match key.strip_prefix(TOKEN_PREFIX) {
                Some(name) => (name, Kind::Token),
                None => (key.as_str(), Kind::User),
            };
            if name.is_empty() || (kind == Kind::User && name.contains(['.', ':'])) {
                report.problems.push(format!(
                    "{key}: a user name must be non-empty, without '.' or ':'"
                ));
                continue;
            }
            let Some(colon) = value.iter().position(|b| *b == b':') else {
                report
                    .problems
                    .push(format!("{key}: the value must be <role>:<password>"));
                continue;
            };
            let role = std::str::from_utf8(&value[..colon])
                .ok()
                .and_then(Role::parse);
            let Some(role) = role else {
                report
                    .problems
                    .push(format!("{key}: the role must be viewer or admin"));
                continue;
            };
            let secret = trim_newline(&value[colon + 1..]).to_vec();
            if secret.len() < 8 {
                report.problems.push(format!(
                    "{key}: the password or token must have at least 8 characters"
                ));
                continue;
            }
            match kind {
                Kind::User => report.users += 1,
                Kind::Token => report.tokens += 1,
            }
            entries.insert(name.to_string(), Entry { role, secret, kind });
        }
        let key: [u8; 32] = digest.finalize().into();
        let users = Arc::new(Users { entries, key });
        match self.users.write() {
            Ok(mut guard) => *guard = users,
            Err(poisoned) => *poisoned.into_inner() = users,
        }
        report
    }

    fn current(&self) -> Arc<Users> {
        match self.users.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether anyone can sign in at all.
    pub fn configured(&self) -> bool {
        self.current()
            .entries
            .values()
            .any(|e| e.kind == Kind::User)
    }

    /// Checks a user's password; on success, the session cookie's value.
    pub fn sign_in(&self, user: &str, password: &str) -> Option<String> {
        self.sign_in_at(user, password, now())
    }

    fn sign_in_at(&self, user: &str, password: &str, at: u64) -> Option<String> {
        let users = self.current();
        let entry = users.entries.get(user).filter(|e| e.kind == Kind::User)?;
        if !bool::from(entry.secret.as_slice().ct_eq(password.as_bytes())) {
            return None;
        }
        let expires = at + SESSION_SECONDS;
        let payload = format!(
            "{}.{}.{expires}",
            URL_SAFE_NO_PAD.encode(user),
            entry.role.as_str()
        );
        let signature = sign(&users.key, b"session", payload.as_bytes())?;
        Some(format!("{payload}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// The session a cookie value stands for: well signed, not expired, and its user still
    /// there with the same role.
    pub fn session_from_cookie(&self, value: &str) -> Option<Session> {
        self.session_from_cookie_at(value, now())
    }

    fn session_from_cookie_at(&self, value: &str, at: u64) -> Option<Session> {
        let users = self.current();
        let (payload, signature) = value.rsplit_once('.')?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let mut mac = mac(&users.key, b"session")?;
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).ok()?;
        let mut parts = payload.split('.');
        let user = String::from_utf8(URL_SAFE_NO_PAD.decode(parts.next()?).ok()?).ok()?;
        let role = Role::parse(parts.next()?)?;
        let expires: u64 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || expires <= at {
            return None;
        }
        let entry = users.entries.get(&user)?;
        if entry.kind != Kind::User || entry.role != role {
            return None;
        }
        let csrf = sign(&users.key, b"csrf", value.as_bytes())?;
        Some(Session {
            user,
            role,
            csrf: URL_SAFE_NO_PAD.encode(&csrf[..24]),
            bearer: false,
        })
    }

    /// The session of a bearer token.
    pub fn session_from_bearer(&self, token: &str) -> Option<Session> {
        let users = self.current();
        // Every token is compared, so the time taken does not tell which one is near.
        let mut found = None;
        for (name, entry) in &users.entries {
            if entry.kind == Kind::Token
                && bool::from(entry.secret.as_slice().ct_eq(token.as_bytes()))
            {
                found = Some((name.clone(), entry.role));
            }
        }
        let (user, role) = found?;
        Some(Session {
            user: format!("token:{user}"),
            role,
            csrf: String::new(),
            bearer: true,
        })
    }
}

fn trim_newline(v: &[u8]) -> &[u8] {
    let mut end = v.len();
    while end > 0 && matches!(v[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &v[..end]
}

/// An HMAC for one purpose (HMAC takes keys of any length, so this is always `Some`).
fn mac(key: &[u8; 32], purpose: &[u8]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(purpose);
    mac.update(b"\0");
    Some(mac)
}

fn sign(key: &[u8; 32], purpose: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    let mut mac = mac(key, purpose)?;
    mac.update(data);
    Some(mac.finalize().into_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn auth() -> Auth {
        let auth = Auth::default();
        let report = auth.load(&secret(&[
            ("alice", "admin:alice-password"),
            ("bob", "viewer:bob-password\n"),
            ("token.ci", "viewer:ci-token-0123456789"),
        ]));
        assert_eq!(report.users, 2);
        assert_eq!(report.tokens, 1);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        auth
    }

    #[test]
    fn a_user_signs_in_with_the_right_password_only() {
        let auth = auth();
        assert!(auth.sign_in("alice", "wrong-password").is_none());
        assert!(auth.sign_in("nobody", "alice-password").is_none());
        let cookie = auth.sign_in("alice", "alice-password").unwrap();
        let session = auth.session_from_cookie(&cookie).unwrap();
        assert_eq!(session.user, "alice");
        assert_eq!(session.role, Role::Admin);
        assert!(!session.csrf.is_empty());
        assert!(session.csrf_matches(&session.csrf));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches("forged"));
        // A trailing newline in the Secret (kubectl create secret from a file) is not part of it.
        assert!(auth.sign_in("bob", "bob-password").is_some());
    }

    #[test]
    fn a_token_is_not_a_password_and_signs_in_as_bearer_only() {
        let auth = auth();
        assert!(auth.sign_in("ci", "ci-token-0123456789").is_none());
        let s = auth.session_from_bearer("ci-token-0123456789").unwrap();
        assert_eq!(s.role, Role::Viewer);
        assert!(s.bearer);
        assert!(auth.session_from_bearer("alice-password").is_none());
    }

    #[test]
    fn a_tampered_or_expired_cookie_is_refused() {
        let auth = auth();
        let cookie = auth.sign_in_at("bob", "bob-password", 1_000).unwrap();
        assert!(auth.session_from_cookie_at(&cookie, 1_001).is_some());
        assert!(auth
            .session_from_cookie_at(&cookie, 1_000 + SESSION_SECONDS)
            .is_none());
        // Bob promotes himself: the signature no longer matches.
        let forged = cookie.replacen(".viewer.", ".admin.", 1);
        assert_ne!(forged, cookie);
        assert!(auth.session_from_cookie_at(&forged, 1_001).is_none());
        assert!(auth.session_from_cookie_at("garbage", 1_001).is_none());
    }

    #[test]
    fn a_changed_secret_signs_everyone_out() {
        let auth = auth();
        let cookie = auth.sign_in("alice", "alice-password").unwrap();
        auth.load(&secret(&[("alice", "admin:a-new-password")]));
        assert!(auth.session_from_cookie(&cookie).is_none());
        assert!(auth.sign_in("alice", "a-new-password").is_some());
    }

    #[test]
    fn the_csrf_token_differs_per_session() {
        let auth = auth();
        let a = auth
            .session_from_cookie(&auth.sign_in_at("alice", "alice-password", now()).unwrap())
            .unwrap();
        let b = auth
            .session_from_cookie(
                &auth
                    .sign_in_at("alice", "alice-password", now() - 5)
                    .unwrap(),
            )
            .unwrap();
        assert_ne!(a.csrf, b.csrf);
        assert!(!a.csrf_matches(&b.csrf));
    }

    #[test]
    fn bad_entries_are_reported_by_name_without_their_values() {
        let auth = Auth::default();
        let report = auth.load(&secret(&[
            ("carol", "root:carol-password"),
            ("dave", "no-colon-here"),
            ("erin", "admin:short"),
            ("ok", "viewer:long-enough"),
        ]));
        assert_eq!(report.users, 1);
        assert_eq!(report.problems.len(), 3);
        for p in &report.problems {
            assert!(
                !p.contains("carol-password") && !p.contains("short:"),
                "{p}"
            );
        }
        assert!(auth.configured());
        assert!(!Auth::default().configured());
    }
}
