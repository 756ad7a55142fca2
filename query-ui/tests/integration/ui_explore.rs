//! The metrics explorer page (`/explore`) through the router (`oneshot`): a counter, a histogram
//! and a gauge written into a `DiskStore` as OTLP metrics; the expression the controls build, the
//! SVG lines and legend, the 400 on a bad expression, and escaping of label values.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use obsbox_query_ui::{AppState, router};
use obsbox_storage::{Batch, DiskStore, Reader, StoreConfig, Writer};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tower::ServiceExt;

const EVIL: &str = "<script>alert(1)</script>";
const S: u64 = 1_000_000_000;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(Value::StringValue(v.into())) }),
        ..Default::default()
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// 40 points 15 s apart ending now: `requests` counts 1/s on `/a`, 3/s on `/b` and 2/s on the
/// evil route; `latency` (ms) puts every request of `/a` in (10, 50] and of `/b` in (100, 200];
/// `queue.depth` is 7 on `/a` and 9 on `/b`.
fn metrics(now: u64) -> ExportMetricsServiceRequest {
    let start = now - 700 * S;
    let routes = [("/a", 1i64, 4usize, 7.0), ("/b", 3, 6, 9.0), (EVIL, 2, 4, 1.0)];
    let times: Vec<u64> = (0..40).map(|i| now - (39 - i) * 15 * S).collect();
    let mut counter = Vec::new();
    let mut hist = Vec::new();
    let mut gauge = Vec::new();
    for (route, per_s, bucket, depth) in routes {
        for &t in &times {
            let n = per_s * ((t - start) / S) as i64;
            counter.push(NumberDataPoint {
                attributes: vec![kv("http.route", route)],
                start_time_unix_nano: start,
                time_unix_nano: t,
                value: Some(number_data_point::Value::AsInt(n)),
                ..Default::default()
            });
            let mut buckets = vec![0u64; 9];
            buckets[bucket] = n as u64;
            hist.push(HistogramDataPoint {
                attributes: vec![kv("http.route", route)],
                start_time_unix_nano: start,
                time_unix_nano: t,
                count: n as u64,
                sum: Some(n as f64 * 30.0),
                bucket_counts: buckets,
                explicit_bounds: vec![1., 2., 5., 10., 50., 100., 200., 500.],
                ..Default::default()
            });
            gauge.push(NumberDataPoint {
                attributes: vec![kv("http.route", route)],
                time_unix_nano: t,
                value: Some(number_data_point::Value::AsDouble(depth)),
                ..Default::default()
            });
        }
    }
    let metric = |name: &str, unit: &str, data: Data| Metric {
        name: name.into(),
        unit: unit.into(),
        description: format!("{name} of the test"),
        data: Some(data),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: vec![kv("service.name", "shop")], ..Default::default() }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    metric(
                        "requests",
                        "1",
                        Data::Sum(Sum { data_points: counter, aggregation_temporality: 2, is_monotonic: true }),
                    ),
                    metric(
                        "latency",
                        "ms",
                        Data::Histogram(Histogram { data_points: hist, aggregation_temporality: 2 }),
                    ),
                    metric("queue.depth", "", Data::Gauge(Gauge { data_points: gauge })),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

async fn fixture() -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        DiskStore::open(StoreConfig {
            data_dir: dir.path().to_path_buf(),
            commit_interval: Duration::from_millis(100),
            index_memory_bytes: 32 << 20,
            ..StoreConfig::default()
        })
        .unwrap(),
    );
    store.write(Batch::Metrics(metrics(now_ns()))).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.stats().pending_items.iter().any(|(_, n)| *n > 0) {
        assert!(Instant::now() < deadline, "the store did not index the fixture");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let state = AppState::new(store, prometheus::Registry::new(), Arc::new(AtomicBool::new(true))).unwrap();
    (dir, router(state))
}

