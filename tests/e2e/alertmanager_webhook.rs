//! Alertmanager's webhook into obsbox end to end: a real Alertmanager (Debian's
//! `/usr/bin/prometheus-alertmanager`, on loopback, killed on drop) with a `webhook_configs`
//! receiver pointing at obsbox's `POST /v1/alertmanager` takes an alert on its `/api/v2/alerts`,
//! notifies obsbox, and the alert is then a log record in obsbox's `/api/v1/logs` and its Loki
//! API, firing and then resolved. Bad requests to the route get a 4xx with a message.

use crate::common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Addrs;
use common::compose::require_external;
use common::free_port;
use serde_json::{Value, json};

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Alertmanager with one route to obsbox's webhook, flushing groups at once and every
/// second (so the resolved notification follows quickly); returns it and its base URL.
async fn start_alertmanager(dir: &std::path::Path, obsbox_http: std::net::SocketAddr) -> (Kill, String) {
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "route:\n  receiver: obsbox\n  group_by: [alertname, service]\n  group_wait: 0s\n  group_interval: 1s\n  \
             repeat_interval: 1h\nreceivers:\n  - name: obsbox\n    webhook_configs:\n      - url: \
             http://{obsbox_http}/v1/alertmanager\n        send_resolved: true\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.join("alertmanager.log");
    let child = Command::new(ALERTMANAGER)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("start alertmanager");
    let mut am = Kill(child);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client.get(format!("{base}/-/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
            return (am, base);
        }
        if let Ok(Some(status)) = am.0.try_wait() {
            panic!("alertmanager exited with {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(Instant::now() < deadline, "alertmanager not ready: {}", std::fs::read_to_string(&log).unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The string attributes of an OTLP/JSON log record.
fn attributes(record: &Value) -> BTreeMap<String, String> {
    record["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| Some((kv["key"].as_str()?.to_string(), kv["value"]["stringValue"].as_str()?.to_string())))
        .collect()
}

/// Waits for a record of `service:alertmanager` whose `alert.status` is `status`.
async fn wait_for_record(client: &reqwest::Client, obsbox: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer: Value = client
            .get(
                reqwest::Url::parse_with_params(
                    &format!("{obsbox}/api/v1/logs"),
                    [("query", "service:alertmanager"), ("lookback", "1h")],
                )
                .unwrap(),
            )
            .send()
            .await
            .expect("query logs")
            .json()
            .await
            .expect("logs json");
        let found = answer["logs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| attributes(&l["record"]).get("alert.status").map(String::as_str) == Some(status));
        if let Some(log) = found {
            return log.clone();
        }
        assert!(Instant::now() < deadline, "no {status} alert record in obsbox: {answer}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_notifications_become_log_records() {
    if !require_external(ALERTMANAGER, "prometheus-alertmanager") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let obsbox = common::start_obsbox(&tmp.path().join("data")).await;
    let addrs = Addrs::of(&obsbox);
    let (_am, am) = start_alertmanager(tmp.path(), addrs.otlp_http).await;
    let client = reqwest::Client::new();
    let ui = format!("http://{}", addrs.http);

    let started = jiff::Timestamp::now();
    let alert = json!({
        "labels": {"alertname": "CheckoutErrors", "service": "orders", "severity": "critical"},
        "annotations": {"summary": "orders fails 7% of checkouts", "runbook_url": "http://runbooks/checkout"},
        "generatorURL": "http://prometheus:9090/graph?g0.expr=checkout_errors"
    });
    let r = client.post(format!("{am}/api/v2/alerts")).json(&json!([alert])).send().await.unwrap();
    assert!(r.status().is_success(), "post alert: {}", r.status());

    let firing = wait_for_record(&client, &ui, "firing").await;
    let record = &firing["record"];
    assert_eq!(firing["service"], "alertmanager");
    assert_eq!(record["body"]["stringValue"], "orders fails 7% of checkouts");
    assert_eq!(record["severityText"], "ERROR");
    assert_eq!(record["severityNumber"], 17);
    let a = attributes(record);
    assert_eq!(a["alert.label.alertname"], "CheckoutErrors");
    assert_eq!(a["alert.label.service"], "orders");
    assert_eq!(a["alert.label.severity"], "critical");
    assert_eq!(a["alert.annotation.runbook_url"], "http://runbooks/checkout");
    assert_eq!(a["alert.generator_url"], "http://prometheus:9090/graph?g0.expr=checkout_errors");
    assert_eq!(a["alert.receiver"], "obsbox");
    assert!(a["alert.group_key"].contains("alertname=\"CheckoutErrors\""), "{a:?}");
    assert_eq!(a["alert.fingerprint"].len(), 16, "{a:?}");
    // Alertmanager set startsAt when it took the alert.
    let time = |key: &str, a: &BTreeMap<String, String>| -> jiff::Timestamp {
        a[key].parse().unwrap_or_else(|e| panic!("{key}: {e}: {a:?}"))
    };
    assert!(time("alert.starts_at", &a) >= started - jiff::SignedDuration::from_secs(5), "{a:?}");
    // A firing alert's end, when Alertmanager sends one, is its estimate of the future end.
    if a.contains_key("alert.ends_at") {
        assert!(time("alert.ends_at", &a) > time("alert.starts_at", &a), "{a:?}");
    }

    // Resolving it: Alertmanager sends the resolved notification on the group's next flush.
    let resolved = json!([{
        "labels": alert["labels"],
        "annotations": alert["annotations"],
        "generatorURL": alert["generatorURL"],
        "startsAt": a["alert.starts_at"],
        "endsAt": (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1)).to_string(),
    }]);
    let r = client.post(format!("{am}/api/v2/alerts")).json(&resolved).send().await.unwrap();
    assert!(r.status().is_success(), "resolve alert: {}", r.status());
    let resolved = wait_for_record(&client, &ui, "resolved").await;
    let r = attributes(&resolved["record"]);
    assert_eq!(r["alert.fingerprint"], a["alert.fingerprint"], "the same alert");
    assert!(time("alert.ends_at", &r) > time("alert.starts_at", &r), "{r:?}");

    // Grafana's way in: the Loki API, by stream and by the alert's labels.
    // At least the firing and the resolved record (a notification may be delivered twice).
    for (query, want) in [
        (r#"{service_name="alertmanager"}"#, true),
        (r#"{service_name="alertmanager"} | alert_label_service="orders""#, true),
        (r#"{service_name="alertmanager"} | alert_label_service="payments""#, false),
    ] {
        let answer: Value = client
            .get(
                reqwest::Url::parse_with_params(
                    &format!("{ui}/loki/api/v1/query_range"),
                    [("query", query), ("limit", "10"), ("since", "1h")],
                )
                .unwrap(),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let lines: Vec<String> = answer["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v[1].as_str().map(String::from))
            .collect();
        if want {
            assert!(lines.len() >= 2, "{query}: {answer}");
            assert!(lines.iter().all(|l| l == "orders fails 7% of checkouts"), "{query}: {lines:?}");
        } else {
            assert!(lines.is_empty(), "{query}: {answer}");
        }
    }

    obsbox.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhook_requests_get_a_4xx_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = common::test_config(tmp.path());
    config.limits.max_body_bytes = 64 * 1024;
    let obsbox = common::start_obsbox_with(config).await;
    let url = format!("http://{}/v1/alertmanager", Addrs::of(&obsbox).otlp_http);
    let client = reqwest::Client::new();
    let post = |body: String, content_type: &'static str| {
        let req = client.post(&url).header("content-type", content_type).body(body);
        async move {
            let r = req.send().await.expect("post");
            let status = r.status().as_u16();
            let body: Value = r.json().await.expect("json error body");
            (status, body["error"].as_str().unwrap_or_default().to_string())
        }
    };

    let (status, message) = post("{\"version\": \"4\", \"alerts\": [".into(), "application/json").await;
    assert_eq!(status, 400);
    assert!(message.starts_with("invalid JSON (line 1 column 28): EOF while parsing a list"), "{message}");

    let (status, message) = post(r#"{"version": "4", "status": "firing", "receiver": "r", "groupKey": "{}", "alerts": [{"status": "firing", "labels": {"a": 1}, "startsAt": "2026-01-01T00:00:00Z"}]}"#.into(), "application/json").await;
    assert_eq!(status, 400);
    assert!(message.starts_with("invalid Alertmanager webhook payload at `alerts[0].labels.a`"), "{message}");

    // What Alertmanager's own API takes, posted here by mistake.
    let (status, message) = post(r#"[{"labels": {"alertname": "A"}}]"#.into(), "application/json").await;
    assert_eq!(status, 400);
    assert!(message.contains("/api/v2/alerts"), "{message}");

    let (status, message) = post(format!("{{\"pad\": \"{}\"}}", "x".repeat(100_000)), "application/json").await;
    assert_eq!(status, 413);
    assert_eq!(message, "request body is larger than the limit of 65536 bytes");

    let (status, message) = post("version=4".into(), "application/x-www-form-urlencoded").await;
    assert_eq!(status, 415);
    assert!(message.contains("expected application/json"), "{message}");

    obsbox.shutdown().await.expect("clean shutdown");
}
