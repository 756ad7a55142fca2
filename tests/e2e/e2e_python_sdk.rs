//! The Python OpenTelemetry SDK against an in-process obsbox: its OTLP/gRPC and OTLP/HTTP
//! protobuf exporters, and OTLP/JSON built from the SDK's own encoders (see
//! `tests/python/export.py`). The script writes the export requests the server acknowledged;
//! this test compares what the store returns with them field by field.
//!
//! Python comes from `$OBSBOX_TEST_PYTHON`, else `<workspace>/.venv/bin/python`; without either
//! the test fails and says to run `scripts/test.sh`.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::{FlatPoint, blocking, metric_points};
use obsbox::storage::{DiskStore, Reader};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

const TRANSPORTS: [&str; 3] = ["grpc", "http", "json"];
const METRICS: [&str; 5] =
    ["py_e2e_requests", "py_e2e_queue_depth", "py_e2e_latency", "py_e2e_temperature", "py_e2e_cpu_utilization"];

/// An item as sent, with the resource and scope it was sent under.
struct Sent<T> {
    resource: Resource,
    resource_schema_url: String,
    scope: InstrumentationScope,
    scope_schema_url: String,
    item: T,
}

fn read<M: Message + Default>(dir: &Path, name: &str) -> M {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    M::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("decode {}: {e}", path.display()))
}

fn sent_spans(request: ExportTraceServiceRequest) -> Vec<Sent<Span>> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push(Sent {
                    resource: rs.resource.clone().unwrap_or_default(),
                    resource_schema_url: rs.schema_url.clone(),
                    scope: ss.scope.clone().unwrap_or_default(),
                    scope_schema_url: ss.schema_url.clone(),
                    item: span,
                });
            }
        }
    }
    out
}

fn sent_logs(request: ExportLogsServiceRequest) -> Vec<Sent<LogRecord>> {
    let mut out = Vec::new();
    for rl in request.resource_logs {
        for sl in rl.scope_logs {
            for record in sl.log_records {
                out.push(Sent {
                    resource: rl.resource.clone().unwrap_or_default(),
                    resource_schema_url: rl.schema_url.clone(),
                    scope: sl.scope.clone().unwrap_or_default(),
                    scope_schema_url: sl.schema_url.clone(),
                    item: record,
                });
            }
        }
    }
    out
}

fn attribute<'a>(
    attributes: &'a [opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<&'a any_value::Value> {
    attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()
}

fn check_traces(store: &DiskStore, transport: &str, service: &str, sent: Vec<Sent<Span>>) {
    assert_eq!(sent.len(), 6, "{transport}: the script exported six spans");
    let mut by_trace: HashMap<Vec<u8>, Vec<&Sent<Span>>> = HashMap::new();
    for s in &sent {
        by_trace.entry(s.item.trace_id.clone()).or_default().push(s);
    }
    let complete = common::wait_until(common::SEARCHABLE, || {
        by_trace.iter().all(|(id, spans)| store.trace(id).expect("trace").len() == spans.len())
    });
    for (id, spans) in &by_trace {
        let stored = store.trace(id).expect("trace");
        assert!(
            complete,
            "{transport}: trace {} not complete within {:?}: {} of {} spans stored",
            hex::encode(id),
            common::SEARCHABLE,
            stored.len(),
            spans.len()
        );
        for s in spans {
            let record = stored
                .iter()
                .find(|r| r.span.span_id == s.item.span_id)
                .unwrap_or_else(|| panic!("{transport}: span {:?} not stored", s.item.name));
            let name = &s.item.name;
            assert_eq!(record.span, s.item, "{transport}: span {name:?}: stored (left) vs sent (right)");
            assert_eq!(*record.resource, s.resource, "{transport}: resource of span {name:?}");
            assert_eq!(record.resource_schema_url, s.resource_schema_url, "{transport}: {name:?}");
            assert_eq!(*record.scope, s.scope, "{transport}: scope of span {name:?}");
            assert_eq!(record.scope_schema_url, s.scope_schema_url, "{transport}: {name:?}");
        }
    }
    // Independent facts about what export.py produces.
    let root = sent.iter().find(|s| s.item.name == "GET /checkout").expect("root span sent");
    assert_eq!(
        attribute(&root.item.attributes, "transport"),
        Some(&any_value::Value::StringValue(transport.to_string()))
    );
    assert_eq!(root.item.trace_id.len(), 16);
    let by_service = common::spans_of_service(store, service);
    assert_eq!(by_service.len(), 6, "{transport}: spans found by service name");
}

