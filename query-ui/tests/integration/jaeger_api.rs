//! The Jaeger-compatible API over a `MemStore` holding known spans: golden Jaeger JSON, the
//! request sequence Grafana's Jaeger datasource sends, search semantics, and bad input (400 with
//! a message, never 500), with arbitrary parameter values.
//!
//! Golden files live in `tests/golden/jaeger/`; `UPDATE_GOLDEN=1 cargo test -p obsbox-query-ui
//! --test integration jaeger_api::` rewrites them (review the diff: they are the Jaeger wire format).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use obsbox_query_ui::{AppState, router};
use obsbox_storage::{Batch, MemStore, Writer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::{Value as Json, json};
use tower::ServiceExt;

/// 2023-11-14T22:13:20Z in Unix ns: every span starts shortly after.
const T0: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;
const T0_US: u64 = T0 / 1000;

const TRACE_A: &str = "5b8efff798038103d269b633813fc60c";
const TRACE_B: &str = "00000000000000000000000000000abc";
const TRACE_C: &str = "c0ffee00c0ffee00c0ffee00c0ffee00";

// ---------------------------------------------------------------------------------------------
// Fixture

fn v(value: Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(value) })
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.into(), value: v(value), ..Default::default() }
}

fn s(key: &str, value: &str) -> KeyValue {
    kv(key, Value::StringValue(value.into()))
}

fn id(hex_id: &str) -> Vec<u8> {
    hex::decode(hex_id).unwrap()
}

fn span_id(byte: u8) -> Vec<u8> {
    vec![byte; 8]
}

fn resource(attrs: Vec<KeyValue>) -> Option<Resource> {
    Some(Resource { attributes: attrs, ..Default::default() })
}

fn scope(name: &str, version: &str) -> Option<InstrumentationScope> {
    Some(InstrumentationScope { name: name.into(), version: version.into(), ..Default::default() })
}

fn status(code: i32, message: &str) -> Option<Status> {
    Some(Status { code, message: message.into() })
}

fn span(trace: &str, id: u8, parent: Option<u8>, name: &str, kind: i32, start_ms: u64, end_ms: u64) -> Span {
    Span {
        trace_id: self::id(trace),
        span_id: span_id(id),
        parent_span_id: parent.map(span_id).unwrap_or_default(),
        name: name.into(),
        kind,
        start_time_unix_nano: T0 + start_ms * MS,
        end_time_unix_nano: T0 + end_ms * MS,
        ..Default::default()
    }
}

fn resource_spans(resource: Option<Resource>, scope: Option<InstrumentationScope>, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource,
        scope_spans: vec![ScopeSpans { scope, spans, schema_url: String::new() }],
        schema_url: String::new(),
    }
}

