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
