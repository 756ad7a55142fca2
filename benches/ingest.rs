//! Ingest benchmark: obsbox in-process, driven over real OTLP/gRPC by concurrent clients.
//!
//! ```text
//! cargo bench --bench ingest                      # spans, logs, metrics, 20 s each, 4 clients
//! cargo bench --bench ingest -- 30 4 spans        # [seconds] [clients] [spans|logs|metrics|all]
//! cargo bench --bench ingest -- 20 4 spans half   # then again, paced at half the rate just measured
//! cargo bench --bench ingest -- 20 4 spans 20000  # paced at 20k items/s in all (no saturation run)
//! BENCH_SECS=30 BENCH_CLIENTS=4 BENCH_SIGNAL=logs BENCH_PACE=half cargo bench --bench ingest
//! BENCH_INDEX_MEMORY_MIB=128 cargo bench --bench ingest -- 20 4 spans   # storage.index_memory_bytes
//! BENCH_TRANSPORT=http cargo bench --bench ingest -- 20 4 spans    # OTLP/HTTP protobuf (or http-gzip)
//! ```
//!
//! Paced runs measure ack latency below saturation (the brief's p99 is at half of the maximum
//! load): each client sends on a fixed schedule, and a request's latency counts from the instant
//! it was due, not from when it left, so a slow answer that delays the next sends is charged to
//! them too (no coordinated omission).
//!
//! Per signal:
//! 1. Pre-generates a pool of distinct, deterministic (seeded xorshift) OTLP export requests of
//!    512 items each: ~500 B spans (traces of 5-50 spans over 6 services, ~10 semantic-convention
//!    attributes per span) or ~200 B log records (body text, severity, 2-3 attributes, trace
//!    context). Each request is sent with its trace ids XOR-ed with a per-(client, round) key, so
//!    every trace id sent in a run is unique while the pool stays small.
//!    Metrics: 128 consecutive 10 s export intervals of an 18-instance fleet (~525 points of every
//!    type per request, cumulative, see `payload`). Each client is its own fleet (the tag at the
//!    end of every `service.instance.id` is rewritten in the encoded bytes), and each pass over
//!    the pool moves every timestamp (start times included) one pool length later, so a series'
//!    points keep increasing in time; counters restart at each pass, as after a process restart.
//! 2. Baseline: prost decode of the same encoded requests on one thread ("the limit").
//! 3. Starts obsbox (`Obsbox::start`, data dir in a tempdir, default store config: group-commit
//!    fsync) on its own runtime and drives it with N clients, each a tonic client on its own
//!    connection sending pre-encoded bytes (or, with `BENCH_TRANSPORT=http|http-gzip`, an HTTP
//!    client posting them to the OTLP/HTTP listener, gzipped per request or not), the next
//!    request as soon as the previous one is acknowledged. RESOURCE_EXHAUSTED / UNAVAILABLE
//!    (HTTP 429 / 503) are counted as refusals (not ingested) and retried after 50 ms.
//! 4. Measures ack latency, RSS and CPU of the whole process (the clients are in it too),
//!    per-thread CPU, time from ack to searchable (under load and after it), time until
//!    everything is searchable (`StoreStats::pending_items` 0), bytes on disk per item and the
//!    store's stats. For metrics
//!    "searchable" means returned by `Reader::find_metrics`: a probe's request (its own fleet tag
//!    and time window) counts once every one of its points is returned.
//! 5. Prints a result table. Bounded in time: duration + setup + bounded waits.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use obsbox::storage::{
    LabelMatcher, LogPredicate, LogQuery, MatchOp, MetricQuery, Reader, Signal, SpanPredicate, SpanQuery, StoreStats,
    TimeRange,
};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};

/// Distinct requests generated per signal (~16 MiB of spans, ~13 MiB of logs).
const SPAN_POOL: usize = 64;
const LOG_POOL: usize = 128;
/// Consecutive export intervals generated for metrics (~9 MiB).
const METRIC_POOL: usize = 128;
/// Where the metric pool's first interval lies before the start of the run.
const METRIC_BASE_AGO_NS: u64 = 2 * 24 * 3600 * 1_000_000_000;
const REFUSAL_BACKOFF: Duration = Duration::from_millis(50);
const PROBE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Fleet tags of metric probes start here (clients use 0, 1, ...).
const PROBE_FLEET: u32 = 0x80_0000;

// Targets from the brief (2-core machine).
const TARGET_SPANS_PER_S: f64 = 100_000.0;
const TARGET_LOGS_PER_S: f64 = 250_000.0;
const TARGET_SEARCHABLE_S: f64 = 2.0;
const TARGET_P99_MS: f64 = 50.0;
const TARGET_RSS_MIB: f64 = 256.0;
const TARGET_BYTES_PER_SPAN: f64 = 60.0;
const TARGET_LOG_RATIO: f64 = 0.35;

// --- arguments -----------------------------------------------------------------------------

struct Args {
    secs: u64,
    clients: usize,
    signals: Vec<Signal>,
    pace: Option<Pace>,
    transport: Transport,
}

/// How the clients send: OTLP/gRPC (the default), or OTLP/HTTP with protobuf bodies, gzipped
/// by the client or not (`BENCH_TRANSPORT=grpc|http|http-gzip`).
#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Grpc,
    Http,
    HttpGzip,
}

#[derive(Clone, Copy)]
enum Pace {
    /// A saturation run first, then one at half of its durable + searchable rate.
    HalfOfMax,
    /// Items per second, all clients together.
    Fixed(f64),
}

