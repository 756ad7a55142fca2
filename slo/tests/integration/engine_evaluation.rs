//! The evaluation engine over a real store implementation (`MemStore`, which passes the store's
//! contract suite): span and metric SLIs counted from the store, burn rates, alert states
//! through pending / firing / resolved with notifications, restarts, late spans, and the
//! timer-driven [`SloEngine`] with its self-metrics.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use obsbox_slo::{
    Alert, AlertSink, AlertState, Budgeting, Evaluator, Health, Sli, Slo, SloConfig, SloEngine, SloSource, SloStatus,
    Source, SpanGood, SpanSelector, Tier, Transition, Window,
};
use obsbox_storage::{Batch, MemStore, Reader, Writer};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

const BASE_S: u64 = 1_800_000_000;
const DAY: u64 = 86400;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

fn resource(service: &str) -> Option<Resource> {
    Some(Resource { attributes: vec![kv("service.name", service)], ..Default::default() })
}

/// Writes spans of `service`/`op`: one per `(start_ns, duration_ms, error)`.
fn write_spans(store: &MemStore, service: &str, op: &str, spans: &[(u64, u64, bool)]) {
    let spans = spans
        .iter()
        .enumerate()
        .map(|(i, &(start, ms, error))| Span {
            trace_id: (start as u128 ^ (i as u128) << 64).to_be_bytes().to_vec(),
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: op.into(),
            kind: 2,
            start_time_unix_nano: start,
            end_time_unix_nano: start + ms * 1_000_000,
            status: Some(Status { code: if error { 2 } else { 1 }, ..Default::default() }),
            ..Default::default()
        })
        .collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(service),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    };
    block_on(store.write(Batch::Traces(req)));
}

/// Runs a store write to completion, also from inside a runtime (on a thread of its own).
fn block_on<
    F: std::future::Future<Output = Result<obsbox_storage::WriteReceipt, obsbox_storage::StoreError>> + Send,
>(
    f: F,
) {
    std::thread::scope(|s| {
        s.spawn(|| tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f).expect("write"))
            .join()
            .unwrap();
    });
}

/// `per_s` spans a second over `[from_s, to_s)`, `bad` of each second's spans errors.
fn traffic(store: &MemStore, from_s: u64, to_s: u64, per_s: u64, bad: u64) {
    let mut spans = Vec::new();
    for s in from_s..to_s {
        for i in 0..per_s {
            spans.push((s * 1_000_000_000 + i * 1_000_000, 10, i < bad));
        }
    }
    write_spans(store, "payment", "charge", &spans);
}

fn slo(name: &str, sli: Sli, window: Duration, target: f64) -> Slo {
    Slo {
        name: name.into(),
        display_name: name.into(),
        description: "test".into(),
        service: "payment".into(),
        sli,
        target,
        objective_name: String::new(),
        window: Window::Rolling(window),
        budgeting: Budgeting::Occurrences,
        tiers: Tier::workbook(window),
        min_events: 10,
        labels: vec![("team".into(), "pay".into())],
        source: Source { file: "slos/pay.yaml".into(), line: 1 },
    }
}

fn span_sli() -> Sli {
    Sli::Spans {
        selector: SpanSelector { service: Some("payment".into()), ..Default::default() },
        good: SpanGood { no_error: true, max_duration: None },
    }
}

/// SLOs handed out as given; `changed` when a test swaps them.
#[derive(Clone, Default)]
struct Fixed(Arc<Mutex<(Vec<Slo>, bool, usize)>>);

impl Fixed {
    fn new(slos: Vec<Slo>) -> Fixed {
        Fixed(Arc::new(Mutex::new((slos, false, 0))))
    }
    fn set(&self, slos: Vec<Slo>) {
        let mut g = self.0.lock().unwrap();
        g.0 = slos;
        g.1 = true;
    }
    fn reloads(&self) -> usize {
        self.0.lock().unwrap().2
    }
}

