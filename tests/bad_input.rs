//! Malformed, oversized and hostile OTLP requests against an in-process obsbox, over HTTP and
//! gRPC: each gets the status the OTLP specification asks for, and afterwards good requests
//! still succeed and the good data stored before is still there.
//!
//! A test binary of its own (not a module of `tests/e2e`): the gzip-bomb tests check the peak RSS
//! of this process, which other tests must not share.

#[path = "e2e/common/mod.rs"]
mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::OnceLock;

use common::{
    Addrs, SEARCHABLE, blocking, gauge_point, gauge_request, grpc_export_path, grpc_frame, grpc_raw, log_record,
    logs_request, post, span, span_id, str_kv, trace_id, trace_request,
};
use obsbox::storage::Reader;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;

const MAX_BODY: usize = 4 << 20;
const MAX_DECOMPRESSED: usize = 16 << 20;
const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// `google.rpc.Status`, the body of OTLP/HTTP error responses (details not needed here).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// A running in-process obsbox with explicit body limits, plus a client and a counter for
/// unique names.
struct Harness {
    obsbox: obsbox::Obsbox,
    addrs: Addrs,
    client: reqwest::Client,
    good_rounds: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Harness {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut config = common::test_config(&tmp.path().join("data"));
        config.limits.max_body_bytes = MAX_BODY;
        config.limits.max_decompressed_bytes = MAX_DECOMPRESSED;
        let obsbox = common::start_obsbox_with(config).await;
        let addrs = Addrs::of(&obsbox);
        let mut harness = Harness { obsbox, addrs, client: reqwest::Client::new(), good_rounds: Vec::new(), _tmp: tmp };
        harness.good_round("before").await;
        harness
    }

