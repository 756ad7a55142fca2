//! Fixture and helpers shared by the Loki API tests: a store (disk or memory) holding a small,
//! fixed set of log records, and the query-ui router over it.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use obsbox_query_ui::{AppState, router};
use obsbox_storage::{Batch, DiskStore, LogPredicate, LogQuery, MemStore, Reader, StoreConfig, TimeRange, Writer};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, KeyValueList, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tower::ServiceExt;

/// 2023-11-14T22:13:20Z, a multiple of every step the tests use.
pub const T0: u64 = 1_700_000_000_000_000_000;
pub const SEC: u64 = 1_000_000_000;

/// `T0 + s` seconds and a quarter, so no record lies on a step boundary.
pub fn t(s: u64) -> u64 {
    T0 + s * SEC + SEC / 4
}

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

fn rec(time: u64, sev_text: &str, sev_num: i32, body: Value, attrs: Vec<KeyValue>) -> LogRecord {
    LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: time,
        severity_text: sev_text.into(),
        severity_number: sev_num,
        body: Some(AnyValue { value: Some(body) }),
        attributes: attrs,
        ..Default::default()
    }
}

fn resource_logs(attrs: Vec<KeyValue>, records: Vec<LogRecord>) -> ResourceLogs {
    ResourceLogs {
        resource: Some(Resource { attributes: attrs, ..Default::default() }),
        scope_logs: vec![ScopeLogs { log_records: records, ..Default::default() }],
        ..Default::default()
    }
}

/// Number of ticker records (one a second from `t(100)`; every third is an error).
pub const TICKS: u64 = 60;

