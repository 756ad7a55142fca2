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
//! - `fuzz` (tests and the `fuzzing` feature only): the fuzz targets of the query languages
//!   and filters, through the router over a disk store (`docs/fuzzing.md`).
//! - `RequestMetrics` (here): `obsbox_query_duration_seconds{api, code}`, the time to answer each
//!   request on the UI port.
//!
//! The query APIs (native, Jaeger, Loki, Prometheus) and the web UI join this router as they
//! are built.
#![warn(missing_docs)]

mod filters;
mod form;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
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
    /// Request latency by API.
    request_metrics: RequestMetrics,
}

impl AppState {
    /// State over `reader`, registering the store gauges in `registry`.
    pub fn new(
        reader: Arc<dyn Reader>,
        registry: ::prometheus::Registry,
        ready: Arc<AtomicBool>,
    ) -> Result<Self, ::prometheus::Error> {
        let store_metrics = Arc::new(StoreMetrics::register(&registry)?);
        let request_metrics = RequestMetrics::register(&registry)?;
        let query = QueryService::new(reader.clone());
        Ok(AppState {
            reader,
            registry,
            ready,
            store_metrics,
            query,
            trace_cache: Default::default(),
            request_metrics,
            slos: None,
        })
    }

    /// The same state with SLO evaluation.
    pub fn with_slos(mut self, slos: Arc<dyn obsbox_slo::SloStatus>) -> Self {
        self.slos = Some(slos);
        self
    }
}

/// `obsbox_query_duration_seconds{api, code}`: time from a request's arrival until its response
/// starts (a streamed answer, like the live log tail, counts until its headers), by API and
/// status class.
#[derive(Clone)]
struct RequestMetrics(::prometheus::HistogramVec);

impl RequestMetrics {
    fn register(registry: &::prometheus::Registry) -> Result<Self, ::prometheus::Error> {
        let h = ::prometheus::HistogramVec::new(
            ::prometheus::HistogramOpts::new(
                "obsbox_query_duration_seconds",
                "Time to answer a request on the UI port, by API (native, jaeger, loki, prometheus, exposition, ui, ops) and status class.",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["api", "code"],
        )?;
        registry.register(Box::new(h.clone()))?;
        Ok(RequestMetrics(h))
    }
}

/// Which API a request path belongs to (a fixed set: paths themselves would be unbounded labels).
fn api_of(path: &str) -> &'static str {
    if path.starts_with("/api/v1/") {
        "native"
    } else if path.starts_with("/api/") {
        "jaeger"
    } else if path.starts_with("/loki/") {
        "loki"
    } else if path == "/prometheus/metrics" {
        "exposition"
    } else if path.starts_with("/prometheus/") {
        "prometheus"
    } else if matches!(path, "/metrics" | "/healthz" | "/readyz") {
        "ops"
    } else {
        "ui"
    }
}

async fn observe(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let api = api_of(request.uri().path());
    let start = std::time::Instant::now();
    let response = next.run(request).await;
    let code = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    state.request_metrics.0.with_label_values(&[api, code]).observe(start.elapsed().as_secs_f64());
    response
}

/// Everything served on the UI port.
pub fn router(state: AppState) -> Router {
    ops::routes()
        .merge(native::routes())
        .merge(jaeger::routes())
        .merge(loki::routes())
        .merge(ui::routes())
        .merge(prometheus::routes())
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use obsbox_storage::MemStore;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn every_request_is_timed_by_api_and_status_class() {
        let state =
            AppState::new(Arc::new(MemStore::new()), ::prometheus::Registry::new(), Arc::new(AtomicBool::new(true)))
                .unwrap();
        let app = router(state);
        for path in ["/api/services", "/api/services", "/loki/api/v1/query_range?query=%7B", "/nope"] {
            app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        }
        let resp = app.oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
        let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(body.contains(r#"obsbox_query_duration_seconds_count{api="jaeger",code="2xx"} 2"#), "{body}");
        assert!(body.contains(r#"obsbox_query_duration_seconds_count{api="loki",code="4xx"} 1"#), "{body}");
        assert!(body.contains(r#"obsbox_query_duration_seconds_count{api="ui",code="4xx"} 1"#), "{body}");
    }

    #[test]
    fn paths_map_to_a_fixed_set_of_apis() {
        assert_eq!(api_of("/api/v1/traces"), "native");
        assert_eq!(api_of("/api/traces/abc"), "jaeger");
        assert_eq!(api_of("/loki/api/v1/labels"), "loki");
        assert_eq!(api_of("/prometheus/api/v1/query"), "prometheus");
        assert_eq!(api_of("/prometheus/metrics"), "exposition");
        assert_eq!(api_of("/readyz"), "ops");
        assert_eq!(api_of("/trace/abc"), "ui");
    }
}
