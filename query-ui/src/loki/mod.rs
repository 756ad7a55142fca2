//! Loki-compatible HTTP API under `/loki/api/v1`: what Grafana's Loki datasource calls for
//! Explore, log panels, the logs-volume histogram and its query editor.
//!
//! # Where things are
//! - this file: routes, request parameters (as Loki parses them), response JSON, errors.
//! - `logql`: the LogQL lexer, parser and syntax tree (the supported subset is in
//!   `docs/logql.md`; anything else is refused with a 400 naming the construct).
//! - `labels`: a stored record's line and labels, and the pipeline stages run on it.
//! - `plan`: pushdown of selectors and filters into a store predicate (exact or superset).
//! - `eval`: the windowed scanner, log queries, metric queries.
//! - `meta`: labels, label values, series, index stats and volume, detected labels and fields.
//!
//! Errors are plain text, as Loki sends them: 400 for a bad query or parameter, 404 for an
//! endpoint obsbox does not serve, 503 when the store asks to retry.

mod eval;
mod labels;
pub(crate) mod logql;
mod meta;
mod plan;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use obsbox_storage::TimeRange;
use serde_json::{Value as Json, json};

use self::eval::{Direction, Grid, Series, Stats, Value};
use self::labels::Labels;
use self::logql::{Expr, LogqlError, Matcher};
use crate::limits::QueryLimits;
use crate::{AppState, QueryError};

/// Lines returned when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;
/// Look-back of query_range without `start`.
const DEFAULT_QUERY_SINCE_NS: u64 = 3600 * 1_000_000_000;
/// Look-back of the metadata endpoints without `start`.
const DEFAULT_META_SINCE_NS: u64 = 6 * 3600 * 1_000_000_000;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/loki/api/v1/query_range", get(query_range).post(query_range))
        .route("/loki/api/v1/query", get(query).post(query))
        .route("/loki/api/v1/labels", get(label_names).post(label_names))
        .route("/loki/api/v1/label", get(label_names).post(label_names))
        .route("/loki/api/v1/label/{name}/values", get(label_values).post(label_values))
        .route("/loki/api/v1/series", get(series).post(series))
        .route("/loki/api/v1/index/stats", get(index_stats).post(index_stats))
        .route("/loki/api/v1/index/volume", get(volume).post(volume))
        .route("/loki/api/v1/index/volume_range", get(volume_range).post(volume_range))
        .route("/loki/api/v1/detected_labels", get(detected_labels))
        .route("/loki/api/v1/detected_fields", get(detected_fields))
        .route("/loki/api/v1/format_query", get(format_query).post(format_query))
        .route("/loki/api/v1/{*rest}", any(not_served))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// An error response: a status and a plain-text message.
#[derive(Debug)]
pub(crate) struct LokiError {
    status: StatusCode,
    msg: String,
}

impl LokiError {
    fn bad(msg: impl Into<String>) -> LokiError {
        LokiError { status: StatusCode::BAD_REQUEST, msg: msg.into() }
    }
}

