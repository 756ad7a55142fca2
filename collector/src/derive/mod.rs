//! Metrics derived from spans at ingest: span metrics (RED) and the service graph, as the
//! OpenTelemetry Collector's `spanmetrics` and `servicegraph` connectors compute them. What is
//! written, with which names and attributes, is the contract in `docs/derived-metrics.md`.
//!
//! ```text
//! Collector::export (decode pool): facts::extract ─ after the ack ─> Deriver::submit
//!     ─ channel bounded in spans (full: batch dropped, counted) ─> derive thread:
//!        SpanMetrics + ServiceGraph (pairing store with TTL)
//!        every `interval`: Writer::write(Batch::Metrics) (+ remote write)
//! ```
//!
//! Nothing here runs on the request path beyond taking the facts and a `try`-style send.

mod facts;
mod series;
mod servicegraph;
mod spanmetrics;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use obsbox_storage::{Batch, Writer};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};

pub(crate) use facts::{SpanFacts, extract};
use servicegraph::{EdgeStats, ServiceGraph};
use spanmetrics::SpanMetrics;

use crate::CollectorError;
use crate::remote_write::RemoteWrite;

/// How often the pairing store is swept for expired sides when no spans arrive.
const SWEEP: Duration = Duration::from_millis(250);

/// Settings of span-derived metrics (the `[derive]` configuration section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeriveConfig {
    /// Derive span metrics and the service graph. Default true.
    pub enabled: bool,
    /// Time between two writes of the derived points. Default 15 s; 1 s to 1 h.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Most series per derived metric family (span metrics; service graph edges). New series
    /// beyond this are counted in one series with `otel.metric.overflow="true"`. Default 10,000.
    pub max_series: usize,
    /// How long a client or server span waits for its partner. Default 2 s; at most 1 min.
    #[serde(with = "humantime_serde")]
    pub edge_wait: Duration,
    /// Most spans waiting for their partner at once; more are dropped (counted). Default 10,000.
    pub max_pending_edges: usize,
    /// Most spans queued for the derive thread; a batch that does not fit is dropped (counted),
    /// ingest never waits. Default 200,000.
    pub queue_spans: usize,
}

impl Default for DeriveConfig {
    fn default() -> Self {
        DeriveConfig {
            enabled: true,
            interval: Duration::from_secs(15),
            max_series: 10_000,
            edge_wait: Duration::from_secs(2),
            max_pending_edges: 10_000,
            queue_spans: 200_000,
        }
    }
}

impl DeriveConfig {
    /// Checks every value; the error names the key (without the `derive.` prefix).
    pub fn validate(&self) -> Result<(), CollectorError> {
        let bad = |key: &'static str, reason: &str| Err(CollectorError::InvalidConfig { key, reason: reason.into() });
        if self.interval < Duration::from_secs(1) || self.interval > Duration::from_secs(3600) {
            return bad("interval", "must be between 1s and 1h");
        }
        if self.edge_wait.is_zero() || self.edge_wait > Duration::from_secs(60) {
            return bad("edge_wait", "must be more than 0 and at most 1m");
        }
        for (key, value) in [
            ("max_series", self.max_series),
            ("max_pending_edges", self.max_pending_edges),
            ("queue_spans", self.queue_spans),
        ] {
            if value == 0 {
                return bad(key, "must be at least 1");
            }
        }
        Ok(())
    }
}

/// The `obsbox_derive_*` self-metrics.
#[derive(Clone)]
struct Telemetry {
    spans: IntCounter,
    dropped_batches: IntCounter,
    dropped_spans: IntCounter,
    queued_spans: IntGauge,
    series: IntGaugeVec,
    overflow_spans: IntCounter,
    edges: IntCounterVec,
    pending_edges: IntGauge,
    writes: IntCounterVec,
}