/// Three traces:
/// - A: frontend `GET /checkout` (server, error) -> frontend `call payment` (client) -> payment
///   `POST /pay` (server, error, clock-skewed 2 ms early) -> payment `publish order` (producer,
///   two links) -> worker `consume order` (consumer). Every attribute type, events, trace state.
/// - B (short id `abc`): one internal span of a resource without attributes, whose parent is
///   missing.
/// - C: frontend `GET /health` (server, 1 ms, status 200).
fn fixture() -> ExportTraceServiceRequest {
    let mut s1 = span(TRACE_A, 0x11, None, "GET /checkout", 2, 0, 50);
    s1.attributes = vec![
        s("http.request.method", "GET"),
        kv("http.response.status_code", Value::IntValue(500)),
        s("http.route", "/checkout"),
    ];
    s1.status = status(2, "payment failed");
    s1.flags = 0x301; // sampled, with the OTLP "is remote" bits above the W3C flags
    s1.trace_state = "obsbox=1".into();
    s1.events = vec![Event {
        time_unix_nano: T0 + 40 * MS,
        name: "exception".into(),
        attributes: vec![s("exception.type", "PaymentError"), s("exception.message", "card declined")],
        dropped_attributes_count: 0,
    }];

    let mut s2 = span(TRACE_A, 0x22, Some(0x11), "call payment", 3, 5, 45);
    s2.flags = 1;
    s2.attributes = vec![
        s("peer.service", "payment"),
        kv(
            "tags.list",
            Value::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue { value: Some(Value::StringValue("a".into())) },
                    AnyValue { value: Some(Value::IntValue(1)) },
                    AnyValue { value: Some(Value::BoolValue(true)) },
                    AnyValue { value: Some(Value::DoubleValue(2.5)) },
                ],
            }),
        ),
        kv(
            "request.meta",
            Value::KvlistValue(KeyValueList {
                values: vec![
                    s("z", "last"),
                    kv("a", Value::IntValue(1)),
                    kv(
                        "nested",
                        Value::KvlistValue(KeyValueList { values: vec![kv("b", Value::BytesValue(vec![1, 2]))] }),
                    ),
                ],
            }),
        ),
        kv("payload", Value::BytesValue(vec![0, 0, 0x30, 0x39])),
        kv("sample.ratio", Value::DoubleValue(0.25)),
        kv("big.id", Value::IntValue(9_007_199_254_740_993)),
        kv("retry", Value::BoolValue(false)),
        KeyValue { key: "empty".into(), value: None, ..Default::default() },
    ];

    let mut s3 = span(TRACE_A, 0x33, Some(0x22), "POST /pay", 2, 3, 43);
    s3.status = status(2, "");
    s3.events = vec![
        Event {
            time_unix_nano: T0 + 10 * MS,
            name: String::new(),
            attributes: vec![kv("db.rows", Value::IntValue(3))],
            dropped_attributes_count: 0,
        },
        Event {
            time_unix_nano: T0 + 12 * MS,
            name: "retry".into(),
            attributes: vec![s("reason", "timeout"), s("event", "custom")],
            dropped_attributes_count: 0,
        },
    ];

    let mut s4 = span(TRACE_A, 0x44, Some(0x33), "publish order", 4, 20, 41);
    s4.status = status(1, "");
    s4.links = vec![
        Link { trace_id: id(TRACE_C), span_id: span_id(0xc1), ..Default::default() },
        Link {
            trace_id: id(TRACE_B),
            span_id: span_id(0xb1),
            attributes: vec![s("opentracing.ref_type", "child_of")],
            ..Default::default()
        },
    ];

    let s5 = span(TRACE_A, 0x55, Some(0x44), "consume order", 5, 30, 40);

    let mut b1 = span(TRACE_B, 0xb1, Some(0x99), "orphan", 1, 100, 101);
    b1.status = status(1, "");

    let mut c1 = span(TRACE_C, 0xc1, None, "GET /health", 2, 200, 201);
    c1.attributes = vec![kv("http.response.status_code", Value::IntValue(200))];

    let frontend = resource(vec![
        s("service.name", "frontend"),
        s("host.name", "web-1"),
        kv("process.pid", Value::IntValue(4242)),
        s("telemetry.sdk.language", "rust"),
    ]);
    let payment =
        resource(vec![s("service.name", "payment"), s("host.name", "pay-1"), s("deployment.environment", "test")]);
    ExportTraceServiceRequest {
        resource_spans: vec![
            resource_spans(frontend.clone(), scope("obsbox-demo", "0.1.0"), vec![s1, s2]),
            resource_spans(payment, scope("payment-lib", ""), vec![s3, s4]),
            resource_spans(resource(vec![s("service.name", "worker")]), None, vec![s5]),
            resource_spans(resource(vec![]), None, vec![b1]),
            // The same resource again in another batch entry: still one process.
            resource_spans(frontend, scope("obsbox-demo", "0.1.0"), vec![c1]),
        ],
    }
}

async fn app() -> Router {
    let store = Arc::new(MemStore::new());
    store.write(Batch::Traces(fixture())).await.unwrap();
    let state = AppState::new(store, prometheus::Registry::new(), Arc::new(AtomicBool::new(true))).unwrap();
    router(state)
}

