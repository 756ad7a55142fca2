//! What the engine tells the outside: evaluation results, alert states and transitions. Owned
//! snapshots (serde, for the JSON API and the durable alert file); times are Unix milliseconds of
//! real (wall-clock) time.

use serde::{Deserialize, Serialize};

use crate::model::Severity;

/// Health of an SLO at its latest evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Budget left and no tier firing.
    Healthy,
    /// A tier is pending or firing, or less than 25% of the budget is left.
    AtRisk,
    /// The budget is spent (SLI below target over the window).
    Breached,
    /// No events in the window.
    NoData,
}

/// Burn rates of one tier at one evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierBurn {
    /// Tier name.
    pub tier: String,
    /// Severity.
    pub severity: Severity,
    /// Threshold (burn-rate multiple).
    pub threshold: f64,
    /// Long window, seconds (real time, unscaled).
    pub long_s: f64,
    /// Short window, seconds (real time, unscaled).
    pub short_s: f64,
    /// Burn rate over the long window (`None`: no events in it).
    pub long: Option<f64>,
    /// Burn rate over the short window (`None`: no events in it).
    pub short: Option<f64>,
    /// Events (or slices with events) in the long window, for the low-traffic guard.
    pub long_events: u64,
    /// Whether both windows are at or above the threshold and the guard is passed.
    pub condition: bool,
}

/// State of one (SLO, tier) alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Condition false.
    Inactive,
    /// Condition true for less than the tier's `alert_after`.
    Pending,
    /// Condition true long enough; notified.
    Firing,
    /// Was firing, condition now false; notified. Becomes `Inactive` at the next evaluation.
    Resolved,
}

/// One alert: an (SLO, tier) pair and its current state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// SLO name.
    pub slo: String,
    /// Tier name.
    pub tier: String,
    /// Severity.
    pub severity: Severity,
    /// Current state.
    pub state: AlertState,
    /// When the current state began.
    pub since_ms: i64,
    /// When it began firing (for `startsAt`; kept after resolution).
    pub fired_at_ms: Option<i64>,
    /// When it resolved (for `endsAt`).
    pub resolved_at_ms: Option<i64>,
    /// Labels sent with notifications (alertname, slo, service, severity, tier, SLO labels).
    pub labels: Vec<(String, String)>,
    /// Annotations sent with notifications (summary, description, burn rates).
    pub annotations: Vec<(String, String)>,
}

/// A change of an alert's state, kept in the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// When.
    pub at_ms: i64,
    /// SLO name.
    pub slo: String,
    /// Tier name.
    pub tier: String,
    /// Severity.
    pub severity: Severity,
    /// State before.
    pub from: AlertState,
    /// State after.
    pub to: AlertState,
    /// Burn rate over the long window at that evaluation.
    pub long: Option<f64>,
    /// Burn rate over the short window at that evaluation.
    pub short: Option<f64>,
}

/// One SLO in the list: its latest evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloSummary {
    /// Name (URL key).
    pub name: String,
    /// Display name.
    pub display_name: String,
    /// The service it is about.
    pub service: String,
    /// Target ratio, e.g. 0.999.
    pub target: f64,
    /// The window as a user reads it, e.g. `30d rolling` or `1 month (calendar, UTC)`.
    pub window: String,
    /// Budgeting method: `occurrences`, `timeslices` or `ratio_timeslices`.
    pub budgeting: String,
    /// SLI over the window (`None`: no events).
    pub sli: Option<f64>,
    /// Error budget remaining as a fraction of the budget (1 = untouched, < 0 = overspent).
    pub budget_remaining: Option<f64>,
    /// Health at the latest evaluation.
    pub health: Health,
    /// Tiers currently firing.
    pub firing: Vec<String>,
    /// Tiers currently pending.
    pub pending: Vec<String>,
    /// When it was last evaluated (0: not yet).
    pub evaluated_at_ms: i64,
}

/// One point of a series over the SLO window.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Unix ms (real time).
    pub t_ms: i64,
    /// Value (`None`: no events up to / in that step).
    pub v: Option<f64>,
}

/// Everything the SLO page shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloDetail {
    /// The list entry.
    pub summary: SloSummary,
    /// Description from the definition.
    pub description: String,
    /// The SLI in words, e.g. `spans of payments POST /payments (server): good = not error`.
    pub indicator: String,
    /// Good events in the window (for time-slice budgeting: good slices).
    pub good: u64,
    /// All events in the window (for time-slice budgeting: slices with events).
    pub total: u64,
    /// Bad events (or slices) the budget allows over the window so far: `(1 - target) * total`.
    pub budget_allowed: f64,
    /// Allowed minus spent (may be negative).
    pub budget_left: f64,
    /// At the long page-window burn rate, how long until the budget is gone (`None`: not
    /// burning, or already spent).
    pub exhaustion_s: Option<f64>,
    /// Budget remaining (fraction) over the window, oldest first (<= ~500 points).
    pub burn_down: Vec<Point>,
    /// SLI per step over the window, oldest first (<= ~500 points).
    pub sli_series: Vec<Point>,
    /// Burn rates per tier.
    pub tiers: Vec<TierBurn>,
    /// Alerts of this SLO, one per tier.
    pub alerts: Vec<Alert>,
    /// Transitions, newest first.
    pub history: Vec<Transition>,
    /// Where the definition is (`file:line`).
    pub source: String,
    /// Start and end of the current window (Unix ms, real time).
    pub window_start_ms: i64,
    /// End of the window: the latest evaluation.
    pub window_end_ms: i64,
}

/// The read side of SLO evaluation, for the JSON API and the UI. Every call returns owned
/// snapshots of the latest evaluation and is cheap (no store reads).
pub trait SloStatus: Send + Sync {
    /// Every SLO in force, sorted by name.
    fn list(&self) -> Vec<SloSummary>;
    /// One SLO's page data, `None` when no SLO has that name.
    fn detail(&self, name: &str) -> Option<SloDetail>;
    /// The definition in force under that name.
    fn definition(&self, name: &str) -> Option<crate::Slo>;
    /// Every alert of every SLO (all states).
    fn alerts(&self) -> Vec<Alert>;
    /// Problems with the definitions (file, line, field, message), for the UI.
    fn errors(&self) -> Vec<String>;
}
