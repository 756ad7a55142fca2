//! The contract tests every [`Writer`] + [`Reader`] implementation must pass.
//!
//! Call [`run_all`] from an implementation's tests with a function that makes an empty store.
//! Reads poll until the data is visible (the contract allows up to the commit interval).

use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message;

use crate::api::*;

const VISIBLE_WITHIN: Duration = Duration::from_secs(5);
const T0: u64 = 1_700_000_000_000_000_000;

/// Runs every contract test against fresh stores made by `new_store`.
pub fn run_all<S: Writer + Reader>(new_store: &dyn Fn() -> S) {
    traces_round_trip(&new_store());
    span_predicates(&new_store());
    logs_round_trip_and_predicates(&new_store());
    metrics_round_trip_and_matchers(&new_store());
    writes_are_ordered(&new_store());
    encoded_writes(&new_store());
    resource_keys(&new_store());
    log_times_round_trip(&new_store());
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

fn resource(service: &str) -> Resource {
    Resource {
        attributes: vec![kv("service.name", s(service)), kv("host.name", s("h1"))],
        dropped_attributes_count: 1,
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "suite".into(),
        version: "1.0".into(),
        attributes: vec![kv("scope.attr", Value::BoolValue(true))],
        dropped_attributes_count: 2,
    }
}

fn id16(n: u8) -> Vec<u8> {
    let mut v = vec![0xab; 16];
    v[15] = n;
    v
}

fn id8(n: u8) -> Vec<u8> {
    let mut v = vec![0xcd; 8];
    v[7] = n;
    v
}

/// A span with every field set; `n` varies ids, names and times.
pub fn full_span(trace: u8, n: u8, parent: Option<u8>) -> Span {
    let start = T0 + n as u64 * 1_000_000;
    Span {
        trace_id: id16(trace),
        span_id: id8(n),
        trace_state: "vendor=1".into(),
        parent_span_id: parent.map(id8).unwrap_or_default(),
        flags: 0x101,
        name: format!("op-{}", n % 3),
        kind: (n % 5) as i32 + 1,
        start_time_unix_nano: start,
        end_time_unix_nano: start + (n as u64 + 1) * 1000,
        attributes: vec![
            kv("str", s(&format!("v{n}"))),
            kv("int", Value::IntValue(n as i64)),
            kv("dbl", Value::DoubleValue(n as f64 + 0.5)),
            kv("bool", Value::BoolValue(n.is_multiple_of(2))),
            kv("bytes", Value::BytesValue(vec![n, 0, 255])),
            kv(
                "arr",
                Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue { value: Some(s("a")) }, AnyValue { value: Some(Value::IntValue(7)) }],
                }),
            ),
            kv("map", Value::KvlistValue(KeyValueList { values: vec![kv("inner", s("x"))] })),
        ],
        dropped_attributes_count: 3,
        events: vec![span::Event {
            time_unix_nano: start + 10,
            name: "evt".into(),
            attributes: vec![kv("e", Value::IntValue(1))],
            dropped_attributes_count: 4,
        }],
        dropped_events_count: 5,
        links: vec![span::Link {
            trace_id: id16(99),
            span_id: id8(99),
            trace_state: "l=1".into(),
            attributes: vec![kv("l", s("v"))],
            dropped_attributes_count: 6,
            flags: 0x100,
        }],
        dropped_links_count: 7,
        status: Some(Status {
            message: if n.is_multiple_of(4) { "boom".into() } else { String::new() },
            code: if n.is_multiple_of(4) { 2 } else { 0 },
        }),
    }
}

fn traces(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(service)),
            schema_url: "https://schema/r".into(),
            scope_spans: vec![ScopeSpans { scope: Some(scope()), schema_url: "https://schema/s".into(), spans }],
        }],
    }
}

