//! Prometheus remote-write 1.0 export of metric points: every acknowledged OTLP metric batch
//! (received or derived) is converted with the store's Prometheus view
//! ([`obsbox_storage::prometheus`]) on the decode pool, queued, and sent by one task as snappy
//! compressed `WriteRequest`s.
//!
//! ```text
//! Collector::export (decode pool): prepare ─ after the ack ─> RemoteWrite::enqueue
//!     ─ queue bounded in samples (full: oldest dropped, counted) ─> sender task:
//!        batches of max_samples_per_send, samples in time order per series,
//!        POST url (Content-Encoding: snappy, X-Prometheus-Remote-Write-Version: 0.1.0),
//!        5xx/429/connection errors retried with exponential backoff, 4xx dropped (counted)
//! ```
//!
//! The protobuf messages are those of Prometheus' `prompb/remote.proto` and `types.proto`,
//! declared here with `prost` derives (so no `protoc` at build time).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use obsbox_storage::prometheus::{self as prom, Family, NativeHistogram, PromType, ViewOptions};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, MetricsData, metric};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::CollectorError;

/// Settings of the remote-write export (the `[remote_write]` configuration section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteConfig {
    /// Where to send (`http://host:port/api/v1/write`). Empty: no export (the default).
    pub url: String,
    /// Extra HTTP headers on every request (e.g. `X-Scope-OrgID`).
    pub headers: BTreeMap<String, String>,
    /// Sent as `Authorization: Bearer <token>` when not empty.
    pub bearer_token: String,
    /// Most samples (and histogram samples) in one request. Default 2,000.
    pub max_samples_per_send: usize,
    /// A request goes out at least this often while samples wait. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Retries of a request that failed with 5xx, 429 or a connection error. Default 5.
    pub max_retries: u32,
    /// First retry delay, doubled at each retry up to `max_backoff`. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub min_backoff: Duration,
    /// Longest retry delay. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Timeout of one request. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most samples waiting to be sent; when full, the oldest are dropped (counted). Default 100,000.
    pub queue_samples: usize,
    /// Send exponential histograms as native histograms (the receiver needs them enabled, e.g.
    /// Prometheus' `--enable-feature=native-histograms`); otherwise as classic buckets. Default false.
    pub native_histograms: bool,
}

impl Default for RemoteWriteConfig {
    fn default() -> Self {
        RemoteWriteConfig {
            url: String::new(),
            headers: BTreeMap::new(),
            bearer_token: String::new(),
            max_samples_per_send: 2000,
            flush_interval: Duration::from_secs(1),
            max_retries: 5,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            queue_samples: 100_000,
            native_histograms: false,
        }
    }
}

impl RemoteWriteConfig {
    /// Whether export is on (a URL is set).
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// Checks every value; the error names the key (without the `remote_write.` prefix).
    pub fn validate(&self) -> Result<(), CollectorError> {
        let bad = |key: &'static str, reason: &str| Err(CollectorError::InvalidConfig { key, reason: reason.into() });
        if self.enabled() {
            match reqwest::Url::parse(&self.url) {
                Ok(u) if u.scheme() == "http" && u.host().is_some() => {}
                Ok(u) if u.scheme() == "https" => {
                    return bad("url", "https is not supported by this build; use http (e.g. through a local proxy)");
                }
                _ => return bad("url", "must be an http:// URL"),
            }
        }
        for name in self.headers.keys() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return bad("headers", "a header name is not a valid HTTP header name");
            }
        }
        if self.headers.values().any(|v| http::HeaderValue::from_str(v).is_err())
            || http::HeaderValue::from_str(&format!("Bearer {}", self.bearer_token)).is_err()
        {
            return bad("headers", "a header value or the bearer token has characters not allowed in HTTP headers");
        }
        if self.max_samples_per_send == 0 {
            return bad("max_samples_per_send", "must be at least 1");
        }
        if self.queue_samples < self.max_samples_per_send {
            return bad("queue_samples", "must be at least max_samples_per_send");
        }
        if self.flush_interval < Duration::from_millis(10) || self.flush_interval > Duration::from_secs(600) {
            return bad("flush_interval", "must be between 10ms and 10m");
        }
        if self.min_backoff.is_zero() || self.min_backoff > self.max_backoff {
            return bad("min_backoff", "must be more than 0 and at most max_backoff");
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be more than 0");
        }
        Ok(())
    }
}

