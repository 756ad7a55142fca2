//! Sealed segments away from their store: a `SegmentSet` over a `DiskStore`'s sealed segments,
//! copied elsewhere as a searcher downloads them, answers every `Reader` call as the store does;
//! so does one over segments merged with `merge_segments`. Released segments are gone for good,
//! and a crash in the middle of a release leaves a store that opens.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use obsbox_storage::prometheus::ViewOptions;
use obsbox_storage::testsuite::full_span;
use obsbox_storage::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, metric::Data, number_data_point, summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

const SECOND: u64 = 1_000_000_000;
const SERVICES: [&str; 3] = ["checkout", "payment", "search"];
const BODIES: [&str; 5] = [
    "payment failed for order 42",
    "connected to database primary",
    "cache miss for key user:7",
    "request served in 12 ms",
    "retrying payment after timeout",
];

/// An hour ago, whole seconds: recent enough that retention keeps it.
fn base() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    (now - 3600) * SECOND
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

fn resource(service: &str, region: &str) -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", s(service)),
            kv("cloud.region", s(region)),
            kv("host.cpus", Value::IntValue(4)),
        ],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope { name: "lib".into(), version: "2.1".into(), ..Default::default() }
}

/// Part `part` of the data set: every span, log record and point has its own time, later parts
/// later. Traces `part * 10 + t`, spans with a parent chain.
fn traces(base: u64, part: u8) -> ExportTraceServiceRequest {
    let mut resource_spans = Vec::new();
    for (i, service) in SERVICES.iter().enumerate() {
        let mut spans = Vec::new();
        for t in 0..3u8 {
            let trace = part * 10 + t;
            for n in 1..=5u8 {
                let mut span = full_span(trace, n + i as u8 * 5, if n == 1 { None } else { Some(n - 1 + i as u8 * 5) });
                let start = base + part as u64 * 100 * SECOND + (trace as u64 * 20 + n as u64 + i as u64 * 6) * 1000;
                span.start_time_unix_nano = start;
                span.end_time_unix_nano = start + (n as u64 * 7 + t as u64) * 1_000_000;
                spans.push(span);
            }
        }
        resource_spans.push(ResourceSpans {
            resource: Some(resource(service, if i == 0 { "eu" } else { "us" })),
            schema_url: "https://schema/r".into(),
            scope_spans: vec![ScopeSpans { scope: Some(scope()), schema_url: String::new(), spans }],
        });
    }
    ExportTraceServiceRequest { resource_spans }
}

fn logs(base: u64, part: u8) -> ExportLogsServiceRequest {
    let mut resource_logs = Vec::new();
    for (i, service) in SERVICES.iter().enumerate() {
        let log_records = (0..8u8)
            .map(|n| {
                let t = base + part as u64 * 100 * SECOND + 50 * SECOND + (n as u64 * 3 + i as u64) * 1000;
                LogRecord {
                    // One record per part without a time: read by its observed time.
                    time_unix_nano: if n == 7 && i == 0 { 0 } else { t },
                    observed_time_unix_nano: t + 1,
                    severity_number: (n % 4) as i32 * 4 + 5,
                    severity_text: ["DEBUG", "INFO", "WARN", "ERROR"][(n % 4) as usize].into(),
                    body: Some(AnyValue { value: Some(s(BODIES[(n as usize + part as usize) % BODIES.len()])) }),
                    attributes: vec![
                        kv("n", Value::IntValue(n as i64)),
                        kv("user.id", s(&format!("u{}", n % 3))),
                        kv("sampled", Value::BoolValue(n % 2 == 0)),
                    ],
                    trace_id: if n % 2 == 0 { full_span(part * 10, 1, None).trace_id } else { vec![] },
                    span_id: if n % 2 == 0 { full_span(part * 10, n, None).span_id } else { vec![] },
                    ..Default::default()
                }
            })
            .collect();
        resource_logs.push(ResourceLogs {
            resource: Some(resource(service, "eu")),
            schema_url: String::new(),
            scope_logs: vec![ScopeLogs { scope: Some(scope()), schema_url: String::new(), log_records }],
        });
    }
    ExportLogsServiceRequest { resource_logs }
}

