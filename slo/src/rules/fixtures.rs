//! `promtool test rules` fixtures for the rules of [`super::prometheus_rules`].
//!
//! For every SLO and tier, inputs are computed from the tier (never written per SLO): counters
//! whose labels satisfy the SLI's selectors (found by a small search over the selectors'
//! matchers), with per-sample increments in phases. Each scenario is its own promtool test:
//! - above: both windows burn 0.1% above the tier's threshold error ratio: the tier fires;
//! - recovery: it fires, errors stop; a short window later the long window still burns but the
//!   alert has resolved;
//! - below: both windows burn 0.1% below: it does not fire;
//! - spike: only the short window burns (the long one stays below): it does not fire;
//! - low traffic: everything fails but the long window holds fewer than `min_events`: quiet.
//!
//! The expected alerts (promtool compares every firing `SLOBurnRate` alert) come from a
//! simulation of what the rules compute over those inputs: Prometheus' extrapolated `rate` and
//! `increase` (both with the closed range of Prometheus 2 and the left-open range of
//! Prometheus 3, which must agree) and its alert states. Every SLO of the file is simulated, so
//! SLOs reading the same series expect each other's alerts. The simulation also checks that each
//! scenario is what it claims (for example that in "spike" the short window does burn).

use std::collections::{BTreeMap, BTreeSet};

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr};
use regex_syntax::hir::{Class, Hir, HirKind};

use super::yaml::{Node, map, seq, text};
use super::{Plan, prom_duration, promql_escape};
use crate::{Slo, SloError};

/// The tests' `evaluation_interval` (one for the whole file in promtool): an hour keeps a test
/// over a 3-day window to 72 evaluations of every rule of the file. Windows are unaffected: each
/// evaluation reads its inputs at their own, finer sample interval.
const EVAL_S: u64 = 3600;
/// How far above (below) the threshold error ratio the "above" ("below") inputs burn: 0.1%.
const MARGIN: f64 = 1e-3;
/// Events per sample in inputs that must pass the low-traffic guard (more when it asks more).
const BASE_EVENTS: f64 = 1e6;
/// Sample intervals the inputs may use (seconds): divisors of [`EVAL_S`], so that phases and
/// evaluation times line up.
const INTERVALS: [u64; 20] = [1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600];
/// How many times a check may move one step later to avoid an ambiguous evaluation.
const MAX_SHIFTS: u32 = 30;
/// Values compared closer than this (relative) would make a fixture depend on rounding.
const AMBIGUOUS: f64 = 1e-9;

/// A `promtool test rules` file for the rules [`super::prometheus_rules`] makes of `slos`,
/// which promtool reads from `rules_file_name` (relative to the test file). For each SLO and
/// tier it proves: the tier fires when both windows burn just above its threshold, and resolves
/// after; it does not fire just below, nor on a spike in the short window only, nor under the
/// low-traffic guard. Scenarios that cannot exist for a tier (a threshold error ratio above 1, a
/// short window as long as the long one, no guard) are left out with a comment saying why.
///
/// Errors when an SLI's selectors cannot be satisfied by made-up series (for example a
/// numerator selecting exactly the total's series).
pub fn promtool_tests(slos: &[Slo], rules_file_name: &str) -> Result<String, SloError> {
    let plans: Vec<Plan> = slos.iter().map(Plan::new).collect();
    let slis = plans.iter().map(Sli::new).collect::<Result<Vec<_>, _>>()?;
    let mut notes = Vec::new();
    let mut tests = Vec::new();
    for (z, plan) in plans.iter().enumerate() {
        let shape = Shape::find(&slis[z]).ok_or_else(|| SloError::Rules {
            slo: plan.slo.name.clone(),
            reason: format!(
                "no series can be made up that the total selector {} selects with and without the numerator {}",
                plan.total, plan.numerator
            ),
        })?;
        for k in 0..plan.tiers.len() {
            for mut scenario in scenarios(plan, k, &mut notes) {
                // A check right after a phase change can find another tier's windows on a sample
                // boundary where Prometheus 2 and 3 differ: check a little later.
                let mut tries = 0;
                let (series, expected) = loop {
                    let series = shape.series(&slis[z], &scenario);
                    match simulate(&plans, &slis, &series, &scenario, (z, k)) {
                        Ok(expected) => break (series, expected),
                        Err(Sim::Ambiguous(_)) if tries < MAX_SHIFTS => scenario.shift_last_check(),
                        Err(Sim::Ambiguous(reason) | Sim::Wrong(reason)) => {
                            return Err(SloError::Rules {
                                slo: plan.slo.name.clone(),
                                reason: format!("promtool fixture \"{}\": {reason}", scenario.name),
                            });
                        }
                    }
                    tries += 1;
                };
                tests.push(test_node(&plans, &series, &scenario, &expected));
            }
        }
    }
    let mut out = String::from(
        "# promtool unit tests for the rules `obsbox slo rules` writes (run: promtool test rules <this file>).\n\
         # Inputs are computed from each tier; expected alerts from a simulation of the rules over them.\n",
    );
    for n in &notes {
        out.push_str(&format!("# {n}\n"));
    }
    out.push_str(&super::yaml::print(&map(vec![
        ("rule_files", seq(vec![text(rules_file_name)])),
        ("evaluation_interval", text(prom_duration(EVAL_S))),
        ("tests", seq(tests)),
    ])));
    Ok(out)
}