/// `None` when started neither by `cargo bench` nor with arguments: `cargo test --benches`
/// (or `--all-targets`) runs this binary without `--bench`, and must not run a benchmark.
fn parse_args() -> anyhow::Result<Option<Args>> {
    // `cargo bench` appends `--bench`; flags are ignored, positionals are [secs] [clients] [signal].
    let all: Vec<String> = std::env::args().skip(1).collect();
    let positional: Vec<String> = all.iter().filter(|a| !a.starts_with("--")).cloned().collect();
    let by_env =
        ["BENCH_SECS", "BENCH_CLIENTS", "BENCH_SIGNAL", "BENCH_PACE"].iter().any(|v| std::env::var_os(v).is_some());
    if !all.iter().any(|a| a == "--bench") && positional.is_empty() && !by_env {
        return Ok(None);
    }
    let get = |i: usize, env: &str| positional.get(i).cloned().or_else(|| std::env::var(env).ok());
    let secs = get(0, "BENCH_SECS").map_or(Ok(20), |s| s.parse()).context("duration (seconds)")?;
    let clients = get(1, "BENCH_CLIENTS").map_or(Ok(4), |s| s.parse()).context("clients")?;
    let signals = match get(2, "BENCH_SIGNAL").as_deref().unwrap_or("all") {
        "spans" | "traces" => vec![Signal::Traces],
        "logs" => vec![Signal::Logs],
        "metrics" => vec![Signal::Metrics],
        "all" => vec![Signal::Traces, Signal::Logs, Signal::Metrics],
        other => anyhow::bail!("signal must be spans, logs, metrics or all, not {other:?}"),
    };
    let pace = match get(3, "BENCH_PACE").as_deref() {
        None => None,
        Some("half") => Some(Pace::HalfOfMax),
        Some(n) => match n.parse::<f64>() {
            Ok(r) if r > 0.0 && r.is_finite() => Some(Pace::Fixed(r)),
            _ => anyhow::bail!("pace must be `half` or items per second, not {n:?}"),
        },
    };
    let transport = match std::env::var("BENCH_TRANSPORT").as_deref().unwrap_or("grpc") {
        "grpc" => Transport::Grpc,
        "http" => Transport::Http,
        "http-gzip" => Transport::HttpGzip,
        other => anyhow::bail!("BENCH_TRANSPORT must be grpc, http or http-gzip, not {other:?}"),
    };
    anyhow::ensure!(secs > 0 && clients > 0, "duration and clients must be positive");
    Ok(Some(Args { secs, clients, signals, pace, transport }))
}

// Deterministic OTLP payloads, shared with benches/query.rs.
mod payload;
use payload::*;

// --- the pool of encoded requests ----------------------------------------------------------

/// One encoded request and the offsets of the fields a client rewrites: the 16-byte trace ids
/// (spans, logs) or the fleet tags and 8-byte timestamps (metrics).
struct Encoded {
    bytes: Vec<u8>,
    /// Spans, log records or data points.
    items: usize,
    trace_id_offsets: Vec<usize>,
    fleet_tag_offsets: Vec<usize>,
    time_offsets: Vec<usize>,
    /// Smallest and largest point time.
    time_span: (u64, u64),
}

impl Encoded {
    /// The metrics request as fleet `fleet` sends it, every timestamp moved by `shift_ns`.
    fn patched_metrics(&self, fleet: u32, shift_ns: i64) -> Bytes {
        let mut v = self.bytes.clone();
        let tag = format!("{fleet:0w$x}", w = FLEET_TAG_LEN);
        for &off in &self.fleet_tag_offsets {
            v[off..off + FLEET_TAG_LEN].copy_from_slice(tag.as_bytes());
        }
        for &off in &self.time_offsets {
            let t = u64::from_le_bytes(v[off..off + 8].try_into().expect("8 bytes"));
            v[off..off + 8].copy_from_slice(&t.wrapping_add_signed(shift_ns).to_le_bytes());
        }
        Bytes::from(v)
    }

    /// The request with every trace id's first 8 bytes XOR-ed with `key` (all spans of a trace
    /// keep sharing their trace id; parent/child links use span ids, which are untouched).
    fn patched(&self, key: u64) -> Bytes {
        let mut v = self.bytes.clone();
        let k = key.to_le_bytes();
        for &off in &self.trace_id_offsets {
            for (b, x) in v[off..off + 8].iter_mut().zip(k) {
                *b ^= x;
            }
        }
        Bytes::from(v)
    }
}

struct Pool {
    signal: Signal,
    batches: Vec<Encoded>,
}

impl Pool {
    fn generate(signal: Signal, n: usize) -> Pool {
        let now = now_ns();
        if signal == Signal::Metrics {
            let mut fleet = MetricFleet::new(0xB0B5_0000 + (2 << 32), now - METRIC_BASE_AGO_NS);
            let ids = fleet.instance_ids();
            let base = now - METRIC_BASE_AGO_NS;
            let batches = (0..n as u64)
                .map(|k| {
                    // Every point of an export carries the export's time.
                    let t = base + k * METRIC_INTERVAL_NS;
                    let req = fleet.next_request();
                    let items = req
                        .resource_metrics
                        .iter()
                        .flat_map(|r| &r.scope_metrics)
                        .flat_map(|s| &s.metrics)
                        .map(obsbox::storage::metric_point_count)
                        .sum();
                    let bytes = req.encode_to_vec();
                    let mut fleet_tag_offsets = Vec::new();
                    for id in &ids {
                        let mut from = 0;
                        while let Some(p) = find(&bytes[from..], id.as_bytes()) {
                            fleet_tag_offsets.push(from + p + id.len() - FLEET_TAG_LEN);
                            from += p + id.len();
                        }
                    }
                    let mut time_offsets = Vec::new();
                    metric_time_offsets(&bytes, &mut time_offsets);
                    let time_span = (t, t);
                    Encoded { bytes, items, trace_id_offsets: Vec::new(), fleet_tag_offsets, time_offsets, time_span }
                })
                .collect();
            return Pool { signal, batches };
        }
        let batches = (0..n)
            .map(|b| {
                let seed = 0xB0B5_0000 + b as u64 + if signal == Signal::Logs { 1 << 32 } else { 0 };
                let (bytes, path): (Vec<u8>, &[u32]) = match signal {
                    Signal::Logs => (log_batch(seed, now).encode_to_vec(), &[1, 2, 2, 9]),
                    _ => (span_batch(seed, now).encode_to_vec(), &[1, 2, 2, 1]),
                };
                let mut trace_id_offsets = Vec::new();
                field_offsets(&bytes, 0, path, &mut trace_id_offsets);
                let (fleet_tag_offsets, time_offsets) = (Vec::new(), Vec::new());
                Encoded {
                    bytes,
                    items: ITEMS_PER_BATCH,
                    trace_id_offsets,
                    fleet_tag_offsets,
                    time_offsets,
                    time_span: (0, 0),
                }
            })
            .collect();
        Pool { signal, batches }
    }

