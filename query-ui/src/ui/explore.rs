//! The metrics explorer at `/explore`: pick a metric (Prometheus names, with type and unit from
//! the metadata), filter and group its series by labels, and see them as a server-rendered SVG
//! line chart with a legend; `explore.js` adds hover values.
//!
//! The controls build a PromQL expression ([`Builder::expression`]): `rate` over a window for
//! counters, `histogram_quantile` over the buckets' rate for histograms, the value for gauges,
//! aggregated (`sum`/`avg`/`max`/`min`) by the grouped labels. The expression box overrides the
//! builder once edited: the form carries the expression it was shown with (`built`), so an
//! unchanged box follows the controls. The expression runs in-process on the PromQL engine
//! (`crate::prometheus::explore_range`) with ~200 steps over the range; a bad expression is a 400
//! page with the engine's message.
//!
//! URL state: `metric`, filter rows `fl`/`fo`/`fv` (label, operator, value; repeated, aligned),
//! `by` (repeated), `agg`, `fn` (`rate` or `raw` for counters), `w` (rate window), `q`
//! (quantile), `expr`, `built` and the range (`range` or `from`/`to`).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use askama::Template;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;

use super::range::{RangeParams, UiRange};
use super::{Layout, Nav, ScriptJson, UiError, render_with, svc_class};
use crate::AppState;
use crate::prometheus::{ChartSeries, FamilySummary, LabelValues, explore_catalog, explore_range};

/// Points per series the step aims at.
const TARGET_POINTS: i64 = 200;
/// Most series drawn (the legend says how many were left out).
const MAX_LINES: usize = 60;
/// Filter rows in the form (one more than those in use, at least this many).
const MIN_FILTER_ROWS: usize = 3;
/// Rate windows offered.
const WINDOWS: &[&str] = &["1m", "5m", "15m", "1h"];
/// Quantiles offered (value, label).
const QUANTILES: &[(&str, &str)] = &[("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99")];
/// Aggregations offered.
const AGGS: &[&str] = &["sum", "avg", "max", "min", "none"];
/// Matcher operators offered.
const OPS: &[&str] = &["=", "!=", "=~", "!~"];

/// Chart geometry (SVG user units).
const W: f64 = 960.0;
const H: f64 = 320.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/explore", get(page))
}

/// One label filter row.
#[derive(Clone, Debug, Default, PartialEq)]
struct Filter {
    label: String,
    op: String,
    value: String,
}

/// The controls, as read from the URL.
#[derive(Debug, Default)]
struct Builder {
    metric: String,
    filters: Vec<Filter>,
    by: Vec<String>,
    agg: String,
    func: String,
    window: String,
    quantile: String,
    expr: String,
    built: String,
    range: RangeParams,
}

