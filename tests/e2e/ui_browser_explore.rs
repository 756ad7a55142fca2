//! The metrics explorer (`/explore`) in headless Chromium (harness in `tests/e2e/browser/mod.rs`):
//! pick a counter from the searchable list, group it by a label, see one line per group with a
//! legend, and hover the chart for a tooltip listing each series' value. Metrics are written into
//! the running obsbox's store as OTLP metrics.
//!
//! Screenshots land in `target/ui-screenshots/explore*.png`.

use crate::browser;
use crate::common;

use std::time::Duration;

use browser::UiTest;
use fantoccini::actions::{InputSource, MouseActions, PointerAction};
use obsbox::storage::{Batch, Reader, Writer};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

const S: u64 = 1_000_000_000;

/// `requests` counts 1, 2 and 3 per second on routes `/a`, `/b` and `/c`, each split over two
/// pods, in points 15 s apart over the last 10 minutes.
fn requests(now: u64) -> ExportMetricsServiceRequest {
    let start = now - 700 * S;
    let mut points = Vec::new();
    for (route, per_s) in [("/a", 1i64), ("/b", 2), ("/c", 3)] {
        for pod in ["pod-1", "pod-2"] {
            for i in 0..40u64 {
                let t = now - (39 - i) * 15 * S;
                points.push(NumberDataPoint {
                    attributes: vec![common::str_kv("http.route", route), common::str_kv("pod", pod)],
                    start_time_unix_nano: start,
                    time_unix_nano: t,
                    value: Some(number_data_point::Value::AsInt(per_s * ((t - start) / S) as i64)),
                    ..Default::default()
                });
            }
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: vec![common::str_kv("service.name", "shop")], ..Default::default() }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "requests".into(),
                    unit: "1".into(),
                    description: "requests served".into(),
                    data: Some(Data::Sum(Sum { data_points: points, aggregation_temporality: 2, is_monotonic: true })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explore_groups_a_counter_by_route_and_shows_hover_values() {
    let Some(ui) = UiTest::start().await else { return };
    let store = ui.store();
    store.write(Batch::Metrics(requests(common::now_ns()))).await.expect("write the metrics");
    let indexed = common::wait_until_async(Duration::from_secs(10), move || {
        store.stats().pending_items.iter().all(|(_, n)| *n == 0)
    })
    .await;
    assert!(indexed, "the store did not take the metrics within 10 s");

    // the nav leads to the page; the picker lists the counter with its type
    ui.goto("/services").await;
    ui.wait_for("header nav a[href='/explore']").await.click().await.expect("click Metrics");
    ui.wait_url("/explore").await;
    ui.goto("/explore?range=15m").await;
    ui.wait_for("datalist#metric-names option[value='requests_total']").await;
    let label =
        ui.js("return document.querySelector(\"#metric-names option[value='requests_total']\").label", vec![]).await;
    assert_eq!(label.as_str(), Some("counter"));
    ui.assert_no_console_errors("explore page load").await;

    // pick the metric: one line (sum of the rates)
    let input = ui.wait_for("input[name='metric']").await;
    input.send_keys("requests_total").await.expect("type the metric");
    ui.wait_for("form.explore-form button.primary").await.click().await.expect("submit");
    ui.wait_url("metric=requests_total").await;
    ui.wait_for("svg#explore-chart path.series").await;
    assert_eq!(ui.find_all("svg#explore-chart path.series").await.len(), 1);
    let expr = ui.js("return document.querySelector(\"textarea[name='expr']\").value", vec![]).await;
    assert_eq!(expr.as_str(), Some("sum(rate(requests_total[5m]))"));

    // group by route: one line per route, the legend lists them with their last value
    ui.wait_for("input[name='by'][value='http_route']").await.click().await.expect("check http_route");
    ui.wait_for("form.explore-form button.primary").await.click().await.expect("submit");
    let url = ui.wait_url("by=http_route").await;
    assert!(url.contains("metric=requests_total"), "{url}");
    ui.wait_for("svg#explore-chart path.series").await;
    assert_eq!(ui.find_all("svg#explore-chart path.series").await.len(), 3, "one line per route");
    let legend = ui.wait_for("table.legend").await.text().await.unwrap();
    for (route, rate) in [("/a", "2"), ("/b", "4"), ("/c", "6")] {
        let row = legend.lines().find(|l| l.contains(&format!("http_route=\"{route}\""))).unwrap_or_else(|| {
            panic!("no legend row for {route}: {legend}");
        });
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[cells.len() - 2..], [rate, rate], "{route}: last and max of {row}");
    }
    // the lines have distinct colours
    let colours = ui
        .js(
            "return Array.from(document.querySelectorAll('svg#explore-chart path.series')).map(p => getComputedStyle(p).stroke)",
            vec![],
        )
        .await;
    let colours: Vec<&str> = colours.as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(colours[0] != colours[1] && colours[1] != colours[2] && colours[0] != colours[2], "{colours:?}");

    // hover near the right end: a cursor line and a tooltip with each route's value
    let svg = ui.wait_for("svg#explore-chart").await;
    let (x, y, w, h) = svg.rectangle().await.expect("chart box");
    let at = |fx: f64, fy: f64| (x + w * fx, y + h * fy);
    let (mx, my) = at(0.85, 0.5);
    let mouse = MouseActions::new("mouse".to_string())
        .then(PointerAction::MoveTo { duration: None, x: mx.round(), y: my.round() })
        .then(PointerAction::MoveTo { duration: Some(Duration::from_millis(100)), x: mx.round() + 3.0, y: my.round() });
    ui.client().perform_actions(mouse).await.expect("hover the chart");
    let tip = ui.wait_for(".explore-tooltip:not([hidden])").await;
    let text = tip.text().await.unwrap();
    for route in ["/a", "/b", "/c"] {
        assert!(text.contains(route), "tooltip lacks {route}: {text}");
    }
    assert!(text.contains("UTC"), "tooltip shows the time: {text}");
    assert!(text.contains("6 /s"), "the /c rate with its unit: {text}");
    let cursor = ui
        .js("return document.querySelector('svg#explore-chart line.cursor').getAttribute('visibility')", vec![])
        .await;
    assert_eq!(cursor.as_str(), Some("visible"));
    ui.assert_no_console_errors("explore hover").await;
    ui.screenshot("explore").await;

    // a bad expression: the engine's message, no chart
    ui.goto("/explore?range=15m&expr=rate(requests_total)&built=").await;
    let err = ui.wait_for(".error-message").await.text().await.unwrap();
    assert!(err.contains("expected type matrix"), "{err}");
    assert!(ui.find_all("svg#explore-chart").await.is_empty());
    ui.screenshot("explore-error").await;
    ui.finish().await;
}
