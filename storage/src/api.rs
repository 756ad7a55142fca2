//! The store's public contract: the [`Writer`] and [`Reader`] traits and the query types they take.
//!
//! Data crosses this boundary as OTLP types (`opentelemetry-proto`), so nothing is converted to a
//! private model between the receiver and the store's own on-disk format.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::MetricsData;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::StoreError;
use crate::prometheus::{PromView, ViewOptions};

/// One export request, as a receiver decoded it.
#[derive(Clone, Debug, PartialEq)]
pub enum Batch {
    /// Spans.
    Traces(ExportTraceServiceRequest),
    /// Log records.
    Logs(ExportLogsServiceRequest),
    /// Metric data points.
    Metrics(ExportMetricsServiceRequest),
}

impl Batch {
    /// The signal this batch carries.
    pub fn signal(&self) -> Signal {
        match self {
            Batch::Traces(_) => Signal::Traces,
            Batch::Logs(_) => Signal::Logs,
            Batch::Metrics(_) => Signal::Metrics,
        }
    }

    /// Number of items (spans, log records or data points) in the batch.
    pub fn item_count(&self) -> usize {
        match self {
            Batch::Traces(r) => r.resource_spans.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum(),
            Batch::Logs(r) => r.resource_logs.iter().flat_map(|rl| &rl.scope_logs).map(|sl| sl.log_records.len()).sum(),
            Batch::Metrics(r) => r
                .resource_metrics
                .iter()
                .flat_map(|rm| &rm.scope_metrics)
                .flat_map(|sm| &sm.metrics)
                .map(crate::metrics::point_count)
                .sum(),
        }
    }
}

/// The three OTLP signals the store keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    /// Spans.
    Traces,
    /// Log records.
    Logs,
    /// Metric data points.
    Metrics,
}

impl Signal {
    /// All signals, in a fixed order.
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Logs, Signal::Metrics];

    /// Lower-case name, as used in metrics labels and directory names.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }
}

/// What a successful write returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteReceipt {
    /// Position of the batch in the store's total order of writes (strictly increasing).
    pub seq: u64,
}

/// Future returned by [`Writer::write`].
pub type WriteFuture = BoxFuture<'static, Result<WriteReceipt, StoreError>>;

/// The write side of the store.
///
/// Contract, for every implementation:
/// - **Durability.** When the future returned by [`Writer::write`] resolves to `Ok`, the whole
///   batch is durable under the store's fsync policy (for the disk store's default policy: it is
///   in the write-ahead log and fsynced) and will be returned by every later read, also after a
///   crash and restart. When it resolves to `Err`, nothing of the batch is acknowledged; it may
///   or may not become visible (the caller retries, so duplicates are possible, as in OTLP).
/// - **Visibility.** An acknowledged batch becomes visible to [`Reader`] within the store's
///   commit interval (at most 2 s by default), never partially within one signal's index after
///   a restart (replay is whole batches).
/// - **Ordering.** Writes are totally ordered by [`WriteReceipt::seq`]; a batch whose future
///   resolved before another write was called has the lower sequence number.
/// - **Idempotency.** None: writing the same batch twice stores it twice.
/// - **Backpressure.** `write` never blocks. When the store cannot take more (queues full, disk
///   full), the future resolves at once to [`StoreError::Overloaded`] or
///   [`StoreError::Unavailable`], both retryable, and the store's memory stays bounded.
/// - **Ownership.** The store takes the batch; the caller keeps nothing.
pub trait Writer: Send + Sync + 'static {
    /// Appends one batch. See the trait documentation for the contract.
    fn write(&self, batch: Batch) -> WriteFuture;

    /// [`Writer::write`], given also an `encoded` form of the batch: protobuf bytes that decode
    /// to exactly `batch` (typically the request as received, when validation dropped nothing).
    /// A store that logs encoded batches may log these bytes rather than encode the batch
    /// again; the contract is that of `write`. The default ignores them.
    fn write_encoded(&self, batch: Batch, encoded: Bytes) -> WriteFuture {
        let _ = encoded;
        self.write(batch)
    }

    /// Whether a write of `signal` would be refused right now, whatever its size: the error
    /// [`Writer::write`] would resolve to (retryable), or `Ok`. Cheap and non-blocking, so a
    /// receiver can refuse a request before paying to decode it. Advisory only: `Ok` does not
    /// reserve anything, and a later `write` may still be refused.
    fn admission(&self, signal: Signal) -> Result<(), StoreError> {
        let _ = signal;
        Ok(())
    }
}

