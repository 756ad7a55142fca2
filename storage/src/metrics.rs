//! The metrics time-series store: an in-memory head of series plus immutable, compressed block
//! files.
//!
//! # Model
//! A *series* is identified by the metric name, its type (gauge, sum, histogram, exponential
//! histogram, summary) with temporality and monotonicity, its unit, the resource (attributes,
//! dropped count, entity refs, schema URL), the instrumentation scope (name, version, attributes,
//! dropped count, schema URL) and the data point's attributes. Attribute lists are compared as
//! sets (sorted by key), as Prometheus compares label sets. The series key is a stable 64-bit hash
//! (FNV-1a with a final mix) of the canonical protobuf encoding of these parts; on a hash
//! collision the full identity decides.
//!
//! Each series keeps its metadata (description and the metric's `metadata` field, the most
//! recently written wins) and its points, each the full OTLP data point message, so a query
//! returns exactly what was sent. A point whose attribute list equals the series' attribute list
//! is kept with an empty list and gets the series' list back on the way out; a point that sent
//! the same attributes in another order keeps its own list. When the same resource or scope is
//! sent with attributes in different orders, the series shows the first order seen.
//!
//! # Block files (format version 1)
//! ```text
//! header      8-byte magic "OBXMETB1" + u32 LE version, see `format`
//! index_len   u32 LE
//! index_crc   u32 LE: CRC32 of the index bytes
//! index       protobuf `BlockIndexPb`: first/committed seq, min/max point time, counts, the
//!             data length and per metric name a `SectionRefPb` (offset, length, CRC32,
//!             uncompressed length, min/max point time)
//! data        one zstd-compressed protobuf `SectionPb` per metric name
//! ```
//! A section holds a table of resources and scopes and, per series, its identity, metadata and
//! its points as columns: timestamps as delta-of-delta varints, start times as small codes
//! ("same as before", "previous point's time", ...), numeric values as integer deltas or XORed
//! float bits, and the remaining fields of each point (exemplars, flags, buckets, ...) as a
//! length-prefixed protobuf residual, empty for a plain counter point. Files are named
//! `block-{first_seq:020}-{committed_seq:020}.obm`, so their order is recoverable from the name
//! as well as from the index.
//!
//! The parsed indexes stay in memory; sections are read, CRC-checked and decompressed on demand,
//! only for blocks and sections whose time range overlaps the query and whose metric name can
//! match its `__name__` matchers.

use std::borrow::Cow;
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, MetricsData,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use parking_lot::{Mutex, RwLock};
use prost::Message;
use regex::Regex;

use crate::StoreError;
use crate::api::{LabelMatcher, MatchOp, MetricQuery, TimeRange};
use crate::format;
use crate::prometheus::{self, PromView, SeriesLabeler, ViewOptions};
use crate::quarantine::Quarantine;

/// Magic number of block files.
const BLOCK_MAGIC: [u8; 8] = *b"OBXMETB1";
/// Current (and highest readable) block format version.
const BLOCK_VERSION: u32 = 1;
/// Magic number of the committed-sequence marker file.
const COMMITTED_MAGIC: [u8; 8] = *b"OBXMETS1";
/// Current committed-marker format version.
const COMMITTED_VERSION: u32 = 1;
/// Name of the file that remembers the committed sequence number once blocks are deleted.
const COMMITTED_FILE: &str = "committed.obm";
/// zstd level of block sections (blocks are written off the ingest path).
const ZSTD_LEVEL: i32 = 9;
/// Largest uncompressed section a reader accepts (guards allocations against bad indexes).
const MAX_SECTION_RAW: u64 = u32::MAX as u64;
/// Largest block index a reader accepts.
const MAX_INDEX_LEN: u64 = 256 << 20;
/// Label name of the metric name.
const NAME_LABEL: &str = "__name__";
/// Bytes of fixed framing before a block's index: header, index length, index CRC.
const BLOCK_PREFIX_LEN: u64 = format::HEADER_LEN as u64 + 8;

/// Number of data points in a metric (any of gauge/sum/histogram/exponential histogram/summary).
///
/// A metric without data has none.
pub fn point_count(m: &Metric) -> usize {
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Series identity
// ---------------------------------------------------------------------------------------------

/// Metric type, as stored in block files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Gauge = 1,
    Sum = 2,
    Histogram = 3,
    ExponentialHistogram = 4,
    Summary = 5,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::Gauge,
            2 => Kind::Sum,
            3 => Kind::Histogram,
            4 => Kind::ExponentialHistogram,
            5 => Kind::Summary,
            _ => return None,
        })
    }
}

/// The metric-level parts of a series identity.
#[derive(Clone, Copy)]
struct MetricDesc<'a> {
    name: &'a str,
    kind: Kind,
    temporality: i32,
    monotonic: bool,
    unit: &'a str,
}

impl<'a> MetricDesc<'a> {
    /// Describes `m`; `None` when it has no data.
    fn of(m: &'a Metric) -> Option<Self> {
        let (kind, temporality, monotonic) = match m.data.as_ref()? {
            Data::Gauge(_) => (Kind::Gauge, 0, false),
            Data::Sum(s) => (Kind::Sum, s.aggregation_temporality, s.is_monotonic),
            Data::Histogram(h) => (Kind::Histogram, h.aggregation_temporality, false),
            Data::ExponentialHistogram(h) => (Kind::ExponentialHistogram, h.aggregation_temporality, false),
            Data::Summary(_) => (Kind::Summary, 0, false),
        };
        Some(MetricDesc { name: &m.name, kind, temporality, monotonic, unit: &m.unit })
    }

    /// Canonical protobuf encoding (fields 1-5: name, kind, temporality, monotonic, unit;
    /// default values omitted as in proto3).
    fn canonical(&self) -> Vec<u8> {
        use prost::encoding;
        let mut buf = Vec::with_capacity(self.name.len() + self.unit.len() + 16);
        if !self.name.is_empty() {
            encoding::encode_key(1, encoding::WireType::LengthDelimited, &mut buf);
            encoding::encode_varint(self.name.len() as u64, &mut buf);
            buf.extend_from_slice(self.name.as_bytes());
        }
        encoding::uint32::encode(2, &(self.kind as u32), &mut buf);
        if self.temporality != 0 {
            encoding::int32::encode(3, &self.temporality, &mut buf);
        }
        if self.monotonic {
            encoding::bool::encode(4, &true, &mut buf);
        }
        if !self.unit.is_empty() {
            encoding::encode_key(5, encoding::WireType::LengthDelimited, &mut buf);
            encoding::encode_varint(self.unit.len() as u64, &mut buf);
            buf.extend_from_slice(self.unit.as_bytes());
        }
        buf
    }
}

/// Canonical form of a resource: the resource with its attributes sorted by key, plus the
/// schema URL.
#[derive(Clone, PartialEq, Message)]
struct ResourceEntryPb {
    #[prost(message, optional, tag = "1")]
    resource: Option<Resource>,
    #[prost(string, tag = "2")]
    schema_url: String,
}

/// Canonical form of a scope: the scope with its attributes sorted by key, plus the schema URL.
#[derive(Clone, PartialEq, Message)]
struct ScopeEntryPb {
    #[prost(message, optional, tag = "1")]
    scope: Option<InstrumentationScope>,
    #[prost(string, tag = "2")]
    schema_url: String,
}

/// A resource as first seen, with its canonical encoding.
#[derive(Debug)]
struct ResourceEntry {
    resource: Option<Resource>,
    schema_url: String,
    canon: Vec<u8>,
}

impl ResourceEntry {
    fn new(resource: Option<Resource>, schema_url: String) -> Self {
        let canon = resource_canon(resource.as_ref(), &schema_url);
        ResourceEntry { resource, schema_url, canon }
    }
}

/// A scope as first seen, with its canonical encoding.
#[derive(Debug)]
struct ScopeEntry {
    scope: Option<InstrumentationScope>,
    schema_url: String,
    canon: Vec<u8>,
}

impl ScopeEntry {
    fn new(scope: Option<InstrumentationScope>, schema_url: String) -> Self {
        let canon = scope_canon(scope.as_ref(), &schema_url);
        ScopeEntry { scope, schema_url, canon }
    }
}

fn is_sorted_by_key(attrs: &[KeyValue]) -> bool {
    attrs.windows(2).all(|w| w[0].key <= w[1].key)
}

fn sort_attrs(attrs: &mut [KeyValue]) {
    if !is_sorted_by_key(attrs) {
        attrs.sort_by(|a, b| a.key.cmp(&b.key));
    }
}

fn resource_canon(resource: Option<&Resource>, schema_url: &str) -> Vec<u8> {
    let mut resource = resource.cloned();
    if let Some(r) = &mut resource {
        sort_attrs(&mut r.attributes);
    }
    ResourceEntryPb { resource, schema_url: schema_url.to_owned() }.encode_to_vec()
}

fn scope_canon(scope: Option<&InstrumentationScope>, schema_url: &str) -> Vec<u8> {
    let mut scope = scope.cloned();
    if let Some(s) = &mut scope {
        sort_attrs(&mut s.attributes);
    }
    ScopeEntryPb { scope, schema_url: schema_url.to_owned() }.encode_to_vec()
}

/// Canonical encoding of an attribute list: each attribute as field 1 of a message, sorted by
/// key (stable, so duplicate keys keep their order).
fn attrs_canon(attrs: &[KeyValue], out: &mut Vec<u8>) {
    out.clear();
    if is_sorted_by_key(attrs) {
        for kv in attrs {
            prost::encoding::message::encode(1, kv, out);
        }
    } else {
        let mut refs: Vec<&KeyValue> = attrs.iter().collect();
        refs.sort_by(|a, b| a.key.cmp(&b.key));
        for kv in refs {
            prost::encoding::message::encode(1, kv, out);
        }
    }
}

/// FNV-1a 64 over length-prefixed parts, finished with the splitmix64 mixer. Stable across
/// platforms and Rust versions (unlike `std`'s `DefaultHasher`).
#[derive(Clone, Copy)]
struct StableHasher(u64);

