//! Jaeger-compatible HTTP API, as jaeger-query serves it: what jaeger-ui and Grafana's Jaeger
//! datasource call.
//!
//! # Endpoints
//! All `GET`, all answering Jaeger's envelope `{"data", "total", "limit", "offset", "errors"}`;
//! a failure carries `data: null` and `errors: [{"code", "msg"}]` with the same HTTP status.
//! - `/api/services`: service names.
//! - `/api/services/{service}/operations`: operation (span) names of a service.
//! - `/api/operations?service=&spanKind=`: `[{"name", "spanKind"}]`.
//! - `/api/traces?service=&operation=&tags=&tag=&minDuration=&maxDuration=&start=&end=&limit=&lookback=`:
//!   full traces with a span matching every condition (service, operation, tags and duration
//!   hold on the same span, as in Jaeger); or, with `traceID=` (repeatable), those traces.
//! - `/api/traces/{traceID}`: one trace (`data` is a one-element array, as in Jaeger).
//! - `/api/dependencies?endTs=&lookback=` (milliseconds): `[{"parent", "child", "callCount"}]`.
//!
//! # Mapping OTLP to Jaeger JSON
//! As the OpenTelemetry Collector's jaeger translator (`pkg/translator/jaeger`) followed by
//! jaeger-query's tag-sorting adjuster: parent -> `CHILD_OF` reference, links -> `FOLLOWS_FROM`
//! (`CHILD_OF` when the link says `opentracing.ref_type=child_of`), kind -> `span.kind`, status ->
//! `otel.status_code` + `error=true` + `otel.status_description`, scope -> `otel.scope.name` /
//! `otel.scope.version`, trace state -> `w3c.tracestate`, events -> logs whose first field
//! `event` is the event name, resource -> process (`service.name` as the service name, the other
//! attributes as tags), arrays and maps -> JSON strings, bytes -> base64 `binary`, integers beyond
//! JavaScript's safe range -> decimal strings (as jaeger-query does). The query service's
//! adjuster warnings go on the spans they name.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use obsbox_storage::{AttrScope, AttrValue, SpanPredicate, SpanRecord, TimeRange};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde::Serialize;

use crate::AppState;
use crate::limits::QueryLimits;
use crate::query::{QueryError, Trace, TraceSearch};

/// Traces per search when `limit` is absent or 0 (jaeger-ui's default).
const DEFAULT_LIMIT: usize = 20;
/// How far back a search looks when `start` is absent (jaeger-query's default: two days).
const DEFAULT_SEARCH_LOOKBACK_US: u64 = 2 * 24 * 3600 * 1_000_000;
/// How far back `/api/dependencies` looks when `lookback` is absent (jaeger-query's default).
const DEFAULT_DEPENDENCY_LOOKBACK_MS: u64 = 24 * 3600 * 1000;
/// Most tag conditions in one search.
const MAX_TAGS: usize = 64;
/// Longest tag condition (key plus value), in bytes.
const MAX_TAG_BYTES: usize = 4096;
/// Longest piece of user input quoted back in an error message.
const MAX_QUOTED: usize = 100;
/// Service name of spans whose resource has no attributes (the translator's).
const NO_SERVICE_NAME: &str = "OTLPResourceNoServiceName";
/// Integers beyond this are sent as strings, which JavaScript cannot lose precision on.
const JS_MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/services", get(services))
        .route("/api/services/{service}/operations", get(service_operations))
        .route("/api/operations", get(operations))
        .route("/api/traces", get(search))
        .route("/api/traces/{trace_id}", get(trace_by_id))
        .route("/api/dependencies", get(dependencies))
}

// ---------------------------------------------------------------------------------------------
// Envelope and errors

/// Jaeger's `structuredResponse`.
#[derive(Serialize)]
struct Envelope<T> {
    data: T,
    total: usize,
    limit: usize,
    offset: usize,
    errors: Option<Vec<ApiError>>,
}

/// Jaeger's `structuredError`.
#[derive(Serialize)]
struct ApiError {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    msg: String,
    #[serde(rename = "traceID", skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
}

fn envelope<T>(data: Vec<T>, errors: Vec<ApiError>) -> Envelope<Vec<T>> {
    Envelope { total: data.len(), data, limit: 0, offset: 0, errors: (!errors.is_empty()).then_some(errors) }
}

/// A failed request: the status and the message sent in the error envelope.
#[derive(Debug)]
struct JaegerError {
    status: StatusCode,
    msg: String,
}

impl JaegerError {
    fn bad_request(msg: impl Into<String>) -> Self {
        JaegerError { status: StatusCode::BAD_REQUEST, msg: msg.into() }
    }

    /// A parameter that does not parse, worded as jaeger-query words it.
    fn param(name: &str, err: impl std::fmt::Display) -> Self {
        Self::bad_request(format!("unable to parse param '{name}': {err}"))
    }

    fn internal(what: &str) -> Self {
        tracing::error!(what, "jaeger api failed");
        JaegerError { status: StatusCode::INTERNAL_SERVER_ERROR, msg: "internal error".into() }
    }
}

