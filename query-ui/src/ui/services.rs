//! The Services page at `/services`: per service and operation, request rate, error rate and
//! p50/p95/p99 latency over the chosen range with sparklines, from the derived span metrics
//! (`traces.span.metrics.calls` and `.duration`, see `red`). Without such metrics in the range
//! it lists the services and operations seen in spans, marked "no metrics yet".
//!
//! URL state: the range (`range` or `from`/`to`), `service` (only that one), `sort`
//! (`name`, `rate`, `errors`, `p50`, `p95`, `p99`) and `dir` (`asc`, `desc`).

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use obsbox_storage::{LabelMatcher, MatchOp, MetricQuery, Reader, TimeRange};
use serde::Deserialize;

use super::range::{RangeParams, UiRange, url};
use super::red::{Running, Series, quantile, read_series};
use super::svg::{Svg, sparkline};
use super::{Layout, Nav, UiError, blocking, fmt, render, svc_class};
use crate::AppState;

/// Metric names of the contract.
pub(crate) const CALLS: &str = "traces.span.metrics.calls";
pub(crate) const DURATION: &str = "traces.span.metrics.duration";
/// Points are fetched from this long before the range, so the first in-range increase has a
/// baseline (the collector emits every 15 s).
pub(crate) const BASELINE_NS: u64 = 60 * 1_000_000_000;
/// Sparkline resolution.
const STEPS: usize = 30;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/services", get(page))
}

#[derive(Deserialize)]
struct Params {
    #[serde(flatten)]
    range: RangeParams,
    service: Option<String>,
    sort: Option<String>,
    dir: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SortKey {
    Name,
    Rate,
    Errors,
    P50,
    P95,
    P99,
}

const SORT_KEYS: &[(&str, SortKey)] = &[
    ("name", SortKey::Name),
    ("rate", SortKey::Rate),
    ("errors", SortKey::Errors),
    ("p50", SortKey::P50),
    ("p95", SortKey::P95),
    ("p99", SortKey::P99),
];

/// Figures of one service or operation; `None` without metrics.
#[derive(Clone, Debug, Default)]
struct Red {
    calls: f64,
    errors: f64,
    /// Latency quantiles in ms.
    p: [Option<f64>; 3],
    rate_steps: Vec<Option<f64>>,
    error_steps: Vec<Option<f64>>,
    duration_counts: Vec<f64>,
    bounds: Vec<f64>,
}

impl Red {
    fn add(&mut self, o: &Red) {
        self.calls += o.calls;
        self.errors += o.errors;
        if self.rate_steps.len() < o.rate_steps.len() {
            self.rate_steps.resize(o.rate_steps.len(), None);
            self.error_steps.resize(o.error_steps.len(), None);
        }
        for (i, v) in o.rate_steps.iter().enumerate() {
            if let Some(v) = v {
                *self.rate_steps[i].get_or_insert(0.0) += v;
            }
        }
        for (i, v) in o.error_steps.iter().enumerate() {
            if let Some(v) = v {
                *self.error_steps[i].get_or_insert(0.0) += v;
            }
        }
        if !o.bounds.is_empty() && (self.bounds.is_empty() || self.bounds == o.bounds) {
            self.bounds.clone_from(&o.bounds);
            if self.duration_counts.len() < o.duration_counts.len() {
                self.duration_counts.resize(o.duration_counts.len(), 0.0);
            }
            for (a, b) in self.duration_counts.iter_mut().zip(&o.duration_counts) {
                *a += b;
            }
        }
    }

