//! The evaluation loop: [`SloEngine`] ticks every evaluation interval (divided by the time
//! scale) and runs one [`Evaluator::evaluate`] on the blocking pool: reload definitions when
//! they changed, recount the newest buckets from the store, evaluate budgets and burn rates,
//! move alert states, persist, and hand alerts to the [`AlertSink`]. Reads ([`SloEngine::list`],
//! [`SloEngine::detail`], ...) return owned copies of the latest evaluation's snapshot and never
//! wait for a running evaluation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use obsbox_storage::Reader;
use prometheus::{GaugeVec, core::Collector};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use crate::alerts::{AlertBook, fmt_duration};
use crate::budget::{Buckets, Method, Scale, lookback, time_to_exhaustion, window_range};
use crate::counts::{Counts, Identity};
use crate::model::{Budgeting, CalendarUnit, Severity, Slo, Window};
use crate::notify::AlertSink;
use crate::source::Plan;
use crate::status::{
    Alert, AlertState, BudgetDetail, BudgetUnit, Health, SeriesPoint, SloDetail, SloSummary, TierBurn, Transition,
};
use crate::{SloConfig, SloError};

/// Buckets recounted at every evaluation besides the evaluation interval, for late spans.
const LATE_BUCKETS: i64 = 3;
/// Most points of the burn-down and SLI series.
const MAX_POINTS: usize = 500;

/// Where the engine gets its SLOs (the definitions directory, or hand-built SLOs in tests).
pub trait SloSource: Send {
    /// The current SLOs and the errors of definitions that were rejected (each naming file,
    /// line and field). Called at the first evaluation, when [`SloSource::changed`] says so,
    /// and on [`SloEngine::reload`].
    fn reload(&mut self) -> (Vec<Slo>, Vec<String>);
    /// Whether the definitions changed since the last `reload` (cheap: called every
    /// evaluation).
    fn changed(&self) -> bool;
}

/// The latest evaluation, as the read API hands it out.
#[derive(Debug, Default)]
struct Snapshot {
    definitions: BTreeMap<String, Slo>,
    summaries: Vec<SloSummary>,
    details: BTreeMap<String, SloDetail>,
    alerts: Vec<Alert>,
    errors: Vec<String>,
}

/// The engine's self-metrics.
struct Metrics {
    sli: GaugeVec,
    budget: GaugeVec,
    burn: GaugeVec,
    alert_state: GaugeVec,
    evaluations: IntCounter,
    seconds: Histogram,
    events: IntCounterVec,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Metrics, SloError> {
        let err = |e: prometheus::Error| SloError::Metrics(e.to_string());
        let gauge = |name: &str, help: &str, labels: &[&str]| GaugeVec::new(Opts::new(name, help), labels).map_err(err);
        let m = Metrics {
            sli: gauge("obsbox_slo_sli", "SLI over the SLO window at the latest evaluation", &["slo"])?,
            budget: gauge(
                "obsbox_slo_error_budget_remaining",
                "fraction of the window's error budget left (negative: overspent)",
                &["slo"],
            )?,
            burn: gauge("obsbox_slo_burn_rate", "burn rate over an alert window (SLO time)", &["slo", "window"])?,
            alert_state: gauge(
                "obsbox_slo_alert_state",
                "1 for the current state of each SLO alert tier",
                &["slo", "tier", "state"],
            )?,
            evaluations: IntCounter::new("obsbox_slo_evaluations_total", "SLO evaluations run").map_err(err)?,
            seconds: Histogram::with_opts(HistogramOpts::new(
                "obsbox_slo_evaluation_seconds",
                "time one evaluation of every SLO takes",
            ))
            .map_err(err)?,
            events: IntCounterVec::new(
                Opts::new("obsbox_slo_events_total", "SLI events counted, good and total"),
                &["slo", "kind"],
            )
            .map_err(err)?,
        };
        let cs: [Box<dyn Collector>; 7] = [
            Box::new(m.sli.clone()),
            Box::new(m.budget.clone()),
            Box::new(m.burn.clone()),
            Box::new(m.alert_state.clone()),
            Box::new(m.evaluations.clone()),
            Box::new(m.seconds.clone()),
            Box::new(m.events.clone()),
        ];
        for c in cs {
            registry.register(c).map_err(err)?;
        }
        Ok(m)
    }