/// What the SLO under test's tier must be doing at a check.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    /// Firing.
    Firing,
    /// Not firing.
    Quiet,
    /// Not firing although the short window burns at or above the threshold.
    Spike,
    /// Not firing although the long window burns: the short one has recovered.
    Recovered,
    /// Not firing although both windows burn: the low-traffic guard holds it back.
    Guarded,
}

/// One promtool test: input phases and checks.
struct Scenario {
    name: String,
    /// Seconds between samples.
    interval: u64,
    /// `(samples, total events per sample, bad events per sample)`; sample 0 is at time 0 and
    /// each phase adds its increments to the samples after it.
    phases: Vec<(u64, f64, f64)>,
    /// `(evaluation time in seconds, what the tier under test does then)`.
    checks: Vec<(u64, Want)>,
    /// The phase that lasts longer when the last check moves later.
    stretch: usize,
}

impl Scenario {
    /// Moves the last check one evaluation step later, the `stretch` phase lasting as much
    /// longer.
    fn shift_last_check(&mut self) {
        let step = EVAL_S;
        if let (Some(check), Some(phase)) = (self.checks.last_mut(), self.phases.get_mut(self.stretch)) {
            check.0 += step;
            phase.0 += step / self.interval;
        }
    }
}

/// Why a simulation found no fixture.
enum Sim {
    /// The outcome depends on range semantics or rounding at this check.
    Ambiguous(String),
    /// The scenario is not what it claims to be.
    Wrong(String),
}

