//! [`Reader`] calls as data: [`ReadCall`] names one call with its arguments, [`run`] answers it
//! over one store with a [`ReadResult`] (a *part*), and [`merge`] combines the parts of several
//! disjoint sources into the answer one store holding all of their data would give. Both
//! types cross the internal read API as JSON; spans, log records and metrics inside them travel
//! as OTLP protobuf (base64), so every field survives, ids included.
//!
//! # The merge contract
//! The sources are *disjoint*: each span, log record and metric point lives in exactly one of
//! them (the spans of one trace and the points of one series may be spread over several).
//! `merge(call, parts)` with `parts[i] = run(source_i, call)` then equals the answer of one store
//! holding the data of every source, call by call:
//! - **`find_spans`, `find_logs`**: newest first by span start / record time (the store's order
//!   keys), then the limit. Each source sends its own `limit` newest, which hold every item of the
//!   overall `limit` newest. Items with equal times keep the order of their sources (the parts'
//!   order), then each source's own order; the store itself leaves that order unspecified.
//! - **`find_trace_ids`** ([`Reader::find_trace_hits`]): each source sends its `limit` newest
//!   trace ids with the start of their newest matching span there; an id's newest start is the
//!   largest over the sources. A trace in the overall top `limit` is in the top `limit` of the
//!   source holding its newest matching span (every trace above it there is above it overall),
//!   so the merge is exact. Equal starts are ordered by trace id.
//! - **`trace`**: the parts one after the other, each in its own (write) order. A single store
//!   answers in write order, which has no meaning across stores; listing older sources first
//!   (the object store's segments, then the ingesters) keeps it whenever each source holds
//!   later writes than the ones before it, as for one ingester and its uploaded segments.
//! - **`find_metrics`**: series are merged by identity, as the store merges its blocks and head
//!   (the same code): one `Metric` per series with all its points, oldest first (equal times: the
//!   earlier part first). A series' description and metadata are those of the last part that has
//!   it (the store keeps the most recently written): list older sources first.
//! - **`find_metrics_view`**: the part is the OTLP data of the view's series ([`ReadResult::Metrics`],
//!   the series whose view labels match), merged as `find_metrics`; the caller builds the view
//!   with [`crate::prometheus::prometheus_view`]. Views themselves cannot be merged: a delta sum
//!   split over two sources is accumulated from the first point of the whole series.
//! - **`span_histogram`, `log_histogram`**: counts summed per bucket, oldest first. A disk
//!   store refuses too many buckets over the time span of the data it holds: each source judges
//!   by its own data, so a federation may answer a histogram one store would refuse.
//! - **`operations`, `log_field_values`, `attribute_keys`**: the sorted union (operations in the
//!   stores' order: service, kind, name).
//! - **`attribute_values`**: counts summed per value, most frequent first (equal counts in the
//!   order of the values' index terms, as the store), then the limit. A source's own cut-off
//!   would make the sum approximate (a value just below the cut in every source), so [`run`]
//!   asks each source for all its values (a store lists at most its own term cap) and [`merge`]
//!   applies `limit`.
//! - **`stats`**: sums per field and signal; `disk_full` when any source's disk is full.
//!
//! For every call, `merge(call, vec![run(store, call)?])` is the store's own answer
//! (`find_metrics_view`: its OTLP data). `merge` of no part is the empty answer. A part of the
//! wrong kind (a source of another version) is [`StoreError::Unavailable`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::{LogsData, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::MetricsData;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, TracesData};
use serde::{Deserialize, Serialize};

use crate::api::{
    AttrScope, AttrValue, LabelMatcher, LogEntry, LogField, LogPredicate, LogQuery, MetricQuery, Operation, Reader,
    Signal, SpanPredicate, SpanQuery, SpanRecord, StoreStats, TimeRange, check_bucket, hex_bytes,
};
use crate::memory::log_time;
use crate::metrics::{Matchers, MetricsHead};
use crate::prometheus::{PromView, ViewOptions};
use crate::{StoreError, attrs};

/// Largest `limit` of a span, log or trace id search that [`ReadCall::check`] lets through: a
/// store allocates for its limit up front.
pub const MAX_CALL_LIMIT: usize = 1 << 20;

/// One [`Reader`] call with its arguments. JSON: `{"find_spans": {...}}`, `"stats"`, ...
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadCall {
    /// [`Reader::trace`].
    Trace {
        /// The trace id (hex on the wire).
        #[serde(with = "hex_bytes")]
        trace_id: Vec<u8>,
    },
    /// [`Reader::traces`].
    Traces {
        /// The trace ids (hex on the wire).
        #[serde(with = "crate::api::hex_list")]
        trace_ids: Vec<Vec<u8>>,
    },
    /// [`Reader::find_spans`].
    FindSpans(SpanQuery),
    /// [`Reader::find_logs`].
    FindLogs(LogQuery),
    /// [`Reader::find_metrics`].
    FindMetrics(MetricQuery),
    /// [`Reader::find_metrics_view`] without its view options: the answer is the OTLP data of the
    /// view's series ([`ReadResult::Metrics`]); see the module documentation.
    FindMetricsView {
        /// The series and time range.
        query: MetricQuery,
        /// Matchers on the series' view labels.
        labels: Vec<LabelMatcher>,
    },
    /// [`Reader::find_trace_ids`], answered as [`Reader::find_trace_hits`].
    FindTraceIds(SpanQuery),
    /// [`Reader::operations`].
    Operations {
        /// Coarse time range.
        time: TimeRange,
    },
    /// [`Reader::log_field_values`].
    LogFieldValues {
        /// The field.
        field: LogField,
        /// Coarse time range.
        time: TimeRange,
    },
    /// [`Reader::attribute_keys`].
    AttributeKeys {
        /// Traces or logs.
        signal: Signal,
        /// Item or resource attributes.
        scope: AttrScope,
        /// Coarse time range.
        time: TimeRange,
    },
    /// [`Reader::attribute_values`]; [`run`] lists every value, [`merge`] applies `limit`.
    AttributeValues {
        /// Traces or logs.
        signal: Signal,
        /// Item or resource attributes.
        scope: AttrScope,
        /// Attribute key.
        key: String,
        /// Coarse time range.
        time: TimeRange,
        /// Most values in the merged answer.
        limit: usize,
    },
    /// [`Reader::span_histogram`].
    SpanHistogram {
        /// What to count.
        predicate: SpanPredicate,
        /// Span start range.
        time: TimeRange,
        /// Bucket width (positive).
        bucket_ns: u64,
    },
    /// [`Reader::log_histogram`].
    LogHistogram {
        /// What to count.
        predicate: LogPredicate,
        /// Record time range.
        time: TimeRange,
        /// Bucket width (positive).
        bucket_ns: u64,
    },
    /// [`Reader::stats`].
    Stats,
}

