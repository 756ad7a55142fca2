//! The SLO model every part of the crate works on: what `spec` makes of OpenSLO files, what the
//! engine evaluates and `rules` turns into Prometheus rules. Durations here are real (unscaled)
//! durations; demo time compression is applied by the engine (`Scale`), never stored here.

use std::path::PathBuf;
use std::time::Duration;

use obsbox_storage::{AttrValue, SpanPredicate};

/// One service level objective, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Slo {
    /// `metadata.name`: unique, `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (as
    /// OpenSLO requires). The key of counts, alert state and URLs.
    pub name: String,
    /// `metadata.displayName`, else `name`.
    pub display_name: String,
    /// `spec.description` (may be empty).
    pub description: String,
    /// `spec.service`: the service the SLO is about (a label on alerts and rules).
    pub service: String,
    /// What is counted.
    pub sli: Sli,
    /// The target ratio of good events (or good time slices), `0 < target < 1`.
    pub target: f64,
    /// `spec.objectives[0].displayName` (may be empty).
    pub objective_name: String,
    /// The SLO window.
    pub window: Window,
    /// How the error budget is counted.
    pub budgeting: Budgeting,
    /// Multi-window multi-burn-rate alert tiers, highest burn rate first. Never empty: the
    /// defaults are the SRE Workbook tiers scaled to the window ([`Tier::workbook`]).
    pub tiers: Vec<Tier>,
    /// Low-traffic guard: a tier fires only when its long window holds at least this many
    /// events (for time-slice budgeting: slices with events). Annotation `obsbox.io/min-events`
    /// (default 100).
    pub min_events: u64,
    /// Labels added to every alert and rule (`metadata.labels`, values joined with `,`).
    pub labels: Vec<(String, String)>,
    /// Where the SLO was defined.
    pub source: Source,
}

/// Where a definition came from, for messages and the UI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The YAML file.
    pub file: PathBuf,
    /// 1-based line of the document's first line.
    pub line: usize,
}

/// The service level indicator: how good and total events are counted.
#[derive(Clone, Debug, PartialEq)]
pub enum Sli {
    /// Over spans in the store: total = spans matching `selector`; good = those also matching
    /// `good`. Counted by span start time.
    Spans {
        /// Which spans are events.
        selector: SpanSelector,
        /// Which of them are good.
        good: SpanGood,
    },
    /// Over metrics: a ratio of counters (or of histogram bucket counters, for latency), each a
    /// PromQL instant-vector selector (`name{label="v",...}`), the same text inside obsbox and in
    /// the generated Prometheus rules. Events in an interval = the sum over the selected series
    /// of their reset-aware increase.
    Metrics {
        /// The good events, or the bad events when `numerator_is_bad`.
        numerator: String,
        /// Whether `numerator` counts bad events (OpenSLO `bad` instead of `good`).
        numerator_is_bad: bool,
        /// All events.
        total: String,
    },
}

/// A selection of spans. Every set field must match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpanSelector {
    /// Resource `service.name`.
    pub service: Option<String>,
    /// Span name.
    pub operation: Option<String>,
    /// Span kind as the OTLP enum number (1 internal .. 5 consumer).
    pub kind: Option<i32>,
    /// Span attributes that must have exactly these values.
    pub attributes: Vec<(String, AttrValue)>,
}

/// What makes a selected span good. At least one of the two is set.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanGood {
    /// A span with status ERROR is bad.
    pub no_error: bool,
    /// A span longer than this is bad.
    pub max_duration: Option<Duration>,
}

/// The SLO window (`spec.timeWindow[0]`).
#[derive(Clone, Debug, PartialEq)]
pub enum Window {
    /// The last `duration`, moving with time (`isRolling: true`), e.g. 7d, 28d, 30d.
    Rolling(Duration),
    /// Calendar-aligned periods (`isRolling: false`): the window is the current period.
    Calendar {
        /// Period length in calendar units.
        count: u32,
        /// Calendar unit of the period.
        unit: CalendarUnit,
        /// `calendar.timeZone` (IANA name), `UTC` by default.
        time_zone: String,
        /// `calendar.startTime` as Unix seconds: periods are aligned to it.
        start_unix_s: i64,
    },
}

/// Units of calendar windows (OpenSLO `d`, `w`, `M`, `Q`, `Y`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalendarUnit {
    /// Days.
    Day,
    /// Weeks.
    Week,
    /// Months.
    Month,
    /// Quarters.
    Quarter,
    /// Years.
    Year,
}

/// How the error budget is counted (`spec.budgetingMethod`).
#[derive(Clone, Debug, PartialEq)]
pub enum Budgeting {
    /// Good events over all events in the window.
    Occurrences,
    /// Good slices over all slices with events; a slice is good when its good/total ratio is at
    /// least `slice_target`.
    Timeslices {
        /// `timeSliceWindow`, a whole number of minutes.
        slice: Duration,
        /// `timeSliceTarget`, `0 < t <= 1`.
        slice_target: f64,
    },
    /// The mean of the slices' good/total ratios (slices without events left out).
    RatioTimeslices {
        /// `timeSliceWindow`, a whole number of minutes.
        slice: Duration,
    },
}

