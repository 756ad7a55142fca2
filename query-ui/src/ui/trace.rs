//! The trace view.
//!
//! - `GET /trace/{id}`: the page. Without JavaScript it is a server-rendered, indented span table
//!   ([`PAGE_ROWS`] rows a page, `?page=N`) with each span's details in `<details>`, plus the
//!   per-operation statistics. `trace.js` replaces the table with the virtualised waterfall,
//!   the flame graph, search, the minimap and the inline logs; their state lives in the URL
//!   (`?span=`, `?view=flame|stats`, `?q=`, `?from=&to=` zoom in 0-1 fractions, `?collapsed=`).
//! - `GET /trace/{id}/data`: the compact JSON the script draws ([`model::TraceData`]); fetched
//!   rather than embedded in the page, which measured slower in headless Chromium (debug build,
//!   layout cached: rows drawn 10k spans ~250 ms fetched vs ~380 ms embedded, 100k spans 1.7 s vs
//!   2.7 s): the page arrives and parses while the JSON is made, and escaping megabytes into
//!   HTML costs more than a second request.
//! - `GET /trace/{a}/compare/{b}`: the structural diff ([`diff`]); `?compare=B` on the trace
//!   page and `GET /trace/{a}/compare?with=B` (the page's form) redirect there.
//!
//! Where things are: `model` lays the trace out (order, self time, critical path, statistics,
//! the JSON), `diff` compares two layouts, `templates/trace.html` and `trace_compare.html`
//! render them, `assets/trace.js` and `trace.css` are the client side.

mod diff;
mod model;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use obsbox_storage::any_value_text;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use serde::Deserialize;

use self::diff::{Change, DiffRow};
use self::model::{OpStats, TraceTree, is_error};
use super::range::{display_time, url};
use super::{Layout, Nav, UiError, render, svc_class};
use crate::AppState;
use crate::query::service_name;

/// Rows of the server-rendered span table per page.
pub(crate) const PAGE_ROWS: usize = 100;
/// Rows of the statistics table shown without JavaScript.
const STATS_ROWS: usize = 100;
/// Deepest indentation class (`d0`..`d30` in `trace.css`).
const MAX_INDENT: u32 = 30;

/// The trace view's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/trace/{id}", get(page))
        .route("/trace/{id}/data", get(data))
        .route("/trace/{id}/compare", get(compare_form))
        .route("/trace/{id}/compare/{other}", get(compare))
}

/// A 32-hex-digit trace id, or a 400 page saying what is wrong.
fn parse_trace_id(id: &str) -> Result<Vec<u8>, UiError> {
    match hex::decode(id) {
        Ok(b) if b.len() == 16 => Ok(b),
        _ => Err(UiError::bad_request(format!("{id:?} is not a trace id (32 hex digits)"))),
    }
}

/// The trace laid out: read afresh when `fresh` (a page load, so that a reload shows spans that
/// arrived since), else from [`TraceCache`] when there.
async fn load(state: &AppState, id: &str, fresh: bool) -> Result<Arc<Loaded>, UiError> {
    let trace_id = parse_trace_id(id)?;
    if !fresh && let Some(loaded) = state.trace_cache.get(&trace_id) {
        return Ok(loaded);
    }
    let Some(trace) = state.query.trace(&trace_id).await? else {
        return Err(UiError::not_found(format!("trace {} not found", hex::encode(&trace_id))));
    };
    // Laying out 100k spans takes tens of milliseconds: not on the runtime's threads.
    let tree = Arc::new(tokio::task::spawn_blocking(move || TraceTree::new(trace)).await.map_err(internal)?);
    let loaded = Arc::new(Loaded { tree, json: tokio::sync::OnceCell::new() });
    state.trace_cache.put(trace_id, loaded.clone());
    Ok(loaded)
}

/// A laid-out trace and, once made, its JSON for the script.
pub(crate) struct Loaded {
    tree: Arc<TraceTree>,
    json: tokio::sync::OnceCell<Arc<Vec<u8>>>,
}

