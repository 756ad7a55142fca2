//! Segments away from the store that wrote them: what an ingester ships to object storage and
//! what a searcher reads back.
//!
//! - [`SealedSegment`]: a sealed piece of one signal on a [`crate::DiskStore`]'s disk
//!   ([`crate::DiskStore::sealed_segments`]), or written by [`merge_segments`].
//! - [`OpenSegment`]: one such piece opened read-only from a local directory (traces, logs: a
//!   tantivy index directory) or file (metrics: one block file). Nothing is written into it.
//! - [`SegmentSet`]: a [`Reader`] over open segments of any signals, answering every call as a
//!   `DiskStore` holding the same items does, with the store's own read code (`reads` over
//!   `segments::Snapshot`, the metric block readers).
//! - [`merge_segments`]: one new segment holding every item of several (the compactor's step).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::MetricsData;
use tantivy::TantivyDocument;

use crate::StoreError;
use crate::api::*;
use crate::logs;
use crate::metrics::{self, Block};
use crate::prometheus::{PromView, ViewOptions};
use crate::quarantine::Quarantine;
use crate::reads::{Indexes, SCHEMAS};
use crate::segments::{self, Layout, Segment, Snapshot, Stored};
use crate::spans;

/// Indexing memory of a merge's tantivy writer (one thread).
const MERGE_MEMORY_BYTES: usize = 64 << 20;

/// A sealed, immutable piece of one signal on local disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedSegment {
    /// The signal of every item in it.
    pub signal: Signal,
    /// Local id, unique within the store that lists it and the signal, also across restarts
    /// (traces, logs: the segment number; metrics: the block's first WAL seq). 0 for a segment
    /// written by [`merge_segments`].
    pub id: u64,
    /// Traces and logs: the tantivy index directory; metrics: the block file.
    pub path: PathBuf,
    /// The files to copy, with their sizes: names relative to `path` for a directory, the
    /// file's own name for a metrics block. Lock files and leftovers are not listed.
    pub files: Vec<(String, u64)>,
    /// Oldest item time (span start, log time, point time), Unix ns.
    pub min_time_ns: u64,
    /// Newest item time, Unix ns.
    pub max_time_ns: u64,
    /// Spans, log records or metric points held.
    pub items: u64,
    /// Sum of the sizes of `files`.
    pub bytes: u64,
}

enum Opened {
    Index(Arc<Segment>),
    Block(Arc<Block>),
}

/// A sealed segment opened read-only from a local directory (traces, logs) or block file
/// (metrics), for example one downloaded from object storage. Cheap to share as
/// `Arc<OpenSegment>`. It holds its files open (tantivy maps them, a metric block keeps its
/// file), so deleting them while it is open is safe on Unix: reads go on, the space is freed
/// when the last `Arc` goes.
pub struct OpenSegment {
    signal: Signal,
    path: PathBuf,
    min_time_ns: u64,
    max_time_ns: u64,
    items: u64,
    opened: Opened,
}

impl std::fmt::Debug for OpenSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenSegment")
            .field("signal", &self.signal)
            .field("path", &self.path)
            .field("min_time_ns", &self.min_time_ns)
            .field("max_time_ns", &self.max_time_ns)
            .field("items", &self.items)
            .finish()
    }
}

impl OpenSegment {
    /// Opens the segment at `path` read-only: writes nothing into it (no lock file, no cache).
    /// `min_time_ns`, `max_time_ns` and `items` are those of its [`SealedSegment`] (or
    /// metastore entry): reads skip the segment when a query's time range misses
    /// `[min_time_ns, max_time_ns]`. Format versions are checked as the store checks its own
    /// files: a segment written by a newer obsbox is [`StoreError::Incompatible`]; one of an
    /// older, unreadable schema, a damaged one, or one holding another number of items than
    /// `items` is [`StoreError::Corrupt`].
    pub fn open(
        signal: Signal,
        path: &Path,
        min_time_ns: u64,
        max_time_ns: u64,
        items: u64,
    ) -> Result<Arc<OpenSegment>, StoreError> {
        let opened = match signal {
            Signal::Traces => {
                Opened::Index(Arc::new(Segment::open_read_only(&SCHEMAS.spans, path, min_time_ns, max_time_ns, items)?))
            }
            Signal::Logs => {
                Opened::Index(Arc::new(Segment::open_read_only(&SCHEMAS.logs, path, min_time_ns, max_time_ns, items)?))
            }
            Signal::Metrics => Opened::Block(Arc::new(Block::open_read_only(path, items)?)),
        };
        Ok(Arc::new(OpenSegment { signal, path: path.to_path_buf(), min_time_ns, max_time_ns, items, opened }))
    }

