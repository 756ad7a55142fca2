//! A signal's index as a list of tantivy segments, recorded in a small metastore.
//!
//! Exactly one segment is active (receives documents, committed every commit interval); the
//! others are sealed: immutable, self-describing (a tantivy index with its stored documents) and
//! listed in the metastore with their time range, document count and the last WAL sequence
//! number they contain. That is the unit an ingester ships to object storage
//! ([`SegmentedIndex::sealed`], [`SegmentedIndex::release`]), the unit retention deletes, and
//! the unit a searcher opens read-only ([`Segment::open_read_only`], through a directory that
//! never writes) and a compactor writes ([`write_segment`]).
//!
//! The metastore is the file `metastore` (header `OBXMETA\0`, version 1, then JSON), replaced
//! atomically (write, fsync, rename, fsync dir). It also keeps the highest WAL seq of the
//! segments released or dropped (`floor_seq`), below which nothing is replayed. The active
//! segment's progress (last WAL seq, time range, count, schema version and signal) travels in
//! its tantivy commit payload, so one atomic commit covers both; a sealed segment keeps it.
//!
//! Reads go through a [`Snapshot`]: the segments readers see at one instant, searched by
//! `search_newest`, `search_all`, `terms`, `histogram` and `newest_bytes` (also over segments
//! opened read-only, see `crate::reads`).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use tantivy::collector::{DocSetCollector, TopDocs};
use tantivy::columnar::{BytesColumn, Column};
use tantivy::index::SegmentId;
use tantivy::indexer::UserOperation;
use tantivy::query::{
    BooleanQuery, EmptyQuery, EmptyScorer, EnableScoring, Explanation, Occur, Query, RangeQuery, Scorer, Weight,
};
use tantivy::schema::{
    BytesOptions, Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, Value,
};
use tantivy::store::{Compressor, ZstdCompressor};
use tantivy::{
    DocAddress, DocId, Index, IndexReader, IndexSettings, IndexWriter, Order, ReloadPolicy, Score, Searcher,
    SegmentReader, TantivyDocument, Term,
};

use crate::StoreError;
use crate::api::{Signal, TimeRange};
use crate::format;
use crate::quarantine::Quarantine;
use crate::queued::{InFlight, QueuedDoc};
use crate::read_advice::{self, ReadAdvice};
use crate::trace_filter::TraceFilter;
use crate::wal::sync_dir;

const META_MAGIC: &[u8; 8] = b"OBXMETA\0";
const META_VERSION: u32 = 1;

/// Options of one segmented index.
#[derive(Clone, Debug)]
pub(crate) struct SegmentOptions {
    pub memory_bytes: usize,
    pub max_age: std::time::Duration,
    pub max_docs: u64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct SegmentEntry {
    id: u64,
    sealed: bool,
    min_time: u64,
    max_time: u64,
    docs: u64,
    last_seq: u64,
    #[serde(default)]
    bytes: u64,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Metastore {
    signal: Option<Signal>,
    /// Version of the signal's tantivy schema the segments were written with (1 when absent:
    /// metastores from before the field existed).
    #[serde(default = "schema_v1")]
    schema_version: u32,
    next_id: u64,
    segments: Vec<SegmentEntry>,
    /// Highest WAL seq of the sealed segments no longer listed (released or dropped by
    /// retention): the committed seq must not fall below it, or a restart would replay WAL
    /// records those segments held.
    #[serde(default)]
    floor_seq: u64,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct CommitPayload {
    seq: u64,
    min_time: u64,
    max_time: u64,
    docs: u64,
    /// Version of the schema the segment was written with (0: not recorded, segments from
    /// before the field existed; their metastore has it).
    #[serde(default)]
    schema_version: u32,
    /// Signal of the documents (None: not recorded).
    #[serde(default)]
    signal: Option<Signal>,
}

/// A segment as readers see it.
pub(crate) struct Segment {
    entry: SegmentEntry,
    reader: IndexReader,
    /// Kept columns of its tantivy segments opened for point reads.
    points: Arc<PointColumns>,
}

/// The kept u64 columns of tantivy segments read through their point-reads mapping
/// ([`point_read_columns`]), each opened once and held while the segment is searched: opening
/// maps the file and reads its column directory, which a read of a few documents would
/// otherwise pay every time.
#[derive(Default)]
pub(crate) struct PointColumns(Mutex<HashMap<SegmentId, KeptU64s>>);

/// A tantivy segment's kept u64 columns, in the layout's order (`None`: no column).
type KeptU64s = Arc<Vec<Option<Column<u64>>>>;

impl PointColumns {
    /// The columns `fields` of `segment` in `searcher`; None as [`point_read_columns`].
    fn get(&self, searcher: &Searcher, segment: SegmentId, fields: &[&str]) -> Option<KeptU64s> {
        let mut open = self.0.lock();
        if let Some(c) = open.get(&segment) {
            return Some(c.clone());
        }
        let columns = Arc::new(point_read_columns(searcher, segment, fields)?);
        open.insert(segment, columns.clone());
        Some(columns)
    }

    /// Drops the columns of tantivy segments not in `live` (merged away), so that their
    /// deleted files are unmapped.
    fn retain(&self, live: &HashSet<SegmentId>) {
        self.0.lock().retain(|id, _| live.contains(id));
    }
}

/// What reads need to know about the segments of one signal, shared by every snapshot.
pub(crate) struct Layout {
    signal: Signal,
    schema: Schema,
    schema_version: u32,
    time_field: String,
    data_field: Field,
    /// u64 fast fields read back with every stored document ([`Stored::fast`]).
    kept: &'static [&'static str],
    /// A bytes fast field read back with every stored document ([`Stored::bytes`]).
    kept_bytes: Option<&'static str>,
    /// The trace id field (spans and logs).
    trace_field: Option<Field>,
    /// The trace filters of the tantivy segments that have one ([`Layout::refresh_filters`]).
    /// A segment's content never changes, so a filter stays right for its id; a segment
    /// without one is searched.
    filters: RwLock<HashMap<SegmentId, Arc<TraceFilter>>>,
    /// Tantivy segments trace lookups skipped thanks to a filter.
    skipped: AtomicU64,
}

impl Layout {
    /// `data_field`: the stored bytes field readers get back; `time_field`: a u64 fast field
    /// holding each document's time; `schema_version` identifies `schema`. The fast fields read
    /// back with the stored bytes are the signal's (`spans::KEPT_FAST`, `logs::KEPT_FAST`).
    pub fn new(signal: Signal, schema: Schema, schema_version: u32, time_field: &str, data_field: Field) -> Layout {
        let kept: &'static [&'static str] = match signal {
            Signal::Traces => &crate::spans::KEPT_FAST,
            Signal::Logs => &crate::logs::KEPT_FAST,
            Signal::Metrics => &[],
        };
        debug_assert!(kept.len() <= MAX_KEPT);
        let kept_bytes = (signal == Signal::Traces).then_some(crate::spans::TRACE_ID_FIELD);
        let trace_field = match signal {
            Signal::Traces => schema.get_field(crate::spans::TRACE_ID_FIELD).ok(),
            Signal::Logs => schema.get_field(crate::logs::TRACE_ID_FIELD).ok(),
            Signal::Metrics => None,
        };
        Layout {
            signal,
            schema,
            schema_version,
            time_field: time_field.to_string(),
            data_field,
            kept,
            kept_bytes,
            trace_field,
            filters: RwLock::new(HashMap::new()),
            skipped: AtomicU64::new(0),
        }
    }

    /// False only when tantivy segment `segment` certainly holds no document of `trace_id`.
    fn may_hold(&self, segment: SegmentId, trace_id: &[u8]) -> bool {
        self.filters.read().get(&segment).is_none_or(|f| f.may_contain(trace_id))
    }

    /// Drops the filters of segments no longer among `searchers` (merged away, or their segment
    /// dropped), then builds the trace filter of every tantivy segment of `searchers` with at
    /// least `min_docs` documents and no filter yet (reading its trace id terms), newest
    /// segments first, while all filters together stay within `max_bytes`: past it, older
    /// segments go without (and are searched). Returns how many it built.
    fn refresh_filters(&self, searchers: &[Searcher], min_docs: u32, max_bytes: usize) -> Result<usize, StoreError> {
        let Some(field) = self.trace_field else { return Ok(0) };
        let readers = || searchers.iter().rev().flat_map(|s| s.segment_readers());
        let live: HashSet<SegmentId> = readers().map(|r| r.segment_id()).collect();
        let mut bytes: usize = {
            let mut filters = self.filters.write();
            filters.retain(|id, _| live.contains(id));
            filters.values().map(|f| f.bytes()).sum()
        };
        let mut built = 0;
        for r in readers() {
            if r.max_doc() < min_docs || self.filters.read().contains_key(&r.segment_id()) {
                continue;
            }
            let inverted = r.inverted_index(field)?;
            let dict = inverted.terms();
            let size = TraceFilter::bytes_for(dict.num_terms());
            if bytes + size > max_bytes {
                continue;
            }
            let mut filter = TraceFilter::with_capacity(dict.num_terms());
            let mut stream = dict.stream()?;
            while stream.advance() {
                filter.insert(stream.key());
            }
            bytes += filter.bytes();
            self.filters.write().insert(r.segment_id(), Arc::new(filter));
            built += 1;
        }
        Ok(built)
    }

    /// The stored documents of `hits` (index into `searchers`, address), in that order.
    /// `known_bytes`: the kept bytes value of every hit when the query pinned it (a trace id
    /// query), which spares opening that column's dictionary. `points`: for a read of a few
    /// documents per segment, the point-read columns of each searcher's segment (parallel to
    /// `searchers`); None for reads of whole segments, which take the columns as scans do.
    pub fn stored(
        &self,
        searchers: &[Searcher],
        points: Option<&[Arc<PointColumns>]>,
        hits: impl Iterator<Item = (usize, DocAddress)>,
        known_bytes: Option<&[u8]>,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut kept = KeptColumns::new(self, known_bytes, points);
        hits.map(|(i, addr)| {
            let doc: TantivyDocument = searchers[i].doc(addr)?;
            let data = doc
                .get_first(self.data_field)
                .and_then(|v| v.as_bytes())
                .map(|b| b.to_vec())
                .ok_or_else(|| StoreError::Index("document without stored data".into()))?;
            let (fast, bytes) = kept.values(i, &searchers[i], addr)?;
            Ok(Stored { data, fast, bytes })
        })
        .collect()
    }
}

/// Most u64 fast fields a signal reads back with each stored document.
pub(crate) const MAX_KEPT: usize = 4;

/// A stored document as reads get it: the bytes of its data field, and the values of the
/// layout's kept u64 fast fields, in that order (`None`: no value), which the signal may have
/// left out of the bytes (`spans::strip` / `restore`, the same in `logs.rs`).
pub(crate) struct Stored {
    pub data: Vec<u8>,
    pub fast: [Option<u64>; MAX_KEPT],
    /// The layout's kept bytes fast field (spans: the trace id).
    pub bytes: Option<Vec<u8>>,
}

impl Stored {
    /// Bytes that hold every field themselves (no fast values to put back).
    pub fn whole(data: Vec<u8>) -> Stored {
        Stored { data, fast: [None; MAX_KEPT], bytes: None }
    }
}

/// A document's kept u64 values and its kept bytes value.
type KeptValues = ([Option<u64>; MAX_KEPT], Option<Vec<u8>>);

/// The kept fast-field columns of one segment.
struct SegmentColumns {
    u64s: KeptU64s,
    bytes: Option<BytesColumn>,
    /// The bytes values read so far, by dictionary ordinal: the spans of one trace share one,
    /// so a read of a few traces looks each trace id up in the dictionary once per segment.
    seen: HashMap<u64, Vec<u8>>,
}

/// The kept fast-field columns of the segments one read touches, each opened once.
struct KeptColumns<'a> {
    layout: &'a Layout,
    known_bytes: Option<&'a [u8]>,
    points: Option<&'a [Arc<PointColumns>]>,
    open: HashMap<(usize, u32), SegmentColumns>,
}

