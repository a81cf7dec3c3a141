//! The dashboard's axum router: login and logout, the session guard, static files, the pages and
//! the server functions. The operator merges it into its own router.

use std::path::PathBuf;
use std::sync::Arc;

use leptos::prelude::*;

use crate::auth::{Auth, Session};
use crate::backend::{Backend, BackendError};

/// What the dashboard needs from the process that serves it.
#[derive(Clone)]
pub struct DashboardConfig {
    /// The operator's data.
    pub backend: Arc<dyn Backend>,
    /// Who may sign in.
    pub auth: Arc<Auth>,
    /// The built site: `pkg/mooring-dashboard.{js,wasm,css}` (scripts/build-dashboard).
    pub site_root: PathBuf,
}

/// The backend, from the Leptos context (server functions and rendering).
pub fn backend() -> Result<Arc<dyn Backend>, ServerFnError> {
    use_context::<Arc<dyn Backend>>()
        .ok_or_else(|| ServerFnError::new("dashboard backend missing from the context"))
}

/// The signed-in session of this request (the guard let it through, so it is there).
pub async fn session() -> Result<Session, ServerFnError> {
    let axum::Extension(session) = leptos_axum::extract::<axum::Extension<Session>>()
        .await
        .map_err(|_| ServerFnError::new("not signed in"))?;
    Ok(session)
}

/// The backend, for a signed-in session only (what every reading server function needs).
pub async fn signed_in_backend() -> Result<Arc<dyn Backend>, ServerFnError> {
    session().await?;
    backend()
}

/// A backend error as a server function error (its text is safe to show).
pub fn to_server_error(e: BackendError) -> ServerFnError {
    ServerFnError::new(e.to_string())
}

