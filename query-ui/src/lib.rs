//! obsbox's query service and HTTP APIs on the UI port (16686 by default).
//!
//! # Where things are
//! - [`router`]: the axum router of everything served on the UI port.
//! - `ops`: operational endpoints: `GET /healthz`, `GET /readyz`, `GET /metrics` (obsbox's own
//!   metrics in the Prometheus text format, the store's sizes and queue depths included).
//! - `ui`: the web UI pages (`/services`, `/search`, `/trace/{id}`, `/logs`, `/map`) and their
//!   embedded assets under `/static/`.
//! - `prometheus`: the Prometheus-compatible API under `/prometheus/api/v1` (PromQL subset in
//!   `docs/promql.md`).
//!
//! The query APIs (native, Jaeger, Loki, Prometheus) and the web UI join this router as they
//! are built.
#![warn(missing_docs)]

mod filters;
mod form;
mod jaeger;
mod loki;
mod native;
mod ops;
mod prometheus;
mod query;
mod ui;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::Router;
use obsbox_storage::Reader;

pub use ops::StoreMetrics;
pub use query::{Dependency, QueryError, QueryService, SpanWarning, Trace, TraceSearch, TraceSummary};

/// State shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The store's read side.
    pub reader: Arc<dyn Reader>,
    /// Registry whose metrics `GET /metrics` exposes.
    pub registry: ::prometheus::Registry,
    /// Set once every listener accepts connections and the store is open.
    pub ready: Arc<AtomicBool>,
    /// Gauges refreshed from the store at each scrape.
    pub store_metrics: Arc<StoreMetrics>,
    /// The query service every API goes through.
    pub query: QueryService,
    /// Traces the trace view laid out recently.
    pub(crate) trace_cache: Arc<ui::trace::TraceCache>,
    /// SLO evaluation, when SLOs are configured (the SLO pages and `/api/v1/slos`).
    pub slos: Option<Arc<dyn obsbox_slo::SloStatus>>,
}

impl AppState {
    /// State over `reader`, registering the store gauges in `registry`.
    pub fn new(
        reader: Arc<dyn Reader>,
        registry: ::prometheus::Registry,
        ready: Arc<AtomicBool>,
    ) -> Result<Self, ::prometheus::Error> {
        let store_metrics = Arc::new(StoreMetrics::register(&registry)?);
        let query = QueryService::new(reader.clone());
        Ok(AppState { reader, registry, ready, store_metrics, query, trace_cache: Default::default(), slos: None })
    }

    /// The same state with SLO evaluation.
    pub fn with_slos(mut self, slos: Arc<dyn obsbox_slo::SloStatus>) -> Self {
        self.slos = Some(slos);
        self
    }
}

/// Everything served on the UI port.
pub fn router(state: AppState) -> Router {
    ops::routes()
        .merge(native::routes())
        .merge(jaeger::routes())
        .merge(loki::routes())
        .merge(ui::routes())
        .merge(prometheus::routes())
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