impl ReadCall {
    /// The signals whose data the call reads: a searcher fetches only those segments.
    pub fn signals(&self) -> &'static [Signal] {
        match self {
            ReadCall::Trace { .. } | ReadCall::Traces { .. } | ReadCall::FindSpans(_) | ReadCall::FindTraceIds(_) => {
                &[Signal::Traces]
            }
            ReadCall::Operations { .. } | ReadCall::SpanHistogram { .. } => &[Signal::Traces],
            ReadCall::FindLogs(_) | ReadCall::LogFieldValues { .. } | ReadCall::LogHistogram { .. } => &[Signal::Logs],
            ReadCall::FindMetrics(_) | ReadCall::FindMetricsView { .. } => &[Signal::Metrics],
            ReadCall::AttributeKeys { signal, .. } | ReadCall::AttributeValues { signal, .. } => match signal {
                Signal::Traces => &[Signal::Traces],
                Signal::Logs => &[Signal::Logs],
                Signal::Metrics => &[Signal::Metrics],
            },
            ReadCall::Stats => &Signal::ALL,
        }
    }

    /// The item times the call can look at: a segment whose `[min, max]` time does not overlap
    /// it ([`TimeRange::overlaps`]) cannot change the answer. A trace and the stats need every
    /// segment.
    pub fn time(&self) -> TimeRange {
        match self {
            ReadCall::FindSpans(q) | ReadCall::FindTraceIds(q) => q.time,
            ReadCall::FindLogs(q) => q.time,
            ReadCall::FindMetrics(q) | ReadCall::FindMetricsView { query: q, .. } => q.time,
            ReadCall::Operations { time }
            | ReadCall::LogFieldValues { time, .. }
            | ReadCall::AttributeKeys { time, .. }
            | ReadCall::AttributeValues { time, .. }
            | ReadCall::SpanHistogram { time, .. }
            | ReadCall::LogHistogram { time, .. } => *time,
            ReadCall::Trace { .. } | ReadCall::Traces { .. } | ReadCall::Stats => TimeRange::ALL,
        }
    }

    /// The call's name, as in its JSON form.
    pub fn name(&self) -> &'static str {
        match self {
            ReadCall::Trace { .. } => "trace",
            ReadCall::Traces { .. } => "traces",
            ReadCall::FindSpans(_) => "find_spans",
            ReadCall::FindLogs(_) => "find_logs",
            ReadCall::FindMetrics(_) => "find_metrics",
            ReadCall::FindMetricsView { .. } => "find_metrics_view",
            ReadCall::FindTraceIds(_) => "find_trace_ids",
            ReadCall::Operations { .. } => "operations",
            ReadCall::LogFieldValues { .. } => "log_field_values",
            ReadCall::AttributeKeys { .. } => "attribute_keys",
            ReadCall::AttributeValues { .. } => "attribute_values",
            ReadCall::SpanHistogram { .. } => "span_histogram",
            ReadCall::LogHistogram { .. } => "log_histogram",
            ReadCall::Stats => "stats",
        }
    }

    /// Refuses what a store must not be asked from outside: a search `limit` above
    /// [`MAX_CALL_LIMIT`] ([`StoreError::InvalidQuery`]). The rest is the stores' to check.
    pub fn check(&self) -> Result<(), StoreError> {
        let limit = match self {
            ReadCall::FindSpans(q) | ReadCall::FindTraceIds(q) => q.limit,
            ReadCall::FindLogs(q) => q.limit,
            ReadCall::Traces { trace_ids } => trace_ids.len(),
            _ => 0,
        };
        if limit > MAX_CALL_LIMIT {
            return Err(StoreError::InvalidQuery(format!(
                "{}: limit {limit} is above the maximum of {MAX_CALL_LIMIT}",
                self.name()
            )));
        }
        Ok(())
    }

    /// The answer of a store holding nothing.
    fn empty(&self) -> ReadResult {
        match self {
            ReadCall::Trace { .. } | ReadCall::FindSpans(_) => ReadResult::Spans(Vec::new()),
            ReadCall::Traces { trace_ids } => ReadResult::SpanLists(vec![SpanList::default(); trace_ids.len()]),
            ReadCall::FindLogs(_) => ReadResult::Logs(Vec::new()),
            ReadCall::FindMetrics(_) | ReadCall::FindMetricsView { .. } => ReadResult::Metrics(MetricsData::default()),
            ReadCall::FindTraceIds(_) => ReadResult::TraceHits(Vec::new()),
            ReadCall::Operations { .. } => ReadResult::Operations(Vec::new()),
            ReadCall::LogFieldValues { .. } | ReadCall::AttributeKeys { .. } => ReadResult::Strings(Vec::new()),
            ReadCall::AttributeValues { .. } => ReadResult::AttributeValues(Vec::new()),
            ReadCall::SpanHistogram { .. } | ReadCall::LogHistogram { .. } => ReadResult::Histogram(Vec::new()),
            ReadCall::Stats => ReadResult::Stats(StoreStats::default()),
        }
    }
}

/// A trace id with the start (Unix ns) of its newest matching span.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHit {
    /// The trace id (hex on the wire).
    #[serde(with = "hex_bytes")]
    pub trace_id: Vec<u8>,
    /// Start of the trace's newest span matching the query.
    pub newest_start_ns: u64,
}

/// The spans of one trace in a [`ReadResult::SpanLists`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpanList(#[serde(with = "wire_spans")] pub Vec<SpanRecord>);

