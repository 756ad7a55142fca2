//! SLOs inside obsbox: OpenSLO v1 definitions, per-bucket good/total event counts, error
//! budgets and multi-window multi-burn-rate alerts with notifications, and the equivalent
//! Prometheus rules. The contract (what files may say, how everything is computed) is
//! `docs/slo.md`.
//!
//! ```text
//! slos/*.yaml ─ spec::parse ─> defs::Definitions (reload on change / SIGHUP; a bad file keeps
//!                               its previous good SLOs)
//!                                   │
//! Reader (spans: span_histogram,    v
//!   metrics: find_metrics) ─ source ─> counts (durable per-bucket good/total, data/slo/)
//!                                   │ every evaluation interval (30 s, scaled)
//!                                   v
//!                     budget (SLI, budget, burn rates) ─> alerts (pending/firing/resolved,
//!                                   history, durable) ─> notify (webhooks, Alertmanager)
//! rules: the same SLOs as Prometheus recording and alerting rules + promtool test fixtures
//! ```
//!
//! # Where things are
//! - `model`: [`Slo`] and its parts, the SRE Workbook tiers ([`Tier::workbook`]).
//! - `status`: what evaluation yields: [`Health`], [`TierBurn`], [`Alert`], [`Transition`],
//!   [`SloSummary`], [`SloDetail`].
//! - `config`: [`SloConfig`] (the `[slo]` section) and [`NotifyConfig`].
//! - `error`: [`SloError`].
//! - `budget`: the pure maths: SLI, error budget, burn rates, time to exhaustion, burn-down,
//!   time slices, calendar windows (`jiff`), demo time compression (`Scale`).
//! - `counts`: durable per-SLO per-bucket good/total counts (`data/slo/counts/*.counts`).
//! - `source`: counting events from the store (span histograms, metric counter increases).
//! - `alerts`: pending/firing/resolved states, history, `data/slo/alerts.json`.
//! - `engine`: [`SloEngine`] (the timer) and [`Evaluator`] (one evaluation), the read API
//!   ([`SloSummary`], [`SloDetail`]) and the [`SloSource`] / [`AlertSink`] seams.
//! - `notify`: [`AlertSink`] (what the engine calls after every evaluation) and [`Notifier`]
//!   (webhooks in the Alertmanager webhook format, Alertmanager `POST /api/v2/alerts`, the
//!   definitions' notification targets ([`Alert::webhooks`]); queues, retries, self-metrics);
//!   `notify/payload.rs` builds the JSON bodies.
//! - `rules`: [`prometheus_rules`] (the same SLOs as Prometheus recording and alerting rules) and
//!   [`promtool_tests`] (`promtool test rules` fixtures for them).
//! - [`spec`]: OpenSLO v1 YAML to [`Slo`] ([`spec::parse`], [`spec::resolve`]).
//! - `fuzz` (tests and the `fuzzing` feature only): the fuzz target of OpenSLO files
//!   (`docs/fuzzing.md`).
//! - [`defs`]: [`Definitions`], the SLO directory: reload, what changed, errors for the UI.
#![warn(missing_docs)]

mod alerts;
mod budget;
mod config;
mod counts;
pub mod defs;
mod engine;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
mod model;
mod notify;
mod rules;
mod source;
pub mod spec;
mod status;

pub use config::{NotifyConfig, SloConfig};
pub use defs::{Definitions, ReloadReport};
pub use engine::{Evaluator, SloEngine, SloSource};
pub use error::SloError;
pub use model::{Budgeting, CalendarUnit, Severity, Sli, Slo, Source, SpanGood, SpanSelector, Tier, Window};
pub use notify::AlertSink;
pub use notify::Notifier;
pub use rules::{prometheus_rules, promtool_tests};
pub use status::{
    Alert, AlertState, BudgetDetail, BudgetUnit, Health, SeriesPoint, SloDetail, SloStatus, SloSummary, TierBurn,
    Transition,
};