impl SloSource for Fixed {
    fn reload(&mut self) -> (Vec<Slo>, Vec<String>) {
        let mut g = self.0.lock().unwrap();
        g.1 = false;
        g.2 += 1;
        (g.0.clone(), vec!["slos/bad.yaml:3: spec.objectives[0].target: must be below 1".into()])
    }
    fn changed(&self) -> bool {
        self.0.lock().unwrap().1
    }
}

/// Records every delivery.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Deliveries>>);

/// Every `deliver` call's arguments, oldest first.
type Deliveries = Vec<(Vec<Alert>, Vec<Transition>)>;

impl AlertSink for Recorder {
    fn deliver(&self, alerts: &[Alert], transitions: &[Transition]) {
        self.0.lock().unwrap().push((alerts.to_vec(), transitions.to_vec()));
    }
}

impl Recorder {
    fn last(&self) -> (Vec<Alert>, Vec<Transition>) {
        self.0.lock().unwrap().last().cloned().unwrap_or_default()
    }
}

fn at(s: u64, ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(s * 1000 + ms)
}

fn demo_config() -> SloConfig {
    SloConfig { time_scale: 60, ..Default::default() }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6 * b.abs().max(1.0)
}

fn tier_state(alerts: &[Alert], slo: &str, tier: &str) -> Option<AlertState> {
    alerts.iter().find(|a| a.slo == slo && a.tier == tier).map(|a| a.state)
}