fn write<S: Writer>(store: &S, batch: Batch) -> WriteReceipt {
    futures::executor::block_on(store.write(batch)).expect("write acknowledged")
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + VISIBLE_WITHIN;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not visible within {VISIBLE_WITHIN:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn traces_round_trip<S: Writer + Reader>(store: &S) {
    let a = traces("svc-a", vec![full_span(1, 0, None), full_span(1, 1, Some(0))]);
    let b = traces("svc-b", vec![full_span(1, 2, Some(1)), full_span(2, 3, None)]);
    write(store, Batch::Traces(a.clone()));
    write(store, Batch::Traces(b.clone()));
    let got = eventually("trace 1", || {
        let t = store.trace(&id16(1)).expect("trace");
        (t.len() == 3).then_some(t)
    });
    let expected: Vec<(&Span, &str)> = vec![
        (&a.resource_spans[0].scope_spans[0].spans[0], "svc-a"),
        (&a.resource_spans[0].scope_spans[0].spans[1], "svc-a"),
        (&b.resource_spans[0].scope_spans[0].spans[0], "svc-b"),
    ];
    for (rec, (span, service)) in got.iter().zip(expected) {
        assert_eq!(&rec.span, span, "span read back equals what was written");
        assert_eq!(*rec.resource, resource(service));
        assert_eq!(rec.resource_schema_url, "https://schema/r");
        assert_eq!(*rec.scope, scope());
        assert_eq!(rec.scope_schema_url, "https://schema/s");
    }
    assert!(store.trace(&id16(77)).expect("unknown trace").is_empty());
    // Ids and times an index may keep apart from the rest of the span: ids of other lengths or
    // none, an end before the start, zero times. Each comes back exactly as written.
    let odd = |n: u8, span_id: Vec<u8>, parent: Vec<u8>, start: u64, end: u64| Span {
        span_id,
        parent_span_id: parent,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        ..full_span(5, n, None)
    };
    let odd_spans = vec![
        odd(10, vec![1; 16], vec![2; 4], T0 + 7, T0 + 3),
        odd(11, vec![], vec![], T0 + 9, 0),
        odd(12, id8(12), id8(10), 0, 5),
        odd(13, id8(13), vec![], 0, 0),
        odd(14, vec![0; 8], vec![0; 8], T0, T0),
        odd(15, id8(15), id8(14), 3, 0),
    ];
    write(store, Batch::Traces(traces("svc-odd", odd_spans.clone())));
    let mut got = eventually("trace 5", || {
        let t = store.trace(&id16(5)).expect("trace");
        (t.len() == odd_spans.len()).then_some(t)
    });
    got.sort_by_key(|r| (r.span.start_time_unix_nano, r.span.end_time_unix_nano));
    let mut want = odd_spans;
    want.sort_by_key(|s| (s.start_time_unix_nano, s.end_time_unix_nano));
    for (rec, span) in got.iter().zip(&want) {
        assert_eq!(&rec.span, span, "odd span read back equals what was written");
    }
    // Many traces at once: each as `trace` answers, in the order asked, unknown ones empty.
    let ids = [id16(2), id16(77), id16(1), id16(2)];
    let many = store.traces(&ids).expect("traces");
    let one_by_one: Vec<_> = ids.iter().map(|id| store.trace(id).expect("trace")).collect();
    assert_eq!(many, one_by_one);
    assert_eq!(many.iter().map(Vec::len).collect::<Vec<_>>(), [1, 0, 3, 1]);
}

fn span_predicates<S: Writer + Reader>(store: &S) {
    let spans: Vec<Span> = (0..20).map(|n| full_span(n / 5, n, if n % 5 == 0 { None } else { Some(n - 1) })).collect();
    write(store, Batch::Traces(traces("svc-a", spans[..10].to_vec())));
    write(store, Batch::Traces(traces("svc-b", spans[10..].to_vec())));
    let find = |p: SpanPredicate| -> Vec<u8> {
        store
            .find_spans(&SpanQuery { predicate: p, time: TimeRange::ALL, limit: 100 })
            .expect("search")
            .iter()
            .map(|r| r.span.span_id[7])
            .collect()
    };
    eventually("20 spans", || (find(SpanPredicate::All).len() == 20).then_some(()));
    assert_eq!(find(SpanPredicate::All), (0..20).rev().collect::<Vec<u8>>(), "newest start first");
    assert_eq!(find(SpanPredicate::Service("svc-b".into())), (10..20).rev().collect::<Vec<_>>());
    assert_eq!(find(SpanPredicate::TraceId(id16(1))), vec![9, 8, 7, 6, 5]);
    assert_eq!(find(SpanPredicate::SpanId(id8(7))), vec![7]);
    assert_eq!(find(SpanPredicate::ParentSpanId(id8(7))), vec![8]);
    assert!(find(SpanPredicate::SpanId(vec![0, 7])).is_empty(), "an id of the wrong length matches nothing");
    assert_eq!(find(SpanPredicate::ParentSpanId(vec![])), vec![15, 10, 5, 0], "roots");
    assert_eq!(find(SpanPredicate::Name("op-1".into())), vec![19, 16, 13, 10, 7, 4, 1]);
    assert_eq!(find(SpanPredicate::Kind(2)), vec![16, 11, 6, 1]);
    assert_eq!(find(SpanPredicate::StatusCode(2)), vec![16, 12, 8, 4, 0]);
    assert_eq!(find(SpanPredicate::Duration { min: 3000, max: 5000 }), vec![4, 3, 2]);
    let attr =
        |key: &str, value: AttrValue| SpanPredicate::Attribute { scope: AttrScope::Item, key: key.into(), value };
    assert_eq!(find(attr("str", AttrValue::Str("v3".into()))), vec![3]);
    assert_eq!(find(attr("int", AttrValue::Int(12))), vec![12]);
    assert_eq!(find(attr("int", AttrValue::Str("12".into()))), Vec::<u8>::new(), "typed");
    assert_eq!(find(attr("dbl", AttrValue::Float(2.5))), vec![2]);
    assert_eq!(find(attr("bool", AttrValue::Bool(true))).len(), 10);
    assert_eq!(find(attr("arr", AttrValue::Int(7))).len(), 20, "array elements");
    assert_eq!(find(attr("map.inner", AttrValue::Str("x".into()))).len(), 20, "map entries");
    let res = SpanPredicate::Attribute {
        scope: AttrScope::Resource,
        key: "service.name".into(),
        value: AttrValue::Str("svc-a".into()),
    };
    assert_eq!(find(res).len(), 10);
    assert_eq!(find(SpanPredicate::AttributeExists { scope: AttrScope::Item, key: "str".into() }).len(), 20);
    assert_eq!(find(SpanPredicate::AttributeExists { scope: AttrScope::Item, key: "nope".into() }).len(), 0);
    assert_eq!(find(SpanPredicate::AttributeExists { scope: AttrScope::Resource, key: "host.name".into() }).len(), 20);
    assert_eq!(
        find(SpanPredicate::And(vec![SpanPredicate::Service("svc-a".into()), SpanPredicate::Name("op-0".into())])),
        vec![9, 6, 3, 0]
    );
    assert_eq!(find(SpanPredicate::Or(vec![SpanPredicate::SpanId(id8(1)), SpanPredicate::SpanId(id8(2))])), vec![2, 1]);
    assert_eq!(find(SpanPredicate::Not(Box::new(SpanPredicate::Service("svc-a".into())))).len(), 10);
    let re = |r: &str| SpanPredicate::AttributeRegex { scope: AttrScope::Item, key: "str".into(), regex: r.into() };
    assert_eq!(find(re("v1[0-2]")), vec![12, 11, 10], "anchored at both ends");
    assert_eq!(find(re("v1")), vec![1]);
    // Explicit anchors are redundant, not an error (tantivy's regexes refuse them).
    assert_eq!(find(re("^v1[0-2]$")), vec![12, 11, 10]);
    assert_eq!(find(re("(?i)^V1$")), vec![1]);
    assert!(find(re("v1\\$")).is_empty(), "an escaped $ is a dollar sign");
    assert_eq!(find(re("v.*")).len(), 20);
    assert_eq!(
        find(SpanPredicate::AttributeRegex { scope: AttrScope::Item, key: "arr".into(), regex: "a|z".into() }).len(),
        20
    );
    assert_eq!(
        find(SpanPredicate::AttributeRegex {
            scope: AttrScope::Resource,
            key: "service.name".into(),
            regex: "svc-b".into()
        })
        .len(),
        10
    );
    let bad = store.find_spans(&SpanQuery { predicate: re("("), time: TimeRange::ALL, limit: 1 });
    assert!(matches!(bad, Err(crate::StoreError::InvalidQuery(_))), "{bad:?}");
    assert_eq!(find(SpanPredicate::And(vec![])).len(), 20);
    assert_eq!(find(SpanPredicate::Or(vec![])).len(), 0);
    let time = TimeRange { start_ns: T0 + 2_000_000, end_ns: T0 + 5_000_000 };
    let got: Vec<u8> = store
        .find_spans(&SpanQuery { predicate: SpanPredicate::All, time, limit: 100 })
        .expect("time")
        .iter()
        .map(|r| r.span.span_id[7])
        .collect();
    assert_eq!(got, vec![4, 3, 2], "start in [start, end)");
    let limited =
        store.find_spans(&SpanQuery { predicate: SpanPredicate::All, time: TimeRange::ALL, limit: 3 }).expect("limit");
    assert_eq!(limited.iter().map(|r| r.span.span_id[7]).collect::<Vec<_>>(), vec![19, 18, 17]);

    // Spans start 1 ms apart from T0; errors are every fourth (0, 4, 8, 12, 16).
    let hist = |p: &SpanPredicate, time: TimeRange| store.span_histogram(p, time, 5_000_000).expect("histogram");
    let b = |i: u64| T0 + i * 5_000_000;
    assert_eq!(hist(&SpanPredicate::All, TimeRange::ALL), vec![(b(0), 5), (b(1), 5), (b(2), 5), (b(3), 5)]);
    assert_eq!(hist(&SpanPredicate::StatusCode(2), TimeRange::ALL), vec![(b(0), 2), (b(1), 1), (b(2), 1), (b(3), 1)]);
    assert_eq!(
        hist(&SpanPredicate::Service("svc-b".into()), TimeRange { start_ns: T0 + 12_000_000, end_ns: T0 + 17_000_000 }),
        vec![(b(2), 3), (b(3), 2)],
        "start in [start, end), buckets aligned to multiples of the bucket"
    );
    assert!(hist(&SpanPredicate::Service("none".into()), TimeRange::ALL).is_empty());
    assert!(matches!(
        store.span_histogram(&SpanPredicate::All, TimeRange::ALL, 0),
        Err(crate::StoreError::InvalidQuery(_))
    ));
}

/// Presence of resource attribute keys and their listing, for keys with and without a value
/// (an index may keep the two apart), keys that are prefixes of others, and map entries.
fn resource_keys<S: Writer + Reader>(store: &S) {
    let map = |entries: Vec<KeyValue>| Value::KvlistValue(KeyValueList { values: entries });
    let odd = Resource {
        attributes: vec![
            kv("service.name", s("odd")),
            KeyValue { key: "host".into(), value: None, ..Default::default() },
            kv("host.name", s("h1")),
            kv("empty.list", Value::ArrayValue(ArrayValue { values: vec![] })),
            kv("map", map(vec![kv("inner", s("two\nlines"))])),
            kv("empty.map", map(vec![])),
            kv(&"long".repeat(600), s("v")),
            kv("re.(x)*[", s("v")),
        ],
        ..Default::default()
    };
    let plain = Resource { attributes: vec![kv("service.name", s("plain"))], ..Default::default() };
    let spans = |n: u8| vec![full_span(n, n, None)];
    let logs = |n: u8| vec![log(n, "body")];
    let mut traces = ExportTraceServiceRequest::default();
    let mut logs_req = ExportLogsServiceRequest::default();
    for (n, r) in [(1, &odd), (2, &plain), (3, &odd)] {
        traces.resource_spans.push(ResourceSpans {
            resource: Some(r.clone()),
            scope_spans: vec![ScopeSpans { spans: spans(n), ..Default::default() }],
            ..Default::default()
        });
        logs_req.resource_logs.push(ResourceLogs {
            resource: Some(r.clone()),
            scope_logs: vec![ScopeLogs { log_records: logs(n), ..Default::default() }],
            ..Default::default()
        });
    }
    write(store, Batch::Traces(traces));
    write(store, Batch::Logs(logs_req));
    let span_count = |key: &str| {
        let p = SpanPredicate::AttributeExists { scope: AttrScope::Resource, key: key.into() };
        store.find_spans(&SpanQuery { predicate: p, time: TimeRange::ALL, limit: 100 }).expect("search").len()
    };
    let log_count = |key: &str| {
        let p = LogPredicate::AttributeExists { scope: AttrScope::Resource, key: key.into() };
        store.find_logs(&LogQuery { predicate: p, time: TimeRange::ALL, limit: 100 }).expect("search").len()
    };
    eventually("3 spans and 3 records", || {
        (span_count("service.name") == 3 && log_count("service.name") == 3).then_some(())
    });
    let long = "long".repeat(600);
    for key in ["host", "host.name", "empty.list", "map", "map.inner", "empty.map", &long, "re.(x)*["] {
        assert_eq!(span_count(key), 2, "spans with resource key {key:?}");
        assert_eq!(log_count(key), 2, "records with resource key {key:?}");
    }
    let longer = "long".repeat(601);
    for key in ["hos", "host.nam", "map.inn", "inner", "nope", "", &longer, "re.(x)", "re.x"] {
        assert_eq!(span_count(key), 0, "spans with resource key {key:?}");
        assert_eq!(log_count(key), 0, "records with resource key {key:?}");
    }
    let want = ["empty.list", "empty.map", "host", "host.name", &long, "map", "map.inner", "re.(x)*[", "service.name"];
    for signal in [Signal::Traces, Signal::Logs] {
        assert_eq!(
            store.attribute_keys(signal, AttrScope::Resource, TimeRange::ALL).expect("keys"),
            want,
            "{signal:?}"
        );
    }
}

/// Record times an index may keep apart from the rest of the record come back exactly:
/// either one 0, both, equal, different.
fn log_times_round_trip<S: Writer + Reader>(store: &S) {
    let times = [(T0 + 1, 0), (0, 0), (0, T0 + 5), (T0 + 2, T0 + 2), (T0 + 3, T0 + 9)];
    let records: Vec<LogRecord> = times
        .iter()
        .enumerate()
        .map(|(n, &(time, observed))| LogRecord {
            time_unix_nano: time,
            observed_time_unix_nano: observed,
            ..log(n as u8, "times")
        })
        .collect();
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource("svc-times")),
            scope_logs: vec![ScopeLogs { scope: Some(scope()), log_records: records.clone(), ..Default::default() }],
            ..Default::default()
        }],
    };
    write(store, Batch::Logs(req));
    let mut got = eventually("5 records", || {
        let all = store
            .find_logs(&LogQuery { predicate: LogPredicate::All, time: TimeRange::ALL, limit: 100 })
            .expect("search");
        (all.len() == records.len()).then_some(all)
    });
    got.sort_by_key(|e| format!("{:?}", e.record.attributes[0]));
    for (e, want) in got.iter().zip(&records) {
        assert_eq!(&e.record, want, "record read back equals what was written");
    }
}