impl Loaded {
    /// The compact JSON, made on the blocking pool once (concurrent callers wait for it).
    async fn json(&self) -> Result<Arc<Vec<u8>>, UiError> {
        let tree = self.tree.clone();
        self.json
            .get_or_try_init(|| async move {
                match tokio::task::spawn_blocking(move || serde_json::to_vec(&tree.data())).await {
                    Ok(Ok(body)) => Ok(Arc::new(body)),
                    Ok(Err(e)) => Err(internal(e)),
                    Err(e) => Err(internal(e)),
                }
            })
            .await
            .cloned()
    }
}

/// Traces laid out in the last [`CACHE_TTL`], so that the page and the data request its script
/// makes right after read and lay the trace out once (the page always reads afresh and replaces
/// the entry); the page also starts making the JSON, so that it is ready (or nearly) when asked
/// for. Holds at most [`CACHE_SPANS`] spans.
#[derive(Default)]
pub(crate) struct TraceCache {
    entries: Mutex<Vec<CacheEntry>>,
}

struct CacheEntry {
    trace_id: Vec<u8>,
    at: Instant,
    loaded: Arc<Loaded>,
}

/// How long a laid-out trace is reused (spans still arriving show up after this).
const CACHE_TTL: Duration = Duration::from_secs(10);
/// Most spans kept in [`TraceCache`] over all its traces.
const CACHE_SPANS: usize = 250_000;

impl TraceCache {
    fn get(&self, trace_id: &[u8]) -> Option<Arc<Loaded>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| e.at.elapsed() < CACHE_TTL);
        entries.iter().find(|e| e.trace_id == trace_id).map(|e| e.loaded.clone())
    }

    fn put(&self, trace_id: Vec<u8>, loaded: Arc<Loaded>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| e.at.elapsed() < CACHE_TTL && e.trace_id != trace_id);
        entries.push(CacheEntry { trace_id, at: Instant::now(), loaded });
        // Oldest first out until the spans fit (the newest always stays).
        while entries.len() > 1 && entries.iter().map(|e| e.loaded.tree.order.len()).sum::<usize>() > CACHE_SPANS {
            entries.remove(0);
        }
    }
}

fn internal(e: impl std::fmt::Display) -> UiError {
    tracing::error!(error = %e, "trace view task failed");
    UiError { status: StatusCode::INTERNAL_SERVER_ERROR, message: "internal error".to_string() }
}

/// Nanoseconds as `1.23s`, `45.6ms`, `789µs` (as `obsbox.fmtDuration` in the scripts).
fn fmt_duration(ns: u64) -> String {
    super::fmt::duration_ns(ns as f64)
}

fn kind_label(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn attr_pairs(attrs: &[KeyValue]) -> Vec<(String, String)> {
    attrs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(any_value_text).unwrap_or_default())).collect()
}

#[derive(Deserialize)]
struct PageParams {
    page: Option<String>,
    span: Option<String>,
    compare: Option<String>,
    view: Option<String>,
}

struct SpanView {
    id: String,
    indent: String,
    service: String,
    class: String,
    name: String,
    kind: &'static str,
    start: String,
    duration: String,
    self_time: String,
    error: bool,
    status: &'static str,
    message: String,
    open: bool,
    attributes: Vec<(String, String)>,
    resource: Vec<(String, String)>,
    scope: String,
    events: Vec<EventView>,
    links: Vec<(String, String)>,
    warnings: Vec<String>,
}

struct EventView {
    at: String,
    name: String,
    attributes: Vec<(String, String)>,
}

struct ServiceTag {
    name: String,
    class: String,
    count: usize,
}

struct StatsView {
    service: String,
    class: String,
    name: String,
    count: u64,
    total: String,
    self_time: String,
    errors: u64,
}

