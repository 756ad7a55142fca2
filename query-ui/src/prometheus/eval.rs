//! The PromQL evaluator: checks a parsed expression against the supported subset, reads the
//! series of every selector from the store once for the whole query (the time range and the
//! metric name pushed down, label matchers checked by the store on each series' labels before
//! it reads the series' points), then evaluates the expression at each step as
//! Prometheus 2.x does (selectors and ranges closed at both ends, 5 m look-back, staleness
//! markers, `rate` extrapolation).
//!
//! Everything here is synchronous and CPU-bound: callers run it on the blocking pool.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use obsbox_storage::prometheus::{ViewOptions, is_stale_nan, otlp_name_regex};
use obsbox_storage::{LabelMatcher, MatchOp as StoreOp, MetricQuery, Reader, StoreError, TimeRange};
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, Offset, VectorMatchCardinality,
    VectorSelector,
};

use super::hist::FloatHist;

/// A sorted label set, `__name__` included when the series has a name.
pub(crate) type Labels = Vec<(String, String)>;
/// A shared label set.
pub(crate) type Metric = Arc<Labels>;

/// Why evaluation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EvalError {
    /// The query is malformed or uses something outside the supported subset (400, `bad_data`).
    #[error("{0}")]
    BadData(String),
    /// The query is valid but cannot be evaluated on this data (422, `execution`).
    #[error("{0}")]
    Execution(String),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The query ran past its time budget (503, `timeout`).
    #[error("query timed out in expression evaluation ([query] timeout)")]
    Timeout,
}

/// Limits of one query.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Most samples read from the store for one query.
    pub max_samples: usize,
    /// Most points in the result (series × steps).
    pub max_points: usize,
    /// Most series one selector may read.
    pub max_series: usize,
    /// When evaluation gives up (`timeout` error); checked while loading and between steps.
    pub deadline: Option<std::time::Instant>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_samples: 20_000_000, max_points: 20_000_000, max_series: 100_000, deadline: None }
    }
}

impl Limits {
    /// `Err(Timeout)` once the deadline has passed.
    pub fn check_deadline(&self) -> Result<(), EvalError> {
        match self.deadline {
            Some(d) if std::time::Instant::now() > d => Err(EvalError::Timeout),
            _ => Ok(()),
        }
    }
}

/// What a query may still read: samples left, and the limits of its selectors.
pub(crate) struct Budget {
    /// Samples the query may still read.
    pub samples: usize,
    /// The query's limits.
    pub limits: Limits,
}

/// One series read from the store, points oldest first.
#[derive(Clone, Debug, Default)]
pub(crate) struct Series {
    pub metric: Metric,
    /// `metric` without `__name__`, computed once for the functions that drop it.
    pub unnamed: Metric,
    /// Float samples; stale markers included.
    pub floats: Vec<(i64, f64)>,
    /// Native histogram samples.
    pub hists: Vec<(i64, Arc<FloatHist>)>,
}

/// One element of an instant vector.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub metric: Metric,
    pub f: f64,
    pub h: Option<Arc<FloatHist>>,
}

/// What an expression evaluates to.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    Scalar(f64),
    Str(String),
    Vector(Vec<Sample>),
    Matrix(Vec<Series>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Scalar(_) => "scalar",
            Value::Str(_) => "string",
            Value::Vector(_) => "vector",
            Value::Matrix(_) => "matrix",
        }
    }
}

fn millis(d: &Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => millis(d),
        Some(Offset::Neg(d)) => -millis(d),
    }
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => millis(&d),
        Err(e) => -millis(&e.duration()),
    }
}

// ---------------------------------------------------------------------------------------------
// The supported subset
// ---------------------------------------------------------------------------------------------

const MATRIX_FUNCS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "changes",
    "resets",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "present_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "quantile_over_time",
];

const SIMPLE_FUNCS: &[&str] =
    &["abs", "ceil", "floor", "round", "sqrt", "exp", "ln", "log2", "log10", "sgn", "clamp", "clamp_min", "clamp_max"];

const OTHER_FUNCS: &[&str] = &[
    "scalar",
    "vector",
    "time",
    "timestamp",
    "histogram_quantile",
    "histogram_count",
    "histogram_sum",
    "sort",
    "sort_desc",
];

const AGGREGATIONS: &[&str] =
    &["sum", "avg", "min", "max", "count", "topk", "bottomk", "group", "stddev", "stdvar", "quantile"];

/// Deepest expression tree accepted (nested brackets, operands of chained operators).
/// promql-parser and this evaluator recurse on the tree: without a bound, a 2 KB query such as
/// `1+1+...+1` overflowed the thread's stack and aborted the process (found by fuzzing).
pub(crate) const MAX_DEPTH: usize = 128;
/// Parses `q`. The text has been bounded first (`prescan` in `mod.rs`: bracket depth and
/// operator count under `[query]`), so the parser's recursion is bounded too.
pub(crate) fn parse(q: &str) -> Result<Expr, String> {
    // promql-parser panics in some grammar actions (`offset NaN`: a NaN duration, found by the
    // fuzzing campaign): a bad query, not a dropped connection.
    std::panic::catch_unwind(|| promql_parser::parser::parse(q))
        .unwrap_or_else(|_| Err("the query cannot be parsed (the PromQL parser failed on it)".into()))
}

/// Checks that `expr` only uses the supported subset and nests at most [`MAX_DEPTH`] deep; the
/// error names the first construct that is not supported.
pub(crate) fn check_supported(expr: &Expr) -> Result<(), EvalError> {
    supported(expr, 0)
}

fn supported(expr: &Expr, depth: usize) -> Result<(), EvalError> {
    if depth > MAX_DEPTH {
        return Err(EvalError::BadData(format!("the query nests deeper than {MAX_DEPTH} levels")));
    }
    let check_supported = |e: &Expr| supported(e, depth + 1);
    let bad = |what: String| Err(EvalError::BadData(format!("{what} is not supported by obsbox's PromQL subset")));
    match expr {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::Paren(p) => check_supported(&p.expr),
        Expr::Unary(u) => check_supported(&u.expr),
        Expr::VectorSelector(vs) => check_selector(vs),
        Expr::MatrixSelector(ms) => {
            if millis(&ms.range) > MAX_SPAN_MS {
                return Err(EvalError::BadData(format!("the range [{:?}] is longer than 100 years", ms.range)));
            }
            check_selector(&ms.vs)
        }
        Expr::Subquery(_) => bad("a subquery".to_string()),
        Expr::Extension(_) => bad("an extension expression".to_string()),
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            if !AGGREGATIONS.contains(&op.as_str()) {
                return bad(format!("the aggregation {op}"));
            }
            if let Some(p) = &a.param {
                check_supported(p)?;
            }
            check_supported(&a.expr)
        }
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier
                && (m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some())
            {
                return bad("fill modifiers".to_string());
            }
            check_supported(&b.lhs)?;
            check_supported(&b.rhs)
        }
        Expr::Call(c) => {
            let name = c.func.name;
            if !(MATRIX_FUNCS.contains(&name) || SIMPLE_FUNCS.contains(&name) || OTHER_FUNCS.contains(&name)) {
                return bad(format!("the function {name}()"));
            }
            for a in &c.args.args {
                check_supported(a)?;
            }
            Ok(())
        }
    }
}