/// A span together with the resource and scope it was exported with.
///
/// Resource and scope are shared (`Arc`) between the spans of one read that have them in common.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    /// The resource the span was exported under.
    pub resource: Arc<Resource>,
    /// The resource's schema URL.
    pub resource_schema_url: String,
    /// The instrumentation scope.
    pub scope: Arc<InstrumentationScope>,
    /// The scope's schema URL.
    pub scope_schema_url: String,
    /// The span itself, exactly as received.
    pub span: Span,
}

/// A log record together with the resource and scope it was exported with.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    /// The resource the record was exported under.
    pub resource: Arc<Resource>,
    /// The resource's schema URL.
    pub resource_schema_url: String,
    /// The instrumentation scope.
    pub scope: Arc<InstrumentationScope>,
    /// The scope's schema URL.
    pub scope_schema_url: String,
    /// The log record itself, exactly as received.
    pub record: LogRecord,
}

/// A half-open time interval `[start_ns, end_ns)` in Unix nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TimeRange {
    /// Inclusive start.
    pub start_ns: u64,
    /// Exclusive end.
    pub end_ns: u64,
}

impl TimeRange {
    /// Every representable instant.
    pub const ALL: TimeRange = TimeRange { start_ns: 0, end_ns: u64::MAX };

    /// Whether `t` lies inside the range.
    pub fn contains(&self, t: u64) -> bool {
        t >= self.start_ns && t < self.end_ns
    }

    /// Whether the closed interval `[min, max]` overlaps the range.
    pub fn overlaps(&self, min: u64, max: u64) -> bool {
        min < self.end_ns && max >= self.start_ns
    }
}

/// A typed attribute value to compare against.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttrValue {
    /// A string value (exact match).
    Str(String),
    /// An integer value.
    Int(i64),
    /// A floating-point value (on the wire a JSON number, or `"NaN"`, `"inf"`, `"-inf"`, which
    /// JSON numbers cannot express).
    #[serde(with = "float_text")]
    Float(f64),
    /// A boolean value.
    Bool(bool),
}

/// Which attribute map an attribute predicate looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttrScope {
    /// The span's or log record's own attributes.
    Item,
    /// The resource attributes.
    Resource,
}