fn scenarios(plan: &Plan, k: usize, notes: &mut Vec<String>) -> Vec<Scenario> {
    let t = &plan.tiers[k];
    let slo = &plan.slo.name;
    let min_events = plan.slo.min_events as f64;
    let interval = INTERVALS.iter().rev().copied().find(|i| i * 4 <= t.short_s).unwrap_or(1);
    let up = |secs: u64| secs.div_ceil(EVAL_S) * EVAL_S;
    let samples = |secs: u64| secs / interval;
    let mut events = BASE_EVENTS;
    while events * (t.long_s / interval) as f64 <= 4.0 * min_events {
        events *= 10.0;
    }
    let thr = t.threshold;
    let name = |what: &str| format!("{slo} {}: {what}", t.name);
    let mut out = Vec::new();
    let steady = up(t.long_s + t.for_s + 2 * EVAL_S);

    let below = ((thr * (1.0 - MARGIN) * events).floor()).min(events);
    out.push(Scenario {
        name: name(&format!("quiet at {} errors per {events} events, just below {}x", below, t.burn_rate)),
        interval,
        phases: vec![(samples(steady), events, below)],
        checks: vec![(steady, Want::Quiet)],
        stretch: 0,
    });
    if thr > 1.0 {
        notes.push(format!(
            "{slo} {}: cannot fire (its threshold error ratio {thr} is above 1): only the quiet case is tested",
            t.name
        ));
        return out;
    }

    // Recovery: errors stop `clear` before a check, at a ratio high enough that the long
    // window still burns then while the short one is clean: the alert has resolved.
    let clear = (t.short_s + 2 * interval).div_ceil(interval) * interval;
    let recovered = steady + up(clear);
    // One sample less in the long window under Prometheus 3's left-open ranges.
    let burning = t.long_s.saturating_sub(clear + interval);
    let big = thr * (1.0 + 2.0 * MARGIN) * t.long_s as f64 / burning.max(1) as f64;
    let recovers = burning > 0 && big <= 1.0;

    let above = ((thr * (1.0 + MARGIN) * events).ceil()).min(events);
    let mut fires = Scenario {
        name: name(&format!("fires at {above} errors per {events} events, just above {}x", t.burn_rate)),
        interval,
        phases: vec![(samples(steady), events, above)],
        checks: vec![(steady, Want::Firing)],
        stretch: 0,
    };
    if !recovers {
        let resolved = steady + up(t.short_s + 2 * interval);
        fires.name.push_str(", then resolves");
        fires.phases.push((samples(resolved - steady), events, 0.0));
        fires.checks.push((resolved, Want::Quiet));
        fires.stretch = 1;
        notes.push(format!(
            "{slo} {}: resolution tested once both windows are clean (no error ratio keeps the long window {} \
             burning {} after errors stop)",
            t.name,
            prom_duration(t.long_s),
            prom_duration(clear)
        ));
    }
    out.push(fires);
    if recovers {
        let bad = (big * events).ceil().min(events);
        out.push(Scenario {
            name: name(&format!(
                "fires at {bad} errors per {events} events, resolves {} after they stop while the long window still burns",
                prom_duration(clear)
            )),
            interval,
            phases: vec![(samples(recovered - clear), events, bad), (samples(clear), events, 0.0)],
            checks: vec![(steady, Want::Firing), (recovered, Want::Recovered)],
            stretch: 0,
        });
    }

    // The spike ends at an evaluation and lasts the short window (in whole samples).
    let spike = t.short_s.div_ceil(interval) * interval;
    let quiet = up(t.long_s + spike) - spike;
    let ratio = (thr * (t.long_s as f64 / spike as f64).sqrt()).min(1.0);
    if spike < t.long_s
        && ratio >= thr * (1.0 + MARGIN)
        && ratio * spike as f64 <= thr * (1.0 - MARGIN) * t.long_s as f64
    {
        let bad = (ratio * events).ceil().min(events);
        out.push(Scenario {
            name: name(&format!("quiet on a spike of {bad} errors per {events} events in the short window only")),
            interval,
            phases: vec![(samples(quiet), events, 0.0), (samples(spike), events, bad)],
            checks: vec![(quiet + spike, Want::Spike)],
            stretch: 0,
        });
    } else {
        notes.push(format!(
            "{slo} {}: no spike case (no error ratio burns the short window {} without the long window {})",
            t.name,
            prom_duration(t.short_s),
            prom_duration(t.long_s)
        ));
    }

    if plan.guarded() {
        // A power of two: counter values stay exact through promtool's repeated additions.
        let per_sample = min_events * interval as f64 / (4.0 * (t.long_s + 2 * interval) as f64);
        let low = 2f64.powi(per_sample.log2().floor() as i32);
        out.push(Scenario {
            name: name(&format!(
                "quiet under the guard: all of {low} events per sample fail, < {min_events} per {}",
                prom_duration(t.long_s)
            )),
            interval,
            phases: vec![(samples(steady), low, low)],
            checks: vec![(steady, Want::Guarded)],
            stretch: 0,
        });
    } else {
        notes.push(format!("{slo} {}: no low-traffic case (min_events is 0: no guard)", t.name));
    }
    out
}

/// A label set, `__name__` included.
type Labels = BTreeMap<String, String>;

/// One parsed instant-vector selector.
struct Selector {
    name: Option<String>,
    matchers: Vec<Matcher>,
    or_matchers: Vec<Vec<Matcher>>,
}

impl Selector {
    fn parse(slo: &str, text: &str) -> Result<Selector, SloError> {
        let err = |reason: String| SloError::Rules { slo: slo.into(), reason };
        match parser::parse(text).map_err(|e| err(format!("selector {text}: {e}")))? {
            Expr::VectorSelector(vs) if vs.offset.is_none() && vs.at.is_none() => {
                Ok(Selector { name: vs.name, matchers: vs.matchers.matchers, or_matchers: vs.matchers.or_matchers })
            }
            _ => Err(err(format!("{text} is not an instant-vector selector"))),
        }
    }

