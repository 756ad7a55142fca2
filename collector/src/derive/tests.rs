//! Known span sets in, expected counters, buckets and edges out.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{HistogramDataPoint, Metric, NumberDataPoint, metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Link, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

use super::servicegraph::{self, ServiceGraph};
use super::spanmetrics::{self, SpanMetrics};
use super::*;

const T0: u64 = 1_700_000_000_000_000_000;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

struct S {
    service: &'static str,
    name: &'static str,
    kind: SpanKind,
    status: StatusCode,
    ms: f64,
    trace: u8,
    id: u8,
    parent: u8,
    attrs: Vec<KeyValue>,
    links: Vec<(u8, u8)>,
}

fn s(service: &'static str, name: &'static str, kind: SpanKind, ms: f64) -> S {
    S { service, name, kind, status: StatusCode::Unset, ms, trace: 1, id: 1, parent: 0, attrs: vec![], links: vec![] }
}

impl S {
    fn ids(mut self, trace: u8, id: u8, parent: u8) -> Self {
        (self.trace, self.id, self.parent) = (trace, id, parent);
        self
    }
    fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
    fn attr(mut self, k: &str, v: &str) -> Self {
        self.attrs.push(kv(k, v));
        self
    }
    fn link(mut self, trace: u8, id: u8) -> Self {
        self.links.push((trace, id));
        self
    }
}

