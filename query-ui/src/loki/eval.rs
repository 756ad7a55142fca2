//! Running LogQL over the store: the scanner that reads matching records window by window, log
//! queries, and metric queries (counted by the store's histogram when the pushdown is exact and
//! the grouping uses stream labels only, otherwise counted in memory within a bound).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use obsbox_storage::{AttrScope, AttrValue, LogEntry, LogPredicate, LogQuery, TimeRange};

use super::labels::{ERROR_LABEL, Labels, add_metadata, line, log_time, run_pipeline, stream_labels};
use super::logql::{AggOp, BinOp, Grouping, LogExpr, Matcher, MetricExpr, RangeFn, Stage};
use super::plan::{Catalog, Pushdown, StreamKind, and, level_eq, level_values, pushdown};
use crate::{QueryError, QueryService};

/// Most log lines a metric query may count in memory.
pub(crate) const MAX_METRIC_LINES: u64 = 100_000;
/// Most log lines a log query reads before it answers with what it found.
pub(crate) const MAX_LOG_SCAN: u64 = 200_000;
/// Buckets of the histogram that plans a scan.
const PLAN_BUCKETS: u64 = 1000;
/// Most buckets of one histogram call (the query service's limit).
const HISTOGRAM_CALL_BUCKETS: u64 = 10_000;
/// Most histogram calls one metric query makes on the index-only path.
const MAX_HISTOGRAM_CALLS: usize = 128;
/// Most groups the index-only path splits a `sum by` into.
const MAX_HISTOGRAM_GROUPS: usize = 64;

/// Order of the returned lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Newest first.
    Backward,
    /// Oldest first.
    Forward,
}

/// What a query read, for the response's `stats`.
#[derive(Debug)]
pub(crate) struct Stats {
    /// When the query started.
    pub started: Instant,
    /// Lines read from the store.
    pub lines: u64,
    /// Bytes of those lines.
    pub bytes: u64,
    /// Lines the pipeline kept.
    pub post_filter: u64,
    /// Lines (or samples) returned.
    pub returned: u64,
}

impl Stats {
    /// Stats of a query starting now.
    pub fn new() -> Stats {
        Stats { started: Instant::now(), lines: 0, bytes: 0, post_filter: 0, returned: 0 }
    }
}

/// How a scan ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every matching record was visited.
    Complete,
    /// The visitor had enough.
    Stopped,
    /// The line budget ran out.
    Truncated,
}

enum Item {
    /// A time range still to be planned with a histogram.
    Range(u64, u64),
    /// A window to fetch whole: (start, end, expected records).
    Window(u64, u64, u64),
}

/// What [`scan`] reads.
#[derive(Clone, Copy)]
pub(crate) struct ScanSpec<'a> {
    /// Records matching this.
    pub pred: &'a LogPredicate,
    /// In this range.
    pub range: TimeRange,
    /// In this order.
    pub dir: Direction,
    /// About this many records per fetch.
    pub chunk: u64,
    /// Stop after reading this many.
    pub max_lines: u64,
}

type Visitor<'a> = dyn FnMut(Vec<LogEntry>, &mut Stats) -> bool + Send + 'a;

