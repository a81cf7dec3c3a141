//! `/clusters/:ns/:name/clients`: connected clients, searched and paged through the broker;
//! admins may disconnect one (after confirming).

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::{cluster_params, ClusterTabs};
use crate::api::{clients, kick_client};
use crate::app::{current_user, is_admin};
use crate::components::{or_dash, refresh_tick, table, ErrorBox, Flash};
use crate::model::{ClientRow, ClientsPage};

/// Clients per page.
const PAGE_SIZE: u32 = 50;

/// The clients page.
#[component]
pub fn ClientsScreen() -> impl IntoView {
    let (ns, name) = cluster_params();
    let tick = refresh_tick();
    let text = RwSignal::new(String::new());
    let by_username = RwSignal::new(false);
    let page = RwSignal::new(1u32);
    let confirm = RwSignal::new(None::<String>);
    let flash = RwSignal::new(None::<(bool, String)>);
    let data = Resource::new(
        move || {
            (
                ns.get(),
                name.get(),
                text.get(),
                by_username.get(),
                page.get(),
                tick.get(),
            )
        },
        |(ns, name, text, by_username, page, _)| {
            clients(ns, name, text, by_username, page, PAGE_SIZE)
        },
    );
    let kick = move |client_id: String| {
        let csrf = current_user().map(|m| m.csrf).unwrap_or_default();
        let (ns, name) = (ns.get_untracked(), name.get_untracked());
        spawn_local(async move {
            let result = kick_client(ns, name, client_id, csrf).await;
            flash.set(Some(match result {
                Ok(said) => (true, said),
                Err(e) => (false, e.to_string()),
            }));
            confirm.set(None);
            data.refetch();
        });
    };
    view! {
        <ClusterTabs ns name/>
        <div class="toolbar">
            <input
                type="search"
                placeholder=move || {
                    if by_username.get() { "Search usernames" } else { "Search client ids" }
                }
                data-testid="client-search"
                prop:value=move || text.get()
                on:input=move |ev| {
                    text.set(event_target_value(&ev));
                    page.set(1);
                }
            />
            <label>
                <input
                    type="checkbox"
                    data-testid="client-search-username"
                    prop:checked=move || by_username.get()
                    on:change=move |ev| {
                        by_username.set(event_target_checked(&ev));
                        page.set(1);
                    }
                />
                " by username"
            </label>
        </div>
        <Flash flash/>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || {
                data.get()
                    .map(|r| match r {
                        Err(e) => view! { <ErrorBox message=e.to_string()/> }.into_any(),
                        Ok(p) => clients_table(p, page, confirm).into_any(),
                    })
            }}
        </Transition>
        {move || {
            confirm.get().map(|client_id| {
                let id = client_id.clone();
                view! {
                    <div class="modal-backdrop">
                        <div class="modal" role="dialog" aria-modal="true">
                            <h3>"Disconnect client?"</h3>
                            <p>
                                "Disconnect " <code>{client_id.clone()}</code>
                                "? It may reconnect at once (and be sent to another node)."
                            </p>
                            <div class="actions">
                                <button
                                    class="danger"
                                    data-testid="kick-confirm"
                                    on:click=move |_| kick(id.clone())
                                >
                                    "Disconnect"
                                </button>
                                <button data-testid="kick-cancel" on:click=move |_| confirm.set(None)>
                                    "Cancel"
                                </button>
                            </div>
                        </div>
                    </div>
                }
            })
        }}
    }
}

fn clients_table(
    p: ClientsPage,
    page: RwSignal<u32>,
    confirm: RwSignal<Option<String>>,
) -> impl IntoView {
    let admin = is_admin();
    let info = match p.total {
        Some(total) => format!("page {} · {} clients", p.page, total),
        None => format!("page {}", p.page),
    };
    let has_next = p.has_next;
    let first = p.page <= 1;
    let empty = p.clients.is_empty();
    let rows = p
        .clients
        .into_iter()
        .map(|c| row(c, admin, confirm))
        .collect_view();
    view! {
        <div class="pager">
            <button data-testid="page-prev" disabled=first on:click=move |_| page.update(|p| *p = p.saturating_sub(1).max(1))>
                "‹ Previous"
            </button>
            <span data-testid="page-info">{info}</span>
            <button data-testid="page-next" disabled=!has_next on:click=move |_| page.update(|p| *p += 1)>
                "Next ›"
            </button>
        </div>
        {if empty {
            view! { <p class="empty">"No connected client matches."</p> }.into_any()
        } else {
            table(
                &[
                    "Client id",
                    "Username",
                    "Node",
                    "Connected since",
                    "Address",
                    "Protocol",
                    "Subscriptions",
                    "Queued",
                    "",
                ],
                None,
                rows,
            )
            .into_any()
        }}
    }
}

fn row(c: ClientRow, admin: bool, confirm: RwSignal<Option<String>>) -> impl IntoView {
    let id = c.client_id.clone();
    let kick = admin.then(|| {
        view! {
            <button class="danger small" data-testid="kick" on:click=move |_| confirm.set(Some(id.clone()))>
                "Disconnect"
            </button>
        }
    });
    view! {
        <tr data-testid="client-row" data-client-id=c.client_id.clone()>
            <td class="mono">{c.client_id.clone()}</td>
            <td>{or_dash(c.username.clone())}</td>
            <td class="mono">{c.node.clone()}</td>
            <td>{or_dash(c.connected_at.clone())}</td>
            <td class="mono">{or_dash(c.address.clone())}</td>
            <td>{or_dash(c.protocol.clone())}</td>
            <td class="num">{or_dash(c.subscriptions)}</td>
            <td class="num">{or_dash(c.queue_len)}</td>
            <td>{kick}</td>
        </tr>
    }
}