impl<'a> KeptColumns<'a> {
    fn new(layout: &'a Layout, known_bytes: Option<&'a [u8]>, points: Option<&'a [Arc<PointColumns>]>) -> Self {
        KeptColumns { layout, known_bytes, points, open: HashMap::new() }
    }

    /// The kept values of document `addr` of `searcher` (the `i`-th searcher of the read): the
    /// u64 ones, and the bytes one.
    fn values(&mut self, i: usize, searcher: &Searcher, addr: DocAddress) -> Result<KeptValues, StoreError> {
        let mut out = [None; MAX_KEPT];
        if self.layout.kept.is_empty() && self.layout.kept_bytes.is_none() {
            return Ok((out, None));
        }
        let cols = match self.open.entry((i, addr.segment_ord)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let reader = searcher.segment_reader(addr.segment_ord);
                let fast = reader.fast_fields();
                let points = self.points.and_then(|p| p[i].get(searcher, reader.segment_id(), self.layout.kept));
                let u64s = match points {
                    Some(columns) => columns,
                    // A segment where no document has a value of a field has no column for it.
                    None => {
                        Arc::new(self.layout.kept.iter().map(|f| fast.column_opt::<u64>(f)).collect::<Result<_, _>>()?)
                    }
                };
                let bytes = match (self.layout.kept_bytes, self.known_bytes) {
                    (Some(f), None) => fast.bytes(f)?,
                    _ => None,
                };
                e.insert(SegmentColumns { u64s, bytes, seen: HashMap::new() })
            }
        };
        for (o, c) in out.iter_mut().zip(cols.u64s.iter()) {
            *o = c.as_ref().and_then(|c| c.first(addr.doc_id));
        }
        let mut bytes = self.known_bytes.filter(|_| self.layout.kept_bytes.is_some()).map(<[u8]>::to_vec);
        if let Some(col) = &cols.bytes
            && let Some(ord) = col.ords().first(addr.doc_id)
        {
            let value = match cols.seen.entry(ord) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let mut buf = Vec::new();
                    col.ord_to_bytes(ord, &mut buf)?;
                    e.insert(buf)
                }
            };
            bytes = Some(value.clone());
        }
        Ok((out, bytes))
    }
}

/// The u64 columns `fields` of tantivy segment `segment`, read from its fast-field file mapped
/// for point reads (`read_advice`): a stored read takes a few documents' values, and through
/// the scans' mapping each would read the device's readahead window around it. None when the
/// index's directory has no such mapping (then the caller reads the segment's own columns).
fn point_read_columns(searcher: &Searcher, segment: SegmentId, fields: &[&str]) -> Option<Vec<Option<Column<u64>>>> {
    let name = read_advice::point_reads(&format!("{}.fast", segment.uuid_string()));
    let file = tantivy::Directory::open_read(searcher.index().directory(), &name).ok()?;
    let columnar = tantivy::columnar::ColumnarReader::open(file).ok()?;
    fields
        .iter()
        .map(|f| {
            let handles = columnar.read_columns(f).ok()?;
            match handles.into_iter().find(|h| h.column_type() == tantivy::columnar::ColumnType::U64) {
                Some(h) => Some(h.open().ok()?.into()),
                None => Some(None),
            }
        })
        .collect()
}

/// A query that matches only documents of one trace, searched only in the tantivy segments whose
/// trace filter may hold the trace (and in those without a filter): the others cost no term
/// dictionary lookup, which on a cold page cache is a few random reads per segment.
struct TraceFiltered {
    inner: Box<dyn Query>,
    trace_id: Vec<u8>,
    layout: Arc<Layout>,
}

impl Clone for TraceFiltered {
    fn clone(&self) -> Self {
        TraceFiltered { inner: self.inner.box_clone(), trace_id: self.trace_id.clone(), layout: self.layout.clone() }
    }
}

impl std::fmt::Debug for TraceFiltered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceFiltered")
            .field("inner", &self.inner)
            .field("trace_id", &hex::encode(&self.trace_id))
            .finish()
    }
}

impl Query for TraceFiltered {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(TraceFilteredWeight {
            inner: self.inner.weight(scoring)?,
            trace_id: self.trace_id.clone(),
            layout: self.layout.clone(),
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        self.inner.query_terms(visitor);
    }
}

struct TraceFilteredWeight {
    inner: Box<dyn Weight>,
    trace_id: Vec<u8>,
    layout: Arc<Layout>,
}

impl TraceFilteredWeight {
    fn skips(&self, reader: &SegmentReader) -> bool {
        let skip = !self.layout.may_hold(reader.segment_id(), &self.trace_id);
        if skip {
            self.layout.skipped.fetch_add(1, Ordering::Relaxed);
        }
        skip
    }
}

impl Weight for TraceFilteredWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        if self.skips(reader) { Ok(Box::new(EmptyScorer)) } else { self.inner.scorer(reader, boost) }
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.inner.explain(reader, doc)
    }

    fn count(&self, reader: &SegmentReader) -> tantivy::Result<u32> {
        if self.skips(reader) { Ok(0) } else { self.inner.count(reader) }
    }

    fn for_each_no_score(&self, reader: &SegmentReader, callback: &mut dyn FnMut(&[DocId])) -> tantivy::Result<()> {
        if self.skips(reader) { Ok(()) } else { self.inner.for_each_no_score(reader, callback) }
    }
}

/// An immutable list of segments of one signal to read, oldest first: a [`SegmentedIndex`]'s
/// view at one instant, or segments opened read-only (`crate::segment_set`). The search
/// functions below work on either.
#[derive(Clone)]
pub(crate) struct Snapshot {
    layout: Arc<Layout>,
    segments: Arc<Vec<Arc<Segment>>>,
}

#[cfg(test)]
impl Snapshot {
    /// The tantivy segments whose point-read columns are held, over all segments, and whether
    /// each is among the live ones.
    pub fn point_columns_held(&self) -> (usize, bool) {
        let (mut held, mut all_live) = (0, true);
        for s in self.segments.iter() {
            let live: HashSet<SegmentId> =
                s.reader.searcher().segment_readers().iter().map(|r| r.segment_id()).collect();
            let open = s.points.0.lock();
            held += open.len();
            all_live &= open.keys().all(|id| live.contains(id));
        }
        (held, all_live)
    }

