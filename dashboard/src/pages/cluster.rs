//! `/clusters/:ns/:name`: nodes, membership matrix, load balancer, Events, connections over time.

use leptos::prelude::*;

use super::{cluster_params, ClusterTabs};
use crate::api::cluster;
use crate::components::{
    bytes, duration, or_dash, percent_of, refresh_tick, table, Badge, ErrorBox, LineChart, Series,
};
use crate::model::{BackendRow, ClusterDetail, EventRow, MembershipMatrix, NodeRow};

/// The cluster page.
#[component]
pub fn ClusterScreen() -> impl IntoView {
    let (ns, name) = cluster_params();
    let tick = refresh_tick();
    let data = Resource::new(
        move || (ns.get(), name.get(), tick.get()),
        |(ns, name, _)| cluster(ns, name),
    );
    view! {
        <ClusterTabs ns name/>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || {
                data.get()
                    .map(|r| match r {
                        Err(e) => view! { <ErrorBox message=e.to_string()/> }.into_any(),
                        Ok(d) => detail(d).into_any(),
                    })
            }}
        </Transition>
    }
}

fn detail(d: ClusterDetail) -> impl IntoView {
    let conditions = d
        .conditions
        .iter()
        .map(|c| {
            view! {
                <span class="condition" title=format!("{} (since {})", c.message, c.since)>
                    {c.type_.clone()} " " <Badge text=c.status.clone()/> " "
                    <span class="muted">{c.reason.clone()}</span>
                </span>
            }
        })
        .collect_view();
    let scale_down = d
        .scale_down
        .clone()
        .map(|s| view! { <p class="banner warn">{s}</p> });
    let history = Series {
        label: "connections".into(),
        class: "in",
        points: d
            .history
            .iter()
            .map(|p| (p.at, Some(p.connections as f64)))
            .collect(),
    };
    view! {
        <p class="summary">
            <Badge text=if d.summary.ready { "Ready" } else { "Not ready" }/>
            " " {format!("{} {}", d.summary.broker, d.summary.version)} " · "
            {format!("{} of {} Pods ready", d.summary.ready_replicas, d.summary.replicas)} " · "
            {format!("{} connections", d.summary.connections)} " · "
            <span class="muted">{d.summary.message.clone()}</span>
        </p>
        {scale_down}
        <div class="conditions">{conditions}</div>
        <h2>"Nodes"</h2>
        {nodes(d.nodes)}
        <div class="two">
            <section>
                <h2>"Membership: who sees whom"</h2>
                {matrix(d.matrix)}
            </section>
            <section>
                <h2>"Connections"</h2>
                {if d.history.is_empty() {
                    view! { <p class="empty">"No telemetry yet (every 10 s)."</p> }.into_any()
                } else {
                    view! { <LineChart series=vec![history] unit="clients"/> }.into_any()
                }}
            </section>
        </div>
        <h2>"Load balancer"</h2>
        {backends(d.summary.load_balancer, d.backends)}
        <h2>"Recent Events"</h2>
        {events(d.events)}
    }
}

