//! The SLO pages: `/slos` (every SLO with its objective, SLI, budget and status, sortable) and
//! `/slo/{name}` (budget in percent and events, burn-down over the window, SLI over time, burn
//! rate per tier against its threshold, time to exhaustion, alerts with history, and the worst
//! traces of the window for span SLIs). Data comes from the SLO engine's latest evaluation
//! ([`SloStatus`]); only the worst traces read the store.
//!
//! URL state of `/slos`: `sort` (`name`, `service`, `sli`, `budget`, `status`) and `dir`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use obsbox_slo::{AlertState, BudgetUnit, Health, Sli, Slo, SloDetail, SloStatus, SloSummary, TierBurn};
use obsbox_storage::{SpanQuery, TimeRange};
use serde::Deserialize;

use super::svg::{Rule, Svg, line_chart};
use super::{Layout, Nav, UiError, blocking, fmt, render};
use crate::AppState;

/// Traces listed under "worst traces".
const WORST: usize = 10;
/// Bad spans read to pick them from.
const WORST_SCAN: usize = 500;
/// How far back the worst traces are looked for (at most the SLO window).
const WORST_LOOKBACK: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/slos", get(list)).route("/slo/{name}", get(page))
}

fn engine(state: &AppState) -> Option<Arc<dyn SloStatus>> {
    state.slos.clone()
}

/// A health as a word and its badge class.
pub(crate) fn health(h: Health) -> (&'static str, &'static str) {
    match h {
        Health::Healthy => ("healthy", "ok"),
        Health::AtRisk => ("at risk", "warn"),
        Health::Breached => ("breached", "bad"),
        Health::NoData => ("no data", "none"),
    }
}

fn state_word(s: AlertState) -> (&'static str, &'static str) {
    match s {
        AlertState::Inactive => ("inactive", "none"),
        AlertState::Pending => ("pending", "warn"),
        AlertState::Firing => ("firing", "bad"),
        AlertState::Resolved => ("resolved", "ok"),
    }
}

fn pct(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{:.*}%", digits, v * 100.0))
}

/// Decimals of the target in percent (99.9% -> 1, 99.95% -> 2), at most 4.
fn target_digits(target: f64) -> usize {
    let p = target * 100.0;
    (0..4)
        .find(|d| {
            let f = 10f64.powi(*d as i32);
            ((p * f).round() / f - p).abs() < 1e-9
        })
        .unwrap_or(4)
}