impl StableHasher {
    fn new() -> Self {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    fn write_part(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    fn finish(self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Hash of the metric, resource and scope parts; a series key continues it with the attributes.
fn prefix_hasher(metric_canon: &[u8], resource: &ResourceEntry, scope: &ScopeEntry) -> StableHasher {
    let mut h = StableHasher::new();
    h.write_part(metric_canon);
    h.write_part(&resource.canon);
    h.write_part(&scope.canon);
    h
}

fn series_key(prefix: StableHasher, attrs_canon: &[u8]) -> u64 {
    let mut h = prefix;
    h.write_part(attrs_canon);
    h.finish()
}

/// The full identity of a series.
#[derive(Debug)]
struct SeriesIdent {
    key: u64,
    name: String,
    kind: Kind,
    temporality: i32,
    monotonic: bool,
    unit: String,
    resource: Arc<ResourceEntry>,
    scope: Arc<ScopeEntry>,
    /// Attributes as first seen (original order).
    attributes: Vec<KeyValue>,
    attrs_canon: Vec<u8>,
}

impl SeriesIdent {
    fn build(
        desc: MetricDesc<'_>,
        resource: Arc<ResourceEntry>,
        scope: Arc<ScopeEntry>,
        attributes: Vec<KeyValue>,
    ) -> Self {
        let mut canon = Vec::new();
        attrs_canon(&attributes, &mut canon);
        let prefix = prefix_hasher(&desc.canonical(), &resource, &scope);
        SeriesIdent {
            key: series_key(prefix, &canon),
            name: desc.name.to_owned(),
            kind: desc.kind,
            temporality: desc.temporality,
            monotonic: desc.monotonic,
            unit: desc.unit.to_owned(),
            resource,
            scope,
            attributes,
            attrs_canon: canon,
        }
    }

    fn matches_parts(
        &self,
        desc: &MetricDesc<'_>,
        resource: &Arc<ResourceEntry>,
        scope: &Arc<ScopeEntry>,
        attrs_canon: &[u8],
    ) -> bool {
        self.name == desc.name
            && self.kind == desc.kind
            && self.temporality == desc.temporality
            && self.monotonic == desc.monotonic
            && self.unit == desc.unit
            && (Arc::ptr_eq(&self.resource, resource) || self.resource.canon == resource.canon)
            && (Arc::ptr_eq(&self.scope, scope) || self.scope.canon == scope.canon)
            && self.attrs_canon == attrs_canon
    }

    fn same(&self, other: &SeriesIdent) -> bool {
        self.key == other.key && self.matches_parts(&other.desc(), &other.resource, &other.scope, &other.attrs_canon)
    }

    fn desc(&self) -> MetricDesc<'_> {
        MetricDesc {
            name: &self.name,
            kind: self.kind,
            temporality: self.temporality,
            monotonic: self.monotonic,
            unit: &self.unit,
        }
    }

    fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.name.len()
            + self.unit.len()
            + self.attrs_canon.len() * 2
            + self.attributes.len() * std::mem::size_of::<KeyValue>()
    }
}

/// Per-series metadata that is not part of the identity.
#[derive(Clone, Debug, Default, PartialEq)]
struct SeriesMeta {
    description: String,
    metadata: Vec<KeyValue>,
}

// ---------------------------------------------------------------------------------------------
// Points
// ---------------------------------------------------------------------------------------------

/// The points of one series, typed by its kind.
#[derive(Clone, Debug)]
enum Points {
    /// Gauge and sum points.
    Number(Vec<NumberDataPoint>),
    Histogram(Vec<HistogramDataPoint>),
    ExponentialHistogram(Vec<ExponentialHistogramDataPoint>),
    Summary(Vec<SummaryDataPoint>),
}

impl Points {
    fn empty(kind: Kind) -> Self {
        match kind {
            Kind::Gauge | Kind::Sum => Points::Number(Vec::new()),
            Kind::Histogram => Points::Histogram(Vec::new()),
            Kind::ExponentialHistogram => Points::ExponentialHistogram(Vec::new()),
            Kind::Summary => Points::Summary(Vec::new()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Points::Number(v) => v.len(),
            Points::Histogram(v) => v.len(),
            Points::ExponentialHistogram(v) => v.len(),
            Points::Summary(v) => v.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `other`'s points (same kind; points of another kind are dropped, which the
    /// series identity rules out).
    fn extend(&mut self, other: Points) {
        match (self, other) {
            (Points::Number(a), Points::Number(b)) => a.extend(b),
            (Points::Histogram(a), Points::Histogram(b)) => a.extend(b),
            (Points::ExponentialHistogram(a), Points::ExponentialHistogram(b)) => a.extend(b),
            (Points::Summary(a), Points::Summary(b)) => a.extend(b),
            _ => {}
        }
    }

    /// Calls `f` with the time of every point.
    fn for_each_time(&self, mut f: impl FnMut(u64)) {
        match self {
            Points::Number(v) => v.iter().for_each(|p| f(p.time())),
            Points::Histogram(v) => v.iter().for_each(|p| f(p.time())),
            Points::ExponentialHistogram(v) => v.iter().for_each(|p| f(p.time())),
            Points::Summary(v) => v.iter().for_each(|p| f(p.time())),
        }
    }

    /// Clones the points whose time lies in `time`.
    fn filter_clone(&self, time: TimeRange) -> Points {
        fn f<P: DataPoint>(v: &[P], time: TimeRange) -> Vec<P> {
            v.iter().filter(|p| time.contains(p.time())).cloned().collect()
        }
        match self {
            Points::Number(v) => Points::Number(f(v, time)),
            Points::Histogram(v) => Points::Histogram(f(v, time)),
            Points::ExponentialHistogram(v) => Points::ExponentialHistogram(f(v, time)),
            Points::Summary(v) => Points::Summary(f(v, time)),
        }
    }

    fn heap_bytes(&self) -> usize {
        fn f<P: DataPoint>(v: &[P]) -> usize {
            v.iter().map(|p| std::mem::size_of::<P>() + p.encoded_len()).sum()
        }
        match self {
            Points::Number(v) => f(v),
            Points::Histogram(v) => f(v),
            Points::ExponentialHistogram(v) => f(v),
            Points::Summary(v) => f(v),
        }
    }
}

/// Common access to the four OTLP data point messages.
trait DataPoint: Message + Default + Clone + Sized {
    /// Whether the point has a numeric `value` stored in its own column.
    const HAS_VALUE: bool = false;
    fn time(&self) -> u64;
    fn set_time(&mut self, t: u64);
    fn start(&self) -> u64;
    fn set_start(&mut self, t: u64);
    fn attributes(&self) -> &[KeyValue];
    fn attributes_mut(&mut self) -> &mut Vec<KeyValue>;
    fn take_value(&mut self) -> Option<number_data_point::Value> {
        None
    }
    fn set_value(&mut self, _v: Option<number_data_point::Value>) {}
    fn vec_mut(points: &mut Points) -> Option<&mut Vec<Self>>;
}

macro_rules! impl_data_point {
    ($t:ty, $variant:ident $(, $extra:item)*) => {
        impl DataPoint for $t {
            $($extra)*
            fn time(&self) -> u64 {
                self.time_unix_nano
            }
            fn set_time(&mut self, t: u64) {
                self.time_unix_nano = t;
            }
            fn start(&self) -> u64 {
                self.start_time_unix_nano
            }
            fn set_start(&mut self, t: u64) {
                self.start_time_unix_nano = t;
            }
            fn attributes(&self) -> &[KeyValue] {
                &self.attributes
            }
            fn attributes_mut(&mut self) -> &mut Vec<KeyValue> {
                &mut self.attributes
            }
            fn vec_mut(points: &mut Points) -> Option<&mut Vec<Self>> {
                match points {
                    Points::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

impl_data_point!(
    NumberDataPoint,
    Number,
    const HAS_VALUE: bool = true;,
    fn take_value(&mut self) -> Option<number_data_point::Value> {
        self.value.take()
    },
    fn set_value(&mut self, v: Option<number_data_point::Value>) {
        self.value = v;
    }
);
impl_data_point!(HistogramDataPoint, Histogram);
impl_data_point!(ExponentialHistogramDataPoint, ExponentialHistogram);
impl_data_point!(SummaryDataPoint, Summary);

// ---------------------------------------------------------------------------------------------
// Label matching
// ---------------------------------------------------------------------------------------------

/// The label string of an attribute value: strings as is, integers in decimal, doubles with
/// Rust's `{}` formatting, booleans as `true`/`false`, anything else as compact JSON (bytes as
/// base64, like OTLP/JSON). A missing value is `""`.
pub(crate) fn label_string(v: Option<&AnyValue>) -> Cow<'_, str> {
    use any_value::Value;
    match v.and_then(|v| v.value.as_ref()) {
        None => Cow::Borrowed(""),
        Some(Value::StringValue(s)) => Cow::Borrowed(s),
        Some(Value::IntValue(i)) => Cow::Owned(i.to_string()),
        Some(Value::DoubleValue(d)) => Cow::Owned(format!("{d}")),
        Some(Value::BoolValue(b)) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Some(other) => Cow::Owned(any_to_json(Some(other), 0).to_string()),
    }
}

fn any_to_json(v: Option<&any_value::Value>, depth: usize) -> serde_json::Value {
    use any_value::Value;
    use serde_json::Value as J;
    if depth > 64 {
        return J::Null;
    }
    match v {
        None => J::Null,
        Some(Value::StringValue(s)) => J::String(s.clone()),
        Some(Value::IntValue(i)) => J::from(*i),
        Some(Value::DoubleValue(d)) => {
            serde_json::Number::from_f64(*d).map_or_else(|| J::String(format!("{d}")), J::Number)
        }
        Some(Value::BoolValue(b)) => J::Bool(*b),
        Some(Value::BytesValue(b)) => J::String(base64(b)),
        Some(Value::StringValueStrindex(i)) => J::from(*i),
        Some(Value::ArrayValue(a)) => {
            J::Array(a.values.iter().map(|v| any_to_json(v.value.as_ref(), depth + 1)).collect())
        }
        Some(Value::KvlistValue(kv)) => J::Object(
            kv.values
                .iter()
                .map(|kv| (kv.key.clone(), any_to_json(kv.value.as_ref().and_then(|v| v.value.as_ref()), depth + 1)))
                .collect(),
        ),
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The value of label `label` of a series: `__name__` is the metric name; any other label is
/// the first point attribute with that key, else the first resource attribute, else `""`.
fn label_value<'a>(label: &str, name: &'a str, attrs: &'a [KeyValue], resource: Option<&'a Resource>) -> Cow<'a, str> {
    if label == NAME_LABEL {
        return Cow::Borrowed(name);
    }
    let found = attrs
        .iter()
        .find(|kv| kv.key == label)
        .or_else(|| resource.and_then(|r| r.attributes.iter().find(|kv| kv.key == label)));
    match found {
        Some(kv) => label_string(kv.value.as_ref()),
        None => Cow::Borrowed(""),
    }
}

/// One matcher, its regular expression compiled.
struct CompiledMatcher {
    name: String,
    op: MatchOp,
    value: String,
    re: Option<Regex>,
}

impl CompiledMatcher {
    fn test(&self, v: &str) -> bool {
        match (self.op, &self.re) {
            (MatchOp::Eq, _) => v == self.value,
            (MatchOp::Ne, _) => v != self.value,
            (MatchOp::Re, Some(re)) => re.is_match(v),
            (MatchOp::NotRe, Some(re)) => !re.is_match(v),
            // Regular-expression ops always carry a compiled regex (see `Matchers::compile`).
            (MatchOp::Re | MatchOp::NotRe, None) => false,
        }
    }
}

/// The compiled matchers of a query; all must hold.
pub(crate) struct Matchers {
    list: Vec<CompiledMatcher>,
}

impl Matchers {
    /// Compiles the matchers; a bad regular expression is [`StoreError::InvalidQuery`].
    pub(crate) fn compile(matchers: &[LabelMatcher]) -> Result<Self, StoreError> {
        let mut list = Vec::with_capacity(matchers.len());
        for m in matchers {
            let re = match m.op {
                MatchOp::Eq | MatchOp::Ne => None,
                MatchOp::Re | MatchOp::NotRe => {
                    let op = if m.op == MatchOp::Re { "=~" } else { "!~" };
                    let re = Regex::new(&format!("^(?:{})$", m.value)).map_err(|e| {
                        StoreError::InvalidQuery(format!(
                            "invalid regular expression in matcher {}{op}{:?}: {e}",
                            m.name, m.value
                        ))
                    })?;
                    Some(re)
                }
            };
            list.push(CompiledMatcher { name: m.name.clone(), op: m.op, value: m.value.clone(), re });
        }
        Ok(Matchers { list })
    }

    /// Whether a series named `name` can match (checks only the `__name__` matchers).
    fn name_may_match(&self, name: &str) -> bool {
        self.list.iter().filter(|m| m.name == NAME_LABEL).all(|m| m.test(name))
    }

    /// Whether a series matches every matcher.
    fn matches(&self, name: &str, attrs: &[KeyValue], resource: Option<&Resource>) -> bool {
        self.list.iter().all(|m| m.test(&label_value(&m.name, name, attrs, resource)))
    }

    /// Whether a label set (sorted by name) matches every matcher; a missing label is `""`.
    pub(crate) fn matches_labels(&self, labels: &[(String, String)]) -> bool {
        self.list.iter().all(|m| {
            let v = labels.binary_search_by(|(k, _)| k.as_str().cmp(&m.name)).map_or("", |i| labels[i].1.as_str());
            m.test(v)
        })
    }
}

/// Which series a query keeps: those matching the store matchers and, for a read through the
/// Prometheus view, whose view labels ([`prometheus::series_labels`]) match the label matchers.
pub(crate) struct Selection {
    matchers: Matchers,
    labels: Option<Matchers>,
}

impl Selection {
    /// Compiles both lists; a bad regular expression is [`StoreError::InvalidQuery`].
    pub(crate) fn compile(matchers: &[LabelMatcher], labels: &[LabelMatcher]) -> Result<Self, StoreError> {
        let labels = if labels.is_empty() { None } else { Some(Matchers::compile(labels)?) };
        Ok(Selection { matchers: Matchers::compile(matchers)?, labels })
    }

    /// Whether the series passes. `labeler` gives the view labels of its resource and scope; it
    /// is only called when there are label matchers.
    fn keeps<'a>(
        &self,
        name: &str,
        attrs: &[KeyValue],
        resource: &ResourceEntry,
        labeler: impl FnOnce() -> &'a SeriesLabeler,
    ) -> bool {
        if !self.matchers.matches(name, attrs, resource.resource.as_ref()) {
            return false;
        }
        match &self.labels {
            None => true,
            Some(m) => m.matches_labels(&labeler().labels(attrs)),
        }
    }
}

/// [`SeriesLabeler`]s of the resource and scope pairs met in one collect call, keyed by the
/// addresses of their entries (alive for the whole call).
#[derive(Default)]
struct LabelerCache(HashMap<(usize, usize), SeriesLabeler>);

impl LabelerCache {
    fn get(&mut self, resource: &Arc<ResourceEntry>, scope: &Arc<ScopeEntry>) -> &SeriesLabeler {
        let key = (Arc::as_ptr(resource) as usize, Arc::as_ptr(scope) as usize);
        self.0.entry(key).or_insert_with(|| SeriesLabeler::new(resource.resource.as_ref(), scope.scope.as_ref()))
    }
}

// ---------------------------------------------------------------------------------------------
// Query results
// ---------------------------------------------------------------------------------------------

/// One series of a query result being assembled.
struct Collected {
    ident: Arc<SeriesIdent>,
    meta: SeriesMeta,
    points: Points,
}

/// Assembles query results from head and blocks: series are merged by identity, sources added
/// oldest first so the newest metadata wins.
#[derive(Default)]
struct Collector {
    map: BTreeMap<(String, u64), Vec<Collected>>,
}

impl Collector {
    fn add(&mut self, ident: Arc<SeriesIdent>, meta: SeriesMeta, points: Points) {
        if points.is_empty() {
            return;
        }
        let list = self.map.entry((ident.name.clone(), ident.key)).or_default();
        if let Some(c) = list.iter_mut().find(|c| c.ident.same(&ident)) {
            c.points.extend(points);
            c.meta = meta;
        } else {
            list.push(Collected { ident, meta, points });
        }
    }

    fn merge(&mut self, other: Collector) {
        for c in other.map.into_values().flatten() {
            self.add(c.ident, c.meta, c.points);
        }
    }

    /// Builds the result: one `Metric` per series, points oldest first, grouped by resource
    /// and scope (groups ordered by their canonical encoding, metrics by name then key).
    fn into_metrics_data(self) -> MetricsData {
        self.build(true).0
    }

    /// The Prometheus view of the result, without copying each series' attributes into its
    /// points first (the view takes them from the series).
    fn into_view(self, opts: &ViewOptions) -> PromView {
        let (data, idents) = self.build(false);
        let attrs: Vec<&[KeyValue]> = idents.iter().map(|i| i.attributes.as_slice()).collect();
        prometheus::view(&data, opts, &attrs)
    }

    /// The result and, in the same order as its metrics, their series. With `fill`, points
    /// that left out their attributes (equal to the series') get them back.
    fn build(self, fill: bool) -> (MetricsData, Vec<Arc<SeriesIdent>>) {
        let mut items: Vec<(Arc<SeriesIdent>, Metric)> = Vec::new();
        for c in self.map.into_values().flatten() {
            let ident = c.ident.clone();
            items.push((ident, into_metric(c, fill)));
        }
        fn cmp_canon<T>(a: &Arc<T>, b: &Arc<T>, canon: impl Fn(&T) -> &[u8]) -> CmpOrdering {
            if Arc::ptr_eq(a, b) { CmpOrdering::Equal } else { canon(a).cmp(canon(b)) }
        }
        items.sort_by(|(a, _), (b, _)| {
            cmp_canon(&a.resource, &b.resource, |r| &r.canon).then_with(|| cmp_canon(&a.scope, &b.scope, |s| &s.canon))
        });
        let mut out = MetricsData::default();
        let mut idents = Vec::with_capacity(items.len());
        let mut last: Option<(Arc<ResourceEntry>, Arc<ScopeEntry>)> = None;
        for (ident, metric) in items {
            let (resource, scope) = (ident.resource.clone(), ident.scope.clone());
            let same_resource =
                last.as_ref().is_some_and(|(r, _)| Arc::ptr_eq(r, &resource) || r.canon == resource.canon);
            let same_scope =
                same_resource && last.as_ref().is_some_and(|(_, s)| Arc::ptr_eq(s, &scope) || s.canon == scope.canon);
            if !same_resource {
                out.resource_metrics.push(ResourceMetrics {
                    resource: resource.resource.clone(),
                    scope_metrics: Vec::new(),
                    schema_url: resource.schema_url.clone(),
                });
            }
            let Some(rm) = out.resource_metrics.last_mut() else {
                continue;
            };
            if !same_scope {
                rm.scope_metrics.push(ScopeMetrics {
                    scope: scope.scope.clone(),
                    metrics: Vec::new(),
                    schema_url: scope.schema_url.clone(),
                });
            }
            if let Some(sm) = rm.scope_metrics.last_mut() {
                sm.metrics.push(metric);
                idents.push(ident);
            }
            last = Some((resource, scope));
        }
        (out, idents)
    }
}

fn finish_points<P: DataPoint>(v: &mut [P], attrs: &[KeyValue], fill: bool) {
    v.sort_by_key(|p| p.time());
    if fill && !attrs.is_empty() {
        for p in v.iter_mut().filter(|p| p.attributes().is_empty()) {
            *p.attributes_mut() = attrs.to_vec();
        }
    }
}

fn into_metric(c: Collected, fill: bool) -> Metric {
    let Collected { ident, meta, points } = c;
    let attrs = &ident.attributes;
    let data = match (ident.kind, points) {
        (Kind::Gauge, Points::Number(mut v)) => {
            finish_points(&mut v, attrs, fill);
            Some(Data::Gauge(Gauge { data_points: v }))
        }
        (Kind::Sum, Points::Number(mut v)) => {
            finish_points(&mut v, attrs, fill);
            Some(Data::Sum(Sum {
                data_points: v,
                aggregation_temporality: ident.temporality,
                is_monotonic: ident.monotonic,
            }))
        }
        (Kind::Histogram, Points::Histogram(mut v)) => {
            finish_points(&mut v, attrs, fill);
            Some(Data::Histogram(Histogram { data_points: v, aggregation_temporality: ident.temporality }))
        }
        (Kind::ExponentialHistogram, Points::ExponentialHistogram(mut v)) => {
            finish_points(&mut v, attrs, fill);
            Some(Data::ExponentialHistogram(ExponentialHistogram {
                data_points: v,
                aggregation_temporality: ident.temporality,
            }))
        }
        (Kind::Summary, Points::Summary(mut v)) => {
            finish_points(&mut v, attrs, fill);
            Some(Data::Summary(Summary { data_points: v }))
        }
        // The kind is part of the identity, so points always have the series' kind.
        _ => None,
    };
    Metric {
        name: ident.name.clone(),
        description: meta.description,
        unit: ident.unit.clone(),
        metadata: meta.metadata,
        data,
    }
}

// ---------------------------------------------------------------------------------------------
// Head
// ---------------------------------------------------------------------------------------------

/// One series in the head.
#[derive(Clone, Debug)]
struct HeadSeries {
    ident: Arc<SeriesIdent>,
    meta: SeriesMeta,
    points: Points,
    min_time: u64,
    max_time: u64,
}

/// Fixed per-point bookkeeping counted by [`MetricsHead::approx_bytes`].
const POINT_OVERHEAD: usize = 16;

/// In-memory series store: used as the head of [`MetricsStore`] and, alone, by the in-memory
/// store (`MemStore`).
///
/// Not synchronised: callers wrap it in a lock. Points are kept in append order per series;
/// queries return them sorted by time. Appending the same point twice stores it twice.
#[derive(Clone, Debug, Default)]
pub(crate) struct MetricsHead {
    series: Vec<HeadSeries>,
    by_key: HashMap<u64, Vec<usize>>,
    resources: HashMap<Vec<u8>, Arc<ResourceEntry>>,
    scopes: HashMap<Vec<u8>, Arc<ScopeEntry>>,
    points: u64,
    bytes: usize,
}

impl MetricsHead {
    /// An empty head.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every data point of the request to its series, creating series as needed. Metrics
    /// without data are ignored. Never fails.
    pub fn append(&mut self, req: &ExportMetricsServiceRequest) {
        let mut canon = Vec::new();
        for rm in &req.resource_metrics {
            let resource = self.intern_resource(ResourceEntry::new(rm.resource.clone(), rm.schema_url.clone()));
            for sm in &rm.scope_metrics {
                let scope = self.intern_scope(ScopeEntry::new(sm.scope.clone(), sm.schema_url.clone()));
                for m in &sm.metrics {
                    let Some(desc) = MetricDesc::of(m) else {
                        continue;
                    };
                    if point_count(m) == 0 {
                        continue;
                    }
                    let metric_canon = desc.canonical();
                    let prefix = prefix_hasher(&metric_canon, &resource, &scope);
                    let ctx = AppendCtx { desc, resource: &resource, scope: &scope, prefix, metric: m };
                    match &m.data {
                        Some(Data::Gauge(g)) => self.add_points(&ctx, &g.data_points, &mut canon),
                        Some(Data::Sum(s)) => self.add_points(&ctx, &s.data_points, &mut canon),
                        Some(Data::Histogram(h)) => self.add_points(&ctx, &h.data_points, &mut canon),
                        Some(Data::ExponentialHistogram(h)) => self.add_points(&ctx, &h.data_points, &mut canon),
                        Some(Data::Summary(s)) => self.add_points(&ctx, &s.data_points, &mut canon),
                        None => {}
                    }
                }
            }
        }
    }

    /// Series matching `q.matchers` with their points in `q.time`, grouped by resource and
    /// scope, one `Metric` per series, points oldest first. A bad regular expression is
    /// [`StoreError::InvalidQuery`].
    pub fn query(&self, q: &MetricQuery) -> Result<MetricsData, StoreError> {
        let sel = Selection::compile(&q.matchers, &[])?;
        let mut col = Collector::default();
        self.collect(&sel, q.time, &mut col);
        Ok(col.into_metrics_data())
    }

    /// Approximate heap bytes held (points, series identities and metadata).
    pub fn approx_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the head holds no point.
    pub fn is_empty(&self) -> bool {
        self.point_count() == 0
    }

    /// Number of points held.
    pub fn point_count(&self) -> u64 {
        self.points
    }

    fn intern_resource(&mut self, entry: ResourceEntry) -> Arc<ResourceEntry> {
        if let Some(r) = self.resources.get(&entry.canon) {
            return r.clone();
        }
        self.bytes += entry.canon.len() * 3;
        let entry = Arc::new(entry);
        self.resources.insert(entry.canon.clone(), entry.clone());
        entry
    }

    fn intern_scope(&mut self, entry: ScopeEntry) -> Arc<ScopeEntry> {
        if let Some(s) = self.scopes.get(&entry.canon) {
            return s.clone();
        }
        self.bytes += entry.canon.len() * 3;
        let entry = Arc::new(entry);
        self.scopes.insert(entry.canon.clone(), entry.clone());
        entry
    }

    fn find(&self, key: u64, ctx: &AppendCtx<'_>, attrs_canon: &[u8]) -> Option<usize> {
        self.by_key.get(&key)?.iter().copied().find(|&i| {
            self.series.get(i).is_some_and(|s| s.ident.matches_parts(&ctx.desc, ctx.resource, ctx.scope, attrs_canon))
        })
    }

    fn add_points<P: DataPoint>(&mut self, ctx: &AppendCtx<'_>, points: &[P], canon: &mut Vec<u8>) {
        for p in points {
            attrs_canon(p.attributes(), canon);
            let key = series_key(ctx.prefix, canon);
            let idx = match self.find(key, ctx, canon) {
                Some(i) => i,
                None => {
                    let ident = SeriesIdent {
                        key,
                        name: ctx.desc.name.to_owned(),
                        kind: ctx.desc.kind,
                        temporality: ctx.desc.temporality,
                        monotonic: ctx.desc.monotonic,
                        unit: ctx.desc.unit.to_owned(),
                        resource: ctx.resource.clone(),
                        scope: ctx.scope.clone(),
                        attributes: p.attributes().to_vec(),
                        attrs_canon: canon.clone(),
                    };
                    let meta = SeriesMeta {
                        description: ctx.metric.description.clone(),
                        metadata: ctx.metric.metadata.clone(),
                    };
                    self.bytes += ident.approx_bytes() + std::mem::size_of::<HeadSeries>() + 32;
                    self.series.push(HeadSeries {
                        ident: Arc::new(ident),
                        meta,
                        points: Points::empty(ctx.desc.kind),
                        min_time: u64::MAX,
                        max_time: 0,
                    });
                    let i = self.series.len() - 1;
                    self.by_key.entry(key).or_default().push(i);
                    i
                }
            };
            let Some(s) = self.series.get_mut(idx) else {
                continue;
            };
            let mut point = p.clone();
            if point.attributes() == s.ident.attributes.as_slice() {
                point.attributes_mut().clear();
            }
            if s.meta.description != ctx.metric.description {
                s.meta.description.clone_from(&ctx.metric.description);
            }
            if s.meta.metadata != ctx.metric.metadata {
                s.meta.metadata.clone_from(&ctx.metric.metadata);
            }
            let t = point.time();
            let size = std::mem::size_of::<P>() + point.encoded_len() + POINT_OVERHEAD;
            let Some(vec) = P::vec_mut(&mut s.points) else {
                continue;
            };
            vec.push(point);
            s.min_time = s.min_time.min(t);
            s.max_time = s.max_time.max(t);
            self.points += 1;
            self.bytes += size;
        }
    }

    /// Moves every series of `other` into `self` (used to restore a head after a failed flush).
    fn absorb(&mut self, other: MetricsHead) {
        for s in other.series {
            let resource = self.intern_resource_arc(&s.ident.resource);
            let scope = self.intern_scope_arc(&s.ident.scope);
            let n = s.points.len() as u64;
            let size = s.points.heap_bytes() + n as usize * POINT_OVERHEAD;
            let desc = s.ident.desc();
            let found = self.by_key.get(&s.ident.key).and_then(|v| {
                v.iter().copied().find(|&i| {
                    self.series
                        .get(i)
                        .is_some_and(|e| e.ident.matches_parts(&desc, &resource, &scope, &s.ident.attrs_canon))
                })
            });
            match found.and_then(|i| self.series.get_mut(i)) {
                Some(e) => {
                    e.points.extend(s.points);
                    e.meta = s.meta;
                    e.min_time = e.min_time.min(s.min_time);
                    e.max_time = e.max_time.max(s.max_time);
                }
                None => {
                    self.bytes += s.ident.approx_bytes() + std::mem::size_of::<HeadSeries>() + 32;
                    let key = s.ident.key;
                    self.series.push(s);
                    self.by_key.entry(key).or_default().push(self.series.len() - 1);
                }
            }
            self.points += n;
            self.bytes += size;
        }
    }

    fn intern_resource_arc(&mut self, r: &Arc<ResourceEntry>) -> Arc<ResourceEntry> {
        self.resources.entry(r.canon.clone()).or_insert_with(|| r.clone()).clone()
    }

    fn intern_scope_arc(&mut self, s: &Arc<ScopeEntry>) -> Arc<ScopeEntry> {
        self.scopes.entry(s.canon.clone()).or_insert_with(|| s.clone()).clone()
    }

    /// Adds the matching series' points in `time` to `col`.
    fn collect(&self, sel: &Selection, time: TimeRange, col: &mut Collector) {
        let mut labelers = LabelerCache::default();
        for s in &self.series {
            if !time.overlaps(s.min_time, s.max_time)
                || !sel.keeps(&s.ident.name, &s.ident.attributes, &s.ident.resource, || {
                    labelers.get(&s.ident.resource, &s.ident.scope)
                })
            {
                continue;
            }
            col.add(s.ident.clone(), s.meta.clone(), s.points.filter_clone(time));
        }
    }
}

/// What `add_points` needs to know about the metric being appended.
struct AppendCtx<'a> {
    desc: MetricDesc<'a>,
    resource: &'a Arc<ResourceEntry>,
    scope: &'a Arc<ScopeEntry>,
    prefix: StableHasher,
    metric: &'a Metric,
}

// ---------------------------------------------------------------------------------------------
// Block format: protobuf messages
// ---------------------------------------------------------------------------------------------

/// The index at the start of a block file.
#[derive(Clone, PartialEq, Message)]
struct BlockIndexPb {
    /// Sequence number of the first WAL record in the block.
    #[prost(uint64, tag = "1")]
    first_seq: u64,
    /// Sequence number of the last WAL record in the block.
    #[prost(uint64, tag = "2")]
    committed_seq: u64,
    #[prost(uint64, tag = "3")]
    min_time: u64,
    #[prost(uint64, tag = "4")]
    max_time: u64,
    #[prost(uint64, tag = "5")]
    point_count: u64,
    #[prost(uint64, tag = "6")]
    series_count: u64,
    /// Bytes of section data after the index.
    #[prost(uint64, tag = "7")]
    data_len: u64,
    #[prost(message, repeated, tag = "8")]
    sections: Vec<SectionRefPb>,
}

/// Where a metric name's section is, relative to the start of the data area.
#[derive(Clone, PartialEq, Message)]
struct SectionRefPb {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(uint64, tag = "2")]
    offset: u64,
    #[prost(uint64, tag = "3")]
    len: u64,
    /// Uncompressed length.
    #[prost(uint64, tag = "4")]
    raw_len: u64,
    /// CRC32 of the compressed bytes.
    #[prost(fixed32, tag = "5")]
    crc32: u32,
    #[prost(uint64, tag = "6")]
    min_time: u64,
    #[prost(uint64, tag = "7")]
    max_time: u64,
    #[prost(uint64, tag = "8")]
    point_count: u64,
    #[prost(uint64, tag = "9")]
    series_count: u64,
}

/// The series of one metric name.
#[derive(Clone, PartialEq, Message)]
struct SectionPb {
    #[prost(message, repeated, tag = "1")]
    resources: Vec<ResourceEntryPb>,
    #[prost(message, repeated, tag = "2")]
    scopes: Vec<ScopeEntryPb>,
    #[prost(message, repeated, tag = "3")]
    series: Vec<SeriesPb>,
}

/// One series in a section.
#[derive(Clone, PartialEq, Message)]
struct SeriesPb {
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(int32, tag = "2")]
    temporality: i32,
    #[prost(bool, tag = "3")]
    monotonic: bool,
    #[prost(string, tag = "4")]
    unit: String,
    #[prost(string, tag = "5")]
    description: String,
    #[prost(message, repeated, tag = "6")]
    metadata: Vec<KeyValue>,
    #[prost(uint32, tag = "7")]
    resource_idx: u32,
    #[prost(uint32, tag = "8")]
    scope_idx: u32,
    #[prost(message, repeated, tag = "9")]
    attributes: Vec<KeyValue>,
    #[prost(uint64, tag = "10")]
    point_count: u64,
    #[prost(uint64, tag = "11")]
    min_time: u64,
    #[prost(uint64, tag = "12")]
    max_time: u64,
    /// `time_unix_nano`, delta-of-delta, zigzag varints.
    #[prost(bytes = "vec", tag = "13")]
    times: Vec<u8>,
    /// `start_time_unix_nano` codes (see `ColumnEncoder::push`).
    #[prost(bytes = "vec", tag = "14")]
    starts: Vec<u8>,
    /// Numeric values of gauge and sum points (see `ColumnEncoder::push_value`).
    #[prost(bytes = "vec", tag = "15")]
    values: Vec<u8>,
    /// Each point without time, start time and value (and without attributes when equal to
    /// the series'), as length-prefixed protobuf.
    #[prost(bytes = "vec", tag = "16")]
    residuals: Vec<u8>,
}

// ---------------------------------------------------------------------------------------------
// Column coding
// ---------------------------------------------------------------------------------------------

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_uvarint(buf: &mut Vec<u8>, v: u64) {
    prost::encoding::encode_varint(v, buf);
}

/// The value of an integral double that converts to `i64` and back exactly (not `-0.0`).
fn exact_int(d: f64) -> Option<i64> {
    const LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    if d.fract() == 0.0 && d.abs() <= LIMIT && !(d == 0.0 && d.is_sign_negative()) { Some(d as i64) } else { None }
}

/// Start-time codes.
const START_SAME: u64 = 0;
const START_PREV_TIME: u64 = 1;
const START_TIME: u64 = 2;
const START_DELTA: u64 = 3;

/// Value codes.
const VALUE_NONE: u64 = 0;
const VALUE_INT: u64 = 1;
const VALUE_XOR: u64 = 2;
const VALUE_INT_DOUBLE: u64 = 3;
const VALUE_SAME_DOUBLE: u64 = 4;

#[derive(Default)]
struct ColumnEncoder {
    prev_time: u64,
    prev_delta: i64,
    prev_start: u64,
    prev_bits: u64,
    prev_int: i64,
    times: Vec<u8>,
    starts: Vec<u8>,
    values: Vec<u8>,
    residuals: Vec<u8>,
}

impl ColumnEncoder {
    fn push<P: DataPoint>(&mut self, p: &P) {
        let t = p.time();
        let delta = t.wrapping_sub(self.prev_time) as i64;
        put_uvarint(&mut self.times, zigzag(delta.wrapping_sub(self.prev_delta)));
        let s = p.start();
        if s == self.prev_start {
            put_uvarint(&mut self.starts, START_SAME);
        } else if s == self.prev_time {
            put_uvarint(&mut self.starts, START_PREV_TIME);
        } else if s == t {
            put_uvarint(&mut self.starts, START_TIME);
        } else {
            put_uvarint(&mut self.starts, START_DELTA);
            put_uvarint(&mut self.starts, zigzag(s.wrapping_sub(self.prev_start) as i64));
        }
        self.prev_delta = delta;
        self.prev_time = t;
        self.prev_start = s;

        let mut r = p.clone();
        r.set_time(0);
        r.set_start(0);
        if P::HAS_VALUE {
            let v = r.take_value();
            self.push_value(v);
        }
        put_uvarint(&mut self.residuals, r.encoded_len() as u64);
        r.encode_raw(&mut self.residuals);
    }

    fn push_value(&mut self, v: Option<number_data_point::Value>) {
        use number_data_point::Value;
        match v {
            None => put_uvarint(&mut self.values, VALUE_NONE),
            Some(Value::AsInt(i)) => {
                put_uvarint(&mut self.values, VALUE_INT);
                put_uvarint(&mut self.values, zigzag(i.wrapping_sub(self.prev_int)));
                self.prev_int = i;
            }
            Some(Value::AsDouble(d)) => {
                let bits = d.to_bits();
                let prev = f64::from_bits(self.prev_bits);
                if bits == self.prev_bits {
                    put_uvarint(&mut self.values, VALUE_SAME_DOUBLE);
                } else if let (Some(a), Some(b)) = (exact_int(d), exact_int(prev)) {
                    put_uvarint(&mut self.values, VALUE_INT_DOUBLE);
                    put_uvarint(&mut self.values, zigzag(a - b));
                } else {
                    let x = bits ^ self.prev_bits;
                    let tz = x.trailing_zeros();
                    put_uvarint(&mut self.values, VALUE_XOR);
                    put_uvarint(&mut self.values, u64::from(tz));
                    put_uvarint(&mut self.values, x >> tz);
                }
                self.prev_bits = bits;
            }
        }
    }
}

/// Reads varints and byte runs from a column, never past its end.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn uvarint(&mut self) -> Result<u64, &'static str> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = *self.buf.get(self.pos).ok_or("truncated column")?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err("varint overflow");
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], &'static str> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.buf.len())
            .ok_or("truncated column")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

struct ColumnDecoder<'a> {
    times: Cursor<'a>,
    starts: Cursor<'a>,
    values: Cursor<'a>,
    residuals: Cursor<'a>,
    prev_time: u64,
    prev_delta: i64,
    prev_start: u64,
    prev_bits: u64,
    prev_int: i64,
}

impl<'a> ColumnDecoder<'a> {
    fn new(rec: &'a SeriesPb) -> Self {
        ColumnDecoder {
            times: Cursor::new(&rec.times),
            starts: Cursor::new(&rec.starts),
            values: Cursor::new(&rec.values),
            residuals: Cursor::new(&rec.residuals),
            prev_time: 0,
            prev_delta: 0,
            prev_start: 0,
            prev_bits: 0,
            prev_int: 0,
        }
    }

    fn next_time_start(&mut self) -> Result<(u64, u64), &'static str> {
        let dod = unzigzag(self.times.uvarint()?);
        let delta = self.prev_delta.wrapping_add(dod);
        let t = self.prev_time.wrapping_add(delta as u64);
        let start = match self.starts.uvarint()? {
            START_SAME => self.prev_start,
            START_PREV_TIME => self.prev_time,
            START_TIME => t,
            START_DELTA => self.prev_start.wrapping_add(unzigzag(self.starts.uvarint()?) as u64),
            _ => return Err("bad start time code"),
        };
        self.prev_delta = delta;
        self.prev_time = t;
        self.prev_start = start;
        Ok((t, start))
    }

    fn next_value(&mut self) -> Result<Option<number_data_point::Value>, &'static str> {
        use number_data_point::Value;
        Ok(match self.values.uvarint()? {
            VALUE_NONE => None,
            VALUE_INT => {
                let i = self.prev_int.wrapping_add(unzigzag(self.values.uvarint()?));
                self.prev_int = i;
                Some(Value::AsInt(i))
            }
            code @ (VALUE_XOR | VALUE_INT_DOUBLE | VALUE_SAME_DOUBLE) => {
                let bits = match code {
                    VALUE_SAME_DOUBLE => self.prev_bits,
                    VALUE_INT_DOUBLE => {
                        let prev = exact_int(f64::from_bits(self.prev_bits)).ok_or("bad value delta base")?;
                        let v = prev.wrapping_add(unzigzag(self.values.uvarint()?));
                        let d = v as f64;
                        if exact_int(d) != Some(v) {
                            return Err("bad integral value");
                        }
                        d.to_bits()
                    }
                    _ => {
                        let tz = self.values.uvarint()?;
                        let x = self.values.uvarint()?;
                        if tz >= 64 {
                            return Err("bad value shift");
                        }
                        (x << tz) ^ self.prev_bits
                    }
                };
                self.prev_bits = bits;
                Some(Value::AsDouble(f64::from_bits(bits)))
            }
            _ => return Err("bad value code"),
        })
    }

    fn next_residual(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.residuals.uvarint()?;
        self.residuals.take(n)
    }

    fn all_consumed(&self) -> bool {
        self.times.at_end() && self.starts.at_end() && self.values.at_end() && self.residuals.at_end()
    }
}

fn encode_points<P: DataPoint>(points: &[P], rec: &mut SeriesPb) {
    let mut order: Vec<&P> = points.iter().collect();
    order.sort_by_key(|p| p.time());
    let mut enc = ColumnEncoder::default();
    for p in order {
        enc.push(p);
    }
    rec.point_count = points.len() as u64;
    rec.times = enc.times;
    rec.starts = enc.starts;
    rec.values = enc.values;
    rec.residuals = enc.residuals;
}

/// Decodes a series' points whose time lies in `time`.
fn decode_points<P: DataPoint>(rec: &SeriesPb, time: TimeRange) -> Result<Vec<P>, &'static str> {
    let mut dec = ColumnDecoder::new(rec);
    // Sized up front when the whole series is wanted (the common case), not grown point by point;
    // every point takes at least a byte of the time column, which bounds a damaged count.
    let all_in_range = time.contains(rec.min_time) && time.contains(rec.max_time);
    let expected = usize::try_from(rec.point_count).unwrap_or(0).min(rec.times.len());
    let mut out = Vec::with_capacity(if all_in_range { expected } else { 0 });
    for _ in 0..rec.point_count {
        let (t, start) = dec.next_time_start()?;
        let value = if P::HAS_VALUE { dec.next_value()? } else { None };
        let residual = dec.next_residual()?;
        if time.contains(t) {
            let mut p = P::decode(residual).map_err(|_| "bad point encoding")?;
            p.set_time(t);
            p.set_start(start);
            if P::HAS_VALUE {
                p.set_value(value);
            }
            out.push(p);
        }
    }
    if !dec.all_consumed() {
        return Err("trailing bytes in point columns");
    }
    Ok(out)
}

