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
//! - `limits`: [`QueryLimits`] (`[query]`), the checks every API runs and the router layer
//!   enforcing the time budget and the response size.
//! - [`internal`]: the internal read API between nodes (`POST /internal/v1/read`, a searcher
//!   asking an ingester for its not-yet-uploaded data) and its client.
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
pub mod internal;
mod jaeger;
mod limits;
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

pub use limits::QueryLimits;
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
    /// The token check of the UI port, when it requires one.
    auth: Option<obsbox_net::Guard>,
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
            auth: None,
        })
    }

    /// The same state applying `limits` to every query (`[query]`).
    pub fn with_limits(mut self, limits: QueryLimits) -> Self {
        self.query = QueryService::with_limits(self.reader.clone(), limits);
        self
    }

    /// The same state requiring one of `tokens` on every request but `/healthz` and `/readyz`:
    /// `Authorization: Bearer <token>`, or HTTP Basic with the token as password (any user), so
    /// browsers show their login prompt and Grafana datasources can use basic auth. Refusals are
    /// counted in `failures` with listener `http`.
    pub fn with_auth(mut self, tokens: obsbox_net::TokenSet, failures: &obsbox_net::AuthFailures) -> Self {
        let guard = failures.guard(tokens, "http", obsbox_net::Scheme::BearerOrBasic);
        self.auth = Some(guard.with_open_paths(&["/healthz", "/readyz"]));
        self
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

/// Everything served on the UI port. Every response, errors and 404s included, carries the
/// browser-safety headers (`nosniff`, no framing, a referrer policy, a CSP); with
/// [`AppState::with_auth`] every request but the health checks needs the token first.
pub fn router(state: AppState) -> Router {
    ops::routes()
        .merge(native::routes())
        .merge(jaeger::routes())
        .merge(loki::routes())
        .merge(ui::routes())
        .merge(prometheus::routes())
        .fallback(ui::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), limits::guard))
        .layer(obsbox_net::RequireTokenLayer::optional(state.auth.clone()))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(axum::middleware::map_response(ui::browser_safety))
        .with_state(state)
}

/// Serves [`router`] on `listener` (a bare `TcpListener` converts to a plain-text listener with
/// the default limits) until `shutdown` resolves.
pub async fn serve(
    listener: impl Into<obsbox_net::Listener>,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.into().serve(router(state), shutdown).await
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

    fn app_with_token(token: &str) -> (Router, ::prometheus::Registry) {
        let registry = ::prometheus::Registry::new();
        let failures = obsbox_net::AuthFailures::register(&registry).unwrap();
        let tokens = obsbox_net::TokenSet::new(&[obsbox_net::Token::new(token)]);
        let state = AppState::new(Arc::new(MemStore::new()), registry.clone(), Arc::new(AtomicBool::new(true)))
            .unwrap()
            .with_auth(tokens, &failures);
        (router(state), registry)
    }

    async fn call(app: &Router, path: &str, auth: Option<&str>) -> axum::response::Response {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        if let Some(a) = auth {
            req.headers_mut().insert(axum::http::header::AUTHORIZATION, a.parse().unwrap());
        }
        app.clone().oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn with_a_query_token_everything_but_health_checks_needs_it() {
        use axum::http::{StatusCode, header};
        let (app, registry) = app_with_token("q-t0ken");
        // "grafana:q-t0ken", "anyone:wrong", "q-t0ken" (no colon) in base64.
        let (basic_ok, basic_wrong, basic_no_user) =
            ("Basic Z3JhZmFuYTpxLXQwa2Vu", "Basic YW55b25lOndyb25n", "Basic cS10MGtlbg==");
        let paths = ["/services", "/api/v1/services", "/api/services", "/metrics", "/static/style.css", "/nope"];
        for path in paths {
            for auth in [None, Some("Bearer wrong"), Some(basic_wrong), Some(basic_no_user), Some("q-t0ken")] {
                let resp = call(&app, path, auth).await;
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path} {auth:?}");
                assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Basic realm=\"obsbox\", charset=\"UTF-8\"");
                assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, obsbox_net::REFUSAL_MESSAGE);
            }
            for auth in ["Bearer q-t0ken", basic_ok] {
                let resp = call(&app, path, Some(auth)).await;
                let expected = if path == "/nope" { StatusCode::NOT_FOUND } else { StatusCode::OK };
                assert_eq!(resp.status(), expected, "{path} {auth}");
            }
        }
        for path in ["/healthz", "/readyz"] {
            assert_eq!(call(&app, path, None).await.status(), StatusCode::OK, "{path} stays open for load balancers");
        }
        let resp = call(&app, "/metrics", Some("Bearer q-t0ken")).await;
        let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(body.contains("obsbox_auth_failures_total{listener=\"http\"} 30"), "{body}");
        drop(registry);
    }

    #[tokio::test]
    async fn every_response_carries_the_browser_safety_headers() {
        use axum::http::header;
        let state =
            AppState::new(Arc::new(MemStore::new()), ::prometheus::Registry::new(), Arc::new(AtomicBool::new(true)))
                .unwrap();
        let open = router(state);
        let (locked, _) = app_with_token("q-t0ken");
        let cases = [
            (&open, "/services", 200, true),
            (&open, "/static/style.css", 200, true),
            (&open, "/trace/zz", 400, true),
            (&open, "/no/such/page", 404, true),
            (&open, "/api/v1/services", 200, false),
            (&open, "/api/v1/traces/zz", 400, false),
            (&open, "/api/v1/nope", 404, false),
            (&open, "/loki/api/v1/query_range?query=%7B", 400, false),
            (&open, "/metrics", 200, false),
            (&open, "/healthz", 200, false),
            (&open, "/", 303, true),
            (&locked, "/services", 401, false),
        ];
        for (app, path, status, page) in cases {
            let resp = call(app, path, None).await;
            let h = resp.headers();
            assert_eq!(resp.status().as_u16(), status, "{path}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY", "{path}");
            assert_eq!(h[header::REFERRER_POLICY], "same-origin", "{path}");
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
            assert_eq!(csp.contains("script-src 'self'"), page, "{path}: pages keep the UI's CSP: {csp}");
        }
        let resp = call(&open, "/no/such/page", None).await;
        let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(body.contains("no page at this address"), "{body}");
        let resp = call(&open, "/api/v1/nope", None).await;
        let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(body.contains("\"error\""), "{body}");
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
