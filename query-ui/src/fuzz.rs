//! Fuzz targets of the query side (`docs/fuzzing.md`): one function per target, which panics
//! when a property is broken. Compiled for tests and with the `fuzzing` feature (the cargo-fuzz
//! crate in `fuzz/libfuzzer/`); not part of the crate's API.
//!
//! Every target sends its input through the real router to a real [`DiskStore`] (tantivy
//! indexes, so the log query's full text reaches tantivy's query parser) holding a few spans,
//! log records and metrics, and checks that the answer is a success or a 4xx with a message,
//! never a 5xx; where the API's parser is reachable, that a parse error is a 400 and a parsed
//! query is answered; and, for LogQL, that a parsed query prints to text that parses to the
//! same query.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use obsbox_storage::{
    Batch, DiskStore, LogPredicate, LogQuery, MetricQuery, Reader, SpanPredicate, SpanQuery, StoreConfig, TimeRange,
    Writer,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use tower::ServiceExt;

use crate::{AppState, filters, loki, router};

/// The fixture's time: data sits in the hour before.
const T0_S: u64 = 1_700_000_000;
const SEC: u64 = 1_000_000_000;

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    _dir: tempfile::TempDir,
}

/// One store and router for every target and thread.
fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let dir = store_dir();
        let config = StoreConfig {
            data_dir: dir.path().to_path_buf(),
            commit_interval: Duration::from_millis(50),
            index_memory_bytes: 32 << 20,
            ..StoreConfig::default()
        };
        let store = Arc::new(DiskStore::open(config).expect("open store"));
        let app = runtime.block_on(async {
            store.write(Batch::Traces(spans())).await.expect("write spans");
            store.write(Batch::Logs(logs())).await.expect("write logs");
            store.write(Batch::Metrics(metrics())).await.expect("write metrics");
            let reader: Arc<dyn Reader> = store.clone();
            let started = Instant::now();
            loop {
                let r = reader.clone();
                // Everything written is visible: logs and spans once committed, every metric point.
                let seen = tokio::task::spawn_blocking(move || {
                    let logs = LogQuery { predicate: LogPredicate::All, time: TimeRange::ALL, limit: 100 };
                    let spans = SpanQuery { predicate: SpanPredicate::All, time: TimeRange::ALL, limit: 100 };
                    let metrics = MetricQuery { matchers: vec![], time: TimeRange::ALL };
                    let points = r.find_metrics(&metrics).map(|m| {
                        m.resource_metrics
                            .iter()
                            .flat_map(|rm| &rm.scope_metrics)
                            .flat_map(|sm| &sm.metrics)
                            .map(obsbox_storage::metric_point_count)
                            .sum::<usize>()
                    });
                    Ok::<_, obsbox_storage::StoreError>((
                        r.find_logs(&logs)?.len(),
                        r.find_spans(&spans)?.len(),
                        points?,
                    ))
                })
                .await
                .expect("join")
                .expect("read");
                if seen == (LOG_COUNT, SPAN_COUNT, POINT_COUNT) {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(30), "fixture not visible");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let state = AppState::new(reader, ::prometheus::Registry::new(), Arc::new(AtomicBool::new(true)))
                .expect("app state");
            router(state)
        });
        Harness { runtime, app, _dir: dir }
    })
}

/// The store's directory, `$TMPDIR/obsbox-fuzz-store-<pid>.*`. The harness is a static, never
/// dropped, so each run first removes the directories of runs whose process is gone.
fn store_dir() -> tempfile::TempDir {
    let tmp = std::env::temp_dir();
    let prefix = "obsbox-fuzz-store-";
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(prefix).and_then(|rest| rest.split('.').next()).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    tempfile::Builder::new().prefix(&format!("{prefix}{}.", std::process::id())).tempdir().expect("tempdir")
}

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue { key: k.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv("service.name", s(service)), kv("deployment.environment", s("prod"))],
        ..Default::default()
    })
}