    /// The signal of its items.
    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// Where it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Oldest item time, as given to [`OpenSegment::open`].
    pub fn min_time_ns(&self) -> u64 {
        self.min_time_ns
    }

    /// Newest item time, as given to [`OpenSegment::open`].
    pub fn max_time_ns(&self) -> u64 {
        self.max_time_ns
    }

    /// Checks the checksums of all its data, reading it once (opening checks only headers and
    /// indexes): a damaged segment is [`StoreError::Corrupt`]. For a downloaded segment before
    /// serving it, or a sealed one before shipping it; [`merge_segments`] checks its inputs.
    pub fn verify(&self) -> Result<(), StoreError> {
        match &self.opened {
            Opened::Index(seg) => seg.verify(&self.path),
            Opened::Block(block) => block.verify(),
        }
    }

    /// Number of items.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The distinct trace ids of a traces segment (the terms of its `trace_id` field, sorted),
    /// for a per-segment filter that lets a searcher skip the segments a trace is not in. Empty
    /// for the other signals.
    pub fn trace_ids(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        match (&self.opened, self.signal) {
            (Opened::Index(seg), Signal::Traces) => {
                let snapshot = Snapshot::new(SCHEMAS.spans.clone(), vec![seg.clone()]);
                let field = snapshot
                    .schema()
                    .get_field(spans::TRACE_ID_FIELD)
                    .map_err(|e| StoreError::Index(format!("spans schema: {e}")))?;
                Ok(snapshot.terms(field, &[], TimeRange::ALL, usize::MAX)?.into_keys().collect())
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// A read-only [`Reader`] over open segments of any signals. Building one is cheap (no I/O), so
/// make one per query from the segments it needs. Segments of one signal may overlap in time;
/// they must hold distinct items (an item in two segments is returned twice).
///
/// Answers as a `DiskStore` holding the same items does. `stats` counts the segments and their
/// bytes (no WAL, nothing pending); `damaged_files` counts damaged metric block sections met by
/// reads, which are skipped as the store skips them.
pub struct SegmentSet {
    spans: Snapshot,
    logs: Snapshot,
    blocks: Vec<Arc<Block>>,
    bytes: [u64; 3],
    quarantine: Quarantine,
}

impl SegmentSet {
    /// A reader over `segments` (any signals, any order).
    pub fn new(segments: Vec<Arc<OpenSegment>>) -> SegmentSet {
        let mut segments = segments;
        // Oldest first, as the store lists its own: ties in time then come out in the same
        // order, and for metrics the newest series metadata wins.
        segments.sort_by_key(|s| (s.min_time_ns, s.max_time_ns));
        let (mut span_segs, mut log_segs, mut blocks) = (Vec::new(), Vec::new(), Vec::new());
        let mut bytes = [0u64; 3];
        for s in &segments {
            match (&s.opened, s.signal) {
                (Opened::Index(seg), Signal::Traces) => {
                    bytes[0] += seg.bytes();
                    span_segs.push(seg.clone());
                }
                (Opened::Index(seg), _) => {
                    bytes[1] += seg.bytes();
                    log_segs.push(seg.clone());
                }
                (Opened::Block(b), _) => {
                    bytes[2] += b.file_len();
                    blocks.push(b.clone());
                }
            }
        }
        SegmentSet {
            spans: Snapshot::new(SCHEMAS.spans.clone(), span_segs),
            logs: Snapshot::new(SCHEMAS.logs.clone(), log_segs),
            blocks,
            bytes,
            quarantine: Quarantine::default(),
        }
    }

    fn indexes(&self) -> Indexes<'_> {
        Indexes::of(&self.spans, &self.logs)
    }
}

impl Reader for SegmentSet {
    fn trace(&self, trace_id: &[u8]) -> Result<Vec<SpanRecord>, StoreError> {
        self.indexes().trace(trace_id)
    }

    fn find_spans(&self, query: &SpanQuery) -> Result<Vec<SpanRecord>, StoreError> {
        self.indexes().find_spans(query)
    }

    fn find_logs(&self, query: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
        self.indexes().find_logs(query)
    }

    fn find_metrics(&self, query: &MetricQuery) -> Result<MetricsData, StoreError> {
        metrics::query_blocks(&self.blocks, query, &self.quarantine)
    }

    fn find_metrics_view(
        &self,
        query: &MetricQuery,
        labels: &[LabelMatcher],
        opts: &ViewOptions,
    ) -> Result<PromView, StoreError> {
        metrics::query_view_blocks(&self.blocks, query, labels, opts, &self.quarantine)
    }

    fn stats(&self) -> StoreStats {
        let counts = [self.spans.len() as u64, self.logs.len() as u64, self.blocks.len() as u64];
        StoreStats {
            wal_bytes: 0,
            index_bytes: Signal::ALL.iter().zip(self.bytes).map(|(s, b)| (*s, b)).collect(),
            pending_items: Signal::ALL.iter().map(|s| (*s, 0)).collect(),
            segments: Signal::ALL.iter().zip(counts).map(|(s, n)| (*s, n)).collect(),
            commits: 0,
            commit_seconds: 0.0,
            damaged_files: self.quarantine.count(),
            disk_full: false,
            trace_filter_bytes: 0,
        }
    }

    fn find_trace_ids(&self, query: &SpanQuery) -> Result<Vec<Vec<u8>>, StoreError> {
        self.indexes().find_trace_ids(query)
    }

    fn find_trace_hits(&self, query: &SpanQuery) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        self.indexes().find_trace_hits(query)
    }

    fn operations(&self, time: TimeRange) -> Result<Vec<Operation>, StoreError> {
        self.indexes().operations(time)
    }

    fn log_field_values(&self, field: LogField, time: TimeRange) -> Result<Vec<String>, StoreError> {
        self.indexes().log_field_values(field, time)
    }

    fn attribute_keys(&self, signal: Signal, scope: AttrScope, time: TimeRange) -> Result<Vec<String>, StoreError> {
        self.indexes().attribute_keys(signal, scope, time)
    }

    fn attribute_values(
        &self,
        signal: Signal,
        scope: AttrScope,
        key: &str,
        time: TimeRange,
        limit: usize,
    ) -> Result<Vec<(AttrValue, u64)>, StoreError> {
        self.indexes().attribute_values(signal, scope, key, time, limit)
    }

    fn span_histogram(
        &self,
        predicate: &SpanPredicate,
        time: TimeRange,
        bucket_ns: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        self.indexes().span_histogram(predicate, time, bucket_ns)
    }

    fn log_histogram(
        &self,
        predicate: &LogPredicate,
        time: TimeRange,
        bucket_ns: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        self.indexes().log_histogram(predicate, time, bucket_ns)
    }
}

/// Writes one new sealed segment holding every item of `inputs` (all of signal `signal`) to
/// `out`: for traces and logs a new directory (it must not exist or be empty) with a fresh
/// tantivy index built from the stored items with the store's own document builders (spans
/// keep their write-order value), committed with the payload sealed segments carry; for
/// metrics one block file written with the store's block writer. The result answers every
/// read as the inputs together do, except that a metric series keeps one description and
/// metadata (its newest), where the inputs answered the newest of those they cover, and that
/// term listings (coarse in time) see one segment spanning all inputs. Inputs must hold
/// distinct items; no inputs, inputs of another signal or an existing `out` are
/// [`StoreError::InvalidQuery`], a damaged input ([`OpenSegment::verify`]) is
/// [`StoreError::Corrupt`]. Nothing is left at `out` on error. Heavy: run it off the
/// async runtime.
pub fn merge_segments(signal: Signal, inputs: &[Arc<OpenSegment>], out: &Path) -> Result<SealedSegment, StoreError> {
    if inputs.is_empty() {
        return Err(StoreError::InvalidQuery("no segments to merge".into()));
    }
    if let Some(other) = inputs.iter().find(|s| s.signal != signal) {
        return Err(StoreError::InvalidQuery(format!(
            "cannot merge a {} segment ({}) into {}",
            other.signal.as_str(),
            other.path.display(),
            signal.as_str()
        )));
    }
    // A damaged input must not pass its damage on to the merged segment.
    for s in inputs {
        s.verify()?;
    }
    let mut inputs = inputs.to_vec();
    inputs.sort_by_key(|s| (s.min_time_ns, s.max_time_ns));
    match signal {
        Signal::Metrics => {
            if out.exists() {
                return Err(StoreError::InvalidQuery(format!("merge output {} exists", out.display())));
            }
            let blocks: Vec<Arc<Block>> = inputs
                .iter()
                .filter_map(|s| match &s.opened {
                    Opened::Block(b) => Some(b.clone()),
                    Opened::Index(_) => None,
                })
                .collect();
            let info = metrics::merge_blocks(&blocks, out)?;
            let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Ok(SealedSegment {
                signal,
                id: 0,
                path: info.path,
                files: vec![(name, info.bytes)],
                min_time_ns: info.min_time,
                max_time_ns: info.max_time,
                items: info.points,
                bytes: info.bytes,
            })
        }
        Signal::Traces | Signal::Logs => {
            let created = match std::fs::read_dir(out).map(|mut entries| entries.next().is_none()) {
                Ok(true) => false,
                Ok(false) => {
                    return Err(StoreError::InvalidQuery(format!("merge output {} is not empty", out.display())));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(e.into()),
            };
            let result = merge_indexes(signal, &inputs, out);
            if result.is_err() {
                let cleanup = match created {
                    true => std::fs::remove_dir_all(out),
                    false => empty_dir(out),
                };
                if let Err(e) = cleanup {
                    tracing::warn!(path = %out.display(), error = %e, "cannot remove a failed merge's output");
                }
            }
            result
        }
    }
}

fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() { std::fs::remove_dir_all(&p)? } else { std::fs::remove_file(&p)? }
    }
    Ok(())
}

fn merge_indexes(signal: Signal, inputs: &[Arc<OpenSegment>], out: &Path) -> Result<SealedSegment, StoreError> {
    let segs: Vec<Arc<Segment>> = inputs
        .iter()
        .filter_map(|s| match &s.opened {
            Opened::Index(seg) => Some(seg.clone()),
            Opened::Block(_) => None,
        })
        .collect();
    let last_seq = segs.iter().map(|s| s.last_seq()).max().unwrap_or(0);
    let layout = match signal {
        Signal::Traces => &SCHEMAS.spans,
        _ => &SCHEMAS.logs,
    };
    let stored = segs.iter().flat_map(|seg| stored_items(seg, layout, signal));
    let mut pending: Vec<(TantivyDocument, u64)> = Vec::new();
    // Documents are built lazily, one stored item at a time.
    let docs = stored.flat_map(move |item| {
        let built = item.and_then(|(stored, ord)| {
            pending.clear();
            match signal {
                Signal::Traces => {
                    let td = spans::stored_traces(&stored)?;
                    let req = ExportTraceServiceRequest { resource_spans: td.resource_spans };
                    spans::documents_with_ord(&SCHEMAS.span_fields, req, |_| ord, &mut pending);
                }
                _ => {
                    let ld = logs::stored_logs(&stored)?;
                    let req = ExportLogsServiceRequest { resource_logs: ld.resource_logs };
                    logs::documents(&SCHEMAS.log_fields, req, &mut pending);
                }
            }
            Ok(std::mem::take(&mut pending))
        });
        match built {
            Ok(docs) => docs.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        }
    });
    let (summary, files) = segments::write_segment(layout, out, docs, last_seq, MERGE_MEMORY_BYTES)?;
    let want: u64 = inputs.iter().map(|s| s.items).sum();
    if summary.docs != want {
        return Err(StoreError::corrupt(out, format!("merged {} items, the inputs hold {want}", summary.docs)));
    }
    Ok(SealedSegment {
        signal,
        id: 0,
        path: out.to_path_buf(),
        bytes: files.iter().map(|f| f.1).sum(),
        files,
        min_time_ns: summary.min_time,
        max_time_ns: summary.max_time,
        items: summary.docs,
    })
}

/// The stored documents of a segment, in document order, with their write-order value
/// (spans; 0 for logs).
fn stored_items(
    seg: &Segment,
    layout: &Layout,
    signal: Signal,
) -> impl Iterator<Item = Result<(Stored, u64), StoreError>> {
    let searcher = seg.searcher();
    let mut out: Vec<Result<(Stored, u64), StoreError>> = Vec::new();
    // One input segment's items at a time are held (inputs of a merge are small segments).
    for (ord, reader) in searcher.segment_readers().iter().enumerate() {
        let result = (|| -> Result<(), StoreError> {
            let order = match signal {
                Signal::Traces => Some(reader.fast_fields().u64(spans::ORD_FIELD)?),
                _ => None,
            };
            let alive = reader.alive_bitset();
            let live = (0..reader.max_doc()).filter(|d| !alive.is_some_and(|a| a.is_deleted(*d)));
            let addrs: Vec<tantivy::DocAddress> = live.map(|d| tantivy::DocAddress::new(ord as u32, d)).collect();
            let stored = layout.stored(std::slice::from_ref(&searcher), None, addrs.iter().map(|a| (0, *a)), None)?;
            for (s, addr) in stored.into_iter().zip(&addrs) {
                let ord = order.as_ref().and_then(|c| c.first(addr.doc_id)).unwrap_or(0);
                out.push(Ok((s, ord)));
            }
            Ok(())
        })();
        if let Err(e) = result {
            out.push(Err(e));
        }
    }
    out.into_iter()
}
