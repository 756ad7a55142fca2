//! A gzip bomb (about 1 MiB expanding to 1 GiB) against the default limits: refused with 413,
//! and the process never holds much more than `max_decompressed_bytes` for it.
//!
//! In its own test binary so the peak-RSS check sees this test alone.

#[path = "integration/common/mod.rs"]
mod common;

use std::sync::Arc;

use axum::body::Body;
use common::*;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use obsbox_collector::{Limits, http_router};
use tower::ServiceExt;

/// Peak resident set size of this process, from /proc (Linux only).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tokio::test]
async fn gzip_bomb_is_refused_without_inflating_it() {
    // 64 MiB of zeros per gzip member, 16 members: ~1 MiB on the wire, 1 GiB inflated.
    let bomb = gzip_bomb(64, 16);
    assert!(bomb.len() < 2 * 1024 * 1024, "bomb is {} bytes", bomb.len());
    let before = peak_rss_bytes();

    let writer = Arc::new(RecordingWriter::default());
    let t = collector(writer.clone(), Limits::default());
    let router = http_router(t.collector.clone());
    let req = Request::post("/v1/traces")
        .header(header::CONTENT_TYPE, "application/x-protobuf")
        .header(header::CONTENT_ENCODING, "gzip")
        .header(header::CONTENT_LENGTH, bomb.len())
        .body(Body::from(bomb))
        .expect("request");
    let started = std::time::Instant::now();
    let resp = router.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let status = <RpcStatus as prost::Message>::decode(body).expect("google.rpc.Status");
    assert_eq!(status.message, "request body inflates to more than the limit of 33554432 bytes");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "took {:?}", started.elapsed());

    if let (Some(before), Some(after)) = (before, peak_rss_bytes()) {
        let grown = after.saturating_sub(before);
        assert!(grown < 128 * 1024 * 1024, "peak RSS grew by {} MiB", grown >> 20);
    }
    assert_eq!(writer.batch_count(), 0);
    assert_eq!(metric(&t.registry, "obsbox_ingest_inflight_bytes", &[]), 0.0);
    assert_eq!(
        metric(
            &t.registry,
            "obsbox_ingest_requests_total",
            &[("signal", "traces"), ("transport", "http"), ("outcome", "too_large")]
        ),
        1.0
    );
}
