//! The Rust OpenTelemetry SDK with the `opentelemetry-otlp` exporters (default settings except
//! the endpoint), over OTLP/gRPC and over OTLP/HTTP protobuf, against an in-process obsbox.
//!
//! Every span and log record also goes to the SDK's in-memory exporter, and every metrics export
//! is recorded by a tee in front of the OTLP exporter, so the test knows exactly what was sent;
//! it converts that with the same OTLP mapping the exporter uses and compares what the store
//! returns field by field, plus a few facts checked directly against the SDK's own data.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{FlatPoint, blocking, metric_points};
use obsbox::storage::{DiskStore, LogPredicate, LogQuery, Reader, SpanRecord, TimeRange};
use opentelemetry::logs::Severity;
use opentelemetry::logs::{AnyValue as LogValue, LogRecord as _, Logger as _, LoggerProvider as _};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{
    Link, SpanBuilder, SpanKind, Status as TraceStatus, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, Context, InstrumentationScope as SdkScope, KeyValue as SdkKeyValue, Value};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_sdk::Resource as SdkResource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{InMemoryLogExporter, SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracer, SdkTracerProvider, SpanData};

const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.21.0";

#[derive(Clone, Copy, Debug)]
enum Transport {
    Grpc,
    HttpProtobuf,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::HttpProtobuf => "http-protobuf",
        }
    }
}

struct Exporters {
    spans: opentelemetry_otlp::SpanExporter,
    logs: opentelemetry_otlp::LogExporter,
    metrics: opentelemetry_otlp::MetricExporter,
}

/// The OTLP exporters with default settings except the endpoint. Must run inside the Tokio
/// runtime (the tonic channel is created there).
fn exporters(transport: Transport, obsbox: &obsbox::Obsbox) -> Exporters {
    match transport {
        Transport::Grpc => {
            let endpoint = format!("http://{}", obsbox.otlp_grpc_addr().expect("an OTLP listener"));
            Exporters {
                spans: opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .build()
                    .expect("span exporter"),
                logs: opentelemetry_otlp::LogExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .build()
                    .expect("log exporter"),
                metrics: opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build()
                    .expect("metric exporter"),
            }
        }
        Transport::HttpProtobuf => {
            let base = format!("http://{}", obsbox.otlp_http_addr().expect("an OTLP listener"));
            Exporters {
                spans: opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{base}/v1/traces"))
                    .build()
                    .expect("span exporter"),
                logs: opentelemetry_otlp::LogExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{base}/v1/logs"))
                    .build()
                    .expect("log exporter"),
                metrics: opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{base}/v1/metrics"))
                    .build()
                    .expect("metric exporter"),
            }
        }
    }
}