fn valid_label(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_metric(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `s` as a PromQL double-quoted string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Builder {
    fn from_query(q: &str) -> Builder {
        let mut b = Builder::default();
        let (mut fl, mut fo, mut fv) = (Vec::new(), Vec::new(), Vec::new());
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            let v = v.trim().to_string();
            match k.as_ref() {
                "metric" => b.metric = v,
                "fl" => fl.push(v),
                "fo" => fo.push(v),
                "fv" => fv.push(v),
                "by" if !v.is_empty() => b.by.push(v),
                "agg" => b.agg = v,
                "fn" => b.func = v,
                "w" => b.window = v,
                "q" => b.quantile = v,
                "expr" => b.expr = v,
                "built" => b.built = v,
                "range" => b.range.range = Some(v),
                "from" => b.range.from = Some(v),
                "to" => b.range.to = Some(v),
                _ => {}
            }
        }
        for (i, label) in fl.into_iter().enumerate() {
            let op = fo.get(i).cloned().unwrap_or_default();
            let value = fv.get(i).cloned().unwrap_or_default();
            if !label.is_empty() {
                b.filters.push(Filter { label, op: if op.is_empty() { "=".into() } else { op }, value });
            }
        }
        b.by.sort();
        b.by.dedup();
        if !AGGS.contains(&b.agg.as_str()) {
            b.agg = "sum".into();
        }
        if b.func != "raw" {
            b.func = "rate".into();
        }
        if b.window.is_empty() {
            b.window = "5m".into();
        }
        if !QUANTILES.iter().any(|(q, _)| *q == b.quantile) {
            b.quantile = "0.99".into();
        }
        b
    }

    /// Whether the expression box was edited (it then overrides the controls).
    fn overridden(&self) -> bool {
        !self.expr.is_empty() && self.expr != self.built
    }

    /// The PromQL expression the controls select for `fam` (`None`: a metric not in the range,
    /// read as a gauge). Errors name the bad control.
    fn expression(&self, fam: Option<&FamilySummary>) -> Result<String, String> {
        if self.metric.is_empty() {
            return Ok(String::new());
        }
        if !valid_metric(&self.metric) {
            return Err(format!("invalid metric name {:?}", self.metric));
        }
        crate::filters::parse_duration("rate window", &self.window)?;
        let mut matchers = Vec::new();
        for f in &self.filters {
            if !valid_label(&f.label) {
                return Err(format!("invalid label name {:?} in a filter", f.label));
            }
            if !OPS.contains(&f.op.as_str()) {
                return Err(format!("invalid filter operator {:?}", f.op));
            }
            matchers.push(format!("{}{}{}", f.label, f.op, quote(&f.value)));
        }
        for l in &self.by {
            if !valid_label(l) {
                return Err(format!("invalid label name {l:?} in group by"));
            }
        }
        let sel = |name: &str| {
            if matchers.is_empty() { name.to_string() } else { format!("{name}{{{}}}", matchers.join(",")) }
        };
        let by = self.by.join(",");
        let aggregate = |op: &str, inner: String| {
            if by.is_empty() { format!("{op}({inner})") } else { format!("{op} by ({by}) ({inner})") }
        };
        let w = &self.window;
        let kind = fam.map_or("gauge", |f| f.kind);
        Ok(match kind {
            "histogram" => {
                let native = fam.is_some_and(|f| f.native);
                let rate = if native {
                    format!("rate({}[{w}])", sel(&self.metric))
                } else {
                    format!("rate({}[{w}])", sel(&format!("{}_bucket", self.metric)))
                };
                let inner = match (self.agg == "none", native) {
                    (true, _) => rate,
                    (false, true) => aggregate("sum", rate),
                    (false, false) => {
                        let by = if by.is_empty() { "le".to_string() } else { format!("le,{by}") };
                        format!("sum by ({by}) ({rate})")
                    }
                };
                format!("histogram_quantile({}, {inner})", self.quantile)
            }
            k => {
                let inner = if k == "counter" && self.func == "rate" {
                    format!("rate({}[{w}])", sel(&self.metric))
                } else {
                    sel(&self.metric)
                };
                if self.agg == "none" { inner } else { aggregate(&self.agg, inner) }
            }
        })
    }
}

/// A y-axis value: three significant digits with an SI prefix for large and small numbers.
fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let a = v.abs();
    let (x, suffix) = match a {
        a if a >= 1e12 => (v / 1e12, "T"),
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e4 => (v / 1e3, "k"),
        a if a == 0.0 || a >= 0.01 => (v, ""),
        a if a >= 1e-5 => (v * 1e3, "m"),
        _ => return format!("{v:.2e}"),
    };
    let digits = if x.abs() >= 100.0 {
        0
    } else if x.abs() >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{x:.digits$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    format!("{s}{suffix}")
}

/// A step of 1, 2 or 5 times a power of ten giving about `n` ticks over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let p = 10f64.powf(raw.log10().floor());
    let f = raw / p;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * p
}

/// Time tick steps (ms).
const TIME_STEPS: &[i64] = &[
    1_000, 5_000, 15_000, 30_000, 60_000, 300_000, 900_000, 1_800_000, 3_600_000, 10_800_000, 21_600_000, 43_200_000,
    86_400_000,
];

