//! The Prometheus view of OTLP metrics: pure functions from [`MetricsData`] (as the store returns
//! it, or as a receiver decoded it) to Prometheus series, following the OpenTelemetry
//! specification "Prometheus and OpenMetrics Compatibility" (OTLP metric points to Prometheus).
//!
//! # Rules
//! - **Metric names.** Characters outside `[a-zA-Z0-9_:]` become `_`, runs of `_` collapse to
//!   one, a leading digit gets a `_` prefix. The unit is appended as a suffix unless the name
//!   already contains it: abbreviations become words (`ms` -> `milliseconds`, `s` -> `seconds`,
//!   `By` -> `bytes`, ...), `{...}` parts are dropped, `foo/bar` becomes `foo_per_bar`, and `1`
//!   becomes `ratio` for gauges (and nothing otherwise). Monotonic sums are counters named
//!   `..._total` (a trailing `_total` of the OTLP name is moved after the unit).
//! - **Types.** Gauge -> gauge; monotonic sum -> counter; non-monotonic sum -> gauge;
//!   histogram -> `_bucket{le}` (cumulative, ending with `+Inf`), `_sum`, `_count`; summary ->
//!   `{quantile}` series plus `_sum` and `_count`; exponential histogram -> a native histogram
//!   ([`NativeHistogram`]: schema = OTLP scale, capped at 8 by merging buckets; zero bucket;
//!   spans and deltas) or, with [`ViewOptions::native_histograms`] off (the text format), the
//!   documented fallback: a classic histogram whose `le` bounds are the exponential bucket
//!   bounds (negative buckets, zero bucket, positive buckets, then `+Inf`).
//! - **Labels.** Point attributes become labels: characters outside `[a-zA-Z0-9_]` become `_`,
//!   a leading digit gets a `key_` prefix, a single leading `_` a `key` prefix; attributes that
//!   sanitize to the same label have their values joined with `;` in the order of their
//!   original keys. Values are attribute values as text (see `metrics::label_string`).
//!   The scope adds `otel_scope_name` and `otel_scope_version` (when not empty). The resource
//!   adds `job` (`service.namespace/service.name`, or `service.name`) and `instance`
//!   (`service.instance.id`); these win over point attributes of the same name. Every other
//!   resource attribute goes to one `target_info` gauge per resource (value 1, with `job` and
//!   `instance`), sampled at the times of that resource's points.
//! - **Exemplars** keep trace id and span id (lowercase hex labels `trace_id` and `span_id`),
//!   their filtered attributes as labels, value and time. A histogram exemplar belongs to the
//!   first bucket whose bound holds its value.
//! - **Staleness.** A point flagged "no recorded value" becomes a Prometheus stale marker
//!   ([`STALE_NAN_BITS`]).
//! - **Delta temporality** is converted to cumulative per series: the points of a series are
//!   summed in time order from the first one in the given data (so a reader sees a counter that
//!   starts at its first point read; `rate` and `increase` are exact, absolute totals are as of
//!   the read's start). A delta histogram whose bounds change restarts from that point (a
//!   counter reset). Delta exponential histograms are rejected ([`Rejected`]): merging their
//!   changing scales is not supported.
//!
//! [`otlp_name_regex`] goes the other way for queries: a Prometheus metric name to a regular
//! expression over OTLP metric names, so the store can select by name.

use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar as OtlpExemplar, ExponentialHistogramDataPoint, HistogramDataPoint, Metric,
    MetricsData, NumberDataPoint, exemplar, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::StoreError;
use crate::api::LabelMatcher;
use crate::metrics::{Matchers, label_string};

/// A label set: `(name, value)` pairs sorted by name, names unique, `__name__` included.
pub type Labels = Vec<(String, String)>;

/// Bit pattern of Prometheus' staleness marker (a NaN that marks the end of a series).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// The staleness marker as a float.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// Whether `v` is the staleness marker (not any NaN).
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// Prometheus metric type of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PromType {
    /// A monotonic counter (name ends with `_total`).
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram: classic (`_bucket`, `_sum`, `_count`) and/or native.
    Histogram,
    /// A summary (`{quantile}`, `_sum`, `_count`).
    Summary,
}

impl PromType {
    /// The name as in `# TYPE` lines and the metadata API.
    pub fn as_str(self) -> &'static str {
        match self {
            PromType::Counter => "counter",
            PromType::Gauge => "gauge",
            PromType::Histogram => "histogram",
            PromType::Summary => "summary",
        }
    }
}

/// One float sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Unix milliseconds.
    pub t_ms: i64,
    /// The value ([`stale_nan`] for a staleness marker).
    pub value: f64,
}

/// An exemplar, as OpenMetrics and remote write carry it.
#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar {
    /// `trace_id`, `span_id` (lowercase hex, when set) and the filtered attributes, sorted.
    pub labels: Labels,
    /// The measured value.
    pub value: f64,
    /// Unix milliseconds.
    pub t_ms: i64,
}

/// A series of float samples.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatSeries {
    /// Labels, `__name__` included (e.g. `http_server_request_duration_seconds_bucket`).
    pub labels: Labels,
    /// Samples, oldest first, one per timestamp.
    pub samples: Vec<Sample>,
    /// Exemplars of this series, oldest first.
    pub exemplars: Vec<Exemplar>,
}

/// A run of consecutive buckets of a native histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketSpan {
    /// Gap to the previous span's end (for the first span: the first bucket's index).
    pub offset: i32,
    /// Number of buckets in the run.
    pub length: u32,
}

/// A native (sparse, exponential) histogram sample, in the layout of Prometheus' remote write.
///
/// Bucket index `i` of schema `s` covers `(2^((i-1)·2^-s), 2^(i·2^-s)]` (negative buckets: the
/// same range of absolute values). Counts are integers, delta-encoded within each side.
#[derive(Clone, Debug, PartialEq)]
pub struct NativeHistogram {
    /// Unix milliseconds.
    pub t_ms: i64,
    /// Resolution, -4..=8.
    pub schema: i32,
    /// Observations with absolute value at most this fall into the zero bucket.
    pub zero_threshold: f64,
    /// Observations in the zero bucket.
    pub zero_count: u64,
    /// All observations.
    pub count: u64,
    /// Sum of observations (NaN when unknown).
    pub sum: f64,
    /// Positive bucket runs.
    pub positive_spans: Vec<BucketSpan>,
    /// Positive bucket counts, each the difference to the previous bucket's count.
    pub positive_deltas: Vec<i64>,
    /// Negative bucket runs.
    pub negative_spans: Vec<BucketSpan>,
    /// Negative bucket counts, delta-encoded.
    pub negative_deltas: Vec<i64>,
    /// Whether the producer restarted counting (OTLP start time moved).
    pub counter_reset: bool,
}

impl NativeHistogram {
    /// The positive buckets as `(index, count)`, ascending index, zero counts left out.
    pub fn positive_buckets(&self) -> Vec<(i32, u64)> {
        expand_buckets(&self.positive_spans, &self.positive_deltas)
    }

    /// The negative buckets as `(index, count)`, ascending index (ascending absolute value).
    pub fn negative_buckets(&self) -> Vec<(i32, u64)> {
        expand_buckets(&self.negative_spans, &self.negative_deltas)
    }
}

fn expand_buckets(spans: &[BucketSpan], deltas: &[i64]) -> Vec<(i32, u64)> {
    let mut out = Vec::with_capacity(deltas.len());
    let mut index = 0i32;
    let mut count = 0i64;
    let mut deltas = deltas.iter();
    for (n, span) in spans.iter().enumerate() {
        index = if n == 0 { span.offset } else { index.saturating_add(span.offset) };
        for _ in 0..span.length {
            let Some(d) = deltas.next() else { return out };
            count = count.saturating_add(*d);
            if count > 0 {
                out.push((index, count as u64));
            }
            index = index.saturating_add(1);
        }
    }
    out
}

/// A series of native histogram samples.
#[derive(Clone, Debug, PartialEq)]
pub struct NativeSeries {
    /// Labels, `__name__` included (the family name, no suffix).
    pub labels: Labels,
    /// Samples, oldest first.
    pub histograms: Vec<NativeHistogram>,
    /// Exemplars, oldest first.
    pub exemplars: Vec<Exemplar>,
}

/// A metric family: every series of one Prometheus metric name and type.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// The name samples carry (counters: with `_total`; histograms and summaries: without the
    /// `_bucket`/`_sum`/`_count` suffixes).
    pub name: String,
    /// The type.
    pub kind: PromType,
    /// The OTLP description.
    pub help: String,
    /// The Prometheus unit (`seconds`, `bytes`, ...; empty when none).
    pub unit: String,
    /// Float series (for histograms and summaries their `_bucket`, `_sum`, `_count` and
    /// `{quantile}` series), sorted by labels.
    pub series: Vec<FloatSeries>,
    /// Native histogram series (exponential histograms), sorted by labels.
    pub native: Vec<NativeSeries>,
}

