//! The Services, trace search, Logs and service map pages in headless Chromium (harness in
//! `tests/e2e/browser/mod.rs`), against an in-process obsbox filled over OTLP/gRPC. The derived
//! metrics the Services page and the map read are written into the store in the contract's shape.
//!
//! Screenshots land in `target/ui-screenshots/pages-*.png`.

use crate::browser;
use crate::common;

use std::time::{Duration, Instant};

use browser::{ShopTrace, UiTest};
use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use obsbox::storage::{Batch, LogPredicate, LogQuery, Reader, TimeRange, Writer};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::Value as Json;

const S: u64 = 1_000_000_000;

/// Waits until the store holds at least `n` records matching the text `word`.
async fn wait_for_log_text(ui: &UiTest, word: &str, n: usize) {
    let store = ui.store();
    let word = word.to_string();
    let ok = common::wait_until_async(Duration::from_secs(15), move || {
        let q = LogQuery {
            predicate: LogPredicate::Text(word.clone()),
            time: TimeRange { start_ns: 0, end_ns: u64::MAX },
            limit: n,
        };
        store.find_logs(&q).is_ok_and(|l| l.len() >= n)
    })
    .await;
    assert!(ok, "the logs were not searchable within 15 s");
}

fn record(body: &str, t: u64, severity: i32, text: &str) -> LogRecord {
    let mut r = common::log_record(body, t);
    r.severity_number = severity;
    r.severity_text = text.into();
    r
}

async fn count(ui: &UiTest, css: &str) -> usize {
    ui.find_all(css).await.len()
}

/// 40 records over the last 20 minutes, the first 20 in the older half; a click on the bar of the
/// newest records narrows the range to that bucket, and a drag across the older half narrows
/// it to about that half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_histogram_bars_and_drag_narrow_the_range() {
    let Some(ui) = UiTest::start().await else { return };
    let now = common::now_ns();
    let mut records = Vec::new();
    for i in 0..40u64 {
        let t = now - (20 * 60 - i * 29) * S;
        let (sev, text) = if i % 5 == 0 { (17, "ERROR") } else { (9, "INFO") };
        let service = if i % 2 == 0 { "checkout" } else { "payment" };
        records.push((service.to_string(), record(&format!("order {i} payment timeout"), t, sev, text)));
    }
    ui.send_logs(records).await;
    wait_for_log_text(&ui, "timeout", 40).await;

    ui.goto("/logs?query=timeout&range=30m").await;
    ui.wait_for("#histogram .bar").await;
    ui.assert_no_console_errors("logs page load").await;
    assert_eq!(ui.wait_for("#total").await.text().await.unwrap(), "40 records");
    assert_eq!(count(&ui, "details.log").await, 40);
    ui.screenshot("pages-logs").await;

    // Click the last (newest) bar: the URL gets its absolute bucket and the list narrows.
    let bars = ui.find_all("#histogram .bar").await;
    let last = bars.last().expect("bars").clone();
    let title = ui
        .js(
            "return document.querySelectorAll('#histogram .bar')[arguments[0]].textContent",
            vec![Json::from(bars.len() - 1)],
        )
        .await;
    let expected: usize = title.as_str().unwrap().split(' ').next().unwrap().parse().unwrap();
    last.click().await.expect("click the bar");
    let url = ui.wait_url("from=").await;
    assert!(url.contains("to=") && url.contains("query=timeout") && !url.contains("range="), "{url}");
    ui.wait_for("#total").await;
    let shown = count(&ui, "details.log").await;
    assert_eq!(shown, expected, "the bucket's records only");
    assert!(shown < 40);
    ui.screenshot("pages-logs-narrowed").await;

    // Back to the full range and drag across the left half of the plot.
    ui.goto("/logs?query=timeout&range=30m").await;
    let svg = ui.wait_for("#histogram").await;
    let (x, y, w, h) = svg.rectangle().await.expect("histogram box");
    let plot = |f: f64| (x + w * (50.0 + 945.0 * f) / 1000.0).round();
    let mid = (y + h / 2.0).round();
    let mouse = MouseActions::new("mouse".to_string())
        .then(PointerAction::MoveTo { duration: None, x: plot(0.05), y: mid })
        .then(PointerAction::Down { button: MOUSE_BUTTON_LEFT })
        .then(PointerAction::MoveTo { duration: Some(Duration::from_millis(200)), x: plot(0.5), y: mid })
        .then(PointerAction::Up { button: MOUSE_BUTTON_LEFT });
    ui.client().perform_actions(mouse).await.expect("drag across the histogram");
    let url = ui.wait_url("from=").await;
    ui.wait_for("#total").await;
    let dragged = count(&ui, "details.log").await;
    // the older 20 records lie in the first 9.7 minutes of the 30-minute range's last 20 minutes
    assert!(dragged > 0 && dragged < 40, "{dragged} records after dragging to {url}");
    let first = ui.wait_for("details.log .log-body").await.text().await.unwrap();
    assert!(first.contains("payment timeout"), "{first}");
    ui.screenshot("pages-logs-dragged").await;

    // Load more appends the next page in place.
    ui.goto("/logs?query=timeout&range=30m&limit=15").await;
    ui.wait_for("#load-more").await.click().await.expect("load more");
    ui.wait_js("document.querySelectorAll('details.log').length === 30", "30 records after one load more").await;
    assert_eq!(ui.current_path().await, "/logs?query=timeout&range=30m&limit=15", "the page stays");
    ui.wait_for("#load-more").await.click().await.expect("load more again");
    ui.wait_js("document.querySelectorAll('details.log').length === 40", "all 40 records").await;
    ui.wait_gone("#load-more").await;
    let bodies =
        ui.js("return [...document.querySelectorAll('details.log .log-body')].map(b => b.textContent)", vec![]).await;
    let bodies: Vec<&str> = bodies.as_array().unwrap().iter().map(|b| b.as_str().unwrap()).collect();
    let expected: Vec<String> = (0..40).rev().map(|i| format!("order {i} payment timeout")).collect();
    assert_eq!(bodies, expected, "newest first, no record twice");

    // A facet adds its clause to the query.
    ui.wait_for("#facet-services a[title='add service:payment']").await.click().await.unwrap();
    let url = ui.wait_url("service%3Apayment").await;
    assert!(url.contains("query=timeout+service%3Apayment"), "{url}");
    ui.assert_no_console_errors("logs interactions").await;
    ui.finish().await;
}