/// Passes each metrics export to the OTLP exporter and, when that succeeded, records the OTLP
/// request it sent (the exporter's own mapping of the same `ResourceMetrics`).
struct TeeMetricExporter {
    otlp: opentelemetry_otlp::MetricExporter,
    sent: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl PushMetricExporter for TeeMetricExporter {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.otlp.export(metrics).await;
        match &result {
            Ok(()) => self.sent.lock().unwrap().push(ExportMetricsServiceRequest::from(metrics)),
            Err(error) => self.failures.lock().unwrap().push(error.to_string()),
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.otlp.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.otlp.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.otlp.temporality()
    }
}

/// What the SDK exported.
struct Sent {
    resource: SdkResource,
    spans: Vec<SpanData>,
    logs: Vec<opentelemetry_sdk::logs::in_memory_exporter::LogDataWithResource>,
    metrics: Vec<ExportMetricsServiceRequest>,
    metric_failures: Vec<String>,
    /// Span ids by span name.
    ids: HashMap<String, (Vec<u8>, Vec<u8>)>,
}

fn every_type() -> Vec<SdkKeyValue> {
    vec![
        SdkKeyValue::new("attr.str", "hello <b>world</b> \u{e9}\u{4e16}"),
        SdkKeyValue::new("attr.int", -42_i64),
        SdkKeyValue::new("attr.big", i64::MAX),
        SdkKeyValue::new("attr.float", 3.25_f64),
        SdkKeyValue::new("attr.bool", true),
        SdkKeyValue::new("attr.strs", Value::Array(Array::String(vec!["x".into(), "".into()]))),
        SdkKeyValue::new("attr.ints", Value::Array(Array::I64(vec![1, -2, 3]))),
        SdkKeyValue::new("attr.floats", Value::Array(Array::F64(vec![0.5, -1.25]))),
        SdkKeyValue::new("attr.bools", Value::Array(Array::Bool(vec![true, false]))),
    ]
}

/// Starts a span from `builder` as a child of the current context, runs `f` with the span's
/// context attached, ends the span.
fn in_span<T>(tracer: &SdkTracer, builder: SpanBuilder, f: impl FnOnce(&Context) -> T) -> T {
    let span = builder.start_with_context(tracer, &Context::current());
    let cx = Context::current_with_span(span);
    let guard = cx.clone().attach();
    let out = f(&cx);
    cx.span().end();
    drop(guard);
    out
}

fn emit_log(
    logger: &SdkLogger,
    seq: i64,
    body: LogValue,
    severity: Severity,
    text: &'static str,
    timestamp: Option<SystemTime>,
) {
    let mut record = logger.create_log_record();
    record.set_body(body);
    record.set_severity_number(severity);
    record.set_severity_text(text);
    if let Some(timestamp) = timestamp {
        record.set_timestamp(timestamp);
    }
    record.add_attribute("log.seq", seq);
    record.add_attribute("attr.double", 0.25_f64);
    record.add_attribute("attr.bool", seq % 2 == 0);
    record.add_attribute("attr.bytes", LogValue::Bytes(Box::new(vec![0, 1, 2, 255])));
    record.add_attribute(
        "attr.list",
        LogValue::ListAny(Box::new(vec![LogValue::Int(1), LogValue::String("two".into())])),
    );
    logger.emit(record);
}

/// Creates the providers, emits the telemetry, flushes and shuts down; blocking.
fn produce(service: String, exporters: Exporters) -> Sent {
    let resource = SdkResource::builder()
        .with_service_name(service)
        .with_schema_url(
            [
                SdkKeyValue::new("service.version", "1.0.0"),
                SdkKeyValue::new("res.int", 7_i64),
                SdkKeyValue::new("res.bool", true),
                SdkKeyValue::new("res.double", 1.5_f64),
                SdkKeyValue::new("res.strs", Value::Array(Array::String(vec!["a".into()]))),
            ],
            SCHEMA_URL,
        )
        .build();
    let scope = SdkScope::builder("e2e-rust")
        .with_version("2.0.1")
        .with_schema_url(SCHEMA_URL)
        .with_attributes([SdkKeyValue::new("scope.attr", "v")])
        .build();

    let span_memory = InMemorySpanExporter::default();
    let tracer_provider = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_simple_exporter(span_memory.clone())
        .with_batch_exporter(exporters.spans)
        .build();
    let log_memory = InMemoryLogExporter::default();
    let logger_provider = SdkLoggerProvider::builder()
        .with_resource(resource.clone())
        .with_simple_exporter(log_memory.clone())
        .with_batch_exporter(exporters.logs)
        .build();
    let sent_metrics = Arc::new(Mutex::new(Vec::new()));
    let metric_failures = Arc::new(Mutex::new(Vec::new()));
    let meter_provider = SdkMeterProvider::builder()
        .with_resource(resource.clone())
        .with_periodic_exporter(TeeMetricExporter {
            otlp: exporters.metrics,
            sent: sent_metrics.clone(),
            failures: metric_failures.clone(),
        })
        .build();

    let tracer = tracer_provider.tracer_with_scope(scope.clone());
    let logger = logger_provider.logger_with_scope(scope.clone());
    let meter = meter_provider.meter_with_scope(scope);

    // Traces and logs.
    let mut ids = HashMap::new();
    let mut remember = |name: &str, cx: &Context| {
        let sc = cx.span().span_context().clone();
        ids.insert(name.to_string(), (sc.trace_id().to_bytes().to_vec(), sc.span_id().to_bytes().to_vec()));
    };
    let link_target = in_span(&tracer, tracer.span_builder("linked-root").with_kind(SpanKind::Producer), |cx| {
        remember("linked-root", cx);
        cx.span().span_context().clone()
    });
    let base = SystemTime::now() - Duration::from_secs(1);
    let odd_start = UNIX_EPOCH
        + Duration::from_nanos((base.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 / 1000) * 1000 + 123);
    let root = tracer
        .span_builder("GET /checkout")
        .with_kind(SpanKind::Server)
        .with_start_time(odd_start)
        .with_attributes(every_type())
        .with_links(vec![Link::new(
            link_target,
            vec![SdkKeyValue::new("link.kind", "follows"), SdkKeyValue::new("link.n", 1_i64)],
            0,
        )]);
    in_span(&tracer, root, |cx| {
        remember("GET /checkout", cx);
        cx.span().add_event_with_timestamp(
            "request.received",
            odd_start + Duration::from_nanos(1_001),
            vec![SdkKeyValue::new("bytes", 512_i64), SdkKeyValue::new("ok", true)],
        );
        emit_log(&logger, 1, LogValue::String("checkout started for user 17".into()), Severity::Info, "INFO", None);
        in_span(&tracer, tracer.span_builder("SELECT orders").with_kind(SpanKind::Client), |cx| {
            remember("SELECT orders", cx);
            cx.span().set_attribute(SdkKeyValue::new("db.system", "postgresql"));
            in_span(&tracer, tracer.span_builder("decode rows"), |cx| {
                remember("decode rows", cx);
                cx.span().add_event("rows.decoded", vec![SdkKeyValue::new("count", 3_i64)]);
                let body = LogValue::Map(Box::new(HashMap::from([
                    ("msg".into(), LogValue::String("decoded".into())),
                    ("count".into(), LogValue::Int(3)),
                ])));
                emit_log(&logger, 2, body, Severity::Debug, "DEBUG", Some(SystemTime::now()));
            });
        });
        in_span(&tracer, tracer.span_builder("charge card").with_kind(SpanKind::Client), |cx| {
            remember("charge card", cx);
            cx.span().set_status(TraceStatus::error("card declined"));
            cx.span().add_event("exception", vec![SdkKeyValue::new("exception.message", "insufficient funds")]);
            emit_log(&logger, 3, LogValue::String("payment failed".into()), Severity::Error, "ERROR", None);
        });
        in_span(&tracer, tracer.span_builder("consume event").with_kind(SpanKind::Consumer), |cx| {
            remember("consume event", cx);
            cx.span().set_status(TraceStatus::Ok);
        });
        cx.span().set_attribute(SdkKeyValue::new("http.response.status_code", 500_i64));
    });
    emit_log(
        &logger,
        4,
        LogValue::String("background job finished".into()),
        Severity::Warn,
        "WARN",
        Some(SystemTime::now() - Duration::from_secs(5)),
    );

    // Metrics.
    let counter = meter.u64_counter("e2e_requests").with_unit("1").with_description("requests").build();
    let updown = meter.i64_up_down_counter("e2e_queue_depth").with_unit("{item}").build();
    let histogram = meter.f64_histogram("e2e_latency").with_unit("ms").with_description("latency").build();
    let gauge = meter.f64_gauge("e2e_temperature").with_unit("Cel").build();
    let _observable = meter
        .i64_observable_gauge("e2e_open_files")
        .with_callback(|observer| observer.observe(17, &[SdkKeyValue::new("proc", "a")]))
        .build();
    counter.add(3, &[SdkKeyValue::new("route", "/a"), SdkKeyValue::new("code", 200_i64)]);
    counter.add(4, &[SdkKeyValue::new("route", "/b"), SdkKeyValue::new("code", 500_i64)]);
    updown.add(10, &[SdkKeyValue::new("queue", "q1")]);
    updown.add(-3, &[SdkKeyValue::new("queue", "q1")]);
    for value in [0.5, 7.0, 12.0, 250.0, 99_999.0] {
        histogram.record(value, &[SdkKeyValue::new("route", "/a")]);
    }
    gauge.record(21.5, &[SdkKeyValue::new("room", "kitchen")]);
    gauge.record(-4.25, &[SdkKeyValue::new("room", "freezer")]);

    tracer_provider.force_flush().expect("flush spans");
    logger_provider.force_flush().expect("flush logs");
    meter_provider.force_flush().expect("flush metrics");
    // The in-memory exporters forget everything at shutdown: take their records now (every
    // span has ended and every record was emitted before the flush).
    let spans = span_memory.get_finished_spans().expect("in-memory spans");
    let logs = log_memory.get_emitted_logs().expect("in-memory logs");
    // A second round: the final export (at shutdown) carries different cumulative values.
    counter.add(2, &[SdkKeyValue::new("route", "/b"), SdkKeyValue::new("code", 500_i64)]);
    histogram.record(40.0, &[SdkKeyValue::new("route", "/b")]);
    tracer_provider.shutdown().expect("shut down the tracer provider");
    logger_provider.shutdown().expect("shut down the logger provider");
    meter_provider.shutdown().expect("shut down the meter provider");

    Sent {
        resource,
        spans,
        logs,
        metrics: sent_metrics.lock().unwrap().clone(),
        metric_failures: metric_failures.lock().unwrap().clone(),
        ids,
    }
}

fn sorted(mut attributes: Vec<KeyValue>) -> Vec<KeyValue> {
    attributes.sort_by(|a, b| a.key.cmp(&b.key));
    attributes
}

/// The OTLP resource the exporters send for `resource`, attributes sorted (their order comes
/// from a hash map in the SDK and carries no meaning).
fn otlp_resource(resource: &SdkResource) -> (Vec<KeyValue>, String) {
    let with_schema = ResourceAttributesWithSchema::from(resource);
    (sorted(with_schema.attributes.0), with_schema.schema_url.unwrap_or_default())
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()
}

fn check_spans(store: &DiskStore, sent: &Sent) {
    let (resource_attributes, resource_schema_url) = otlp_resource(&sent.resource);
    let mut by_trace: HashMap<Vec<u8>, Vec<&SpanData>> = HashMap::new();
    for data in &sent.spans {
        by_trace.entry(data.span_context.trace_id().to_bytes().to_vec()).or_default().push(data);
    }
    assert_eq!(sent.spans.len(), 6, "the SDK exported every span");
    assert_eq!(by_trace.len(), 2, "two traces: the linked one and the main one");

    let complete = common::wait_until(common::SEARCHABLE, || {
        by_trace.iter().all(|(id, spans)| store.trace(id).expect("trace").len() == spans.len())
    });
    for (id, spans) in &by_trace {
        let stored = store.trace(id).expect("trace");
        assert!(
            complete,
            "trace {} not complete within {:?}: stored {} of {} spans: {:#?}",
            hex::encode(id),
            common::SEARCHABLE,
            stored.len(),
            spans.len(),
            stored.iter().map(|r| &r.span.name).collect::<Vec<_>>()
        );
        let stored_by_id: HashMap<&[u8], &SpanRecord> = stored.iter().map(|r| (r.span.span_id.as_slice(), r)).collect();
        for data in spans {
            let expected = Span::from((*data).clone());
            let record = stored_by_id
                .get(expected.span_id.as_slice())
                .unwrap_or_else(|| panic!("span {:?} not stored", expected.name));
            assert_eq!(record.span, expected, "span {:?}: stored (left) vs sent (right)", expected.name);
            assert_eq!(
                sorted(record.resource.attributes.clone()),
                resource_attributes,
                "resource of {:?}",
                expected.name
            );
            assert_eq!(record.resource_schema_url, resource_schema_url);
            let expected_scope = InstrumentationScope::from((&data.instrumentation_scope, None));
            assert_eq!(
                InstrumentationScope { attributes: sorted(record.scope.attributes.clone()), ..(*record.scope).clone() },
                InstrumentationScope { attributes: sorted(expected_scope.attributes.clone()), ..expected_scope },
                "scope of {:?}",
                expected.name
            );
            assert_eq!(record.scope_schema_url, SCHEMA_URL);

            // Independent of the OTLP mapping: the SDK's own values.
            assert_eq!(record.span.name, data.name);
            assert_eq!(record.span.trace_id, data.span_context.trace_id().to_bytes());
            assert_eq!(record.span.span_id, data.span_context.span_id().to_bytes());
            let start = data.start_time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
            let end = data.end_time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
            assert_eq!((record.span.start_time_unix_nano, record.span.end_time_unix_nano), (start, end));
            assert_eq!(record.span.attributes.len(), data.attributes.len());
            assert_eq!(record.span.events.len(), data.events.len());
            assert_eq!(record.span.links.len(), data.links.len());
        }
    }

    // Facts about the telemetry produced above, straight from the stored spans.
    let root_trace = &sent.ids["GET /checkout"].0;
    let stored = store.trace(root_trace).expect("trace");
    let by_name: HashMap<&str, &Span> = stored.iter().map(|r| (r.span.name.as_str(), &r.span)).collect();
    let root = by_name["GET /checkout"];
    assert!(root.parent_span_id.is_empty(), "root has no parent");
    assert_eq!(root.kind, 2, "server");
    assert_eq!(root.start_time_unix_nano % 1000, 123, "nanosecond precision kept");
    use any_value::Value as V;
    assert_eq!(attribute(&root.attributes, "attr.int"), Some(&V::IntValue(-42)));
    assert_eq!(attribute(&root.attributes, "attr.big"), Some(&V::IntValue(i64::MAX)));
    assert_eq!(attribute(&root.attributes, "attr.float"), Some(&V::DoubleValue(3.25)));
    assert_eq!(attribute(&root.attributes, "attr.bool"), Some(&V::BoolValue(true)));
    assert_eq!(
        attribute(&root.attributes, "attr.str"),
        Some(&V::StringValue("hello <b>world</b> \u{e9}\u{4e16}".into()))
    );
    match attribute(&root.attributes, "attr.floats") {
        Some(V::ArrayValue(array)) => assert_eq!(
            array.values.iter().map(|v| v.value.clone()).collect::<Vec<_>>(),
            vec![Some(V::DoubleValue(0.5)), Some(V::DoubleValue(-1.25))]
        ),
        other => panic!("attr.floats is {other:?}"),
    }
    assert_eq!(root.links.len(), 1);
    assert_eq!(root.links[0].trace_id, sent.ids["linked-root"].0);
    assert_eq!(root.links[0].span_id, sent.ids["linked-root"].1);
    assert_eq!(root.events[0].name, "request.received");
    assert_eq!(root.events[0].time_unix_nano, root.start_time_unix_nano + 1_001);
    let db = by_name["SELECT orders"];
    assert_eq!((db.kind, db.parent_span_id.as_slice()), (3, root.span_id.as_slice()));
    assert_eq!(by_name["decode rows"].parent_span_id, db.span_id);
    assert_eq!(by_name["decode rows"].kind, 1, "internal");
    let charge = by_name["charge card"].status.clone().expect("status");
    assert_eq!((charge.code, charge.message.as_str()), (2, "card declined"));
    assert_eq!(by_name["consume event"].kind, 5, "consumer");
    assert_eq!(by_name["consume event"].status.as_ref().map(|s| s.code), Some(1));
}

fn check_logs(store: &DiskStore, service: &str, sent: &Sent) {
    assert_eq!(sent.logs.len(), 4, "the SDK exported every log record");
    let complete =
        common::wait_until(common::SEARCHABLE, || common::logs_of_service(store, service).len() >= sent.logs.len());
    let stored = common::logs_of_service(store, service);
    assert!(complete && stored.len() == sent.logs.len(), "stored {} of {} log records", stored.len(), sent.logs.len());
    let seq = |record: &LogRecord| match attribute(&record.attributes, "log.seq") {
        Some(any_value::Value::IntValue(n)) => *n,
        other => panic!("log.seq is {other:?}"),
    };
    let stored_by_seq: HashMap<i64, _> = stored.iter().map(|e| (seq(&e.record), e)).collect();
    for data in &sent.logs {
        let expected = LogRecord::from(&data.record);
        let entry = stored_by_seq.get(&seq(&expected)).expect("log record stored");
        assert_eq!(entry.record, expected, "log record {}: stored (left) vs sent (right)", seq(&expected));
        let (resource_attributes, resource_schema_url) = otlp_resource(&data.resource);
        assert_eq!(sorted(entry.resource.attributes.clone()), resource_attributes);
        assert_eq!(entry.resource_schema_url, resource_schema_url);
        let expected_scope = InstrumentationScope::from((&data.instrumentation, data.record.target().cloned()));
        assert_eq!(entry.scope.name, expected_scope.name);
        assert_eq!(entry.scope.version, expected_scope.version);
        assert_eq!(sorted(entry.scope.attributes.clone()), sorted(expected_scope.attributes));
        assert_eq!(entry.scope_schema_url, SCHEMA_URL);
    }

    // Correlation with the spans they were emitted in, from the SDK's ids.
    let in_span = [(1, "GET /checkout"), (2, "decode rows"), (3, "charge card")];
    for (n, span_name) in in_span {
        let record = &stored_by_seq[&n].record;
        let (trace_id, span_id) = &sent.ids[span_name];
        assert_eq!((&record.trace_id, &record.span_id), (trace_id, span_id), "log {n} inside {span_name:?}");
    }
    let outside = &stored_by_seq[&4].record;
    assert!(outside.trace_id.is_empty() && outside.span_id.is_empty(), "log 4 has no trace context");
    assert_eq!((outside.severity_number, outside.severity_text.as_str()), (13, "WARN"));
    assert_eq!(
        attribute(&stored_by_seq[&1].record.attributes, "attr.bytes"),
        Some(&any_value::Value::BytesValue(vec![0, 1, 2, 255]))
    );
    match stored_by_seq[&2].record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(any_value::Value::KvlistValue(list)) => assert_eq!(list.values.len(), 2),
        other => panic!("log 2's body is {other:?}"),
    }
    let by_trace = store
        .find_logs(&LogQuery {
            predicate: LogPredicate::TraceId(sent.ids["GET /checkout"].0.clone()),
            time: TimeRange::ALL,
            limit: 100,
        })
        .expect("find_logs by trace id");
    assert_eq!(by_trace.len(), 3, "the three records emitted inside the trace");
}

