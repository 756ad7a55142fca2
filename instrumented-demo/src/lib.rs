//! `obsbox-demo`: a small shop of instrumented microservices and a load generator, so that obsbox has
//! realistic telemetry in which the classic microservice patterns are visible.
//!
//! Every service is its own process (`obsbox demo-service <name>`), started by `obsbox demo`
//! ([`launcher`]), with its own SQLite database, registered with the service registry, and exporting
//! traces, logs and metrics over OTLP/gRPC to the endpoint in the standard `OTEL_EXPORTER_OTLP_*`
//! variables.
//!
//! # Where things are
//! - [`telemetry`]: [`telemetry::init`] sets up the OpenTelemetry SDK (traces through
//!   `tracing-opentelemetry`, logs through the tracing bridge, metrics) and returns the flushing guard.
//! - [`http`]: the axum layer that makes HTTP server spans and `http.server.request.duration`, the
//!   [`http::HttpClient`] that makes client spans and propagates `traceparent` and `x-request-id`.
//! - [`config`]: [`ServiceConfig`] (flags and `OBSBOX_DEMO_*` variables) and [`ServiceName`].
//! - [`db`]: SQLite (one file per service) with a DB span per statement.
//! - [`faults`]: run-time fault injection (latency and error rate per endpoint, provider outage,
//!   broker down) behind `GET`/`POST /admin/faults` on every service.
//! - [`registry`]: the service registry (register, heartbeat, expiry) and its caching client.
//! - [`services`]: [`services::run`] dispatches to a service; [`services::ServiceContext`] and
//!   [`services::serve`] are what every service is built on. The business services (orders,
//!   inventory over gRPC, payments and its flaky provider, shipping, notifications) are in
//!   `services/*.rs`.
//! - `gateway`: the API gateway (routing through the registry, round-robin, JWT, rate limits).
//! - `catalog`: products (seeded) and carts.
//! - [`loadgen`]: user journeys against the gateway.
//! - `patterns/`: circuit breaker, retry, bulkhead, timeout, saga, outbox, inbox.
//! - `broker`: event delivery over RabbitMQ (`lapin`) or, without a broker, over HTTP.
//! - [`launcher`]: starts every service as a child process and stops them.
#![warn(missing_docs)]

pub mod broker;
mod catalog;
pub mod config;
pub mod db;
mod error;
pub mod faults;
mod gateway;
pub mod http;
pub mod launcher;
pub mod loadgen;
pub mod patterns;
pub mod registry;
pub mod services;
pub mod telemetry;

pub use config::{ServiceConfig, ServiceName};
pub use error::{Error, Result};