/// The answer to a [`ReadCall`] (one source's part, or the merged answer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadResult {
    /// `trace`, `find_spans`: OTLP `TracesData` protobuf, base64, on the wire.
    Spans(#[serde(with = "wire_spans")] Vec<SpanRecord>),
    /// `traces`: one list per trace id asked for, in that order.
    SpanLists(Vec<SpanList>),
    /// `find_logs`: OTLP `LogsData` protobuf, base64, on the wire.
    Logs(#[serde(with = "wire_logs")] Vec<LogEntry>),
    /// `find_metrics`, `find_metrics_view`: OTLP `MetricsData` protobuf, base64, on the wire.
    Metrics(#[serde(with = "wire_metrics")] MetricsData),
    /// `find_trace_ids`.
    TraceHits(Vec<TraceHit>),
    /// `operations`.
    Operations(Vec<Operation>),
    /// `log_field_values`, `attribute_keys`.
    Strings(Vec<String>),
    /// `attribute_values`.
    AttributeValues(Vec<(AttrValue, u64)>),
    /// `span_histogram`, `log_histogram`: (bucket start, count).
    Histogram(Vec<(u64, u64)>),
    /// `stats`.
    Stats(StoreStats),
}

macro_rules! into_variant {
    ($(#[$doc:meta] $fn:ident, $variant:ident, $t:ty;)*) => {
        impl ReadResult {
            $(
                #[$doc]
                pub fn $fn(self) -> Result<$t, StoreError> {
                    match self {
                        ReadResult::$variant(v) => Ok(v),
                        other => Err(other.mismatch(stringify!($variant))),
                    }
                }
            )*
        }
    };
}

into_variant! {
    /// The spans, or an error naming what came instead.
    into_spans, Spans, Vec<SpanRecord>;
    /// The lists of spans, or an error naming what came instead.
    into_span_lists, SpanLists, Vec<SpanList>;
    /// The log records, or an error naming what came instead.
    into_logs, Logs, Vec<LogEntry>;
    /// The metric data, or an error naming what came instead.
    into_metrics, Metrics, MetricsData;
    /// The trace hits, or an error naming what came instead.
    into_trace_hits, TraceHits, Vec<TraceHit>;
    /// The operations, or an error naming what came instead.
    into_operations, Operations, Vec<Operation>;
    /// The strings, or an error naming what came instead.
    into_strings, Strings, Vec<String>;
    /// The attribute values, or an error naming what came instead.
    into_attribute_values, AttributeValues, Vec<(AttrValue, u64)>;
    /// The histogram, or an error naming what came instead.
    into_histogram, Histogram, Vec<(u64, u64)>;
    /// The stats, or an error naming what came instead.
    into_stats, Stats, StoreStats;
}

impl ReadResult {
    /// The variant's name.
    pub fn kind(&self) -> &'static str {
        match self {
            ReadResult::Spans(_) => "Spans",
            ReadResult::SpanLists(_) => "SpanLists",
            ReadResult::Logs(_) => "Logs",
            ReadResult::Metrics(_) => "Metrics",
            ReadResult::TraceHits(_) => "TraceHits",
            ReadResult::Operations(_) => "Operations",
            ReadResult::Strings(_) => "Strings",
            ReadResult::AttributeValues(_) => "AttributeValues",
            ReadResult::Histogram(_) => "Histogram",
            ReadResult::Stats(_) => "Stats",
        }
    }

    /// Whether the answer holds nothing (stats never count as empty).
    fn is_empty(&self) -> bool {
        match self {
            ReadResult::Spans(v) => v.is_empty(),
            ReadResult::SpanLists(v) => v.iter().all(|l| l.0.is_empty()),
            ReadResult::Logs(v) => v.is_empty(),
            ReadResult::Metrics(d) => d.resource_metrics.is_empty(),
            ReadResult::TraceHits(v) => v.is_empty(),
            ReadResult::Operations(v) => v.is_empty(),
            ReadResult::Strings(v) => v.is_empty(),
            ReadResult::AttributeValues(v) => v.is_empty(),
            ReadResult::Histogram(v) => v.is_empty(),
            ReadResult::Stats(_) => false,
        }
    }

    fn mismatch(&self, wanted: &str) -> StoreError {
        StoreError::Unavailable(format!("a read source answered {} where {wanted} was expected", self.kind()))
    }
}

/// Answers `call` over `reader`: the part [`merge`] combines (see the module documentation for
/// the two calls whose part differs from the reader's own answer).
pub fn run(reader: &dyn Reader, call: &ReadCall) -> Result<ReadResult, StoreError> {
    Ok(match call {
        ReadCall::Trace { trace_id } => ReadResult::Spans(reader.trace(trace_id)?),
        ReadCall::Traces { trace_ids } => {
            ReadResult::SpanLists(reader.traces(trace_ids)?.into_iter().map(SpanList).collect())
        }
        ReadCall::FindSpans(q) => ReadResult::Spans(reader.find_spans(q)?),
        ReadCall::FindLogs(q) => ReadResult::Logs(reader.find_logs(q)?),
        ReadCall::FindMetrics(q) => ReadResult::Metrics(reader.find_metrics(q)?),
        ReadCall::FindMetricsView { query, labels } => {
            let matchers = Matchers::compile(labels)?;
            let mut data = reader.find_metrics(query)?;
            crate::prometheus::retain_view_labels(&mut data, &matchers);
            ReadResult::Metrics(data)
        }
        ReadCall::FindTraceIds(q) => ReadResult::TraceHits(
            reader
                .find_trace_hits(q)?
                .into_iter()
                .map(|(trace_id, newest_start_ns)| TraceHit { trace_id, newest_start_ns })
                .collect(),
        ),
        ReadCall::Operations { time } => ReadResult::Operations(reader.operations(*time)?),
        ReadCall::LogFieldValues { field, time } => ReadResult::Strings(reader.log_field_values(*field, *time)?),
        ReadCall::AttributeKeys { signal, scope, time } => {
            ReadResult::Strings(reader.attribute_keys(*signal, *scope, *time)?)
        }
        ReadCall::AttributeValues { signal, scope, key, time, limit: _ } => {
            ReadResult::AttributeValues(reader.attribute_values(*signal, *scope, key, *time, usize::MAX)?)
        }
        ReadCall::SpanHistogram { predicate, time, bucket_ns } => {
            ReadResult::Histogram(reader.span_histogram(predicate, *time, *bucket_ns)?)
        }
        ReadCall::LogHistogram { predicate, time, bucket_ns } => {
            ReadResult::Histogram(reader.log_histogram(predicate, *time, *bucket_ns)?)
        }
        ReadCall::Stats => ReadResult::Stats(reader.stats()),
    })
}

/// Combines the parts of disjoint sources (in source order: older sources first) into the
/// answer one source holding all of their data would give. See the module documentation.
pub fn merge(call: &ReadCall, mut parts: Vec<ReadResult>) -> Result<ReadResult, StoreError> {
    let empty = call.empty();
    if let Some(wrong) = parts.iter().find(|p| p.kind() != empty.kind()) {
        return Err(wrong.mismatch(empty.kind()));
    }
    // Empty parts change nothing, and one part is the answer already (attribute values still
    // need their limit): a searcher whose data sits in one source pays no merge.
    parts.retain(|p| !p.is_empty());
    if parts.len() <= 1 && !matches!(call, ReadCall::AttributeValues { .. }) {
        return Ok(parts.pop().unwrap_or(empty));
    }
    Ok(match call {
        ReadCall::Trace { .. } => ReadResult::Spans(collect(parts, ReadResult::into_spans)?.concat()),
        ReadCall::Traces { trace_ids } => {
            // Per trace, the parts one after the other, as for `trace`.
            let mut merged = vec![SpanList::default(); trace_ids.len()];
            for part in collect(parts, ReadResult::into_span_lists)? {
                if part.len() != merged.len() {
                    return Err(StoreError::Unavailable(format!(
                        "a read source answered {} traces where {} were asked for",
                        part.len(),
                        merged.len()
                    )));
                }
                for (into, list) in merged.iter_mut().zip(part) {
                    into.0.extend(list.0);
                }
            }
            ReadResult::SpanLists(merged)
        }
        ReadCall::FindSpans(q) => {
            ReadResult::Spans(newest_first(collect(parts, ReadResult::into_spans)?, q.limit, |s| {
                s.span.start_time_unix_nano
            }))
        }
        ReadCall::FindLogs(q) => {
            ReadResult::Logs(newest_first(collect(parts, ReadResult::into_logs)?, q.limit, |l| log_time(&l.record)))
        }
        ReadCall::FindMetrics(_) | ReadCall::FindMetricsView { .. } => {
            ReadResult::Metrics(merge_metrics(collect(parts, ReadResult::into_metrics)?)?)
        }
        ReadCall::FindTraceIds(q) => {
            ReadResult::TraceHits(merge_trace_hits(collect(parts, ReadResult::into_trace_hits)?, q.limit))
        }
        ReadCall::Operations { .. } => {
            // In the order of the index terms, as every store lists them.
            let ops: BTreeMap<String, Operation> = collect(parts, ReadResult::into_operations)?
                .into_iter()
                .flatten()
                .map(|o| (crate::spans::op_term(&o.service, o.kind, &o.name), o))
                .collect();
            ReadResult::Operations(ops.into_values().collect())
        }
        ReadCall::LogFieldValues { .. } | ReadCall::AttributeKeys { .. } => {
            ReadResult::Strings(union(collect(parts, ReadResult::into_strings)?))
        }
        ReadCall::AttributeValues { limit, .. } => ReadResult::AttributeValues(merge_attribute_values(
            collect(parts, ReadResult::into_attribute_values)?,
            *limit,
        )),
        ReadCall::SpanHistogram { .. } | ReadCall::LogHistogram { .. } => {
            let mut sum: BTreeMap<u64, u64> = BTreeMap::new();
            for (bucket, n) in collect(parts, ReadResult::into_histogram)?.into_iter().flatten() {
                *sum.entry(bucket).or_insert(0) += n;
            }
            ReadResult::Histogram(sum.into_iter().collect())
        }
        ReadCall::Stats => ReadResult::Stats(merge_stats(collect(parts, ReadResult::into_stats)?)),
    })
}

fn collect<T>(
    parts: Vec<ReadResult>,
    take: impl Fn(ReadResult) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    parts.into_iter().map(take).collect()
}

/// Every item, newest first by `time_of` (a stable sort: equal times keep the parts' order),
/// then the first `limit`.
fn newest_first<T>(parts: Vec<Vec<T>>, limit: usize, time_of: impl Fn(&T) -> u64) -> Vec<T> {
    let mut all: Vec<T> = parts.into_iter().flatten().collect();
    all.sort_by_key(|x| std::cmp::Reverse(time_of(x)));
    all.truncate(limit);
    all
}

fn merge_trace_hits(parts: Vec<Vec<TraceHit>>, limit: usize) -> Vec<TraceHit> {
    let mut newest: HashMap<Vec<u8>, u64> = HashMap::new();
    for hit in parts.into_iter().flatten() {
        let t = newest.entry(hit.trace_id).or_insert(hit.newest_start_ns);
        *t = (*t).max(hit.newest_start_ns);
    }
    let mut hits: Vec<TraceHit> =
        newest.into_iter().map(|(trace_id, newest_start_ns)| TraceHit { trace_id, newest_start_ns }).collect();
    hits.sort_by(|a, b| b.newest_start_ns.cmp(&a.newest_start_ns).then_with(|| a.trace_id.cmp(&b.trace_id)));
    hits.truncate(limit);
    hits
}

fn union<T: Ord>(parts: Vec<Vec<T>>) -> Vec<T> {
    parts.into_iter().flatten().collect::<BTreeSet<T>>().into_iter().collect()
}

fn merge_attribute_values(parts: Vec<Vec<(AttrValue, u64)>>, limit: usize) -> Vec<(AttrValue, u64)> {
    // Keyed by the value's index term: what the store orders equal counts by, and an exact key
    // for floats.
    let mut counts: BTreeMap<String, (AttrValue, u64)> = BTreeMap::new();
    for (value, n) in parts.into_iter().flatten() {
        counts.entry(attrs::predicate_term("", &value)).or_insert((value, 0)).1 += n;
    }
    let mut values: Vec<(AttrValue, u64)> = counts.into_values().collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.1));
    values.truncate(limit);
    values
}