/// Builds the section of the given series (all of one metric name).
fn build_section(series: &[&HeadSeries]) -> (SectionPb, u64, u64, u64) {
    let mut pb = SectionPb::default();
    let mut res_idx: HashMap<&[u8], u32> = HashMap::new();
    let mut scope_idx: HashMap<&[u8], u32> = HashMap::new();
    let (mut min, mut max, mut count) = (u64::MAX, 0u64, 0u64);
    for s in series {
        let ri = *res_idx.entry(&s.ident.resource.canon).or_insert_with(|| {
            pb.resources.push(ResourceEntryPb {
                resource: s.ident.resource.resource.clone(),
                schema_url: s.ident.resource.schema_url.clone(),
            });
            (pb.resources.len() - 1) as u32
        });
        let si = *scope_idx.entry(&s.ident.scope.canon).or_insert_with(|| {
            pb.scopes.push(ScopeEntryPb {
                scope: s.ident.scope.scope.clone(),
                schema_url: s.ident.scope.schema_url.clone(),
            });
            (pb.scopes.len() - 1) as u32
        });
        let mut rec = SeriesPb {
            kind: s.ident.kind as u32,
            temporality: s.ident.temporality,
            monotonic: s.ident.monotonic,
            unit: s.ident.unit.clone(),
            description: s.meta.description.clone(),
            metadata: s.meta.metadata.clone(),
            resource_idx: ri,
            scope_idx: si,
            attributes: s.ident.attributes.clone(),
            min_time: s.min_time,
            max_time: s.max_time,
            ..SeriesPb::default()
        };
        match &s.points {
            Points::Number(v) => encode_points(v, &mut rec),
            Points::Histogram(v) => encode_points(v, &mut rec),
            Points::ExponentialHistogram(v) => encode_points(v, &mut rec),
            Points::Summary(v) => encode_points(v, &mut rec),
        }
        min = min.min(s.min_time);
        max = max.max(s.max_time);
        count += rec.point_count;
        pb.series.push(rec);
    }
    (pb, min, max, count)
}

