//! Differential test of the PromQL API against a real Prometheus (Debian's `/usr/bin/prometheus`,
//! 2.42): the same deterministic series (counters with a reset, gauges with a gap, classic
//! histograms; several label sets and resources) go into obsbox as OTLP and into Prometheus by
//! remote write (protobuf + snappy, series built with the store's Prometheus view); then the same
//! instant and range queries run on both and the results must agree: the same series labels, the
//! same timestamps, values within 1e-9 relative.
//!
//! Fails when Prometheus is missing, unless `OBSBOX_SKIP_EXTERNAL=1`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use obsbox_query_ui::{AppState, router};
use obsbox_storage::prometheus::{ViewOptions, prometheus_view};
use obsbox_storage::{Batch, MemStore, Writer};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, MetricsData, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value as Json;
use tower::ServiceExt;

const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
/// Points per series, one every 15 s (40 minutes).
const POINTS: i64 = 160;
const INTERVAL_MS: i64 = 15_000;

// ---------------------------------------------------------------------------------------------
// A real Prometheus
// ---------------------------------------------------------------------------------------------

struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Prometheus {
    async fn start() -> Option<Prometheus> {
        if !std::path::Path::new(PROMETHEUS_BIN).exists() {
            if std::env::var("OBSBOX_SKIP_EXTERNAL").as_deref() == Ok("1") {
                eprintln!("skipping: {PROMETHEUS_BIN} not found and OBSBOX_SKIP_EXTERNAL=1");
                return None;
            }
            panic!("{PROMETHEUS_BIN} not found: install Debian's prometheus package (apt-get install prometheus)");
        }
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(p) => return Some(p),
                Err(e) => last = e,
            }
        }
        panic!("prometheus did not start: {last}");
    }

    async fn try_start() -> Result<Prometheus, String> {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 15s\nscrape_configs: []\n").unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS_BIN)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {PROMETHEUS_BIN}: {e}"))?;
        let p = Prometheus { child, base: format!("http://127.0.0.1:{port}"), _dir: dir };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/-/ready", p.base)).send().await
                && r.status().is_success()
            {
                return Ok(p);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(p._dir.path().join("prometheus.log")).unwrap_or_default();
        Err(format!("not ready after 30 s; log:\n{log}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Remote write (prompb), test-only
// ---------------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<PbSample>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Label {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbSample {
    #[prost(double, tag = "1")]
    value: f64,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

async fn remote_write(prom: &Prometheus, data: &MetricsData) {
    let view = prometheus_view(data, &ViewOptions { native_histograms: true, target_info: true });
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);
    let mut req = WriteRequest::default();
    for fam in &view.families {
        for s in &fam.series {
            req.timeseries.push(TimeSeries {
                labels: s.labels.iter().map(|(n, v)| Label { name: n.clone(), value: v.clone() }).collect(),
                samples: s.samples.iter().map(|p| PbSample { value: p.value, timestamp: p.t_ms }).collect(),
            });
        }
    }
    let body = snap::raw::Encoder::new().compress_vec(&req.encode_to_vec()).unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/write", prom.base))
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert!(status.is_success(), "remote write: {status} {text}");
}

// ---------------------------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

fn ns(t_ms: i64) -> u64 {
    t_ms as u64 * 1_000_000
}

/// Two services, each with a counter (4 label sets; one resets halfway), a gauge (2 label sets;
/// one stops early) and a classic histogram.
fn dataset(t0: i64) -> MetricsData {
    let mut rng = Rng(42);
    let mut resource_metrics = Vec::new();
    for (si, service) in ["svc-a", "svc-b"].iter().enumerate() {
        let mut counter_points = Vec::new();
        let mut series_index = 0i64;
        for method in ["GET", "POST"] {
            for code in ["200", "500"] {
                series_index += 1;
                let offset = (si as i64 * 4 + series_index) * 1_700 % INTERVAL_MS;
                let mut value = 0.0;
                let mut start = t0;
                for i in 0..POINTS {
                    let t = t0 + i * INTERVAL_MS + offset;
                    let reset = *service == "svc-b" && method == "POST" && code == "500" && i == 80;
                    if reset {
                        value = 0.0;
                        start = t - 1;
                    }
                    value += (rng.next() % 10) as f64;
                    counter_points.push(NumberDataPoint {
                        attributes: vec![kv("method", method), kv("code", code)],
                        start_time_unix_nano: ns(start),
                        time_unix_nano: ns(t),
                        value: Some(number_data_point::Value::AsDouble(value)),
                        ..Default::default()
                    });
                }
            }
        }
        let mut gauge_points = Vec::new();
        for (qi, queue) in ["q1", "q2"].iter().enumerate() {
            let offset = (si as i64 * 2 + qi as i64) * 3_100 % INTERVAL_MS;
            let last = if *service == "svc-a" && *queue == "q2" { 100 } else { POINTS };
            for i in 0..last {
                let v = (rng.next() % 200) as f64 / 10.0 - 5.0;
                gauge_points.push(NumberDataPoint {
                    attributes: vec![kv("queue", queue)],
                    time_unix_nano: ns(t0 + i * INTERVAL_MS + offset),
                    value: Some(number_data_point::Value::AsDouble(v)),
                    ..Default::default()
                });
            }
        }
        let bounds = vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
        let mut counts = vec![0u64; bounds.len() + 1];
        let mut sum = 0.0;
        let mut hist_points = Vec::new();
        for i in 0..POINTS {
            for (b, c) in counts.iter_mut().enumerate() {
                let add = rng.next() % (8 - b as u64);
                *c += add;
                sum += add as f64 * bounds.get(b).copied().unwrap_or(4.0) * 0.7;
            }
            hist_points.push(HistogramDataPoint {
                attributes: vec![kv("route", "/cart")],
                start_time_unix_nano: ns(t0),
                time_unix_nano: ns(t0 + i * INTERVAL_MS + 500 * si as i64),
                count: counts.iter().sum(),
                sum: Some(sum),
                bucket_counts: counts.clone(),
                explicit_bounds: bounds.clone(),
                ..Default::default()
            });
        }
        let metrics = vec![
            Metric {
                name: "http.server.requests".into(),
                unit: "{request}".into(),
                description: "requests served".into(),
                data: Some(Data::Sum(Sum {
                    data_points: counter_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            },
            Metric {
                name: "queue.depth".into(),
                unit: "{item}".into(),
                data: Some(Data::Gauge(Gauge { data_points: gauge_points })),
                ..Default::default()
            },
            Metric {
                name: "http.server.duration".into(),
                unit: "s".into(),
                data: Some(Data::Histogram(Histogram {
                    data_points: hist_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Default::default()
            },
        ];
        resource_metrics.push(ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service), kv("service.instance.id", &format!("{service}-1"))],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "demo".into(),
                    version: "1.2.3".into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        });
    }
    MetricsData { resource_metrics }
}

// ---------------------------------------------------------------------------------------------
// Comparing results
// ---------------------------------------------------------------------------------------------

type Normalized = (String, BTreeMap<String, Vec<(f64, String)>>);

fn normalize(v: &Json) -> Normalized {
    assert_eq!(v["status"], "success", "{v}");
    let kind = v["data"]["resultType"].as_str().unwrap().to_string();
    let result = &v["data"]["result"];
    let mut out = BTreeMap::new();
    let point = |p: &Json| (p[0].as_f64().unwrap(), p[1].as_str().unwrap().to_string());
    match kind.as_str() {
        "scalar" | "string" => {
            out.insert(String::new(), vec![point(result)]);
        }
        _ => {
            for s in result.as_array().unwrap() {
                let metric: BTreeMap<String, String> = serde_json::from_value(s["metric"].clone()).unwrap();
                let key = format!("{metric:?}");
                let points = match (s.get("value"), s.get("values")) {
                    (Some(p), _) => vec![point(p)],
                    (_, Some(ps)) => ps.as_array().unwrap().iter().map(point).collect(),
                    _ => Vec::new(),
                };
                assert!(out.insert(key.clone(), points).is_none(), "duplicate series {key}");
            }
        }
    }
    (kind, out)
}

fn close(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) else { return false };
    if x.is_nan() && y.is_nan() {
        return true;
    }
    (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
}

/// Compares two API answers; returns the number of points compared.
fn compare(query: &str, ours: &Json, theirs: &Json) -> Result<usize, String> {
    let (ok, om) = normalize(ours);
    let (tk, tm) = normalize(theirs);
    if ok != tk {
        return Err(format!("{query}: result type {ok} vs prometheus {tk}"));
    }
    let ours_keys: Vec<&String> = om.keys().collect();
    let their_keys: Vec<&String> = tm.keys().collect();
    if ours_keys != their_keys {
        return Err(format!("{query}: series differ\n obsbox:     {ours_keys:?}\n prometheus: {their_keys:?}"));
    }
    for (k, ps) in &om {
        let qs = &tm[k];
        let ot: Vec<f64> = ps.iter().map(|p| p.0).collect();
        let tt: Vec<f64> = qs.iter().map(|p| p.0).collect();
        if ot != tt {
            return Err(format!("{query}: {k}: timestamps differ\n obsbox:     {ot:?}\n prometheus: {tt:?}"));
        }
        for (p, q) in ps.iter().zip(qs) {
            if !close(&p.1, &q.1) {
                return Err(format!("{query}: {k} at {}: obsbox {} vs prometheus {}", p.0, p.1, q.1));
            }
        }
    }
    if om.is_empty() && ok != "scalar" {
        return Err(format!("{query}: empty result on both sides proves nothing"));
    }
    Ok(om.values().map(Vec::len).sum())
}

async fn obsbox_get(app: &Router, path: &str, form: &[(&str, String)]) -> Json {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let req =
        Request::post(path).header("content-type", "application/x-www-form-urlencoded").body(Body::from(body)).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Json =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&bytes)));
    assert_eq!(status, StatusCode::OK, "{path} {form:?}: {v}");
    v
}

async fn prometheus_get(prom: &Prometheus, path: &str, form: &[(&str, String)]) -> Json {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let resp = reqwest::Client::new().get(format!("{}{path}?{query}", prom.base)).send().await.unwrap();
    let text = resp.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

fn secs(t_ms: i64) -> String {
    format!("{}", t_ms as f64 / 1000.0)
}

const QUERIES: &[&str] = &[
    "http_server_requests_total",
    "http_server_requests_total{method=~\"G.*\", code!=\"500\"}",
    // Label matchers the store checks on each series' labels before reading its points.
    "queue_depth{job=~\"svc-.\", instance!=\"svc-b-1\"}",
    "rate(http_server_requests_total{otel_scope_name=\"demo\", method!~\"P.*\"}[5m])",
    "http_server_duration_seconds_bucket{route=\"/cart\", le=\"+Inf\"}",
    "http_server_requests_total{nope=\"\", code=~\"5.*|\"}",
    "rate(http_server_requests_total[5m])",
    "irate(http_server_requests_total[1m])",
    "increase(http_server_requests_total[10m])",
    "resets(http_server_requests_total[30m])",
    "sum by (job) (rate(http_server_requests_total[5m]))",
    "sum without (code) (rate(http_server_requests_total[5m]))",
    "sum by (job) (rate(http_server_requests_total{code=\"500\"}[5m])) / on (job) sum by (job) (rate(http_server_requests_total[5m]))",
    "rate(http_server_requests_total{code=\"500\"}[5m]) / ignoring (code) rate(http_server_requests_total{code=\"200\"}[5m])",
    "rate(http_server_requests_total[5m]) / on (job) group_left sum by (job) (rate(http_server_requests_total[5m]))",
    "rate(http_server_requests_total[5m] offset 3m)",
    "queue_depth",
    "queue_depth offset 5m",
    "avg(queue_depth)",
    "max by (job) (queue_depth)",
    "min without (queue) (queue_depth)",
    "count(queue_depth)",
    "topk(2, queue_depth)",
    "bottomk(1, queue_depth)",
    "stddev(queue_depth)",
    "delta(queue_depth[10m])",
    "queue_depth > 5",
    "queue_depth > bool 5",
    "2 * queue_depth - 1",
    "-queue_depth",
    "queue_depth unless queue_depth{job=\"svc-a\"}",
    "queue_depth{queue=\"q1\"} or queue_depth{queue=\"q2\"}",
    "avg_over_time(queue_depth[5m])",
    "max_over_time(queue_depth[5m])",
    "min_over_time(queue_depth[5m])",
    "sum_over_time(queue_depth[5m])",
    "count_over_time(queue_depth[2m])",
    "last_over_time(queue_depth[10m])",
    "stddev_over_time(queue_depth[10m])",
    "quantile_over_time(0.5, queue_depth[10m])",
    "changes(queue_depth[10m])",
    "abs(queue_depth)",
    "round(queue_depth, 0.5)",
    "clamp(queue_depth, 0, 10)",
    "clamp_max(queue_depth, 3)",
    "ceil(queue_depth) + floor(queue_depth)",
    "scalar(sum(queue_depth))",
    "time()",
    "vector(1)",
    "histogram_quantile(0.9, sum by (le) (rate(http_server_duration_seconds_bucket[5m])))",
    "histogram_quantile(0.5, rate(http_server_duration_seconds_bucket[10m]))",
    "rate(http_server_duration_seconds_sum[5m]) / rate(http_server_duration_seconds_count[5m])",
    "timestamp(queue_depth)",
    "sort_desc(queue_depth)",
    "group by (job) (queue_depth)",
    "stdvar_over_time(queue_depth[10m])",
    "idelta(queue_depth[2m])",
    "present_over_time(queue_depth[1m])",
    "sgn(queue_depth)",
    "queue_depth @ end()",
    "rate(http_server_requests_total[5m] @ start())",
    "quantile(0.3, queue_depth)",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_results_match_prometheus() {
    let Some(prom) = Prometheus::start().await else { return };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    // 45 minutes back, so every sample is recent enough for Prometheus' head block.
    let t0 = (now / 60_000) * 60_000 - 45 * 60_000;
    let data = dataset(t0);

    let store = Arc::new(MemStore::new());
    let request = ExportMetricsServiceRequest { resource_metrics: data.resource_metrics.clone() };
    store.write(Batch::Metrics(request)).await.unwrap();
    let state = AppState::new(store, prometheus::Registry::new(), Arc::new(AtomicBool::new(true))).unwrap();
    let app = router(state);
    remote_write(&prom, &data).await;

    let start = t0 + 10 * 60_000;
    let end = t0 + POINTS * INTERVAL_MS;
    let instants = [t0 + 20 * 60_000 + 7_250, end - 4_000, end + 6 * 60_000];
    let mut failures = Vec::new();
    let mut compared = 0usize;
    for q in QUERIES {
        let range = [("query", q.to_string()), ("start", secs(start)), ("end", secs(end)), ("step", "60".to_string())];
        let ours = obsbox_get(&app, "/prometheus/api/v1/query_range", &range).await;
        let theirs = prometheus_get(&prom, "/api/v1/query_range", &range).await;
        match compare(q, &ours, &theirs) {
            Ok(n) => compared += n,
            Err(e) => failures.push(format!("range {e}")),
        }
        for t in instants {
            let instant = [("query", q.to_string()), ("time", secs(t))];
            let ours = obsbox_get(&app, "/prometheus/api/v1/query", &instant).await;
            let theirs = prometheus_get(&prom, "/api/v1/query", &instant).await;
            // After the data ends an empty result is the right answer for most queries.
            match compare(q, &ours, &theirs) {
                Ok(n) => compared += n,
                Err(e) if !(t > end && e.contains("proves nothing")) => failures.push(format!("instant at {t}: {e}")),
                Err(_) => {}
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} comparisons failed:\n{}",
        failures.len(),
        QUERIES.len() * 4,
        failures.join("\n")
    );
    eprintln!("{compared} points compared over {} queries", QUERIES.len());
    // 58 queries, 31 steps, most with several series: a broken comparison would see far fewer.
    assert!(compared > 5_000, "only {compared} points compared");
}
