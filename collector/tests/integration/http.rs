//! OTLP/HTTP receiver: the router driven with `oneshot`, and a real server driven by reqwest.

use crate::common;

use std::sync::Arc;

use axum::body::Body;
use common::*;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use obsbox_collector::{Limits, http_router};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tower::ServiceExt;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }

    fn content_type(&self) -> &str {
        self.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

async fn send(router: &axum::Router, req: Request<Body>) -> Reply {
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Reply { status, headers, body }
}

fn post(path: &str, content_type: &str, gzip: bool, body: Vec<u8>) -> Request<Body> {
    let body = if gzip { common::gzip(&body) } else { body };
    let mut b =
        Request::post(path).header(header::CONTENT_TYPE, content_type).header(header::CONTENT_LENGTH, body.len());
    if gzip {
        b = b.header(header::CONTENT_ENCODING, "gzip");
    }
    b.body(Body::from(body)).expect("request")
}

#[tokio::test]
async fn all_signals_protobuf_json_and_gzip() {
    let writer = Arc::new(RecordingWriter::default());
    let t = collector(writer.clone(), Limits::default());
    let router = http_router(t.collector.clone());

    for gzip in [false, true] {
        // protobuf
        let r = send(&router, post("/v1/traces", PROTOBUF, gzip, traces(3, 0).encode_to_vec())).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.content_type(), PROTOBUF);
        assert_eq!(
            ExportTraceServiceResponse::decode(r.body.clone()).expect("response"),
            ExportTraceServiceResponse::default()
        );
        let r = send(&router, post("/v1/logs", PROTOBUF, gzip, logs(4, 0).encode_to_vec())).await;
        assert_eq!(r.status, StatusCode::OK);
        ExportLogsServiceResponse::decode(r.body.clone()).expect("response");
        let r = send(&router, post("/v1/metrics", PROTOBUF, gzip, metrics(5, 0).encode_to_vec())).await;
        assert_eq!(r.status, StatusCode::OK);
        ExportMetricsServiceResponse::decode(r.body.clone()).expect("response");

        // JSON, as serialized by opentelemetry-proto (hex ids, int64 as strings)
        let json = serde_json::to_vec(&traces(3, 0)).expect("serialize");
        let r = send(&router, post("/v1/traces", "application/json; charset=utf-8", gzip, json)).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.content_type(), JSON);
        assert_eq!(r.json(), serde_json::json!({}));
        let r = send(&router, post("/v1/logs", JSON, gzip, serde_json::to_vec(&logs(4, 0)).expect("ser"))).await;
        assert_eq!(r.status, StatusCode::OK);
        let r = send(&router, post("/v1/metrics", JSON, gzip, serde_json::to_vec(&metrics(5, 0)).expect("ser"))).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(writer.items(), 2 * 2 * (3 + 4 + 5));
    {
        let batches = writer.batches.lock().expect("lock");
        assert_eq!(batches[3], obsbox_storage::Batch::Traces(traces(3, 0)), "JSON decodes to the same request");
    }
    assert_eq!(
        metric(
            &t.registry,
            "obsbox_ingest_requests_total",
            &[("signal", "traces"), ("transport", "http"), ("outcome", "ok")]
        ),
        4.0
    );
    assert_eq!(metric(&t.registry, "obsbox_ingest_inflight_bytes", &[]), 0.0);
}

#[tokio::test]
async fn hand_written_json_like_browser_sdks_send() {
    let writer = Arc::new(RecordingWriter::default());
    let t = collector(writer.clone(), Limits::default());
    let router = http_router(t.collector.clone());
    let body = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"web"}}]},
      "scopeSpans":[{"scope":{"name":"@opentelemetry/instrumentation-fetch"},"spans":[
        {"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174","name":"GET","kind":3,
         "startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000100000000",
         "attributes":[{"key":"http.status_code","value":{"intValue":200}},{"key":"n","value":{"intValue":"7"}}],
         "droppedAttributesCount":0,"events":[],"links":[],"status":{"code":0}},
        {"traceId":"5b8efff798038103d269b633813fc6","spanId":"eee19b7ec3c1b174","name":"short id","kind":1}
      ]}]}]}"#;
    let r = send(&router, post("/v1/traces", JSON, false, body.to_vec())).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        serde_json::json!({"partialSuccess": {"rejectedSpans": 1, "errorMessage": "1 span rejected: trace_id must be 16 bytes"}})
    );
    assert_eq!(writer.items(), 1);

    let r = send(&router, post("/v1/logs", JSON, false, b"{}".to_vec())).await;
    assert_eq!(r.status, StatusCode::OK, "empty request is valid");
    assert_eq!(writer.batch_count(), 1, "nothing to write for zero items");
}