    fn bytes(&self) -> usize {
        self.batches.iter().map(|b| b.bytes.len()).sum()
    }

    fn items(&self) -> usize {
        self.batches.iter().map(|b| b.items).sum()
    }

    /// Time covered by one pass over the pool (metrics).
    fn window_ns(&self) -> i64 {
        (self.batches.len() as u64 * METRIC_INTERVAL_NS) as i64
    }

    /// The request client `client` sends as its `n`th: for spans and logs with unique trace ids,
    /// for metrics as the client's own fleet, `n / pool size` pool windows later.
    fn body(&self, client: u64, n: usize) -> Bytes {
        let len = self.batches.len();
        let batch = &self.batches[n % len];
        match self.signal {
            Signal::Metrics => batch.patched_metrics(client as u32, (n / len) as i64 * self.window_ns()),
            _ => batch.patched(patch_key(client, (n / len) as u64)),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Calls `f(field number, wire type, start, end)` for every field of one protobuf message, with
/// the byte range of the field's value; stops at malformed input.
fn for_each_field(b: &[u8], mut f: impl FnMut(u64, u64, usize, usize)) {
    let mut pos = 0;
    while pos < b.len() {
        let Some(key) = read_varint(b, &mut pos) else {
            return;
        };
        let start = pos;
        let end = match key & 7 {
            0 => {
                if read_varint(b, &mut pos).is_none() {
                    return;
                }
                pos
            }
            1 => pos + 8,
            5 => pos + 4,
            2 => {
                let Some(len) = read_varint(b, &mut pos) else {
                    return;
                };
                if pos + len as usize > b.len() {
                    return;
                }
                f(key >> 3, 2, pos, pos + len as usize);
                pos += len as usize;
                continue;
            }
            _ => return,
        };
        if end > b.len() {
            return;
        }
        f(key >> 3, key & 7, start, end);
        pos = end;
    }
}

/// Offsets of every data point's start time and time and every exemplar's time (all fixed64)
/// in an encoded `ExportMetricsServiceRequest`.
fn metric_time_offsets(req: &[u8], out: &mut Vec<usize>) {
    /// Calls `f(value, offset)` for every length-delimited field `want` of the message `b`.
    fn nested(b: &[u8], base: usize, want: u64, f: &mut dyn FnMut(&[u8], usize)) {
        for_each_field(b, |n, w, s, e| {
            if n == want && w == 2 {
                f(&b[s..e], base + s);
            }
        });
    }
    nested(req, 0, 1, &mut |rm, at| {
        nested(rm, at, 2, &mut |sm, at| {
            nested(sm, at, 2, &mut |metric, at| {
                // gauge 5, sum 7, histogram 9, exponential histogram 10, summary 11; the field
                // holding a point's exemplars differs by point type (summaries have none).
                for (kind, exemplars) in [(5, 5), (7, 5), (9, 8), (10, 11), (11, 0)] {
                    nested(metric, at, kind, &mut |data, at| {
                        nested(data, at, 1, &mut |point, point_at| {
                            for_each_field(point, |n, w, s, e| {
                                if (n == 2 || n == 3) && w == 1 {
                                    out.push(point_at + s);
                                } else if n == exemplars && w == 2 {
                                    for_each_field(&point[s..e], |n, w, es, _| {
                                        if n == 2 && w == 1 {
                                            out.push(point_at + s + es);
                                        }
                                    });
                                }
                            });
                        });
                    });
                }
            });
        });
    });
}

fn read_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Offsets (from `base`) of the 16-byte length-delimited fields reached by following the
/// field numbers in `path` through nested messages.
fn field_offsets(b: &[u8], base: usize, path: &[u32], out: &mut Vec<usize>) {
    let mut pos = 0;
    while pos < b.len() {
        let Some(key) = read_varint(b, &mut pos) else {
            return;
        };
        match key & 7 {
            0 => {
                if read_varint(b, &mut pos).is_none() {
                    return;
                }
            }
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let Some(len) = read_varint(b, &mut pos) else {
                    return;
                };
                let (start, end) = (pos, pos + len as usize);
                if end > b.len() {
                    return;
                }
                if key >> 3 == u64::from(path[0]) {
                    if path.len() > 1 {
                        field_offsets(&b[start..end], base + start, &path[1..], out);
                    } else if len == 16 {
                        out.push(base + start);
                    }
                }
                pos = end;
            }
            _ => return,
        }
    }
}

fn patch_key(client: u64, round: u64) -> u64 {
    splitmix(client << 40 ^ round ^ 0x5EED) | 1
}

/// Decode-only throughput of the pool on this thread: items per second.
fn decode_baseline(pool: &Pool, budget: Duration) -> f64 {
    let started = Instant::now();
    let mut items = 0usize;
    while started.elapsed() < budget {
        for b in &pool.batches {
            let n = match pool.signal {
                Signal::Metrics => ExportMetricsServiceRequest::decode(&b.bytes[..])
                    .map(|r| {
                        r.resource_metrics
                            .iter()
                            .flat_map(|r| &r.scope_metrics)
                            .flat_map(|s| &s.metrics)
                            .map(obsbox::storage::metric_point_count)
                            .sum()
                    })
                    .unwrap_or(0),
                Signal::Logs => ExportLogsServiceRequest::decode(&b.bytes[..])
                    .map(|r| r.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len()).sum())
                    .unwrap_or(0),
                _ => ExportTraceServiceRequest::decode(&b.bytes[..])
                    .map(|r| r.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum())
                    .unwrap_or(0),
            };
            items += std::hint::black_box(n);
        }
    }
    items as f64 / started.elapsed().as_secs_f64()
}

// --- the gRPC client -----------------------------------------------------------------------

/// Sends pre-encoded message bytes and returns the response bytes, so the clients spend no CPU
/// on encoding (they share the machine with the server).
#[derive(Clone, Copy)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

fn export_path(signal: Signal) -> http::uri::PathAndQuery {
    match signal {
        Signal::Logs => {
            http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.logs.v1.LogsService/Export")
        }
        Signal::Metrics => {
            http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")
        }
        _ => http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.trace.v1.TraceService/Export"),
    }
}

/// A client's connection: a gRPC channel, or an HTTP/1.1 client of the OTLP/HTTP listener.
enum Conn {
    Grpc(tonic::client::Grpc<Channel>),
    Http { client: reqwest::Client, base: String, gzip: bool },
}

/// Exports one request; Ok(number of items the server rejected in partial success). HTTP
/// answers map to the gRPC codes they stand for (429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE), so
/// refusals are counted and retried the same way over both transports.
async fn export(conn: &mut Conn, signal: Signal, body: Bytes) -> Result<u64, tonic::Status> {
    let response = match conn {
        Conn::Grpc(grpc) => {
            grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("channel not ready: {e}")))?;
            grpc.unary(tonic::Request::new(body), export_path(signal), RawCodec).await?.into_inner()
        }
        Conn::Http { client, base, gzip } => {
            let path = match signal {
                Signal::Logs => "logs",
                Signal::Metrics => "metrics",
                _ => "traces",
            };
            let mut request =
                client.post(format!("{base}/v1/{path}")).header(http::header::CONTENT_TYPE, "application/x-protobuf");
            let body = if *gzip {
                request = request.header(http::header::CONTENT_ENCODING, "gzip");
                let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut z, &body).map_err(|e| tonic::Status::internal(e.to_string()))?;
                Bytes::from(z.finish().map_err(|e| tonic::Status::internal(e.to_string()))?)
            } else {
                body
            };
            let answer = request.body(body).send().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let status = answer.status();
            let bytes = answer.bytes().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            match status.as_u16() {
                200 => bytes,
                429 => return Err(tonic::Status::resource_exhausted("HTTP 429")),
                503 => return Err(tonic::Status::unavailable("HTTP 503")),
                code => {
                    return Err(tonic::Status::internal(format!("HTTP {code}: {}", String::from_utf8_lossy(&bytes))));
                }
            }
        }
    };
    let rejected = match signal {
        Signal::Logs => ExportLogsServiceResponse::decode(response)
            .map_err(|e| tonic::Status::internal(format!("bad response: {e}")))?
            .partial_success
            .map_or(0, |p| p.rejected_log_records as u64),
        Signal::Metrics => ExportMetricsServiceResponse::decode(response)
            .map_err(|e| tonic::Status::internal(format!("bad response: {e}")))?
            .partial_success
            .map_or(0, |p| p.rejected_data_points as u64),
        _ => ExportTraceServiceResponse::decode(response)
            .map_err(|e| tonic::Status::internal(format!("bad response: {e}")))?
            .partial_success
            .map_or(0, |p| p.rejected_spans as u64),
    };
    Ok(rejected)
}