#[test]
fn span_slo_burns_fires_resolves_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    // Time scale 60: a bucket is 1 s, the 30-day window 12 h, the page tier 1 h / 5 min is
    // 60 s / 5 s of real time.
    traffic(&store, BASE_S - 3600, BASE_S, 10, 0);
    let source = Fixed::new(vec![slo("pay", span_sli(), Duration::from_secs(30 * DAY), 0.999)]);
    let sink = Recorder::default();
    let reader: Arc<dyn Reader> = store.clone();
    let registry = prometheus::Registry::new();
    let mut ev = Evaluator::new(
        &demo_config(),
        dir.path(),
        reader.clone(),
        &registry,
        Box::new(sink.clone()),
        Box::new(source.clone()),
    )
    .unwrap();

    // An hour of good traffic, counted by the first evaluation's backfill.
    ev.evaluate(at(BASE_S, 500));
    let d = ev.detail("pay").unwrap();
    assert_eq!(d.summary.sli, Some(1.0));
    assert_eq!(d.summary.health, Health::Healthy);
    assert_eq!(d.budget.total, 36_000.0);
    assert!(close(d.budget.allowed_bad, 36.0));
    assert_eq!(d.tiers[0].long, Some(0.0));
    assert_eq!(d.time_to_exhaustion_s, None);
    assert_eq!(d.summary.window, "30d rolling");
    assert!(!d.burn_down.is_empty() && d.burn_down.len() <= 500);
    assert_eq!(ev.errors(), vec!["slos/bad.yaml:3: spec.objectives[0].target: must be below 1".to_string()]);
    // The event counter Prometheus rules read only counts live buckets (the newest 4), not the
    // backfilled hour, so a start or restart shows Prometheus no burst of old events.
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    assert!(text.contains(r#"obsbox_slo_events_total{kind="total",slo="pay"} 30"#), "{text}");

    // A minute of 50% errors: 500x the allowed 0.1%.
    traffic(&store, BASE_S, BASE_S + 60, 10, 5);
    ev.evaluate(at(BASE_S + 60, 500));
    let d = ev.detail("pay").unwrap();
    let fast = &d.tiers[0];
    assert_eq!((fast.tier.as_str(), fast.long_s, fast.short_s), ("page-fast", 3600.0, 300.0));
    assert!(close(fast.long.unwrap(), 500.0) && close(fast.short.unwrap(), 500.0), "{fast:?}");
    // Long window: 60 complete buckets (BASE ..= BASE+59, all errors) and the current one.
    assert_eq!(fast.long_events, 600);
    assert!(fast.condition);
    assert_eq!(tier_state(&ev.alerts(), "pay", "page-fast"), Some(AlertState::Pending));
    assert!(sink.last().0.is_empty(), "nothing fires while pending");

    ev.evaluate(at(BASE_S + 61, 500));
    let alerts = ev.alerts();
    assert_eq!(tier_state(&alerts, "pay", "page-fast"), Some(AlertState::Firing));
    let (delivered, transitions) = sink.last();
    let page = delivered.iter().find(|a| a.tier == "page-fast").expect("page alert delivered");
    assert_eq!(page.fired_at_ms, Some(((BASE_S + 61) * 1000 + 500) as i64));
    assert!(page.labels.contains(&("severity".into(), "page".into())));
    assert!(page.labels.contains(&("team".into(), "pay".into())));
    assert!(transitions.iter().any(|t| t.tier == "page-fast" && t.to == AlertState::Firing));
    let d = ev.detail("pay").unwrap();
    // 36,600 events, 300 bad, 36.6 allowed: overspent.
    assert_eq!((d.budget.total, d.budget.bad), (36_600.0, 300.0));
    assert_eq!(d.summary.health, Health::Breached);
    assert_eq!(d.time_to_exhaustion_s, Some(0.0));
    assert!(d.summary.firing.contains(&"page-fast".to_string()));

    // Restart: a new evaluator on the same data directory keeps the alert states and the counts.
    drop(ev);
    let registry = prometheus::Registry::new();
    let mut ev = Evaluator::new(
        &demo_config(),
        dir.path(),
        reader.clone(),
        &registry,
        Box::new(sink.clone()),
        Box::new(source.clone()),
    )
    .unwrap();
    assert!(ev.alerts().is_empty(), "no snapshot before the first evaluation");
    // A late span two buckets back is counted by the recount.
    write_spans(&store, "payment", "charge", &[((BASE_S + 60) * 1_000_000_000, 5, false)]);
    ev.evaluate(at(BASE_S + 62, 500));
    let d = ev.detail("pay").unwrap();
    assert_eq!(d.budget.total, 36_601.0, "counts reloaded, nothing counted twice, the late span counted");
    assert_eq!(tier_state(&ev.alerts(), "pay", "page-fast"), Some(AlertState::Firing));
    let page = ev.alerts().into_iter().find(|a| a.tier == "page-fast").unwrap();
    assert_eq!(page.fired_at_ms, Some(((BASE_S + 61) * 1000 + 500) as i64), "firing since before the restart");

    // Good traffic again: the 5 s short window clears first and the page alert resolves.
    traffic(&store, BASE_S + 62, BASE_S + 80, 10, 0);
    ev.evaluate(at(BASE_S + 70, 500));
    assert_eq!(tier_state(&ev.alerts(), "pay", "page-fast"), Some(AlertState::Resolved));
    let (delivered, transitions) = sink.last();
    let resolved = delivered.iter().find(|a| a.tier == "page-fast").expect("resolved alert delivered once");
    assert_eq!(resolved.state, AlertState::Resolved);
    assert_eq!(resolved.resolved_at_ms, Some(((BASE_S + 70) * 1000 + 500) as i64));
    assert!(transitions.iter().any(|t| t.tier == "page-fast" && t.from == AlertState::Firing));
    ev.evaluate(at(BASE_S + 71, 500));
    assert_eq!(tier_state(&ev.alerts(), "pay", "page-fast"), Some(AlertState::Inactive));
    assert!(!sink.last().0.iter().any(|a| a.tier == "page-fast"), "resolved is delivered once");
    let history = ev.detail("pay").unwrap().history;
    let fast: Vec<_> = history.iter().filter(|t| t.tier == "page-fast").map(|t| (t.from, t.to)).collect();
    use AlertState::*;
    assert_eq!(fast, vec![(Resolved, Inactive), (Firing, Resolved), (Pending, Firing), (Inactive, Pending)]);

    // Self-metrics of this evaluator.
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    assert!(text.contains("obsbox_slo_evaluations_total 3"), "{text}");
    assert!(text.contains(r#"obsbox_slo_alert_state{slo="pay",state="inactive",tier="page-fast"} 1"#), "{text}");
    assert!(text.contains(r#"obsbox_slo_burn_rate{slo="pay",window="1h"}"#), "{text}");
    assert!(text.contains(r#"obsbox_slo_events_total{kind="total",slo="pay"} 101"#), "{text}");
}

#[test]
fn low_traffic_guard_and_latency_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    // One slow request and one error in a quiet night: burning far above every threshold in
    // every window, but with fewer than `min_events` events.
    let t = BASE_S * 1_000_000_000;
    write_spans(
        &store,
        "payment",
        "charge",
        &[(t + 100_000_000, 900, false), (t + 200_000_000, 10, true), (t + 300_000_000, 100, false)],
    );
    let sli = Sli::Spans {
        selector: SpanSelector {
            service: Some("payment".into()),
            operation: Some("charge".into()),
            ..Default::default()
        },
        good: SpanGood { no_error: true, max_duration: Some(Duration::from_millis(300)) },
    };
    let mut s = slo("latency", sli, Duration::from_secs(7 * DAY), 0.99);
    s.min_events = 5;
    let sink = Recorder::default();
    let mut ev = Evaluator::new(
        &demo_config(),
        dir.path(),
        store.clone(),
        &prometheus::Registry::new(),
        Box::new(sink.clone()),
        Box::new(Fixed::new(vec![s])),
    )
    .unwrap();
    for i in 0..3 {
        ev.evaluate(at(BASE_S, 500 + 100 * i));
    }
    let d = ev.detail("latency").unwrap();
    assert_eq!((d.budget.total, d.budget.bad), (3.0, 2.0), "slow and failed spans are bad");
    for t in &d.tiers {
        let burn = (2.0 / 3.0) / (1.0 - 0.99);
        assert!(close(t.long.unwrap(), burn) && close(t.short.unwrap(), burn), "{t:?}");
        assert!(t.long_events == 3 && !t.condition, "{t:?}");
    }
    assert!(ev.alerts().iter().all(|a| a.state == AlertState::Inactive));
    assert!(sink.0.lock().unwrap().iter().all(|(a, t)| a.is_empty() && t.is_empty()));
}

fn counter_points(start_s: u64, values: &[f64]) -> Vec<NumberDataPoint> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| NumberDataPoint {
            start_time_unix_nano: start_s * 1_000_000_000,
            time_unix_nano: (start_s + 15 * i as u64) * 1_000_000_000,
            value: Some(number_data_point::Value::AsDouble(*v)),
            ..Default::default()
        })
        .collect()
}

#[test]
fn metric_slo_counts_reset_aware_counter_increases() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    let t0 = BASE_S - 600;
    // A sample every 15 s for 10 minutes: code 200 grows by 100 per sample; code 500 by 1, with
    // a counter reset (restart of the service) halfway.
    let ok: Vec<f64> = (0..40).map(|i| 100.0 * i as f64).collect();
    let err: Vec<f64> = (0..40).map(|i| if i < 20 { i as f64 } else { (i - 20) as f64 }).collect();
    let mut points = Vec::new();
    for (code, values) in [("200", &ok), ("500", &err)] {
        let mut p = counter_points(t0, values);
        for x in &mut p {
            x.attributes.push(kv("code", code));
        }
        points.extend(p);
    }
    let metric = Metric {
        name: "http.requests".into(),
        data: Some(metric::Data::Sum(Sum { data_points: points, aggregation_temporality: 2, is_monotonic: true })),
        ..Default::default()
    };
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource("payment"),
            scope_metrics: vec![ScopeMetrics { metrics: vec![metric], ..Default::default() }],
            ..Default::default()
        }],
    };
    block_on(store.write(Batch::Metrics(req)));
    let sli = Sli::Metrics {
        numerator: r#"http_requests_total{code="500",job="payment"}"#.into(),
        numerator_is_bad: true,
        total: r#"http_requests_total{job="payment"}"#.into(),
    };
    let good_sli = Sli::Metrics {
        numerator: r#"http_requests_total{code=~"2.."}"#.into(),
        numerator_is_bad: false,
        total: "http_requests_total".into(),
    };
    let bad_selector = Sli::Metrics {
        numerator: "sum(http_requests_total)".into(),
        numerator_is_bad: false,
        total: "http_requests_total".into(),
    };
    let source = Fixed::new(vec![
        slo("errors", sli, Duration::from_secs(DAY), 0.99),
        slo("good", good_sli, Duration::from_secs(DAY), 0.99),
        slo("broken", bad_selector, Duration::from_secs(DAY), 0.99),
    ]);
    let mut ev = Evaluator::new(
        &SloConfig::default(),
        dir.path(),
        store.clone(),
        &prometheus::Registry::new(),
        Box::new(Recorder::default()),
        Box::new(source),
    )
    .unwrap();
    ev.evaluate(at(BASE_S, 0));
    // 39 increments of 100, and 19 + 19 of 1 (the reset to 0 adds nothing).
    for name in ["errors", "good"] {
        let d = ev.detail(name).unwrap();
        assert_eq!((d.budget.total, d.budget.bad), (3938.0, 38.0), "{name}");
        assert!(close(d.summary.sli.unwrap(), 3900.0 / 3938.0));
    }
    let errors = ev.errors();
    assert!(errors.iter().any(|e| e.starts_with("slo broken: selector \"sum(http_requests_total)\"")), "{errors:?}");
    assert_eq!(ev.detail("broken").unwrap().summary.health, Health::NoData, "listed without data");
    assert_eq!(ev.list().len(), 3);
}

