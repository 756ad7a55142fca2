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
//! - [`spec`]: OpenSLO v1 YAML to [`Slo`] ([`spec::parse`], [`spec::resolve`]).
//! - [`defs`]: [`Definitions`], the SLO directory: reload, what changed, errors for the UI.
#![warn(missing_docs)]

mod config;
pub mod defs;
mod error;
mod model;
pub mod spec;
mod status;

pub use config::{NotifyConfig, SloConfig};
pub use defs::{Definitions, ReloadReport};
pub use error::SloError;
pub use model::{Budgeting, CalendarUnit, Severity, Sli, Slo, Source, SpanGood, SpanSelector, Tier, Window};
pub use status::{Alert, AlertState, Health, TierBurn, Transition};