async fn get(app: &Router, path: &str) -> (StatusCode, Json) {
    let resp = app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{path}: body is not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, json)
}

async fn get_ok(app: &Router, path: &str) -> Json {
    let (status, body) = get(app, path).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    assert_envelope(&body);
    assert_eq!(body["errors"], Json::Null, "{path}: {body}");
    body
}

/// Percent-encodes a query parameter value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `start` and `end` spanning the whole fixture.
fn window() -> String {
    format!("start={}&end={}", T0_US - 1_000_000, T0_US + 1_000_000)
}

fn trace_ids(body: &Json) -> Vec<&str> {
    body["data"].as_array().unwrap().iter().map(|t| t["traceID"].as_str().unwrap()).collect()
}

// ---------------------------------------------------------------------------------------------
// Shape checks (what jaeger-ui and Grafana read)

fn assert_envelope(body: &Json) {
    let o = body.as_object().unwrap_or_else(|| panic!("not an object: {body}"));
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    for k in ["data", "total", "limit", "offset", "errors"] {
        assert!(keys.contains(&k), "envelope lacks {k}: {body}");
    }
    assert_eq!(keys.len(), 5, "{body}");
    assert!(body["total"].is_u64() && body["limit"].is_u64() && body["offset"].is_u64(), "{body}");
    assert!(body["errors"].is_null() || body["errors"].is_array(), "{body}");
}

fn assert_error(body: &Json, status: StatusCode, mentions: &str) {
    assert_envelope(body);
    assert_eq!(body["data"], Json::Null, "{body}");
    let errors = body["errors"].as_array().unwrap_or_else(|| panic!("no errors: {body}"));
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(errors[0]["code"], json!(status.as_u16()), "{body}");
    let msg = errors[0]["msg"].as_str().unwrap();
    assert!(msg.contains(mentions), "message {msg:?} should mention {mentions:?}");
}

fn assert_tags(tags: &Json) {
    for t in tags.as_array().unwrap_or_else(|| panic!("tags not an array: {tags}")) {
        assert!(t["key"].is_string(), "{t}");
        let ok = match t["type"].as_str().unwrap() {
            "string" | "binary" => t["value"].is_string(),
            "bool" => t["value"].is_boolean(),
            "int64" => t["value"].is_i64() || t["value"].is_string(),
            "float64" => t["value"].is_number() || t["value"].is_string(),
            other => panic!("unknown tag type {other}: {t}"),
        };
        assert!(ok, "value does not match type: {t}");
    }
}

