//! The Logs page at `/logs`: the native log query language (parsed by the same code as
//! `GET /api/v1/logs`), a time range picker, service and severity facets with counts for the
//! current query, a count histogram whose bars narrow the range, results newest first that
//! expand to every field, "load more" through a cursor in the URL (`logs.js` appends that page
//! in place), and live tail (`logs.js` polls `GET /api/v1/logs` every second for newer records).
//!
//! URL state: `query`, the range (`range` or `from`/`to`), `cursor` (`<time>.<skip>`: the page
//! continues below `time`, skipping the `skip` records at exactly `time` already shown, as the
//! API's cursor) and `limit`.

use std::collections::HashMap;

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use futures::future::join_all;
use obsbox_storage::{LogEntry, LogField, LogPredicate, LogQuery, TimeRange, any_value_text, log_time, service_name};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use serde::{Deserialize, Serialize};

use super::range::{RangeParams, UiRange, display_time, input_value, url};
use super::{Layout, Nav, ScriptJson, UiError, fmt, render_with, svc_class};
use crate::AppState;
use crate::filters::parse_log_query_with;

/// Records per page by default, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Values shown per facet.
const FACET_VALUES: usize = 12;
/// Most values counted per facet (one count query each); the others are listed as not counted.
const MAX_FACET_COUNTS: usize = 50;
/// About this many histogram bars.
const TARGET_BARS: u64 = 60;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/logs", get(page))
}

#[derive(Debug, Default, Deserialize)]
struct Params {
    query: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
    #[serde(flatten)]
    range: RangeParams,
}

/// A bucket width from a readable list, giving at most about [`TARGET_BARS`] bars.
pub(crate) fn bucket_width(len_ns: u64) -> u64 {
    const S: u64 = 1_000_000_000;
    const STEPS: &[u64] = &[
        S,
        2 * S,
        5 * S,
        10 * S,
        15 * S,
        30 * S,
        60 * S,
        120 * S,
        300 * S,
        600 * S,
        900 * S,
        1800 * S,
        3600 * S,
        7200 * S,
        10800 * S,
        21600 * S,
        43200 * S,
        86400 * S,
    ];
    let want = len_ns.div_ceil(TARGET_BARS);
    STEPS.iter().copied().find(|&s| s >= want).unwrap_or_else(|| want.div_ceil(86400 * S) * 86400 * S)
}

/// Severity class by number (OTLP ranges), else by text.
pub(crate) fn severity_class(number: i32, text: &str) -> &'static str {
    match number {
        1..=4 => "trace",
        5..=8 => "debug",
        9..=12 => "info",
        13..=16 => "warn",
        17..=20 => "error",
        21..=24 => "fatal",
        _ => match text.to_ascii_lowercase().as_str() {
            "trace" => "trace",
            "debug" => "debug",
            "info" | "information" | "notice" => "info",
            "warn" | "warning" => "warn",
            "error" | "err" => "error",
            "fatal" | "critical" | "crit" | "panic" | "emergency" | "alert" => "fatal",
            _ => "unset",
        },
    }
}

fn severity_label(number: i32, text: &str) -> String {
    if !text.is_empty() {
        return text.to_string();
    }
    match severity_class(number, text) {
        "unset" => "–".into(),
        c => c.to_ascii_uppercase(),
    }
}

struct Bar {
    x: String,
    y: String,
    w: String,
    h: String,
    href: String,
    title: String,
}

struct Tick {
    pos: String,
    label: String,
    anchor: &'static str,
}

/// Text anchor of the `i`th of `n` axis labels: the first and last stay inside the chart.
pub(crate) fn anchor(i: usize, n: usize) -> &'static str {
    if i == 0 {
        "start"
    } else if i + 1 == n {
        "end"
    } else {
        "middle"
    }
}

struct Histogram {
    bars: Vec<Bar>,
    x_ticks: Vec<Tick>,
    y_ticks: Vec<Tick>,
    total_text: String,
    bucket: String,
    t0: String,
    t1: String,
}