fn request(spans: Vec<S>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: spans
            .into_iter()
            .map(|s| ResourceSpans {
                resource: Some(Resource { attributes: vec![kv("service.name", s.service)], ..Default::default() }),
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans: vec![Span {
                        trace_id: vec![s.trace; 16],
                        span_id: vec![s.id; 8],
                        parent_span_id: if s.parent == 0 { vec![] } else { vec![s.parent; 8] },
                        name: s.name.into(),
                        kind: s.kind as i32,
                        start_time_unix_nano: T0,
                        end_time_unix_nano: T0 + (s.ms * 1e6) as u64,
                        attributes: s.attrs,
                        status: Some(Status { code: s.status as i32, message: String::new() }),
                        links: s
                            .links
                            .iter()
                            .map(|&(t, i)| Link { trace_id: vec![t; 16], span_id: vec![i; 8], ..Default::default() })
                            .collect(),
                        ..Default::default()
                    }],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

fn facts(spans: Vec<S>) -> Vec<SpanFacts> {
    extract(&request(spans))
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    })
}

fn metrics(req: &ExportMetricsServiceRequest, name: &str) -> Vec<Metric> {
    req.resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter(|m| m.name == name)
        .cloned()
        .collect()
}

fn sum_points(req: &ExportMetricsServiceRequest, name: &str) -> Vec<NumberDataPoint> {
    metrics(req, name)
        .into_iter()
        .flat_map(|m| match m.data {
            Some(metric::Data::Sum(s)) => {
                assert!(s.is_monotonic && s.aggregation_temporality == series::CUMULATIVE, "{name}");
                s.data_points
            }
            other => panic!("{name} is not a sum: {other:?}"),
        })
        .collect()
}

fn hist_points(req: &ExportMetricsServiceRequest, name: &str) -> Vec<HistogramDataPoint> {
    metrics(req, name)
        .into_iter()
        .flat_map(|m| match m.data {
            Some(metric::Data::Histogram(h)) => h.data_points,
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .collect()
}

fn int(p: &NumberDataPoint) -> i64 {
    match p.value {
        Some(number_data_point::Value::AsInt(v)) => v,
        ref v => panic!("not an int: {v:?}"),
    }
}

fn find<'a, P>(points: &'a [P], attrs: impl Fn(&P) -> &[KeyValue], want: &[(&str, &str)]) -> &'a P {
    points
        .iter()
        .find(|p| want.iter().all(|(k, v)| str_attr(attrs(p), k) == Some(v)))
        .unwrap_or_else(|| panic!("no point with {want:?}"))
}

fn edge(req: &ExportMetricsServiceRequest, name: &str, client: &str, server: &str, conn: &str) -> i64 {
    let points = sum_points(req, name);
    int(find(&points, |p| &p.attributes, &[("client", client), ("server", server), ("connection_type", conn)]))
}

fn span_metrics_of(spans: Vec<S>) -> ExportMetricsServiceRequest {
    let mut m = SpanMetrics::new(100);
    for f in facts(spans) {
        assert!(m.record(&f, T0));
    }
    ExportMetricsServiceRequest { resource_metrics: m.emit(T0 + 1) }
}

#[test]
fn span_metrics_count_calls_and_bucket_durations() {
    use SpanKind::*;
    let req = span_metrics_of(vec![
        s("cart", "GET /cart", Server, 1.0),
        s("cart", "GET /cart", Server, 2.0), // on the bound: bucket (0, 2]
        s("cart", "GET /cart", Server, 3000.0),
        s("cart", "GET /cart", Server, 20000.0), // above the last bound
        s("cart", "GET /cart", Server, 7.0).status(StatusCode::Error),
        s("cart", "redis GET", Client, 0.5),
        s("auth", "check", Internal, 45.0).status(StatusCode::Ok),
    ]);
    // One resource per service, with only service.name, under the span metrics scope.
    assert_eq!(req.resource_metrics.len(), 2);
    for rm in &req.resource_metrics {
        let attrs = &rm.resource.as_ref().unwrap().attributes;
        assert_eq!(attrs.len(), 1);
        assert_eq!(rm.scope_metrics[0].scope.as_ref().unwrap().name, "obsbox.spanmetrics");
    }
    let calls = sum_points(&req, spanmetrics::CALLS);
    assert_eq!(calls.len(), 4);
    let ok_server = [("service.name", "cart"), ("span.name", "GET /cart"), ("span.kind", "SPAN_KIND_SERVER")];
    let p = find(&calls, |p| &p.attributes, &[ok_server.as_slice(), &[("status.code", "STATUS_CODE_UNSET")]].concat());
    assert_eq!(int(p), 4);
    assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (T0, T0 + 1));
    let p = find(&calls, |p| &p.attributes, &[ok_server.as_slice(), &[("status.code", "STATUS_CODE_ERROR")]].concat());
    assert_eq!(int(p), 1);
    let p = find(&calls, |p| &p.attributes, &[("span.kind", "SPAN_KIND_INTERNAL"), ("status.code", "STATUS_CODE_OK")]);
    assert_eq!(int(p), 1);
    assert_eq!(str_attr(&p.attributes, "service.name"), Some("auth"));

    let metric = &metrics(&req, spanmetrics::DURATION)[0];
    assert_eq!(metric.unit, "ms");
    let durations = hist_points(&req, spanmetrics::DURATION);
    let h =
        find(&durations, |p| &p.attributes, &[ok_server.as_slice(), &[("status.code", "STATUS_CODE_UNSET")]].concat());
    assert_eq!(h.explicit_bounds, spanmetrics::DURATION_BOUNDS_MS.to_vec());
    //                       2  4  6  8 10 50 .. 2000 5000 ... 15000 +Inf
    let mut want = vec![0u64; 17];
    want[0] = 2; // 1 ms, 2 ms
    want[13] = 1; // 3000 ms in (2000, 5000]
    want[16] = 1; // 20000 ms
    assert_eq!(h.bucket_counts, want);
    assert_eq!(h.count, 4);
    assert_eq!(h.sum, Some(23003.0));
    assert_eq!((h.min, h.max), (Some(1.0), Some(20000.0)));
    assert_eq!(h.exemplars.len(), 1, "the latest span is the exemplar");
    assert_eq!(h.exemplars[0].trace_id, vec![1; 16]);
}

#[test]
fn span_metrics_are_cumulative_and_exemplars_are_written_once() {
    let mut m = SpanMetrics::new(10);
    let f = facts(vec![s("a", "op", SpanKind::Server, 5.0)]);
    m.record(&f[0], T0);
    let first = ExportMetricsServiceRequest { resource_metrics: m.emit(T0 + 10) };
    m.record(&f[0], T0 + 20);
    m.record(&f[0], T0 + 20);
    let second = ExportMetricsServiceRequest { resource_metrics: m.emit(T0 + 30) };
    let third = ExportMetricsServiceRequest { resource_metrics: m.emit(T0 + 40) };
    let calls = |r| int(&sum_points(r, spanmetrics::CALLS)[0]);
    assert_eq!((calls(&first), calls(&second), calls(&third)), (1, 3, 3));
    let p = &sum_points(&third, spanmetrics::CALLS)[0];
    assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (T0, T0 + 40), "start time = first seen");
    assert_eq!(hist_points(&second, spanmetrics::DURATION)[0].exemplars.len(), 1);
    assert!(hist_points(&third, spanmetrics::DURATION)[0].exemplars.is_empty(), "nothing new, no exemplar");
}