fn number(start: u64, t: u64, v: f64, attrs: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: start,
        time_unix_nano: t,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

/// Series that go on over every part (a counter, a gauge, a histogram, a summary) plus one
/// series only in this part. With `renamed`, the counter's description changes in part 2.
fn metrics(base: u64, part: u8, renamed: bool) -> ExportMetricsServiceRequest {
    let start = base;
    let mut out = Vec::new();
    for (i, service) in SERVICES.iter().take(2).enumerate() {
        let mut ms = Vec::new();
        for k in 0..4u64 {
            let t = base + part as u64 * 100 * SECOND + 80 * SECOND + k * SECOND + i as u64;
            let v = (part as u64 * 4 + k) as f64;
            ms.push(Metric {
                name: "http.server.requests".into(),
                description: if renamed && part == 2 { "requests served".into() } else { "requests".into() },
                unit: "1".into(),
                data: Some(Data::Sum(Sum {
                    data_points: vec![
                        number(start, t, v, vec![kv("route", s("/a")), kv("code", Value::IntValue(200))]),
                        number(start, t, v * 2.0, vec![kv("route", s("/b")), kv("code", Value::IntValue(500))]),
                    ],
                    aggregation_temporality: 2,
                    is_monotonic: true,
                })),
                ..Default::default()
            });
            ms.push(Metric {
                name: "temperature".into(),
                unit: "Cel".into(),
                data: Some(Data::Gauge(Gauge { data_points: vec![number(0, t, 20.0 - v, vec![])] })),
                ..Default::default()
            });
            ms.push(Metric {
                name: "http.server.duration".into(),
                unit: "ms".into(),
                data: Some(Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        attributes: vec![kv("route", s("/a"))],
                        start_time_unix_nano: start,
                        time_unix_nano: t,
                        count: 10 + k,
                        sum: Some(100.0 + v),
                        bucket_counts: vec![1, 2, 3, 4 + k],
                        explicit_bounds: vec![5.0, 10.0, 50.0],
                        min: Some(1.0),
                        max: Some(60.0),
                        ..Default::default()
                    }],
                    aggregation_temporality: 2,
                })),
                ..Default::default()
            });
            ms.push(Metric {
                name: "gc.pause".into(),
                unit: "s".into(),
                data: Some(Data::Summary(Summary {
                    data_points: vec![SummaryDataPoint {
                        start_time_unix_nano: start,
                        time_unix_nano: t,
                        count: 3,
                        sum: 0.5 + v,
                        quantile_values: vec![
                            ValueAtQuantile { quantile: 0.5, value: 0.1 },
                            ValueAtQuantile { quantile: 0.99, value: 0.3 },
                        ],
                        ..Default::default()
                    }],
                })),
                ..Default::default()
            });
            ms.push(Metric {
                name: format!("only.part{part}"),
                data: Some(Data::Gauge(Gauge {
                    data_points: vec![number(0, t, v, vec![kv("k", Value::BoolValue(true))])],
                })),
                ..Default::default()
            });
        }
        out.push(ResourceMetrics {
            resource: Some(resource(service, "eu")),
            schema_url: String::new(),
            scope_metrics: vec![ScopeMetrics { scope: Some(scope()), schema_url: String::new(), metrics: ms }],
        });
    }
    ExportMetricsServiceRequest { resource_metrics: out }
}

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        commit_interval: Duration::from_millis(100),
        index_memory_bytes: 32 << 20,
        min_free_bytes: 0,
        ..StoreConfig::default()
    }
}

fn write(store: &DiskStore, batch: Batch) {
    futures::executor::block_on(store.write(batch)).expect("write acknowledged");
}

/// Writes parts `parts` of the data set, sealing after each: one sealed segment per part and
/// signal. The metric description changes in part 2 (see [`metrics`]).
fn write_parts(store: &DiskStore, base: u64, parts: std::ops::Range<u8>) {
    write_parts_renamed(store, base, parts, true)
}

fn write_parts_renamed(store: &DiskStore, base: u64, parts: std::ops::Range<u8>, renamed: bool) {
    for part in parts {
        write(store, Batch::Traces(traces(base, part)));
        write(store, Batch::Logs(logs(base, part)));
        write(store, Batch::Metrics(metrics(base, part, renamed)));
        store.seal_now().expect("sealed");
    }
}

/// Copies a sealed segment's listed files to `to` (as an ingester uploads them and a searcher
/// downloads them) and opens the copy.
fn copy_and_open(seg: &SealedSegment, to: &Path) -> Arc<OpenSegment> {
    open(seg, &copy(seg, to))
}

fn open(seg: &SealedSegment, copy: &Path) -> Arc<OpenSegment> {
    OpenSegment::open(seg.signal, copy, seg.min_time_ns, seg.max_time_ns, seg.items).expect("opens")
}

/// Copies a sealed segment's listed files to `to`; returns the copy's path.
fn copy(seg: &SealedSegment, to: &Path) -> PathBuf {
    let target = match seg.signal {
        Signal::Metrics => {
            std::fs::create_dir_all(to).unwrap();
            let (name, bytes) = &seg.files[0];
            assert_eq!(seg.files.len(), 1);
            let target = to.join(name);
            std::fs::copy(&seg.path, &target).unwrap();
            assert_eq!(std::fs::metadata(&target).unwrap().len(), *bytes);
            target
        }
        _ => {
            let target = to.join(format!("{}-{}", seg.signal.as_str(), seg.id));
            std::fs::create_dir_all(&target).unwrap();
            for (name, bytes) in &seg.files {
                std::fs::copy(seg.path.join(name), target.join(name)).unwrap();
                assert_eq!(std::fs::metadata(target.join(name)).unwrap().len(), *bytes, "{name}");
            }
            target
        }
    };
    assert_eq!(seg.bytes, seg.files.iter().map(|f| f.1).sum::<u64>());
    target
}

/// Every file and directory under `dir` with its size and modification time (a directory's
/// changes when a file is created or deleted in it, such as a lock file taken and released).
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    out.insert(dir.to_path_buf(), (0, std::fs::metadata(dir).unwrap().modified().unwrap()));
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(listing(&e.path()));
        } else {
            out.insert(e.path(), (m.len(), m.modified().unwrap()));
        }
    }
    out
}

