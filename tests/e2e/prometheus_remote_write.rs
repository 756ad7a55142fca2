//! OTLP metrics into obsbox -> remote-write exporter -> a real Prometheus, whose
//! `/api/v1/query` returns them; derived span metrics go the same way.

use crate::common;

use std::time::Duration;

use common::prometheus::{Prometheus, shop_metrics};
use common::*;
use opentelemetry_proto::tonic::metrics::v1::MetricsData;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

fn value(result: &[serde_json::Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reach_prometheus_by_remote_write() {
    let Some(prom) = blocking(|| Prometheus::start(&[], &[])).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.remote_write.url = prom.remote_write_url();
    config.remote_write.flush_interval = Duration::from_millis(100);
    config.derive.interval = Duration::from_secs(1);
    let obsbox = start_obsbox_with(config).await;
    let mut clients = grpc_clients(obsbox.otlp_grpc_addr().expect("an OTLP listener")).await;

    let t = now_ns();
    clients.metrics.export(shop_metrics(t - 2_000_000_000, 40.0)).await.expect("export metrics");
    clients.metrics.export(shop_metrics(t, 42.0)).await.expect("export metrics");
    let mut client = span(&trace_id(7, 1), &span_id(1), "GET /cart", t);
    client.kind = SpanKind::Client as i32;
    let mut server = span(&trace_id(7, 1), &span_id(2), "GET /cart", t);
    server.parent_span_id = span_id(1);
    clients.traces.export(trace_request("frontend", vec![client])).await.expect("export spans");
    clients.traces.export(trace_request("cart", vec![server])).await.expect("export spans");

    let prom = blocking(move || {
        let wait = Duration::from_secs(30);
        let r = prom.wait_for(r#"shop_requests_total{job="shop",route="/cart"}"#, wait, |r| value(r) == Some(42.0));
        assert_eq!(r[0]["metric"]["otel_scope_name"], "obsbox-tests", "{r:?}");
        // Both samples arrived, in order.
        let r = prom.query(r#"count_over_time(shop_requests_total{job="shop"}[5m])"#);
        assert_eq!(value(&r), Some(2.0), "{r:?}");
        prom.wait_for(r#"shop_queue_depth{job="shop"}"#, wait, |r| value(r) == Some(7.0));
        let r = prom.wait_for(r#"shop_latency_seconds_bucket{job="shop",le="0.5"}"#, wait, |r| value(r) == Some(3.0));
        assert_eq!(r.len(), 1);
        prom.wait_for(r#"shop_latency_seconds_bucket{job="shop",le="+Inf"}"#, wait, |r| value(r) == Some(6.0));
        prom.wait_for(r#"shop_latency_seconds_count{job="shop"}"#, wait, |r| value(r) == Some(6.0));
        prom.wait_for(r#"shop_latency_seconds_sum{job="shop"}"#, wait, |r| value(r) == Some(2.5));
        // Resource attributes beyond job and instance arrive as target_info.
        prom.wait_for(r#"target_info{job="shop",deployment_environment="test"}"#, wait, |r| value(r) == Some(1.0));
        // Derived span metrics and service graph, exported after the store took them.
        prom.wait_for(
            r#"traces_span_metrics_calls_total{job="cart",span_name="GET /cart",span_kind="SPAN_KIND_SERVER"}"#,
            wait,
            |r| value(r) == Some(1.0),
        );
        prom.wait_for(r#"traces_service_graph_request_total{client="frontend",server="cart"}"#, wait, |r| {
            value(r) == Some(1.0)
        });
        prom
    })
    .await;
    let body = reqwest::get(format!("http://{}/metrics", obsbox.http_addr())).await.unwrap().text().await.unwrap();
    assert!(body.contains("obsbox_remote_write_samples_total{outcome=\"sent\"}"), "{body}");
    obsbox.shutdown().await.unwrap();
    drop(prom);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_metrics_sends_one_batch() {
    let Some(prom) = blocking(|| Prometheus::start(&[], &[])).await else { return };
    let req = shop_metrics(now_ns(), 5.0);
    let data = MetricsData { resource_metrics: req.resource_metrics };
    obsbox::collector::push_metrics(&prom.remote_write_url(), &data, false).await.expect("push");
    blocking(move || {
        prom.wait_for(r#"shop_requests_total{job="shop"}"#, Duration::from_secs(10), |r| value(r) == Some(5.0));
    })
    .await;
    let err = obsbox::collector::push_metrics("http://127.0.0.1:9/api/v1/write", &data, false).await.unwrap_err();
    assert!(err.to_string().contains("remote write failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exponential_histograms_arrive_as_native_histograms() {
    use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Metric, ResourceMetrics,
        ScopeMetrics, metric,
    };
    let Some(prom) = blocking(|| Prometheus::start(&[], &["--enable-feature=native-histograms"])).await else {
        return;
    };
    let t = now_ns();
    let point = ExponentialHistogramDataPoint {
        start_time_unix_nano: t - 60_000_000_000,
        time_unix_nano: t,
        count: 4,
        sum: Some(9.5),
        scale: 0,
        zero_count: 1,
        // Scale 0, offset 0: (1, 2] holds 1, (2, 4] holds 2.
        positive: Some(Buckets { offset: 0, bucket_counts: vec![1, 2] }),
        ..Default::default()
    };
    let data = MetricsData {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource("shop")),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics: vec![Metric {
                    name: "shop.wait".into(),
                    unit: "s".into(),
                    data: Some(metric::Data::ExponentialHistogram(ExponentialHistogram {
                        data_points: vec![point],
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    })),
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    obsbox::collector::push_metrics(&prom.remote_write_url(), &data, true).await.expect("push");
    blocking(move || {
        let wait = Duration::from_secs(10);
        prom.wait_for(r#"histogram_count(shop_wait_seconds{job="shop"})"#, wait, |r| value(r) == Some(4.0));
        prom.wait_for(r#"histogram_sum(shop_wait_seconds{job="shop"})"#, wait, |r| value(r) == Some(9.5));
        // Half of the 4 observations lie at or below 2: the zero bucket and (1, 2].
        let r = prom.query(r#"histogram_fraction(0, 2, shop_wait_seconds{job="shop"})"#);
        assert_eq!(value(&r), Some(0.5), "{r:?}");
    })
    .await;
}