#[test]
fn span_metrics_beyond_the_series_limit_go_to_the_overflow_series() {
    let mut m = SpanMetrics::new(2);
    let f = facts(vec![
        s("a", "one", SpanKind::Server, 1.0),
        s("a", "two", SpanKind::Server, 1.0),
        s("a", "three", SpanKind::Server, 1.0),
        s("b", "four", SpanKind::Server, 1.0),
        s("a", "one", SpanKind::Server, 1.0),
    ]);
    let kept: Vec<bool> = f.iter().map(|f| m.record(f, T0)).collect();
    assert_eq!(kept, [true, true, false, false, true]);
    assert_eq!(m.len(), 3);
    let req = ExportMetricsServiceRequest { resource_metrics: m.emit(T0) };
    let calls = sum_points(&req, spanmetrics::CALLS);
    assert_eq!(calls.len(), 3);
    let overflow = find(&calls, |p| &p.attributes, &[("otel.metric.overflow", "true")]);
    assert_eq!(int(overflow), 2);
    assert_eq!(overflow.attributes.len(), 1);
    assert_eq!(int(find(&calls, |p| &p.attributes, &[("span.name", "one")])), 2);
}

fn graph_of(spans: Vec<S>) -> (ServiceGraph, ExportMetricsServiceRequest) {
    let mut g = ServiceGraph::new(Duration::from_secs(2), 100, 100);
    let now = Instant::now();
    for f in facts(spans) {
        g.record(&f, now, T0);
    }
    let req = ExportMetricsServiceRequest { resource_metrics: g.emit(T0 + 1).into_iter().collect() };
    (g, req)
}

#[test]
fn client_and_server_spans_pair_into_edges_in_either_order() {
    use SpanKind::*;
    let (g, req) = graph_of(vec![
        s("frontend", "GET /cart", Client, 30.0).ids(1, 10, 0),
        s("cart", "GET /cart", Server, 20.0).ids(1, 11, 10),
        // Server first, then its client; the server fails, so the edge is a failed request.
        s("cart", "GET /price", Server, 3.0).ids(2, 21, 20).status(StatusCode::Error),
        s("frontend", "GET /price", Client, 5.0).ids(2, 20, 0),
        // Another trace of the same edge, client side failed.
        s("frontend", "GET /cart", Client, 1.0).ids(3, 30, 0).status(StatusCode::Error),
        s("cart", "GET /cart", Server, 1.0).ids(3, 31, 30),
        // Same span ids in another trace do not pair with the first ones.
        s("cart", "GET /cart", Server, 1.0).ids(4, 11, 10),
    ]);
    assert_eq!(edge(&req, servicegraph::REQUEST_TOTAL, "frontend", "cart", ""), 3);
    assert_eq!(edge(&req, servicegraph::REQUEST_FAILED_TOTAL, "frontend", "cart", ""), 2);
    assert_eq!(g.stats().paired, 3);
    assert_eq!(g.pending_len(), 1, "the unpaired server span waits");
    let rm = &req.resource_metrics[0];
    assert!(rm.resource.as_ref().unwrap().attributes.is_empty());
    assert_eq!(rm.scope_metrics[0].scope.as_ref().unwrap().name, "obsbox.servicegraph");

    let server = hist_points(&req, servicegraph::SERVER_SECONDS);
    assert_eq!(server[0].explicit_bounds, servicegraph::LATENCY_BOUNDS_S.to_vec());
    // Server durations 20 ms, 3 ms, 1 ms: buckets (0.002, 0.004] and (0.01, 0.05] and (0, 0.002].
    let mut want = vec![0u64; 17];
    (want[0], want[1], want[5]) = (1, 1, 1);
    assert_eq!(server[0].bucket_counts, want);
    let client = hist_points(&req, servicegraph::CLIENT_SECONDS);
    // Client durations 30 ms, 5 ms, 1 ms.
    let mut want = vec![0u64; 17];
    (want[0], want[2], want[5]) = (1, 1, 1);
    assert_eq!(client[0].bucket_counts, want);
    assert!((client[0].sum.unwrap() - 0.036).abs() < 1e-9);
    assert_eq!(metrics(&req, servicegraph::SERVER_SECONDS)[0].unit, "s");
}

