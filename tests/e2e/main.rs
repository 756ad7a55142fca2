//! obsbox's end-to-end tests: one test binary (linking obsbox once, not once per file), one
//! module per area. Each drives the real binary or an in-process `Obsbox` with real clients and
//! peers: the Rust and Python OpenTelemetry SDKs, kill -9, full disks, damaged files, TLS, tokens, slow clients, headless Chromium
//! through WebDriver, Prometheus, Alertmanager, RabbitMQ, the demo and the compose stack outside
//! Docker. (`tests/bad_input.rs` and `tests/overload.rs` are binaries of their own: their memory and
//! throughput checks must not share the machine with other tests.)
//! Run one area with `cargo test --test e2e <module>::`.
//!
//! # Where things are
//! - `common`: starting obsbox, OTLP requests, reading back, and the external peers
//!   (Prometheus, Alertmanager webhooks, RabbitMQ, the compose files rewritten to loopback).
//! - `browser`: the headless Chromium + chromedriver harness of the `ui_browser_*` modules.

mod browser;
mod common;

mod alertmanager_webhook;
mod api_schemathesis;
mod auth;
mod cluster;
mod compose_files;
mod compose_stack;
mod corrupt_files;
mod crash;
mod dashboards_model;
mod derived_metrics;
mod disk_full;
mod e2e_demo;
mod e2e_python_sdk;
mod e2e_rust_sdk;
mod e2e_slo_demo;
mod prometheus_exposition;
mod prometheus_remote_write;
mod query_limits;
mod slo_reload;
mod slowloris;
mod tls;
mod ui_browser_explore;
mod ui_browser_pages;
mod ui_browser_slo;
mod ui_browser_trace;
