//! HTTP instrumentation: server spans and request-duration metrics for axum, client spans and
//! context propagation for reqwest, request ids.
//!
//! Hand-written rather than `axum-tracing-opentelemetry` / `reqwest-tracing`: those pin other
//! versions of reqwest and of the OpenTelemetry crates than this workspace uses, and the server
//! span needs `server.address` and the request-id handling below. Attribute names follow the
//! OpenTelemetry HTTP semantic conventions.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use opentelemetry::propagation::{Extractor, Injector};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The request-id header, taken from the request or made up, echoed in the response and sent on
/// every call made while serving it.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT_REQUEST_ID: String;
}

/// The request id of the request being served by this task, if any.
pub fn current_request_id() -> Option<String> {
    CURRENT_REQUEST_ID.try_with(|id| id.clone()).ok()
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(k, v);
        }
    }
}

/// The parent context carried by `headers` (W3C `traceparent`/`tracestate`), for a server span.
pub fn extract_context(headers: &HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes the current span's context into `headers` (W3C `traceparent`/`tracestate`).
pub fn inject_context(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

fn server_duration() -> &'static Histogram<f64> {
    static H: OnceLock<Histogram<f64>> = OnceLock::new();
    H.get_or_init(|| {
        crate::telemetry::meter()
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_description("Duration of HTTP server requests")
            .with_boundaries(vec![0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0])
            .build()
    })
}

fn client_duration() -> &'static Histogram<f64> {
    static H: OnceLock<Histogram<f64>> = OnceLock::new();
    H.get_or_init(|| {
        crate::telemetry::meter()
            .f64_histogram("http.client.request.duration")
            .with_unit("s")
            .with_description("Duration of HTTP client requests")
            .build()
    })
}

/// axum middleware (`Router::route_layer(axum::middleware::from_fn(http::server_span))`): one
/// SERVER span per request named `METHOD /route`, child of the caller's context, with
/// `http.request.method`, `url.path`, `http.route`, `server.address`, `http.response.status_code`
/// and status ERROR on 5xx; records `http.server.request.duration`; takes or makes `x-request-id`.
pub async fn server_span(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let route_or_path = route.clone().unwrap_or_else(|| req.uri().path().to_owned());
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host).to_owned())
        .unwrap_or_default();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{method} {route_or_path}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        url.path = %req.uri().path(),
        url.scheme = "http",
        http.route = route.as_deref().unwrap_or(""),
        server.address = %host,
        http.response.status_code = tracing::field::Empty,
        request.id = %request_id,
    );
    let _ = span.set_parent(extract_context(req.headers()));
    let mut response = CURRENT_REQUEST_ID.scope(request_id.clone(), next.run(req).instrument(span.clone())).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    if let Ok(v) = HeaderValue::try_from(request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    let mut attrs = vec![
        KeyValue::new("http.request.method", method),
        KeyValue::new("http.response.status_code", i64::from(status)),
        KeyValue::new("url.scheme", "http"),
    ];
    if let Some(route) = route {
        attrs.push(KeyValue::new("http.route", route));
    }
    if status >= 500 {
        attrs.push(KeyValue::new("error.type", status.to_string()));
    }
    server_duration().record(start.elapsed().as_secs_f64(), &attrs);
    response
}

fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// An HTTP client whose every call is a CLIENT span (child of the current span) that carries
/// `traceparent` and the current `x-request-id` to the server.
#[derive(Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new(Duration::from_secs(10))
    }
}

impl HttpClient {
    /// A client whose calls time out after `timeout`.
    pub fn new(timeout: Duration) -> HttpClient {
        let inner = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client without tls builds");
        HttpClient { inner }
    }

    /// The uninstrumented client, to build requests with (`client.raw().get(url)`) and for calls
    /// that must not be traced (heartbeats).
    pub fn raw(&self) -> &reqwest::Client {
        &self.inner
    }