/// Decodes the series of a section that match, adding their points in `time` to `col`.
fn collect_section(
    name: &str,
    section: SectionPb,
    sel: &Selection,
    time: TimeRange,
    col: &mut Collector,
) -> Result<(), &'static str> {
    let resources: Vec<Arc<ResourceEntry>> =
        section.resources.into_iter().map(|r| Arc::new(ResourceEntry::new(r.resource, r.schema_url))).collect();
    let scopes: Vec<Arc<ScopeEntry>> =
        section.scopes.into_iter().map(|s| Arc::new(ScopeEntry::new(s.scope, s.schema_url))).collect();
    let mut labelers = LabelerCache::default();
    for rec in section.series {
        if rec.point_count == 0 || !time.overlaps(rec.min_time, rec.max_time) {
            continue;
        }
        let resource = resources.get(rec.resource_idx as usize).ok_or("bad resource index")?;
        let scope = scopes.get(rec.scope_idx as usize).ok_or("bad scope index")?;
        if !sel.keeps(name, &rec.attributes, resource, || labelers.get(resource, scope)) {
            continue;
        }
        let kind = Kind::from_u32(rec.kind).ok_or("bad metric kind")?;
        let points = match kind {
            Kind::Gauge | Kind::Sum => Points::Number(decode_points(&rec, time)?),
            Kind::Histogram => Points::Histogram(decode_points(&rec, time)?),
            Kind::ExponentialHistogram => Points::ExponentialHistogram(decode_points(&rec, time)?),
            Kind::Summary => Points::Summary(decode_points(&rec, time)?),
        };
        if points.is_empty() {
            continue;
        }
        let desc = MetricDesc { name, kind, temporality: rec.temporality, monotonic: rec.monotonic, unit: &rec.unit };
        let ident = SeriesIdent::build(desc, resource.clone(), scope.clone(), rec.attributes);
        col.add(Arc::new(ident), SeriesMeta { description: rec.description, metadata: rec.metadata }, points);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Block files
// ---------------------------------------------------------------------------------------------

/// An immutable block file, its index parsed.
#[derive(Debug)]
pub(crate) struct Block {
    path: PathBuf,
    file_len: u64,
    /// Offset of the data area in the file.
    data_start: u64,
    index: BlockIndexPb,
    /// Set by retention before the file is deleted, so a concurrent query skips it.
    removed: AtomicBool,
    /// A damaged section was reported already.
    damage_reported: AtomicBool,
    /// The file, kept open by blocks opened read-only (a segment set holds few), so that
    /// reads go on when the file is deleted meanwhile. The store's own blocks open their file
    /// per query instead: it holds thousands.
    kept: Option<File>,
}

/// Reads exactly `buf.len()` bytes at `offset`, without moving a shared file position.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(not(unix))]
    {
        let mut f = file.try_clone()?;
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(buf)
    }
}

fn corrupt_eof(path: &Path, what: &str, e: io::Error) -> StoreError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        StoreError::corrupt(path, format!("truncated {what}"))
    } else {
        StoreError::Io(e)
    }
}

/// A block as the store lists it for shipping: the metrics "segment".
pub(crate) struct BlockInfo {
    /// The block's first WAL seq: unique within the store, also across restarts.
    pub id: u64,
    pub path: PathBuf,
    pub min_time: u64,
    pub max_time: u64,
    pub points: u64,
    pub bytes: u64,
}