    fn finish(&mut self) {
        for (i, q) in [0.5, 0.95, 0.99].into_iter().enumerate() {
            self.p[i] = quantile(q, &self.bounds, &self.duration_counts);
        }
    }
}

/// Operation key: (service, span name, span kind label).
type OpKey = (String, String, String);

/// Computes the figures per operation from the contract's series.
fn red_by_operation(series: &[Series], fetch_start: u64, time: TimeRange) -> BTreeMap<OpKey, Red> {
    let mut out: BTreeMap<OpKey, Red> = BTreeMap::new();
    let step = (time.end_ns - time.start_ns).div_ceil(STEPS as u64).max(1);
    let step_s = step as f64 / 1e9;
    for s in series {
        let key =
            (s.label("service.name").to_string(), s.label("span.name").to_string(), kind_label(s.label("span.kind")));
        let running = Running::new(&s.samples, fetch_start);
        let red = out.entry(key).or_default();
        if s.name == CALLS {
            let error = s.label("status.code") == "STATUS_CODE_ERROR";
            let calls = running.increase(time.start_ns, time.end_ns);
            red.calls += calls;
            if error {
                red.errors += calls;
            }
            red.rate_steps.resize(STEPS, None);
            red.error_steps.resize(STEPS, None);
            for i in 0..STEPS {
                let a = time.start_ns + i as u64 * step;
                let inc = running.increase(a, (a + step).min(time.end_ns));
                *red.rate_steps[i].get_or_insert(0.0) += inc / step_s;
                let e = red.error_steps[i].get_or_insert(0.0);
                if error {
                    *e += inc / step_s;
                }
            }
        } else if s.name == DURATION && !s.bounds.is_empty() {
            let mut inc = Vec::new();
            running.add_increase(time.start_ns, time.end_ns, &mut inc);
            // inc = [count, buckets...]
            let one =
                Red { bounds: s.bounds.clone(), duration_counts: inc.split_off(1.min(inc.len())), ..Red::default() };
            red.add(&one);
        }
    }
    out
}

/// `SPAN_KIND_SERVER` -> `server`.
fn kind_label(kind: &str) -> String {
    kind.strip_prefix("SPAN_KIND_").unwrap_or(kind).to_ascii_lowercase()
}

fn otlp_kind_label(kind: i32) -> String {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
    .into()
}

pub(crate) struct Row {
    name: String,
    kind: String,
    href: String,
    class: String,
    has_metrics: bool,
    red: Red,
    rate: String,
    error_rate: String,
    error_high: bool,
    p: [String; 3],
    spark: Svg,
    error_spark: Svg,
    ops: Vec<Row>,
    note: String,
}

impl Row {
    fn new(name: String, kind: String, href: String, class: String, red: Option<Red>, range_s: f64) -> Row {
        let has_metrics = red.is_some();
        let red = red.unwrap_or_default();
        let rate = red.calls / range_s;
        let error_rate = if red.calls > 0.0 { red.errors / red.calls } else { 0.0 };
        let p = red.p.map(|q| q.map(|ms| fmt::duration_ns(ms * 1e6)).unwrap_or_else(|| "–".into()));
        let (spark, error_spark) = if has_metrics {
            (
                sparkline(&red.rate_steps, &format!("requests: peak {}", fmt::rate(peak(&red.rate_steps))), false),
                sparkline(
                    &red.error_steps,
                    &format!("errors: peak {}", fmt::rate(peak(&red.error_steps))),
                    peak(&red.error_steps) > 0.0,
                ),
            )
        } else {
            (Svg::default(), Svg::default())
        };
        Row {
            name,
            kind,
            href,
            class,
            has_metrics,
            rate: if has_metrics { fmt::rate(rate) } else { "–".into() },
            error_rate: if has_metrics { fmt::percent(error_rate) } else { "–".into() },
            error_high: error_rate >= 0.01,
            p,
            spark,
            error_spark,
            red,
            ops: Vec::new(),
            note: String::new(),
        }
    }

