//! Trace search at `/search`: every filter of `GET /api/v1/traces` (same parameter names, parsed
//! by the same code), a duration-over-time scatter plot whose dots open their trace, and the
//! result list. `search.js` adds live autocomplete of operations and of attribute keys and
//! values inside the filter expression; without it the `<datalist>`s rendered here still
//! suggest services, operations and keys.
//!
//! URL state: the API's parameters (`service`, `operation`, `kind`, `status`, `filter`,
//! `minDuration`, `maxDuration`, `rootService`, `rootOperation`, `minTraceDuration`,
//! `maxTraceDuration`, `limit`), the range (`range` or `from`/`to`) and `sort`
//! (`recent`, `longest`, `shortest`, `spans`).

use std::collections::BTreeSet;

use askama::Template;
use axum::Router;
use axum::extract::{Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use obsbox_storage::{AttrScope, Signal};
use serde::Deserialize;

use super::range::{RangeParams, UiRange, display_time, url};
use super::{Layout, Nav, UiError, fmt, render_with, svc_class};
use crate::AppState;
use crate::native::TraceParams;
use crate::query::TraceSummary;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/search", get(page))
}

/// The page's parameters: the API's, all as text so a bad value becomes a message on the page.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    service: Option<String>,
    operation: Option<String>,
    kind: Option<String>,
    status: Option<String>,
    filter: Option<String>,
    min_duration: Option<String>,
    max_duration: Option<String>,
    root_service: Option<String>,
    root_operation: Option<String>,
    min_trace_duration: Option<String>,
    max_trace_duration: Option<String>,
    limit: Option<String>,
    sort: Option<String>,
}

fn val(v: &Option<String>) -> String {
    v.as_deref().map(str::trim).unwrap_or("").to_string()
}

fn opt(v: &Option<String>) -> Option<String> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(String::from)
}

/// What the form shows: the parameters as written.
struct Form {
    service: String,
    operation: String,
    kind: String,
    status: String,
    filter: String,
    min_duration: String,
    max_duration: String,
    root_service: String,
    root_operation: String,
    min_trace_duration: String,
    max_trace_duration: String,
    limit: String,
    sort: String,
}

impl Form {
    fn new(p: &Params) -> Form {
        Form {
            service: val(&p.service),
            operation: val(&p.operation),
            kind: val(&p.kind),
            status: val(&p.status),
            filter: p.filter.clone().unwrap_or_default(),
            min_duration: val(&p.min_duration),
            max_duration: val(&p.max_duration),
            root_service: val(&p.root_service),
            root_operation: val(&p.root_operation),
            min_trace_duration: val(&p.min_trace_duration),
            max_trace_duration: val(&p.max_trace_duration),
            limit: val(&p.limit),
            sort: opt(&p.sort).unwrap_or_else(|| "recent".into()),
        }
    }

    /// Whether the advanced (trace-level) fields are used, so the form opens them.
    fn advanced(&self) -> bool {
        !(self.root_service.is_empty()
            && self.root_operation.is_empty()
            && self.min_trace_duration.is_empty()
            && self.max_trace_duration.is_empty())
    }
}

/// Most entries of a server-rendered `<datalist>`.
const MAX_SUGGESTIONS: usize = 1000;

const SORTS: &[(&str, &str)] =
    &[("recent", "Most recent"), ("longest", "Longest first"), ("shortest", "Shortest first"), ("spans", "Most spans")];
const KINDS: &[&str] = &["server", "client", "producer", "consumer", "internal"];
const STATUSES: &[&str] = &["error", "ok", "unset"];

/// The API's parameters for `p`, with the range as absolute bounds.
fn api_params(p: &Params, range: &UiRange) -> Result<TraceParams, String> {
    let limit = match opt(&p.limit) {
        None => None,
        Some(l) => Some(l.parse::<usize>().map_err(|_| format!("limit: {l:?} is not a number"))?),
    };
    Ok(TraceParams {
        service: opt(&p.service),
        operation: opt(&p.operation),
        kind: opt(&p.kind),
        status: opt(&p.status),
        filter: opt(&p.filter),
        min_duration: opt(&p.min_duration),
        max_duration: opt(&p.max_duration),
        root_service: opt(&p.root_service),
        root_operation: opt(&p.root_operation),
        min_trace_duration: opt(&p.min_trace_duration),
        max_trace_duration: opt(&p.max_trace_duration),
        limit,
        start: Some(range.time.start_ns.to_string()),
        end: Some(range.time.end_ns.to_string()),
        lookback: None,
    })
}

