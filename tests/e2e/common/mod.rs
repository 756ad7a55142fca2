//! Helpers shared by the end-to-end tests.
//!
//! # Where things are
//! - Starting obsbox: [`start_obsbox`] (in-process, port 0) and [`spawn_binary`] (the real
//!   binary as a child process, see [`Process`]).
//! - Polling: [`wait_until`], [`wait_until_async`].
//! - Environment: [`rss_bytes`], [`python`].
//! - OTLP requests: [`span`], [`trace_request`], [`log_record`], [`logs_request`],
//!   [`gauge_request`] and the clients [`grpc_clients`], [`post`], [`grpc_raw`].
//! - Reading back: [`spans_of_service`], [`logs_of_service`], [`metric_points`] and
//!   [`assert_points_match`].
//! - A real Prometheus (scrapes, remote-write receiver, PromQL): [`prometheus::Prometheus`].
//! - A webhook receiver keeping the JSON it is sent: [`webhook::WebhookReceiver`].
//! - docker-compose.yml and the files it mounts, run outside Docker: [`compose`]; the Grafana
//!   dashboards' queries: [`dashboards`]; a real RabbitMQ: [`rabbitmq::Rabbit`].
#![allow(dead_code)]

pub mod compose;
pub mod dashboards;
pub mod prometheus;
pub mod rabbitmq;
pub mod webhook;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;
use obsbox::storage::{
    DiskStore, LabelMatcher, LogEntry, LogPredicate, LogQuery, MatchOp, MetricQuery, Reader, SpanPredicate, SpanQuery,
    SpanRecord, TimeRange,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogramDataPoint, Gauge, HistogramDataPoint, Metric, MetricsData, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, SummaryDataPoint, metric,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use tonic::transport::Channel;

/// How long tests wait for acknowledged data to become searchable (the contract says 2 s).
pub const SEARCHABLE: Duration = Duration::from_secs(10);

/// The workspace root (the root package's manifest directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// --- starting obsbox -----------------------------------------------------------------------

/// A configuration for tests: every listener on 127.0.0.1 port 0, data in `data_dir`.
pub fn test_config(data_dir: &Path) -> obsbox::Config {
    let mut config = obsbox::Config::default();
    config.listen.otlp_grpc = "127.0.0.1:0".to_string();
    config.listen.otlp_http = "127.0.0.1:0".to_string();
    config.listen.http = "127.0.0.1:0".to_string();
    config.storage.data_dir = data_dir.to_path_buf();
    config
}

/// Starts obsbox in-process on `data_dir` with [`test_config`].
pub async fn start_obsbox(data_dir: &Path) -> obsbox::Obsbox {
    start_obsbox_with(test_config(data_dir)).await
}

/// Starts obsbox in-process with the given configuration.
pub async fn start_obsbox_with(config: obsbox::Config) -> obsbox::Obsbox {
    obsbox::Obsbox::start(config).await.expect("obsbox starts")
}

/// The three listening addresses of a running obsbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addrs {
    /// OTLP/gRPC.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP.
    pub otlp_http: SocketAddr,
    /// UI, query APIs, health and metrics.
    pub http: SocketAddr,
}

impl Addrs {
    /// Parses `listening otlp_grpc=IP:PORT otlp_http=IP:PORT http=IP:PORT`.
    pub fn parse_listening_line(line: &str) -> Option<Addrs> {
        let mut words = line.split_whitespace();
        if words.next()? != "listening" {
            return None;
        }
        let mut found: HashMap<&str, SocketAddr> = HashMap::new();
        for word in words {
            let (key, value) = word.split_once('=')?;
            found.insert(key, value.parse().ok()?);
        }
        Some(Addrs {
            otlp_grpc: *found.get("otlp_grpc")?,
            otlp_http: *found.get("otlp_http")?,
            http: *found.get("http")?,
        })
    }

