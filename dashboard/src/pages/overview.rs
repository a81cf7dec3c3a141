//! `/`: every cluster at a glance.

use leptos::prelude::*;

use crate::api::clusters;
use crate::components::{refresh_tick, table, Badge, ErrorBox};
use crate::model::ClusterSummary;

/// The clusters overview.
#[component]
pub fn Overview() -> impl IntoView {
    let tick = refresh_tick();
    let data = Resource::new(move || tick.get(), |_| clusters());
    view! {
        <h1>"Broker clusters"</h1>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || {
                data.get()
                    .map(|r| match r {
                        Err(e) => view! { <ErrorBox message=e.to_string()/> }.into_any(),
                        Ok(list) if list.is_empty() => {
                            view! {
                                <p class="empty">
                                    "No BrokerCluster yet. Create one with "
                                    <code>"kubectl apply -f examples/quickstart.yaml"</code> "."
                                </p>
                            }
                                .into_any()
                        }
                        Ok(list) => clusters_table(list).into_any(),
                    })
            }}
        </Transition>
    }
}

fn clusters_table(list: Vec<ClusterSummary>) -> impl IntoView {
    let rows = list
        .into_iter()
        .map(|c| {
            let href = format!("/clusters/{}/{}", c.namespace, c.name);
            let ready = if c.ready { "Ready" } else { "Not ready" };
            view! {
                <tr data-testid="cluster-row">
                    <td>
                        <a href=href>{format!("{}/{}", c.namespace, c.name)}</a>
                    </td>
                    <td>{format!("{} {}", c.broker, c.version)}</td>
                    <td>
                        <Badge text=ready/>
                        " "
                        <span class="muted" title=c.message.clone()>{c.reason.clone()}</span>
                    </td>
                    <td>
                        {format!(
                            "{} up / {} joined / {} wanted",
                            c.nodes_up,
                            c.nodes_joined,
                            c.replicas,
                        )}
                    </td>
                    <td class="num">{c.connections}</td>
                    <td>
                        {if c.active_alerts > 0 {
                            view! { <a href="/alerts" class="badge bad">{c.active_alerts}</a> }
                                .into_any()
                        } else {
                            view! { <span class="muted">"0"</span> }.into_any()
                        }}
                    </td>
                    <td>{if c.load_balancer { "yes" } else { "no" }}</td>
                </tr>
            }
        })
        .collect_view();
    table(
        &[
            "Cluster",
            "Broker",
            "Status",
            "Nodes",
            "Connections",
            "Alerts",
            "Load balancer",
        ],
        Some("clusters"),
        rows,
    )
}
