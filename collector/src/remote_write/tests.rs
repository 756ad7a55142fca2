//! Conversion, encoding, queueing and retries of the remote-write exporter. The end-to-end test
//! against a real Prometheus is `tests/e2e/prometheus_remote_write.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::*;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

fn point(v: f64, t_ms: u64, attrs: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: 1,
        time_unix_nano: t_ms * 1_000_000,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

fn data(metrics: Vec<Metric>) -> MetricsData {
    MetricsData {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: vec![kv("service.name", "shop")], ..Default::default() }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope::default()),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn counter(name: &str, temporality: AggregationTemporality, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: "{request}".into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: temporality as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn gauge(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric { name: name.into(), data: Some(metric::Data::Gauge(Gauge { data_points: points })), ..Default::default() }
}

fn decode(body: &[u8]) -> WriteRequest {
    let raw = snap::raw::Decoder::new().decompress_vec(body).expect("snappy");
    WriteRequest::decode(raw.as_slice()).expect("protobuf")
}

fn label<'a>(ts: &'a TimeSeries, name: &str) -> Option<&'a str> {
    ts.labels.iter().find(|l| l.name == name).map(|l| l.value.as_str())
}

#[test]
fn batches_become_sorted_series_and_deltas_are_left_out() {
    let d = data(vec![
        counter(
            "http.requests",
            AggregationTemporality::Cumulative,
            vec![point(5.0, 2000, vec![kv("route", "/a")]), point(3.0, 1000, vec![kv("route", "/a")])],
        ),
        counter("jobs", AggregationTemporality::Delta, vec![point(1.0, 1000, vec![])]),
        gauge("queue.depth", vec![point(7.0, 1500, vec![])]),
    ]);
    let prepared = convert(&d, false);
    assert_eq!(prepared.rejected.len(), 1);
    assert_eq!(prepared.rejected[0].0, "jobs");
    let req = decode(&encode(prepared.series));
    let names: Vec<_> = req.timeseries.iter().map(|ts| label(ts, "__name__").unwrap()).collect();
    assert!(names.contains(&"http_requests_total"), "{names:?}");
    assert!(names.contains(&"queue_depth"), "{names:?}");
    let c = req.timeseries.iter().find(|ts| label(ts, "__name__") == Some("http_requests_total")).unwrap();
    assert_eq!(label(c, "job"), Some("shop"));
    assert_eq!(label(c, "route"), Some("/a"));
    let mut sorted = c.labels.clone();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(c.labels, sorted, "labels sorted by name");
    let samples: Vec<_> = c.samples.iter().map(|s| (s.timestamp, s.value)).collect();
    assert_eq!(samples, [(1000, 3.0), (2000, 5.0)], "samples in time order");
}

#[test]
fn encode_merges_series_across_batches_in_time_order() {
    let a = convert(&data(vec![gauge("g", vec![point(2.0, 2000, vec![])])]), false);
    let b = convert(&data(vec![gauge("g", vec![point(1.0, 1000, vec![]), point(3.0, 2000, vec![])])]), false);
    let mut series = a.series;
    series.extend(b.series);
    let req = decode(&encode(series));
    let g: Vec<_> = req.timeseries.iter().filter(|ts| label(ts, "__name__") == Some("g")).collect();
    assert_eq!(g.len(), 1);
    let samples: Vec<_> = g[0].samples.iter().map(|s| (s.timestamp, s.value)).collect();
    assert_eq!(samples, [(1000, 1.0), (2000, 3.0)], "one sample per time, the later batch wins");
}

#[test]
fn config_values_are_checked() {
    RemoteWriteConfig::default().validate().unwrap();
    let bad = |c: RemoteWriteConfig| c.validate().unwrap_err().to_string();
    let url = |u: &str| RemoteWriteConfig { url: u.into(), ..Default::default() };
    url("http://127.0.0.1:9090/api/v1/write").validate().unwrap();
    assert!(bad(url("localhost:9090")).contains("`url`"));
    assert!(bad(url("https://example.com/api/v1/write")).contains("https"));
    let mut c = url("http://h/api/v1/write");
    c.headers.insert("bad header".into(), "x".into());
    assert!(bad(c).contains("headers"));
    assert!(bad(RemoteWriteConfig { max_samples_per_send: 0, ..Default::default() }).contains("max_samples_per_send"));
    assert!(
        bad(RemoteWriteConfig { min_backoff: Duration::from_secs(10), ..Default::default() }).contains("min_backoff")
    );
}