/// Trace search by service: the result row and the scatter plot's dot both open the trace view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_search_results_open_the_trace_view() {
    let Some(ui) = UiTest::start().await else { return };
    let shop = ShopTrace::new(common::trace_id(7, 7), common::now_ns() - 120 * S, false);
    shop.send(&ui).await;
    let id = shop.hex();

    ui.goto("/search?service=payment&range=1h").await;
    let link = ui.wait_for("#results a.trace-link").await;
    ui.assert_no_console_errors("search page load").await;
    assert_eq!(count(&ui, "#results a.trace-link").await, 1);
    assert_eq!(count(&ui, "svg.scatter circle.dot.err").await, 1, "the trace has an error");
    let row = ui.wait_for("#results tbody tr").await.text().await.unwrap();
    assert!(row.contains("GET /checkout") && row.contains("frontend"), "{row}");
    ui.screenshot("pages-search").await;
    link.click().await.expect("open the trace");
    let url = ui.wait_url("/trace/").await;
    assert_eq!(url, format!("/trace/{id}"));

    // The dot opens the same trace.
    ui.goto("/search?service=payment&range=1h").await;
    ui.wait_for("svg.scatter circle.dot").await.click().await.expect("click the dot");
    let url = ui.wait_url("/trace/").await;
    assert_eq!(url, format!("/trace/{id}"));

    // The filter expression autocompletes keys from the attribute API.
    ui.goto("/search?range=1h").await;
    let filter = ui.wait_for("#f-filter").await;
    filter.send_keys("cart.it").await.unwrap();
    ui.wait_js(
        "[...document.querySelectorAll('#dl-filter option')].some(o => o.value === 'cart.items = ')",
        "key completion in the filter datalist",
    )
    .await;
    // The form's state survives submission in the URL.
    ui.goto("/search?service=payment&status=error&range=1h&sort=longest").await;
    ui.wait_for("#search-form button[type=submit]").await.click().await.unwrap();
    let url = ui.wait_url("status=error").await;
    assert!(url.contains("service=payment") && url.contains("sort=longest"), "{url}");
    assert_eq!(count(&ui, "#results a.trace-link").await, 1);
    ui.assert_no_console_errors("search interactions").await;
    ui.finish().await;
}