#[derive(Template)]
#[template(path = "trace.html")]
struct TracePage {
    layout: Layout,
    trace_id: String,
    root_service: String,
    root_class: String,
    root_name: String,
    started: String,
    duration: String,
    span_count: usize,
    error_count: usize,
    depth: u32,
    services: Vec<ServiceTag>,
    warning_count: usize,
    rows: Vec<SpanView>,
    first_row: usize,
    page: usize,
    pages: usize,
    prev_href: Option<String>,
    next_href: Option<String>,
    stats: Vec<StatsView>,
    stats_more: usize,
    view: String,
}

impl TracePage {
    fn is_view(&self, v: &str) -> bool {
        self.view == v
    }
}

async fn page(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<PageParams>,
) -> Result<Response, UiError> {
    if let Some(other) = params.compare.as_deref().filter(|c| !c.is_empty()) {
        parse_trace_id(&id)?;
        parse_trace_id(other)?;
        return Ok(Redirect::to(&format!("/trace/{id}/compare/{other}")).into_response());
    }
    let selected = match params.span.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match hex::decode(s) {
            Ok(b) if b.len() == 8 => Some(b),
            _ => return Err(UiError::bad_request(format!("span {s:?} is not a span id (16 hex digits)"))),
        },
    };
    let view = match params.view.as_deref().unwrap_or("waterfall") {
        v @ ("waterfall" | "flame" | "stats") => v.to_string(),
        other => return Err(UiError::bad_request(format!("view {other:?} is not one of waterfall, flame, stats"))),
    };
    let loaded = load(&state, &id, true).await?;
    // The script asks for the JSON as soon as the page arrives: start making it now.
    tokio::spawn({
        let loaded = loaded.clone();
        async move { loaded.json().await.map(drop) }
    });
    let tree = &loaded.tree;
    let pages = tree.order.len().div_ceil(PAGE_ROWS).max(1);
    let selected_pos = selected.as_deref().and_then(|s| tree.position_of(s));
    let page = match params.page.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => match p.parse::<usize>() {
            Ok(n) if (1..=pages).contains(&n) => n,
            _ => return Err(UiError::bad_request(format!("page {p:?} is not between 1 and {pages}"))),
        },
        None => selected_pos.map(|p| p / PAGE_ROWS + 1).unwrap_or(1),
    };
    let trace_id = hex::encode(&tree.trace.trace_id);
    let page_href = |n: usize| url(&format!("/trace/{trace_id}"), [("page", n.to_string().as_str())]);
    let first_row = (page - 1) * PAGE_ROWS;
    let rows = (first_row..tree.order.len().min(first_row + PAGE_ROWS))
        .map(|pos| span_view(tree, pos, selected_pos == Some(pos)))
        .collect();

    let root = tree.order.first().map(|n| &tree.trace.spans[n.span]);
    let root_service = root.map(service_name).unwrap_or("").to_string();
    let summary = tree.trace.summary();
    let all_stats = tree.stats();
    let stats_more = all_stats.len().saturating_sub(STATS_ROWS);
    let stats = all_stats.into_iter().take(STATS_ROWS).map(stats_view).collect();
    let title = format!("{} {}", root_service, root.map(|r| r.span.name.as_str()).unwrap_or(""));
    let layout = Layout::new(title, Nav::Traces, &["trace.css", "trace.js"]);
    let resp = render(&TracePage {
        layout,
        root_class: svc_class(&root_service),
        root_service,
        root_name: root.map(|r| r.span.name.clone()).unwrap_or_default(),
        started: display_time(tree.start_ns),
        duration: fmt_duration(tree.duration_ns),
        span_count: tree.order.len(),
        error_count: summary.error_count,
        depth: tree.order.iter().map(|n| n.depth + 1).max().unwrap_or(0),
        services: summary
            .services
            .into_iter()
            .map(|(name, count)| ServiceTag { class: svc_class(&name), name, count })
            .collect(),
        warning_count: tree.trace.warnings.len(),
        rows,
        first_row,
        page,
        pages,
        prev_href: (page > 1).then(|| page_href(page - 1)),
        next_href: (page < pages).then(|| page_href(page + 1)),
        stats,
        stats_more,
        view,
        trace_id,
    });
    Ok(resp)
}