fn outcome<T>(r: Result<T, StoreError>) -> Result<T, String> {
    r.map_err(|e| match e {
        StoreError::InvalidQuery(_) => "invalid query".to_string(),
        e => panic!("unexpected error: {e}"),
    })
}

/// Compares one call on both readers; returns how many items the answer holds.
fn same<T: PartialEq + Debug>(
    what: &str,
    a: Result<T, StoreError>,
    b: Result<T, StoreError>,
    len: impl Fn(&T) -> usize,
) -> usize {
    let (a, b) = (outcome(a), outcome(b));
    if a != b {
        let (da, db) = (format!("{a:?}"), format!("{b:?}"));
        let at = da.bytes().zip(db.bytes()).take_while(|(x, y)| x == y).count();
        let around = |d: &str| d.get(at.saturating_sub(400)..(at + 200).min(d.len())).unwrap_or(d).to_string();
        panic!(
            "{what}: the segment set answers differently at byte {at}\nstore: ...{}\nset:   ...{}",
            around(&da),
            around(&db)
        );
    }
    a.as_ref().map_or(0, len)
}

/// Every `Reader` method, with many arguments, answers the same on `store` and `set`. Checks
/// that the data set makes most answers non-empty, so that agreement is not two empty answers.
///
/// The term listings (operations, field values, attribute keys and values) are coarse in time:
/// they count whole segments overlapping the range. Unless `same_segments` (the set holds the
/// store's segments), they are compared over all time only.
fn check_same_answers(store: &dyn Reader, set: &dyn Reader, base: u64, parts: u8, same_segments: bool) {
    let end = base + parts as u64 * 100 * SECOND;
    let times = [
        TimeRange::ALL,
        TimeRange { start_ns: base, end_ns: end },
        TimeRange { start_ns: base + 100 * SECOND, end_ns: base + 150 * SECOND },
        TimeRange { start_ns: base + 50 * SECOND, end_ns: base + 180 * SECOND },
        TimeRange { start_ns: end + SECOND, end_ns: end + 2 * SECOND },
    ];
    let span_predicates = {
        let t = |n| full_span(n, 1, None).trace_id;
        let sid = full_span(0, 3, None).span_id;
        vec![
            SpanPredicate::All,
            SpanPredicate::TraceId(t(10)),
            SpanPredicate::TraceId(t(99)),
            SpanPredicate::SpanId(sid.clone()),
            SpanPredicate::ParentSpanId(vec![]),
            SpanPredicate::ParentSpanId(sid),
            SpanPredicate::Service("payment".into()),
            SpanPredicate::Name("op-1".into()),
            SpanPredicate::Kind(2),
            SpanPredicate::StatusCode(2),
            SpanPredicate::Duration { min: 10_000_000, max: 25_000_000 },
            SpanPredicate::Attribute { scope: AttrScope::Item, key: "str".into(), value: AttrValue::Str("v3".into()) },
            SpanPredicate::Attribute { scope: AttrScope::Item, key: "int".into(), value: AttrValue::Int(7) },
            SpanPredicate::Attribute { scope: AttrScope::Item, key: "dbl".into(), value: AttrValue::Float(4.5) },
            SpanPredicate::Attribute { scope: AttrScope::Item, key: "bool".into(), value: AttrValue::Bool(true) },
            SpanPredicate::Attribute {
                scope: AttrScope::Resource,
                key: "cloud.region".into(),
                value: AttrValue::Str("us".into()),
            },
            SpanPredicate::Attribute { scope: AttrScope::Resource, key: "host.cpus".into(), value: AttrValue::Int(4) },
            SpanPredicate::AttributeExists { scope: AttrScope::Item, key: "map.inner".into() },
            SpanPredicate::AttributeRegex { scope: AttrScope::Item, key: "str".into(), regex: "v1[0-4]".into() },
            SpanPredicate::AttributeRegex {
                scope: AttrScope::Resource,
                key: "service.name".into(),
                regex: "pay.*".into(),
            },
            SpanPredicate::AttributeRegex { scope: AttrScope::Item, key: "str".into(), regex: "(unclosed".into() },
            SpanPredicate::And(vec![
                SpanPredicate::Service("checkout".into()),
                SpanPredicate::Not(Box::new(SpanPredicate::StatusCode(2))),
            ]),
            SpanPredicate::Or(vec![SpanPredicate::Name("op-0".into()), SpanPredicate::Kind(5)]),
        ]
    };
    let mut nonempty = 0;
    let mut calls = 0;
    let mut count = |n: usize| {
        calls += 1;
        nonempty += (n > 0) as usize;
    };
    for n in 0..parts * 10 + 3 {
        let id = full_span(n, 1, None).trace_id;
        count(same(&format!("trace {n}"), store.trace(&id), set.trace(&id), Vec::len));
    }
    for p in &span_predicates {
        for time in times {
            for limit in [0, 3, 20, 10_000] {
                let q = SpanQuery { predicate: p.clone(), time, limit };
                count(same(&format!("find_spans {q:?}"), store.find_spans(&q), set.find_spans(&q), Vec::len));
                count(same(
                    &format!("find_trace_ids {q:?}"),
                    store.find_trace_ids(&q),
                    set.find_trace_ids(&q),
                    Vec::len,
                ));
                count(same(
                    &format!("find_trace_hits {q:?}"),
                    store.find_trace_hits(&q),
                    set.find_trace_hits(&q),
                    Vec::len,
                ));
            }
            for bucket in [SECOND, 7 * SECOND, 1000 * SECOND] {
                count(same(
                    &format!("span_histogram {p:?} {time:?} {bucket}"),
                    store.span_histogram(p, time, bucket),
                    set.span_histogram(p, time, bucket),
                    Vec::len,
                ));
            }
        }
    }
    let log_predicates = vec![
        LogPredicate::All,
        LogPredicate::Text("payment".into()),
        LogPredicate::Text("\"payment failed\"".into()),
        LogPredicate::Text("cache OR database".into()),
        LogPredicate::Text("payment AND NOT timeout".into()),
        LogPredicate::Text("body:(".into()),
        LogPredicate::Service("search".into()),
        LogPredicate::MinSeverity(13),
        LogPredicate::SeverityText("WARN".into()),
        LogPredicate::ObservedTime(TimeRange { start_ns: base + 150 * SECOND, end_ns: base + 250 * SECOND }),
        LogPredicate::TraceId(full_span(10, 1, None).trace_id),
        LogPredicate::SpanId(full_span(0, 2, None).span_id),
        LogPredicate::Attribute { scope: AttrScope::Item, key: "n".into(), value: AttrValue::Int(3) },
        LogPredicate::Attribute { scope: AttrScope::Item, key: "sampled".into(), value: AttrValue::Bool(false) },
        LogPredicate::Attribute {
            scope: AttrScope::Resource,
            key: "cloud.region".into(),
            value: AttrValue::Str("eu".into()),
        },
        LogPredicate::AttributeExists { scope: AttrScope::Item, key: "user.id".into() },
        LogPredicate::And(vec![LogPredicate::Text("payment".into()), LogPredicate::Service("checkout".into())]),
        LogPredicate::Or(vec![LogPredicate::SeverityText("ERROR".into()), LogPredicate::MinSeverity(9)]),
        LogPredicate::Not(Box::new(LogPredicate::Service("payment".into()))),
    ];
    for p in &log_predicates {
        for time in times {
            for limit in [0, 5, 10_000] {
                let q = LogQuery { predicate: p.clone(), time, limit };
                count(same(&format!("find_logs {q:?}"), store.find_logs(&q), set.find_logs(&q), Vec::len));
            }
            for bucket in [SECOND, 60 * SECOND] {
                count(same(
                    &format!("log_histogram {p:?} {time:?} {bucket}"),
                    store.log_histogram(p, time, bucket),
                    set.log_histogram(p, time, bucket),
                    Vec::len,
                ));
            }
        }
    }
    let m = |name: &str, op: MatchOp, value: &str| LabelMatcher { name: name.into(), op, value: value.into() };
    let matcher_sets = vec![
        vec![m("__name__", MatchOp::Re, ".+")],
        vec![m("__name__", MatchOp::Eq, "http.server.requests")],
        vec![m("__name__", MatchOp::Re, "http.*"), m("route", MatchOp::Eq, "/b")],
        vec![m("__name__", MatchOp::Ne, "temperature"), m("service.name", MatchOp::Eq, "payment")],
        vec![m("code", MatchOp::NotRe, "5..")],
        vec![m("__name__", MatchOp::Re, "only.*")],
        vec![m("__name__", MatchOp::Re, "(bad")],
    ];
    let label_sets = vec![
        vec![],
        vec![m("route", MatchOp::Eq, "/a")],
        vec![m("job", MatchOp::Re, ".*checkout.*")],
        vec![m("code", MatchOp::Re, "(bad")],
    ];
    for matchers in &matcher_sets {
        for time in times {
            let q = MetricQuery { matchers: matchers.clone(), time };
            count(same(&format!("find_metrics {q:?}"), store.find_metrics(&q), set.find_metrics(&q), |d| {
                d.resource_metrics.len()
            }));
            for labels in &label_sets {
                for opts in [ViewOptions::default(), ViewOptions { native_histograms: false, target_info: false }] {
                    count(same(
                        &format!("find_metrics_view {q:?} {labels:?} {opts:?}"),
                        store.find_metrics_view(&q, labels, &opts),
                        set.find_metrics_view(&q, labels, &opts),
                        |v| v.families.len(),
                    ));
                }
            }
        }
    }
    for time in times.into_iter().filter(|t| same_segments || *t == TimeRange::ALL) {
        count(same("operations", store.operations(time), set.operations(time), Vec::len));
        for field in [LogField::Service, LogField::SeverityText] {
            count(same(
                "log_field_values",
                store.log_field_values(field, time),
                set.log_field_values(field, time),
                Vec::len,
            ));
        }
        for signal in Signal::ALL {
            for scope in [AttrScope::Item, AttrScope::Resource] {
                count(same(
                    &format!("attribute_keys {signal:?} {scope:?} {time:?}"),
                    store.attribute_keys(signal, scope, time),
                    set.attribute_keys(signal, scope, time),
                    Vec::len,
                ));
                for key in ["str", "int", "bool", "n", "user.id", "service.name", "cloud.region", "missing"] {
                    for limit in [1, 100] {
                        count(same(
                            &format!("attribute_values {signal:?} {scope:?} {key} {time:?}"),
                            store.attribute_values(signal, scope, key, time, limit),
                            set.attribute_values(signal, scope, key, time, limit),
                            Vec::len,
                        ));
                    }
                }
            }
        }
    }
    // Not every call can find something (an empty time range, limit 0, unknown ids, bad
    // queries, metric attributes): about 45% find something.
    assert!(nonempty * 10 > calls * 4, "only {nonempty} of {calls} calls found something");
    assert!(calls > 1500, "{calls} calls");
}