/// Live tail: a record written after the page loaded appears at the top within seconds; pause
/// stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tail_shows_records_written_after_page_load() {
    let Some(ui) = UiTest::start().await else { return };
    let now = common::now_ns();
    ui.send_logs(vec![("tailer".to_string(), record("tailtest old record", now - 30 * S, 9, "INFO"))]).await;
    wait_for_log_text(&ui, "tailtest", 1).await;

    ui.goto("/logs?query=tailtest&range=15m").await;
    ui.wait_for("details.log").await;
    let button = ui.wait_for("#live").await;
    button.click().await.expect("start the live tail");
    ui.wait_js("document.getElementById('live').getAttribute('aria-pressed') === 'true'", "live on").await;

    let fresh = "tailtest fresh record <b>not bold</b>";
    ui.send_logs(vec![("tailer".to_string(), record(fresh, common::now_ns(), 17, "ERROR"))]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let top = loop {
        let top = ui.wait_for("details.log .log-body").await.text().await.unwrap();
        if top == fresh {
            break top;
        }
        assert!(Instant::now() < deadline, "the new record never appeared; top is {top:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(top, fresh, "markup in a body stays text");
    assert_eq!(count(&ui, "details.log").await, 2, "appended once, the old record kept");
    assert_eq!(count(&ui, "details.log .log-body b").await, 0);
    let class = ui.wait_for("details.log").await.attr("class").await.unwrap().unwrap_or_default();
    assert!(class.contains("sev-row-error"), "{class}");
    ui.screenshot("pages-logs-live").await;

    // Pause: later records are not appended.
    button.click().await.unwrap();
    ui.wait_js("document.getElementById('live').getAttribute('aria-pressed') === 'false'", "live off").await;
    ui.send_logs(vec![("tailer".to_string(), record("tailtest after pause", common::now_ns(), 9, "INFO"))]).await;
    wait_for_log_text(&ui, "pause", 1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count(&ui, "details.log").await, 2, "paused");
    ui.assert_no_console_errors("live tail").await;
    ui.finish().await;
}

fn kv(k: &str, v: &str) -> opentelemetry_proto::tonic::common::v1::KeyValue {
    common::str_kv(k, v)
}

fn point(attrs: &[(&str, &str)], start: u64, t: u64, v: i64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs.iter().map(|(k, v)| kv(k, v)).collect(),
        start_time_unix_nano: start,
        time_unix_nano: t,
        value: Some(number_data_point::Value::AsInt(v)),
        ..Default::default()
    }
}

fn counter(name: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        data: Some(Data::Sum(Sum { data_points: points, aggregation_temporality: 2, is_monotonic: true })),
        ..Default::default()
    }
}

