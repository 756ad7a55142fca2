//! Integration tests of obsbox-slo: OpenSLO fixtures and fuzzing, the engine over the disk store, notifications to real receivers and Alertmanager, promtool on the generated rules.
//! One test binary per crate (one module per area), so the crate is linked once per test build.

mod engine_disk_store;
mod engine_evaluation;
mod engine_notification_targets;
mod notify_delivery;
mod rules_promtool;
mod spec_defs;
mod spec_fixtures;
mod spec_fuzz;