impl Family {
    /// The family name as OpenMetrics writes it in `# TYPE` lines (counters without `_total`).
    pub fn openmetrics_name(&self) -> &str {
        match self.kind {
            PromType::Counter => self.name.strip_suffix("_total").unwrap_or(&self.name),
            _ => &self.name,
        }
    }
}

/// An OTLP metric left out of the view, with the reason.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    /// The OTLP metric name.
    pub metric: String,
    /// Why.
    pub reason: String,
}

/// Choices of the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewOptions {
    /// Exponential histograms as native histograms (`true`: remote write, PromQL) or as the
    /// classic-bucket fallback (`false`: the text exposition formats).
    pub native_histograms: bool,
    /// Emit a `target_info` family for resources with attributes beyond job and instance.
    pub target_info: bool,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions { native_histograms: true, target_info: true }
    }
}

/// The result of [`prometheus_view`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PromView {
    /// Families, sorted by name; families of the same name and type from several resources,
    /// scopes or OTLP metrics are merged.
    pub families: Vec<Family>,
    /// OTLP metrics that have no Prometheus form, or whose name clashes with a family of
    /// another type.
    pub rejected: Vec<Rejected>,
}

/// The Prometheus view of `data`. See the module documentation for the rules.
pub fn prometheus_view(data: &MetricsData, opts: &ViewOptions) -> PromView {
    view(data, opts, &[])
}

/// The view of the OTLP series in `data` whose [`series_labels`] match every matcher in
/// `labels` (a missing label is `""`); the default of [`crate::Reader::find_metrics_view`]. A bad
/// regular expression is [`StoreError::InvalidQuery`].
pub fn matching_view(data: &MetricsData, labels: &[LabelMatcher], opts: &ViewOptions) -> Result<PromView, StoreError> {
    if labels.is_empty() {
        return Ok(prometheus_view(data, opts));
    }
    let matchers = Matchers::compile(labels)?;
    let mut data = data.clone();
    retain_view_labels(&mut data, &matchers);
    Ok(prometheus_view(&data, opts))
}

/// Keeps the points whose series' view labels match every matcher (what [`matching_view`]
/// keeps) and drops emptied metrics, scopes and resources.
pub(crate) fn retain_view_labels(data: &mut MetricsData, matchers: &Matchers) {
    for rm in &mut data.resource_metrics {
        let resource = rm.resource.as_ref();
        for sm in &mut rm.scope_metrics {
            let labeler = SeriesLabeler::new(resource, sm.scope.as_ref());
            let keep = |attrs: &[KeyValue]| matchers.matches_labels(&labeler.labels(attrs));
            for m in &mut sm.metrics {
                match &mut m.data {
                    Some(Data::Gauge(g)) => g.data_points.retain(|p| keep(&p.attributes)),
                    Some(Data::Sum(s)) => s.data_points.retain(|p| keep(&p.attributes)),
                    Some(Data::Histogram(h)) => h.data_points.retain(|p| keep(&p.attributes)),
                    Some(Data::ExponentialHistogram(h)) => h.data_points.retain(|p| keep(&p.attributes)),
                    Some(Data::Summary(s)) => s.data_points.retain(|p| keep(&p.attributes)),
                    None => {}
                }
            }
            sm.metrics.retain(|m| crate::metrics::point_count(m) > 0);
        }
        rm.scope_metrics.retain(|sm| !sm.metrics.is_empty());
    }
    data.resource_metrics.retain(|rm| !rm.scope_metrics.is_empty());
}

/// The labels every Prometheus series of an OTLP series has: its attributes' labels, then the
/// scope's and the resource's (`job`, `instance`), later ones winning, empty values left out.
/// The view's series add `__name__` and, for buckets and quantiles, `le` or `quantile`.
pub fn series_labels(resource: Option<&Resource>, scope: Option<&InstrumentationScope>, attrs: &[KeyValue]) -> Labels {
    SeriesLabeler::new(resource, scope).labels(attrs)
}

/// [`series_labels`] for many series of one resource and scope.
pub(crate) struct SeriesLabeler {
    resource: Labels,
    scope: Labels,
}

impl SeriesLabeler {
    pub(crate) fn new(resource: Option<&Resource>, scope: Option<&InstrumentationScope>) -> Self {
        SeriesLabeler { resource: resource_labels(resource).labels, scope: scope_labels(scope) }
    }

    pub(crate) fn labels(&self, attrs: &[KeyValue]) -> Labels {
        Ctx { resource: &self.resource, scope: &self.scope, defaults: &[] }.base(attrs)
    }
}

/// As [`prometheus_view`], for data whose points may leave out their attributes: a point without
/// any has those of its series, `series_attrs[i]` for the `i`-th metric of `data` (counted over
/// resources and scopes in order; none past the end of the list).
pub(crate) fn view(data: &MetricsData, opts: &ViewOptions, series_attrs: &[&[KeyValue]]) -> PromView {
    let mut metric_index = 0usize;
    let mut families: BTreeMap<String, FamilyAcc> = BTreeMap::new();
    let mut rejected = Vec::new();
    let mut target_info: BTreeMap<Labels, Vec<i64>> = BTreeMap::new();
    for rm in &data.resource_metrics {
        let resource = resource_labels(rm.resource.as_ref());
        let wants_times = opts.target_info && !resource.info.is_empty();
        let mut times = Vec::new();
        for sm in &rm.scope_metrics {
            let scope = scope_labels(sm.scope.as_ref());
            for metric in &sm.metrics {
                let defaults = series_attrs.get(metric_index).copied().unwrap_or_default();
                metric_index += 1;
                let ctx = Ctx { resource: &resource.labels, scope: &scope, defaults };
                match convert_metric(metric, &ctx, opts) {
                    Ok(fam) => {
                        if wants_times {
                            collect_times(&fam, &mut times);
                        }
                        merge_family(&mut families, fam, &metric.name, &mut rejected);
                    }
                    Err(reason) => rejected.push(Rejected { metric: metric.name.clone(), reason }),
                }
            }
        }
        if wants_times && !times.is_empty() {
            let mut labels = resource.info.clone();
            labels.extend(resource.labels.iter().cloned());
            labels.push(("__name__".to_string(), "target_info".to_string()));
            let labels = finish_labels(labels);
            target_info.entry(labels).or_default().extend(times);
        }
    }
    if !target_info.is_empty() {
        let series = target_info
            .into_iter()
            .map(|(labels, mut times)| {
                times.sort_unstable();
                times.dedup();
                let samples = times.into_iter().map(|t_ms| Sample { t_ms, value: 1.0 }).collect();
                FloatSeries { labels, samples, exemplars: Vec::new() }
            })
            .collect();
        let fam = Family {
            name: "target_info".to_string(),
            kind: PromType::Gauge,
            help: "Target metadata".to_string(),
            unit: String::new(),
            series,
            native: Vec::new(),
        };
        merge_family(&mut families, fam, "target_info", &mut rejected);
    }
    let mut families: Vec<Family> = families.into_values().map(|f| f.fam).collect();
    for f in &mut families {
        f.series.sort_by(|a, b| a.labels.cmp(&b.labels));
        f.native.sort_by(|a, b| a.labels.cmp(&b.labels));
    }
    PromView { families, rejected }
}

fn collect_times(fam: &Family, times: &mut Vec<i64>) {
    for s in &fam.series {
        times.extend(s.samples.iter().map(|s| s.t_ms));
    }
    for s in &fam.native {
        times.extend(s.histograms.iter().map(|h| h.t_ms));
    }
}

/// A family being assembled, with its series indexed by a hash of their labels.
struct FamilyAcc {
    fam: Family,
    series_index: HashMap<u64, Vec<usize>>,
    native_index: HashMap<u64, Vec<usize>>,
}

fn merge_family(
    families: &mut BTreeMap<String, FamilyAcc>,
    fam: Family,
    otlp_name: &str,
    rejected: &mut Vec<Rejected>,
) {
    let acc = families.entry(fam.name.clone()).or_insert_with(|| FamilyAcc {
        fam: Family { series: Vec::new(), native: Vec::new(), help: String::new(), ..fam.clone_meta() },
        series_index: HashMap::new(),
        native_index: HashMap::new(),
    });
    let have = &mut acc.fam;
    if have.kind != fam.kind {
        rejected.push(Rejected {
            metric: otlp_name.to_string(),
            reason: format!(
                "prometheus name {} is already a {}, this metric would make it a {}",
                fam.name,
                have.kind.as_str(),
                fam.kind.as_str()
            ),
        });
        return;
    }
    if have.help.is_empty() {
        have.help = fam.help;
    }
    merge_series(
        &mut have.series,
        &mut acc.series_index,
        fam.series,
        |s| &s.labels,
        |a, b| {
            a.samples.extend(b.samples);
            a.samples.sort_by_key(|s| s.t_ms);
            a.samples.dedup_by_key(|s| s.t_ms);
            a.exemplars.extend(b.exemplars);
        },
    );
    merge_series(
        &mut have.native,
        &mut acc.native_index,
        fam.native,
        |s| &s.labels,
        |a, b| {
            a.histograms.extend(b.histograms);
            a.histograms.sort_by_key(|h| h.t_ms);
            a.histograms.dedup_by_key(|h| h.t_ms);
            a.exemplars.extend(b.exemplars);
        },
    );
}

