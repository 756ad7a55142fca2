//! Prometheus-compatible HTTP API under `/prometheus/api/v1`, for Grafana's Prometheus
//! datasource (pointed at `http://host:16686/prometheus`, as with Mimir).
//!
//! # Where things are
//! - this file: routes, request parameters (as Prometheus parses them: GET query strings and
//!   POST form bodies, RFC 3339 or Unix-second times, durations or float-second steps), the
//!   JSON response format (`status`, `data.resultType`, `result`, values as strings,
//!   `errorType`/`error`), and the metadata endpoints (series, labels, label values, metadata,
//!   build info).
//! - `eval`: the PromQL evaluator over the store (supported subset in `docs/promql.md`;
//!   anything else is a 400 `bad_data` naming the construct).
//! - `hist`: float native histograms (sums, rates, quantiles of exponential histograms).
//!
//! The mapping from OTLP metrics to Prometheus series is the store's
//! (`obsbox_storage::prometheus`), shared with the exposition endpoint and remote write.

mod eval;
mod exposition;
mod hist;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use obsbox_storage::prometheus::{ViewOptions, format_float};
use obsbox_storage::{MetricQuery, Reader, TimeRange};
use promql_parser::label::Matcher;
use promql_parser::parser::Expr;

use self::eval::{EvalError, Evaluator, Limits, Metric, Sample, Series, Value};
use self::hist::FloatHist;
use crate::limits::QueryLimits;
use crate::{AppState, QueryError};

/// Default look-back of instant selectors.
const DEFAULT_LOOKBACK_MS: i64 = 5 * 60 * 1000;
/// Look-back of the metadata endpoints without `start`.
const DEFAULT_META_SINCE_MS: i64 = 6 * 3600 * 1000;
/// The Prometheus version reported by `status/buildinfo`: the release whose query semantics
/// obsbox follows, so Grafana enables the matching features.
const PROMETHEUS_VERSION: &str = "2.42.0";

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/prometheus/api/v1/query", get(query).post(query))
        .route("/prometheus/api/v1/query_range", get(query_range).post(query_range))
        .route("/prometheus/api/v1/series", get(series).post(series))
        .route("/prometheus/api/v1/labels", get(label_names).post(label_names))
        .route("/prometheus/api/v1/label/{name}/values", get(label_values))
        .route("/prometheus/api/v1/metadata", get(metadata))
        .route("/prometheus/api/v1/status/buildinfo", get(buildinfo))
        .route("/prometheus/api/v1/query_exemplars", get(query_exemplars).post(query_exemplars))
        .merge(exposition::routes())
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An API error, sent as Prometheus does: `{"status":"error","errorType":..,"error":..}`.
#[derive(Debug)]
pub(crate) struct PromError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl PromError {
    fn bad(message: impl Into<String>) -> PromError {
        PromError { status: StatusCode::BAD_REQUEST, kind: "bad_data", message: message.into() }
    }
}

impl From<EvalError> for PromError {
    fn from(e: EvalError) -> Self {
        match e {
            EvalError::BadData(m) => PromError::bad(m),
            EvalError::Execution(m) => {
                PromError { status: StatusCode::UNPROCESSABLE_ENTITY, kind: "execution", message: m }
            }
            EvalError::Store(e) => QueryError::from(e).into(),
            EvalError::Timeout => {
                PromError { status: StatusCode::SERVICE_UNAVAILABLE, kind: "timeout", message: e.to_string() }
            }
        }
    }
}

impl From<QueryError> for PromError {
    fn from(e: QueryError) -> Self {
        let kind = match e {
            QueryError::BadRequest(_) => "bad_data",
            QueryError::Unavailable(_) => "unavailable",
            QueryError::Internal(_) => "internal",
        };
        PromError { status: e.status(), kind, message: e.to_string() }
    }
}

