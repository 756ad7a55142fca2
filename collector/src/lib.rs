//! obsbox's OTLP receivers: OTLP/gRPC and OTLP/HTTP (protobuf and JSON, gzip or not), with
//! validation, limits and backpressure, writing into an [`obsbox_storage::Writer`].
//!
//! ```text
//! gRPC Export ─┐                                            ┌─ partial_success
//!              ├─> Collector: budget -> decode pool -> validate -> Writer::write ─┤
//! HTTP POST ───┘   (inflate + prost/serde_json)                └─ 429/503 + retry info
//! ```
//!
//! Both receivers hand the raw request bytes and their format to the same
//! [`Collector`] method; neither decodes anything on an async runtime thread.
//!
//! # Where things are
//! - `limits`: [`Limits`], the bounds on every input, and their validation.
//! - `service`: [`Collector`], the one ingest path: the in-flight byte budget, the bounded
//!   decode pool, the call to the writer, the encoded `Export*ServiceResponse`.
//! - `decode`: gzip inflation with a hard cap, protobuf and OTLP/JSON decoding.
//! - `validate`: per-item checks (ids, attribute count and size); invalid items become
//!   `partial_success` rejections.
//! - `grpc`: [`serve_grpc`], the three `Export` services over a pass-through tonic codec.
//! - `http`: [`http_router`] / [`serve_http`], `POST /v1/{traces,logs,metrics}` with CORS.
//! - `alertmanager`: `POST /v1/alertmanager` on the same router, Alertmanager's webhook: each
//!   alert becomes an OTLP log record through the same ingest path (`docs/alertmanager.md`).
//! - `error`: [`CollectorError`], and the internal request error whose code maps to both an
//!   HTTP status and a gRPC code in one function (`ErrorCode::statuses`).
//! - `telemetry`: the `obsbox_ingest_*` Prometheus metrics.
//! - `fuzz` (tests and the `fuzzing` feature only): the fuzz targets of the ingest path
//!   (`docs/fuzzing.md`).
//! - `derive`: [`Deriver`], span metrics and the service graph derived from acknowledged spans
//!   on a thread of their own, written back as metrics (`docs/derived-metrics.md`).
//! - `remote_write`: [`RemoteWrite`], Prometheus remote-write export of acknowledged metric
//!   batches (received and derived); [`push_metrics`] sends one `MetricsData` at once.
#![warn(missing_docs)]

mod alertmanager;
mod decode;
mod derive;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
mod grpc;
mod http;
mod limits;
mod remote_write;
mod service;
mod telemetry;
mod validate;

pub use derive::{DeriveConfig, Deriver};
pub use error::CollectorError;
pub use grpc::serve_grpc;
pub use http::{http_router, serve_http};
pub use limits::Limits;
pub use remote_write::{RemoteWrite, RemoteWriteConfig, push_metrics};
pub use service::{Collector, Taps};