    /// Sends a good span, log record and metric point over HTTP (protobuf) and gRPC, checks
    /// every request succeeds, then that the data of this and every earlier round is stored.
    async fn good_round(&mut self, tag: &str) {
        let round = self.good_rounds.len() as u64 + 1;
        let service = format!("good-{round}-{tag}");
        let now = common::now_ns();
        for (i, transport) in ["http", "grpc"].into_iter().enumerate() {
            let i = i as u64;
            let traces = trace_request(&service, vec![span(&trace_id(round, i), &span_id(1), "good", now)]);
            let logs = logs_request(&service, vec![log_record(&format!("good {tag} {transport}"), now)]);
            let metrics = gauge_request(&service, "good_gauge", vec![gauge_point(round as f64, now + i, vec![])]);
            if transport == "http" {
                for (path, body) in [
                    ("/v1/traces", traces.encode_to_vec()),
                    ("/v1/logs", logs.encode_to_vec()),
                    ("/v1/metrics", metrics.encode_to_vec()),
                ] {
                    let response = post(&self.client, self.addrs.otlp_http, path, PROTOBUF, body, false).await;
                    assert_eq!(response.status(), 200, "good request to {path} after {tag}");
                }
            } else {
                let mut clients = common::grpc_clients(self.addrs.otlp_grpc).await;
                clients.traces.export(traces).await.expect("good gRPC traces export");
                clients.logs.export(logs).await.expect("good gRPC logs export");
                clients.metrics.export(metrics).await.expect("good gRPC metrics export");
            }
        }
        self.good_rounds.push(service);
        let store = self.obsbox.store().expect("a local store");
        let services = self.good_rounds.clone();
        let stored = blocking(move || {
            let complete = |service: &String| {
                common::spans_of_service(&store, service).len() == 2
                    && common::logs_of_service(&store, service).len() == 2
                    && common::metric_points(
                        &common::metrics_of_service(&store, "good_gauge", service).resource_metrics,
                    )
                    .len()
                        == 2
            };
            common::wait_until(SEARCHABLE, || services.iter().all(complete));
            services
                .iter()
                .map(|s| {
                    (
                        s.clone(),
                        common::spans_of_service(&store, s).len(),
                        common::logs_of_service(&store, s).len(),
                        common::metric_points(&common::metrics_of_service(&store, "good_gauge", s).resource_metrics)
                            .len(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .await;
        for (service, spans, logs, points) in stored {
            assert_eq!(
                (spans, logs, points),
                (2, 2, 2),
                "after {tag}: good data of {service} (spans, logs, points) stored"
            );
        }
    }

    async fn post(&self, path: &str, content_type: &str, body: Vec<u8>, gzip: bool) -> reqwest::Response {
        post(&self.client, self.addrs.otlp_http, path, content_type, body, gzip).await
    }

    async fn finish(self) {
        self.obsbox.shutdown().await.expect("clean shutdown");
    }
}

/// Reads an error response's `google.rpc.Status` (protobuf or JSON, by content type) and
/// returns its message.
async fn status_message(response: reqwest::Response) -> String {
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = response.bytes().await.expect("response body");
    if content_type.contains("json") {
        let value: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("JSON error body {:?}: {e}", String::from_utf8_lossy(&body)));
        value["message"].as_str().unwrap_or_default().to_string()
    } else {
        RpcStatus::decode(body.as_ref())
            .unwrap_or_else(|e| panic!("google.rpc.Status body {body:?} ({content_type}): {e}"))
            .message
    }
}

/// A valid trace request of `n` spans with a `pad`-byte attribute each.
fn big_trace_request(service: &str, n: u64, pad: usize) -> ExportTraceServiceRequest {
    let now = common::now_ns();
    let value = "x".repeat(pad);
    let spans = (0..n)
        .map(|i| {
            let mut s = span(&trace_id(7, i / 100), &span_id(i + 1), "big", now);
            s.attributes.push(str_kv("pad", &value));
            s
        })
        .collect();
    trace_request(service, spans)
}

/// Gzip of 1 GiB + 1 MiB of zeros: about 1 MiB that inflates past 1 GiB (deflate cannot do
/// better than ~1:1030). Built once, streaming, so the test itself never holds the inflated data.
fn gzip_bomb() -> &'static [u8] {
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..1025 {
            encoder.write_all(&chunk).expect("gzip into memory");
        }
        let bomb = encoder.finish().expect("gzip into memory");
        assert!(bomb.len() < MAX_BODY, "the bomb ({} bytes) fits the body limit", bomb.len());
        bomb
    })
}

fn peak_rss_self() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).expect("VmHWM value") * 1024
}

