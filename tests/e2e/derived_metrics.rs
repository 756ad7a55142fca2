//! Spans in over OTLP/gRPC; after one derive interval the span metrics and service graph are in
//! the store under the names and attributes of `docs/derived-metrics.md`.

use crate::common;

use std::time::Duration;

use common::*;
use obsbox::storage::{LabelMatcher, MatchOp, MetricQuery, Reader, TimeRange};
use opentelemetry_proto::tonic::metrics::v1::{MetricsData, metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};

fn query(store: &obsbox::storage::DiskStore, name: &str, attrs: &[(&str, &str)]) -> MetricsData {
    let mut matchers = vec![LabelMatcher { name: "__name__".into(), op: MatchOp::Eq, value: name.into() }];
    matchers.extend(attrs.iter().map(|(k, v)| LabelMatcher { name: (*k).into(), op: MatchOp::Eq, value: (*v).into() }));
    store.find_metrics(&MetricQuery { matchers, time: TimeRange::ALL }).expect("find_metrics")
}

/// The newest value of the one series in `data` (a sum's value or a histogram's count).
fn latest(data: &MetricsData) -> Option<(f64, String)> {
    let m = data.resource_metrics.iter().flat_map(|rm| &rm.scope_metrics).flat_map(|sm| &sm.metrics).last()?;
    Some(match m.data.as_ref()? {
        metric::Data::Sum(s) => (
            match s.data_points.last()?.value? {
                number_data_point::Value::AsInt(v) => v as f64,
                number_data_point::Value::AsDouble(v) => v,
            },
            m.unit.clone(),
        ),
        metric::Data::Histogram(h) => (h.data_points.last()?.count as f64, m.unit.clone()),
        _ => return None,
    })
}

fn with(mut span: Span, kind: SpanKind, parent: &[u8], status: StatusCode) -> Span {
    span.kind = kind as i32;
    span.parent_span_id = parent.to_vec();
    span.status = Some(Status { code: status as i32, message: String::new() });
    span
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_become_red_metrics_and_service_graph_edges() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.derive.interval = Duration::from_secs(1);
    let obsbox = start_obsbox_with(config).await;
    let mut clients = grpc_clients(obsbox.otlp_grpc_addr().expect("an OTLP listener")).await;

    let t = now_ns();
    let mut frontend = Vec::new();
    let mut cart = Vec::new();
    for i in 0..5u64 {
        let trace = trace_id(1, i);
        let status = if i == 0 { StatusCode::Error } else { StatusCode::Unset };
        frontend.push(with(span(&trace, &span_id(10 + i), "GET /cart", t), SpanKind::Client, &[], StatusCode::Unset));
        cart.push(with(span(&trace, &span_id(20 + i), "GET /cart", t), SpanKind::Server, &span_id(10 + i), status));
        let mut db = with(span(&trace, &span_id(30 + i), "SELECT", t), SpanKind::Client, &span_id(20 + i), status);
        db.attributes.push(str_kv("db.system.name", "postgresql"));
        cart.push(db);
    }
    clients.traces.export(trace_request("frontend", frontend)).await.expect("export frontend");
    clients.traces.export(trace_request("cart", cart)).await.expect("export cart");

    let store = obsbox.store().expect("a local store");
    let found = blocking(move || {
        let ok = wait_until(Duration::from_secs(20), || {
            let select = [("service.name", "cart"), ("span.name", "SELECT"), ("status.code", "STATUS_CODE_UNSET")];
            latest(&query(&store, "traces.span.metrics.calls", &select)).is_some_and(|(v, _)| v == 4.0)
                && latest(&query(&store, "traces_service_graph_request_total", &[("server", "postgresql")]))
                    .is_some_and(|(v, _)| v == 5.0)
        });
        (ok, store)
    })
    .await;
    let (ok, store) = found;
    assert!(ok, "derived metrics did not appear");

    let calls = |service: &str, name: &str, kind: &str, status: &str| {
        let attrs = [("service.name", service), ("span.name", name), ("span.kind", kind), ("status.code", status)];
        latest(&query(&store, "traces.span.metrics.calls", &attrs))
    };
    assert_eq!(calls("cart", "GET /cart", "SPAN_KIND_SERVER", "STATUS_CODE_UNSET"), Some((4.0, "{call}".into())));
    assert_eq!(calls("cart", "GET /cart", "SPAN_KIND_SERVER", "STATUS_CODE_ERROR"), Some((1.0, "{call}".into())));
    assert_eq!(calls("frontend", "GET /cart", "SPAN_KIND_CLIENT", "STATUS_CODE_UNSET"), Some((5.0, "{call}".into())));
    let duration = query(&store, "traces.span.metrics.duration", &[("service.name", "frontend")]);
    assert_eq!(latest(&duration), Some((5.0, "ms".into())));
    let rm = &duration.resource_metrics[0];
    assert_eq!(rm.scope_metrics[0].scope.as_ref().unwrap().name, "obsbox.spanmetrics");
    assert_eq!(rm.resource.as_ref().unwrap().attributes, vec![str_kv("service.name", "frontend")]);

    let edge = |name: &str, client: &str, server: &str, conn: &str| {
        latest(&query(&store, name, &[("client", client), ("server", server), ("connection_type", conn)]))
            .map(|(v, _)| v)
    };
    // The frontend's spans were exported first: they waited for their servers, then paired.
    assert_eq!(edge("traces_service_graph_request_total", "frontend", "cart", ""), Some(5.0));
    assert_eq!(edge("traces_service_graph_request_failed_total", "frontend", "cart", ""), Some(1.0));
    assert_eq!(edge("traces_service_graph_request_total", "cart", "postgresql", "database"), Some(5.0));
    assert_eq!(edge("traces_service_graph_request_failed_total", "cart", "postgresql", "database"), Some(1.0));
    assert_eq!(edge("traces_service_graph_request_server_seconds", "frontend", "cart", ""), Some(5.0));
    assert_eq!(edge("traces_service_graph_request_client_seconds", "frontend", "cart", ""), Some(5.0));

    // The derive self-metrics are on /metrics.
    let body = reqwest::get(format!("http://{}/metrics", obsbox.http_addr())).await.unwrap().text().await.unwrap();
    assert!(body.contains("obsbox_derive_spans_total 15"), "{body}");
    obsbox.shutdown().await.unwrap();
}
