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
//! - `status`: what evaluation yields: [`Health`], [`TierBurn`], [`Alert`], [`Transition`].
//! - `config`: [`SloConfig`] (the `[slo]` section) and [`NotifyConfig`].
//! - `error`: [`SloError`].
//! - `rules`: [`prometheus_rules`] (the same SLOs as Prometheus recording and alerting rules) and
//!   [`promtool_tests`] (`promtool test rules` fixtures for them).
#![warn(missing_docs)]

mod config;
mod error;
mod model;
mod rules;
mod status;

pub use config::{NotifyConfig, SloConfig};
pub use error::SloError;
pub use model::{Budgeting, CalendarUnit, Severity, Sli, Slo, Source, SpanGood, SpanSelector, Tier, Window};
pub use rules::{prometheus_rules, promtool_tests};
pub use status::{Alert, AlertState, Health, TierBurn, Transition};
