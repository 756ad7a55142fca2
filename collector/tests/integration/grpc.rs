//! OTLP/gRPC receiver against real sockets, driven by the clients `opentelemetry-proto` generates.

use crate::common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use obsbox_collector::Limits;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr)).expect("uri").connect().await.expect("connect")
}

#[tokio::test]
async fn all_signals_with_and_without_gzip() {
    let writer = Arc::new(RecordingWriter::default());
    let t = collector(writer.clone(), Limits::default());
    let server = start_grpc(t.collector.clone()).await;
    let ch = channel(&server).await;

    for gzip in [false, true] {
        let mut traces_client = TraceServiceClient::new(ch.clone());
        let mut logs_client = LogsServiceClient::new(ch.clone());
        let mut metrics_client = MetricsServiceClient::new(ch.clone());
        if gzip {
            traces_client =
                traces_client.send_compressed(CompressionEncoding::Gzip).accept_compressed(CompressionEncoding::Gzip);
            logs_client =
                logs_client.send_compressed(CompressionEncoding::Gzip).accept_compressed(CompressionEncoding::Gzip);
            metrics_client =
                metrics_client.send_compressed(CompressionEncoding::Gzip).accept_compressed(CompressionEncoding::Gzip);
        }
        let r = traces_client.export(traces(3, 0)).await.expect("traces export").into_inner();
        assert_eq!(r.partial_success, None, "fully accepted: partial_success unset");
        let r = logs_client.export(logs(4, 0)).await.expect("logs export").into_inner();
        assert_eq!(r.partial_success, None);
        let r = metrics_client.export(metrics(5, 0)).await.expect("metrics export").into_inner();
        assert_eq!(r.partial_success, None);
    }
    assert_eq!(writer.batch_count(), 6);
    assert_eq!(writer.items(), 2 * (3 + 4 + 5));
    {
        let batches = writer.batches.lock().expect("lock");
        assert_eq!(batches[0], obsbox_storage::Batch::Traces(traces(3, 0)), "stored exactly as sent");
    }
    assert_eq!(metric(&t.registry, "obsbox_ingest_accepted_items_total", &[("signal", "traces")]), 6.0);
    assert_eq!(metric(&t.registry, "obsbox_ingest_accepted_items_total", &[("signal", "metrics")]), 10.0);
    assert_eq!(
        metric(
            &t.registry,
            "obsbox_ingest_requests_total",
            &[("signal", "logs"), ("transport", "grpc"), ("outcome", "ok")]
        ),
        2.0
    );
    assert!(
        metric(&t.registry, "obsbox_ingest_request_bytes_total", &[("signal", "traces"), ("transport", "grpc")]) > 0.0
    );
    assert_eq!(metric(&t.registry, "obsbox_ingest_decode_seconds", &[("signal", "traces")]), 2.0);
    assert_eq!(metric(&t.registry, "obsbox_ingest_inflight_bytes", &[]), 0.0);
    server.stop().await;
}

#[tokio::test]
async fn partial_success_counts_and_names_the_reason() {
    let writer = Arc::new(RecordingWriter::default());
    let t = collector(writer.clone(), Limits::default());
    let server = start_grpc(t.collector.clone()).await;
    let ch = channel(&server).await;

    let r = TraceServiceClient::new(ch.clone()).export(traces(3, 2)).await.expect("export").into_inner();
    let ps = r.partial_success.expect("partial success set");
    assert_eq!(ps.rejected_spans, 2);
    assert_eq!(ps.error_message, "2 spans rejected: trace_id must be 16 bytes");

    let r = LogsServiceClient::new(ch.clone()).export(logs(1, 1)).await.expect("export").into_inner();
    let ps = r.partial_success.expect("partial success set");
    assert_eq!(ps.rejected_log_records, 1);
    assert_eq!(ps.error_message, "1 log record rejected: span_id must be empty or 8 bytes");

    let r = MetricsServiceClient::new(ch.clone()).export(metrics(2, 3)).await.expect("export").into_inner();
    let ps = r.partial_success.expect("partial success set");
    assert_eq!(ps.rejected_data_points, 3);
    assert!(ps.error_message.contains("longer than 65536 bytes"), "{}", ps.error_message);

    assert_eq!(writer.items(), 3 + 1 + 2, "only valid items are written");

    // Nothing valid: still OK with partial success, and the writer is not called.
    let before = writer.batch_count();
    let r = TraceServiceClient::new(ch.clone()).export(traces(0, 4)).await.expect("export").into_inner();
    assert_eq!(r.partial_success.map(|p| p.rejected_spans), Some(4));
    assert_eq!(writer.batch_count(), before);

    assert_eq!(
        metric(&t.registry, "obsbox_ingest_rejected_items_total", &[("signal", "traces"), ("reason", "invalid")]),
        6.0
    );
    assert_eq!(
        metric(&t.registry, "obsbox_ingest_rejected_items_total", &[("signal", "metrics"), ("reason", "limit")]),
        3.0
    );
    assert_eq!(
        metric(
            &t.registry,
            "obsbox_ingest_requests_total",
            &[("signal", "traces"), ("transport", "grpc"), ("outcome", "partial")]
        ),
        2.0
    );
    server.stop().await;
}