/// A predicate over spans. Identifiers are raw bytes (16 for trace ids, 8 for span ids).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanPredicate {
    /// Matches every span.
    All,
    /// The span belongs to this trace.
    TraceId(#[serde(with = "hex_bytes")] Vec<u8>),
    /// The span has this id.
    SpanId(#[serde(with = "hex_bytes")] Vec<u8>),
    /// The span's parent has this id (empty: root spans).
    ParentSpanId(#[serde(with = "hex_bytes")] Vec<u8>),
    /// `service.name` of the resource equals this.
    Service(String),
    /// The span name equals this.
    Name(String),
    /// The span kind (OTLP enum number) equals this.
    Kind(i32),
    /// The status code (OTLP enum number) equals this.
    StatusCode(i32),
    /// Duration in nanoseconds within `[min, max]`.
    Duration {
        /// Inclusive minimum.
        min: u64,
        /// Inclusive maximum.
        max: u64,
    },
    /// An attribute has exactly this value.
    Attribute {
        /// Span or resource attributes.
        scope: AttrScope,
        /// Attribute key.
        key: String,
        /// Value to compare.
        value: AttrValue,
    },
    /// An attribute with this key exists.
    AttributeExists {
        /// Span or resource attributes.
        scope: AttrScope,
        /// Attribute key.
        key: String,
    },
    /// A string attribute value (or array element) fully matches the regular expression
    /// (`regex` crate syntax, anchored at both ends).
    AttributeRegex {
        /// Span or resource attributes.
        scope: AttrScope,
        /// Attribute key.
        key: String,
        /// The expression.
        regex: String,
    },
    /// All of these hold.
    And(Vec<SpanPredicate>),
    /// At least one of these holds.
    Or(Vec<SpanPredicate>),
    /// This does not hold.
    Not(Box<SpanPredicate>),
}

/// Span search: the spans whose start time lies in `time` and that match `predicate`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpanQuery {
    /// What to match.
    pub predicate: SpanPredicate,
    /// Start time of the span.
    pub time: TimeRange,
    /// Maximum number of spans returned (newest start time first).
    pub limit: usize,
}

/// A predicate over log records.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogPredicate {
    /// Matches every record.
    All,
    /// Full-text query over the body, in tantivy's query syntax (terms, `word*` prefixes of 3
    /// characters or more, phrases, AND/OR/NOT).
    Text(String),
    /// `service.name` of the resource equals this.
    Service(String),
    /// Severity number at least this.
    MinSeverity(i32),
    /// Severity text equals this.
    SeverityText(String),
    /// The observed timestamp lies in the range.
    ObservedTime(TimeRange),
    /// The record carries this trace id.
    TraceId(#[serde(with = "hex_bytes")] Vec<u8>),
    /// The record carries this span id.
    SpanId(#[serde(with = "hex_bytes")] Vec<u8>),
    /// An attribute has exactly this value.
    Attribute {
        /// Record or resource attributes.
        scope: AttrScope,
        /// Attribute key.
        key: String,
        /// Value to compare.
        value: AttrValue,
    },
    /// An attribute with this key exists.
    AttributeExists {
        /// Record or resource attributes.
        scope: AttrScope,
        /// Attribute key.
        key: String,
    },
    /// All of these hold.
    And(Vec<LogPredicate>),
    /// At least one of these holds.
    Or(Vec<LogPredicate>),
    /// This does not hold.
    Not(Box<LogPredicate>),
}

/// Log search: records whose timestamp (or observed timestamp when the timestamp is 0) lies in
/// `time` and that match `predicate`, newest first.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogQuery {
    /// What to match.
    pub predicate: LogPredicate,
    /// Time of the record.
    pub time: TimeRange,
    /// Maximum number of records returned.
    pub limit: usize,
}

/// How a label matcher compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchOp {
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Fully matches the regular expression.
    Re,
    /// Does not fully match the regular expression.
    NotRe,
}

/// A Prometheus-style label matcher. A missing label has the value `""`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelMatcher {
    /// Label name: `__name__` for the metric name, otherwise a data point attribute key or,
    /// when the point has no such attribute, a resource attribute key.
    pub name: String,
    /// Comparison.
    pub op: MatchOp,
    /// Value or regular expression.
    pub value: String,
}

/// Metric read: every series matching all `matchers`, with its points whose time lies in `time`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricQuery {
    /// Series selection (all must match).
    pub matchers: Vec<LabelMatcher>,
    /// Point timestamps.
    pub time: TimeRange,
}

/// A span operation: the name of spans of one kind in one service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Operation {
    /// `service.name` of the resource.
    pub service: String,
    /// Span name.
    pub name: String,
    /// Span kind (OTLP enum number).
    pub kind: i32,
}

/// A log record field with few distinct values, for label lists and facets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogField {
    /// `service.name` of the resource.
    Service,
    /// The severity text.
    SeverityText,
}

/// Sizes and counts a store reports about itself.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoreStats {
    /// Bytes of write-ahead log on disk.
    pub wal_bytes: u64,
    /// Bytes of indexes and stored data on disk, per signal.
    pub index_bytes: Vec<(Signal, u64)>,
    /// Items written and not yet visible to reads, per signal: queued for indexing, or (traces
    /// and logs) indexed and waiting for the next commit, or WAL records a store opened with
    /// replay in the background has yet to index (one each). 0 means every item written so far
    /// is visible.
    pub pending_items: Vec<(Signal, u64)>,
    /// Number of immutable segments, per signal.
    pub segments: Vec<(Signal, u64)>,
    /// Index commits since the store opened.
    pub commits: u64,
    /// Seconds spent in those commits.
    pub commit_seconds: f64,
    /// Damaged files found since the store opened: set aside in a `quarantine/` directory (a
    /// torn write-ahead log tail after a crash counts too) or skipped in place.
    pub damaged_files: u64,
    /// Whether writes are refused because the disk is full (or below the free-space reserve).
    pub disk_full: bool,
    /// Bytes of memory held by the trace-id filters of index segments (built in the background
    /// for segments of 10,000 documents or more; a trace lookup skips the segments whose filter
    /// rules the trace out).
    #[serde(default)]
    pub trace_filter_bytes: u64,
}

