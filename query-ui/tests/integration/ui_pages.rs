//! The web UI's pages through the router (`oneshot`): status, key content, the state in the URL,
//! escaping of untrusted text and the security headers. One `DiskStore` holds spans, logs and
//! contract-shaped derived metrics (as the collector writes them) around now.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use obsbox_query_ui::{AppState, router};
use obsbox_storage::{Batch, DiskStore, Reader, StoreConfig, Writer};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use tower::ServiceExt;

const EVIL: &str = "<script>alert(1)</script>";
/// `EVIL` as askama escapes it (numeric character references).
const EVIL_ESCAPED: &str = "&#60;script&#62;alert(1)&#60;/script&#62;";
const S: u64 = 1_000_000_000;
/// The contract's duration bounds (ms).
const BOUNDS: [f64; 16] =
    [2., 4., 6., 8., 10., 50., 100., 200., 400., 800., 1000., 1400., 2000., 5000., 10000., 15000.];

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

fn resource(service: &str) -> Resource {
    Resource { attributes: vec![kv("service.name", service)], ..Default::default() }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

struct Fixture {
    _dir: tempfile::TempDir,
    app: Router,
    trace_id: String,
    span_id: String,
}

/// A span of trace `trace`; the spans of trace 2 have status error.
fn span(trace: u8, id: u8, parent: Option<u8>, name: &str, kind: i32, start: u64, ms: u64) -> Span {
    let error = trace == 2;
    Span {
        trace_id: vec![0xab, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, trace],
        span_id: vec![0xcd, 0, 0, 0, 0, 0, trace, id],
        parent_span_id: parent.map(|p| vec![0xcd, 0, 0, 0, 0, 0, trace, p]).unwrap_or_default(),
        name: name.into(),
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: start + ms * 1_000_000,
        attributes: vec![kv("http.route", "/cart")],
        status: Some(Status { code: if error { 2 } else { 0 }, message: String::new() }),
        ..Default::default()
    }
}

fn resource_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(resource(service)),
        scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
        ..Default::default()
    }
}

fn calls_point(attrs: &[(&str, &str)], start: u64, t: u64, v: i64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
        start_time_unix_nano: start,
        time_unix_nano: t,
        value: Some(number_data_point::Value::AsInt(v)),
        ..Default::default()
    }
}

fn sum(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        data: Some(Data::Sum(Sum { data_points: points, aggregation_temporality: 2, is_monotonic: true })),
        ..Default::default()
    }
}