impl Family {
    /// The family without its series.
    fn clone_meta(&self) -> Family {
        Family {
            name: self.name.clone(),
            kind: self.kind,
            help: self.help.clone(),
            unit: self.unit.clone(),
            series: Vec::new(),
            native: Vec::new(),
        }
    }
}

fn labels_hash(labels: &Labels) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(labels)
}

/// Appends `more` to `have`, merging series with equal labels (two OTLP series can map to one
/// Prometheus series, e.g. when they differ only in scope attributes). `index` lists the series
/// of `have` by the hash of their labels.
fn merge_series<T>(
    have: &mut Vec<T>,
    index: &mut HashMap<u64, Vec<usize>>,
    more: Vec<T>,
    labels: impl Fn(&T) -> &Labels,
    join: impl Fn(&mut T, T),
) {
    for s in more {
        let slots = index.entry(labels_hash(labels(&s))).or_default();
        match slots.iter().copied().find(|&i| labels(&have[i]) == labels(&s)) {
            Some(i) => join(&mut have[i], s),
            None => {
                slots.push(have.len());
                have.push(s);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Names and units
// ---------------------------------------------------------------------------------------------

/// Abbreviated OTLP (UCUM) units and their Prometheus words.
const UNIT_WORDS: &[(&str, &str)] = &[
    ("d", "days"),
    ("h", "hours"),
    ("min", "minutes"),
    ("s", "seconds"),
    ("ms", "milliseconds"),
    ("us", "microseconds"),
    ("ns", "nanoseconds"),
    ("By", "bytes"),
    ("KiBy", "kibibytes"),
    ("MiBy", "mebibytes"),
    ("GiBy", "gibibytes"),
    ("TiBy", "tibibytes"),
    ("KBy", "kilobytes"),
    ("MBy", "megabytes"),
    ("GBy", "gigabytes"),
    ("TBy", "terabytes"),
    ("m", "meters"),
    ("V", "volts"),
    ("A", "amperes"),
    ("J", "joules"),
    ("W", "watts"),
    ("g", "grams"),
    ("Cel", "celsius"),
    ("Hz", "hertz"),
    ("%", "percent"),
];

/// Units after `/`, singular.
const PER_UNIT_WORDS: &[(&str, &str)] =
    &[("s", "second"), ("m", "minute"), ("h", "hour"), ("d", "day"), ("w", "week"), ("mo", "month"), ("y", "year")];

/// Sanitizes a metric name: invalid characters to `_`, runs of `_` to one, leading digit
/// prefixed with `_`.
pub fn sanitize_metric_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() || c == ':' || c == '_' { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Sanitizes an attribute key into a label name: invalid characters to `_`, a leading digit
/// prefixed with `key_`, a single leading `_` with `key`. Empty keys give `None`.
pub fn sanitize_label_name(key: &str) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    let mut out: String = key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "key_");
    } else if out.starts_with('_') && !out.starts_with("__") {
        out.insert_str(0, "key");
    }
    Some(out)
}

/// The Prometheus unit of an OTLP unit (`ms` -> `milliseconds`, `By/s` -> `bytes_per_second`,
/// `{request}` -> ``, `1` -> `ratio` for gauges only). Unknown units are kept, sanitized.
pub fn prometheus_unit(unit: &str, gauge: bool) -> String {
    let unit = strip_braces(unit);
    let unit = unit.trim();
    if unit == "1" {
        return if gauge { "ratio".to_string() } else { String::new() };
    }
    let (main, per) = match unit.split_once('/') {
        Some((m, p)) => (m.trim(), Some(p.trim())),
        None => (unit, None),
    };
    let word = |u: &str, table: &[(&str, &str)]| -> String {
        table.iter().find(|(a, _)| *a == u).map_or_else(|| sanitize_unit_word(u), |(_, w)| w.to_string())
    };
    let main = if main == "1" { String::new() } else { word(main, UNIT_WORDS) };
    let per = per.map(|p| word(p, PER_UNIT_WORDS)).filter(|p| !p.is_empty());
    match (main.is_empty(), per) {
        (_, None) => main,
        (true, Some(p)) => format!("per_{p}"),
        (false, Some(p)) => format!("{main}_per_{p}"),
    }
}

fn strip_braces(unit: &str) -> String {
    let mut out = String::with_capacity(unit.len());
    let mut depth = 0usize;
    for c in unit.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn sanitize_unit_word(u: &str) -> String {
    let s = sanitize_metric_name(u);
    s.trim_matches('_').to_string()
}

/// Whether the `_`-separated tokens of `name` contain those of `unit` consecutively.
fn contains_tokens(name: &str, unit: &str) -> bool {
    let n: Vec<&str> = name.split('_').collect();
    let u: Vec<&str> = unit.split('_').collect();
    !u.is_empty() && n.windows(u.len()).any(|w| w == u.as_slice())
}

/// The Prometheus name of an OTLP metric of this type (before `_bucket`/`_sum`/`_count`).
pub fn prometheus_name(otlp_name: &str, unit: &str, kind: PromType, gauge_unit_rules: bool) -> String {
    let mut name = sanitize_metric_name(otlp_name);
    let counter = kind == PromType::Counter;
    if counter && let Some(stripped) = name.strip_suffix("_total") {
        name = stripped.to_string();
    }
    let unit = prometheus_unit(unit, gauge_unit_rules);
    if !unit.is_empty() && !contains_tokens(&name, &unit) {
        if !name.ends_with('_') {
            name.push('_');
        }
        name.push_str(&unit);
    }
    if counter {
        name.push_str("_total");
    }
    name
}

/// Known unit words that may end a Prometheus name (see [`UNIT_WORDS`]).
fn is_unit_word(w: &str) -> bool {
    w == "ratio" || UNIT_WORDS.iter().any(|(_, word)| *word == w)
}

/// A regular expression (`regex` syntax, matched whole) over OTLP metric names that matches
/// at least every OTLP name whose Prometheus view has the metric name `prom_name`. Callers
/// push it down to the store as a `__name__` matcher and check the exact name afterwards.
///
/// Each `_` may stand for any run of characters Prometheus does not allow; the suffixes the
/// view adds (`_bucket`/`_sum`/`_count`, `_total`, a unit, `_per_<unit>`) are optional; when no
/// known unit word ends the name, its last word is optional (an unknown unit).
/// `target_info` comes from every resource, so it matches every name.
pub fn otlp_name_regex(prom_name: &str) -> String {
    if prom_name == "target_info" {
        return ".*".to_string();
    }
    let mut tokens: Vec<&str> = prom_name.split('_').collect();
    let mut optional: Vec<Vec<&str>> = Vec::new();
    fn peel<'a>(tokens: &mut Vec<&'a str>, n: usize, optional: &mut Vec<Vec<&'a str>>) {
        let rest = tokens.split_off(tokens.len() - n);
        optional.push(rest);
    }
    let real_len = |t: &[&str]| t.iter().filter(|s| !s.is_empty()).count();
    if tokens.len() > 1 && matches!(tokens.last(), Some(&("bucket" | "sum" | "count"))) {
        peel(&mut tokens, 1, &mut optional);
    }
    if tokens.len() > 1 && tokens.last() == Some(&"total") {
        peel(&mut tokens, 1, &mut optional);
    }
    let mut unit_found = false;
    if tokens.len() > 3
        && tokens[tokens.len() - 2] == "per"
        && PER_UNIT_WORDS.iter().any(|(_, w)| Some(w) == tokens.last())
    {
        peel(&mut tokens, 2, &mut optional);
        unit_found = true;
    }
    if real_len(&tokens) > 1 && tokens.last().is_some_and(|w| is_unit_word(w)) {
        peel(&mut tokens, 1, &mut optional);
        unit_found = true;
    }
    if !unit_found && real_len(&tokens) > 1 {
        peel(&mut tokens, 1, &mut optional);
    }
    let mut re = String::new();
    let core = tokens.join("_");
    // A leading `_` before a digit was added by the view.
    let core = match core.strip_prefix('_') {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => rest.to_string(),
        _ => core,
    };
    push_name_regex(&mut re, &core);
    for group in optional.iter().rev() {
        re.push_str("(?:");
        push_name_regex(&mut re, &format!("_{}", group.join("_")));
        re.push_str(")?");
    }
    re
}

fn push_name_regex(re: &mut String, part: &str) {
    for c in part.chars() {
        if c == '_' {
            re.push_str("[^a-zA-Z0-9:]+");
        } else {
            re.push_str(&regex_escape(c));
        }
    }
}

fn regex_escape(c: char) -> String {
    if c.is_ascii_alphanumeric() { c.to_string() } else { format!("\\x{{{:x}}}", c as u32) }
}

/// Formats a float as Prometheus does in label values and the text format (Go's
/// `strconv.FormatFloat(v, 'f', -1, 64)`, with `+Inf`, `-Inf`, `NaN`).
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{v}")
    }
}