struct ServiceTag {
    name: String,
    class: String,
    spans: usize,
}

struct ResultRow {
    href: String,
    trace_id: String,
    root_service: String,
    root_class: String,
    root_name: String,
    duration: String,
    /// Bar width in percent of the longest result.
    bar: String,
    spans: usize,
    errors: usize,
    services: Vec<ServiceTag>,
    start: String,
}

struct Dot {
    x: String,
    y: String,
    r: String,
    href: String,
    err: bool,
    title: String,
}

struct Tick {
    pos: String,
    label: String,
    anchor: &'static str,
}

/// The scatter plot: start time (x) against duration (y).
struct Scatter {
    dots: Vec<Dot>,
    x_ticks: Vec<Tick>,
    y_ticks: Vec<Tick>,
}

/// Plot area inside the SVG's 1000x200 viewBox.
const PX0: f64 = 60.0;
const PX1: f64 = 990.0;
const PY0: f64 = 10.0;
const PY1: f64 = 175.0;

fn scatter(results: &[TraceSummary], range: &UiRange) -> Scatter {
    let (mut t0, mut t1) = (range.time.start_ns, range.time.end_ns);
    if let (Some(min), Some(max)) = (results.iter().map(|r| r.start_ns).min(), results.iter().map(|r| r.start_ns).max())
    {
        // zoom on the results, with a margin, when they cover a small part of the range
        let pad = ((max - min) / 20).max(1_000_000_000);
        t0 = t0.max(min.saturating_sub(pad));
        t1 = t1.min(max.saturating_add(pad)).max(t0 + 1);
    }
    let max_d = results.iter().map(|r| r.duration_ns).max().unwrap_or(0).max(1) as f64 * 1.1;
    let max_spans = results.iter().map(|r| r.span_count).max().unwrap_or(1).max(1) as f64;
    let x = |t: u64| PX0 + (PX1 - PX0) * (t.saturating_sub(t0) as f64 / (t1 - t0) as f64);
    let y = |d: f64| PY1 - (PY1 - PY0) * (d / max_d);
    let dots = results
        .iter()
        .map(|r| Dot {
            x: format!("{:.1}", x(r.start_ns)),
            y: format!("{:.1}", y(r.duration_ns as f64)),
            r: format!("{:.1}", 3.0 + 5.0 * (r.span_count as f64 / max_spans).sqrt()),
            href: format!("/trace/{}", r.trace_id),
            err: r.error_count > 0,
            title: format!(
                "{}: {} — {}, {} spans{} — {}",
                r.root_service,
                r.root_name,
                fmt::duration_ns(r.duration_ns as f64),
                r.span_count,
                if r.error_count > 0 { format!(", {} errors", r.error_count) } else { String::new() },
                display_time(r.start_ns)
            ),
        })
        .collect();
    let x_ticks = (0..=4)
        .map(|i| {
            let t = t0 + (t1 - t0) / 4 * i;
            let label = display_time(t);
            // milliseconds on a short axis, the date on one longer than a day
            let label = match t1 - t0 {
                d if d < 60_000_000_000 => label[11..].to_string(),
                d if d < 86_400_000_000_000 => label[11..19].to_string(),
                _ => label[5..16].to_string(),
            };
            Tick { pos: format!("{:.1}", x(t)), label, anchor: super::logs::anchor(i as usize, 5) }
        })
        .collect();
    let y_ticks = (0..=3)
        .map(|i| {
            let d = max_d / 1.1 * i as f64 / 3.0;
            Tick { pos: format!("{:.1}", y(d)), label: fmt::duration_ns(d), anchor: "end" }
        })
        .collect();
    Scatter { dots, x_ticks, y_ticks }
}

#[derive(Template)]
#[template(path = "search.html")]
struct SearchPage {
    layout: Layout,
    range: UiRange,
    form: Form,
    problem: Option<String>,
    searched: bool,
    results: Vec<ResultRow>,
    scatter: Scatter,
    services: Vec<String>,
    operations: Vec<String>,
    attribute_keys: Vec<String>,
    kinds: &'static [&'static str],
    statuses: &'static [&'static str],
    limit_default: usize,
    sort_links: Vec<(String, &'static str, bool)>,
}