    /// Removes the series of an SLO that is gone or redefined.
    fn forget(&self, slo: &Slo) {
        let name = slo.name.as_str();
        let _ = self.sli.remove_label_values(&[name]);
        let _ = self.budget.remove_label_values(&[name]);
        for t in &slo.tiers {
            for d in [t.long, t.short] {
                let _ = self.burn.remove_label_values(&[name, &fmt_duration(d)]);
            }
            for st in STATES {
                let _ = self.alert_state.remove_label_values(&[name, &t.name, state_name(st)]);
            }
        }
        for kind in ["good", "total"] {
            let _ = self.events.remove_label_values(&[name, kind]);
        }
    }
}

const STATES: [AlertState; 4] = [AlertState::Inactive, AlertState::Pending, AlertState::Firing, AlertState::Resolved];

/// One SLO being evaluated.
struct Tracked {
    slo: Slo,
    plan: Result<Plan, String>,
    counts: Option<Counts>,
    /// The latest error of this SLO (counting or evaluating), cleared by a good evaluation.
    error: Option<String>,
    /// Buckets from here on add to `obsbox_slo_events_total`: those counted live by this
    /// process. Older ones (a backfill, a gap while obsbox was down) are left out, so a restart
    /// does not show Prometheus a burst of old events. Set at the first evaluation.
    live_from: Option<i64>,
}

/// The key of what an SLO counts: counts of another key are not reused.
fn count_key(slo: &Slo) -> String {
    format!("{:?}", slo.sli)
}

/// One evaluation step over every SLO, without the timer: [`SloEngine`] runs it on its tick;
/// tests and one-shot tools call [`Evaluator::evaluate`] with the time they want.
pub struct Evaluator {
    counts_dir: PathBuf,
    scale: Scale,
    recount_buckets: i64,
    reader: Arc<dyn Reader>,
    source: Box<dyn SloSource>,
    sink: Box<dyn AlertSink>,
    slos: BTreeMap<String, Tracked>,
    def_errors: Vec<String>,
    book: AlertBook,
    metrics: Metrics,
    loaded: bool,
    force_reload: Arc<AtomicBool>,
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
}

impl Evaluator {
    /// Validates `config`, creates `<data_dir>/slo/`, loads the alert state and registers the
    /// self-metrics in `registry`. Nothing is read from the store before the first
    /// [`Evaluator::evaluate`].
    pub fn new(
        config: &SloConfig,
        data_dir: &Path,
        reader: Arc<dyn Reader>,
        registry: &Registry,
        sink: Box<dyn AlertSink>,
        source: Box<dyn SloSource>,
    ) -> Result<Evaluator, SloError> {
        config.validate()?;
        let dir = data_dir.join("slo");
        std::fs::create_dir_all(&dir).map_err(|source| SloError::Io { path: dir.clone(), source })?;
        let book = AlertBook::open(&dir.join("alerts.json"))?;
        let interval_buckets = (config.evaluation_interval.as_secs_f64() / 60.0).ceil() as i64;
        Ok(Evaluator {
            counts_dir: dir.join("counts"),
            scale: Scale::new(config.time_scale),
            recount_buckets: LATE_BUCKETS + interval_buckets.max(1),
            reader,
            source,
            sink,
            slos: BTreeMap::new(),
            def_errors: Vec::new(),
            book,
            metrics: Metrics::register(registry)?,
            loaded: false,
            force_reload: Arc::new(AtomicBool::new(false)),
            snapshot: Arc::default(),
        })
    }

    /// Asks the next evaluation to reload the definitions.
    pub fn request_reload(&self) {
        self.force_reload.store(true, Ordering::SeqCst);
    }