#[test]
fn producer_and_consumer_pair_by_parent_or_link_as_messaging_edges() {
    use SpanKind::*;
    let (_, req) = graph_of(vec![
        s("checkout", "orders publish", Producer, 2.0).ids(1, 10, 0),
        s("shipping", "orders process", Consumer, 50.0).ids(1, 11, 10),
        // A consumer in its own trace, linked to the producer.
        s("checkout", "orders publish", Producer, 2.0).ids(2, 20, 0),
        s("billing", "orders process", Consumer, 5.0).ids(3, 30, 0).link(2, 20).status(StatusCode::Error),
    ]);
    assert_eq!(edge(&req, servicegraph::REQUEST_TOTAL, "checkout", "shipping", "messaging_system"), 1);
    assert_eq!(edge(&req, servicegraph::REQUEST_TOTAL, "checkout", "billing", "messaging_system"), 1);
    assert_eq!(edge(&req, servicegraph::REQUEST_FAILED_TOTAL, "checkout", "billing", "messaging_system"), 1);
    assert_eq!(edge(&req, servicegraph::REQUEST_FAILED_TOTAL, "checkout", "shipping", "messaging_system"), 0);
}

#[test]
fn client_spans_with_a_database_system_are_database_edges() {
    use SpanKind::*;
    let (g, req) = graph_of(vec![
        s("cart", "SELECT", Client, 4.0).ids(1, 10, 0).attr("db.system", "postgresql"),
        s("cart", "SELECT", Client, 4.0).ids(1, 11, 0).attr("db.system.name", "postgresql").status(StatusCode::Error),
        s("cart", "GET", Client, 1.0).ids(1, 12, 0).attr("db.system", "redis").attr("db.namespace", "0"),
        // An internal span with db.system is no edge.
        s("cart", "query", Internal, 1.0).ids(1, 13, 0).attr("db.system", "postgresql"),
    ]);
    assert_eq!(edge(&req, servicegraph::REQUEST_TOTAL, "cart", "postgresql", "database"), 2);
    assert_eq!(edge(&req, servicegraph::REQUEST_FAILED_TOTAL, "cart", "postgresql", "database"), 1);
    assert_eq!(edge(&req, servicegraph::REQUEST_TOTAL, "cart", "redis", "database"), 1);
    assert_eq!(g.stats().database, 3);
    assert_eq!(g.pending_len(), 0, "database edges do not wait");
    let server = hist_points(&req, servicegraph::SERVER_SECONDS);
    let p = find(&server, |p| &p.attributes, &[("server", "postgresql")]);
    assert_eq!(p.count, 2, "the client span's duration stands for the server's");
}

#[test]
fn unpaired_sides_expire_after_the_wait_and_a_full_store_drops() {
    use SpanKind::*;
    let mut g = ServiceGraph::new(Duration::from_secs(2), 2, 100);
    let t = Instant::now();
    let f = facts(vec![
        s("a", "x", Client, 1.0).ids(1, 10, 0),
        s("b", "y", Server, 1.0).ids(2, 21, 20),
        s("c", "z", Server, 1.0).ids(3, 31, 30),
        s("b", "root", Server, 1.0).ids(4, 41, 0), // a root server span waits for nothing
    ]);
    for f in &f {
        g.record(f, t, T0);
    }
    assert_eq!((g.pending_len(), g.stats().dropped), (2, 1));
    g.expire(t + Duration::from_millis(1999));
    assert_eq!(g.pending_len(), 2);
    // The partner of the first client span arrives in time.
    g.record(&facts(vec![s("b", "x", Server, 1.0).ids(1, 11, 10)])[0], t + Duration::from_secs(1), T0);
    g.expire(t + Duration::from_secs(2));
    let stats = g.stats();
    assert_eq!((stats.paired, stats.expired, stats.dropped), (1, 1, 1));
    assert_eq!(g.pending_len(), 0);
    // The late client of the expired server span finds nothing and waits itself.
    g.record(&facts(vec![s("a", "y", Client, 1.0).ids(2, 20, 0)])[0], t + Duration::from_secs(3), T0);
    assert_eq!((g.pending_len(), g.stats().paired), (1, 1));
    let req = ExportMetricsServiceRequest { resource_metrics: g.emit(T0).into_iter().collect() };
    assert_eq!(sum_points(&req, servicegraph::REQUEST_TOTAL).len(), 1);
}