/// Counts of spans, log records and points a reader holds in total.
fn totals(r: &dyn Reader) -> (usize, usize, usize) {
    let spans =
        r.find_spans(&SpanQuery { predicate: SpanPredicate::All, time: TimeRange::ALL, limit: 1 << 20 }).unwrap();
    let logs = r.find_logs(&LogQuery { predicate: LogPredicate::All, time: TimeRange::ALL, limit: 1 << 20 }).unwrap();
    let md = r
        .find_metrics(&MetricQuery {
            matchers: vec![LabelMatcher { name: "__name__".into(), op: MatchOp::Re, value: ".+".into() }],
            time: TimeRange::ALL,
        })
        .unwrap();
    let points = md
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(metric_point_count)
        .sum();
    (spans.len(), logs.len(), points)
}

const PARTS: u8 = 3;
/// Spans, log records and points of one part.
const PER_PART: (usize, usize, usize) = (45, 24, 48);

#[test]
fn a_segment_set_over_copied_sealed_segments_answers_as_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let copies = tempfile::tempdir().unwrap();
    let base = base();
    let store = DiskStore::open(config(dir.path())).unwrap();
    write_parts(&store, base, 0..PARTS);
    let mut copied = Vec::new();
    for signal in Signal::ALL {
        let sealed = store.sealed_segments(signal);
        assert_eq!(sealed.len(), PARTS as usize, "{signal:?}: one sealed segment per part");
        for seg in sealed {
            assert!(seg.items > 0 && seg.min_time_ns <= seg.max_time_ns && seg.bytes > 0, "{seg:?}");
            let path = copy(&seg, copies.path());
            copied.push((seg, path));
        }
    }
    // Let a directory changed by opening have another modification time.
    std::thread::sleep(Duration::from_millis(20));
    let before = listing(copies.path());
    let set = SegmentSet::new(copied.iter().map(|(seg, path)| open(seg, path)).collect());
    let want = (PER_PART.0 * 3, PER_PART.1 * 3, PER_PART.2 * 3);
    assert_eq!(totals(&store), want);
    assert_eq!(totals(&set), want);
    check_same_answers(&store, &set, base, PARTS, true);
    assert_eq!(listing(copies.path()), before, "opening and reading segments writes nothing into them");
    let stats = set.stats();
    assert_eq!(stats.segments, vec![(Signal::Traces, 3), (Signal::Logs, 3), (Signal::Metrics, 3)]);
    assert_eq!(stats.damaged_files, 0);
}