fn human_s(s: f64) -> String {
    if !s.is_finite() {
        return "–".into();
    }
    let d = Duration::from_secs(s.max(0.0).round() as u64);
    if d.as_secs() >= 2 * 86_400 {
        format!("{:.1} days", s / 86_400.0)
    } else if d.as_secs() >= 7200 {
        format!("{:.1} h", s / 3600.0)
    } else if d.as_secs() >= 120 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{} s", d.as_secs())
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

// --- the list ---------------------------------------------------------------------------------

#[derive(Deserialize)]
struct ListParams {
    sort: Option<String>,
    dir: Option<String>,
}

struct Row {
    name: String,
    href: String,
    display_name: String,
    service: String,
    objective: String,
    window: String,
    sli: String,
    sli_low: bool,
    budget: String,
    /// Whether there is a budget to draw (none without events).
    has_budget: bool,
    /// Width class of the budget bar, `w0`..`w10`.
    budget_bar: String,
    budget_low: bool,
    status: &'static str,
    status_class: &'static str,
    /// Tiers whose alert is firing, one badge each.
    firing: Vec<String>,
}

struct Column {
    label: &'static str,
    href: String,
    sorted: bool,
    arrow: &'static str,
    numeric: bool,
}

#[derive(Template)]
#[template(path = "slos.html")]
struct ListPage {
    layout: Layout,
    enabled: bool,
    rows: Vec<Row>,
    columns: Vec<Column>,
    errors: Vec<String>,
}

const SORTS: &[(&str, &str, bool)] = &[
    ("name", "SLO", false),
    ("service", "Service", false),
    ("objective", "Objective", true),
    ("window", "Window", false),
    ("sli", "SLI", true),
    ("budget", "Budget remaining", true),
    ("status", "Status", false),
];

fn health_rank(h: Health) -> u8 {
    match h {
        Health::Breached => 0,
        Health::AtRisk => 1,
        Health::Healthy => 2,
        Health::NoData => 3,
    }
}

fn row(s: &SloSummary) -> Row {
    let digits = target_digits(s.objective);
    let (status, status_class) = if s.firing.is_empty() { health(s.health) } else { ("firing", "bad") };
    let bar = s.budget_remaining.map_or(0, |b| (b.clamp(0.0, 1.0) * 10.0).round() as u32);
    Row {
        name: s.name.clone(),
        href: format!("/slo/{}", s.name),
        display_name: s.display_name.clone(),
        service: s.service.clone(),
        objective: pct(Some(s.objective), digits),
        window: s.window.clone(),
        sli: pct(s.sli, digits + 1),
        sli_low: s.sli.is_some_and(|v| v < s.objective),
        budget: pct(s.budget_remaining, 1),
        has_budget: s.budget_remaining.is_some(),
        budget_bar: format!("w{bar}"),
        budget_low: s.budget_remaining.is_some_and(|b| b < 0.25),
        status,
        status_class,
        firing: s.firing.clone(),
    }
}

async fn list(State(state): State<AppState>, Query(p): Query<ListParams>) -> Result<Response, UiError> {
    let sort = p.sort.as_deref().unwrap_or("status");
    if !SORTS.iter().any(|(k, _, _)| *k == sort) {
        return Err(UiError::bad_request(format!(
            "unknown sort {sort:?}: use one of {}",
            SORTS.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
        )));
    }
    let desc = match p.dir.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(d) => return Err(UiError::bad_request(format!("unknown dir {d:?}: use asc or desc"))),
    };
    let layout = Layout::new("SLOs", Nav::Slos, &[]);
    let Some(engine) = engine(&state) else {
        return Ok(render(&ListPage { layout, enabled: false, rows: vec![], columns: vec![], errors: vec![] }));
    };
    let mut slos = engine.list();
    let nan_low = |v: Option<f64>| v.unwrap_or(f64::NEG_INFINITY);
    slos.sort_by(|a, b| {
        let o = match sort {
            "service" => a.service.cmp(&b.service),
            "objective" => a.objective.total_cmp(&b.objective),
            "window" => a.window.cmp(&b.window),
            "sli" => nan_low(a.sli).total_cmp(&nan_low(b.sli)),
            "budget" => nan_low(a.budget_remaining).total_cmp(&nan_low(b.budget_remaining)),
            "status" => (b.firing.len(), health_rank(a.health)).cmp(&(a.firing.len(), health_rank(b.health))),
            _ => std::cmp::Ordering::Equal,
        };
        o.then_with(|| a.name.cmp(&b.name))
    });
    if desc {
        slos.reverse();
    }
    let columns = SORTS
        .iter()
        .map(|(key, label, numeric)| {
            let sorted = *key == sort;
            let next = if sorted && !desc { "desc" } else { "asc" };
            Column {
                label,
                href: format!("/slos?sort={key}&dir={next}"),
                sorted,
                arrow: if !sorted {
                    ""
                } else if desc {
                    " ↓"
                } else {
                    " ↑"
                },
                numeric: *numeric,
            }
        })
        .collect();
    let rows = slos.iter().map(row).collect();
    Ok(render(&ListPage { layout, enabled: true, rows, columns, errors: engine.errors() }))
}

// --- one SLO ----------------------------------------------------------------------------------

struct TierRow {
    name: String,
    severity: &'static str,
    threshold: String,
    long_window: String,
    long: String,
    long_hot: bool,
    short_window: String,
    short: String,
    short_hot: bool,
    events: String,
    condition: bool,
    state: &'static str,
    state_class: &'static str,
}

struct HistoryRow {
    at: String,
    tier: String,
    from: &'static str,
    to: &'static str,
    to_class: &'static str,
    burn: String,
}

struct TraceRow {
    href: String,
    trace_id: String,
    operation: String,
    duration: String,
    error: bool,
    started: String,
}

#[derive(Template)]
#[template(path = "slo.html")]
struct SloPage {
    layout: Layout,
    row: Row,
    description: String,
    indicator: String,
    budgeting: String,
    source: String,
    budget_events: String,
    exhaustion: String,
    exhaustion_note: String,
    good_total: String,
    window_span: String,
    evaluated: String,
    scale_note: String,
    burn_down: Svg,
    sli_chart: Svg,
    tiers: Vec<TierRow>,
    history: Vec<HistoryRow>,
    traces: Vec<TraceRow>,
    traces_note: String,
    search_href: String,
}

fn burn(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.2}×"))
}