    fn matches(&self, labels: &Labels) -> bool {
        let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or("");
        if self.name.as_deref().is_some_and(|n| n != get("__name__")) {
            return false;
        }
        let all = |ms: &[Matcher]| ms.iter().all(|m| m.is_match(get(&m.name)));
        all(&self.matchers) && (self.or_matchers.is_empty() || self.or_matchers.iter().any(|g| all(g)))
    }

    fn all_matchers(&self) -> impl Iterator<Item = &Matcher> {
        self.matchers.iter().chain(self.or_matchers.iter().flatten())
    }

    /// The metric name it requires, if any.
    fn metric_name(&self) -> Option<&str> {
        self.name.as_deref().or_else(|| {
            self.matchers.iter().find(|m| m.name == "__name__" && m.op == MatchOp::Equal).map(|m| m.value.as_str())
        })
    }
}

/// An SLI as two selectors.
struct Sli {
    numerator: Selector,
    numerator_is_bad: bool,
    total: Selector,
}

impl Sli {
    fn new(plan: &Plan) -> Result<Sli, SloError> {
        Ok(Sli {
            numerator: Selector::parse(&plan.slo.name, &plan.numerator)?,
            numerator_is_bad: plan.numerator_is_bad,
            total: Selector::parse(&plan.slo.name, &plan.total)?,
        })
    }
}

/// The two input series of an SLO: `a` counts the numerator's events; `b` the rest of the
/// total's (when `a` is part of the total) or all of them.
struct Shape {
    a: Labels,
    b: Labels,
    a_in_total: bool,
}

impl Shape {
    fn find(sli: &Sli) -> Option<Shape> {
        let (n, t) = (&sli.numerator, &sli.total);
        if let (Some(a), Some(b)) = (find_labels(&[n, t], &[]), find_labels(&[t], &[n])) {
            return Some(Shape { a, b, a_in_total: true });
        }
        Some(Shape { a: find_labels(&[n], &[t])?, b: find_labels(&[t], &[n])?, a_in_total: false })
    }

    fn series(&self, sli: &Sli, s: &Scenario) -> Vec<Series> {
        let numerator = |total: f64, bad: f64| if sli.numerator_is_bad { bad } else { total - bad };
        let a: Vec<f64> = s.phases.iter().map(|&(_, total, bad)| numerator(total, bad)).collect();
        let b: Vec<f64> = s
            .phases
            .iter()
            .map(|&(_, total, bad)| if self.a_in_total { total - numerator(total, bad) } else { total })
            .collect();
        vec![Series::new(self.a.clone(), s, &a), Series::new(self.b.clone(), s, &b)]
    }
}

/// Labels that every selector of `must` selects and none of `must_not` does: a search over the
/// values the selectors mention (and samples of their regexes), few labels, few values.
fn find_labels(must: &[&Selector], must_not: &[&Selector]) -> Option<Labels> {
    let mut names = must.iter().filter_map(|s| s.metric_name());
    let fixed = names.next();
    if names.any(|n| Some(n) != fixed) {
        return None;
    }
    let all: Vec<&Matcher> = must.iter().chain(must_not).flat_map(|s| s.all_matchers()).collect();
    // Without a fixed name, the name is searched like a label (among its regexes' samples).
    let keys: BTreeSet<&str> =
        all.iter().map(|m| m.name.as_str()).filter(|k| *k != "__name__" || fixed.is_none()).collect();
    let candidates: Vec<(&str, Vec<String>)> = keys
        .into_iter()
        .map(|k| {
            let mut values = Vec::new();
            for m in all.iter().filter(|m| m.name == k) {
                match &m.op {
                    MatchOp::Equal | MatchOp::NotEqual => values.push(m.value.clone()),
                    MatchOp::Re(re) | MatchOp::NotRe(re) => values.extend(regex_samples(re.as_str())),
                }
            }
            if k == "__name__" {
                values.push("obsbox_fixture_total".into());
            } else {
                values.extend(["", "obsbox-fixture", "0", "a"].map(String::from));
            }
            let mut seen = BTreeSet::new();
            values.retain(|v| seen.insert(v.clone()) && (k != "__name__" || !v.is_empty()));
            (k, values)
        })
        .collect();
    let mut labels = Labels::from([("__name__".to_string(), fixed.unwrap_or("obsbox_fixture_total").to_string())]);
    let mut budget = 100_000u32;
    fn search(
        i: usize,
        candidates: &[(&str, Vec<String>)],
        labels: &mut Labels,
        must: &[&Selector],
        must_not: &[&Selector],
        budget: &mut u32,
    ) -> bool {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        let Some((key, values)) = candidates.get(i) else {
            return must.iter().all(|s| s.matches(labels)) && !must_not.iter().any(|s| s.matches(labels));
        };
        for v in values {
            if v.is_empty() {
                labels.remove(*key);
            } else {
                labels.insert(key.to_string(), v.clone());
            }
            // A value one selector rejects on this label cannot be completed.
            let get = labels.get(*key).map(String::as_str).unwrap_or("");
            if must.iter().any(|s| s.matchers.iter().any(|m| m.name == *key && !m.is_match(get))) {
                continue;
            }
            if search(i + 1, candidates, labels, must, must_not, budget) {
                return true;
            }
        }
        labels.remove(*key);
        false
    }
    search(0, &candidates, &mut labels, must, must_not, &mut budget).then_some(labels)
}