/// Contract-shaped span metrics and service graph for the shop's services: emitted every 15 s
/// for the last 30 minutes, with traffic that varies over time (for the sparklines).
fn shop_metrics(now: u64) -> ExportMetricsServiceRequest {
    const BOUNDS: [f64; 16] =
        [2., 4., 6., 8., 10., 50., 100., 200., 400., 800., 1000., 1400., 2000., 5000., 10000., 15000.];
    let start = now - 1800 * S;
    let ops: [(&str, &str, i64, i64, usize); 4] = [
        ("frontend", "GET /checkout", 20, 1, 7),
        ("cart", "POST /cart", 15, 0, 5),
        ("payment", "POST /pay", 8, 2, 8),
        ("checkout <b>", "GET /health", 2, 0, 3),
    ];
    let mut resource_metrics = Vec::new();
    for (service, op, per_tick, errors_per_tick, bucket) in ops {
        let (mut calls, mut hist) = (Vec::new(), Vec::new());
        let (mut c, mut e) = (0i64, 0i64);
        for k in 0..120u64 {
            let t = start + 15 * S * (k + 1);
            // a wave, so sparklines have a shape
            c += per_tick + (per_tick * ((k as i64 / 10) % 3)) / 2;
            e += errors_per_tick * ((k as i64 / 20) % 2);
            let dims = |status| {
                vec![
                    ("service.name", service),
                    ("span.name", op),
                    ("span.kind", "SPAN_KIND_SERVER"),
                    ("status.code", status),
                ]
            };
            calls.push(point(&dims("STATUS_CODE_UNSET"), start, t, c - e));
            calls.push(point(&dims("STATUS_CODE_ERROR"), start, t, e));
            let mut buckets = vec![0u64; 17];
            buckets[bucket] = (c as u64) * 3 / 4;
            buckets[bucket + 1] = c as u64 - buckets[bucket];
            hist.push(HistogramDataPoint {
                attributes: dims("STATUS_CODE_UNSET").iter().map(|(k, v)| kv(k, v)).collect(),
                start_time_unix_nano: start,
                time_unix_nano: t,
                count: c as u64,
                bucket_counts: buckets,
                explicit_bounds: BOUNDS.to_vec(),
                ..Default::default()
            });
        }
        resource_metrics.push(ResourceMetrics {
            resource: Some(common::resource(service)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope { name: "obsbox.spanmetrics".into(), ..Default::default() }),
                metrics: vec![
                    counter("traces.span.metrics.calls", calls),
                    Metric {
                        name: "traces.span.metrics.duration".into(),
                        unit: "ms".into(),
                        data: Some(Data::Histogram(Histogram { data_points: hist, aggregation_temporality: 2 })),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    let edges: [(&str, &str, &str, i64, i64); 5] = [
        ("frontend", "cart", "", 15, 0),
        ("frontend", "payment", "", 8, 2),
        ("payment", "fraud", "", 8, 0),
        ("cart", "redis", "database", 30, 0),
        ("loadgen", "frontend", "", 40, 1),
    ];
    let (mut total, mut failed) = (Vec::new(), Vec::new());
    for (client, server, ct, per_tick, err) in edges {
        let attrs = [("client", client), ("server", server), ("connection_type", ct)];
        for k in 0..120i64 {
            let t = start + 15 * S * (k as u64 + 1);
            total.push(point(&attrs, start, t, per_tick * (k + 1)));
            failed.push(point(&attrs, start, t, err * (k + 1)));
        }
    }
    resource_metrics.push(ResourceMetrics {
        resource: Some(Resource::default()),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(InstrumentationScope { name: "obsbox.servicegraph".into(), ..Default::default() }),
            metrics: vec![
                counter("traces_service_graph_request_total", total),
                counter("traces_service_graph_request_failed_total", failed),
            ],
            ..Default::default()
        }],
        ..Default::default()
    });
    ExportMetricsServiceRequest { resource_metrics }
}

/// The Services page and the service map over contract-shaped metrics: figures, sparklines,
/// sorting by a column, a click through to the traces and from a map node to its service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_map_pages_render_the_derived_metrics() {
    let Some(ui) = UiTest::start().await else { return };
    let shop = ShopTrace::new(common::trace_id(8, 8), common::now_ns() - 60 * S, false);
    shop.send(&ui).await;
    ui.store().write(Batch::Metrics(shop_metrics(common::now_ns()))).await.expect("write the metrics");

    ui.goto("/services?range=1h").await;
    ui.wait_for("table.services svg.spark polyline").await;
    ui.assert_no_console_errors("services page").await;
    let text = ui.wait_for("table.services").await.text().await.unwrap();
    assert!(text.contains("POST /pay") && text.contains("checkout <b>"), "{text}");
    ui.screenshot("pages-services").await;
    // sort by p99, descending: payment (bucket 8, the slowest) first
    ui.wait_for("table.services th a[href*='sort=p99']").await.click().await.unwrap();
    ui.wait_url("sort=p99").await;
    let first = ui.wait_for("table.services tr.group td a").await.text().await.unwrap();
    assert_eq!(first, "payment");
    ui.wait_for("table.services tr.op a[href*='operation=POST+%2Fpay']").await.click().await.unwrap();
    let url = ui.wait_url("/search").await;
    assert!(url.contains("service=payment") && url.contains("operation=POST+%2Fpay"), "{url}");
    ui.wait_for("#results a.trace-link").await;

    ui.goto("/map?range=1h").await;
    ui.wait_for("svg.service-map path.edge").await;
    ui.assert_no_console_errors("map page").await;
    assert_eq!(count(&ui, "svg.service-map a.node").await, 6);
    assert_eq!(count(&ui, "svg.service-map path.edge").await, 5);
    assert_eq!(count(&ui, "svg.service-map path.edge.err").await, 1, "frontend -> payment fails 25%");
    ui.screenshot("pages-map").await;
    let node = ui.find_all("svg.service-map a.node").await.into_iter().next().expect("a node");
    node.click().await.expect("click a node");
    ui.wait_url("/services?range=1h&service=").await;
    ui.finish().await;
}
