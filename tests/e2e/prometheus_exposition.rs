//! A real Prometheus scrapes obsbox's `/prometheus/metrics` every second: OTLP metrics and
//! derived span metrics come back from its `/api/v1/query`, and exemplars (negotiated through
//! OpenMetrics) from `/api/v1/query_exemplars`.

use crate::common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::prometheus::{Prometheus, SHOP_TRACE_ID, ScrapeJob, shop_metrics};
use common::*;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

fn value(result: &[serde_json::Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_exposition_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.derive.interval = Duration::from_secs(1);
    let obsbox = start_obsbox_with(config).await;
    let http = obsbox.http_addr();

    // Both formats straight from the endpoint first.
    let mut clients = grpc_clients(obsbox.otlp_grpc_addr().expect("an OTLP listener")).await;
    clients.metrics.export(shop_metrics(now_ns(), 42.0)).await.expect("export metrics");
    let mut client = span(&trace_id(7, 1), &span_id(1), "GET /cart", now_ns());
    client.kind = SpanKind::Client as i32;
    let mut server = span(&trace_id(7, 1), &span_id(2), "GET /cart", now_ns());
    server.parent_span_id = span_id(1);
    clients.traces.export(trace_request("frontend", vec![client])).await.expect("export spans");
    clients.traces.export(trace_request("cart", vec![server])).await.expect("export spans");

    let http_client = reqwest::Client::new();
    let url = format!("http://{http}/prometheus/metrics");
    let fetch = |accept: &'static str| {
        let (c, url) = (http_client.clone(), url.clone());
        async move {
            let r = c.get(&url).header("accept", accept).send().await.unwrap();
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            (ct, r.text().await.unwrap())
        }
    };
    let mut text = String::new();
    for _ in 0..100 {
        (_, text) = fetch("text/plain").await;
        if text.contains("shop_requests_total") && text.contains("traces_span_metrics_calls_total") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(text.contains("# TYPE shop_requests_total counter\n"), "{text}");
    assert!(
        text.contains(r#"shop_requests_total{job="shop",otel_scope_name="obsbox-tests",otel_scope_version="1.0.0",route="/cart"} 42"#),
        "{text}"
    );
    assert!(text.contains(r#"target_info{deployment_environment="test",job="shop"} 1"#), "{text}");
    assert!(!text.contains(SHOP_TRACE_ID), "no exemplars in the text format: {text}");
    let (content_type, om) = fetch("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5").await;
    assert!(content_type.starts_with("application/openmetrics-text; version=1.0.0"), "{content_type}");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE shop_requests counter\n"), "{om}");
    assert!(om.contains("# UNIT shop_latency_seconds seconds\n"), "{om}");
    assert!(om.contains(&format!("# {{trace_id=\"{SHOP_TRACE_ID}\",span_id=\"b7ad6b7169203331\"}} 0.3 ")), "{om}");

    // Then a real Prometheus.
    let job = ScrapeJob {
        job: "obsbox".into(),
        target: http,
        path: "/prometheus/metrics".into(),
        interval: Duration::from_secs(1),
    };
    let Some(prom) = blocking(move || Prometheus::start(&[job], &[])).await else { return };
    // Keep the points fresh while Prometheus scrapes.
    clients.metrics.export(shop_metrics(now_ns(), 43.0)).await.expect("export metrics");
    blocking(move || {
        let wait = Duration::from_secs(30);
        let r = prom.wait_for(r#"up{job="obsbox"}"#, wait, |r| value(r) == Some(1.0));
        assert_eq!(r.len(), 1);
        prom.wait_for(r#"shop_requests_total{job="shop",route="/cart"}"#, wait, |r| value(r) == Some(43.0));
        prom.wait_for(r#"shop_queue_depth{job="shop"}"#, wait, |r| value(r) == Some(7.0));
        prom.wait_for(r#"shop_latency_seconds_bucket{job="shop",le="0.5"}"#, wait, |r| value(r) == Some(3.0));
        prom.wait_for(r#"shop_latency_seconds_count{job="shop"}"#, wait, |r| value(r) == Some(6.0));
        prom.wait_for(r#"target_info{job="shop",deployment_environment="test"}"#, wait, |r| value(r) == Some(1.0));
        prom.wait_for(
            r#"traces_span_metrics_calls_total{job="cart",span_name="GET /cart",status_code="STATUS_CODE_UNSET"}"#,
            wait,
            |r| value(r) == Some(1.0),
        );
        prom.wait_for(r#"traces_service_graph_request_total{client="frontend",server="cart"}"#, wait, |r| {
            value(r) == Some(1.0)
        });
        // Exemplars: Prometheus negotiated OpenMetrics and stored them.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let (start, end) = ((now - 600).to_string(), (now + 60).to_string());
        let deadline = std::time::Instant::now() + wait;
        loop {
            let data = prom.api(
                "query_exemplars",
                &[("query", r#"shop_latency_seconds_bucket{job="shop"}"#), ("start", &start), ("end", &end)],
            );
            let found = data
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default());
            if found.into_iter().any(|e| e["labels"]["trace_id"] == SHOP_TRACE_ID) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no exemplar in prometheus: {data}\n{}", prom.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await;
    obsbox.shutdown().await.unwrap();
}