// --- the wire format: prompb/remote.proto and prompb/types.proto -----------------------------

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub(crate) timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub(crate) labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub(crate) samples: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub(crate) exemplars: Vec<Exemplar>,
    #[prost(message, repeated, tag = "4")]
    pub(crate) histograms: Vec<Histogram>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Message)]
pub(crate) struct Label {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(string, tag = "2")]
    pub(crate) value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Sample {
    #[prost(double, tag = "1")]
    pub(crate) value: f64,
    /// Unix milliseconds.
    #[prost(int64, tag = "2")]
    pub(crate) timestamp: i64,
}

/// `prometheus.Exemplar`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Exemplar {
    #[prost(message, repeated, tag = "1")]
    pub(crate) labels: Vec<Label>,
    #[prost(double, tag = "2")]
    pub(crate) value: f64,
    #[prost(int64, tag = "3")]
    pub(crate) timestamp: i64,
}

/// `prometheus.Histogram` (native histogram, integer counts; the `oneof`s with their integer
/// member as plain fields, which encodes the same).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Histogram {
    #[prost(uint64, tag = "1")]
    pub(crate) count_int: u64,
    #[prost(double, tag = "3")]
    pub(crate) sum: f64,
    #[prost(sint32, tag = "4")]
    pub(crate) schema: i32,
    #[prost(double, tag = "5")]
    pub(crate) zero_threshold: f64,
    #[prost(uint64, tag = "6")]
    pub(crate) zero_count_int: u64,
    #[prost(message, repeated, tag = "8")]
    pub(crate) negative_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "9")]
    pub(crate) negative_deltas: Vec<i64>,
    #[prost(message, repeated, tag = "11")]
    pub(crate) positive_spans: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "12")]
    pub(crate) positive_deltas: Vec<i64>,
    /// `ResetHint`: 0 unknown, 1 yes, 2 no, 3 gauge.
    #[prost(int32, tag = "14")]
    pub(crate) reset_hint: i32,
    #[prost(int64, tag = "15")]
    pub(crate) timestamp: i64,
}

/// `prometheus.BucketSpan`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct BucketSpan {
    #[prost(sint32, tag = "1")]
    pub(crate) offset: i32,
    #[prost(uint32, tag = "2")]
    pub(crate) length: u32,
}

// --- conversion ---------------------------------------------------------------------------

/// Series ready to be queued, converted from one batch.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    series: Vec<TimeSeries>,
    /// OTLP metrics left out, with the reason.
    rejected: Vec<(String, String)>,
}

fn sample_count(ts: &TimeSeries) -> usize {
    ts.samples.len() + ts.histograms.len()
}

fn labels(l: &[(String, String)]) -> Vec<Label> {
    l.iter().map(|(name, value)| Label { name: name.clone(), value: value.clone() }).collect()
}

fn exemplars(e: &[prom::Exemplar]) -> Vec<Exemplar> {
    e.iter().map(|e| Exemplar { labels: labels(&e.labels), value: e.value, timestamp: e.t_ms }).collect()
}

fn native(h: &NativeHistogram, gauge: bool) -> Histogram {
    let spans = |s: &[prom::BucketSpan]| s.iter().map(|s| BucketSpan { offset: s.offset, length: s.length }).collect();
    Histogram {
        count_int: h.count,
        sum: h.sum,
        schema: h.schema,
        zero_threshold: h.zero_threshold,
        zero_count_int: h.zero_count,
        negative_spans: spans(&h.negative_spans),
        negative_deltas: h.negative_deltas.clone(),
        positive_spans: spans(&h.positive_spans),
        positive_deltas: h.positive_deltas.clone(),
        reset_hint: if gauge {
            3
        } else if h.counter_reset {
            1
        } else {
            0
        },
        timestamp: h.t_ms,
    }
}

fn family_series(f: &Family, out: &mut Vec<TimeSeries>) {
    for s in &f.series {
        out.push(TimeSeries {
            labels: labels(&s.labels),
            samples: s.samples.iter().map(|p| Sample { value: p.value, timestamp: p.t_ms }).collect(),
            exemplars: exemplars(&s.exemplars),
            histograms: Vec::new(),
        });
    }
    for s in &f.native {
        out.push(TimeSeries {
            labels: labels(&s.labels),
            samples: Vec::new(),
            exemplars: exemplars(&s.exemplars),
            histograms: s.histograms.iter().map(|h| native(h, f.kind == PromType::Gauge)).collect(),
        });
    }
}