/// The fixture: shop services, a service-less record, a ticker and a burst of records sharing
/// one timestamp.
pub fn fixture() -> ExportLogsServiceRequest {
    let checkout = resource_logs(
        vec![
            kv("service.name", s("checkout")),
            kv("service.namespace", s("shop")),
            kv("deployment.environment", s("prod")),
            kv("host.cpu.count", Value::IntValue(4)),
        ],
        vec![
            rec(
                t(1),
                "INFO",
                9,
                s("GET /api/cart 200 in 12ms"),
                vec![kv("http.method", s("GET")), kv("http.status_code", Value::IntValue(200))],
            ),
            LogRecord {
                trace_id: (1..=16).collect(),
                span_id: (1..=8).collect(),
                ..rec(t(2), "ERROR", 17, s("payment failed: card declined"), vec![kv("error.type", s("declined"))])
            },
            rec(t(3), "", 13, s(r#"level=warn msg="slow request" duration=1.5s status=503"#), vec![]),
            rec(
                t(4),
                "INFO",
                9,
                s(r#"{"user":{"id":"u1","tier":"gold"},"latency_ms":250,"path":"/api/checkout"}"#),
                vec![],
            ),
        ],
    );
    let payments = resource_logs(
        vec![
            kv("service.name", s("payments")),
            kv("service.namespace", s("shop")),
            kv("deployment.environment", s("staging")),
        ],
        vec![
            rec(t(5), "INFO", 9, s("charge ok amount=12.50"), vec![]),
            rec(t(6), "ERROR", 17, s("Charge FAILED upstream timeout"), vec![]),
            rec(
                t(7),
                "DEBUG",
                5,
                Value::KvlistValue(KeyValueList {
                    values: vec![kv("event", s("refund")), kv("amount", Value::IntValue(3))],
                }),
                vec![],
            ),
        ],
    );
    let orphan = resource_logs(
        vec![kv("k8s.pod.name", s("pod-1"))],
        vec![rec(t(8), "", 0, s("orphan line service_name=ghost"), vec![])],
    );
    let ticker = resource_logs(
        vec![kv("service.name", s("ticker")), kv("deployment.environment", s("prod"))],
        (0..TICKS)
            .map(|i| {
                if i % 3 == 0 {
                    rec(t(100 + i), "ERROR", 17, s(&format!("tick {i} failed")), vec![])
                } else {
                    rec(t(100 + i), "INFO", 9, s(&format!("tick {i} ok")), vec![])
                }
            })
            .collect(),
    );
    let burst = resource_logs(
        vec![kv("service.name", s("burst"))],
        (0..12)
            .map(|i| rec(t(50), "INFO", 9, s(&format!("same {i}")), vec![]))
            .chain((0..3).map(|j| rec(t(40 + j), "INFO", 9, s(&format!("early {j}")), vec![])))
            .collect(),
    );
    ExportLogsServiceRequest { resource_logs: vec![checkout, payments, orphan, ticker, burst] }
}

/// Records in [`fixture`].
pub fn fixture_len() -> usize {
    8 + TICKS as usize + 15
}

/// A router over a store, keeping the store (and its directory) alive.
pub struct Harness {
    pub app: Router,
    pub reader: Arc<dyn Reader>,
    _dir: Option<tempfile::TempDir>,
}

fn app_over(reader: Arc<dyn Reader>) -> Router {
    let state = AppState::new(reader, prometheus::Registry::new(), Arc::new(AtomicBool::new(true))).expect("app state");
    router(state)
}

/// Waits until the store shows `n` log records (the disk store commits in the background).
pub async fn wait_visible(reader: &Arc<dyn Reader>, n: usize) {
    let started = Instant::now();
    loop {
        let r = reader.clone();
        let seen = tokio::task::spawn_blocking(move || {
            r.find_logs(&LogQuery { predicate: LogPredicate::All, time: TimeRange::ALL, limit: n + 1 }).map(|v| v.len())
        })
        .await
        .expect("join")
        .expect("read");
        if seen >= n {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "only {seen} of {n} records visible");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fixture in a disk store in a fresh directory.
pub async fn disk() -> Harness {
    disk_with(fixture(), fixture_len()).await
}

/// `batch` in a disk store in a fresh directory.
pub async fn disk_with(batch: ExportLogsServiceRequest, n: usize) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        data_dir: dir.path().to_path_buf(),
        commit_interval: Duration::from_millis(50),
        index_memory_bytes: 32 << 20,
        ..StoreConfig::default()
    };
    let store = Arc::new(DiskStore::open(config).expect("open store"));
    store.write(Batch::Logs(batch)).await.expect("write");
    let reader: Arc<dyn Reader> = store;
    wait_visible(&reader, n).await;
    Harness { app: app_over(reader.clone()), reader, _dir: Some(dir) }
}

/// The fixture in the in-memory store.
pub async fn memory() -> Harness {
    let store = Arc::new(MemStore::new());
    store.write(Batch::Logs(fixture())).await.expect("write");
    let reader: Arc<dyn Reader> = store;
    Harness { app: app_over(reader.clone()), reader, _dir: None }
}

/// A URL with form-encoded parameters.
pub fn url(path: &str, params: &[(&str, &str)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    format!("{path}?{}", ser.finish())
}

/// A GET request: status, content type and body.
pub async fn get(app: &Router, uri: &str) -> (StatusCode, String, Vec<u8>) {
    let resp = app.clone().oneshot(Request::get(uri).body(Body::empty()).expect("request")).await.expect("response");
    let status = resp.status();
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body = resp.into_body().collect().await.expect("body").to_bytes().to_vec();
    (status, ctype, body)
}

/// A GET that must succeed with JSON.
pub async fn get_json(app: &Router, uri: &str) -> serde_json::Value {
    let (status, _, body) = get(app, uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{uri}: {e}: {}", String::from_utf8_lossy(&body)))
}

/// A GET that must fail with 400: the plain-text message.
pub async fn get_400(app: &Router, uri: &str) -> String {
    let (status, ctype, body) = get(app, uri).await;
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {text}");
    assert!(ctype.starts_with("text/plain"), "{uri}: {ctype}");
    text
}

/// `query_range` parameters over `[from, to)` seconds after `T0`.
pub fn range_params<'a>(query: &'a str, from: u64, to: u64, extra: &[(&'a str, &'a str)]) -> Vec<(String, String)> {
    let mut p = vec![
        ("query".to_string(), query.to_string()),
        ("start".to_string(), (T0 + from * SEC).to_string()),
        ("end".to_string(), (T0 + to * SEC).to_string()),
    ];
    p.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    p
}

/// `/loki/api/v1/query_range` with [`range_params`].
pub fn query_range(query: &str, from: u64, to: u64, extra: &[(&str, &str)]) -> String {
    let p = range_params(query, from, to, extra);
    let refs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    url("/loki/api/v1/query_range", &refs)
}

/// Every `(time, line)` of a streams result, newest first.
pub fn lines(v: &serde_json::Value) -> Vec<(u64, String)> {
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "streams", "{v}");
    let mut out: Vec<(u64, String)> = v["data"]["result"]
        .as_array()
        .expect("result")
        .iter()
        .flat_map(|s| s["values"].as_array().expect("values").iter())
        .map(|p| (p[0].as_str().expect("ts").parse().expect("ns"), p[1].as_str().expect("line").to_string()))
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    out
}

/// Replaces the run-dependent figures of a response's `stats` with 0.
pub fn normalize(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(s) = v.pointer_mut("/data/stats/summary").and_then(|s| s.as_object_mut()) {
        for k in ["execTime", "bytesProcessedPerSecond", "linesProcessedPerSecond"] {
            if s.contains_key(k) {
                s.insert(k.to_string(), serde_json::json!(0));
            }
        }
    }
    v
}