    /// Checks that every tantivy segment's kept columns read through the point-reads mapping
    /// (`point_read_columns`) hold the values of the segment's own columns, and returns how
    /// many tantivy segments it checked.
    pub fn point_reads_match_the_columns(&self) -> usize {
        let mut checked = 0;
        for s in self.segments.iter() {
            let searcher = s.reader.searcher();
            for r in searcher.segment_readers() {
                let points = point_read_columns(&searcher, r.segment_id(), self.layout.kept)
                    .expect("the directory maps point reads");
                assert_eq!(points.len(), self.layout.kept.len());
                for (field, column) in self.layout.kept.iter().zip(points) {
                    let own = r.fast_fields().column_opt::<u64>(field).unwrap();
                    assert_eq!(column.is_some(), own.is_some(), "{field}");
                    if let (Some(column), Some(own)) = (column, own) {
                        for doc in 0..r.max_doc() {
                            assert_eq!(column.first(doc), own.first(doc), "{field} of document {doc}");
                        }
                    }
                }
                checked += 1;
            }
        }
        checked
    }

    /// How many tantivy segments hold a document of `trace_id`.
    pub fn tantivy_segments_holding(&self, trace_id: &[u8]) -> usize {
        let field = self.layout.trace_field.expect("a signal with trace ids");
        let term = Term::from_field_bytes(field, trace_id);
        self.segments
            .iter()
            .flat_map(|s| s.reader.searcher().segment_readers().to_vec())
            .filter(|r| r.inverted_index(field).unwrap().doc_freq(&term).unwrap() > 0)
            .count()
    }
}

/// A sealed segment as the store lists it for shipping.
pub(crate) struct SealedInfo {
    pub id: u64,
    pub path: PathBuf,
    /// Files of the segment relative to `path`, with their sizes.
    pub files: Vec<(String, u64)>,
    pub min_time: u64,
    pub max_time: u64,
    pub docs: u64,
    pub bytes: u64,
}

struct Active {
    id: u64,
    index: Index,
    /// None after a failure dropped it, until [`SegmentedIndex::reset`] makes a new one.
    writer: Option<IndexWriter<QueuedDoc>>,
    reader: IndexReader,
    created: Instant,
    /// Progress including uncommitted documents.
    pending: CommitPayload,
    committed: CommitPayload,
    /// Point-read columns of its tantivy segments, kept from one published snapshot to the
    /// next and pruned to the live segments at each.
    points: Arc<PointColumns>,
}

/// A signal's segmented index. Writer methods (`add`, `commit`, `seal_if_due`) are meant for one
/// indexer thread; readers call `search_*` concurrently and never wait for a writer.
pub(crate) struct SegmentedIndex {
    dir: PathBuf,
    signal: Signal,
    layout: Arc<Layout>,
    opts: SegmentOptions,
    meta: Mutex<Metastore>,
    active: Mutex<Active>,
    /// Snapshot for readers: sealed segments oldest first, then the active one.
    view: RwLock<Arc<Vec<Arc<Segment>>>>,
    commits: AtomicU64,
    commit_nanos: AtomicU64,
    quarantine: Quarantine,
    /// Sealed segments whose checksums were verified since open.
    verified: Mutex<HashSet<u64>>,
    /// Documents queued to the active segment's writer and not yet indexed.
    queued: Arc<InFlight>,
}

/// Documents queued to tantivy's indexing threads at most (more when one batch is larger): as
/// many as tantivy's own queue holds when documents are sent one at a time, so the indexer
/// thread waits, and admission sees the backlog, at the same point.
const MAX_QUEUED_DOCS: u64 = 10_000;

/// `STRING` without fieldnorms. Nothing in the store is scored (results are ordered by time or
/// ids), so the byte per document and indexed field that BM25 would read is not written.
pub(crate) fn keyword() -> TextOptions {
    text_without_norms("raw", IndexRecordOption::Basic)
}

/// Full text: tokenized, with positions for phrases, without fieldnorms (see [`keyword`]).
pub(crate) fn full_text() -> TextOptions {
    text_without_norms(FULL_TEXT_TOKENIZER, IndexRecordOption::WithFreqsAndPositions)
}

/// The tokenizer of [`full_text`] fields (tantivy's default: split on non-alphanumeric
/// characters, tokens over 40 bytes dropped, lowercased).
pub(crate) const FULL_TEXT_TOKENIZER: &str = "default";

fn text_without_norms(tokenizer: &str, record: IndexRecordOption) -> TextOptions {
    TextOptions::default().set_indexing_options(
        TextFieldIndexing::default().set_tokenizer(tokenizer).set_index_option(record).set_fieldnorms(false),
    )
}

/// `INDEXED` numbers (and bools) without fieldnorms (see [`keyword`]).
pub(crate) fn indexed_number() -> NumericOptions {
    NumericOptions::default().set_indexed()
}

/// `INDEXED` bytes without fieldnorms (see [`keyword`]).
pub(crate) fn indexed_bytes() -> BytesOptions {
    BytesOptions::default().set_indexed()
}

/// An 8-byte span id as the u64 its fast field holds; `None` for any other length (the collector
/// accepts only 8-byte or empty span ids).
pub(crate) fn id_u64(id: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(id.try_into().ok()?))
}

/// Documents whose u64 fast field equals `id` (read from the column: span ids are nearly unique,
/// and a term per item would cost more to index than these rare lookups cost to scan).
pub(crate) fn id_query(field: Field, id: &[u8]) -> Box<dyn Query> {
    match id_u64(id) {
        Some(v) => Box::new(RangeQuery::new(
            Bound::Included(Term::from_field_u64(field, v)),
            Bound::Included(Term::from_field_u64(field, v)),
        )),
        None => Box::new(EmptyQuery),
    }
}

/// zstd at level 3 (higher levels cost 1.2-1.5x the CPU per item for 1-5% fewer bytes). Blocks
/// of 128 KiB for spans and 256 KiB for logs instead of tantivy's 16 KiB: a span or record repeats
/// its resource and scope, which zstd only finds again within a block; 64 -> 128 KiB took spans'
/// docstore from 112 to 97 B per span, 64 -> 256 KiB logs' from 78 to 66 B per record
/// (`benches/index_cost.rs`). Reading one document decompresses its whole block, so spans, read a
/// trace at a time by id, stop at 128 KiB.
fn settings(signal: Signal) -> IndexSettings {
    let block = if signal == Signal::Logs { 256 << 10 } else { 128 << 10 };
    IndexSettings {
        docstore_compression: Compressor::Zstd(ZstdCompressor { compression_level: Some(3) }),
        docstore_blocksize: block,
        ..IndexSettings::default()
    }
}

fn seg_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:010}"))
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
        })
        .unwrap_or(0)
}

