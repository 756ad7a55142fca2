//! [`Collector`]: the one ingest path both receivers call.
//!
//! `reserve` (in-flight byte budget) -> `export`: inflate + decode + validate on the bounded
//! decode pool -> `Writer::write` -> encoded `Export*ServiceResponse` with `partial_success`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use obsbox_storage::{Batch, Signal, StoreError, Writer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsPartialSuccess, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::metrics::v1::MetricsData;
use prometheus::IntGauge;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::decode::{self, Compression, Format};
use crate::derive::{self, Deriver, SpanFacts};
use crate::error::{BUSY_RETRY_AFTER, IngestError};
use crate::remote_write::{Prepared, RemoteWrite};
use crate::telemetry::{RejectReason, Telemetry, Transport};
use crate::validate::{self, Rejections};
use crate::{CollectorError, Limits};

/// The receivers' shared state: the writer, limits, a bounded decode pool, and self-telemetry.
///
/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Collector {
    inner: Arc<Inner>,
    /// Token checks of the two receivers, when ingest requires a token.
    auth: Option<Arc<IngestAuth>>,
}

/// One guard per receiver, so refusals are counted by listener.
struct IngestAuth {
    grpc: obsbox_net::Guard,
    http: obsbox_net::Guard,
}

struct Inner {
    writer: Arc<dyn Writer>,
    limits: Limits,
    /// One permit per byte of requests in flight.
    inflight: Arc<Semaphore>,
    /// One permit per decode thread.
    decode_slots: Arc<Semaphore>,
    telemetry: Telemetry,
    taps: Taps,
}

/// Where acknowledged batches also go, besides the store.
#[derive(Clone, Debug, Default)]
pub struct Taps {
    /// Span batches: span metrics and service graph.
    pub deriver: Option<Deriver>,
    /// Metric batches: Prometheus remote write.
    pub remote_write: Option<RemoteWrite>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("limits", &self.inner.limits)
            .field("inflight_available", &self.inner.inflight.available_permits())
            .finish_non_exhaustive()
    }
}

/// What a successful export returns to the receiver.
#[derive(Debug)]
pub(crate) struct Exported {
    /// The encoded `Export*ServiceResponse`, in the request's format.
    pub(crate) response: Bytes,
    /// Items rejected by validation (reported in `partial_success`).
    pub(crate) rejected: usize,
}

impl Collector {
    /// Creates the collector: validates `limits` and registers the self-telemetry metrics in
    /// `registry` (so one registry takes one collector).
    pub fn new(
        writer: Arc<dyn Writer>,
        limits: Limits,
        registry: &prometheus::Registry,
    ) -> Result<Self, CollectorError> {
        Self::with_taps(writer, limits, registry, Taps::default())
    }

    /// As [`Collector::new`], and every acknowledged batch also goes to its tap in `taps`.
    pub fn with_taps(
        writer: Arc<dyn Writer>,
        limits: Limits,
        registry: &prometheus::Registry,
        taps: Taps,
    ) -> Result<Self, CollectorError> {
        limits.validate()?;
        let telemetry = Telemetry::register(registry)?;
        Ok(Collector {
            inner: Arc::new(Inner {
                writer,
                inflight: Arc::new(Semaphore::new(limits.max_inflight_bytes)),
                decode_slots: Arc::new(Semaphore::new(limits.decode_threads)),
                limits,
                telemetry,
                taps,
            }),
            auth: None,
        })
    }

    /// The same collector requiring one of `tokens` on both receivers (gRPC `authorization`
    /// metadata, HTTP `Authorization` header: `Bearer <token>`); refusals are counted in
    /// `failures` with listener `otlp_grpc` or `otlp_http`.
    pub fn with_auth(mut self, tokens: obsbox_net::TokenSet, failures: &obsbox_net::AuthFailures) -> Self {
        use obsbox_net::Scheme::Bearer;
        let grpc = failures.guard(tokens.clone(), "otlp_grpc", Bearer);
        let http = failures.guard(tokens, "otlp_http", Bearer);
        self.auth = Some(Arc::new(IngestAuth { grpc, http }));
        self
    }