    /// The addresses of an in-process obsbox.
    pub fn of(obsbox: &obsbox::Obsbox) -> Addrs {
        Addrs {
            otlp_grpc: obsbox.otlp_grpc_addr().expect("an OTLP listener"),
            otlp_http: obsbox.otlp_http_addr().expect("an OTLP listener"),
            http: obsbox.http_addr(),
        }
    }
}

/// The obsbox binary running as a child process. Killed (SIGKILL) when dropped.
pub struct Process {
    child: Child,
    /// Where it listens.
    pub addrs: Addrs,
    stderr_path: PathBuf,
}

impl Process {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, wait up to `timeout` for a clean exit, SIGKILL after that. Returns whether
    /// the process exited by itself with status 0.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        false
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of what the process wrote on stderr (its log), for failure messages.
    pub fn stderr_tail(&self) -> String {
        tail_of_file(&self.stderr_path, 8 * 1024)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
    }
}

fn tail_of_file(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Starts the `obsbox` binary on `data_dir` with every listener on 127.0.0.1 port 0, plus
/// `extra_args`, and waits for its `listening ...` line. Its stderr goes to
/// `<data_dir>.stderr.log` (appended; so `data_dir` should lie inside a temporary directory).
pub fn spawn_binary(data_dir: &Path, extra_args: &[&str]) -> Process {
    let stderr_path = data_dir.with_extension("stderr.log");
    let stderr = OpenOptions::new().create(true).append(true).open(&stderr_path).expect("open stderr log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_obsbox"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--otlp-grpc-addr", "127.0.0.1:0"])
        .args(["--otlp-http-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0"])
        .args(extra_args)
        .env_remove("OBSBOX_DATA_DIR")
        .env_remove("OBSBOX_OTLP_GRPC_ADDR")
        .env_remove("OBSBOX_OTLP_HTTP_ADDR")
        .env_remove("OBSBOX_HTTP_ADDR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn the obsbox binary");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && line.starts_with("listening ") {
                let _ = tx.send(line);
                sent = true;
            }
            // Keep draining so that the process never blocks on a full pipe.
        }
    });
    let mut process = Process {
        child,
        addrs: Addrs {
            otlp_grpc: ([0, 0, 0, 0], 0).into(),
            otlp_http: ([0, 0, 0, 0], 0).into(),
            http: ([0, 0, 0, 0], 0).into(),
        },
        stderr_path,
    };
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => match Addrs::parse_listening_line(&line) {
            Some(addrs) => process.addrs = addrs,
            None => {
                process.kill();
                panic!("unparsable listening line {line:?}; stderr:\n{}", process.stderr_tail());
            }
        },
        Err(_) => {
            process.kill();
            panic!("obsbox printed no `listening ...` line within 60 s; stderr:\n{}", process.stderr_tail());
        }
    }
    process
}

// --- polling and environment ---------------------------------------------------------------

/// Calls `condition` every 50 ms until it returns true (then true) or `timeout` passed (then
/// false). Blocking: from async code use [`wait_until_async`].
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`wait_until`] on the blocking pool.
pub async fn wait_until_async(timeout: Duration, condition: impl FnMut() -> bool + Send + 'static) -> bool {
    blocking(move || wait_until(timeout, condition)).await
}

/// Runs a blocking closure (store reads) on the blocking pool.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// Resident set size of a process in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The Python interpreter with the OpenTelemetry SDK: `$OBSBOX_TEST_PYTHON`, else
/// `<workspace>/.venv/bin/python`. Panics (the test fails) when neither exists.
pub fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("OBSBOX_TEST_PYTHON") {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "OBSBOX_TEST_PYTHON={} does not exist; run scripts/test.sh, which creates the \
             Python environment and sets it",
            path.display()
        );
        return path;
    }
    let venv = workspace_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with the OpenTelemetry SDK: neither $OBSBOX_TEST_PYTHON is set nor {} \
         exists; run scripts/test.sh (it creates .venv from tests/python/requirements.txt)",
        venv.display()
    );
    venv
}