impl Telemetry {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let spans =
            IntCounter::new("obsbox_derive_spans_total", "Spans that span metrics and the service graph took.")?;
        let dropped_batches = IntCounter::new(
            "obsbox_derive_dropped_batches_total",
            "Span batches not derived from because the derive queue was full.",
        )?;
        let dropped_spans = IntCounter::new(
            "obsbox_derive_dropped_spans_total",
            "Spans in the batches dropped from the derive queue.",
        )?;
        let queued_spans = IntGauge::new("obsbox_derive_queued_spans", "Spans waiting for the derive thread.")?;
        let series = IntGaugeVec::new(
            Opts::new("obsbox_derive_series", "Derived series kept in memory, by family."),
            &["family"],
        )?;
        let overflow_spans = IntCounter::new(
            "obsbox_derive_overflow_spans_total",
            "Spans counted in the span metrics overflow series (cardinality limit reached).",
        )?;
        let edges = IntCounterVec::new(
            Opts::new(
                "obsbox_derive_edges_total",
                "Service graph sides by outcome: paired, database, expired (no partner within edge_wait), \
                 dropped (pairing store full), overflow (counted in the overflow series).",
            ),
            &["outcome"],
        )?;
        let pending_edges =
            IntGauge::new("obsbox_derive_pending_edges", "Client or server spans waiting for their partner.")?;
        let writes = IntCounterVec::new(
            Opts::new("obsbox_derive_writes_total", "Writes of derived points into the store, by outcome."),
            &["outcome"],
        )?;
        registry.register(Box::new(spans.clone()))?;
        registry.register(Box::new(dropped_batches.clone()))?;
        registry.register(Box::new(dropped_spans.clone()))?;
        registry.register(Box::new(queued_spans.clone()))?;
        registry.register(Box::new(series.clone()))?;
        registry.register(Box::new(overflow_spans.clone()))?;
        registry.register(Box::new(edges.clone()))?;
        registry.register(Box::new(pending_edges.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        Ok(Telemetry {
            spans,
            dropped_batches,
            dropped_spans,
            queued_spans,
            series,
            overflow_spans,
            edges,
            pending_edges,
            writes,
        })
    }
}

enum Msg {
    Spans(Vec<SpanFacts>),
    Stop,
}

/// Handle to the derive thread. Cheap to clone; [`Deriver::stop`] writes the last points and
/// ends the thread.
#[derive(Clone)]
pub struct Deriver {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    telemetry: Telemetry,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Deriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deriver").field("queued", &self.inner.queued.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl Deriver {
    /// Validates `config`, registers the `obsbox_derive_*` metrics in `registry` and starts the
    /// derive thread, which writes derived points through `writer` (and hands them to
    /// `remote_write` once the store acknowledged them).
    pub fn start(
        config: &DeriveConfig,
        writer: Arc<dyn Writer>,
        registry: &Registry,
        remote_write: Option<RemoteWrite>,
    ) -> Result<Deriver, CollectorError> {
        config.validate()?;
        let telemetry = Telemetry::register(registry)?;
        let (tx, rx) = mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let state = State {
            spans: SpanMetrics::new(config.max_series),
            graph: ServiceGraph::new(config.edge_wait, config.max_pending_edges, config.max_series),
            reported: EdgeStats::default(),
        };
        let worker = Worker {
            rx,
            state,
            writer,
            remote_write,
            telemetry: telemetry.clone(),
            queued: queued.clone(),
            interval: config.interval,
        };
        let thread =
            std::thread::Builder::new().name("obsbox-derive".into()).spawn(move || worker.run()).map_err(|e| {
                CollectorError::InvalidConfig { key: "derive", reason: format!("cannot start thread: {e}") }
            })?;
        Ok(Deriver {
            inner: Arc::new(Inner {
                tx,
                queued,
                max_queued: config.queue_spans,
                telemetry,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Hands the facts of an acknowledged batch to the derive thread without waiting: when the
    /// queue has no room for them, the batch is dropped and counted.
    pub(crate) fn submit(&self, facts: Vec<SpanFacts>) {
        let n = facts.len();
        if n == 0 {
            return;
        }
        let inner = &self.inner;
        let before = inner.queued.fetch_add(n, Ordering::SeqCst);
        if before + n > inner.max_queued || inner.tx.send(Msg::Spans(facts)).is_err() {
            inner.queued.fetch_sub(n, Ordering::SeqCst);
            inner.telemetry.dropped_batches.inc();
            inner.telemetry.dropped_spans.inc_by(n as u64);
            return;
        }
        inner.telemetry.queued_spans.add(n as i64);
    }

    /// Derives from what is queued, writes the last points and ends the thread. Blocks until
    /// then (call it from a blocking context before the store closes). Later calls do nothing.
    pub fn stop(&self) {
        let Some(thread) = self.inner.thread.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let _ = self.inner.tx.send(Msg::Stop);
        if thread.join().is_err() {
            tracing::error!("derive thread panicked");
        }
    }
}

struct State {
    spans: SpanMetrics,
    graph: ServiceGraph,
    /// Edge stats already added to the self-metrics.
    reported: EdgeStats,
}

impl State {
    fn record(&mut self, facts: &[SpanFacts], now: Instant, now_ns: u64, telemetry: &Telemetry) {
        let mut overflow = 0;
        for f in facts {
            self.graph.record(f, now, now_ns);
            overflow += u64::from(!self.spans.record(f, now_ns));
        }
        telemetry.spans.inc_by(facts.len() as u64);
        telemetry.overflow_spans.inc_by(overflow);
    }

    fn report(&mut self, telemetry: &Telemetry) {
        let now = self.graph.stats();
        let was = self.reported;
        for (outcome, n) in [
            ("paired", now.paired - was.paired),
            ("database", now.database - was.database),
            ("expired", now.expired - was.expired),
            ("dropped", now.dropped - was.dropped),
            ("overflow", now.overflow - was.overflow),
        ] {
            if n > 0 {
                telemetry.edges.with_label_values(&[outcome]).inc_by(n);
            }
        }
        self.reported = now;
        telemetry.pending_edges.set(self.graph.pending_len() as i64);
        telemetry.series.with_label_values(&["spanmetrics"]).set(self.spans.len() as i64);
        telemetry.series.with_label_values(&["servicegraph"]).set(self.graph.len() as i64);
    }

    /// Every derived series as one request, or `None` while there is none.
    fn emit(&mut self, now_ns: u64) -> Option<ExportMetricsServiceRequest> {
        let mut resource_metrics = self.spans.emit(now_ns);
        resource_metrics.extend(self.graph.emit(now_ns));
        (!resource_metrics.is_empty()).then_some(ExportMetricsServiceRequest { resource_metrics })
    }
}

struct Worker {
    rx: mpsc::Receiver<Msg>,
    state: State,
    writer: Arc<dyn Writer>,
    remote_write: Option<RemoteWrite>,
    telemetry: Telemetry,
    queued: Arc<AtomicUsize>,
    interval: Duration,
}

impl Worker {
    fn run(mut self) {
        let mut next_write = Instant::now() + self.interval;
        loop {
            let now = Instant::now();
            let stop = match self.rx.recv_timeout(next_write.saturating_duration_since(now).min(SWEEP)) {
                Ok(Msg::Spans(facts)) => {
                    self.queued.fetch_sub(facts.len(), Ordering::SeqCst);
                    self.telemetry.queued_spans.sub(facts.len() as i64);
                    self.state.record(&facts, Instant::now(), unix_nanos(), &self.telemetry);
                    false
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => true,
                Err(RecvTimeoutError::Timeout) => false,
            };
            let now = Instant::now();
            self.state.graph.expire(now);
            if stop || now >= next_write {
                self.write();
                next_write = now + self.interval;
            }
            self.state.report(&self.telemetry);
            if stop {
                return;
            }
        }
    }

    fn write(&mut self) {
        let Some(req) = self.state.emit(unix_nanos()) else {
            return;
        };
        let tap = self.remote_write.as_ref().map(|_| req.clone());
        match futures::executor::block_on(self.writer.write(Batch::Metrics(req))) {
            Ok(_) => {
                self.telemetry.writes.with_label_values(&["ok"]).inc();
                if let (Some(rw), Some(req)) = (&self.remote_write, tap) {
                    rw.push(&req);
                }
            }
            Err(e) => {
                // The state is cumulative: the next interval's points carry what this one missed.
                tracing::warn!(error = %e, "cannot write derived metrics");
                self.telemetry.writes.with_label_values(&["error"]).inc();
            }
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
