//! The native API (`/api/v1`) over a real `DiskStore`, driven with `oneshot`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use obsbox_query_ui::{AppState, router};
use obsbox_storage::{Batch, DiskStore, Reader, SpanPredicate, SpanQuery, StoreConfig, TimeRange, Writer};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::Value as Json;
use tower::ServiceExt;

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn resource(service: &str) -> Resource {
    Resource { attributes: vec![kv("service.name", Value::StringValue(service.into()))], ..Default::default() }
}

fn tid(n: u8) -> Vec<u8> {
    let mut v = vec![0x11; 16];
    v[15] = n;
    v
}

fn sid(n: u8) -> Vec<u8> {
    vec![0x22, 0, 0, 0, 0, 0, 0, n]
}

struct Fixture {
    _dir: tempfile::TempDir,
    app: Router,
    t0: u64,
    store: Arc<DiskStore>,
}

#[allow(clippy::too_many_arguments)]
/// Trace n: frontend GET /cart (root, server) -> cart "SELECT" (client, db); trace 3 errors.
fn span(
    trace: u8,
    id: u8,
    parent: Option<u8>,
    name: &str,
    kind: i32,
    start: u64,
    dur: u64,
    attrs: Vec<KeyValue>,
) -> Span {
    Span {
        trace_id: tid(trace),
        span_id: sid(id),
        parent_span_id: parent.map(sid).unwrap_or_default(),
        name: name.into(),
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: start + dur,
        attributes: attrs,
        status: Some(Status { code: if trace == 3 && id == 2 { 2 } else { 0 }, message: String::new() }),
        ..Default::default()
    }
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
    let t0 = now_ns() - 60_000_000_000;
    let mut front = Vec::new();
    let mut cart = Vec::new();
    for t in 1..=4u8 {
        let start = t0 + t as u64 * 1_000_000_000;
        let route = if t % 2 == 0 { "/cart" } else { "/checkout" };
        front.push(span(
            t,
            1,
            None,
            &format!("GET {route}"),
            2,
            start,
            10_000_000 * t as u64,
            vec![
                kv("http.route", Value::StringValue(route.into())),
                kv("http.response.status_code", Value::IntValue(200)),
            ],
        ));
        cart.push(span(
            t,
            2,
            Some(1),
            "SELECT",
            3,
            start + 1_000_000,
            2_000_000,
            vec![kv("db.system", Value::StringValue("sqlite".into()))],
        ));
    }
    let traces = ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(resource("frontend")),
                scope_spans: vec![ScopeSpans { spans: front, ..Default::default() }],
                ..Default::default()
            },
            ResourceSpans {
                resource: Some(resource("cart")),
                scope_spans: vec![ScopeSpans { spans: cart, ..Default::default() }],
                ..Default::default()
            },
        ],
    };
    store.write(Batch::Traces(traces)).await.unwrap();
    let logs: Vec<LogRecord> = (0..10u8)
        .map(|i| LogRecord {
            time_unix_nano: t0 + (i as u64 / 2) * 1_000_000_000,
            severity_number: if i % 3 == 0 { 17 } else { 9 },
            severity_text: if i % 3 == 0 { "ERROR" } else { "INFO" }.into(),
            body: Some(AnyValue { value: Some(Value::StringValue(format!("request {i} payment timeout"))) }),
            trace_id: tid(i % 4 + 1),
            span_id: sid(1 + i % 2),
            attributes: vec![kv("user.id", Value::StringValue(format!("u{}", i % 2)))],
            ..Default::default()
        })
        .collect();
    store
        .write(Batch::Logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource("frontend")),
                scope_logs: vec![ScopeLogs { log_records: logs, ..Default::default() }],
                ..Default::default()
            }],
        }))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let spans =
            store.find_spans(&SpanQuery { predicate: SpanPredicate::All, time: TimeRange::ALL, limit: 100 }).unwrap();
        let logs = store.stats().pending_items.iter().all(|(_, n)| *n == 0);
        if spans.len() == 8 && logs {
            break;
        }
        assert!(Instant::now() < deadline, "data not visible");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = AppState::new(store.clone(), prometheus::Registry::new(), Arc::new(AtomicBool::new(true))).unwrap();
    Fixture { _dir: dir, app: router(state), t0, store }
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Json) {
    let resp = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&body).into())))
}