pub(crate) fn log(n: u8, body: &str) -> LogRecord {
    LogRecord {
        time_unix_nano: if n == 0 { 0 } else { T0 + n as u64 * 1000 },
        observed_time_unix_nano: T0 + n as u64 * 1000 + 1,
        severity_number: (n % 4) as i32 * 4 + 5,
        severity_text: ["DEBUG", "INFO", "WARN", "ERROR"][(n % 4) as usize].into(),
        body: Some(AnyValue { value: Some(s(body)) }),
        attributes: vec![kv("n", Value::IntValue(n as i64)), kv("user.id", s(&format!("u{}", n % 2)))],
        dropped_attributes_count: 1,
        flags: 1,
        trace_id: if n.is_multiple_of(2) { id16(n) } else { vec![] },
        span_id: if n.is_multiple_of(2) { id8(n) } else { vec![] },
        event_name: if n == 3 { "ev".into() } else { String::new() },
    }
}

fn logs_round_trip_and_predicates<S: Writer + Reader>(store: &S) {
    let records: Vec<LogRecord> = (0..8)
        .map(|n| {
            log(n, ["payment failed for order 42", "connected to database", "Payment OK", "cache miss"][n as usize % 4])
        })
        .collect();
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource("svc-log")),
            schema_url: "r".into(),
            scope_logs: vec![ScopeLogs { scope: Some(scope()), schema_url: "s".into(), log_records: records.clone() }],
        }],
    };
    write(store, Batch::Logs(req));
    let find = |p: LogPredicate| -> Vec<u8> {
        store
            .find_logs(&LogQuery { predicate: p, time: TimeRange::ALL, limit: 100 })
            .expect("search")
            .iter()
            .map(|e| match e.record.attributes[0].value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::IntValue(i)) => *i as u8,
                _ => 255,
            })
            .collect()
    };
    eventually("8 logs", || (find(LogPredicate::All).len() == 8).then_some(()));
    let all =
        store.find_logs(&LogQuery { predicate: LogPredicate::All, time: TimeRange::ALL, limit: 100 }).expect("all");
    for e in &all {
        let n = match e.record.attributes[0].value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::IntValue(i)) => *i as usize,
            _ => panic!("attribute n"),
        };
        assert_eq!(e.record, records[n], "record read back equals what was written");
        assert_eq!(*e.resource, resource("svc-log"));
        assert_eq!(*e.scope, scope());
        assert_eq!((e.resource_schema_url.as_str(), e.scope_schema_url.as_str()), ("r", "s"));
    }
    assert_eq!(find(LogPredicate::All), vec![7, 6, 5, 4, 3, 2, 1, 0], "newest first; observed time when time is 0");
    assert_eq!(find(LogPredicate::Text("payment".into())), vec![6, 4, 2, 0], "case-insensitive words");
    assert_eq!(find(LogPredicate::Text("payment failed".into())), vec![4, 0], "all words");
    assert_eq!(find(LogPredicate::MinSeverity(13)), vec![7, 6, 3, 2]);
    assert_eq!(find(LogPredicate::SeverityText("WARN".into())), vec![6, 2]);
    let observed = TimeRange { start_ns: T0 + 1, end_ns: T0 + 2002 };
    assert_eq!(find(LogPredicate::ObservedTime(observed)), vec![2, 1, 0]);
    assert_eq!(find(LogPredicate::TraceId(id16(4))), vec![4]);
    assert_eq!(find(LogPredicate::SpanId(id8(6))), vec![6]);
    assert_eq!(find(LogPredicate::Service("svc-log".into())).len(), 8);
    assert_eq!(find(LogPredicate::Service("other".into())).len(), 0);
    let attr =
        LogPredicate::Attribute { scope: AttrScope::Item, key: "user.id".into(), value: AttrValue::Str("u1".into()) };
    assert_eq!(find(attr.clone()), vec![7, 5, 3, 1]);
    assert_eq!(find(LogPredicate::And(vec![attr.clone(), LogPredicate::Text("cache".into())])), vec![7, 3]);
    assert_eq!(
        find(LogPredicate::Or(vec![LogPredicate::TraceId(id16(2)), LogPredicate::TraceId(id16(0))])),
        vec![2, 0]
    );
    assert_eq!(find(LogPredicate::Not(Box::new(attr))), vec![6, 4, 2, 0]);
    assert_eq!(find(LogPredicate::AttributeExists { scope: AttrScope::Resource, key: "host.name".into() }).len(), 8);
    let time = TimeRange { start_ns: T0 + 2000, end_ns: T0 + 4000 };
    let got = store.find_logs(&LogQuery { predicate: LogPredicate::All, time, limit: 10 }).expect("time");
    assert_eq!(got.len(), 2);
    let limited =
        store.find_logs(&LogQuery { predicate: LogPredicate::All, time: TimeRange::ALL, limit: 2 }).expect("limit");
    assert_eq!(limited.len(), 2);
}