#[test]
fn merged_segments_answer_as_their_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let base = base();
    let store = DiskStore::open(config(dir.path())).unwrap();
    // A block keeps one description per series: a merged block answers the newest for all of
    // its points, where its inputs answered the newest of the blocks a time range covers. The
    // comparison below needs descriptions that do not change; `merged_metadata_is_the_newest`
    // checks the rule.
    write_parts_renamed(&store, base, 0..PARTS, false);
    let mut all = Vec::new();
    for signal in Signal::ALL {
        let inputs: Vec<Arc<OpenSegment>> =
            store.sealed_segments(signal).iter().map(|s| copy_and_open(s, &work.path().join("in"))).collect();
        // The first two merged, then the result merged with the third: merges of merges work.
        let out = |n: u8| match signal {
            Signal::Metrics => work.path().join(format!("merged-{n}.obm")),
            _ => work.path().join(format!("merged-{}-{n}", signal.as_str())),
        };
        let first = merge_segments(signal, &inputs[..2], &out(1)).expect("merged");
        assert_eq!(first.items, inputs[0].items() + inputs[1].items());
        assert_eq!(first.min_time_ns, inputs[0].min_time_ns());
        assert_eq!(first.max_time_ns, inputs[1].max_time_ns());
        let first = OpenSegment::open(signal, &first.path, first.min_time_ns, first.max_time_ns, first.items).unwrap();
        // Half merged: the merged segment overlaps nothing, reads of it plus the third.
        let half = SegmentSet::new(vec![first.clone(), inputs[2].clone()]);
        let only = SegmentSet::new(inputs.clone());
        match signal {
            Signal::Traces => assert_eq!(totals(&half).0, totals(&only).0),
            Signal::Logs => assert_eq!(totals(&half).1, totals(&only).1),
            Signal::Metrics => assert_eq!(totals(&half).2, totals(&only).2),
        }
        let second = merge_segments(signal, &[inputs[2].clone(), first], &out(2)).expect("merged");
        assert_eq!(second.items, inputs.iter().map(|s| s.items()).sum::<u64>());
        assert_eq!(second.bytes, second.files.iter().map(|f| f.1).sum::<u64>());
        // The merged segment ships like a sealed one: its listed files suffice.
        all.push(copy_and_open(&second, &work.path().join("shipped")));
    }
    let set = SegmentSet::new(all);
    assert_eq!(set.stats().segments, vec![(Signal::Traces, 1), (Signal::Logs, 1), (Signal::Metrics, 1)]);
    check_same_answers(&store, &set, base, PARTS, false);
}