// ---------------------------------------------------------------------------------------------
// Labels
// ---------------------------------------------------------------------------------------------

struct ResourceLabels {
    /// `job` and `instance`.
    labels: Labels,
    /// Every other resource attribute, sanitized (for `target_info`).
    info: Labels,
}

fn attr_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| label_string(kv.value.as_ref()).into_owned())
        .filter(|s| !s.is_empty())
}

fn resource_labels(resource: Option<&Resource>) -> ResourceLabels {
    let attrs = resource.map_or(&[][..], |r| &r.attributes[..]);
    let mut labels = Vec::new();
    let name = attr_str(attrs, "service.name");
    let namespace = attr_str(attrs, "service.namespace");
    match (namespace, name) {
        (Some(ns), Some(n)) => labels.push(("job".to_string(), format!("{ns}/{n}"))),
        (None, Some(n)) => labels.push(("job".to_string(), n)),
        _ => {}
    }
    if let Some(i) = attr_str(attrs, "service.instance.id") {
        labels.push(("instance".to_string(), i));
    }
    let rest: Vec<&KeyValue> = attrs
        .iter()
        .filter(|kv| !matches!(kv.key.as_str(), "service.name" | "service.namespace" | "service.instance.id"))
        .collect();
    let mut info = attribute_labels(rest);
    info.retain(|(k, _)| k != "job" && k != "instance");
    ResourceLabels { labels, info }
}

fn scope_labels(scope: Option<&InstrumentationScope>) -> Labels {
    let mut out = Vec::new();
    if let Some(s) = scope {
        if !s.name.is_empty() {
            out.push(("otel_scope_name".to_string(), s.name.clone()));
        }
        if !s.version.is_empty() {
            out.push(("otel_scope_version".to_string(), s.version.clone()));
        }
    }
    out
}

/// Attributes as labels: sanitized names, colliding names' values joined with `;` in the
/// order of the original keys. Sorted by label name.
fn attribute_labels<'a>(attrs: impl IntoIterator<Item = &'a KeyValue>) -> Labels {
    let mut by_label: BTreeMap<String, Vec<(&str, String)>> = BTreeMap::new();
    for kv in attrs {
        let Some(name) = sanitize_label_name(&kv.key) else { continue };
        by_label.entry(name).or_default().push((&kv.key, label_string(kv.value.as_ref()).into_owned()));
    }
    by_label
        .into_iter()
        .map(|(name, mut vals)| {
            vals.sort_by(|a, b| a.0.cmp(b.0));
            let value = vals.into_iter().map(|(_, v)| v).collect::<Vec<_>>().join(";");
            (name, value)
        })
        .collect()
}

/// Sorts by name; for duplicate names the last one wins.
fn finish_labels(mut labels: Labels) -> Labels {
    labels.reverse();
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    labels.dedup_by(|a, b| a.0 == b.0);
    labels.retain(|(_, v)| !v.is_empty());
    labels
}

struct Ctx<'a> {
    resource: &'a Labels,
    scope: &'a Labels,
    /// Attributes of a point that has none (see [`view`]).
    defaults: &'a [KeyValue],
}

impl Ctx<'_> {
    /// A point's attributes: its own, or the series' when it has none.
    fn attrs<'b>(&'b self, own: &'b [KeyValue]) -> &'b [KeyValue] {
        if own.is_empty() { self.defaults } else { own }
    }

    /// Labels of a point: its attributes, then scope, then resource labels (later ones win),
    /// then `__name__`, plus any `extra` (`le`, `quantile`).
    fn labels(&self, attrs: &[KeyValue], name: &str, extra: Option<(&str, String)>) -> Labels {
        with_labels(&self.base(attrs), name, extra)
    }

    /// The labels shared by every series of points with these attributes: attributes, scope
    /// and resource labels, finished (sorted, later ones win, empty values left out). Computed
    /// once per attribute set, since building labels costs far more than a sample.
    fn base(&self, attrs: &[KeyValue]) -> Labels {
        let mut labels = attribute_labels(attrs);
        labels.extend(self.scope.iter().cloned());
        labels.extend(self.resource.iter().cloned());
        finish_labels(labels)
    }
}

/// `base` plus `extra` and `__name__`, each winning over a label of the same name; as
/// [`finish_labels`] over the concatenation, an empty value removes the label.
fn with_labels(base: &Labels, name: &str, extra: Option<(&str, String)>) -> Labels {
    let mut labels = Labels::with_capacity(base.len() + 2);
    labels.extend(base.iter().cloned());
    if let Some((k, v)) = extra {
        set_label(&mut labels, k, v);
    }
    set_label(&mut labels, "__name__", name.to_string());
    labels
}

/// Sets label `k` of a sorted label set (removes it when `v` is empty).
fn set_label(labels: &mut Labels, k: &str, v: String) {
    match labels.binary_search_by(|(n, _)| n.as_str().cmp(k)) {
        Ok(i) if v.is_empty() => {
            labels.remove(i);
        }
        Ok(i) => labels[i].1 = v,
        Err(_) if v.is_empty() => {}
        Err(i) => labels.insert(i, (k.to_string(), v)),
    }
}

fn ns_to_ms(ns: u64) -> i64 {
    (ns / 1_000_000) as i64
}

fn convert_exemplar(e: &OtlpExemplar) -> Exemplar {
    let mut labels = attribute_labels(&e.filtered_attributes);
    if !e.trace_id.is_empty() {
        labels.push(("trace_id".to_string(), hex::encode(&e.trace_id)));
    }
    if !e.span_id.is_empty() {
        labels.push(("span_id".to_string(), hex::encode(&e.span_id)));
    }
    let value = match e.value {
        Some(exemplar::Value::AsDouble(d)) => d,
        Some(exemplar::Value::AsInt(i)) => i as f64,
        None => 0.0,
    };
    Exemplar { labels: finish_labels(labels), value, t_ms: ns_to_ms(e.time_unix_nano) }
}

/// Bit 0 of a point's `flags`: no recorded value.
const FLAG_NO_RECORDED_VALUE: u32 = 1;

// ---------------------------------------------------------------------------------------------
// Metric conversion
// ---------------------------------------------------------------------------------------------

/// Groups points by their attribute set (sorted by key), keeping first-seen order, each group
/// sorted by time.
fn group_points<'q, P>(
    points: &'q [P],
    attrs: impl Fn(&'q P) -> &'q [KeyValue],
    time: impl Fn(&P) -> u64,
) -> Vec<Vec<&'q P>> {
    // The common case (one series per OTLP metric, as the store returns them): every point
    // carries the same attribute list, so there is one group and no key to build per point.
    let same = |a: &[KeyValue], b: &[KeyValue]| std::ptr::eq(a, b) || a == b;
    if let Some(first) = points.first()
        && points.iter().all(|p| same(attrs(p), attrs(first)))
    {
        let mut g: Vec<&P> = points.iter().collect();
        g.sort_by_key(|p| time(p));
        return vec![g];
    }
    let mut groups: Vec<(Vec<u8>, Vec<&P>)> = Vec::new();
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    for p in points {
        let mut kvs: Vec<&KeyValue> = attrs(p).iter().collect();
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        let mut key = Vec::new();
        for kv in kvs {
            key.extend_from_slice(kv.key.as_bytes());
            key.push(0);
            key.extend_from_slice(label_string(kv.value.as_ref()).as_bytes());
            key.push(0);
        }
        match index.get(&key) {
            Some(&i) => groups[i].1.push(p),
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key, vec![p]));
            }
        }
    }
    groups
        .into_iter()
        .map(|(_, mut g)| {
            g.sort_by_key(|p| time(p));
            g
        })
        .collect()
}