fn tier_row(t: &TierBurn, d: &SloDetail) -> TierRow {
    let alert = d.alerts.iter().find(|a| a.tier == t.tier);
    let (state, state_class) = state_word(alert.map_or(AlertState::Inactive, |a| a.state));
    TierRow {
        name: t.tier.clone(),
        severity: t.severity.as_str(),
        threshold: format!("{:.1}×", t.threshold),
        long_window: human_s(t.long_s),
        long: burn(t.long),
        long_hot: t.long.is_some_and(|v| v >= t.threshold),
        short_window: human_s(t.short_s),
        short: burn(t.short),
        short_hot: t.short.is_some_and(|v| v >= t.threshold),
        events: fmt::count(t.long_events),
        condition: t.condition,
        state,
        state_class,
    }
}

/// The SLI of `slo` in words.
fn describe(slo: &Slo) -> String {
    match &slo.sli {
        Sli::Spans { selector, good } => {
            let mut what = vec![];
            if let Some(s) = &selector.service {
                what.push(format!("service {s}"));
            }
            if let Some(o) = &selector.operation {
                what.push(format!("operation {o}"));
            }
            if let Some(k) = selector.kind {
                let kind = ["unspecified", "internal", "server", "client", "producer", "consumer"];
                what.push(format!("kind {}", kind.get(k as usize).unwrap_or(&"?")));
            }
            for (k, v) in &selector.attributes {
                what.push(format!("{k} = {v:?}"));
            }
            let mut ok = vec![];
            if good.no_error {
                ok.push("not an error".to_owned());
            }
            if let Some(d) = good.max_duration {
                ok.push(format!("at most {}", fmt::duration_ns(d.as_nanos() as f64)));
            }
            format!("Events: spans of {}. Good: {}.", what.join(", "), ok.join(" and "))
        }
        Sli::Metrics { numerator, numerator_is_bad, total } => format!(
            "Events: increase of {total}. {}: increase of {numerator}.",
            if *numerator_is_bad { "Bad" } else { "Good" }
        ),
    }
}

