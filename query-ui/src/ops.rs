//! Operational endpoints: liveness, readiness and self-metrics.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, IntGaugeVec, Opts, TextEncoder};

use crate::AppState;

/// Store gauges, refreshed from [`obsbox_storage::Reader::stats`] at each scrape.
pub struct StoreMetrics {
    wal_bytes: prometheus::IntGauge,
    index_bytes: IntGaugeVec,
    queue_items: IntGaugeVec,
    segments: IntGaugeVec,
    commits: prometheus::IntGauge,
    commit_seconds: prometheus::Gauge,
    damaged_files: prometheus::IntCounter,
    disk_full: prometheus::IntGauge,
    trace_filter_bytes: prometheus::IntGauge,
}

impl StoreMetrics {
    /// Creates the gauges and registers them.
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let m = StoreMetrics {
            wal_bytes: prometheus::IntGauge::new("obsbox_store_wal_bytes", "Bytes of write-ahead log on disk")?,
            index_bytes: IntGaugeVec::new(
                Opts::new("obsbox_store_index_bytes", "Bytes of indexes and stored data on disk"),
                &["signal"],
            )?,
            queue_items: IntGaugeVec::new(
                Opts::new(
                    "obsbox_store_queue_items",
                    "Items acknowledged and not yet searchable: queued for indexing, or indexed and waiting for the next commit",
                ),
                &["signal"],
            )?,
            segments: IntGaugeVec::new(
                Opts::new("obsbox_store_segments", "Immutable segments or blocks"),
                &["signal"],
            )?,
            commits: prometheus::IntGauge::new("obsbox_store_index_commits", "Index commits since start")?,
            commit_seconds: prometheus::Gauge::new(
                "obsbox_store_index_commit_seconds",
                "Time spent in index commits since start (divide by commits for the mean latency)",
            )?,
            damaged_files: prometheus::IntCounter::new(
                "obsbox_store_damaged_files_total",
                "Damaged store files found since start: set aside in a quarantine/ directory or skipped",
            )?,
            disk_full: prometheus::IntGauge::new(
                "obsbox_store_disk_full",
                "1 while writes are refused because the data directory's disk is full (or below storage.min_free_bytes)",
            )?,
            trace_filter_bytes: prometheus::IntGauge::new(
                "obsbox_store_trace_filter_bytes",
                "Memory held by the trace-id filters that let a trace lookup skip index segments",
            )?,
        };
        registry.register(Box::new(m.wal_bytes.clone()))?;
        registry.register(Box::new(m.index_bytes.clone()))?;
        registry.register(Box::new(m.queue_items.clone()))?;
        registry.register(Box::new(m.segments.clone()))?;
        registry.register(Box::new(m.commits.clone()))?;
        registry.register(Box::new(m.commit_seconds.clone()))?;
        registry.register(Box::new(m.damaged_files.clone()))?;
        registry.register(Box::new(m.disk_full.clone()))?;
        registry.register(Box::new(m.trace_filter_bytes.clone()))?;
        Ok(m)
    }

    fn refresh(&self, stats: &obsbox_storage::StoreStats) {
        self.wal_bytes.set(stats.wal_bytes as i64);
        for (s, v) in &stats.index_bytes {
            self.index_bytes.with_label_values(&[s.as_str()]).set(*v as i64);
        }
        for (s, v) in &stats.pending_items {
            self.queue_items.with_label_values(&[s.as_str()]).set(*v as i64);
        }
        for (s, v) in &stats.segments {
            self.segments.with_label_values(&[s.as_str()]).set(*v as i64);
        }
        self.commits.set(stats.commits as i64);
        self.commit_seconds.set(stats.commit_seconds);
        // The store's count only grows; the counter follows it.
        let seen = self.damaged_files.get();
        if stats.damaged_files > seen {
            self.damaged_files.inc_by(stats.damaged_files - seen);
        }
        self.disk_full.set(i64::from(stats.disk_full));
        self.trace_filter_bytes.set(stats.trace_filter_bytes as i64);
    }
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.store_metrics.refresh(&state.reader.stats());
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&state.registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics failed");
        return (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], Vec::new());
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use obsbox_storage::{Batch, MemStore, Writer};
    use tower::ServiceExt;

    use super::*;

    async fn app(ready: bool) -> Router {
        let store = Arc::new(MemStore::new());
        store.write(Batch::Logs(Default::default())).await.unwrap();
        let state = AppState::new(store, prometheus::Registry::new(), Arc::new(AtomicBool::new(ready))).unwrap();
        crate::router(state)
    }

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let resp = app.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn health_and_readiness() {
        assert_eq!(get(app(false).await, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(app(false).await, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(app(true).await, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_include_store_gauges() {
        let (status, body) = get(app(true).await, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("obsbox_store_queue_items{signal=\"traces\"} 0"), "{body}");
        assert!(body.contains("obsbox_store_wal_bytes"), "{body}");
        assert!(body.contains("obsbox_store_damaged_files_total 0"), "{body}");
        assert!(body.contains("obsbox_store_disk_full 0"), "{body}");
    }
}
