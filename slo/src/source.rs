//! Counting good and total events per bucket from the store (blocking calls: run them on a
//! blocking pool).
//!
//! - Span SLIs: two [`Reader::span_histogram`] calls over the whole range (total = the
//!   selector; good = the selector and, as the SLO says, not status ERROR and duration <= the
//!   maximum), so a new SLO is backfilled from every span the store still holds in its window in
//!   one pass. Spans count in the bucket of their start time.
//! - Metric SLIs: the series of each PromQL selector through the store's Prometheus view
//!   ([`obsbox_storage::prometheus`], the view the PromQL API uses), and per bucket the sum over
//!   the series of their reset-aware increase: each rise between consecutive samples counts in
//!   the bucket of the later sample; a drop is a counter reset, after which the new value is
//!   the increase. Samples up to [`METRIC_LOOKBACK_NS`] before the range serve as the
//!   predecessors of the range's first samples.

use obsbox_storage::prometheus::{ViewOptions, is_stale_nan, otlp_name_regex, prometheus_view};
use obsbox_storage::{AttrScope, LabelMatcher, MatchOp as StoreOp, MetricQuery, Reader, SpanPredicate, TimeRange};
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{Expr, parse};

use crate::SloError;
use crate::budget::Scale;
use crate::model::{Sli, SpanGood, SpanSelector};

/// How far before a recount's first bucket samples are read, as predecessors (real time).
pub const METRIC_LOOKBACK_NS: u64 = 15 * 60 * 1_000_000_000;

/// OTLP status code ERROR.
pub(crate) const STATUS_ERROR: i32 = 2;

/// How one SLI is counted.
#[derive(Clone, Debug)]
pub enum Plan {
    /// Over spans.
    Spans {
        /// All events.
        total: SpanPredicate,
        /// Good events.
        good: SpanPredicate,
    },
    /// Over metric counters.
    Metrics {
        /// Matchers of the numerator selector.
        numerator: Vec<Matcher>,
        /// Whether the numerator counts bad events.
        numerator_is_bad: bool,
        /// Matchers of the total selector.
        total: Vec<Matcher>,
    },
}

impl Plan {
    /// The plan of an SLI; a metric selector that is not a plain instant-vector selector is an
    /// error (the message names it).
    pub fn new(sli: &Sli) -> Result<Plan, String> {
        match sli {
            Sli::Spans { selector, good } => {
                let total = span_predicate(selector);
                Ok(Plan::Spans { good: good_predicate(total.clone(), good), total })
            }
            Sli::Metrics { numerator, numerator_is_bad, total } => Ok(Plan::Metrics {
                numerator: selector_matchers(numerator)?,
                numerator_is_bad: *numerator_is_bad,
                total: selector_matchers(total)?,
            }),
        }
    }

    /// (good, total) for each bucket of `from..to`, in order.
    pub fn count(&self, reader: &dyn Reader, scale: Scale, from: i64, to: i64) -> Result<Vec<(u64, u64)>, SloError> {
        let n = (to - from).max(0) as usize;
        let time = TimeRange { start_ns: scale.bucket_start_ns(from), end_ns: scale.bucket_start_ns(to) };
        let bucket_ns = scale.bucket_ns();
        let mut out = vec![(0u64, 0u64); n];
        if n == 0 {
            return Ok(out);
        }
        let slot = |t_ns: u64| -> Option<usize> {
            let i = scale.bucket_of(t_ns) - from;
            (0..n as i64).contains(&i).then_some(i as usize)
        };
        match self {
            Plan::Spans { total, good } => {
                for (start, c) in reader.span_histogram(total, time, bucket_ns)? {
                    if let Some(i) = slot(start) {
                        out[i].1 += c;
                    }
                }
                for (start, c) in reader.span_histogram(good, time, bucket_ns)? {
                    if let Some(i) = slot(start) {
                        out[i].0 += c;
                    }
                }
            }
            Plan::Metrics { numerator, numerator_is_bad, total } => {
                let num = increases(reader, numerator, time, n, &slot)?;
                let tot = increases(reader, total, time, n, &slot)?;
                for (i, o) in out.iter_mut().enumerate() {
                    let t = tot[i].round().max(0.0) as u64;
                    let x = num[i].round().max(0.0) as u64;
                    *o = if *numerator_is_bad { (t.saturating_sub(x), t) } else { (x.min(t), t) };
                }
            }
        }
        Ok(out)
    }
}

/// The store predicate of a span selection.
pub fn span_predicate(sel: &SpanSelector) -> SpanPredicate {
    let mut parts = Vec::new();
    if let Some(s) = &sel.service {
        parts.push(SpanPredicate::Service(s.clone()));
    }
    if let Some(o) = &sel.operation {
        parts.push(SpanPredicate::Name(o.clone()));
    }
    if let Some(k) = sel.kind {
        parts.push(SpanPredicate::Kind(k));
    }
    for (key, value) in &sel.attributes {
        parts.push(SpanPredicate::Attribute { scope: AttrScope::Item, key: key.clone(), value: value.clone() });
    }
    if parts.is_empty() { SpanPredicate::All } else { SpanPredicate::And(parts) }
}

fn good_predicate(total: SpanPredicate, good: &SpanGood) -> SpanPredicate {
    let mut parts = vec![total];
    if good.no_error {
        parts.push(SpanPredicate::Not(Box::new(SpanPredicate::StatusCode(STATUS_ERROR))));
    }
    if let Some(max) = good.max_duration {
        parts.push(SpanPredicate::Duration { min: 0, max: u64::try_from(max.as_nanos()).unwrap_or(u64::MAX) });
    }
    SpanPredicate::And(parts)
}

