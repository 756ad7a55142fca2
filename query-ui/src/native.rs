//! The native JSON API under `/api/v1`, described by the OpenAPI document at
//! `/api/v1/openapi.json` (generated from these handlers with utoipa).
//!
//! Spans, resources and log records are returned in their OTLP/JSON form (hex ids, 64-bit
//! integers as strings), so nothing is lost and clients can reuse OTLP tooling.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use obsbox_storage::{AttrScope, AttrValue, LogEntry, LogPredicate, LogQuery, Signal, SpanPredicate, TimeRange};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::AppState;
use crate::filters::{now_ns, parse_duration, parse_filter_with, parse_log_query_with, time_range};
use crate::limits::QueryLimits;
use crate::query::{Dependency, QueryError, Trace, TraceSearch, TraceSummary};

/// Most records at one timestamp a cursor may skip (a page boundary inside more records at the
/// same nanosecond than this is not one this API returned).
pub(crate) const MAX_CURSOR_SKIP: usize = 100_000;

fn bad(e: String) -> QueryError {
    QueryError::BadRequest(e)
}

/// Query parameters of a native endpoint: a malformed query string is a 400 with the native
/// error body rather than axum's plain-text rejection.
pub(crate) struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = QueryError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, QueryError> {
        Query::<T>::try_from_uri(&parts.uri).map(|Query(t)| ApiQuery(t)).map_err(|e| bad(e.body_text()))
    }
}

/// Path parameters of a native endpoint; a malformed path is a 400 with the native error body.
pub(crate) struct ApiPath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = QueryError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, QueryError> {
        Path::<T>::from_request_parts(parts, state).await.map(|Path(t)| ApiPath(t)).map_err(|e| bad(e.body_text()))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "obsbox native API", description = "Trace and log search, correlation and autocomplete."),
    paths(
        services,
        operations,
        search_traces,
        get_trace,
        trace_logs,
        attribute_keys,
        attribute_values,
        search_logs,
        log_histogram,
        tail_logs,
        dependencies,
        list_slos,
        get_slo,
        list_alerts
    ),
    components(schemas(
        ServicesResponse,
        OperationsResponse,
        OperationJson,
        TracesResponse,
        TraceSummaryJson,
        TraceJson,
        SpanJson,
        KeysResponse,
        ValuesResponse,
        ValueCount,
        LogsResponse,
        LogJson,
        HistogramResponse,
        Bucket,
        DependenciesResponse,
        DependencyJson,
        ErrorJson
    ))
)]
struct ApiDoc;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{service}/operations", get(operations))
        .route("/api/v1/traces", get(search_traces))
        .route("/api/v1/traces/{trace_id}", get(get_trace))
        .route("/api/v1/slos", get(list_slos))
        .route("/api/v1/slos/{name}", get(get_slo))
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/traces/{trace_id}/logs", get(trace_logs))
        .route("/api/v1/attributes", get(attribute_keys))
        .route("/api/v1/attributes/{key}/values", get(attribute_values))
        .route("/api/v1/logs", get(search_logs))
        .route("/api/v1/logs/histogram", get(log_histogram))
        .route("/api/v1/logs/tail", get(tail_logs))
        .route("/api/v1/dependencies", get(dependencies))
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Error body of every endpoint.
#[derive(Serialize, ToSchema)]
struct ErrorJson {
    /// What was wrong.
    error: String,
}

/// A time window: `start`/`end` as Unix nanoseconds or RFC 3339; without `start`, `lookback`
/// (e.g. `15m`, default 1h) before `end` (default now).
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
struct Window {
    #[param(
        pattern = r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    start: Option<String>,
    #[param(
        pattern = r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    end: Option<String>,
    #[param(pattern = r"^([0-9]{1,18}|[0-9]{1,6}(\.[0-9]{1,6})?s|([0-9]{1,6}(ns|us|ms|s|m|h|d)){1,4})$")]
    lookback: Option<String>,
}

impl Window {
    fn range(&self, limits: &QueryLimits) -> Result<TimeRange, QueryError> {
        let r = time_range(self.start.as_deref(), self.end.as_deref(), self.lookback.as_deref()).map_err(bad)?;
        limits.check_range(r).map_err(bad)?;
        Ok(r)
    }
}

#[derive(Serialize, ToSchema)]
struct ServicesResponse {
    services: Vec<String>,
}

/// Services with spans in the window.
#[utoipa::path(get, path = "/api/v1/services", params(Window), responses((status = 200, body = ServicesResponse), (status = 400, body = ErrorJson), (status = 503, body = ErrorJson, description = "the store is busy or the query ran past `[query] timeout`: retry later")))]
async fn services(
    State(s): State<AppState>,
    ApiQuery(w): ApiQuery<Window>,
) -> Result<Json<ServicesResponse>, QueryError> {
    Ok(Json(ServicesResponse { services: s.query.services(w.range(s.query.limits())?).await? }))
}

#[derive(Serialize, ToSchema)]
struct OperationJson {
    name: String,
    /// `server`, `client`, `producer`, `consumer`, `internal` or `unspecified`.
    kind: String,
}

