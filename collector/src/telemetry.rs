//! The collector's self-telemetry: one struct of typed Prometheus metrics, registered once, with
//! one method per event so call sites cannot misspell a label.

use std::time::Duration;

use obsbox_storage::Signal;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Which receiver a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Grpc,
    Http,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}

/// Why items were not stored (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RejectReason {
    /// The item is malformed (bad ids).
    Invalid,
    /// The item or its request breaks a limit.
    Limit,
    /// The store was overloaded.
    Overloaded,
    /// The store was unavailable.
    Unavailable,
    /// The store failed otherwise.
    Error,
}

impl RejectReason {
    fn as_str(self) -> &'static str {
        match self {
            RejectReason::Invalid => "invalid",
            RejectReason::Limit => "limit",
            RejectReason::Overloaded => "overloaded",
            RejectReason::Unavailable => "unavailable",
            RejectReason::Error => "error",
        }
    }
}

/// The metrics, created once per [`Collector`](crate::Collector).
#[derive(Clone)]
pub(crate) struct Telemetry {
    accepted_items: IntCounterVec,
    rejected_items: IntCounterVec,
    requests: IntCounterVec,
    request_bytes: IntCounterVec,
    inflight_bytes: IntGauge,
    decode_seconds: HistogramVec,
}

impl Telemetry {
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let accepted_items = IntCounterVec::new(
            Opts::new("obsbox_ingest_accepted_items_total", "Spans, log records and data points stored."),
            &["signal"],
        )?;
        let rejected_items = IntCounterVec::new(
            Opts::new(
                "obsbox_ingest_rejected_items_total",
                "Spans, log records and data points received and not stored, by reason.",
            ),
            &["signal", "reason"],
        )?;
        let requests = IntCounterVec::new(
            Opts::new("obsbox_ingest_requests_total", "OTLP export requests, by outcome."),
            &["signal", "transport", "outcome"],
        )?;
        let request_bytes = IntCounterVec::new(
            Opts::new(
                "obsbox_ingest_request_bytes_total",
                "Bytes of OTLP export requests as handed to the decoder (HTTP: body as received; \
                 gRPC: message after transport decompression).",
            ),
            &["signal", "transport"],
        )?;
        let inflight_bytes = IntGauge::new(
            "obsbox_ingest_inflight_bytes",
            "Bytes of requests being received, decoded or written right now.",
        )?;
        let decode_seconds = HistogramVec::new(
            HistogramOpts::new("obsbox_ingest_decode_seconds", "Time to inflate, decode and validate one request.")
                .buckets(vec![0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
            &["signal"],
        )?;
        registry.register(Box::new(accepted_items.clone()))?;
        registry.register(Box::new(rejected_items.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_bytes.clone()))?;
        registry.register(Box::new(inflight_bytes.clone()))?;
        registry.register(Box::new(decode_seconds.clone()))?;
        Ok(Telemetry { accepted_items, rejected_items, requests, request_bytes, inflight_bytes, decode_seconds })
    }

    pub(crate) fn items_accepted(&self, signal: Signal, n: usize) {
        if n > 0 {
            self.accepted_items.with_label_values(&[signal.as_str()]).inc_by(n as u64);
        }
    }

    pub(crate) fn items_rejected(&self, signal: Signal, reason: RejectReason, n: usize) {
        if n > 0 {
            self.rejected_items.with_label_values(&[signal.as_str(), reason.as_str()]).inc_by(n as u64);
        }
    }

    /// One finished request; `outcome` is `ok`, `partial` or an error code's label.
    pub(crate) fn request_finished(&self, signal: Signal, transport: Transport, outcome: &str) {
        self.requests.with_label_values(&[signal.as_str(), transport.as_str(), outcome]).inc();
    }

    pub(crate) fn request_received(&self, signal: Signal, transport: Transport, bytes: usize) {
        self.request_bytes.with_label_values(&[signal.as_str(), transport.as_str()]).inc_by(bytes as u64);
    }

    pub(crate) fn decoded(&self, signal: Signal, took: Duration) {
        self.decode_timer(signal).observe(took.as_secs_f64());
    }

    fn decode_timer(&self, signal: Signal) -> Histogram {
        self.decode_seconds.with_label_values(&[signal.as_str()])
    }

    /// The in-flight gauge, moved by [`InflightPermit`](crate::service::InflightPermit).
    pub(crate) fn inflight_gauge(&self) -> &IntGauge {
        &self.inflight_bytes
    }
}