/// Most spans the default [`Reader::find_trace_hits`] fetches in one search.
const MAX_TRACE_HIT_FETCH: usize = 1 << 20;

/// Identifiers as lowercase hex strings on the wire.
/// A list of ids as a list of hex strings.
pub(crate) mod hex_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        v.iter().map(hex::encode).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| hex::decode(t).map_err(|e| serde::de::Error::custom(format!("not a hex id: {e}"))))
            .collect()
    }
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        hex::decode(text.as_bytes()).map_err(|e| serde::de::Error::custom(format!("not a hex id: {e}")))
    }
}

/// JSON numbers cannot be NaN or infinite: those go as text, the rest as numbers.
mod float_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        match *v {
            v if v.is_nan() => s.serialize_str("NaN"),
            f64::INFINITY => s.serialize_str("inf"),
            f64::NEG_INFINITY => s.serialize_str("-inf"),
            v => s.serialize_f64(v),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Number(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Wire::deserialize(d)? {
            Wire::Number(v) => Ok(v),
            Wire::Text(t) => match t.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                _ => Err(serde::de::Error::custom(format!("not a number: {t:?}"))),
            },
        }
    }
}

/// Refuses a histogram bucket of zero length, as every [`Reader`] histogram must.
pub(crate) fn check_bucket(bucket_ns: u64) -> Result<(), StoreError> {
    match bucket_ns {
        0 => Err(StoreError::InvalidQuery("histogram bucket must be positive".into())),
        _ => Ok(()),
    }
}