fn is_delta(m: &opentelemetry_proto::tonic::metrics::v1::Metric) -> bool {
    let delta = AggregationTemporality::Delta as i32;
    match &m.data {
        Some(metric::Data::Sum(s)) => s.aggregation_temporality == delta,
        Some(metric::Data::Histogram(h)) => h.aggregation_temporality == delta,
        Some(metric::Data::ExponentialHistogram(h)) => h.aggregation_temporality == delta,
        _ => false,
    }
}

/// Converts `data` to remote-write series. Delta-temporality metrics are left out (as the
/// OpenTelemetry Collector's exporter does): a batch alone cannot turn them into the cumulative
/// values Prometheus expects.
pub(crate) fn convert(data: &MetricsData, native_histograms: bool) -> Prepared {
    let mut rejected = Vec::new();
    let has_delta =
        data.resource_metrics.iter().flat_map(|rm| &rm.scope_metrics).flat_map(|sm| &sm.metrics).any(is_delta);
    let filtered;
    let data = if has_delta {
        let mut d = data.clone();
        for sm in d.resource_metrics.iter_mut().flat_map(|rm| &mut rm.scope_metrics) {
            sm.metrics.retain(|m| {
                let keep = !is_delta(m);
                if !keep {
                    rejected.push((m.name.clone(), "delta temporality is not exported by remote write".to_owned()));
                }
                keep
            });
        }
        filtered = d;
        &filtered
    } else {
        data
    };
    let view = prom::prometheus_view(data, &ViewOptions { native_histograms, target_info: true });
    let mut series = Vec::new();
    for f in &view.families {
        family_series(f, &mut series);
    }
    rejected.extend(view.rejected.into_iter().map(|r| (r.metric, r.reason)));
    Prepared { series, rejected }
}

/// Merges the series with the same labels, samples sorted by time with one sample per time
/// (the later wins), and encodes the snappy-compressed `WriteRequest`.
pub(crate) fn encode(series: Vec<TimeSeries>) -> Vec<u8> {
    let mut by_labels: HashMap<Vec<Label>, TimeSeries> = HashMap::new();
    let mut order = Vec::new();
    for ts in series {
        match by_labels.get_mut(&ts.labels) {
            Some(t) => {
                t.samples.extend(ts.samples);
                t.exemplars.extend(ts.exemplars);
                t.histograms.extend(ts.histograms);
            }
            None => {
                order.push(ts.labels.clone());
                by_labels.insert(ts.labels.clone(), ts);
            }
        }
    }
    let timeseries = order
        .into_iter()
        .filter_map(|l| by_labels.remove(&l))
        .map(|mut ts| {
            ts.samples.sort_by_key(|s| s.timestamp);
            dedup_last(&mut ts.samples, |s| s.timestamp);
            ts.histograms.sort_by_key(|h| h.timestamp);
            dedup_last(&mut ts.histograms, |h| h.timestamp);
            ts.exemplars.sort_by_key(|e| e.timestamp);
            ts
        })
        .collect();
    let raw = WriteRequest { timeseries }.encode_to_vec();
    snap::raw::Encoder::new().compress_vec(&raw).expect("snappy compresses any input")
}

/// Keeps the last of each run of equal keys (the input is sorted by key, stably).
fn dedup_last<T>(v: &mut Vec<T>, key: impl Fn(&T) -> i64) {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for item in v.drain(..) {
        if out.last().is_some_and(|last| key(last) == key(&item)) {
            out.pop();
        }
        out.push(item);
    }
    *v = out;
}

// --- sending ------------------------------------------------------------------------------

/// Why a request failed.
#[derive(Debug)]
enum SendError {
    /// Retrying may help (5xx, 429, connection error, timeout).
    Retryable(String),
    /// It will not (4xx): the batch is dropped.
    Permanent(String),
}