/// A connection of its own for one client: each HTTP client keeps one keep-alive connection.
async fn connect(obsbox: &obsbox::Obsbox, transport: Transport) -> anyhow::Result<Conn> {
    if transport == Transport::Grpc {
        let addr = obsbox.otlp_grpc_addr().context("no OTLP/gRPC listener")?;
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .context("connecting to the OTLP/gRPC listener")?;
        return Ok(Conn::Grpc(tonic::client::Grpc::new(channel)));
    }
    let addr = obsbox.otlp_http_addr().context("no OTLP/HTTP listener")?;
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1)
        .build()
        .context("building the HTTP client")?;
    Ok(Conn::Http { client, base: format!("http://{addr}"), gzip: transport == Transport::HttpGzip })
}

#[derive(Default)]
struct ClientOutcome {
    acked_items: u64,
    rejected_items: u64,
    requests: u64,
    refused: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

async fn run_client(
    c: usize,
    clients: usize,
    mut conn: Conn,
    pool: Arc<Pool>,
    deadline: Instant,
    acked: Arc<AtomicU64>,
    pace: Option<f64>,
) -> ClientOutcome {
    let mut out = ClientOutcome::default();
    let n = pool.batches.len();
    let mut next = c * n / clients;
    // Paced: this client's share of the rate, its first send offset so clients do not send in step.
    let mut schedule = pace.map(|rate| {
        let period = Duration::from_secs_f64(pool.items() as f64 / n as f64 * clients as f64 / rate);
        let first = tokio::time::Instant::now() + period.mul_f64(c as f64 / clients as f64);
        let mut iv = tokio::time::interval_at(first, period);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        iv
    });
    let mut due: Option<Instant> = None;
    while Instant::now() < deadline {
        let body = pool.body(c as u64, next);
        let items = pool.batches[next % n].items as u64;
        if let Some(iv) = schedule.as_mut().filter(|_| due.is_none()) {
            due = Some(iv.tick().await.into_std());
            if Instant::now() >= deadline {
                break;
            }
        }
        let started = due.unwrap_or_else(Instant::now);
        match export(&mut conn, pool.signal, body).await {
            Ok(rejected) => {
                let ok = items - rejected.min(items);
                out.latencies_us.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                out.requests += 1;
                out.acked_items += ok;
                out.rejected_items += rejected;
                acked.fetch_add(ok, Ordering::Relaxed);
                next += 1;
                due = None;
            }
            Err(status) if matches!(status.code(), tonic::Code::ResourceExhausted | tonic::Code::Unavailable) => {
                out.refused += 1;
                tokio::time::sleep(REFUSAL_BACKOFF).await;
            }
            Err(status) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                tokio::time::sleep(REFUSAL_BACKOFF).await;
                next += 1;
                due = None;
            }
        }
    }
    out
}