impl From<QueryError> for JaegerError {
    fn from(e: QueryError) -> Self {
        // `QueryError`'s message hides the internals of a 500.
        JaegerError { status: e.status(), msg: e.to_string() }
    }
}

impl IntoResponse for JaegerError {
    fn into_response(self) -> Response {
        let body = Envelope::<Option<()>> {
            data: None,
            total: 0,
            limit: 0,
            offset: 0,
            errors: Some(vec![ApiError { code: Some(self.status.as_u16()), msg: self.msg, trace_id: None }]),
        };
        (self.status, Json(body)).into_response()
    }
}

type ApiResult = Result<Response, JaegerError>;

/// Builds and serialises a response on the blocking pool: converting and encoding big traces is
/// CPU work that must not hold a runtime thread.
async fn json_blocking<T: Serialize>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult {
    let body = tokio::task::spawn_blocking(move || serde_json::to_vec(&f()))
        .await
        .map_err(|_| JaegerError::internal("response task failed"))?
        .map_err(|_| JaegerError::internal("response serialisation failed"))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `...` after the first [`MAX_QUOTED`] bytes of `s`, for error messages.
fn clip(s: &str) -> String {
    if s.len() <= MAX_QUOTED {
        return s.to_string();
    }
    let mut end = MAX_QUOTED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

// ---------------------------------------------------------------------------------------------
// Query parameters

/// The query string as ordered pairs (parameters such as `tag` and `traceID` repeat).
struct Params(Vec<(String, String)>);

impl Params {
    fn new(q: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<Self, JaegerError> {
        q.map(|Query(pairs)| Params(pairs))
            .map_err(|e| JaegerError::bad_request(format!("malformed query string: {}", e.body_text())))
    }

    /// The first value of `name`; `None` when absent or empty (as Go's `FormValue`).
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    /// Every non-empty value of `name`, in order.
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A non-negative integer parameter (a time in some unit since the epoch, or a duration).
fn parse_uint_param(p: &Params, name: &str) -> Result<Option<u64>, JaegerError> {
    let Some(v) = p.get(name) else { return Ok(None) };
    match v.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(Some(n as u64)),
        Ok(_) => Err(JaegerError::param(name, "must not be negative")),
        Err(_) => Err(JaegerError::param(name, format!("not an integer: {:?}", clip(v)))),
    }
}

/// Parses a Go duration (`time.ParseDuration`: "1.2s", "100ms", "1m30s", "500us" / "µs", "0")
/// into nanoseconds. With `days`, "d" (24h) and "w" (7d) are units too, as jaeger-ui's lookbacks
/// use them. Negative durations are refused.
pub(crate) fn parse_duration(s: &str, days: bool) -> Result<u64, String> {
    let invalid = || format!("invalid duration {:?}", clip(s));
    let overflow = || format!("duration {:?} is too long", clip(s));
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_digits = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_digits = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let n = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_digits = &after_dot[..n];
            rest = &after_dot[n..];
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let unit_ns: u128 = match unit {
            "" => return Err(format!("missing unit in duration {:?}", clip(s))),
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            "d" if days => 24 * 3600 * 1_000_000_000,
            "w" if days => 7 * 24 * 3600 * 1_000_000_000,
            _ => return Err(format!("unknown unit {:?} in duration {:?}", clip(unit), clip(s))),
        };
        let int_digits = int_digits.trim_start_matches('0');
        // 20 digits exceed every duration that fits; longer strings would overflow the parse.
        if int_digits.len() > 20 {
            return Err(overflow());
        }
        let int: u128 = if int_digits.is_empty() { 0 } else { int_digits.parse().map_err(|_| overflow())? };
        let mut ns = int.checked_mul(unit_ns).ok_or_else(overflow)?;
        // Digits past the 19th cannot change the result by a nanosecond.
        let frac_digits = &frac_digits[..frac_digits.len().min(19)];
        if !frac_digits.is_empty() {
            let frac: u128 = frac_digits.parse().map_err(|_| invalid())?;
            ns += frac * unit_ns / 10u128.pow(frac_digits.len() as u32);
        }
        total = total.checked_add(ns).filter(|t| *t <= i64::MAX as u128).ok_or_else(overflow)?;
    }
    if negative && total != 0 {
        return Err(format!("negative duration {:?}", clip(s)));
    }
    Ok(total as u64)
}

/// The tag conditions of a search: Jaeger's `tag=key:value` (repeatable) and `tags={"key":
/// "value"}` (a JSON object; numbers and booleans are taken as their text), plus `tags=key:value`
/// and `tags=key=value` as older clients send. A later condition on the same key replaces an
/// earlier one, as in jaeger-query.
pub(crate) fn parse_tags<'a>(
    simple: impl IntoIterator<Item = &'a str>,
    json: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, String>, String> {
    let mut tags = BTreeMap::new();
    for tag in simple {
        let (k, v) = tag
            .split_once(':')
            .ok_or_else(|| format!("malformed 'tag' parameter, expecting key:value, received: {:?}", clip(tag)))?;
        tags.insert(k.to_string(), v.to_string());
    }
    for param in json {
        if param.trim_start().starts_with('{') {
            let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(param)
                .map_err(|e| format!("malformed 'tags' parameter, cannot unmarshal JSON: {e}"))?;
            for (k, v) in map {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(format!(
                            "malformed 'tags' parameter: the value of {:?} must be a string, a number or a boolean",
                            clip(&k)
                        ));
                    }
                };
                tags.insert(k, v);
            }
        } else {
            let at = param.find([':', '=']).ok_or_else(|| {
                format!("malformed 'tags' parameter, expecting a JSON object or key:value, received: {:?}", clip(param))
            })?;
            tags.insert(param[..at].to_string(), param[at + 1..].to_string());
        }
    }
    if tags.len() > MAX_TAGS {
        return Err(format!("too many tags: {} (at most {MAX_TAGS})", tags.len()));
    }
    for (k, v) in &tags {
        if k.is_empty() {
            return Err("a tag key must not be empty".into());
        }
        if k.len() + v.len() > MAX_TAG_BYTES {
            return Err(format!("tag {:?} is too long (at most {MAX_TAG_BYTES} bytes)", clip(k)));
        }
    }
    Ok(tags)
}