fn number(t: u64, v: f64, attrs: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: T0,
        time_unix_nano: t,
        exemplars: vec![],
        flags: 0,
        value: Some(number_data_point::Value::AsDouble(v)),
    }
}

fn metrics_round_trip_and_matchers<S: Writer + Reader>(store: &S) {
    let req = |t: u64, v: f64| ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource("svc-m")),
            schema_url: String::new(),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                schema_url: String::new(),
                metrics: vec![
                    Metric {
                        name: "requests".into(),
                        description: "d".into(),
                        unit: "1".into(),
                        metadata: vec![],
                        data: Some(Data::Sum(Sum {
                            data_points: vec![
                                number(t, v, vec![kv("route", s("/a"))]),
                                number(t, v * 2.0, vec![kv("route", s("/b"))]),
                            ],
                            aggregation_temporality: 2,
                            is_monotonic: true,
                        })),
                    },
                    Metric {
                        name: "temperature".into(),
                        description: String::new(),
                        unit: "Cel".into(),
                        metadata: vec![],
                        data: Some(Data::Gauge(Gauge { data_points: vec![number(t, -v, vec![])] })),
                    },
                ],
            }],
        }],
    };
    write(store, Batch::Metrics(req(T0 + 10, 1.0)));
    write(store, Batch::Metrics(req(T0 + 20, 2.0)));
    let points = |matchers: Vec<LabelMatcher>, time: TimeRange| -> Vec<(String, usize)> {
        let data = store.find_metrics(&MetricQuery { matchers, time }).expect("metrics");
        let mut out = Vec::new();
        for rm in &data.resource_metrics {
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    out.push((m.name.clone(), crate::metrics::point_count(m)));
                }
            }
        }
        out.sort();
        out
    };
    let m = |name: &str, op: MatchOp, value: &str| LabelMatcher { name: name.into(), op, value: value.into() };
    eventually("metric points", || {
        (points(vec![], TimeRange::ALL).iter().map(|p| p.1).sum::<usize>() == 6).then_some(())
    });
    assert_eq!(
        points(vec![m("__name__", MatchOp::Eq, "requests")], TimeRange::ALL),
        vec![("requests".to_string(), 2), ("requests".to_string(), 2)],
        "one Metric per series"
    );
    assert_eq!(points(vec![m("route", MatchOp::Eq, "/b")], TimeRange::ALL), vec![("requests".to_string(), 2)]);
    assert_eq!(points(vec![m("route", MatchOp::Ne, "/b")], TimeRange::ALL).len(), 2, "missing label is empty");
    assert_eq!(points(vec![m("route", MatchOp::Re, "/.*")], TimeRange::ALL).len(), 2);
    assert_eq!(points(vec![m("route", MatchOp::NotRe, "/a|")], TimeRange::ALL), vec![("requests".to_string(), 2)]);
    assert_eq!(points(vec![m("service.name", MatchOp::Eq, "svc-m")], TimeRange::ALL).len(), 3, "resource labels");
    assert_eq!(
        points(vec![m("__name__", MatchOp::Eq, "temperature")], TimeRange { start_ns: T0 + 15, end_ns: T0 + 30 }),
        vec![("temperature".to_string(), 1)]
    );
    let data = store
        .find_metrics(&MetricQuery { matchers: vec![m("__name__", MatchOp::Eq, "temperature")], time: TimeRange::ALL })
        .expect("temperature");
    let metric = &data.resource_metrics[0].scope_metrics[0].metrics[0];
    assert_eq!(data.resource_metrics[0].resource.as_ref(), Some(&resource("svc-m")));
    assert_eq!(metric.unit, "Cel");
    match &metric.data {
        Some(Data::Gauge(g)) => {
            assert_eq!(g.data_points, vec![number(T0 + 10, -1.0, vec![]), number(T0 + 20, -2.0, vec![])])
        }
        other => panic!("expected a gauge, got {other:?}"),
    }
    let bad = store.find_metrics(&MetricQuery { matchers: vec![m("route", MatchOp::Re, "(")], time: TimeRange::ALL });
    assert!(matches!(bad, Err(crate::StoreError::InvalidQuery(_))), "bad regex is an invalid query: {bad:?}");

    // The Prometheus view with matchers on view labels: what the default gives.
    let all = MetricQuery { matchers: vec![], time: TimeRange::ALL };
    let opts = crate::prometheus::ViewOptions::default();
    for labels in [
        vec![],
        vec![m("route", MatchOp::Eq, "/b")],
        vec![m("job", MatchOp::Eq, "svc-m"), m("route", MatchOp::NotRe, "/a")],
        vec![m("job", MatchOp::Eq, "nope")],
    ] {
        let got = store.find_metrics_view(&all, &labels, &opts).expect("view");
        let want = crate::prometheus::matching_view(&store.find_metrics(&all).expect("metrics"), &labels, &opts)
            .expect("reference view");
        // As text: NaN samples are not equal to themselves.
        assert_eq!(format!("{got:?}"), format!("{want:?}"), "view with {labels:?}");
    }
    let view = store.find_metrics_view(&all, &[m("route", MatchOp::Eq, "/b")], &opts).expect("view");
    let routes: Vec<Option<&str>> = view
        .families
        .iter()
        .filter(|f| f.name != "target_info")
        .flat_map(|f| &f.series)
        .map(|s| s.labels.iter().find(|(k, _)| k == "route").map(|(_, v)| v.as_str()))
        .collect();
    assert_eq!(routes, vec![Some("/b")], "only the series with route /b");
    let bad = store.find_metrics_view(&all, &[m("route", MatchOp::Re, "(")], &opts);
    assert!(matches!(bad, Err(crate::StoreError::InvalidQuery(_))), "bad regex is an invalid query: {bad:?}");
}