impl Block {
    /// Bytes of the block file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    fn info(&self) -> BlockInfo {
        BlockInfo {
            id: self.index.first_seq,
            path: self.path.clone(),
            min_time: self.index.min_time,
            max_time: self.index.max_time,
            points: self.index.point_count,
            bytes: self.file_len,
        }
    }

    /// Opens a block file read-only, checking its header, format version and index (a block
    /// of a newer obsbox is [`StoreError::Incompatible`], a damaged one
    /// [`StoreError::Corrupt`]). `points` must be the number of points it holds.
    pub fn open_read_only(path: &Path, points: u64) -> Result<Block, StoreError> {
        let mut block = Block::load(path.to_path_buf())?;
        block.kept = Some(File::open(path)?);
        if block.index.point_count != points {
            return Err(StoreError::corrupt(
                path,
                format!("block holds {} points, its entry says {points}", block.index.point_count),
            ));
        }
        Ok(block)
    }

    /// Reads every section and checks its checksum and encoding: a damaged one is
    /// [`StoreError::Corrupt`].
    pub fn verify(&self) -> Result<(), StoreError> {
        let opened;
        let file = match &self.kept {
            Some(f) => f,
            None => {
                opened = File::open(&self.path)?;
                &opened
            }
        };
        for s in &self.index.sections {
            self.read_section(file, s)?;
        }
        Ok(())
    }

    /// Reads and checks a block's header and index (not its sections).
    fn load(path: PathBuf) -> Result<Block, StoreError> {
        let mut f = File::open(&path)?;
        let file_len = f.metadata()?.len();
        let mut head = [0u8; format::HEADER_LEN];
        if f.read_exact(&mut head).is_ok()
            && let Some(v) = format::newer_version(&head, &BLOCK_MAGIC, BLOCK_VERSION)
        {
            // Refused (not set aside): a newer obsbox wrote it.
            return Err(format::newer_error(&path, v, BLOCK_VERSION));
        }
        f.seek(SeekFrom::Start(0))?;
        format::read_header(&mut f, &path, &BLOCK_MAGIC, BLOCK_VERSION)?;
        let mut lens = [0u8; 8];
        f.read_exact(&mut lens).map_err(|e| corrupt_eof(&path, "index length", e))?;
        let [a, b, c, d, e, g, h, i] = lens;
        let index_len = u64::from(u32::from_le_bytes([a, b, c, d]));
        let index_crc = u32::from_le_bytes([e, g, h, i]);
        let available = file_len.saturating_sub(BLOCK_PREFIX_LEN);
        if index_len > available || index_len > MAX_INDEX_LEN {
            return Err(StoreError::corrupt(&path, "index length exceeds the file"));
        }
        let mut idx = vec![0u8; index_len as usize];
        f.read_exact(&mut idx).map_err(|e| corrupt_eof(&path, "index", e))?;
        if crc32fast::hash(&idx) != index_crc {
            return Err(StoreError::corrupt(&path, "index checksum mismatch"));
        }
        let index =
            BlockIndexPb::decode(idx.as_slice()).map_err(|e| StoreError::corrupt(&path, format!("bad index: {e}")))?;
        let data_len = available - index_len;
        if index.data_len != data_len {
            return Err(StoreError::corrupt(
                &path,
                format!("data is {data_len} bytes, index says {} (truncated?)", index.data_len),
            ));
        }
        for s in &index.sections {
            if s.offset.checked_add(s.len).is_none_or(|end| end > data_len) || s.raw_len > MAX_SECTION_RAW {
                return Err(StoreError::corrupt(&path, format!("section {:?} out of bounds", s.name)));
            }
        }
        Ok(Block {
            path,
            file_len,
            data_start: BLOCK_PREFIX_LEN + index_len,
            index,
            removed: AtomicBool::new(false),
            damage_reported: AtomicBool::new(false),
            kept: None,
        })
    }

    fn report_damage(&self, quarantine: &Quarantine, s: &SectionRefPb, reason: &str) {
        if !self.damage_reported.swap(true, Ordering::AcqRel) {
            quarantine.note(&self.path, reason, &format!("the points of metric {:?} in this block", s.name));
        }
    }

    /// Reads, checks and decompresses one section.
    fn read_section(&self, file: &File, s: &SectionRefPb) -> Result<SectionPb, StoreError> {
        let path = &self.path;
        let len = usize::try_from(s.len).map_err(|_| StoreError::corrupt(path, "section too large"))?;
        let mut buf = vec![0u8; len];
        read_exact_at(file, &mut buf, self.data_start + s.offset).map_err(|e| corrupt_eof(path, "section", e))?;
        if crc32fast::hash(&buf) != s.crc32 {
            return Err(StoreError::corrupt(path, format!("section {:?} checksum mismatch", s.name)));
        }
        let raw_len = usize::try_from(s.raw_len).map_err(|_| StoreError::corrupt(path, "section too large"))?;
        let raw = zstd::bulk::decompress(&buf, raw_len)
            .map_err(|e| StoreError::corrupt(path, format!("section {:?}: bad compression: {e}", s.name)))?;
        if raw.len() != raw_len {
            return Err(StoreError::corrupt(path, format!("section {:?}: wrong uncompressed length", s.name)));
        }
        SectionPb::decode(raw.as_slice())
            .map_err(|e| StoreError::corrupt(path, format!("section {:?}: bad encoding: {e}", s.name)))
    }

    /// Adds the block's matching points to `col`, reading only sections that can match.
    /// A damaged section is skipped (reported once per block through `quarantine`); the
    /// query answers with the rest.
    fn collect(
        &self,
        sel: &Selection,
        time: TimeRange,
        col: &mut Collector,
        quarantine: &Quarantine,
    ) -> Result<(), StoreError> {
        if !time.overlaps(self.index.min_time, self.index.max_time) {
            return Ok(());
        }
        let mut file: Option<File> = None;
        for s in &self.index.sections {
            if !time.overlaps(s.min_time, s.max_time) || !sel.matchers.name_may_match(&s.name) {
                continue;
            }
            let f = match (&self.kept, &mut file) {
                (Some(kept), _) => kept,
                (None, Some(f)) => f,
                (None, file) => match File::open(&self.path) {
                    Ok(f) => file.insert(f),
                    // Deleted by retention after the query took its snapshot.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && self.removed.load(Ordering::Acquire) => {
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                },
            };
            let section = match self.read_section(f, s) {
                Ok(section) => section,
                Err(e @ StoreError::Corrupt { .. }) => {
                    self.report_damage(quarantine, s, &e.to_string());
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Points are collected into a scratch collector first, so that a section failing
            // half-way adds nothing.
            let mut part = Collector::default();
            match collect_section(&s.name, section, sel, time, &mut part) {
                Ok(()) => col.merge(part),
                Err(reason) => self.report_damage(quarantine, s, &format!("section {:?}: {reason}", s.name)),
            }
        }
        Ok(())
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(".tmp");
    PathBuf::from(s)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `parts` to `path` atomically: temp file, fsync, rename, fsync of the directory.
fn write_atomically(dir: &Path, path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        for p in parts {
            w.write_all(p)?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `head` as a block file in `dir`, named after its seqs.
fn write_block(dir: &Path, head: &MetricsHead, first_seq: u64, committed_seq: u64) -> Result<Block, StoreError> {
    let base = format!("block-{first_seq:020}-{committed_seq:020}");
    let mut path = dir.join(format!("{base}.obm"));
    let mut n = 1;
    while path.exists() {
        path = dir.join(format!("{base}-{n}.obm"));
        n += 1;
    }
    write_block_at(dir, path, head, first_seq, committed_seq)
}

/// Writes `head` as the block file `path` in `dir` (atomically: a crash leaves no partial file).
fn write_block_at(
    dir: &Path,
    path: PathBuf,
    head: &MetricsHead,
    first_seq: u64,
    committed_seq: u64,
) -> Result<Block, StoreError> {
    let mut by_name: BTreeMap<&str, Vec<&HeadSeries>> = BTreeMap::new();
    for s in head.series.iter().filter(|s| !s.points.is_empty()) {
        by_name.entry(&s.ident.name).or_default().push(s);
    }
    let mut data = Vec::new();
    let mut index = BlockIndexPb { first_seq, committed_seq, min_time: u64::MAX, ..BlockIndexPb::default() };
    for (name, mut series) in by_name {
        series.sort_by(|a, b| (a.ident.key, &a.ident.attrs_canon).cmp(&(b.ident.key, &b.ident.attrs_canon)));
        let (pb, min, max, count) = build_section(&series);
        let raw = pb.encode_to_vec();
        let compressed = zstd::bulk::compress(&raw, ZSTD_LEVEL)?;
        index.sections.push(SectionRefPb {
            name: name.to_owned(),
            offset: data.len() as u64,
            len: compressed.len() as u64,
            raw_len: raw.len() as u64,
            crc32: crc32fast::hash(&compressed),
            min_time: min,
            max_time: max,
            point_count: count,
            series_count: series.len() as u64,
        });
        index.min_time = index.min_time.min(min);
        index.max_time = index.max_time.max(max);
        index.point_count += count;
        index.series_count += series.len() as u64;
        data.extend_from_slice(&compressed);
    }
    index.data_len = data.len() as u64;
    let idx = index.encode_to_vec();
    let index_len =
        u32::try_from(idx.len()).map_err(|_| StoreError::Unavailable("metrics block index too large".into()))?;
    let mut prefix = Vec::with_capacity(BLOCK_PREFIX_LEN as usize);
    format::write_header(&mut prefix, &BLOCK_MAGIC, BLOCK_VERSION)?;
    prefix.extend_from_slice(&index_len.to_le_bytes());
    prefix.extend_from_slice(&crc32fast::hash(&idx).to_le_bytes());

    write_atomically(dir, &path, &[&prefix, &idx, &data])?;
    let file_len = (prefix.len() + idx.len() + data.len()) as u64;
    Ok(Block {
        path,
        file_len,
        data_start: BLOCK_PREFIX_LEN + u64::from(index_len),
        index,
        removed: AtomicBool::new(false),
        damage_reported: AtomicBool::new(false),
        kept: None,
    })
}

/// Reads the committed-sequence marker.
fn read_committed(path: &Path) -> Result<u64, StoreError> {
    let bytes = fs::read(path)?;
    format::check_header(&bytes, path, &COMMITTED_MAGIC, COMMITTED_VERSION)?;
    let rest = bytes.get(format::HEADER_LEN..).unwrap_or_default();
    let [a, b, c, d, e, f, g, h, c0, c1, c2, c3] = rest else {
        return Err(StoreError::corrupt(path, "wrong length"));
    };
    let seq = [*a, *b, *c, *d, *e, *f, *g, *h];
    if crc32fast::hash(&seq) != u32::from_le_bytes([*c0, *c1, *c2, *c3]) {
        return Err(StoreError::corrupt(path, "checksum mismatch"));
    }
    Ok(u64::from_le_bytes(seq))
}

fn write_committed(dir: &Path, seq: u64) -> Result<(), StoreError> {
    let mut buf = Vec::with_capacity(format::HEADER_LEN + 12);
    format::write_header(&mut buf, &COMMITTED_MAGIC, COMMITTED_VERSION)?;
    let s = seq.to_le_bytes();
    buf.extend_from_slice(&s);
    buf.extend_from_slice(&crc32fast::hash(&s).to_le_bytes());
    write_atomically(dir, &dir.join(COMMITTED_FILE), &[&buf])?;
    Ok(())
}

/// Moves a file that cannot be read to `quarantine/`, so start-up goes on without it.
fn set_aside(quarantine: &Quarantine, path: &Path, err: &StoreError, lost: &str) {
    if let Err(e) = quarantine.move_aside(path, &err.to_string(), lost) {
        tracing::error!(path = %path.display(), error = %err, move_error = %e, "ignoring unreadable metrics file, could not move it aside");
    }
}

// ---------------------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------------------

struct StoreState {
    head: MetricsHead,
    /// Sequence number of the first record appended to the head since the last flush.
    head_first_seq: Option<u64>,
    /// Highest sequence number appended (or committed, after open).
    head_last_seq: u64,
    /// A head being written as a block; still visible to queries.
    frozen: Option<Arc<MetricsHead>>,
    /// Blocks, oldest (lowest first sequence number) first.
    blocks: Vec<Arc<Block>>,
    committed_seq: u64,
}

/// Durable part: immutable compressed block files in a directory, plus a head in memory.
///
/// Thread-safe; methods take `&self`. Appends and queries share a read-write lock on the head
/// only briefly: a query copies the head's matching points under a read lock, then reads blocks
/// without holding any lock; a flush writes its block without holding the lock (the head being
/// written stays visible to queries until the block is). Flushes and retention are serialised
/// with each other.
pub(crate) struct MetricsStore {
    dir: PathBuf,
    state: RwLock<StoreState>,
    maintenance: Mutex<()>,
    quarantine: Quarantine,
}

impl MetricsStore {
    /// Opens (creating if needed) the directory; loads the list of block files (reads only
    /// headers/indexes, not all data).
    ///
    /// Leftover temporary files of an interrupted flush are deleted. A corrupt or truncated
    /// block is reported and moved to `quarantine/` (counted in `quarantine`); it does not
    /// fail the open. A block section found damaged by a query later is skipped (and reported
    /// once), the block's other sections stay readable. I/O errors (other than a short read) do.
    pub fn open(dir: &Path, quarantine: &Quarantine) -> Result<Self, StoreError> {
        fs::create_dir_all(dir)?;
        let mut blocks = Vec::new();
        let mut committed = 0u64;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".obm.tmp") {
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove temporary metrics file");
                }
            } else if name == COMMITTED_FILE {
                match read_committed(&path) {
                    Ok(seq) => committed = committed.max(seq),
                    Err(e @ StoreError::Corrupt { .. }) => {
                        set_aside(quarantine, &path, &e, "nothing: the blocks name their committed seq too")
                    }
                    Err(e) => return Err(e),
                }
            } else if name.starts_with("block-") && name.ends_with(".obm") {
                match Block::load(path.clone()) {
                    Ok(b) => blocks.push(Arc::new(b)),
                    Err(e @ StoreError::Corrupt { .. }) => set_aside(
                        quarantine,
                        &path,
                        &e,
                        "the block's metric points (the write-ahead log no longer holds them)",
                    ),
                    Err(e) => return Err(e),
                }
            }
        }
        blocks.sort_by(|a, b| (a.index.first_seq, &a.path).cmp(&(b.index.first_seq, &b.path)));
        let committed = blocks.iter().map(|b| b.index.committed_seq).fold(committed, u64::max);
        Ok(MetricsStore {
            dir: dir.to_owned(),
            state: RwLock::new(StoreState {
                head: MetricsHead::new(),
                head_first_seq: None,
                head_last_seq: committed,
                frozen: None,
                blocks,
                committed_seq: committed,
            }),
            maintenance: Mutex::new(()),
            quarantine: quarantine.clone(),
        })
    }

    /// Highest WAL sequence number whose points are durable in block files (0 = none). Used by
    /// the caller to decide which WAL records to replay into the head after a restart: every
    /// record with a higher sequence number. Never decreases, also across retention and
    /// restarts.
    pub fn committed_seq(&self) -> u64 {
        self.state.read().committed_seq
    }

    /// Adds the points of one WAL record (sequence `seq`, strictly increasing across calls) to
    /// the head. Visible to queries on return. Never fails.
    pub fn append(&self, seq: u64, req: &ExportMetricsServiceRequest) {
        let mut st = self.state.write();
        st.head.append(req);
        st.head_first_seq.get_or_insert(seq);
        st.head_last_seq = st.head_last_seq.max(seq);
    }

    /// Writes the head as one immutable block file (write to temp name, fsync file, rename,
    /// fsync dir), records `seq` of the last appended record as the block's committed seq, and
    /// clears the head. No-op when the head is empty (except that records without points count
    /// as committed).
    ///
    /// Appends and queries go on while the block is written. On error nothing is lost: the
    /// head's points go back into the head, and the call can be retried.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _maintenance = self.maintenance.lock();
        let (frozen, first_seq, last_seq) = {
            let mut st = self.state.write();
            if st.head.is_empty() {
                st.committed_seq = st.committed_seq.max(st.head_last_seq);
                st.head_first_seq = None;
                return Ok(());
            }
            let frozen = Arc::new(std::mem::take(&mut st.head));
            st.frozen = Some(frozen.clone());
            let first = st.head_first_seq.take().unwrap_or(st.head_last_seq);
            (frozen, first, st.head_last_seq)
        };
        match write_block(&self.dir, &frozen, first_seq, last_seq) {
            Ok(block) => {
                let mut st = self.state.write();
                st.blocks.push(Arc::new(block));
                st.blocks.sort_by(|a, b| (a.index.first_seq, &a.path).cmp(&(b.index.first_seq, &b.path)));
                st.frozen = None;
                st.committed_seq = st.committed_seq.max(last_seq);
                Ok(())
            }
            Err(e) => {
                let mut st = self.state.write();
                st.frozen = None;
                let newer = std::mem::take(&mut st.head);
                let mut restored = Arc::try_unwrap(frozen).unwrap_or_else(|shared| (*shared).clone());
                restored.absorb(newer);
                st.head = restored;
                st.head_first_seq = Some(first_seq);
                Err(e)
            }
        }
    }

    /// Approximate heap bytes of the head (including a head being flushed).
    pub fn head_bytes(&self) -> usize {
        let st = self.state.read();
        st.head.approx_bytes() + st.frozen.as_ref().map_or(0, |f| f.approx_bytes())
    }

    /// Head + blocks overlapping q.time: every series matching `q.matchers`, one `Metric` per
    /// series with its points in `q.time`, oldest first, grouped by resource and scope. A bad
    /// regular expression is [`StoreError::InvalidQuery`], a damaged section
    /// [`StoreError::Corrupt`].
    pub fn query(&self, q: &MetricQuery) -> Result<MetricsData, StoreError> {
        let sel = Selection::compile(&q.matchers, &[])?;
        Ok(self.collect(&sel, q.time)?.into_metrics_data())
    }

    /// The Prometheus view of the series matching `q` whose view labels match `labels` (see
    /// `Reader::find_metrics_view`): series failing `labels` are skipped before their points
    /// are decoded, and points are not given their series' attributes.
    pub fn query_view(
        &self,
        q: &MetricQuery,
        labels: &[LabelMatcher],
        opts: &ViewOptions,
    ) -> Result<PromView, StoreError> {
        let sel = Selection::compile(&q.matchers, labels)?;
        Ok(self.collect(&sel, q.time)?.into_view(opts))
    }

    /// Head + blocks: the selected series' points in `time`.
    fn collect(&self, sel: &Selection, time: TimeRange) -> Result<Collector, StoreError> {
        let mut head_col = Collector::default();
        let (blocks, frozen) = {
            let st = self.state.read();
            st.head.collect(sel, time, &mut head_col);
            (st.blocks.clone(), st.frozen.clone())
        };
        let mut col = Collector::default();
        for b in &blocks {
            b.collect(sel, time, &mut col, &self.quarantine)?;
        }
        if let Some(f) = frozen {
            f.collect(sel, time, &mut col);
        }
        col.merge(head_col);
        Ok(col)
    }

    /// Deletes whole blocks whose newest point is older than `min_time_ns`, then, while the
    /// total block bytes exceed `max_bytes` (0 = unlimited), the oldest blocks. Returns bytes
    /// freed.
    ///
    /// Before deleting, the committed sequence number is saved in a marker file so that it
    /// survives the deletion of the blocks holding it. A block whose file cannot be deleted
    /// stays listed and the error is returned.
    pub fn apply_retention(&self, min_time_ns: u64, max_bytes: u64) -> Result<u64, StoreError> {
        let _maintenance = self.maintenance.lock();
        let (remove, committed) = {
            let st = self.state.read();
            let (mut remove, keep): (Vec<_>, Vec<_>) =
                st.blocks.iter().cloned().partition(|b| b.index.max_time < min_time_ns);
            if max_bytes > 0 {
                let mut total: u64 = keep.iter().map(|b| b.file_len).sum();
                for b in keep {
                    if total <= max_bytes {
                        break;
                    }
                    total -= b.file_len;
                    remove.push(b);
                }
            }
            (remove, st.committed_seq)
        };
        if remove.is_empty() {
            return Ok(0);
        }
        write_committed(&self.dir, committed)?;
        self.state.write().blocks.retain(|b| !remove.iter().any(|r| Arc::ptr_eq(r, b)));
        let mut freed = 0;
        let mut failed = Vec::new();
        let mut first_err = None;
        for b in remove {
            b.removed.store(true, Ordering::Release);
            match fs::remove_file(&b.path) {
                Ok(()) => freed += b.file_len,
                Err(e) if e.kind() == io::ErrorKind::NotFound => freed += b.file_len,
                Err(e) => {
                    b.removed.store(false, Ordering::Release);
                    failed.push(b);
                    first_err.get_or_insert(e);
                }
            }
        }
        sync_dir(&self.dir)?;
        if let Some(e) = first_err {
            let mut st = self.state.write();
            st.blocks.extend(failed);
            st.blocks.sort_by(|a, b| (a.index.first_seq, &a.path).cmp(&(b.index.first_seq, &b.path)));
            return Err(e.into());
        }
        Ok(freed)
    }

    /// The block files, oldest first (blocks are immutable once listed: the metrics
    /// "segments" an ingester ships).
    pub fn blocks(&self) -> Vec<BlockInfo> {
        self.state.read().blocks.iter().map(|b| b.info()).collect()
    }

    /// Stops serving the block `id` ([`BlockInfo::id`]) and deletes its file. Returns bytes
    /// freed; an unknown id is [`StoreError::InvalidQuery`]. The committed seq is saved first
    /// (as retention does), so a restart does not replay WAL records the block held; a crash
    /// before the file is gone leaves the block served after the restart, which is safe.
    pub fn release_block(&self, id: u64) -> Result<u64, StoreError> {
        let _maintenance = self.maintenance.lock();
        let (block, committed) = {
            let st = self.state.read();
            let block = st.blocks.iter().find(|b| b.index.first_seq == id).cloned();
            (block, st.committed_seq)
        };
        let Some(block) = block else {
            return Err(StoreError::InvalidQuery(format!("no metrics block {id} to release")));
        };
        write_committed(&self.dir, committed)?;
        self.state.write().blocks.retain(|b| !Arc::ptr_eq(b, &block));
        // Queries holding the block skip it once its file is gone.
        block.removed.store(true, Ordering::Release);
        match fs::remove_file(&block.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                block.removed.store(false, Ordering::Release);
                let mut st = self.state.write();
                st.blocks.push(block);
                st.blocks.sort_by(|a, b| (a.index.first_seq, &a.path).cmp(&(b.index.first_seq, &b.path)));
                return Err(e.into());
            }
        }
        sync_dir(&self.dir)?;
        tracing::info!(block = id, bytes = block.file_len, "released metrics block");
        Ok(block.file_len)
    }

    /// Bytes of block files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.state.read().blocks.iter().map(|b| b.file_len).sum()
    }

    /// Number of block files.
    pub fn block_count(&self) -> u64 {
        self.state.read().blocks.len() as u64
    }
}