#[tokio::test]
async fn partial_success_in_protobuf() {
    let writer = Arc::new(RecordingWriter::default());
    let t = collector(writer.clone(), Limits::default());
    let router = http_router(t.collector.clone());
    let r = send(&router, post("/v1/logs", PROTOBUF, true, logs(2, 3).encode_to_vec())).await;
    assert_eq!(r.status, StatusCode::OK);
    let ps = ExportLogsServiceResponse::decode(r.body).expect("response").partial_success.expect("partial");
    assert_eq!(ps.rejected_log_records, 3);
    assert_eq!(ps.error_message, "3 log records rejected: span_id must be empty or 8 bytes");

    let r = send(&router, post("/v1/metrics", PROTOBUF, false, metrics(0, 2).encode_to_vec())).await;
    assert_eq!(r.status, StatusCode::OK, "nothing valid is still 200");
    let ps = ExportMetricsServiceResponse::decode(r.body).expect("response").partial_success.expect("partial");
    assert_eq!(ps.rejected_data_points, 2);
    assert_eq!(writer.items(), 2);
    assert_eq!(writer.batch_count(), 1);
}

#[tokio::test]
async fn bad_input_is_refused_and_the_next_request_succeeds() {
    let writer = Arc::new(RecordingWriter::default());
    let limits = Limits { max_body_bytes: 64 * 1024, max_decompressed_bytes: 1 << 20, ..Limits::default() };
    let t = collector(writer.clone(), limits);
    let router = http_router(t.collector.clone());
    let good = || post("/v1/traces", PROTOBUF, false, traces(1, 0).encode_to_vec());

    let mut truncated = traces(2, 0).encode_to_vec();
    truncated.truncate(truncated.len() - 3);
    let oversized_chunked = Request::post("/v1/traces")
        .header(header::CONTENT_TYPE, PROTOBUF)
        .body(Body::from(vec![0u8; 100 * 1024]))
        .expect("request");
    let cases: Vec<(&str, Request<Body>, StatusCode, &str, &str)> = vec![
        (
            "truncated protobuf",
            post("/v1/traces", PROTOBUF, false, truncated),
            StatusCode::BAD_REQUEST,
            PROTOBUF,
            "invalid protobuf: ",
        ),
        (
            "invalid JSON",
            post("/v1/logs", JSON, false, b"{\"resourceLogs\": [".to_vec()),
            StatusCode::BAD_REQUEST,
            JSON,
            "invalid OTLP/JSON at line 1 column 18: ",
        ),
        (
            "non-hex trace id",
            post(
                "/v1/traces",
                JSON,
                false,
                br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"not hex!"}]}]}]}"#.to_vec(),
            ),
            StatusCode::BAD_REQUEST,
            JSON,
            "invalid OTLP/JSON at line 1 column ",
        ),
        (
            "invalid gzip",
            {
                let mut r = post("/v1/traces", PROTOBUF, false, b"plainly not gzip".to_vec());
                r.headers_mut().insert(header::CONTENT_ENCODING, "gzip".parse().expect("value"));
                r
            },
            StatusCode::BAD_REQUEST,
            PROTOBUF,
            "invalid gzip body",
        ),
        (
            "unknown content type",
            post("/v1/traces", "text/plain", false, b"hi".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JSON,
            "unsupported Content-Type \"text/plain\"",
        ),
        (
            "missing content type",
            Request::post("/v1/traces").body(Body::from("x")).expect("request"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JSON,
            "missing Content-Type",
        ),
        (
            "unknown encoding",
            {
                let mut r = post("/v1/traces", JSON, false, b"{}".to_vec());
                r.headers_mut().insert(header::CONTENT_ENCODING, "br".parse().expect("value"));
                r
            },
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JSON,
            "unsupported Content-Encoding \"br\"",
        ),
        (
            "oversized by Content-Length",
            post("/v1/metrics", PROTOBUF, false, vec![0u8; 100 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            PROTOBUF,
            "request body is larger than the limit of 65536 bytes",
        ),
        (
            "oversized without Content-Length",
            oversized_chunked,
            StatusCode::PAYLOAD_TOO_LARGE,
            PROTOBUF,
            "request body is larger than the limit of 65536 bytes",
        ),
        (
            "gzip bomb",
            {
                let bomb = gzip_bomb(16, 4);
                Request::post("/v1/logs")
                    .header(header::CONTENT_TYPE, JSON)
                    .header(header::CONTENT_ENCODING, "gzip")
                    .body(Body::from(bomb))
                    .expect("request")
            },
            StatusCode::PAYLOAD_TOO_LARGE,
            JSON,
            "request body inflates to more than the limit of 1048576 bytes",
        ),
    ];
    for (what, req, status, content_type, message) in cases {
        let r = send(&router, req).await;
        assert_eq!(r.status, status, "{what}: {:?}", r.body);
        assert_eq!(r.content_type(), content_type, "{what}");
        let (code, msg) = if content_type == JSON {
            let v = r.json();
            (v["code"].as_i64().expect("code"), v["message"].as_str().expect("message").to_owned())
        } else {
            let s = RpcStatus::decode(r.body.clone()).expect("google.rpc.Status");
            (i64::from(s.code), s.message)
        };
        let expected_code = if status == StatusCode::PAYLOAD_TOO_LARGE { 8 } else { 3 };
        assert_eq!(code, expected_code, "{what}: {msg}");
        assert!(msg.starts_with(message), "{what}: {msg}");
        assert!(r.headers.get(header::RETRY_AFTER).is_none(), "{what}: not retryable");

        let r = send(&router, good()).await;
        assert_eq!(r.status, StatusCode::OK, "good request after {what}");
    }
    assert_eq!(metric(&t.registry, "obsbox_ingest_inflight_bytes", &[]), 0.0);
    assert_eq!(
        metric(
            &t.registry,
            "obsbox_ingest_requests_total",
            &[("signal", "traces"), ("transport", "http"), ("outcome", "unsupported")]
        ),
        3.0
    );
}

#[tokio::test]
async fn too_many_items_refuses_the_whole_request() {
    let writer = Arc::new(RecordingWriter::default());
    let t = collector(writer.clone(), Limits { max_items_per_request: 5, ..Limits::default() });
    let router = http_router(t.collector.clone());
    let r = send(&router, post("/v1/traces", JSON, false, serde_json::to_vec(&traces(6, 0)).expect("ser"))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json(), serde_json::json!({"code": 3, "message": "request has 6 spans, more than the limit of 5"}));
    assert_eq!(writer.batch_count(), 0);
    assert_eq!(
        metric(&t.registry, "obsbox_ingest_rejected_items_total", &[("signal", "traces"), ("reason", "limit")]),
        6.0
    );
}

#[tokio::test]
async fn store_errors_map_to_http_statuses() {
    for (make, status, retry_after) in [
        (overloaded as fn() -> _, StatusCode::TOO_MANY_REQUESTS, Some("2")),
        (unavailable, StatusCode::SERVICE_UNAVAILABLE, Some("1")),
        (internal, StatusCode::INTERNAL_SERVER_ERROR, None),
    ] {
        let t = collector(Arc::new(FailingWriter(make)), Limits::default());
        let router = http_router(t.collector.clone());
        let r = send(&router, post("/v1/traces", JSON, false, serde_json::to_vec(&traces(2, 0)).expect("ser"))).await;
        assert_eq!(r.status, status);
        assert_eq!(r.headers.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), retry_after);
        let v = r.json();
        assert!(!v["message"].as_str().unwrap_or("secret").contains("secret"), "{v}");
        assert!(!v["message"].as_str().unwrap_or("disk full").contains("disk full"), "{v}");
    }
}

#[tokio::test]
async fn inflight_budget_refuses_with_429() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let limits =
        Limits { max_body_bytes: 4096, max_decompressed_bytes: 4096, max_inflight_bytes: 8192, ..Limits::default() };
    let t = collector(Arc::new(GateWriter { gate: gate.clone() }), limits);
    let router = http_router(t.collector.clone());
    let body = || {
        let mut req = traces(1, 0);
        req.resource_spans[0].scope_spans[0].spans[0].name = "a".repeat(3000);
        req.encode_to_vec()
    };
    let held: Vec<_> = (0..2)
        .map(|_| {
            let router = router.clone();
            let req = post("/v1/traces", PROTOBUF, false, body());
            tokio::spawn(async move { send(&router, req).await.status })
        })
        .collect();
    for _ in 0..200 {
        if metric(&t.registry, "obsbox_ingest_inflight_bytes", &[]) >= 6000.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let r = send(&router, post("/v1/traces", PROTOBUF, false, body())).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
    let s = RpcStatus::decode(r.body).expect("status");
    assert_eq!(s.code, tonic::Code::ResourceExhausted as i32);
    assert!(s.message.contains("retry"), "{}", s.message);

    gate.add_permits(3);
    for h in held {
        assert_eq!(h.await.expect("join"), StatusCode::OK);
    }
    let r = send(&router, post("/v1/traces", PROTOBUF, false, body())).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(metric(&t.registry, "obsbox_ingest_inflight_bytes", &[]), 0.0);
}

#[tokio::test]
async fn methods_paths_and_cors() {
    let t = collector(Arc::new(RecordingWriter::default()), Limits::default());
    let router = http_router(t.collector.clone());

    let r = send(&router, Request::get("/v1/traces").body(Body::empty()).expect("request")).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = send(&router, post("/v1/spans", JSON, false, b"{}".to_vec())).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri("/v1/traces")
        .header(header::ORIGIN, "https://app.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type,traceparent")
        .body(Body::empty())
        .expect("request");
    let r = send(&router, preflight).await;
    assert!(r.status.is_success(), "{:?}", r.status);
    assert_eq!(r.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).and_then(|v| v.to_str().ok()), Some("*"));
    let methods = r.headers.get(header::ACCESS_CONTROL_ALLOW_METHODS).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(methods.contains("POST"), "{methods}");
    let allowed = r.headers.get(header::ACCESS_CONTROL_ALLOW_HEADERS).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(allowed.contains("content-type") && allowed.contains("traceparent"), "{allowed}");

    let mut req = post("/v1/traces", JSON, false, b"{}".to_vec());
    req.headers_mut().insert(header::ORIGIN, "https://app.example".parse().expect("value"));
    let r = send(&router, req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).and_then(|v| v.to_str().ok()), Some("*"));
}