/// A few strings the (anchored) regex matches.
fn regex_samples(pattern: &str) -> Vec<String> {
    fn samples(h: &Hir) -> Vec<String> {
        const MAX: usize = 8;
        match h.kind() {
            HirKind::Empty | HirKind::Look(_) => vec![String::new()],
            HirKind::Literal(l) => vec![String::from_utf8_lossy(&l.0).into_owned()],
            HirKind::Class(Class::Unicode(c)) => {
                let has = |ch: char| c.ranges().iter().any(|r| r.start() <= ch && ch <= r.end());
                let mut out: Vec<String> = "0a5xZ_".chars().filter(|&ch| has(ch)).take(2).map(String::from).collect();
                out.extend(c.ranges().first().map(|r| r.start().to_string()));
                out
            }
            HirKind::Class(Class::Bytes(c)) => {
                c.ranges().first().map(|r| char::from(r.start()).to_string()).into_iter().collect()
            }
            HirKind::Repetition(r) => {
                let sub = samples(&r.sub);
                let mut out: Vec<String> = sub.iter().map(|s| s.repeat(r.min as usize)).collect();
                if r.min == 0 && r.max != Some(0) {
                    out.extend(sub.into_iter().take(2));
                }
                out
            }
            HirKind::Capture(c) => samples(&c.sub),
            HirKind::Concat(parts) => parts.iter().fold(vec![String::new()], |acc, part| {
                let next = samples(part);
                acc.iter().flat_map(|a| next.iter().map(move |n| format!("{a}{n}"))).take(MAX).collect()
            }),
            HirKind::Alternation(alts) => alts.iter().flat_map(samples).take(MAX).collect(),
        }
    }
    regex_syntax::parse(pattern).map(|h| samples(&h)).unwrap_or_default()
}

/// One input counter: its labels and its value at every sample.
struct Series {
    labels: Labels,
    interval: u64,
    /// Per phase: (first value, increment, samples) as promtool's `a+bxn` notation.
    segments: Vec<(f64, f64, u64)>,
    values: Vec<f64>,
}

impl Series {
    fn new(labels: Labels, s: &Scenario, increments: &[f64]) -> Series {
        let largest = increments.iter().copied().fold(0.0, f64::max);
        // Far from zero, so Prometheus never extrapolates the counter's start to its zero point.
        let mut value = 16.0 * largest;
        let mut values = vec![value];
        let mut segments = Vec::new();
        for (i, (&(n, _, _), &inc)) in s.phases.iter().zip(increments).enumerate() {
            if i == 0 {
                segments.push((value, inc, n));
            } else if n > 0 {
                segments.push((value + inc, inc, n - 1));
            }
            for _ in 0..n {
                value += inc;
                values.push(value);
            }
        }
        Series { labels, interval: s.interval, segments, values }
    }

