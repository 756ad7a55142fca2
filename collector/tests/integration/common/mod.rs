//! Shared helpers of the collector's integration tests: test writers, sample requests, servers
//! on 127.0.0.1:0, and metric lookups.
#![allow(dead_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes};
use flate2::Compression;
use flate2::write::GzEncoder;
use obsbox_collector::{Collector, Limits};
use obsbox_storage::{Batch, StoreError, WriteFuture, WriteReceipt, Writer};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// ---- writers ----

/// Records every batch it is given.
#[derive(Default)]
pub struct RecordingWriter {
    pub batches: Mutex<Vec<Batch>>,
}

impl RecordingWriter {
    pub fn items(&self) -> usize {
        self.batches.lock().expect("lock").iter().map(Batch::item_count).sum()
    }

    pub fn batch_count(&self) -> usize {
        self.batches.lock().expect("lock").len()
    }
}

impl Writer for RecordingWriter {
    fn write(&self, batch: Batch) -> WriteFuture {
        let mut batches = self.batches.lock().expect("lock");
        batches.push(batch);
        let seq = batches.len() as u64;
        Box::pin(async move { Ok(WriteReceipt { seq }) })
    }
}

/// Fails every write with the error `make` returns.
pub struct FailingWriter(pub fn() -> StoreError);

impl Writer for FailingWriter {
    fn write(&self, _batch: Batch) -> WriteFuture {
        let err = (self.0)();
        Box::pin(async move { Err(err) })
    }
}

/// Holds every write until the test adds permits to `gate`.
pub struct GateWriter {
    pub gate: Arc<tokio::sync::Semaphore>,
}

impl Writer for GateWriter {
    fn write(&self, _batch: Batch) -> WriteFuture {
        let gate = Arc::clone(&self.gate);
        Box::pin(async move {
            let permit = gate.acquire().await.map_err(|_| StoreError::Unavailable("gate closed".into()))?;
            permit.forget();
            Ok(WriteReceipt { seq: 1 })
        })
    }
}

pub fn overloaded() -> StoreError {
    StoreError::Overloaded { retry_after: std::time::Duration::from_secs(2) }
}

pub fn unavailable() -> StoreError {
    StoreError::Unavailable("disk full".into())
}

pub fn internal() -> StoreError {
    StoreError::Index("secret internal detail".into())
}

// ---- collectors and servers ----

pub struct TestCollector {
    pub collector: Collector,
    pub registry: prometheus::Registry,
}

pub fn collector(writer: Arc<dyn Writer>, limits: Limits) -> TestCollector {
    let registry = prometheus::Registry::new();
    let collector = Collector::new(writer, limits, &registry).expect("collector");
    TestCollector { collector, registry }
}

/// A server on 127.0.0.1:0; `stop` shuts it down and waits for it to finish.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), obsbox_collector::CollectorError>>>,
}

impl Server {
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ends cleanly");
        }
    }
}

pub async fn start_grpc(collector: Collector) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(obsbox_collector::serve_grpc(listener, collector, async move {
        let _ = rx.await;
    }));
    Server { addr, stop: Some(tx), task: Some(task) }
}

pub async fn start_http(collector: Collector) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(obsbox_collector::serve_http(listener, collector, async move {
        let _ = rx.await;
    }));
    Server { addr, stop: Some(tx), task: Some(task) }
}

// ---- sample requests ----

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn resource() -> Option<Resource> {
    Some(Resource { attributes: vec![kv("service.name", Value::StringValue("test".into()))], ..Default::default() })
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope { name: "tests".into(), version: "1".into(), ..Default::default() })
}

/// `valid` good spans and `invalid` spans with a 15-byte trace id.
pub fn traces(valid: usize, invalid: usize) -> ExportTraceServiceRequest {
    let span = |i: usize, trace_len: usize| Span {
        trace_id: vec![0xab; trace_len],
        span_id: (i as u64 + 1).to_be_bytes().to_vec(),
        name: format!("op-{i}"),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_500_000_000,
        attributes: vec![kv("http.route", Value::StringValue("/cart".into())), kv("n", Value::IntValue(i as i64))],
        ..Default::default()
    };
    let spans = (0..valid).map(|i| span(i, 16)).chain((0..invalid).map(|i| span(valid + i, 15))).collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans { scope: scope(), spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// `valid` good log records and `invalid` ones with a 3-byte span id.
pub fn logs(valid: usize, invalid: usize) -> ExportLogsServiceRequest {
    let record = |i: usize, span_len: usize| LogRecord {
        time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
        severity_number: 9,
        severity_text: "INFO".into(),
        body: Some(AnyValue { value: Some(Value::StringValue(format!("hello {i}"))) }),
        trace_id: vec![0xcd; 16],
        span_id: vec![0x01; span_len],
        ..Default::default()
    };
    let log_records = (0..valid).map(|i| record(i, 8)).chain((0..invalid).map(|i| record(valid + i, 3))).collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs { scope: scope(), log_records, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// `valid` good gauge points and `invalid` ones with an attribute value over 64 KiB.
pub fn metrics(valid: usize, invalid: usize) -> ExportMetricsServiceRequest {
    let point = |i: usize, big: bool| NumberDataPoint {
        time_unix_nano: 1_700_000_000_000_000_000 + i as u64,
        value: Some(number_data_point::Value::AsInt(i as i64)),
        attributes: if big { vec![kv("blob", Value::StringValue("x".repeat(70 * 1024)))] } else { vec![] },
        ..Default::default()
    };
    let data_points = (0..valid).map(|i| point(i, false)).chain((0..invalid).map(|i| point(valid + i, true))).collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(),
                metrics: vec![Metric {
                    name: "temperature".into(),
                    data: Some(Data::Gauge(Gauge { data_points })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).expect("write to vec");
    enc.finish().expect("finish gzip")
}

/// A gzip stream of `members` concatenated members, each `member_mib` MiB of zeros.
pub fn gzip_bomb(member_mib: usize, members: usize) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..member_mib {
        enc.write_all(&zeros).expect("write to vec");
    }
    let member = enc.finish().expect("finish gzip");
    member.repeat(members)
}

// ---- metrics ----

/// Value of the counter/gauge `name` with exactly these labels (0 when absent).
pub fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().to_vec())
        .filter(|m| {
            let pairs = m.get_label();
            pairs.len() == labels.len()
                && labels.iter().all(|(k, v)| pairs.iter().any(|p| p.name() == *k && p.value() == *v))
        })
        // Only one of these is set for a given metric; the others are zero.
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value() + m.get_histogram().get_sample_count() as f64)
        .sum()
}

// ---- a raw gRPC client codec, to send bytes no generated client would ----

#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// `google.rpc.Status` and `google.rpc.RetryInfo`, to read error details.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// The retry delay a gRPC status carries in a `google.rpc.RetryInfo` detail, if any.
pub fn retry_delay(status: &tonic::Status) -> Option<ProtoDuration> {
    use prost::Message as _;
    let rpc = RpcStatus::decode(status.details()).ok()?;
    rpc.details
        .iter()
        .find(|d| d.type_url == "type.googleapis.com/google.rpc.RetryInfo")
        .and_then(|d| RetryInfo::decode(d.value.as_slice()).ok())
        .and_then(|info| info.retry_delay)
}