#[tokio::test]
async fn real_server_over_http1_and_graceful_shutdown() {
    let writer = Arc::new(RecordingWriter::default());
    let t = collector(writer.clone(), Limits::default());
    let server = start_http(t.collector.clone()).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", server.addr);

    let r = client
        .post(format!("{base}/v1/traces"))
        .header(header::CONTENT_TYPE, PROTOBUF)
        .header(header::CONTENT_ENCODING, "gzip")
        .body(common::gzip(&traces(2, 1).encode_to_vec()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()), Some(PROTOBUF));
    let resp = ExportTraceServiceResponse::decode(r.bytes().await.expect("body")).expect("response");
    assert_eq!(resp.partial_success.map(|p| p.rejected_spans), Some(1));

    let r = client
        .post(format!("{base}/v1/logs"))
        .header(header::CONTENT_TYPE, JSON)
        .body(serde_json::to_vec(&logs(3, 0)).expect("ser"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.expect("body"), "{}");

    let r = client
        .post(format!("{base}/v1/metrics"))
        .header(header::CONTENT_TYPE, PROTOBUF)
        .body(vec![0u8; 9 * 1024 * 1024])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    assert_eq!(writer.items(), 2 + 3);
    server.stop().await;
    assert!(client.post(format!("{base}/v1/logs")).body("{}").send().await.is_err(), "stopped");
}