    fn selector_text(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .filter(|(k, _)| *k != "__name__")
            .map(|(k, v)| format!("{k}=\"{}\"", promql_escape(v)))
            .collect();
        format!("{}{{{}}}", self.labels["__name__"], labels.join(","))
    }

    fn values_text(&self) -> String {
        let parts: Vec<String> = self.segments.iter().map(|(a, b, n)| format!("{a}+{b}x{n}")).collect();
        parts.join(" ")
    }

    /// Prometheus' extrapolated `increase(series[range])` at `t` (the counter never resets
    /// here), with a closed range (Prometheus 2) or a left-open one (Prometheus 3).
    fn increase(&self, t: u64, range: u64, left_open: bool) -> Option<f64> {
        let i = self.interval as i64;
        let start = t as i64 - range as i64;
        let first =
            if left_open { start.div_euclid(i) + 1 } else { start.div_euclid(i) + i64::from(start.rem_euclid(i) != 0) };
        let first = first.max(0) as usize;
        let last = ((t / self.interval) as usize).min(self.values.len() - 1);
        if last <= first {
            return None;
        }
        let (v0, v1) = (self.values[first], self.values[last]);
        let result = v1 - v0;
        let mut to_start = (first as i64 * i - start) as f64;
        let to_end = (t as i64 - last as i64 * i) as f64;
        let sampled = ((last - first) as i64 * i) as f64;
        let average = sampled / (last - first) as f64;
        if result > 0.0 && v0 >= 0.0 {
            to_start = to_start.min(sampled * (v0 / result));
        }
        let threshold = average * 1.1;
        let mut span = sampled;
        span += if to_start < threshold { to_start } else { average / 2.0 };
        span += if to_end < threshold { to_end } else { average / 2.0 };
        Some(result * (span / sampled))
    }
}

/// Sum over `series` of `f`, `None` when no series has a value (an empty vector).
fn sum(series: &[&Series], f: impl Fn(&Series) -> Option<f64>) -> Option<f64> {
    series.iter().filter_map(|s| f(s)).fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
}