/// The page of one SLO from its evaluation; `traces` are the worst traces found.
fn slo_page(d: &SloDetail, slo: &Slo, traces: Vec<TraceRow>, traces_note: String) -> SloPage {
    let s = &d.summary;
    let digits = target_digits(s.objective);
    let scale = f64::from(d.time_scale.max(1));
    let burn_points: Vec<(i64, Option<f64>)> = d.burn_down.iter().map(|p| (p.t_ms, Some(p.value * 100.0))).collect();
    let burn_down = line_chart(
        &burn_points,
        (0.0, 100.0),
        &[Rule { value: 0.0, label: "budget spent".into() }],
        &|v| format!("{v:.0}%"),
        "error budget remaining over the window",
    );
    let sli_points: Vec<(i64, Option<f64>)> = d.sli_series.iter().map(|p| (p.t_ms, Some(p.value * 100.0))).collect();
    let lo = (s.objective * 100.0 - (1.0 - s.objective) * 300.0).max(0.0);
    let sli_chart = line_chart(
        &sli_points,
        (lo, 100.0),
        &[Rule { value: s.objective * 100.0, label: format!("target {}", pct(Some(s.objective), digits)) }],
        &|v| format!("{v:.*}%", digits),
        "SLI per step over the window",
    );
    let unit = match d.budget.unit {
        BudgetUnit::Events => "events",
        BudgetUnit::Slices => "slices",
    };
    let history = d
        .history
        .iter()
        .map(|t| {
            let (to, to_class) = state_word(t.to);
            HistoryRow {
                at: super::svg::utc_minute(t.at_ms) + &format!(":{:02}", t.at_ms.div_euclid(1000) % 60),
                tier: t.tier.clone(),
                from: state_word(t.from).0,
                to,
                to_class,
                burn: format!("{} / {}", burn(t.long), burn(t.short)),
            }
        })
        .collect();
    let end_ms = s.evaluated_at_ms.unwrap_or_else(now_ms);
    SloPage {
        layout: Layout::new(format!("SLO {}", s.display_name), Nav::Slos, &[]),
        row: row(s),
        description: d.description.clone(),
        indicator: describe(slo),
        budgeting: s.budgeting.replace('_', " "),
        source: d.source.clone(),
        scale_note: if d.time_scale > 1 {
            format!("Demo time: SLO time runs {}× faster than the clock; windows below are in SLO time.", d.time_scale)
        } else {
            String::new()
        },
        budget_events: format!(
            "{} of {} bad {unit} left",
            fmt::count(d.budget.remaining.max(0.0).floor() as u64),
            fmt::count(d.budget.allowed_bad.floor() as u64)
        ),
        // SLO time, as every other duration on the page; in demo time the clock time too.
        exhaustion: match d.time_to_exhaustion_s {
            Some(secs) if secs <= 0.0 => "budget spent".into(),
            Some(secs) => human_s(secs),
            None if d.budget.remaining <= 0.0 && d.budget.total > 0.0 => "budget spent".into(),
            None => "not burning".into(),
        },
        exhaustion_note: match d.time_to_exhaustion_s {
            Some(secs) if secs > 0.0 && d.time_scale > 1 => {
                format!("at the current burn rate ({} of clock time)", human_s(secs / scale))
            }
            Some(secs) if secs > 0.0 => "at the current burn rate".into(),
            _ if d.budget.total > 0.0 && d.budget.remaining <= 0.0 => "the window has overspent its budget".into(),
            _ => "the page tiers' long windows burn no budget".into(),
        },
        good_total: format!(
            "{} bad of {} {unit}",
            fmt::count(d.budget.bad.round() as u64),
            fmt::count(d.budget.total.round() as u64)
        ),
        window_span: format!("{} – {} UTC", super::svg::utc_minute(d.window_start_ms), super::svg::utc_minute(end_ms)),
        evaluated: match s.evaluated_at_ms {
            None => "not evaluated yet".into(),
            Some(t) => format!("evaluated {} s ago", ((now_ms() - t) / 1000).max(0)),
        },
        burn_down,
        sli_chart,
        tiers: d.tiers.iter().map(|t| tier_row(t, d)).collect(),
        history,
        traces,
        traces_note,
        search_href: format!("/search?service={}&error=true", urlencode(&s.service)),
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn page(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, UiError> {
    let Some(engine) = engine(&state) else {
        return Err(UiError::not_found("no SLOs are configured: start obsbox with --slo-dir (docs/slo.md)"));
    };
    let (Some(detail), Some(slo)) = (engine.detail(&name), engine.definition(&name)) else {
        return Err(UiError::not_found(format!("no SLO named {name:?}")));
    };
    let (traces, note) = match slo.span_predicates() {
        Some((_, bad)) => {
            let end_ms = detail.summary.evaluated_at_ms.unwrap_or_else(now_ms);
            let end = (end_ms.max(0) as u64).saturating_mul(1_000_000);
            let lookback =
                (WORST_LOOKBACK.as_nanos() as u64).min((end_ms - detail.window_start_ms).max(0) as u64 * 1_000_000);
            let time = TimeRange { start_ns: end.saturating_sub(lookback), end_ns: end.saturating_add(1) };
            let reader = state.reader.clone();
            let mut spans =
                blocking(move || reader.find_spans(&SpanQuery { predicate: bad, time, limit: WORST_SCAN })).await?;
            // Errors first, then the slowest; one row per trace.
            spans.sort_by_key(|r| {
                let s = &r.span;
                let err = s.status.as_ref().is_some_and(|st| st.code == 2);
                (!err, std::cmp::Reverse(s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano)))
            });
            let mut seen = std::collections::HashSet::new();
            let rows: Vec<TraceRow> = spans
                .iter()
                .filter(|r| seen.insert(r.span.trace_id.clone()))
                .take(WORST)
                .map(|r| {
                    let s = &r.span;
                    let id = hex::encode(&s.trace_id);
                    TraceRow {
                        href: format!("/trace/{id}"),
                        trace_id: id,
                        operation: s.name.clone(),
                        duration: fmt::duration_ns(s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64),
                        error: s.status.as_ref().is_some_and(|st| st.code == 2),
                        started: super::svg::utc_minute((s.start_time_unix_nano / 1_000_000) as i64),
                    }
                })
                .collect();
            let note =
                format!("Bad events of the last {}: errors first, then the slowest.", human_s(lookback as f64 / 1e9));
            (rows, note)
        }
        None => (vec![], "A metric SLI: its events carry no trace ids; search the service's failed traces.".into()),
    };
    Ok(render(&slo_page(&detail, &slo, traces, note)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use obsbox_slo::{
        Alert, BudgetDetail, Budgeting, SeriesPoint, Severity, Source, SpanGood, SpanSelector, Tier, Transition, Window,
    };

    fn summary(name: &str) -> SloSummary {
        SloSummary {
            name: name.into(),
            display_name: "<b>Payments</b>".into(),
            service: "payments".into(),
            objective: 0.999,
            window: "30d rolling".into(),
            window_s: 30.0 * 86_400.0,
            budgeting: "occurrences".into(),
            sli: Some(0.9985),
            budget_remaining: Some(-0.5),
            health: Health::Breached,
            firing: vec!["page-fast".into()],
            evaluated_at_ms: Some(1_700_000_000_000),
        }
    }

    fn slo() -> Slo {
        Slo {
            name: "payments".into(),
            display_name: "Payments".into(),
            description: String::new(),
            service: "payments".into(),
            sli: Sli::Spans {
                selector: SpanSelector { service: Some("payments".into()), kind: Some(2), ..Default::default() },
                good: SpanGood { no_error: true, max_duration: Some(Duration::from_millis(300)) },
            },
            target: 0.999,
            objective_name: String::new(),
            window: Window::Rolling(Duration::from_secs(30 * 86_400)),
            budgeting: Budgeting::Occurrences,
            tiers: Tier::workbook(Duration::from_secs(30 * 86_400)),
            min_events: 100,
            labels: vec![],
            source: Source { file: "slos/payments.yaml".into(), line: 1 },
        }
    }

    #[test]
    fn the_slo_page_shows_budget_burn_rates_alerts_and_escapes_names() {
        let d = SloDetail {
            summary: summary("payments"),
            description: "<script>alert(1)</script>".into(),
            source: "slos/payments.yaml:1".into(),
            time_scale: 60,
            window_start_ms: 1_699_999_000_000,
            budget: BudgetDetail {
                unit: BudgetUnit::Events,
                total: 10_000.0,
                bad: 15.0,
                allowed_bad: 10.0,
                remaining: -5.0,
                remaining_ratio: Some(-0.5),
                slice_s: None,
                remaining_s: None,
            },
            burn_down: vec![SeriesPoint { t_ms: 0, value: 1.0 }, SeriesPoint { t_ms: 60_000, value: -0.5 }],
            sli_series: vec![SeriesPoint { t_ms: 0, value: 1.0 }, SeriesPoint { t_ms: 60_000, value: 0.99 }],
            tiers: vec![TierBurn {
                tier: "page-fast".into(),
                severity: Severity::Page,
                threshold: 14.4,
                long_s: 3600.0,
                short_s: 300.0,
                long: Some(15.0),
                short: Some(20.0),
                long_events: 5000,
                condition: true,
            }],
            time_to_exhaustion_s: None,
            alerts: vec![Alert {
                slo: "payments".into(),
                tier: "page-fast".into(),
                severity: Severity::Page,
                state: AlertState::Firing,
                since_ms: 0,
                fired_at_ms: Some(0),
                resolved_at_ms: None,
                labels: vec![],
                annotations: vec![],
                webhooks: vec![],
            }],
            history: vec![Transition {
                at_ms: 0,
                slo: "payments".into(),
                tier: "page-fast".into(),
                severity: Severity::Page,
                from: AlertState::Pending,
                to: AlertState::Firing,
                long: Some(15.0),
                short: Some(20.0),
            }],
        };
        let html = slo_page(&d, &slo(), vec![], String::new()).render().unwrap();
        assert!(!html.contains("<script>alert(1)"), "escaped description");
        assert!(!html.contains("<b>Payments") && html.contains("Payments"), "escaped name");
        assert!(html.contains("99.9%"), "objective");
        assert!(html.contains("99.85%"), "SLI with one more digit than the target");
        assert!(html.contains("0 of 10 bad events left"), "budget in events");
        assert!(html.contains("15.00×") && html.contains("14.4×"), "burn against threshold");
        assert!(html.contains("firing"), "alert state");
        assert!(html.contains("not an error and at most 300"), "the SLI in words");
        assert!(html.contains("60× faster"), "the demo scale is said");
        assert!(html.contains("<svg class=\"chart\""), "charts");
        assert!(html.contains("budget spent"), "an overspent budget has no time left");

        // Burning: time to exhaustion in SLO time, like the windows, and in clock time.
        let mut burning = d.clone();
        burning.time_to_exhaustion_s = Some(2.0 * 3600.0);
        let html = slo_page(&burning, &slo(), vec![], String::new()).render().unwrap();
        assert!(html.contains("2.0 h") && html.contains("(2 min of clock time)"), "exhaustion in both times");
    }

    #[test]
    fn targets_show_the_digits_that_matter() {
        assert_eq!(pct(Some(0.999), target_digits(0.999)), "99.9%");
        assert_eq!(pct(Some(0.99), target_digits(0.99)), "99%");
        assert_eq!(pct(Some(0.9995), target_digits(0.9995)), "99.95%");
        assert_eq!(human_s(43.0 * 60.0), "43 min");
        assert_eq!(human_s(3.0 * 86_400.0), "3.0 days");
    }
}