fn span_view(tree: &TraceTree, pos: usize, open: bool) -> SpanView {
    let node = &tree.order[pos];
    let rec = &tree.trace.spans[node.span];
    let s = &rec.span;
    let service = service_name(rec).to_string();
    let status = match s.status.as_ref().map(|st| st.code) {
        Some(1) => "ok",
        Some(2) => "error",
        _ => "unset",
    };
    let scope = match (rec.scope.name.as_str(), rec.scope.version.as_str()) {
        (n, "") => n.to_string(),
        (n, v) => format!("{n} {v}"),
    };
    SpanView {
        id: hex::encode(&s.span_id),
        indent: format!("d{}", node.depth.min(MAX_INDENT)),
        class: svc_class(&service),
        service,
        name: s.name.clone(),
        kind: kind_label(s.kind),
        start: fmt_duration(s.start_time_unix_nano.saturating_sub(tree.start_ns)),
        duration: fmt_duration(s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano)),
        self_time: fmt_duration(node.self_ns),
        error: is_error(rec),
        status,
        message: s.status.as_ref().map(|st| st.message.clone()).unwrap_or_default(),
        open,
        attributes: attr_pairs(&s.attributes),
        resource: attr_pairs(&rec.resource.attributes),
        scope,
        events: s
            .events
            .iter()
            .map(|e| EventView {
                at: fmt_duration(e.time_unix_nano.saturating_sub(tree.start_ns)),
                name: e.name.clone(),
                attributes: attr_pairs(&e.attributes),
            })
            .collect(),
        links: s.links.iter().map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id))).collect(),
        warnings: tree.trace.warnings.iter().filter(|w| w.span_id == s.span_id).map(|w| w.message.clone()).collect(),
    }
}

fn stats_view(s: OpStats) -> StatsView {
    StatsView {
        class: svc_class(&s.service),
        service: s.service,
        name: s.name,
        count: s.count,
        total: fmt_duration(s.total_ns),
        self_time: fmt_duration(s.self_ns),
        errors: s.errors,
    }
}

/// `GET /trace/{id}/data`: the compact JSON of the waterfall (errors as `{"error": ...}`).
async fn data(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let loaded = match load(&state, &id, false).await {
        Ok(loaded) => loaded,
        Err(e) => return json_error(e.status, e.message),
    };
    match loaded.json().await {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")], body.to_vec())
            .into_response(),
        Err(e) => json_error(e.status, e.message),
    }
}