/// The firing alerts, as (SLO index, tier index), at each check of `scenario`. Errors when the
/// two range conventions disagree, when a value sits on a threshold, or when the tier under test
/// (`under_test`) does not do what the check wants.
fn simulate(
    plans: &[Plan],
    slis: &[Sli],
    series: &[Series],
    scenario: &Scenario,
    under_test: (usize, usize),
) -> Result<Vec<BTreeSet<(usize, usize)>>, Sim> {
    // The SLOs these series feed, with their numerator and total series.
    let fed: Vec<(usize, Vec<&Series>, Vec<&Series>)> = slis
        .iter()
        .enumerate()
        .map(|(z, sli)| {
            let num = series.iter().filter(|s| sli.numerator.matches(&s.labels)).collect();
            let tot: Vec<&Series> = series.iter().filter(|s| sli.total.matches(&s.labels)).collect();
            (z, num, tot)
        })
        .filter(|(_, _, tot)| !tot.is_empty())
        .collect();
    let ratio = |z: usize, num: &[&Series], tot: &[&Series], w: u64, t: u64, open: bool| {
        let total = sum(tot, |s| s.increase(t, w, open).map(|v| v / w as f64))?;
        let bad = sum(num, |s| s.increase(t, w, open).map(|v| v / w as f64)).unwrap_or(0.0) / total;
        Some(if slis[z].numerator_is_bad { bad } else { 1.0 - bad })
    };
    let end = scenario.checks.iter().map(|c| c.0).max().unwrap_or(0);
    let mut active: [BTreeMap<(usize, usize), u64>; 2] = Default::default();
    let mut out = Vec::new();
    let mut checks = scenario.checks.iter().peekable();
    for ts in (0..=end).step_by(EVAL_S as usize) {
        let mut firing: [BTreeSet<(usize, usize)>; 2] = Default::default();
        let mut close = None;
        for (c, open) in [false, true].into_iter().enumerate() {
            for (z, num, tot) in &fed {
                let plan = &plans[*z];
                for (k, tier) in plan.tiers.iter().enumerate() {
                    let long = ratio(*z, num, tot, tier.long_s, ts, open);
                    let short = ratio(*z, num, tot, tier.short_s, ts, open);
                    let events = sum(tot, |s| s.increase(ts, tier.long_s, open));
                    let min = plan.slo.min_events as f64;
                    let mut cond =
                        long.is_some_and(|r| r >= tier.threshold) && short.is_some_and(|r| r >= tier.threshold);
                    if plan.guarded() {
                        cond &= events.is_some_and(|e| e >= min);
                    }
                    let guard = if plan.guarded() { events } else { None };
                    for (v, limit) in [(long, tier.threshold), (short, tier.threshold), (guard, min)] {
                        if v.is_some_and(|v| (v - limit).abs() <= AMBIGUOUS * limit.abs().max(1e-12)) {
                            close = Some((*z, k));
                        }
                    }
                    if (*z, k) == under_test && checks.peek().is_some_and(|c| c.0 == ts) {
                        let want = checks.peek().map(|c| c.1);
                        let burns = |r: Option<f64>| r.is_some_and(|r| r >= tier.threshold);
                        let ok = match want {
                            Some(Want::Spike) => burns(short) && !burns(long),
                            Some(Want::Recovered) => burns(long) && !burns(short),
                            Some(Want::Guarded) => burns(short) && burns(long) && !cond,
                            _ => true,
                        };
                        if !ok {
                            return Err(Sim::Wrong(format!(
                                "at {}: long {long:?}, short {short:?}, events {events:?} do not make a {want:?} case",
                                prom_duration(ts)
                            )));
                        }
                    }
                    if cond {
                        let since = *active[c].entry((*z, k)).or_insert(ts);
                        if ts - since >= tier.for_s {
                            firing[c].insert((*z, k));
                        }
                    } else {
                        active[c].remove(&(*z, k));
                    }
                }
            }
        }
        let Some(&&(_, want)) = checks.peek().filter(|c| c.0 == ts) else { continue };
        checks.next();
        if firing[0] != firing[1] {
            return Err(Sim::Ambiguous(format!(
                "Prometheus 2 and 3 range semantics disagree at {}",
                prom_duration(ts)
            )));
        }
        if let Some((z, k)) = close {
            return Err(Sim::Ambiguous(format!(
                "at {} a value of {} {} sits on its threshold",
                prom_duration(ts),
                plans[z].slo.name,
                plans[z].tiers[k].name
            )));
        }
        let fires = firing[0].contains(&under_test);
        if fires != (want == Want::Firing) {
            return Err(Sim::Wrong(format!(
                "at {} the tier {} fire",
                prom_duration(ts),
                if fires { "does" } else { "does not" }
            )));
        }
        out.push(std::mem::take(&mut firing[0]));
    }
    Ok(out)
}