/// Visits every record matching `pred` in `range`, window by window in `dir` order (each
/// window sorted by time), until `visit` returns `false` or `max_lines` were read.
///
/// A histogram of the matching records plans windows of about `chunk` records; a bucket
/// holding more is planned again with finer buckets, so no window is much larger than needed.
pub(crate) async fn scan(
    qs: &QueryService,
    spec: &ScanSpec<'_>,
    stats: &mut Stats,
    visit: &mut Visitor<'_>,
) -> Result<ScanEnd, QueryError> {
    let ScanSpec { pred, range, dir, chunk, max_lines } = *spec;
    if range.start_ns >= range.end_ns {
        return Ok(ScanEnd::Complete);
    }
    let mut items = VecDeque::from([Item::Range(range.start_ns, range.end_ns)]);
    while let Some(item) = items.pop_front() {
        match item {
            Item::Range(lo, hi) => {
                let b = (hi - lo).div_ceil(PLAN_BUCKETS).max(1);
                let hist = qs.log_histogram(pred.clone(), TimeRange { start_ns: lo, end_ns: hi }, b).await?;
                let mut buckets: Vec<(u64, u64, u64)> = hist
                    .into_iter()
                    .filter(|(_, c)| *c > 0)
                    .map(|(s, c)| (s.max(lo), s.saturating_add(b).min(hi), c))
                    .collect();
                if dir == Direction::Backward {
                    buckets.reverse();
                }
                let mut planned = Vec::new();
                let mut acc: Option<(u64, u64, u64)> = None;
                for (blo, bhi, c) in buckets {
                    if c > chunk && b > 1 {
                        if let Some((a, z, n)) = acc.take() {
                            planned.push(Item::Window(a, z, n));
                        }
                        planned.push(Item::Range(blo, bhi));
                        continue;
                    }
                    acc = match acc {
                        Some((a, z, n)) if n + c <= chunk => Some((a.min(blo), z.max(bhi), n + c)),
                        Some((a, z, n)) => {
                            planned.push(Item::Window(a, z, n));
                            Some((blo, bhi, c))
                        }
                        None => Some((blo, bhi, c)),
                    };
                }
                if let Some((a, z, n)) = acc {
                    planned.push(Item::Window(a, z, n));
                }
                for it in planned.into_iter().rev() {
                    items.push_front(it);
                }
            }
            Item::Window(lo, hi, count) => {
                let limit = count.saturating_add(count / 4).saturating_add(100).min(usize::MAX as u64) as usize;
                let query = LogQuery { predicate: pred.clone(), time: TimeRange { start_ns: lo, end_ns: hi }, limit };
                let mut entries = qs.find_logs(query).await?;
                sort_entries(&mut entries, dir);
                stats.lines += entries.len() as u64;
                if !visit(entries, stats) {
                    return Ok(ScanEnd::Stopped);
                }
                if stats.lines >= max_lines && !items.is_empty() {
                    return Ok(ScanEnd::Truncated);
                }
            }
        }
    }
    Ok(ScanEnd::Complete)
}

fn sort_entries(entries: &mut [LogEntry], dir: Direction) {
    match dir {
        Direction::Backward => entries.sort_by_key(|e| std::cmp::Reverse(log_time(&e.record))),
        Direction::Forward => entries.sort_by_key(|e| log_time(&e.record)),
    }
}

/// Whether a record's stream labels satisfy the selector.
pub(crate) fn selector_matches(matchers: &[Matcher], stream: &Labels) -> bool {
    matchers.iter().all(|m| m.matches(stream.get(&m.name).map(String::as_str).unwrap_or("")))
}

/// Runs selector and pipeline over a record: its labels, line and time when kept.
pub(crate) fn process(log: &LogExpr, e: &LogEntry, stats: &mut Stats) -> Option<(u64, Labels, String)> {
    let text = line(&e.record);
    stats.bytes += text.len() as u64;
    let mut labels = stream_labels(e);
    if !selector_matches(&log.matchers, &labels) {
        return None;
    }
    add_metadata(&e.record, &mut labels);
    if !run_pipeline(&log.stages, &text, e.record.body.as_ref(), &mut labels) {
        return None;
    }
    stats.post_filter += 1;
    Some((log_time(&e.record), labels, text))
}

/// Streams of a log query: label set -> (time, line) in the query's order.
pub(crate) struct LogResult {
    /// Streams, sorted by label set.
    pub streams: Vec<(Labels, Vec<(u64, String)>)>,
    /// Said when the answer may be incomplete.
    pub warnings: Vec<String>,
}