impl SegmentedIndex {
    /// Opens or creates the index in `dir`. `data_field` is the stored bytes field readers get
    /// back; `time_field` a u64 fast field holding each document's time. `schema_version`
    /// identifies `schema`: a directory written with another version is refused, not misread.
    /// Damage does not stop the open: a metastore that cannot be read is set aside and rebuilt
    /// from the segment directories (each one's last commit payload holds its time range,
    /// document count and WAL seq); a sealed segment that cannot be opened is set aside (its
    /// documents are lost: the WAL holds only what no commit covered); an active segment that
    /// cannot be opened is set aside and a new one started (its committed documents are lost,
    /// the WAL records after its last commit replay). Each case logs one line naming the
    /// directory and counts in `quarantine`.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        dir: &Path,
        signal: Signal,
        schema: Schema,
        schema_version: u32,
        time_field: &str,
        data_field: Field,
        opts: SegmentOptions,
        quarantine: &Quarantine,
    ) -> Result<SegmentedIndex, StoreError> {
        fs::create_dir_all(dir)?;
        let meta_path = dir.join("metastore");
        let mut meta = if meta_path.exists() {
            match read_metastore(&meta_path) {
                Ok(meta) => meta,
                Err(e @ StoreError::Corrupt { .. }) => {
                    quarantine.move_aside(
                        &meta_path,
                        &e.to_string(),
                        "nothing: the metastore is rebuilt from the segment directories",
                    )?;
                    let meta = rebuild_metastore(dir, signal, schema_version, quarantine)?;
                    write_metastore(dir, &meta)?;
                    meta
                }
                Err(e) => return Err(e),
            }
        } else {
            Metastore { signal: Some(signal), schema_version, next_id: 1, segments: Vec::new(), floor_seq: 0 }
        };
        if meta.schema_version != schema_version {
            return Err(StoreError::corrupt(
                &meta_path,
                format!(
                    "{} index written with schema version {}, this obsbox reads version {schema_version}; \
                     move the data directory aside to start a new store",
                    signal.as_str(),
                    meta.schema_version
                ),
            ));
        }
        // Segment directories the metastore does not list were being created during a crash.
        let listed: Vec<PathBuf> = meta.segments.iter().map(|s| seg_dir(dir, s.id)).collect();
        for entry in fs::read_dir(dir)? {
            let p = entry?.path();
            if p.is_dir()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seg-"))
                && !listed.contains(&p)
            {
                tracing::warn!(path = %p.display(), "removing segment directory not in the metastore");
                fs::remove_dir_all(&p)?;
            }
        }
        let mut sealed = Vec::new();
        let mut damaged = Vec::new();
        for e in meta.segments.iter().filter(|s| s.sealed) {
            match open_sealed(dir, e) {
                Ok(segment) => sealed.push(Arc::new(segment)),
                Err(OpenFailure { error, damaged: false }) => return Err(error),
                Err(OpenFailure { error: err, .. }) => {
                    let lost = lost_docs(signal, e);
                    quarantine.move_aside(&seg_dir(dir, e.id), &format!("sealed segment unreadable: {err}"), &lost)?;
                    damaged.push(e.id);
                }
            }
        }
        let active_entry = meta.segments.iter().find(|s| !s.sealed).cloned();
        let active = match active_entry.map(|e| (e.id, Self::open_active(dir, signal, e.id, &schema, &opts))) {
            Some((_, Ok(active))) => Some(active),
            // Not the segment's fault (a full disk, permissions): refuse to start rather than
            // set good data aside.
            Some((_, Err(OpenFailure { error, damaged: false }))) => return Err(error),
            Some((id, Err(OpenFailure { error: err, .. }))) => {
                quarantine.move_aside(
                    &seg_dir(dir, id),
                    &format!("active segment unreadable: {err}"),
                    &format!(
                        "its committed {} documents (those still in the write-ahead log are replayed)",
                        signal.as_str()
                    ),
                )?;
                damaged.push(id);
                None
            }
            None => None,
        };
        let fresh = active.is_none();
        let active = match active {
            Some(a) => a,
            None => {
                let id = meta.next_id;
                meta.next_id += 1;
                Self::open_active(dir, signal, id, &schema, &opts).map_err(|f| f.error)?
            }
        };
        meta.segments.retain(|s| !damaged.contains(&s.id));
        if fresh {
            meta.segments.push(SegmentEntry {
                id: active.id,
                sealed: false,
                min_time: u64::MAX,
                max_time: 0,
                docs: 0,
                last_seq: 0,
                bytes: 0,
            });
        }
        if fresh || !damaged.is_empty() {
            write_metastore(dir, &meta)?;
        }
        let this = SegmentedIndex {
            dir: dir.to_path_buf(),
            signal,
            layout: Arc::new(Layout::new(signal, schema, schema_version, time_field, data_field)),
            opts,
            meta: Mutex::new(meta),
            active: Mutex::new(active),
            view: RwLock::new(Arc::new(Vec::new())),
            commits: AtomicU64::new(0),
            commit_nanos: AtomicU64::new(0),
            quarantine: quarantine.clone(),
            verified: Mutex::new(HashSet::new()),
            queued: InFlight::new(MAX_QUEUED_DOCS),
        };
        {
            let active = this.active.lock();
            this.publish(&active, sealed);
        }
        Ok(this)
    }

    /// Opens (creating) a segment as the active one. On a full disk the segment opens without
    /// a writer (it serves reads; [`SegmentedIndex::reset`] makes the writer later).
    fn open_active(
        dir: &Path,
        signal: Signal,
        id: u64,
        schema: &Schema,
        opts: &SegmentOptions,
    ) -> Result<Active, OpenFailure> {
        let path = seg_dir(dir, id);
        fs::create_dir_all(&path)?;
        let mmap = tantivy::directory::MmapDirectory::open(&path)
            .map_err(|e| OpenFailure { error: StoreError::Index(e.to_string()), damaged: false })?;
        let index = Index::builder().schema(schema.clone()).settings(settings(signal)).open_or_create(
            ReadAdvice::new(mmap, &path)
                .map_err(|e| OpenFailure { error: StoreError::Index(e.to_string()), damaged: false })?,
        )?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let committed = read_payload(&index, &path)?;
        let writer = match index.writer_with_num_threads(2, opts.memory_bytes) {
            Ok(w) => Some(w),
            Err(e) => {
                let e = StoreError::from(e);
                if !crate::space::is_disk_full_error(&e) {
                    return Err(OpenFailure { error: e, damaged: false });
                }
                tracing::warn!(path = %path.display(), "disk full: the active segment opens read-only until space returns");
                None
            }
        };
        let pending = CommitPayload { ..committed };
        let points = Arc::default();
        Ok(Active { id, index, writer, reader, created: Instant::now(), pending, committed, points })
    }

    /// Publishes a new reader snapshot: `sealed` plus the active segment.
    fn publish(&self, active: &Active, sealed: Vec<Arc<Segment>>) {
        let live = active.reader.searcher().segment_readers().iter().map(|r| r.segment_id()).collect();
        active.points.retain(&live);
        let mut all = sealed;
        all.push(Arc::new(Segment {
            entry: SegmentEntry {
                id: active.id,
                sealed: false,
                min_time: active.committed.min_time,
                max_time: active.committed.max_time,
                docs: active.committed.docs,
                last_seq: active.committed.seq,
                bytes: 0,
            },
            reader: active.reader.clone(),
            points: active.points.clone(),
        }));
        *self.view.write() = Arc::new(all);
    }

    fn sealed_snapshot(&self) -> Vec<Arc<Segment>> {
        self.view.read().iter().filter(|s| s.entry.sealed).cloned().collect()
    }

    /// The segments readers see now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot { layout: self.layout.clone(), segments: self.view.read().clone() }
    }

    /// Highest WAL seq whose documents are committed (or were, in segments since released or
    /// dropped).
    pub fn committed_seq(&self) -> u64 {
        let active = self.active.lock().committed.seq;
        let meta = self.meta.lock();
        let sealed = meta.segments.iter().map(|s| s.last_seq).max().unwrap_or(0);
        active.max(sealed).max(meta.floor_seq)
    }

    /// Adds `docs` (each with its time), emptying it, to the active segment (not yet visible).
    /// One tantivy indexing thread takes the whole batch, so a request's documents (and the
    /// spans of a trace in it) land in one tantivy segment; waits while more than
    /// [`MAX_QUEUED_DOCS`] documents are queued to tantivy (see [`crate::queued`]).
    pub fn add_batch(&self, docs: &mut Vec<(TantivyDocument, u64)>) -> Result<(), StoreError> {
        let n = docs.len();
        if n == 0 {
            return Ok(());
        }
        let mut a = self.active.lock();
        let writer = a.writer.as_ref().ok_or_else(writer_gone)?;
        let mut ticket = Some(self.queued.reserve(n as u64));
        let (mut min_time, mut max_time) = (a.pending.min_time, a.pending.max_time);
        let ops: Vec<UserOperation<QueuedDoc>> = docs
            .drain(..)
            .enumerate()
            .map(|(i, (doc, t))| {
                min_time = min_time.min(t);
                max_time = max_time.max(t);
                UserOperation::Add(QueuedDoc::new(doc, if i + 1 == n { ticket.take() } else { None }))
            })
            .collect();
        writer.run(ops)?;
        a.pending.docs += n as u64;
        a.pending.min_time = min_time;
        a.pending.max_time = max_time;
        Ok(())
    }

    /// Records that everything up to WAL `seq` has been added.
    pub fn advance(&self, seq: u64) {
        let mut a = self.active.lock();
        a.pending.seq = a.pending.seq.max(seq);
    }

    /// Commits the active segment when something changed, makes it visible, and returns the
    /// committed WAL seq.
    pub fn commit(&self) -> Result<u64, StoreError> {
        let mut a = self.active.lock();
        if a.pending.seq == a.committed.seq && a.pending.docs == a.committed.docs {
            return Ok(a.committed.seq);
        }
        let started = Instant::now();
        let payload =
            CommitPayload { schema_version: self.layout.schema_version, signal: Some(self.signal), ..a.pending };
        let payload = serde_json::to_string(&payload).map_err(|e| StoreError::Index(e.to_string()))?;
        let mut prepared = a.writer.as_mut().ok_or_else(writer_gone)?.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        a.reader.reload()?;
        a.committed = CommitPayload { ..a.pending };
        let sealed = self.sealed_snapshot();
        self.publish(&a, sealed);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(a.committed.seq)
    }

    /// Throws away what was added since the last successful commit and starts a new writer on
    /// the active segment (after a failed `add` or `commit`: tantivy kills a writer whose
    /// indexing thread hit an I/O error, such as a full disk). Returns the committed WAL seq:
    /// the caller adds the records after it again, from the WAL.
    pub fn reset(&self) -> Result<u64, StoreError> {
        let mut guard = self.active.lock();
        let a = &mut *guard;
        // The old writer holds the directory lock: drop it before making the new one.
        drop(a.writer.take());
        a.writer = Some(a.index.writer_with_num_threads(2, self.opts.memory_bytes)?);
        // A commit that failed after writing its metadata is on disk: take what is there.
        let path = seg_dir(&self.dir, a.id);
        a.committed = read_payload(&a.index, &path)?;
        a.pending = CommitPayload { ..a.committed };
        a.reader.reload()?;
        let sealed = self.sealed_snapshot();
        self.publish(a, sealed);
        Ok(a.committed.seq)
    }

    /// Seals the active segment when it is old or large enough, and starts a new one.
    pub fn seal_if_due(&self) -> Result<(), StoreError> {
        let due = {
            let a = self.active.lock();
            a.committed.docs > 0 && (a.created.elapsed() >= self.opts.max_age || a.committed.docs >= self.opts.max_docs)
        };
        if due { self.seal() } else { Ok(()) }
    }

    /// Commits and seals the active segment and starts a new one.
    pub fn seal(&self) -> Result<(), StoreError> {
        self.commit()?;
        let mut a = self.active.lock();
        if a.committed.docs == 0 {
            return Ok(());
        }
        let mut meta = self.meta.lock();
        let new_id = meta.next_id;
        let path = seg_dir(&self.dir, a.id);
        let entry = SegmentEntry {
            id: a.id,
            sealed: true,
            min_time: a.committed.min_time,
            max_time: a.committed.max_time,
            docs: a.committed.docs,
            last_seq: a.committed.seq,
            bytes: 0,
        };
        // Create the new active segment before the metastore names it; change the metastore in
        // memory only once the new one is on disk, so a failure (a full disk) leaves both as
        // they were and the next commit retries.
        let new_active = match Self::open_active(&self.dir, self.signal, new_id, &self.layout.schema, &self.opts) {
            Ok(a) if a.writer.is_some() => a,
            Ok(a) => {
                drop(a);
                remove_new_segment(&self.dir, new_id);
                return Err(StoreError::DiskFull("no room for a new segment".into()));
            }
            Err(f) => {
                remove_new_segment(&self.dir, new_id);
                return Err(f.error);
            }
        };
        let mut next = meta.clone();
        next.next_id += 1;
        for s in next.segments.iter_mut() {
            if s.id == a.id {
                *s = entry.clone();
            }
        }
        next.segments.push(SegmentEntry {
            id: new_id,
            sealed: false,
            min_time: u64::MAX,
            max_time: 0,
            docs: 0,
            last_seq: 0,
            bytes: 0,
        });
        if let Err(e) = write_metastore(&self.dir, &next) {
            drop(new_active);
            remove_new_segment(&self.dir, new_id);
            return Err(e);
        }
        *meta = next;
        let old = std::mem::replace(&mut *a, new_active);
        let reader = old.reader.clone();
        drop(old.writer); // waits for merges of the sealed segment
        let mut sealed = self.sealed_snapshot();
        sealed.push(Arc::new(Segment {
            entry: SegmentEntry { bytes: dir_bytes(&path), ..entry },
            reader,
            points: Default::default(),
        }));
        self.publish(&a, sealed);
        tracing::debug!(signal = self.signal.as_str(), "sealed segment");
        Ok(())
    }

    /// Deletes sealed segments whose newest document is older than `min_time`. Returns bytes freed.
    pub fn drop_older_than(&self, min_time: u64) -> Result<u64, StoreError> {
        let old: Vec<u64> =
            self.sealed_snapshot().iter().filter(|s| s.entry.max_time < min_time).map(|s| s.entry.id).collect();
        let mut freed = 0;
        for id in old {
            freed += self.drop_segment(id)?;
        }
        Ok(freed)
    }

    /// The oldest sealed segment: (id, newest document time).
    pub fn oldest_sealed(&self) -> Option<(u64, u64)> {
        self.sealed_snapshot().iter().map(|s| (s.entry.id, s.entry.max_time)).min_by_key(|s| s.1)
    }

    /// Deletes one sealed segment (retention). Returns bytes freed, 0 when it is not listed.
    pub fn drop_segment(&self, id: u64) -> Result<u64, StoreError> {
        Ok(self.remove_sealed(id, "retention dropped segment")?.unwrap_or(0))
    }

    /// Ids and oldest item times of the sealed segments, from memory: what names them, without
    /// the file listing of [`SegmentedIndex::sealed`].
    pub fn sealed_ids(&self) -> Vec<(u64, u64)> {
        self.sealed_snapshot().iter().map(|s| (s.entry.id, s.entry.min_time)).collect()
    }

    /// The sealed segments, oldest first, with their files (for shipping them elsewhere).
    pub fn sealed(&self) -> Vec<SealedInfo> {
        self.sealed_snapshot()
            .iter()
            .map(|s| {
                let path = seg_dir(&self.dir, s.entry.id);
                let files = segment_files(&s.reader, &path);
                SealedInfo {
                    id: s.entry.id,
                    bytes: files.iter().map(|f| f.1).sum(),
                    files,
                    path,
                    min_time: s.entry.min_time,
                    max_time: s.entry.max_time,
                    docs: s.entry.docs,
                }
            })
            .collect()
    }

    /// Stops serving one sealed segment and deletes it (its data lives on elsewhere). Returns
    /// bytes freed; a segment that is not a listed sealed one is [`StoreError::InvalidQuery`].
    /// Reads that started before keep their open files (unlinked, not gone) and finish.
    pub fn release(&self, id: u64) -> Result<u64, StoreError> {
        self.remove_sealed(id, "released segment")?.ok_or_else(|| {
            StoreError::InvalidQuery(format!("no sealed {} segment {id} to release", self.signal.as_str()))
        })
    }

    /// Removes a sealed segment from the metastore (durably, first: a crash after that leaves
    /// a directory the next open deletes), then from the view, then deletes its directory.
    /// None when it is not listed.
    fn remove_sealed(&self, id: u64, what: &str) -> Result<Option<u64>, StoreError> {
        let a = self.active.lock();
        let mut meta = self.meta.lock();
        let Some(entry) = meta.segments.iter().find(|s| s.id == id && s.sealed).cloned() else {
            return Ok(None);
        };
        let mut next = meta.clone();
        next.segments.retain(|s| s.id != id);
        next.floor_seq = next.floor_seq.max(entry.last_seq);
        write_metastore(&self.dir, &next)?;
        *meta = next;
        let sealed: Vec<Arc<Segment>> = self.sealed_snapshot().into_iter().filter(|s| s.entry.id != id).collect();
        self.publish(&a, sealed);
        drop((meta, a));
        self.verified.lock().remove(&id);
        let path = seg_dir(&self.dir, id);
        let bytes = dir_bytes(&path);
        // Searches still holding the segment keep their open files (unlinked, not gone).
        fs::remove_dir_all(&path)?;
        tracing::info!(signal = self.signal.as_str(), segment = id, bytes, "{what}");
        Ok(Some(bytes))
    }

    /// Checks the checksums of the sealed segments not checked since open (reading each file
    /// once; run off the request path). A damaged segment is set aside as at open: removed
    /// from the metastore and the reader view, its directory moved to `quarantine/`. Returns
    /// how many were set aside.
    pub fn verify_sealed(&self) -> Result<usize, StoreError> {
        let todo: Vec<Arc<Segment>> = {
            let verified = self.verified.lock();
            self.sealed_snapshot().into_iter().filter(|s| !verified.contains(&s.entry.id)).collect()
        };
        let mut set_aside = 0;
        for seg in todo {
            let index = seg.reader.searcher().index().clone();
            let problem = match index.validate_checksum() {
                Ok(damaged) if damaged.is_empty() => None,
                Ok(damaged) => Some(format!("checksum mismatch in {damaged:?}")),
                Err(e) => Some(format!("cannot verify: {e}")),
            };
            match problem {
                None => {
                    self.verified.lock().insert(seg.entry.id);
                }
                Some(reason) => {
                    if self.set_aside_sealed(seg.entry.id, &format!("sealed segment damaged: {reason}"))? {
                        set_aside += 1;
                    }
                }
            }
        }
        Ok(set_aside)
    }

    /// Removes a sealed segment from the metastore and the view and moves it to quarantine.
    /// False when it is no longer listed (retention dropped it meanwhile).
    fn set_aside_sealed(&self, id: u64, reason: &str) -> Result<bool, StoreError> {
        let a = self.active.lock();
        let mut meta = self.meta.lock();
        let Some(entry) = meta.segments.iter().find(|s| s.id == id && s.sealed).cloned() else {
            return Ok(false);
        };
        let mut next = meta.clone();
        next.segments.retain(|s| s.id != id);
        write_metastore(&self.dir, &next)?;
        *meta = next;
        let sealed: Vec<Arc<Segment>> = self.sealed_snapshot().into_iter().filter(|s| s.entry.id != id).collect();
        self.publish(&a, sealed);
        self.quarantine.move_aside(&seg_dir(&self.dir, id), reason, &lost_docs(self.signal, &entry))?;
        Ok(true)
    }

    /// Bytes on disk of all segments.
    pub fn disk_bytes(&self) -> u64 {
        let active_id = self.active.lock().id;
        let sealed: u64 = self.view.read().iter().filter(|s| s.entry.sealed).map(|s| s.entry.bytes).sum();
        sealed + dir_bytes(&seg_dir(&self.dir, active_id))
    }

    /// Documents added to the active segment and not yet committed (not yet visible to reads).
    pub fn uncommitted_docs(&self) -> u64 {
        let a = self.active.lock();
        a.pending.docs.saturating_sub(a.committed.docs)
    }

    /// Number of segments, the active one included.
    pub fn segment_count(&self) -> u64 {
        self.view.read().len() as u64
    }

    /// Builds the missing trace filters of the tantivy segments (sealed and active) with at least
    /// `min_docs` documents, newest first and within `max_bytes` in all, and drops those of
    /// segments gone; see [`Snapshot::for_trace`].
    /// Returns how many it built. Reads each new segment's trace id terms: run it off the
    /// indexing path.
    pub fn refresh_trace_filters(&self, min_docs: u32, max_bytes: usize) -> Result<usize, StoreError> {
        let searchers: Vec<Searcher> = self.view.read().iter().map(|s| s.reader.searcher()).collect();
        self.layout.refresh_filters(&searchers, min_docs, max_bytes)
    }

    /// Bytes of the trace filters held now, how many tantivy segments have one, and how many
    /// segments trace lookups skipped so far.
    pub fn trace_filter_stats(&self) -> (usize, usize, u64) {
        let filters = self.layout.filters.read();
        (filters.values().map(|f| f.bytes()).sum(), filters.len(), self.layout.skipped.load(Ordering::Relaxed))
    }

    /// Commits so far and the seconds they took.
    pub fn commit_stats(&self) -> (u64, f64) {
        (self.commits.load(Ordering::Relaxed), self.commit_nanos.load(Ordering::Relaxed) as f64 / 1e9)
    }
}

