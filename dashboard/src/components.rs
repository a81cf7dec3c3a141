//! Small pieces the pages share: figures formatted for people, badges, the live-refresh tick and
//! an SVG line chart (no chart library: a polyline per series).

use std::time::Duration;

use leptos::prelude::*;

/// How often the pages fetch their data again while open.
pub const REFRESH: Duration = Duration::from_secs(3);

/// A counter that goes up every [`REFRESH`] in the browser (never on the server), for resources
/// to refetch on.
pub fn refresh_tick() -> ReadSignal<u64> {
    let (tick, set_tick) = signal(0u64);
    Effect::new(move |_| {
        if let Ok(handle) = set_interval_with_handle(move || set_tick.update(|t| *t += 1), REFRESH)
        {
            on_cleanup(move || handle.clear());
        }
    });
    tick
}

/// `1.5 GiB`, `320 MiB`, `12 KiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `3d 4h`, `5h 12m`, `7m 3s`, `42s`.
pub fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// `used` of `limit` in percent, when both are known.
pub fn percent_of(used: Option<u64>, limit: Option<u64>) -> Option<u64> {
    match (used, limit) {
        (Some(u), Some(l)) if l > 0 => Some(u.saturating_mul(100) / l),
        _ => None,
    }
}

/// A figure or an em dash.
pub fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "—".into())
}

/// The badge class of a state word: green, amber, red or grey.
pub fn tone(word: &str) -> &'static str {
    match word.to_ascii_lowercase().as_str() {
        "up" | "joined" | "ready" | "true" | "running" | "resolved" | "l7ok" | "yes" => "ok",
        "drain" | "warning" | "progressing" | "unknown" | "maint" | "no check" => "warn",
        "down" | "stray" | "critical" | "false" | "firing" | "unreachable" | "ghost" => "bad",
        _ if word.starts_with("UP ") || word.starts_with("DOWN ") => "warn",
        _ => "muted",
    }
}

/// A coloured label.
#[component]
pub fn Badge(#[prop(into)] text: String) -> impl IntoView {
    let class = format!("badge {}", tone(&text));
    view! { <span class=class>{text}</span> }
}

/// A server function's error, shown in place of the data.
#[component]
pub fn ErrorBox(#[prop(into)] message: String) -> impl IntoView {
    view! { <p class="error">{message}</p> }
}

/// A table with these column headings around `rows` (`testid`: its `data-testid`).
pub fn table(
    headings: &'static [&'static str],
    testid: Option<&'static str>,
    rows: impl IntoView + 'static,
) -> impl IntoView {
    let head = headings
        .iter()
        .map(|h| view! { <th>{*h}</th> })
        .collect_view();
    view! {
        <table data-testid=testid>
            <thead>
                <tr>{head}</tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

/// The outcome of an action: green when it worked, red with the error otherwise.
#[component]
pub fn Flash(flash: RwSignal<Option<(bool, String)>>) -> impl IntoView {
    move || {
        flash.get().map(|(ok, text)| {
            let class = if ok { "flash ok" } else { "flash bad" };
            view! { <p class=class data-testid="flash">{text}</p> }
        })
    }
}

/// One line of a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// CSS class of the line (its colour).
    pub class: &'static str,
    /// (unix seconds, value); `None` values break nothing, they are skipped.
    pub points: Vec<(i64, Option<f64>)>,
}

/// The SVG `points` of a series scaled into a `width` x `height` box over `t0..=t1` and
/// `0..=max`.
pub fn polyline(
    points: &[(i64, Option<f64>)],
    t0: i64,
    t1: i64,
    max: f64,
    width: f64,
    height: f64,
) -> String {
    let span = (t1 - t0).max(1) as f64;
    let max = if max > 0.0 { max } else { 1.0 };
    points
        .iter()
        .filter_map(|(t, v)| {
            let v = (*v)?;
            let x = (*t - t0) as f64 / span * width;
            let y = height - (v / max).clamp(0.0, 1.0) * height;
            Some(format!("{x:.1},{y:.1}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A line chart of `series` over time, with its maximum and time span written on it.
#[component]
pub fn LineChart(series: Vec<Series>, #[prop(into)] unit: String) -> impl IntoView {
    const W: f64 = 600.0;
    const H: f64 = 140.0;
    let times: Vec<i64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(t, _)| *t))
        .collect();
    let (t0, t1) = (
        times.iter().copied().min().unwrap_or(0),
        times.iter().copied().max().unwrap_or(0),
    );
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|(_, v)| *v))
        .fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let span = duration((t1 - t0).max(0) as u64);
    let legend: Vec<_> = series
        .iter()
        .map(|s| view! { <span class=format!("legend {}", s.class)>{s.label.clone()}</span> })
        .collect();
    let lines: Vec<_> = series
        .iter()
        .map(|s| {
            let points = polyline(&s.points, t0, t1, top, W, H);
            view! { <polyline class=format!("line {}", s.class) points=points></polyline> }
        })
        .collect();
    view! {
        <div class="chart">
            <svg viewBox=format!("0 0 {W} {H}") preserveAspectRatio="none" role="img">
                <line class="axis" x1="0" y1=H.to_string() x2=W.to_string() y2=H.to_string()></line>
                {lines}
            </svg>
            <div class="chart-meta">
                <span>{format!("max {:.1} {unit}", max)}</span>
                <span>{format!("last {span}")}</span>
                {legend}
            </div>
        </div>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_like_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(300 << 20), "300 MiB");
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(3 * 86_400 + 4 * 3600 + 5), "3d 4h");
        assert_eq!(percent_of(Some(50), Some(200)), Some(25));
        assert_eq!(percent_of(Some(50), Some(0)), None);
        assert_eq!(or_dash::<u64>(None), "—");
        assert_eq!(tone("DOWN"), "bad");
        assert_eq!(tone("joined"), "ok");
    }

    #[test]
    fn a_series_is_scaled_into_the_box_and_gaps_are_skipped() {
        let p = polyline(
            &[(0, Some(0.0)), (5, None), (10, Some(10.0))],
            0,
            10,
            10.0,
            100.0,
            50.0,
        );
        assert_eq!(p, "0.0,50.0 100.0,0.0");
    }
}