fn window(f: &Fixture) -> String {
    format!("start={}&end={}", f.t0, f.t0 + 120_000_000_000)
}

#[tokio::test]
async fn services_operations_and_trace_search() {
    let f = fixture().await;
    let w = window(&f);
    let (s, body) = get(&f.app, &format!("/api/v1/services?{w}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["services"], serde_json::json!(["cart", "frontend"]));
    let (_, body) = get(&f.app, &format!("/api/v1/services/frontend/operations?{w}")).await;
    assert_eq!(
        body["operations"],
        serde_json::json!([{"name": "GET /cart", "kind": "server"}, {"name": "GET /checkout", "kind": "server"}])
    );
    let (_, body) = get(&f.app, &format!("/api/v1/services/cart/operations?kind=server&{w}")).await;
    assert_eq!(body["operations"], serde_json::json!([]));

    let ids = |b: &Json| {
        b["traces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["traceId"].as_str().unwrap()[30..].to_string())
            .collect::<Vec<_>>()
    };
    let (_, body) = get(&f.app, &format!("/api/v1/traces?service=frontend&{w}")).await;
    assert_eq!(ids(&body), vec!["04", "03", "02", "01"], "newest first");
    let first = &body["traces"][0];
    assert_eq!(first["rootService"], "frontend");
    assert_eq!(first["rootName"], "GET /cart");
    assert_eq!(first["spanCount"], 2);
    assert_eq!(first["durationNs"], 40_000_000);
    assert_eq!(
        first["services"],
        serde_json::json!([{"service": "cart", "spans": 1}, {"service": "frontend", "spans": 1}])
    );
    let filter = urlencode(r#"http.route = "/cart" AND http.response.status_code = 200"#);
    let (_, body) = get(&f.app, &format!("/api/v1/traces?filter={filter}&{w}")).await;
    assert_eq!(ids(&body), vec!["04", "02"]);
    let filter = urlencode(r#"http.route =~ "/ch.*" OR db.system = sqlite"#);
    let (_, body) = get(&f.app, &format!("/api/v1/traces?filter={filter}&limit=2&{w}")).await;
    assert_eq!(ids(&body), vec!["04", "03"], "OR, limit");
    let (_, body) = get(&f.app, &format!("/api/v1/traces?status=error&{w}")).await;
    assert_eq!(ids(&body), vec!["03"]);
    assert_eq!(body["traces"][0]["errorCount"], 1);
    let (_, body) = get(&f.app, &format!("/api/v1/traces?minDuration=25ms&service=frontend&{w}")).await;
    assert_eq!(ids(&body), vec!["04", "03"]);
    let (_, body) = get(&f.app, &format!("/api/v1/traces?rootOperation=GET%20/checkout&{w}")).await;
    assert_eq!(ids(&body), vec!["03", "01"], "trace-level: root operation");
    let (_, body) = get(&f.app, &format!("/api/v1/traces?service=cart&maxTraceDuration=25ms&{w}")).await;
    assert_eq!(ids(&body), vec!["02", "01"], "trace-level: total duration");
    let (_, body) = get(
        &f.app,
        &format!(
            "/api/v1/traces?filter={}&{w}",
            urlencode("NOT exists(db.system) AND resource.service.name = frontend")
        ),
    )
    .await;
    assert_eq!(ids(&body).len(), 4);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn trace_by_id_in_every_format_and_its_logs() {
    let f = fixture().await;
    let id = hex::encode(tid(3));
    let (s, body) = get(&f.app, &format!("/api/v1/traces/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["traceId"], id);
    assert_eq!(body["spans"].as_array().unwrap().len(), 2);
    assert_eq!(body["spans"][0]["service"], "frontend");
    assert_eq!(body["spans"][0]["span"]["name"], "GET /checkout");
    assert_eq!(body["spans"][1]["span"]["parentSpanId"], hex::encode(sid(1)));
    assert_eq!(body["resources"].as_array().unwrap().len(), 2);
    let (_, otlp) = get(&f.app, &format!("/api/v1/traces/{id}?format=otlp")).await;
    assert_eq!(otlp["resourceSpans"].as_array().unwrap().len(), 2, "regrouped by resource");
    assert_eq!(otlp["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"], id);
    let (_, jaeger) = get(&f.app, &format!("/api/v1/traces/{id}?format=jaeger")).await;
    assert_eq!(jaeger["data"][0]["traceID"], id);
    assert_eq!(jaeger["data"][0]["spans"].as_array().unwrap().len(), 2);
    let resp = f
        .app
        .clone()
        .oneshot(Request::get(format!("/api/v1/traces/{id}?format=otlp&download=true")).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(resp.headers()["content-disposition"].to_str().unwrap().contains("attachment"));
    let (s, _) = get(&f.app, &format!("/api/v1/traces/{}", hex::encode(tid(99)))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (_, logs) = get(&f.app, &format!("/api/v1/traces/{id}/logs")).await;
    assert_eq!(logs["logs"].as_array().unwrap().len(), 2, "records 2 and 6 carry trace 3");
    let (_, logs) = get(&f.app, &format!("/api/v1/traces/{id}/logs?spanId={}", hex::encode(sid(1)))).await;
    let logs = logs["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0]["traceId"], id, "a record links back to its trace");
}

#[tokio::test]
async fn log_search_pagination_histogram_and_attributes() {
    let f = fixture().await;
    let w = window(&f);
    let (s, body) = get(&f.app, &format!("/api/v1/logs?query=timeout&{w}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["logs"].as_array().unwrap().len(), 10);
    let (_, body) =
        get(&f.app, &format!("/api/v1/logs?query={}&{w}", urlencode("payment severity:ERROR attributes.user.id:u0")))
            .await;
    let bodies: Vec<&str> =
        body["logs"].as_array().unwrap().iter().map(|l| l["record"]["body"]["stringValue"].as_str().unwrap()).collect();
    assert_eq!(bodies, vec!["request 6 payment timeout", "request 0 payment timeout"]);

    // Pages of 3 over 10 records, 2 per timestamp: every record exactly once, newest first.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let (_, page) = get(&f.app, &format!("/api/v1/logs?limit=3&{w}{cursor}")).await;
        for l in page["logs"].as_array().unwrap() {
            seen.push(l["record"]["body"]["stringValue"].as_str().unwrap().to_string());
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen.len(), 10, "{seen:?}");
    assert_eq!(sorted.len(), 10);

    let (_, h) =
        get(&f.app, &format!("/api/v1/logs/histogram?query=payment&start={}&end={}", f.t0, f.t0 + 60_000_000_000))
            .await;
    assert_eq!(h["bucketNs"], 1_000_000_000u64);
    assert_eq!(h["total"], 10);
    let buckets = h["buckets"].as_array().unwrap();
    // Buckets sit on multiples of the bucket size, so an unaligned range touches 61 of them.
    assert_eq!(buckets.len(), 61);
    assert!(buckets[0]["start"].as_str().unwrap().parse::<u64>().unwrap() <= f.t0);
    let counts: Vec<u64> = buckets.iter().map(|b| b["count"].as_u64().unwrap()).filter(|c| *c > 0).collect();
    assert_eq!(counts, vec![2, 2, 2, 2, 2], "two records per second over five seconds");

    let (_, keys) = get(&f.app, "/api/v1/attributes?signal=traces&lookback=1h").await;
    assert_eq!(keys["keys"], serde_json::json!(["db.system", "http.response.status_code", "http.route"]));
    let (_, vals) = get(&f.app, "/api/v1/attributes/http.route/values?lookback=1h").await;
    assert_eq!(vals["values"].as_array().unwrap().len(), 2);
    assert_eq!(vals["values"][0]["count"], 2);
    let (_, vals) = get(&f.app, "/api/v1/attributes/user.id/values?signal=logs&lookback=1h").await;
    assert_eq!(vals["values"].as_array().unwrap().len(), 2);

    let (_, deps) = get(&f.app, &format!("/api/v1/dependencies?{w}")).await;
    assert_eq!(
        deps["dependencies"],
        serde_json::json!([{"parent": "frontend", "child": "cart", "callCount": 4, "errorCount": 1}])
    );
}

#[tokio::test]
async fn bad_requests_are_400_with_a_message() {
    let f = fixture().await;
    for (uri, needle) in [
        ("/api/v1/traces?filter=a%20%3D", "expected a value"),
        ("/api/v1/traces?filter=a%20%3D~%20%22(%22", "bad regular expression"),
        ("/api/v1/traces?limit=100000", "limit"),
        ("/api/v1/traces?start=2&end=1", "end must be after start"),
        ("/api/v1/traces?minDuration=soon", "minDuration"),
        ("/api/v1/traces?kind=sideways", "kind"),
        ("/api/v1/traces/xyz", "32 hex digits"),
        ("/api/v1/traces/0011?format=png", "32 hex digits"),
        ("/api/v1/logs?query=%22unterminated", "unterminated"),
        ("/api/v1/logs?query=colour%3Ared", "unknown field"),
        ("/api/v1/logs?query=a%20AND", ""),
        ("/api/v1/logs?cursor=zzz", "cursor"),
        ("/api/v1/logs?limit=0", "limit"),
        ("/api/v1/attributes?signal=metrics", "signal"),
        ("/api/v1/logs/histogram?start=yesterday", "RFC 3339"),
    ] {
        let (s, body) = get(&f.app, uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(body["error"].as_str().unwrap_or("").contains(needle), "{uri}: {body}");
    }
}

#[tokio::test]
async fn openapi_document_lists_every_endpoint() {
    let f = fixture().await;
    let (s, doc) = get(&f.app, "/api/v1/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/services",
        "/api/v1/services/{service}/operations",
        "/api/v1/traces",
        "/api/v1/traces/{trace_id}",
        "/api/v1/traces/{trace_id}/logs",
        "/api/v1/attributes",
        "/api/v1/attributes/{key}/values",
        "/api/v1/logs",
        "/api/v1/logs/histogram",
        "/api/v1/logs/tail",
        "/api/v1/dependencies",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the OpenAPI document");
    }
    let params: Vec<&str> = doc["paths"]["/api/v1/traces"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(params.contains(&"filter") && params.contains(&"minTraceDuration"), "{params:?}");
}

#[tokio::test]
async fn live_tail_streams_new_records() {
    let f = fixture().await;
    let resp = f
        .app
        .clone()
        .oneshot(Request::get("/api/v1/logs/tail?query=tailme").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut body = resp.into_body();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let record = LogRecord {
        time_unix_nano: now_ns(),
        body: Some(AnyValue { value: Some(Value::StringValue("tailme now".into())) }),
        ..Default::default()
    };
    f.store
        .write(Batch::Logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource("tail")),
                scope_logs: vec![ScopeLogs { log_records: vec![record], ..Default::default() }],
                ..Default::default()
            }],
        }))
        .await
        .unwrap();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    while !text.contains("tailme now") {
        let frame = tokio::time::timeout_at(deadline.into(), body.frame()).await.expect("an event within 8 s");
        if let Some(Ok(frame)) = frame
            && let Some(d) = frame.data_ref()
        {
            text.push_str(&String::from_utf8_lossy(d));
        }
    }
    assert!(text.contains("event: log"), "{text}");
}