struct Facet {
    value: String,
    class: String,
    count: String,
    href: String,
    active: bool,
}

struct Record {
    time: String,
    time_ns: String,
    severity: String,
    sev_class: &'static str,
    service: String,
    service_class: String,
    body: String,
    trace_id: String,
    span_id: String,
    trace_href: String,
    fields: Vec<(String, String)>,
    attributes: Vec<(String, String)>,
    resource: Vec<(String, String)>,
}

/// What `logs.js` needs: the query as the API takes it and the newest record shown.
#[derive(Serialize)]
struct TailState {
    query: String,
    /// Unix ns of the newest record shown (string: beyond JavaScript's exact integers).
    newest_ns: String,
    /// Whether the page shows the newest records (live tail makes sense).
    at_head: bool,
}

#[derive(Template)]
#[template(path = "logs.html")]
struct LogsPage {
    layout: Layout,
    range: UiRange,
    query: String,
    limit: String,
    problem: Option<String>,
    histogram: Option<Histogram>,
    services: Vec<Facet>,
    services_uncounted: usize,
    severities: Vec<Facet>,
    severities_uncounted: usize,
    records: Vec<Record>,
    more_href: Option<String>,
    newest_href: Option<String>,
    tail: ScriptJson,
}

fn attr_pairs(attrs: &[KeyValue]) -> Vec<(String, String)> {
    attrs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(any_value_text).unwrap_or_default())).collect()
}

fn record(e: &LogEntry) -> Record {
    let r = &e.record;
    let t = log_time(r);
    let service = service_name(Some(&e.resource)).to_string();
    let trace_id = if r.trace_id.is_empty() { String::new() } else { hex::encode(&r.trace_id) };
    let span_id = if r.span_id.is_empty() { String::new() } else { hex::encode(&r.span_id) };
    let trace_href = match (trace_id.is_empty(), span_id.is_empty()) {
        (true, _) => String::new(),
        (false, true) => format!("/trace/{trace_id}"),
        (false, false) => url(&format!("/trace/{trace_id}"), [("span", span_id.as_str())]),
    };
    let mut fields = vec![
        ("time".to_string(), display_time(r.time_unix_nano)),
        ("observed time".to_string(), display_time(r.observed_time_unix_nano)),
        ("severity number".to_string(), r.severity_number.to_string()),
        ("severity text".to_string(), r.severity_text.clone()),
    ];
    if !r.event_name.is_empty() {
        fields.push(("event name".into(), r.event_name.clone()));
    }
    if r.flags != 0 {
        fields.push(("flags".into(), format!("{:#x}", r.flags)));
    }
    if r.dropped_attributes_count != 0 {
        fields.push(("dropped attributes".into(), r.dropped_attributes_count.to_string()));
    }
    let scope = match (e.scope.name.as_str(), e.scope.version.as_str()) {
        ("", _) => String::new(),
        (n, "") => n.to_string(),
        (n, v) => format!("{n} {v}"),
    };
    if !scope.is_empty() {
        fields.push(("scope".into(), scope));
    }
    fields.extend(attr_pairs(&e.scope.attributes).into_iter().map(|(k, v)| (format!("scope.{k}"), v)));
    Record {
        time: display_time(t),
        time_ns: t.to_string(),
        severity: severity_label(r.severity_number, &r.severity_text),
        sev_class: severity_class(r.severity_number, &r.severity_text),
        service_class: svc_class(&service),
        service,
        body: r.body.as_ref().map(any_value_text).unwrap_or_default(),
        trace_id,
        span_id,
        trace_href,
        fields,
        attributes: attr_pairs(&r.attributes),
        resource: attr_pairs(&e.resource.attributes),
    }
}

fn parse_cursor(c: &str) -> Result<(u64, usize), String> {
    let err = || format!("cursor {c:?} is not one this page made");
    let (t, skip) = c.split_once('.').ok_or_else(err)?;
    let skip: usize = skip.parse().map_err(|_| err())?;
    if skip > crate::native::MAX_CURSOR_SKIP {
        return Err(err());
    }
    Ok((t.parse().map_err(|_| err())?, skip))
}

