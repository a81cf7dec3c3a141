//! The server functions the pages call (rendered on the server, fetched by the browser after
//! hydration). Every one needs a signed-in session; the two that change something need an admin
//! and the session's CSRF token. Their logic lives in [`logic`] (server half), where it is
//! unit-tested against a fake backend.

use leptos::prelude::*;

use crate::model::{
    AlertsView, ClientSearch, ClientsPage, ClusterDetail, ClusterSummary, Me, TopicsView,
};

/// The most topics a cluster may meter (the CRD's limit).
pub const MAX_METERED_TOPICS: usize = 512;
/// The longest topic (the CRD's limit).
pub const MAX_TOPIC_LEN: usize = 4096;
/// The largest page of clients.
pub const MAX_PAGE_SIZE: u32 = 500;

/// The signed-in user, their role and CSRF token.
#[server(prefix = "/api", endpoint = "me")]
pub async fn whoami() -> Result<Me, ServerFnError> {
    Ok(crate::server::session().await?.me())
}

/// Every cluster.
#[server(prefix = "/api", endpoint = "clusters")]
pub async fn clusters() -> Result<Vec<ClusterSummary>, ServerFnError> {
    crate::server::signed_in_backend()
        .await?
        .clusters()
        .await
        .map_err(crate::server::to_server_error)
}

/// One cluster's page.
#[server(prefix = "/api", endpoint = "cluster")]
pub async fn cluster(namespace: String, name: String) -> Result<ClusterDetail, ServerFnError> {
    crate::server::signed_in_backend()
        .await?
        .cluster(&namespace, &name)
        .await
        .map_err(crate::server::to_server_error)
}

/// A page of connected clients.
#[server(prefix = "/api", endpoint = "clients")]
pub async fn clients(
    namespace: String,
    name: String,
    text: String,
    by_username: bool,
    page: u32,
    limit: u32,
) -> Result<ClientsPage, ServerFnError> {
    let backend = crate::server::signed_in_backend().await?;
    let search = clamp_search(ClientSearch {
        text,
        by_username,
        page,
        limit,
    });
    backend
        .clients(&namespace, &name, &search)
        .await
        .map_err(crate::server::to_server_error)
}

/// Disconnects a client (admin only); the answer says what happened.
#[server(prefix = "/api", endpoint = "kick_client")]
pub async fn kick_client(
    namespace: String,
    name: String,
    client_id: String,
    csrf: String,
) -> Result<String, ServerFnError> {
    let session = crate::server::session().await?;
    let backend = crate::server::backend()?;
    logic::kick(
        &session,
        backend.as_ref(),
        &namespace,
        &name,
        &client_id,
        &csrf,
    )
    .await
}

/// The metered topics and their rates.
#[server(prefix = "/api", endpoint = "topics")]
pub async fn topics(namespace: String, name: String) -> Result<TopicsView, ServerFnError> {
    crate::server::signed_in_backend()
        .await?
        .topics(&namespace, &name)
        .await
        .map_err(crate::server::to_server_error)
}

/// Replaces the metered topics (admin only): `topics` one per line.
#[server(prefix = "/api", endpoint = "set_metered_topics")]
pub async fn set_metered_topics(
    namespace: String,
    name: String,
    topics: String,
    csrf: String,
) -> Result<(), ServerFnError> {
    let session = crate::server::session().await?;
    let backend = crate::server::backend()?;
    logic::set_topics(
        &session,
        backend.as_ref(),
        &namespace,
        &name,
        &topics,
        &csrf,
    )
    .await
}

/// Alerts of every cluster.
#[server(prefix = "/api", endpoint = "alerts")]
pub async fn alerts() -> Result<AlertsView, ServerFnError> {
    crate::server::signed_in_backend()
        .await?
        .alerts()
        .await
        .map_err(crate::server::to_server_error)
}

/// A search with its page at least 1 and its size within 1..=[`MAX_PAGE_SIZE`].
pub fn clamp_search(mut s: ClientSearch) -> ClientSearch {
    s.page = s.page.max(1);
    s.limit = s.limit.clamp(1, MAX_PAGE_SIZE);
    s.text = s.text.trim().to_string();
    s
}