/// Runs a log query: at most `limit` lines in `range`, in `dir` order.
pub(crate) async fn log_query(
    qs: &QueryService,
    log: &LogExpr,
    range: TimeRange,
    limit: usize,
    dir: Direction,
    stats: &mut Stats,
) -> Result<LogResult, QueryError> {
    if range.start_ns >= range.end_ns {
        return Ok(LogResult { streams: Vec::new(), warnings: Vec::new() });
    }
    let mut cat = Catalog::new(qs.clone(), range);
    let Pushdown { pred, .. } = pushdown(log, &mut cat).await?;
    let mut found: Vec<(u64, Labels, String)> = Vec::new();
    let chunk = (limit as u64).clamp(1000, 10_000);
    let mut visit = |batch: Vec<LogEntry>, stats: &mut Stats| -> bool {
        for e in &batch {
            if let Some(hit) = process(log, e, stats) {
                found.push(hit);
                if found.len() >= limit {
                    return false;
                }
            }
        }
        true
    };
    let mut end = ScanEnd::Complete;
    let mut rest = Some(range);
    if dir == Direction::Backward {
        // Fast path: the newest `limit` matches straight from the index.
        let first = qs.find_logs(LogQuery { predicate: pred.clone(), time: range, limit }).await?;
        stats.lines += first.len() as u64;
        let t_min = first.iter().map(|e| log_time(&e.record)).min().unwrap_or(0);
        if first.len() < limit {
            let mut first = first;
            sort_entries(&mut first, dir);
            if !visit(first, stats) {
                end = ScanEnd::Stopped;
            }
            rest = None;
        } else {
            // Records at the oldest time may continue past the page: fetch that instant again.
            let mut newer: Vec<LogEntry> = first.into_iter().filter(|e| log_time(&e.record) > t_min).collect();
            if !newer.is_empty() {
                sort_entries(&mut newer, dir);
                if !visit(newer, stats) {
                    end = ScanEnd::Stopped;
                    rest = None;
                } else {
                    rest = Some(TimeRange { start_ns: range.start_ns, end_ns: t_min.saturating_add(1) });
                }
            }
        }
    }
    if let Some(r) = rest {
        let spec = ScanSpec { pred: &pred, range: r, dir, chunk, max_lines: MAX_LOG_SCAN };
        end = scan(qs, &spec, stats, &mut visit).await?;
    }
    let mut warnings = Vec::new();
    if end == ScanEnd::Truncated {
        warnings.push(format!(
            "stopped after reading {} log lines: the result may miss matching lines; narrow the query",
            stats.lines
        ));
    }
    stats.returned = found.len() as u64;
    let mut streams: BTreeMap<Labels, Vec<(u64, String)>> = BTreeMap::new();
    for (t, labels, text) in found {
        streams.entry(labels).or_default().push((t, text));
    }
    Ok(LogResult { streams: streams.into_iter().collect(), warnings })
}

// ---------------------------------------------------------------------------------------------
// Metric queries
// ---------------------------------------------------------------------------------------------

/// Evaluation times: `start + i * step` for `i < n`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grid {
    /// First evaluation time (ns).
    pub start: u64,
    /// Distance between evaluation times (ns); 0 for an instant query.
    pub step: u64,
    /// Number of evaluation times (at least 1).
    pub n: usize,
}

impl Grid {
    /// The `i`-th evaluation time.
    pub fn t(&self, i: usize) -> u64 {
        self.start.saturating_add(self.step.saturating_mul(i as u64))
    }

    /// The last evaluation time.
    pub fn last(&self) -> u64 {
        self.t(self.n.saturating_sub(1))
    }

    /// The records a window of `range_ns` ending at any evaluation time can see: windows are
    /// `(t - range, t]`.
    fn data_range(&self, range_ns: u64) -> TimeRange {
        let start_ns = if self.start >= range_ns { self.start - range_ns + 1 } else { 0 };
        TimeRange { start_ns, end_ns: self.last().saturating_add(1) }
    }
}

/// A series: its labels and a value per evaluation time (`None`: no sample).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Series {
    /// Labels.
    pub labels: Labels,
    /// One entry per evaluation time.
    pub values: Vec<Option<f64>>,
}

/// What a metric expression evaluates to.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    /// A number.
    Scalar(f64),
    /// Series, sorted by labels.
    Vector(Vec<Series>),
}

fn bad(msg: impl Into<String>) -> QueryError {
    QueryError::BadRequest(msg.into())
}

/// Evaluates a metric query over `grid`.
pub(crate) async fn metric_query(
    qs: &QueryService,
    m: &MetricExpr,
    grid: &Grid,
    stats: &mut Stats,
) -> Result<Value, QueryError> {
    let mut v = eval(qs, m, grid, stats).await?;
    if let Value::Vector(series) = &mut v {
        series.retain(|s| s.values.iter().any(Option::is_some));
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        if let Some(s) = series.iter().find(|s| s.labels.contains_key(ERROR_LABEL)) {
            let kind = &s.labels[ERROR_LABEL];
            return Err(bad(format!(
                "pipeline error: '{kind}' for series: '{}'. Use a label filter to intentionally skip this \
                 error (e.g. | __error__!=\"{kind}\"), or drop it (| drop __error__, __error_details__)",
                labels_string(&s.labels)
            )));
        }
        stats.returned = series.iter().map(|s| s.values.iter().flatten().count() as u64).sum();
    }
    Ok(v)
}