#[test]
fn redefined_and_removed_slos() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    traffic(&store, BASE_S - 120, BASE_S, 2, 1);
    let mut s = slo("pay", span_sli(), Duration::from_secs(30 * DAY), 0.99);
    let source = Fixed::new(vec![s.clone()]);
    let sink = Recorder::default();
    let mut ev = Evaluator::new(
        &demo_config(),
        dir.path(),
        store.clone(),
        &prometheus::Registry::new(),
        Box::new(sink.clone()),
        Box::new(source.clone()),
    )
    .unwrap();
    ev.evaluate(at(BASE_S, 0));
    ev.evaluate(at(BASE_S, 100));
    assert_eq!(tier_state(&ev.alerts(), "pay", "page-fast"), Some(AlertState::Firing));
    assert_eq!(ev.detail("pay").unwrap().budget.total, 240.0);
    // A new selector: counts start over from the store (errors only: a different count).
    if let Sli::Spans { good, .. } = &mut s.sli {
        good.max_duration = Some(Duration::from_millis(5));
    }
    source.set(vec![s]);
    ev.evaluate(at(BASE_S, 200));
    assert_eq!(source.reloads(), 2);
    assert_eq!(ev.detail("pay").unwrap().budget.bad, 240.0, "every span is now too slow");
    // Removed: the firing alerts resolve, are delivered once, then the SLO is gone.
    source.set(Vec::new());
    ev.evaluate(at(BASE_S, 300));
    assert!(ev.list().is_empty());
    let (delivered, _) = sink.last();
    assert!(delivered.iter().any(|a| a.tier == "page-fast" && a.state == AlertState::Resolved));
    ev.evaluate(at(BASE_S, 400));
    assert!(ev.alerts().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_ticks_on_its_own_and_fires() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    // Errors from 5 real seconds ago (at time scale 60, the page tier's short window) to 20 s
    // ahead (spans count in the bucket of their start time, so the burn lasts while the test
    // runs, however busy the machine).
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let spans: Vec<_> = (0..250).map(|i| (now_ns - 5_000_000_000 + i * 100_000_000, 10, true)).collect();
    write_spans(&store, "payment", "charge", &spans);
    let source = Fixed::new(vec![slo("pay", span_sli(), Duration::from_secs(30 * DAY), 0.999)]);
    let sink = Recorder::default();
    let registry = prometheus::Registry::new();
    let engine = SloEngine::start(
        &demo_config(),
        dir.path(),
        store.clone(),
        &registry,
        Box::new(sink.clone()),
        Box::new(source.clone()),
    )
    .unwrap();
    // Ticks every 30 s / 60 = 0.5 s: pending at the first evaluation, firing at the next.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tier_state(&engine.alerts(), "pay", "page-fast") != Some(AlertState::Firing) {
        assert!(std::time::Instant::now() < deadline, "page alert never fired: {:?}", engine.alerts());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sink.0.lock().unwrap().iter().any(|(a, _)| a.iter().any(|a| a.tier == "page-fast")));
    let list = engine.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].sli, Some(0.0));
    assert!(engine.detail("pay").is_some() && engine.detail("nope").is_none());
    // A second engine cannot register the same self-metrics.
    let again = SloEngine::start(
        &demo_config(),
        dir.path(),
        store.clone(),
        &registry,
        Box::new(Recorder::default()),
        Box::new(Fixed::default()),
    );
    let e = again.err().unwrap().to_string();
    assert!(e.starts_with("metrics: ") && e.contains("Duplicate"), "{e}");
    // reload() reloads at once, without waiting for the next tick.
    let before = source.reloads();
    engine.reload();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while source.reloads() == before {
        assert!(std::time::Instant::now() < deadline, "reload did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engine.close().await;
    let n = sink.0.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(sink.0.lock().unwrap().len(), n, "no evaluation after close");
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    assert!(text.contains(r#"obsbox_slo_sli{slo="pay"} 0"#), "{text}");
}

#[test]
fn a_torn_counts_file_is_cut_and_recounted_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    traffic(&store, BASE_S - 600, BASE_S, 3, 1);
    let source = Fixed::new(vec![slo("pay", span_sli(), Duration::from_secs(30 * DAY), 0.99)]);
    let new = || {
        Evaluator::new(
            &demo_config(),
            dir.path(),
            store.clone(),
            &prometheus::Registry::new(),
            Box::new(Recorder::default()),
            Box::new(source.clone()),
        )
        .unwrap()
    };
    let mut ev = new();
    for s in 0..10 {
        ev.evaluate(at(BASE_S - 300 + s * 30, 0));
    }
    ev.evaluate(at(BASE_S, 0));
    assert_eq!(ev.detail("pay").unwrap().budget.total, 1800.0);
    drop(ev);
    // What `kill -9` mid-append leaves: a torn last record; and garbage 50 records back (all after
    // it is cut): the recount from the newest surviving bucket restores them from the store.
    let path = dir.path().join("slo/counts/pay.counts");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes.truncate(n - 11);
    let m = bytes.len();
    bytes[m - 17 - 28 * 50 + 3] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    let mut ev = new();
    ev.evaluate(at(BASE_S, 500));
    let d = ev.detail("pay").unwrap();
    assert_eq!((d.budget.total, d.budget.bad), (1800.0, 600.0));
    assert!(ev.errors().iter().all(|e| !e.starts_with("slo pay")), "{:?}", ev.errors());
    assert!(std::fs::metadata(&path).unwrap().len() < n as u64 + 28 * 5);
}

#[test]
fn timeslice_budgeting_counts_slices() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    // At time scale 60, 5-minute slices are 5 s. Ten slices of traffic: slices 0-7 all good,
    // slices 8 and 9 with 20% errors (below the 95% slice target).
    let start = BASE_S - 50 - BASE_S % 5;
    traffic(&store, start, start + 40, 10, 0);
    traffic(&store, start + 40, start + 50, 10, 2);
    let mut s = slo("slices", span_sli(), Duration::from_secs(30 * DAY), 0.9);
    s.budgeting = Budgeting::Timeslices { slice: Duration::from_secs(300), slice_target: 0.95 };
    let mut ratio = s.clone();
    ratio.name = "ratio".into();
    ratio.budgeting = Budgeting::RatioTimeslices { slice: Duration::from_secs(300) };
    let mut ev = Evaluator::new(
        &demo_config(),
        dir.path(),
        store.clone(),
        &prometheus::Registry::new(),
        Box::new(Recorder::default()),
        Box::new(Fixed::new(vec![s, ratio])),
    )
    .unwrap();
    ev.evaluate(at(start + 50, 0));
    let d = ev.detail("slices").unwrap();
    assert_eq!(d.summary.budgeting, "timeslices");
    assert_eq!(d.budget.unit, obsbox_slo::BudgetUnit::Slices);
    assert_eq!((d.budget.total, d.budget.bad), (10.0, 2.0));
    assert_eq!(d.summary.sli, Some(0.8));
    // 1 slice allowed (10% of 10), 2 spent: 1 slice = 300 s of SLO time overspent.
    assert!(close(d.budget.remaining, -1.0) && close(d.budget.remaining_s.unwrap(), -300.0));
    assert_eq!(d.summary.health, Health::Breached);
    let r = ev.detail("ratio").unwrap();
    // Mean slice ratio: (8 × 1.0 + 2 × 0.8) / 10.
    assert!(close(r.summary.sli.unwrap(), 0.96), "{:?}", r.summary.sli);
    assert!(close(r.summary.budget_remaining.unwrap(), 0.6));
    assert_eq!(r.summary.health, Health::Healthy);
}

#[test]
fn calendar_windows_start_at_local_midnight() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemStore::new());
    // BASE_S is 2027-01-15 08:00 UTC. Errors at 22:30 and 23:30 UTC the day before (23:30 and
    // 00:30 in Berlin), good traffic at 07:00 UTC.
    traffic(&store, BASE_S - 9 * 3600 - 1800, BASE_S - 9 * 3600 - 1799, 10, 10);
    traffic(&store, BASE_S - 8 * 3600 - 1800, BASE_S - 8 * 3600 - 1799, 10, 10);
    traffic(&store, BASE_S - 3600, BASE_S - 3599, 10, 0);
    // Both aligned to 2026-01-01 00:00 local time.
    let daily = |name: &str, tz: &str, start_unix_s: i64| {
        let mut s = slo(name, span_sli(), Duration::from_secs(DAY), 0.9);
        s.window =
            Window::Calendar { count: 1, unit: obsbox_slo::CalendarUnit::Day, time_zone: tz.into(), start_unix_s };
        s
    };
    let mut ev = Evaluator::new(
        &SloConfig::default(),
        dir.path(),
        store.clone(),
        &prometheus::Registry::new(),
        Box::new(Recorder::default()),
        Box::new(Fixed::new(vec![
            daily("utc", "UTC", 1_767_225_600),
            daily("berlin", "Europe/Berlin", 1_767_225_600 - 3600),
        ])),
    )
    .unwrap();
    ev.evaluate(at(BASE_S, 0));
    let utc = ev.detail("utc").unwrap();
    let berlin = ev.detail("berlin").unwrap();
    assert_eq!(utc.window_start_ms, ((BASE_S - 8 * 3600) * 1000) as i64, "00:00 UTC");
    assert_eq!(berlin.window_start_ms, ((BASE_S - 9 * 3600) * 1000) as i64, "00:00 in Berlin is 23:00 UTC");
    assert_eq!((utc.budget.total, utc.budget.bad), (10.0, 0.0), "both error bursts were yesterday in UTC");
    assert_eq!((berlin.budget.total, berlin.budget.bad), (20.0, 10.0), "00:30 Berlin is today, 23:30 is not");
    assert_eq!(utc.summary.window, "1 day calendar (UTC)");
    assert_eq!(berlin.summary.window_s, 86400.0);
}