fn check_metrics(store: &DiskStore, service: &str, sent: &Sent) {
    assert!(sent.metric_failures.is_empty(), "metric exports failed: {:?}", sent.metric_failures);
    assert_eq!(sent.metrics.len(), 2, "two metric exports: force_flush and shutdown");
    let expected: Vec<FlatPoint> =
        sent.metrics.iter().flat_map(|request| metric_points(&request.resource_metrics)).collect();
    let names = ["e2e_requests", "e2e_queue_depth", "e2e_latency", "e2e_temperature", "e2e_open_files"];
    for name in names {
        let want: Vec<FlatPoint> = expected.iter().filter(|p| p.name == name).cloned().collect();
        assert!(!want.is_empty(), "the SDK exported {name}");
        let stored = || metric_points(&common::metrics_of_service(store, name, service).resource_metrics);
        common::wait_until(common::SEARCHABLE, || stored().len() >= want.len());
        common::assert_points_match(name, &want, &stored());
    }
    // Values straight from what was recorded above.
    let requests = metric_points(&common::metrics_of_service(store, "e2e_requests", service).resource_metrics);
    let mut b_values: Vec<f64> = requests
        .iter()
        .filter(|p| attribute(p.attributes(), "route") == Some(&any_value::Value::StringValue("/b".into())))
        .filter_map(FlatPoint::number)
        .collect();
    b_values.sort_by(f64::total_cmp);
    assert_eq!(b_values, vec![4.0, 6.0], "cumulative counter values");
    let latency = metric_points(&common::metrics_of_service(store, "e2e_latency", service).resource_metrics);
    let first_a = latency
        .iter()
        .filter_map(|p| match &p.point {
            common::FlatValue::Histogram(h)
                if attribute(&h.attributes, "route")
                    .is_some_and(|v| v == &any_value::Value::StringValue("/a".into())) =>
            {
                Some(h)
            }
            _ => None,
        })
        .min_by_key(|h| h.time_unix_nano)
        .expect("histogram point for /a");
    assert_eq!(first_a.count, 5);
    assert_eq!(first_a.sum, Some(0.5 + 7.0 + 12.0 + 250.0 + 99_999.0));
    assert_eq!(first_a.min, Some(0.5));
    assert_eq!(first_a.max, Some(99_999.0));
    assert_eq!(first_a.bucket_counts.iter().sum::<u64>(), 5);
    assert_eq!(first_a.bucket_counts.len(), first_a.explicit_bounds.len() + 1);
}

async fn run(transport: Transport) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let obsbox = common::start_obsbox(&tmp.path().join("data")).await;
    let service = format!("e2e-rust-{}", transport.name());
    let exporters = exporters(transport, &obsbox);
    let sent = blocking({
        let service = service.clone();
        move || produce(service, exporters)
    })
    .await;

    let store = obsbox.store().expect("a local store");
    blocking(move || {
        check_spans(&store, &sent);
        check_logs(&store, &service, &sent);
        check_metrics(&store, &service, &sent);
    })
    .await;
    obsbox.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_over_grpc() {
    run(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_over_http_protobuf() {
    run(Transport::HttpProtobuf).await;
}
