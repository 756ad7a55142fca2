//! Differential tests: the same search through the native, Jaeger and Loki APIs returns the same
//! records, over one `DiskStore` filled with generated spans and logs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use obsbox_query_ui::{AppState, router};
use obsbox_storage::{Batch, DiskStore, Reader, StoreConfig, Writer};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::Value as Json;
use tower::ServiceExt;

const SERVICES: [&str; 3] = ["api", "db", "worker"];
const WORDS: [&str; 5] = ["timeout", "retry", "ok", "failed", "cache"];

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn resource(service: &str) -> Resource {
    Resource { attributes: vec![kv("service.name", Value::StringValue(service.into()))], ..Default::default() }
}

struct Fixture {
    _dir: tempfile::TempDir,
    app: Router,
    start: u64,
    end: u64,
}

/// 60 traces of 3 spans (one per service, varying names, durations, status and attributes) and
/// 300 log records, deterministic.
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
    // Whole microseconds, so Jaeger's µs parameters cover exactly the same range.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64 * 1000;
    let start = now - 600_000_000_000;
    let mut by_service: Vec<Vec<Span>> = vec![Vec::new(); 3];
    for t in 0..60u64 {
        let t0 = start + t * 5_000_000_000;
        for (i, spans) in by_service.iter_mut().enumerate() {
            let mut trace_id = vec![0x33; 16];
            trace_id[15] = t as u8;
            spans.push(Span {
                trace_id,
                span_id: vec![0x44, 0, 0, 0, 0, 0, i as u8, t as u8],
                parent_span_id: if i == 0 { vec![] } else { vec![0x44, 0, 0, 0, 0, 0, 0, t as u8] },
                name: format!("op-{}", (t + i as u64) % 3),
                kind: if i == 0 { 2 } else { 3 },
                start_time_unix_nano: t0 + i as u64 * 1_000_000,
                end_time_unix_nano: t0 + i as u64 * 1_000_000 + (t % 7 + 1) * 10_000_000,
                attributes: vec![
                    kv("tier", Value::StringValue(["gold", "silver"][(t % 2) as usize].into())),
                    kv("shard", Value::IntValue((t % 4) as i64)),
                ],
                status: Some(Status { code: if t % 5 == 0 { 2 } else { 0 }, message: String::new() }),
                ..Default::default()
            });
        }
    }
    let traces = ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .enumerate()
            .map(|(i, spans)| ResourceSpans {
                resource: Some(resource(SERVICES[i])),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            })
            .collect(),
    };
    store.write(Batch::Traces(traces)).await.unwrap();
    let mut resource_logs = Vec::new();
    for (i, service) in SERVICES.iter().enumerate() {
        let records = (0..100u64)
            .map(|n| LogRecord {
                time_unix_nano: start + (n * 3 + i as u64) * 1_000_000_000 + 7,
                severity_text: if n % 4 == 0 { "ERROR" } else { "INFO" }.into(),
                severity_number: if n % 4 == 0 { 17 } else { 9 },
                body: Some(AnyValue {
                    value: Some(Value::StringValue(format!(
                        "{service} request {n} {} {}",
                        WORDS[(n % 5) as usize],
                        WORDS[((n / 5) % 5) as usize]
                    ))),
                }),
                ..Default::default()
            })
            .collect();
        resource_logs.push(ResourceLogs {
            resource: Some(resource(service)),
            scope_logs: vec![ScopeLogs { log_records: records, ..Default::default() }],
            ..Default::default()
        });
    }
    store.write(Batch::Logs(ExportLogsServiceRequest { resource_logs })).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.stats().pending_items.iter().any(|(_, n)| *n > 0) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let state = AppState::new(store, prometheus::Registry::new(), Arc::new(AtomicBool::new(true))).unwrap();
    Fixture { _dir: dir, app: router(state), start, end: now }
}