/// The dashboard's routes, ready to merge into the operator's router.
pub fn router(config: DashboardConfig) -> axum::Router {
    use axum::routing::{get, post};
    use leptos_axum::{generate_route_list, LeptosRoutes};

    let site_root = config.site_root.to_string_lossy().into_owned();
    let options = LeptosOptions::builder()
        .output_name("mooring-dashboard")
        .site_root(site_root.as_str())
        .site_pkg_dir("pkg")
        .build();
    let routes = generate_route_list(crate::app::App);
    let backend = config.backend.clone();
    let context = move || provide_context(backend.clone());
    let fn_context = context.clone();
    let shell_options = options.clone();

    let guarded = axum::Router::new()
        .route(
            "/api/{*fn_name}",
            post(move |req: axum::extract::Request| {
                leptos_axum::handle_server_fns_with_context(fn_context.clone(), req)
            }),
        )
        .leptos_routes_with_context(&options, routes, context, move || {
            crate::app::shell(shell_options.clone())
        })
        .route("/logout", post(guard::logout))
        .layer(axum::middleware::from_fn_with_state(
            config.auth.clone(),
            guard::require_session,
        ))
        .with_state(options);

    let pkg = tower_http::services::ServeDir::new(config.site_root.join("pkg"));
    axum::Router::new()
        .route(
            "/favicon.ico",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .route("/login", get(guard::login_page).post(guard::login))
        .with_state(config.auth.clone())
        .nest_service("/pkg", tower_http::compression::Compression::new(pkg))
        .merge(guarded)
}

/// Sign-in, sign-out and the guard in front of every other dashboard route.
pub mod guard {
    use std::sync::Arc;

    use axum::extract::{Form, Query, Request, State};
    use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
    use axum::middleware::Next;
    use axum::response::{Html, IntoResponse, Redirect, Response};
    use serde::Deserialize;

    use crate::auth::{Auth, Session, COOKIE, SESSION_SECONDS};

    /// Lets a request through with its [`Session`] (cookie or bearer token) in its extensions;
    /// pages without one go to /login, calls get 401. Changing requests from another origin are
    /// refused (with the SameSite=Strict cookie and the per-session CSRF token, the third guard
    /// against cross-site requests).
    pub async fn require_session(
        State(auth): State<Arc<Auth>>,
        mut req: Request,
        next: Next,
    ) -> Response {
        if req.method() != Method::GET
            && req.method() != Method::HEAD
            && !same_origin(req.headers())
        {
            return (StatusCode::FORBIDDEN, "cross-origin request refused").into_response();
        }
        let session = bearer(req.headers())
            .and_then(|t| auth.session_from_bearer(t))
            .or_else(|| cookie(req.headers()).and_then(|c| auth.session_from_cookie(c)));
        let Some(session) = session else {
            if req.uri().path().starts_with("/api/") || req.method() != Method::GET {
                return (StatusCode::UNAUTHORIZED, "sign in first").into_response();
            }
            let next = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            return Redirect::to(&format!("/login?next={}", encode(next))).into_response();
        };
        req.extensions_mut().insert(session);
        let mut res = next.run(req).await;
        let headers = res.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
        res
    }

    /// The Origin (or, without it, Sec-Fetch-Site) says the request comes from this site.
    pub fn same_origin(headers: &HeaderMap) -> bool {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
            Some(origin) => {
                let origin_host = origin
                    .strip_prefix("https://")
                    .or_else(|| origin.strip_prefix("http://"))
                    .unwrap_or("");
                host.is_some_and(|h| h == origin_host)
            }
            None => !matches!(
                headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()),
                Some("cross-site" | "same-site")
            ),
        }
    }

    fn bearer(headers: &HeaderMap) -> Option<&str> {
        headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
    }

    fn cookie(headers: &HeaderMap) -> Option<&str> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == COOKIE)
            .map(|(_, v)| v)
    }

    fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    /// Only local paths are followed after sign-in (no open redirect).
    fn local_path(next: Option<&str>) -> &str {
        match next {
            Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
            _ => "/",
        }
    }

    /// `/login`'s query.
    #[derive(Deserialize, Default)]
    pub struct LoginQuery {
        next: Option<String>,
        error: Option<String>,
    }

    /// The sign-in page: plain HTML, so it works before any script loads.
    pub async fn login_page(
        State(auth): State<Arc<Auth>>,
        Query(q): Query<LoginQuery>,
    ) -> impl IntoResponse {
        let next = escape(local_path(q.next.as_deref()));
        let notice = if !auth.configured() {
            "<p class=\"error\" data-testid=\"login-error\">No dashboard users are configured. \
             Create the users Secret named by the operator's --dashboard-users-secret \
             (keys: user names, values: <code>admin:&lt;password&gt;</code> or \
             <code>viewer:&lt;password&gt;</code>).</p>"
                .to_string()
        } else if q.error.is_some() {
            "<p class=\"error\" data-testid=\"login-error\">Wrong user name or password.</p>"
                .to_string()
        } else {
            String::new()
        };
        let page = format!(
            "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>Sign in · Mooring</title>\
             <link rel=\"stylesheet\" href=\"/pkg/mooring-dashboard.css\"></head>\
             <body class=\"login\"><main class=\"login-card\"><h1>Mooring</h1>\
             <p class=\"muted\">MQTT broker clusters</p>{notice}\
             <form method=\"post\" action=\"/login\">\
             <input type=\"hidden\" name=\"next\" value=\"{next}\">\
             <label>User <input name=\"username\" autocomplete=\"username\" required autofocus></label>\
             <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <button type=\"submit\" data-testid=\"login-submit\">Sign in</button>\
             </form></main></body></html>"
        );
        (
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::X_FRAME_OPTIONS, "DENY"),
            ],
            Html(page),
        )
    }

    /// The sign-in form.
    #[derive(Deserialize)]
    pub struct LoginForm {
        username: String,
        password: String,
        next: Option<String>,
    }

    /// Checks the form; on success sets the session cookie and goes on.
    pub async fn login(
        State(auth): State<Arc<Auth>>,
        headers: HeaderMap,
        Form(form): Form<LoginForm>,
    ) -> Response {
        if !same_origin(&headers) {
            return (StatusCode::FORBIDDEN, "cross-origin request refused").into_response();
        }
        let next = local_path(form.next.as_deref()).to_string();
        match auth.sign_in(&form.username, &form.password) {
            Some(value) => {
                tracing::info!(user = %form.username, "dashboard sign-in");
                let secure = headers
                    .get("x-forwarded-proto")
                    .is_some_and(|v| v.as_bytes() == b"https");
                let cookie = format!(
                    "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{}",
                    if secure { "; Secure" } else { "" }
                );
                ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
            }
            None => {
                tracing::warn!(user = %form.username, "dashboard sign-in refused");
                // Slows guessing down; the attempt is logged above.
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                Redirect::to(&format!("/login?error=1&next={}", encode(&next))).into_response()
            }
        }
    }

    /// The sign-out form (its CSRF token must match: nobody can sign another out).
    #[derive(Deserialize)]
    pub struct LogoutForm {
        csrf: String,
    }

    /// Clears the cookie.
    pub async fn logout(
        axum::Extension(session): axum::Extension<Session>,
        Form(form): Form<LogoutForm>,
    ) -> Response {
        if !session.csrf_matches(&form.csrf) {
            return (StatusCode::FORBIDDEN, "stale or missing CSRF token").into_response();
        }
        let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
        ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
    }

    fn escape(s: &str) -> String {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        }

        #[test]
        fn only_same_origin_requests_may_change_things() {
            assert!(same_origin(&headers(&[
                ("host", "dash.example:8080"),
                ("origin", "http://dash.example:8080")
            ])));
            assert!(!same_origin(&headers(&[
                ("host", "dash.example:8080"),
                ("origin", "https://evil.example")
            ])));
            assert!(!same_origin(&headers(&[
                ("host", "dash.example"),
                ("sec-fetch-site", "cross-site")
            ])));
            // curl and scripts send neither header.
            assert!(same_origin(&headers(&[("host", "dash.example")])));
        }

        #[test]
        fn sign_in_only_follows_local_paths() {
            assert_eq!(local_path(Some("/clusters/a/b")), "/clusters/a/b");
            assert_eq!(local_path(Some("//evil.example/")), "/");
            assert_eq!(local_path(Some("https://evil.example/")), "/");
            assert_eq!(local_path(Some("/\\evil.example")), "/");
            assert_eq!(local_path(None), "/");
        }

        #[test]
        fn the_session_cookie_is_found_among_others() {
            let h = headers(&[("cookie", "a=1; mooring_session=abc.def; b=2")]);
            assert_eq!(cookie(&h), Some("abc.def"));
            assert_eq!(cookie(&headers(&[("cookie", "a=1")])), None);
        }
    }
}