#[derive(Serialize, ToSchema)]
struct OperationsResponse {
    operations: Vec<OperationJson>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct OperationParams {
    /// Only this span kind.
    #[param(pattern = "^(server|client|producer|consumer|internal|unspecified)$")]
    kind: Option<String>,
    #[param(
        pattern = r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    start: Option<String>,
    #[param(
        pattern = r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    end: Option<String>,
    #[param(pattern = r"^([0-9]{1,18}|[0-9]{1,6}(\.[0-9]{1,6})?s|([0-9]{1,6}(ns|us|ms|s|m|h|d)){1,4})$")]
    lookback: Option<String>,
}

/// Kind names as in the OpenTelemetry specification, lower case.
pub(crate) fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn parse_kind(k: &str) -> Result<i32, QueryError> {
    Ok(match k.to_ascii_lowercase().trim_start_matches("span_kind_") {
        "unspecified" => 0,
        "internal" => 1,
        "server" => 2,
        "client" => 3,
        "producer" => 4,
        "consumer" => 5,
        other => {
            return Err(bad(format!("kind: {other:?} is not one of server, client, producer, consumer, internal")));
        }
    })
}

/// Operations (span names with their kind) of one service.
#[utoipa::path(get, path = "/api/v1/services/{service}/operations", params(("service" = String, Path), OperationParams), responses((status = 200, body = OperationsResponse), (status = 400, body = ErrorJson), (status = 503, body = ErrorJson, description = "the store is busy or the query ran past `[query] timeout`: retry later")))]
async fn operations(
    State(s): State<AppState>,
    ApiPath(service): ApiPath<String>,
    ApiQuery(p): ApiQuery<OperationParams>,
) -> Result<Json<OperationsResponse>, QueryError> {
    let time = time_range(p.start.as_deref(), p.end.as_deref(), p.lookback.as_deref()).map_err(bad)?;
    s.query.limits().check_range(time).map_err(bad)?;
    let kind = p.kind.as_deref().map(parse_kind).transpose()?;
    let ops = s.query.operations(Some(&service), kind, time).await?;
    Ok(Json(OperationsResponse {
        operations: ops.into_iter().map(|o| OperationJson { name: o.name, kind: kind_name(o.kind).into() }).collect(),
    }))
}

/// Trace search. Span conditions (`service`, `operation`, `kind`, `status`, `minDuration`,
/// `maxDuration`, `filter`) must hold on one span of the trace; `root*` and `*TraceDuration`
/// are trace-level.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TraceParams {
    pub(crate) service: Option<String>,
    /// Span name.
    pub(crate) operation: Option<String>,
    /// Span kind: server, client, producer, consumer, internal.
    #[param(pattern = "^(server|client|producer|consumer|internal|unspecified)$")]
    pub(crate) kind: Option<String>,
    /// `error`, `ok` or `unset`.
    #[param(pattern = "^(error|ok|unset)$")]
    pub(crate) status: Option<String>,
    /// Attribute filter expression, e.g. `http.route = "/cart" AND (code = 500 OR exists(error))`;
    /// `resource.` prefixes resource attributes; operators `=`, `!=`, `=~`, `!~`.
    pub(crate) filter: Option<String>,
    /// Span duration at least (`250ms`, `1.5s`).
    #[param(pattern = r"^([0-9]{1,18}|[0-9]{1,6}(\.[0-9]{1,6})?s|([0-9]{1,6}(ns|us|ms|s|m|h|d)){1,4})$")]
    pub(crate) min_duration: Option<String>,
    #[param(pattern = r"^([0-9]{1,18}|[0-9]{1,6}(\.[0-9]{1,6})?s|([0-9]{1,6}(ns|us|ms|s|m|h|d)){1,4})$")]
    pub(crate) max_duration: Option<String>,
    pub(crate) root_service: Option<String>,
    pub(crate) root_operation: Option<String>,
    #[param(pattern = r"^([0-9]{1,18}|[0-9]{1,6}(\.[0-9]{1,6})?s|([0-9]{1,6}(ns|us|ms|s|m|h|d)){1,4})$")]
    pub(crate) min_trace_duration: Option<String>,
    #[param(pattern = r"^([0-9]{1,18}|[0-9]{1,6}(\.[0-9]{1,6})?s|([0-9]{1,6}(ns|us|ms|s|m|h|d)){1,4})$")]
    pub(crate) max_trace_duration: Option<String>,
    /// Most traces (default 20, at most `[query] max_traces`, default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<usize>,
    #[param(
        pattern = r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    pub(crate) start: Option<String>,
    #[param(
        pattern = r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    pub(crate) end: Option<String>,
    #[param(pattern = r"^([0-9]{1,18}|[0-9]{1,6}(\.[0-9]{1,6})?s|([0-9]{1,6}(ns|us|ms|s|m|h|d)){1,4})$")]
    pub(crate) lookback: Option<String>,
}