struct Page {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn get(app: &Router, uri: &str) -> Page {
    let resp = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Page { status, headers, body }
}

/// The CSP forbids inline script; every script is a file or a JSON block; nothing unescaped.
fn assert_safe(p: &Page, uri: &str) {
    let csp = p.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{uri}: {csp}");
    assert!(!p.body.contains(EVIL), "{uri}: unescaped script in the page");
    for (i, _) in p.body.match_indices("<script") {
        let tag = &p.body[i..p.body[i..].find('>').map(|j| i + j).unwrap()];
        assert!(tag.contains(" src=") || tag.contains("type=\"application/json\""), "{uri}: inline script {tag}");
    }
}

/// The `d` attributes of the chart's series paths.
fn paths(body: &str) -> Vec<&str> {
    body.match_indices("<path class=\"series ")
        .map(|(i, _)| {
            let d = &body[i..];
            let s = d.find(" d=\"").unwrap() + 4;
            &d[s..s + d[s..].find('"').unwrap()]
        })
        .collect()
}

/// The legend's rows: (series, last, max).
fn legend(body: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (i, _) in body.match_indices("<span class=\"series-name\">") {
        let row = &body[i + 26..];
        let name = &row[..row.find("</span>").unwrap()];
        let cells: Vec<&str> = row
            .match_indices("<td class=\"num\">")
            .take(2)
            .map(|(j, _)| &row[j + 16..j + 16 + row[j + 16..].find("</td>").unwrap()])
            .collect();
        out.push((name.to_string(), cells[0].to_string(), cells[1].to_string()));
    }
    out
}

fn textarea(body: &str) -> &str {
    let i = body.find("<textarea name=\"expr\"").unwrap();
    let s = i + body[i..].find('>').unwrap() + 1;
    &body[s..s + body[s..].find("</textarea>").unwrap()]
}

#[tokio::test]
async fn the_picker_lists_metrics_with_type_and_unit_and_the_label_values() {
    let (_dir, app) = fixture().await;
    let p = get(&app, "/explore?range=15m").await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_safe(&p, "/explore");
    for name in ["requests_total", "latency_milliseconds", "queue_depth"] {
        assert!(p.body.contains(&format!("<option value=\"{name}\">")), "{name} not offered: {}", p.body);
    }
    assert!(p.body.contains(">histogram, milliseconds</option>"), "{}", p.body);
    assert!(p.body.contains("class=\"active\" aria-current=\"page\">Metrics</a>"));
    // choosing a metric offers its labels for filters and group by
    let p = get(&app, "/explore?range=15m&metric=requests_total").await;
    assert!(p.body.contains("<datalist id=\"values-http_route\"><option value=\"/a\">"), "{}", p.body);
    assert!(p.body.contains("name=\"by\" value=\"http_route\""), "{}", p.body);
    assert!(p.body.contains("name=\"by\" value=\"job\""), "{}", p.body);
}

#[tokio::test]
async fn a_counter_grouped_by_route_is_one_rate_line_per_route() {
    let (_dir, app) = fixture().await;
    let uri = "/explore?range=15m&metric=requests_total&by=http_route&agg=sum&w=1m&fl=http_route&fo=%21%3D&fv=%2Fc";
    let p = get(&app, uri).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_safe(&p, uri);
    assert_eq!(textarea(&p.body), "sum by (http_route) (rate(requests_total{http_route!=&#34;/c&#34;}[1m]))");
    assert_eq!(paths(&p.body).len(), 3, "{}", p.body);
    let rows = legend(&p.body);
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "{http_route=&#34;/a&#34;}",
            "{http_route=&#34;/b&#34;}",
            "{http_route=&#34;&#60;script&#62;alert(1)&#60;/script&#62;&#34;}"
        ]
    );
    // rates of 1, 3 and 2 per second
    assert_eq!((rows[0].1.as_str(), rows[1].1.as_str(), rows[2].1.as_str()), ("1", "3", "2"), "{rows:?}");
    assert!(p.body.contains("unit /s"), "the y unit of a rate");
    // the chart has axes with ticks and the hover data block
    assert!(p.body.matches("class=\"tick x\"").count() >= 3);
    assert!(p.body.matches("class=\"tick y\"").count() >= 3);
    assert!(p.body.contains("<script type=\"application/json\" id=\"explore-data\">"));
    assert!(p.body.contains("\\u003cscript\\u003e"), "the JSON block escapes <");
}

#[tokio::test]
async fn a_histogram_shows_a_quantile_and_a_gauge_its_value() {
    let (_dir, app) = fixture().await;
    let p = get(&app, "/explore?range=15m&metric=latency_milliseconds&by=http_route&q=0.5&fl=http_route&fv=%2Fb").await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_eq!(
        textarea(&p.body),
        "histogram_quantile(0.5, sum by (le,http_route) (rate(latency_milliseconds_bucket{http_route=&#34;/b&#34;}[5m])))"
    );
    let rows = legend(&p.body);
    assert_eq!(rows.len(), 1, "{rows:?}");
    // every request of /b is in (100, 200]: the median interpolates to 150
    assert_eq!(rows[0].1, "150");
    assert!(p.body.contains("unit milliseconds"));

    let p = get(&app, "/explore?range=15m&metric=queue_depth&agg=max").await;
    assert_eq!(textarea(&p.body), "max(queue_depth)");
    let rows = legend(&p.body);
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].1.as_str(), rows[0].2.as_str()), ("9", "9"));
    assert_eq!(paths(&p.body).len(), 1);
}

#[tokio::test]
async fn an_edited_expression_overrides_the_controls_and_bad_ones_are_400() {
    let (_dir, app) = fixture().await;
    // the box was shown with the built expression, then edited
    let uri = "/explore?range=15m&metric=queue_depth&agg=max&built=max%28queue_depth%29&expr=min%28queue_depth%29";
    let p = get(&app, uri).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_eq!(textarea(&p.body), "min(queue_depth)");
    assert_eq!(legend(&p.body)[0].1, "1");
    // unchanged: the controls win
    let p =
        get(&app, "/explore?range=15m&metric=queue_depth&agg=avg&built=max%28queue_depth%29&expr=max%28queue_depth%29")
            .await;
    assert_eq!(textarea(&p.body), "avg(queue_depth)");

    for (q, why) in [
        ("expr=sum(%20&built=", "unclosed left parenthesis"),
        ("expr=label_join(queue_depth)&built=", ""),
        ("metric=queue_depth&fl=bad-label&fv=x", "invalid label name"),
        ("metric=queue_depth&w=soon", "rate window"),
        ("range=soon", ""),
    ] {
        let uri = format!("/explore?{q}");
        let p = get(&app, &uri).await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{uri}: {}", p.body);
        assert!(p.body.contains(why), "{uri}: {}", p.body);
        assert_safe(&p, &uri);
    }
    let uri = format!("/explore?expr=queue_depth%7Bx%3D%22{}%22%7D%20%2B&built=", urlencode(EVIL));
    let p = get(&app, &uri).await;
    assert_eq!(p.status, StatusCode::BAD_REQUEST, "{}", p.body);
    assert_safe(&p, &uri);
    assert!(p.body.contains("&#60;script&#62;"), "the expression is shown escaped: {}", p.body);
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