fn is_hex(s: &Json, len: usize) -> bool {
    s.as_str().is_some_and(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

fn assert_trace_shape(t: &Json) {
    assert!(is_hex(&t["traceID"], 32), "{}", t["traceID"]);
    let processes = t["processes"].as_object().unwrap();
    for p in processes.values() {
        assert!(p["serviceName"].is_string(), "{p}");
        assert_tags(&p["tags"]);
    }
    assert!(t["warnings"].is_null() || t["warnings"].is_array());
    let spans = t["spans"].as_array().unwrap();
    assert!(!spans.is_empty());
    for sp in spans {
        assert_eq!(sp["traceID"], t["traceID"]);
        assert!(is_hex(&sp["spanID"], 16), "{sp}");
        assert!(sp["operationName"].is_string());
        assert!(sp["startTime"].is_u64() && sp["duration"].is_u64(), "{sp}");
        assert!(processes.contains_key(sp["processID"].as_str().unwrap()), "{sp}");
        for r in sp["references"].as_array().unwrap() {
            assert!(matches!(r["refType"].as_str(), Some("CHILD_OF" | "FOLLOWS_FROM")), "{r}");
            assert!(is_hex(&r["traceID"], 32) && is_hex(&r["spanID"], 16), "{r}");
        }
        assert_tags(&sp["tags"]);
        for l in sp["logs"].as_array().unwrap() {
            assert!(l["timestamp"].is_u64());
            assert_tags(&l["fields"]);
        }
        assert!(sp["warnings"].is_null() || sp["warnings"].as_array().unwrap().iter().all(Json::is_string));
        if let Some(flags) = sp.get("flags") {
            assert!(flags.is_u64());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Golden files

fn golden(name: &str, actual: &Json) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/jaeger").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_string_pretty(actual).unwrap() + "\n").unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    let expected: Json = serde_json::from_str(&text).unwrap();
    assert!(
        expected == *actual,
        "{} differs (UPDATE_GOLDEN=1 rewrites it); actual:\n{}",
        path.display(),
        serde_json::to_string_pretty(actual).unwrap()
    );
}

#[tokio::test]
async fn trace_by_id_matches_golden() {
    let app = app().await;
    let body = get_ok(&app, &format!("/api/traces/{TRACE_A}")).await;
    assert_eq!(body["total"], json!(1));
    assert_trace_shape(&body["data"][0]);
    golden("trace_by_id.json", &body);

    // Upper-case ids are accepted; ids are sent back in lower case.
    let upper = get_ok(&app, &format!("/api/traces/{}", TRACE_A.to_uppercase())).await;
    assert_eq!(upper, body);
}

#[tokio::test]
async fn short_trace_id_matches_golden() {
    let app = app().await;
    let body = get_ok(&app, "/api/traces/abc").await;
    assert_eq!(body["data"][0]["traceID"], json!(TRACE_B));
    assert_trace_shape(&body["data"][0]);
    golden("trace_short_id.json", &body);
}

#[tokio::test]
async fn search_matches_golden() {
    let app = app().await;
    let body = get_ok(&app, &format!("/api/traces?service=frontend&{}&limit=20&lookback=custom", window())).await;
    // Newest first.
    assert_eq!(trace_ids(&body), [TRACE_C, TRACE_A]);
    assert_eq!(body["total"], json!(2));
    for t in body["data"].as_array().unwrap() {
        assert_trace_shape(t);
    }
    golden("search.json", &body);
}

/// The mapping decisions the golden files hold, spelled out.
#[tokio::test]
async fn otlp_maps_to_jaeger_as_the_collector_translator_does() {
    let app = app().await;
    let body = get_ok(&app, &format!("/api/traces/{TRACE_A}")).await;
    let t = &body["data"][0];
    let spans = t["spans"].as_array().unwrap();
    let by_name = |n: &str| spans.iter().find(|s| s["operationName"] == json!(n)).unwrap();
    let tag = |sp: &Json, k: &str| sp["tags"].as_array().unwrap().iter().find(|t| t["key"] == json!(k)).cloned();

    let root = by_name("GET /checkout");
    assert_eq!(root["references"], json!([]));
    assert_eq!(root["flags"], json!(1), "W3C flags only");
    assert_eq!(root["startTime"], json!(T0_US));
    assert_eq!(root["duration"], json!(50_000));
    assert_eq!(tag(root, "span.kind").unwrap()["value"], json!("server"));
    assert_eq!(tag(root, "otel.status_code").unwrap()["value"], json!("ERROR"));
    assert_eq!(tag(root, "error").unwrap(), json!({"key": "error", "type": "bool", "value": true}));
    assert_eq!(tag(root, "otel.status_description").unwrap()["value"], json!("payment failed"));
    assert_eq!(tag(root, "otel.scope.name").unwrap()["value"], json!("obsbox-demo"));
    assert_eq!(tag(root, "otel.scope.version").unwrap()["value"], json!("0.1.0"));
    assert_eq!(tag(root, "w3c.tracestate").unwrap()["value"], json!("obsbox=1"));
    assert_eq!(
        tag(root, "http.response.status_code").unwrap(),
        json!({"key": "http.response.status_code", "type": "int64", "value": 500})
    );
    let keys: Vec<&str> = root["tags"].as_array().unwrap().iter().map(|t| t["key"].as_str().unwrap()).collect();
    assert!(keys.is_sorted(), "tags sorted by key, as jaeger-query's adjuster does: {keys:?}");
    assert_eq!(root["logs"][0]["fields"][0], json!({"key": "event", "type": "string", "value": "exception"}));
    assert_eq!(root["logs"][0]["timestamp"], json!(T0_US + 40_000));

    let client = by_name("call payment");
    assert_eq!(
        client["references"],
        json!([{"refType": "CHILD_OF", "traceID": TRACE_A, "spanID": "1111111111111111"}])
    );
    assert_eq!(tag(client, "tags.list").unwrap()["value"], json!(r#"["a",1,true,2.5]"#));
    assert_eq!(tag(client, "request.meta").unwrap()["value"], json!(r#"{"a":1,"nested":{"b":"AQI="},"z":"last"}"#));
    assert_eq!(tag(client, "payload").unwrap(), json!({"key": "payload", "type": "binary", "value": "AAAwOQ=="}));
    assert_eq!(tag(client, "sample.ratio").unwrap()["value"], json!(0.25));
    assert_eq!(tag(client, "big.id").unwrap(), json!({"key": "big.id", "type": "int64", "value": "9007199254740993"}));
    assert_eq!(tag(client, "empty").unwrap(), json!({"key": "empty", "type": "string", "value": ""}));
    assert_eq!(tag(client, "otel.status_code"), None, "unset status has no tag");
    assert!(client.get("flags").is_some());

    let server = by_name("POST /pay");
    assert_eq!(server["startTime"], json!(T0_US + 5_000), "clock skew adjusted into the parent");
    let warnings = server["warnings"].as_array().unwrap();
    assert!(warnings[0].as_str().unwrap().contains("clock skew"), "{warnings:?}");
    assert_eq!(
        server["logs"][0]["fields"],
        json!([{"key": "db.rows", "type": "int64", "value": 3}]),
        "no name, no event field"
    );
    assert_eq!(
        server["logs"][1]["fields"],
        json!([{"key": "event", "type": "string", "value": "custom"}, {"key": "reason", "type": "string", "value": "timeout"}]),
        "an `event` attribute wins over the event name"
    );
    assert_eq!(server.get("flags"), None, "zero flags are left out, as jaeger-query does");

    let producer = by_name("publish order");
    assert_eq!(
        producer["references"],
        json!([
            {"refType": "CHILD_OF", "traceID": TRACE_A, "spanID": "3333333333333333"},
            {"refType": "FOLLOWS_FROM", "traceID": TRACE_C, "spanID": "c1c1c1c1c1c1c1c1"},
            {"refType": "CHILD_OF", "traceID": TRACE_B, "spanID": "b1b1b1b1b1b1b1b1"},
        ])
    );
    assert_eq!(tag(producer, "otel.status_code").unwrap()["value"], json!("OK"));
    assert_eq!(tag(producer, "error"), None);

    let processes = t["processes"].as_object().unwrap();
    assert_eq!(processes.len(), 3);
    let frontend = &processes[root["processID"].as_str().unwrap()];
    assert_eq!(
        *frontend,
        json!({"serviceName": "frontend", "tags": [
            {"key": "host.name", "type": "string", "value": "web-1"},
            {"key": "process.pid", "type": "int64", "value": 4242},
            {"key": "telemetry.sdk.language", "type": "string", "value": "rust"},
        ]})
    );
    assert_eq!(root["processID"], client["processID"]);
    assert_eq!(t["warnings"], Json::Null);

    let b = get_ok(&app, "/api/traces/abc").await;
    let orphan = &b["data"][0]["spans"][0];
    assert_eq!(
        b["data"][0]["processes"][orphan["processID"].as_str().unwrap()]["serviceName"],
        json!("OTLPResourceNoServiceName")
    );
    assert!(orphan["warnings"][0].as_str().unwrap().contains("not in the trace"));
    assert_eq!(orphan["references"][0]["spanID"], json!("9999999999999999"), "a missing parent is still referenced");
}

// ---------------------------------------------------------------------------------------------
// Grafana's Jaeger datasource

/// What Grafana's Jaeger datasource sends, in order: the services for the service picker, the
/// operations of the chosen service, a search (tags as JSON converted from logfmt, durations,
/// start/end in microseconds from the time picker, `lookback=custom`), the trace of a result,
/// and the dependencies for the service graph.
#[tokio::test]
async fn grafana_request_sequence() {
    let app = app().await;

    let services = get_ok(&app, "/api/services").await;
    assert_eq!(services["data"], json!(["frontend", "payment", "worker"]));
    assert_eq!(services["total"], json!(3));

    let ops = get_ok(&app, "/api/services/frontend/operations").await;
    assert_eq!(ops["data"], json!(["GET /checkout", "GET /health", "call payment"]));

    let ops = get_ok(&app, "/api/operations?service=frontend&spanKind=server").await;
    assert_eq!(
        ops["data"],
        json!([{"name": "GET /checkout", "spanKind": "server"}, {"name": "GET /health", "spanKind": "server"}])
    );
    let ops = get_ok(&app, "/api/operations?service=payment").await;
    assert_eq!(
        ops["data"],
        json!([{"name": "POST /pay", "spanKind": "server"}, {"name": "publish order", "spanKind": "producer"}])
    );

    let tags = enc(r#"{"http.response.status_code":"500","host.name":"web-1"}"#);
    let search = get_ok(
        &app,
        &format!(
            "/api/traces?service=frontend&operation={}&tags={tags}&minDuration=10ms&maxDuration=1.5s&limit=20&start={}&end={}&lookback=custom",
            enc("GET /checkout"),
            T0_US - 3_600_000_000,
            T0_US + 3_600_000_000,
        ),
    )
    .await;
    assert_eq!(trace_ids(&search), [TRACE_A]);
    let found = &search["data"][0];
    assert_trace_shape(found);
    // Grafana's search table reads the root span, its service, start and duration.
    let root = found["spans"].as_array().unwrap().iter().find(|s| s["references"] == json!([])).unwrap();
    assert_eq!(root["operationName"], json!("GET /checkout"));
    assert_eq!(found["processes"][root["processID"].as_str().unwrap()]["serviceName"], json!("frontend"));

    let trace = get_ok(&app, &format!("/api/traces/{}", found["traceID"].as_str().unwrap())).await;
    assert_eq!(trace["data"].as_array().unwrap().len(), 1);
    assert_eq!(trace["data"][0], *found);

    let deps = get_ok(&app, &format!("/api/dependencies?endTs={}&lookback=3600000", T0 / MS + 1000)).await;
    assert_eq!(
        deps["data"],
        json!([
            {"parent": "frontend", "child": "payment", "callCount": 1},
            {"parent": "payment", "child": "worker", "callCount": 1},
        ])
    );
    let none = get_ok(&app, &format!("/api/dependencies?endTs={}&lookback=1000", T0 / MS)).await;
    assert_eq!(none["data"], json!([]));
}

// ---------------------------------------------------------------------------------------------
// Search semantics

#[tokio::test]
async fn search_conditions() {
    let app = app().await;
    let w = window();
    let search = |q: String| {
        let app = app.clone();
        async move {
            let body = get_ok(&app, &format!("/api/traces?{q}")).await;
            trace_ids(&body).into_iter().map(String::from).collect::<Vec<_>>()
        }
    };
    let tags = |json: &str| format!("tags={}&{w}", enc(json));

    // Resource attributes match too.
    assert_eq!(search(format!("service=frontend&{}", tags(r#"{"host.name":"web-1"}"#))).await, [TRACE_C, TRACE_A]);
    // The old `tag=key:value` form, and `tags=key:value`.
    assert_eq!(search(format!("tag=peer.service:payment&{w}")).await, [TRACE_A]);
    assert_eq!(search(format!("tags={}&{w}", enc("peer.service:payment"))).await, [TRACE_A]);
    // Typed values: an int, a double, a bool, a string that looks like none of them.
    assert_eq!(search(tags(r#"{"http.response.status_code":"200"}"#)).await, [TRACE_C]);
    assert_eq!(search(tags(r#"{"http.response.status_code":200}"#)).await, [TRACE_C]);
    assert_eq!(search(tags(r#"{"sample.ratio":"0.25"}"#)).await, [TRACE_A]);
    assert_eq!(search(tags(r#"{"retry":"false"}"#)).await, [TRACE_A]);
    assert_eq!(search(tags(r#"{"http.route":"/checkout"}"#)).await, [TRACE_A]);
    // Special tags: error, span.kind, otel.status_code.
    assert_eq!(search(format!("service=payment&{}", tags(r#"{"error":"true"}"#))).await, [TRACE_A]);
    assert_eq!(search(format!("service=frontend&{}", tags(r#"{"error":"true"}"#))).await, [TRACE_A]);
    assert_eq!(search(tags(r#"{"span.kind":"consumer"}"#)).await, [TRACE_A]);
    assert_eq!(search(tags(r#"{"span.kind":"internal"}"#)).await, [TRACE_B]);
    assert_eq!(search(tags(r#"{"otel.status_code":"OK"}"#)).await, [TRACE_B, TRACE_A]);
    // All conditions on one span: `peer.service` is on a frontend span, not a payment one.
    assert!(search(format!("service=payment&{}", tags(r#"{"peer.service":"payment"}"#))).await.is_empty());
    assert!(search(format!("operation={}&{}", enc("GET /health"), tags(r#"{"error":"true"}"#))).await.is_empty());
    // Span durations.
    assert_eq!(search(format!("minDuration=45ms&{w}")).await, [TRACE_A]);
    assert_eq!(search(format!("service=frontend&maxDuration=2ms&{w}")).await, [TRACE_C]);
    assert_eq!(search(format!("service=worker&minDuration=10ms&maxDuration=10ms&{w}")).await, [TRACE_A]);
    assert!(search(format!("service=worker&minDuration=10001us&{w}")).await.is_empty());
    // Limit.
    assert_eq!(search(format!("limit=1&{w}")).await, [TRACE_C]);
    // Time: `end` is inclusive to the microsecond; `lookback` counts back from `end` without `start`.
    assert_eq!(search(format!("start={T0_US}&end={T0_US}")).await, [TRACE_A]);
    assert_eq!(search(format!("end={}&lookback=1h", T0_US + 1_000_000)).await.len(), 3);
    assert_eq!(search(format!("end={}&lookback=2d", T0_US + 1_000_000)).await.len(), 3);
    assert_eq!(search(format!("end={}&lookback=1ms", T0_US + 200_000)).await, [TRACE_C]);
    assert!(search(format!("start={}", T0_US + 1_000_000)).await.is_empty());
    // By trace ids (jaeger-ui's search by ids), other conditions ignored.
    assert_eq!(search(format!("traceID={TRACE_C}&traceID=abc&service=nosuch")).await, [TRACE_C, TRACE_B]);
}

#[tokio::test]
async fn unknown_trace_ids() {
    let app = app().await;
    let (status, body) = get(&app, "/api/traces?traceID=abc&traceID=ffff").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(trace_ids(&body), [TRACE_B]);
    assert_eq!(body["errors"], json!([{"msg": "trace not found", "traceID": "0000000000000000000000000000ffff"}]));

    let (status, body) = get(&app, "/api/traces/ffffffffffffffffffffffffffffffff").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, StatusCode::NOT_FOUND, "trace not found");

    let body = get_ok(&app, "/api/services/nosuch/operations").await;
    assert_eq!(body["data"], json!([]));
}

// ---------------------------------------------------------------------------------------------
// Bad input

#[tokio::test]
async fn bad_input_is_a_400_with_a_message() {
    let app = app().await;
    let w = window();
    let cases: Vec<(String, &str)> = vec![
        (format!("/api/traces?service=frontend&tags={}&{w}", enc(r#"{"a":"#)), "'tags'"),
        (format!("/api/traces?tags=notjson&{w}"), "'tags'"),
        (format!("/api/traces?tags={}&{w}", enc(r#"{"a":null}"#)), "\"a\""),
        (format!("/api/traces?tags={}&{w}", enc(r#"{"":"x"}"#)), "key"),
        (format!("/api/traces?tag=novalue&{w}"), "'tag'"),
        (format!("/api/traces?minDuration=abc&{w}"), "'minDuration'"),
        (format!("/api/traces?minDuration=10&{w}"), "missing unit"),
        (format!("/api/traces?maxDuration=1x&{w}"), "'maxDuration'"),
        (format!("/api/traces?minDuration=-1s&{w}"), "negative"),
        (format!("/api/traces?minDuration=99999999999h&{w}"), "too long"),
        (format!("/api/traces?minDuration=2s&maxDuration=1s&{w}"), "'maxDuration' should be greater"),
        ("/api/traces?start=abc".into(), "'start'"),
        ("/api/traces?start=-5".into(), "'start'"),
        ("/api/traces?end=1.5".into(), "'end'"),
        ("/api/traces?start=2000&end=1000".into(), "before"),
        (format!("/api/traces?limit=100000&{w}"), "'limit'"),
        (format!("/api/traces?limit=-1&{w}"), "'limit'"),
        (format!("/api/traces?limit=ten&{w}"), "'limit'"),
        ("/api/traces?lookback=forever".into(), "'lookback'"),
        ("/api/traces?traceID=xyz".into(), "traceID"),
        ("/api/traces/xyz".into(), "trace id"),
        (format!("/api/traces/{}", "1".repeat(33)), "trace id"),
        ("/api/traces/0x12".into(), "trace id"),
        (format!("/api/traces/{}", enc("é")), "trace id"),
        ("/api/operations".into(), "'service'"),
        ("/api/operations?service=frontend&spanKind=bogus".into(), "'spanKind'"),
        ("/api/dependencies?endTs=abc".into(), "'endTs'"),
        ("/api/dependencies?lookback=-5".into(), "'lookback'"),
    ];
    for (path, mentions) in cases {
        let (status, body) = get(&app, &path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_error(&body, StatusCode::BAD_REQUEST, mentions);
    }
}

/// Arbitrary values for every parameter: always a JSON envelope with 200, 400 or 404, never a
/// 500 or a panic.
#[test]
fn arbitrary_parameters_never_fail_the_server() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let app = rt.block_on(app());
    let names = [
        "service",
        "operation",
        "tags",
        "tag",
        "minDuration",
        "maxDuration",
        "start",
        "end",
        "limit",
        "lookback",
        "traceID",
    ];
    let value = prop_oneof![
        any::<String>(),
        "[-+]?[0-9.]{0,22}(ns|us|µs|ms|s|m|h|d|x)?",
        r#"\{("[a-z.:]{0,4}":("[a-z0-9.]{0,4}"|-?[0-9.e]{1,4}|true|null|\[\]),?){0,3}\}?"#,
        "[0-9a-fA-F]{0,34}",
    ];
    let strategy = (proptest::collection::vec((0..names.len(), value.clone()), 0..6), value);
    let mut runner = TestRunner::new(Config { cases: 300, failure_persistence: None, ..Config::default() });
    runner
        .run(&strategy, |(params, trace_id)| {
            let query: Vec<String> = params.iter().map(|(n, v)| format!("{}={}", names[*n], enc(v))).collect();
            let by_id = if trace_id.is_empty() {
                "/api/traces/0".to_string()
            } else {
                format!("/api/traces/{}", enc(&trace_id))
            };
            for path in [
                format!("/api/traces?{}", query.join("&")),
                by_id,
                format!("/api/operations?{}", query.join("&").replace("operation=", "spanKind=")),
                format!(
                    "/api/dependencies?{}",
                    query.join("&").replace("start=", "endTs=").replace("limit=", "lookback=")
                ),
            ] {
                let (status, body) = rt.block_on(get(&app, &path));
                prop_assert!(
                    matches!(status, StatusCode::OK | StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND),
                    "{} -> {}: {}",
                    path,
                    status,
                    body
                );
                assert_envelope(&body);
            }
            Ok(())
        })
        .unwrap();
}