/// `{a="b", c="d"}` as Loki prints a label set.
pub(crate) fn labels_string(l: &Labels) -> String {
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={}", super::logql::quote(v))).collect();
    format!("{{{}}}", inner.join(", "))
}

type EvalFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, QueryError>> + Send + 'a>>;

fn eval<'a>(qs: &'a QueryService, m: &'a MetricExpr, grid: &'a Grid, stats: &'a mut Stats) -> EvalFuture<'a> {
    Box::pin(async move {
        match m {
            MetricExpr::Number(v, _) => Ok(Value::Scalar(*v)),
            MetricExpr::Vector(v, _) => {
                Ok(Value::Vector(vec![Series { labels: Labels::new(), values: vec![Some(*v); grid.n] }]))
            }
            MetricExpr::Range { func, log, range_ns, .. } => {
                Ok(Value::Vector(range_in_memory(qs, *func, log, *range_ns, grid, stats).await?))
            }
            MetricExpr::Agg { op, param, grouping, inner } => {
                if *op == AggOp::Sum
                    && let MetricExpr::Range { func, log, range_ns, .. } = &**inner
                    && let Some(series) =
                        sum_by_histogram(qs, grouping.as_ref(), *func, log, *range_ns, grid, stats).await?
                {
                    return Ok(Value::Vector(series));
                }
                let Value::Vector(series) = eval(qs, inner, grid, stats).await? else {
                    return Err(bad(format!("{op:?} needs a vector, not a number").to_lowercase()));
                };
                Ok(Value::Vector(aggregate(*op, *param, grouping.as_ref(), series, grid.n)))
            }
            MetricExpr::Binary { op, lhs, rhs } => {
                let l = eval(qs, lhs, grid, stats).await?;
                let r = eval(qs, rhs, grid, stats).await?;
                binary(*op, l, r)
            }
        }
    })
}

fn range_value(func: RangeFn, count: u64, bytes: u64, range_ns: u64) -> f64 {
    let secs = range_ns as f64 / 1e9;
    match func {
        RangeFn::CountOverTime => count as f64,
        RangeFn::Rate => count as f64 / secs,
        RangeFn::BytesOverTime => bytes as f64,
        RangeFn::BytesRate => bytes as f64 / secs,
    }
}

/// Counts matching records of `pred` in `range` with one histogram call.
pub(crate) async fn count(qs: &QueryService, pred: &LogPredicate, range: TimeRange) -> Result<u64, QueryError> {
    if range.start_ns >= range.end_ns {
        return Ok(0);
    }
    let width = range.end_ns - range.start_ns;
    Ok(qs.log_histogram(pred.clone(), range, width).await?.into_iter().map(|(_, c)| c).sum())
}