#[test]
fn open_segments_stay_readable_when_their_files_are_deleted() {
    // A searcher's cache may evict a segment while a query still reads it.
    let dir = tempfile::tempdir().unwrap();
    let copies = tempfile::tempdir().unwrap();
    let store = DiskStore::open(config(dir.path())).unwrap();
    write_parts(&store, base(), 0..2);
    let opened: Vec<Arc<OpenSegment>> = Signal::ALL
        .iter()
        .flat_map(|s| store.sealed_segments(*s))
        .map(|seg| copy_and_open(&seg, copies.path()))
        .collect();
    let set = SegmentSet::new(opened);
    std::fs::remove_dir_all(copies.path()).unwrap();
    assert_eq!(totals(&set), (PER_PART.0 * 2, PER_PART.1 * 2, PER_PART.2 * 2));
}

#[test]
fn verify_finds_a_flipped_bit_and_merge_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let copies = tempfile::tempdir().unwrap();
    let store = DiskStore::open(config(dir.path())).unwrap();
    write_parts(&store, base(), 0..1);
    for signal in Signal::ALL {
        let seg = store.sealed_segments(signal).remove(0);
        let good = copy_and_open(&seg, &copies.path().join("good"));
        good.verify().expect("an intact segment verifies");
        let bad = copy(&seg, &copies.path().join("bad"));
        let victim = match signal {
            Signal::Metrics => bad.clone(),
            _ => bad.join(&seg.files.iter().find(|(n, _)| n.ends_with(".store")).unwrap().0),
        };
        let mut data = std::fs::read(&victim).unwrap();
        let at = data.len() / 2;
        data[at] ^= 0x04;
        std::fs::write(&victim, &data).unwrap();
        let bad = open(&seg, &bad);
        let err = bad.verify().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{signal:?}: {err}");
        let out = copies.path().join(format!("merged-{}", signal.as_str()));
        let err = merge_segments(signal, &[good, bad], &out).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{signal:?}: {err}");
        assert!(!out.exists());
    }
}

#[test]
fn merged_metadata_is_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let base = base();
    let store = DiskStore::open(config(dir.path())).unwrap();
    write_parts(&store, base, 0..PARTS);
    let inputs: Vec<Arc<OpenSegment>> =
        store.sealed_segments(Signal::Metrics).iter().map(|s| copy_and_open(s, work.path())).collect();
    let merged = merge_segments(Signal::Metrics, &inputs, &work.path().join("merged.obm")).unwrap();
    let merged = copy_and_open(&merged, &work.path().join("shipped"));
    let set = SegmentSet::new(vec![merged]);
    let description = |r: &dyn Reader, time: TimeRange| {
        let q = MetricQuery {
            matchers: vec![LabelMatcher {
                name: "__name__".into(),
                op: MatchOp::Eq,
                value: "http.server.requests".into(),
            }],
            time,
        };
        let md = r.find_metrics(&q).unwrap();
        let m = &md.resource_metrics[0].scope_metrics[0].metrics[0];
        m.description.clone()
    };
    assert_eq!(description(&store, TimeRange::ALL), "requests served");
    assert_eq!(description(&set, TimeRange::ALL), "requests served");
    let part0 = TimeRange { start_ns: base, end_ns: base + 100 * SECOND };
    assert_eq!(description(&store, part0), "requests", "the store: the newest of the blocks read");
    assert_eq!(description(&set, part0), "requests served", "merged: the newest of its inputs");
}

#[test]
fn overlapping_segments_of_two_stores_read_as_one_store_holding_both() {
    // Two ingesters receive interleaved parts: a seals parts 0 and 2 together, b seals part 1
    // and part 3 apart, so a's segment overlaps b's first one in time.
    let base = base();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let copies = tempfile::tempdir().unwrap();
    let [a, b, both] = [0, 1, 2].map(|i| DiskStore::open(config(dirs[i].path())).unwrap());
    for part in 0..4u8 {
        let ingester = if part % 2 == 0 { &a } else { &b };
        for store in [ingester, &both] {
            write(store, Batch::Traces(traces(base, part)));
            write(store, Batch::Logs(logs(base, part)));
            write(store, Batch::Metrics(metrics(base, part, false)));
        }
        if part != 0 {
            ingester.seal_now().unwrap();
        }
    }
    both.seal_now().unwrap();
    assert_eq!(a.sealed_segments(Signal::Traces).len(), 1);
    assert_eq!(b.sealed_segments(Signal::Traces).len(), 2);
    let mut opened = Vec::new();
    for store in [&a, &b] {
        for signal in Signal::ALL {
            opened.extend(store.sealed_segments(signal).iter().map(|s| copy_and_open(s, copies.path())));
        }
    }
    let set = SegmentSet::new(opened);
    assert_eq!(totals(&set), totals(&both));
    check_same_answers(&both, &set, base, 4, false);
}