// ---------------------------------------------------------------------------------------------
// Blocks opened read-only (segment sets) and block merges
// ---------------------------------------------------------------------------------------------

/// The selected series' points in `time` from `blocks`, added oldest block first (so the newest
/// metadata wins, as in the store). Damaged sections are skipped and reported to `quarantine`.
fn collect_blocks(
    blocks: &[Arc<Block>],
    sel: &Selection,
    time: TimeRange,
    quarantine: &Quarantine,
) -> Result<Collector, StoreError> {
    let mut col = Collector::default();
    for b in blocks {
        b.collect(sel, time, &mut col, quarantine)?;
    }
    Ok(col)
}

/// [`MetricsStore::query`] over read-only blocks.
pub(crate) fn query_blocks(
    blocks: &[Arc<Block>],
    q: &MetricQuery,
    quarantine: &Quarantine,
) -> Result<MetricsData, StoreError> {
    let sel = Selection::compile(&q.matchers, &[])?;
    Ok(collect_blocks(blocks, &sel, q.time, quarantine)?.into_metrics_data())
}

/// [`MetricsStore::query_view`] over read-only blocks.
pub(crate) fn query_view_blocks(
    blocks: &[Arc<Block>],
    q: &MetricQuery,
    labels: &[LabelMatcher],
    opts: &ViewOptions,
    quarantine: &Quarantine,
) -> Result<PromView, StoreError> {
    let sel = Selection::compile(&q.matchers, labels)?;
    Ok(collect_blocks(blocks, &sel, q.time, quarantine)?.into_view(opts))
}