    /// The gRPC receiver's token check, if any.
    pub(crate) fn grpc_guard(&self) -> Option<&obsbox_net::Guard> {
        self.auth.as_deref().map(|a| &a.grpc)
    }

    /// The HTTP receiver's token check, if any.
    pub(crate) fn http_guard(&self) -> Option<&obsbox_net::Guard> {
        self.auth.as_deref().map(|a| &a.http)
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub(crate) fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    /// Takes `bytes` from the in-flight budget, or refuses at once (retryable).
    pub(crate) fn reserve(&self, bytes: usize) -> Result<InflightPermit, IngestError> {
        let permit = u32::try_from(bytes)
            .ok()
            .and_then(|n| self.inner.inflight.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(busy)?;
        Ok(InflightPermit::new(permit, &self.inner))
    }

    /// The ingest path shared by both receivers: decode `body` on the decode pool, validate,
    /// write what is valid, and return the encoded response.
    pub(crate) async fn export(
        &self,
        signal: Signal,
        transport: Transport,
        format: Format,
        compression: Compression,
        body: Bytes,
        permit: InflightPermit,
    ) -> Result<Exported, IngestError> {
        let telemetry = &self.inner.telemetry;
        telemetry.request_received(signal, transport, body.len());
        // Under overload, refusing before the decode keeps the decode pool's time for requests
        // the store can take, so goodput holds up during a flood.
        self.inner.writer.admission(signal).map_err(IngestError::from_store)?;

        // The decode pool: at most `decode_threads` requests are inflated/decoded at once, each
        // on a blocking thread. The slot and the budget permit move into the job, so they stay
        // held until the work is really done even if this future is dropped.
        let slot = self.inner.decode_slots.clone().acquire_owned().await.map_err(|_| {
            tracing::error!("decode pool closed");
            IngestError::internal()
        })?;
        let inner = Arc::clone(&self.inner);
        let job = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let mut permit = permit;
            let started = Instant::now();
            let decoded = decode_and_validate(&inner, signal, format, compression, body, &mut permit);
            inner.telemetry.decoded(signal, started.elapsed());
            (decoded, permit)
        });
        let (decoded, _permit) = job.await.map_err(|e| {
            tracing::error!(error = %e, "decode job failed");
            IngestError::internal()
        })?;
        let Decoded { batch, encoded, rejections, facts, prepared } = decoded?;

        for (reason, n) in rejections.by_reason() {
            telemetry.items_rejected(signal, reason, n);
        }
        let valid = batch.item_count();
        if valid > 0 {
            let written = match encoded {
                Some(encoded) => self.inner.writer.write_encoded(batch, encoded),
                None => self.inner.writer.write(batch),
            };
            if let Err(e) = written.await {
                let reason = match e {
                    StoreError::Overloaded { .. } => RejectReason::Overloaded,
                    StoreError::Unavailable(_) | StoreError::DiskFull(_) => RejectReason::Unavailable,
                    _ => RejectReason::Error,
                };
                telemetry.items_rejected(signal, reason, valid);
                return Err(IngestError::from_store(e));
            }
            telemetry.items_accepted(signal, valid);
            if let (Some(deriver), Some(facts)) = (&self.inner.taps.deriver, facts) {
                deriver.submit(facts);
            }
            if let (Some(rw), Some(prepared)) = (&self.inner.taps.remote_write, prepared) {
                rw.enqueue(prepared);
            }
        }
        let rejected = rejections.total();
        let message = (rejected > 0).then(|| rejections.message(signal, &self.inner.limits));
        Ok(Exported { response: encode_response(signal, format, rejected, message), rejected })
    }