impl TraceParams {
    /// The search these parameters describe (the UI's trace search parses them too).
    pub(crate) fn search(&self, limits: &QueryLimits) -> Result<TraceSearch, QueryError> {
        let mut parts = Vec::new();
        if let Some(s) = self.service.as_ref().filter(|s| !s.is_empty()) {
            parts.push(SpanPredicate::Service(s.clone()));
        }
        if let Some(o) = self.operation.as_ref().filter(|s| !s.is_empty()) {
            parts.push(SpanPredicate::Name(o.clone()));
        }
        if let Some(k) = &self.kind {
            parts.push(SpanPredicate::Kind(parse_kind(k)?));
        }
        if let Some(st) = &self.status {
            parts.push(SpanPredicate::StatusCode(match st.to_ascii_lowercase().as_str() {
                "unset" => 0,
                "ok" => 1,
                "error" => 2,
                other => return Err(bad(format!("status: {other:?} is not one of error, ok, unset"))),
            }));
        }
        let dur =
            |name: &str, v: &Option<String>| v.as_deref().map(|v| parse_duration(name, v)).transpose().map_err(bad);
        let (min, max) = (dur("minDuration", &self.min_duration)?, dur("maxDuration", &self.max_duration)?);
        if min.is_some() || max.is_some() {
            let (min, max) = (min.unwrap_or(0), max.unwrap_or(u64::MAX));
            if min > max {
                return Err(bad("minDuration is greater than maxDuration".into()));
            }
            parts.push(SpanPredicate::Duration { min, max });
        }
        if let Some(f) = &self.filter {
            match parse_filter_with(f, limits).map_err(bad)? {
                SpanPredicate::All => {}
                p => parts.push(p),
            }
        }
        let limit = QueryLimits::check_limit(
            "limit",
            self.limit.unwrap_or(20.min(limits.max_traces)),
            limits.max_traces,
            "max_traces",
        )
        .map_err(bad)?;
        let time = time_range(self.start.as_deref(), self.end.as_deref(), self.lookback.as_deref()).map_err(bad)?;
        limits.check_range(time).map_err(bad)?;
        Ok(TraceSearch {
            span: match parts.len() {
                0 => SpanPredicate::All,
                1 => parts.remove(0),
                _ => SpanPredicate::And(parts),
            },
            time,
            root_service: self.root_service.clone().filter(|s| !s.is_empty()),
            root_operation: self.root_operation.clone().filter(|s| !s.is_empty()),
            min_trace_duration_ns: dur("minTraceDuration", &self.min_trace_duration)?,
            max_trace_duration_ns: dur("maxTraceDuration", &self.max_trace_duration)?,
            limit,
        })
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct TraceSummaryJson {
    trace_id: String,
    root_service: String,
    root_name: String,
    /// Unix ns, as a string.
    start_time_unix_nano: String,
    duration_ns: u64,
    span_count: usize,
    /// Spans per service.
    services: Vec<ServiceCount>,
    error_count: usize,
}

#[derive(Serialize, ToSchema)]
struct ServiceCount {
    service: String,
    spans: usize,
}

impl From<TraceSummary> for TraceSummaryJson {
    fn from(s: TraceSummary) -> Self {
        TraceSummaryJson {
            trace_id: s.trace_id,
            root_service: s.root_service,
            root_name: s.root_name,
            start_time_unix_nano: s.start_ns.to_string(),
            duration_ns: s.duration_ns,
            span_count: s.span_count,
            services: s.services.into_iter().map(|(service, spans)| ServiceCount { service, spans }).collect(),
            error_count: s.error_count,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct TracesResponse {
    traces: Vec<TraceSummaryJson>,
}

/// Trace search; each hit summarises its trace.
#[utoipa::path(get, path = "/api/v1/traces", params(TraceParams), responses((status = 200, body = TracesResponse), (status = 400, body = ErrorJson), (status = 503, body = ErrorJson, description = "the store is busy or the query ran past `[query] timeout`: retry later")))]
async fn search_traces(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<TraceParams>,
) -> Result<Json<TracesResponse>, QueryError> {
    let traces = s.query.search_traces(&p.search(s.query.limits())?).await?;
    Ok(Json(TracesResponse { traces: traces.iter().map(|t| t.summary().into()).collect() }))
}

/// A span: its OTLP/JSON form plus the service, resource and scope it came with.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct SpanJson {
    service: String,
    /// The span as OTLP/JSON.
    #[schema(value_type = Object)]
    span: serde_json::Value,
    /// Index into the trace's `resources`.
    resource: usize,
    /// Index into the trace's `scopes`.
    scope: usize,
    /// Adjuster warnings (clock skew, duplicate ids, missing parent).
    warnings: Vec<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct TraceJson {
    trace_id: String,
    summary: TraceSummaryJson,
    spans: Vec<SpanJson>,
    /// Resources (OTLP/JSON) referred to by the spans.
    #[schema(value_type = Vec<Object>)]
    resources: Vec<serde_json::Value>,
    /// Instrumentation scopes (OTLP/JSON) referred to by the spans.
    #[schema(value_type = Vec<Object>)]
    scopes: Vec<serde_json::Value>,
}

/// The body of `GET /api/v1/traces/{trace_id}`: one of the three forms `format` selects, each
/// told apart by its required keys.
struct TraceBody;

impl utoipa::PartialSchema for TraceBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
        let object_with = |key: &str, description: &str| {
            ObjectBuilder::new()
                .description(Some(description))
                .property(key, ObjectBuilder::new().schema_type(Type::Array))
                .required(key)
        };
        AnyOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name("TraceJson"))
            .item(object_with("resourceSpans", "OTLP/JSON TracesData (`format=otlp`)"))
            .item(object_with("data", "jaeger-ui's trace JSON (`format=jaeger`)"))
            .into()
    }
}

impl utoipa::ToSchema for TraceBody {}

fn to_json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn trace_json(t: &Trace) -> TraceJson {
    let mut resources: Vec<serde_json::Value> = Vec::new();
    let mut res_index: HashMap<*const opentelemetry_proto::tonic::resource::v1::Resource, usize> = HashMap::new();
    let mut scopes: Vec<serde_json::Value> = Vec::new();
    let mut scope_index: HashMap<*const opentelemetry_proto::tonic::common::v1::InstrumentationScope, usize> =
        HashMap::new();
    let mut warnings: HashMap<&[u8], Vec<String>> = HashMap::new();
    for w in &t.warnings {
        warnings.entry(w.span_id.as_slice()).or_default().push(w.message.clone());
    }
    let spans = t
        .spans
        .iter()
        .map(|s| {
            let resource = *res_index.entry(std::sync::Arc::as_ptr(&s.resource)).or_insert_with(|| {
                resources.push(to_json(&*s.resource));
                resources.len() - 1
            });
            let scope = *scope_index.entry(std::sync::Arc::as_ptr(&s.scope)).or_insert_with(|| {
                scopes.push(to_json(&*s.scope));
                scopes.len() - 1
            });
            SpanJson {
                service: crate::query::service_name(s).to_string(),
                span: to_json(&s.span),
                resource,
                scope,
                warnings: warnings.get(s.span.span_id.as_slice()).cloned().unwrap_or_default(),
            }
        })
        .collect();
    TraceJson { trace_id: hex::encode(&t.trace_id), summary: t.summary().into(), spans, resources, scopes }
}

/// The trace as an OTLP `TracesData` (spans regrouped by resource and scope).
fn trace_otlp(t: &Trace) -> opentelemetry_proto::tonic::trace::v1::TracesData {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, TracesData};
    let mut out: Vec<ResourceSpans> = Vec::new();
    for s in &t.spans {
        let rs = match out
            .iter_mut()
            .position(|r| r.resource.as_ref() == Some(&*s.resource) && r.schema_url == s.resource_schema_url)
        {
            Some(i) => &mut out[i],
            None => {
                out.push(ResourceSpans {
                    resource: Some((*s.resource).clone()),
                    schema_url: s.resource_schema_url.clone(),
                    scope_spans: Vec::new(),
                });
                out.last_mut().expect("just pushed")
            }
        };
        let ss = match rs
            .scope_spans
            .iter()
            .position(|x| x.scope.as_ref() == Some(&*s.scope) && x.schema_url == s.scope_schema_url)
        {
            Some(i) => &mut rs.scope_spans[i],
            None => {
                rs.scope_spans.push(ScopeSpans {
                    scope: Some((*s.scope).clone()),
                    schema_url: s.scope_schema_url.clone(),
                    spans: Vec::new(),
                });
                rs.scope_spans.last_mut().expect("just pushed")
            }
        };
        ss.spans.push(s.span.clone());
    }
    TracesData { resource_spans: out }
}

fn trace_id_param(id: &str) -> Result<Vec<u8>, QueryError> {
    match hex::decode(id) {
        Ok(b) if b.len() == 16 => Ok(b),
        _ => Err(bad(format!("trace id {id:?} is not 32 hex digits"))),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TraceFormat {
    /// `native` (default), `otlp` (OTLP/JSON `TracesData`) or `jaeger` (jaeger-ui's JSON, which
    /// its "load JSON file" accepts).
    #[param(pattern = "^(native|otlp|jaeger)$")]
    format: Option<String>,
    /// Offer the body as a file download.
    download: Option<bool>,
}

/// One trace, adjusted (clock skew, duplicate span ids), in the native, OTLP/JSON or Jaeger form.
#[utoipa::path(get, path = "/api/v1/traces/{trace_id}", params(("trace_id" = String, Path, description = "32 hex digits", pattern = "^[0-9a-fA-F]{32}$"), TraceFormat), responses((status = 200, body = TraceBody, description = "`format=native`: a TraceJson; `otlp`: an OTLP/JSON TracesData; `jaeger`: `{\"data\": [trace]}`"), (status = 400, body = ErrorJson), (status = 503, body = ErrorJson, description = "the store is busy or the query ran past `[query] timeout`: retry later"), (status = 404, body = ErrorJson)))]
async fn get_trace(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(f): ApiQuery<TraceFormat>,
) -> Result<Response, QueryError> {
    let trace_id = trace_id_param(&id)?;
    let Some(t) = s.query.trace(&trace_id).await? else {
        return Ok((axum::http::StatusCode::NOT_FOUND, Json(ErrorJson { error: format!("trace {id} not found") }))
            .into_response());
    };
    let (body, name) = match f.format.as_deref().unwrap_or("native") {
        "native" => (to_json(&trace_json(&t)), "trace"),
        "otlp" => (to_json(&trace_otlp(&t)), "trace.otlp"),
        "jaeger" => (serde_json::json!({ "data": [crate::jaeger::trace_document(&t)] }), "trace.jaeger"),
        other => return Err(bad(format!("format: {other:?} is not one of native, otlp, jaeger"))),
    };
    let mut resp = Json(body).into_response();
    if f.download.unwrap_or(false) {
        let v = format!("attachment; filename=\"{}-{id}.json\"", name);
        if let Ok(h) = axum::http::HeaderValue::from_str(&v) {
            resp.headers_mut().insert(axum::http::header::CONTENT_DISPOSITION, h);
        }
    }
    Ok(resp)
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct LogJson {
    service: String,
    /// Unix ns of the record (its timestamp, or observed time when that is 0), as a string.
    time_unix_nano: String,
    /// The record as OTLP/JSON.
    #[schema(value_type = Object)]
    record: serde_json::Value,
    /// The resource as OTLP/JSON.
    #[schema(value_type = Object)]
    resource: serde_json::Value,
    /// The scope as OTLP/JSON.
    #[schema(value_type = Object)]
    scope: serde_json::Value,
    /// Hex trace id, when the record carries one: `/api/v1/traces/{traceId}` is its trace.
    trace_id: Option<String>,
    span_id: Option<String>,
}

fn log_time(e: &LogEntry) -> u64 {
    obsbox_storage::log_time(&e.record)
}

fn log_json(e: &LogEntry) -> LogJson {
    let id = |b: &[u8]| (!b.is_empty()).then(|| hex::encode(b));
    LogJson {
        service: obsbox_storage::service_name(Some(&e.resource)).to_string(),
        time_unix_nano: log_time(e).to_string(),
        record: to_json(&e.record),
        resource: to_json(&*e.resource),
        scope: to_json(&*e.scope),
        trace_id: id(&e.record.trace_id),
        span_id: id(&e.record.span_id),
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct LogsResponse {
    logs: Vec<LogJson>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogParams {
    /// Full text over the body (tantivy syntax: words, word* prefixes, "phrases", AND, OR, NOT, -word) plus
    /// `service:`, `severity:`, `severity>=N`, `trace_id:`, `span_id:`, `attributes.KEY:`,
    /// `resource.KEY:` clauses.
    query: Option<String>,
    /// Most records (default 100, at most `[query] max_log_lines`, default 5000).
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<usize>,
    /// From the previous page's `nextCursor`.
    #[param(pattern = r"^[0-9]{1,19}\.[0-9]{1,5}$")]
    cursor: Option<String>,
    #[param(
        pattern = r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    start: Option<String>,
    #[param(
        pattern = r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    end: Option<String>,
    #[param(pattern = r"^([0-9]{1,18}|[0-9]{1,6}(\.[0-9]{1,6})?s|([0-9]{1,6}(ns|us|ms|s|m|h|d)){1,4})$")]
    lookback: Option<String>,
}

/// [`LogParams`] without paging (histogram, live tail).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogFilterParams {
    /// The log query, as in `GET /api/v1/logs`.
    query: Option<String>,
    #[param(
        pattern = r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    start: Option<String>,
    #[param(
        pattern = r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    end: Option<String>,
    #[param(pattern = r"^([0-9]{1,18}|[0-9]{1,6}(\.[0-9]{1,6})?s|([0-9]{1,6}(ns|us|ms|s|m|h|d)){1,4})$")]
    lookback: Option<String>,
}

impl From<LogFilterParams> for LogParams {
    fn from(f: LogFilterParams) -> Self {
        LogParams { query: f.query, limit: None, cursor: None, start: f.start, end: f.end, lookback: f.lookback }
    }
}

impl LogParams {
    fn predicate(&self, limits: &QueryLimits) -> Result<LogPredicate, QueryError> {
        parse_log_query_with(self.query.as_deref().unwrap_or(""), limits).map_err(bad)
    }

    fn window(&self, limits: &QueryLimits) -> Result<TimeRange, QueryError> {
        let r = time_range(self.start.as_deref(), self.end.as_deref(), self.lookback.as_deref()).map_err(bad)?;
        limits.check_range(r).map_err(bad)?;
        Ok(r)
    }
}

/// Cursor `<time>.<skip>`: the page continues below `time`, skipping the `skip` records at
/// exactly `time` already returned.
fn parse_cursor(c: &str) -> Result<(u64, usize), QueryError> {
    let err = || bad(format!("cursor {c:?} is not one this API returned"));
    let (t, skip) = c.split_once('.').ok_or_else(err)?;
    let skip: usize = skip.parse().map_err(|_| err())?;
    if skip > MAX_CURSOR_SKIP {
        return Err(err());
    }
    Ok((t.parse().map_err(|_| err())?, skip))
}

/// Log search, newest first, with cursor pagination.
#[utoipa::path(get, path = "/api/v1/logs", params(LogParams), responses((status = 200, body = LogsResponse), (status = 400, body = ErrorJson), (status = 503, body = ErrorJson, description = "the store is busy or the query ran past `[query] timeout`: retry later")))]
async fn search_logs(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<LogParams>,
) -> Result<Json<LogsResponse>, QueryError> {
    let limits = s.query.limits();
    let limit = QueryLimits::check_limit(
        "limit",
        p.limit.unwrap_or(100.min(limits.max_log_lines)),
        limits.max_log_lines,
        "max_log_lines",
    )
    .map_err(bad)?;
    let mut time = p.window(limits)?;
    let mut skip = 0;
    if let Some(c) = &p.cursor {
        let (t, k) = parse_cursor(c)?;
        time.end_ns = time.end_ns.min(t.saturating_add(1));
        skip = k;
        if time.start_ns >= time.end_ns {
            return Ok(Json(LogsResponse { logs: Vec::new(), next_cursor: None }));
        }
    }
    let entries =
        s.query.find_logs(LogQuery { predicate: p.predicate(limits)?, time, limit: limit + skip + 1 }).await?;
    let more = entries.len() > limit + skip;
    let page: Vec<&LogEntry> = entries.iter().skip(skip).take(limit).collect();
    let next_cursor = match (more, page.last()) {
        (true, Some(last)) => {
            let t = log_time(last);
            // Records at `t` on this page plus those skipped before it (also at `t` when the
            // cursor's time equals it).
            let same = page.iter().filter(|e| log_time(e) == t).count()
                + if p.cursor.as_deref().and_then(|c| parse_cursor(c).ok()).is_some_and(|(ct, _)| ct == t) {
                    skip
                } else {
                    0
                };
            Some(format!("{t}.{same}"))
        }
        _ => None,
    };
    Ok(Json(LogsResponse { logs: page.into_iter().map(log_json).collect(), next_cursor }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
struct TraceLogParams {
    /// Only the logs of this span (16 hex digits).
    #[param(pattern = "^[0-9a-fA-F]{16}$")]
    span_id: Option<String>,
    /// Most records (default 1000, at most `[query] max_log_lines`, default 5000).
    #[param(minimum = 1, maximum = 5000)]
    limit: Option<usize>,
}

/// The logs of a trace, or of one of its spans, newest first.
#[utoipa::path(get, path = "/api/v1/traces/{trace_id}/logs", params(("trace_id" = String, Path, description = "32 hex digits", pattern = "^[0-9a-fA-F]{32}$"), TraceLogParams), responses((status = 200, body = LogsResponse), (status = 400, body = ErrorJson), (status = 503, body = ErrorJson, description = "the store is busy or the query ran past `[query] timeout`: retry later")))]
async fn trace_logs(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<TraceLogParams>,
) -> Result<Json<LogsResponse>, QueryError> {
    let mut predicate = LogPredicate::TraceId(trace_id_param(&id)?);
    if let Some(span) = &p.span_id {
        let span = match hex::decode(span) {
            Ok(b) if b.len() == 8 => b,
            _ => return Err(bad(format!("spanId {span:?} is not 16 hex digits"))),
        };
        predicate = LogPredicate::And(vec![predicate, LogPredicate::SpanId(span)]);
    }
    let max = s.query.limits().max_log_lines;
    let limit =
        QueryLimits::check_limit("limit", p.limit.unwrap_or(1000.min(max)), max, "max_log_lines").map_err(bad)?;
    let logs = s.query.find_logs(LogQuery { predicate, time: TimeRange::ALL, limit }).await?;
    Ok(Json(LogsResponse { logs: logs.iter().map(log_json).collect(), next_cursor: None }))
}

#[derive(Serialize, ToSchema)]
struct Bucket {
    /// Bucket start, Unix ns, as a string.
    start: String,
    count: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct HistogramResponse {
    bucket_ns: u64,
    /// Every bucket of the range, oldest first, empty ones included.
    buckets: Vec<Bucket>,
    total: u64,
}

/// A bucket size giving about 60-120 buckets over the range, on a round step.
pub(crate) fn bucket_for(range: TimeRange) -> u64 {
    const STEPS: [u64; 16] = [
        1_000_000,
        10_000_000,
        100_000_000,
        1_000_000_000,
        5_000_000_000,
        10_000_000_000,
        30_000_000_000,
        60_000_000_000,
        300_000_000_000,
        600_000_000_000,
        1_800_000_000_000,
        3_600_000_000_000,
        10_800_000_000_000,
        21_600_000_000_000,
        43_200_000_000_000,
        86_400_000_000_000,
    ];
    let span = range.end_ns.saturating_sub(range.start_ns);
    STEPS.into_iter().find(|s| span / s <= 120).unwrap_or(86_400_000_000_000 * (span / (86_400_000_000_000 * 120) + 1))
}

/// Matching log records per time bucket (bucket size chosen from the range).
#[utoipa::path(get, path = "/api/v1/logs/histogram", params(LogFilterParams), responses((status = 200, body = HistogramResponse), (status = 400, body = ErrorJson), (status = 503, body = ErrorJson, description = "the store is busy or the query ran past `[query] timeout`: retry later")))]
async fn log_histogram(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<LogFilterParams>,
) -> Result<Json<HistogramResponse>, QueryError> {
    let p = LogParams::from(p);
    let time = p.window(s.query.limits())?;
    let bucket = bucket_for(time);
    let counts: HashMap<u64, u64> =
        s.query.log_histogram(p.predicate(s.query.limits())?, time, bucket).await?.into_iter().collect();
    let first = time.start_ns / bucket * bucket;
    let buckets: Vec<Bucket> = (0..)
        .map(|i| first + i * bucket)
        .take_while(|b| *b < time.end_ns)
        .map(|b| Bucket { start: b.to_string(), count: counts.get(&b).copied().unwrap_or(0) })
        .collect();
    let total = buckets.iter().map(|b| b.count).sum();
    Ok(Json(HistogramResponse { bucket_ns: bucket, buckets, total }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TailParams {
    /// The log query, as in `GET /api/v1/logs`.
    query: Option<String>,
}

/// Live tail: new matching records as Server-Sent Events (`event: log`, data = a log object),
/// polled every second; the stream ends after an hour (reconnect to continue).
#[utoipa::path(get, path = "/api/v1/logs/tail", params(TailParams), responses((status = 200, description = "Server-Sent Events: `event: log` with a log object as data", content_type = "text/event-stream"), (status = 400, body = ErrorJson), (status = 503, body = ErrorJson, description = "the store is busy or the query ran past `[query] timeout`: retry later")))]
async fn tail_logs(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<TailParams>,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, QueryError> {
    let predicate = parse_log_query_with(p.query.as_deref().unwrap_or(""), s.query.limits()).map_err(bad)?;
    let query = s.query.clone();
    let started = std::time::Instant::now();
    let stream = futures::stream::unfold((now_ns(), 0usize), move |(mut since, mut seen_at)| {
        let query = query.clone();
        let predicate = predicate.clone();
        async move {
            loop {
                if started.elapsed() > Duration::from_secs(3600) {
                    return None;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                let time = TimeRange { start_ns: since, end_ns: u64::MAX };
                let logs = match query.find_logs(LogQuery { predicate: predicate.clone(), time, limit: 1000 }).await {
                    Ok(l) => l,
                    Err(e) => {
                        let ev = Event::default().event("error").data(e.to_string());
                        return Some((futures::stream::iter(vec![Ok(ev)]), (since, seen_at)));
                    }
                };
                // Oldest first; skip the records at `since` sent already.
                let mut fresh: Vec<&LogEntry> = logs.iter().rev().collect();
                let at_since = fresh.iter().take_while(|e| log_time(e) == since).count();
                fresh.drain(..at_since.min(seen_at));
                if fresh.is_empty() {
                    continue;
                }
                let last = log_time(fresh[fresh.len() - 1]);
                let same = fresh.iter().filter(|e| log_time(e) == last).count();
                seen_at = if last == since { seen_at + same } else { same };
                since = last;
                let events: Vec<Result<Event, Infallible>> = fresh
                    .into_iter()
                    .map(|e| Ok(Event::default().event("log").json_data(log_json(e)).unwrap_or_default()))
                    .collect();
                return Some((futures::stream::iter(events), (since, seen_at)));
            }
        }
    });
    use futures::StreamExt;
    Ok(Sse::new(stream.flatten()).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AttrParams {
    /// `traces` (default) or `logs`.
    #[param(pattern = "^(traces|logs)$")]
    signal: Option<String>,
    /// `item` (span or record attributes, default) or `resource`.
    #[param(pattern = "^(item|span|record|resource)$")]
    scope: Option<String>,
    /// Most values (default 20, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    #[param(
        pattern = r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    start: Option<String>,
    #[param(
        pattern = r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    end: Option<String>,
    #[param(pattern = r"^([0-9]{1,18}|[0-9]{1,6}(\.[0-9]{1,6})?s|([0-9]{1,6}(ns|us|ms|s|m|h|d)){1,4})$")]
    lookback: Option<String>,
}

/// [`AttrParams`] without `limit` (attribute keys).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct KeyParams {
    /// `traces` (default) or `logs`.
    #[param(pattern = "^(traces|logs)$")]
    signal: Option<String>,
    /// `item` (span or record attributes, default) or `resource`.
    #[param(pattern = "^(item|span|record|resource)$")]
    scope: Option<String>,
    #[param(
        pattern = r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    start: Option<String>,
    #[param(
        pattern = r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    end: Option<String>,
    #[param(pattern = r"^([0-9]{1,18}|[0-9]{1,6}(\.[0-9]{1,6})?s|([0-9]{1,6}(ns|us|ms|s|m|h|d)){1,4})$")]
    lookback: Option<String>,
}

impl From<KeyParams> for AttrParams {
    fn from(k: KeyParams) -> Self {
        AttrParams { signal: k.signal, scope: k.scope, limit: None, start: k.start, end: k.end, lookback: k.lookback }
    }
}

impl AttrParams {
    fn parts(&self, limits: &QueryLimits) -> Result<(Signal, AttrScope, TimeRange), QueryError> {
        let signal = match self.signal.as_deref().unwrap_or("traces") {
            "traces" => Signal::Traces,
            "logs" => Signal::Logs,
            other => return Err(bad(format!("signal: {other:?} is not traces or logs"))),
        };
        let scope = match self.scope.as_deref().unwrap_or("item") {
            "item" | "span" | "record" => AttrScope::Item,
            "resource" => AttrScope::Resource,
            other => return Err(bad(format!("scope: {other:?} is not item or resource"))),
        };
        let time = time_range(self.start.as_deref(), self.end.as_deref(), self.lookback.as_deref()).map_err(bad)?;
        limits.check_range(time).map_err(bad)?;
        Ok((signal, scope, time))
    }
}

#[derive(Serialize, ToSchema)]
struct KeysResponse {
    keys: Vec<String>,
}

/// Attribute keys, for autocomplete.
#[utoipa::path(get, path = "/api/v1/attributes", params(KeyParams), responses((status = 200, body = KeysResponse), (status = 400, body = ErrorJson), (status = 503, body = ErrorJson, description = "the store is busy or the query ran past `[query] timeout`: retry later")))]
async fn attribute_keys(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<KeyParams>,
) -> Result<Json<KeysResponse>, QueryError> {
    let p = AttrParams::from(p);
    let (signal, scope, time) = p.parts(s.query.limits())?;
    Ok(Json(KeysResponse { keys: s.query.attribute_keys(signal, scope, time).await? }))
}

#[derive(Serialize, ToSchema)]
struct ValueCount {
    /// The value as JSON (string, number or boolean).
    value: serde_json::Value,
    count: u64,
}

#[derive(Serialize, ToSchema)]
struct ValuesResponse {
    values: Vec<ValueCount>,
}

/// The most frequent values of an attribute.
#[utoipa::path(get, path = "/api/v1/attributes/{key}/values", params(("key" = String, Path), AttrParams), responses((status = 200, body = ValuesResponse), (status = 400, body = ErrorJson), (status = 503, body = ErrorJson, description = "the store is busy or the query ran past `[query] timeout`: retry later")))]
async fn attribute_values(
    State(s): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(p): ApiQuery<AttrParams>,
) -> Result<Json<ValuesResponse>, QueryError> {
    let (signal, scope, time) = p.parts(s.query.limits())?;
    let limit = p.limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return Err(bad("limit must be between 1 and 1000".into()));
    }
    let values = s.query.attribute_values(signal, scope, key, time, limit).await?;
    Ok(Json(ValuesResponse {
        values: values
            .into_iter()
            .map(|(v, count)| ValueCount {
                value: match v {
                    AttrValue::Str(s) => s.into(),
                    AttrValue::Int(i) => i.into(),
                    AttrValue::Float(f) => f.into(),
                    AttrValue::Bool(b) => b.into(),
                },
                count,
            })
            .collect(),
    }))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct DependencyJson {
    parent: String,
    child: String,
    call_count: u64,
    error_count: u64,
}

#[derive(Serialize, ToSchema)]
struct DependenciesResponse {
    dependencies: Vec<DependencyJson>,
}

/// Service dependency graph: caller -> callee edges (messaging hops included).
#[utoipa::path(get, path = "/api/v1/dependencies", params(Window), responses((status = 200, body = DependenciesResponse), (status = 400, body = ErrorJson), (status = 503, body = ErrorJson, description = "the store is busy or the query ran past `[query] timeout`: retry later")))]
async fn dependencies(
    State(s): State<AppState>,
    ApiQuery(w): ApiQuery<Window>,
) -> Result<Json<DependenciesResponse>, QueryError> {
    let deps = s.query.dependencies(w.range(s.query.limits())?).await?;
    Ok(Json(DependenciesResponse {
        dependencies: deps
            .into_iter()
            .map(|d: Dependency| DependencyJson {
                parent: d.parent,
                child: d.child,
                call_count: d.call_count,
                error_count: d.error_count,
            })
            .collect(),
    }))
}

fn slos_off() -> axum::response::Response {
    (
        axum::http::StatusCode::NOT_FOUND,
        Json(ErrorJson { error: "no SLOs are configured: start obsbox with --slo-dir (docs/slo.md)".into() }),
    )
        .into_response()
}

/// Every SLO with its latest evaluation (`slos`: objects as in `docs/slo.md`), and the problems
/// found in the definitions (`errors`: "file:line: field: message").
#[utoipa::path(get, path = "/api/v1/slos", responses((status = 200, description = "`{\"slos\": [summary...], \"errors\": [string...]}`"), (status = 404, body = ErrorJson, description = "no SLO directory configured")))]
async fn list_slos(State(s): State<AppState>) -> axum::response::Response {
    match &s.slos {
        Some(e) => Json(serde_json::json!({ "slos": e.list(), "errors": e.errors() })).into_response(),
        None => slos_off(),
    }
}

/// One SLO: summary, budget, burn-down and SLI series, burn rate per tier, alerts and history.
#[utoipa::path(get, path = "/api/v1/slos/{name}", params(("name" = String, Path)), responses((status = 200, description = "the SLO's detail (docs/slo.md)"), (status = 404, body = ErrorJson)))]
async fn get_slo(State(s): State<AppState>, ApiPath(name): ApiPath<String>) -> axum::response::Response {
    let Some(e) = &s.slos else { return slos_off() };
    match e.detail(&name) {
        Some(d) => Json(d).into_response(),
        None => (axum::http::StatusCode::NOT_FOUND, Json(ErrorJson { error: format!("no SLO named {name:?}") }))
            .into_response(),
    }
}

/// Every alert of every SLO (one per SLO and tier) with its state.
#[utoipa::path(get, path = "/api/v1/alerts", responses((status = 200, description = "`{\"alerts\": [alert...]}`"), (status = 404, body = ErrorJson)))]
async fn list_alerts(State(s): State<AppState>) -> axum::response::Response {
    match &s.slos {
        Some(e) => Json(serde_json::json!({ "alerts": e.alerts() })).into_response(),
        None => slos_off(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_skip_a_bounded_number_of_records() {
        assert_eq!(parse_cursor("1700000000000000000.3").unwrap(), (1_700_000_000_000_000_000, 3));
        // A forged skip once asked the store for as many records (limit + skip + 1).
        for c in ["1.99999999999999", "1.100001", "99999999999999999999999.1", "1", "a.b"] {
            assert!(parse_cursor(c).is_err(), "{c}");
        }
    }
}