fn convert_metric(metric: &Metric, ctx: &Ctx<'_>, opts: &ViewOptions) -> Result<Family, String> {
    let Some(data) = &metric.data else {
        return Err("metric has no data".to_string());
    };
    let delta = |t: i32| t == AggregationTemporality::Delta as i32;
    let fam = |kind: PromType, gauge_units: bool| Family {
        name: prometheus_name(&metric.name, &metric.unit, kind, gauge_units),
        kind,
        help: metric.description.clone(),
        unit: prometheus_unit(&metric.unit, gauge_units),
        series: Vec::new(),
        native: Vec::new(),
    };
    match data {
        Data::Gauge(g) => {
            let mut f = fam(PromType::Gauge, true);
            f.series = number_series(&g.data_points, ctx, &f.name, false);
            Ok(f)
        }
        Data::Sum(s) => {
            let kind = if s.is_monotonic { PromType::Counter } else { PromType::Gauge };
            let mut f = fam(kind, false);
            f.series = number_series(&s.data_points, ctx, &f.name, delta(s.aggregation_temporality));
            Ok(f)
        }
        Data::Histogram(h) => {
            let mut f = fam(PromType::Histogram, false);
            f.series = histogram_series(&h.data_points, ctx, &f.name, delta(h.aggregation_temporality));
            Ok(f)
        }
        Data::ExponentialHistogram(h) => {
            if delta(h.aggregation_temporality) {
                return Err("delta exponential histograms are not converted to cumulative".to_string());
            }
            let mut f = fam(PromType::Histogram, false);
            if opts.native_histograms {
                f.native = native_series(&h.data_points, ctx, &f.name)?;
            } else {
                f.series = exp_fallback_series(&h.data_points, ctx, &f.name);
            }
            Ok(f)
        }
        Data::Summary(s) => {
            let mut f = fam(PromType::Summary, false);
            let mut out: BTreeMap<Labels, FloatSeries> = BTreeMap::new();
            for group in group_points(&s.data_points, |p| ctx.attrs(&p.attributes), |p| p.time_unix_nano) {
                for p in group {
                    let t_ms = ns_to_ms(p.time_unix_nano);
                    let stale = p.flags & FLAG_NO_RECORDED_VALUE != 0;
                    let v = |v: f64| if stale { stale_nan() } else { v };
                    for q in &p.quantile_values {
                        let labels =
                            ctx.labels(ctx.attrs(&p.attributes), &f.name, Some(("quantile", format_float(q.quantile))));
                        push_sample(&mut out, labels, t_ms, v(q.value), None);
                    }
                    let labels = ctx.labels(ctx.attrs(&p.attributes), &format!("{}_sum", f.name), None);
                    push_sample(&mut out, labels, t_ms, v(p.sum), None);
                    let labels = ctx.labels(ctx.attrs(&p.attributes), &format!("{}_count", f.name), None);
                    push_sample(&mut out, labels, t_ms, v(p.count as f64), None);
                }
            }
            f.series = out.into_values().collect();
            Ok(f)
        }
    }
}

fn push_sample(out: &mut BTreeMap<Labels, FloatSeries>, labels: Labels, t_ms: i64, value: f64, ex: Option<Exemplar>) {
    let s =
        out.entry(labels.clone()).or_insert_with(|| FloatSeries { labels, samples: Vec::new(), exemplars: Vec::new() });
    // Two points in the same millisecond: the later one wins, as a scrape would see it.
    match s.samples.last_mut() {
        Some(last) if last.t_ms == t_ms => last.value = value,
        _ => s.samples.push(Sample { t_ms, value }),
    }
    s.exemplars.extend(ex);
}

fn number_value(p: &NumberDataPoint) -> f64 {
    match p.value {
        Some(number_data_point::Value::AsDouble(d)) => d,
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        None => 0.0,
    }
}

fn number_series(points: &[NumberDataPoint], ctx: &Ctx<'_>, name: &str, delta: bool) -> Vec<FloatSeries> {
    let mut out: BTreeMap<Labels, FloatSeries> = BTreeMap::new();
    for group in group_points(points, |p| ctx.attrs(&p.attributes), |p| p.time_unix_nano) {
        let Some(first) = group.first() else { continue };
        // Points of a group have the same attribute set, so the same labels.
        let labels = ctx.labels(ctx.attrs(&first.attributes), name, None);
        let s = out.entry(labels.clone()).or_insert_with(|| FloatSeries {
            labels,
            samples: Vec::with_capacity(group.len()),
            exemplars: Vec::new(),
        });
        let mut total = 0.0;
        for p in group {
            let t_ms = ns_to_ms(p.time_unix_nano);
            let value = if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
                stale_nan()
            } else if delta {
                total += number_value(p);
                total
            } else {
                number_value(p)
            };
            match s.samples.last_mut() {
                Some(last) if last.t_ms == t_ms => last.value = value,
                _ => s.samples.push(Sample { t_ms, value }),
            }
            s.exemplars.extend(p.exemplars.iter().map(convert_exemplar));
        }
    }
    out.into_values().collect()
}

fn histogram_series(points: &[HistogramDataPoint], ctx: &Ctx<'_>, name: &str, delta: bool) -> Vec<FloatSeries> {
    let mut out: BTreeMap<Labels, FloatSeries> = BTreeMap::new();
    let bucket_name = format!("{name}_bucket");
    let sum_name = format!("{name}_sum");
    let count_name = format!("{name}_count");
    for group in group_points(points, |p| ctx.attrs(&p.attributes), |p| p.time_unix_nano) {
        let Some(first) = group.first() else { continue };
        // The group's series, found by a small key rather than by their labels.
        let base = ctx.base(ctx.attrs(&first.attributes));
        let mut local = GroupSeries::default();
        let (mut sum_slot, mut count_slot) = (None, None);
        // Running totals of a delta series: bounds, bucket counts, count, sum.
        let mut acc: Option<(Vec<f64>, Vec<u64>, u64, f64)> = None;
        for p in group {
            let t_ms = ns_to_ms(p.time_unix_nano);
            let stale = p.flags & FLAG_NO_RECORDED_VALUE != 0;
            let (bounds, counts, count, sum) = if delta && !stale {
                let same = acc.as_ref().is_some_and(|a| a.0 == p.explicit_bounds && a.1.len() == p.bucket_counts.len());
                if same && let Some(a) = acc.as_mut() {
                    for (c, d) in a.1.iter_mut().zip(&p.bucket_counts) {
                        *c = c.saturating_add(*d);
                    }
                    a.2 = a.2.saturating_add(p.count);
                    a.3 += p.sum.unwrap_or(0.0);
                } else {
                    acc = Some((p.explicit_bounds.clone(), p.bucket_counts.clone(), p.count, p.sum.unwrap_or(0.0)));
                }
                match &acc {
                    Some(a) => (a.0.as_slice(), a.1.as_slice(), a.2, a.3),
                    None => (&[][..], &[][..], 0, 0.0),
                }
            } else {
                (p.explicit_bounds.as_slice(), p.bucket_counts.as_slice(), p.count, p.sum.unwrap_or(f64::NAN))
            };
            let v = |v: f64| if stale { stale_nan() } else { v };
            let exemplars: Vec<Exemplar> = p.exemplars.iter().map(convert_exemplar).collect();
            let mut cumulative = 0u64;
            for (i, bound) in bounds.iter().enumerate() {
                cumulative = cumulative.saturating_add(counts.get(i).copied().unwrap_or(0));
                let slot = local.bucket(*bound, &base, &bucket_name);
                let lower = if i == 0 { f64::NEG_INFINITY } else { bounds[i - 1] };
                let ex = exemplars.iter().find(|e| e.value > lower && e.value <= *bound).cloned();
                local.push(slot, t_ms, v(cumulative as f64), ex);
            }
            let slot = local.bucket(f64::INFINITY, &base, &bucket_name);
            let last = bounds.last().copied().unwrap_or(f64::NEG_INFINITY);
            let ex = exemplars.iter().find(|e| e.value > last).cloned();
            local.push(slot, t_ms, v(count as f64), ex);
            if p.sum.is_some() || delta {
                let slot = *sum_slot.get_or_insert_with(|| local.add(with_labels(&base, &sum_name, None)));
                local.push(slot, t_ms, v(sum), None);
            }
            let slot = *count_slot.get_or_insert_with(|| local.add(with_labels(&base, &count_name, None)));
            local.push(slot, t_ms, v(count as f64), None);
        }
        local.merge_into(&mut out);
    }
    out.into_values().collect()
}

/// The float series of one group of points (one attribute set), each with distinct labels.
#[derive(Default)]
struct GroupSeries {
    series: Vec<FloatSeries>,
    /// Bucket series by `le` label value.
    by_le: HashMap<String, usize>,
    /// Bucket series by the bit pattern of their bound (saves formatting it per point).
    by_bound: Vec<(u64, usize)>,
}

impl GroupSeries {
    fn add(&mut self, labels: Labels) -> usize {
        self.series.push(FloatSeries { labels, samples: Vec::new(), exemplars: Vec::new() });
        self.series.len() - 1
    }