    /// Runs `job` on the decode pool, holding one of its slots: for receivers whose payload must
    /// be converted to OTLP (Alertmanager's webhook) before it takes [`Collector::export`].
    pub(crate) async fn on_decode_pool<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, IngestError> {
        let slot = self.inner.decode_slots.clone().acquire_owned().await.map_err(|_| {
            tracing::error!("decode pool closed");
            IngestError::internal()
        })?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            job()
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "decode job failed");
            IngestError::internal()
        })
    }

    /// Records the outcome of one request; every request ends here exactly once.
    pub(crate) fn finish(&self, signal: Signal, transport: Transport, result: &Result<Exported, IngestError>) {
        let outcome = match result {
            Ok(e) if e.rejected > 0 => "partial",
            Ok(_) => "ok",
            Err(e) => {
                tracing::debug!(signal = signal.as_str(), ?transport, code = e.code.outcome(), "export refused");
                e.code.outcome()
            }
        };
        self.inner.telemetry.request_finished(signal, transport, outcome);
    }
}

fn busy() -> IngestError {
    IngestError::overloaded("the collector is busy (in-flight byte budget exhausted), retry later", BUSY_RETRY_AFTER)
}

/// A decoded, validated batch, and what the derived signals take from it.
struct Decoded {
    batch: Batch,
    /// The request's protobuf bytes, when they decode to exactly `batch`.
    encoded: Option<Bytes>,
    rejections: Rejections,
    /// With a deriver, the facts of the batch's spans.
    facts: Option<Vec<SpanFacts>>,
    /// With remote write, the batch's metrics converted.
    prepared: Option<Prepared>,
}

/// Runs on the decode pool.
fn decode_and_validate(
    inner: &Inner,
    signal: Signal,
    format: Format,
    compression: Compression,
    body: Bytes,
    permit: &mut InflightPermit,
) -> Result<Decoded, IngestError> {
    let limits = &inner.limits;
    let (mut batch, raw) = match compression {
        Compression::Identity => (decode::decode(signal, format, &body)?, body),
        Compression::Gzip => {
            let inflated = decode::inflate(&body, limits.max_decompressed_bytes)?;
            drop(body);
            if !permit.try_grow(inflated.len()) {
                return Err(busy());
            }
            (decode::decode(signal, format, &inflated)?, Bytes::from(inflated))
        }
    };
    let items = batch.item_count();
    if items > limits.max_items_per_request {
        inner.telemetry.items_rejected(signal, RejectReason::Limit, items);
        return Err(IngestError::invalid(format!(
            "request has {items} {}, more than the limit of {}",
            validate::item_noun(signal, items),
            limits.max_items_per_request
        )));
    }
    let containers = validate::containers(&batch);
    let rejections = validate::validate(&mut batch, limits);
    // The protobuf bytes as received still decode to the batch when validation dropped
    // nothing: the store can log them instead of encoding the batch again.
    let unchanged = rejections.total() == 0 && validate::containers(&batch) == containers;
    let encoded = (matches!(format, Format::Protobuf) && unchanged).then_some(raw);
    let (mut facts, mut prepared) = (None, None);
    match (&mut batch, &inner.taps) {
        (Batch::Traces(req), Taps { deriver: Some(_), .. }) => facts = Some(derive::extract(req)),
        (Batch::Metrics(req), Taps { remote_write: Some(rw), .. }) => {
            // The view reads `MetricsData`, the same message: lend it the points without a copy.
            let data = MetricsData { resource_metrics: std::mem::take(&mut req.resource_metrics) };
            prepared = Some(rw.prepare(&data));
            req.resource_metrics = data.resource_metrics;
        }
        _ => {}
    }
    Ok(Decoded { batch, encoded, rejections, facts, prepared })
}

