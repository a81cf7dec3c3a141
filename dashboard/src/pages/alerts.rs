//! `/alerts`: alerts firing now, and what fired and resolved before.

use leptos::prelude::*;

use crate::api::alerts;
use crate::components::{refresh_tick, table, Badge, ErrorBox};
use crate::model::AlertRow;

/// The alerts page.
#[component]
pub fn AlertsScreen() -> impl IntoView {
    let tick = refresh_tick();
    let data = Resource::new(move || tick.get(), |_| alerts());
    view! {
        <h1>"Alerts"</h1>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || {
                data.get()
                    .map(|r| match r {
                        Err(e) => view! { <ErrorBox message=e.to_string()/> }.into_any(),
                        Ok(v) => {
                            view! {
                                <h2>"Firing"</h2>
                                {if v.active.is_empty() {
                                    view! { <p class="empty">"No alerts firing."</p> }.into_any()
                                } else {
                                    rows(v.active, "alert-active").into_any()
                                }}
                                <h2>"History"</h2>
                                {if v.history.is_empty() {
                                    view! { <p class="empty">"Nothing has fired yet."</p> }
                                        .into_any()
                                } else {
                                    rows(v.history, "alert-history").into_any()
                                }}
                            }
                                .into_any()
                        }
                    })
            }}
        </Transition>
    }
}

fn rows(list: Vec<AlertRow>, testid: &'static str) -> impl IntoView {
    let rows = list
        .into_iter()
        .map(|a| {
            view! {
                <tr data-testid=testid data-name=a.name.clone() data-cluster=a.cluster.clone() data-state=a.state.clone()>
                    <td>{a.at.clone()}</td>
                    <td><Badge text=a.severity.clone()/></td>
                    <td><Badge text=a.state.clone()/></td>
                    <td>{a.name.clone()}</td>
                    <td>{a.cluster.clone()}</td>
                    <td class="muted">{a.subject.clone()}</td>
                    <td>{a.message.clone()}</td>
                </tr>
            }
        })
        .collect_view();
    table(
        &[
            "When", "Severity", "State", "Alert", "Cluster", "Subject", "Message",
        ],
        None,
        rows,
    )
}