    /// Sends `request` in a CLIENT span named `METHOD` (or `METHOD template` when `template`, the
    /// route on the server, is given), with `http.request.method`, `url.full`, `server.address`,
    /// `server.port`, `http.response.status_code`; status ERROR on a failure or a 5xx answer.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        template: Option<&str>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut request = request.build()?;
        let method = request.method().as_str().to_owned();
        let url = request.url().clone();
        let name = match template {
            Some(t) => format!("{method} {t}"),
            None => method.clone(),
        };
        let span = tracing::info_span!(
            "http.client",
            otel.name = %name,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = %method,
            url.full = %url,
            url.template = template.unwrap_or(""),
            server.address = url.host_str().unwrap_or(""),
            server.port = url.port_or_known_default().unwrap_or(0),
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        {
            let _enter = span.enter();
            inject_context(request.headers_mut());
        }
        if let Some(id) = current_request_id()
            && let Ok(v) = HeaderValue::try_from(id)
        {
            request.headers_mut().insert(REQUEST_ID, v);
        }
        let start = Instant::now();
        let result = self.inner.execute(request).instrument(span.clone()).await;
        let mut attrs = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("server.address", url.host_str().unwrap_or("").to_owned()),
        ];
        match &result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                span.record("http.response.status_code", status);
                attrs.push(KeyValue::new("http.response.status_code", i64::from(status)));
                if status >= 500 {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", status.to_string());
                }
            }
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "request"
                };
                span.record("otel.status_code", "ERROR");
                span.record("error.type", kind);
                attrs.push(KeyValue::new("error.type", kind));
            }
        }
        client_duration().record(start.elapsed().as_secs_f64(), &attrs);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use opentelemetry::trace::{SpanKind, Status, TraceContextExt, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
    use tracing_subscriber::layer::SubscriberExt;

    fn attr(span: &SpanData, key: &str) -> Option<String> {
        span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
    }

    /// Serves a router with the server-span layer and calls it through [`HttpClient`] inside a
    /// parent span; returns the finished spans and the parent's trace id.
    #[tokio::test]
    async fn server_and_client_spans_follow_the_conventions_and_share_the_trace() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _default = tracing::subscriber::set_default(subscriber);
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());

        let app = axum::Router::new()
            .route("/items/{id}", get(|| async { current_request_id().unwrap_or_default() }))
            .route("/boom", get(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }))
            .route_layer(axum::middleware::from_fn(server_span));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let client = HttpClient::default();
        let parent = tracing::info_span!("parent");
        let trace_id = parent.context().span().span_context().trace_id();
        let (echoed, header, boom) = async {
            let req = client.raw().get(format!("http://{addr}/items/42")).header(REQUEST_ID, "req-1");
            let resp = client.send(req, Some("/items/{id}")).await.unwrap();
            let header = resp.headers().get(REQUEST_ID).map(|v| v.to_str().unwrap().to_owned());
            let echoed = resp.text().await.unwrap();
            let boom = client.send(client.raw().get(format!("http://{addr}/boom")), None).await.unwrap().status();
            (echoed, header, boom)
        }
        .instrument(parent.clone())
        .await;
        drop(parent);
        assert_eq!(echoed, "req-1", "the handler sees the caller's request id");
        assert_eq!(header.as_deref(), Some("req-1"));
        assert_eq!(boom, 500);

        let spans = exporter.get_finished_spans().unwrap();
        let find = |name: &str, kind: SpanKind| {
            spans.iter().find(|s| s.name == name && s.span_kind == kind).unwrap_or_else(|| {
                panic!("no {kind:?} span {name}: {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>())
            })
        };
        let server = find("GET /items/{id}", SpanKind::Server);
        let client_span = find("GET /items/{id}", SpanKind::Client);
        assert_eq!(server.span_context.trace_id(), trace_id, "server span joins the caller's trace");
        assert_eq!(server.parent_span_id, client_span.span_context.span_id(), "server span is the client span's child");
        assert_eq!(attr(server, "http.request.method").as_deref(), Some("GET"));
        assert_eq!(attr(server, "http.route").as_deref(), Some("/items/{id}"));
        assert_eq!(attr(server, "url.path").as_deref(), Some("/items/42"));
        assert_eq!(attr(server, "server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(attr(server, "http.response.status_code").as_deref(), Some("200"));
        assert_eq!(attr(client_span, "url.full"), Some(format!("http://{addr}/items/42")));
        assert_eq!(attr(client_span, "server.port"), Some(addr.port().to_string()));
        assert_eq!(server.status, Status::Unset);

        let boom_server = find("GET /boom", SpanKind::Server);
        assert!(matches!(boom_server.status, Status::Error { .. }), "{:?}", boom_server.status);
        assert_eq!(attr(boom_server, "http.response.status_code").as_deref(), Some("500"));
        let boom_client = find("GET", SpanKind::Client);
        assert!(matches!(boom_client.status, Status::Error { .. }));
        assert_eq!(attr(boom_client, "error.type").as_deref(), Some("500"));
    }
}
