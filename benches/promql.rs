//! PromQL range-query benchmark: 10,000 counter series (one point every 15 s for an hour, so
//! 2.4 M points) plus a latency histogram on every tenth of them (1,000 histograms of 11 buckets)
//! in a `DiskStore`, then range queries through the HTTP API as Grafana sends them, each
//! repeated; prints p50 / p99 latency.
//!
//! ```text
//! cargo bench --bench promql              # 10k series
//! cargo bench --bench promql -- 1000      # 1k series
//! ```
//!
//! `OBSBOX_BENCH_REPEAT=N` sets the repetitions per query (default 20); with 1 the run suits
//! `valgrind --tool=callgrind` (the client then waits as long as a query takes).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use obsbox::storage::{Batch, DiskStore, MetricQuery, Reader, StoreConfig, TimeRange, Writer};
use obsbox_query_ui::AppState;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

const POINTS: u64 = 240;
const INTERVAL_MS: u64 = 15_000;
const DEFAULT_REPEAT: usize = 20;
const SERIES_PER_BATCH: usize = 250;
/// Every `HISTOGRAM_EVERY`-th series also has a duration histogram.
const HISTOGRAM_EVERY: usize = 10;
const BOUNDS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

fn kv(k: &str, v: String) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v)) }),
        ..Default::default()
    }
}

/// Series `first..first+n` of `http.server.requests` (20 services × 50 routes × 10 pods), and
/// `http.server.request.duration` histograms for every tenth of them.
fn batch(first: usize, n: usize, t0_ms: u64) -> ExportMetricsServiceRequest {
    let mut points = Vec::with_capacity(n * POINTS as usize);
    let mut hist = Vec::new();
    for s in first..first + n {
        let attrs = vec![kv("http.route", format!("/r{}", s % 50)), kv("pod", format!("pod-{}", s / 1000))];
        if s % HISTOGRAM_EVERY == 0 {
            for i in 0..POINTS {
                // Cumulative counts growing by a fixed spread per interval, shifted per series.
                let per_step: Vec<u64> = (0..=BOUNDS.len() as u64).map(|b| 1 + (b + s as u64) % 5).collect();
                let bucket_counts: Vec<u64> = per_step.iter().map(|c| c * (i + 1)).collect();
                hist.push(HistogramDataPoint {
                    attributes: attrs.clone(),
                    start_time_unix_nano: t0_ms * 1_000_000,
                    time_unix_nano: (t0_ms + i * INTERVAL_MS + (s as u64 % 15) * 1000) * 1_000_000,
                    count: bucket_counts.iter().sum(),
                    sum: Some(0.1 * bucket_counts.iter().sum::<u64>() as f64),
                    explicit_bounds: BOUNDS.to_vec(),
                    bucket_counts,
                    ..Default::default()
                });
            }
        }
        for i in 0..POINTS {
            points.push(NumberDataPoint {
                attributes: attrs.clone(),
                start_time_unix_nano: t0_ms * 1_000_000,
                time_unix_nano: (t0_ms + i * INTERVAL_MS + (s as u64 % 15) * 1000) * 1_000_000,
                value: Some(number_data_point::Value::AsDouble((i * (1 + s as u64 % 7)) as f64)),
                ..Default::default()
            });
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", format!("svc-{}", (first / SERIES_PER_BATCH) % 20))],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    Metric {
                        name: "http.server.requests".into(),
                        unit: "{request}".into(),
                        data: Some(Data::Sum(Sum {
                            data_points: points,
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "http.server.request.duration".into(),
                        unit: "s".into(),
                        data: Some(Data::Histogram(Histogram {
                            data_points: hist,
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let series: usize =
        std::env::args().skip(1).find(|a| !a.starts_with('-')).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let repeat: usize =
        std::env::var("OBSBOX_BENCH_REPEAT").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_REPEAT).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let store =
        Arc::new(DiskStore::open(StoreConfig { data_dir: dir.path().to_path_buf(), ..StoreConfig::default() })?);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let t0 = now_ms - POINTS * INTERVAL_MS;
    let fill = Instant::now();
    rt.block_on(async {
        for first in (0..series).step_by(SERIES_PER_BATCH) {
            let n = SERIES_PER_BATCH.min(series - first);
            loop {
                match store.write(Batch::Metrics(batch(first, n, t0))).await {
                    Ok(_) => break,
                    Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(e) => return Err(anyhow::anyhow!(e)),
                }
            }
        }
        Ok(())
    })?;
    let expected = (series + series.div_ceil(HISTOGRAM_EVERY)) * POINTS as usize;
    loop {
        let data = store.find_metrics(&MetricQuery { matchers: Vec::new(), time: TimeRange::ALL })?;
        let n: usize = data
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(obsbox::storage::metric_point_count)
            .sum();
        if n >= expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("filled {series} series x {POINTS} points in {:.1} s", fill.elapsed().as_secs_f64());

    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let state = AppState::new(store.clone(), prometheus::Registry::new(), Arc::new(AtomicBool::new(true)))?;
    rt.spawn(obsbox_query_ui::serve(listener, state, std::future::pending()));
    // No request timeout: under valgrind one query takes minutes.
    let client = reqwest::blocking::Client::builder().timeout(None).build()?;
    let end = now_ms / 1000;
    let start = end - 3600;
    for query in [
        "sum by (job) (rate(http_server_requests_total[5m]))",
        "rate(http_server_requests_total{http_route=\"/r7\"}[5m])",
        "histogram_quantile(0.9, sum by (le) (rate(http_server_request_duration_seconds_bucket[5m])))",
        "topk(5, sum by (pod) (increase(http_server_requests_total[10m])))",
    ] {
        let mut times = Vec::with_capacity(repeat);
        let (mut series_out, mut points) = (0usize, 0usize);
        for _ in 0..repeat {
            let t = Instant::now();
            let resp = client
                .post(format!("http://{addr}/prometheus/api/v1/query_range"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("query={}&start={start}&end={end}&step=60", urlencode(query)))
                .send()
                .context("query")?;
            let status = resp.status();
            let body = resp.text()?;
            anyhow::ensure!(status.is_success(), "{query}: {status} {body}");
            times.push(t.elapsed());
            let json: serde_json::Value = serde_json::from_str(&body).context("query_range response")?;
            let result = json["data"]["result"].as_array().map(Vec::as_slice).unwrap_or_default();
            series_out = result.len();
            points = result.iter().map(|r| r["values"].as_array().map_or(0, Vec::len)).sum();
        }
        times.sort();
        println!(
            "{query}: p50 {:.1} ms, p99 {:.1} ms ({series_out} series, {points} points returned)",
            percentile(&times, 0.5).as_secs_f64() * 1000.0,
            percentile(&times, 0.99).as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
