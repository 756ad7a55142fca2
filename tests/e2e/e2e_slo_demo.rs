//! The SLO alerting demo end to end: `obsbox demo` with compressed SLO time evaluates the demo's
//! SLOs; injecting payment errors through the demo's fault CLI turns the payments page alert to
//! firing, clearing the fault resolves it, and a webhook receiver sees both notifications in the
//! Alertmanager webhook format. The SLO API and pages show the same.

use crate::common;

use std::time::{Duration, Instant};

use common::spawn_binary;
use common::webhook::WebhookReceiver;
use serde_json::Value;

/// The demo SLO the payment-error fault burns.
const SLO: &str = "payments-availability";

/// Alerts of `SLO` with `severity=page` and the given status in the webhook bodies.
fn page_alerts(bodies: &[Value], status: &str) -> usize {
    bodies
        .iter()
        .flat_map(|b| b["alerts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["status"] == status && a["labels"]["slo"] == SLO && a["labels"]["severity"] == "page")
        .count()
}

#[test]
fn injected_payment_errors_fire_the_page_alert_and_clearing_them_resolves_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let receiver = WebhookReceiver::start();
    let config = tmp.path().join("obsbox.toml");
    std::fs::write(&config, format!("[slo.notify]\nwebhooks = [\"{}\"]\n", receiver.url())).unwrap();
    let mut obsbox = spawn_binary(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "demo",
            "--base-port",
            "0",
            "--rate",
            "20",
            "--users",
            "10",
            "--think",
            "20ms",
            "--slo-time-scale",
            "60",
        ],
    );
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let base = format!("http://{}", obsbox.addrs.http);
    let slo = || -> Value {
        let resp = client.get(format!("{base}/api/v1/slos/{SLO}")).send().expect("GET slo");
        assert!(resp.status().is_success(), "GET /api/v1/slos/{SLO}: {}", resp.status());
        resp.json().expect("slo json")
    };
    let wait = |what: &str, timeout: Duration, mut ok: Box<dyn FnMut() -> bool + '_>| {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("{what} within {timeout:?}; webhook bodies: {:?}; stderr:\n{}", receiver.bodies(), obsbox.stderr_tail());
    };
    // Healthy traffic first: the SLO has data and nothing fires.
    wait("the payments SLO has events", Duration::from_secs(90), Box::new(|| slo()["summary"]["health"] != "no_data"));
    assert_eq!(page_alerts(&receiver.bodies(), "firing"), 0, "a page alert fired without a fault");

    let registry_log = std::fs::read_to_string(data.join("demo/logs/registry.log")).expect("registry log");
    let registry =
        registry_log.lines().find_map(|l| l.strip_prefix("listening ")).expect("registry address").to_owned();
    let faults = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_obsbox"))
            .args(["demo", "faults"])
            .args(args)
            .args(["--registry", &registry])
            .output()
            .expect("run obsbox demo faults");
        assert!(out.status.success(), "faults {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    faults(&["set", "payments", "--error-rate", "0.8"]);
    let injected = Instant::now();
    wait(
        "a firing page notification for the payments SLO",
        Duration::from_secs(180),
        Box::new(|| page_alerts(&receiver.bodies(), "firing") > 0),
    );
    let fired_after = injected.elapsed();
    let detail = slo();
    assert!(
        detail["alerts"].as_array().into_iter().flatten().any(|a| a["state"] == "firing" && a["severity"] == "page"),
        "the API shows the firing alert: {detail}"
    );
    let page = client.get(format!("{base}/slo/{SLO}")).send().unwrap().text().unwrap();
    assert!(page.contains("firing"), "the SLO page shows the firing alert");

    faults(&["clear", "payments"]);
    let cleared = Instant::now();
    wait(
        "a resolved page notification for the payments SLO",
        Duration::from_secs(180),
        Box::new(|| page_alerts(&receiver.bodies(), "resolved") > 0),
    );
    eprintln!("page alert fired {fired_after:?} after the fault, resolved {:?} after clearing it", cleared.elapsed());
    let history = slo()["history"].as_array().cloned().unwrap_or_default();
    assert!(history.iter().any(|t| t["to"] == "firing"), "history has the firing transition: {history:?}");
    assert!(history.iter().any(|t| t["to"] == "resolved"), "history has the resolution: {history:?}");
    assert!(obsbox.terminate(Duration::from_secs(60)), "clean stop; stderr:\n{}", obsbox.stderr_tail());
}