async fn raw_export(ch: &Channel, path: &'static str, body: Bytes) -> Result<Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.expect("ready");
    grpc.unary(tonic::Request::new(body), http::uri::PathAndQuery::from_static(path), RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn bad_input_is_refused_and_the_next_request_succeeds() {
    let writer = Arc::new(RecordingWriter::default());
    let limits = Limits { max_body_bytes: 64 * 1024, max_items_per_request: 10, ..Limits::default() };
    let t = collector(writer.clone(), limits);
    let server = start_grpc(t.collector.clone()).await;
    let ch = channel(&server).await;
    let mut client = TraceServiceClient::new(ch.clone());

    // Truncated protobuf.
    let mut bytes = traces(2, 0).encode_to_vec();
    bytes.truncate(bytes.len() - 3);
    let status =
        raw_export(&ch, "/opentelemetry.proto.collector.trace.v1.TraceService/Export", bytes.into()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("invalid protobuf: "), "{}", status.message());
    client.export(traces(1, 0)).await.expect("good request after a bad one");

    // Too many items: the whole request is refused.
    let status = client.export(traces(11, 0)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "request has 11 spans, more than the limit of 10");
    client.export(traces(10, 0)).await.expect("good request after a bad one");

    // Larger than max_body_bytes.
    let big = Bytes::from(vec![0x0a; 100 * 1024]);
    let status = raw_export(&ch, "/opentelemetry.proto.collector.logs.v1.LogsService/Export", big).await.unwrap_err();
    assert!(matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange), "{status:?}");
    assert!(retry_delay(&status).is_none(), "too large is not retryable");
    client.export(traces(1, 0)).await.expect("good request after a bad one");

    // A gzip bomb: the message inflates past max_decompressed_bytes.
    let status = TraceServiceClient::new(ch.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .export(huge_request(40 * 1024 * 1024))
        .await
        .unwrap_err();
    assert!(matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange), "{status:?}");
    client.export(traces(1, 0)).await.expect("good request after a bad one");

    // Unknown method of a known service.
    let status =
        raw_export(&ch, "/opentelemetry.proto.collector.trace.v1.TraceService/Nope", Bytes::new()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);

    assert_eq!(writer.items(), 1 + 10 + 1 + 1);
    assert_eq!(metric(&t.registry, "obsbox_ingest_inflight_bytes", &[]), 0.0);
    server.stop().await;
}

/// A request of about `bytes` bytes that gzip shrinks to almost nothing.
fn huge_request(bytes: usize) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    let mut req = traces(1, 0);
    req.resource_spans[0].scope_spans[0].spans[0].name = "a".repeat(bytes);
    req
}

#[tokio::test]
async fn store_errors_map_to_grpc_codes() {
    for (make, code, retryable) in [
        (overloaded as fn() -> _, Code::ResourceExhausted, true),
        (unavailable, Code::Unavailable, true),
        (internal, Code::Internal, false),
    ] {
        let t = collector(Arc::new(FailingWriter(make)), Limits::default());
        let server = start_grpc(t.collector.clone()).await;
        let ch = channel(&server).await;
        let status = LogsServiceClient::new(ch).export(logs(2, 0)).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(!status.message().contains("secret"), "internal details are not returned");
        let delay = retry_delay(&status);
        assert_eq!(delay.is_some(), retryable, "{status:?}");
        if code == Code::ResourceExhausted {
            assert_eq!(delay, Some(ProtoDuration { seconds: 2, nanos: 0 }));
            assert_eq!(
                metric(
                    &t.registry,
                    "obsbox_ingest_rejected_items_total",
                    &[("signal", "logs"), ("reason", "overloaded")]
                ),
                2.0
            );
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn inflight_budget_refuses_with_retry_info() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let limits =
        Limits { max_body_bytes: 4096, max_decompressed_bytes: 4096, max_inflight_bytes: 8192, ..Limits::default() };
    let t = collector(Arc::new(GateWriter { gate: gate.clone() }), limits);
    let server = start_grpc(t.collector.clone()).await;
    let ch = channel(&server).await;

    let req = huge_request(3000);
    let held = (0..2)
        .map(|_| {
            let mut c = TraceServiceClient::new(ch.clone());
            let req = req.clone();
            tokio::spawn(async move { c.export(req).await })
        })
        .collect::<Vec<_>>();
    // Wait until both are parked in the writer, holding their budget.
    for _ in 0..200 {
        if metric(&t.registry, "obsbox_ingest_inflight_bytes", &[]) >= 6000.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let status = TraceServiceClient::new(ch.clone()).export(req.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("retry"), "{}", status.message());
    assert_eq!(retry_delay(&status), Some(ProtoDuration { seconds: 1, nanos: 0 }));

    gate.add_permits(3);
    for h in held {
        h.await.expect("join").expect("held request completes");
    }
    TraceServiceClient::new(ch).export(req).await.expect("accepted once the budget is back");
    assert_eq!(metric(&t.registry, "obsbox_ingest_inflight_bytes", &[]), 0.0);
    server.stop().await;
}