/// Encodes the `Export*ServiceResponse`; `partial_success` is set only when items were rejected.
fn encode_response(signal: Signal, format: Format, rejected: usize, message: Option<String>) -> Bytes {
    let rejected_i64 = i64::try_from(rejected).unwrap_or(i64::MAX);
    match format {
        Format::Protobuf => {
            let bytes = match signal {
                Signal::Traces => ExportTraceServiceResponse {
                    partial_success: message
                        .map(|error_message| ExportTracePartialSuccess { rejected_spans: rejected_i64, error_message }),
                }
                .encode_to_vec(),
                Signal::Logs => ExportLogsServiceResponse {
                    partial_success: message.map(|error_message| ExportLogsPartialSuccess {
                        rejected_log_records: rejected_i64,
                        error_message,
                    }),
                }
                .encode_to_vec(),
                Signal::Metrics => ExportMetricsServiceResponse {
                    partial_success: message.map(|error_message| ExportMetricsPartialSuccess {
                        rejected_data_points: rejected_i64,
                        error_message,
                    }),
                }
                .encode_to_vec(),
            };
            Bytes::from(bytes)
        }
        Format::Json => {
            let value = match message {
                None => serde_json::json!({}),
                Some(error_message) => {
                    let field = match signal {
                        Signal::Traces => "rejectedSpans",
                        Signal::Logs => "rejectedLogRecords",
                        Signal::Metrics => "rejectedDataPoints",
                    };
                    serde_json::json!({
                        "partialSuccess": { field: rejected_i64, "errorMessage": error_message }
                    })
                }
            };
            Bytes::from(value.to_string())
        }
    }
}

/// Bytes taken from the in-flight budget; given back (and the gauge lowered) on drop.
#[derive(Debug)]
pub(crate) struct InflightPermit {
    permit: OwnedSemaphorePermit,
    semaphore: Arc<Semaphore>,
    gauge: IntGauge,
}

impl InflightPermit {
    fn new(permit: OwnedSemaphorePermit, inner: &Inner) -> Self {
        let gauge = inner.telemetry.inflight_gauge().clone();
        gauge.add(gauge_value(permit.num_permits()));
        InflightPermit { permit, semaphore: Arc::clone(&inner.inflight), gauge }
    }

    /// Takes `extra` more bytes if the budget has them.
    pub(crate) fn try_grow(&mut self, extra: usize) -> bool {
        let Some(more) = u32::try_from(extra).ok().and_then(|n| self.semaphore.clone().try_acquire_many_owned(n).ok())
        else {
            return false;
        };
        self.gauge.add(gauge_value(extra));
        self.permit.merge(more);
        true
    }

    /// Gives back everything above `bytes`.
    pub(crate) fn shrink_to(&mut self, bytes: usize) {
        let excess = self.permit.num_permits().saturating_sub(bytes);
        if let Some(released) = self.permit.split(excess) {
            self.gauge.sub(gauge_value(released.num_permits()));
        }
    }
}

impl Drop for InflightPermit {
    fn drop(&mut self) {
        self.gauge.sub(gauge_value(self.permit.num_permits()));
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NullWriter;

    impl Writer for NullWriter {
        fn write(&self, _batch: Batch) -> obsbox_storage::WriteFuture {
            Box::pin(async { Ok(obsbox_storage::WriteReceipt { seq: 0 }) })
        }
    }

    /// Takes spans and data points into the store (`ok`) or refuses them, remembering metrics.
    struct Store {
        ok: bool,
        metrics: std::sync::Mutex<Vec<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest>>,
    }

    impl Writer for Store {
        fn write(&self, batch: Batch) -> obsbox_storage::WriteFuture {
            if let Batch::Metrics(m) = &batch {
                self.metrics.lock().unwrap().push(m.clone());
            }
            let result = if self.ok {
                Ok(obsbox_storage::WriteReceipt { seq: 0 })
            } else {
                Err(StoreError::Overloaded { retry_after: std::time::Duration::from_secs(1) })
            };
            Box::pin(async move { result })
        }
    }

    /// Refuses every write up front, through `admission`, and counts the writes it still gets.
    struct Refusing(std::sync::atomic::AtomicUsize);

    impl Writer for Refusing {
        fn write(&self, _batch: Batch) -> obsbox_storage::WriteFuture {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Err(StoreError::Overloaded { retry_after: std::time::Duration::from_secs(1) }) })
        }