/// The metered topics from text (one per line): trimmed, without empty lines or repeats, each an
/// exact topic (no `+` or `#`), within the CRD's limits.
pub fn parse_topics(text: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for t in text.lines().map(str::trim).filter(|t| !t.is_empty()) {
        if t.contains('+') || t.contains('#') {
            return Err(format!(
                "{t}: metered topics must be exact topics, without + or #"
            ));
        }
        if t.len() > MAX_TOPIC_LEN {
            return Err(format!("a topic is longer than {MAX_TOPIC_LEN} bytes"));
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    }
    if out.len() > MAX_METERED_TOPICS {
        return Err(format!("at most {MAX_METERED_TOPICS} metered topics"));
    }
    Ok(out)
}

/// The logic of the changing server functions (server half).
#[cfg(feature = "ssr")]
pub mod logic {
    use leptos::prelude::ServerFnError;

    use super::parse_topics;
    use crate::auth::Session;
    use crate::backend::Backend;
    use crate::model::Role;

    /// Refuses a change without the session's CSRF token or by a viewer.
    pub fn authorize_change(session: &Session, csrf: &str) -> Result<(), ServerFnError> {
        if !session.csrf_matches(csrf) {
            return Err(ServerFnError::new(
                "stale or missing CSRF token: reload the page",
            ));
        }
        if session.role != Role::Admin {
            return Err(ServerFnError::new("only an admin may do this"));
        }
        Ok(())
    }

    /// Kicks `client_id` off the cluster.
    pub async fn kick(
        session: &Session,
        backend: &dyn Backend,
        namespace: &str,
        name: &str,
        client_id: &str,
        csrf: &str,
    ) -> Result<String, ServerFnError> {
        authorize_change(session, csrf)?;
        if client_id.is_empty() {
            return Err(ServerFnError::new("no client id given"));
        }
        match backend
            .kick(namespace, name, client_id, &session.user)
            .await
        {
            Ok(true) => Ok(format!("Disconnected {client_id}")),
            Ok(false) => Ok(format!("{client_id} is not connected")),
            Err(e) => Err(crate::server::to_server_error(e)),
        }
    }

    /// Replaces the metered topics.
    pub async fn set_topics(
        session: &Session,
        backend: &dyn Backend,
        namespace: &str,
        name: &str,
        topics: &str,
        csrf: &str,
    ) -> Result<(), ServerFnError> {
        authorize_change(session, csrf)?;
        let topics = parse_topics(topics).map_err(ServerFnError::new)?;
        backend
            .set_metered_topics(namespace, name, topics, &session.user)
            .await
            .map_err(crate::server::to_server_error)
    }

    #[cfg(test)]
    mod tests {
        use std::sync::Mutex;

        use async_trait::async_trait;

        use super::*;
        use crate::backend::BackendError;
        use crate::model::*;

        #[derive(Default)]
        struct Fake {
            kicked: Mutex<Vec<(String, String)>>,
            topics: Mutex<Vec<String>>,
        }

        #[async_trait]
        impl Backend for Fake {
            async fn clusters(&self) -> Result<Vec<ClusterSummary>, BackendError> {
                Ok(vec![])
            }
            async fn cluster(&self, ns: &str, name: &str) -> Result<ClusterDetail, BackendError> {
                Err(BackendError::NotFound(format!("{ns}/{name}")))
            }
            async fn clients(
                &self,
                _: &str,
                _: &str,
                _: &ClientSearch,
            ) -> Result<ClientsPage, BackendError> {
                Ok(ClientsPage::default())
            }
            async fn kick(
                &self,
                _: &str,
                _: &str,
                client_id: &str,
                actor: &str,
            ) -> Result<bool, BackendError> {
                self.kicked
                    .lock()
                    .unwrap()
                    .push((client_id.into(), actor.into()));
                Ok(client_id != "gone")
            }
            async fn topics(&self, _: &str, _: &str) -> Result<TopicsView, BackendError> {
                Ok(TopicsView::default())
            }
            async fn set_metered_topics(
                &self,
                _: &str,
                _: &str,
                topics: Vec<String>,
                _: &str,
            ) -> Result<(), BackendError> {
                *self.topics.lock().unwrap() = topics;
                Ok(())
            }
            async fn alerts(&self) -> Result<AlertsView, BackendError> {
                Ok(AlertsView::default())
            }
        }

        fn session(role: Role) -> Session {
            Session {
                user: "alice".into(),
                role,
                csrf: "token-1".into(),
                bearer: false,
            }
        }

        #[tokio::test]
        async fn an_admin_with_the_csrf_token_kicks_and_the_actor_is_recorded() {
            let fake = Fake::default();
            let said = kick(
                &session(Role::Admin),
                &fake,
                "iot",
                "bus",
                "dev-1",
                "token-1",
            )
            .await
            .unwrap();
            assert_eq!(said, "Disconnected dev-1");
            assert_eq!(
                *fake.kicked.lock().unwrap(),
                [("dev-1".to_string(), "alice".to_string())]
            );
            let said = kick(
                &session(Role::Admin),
                &fake,
                "iot",
                "bus",
                "gone",
                "token-1",
            )
            .await
            .unwrap();
            assert_eq!(said, "gone is not connected");
        }

        #[tokio::test]
        async fn a_viewer_or_a_forged_request_never_reaches_the_broker() {
            let fake = Fake::default();
            let viewer = kick(
                &session(Role::Viewer),
                &fake,
                "iot",
                "bus",
                "dev-1",
                "token-1",
            )
            .await
            .unwrap_err();
            assert!(viewer.to_string().contains("only an admin"), "{viewer}");
            let forged = kick(&session(Role::Admin), &fake, "iot", "bus", "dev-1", "guess")
                .await
                .unwrap_err();
            assert!(forged.to_string().contains("CSRF"), "{forged}");
            let empty = kick(&session(Role::Admin), &fake, "iot", "bus", "", "token-1")
                .await
                .unwrap_err();
            assert!(empty.to_string().contains("no client id"), "{empty}");
            assert!(fake.kicked.lock().unwrap().is_empty());
            let topics = set_topics(&session(Role::Viewer), &fake, "iot", "bus", "a", "token-1")
                .await
                .unwrap_err();
            assert!(topics.to_string().contains("only an admin"));
        }

        #[tokio::test]
        async fn metered_topics_are_validated_before_they_are_written() {
            let fake = Fake::default();
            let admin = session(Role::Admin);
            set_topics(&admin, &fake, "iot", "bus", " a/b \n\na/b\nc\n", "token-1")
                .await
                .unwrap();
            assert_eq!(*fake.topics.lock().unwrap(), ["a/b", "c"]);
            let err = set_topics(&admin, &fake, "iot", "bus", "a/+", "token-1")
                .await
                .unwrap_err();
            assert!(err.to_string().contains("without + or #"), "{err}");
            assert_eq!(*fake.topics.lock().unwrap(), ["a/b", "c"]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_is_clamped_to_sane_pages() {
        let s = clamp_search(ClientSearch {
            text: "  dev ".into(),
            by_username: false,
            page: 0,
            limit: 100_000,
        });
        assert_eq!(
            (s.page, s.limit, s.text.as_str()),
            (1, MAX_PAGE_SIZE, "dev")
        );
        assert_eq!(clamp_search(ClientSearch { limit: 0, ..s }).limit, 1);
    }

    #[test]
    fn topics_are_exact_unique_and_bounded() {
        assert_eq!(parse_topics("x\n y \nx").unwrap(), ["x", "y"]);
        assert!(parse_topics("a/#").is_err());
        assert!(parse_topics(&"t".repeat(MAX_TOPIC_LEN + 1)).is_err());
        let many: Vec<String> = (0..=MAX_METERED_TOPICS).map(|i| format!("t{i}")).collect();
        assert!(parse_topics(&many.join("\n")).is_err());
        assert_eq!(parse_topics("").unwrap(), Vec::<String>::new());
    }
}