/// Longest range, offset and distance of an `@` time from 1970 accepted (100 years, in ms): with
/// request times bounded as well (`parse_time`), time arithmetic cannot overflow.
pub(crate) const MAX_SPAN_MS: i64 = 100 * 366 * 86_400_000;

fn check_selector(vs: &VectorSelector) -> Result<(), EvalError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(EvalError::BadData("`or` inside a selector is not supported by obsbox's PromQL subset".into()));
    }
    if offset_ms(&vs.offset).abs() > MAX_SPAN_MS {
        return Err(EvalError::BadData("an offset longer than 100 years is not supported".into()));
    }
    if let Some(AtModifier::At(t)) = &vs.at
        && system_time_ms(t).abs() > MAX_SPAN_MS * 100
    {
        return Err(EvalError::BadData("an @ time more than 10,000 years from 1970 is not supported".into()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading selectors from the store
// ---------------------------------------------------------------------------------------------

/// Every matcher of a selector, the metric name included.
fn selector_matchers(vs: &VectorSelector) -> Vec<Matcher> {
    let mut out = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        out.push(Matcher::new(MatchOp::Equal, "__name__", name));
    }
    out.extend(vs.matchers.matchers.iter().cloned());
    out
}

/// The matchers of every selector in `expr`, in order.
pub(crate) fn all_selectors(expr: &Expr, out: &mut Vec<Vec<Matcher>>) {
    match expr {
        Expr::VectorSelector(vs) => out.push(selector_matchers(vs)),
        Expr::MatrixSelector(ms) => out.push(selector_matchers(&ms.vs)),
        Expr::Paren(p) => all_selectors(&p.expr, out),
        Expr::Unary(u) => all_selectors(&u.expr, out),
        Expr::Subquery(q) => all_selectors(&q.expr, out),
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                all_selectors(p, out);
            }
            all_selectors(&a.expr, out);
        }
        Expr::Binary(b) => {
            all_selectors(&b.lhs, out);
            all_selectors(&b.rhs, out);
        }
        Expr::Call(c) => c.args.args.iter().for_each(|a| all_selectors(a, out)),
        _ => {}
    }
}

/// The store query for a selector: the metric name through [`otlp_name_regex`] (the exact name
/// is checked on the view's series).
pub(crate) fn pushdown(matchers: &[Matcher]) -> Vec<LabelMatcher> {
    matchers
        .iter()
        .filter(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
        .map(|m| LabelMatcher { name: "__name__".into(), op: StoreOp::Re, value: otlp_name_regex(&m.value) })
        .collect()
}

/// The matchers the store checks on the view labels of each series before it reads the series'
/// points (`Reader::find_metrics_view`), so a selective selector reads only what it selects:
/// every matcher but those on `__name__`, `le` and `quantile` (which differ between the
/// Prometheus series of one OTLP series). None when the selector may select `target_info`,
/// whose labels come from the resource rather than the series.
pub(crate) fn label_pushdown(matchers: &[Matcher]) -> Vec<LabelMatcher> {
    let plain_name =
        matchers.iter().any(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal) && m.value != "target_info");
    if !plain_name {
        return Vec::new();
    }
    matchers
        .iter()
        .filter(|m| !matches!(m.name.as_str(), "__name__" | "le" | "quantile"))
        .map(|m| {
            // Regular expressions go as the parser compiled them (anchored, `{` escaped where Go
            // would read it literally), so the store matches exactly what the selector does.
            let (op, value) = match &m.op {
                MatchOp::Equal => (StoreOp::Eq, m.value.clone()),
                MatchOp::NotEqual => (StoreOp::Ne, m.value.clone()),
                MatchOp::Re(re) => (StoreOp::Re, re.as_str().to_string()),
                MatchOp::NotRe(re) => (StoreOp::NotRe, re.as_str().to_string()),
            };
            LabelMatcher { name: m.name.clone(), op, value }
        })
        .collect()
}

fn label_of<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

pub(crate) fn matches_all(labels: &Labels, matchers: &[Matcher]) -> bool {
    matchers.iter().all(|m| m.is_match(label_of(labels, &m.name)))
}