/// Series merged by identity through a metrics head, as the store merges its blocks and head.
fn merge_metrics(parts: Vec<MetricsData>) -> Result<MetricsData, StoreError> {
    let mut head = MetricsHead::new();
    for part in parts {
        head.append(&ExportMetricsServiceRequest { resource_metrics: part.resource_metrics });
    }
    head.query(&MetricQuery { matchers: Vec::new(), time: TimeRange::ALL })
}

fn merge_stats(parts: Vec<StoreStats>) -> StoreStats {
    fn sum(into: &mut BTreeMap<Signal, u64>, list: &[(Signal, u64)]) {
        for (s, n) in list {
            *into.entry(*s).or_insert(0) += n;
        }
    }
    let (mut index, mut pending, mut segments) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut out = StoreStats::default();
    for p in &parts {
        out.wal_bytes += p.wal_bytes;
        sum(&mut index, &p.index_bytes);
        sum(&mut pending, &p.pending_items);
        sum(&mut segments, &p.segments);
        out.commits += p.commits;
        out.commit_seconds += p.commit_seconds;
        out.damaged_files += p.damaged_files;
        out.disk_full |= p.disk_full;
        out.trace_filter_bytes += p.trace_filter_bytes;
    }
    out.index_bytes = index.into_iter().collect();
    out.pending_items = pending.into_iter().collect();
    out.segments = segments.into_iter().collect();
    out
}

/// Whether two shared values are the same (cheap when they share the allocation).
fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

fn base64_text(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_bytes<E: serde::de::Error>(text: &str) -> Result<Vec<u8>, E> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| E::custom(format!("not base64: {e}")))
}