/// A range aggregation computed from the lines themselves: one series per label set, windows
/// `(t - range, t]` exactly as Loki.
async fn range_in_memory(
    qs: &QueryService,
    func: RangeFn,
    log: &LogExpr,
    range_ns: u64,
    grid: &Grid,
    stats: &mut Stats,
) -> Result<Vec<Series>, QueryError> {
    let data = grid.data_range(range_ns);
    let mut cat = Catalog::new(qs.clone(), data);
    let Pushdown { pred, .. } = pushdown(log, &mut cat).await?;
    let n = count(qs, &pred, data).await?;
    if n > MAX_METRIC_LINES {
        return Err(bad(format!(
            "query too expensive: it would read {n} log lines (at most {MAX_METRIC_LINES} are counted in memory); \
             narrow it: a more selective stream selector, a shorter time range, or sum by stream labels only \
             without regular expressions or parsers (see docs/logql.md, \"How queries run\")"
        )));
    }
    let mut points: HashMap<Labels, Vec<(u64, u64)>> = HashMap::new();
    let mut visit = |batch: Vec<LogEntry>, stats: &mut Stats| -> bool {
        for e in &batch {
            if let Some((t, labels, text)) = process(log, e, stats) {
                points.entry(labels).or_default().push((t, text.len() as u64));
            }
        }
        true
    };
    let spec = ScanSpec { pred: &pred, range: data, dir: Direction::Forward, chunk: 10_000, max_lines: u64::MAX };
    scan(qs, &spec, stats, &mut visit).await?;
    let mut out = Vec::with_capacity(points.len());
    for (labels, mut pts) in points {
        pts.sort_unstable();
        let mut prefix = Vec::with_capacity(pts.len() + 1);
        prefix.push(0u64);
        for (_, b) in &pts {
            prefix.push(prefix.last().copied().unwrap_or(0) + b);
        }
        let values = (0..grid.n)
            .map(|i| {
                let t = grid.t(i);
                let a = if t >= range_ns { pts.partition_point(|(ts, _)| *ts <= t - range_ns) } else { 0 };
                let z = pts.partition_point(|(ts, _)| *ts <= t);
                (z > a).then(|| range_value(func, (z - a) as u64, prefix[z] - prefix[a], range_ns))
            })
            .collect();
        out.push(Series { labels, values });
    }
    Ok(out)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// How the index-only path splits time: one exact window for an instant query, otherwise
/// buckets of `gcd(step, range, start)` (windows `[t - range, t)`).
struct Buckets {
    lo: u64,
    hi: u64,
    width: u64,
}

impl Buckets {
    fn plan(grid: &Grid, range_ns: u64) -> Option<Buckets> {
        if grid.n == 1 {
            let r = grid.data_range(range_ns);
            return Some(Buckets { lo: r.start_ns, hi: r.end_ns, width: r.end_ns - r.start_ns });
        }
        let g = gcd(gcd(grid.step, range_ns), grid.start);
        let lo = grid.start.saturating_sub(range_ns);
        let hi = grid.last();
        if g == 0 || hi <= lo {
            return None;
        }
        Some(Buckets { lo, hi, width: g })
    }

    fn calls(&self) -> usize {
        ((self.hi - self.lo) / self.width).div_ceil(HISTOGRAM_CALL_BUCKETS) as usize
    }

    /// Matching records per evaluation time.
    async fn counts(
        &self,
        qs: &QueryService,
        pred: &LogPredicate,
        grid: &Grid,
        range_ns: u64,
    ) -> Result<Vec<u64>, QueryError> {
        if grid.n == 1 {
            return Ok(vec![count(qs, pred, TimeRange { start_ns: self.lo, end_ns: self.hi }).await?]);
        }
        let nb = ((self.hi - self.lo) / self.width) as usize;
        let mut dense = vec![0u64; nb];
        let mut c = self.lo;
        while c < self.hi {
            let end = c.saturating_add(self.width.saturating_mul(HISTOGRAM_CALL_BUCKETS)).min(self.hi);
            let h = qs.log_histogram(pred.clone(), TimeRange { start_ns: c, end_ns: end }, self.width).await?;
            for (b, n) in h {
                let idx = (b.saturating_sub(self.lo) / self.width) as usize;
                if let Some(slot) = dense.get_mut(idx) {
                    *slot += n;
                }
            }
            c = end;
        }
        let mut prefix = Vec::with_capacity(nb + 1);
        prefix.push(0u64);
        for n in &dense {
            prefix.push(prefix.last().copied().unwrap_or(0) + n);
        }
        Ok((0..grid.n)
            .map(|i| {
                let t = grid.t(i);
                let a = (t.saturating_sub(range_ns).max(self.lo) - self.lo) / self.width;
                let z = (t - self.lo) / self.width;
                prefix[z as usize] - prefix[a as usize]
            })
            .collect())
    }
}

/// One way to split records by a label: (labels of the part, predicate of the part).
type Partition = Vec<(Labels, LogPredicate)>;

/// `sum [by (stream labels)] (count_over_time | rate)` computed by the store's histogram, without
/// reading lines: `None` when the query does not qualify (the caller counts in memory).
async fn sum_by_histogram(
    qs: &QueryService,
    grouping: Option<&Grouping>,
    func: RangeFn,
    log: &LogExpr,
    range_ns: u64,
    grid: &Grid,
    stats: &mut Stats,
) -> Result<Option<Vec<Series>>, QueryError> {
    if !matches!(func, RangeFn::CountOverTime | RangeFn::Rate) {
        return Ok(None);
    }
    let Some(buckets) = Buckets::plan(grid, range_ns) else { return Ok(None) };
    let labels: Vec<String> = match grouping {
        None => Vec::new(),
        Some(g) if g.without => return Ok(None),
        Some(g) => {
            let mut seen = HashSet::new();
            g.labels.iter().filter(|l| seen.insert(l.as_str())).cloned().collect()
        }
    };
    let has_parser = log.stages.iter().any(|s| matches!(s, Stage::Json(_) | Stage::Logfmt { .. }));
    let has_keep = log.stages.iter().any(|s| matches!(s, Stage::Keep(_)));
    let dropped: HashSet<&str> = log
        .stages
        .iter()
        .filter_map(|s| if let Stage::Drop(sels) = s { Some(sels) } else { None })
        .flatten()
        .map(|s| s.name.as_str())
        .collect();
    if has_keep && !labels.is_empty() {
        return Ok(None);
    }
    let mut cat = Catalog::new(qs.clone(), grid.data_range(range_ns));
    let pd = pushdown(log, &mut cat).await?;
    if !pd.exact {
        return Ok(None);
    }
    let mut partitions: Vec<Partition> = Vec::new();
    let mut remainder = false;
    for name in &labels {
        if dropped.contains(name.as_str()) {
            return Ok(None);
        }
        let (keys, id) = cat.metadata_sources(name).await?;
        if !keys.is_empty() || id {
            return Ok(None);
        }
        let one = |v: &str| -> Labels {
            if v.is_empty() { Labels::new() } else { Labels::from([(name.clone(), v.to_string())]) }
        };
        let part: Partition = match cat.stream_kind(name).await? {
            StreamKind::Absent if has_parser => return Ok(None),
            StreamKind::Absent => continue,
            StreamKind::Service => {
                cat.services().await?.iter().map(|v| (one(v), LogPredicate::Service(v.clone()))).collect()
            }
            StreamKind::Level => {
                let vals = level_values(cat.severities().await?);
                vals.iter().map(|v| (one(v), level_eq(v))).collect()
            }
            StreamKind::Resource(keys) if keys.len() == 1 => {
                let Some(vals) = cat.resource_values(&keys[0]).await? else { return Ok(None) };
                remainder = true;
                vals.iter()
                    .map(|v| {
                        let p = LogPredicate::Attribute {
                            scope: AttrScope::Resource,
                            key: keys[0].clone(),
                            value: AttrValue::Str(v.clone()),
                        };
                        (one(v), p)
                    })
                    .collect()
            }
            StreamKind::Resource(_) => return Ok(None),
        };
        // A parser may set the label on records whose stream lacks it.
        if has_parser && (remainder || part.iter().any(|(l, _)| l.is_empty())) {
            return Ok(None);
        }
        partitions.push(part);
    }
    if remainder && partitions.len() > 1 {
        return Ok(None);
    }
    let mut combos: Partition = vec![(Labels::new(), LogPredicate::All)];
    for part in &partitions {
        let mut next = Vec::new();
        for (l1, p1) in &combos {
            for (l2, p2) in part {
                let mut l = l1.clone();
                l.extend(l2.clone());
                next.push((l, and(vec![p1.clone(), p2.clone()])));
            }
        }
        combos = next;
        if combos.len() > MAX_HISTOGRAM_GROUPS {
            return Ok(None);
        }
    }
    let calls = (combos.len() + remainder as usize) * buckets.calls();
    if calls > MAX_HISTOGRAM_CALLS {
        return Ok(None);
    }
    let mut groups: BTreeMap<Labels, Vec<u64>> = BTreeMap::new();
    for (l, p) in combos {
        let counts = buckets.counts(qs, &and(vec![pd.pred.clone(), p]), grid, range_ns).await?;
        let slot = groups.entry(l).or_insert_with(|| vec![0; grid.n]);
        for (s, c) in slot.iter_mut().zip(counts) {
            *s += c;
        }
    }
    if remainder {
        let total = buckets.counts(qs, &pd.pred, grid, range_ns).await?;
        let mut rest = total.clone();
        for counts in groups.values() {
            for (r, c) in rest.iter_mut().zip(counts) {
                *r = r.saturating_sub(*c);
            }
        }
        let slot = groups.entry(Labels::new()).or_insert_with(|| vec![0; grid.n]);
        for (s, r) in slot.iter_mut().zip(rest) {
            *s += r;
        }
    }
    stats.lines += groups.values().flatten().sum::<u64>();
    Ok(Some(
        groups
            .into_iter()
            .map(|(labels, counts)| Series {
                labels,
                values: counts.into_iter().map(|c| (c > 0).then(|| range_value(func, c, 0, range_ns))).collect(),
            })
            .collect(),
    ))
}

fn group_key(labels: &Labels, grouping: Option<&Grouping>) -> Labels {
    match grouping {
        None => Labels::new(),
        Some(g) if g.without => {
            labels.iter().filter(|(k, _)| !g.labels.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
        }
        Some(g) => labels.iter().filter(|(k, _)| g.labels.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// A vector aggregation at each evaluation time.
fn aggregate(op: AggOp, param: Option<f64>, grouping: Option<&Grouping>, series: Vec<Series>, n: usize) -> Vec<Series> {
    let mut groups: BTreeMap<Labels, Vec<usize>> = BTreeMap::new();
    for (i, s) in series.iter().enumerate() {
        groups.entry(group_key(&s.labels, grouping)).or_default().push(i);
    }
    if matches!(op, AggOp::Topk | AggOp::Bottomk) {
        let k = param.unwrap_or(1.0) as usize;
        let mut out: Vec<Series> =
            series.iter().map(|s| Series { labels: s.labels.clone(), values: vec![None; n] }).collect();
        for members in groups.values() {
            for t in 0..n {
                let mut vals: Vec<(f64, usize)> =
                    members.iter().filter_map(|&i| series[i].values[t].map(|v| (v, i))).collect();
                vals.sort_by(|a, b| if op == AggOp::Topk { b.0.total_cmp(&a.0) } else { a.0.total_cmp(&b.0) });
                for (v, i) in vals.into_iter().take(k) {
                    out[i].values[t] = Some(v);
                }
            }
        }
        return out;
    }
    groups
        .into_iter()
        .map(|(labels, members)| {
            let values = (0..n)
                .map(|t| {
                    let vals: Vec<f64> = members.iter().filter_map(|&i| series[i].values[t]).collect();
                    if vals.is_empty() {
                        return None;
                    }
                    Some(match op {
                        AggOp::Sum => vals.iter().sum(),
                        AggOp::Count => vals.len() as f64,
                        AggOp::Min => vals.iter().copied().fold(f64::INFINITY, f64::min),
                        AggOp::Max => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        AggOp::Avg => vals.iter().sum::<f64>() / vals.len() as f64,
                        AggOp::Topk | AggOp::Bottomk => 0.0,
                    })
                })
                .collect();
            Series { labels, values }
        })
        .collect()
}

fn arith(op: BinOp, a: f64, b: f64) -> f64 {
    match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        BinOp::Mod => a % b,
        BinOp::Pow => a.powf(b),
        BinOp::Cmp(_) => a,
    }
}

/// A binary operation; vectors match on identical label sets.
fn binary(op: BinOp, l: Value, r: Value) -> Result<Value, QueryError> {
    let apply = |a: Option<f64>, b: Option<f64>, keep: Option<f64>| -> Option<f64> {
        let (a, b) = (a?, b?);
        match op {
            BinOp::Cmp(c) => c.holds(a, b).then_some(keep?),
            op => Some(arith(op, a, b)),
        }
    };
    Ok(match (l, r) {
        (Value::Scalar(_), Value::Scalar(_)) if matches!(op, BinOp::Cmp(_)) => {
            return Err(bad("comparisons between scalars must use the bool modifier, which is not supported"));
        }
        (Value::Scalar(a), Value::Scalar(b)) => Value::Scalar(arith(op, a, b)),
        (Value::Vector(v), Value::Scalar(b)) => Value::Vector(
            v.into_iter()
                .map(|s| Series { values: s.values.iter().map(|x| apply(*x, Some(b), *x)).collect(), labels: s.labels })
                .collect(),
        ),
        (Value::Scalar(a), Value::Vector(v)) => Value::Vector(
            v.into_iter()
                .map(|s| Series { values: s.values.iter().map(|x| apply(Some(a), *x, *x)).collect(), labels: s.labels })
                .collect(),
        ),
        (Value::Vector(lv), Value::Vector(rv)) => {
            let by_labels: HashMap<&Labels, &Series> = rv.iter().map(|s| (&s.labels, s)).collect();
            Value::Vector(
                lv.iter()
                    .filter_map(|s| {
                        let other = by_labels.get(&s.labels)?;
                        let values = s.values.iter().zip(&other.values).map(|(a, b)| apply(*a, *b, *a)).collect();
                        Some(Series { labels: s.labels.clone(), values })
                    })
                    .collect(),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(labels: &[(&str, &str)], values: &[Option<f64>]) -> Series {
        Series { labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), values: values.to_vec() }
    }

    #[test]
    fn aggregations() {
        let series = vec![
            s(&[("a", "1"), ("b", "x")], &[Some(1.0), None]),
            s(&[("a", "1"), ("b", "y")], &[Some(3.0), Some(2.0)]),
            s(&[("a", "2"), ("b", "x")], &[Some(5.0), None]),
        ];
        let by_a = Some(Grouping { without: false, labels: vec!["a".into()] });
        let sum = aggregate(AggOp::Sum, None, by_a.as_ref(), series.clone(), 2);
        assert_eq!(sum, vec![s(&[("a", "1")], &[Some(4.0), Some(2.0)]), s(&[("a", "2")], &[Some(5.0), None])]);
        let without_b = Some(Grouping { without: true, labels: vec!["b".into()] });
        assert_eq!(aggregate(AggOp::Sum, None, without_b.as_ref(), series.clone(), 2), sum);
        let count = aggregate(AggOp::Count, None, None, series.clone(), 2);
        assert_eq!(count, vec![s(&[], &[Some(3.0), Some(1.0)])]);
        let avg = aggregate(AggOp::Avg, None, None, series.clone(), 2);
        assert_eq!(avg, vec![s(&[], &[Some(3.0), Some(2.0)])]);
        let max = aggregate(AggOp::Max, None, by_a.as_ref(), series.clone(), 2);
        assert_eq!(max[0].values, vec![Some(3.0), Some(2.0)]);
        let min = aggregate(AggOp::Min, None, None, series.clone(), 2);
        assert_eq!(min[0].values, vec![Some(1.0), Some(2.0)]);
        let top = aggregate(AggOp::Topk, Some(1.0), None, series.clone(), 2);
        assert_eq!(top[2].values, vec![Some(5.0), None]);
        assert_eq!(top[1].values, vec![None, Some(2.0)]);
        let bottom = aggregate(AggOp::Bottomk, Some(1.0), by_a.as_ref(), series, 2);
        assert_eq!(bottom[0].values, vec![Some(1.0), None]);
    }

    #[test]
    fn binary_operations() {
        let v = Value::Vector(vec![s(&[("a", "1")], &[Some(2.0), Some(8.0)])]);
        assert_eq!(
            binary(BinOp::Mul, v.clone(), Value::Scalar(10.0)).unwrap(),
            Value::Vector(vec![s(&[("a", "1")], &[Some(20.0), Some(80.0)])])
        );
        assert_eq!(
            binary(BinOp::Cmp(super::super::logql::CmpOp::Gt), v.clone(), Value::Scalar(5.0)).unwrap(),
            Value::Vector(vec![s(&[("a", "1")], &[None, Some(8.0)])])
        );
        let w = Value::Vector(vec![s(&[("a", "1")], &[Some(4.0), None]), s(&[("a", "2")], &[Some(1.0), Some(1.0)])]);
        assert_eq!(
            binary(BinOp::Div, v, w).unwrap(),
            Value::Vector(vec![s(&[("a", "1")], &[Some(0.5), None])]),
            "only identical label sets match"
        );
        assert_eq!(binary(BinOp::Pow, Value::Scalar(2.0), Value::Scalar(3.0)).unwrap(), Value::Scalar(8.0));
        assert!(binary(BinOp::Cmp(super::super::logql::CmpOp::Gt), Value::Scalar(2.0), Value::Scalar(3.0)).is_err());
    }

    #[test]
    fn histogram_buckets_for_a_range_query() {
        let grid = Grid { start: 60_000, step: 20_000, n: 4 };
        let b = Buckets::plan(&grid, 30_000).unwrap();
        assert_eq!((b.lo, b.hi, b.width), (30_000, 120_000, 10_000));
        let instant = Grid { start: 1_000_123, step: 0, n: 1 };
        let b = Buckets::plan(&instant, 1000).unwrap();
        assert_eq!((b.lo, b.hi), (999_124, 1_000_124), "an instant window is (t - range, t]");
    }
}