/// `true` / `false` in any case.
fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// What one tag condition matches: the span's or its resource's attribute `key` equal to the
/// value as a string, or as the integer, float or boolean it parses as; the special tags Jaeger
/// shows for OTLP fields (`error`, `span.kind`, `otel.status_code`) also match those fields.
pub(crate) fn tag_predicate(key: &str, value: &str) -> SpanPredicate {
    let mut values = vec![AttrValue::Str(value.to_string())];
    if let Ok(i) = value.parse::<i64>() {
        values.push(AttrValue::Int(i));
    }
    if let Ok(f) = value.parse::<f64>()
        && f.is_finite()
    {
        values.push(AttrValue::Float(f));
    }
    if let Some(b) = parse_bool(value) {
        values.push(AttrValue::Bool(b));
    }
    let mut any: Vec<SpanPredicate> = [AttrScope::Item, AttrScope::Resource]
        .into_iter()
        .flat_map(|scope| {
            values.iter().map(move |v| SpanPredicate::Attribute { scope, key: key.to_string(), value: v.clone() })
        })
        .collect();
    match key {
        "error" if parse_bool(value) == Some(true) => any.push(SpanPredicate::StatusCode(2)),
        "span.kind" => any.extend(kind_from_name(value).map(SpanPredicate::Kind)),
        "otel.status_code" if value.eq_ignore_ascii_case("ok") => any.push(SpanPredicate::StatusCode(1)),
        "otel.status_code" if value.eq_ignore_ascii_case("error") => any.push(SpanPredicate::StatusCode(2)),
        _ => {}
    }
    SpanPredicate::Or(any)
}

/// Jaeger's (OpenTracing's) name of an OTLP span kind; `""` for unspecified.
fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "",
    }
}

fn kind_from_name(name: &str) -> Option<i32> {
    (1..=5).find(|&k| kind_name(k).eq_ignore_ascii_case(name))
}

/// Parses a Jaeger trace id: 1 to 32 hex digits, left-padded with zeros to 16 bytes.
pub(crate) fn parse_trace_id(s: &str) -> Result<Vec<u8>, String> {
    if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("trace id must be 1 to 32 hex digits, got {:?}", clip(s)));
    }
    hex::decode(format!("{s:0>32}")).map_err(|e| format!("trace id {s:?}: {e}"))
}

/// A parsed `/api/traces` request: a search, or the traces named by `traceID`.
#[derive(Debug)]
struct SearchRequest {
    trace_ids: Vec<Vec<u8>>,
    search: TraceSearch,
}