/// The read side of the store.
///
/// Contract, for every implementation:
/// - Methods block and may do heavy work (index search, decompression): call them from a
///   blocking pool, never from an async runtime thread.
/// - Reads never block writers, and see a consistent snapshot of what was committed when the
///   call started.
/// - Returned data is owned by the caller; spans and log records come back exactly as written
///   (every field, attribute type, event, link and dropped count).
/// - A bad query (an unparsable full-text query, an invalid regular expression) returns
///   [`StoreError::InvalidQuery`].
pub trait Reader: Send + Sync + 'static {
    /// Every span of the trace, grouped by resource and scope, in write order. Empty when unknown.
    fn trace(&self, trace_id: &[u8]) -> Result<Vec<SpanRecord>, StoreError>;

    /// [`Reader::trace`] of each id, in the order given: one call for many traces, so a reader
    /// that reaches its data over the network (a searcher) answers a trace search in one round
    /// trip per source instead of one per trace.
    fn traces(&self, trace_ids: &[Vec<u8>]) -> Result<Vec<Vec<SpanRecord>>, StoreError> {
        trace_ids.iter().map(|id| self.trace(id)).collect()
    }

    /// Spans matching the query, newest start time first, at most `query.limit`.
    fn find_spans(&self, query: &SpanQuery) -> Result<Vec<SpanRecord>, StoreError>;

    /// Log records matching the query, newest first, at most `query.limit`.
    fn find_logs(&self, query: &LogQuery) -> Result<Vec<LogEntry>, StoreError>;

    /// Metric series matching the query, each with its points in the range, oldest point first.
    fn find_metrics(&self, query: &MetricQuery) -> Result<MetricsData, StoreError>;

    /// The Prometheus view ([`crate::prometheus`]) of the metric series matching `query`, keeping
    /// only the series whose view labels ([`crate::prometheus::series_labels`]: attribute, scope,
    /// `job` and `instance` labels) match every matcher in `labels` (a missing label is `""`; do
    /// not pass matchers on `__name__`, `le` or `quantile`, which differ between the series of
    /// one OTLP series). Equal to [`crate::prometheus::matching_view`] over
    /// [`Reader::find_metrics`], which is the default; a store can do the same without decoding
    /// the points of the series it leaves out or copying OTLP points. A bad regular expression
    /// is [`StoreError::InvalidQuery`].
    fn find_metrics_view(
        &self,
        query: &MetricQuery,
        labels: &[LabelMatcher],
        opts: &ViewOptions,
    ) -> Result<PromView, StoreError> {
        crate::prometheus::matching_view(&self.find_metrics(query)?, labels, opts)
    }

    /// Sizes and counts, cheap to call.
    fn stats(&self) -> StoreStats;

    /// Distinct trace ids of the spans matching the query, by their newest matching span start,
    /// newest first, at most `query.limit`.
    fn find_trace_ids(&self, query: &SpanQuery) -> Result<Vec<Vec<u8>>, StoreError>;

    /// [`Reader::find_trace_ids`] with each id's newest matching span start (Unix ns): the same
    /// ids in the same order, so that the answers of several stores can be merged
    /// ([`crate::call::merge`]). The default asks [`Reader::find_spans`] for more spans until
    /// `query.limit` distinct traces are found or the spans run out.
    fn find_trace_hits(&self, query: &SpanQuery) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        // Spans of one trace cluster in time: fetch a few spans per wanted trace, more if needed.
        let mut fetch = query.limit.saturating_mul(4).max(16);
        loop {
            let spans = self.find_spans(&SpanQuery { limit: fetch, ..query.clone() })?;
            let exhausted = spans.len() < fetch;
            let mut seen = std::collections::HashSet::new();
            let hits: Vec<(Vec<u8>, u64)> = spans
                .into_iter()
                .filter(|s| seen.insert(s.span.trace_id.clone()))
                .map(|s| (s.span.trace_id, s.span.start_time_unix_nano))
                .take(query.limit)
                .collect();
            if hits.len() >= query.limit || exhausted || fetch >= MAX_TRACE_HIT_FETCH {
                return Ok(hits);
            }
            fetch = fetch.saturating_mul(4).min(MAX_TRACE_HIT_FETCH);
        }
    }

    /// Distinct operations (service, span name, kind) of spans that may start in `time`, sorted
    /// by service, then kind, then name (the order of the index's terms, not `Operation`'s `Ord`).
    /// Coarse in time: whole segments overlapping the range are listed.
    fn operations(&self, time: TimeRange) -> Result<Vec<Operation>, StoreError>;

    /// Distinct values of a log field in `time`, sorted (coarse in time, as `operations`).
    fn log_field_values(&self, field: LogField, time: TimeRange) -> Result<Vec<String>, StoreError>;

    /// Attribute keys of spans ([`Signal::Traces`]) or log records ([`Signal::Logs`]) in `time`,
    /// sorted (coarse in time). Map entries appear as `key.subkey`.
    fn attribute_keys(&self, signal: Signal, scope: AttrScope, time: TimeRange) -> Result<Vec<String>, StoreError>;

    /// The most frequent values of one attribute with their item counts, most frequent first, at
    /// most `limit` (coarse in time; byte values are left out).
    fn attribute_values(
        &self,
        signal: Signal,
        scope: AttrScope,
        key: &str,
        time: TimeRange,
        limit: usize,
    ) -> Result<Vec<(AttrValue, u64)>, StoreError>;

    /// Number of spans matching `predicate` per bucket of their start time: (bucket start, count)
    /// for the non-empty buckets in `time`, oldest first; bucket starts are multiples of
    /// `bucket_ns`. Counts only, so it stays cheap over millions of spans (SLO event counts).
    fn span_histogram(
        &self,
        predicate: &SpanPredicate,
        time: TimeRange,
        bucket_ns: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError>;

    /// Number of log records matching `predicate` per time bucket: (bucket start, count) for the
    /// non-empty buckets in `time`, oldest first; bucket starts are multiples of `bucket_ns`.
    fn log_histogram(
        &self,
        predicate: &LogPredicate,
        time: TimeRange,
        bucket_ns: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError>;
}