async fn send(client: &reqwest::Client, config: &RemoteWriteConfig, body: Vec<u8>) -> Result<(), SendError> {
    let mut req = client
        .post(&config.url)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .header(http::header::CONTENT_ENCODING, "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .header(http::header::USER_AGENT, concat!("obsbox/", env!("CARGO_PKG_VERSION")))
        .timeout(config.timeout);
    for (k, v) in &config.headers {
        req = req.header(k, v);
    }
    if !config.bearer_token.is_empty() {
        req = req.bearer_auth(&config.bearer_token);
    }
    let resp = req.body(body).send().await.map_err(|e| SendError::Retryable(e.to_string()))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    let message = format!("{status}: {}", text.trim().chars().take(500).collect::<String>());
    if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS {
        Err(SendError::Retryable(message))
    } else {
        Err(SendError::Permanent(message))
    }
}

/// Sends `data` to a remote-write `url` in one request (exponential histograms as native
/// histograms when `native_histograms`). For tests and tools that feed a Prometheus the same
/// points as obsbox; the exporter itself batches, queues and retries.
pub async fn push_metrics(url: &str, data: &MetricsData, native_histograms: bool) -> Result<(), CollectorError> {
    let config = RemoteWriteConfig { url: url.to_owned(), native_histograms, ..RemoteWriteConfig::default() };
    config.validate()?;
    let prepared = convert(data, native_histograms);
    if let Some((metric, reason)) = prepared.rejected.first() {
        return Err(CollectorError::RemoteWrite(format!("metric {metric} cannot be exported: {reason}")));
    }
    let client = reqwest::Client::new();
    send(&client, &config, encode(prepared.series)).await.map_err(|e| match e {
        SendError::Retryable(m) | SendError::Permanent(m) => CollectorError::RemoteWrite(m),
    })
}

/// The `obsbox_remote_write_*` self-metrics.
#[derive(Clone)]
struct Telemetry {
    samples: IntCounterVec,
    requests: IntCounterVec,
    queued: IntGauge,
    rejected_metrics: IntCounterVec,
}

impl Telemetry {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let samples = IntCounterVec::new(
            Opts::new(
                "obsbox_remote_write_samples_total",
                "Samples by outcome: sent, dropped_queue_full (oldest dropped), failed (retries exhausted), \
                 rejected (the receiver answered 4xx).",
            ),
            &["outcome"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new("obsbox_remote_write_requests_total", "Remote-write requests, by outcome (ok, retry, failed)."),
            &["outcome"],
        )?;
        let queued = IntGauge::new("obsbox_remote_write_queued_samples", "Samples waiting to be sent.")?;
        let rejected_metrics = IntCounterVec::new(
            Opts::new(
                "obsbox_remote_write_unsupported_metrics_total",
                "OTLP metrics not exported (delta temporality, name clashes), by name.",
            ),
            &["metric"],
        )?;
        registry.register(Box::new(samples.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(queued.clone()))?;
        registry.register(Box::new(rejected_metrics.clone()))?;
        Ok(Telemetry { samples, requests, queued, rejected_metrics })
    }
}

/// Handle to the remote-write exporter. Cheap to clone.
#[derive(Clone)]
pub struct RemoteWrite {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RemoteWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWrite").field("url", &self.inner.config.url).finish_non_exhaustive()
    }
}

struct Inner {
    config: RemoteWriteConfig,
    queue: Mutex<Queue>,
    notify: Notify,
    telemetry: Telemetry,
    /// Set (`true`) when the sender task has ended.
    finished: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct Queue {
    series: VecDeque<TimeSeries>,
    samples: usize,
    closed: bool,
}

impl RemoteWrite {
    /// Validates `config`, registers the `obsbox_remote_write_*` metrics and spawns the sender
    /// task on the current tokio runtime. The task ends, after a last attempt to send what is
    /// queued, once [`RemoteWrite::close`] is called.
    pub fn start(config: &RemoteWriteConfig, registry: &Registry) -> Result<RemoteWrite, CollectorError> {
        config.validate()?;
        if !config.enabled() {
            return Err(CollectorError::InvalidConfig { key: "url", reason: "no URL to write to".into() });
        }
        let telemetry = Telemetry::register(registry)?;
        let rw = RemoteWrite {
            inner: Arc::new(Inner {
                config: config.clone(),
                queue: Mutex::new(Queue::default()),
                notify: Notify::new(),
                telemetry,
                finished: tokio::sync::watch::channel(false).0,
            }),
        };
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| CollectorError::InvalidConfig { key: "url", reason: format!("http client: {e}") })?;
        tokio::spawn(sender(rw.inner.clone(), client));
        Ok(rw)
    }

    /// Converts a batch (heavy: call it on a blocking thread, before the ack is awaited).
    pub(crate) fn prepare(&self, data: &MetricsData) -> Prepared {
        convert(data, self.inner.config.native_histograms)
    }

    /// Queues converted series without waiting; when the queue is full the oldest go (counted).
    pub(crate) fn enqueue(&self, prepared: Prepared) {
        let t = &self.inner.telemetry;
        for (metric, reason) in &prepared.rejected {
            tracing::debug!(metric, reason, "metric not exported by remote write");
            t.rejected_metrics.with_label_values(&[metric]).inc();
        }
        let max = self.inner.config.queue_samples;
        let mut dropped = 0;
        {
            let mut q = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.closed {
                return;
            }
            for ts in prepared.series {
                q.samples += sample_count(&ts);
                q.series.push_back(ts);
            }
            while q.samples > max {
                let Some(old) = q.series.pop_front() else { break };
                let n = sample_count(&old);
                q.samples -= n;
                dropped += n;
            }
            t.queued.set(q.samples as i64);
        }
        if dropped > 0 {
            t.samples.with_label_values(&["dropped_queue_full"]).inc_by(dropped as u64);
        }
        self.inner.notify.notify_one();
    }

    /// Converts and queues an acknowledged batch (on a blocking thread).
    pub(crate) fn push(&self, req: &ExportMetricsServiceRequest) {
        let data = MetricsData { resource_metrics: req.resource_metrics.clone() };
        self.enqueue(self.prepare(&data));
    }

    /// Stops taking batches; the sender task sends what is queued (one attempt per request, no
    /// retries) and ends. Resolves when it has, or after `timeout`.
    pub async fn close(&self, timeout: Duration) {
        self.inner.queue.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        self.inner.notify.notify_one();
        let mut finished = self.inner.finished.subscribe();
        if tokio::time::timeout(timeout, finished.wait_for(|f| *f)).await.is_err() {
            tracing::warn!("remote write: queued samples not sent before shutdown");
        }
    }
}

/// Takes up to `max` samples' worth of series from the front of the queue.
fn take_batch(inner: &Inner) -> (Vec<TimeSeries>, usize, bool) {
    let mut q = inner.queue.lock().unwrap_or_else(|e| e.into_inner());
    let max = inner.config.max_samples_per_send;
    let (mut batch, mut n) = (Vec::new(), 0);
    while let Some(front) = q.series.front() {
        let k = sample_count(front);
        if n > 0 && n + k > max {
            break;
        }
        n += k;
        batch.push(q.series.pop_front().expect("front exists"));
    }
    q.samples -= n;
    inner.telemetry.queued.set(q.samples as i64);
    (batch, n, q.closed)
}

async fn sender(inner: Arc<Inner>, client: reqwest::Client) {
    send_loop(&inner, &client).await;
    inner.finished.send_replace(true);
}

async fn send_loop(inner: &Inner, client: &reqwest::Client) {
    let config = &inner.config;
    let t = &inner.telemetry;
    loop {
        let full = {
            let q = inner.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.samples >= config.max_samples_per_send || q.closed
        };
        if !full {
            let _ = tokio::time::timeout(config.flush_interval, inner.notify.notified()).await;
            let small = {
                let q = inner.queue.lock().unwrap_or_else(|e| e.into_inner());
                q.samples < config.max_samples_per_send && !q.closed && q.samples > 0
            };
            // Woken early by a small batch: give more samples a moment to join it, as
            // Prometheus' own queue does (batch_send_deadline).
            if small {
                tokio::time::sleep(config.flush_interval / 4).await;
            }
        }
        let (batch, n, closed) = take_batch(inner);
        if batch.is_empty() {
            if closed {
                return;
            }
            continue;
        }
        let body = tokio::task::spawn_blocking(move || encode(batch)).await.unwrap_or_default();
        let mut backoff = config.min_backoff;
        let mut attempt = 0;
        loop {
            match send(client, config, body.clone()).await {
                Ok(()) => {
                    t.requests.with_label_values(&["ok"]).inc();
                    t.samples.with_label_values(&["sent"]).inc_by(n as u64);
                    break;
                }
                Err(SendError::Retryable(e)) if attempt < config.max_retries && !closed => {
                    tracing::debug!(error = %e, attempt, "remote write failed, retrying");
                    t.requests.with_label_values(&["retry"]).inc();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(config.max_backoff);
                    attempt += 1;
                }
                Err(SendError::Retryable(e)) => {
                    tracing::warn!(error = %e, samples = n, "remote write failed, samples dropped");
                    t.requests.with_label_values(&["failed"]).inc();
                    t.samples.with_label_values(&["failed"]).inc_by(n as u64);
                    break;
                }
                Err(SendError::Permanent(e)) => {
                    tracing::warn!(error = %e, samples = n, "remote write refused, samples dropped");
                    t.requests.with_label_values(&["failed"]).inc();
                    t.samples.with_label_values(&["rejected"]).inc_by(n as u64);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