/// The matchers of a PromQL instant-vector selector (`name{label="v"}`), the name as a
/// `__name__` matcher.
pub fn selector_matchers(text: &str) -> Result<Vec<Matcher>, String> {
    let expr = parse(text).map_err(|e| format!("selector {text:?}: {e}"))?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(format!("selector {text:?}: must be an instant-vector selector such as name{{label=\"value\"}}"));
    };
    if !vs.matchers.or_matchers.is_empty() || vs.offset.is_some() || vs.at.is_some() {
        return Err(format!("selector {text:?}: `or`, `offset` and `@` are not allowed in SLI selectors"));
    }
    let mut out = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        out.push(Matcher::new(MatchOp::Equal, "__name__", name));
    }
    out.extend(vs.matchers.matchers.iter().cloned());
    if out.iter().all(|m| m.is_match("")) {
        return Err(format!("selector {text:?}: needs at least one matcher that does not match the empty string"));
    }
    Ok(out)
}

/// The store-side narrowing of a selector, as the PromQL API pushes it down: the metric name
/// through [`otlp_name_regex`], and equality / regex matchers on labels that are attribute keys
/// as such (not labels the view synthesizes, not ones matching a missing label). Everything is
/// matched exactly again on the view's labels.
fn pushdown(matchers: &[Matcher]) -> Vec<LabelMatcher> {
    let synthesized = |l: &str| matches!(l, "job" | "instance" | "le" | "quantile") || l.contains('_');
    let mut out = Vec::new();
    for m in matchers {
        if m.name == "__name__" {
            if let MatchOp::Equal = m.op {
                out.push(LabelMatcher { name: "__name__".into(), op: StoreOp::Re, value: otlp_name_regex(&m.value) });
            }
            continue;
        }
        if synthesized(&m.name) || m.is_match("") {
            continue;
        }
        match &m.op {
            MatchOp::Equal => out.push(LabelMatcher { name: m.name.clone(), op: StoreOp::Eq, value: m.value.clone() }),
            MatchOp::Re(_) => out.push(LabelMatcher { name: m.name.clone(), op: StoreOp::Re, value: m.value.clone() }),
            _ => {}
        }
    }
    out
}

/// Per-bucket sums of the reset-aware increases of the series matching `matchers`.
fn increases(
    reader: &dyn Reader,
    matchers: &[Matcher],
    time: TimeRange,
    n: usize,
    slot: &dyn Fn(u64) -> Option<usize>,
) -> Result<Vec<f64>, SloError> {
    let query = MetricQuery {
        matchers: pushdown(matchers),
        time: TimeRange { start_ns: time.start_ns.saturating_sub(METRIC_LOOKBACK_NS), end_ns: time.end_ns },
    };
    let data = reader.find_metrics(&query)?;
    // Exponential histograms as classic buckets, so `_bucket{le=..}` selectors see them too.
    let view = prometheus_view(&data, &ViewOptions { native_histograms: false, target_info: false });
    let mut out = vec![0.0; n];
    for fam in &view.families {
        for s in &fam.series {
            let label = |name: &str| s.labels.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str());
            if !matchers.iter().all(|m| m.is_match(label(&m.name))) {
                continue;
            }
            let mut prev: Option<f64> = None;
            for p in &s.samples {
                if is_stale_nan(p.value) || !p.value.is_finite() {
                    prev = None;
                    continue;
                }
                if let Some(before) = prev {
                    let inc = if p.value >= before { p.value - before } else { p.value };
                    let t_ns = u64::try_from(p.t_ms).unwrap_or(0).saturating_mul(1_000_000);
                    if let Some(i) = slot(t_ns) {
                        out[i] += inc;
                    }
                }
                prev = Some(p.value);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_become_matchers_and_bad_ones_are_named() {
        let m = selector_matchers(r#"http_requests_total{code=~"5..",job="api"}"#).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].name.as_str(), m[0].value.as_str()), ("__name__", "http_requests_total"));
        let pushed = pushdown(&m);
        assert_eq!(pushed.len(), 2, "job is synthesized by the view, not an attribute: {pushed:?}");
        assert_eq!(pushed[1], LabelMatcher { name: "code".into(), op: StoreOp::Re, value: "5..".into() });
        for bad in ["rate(x[5m])", "x offset 5m", r#"{code=""}"#, "x{"] {
            let e = selector_matchers(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn span_predicates_follow_the_selector_and_good_rule() {
        let sel = SpanSelector {
            service: Some("checkout".into()),
            operation: Some("POST /pay".into()),
            ..Default::default()
        };
        let good = SpanGood { no_error: true, max_duration: Some(std::time::Duration::from_millis(300)) };
        let Plan::Spans { total, good } = Plan::new(&Sli::Spans { selector: sel, good }).unwrap() else { panic!() };
        assert_eq!(
            total,
            SpanPredicate::And(vec![
                SpanPredicate::Service("checkout".into()),
                SpanPredicate::Name("POST /pay".into())
            ])
        );
        let SpanPredicate::And(parts) = good else { panic!() };
        assert_eq!(parts[0], total);
        assert_eq!(parts[1], SpanPredicate::Not(Box::new(SpanPredicate::StatusCode(2))));
        assert_eq!(parts[2], SpanPredicate::Duration { min: 0, max: 300_000_000 });
        assert_eq!(span_predicate(&SpanSelector::default()), SpanPredicate::All);
    }
}
