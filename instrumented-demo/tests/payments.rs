//! Payments against the flaky provider: the breaker opens after failures and fails fast, half-opens after the
//! cool-down and closes on a good probe; the bulkhead rejects calls beyond its bound; transitions are counted.

mod support;

use std::time::Duration;

use obsbox_demo::ServiceName;
use obsbox_demo::faults::{FaultRule, FaultSettings};
use obsbox_demo::patterns::breaker::{BreakerConfig, BreakerState};
use obsbox_demo::patterns::retry::RetryConfig;
use obsbox_demo::services::payments::{ProviderClient, ResilienceConfig};
use obsbox_demo::services::{ServiceContext, payments, provider};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use serde_json::json;
use std::sync::OnceLock;

struct Metrics {
    exporter: InMemoryMetricExporter,
    provider: SdkMeterProvider,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// A global meter provider exporting to memory, set before any instrument is made.
fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| {
        let exporter = InMemoryMetricExporter::default();
        let provider =
            SdkMeterProvider::builder().with_reader(PeriodicReader::builder(exporter.clone()).build()).build();
        opentelemetry::global::set_meter_provider(provider.clone());
        Metrics { exporter, provider }
    })
}

/// The points of metric `name` from the last collection: (attributes as `k=v` strings, value).
fn points(name: &str) -> Vec<(Vec<String>, i128)> {
    let m = metrics();
    m.exporter.reset();
    m.provider.force_flush().unwrap();
    let mut out = Vec::new();
    for rm in m.exporter.get_finished_metrics().unwrap() {
        for sm in rm.scope_metrics() {
            for metric in sm.metrics().filter(|x| x.name() == name) {
                let attrs = |it: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                    it.map(|kv| format!("{}={}", kv.key, kv.value)).collect::<Vec<_>>()
                };
                match metric.data() {
                    AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                        out.extend(sum.data_points().map(|p| (attrs(&mut p.attributes()), i128::from(p.value()))))
                    }
                    AggregatedMetrics::I64(MetricData::Gauge(g)) => {
                        out.extend(g.data_points().map(|p| (attrs(&mut p.attributes()), i128::from(p.value()))))
                    }
                    other => panic!("unexpected data for {name}: {other:?}"),
                }
            }
        }
    }
    out
}

async fn setup(config: ResilienceConfig) -> (String, ServiceContext, ProviderClient, tempfile::TempDir) {
    support::capture_spans();
    metrics();
    let dir = tempfile::tempdir().unwrap();
    let provider_ctx = support::context(ServiceName::Provider, dir.path());
    let routes = provider::routes(provider_ctx.db().unwrap(), provider_ctx.faults.clone()).unwrap();
    let (provider_url, _) = support::serve(&provider_ctx, routes).await;
    let payments_ctx = support::context(ServiceName::Payments, dir.path());
    payments_ctx.set_peer("payment-provider", &provider_url);
    let client = ProviderClient::new(payments_ctx.clone(), config);
    let routes = payments::routes(payments_ctx.db().unwrap(), client.clone()).unwrap();
    let (url, _) = support::serve(&payments_ctx, routes).await;
    (url, provider_ctx, client, dir)
}

async fn pay(url: &str, order_id: &str) -> (u16, serde_json::Value) {
    pay_in_trace(url, order_id, &format!("{:032x}", rand_id())).await
}

fn rand_id() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() | 1
}

/// Pays in the trace `trace_id` (the request carries a `traceparent`), so the test can find its spans.
async fn pay_in_trace(url: &str, order_id: &str, trace_id: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/payments"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({ "order_id": order_id, "amount_cents": 999 }))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or_default())
}

fn failing_charges(latency_ms: u64, error_rate: f64) -> FaultSettings {
    FaultSettings {
        rules: vec![FaultRule { endpoint: Some("POST /v1/charges".into()), latency_ms, error_rate }],
        ..FaultSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_provider_errors_fails_fast_and_recovers() {
    let config = ResilienceConfig {
        breaker: BreakerConfig {
            consecutive_failures: 3,
            cool_down: Duration::from_millis(300),
            half_open_probes: 1,
            ..BreakerConfig::default()
        },
        retry: RetryConfig { max_attempts: 1, ..RetryConfig::default() },
        ..ResilienceConfig::default()
    };
    let (url, provider_ctx, client, _dir) = setup(config).await;
    provider_ctx.faults.set(failing_charges(0, 1.0)).unwrap();

    for i in 0..3 {
        assert_eq!(pay(&url, &format!("o{i}")).await.0, 502, "provider errors pass through while closed");
    }
    assert_eq!(client.breaker().state(), BreakerState::Open);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (status, body) = pay_in_trace(&url, "o3", trace_id).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("circuit breaker open"), "{body}");
    let in_trace: Vec<String> = support::spans()
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == trace_id)
        .map(|s| s.name.to_string())
        .collect();
    assert!(in_trace.contains(&"POST /payments".to_owned()), "{in_trace:?}");
    assert!(!in_trace.contains(&"POST /v1/charges".to_owned()), "the open breaker called the provider: {in_trace:?}");

    provider_ctx.faults.set(FaultSettings::default()).unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(client.breaker().state(), BreakerState::HalfOpen);
    assert_eq!(pay(&url, "o4").await.0, 201, "the probe goes through");
    assert_eq!(client.breaker().state(), BreakerState::Closed);

    // Each transition was counted; the state gauge reads closed again.
    let transitions = points("demo.payments.breaker.transitions");
    for to in ["to=open", "to=half_open", "to=closed"] {
        let n: i128 = transitions.iter().filter(|(a, _)| a.iter().any(|x| x == to)).map(|(_, v)| v).sum();
        assert_eq!(n, 1, "{to} in {transitions:?}");
    }
    let state = points("demo.payments.breaker.state");
    assert!(!state.is_empty() && state.iter().all(|(_, v)| *v == 0), "gauge {state:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulkhead_rejects_calls_beyond_its_bound() {
    let config = ResilienceConfig { max_concurrent: 1, ..ResilienceConfig::default() };
    let (url, provider_ctx, _client, _dir) = setup(config).await;
    provider_ctx.faults.set(failing_charges(400, 0.0)).unwrap();
    let (slow, rejected) = tokio::join!(pay(&url, "b1"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        pay(&url, "b2").await
    });
    assert_eq!(slow.0, 201);
    assert_eq!(rejected.0, 503, "{}", rejected.1);
    assert!(rejected.1["error"].as_str().unwrap().contains("bulkhead full"), "{}", rejected.1);
}