impl Snapshot {
    /// Segments to read, oldest first.
    pub fn new(layout: Arc<Layout>, segments: Vec<Arc<Segment>>) -> Snapshot {
        Snapshot { layout, segments: Arc::new(segments) }
    }

    /// The schema of every segment.
    pub fn schema(&self) -> &Schema {
        &self.layout.schema
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// `query`, which must match only documents of trace `trace_id`, made to skip the tantivy
    /// segments whose trace filter rules the trace out.
    pub fn for_trace(&self, query: Box<dyn Query>, trace_id: &[u8]) -> Box<dyn Query> {
        Box::new(TraceFiltered { inner: query, trace_id: trace_id.to_vec(), layout: self.layout.clone() })
    }

    /// The segments with documents overlapping `time`.
    fn overlapping(&self, time: TimeRange) -> impl Iterator<Item = &Arc<Segment>> {
        self.segments.iter().filter(move |s| s.entry.docs > 0 && time.overlaps(s.entry.min_time, s.entry.max_time))
    }

    fn searchers(&self, time: TimeRange) -> Vec<Searcher> {
        self.overlapping(time).map(|s| s.reader.searcher()).collect()
    }

    /// [`Snapshot::searchers`] and the point-read columns of their segments, for reads of
    /// stored documents.
    fn searchers_for_reads(&self, time: TimeRange) -> (Vec<Searcher>, Vec<Arc<PointColumns>>) {
        self.overlapping(time).map(|s| (s.reader.searcher(), s.points.clone())).unzip()
    }

    fn with_time(&self, query: Box<dyn Query>, time: TimeRange) -> Result<Box<dyn Query>, StoreError> {
        if time == TimeRange::ALL {
            return Ok(query);
        }
        let field = self.layout.schema.get_field(&self.layout.time_field)?;
        let range = RangeQuery::new(
            Bound::Included(Term::from_field_u64(field, time.start_ns)),
            Bound::Excluded(Term::from_field_u64(field, time.end_ns)),
        );
        Ok(Box::new(BooleanQuery::new(vec![(Occur::Must, query), (Occur::Must, Box::new(range))])))
    }

    /// Stored data of the `limit` newest matching documents, newest first.
    pub fn search_newest(
        &self,
        query: Box<dyn Query>,
        time: TimeRange,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let query = self.with_time(query, time)?;
        let mut hits: Vec<(u64, usize, DocAddress)> = Vec::new();
        let (searchers, points) = self.searchers_for_reads(time);
        for (i, s) in searchers.iter().enumerate() {
            let top = s.search(
                &*query,
                &TopDocs::with_limit(limit).order_by_u64_field(&self.layout.time_field, Order::Desc),
            )?;
            hits.extend(top.into_iter().map(|(t, a)| (t.unwrap_or(0), i, a)));
        }
        hits.sort_by_key(|h| std::cmp::Reverse(h.0));
        hits.truncate(limit);
        self.layout.stored(&searchers, Some(&points), hits.into_iter().map(|(_, i, a)| (i, a)), None)
    }

    /// Stored data of every matching document, ordered by the u64 fast field `order_field`.
    /// `known_bytes` as in [`Layout::stored`].
    pub fn search_all(
        &self,
        query: Box<dyn Query>,
        order_field: &str,
        known_bytes: Option<&[u8]>,
    ) -> Result<Vec<Stored>, StoreError> {
        let mut hits: Vec<(u64, usize, DocAddress)> = Vec::new();
        let (searchers, points) = self.searchers_for_reads(TimeRange::ALL);
        for (i, s) in searchers.iter().enumerate() {
            let mut docs: Vec<DocAddress> = s.search(&*query, &DocSetCollector)?.into_iter().collect();
            docs.sort();
            let mut column: Option<(u32, tantivy::columnar::Column<u64>)> = None;
            for addr in docs {
                if column.as_ref().is_none_or(|(ord, _)| *ord != addr.segment_ord) {
                    column =
                        Some((addr.segment_ord, s.segment_reader(addr.segment_ord).fast_fields().u64(order_field)?));
                }
                let ord = column.as_ref().and_then(|(_, c)| c.first(addr.doc_id)).unwrap_or(0);
                hits.push((ord, i, addr));
            }
        }
        hits.sort_by_key(|h| h.0);
        self.layout.stored(&searchers, Some(&points), hits.into_iter().map(|(_, i, a)| (i, a)), known_bytes)
    }
}

/// Counts matching documents per time bucket (the time fast field divided by `bucket_ns`), into
/// a dense vector: bucket `i` starts at `(first + i) * bucket_ns`.
struct Histogram {
    field: String,
    bucket_ns: u64,
    first: u64,
    buckets: usize,
}

struct HistogramSegment {
    column: tantivy::columnar::Column<u64>,
    bucket_ns: u64,
    first: u64,
    counts: Vec<u64>,
    buf: Vec<Option<u64>>,
}

impl HistogramSegment {
    fn add(&mut self, t: u64) {
        if let Some(c) = (t / self.bucket_ns).checked_sub(self.first).and_then(|i| self.counts.get_mut(i as usize)) {
            *c += 1;
        }
    }
}

impl tantivy::collector::Collector for Histogram {
    type Fruit = Vec<u64>;
    type Child = HistogramSegment;