impl IntoResponse for PromError {
    fn into_response(self) -> Response {
        let body = format!(
            "{{\"status\":\"error\",\"errorType\":{},\"error\":{}}}",
            json_str(self.kind),
            json_str(&self.message)
        );
        (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

/// Query-string and form-body parameters, in order (a form value after a query-string one).
pub(crate) struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = PromError;

    async fn from_request(req: Request, _state: &S) -> Result<Params, PromError> {
        crate::form::query_and_form(req).await.map(Params).map_err(PromError::bad)
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.as_str()).collect()
    }

    fn time(&self, key: &str) -> Result<Option<i64>, PromError> {
        self.get(key)
            .map(|v| parse_time(v).map_err(|e| PromError::bad(format!("invalid parameter \"{key}\": {e}"))))
            .transpose()
    }

    fn duration(&self, key: &str) -> Result<Option<i64>, PromError> {
        self.get(key)
            .map(|v| parse_duration(v).map_err(|e| PromError::bad(format!("invalid parameter \"{key}\": {e}"))))
            .transpose()
    }

    fn expr(&self, limits: &QueryLimits) -> Result<Expr, PromError> {
        let q = self.get("query").ok_or_else(|| PromError::bad("invalid parameter \"query\": missing query"))?;
        parse_checked(q, limits).map_err(|e| PromError::bad(format!("invalid parameter \"query\": {e}")))
    }

    fn lookback(&self) -> Result<i64, PromError> {
        Ok(self.duration("lookback_delta")?.filter(|d| *d > 0).unwrap_or(DEFAULT_LOOKBACK_MS))
    }

    /// `start`/`end` of the metadata endpoints, defaulting to the last six hours.
    fn meta_range(&self) -> Result<(i64, i64), PromError> {
        let end = self.time("end")?.unwrap_or_else(now_ms);
        let start = self.time("start")?.unwrap_or(end - DEFAULT_META_SINCE_MS);
        if end < start {
            return Err(PromError::bad("end timestamp must not be before start time"));
        }
        Ok((start, end))
    }

    fn matchers(&self, limits: &QueryLimits) -> Result<Vec<Vec<Matcher>>, PromError> {
        let mut out = Vec::new();
        let all = self.all("match[]");
        if all.len() > limits.max_selectors {
            return Err(PromError::bad(format!(
                "invalid parameter \"match[]\": more than {} selectors ([query] max_selectors)",
                limits.max_selectors
            )));
        }
        for m in all {
            let bad = |e: String| PromError::bad(format!("invalid parameter \"match[]\": {e}"));
            limits.check_text("match[]", m).map_err(bad)?;
            prescan(m, limits.max_query_depth, limits.max_query_clauses).map_err(bad)?;
            let expr = eval::parse(m).map_err(bad)?;
            let Expr::VectorSelector(vs) = expr else {
                return Err(PromError::bad("invalid parameter \"match[]\": not a vector selector"));
            };
            if !vs.matchers.or_matchers.is_empty() {
                return Err(PromError::bad("invalid parameter \"match[]\": `or` inside a selector is not supported"));
            }
            let mut ms = vs.matchers.matchers.clone();
            if let Some(name) = &vs.name {
                ms.push(Matcher::new(promql_parser::label::MatchOp::Equal, "__name__", name));
            }
            out.push(ms);
        }
        Ok(out)
    }
}

/// Parses a PromQL expression within `limits` (text length, nesting, selectors) and checks
/// that obsbox evaluates it. The message is for `invalid parameter "query": ...`.
fn parse_checked(q: &str, limits: &QueryLimits) -> Result<Expr, String> {
    limits.check_text("the query", q)?;
    prescan(q, limits.max_query_depth, limits.max_query_clauses)?;
    let expr = eval::parse(q)?;
    limits.check_promql(&expr)?;
    eval::check_supported(&expr).map_err(|e| e.to_string())?;
    Ok(expr)
}

/// A look at the text before parsing it, so that the parser never sees what would exhaust its
/// stack or time: brackets nested at most `max_depth` deep, and at most `max_ops` operators
/// (`+ - * / % ^ < > = !` characters and `and`/`or`/`unless` outside strings and label
/// braces). Binary chains parse into trees as deep as they are long, and runs of unary minus
/// nest one level each: both are bounded by the operator count.
fn prescan(q: &str, max_depth: usize, max_ops: usize) -> Result<(), String> {
    let (mut depth, mut braces, mut ops) = (0usize, 0usize, 0usize);
    let (mut quote, mut escaped) = (None::<char>, false);
    let mut word = String::new();
    let count_word = |word: &mut String, ops: &mut usize| {
        if matches!(word.to_ascii_lowercase().as_str(), "and" | "or" | "unless") {
            *ops += 1;
        }
        word.clear();
    };
    for c in q.chars() {
        if quote.is_none() && (c.is_alphanumeric() || c == '_') {
            word.push(c);
            continue;
        }
        count_word(&mut word, &mut ops);
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(qc) if c == qc => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' | '`' => quote = Some(c),
                '(' | '{' | '[' => {
                    depth += 1;
                    braces += (c == '{') as usize;
                    if depth > max_depth {
                        return Err(format!(
                            "the expression is nested more than {max_depth} levels deep ([query] max_query_depth)"
                        ));
                    }
                }
                ')' | '}' | ']' => {
                    depth = depth.saturating_sub(1);
                    braces = braces.saturating_sub((c == '}') as usize);
                }
                '+' | '-' | '*' | '/' | '%' | '^' | '<' | '>' | '=' | '!' if braces == 0 => ops += 1,
                _ => {}
            },
        }
        if ops > max_ops {
            return Err(format!("the expression has more than {max_ops} operators ([query] max_query_clauses)"));
        }
    }
    count_word(&mut word, &mut ops);
    if ops > max_ops {
        return Err(format!("the expression has more than {max_ops} operators ([query] max_query_clauses)"));
    }
    Ok(())
}

/// The evaluator's limits from `[query]`.
fn eval_limits(limits: &QueryLimits) -> Limits {
    Limits {
        max_samples: limits.max_samples,
        max_points: limits.max_samples,
        max_series: limits.max_series,
        deadline: Some(std::time::Instant::now() + limits.timeout),
    }
}

/// A time as Prometheus accepts it: Unix seconds (with fraction) or RFC 3339; to milliseconds.
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        // Within 10,000 years of 1970 (time arithmetic cannot overflow, see eval::MAX_SPAN_MS).
        if !f.is_finite() || f.abs() > 3.2e11 {
            return Err(format!("cannot parse {s:?} to a valid timestamp"));
        }
        return Ok((f * 1000.0).round() as i64);
    }
    match s {
        // Prometheus' minimum and maximum times, as client libraries send them.
        "0001-01-01T00:00:00Z" | "-292273086-05-16T16:47:06Z" => return Ok(i64::MIN / 2),
        "9999-12-31T23:59:59Z" | "292277025-08-18T07:12:54.999999999Z" => return Ok(i64::MAX / 2),
        _ => {}
    }
    humantime::parse_rfc3339(s).map(|t| system_ms(&t)).map_err(|_| format!("cannot parse {s:?} to a valid timestamp"))
}

fn system_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// A duration: float seconds or a Prometheus duration (`1h30m`, `5m`, `250ms`); to milliseconds.
pub(crate) fn parse_duration(s: &str) -> Result<i64, String> {
    if let Ok(f) = s.parse::<f64>() {
        if !f.is_finite() || f.abs() > 3.2e11 {
            return Err(format!("cannot parse {s:?} to a valid duration"));
        }
        return Ok((f * 1000.0).round() as i64);
    }
    let err = || format!("cannot parse {s:?} to a valid duration");
    let mut total: i64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(err()),
        };
        total = total.checked_add(n.checked_mul(ms).ok_or_else(err)?).ok_or_else(err)?;
        if total > 100 * eval::MAX_SPAN_MS {
            return Err(err());
        }
        rest = &rest[unit_len..];
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// A timestamp as Prometheus writes it: seconds as a JSON number, up to millisecond precision.
fn ts_json(t_ms: i64) -> String {
    format!("{}", t_ms as f64 / 1000.0)
}

fn write_metric(out: &mut String, m: &Metric) {
    out.push('{');
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_str(k));
        out.push(':');
        out.push_str(&json_str(v));
    }
    out.push('}');
}

fn write_hist(out: &mut String, h: &FloatHist) {
    let _ = write!(
        out,
        "{{\"count\":{},\"sum\":{},\"buckets\":[",
        json_str(&format_float(h.count)),
        json_str(&format_float(h.sum))
    );
    for (i, b) in h.buckets().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "[{},{},{},{}]",
            b.rule,
            json_str(&format_float(b.lower)),
            json_str(&format_float(b.upper)),
            json_str(&format_float(b.count))
        );
    }
    out.push_str("]}");
}

fn write_sample(out: &mut String, t_ms: i64, s: &Sample) {
    out.push_str("{\"metric\":");
    write_metric(out, &s.metric);
    match &s.h {
        Some(h) => {
            let _ = write!(out, ",\"histogram\":[{},", ts_json(t_ms));
            write_hist(out, h);
            out.push_str("]}");
        }
        None => {
            let _ = write!(out, ",\"value\":[{},{}]}}", ts_json(t_ms), json_str(&format_float(s.f)));
        }
    }
}

fn write_series(out: &mut String, s: &Series) {
    out.push_str("{\"metric\":");
    write_metric(out, &s.metric);
    if !s.floats.is_empty() {
        out.push_str(",\"values\":[");
        for (i, (t, v)) in s.floats.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "[{},{}]", ts_json(*t), json_str(&format_float(*v)));
        }
        out.push(']');
    }
    if !s.hists.is_empty() {
        out.push_str(",\"histograms\":[");
        for (i, (t, h)) in s.hists.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "[{},", ts_json(*t));
            write_hist(out, h);
            out.push(']');
        }
        out.push(']');
    }
    out.push('}');
}

fn success(result_type: Option<&str>, data: &str) -> Response {
    let body = match result_type {
        Some(t) => format!("{{\"status\":\"success\",\"data\":{{\"resultType\":\"{t}\",\"result\":{data}}}}}"),
        None => format!("{{\"status\":\"success\",\"data\":{data}}}"),
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

// ---------------------------------------------------------------------------------------------
// Queries
// ---------------------------------------------------------------------------------------------

/// Runs `f` with the store's reader on the blocking pool.
async fn blocking<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&dyn Reader) -> Result<T, EvalError> + Send + 'static,
) -> Result<T, PromError> {
    st.query.read(move |r| Ok(f(r))).await?.map_err(PromError::from)
}

fn check_duplicates(v: &[Sample]) -> Result<(), EvalError> {
    let mut seen = std::collections::HashSet::with_capacity(v.len());
    for s in v {
        if !seen.insert(&s.metric) {
            return Err(EvalError::Execution("vector cannot contain metrics with the same labelset".to_string()));
        }
    }
    Ok(())
}

/// Evaluates an instant query at `ts`.
pub(crate) fn instant_query(
    reader: &dyn Reader,
    expr: &Expr,
    ts: i64,
    lookback: i64,
    limits: &Limits,
) -> Result<Value, EvalError> {
    let ev = Evaluator::load(reader, expr, ts, ts, lookback, limits)?;
    let mut v = ev.eval(expr, ts)?;
    match &mut v {
        Value::Vector(samples) => {
            check_duplicates(samples)?;
            if !is_sorting(expr) {
                samples.sort_by(|a, b| a.metric.cmp(&b.metric));
            }
        }
        Value::Matrix(series) => {
            let points: usize = series.iter().map(|s| s.floats.len() + s.hists.len()).sum();
            if points > limits.max_points {
                return Err(too_many_points());
            }
        }
        _ => {}
    }
    Ok(v)
}

fn is_sorting(expr: &Expr) -> bool {
    match expr {
        Expr::Paren(p) => is_sorting(&p.expr),
        Expr::Call(c) => matches!(c.func.name, "sort" | "sort_desc"),
        Expr::Aggregate(a) => matches!(a.op.to_string().as_str(), "topk" | "bottomk"),
        _ => false,
    }
}

fn too_many_points() -> EvalError {
    EvalError::Execution(
        "query processing would load too many samples into memory in query execution ([query] max_samples)".to_string(),
    )
}

/// Evaluates a range query: one evaluation per step, collected into series sorted by labels.
pub(crate) fn range_query(
    reader: &dyn Reader,
    expr: &Expr,
    start: i64,
    end: i64,
    step: i64,
    lookback: i64,
    limits: &Limits,
) -> Result<Vec<Series>, EvalError> {
    let ev = Evaluator::load(reader, expr, start, end, lookback, limits)?;
    let mut index: HashMap<Metric, usize> = HashMap::new();
    let mut by_address: HashMap<usize, usize> = HashMap::new();
    let mut seen: Vec<Metric> = Vec::new();
    let mut out: Vec<Series> = Vec::new();
    let mut points = 0usize;
    let mut ts = start;
    while ts <= end {
        limits.check_deadline()?;
        let samples = match ev.eval(expr, ts)? {
            Value::Scalar(v) => vec![Sample { metric: Arc::new(Vec::new()), f: v, h: None }],
            Value::Vector(v) => v,
            other => {
                return Err(EvalError::BadData(format!(
                    "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                    if matches!(other, Value::Matrix(_)) { "range vector" } else { "string" }
                )));
            }
        };
        points += samples.len();
        if points > limits.max_points {
            return Err(too_many_points());
        }
        for s in samples {
            // Most steps return the same label sets (the same `Arc`s): look them up by address
            // before hashing labels. `seen` keeps them alive, so an address is never reused.
            let i = match by_address.get(&(Arc::as_ptr(&s.metric) as usize)) {
                Some(&i) => i,
                None => {
                    let i = *index.entry(s.metric.clone()).or_insert_with(|| {
                        out.push(Series {
                            metric: s.metric.clone(),
                            unnamed: s.metric.clone(),
                            floats: Vec::new(),
                            hists: Vec::new(),
                        });
                        out.len() - 1
                    });
                    // Label sets made afresh at every step (arithmetic results) never hit:
                    // start over rather than keep them all alive.
                    if seen.len() > 2 * out.len() + 1024 {
                        by_address.clear();
                        seen.clear();
                    }
                    by_address.insert(Arc::as_ptr(&s.metric) as usize, i);
                    seen.push(s.metric.clone());
                    i
                }
            };
            let series = &mut out[i];
            let last = series.floats.last().map(|p| p.0).max(series.hists.last().map(|p| p.0));
            if last == Some(ts) {
                return Err(EvalError::Execution("vector cannot contain metrics with the same labelset".to_string()));
            }
            match s.h {
                Some(h) => series.hists.push((ts, h)),
                None => series.floats.push((ts, s.f)),
            }
        }
        ts += step;
    }
    out.sort_by(|a, b| a.metric.cmp(&b.metric));
    Ok(out)
}

async fn query(State(st): State<AppState>, p: Params) -> Result<Response, PromError> {
    let limits = eval_limits(st.query.limits());
    let expr = p.expr(st.query.limits())?;
    let ts = p.time("time")?.unwrap_or_else(now_ms);
    let lookback = p.lookback()?;
    let v = blocking(&st, move |r| instant_query(r, &expr, ts, lookback, &limits)).await?;
    let mut out = String::new();
    let kind = v.type_name();
    match &v {
        Value::Scalar(x) => {
            let _ = write!(out, "[{},{}]", ts_json(ts), json_str(&format_float(*x)));
        }
        Value::Str(s) => {
            let _ = write!(out, "[{},{}]", ts_json(ts), json_str(s));
        }
        Value::Vector(samples) => {
            out.push('[');
            for (i, s) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sample(&mut out, ts, s);
            }
            out.push(']');
        }
        Value::Matrix(series) => {
            out.push('[');
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_series(&mut out, s);
            }
            out.push(']');
        }
    }
    Ok(success(Some(kind), &out))
}

async fn query_range(State(st): State<AppState>, p: Params) -> Result<Response, PromError> {
    let expr = p.expr(st.query.limits())?;
    let start = p.time("start")?.ok_or_else(|| PromError::bad("invalid parameter \"start\": missing"))?;
    let end = p.time("end")?.ok_or_else(|| PromError::bad("invalid parameter \"end\": missing"))?;
    if end < start {
        return Err(PromError::bad("invalid parameter \"end\": end timestamp must not be before start time"));
    }
    let step = p.duration("step")?.ok_or_else(|| PromError::bad("invalid parameter \"step\": missing"))?;
    if step <= 0 {
        return Err(PromError::bad(
            "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    let max_points = st.query.limits().max_points_per_series as i64;
    if end.saturating_sub(start) / step > max_points {
        return Err(PromError::bad(format!(
            "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
            crate::limits::thousands(max_points as u64)
        )));
    }
    let range_ns = TimeRange {
        start_ns: u64::try_from(start.max(0)).unwrap_or(0).saturating_mul(1_000_000),
        end_ns: u64::try_from(end.max(0)).unwrap_or(0).saturating_mul(1_000_000),
    };
    st.query.limits().check_range(range_ns).map_err(|e| PromError::bad(format!("invalid parameter \"end\": {e}")))?;
    let limits = eval_limits(st.query.limits());
    let lookback = p.lookback()?;
    let series = blocking(&st, move |r| range_query(r, &expr, start, end, step, lookback, &limits)).await?;
    let mut out = String::from("[");
    for (i, s) in series.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_series(&mut out, s);
    }
    out.push(']');
    Ok(success(Some("matrix"), &out))
}

// ---------------------------------------------------------------------------------------------
// Metadata endpoints
// ---------------------------------------------------------------------------------------------

/// A family's name, type, help and unit.
type FamilyInfo = (String, &'static str, String, String);

/// Label sets of the series with samples in `[start, end]` matching any of `selectors` (every
/// series when there are none), with their family's type, help and unit.
fn series_in(
    reader: &dyn Reader,
    selectors: &[Vec<Matcher>],
    start: i64,
    end: i64,
) -> Result<BTreeMap<eval::Labels, FamilyInfo>, EvalError> {
    let start_ns = u64::try_from(start.max(0)).unwrap_or(0).saturating_mul(1_000_000);
    let end_ns = u64::try_from(end.saturating_add(1).max(0)).unwrap_or(0).saturating_mul(1_000_000);
    let time = TimeRange { start_ns, end_ns };
    let mut out = BTreeMap::new();
    let all: Vec<Vec<Matcher>> = if selectors.is_empty() { vec![Vec::new()] } else { selectors.to_vec() };
    for ms in &all {
        let query = MetricQuery { matchers: eval::pushdown(ms), time };
        let opts = ViewOptions { native_histograms: true, target_info: true };
        let view = reader.find_metrics_view(&query, &eval::label_pushdown(ms), &opts)?;
        for fam in view.families {
            let info = (fam.name.clone(), fam.kind.as_str(), fam.help.clone(), fam.unit.clone());
            let labels = fam
                .series
                .into_iter()
                .filter(|s| s.samples.iter().any(|p| p.t_ms >= start && p.t_ms <= end))
                .map(|s| s.labels)
                .chain(
                    fam.native
                        .into_iter()
                        .filter(|s| s.histograms.iter().any(|h| h.t_ms >= start && h.t_ms <= end))
                        .map(|s| s.labels),
                );
            for l in labels {
                if ms.iter().all(|m| m.is_match(l.iter().find(|(k, _)| *k == m.name).map_or("", |(_, v)| v))) {
                    out.insert(l, info.clone());
                }
            }
        }
    }
    Ok(out)
}

async fn series(State(st): State<AppState>, p: Params) -> Result<Response, PromError> {
    let selectors = p.matchers(st.query.limits())?;
    if selectors.is_empty() {
        return Err(PromError::bad("no match[] parameter provided"));
    }
    let (start, end) = p.meta_range()?;
    let found = blocking(&st, move |r| series_in(r, &selectors, start, end)).await?;
    let mut out = String::from("[");
    for (i, labels) in found.keys().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_metric(&mut out, &Arc::new(labels.clone()));
    }
    out.push(']');
    Ok(success(None, &out))
}

fn string_list(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().map(|s| json_str(&s)).collect();
    format!("[{}]", items.join(","))
}

async fn label_names(State(st): State<AppState>, p: Params) -> Result<Response, PromError> {
    let selectors = p.matchers(st.query.limits())?;
    let (start, end) = p.meta_range()?;
    let found = blocking(&st, move |r| series_in(r, &selectors, start, end)).await?;
    let names: BTreeSet<String> = found.keys().flat_map(|l| l.iter().map(|(k, _)| k.clone())).collect();
    Ok(success(None, &string_list(names)))
}

async fn label_values(State(st): State<AppState>, Path(name): Path<String>, p: Params) -> Result<Response, PromError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(PromError::bad(format!("invalid label name: {name:?}")));
    }
    let selectors = p.matchers(st.query.limits())?;
    let (start, end) = p.meta_range()?;
    let found = blocking(&st, move |r| series_in(r, &selectors, start, end)).await?;
    let values: BTreeSet<String> =
        found.keys().filter_map(|l| l.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())).collect();
    Ok(success(None, &string_list(values)))
}

async fn metadata(State(st): State<AppState>, p: Params) -> Result<Response, PromError> {
    let (start, end) = p.meta_range()?;
    let metric = p.get("metric").map(str::to_string);
    let limit = match p.get("limit") {
        Some(l) => Some(l.parse::<i64>().map_err(|_| PromError::bad("invalid parameter \"limit\": not a number"))?),
        None => None,
    }
    .filter(|l| *l > 0)
    .map(|l| l as usize);
    let found = blocking(&st, move |r| series_in(r, &[], start, end)).await?;
    let mut fams: BTreeMap<String, BTreeSet<(&'static str, String, String)>> = BTreeMap::new();
    for (name, kind, help, unit) in found.into_values() {
        if metric.as_ref().is_some_and(|m| *m != name) {
            continue;
        }
        fams.entry(name).or_default().insert((kind, help, unit));
    }
    let mut out = String::from("{");
    for (i, (name, infos)) in fams.iter().take(limit.unwrap_or(usize::MAX)).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let list: Vec<String> = infos
            .iter()
            .map(|(k, h, u)| format!("{{\"type\":{},\"help\":{},\"unit\":{}}}", json_str(k), json_str(h), json_str(u)))
            .collect();
        let _ = write!(out, "{}:[{}]", json_str(name), list.join(","));
    }
    out.push('}');
    Ok(success(None, &out))
}

/// Exemplars (trace and span ids) of the series the query's selectors select, in `[start, end]`.
async fn query_exemplars(State(st): State<AppState>, p: Params) -> Result<Response, PromError> {
    let expr = p.expr(st.query.limits())?;
    let end = p.time("end")?.unwrap_or_else(now_ms);
    let start = p.time("start")?.unwrap_or(end - 3600 * 1000);
    if end < start {
        return Err(PromError::bad("end timestamp must not be before start time"));
    }
    let mut selectors = Vec::new();
    eval::all_selectors(&expr, &mut selectors);
    let found = blocking(&st, move |r| {
        let time = TimeRange {
            start_ns: u64::try_from(start.max(0)).unwrap_or(0).saturating_mul(1_000_000),
            end_ns: u64::try_from(end.saturating_add(1).max(0)).unwrap_or(0).saturating_mul(1_000_000),
        };
        let mut out: BTreeMap<eval::Labels, Vec<obsbox_storage::prometheus::Exemplar>> = BTreeMap::new();
        for ms in &selectors {
            let query = MetricQuery { matchers: eval::pushdown(ms), time };
            let opts = ViewOptions { native_histograms: true, target_info: false };
            let view = r.find_metrics_view(&query, &eval::label_pushdown(ms), &opts)?;
            for fam in view.families {
                let series = fam
                    .series
                    .into_iter()
                    .map(|s| (s.labels, s.exemplars))
                    .chain(fam.native.into_iter().map(|s| (s.labels, s.exemplars)));
                for (labels, exemplars) in series {
                    let exemplars: Vec<_> =
                        exemplars.into_iter().filter(|e| e.t_ms >= start && e.t_ms <= end).collect();
                    if !exemplars.is_empty() && eval::matches_all(&labels, ms) {
                        out.insert(labels, exemplars);
                    }
                }
            }
        }
        Ok(out)
    })
    .await?;
    let mut out = String::from("[");
    for (i, (labels, exemplars)) in found.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"seriesLabels\":");
        write_metric(&mut out, &Arc::new(labels.clone()));
        out.push_str(",\"exemplars\":[");
        for (j, e) in exemplars.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str("{\"labels\":");
            write_metric(&mut out, &Arc::new(e.labels.clone()));
            let _ = write!(out, ",\"value\":{},\"timestamp\":{}}}", json_str(&format_float(e.value)), ts_json(e.t_ms));
        }
        out.push_str("]}");
    }
    out.push(']');
    Ok(success(None, &out))
}

async fn buildinfo() -> Response {
    let data = format!(
        "{{\"version\":\"{PROMETHEUS_VERSION}\",\"revision\":\"obsbox-{}\",\"branch\":\"\",\"buildUser\":\"obsbox\",\"buildDate\":\"\",\"goVersion\":\"\"}}",
        env!("CARGO_PKG_VERSION")
    );
    success(None, &data)
}

// ---------------------------------------------------------------------------------------------
// In-process entry points of the UI's metrics explorer (`ui::explore`)
// ---------------------------------------------------------------------------------------------

/// A metric family as the explorer's picker lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FamilySummary {
    /// The Prometheus family name (`http_server_duration_milliseconds`).
    pub name: String,
    /// `counter`, `gauge`, `histogram`, `summary` or `unknown`.
    pub kind: &'static str,
    /// The unit from the metadata (may be empty).
    pub unit: String,
    /// The help text (may be empty).
    pub help: String,
    /// A histogram stored as native (exponential) histograms: no `_bucket` series.
    pub native: bool,
}

/// Label names and their values of one family's series (`__name__` and `le` left out).
pub(crate) type LabelValues = BTreeMap<String, BTreeSet<String>>;

/// The families with samples in `[start_ms, end_ms]`, and the labels of `metric`'s series.
pub(crate) async fn explore_catalog(
    st: &AppState,
    start_ms: i64,
    end_ms: i64,
    metric: Option<String>,
) -> Result<(Vec<FamilySummary>, LabelValues), (StatusCode, String)> {
    let found = blocking(st, move |r| series_in(r, &[], start_ms, end_ms)).await.map_err(|e| (e.status, e.message))?;
    let mut fams: BTreeMap<String, FamilySummary> = BTreeMap::new();
    let mut labels = LabelValues::new();
    for (series, (name, kind, help, unit)) in found {
        let series_name = series.iter().find(|(k, _)| k == "__name__").map_or("", |(_, v)| v.as_str());
        let classic = series_name.ends_with("_bucket");
        let fam = fams.entry(name.clone()).or_insert_with(|| FamilySummary {
            name: name.clone(),
            kind,
            unit: unit.clone(),
            help: help.clone(),
            native: kind == "histogram",
        });
        if classic {
            fam.native = false;
        }
        if metric.as_deref() == Some(name.as_str()) {
            for (k, v) in series {
                if k != "__name__" && k != "le" {
                    labels.entry(k).or_default().insert(v);
                }
            }
        }
    }
    Ok((fams.into_values().collect(), labels))
}

/// One series of a range query, float samples only (native histogram samples are not drawn).
#[derive(Clone, Debug)]
pub(crate) struct ChartSeries {
    /// The series' labels.
    pub labels: eval::Labels,
    /// `(t_ms, value)` pairs in time order.
    pub points: Vec<(i64, f64)>,
}

/// Parses and evaluates `query` as a range query. Errors are the engine's messages with a
/// 4xx status for bad or unevaluable queries.
pub(crate) async fn explore_range(
    st: &AppState,
    query: &str,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
) -> Result<Vec<ChartSeries>, (StatusCode, String)> {
    let expr = parse_checked(query, st.query.limits()).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    let step = step_ms.max(1);
    let limits = eval_limits(st.query.limits());
    let res = blocking(st, move |r| range_query(r, &expr, start_ms, end_ms, step, DEFAULT_LOOKBACK_MS, &limits)).await;
    match res {
        Ok(series) => Ok(series
            .into_iter()
            .map(|s| ChartSeries { labels: (*s.metric).clone(), points: s.floats })
            .filter(|s| !s.points.is_empty())
            .collect()),
        Err(e) if e.status.is_server_error() => Err((e.status, e.message)),
        // an execution error (422 in the API) is still the expression's fault
        Err(e) => Err((StatusCode::BAD_REQUEST, e.message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread with a runtime worker's stack (2 MiB), as the handlers do.
    fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new().stack_size(2 << 20).spawn(f).unwrap().join().unwrap()
    }

    #[test]
    fn hostile_expressions_are_refused_before_they_reach_the_parser() {
        // Each of these once overflowed the stack (aborting obsbox) or took seconds to parse.
        let cases = [
            ("-".repeat(30_000) + "time()", "operators"),
            ("1".to_string() + &"+1".repeat(20_000), "operators"),
            ("up".to_string() + &" or up".repeat(300), "operators"),
            ("(".repeat(10_000) + "1" + &")".repeat(10_000), "nested"),
            ("sum(".repeat(100) + "up" + &")".repeat(100), "nested"),
        ];
        for (q, why) in cases {
            let err = on_worker_stack(move || parse_checked(&q, &QueryLimits::default()).unwrap_err());
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn match_selectors_are_scanned_before_parsing() {
        let p = Params(vec![("match[]".into(), "-".repeat(30_000) + "up")]);
        let e = on_worker_stack(move || p.matchers(&QueryLimits::default()).unwrap_err());
        assert!(e.message.contains("operators"), "{}", e.message);
    }

    #[test]
    fn label_matchers_and_strings_are_not_operators() {
        let limits = QueryLimits { max_query_clauses: 3, ..Default::default() };
        let q = r#"sum by (code) (rate(http_requests_total{code!~"5..", path=~"/a|/b", x!="-+*"}[5m])) / 2"#;
        parse_checked(q, &limits).unwrap();
        assert!(parse_checked("a + b - c * d / e", &limits).unwrap_err().contains("max_query_clauses"));
        assert!(parse_checked("a and b or c unless d and e", &limits).unwrap_err().contains("max_query_clauses"));
        assert!(
            parse_checked("a + b", &QueryLimits { max_selectors: 1, ..Default::default() })
                .unwrap_err()
                .contains("max_selectors")
        );
        assert!(
            parse_checked(&"x".repeat(100), &QueryLimits { max_query_bytes: 99, ..Default::default() })
                .unwrap_err()
                .contains("max_query_bytes")
        );
    }

    #[test]
    fn times_and_spans_stay_where_arithmetic_cannot_overflow() {
        // Each of these once panicked (debug) or wrapped (release) in time arithmetic.
        for t in ["-9e15", "9e15", "1e300"] {
            assert!(parse_time(t).is_err(), "{t}");
        }
        assert_eq!(parse_time("0001-01-01T00:00:00Z"), Ok(i64::MIN / 2));
        assert!(parse_duration("100000000y").is_err());
        assert!(parse_duration("9e15").is_err());
        assert_eq!(parse_duration("1y"), Ok(365 * 86_400_000));
        let limits = QueryLimits::default();
        for q in ["up[1000y]", "up offset 1000y", "up offset -1000y", "up @ 1e300"] {
            assert!(parse_checked(q, &limits).is_err(), "{q}");
        }
        parse_checked("rate(up[30d] offset 1y)", &limits).unwrap();
    }
}
