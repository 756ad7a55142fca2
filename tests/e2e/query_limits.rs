//! `[query]` limits end to end: an in-process obsbox with small limits and a little data, then
//! one request per limit and API, each refused with the status and error shape its API uses
//! (native `{"error"}`, Jaeger `errors[]`, Loki plain text, Prometheus `bad_data` /
//! `execution` / `timeout`, the UI's form with the reason) and a message naming the key. Requests
//! just inside the limits succeed, and a query past its time budget answers 503 while the server
//! keeps serving.

use crate::common;

use std::time::Duration;

use common::{SEARCHABLE, gauge_point, gauge_request, grpc_clients, log_record, logs_request, span, span_id};
use common::{str_kv, trace_id, trace_request};

const S: u64 = 1_000_000_000;

/// The limits under test: small enough to reach with a handful of records.
fn limits() -> obsbox_query_ui::QueryLimits {
    obsbox_query_ui::QueryLimits {
        max_query_bytes: 300,
        max_query_depth: 6,
        max_query_clauses: 5,
        max_selectors: 2,
        max_time_range: Duration::from_secs(2 * 3600),
        max_points_per_series: 100,
        max_series: 2,
        max_samples: 5,
        max_traces: 3,
        max_log_lines: 4,
        max_response_bytes: 3000,
        ..Default::default()
    }
}

/// Traces of `payments`, ten log lines of ~1 KB, and gauge series `queue_depth{q}` (unit `1`:
/// `queue_depth_ratio` in Prometheus): `a` with one point, `b` with ten, `c` and `d` with one.
async fn fill(obsbox: &obsbox::Obsbox) {
    let mut clients = grpc_clients(obsbox.otlp_grpc_addr().expect("an OTLP listener")).await;
    let now = common::now_ns();
    for t in 0..4u64 {
        let s = span(&trace_id(0x1a, t), &span_id(1), "POST /payments", now - (100 - t) * S);
        clients.traces.export(trace_request("payments", vec![s])).await.expect("export spans");
    }
    let lines = (0..10u64).map(|i| log_record(&format!("line {i} {}", "x".repeat(1000)), now - (50 - i) * S)).collect();
    clients.logs.export(logs_request("payments", lines)).await.expect("export logs");
    for (q, n) in [("a", 1u64), ("b", 10), ("c", 1), ("d", 1)] {
        let points = (0..n).map(|i| gauge_point(i as f64, now - (i + 1) * 10 * S, vec![str_kv("q", q)])).collect();
        clients.metrics.export(gauge_request("payments", "queue_depth", points)).await.expect("export metrics");
    }
    let store = obsbox.store().expect("a local store");
    assert!(
        common::wait_until_async(SEARCHABLE, move || common::logs_of_service(&store, "payments").len() == 10).await,
        "the logs became searchable"
    );
}

/// How a refusal looks in each API.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `{"error": "..."}`
    Native,
    /// `{"data": null, "errors": [{"code", "msg"}]}`
    Jaeger,
    /// Plain text.
    Loki,
    /// `{"status": "error", "errorType": <type>, "error": "..."}`
    Prometheus(&'static str),
    /// The HTML page with the reason.
    Ui,
    /// A success.
    Ok,
}