    fn for_segment(
        &self,
        _: tantivy::SegmentOrdinal,
        segment: &tantivy::SegmentReader,
    ) -> tantivy::Result<HistogramSegment> {
        Ok(HistogramSegment {
            column: segment.fast_fields().u64(&self.field)?,
            bucket_ns: self.bucket_ns,
            first: self.first,
            counts: vec![0; self.buckets],
            buf: Vec::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Self::Fruit>) -> tantivy::Result<Self::Fruit> {
        let mut all = vec![0; self.buckets];
        for f in fruits {
            for (a, b) in all.iter_mut().zip(f) {
                *a += b;
            }
        }
        Ok(all)
    }
}

impl tantivy::collector::SegmentCollector for HistogramSegment {
    type Fruit = Vec<u64>;

    fn collect(&mut self, doc: tantivy::DocId, _: tantivy::Score) {
        if let Some(t) = self.column.first(doc) {
            self.add(t);
        }
    }

    fn collect_block(&mut self, docs: &[tantivy::DocId]) {
        // One columnar read per block instead of one per document.
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(docs.len(), None);
        self.column.first_vals(docs, &mut buf);
        for t in buf.iter().flatten() {
            self.add(*t);
        }
        self.buf = buf;
    }

    fn harvest(self) -> Self::Fruit {
        self.counts
    }
}

impl Snapshot {
    /// Terms of `field` starting with `prefix`, with their document counts summed over the
    /// segments overlapping `time` (a segment counts whole: the figure is an upper bound).
    pub fn terms(
        &self,
        field: Field,
        prefix: &[u8],
        time: TimeRange,
        max_terms: usize,
    ) -> Result<std::collections::BTreeMap<Vec<u8>, u64>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        for searcher in self.searchers(time) {
            for seg in searcher.segment_readers() {
                let inverted = seg.inverted_index(field)?;
                let dict = inverted.terms();
                let mut builder = dict.range().ge(prefix);
                if let Some(end) = prefix_end(prefix) {
                    builder = builder.lt(end);
                }
                let mut stream = builder.into_stream()?;
                while stream.advance() {
                    if out.len() >= max_terms && !out.contains_key(stream.key()) {
                        break;
                    }
                    *out.entry(stream.key().to_vec()).or_insert(0) += stream.value().doc_freq as u64;
                }
            }
        }
        Ok(out)
    }

    /// The distinct parts before the first `\0` of the field's terms (the keys of `key\0value`
    /// attribute terms), at most `max_keys`. Seeks past each key's values rather than reading
    /// them, so a key with a million values costs what a key with one does.
    pub fn term_keys(
        &self,
        field: Field,
        time: TimeRange,
        max_keys: usize,
    ) -> Result<std::collections::BTreeSet<Vec<u8>>, StoreError> {
        let mut out = std::collections::BTreeSet::new();
        for searcher in self.searchers(time) {
            for seg in searcher.segment_readers() {
                let inverted = seg.inverted_index(field)?;
                let dict = inverted.terms();
                let mut from = Vec::new();
                while out.len() < max_keys {
                    let mut stream = dict.range().ge(&from).into_stream()?;
                    if !stream.advance() {
                        break;
                    }
                    let term = stream.key();
                    let key = &term[..term.iter().position(|&b| b == 0).unwrap_or(term.len())];
                    out.insert(key.to_vec());
                    // The first term after every `key\0...` one.
                    from = [key, &[1]].concat();
                }
            }
        }
        Ok(out)
    }

    /// Number of matching documents per bucket of `bucket_ns` (bucket start -> count, non-empty
    /// buckets only).
    pub fn histogram(
        &self,
        query: Box<dyn Query>,
        time: TimeRange,
        bucket_ns: u64,
    ) -> Result<std::collections::BTreeMap<u64, u64>, StoreError> {
        let bucket_ns = bucket_ns.max(1);
        // Clamp an open-ended range to the data actually held.
        let (lo, hi) = self
            .segments
            .iter()
            .filter(|s| s.entry.docs > 0)
            .fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s.entry.min_time), hi.max(s.entry.max_time)));
        let (start, end) = (time.start_ns.max(lo), time.end_ns.min(hi.saturating_add(1)));
        if start >= end {
            return Ok(Default::default());
        }
        let first = start / bucket_ns;
        let buckets = ((end - 1) / bucket_ns - first + 1) as usize;
        if buckets > 1_000_000 {
            return Err(StoreError::InvalidQuery(format!("histogram of {buckets} buckets: use a larger bucket")));
        }
        let query = self.with_time(query, time)?;
        let collector = Histogram { field: self.layout.time_field.clone(), bucket_ns, first, buckets };
        let mut out = std::collections::BTreeMap::new();
        for s in self.searchers(time) {
            for (i, n) in s.search(&*query, &collector)?.into_iter().enumerate() {
                if n > 0 {
                    *out.entry((first + i as u64) * bucket_ns).or_insert(0) += n;
                }
            }
        }
        Ok(out)
    }

    /// The bytes fast field `field` of the `limit` newest matching documents, newest first.
    pub fn newest_bytes(
        &self,
        query: &dyn Query,
        time: TimeRange,
        limit: usize,
        field: &str,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let query = self.with_time(query.box_clone(), time)?;
        let mut hits: Vec<(u64, Vec<u8>)> = Vec::new();
        for s in self.searchers(time) {
            let top = s.search(
                &*query,
                &TopDocs::with_limit(limit).order_by_u64_field(&self.layout.time_field, Order::Desc),
            )?;
            // Opening a bytes column loads its dictionary's index: once per segment, not per hit.
            let mut columns: HashMap<u32, Option<BytesColumn>> = HashMap::new();
            for (t, addr) in top {
                let col = match columns.entry(addr.segment_ord) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(s.segment_reader(addr.segment_ord).fast_fields().bytes(field)?)
                    }
                };
                let Some(col) = col else { continue };
                let mut buf = Vec::new();
                if let Some(ord) = col.ords().first(addr.doc_id) {
                    col.ord_to_bytes(ord, &mut buf)?;
                }
                hits.push((t.unwrap_or(0), buf));
            }
        }
        hits.sort_by_key(|h| std::cmp::Reverse(h.0));
        hits.truncate(limit);
        Ok(hits)
    }
}