async fn page(
    State(state): State<AppState>,
    Query(params): Query<Params>,
    Query(range_params): Query<RangeParams>,
    RawQuery(raw): RawQuery,
) -> Result<Response, UiError> {
    let form = Form::new(&params);
    let range = range_params.parse("1h");
    let fallback = || RangeParams::default().parse("1h").expect("the default range parses");
    let mut problem = None;
    let mut results: Vec<TraceSummary> = Vec::new();
    let range = match range {
        Ok(r) => r,
        Err(e) => {
            problem = Some(e);
            fallback()
        }
    };
    if problem.is_none() && !SORTS.iter().any(|(s, _)| *s == form.sort) {
        problem = Some(format!("sort {:?} is not one of recent, longest, shortest, spans", form.sort));
    }
    if problem.is_none() {
        match api_params(&params, &range).map_err(UiError::bad_request) {
            Err(e) => problem = Some(e.message),
            Ok(api) => match api.search(state.query.limits()) {
                Err(e) => problem = Some(e.to_string()),
                Ok(search) => match state.query.search_traces(&search).await {
                    Ok(traces) => results = traces.iter().map(|t| t.summary()).collect(),
                    Err(e) if e.status() == StatusCode::BAD_REQUEST => problem = Some(e.to_string()),
                    Err(e) => return Err(e.into()),
                },
            },
        }
    }
    match form.sort.as_str() {
        "longest" => results.sort_by_key(|r| std::cmp::Reverse(r.duration_ns)),
        "shortest" => results.sort_by_key(|r| r.duration_ns),
        "spans" => results.sort_by_key(|r| std::cmp::Reverse(r.span_count)),
        _ => results.sort_by_key(|r| std::cmp::Reverse(r.start_ns)),
    }

    // Autocomplete lists over the page's range.
    let time = range.time;
    let services = state.query.services(time).await?;
    let operations: Vec<String> = {
        let ops = state.query.operations(opt(&params.service).as_deref(), None, time).await?;
        ops.into_iter().map(|o| o.name).collect::<BTreeSet<_>>().into_iter().collect()
    };
    let mut attribute_keys = state.query.attribute_keys(Signal::Traces, AttrScope::Item, time).await?;
    let resource_keys = state.query.attribute_keys(Signal::Traces, AttrScope::Resource, time).await?;
    attribute_keys.extend(resource_keys.into_iter().map(|k| format!("resource.{k}")));
    // Suggestion lists stay small enough for a light page; search.js asks the API as one types.
    attribute_keys.truncate(MAX_SUGGESTIONS);
    let mut operations = operations;
    operations.truncate(MAX_SUGGESTIONS);

    let max_d = results.iter().map(|r| r.duration_ns).max().unwrap_or(1).max(1) as f64;
    let scatter = scatter(&results, &range);
    let rows = results
        .into_iter()
        .map(|r| ResultRow {
            href: format!("/trace/{}", r.trace_id),
            root_class: svc_class(&r.root_service),
            bar: format!("{:.2}", (r.duration_ns as f64 / max_d * 100.0).max(0.5)),
            duration: fmt::duration_ns(r.duration_ns as f64),
            spans: r.span_count,
            errors: r.error_count,
            services: r
                .services
                .iter()
                .map(|(name, spans)| ServiceTag { class: svc_class(name), name: name.clone(), spans: *spans })
                .collect(),
            start: display_time(r.start_ns),
            trace_id: r.trace_id,
            root_service: r.root_service,
            root_name: r.root_name,
        })
        .collect();

    // Sort links keep every other parameter of the current URL.
    let raw = raw.unwrap_or_default();
    let kept: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .filter(|(k, _)| k != "sort")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let sort_links = SORTS
        .iter()
        .map(|&(s, label)| {
            let pairs = kept.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain([("sort", s)]);
            (url("/search", pairs), label, form.sort == s)
        })
        .collect();

    let status = if problem.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let layout = Layout::new("Traces", Nav::Traces, &["search.js"]);
    let page = SearchPage {
        layout,
        range,
        searched: problem.is_none(),
        form,
        problem,
        results: rows,
        scatter,
        services,
        operations,
        attribute_keys,
        kinds: KINDS,
        statuses: STATUSES,
        limit_default: 20,
        sort_links,
    };
    Ok(render_with(status, &page))
}