/// `t_ms` as `HH:MM`, `HH:MM:SS` or `MM-DD HH:MM` (UTC).
fn fmt_time(t_ms: i64, seconds: bool, date: bool) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(t_ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    match (date, seconds) {
        (true, _) => format!("{} {}", &s[5..10], &s[11..16]),
        (false, true) => s[11..19].to_string(),
        (false, false) => s[11..16].to_string(),
    }
}

/// An axis tick.
struct Tick {
    pos: String,
    label: String,
}

/// A drawn series.
struct Line {
    name: String,
    class: String,
    path: String,
    last: String,
    max: String,
}

/// The chart as the template draws it.
#[derive(Default)]
struct Chart {
    lines: Vec<Line>,
    x_ticks: Vec<Tick>,
    y_ticks: Vec<Tick>,
    unit: String,
    /// Series not drawn because of [`MAX_LINES`].
    hidden: usize,
}

/// What `explore.js` needs for hover values.
#[derive(Serialize)]
struct HoverData {
    left: f64,
    right: f64,
    width: f64,
    start: i64,
    end: i64,
    unit: String,
    series: Vec<HoverSeries>,
}

#[derive(Serialize)]
struct HoverSeries {
    name: String,
    class: String,
    points: Vec<(i64, f64)>,
}

/// `{a="b", c="d"}` with `__name__` in front, as Prometheus prints series.
fn series_name(labels: &[(String, String)]) -> String {
    let name = labels.iter().find(|(k, _)| k == "__name__").map_or("", |(_, v)| v.as_str());
    let rest: Vec<String> =
        labels.iter().filter(|(k, _)| k != "__name__").map(|(k, v)| format!("{k}={}", quote(v))).collect();
    if rest.is_empty() && !name.is_empty() { name.to_string() } else { format!("{name}{{{}}}", rest.join(", ")) }
}

fn build_chart(series: &[ChartSeries], start: i64, end: i64, step: i64, unit: &str) -> (Chart, HoverData) {
    let drawn = &series[..series.len().min(MAX_LINES)];
    let finite = drawn.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|v| v.is_finite());
    let (mut lo, mut hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    lo = lo.min(0.0);
    if hi <= lo {
        hi = lo + 1.0;
    }
    let ystep = nice_step(hi - lo, 5.0);
    let (lo, hi) = ((lo / ystep).floor() * ystep, (hi / ystep).ceil() * ystep);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let span = (end - start).max(1) as f64;
    let x = |t: i64| LEFT + (t - start) as f64 / span * pw;
    let y = |v: f64| TOP + ph - (v - lo) / (hi - lo) * ph;
    let mut chart = Chart { unit: unit.to_string(), hidden: series.len() - drawn.len(), ..Chart::default() };
    let mut v = lo;
    while v <= hi + ystep / 2.0 {
        chart.y_ticks.push(Tick { pos: format!("{:.1}", y(v)), label: fmt_value(v) });
        v += ystep;
    }
    let tstep = TIME_STEPS.iter().copied().find(|s| (end - start) / s <= 8).unwrap_or(86_400_000);
    let (seconds, date) = (tstep < 60_000, end - start > 86_400_000);
    let mut t = (start + tstep - 1).div_euclid(tstep) * tstep;
    while t <= end {
        chart.x_ticks.push(Tick { pos: format!("{:.1}", x(t)), label: fmt_time(t, seconds, date) });
        t += tstep;
    }
    let mut hover =
        HoverData { left: LEFT, right: W - RIGHT, width: W, start, end, unit: unit.to_string(), series: Vec::new() };
    for s in drawn {
        let name = series_name(&s.labels);
        let class = svc_class(&name);
        let mut path = String::new();
        let mut prev: Option<i64> = None;
        for &(t, v) in &s.points {
            if !v.is_finite() {
                prev = None;
                continue;
            }
            let cmd = if prev.is_some_and(|p| t - p <= step) { 'L' } else { 'M' };
            let _ = write!(path, "{cmd}{:.1} {:.1} ", x(t), y(v));
            prev = Some(t);
        }
        let finite = s.points.iter().map(|p| p.1).filter(|v| v.is_finite());
        let max = finite.clone().fold(f64::NEG_INFINITY, f64::max);
        let last = s.points.last().map_or(f64::NAN, |p| p.1);
        chart.lines.push(Line {
            name: name.clone(),
            class: class.clone(),
            path: path.trim_end().to_string(),
            last: fmt_value(last),
            max: if max.is_finite() { fmt_value(max) } else { "-".into() },
        });
        hover.series.push(HoverSeries { name, class, points: s.points.clone() });
    }
    (chart, hover)
}