fn json_error(status: axum::http::StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

#[derive(Deserialize)]
struct CompareParams {
    with: Option<String>,
}

/// `GET /trace/{id}/compare?with=B`: the trace page's compare form lands here.
async fn compare_form(Path(id): Path<String>, Query(p): Query<CompareParams>) -> Result<Response, UiError> {
    parse_trace_id(&id)?;
    let other = p.with.unwrap_or_default();
    let other = other.trim();
    if other.is_empty() {
        return Err(UiError::bad_request("enter the id of the trace to compare with"));
    }
    parse_trace_id(other)?;
    Ok(Redirect::to(&format!("/trace/{id}/compare/{other}")).into_response())
}

struct DiffView {
    change: &'static str,
    service: String,
    class: String,
    name: String,
    ancestors: String,
    depth: String,
    a_count: usize,
    b_count: usize,
    a_mean: String,
    b_mean: String,
    delta: String,
}

struct Side {
    id: String,
    root: String,
    duration: String,
    spans: usize,
}

#[derive(Template)]
#[template(path = "trace_compare.html")]
struct ComparePage {
    layout: Layout,
    a: Side,
    b: Side,
    added: usize,
    removed: usize,
    slower: usize,
    faster: usize,
    rows: Vec<DiffView>,
}

fn side(t: &TraceTree) -> Side {
    let root = t.order.first().map(|n| &t.trace.spans[n.span]);
    Side {
        id: hex::encode(&t.trace.trace_id),
        root: root.map(|r| format!("{}: {}", service_name(r), r.span.name)).unwrap_or_default(),
        duration: fmt_duration(t.duration_ns),
        spans: t.order.len(),
    }
}

/// `GET /trace/{a}/compare/{b}`.
async fn compare(State(state): State<AppState>, Path((a, b)): Path<(String, String)>) -> Result<Response, UiError> {
    parse_trace_id(&a)?;
    parse_trace_id(&b)?;
    let (la, lb) = tokio::try_join!(load(&state, &a, false), load(&state, &b, false))?;
    let (ta, tb) = (la.tree.clone(), lb.tree.clone());
    let (ta, tb, rows): (Arc<TraceTree>, Arc<TraceTree>, Vec<DiffRow>) = tokio::task::spawn_blocking(move || {
        let rows = diff::diff(&ta, &tb);
        (ta, tb, rows)
    })
    .await
    .map_err(internal)?;
    let count = |c: Change| rows.iter().filter(|r| r.change == c).count();
    let layout = Layout::new("Compare traces", Nav::Traces, &["trace.css"]);
    let page = ComparePage {
        layout,
        a: side(&ta),
        b: side(&tb),
        added: count(Change::Added),
        removed: count(Change::Removed),
        slower: count(Change::Slower),
        faster: count(Change::Faster),
        rows: rows
            .iter()
            .map(|r| {
                let d = r.delta_ns();
                DiffView {
                    change: r.change.label(),
                    service: r.service().to_string(),
                    class: svc_class(r.service()),
                    name: r.name().to_string(),
                    ancestors: r.ancestors(),
                    depth: format!("d{}", (r.path.len() as u32).saturating_sub(1).min(MAX_INDENT)),
                    a_count: r.a_count,
                    b_count: r.b_count,
                    a_mean: if r.a_count > 0 { fmt_duration(r.a_mean_ns) } else { "–".into() },
                    b_mean: if r.b_count > 0 { fmt_duration(r.b_mean_ns) } else { "–".into() },
                    delta: if r.a_count > 0 && r.b_count > 0 {
                        format!("{}{}", if d < 0 { "−" } else { "+" }, fmt_duration(d.unsigned_abs() as u64))
                    } else {
                        String::new()
                    },
                }
            })
            .collect(),
    };
    Ok(render(&page))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use obsbox_storage::{Batch, MemStore, Writer};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::Event};
    use tower::ServiceExt;

    use super::*;

    const A: &str = "0102030405060708090a0b0c0d0e0f10";
    const B: &str = "1112131415161718191a1b1c1d1e1f20";
    const BIG: &str = "2122232425262728292a2b2c2d2e2f30";
    const XSS: &str = "<script>alert(1)</script>";

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(Value::StringValue(v.into())) }),
            ..Default::default()
        }
    }

    fn span(trace: &str, id: u64, parent: Option<u64>, name: &str, start_ms: u64, end_ms: u64) -> Span {
        let t0 = 1_700_000_000_000_000_000u64;
        Span {
            trace_id: hex::decode(trace).unwrap(),
            span_id: id.to_be_bytes().to_vec(),
            parent_span_id: parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
            name: name.into(),
            kind: 2,
            start_time_unix_nano: t0 + start_ms * 1_000_000,
            end_time_unix_nano: t0 + end_ms * 1_000_000,
            status: Some(Status::default()),
            ..Default::default()
        }
    }

    fn request(service: &str, spans: Vec<Span>) -> Batch {
        Batch::Traces(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource { attributes: vec![kv("service.name", service)], ..Default::default() }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        })
    }

    async fn app() -> axum::Router {
        app_and_store().await.0
    }

    async fn app_and_store() -> (axum::Router, Arc<MemStore>) {
        let store = Arc::new(MemStore::new());
        let mut root = span(A, 1, None, "GET /checkout", 0, 100);
        root.attributes = vec![kv("http.route", "/checkout")];
        let mut xss = span(A, 2, Some(1), XSS, 10, 40);
        xss.attributes = vec![kv("note", "</script><script>alert(2)</script>")];
        xss.status = Some(Status { code: 2, message: "<b>bad</b>".into() });
        xss.events = vec![Event {
            time_unix_nano: xss.start_time_unix_nano + 5,
            name: "exception".into(),
            ..Default::default()
        }];
        store.write(request("web", vec![root, xss])).await.unwrap();
        store.write(request("db", vec![span(A, 3, Some(2), "SELECT", 15, 30)])).await.unwrap();
        // B: SELECT slower, a new cache call.
        store
            .write(request("web", vec![span(B, 1, None, "GET /checkout", 0, 200), span(B, 2, Some(1), XSS, 10, 150)]))
            .await
            .unwrap();
        store
            .write(request(
                "db",
                vec![span(B, 3, Some(2), "SELECT", 15, 140), span(B, 4, Some(2), "cache GET", 141, 142)],
            ))
            .await
            .unwrap();
        let mut big = vec![span(BIG, 1, None, "root", 0, 10_000)];
        big.extend((2..=1200).map(|i| span(BIG, i, Some(1), "child", i, i + 1)));
        store.write(request("web", big)).await.unwrap();
        let state =
            crate::AppState::new(store.clone(), prometheus::Registry::new(), Arc::new(AtomicBool::new(true))).unwrap();
        (crate::router(state), store)
    }

    /// What askama makes of `<` and `>`.
    fn escaped(s: &str) -> String {
        s.replace('<', "&#60;").replace('>', "&#62;")
    }

    async fn get(app: &axum::Router, path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
        let resp = app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_page_escapes_span_names_attributes_and_messages() {
        let app = app().await;
        let (status, headers, html) = get(&app, &format!("/trace/{A}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
        assert!(html.contains(&escaped(XSS)), "escaped name shown");
        assert!(!html.contains(XSS), "no raw script from data");
        assert!(!html.contains("<script>alert(2)"), "attribute values escaped");
        assert!(!html.contains("<b>bad</b>"), "status message escaped");
        // Only the page's own scripts, all external.
        assert_eq!(html.matches("<script").count(), 2, "{html}");
        assert!(!html.contains("<script>"), "no inline script");
        assert!(!html.contains(" style="), "no inline style (the CSP forbids it)");
        let download = format!("/api/v1/traces/{A}?format=otlp&amp;download=true");
        for needle in ["GET /checkout", "SELECT", "0000000000000002", "http.route", "trace.js", "Statistics", &download]
        {
            assert!(html.contains(needle), "{needle} missing");
        }
        // Indentation by depth: root, its child, the grandchild.
        let d0 = html.find("class=\"d0\"").unwrap();
        let d1 = html.find("class=\"d1\"").unwrap();
        let d2 = html.find("class=\"d2\"").unwrap();
        assert!(d0 < d1 && d1 < d2);
    }

    #[tokio::test]
    async fn the_data_is_json_with_the_raw_text() {
        let app = app().await;
        let (status, headers, body) = get(&app, &format!("/trace/{A}/data")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        let strings: Vec<&str> = j["strings"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert!(strings.contains(&XSS), "the script gets the text as it is and inserts it as text");
        assert_eq!(j["spans"].as_array().unwrap().len(), 3);
        assert_eq!(j["spans"][1][11], 2, "status error");
        assert_eq!(j["spans"][1][15][0][0], 10_000_005, "event offset");

        assert_eq!(get(&app, &format!("/trace/{B}0/data")).await.0, StatusCode::BAD_REQUEST);
        let (status, _, body) = get(&app, "/trace/000102030405060708090a0b0c0d0eff/data").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("not found"), "{body}");
    }

    #[tokio::test]
    async fn unknown_and_bad_ids() {
        let app = app().await;
        let (status, headers, html) = get(&app, "/trace/000102030405060708090a0b0c0d0eff").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
        assert!(html.contains("not found"), "{html}");
        let (status, _, html) = get(&app, "/trace/%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(html.contains("not a trace id") && !html.contains(XSS), "{html}");
        for bad in ["?span=zz", "?span=0102", "?page=0", "?page=x", "?page=2", "?view=sideways"] {
            let (status, _, html) = get(&app, &format!("/trace/{A}{bad}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {html}");
        }
    }

    #[tokio::test]
    async fn big_traces_are_paged_and_a_span_opens_on_its_page() {
        let app = app().await;
        let (status, _, html) = get(&app, &format!("/trace/{BIG}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(html.matches("<details").count(), PAGE_ROWS);
        let pages = 1200usize.div_ceil(PAGE_ROWS);
        assert!(html.contains(&format!("Page 1 of {pages}")) && html.contains("page=2"), "pager shown");
        // Span 1100 is at position 1099, opened and marked on its page.
        let id = hex::encode(1100u64.to_be_bytes());
        let (_, _, html) = get(&app, &format!("/trace/{BIG}?span={id}")).await;
        assert!(html.contains(&format!("Page {} of {pages}", 1099 / PAGE_ROWS + 1)));
        assert!(html.contains(&format!("id=\"span-{id}\" class=\" selected\"")), "selected row marked");
        assert_eq!(html.matches("<details open>").count(), 1);
    }

    #[tokio::test]
    async fn compare_lists_added_and_slower_spans() {
        let app = app().await;
        let (status, _, html) = get(&app, &format!("/trace/{A}/compare/{B}")).await;
        assert_eq!(status, StatusCode::OK, "{html}");
        assert!(html.contains("1 added"), "{html}");
        let added = html.find("chg-added").unwrap();
        assert!(html[added..].contains("cache GET"));
        assert!(html.contains("chg-slower"));
        assert!(html.contains(&escaped(XSS)) && !html.contains(XSS));

        let (status, headers, _) = get(&app, &format!("/trace/{A}?compare={B}")).await;
        assert!(status.is_redirection());
        assert_eq!(headers[header::LOCATION], format!("/trace/{A}/compare/{B}").as_str());
        let (status, headers, _) = get(&app, &format!("/trace/{A}/compare?with=+{B}+")).await;
        assert!(status.is_redirection());
        assert_eq!(headers[header::LOCATION], format!("/trace/{A}/compare/{B}").as_str());
        assert_eq!(get(&app, &format!("/trace/{A}/compare?with=nope")).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(get(&app, &format!("/trace/{A}/compare?with=")).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(get(&app, &format!("/trace/{A}/compare/xyz")).await.0, StatusCode::BAD_REQUEST);
        let missing = "000102030405060708090a0b0c0d0eff";
        assert_eq!(get(&app, &format!("/trace/{A}/compare/{missing}")).await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn the_page_reads_afresh_and_its_data_request_reuses_the_layout() {
        let (app, store) = app_and_store().await;
        let (_, _, html) = get(&app, &format!("/trace/{A}")).await;
        assert!(html.contains("<b>3</b> spans"), "{html}");
        store.write(request("db", vec![span(A, 9, Some(1), "late span", 50, 60)])).await.unwrap();
        // The data request right after the page gets the page's layout...
        let (_, _, body) = get(&app, &format!("/trace/{A}/data")).await;
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(j["spans"].as_array().unwrap().len(), 3);
        // ...a reload sees the span that arrived since, and so does its data request.
        let (_, _, html) = get(&app, &format!("/trace/{A}")).await;
        assert!(html.contains("<b>4</b> spans") && html.contains("late span"));
        let (_, _, body) = get(&app, &format!("/trace/{A}/data")).await;
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(j["spans"].as_array().unwrap().len(), 4);
    }
}