/// Sends one uniquely keyed request and polls the store until its first trace id is found.
/// Returns (ack latency, delay from ack to searchable), or an error text.
async fn probe(
    conn: &mut Conn,
    pool: &Pool,
    store: Arc<obsbox::storage::DiskStore>,
    n: u64,
) -> Result<(Duration, Duration), String> {
    let batch = &pool.batches[n as usize % pool.batches.len()];
    let signal = pool.signal;
    // Metrics: the probe's own fleet in its own time window (before the clients' data, so
    // the read touches no block of theirs), found when every point comes back.
    let (fleet, shift) = (PROBE_FLEET + n as u32, -(n as i64 + 1) * 2 * pool.window_ns());
    let (body, trace_id) = if signal == Signal::Metrics {
        (batch.patched_metrics(fleet, shift), Vec::new())
    } else {
        let body = batch.patched(patch_key(0xFFFF, n));
        let off = *batch.trace_id_offsets.first().ok_or("no trace id in batch")?;
        let trace_id = body[off..off + 16].to_vec();
        (body, trace_id)
    };
    let metric_query = MetricQuery {
        matchers: vec![LabelMatcher {
            name: "service.instance.id".into(),
            op: MatchOp::Re,
            value: format!(".*-{fleet:0w$x}", w = FLEET_TAG_LEN),
        }],
        time: TimeRange {
            start_ns: batch.time_span.0.wrapping_add_signed(shift),
            end_ns: batch.time_span.1.wrapping_add_signed(shift) + 1,
        },
    };
    let items = batch.items;
    let sent = Instant::now();
    loop {
        match export(conn, signal, body.clone()).await {
            Ok(_) => break,
            Err(s) if matches!(s.code(), tonic::Code::ResourceExhausted | tonic::Code::Unavailable) => {
                if sent.elapsed() > PROBE_TIMEOUT {
                    return Err("probe refused for too long".into());
                }
                tokio::time::sleep(REFUSAL_BACKOFF).await;
            }
            Err(s) => return Err(format!("probe export failed: {s}")),
        }
    }
    let acked = Instant::now();
    let ack_latency = acked - sent;
    while acked.elapsed() < PROBE_TIMEOUT {
        let store = store.clone();
        let id = trace_id.clone();
        let metric_query = metric_query.clone();
        let found = tokio::task::spawn_blocking(move || match signal {
            Signal::Metrics => store.find_metrics(&metric_query).map(|d| {
                let points: usize = d
                    .resource_metrics
                    .iter()
                    .flat_map(|r| &r.scope_metrics)
                    .flat_map(|s| &s.metrics)
                    .map(obsbox::storage::metric_point_count)
                    .sum();
                points >= items
            }),
            Signal::Logs => store
                .find_logs(&LogQuery { predicate: LogPredicate::TraceId(id), time: TimeRange::ALL, limit: 1 })
                .map(|v| !v.is_empty()),
            _ => store
                .find_spans(&SpanQuery { predicate: SpanPredicate::TraceId(id), time: TimeRange::ALL, limit: 1 })
                .map(|v| !v.is_empty()),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if found {
            return Ok((ack_latency, acked.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("not searchable {} s after ack", PROBE_TIMEOUT.as_secs()))
}

// --- process measurements ------------------------------------------------------------------

fn rss_bytes() -> u64 {
    rss_and_anon().0
}

/// RSS and its anonymous part (heap and stacks, without the pages of mapped index files, which
/// the kernel can drop and read again), from one read of `/proc/self/status`.
fn rss_and_anon() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (kib("VmRSS:"), kib("RssAnon:"))
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (comm, utime + stime in ticks) from a /proc stat file.
fn stat_cpu(path: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// (busy, total) ticks of the whole machine, from the first line of /proc/stat.
fn machine_cpu() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn process_cpu_ticks() -> u64 {
    stat_cpu(Path::new("/proc/self/stat")).map_or(0, |(_, t)| t)
}

/// CPU ticks per thread id, with the thread's name.
fn thread_cpu() -> BTreeMap<u64, (String, u64)> {
    let mut out = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            if let (Some(tid), Some(stat)) =
                (e.file_name().to_str().and_then(|t| t.parse::<u64>().ok()), stat_cpu(&e.path().join("stat")))
            {
                out.insert(tid, stat);
            }
        }
    }
    out
}

/// Groups thread names: the server runtime's threads are named `srv-N` in spawn order, and
/// tokio spawns its worker threads first, so `srv-0`/`srv-1` are the workers and later
/// numbers are blocking-pool threads (the collector's decode jobs run there).
fn thread_group(name: &str, workers: usize) -> String {
    if let Some(n) = name.strip_prefix("srv-").and_then(|n| n.parse::<usize>().ok()) {
        return if n < workers { "server tokio workers".into() } else { "server blocking pool (decode)".into() };
    }
    if name.starts_with("bench-") {
        return format!("{name} (benchmark)");
    }
    if name.starts_with("ingest-") {
        return "main (benchmark)".into();
    }
    name.trim_end_matches(|c: char| c.is_ascii_digit()).to_string()
}

fn disk_usage(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    if let Ok(dir) = std::fs::read_dir(path) {
        for e in dir.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                let (a, b) = disk_usage(&e.path());
                apparent += a;
                allocated += b;
            } else {
                apparent += meta.len();
                allocated += meta.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

fn signal_value(v: &[(Signal, u64)], s: Signal) -> u64 {
    v.iter().find(|(x, _)| *x == s).map_or(0, |(_, n)| *n)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[idx]) / 1000.0
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

// --- one signal's run ----------------------------------------------------------------------

struct Row {
    what: String,
    value: String,
    baseline: String,
    target: String,
    ratio: String,
}

fn row(what: impl Into<String>, value: String, baseline: String, target: String, ratio: String) -> Row {
    Row { what: what.into(), value, baseline, target, ratio }
}

/// One run; `pace`: items per second in all, or as fast as answers come. Returns the durable +
/// searchable rate.
fn run_signal(signal: Signal, args: &Args, pace: Option<f64>, rows: &mut Vec<Row>) -> anyhow::Result<f64> {
    let (noun, pool_size) = match signal {
        Signal::Logs => ("log records", LOG_POOL),
        Signal::Metrics => ("points", METRIC_POOL),
        _ => ("spans", SPAN_POOL),
    };
    let paced = pace.map(|r| format!(", paced at {:.1}k {noun}/s", r / 1000.0)).unwrap_or_default();
    let transport = match args.transport {
        Transport::Grpc => "OTLP/gRPC",
        Transport::Http => "OTLP/HTTP protobuf",
        Transport::HttpGzip => "OTLP/HTTP protobuf, gzip (compressed by the clients, level 1)",
    };
    println!("\n=== {} : {} clients over {transport}, {} s{paced} ===", signal.as_str(), args.clients, args.secs);

    let generated = Instant::now();
    let pool = Arc::new(Pool::generate(signal, pool_size));
    let raw_per_item = pool.bytes() as f64 / pool.items() as f64;
    println!(
        "pool: {} requests x {:.0} {noun}, {:.0} B encoded per item ({:.1} MiB), generated in {:.1} s",
        pool.batches.len(),
        pool.items() as f64 / pool.batches.len() as f64,
        raw_per_item,
        mib(pool.bytes() as u64),
        generated.elapsed().as_secs_f64()
    );
    if signal == Signal::Metrics {
        // 18 resources, and two times per point at least.
        anyhow::ensure!(
            pool.batches.iter().all(|b| b.fleet_tag_offsets.len() == 18 && b.time_offsets.len() >= 2 * b.items),
            "fleet tags or timestamps not found in the encoded requests"
        );
    } else {
        anyhow::ensure!(
            pool.batches.iter().all(|b| !b.trace_id_offsets.is_empty()),
            "trace id offsets not found in the encoded requests"
        );
    }

    let decode_rate = decode_baseline(&pool, Duration::from_secs(3));
    println!(
        "baseline: prost decode only, one thread: {:.0} {noun}/s ({:.0} MB/s)",
        decode_rate,
        decode_rate * raw_per_item / 1e6
    );

    let rss_before = rss_bytes();
    let dir = tempfile::Builder::new().prefix("obsbox-bench-").tempdir_in("/tmp")?;
    let mut config = obsbox::Config::default();
    config.storage.data_dir = dir.path().to_path_buf();
    config.listen.otlp_grpc = "127.0.0.1:0".into();
    config.listen.otlp_http = "127.0.0.1:0".into();
    config.listen.http = "127.0.0.1:0".into();
    if let Ok(mib) = std::env::var("BENCH_INDEX_MEMORY_MIB") {
        config.storage.index_memory_bytes = mib.parse::<u64>().context("BENCH_INDEX_MEMORY_MIB")? << 20;
    }

    // The server on its own runtime (default worker count, like the binary); the clients on
    // another, so per-thread CPU tells them apart.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let counter = Arc::new(AtomicU64::new(0));
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name_fn({
            let counter = counter.clone();
            move || format!("srv-{}", counter.fetch_add(1, Ordering::Relaxed))
        })
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()?;

    let start = Instant::now();
    let obsbox = server_rt.block_on(obsbox::Obsbox::start(config))?;
    let start_ms = start.elapsed().as_secs_f64() * 1000.0;
    let store = obsbox.store().expect("a local store");
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = rss_bytes();
    println!(
        "obsbox started in {start_ms:.0} ms; RSS before start {:.0} MiB (pool + runtimes), after start {:.0} MiB",
        mib(rss_before),
        mib(rss_idle)
    );

    // Load.
    let secs = args.secs;
    let clients = args.clients;
    let acked = Arc::new(AtomicU64::new(0));
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let threads_before = thread_cpu();
    let sampler = std::thread::Builder::new().name("bench-sampler".into()).spawn({
        let acked = acked.clone();
        let stop = stop_sampler.clone();
        move || {
            let mut rss = Vec::new();
            let mut per_second = Vec::new();
            let mut last = (Instant::now(), 0u64);
            // Last CPU time seen per thread: tantivy replaces its indexing threads at
            // every commit, so a snapshot at the end would miss their work.
            let mut seen = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                rss.push(rss_and_anon());
                seen.extend(thread_cpu());
                if last.0.elapsed() >= Duration::from_secs(1) {
                    let now = acked.load(Ordering::Relaxed);
                    per_second.push((now - last.1) as f64 / last.0.elapsed().as_secs_f64());
                    last = (Instant::now(), now);
                }
            }
            (rss, per_second, seen)
        }
    })?;
    let cpu_before = process_cpu_ticks();
    let machine_before = machine_cpu();
    let load_start = Instant::now();
    let deadline = load_start + Duration::from_secs(secs);

    let load = client_rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let conn = connect(&obsbox, args.transport).await?;
            tasks.push(tokio::spawn(run_client(c, clients, conn, pool.clone(), deadline, acked.clone(), pace)));
        }
        let mut probe_conn = connect(&obsbox, args.transport).await?;
        let probe_task = tokio::spawn({
            let pool = pool.clone();
            let store = store.clone();
            async move {
                let mut results = Vec::new();
                let mut n = 0;
                tokio::time::sleep(PROBE_EVERY).await;
                while Instant::now() + PROBE_EVERY < deadline {
                    let t = Instant::now();
                    results.push(probe(&mut probe_conn, &pool, store.clone(), n).await);
                    n += 1;
                    tokio::time::sleep(PROBE_EVERY.saturating_sub(t.elapsed())).await;
                }
                (results, probe_conn, n)
            }
        });
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await?);
        }
        // The load ends when the last client got its last answer; a probe still waiting for
        // its data to become searchable is not part of it.
        let end = (load_start.elapsed(), process_cpu_ticks() - cpu_before, machine_cpu(), thread_cpu());
        stop_sampler.store(true, Ordering::Relaxed);
        let probes = probe_task.await?;
        anyhow::Ok((outcomes, probes, end))
    })?;
    let (outcomes, probes, (load_wall, cpu_ticks, machine_after, threads_now)) = load;
    let (rss_samples, per_second, mut threads_after) =
        sampler.join().map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    threads_after.extend(threads_now);
    let (under_load, mut probe_conn, mut probe_n) = probes;

    // Until everything acknowledged is searchable.
    let drain_start = Instant::now();
    let mut pending_at_end = None;
    let mut drained = false;
    while drain_start.elapsed() < DRAIN_TIMEOUT {
        let p = signal_value(&store.stats().pending_items, signal);
        pending_at_end.get_or_insert(p);
        if p == 0 {
            drained = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let drain = drain_start.elapsed();

    // After the load: uniquely identifiable requests, ack to searchable.
    let after_load: Vec<_> = client_rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(probe(&mut probe_conn, &pool, store.clone(), probe_n).await);
            probe_n += 1;
        }
        v
    });
    drop(probe_conn);

    // Sizes, after a final commit.
    std::thread::sleep(Duration::from_secs(2));
    let stats: StoreStats = store.stats();
    let (du_open_apparent, du_open) = disk_usage(dir.path());
    drop(store);
    server_rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), obsbox.shutdown()).await })
        .context("obsbox shutdown timed out")??;
    let (du_closed_apparent, du_closed) = disk_usage(dir.path());
    let (_, du_closed_wal) = disk_usage(&dir.path().join("wal"));
    drop(client_rt);
    drop(server_rt);

    // Results.
    let acked_items: u64 = outcomes.iter().map(|o| o.acked_items).sum();
    let rejected_items: u64 = outcomes.iter().map(|o| o.rejected_items).sum();
    let requests: u64 = outcomes.iter().map(|o| o.requests).sum();
    let refused: u64 = outcomes.iter().map(|o| o.refused).sum();
    let errors: u64 = outcomes.iter().map(|o| o.errors).sum();
    let mut lat: Vec<u32> = outcomes.iter().flat_map(|o| o.latencies_us.iter().copied()).collect();
    lat.sort_unstable();
    // Probes send batch n of the pool.
    let probe_items: u64 = under_load
        .iter()
        .chain(&after_load)
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(n, _)| pool.batches[n % pool.batches.len()].items as u64)
        .sum();
    let stored_items = acked_items + probe_items;
    let wall = load_wall.as_secs_f64();
    let ack_rate = acked_items as f64 / wall;
    let indexed_rate = acked_items as f64 / (wall + drain.as_secs_f64());
    let cores = cpu_ticks as f64 / clock_ticks() / wall;
    let rss_max = rss_samples.iter().map(|r| r.0).max().unwrap_or(0);
    let anon_max = rss_samples.iter().map(|r| r.1).max().unwrap_or(0);
    let rss_mean = rss_samples.iter().map(|r| r.0).sum::<u64>() / rss_samples.len().max(1) as u64;
    let (p50, p99, pmax) = (percentile(&lat, 0.5), percentile(&lat, 0.99), percentile(&lat, 1.0));
    let secs_of = |r: &Vec<Result<(Duration, Duration), String>>| -> Vec<f64> {
        r.iter().filter_map(|x| x.as_ref().ok().map(|(_, d)| d.as_secs_f64())).collect()
    };
    let under = secs_of(&under_load);
    let after = secs_of(&after_load);
    let worst = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };

    println!(
        "load: {requests} requests acked ({acked_items} {noun}) in {wall:.1} s; refused (RESOURCE_EXHAUSTED/UNAVAILABLE) {refused}; \
         other errors {errors}{}; items rejected in partial success {rejected_items}",
        outcomes.iter().find_map(|o| o.first_error.as_deref()).map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
    let ps: Vec<String> = per_second.iter().map(|r| format!("{:.0}k", r / 1000.0)).collect();
    println!("acked {noun}/s per second: {}", ps.join(" "));
    println!(
        "everything searchable {:.2} s after the load ({} {noun} not yet searchable at the end){}",
        drain.as_secs_f64(),
        pending_at_end.unwrap_or(0),
        if drained { "" } else { " -- NOT drained within the timeout" }
    );
    println!(
        "ack latency ms: p50 {p50:.1}, p99 {p99:.1}, max {pmax:.1}; searchable after ack (s): under load {:?}, after load {:?}",
        under.iter().map(|d| (d * 100.0).round() / 100.0).collect::<Vec<_>>(),
        after.iter().map(|d| (d * 100.0).round() / 100.0).collect::<Vec<_>>(),
    );
    for e in under_load.iter().chain(&after_load).filter_map(|r| r.as_ref().err()) {
        println!("probe failed: {e}");
    }
    println!(
        "process: {cores:.2} cores busy (of {workers}); RSS max {:.0} MiB (anonymous max {:.0} MiB, the rest mapped \
         index files), mean {:.0} MiB, before obsbox start {:.0} MiB",
        mib(rss_max),
        mib(anon_max),
        mib(rss_mean),
        mib(rss_before)
    );
    let machine_busy = (machine_after.0 - machine_before.0) as f64 / clock_ticks() / wall;
    println!(
        "machine: {machine_busy:.2} of {workers} cores busy during the load, of which this process {cores:.2}, \
         other processes {:.2}",
        (machine_busy - cores).max(0.0)
    );
    // Per-thread CPU over the load, grouped.
    let mut groups: BTreeMap<String, f64> = BTreeMap::new();
    let mut accounted = 0.0;
    for (tid, (name, after)) in &threads_after {
        let before = threads_before.get(tid).filter(|(n, _)| n == name).map_or(0, |(_, t)| *t);
        let secs = (after - before.min(*after)) as f64 / clock_ticks();
        accounted += secs;
        *groups.entry(thread_group(name, workers)).or_default() += secs;
    }
    let mut groups: Vec<_> = groups.into_iter().filter(|(_, s)| *s > 0.0).collect();
    groups.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total = cpu_ticks as f64 / clock_ticks();
    println!("CPU during the load, by thread group (share of the process' {total:.1} CPU-s; % of one core):");
    for (g, secs) in &groups {
        println!(
            "  {:<36} {:>6.1} CPU-s  {:>5.1}%  {:>5.0}% of a core",
            g,
            secs,
            100.0 * secs / total,
            100.0 * secs / wall
        );
    }
    if total - accounted > 0.05 {
        println!("  {:<36} {:>6.1} CPU-s (threads that exited between samples)", "other", total - accounted);
    }
    let index_bytes = signal_value(&stats.index_bytes, signal);
    println!(
        "store stats 2 s after the probes: wal {:.1} MiB, index {:.1} MiB, segments {}, commits {} taking {:.1} s; \
         data dir {:.1} MiB allocated ({:.1} MiB apparent); after close {:.1} MiB allocated ({:.1} MiB apparent)",
        mib(stats.wal_bytes),
        mib(index_bytes),
        signal_value(&stats.segments, signal),
        stats.commits,
        stats.commit_seconds,
        mib(du_open),
        mib(du_open_apparent),
        mib(du_closed),
        mib(du_closed_apparent)
    );

    // Table rows.
    // The brief sets no target for metric points.
    let (target_rate, unit) = match signal {
        Signal::Logs => (Some(TARGET_LOGS_PER_S), "records/s"),
        Signal::Metrics => (None, "points/s"),
        _ => (Some(TARGET_SPANS_PER_S), "spans/s"),
    };
    let k = |x: f64| format!("{:.1}k {unit}", x / 1000.0);
    let rate_target = || target_rate.map_or("- (none in the brief)".into(), |t| format!(">= {}", k(t)));
    let rate_ratio = |x: f64| match target_rate {
        Some(t) => format!("{:.2} / {:.2}", x / t, x / decode_rate),
        None => format!("- / {:.2}", x / decode_rate),
    };
    let what = |w: String| if pace.is_some() { format!("{w}{paced}") } else { w };
    rows.push(row(
        what(format!("{} ingest, acked (durable)", signal.as_str())),
        k(ack_rate),
        k(decode_rate),
        rate_target(),
        rate_ratio(ack_rate),
    ));
    rows.push(row(
        what(format!(
            "{} ingest, durable + {}",
            signal.as_str(),
            if signal == Signal::Metrics { "readable" } else { "searchable" }
        )),
        k(indexed_rate),
        k(decode_rate),
        rate_target(),
        rate_ratio(indexed_rate),
    ));
    rows.push(row(
        match pace {
            Some(_) => format!("{} ack latency p50 / p99{paced}", signal.as_str()),
            None => format!("{} ack latency p50 / p99 (full load)", signal.as_str()),
        },
        format!("{p50:.1} / {p99:.1} ms"),
        "-".into(),
        format!("p99 <= {TARGET_P99_MS} ms at half load"),
        if pace.is_some() { format!("{:.2}", p99 / TARGET_P99_MS) } else { "not comparable".into() },
    ));
    let all: Vec<f64> = under.iter().chain(&after).copied().collect();
    rows.push(row(
        what(format!("{} searchable after ack (max; median under load)", signal.as_str())),
        format!("{:.2} s; {:.2} s", worst(&all), median(&under)),
        "-".into(),
        format!("<= {TARGET_SEARCHABLE_S} s"),
        format!("{:.2}", worst(&all) / TARGET_SEARCHABLE_S),
    ));
    rows.push(row(
        what(format!("{} RSS max during load (incl. clients)", signal.as_str())),
        format!("{:.0} MiB (anon {:.0})", mib(rss_max), mib(anon_max)),
        format!("{:.0} MiB before start", mib(rss_before)),
        format!("<= {TARGET_RSS_MIB} MiB"),
        format!("{:.2}", mib(rss_max) / TARGET_RSS_MIB),
    ));
    let n = stored_items.max(1) as f64;
    let per_item = du_closed as f64 / n;
    let per_item_segments = du_closed.saturating_sub(du_closed_wal) as f64 / n;
    println!(
        "bytes per stored item ({stored_items} {noun} incl. probes), after close: data dir {per_item:.1} B \
         ({:.1} B apparent) = segments/metastore {per_item_segments:.1} B + WAL {:.1} B; open store: index {:.1} B, \
         WAL {:.1} B; raw OTLP {raw_per_item:.0} B",
        du_closed_apparent as f64 / n,
        du_closed_wal as f64 / n,
        index_bytes as f64 / n,
        stats.wal_bytes as f64 / n,
    );
    let (name, target) = match signal {
        Signal::Logs => ("bytes per log record", format!("<= {TARGET_LOG_RATIO} x raw")),
        Signal::Metrics => ("bytes per metric point", "- (none in the brief)".to_string()),
        _ => ("bytes per span", format!("<= {TARGET_BYTES_PER_SPAN} B")),
    };
    for (what, b) in [("excl. WAL", per_item_segments), ("incl. WAL", per_item)] {
        let ratio = match signal {
            Signal::Logs => format!("{:.2}", b / raw_per_item / TARGET_LOG_RATIO),
            Signal::Metrics => "-".into(),
            _ => format!("{:.2}", b / TARGET_BYTES_PER_SPAN),
        };
        rows.push(row(
            format!("{name} on disk after close, {what}{paced}"),
            format!("{b:.0} B ({:.2} x raw)", b / raw_per_item),
            format!("{raw_per_item:.0} B raw OTLP"),
            target.clone(),
            ratio,
        ));
    }
    rows.push(row(
        what(format!("{} CPU cores busy: process incl. clients (machine)", signal.as_str())),
        format!("{cores:.2} (machine {machine_busy:.2})"),
        "-".into(),
        "-".into(),
        "-".into(),
    ));
    Ok(indexed_rate)
}

