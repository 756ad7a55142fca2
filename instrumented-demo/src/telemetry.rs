//! The OpenTelemetry SDK of a demo process: traces, logs and metrics over OTLP/gRPC.
//!
//! Spans are `tracing` spans turned into OpenTelemetry spans by `tracing-opentelemetry` (fields
//! `otel.name`, `otel.kind`, `otel.status_code` set the span's name, kind and status; other fields
//! become attributes). `tracing` events become OTLP log records through
//! `opentelemetry-appender-tracing`; entering a span activates its OpenTelemetry context, so every
//! record carries the trace and span id of the span it was emitted in. Metrics use the global meter
//! provider ([`meter`]). The exporters read the standard `OTEL_EXPORTER_OTLP_*` variables (default
//! `http://localhost:4317`), the metric reader `OTEL_METRIC_EXPORT_INTERVAL`; the propagator is W3C
//! trace context.

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::{Error, Result};

/// Instrumentation scope name of the demo's meters and tracers.
pub const SCOPE: &str = "obsbox-demo";

/// Keeps the SDK's providers alive; flushes and shuts them down when dropped or on [`Guard::shutdown`].
///
/// Drop it inside the tokio runtime (the gRPC exporters need it to send their last batch).
pub struct Guard {
    providers: Option<(SdkTracerProvider, SdkLoggerProvider, SdkMeterProvider)>,
}

impl Guard {
    /// Flushes every signal and shuts the providers down, off the async threads.
    pub async fn shutdown(mut self) {
        if let Some(p) = self.providers.take() {
            let _ = tokio::task::spawn_blocking(move || shutdown(p)).await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.providers.take() {
            shutdown(p);
        }
    }
}

fn shutdown((tracer, logger, meter): (SdkTracerProvider, SdkLoggerProvider, SdkMeterProvider)) {
    // Spans first: their end may still log. Errors here have nowhere useful to go.
    let _ = tracer.force_flush();
    let _ = meter.force_flush();
    let _ = logger.force_flush();
    let _ = tracer.shutdown();
    let _ = meter.shutdown();
    let _ = logger.shutdown();
}

/// The resource of a demo process: `service.name` from `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES`, else `service_name`; `service.instance.id` and
/// `deployment.environment.name` from `OTEL_RESOURCE_ATTRIBUTES`, else `instance` and `environment`.
pub fn resource(service_name: &str, instance: &str, environment: &str) -> Resource {
    let detected = Resource::builder().build();
    let has = |key: &'static str| detected.get(&opentelemetry::Key::from_static_str(key)).is_some();
    let mut builder = Resource::builder();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    if !named {
        builder = builder.with_service_name(service_name.to_owned());
    }
    if !has("service.instance.id") {
        builder = builder.with_attribute(KeyValue::new("service.instance.id", instance.to_owned()));
    }
    if !has("deployment.environment.name") {
        builder = builder.with_attribute(KeyValue::new("deployment.environment.name", environment.to_owned()));
    }
    builder.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))).build()
}

/// Sets up the SDK (exporters, global tracer and meter providers, propagator) and the `tracing`
/// subscriber (stderr plus OpenTelemetry; filter from `OBSBOX_DEMO_LOG`, default `info`).
/// Call once per process, inside a tokio runtime.
pub fn init(service_name: &str, instance: &str, environment: &str) -> Result<Guard> {
    let resource = resource(service_name, instance, environment);
    let err = |e: opentelemetry_otlp::ExporterBuildError| Error::Telemetry(e.to_string());
    let spans = opentelemetry_otlp::SpanExporter::builder().with_tonic().build().map_err(err)?;
    let logs = opentelemetry_otlp::LogExporter::builder().with_tonic().build().map_err(err)?;
    let metrics = opentelemetry_otlp::MetricExporter::builder().with_tonic().build().map_err(err)?;

    let tracer_provider =
        SdkTracerProvider::builder().with_batch_exporter(spans).with_resource(resource.clone()).build();
    let logger_provider =
        SdkLoggerProvider::builder().with_batch_exporter(logs).with_resource(resource.clone()).build();
    let meter_provider = SdkMeterProvider::builder().with_periodic_exporter(metrics).with_resource(resource).build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());
    opentelemetry::global::set_meter_provider(meter_provider.clone());

    // The exporters' own logs (tonic, h2, hyper) must not become records to export: a loop.
    let quiet = "opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off,tonic=off,h2=off,hyper=off,hyper_util=off,tower=off,reqwest=off";
    let filter = |default: &str| {
        let base = std::env::var("OBSBOX_DEMO_LOG").unwrap_or_else(|_| default.to_owned());
        EnvFilter::new(format!("{base},{quiet}"))
    };
    let tracer = tracer_provider.tracer(SCOPE);
    tracing_subscriber::registry()
        // Thread names and ids on every span only add bytes; code locations stay (they help).
        .with(tracing_opentelemetry::layer().with_tracer(tracer).with_threads(false).with_filter(filter("info")))
        .with(OpenTelemetryTracingBridge::new(&logger_provider).with_filter(filter("info")))
        .with(
            tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false).with_filter(filter("info")),
        )
        .try_init()
        .map_err(|e| Error::Telemetry(format!("tracing subscriber: {e}")))?;
    Ok(Guard { providers: Some((tracer_provider, logger_provider, meter_provider)) })
}

/// The demo's meter (from the global provider [`init`] set).
pub fn meter() -> opentelemetry::metrics::Meter {
    opentelemetry::global::meter(SCOPE)
}