/// Percent-encodes everything but ASCII letters and digits.
fn url_encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_limit_is_refused_in_the_shape_of_its_api() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut config = common::test_config(&tmp.path().join("data"));
    config.query = limits();
    let obsbox = common::start_obsbox_with(config).await;
    fill(&obsbox).await;
    let now_s = common::now_ns() / S;
    let long = "x".repeat(301);
    let e = url_encode;
    let rows: Vec<(String, u16, Shape, &str)> = vec![
        // native API
        (format!("/api/v1/traces?filter={}", e(&format!("a = \"{long}\""))), 400, Shape::Native, "max_query_bytes"),
        (
            format!("/api/v1/traces?filter={}", e("a=1 AND b=2 AND c=3 AND d=4 AND e=5 AND f=6")),
            400,
            Shape::Native,
            "max_query_clauses",
        ),
        (format!("/api/v1/traces?filter={}", e("((((((((a = 1))))))))")), 400, Shape::Native, "max_query_depth"),
        ("/api/v1/traces?limit=4".into(), 400, Shape::Native, "max_traces"),
        ("/api/v1/traces?lookback=3h".into(), 400, Shape::Native, "max_time_range"),
        ("/api/v1/logs?limit=5".into(), 400, Shape::Native, "max_log_lines"),
        (format!("/api/v1/logs?limit=1&query={}", e("a b c d e f")), 400, Shape::Native, "max_query_clauses"),
        ("/api/v1/logs?limit=4".into(), 400, Shape::Native, "max_response_bytes"),
        ("/api/v1/logs/histogram?lookback=3h".into(), 400, Shape::Native, "max_time_range"),
        ("/api/v1/traces?limit=3".into(), 200, Shape::Ok, "traces"),
        ("/api/v1/logs?limit=1".into(), 200, Shape::Ok, "logs"),
        // Jaeger API
        ("/api/traces?service=payments&limit=4".into(), 400, Shape::Jaeger, "max_traces"),
        ("/api/traces?service=payments&lookback=3h".into(), 400, Shape::Jaeger, "max_time_range"),
        ("/api/traces?service=payments&limit=3".into(), 200, Shape::Ok, "data"),
        // Loki API
        (
            format!("/loki/api/v1/query_range?limit=5&query={}", e(r#"{service_name="payments"}"#)),
            400,
            Shape::Loki,
            "max_log_lines",
        ),
        (
            format!(
                "/loki/api/v1/query_range?query={}",
                e(r#"{service_name="payments"} |= "a" |= "b" |= "c" |= "d" |= "e" |= "f""#)
            ),
            400,
            Shape::Loki,
            "max_query_clauses",
        ),
        (
            format!(
                "/loki/api/v1/query_range?query={}",
                e(r#"count_over_time({a="1"}[1m]) + count_over_time({a="2"}[1m]) + count_over_time({a="3"}[1m])"#)
            ),
            400,
            Shape::Loki,
            "max_selectors",
        ),
        (
            format!("/loki/api/v1/query_range?query={}", e(&format!(r#"{{a="{long}"}}"#))),
            400,
            Shape::Loki,
            "max_query_bytes",
        ),
        (
            format!(
                "/loki/api/v1/query_range?step=1&since=1h&query={}",
                e(r#"count_over_time({service_name="payments"}[1m])"#)
            ),
            400,
            Shape::Loki,
            "exceeded maximum resolution of 100 points per timeseries",
        ),
        (
            format!("/loki/api/v1/query_range?since=3h&query={}", e(r#"{service_name="payments"}"#)),
            400,
            Shape::Loki,
            "max_time_range",
        ),
        (
            format!("/loki/api/v1/query_range?limit=1&query={}", e(r#"{service_name="payments"}"#)),
            200,
            Shape::Ok,
            "streams",
        ),
        // Prometheus API
        (
            format!("/prometheus/api/v1/query?query={}", e(r#"{__name__=~"queue_depth.*", q!="b"}"#)),
            422,
            Shape::Prometheus("execution"),
            "max_series",
        ),
        (
            format!("/prometheus/api/v1/query?query={}", e(r#"{__name__=~"queue_depth.*", q="b"}"#)),
            422,
            Shape::Prometheus("execution"),
            "max_samples",
        ),
        (
            format!("/prometheus/api/v1/query?query={}", e("a + b + c")),
            400,
            Shape::Prometheus("bad_data"),
            "max_selectors",
        ),
        (
            format!("/prometheus/api/v1/query?query={}", e("1+1+1+1+1+1+1")),
            400,
            Shape::Prometheus("bad_data"),
            "max_query_clauses",
        ),
        (
            format!("/prometheus/api/v1/query?query={}", e("((((((((1))))))))")),
            400,
            Shape::Prometheus("bad_data"),
            "max_query_depth",
        ),
        (
            format!("/prometheus/api/v1/query?query={}", e(&format!(r#"a{{b="{long}"}}"#))),
            400,
            Shape::Prometheus("bad_data"),
            "max_query_bytes",
        ),
        (
            format!("/prometheus/api/v1/query_range?query=1&start={}&end={now_s}&step=1", now_s - 1000),
            400,
            Shape::Prometheus("bad_data"),
            "exceeded maximum resolution of 100 points per timeseries",
        ),
        (
            format!("/prometheus/api/v1/query_range?query=1&start={}&end={now_s}&step=600", now_s - 3 * 3600),
            400,
            Shape::Prometheus("bad_data"),
            "max_time_range",
        ),
        (
            format!("/prometheus/api/v1/query?query={}", e(r#"{__name__=~"queue_depth.*", q="a"}"#)),
            200,
            Shape::Ok,
            "success",
        ),
        // web UI
        (format!("/logs?query={}", e("a b c d e f")), 400, Shape::Ui, "max_query_clauses"),
        (format!("/search?filter={}", e("((((((((a = 1))))))))")), 400, Shape::Ui, "max_query_depth"),
        ("/logs?range=3h".into(), 400, Shape::Ui, "max_time_range"),
    ];

    let client = reqwest::Client::new();
    let base = format!("http://{}", obsbox.http_addr());
    let mut failures = Vec::new();
    for (path, status, shape, needle) in &rows {
        let resp = client.get(format!("{base}{path}")).send().await.expect("response");
        let got = resp.status().as_u16();
        let content_type =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let body = resp.text().await.expect("body");
        let json = || serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default();
        let message = match shape {
            Shape::Native => json()["error"].as_str().map(str::to_string),
            Shape::Jaeger => json()["errors"][0]["msg"].as_str().map(str::to_string),
            Shape::Loki => content_type.starts_with("text/plain").then(|| body.clone()),
            Shape::Prometheus(kind) => {
                let j = json();
                (j["status"] == "error" && j["errorType"] == *kind).then(|| j["error"].as_str().unwrap_or("").into())
            }
            Shape::Ui => content_type.starts_with("text/html").then(|| body.clone()),
            Shape::Ok => Some(body.clone()),
        };
        let ok = got == *status && message.as_deref().is_some_and(|m| m.contains(needle));
        if !ok {
            failures.push(format!(
                "GET {path}: want {status} {shape:?} with {needle:?}, got {got} {content_type}: {body:.300}"
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
    obsbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_time_budget_gets_a_timeout_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut config = common::test_config(&tmp.path().join("data"));
    config.query.timeout = Duration::from_millis(200);
    let obsbox = common::start_obsbox_with(config).await;
    // One series of 20,000 points a second apart: a day-long window at each of 11,000 steps is
    // billions of sample visits, far past 200 ms.
    let mut clients = grpc_clients(obsbox.otlp_grpc_addr().expect("an OTLP listener")).await;
    let now = common::now_ns();
    let points = (0..20_000u64).map(|i| gauge_point(i as f64, now - (i + 1) * S, vec![])).collect();
    clients.metrics.export(gauge_request("payments", "busy", points)).await.expect("export metrics");
    let client = reqwest::Client::new();
    let base = format!("http://{}", obsbox.http_addr());
    let query = |q: String| {
        let client = client.clone();
        let url = format!("{base}/prometheus/api/v1/{q}");
        async move {
            let resp = client.get(url).send().await.expect("response");
            (resp.status().as_u16(), resp.json::<serde_json::Value>().await.expect("json"))
        }
    };
    let now_s = now / S;
    let deadline = std::time::Instant::now() + SEARCHABLE;
    let first = loop {
        let (_, body) = query(format!("query?query=count_over_time(busy_ratio[1d])&time={now_s}")).await;
        if body["data"]["result"][0]["value"][1] == "20000" || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let started = std::time::Instant::now();
    let (status, body) = query(format!(
        "query_range?query={}&start={}&end={now_s}&step=2",
        url_encode("sum_over_time(busy_ratio[1d]) * count_over_time(busy_ratio[1d])"),
        now_s - 21_998
    ))
    .await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body} (first query: {first})");
    assert_eq!(body["errorType"], "timeout", "{body}");
    assert!(body["error"].as_str().unwrap_or("").contains("[query] timeout"), "{body}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    // The server still answers.
    let (status, body) = query("query?query=1".into()).await;
    assert_eq!(status, 200, "{body}");
    obsbox.shutdown().await.unwrap();
}