fn print_row(r: &Row) {
    println!("{:<50} | {:<22} | {:<26} | {:<28} | {}", r.what, r.value, r.baseline, r.target, r.ratio);
}

fn main() -> anyhow::Result<()> {
    // As the obsbox binary does (src/main.rs): two glibc malloc arenas for the C libraries
    // (Rust allocations go to mimalloc, src/lib.rs), so RSS compares.
    // SAFETY: allocator tuning before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let Some(args) = parse_args()? else {
        println!("ingest benchmark: not run (start it with `cargo bench --bench ingest`)");
        return Ok(());
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "obsbox ingest benchmark: {} s per signal, {} clients, {} CPUs; load average at start: {}",
        args.secs,
        args.clients,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let mut rows = Vec::new();
    for &signal in &args.signals {
        match args.pace {
            None => {
                run_signal(signal, &args, None, &mut rows)?;
            }
            Some(Pace::HalfOfMax) => {
                let max = run_signal(signal, &args, None, &mut rows)?;
                run_signal(signal, &args, Some(max / 2.0), &mut rows)?;
            }
            Some(Pace::Fixed(rate)) => {
                run_signal(signal, &args, Some(rate), &mut rows)?;
            }
        }
    }
    println!("\nratio = measured / target, and for throughput also measured / decode-only baseline");
    let header = row("what", "measured".into(), "baseline".into(), "target".into(), "ratio".into());
    print_row(&header);
    println!("{}", "-".repeat(150));
    for r in &rows {
        print_row(r);
    }
    Ok(())
}