/// A receiver answering with the given statuses in turn (then 204), recording bodies and headers.
async fn receiver(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>, Arc<AtomicUsize>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/api/v1/write",
        axum::routing::post({
            let (seen, calls) = (seen.clone(), calls.clone());
            move |headers: http::HeaderMap, body: Bytes| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                seen.lock().unwrap().push((headers, body));
                let status = statuses.get(n).copied().unwrap_or(204);
                async move { http::StatusCode::from_u16(status).unwrap() }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/api/v1/write"), seen, calls)
}

fn fast(url: String) -> RemoteWriteConfig {
    RemoteWriteConfig {
        url,
        flush_interval: Duration::from_millis(20),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        bearer_token: "s3cret".into(),
        headers: [("X-Scope-OrgID".to_string(), "tenant".to_string())].into(),
        ..Default::default()
    }
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn server_errors_are_retried_with_the_protocol_headers() {
    let (url, seen, calls) = receiver(vec![500, 429]).await;
    let registry = Registry::new();
    let rw = RemoteWrite::start(&fast(url), &registry).unwrap();
    rw.enqueue(rw.prepare(&data(vec![gauge("g", vec![point(1.0, 1000, vec![])])])));
    until("3 attempts", || calls.load(Ordering::SeqCst) >= 3).await;
    until("sent counted", || rw.inner.telemetry.samples.with_label_values(&["sent"]).get() == 1).await;
    assert_eq!(rw.inner.telemetry.requests.with_label_values(&["retry"]).get(), 2);
    let seen = seen.lock().unwrap();
    let (headers, body) = &seen[2];
    assert_eq!(headers["content-encoding"], "snappy");
    assert_eq!(headers["content-type"], "application/x-protobuf");
    assert_eq!(headers["x-prometheus-remote-write-version"], "0.1.0");
    assert_eq!(headers["authorization"], "Bearer s3cret");
    assert_eq!(headers["x-scope-orgid"], "tenant");
    assert_eq!(decode(body).timeseries.len(), 1);
    assert_eq!(seen[0].1, *body, "a retry sends the same request");
}

#[tokio::test]
async fn client_errors_drop_the_batch() {
    let (url, _seen, calls) = receiver(vec![400]).await;
    let registry = Registry::new();
    let rw = RemoteWrite::start(&fast(url), &registry).unwrap();
    rw.enqueue(rw.prepare(&data(vec![gauge("g", vec![point(1.0, 1000, vec![])])])));
    until("rejected counted", || rw.inner.telemetry.samples.with_label_values(&["rejected"]).get() == 1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no retry of a 4xx");
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_samples() {
    // Nothing listens on this port: the queue only fills.
    let registry = Registry::new();
    let config = RemoteWriteConfig {
        url: "http://127.0.0.1:9/api/v1/write".into(),
        queue_samples: 3,
        max_samples_per_send: 3,
        flush_interval: Duration::from_secs(600),
        ..Default::default()
    };
    let rw = RemoteWrite::start(&config, &registry).unwrap();
    for t in 1..=2 {
        rw.enqueue(
            rw.prepare(&data(vec![gauge("a", vec![point(1.0, t, vec![])]), gauge("b", vec![point(1.0, t, vec![])])])),
        );
    }
    assert_eq!(rw.inner.telemetry.samples.with_label_values(&["dropped_queue_full"]).get(), 1);
    let q = rw.inner.queue.lock().unwrap();
    assert_eq!(q.samples, 3);
    assert_eq!(q.series.front().map(|ts| ts.samples[0].timestamp), Some(1), "the second oldest stays");
}

#[tokio::test]
async fn close_sends_what_is_queued_and_waits_for_it() {
    let (url, _seen, calls) = receiver(vec![]).await;
    let registry = Registry::new();
    let config = RemoteWriteConfig { flush_interval: Duration::from_secs(600), ..fast(url) };
    let rw = RemoteWrite::start(&config, &registry).unwrap();
    rw.enqueue(rw.prepare(&data(vec![gauge("g", vec![point(1.0, 1000, vec![])])])));
    rw.close(Duration::from_secs(10)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(rw.inner.telemetry.samples.with_label_values(&["sent"]).get(), 1);
    assert!(*rw.inner.finished.borrow());
}