#[test]
fn opening_refuses_what_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let copies = tempfile::tempdir().unwrap();
    let store = DiskStore::open(config(dir.path())).unwrap();
    write_parts(&store, base(), 0..1);
    let spans = &store.sealed_segments(Signal::Traces)[0];
    let block = &store.sealed_segments(Signal::Metrics)[0];
    // A wrong item count: the entry does not describe this segment.
    for seg in [spans, block] {
        let err =
            OpenSegment::open(seg.signal, &seg.path, seg.min_time_ns, seg.max_time_ns, seg.items + 1).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    }
    // Spans opened as logs: another schema.
    let err = OpenSegment::open(Signal::Logs, &spans.path, 0, u64::MAX, spans.items).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }) && err.to_string().contains("schema"), "{err}");
    // A block of a newer obsbox is refused as incompatible, a truncated one as corrupt.
    let newer = copies.path().join("newer.obm");
    let mut raw = std::fs::read(&block.path).unwrap();
    raw[8..12].copy_from_slice(&9u32.to_le_bytes());
    std::fs::write(&newer, &raw).unwrap();
    let err = OpenSegment::open(Signal::Metrics, &newer, 0, u64::MAX, block.items).unwrap_err();
    assert!(matches!(err, StoreError::Incompatible(_)), "{err}");
    let truncated = copies.path().join("truncated.obm");
    std::fs::write(&truncated, &std::fs::read(&block.path).unwrap()[..40]).unwrap();
    let err = OpenSegment::open(Signal::Metrics, &truncated, 0, u64::MAX, block.items).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    // A segment directory missing a file (an incomplete download).
    let partial = copies.path().join("partial");
    std::fs::create_dir_all(&partial).unwrap();
    for (name, _) in spans.files.iter().filter(|(n, _)| !n.ends_with(".store")) {
        std::fs::copy(spans.path.join(name), partial.join(name)).unwrap();
    }
    let err = OpenSegment::open(Signal::Traces, &partial, 0, u64::MAX, spans.items).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    // Merging segments of different signals, or into a non-empty directory, is refused.
    let s = OpenSegment::open(Signal::Traces, &spans.path, spans.min_time_ns, spans.max_time_ns, spans.items).unwrap();
    let b = OpenSegment::open(Signal::Metrics, &block.path, block.min_time_ns, block.max_time_ns, block.items).unwrap();
    let err = merge_segments(Signal::Traces, &[s.clone(), b], &copies.path().join("m")).unwrap_err();
    assert!(matches!(err, StoreError::InvalidQuery(_)), "{err}");
    let err = merge_segments(Signal::Traces, &[s], &partial).unwrap_err();
    assert!(matches!(err, StoreError::InvalidQuery(_)), "{err}");
    let err = merge_segments(Signal::Logs, &[], &copies.path().join("none")).unwrap_err();
    assert!(matches!(err, StoreError::InvalidQuery(_)), "{err}");
    assert!(!copies.path().join("m").exists() && !copies.path().join("none").exists(), "nothing left behind");
}

#[test]
fn released_segments_are_no_longer_read_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let base = base();
    let store = DiskStore::open(config(dir.path())).unwrap();
    write_parts(&store, base, 0..PARTS);
    let trace_of = |part: u8| full_span(part * 10, 1, None).trace_id;
    for signal in Signal::ALL {
        let first = store.sealed_segments(signal)[0].clone();
        store.release_segment(signal, first.id).unwrap();
        assert!(!first.path.exists(), "{signal:?}: deleted");
        assert_eq!(store.sealed_segments(signal).len(), PARTS as usize - 1);
        let err = store.release_segment(signal, first.id).unwrap_err();
        assert!(matches!(err, StoreError::InvalidQuery(_)) && err.to_string().contains("release"), "{err}");
    }
    let err = store.release_segment(Signal::Traces, 999_999).unwrap_err();
    assert!(matches!(err, StoreError::InvalidQuery(_)), "{err}");
    let check = |store: &DiskStore, when: &str| {
        let want = (PER_PART.0 * 2, PER_PART.1 * 2, PER_PART.2 * 2);
        assert_eq!(totals(store), want, "{when}: the released part is gone, the others are all there once");
        assert!(store.trace(&trace_of(0)).unwrap().is_empty(), "{when}");
        assert_eq!(store.trace(&trace_of(1)).unwrap().len(), 15, "{when}");
    };
    check(&store, "after release");
    // New writes go on into the active segments, and the released data stays gone.
    write_parts(&store, base, PARTS..PARTS + 1);
    drop(store);
    let store = DiskStore::open(config(dir.path())).unwrap();
    assert_eq!(totals(&store), (PER_PART.0 * 3, PER_PART.1 * 3, PER_PART.2 * 3), "after a restart");
    assert!(store.trace(&trace_of(0)).unwrap().is_empty());
    for signal in Signal::ALL {
        assert_eq!(store.sealed_segments(signal).len(), PARTS as usize, "{signal:?}");
    }
    // Retention goes on over what is left: by age the segments stay, a size limit drops them.
    store.apply_retention().unwrap();
    assert_eq!(store.sealed_segments(Signal::Logs).len(), PARTS as usize);
    drop(store);
    let store = DiskStore::open(StoreConfig { max_disk_bytes: 1, ..config(dir.path()) }).unwrap();
    store.apply_retention().unwrap();
    for signal in Signal::ALL {
        assert!(store.sealed_segments(signal).is_empty(), "{signal:?}");
    }
}