/// The unit shown on the y axis: the metadata's, per second for rates, none for counts.
fn y_unit(b: &Builder, fam: Option<&FamilySummary>) -> String {
    if b.overridden() || b.metric.is_empty() {
        return String::new();
    }
    let unit = fam.map_or("", |f| f.unit.as_str());
    match fam.map(|f| f.kind) {
        Some("counter") if b.func == "rate" => {
            if unit.is_empty() {
                "/s".into()
            } else {
                format!("{unit}/s")
            }
        }
        _ => unit.to_string(),
    }
}

#[derive(Template)]
#[template(path = "explore.html")]
struct ExplorePage {
    layout: Layout,
    range: UiRange,
    b: Builder,
    families: Vec<FamilySummary>,
    family: Option<FamilySummary>,
    labels: LabelValues,
    /// Label names offered for group by: the metric's and any asked for.
    by_choices: Vec<String>,
    /// Filter rows shown (the used ones plus empty ones).
    filter_rows: Vec<Filter>,
    /// The expression shown in the box and evaluated.
    expression: String,
    /// The builder's expression (the `built` hidden field).
    built: String,
    error: Option<String>,
    chart: Option<Chart>,
    hover: Option<ScriptJson>,
    step: String,
}

impl ExplorePage {
    fn windows(&self) -> &'static [&'static str] {
        WINDOWS
    }
    fn quantiles(&self) -> &'static [(&'static str, &'static str)] {
        QUANTILES
    }
    fn aggs(&self) -> &'static [&'static str] {
        AGGS
    }
    fn ops(&self) -> &'static [&'static str] {
        OPS
    }
    fn kind(&self) -> &str {
        self.family.as_ref().map_or("", |f| f.kind)
    }
    fn grouped(&self, l: &str) -> bool {
        self.b.by.iter().any(|b| b == l)
    }
}