fn schema_v1() -> u32 {
    1
}

/// The smallest byte string greater than every string starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn write_metastore(dir: &Path, meta: &Metastore) -> Result<(), StoreError> {
    let mut buf = Vec::new();
    format::write_header(&mut buf, META_MAGIC, META_VERSION)?;
    serde_json::to_writer_pretty(&mut buf, meta).map_err(|e| StoreError::Index(e.to_string()))?;
    let tmp = dir.join("metastore.tmp");
    let result = (|| {
        use std::io::Write;
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dir.join("metastore"))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // A partial temporary file would only hold on to the space a full disk lacks.
        let _ = fs::remove_file(&tmp);
    }
    Ok(result?)
}

/// Reads the metastore. A damaged one is [`StoreError::Corrupt`]; one of a newer obsbox is
/// [`StoreError::Incompatible`] (refused, not set aside).
fn read_metastore(path: &Path) -> Result<Metastore, StoreError> {
    let raw = fs::read(path)?;
    if let Some(v) = format::newer_version(&raw, META_MAGIC, META_VERSION) {
        return Err(format::newer_error(path, v, META_VERSION));
    }
    format::check_header(&raw, path, META_MAGIC, META_VERSION)?;
    serde_json::from_slice::<Metastore>(&raw[format::HEADER_LEN..])
        .map_err(|e| StoreError::corrupt(path, e.to_string()))
}

/// A metastore made from the segment directories: each one's last commit payload has its
/// range, count and seq; the newest becomes the active segment, the others are sealed.
/// Directories that cannot be opened are set aside.
fn rebuild_metastore(
    dir: &Path,
    signal: Signal,
    schema_version: u32,
    quarantine: &Quarantine,
) -> Result<Metastore, StoreError> {
    let mut ids: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("seg-")?.parse().ok())
        .collect();
    ids.sort_unstable();
    // The floor is lost with the metastore: the segments' own seqs are what is left.
    let mut meta = Metastore { signal: Some(signal), schema_version, next_id: 1, segments: Vec::new(), floor_seq: 0 };
    for id in ids {
        meta.next_id = meta.next_id.max(id + 1);
        let path = seg_dir(dir, id);
        let payload = (|| -> Result<CommitPayload, OpenFailure> {
            let index = Index::open_in_dir(&path)?;
            let _: IndexReader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
            Ok(read_payload(&index, &path)?)
        })();
        match payload {
            Err(OpenFailure { error, damaged: false }) => return Err(error),
            Ok(p) => meta.segments.push(SegmentEntry {
                id,
                sealed: true,
                min_time: p.min_time,
                max_time: p.max_time,
                docs: p.docs,
                last_seq: p.seq,
                bytes: 0,
            }),
            Err(OpenFailure { error, .. }) => {
                quarantine.move_aside(&path, &format!("segment unreadable: {error}"), "the segment's documents")?;
            }
        }
    }
    if let Some(last) = meta.segments.last_mut() {
        last.sealed = false;
    }
    tracing::warn!(
        signal = signal.as_str(),
        segments = meta.segments.len(),
        "metastore rebuilt from the segment directories"
    );
    Ok(meta)
}

/// The progress recorded with the index's last commit.
fn read_payload(index: &Index, path: &Path) -> Result<CommitPayload, StoreError> {
    Ok(match index.load_metas()?.payload {
        Some(p) => serde_json::from_str::<CommitPayload>(&p)
            .map_err(|e| StoreError::corrupt(path, format!("commit payload: {e}")))?,
        None => CommitPayload { min_time: u64::MAX, ..Default::default() },
    })
}

/// Why a segment could not be opened, and whether that is the segment's damage (set it aside)
/// or the environment's (a full disk, permissions: leave it alone).
struct OpenFailure {
    error: StoreError,
    damaged: bool,
}

impl From<tantivy::TantivyError> for OpenFailure {
    fn from(e: tantivy::TantivyError) -> Self {
        use tantivy::TantivyError as T;
        use tantivy::directory::error::OpenReadError as R;
        let bad_data = |e: &std::io::Error| {
            matches!(e.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof)
        };
        let damaged = match &e {
            T::DataCorruption(_) | T::IncompatibleIndex(_) | T::DeserializeError(_) | T::SchemaError(_) => true,
            T::OpenReadError(R::FileDoesNotExist(_) | R::IncompatibleIndex(_)) => true,
            T::OpenReadError(R::IoError { io_error, .. }) => bad_data(io_error),
            T::IoError(io) => bad_data(io),
            _ => false,
        };
        OpenFailure { error: e.into(), damaged }
    }
}

impl From<std::io::Error> for OpenFailure {
    fn from(e: std::io::Error) -> Self {
        OpenFailure { error: e.into(), damaged: false }
    }
}

impl From<StoreError> for OpenFailure {
    fn from(e: StoreError) -> Self {
        OpenFailure { damaged: matches!(e, StoreError::Corrupt { .. }), error: e }
    }
}

/// The files of a committed segment directory, relative to it, with their sizes: `meta.json`
/// and the files of the tantivy segments it names (not lock files, not files of segments merged
/// away and not yet garbage-collected).
fn segment_files(reader: &IndexReader, path: &Path) -> Vec<(String, u64)> {
    let index = reader.searcher().index().clone();
    let mut names: Vec<String> = vec!["meta.json".to_string()];
    match index.load_metas() {
        Ok(metas) => {
            names.extend(metas.list_segment_files().into_iter().filter_map(|p| p.to_str().map(str::to_string)))
        }
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot list the files of a segment"),
    }
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let len = fs::metadata(path.join(&name)).ok()?.len();
            Some((name, len))
        })
        .collect()
}

/// A tantivy directory over `MmapDirectory` that never writes: no lock files (tantivy takes the
/// meta lock while opening segment readers, which would create `.tantivy-meta.lock`), no
/// `.managed.json`, no watcher thread. Writes fail with `PermissionDenied`.
#[derive(Clone, Debug)]
struct ReadOnlyDirectory(tantivy::directory::MmapDirectory);

fn read_only_error(path: &Path) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, format!("read-only segment: {}", path.display()))
}

