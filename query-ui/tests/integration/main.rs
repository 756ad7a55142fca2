//! Integration tests of obsbox-query-ui: each API (native, Jaeger, Loki, Prometheus) and the UI
//! pages over an in-memory store, the differential tests against a real Prometheus, golden files
//! under `tests/golden/`, and malformed requests on every route. One test binary (one module per
//! area), so the crate is linked once per test build.

mod loki_common;

mod bad_requests;
mod differential;
mod jaeger_api;
mod loki_api;
mod loki_fuzz;
mod native_api;
mod promql_api;
mod promql_differential;
mod ui_explore;
mod ui_pages;