fn parse_search(p: &Params, now_us: u64, limits: &QueryLimits) -> Result<SearchRequest, JaegerError> {
    let max_traces = limits.max_traces;
    let trace_ids = p
        .all("traceID")
        .map(|id| parse_trace_id(id).map_err(|e| JaegerError::bad_request(format!("cannot parse traceID param: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if trace_ids.len() > max_traces {
        return Err(JaegerError::bad_request(format!("at most {max_traces} traceID params ([query] max_traces)")));
    }

    let mut all = Vec::new();
    if let Some(service) = p.get("service") {
        all.push(SpanPredicate::Service(service.to_string()));
    }
    if let Some(operation) = p.get("operation") {
        all.push(SpanPredicate::Name(operation.to_string()));
    }
    let tags = parse_tags(p.all("tag"), p.all("tags")).map_err(JaegerError::bad_request)?;
    all.extend(tags.iter().map(|(k, v)| tag_predicate(k, v)));

    // As in jaeger-query, a zero duration means no bound.
    let duration = |name: &str| -> Result<Option<u64>, JaegerError> {
        p.get(name)
            .map(|v| parse_duration(v, false).map_err(|e| JaegerError::param(name, e)))
            .transpose()
            .map(|d| d.filter(|&d| d > 0))
    };
    let (min, max) = (duration("minDuration")?, duration("maxDuration")?);
    if let (Some(min), Some(max)) = (min, max)
        && max < min
    {
        return Err(JaegerError::bad_request("'maxDuration' should be greater than 'minDuration'"));
    }
    if min.is_some() || max.is_some() {
        all.push(SpanPredicate::Duration { min: min.unwrap_or(0), max: max.unwrap_or(u64::MAX) });
    }

    let limit = match p.get("limit") {
        None => DEFAULT_LIMIT.min(max_traces),
        Some(v) => match v.parse::<i64>() {
            Err(_) => return Err(JaegerError::param("limit", format!("not an integer: {:?}", clip(v)))),
            Ok(n) if n < 0 => return Err(JaegerError::param("limit", "must not be negative")),
            Ok(0) => DEFAULT_LIMIT.min(max_traces),
            Ok(n) if n as u64 > max_traces as u64 => {
                return Err(JaegerError::param(
                    "limit",
                    format!("at most {max_traces} traces per search ([query] max_traces), got {n}"),
                ));
            }
            Ok(n) => n as usize,
        },
    };

    let end_us = parse_uint_param(p, "end")?.unwrap_or(now_us);
    let start_us = match parse_uint_param(p, "start")? {
        Some(start) => start,
        None => {
            let lookback_us = match p.get("lookback") {
                // The default window shrinks to fit `[query] max_time_range`; an explicit one
                // does not.
                None | Some("custom") => {
                    // (less one microsecond: `end` is inclusive)
                    let fit = limits.default_window_ns(DEFAULT_SEARCH_LOOKBACK_US.saturating_mul(1000)) / 1000;
                    if fit < DEFAULT_SEARCH_LOOKBACK_US { fit.saturating_sub(1) } else { fit }
                }
                Some(l) => parse_duration(l, true).map_err(|e| JaegerError::param("lookback", e))? / 1000,
            };
            end_us.saturating_sub(lookback_us)
        }
    };
    if end_us < start_us {
        return Err(JaegerError::bad_request(format!("'end' ({end_us}) is before 'start' ({start_us})")));
    }
    // `end` is inclusive to the microsecond; the store's range is half-open in nanoseconds.
    let time =
        TimeRange { start_ns: start_us.saturating_mul(1000), end_ns: end_us.saturating_add(1).saturating_mul(1000) };
    limits.check_range(time).map_err(JaegerError::bad_request)?;

    let span = match all.len() {
        0 => SpanPredicate::All,
        1 => all.remove(0),
        _ => SpanPredicate::And(all),
    };
    Ok(SearchRequest {
        trace_ids,
        search: TraceSearch {
            span,
            time,
            root_service: None,
            root_operation: None,
            min_trace_duration_ns: None,
            max_trace_duration_ns: None,
            limit,
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn services(State(state): State<AppState>) -> ApiResult {
    let mut services = state.query.services(TimeRange::ALL).await?;
    // Spans without a service name cannot be searched by service: no empty entry in the list.
    services.retain(|s| !s.is_empty());
    Ok(Json(envelope(services, Vec::new())).into_response())
}

async fn service_operations(State(state): State<AppState>, service: Result<Path<String>, PathRejection>) -> ApiResult {
    let Path(service) = service.map_err(|e| JaegerError::bad_request(e.body_text()))?;
    let ops = state.query.operations(Some(&service), None, TimeRange::ALL).await?;
    let mut names: Vec<String> = ops.into_iter().map(|o| o.name).collect();
    names.sort();
    names.dedup();
    Ok(Json(envelope(names, Vec::new())).into_response())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JOperation {
    name: String,
    span_kind: &'static str,
}

async fn operations(
    State(state): State<AppState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let p = Params::new(q)?;
    let service = p.get("service").ok_or_else(|| JaegerError::bad_request("parameter 'service' is required"))?;
    let kind = p
        .get("spanKind")
        .map(|k| {
            kind_from_name(k).ok_or_else(|| JaegerError::param("spanKind", format!("unknown span kind {:?}", clip(k))))
        })
        .transpose()?;
    let ops = state.query.operations(Some(service), kind, TimeRange::ALL).await?;
    let data: Vec<JOperation> =
        ops.into_iter().map(|o| JOperation { span_kind: kind_name(o.kind), name: o.name }).collect();
    Ok(Json(envelope(data, Vec::new())).into_response())
}

async fn search(State(state): State<AppState>, q: Result<Query<Vec<(String, String)>>, QueryRejection>) -> ApiResult {
    let p = Params::new(q)?;
    let req = parse_search(&p, now_us(), state.query.limits())?;
    let mut traces = Vec::new();
    let mut errors = Vec::new();
    if req.trace_ids.is_empty() {
        traces = state.query.search_traces(&req.search).await?;
    } else {
        for id in &req.trace_ids {
            match state.query.trace(id).await? {
                Some(t) => traces.push(t),
                None => {
                    errors.push(ApiError { code: None, msg: "trace not found".into(), trace_id: Some(hex::encode(id)) })
                }
            }
        }
    }
    json_blocking(move || envelope(traces.iter().map(to_jaeger).collect(), errors)).await
}

async fn trace_by_id(State(state): State<AppState>, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let Path(id) = id.map_err(|e| JaegerError::bad_request(e.body_text()))?;
    let id = parse_trace_id(&id).map_err(JaegerError::bad_request)?;
    let trace = state
        .query
        .trace(&id)
        .await?
        .ok_or(JaegerError { status: StatusCode::NOT_FOUND, msg: "trace not found".into() })?;
    json_blocking(move || envelope(vec![to_jaeger(&trace)], Vec::new())).await
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JDependency {
    parent: String,
    child: String,
    call_count: u64,
}

async fn dependencies(
    State(state): State<AppState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult {
    let p = Params::new(q)?;
    let end_ms = parse_uint_param(&p, "endTs")?.unwrap_or(now_us() / 1000);
    let lookback_ms = parse_uint_param(&p, "lookback")?.unwrap_or(DEFAULT_DEPENDENCY_LOOKBACK_MS);
    let time = TimeRange {
        start_ns: end_ms.saturating_sub(lookback_ms).saturating_mul(1_000_000),
        end_ns: end_ms.saturating_mul(1_000_000),
    };
    let deps = state.query.dependencies(time).await?;
    let data: Vec<JDependency> =
        deps.into_iter().map(|d| JDependency { parent: d.parent, child: d.child, call_count: d.call_count }).collect();
    Ok(Json(envelope(data, Vec::new())).into_response())
}

// ---------------------------------------------------------------------------------------------
// OTLP -> Jaeger JSON (jaeger `model/json`, as jaeger-query's `uimodel`)

#[derive(Serialize)]
struct JTrace {
    #[serde(rename = "traceID")]
    trace_id: String,
    spans: Vec<JSpan>,
    processes: BTreeMap<String, JProcess>,
    warnings: Option<Vec<String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JSpan {
    #[serde(rename = "traceID")]
    trace_id: String,
    #[serde(rename = "spanID")]
    span_id: String,
    #[serde(skip_serializing_if = "is_zero")]
    flags: u32,
    operation_name: String,
    references: Vec<JReference>,
    start_time: u64,
    duration: u64,
    tags: Vec<JTag>,
    logs: Vec<JLog>,
    #[serde(rename = "processID")]
    process_id: String,
    warnings: Option<Vec<String>>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JReference {
    ref_type: &'static str,
    #[serde(rename = "traceID")]
    trace_id: String,
    #[serde(rename = "spanID")]
    span_id: String,
}

#[derive(Serialize, Clone, PartialEq)]
struct JTag {
    key: String,
    #[serde(rename = "type")]
    kind: &'static str,
    value: serde_json::Value,
}

#[derive(Serialize)]
struct JLog {
    timestamp: u64,
    fields: Vec<JTag>,
}

#[derive(Serialize, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
struct JProcess {
    service_name: String,
    tags: Vec<JTag>,
}

const CHILD_OF: &str = "CHILD_OF";
const FOLLOWS_FROM: &str = "FOLLOWS_FROM";

/// Lower-case hex of an id, left-padded with zeros to `width` digits.
fn id_hex(id: &[u8], width: usize) -> String {
    format!("{:0>width$}", hex::encode(id))
}

/// One trace as jaeger-query's JSON (the element of `data`), for downloads from the native API.
pub(crate) fn trace_document(trace: &Trace) -> serde_json::Value {
    serde_json::to_value(to_jaeger(trace)).unwrap_or(serde_json::Value::Null)
}

fn to_jaeger(trace: &Trace) -> JTrace {
    let trace_id = id_hex(&trace.trace_id, 32);
    let mut warnings: HashMap<&[u8], Vec<String>> = HashMap::new();
    for w in &trace.warnings {
        warnings.entry(w.span_id.as_slice()).or_default().push(w.message.clone());
    }
    // Processes are numbered p1, p2, ... in order of first use; equal ones are shared, as in
    // jaeger-query. Spans of one resource share it (`Arc`), so each resource converts once.
    let mut processes: Vec<JProcess> = Vec::new();
    let mut by_resource: HashMap<*const Resource, usize> = HashMap::new();
    let mut spans = Vec::with_capacity(trace.spans.len());
    for s in &trace.spans {
        let index = *by_resource.entry(Arc::as_ptr(&s.resource)).or_insert_with(|| {
            let p = process(&s.resource);
            processes.iter().position(|q| *q == p).unwrap_or_else(|| {
                processes.push(p);
                processes.len() - 1
            })
        });
        let span_warnings = warnings.remove(s.span.span_id.as_slice());
        spans.push(span(s, &trace_id, format!("p{}", index + 1), span_warnings));
    }
    // Warnings about spans no longer in the trace stay visible at the trace level.
    let leftover: Vec<String> = warnings.into_values().flatten().collect();
    JTrace {
        trace_id,
        spans,
        processes: processes.into_iter().enumerate().map(|(i, p)| (format!("p{}", i + 1), p)).collect(),
        warnings: (!leftover.is_empty()).then_some(leftover),
    }
}

fn process(resource: &Resource) -> JProcess {
    if resource.attributes.is_empty() {
        return JProcess { service_name: NO_SERVICE_NAME.into(), tags: Vec::new() };
    }
    let service_name = obsbox_storage::service_name(Some(resource)).to_string();
    let mut tags: Vec<JTag> = resource.attributes.iter().filter(|kv| kv.key != "service.name").map(tag).collect();
    sort_tags(&mut tags);
    JProcess { service_name, tags }
}

fn span(s: &SpanRecord, trace_id: &str, process_id: String, warnings: Option<Vec<String>>) -> JSpan {
    let sp = &s.span;
    let mut references = Vec::with_capacity(sp.links.len() + 1);
    let parent = sp.parent_span_id.iter().any(|b| *b != 0).then(|| id_hex(&sp.parent_span_id, 16));
    if let Some(parent) = &parent {
        references.push(JReference { ref_type: CHILD_OF, trace_id: trace_id.to_string(), span_id: parent.clone() });
    }
    for link in &sp.links {
        let child_of = link.attributes.iter().any(|kv| {
            kv.key == "opentracing.ref_type"
                && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()), Some(Value::StringValue(t)) if t == "child_of")
        });
        let ref_type = if child_of { CHILD_OF } else { FOLLOWS_FROM };
        let (link_trace, link_span) = (id_hex(&link.trace_id, 32), id_hex(&link.span_id, 16));
        // A link to the parent only changes the parent reference's type (as the translator does).
        if parent.as_deref() == Some(link_span.as_str()) && link_trace == trace_id {
            references[0].ref_type = ref_type;
            continue;
        }
        references.push(JReference { ref_type, trace_id: link_trace, span_id: link_span });
    }

    let mut tags = Vec::with_capacity(sp.attributes.len() + 6);
    if !s.scope.name.is_empty() {
        tags.push(str_tag("otel.scope.name", &s.scope.name));
    }
    if !s.scope.version.is_empty() {
        tags.push(str_tag("otel.scope.version", &s.scope.version));
    }
    tags.extend(sp.attributes.iter().map(tag));
    if !kind_name(sp.kind).is_empty() {
        tags.push(str_tag("span.kind", kind_name(sp.kind)));
    }
    let status = sp.status.clone().unwrap_or_default();
    match status.code {
        1 => tags.push(str_tag("otel.status_code", "OK")),
        2 => {
            tags.push(str_tag("otel.status_code", "ERROR"));
            tags.push(JTag { key: "error".into(), kind: "bool", value: true.into() });
        }
        _ => {}
    }
    if !status.message.is_empty() {
        tags.push(str_tag("otel.status_description", &status.message));
    }
    if !sp.trace_state.is_empty() {
        tags.push(str_tag("w3c.tracestate", &sp.trace_state));
    }
    sort_tags(&mut tags);

    let logs = sp
        .events
        .iter()
        .map(|e| {
            let mut fields = Vec::with_capacity(e.attributes.len() + 1);
            if !e.name.is_empty() && !e.attributes.iter().any(|kv| kv.key == "event") {
                fields.push(str_tag("event", &e.name));
            }
            fields.extend(e.attributes.iter().map(tag));
            sort_log_fields(&mut fields);
            JLog { timestamp: e.time_unix_nano / 1000, fields }
        })
        .collect();

    JSpan {
        trace_id: trace_id.to_string(),
        span_id: id_hex(&sp.span_id, 16),
        // The W3C trace flags (bit 0: sampled, as Jaeger's flag 1).
        flags: sp.flags & 0xff,
        operation_name: sp.name.clone(),
        references,
        start_time: sp.start_time_unix_nano / 1000,
        duration: sp.end_time_unix_nano.saturating_sub(sp.start_time_unix_nano) / 1000,
        tags,
        logs,
        process_id,
        warnings,
    }
}

/// jaeger-query's `SortTagsAndLogFields` adjuster: tags by key (stable).
fn sort_tags(tags: &mut [JTag]) {
    tags.sort_by(|a, b| a.key.cmp(&b.key));
}

/// jaeger-query's `SortTagsAndLogFields` adjuster for log fields: a string `event` field first,
/// the others by key.
fn sort_log_fields(fields: &mut [JTag]) {
    let mut offset = 0;
    if let Some(i) = fields.iter().position(|f| f.key == "event" && f.kind == "string") {
        fields.swap(0, i);
        offset = 1;
    }
    sort_tags(&mut fields[offset..]);
}

fn str_tag(key: &str, value: &str) -> JTag {
    JTag { key: key.into(), kind: "string", value: value.into() }
}

/// A typed Jaeger tag from an OTLP attribute.
fn tag(kv: &KeyValue) -> JTag {
    let key = kv.key.clone();
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        None | Some(Value::StringValueStrindex(_)) => JTag { key, kind: "string", value: "".into() },
        Some(Value::StringValue(s)) => JTag { key, kind: "string", value: s.as_str().into() },
        Some(Value::BoolValue(b)) => JTag { key, kind: "bool", value: (*b).into() },
        Some(Value::IntValue(i)) => {
            let value = if (-JS_MAX_SAFE_INTEGER..=JS_MAX_SAFE_INTEGER).contains(i) {
                (*i).into()
            } else {
                i.to_string().into()
            };
            JTag { key, kind: "int64", value }
        }
        Some(Value::DoubleValue(f)) => JTag { key, kind: "float64", value: float_json(*f) },
        Some(Value::BytesValue(b)) => JTag { key, kind: "binary", value: base64(b).into() },
        Some(v @ (Value::ArrayValue(_) | Value::KvlistValue(_))) => {
            JTag { key, kind: "string", value: raw_json(Some(v)).to_string().into() }
        }
    }
}

/// A float as a JSON number; NaN and the infinities (which JSON lacks) as Go spells them.
fn float_json(f: f64) -> serde_json::Value {
    match serde_json::Number::from_f64(f) {
        Some(n) => serde_json::Value::Number(n),
        None if f.is_nan() => "NaN".into(),
        None if f > 0.0 => "+Inf".into(),
        None => "-Inf".into(),
    }
}

/// An attribute value as plain JSON, as the translator renders arrays and maps (pdata's
/// `AsString`): map keys sorted (the last of duplicate keys wins), bytes as base64, empty as null.
fn raw_json(v: Option<&Value>) -> serde_json::Value {
    match v {
        None | Some(Value::StringValueStrindex(_)) => serde_json::Value::Null,
        Some(Value::StringValue(s)) => s.as_str().into(),
        Some(Value::BoolValue(b)) => (*b).into(),
        Some(Value::IntValue(i)) => (*i).into(),
        Some(Value::DoubleValue(f)) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into),
        Some(Value::BytesValue(b)) => base64(b).into(),
        Some(Value::ArrayValue(a)) => a.values.iter().map(|e| raw_json(e.value.as_ref())).collect(),
        Some(Value::KvlistValue(l)) => {
            let map: BTreeMap<&str, Option<&AnyValue>> =
                l.values.iter().map(|kv| (kv.key.as_str(), kv.value.as_ref())).collect();
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                out.insert(k.to_string(), raw_json(v.and_then(|v| v.value.as_ref())));
            }
            serde_json::Value::Object(out)
        }
    }
}

/// Standard base64 with padding (what Go's `encoding/json` makes of `[]byte`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| ALPHABET[((n >> shift) & 63) as usize] as char;
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn go_durations() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("-0", 0),
            ("+5s", 5 * S),
            ("1.2s", 1_200_000_000),
            ("100ms", 100_000_000),
            ("1m30s", 90 * S),
            ("500us", 500_000),
            ("500\u{b5}s", 500_000),
            ("500\u{3bc}s", 500_000),
            ("7ns", 7),
            (".5h", 1800 * S),
            ("1.s", S),
            ("2h45m0.5s", (2 * 3600 + 45 * 60) * S + S / 2),
            ("1.0000000000000000000000001s", S),
            ("0000000000000000000000000000001s", S),
            ("1.9999999999ns", 1),
        ];
        for (s, want) in cases {
            assert_eq!(parse_duration(s, false), Ok(*want), "{s}");
        }
        for bad in ["", "1", "10", "s", ".s", ".", "1x", "1 s", "-1s", "1s-", "1d", "9999999999h", "1e3s", "--1s"] {
            assert!(parse_duration(bad, false).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(parse_duration("2d", true), Ok(48 * 3600 * S));
        assert_eq!(parse_duration("1w", true), Ok(7 * 24 * 3600 * S));
        assert_eq!(parse_duration(&format!("{}ns", i64::MAX), false), Ok(i64::MAX as u64));
        assert!(parse_duration(&format!("{}ns", i64::MAX as u64 + 1), false).is_err());
    }

    #[test]
    fn tags_in_every_form() {
        let t = parse_tags(["http.url:http://x:80/a"], [r#"{"a":"1","b":2,"c":true}"#, "d:4", "e=5", " {}"]).unwrap();
        let want: BTreeMap<String, String> =
            [("http.url", "http://x:80/a"), ("a", "1"), ("b", "2"), ("c", "true"), ("d", "4"), ("e", "5")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(t, want);
        // A later condition on a key wins.
        assert_eq!(parse_tags(["a:1"], [r#"{"a":"2"}"#]).unwrap()["a"], "2");
        for bad in [r#"{"a":"#, r#"{"a":null}"#, r#"{"a":[1]}"#, r#"{"":"x"}"#, "novalue", "[1]", "null"] {
            assert!(parse_tags([], [bad]).is_err(), "{bad}");
        }
        assert!(parse_tags(["novalue"], []).is_err());
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("k{i}:v")).collect();
        assert!(parse_tags(many.iter().map(String::as_str), []).is_err());
        let long = format!("k:{}", "v".repeat(MAX_TAG_BYTES));
        assert!(parse_tags([long.as_str()], []).is_err());
    }

    #[test]
    fn tag_predicates_are_typed_and_know_the_special_tags() {
        let SpanPredicate::Or(any) = tag_predicate("http.status_code", "200") else { panic!() };
        // Str, Int, Float on span and resource attributes.
        assert_eq!(any.len(), 6);
        assert!(any.contains(&SpanPredicate::Attribute {
            scope: AttrScope::Resource,
            key: "http.status_code".into(),
            value: AttrValue::Int(200),
        }));
        let SpanPredicate::Or(any) = tag_predicate("error", "true") else { panic!() };
        assert!(any.contains(&SpanPredicate::StatusCode(2)));
        let SpanPredicate::Or(any) = tag_predicate("span.kind", "consumer") else { panic!() };
        assert!(any.contains(&SpanPredicate::Kind(5)));
        let SpanPredicate::Or(any) = tag_predicate("x", "NaN") else { panic!() };
        assert_eq!(any.len(), 2, "no float candidate for NaN");
    }

    #[test]
    fn trace_ids_are_padded() {
        assert_eq!(parse_trace_id("1").unwrap(), [vec![0; 15], vec![1]].concat());
        assert_eq!(parse_trace_id("ABCDEF0123456789abcdef0123456789").unwrap()[0], 0xab);
        for bad in ["", "g", "0x12", &"1".repeat(33), " 1"] {
            assert!(parse_trace_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn base64_matches_the_standard_alphabet() {
        for (raw, enc) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
        assert_eq!(base64(&[0, 0, 0x30, 0x39]), "AAAwOQ==");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn log_fields_put_event_first() {
        let mut f = vec![str_tag("b", "1"), str_tag("event", "x"), str_tag("a", "2")];
        sort_log_fields(&mut f);
        let keys: Vec<&str> = f.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, ["event", "a", "b"]);
    }

    #[test]
    fn a_link_to_the_parent_sets_the_parent_reference_type() {
        use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
        use opentelemetry_proto::tonic::trace::v1::span::Link;

        let rec = SpanRecord {
            resource: Arc::new(Resource::default()),
            resource_schema_url: String::new(),
            scope: Arc::new(InstrumentationScope::default()),
            scope_schema_url: String::new(),
            span: opentelemetry_proto::tonic::trace::v1::Span {
                trace_id: vec![7; 16],
                span_id: vec![2; 8],
                parent_span_id: vec![1; 8],
                links: vec![Link { trace_id: vec![7; 16], span_id: vec![1; 8], ..Default::default() }],
                ..Default::default()
            },
        };
        let trace_id = id_hex(&rec.span.trace_id, 32);
        let refs = span(&rec, &trace_id, "p1".into(), None).references;
        assert_eq!(refs.len(), 1);
        assert_eq!((refs[0].ref_type, refs[0].span_id.as_str()), (FOLLOWS_FROM, "0101010101010101"));
        // A zero parent id is no parent.
        let mut root = rec.clone();
        root.span.parent_span_id = vec![0; 8];
        root.span.links.clear();
        assert!(span(&root, &trace_id, "p1".into(), None).references.is_empty());
    }

    #[test]
    fn odd_values() {
        assert_eq!(float_json(f64::NAN), serde_json::json!("NaN"));
        assert_eq!(float_json(f64::NEG_INFINITY), serde_json::json!("-Inf"));
        let big = tag(&KeyValue {
            key: "k".into(),
            value: Some(AnyValue { value: Some(Value::IntValue(-JS_MAX_SAFE_INTEGER - 1)) }),
            ..Default::default()
        });
        assert_eq!(big.value, serde_json::json!("-9007199254740992"));
        assert_eq!(id_hex(&[1, 2], 16), "0000000000000102");
    }

    proptest! {
        #[test]
        fn duration_parser_never_panics(s in any::<String>(), days in any::<bool>()) {
            let _ = parse_duration(&s, days);
        }

        #[test]
        fn duration_parser_never_panics_on_duration_like_input(s in "[-+]?([0-9]{0,25}(\\.[0-9]{0,25})?(ns|us|µs|μs|ms|s|m|h|d|w|x)?){1,4}") {
            let _ = parse_duration(&s, true);
        }

        #[test]
        fn durations_round_trip(n in 0u64..1_000_000_000, unit in 0usize..6) {
            let (suffix, scale) = [("ns", 1), ("us", 1_000), ("ms", 1_000_000), ("s", S), ("m", 60 * S), ("h", 3600 * S)][unit];
            let want = n.checked_mul(scale).filter(|v| *v <= i64::MAX as u64);
            prop_assert_eq!(parse_duration(&format!("{n}{suffix}"), false).ok(), want);
        }

        #[test]
        fn tag_parser_never_panics(simple in proptest::collection::vec(any::<String>(), 0..4),
                                   json in proptest::collection::vec(any::<String>(), 0..4)) {
            let _ = parse_tags(simple.iter().map(String::as_str), json.iter().map(String::as_str));
        }

        #[test]
        fn tag_parser_never_panics_on_json_like_input(s in r#"\{("[a-z:=]{0,3}":("[a-z0-9.]{0,4}"|-?[0-9.e]{1,5}|true|null|\[\]|\{\}),?){0,4}\}?"#) {
            if let Ok(tags) = parse_tags([], [s.as_str()]) {
                for (k, v) in tags {
                    let _ = tag_predicate(&k, &v);
                }
            }
        }

        #[test]
        fn trace_id_parser_never_panics(s in any::<String>()) {
            if let Ok(id) = parse_trace_id(&s) {
                prop_assert_eq!(id.len(), 16);
            }
        }
    }
}