/// Groups consecutive items that share a resource and a scope, in order.
fn group<'a, T, R, S>(
    items: &'a [T],
    parts: impl Fn(&'a T) -> (&'a Arc<Resource>, &'a str, &'a Arc<InstrumentationScope>, &'a str),
    mut new_resource: impl FnMut(&Resource, &str) -> R,
    mut new_scope: impl FnMut(&mut R, &InstrumentationScope, &str) -> S,
    mut push: impl FnMut(&mut R, &'a T),
) -> Vec<R> {
    let mut out: Vec<R> = Vec::new();
    let mut last: Option<(&Arc<Resource>, &str, &Arc<InstrumentationScope>, &str)> = None;
    for item in items {
        let (r, r_url, s, s_url) = parts(item);
        let same_resource = last.is_some_and(|(lr, lu, _, _)| lu == r_url && same(lr, r));
        let same_scope = same_resource && last.is_some_and(|(_, _, ls, lu)| lu == s_url && same(ls, s));
        if !same_resource {
            out.push(new_resource(r, r_url));
        }
        let Some(group) = out.last_mut() else { continue };
        if !same_scope {
            new_scope(group, s, s_url);
        }
        push(group, item);
        last = Some((r, r_url, s, s_url));
    }
    out
}

mod wire_spans {
    use super::*;
    use prost::Message;

    pub fn serialize<S: serde::Serializer>(spans: &[SpanRecord], s: S) -> Result<S::Ok, S::Error> {
        let resource_spans = group(
            spans,
            |r| (&r.resource, r.resource_schema_url.as_str(), &r.scope, r.scope_schema_url.as_str()),
            |r, url| ResourceSpans { resource: Some(r.clone()), scope_spans: Vec::new(), schema_url: url.into() },
            |rs, scope, url| {
                rs.scope_spans.push(ScopeSpans {
                    scope: Some(scope.clone()),
                    spans: Vec::new(),
                    schema_url: url.into(),
                })
            },
            |rs, r| {
                if let Some(ss) = rs.scope_spans.last_mut() {
                    ss.spans.push(r.span.clone());
                }
            },
        );
        s.serialize_str(&base64_text(&TracesData { resource_spans }.encode_to_vec()))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SpanRecord>, D::Error> {
        let bytes = base64_bytes(&String::deserialize(d)?)?;
        crate::spans::decode(vec![crate::segments::Stored::whole(bytes)]).map_err(serde::de::Error::custom)
    }
}

mod wire_logs {
    use super::*;
    use prost::Message;

    pub fn serialize<S: serde::Serializer>(logs: &[LogEntry], s: S) -> Result<S::Ok, S::Error> {
        let resource_logs = group(
            logs,
            |l| (&l.resource, l.resource_schema_url.as_str(), &l.scope, l.scope_schema_url.as_str()),
            |r, url| ResourceLogs { resource: Some(r.clone()), scope_logs: Vec::new(), schema_url: url.into() },
            |rl, scope, url| {
                rl.scope_logs.push(ScopeLogs {
                    scope: Some(scope.clone()),
                    log_records: Vec::new(),
                    schema_url: url.into(),
                })
            },
            |rl, l| {
                if let Some(sl) = rl.scope_logs.last_mut() {
                    sl.log_records.push(l.record.clone());
                }
            },
        );
        s.serialize_str(&base64_text(&LogsData { resource_logs }.encode_to_vec()))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<LogEntry>, D::Error> {
        let bytes = base64_bytes(&String::deserialize(d)?)?;
        crate::logs::decode(vec![crate::segments::Stored::whole(bytes)]).map_err(serde::de::Error::custom)
    }
}

mod wire_metrics {
    use super::*;
    use prost::Message;

    pub fn serialize<S: serde::Serializer>(data: &MetricsData, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64_text(&data.encode_to_vec()))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<MetricsData, D::Error> {
        let bytes = base64_bytes(&String::deserialize(d)?)?;
        MetricsData::decode(bytes.as_slice()).map_err(|e| serde::de::Error::custom(format!("metrics data: {e}")))
    }
}

/// Something that answers [`ReadCall`]s with merged answers, such as a searcher over ingesters
/// and object-store segments, or a [`crate::FederatedReader`]; it is a [`Reader`] by that alone
/// (each method one call; [`Reader::find_metrics_view`] builds the view of the merged series,
/// [`Reader::stats`] is empty when the call fails).
///
/// [`ReadCall::Stats`] must be answered at once, without waiting on other nodes:
/// [`Reader::stats`] is cheap by contract and is called on async threads (the `/metrics` scrape).
pub trait Answer: Send + Sync + 'static {
    /// The merged answer to `call` (blocking, like every [`Reader`] method).
    fn answer(&self, call: &ReadCall) -> Result<ReadResult, StoreError>;
}

impl<A: Answer> Reader for A {
    fn trace(&self, trace_id: &[u8]) -> Result<Vec<SpanRecord>, StoreError> {
        Answer::answer(self, &ReadCall::Trace { trace_id: trace_id.to_vec() })?.into_spans()
    }

    fn traces(&self, trace_ids: &[Vec<u8>]) -> Result<Vec<Vec<SpanRecord>>, StoreError> {
        let lists = Answer::answer(self, &ReadCall::Traces { trace_ids: trace_ids.to_vec() })?.into_span_lists()?;
        Ok(lists.into_iter().map(|l| l.0).collect())
    }

    fn find_spans(&self, query: &SpanQuery) -> Result<Vec<SpanRecord>, StoreError> {
        Answer::answer(self, &ReadCall::FindSpans(query.clone()))?.into_spans()
    }

    fn find_logs(&self, query: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
        Answer::answer(self, &ReadCall::FindLogs(query.clone()))?.into_logs()
    }

    fn find_metrics(&self, query: &MetricQuery) -> Result<MetricsData, StoreError> {
        Answer::answer(self, &ReadCall::FindMetrics(query.clone()))?.into_metrics()
    }

    fn find_metrics_view(
        &self,
        query: &MetricQuery,
        labels: &[LabelMatcher],
        opts: &ViewOptions,
    ) -> Result<PromView, StoreError> {
        let call = ReadCall::FindMetricsView { query: query.clone(), labels: labels.to_vec() };
        let data = Answer::answer(self, &call)?.into_metrics()?;
        Ok(crate::prometheus::prometheus_view(&data, opts))
    }

    fn stats(&self) -> StoreStats {
        // Infallible: stats that cannot be had count as empty.
        Answer::answer(self, &ReadCall::Stats).and_then(ReadResult::into_stats).unwrap_or_default()
    }

    fn find_trace_ids(&self, query: &SpanQuery) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.find_trace_hits(query)?.into_iter().map(|(id, _)| id).collect())
    }

    fn find_trace_hits(&self, query: &SpanQuery) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let hits = Answer::answer(self, &ReadCall::FindTraceIds(query.clone()))?.into_trace_hits()?;
        Ok(hits.into_iter().map(|h| (h.trace_id, h.newest_start_ns)).collect())
    }

    fn operations(&self, time: TimeRange) -> Result<Vec<Operation>, StoreError> {
        Answer::answer(self, &ReadCall::Operations { time })?.into_operations()
    }

    fn log_field_values(&self, field: LogField, time: TimeRange) -> Result<Vec<String>, StoreError> {
        Answer::answer(self, &ReadCall::LogFieldValues { field, time })?.into_strings()
    }

    fn attribute_keys(&self, signal: Signal, scope: AttrScope, time: TimeRange) -> Result<Vec<String>, StoreError> {
        Answer::answer(self, &ReadCall::AttributeKeys { signal, scope, time })?.into_strings()
    }

    fn attribute_values(
        &self,
        signal: Signal,
        scope: AttrScope,
        key: &str,
        time: TimeRange,
        limit: usize,
    ) -> Result<Vec<(AttrValue, u64)>, StoreError> {
        let call = ReadCall::AttributeValues { signal, scope, key: key.to_string(), time, limit };
        Answer::answer(self, &call)?.into_attribute_values()
    }

    fn span_histogram(
        &self,
        predicate: &SpanPredicate,
        time: TimeRange,
        bucket_ns: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        check_bucket(bucket_ns)?;
        let call = ReadCall::SpanHistogram { predicate: predicate.clone(), time, bucket_ns };
        Answer::answer(self, &call)?.into_histogram()
    }

    fn log_histogram(
        &self,
        predicate: &LogPredicate,
        time: TimeRange,
        bucket_ns: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        check_bucket(bucket_ns)?;
        let call = ReadCall::LogHistogram { predicate: predicate.clone(), time, bucket_ns };
        Answer::answer(self, &call)?.into_histogram()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    };
    use opentelemetry_proto::tonic::trace::v1::Span;

    use super::*;
    use crate::api::{Batch, MatchOp, Writer};
    use crate::testsuite::full_span;
    use crate::{DiskStore, MemStore, StoreConfig};

    const T0: u64 = 1_700_000_000_000_000_000;

    fn record(service: &str, span: Span) -> SpanRecord {
        SpanRecord {
            resource: Arc::new(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue { value: Some(Value::StringValue(service.into())) }),
                    ..Default::default()
                }],
                dropped_attributes_count: 2,
                ..Default::default()
            }),
            resource_schema_url: "r".into(),
            scope: Arc::new(InstrumentationScope { name: "s".into(), version: "1".into(), ..Default::default() }),
            scope_schema_url: "s".into(),
            span,
        }
    }

    fn span_at(trace: u8, n: u8, start: u64) -> Span {
        let mut s = full_span(trace, n, None);
        s.start_time_unix_nano = start;
        s
    }

    fn log_entry(n: u8, time: u64) -> LogEntry {
        let s = record("svc-log", full_span(0, 0, None));
        LogEntry {
            resource: s.resource,
            resource_schema_url: String::new(),
            scope: s.scope,
            scope_schema_url: "x".into(),
            record: opentelemetry_proto::tonic::logs::v1::LogRecord {
                time_unix_nano: time,
                observed_time_unix_nano: time + 1,
                severity_number: 9,
                severity_text: "INFO".into(),
                body: Some(AnyValue { value: Some(Value::StringValue(format!("line {n}"))) }),
                trace_id: vec![n; 16],
                span_id: vec![n; 8],
                flags: 1,
                event_name: "e".into(),
                ..Default::default()
            },
        }
    }

    fn gauge(name: &str, route: &str, points: &[(u64, f64)], description: &str) -> MetricsData {
        let attrs = vec![KeyValue {
            key: "route".into(),
            value: Some(AnyValue { value: Some(Value::StringValue(route.into())) }),
            ..Default::default()
        }];
        let data_points = points
            .iter()
            .map(|&(t, v)| NumberDataPoint {
                attributes: attrs.clone(),
                time_unix_nano: t,
                value: Some(number_data_point::Value::AsDouble(v)),
                ..Default::default()
            })
            .collect();
        MetricsData {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource::default()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope::default()),
                    metrics: vec![Metric {
                        name: name.into(),
                        description: description.into(),
                        unit: "1".into(),
                        data: Some(Data::Gauge(Gauge { data_points })),
                        ..Default::default()
                    }],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn every_call() -> Vec<ReadCall> {
        let time = TimeRange { start_ns: 5, end_ns: u64::MAX };
        let span_query = SpanQuery {
            predicate: SpanPredicate::And(vec![
                SpanPredicate::TraceId(vec![0xab; 16]),
                SpanPredicate::Not(Box::new(SpanPredicate::ParentSpanId(vec![]))),
                SpanPredicate::Or(vec![SpanPredicate::SpanId(vec![1; 8]), SpanPredicate::Kind(2)]),
                SpanPredicate::Duration { min: 1, max: u64::MAX },
                SpanPredicate::Attribute { scope: AttrScope::Resource, key: "f".into(), value: AttrValue::Float(0.1) },
                SpanPredicate::AttributeExists { scope: AttrScope::Item, key: "k".into() },
                SpanPredicate::AttributeRegex { scope: AttrScope::Item, key: "k".into(), regex: "a.*".into() },
                SpanPredicate::Service("s".into()),
                SpanPredicate::Name("n".into()),
                SpanPredicate::StatusCode(2),
                SpanPredicate::All,
            ]),
            time,
            limit: 20,
        };
        let log_predicate = LogPredicate::Or(vec![
            LogPredicate::Text("a AND b".into()),
            LogPredicate::Service("s".into()),
            LogPredicate::MinSeverity(9),
            LogPredicate::SeverityText("WARN".into()),
            LogPredicate::ObservedTime(time),
            LogPredicate::TraceId(vec![1; 16]),
            LogPredicate::SpanId(vec![2; 8]),
            LogPredicate::Attribute { scope: AttrScope::Item, key: "b".into(), value: AttrValue::Bool(true) },
            LogPredicate::AttributeExists { scope: AttrScope::Resource, key: "k".into() },
            LogPredicate::And(vec![LogPredicate::All, LogPredicate::Not(Box::new(LogPredicate::All))]),
        ]);
        let metric_query = MetricQuery {
            matchers: vec![
                LabelMatcher { name: "__name__".into(), op: MatchOp::Eq, value: "m".into() },
                LabelMatcher { name: "a".into(), op: MatchOp::Ne, value: "".into() },
                LabelMatcher { name: "b".into(), op: MatchOp::Re, value: "x|y".into() },
                LabelMatcher { name: "c".into(), op: MatchOp::NotRe, value: "z".into() },
            ],
            time,
        };
        vec![
            ReadCall::Trace { trace_id: vec![0xab; 16] },
            ReadCall::Traces { trace_ids: vec![vec![0xab; 16], vec![0x01; 16]] },
            ReadCall::FindSpans(span_query.clone()),
            ReadCall::FindLogs(LogQuery { predicate: log_predicate.clone(), time, limit: 3 }),
            ReadCall::FindMetrics(metric_query.clone()),
            ReadCall::FindMetricsView {
                query: metric_query,
                labels: vec![LabelMatcher { name: "job".into(), op: MatchOp::Eq, value: "j".into() }],
            },
            ReadCall::FindTraceIds(span_query),
            ReadCall::Operations { time },
            ReadCall::LogFieldValues { field: LogField::SeverityText, time },
            ReadCall::AttributeKeys { signal: Signal::Logs, scope: AttrScope::Resource, time },
            ReadCall::AttributeValues {
                signal: Signal::Traces,
                scope: AttrScope::Item,
                key: "k".into(),
                time,
                limit: 4,
            },
            ReadCall::SpanHistogram { predicate: SpanPredicate::StatusCode(2), time, bucket_ns: 60 },
            ReadCall::LogHistogram { predicate: log_predicate, time, bucket_ns: 1 },
            ReadCall::Stats,
        ]
    }

    #[test]
    fn every_call_and_result_survives_a_json_round_trip() {
        let calls = every_call();
        let names: BTreeSet<&str> = calls.iter().map(ReadCall::name).collect();
        assert_eq!(names.len(), 14, "one of each call");
        for call in &calls {
            let json = serde_json::to_string(call).unwrap();
            let back: ReadCall = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, call, "{json}");
            assert!(json.starts_with(&format!("{{\"{}\"", call.name())) || json == "\"stats\"", "{json}");
        }
        let json = serde_json::to_string(&calls[0]).unwrap();
        assert_eq!(json, r#"{"trace":{"trace_id":"abababababababababababababababab"}}"#, "ids as hex");

        let spans = vec![
            record("a", full_span(1, 0, None)),
            record("a", full_span(1, 1, Some(0))),
            record("b", full_span(2, 2, None)),
            record("a", full_span(1, 3, Some(1))),
        ];
        let results = vec![
            ReadResult::Spans(spans.clone()),
            ReadResult::Spans(Vec::new()),
            ReadResult::Logs(vec![log_entry(1, T0), log_entry(2, 0)]),
            ReadResult::Metrics(gauge("m", "/a", &[(T0, 1.5), (T0 + 1, -0.0)], "d")),
            ReadResult::TraceHits(vec![TraceHit { trace_id: vec![7; 16], newest_start_ns: u64::MAX }]),
            ReadResult::Operations(vec![Operation { service: "s".into(), name: "n".into(), kind: 2 }]),
            ReadResult::Strings(vec!["a".into(), "\u{0}b".into()]),
            ReadResult::AttributeValues(vec![
                (AttrValue::Str("x".into()), 3),
                (AttrValue::Int(-4), 2),
                (AttrValue::Float(f64::INFINITY), 2),
                (AttrValue::Float(f64::NEG_INFINITY), 2),
                (AttrValue::Float(0.1), 1),
                (AttrValue::Bool(false), 1),
            ]),
            ReadResult::Histogram(vec![(0, 1), (u64::MAX, 2)]),
            ReadResult::Stats(StoreStats {
                wal_bytes: 1,
                index_bytes: vec![(Signal::Traces, 2)],
                pending_items: vec![(Signal::Logs, 3)],
                segments: vec![(Signal::Metrics, 4)],
                commits: 5,
                commit_seconds: 0.25,
                damaged_files: 6,
                disk_full: true,
                trace_filter_bytes: 7,
            }),
        ];
        let kinds: BTreeSet<&str> = results.iter().map(ReadResult::kind).collect();
        assert_eq!(kinds.len(), 9, "one of each result");
        for result in &results {
            let json = serde_json::to_string(result).unwrap();
            let back: ReadResult = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, result, "{json}");
        }
        // Shared resources stay shared, and grouping consecutive records keeps their order.
        let back = serde_json::from_str::<ReadResult>(&serde_json::to_string(&results[0]).unwrap()).unwrap();
        let back = back.into_spans().unwrap();
        assert!(Arc::ptr_eq(&back[0].resource, &back[3].resource));
        // NaN is not equal to itself: checked apart.
        let nan = ReadResult::AttributeValues(vec![(AttrValue::Float(f64::NAN), 1)]);
        let json = serde_json::to_string(&nan).unwrap();
        assert_eq!(json, r#"{"attribute_values":[[{"float":"NaN"},1]]}"#);
        match serde_json::from_str::<ReadResult>(&json).unwrap() {
            ReadResult::AttributeValues(v) => assert!(matches!(v[0].0, AttrValue::Float(f) if f.is_nan())),
            other => panic!("{other:?}"),
        }
        for bad in [
            r#"{"spans":"not base64!"}"#,
            r#"{"spans":"AAAA"}"#,
            r#"{"attribute_values":[[{"float":"many"},1]]}"#,
            r#"{"trace_hits":[{"trace_id":"zz","newest_start_ns":1}]}"#,
        ] {
            assert!(serde_json::from_str::<ReadResult>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn newest_first_lists_merge_by_time_then_limit_with_ties_in_source_order() {
        let call =
            |limit| ReadCall::FindSpans(SpanQuery { predicate: SpanPredicate::All, time: TimeRange::ALL, limit });
        let a = vec![record("a", span_at(1, 1, 50)), record("a", span_at(1, 2, 30)), record("a", span_at(1, 3, 30))];
        let b = vec![record("b", span_at(2, 4, 40)), record("b", span_at(2, 5, 30)), record("b", span_at(2, 6, 10))];
        let ids = |r: ReadResult| r.into_spans().unwrap().iter().map(|s| s.span.span_id[7]).collect::<Vec<_>>();
        let parts = || vec![ReadResult::Spans(a.clone()), ReadResult::Spans(b.clone())];
        assert_eq!(ids(merge(&call(10), parts()).unwrap()), vec![1, 4, 2, 3, 5, 6]);
        assert_eq!(ids(merge(&call(4), parts()).unwrap()), vec![1, 4, 2, 3], "the limit cuts inside a tie");
        assert_eq!(ids(merge(&call(0), parts()).unwrap()), Vec::<u8>::new());
        let swapped = vec![ReadResult::Spans(b.clone()), ReadResult::Spans(a.clone())];
        assert_eq!(ids(merge(&call(10), swapped).unwrap()), vec![1, 4, 5, 2, 3, 6], "ties follow the parts' order");

        let logs = ReadCall::FindLogs(LogQuery { predicate: LogPredicate::All, time: TimeRange::ALL, limit: 3 });
        // Time 0 means the observed time (time + 1 here): record 3 sorts at 1.
        let parts = vec![
            ReadResult::Logs(vec![log_entry(1, 20), log_entry(2, 5)]),
            ReadResult::Logs(vec![log_entry(3, 0), log_entry(4, 20), log_entry(5, 7)]),
        ];
        let got: Vec<u8> =
            merge(&logs, parts).unwrap().into_logs().unwrap().iter().map(|l| l.record.trace_id[0]).collect();
        assert_eq!(got, vec![1, 4, 5]);
    }

    #[test]
    fn trace_ids_merge_by_each_traces_newest_span_over_all_sources() {
        // Trace 1's newest span is in source b, below b's own limit-cut... and above all of a.
        let a = MemStore::new();
        let b = MemStore::new();
        let write = |s: &MemStore, spans: Vec<Span>| {
            let req = ExportTraceServiceRequest {
                resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
                    resource: None,
                    scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                        scope: None,
                        spans,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            futures::executor::block_on(s.write(Batch::Traces(req))).unwrap();
        };
        write(&a, vec![span_at(1, 1, 10), span_at(2, 2, 20), span_at(3, 3, 30), span_at(3, 4, 5)]);
        write(&b, vec![span_at(1, 5, 100), span_at(4, 6, 25), span_at(2, 7, 1)]);
        let q = |limit| SpanQuery { predicate: SpanPredicate::All, time: TimeRange::ALL, limit };
        let fed = crate::FederatedReader::new(vec![Arc::new(a) as Arc<dyn Reader>, Arc::new(b)]);
        let trace = |n: u8| full_span(n, 0, None).trace_id;
        assert_eq!(
            fed.find_trace_hits(&q(10)).unwrap(),
            vec![(trace(1), 100), (trace(3), 30), (trace(4), 25), (trace(2), 20)]
        );
        assert_eq!(fed.find_trace_ids(&q(2)).unwrap(), vec![trace(1), trace(3)]);
        // An id's newest start is the largest any source reports, whichever part comes first.
        let hits = |v: &[(u8, u64)]| {
            ReadResult::TraceHits(v.iter().map(|&(n, t)| TraceHit { trace_id: trace(n), newest_start_ns: t }).collect())
        };
        let merged =
            merge(&ReadCall::FindTraceIds(q(3)), vec![hits(&[(1, 5), (2, 4)]), hits(&[(3, 9), (1, 7), (4, 4)])])
                .unwrap()
                .into_trace_hits()
                .unwrap();
        let got: Vec<(u8, u64)> = merged.iter().map(|h| (h.trace_id[15], h.newest_start_ns)).collect();
        assert_eq!(got, vec![(3, 9), (1, 7), (2, 4)], "equal starts by trace id");
    }

    #[test]
    fn a_trace_spread_over_sources_keeps_the_sources_order_then_each_ones_own() {
        let a = vec![record("a", span_at(1, 1, 10)), record("a", span_at(1, 2, 40)), record("a", span_at(1, 3, 20))];
        let b = vec![record("b", span_at(1, 4, 10)), record("b", span_at(1, 5, 30))];
        let call = ReadCall::Trace { trace_id: full_span(1, 0, None).trace_id };
        let ids = |parts| -> Vec<u8> {
            merge(&call, parts).unwrap().into_spans().unwrap().iter().map(|s| s.span.span_id[7]).collect()
        };
        assert_eq!(ids(vec![ReadResult::Spans(a.clone()), ReadResult::Spans(b.clone())]), vec![1, 2, 3, 4, 5]);
        assert_eq!(
            ids(vec![ReadResult::Spans(b), ReadResult::Spans(vec![]), ReadResult::Spans(a)]),
            vec![4, 5, 1, 2, 3]
        );
    }

    #[test]
    fn one_series_split_over_sources_comes_back_as_one_with_every_point_oldest_first() {
        let call = ReadCall::FindMetrics(MetricQuery { matchers: vec![], time: TimeRange::ALL });
        let parts = vec![
            ReadResult::Metrics(gauge("m", "/a", &[(T0 + 3, 3.0), (T0 + 5, 5.0)], "old")),
            ReadResult::Metrics(gauge("m", "/b", &[(T0 + 1, 10.0)], "old")),
            ReadResult::Metrics(gauge("m", "/a", &[(T0 + 1, 1.0), (T0 + 4, 4.0)], "new")),
        ];
        let merged = merge(&call, parts).unwrap().into_metrics().unwrap();
        let metrics = &merged.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 2, "one Metric per series: {merged:?}");
        let points = |m: &Metric| match &m.data {
            Some(Data::Gauge(g)) => g.data_points.iter().map(|p| p.time_unix_nano - T0).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let a = metrics.iter().find(|m| points(m).len() == 4).expect("series /a");
        assert_eq!(points(a), vec![1, 3, 4, 5]);
        assert_eq!(a.description, "new", "the last part's metadata, as the newest write in a store");
        // The same as one store holding every point.
        let one = MemStore::new();
        for (route, points) in [("/a", vec![(T0 + 3, 3.0), (T0 + 5, 5.0)]), ("/b", vec![(T0 + 1, 10.0)])] {
            let d = gauge("m", route, &points, "old");
            futures::executor::block_on(
                one.write(Batch::Metrics(ExportMetricsServiceRequest { resource_metrics: d.resource_metrics })),
            )
            .unwrap();
        }
        let d = gauge("m", "/a", &[(T0 + 1, 1.0), (T0 + 4, 4.0)], "new");
        futures::executor::block_on(
            one.write(Batch::Metrics(ExportMetricsServiceRequest { resource_metrics: d.resource_metrics })),
        )
        .unwrap();
        assert_eq!(merged, run(&one, &call).unwrap().into_metrics().unwrap());
    }

    #[test]
    fn a_delta_sum_split_over_sources_is_viewed_as_one_series() {
        let sum = |points: &[(u64, f64)]| {
            let mut d = gauge("hits", "/a", points, "");
            let m = &mut d.resource_metrics[0].scope_metrics[0].metrics[0];
            let Some(Data::Gauge(g)) = m.data.take() else { unreachable!() };
            m.data =
                Some(Data::Sum(Sum { data_points: g.data_points, aggregation_temporality: 1, is_monotonic: true }));
            ExportMetricsServiceRequest { resource_metrics: d.resource_metrics }
        };
        let (a, b, one) = (MemStore::new(), MemStore::new(), MemStore::new());
        for (store, points) in [(&a, vec![(T0, 1.0), (T0 + 2_000_000, 2.0)]), (&b, vec![(T0 + 1_000_000, 4.0)])] {
            futures::executor::block_on(store.write(Batch::Metrics(sum(&points)))).unwrap();
            futures::executor::block_on(one.write(Batch::Metrics(sum(&points)))).unwrap();
        }
        let fed = crate::FederatedReader::new(vec![Arc::new(a) as Arc<dyn Reader>, Arc::new(b)]);
        let q = MetricQuery { matchers: vec![], time: TimeRange::ALL };
        let opts = crate::prometheus::ViewOptions::default();
        let got = fed.find_metrics_view(&q, &[], &opts).unwrap();
        assert_eq!(format!("{got:?}"), format!("{:?}", one.find_metrics_view(&q, &[], &opts).unwrap()));
        let values: Vec<f64> = got.families[0].series[0].samples.iter().map(|s| s.value).collect();
        assert_eq!(values, vec![1.0, 5.0, 7.0], "accumulated over both sources in time order");
    }

    #[test]
    fn attribute_values_sum_counts_over_sources_then_cut() {
        let call = |limit| ReadCall::AttributeValues {
            signal: Signal::Traces,
            scope: AttrScope::Item,
            key: "k".into(),
            time: TimeRange::ALL,
            limit,
        };
        let part = |v: Vec<(AttrValue, u64)>| ReadResult::AttributeValues(v);
        let s = |v: &str| AttrValue::Str(v.into());
        // Cut at 2 per source, "x" would be lost: 3 + 3 beats 5 and 4.
        let parts = || {
            vec![
                part(vec![(s("a"), 5), (s("b"), 4), (s("x"), 3)]),
                part(vec![(s("c"), 5), (s("d"), 4), (s("x"), 3), (AttrValue::Float(2.5), 1)]),
            ]
        };
        let got = merge(&call(3), parts()).unwrap().into_attribute_values().unwrap();
        assert_eq!(got, vec![(s("x"), 6), (s("a"), 5), (s("c"), 5)], "equal counts in value order");
        assert_eq!(merge(&call(100), parts()).unwrap().into_attribute_values().unwrap().len(), 6);
        let one = merge(&call(1), vec![part(vec![(s("b"), 2), (s("a"), 2)])]).unwrap();
        assert_eq!(one, part(vec![(s("a"), 2)]), "one part is cut too");
    }

    #[test]
    fn histograms_sum_sets_union_and_stats_add_up() {
        let h = ReadCall::SpanHistogram { predicate: SpanPredicate::All, time: TimeRange::ALL, bucket_ns: 10 };
        let got = merge(
            &h,
            vec![ReadResult::Histogram(vec![(10, 1), (30, 2)]), ReadResult::Histogram(vec![(0, 4), (30, 1)])],
        );
        assert_eq!(got.unwrap(), ReadResult::Histogram(vec![(0, 4), (10, 1), (30, 3)]));
        let keys = ReadCall::AttributeKeys { signal: Signal::Logs, scope: AttrScope::Item, time: TimeRange::ALL };
        let strings = |v: &[&str]| ReadResult::Strings(v.iter().map(|s| s.to_string()).collect());
        let got = merge(&keys, vec![strings(&["a", "c"]), strings(&["b", "c"]), strings(&[])]).unwrap();
        assert_eq!(got, strings(&["a", "b", "c"]));
        let op = |s: &str, n: &str, k| Operation { service: s.into(), name: n.into(), kind: k };
        let ops = ReadCall::Operations { time: TimeRange::ALL };
        let got = merge(
            &ops,
            vec![
                ReadResult::Operations(vec![op("b", "n", 1), op("c", "n", 1)]),
                ReadResult::Operations(vec![op("a", "z", 1), op("a", "n", 2), op("b", "n", 1)]),
            ],
        );
        let want = vec![op("a", "z", 1), op("a", "n", 2), op("b", "n", 1), op("c", "n", 1)];
        assert_eq!(got.unwrap(), ReadResult::Operations(want), "service, kind, name: the index's order");
        let stats = |n: u64, full| StoreStats {
            wal_bytes: n,
            index_bytes: vec![(Signal::Traces, n), (Signal::Metrics, 1)],
            pending_items: vec![(Signal::Logs, n)],
            segments: vec![(Signal::Traces, 1)],
            commits: n,
            commit_seconds: 0.5,
            damaged_files: n,
            disk_full: full,
            trace_filter_bytes: n,
        };
        let got = merge(&ReadCall::Stats, vec![ReadResult::Stats(stats(1, false)), ReadResult::Stats(stats(2, true))]);
        assert_eq!(
            got.unwrap(),
            ReadResult::Stats(StoreStats {
                wal_bytes: 3,
                index_bytes: vec![(Signal::Traces, 3), (Signal::Metrics, 2)],
                pending_items: vec![(Signal::Logs, 3)],
                segments: vec![(Signal::Traces, 2)],
                commits: 3,
                commit_seconds: 1.0,
                damaged_files: 3,
                disk_full: true,
                trace_filter_bytes: 3,
            })
        );
    }

    #[test]
    fn no_part_is_the_empty_answer_and_a_part_of_the_wrong_kind_an_error() {
        for call in every_call() {
            let empty = merge(&call, Vec::new()).unwrap();
            let store = MemStore::new();
            let mut want = run(&store, &call);
            if matches!(call, ReadCall::Stats) {
                want = Ok(ReadResult::Stats(StoreStats::default()));
            }
            if let Ok(want) = want {
                assert_eq!(empty, want, "{}", call.name());
            }
            let wrong = if matches!(empty, ReadResult::Histogram(_)) {
                ReadResult::Strings(Vec::new())
            } else {
                ReadResult::Histogram(Vec::new())
            };
            let err = merge(&call, vec![empty.clone(), wrong.clone()]).unwrap_err();
            assert!(matches!(&err, StoreError::Unavailable(m) if m.contains("where")), "{}: {err}", call.name());
            assert!(merge(&call, vec![wrong]).is_err(), "{}: one part is checked too", call.name());
        }
    }

    #[test]
    fn a_call_names_the_signals_and_times_whose_segments_it_needs() {
        let calls = every_call();
        let needs: Vec<(&str, &[Signal], bool)> =
            calls.iter().map(|c| (c.name(), c.signals(), c.time() == TimeRange::ALL)).collect();
        assert_eq!(
            needs,
            vec![
                ("trace", &[Signal::Traces][..], true),
                ("traces", &[Signal::Traces][..], true),
                ("find_spans", &[Signal::Traces], false),
                ("find_logs", &[Signal::Logs], false),
                ("find_metrics", &[Signal::Metrics], false),
                ("find_metrics_view", &[Signal::Metrics], false),
                ("find_trace_ids", &[Signal::Traces], false),
                ("operations", &[Signal::Traces], false),
                ("log_field_values", &[Signal::Logs], false),
                ("attribute_keys", &[Signal::Logs], false),
                ("attribute_values", &[Signal::Traces], false),
                ("span_histogram", &[Signal::Traces], false),
                ("log_histogram", &[Signal::Logs], false),
                ("stats", &Signal::ALL, true),
            ]
        );
        assert_eq!(calls[2].time(), TimeRange { start_ns: 5, end_ns: u64::MAX });
    }

    #[test]
    fn check_refuses_limits_a_store_would_allocate_for() {
        let q = |limit| SpanQuery { predicate: SpanPredicate::All, time: TimeRange::ALL, limit };
        assert!(ReadCall::FindSpans(q(MAX_CALL_LIMIT)).check().is_ok());
        for call in [
            ReadCall::FindSpans(q(usize::MAX)),
            ReadCall::FindTraceIds(q(MAX_CALL_LIMIT + 1)),
            ReadCall::FindLogs(LogQuery { predicate: LogPredicate::All, time: TimeRange::ALL, limit: usize::MAX }),
        ] {
            let err = call.check().unwrap_err();
            assert!(matches!(&err, StoreError::InvalidQuery(m) if m.contains("limit")), "{err}");
        }
    }

    #[test]
    fn the_disk_store_reports_the_same_trace_hits_as_the_memory_store() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskStore::open(StoreConfig {
            data_dir: dir.path().to_path_buf(),
            commit_interval: std::time::Duration::from_millis(50),
            index_memory_bytes: 32 << 20,
            ..StoreConfig::default()
        })
        .unwrap();
        let mem = MemStore::new();
        // Recent times: retention drops old spans at open.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let spans: Vec<Span> = (0..60u8).map(|n| span_at(n % 7, n, now - (n as u64 * 7919 % 60) * 1_000_000)).collect();
        let req = ExportTraceServiceRequest {
            resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
                resource: None,
                scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                    scope: None,
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        futures::executor::block_on(disk.write(Batch::Traces(req.clone()))).unwrap();
        futures::executor::block_on(mem.write(Batch::Traces(req))).unwrap();
        let all = SpanQuery { predicate: SpanPredicate::All, time: TimeRange::ALL, limit: 100 };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while disk.find_spans(&all).unwrap().len() < 60 {
            assert!(std::time::Instant::now() < deadline, "spans not visible");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for limit in [1, 3, 7, 100] {
            for predicate in [SpanPredicate::All, SpanPredicate::StatusCode(2)] {
                let q = SpanQuery { predicate, time: TimeRange::ALL, limit };
                let call = ReadCall::FindTraceIds(q.clone());
                assert_eq!(run(&disk, &call).unwrap(), run(&mem, &call).unwrap(), "{q:?}");
                assert_eq!(disk.find_trace_ids(&q).unwrap(), mem.find_trace_ids(&q).unwrap());
            }
        }
        disk.close();
    }
}