fn spans() -> ExportTraceServiceRequest {
    let mut out = Vec::new();
    for (i, service) in ["checkout", "payments", "catalog"].iter().enumerate() {
        let mut spans = Vec::new();
        for j in 0..4u8 {
            let start = (T0_S - 600 + u64::from(j) * 60) * SEC;
            spans.push(Span {
                trace_id: vec![j + 1; 16],
                span_id: vec![(i as u8) * 16 + j + 1; 8],
                parent_span_id: if i == 0 { vec![] } else { vec![j + 1; 8] },
                name: format!("GET /item/{j}"),
                kind: 2,
                start_time_unix_nano: start,
                end_time_unix_nano: start + (u64::from(j) + 1) * 50_000_000,
                attributes: vec![
                    kv("http.route", s("/item/{id}")),
                    kv("http.status_code", Value::IntValue(200 + i64::from(j) * 100)),
                    kv("ratio", Value::DoubleValue(0.5)),
                    kv("cached", Value::BoolValue(j % 2 == 0)),
                    kv("tags", Value::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(s("a")) }] })),
                ],
                status: Some(Status { code: if j == 3 { 2 } else { 0 }, message: String::new() }),
                ..Default::default()
            });
        }
        out.push(ResourceSpans {
            resource: resource(service),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        });
    }
    ExportTraceServiceRequest { resource_spans: out }
}

const LOG_COUNT: usize = 6;
const SPAN_COUNT: usize = 12;
/// 240 points of 5 series (two counter routes, a gauge, two histograms).
const POINT_COUNT: usize = 240 * 5;

