//! The evaluation engine over the durable store obsbox runs on (`DiskStore`): span counts from
//! its tantivy index (`span_histogram`) and metric counts from its metrics store, at real time.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use obsbox_slo::{
    Alert, AlertSink, Budgeting, Evaluator, Sli, Slo, SloConfig, SloSource, Source, SpanGood, SpanSelector, Tier,
    Transition, Window,
};
use obsbox_storage::{Batch, DiskStore, Reader, SpanPredicate, StoreConfig, TimeRange, Writer};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

fn resource() -> Option<Resource> {
    Some(Resource { attributes: vec![kv("service.name", "payment")], ..Default::default() })
}

fn slo(name: &str, sli: Sli) -> Slo {
    let window = Duration::from_secs(30 * 86400);
    Slo {
        name: name.into(),
        display_name: name.into(),
        description: String::new(),
        service: "payment".into(),
        sli,
        target: 0.99,
        objective_name: String::new(),
        window: Window::Rolling(window),
        budgeting: Budgeting::Occurrences,
        tiers: Tier::workbook(window),
        min_events: 0,
        labels: Vec::new(),
        source: Source { file: "slos/pay.yaml".into(), line: 1 },
    }
}

struct Fixed(Vec<Slo>);

impl SloSource for Fixed {
    fn reload(&mut self) -> (Vec<Slo>, Vec<String>) {
        (self.0.clone(), Vec::new())
    }
    fn changed(&self) -> bool {
        false
    }
}

struct Ignore;

impl AlertSink for Ignore {
    fn deliver(&self, _: &[Alert], _: &[Transition]) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_and_metric_slis_over_the_disk_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        DiskStore::open(StoreConfig {
            data_dir: dir.path().join("store"),
            commit_interval: Duration::from_millis(100),
            ..StoreConfig::default()
        })
        .unwrap(),
    );
    // Two minutes of real time: at time scale 60 that is two hours of SLO time, 120 buckets.
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let first = now_s - 120;
    let mut spans = Vec::new();
    for s in first..now_s {
        for i in 0..5u64 {
            let start = s * 1_000_000_000 + i * 100_000_000;
            spans.push(Span {
                trace_id: ((s as u128) << 8 | i as u128).to_be_bytes().to_vec(),
                span_id: (s << 8 | i).to_be_bytes().to_vec(),
                name: "charge".into(),
                kind: 2,
                start_time_unix_nano: start,
                end_time_unix_nano: start + if i == 1 { 900_000_000 } else { 20_000_000 },
                status: Some(Status { code: if i == 0 { 2 } else { 0 }, ..Default::default() }),
                ..Default::default()
            });
        }
    }
    let traces = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    };
    store.write(Batch::Traces(traces)).await.unwrap();
    // A counter sampled every 10 s: 7 requests per interval, 1 of them failed.
    let mut points = Vec::new();
    for (code, per) in [("200", 6.0), ("500", 1.0)] {
        for k in 0..12u64 {
            points.push(NumberDataPoint {
                attributes: vec![kv("code", code)],
                start_time_unix_nano: first * 1_000_000_000,
                time_unix_nano: (first + 10 * k) * 1_000_000_000,
                value: Some(number_data_point::Value::AsDouble(per * k as f64)),
                ..Default::default()
            });
        }
    }
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "payments".into(),
                    data: Some(metric::Data::Sum(Sum {
                        data_points: points,
                        aggregation_temporality: 2,
                        is_monotonic: true,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    store.write(Batch::Metrics(metrics)).await.unwrap();
    // Searchable within the commit interval.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = store.clone();
        let n: u64 = tokio::task::spawn_blocking(move || {
            s.span_histogram(&SpanPredicate::All, TimeRange::ALL, 60_000_000_000).unwrap().iter().map(|c| c.1).sum()
        })
        .await
        .unwrap();
        if n == 600 {
            break;
        }
        assert!(Instant::now() < deadline, "spans not visible: {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let errors = Sli::Spans {
        selector: SpanSelector {
            service: Some("payment".into()),
            operation: Some("charge".into()),
            ..Default::default()
        },
        good: SpanGood { no_error: true, max_duration: None },
    };
    let latency = Sli::Spans {
        selector: SpanSelector { service: Some("payment".into()), ..Default::default() },
        good: SpanGood { no_error: false, max_duration: Some(Duration::from_millis(300)) },
    };
    let requests = Sli::Metrics {
        numerator: r#"payments_total{code="500"}"#.into(),
        numerator_is_bad: true,
        total: r#"payments_total{job="payment"}"#.into(),
    };
    let source = Fixed(vec![slo("errors", errors), slo("latency", latency), slo("requests", requests)]);
    let reader: Arc<dyn Reader> = store.clone();
    let data_dir = dir.path().to_path_buf();
    let ev = tokio::task::spawn_blocking(move || {
        let config = SloConfig { time_scale: 60, ..Default::default() };
        let mut ev = Evaluator::new(
            &config,
            &data_dir,
            reader,
            &prometheus::Registry::new(),
            Box::new(Ignore),
            Box::new(source),
        )
        .unwrap();
        ev.evaluate(SystemTime::now());
        ev
    })
    .await
    .unwrap();
    assert!(ev.errors().is_empty(), "{:?}", ev.errors());
    let budget = |name: &str| {
        let d = ev.detail(name).unwrap();
        (d.budget.total, d.budget.bad)
    };
    assert_eq!(budget("errors"), (600.0, 120.0), "one error in five");
    assert_eq!(budget("latency"), (600.0, 120.0), "one slow span in five");
    // 11 increments of 6 + 1 per series.
    assert_eq!(budget("requests"), (77.0, 11.0));
    let d = ev.detail("errors").unwrap();
    // 20% bad against 1% allowed: 20x over every window that holds the traffic.
    let fast = &d.tiers[0];
    assert!((fast.long.unwrap() - 20.0).abs() < 1e-9, "{fast:?}");
    store.close();
}