/// Writes one block file `out` holding every series and point of `blocks` (oldest first), with
/// the store's block writer, so it answers every query as the inputs together do. A damaged
/// input section is an error (a merge must not lose points silently).
pub(crate) fn merge_blocks(blocks: &[Arc<Block>], out: &Path) -> Result<BlockInfo, StoreError> {
    let sel = Selection::compile(&[], &[])?;
    let quarantine = Quarantine::default();
    let col = collect_blocks(blocks, &sel, TimeRange::ALL, &quarantine)?;
    if quarantine.count() > 0 {
        return Err(StoreError::corrupt(out, "an input block has a damaged section: merge refused"));
    }
    let mut head = MetricsHead::new();
    for c in col.map.into_values().flatten() {
        let (mut min_time, mut max_time) = (u64::MAX, 0);
        c.points.for_each_time(|t| {
            min_time = min_time.min(t);
            max_time = max_time.max(t);
        });
        head.points += c.points.len() as u64;
        head.series.push(HeadSeries { ident: c.ident, meta: c.meta, points: c.points, min_time, max_time });
    }
    let first_seq = blocks.iter().map(|b| b.index.first_seq).min().unwrap_or(0);
    let committed_seq = blocks.iter().map(|b| b.index.committed_seq).max().unwrap_or(0);
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    Ok(write_block_at(dir, out.to_path_buf(), &head, first_seq, committed_seq)?.info())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::KeyValueList;
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, Exemplar, exemplar, exponential_histogram_data_point::Buckets,
        summary_data_point::ValueAtQuantile,
    };

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * SEC;

    fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(v) }), ..Default::default() }
    }

    fn s(key: &str, v: &str) -> KeyValue {
        kv(key, any_value::Value::StringValue(v.into()))
    }

    fn resource(service: &str) -> Resource {
        Resource {
            attributes: vec![s("service.name", service), s("host.name", "host-1"), s("env", "prod")],
            dropped_attributes_count: 2,
            ..Default::default()
        }
    }

    fn scope(name: &str) -> InstrumentationScope {
        InstrumentationScope {
            name: name.into(),
            version: "1.2.3".into(),
            attributes: vec![s("scope.attr", "x")],
            dropped_attributes_count: 1,
        }
    }

    fn request(
        resource: Option<Resource>,
        scope: Option<InstrumentationScope>,
        metrics: Vec<Metric>,
    ) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource,
                scope_metrics: vec![ScopeMetrics { scope, metrics, schema_url: "https://scope/schema".into() }],
                schema_url: "https://res/schema".into(),
            }],
        }
    }

    fn exemplar(t: u64) -> Exemplar {
        Exemplar {
            filtered_attributes: vec![s("user", "u1")],
            time_unix_nano: t,
            span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
            trace_id: vec![9; 16],
            value: Some(exemplar::Value::AsDouble(0.25)),
        }
    }

    fn num(attrs: Vec<KeyValue>, start: u64, t: u64, v: number_data_point::Value) -> NumberDataPoint {
        NumberDataPoint {
            attributes: attrs,
            start_time_unix_nano: start,
            time_unix_nano: t,
            value: Some(v),
            ..Default::default()
        }
    }

    fn metric(name: &str, data: Data) -> Metric {
        Metric {
            name: name.into(),
            description: format!("{name} description"),
            unit: "1".into(),
            metadata: vec![s("meta", name)],
            data: Some(data),
        }
    }

    fn counter(name: &str, points: Vec<NumberDataPoint>) -> Metric {
        metric(
            name,
            Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
        )
    }

    /// A request with every metric type and most fields set.
    fn all_types_request(base: u64) -> ExportMetricsServiceRequest {
        use number_data_point::Value::{AsDouble, AsInt};
        let a = || vec![s("method", "GET"), kv("code", any_value::Value::IntValue(200))];
        let b = || vec![s("method", "POST"), kv("ok", any_value::Value::BoolValue(true))];
        let mut gauge_pt = num(a(), 0, base + 1, AsDouble(0.1 + 0.2));
        gauge_pt.exemplars = vec![exemplar(base)];
        gauge_pt.flags = 1;
        let gauge = metric(
            "temperature",
            Data::Gauge(Gauge {
                data_points: vec![
                    gauge_pt,
                    num(a(), 0, base + 2 * SEC, AsDouble(-0.0)),
                    num(a(), 0, base + 3 * SEC, AsDouble(f64::NAN)),
                    num(b(), 0, base + 3 * SEC, AsInt(-5)),
                    num(b(), 0, base + 4 * SEC, AsInt(i64::MIN)),
                    NumberDataPoint { attributes: b(), time_unix_nano: base + 5 * SEC, ..Default::default() },
                ],
            }),
        );
        let mono = counter(
            "requests_total",
            vec![
                num(a(), T0 - 100, base + SEC, AsDouble(1.0)),
                num(a(), T0 - 100, base + 2 * SEC, AsDouble(7.0)),
                num(a(), T0 - 100, base + 3 * SEC, AsDouble(1e300)),
                num(a(), T0 - 100, base + 4 * SEC, AsDouble(2.5)),
            ],
        );
        let delta = metric(
            "queue_change",
            Data::Sum(Sum {
                data_points: vec![
                    num(a(), base, base + SEC, AsInt(3)),
                    num(a(), base + SEC, base + 2 * SEC, AsInt(-2)),
                    num(a(), base + 7, base + 3 * SEC, AsInt(i64::MAX)),
                ],
                aggregation_temporality: AggregationTemporality::Delta as i32,
                is_monotonic: false,
            }),
        );
        let hist_pt = |t: u64, c: u64| HistogramDataPoint {
            attributes: a(),
            start_time_unix_nano: T0,
            time_unix_nano: t,
            count: c,
            sum: Some(c as f64 * 1.5),
            bucket_counts: vec![c / 2, c - c / 2, 0],
            explicit_bounds: vec![0.5, 1.0],
            exemplars: vec![exemplar(t)],
            flags: 0,
            min: Some(0.1),
            max: Some(9.5),
        };
        let hist = metric(
            "latency",
            Data::Histogram(Histogram {
                data_points: vec![hist_pt(base + SEC, 4), hist_pt(base + 2 * SEC, 9)],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        );
        let exp = metric(
            "latency_exp",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    attributes: b(),
                    start_time_unix_nano: T0,
                    time_unix_nano: base + SEC,
                    count: 12,
                    sum: Some(33.0),
                    scale: 3,
                    zero_count: 1,
                    positive: Some(Buckets { offset: -2, bucket_counts: vec![1, 2, 3] }),
                    negative: Some(Buckets { offset: 1, bucket_counts: vec![4, 1] }),
                    flags: 0,
                    exemplars: vec![],
                    min: Some(-3.0),
                    max: Some(8.0),
                    zero_threshold: 1e-9,
                }],
                aggregation_temporality: AggregationTemporality::Delta as i32,
            }),
        );
        let summary = metric(
            "rpc_duration",
            Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    attributes: vec![],
                    start_time_unix_nano: T0,
                    time_unix_nano: base + SEC,
                    count: 10,
                    sum: 4.5,
                    quantile_values: vec![
                        ValueAtQuantile { quantile: 0.5, value: 0.3 },
                        ValueAtQuantile { quantile: 0.99, value: 1.2 },
                    ],
                    flags: 1,
                }],
            }),
        );
        let mut req = request(Some(resource("api")), Some(scope("lib-a")), vec![gauge, mono, delta, hist]);
        // A second resource (no scope, other schema) and one without resource at all.
        req.resource_metrics.push(ResourceMetrics {
            resource: Some(resource("db")),
            scope_metrics: vec![ScopeMetrics { scope: None, metrics: vec![exp], schema_url: String::new() }],
            schema_url: String::new(),
        });
        req.resource_metrics.push(ResourceMetrics {
            resource: None,
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope("lib-b")),
                metrics: vec![summary],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        });
        req
    }

    /// Splits a metric into one metric per point.
    fn split(m: &Metric) -> Vec<Metric> {
        fn each<P: Clone>(v: &[P], wrap: impl Fn(Vec<P>) -> Data) -> Vec<Data> {
            v.iter().map(|p| wrap(vec![p.clone()])).collect()
        }
        let datas = match &m.data {
            Some(Data::Gauge(_g)) => each(&_g.data_points, |v| Data::Gauge(Gauge { data_points: v })),
            Some(Data::Sum(x)) => each(&x.data_points, |v| Data::Sum(Sum { data_points: v, ..x.clone() })),
            Some(Data::Histogram(x)) => {
                each(&x.data_points, |v| Data::Histogram(Histogram { data_points: v, ..x.clone() }))
            }
            Some(Data::ExponentialHistogram(x)) => each(&x.data_points, |v| {
                Data::ExponentialHistogram(ExponentialHistogram { data_points: v, ..x.clone() })
            }),
            Some(Data::Summary(x)) => each(&x.data_points, |v| Data::Summary(Summary { data_points: v })),
            None => vec![],
        };
        datas.into_iter().map(|d| Metric { data: Some(d), ..m.clone() }).collect()
    }

    /// Every point as a one-point request, encoded, sorted: equal iff the same points with the
    /// same resource, scope and metric metadata.
    fn flatten(rms: &[ResourceMetrics]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for rm in rms {
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    for one in split(m) {
                        let single = ResourceMetrics {
                            scope_metrics: vec![ScopeMetrics { metrics: vec![one], ..sm.clone() }],
                            ..rm.clone()
                        };
                        out.push(single.encode_to_vec());
                    }
                }
            }
        }
        out.sort();
        out
    }

    fn all() -> MetricQuery {
        MetricQuery { matchers: vec![], time: TimeRange::ALL }
    }

    fn matcher(name: &str, op: MatchOp, value: &str) -> LabelMatcher {
        LabelMatcher { name: name.into(), op, value: value.into() }
    }

    fn query_with(matchers: Vec<LabelMatcher>) -> MetricQuery {
        MetricQuery { matchers, time: TimeRange::ALL }
    }

    fn metrics_of(md: &MetricsData) -> Vec<&Metric> {
        md.resource_metrics.iter().flat_map(|rm| &rm.scope_metrics).flat_map(|sm| &sm.metrics).collect()
    }

    fn times(m: &Metric) -> Vec<u64> {
        match &m.data {
            Some(Data::Gauge(g)) => g.data_points.iter().map(|p| p.time_unix_nano).collect(),
            Some(Data::Sum(x)) => x.data_points.iter().map(|p| p.time_unix_nano).collect(),
            Some(Data::Histogram(x)) => x.data_points.iter().map(|p| p.time_unix_nano).collect(),
            Some(Data::ExponentialHistogram(x)) => x.data_points.iter().map(|p| p.time_unix_nano).collect(),
            Some(Data::Summary(x)) => x.data_points.iter().map(|p| p.time_unix_nano).collect(),
            None => vec![],
        }
    }

    /// Number of distinct series in `all_types_request`.
    const ALL_TYPES_SERIES: usize = 2 + 1 + 1 + 1 + 1 + 1;
    const ALL_TYPES_POINTS: usize = 6 + 4 + 3 + 2 + 1 + 1;

    fn check_round_trip(got: &MetricsData, sent: &[ExportMetricsServiceRequest]) {
        let sent_rms: Vec<ResourceMetrics> = sent.iter().flat_map(|r| r.resource_metrics.clone()).collect();
        assert_eq!(flatten(&got.resource_metrics), flatten(&sent_rms));
        for m in metrics_of(got) {
            let t = times(m);
            assert!(t.windows(2).all(|w| w[0] <= w[1]), "{} not oldest first: {t:?}", m.name);
        }
    }

    #[test]
    fn point_count_of_every_type() {
        let req = all_types_request(T0);
        let counts: Vec<usize> = req
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(point_count)
            .collect();
        assert_eq!(counts, vec![6, 4, 3, 2, 1, 1]);
        assert_eq!(point_count(&Metric::default()), 0);
    }

    #[test]
    fn every_type_round_trips_through_head() {
        let req = all_types_request(T0);
        let mut head = MetricsHead::new();
        assert!(head.is_empty());
        head.append(&req);
        assert_eq!(head.point_count(), ALL_TYPES_POINTS as u64);
        assert!(head.approx_bytes() > 0);
        let got = head.query(&all()).unwrap();
        check_round_trip(&got, std::slice::from_ref(&req));
        assert_eq!(metrics_of(&got).len(), ALL_TYPES_SERIES, "one metric per series");
        // Three resources (api, db, none).
        assert_eq!(got.resource_metrics.len(), 3);
        // Deterministic (compared encoded: the points include a NaN).
        assert!(head.query(&all()).unwrap().encode_to_vec() == got.encode_to_vec());
    }

    #[test]
    fn every_type_round_trips_through_flush_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let reqs = [all_types_request(T0), all_types_request(T0 + 100 * SEC)];
        {
            let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
            assert_eq!(store.committed_seq(), 0);
            store.append(1, &reqs[0]);
            store.flush().unwrap();
            store.append(2, &reqs[1]);
            store.flush().unwrap();
            assert_eq!(store.block_count(), 2);
            assert_eq!(store.committed_seq(), 2);
            assert_eq!(store.head_bytes(), 0);
            check_round_trip(&store.query(&all()).unwrap(), &reqs);
        }
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        assert_eq!(store.block_count(), 2);
        assert_eq!(store.committed_seq(), 2);
        assert!(store.disk_bytes() > 0);
        let got = store.query(&all()).unwrap();
        check_round_trip(&got, &reqs);
        assert_eq!(metrics_of(&got).len(), ALL_TYPES_SERIES, "series merged across blocks");
        // The same answer as a head holding everything.
        let mut head = MetricsHead::new();
        reqs.iter().for_each(|r| head.append(r));
        assert!(head.query(&all()).unwrap().encode_to_vec() == got.encode_to_vec());
    }

    #[test]
    fn attributes_in_another_order_are_the_same_series_and_keep_their_order() {
        use number_data_point::Value::AsInt;
        let ab = vec![s("a", "1"), s("b", "2")];
        let ba = vec![s("b", "2"), s("a", "1")];
        let req = request(
            Some(resource("api")),
            None,
            vec![counter("c", vec![num(ab.clone(), 0, T0, AsInt(1)), num(ba.clone(), 0, T0 + 1, AsInt(2))])],
        );
        let dir = tempfile::tempdir().unwrap();
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        store.append(1, &req);
        for _ in 0..2 {
            let got = store.query(&all()).unwrap();
            let ms = metrics_of(&got);
            assert_eq!(ms.len(), 1);
            let Some(Data::Sum(sum)) = &ms[0].data else { panic!("not a sum") };
            assert_eq!(sum.data_points[0].attributes, ab);
            assert_eq!(sum.data_points[1].attributes, ba);
            store.flush().unwrap();
        }
    }

    #[test]
    fn metadata_newest_wins() {
        use number_data_point::Value::AsInt;
        let mut m1 = counter("c", vec![num(vec![], 0, T0, AsInt(1))]);
        m1.description = "old".into();
        let mut m2 = counter("c", vec![num(vec![], 0, T0 + 1, AsInt(2))]);
        m2.description = "new".into();
        let dir = tempfile::tempdir().unwrap();
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        store.append(1, &request(None, None, vec![m1]));
        store.flush().unwrap();
        store.append(2, &request(None, None, vec![m2]));
        let got = store.query(&all()).unwrap();
        assert_eq!(metrics_of(&got)[0].description, "new");
    }

    /// Series for the matcher tests: `http_requests` x {GET 200 api, POST 500 api,
    /// GET 200 db (resource env=dev), no attrs}, plus `up` on `api`.
    fn matcher_requests() -> Vec<ExportMetricsServiceRequest> {
        use number_data_point::Value::AsInt;
        let pt = |attrs: Vec<KeyValue>| num(attrs, 0, T0, AsInt(1));
        let mut dev = resource("db");
        dev.attributes.retain(|kv| kv.key != "env");
        dev.attributes.push(s("env", "dev"));
        vec![
            request(
                Some(resource("api")),
                Some(scope("s")),
                vec![
                    counter(
                        "http_requests",
                        vec![
                            pt(vec![s("method", "GET"), kv("code", any_value::Value::IntValue(200))]),
                            pt(vec![s("method", "POST"), kv("code", any_value::Value::IntValue(500))]),
                            pt(vec![]),
                        ],
                    ),
                    metric("up", Data::Gauge(Gauge { data_points: vec![pt(vec![s("env", "override")])] })),
                ],
            ),
            request(
                Some(dev),
                Some(scope("s")),
                vec![counter(
                    "http_requests",
                    vec![pt(vec![s("method", "GET"), kv("code", any_value::Value::IntValue(200))])],
                )],
            ),
        ]
    }

    fn label(md: &MetricsData, m: &Metric, key: &str) -> String {
        // Finds the resource of `m` for the fallback.
        for rm in &md.resource_metrics {
            for sm in &rm.scope_metrics {
                if sm.metrics.iter().any(|x| std::ptr::eq(x, m)) {
                    let attrs = match &m.data {
                        Some(Data::Sum(x)) => x.data_points[0].attributes.clone(),
                        Some(Data::Gauge(x)) => x.data_points[0].attributes.clone(),
                        _ => vec![],
                    };
                    return label_value(key, &m.name, &attrs, rm.resource.as_ref()).into_owned();
                }
            }
        }
        panic!("metric not found")
    }

    fn check_matchers(query: impl Fn(&MetricQuery) -> MetricsData) {
        use MatchOp::*;
        let count = |ms: Vec<LabelMatcher>| metrics_of(&query(&query_with(ms))).len();
        assert_eq!(count(vec![]), 5);
        // __name__, all four ops.
        assert_eq!(count(vec![matcher("__name__", Eq, "http_requests")]), 4);
        assert_eq!(count(vec![matcher("__name__", Ne, "http_requests")]), 1);
        assert_eq!(count(vec![matcher("__name__", Re, "http_.*")]), 4);
        assert_eq!(count(vec![matcher("__name__", Re, "http")]), 0, "anchored");
        assert_eq!(count(vec![matcher("__name__", NotRe, "http_.*")]), 1);
        assert_eq!(count(vec![matcher("__name__", Re, "up|http_requests")]), 5);
        // Point attributes, int values as decimal.
        assert_eq!(count(vec![matcher("method", Eq, "GET")]), 2);
        assert_eq!(count(vec![matcher("code", Eq, "200")]), 2);
        assert_eq!(count(vec![matcher("code", Re, "5..")]), 1);
        assert_eq!(count(vec![matcher("code", NotRe, "2..")]), 3);
        assert_eq!(count(vec![matcher("method", Ne, "GET")]), 3);
        // Missing label is "".
        assert_eq!(count(vec![matcher("method", Eq, "")]), 2);
        assert_eq!(count(vec![matcher("nope", Eq, "")]), 5);
        assert_eq!(count(vec![matcher("nope", Re, ".+")]), 0);
        // Resource attribute fallback; the point's attribute wins.
        assert_eq!(count(vec![matcher("service.name", Eq, "db")]), 1);
        assert_eq!(count(vec![matcher("env", Eq, "prod")]), 3);
        assert_eq!(count(vec![matcher("env", Eq, "dev")]), 1);
        assert_eq!(count(vec![matcher("env", Eq, "override")]), 1);
        // Conjunction.
        let md = query(&query_with(vec![
            matcher("__name__", Eq, "http_requests"),
            matcher("method", Eq, "GET"),
            matcher("env", Ne, "dev"),
        ]));
        let ms = metrics_of(&md);
        assert_eq!(ms.len(), 1);
        assert_eq!(label(&md, ms[0], "service.name"), "api");
        assert_eq!(label(&md, ms[0], "code"), "200");
    }

    #[test]
    fn label_matchers_in_head() {
        let mut head = MetricsHead::new();
        matcher_requests().iter().for_each(|r| head.append(r));
        check_matchers(|q| head.query(q).unwrap());
    }

    #[test]
    fn label_matchers_in_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        for (i, r) in matcher_requests().iter().enumerate() {
            store.append(i as u64 + 1, r);
            store.flush().unwrap();
        }
        check_matchers(|q| store.query(q).unwrap());
    }

    /// `query_view` (series left out before decoding, points without copied attributes) gives
    /// what the reference gives: the view of `query`'s result, filtered by view labels.
    #[test]
    fn view_reads_match_the_reference_view() {
        use MatchOp::*;
        let dir = tempfile::tempdir().unwrap();
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        let mut reqs = matcher_requests();
        reqs.push(all_types_request(T0));
        reqs.push(all_types_request(T0 + 100 * SEC));
        // The same series with its attributes in another order, in the head.
        let mut later = matcher_requests();
        if let Some(Data::Sum(sum)) = &mut later[0].resource_metrics[0].scope_metrics[0].metrics[0].data {
            for p in &mut sum.data_points {
                p.attributes.reverse();
                p.time_unix_nano += 10 * SEC;
            }
        }
        let label_sets = [
            vec![],
            vec![matcher("method", Eq, "GET")],
            vec![matcher("job", Eq, "db"), matcher("code", Re, "2..")],
            vec![matcher("method", Ne, "GET"), matcher("otel_scope_name", Eq, "s")],
            vec![matcher("nope", Eq, "")],
            vec![matcher("job", NotRe, "api|db")],
        ];
        let check = |store: &MetricsStore| {
            for opts in [ViewOptions::default(), ViewOptions { native_histograms: false, target_info: false }] {
                for labels in &label_sets {
                    for q in [all(), query_with(vec![matcher("__name__", Re, "http.*")])] {
                        let want = prometheus::matching_view(&store.query(&q).unwrap(), labels, &opts).unwrap();
                        let got = store.query_view(&q, labels, &opts).unwrap();
                        // As text: NaN samples are not equal to themselves.
                        assert_eq!(format!("{got:?}"), format!("{want:?}"), "{labels:?} {q:?}");
                    }
                }
            }
        };
        for (i, r) in reqs.iter().enumerate() {
            store.append(i as u64 + 1, r);
        }
        check(&store);
        store.flush().unwrap();
        for (i, r) in later.iter().enumerate() {
            store.append(100 + i as u64, r);
        }
        check(&store);
        let got = store.query_view(&all(), &[matcher("method", Eq, "GET")], &ViewOptions::default()).unwrap();
        let series: Vec<&prometheus::Labels> = got
            .families
            .iter()
            .filter(|f| f.name != "target_info")
            .flat_map(|f| &f.series)
            .map(|s| &s.labels)
            .collect();
        assert!(series.len() > 2, "{series:?}");
        assert!(series.iter().all(|l| l.contains(&("method".to_string(), "GET".to_string()))));
        let unfiltered = store.query_view(&all(), &[], &ViewOptions::default()).unwrap();
        let posts = unfiltered
            .families
            .iter()
            .flat_map(|f| &f.series)
            .filter(|s| s.labels.contains(&("method".to_string(), "POST".to_string())));
        assert!(posts.count() > 0);
        let bad = store.query_view(&all(), &[matcher("method", Re, "(")], &ViewOptions::default());
        assert!(matches!(bad, Err(StoreError::InvalidQuery(_))));
    }

    #[test]
    fn label_strings_of_every_value_type() {
        use any_value::Value::*;
        let l = |v: any_value::Value| label_string(Some(&AnyValue { value: Some(v) })).into_owned();
        assert_eq!(l(StringValue("x y".into())), "x y");
        assert_eq!(l(IntValue(-42)), "-42");
        assert_eq!(l(DoubleValue(1.5)), "1.5");
        assert_eq!(l(DoubleValue(2.0)), "2");
        assert_eq!(l(BoolValue(true)), "true");
        assert_eq!(l(BytesValue(b"hi!?".to_vec())), "\"aGkhPw==\"");
        assert_eq!(
            l(ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                values: vec![AnyValue { value: Some(IntValue(1)) }, AnyValue { value: Some(StringValue("a".into())) }]
            })),
            "[1,\"a\"]"
        );
        assert_eq!(l(KvlistValue(KeyValueList { values: vec![s("k", "v")] })), "{\"k\":\"v\"}");
        assert_eq!(label_string(None), "");
        assert_eq!(label_string(Some(&AnyValue { value: None })), "");
    }

    #[test]
    fn bad_regex_is_invalid_query() {
        let mut head = MetricsHead::new();
        head.append(&matcher_requests()[0]);
        let q = query_with(vec![matcher("method", MatchOp::Re, "(unclosed")]);
        match head.query(&q) {
            Err(StoreError::InvalidQuery(msg)) => assert!(msg.contains("method=~"), "{msg}"),
            other => panic!("expected InvalidQuery, got {other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        let q = query_with(vec![matcher("__name__", MatchOp::NotRe, "a{2,1}")]);
        assert!(matches!(store.query(&q), Err(StoreError::InvalidQuery(m)) if m.contains("__name__!~")));
    }

    fn ten_points(start: u64) -> ExportMetricsServiceRequest {
        use number_data_point::Value::AsDouble;
        let pts = (0..10).map(|i| num(vec![s("k", "v")], T0, start + i * 10, AsDouble(i as f64))).collect();
        request(Some(resource("api")), None, vec![counter("c", pts)])
    }

    #[test]
    fn time_range_filtering() {
        let range = |a, b| MetricQuery { matchers: vec![], time: TimeRange { start_ns: a, end_ns: b } };
        let dir = tempfile::tempdir().unwrap();
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        store.append(1, &ten_points(T0)); // T0 .. T0 + 90
        let mut head = MetricsHead::new();
        head.append(&ten_points(T0));
        for round in 0..2 {
            let got = store.query(&range(T0 + 30, T0 + 60)).unwrap();
            assert_eq!(times(metrics_of(&got)[0]), vec![T0 + 30, T0 + 40, T0 + 50], "round {round}");
            assert_eq!(head.query(&range(T0 + 30, T0 + 60)).unwrap(), got);
            assert!(metrics_of(&store.query(&range(0, T0)).unwrap()).is_empty(), "end is exclusive");
            assert!(metrics_of(&store.query(&range(T0 + 91, u64::MAX)).unwrap()).is_empty());
            assert_eq!(times(metrics_of(&store.query(&range(T0 + 90, u64::MAX)).unwrap())[0]), vec![T0 + 90]);
            store.flush().unwrap();
        }
    }

    #[test]
    fn head_and_blocks_merge() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        // The block holds the later points, the head the earlier ones: the result is sorted.
        store.append(1, &ten_points(T0 + 100));
        store.flush().unwrap();
        store.append(2, &ten_points(T0));
        store.append(3, &ten_points(T0 + 200));
        let got = store.query(&all()).unwrap();
        let ms = metrics_of(&got);
        assert_eq!(ms.len(), 1);
        let expected: Vec<u64> = (0..30).map(|i| T0 + i * 10).collect();
        assert_eq!(times(ms[0]), expected);
        // Restart: the head is gone, the caller replays the WAL records after committed_seq.
        drop(store);
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        assert_eq!(store.committed_seq(), 1);
        store.append(2, &ten_points(T0));
        store.append(3, &ten_points(T0 + 200));
        assert_eq!(store.query(&all()).unwrap(), got);
    }

    #[test]
    fn retention_by_age_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        for i in 0..4u64 {
            store.append(i + 1, &ten_points(T0 + i * 1000)); // block i: T0+1000i .. +90
            store.flush().unwrap();
        }
        assert_eq!(store.block_count(), 4);
        let sizes: Vec<u64> = store.state.read().blocks.iter().map(|b| b.file_len).collect();
        let total = store.disk_bytes();
        assert_eq!(total, sizes.iter().sum::<u64>());
        assert_eq!(store.apply_retention(0, 0).unwrap(), 0);
        // By age: blocks 0 and 1 have their newest point before T0 + 1500.
        assert_eq!(store.apply_retention(T0 + 1500, 0).unwrap(), sizes[0] + sizes[1]);
        assert_eq!(store.block_count(), 2);
        assert_eq!(store.disk_bytes(), sizes[2] + sizes[3]);
        let t = times(metrics_of(&store.query(&all()).unwrap())[0]);
        assert_eq!(t.first(), Some(&(T0 + 2000)));
        // A block is kept when its newest point is not older than the limit.
        assert_eq!(store.apply_retention(T0 + 2090, 0).unwrap(), 0);
        // By size: the oldest goes first.
        assert_eq!(store.apply_retention(0, sizes[3]).unwrap(), sizes[2]);
        assert_eq!(store.block_count(), 1);
        let t = times(metrics_of(&store.query(&all()).unwrap())[0]);
        assert_eq!(t.first(), Some(&(T0 + 3000)));
        assert_eq!(store.apply_retention(0, 1).unwrap(), sizes[3]);
        assert_eq!(store.block_count(), 0);
        assert_eq!(store.disk_bytes(), 0);
        // The committed sequence survives the deletion of every block.
        drop(store);
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        assert_eq!(store.committed_seq(), 4);
        assert_eq!(store.block_count(), 0);
    }

    #[test]
    fn read_only_and_merged_blocks_answer_as_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let reqs = [all_types_request(T0), all_types_request(T0 + 100 * SEC), all_types_request(T0 + 50 * SEC)];
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        for (i, r) in reqs.iter().enumerate() {
            store.append(i as u64 + 1, r);
            store.flush().unwrap();
        }
        let infos = store.blocks();
        assert_eq!(infos.iter().map(|b| b.id).collect::<Vec<_>>(), [1, 2, 3]);
        let blocks: Vec<Arc<Block>> =
            infos.iter().map(|b| Arc::new(Block::open_read_only(&b.path, b.points).unwrap())).collect();
        let merged = merge_blocks(&blocks, &out.path().join("merged.obm")).unwrap();
        assert_eq!(merged.points, infos.iter().map(|b| b.points).sum::<u64>());
        assert_eq!((merged.min_time, merged.max_time), (infos[0].min_time, infos[1].max_time));
        let merged = vec![Arc::new(Block::open_read_only(&merged.path, merged.points).unwrap())];
        let q = Quarantine::default();
        let ranges = [TimeRange::ALL, TimeRange { start_ns: T0 + 40 * SEC, end_ns: T0 + 120 * SEC }];
        for time in ranges {
            let matcher_sets = [all().matchers, vec![matcher("__name__", MatchOp::Re, "latency.*")]];
            for matchers in matcher_sets {
                let query = MetricQuery { matchers, time };
                let want = store.query(&query).unwrap();
                assert!(!want.resource_metrics.is_empty());
                // Encoded: NaN values compare unequal as floats.
                assert!(query_blocks(&blocks, &query, &q).unwrap().encode_to_vec() == want.encode_to_vec());
                assert!(query_blocks(&merged, &query, &q).unwrap().encode_to_vec() == want.encode_to_vec());
                let view = store.query_view(&query, &[], &ViewOptions::default()).unwrap();
                let merged_view = query_view_blocks(&merged, &query, &[], &ViewOptions::default(), &q).unwrap();
                assert!(!view.families.is_empty());
                // Debug text: NaN samples compare unequal as floats.
                assert_eq!(format!("{merged_view:?}"), format!("{view:?}"));
            }
        }
        check_round_trip(
            &query_blocks(&merged, &all(), &q).unwrap(),
            &[reqs[0].clone(), reqs[2].clone(), reqs[1].clone()],
        );
        assert_eq!(q.count(), 0);
        // Another item count than the block holds: not the block its entry describes.
        assert!(matches!(Block::open_read_only(&infos[0].path, 1), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn released_blocks_are_gone_and_their_records_stay_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        for i in 0..3u64 {
            store.append(i + 1, &ten_points(T0 + i * 1000));
            store.flush().unwrap();
        }
        store.append(4, &ten_points(T0 + 5000)); // in the head
        let ids: Vec<u64> = store.blocks().iter().map(|b| b.id).collect();
        let newest = store.blocks().pop().unwrap();
        assert!(store.release_block(newest.id).unwrap() > 0);
        assert!(!newest.path.exists());
        assert!(matches!(store.release_block(newest.id), Err(StoreError::InvalidQuery(_))));
        assert!(matches!(store.release_block(999), Err(StoreError::InvalidQuery(_))));
        let t = times(metrics_of(&store.query(&all()).unwrap())[0]);
        assert_eq!(t.len(), 30, "two blocks and the head, not the released block");
        assert!(!t.contains(&(T0 + 2000)));
        assert_eq!(store.blocks().iter().map(|b| b.id).collect::<Vec<_>>(), ids[..2]);
        // Retention goes on over what is left.
        assert!(store.apply_retention(T0 + 500, 0).unwrap() > 0);
        assert_eq!(store.block_count(), 1);
        drop(store);
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        assert_eq!(store.committed_seq(), 3, "the released block's seq stays committed");
        assert_eq!(store.block_count(), 1);
    }

    fn block_paths(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "obm") && p.file_name().is_some_and(|n| n != COMMITTED_FILE))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn corrupt_block_is_set_aside_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
            for i in 0..3u64 {
                store.append(i + 1, &ten_points(T0 + i * 1000));
                store.flush().unwrap();
            }
        }
        let paths = block_paths(dir.path());
        assert_eq!(paths.len(), 3);
        // Truncated, garbage, and a leftover temporary file.
        let len = fs::metadata(&paths[0]).unwrap().len();
        File::options().write(true).open(&paths[0]).unwrap().set_len(len - 3).unwrap();
        fs::write(&paths[1], b"not a block at all").unwrap();
        fs::write(dir.path().join("block-00000000000000000009-00000000000000000009.obm.tmp"), b"partial").unwrap();
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        assert_eq!(store.block_count(), 1);
        assert_eq!(store.committed_seq(), 3);
        let t = times(metrics_of(&store.query(&all()).unwrap())[0]);
        assert_eq!(t.first(), Some(&(T0 + 2000)));
        let corrupt: Vec<String> = fs::read_dir(dir.path().join("quarantine"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(corrupt.len(), 2, "{corrupt:?}");
        assert!(!dir.path().join("block-00000000000000000009-00000000000000000009.obm.tmp").exists());
    }

    #[test]
    fn corrupt_section_is_detected_at_query() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        store.append(1, &ten_points(T0));
        let mut other = ten_points(T0);
        other.resource_metrics[0].scope_metrics[0].metrics[0].name = "other".into();
        store.append(2, &other);
        store.flush().unwrap();
        drop(store);
        let path = &block_paths(dir.path())[0];
        let mut bytes = fs::read(path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff; // in the last section ("other")
        fs::write(path, &bytes).unwrap();
        let q = Quarantine::default();
        let store = MetricsStore::open(dir.path(), &q).unwrap();
        assert_eq!(store.block_count(), 1, "the index is intact");
        // The damaged section is skipped and reported once; the intact one still answers.
        let names = |d: &MetricsData| metrics_of(d).iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&store.query(&all()).unwrap()), vec!["c"]);
        assert_eq!(names(&store.query(&all()).unwrap()), vec!["c"]);
        assert_eq!(q.count(), 1);
        let only_c = query_with(vec![matcher("__name__", MatchOp::Eq, "c")]);
        assert_eq!(metrics_of(&store.query(&only_c).unwrap()).len(), 1);
    }

    #[test]
    fn garbage_columns_do_not_panic() {
        let mut rec = SeriesPb { point_count: 5, ..Default::default() };
        let mut seed = 7u64;
        for round in 0..2000 {
            let mut rnd = |n: usize| -> Vec<u8> {
                (0..n)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect()
            };
            rec.times = rnd(round % 13);
            rec.starts = rnd(round % 7);
            rec.values = rnd(round % 17);
            rec.residuals = rnd(round % 23);
            let _ = decode_points::<NumberDataPoint>(&rec, TimeRange::ALL);
            let _ = decode_points::<HistogramDataPoint>(&rec, TimeRange::ALL);
        }
    }

    #[test]
    fn concurrent_appends_queries_and_flushes_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MetricsStore::open(dir.path(), &Quarantine::default()).unwrap());
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    store.append(i + 1, &ten_points(T0 + i * 100));
                }
            })
        };
        let flusher = {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    store.flush().unwrap();
                    std::thread::yield_now();
                }
            })
        };
        for _ in 0..50 {
            let got = store.query(&all()).unwrap();
            let n = metrics_of(&got).first().map_or(0, |m| times(m).len());
            assert_eq!(n % 10, 0, "a query never sees part of a record, nor a record twice");
        }
        writer.join().unwrap();
        flusher.join().unwrap();
        let got = store.query(&all()).unwrap();
        assert_eq!(times(metrics_of(&got)[0]).len(), 2000);
        store.flush().unwrap();
        assert_eq!(store.committed_seq(), 200);
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<MetricsStore>();
    }

    /// Tiny deterministic PRNG for the compression test.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Stores 10 counters x 8640 points exported every 10 s (with up to 2 ms of timestamp
    /// jitter, as a real SDK's periodic reader has), flushing every 2 h of data, and returns the
    /// block bytes per point. With `shared_time` all series of an export carry the same
    /// timestamp (one SDK); otherwise each has its own jitter (the worst case).
    fn bytes_per_point(shared_time: bool, value: impl Fn(u64, &mut Rng) -> number_data_point::Value) -> f64 {
        const SERIES: u64 = 10;
        const POINTS: u64 = 8640; // one day
        let dir = tempfile::tempdir().unwrap();
        let store = MetricsStore::open(dir.path(), &Quarantine::default()).unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let start = T0 - 3600 * SEC;
        for i in 0..POINTS {
            let t = T0 + i * 10 * SEC + rng.next() % 2_000_000;
            let pts = (0..SERIES)
                .map(|k| {
                    let attrs = vec![
                        s("http.request.method", if k % 2 == 0 { "GET" } else { "POST" }),
                        s("http.route", &format!("/api/v1/items/{k}")),
                        kv("http.response.status_code", any_value::Value::IntValue(200)),
                    ];
                    let t = if shared_time { t } else { T0 + i * 10 * SEC + rng.next() % 2_000_000 };
                    num(attrs, start, t, value(i, &mut rng))
                })
                .collect();
            store.append(
                i + 1,
                &request(
                    Some(resource("api")),
                    Some(scope("io.opentelemetry.http")),
                    vec![counter("http.server.requests", pts)],
                ),
            );
            if (i + 1) % 720 == 0 {
                store.flush().unwrap();
            }
        }
        store.flush().unwrap();
        let got = store.query(&all()).unwrap();
        assert_eq!(metrics_of(&got).iter().map(|m| times(m).len() as u64).sum::<u64>(), SERIES * POINTS);
        store.disk_bytes() as f64 / (SERIES * POINTS) as f64
    }

    #[test]
    fn compression_of_a_counter_series() {
        use number_data_point::Value::{AsDouble, AsInt};
        let total = std::cell::Cell::new(0u64);
        let int_counter = |_: u64, rng: &mut Rng| {
            total.set(total.get() + rng.next() % 50);
            AsInt(total.get() as i64)
        };
        let double_counter = |_: u64, rng: &mut Rng| {
            total.set(total.get() + rng.next() % 50);
            AsDouble(total.get() as f64)
        };
        let sum = std::cell::Cell::new(0.0f64);
        let seconds_counter = |_: u64, rng: &mut Rng| {
            sum.set(sum.get() + (rng.next() % 1_000_000) as f64 / 7919.0);
            AsDouble(sum.get())
        };
        let shared = [bytes_per_point(true, int_counter), bytes_per_point(true, double_counter)];
        let own = [
            bytes_per_point(false, int_counter),
            bytes_per_point(false, double_counter),
            bytes_per_point(false, seconds_counter),
        ];
        println!(
            "metrics block bytes per point (10 series x 8640 points, 10 s interval, up to 2 ms jitter, 12 blocks): \
             shared export timestamps: int counter {:.2}, integral double counter {:.2}; \
             per-series timestamps: int counter {:.2}, integral double counter {:.2}, fractional double counter {:.2}",
            shared[0], shared[1], own[0], own[1], own[2]
        );
        for (i, b) in shared.iter().chain(&own[..2]).enumerate() {
            assert!(*b < 20.0, "case {i}: {b} bytes per point");
        }
    }
}
