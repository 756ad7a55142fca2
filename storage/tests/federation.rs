//! A searcher's read, without the object store: an ingester's sealed segments are copied away
//! (uploaded and downloaded), opened read-only and released from the ingester, which keeps
//! writing. Every call run on both parts, each part sent through JSON as over the internal read
//! API, and merged gives what one store holding all the data answers, traces, series and counts
//! spread over both parts included.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use obsbox_storage::call::{ReadCall, ReadResult, merge, run};
use obsbox_storage::prometheus::{ViewOptions, prometheus_view};
use obsbox_storage::testsuite::full_span;
use obsbox_storage::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};

const MS: u64 = 1_000_000;

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn resource(service: u64) -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv("service.name", Value::StringValue(format!("svc-{service}")))],
        ..Default::default()
    })
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope { name: "fed".into(), version: "1".into(), ..Default::default() })
}

/// Phase `phase` of the data: spans of traces shared between phases, log records, and points
/// of the same few series (a gauge and a delta sum) in every phase. Every time is distinct.
fn phase(base: u64, phase: u64) -> Vec<Batch> {
    let mut out = Vec::new();
    for service in 0..3u64 {
        let spans = (0..12u64)
            .map(|i| {
                let n = phase * 36 + service * 12 + i;
                let mut span = full_span((n % 9) as u8, n as u8, None);
                span.start_time_unix_nano = base + (n * 7919 % 997) * MS + n;
                span.end_time_unix_nano = span.start_time_unix_nano + (n % 5) * MS;
                span.name = format!("op-{}", n % 4);
                span.status = Some(Status { code: (n % 3) as i32, message: String::new() });
                span.attributes =
                    vec![kv("k", Value::IntValue((n % 6) as i64)), kv("even", Value::BoolValue(n.is_multiple_of(2)))];
                span
            })
            .collect();
        out.push(Batch::Traces(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource(service),
                scope_spans: vec![ScopeSpans { scope: scope(), spans, schema_url: "s".into() }],
                schema_url: "r".into(),
            }],
        }));
        let log_records = (0..10u64)
            .map(|i| {
                let n = phase * 30 + service * 10 + i;
                LogRecord {
                    time_unix_nano: base + (n * 104_729 % 991) * MS + n,
                    observed_time_unix_nano: base,
                    severity_number: (n % 24) as i32 + 1,
                    severity_text: ["INFO", "WARN", "ERROR"][(n % 3) as usize].into(),
                    body: Some(AnyValue {
                        value: Some(Value::StringValue(format!("{} order {n}", ["paid", "failed"][(n % 2) as usize]))),
                    }),
                    attributes: vec![kv("user", Value::StringValue(format!("u{}", n % 4)))],
                    trace_id: full_span((n % 9) as u8, 0, None).trace_id,
                    span_id: n.to_be_bytes().to_vec(),
                    ..Default::default()
                }
            })
            .collect();
        out.push(Batch::Logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource(service),
                scope_logs: vec![ScopeLogs { scope: scope(), log_records, schema_url: String::new() }],
                schema_url: String::new(),
            }],
        }));
    }
    let point = |route: u64, i: u64| NumberDataPoint {
        attributes: vec![kv("route", Value::StringValue(format!("/r{route}")))],
        start_time_unix_nano: base,
        time_unix_nano: base + (phase * 10 + i) * 10 * MS + route,
        value: Some(number_data_point::Value::AsDouble((phase * 10 + i) as f64)),
        ..Default::default()
    };
    let points = |f: &dyn Fn(u64, u64) -> NumberDataPoint| {
        (0..10).flat_map(|i| (0..2).map(move |r| (r, i))).map(|(r, i)| f(r, i)).collect()
    };
    out.push(Batch::Metrics(ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(0),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(),
                metrics: vec![
                    Metric {
                        name: "temp".into(),
                        unit: "Cel".into(),
                        data: Some(Data::Gauge(Gauge { data_points: points(&point) })),
                        ..Default::default()
                    },
                    Metric {
                        name: "hits".into(),
                        unit: "1".into(),
                        data: Some(Data::Sum(Sum {
                            data_points: points(&point),
                            aggregation_temporality: 1,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    },
                ],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }));
    out
}

fn open(dir: &Path) -> DiskStore {
    DiskStore::open(StoreConfig {
        data_dir: dir.to_path_buf(),
        commit_interval: Duration::from_millis(50),
        index_memory_bytes: 32 << 20,
        ..StoreConfig::default()
    })
    .expect("store opens")
}

/// Waits until everything written is visible.
/// Waits until every span and log record of the three phases is visible. (No pending items is
/// not enough: the store counts items as done once indexed, and they become visible at the next
/// commit; under load the calls below raced that commit.)
fn settle(store: &DiskStore) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let total = |h: Vec<(u64, u64)>| h.into_iter().map(|(_, n)| n).sum::<u64>();
    loop {
        let spans = total(store.span_histogram(&SpanPredicate::All, TimeRange::ALL, u64::MAX / 2).unwrap());
        let logs = total(store.log_histogram(&LogPredicate::All, TimeRange::ALL, u64::MAX / 2).unwrap());
        if (spans, logs) == (3 * 36, 3 * 30) {
            return;
        }
        assert!(Instant::now() < deadline, "writes not visible: {spans} spans, {logs} log records");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Copies a sealed segment's files elsewhere (upload, download) and opens the copy.
fn copy_and_open(seg: &SealedSegment, to: &Path) -> Arc<OpenSegment> {
    let target = match seg.signal {
        Signal::Metrics => {
            std::fs::create_dir_all(to).unwrap();
            let target = to.join(&seg.files[0].0);
            std::fs::copy(&seg.path, &target).unwrap();
            target
        }
        _ => {
            let target = to.join(format!("{}-{}", seg.signal.as_str(), seg.id));
            std::fs::create_dir_all(&target).unwrap();
            for (name, _) in &seg.files {
                std::fs::copy(seg.path.join(name), target.join(name)).unwrap();
            }
            target
        }
    };
    OpenSegment::open(seg.signal, &target, seg.min_time_ns, seg.max_time_ns, seg.items).expect("opens")
}

/// The part as a searcher gets it over the internal read API: through JSON.
fn over_the_wire(part: ReadResult) -> ReadResult {
    serde_json::from_slice(&serde_json::to_vec(&part).unwrap()).unwrap()
}

fn calls() -> Vec<ReadCall> {
    let time = TimeRange::ALL;
    let spans = |predicate: SpanPredicate, limit| SpanQuery { predicate, time, limit };
    let logs = |predicate: LogPredicate, limit| LogQuery { predicate, time, limit };
    let mut calls = Vec::new();
    for trace in 0..9 {
        calls.push(ReadCall::Trace { trace_id: full_span(trace, 0, None).trace_id });
    }
    // Several traces at once, one unknown, one twice.
    let ids = [3u8, 0, 200, 8, 3].map(|t| full_span(t, 0, None).trace_id);
    calls.push(ReadCall::Traces { trace_ids: ids.to_vec() });
    for limit in [1, 5, 17, 500] {
        for p in [
            SpanPredicate::All,
            SpanPredicate::Service("svc-1".into()),
            SpanPredicate::And(vec![SpanPredicate::StatusCode(2), SpanPredicate::Name("op-1".into())]),
        ] {
            calls.push(ReadCall::FindSpans(spans(p.clone(), limit)));
            calls.push(ReadCall::FindTraceIds(spans(p, limit)));
        }
        for p in [LogPredicate::All, LogPredicate::Text("failed".into()), LogPredicate::MinSeverity(12)] {
            calls.push(ReadCall::FindLogs(logs(p, limit)));
        }
    }
    let m = |name: &str, op, value: &str| LabelMatcher { name: name.into(), op, value: value.into() };
    for matchers in [vec![], vec![m("__name__", MatchOp::Eq, "hits")]] {
        let query = MetricQuery { matchers, time };
        calls.push(ReadCall::FindMetrics(query.clone()));
        for labels in [vec![], vec![m("route", MatchOp::Eq, "/r1")]] {
            calls.push(ReadCall::FindMetricsView { query: query.clone(), labels });
        }
    }
    calls.push(ReadCall::Operations { time });
    calls.push(ReadCall::LogFieldValues { field: LogField::SeverityText, time });
    calls.push(ReadCall::LogFieldValues { field: LogField::Service, time });
    for signal in [Signal::Traces, Signal::Logs] {
        calls.push(ReadCall::AttributeKeys { signal, scope: AttrScope::Item, time });
        calls.push(ReadCall::AttributeKeys { signal, scope: AttrScope::Resource, time });
    }
    for (signal, key) in [(Signal::Traces, "k"), (Signal::Traces, "even"), (Signal::Logs, "user")] {
        for limit in [1, 3, 100] {
            calls.push(ReadCall::AttributeValues { signal, scope: AttrScope::Item, key: key.into(), time, limit });
        }
    }
    for bucket_ns in [MS, 100 * MS] {
        calls.push(ReadCall::SpanHistogram { predicate: SpanPredicate::StatusCode(1), time, bucket_ns });
        calls.push(ReadCall::LogHistogram { predicate: LogPredicate::Text("paid".into()), time, bucket_ns });
    }
    calls
}

#[test]
fn sealed_segments_read_back_and_the_ingesters_rest_answer_as_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let base = (now - 3600) * 1_000_000_000;
    let ingester = open(&dir.path().join("ingester"));
    let reference = open(&dir.path().join("reference"));
    for p in 0..3 {
        for batch in phase(base, p) {
            futures::executor::block_on(ingester.write(batch.clone())).unwrap();
            futures::executor::block_on(reference.write(batch)).unwrap();
        }
        if p < 2 {
            ingester.seal_now().unwrap();
        }
    }
    settle(&ingester);
    settle(&reference);
    // Upload, download, release: the sealed phases now live only in the searcher's copies.
    let mut opened = Vec::new();
    for signal in Signal::ALL {
        let sealed = ingester.sealed_segments(signal);
        assert!(!sealed.is_empty(), "{signal:?}: something sealed");
        for seg in sealed {
            opened.push(copy_and_open(&seg, &dir.path().join("download")));
            ingester.release_segment(signal, seg.id).unwrap();
        }
        assert!(ingester.sealed_segments(signal).is_empty());
    }
    let searcher = SegmentSet::new(opened);
    let sources: [&dyn Reader; 2] = [&searcher, &ingester];

    let opts = ViewOptions::default();
    let mut items = 0;
    for call in calls() {
        let parts: Vec<ReadResult> = sources.iter().map(|s| over_the_wire(run(*s, &call).unwrap())).collect();
        let part_sizes: Vec<usize> = parts.iter().map(size).collect();
        let got = merge(&call, parts).unwrap();
        let want = merge(&call, vec![run(&reference, &call).unwrap()]).unwrap();
        if let ReadCall::FindMetricsView { query, labels } = &call {
            // The view of the merged series is the store's own view.
            let got = prometheus_view(&got.clone().into_metrics().unwrap(), &opts);
            let want = reference.find_metrics_view(query, labels, &opts).unwrap();
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{call:?}");
        }
        items += size(&got);
        assert_eq!(got, want, "{call:?} (parts of {part_sizes:?})");
    }
    assert!(items > 1000, "the calls found data: {items}");
    // A trace with spans on both sides.
    let t = full_span(4, 0, None).trace_id;
    let in_both =
        [run(&searcher, &ReadCall::Trace { trace_id: t.clone() }), run(&ingester, &ReadCall::Trace { trace_id: t })]
            .map(|r| size(&r.unwrap()));
    assert!(in_both[0] > 0 && in_both[1] > 0, "{in_both:?}");
    ingester.close();
    reference.close();
}

fn size(r: &ReadResult) -> usize {
    match r {
        ReadResult::Spans(v) => v.len(),
        ReadResult::SpanLists(v) => v.iter().map(|l| l.0.len()).sum(),
        ReadResult::Logs(v) => v.len(),
        ReadResult::Metrics(d) => d
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(metric_point_count)
            .sum(),
        ReadResult::TraceHits(v) => v.len(),
        ReadResult::Operations(v) => v.len(),
        ReadResult::Strings(v) => v.len(),
        ReadResult::AttributeValues(v) => v.len(),
        ReadResult::Histogram(v) => v.len(),
        ReadResult::Stats(_) => 1,
    }
}