/// Reads the series matching `matchers` with samples in `[mint, maxt]` (milliseconds).
pub(crate) fn read_series(
    reader: &dyn Reader,
    matchers: &[Matcher],
    mint: i64,
    maxt: i64,
    budget: &mut Budget,
) -> Result<Vec<Series>, EvalError> {
    budget.limits.check_deadline()?;
    if !matchers.iter().any(|m| !m.is_match("")) {
        return Err(EvalError::BadData("vector selector must contain at least one non-empty matcher".to_string()));
    }
    let start_ns = u64::try_from(mint.max(0)).unwrap_or(0).saturating_mul(1_000_000);
    let end_ns = u64::try_from(maxt.saturating_add(1).max(0)).unwrap_or(0).saturating_mul(1_000_000);
    if end_ns <= start_ns {
        return Ok(Vec::new());
    }
    let query = MetricQuery { matchers: pushdown(matchers), time: TimeRange { start_ns, end_ns } };
    let opts = ViewOptions { native_histograms: true, target_info: true };
    let view = reader.find_metrics_view(&query, &label_pushdown(matchers), &opts)?;
    let mut out = Vec::new();
    let max_series = budget.limits.max_series;
    let mut take = |n: usize| -> Result<(), EvalError> {
        if n > budget.samples {
            return Err(EvalError::Execution(
                "query processing would load too many samples into memory in query execution ([query] max_samples)"
                    .to_string(),
            ));
        }
        budget.samples -= n;
        Ok(())
    };
    let too_many_series = || {
        EvalError::Execution(format!(
            "a selector of the query matches more than {max_series} series ([query] max_series): add label matchers"
        ))
    };
    for fam in view.families {
        for s in fam.series {
            if !matches_all(&s.labels, matchers) {
                continue;
            }
            let floats: Vec<(i64, f64)> =
                s.samples.iter().filter(|p| p.t_ms >= mint && p.t_ms <= maxt).map(|p| (p.t_ms, p.value)).collect();
            if floats.is_empty() {
                continue;
            }
            if out.len() >= max_series {
                return Err(too_many_series());
            }
            take(floats.len())?;
            let metric = Arc::new(s.labels);
            out.push(Series { unnamed: drop_name(&metric), metric, floats, hists: Vec::new() });
        }
        for s in fam.native {
            if !matches_all(&s.labels, matchers) {
                continue;
            }
            let hists: Vec<(i64, Arc<FloatHist>)> = s
                .histograms
                .iter()
                .filter(|h| h.t_ms >= mint && h.t_ms <= maxt)
                .map(|h| (h.t_ms, Arc::new(FloatHist::from_native(h))))
                .collect();
            if hists.is_empty() {
                continue;
            }
            if out.len() >= max_series {
                return Err(too_many_series());
            }
            take(hists.len() * 8)?;
            let metric = Arc::new(s.labels);
            out.push(Series { unnamed: drop_name(&metric), metric, floats: Vec::new(), hists });
        }
    }
    out.sort_by(|a, b| a.metric.cmp(&b.metric));
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

/// A query being evaluated: the time grid and the series read for each selector.
pub(crate) struct Evaluator {
    start: i64,
    end: i64,
    lookback: i64,
    /// Series per selector, keyed by the selector's address in the expression tree.
    data: HashMap<usize, Vec<Series>>,
    /// Grouping labels of aggregations, computed once per input series rather than per step.
    groups: RefCell<GroupCache>,
}

/// Most input label sets [`GroupCache`] remembers before it starts over (inputs made afresh at
/// every step, such as the results of arithmetic, would otherwise pile up).
const GROUP_CACHE_LIMIT: usize = 1 << 18;

/// The group of each input label set of each aggregation: keyed by the addresses of the
/// aggregation and of the label set (the entry holds the set, so its address is not reused);
/// equal groups share one `Arc`, so grouping compares addresses.
#[derive(Default)]
struct GroupCache {
    by_input: HashMap<(usize, usize), (Metric, Metric)>,
    interned: HashMap<(usize, Labels), Metric>,
}

impl GroupCache {
    fn group_of(&mut self, agg: usize, m: &Metric, labels: impl Fn(&Labels) -> Labels) -> Metric {
        let k = (agg, Arc::as_ptr(m) as usize);
        if let Some((_, g)) = self.by_input.get(&k) {
            return g.clone();
        }
        if self.by_input.len() >= GROUP_CACHE_LIMIT {
            self.by_input.clear();
            self.interned.clear();
        }
        let g = self.interned.entry((agg, labels(m))).or_insert_with_key(|(_, l)| Arc::new(l.clone())).clone();
        self.by_input.insert(k, (m.clone(), g.clone()));
        g
    }
}

fn key(vs: &VectorSelector) -> usize {
    vs as *const VectorSelector as usize
}

impl Evaluator {
    /// Reads what `expr` needs for evaluation at every step of `[start, end]` (milliseconds).
    pub fn load(
        reader: &dyn Reader,
        expr: &Expr,
        start: i64,
        end: i64,
        lookback: i64,
        limits: &Limits,
    ) -> Result<Evaluator, EvalError> {
        let mut ev = Evaluator { start, end, lookback, data: HashMap::new(), groups: RefCell::default() };
        let mut budget = Budget { samples: limits.max_samples, limits: *limits };
        ev.load_expr(reader, expr, &mut budget)?;
        Ok(ev)
    }

    fn load_expr(&mut self, reader: &dyn Reader, expr: &Expr, budget: &mut Budget) -> Result<(), EvalError> {
        match expr {
            Expr::VectorSelector(vs) => self.load_selector(reader, vs, self.lookback, budget),
            Expr::MatrixSelector(ms) => self.load_selector(reader, &ms.vs, millis(&ms.range), budget),
            Expr::Paren(p) => self.load_expr(reader, &p.expr, budget),
            Expr::Unary(u) => self.load_expr(reader, &u.expr, budget),
            Expr::Aggregate(a) => {
                if let Some(p) = &a.param {
                    self.load_expr(reader, p, budget)?;
                }
                self.load_expr(reader, &a.expr, budget)
            }
            Expr::Binary(b) => {
                self.load_expr(reader, &b.lhs, budget)?;
                self.load_expr(reader, &b.rhs, budget)
            }
            Expr::Call(c) => {
                for a in &c.args.args {
                    self.load_expr(reader, a, budget)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The evaluation time of a selector at step `ts`: `@` replaces it, `offset` shifts it.
    fn selector_time(&self, vs: &VectorSelector, ts: i64) -> i64 {
        let base = match &vs.at {
            None => ts,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(t)) => system_time_ms(t),
        };
        base - offset_ms(&vs.offset)
    }

    fn load_selector(
        &mut self,
        reader: &dyn Reader,
        vs: &VectorSelector,
        window: i64,
        budget: &mut Budget,
    ) -> Result<(), EvalError> {
        let a = self.selector_time(vs, self.start);
        let b = self.selector_time(vs, self.end);
        let series = read_series(reader, &selector_matchers(vs), a.min(b) - window, a.max(b), budget)?;
        self.data.insert(key(vs), series);
        Ok(())
    }

    /// Evaluates `expr` at `ts` (milliseconds).
    pub fn eval(&self, expr: &Expr, ts: i64) -> Result<Value, EvalError> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, ts),
            Expr::Unary(u) => match self.eval(&u.expr, ts)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(v) => Ok(Value::Vector(
                    v.into_iter()
                        .map(|s| Sample {
                            metric: drop_name(&s.metric),
                            f: -s.f,
                            h: s.h.map(|h| Arc::new(h.scale(-1.0))),
                        })
                        .collect(),
                )),
                other => Err(EvalError::BadData(format!("unary minus on a {}", other.type_name()))),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.instant(vs, ts))),
            Expr::MatrixSelector(ms) => {
                let windows = self.windows(ms, ts);
                Ok(Value::Matrix(
                    windows
                        .into_iter()
                        .map(|w| Series {
                            metric: w.metric.clone(),
                            unnamed: w.unnamed.clone(),
                            floats: w.floats.into_owned(),
                            hists: w.hists.to_vec(),
                        })
                        .collect(),
                ))
            }
            Expr::Aggregate(a) => self.aggregate(a, ts),
            Expr::Binary(b) => self.binary(b, ts),
            Expr::Call(c) => self.call(c, ts),
            Expr::Subquery(_) | Expr::Extension(_) => {
                Err(EvalError::BadData("subqueries are not supported by obsbox's PromQL subset".into()))
            }
        }
    }

    fn series_of(&self, vs: &VectorSelector) -> &[Series] {
        self.data.get(&key(vs)).map_or(&[], |v| v.as_slice())
    }

    /// The instant vector of a selector at `ts`: per series the newest sample in
    /// `[t - lookback, t]` unless it is a staleness marker.
    fn instant(&self, vs: &VectorSelector, ts: i64) -> Vec<Sample> {
        let t = self.selector_time(vs, ts);
        let mint = t - self.lookback;
        let mut out = Vec::new();
        for s in self.series_of(vs) {
            let fi = s.floats.partition_point(|p| p.0 <= t);
            let hi = s.hists.partition_point(|p| p.0 <= t);
            let f = fi.checked_sub(1).map(|i| s.floats[i]);
            let h = hi.checked_sub(1).map(|i| &s.hists[i]);
            let take_hist = match (f, h) {
                (Some(f), Some(h)) => h.0 > f.0,
                (None, Some(_)) => true,
                _ => false,
            };
            if take_hist {
                if let Some((ht, hv)) = h
                    && *ht >= mint
                {
                    out.push(Sample { metric: s.metric.clone(), f: 0.0, h: Some(hv.clone()) });
                }
            } else if let Some((ft, fv)) = f
                && ft >= mint
                && !is_stale_nan(fv)
            {
                out.push(Sample { metric: s.metric.clone(), f: fv, h: None });
            }
        }
        out
    }

    /// The samples of each series of a range selector in `[t - range, t]`, staleness markers
    /// left out; series without samples are left out.
    fn windows<'a>(&'a self, ms: &MatrixSelector, ts: i64) -> Vec<Window<'a>> {
        let t = self.selector_time(&ms.vs, ts);
        let mint = t - millis(&ms.range);
        let mut out = Vec::new();
        for s in self.series_of(&ms.vs) {
            let a = s.floats.partition_point(|p| p.0 < mint);
            let b = s.floats.partition_point(|p| p.0 <= t);
            let fl = &s.floats[a..b];
            let floats = if fl.iter().any(|p| is_stale_nan(p.1)) {
                Cow::Owned(fl.iter().copied().filter(|p| !is_stale_nan(p.1)).collect())
            } else {
                Cow::Borrowed(fl)
            };
            let a = s.hists.partition_point(|p| p.0 < mint);
            let b = s.hists.partition_point(|p| p.0 <= t);
            let hists = &s.hists[a..b];
            if floats.is_empty() && hists.is_empty() {
                continue;
            }
            out.push(Window {
                metric: &s.metric,
                unnamed: &s.unnamed,
                floats,
                hists,
                range_start: mint,
                range_end: t,
                range: millis(&ms.range),
            });
        }
        out
    }

    fn eval_vector(&self, e: &Expr, ts: i64) -> Result<Vec<Sample>, EvalError> {
        match self.eval(e, ts)? {
            Value::Vector(v) => Ok(v),
            other => Err(EvalError::BadData(format!("expected an instant vector, got a {}", other.type_name()))),
        }
    }

    fn eval_scalar(&self, e: &Expr, ts: i64) -> Result<f64, EvalError> {
        match self.eval(e, ts)? {
            Value::Scalar(v) => Ok(v),
            other => Err(EvalError::BadData(format!("expected a scalar, got a {}", other.type_name()))),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Functions
    // -----------------------------------------------------------------------------------------

    fn call(&self, c: &Call, ts: i64) -> Result<Value, EvalError> {
        let name = c.func.name;
        let args = &c.args.args;
        if MATRIX_FUNCS.contains(&name) {
            let (param, ms_expr) = if name == "quantile_over_time" {
                (Some(self.eval_scalar(&args[0], ts)?), &args[1])
            } else {
                (None, &args[0])
            };
            let ms = match unparen(ms_expr) {
                Expr::MatrixSelector(ms) => ms,
                _ => return Err(EvalError::BadData(format!("{name}() needs a range vector selector"))),
            };
            let mut out = Vec::new();
            for w in self.windows(ms, ts) {
                if let Some(s) = range_function(name, param, &w) {
                    out.push(s);
                }
            }
            return Ok(Value::Vector(out));
        }
        if SIMPLE_FUNCS.contains(&name) {
            let v = self.eval_vector(&args[0], ts)?;
            let p: Vec<f64> = args[1..].iter().map(|a| self.eval_scalar(a, ts)).collect::<Result<_, _>>()?;
            let f = |x: f64| -> f64 {
                match name {
                    "abs" => x.abs(),
                    "ceil" => x.ceil(),
                    "floor" => x.floor(),
                    "round" => {
                        let to = p.first().copied().unwrap_or(1.0);
                        // As Prometheus: round half up, to the nearest multiple of `to`.
                        let inv = 1.0 / to;
                        (x * inv + 0.5).floor() / inv
                    }
                    "sqrt" => x.sqrt(),
                    "exp" => x.exp(),
                    "ln" => x.ln(),
                    "log2" => x.log2(),
                    "log10" => x.log10(),
                    "sgn" => {
                        if x > 0.0 {
                            1.0
                        } else if x < 0.0 {
                            -1.0
                        } else {
                            x
                        }
                    }
                    "clamp" => x.max(p[0]).min(p[1]),
                    "clamp_min" => x.max(p[0]),
                    "clamp_max" => x.min(p[0]),
                    _ => x,
                }
            };
            if name == "clamp" && p[1] < p[0] {
                return Ok(Value::Vector(Vec::new()));
            }
            let out = v
                .into_iter()
                .filter(|s| s.h.is_none())
                .map(|s| {
                    let x =
                        if matches!(name, "clamp" | "clamp_min" | "clamp_max") && s.f.is_nan() { s.f } else { f(s.f) };
                    Sample { metric: drop_name(&s.metric), f: x, h: None }
                })
                .collect();
            return Ok(Value::Vector(out));
        }
        match name {
            "time" => Ok(Value::Scalar(ts as f64 / 1000.0)),
            "scalar" => {
                let v = self.eval_vector(&args[0], ts)?;
                let floats: Vec<&Sample> = v.iter().filter(|s| s.h.is_none()).collect();
                Ok(Value::Scalar(if floats.len() == 1 { floats[0].f } else { f64::NAN }))
            }
            "vector" => {
                let x = self.eval_scalar(&args[0], ts)?;
                Ok(Value::Vector(vec![Sample { metric: Arc::new(Vec::new()), f: x, h: None }]))
            }
            "timestamp" => {
                let vs = match unparen(&args[0]) {
                    Expr::VectorSelector(vs) => Some(vs),
                    _ => None,
                };
                match vs {
                    // The sample's own time, as Prometheus does for a plain selector.
                    Some(vs) => {
                        let t = self.selector_time(vs, ts);
                        let mint = t - self.lookback;
                        let mut out = Vec::new();
                        for s in self.series_of(vs) {
                            let i = s.floats.partition_point(|p| p.0 <= t);
                            if let Some(&(st, sv)) = i.checked_sub(1).map(|i| &s.floats[i])
                                && st >= mint
                                && !is_stale_nan(sv)
                            {
                                out.push(Sample { metric: drop_name(&s.metric), f: st as f64 / 1000.0, h: None });
                            }
                        }
                        Ok(Value::Vector(out))
                    }
                    None => {
                        let v = self.eval_vector(&args[0], ts)?;
                        Ok(Value::Vector(
                            v.into_iter()
                                .map(|s| Sample { metric: drop_name(&s.metric), f: ts as f64 / 1000.0, h: None })
                                .collect(),
                        ))
                    }
                }
            }
            "sort" | "sort_desc" => {
                let mut v = self.eval_vector(&args[0], ts)?;
                v.retain(|s| s.h.is_none());
                v.sort_by(|a, b| {
                    let o = a.f.partial_cmp(&b.f).unwrap_or_else(|| a.f.is_nan().cmp(&b.f.is_nan()));
                    if name == "sort" { o } else { o.reverse() }
                });
                Ok(Value::Vector(v))
            }
            "histogram_count" | "histogram_sum" => {
                let v = self.eval_vector(&args[0], ts)?;
                Ok(Value::Vector(
                    v.into_iter()
                        .filter_map(|s| {
                            let h = s.h?;
                            let f = if name == "histogram_count" { h.count } else { h.sum };
                            Some(Sample { metric: drop_name(&s.metric), f, h: None })
                        })
                        .collect(),
                ))
            }
            "histogram_quantile" => {
                let q = self.eval_scalar(&args[0], ts)?;
                let v = self.eval_vector(&args[1], ts)?;
                Ok(Value::Vector(histogram_quantile(q, v)))
            }
            other => {
                Err(EvalError::BadData(format!("the function {other}() is not supported by obsbox's PromQL subset")))
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Aggregations
    // -----------------------------------------------------------------------------------------

    fn aggregate(&self, a: &AggregateExpr, ts: i64) -> Result<Value, EvalError> {
        let op = a.op.to_string();
        let param = match &a.param {
            Some(p) if op != "count_values" => Some(self.eval_scalar(p, ts)?),
            _ => None,
        };
        let input = self.eval_vector(&a.expr, ts)?;
        let (include, names): (bool, Vec<String>) = match &a.modifier {
            None => (true, Vec::new()),
            Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
            Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
        };
        let group_labels = |m: &Labels| -> Labels {
            if include {
                m.iter().filter(|(k, _)| names.iter().any(|n| n == k)).cloned().collect()
            } else {
                m.iter().filter(|(k, _)| k != "__name__" && !names.iter().any(|n| n == k)).cloned().collect()
            }
        };
        // Groups in first-seen order.
        let agg = a as *const AggregateExpr as usize;
        let mut cache = self.groups.borrow_mut();
        let mut index: HashMap<usize, usize> = HashMap::new();
        let mut groups: Vec<(Metric, Vec<Sample>)> = Vec::new();
        for s in input {
            let g = cache.group_of(agg, &s.metric, group_labels);
            match index.entry(Arc::as_ptr(&g) as usize) {
                std::collections::hash_map::Entry::Occupied(e) => groups[*e.get()].1.push(s),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(groups.len());
                    groups.push((g, vec![s]));
                }
            }
        }
        drop(cache);
        let mut out = Vec::new();
        for (metric, samples) in groups {
            match op.as_str() {
                "topk" | "bottomk" => {
                    let k = param.unwrap_or(0.0);
                    if k < 1.0 {
                        continue;
                    }
                    let k = (k as usize).min(samples.len());
                    let mut floats: Vec<Sample> = samples.into_iter().filter(|s| s.h.is_none()).collect();
                    // NaN sorts last either way.
                    floats.sort_by(|a, b| match (a.f.is_nan(), b.f.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ => {
                            let o = a.f.partial_cmp(&b.f).unwrap_or(std::cmp::Ordering::Equal);
                            if op == "topk" { o.reverse() } else { o }
                        }
                    });
                    out.extend(floats.into_iter().take(k));
                }
                _ => {
                    if let Some(s) = aggregate_group(&op, param, metric, &samples) {
                        out.push(s);
                    }
                }
            }
        }
        Ok(Value::Vector(out))
    }

    // -----------------------------------------------------------------------------------------
    // Binary operators
    // -----------------------------------------------------------------------------------------

    fn binary(&self, b: &BinaryExpr, ts: i64) -> Result<Value, EvalError> {
        let op = b.op.to_string();
        let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs, ts)?;
        let rhs = self.eval(&b.rhs, ts)?;
        match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) => {
                let (v, keep) = scalar_op(&op, l, r)?;
                if is_comparison(&op) { Ok(Value::Scalar(if keep { 1.0 } else { 0.0 })) } else { Ok(Value::Scalar(v)) }
            }
            (Value::Vector(v), Value::Scalar(s)) => Ok(Value::Vector(vector_scalar(&op, v, s, false, return_bool)?)),
            (Value::Scalar(s), Value::Vector(v)) => Ok(Value::Vector(vector_scalar(&op, v, s, true, return_bool)?)),
            (Value::Vector(l), Value::Vector(r)) => {
                let (card, matching) = match &b.modifier {
                    Some(m) => (m.card.clone(), m.matching.clone()),
                    None => (VectorMatchCardinality::OneToOne, None),
                };
                let (on, names) = match matching {
                    Some(LabelModifier::Include(l)) => (true, l.labels),
                    Some(LabelModifier::Exclude(l)) => (false, l.labels),
                    None => (false, Vec::new()),
                };
                let m = Matching { on, names, card };
                match op.as_str() {
                    "and" | "or" | "unless" => Ok(Value::Vector(set_op(&op, l, r, &m))),
                    _ => Ok(Value::Vector(vector_vector(&op, l, r, &m, return_bool)?)),
                }
            }
            (l, r) => Err(EvalError::BadData(format!(
                "binary operator {op} between a {} and a {} is not supported",
                l.type_name(),
                r.type_name()
            ))),
        }
    }
}

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        e => e,
    }
}

