//! The Loki-compatible API over a disk store: golden responses, the request sequence Grafana's
//! Loki datasource sends, LogQL semantics, metadata endpoints and bad input.

use crate::loki_common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use loki_common::*;
use serde_json::{Value, json};
use tower::ServiceExt;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/loki").join(name)
}

/// Compares with the golden file; `UPDATE_GOLDEN=1` rewrites it.
fn check_golden(name: &str, actual: &Value) {
    let path = golden_path(name);
    let pretty = serde_json::to_string_pretty(actual).expect("json") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, &pretty).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    let expected: Value = serde_json::from_str(&expected).expect("golden json");
    assert_eq!(actual, &expected, "response differs from {}; actual:\n{pretty}", path.display());
}

#[tokio::test]
async fn golden_streams_response() {
    let h = disk().await;
    let v = get_json(&h.app, &query_range(r#"{service_namespace="shop"}"#, 0, 10, &[("limit", "100")])).await;
    check_golden("query_range_streams.json", &normalize(v));
}

/// Per 10 s window ending at `end` (exclusive of `end - 10s`, inclusive of `end`), the ticker's
/// (ERROR, INFO) counts.
fn ticker_counts(end_s: u64, window_s: u64) -> (u64, u64) {
    let (mut err, mut info) = (0, 0);
    for i in 0..TICKS {
        let ts = t(100 + i);
        if ts > T0 + (end_s - window_s) * SEC && ts <= T0 + end_s * SEC {
            if i % 3 == 0 {
                err += 1;
            } else {
                info += 1;
            }
        }
    }
    (err, info)
}

fn matrix(v: &Value) -> BTreeMap<String, Vec<(f64, String)>> {
    assert_eq!(v["data"]["resultType"], "matrix", "{v}");
    v["data"]["result"]
        .as_array()
        .expect("result")
        .iter()
        .map(|s| {
            let points = s["values"]
                .as_array()
                .expect("values")
                .iter()
                .map(|p| (p[0].as_f64().expect("ts"), p[1].as_str().expect("value").to_string()))
                .collect();
            (s["metric"].to_string(), points)
        })
        .collect()
}

fn expected_ticker_matrix(window_s: u64, rate: bool) -> BTreeMap<String, Vec<(f64, String)>> {
    let mut out: BTreeMap<String, Vec<(f64, String)>> = BTreeMap::new();
    for end in (100..=170).step_by(10) {
        let (e, i) = ticker_counts(end, window_s);
        let ts = (T0 / SEC + end) as f64;
        for (level, n) in [("ERROR", e), ("INFO", i)] {
            if n > 0 {
                let v = if rate { format!("{}", n as f64 / window_s as f64) } else { n.to_string() };
                out.entry(json!({ "level": level }).to_string()).or_default().push((ts, v));
            }
        }
    }
    out
}

#[tokio::test]
async fn golden_matrix_response_and_both_count_paths() {
    let h = disk().await;
    let step = [("step", "10s")];
    let q = r#"sum by (level) (count_over_time({service_name="ticker"}[10s]))"#;
    let v = get_json(&h.app, &query_range(q, 100, 170, &step)).await;
    check_golden("query_range_matrix.json", &normalize(v.clone()));
    assert_eq!(matrix(&v), expected_ticker_matrix(10, false));
    // The same through the in-memory path (a filter the index cannot express) gives the same.
    let q = r#"sum by (level) (count_over_time({service_name="ticker"} != "zzz" [10s]))"#;
    assert_eq!(matrix(&get_json(&h.app, &query_range(q, 100, 170, &step)).await), expected_ticker_matrix(10, false));
    // rate = count / seconds; a window longer than the step.
    let q = r#"sum by (level) (rate({service_name="ticker"}[10s]))"#;
    assert_eq!(matrix(&get_json(&h.app, &query_range(q, 100, 170, &step)).await), expected_ticker_matrix(10, true));
    for q in [
        r#"sum by (level) (count_over_time({service_name="ticker"}[20s]))"#,
        r#"sum by (level) (count_over_time({service_name="ticker"} |~ "tick" [20s]))"#,
    ] {
        assert_eq!(
            matrix(&get_json(&h.app, &query_range(q, 100, 170, &step)).await),
            expected_ticker_matrix(20, false)
        );
    }
    // Without an aggregation: one series per label set.
    let q = r#"count_over_time({service_name="ticker"}[10s])"#;
    let m = matrix(&get_json(&h.app, &query_range(q, 100, 170, &step)).await);
    let key = json!({ "deployment_environment": "prod", "level": "ERROR", "service_name": "ticker" }).to_string();
    assert_eq!(m[&key], expected_ticker_matrix(10, false)[&json!({ "level": "ERROR" }).to_string()]);
    // Grouped by a resource label, by service (with `service_name` values everywhere), and
    // arithmetic between two aggregations (an error ratio).
    let q = r#"sum by (deployment_environment) (count_over_time({service_name=~"ticker|checkout"}[1m]))"#;
    let m = matrix(&get_json(&h.app, &query_range(q, 0, 60, &[("step", "60")])).await);
    // Evaluation times are aligned to the step, as Loki does (T0 is 20 s past a minute).
    assert_eq!(m[&json!({ "deployment_environment": "prod" }).to_string()], vec![((T0 / SEC + 40) as f64, "4".into())]);
    let q = r#"sum(count_over_time({service_name="ticker"} |= "failed" [1m])) / sum(count_over_time({service_name="ticker"}[1m]))"#;
    let m = matrix(&get_json(&h.app, &query_range(q, 160, 160, &[("step", "60")])).await);
    assert_eq!(m[&json!({}).to_string()], vec![((T0 / SEC + 160) as f64, format!("{}", 20.0 / 60.0))]);
    // A parser can give a record without the stream label that label: counted from the lines.
    let q = r#"sum by (service_name) (count_over_time({k8s_pod_name="pod-1"} | logfmt [1m]))"#;
    let m = matrix(&get_json(&h.app, &query_range(q, 0, 60, &[("step", "60")])).await);
    assert_eq!(m[&json!({ "service_name": "ghost" }).to_string()], vec![((T0 / SEC + 40) as f64, "1".into())]);
}

#[tokio::test]
async fn instant_queries() {
    let h = disk().await;
    let at = format!("{}.5", T0 / SEC + 160);
    let q = r#"sum by (level) (count_over_time({service_name="ticker"}[1m]))"#;
    let v = get_json(&h.app, &url("/loki/api/v1/query", &[("query", q), ("time", &at)])).await;
    assert_eq!(v["data"]["resultType"], "vector");
    let got: BTreeMap<String, String> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["metric"]["level"].as_str().unwrap().to_string(), s["value"][1].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(got, BTreeMap::from([("ERROR".into(), "19".into()), ("INFO".into(), "40".into())]));
    assert_eq!(v["data"]["result"][0]["value"][0], json!(1_700_000_160.5));
    // The in-memory path agrees.
    let q = r#"sum by (level) (count_over_time({service_name="ticker"} != "zzz" [1m]))"#;
    let w = get_json(&h.app, &url("/loki/api/v1/query", &[("query", q), ("time", &at)])).await;
    assert_eq!(v["data"]["result"], w["data"]["result"]);
    // A scalar; topk.
    let v = get_json(&h.app, &url("/loki/api/v1/query", &[("query", "2 * 3"), ("time", &at)])).await;
    assert_eq!((v["data"]["resultType"].as_str(), v["data"]["result"][1].as_str()), (Some("scalar"), Some("6")));
    let q = r#"topk(1, sum by (level) (count_over_time({service_name="ticker"}[1m])))"#;
    let v = get_json(&h.app, &url("/loki/api/v1/query", &[("query", q), ("time", &at)])).await;
    assert_eq!(v["data"]["result"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"]["result"][0]["metric"]["level"], "INFO");
}

/// What Grafana's Loki datasource sends: the health check, the label browser, the query stats
/// hint, Explore's logs query and its logs-volume query, log context.
#[tokio::test]
async fn grafana_explore_request_sequence() {
    let h = disk().await;
    let app = &h.app;
    let (start, end) = ((T0).to_string(), (T0 + 200 * SEC).to_string());
    let span = [("start", start.as_str()), ("end", end.as_str())];

    // Save & test: an instant `vector(1)+vector(1)`.
    let v = get_json(app, &url("/loki/api/v1/query", &[("query", "vector(1)+vector(1)"), ("time", &end)])).await;
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "vector");
    assert_eq!(v["data"]["result"][0]["metric"], json!({}));
    assert_eq!(v["data"]["result"][0]["value"][1], "2");

    // Label browser.
    let v = get_json(app, &url("/loki/api/v1/labels", &span)).await;
    assert_eq!(
        v,
        json!({ "status": "success", "data": ["deployment_environment", "k8s_pod_name", "level", "service_name", "service_namespace"] })
    );
    let v = get_json(app, &url("/loki/api/v1/label/service_name/values", &span)).await;
    assert_eq!(v["data"], json!(["burst", "checkout", "payments", "ticker"]));
    let v = get_json(app, &url("/loki/api/v1/label/level/values", &span)).await;
    assert_eq!(v["data"], json!(["DEBUG", "ERROR", "INFO", "warn"]), "warn is derived from the severity number");
    let mut p = span.to_vec();
    p.push(("query", r#"{service_namespace="shop"}"#));
    let v = get_json(app, &url("/loki/api/v1/label/service_name/values", &p)).await;
    assert_eq!(v["data"], json!(["checkout", "payments"]));
    let v = get_json(app, &url("/loki/api/v1/label/deployment_environment/values", &span)).await;
    assert_eq!(v["data"], json!(["prod", "staging"]));

    // Query stats hint.
    let mut p = span.to_vec();
    p.push(("query", r#"{service_name="ticker"}"#));
    let v = get_json(app, &url("/loki/api/v1/index/stats", &p)).await;
    assert_eq!(v["entries"], 60);
    assert_eq!(v["streams"], 2, "ticker has an INFO and an ERROR stream");
    assert!(v["bytes"].as_u64().unwrap() > 60 * 8);
    assert!(v["chunks"].is_u64());

    // Explore: the logs query...
    let v = get_json(
        app,
        &query_range(
            r#"{service_name="ticker"}"#,
            0,
            200,
            &[("limit", "1000"), ("direction", "backward"), ("step", "1s")],
        ),
    )
    .await;
    let got = lines(&v);
    assert_eq!(got.len(), 60);
    assert_eq!(got[0], (t(159), "tick 59 ok".to_string()));
    for s in v["data"]["result"].as_array().unwrap() {
        assert_eq!(s["stream"]["service_name"], "ticker");
        let ts: Vec<u64> =
            s["values"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap().parse().unwrap()).collect();
        assert!(ts.windows(2).all(|w| w[0] >= w[1]), "backward: newest first in each stream");
    }
    assert!(v["data"]["stats"]["summary"]["totalLinesProcessed"].is_u64());
    // ... and its logs-volume histogram, as recent Grafana versions write it.
    let q = r#"sum by (level, detected_level) (count_over_time({service_name="ticker"} | drop __error__[10s]))"#;
    let v = get_json(app, &query_range(q, 100, 170, &[("step", "10s")])).await;
    assert_eq!(matrix(&v), expected_ticker_matrix(10, false));

    // Log context: the lines after one, forward, with an RFC 3339 start.
    let v = get_json(
        app,
        &url(
            "/loki/api/v1/query_range",
            &[
                ("query", r#"{service_name="ticker", level="INFO"}"#),
                ("start", "2023-11-14T22:15:00.25Z"),
                ("end", &end),
                ("limit", "2"),
                ("direction", "FORWARD"),
            ],
        ),
    )
    .await;
    let got: Vec<String> = v["data"]["result"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ["tick 1 ok", "tick 2 ok"]);

    // Variables: series of a selector.
    let v =
        get_json(app, &url("/loki/api/v1/series", &[("match[]", r#"{service_name="payments"}"#), span[0], span[1]]))
            .await;
    let levels: Vec<&str> = v["data"].as_array().unwrap().iter().map(|s| s["level"].as_str().unwrap()).collect();
    assert_eq!(levels, ["DEBUG", "ERROR", "INFO"]);
    assert_eq!(v["data"][0]["service_namespace"], "shop");
}

#[tokio::test]
async fn line_filters_parsers_and_label_filters() {
    let h = disk().await;
    let app = &h.app;
    let only = |q: &'static str| {
        let app = app.clone();
        async move {
            let v = get_json(&app, &query_range(q, 0, 10, &[])).await;
            lines(&v).into_iter().map(|(_, l)| l).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        only(r#"{service_namespace="shop"} |= "FAILED""#).await,
        ["Charge FAILED upstream timeout"],
        "|= is case-sensitive"
    );
    assert_eq!(only(r#"{service_namespace="shop"} |= "failed""#).await, ["payment failed: card declined"]);
    assert_eq!(only(r#"{service_namespace="shop"} |~ "(?i)failed""#).await.len(), 2);
    assert_eq!(only(r#"{service_namespace="shop"} |= "failed" or "ok""#).await.len(), 2);
    assert_eq!(
        only(r#"{service_name="payments"} != "charge" !~ "(?i)refund""#).await,
        ["Charge FAILED upstream timeout"]
    );
    assert_eq!(only(r#"{service_name="checkout"} |= " /api/cart 2""#).await, ["GET /api/cart 200 in 12ms"]);
    assert_eq!(
        only(r#"{service_name="checkout"} |= "api/car""#).await,
        ["GET /api/cart 200 in 12ms"],
        "substrings of words match"
    );
    assert_eq!(only(r#"{service_name="checkout"} | http_method="GET""#).await, ["GET /api/cart 200 in 12ms"]);
    assert_eq!(only(r#"{service_name="checkout"} | http_status_code >= 200"#).await, ["GET /api/cart 200 in 12ms"]);
    assert_eq!(
        only(r#"{service_name="checkout"} | trace_id="0102030405060708090a0b0c0d0e0f10""#).await,
        ["payment failed: card declined"]
    );
    assert_eq!(only(r#"{level="warn"}"#).await.len(), 1, "level derived from severity number 13");
    assert_eq!(only(r#"{level=~"(?i)error"}"#).await.len(), 2);
    assert_eq!(only(r#"{k8s_pod_name="pod-1"}"#).await, ["orphan line service_name=ghost"]);
    assert_eq!(only(r#"{service_name="checkout"} | json | latency_ms > 100 | user_tier="gold""#).await.len(), 1);
    assert_eq!(only(r#"{service_name="checkout"} | logfmt | duration > 1s"#).await.len(), 1);
    assert_eq!(only(r#"{service_name="checkout"} | logfmt | status == 503 or msg=~"slow.*""#).await.len(), 1);
    assert_eq!(only(r#"{service_name="payments"} | json | event="refund""#).await, ["{event: refund, amount: 3}"]);

    // Parsed labels appear on the stream; a failed parse is flagged, and can be dropped.
    let v = get_json(app, &query_range(r#"{service_name="checkout", level="INFO"} | json"#, 0, 10, &[])).await;
    let streams = v["data"]["result"].as_array().unwrap();
    let parsed = streams.iter().find(|s| s["stream"]["user_id"] == "u1").expect("json stream");
    assert_eq!(parsed["stream"]["user_tier"], "gold");
    assert_eq!(parsed["stream"]["latency_ms"], "250");
    let failed = streams.iter().find(|s| s["stream"]["__error__"] == "JSONParserErr").expect("error stream");
    assert_eq!(failed["stream"]["http_method"], "GET");
    let v = get_json(app, &query_range(r#"{service_name="checkout"} | json | __error__="""#, 0, 10, &[])).await;
    assert_eq!(lines(&v).len(), 1);
    let v = get_json(
        app,
        &query_range(
            r#"{service_name="checkout"} | json | drop __error__, __error_details__ | keep service_name, user_id"#,
            0,
            10,
            &[],
        ),
    )
    .await;
    let labels: Vec<&Value> = v["data"]["result"].as_array().unwrap().iter().map(|s| &s["stream"]).collect();
    assert!(labels.contains(&&json!({ "service_name": "checkout", "user_id": "u1" })));
    assert!(labels.contains(&&json!({ "service_name": "checkout" })));
}

#[tokio::test]
async fn limits_directions_and_paging_through_time() {
    let h = disk().await;
    let app = &h.app;
    let q = |query: &'static str, limit: &'static str, dir: &'static str| {
        let app = app.clone();
        async move {
            let v = get_json(&app, &query_range(query, 0, 200, &[("limit", limit), ("direction", dir)])).await;
            let mut got = lines(&v);
            if dir == "forward" {
                got.reverse();
            }
            got.into_iter().map(|(_, l)| l).collect::<Vec<_>>()
        }
    };
    // Twelve records share one timestamp: a page boundary inside them loses none.
    let got = q(r#"{service_name="burst"}"#, "10", "backward").await;
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|l| l.starts_with("same")));
    let got = q(r#"{service_name="burst"}"#, "14", "backward").await;
    assert_eq!(got.iter().filter(|l| l.starts_with("same")).count(), 12);
    assert_eq!(&got[12..], ["early 2", "early 1"]);
    assert_eq!(q(r#"{service_name="burst"}"#, "2", "forward").await, ["early 0", "early 1"]);
    // Post-filters keep fetching older windows until the limit is met.
    assert_eq!(q(r#"{service_name="ticker"} |~ "tick (1|2) ""#, "5", "backward").await, ["tick 2 ok", "tick 1 ok"]);
    assert_eq!(
        q(r#"{service_name="ticker"} |= "failed""#, "3", "backward").await,
        ["tick 57 failed", "tick 54 failed", "tick 51 failed"]
    );
    assert_eq!(q(r#"{service_name="ticker"} |= "failed""#, "2", "forward").await, ["tick 0 failed", "tick 3 failed"]);
    // The default limit is 100.
    let v = get_json(app, &query_range(r#"{service_name=~".+"}"#, 0, 200, &[])).await;
    assert_eq!(lines(&v).len(), 82);
    // The end is exclusive, the start inclusive.
    let (from, to) = (t(101).to_string(), t(103).to_string());
    let v = get_json(
        app,
        &url("/loki/api/v1/query_range", &[("query", r#"{service_name="ticker"}"#), ("start", &from), ("end", &to)]),
    )
    .await;
    assert_eq!(lines(&v).into_iter().map(|(_, l)| l).collect::<Vec<_>>(), ["tick 2 ok", "tick 1 ok"]);
}

#[tokio::test]
async fn metadata_endpoints() {
    let h = disk().await;
    let app = &h.app;
    let (start, end) = ((T0).to_string(), (T0 + 200 * SEC).to_string());
    let span = [("start", start.as_str()), ("end", end.as_str())];
    let with = |q: &'static str| {
        let mut p = span.to_vec();
        p.push(("query", q));
        p
    };
    let v = get_json(app, &url("/loki/api/v1/labels", &with(r#"{service_name="payments"}"#))).await;
    assert_eq!(v["data"], json!(["deployment_environment", "level", "service_name", "service_namespace"]));

    let v = get_json(app, &url("/loki/api/v1/index/volume", &with(r#"{service_name=~".+"}"#))).await;
    assert_eq!(v["data"]["resultType"], "vector");
    let order: Vec<&str> =
        v["data"]["result"].as_array().unwrap().iter().map(|s| s["metric"]["service_name"].as_str().unwrap()).collect();
    assert_eq!(order[0], "ticker", "largest volume first: {v}");
    assert_eq!(order.len(), 4);

    let mut p = with(r#"{service_name="ticker"}"#);
    p.push(("step", "100s"));
    let v = get_json(app, &url("/loki/api/v1/index/volume_range", &p)).await;
    assert_eq!(v["data"]["resultType"], "matrix");
    assert_eq!(v["data"]["result"][0]["metric"], json!({ "service_name": "ticker" }));

    let v = get_json(app, &url("/loki/api/v1/detected_labels", &with(r#"{service_namespace="shop"}"#))).await;
    assert!(v["detectedLabels"].as_array().unwrap().contains(&json!({ "label": "service_name", "cardinality": 2 })));

    let v = get_json(app, &url("/loki/api/v1/detected_fields", &with(r#"{service_name="checkout"}"#))).await;
    let fields: BTreeMap<&str, &Value> =
        v["fields"].as_array().unwrap().iter().map(|f| (f["label"].as_str().unwrap(), f)).collect();
    assert_eq!(fields["latency_ms"]["type"], "int");
    assert_eq!(fields["latency_ms"]["parsers"], json!(["json"]));
    assert_eq!(fields["duration"]["type"], "duration");
    assert_eq!(fields["duration"]["parsers"], json!(["logfmt"]));
    assert_eq!(fields["http_method"]["parsers"], Value::Null, "structured metadata");
    assert_eq!(fields["trace_id"]["cardinality"], 1);

    let v = get_json(app, &url("/loki/api/v1/format_query", &[("query", r#"sum by(level)(rate({a="b"}|="x"[1m]))"#)]))
        .await;
    assert_eq!(v["data"], r#"sum by (level) (rate({a="b"} |= "x" [1m]))"#);
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_problem() {
    let h = disk().await;
    let app = &h.app;
    let cases: Vec<(String, &str)> = vec![
        (
            query_range(r#"{service_name="x""#, 0, 10, &[]),
            "parse error at line 1, col 18: syntax error: unexpected end of query",
        ),
        (query_range(r#"{service_name=~"(x"}"#, 0, 10, &[]), "invalid regular expression \"(x\""),
        (query_range(r#"{a="b"} |~ "a{2""#, 0, 10, &[]), "invalid regular expression"),
        (query_range(r#"{a="b"}"#, 10, 0, &[]), "end timestamp must not be before start time"),
        (
            query_range(r#"{a="b"}"#, 0, 10, &[("limit", "5001")]),
            "max entries limit per query exceeded, limit > max_entries_limit (5001 > 5000)",
        ),
        (query_range(r#"{a="b"}"#, 0, 10, &[("limit", "0")]), "limit must be a positive value"),
        (query_range(r#"{a="b"}"#, 0, 10, &[("limit", "ten")]), "invalid limit parameter"),
        (query_range(r#"{a="b"}"#, 0, 10, &[("direction", "sideways")]), "invalid direction"),
        (
            query_range(r#"{a="b"} | line_format "{{.x}}""#, 0, 10, &[]),
            "unsupported LogQL: line_format (supported: see docs/logql.md)",
        ),
        (
            query_range(r#"quantile_over_time(0.5, {a="b"} | unwrap x [1m])"#, 0, 10, &[]),
            "unsupported LogQL: quantile_over_time",
        ),
        (query_range(r#"rate({a="b"}[1m] offset 5m)"#, 0, 10, &[]), "unsupported LogQL: offset"),
        (query_range(r#"rate({a="b"}[1m])"#, 0, 10, &[("step", "0")]), "invalid step parameter"),
        (
            query_range(r#"rate({a="b"}[1m])"#, 0, 20_000, &[("step", "1")]),
            "exceeded maximum resolution of 11,000 points",
        ),
        (query_range(r#"{a=~".*"}"#, 0, 10, &[]), "at least one regexp or equality matcher"),
        (query_range(r#"{a="b"}"#, 0, 10, &[("interval", "10s")]), "interval parameter is not supported"),
        (
            query_range(r#"count_over_time({service_name="checkout"} | json [1m])"#, 0, 60, &[("step", "60")]),
            "pipeline error: 'JSONParserErr'",
        ),
        (
            url("/loki/api/v1/query_range", &[("query", r#"{a="b"}"#), ("start", "yesterday")]),
            "invalid start parameter: cannot parse \"yesterday\"",
        ),
        (url("/loki/api/v1/query_range", &[("start", "1")]), "missing query parameter"),
        (
            url("/loki/api/v1/query", &[("query", r#"{a="b"}"#)]),
            "log queries are not supported as an instant query type",
        ),
        (url("/loki/api/v1/query", &[("query", "1 > 2")]), "bool modifier"),
        (url("/loki/api/v1/series", &[]), "missing match[] parameter"),
        (url("/loki/api/v1/series", &[("match[]", "{a=}")]), "parse error"),
        (url("/loki/api/v1/index/stats", &[("query", "rate(x)")]), "parse error"),
        (
            url("/loki/api/v1/index/volume", &[("query", r#"{a="b"}"#), ("aggregateBy", "labels")]),
            "aggregateBy=labels is not supported",
        ),
        (
            url("/loki/api/v1/label/level/values", &[("start", "5"), ("end", "4")]),
            "end timestamp must not be before start time",
        ),
        (url("/loki/api/v1/detected_fields", &[("query", r#"rate({a="b"}[1m])"#)]), "needs a log query"),
    ];
    for (uri, want) in cases {
        let msg = get_400(app, &uri).await;
        assert!(msg.contains(want), "{uri}: {msg:?} does not contain {want:?}");
    }
    let (status, _, body) = get(app, "/loki/api/v1/tail?query=%7Ba%3D%22b%22%7D").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("live tailing is not supported"));
    let (status, _, _) = get(app, "/loki/api/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn post_form_bodies_are_read() {
    let h = disk().await;
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", r#"{service_name="payments"}"#)
        .append_pair("start", &T0.to_string())
        .append_pair("end", &(T0 + 10 * SEC).to_string())
        .finish();
    let req = Request::post("/loki/api/v1/query_range")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    let resp = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(lines(&v).len(), 3);
}

/// The disk store (tantivy pushdown) and the in-memory reference store answer alike.
#[tokio::test]
async fn disk_and_memory_stores_agree() {
    let (d, m) = (disk().await, memory().await);
    let logs = [
        r#"{service_namespace="shop"}"#,
        r#"{service_name=~"check.*|pay.*"} |= "level=warn msg" | logfmt | status >= 500"#,
        r#"{service_name="checkout"} |= " /api/cart " | http_method="GET""#,
        r#"{deployment_environment!="staging", service_name=~".+"} != "tick""#,
        r#"{level=~"warn|DEBUG"}"#,
        r#"{service_name="ticker"} |~ "tick [0-9]+ failed""#,
    ];
    for q in logs {
        let uri = query_range(q, 0, 200, &[("limit", "1000")]);
        assert_eq!(lines(&get_json(&d.app, &uri).await), lines(&get_json(&m.app, &uri).await), "{q}");
    }
    let metrics = [
        r#"sum by (level) (count_over_time({service_name=~".+"}[30s]))"#,
        r#"sum by (service_name) (rate({deployment_environment="prod"} |= " ok" [1m]))"#,
        r#"count_over_time({service_namespace="shop"}[1m])"#,
        r#"max by (service_name) (bytes_over_time({service_name=~".+"}[1m]))"#,
    ];
    for q in metrics {
        let uri = query_range(q, 0, 180, &[("step", "30s")]);
        let (a, b) = (get_json(&d.app, &uri).await, get_json(&m.app, &uri).await);
        assert_eq!(a["data"]["result"], b["data"]["result"], "{q}");
    }
}

/// More records than a metric query counts in memory: refused with a 400; the index-only path
/// still answers.
#[tokio::test]
async fn too_expensive_metric_queries_are_refused() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value as V};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    const N: u64 = 100_001;
    let records = (0..N)
        .map(|i| LogRecord {
            time_unix_nano: T0 + i * 1_000_000,
            body: Some(AnyValue { value: Some(V::StringValue("x".into())) }),
            ..Default::default()
        })
        .collect();
    let batch = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue { value: Some(V::StringValue("big".into())) }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs { log_records: records, ..Default::default() }],
            ..Default::default()
        }],
    };
    let h = disk_with(batch, N as usize).await;
    let msg =
        get_400(&h.app, &query_range(r#"count_over_time({service_name="big"}[5m])"#, 0, 300, &[("step", "300")])).await;
    assert!(msg.contains("query too expensive: it would read 100001 log lines"), "{msg}");
    let v = get_json(
        &h.app,
        &query_range(r#"sum(count_over_time({service_name="big"}[5m]))"#, 300, 300, &[("step", "300")]),
    )
    .await;
    assert_eq!(v["data"]["result"][0]["values"][0][1], "100001");
    // A log query still answers, newest first.
    let v = get_json(&h.app, &query_range(r#"{service_name="big"}"#, 0, 300, &[("limit", "5")])).await;
    assert_eq!(lines(&v)[0].0, T0 + (N - 1) * 1_000_000);
}