#[test]
fn releasing_the_newest_segment_does_not_replay_its_items_after_a_restart() {
    // The newest sealed segment holds the highest WAL seq; with an empty active segment, the
    // store must still know those records are committed, whatever the WAL files still hold.
    let dir = tempfile::tempdir().unwrap();
    let base = base();
    let store = DiskStore::open(config(dir.path())).unwrap();
    write_parts(&store, base, 0..2);
    for signal in Signal::ALL {
        let newest = store.sealed_segments(signal).pop().unwrap();
        store.release_segment(signal, newest.id).unwrap();
    }
    drop(store);
    let store = DiskStore::open(config(dir.path())).unwrap();
    assert_eq!(totals(&store), PER_PART);
}

/// Copies a store directory (without lock files).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if !e.file_name().to_string_lossy().ends_with(".lock") {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn a_crash_between_the_steps_of_a_release_leaves_a_store_that_opens() {
    let dir = tempfile::tempdir().unwrap();
    let base = base();
    let (before, after) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let released: Vec<SealedSegment>;
    {
        let store = DiskStore::open(config(dir.path())).unwrap();
        write_parts(&store, base, 0..2);
        drop(store);
        copy_dir(dir.path(), before.path());
        let store = DiskStore::open(config(dir.path())).unwrap();
        released = Signal::ALL.iter().map(|s| store.sealed_segments(*s).remove(0)).collect();
        for seg in &released {
            store.release_segment(seg.signal, seg.id).unwrap();
        }
        drop(store);
        copy_dir(dir.path(), after.path());
    }
    let rel = |p: &Path| p.strip_prefix(dir.path()).unwrap().to_path_buf();
    // Killed after the metastore was replaced (traces, logs) and the committed seq saved
    // (metrics), before the files were (fully) deleted.
    for partly in [false, true] {
        let crashed = tempfile::tempdir().unwrap();
        copy_dir(before.path(), crashed.path());
        std::fs::copy(after.path().join("traces/metastore"), crashed.path().join("traces/metastore")).unwrap();
        std::fs::copy(after.path().join("logs/metastore"), crashed.path().join("logs/metastore")).unwrap();
        std::fs::copy(after.path().join("metrics/committed.obm"), crashed.path().join("metrics/committed.obm"))
            .unwrap();
        if partly {
            for seg in &released[..2] {
                let (name, _) = seg.files.iter().find(|(n, _)| n.ends_with(".store")).unwrap();
                std::fs::remove_file(crashed.path().join(rel(&seg.path)).join(name)).unwrap();
            }
        }
        let store = DiskStore::open(config(crashed.path())).expect("opens");
        let (spans, logs, points) = totals(&store);
        assert_eq!((spans, logs), (PER_PART.0, PER_PART.1), "partly deleted: {partly}: released spans and logs gone");
        // The block file was still there: it is served again (its items uploaded twice at
        // worst, under the same key), never replayed from the WAL on top.
        assert_eq!(points, PER_PART.2 * 2, "partly deleted: {partly}");
        assert_eq!(store.stats().damaged_files, 0);
        for seg in &released[..2] {
            assert!(!crashed.path().join(rel(&seg.path)).exists(), "the unlisted directory is removed at open");
        }
    }
}

#[test]
fn seal_now_while_writing_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = base();
    let store = Arc::new(DiskStore::open(config(dir.path())).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sealer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seals = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store.seal_now().unwrap();
                seals += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
            seals
        })
    };
    let parts = 12u8;
    for part in 0..parts {
        write(&store, Batch::Traces(traces(base, part)));
        write(&store, Batch::Logs(logs(base, part)));
        write(&store, Batch::Metrics(metrics(base, part, true)));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(sealer.join().unwrap() > 1);
    store.seal_now().unwrap();
    let n = parts as usize;
    let want = (PER_PART.0 * n, PER_PART.1 * n, PER_PART.2 * n);
    assert_eq!(totals(&*store), want);
    let items = |s: Signal| store.sealed_segments(s).iter().map(|s| s.items as usize).sum::<usize>();
    assert_eq!((items(Signal::Traces), items(Signal::Logs), items(Signal::Metrics)), want, "all sealed");
    // Every batch lies in one segment: a segment holds whole parts of 15 spans per service.
    for seg in store.sealed_segments(Signal::Traces) {
        assert_eq!(seg.items % PER_PART.0 as u64, 0, "a batch split over two segments: {seg:?}");
    }
    drop(Arc::into_inner(store).unwrap());
    let store = DiskStore::open(config(dir.path())).unwrap();
    assert_eq!(totals(&store), want, "after a restart");
}
