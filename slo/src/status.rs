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
    /// Webhook URLs of the notification targets of the tier's alert policy
    /// ([`crate::Tier::webhooks`]): the notifier sends this alert's firing and resolved messages
    /// there, besides the `[slo.notify]` receivers. Never serialized (such URLs often carry a
    /// token and this type is what the JSON API returns); the alert state file keeps them apart.
    #[serde(default, skip_serializing)]
    pub webhooks: Vec<String>,
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

/// One SLO in the SLO list, as of its latest evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloSummary {
    /// `metadata.name`.
    pub name: String,
    /// Display name.
    pub display_name: String,
    /// The service the SLO is about.
    pub service: String,
    /// The target ratio (`0.999` for 99.9%).
    pub objective: f64,
    /// The window in words (`30d rolling`, `1 month calendar (Europe/Berlin)`).
    pub window: String,
    /// Nominal window length, seconds of SLO time.
    pub window_s: f64,
    /// `occurrences`, `timeslices` or `ratio_timeslices`.
    pub budgeting: String,
    /// The SLI over the window (`None`: no events).
    pub sli: Option<f64>,
    /// Error budget left as a fraction of the window's budget (1 untouched, 0 spent, negative
    /// overspent; `None`: no events).
    pub budget_remaining: Option<f64>,
    /// Health.
    pub health: Health,
    /// Names of the tiers firing now.
    pub firing: Vec<String>,
    /// When it was last evaluated (`None`: not yet).
    pub evaluated_at_ms: Option<i64>,
}

/// The unit an error budget is counted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetUnit {
    /// Events (occurrences budgeting).
    Events,
    /// Time slices (time-slice budgeting; for ratio time slices, fractions of slices).
    Slices,
}

/// The error budget of the window in events (or slices).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetDetail {
    /// What `total`, `bad`, `allowed_bad` and `remaining` count.
    pub unit: BudgetUnit,
    /// Events (or slices with events) in the window so far.
    pub total: f64,
    /// Bad events (or slices) so far.
    pub bad: f64,
    /// Bad events the objective allows so far: `(1 - objective) × total`.
    pub allowed_bad: f64,
    /// `allowed_bad - bad`.
    pub remaining: f64,
    /// `remaining / allowed_bad` as in [`SloSummary::budget_remaining`].
    pub remaining_ratio: Option<f64>,
    /// For slices: the slice length, seconds of SLO time.
    pub slice_s: Option<f64>,
    /// For slices: `remaining` as SLO time, seconds.
    pub remaining_s: Option<f64>,
}

/// A point of a time series.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// Unix milliseconds (real time): the end of the step the value covers.
    pub t_ms: i64,
    /// The value.
    pub value: f64,
}

/// Everything the SLO page shows, as of the latest evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloDetail {
    /// The list entry.
    pub summary: SloSummary,
    /// `spec.description`.
    pub description: String,
    /// The defining file and line.
    pub source: String,
    /// Demo time compression in force (durations here are SLO time; real time is divided by it).
    pub time_scale: u32,
    /// Start of the window, Unix milliseconds (real time).
    pub window_start_ms: i64,
    /// The budget in events or slices.
    pub budget: BudgetDetail,
    /// Budget burn-down over the window: fraction of the window's budget left after the bad
    /// events from the window start to each point (at most ~500 points).
    pub burn_down: Vec<SeriesPoint>,
    /// The SLI per step over the window (steps without events left out; at most ~500 points).
    pub sli_series: Vec<SeriesPoint>,
    /// Burn rates per tier.
    pub tiers: Vec<TierBurn>,
    /// Time until the budget is spent at the burn rate over the first page tier's long window,
    /// seconds of SLO time (`None`: nothing burns).
    pub time_to_exhaustion_s: Option<f64>,
    /// The SLO's alerts, in tier order.
    pub alerts: Vec<Alert>,
    /// Alert transitions, newest first (bounded).
    pub history: Vec<Transition>,
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
    /// Problems with the definitions and evaluation errors, for the UI.
    fn errors(&self) -> Vec<String>;
}