fn logs() -> ExportLogsServiceRequest {
    let bodies = [
        ("INFO", 9, "payment accepted for order 42"),
        ("WARN", 13, "cache miss ratio=0.5 route=/cart"),
        ("ERROR", 17, r#"{"level":"error","msg":"payment failed","latency_ms":120}"#),
        ("DEBUG", 5, "level=debug msg=\"tick\" duration=1.5s status=503"),
        ("INFO", 9, "été: ünïcode «quoted» text"),
        ("FATAL", 21, "out of memory"),
    ];
    let records = bodies
        .iter()
        .enumerate()
        .map(|(i, (sev, n, body))| LogRecord {
            time_unix_nano: (T0_S - 300 + i as u64 * 30) * SEC,
            severity_text: sev.to_string(),
            severity_number: *n,
            body: Some(AnyValue { value: Some(s(body)) }),
            attributes: vec![kv("user.id", Value::IntValue(i as i64)), kv("tier", s("gold"))],
            trace_id: vec![1; 16],
            span_id: vec![1; 8],
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource("checkout"),
            scope_logs: vec![ScopeLogs { log_records: records, ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn metrics() -> ExportMetricsServiceRequest {
    let (mut counter, mut gauge, mut hist, mut exp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..240u64 {
        let t = (T0_S - 3600 + i * 15) * SEC;
        let start = (T0_S - 3700) * SEC;
        for route in ["/cart", "/pay"] {
            // A counter reset half-way.
            let v = if i < 120 { i as f64 * 3.0 } else { (i - 120) as f64 };
            counter.push(NumberDataPoint {
                attributes: vec![kv("http.route", s(route))],
                start_time_unix_nano: start,
                time_unix_nano: t,
                value: Some(number_data_point::Value::AsDouble(v)),
                ..Default::default()
            });
        }
        gauge.push(NumberDataPoint {
            time_unix_nano: t,
            value: Some(number_data_point::Value::AsInt(1_000_000 + i as i64)),
            ..Default::default()
        });
        hist.push(HistogramDataPoint {
            start_time_unix_nano: start,
            time_unix_nano: t,
            count: 6 * i,
            sum: Some(10.0 * i as f64),
            bucket_counts: vec![i, 2 * i, 3 * i],
            explicit_bounds: vec![0.1, 1.0],
            ..Default::default()
        });
        exp.push(ExponentialHistogramDataPoint {
            start_time_unix_nano: start,
            time_unix_nano: t,
            scale: 0,
            count: 4 * i,
            sum: Some(10.0 * i as f64),
            zero_count: 0,
            positive: Some(Buckets { offset: 0, bucket_counts: vec![2 * i, 2 * i] }),
            ..Default::default()
        });
    }
    let metric = |name: &str, unit: &str, data: Data| Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(data),
        ..Default::default()
    };
    let metrics = vec![
        metric(
            "http.server.requests",
            "1",
            Data::Sum(Sum { data_points: counter, aggregation_temporality: 2, is_monotonic: true }),
        ),
        metric("process.memory.usage", "By", Data::Gauge(Gauge { data_points: gauge })),
        metric(
            "http.server.duration",
            "s",
            Data::Histogram(Histogram { data_points: hist, aggregation_temporality: 2 }),
        ),
        metric(
            "rpc.latency",
            "s",
            Data::ExponentialHistogram(ExponentialHistogram { data_points: exp, aggregation_temporality: 2 }),
        ),
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource("shop"),
            scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// A URL with form-encoded parameters.
fn url(path: &str, params: &[(&str, &str)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    format!("{path}?{}", ser.finish())
}

/// GETs `uri`: the status and the body as text. A URI too long for the `http` crate gets the
/// 414 a server would send.
fn get(uri: &str) -> (StatusCode, String) {
    match Request::get(uri).body(Body::empty()) {
        Ok(req) => send(req),
        Err(e) => (StatusCode::URI_TOO_LONG, e.to_string()),
    }
}

/// POSTs `params` as a form, as Grafana sends queries.
fn post_form(path: &str, params: &[(&str, &str)]) -> (StatusCode, String) {
    let body = url("", params).split_off(1);
    let req = Request::post(path)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .expect("request");
    send(req)
}

fn send(req: Request<Body>) -> (StatusCode, String) {
    let h = harness();
    h.runtime.block_on(async {
        let resp = h.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

/// A success or a 4xx with a message; never a 5xx.
#[track_caller]
fn answered(uri: &str) -> StatusCode {
    check_answer(uri, get(uri))
}

#[track_caller]
fn check_answer(uri: &str, (status, body): (StatusCode, String)) -> StatusCode {
    assert!(status.is_success() || (status.is_client_error() && !body.trim().is_empty()), "{uri}: {status}: {body}");
    status
}

/// Input text: query parameters are strings, so invalid UTF-8 is replaced as a browser would.
fn text(input: &[u8]) -> String {
    String::from_utf8_lossy(input).into_owned()
}

fn ns(s: u64) -> String {
    (s * SEC).to_string()
}

/// The trace search attribute filter (`/api/v1/traces?filter=`, the search page).
pub fn trace_filter(input: &[u8]) {
    let filter = text(input);
    let parsed = filters::parse_filter(&filter);
    let (start, end) = (ns(T0_S - 3600), ns(T0_S));
    let params = [("filter", filter.as_str()), ("start", &start), ("end", &end), ("limit", "20")];
    let uri = url("/api/v1/traces", &params);
    let (status, body) = get(&uri);
    check_answer(&uri, (status, body.clone()));
    match &parsed {
        // The disk store's regexes cannot anchor inside a pattern (`a$|b`): a clear 400.
        Ok(_) if status == StatusCode::BAD_REQUEST && body.contains("bad regular expression") => {}
        Ok(_) => assert_eq!(status, StatusCode::OK, "{filter:?} parses but is not answered: {body}"),
        Err(e) => {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{filter:?} does not parse ({e}) but is answered");
            assert!(e.starts_with("filter"), "{e}");
        }
    }
    let page = answered(&url("/search", &params));
    assert_eq!(page, status, "the search page and the API disagree on {filter:?}");
}

/// The native log query (`/api/v1/logs?query=`, the histogram, the logs page).
pub fn log_query(input: &[u8]) {
    let query = text(input);
    let parsed = filters::parse_log_query(&query);
    if cfg!(debug_assertions) && negates_a_phrase(&query) {
        // tantivy 0.27 trips a `debug_assert!` in `PhraseScorer::seek_danger` when an excluded
        // phrase has a word the index lacks (`-"1 debug"`, `-1-debug`): a panic, so a 500, in
        // builds with debug assertions only (`cargo test`); release builds have no such check.
        // Upstream's to fix; skipped here so the bounded run is not flaky.
        return;
    }
    let (start, end) = (ns(T0_S - 3600), ns(T0_S));
    let params = [("query", query.as_str()), ("start", &start), ("end", &end)];
    let status = answered(&url("/api/v1/logs", &params));
    if parsed.is_err() {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query:?} does not parse but is answered");
    }
    answered(&url("/api/v1/logs/histogram", &params));
    answered(&url("/logs", &params));
}

/// Whether the query excludes (`-x`, `NOT x`) a quoted phrase or a word that tokenizes into
/// several (`1-debug`). Errs on the side of yes.
fn negates_a_phrase(query: &str) -> bool {
    let mut after_not = false;
    for word in query.split_whitespace() {
        let stripped = word.trim_start_matches(['-', '(', '+']);
        let negated = after_not || word.starts_with('-') || word.contains("(-");
        if negated
            && (stripped.contains('"')
                || stripped.trim_matches(|c: char| !c.is_alphanumeric()).contains(|c: char| !c.is_alphanumeric()))
        {
            return true;
        }
        after_not = word.ends_with("NOT");
    }
    query.contains("-\"")
}

/// LogQL: printing a parsed query the APIs take (within `[query] max_query_depth`) gives text
/// that parses to the same query; and every Loki query endpoint answers it. A deeper tree, a
/// chain as long as the query text allows, is refused before anything prints it, and printing
/// and comparing it recurse as deep as it is.
pub fn logql(input: &[u8]) {
    let query = text(input);
    if let Ok(expr) = loki::logql::parse(&query)
        && loki::logql::shape(&expr).depth <= crate::limits::QueryLimits::default().max_query_depth
    {
        let printed = expr.to_string();
        match loki::logql::parse(&printed) {
            Ok(again) => assert_eq!(again, expr, "{query:?} printed as {printed:?}"),
            Err(e) => panic!("{query:?} printed as {printed:?}, which does not parse: {e}"),
        }
    }
    let (start, end) = (ns(T0_S - 3600), ns(T0_S));
    let q = query.as_str();
    answered(&url("/loki/api/v1/query_range", &[("query", q), ("start", &start), ("end", &end), ("step", "60")]));
    answered(&url("/loki/api/v1/query_range", &[("query", q), ("start", &start), ("end", &end), ("limit", "10")]));
    answered(&url("/loki/api/v1/query", &[("query", q), ("time", &end)]));
    answered(&url("/loki/api/v1/series", &[("match[]", q), ("start", &start), ("end", &end)]));
    answered(&url("/loki/api/v1/index/volume", &[("query", q), ("start", &start), ("end", &end)]));
}

/// PromQL over the fixture's hour of metrics: a range query of 240 steps and an instant query.
pub fn promql(input: &[u8]) {
    let query = text(input);
    let (start, end) = ((T0_S - 3600).to_string(), T0_S.to_string());
    let q = query.as_str();
    let range = [("query", q), ("start", start.as_str()), ("end", end.as_str()), ("step", "15")];
    check_answer(q, post_form("/prometheus/api/v1/query_range", &range));
    answered(&url("/prometheus/api/v1/query", &[("query", q), ("time", &end)]));
}

#[cfg(test)]
mod tests {
    use obsbox_fuzz::Replay;

    use super::*;

    #[test]
    fn fuzz_trace_filter() {
        Replay::new("trace_filter").dict("trace_filter").run(trace_filter);
    }

    #[test]
    fn fuzz_log_query() {
        Replay::new("log_query").dict("log_query").run(log_query);
    }

    #[test]
    fn fuzz_logql() {
        Replay::new("logql").dict("logql").run(logql);
    }

    #[test]
    fn fuzz_promql() {
        Replay::new("promql").dict("promql").run(promql);
    }

    #[test]
    fn the_fixture_is_queryable() {
        // The targets reach evaluation, not only the parsers: every API finds the fixture.
        let (start, end) = (ns(T0_S - 3600), ns(T0_S));
        let (status, body) =
            get(&url("/api/v1/traces", &[("filter", "cached = true"), ("start", &start), ("end", &end)]));
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("checkout"), "{body}");
        let (status, body) = get(&url("/api/v1/logs", &[("query", "payment"), ("start", &start), ("end", &end)]));
        assert!(status.is_success() && body.contains("payment failed"), "{status}: {body}");
        let q = r#"sum by (level) (count_over_time({service_name="checkout"}[10m]))"#;
        let (status, body) = get(&url("/loki/api/v1/query", &[("query", q), ("time", &end)]));
        assert!(status.is_success() && body.contains("\"value\""), "{status}: {body}");
        let (start_s, end_s) = ((T0_S - 3600).to_string(), T0_S.to_string());
        let (status, body) = get(&url(
            "/prometheus/api/v1/query_range",
            &[
                ("query", "sum(rate(http_server_requests_total[5m]))"),
                ("start", &start_s),
                ("end", &end_s),
                ("step", "60"),
            ],
        ));
        assert!(status.is_success() && body.contains("\"values\":[["), "{status}: {body}");
    }

    /// A tantivy `field:*` on a field the log index does not have passed the parser and failed
    /// the search: a 500 instead of a 400.
    #[test]
    fn regression_log_query_exists_query_on_unknown_field() {
        log_query(&obsbox_fuzz::regression("log_query", "exists-query-on-unknown-field"));
        for q in ["a-b:*", "(body:*)", "payment (x-y:*)"] {
            log_query(q.as_bytes());
        }
    }

    /// `exists(resource.KEY)` with a key of ~4 KB was a 400: the presence of a resource key was
    /// a regex over its `key\0value` terms, and the regex of a long key exceeded tantivy's size
    /// limit. It is a term range now.
    #[test]
    fn regression_trace_filter_exists_on_a_long_resource_key() {
        trace_filter(&obsbox_fuzz::regression("trace_filter", "exists-on-a-long-resource-key"));
    }

    /// `1e-40-40-...-4` (72 operands) parsed, but printed every operation in parentheses, and
    /// the printed text, 71 levels deep, no longer parsed. Printing now leaves out the
    /// parentheses that precedence and associativity make needless (`printing_round_trips` in
    /// `loki/logql.rs` checks a 200-operand chain); a tree deeper than the APIs take is not
    /// printed back here, and every endpoint refuses it.
    #[test]
    fn regression_logql_long_subtraction_chain_prints_flat() {
        logql(&obsbox_fuzz::regression("logql", "long-subtraction-chain"));
        // 1,800 operands: printing and comparing it overflowed the test thread's stack; the APIs
        // refuse it by its depth, and so does the round trip now.
        logql(&obsbox_fuzz::regression("logql", "long-subtraction-chain-1800"));
    }

    /// `1+1+...+1` (2 KB) overflowed the stack of the thread evaluating it and aborted the
    /// process; deeper ones overflowed promql-parser itself.
    #[test]
    fn regression_promql_deep_expressions_are_refused() {
        for file in ["deep-binary-chain", "deep-parens", "deep-binary-chain-64k"] {
            let q = obsbox_fuzz::regression("promql", file);
            promql(&q);
            let (start, end) = ((T0_S - 3600).to_string(), T0_S.to_string());
            let q = text(&q);
            let params = [("query", q.as_str()), ("start", &start), ("end", &end), ("step", "15")];
            let (status, body) = post_form("/prometheus/api/v1/query_range", &params);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{file}: {body}");
            assert!(body.contains("levels") || body.contains("operators"), "{file}: {body}");
        }
        // As deep as allowed (`[query] max_query_depth`, 64 by default) still works.
        let q = format!("{}1{}", "(".repeat(60), ")".repeat(60));
        let (status, body) = get(&url("/prometheus/api/v1/query", &[("query", &q), ("time", "1700000000")]));
        assert_eq!(status, StatusCode::OK, "{body}");
        let q = format!("1{}", "+1".repeat(60));
        let (status, body) = get(&url("/prometheus/api/v1/query", &[("query", &q), ("time", "1700000000")]));
        assert!(status == StatusCode::OK && body.contains("\"61\""), "{body}");
    }

    /// Known upstream: an excluded phrase with a word the index lacks trips a tantivy debug
    /// assertion (see `log_query`); the target skips such queries in debug builds.
    #[test]
    fn excluded_phrases_are_recognised() {
        for q in ["-1-debug severity>=9", "-\"1 debug\"", "x NOT \"a b\"", "(-a.b)", "x NOT a-b"] {
            assert!(negates_a_phrase(q), "{q}");
        }
        for q in ["payment -debug", "cache miss", "a-b", "\"cache miss\""] {
            assert!(!negates_a_phrase(q), "{q}");
        }
    }

    /// promql-parser panicked on `offset NaN` (a NaN duration): the handler died and the client
    /// got no answer. Found by the libFuzzer campaign.
    #[test]
    fn regression_promql_offset_nan_is_a_bad_query() {
        let q = obsbox_fuzz::regression("promql", "offset-nan-panics-the-parser");
        promql(&q);
        for q in ["up offset NaN", "rate(up[5m] offset Inf)", "up offset -Inf"] {
            let (status, body) = get(&url("/prometheus/api/v1/query", &[("query", q), ("time", "1700000000")]));
            assert_eq!(status, StatusCode::BAD_REQUEST, "{q}: {body}");
        }
    }
}