fn enc(s: &str) -> String {
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

async fn get(app: &Router, uri: &str) -> Json {
    let resp = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, StatusCode::OK, "{uri}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// One trace search, expressed in both APIs.
struct TraceCase {
    native: String,
    jaeger: String,
}

#[tokio::test]
async fn trace_searches_agree_between_native_and_jaeger() {
    let f = fixture().await;
    let (s_us, e_us) = (f.start / 1000, f.end / 1000);
    let tags = |json: &str| enc(json);
    let cases = [
        TraceCase { native: "service=api".into(), jaeger: "service=api".into() },
        TraceCase { native: "service=db&operation=op-1".into(), jaeger: "service=db&operation=op-1".into() },
        TraceCase {
            native: format!("service=worker&filter={}", enc("tier = gold")),
            jaeger: format!("service=worker&tags={}", tags(r#"{"tier":"gold"}"#)),
        },
        TraceCase {
            native: format!("service=api&filter={}", enc("shard = 3")),
            jaeger: format!("service=api&tags={}", tags(r#"{"shard":"3"}"#)),
        },
        TraceCase {
            native: "service=db&status=error".into(),
            jaeger: format!("service=db&tags={}", tags(r#"{"error":"true"}"#)),
        },
        TraceCase {
            native: "service=api&minDuration=40ms&maxDuration=60ms".into(),
            jaeger: "service=api&minDuration=40ms&maxDuration=60ms".into(),
        },
    ];
    for c in cases {
        let native =
            get(&f.app, &format!("/api/v1/traces?{}&start={}&end={}&limit=100", c.native, f.start, f.end)).await;
        let jaeger = get(&f.app, &format!("/api/traces?{}&start={s_us}&end={e_us}&limit=100", c.jaeger)).await;
        let n: Vec<String> =
            native["traces"].as_array().unwrap().iter().map(|t| t["traceId"].as_str().unwrap().to_string()).collect();
        let j: Vec<String> =
            jaeger["data"].as_array().unwrap().iter().map(|t| t["traceID"].as_str().unwrap().to_string()).collect();
        assert!(!n.is_empty(), "{}: the case finds something", c.native);
        assert_eq!(n, j, "native {} vs jaeger {}", c.native, c.jaeger);
        // The span counts agree too.
        let ns: Vec<u64> =
            native["traces"].as_array().unwrap().iter().map(|t| t["spanCount"].as_u64().unwrap()).collect();
        let js: Vec<u64> =
            jaeger["data"].as_array().unwrap().iter().map(|t| t["spans"].as_array().unwrap().len() as u64).collect();
        assert_eq!(ns, js);
    }
    // Trace by id: the same spans.
    let id = hex::encode([0x33u8; 15].iter().copied().chain([7]).collect::<Vec<u8>>());
    let native = get(&f.app, &format!("/api/v1/traces/{id}")).await;
    let jaeger = get(&f.app, &format!("/api/traces/{id}")).await;
    let n: BTreeSet<String> =
        native["spans"].as_array().unwrap().iter().map(|s| s["span"]["spanId"].as_str().unwrap().to_string()).collect();
    let j: BTreeSet<String> = jaeger["data"][0]["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spanID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(n.len(), 3);
    assert_eq!(n, j);
}

/// One log search, expressed in both APIs.
struct LogCase {
    native: &'static str,
    logql: &'static str,
}

#[tokio::test]
async fn log_searches_agree_between_native_and_loki() {
    let f = fixture().await;
    let cases = [
        LogCase { native: "service:api", logql: r#"{service_name="api"}"# },
        LogCase { native: "service:db timeout", logql: r#"{service_name="db"} |= "timeout""# },
        LogCase { native: "service:worker severity:ERROR", logql: r#"{service_name="worker", level="ERROR"}"# },
        LogCase { native: "service:api retry cache", logql: r#"{service_name="api"} |= "retry" |= "cache""# },
        LogCase { native: "service:db -ok", logql: r#"{service_name="db"} != " ok""# },
    ];
    for c in cases {
        let native =
            get(&f.app, &format!("/api/v1/logs?query={}&start={}&end={}&limit=1000", enc(c.native), f.start, f.end))
                .await;
        let loki = get(
            &f.app,
            &format!("/loki/api/v1/query_range?query={}&start={}&end={}&limit=1000", enc(c.logql), f.start, f.end),
        )
        .await;
        let n: Vec<(u64, String)> = native["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["timeUnixNano"].as_str().unwrap().parse().unwrap(),
                    l["record"]["body"]["stringValue"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let mut l: Vec<(u64, String)> = loki["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["values"].as_array().unwrap().iter())
            .map(|v| (v[0].as_str().unwrap().parse().unwrap(), v[1].as_str().unwrap().to_string()))
            .collect();
        l.sort_by(|a, b| b.cmp(a));
        assert!(!n.is_empty(), "{}: the case finds something", c.native);
        assert_eq!(n, l, "native {:?} vs loki {:?}", c.native, c.logql);
    }
}