/// Severity of an alert tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Wake someone up.
    Page,
    /// Look at it during working hours.
    Ticket,
}

impl Severity {
    /// `page` or `ticket`, as in alert labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Page => "page",
            Severity::Ticket => "ticket",
        }
    }
}

/// One multi-window burn-rate alert tier: fires when the burn rate over both the long and the
/// short window is at least `burn_rate` (and the long window holds `Slo::min_events` events).
#[derive(Clone, Debug, PartialEq)]
pub struct Tier {
    /// Name, unique within the SLO (`AlertCondition` `metadata.name`, or e.g. `page-1h`).
    pub name: String,
    /// Severity label.
    pub severity: Severity,
    /// Burn-rate threshold: multiples of the rate that spends the budget exactly in the window.
    pub burn_rate: f64,
    /// Long window (`lookbackWindow`).
    pub long: Duration,
    /// Short window (extension `shortWindow` in the condition; default long / 12).
    pub short: Duration,
    /// How long the condition must hold before the alert fires (`alertAfter`; default 0: it
    /// fires at the evaluation that finds it true, after being pending for that evaluation).
    pub alert_after: Duration,
    /// Webhook URLs of the tier's alert policy's `AlertNotificationTarget`s: notified in
    /// addition to the `[slo.notify]` receivers. Empty for the default tiers.
    pub webhooks: Vec<String>,
}

impl Tier {
    /// The SRE Workbook's tiers for a 30-day window, scaled by `window / 30d`: page 1h/5m at
    /// 14.4x and 6h/30m at 6x; ticket 1d/2h at 3x and 3d/6h at 1x.
    pub fn workbook(window: Duration) -> Vec<Tier> {
        const DAY: u64 = 24 * 3600;
        let scale = window.as_secs_f64() / (30 * DAY) as f64;
        let at = |secs: u64| Duration::from_secs_f64(secs as f64 * scale);
        let tier = |name: &str, severity, burn_rate, long: u64, short: u64| Tier {
            name: name.into(),
            severity,
            burn_rate,
            long: at(long),
            short: at(short),
            alert_after: Duration::ZERO,
            webhooks: Vec::new(),
        };
        vec![
            tier("page-fast", Severity::Page, 14.4, 3600, 300),
            tier("page-slow", Severity::Page, 6.0, 6 * 3600, 1800),
            tier("ticket-fast", Severity::Ticket, 3.0, DAY, 2 * 3600),
            tier("ticket-slow", Severity::Ticket, 1.0, 3 * DAY, 6 * 3600),
        ]
    }
}

impl Slo {
    /// For span SLIs, the store predicates of (all events, bad events); `None` for metric SLIs.
    pub fn span_predicates(&self) -> Option<(SpanPredicate, SpanPredicate)> {
        let Sli::Spans { selector, good } = &self.sli else { return None };
        let all = crate::source::span_predicate(selector);
        let mut bad = Vec::new();
        if good.no_error {
            bad.push(SpanPredicate::StatusCode(crate::source::STATUS_ERROR));
        }
        if let Some(max) = good.max_duration {
            bad.push(SpanPredicate::Duration { min: max.as_nanos() as u64 + 1, max: u64::MAX });
        }
        let bad = SpanPredicate::And(vec![all.clone(), SpanPredicate::Or(bad)]);
        Some((all, bad))
    }
}

impl Window {
    /// Nominal length: the rolling duration, or the calendar period taken as 1d, 7d, 30d, 90d
    /// or 365d per unit (used to scale default tiers and for budget rates).
    pub fn nominal(&self) -> Duration {
        match self {
            Window::Rolling(d) => *d,
            Window::Calendar { count, unit, .. } => {
                let days = match unit {
                    CalendarUnit::Day => 1,
                    CalendarUnit::Week => 7,
                    CalendarUnit::Month => 30,
                    CalendarUnit::Quarter => 90,
                    CalendarUnit::Year => 365,
                };
                Duration::from_secs(u64::from(*count) * days * 24 * 3600)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workbook_tiers_for_30_days_are_the_book() {
        let t = Tier::workbook(Duration::from_secs(30 * 24 * 3600));
        let h = |n: u64| Duration::from_secs(n * 3600);
        let m = |n: u64| Duration::from_secs(n * 60);
        let got: Vec<_> = t.iter().map(|t| (t.severity, t.burn_rate, t.long, t.short)).collect();
        assert_eq!(
            got,
            vec![
                (Severity::Page, 14.4, h(1), m(5)),
                (Severity::Page, 6.0, h(6), m(30)),
                (Severity::Ticket, 3.0, h(24), h(2)),
                (Severity::Ticket, 1.0, h(72), h(6)),
            ]
        );
        let week = Tier::workbook(Duration::from_secs(7 * 24 * 3600));
        assert_eq!(week[0].long, Duration::from_secs(840), "1h scaled by 7/30");
    }
}
