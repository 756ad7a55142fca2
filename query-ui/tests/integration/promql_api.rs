//! The Prometheus-compatible API as Grafana's Prometheus datasource calls it (POST form
//! queries, labels, metric names, metadata, series, build info), plus its errors, over a
//! `MemStore` driven with `oneshot`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use obsbox_query_ui::{AppState, router};
use obsbox_storage::{Batch, MemStore, Writer};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exemplar, exponential_histogram_data_point::Buckets,
    metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::Value as Json;
use tower::ServiceExt;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn num(t_ms: i64, v: f64, attrs: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        time_unix_nano: t_ms as u64 * 1_000_000,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

/// `http.server.requests` (counter, 2 routes), `process.memory.usage` (gauge, bytes) and
/// `rpc.latency` (exponential histogram) of service `shop`, one point every 15 s for 10 minutes.
async fn app(now: i64) -> Router {
    let store = Arc::new(MemStore::new());
    let mut counter = Vec::new();
    let mut gauge = Vec::new();
    let mut exp = Vec::new();
    for i in 0..40i64 {
        let t = now - 600_000 + i * 15_000;
        counter.push(num(t, i as f64 * 3.0, vec![kv("http.route", "/cart")]));
        let mut pay = num(t, i as f64, vec![kv("http.route", "/pay")]);
        if i == 30 {
            pay.exemplars.push(Exemplar {
                time_unix_nano: t as u64 * 1_000_000,
                value: Some(exemplar::Value::AsDouble(0.25)),
                trace_id: vec![0xab; 16],
                span_id: vec![0xcd; 8],
                ..Default::default()
            });
        }
        counter.push(pay);
        gauge.push(num(t, 1e6 + i as f64, vec![]));
        exp.push(ExponentialHistogramDataPoint {
            time_unix_nano: t as u64 * 1_000_000,
            start_time_unix_nano: (now - 700_000) as u64 * 1_000_000,
            scale: 0,
            count: 4 * i as u64,
            sum: Some(10.0 * i as f64),
            // OTLP index 0 is (1, 2], index 1 is (2, 4].
            positive: Some(Buckets { offset: 0, bucket_counts: vec![2 * i as u64, 2 * i as u64] }),
            ..Default::default()
        });
    }
    let metrics = vec![
        Metric {
            name: "http.server.requests".into(),
            description: "requests served".into(),
            unit: "{request}".into(),
            data: Some(Data::Sum(Sum {
                data_points: counter,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        },
        Metric {
            name: "process.memory.usage".into(),
            unit: "By".into(),
            data: Some(Data::Gauge(Gauge { data_points: gauge })),
            ..Default::default()
        },
        Metric {
            name: "rpc.latency".into(),
            unit: "s".into(),
            data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                data_points: exp,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        },
    ];
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "shop"), kv("host.name", "box-1")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics { metrics, ..Default::default() }],
            schema_url: String::new(),
        }],
    };
    store.write(Batch::Metrics(req)).await.unwrap();
    let state = AppState::new(store, prometheus::Registry::new(), Arc::new(AtomicBool::new(true))).unwrap();
    router(state)
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Json) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Json) {
    call(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn post(app: &Router, uri: &str, form: &[(&str, &str)]) -> (StatusCode, Json) {
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
    let req =
        Request::post(uri).header("content-type", "application/x-www-form-urlencoded").body(Body::from(body)).unwrap();
    call(app, req).await
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn grafana_datasource_requests_answer() {
    let now = now_ms();
    let app = app(now).await;
    let t = format!("{}", now as f64 / 1000.0);
    let start = format!("{}", (now - 600_000) as f64 / 1000.0);

    // Build info: a Prometheus version so Grafana enables its features.
    let (s, v) = get(&app, "/prometheus/api/v1/status/buildinfo").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"]["version"], "2.42.0");

    // Instant query as Grafana sends it: POST form.
    let (s, v) = post(
        &app,
        "/prometheus/api/v1/query",
        &[("query", "sum by (http_route) (rate(http_server_requests_total[5m]))"), ("time", &t)],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "vector");
    let result = v["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), 2, "{v}");
    assert_eq!(result[0]["metric"]["http_route"], "/cart");
    let rate: f64 = result[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!((rate - 0.2).abs() < 1e-9, "{rate}");
    assert!(result[0]["value"][0].is_number());

    // Range query, GET.
    let uri = format!(
        "/prometheus/api/v1/query_range?query={}&start={start}&end={t}&step=60",
        enc("process_memory_usage_bytes{job=\"shop\"}")
    );
    let (s, v) = get(&app, &uri).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["resultType"], "matrix");
    let series = &v["data"]["result"][0];
    assert_eq!(series["metric"]["__name__"], "process_memory_usage_bytes");
    assert_eq!(series["values"].as_array().unwrap().len(), 11);

    // Native histograms: quantile and the histogram JSON.
    let (s, v) = post(
        &app,
        "/prometheus/api/v1/query",
        &[("query", "histogram_quantile(0.75, rate(rpc_latency_seconds[5m]))"), ("time", &t)],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let q: f64 = v["data"]["result"][0]["value"][1].as_str().unwrap().parse().unwrap();
    // Half the observations in (1, 2], half in (2, 4]: the 0.75 quantile is halfway in (2, 4].
    assert!((q - 3.0).abs() < 1e-9, "{q}");
    let (_, v) = post(&app, "/prometheus/api/v1/query", &[("query", "rpc_latency_seconds"), ("time", &t)]).await;
    let h = &v["data"]["result"][0]["histogram"][1];
    assert_eq!(h["count"], "156");
    assert_eq!(h["buckets"][0], serde_json::json!([0, "1", "2", "78"]));

    // Labels, metric names, metadata, series.
    let (s, v) = get(&app, &format!("/prometheus/api/v1/labels?start={start}&end={t}")).await;
    assert_eq!(s, StatusCode::OK);
    let labels: Vec<&str> = v["data"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert!(labels.contains(&"__name__") && labels.contains(&"http_route") && labels.contains(&"job"), "{labels:?}");
    let (_, v) = post(&app, "/prometheus/api/v1/labels", &[("start", &start), ("end", &t)]).await;
    assert!(v["data"].as_array().unwrap().len() >= 3);
    let (s, v) = get(&app, &format!("/prometheus/api/v1/label/__name__/values?start={start}&end={t}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["data"],
        serde_json::json!([
            "http_server_requests_total",
            "process_memory_usage_bytes",
            "rpc_latency_seconds",
            "target_info"
        ])
    );
    let (_, v) =
        get(&app, &format!("/prometheus/api/v1/label/host_name/values?match[]=target_info&start={start}&end={t}"))
            .await;
    assert_eq!(v["data"], serde_json::json!(["box-1"]));
    let (s, v) = get(&app, "/prometheus/api/v1/metadata").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"]["http_server_requests_total"][0]["type"], "counter");
    assert_eq!(v["data"]["http_server_requests_total"][0]["help"], "requests served");
    assert_eq!(v["data"]["process_memory_usage_bytes"][0]["unit"], "bytes");
    let (s, v) = get(
        &app,
        &format!(
            "/prometheus/api/v1/series?match[]={}&start={start}&end={t}",
            enc("http_server_requests_total{http_route=\"/pay\"}")
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"][0]["job"], "shop");

    // Exemplars, as Grafana asks for them next to a panel's query.
    let (s, v) = post(
        &app,
        "/prometheus/api/v1/query_exemplars",
        &[("query", "rate(http_server_requests_total[5m])"), ("start", &start), ("end", &t)],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let series = v["data"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{v}");
    assert_eq!(series[0]["seriesLabels"]["http_route"], "/pay");
    let e = &series[0]["exemplars"][0];
    assert_eq!(e["labels"]["trace_id"], "abababababababababababababababab");
    assert_eq!(e["labels"]["span_id"], "cdcdcdcdcdcdcdcd");
    assert_eq!(e["value"], "0.25");
    assert!(e["timestamp"].is_number());
}

#[tokio::test]
async fn bad_queries_are_400_bad_data_naming_the_construct() {
    let app = app(now_ms()).await;
    for (query, needle) in [
        ("rate(x[5m:1m])", "subquery"),
        ("label_replace(x, \"a\", \"b\", \"c\", \"d\")", "label_replace"),
        ("count_values(\"v\", x)", "count_values"),
        ("sum(", "unclosed left parenthesis"),
        ("{job=~\".*\"}", "non-empty matcher"),
    ] {
        let (s, v) = post(&app, "/prometheus/api/v1/query", &[("query", query)]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert_eq!(v["status"], "error");
        assert_eq!(v["errorType"], "bad_data");
        assert!(v["error"].as_str().unwrap().contains(needle), "{query}: {v}");
    }
    let (s, v) = get(&app, "/prometheus/api/v1/query_range?query=up&start=10&end=5&step=1").await;
    assert_eq!((s, v["errorType"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_data")));
    let (s, _) = get(&app, "/prometheus/api/v1/query_range?query=up&start=0&end=100000&step=1").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = get(&app, "/prometheus/api/v1/query_range?query=up&start=0&end=10&step=0").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = get(&app, "/prometheus/api/v1/query?query=up&time=yesterday").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = get(&app, "/prometheus/api/v1/series").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("match[]"));
    // Many-to-many matching is an execution error.
    let (s, v) = post(
        &app,
        "/prometheus/api/v1/query",
        &[("query", "http_server_requests_total + on (job) http_server_requests_total")],
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["errorType"], "execution");
}