/// The URL of this page with `query` and `range` (and extra pairs).
fn logs_url(query: &str, range: &[(&'static str, String)], extra: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(&str, &str)> = vec![("query", query)];
    pairs.extend(range.iter().map(|(k, v)| (*k, v.as_str())));
    pairs.extend_from_slice(extra);
    url("/logs", pairs)
}

/// `query` with the clause `field:value` removed when present, added otherwise.
fn toggle_clause(query: &str, field: &str, value: &str) -> (String, bool) {
    let clause = if value.contains(char::is_whitespace) || value.contains('"') || value.is_empty() {
        format!("{field}:\"{}\"", value.replace('"', "\\\""))
    } else {
        format!("{field}:{value}")
    };
    let words: Vec<&str> = query.split_whitespace().collect();
    if words.contains(&clause.as_str()) {
        (words.into_iter().filter(|w| *w != clause).collect::<Vec<_>>().join(" "), true)
    } else if query.trim().is_empty() {
        (clause, false)
    } else {
        (format!("{} {clause}", query.trim()), false)
    }
}

async fn facet(
    state: &AppState,
    predicate: &LogPredicate,
    field: LogField,
    time: TimeRange,
    query: &str,
    range: &[(&'static str, String)],
) -> Result<(Vec<Facet>, usize), UiError> {
    let mut values = state.query.log_field_values(field, time).await?;
    values.retain(|v| !v.is_empty());
    let (name, mk): (&str, fn(String) -> LogPredicate) = match field {
        LogField::Service => ("service", LogPredicate::Service),
        LogField::SeverityText => ("severity", LogPredicate::SeverityText),
    };
    // Past the cap, the values named in the query are counted first.
    let mut uncounted = 0;
    if values.len() > MAX_FACET_COUNTS {
        values.sort_by_key(|v| !toggle_clause(query, name, v).1);
        uncounted = values.len() - MAX_FACET_COUNTS;
        values.truncate(MAX_FACET_COUNTS);
    }
    let len = time.end_ns - time.start_ns;
    let counts = join_all(values.iter().map(|v| {
        let p = LogPredicate::And(vec![predicate.clone(), mk(v.clone())]);
        state.query.log_histogram(p, time, len)
    }))
    .await;
    let mut out = Vec::new();
    for (v, c) in values.into_iter().zip(counts) {
        let n: u64 = c?.iter().map(|(_, n)| n).sum();
        let (q, active) = toggle_clause(query, name, &v);
        if n == 0 && !active {
            continue;
        }
        let class =
            if field == LogField::Service { svc_class(&v) } else { format!("sev sev-{}", severity_class(0, &v)) };
        out.push((n, Facet { href: logs_url(&q, range, &[]), class, count: fmt::count(n), active, value: v }));
    }
    out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.value.cmp(&b.1.value)));
    Ok((out.into_iter().take(FACET_VALUES).map(|(_, f)| f).collect(), uncounted))
}

fn histogram(counts: &[(u64, u64)], time: TimeRange, bucket: u64, query: &str) -> Histogram {
    const X0: f64 = 50.0;
    const X1: f64 = 995.0;
    const Y0: f64 = 8.0;
    const Y1: f64 = 100.0;
    let by_start: HashMap<u64, u64> = counts.iter().copied().collect();
    let first = time.start_ns / bucket * bucket;
    let max = counts.iter().map(|&(_, n)| n).max().unwrap_or(0).max(1) as f64;
    let span = (time.end_ns - time.start_ns) as f64;
    let x = |t: u64| X0 + (X1 - X0) * ((t.clamp(time.start_ns, time.end_ns) - time.start_ns) as f64 / span);
    let mut bars = Vec::new();
    let mut b = first;
    while b < time.end_ns {
        let n = by_start.get(&b).copied().unwrap_or(0);
        let (a, e) = (b.max(time.start_ns), (b + bucket).min(time.end_ns));
        if n > 0 {
            let h = (Y1 - Y0) * (n as f64 / max);
            let (xa, xe) = (x(a), x(e));
            let pairs = [
                ("query", query),
                ("from", &input_value(a)),
                ("to", &input_value(e.div_ceil(1_000_000_000) * 1_000_000_000)),
            ];
            bars.push(Bar {
                x: format!("{:.2}", xa + 0.5),
                w: format!("{:.2}", (xe - xa - 1.0).max(0.8)),
                y: format!("{:.2}", Y1 - h),
                h: format!("{:.2}", h.max(1.0)),
                href: url("/logs", pairs.iter().map(|(k, v)| (*k, *v))),
                title: format!("{} records, {} – {}", fmt::count(n), display_time(a), display_time(e)),
            });
        }
        b += bucket;
    }
    let label = |t: u64| {
        let s = display_time(t);
        if span < 86_400e9 { s[11..19].to_string() } else { s[5..16].to_string() }
    };
    let x_ticks = (0..=5)
        .map(|i| {
            let t = time.start_ns + (time.end_ns - time.start_ns) / 5 * i;
            Tick { pos: format!("{:.1}", x(t)), label: label(t), anchor: anchor(i as usize, 6) }
        })
        .collect();
    // the maximum, and its half when that is a whole number of records
    let halves: &[f64] = if max >= 2.0 { &[0.5, 1.0] } else { &[1.0] };
    let y_ticks = halves
        .iter()
        .map(|f| Tick {
            pos: format!("{:.1}", Y1 - (Y1 - Y0) * f),
            label: fmt::count((max * f).round() as u64),
            anchor: "end",
        })
        .collect();
    Histogram {
        bars,
        x_ticks,
        y_ticks,
        total_text: {
            let total: u64 = counts.iter().map(|&(_, n)| n).sum();
            format!("{} record{}", fmt::count(total), if total == 1 { "" } else { "s" })
        },
        bucket: fmt::step(bucket),
        t0: time.start_ns.to_string(),
        t1: time.end_ns.to_string(),
    }
}

async fn page(State(state): State<AppState>, Query(params): Query<Params>) -> Result<Response, UiError> {
    let query = params.query.clone().unwrap_or_default();
    let mut problem: Option<String> = None;
    let range = match params.range.parse("1h").and_then(|r| state.query.limits().check_range(r.time).map(|_| r)) {
        Ok(r) => r,
        Err(e) => {
            problem = Some(e);
            RangeParams::default().parse("1h").expect("the default range parses")
        }
    };
    let max_limit = MAX_LIMIT.min(state.query.limits().max_log_lines);
    let limit = match params.limit.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => DEFAULT_LIMIT.min(max_limit),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=max_limit).contains(&n) => n,
            _ => {
                problem.get_or_insert(format!("limit must be a number between 1 and {max_limit}"));
                DEFAULT_LIMIT.min(max_limit)
            }
        },
    };
    let cursor = match params.cursor.as_deref().filter(|c| !c.is_empty()).map(parse_cursor).transpose() {
        Ok(c) => c,
        Err(e) => {
            problem.get_or_insert(e);
            None
        }
    };
    let predicate = match parse_log_query_with(&query, state.query.limits()) {
        Ok(p) => Some(p),
        Err(e) => {
            problem.get_or_insert(e);
            None
        }
    };
    let range_pairs = range.pairs();
    let time = range.time;
    let mut records = Vec::new();
    let mut histogram_view = None;
    let mut services = Vec::new();
    let mut severities = Vec::new();
    let (mut services_uncounted, mut severities_uncounted) = (0, 0);
    let mut more_href = None;
    let mut newest_ns = 0u64;
    if let (None, Some(pred)) = (&problem, &predicate) {
        let mut page_time = time;
        let mut skip = 0;
        if let Some((t, k)) = cursor {
            page_time.end_ns = page_time.end_ns.min(t.saturating_add(1));
            skip = k;
        }
        let entries = if page_time.start_ns < page_time.end_ns {
            match state
                .query
                .find_logs(LogQuery { predicate: pred.clone(), time: page_time, limit: limit + skip + 1 })
                .await
            {
                Ok(e) => e,
                Err(e) if e.status() == StatusCode::BAD_REQUEST => {
                    problem = Some(e.to_string());
                    Vec::new()
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            Vec::new()
        };
        if problem.is_none() {
            let shown: Vec<&LogEntry> = entries.iter().skip(skip).take(limit).collect();
            if entries.len() > limit + skip
                && let Some(last) = shown.last()
            {
                let t = log_time(&last.record);
                let same = shown.iter().filter(|e| log_time(&e.record) == t).count()
                    + if cursor.is_some_and(|(ct, _)| ct == t) { skip } else { 0 };
                let c = format!("{t}.{same}");
                more_href = Some(logs_url(&query, &range_pairs, &[("cursor", &c), ("limit", &limit.to_string())]));
            }
            newest_ns = shown.first().map(|e| log_time(&e.record)).unwrap_or(0);
            records = shown.into_iter().map(record).collect();

            let bucket = bucket_width(range.len_ns());
            let (counts, svc, sev) = tokio::try_join!(
                async { state.query.log_histogram(pred.clone(), time, bucket).await.map_err(UiError::from) },
                facet(&state, pred, LogField::Service, time, &query, &range_pairs),
                facet(&state, pred, LogField::SeverityText, time, &query, &range_pairs),
            )?;
            histogram_view = Some(histogram(&counts, time, bucket, &query));
            (services, services_uncounted) = svc;
            (severities, severities_uncounted) = sev;
        }
    }
    let at_head = cursor.is_none();
    let newest_href = (!at_head).then(|| logs_url(&query, &range_pairs, &[]));
    let tail = ScriptJson::new(&TailState {
        query: query.clone(),
        newest_ns: newest_ns.max(time.start_ns).to_string(),
        at_head: at_head && range.relative.is_some(),
    });
    let status = if problem.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    let layout = Layout::new("Logs", Nav::Logs, &["logs.js"]);
    Ok(render_with(
        status,
        &LogsPage {
            layout,
            range,
            query,
            limit: params.limit.unwrap_or_default(),
            problem,
            histogram: histogram_view,
            services,
            services_uncounted,
            severities,
            severities_uncounted,
            records,
            more_href,
            newest_href,
            tail,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_widths_are_readable() {
        let s = 1_000_000_000u64;
        assert_eq!(bucket_width(15 * 60 * s), 15 * s);
        assert_eq!(bucket_width(3600 * s), 60 * s);
        assert_eq!(bucket_width(86400 * s), 1800 * s);
        assert_eq!(bucket_width(10 * s), s);
        assert_eq!(bucket_width(365 * 86400 * s), 7 * 86400 * s);
    }

    #[test]
    fn facet_clauses_toggle() {
        assert_eq!(toggle_clause("", "service", "api"), ("service:api".into(), false));
        assert_eq!(toggle_clause("timeout service:api", "service", "api"), ("timeout".into(), true));
        assert_eq!(toggle_clause("timeout", "service", "my api"), ("timeout service:\"my api\"".into(), false));
    }

    #[test]
    fn severities_by_number_then_text() {
        assert_eq!(severity_class(17, "whatever"), "error");
        assert_eq!(severity_class(0, "WARNING"), "warn");
        assert_eq!(severity_label(9, ""), "INFO");
        assert_eq!(severity_label(0, ""), "–");
    }

    #[test]
    fn histogram_bars_link_to_their_bucket() {
        let s = 1_000_000_000u64;
        let time = TimeRange { start_ns: 1_714_557_600 * s, end_ns: 1_714_557_600 * s + 600 * s };
        let h = histogram(&[(time.start_ns + 60 * s, 5), (time.start_ns + 120 * s, 10)], time, 60 * s, "error");
        assert_eq!(h.total_text, "15 records");
        assert_eq!(h.bars.len(), 2);
        assert_eq!(h.bars[0].href, "/logs?query=error&from=2024-05-01T10%3A01%3A00&to=2024-05-01T10%3A02%3A00");
        assert!(h.bars[0].title.starts_with("5 records"));
    }
}