/// The labels without `__name__`.
pub(crate) fn drop_name(m: &Metric) -> Metric {
    if m.iter().any(|(k, _)| k == "__name__") {
        Arc::new(m.iter().filter(|(k, _)| k != "__name__").cloned().collect())
    } else {
        m.clone()
    }
}

/// The samples of one series inside a range selector's window.
pub(crate) struct Window<'a> {
    pub metric: &'a Metric,
    pub unnamed: &'a Metric,
    pub floats: Cow<'a, [(i64, f64)]>,
    pub hists: &'a [(i64, Arc<FloatHist>)],
    pub range_start: i64,
    pub range_end: i64,
    pub range: i64,
}

/// Prometheus' `extrapolatedRate` (2.x): the increase between the first and last sample,
/// corrected for counter resets, extrapolated to the window's edges when the samples come
/// close enough to them (within 1.1 average intervals), otherwise by half an interval, and for
/// counters never below zero at the start.
pub(crate) fn extrapolated_rate(w: &Window<'_>, is_counter: bool, is_rate: bool) -> Option<(f64, Option<FloatHist>)> {
    let (first_t, last_t, n, result, hist, first_v) = if !w.hists.is_empty() {
        if !w.floats.is_empty() || w.hists.len() < 2 {
            return None;
        }
        let first = &w.hists[0];
        let last = &w.hists[w.hists.len() - 1];
        let min_schema = w.hists.iter().map(|h| h.1.schema).min().unwrap_or(0);
        let mut h = last.1.to_schema(min_schema).sub(&first.1);
        if is_counter {
            let mut prev = &first.1;
            for cur in &w.hists[1..] {
                if cur.1.detect_reset(prev) {
                    h = h.add(prev);
                }
                prev = &cur.1;
            }
        }
        (first.0, last.0, w.hists.len(), 0.0, Some(h), 0.0)
    } else {
        let f = &w.floats;
        if f.len() < 2 {
            return None;
        }
        let mut result = f[f.len() - 1].1 - f[0].1;
        if is_counter {
            let mut prev = f[0].1;
            for &(_, v) in &f[1..] {
                if v < prev {
                    result += prev;
                }
                prev = v;
            }
        }
        (f[0].0, f[f.len() - 1].0, f.len(), result, None, f[0].1)
    };
    let mut duration_to_start = (first_t - w.range_start) as f64 / 1000.0;
    let duration_to_end = (w.range_end - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let avg = sampled / (n - 1) as f64;
    if is_counter && hist.is_none() && result > 0.0 && first_v >= 0.0 {
        let duration_to_zero = sampled * (first_v / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    let threshold = avg * 1.1;
    let mut interval = sampled;
    interval += if duration_to_start < threshold { duration_to_start } else { avg / 2.0 };
    interval += if duration_to_end < threshold { duration_to_end } else { avg / 2.0 };
    let mut factor = interval / sampled;
    if is_rate {
        factor /= w.range as f64 / 1000.0;
    }
    Some((result * factor, hist.map(|h| h.scale(factor))))
}

/// `irate` / `idelta`: from the last two samples.
fn instant_delta(w: &Window<'_>, is_rate: bool) -> Option<f64> {
    let f = &w.floats;
    if f.len() < 2 || !w.hists.is_empty() {
        return None;
    }
    let (pt, pv) = f[f.len() - 2];
    let (lt, lv) = f[f.len() - 1];
    let mut result = if is_rate && lv < pv { lv } else { lv - pv };
    let interval = lt - pt;
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

fn range_function(name: &str, param: Option<f64>, w: &Window<'_>) -> Option<Sample> {
    let dropped = || w.unnamed.clone();
    if matches!(name, "rate" | "increase" | "delta") {
        let (v, h) = extrapolated_rate(w, name != "delta", name == "rate")?;
        return Some(Sample { metric: dropped(), f: v, h: h.map(Arc::new) });
    }
    let f = &w.floats;
    let value = match name {
        "irate" => instant_delta(w, true)?,
        "idelta" => instant_delta(w, false)?,
        _ if f.is_empty() => return None,
        "changes" => f.windows(2).filter(|p| p[1].1 != p[0].1 && !(p[1].1.is_nan() && p[0].1.is_nan())).count() as f64,
        "resets" => f.windows(2).filter(|p| p[1].1 < p[0].1).count() as f64,
        "avg_over_time" => {
            // Incremental mean, as Prometheus computes it.
            let mut mean: f64 = 0.0;
            let mut count = 0.0;
            for &(_, v) in f.iter() {
                count += 1.0;
                if mean.is_infinite() {
                    if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                        continue;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        continue;
                    }
                }
                mean += v / count - mean / count;
            }
            mean
        }
        "min_over_time" => f.iter().fold(f[0].1, |m, &(_, v)| if v < m || m.is_nan() { v } else { m }),
        "max_over_time" => f.iter().fold(f[0].1, |m, &(_, v)| if v > m || m.is_nan() { v } else { m }),
        "sum_over_time" => f.iter().map(|p| p.1).sum(),
        "count_over_time" => f.len() as f64,
        "last_over_time" => {
            return Some(Sample { metric: w.metric.clone(), f: f[f.len() - 1].1, h: None });
        }
        "present_over_time" => 1.0,
        "stddev_over_time" | "stdvar_over_time" => {
            let (mut count, mut mean, mut m2) = (0.0, 0.0, 0.0);
            for &(_, v) in f.iter() {
                count += 1.0;
                let delta = v - mean;
                mean += delta / count;
                m2 += delta * (v - mean);
            }
            let var = m2 / count;
            if name == "stddev_over_time" { var.sqrt() } else { var }
        }
        "quantile_over_time" => {
            let mut vals: Vec<f64> = f.iter().map(|p| p.1).collect();
            quantile(param.unwrap_or(f64::NAN), &mut vals)
        }
        _ => return None,
    };
    Some(Sample { metric: dropped(), f: value, h: None })
}

/// Prometheus' `quantile` over values (linear interpolation between closest ranks).
fn quantile(q: f64, vals: &mut [f64]) -> f64 {
    if vals.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    vals.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = vals.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    vals[lower as usize] * (1.0 - weight) + vals[upper as usize] * weight
}

fn aggregate_group(op: &str, param: Option<f64>, metric: Metric, samples: &[Sample]) -> Option<Sample> {
    let hists: Vec<&Arc<FloatHist>> = samples.iter().filter_map(|s| s.h.as_ref()).collect();
    let floats: Vec<f64> = samples.iter().filter(|s| s.h.is_none()).map(|s| s.f).collect();
    let out = |f: f64| Some(Sample { metric: metric.clone(), f, h: None });
    match op {
        "count" => out(samples.len() as f64),
        "group" => out(1.0),
        "sum" | "avg" if !hists.is_empty() => {
            if !floats.is_empty() {
                return None;
            }
            let mut acc: FloatHist = (**hists[0]).clone();
            for h in &hists[1..] {
                acc = acc.add(h);
            }
            if op == "avg" {
                acc = acc.scale(1.0 / hists.len() as f64);
            }
            Some(Sample { metric, f: 0.0, h: Some(Arc::new(acc)) })
        }
        _ if floats.is_empty() => None,
        "sum" => out(floats.iter().sum()),
        "avg" => {
            let mut mean: f64 = 0.0;
            let mut count = 0.0;
            for &v in &floats {
                count += 1.0;
                if mean.is_infinite() {
                    if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                        continue;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        continue;
                    }
                }
                mean += v / count - mean / count;
            }
            out(mean)
        }
        "min" => out(floats.iter().fold(floats[0], |m, &v| if v < m || m.is_nan() { v } else { m })),
        "max" => out(floats.iter().fold(floats[0], |m, &v| if v > m || m.is_nan() { v } else { m })),
        "stddev" | "stdvar" => {
            let (mut count, mut mean, mut m2) = (0.0, 0.0, 0.0);
            for &v in &floats {
                count += 1.0;
                let delta = v - mean;
                mean += delta / count;
                m2 += delta * (v - mean);
            }
            let var = m2 / count;
            out(if op == "stddev" { var.sqrt() } else { var })
        }
        "quantile" => {
            let mut vals = floats.clone();
            out(quantile(param.unwrap_or(f64::NAN), &mut vals))
        }
        _ => None,
    }
}

fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

/// Applies an arithmetic or comparison operator: the value and, for comparisons, whether the
/// element is kept.
fn scalar_op(op: &str, l: f64, r: f64) -> Result<(f64, bool), EvalError> {
    Ok(match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        "%" => (l % r, true),
        "^" => (l.powf(r), true),
        "atan2" => (l.atan2(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        other => return Err(EvalError::BadData(format!("operator {other} is not supported between these operands"))),
    })
}

fn vector_scalar(op: &str, v: Vec<Sample>, s: f64, swap: bool, return_bool: bool) -> Result<Vec<Sample>, EvalError> {
    if matches!(op, "and" | "or" | "unless") {
        return Err(EvalError::BadData(format!("set operator {op} not allowed in binary scalar expression")));
    }
    let mut out = Vec::with_capacity(v.len());
    let cmp = is_comparison(op);
    for x in v {
        if let Some(h) = &x.h {
            // Histograms: only multiplication and division by a scalar.
            let h = match (op, swap) {
                ("*", _) => h.scale(s),
                ("/", false) => h.scale(1.0 / s),
                _ => continue,
            };
            out.push(Sample { metric: drop_name(&x.metric), f: 0.0, h: Some(Arc::new(h)) });
            continue;
        }
        let (l, r) = if swap { (s, x.f) } else { (x.f, s) };
        let (mut value, mut keep) = scalar_op(op, l, r)?;
        if cmp && swap {
            value = r;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if keep {
            let metric = if !cmp || return_bool { drop_name(&x.metric) } else { x.metric };
            out.push(Sample { metric, f: value, h: None });
        }
    }
    Ok(out)
}

/// How two vectors match.
struct Matching {
    on: bool,
    names: Vec<String>,
    card: VectorMatchCardinality,
}

impl Matching {
    fn signature(&self, m: &Labels) -> Labels {
        if self.on {
            m.iter().filter(|(k, _)| self.names.iter().any(|n| n == k)).cloned().collect()
        } else {
            m.iter().filter(|(k, _)| k != "__name__" && !self.names.iter().any(|n| n == k)).cloned().collect()
        }
    }
}

fn fmt_labels(m: &Labels) -> String {
    let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

fn vector_vector(
    op: &str,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    m: &Matching,
    return_bool: bool,
) -> Result<Vec<Sample>, EvalError> {
    if lhs.is_empty() || rhs.is_empty() {
        return Ok(Vec::new());
    }
    let one_to_many = matches!(m.card, VectorMatchCardinality::OneToMany(_));
    let include: Vec<String> = m.card.labels().map(|l| l.labels.clone()).unwrap_or_default();
    let (lhs, rhs) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut right: HashMap<Labels, Sample> = HashMap::with_capacity(rhs.len());
    for r in rhs {
        let sig = m.signature(&r.metric);
        if let Some(dup) = right.get(&sig) {
            let side = if one_to_many { "left" } else { "right" };
            return Err(EvalError::Execution(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                fmt_labels(&sig),
                fmt_labels(&r.metric),
                fmt_labels(&dup.metric)
            )));
        }
        right.insert(sig, r);
    }
    let cmp = is_comparison(op);
    let mut matched: HashMap<Labels, Vec<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for l in lhs {
        let sig = m.signature(&l.metric);
        let Some(r) = right.get(&sig) else { continue };
        let (a, b) = if one_to_many { (r, &l) } else { (&l, r) };
        let (mut value, mut h, keep) = match (&a.h, &b.h) {
            (None, None) => {
                let (v, k) = scalar_op(op, a.f, b.f)?;
                (v, None, k)
            }
            (Some(x), Some(y)) => match op {
                "+" => (0.0, Some(Arc::new(x.add(y))), true),
                "-" => (0.0, Some(Arc::new(x.sub(y))), true),
                _ => continue,
            },
            _ => continue,
        };
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
            h = None;
        } else if !keep {
            continue;
        }
        // The result's labels: from the "many" side (lhs after the swap).
        let mut labels: Labels = (*l.metric).clone();
        if !cmp || return_bool {
            labels.retain(|(k, _)| k != "__name__");
        }
        if matches!(m.card, VectorMatchCardinality::OneToOne) {
            if m.on {
                labels.retain(|(k, _)| m.names.iter().any(|n| n == k));
            } else {
                labels.retain(|(k, _)| !m.names.iter().any(|n| n == k));
            }
        }
        for name in &include {
            labels.retain(|(k, _)| k != name);
            let v = label_of(&r.metric, name);
            if !v.is_empty() {
                labels.push((name.clone(), v.to_string()));
            }
        }
        labels.sort();
        let entry = matched.entry(sig);
        match (&m.card, entry) {
            (VectorMatchCardinality::OneToOne, std::collections::hash_map::Entry::Occupied(_)) => {
                return Err(EvalError::Execution(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
                        .to_string(),
                ));
            }
            (VectorMatchCardinality::OneToOne, std::collections::hash_map::Entry::Vacant(v)) => {
                v.insert(Vec::new());
            }
            (_, e) => {
                let seen = e.or_default();
                if seen.contains(&labels) {
                    return Err(EvalError::Execution(
                        "multiple matches for labels: grouping labels must ensure unique matches".to_string(),
                    ));
                }
                seen.push(labels.clone());
            }
        }
        out.push(Sample { metric: Arc::new(labels), f: value, h });
    }
    Ok(out)
}

fn set_op(op: &str, lhs: Vec<Sample>, rhs: Vec<Sample>, m: &Matching) -> Vec<Sample> {
    match op {
        "and" => {
            let right: std::collections::HashSet<Labels> = rhs.iter().map(|r| m.signature(&r.metric)).collect();
            lhs.into_iter().filter(|l| right.contains(&m.signature(&l.metric))).collect()
        }
        "unless" => {
            let right: std::collections::HashSet<Labels> = rhs.iter().map(|r| m.signature(&r.metric)).collect();
            lhs.into_iter().filter(|l| !right.contains(&m.signature(&l.metric))).collect()
        }
        _ => {
            let left: std::collections::HashSet<Labels> = lhs.iter().map(|l| m.signature(&l.metric)).collect();
            let mut out = lhs;
            out.extend(rhs.into_iter().filter(|r| !left.contains(&m.signature(&r.metric))));
            out
        }
    }
}

/// `histogram_quantile`: native histograms one by one; classic buckets grouped by their
/// labels without `le` (Prometheus 2.x `bucketQuantile`: buckets sorted, equal bounds merged,
/// counts made monotonic, linear interpolation, the `+Inf` bucket required).
pub(crate) fn histogram_quantile(q: f64, v: Vec<Sample>) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut groups: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    for s in v {
        if let Some(h) = &s.h {
            out.push(Sample { metric: drop_name(&s.metric), f: h.quantile(q), h: None });
            continue;
        }
        let Some(le) = parse_le(label_of(&s.metric, "le")) else { continue };
        let key: Labels = s.metric.iter().filter(|(k, _)| k != "le" && k != "__name__").cloned().collect();
        match index.get(&key) {
            Some(&i) => groups[i].1.push((le, s.f)),
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key, vec![(le, s.f)]));
            }
        }
    }
    for (labels, buckets) in groups {
        out.push(Sample { metric: Arc::new(labels), f: bucket_quantile(q, buckets), h: None });
    }
    out
}