impl IntoResponse for LokiError {
    fn into_response(self) -> Response {
        (self.status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{}\n", self.msg)).into_response()
    }
}

impl From<QueryError> for LokiError {
    fn from(e: QueryError) -> LokiError {
        LokiError { status: e.status(), msg: e.to_string() }
    }
}

impl From<LogqlError> for LokiError {
    fn from(e: LogqlError) -> LokiError {
        LokiError::bad(e.to_string())
    }
}

async fn not_served(Path(rest): Path<String>) -> LokiError {
    let why = match rest.as_str() {
        "tail" => "live tailing is not supported",
        "push" => "obsbox ingests OTLP only (ports 4317 and 4318)",
        "patterns" => "log patterns are not supported",
        _ if rest.starts_with("detected_field") => "detected field values are not supported",
        _ if rest.starts_with("rules") || rest.starts_with("alerts") => "the ruler is not supported",
        _ => "not supported",
    };
    LokiError {
        status: StatusCode::NOT_FOUND,
        msg: format!("/loki/api/v1/{rest}: {why} (supported: see docs/logql.md)"),
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

/// Request parameters from the query string and, for a POST, a form body (as Loki reads them),
/// with the limits they are checked against.
pub(crate) struct Params(Vec<(String, String)>, QueryLimits);

impl FromRequest<AppState> for Params {
    type Rejection = LokiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Params, LokiError> {
        let limits = state.query.limits().clone();
        crate::form::query_and_form(req).await.map(|p| Params(p, limits)).map_err(LokiError::bad)
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.as_str()).collect()
    }

    /// `query`, within `[query] max_query_bytes`.
    fn query(&self) -> Result<&str, LokiError> {
        let q = self.get("query").ok_or_else(|| LokiError::bad("missing query parameter"))?;
        self.1.check_text("the query", q).map_err(LokiError::bad)?;
        Ok(q)
    }

    /// `query` parsed as LogQL within the limits (length, nesting, selectors, clauses).
    fn logql(&self) -> Result<Expr, LokiError> {
        self.parse_logql(self.query()?)
    }

    fn parse_logql(&self, q: &str) -> Result<Expr, LokiError> {
        let l = &self.1;
        l.check_text("the query", q).map_err(LokiError::bad)?;
        let expr = logql::parse(q)?;
        let shape = logql::shape(&expr);
        if shape.depth > l.max_query_depth {
            return Err(LokiError::bad(format!(
                "the query is nested more than {} levels deep ([query] max_query_depth)",
                l.max_query_depth
            )));
        }
        if shape.selectors > l.max_selectors {
            return Err(LokiError::bad(format!(
                "the query has {} stream selectors, more than the limit of {} ([query] max_selectors)",
                shape.selectors, l.max_selectors
            )));
        }
        if shape.clauses > l.max_query_clauses {
            return Err(LokiError::bad(format!(
                "the query has {} filters and stages, more than the limit of {} ([query] max_query_clauses)",
                shape.clauses, l.max_query_clauses
            )));
        }
        Ok(expr)
    }

    /// A stream selector within `[query] max_query_bytes`.
    fn parse_selector(&self, q: &str) -> Result<Vec<Matcher>, LokiError> {
        self.1.check_text("the selector", q).map_err(LokiError::bad)?;
        Ok(logql::parse_selector(q)?)
    }

    /// Points of a range query within `[query] max_points_per_series` (the message is Loki's).
    fn check_points(&self, points: u64) -> Result<(), LokiError> {
        let max = self.1.max_points_per_series as u64;
        if points > max {
            return Err(LokiError::bad(format!(
                "exceeded maximum resolution of {} points per timeseries ({points}). Try decreasing the query \
                 resolution (?step=XX)",
                crate::limits::thousands(max)
            )));
        }
        Ok(())
    }

    fn time(&self, key: &str) -> Result<Option<u64>, LokiError> {
        self.get(key).map(|v| parse_time(key, v)).transpose()
    }

    /// `start` / `end` / `since`, defaulting to `[now - default_since, now]`.
    fn range(&self, default_since: u64) -> Result<(u64, u64), LokiError> {
        let end = self.time("end")?.unwrap_or_else(now_ns);
        let since = match self.get("since") {
            Some(v) => parse_seconds_or_duration("since", v)?,
            // The default window shrinks to fit `[query] max_time_range`; an explicit one does not.
            None => self.1.default_window_ns(default_since),
        };
        let start = self.time("start")?.unwrap_or_else(|| end.saturating_sub(since));
        if end < start {
            return Err(LokiError::bad("end timestamp must not be before start time"));
        }
        self.1.check_range(TimeRange { start_ns: start, end_ns: end }).map_err(LokiError::bad)?;
        Ok((start, end))
    }

    fn limit(&self) -> Result<usize, LokiError> {
        let Some(v) = self.get("limit") else { return Ok(DEFAULT_LIMIT.min(self.1.max_log_lines)) };
        let n: i64 = v.trim().parse().map_err(|_| LokiError::bad(format!("invalid limit parameter: {v:?}")))?;
        if n <= 0 {
            return Err(LokiError::bad("limit must be a positive value"));
        }
        let max = self.1.max_log_lines;
        if n as u64 > max as u64 {
            return Err(LokiError::bad(format!(
                "max entries limit per query exceeded, limit > max_entries_limit ({n} > {max}) ([query] max_log_lines)"
            )));
        }
        Ok(n as usize)
    }

    fn direction(&self) -> Result<Direction, LokiError> {
        match self.get("direction").map(str::to_ascii_lowercase).as_deref() {
            None | Some("backward") => Ok(Direction::Backward),
            Some("forward") => Ok(Direction::Forward),
            Some(d) => Err(LokiError::bad(format!("invalid direction {d:?}: must be forward or backward"))),
        }
    }

    /// `step` of a range query; Loki's default is (end - start) / 250, at least 1s.
    fn step(&self, start: u64, end: u64) -> Result<u64, LokiError> {
        match self.get("step") {
            Some(v) => parse_seconds_or_duration("step", v).map_err(|_| {
                LokiError::bad(format!(
                    "invalid step parameter {v:?}: zero or negative query resolution step widths are not accepted, \
                     and a step is a number of seconds or a duration such as 30s"
                ))
            }),
            None => Ok(((end - start) / 1_000_000_000 / 250).max(1) * 1_000_000_000),
        }
    }

    fn reject_interval(&self) -> Result<(), LokiError> {
        match self.get("interval") {
            Some(_) => Err(LokiError::bad("the interval parameter is not supported (see docs/logql.md)")),
            None => Ok(()),
        }
    }

    fn selector(&self) -> Result<Option<Vec<Matcher>>, LokiError> {
        self.get("query").map(|q| self.parse_selector(q)).transpose()
    }
}

/// A timestamp as Loki accepts it: Unix seconds with a fraction (`1700000000.5`), an integer
/// (seconds when at most 10 digits, else nanoseconds) or RFC 3339.
fn parse_time(name: &str, v: &str) -> Result<u64, LokiError> {
    let bad = || LokiError::bad(format!("invalid {name} parameter: cannot parse {v:?} to a valid timestamp"));
    let v = v.trim();
    if let Some((secs, frac)) = v.split_once('.')
        && !secs.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && !frac.is_empty()
        && frac.bytes().all(|b| b.is_ascii_digit())
    {
        let s: u64 = secs.parse().map_err(|_| bad())?;
        let mut digits: String = frac.chars().take(9).collect();
        while digits.len() < 9 {
            digits.push('0');
        }
        let ns: u64 = digits.parse().map_err(|_| bad())?;
        return s.checked_mul(1_000_000_000).and_then(|x| x.checked_add(ns)).ok_or_else(bad);
    }
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = v.parse().map_err(|_| bad())?;
        return if v.len() <= 10 { n.checked_mul(1_000_000_000).ok_or_else(bad) } else { Ok(n) };
    }
    parse_rfc3339(v).ok_or_else(bad)
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2024-01-02T03:04:05.123456789Z` or with an offset (`+02:00`); `None` when malformed or
/// before 1970.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = s.get(from..to)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok()).flatten()
    };
    let sep = |at: usize, chars: &[u8]| s.as_bytes().get(at).is_some_and(|b| chars.contains(b));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d, h, mi, sec) = (num(0, 4)?, num(5, 7)?, num(8, 10)?, num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&mo) || d < 1 || d > month_days[(mo - 1) as usize] || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut frac_ns: i64 = 0;
    if let Some(r) = rest.strip_prefix('.') {
        let n = r.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let mut digits: String = r[..n].chars().take(9).collect();
        while digits.len() < 9 {
            digits.push('0');
        }
        frac_ns = digits.parse().ok()?;
        rest = &r[n..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = rest.get(1..)?.split_once(':')?;
            if oh.len() != 2 || om.len() != 2 {
                return None;
            }
            let (oh, om): (i64, i64) = (oh.parse().ok()?, om.parse().ok()?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec.min(59) - offset_secs;
    if secs < 0 {
        return None;
    }
    (secs as u64).checked_mul(1_000_000_000)?.checked_add(frac_ns as u64)
}

/// Float seconds (`15`, `0.5`) or a duration (`1m`, `1h30m`), positive, in ns.
fn parse_seconds_or_duration(name: &str, v: &str) -> Result<u64, LokiError> {
    let bad = || LokiError::bad(format!("invalid {name} parameter {v:?}: expected seconds or a duration such as 5m"));
    let v = v.trim();
    let ns = match v.parse::<f64>() {
        Ok(secs) if secs.is_finite() => {
            if secs <= 0.0 || secs * 1e9 >= u64::MAX as f64 {
                return Err(bad());
            }
            (secs * 1e9).round() as u64
        }
        Ok(_) => return Err(bad()),
        Err(_) => logql::parse_duration(v).ok_or_else(bad)?,
    };
    if ns == 0 {
        return Err(bad());
    }
    Ok(ns)
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

fn success(data: Json) -> Response {
    axum::Json(json!({ "status": "success", "data": data })).into_response()
}

/// A sample value as Prometheus and Loki print it.
fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

/// A sample time: Unix seconds as a JSON number, millisecond precision.
fn ts_json(t_ns: u64) -> Json {
    let ms = t_ns / 1_000_000;
    if ms.is_multiple_of(1000) {
        json!(ms / 1000)
    } else {
        serde_json::Number::from_f64(ms as f64 / 1000.0).map(Json::Number).unwrap_or(Json::Null)
    }
}

fn stats_json(s: &Stats) -> Json {
    let secs = s.started.elapsed().as_secs_f64();
    let per_sec = |x: u64| if secs > 0.0 { (x as f64 / secs) as u64 } else { 0 };
    json!({
        "summary": {
            "bytesProcessedPerSecond": per_sec(s.bytes),
            "linesProcessedPerSecond": per_sec(s.lines),
            "totalBytesProcessed": s.bytes,
            "totalLinesProcessed": s.lines,
            "execTime": secs,
            "queueTime": 0,
            "subqueries": 0,
            "totalEntriesReturned": s.returned,
            "splits": 0,
            "shards": 0,
            "totalPostFilterLines": s.post_filter,
            "totalStructuredMetadataBytesProcessed": 0
        }
    })
}

fn with_warnings(mut body: Json, warnings: Vec<String>) -> Response {
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    axum::Json(body).into_response()
}

fn matrix_json(v: Value, grid: &Grid) -> Json {
    let series = match v {
        Value::Vector(s) => s,
        Value::Scalar(x) => vec![Series { labels: Labels::new(), values: vec![Some(x); grid.n] }],
    };
    Json::Array(
        series
            .into_iter()
            .map(|s| {
                let values: Vec<Json> = s
                    .values
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| v.map(|v| json!([ts_json(grid.t(i)), fmt_value(v)])))
                    .collect();
                json!({ "metric": s.labels, "values": values })
            })
            .collect(),
    )
}

fn vector_json(series: Vec<Series>, t: u64) -> Json {
    Json::Array(
        series
            .into_iter()
            .filter_map(|s| {
                let v = s.values.first().copied().flatten()?;
                Some(json!({ "metric": s.labels, "value": [ts_json(t), fmt_value(v)] }))
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

async fn query_range(State(st): State<AppState>, p: Params) -> Result<Response, LokiError> {
    let expr = p.logql()?;
    let (start, end) = p.range(DEFAULT_QUERY_SINCE_NS)?;
    let limit = p.limit()?;
    let dir = p.direction()?;
    p.reject_interval()?;
    let step = p.step(start, end)?;
    let mut stats = Stats::new();
    match expr {
        Expr::Log(log) => {
            let range = TimeRange { start_ns: start, end_ns: end };
            let res = eval::log_query(&st.query, &log, range, limit, dir, &mut stats).await?;
            let result: Vec<Json> = res
                .streams
                .into_iter()
                .map(|(labels, values)| {
                    let values: Vec<Json> = values.into_iter().map(|(t, l)| json!([t.to_string(), l])).collect();
                    json!({ "stream": labels, "values": values })
                })
                .collect();
            let body = json!({
                "status": "success",
                "data": { "resultType": "streams", "result": result, "stats": stats_json(&stats) }
            });
            Ok(with_warnings(body, res.warnings))
        }
        Expr::Metric(m) => {
            // As Loki's query frontend: evaluation times aligned to the step.
            let (s, e) = (start / step * step, end / step * step);
            let points = (e - s) / step + 1;
            p.check_points(points)?;
            let grid = Grid { start: s, step, n: points as usize };
            let v = eval::metric_query(&st.query, &m, &grid, &mut stats).await?;
            let result = matrix_json(v, &grid);
            Ok(axum::Json(json!({
                "status": "success",
                "data": { "resultType": "matrix", "result": result, "stats": stats_json(&stats) }
            }))
            .into_response())
        }
    }
}

async fn query(State(st): State<AppState>, p: Params) -> Result<Response, LokiError> {
    let expr = p.logql()?;
    let t = p.time("time")?.unwrap_or_else(now_ns);
    p.limit()?;
    p.direction()?;
    let Expr::Metric(m) = expr else {
        return Err(LokiError::bad(
            "log queries are not supported as an instant query type, please change your query to a range query type",
        ));
    };
    let grid = Grid { start: t, step: 0, n: 1 };
    let mut stats = Stats::new();
    let (kind, result) = match eval::metric_query(&st.query, &m, &grid, &mut stats).await? {
        Value::Scalar(x) => ("scalar", json!([ts_json(t), fmt_value(x)])),
        Value::Vector(series) => ("vector", vector_json(series, t)),
    };
    Ok(axum::Json(json!({
        "status": "success",
        "data": { "resultType": kind, "result": result, "stats": stats_json(&stats) }
    }))
    .into_response())
}

fn meta_range(p: &Params) -> Result<TimeRange, LokiError> {
    let (start, end) = p.range(DEFAULT_META_SINCE_NS)?;
    Ok(TimeRange { start_ns: start, end_ns: end.saturating_add(1) })
}

async fn label_names(State(st): State<AppState>, p: Params) -> Result<Response, LokiError> {
    let range = meta_range(&p)?;
    let sel = p.selector()?;
    Ok(success(json!(meta::label_names(&st.query, range, sel.as_deref()).await?)))
}

async fn label_values(State(st): State<AppState>, Path(name): Path<String>, p: Params) -> Result<Response, LokiError> {
    let range = meta_range(&p)?;
    let sel = p.selector()?;
    Ok(success(json!(meta::label_values(&st.query, range, &name, sel.as_deref()).await?)))
}

async fn series(State(st): State<AppState>, p: Params) -> Result<Response, LokiError> {
    let range = meta_range(&p)?;
    let mut sels = Vec::new();
    for m in p.all("match[]").into_iter().chain(p.all("match")) {
        sels.push(p.parse_selector(m)?);
    }
    if sels.len() > p.1.max_selectors {
        return Err(LokiError::bad(format!(
            "more than {} match[] selectors ([query] max_selectors)",
            p.1.max_selectors
        )));
    }
    if sels.is_empty() {
        return Err(LokiError::bad("missing match[] parameter: at least one stream selector is required"));
    }
    Ok(success(json!(meta::series(&st.query, range, &sels).await?)))
}

async fn index_stats(State(st): State<AppState>, p: Params) -> Result<Response, LokiError> {
    let range = meta_range(&p)?;
    let ms = p.parse_selector(p.query()?)?;
    let s = meta::index_stats(&st.query, range, &ms).await?;
    Ok(axum::Json(json!({ "streams": s.streams, "chunks": s.chunks, "entries": s.entries, "bytes": s.bytes }))
        .into_response())
}

/// Parameters shared by the two volume endpoints: (selector, group labels, limit).
fn volume_params(p: &Params) -> Result<(Vec<Matcher>, Vec<String>, usize), LokiError> {
    let ms = p.parse_selector(p.query()?)?;
    match p.get("aggregateBy") {
        None | Some("series") => {}
        Some(other) => {
            return Err(LokiError::bad(format!(
                "aggregateBy={other} is not supported: volume is aggregated by series only (see docs/logql.md)"
            )));
        }
    }
    let mut labels: Vec<String> = match p.get("targetLabels") {
        Some(t) => t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        None => ms.iter().map(|m| m.name.clone()).collect(),
    };
    let mut seen = std::collections::HashSet::new();
    labels.retain(|l| seen.insert(l.clone()));
    let limit = match p.get("limit") {
        Some(v) => {
            v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| LokiError::bad("invalid limit parameter"))?
        }
        None => 100,
    };
    Ok((ms, labels, limit))
}

fn top_series(mut series: Vec<Series>, limit: usize) -> Vec<Series> {
    let total = |s: &Series| s.values.iter().flatten().sum::<f64>();
    series.sort_by(|a, b| total(b).total_cmp(&total(a)).then_with(|| a.labels.cmp(&b.labels)));
    series.truncate(limit);
    series
}

async fn volume(State(st): State<AppState>, p: Params) -> Result<Response, LokiError> {
    let (start, end) = p.range(DEFAULT_QUERY_SINCE_NS)?;
    let (ms, labels, limit) = volume_params(&p)?;
    let grid = Grid { start: end, step: 0, n: 1 };
    let range = TimeRange { start_ns: start, end_ns: end.saturating_add(1) };
    let series = meta::volume(&st.query, range, &ms, &labels, &grid, (end - start).max(1)).await?;
    Ok(success(json!({ "resultType": "vector", "result": vector_json(top_series(series, limit), end) })))
}

async fn volume_range(State(st): State<AppState>, p: Params) -> Result<Response, LokiError> {
    let (start, end) = p.range(DEFAULT_QUERY_SINCE_NS)?;
    let (ms, labels, limit) = volume_params(&p)?;
    let step = p.step(start, end)?;
    let (s, e) = (start / step * step, end / step * step);
    let points = (e - s) / step + 1;
    p.check_points(points)?;
    let grid = Grid { start: s, step, n: points as usize };
    let range = TimeRange { start_ns: start, end_ns: end.saturating_add(1) };
    let series = meta::volume(&st.query, range, &ms, &labels, &grid, step).await?;
    Ok(success(
        json!({ "resultType": "matrix", "result": matrix_json(Value::Vector(top_series(series, limit)), &grid) }),
    ))
}

async fn detected_labels(State(st): State<AppState>, p: Params) -> Result<Response, LokiError> {
    let range = meta_range(&p)?;
    let ms = p.selector()?.unwrap_or_default();
    let found = meta::detected_labels(&st.query, range, &ms).await?;
    let list: Vec<Json> = found.into_iter().map(|(l, c)| json!({ "label": l, "cardinality": c })).collect();
    Ok(axum::Json(json!({ "detectedLabels": list })).into_response())
}

async fn detected_fields(State(st): State<AppState>, p: Params) -> Result<Response, LokiError> {
    let range = meta_range(&p)?;
    let log = match p.get("query") {
        Some(q) => match p.parse_logql(q)? {
            Expr::Log(l) => Some(l),
            Expr::Metric(_) => return Err(LokiError::bad("detected_fields needs a log query, not a metric query")),
        },
        None => None,
    };
    let limit = match p.get("limit") {
        Some(_) => p.limit()?,
        None => 1000,
    };
    let fields = meta::detected_fields(&st.query, range, log.as_ref(), limit).await?;
    let list: Vec<Json> = fields
        .into_iter()
        .map(|f| {
            let parsers = if f.parsers.is_empty() { Json::Null } else { json!(f.parsers) };
            json!({ "label": f.label, "type": f.kind, "cardinality": f.cardinality, "parsers": parsers })
        })
        .collect();
    Ok(axum::Json(json!({ "fields": list, "limit": limit })).into_response())
}

async fn format_query(p: Params) -> Result<Response, LokiError> {
    let expr = p.logql()?;
    Ok(success(json!(expr.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = |v: &str| parse_time("start", v);
        assert_eq!(t("1700000000").unwrap(), 1_700_000_000_000_000_000, "10 digits are seconds");
        assert_eq!(t("1700000000000000000").unwrap(), 1_700_000_000_000_000_000);
        assert_eq!(t("1700000000.25").unwrap(), 1_700_000_000_250_000_000);
        assert_eq!(t("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000_000_000);
        assert_eq!(t("2023-11-14T23:13:20.5+01:00").unwrap(), 1_700_000_000_500_000_000);
        assert_eq!(t("2024-02-29T00:00:00Z").unwrap(), 1_709_164_800_000_000_000);
        for bad in ["", "abc", "-5", "2023-02-30T00:00:00Z", "2023-11-14T22:13:20", "1e400", "1969-12-31T23:59:59Z"] {
            let e = t(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(e.msg.contains("invalid start parameter"), "{bad}: {}", e.msg);
        }
    }

    #[test]
    fn steps_and_durations() {
        assert_eq!(parse_seconds_or_duration("step", "15").unwrap(), 15_000_000_000);
        assert_eq!(parse_seconds_or_duration("step", "0.5").unwrap(), 500_000_000);
        assert_eq!(parse_seconds_or_duration("step", "1m30s").unwrap(), 90_000_000_000);
        for bad in ["0", "-1", "x", "NaN", "inf", "0s"] {
            assert!(parse_seconds_or_duration("step", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sample_formatting() {
        assert_eq!(fmt_value(2.0), "2");
        assert_eq!(fmt_value(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(fmt_value(f64::INFINITY), "+Inf");
        assert_eq!(fmt_value(f64::NAN), "NaN");
        assert_eq!(ts_json(1_700_000_000_000_000_000), json!(1_700_000_000u64));
        assert_eq!(ts_json(1_700_000_000_123_456_789).to_string(), "1700000000.123");
    }
}