async fn page(State(st): State<AppState>, RawQuery(q): RawQuery) -> Result<Response, UiError> {
    let b = Builder::from_query(q.as_deref().unwrap_or(""));
    let range = b.range.parse("1h").map_err(UiError::bad_request)?;
    let start = (range.time.start_ns / 1_000_000) as i64;
    let end = (range.time.end_ns / 1_000_000) as i64;
    let step = (((end - start) / TARGET_POINTS).max(1000) + 999) / 1000 * 1000;
    let metric = (!b.metric.is_empty()).then(|| b.metric.clone());
    let (families, labels) =
        explore_catalog(&st, start, end, metric).await.map_err(|(status, message)| UiError { status, message })?;
    let family = families.iter().find(|f| f.name == b.metric).cloned();
    let mut status = StatusCode::OK;
    let mut error = None;
    let built = match b.expression(family.as_ref()) {
        Ok(e) => e,
        Err(e) => {
            status = StatusCode::BAD_REQUEST;
            error = Some(e);
            String::new()
        }
    };
    let expression = if b.overridden() { b.expr.clone() } else { built.clone() };
    let mut chart = None;
    let mut hover = None;
    if !expression.is_empty() && error.is_none() {
        match explore_range(&st, &expression, start, end, step).await {
            Ok(series) => {
                let (c, h) = build_chart(&series, start, end, step, &y_unit(&b, family.as_ref()));
                chart = Some(c);
                hover = Some(ScriptJson::new(&h));
            }
            Err((s, message)) => {
                status = s;
                error = Some(message);
            }
        }
    }
    let mut by_choices: BTreeSet<String> = labels.keys().cloned().collect();
    by_choices.extend(b.by.iter().cloned());
    let mut filter_rows = b.filters.clone();
    while filter_rows.len() < MIN_FILTER_ROWS.max(b.filters.len() + 1) {
        filter_rows.push(Filter { label: String::new(), op: "=".into(), value: String::new() });
    }
    let page = ExplorePage {
        layout: Layout::new("Metrics", Nav::Metrics, &["explore.css", "explore.js"]),
        range,
        families,
        family,
        labels,
        by_choices: by_choices.into_iter().collect(),
        filter_rows,
        expression,
        built,
        error,
        chart,
        hover,
        step: super::fmt::step(step as u64 * 1_000_000),
        b,
    };
    Ok(render_with(status, &page))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fam(kind: &'static str, native: bool) -> FamilySummary {
        FamilySummary { name: "m".into(), kind, unit: "seconds".into(), help: String::new(), native }
    }

    #[test]
    fn the_builder_follows_the_metric_type() {
        let b = Builder::from_query("metric=m&fl=job&fo=!%3D&fv=a%22b&fl=&fo=%3D&fv=&by=svc&agg=sum&w=1m");
        assert_eq!(b.filters.len(), 1);
        let counter = b.expression(Some(&fam("counter", false))).unwrap();
        assert_eq!(counter, r#"sum by (svc) (rate(m{job!="a\"b"}[1m]))"#);
        assert_eq!(
            b.expression(Some(&fam("histogram", false))).unwrap(),
            r#"histogram_quantile(0.99, sum by (le,svc) (rate(m_bucket{job!="a\"b"}[1m])))"#
        );
        assert_eq!(
            b.expression(Some(&fam("histogram", true))).unwrap(),
            r#"histogram_quantile(0.99, sum by (svc) (rate(m{job!="a\"b"}[1m])))"#
        );
        let g = Builder::from_query("metric=m&agg=max");
        assert_eq!(g.expression(Some(&fam("gauge", false))).unwrap(), "max(m)");
        let raw = Builder::from_query("metric=m&agg=none&fn=raw");
        assert_eq!(raw.expression(Some(&fam("counter", false))).unwrap(), "m");
        assert!(Builder::from_query("metric=m&fl=a-b").expression(None).is_err());
        assert!(Builder::from_query("metric=m&by=x%29").expression(None).is_err());
        assert!(Builder::from_query("metric=m%7B").expression(None).is_err());
        assert!(Builder::from_query("metric=m&w=soon").expression(None).is_err());
    }

    #[test]
    fn an_unchanged_expression_box_follows_the_controls() {
        assert!(!Builder::from_query("metric=m&expr=sum(m)&built=sum(m)").overridden());
        assert!(Builder::from_query("metric=m&expr=max(m)&built=sum(m)").overridden());
        assert!(!Builder::from_query("metric=m&expr=").overridden());
    }

    #[test]
    fn values_and_steps_are_readable() {
        assert_eq!(fmt_value(0.0), "0");
        assert_eq!(fmt_value(12_345.0), "12.3k");
        assert_eq!(fmt_value(0.25), "0.25");
        assert_eq!(fmt_value(0.002), "2m");
        assert_eq!(fmt_value(2.5e9), "2.5G");
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(0.7, 5.0), 0.2);
    }

    #[test]
    fn gaps_break_lines_and_the_axis_has_ticks() {
        let s = ChartSeries {
            labels: vec![("job".into(), "<a>".into())],
            points: vec![(0, 1.0), (1000, 2.0), (5000, 3.0), (6000, f64::NAN)],
        };
        let (chart, hover) = build_chart(&[s], 0, 10_000, 1000, "s");
        assert_eq!(chart.lines.len(), 1);
        assert_eq!(chart.lines[0].path.matches('M').count(), 2, "{}", chart.lines[0].path);
        assert_eq!(chart.lines[0].max, "3");
        assert_eq!(chart.lines[0].name, r#"{job="<a>"}"#);
        assert!(chart.y_ticks.len() >= 3 && chart.x_ticks.len() >= 2);
        assert_eq!(hover.series[0].points.len(), 4);
    }
}
