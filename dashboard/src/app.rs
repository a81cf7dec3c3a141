//! The HTML shell, the header and the routes.

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Title};
use leptos_router::components::{Route, Router, Routes, A};
use leptos_router::path;

use crate::api::whoami;
use crate::model::{Me, Role};
use crate::pages::{AlertsScreen, ClientsScreen, ClusterScreen, Overview, TopicsScreen};

/// The signed-in user, fetched once per page load and shared by every page.
pub type MeResource = Resource<Result<Me, ServerFnError>>;

/// The whole document, rendered on the server.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <link rel="stylesheet" href="/pkg/mooring-dashboard.css"/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

/// The application: header and pages.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    let me: MeResource = Resource::new(|| (), |_| whoami());
    provide_context(me);
    // Tells people (and the browser tests) that the page is live: effects run only in the browser.
    Effect::new(move |_| {
        if let Some(body) = document().body() {
            let _ = body.set_attribute("data-hydrated", "true");
        }
    });
    view! {
        <Title text="Mooring"/>
        <Router>
            <Header/>
            <main>
                <Routes fallback=|| view! { <p class="empty">"No such page."</p> }>
                    <Route path=path!("/") view=Overview/>
                    <Route path=path!("/alerts") view=AlertsScreen/>
                    <Route path=path!("/clusters/:ns/:name") view=ClusterScreen/>
                    <Route path=path!("/clusters/:ns/:name/clients") view=ClientsScreen/>
                    <Route path=path!("/clusters/:ns/:name/topics") view=TopicsScreen/>
                </Routes>
            </main>
        </Router>
    }
}

/// The signed-in user, when known.
pub fn current_user() -> Option<Me> {
    use_context::<MeResource>()
        .and_then(|r| r.get())
        .and_then(Result::ok)
}

/// Whether the signed-in user is an admin.
pub fn is_admin() -> bool {
    current_user().is_some_and(|m| m.role == Role::Admin)
}

#[component]
fn Header() -> impl IntoView {
    let me = use_context::<MeResource>();
    view! {
        <header class="topbar">
            <A href="/" attr:class="brand">"⚓ Mooring"</A>
            <nav>
                <A href="/">"Clusters"</A>
                <A href="/alerts">"Alerts"</A>
            </nav>
            <Transition fallback=|| ()>
                {move || {
                    me.and_then(|r| r.get())
                        .map(|r| match r {
                            Ok(m) => {
                                view! {
                                    <span class="whoami" data-testid="whoami">
                                        {format!("{} ({})", m.user, m.role.as_str())}
                                    </span>
                                    <form method="post" action="/logout" class="logout">
                                        <input type="hidden" name="csrf" value=m.csrf/>
                                        <button type="submit">"Sign out"</button>
                                    </form>
                                }
                                    .into_any()
                            }
                            Err(e) => view! { <span class="error">{e.to_string()}</span> }.into_any(),
                        })
                }}
            </Transition>
        </header>
    }
}