fn parse_le(s: &str) -> Option<f64> {
    match s {
        "" => None,
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        s => s.parse().ok(),
    }
}

pub(crate) fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // Merge buckets with the same bound.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for b in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == b.0 => last.1 += b.1,
            _ => merged.push(b),
        }
    }
    let mut buckets = merged;
    let mut max = f64::NEG_INFINITY;
    for b in &mut buckets {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let n = buckets.len() - 1;
    let b = buckets[..n].partition_point(|x| x.1 < rank);
    if b == n {
        return buckets[n - 1].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let mut start = 0.0;
    let end = buckets[b].0;
    let mut count = buckets[b].1;
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(floats: &[(i64, f64)], start: i64, end: i64) -> (Metric, Vec<(i64, f64)>, i64, i64) {
        (Arc::new(vec![("__name__".into(), "x".into())]), floats.to_vec(), start, end)
    }

    fn rate_of(floats: &[(i64, f64)], start: i64, end: i64, counter: bool, rate: bool) -> Option<f64> {
        let (m, f, s, e) = window(floats, start, end);
        let w = Window {
            metric: &m,
            unnamed: &m,
            floats: Cow::Borrowed(&f),
            hists: &[],
            range_start: s,
            range_end: e,
            range: e - s,
        };
        extrapolated_rate(&w, counter, rate).map(|r| r.0)
    }

    #[test]
    fn rate_extrapolates_to_the_window_edges() {
        // Samples every 10 s from 0 to 60 s in a 60 s window ending at 60 s: no extrapolation
        // needed, increase 60, rate 1/s.
        let f: Vec<(i64, f64)> = (0..=6).map(|i| (i * 10_000, i as f64 * 10.0)).collect();
        assert_eq!(rate_of(&f, 0, 60_000, true, false), Some(60.0));
        assert_eq!(rate_of(&f, 0, 60_000, true, true), Some(1.0));
        // Window [5 s, 65 s] holds samples 10..60 s: 5 s gaps at both ends are below 1.1 intervals,
        // so the increase of 50 over 50 s extrapolates to 60 s.
        assert!((rate_of(&f, 5_000, 65_000, true, false).unwrap() - 60.0).abs() < 1e-9);
    }

    #[test]
    fn rate_extrapolates_by_half_an_interval_when_far_from_the_edges() {
        // Samples at 20, 30, 40 s (value 100, 110, 120) in [0, 60]: both gaps (20 s) exceed 1.1 ×
        // 10 s, so 5 s is added at each end: 20 + 5 + 5 = 30 s, increase 20 × 30/20 = 30.
        let f = [(20_000, 100.0), (30_000, 110.0), (40_000, 120.0)];
        assert!((rate_of(&f, 0, 60_000, true, false).unwrap() - 30.0).abs() < 1e-9);
        // Starting at 2: zero is 2 s before the first sample, closer than half an interval.
        let f = [(20_000, 2.0), (30_000, 12.0), (40_000, 22.0)];
        assert!((rate_of(&f, 0, 60_000, true, false).unwrap() - 20.0 * 27.0 / 20.0).abs() < 1e-9);
        // delta() does not clamp at zero and may go negative.
        let f = [(20_000, 30.0), (30_000, 20.0), (40_000, 10.0)];
        assert!((rate_of(&f, 0, 60_000, false, false).unwrap() + 30.0).abs() < 1e-9);
    }

    #[test]
    fn rate_handles_counter_resets_and_needs_two_samples() {
        // 10, 20, reset to 5, 15: increase = (15 - 10) + 20 = 25 over 30 s sampled.
        let f = [(0, 10.0), (10_000, 20.0), (20_000, 5.0), (30_000, 15.0)];
        assert!((rate_of(&f, 0, 30_000, true, false).unwrap() - 25.0).abs() < 1e-9);
        assert_eq!(rate_of(&[(0, 1.0)], 0, 30_000, true, false), None);
    }

    #[test]
    fn irate_uses_the_last_two_samples() {
        let m: Metric = Arc::new(Vec::new());
        let f = [(0, 1.0), (10_000, 5.0), (15_000, 2.0)];
        let w = Window {
            metric: &m,
            unnamed: &m,
            floats: Cow::Borrowed(&f),
            hists: &[],
            range_start: 0,
            range_end: 20_000,
            range: 20_000,
        };
        // A reset: the last value counts from zero.
        assert_eq!(instant_delta(&w, true), Some(2.0 / 5.0));
        assert_eq!(instant_delta(&w, false), Some(-3.0));
    }

    #[test]
    fn bucket_quantile_interpolates_like_prometheus() {
        let b = vec![(0.1, 10.0), (0.5, 20.0), (1.0, 40.0), (f64::INFINITY, 40.0)];
        // rank 20 -> upper bound of (0.1, 0.5]
        assert!((bucket_quantile(0.5, b.clone()) - 0.5).abs() < 1e-12);
        // rank 30 -> halfway in (0.5, 1]
        assert!((bucket_quantile(0.75, b.clone()) - 0.75).abs() < 1e-12);
        // rank 5 -> halfway in (0, 0.1]
        assert!((bucket_quantile(0.125, b.clone()) - 0.05).abs() < 1e-12);
        // In the +Inf bucket: the highest finite bound.
        let b2 = vec![(1.0, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(bucket_quantile(0.9, b2), 1.0);
        // No +Inf bucket: NaN. Non-monotonic counts are fixed up.
        assert!(bucket_quantile(0.5, vec![(1.0, 1.0)]).is_nan());
        let b3 = vec![(1.0, 5.0), (2.0, 4.0), (f64::INFINITY, 10.0)];
        assert!((bucket_quantile(0.5, b3) - 1.0).abs() < 1e-12);
        assert_eq!(bucket_quantile(-0.1, b.clone()), f64::NEG_INFINITY);
        assert_eq!(bucket_quantile(1.1, b), f64::INFINITY);
    }

    fn sample(labels: &[(&str, &str)], f: f64) -> Sample {
        let mut l: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        l.sort();
        Sample { metric: Arc::new(l), f, h: None }
    }

    #[test]
    fn vector_matching_one_to_one_and_group_left() {
        let lhs = vec![
            sample(&[("__name__", "errors"), ("job", "a"), ("code", "500")], 2.0),
            sample(&[("__name__", "errors"), ("job", "b"), ("code", "500")], 4.0),
        ];
        let rhs = vec![
            sample(&[("__name__", "total"), ("job", "a")], 10.0),
            sample(&[("__name__", "total"), ("job", "b")], 8.0),
        ];
        // Default matching needs identical label sets: no match.
        let m = Matching { on: false, names: vec![], card: VectorMatchCardinality::OneToOne };
        assert!(vector_vector("/", lhs.clone(), rhs.clone(), &m, false).unwrap().is_empty());
        let m = Matching { on: true, names: vec!["job".into()], card: VectorMatchCardinality::OneToOne };
        let out = vector_vector("/", lhs.clone(), rhs.clone(), &m, false).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(*out[0].metric, vec![("job".to_string(), "a".to_string())]);
        assert_eq!(out[0].f, 0.2);
        let m = Matching {
            on: false,
            names: vec!["code".into()],
            card: VectorMatchCardinality::ManyToOne(promql_parser::label::Labels::new(vec![])),
        };
        let out = vector_vector("/", lhs.clone(), rhs.clone(), &m, false).unwrap();
        assert_eq!(label_of(&out[1].metric, "code"), "500");
        assert_eq!(out[1].f, 0.5);
        // The "one" side must be unique.
        let dup = vec![sample(&[("job", "a"), ("x", "1")], 1.0), sample(&[("job", "a"), ("x", "2")], 1.0)];
        let m = Matching { on: true, names: vec!["job".into()], card: VectorMatchCardinality::OneToOne };
        assert!(matches!(vector_vector("+", lhs, dup, &m, false), Err(EvalError::Execution(_))));
    }

    #[test]
    fn comparisons_filter_or_return_bool() {
        let v = vec![sample(&[("__name__", "x"), ("a", "1")], 1.0), sample(&[("__name__", "x"), ("a", "2")], 5.0)];
        let kept = vector_scalar(">", v.clone(), 2.0, false, false).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(label_of(&kept[0].metric, "__name__"), "x");
        let b = vector_scalar(">", v.clone(), 2.0, false, true).unwrap();
        assert_eq!(b.iter().map(|s| s.f).collect::<Vec<_>>(), vec![0.0, 1.0]);
        assert_eq!(label_of(&b[0].metric, "__name__"), "");
        // `3 < x` keeps the vector's value.
        let swapped = vector_scalar("<", v, 3.0, true, false).unwrap();
        assert_eq!(swapped.iter().map(|s| s.f).collect::<Vec<_>>(), vec![5.0]);
    }

    #[test]
    fn aggregations_by_and_without() {
        let v = vec![
            sample(&[("__name__", "x"), ("job", "a"), ("i", "1")], 1.0),
            sample(&[("__name__", "x"), ("job", "a"), ("i", "2")], 3.0),
            sample(&[("__name__", "x"), ("job", "b"), ("i", "1")], 10.0),
        ];
        let m: Metric = Arc::new(vec![("job".into(), "a".into())]);
        assert_eq!(aggregate_group("sum", None, m.clone(), &v[..2]).unwrap().f, 4.0);
        assert_eq!(aggregate_group("avg", None, m.clone(), &v[..2]).unwrap().f, 2.0);
        assert_eq!(aggregate_group("max", None, m.clone(), &v).unwrap().f, 10.0);
        assert_eq!(aggregate_group("count", None, m.clone(), &v).unwrap().f, 3.0);
        assert_eq!(aggregate_group("stddev", None, m.clone(), &v[..2]).unwrap().f, 1.0);
        assert_eq!(aggregate_group("quantile", Some(0.5), m, &v).unwrap().f, 3.0);
    }
}