#[test]
fn edges_beyond_the_series_limit_go_to_the_overflow_series() {
    use SpanKind::*;
    let mut g = ServiceGraph::new(Duration::from_secs(2), 100, 1);
    let t = Instant::now();
    for f in facts(vec![
        s("a", "x", Client, 1.0).ids(1, 10, 0),
        s("b", "x", Server, 1.0).ids(1, 11, 10),
        s("a", "x", Client, 1.0).ids(2, 10, 0),
        s("c", "x", Server, 1.0).ids(2, 11, 10),
    ]) {
        g.record(&f, t, T0);
    }
    let req = ExportMetricsServiceRequest { resource_metrics: g.emit(T0).into_iter().collect() };
    let total = sum_points(&req, servicegraph::REQUEST_TOTAL);
    assert_eq!(total.len(), 2);
    assert_eq!(int(find(&total, |p| &p.attributes, &[("otel.metric.overflow", "true")])), 1);
    assert_eq!(g.stats().overflow, 1);
}

#[test]
fn spans_without_service_name_are_unknown_service() {
    let mut req = request(vec![s("x", "op", SpanKind::Server, 1.0)]);
    req.resource_spans[0].resource = None;
    assert_eq!(&*extract(&req)[0].service, facts::UNKNOWN_SERVICE);
}

/// Collects what the derive thread writes.
#[derive(Default)]
struct Capture(std::sync::Mutex<Vec<ExportMetricsServiceRequest>>);

impl Writer for Capture {
    fn write(&self, batch: Batch) -> obsbox_storage::WriteFuture {
        if let Batch::Metrics(m) = batch {
            self.0.lock().unwrap().push(m);
        }
        Box::pin(async { Ok(obsbox_storage::WriteReceipt { seq: 0 }) })
    }
}

#[test]
fn the_derive_thread_writes_every_interval_and_at_stop() {
    let capture = Arc::new(Capture::default());
    let registry = Registry::new();
    let config = DeriveConfig { interval: Duration::from_secs(1), ..DeriveConfig::default() };
    let d = Deriver::start(&config, capture.clone(), &registry, None).unwrap();
    d.submit(facts(vec![
        s("frontend", "GET", SpanKind::Client, 3.0).ids(1, 10, 0),
        s("cart", "GET", SpanKind::Server, 2.0).ids(1, 11, 10),
    ]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while capture.0.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "nothing written after an interval");
        std::thread::sleep(Duration::from_millis(50));
    }
    d.submit(facts(vec![s("cart", "GET", SpanKind::Server, 2.0).ids(2, 11, 10)]));
    d.stop();
    d.stop();
    let written = capture.0.lock().unwrap();
    let last = written.last().unwrap();
    assert_eq!(edge(last, servicegraph::REQUEST_TOTAL, "frontend", "cart", ""), 1);
    let calls = sum_points(last, spanmetrics::CALLS);
    assert_eq!(int(find(&calls, |p| &p.attributes, &[("service.name", "cart")])), 2, "queued spans derived at stop");
    let text =
        String::from_utf8(prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap().into()).unwrap();
    assert!(text.contains("obsbox_derive_spans_total 3"), "{text}");
    assert!(text.contains("obsbox_derive_edges_total{outcome=\"paired\"} 1"), "{text}");
    assert!(text.contains("obsbox_derive_writes_total{outcome=\"ok\"}"), "{text}");
}

#[test]
fn a_full_queue_drops_batches_and_counts_them() {
    let capture = Arc::new(Capture::default());
    let registry = Registry::new();
    let config = DeriveConfig { queue_spans: 2, ..DeriveConfig::default() };
    let d = Deriver::start(&config, capture.clone(), &registry, None).unwrap();
    d.submit(facts(vec![
        s("a", "x", SpanKind::Server, 1.0),
        s("a", "x", SpanKind::Server, 1.0),
        s("a", "x", SpanKind::Server, 1.0),
    ]));
    assert_eq!(d.inner.telemetry.dropped_batches.get(), 1);
    assert_eq!(d.inner.telemetry.dropped_spans.get(), 3);
    d.stop();
    assert!(capture.0.lock().unwrap().is_empty());
}

#[test]
fn config_values_are_checked() {
    DeriveConfig::default().validate().unwrap();
    let bad = |c: DeriveConfig| c.validate().unwrap_err().to_string();
    assert!(bad(DeriveConfig { interval: Duration::from_millis(100), ..Default::default() }).contains("interval"));
    assert!(bad(DeriveConfig { edge_wait: Duration::ZERO, ..Default::default() }).contains("edge_wait"));
    assert!(bad(DeriveConfig { max_series: 0, ..Default::default() }).contains("max_series"));
}