// --- building OTLP requests ----------------------------------------------------------------

/// Unix time in nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos() as u64
}

/// A key-value pair.
pub fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

/// A string key-value pair.
pub fn str_kv(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_string()))
}

/// An integer key-value pair.
pub fn int_kv(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

/// A 16-byte trace id made of two numbers.
pub fn trace_id(a: u64, b: u64) -> Vec<u8> {
    let mut id = a.to_be_bytes().to_vec();
    id.extend_from_slice(&b.to_be_bytes());
    id
}

/// An 8-byte span id.
pub fn span_id(a: u64) -> Vec<u8> {
    a.to_be_bytes().to_vec()
}

/// A server span of 1 ms starting at `start_ns`, with a few attributes.
pub fn span(trace_id: &[u8], span_id: &[u8], name: &str, start_ns: u64) -> Span {
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        name: name.to_string(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: start_ns,
        end_time_unix_nano: start_ns + 1_000_000,
        attributes: vec![str_kv("http.route", "/test"), int_kv("http.response.status_code", 200)],
        status: Some(Status::default()),
        ..Default::default()
    }
}

/// A resource with `service.name`.
pub fn resource(service: &str) -> Resource {
    Resource { attributes: vec![str_kv("service.name", service)], ..Default::default() }
}

/// A scope named "obsbox-tests".
pub fn scope() -> InstrumentationScope {
    InstrumentationScope { name: "obsbox-tests".to_string(), version: "1.0.0".to_string(), ..Default::default() }
}

/// One resource and scope around `spans`.
pub fn trace_request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(service)),
            scope_spans: vec![ScopeSpans { scope: Some(scope()), spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// An INFO log record with a string body, at `time_ns`.
pub fn log_record(body: &str, time_ns: u64) -> LogRecord {
    LogRecord {
        time_unix_nano: time_ns,
        observed_time_unix_nano: time_ns,
        severity_number: 9,
        severity_text: "INFO".to_string(),
        body: Some(AnyValue { value: Some(any_value::Value::StringValue(body.to_string())) }),
        attributes: vec![str_kv("component", "tests")],
        ..Default::default()
    }
}

/// One resource and scope around `records`.
pub fn logs_request(service: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource(service)),
            scope_logs: vec![ScopeLogs { scope: Some(scope()), log_records: records, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// A double gauge point.
pub fn gauge_point(value: f64, time_ns: u64, attributes: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        time_unix_nano: time_ns,
        value: Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

/// One gauge metric `name` with `points` under one resource and scope.
pub fn gauge_request(service: &str, name: &str, points: Vec<NumberDataPoint>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(service)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics: vec![Metric {
                    name: name.to_string(),
                    unit: "1".to_string(),
                    data: Some(metric::Data::Gauge(Gauge { data_points: points })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

// --- clients -------------------------------------------------------------------------------

/// The three OTLP/gRPC clients on one connection.
pub struct GrpcClients {
    /// Traces.
    pub traces: TraceServiceClient<Channel>,
    /// Logs.
    pub logs: LogsServiceClient<Channel>,
    /// Metrics.
    pub metrics: MetricsServiceClient<Channel>,
}

/// Connects the OTLP/gRPC clients to `addr`.
pub async fn grpc_clients(addr: SocketAddr) -> GrpcClients {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connect to the OTLP/gRPC listener");
    GrpcClients {
        traces: TraceServiceClient::new(channel.clone()),
        logs: LogsServiceClient::new(channel.clone()),
        metrics: MetricsServiceClient::new(channel),
    }
}

/// A plain HTTP POST of `body` to `http://addr{path}` with the given content type; gzipped
/// (and `Content-Encoding: gzip`) when `gzip`. Panics when no response arrives.
pub async fn post(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    gzip: bool,
) -> reqwest::Response {
    try_post(client, addr, path, content_type, body, gzip).await.expect("HTTP request completes")
}

/// [`post`], returning the client's error (for example a connection the server closed before
/// the body was sent) instead of panicking.
pub async fn try_post(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    gzip: bool,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut request = client.post(format!("http://{addr}{path}")).header("content-type", content_type);
    let body = if gzip {
        request = request.header("content-encoding", "gzip");
        gzip_bytes(&body)
    } else {
        body
    };
    request.body(body).send().await
}

/// Gzips `data`.
pub fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// What a raw gRPC call returned.
#[derive(Debug)]
pub struct GrpcReply {
    /// `grpc-status`.
    pub code: tonic::Code,
    /// `grpc-message` (percent-decoded).
    pub message: String,
    /// The response message (without the 5-byte frame header), when there was one.
    pub body: Vec<u8>,
}

/// A gRPC length-prefixed message frame.
pub fn grpc_frame(compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 5);
    frame.push(u8::from(compressed));
    frame.extend_from_slice(&u32::try_from(payload.len()).expect("frame fits").to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The gRPC path of an OTLP Export method: `signal` is "trace", "logs" or "metrics".
pub fn grpc_export_path(signal: &str) -> String {
    let service = match signal {
        "trace" => "trace.v1.TraceService",
        "logs" => "logs.v1.LogsService",
        "metrics" => "metrics.v1.MetricsService",
        other => panic!("unknown signal {other}"),
    };
    format!("/opentelemetry.proto.collector.{service}/Export")
}

/// Sends `body` (already framed, see [`grpc_frame`]) as a unary gRPC call to `path`, with
/// `grpc-encoding: gzip` when `gzip_encoding`. Lets tests send what no well-behaved client
/// would: truncated messages, gzip bombs, oversized frames.
pub async fn grpc_raw(addr: SocketAddr, path: &str, body: Vec<u8>, gzip_encoding: bool) -> GrpcReply {
    use tonic::codegen::Service;
    let mut channel = Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connect to the OTLP/gRPC listener");
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if gzip_encoding {
        request = request.header("grpc-encoding", "gzip");
    }
    let request = request
        .body(tonic::body::Body::new(http_body_util::Full::new(tonic::codegen::Bytes::from(body))))
        .expect("valid request");
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.expect("channel ready");
    let response = match channel.call(request).await {
        Ok(response) => response,
        Err(error) => {
            return GrpcReply {
                code: tonic::Code::Unavailable,
                message: format!("transport error: {error}"),
                body: Vec::new(),
            };
        }
    };
    let (parts, body) = response.into_parts();
    let mut headers = parts.headers.clone();
    let mut data = Vec::new();
    match body.collect().await {
        Ok(collected) => {
            if let Some(trailers) = collected.trailers() {
                headers.extend(trailers.clone());
            }
            data = collected.to_bytes().to_vec();
        }
        Err(error) => {
            if !headers.contains_key("grpc-status") {
                return GrpcReply {
                    code: tonic::Code::Unavailable,
                    message: format!("response body error: {error}"),
                    body: Vec::new(),
                };
            }
        }
    }
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from)
        .unwrap_or(tonic::Code::Unknown);
    let message = headers.get("grpc-message").map(|v| percent_decode(v.as_bytes())).unwrap_or_default();
    let body = if data.len() >= 5 { data[5..].to_vec() } else { Vec::new() };
    GrpcReply { code, message, body }
}

fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// --- reading back --------------------------------------------------------------------------

/// Every span whose resource has `service.name == service`.
pub fn spans_of_service(store: &DiskStore, service: &str) -> Vec<SpanRecord> {
    store
        .find_spans(&SpanQuery {
            predicate: SpanPredicate::Service(service.to_string()),
            time: TimeRange::ALL,
            limit: 10_000_000,
        })
        .expect("find_spans")
}

/// Every log record whose resource has `service.name == service`.
pub fn logs_of_service(store: &DiskStore, service: &str) -> Vec<LogEntry> {
    store
        .find_logs(&LogQuery {
            predicate: LogPredicate::Service(service.to_string()),
            time: TimeRange::ALL,
            limit: 10_000_000,
        })
        .expect("find_logs")
}

/// Every series of metric `name` whose `service.name` label is `service`.
pub fn metrics_of_service(store: &DiskStore, name: &str, service: &str) -> MetricsData {
    store
        .find_metrics(&MetricQuery {
            matchers: vec![
                LabelMatcher { name: "__name__".to_string(), op: MatchOp::Eq, value: name.to_string() },
                LabelMatcher { name: "service.name".to_string(), op: MatchOp::Eq, value: service.to_string() },
            ],
            time: TimeRange::ALL,
        })
        .expect("find_metrics")
}

/// A metric data point together with everything that identifies it, attribute lists sorted by
/// key so that comparisons do not depend on the order a store keeps them in.
#[derive(Clone, Debug, PartialEq)]
pub struct FlatPoint {
    /// Resource attributes, sorted.
    pub resource: Vec<KeyValue>,
    /// Scope name.
    pub scope_name: String,
    /// Scope version.
    pub scope_version: String,
    /// Metric name.
    pub name: String,
    /// Metric description.
    pub description: String,
    /// Metric unit.
    pub unit: String,
    /// "gauge", "sum", "histogram", "exponential_histogram" or "summary".
    pub kind: &'static str,
    /// Aggregation temporality (0 for gauges and summaries).
    pub temporality: i32,
    /// Whether a sum is monotonic.
    pub monotonic: bool,
    /// The point, attributes sorted.
    pub point: FlatValue,
}

/// The data point of a [`FlatPoint`].
#[derive(Clone, Debug, PartialEq)]
pub enum FlatValue {
    /// Gauge or sum point.
    Number(NumberDataPoint),
    /// Histogram point.
    Histogram(HistogramDataPoint),
    /// Exponential histogram point.
    Exponential(ExponentialHistogramDataPoint),
    /// Summary point.
    Summary(SummaryDataPoint),
}

impl FlatPoint {
    /// (name, sorted attributes, time): what identifies a point within one service.
    pub fn key(&self) -> String {
        let (attributes, time) = match &self.point {
            FlatValue::Number(p) => (&p.attributes, p.time_unix_nano),
            FlatValue::Histogram(p) => (&p.attributes, p.time_unix_nano),
            FlatValue::Exponential(p) => (&p.attributes, p.time_unix_nano),
            FlatValue::Summary(p) => (&p.attributes, p.time_unix_nano),
        };
        format!("{} {:?} @{}", self.name, attributes, time)
    }

    /// The point's attributes.
    pub fn attributes(&self) -> &[KeyValue] {
        match &self.point {
            FlatValue::Number(p) => &p.attributes,
            FlatValue::Histogram(p) => &p.attributes,
            FlatValue::Exponential(p) => &p.attributes,
            FlatValue::Summary(p) => &p.attributes,
        }
    }

    /// The value of a gauge or sum point as f64.
    pub fn number(&self) -> Option<f64> {
        use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
        match &self.point {
            FlatValue::Number(p) => match p.value {
                Some(Value::AsDouble(v)) => Some(v),
                Some(Value::AsInt(v)) => Some(v as f64),
                None => None,
            },
            _ => None,
        }
    }
}

fn sorted(mut attributes: Vec<KeyValue>) -> Vec<KeyValue> {
    attributes.sort_by(|a, b| a.key.cmp(&b.key));
    attributes
}

/// Every data point of `data`, flattened.
pub fn metric_points(resource_metrics: &[ResourceMetrics]) -> Vec<FlatPoint> {
    let mut out = Vec::new();
    for rm in resource_metrics {
        let resource = sorted(rm.resource.clone().unwrap_or_default().attributes);
        for sm in &rm.scope_metrics {
            let scope = sm.scope.clone().unwrap_or_default();
            for m in &sm.metrics {
                let base = |kind, temporality, monotonic, point| FlatPoint {
                    resource: resource.clone(),
                    scope_name: scope.name.clone(),
                    scope_version: scope.version.clone(),
                    name: m.name.clone(),
                    description: m.description.clone(),
                    unit: m.unit.clone(),
                    kind,
                    temporality,
                    monotonic,
                    point,
                };
                match &m.data {
                    Some(metric::Data::Gauge(g)) => {
                        for p in &g.data_points {
                            let mut p = p.clone();
                            p.attributes = sorted(p.attributes);
                            out.push(base("gauge", 0, false, FlatValue::Number(p)));
                        }
                    }
                    Some(metric::Data::Sum(s)) => {
                        for p in &s.data_points {
                            let mut p = p.clone();
                            p.attributes = sorted(p.attributes);
                            out.push(base("sum", s.aggregation_temporality, s.is_monotonic, FlatValue::Number(p)));
                        }
                    }
                    Some(metric::Data::Histogram(h)) => {
                        for p in &h.data_points {
                            let mut p = p.clone();
                            p.attributes = sorted(p.attributes);
                            out.push(base("histogram", h.aggregation_temporality, false, FlatValue::Histogram(p)));
                        }
                    }
                    Some(metric::Data::ExponentialHistogram(h)) => {
                        for p in &h.data_points {
                            let mut p = p.clone();
                            p.attributes = sorted(p.attributes);
                            out.push(base(
                                "exponential_histogram",
                                h.aggregation_temporality,
                                false,
                                FlatValue::Exponential(p),
                            ));
                        }
                    }
                    Some(metric::Data::Summary(s)) => {
                        for p in &s.data_points {
                            let mut p = p.clone();
                            p.attributes = sorted(p.attributes);
                            out.push(base("summary", 0, false, FlatValue::Summary(p)));
                        }
                    }
                    None => {}
                }
            }
        }
    }
    out
}

/// Asserts that `stored` holds exactly the points of `expected` (each one equal field by field,
/// no extra and no missing point).
pub fn assert_points_match(context: &str, expected: &[FlatPoint], stored: &[FlatPoint]) {
    let mut by_key: HashMap<String, Vec<&FlatPoint>> = HashMap::new();
    for point in stored {
        by_key.entry(point.key()).or_default().push(point);
    }
    for want in expected {
        let candidates = by_key.get(&want.key()).cloned().unwrap_or_default();
        assert!(
            !candidates.is_empty(),
            "{context}: point {} not stored; stored keys: {:#?}",
            want.key(),
            stored.iter().map(FlatPoint::key).collect::<Vec<_>>()
        );
        if !candidates.contains(&want) {
            assert_eq!(candidates[0], want, "{context}: stored point (left) differs from the exported one (right)");
        }
    }
    assert_eq!(
        stored.len(),
        expected.len(),
        "{context}: stored {} points, exported {}; stored: {:#?}",
        stored.len(),
        expected.len(),
        stored.iter().map(FlatPoint::key).collect::<Vec<_>>()
    );
}

/// A loopback port for a child process to listen on, handed out once per test process. It is
/// free now and outside the kernel's ephemeral range, so nothing that binds port 0 or connects
/// out elsewhere in the run can take it between this check and the child's bind (a demo service
/// of the compose stack lost its port that way once).
pub fn free_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (20_000u16, ephemeral_low.max(21_000));
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Different test processes start at different places of the range.
    let _ = NEXT.compare_exchange(0, low + (std::process::id() % 997) as u16 * 8, Ordering::SeqCst, Ordering::SeqCst);
    for _ in low..high {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = low + port.wrapping_sub(low) % (high - low);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}