// --- HTTP ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_truncated_protobuf_is_400_with_status() {
    let mut h = Harness::start().await;
    let full = big_trace_request("truncated", 20, 10).encode_to_vec();
    for cut in [full.len() / 2, full.len() - 1] {
        for path in ["/v1/traces", "/v1/logs", "/v1/metrics"] {
            let response = h.post(path, PROTOBUF, full[..cut].to_vec(), false).await;
            assert_eq!(response.status(), 400, "{path} with {cut} of {} bytes", full.len());
            let message = status_message(response).await;
            assert!(!message.is_empty(), "{path}: the Status says what is wrong");
        }
        // The same, gzipped.
        let response = h.post("/v1/traces", PROTOBUF, full[..cut].to_vec(), true).await;
        assert_eq!(response.status(), 400, "gzipped truncated protobuf");
    }
    let response = h.post("/v1/traces", PROTOBUF, b"\xff\xff\xff\xff garbage".to_vec(), false).await;
    assert_eq!(response.status(), 400, "garbage protobuf");
    h.good_round("truncated protobuf").await;
    assert!(
        blocking({
            let store = h.obsbox.store().expect("a local store");
            move || common::spans_of_service(&store, "truncated").is_empty()
        })
        .await
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_invalid_json_is_400_with_status() {
    let mut h = Harness::start().await;
    let cases: [(&str, &[u8]); 5] = [
        ("/v1/traces", br#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": "x""#),
        ("/v1/traces", br#"{"resourceSpans": "not a list"}"#),
        (
            "/v1/traces",
            br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"0102030405060708"}]}]}]}"#,
        ),
        ("/v1/logs", b"not json at all"),
        ("/v1/metrics", br#"{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": 5}]}]}]}"#),
    ];
    for (path, body) in cases {
        let response = h.post(path, JSON, body.to_vec(), false).await;
        let shown = String::from_utf8_lossy(body);
        assert_eq!(response.status(), 400, "{path} with {shown}");
        let message = status_message(response).await;
        assert!(!message.is_empty(), "{path} with {shown}: the Status says what is wrong");
    }
    h.good_round("invalid json").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_wrong_length_ids_are_partial_success() {
    let mut h = Harness::start().await;
    let now = common::now_ns();
    let good_trace = trace_id(42, 1);
    let spans = vec![
        span(&good_trace, &span_id(1), "valid-1", now),
        span(&good_trace[..15], &span_id(2), "short-trace-id", now),
        span(&good_trace, &span_id(3)[..7], "short-span-id", now),
        span(&good_trace, &span_id(4), "valid-2", now),
    ];
    let response = h.post("/v1/traces", PROTOBUF, trace_request("partial-http", spans).encode_to_vec(), false).await;
    assert_eq!(response.status(), 200, "partial success is a 200");
    let body = response.bytes().await.expect("body");
    let answer = ExportTraceServiceResponse::decode(body.as_ref()).expect("ExportTraceServiceResponse");
    let partial = answer.partial_success.expect("partial_success set");
    assert_eq!(partial.rejected_spans, 2, "two spans rejected: {partial:?}");
    assert!(!partial.error_message.is_empty(), "the partial success says why");

    let mut bad_log = log_record("bad trace id", now);
    bad_log.trace_id = vec![1, 2, 3, 4, 5];
    let mut good_log = log_record("good trace id", now);
    good_log.trace_id = good_trace.clone();
    good_log.span_id = span_id(1);
    let response = h
        .post("/v1/logs", PROTOBUF, logs_request("partial-http", vec![bad_log, good_log]).encode_to_vec(), false)
        .await;
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.expect("body");
    let answer = ExportLogsServiceResponse::decode(body.as_ref()).expect("ExportLogsServiceResponse");
    let partial = answer.partial_success.expect("partial_success set");
    assert_eq!(partial.rejected_log_records, 1, "one log record rejected: {partial:?}");

    let store = h.obsbox.store().expect("a local store");
    let (names, logs) = blocking(move || {
        common::wait_until(SEARCHABLE, || {
            store.trace(&good_trace).expect("trace").len() >= 2
                && !common::logs_of_service(&store, "partial-http").is_empty()
        });
        let mut names: Vec<String> =
            common::spans_of_service(&store, "partial-http").into_iter().map(|r| r.span.name).collect();
        names.sort();
        (names, common::logs_of_service(&store, "partial-http"))
    })
    .await;
    assert_eq!(names, ["valid-1", "valid-2"], "the valid spans are stored, the invalid ones not");
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].record.span_id, span_id(1), "the valid log record is stored as sent");
    h.good_round("wrong-length ids").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_unknown_content_type_is_415() {
    let mut h = Harness::start().await;
    let body =
        trace_request("content-type", vec![span(&trace_id(9, 9), &span_id(9), "x", common::now_ns())]).encode_to_vec();
    for content_type in ["text/plain", "application/xml", "application/grpc"] {
        let response = h.post("/v1/traces", content_type, body.clone(), false).await;
        assert_eq!(response.status(), 415, "content type {content_type}");
    }
    let response = h.post("/v1/logs", "application/octet-stream", body, false).await;
    assert_eq!(response.status(), 415);
    h.good_round("unknown content type").await;
    let store = h.obsbox.store().expect("a local store");
    assert!(blocking(move || common::spans_of_service(&store, "content-type").is_empty()).await);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_oversized_body_is_413() {
    let mut h = Harness::start().await;
    // 5 MiB of valid spans, over the 4 MiB body limit.
    let big = big_trace_request("oversized", 1_000, 5 * 1024).encode_to_vec();
    assert!(big.len() > MAX_BODY);
    let response = common::try_post(&h.client, h.addrs.otlp_http, "/v1/traces", PROTOBUF, big, false)
        .await
        .unwrap_or_else(|error| {
            panic!(
                "no 413 for a body over max_body_bytes: the server closed the connection while the \
                 client was still sending the body ({error:?}); it must read (drain) the rest of the \
                 body, or linger before closing, so that clients see the 413"
            )
        });
    assert_eq!(response.status(), 413, "body over max_body_bytes");

    // 20 MiB of valid spans that gzip to far less than the body limit: over the decompressed
    // limit only once inflated.
    let inflating = big_trace_request("oversized", 4_000, 5 * 1024).encode_to_vec();
    assert!(inflating.len() > MAX_DECOMPRESSED);
    assert!(common::gzip_bytes(&inflating).len() < MAX_BODY);
    let response = h.post("/v1/traces", PROTOBUF, inflating, true).await;
    assert_eq!(response.status(), 413, "body over max_decompressed_bytes after gzip inflation");
    h.good_round("oversized body").await;
    let store = h.obsbox.store().expect("a local store");
    assert!(blocking(move || common::spans_of_service(&store, "oversized").is_empty()).await);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_gzip_bomb_is_413() {
    let bomb = blocking(|| gzip_bomb().to_vec()).await;
    let mut h = Harness::start().await;
    for path in ["/v1/traces", "/v1/logs"] {
        let response = h
            .client
            .post(format!("http://{}{path}", h.addrs.otlp_http))
            .header("content-type", PROTOBUF)
            .header("content-encoding", "gzip")
            .body(bomb.clone())
            .send()
            .await
            .expect("bomb request completes");
        assert_eq!(response.status(), 413, "{path}: {} bytes inflating to 1 GiB", bomb.len());
    }
    let peak = peak_rss_self();
    assert!(peak < 768 << 20, "peak RSS {} MiB: the bomb was inflated in memory", peak >> 20);
    h.good_round("gzip bomb").await;
    h.finish().await;
}

// --- gRPC ----------------------------------------------------------------------------------

async fn grpc_call(addr: SocketAddr, signal: &str, frame: Vec<u8>, gzip: bool) -> common::GrpcReply {
    grpc_raw(addr, &grpc_export_path(signal), frame, gzip).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_truncated_protobuf_is_invalid_argument() {
    let mut h = Harness::start().await;
    let full = big_trace_request("truncated", 20, 10).encode_to_vec();
    for signal in ["trace", "logs", "metrics"] {
        let reply = grpc_call(h.addrs.otlp_grpc, signal, grpc_frame(false, &full[..full.len() / 2]), false).await;
        assert_eq!(reply.code, tonic::Code::InvalidArgument, "{signal}: {reply:?}");
        assert!(!reply.message.is_empty(), "{signal}: the status says what is wrong");
    }
    // Compressed frame whose content is truncated protobuf.
    let frame = grpc_frame(true, &common::gzip_bytes(&full[..full.len() - 1]));
    let reply = grpc_call(h.addrs.otlp_grpc, "trace", frame, true).await;
    assert_eq!(reply.code, tonic::Code::InvalidArgument, "gzipped truncated protobuf: {reply:?}");
    // A sanity check of the raw client: the full message is accepted.
    let reply = grpc_call(h.addrs.otlp_grpc, "trace", grpc_frame(false, &full), false).await;
    assert_eq!(reply.code, tonic::Code::Ok, "{reply:?}");
    h.good_round("gRPC truncated protobuf").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_wrong_length_ids_are_partial_success() {
    let mut h = Harness::start().await;
    let now = common::now_ns();
    let good_trace = trace_id(43, 1);
    let spans = vec![
        span(&good_trace, &span_id(1), "valid-1", now),
        span(&[], &span_id(2), "empty-trace-id", now),
        span(&good_trace, &span_id(3)[..4], "short-span-id", now),
        span(&trace_id(43, 2)[..12], &span_id(4), "short-trace-id", now),
        span(&good_trace, &span_id(5), "valid-2", now),
    ];
    let mut clients = common::grpc_clients(h.addrs.otlp_grpc).await;
    let answer =
        clients.traces.export(trace_request("partial-grpc", spans)).await.expect("partial success is OK").into_inner();
    let partial = answer.partial_success.expect("partial_success set");
    assert_eq!(partial.rejected_spans, 3, "{partial:?}");
    assert!(!partial.error_message.is_empty());

    let mut bad_log = log_record("bad span id", now);
    bad_log.trace_id = good_trace.clone();
    bad_log.span_id = vec![1, 2, 3];
    let answer = clients
        .logs
        .export(logs_request("partial-grpc", vec![bad_log, log_record("no ids is fine", now)]))
        .await
        .expect("partial success is OK")
        .into_inner();
    assert_eq!(answer.partial_success.expect("partial_success set").rejected_log_records, 1);

    let store = h.obsbox.store().expect("a local store");
    let (names, logs) = blocking(move || {
        common::wait_until(SEARCHABLE, || {
            store.trace(&good_trace).expect("trace").len() >= 2
                && !common::logs_of_service(&store, "partial-grpc").is_empty()
        });
        let mut names: Vec<String> =
            common::spans_of_service(&store, "partial-grpc").into_iter().map(|r| r.span.name).collect();
        names.sort();
        (names, common::logs_of_service(&store, "partial-grpc"))
    })
    .await;
    assert_eq!(names, ["valid-1", "valid-2"]);
    assert_eq!(logs.len(), 1);
    h.good_round("gRPC wrong-length ids").await;
    h.finish().await;
}

fn assert_refused_as_too_large(context: &str, reply: &common::GrpcReply) {
    assert!(
        matches!(reply.code, tonic::Code::ResourceExhausted | tonic::Code::OutOfRange | tonic::Code::InvalidArgument),
        "{context}: expected RESOURCE_EXHAUSTED (or OUT_OF_RANGE / INVALID_ARGUMENT), got {reply:?}"
    );
    assert!(!reply.message.is_empty(), "{context}: the status says what is wrong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_oversized_message_is_refused() {
    let mut h = Harness::start().await;
    let big = big_trace_request("oversized", 1_000, 5 * 1024).encode_to_vec();
    assert!(big.len() > MAX_BODY);
    let reply = grpc_call(h.addrs.otlp_grpc, "trace", grpc_frame(false, &big), false).await;
    assert_refused_as_too_large("message over max_body_bytes", &reply);

    let inflating = big_trace_request("oversized", 4_000, 5 * 1024).encode_to_vec();
    let reply = grpc_call(h.addrs.otlp_grpc, "trace", grpc_frame(true, &common::gzip_bytes(&inflating)), true).await;
    assert_refused_as_too_large("message over max_decompressed_bytes once inflated", &reply);
    h.good_round("gRPC oversized").await;
    let store = h.obsbox.store().expect("a local store");
    assert!(blocking(move || common::spans_of_service(&store, "oversized").is_empty()).await);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gzip_bomb_is_refused() {
    let bomb = blocking(|| gzip_bomb().to_vec()).await;
    let mut h = Harness::start().await;
    let reply = grpc_call(h.addrs.otlp_grpc, "trace", grpc_frame(true, &bomb), true).await;
    assert_refused_as_too_large("gzip bomb", &reply);
    let peak = peak_rss_self();
    assert!(peak < 768 << 20, "peak RSS {} MiB: the bomb was inflated in memory", peak >> 20);
    h.good_round("gRPC gzip bomb").await;
    h.finish().await;
}