    /// Runs one evaluation as of `now`: reload (first time, on change or request), recount,
    /// evaluate, update alerts, persist, deliver. Errors of single SLOs end up in
    /// [`Evaluator::errors`]; the others still evaluate.
    pub fn evaluate(&mut self, now: SystemTime) {
        let started = Instant::now();
        let now_ns = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let now_ms = (now_ns / 1_000_000) as i64;
        if !self.loaded || self.force_reload.swap(false, Ordering::SeqCst) || self.source.changed() {
            self.reload();
        }
        let mut transitions = Vec::new();
        let mut snap = Snapshot::default();
        let names: Vec<String> = self.slos.keys().cloned().collect();
        for name in &names {
            let t = self.slos.get_mut(name).expect("tracked");
            snap.definitions.insert(name.clone(), t.slo.clone());
            let outcome = evaluate_one(
                t,
                &*self.reader,
                self.scale,
                self.recount_buckets,
                &self.counts_dir,
                now_ns,
                &self.metrics,
            )
            .inspect(|e| transitions.extend(self.book.evaluate(&t.slo, &e.tiers, self.scale, now_ms)));
            match outcome {
                Ok(e) => {
                    let (alerts, history) = self.book.of(name);
                    let detail = e.into_detail(&t.slo, self.scale, now_ms, alerts, history);
                    self.export(&detail);
                    snap.summaries.push(detail.summary.clone());
                    snap.details.insert(name.clone(), detail);
                }
                Err(e) => {
                    tracing::warn!(slo = %name, error = %e, "slo evaluation failed");
                    t.error = Some(e);
                    // Listed all the same, without data, so the UI shows it with its error.
                    let (alerts, history) = self.book.of(name);
                    let detail = Evaluated::empty(&t.slo).into_detail(&t.slo, self.scale, now_ms, alerts, history);
                    snap.summaries.push(detail.summary.clone());
                    snap.details.insert(name.clone(), detail);
                }
            }
        }
        let known: Vec<&str> = names.iter().map(String::as_str).collect();
        transitions.extend(self.book.retire(&known, now_ms));
        if let Err(e) = self.book.save() {
            tracing::error!(error = %e, "slo alert state not saved");
            snap.errors.push(format!("alert state: {e}"));
        }
        let all = self.book.alerts();
        let notify: Vec<Alert> = all
            .iter()
            .filter(|a| a.state == AlertState::Firing || (a.state == AlertState::Resolved && a.since_ms == now_ms))
            .cloned()
            .collect();
        self.sink.deliver(&notify, &transitions);
        snap.alerts = all;
        snap.errors.extend(self.def_errors.iter().cloned());
        snap.errors.extend(self.slos.iter().filter_map(|(n, t)| t.error.as_ref().map(|e| format!("slo {n}: {e}"))));
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
        self.metrics.evaluations.inc();
        self.metrics.seconds.observe(started.elapsed().as_secs_f64());
    }

    fn reload(&mut self) {
        let (slos, errors) = self.source.reload();
        self.loaded = true;
        self.def_errors = errors;
        let mut next = BTreeMap::new();
        for slo in slos {
            let t = match self.slos.remove(&slo.name) {
                Some(mut t) if t.slo == slo => {
                    t.error = None;
                    t
                }
                Some(old) => {
                    self.metrics.forget(&old.slo);
                    let counts = old.counts.filter(|c| c.identity().key == count_key(&slo));
                    Tracked { plan: Plan::new(&slo.sli), slo, counts, error: None, live_from: None }
                }
                None => Tracked { plan: Plan::new(&slo.sli), slo, counts: None, error: None, live_from: None },
            };
            next.insert(t.slo.name.clone(), t);
        }
        for gone in self.slos.values() {
            self.metrics.forget(&gone.slo);
        }
        self.slos = next;
    }

    fn export(&self, d: &SloDetail) {
        let s = &d.summary;
        let m = &self.metrics;
        m.sli.with_label_values(&[&s.name]).set(s.sli.unwrap_or(f64::NAN));
        m.budget.with_label_values(&[&s.name]).set(s.budget_remaining.unwrap_or(f64::NAN));
        for t in &d.tiers {
            for (secs, v) in [(t.long_s, t.long), (t.short_s, t.short)] {
                let w = fmt_duration(Duration::from_secs_f64(secs));
                m.burn.with_label_values(&[s.name.as_str(), &w]).set(v.unwrap_or(f64::NAN));
            }
        }
        for a in &d.alerts {
            for st in STATES {
                let v = if a.state == st { 1.0 } else { 0.0 };
                m.alert_state.with_label_values(&[s.name.as_str(), &a.tier, state_name(st)]).set(v);
            }
        }
    }

    /// Every SLO of the latest evaluation, by name.
    pub fn list(&self) -> Vec<SloSummary> {
        read(&self.snapshot).summaries.clone()
    }

    /// One SLO's page, as of the latest evaluation.
    pub fn detail(&self, name: &str) -> Option<SloDetail> {
        read(&self.snapshot).details.get(name).cloned()
    }

    /// Every alert (all states), by SLO then tier.
    pub fn alerts(&self) -> Vec<Alert> {
        read(&self.snapshot).alerts.clone()
    }

    /// Rejected definitions and per-SLO evaluation errors.
    pub fn errors(&self) -> Vec<String> {
        read(&self.snapshot).errors.clone()
    }
}

