//! [`FederatedReader`]: one [`Reader`] over several disjoint ones, by [`crate::call::run`] on each
//! and [`crate::call::merge`] of their parts (the merge contract is in [`crate::call`]).

use std::sync::Arc;

use crate::StoreError;
use crate::api::*;
use crate::call::{self, Answer, ReadCall, ReadResult};

/// A [`Reader`] over disjoint sources (each item in exactly one of them), answering as one store
/// holding all their data would. Sources are asked in parallel, one thread each; the first
/// failing source (in list order) fails the call. List older sources first: the order breaks
/// ties (see [`crate::call`]).
pub struct FederatedReader {
    sources: Vec<Arc<dyn Reader>>,
}

impl FederatedReader {
    /// A reader over `sources`, older first.
    pub fn new(sources: Vec<Arc<dyn Reader>>) -> Self {
        FederatedReader { sources }
    }

    /// The sources, in order.
    pub fn sources(&self) -> &[Arc<dyn Reader>] {
        &self.sources
    }
}

impl Answer for FederatedReader {
    /// Runs `call` on every source and merges the parts.
    fn answer(&self, call: &ReadCall) -> Result<ReadResult, StoreError> {
        let parts: Vec<Result<ReadResult, StoreError>> = match self.sources.as_slice() {
            [] => Vec::new(),
            [one] => vec![call::run(&**one, call)],
            many => std::thread::scope(|scope| {
                let running: Vec<_> = many.iter().map(|s| scope.spawn(move || call::run(&**s, call))).collect();
                running
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(StoreError::Index("a read source panicked".into()))))
                    .collect()
            }),
        };
        call::merge(call, parts.into_iter().collect::<Result<Vec<_>, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    use super::*;
    use crate::MemStore;
    use crate::prometheus::ViewOptions;

    /// How [`Spread`] distributes what it is given.
    #[derive(Clone, Copy)]
    enum Mode {
        /// Whole batches, round-robin.
        Batches,
        /// Every span, record and metric point of a batch round-robin on its own.
        Items,
    }

    /// A store whose writes go to several `MemStore`s and whose reads go through a
    /// [`FederatedReader`] over them.
    struct Spread {
        sources: Vec<Arc<MemStore>>,
        reader: FederatedReader,
        next: AtomicUsize,
        seq: AtomicU64,
        mode: Mode,
    }

    impl Spread {
        fn new(n: usize, mode: Mode) -> Spread {
            let sources: Vec<Arc<MemStore>> = (0..n).map(|_| Arc::new(MemStore::new())).collect();
            let readers = sources.iter().map(|s| s.clone() as Arc<dyn Reader>).collect();
            Spread {
                sources,
                reader: FederatedReader::new(readers),
                next: AtomicUsize::new(0),
                seq: AtomicU64::new(0),
                mode,
            }
        }

        /// Which source each of `items` items goes to.
        fn targets(&self, items: usize) -> Vec<usize> {
            let n = self.sources.len();
            match self.mode {
                Mode::Batches => vec![self.next.fetch_add(1, Ordering::SeqCst) % n; items],
                Mode::Items => {
                    let base = self.next.fetch_add(items, Ordering::SeqCst);
                    (0..items).map(|i| (base + i) % n).collect()
                }
            }
        }
    }

    /// Keeps the items of `list` whose running number (counted in `k`) goes to `source`.
    fn keep<T>(list: &mut Vec<T>, k: &mut usize, targets: &[usize], source: usize) {
        list.retain(|_| {
            *k += 1;
            targets[*k - 1] == source
        });
    }

    fn split(batch: &Batch, targets: &[usize], source: usize) -> Batch {
        let mut b = batch.clone();
        let mut k = 0;
        match &mut b {
            Batch::Traces(r) => {
                for rs in &mut r.resource_spans {
                    for ss in &mut rs.scope_spans {
                        keep(&mut ss.spans, &mut k, targets, source);
                    }
                }
            }
            Batch::Logs(r) => {
                for rl in &mut r.resource_logs {
                    for sl in &mut rl.scope_logs {
                        keep(&mut sl.log_records, &mut k, targets, source);
                    }
                }
            }
            Batch::Metrics(r) => {
                for m in
                    r.resource_metrics.iter_mut().flat_map(|rm| &mut rm.scope_metrics).flat_map(|sm| &mut sm.metrics)
                {
                    match &mut m.data {
                        Some(Data::Gauge(g)) => keep(&mut g.data_points, &mut k, targets, source),
                        Some(Data::Sum(s)) => keep(&mut s.data_points, &mut k, targets, source),
                        Some(Data::Histogram(h)) => keep(&mut h.data_points, &mut k, targets, source),
                        Some(Data::ExponentialHistogram(h)) => keep(&mut h.data_points, &mut k, targets, source),
                        Some(Data::Summary(s)) => keep(&mut s.data_points, &mut k, targets, source),
                        None => {}
                    }
                }
            }
        }
        b
    }

    impl Writer for Spread {
        fn write(&self, batch: Batch) -> WriteFuture {
            let targets = self.targets(batch.item_count());
            for (i, source) in self.sources.iter().enumerate() {
                if targets.contains(&i) {
                    let part = split(&batch, &targets, i);
                    futures::executor::block_on(source.write(part)).expect("memory write");
                }
            }
            let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(futures::future::ready(Ok(WriteReceipt { seq })))
        }
    }

    impl Answer for Spread {
        fn answer(&self, call: &ReadCall) -> Result<ReadResult, StoreError> {
            self.reader.answer(call)
        }
    }

    #[test]
    fn passes_the_store_contract_with_batches_round_robin_over_three_stores() {
        crate::testsuite::run_all(&|| Spread::new(3, Mode::Batches));
    }

    #[test]
    fn passes_the_store_contract_with_every_item_round_robin_over_three_stores() {
        crate::testsuite::run_all(&|| Spread::new(3, Mode::Items));
    }

    #[test]
    fn the_spread_store_really_spreads() {
        let spread = Spread::new(3, Mode::Items);
        let spans: Vec<Span> = (0..6).map(|n| crate::testsuite::full_span(1, n, None)).collect();
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans { scope: None, spans, schema_url: String::new() }],
                schema_url: String::new(),
            }],
        };
        futures::executor::block_on(spread.write(Batch::Traces(req))).unwrap();
        for s in &spread.sources {
            assert_eq!(s.trace(&crate::testsuite::full_span(1, 0, None).trace_id).unwrap().len(), 2);
        }
        assert_eq!(spread.trace(&crate::testsuite::full_span(1, 0, None).trace_id).unwrap().len(), 6);
    }

    /// A small deterministic generator (64-bit LCG, high bits).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    fn resource(service: u64) -> Resource {
        Resource {
            attributes: vec![kv("service.name", Value::StringValue(format!("svc-{service}")))],
            ..Default::default()
        }
    }

    fn scope() -> InstrumentationScope {
        InstrumentationScope { name: "fed".into(), version: "1".into(), ..Default::default() }
    }

    const T0: u64 = 1_700_000_000_000_000_000;

    /// Random spans, logs and metric points, one item per batch, with distinct span starts and
    /// record times (equal times have no defined order in a store).
    fn random_batches(seed: u64) -> Vec<Batch> {
        let mut rng = Rng(seed);
        let mut out = Vec::new();
        let mut starts: Vec<u64> = (0..400).map(|i| T0 + i * 1_000_003).collect();
        for i in (1..starts.len()).rev() {
            starts.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for (i, start) in starts.into_iter().enumerate() {
            let trace = rng.below(40) as u8;
            let mut span = crate::testsuite::full_span(trace, i as u8, None);
            span.span_id = (i as u64 + 1).to_be_bytes().to_vec();
            span.start_time_unix_nano = start;
            span.end_time_unix_nano = start + rng.below(5_000_000);
            span.name = format!("op-{}", rng.below(5));
            span.kind = rng.below(3) as i32 + 1;
            span.status = Some(Status { code: rng.below(3) as i32, message: String::new() });
            span.attributes = vec![
                kv("k", Value::IntValue(rng.below(6) as i64)),
                kv("s", Value::StringValue(format!("v{}", rng.below(4)))),
                kv("f", Value::DoubleValue(rng.below(3) as f64 / 2.0)),
            ];
            out.push(Batch::Traces(ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource(rng.below(3))),
                    scope_spans: vec![ScopeSpans { scope: Some(scope()), spans: vec![span], schema_url: "s".into() }],
                    schema_url: "r".into(),
                }],
            }));
        }
        let words = ["alpha", "beta", "gamma", "delta"];
        for i in 0..300u64 {
            let record = LogRecord {
                time_unix_nano: T0 + (i * 7919 % 300) * 999_983,
                observed_time_unix_nano: T0,
                severity_number: rng.below(24) as i32 + 1,
                severity_text: ["INFO", "WARN", "ERROR"][rng.below(3) as usize].into(),
                body: Some(AnyValue {
                    value: Some(Value::StringValue(format!(
                        "{} {}",
                        words[rng.below(4) as usize],
                        words[rng.below(4) as usize]
                    ))),
                }),
                attributes: vec![kv("user", Value::StringValue(format!("u{}", rng.below(5))))],
                trace_id: vec![rng.below(10) as u8; 16],
                span_id: (i + 1).to_be_bytes().to_vec(),
                ..Default::default()
            };
            out.push(Batch::Logs(ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: Some(resource(rng.below(3))),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(scope()),
                        log_records: vec![record],
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            }));
        }
        for i in 0..200u64 {
            let point = NumberDataPoint {
                attributes: vec![kv("route", Value::StringValue(format!("/r{}", rng.below(3))))],
                start_time_unix_nano: T0,
                time_unix_nano: T0 + i * 1_000_000 + rng.below(1000),
                value: Some(number_data_point::Value::AsDouble(rng.below(100) as f64)),
                ..Default::default()
            };
            let (name, data) = if rng.below(2) == 0 {
                ("temp", Data::Gauge(Gauge { data_points: vec![point] }))
            } else {
                // Delta: the view accumulates the whole series, wherever its points are.
                ("hits", Data::Sum(Sum { data_points: vec![point], aggregation_temporality: 1, is_monotonic: true }))
            };
            let metric = Metric {
                name: name.into(),
                description: "d".into(),
                unit: "1".into(),
                data: Some(data),
                ..Default::default()
            };
            out.push(Batch::Metrics(ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    resource: Some(resource(rng.below(2))),
                    scope_metrics: vec![ScopeMetrics {
                        scope: Some(scope()),
                        metrics: vec![metric],
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            }));
        }
        out
    }

    #[test]
    fn three_random_disjoint_stores_answer_as_one() {
        for seed in [1, 2, 3] {
            let one = MemStore::new();
            let parts: Vec<Arc<MemStore>> = (0..3).map(|_| Arc::new(MemStore::new())).collect();
            let mut rng = Rng(seed * 7);
            for batch in random_batches(seed) {
                futures::executor::block_on(one.write(batch.clone())).unwrap();
                futures::executor::block_on(parts[rng.below(3) as usize].write(batch)).unwrap();
            }
            let fed = FederatedReader::new(parts.iter().map(|p| p.clone() as Arc<dyn Reader>).collect());
            let mid = TimeRange { start_ns: T0 + 50_000_000, end_ns: T0 + 250_000_000 };
            let span_predicates = [
                SpanPredicate::All,
                SpanPredicate::Service("svc-1".into()),
                SpanPredicate::StatusCode(2),
                SpanPredicate::And(vec![
                    SpanPredicate::Name("op-1".into()),
                    SpanPredicate::Attribute { scope: AttrScope::Item, key: "k".into(), value: AttrValue::Int(3) },
                ]),
            ];
            for predicate in &span_predicates {
                for time in [TimeRange::ALL, mid] {
                    for limit in [0, 1, 7, 40, 1000] {
                        let q = SpanQuery { predicate: predicate.clone(), time, limit };
                        assert_eq!(fed.find_spans(&q).unwrap(), one.find_spans(&q).unwrap(), "{q:?}");
                        assert_eq!(fed.find_trace_hits(&q).unwrap(), one.find_trace_hits(&q).unwrap(), "{q:?}");
                        assert_eq!(fed.find_trace_ids(&q).unwrap(), one.find_trace_ids(&q).unwrap(), "{q:?}");
                    }
                    for bucket in [1, 10_000_000, 1 << 40] {
                        assert_eq!(
                            fed.span_histogram(predicate, time, bucket).unwrap(),
                            one.span_histogram(predicate, time, bucket).unwrap()
                        );
                    }
                }
            }
            for trace in 0..40u8 {
                let id = crate::testsuite::full_span(trace, 0, None).trace_id;
                let mut got = fed.trace(&id).unwrap();
                let mut want = one.trace(&id).unwrap();
                // Write order across stores is not defined: the same spans, each store's in order.
                got.sort_by_key(|s| s.span.span_id.clone());
                want.sort_by_key(|s| s.span.span_id.clone());
                assert_eq!(got, want, "trace {trace}");
            }
            let log_predicates = [
                LogPredicate::All,
                LogPredicate::Text("alpha".into()),
                LogPredicate::Or(vec![LogPredicate::MinSeverity(20), LogPredicate::Service("svc-2".into())]),
            ];
            for predicate in &log_predicates {
                for time in [TimeRange::ALL, mid] {
                    for limit in [0, 1, 13, 1000] {
                        let q = LogQuery { predicate: predicate.clone(), time, limit };
                        assert_eq!(fed.find_logs(&q).unwrap(), one.find_logs(&q).unwrap(), "{q:?}");
                    }
                    assert_eq!(
                        fed.log_histogram(predicate, time, 30_000_000).unwrap(),
                        one.log_histogram(predicate, time, 30_000_000).unwrap()
                    );
                }
            }
            for time in [TimeRange::ALL, mid] {
                assert_eq!(fed.operations(time).unwrap(), one.operations(time).unwrap());
                for field in [LogField::Service, LogField::SeverityText] {
                    assert_eq!(fed.log_field_values(field, time).unwrap(), one.log_field_values(field, time).unwrap());
                }
                for signal in [Signal::Traces, Signal::Logs] {
                    for scope in [AttrScope::Item, AttrScope::Resource] {
                        assert_eq!(
                            fed.attribute_keys(signal, scope, time).unwrap(),
                            one.attribute_keys(signal, scope, time).unwrap()
                        );
                    }
                }
                for (signal, key) in
                    [(Signal::Traces, "k"), (Signal::Traces, "s"), (Signal::Traces, "f"), (Signal::Logs, "user")]
                {
                    for limit in [0, 1, 2, 3, 100] {
                        assert_eq!(
                            fed.attribute_values(signal, AttrScope::Item, key, time, limit).unwrap(),
                            one.attribute_values(signal, AttrScope::Item, key, time, limit).unwrap(),
                            "{key} {limit}"
                        );
                    }
                }
            }
            let m = |name: &str, op: MatchOp, value: &str| LabelMatcher { name: name.into(), op, value: value.into() };
            let opts = ViewOptions::default();
            for matchers in [vec![], vec![m("__name__", MatchOp::Eq, "hits")], vec![m("route", MatchOp::Re, "/r[01]")]]
            {
                for time in [TimeRange::ALL, TimeRange { start_ns: T0 + 20_000_000, end_ns: T0 + 90_000_000 }] {
                    let q = MetricQuery { matchers: matchers.clone(), time };
                    assert_eq!(fed.find_metrics(&q).unwrap(), one.find_metrics(&q).unwrap(), "{q:?}");
                    for labels in [vec![], vec![m("route", MatchOp::Eq, "/r2")], vec![m("job", MatchOp::Eq, "svc-1")]] {
                        let got = fed.find_metrics_view(&q, &labels, &opts).unwrap();
                        let want = one.find_metrics_view(&q, &labels, &opts).unwrap();
                        assert_eq!(format!("{got:?}"), format!("{want:?}"), "{q:?} {labels:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_bad_query_is_an_invalid_query_through_the_federation() {
        let spread = Spread::new(3, Mode::Batches);
        for batch in random_batches(5).into_iter().step_by(50) {
            futures::executor::block_on(spread.write(batch)).unwrap();
        }
        let fed = &spread.reader;
        let re = SpanPredicate::AttributeRegex { scope: AttrScope::Item, key: "k".into(), regex: "(".into() };
        let bad = fed.find_spans(&SpanQuery { predicate: re, time: TimeRange::ALL, limit: 1 });
        assert!(matches!(bad, Err(StoreError::InvalidQuery(_))), "{bad:?}");
        let labels = [LabelMatcher { name: "route".into(), op: MatchOp::Re, value: "(".into() }];
        let all = MetricQuery { matchers: vec![], time: TimeRange::ALL };
        let bad = fed.find_metrics_view(&all, &labels, &ViewOptions::default());
        assert!(matches!(bad, Err(StoreError::InvalidQuery(_))), "{bad:?}");
        assert!(matches!(fed.span_histogram(&SpanPredicate::All, TimeRange::ALL, 0), Err(StoreError::InvalidQuery(_))));
    }
}
