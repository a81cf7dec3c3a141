//! One module per page.

mod alerts;
mod clients;
mod cluster;
mod overview;
mod topics;

pub use alerts::AlertsScreen;
pub use clients::ClientsScreen;
pub use cluster::ClusterScreen;
pub use overview::Overview;
pub use topics::TopicsScreen;

use leptos::prelude::*;
use leptos_router::hooks::use_params_map;

/// The `:ns` and `:name` of a cluster page's path, as signals.
pub fn cluster_params() -> (Signal<String>, Signal<String>) {
    let params = use_params_map();
    let ns = Signal::derive(move || params.read().get("ns").unwrap_or_default());
    let name = Signal::derive(move || params.read().get("name").unwrap_or_default());
    (ns, name)
}

/// The tabs of a cluster's pages.
#[component]
pub fn ClusterTabs(ns: Signal<String>, name: Signal<String>) -> impl IntoView {
    let base = move || format!("/clusters/{}/{}", ns.get(), name.get());
    view! {
        <div class="tabs">
            <h1>{move || format!("{}/{}", ns.get(), name.get())}</h1>
            <a href=base>"Overview"</a>
            <a href=move || format!("{}/clients", base())>"Clients"</a>
            <a href=move || format!("{}/topics", base())>"Topics"</a>
        </div>
    }
}