    fn sort_value(&self, key: SortKey) -> Option<f64> {
        if !self.has_metrics {
            return None;
        }
        match key {
            SortKey::Name => None,
            SortKey::Rate => Some(self.red.calls),
            SortKey::Errors => Some(if self.red.calls > 0.0 { self.red.errors / self.red.calls } else { 0.0 }),
            SortKey::P50 => self.red.p[0],
            SortKey::P95 => self.red.p[1],
            SortKey::P99 => self.red.p[2],
        }
    }
}

fn peak(v: &[Option<f64>]) -> f64 {
    v.iter().flatten().copied().fold(0.0, f64::max)
}

fn sort_rows(rows: &mut [Row], key: SortKey, desc: bool) {
    rows.sort_by(|a, b| {
        let ord = match key {
            SortKey::Name => a.name.cmp(&b.name).then(a.kind.cmp(&b.kind)),
            _ => {
                let (x, y) = (a.sort_value(key), b.sort_value(key));
                // rows without a figure go last whatever the direction
                match (x, y) {
                    (Some(x), Some(y)) => x.total_cmp(&y),
                    (Some(_), None) => return std::cmp::Ordering::Less,
                    (None, Some(_)) => return std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                }
            }
        };
        let ord = if desc { ord.reverse() } else { ord };
        ord.then_with(|| a.name.cmp(&b.name))
    });
    for r in rows {
        sort_rows(&mut r.ops, key, desc);
    }
}

struct SortLink {
    label: &'static str,
    href: String,
    sorted: bool,
    arrow: &'static str,
    numeric: bool,
}

#[derive(Template)]
#[template(path = "services.html")]
struct ServicesPage {
    layout: Layout,
    range: UiRange,
    service: String,
    sort: String,
    dir: String,
    columns: Vec<SortLink>,
    services: Vec<Row>,
    has_metrics: bool,
    total_ops: usize,
}

/// Reads the contract's span metrics in `fetch`, optionally for one service.
pub(crate) async fn fetch_span_metrics(
    reader: Arc<dyn Reader>,
    service: Option<String>,
    fetch: TimeRange,
) -> Result<Vec<Series>, UiError> {
    let mut matchers = vec![LabelMatcher {
        name: "__name__".into(),
        op: MatchOp::Re,
        value: format!("{}|{}", regex::escape(CALLS), regex::escape(DURATION)),
    }];
    if let Some(s) = service {
        matchers.push(LabelMatcher { name: "service.name".into(), op: MatchOp::Eq, value: s });
    }
    let data = blocking(move || reader.find_metrics(&MetricQuery { matchers, time: fetch })).await?;
    Ok(read_series(&data))
}

async fn page(State(state): State<AppState>, Query(params): Query<Params>) -> Result<Response, UiError> {
    let range = params.range.parse("1h").map_err(UiError::bad_request)?;
    let service = params.service.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(String::from);
    let sort_name = params.sort.as_deref().filter(|s| !s.is_empty()).unwrap_or("name");
    let Some(&(_, sort_key)) = SORT_KEYS.iter().find(|(n, _)| *n == sort_name) else {
        return Err(UiError::bad_request(format!(
            "sort {sort_name:?} is not one of name, rate, errors, p50, p95, p99"
        )));
    };
    let default_dir = if sort_key == SortKey::Name { "asc" } else { "desc" };
    let dir = params.dir.as_deref().filter(|s| !s.is_empty()).unwrap_or(default_dir);
    if dir != "asc" && dir != "desc" {
        return Err(UiError::bad_request(format!("dir {dir:?} is not asc or desc")));
    }

    let time = range.time;
    let fetch =
        TimeRange { start_ns: time.start_ns.saturating_sub(BASELINE_NS), end_ns: time.end_ns.saturating_add(1) };
    let series = fetch_span_metrics(state.reader.clone(), service.clone(), fetch).await?;
    let by_op = red_by_operation(&series, fetch.start_ns, time);
    let has_metrics = by_op.values().any(|r| r.calls > 0.0 || !r.duration_counts.is_empty());
    let ops = state.query.operations(service.as_deref(), None, time).await?;

    // Union of operations with metrics and operations seen in spans.
    let mut all: BTreeMap<String, BTreeMap<(String, String), Option<Red>>> = BTreeMap::new();
    for ((svc, name, kind), red) in by_op {
        all.entry(svc).or_default().insert((name, kind), Some(red));
    }
    for op in ops {
        all.entry(op.service).or_default().entry((op.name, otlp_kind_label(op.kind))).or_insert(None);
    }
    let range_s = range.len_ns() as f64 / 1e9;
    let range_pairs = range.pairs();
    let link = |pairs: &[(&str, &str)]| {
        let mut p: Vec<(&str, &str)> = range_pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        p.extend_from_slice(pairs);
        url("/search", p)
    };
    let mut total_ops = 0;
    let mut services: Vec<Row> = Vec::new();
    for (svc, ops) in all {
        let mut agg = Red::default();
        let mut any_metrics = false;
        let entry_kinds = ops.iter().any(|((_, k), r)| r.is_some() && (k == "server" || k == "consumer"));
        let mut op_rows = Vec::new();
        for ((name, kind), mut red) in ops {
            if let Some(r) = red.as_mut() {
                r.finish();
                if !entry_kinds || kind == "server" || kind == "consumer" {
                    agg.add(r);
                }
                any_metrics = true;
            }
            let href = link(&[("service", svc.as_str()), ("operation", name.as_str())]);
            op_rows.push(Row::new(name, kind, href, String::new(), red, range_s));
        }
        total_ops += op_rows.len();
        agg.finish();
        let href =
            url("/services", range_pairs.iter().map(|(k, v)| (*k, v.as_str())).chain([("service", svc.as_str())]));
        let mut row = Row::new(svc.clone(), String::new(), href, svc_class(&svc), any_metrics.then_some(agg), range_s);
        row.note = if entry_kinds { "server and consumer spans".into() } else { "all spans".into() };
        row.ops = op_rows;
        services.push(row);
    }
    sort_rows(&mut services, sort_key, dir == "desc");

    let columns = SORT_KEYS
        .iter()
        .map(|&(name, key)| {
            let sorted = key == sort_key;
            let next_dir = match (sorted, dir, key) {
                (true, "asc", _) => "desc",
                (true, _, _) => "asc",
                (false, _, SortKey::Name) => "asc",
                (false, _, _) => "desc",
            };
            let mut pairs: Vec<(&str, &str)> = range_pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            if let Some(s) = &service {
                pairs.push(("service", s));
            }
            pairs.push(("sort", name));
            pairs.push(("dir", next_dir));
            SortLink {
                label: match key {
                    SortKey::Name => "Service / operation",
                    SortKey::Rate => "Rate",
                    SortKey::Errors => "Errors",
                    SortKey::P50 => "p50",
                    SortKey::P95 => "p95",
                    SortKey::P99 => "p99",
                },
                href: url("/services", pairs),
                sorted,
                arrow: if !sorted {
                    ""
                } else if dir == "asc" {
                    " ▲"
                } else {
                    " ▼"
                },
                numeric: key != SortKey::Name,
            }
        })
        .collect();
    let title = match &service {
        Some(s) => format!("Service {s}"),
        None => "Services".into(),
    };
    let layout = Layout::new(title, Nav::Services, &[]);
    Ok(render(&ServicesPage {
        layout,
        range,
        service: service.unwrap_or_default(),
        sort: sort_name.to_string(),
        dir: dir.to_string(),
        columns,
        services,
        has_metrics,
        total_ops,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::red::Sample;

    fn series(name: &str, op: &str, status: &str, bounds: Vec<f64>, samples: Vec<(u64, Vec<f64>)>) -> Series {
        let mut labels = BTreeMap::new();
        labels.insert("service.name".to_string(), "api".to_string());
        labels.insert("span.name".to_string(), op.to_string());
        labels.insert("span.kind".to_string(), "SPAN_KIND_SERVER".to_string());
        labels.insert("status.code".to_string(), status.to_string());
        Series {
            name: name.into(),
            labels,
            bounds,
            samples: samples.into_iter().map(|(t, values)| Sample { t_ns: t, start_ns: 1, values }).collect(),
        }
    }

    #[test]
    fn figures_per_operation_combine_status_codes() {
        let s = 1_000_000_000u64;
        let data = vec![
            series(CALLS, "GET /", "STATUS_CODE_UNSET", vec![], vec![(100 * s, vec![10.0]), (160 * s, vec![70.0])]),
            series(CALLS, "GET /", "STATUS_CODE_ERROR", vec![], vec![(100 * s, vec![0.0]), (160 * s, vec![6.0])]),
            series(
                DURATION,
                "GET /",
                "STATUS_CODE_UNSET",
                vec![10.0, 100.0],
                vec![(100 * s, vec![10.0, 10.0, 0.0, 0.0]), (160 * s, vec![70.0, 10.0, 60.0, 0.0])],
            ),
        ];
        let time = TimeRange { start_ns: 100 * s, end_ns: 160 * s };
        let mut by_op = red_by_operation(&data, 40 * s, time);
        let red = by_op.get_mut(&("api".into(), "GET /".into(), "server".into())).unwrap();
        red.finish();
        assert_eq!((red.calls, red.errors), (66.0, 6.0));
        // 60 new observations, all in (10, 100]: the median is in the middle of that bucket
        assert_eq!(red.p[0], Some(55.0));
        assert_eq!(red.rate_steps.len(), STEPS);
        let total: f64 = red.rate_steps.iter().flatten().sum::<f64>() * 2.0; // 2 s steps
        assert!((total - 66.0).abs() < 1e-9, "{total}");
    }

    #[test]
    fn rows_without_figures_sort_last() {
        let mk = |name: &str, calls: Option<f64>| {
            let red = calls.map(|c| Red { calls: c, ..Red::default() });
            Row::new(name.into(), String::new(), String::new(), String::new(), red, 1.0)
        };
        let mut rows = vec![mk("a", Some(1.0)), mk("b", None), mk("c", Some(5.0))];
        sort_rows(&mut rows, SortKey::Rate, true);
        assert_eq!(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["c", "a", "b"]);
        sort_rows(&mut rows, SortKey::Rate, false);
        assert_eq!(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a", "c", "b"]);
    }
}