    /// The series of the bucket with upper bound `bound`.
    fn bucket(&mut self, bound: f64, base: &Labels, bucket_name: &str) -> usize {
        let bits = bound.to_bits();
        if let Some(&(_, i)) = self.by_bound.iter().find(|(b, _)| *b == bits) {
            return i;
        }
        let le = format_float(bound);
        let i = match self.by_le.get(&le) {
            Some(&i) => i,
            None => {
                let i = self.add(with_labels(base, bucket_name, Some(("le", le.clone()))));
                self.by_le.insert(le, i);
                i
            }
        };
        self.by_bound.push((bits, i));
        i
    }

    /// As [`push_sample`].
    fn push(&mut self, slot: usize, t_ms: i64, value: f64, ex: Option<Exemplar>) {
        let Some(s) = self.series.get_mut(slot) else { return };
        match s.samples.last_mut() {
            Some(last) if last.t_ms == t_ms => last.value = value,
            _ => s.samples.push(Sample { t_ms, value }),
        }
        s.exemplars.extend(ex);
    }

    /// Adds the group's series to `out`, with the result [`push_sample`] would have given.
    fn merge_into(self, out: &mut BTreeMap<Labels, FloatSeries>) {
        for s in self.series {
            match out.get_mut(&s.labels) {
                None => {
                    out.insert(s.labels.clone(), s);
                }
                Some(have) => {
                    for sample in s.samples {
                        match have.samples.last_mut() {
                            Some(last) if last.t_ms == sample.t_ms => last.value = sample.value,
                            _ => have.samples.push(sample),
                        }
                    }
                    have.exemplars.extend(s.exemplars);
                }
            }
        }
    }
}

/// Highest native histogram schema Prometheus accepts.
const MAX_SCHEMA: i32 = 8;
/// Lowest native histogram schema Prometheus accepts.
const MIN_SCHEMA: i32 = -4;
/// Zero threshold Prometheus' OTLP translator uses when the point has none.
const DEFAULT_ZERO_THRESHOLD: f64 = 1e-128;

/// Bucket counts of one side of an OTLP exponential histogram at Prometheus indexes (OTLP index
/// `i` covers `(base^i, base^(i+1)]`, Prometheus index `i+1`), reduced by `shift` scales.
fn native_buckets(offset: i32, counts: &[u64], shift: u32) -> (Vec<BucketSpan>, Vec<i64>) {
    let mut merged: Vec<(i32, u64)> = Vec::new();
    for (i, c) in counts.iter().enumerate() {
        let otlp_index = offset.saturating_add(i as i32);
        // Merging 2^shift buckets: OTLP index i maps to i >> shift (floor), then +1.
        let idx = (otlp_index >> shift).saturating_add(1);
        match merged.last_mut() {
            Some((last, n)) if *last == idx => *n = n.saturating_add(*c),
            _ => merged.push((idx, *c)),
        }
    }
    let mut spans: Vec<BucketSpan> = Vec::new();
    let mut deltas = Vec::new();
    let mut prev_count = 0i64;
    let mut next_index: Option<i32> = None;
    for (idx, count) in merged.into_iter().filter(|(_, c)| *c > 0) {
        match next_index {
            Some(n) if idx == n => {
                if let Some(s) = spans.last_mut() {
                    s.length += 1;
                }
            }
            Some(n) => spans.push(BucketSpan { offset: idx - n, length: 1 }),
            None => spans.push(BucketSpan { offset: idx, length: 1 }),
        }
        let count = count.min(i64::MAX as u64) as i64;
        deltas.push(count - prev_count);
        prev_count = count;
        next_index = Some(idx + 1);
    }
    (spans, deltas)
}

fn native_series(
    points: &[ExponentialHistogramDataPoint],
    ctx: &Ctx<'_>,
    name: &str,
) -> Result<Vec<NativeSeries>, String> {
    let mut out: BTreeMap<Labels, NativeSeries> = BTreeMap::new();
    for group in group_points(points, |p| ctx.attrs(&p.attributes), |p| p.time_unix_nano) {
        let mut prev_start: Option<u64> = None;
        // Points of a group have the same attribute set, so the same labels.
        let mut labels: Option<Labels> = None;
        for p in group {
            if p.flags & FLAG_NO_RECORDED_VALUE != 0 {
                continue;
            }
            if p.scale < MIN_SCHEMA {
                return Err(format!("exponential histogram scale {} is below {MIN_SCHEMA}", p.scale));
            }
            let shift = (p.scale - MAX_SCHEMA).max(0) as u32;
            let schema = p.scale.min(MAX_SCHEMA);
            let (positive_spans, positive_deltas) = p
                .positive
                .as_ref()
                .map_or_else(Default::default, |b| native_buckets(b.offset, &b.bucket_counts, shift));
            let (negative_spans, negative_deltas) = p
                .negative
                .as_ref()
                .map_or_else(Default::default, |b| native_buckets(b.offset, &b.bucket_counts, shift));
            let counter_reset = prev_start.is_some_and(|s| s != p.start_time_unix_nano);
            prev_start = Some(p.start_time_unix_nano);
            let h = NativeHistogram {
                t_ms: ns_to_ms(p.time_unix_nano),
                schema,
                zero_threshold: if p.zero_threshold > 0.0 { p.zero_threshold } else { DEFAULT_ZERO_THRESHOLD },
                zero_count: p.zero_count,
                count: p.count,
                sum: p.sum.unwrap_or(f64::NAN),
                positive_spans,
                positive_deltas,
                negative_spans,
                negative_deltas,
                counter_reset,
            };
            let labels = labels.get_or_insert_with(|| ctx.labels(ctx.attrs(&p.attributes), name, None));
            if !out.contains_key(labels) {
                let series = NativeSeries { labels: labels.clone(), histograms: Vec::new(), exemplars: Vec::new() };
                out.insert(labels.clone(), series);
            }
            let Some(s) = out.get_mut(labels) else { continue };
            match s.histograms.last_mut() {
                Some(last) if last.t_ms == h.t_ms => *last = h,
                _ => s.histograms.push(h),
            }
            s.exemplars.extend(p.exemplars.iter().map(convert_exemplar));
        }
    }
    Ok(out.into_values().collect())
}