        fn admission(&self, _signal: Signal) -> Result<(), StoreError> {
            Err(StoreError::Overloaded { retry_after: std::time::Duration::from_secs(1) })
        }
    }

    #[tokio::test]
    async fn a_store_that_cannot_take_the_write_refuses_before_the_decode() {
        let registry = prometheus::Registry::new();
        let store = Arc::new(Refusing(Default::default()));
        let c = Collector::with_taps(store.clone(), Limits::default(), &registry, Taps::default()).unwrap();
        // Not protobuf at all: decoding it would answer INVALID_ARGUMENT, not overloaded.
        let body = Bytes::from_static(b"\xff\xff\xff not a request");
        let permit = c.reserve(body.len()).unwrap();
        let err = c
            .export(Signal::Traces, Transport::Grpc, Format::Protobuf, Compression::Identity, body, permit)
            .await
            .expect_err("refused");
        assert_eq!(err.code, crate::error::ErrorCode::Overloaded, "{err:?}");
        assert!(err.retry_after.is_some(), "retryable");
        assert_eq!(store.0.load(std::sync::atomic::Ordering::SeqCst), 0, "never reached write");
    }

    fn one_span() -> Bytes {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        let span = Span { trace_id: vec![1; 16], span_id: vec![2; 8], name: "op".into(), ..Default::default() };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }],
                ..Default::default()
            }],
        };
        Bytes::from(req.encode_to_vec())
    }

    #[tokio::test]
    async fn only_acknowledged_spans_are_derived_from() {
        for ok in [true, false] {
            let registry = prometheus::Registry::new();
            let store = Arc::new(Store { ok, metrics: Default::default() });
            let deriver = Deriver::start(&crate::DeriveConfig::default(), store.clone(), &registry, None).unwrap();
            let taps = Taps { deriver: Some(deriver.clone()), remote_write: None };
            let c = Collector::with_taps(store.clone(), Limits::default(), &registry, taps).unwrap();
            let body = one_span();
            let permit = c.reserve(body.len()).unwrap();
            let result =
                c.export(Signal::Traces, Transport::Grpc, Format::Protobuf, Compression::Identity, body, permit).await;
            assert_eq!(result.is_ok(), ok);
            tokio::task::spawn_blocking(move || deriver.stop()).await.unwrap();
            // Stopping writes the last points: derived ones exist only for the acknowledged span.
            assert_eq!(store.metrics.lock().unwrap().len(), usize::from(ok), "ok = {ok}");
        }
    }

    /// Takes every write, remembering each batch and the encoded bytes it came with, if any.
    #[derive(Default)]
    struct Logged(std::sync::Mutex<Vec<(Batch, Option<Bytes>)>>);

    impl Writer for Logged {
        fn write(&self, batch: Batch) -> obsbox_storage::WriteFuture {
            self.0.lock().unwrap().push((batch, None));
            Box::pin(async { Ok(obsbox_storage::WriteReceipt { seq: 0 }) })
        }

        fn write_encoded(&self, batch: Batch, encoded: Bytes) -> obsbox_storage::WriteFuture {
            self.0.lock().unwrap().push((batch, Some(encoded)));
            Box::pin(async { Ok(obsbox_storage::WriteReceipt { seq: 0 }) })
        }
    }

    #[tokio::test]
    async fn the_bytes_as_received_reach_the_store_only_when_they_decode_to_the_batch() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
        let one = ExportTraceServiceRequest::decode(one_span()).unwrap();
        // One span with a short trace id, rejected: the rest is stored, encoded again.
        let mut bad = one.clone();
        bad.resource_spans[0].scope_spans[0].spans.push(Default::default());
        // An empty scope group, which validation drops although it rejects no item.
        let mut empty_group = one.clone();
        empty_group
            .resource_spans
            .push(ResourceSpans { scope_spans: vec![ScopeSpans::default()], ..Default::default() });
        let gzip = |b: &[u8]| {
            use std::io::Write;
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(b).unwrap();
            Bytes::from(z.finish().unwrap())
        };
        let json = Bytes::from(serde_json::to_vec(&one).unwrap());
        let cases = [
            ("protobuf", Format::Protobuf, Compression::Identity, one_span(), Some(one_span())),
            ("gzip", Format::Protobuf, Compression::Gzip, gzip(&one_span()), Some(one_span())),
            ("a rejected span", Format::Protobuf, Compression::Identity, bad.encode_to_vec().into(), None),
            ("an empty group", Format::Protobuf, Compression::Identity, empty_group.encode_to_vec().into(), None),
            ("JSON", Format::Json, Compression::Identity, json, None),
        ];
        for (what, format, compression, body, want) in cases {
            let store = Arc::new(Logged::default());
            let c = Collector::new(store.clone(), Limits::default(), &prometheus::Registry::new()).unwrap();
            let permit = c.reserve(body.len()).unwrap();
            c.export(Signal::Traces, Transport::Http, format, compression, body, permit).await.expect(what);
            let writes = store.0.lock().unwrap();
            let [(Batch::Traces(batch), encoded)] = &writes[..] else { panic!("{what}: one write of spans") };
            assert_eq!(batch, &one, "{what}: the valid span is stored");
            assert_eq!(encoded, &want, "{what}");
            if let Some(e) = encoded {
                assert_eq!(&ExportTraceServiceRequest::decode(e.clone()).unwrap(), batch, "{what}");
            }
        }
    }

    #[test]
    fn inflight_budget_is_taken_and_given_back() {
        let registry = prometheus::Registry::new();
        let limits =
            Limits { max_body_bytes: 100, max_decompressed_bytes: 100, max_inflight_bytes: 300, ..Limits::default() };
        let c = Collector::new(Arc::new(NullWriter), limits, &registry).expect("collector");
        let gauge = c.telemetry().inflight_gauge().clone();
        let mut a = c.reserve(200).expect("fits");
        assert_eq!(gauge.get(), 200);
        assert!(c.reserve(101).is_err(), "over budget is refused");
        assert!(!a.try_grow(101));
        assert!(a.try_grow(50));
        assert_eq!(gauge.get(), 250);
        a.shrink_to(10);
        assert_eq!(gauge.get(), 10);
        let b = c.reserve(290).expect("fits after shrink");
        drop(a);
        drop(b);
        assert_eq!(gauge.get(), 0);
        assert_eq!(c.inner.inflight.available_permits(), 300);
    }

    #[test]
    fn one_registry_takes_one_collector() {
        let registry = prometheus::Registry::new();
        Collector::new(Arc::new(NullWriter), Limits::default(), &registry).expect("first");
        let err = Collector::new(Arc::new(NullWriter), Limits::default(), &registry).unwrap_err();
        assert!(matches!(err, CollectorError::Metrics(_)), "{err}");
    }

    #[test]
    fn json_responses_set_partial_success_only_when_rejecting() {
        assert_eq!(encode_response(Signal::Traces, Format::Json, 0, None), Bytes::from_static(b"{}"));
        let body = encode_response(Signal::Logs, Format::Json, 2, Some("2 log records rejected: x".into()));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["partialSuccess"]["rejectedLogRecords"], 2);
        // What an opentelemetry-proto based client decodes it into:
        let resp: ExportLogsServiceResponse = serde_json::from_slice(&body).expect("decodes as the proto type");
        assert_eq!(resp.partial_success.map(|p| p.rejected_log_records), Some(2));
        assert!(encode_response(Signal::Metrics, Format::Protobuf, 0, None).is_empty());
    }
}