fn read(s: &RwLock<Arc<Snapshot>>) -> Arc<Snapshot> {
    s.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn state_name(s: AlertState) -> &'static str {
    match s {
        AlertState::Inactive => "inactive",
        AlertState::Pending => "pending",
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
    }
}

/// What one SLO's evaluation computed, before alerts are attached.
struct Evaluated {
    sli: Option<f64>,
    budget: BudgetDetail,
    window_start_ms: i64,
    burn_down: Vec<SeriesPoint>,
    sli_series: Vec<SeriesPoint>,
    tiers: Vec<TierBurn>,
    time_to_exhaustion_s: Option<f64>,
}

impl Evaluated {
    /// An SLO that could not be evaluated.
    fn empty(slo: &Slo) -> Evaluated {
        Evaluated {
            sli: None,
            budget: BudgetDetail {
                unit: BudgetUnit::Events,
                total: 0.0,
                bad: 0.0,
                allowed_bad: 0.0,
                remaining: 0.0,
                remaining_ratio: None,
                slice_s: None,
                remaining_s: None,
            },
            window_start_ms: 0,
            burn_down: Vec::new(),
            sli_series: Vec::new(),
            tiers: slo
                .tiers
                .iter()
                .map(|t| TierBurn {
                    tier: t.name.clone(),
                    severity: t.severity,
                    threshold: t.burn_rate,
                    long_s: t.long.as_secs_f64(),
                    short_s: t.short.as_secs_f64(),
                    long: None,
                    short: None,
                    long_events: 0,
                    condition: false,
                })
                .collect(),
            time_to_exhaustion_s: None,
        }
    }

    fn into_detail(
        self,
        slo: &Slo,
        scale: Scale,
        now_ms: i64,
        alerts: Vec<Alert>,
        history: Vec<Transition>,
    ) -> SloDetail {
        let active = alerts.iter().any(|a| matches!(a.state, AlertState::Pending | AlertState::Firing));
        let remaining = self.budget.remaining_ratio;
        let health = match remaining {
            None => Health::NoData,
            Some(r) if r <= 0.0 => Health::Breached,
            Some(r) if r < 0.25 || active => Health::AtRisk,
            Some(_) => Health::Healthy,
        };
        let summary = SloSummary {
            name: slo.name.clone(),
            display_name: slo.display_name.clone(),
            service: slo.service.clone(),
            objective: slo.target,
            window: window_words(&slo.window),
            window_s: slo.window.nominal().as_secs_f64(),
            budgeting: match slo.budgeting {
                Budgeting::Occurrences => "occurrences",
                Budgeting::Timeslices { .. } => "timeslices",
                Budgeting::RatioTimeslices { .. } => "ratio_timeslices",
            }
            .to_string(),
            sli: self.sli,
            budget_remaining: remaining,
            health,
            firing: alerts.iter().filter(|a| a.state == AlertState::Firing).map(|a| a.tier.clone()).collect(),
            evaluated_at_ms: Some(now_ms),
        };
        SloDetail {
            summary,
            description: slo.description.clone(),
            source: format!("{}:{}", slo.source.file.display(), slo.source.line),
            time_scale: scale.factor(),
            window_start_ms: self.window_start_ms,
            budget: self.budget,
            burn_down: self.burn_down,
            sli_series: self.sli_series,
            tiers: self.tiers,
            time_to_exhaustion_s: self.time_to_exhaustion_s,
            alerts,
            history,
        }
    }
}

fn window_words(w: &Window) -> String {
    match w {
        Window::Rolling(d) => format!("{} rolling", fmt_duration(*d)),
        Window::Calendar { count, unit, time_zone, .. } => {
            let unit = match unit {
                CalendarUnit::Day => "day",
                CalendarUnit::Week => "week",
                CalendarUnit::Month => "month",
                CalendarUnit::Quarter => "quarter",
                CalendarUnit::Year => "year",
            };
            let s = if *count == 1 { "" } else { "s" };
            format!("{count} {unit}{s} calendar ({time_zone})")
        }
    }
}