/// The text-format fallback of an exponential histogram: classic cumulative buckets whose
/// bounds are the exponential bucket upper bounds, negative side first (upper bound
/// `-base^i` for OTLP index `i`), then the zero bucket (upper bound `zero_threshold`), then
/// the positive side (`base^(i+1)`), then `+Inf` (= count).
fn exp_fallback_series(points: &[ExponentialHistogramDataPoint], ctx: &Ctx<'_>, name: &str) -> Vec<FloatSeries> {
    let mut out: BTreeMap<Labels, FloatSeries> = BTreeMap::new();
    let bucket_name = format!("{name}_bucket");
    for group in group_points(points, |p| ctx.attrs(&p.attributes), |p| p.time_unix_nano) {
        for p in group {
            let t_ms = ns_to_ms(p.time_unix_nano);
            let stale = p.flags & FLAG_NO_RECORDED_VALUE != 0;
            let v = |v: f64| if stale { stale_nan() } else { v };
            let base = 2f64.powf(2f64.powi(-p.scale));
            let mut buckets: Vec<(f64, u64)> = Vec::new();
            if let Some(neg) = &p.negative {
                for (i, c) in neg.bucket_counts.iter().enumerate().rev() {
                    let idx = neg.offset.saturating_add(i as i32);
                    buckets.push((-base.powi(idx), *c));
                }
            }
            buckets.push((p.zero_threshold, p.zero_count));
            if let Some(pos) = &p.positive {
                for (i, c) in pos.bucket_counts.iter().enumerate() {
                    let idx = pos.offset.saturating_add(i as i32);
                    buckets.push((base.powi(idx.saturating_add(1)), *c));
                }
            }
            let mut cumulative = 0u64;
            for (bound, c) in buckets {
                cumulative = cumulative.saturating_add(c);
                let labels = ctx.labels(ctx.attrs(&p.attributes), &bucket_name, Some(("le", format_float(bound))));
                push_sample(&mut out, labels, t_ms, v(cumulative as f64), None);
            }
            let labels = ctx.labels(ctx.attrs(&p.attributes), &bucket_name, Some(("le", "+Inf".to_string())));
            push_sample(&mut out, labels, t_ms, v(p.count as f64), None);
            if let Some(sum) = p.sum {
                let labels = ctx.labels(ctx.attrs(&p.attributes), &format!("{name}_sum"), None);
                push_sample(&mut out, labels, t_ms, v(sum), None);
            }
            let labels = ctx.labels(ctx.attrs(&p.attributes), &format!("{name}_count"), None);
            push_sample(&mut out, labels, t_ms, v(p.count as f64), None);
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
    use opentelemetry_proto::tonic::metrics::v1::{
        ExponentialHistogram, Gauge, Histogram, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
        exponential_histogram_data_point::Buckets, summary_data_point::ValueAtQuantile,
    };

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
            ..Default::default()
        }
    }

    fn data(resource: Vec<KeyValue>, metrics: Vec<Metric>) -> MetricsData {
        MetricsData {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource { attributes: resource, ..Default::default() }),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "lib".into(),
                        version: "1.0".into(),
                        ..Default::default()
                    }),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn num(t_s: u64, v: f64, attrs: Vec<KeyValue>) -> NumberDataPoint {
        NumberDataPoint {
            attributes: attrs,
            time_unix_nano: t_s * 1_000_000_000,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        }
    }

    fn sum_metric(
        name: &str,
        unit: &str,
        monotonic: bool,
        temporality: AggregationTemporality,
        points: Vec<NumberDataPoint>,
    ) -> Metric {
        Metric {
            name: name.into(),
            unit: unit.into(),
            data: Some(Data::Sum(Sum {
                data_points: points,
                aggregation_temporality: temporality as i32,
                is_monotonic: monotonic,
            })),
            ..Default::default()
        }
    }

    fn gauge_metric(name: &str, unit: &str, points: Vec<NumberDataPoint>) -> Metric {
        Metric {
            name: name.into(),
            unit: unit.into(),
            data: Some(Data::Gauge(Gauge { data_points: points })),
            ..Default::default()
        }
    }

    fn get<'a>(labels: &'a Labels, k: &str) -> Option<&'a str> {
        labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn names_follow_the_spec_examples() {
        assert_eq!(prometheus_name("system.cpu.time", "s", PromType::Counter, false), "system_cpu_time_seconds_total");
        assert_eq!(
            prometheus_name("http.server.duration", "ms", PromType::Histogram, false),
            "http_server_duration_milliseconds"
        );
        assert_eq!(prometheus_name("system.memory.usage", "By", PromType::Gauge, true), "system_memory_usage_bytes");
        assert_eq!(
            prometheus_name("system.cpu.utilization", "1", PromType::Gauge, true),
            "system_cpu_utilization_ratio"
        );
        assert_eq!(prometheus_name("requests", "1", PromType::Counter, false), "requests_total");
        assert_eq!(prometheus_name("packets", "{packet}", PromType::Counter, false), "packets_total");
        assert_eq!(prometheus_name("net.io", "By/s", PromType::Gauge, true), "net_io_bytes_per_second");
        assert_eq!(prometheus_name("calls", "{call}/s", PromType::Gauge, true), "calls_per_second");
        // The unit is not repeated; `_total` moves after the unit.
        assert_eq!(
            prometheus_name("request_duration_seconds", "s", PromType::Histogram, false),
            "request_duration_seconds"
        );
        assert_eq!(prometheus_name("foo_total", "s", PromType::Counter, false), "foo_seconds_total");
        assert_eq!(
            prometheus_name("traces_service_graph_request_total", "{request}", PromType::Counter, false),
            "traces_service_graph_request_total"
        );
        // Invalid characters, runs of underscores, leading digits.
        assert_eq!(sanitize_metric_name("a.b-c__d/e"), "a_b_c_d_e");
        assert_eq!(sanitize_metric_name("2xx.count"), "_2xx_count");
        assert_eq!(prometheus_name("my.metric", "widgets", PromType::Gauge, true), "my_metric_widgets");
    }

    #[test]
    fn label_names_are_sanitized() {
        assert_eq!(sanitize_label_name("http.method").as_deref(), Some("http_method"));
        assert_eq!(sanitize_label_name("2xx").as_deref(), Some("key_2xx"));
        assert_eq!(sanitize_label_name("_private").as_deref(), Some("key_private"));
        assert_eq!(sanitize_label_name("__reserved").as_deref(), Some("__reserved"));
        assert_eq!(sanitize_label_name(""), None);
    }

    #[test]
    fn colliding_labels_are_joined_in_key_order() {
        let labels = attribute_labels(&[kv("foo_bar", "b"), kv("foo.bar", "a")]);
        assert_eq!(labels, vec![("foo_bar".to_string(), "a;b".to_string())]);
    }

    #[test]
    fn resource_gives_job_instance_and_target_info() {
        let md = data(
            vec![
                kv("service.name", "checkout"),
                kv("service.namespace", "shop"),
                kv("service.instance.id", "pod-1"),
                kv("k8s.pod.name", "pod-1"),
            ],
            vec![gauge_metric("temp", "Cel", vec![num(10, 21.5, vec![kv("room", "a")])])],
        );
        let view = prometheus_view(&md, &ViewOptions::default());
        assert!(view.rejected.is_empty());
        let temp = view.families.iter().find(|f| f.name == "temp_celsius").unwrap();
        let labels = &temp.series[0].labels;
        assert_eq!(get(labels, "job"), Some("shop/checkout"));
        assert_eq!(get(labels, "instance"), Some("pod-1"));
        assert_eq!(get(labels, "room"), Some("a"));
        assert_eq!(get(labels, "otel_scope_name"), Some("lib"));
        assert_eq!(get(labels, "otel_scope_version"), Some("1.0"));
        assert_eq!(get(labels, "k8s_pod_name"), None);
        assert_eq!(temp.series[0].samples, vec![Sample { t_ms: 10_000, value: 21.5 }]);
        let info = view.families.iter().find(|f| f.name == "target_info").unwrap();
        assert_eq!(info.kind, PromType::Gauge);
        assert_eq!(
            info.series[0].labels,
            vec![
                ("__name__".to_string(), "target_info".to_string()),
                ("instance".to_string(), "pod-1".to_string()),
                ("job".to_string(), "shop/checkout".to_string()),
                ("k8s_pod_name".to_string(), "pod-1".to_string()),
            ]
        );
        assert_eq!(info.series[0].samples, vec![Sample { t_ms: 10_000, value: 1.0 }]);
    }

    #[test]
    fn counters_gauges_and_updown_sums() {
        let md = data(
            vec![kv("service.name", "svc")],
            vec![
                sum_metric(
                    "http.requests",
                    "{request}",
                    true,
                    AggregationTemporality::Cumulative,
                    vec![num(1, 1.0, vec![]), num(2, 3.0, vec![])],
                ),
                sum_metric(
                    "queue.size",
                    "{item}",
                    false,
                    AggregationTemporality::Cumulative,
                    vec![num(1, 4.0, vec![])],
                ),
            ],
        );
        let view = prometheus_view(&md, &ViewOptions::default());
        let names: Vec<(&str, PromType)> = view.families.iter().map(|f| (f.name.as_str(), f.kind)).collect();
        assert_eq!(names, vec![("http_requests_total", PromType::Counter), ("queue_size", PromType::Gauge)]);
        assert_eq!(view.families[0].openmetrics_name(), "http_requests");
        assert_eq!(view.families[0].series[0].samples.len(), 2);
        // No other resource attributes: no target_info.
        assert!(view.families.iter().all(|f| f.name != "target_info"));
    }

    #[test]
    fn delta_sums_become_cumulative_per_series() {
        let md = data(
            vec![],
            vec![sum_metric(
                "c",
                "",
                true,
                AggregationTemporality::Delta,
                vec![
                    num(3, 2.0, vec![kv("a", "x")]),
                    num(1, 1.0, vec![kv("a", "x")]),
                    num(2, 5.0, vec![kv("a", "y")]),
                    num(4, 0.5, vec![kv("a", "y")]),
                ],
            )],
        );
        let view = prometheus_view(&md, &ViewOptions::default());
        let f = &view.families[0];
        let vals = |i: usize| f.series[i].samples.iter().map(|s| s.value).collect::<Vec<_>>();
        assert_eq!(get(&f.series[0].labels, "a"), Some("x"));
        assert_eq!(vals(0), vec![1.0, 3.0]);
        assert_eq!(vals(1), vec![5.0, 5.5]);
    }

    #[test]
    fn histograms_give_cumulative_buckets_sum_and_count_with_exemplars() {
        let p = HistogramDataPoint {
            time_unix_nano: 5_000_000_000,
            count: 6,
            sum: Some(12.5),
            bucket_counts: vec![1, 2, 3],
            explicit_bounds: vec![0.5, 1.0],
            exemplars: vec![OtlpExemplar {
                time_unix_nano: 4_000_000_000,
                value: Some(exemplar::Value::AsDouble(0.75)),
                trace_id: vec![0xab; 16],
                span_id: vec![0xcd; 8],
                ..Default::default()
            }],
            ..Default::default()
        };
        let m = Metric {
            name: "rpc.duration".into(),
            unit: "s".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![p],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        };
        let view = prometheus_view(&data(vec![], vec![m]), &ViewOptions::default());
        let f = &view.families[0];
        assert_eq!(
            (f.name.as_str(), f.kind, f.unit.as_str()),
            ("rpc_duration_seconds", PromType::Histogram, "seconds")
        );
        let got: Vec<(String, Option<&str>, f64)> = f
            .series
            .iter()
            .map(|s| (get(&s.labels, "__name__").unwrap().to_string(), get(&s.labels, "le"), s.samples[0].value))
            .collect();
        assert_eq!(
            got,
            vec![
                ("rpc_duration_seconds_bucket".to_string(), Some("+Inf"), 6.0),
                ("rpc_duration_seconds_bucket".to_string(), Some("0.5"), 1.0),
                ("rpc_duration_seconds_bucket".to_string(), Some("1"), 3.0),
                ("rpc_duration_seconds_count".to_string(), None, 6.0),
                ("rpc_duration_seconds_sum".to_string(), None, 12.5),
            ]
        );
        let le1 = &f.series[2];
        assert_eq!(le1.exemplars.len(), 1);
        assert_eq!(le1.exemplars[0].value, 0.75);
        assert_eq!(le1.exemplars[0].t_ms, 4000);
        assert_eq!(get(&le1.exemplars[0].labels, "trace_id"), Some("abababababababababababababababab"));
        assert_eq!(get(&le1.exemplars[0].labels, "span_id"), Some("cdcdcdcdcdcdcdcd"));
    }

    #[test]
    fn summaries_give_quantiles_sum_and_count() {
        let m = Metric {
            name: "latency".into(),
            unit: "ms".into(),
            data: Some(Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    time_unix_nano: 1_000_000_000,
                    count: 10,
                    sum: 100.0,
                    quantile_values: vec![
                        ValueAtQuantile { quantile: 0.5, value: 8.0 },
                        ValueAtQuantile { quantile: 0.99, value: 30.0 },
                    ],
                    ..Default::default()
                }],
            })),
            ..Default::default()
        };
        let view = prometheus_view(&data(vec![], vec![m]), &ViewOptions::default());
        let f = &view.families[0];
        assert_eq!((f.name.as_str(), f.kind), ("latency_milliseconds", PromType::Summary));
        let q: Vec<(Option<&str>, f64)> =
            f.series.iter().map(|s| (get(&s.labels, "quantile"), s.samples[0].value)).collect();
        assert_eq!(q, vec![(Some("0.5"), 8.0), (Some("0.99"), 30.0), (None, 10.0), (None, 100.0)]);
    }

    fn exp_metric(scale: i32, offset: i32, counts: Vec<u64>, zero: u64) -> Metric {
        let count = counts.iter().sum::<u64>() + zero;
        Metric {
            name: "size".into(),
            unit: "By".into(),
            data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    time_unix_nano: 2_000_000_000,
                    count,
                    sum: Some(100.0),
                    scale,
                    zero_count: zero,
                    positive: Some(Buckets { offset, bucket_counts: counts }),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        }
    }

    #[test]
    fn exponential_histograms_become_native_histograms() {
        // OTLP index 0 at scale 0 is (1, 2]; Prometheus index 1 is (1, 2].
        let view =
            prometheus_view(&data(vec![], vec![exp_metric(0, 0, vec![2, 0, 0, 0, 3, 1], 1)]), &ViewOptions::default());
        let f = &view.families[0];
        assert_eq!((f.name.as_str(), f.kind), ("size_bytes", PromType::Histogram));
        let h = &f.native[0].histograms[0];
        assert_eq!(h.schema, 0);
        assert_eq!((h.count, h.zero_count, h.sum), (7, 1, 100.0));
        assert_eq!(h.positive_spans, vec![BucketSpan { offset: 1, length: 1 }, BucketSpan { offset: 3, length: 2 }]);
        assert_eq!(h.positive_deltas, vec![2, 1, -2]);
        assert_eq!(h.positive_buckets(), vec![(1, 2), (5, 3), (6, 1)]);
        assert_eq!(h.zero_threshold, DEFAULT_ZERO_THRESHOLD);
    }

    #[test]
    fn scales_above_eight_are_merged_down() {
        // Scale 9, OTLP indexes 0..=3 merge pairwise at scale 8 into OTLP 0 and 1 -> Prometheus 1 and 2.
        let view = prometheus_view(&data(vec![], vec![exp_metric(9, 0, vec![1, 2, 3, 4], 0)]), &ViewOptions::default());
        let h = &view.families[0].native[0].histograms[0];
        assert_eq!(h.schema, 8);
        assert_eq!(h.positive_buckets(), vec![(1, 3), (2, 7)]);
        // Negative OTLP index -1 at scale 9 merges into -1 at scale 8 (floor division).
        let (spans, deltas) = native_buckets(-3, &[1, 1, 1], 1);
        assert_eq!(expand_buckets(&spans, &deltas), vec![(-1, 1), (0, 2)]);
    }

    #[test]
    fn exponential_histogram_text_fallback_uses_bucket_bounds() {
        let opts = ViewOptions { native_histograms: false, target_info: true };
        let view = prometheus_view(&data(vec![], vec![exp_metric(0, 1, vec![2, 3], 1)]), &opts);
        let f = &view.families[0];
        assert!(f.native.is_empty());
        let mut got: Vec<(String, f64)> = f
            .series
            .iter()
            .filter_map(|s| get(&s.labels, "le").map(|le| (le.to_string(), s.samples[0].value)))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![("+Inf".to_string(), 6.0), ("0".to_string(), 1.0), ("4".to_string(), 3.0), ("8".to_string(), 6.0)]
        );
    }

    #[test]
    fn delta_exponential_histograms_are_rejected_with_a_reason() {
        let mut m = exp_metric(0, 0, vec![1], 0);
        if let Some(Data::ExponentialHistogram(h)) = &mut m.data {
            h.aggregation_temporality = AggregationTemporality::Delta as i32;
        }
        let view = prometheus_view(&data(vec![], vec![m]), &ViewOptions::default());
        assert!(view.families.is_empty());
        assert_eq!(view.rejected[0].metric, "size");
        assert!(view.rejected[0].reason.contains("delta"));
    }

    #[test]
    fn no_recorded_value_is_a_stale_marker() {
        let mut p = num(2, 0.0, vec![]);
        p.flags = FLAG_NO_RECORDED_VALUE;
        let view = prometheus_view(
            &data(vec![], vec![gauge_metric("g", "", vec![num(1, 1.0, vec![]), p])]),
            &ViewOptions::default(),
        );
        let s = &view.families[0].series[0].samples;
        assert_eq!(s[0].value, 1.0);
        assert!(is_stale_nan(s[1].value));
    }

    #[test]
    fn conflicting_types_are_rejected() {
        let view = prometheus_view(
            &data(
                vec![],
                vec![
                    gauge_metric("x", "", vec![num(1, 1.0, vec![])]),
                    sum_metric("x", "", false, AggregationTemporality::Cumulative, vec![num(1, 1.0, vec![])]),
                ],
            ),
            &ViewOptions::default(),
        );
        // Both are gauges named `x`: merged into one series.
        assert_eq!(view.families.len(), 1);
        let view = prometheus_view(
            &data(
                vec![],
                vec![
                    gauge_metric("x_total", "", vec![num(1, 1.0, vec![])]),
                    sum_metric("x", "", true, AggregationTemporality::Cumulative, vec![num(1, 1.0, vec![])]),
                ],
            ),
            &ViewOptions::default(),
        );
        assert_eq!(view.families.len(), 1);
        assert_eq!(view.rejected.len(), 1);
    }

    #[test]
    fn name_regex_matches_the_otlp_names_of_a_prometheus_name() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            (
                "http_server_duration_milliseconds_bucket",
                &["http.server.duration", "http_server_duration_milliseconds"],
                &["http.server.size"],
            ),
            (
                "system_cpu_time_seconds_total",
                &["system.cpu.time", "system.cpu.time_total", "system_cpu_time_seconds_total"],
                &["system.cpu"],
            ),
            ("traces_span_metrics_calls_total", &["traces.span.metrics.calls"], &["traces.span.metrics.duration"]),
            ("net_io_bytes_per_second", &["net.io"], &["net"]),
            ("queue_size", &["queue.size", "queue-size", "queue"], &["queues"]),
            ("my_metric_widgets", &["my.metric"], &[]),
            ("_2xx_count", &["2xx.count", "2xx"], &[]),
            ("target_info", &["anything"], &[]),
        ];
        for (prom, yes, no) in cases {
            let re = regex::Regex::new(&format!("^(?:{})$", otlp_name_regex(prom))).unwrap();
            for n in *yes {
                assert!(re.is_match(n), "{prom}: {n} should match {re}");
            }
            for n in *no {
                assert!(!re.is_match(n), "{prom}: {n} should not match {re}");
            }
        }
    }

    #[test]
    fn floats_format_as_go_does() {
        assert_eq!(format_float(0.005), "0.005");
        assert_eq!(format_float(1.0), "1");
        assert_eq!(format_float(f64::INFINITY), "+Inf");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_float(f64::NAN), "NaN");
        assert_eq!(format_float(1e21), "1000000000000000000000");
    }
}