impl tantivy::Directory for ReadOnlyDirectory {
    fn get_file_handle(
        &self,
        path: &Path,
    ) -> Result<Arc<dyn tantivy::directory::FileHandle>, tantivy::directory::error::OpenReadError> {
        self.0.get_file_handle(path)
    }

    fn delete(&self, path: &Path) -> Result<(), tantivy::directory::error::DeleteError> {
        Err(tantivy::directory::error::DeleteError::IoError {
            io_error: Arc::new(read_only_error(path)),
            filepath: path.to_path_buf(),
        })
    }

    fn exists(&self, path: &Path) -> Result<bool, tantivy::directory::error::OpenReadError> {
        self.0.exists(path)
    }

    fn open_write(
        &self,
        path: &Path,
    ) -> Result<tantivy::directory::WritePtr, tantivy::directory::error::OpenWriteError> {
        Err(tantivy::directory::error::OpenWriteError::wrap_io_error(read_only_error(path), path.to_path_buf()))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, tantivy::directory::error::OpenReadError> {
        self.0.atomic_read(path)
    }

    fn atomic_write(&self, path: &Path, _data: &[u8]) -> std::io::Result<()> {
        Err(read_only_error(path))
    }

    fn sync_directory(&self) -> std::io::Result<()> {
        Ok(())
    }

    fn acquire_lock(
        &self,
        _lock: &tantivy::directory::Lock,
    ) -> Result<tantivy::directory::DirectoryLock, tantivy::directory::error::LockError> {
        // Nothing changes the files under a read-only segment, so there is nothing to exclude.
        Ok(tantivy::directory::DirectoryLock::from(Box::new(())))
    }

    fn watch(&self, _cb: tantivy::directory::WatchCallback) -> tantivy::Result<tantivy::directory::WatchHandle> {
        Ok(tantivy::directory::WatchHandle::empty())
    }
}

impl Segment {
    /// Opens a sealed segment directory read-only (nothing is written into it) and checks that
    /// it holds `layout`'s schema: a segment of another schema version is
    /// [`StoreError::Incompatible`] (newer) or [`StoreError::Corrupt`], never misread.
    /// `min_time`/`max_time`/`docs` describe it as its metastore entry does; `docs` must be
    /// the number of documents it holds.
    pub fn open_read_only(
        layout: &Layout,
        path: &Path,
        min_time: u64,
        max_time: u64,
        docs: u64,
    ) -> Result<Segment, StoreError> {
        let mmap = tantivy::directory::MmapDirectory::open(path)
            .map_err(|e| StoreError::Index(format!("{}: {e}", path.display())))?;
        let dir = ReadAdvice::new(ReadOnlyDirectory(mmap), path)
            .map_err(|e| StoreError::Index(format!("{}: {e}", path.display())))?;
        let index = Index::open(dir).map_err(|e| open_error(path, e))?;
        let payload = read_payload(&index, path)?;
        if let Some(signal) = payload.signal.filter(|s| *s != layout.signal) {
            return Err(StoreError::corrupt(
                path,
                format!("a {} segment, not {} (schema)", signal.as_str(), layout.signal.as_str()),
            ));
        }
        let version = payload.schema_version;
        if version > layout.schema_version {
            return Err(StoreError::Incompatible(format!(
                "{}: segment written with schema version {version} by a newer obsbox, this one reads version {}",
                path.display(),
                layout.schema_version
            )));
        }
        if (version != 0 && version != layout.schema_version) || index.schema() != layout.schema {
            return Err(StoreError::corrupt(
                path,
                format!("segment schema (version {version}) is not version {} of this obsbox", layout.schema_version),
            ));
        }
        let reader: IndexReader =
            index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(|e| open_error(path, e))?;
        let held = reader.searcher().num_docs();
        if held != docs {
            return Err(StoreError::corrupt(path, format!("segment holds {held} documents, its entry says {docs}")));
        }
        let entry = SegmentEntry {
            id: 0,
            sealed: true,
            min_time,
            max_time,
            docs,
            last_seq: payload.seq,
            bytes: dir_bytes(path),
        };
        Ok(Segment { entry, reader, points: Default::default() })
    }

    /// Checks the checksums of every file of the segment (reading each once): a damaged one is
    /// [`StoreError::Corrupt`] naming it. Works without `.managed.json` (not shipped).
    pub fn verify(&self, path: &Path) -> Result<(), StoreError> {
        use tantivy::Directory as _;
        let index = self.reader.searcher().index().clone();
        let metas = index.load_metas().map_err(|e| open_error(path, e))?;
        let mut damaged: Vec<String> = Vec::new();
        let mut files: Vec<PathBuf> = metas.list_segment_files().into_iter().collect();
        files.sort();
        for file in files {
            let exists = index.directory().exists(&file).map_err(|e| StoreError::Index(e.to_string()))?;
            if exists && !index.directory().validate_checksum(&file).unwrap_or(false) {
                damaged.push(file.display().to_string());
            }
        }
        match damaged.is_empty() {
            true => Ok(()),
            false => Err(StoreError::corrupt(path, format!("checksum mismatch in {}", damaged.join(", ")))),
        }
    }

    /// Bytes of its directory.
    pub fn bytes(&self) -> u64 {
        self.entry.bytes
    }

    /// The segment's searcher (every document of it).
    pub fn searcher(&self) -> Searcher {
        self.reader.searcher()
    }

    /// Highest WAL seq recorded in the segment's commit payload.
    pub fn last_seq(&self) -> u64 {
        self.entry.last_seq
    }
}

/// A tantivy error opening a segment: damage is [`StoreError::Corrupt`].
fn open_error(path: &Path, e: tantivy::TantivyError) -> StoreError {
    let failure = OpenFailure::from(e);
    match failure.damaged {
        true => StoreError::corrupt(path, failure.error.to_string()),
        false => failure.error,
    }
}

/// Writes a new sealed segment in the empty or missing directory `path` from documents (with
/// their times), the way sealed segments are written: the store's index settings, one commit
/// whose payload holds the time range, count, `last_seq` and schema version. Returns the
/// segment's files and sizes.
pub(crate) fn write_segment(
    layout: &Layout,
    path: &Path,
    docs: impl Iterator<Item = Result<(TantivyDocument, u64), StoreError>>,
    last_seq: u64,
    memory_bytes: usize,
) -> Result<(CommitSummary, Vec<(String, u64)>), StoreError> {
    fs::create_dir_all(path)?;
    // Refuses a directory that holds an index already.
    let index = Index::builder().schema(layout.schema.clone()).settings(settings(layout.signal)).create_in_dir(path)?;
    // One indexing thread keeps the documents in the order given.
    let mut writer: IndexWriter = index.writer_with_num_threads(1, memory_bytes)?;
    let mut p = CommitPayload {
        min_time: u64::MAX,
        schema_version: layout.schema_version,
        signal: Some(layout.signal),
        seq: last_seq,
        ..Default::default()
    };
    for d in docs {
        let (doc, t) = d?;
        writer.add_document(doc)?;
        p.docs += 1;
        p.min_time = p.min_time.min(t);
        p.max_time = p.max_time.max(t);
    }
    let payload = serde_json::to_string(&p).map_err(|e| StoreError::Index(e.to_string()))?;
    let mut prepared = writer.prepare_commit()?;
    prepared.set_payload(&payload);
    prepared.commit()?;
    writer.wait_merging_threads()?;
    sync_dir(path)?;
    let reader: IndexReader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
    let files = segment_files(&reader, path);
    Ok((CommitSummary { min_time: p.min_time, max_time: p.max_time, docs: p.docs }, files))
}

/// What [`write_segment`] wrote.
pub(crate) struct CommitSummary {
    pub min_time: u64,
    pub max_time: u64,
    pub docs: u64,
}

fn open_sealed(dir: &Path, e: &SegmentEntry) -> Result<Segment, OpenFailure> {
    let path = seg_dir(dir, e.id);
    let mmap = tantivy::directory::MmapDirectory::open(&path).map_err(tantivy::TantivyError::from)?;
    let index = Index::open(ReadAdvice::new(mmap, &path).map_err(tantivy::TantivyError::from)?)?;
    let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
    let mut entry = e.clone();
    entry.bytes = dir_bytes(&path);
    Ok(Segment { entry, reader, points: Default::default() })
}

/// Removes the directory of a segment that a failed seal created but no metastore names.
fn remove_new_segment(dir: &Path, id: u64) {
    let path = seg_dir(dir, id);
    if let Err(e) = fs::remove_dir_all(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the directory of an unused segment");
    }
}

fn writer_gone() -> StoreError {
    StoreError::Index("the index writer failed and is being rebuilt".into())
}

/// What setting a sealed segment aside loses, for the log line.
fn lost_docs(signal: Signal, e: &SegmentEntry) -> String {
    format!(
        "{} {} documents from {} to {} (WAL seq up to {}; the WAL no longer holds them)",
        e.docs,
        signal.as_str(),
        fmt_time(e.min_time),
        fmt_time(e.max_time),
        e.last_seq
    )
}

/// A Unix-nanosecond time for log lines (`-` for none).
fn fmt_time(ns: u64) -> String {
    match ns {
        0 | u64::MAX => "-".into(),
        ns => format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000),
    }
}