fn nodes(nodes: Vec<NodeRow>) -> impl IntoView {
    if nodes.is_empty() {
        return view! { <p class="empty">"No nodes yet."</p> }.into_any();
    }
    let rows = nodes
        .into_iter()
        .map(|n| {
            let health = match n.healthy {
                Some(true) => "healthy".to_string(),
                Some(false) => format!("failing: {}", n.failed_checks.join(", ")),
                None => "—".to_string(),
            };
            let connections = match n.connections_limit {
                Some(limit) => format!("{} / {limit}", or_dash(n.connections)),
                None => or_dash(n.connections),
            };
            let memory = match (n.memory_used_bytes, percent_of(n.memory_used_bytes, n.memory_limit_bytes)) {
                (Some(used), Some(p)) => format!("{} ({p}%)", bytes(used)),
                (Some(used), None) => bytes(used),
                _ => "—".into(),
            };
            let cpu = n.cpu_percent.map(|p| format!("{p}%")).unwrap_or_else(|| "—".into());
            view! {
                <tr data-testid="node-row" data-pod=n.pod.clone()>
                    <td>{n.pod.clone()}</td>
                    <td class="mono">{n.node.clone()}</td>
                    <td>{or_dash(n.role.clone())}</td>
                    <td data-testid="node-status" title=n.error.clone().unwrap_or_default()>
                        <Badge text=n.status.clone()/>
                    </td>
                    <td data-testid="node-membership" title=n.last_repair.clone().unwrap_or_default()>
                        <Badge text=n.membership.clone()/>
                    </td>
                    <td>{health}</td>
                    <td class="num">{connections}</td>
                    <td class="num">{memory}</td>
                    <td class="num">{cpu}</td>
                    <td>{n.uptime_seconds.map(duration).unwrap_or_else(|| "—".into())}</td>
                    <td>{or_dash(n.version.clone())}</td>
                </tr>
            }
        })
        .collect_view();
    table(
        &[
            "Pod",
            "Node",
            "Role",
            "Status",
            "Membership",
            "Health",
            "Connections",
            "Memory",
            "CPU",
            "Uptime",
            "Version",
        ],
        None,
        rows,
    )
    .into_any()
}

fn matrix(m: MembershipMatrix) -> impl IntoView {
    if m.rows.is_empty() {
        return view! { <p class="empty">"No node has reported its view yet."</p> }.into_any();
    }
    // `rabbit@bus-0.bus-headless.iot.svc.cluster.local` -> `bus-0` (the full name on hover).
    let short = |n: &str| {
        let host = n.split_once('@').map_or(n, |(_, h)| h);
        host.split('.').next().unwrap_or(host).to_string()
    };
    let head = m
        .columns
        .iter()
        .map(|c| view! { <th class="mono" title=c.clone()>{short(c)}</th> })
        .collect_view();
    let rows = m
        .rows
        .into_iter()
        .map(|r| {
            let cells = r
                .sees
                .iter()
                .map(|s| match s {
                    Some(true) => view! { <td class="cell ok">"✓"</td> }.into_any(),
                    Some(false) => view! { <td class="cell bad">"✗"</td> }.into_any(),
                    None => view! { <td class="cell muted">"?"</td> }.into_any(),
                })
                .collect_view();
            view! {
                <tr>
                    <th class="mono" title=r.node.clone()>{short(&r.node)}</th>
                    {cells}
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="matrix" data-testid="membership-matrix">
            <thead>
                <tr>
                    <th>"sees →"</th>
                    {head}
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

fn backends(enabled: bool, rows: Vec<BackendRow>) -> impl IntoView {
    if !enabled {
        return view! {
            <p class="empty">"No load balancer (spec.loadBalancer.enabled is false)."</p>
        }
        .into_any();
    }
    if rows.is_empty() {
        return view! { <p class="empty">"No HAProxy replica has answered yet."</p> }.into_any();
    }
    let rows = rows
        .into_iter()
        .map(|b| {
            view! {
                <tr data-testid="backend-row">
                    <td>{b.lb_pod.clone()}</td>
                    <td title=b.address.clone()>{b.server.clone()}</td>
                    <td><Badge text=b.state.clone()/></td>
                    <td class="muted">{b.reason.clone()}</td>
                </tr>
            }
        })
        .collect_view();
    table(&["HAProxy", "Server", "State", "Last check"], None, rows).into_any()
}

fn events(list: Vec<EventRow>) -> impl IntoView {
    if list.is_empty() {
        return view! { <p class="empty">"No Events."</p> }.into_any();
    }
    let rows = list
        .into_iter()
        .map(|e| {
            view! {
                <tr data-testid="event-row">
                    <td>{e.time.clone()}</td>
                    <td><Badge text=e.type_.clone()/></td>
                    <td>{e.reason.clone()}</td>
                    <td>{e.message.clone()}</td>
                    <td class="num">{e.count}</td>
                </tr>
            }
        })
        .collect_view();
    table(&["When", "Type", "Reason", "Message", "Count"], None, rows).into_any()
}