fn check_logs(store: &DiskStore, transport: &str, service: &str, sent: Vec<Sent<LogRecord>>) {
    assert_eq!(sent.len(), 4, "{transport}: the script exported four log records");
    let complete =
        common::wait_until(common::SEARCHABLE, || common::logs_of_service(store, service).len() >= sent.len());
    let stored = common::logs_of_service(store, service);
    assert!(
        complete && stored.len() == sent.len(),
        "{transport}: {} of {} log records stored",
        stored.len(),
        sent.len()
    );
    let seq = |record: &LogRecord| match attribute(&record.attributes, "log.seq") {
        Some(any_value::Value::IntValue(n)) => *n,
        other => panic!("{transport}: log.seq is {other:?}"),
    };
    for s in &sent {
        let n = seq(&s.item);
        let entry = stored
            .iter()
            .find(|e| seq(&e.record) == n)
            .unwrap_or_else(|| panic!("{transport}: log record {n} not stored"));
        assert_eq!(entry.record, s.item, "{transport}: log record {n}: stored (left) vs sent (right)");
        assert_eq!(*entry.resource, s.resource, "{transport}: resource of log record {n}");
        assert_eq!(entry.resource_schema_url, s.resource_schema_url);
        assert_eq!(*entry.scope, s.scope, "{transport}: scope of log record {n}");
        assert_eq!(entry.scope_schema_url, s.scope_schema_url);
        // Records 1-3 were emitted inside spans.
        assert_eq!(entry.record.trace_id.len(), if n <= 3 { 16 } else { 0 }, "{transport}: {n}");
    }
}

fn check_metrics(store: &DiskStore, transport: &str, service: &str, sent: ExportMetricsServiceRequest) {
    let expected = metric_points(&sent.resource_metrics);
    for name in METRICS {
        let want: Vec<FlatPoint> = expected.iter().filter(|p| p.name == name).cloned().collect();
        assert!(!want.is_empty(), "{transport}: the script exported {name}");
        let stored = || metric_points(&common::metrics_of_service(store, name, service).resource_metrics);
        common::wait_until(common::SEARCHABLE, || stored().len() >= want.len());
        common::assert_points_match(&format!("{transport} {name}"), &want, &stored());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_grpc_http_protobuf_and_json() {
    let python = common::python();
    let tmp = tempfile::tempdir().expect("temp dir");
    let obsbox = common::start_obsbox(&tmp.path().join("data")).await;
    let out_dir = tmp.path().join("sent");
    let run_id = format!("{}-{}", std::process::id(), common::now_ns() % 1_000_000_000);
    let script = common::workspace_root().join("tests/python/export.py");
    let command = {
        let mut command = Command::new(&python);
        command
            .arg(&script)
            .arg(&out_dir)
            .arg("--grpc")
            .arg(obsbox.otlp_grpc_addr().expect("an OTLP listener").to_string())
            .arg("--http")
            .arg(obsbox.otlp_http_addr().expect("an OTLP listener").to_string())
            .arg("--run-id")
            .arg(&run_id)
            // Settings from the environment must not change what the SDK does.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .env_remove("OTEL_EXPORTER_OTLP_COMPRESSION")
            .env_remove("OTEL_RESOURCE_ATTRIBUTES")
            .env_remove("OTEL_SERVICE_NAME")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        command
    };
    let output = blocking(move || {
        let mut command = command;
        command.output().expect("run tests/python/export.py")
    })
    .await;
    assert!(
        output.status.success(),
        "export.py failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let store = obsbox.store().expect("a local store");
    blocking(move || {
        for transport in TRANSPORTS {
            let service = format!("py-e2e-{transport}-{run_id}");
            let traces: ExportTraceServiceRequest = read(&out_dir, &format!("{transport}_traces.pb"));
            let logs: ExportLogsServiceRequest = read(&out_dir, &format!("{transport}_logs.pb"));
            let metrics: ExportMetricsServiceRequest = read(&out_dir, &format!("{transport}_metrics.pb"));
            check_traces(&store, transport, &service, sent_spans(traces));
            check_logs(&store, transport, &service, sent_logs(logs));
            check_metrics(&store, transport, &service, metrics);
        }
    })
    .await;
    obsbox.shutdown().await.expect("clean shutdown");
}