fn test_node(plans: &[Plan], series: &[Series], scenario: &Scenario, expected: &[BTreeSet<(usize, usize)>]) -> Node {
    let inputs = series
        .iter()
        .map(|s| map(vec![("series", text(s.selector_text())), ("values", text(s.values_text()))]))
        .collect();
    let checks = scenario
        .checks
        .iter()
        .zip(expected)
        .map(|(&(t, _), firing)| {
            let alerts = firing
                .iter()
                .map(|&(z, k)| {
                    let (plan, tier) = (&plans[z], &plans[z].tiers[k]);
                    let mut labels: Vec<(&str, Node)> =
                        plan.labels.iter().map(|(k, v)| (k.as_str(), text(v.clone()))).collect();
                    labels.push(("severity", text(tier.severity)));
                    labels.push(("tier", text(tier.name.clone())));
                    map(vec![
                        ("exp_labels", map(labels)),
                        (
                            "exp_annotations",
                            map(vec![
                                ("summary", text(tier.summary.clone())),
                                ("description", text(tier.description.clone())),
                            ]),
                        ),
                    ])
                })
                .collect();
            map(vec![
                ("eval_time", text(prom_duration(t))),
                ("alertname", text("SLOBurnRate")),
                ("exp_alerts", seq(alerts)),
            ])
        })
        .collect();
    map(vec![
        ("name", text(scenario.name.clone())),
        ("interval", text(prom_duration(scenario.interval))),
        ("input_series", seq(inputs)),
        ("alert_rule_test", seq(checks)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(text: &str) -> Selector {
        Selector::parse("t", text).unwrap()
    }

    fn counter(interval: u64, increments: &[f64]) -> Series {
        let s = Scenario {
            name: String::new(),
            interval,
            phases: increments.iter().map(|&inc| (1, inc, 0.0)).collect(),
            checks: vec![],
            stretch: 0,
        };
        let mut series = Series::new(Labels::new(), &s, increments);
        // Start at zero for hand-computed values.
        series.values.iter_mut().for_each(|v| *v -= 16.0 * increments.iter().copied().fold(0.0, f64::max));
        series
    }

    #[test]
    fn increase_extrapolates_as_prometheus_does() {
        // Samples every 60 s: 0, 10, 20, ..., 100 at 0 s .. 600 s.
        let c = counter(60, &[10.0; 10]);
        // Closed range [300, 600]: samples at both ends, nothing to extrapolate.
        assert_eq!(c.increase(600, 300, false), Some(50.0));
        // Left-open (300, 600]: 360 .. 600 hold 40 over 240 s, extrapolated by 60 s to the start.
        assert_eq!(c.increase(600, 300, true), Some(50.0));
        // A range reaching before the first sample: the start is extrapolated towards zero, by
        // no more than the time to zero (here 0 s: the counter starts at 0).
        assert_eq!(c.increase(120, 300, false), Some(20.0));
        // Fewer than two samples: no value.
        assert_eq!(c.increase(600, 30, true), None);
        // Between samples: extrapolated by the gap to each end when under 1.1 intervals.
        assert_eq!(c.increase(630, 300, false), Some(40.0 * 300.0 / 240.0));
        // Past the last sample (600 s) by more than 1.1 intervals: by half an interval there.
        let v = c.increase(700, 300, false).unwrap();
        assert!((v - 30.0 * (180.0 + 20.0 + 30.0) / 180.0).abs() < 1e-9, "{v}");
    }

    #[test]
    fn labels_are_found_for_regexes_and_negations() {
        let num = selector(r#"http_requests_total{job="api",code=~"5..|429"}"#);
        let total = selector(r#"http_requests_total{job="api"}"#);
        let a = find_labels(&[&num, &total], &[]).unwrap();
        assert!(num.matches(&a) && total.matches(&a));
        let b = find_labels(&[&total], &[&num]).unwrap();
        assert!(total.matches(&b) && !num.matches(&b));

        let good = selector(r#"search_total{status!~"5..",region=~"eu-.+"}"#);
        let all = selector(r#"search_total{region=~"eu-.+"}"#);
        let b = find_labels(&[&all], &[&good]).unwrap();
        assert!(all.matches(&b) && !good.matches(&b), "{b:?}");
        assert_eq!(b.get("region").map(String::as_str), Some("eu-0"));

        // A name given by a regex only.
        let by_regex = selector(r#"{__name__=~"http_.+_total",job="api"}"#);
        let a = find_labels(&[&by_regex], &[]).unwrap();
        assert!(by_regex.matches(&a), "{a:?}");

        // Different metric names cannot both be required.
        assert!(find_labels(&[&selector("a_total"), &selector("b_total")], &[]).is_none());
    }

    #[test]
    fn regex_samples_match_their_regex() {
        for pattern in ["5..", "2..|3..", "GET|POST", "[a-c]+x?", "eu-.+", "[0-9]{3}"] {
            let sel = selector(&format!("x{{l=~`{pattern}`}}"));
            let m = &sel.matchers[0];
            let MatchOp::Re(re) = &m.op else { panic!("{pattern} is no regex matcher") };
            let samples = regex_samples(re.as_str());
            assert!(!samples.is_empty(), "{pattern}");
            for s in samples {
                assert!(m.is_match(&s), "{pattern} vs {s:?}");
            }
        }
    }

    #[test]
    fn counter_values_are_written_in_promtool_notation() {
        let s = Scenario {
            name: String::new(),
            interval: 60,
            phases: vec![(3, 10.0, 1.0), (2, 10.0, 0.0)],
            checks: vec![],
            stretch: 0,
        };
        let series = Series::new(Labels::from([("__name__".into(), "x".into())]), &s, &[1.0, 0.0]);
        assert_eq!(series.values, [16.0, 17.0, 18.0, 19.0, 19.0, 19.0]);
        assert_eq!(series.values_text(), "16+1x3 19+0x1");
        assert_eq!(series.selector_text(), "x{}");
    }
}