/// Recounts and evaluates one SLO as of `now_ns`.
fn evaluate_one(
    t: &mut Tracked,
    reader: &dyn Reader,
    scale: Scale,
    recount_buckets: i64,
    counts_dir: &Path,
    now_ns: u64,
    metrics: &Metrics,
) -> Result<Evaluated, String> {
    let slo = &t.slo;
    let plan = t.plan.as_ref().map_err(Clone::clone)?;
    let now_b = scale.bucket_of(now_ns);
    let method = Method::of(&slo.budgeting);
    let (window, window_len) = window_range(&slo.window, now_b, scale.virtual_s(now_ns)).map_err(|e| e.to_string())?;
    let longest = slo.tiers.iter().map(|t| Scale::buckets(t.long)).max().unwrap_or(1);
    // Data needed: the window and every tier's long window, from a slice boundary.
    let k = method.slice_buckets();
    let lo = window.start.min(now_b - longest).div_euclid(k) * k;

    if t.counts.is_none() {
        let identity = Identity { bucket_ns: scale.bucket_ns(), time_scale: scale.factor(), key: count_key(slo) };
        t.counts = Some(Counts::open(counts_dir, &slo.name, identity).map_err(|e| e.to_string())?);
    }
    let counts = t.counts.as_mut().expect("opened above");
    // Recount from where counting stopped (after a restart: the newest recorded bucket), and
    // at least the newest few buckets, for spans that arrive late.
    let from = match counts.last_bucket() {
        None => lo,
        Some(last) => last.min(now_b + 1 - recount_buckets).max(lo),
    };
    let live_from = *t.live_from.get_or_insert(now_b + 1 - recount_buckets);
    let recount = plan.count(reader, scale, from, now_b + 1);
    let mut error = None;
    match recount {
        Ok(fresh) => {
            let (mut dg, mut dt) = (0u64, 0u64);
            for (i, (g, tot)) in fresh.into_iter().enumerate() {
                let b = from + i as i64;
                let (og, ot) = counts.get(b);
                if b >= live_from {
                    dg += g.saturating_sub(og);
                    dt += tot.saturating_sub(ot);
                }
                if (g, tot) != (0, 0) || b == now_b || (og, ot) != (0, 0) {
                    counts.set(b, g, tot).map_err(|e| e.to_string())?;
                }
            }
            metrics.events.with_label_values(&[slo.name.as_str(), "good"]).inc_by(dg);
            metrics.events.with_label_values(&[slo.name.as_str(), "total"]).inc_by(dt);
        }
        Err(e) => error = Some(format!("counting: {e}")),
    }
    counts.sync().map_err(|e| e.to_string())?;
    counts.compact(lo).map_err(|e| e.to_string())?;

    let mut dense = vec![(0u64, 0u64); (now_b + 1 - lo) as usize];
    for (b, c) in counts.range(lo, now_b + 1) {
        dense[(b - lo) as usize] = c;
    }
    let data = Buckets::new(lo, dense);
    let tally = data.tally(method, window.clone());
    let budget = tally.budget(slo.target);
    let tiers: Vec<TierBurn> = slo
        .tiers
        .iter()
        .map(|tier| {
            let long = data.tally(method, lookback(now_b, tier.long));
            let short = data.tally(method, lookback(now_b, tier.short));
            let (lb, sb) = (long.burn_rate(slo.target), short.burn_rate(slo.target));
            let long_events = long.total as u64;
            let condition = matches!((lb, sb), (Some(l), Some(s)) if l >= tier.burn_rate && s >= tier.burn_rate)
                && long_events >= slo.min_events;
            TierBurn {
                tier: tier.name.clone(),
                severity: tier.severity,
                threshold: tier.burn_rate,
                long_s: tier.long.as_secs_f64(),
                short_s: tier.short.as_secs_f64(),
                long: lb,
                short: sb,
                long_events,
                condition,
            }
        })
        .collect();
    let page = tiers.iter().find(|t| t.severity == Severity::Page).or(tiers.first());
    let time_to_exhaustion_s = match (budget.remaining_ratio, page.and_then(|p| p.long)) {
        (Some(r), Some(burn)) => time_to_exhaustion(r, burn, window_len).map(|d| d.as_secs_f64()),
        _ => None,
    };
    let slice_s = match slo.budgeting {
        Budgeting::Occurrences => None,
        Budgeting::Timeslices { slice, .. } | Budgeting::RatioTimeslices { slice } => Some(slice.as_secs_f64()),
    };
    let point = |(b, v): (i64, f64)| SeriesPoint { t_ms: scale.bucket_start_ms(b), value: v };
    // A failed recount still evaluates what was counted before, and says so.
    t.error = error;
    Ok(Evaluated {
        sli: tally.sli(),
        budget: BudgetDetail {
            unit: if slice_s.is_some() { BudgetUnit::Slices } else { BudgetUnit::Events },
            total: tally.total,
            bad: budget.bad,
            allowed_bad: budget.allowed_bad,
            remaining: budget.remaining,
            remaining_ratio: budget.remaining_ratio,
            slice_s,
            remaining_s: slice_s.map(|s| s * budget.remaining),
        },
        window_start_ms: scale.bucket_start_ms(window.start),
        burn_down: data.burn_down(method, slo.target, window.clone(), MAX_POINTS).into_iter().map(point).collect(),
        sli_series: data.sli_series(method, window, MAX_POINTS).into_iter().map(point).collect(),
        tiers,
        time_to_exhaustion_s,
    })
}

