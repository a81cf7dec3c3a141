//! `/clusters/:ns/:name/topics`: per-topic message rates over time; admins add and remove
//! metered topics.

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::{cluster_params, ClusterTabs};
use crate::api::{parse_topics, set_metered_topics, topics};
use crate::app::{current_user, is_admin};
use crate::components::{or_dash, refresh_tick, ErrorBox, Flash, LineChart, Series};
use crate::model::{TopicSeries, TopicsView};

/// The topics page.
#[component]
pub fn TopicsScreen() -> impl IntoView {
    let (ns, name) = cluster_params();
    let tick = refresh_tick();
    let data = Resource::new(
        move || (ns.get(), name.get(), tick.get()),
        |(ns, name, _)| topics(ns, name),
    );
    let new_topic = RwSignal::new(String::new());
    let flash = RwSignal::new(None::<(bool, String)>);
    // Writes the whole list (the spec field), then shows the outcome.
    let save = move |list: Vec<String>, said: String| {
        let csrf = current_user().map(|m| m.csrf).unwrap_or_default();
        let (ns, name) = (ns.get_untracked(), name.get_untracked());
        spawn_local(async move {
            let result = set_metered_topics(ns, name, list.join("\n"), csrf).await;
            flash.set(Some(match result {
                Ok(()) => (true, said),
                Err(e) => (false, e.to_string()),
            }));
            data.refetch();
        });
    };
    let current = move || {
        data.get_untracked()
            .and_then(Result::ok)
            .map(|v| v.metered)
            .unwrap_or_default()
    };
    let add = move || {
        let topic = new_topic.get_untracked().trim().to_string();
        let mut list = current();
        list.push(topic.clone());
        match parse_topics(&list.join("\n")) {
            Ok(list) if !topic.is_empty() => {
                new_topic.set(String::new());
                save(list, format!("Metering {topic}"));
            }
            Ok(_) => flash.set(Some((false, "Type a topic first.".into()))),
            Err(e) => flash.set(Some((false, e))),
        }
    };
    let remove = move |topic: String| {
        let list: Vec<String> = current().into_iter().filter(|t| *t != topic).collect();
        save(list, format!("No longer metering {topic}"));
    };
    view! {
        <ClusterTabs ns name/>
        {move || {
            is_admin().then(|| {
                view! {
                    <form class="toolbar" on:submit=move |ev| {
                        ev.prevent_default();
                        add();
                    }>
                        <input
                            placeholder="exact topic, e.g. sensors/room-1/temperature"
                            data-testid="topic-input"
                            prop:value=move || new_topic.get()
                            on:input=move |ev| new_topic.set(event_target_value(&ev))
                        />
                        <button type="submit" data-testid="topic-add">"Meter topic"</button>
                    </form>
                }
            })
        }}
        <Flash flash/>
        <Transition fallback=|| view! { <p class="muted">"Loading…"</p> }>
            {move || {
                data.get()
                    .map(|r| match r {
                        Err(e) => view! { <ErrorBox message=e.to_string()/> }.into_any(),
                        Ok(v) => cards(v, remove).into_any(),
                    })
            }}
        </Transition>
    }
}

fn cards(v: TopicsView, remove: impl Fn(String) + Copy + Send + Sync + 'static) -> impl IntoView {
    let error = v.error.clone().map(|e| view! { <ErrorBox message=e/> });
    if v.metered.is_empty() {
        return view! {
            {error}
            <p class="empty">
                "No metered topics. Add one above (admins), or set "
                <code>"spec.monitoring.meteredTopics"</code> "."
            </p>
        }
        .into_any();
    }
    let admin = is_admin();
    let cards = v
        .series
        .into_iter()
        .map(|s| card(s, admin, remove))
        .collect_view();
    view! {
        {error}
        <div class="cards">{cards}</div>
    }
    .into_any()
}

fn card(
    s: TopicSeries,
    admin: bool,
    remove: impl Fn(String) + Copy + Send + Sync + 'static,
) -> impl IntoView {
    let latest = s
        .points
        .iter()
        .rev()
        .find(|p| p.rate_in.is_some() || p.rate_out.is_some());
    // A broker that does not count a direction (RabbitMQ counts deliveries, not publishes) shows
    // a dash, not a zero.
    let figure = |r: Option<f64>| r.map_or_else(|| "—".to_string(), |r| format!("{r:.1}"));
    let rate = match latest {
        Some(p) => format!(
            "{} msg/s in · {} msg/s out",
            figure(p.rate_in),
            figure(p.rate_out)
        ),
        None => "no rate yet".to_string(),
    };
    let series = vec![
        Series {
            label: "in".into(),
            class: "in",
            points: s.points.iter().map(|p| (p.at, p.rate_in)).collect(),
        },
        Series {
            label: "out".into(),
            class: "out",
            points: s.points.iter().map(|p| (p.at, p.rate_out)).collect(),
        },
    ];
    let topic = s.topic.clone();
    let remove_button = admin.then(|| {
        view! {
            <button class="small" data-testid="topic-remove" on:click=move |_| remove(topic.clone())>
                "Stop metering"
            </button>
        }
    });
    view! {
        <section class="card" data-testid="topic-chart" data-topic=s.topic.clone()>
            <header>
                <h3 class="mono">{s.topic.clone()}</h3>
                {remove_button}
            </header>
            <p class="rate" data-testid="topic-rate">{rate}</p>
            <LineChart series unit="msg/s"/>
            <p class="muted">
                {format!(
                    "in {} · out {} · dropped {} · subscribers {} · queued {}",
                    or_dash(s.messages_in),
                    or_dash(s.messages_out),
                    or_dash(s.messages_dropped),
                    or_dash(s.subscribers),
                    or_dash(s.queued),
                )}
            </p>
        </section>
    }
}