/// The derived metrics as the collector writes them: `api` served `GET /cart` 420 times (20
/// errors) between 30 and 10 minutes ago, every call between 10 and 50 ms; `frontend` called
/// `api` 50 times, 5 failed.
fn derived_metrics(now: u64) -> ExportMetricsServiceRequest {
    let start = now - 1800 * S;
    let (t1, t2) = (now - 1200 * S, now - 600 * S);
    let dims = |status: &'static str| {
        [
            ("service.name", "api"),
            ("span.name", "GET /cart"),
            ("span.kind", "SPAN_KIND_SERVER"),
            ("status.code", status),
        ]
    };
    let ok = dims("STATUS_CODE_UNSET");
    let err = dims("STATUS_CODE_ERROR");
    let hist = |t: u64, n: u64| {
        let mut buckets = vec![0u64; 17];
        buckets[5] = n; // (10, 50]
        HistogramDataPoint {
            attributes: ok.iter().map(|(k, v)| kv(k, v)).collect(),
            start_time_unix_nano: start,
            time_unix_nano: t,
            count: n,
            sum: Some(n as f64 * 30.0),
            bucket_counts: buckets,
            explicit_bounds: BOUNDS.to_vec(),
            ..Default::default()
        }
    };
    let spanmetrics = ResourceMetrics {
        resource: Some(resource("api")),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(InstrumentationScope { name: "obsbox.spanmetrics".into(), ..Default::default() }),
            metrics: vec![
                sum(
                    "traces.span.metrics.calls",
                    vec![
                        calls_point(&ok, start, t1, 100),
                        calls_point(&err, start, t1, 10),
                        calls_point(&ok, start, t2, 400),
                        calls_point(&err, start, t2, 20),
                    ],
                ),
                Metric {
                    name: "traces.span.metrics.duration".into(),
                    unit: "ms".into(),
                    data: Some(Data::Histogram(Histogram {
                        data_points: vec![hist(t1, 100), hist(t2, 400)],
                        aggregation_temporality: 2,
                    })),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let edge = [("client", "frontend"), ("server", "api"), ("connection_type", "")];
    let graph = ResourceMetrics {
        resource: Some(Resource::default()),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(InstrumentationScope { name: "obsbox.servicegraph".into(), ..Default::default() }),
            metrics: vec![
                sum(
                    "traces_service_graph_request_total",
                    vec![calls_point(&edge, start, t1, 10), calls_point(&edge, start, t2, 50)],
                ),
                sum(
                    "traces_service_graph_request_failed_total",
                    vec![calls_point(&edge, start, t1, 1), calls_point(&edge, start, t2, 5)],
                ),
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    ExportMetricsServiceRequest { resource_metrics: vec![spanmetrics, graph] }
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        DiskStore::open(StoreConfig {
            data_dir: dir.path().to_path_buf(),
            commit_interval: Duration::from_millis(100),
            index_memory_bytes: 32 << 20,
            ..StoreConfig::default()
        })
        .unwrap(),
    );
    let now = now_ns();
    let t0 = now - 60 * S;
    // trace 1: frontend -> api; trace 2: the evil service and span name, with an error
    let traces = ExportTraceServiceRequest {
        resource_spans: vec![
            resource_spans(
                "frontend",
                vec![span(1, 1, None, "GET /", 2, t0, 120), span(1, 2, Some(1), "call api", 3, t0 + S / 100, 80)],
            ),
            resource_spans("api", vec![span(1, 3, Some(2), "GET /cart", 2, t0 + S / 50, 60)]),
            resource_spans(EVIL, vec![span(2, 1, None, EVIL, 2, t0 + 10 * S, 30)]),
        ],
    };
    store.write(Batch::Traces(traces)).await.unwrap();
    let log = |n: u64, body: &str, sev: i32, text: &str, ids: bool| LogRecord {
        time_unix_nano: now - (100 - n) * S,
        observed_time_unix_nano: now - (100 - n) * S,
        severity_number: sev,
        severity_text: text.into(),
        body: Some(AnyValue { value: Some(Value::StringValue(body.into())) }),
        attributes: vec![kv("http.route", "/cart")],
        trace_id: if ids { vec![0xab, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1] } else { vec![] },
        span_id: if ids { vec![0xcd, 0, 0, 0, 0, 0, 1, 3] } else { vec![] },
        ..Default::default()
    };
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![
            ResourceLogs {
                resource: Some(resource("api")),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![
                        log(1, "cart timeout after 3 retries", 17, "ERROR", true),
                        log(2, "cart loaded", 9, "INFO", false),
                        log(3, "cart timeout again", 13, "WARN", false),
                        log(4, &format!("timeout {EVIL}"), 9, "INFO", false),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            },
            ResourceLogs {
                resource: Some(resource("frontend")),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![log(5, "page rendered, no timeout", 9, "INFO", false)],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    };
    store.write(Batch::Logs(logs)).await.unwrap();
    store.write(Batch::Metrics(derived_metrics(now))).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.stats().pending_items.iter().any(|(_, n)| *n > 0) {
        assert!(Instant::now() < deadline, "the store did not index the fixture");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = AppState::new(store, prometheus::Registry::new(), Arc::new(AtomicBool::new(true))).unwrap();
    Fixture {
        _dir: dir,
        app: router(state),
        trace_id: "ab000000000000000000000000000001".into(),
        span_id: "cd00000000000103".into(),
    }
}

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn get(app: &Router, uri: &str) -> Page {
    let resp = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    if std::env::var("UI_DUMP").is_ok() {
        std::fs::write(format!("/tmp/ui_dump/{}.html", uri.replace(['/', '?', '&'], "_")), &body).unwrap();
    }
    Page { status, headers, body }
}

/// A UI page: HTML, the CSP and nosniff headers, and no unescaped `EVIL`.
fn assert_safe_page(p: &Page, uri: &str) {
    assert!(
        p.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"),
        "{uri}: {:?}",
        p.headers[header::CONTENT_TYPE]
    );
    let csp =
        p.headers.get(header::CONTENT_SECURITY_POLICY).unwrap_or_else(|| panic!("{uri}: no CSP")).to_str().unwrap();
    for d in ["script-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"] {
        assert!(csp.contains(d), "{uri}: CSP {csp:?} lacks {d}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{uri}: {csp}");
    assert_eq!(p.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{uri}");
    assert!(!p.body.contains(EVIL), "{uri}: unescaped script in the page");
    // every script is an external file or a JSON data block
    for (i, _) in p.body.match_indices("<script") {
        let tag = &p.body[i..p.body[i..].find('>').map(|j| i + j).unwrap()];
        assert!(tag.contains(" src=") || tag.contains("type=\"application/json\""), "{uri}: inline script {tag}");
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&#38;").replace('<', "&#60;").replace('>', "&#62;").replace('"', "&#34;")
}

#[tokio::test]
async fn services_page_shows_rates_errors_and_latency_from_the_derived_metrics() {
    let f = fixture().await;
    let uri = "/services?range=1h";
    let p = get(&f.app, uri).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_safe_page(&p, uri);
    assert!(p.body.contains("GET /cart"));
    // 420 calls in an hour, 20 failed, all between 10 and 50 ms
    assert!(p.body.contains(">7.0/min<"), "request rate missing");
    assert!(p.body.contains(">4.8%<"), "error rate missing");
    assert!(p.body.contains(">30.0ms<") && p.body.contains(">49.6ms<"), "quantiles missing");
    assert!(p.body.contains("<svg class=\"spark\""), "no sparkline");
    assert!(
        p.body.contains("href=\"/search?range=1h&#38;service=api&#38;operation=GET+%2Fcart\""),
        "no link to traces"
    );
    // the evil service only has spans: listed, escaped, without metrics
    assert!(p.body.contains(EVIL_ESCAPED));
    assert!(p.body.contains("no metrics yet"));

    // sorting is in the URL, and the sorted column's link flips the direction
    let uri = "/services?range=1h&sort=p95&dir=desc";
    let p = get(&f.app, uri).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("sort=p95&#38;dir=asc\" class=\"sorted\">p95 ▼"), "{}", p.body);
    // one service only
    let p = get(&f.app, "/services?range=1h&service=api").await;
    assert!(p.body.contains("GET /cart") && !p.body.contains(EVIL_ESCAPED));

    let p = get(&f.app, "/services?sort=fastest").await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("sort &#34;fastest&#34; is not one of"), "{}", p.body);
    let p = get(&f.app, "/services?range=soon").await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn services_page_without_metrics_lists_what_spans_show() {
    let f = fixture().await;
    // the metrics are 10+ minutes old; the spans a minute old
    let p = get(&f.app, "/services?range=5m").await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("No metrics yet"), "{}", p.body);
    for s in ["frontend", "api", "GET /cart", "call api"] {
        assert!(p.body.contains(s), "{s} missing");
    }
}

#[tokio::test]
async fn trace_search_lists_and_plots_results_and_keeps_its_state_in_the_url() {
    let f = fixture().await;
    let uri = "/search?service=frontend&range=1h";
    let p = get(&f.app, uri).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_safe_page(&p, uri);
    let href = format!("href=\"/trace/{}\"", f.trace_id);
    assert_eq!(p.body.matches(&href).count(), 2, "one dot and one row link");
    assert!(p.body.contains("<circle class=\"dot\""));
    assert!(p.body.contains(">1 trace<"));
    assert!(p.body.contains("value=\"frontend\""), "the form shows the query");
    assert!(p.body.contains("<option value=\"1h\" selected>"));
    // autocomplete lists
    assert!(p.body.contains("<option value=\"api\"><option value=\"frontend\"></datalist>"));
    assert!(p.body.contains("<option value=\"http.route = \">"));

    // all traces: the evil one is shown escaped, with its error
    let uri = "/search?range=1h&sort=longest";
    let p = get(&f.app, uri).await;
    assert_safe_page(&p, uri);
    assert!(p.body.contains(EVIL_ESCAPED));
    assert!(p.body.contains(">2 traces<"));
    assert!(p.body.contains("<circle class=\"dot err\""));
    assert!(p.body.contains("class=\"active\">Longest first<"));

    // every filter of the API
    let filter =
        "/search?range=1h&status=error&minDuration=10ms&maxDuration=1s&filter=http.route+%3D+%22%2Fcart%22&limit=5";
    let p = get(&f.app, filter).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(p.body.contains(">1 trace<") && p.body.contains(EVIL_ESCAPED), "{}", p.body);
    assert!(p.body.contains(&format!("value=\"{}\"", html_escape("http.route = \"/cart\""))), "filter echoed");
    let p = get(&f.app, "/search?range=1h&rootService=frontend&minTraceDuration=100ms").await;
    assert!(p.body.contains(">1 trace<"), "{}", p.body);
    assert!(p.body.contains("<details class=\"advanced\" open>"));

    // bad input: 400 with the reason, the form kept
    let p = get(&f.app, "/search?range=1h&filter=http.route+%3D%3D+((").await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("class=\"problem\""), "{}", p.body);
    let p = get(&f.app, "/search?minDuration=fast").await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("is not a duration"), "{}", p.body);
    let p = get(&f.app, "/search?limit=many").await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn logs_page_searches_counts_pages_and_links_to_traces() {
    let f = fixture().await;
    let uri = "/logs?query=timeout&range=1h";
    let p = get(&f.app, uri).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_safe_page(&p, uri);
    assert!(p.body.contains(">4 records<"), "histogram total");
    assert!(p.body.contains("class=\"bar\""));
    assert!(p.body.contains("href=\"/logs?query=timeout&#38;from="), "bars narrow the range");
    // newest first
    let (a, b) = (p.body.find("page rendered, no timeout").unwrap(), p.body.find("cart timeout after").unwrap());
    assert!(a < b);
    assert!(p.body.contains(&format!("timeout {EVIL_ESCAPED}")));
    // facets with counts for this query
    assert!(p.body.contains("title=\"add service:api\""), "{}", p.body);
    assert!(p.body.contains("<span class=\"facet-name\">api</span><span class=\"facet-count\">3</span>"));
    assert!(p.body.contains("<span class=\"facet-name\">frontend</span><span class=\"facet-count\">1</span>"));
    // trace and span link
    assert!(p.body.contains(&format!("href=\"/trace/{}?span={}\"", f.trace_id, f.span_id)));
    // the data block for the live tail cannot be closed by a log body
    let json_start = p.body.find("<script type=\"application/json\" id=\"logs-state\">").unwrap();
    let block = &p.body[json_start..];
    let block = &block[..block.find("</script>").unwrap()];
    assert!(block.contains("\"query\":\"timeout\""), "{block}");

    // facet toggled on: the query holds the clause and the counts follow it
    let p = get(&f.app, "/logs?query=timeout+service%3Aapi&range=1h").await;
    assert!(p.body.contains(">3 records<"));
    assert!(p.body.contains("title=\"remove service:api\""));

    // load more: a cursor in the URL continues below the last record shown
    let p = get(&f.app, "/logs?query=timeout&range=1h&limit=2").await;
    assert!(p.body.contains("page rendered") && p.body.contains("timeout &#60;script"));
    assert!(!p.body.contains("cart timeout again"));
    let start = p.body.find("id=\"load-more\" href=\"").unwrap() + "id=\"load-more\" href=\"".len();
    let more = p.body[start..start + p.body[start..].find('"').unwrap()].replace("&#38;", "&");
    assert!(more.contains("cursor="), "{more}");
    let p = get(&f.app, &more).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("cart timeout again") && p.body.contains("cart timeout after"));
    assert!(!p.body.contains("page rendered"));
    assert!(!p.body.contains("id=\"load-more\""), "the last page has no more");
    assert!(p.body.contains("↑ newest"));

    // absolute range: from/to in the URL
    let p = get(&f.app, "/logs?query=cart&from=2024-05-01T10:00&to=2024-05-01T11:00").await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(p.body.contains("value=\"2024-05-01T10:00:00\""));
    assert!(p.body.contains("No records match"));

    let p = get(&f.app, "/logs?query=trace_id%3Axyz").await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
    assert!(p.body.contains("class=\"problem\""));
    let p = get(&f.app, "/logs?cursor=bogus").await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn service_map_draws_edges_from_the_service_graph_metrics_or_the_spans() {
    let f = fixture().await;
    let uri = "/map?range=1h";
    let p = get(&f.app, uri).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_safe_page(&p, uri);
    assert!(p.body.contains("From service graph metrics."), "{}", p.body);
    assert!(p.body.contains("frontend → api: 50 calls"), "{}", p.body);
    assert!(p.body.contains("5 failed (10%)"));
    assert!(p.body.contains("class=\"edge err\""));
    assert!(p.body.contains("href=\"/services?range=1h&#38;service=api\""), "nodes link to their service");

    // a range without the metrics: edges from spans
    let uri = "/map?range=5m";
    let p = get(&f.app, uri).await;
    assert_safe_page(&p, uri);
    assert!(p.body.contains("From spans"), "{}", p.body);
    assert!(p.body.contains("frontend → api: 1 calls"), "{}", p.body);
}

#[tokio::test]
async fn assets_are_embedded_and_cached_by_content_hash() {
    let f = fixture().await;
    let p = get(&f.app, "/").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.headers[header::LOCATION], "/services");
    let page = get(&f.app, "/services").await;
    let start = page.body.find("/static/style.css?v=").unwrap();
    let href = &page.body[start..start + page.body[start..].find('"').unwrap()];
    let css = get(&f.app, href).await;
    assert_eq!(css.status, StatusCode::OK);
    assert_eq!(css.headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
    assert_eq!(css.headers[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
    assert!(css.body.contains(".sc0"));
    let stale = get(&f.app, "/static/style.css?v=0").await;
    assert_eq!(stale.headers[header::CACHE_CONTROL], "no-cache");
    let js = get(&f.app, "/static/logs.js").await;
    assert_eq!(js.headers[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    assert_eq!(get(&f.app, "/static/nope.js").await.status, StatusCode::NOT_FOUND);
    // the APIs keep their own paths and bodies
    let api = get(&f.app, "/api/v1/services").await;
    assert_eq!(api.status, StatusCode::OK);
    assert!(api.body.starts_with('{'));
}

#[tokio::test]
async fn log_facets_count_at_most_fifty_values() {
    let store = Arc::new(obsbox_storage::MemStore::new());
    let now = now_ns();
    let resource_logs = (0..55)
        .map(|i| ResourceLogs {
            resource: Some(resource(&format!("svc-{i:02}"))),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: now - S,
                    body: Some(AnyValue { value: Some(Value::StringValue("hello".into())) }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    store.write(Batch::Logs(ExportLogsServiceRequest { resource_logs })).await.unwrap();
    let state = AppState::new(store, prometheus::Registry::new(), Arc::new(AtomicBool::new(true))).unwrap();
    let app = router(state);
    let p = get(&app, "/logs?range=15m").await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert!(p.body.contains(">55 records<"));
    assert_eq!(p.body.matches("title=\"add service:").count(), 12, "12 values shown");
    assert!(p.body.contains("5 more services not counted"), "{}", p.body);
    // a value named in the query is counted even past the cap
    let p = get(&app, "/logs?range=15m&query=service%3Asvc-54").await;
    assert!(p.body.contains("title=\"remove service:svc-54\""), "{}", p.body);
    assert!(p.body.contains(">1 record<"));
}