fn writes_are_ordered<S: Writer + Reader>(store: &S) {
    let mut last = 0;
    for n in 0..5 {
        let r = write(store, Batch::Traces(traces("o", vec![full_span(50, n, None)])));
        assert!(r.seq > last, "seq increases");
        last = r.seq;
    }
}

/// `write_encoded` is `write` given the batch's encoding too: ordered with the other writes, and
/// the batch reads back as written.
fn encoded_writes<S: Writer + Reader>(store: &S) {
    let before = write(store, Batch::Traces(traces("o", vec![full_span(61, 0, None)])));
    let req = traces("svc-enc", vec![full_span(60, 0, None), full_span(60, 1, Some(0))]);
    let encoded = Bytes::from(req.encode_to_vec());
    let written = futures::executor::block_on(store.write_encoded(Batch::Traces(req.clone()), encoded));
    assert!(written.expect("write acknowledged").seq > before.seq, "seq increases");
    let got = eventually("trace 60", || {
        let t = store.trace(&id16(60)).expect("trace");
        (t.len() == 2).then_some(t)
    });
    for (rec, span) in got.iter().zip(&req.resource_spans[0].scope_spans[0].spans) {
        assert_eq!(&rec.span, span, "span read back equals what was written");
        assert_eq!(*rec.resource, resource("svc-enc"));
    }
}
