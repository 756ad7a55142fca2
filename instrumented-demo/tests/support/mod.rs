//! Shared helpers of the demo's integration tests: span capture with the SDK's in-memory exporter, and services
//! served in-process on free loopback ports.
#![allow(dead_code)]

use std::sync::OnceLock;

use obsbox_demo::services::ServiceContext;
use obsbox_demo::{ServiceConfig, ServiceName};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

struct Capture {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
}

static CAPTURE: OnceLock<Capture> = OnceLock::new();

/// Installs (once per test binary) a global `tracing` subscriber exporting spans to an in-memory exporter, and the
/// W3C propagator.
pub fn capture_spans() {
    CAPTURE.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let tracer = provider.tracer("obsbox-demo-test");
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info,h2=off,hyper=off,tonic=off,tower=off,reqwest=off"))
            .with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber per test binary");
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        Capture { exporter, provider }
    });
}

/// Every span finished so far.
pub fn spans() -> Vec<SpanData> {
    let capture = CAPTURE.get().expect("capture_spans() first");
    let _ = capture.provider.force_flush();
    capture.exporter.get_finished_spans().expect("in-memory exporter")
}

/// The value of attribute `key` of `span`, as a string.
pub fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

/// A service context for tests: loopback, data under `dir`, no registry.
pub fn context(name: ServiceName, dir: &std::path::Path) -> ServiceContext {
    context_with_broker(name, dir, None)
}

/// A service context for tests whose events go through the RabbitMQ at `amqp_url` (HTTP when `None`).
pub fn context_with_broker(name: ServiceName, dir: &std::path::Path, amqp_url: Option<&str>) -> ServiceContext {
    let mut cfg = ServiceConfig::for_test(dir.join(name.as_str()));
    cfg.instance = Some(name.as_str().to_owned());
    cfg.amqp_url = amqp_url.map(str::to_owned);
    ServiceContext::new(name, cfg).expect("test context")
}

/// Serves `routes` for `ctx` on a free loopback port (with the common layers); returns the base URL.
pub async fn serve(ctx: &ServiceContext, routes: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let ctx = ctx.clone();
    let task = tokio::spawn(async move {
        obsbox_demo::services::serve_on(&ctx, listener, routes, std::future::pending()).await.expect("serve");
    });
    (url, task)
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn eventually(timeout: std::time::Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