/// The SLO evaluation engine: a tokio task that runs an [`Evaluator`] every evaluation interval
/// (divided by the time scale) on the blocking pool.
pub struct SloEngine {
    evaluator: Arc<Mutex<Evaluator>>,
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    force_reload: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SloEngine {
    /// Starts evaluating: the first evaluation runs at once, then one per interval. Must be
    /// called inside a tokio runtime. Fails on an invalid `config`, an unwritable data
    /// directory, or self-metrics already registered in `registry`.
    pub fn start(
        config: &SloConfig,
        data_dir: &Path,
        reader: Arc<dyn Reader>,
        registry: &Registry,
        notifier: Box<dyn AlertSink>,
        source: Box<dyn SloSource>,
    ) -> Result<SloEngine, SloError> {
        let evaluator = Evaluator::new(config, data_dir, reader, registry, notifier, source)?;
        let snapshot = evaluator.snapshot.clone();
        let force_reload = evaluator.force_reload.clone();
        let evaluator = Arc::new(Mutex::new(evaluator));
        let wake = Arc::new(tokio::sync::Notify::new());
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let period = config.evaluation_interval / config.time_scale.max(1);
        let (ev, w) = (evaluator.clone(), wake.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = w.notified() => {}
                    _ = stopped.changed() => break,
                }
                let ev = ev.clone();
                let run = tokio::task::spawn_blocking(move || {
                    ev.lock().unwrap_or_else(|e| e.into_inner()).evaluate(SystemTime::now());
                });
                if let Err(e) = run.await {
                    tracing::error!(error = %e, "slo evaluation panicked");
                }
                if *stopped.borrow() {
                    break;
                }
            }
        });
        Ok(SloEngine { evaluator, snapshot, force_reload, wake, stop, task: Mutex::new(Some(task)) })
    }

    /// Reloads the definitions and evaluates now (for SIGHUP).
    pub fn reload(&self) {
        self.force_reload.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Stops ticking; an evaluation under way finishes.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops and waits for the evaluation under way, if any, to finish.
    pub async fn close(&self) {
        self.stop();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        // Wait for a blocking evaluation started before the stop.
        let ev = self.evaluator.clone();
        let _ = tokio::task::spawn_blocking(move || drop(ev.lock())).await;
    }
}

/// The read API of the latest evaluation (the same snapshot [`Evaluator`]'s readers see).
impl crate::SloStatus for SloEngine {
    fn list(&self) -> Vec<SloSummary> {
        read(&self.snapshot).summaries.clone()
    }

    fn detail(&self, name: &str) -> Option<SloDetail> {
        read(&self.snapshot).details.get(name).cloned()
    }

    fn definition(&self, name: &str) -> Option<Slo> {
        read(&self.snapshot).definitions.get(name).cloned()
    }

    fn alerts(&self) -> Vec<Alert> {
        read(&self.snapshot).alerts.clone()
    }

    fn errors(&self) -> Vec<String> {
        read(&self.snapshot).errors.clone()
    }
}

impl Drop for SloEngine {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_can_be_shared_between_request_handlers() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<SloEngine>();
        fn sendable<T: Send + 'static>() {}
        sendable::<Evaluator>();
    }

    #[test]
    fn windows_in_words() {
        assert_eq!(window_words(&Window::Rolling(Duration::from_secs(28 * 86400))), "28d rolling");
        let w = Window::Calendar {
            count: 1,
            unit: CalendarUnit::Month,
            time_zone: "Europe/Berlin".into(),
            start_unix_s: 0,
        };
        assert_eq!(window_words(&w), "1 month calendar (Europe/Berlin)");
        let w = Window::Calendar { count: 2, unit: CalendarUnit::Week, time_zone: "UTC".into(), start_unix_s: 0 };
        assert_eq!(window_words(&w), "2 weeks calendar (UTC)");
    }
}
