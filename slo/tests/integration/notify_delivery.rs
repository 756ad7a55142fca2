//! Notifications end to end: `Notifier` posting to a webhook receiver (an axum server on a free
//! port) and to a real Alertmanager (Debian's `/usr/bin/prometheus-alertmanager`, started here on
//! loopback and killed on drop) that routes the alerts on to the same receiver.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use obsbox_slo::{Alert, AlertSink, AlertState, Notifier, NotifyConfig, Severity, Transition};
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::Value;

const ALERTMANAGER_BIN: &str = "/usr/bin/prometheus-alertmanager";
const SLO: &str = "checkout-availability";

/// What the receiver saw: every request (path, body) with the status it answered.
#[derive(Clone, Default)]
struct Hook {
    seen: Arc<Mutex<Vec<(String, u16, Value)>>>,
    /// Statuses to answer first, in order; then 200.
    script: Arc<Mutex<Vec<u16>>>,
}

impl Hook {
    /// Starts the receiver on a free loopback port; returns its base URL.
    async fn start(script: Vec<u16>) -> (Hook, String) {
        let hook = Hook { script: Arc::new(Mutex::new(script)), ..Default::default() };
        // GET too, so that a POST turned into a GET by a redirect would be seen "succeeding".
        let app = Router::new().route("/{path}", post(receive).get(receive)).with_state(hook.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (hook, format!("http://{addr}"))
    }

    /// Bodies answered with 200 on `path`.
    fn accepted(&self, path: &str) -> Vec<Value> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|(p, s, _)| p == path && *s == 200).map(|(_, _, v)| v.clone()).collect()
    }

    fn attempts(&self, path: &str) -> Vec<u16> {
        self.seen.lock().unwrap().iter().filter(|(p, ..)| p == path).map(|(_, s, _)| *s).collect()
    }

    /// Waits until `path` has accepted `n` bodies; fails after `timeout`.
    async fn wait_accepted(&self, path: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.accepted(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: {} accepted bodies after {timeout:?}, want {n}; attempts {:?}",
                got.len(),
                self.attempts(path)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(
    State(hook): State<Hook>,
    Path(path): Path<String>,
    body: String,
) -> (StatusCode, [(&'static str, &'static str); 1], &'static str) {
    let status = {
        let mut script = hook.script.lock().unwrap();
        if script.is_empty() { 200 } else { script.remove(0) }
    };
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    hook.seen.lock().unwrap().push((path, status, value));
    // Redirects point to /moved.
    let location = [("location", "/moved")];
    (StatusCode::from_u16(status).unwrap(), location, if status == 200 { "ok" } else { "receiver says no" })
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn alert(state: AlertState, fired_at_ms: i64, resolved_at_ms: Option<i64>) -> Alert {
    Alert {
        slo: SLO.into(),
        tier: "page-fast".into(),
        severity: Severity::Page,
        state,
        since_ms: resolved_at_ms.unwrap_or(fired_at_ms),
        fired_at_ms: Some(fired_at_ms),
        resolved_at_ms,
        labels: vec![
            ("alertname".into(), "SLOBurnRateHigh".into()),
            ("slo".into(), SLO.into()),
            ("service".into(), "checkout".into()),
            ("severity".into(), "page".into()),
            ("tier".into(), "page-fast".into()),
        ],
        annotations: vec![
            ("summary".into(), "checkout-availability burns its error budget 20x too fast".into()),
            ("burn_rate_long".into(), "20.5".into()),
        ],
        webhooks: Vec::new(),
    }
}

fn transition(from: AlertState, to: AlertState, at_ms: i64) -> Transition {
    Transition {
        at_ms,
        slo: SLO.into(),
        tier: "page-fast".into(),
        severity: Severity::Page,
        from,
        to,
        long: Some(20.5),
        short: Some(31.0),
    }
}

/// The value of one sample in the text exposition of `registry` (0 when absent).
fn metric(registry: &Registry, series: &str) -> f64 {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().unwrap())
}

fn config(webhooks: Vec<String>, alertmanagers: Vec<String>) -> NotifyConfig {
    NotifyConfig { webhooks, alertmanagers, external_url: Some("http://obsbox.test:16686/".into()) }
}

#[tokio::test]
async fn webhook_gets_firing_then_resolved_with_retries() {
    let (hook, base) = Hook::start(vec![503, 503]).await;
    let registry = Registry::new();
    let notifier = Arc::new(Notifier::start(&config(vec![format!("{base}/direct")], vec![]), &registry).unwrap());
    // As the engine holds it: a boxed sink, while the caller keeps the notifier to close it.
    let sink: Box<dyn AlertSink> = Box::new(notifier.clone());
    let fired = now_ms();

    sink.deliver(
        &[alert(AlertState::Firing, fired, None)],
        &[transition(AlertState::Pending, AlertState::Firing, fired)],
    );
    let got = hook.wait_accepted("direct", 1, Duration::from_secs(20)).await;
    assert_eq!(hook.attempts("direct"), vec![503, 503, 200], "503 is retried");
    let m = &got[0];
    assert_eq!(m["version"], "4");
    assert_eq!(m["status"], "firing");
    assert_eq!(m["groupKey"], format!("{{}}:{{slo=\"{SLO}\"}}"));
    assert_eq!(m["groupLabels"]["slo"], SLO);
    assert_eq!(m["externalURL"], "http://obsbox.test:16686");
    assert_eq!(m["alerts"][0]["status"], "firing");
    assert_eq!(m["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(m["alerts"][0]["generatorURL"], format!("http://obsbox.test:16686/slo/{SLO}"));
    assert_eq!(m["alerts"][0]["labels"]["tier"], "page-fast");

    // Still firing at the next evaluation: no new webhook message.
    sink.deliver(&[alert(AlertState::Firing, fired, None)], &[]);
    let resolved = fired + 1_000;
    sink.deliver(
        &[alert(AlertState::Resolved, fired, Some(resolved))],
        &[transition(AlertState::Firing, AlertState::Resolved, resolved)],
    );
    let got = hook.wait_accepted("direct", 2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2, "one message per firing/resolved transition");
    assert_eq!(got[1]["status"], "resolved");
    assert_eq!(got[1]["alerts"][0]["status"], "resolved");
    assert_ne!(got[1]["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(got[1]["alerts"][0]["fingerprint"], got[0]["alerts"][0]["fingerprint"], "same alert, same fingerprint");

    notifier.close(Duration::from_secs(5)).await;
    sink.deliver(
        &[alert(AlertState::Firing, fired, None)],
        &[transition(AlertState::Pending, AlertState::Firing, fired)],
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hook.attempts("direct").len(), 4, "nothing is sent after close");
    assert_eq!(metric(&registry, r#"obsbox_slo_notifications_total{outcome="sent",receiver_type="webhook"}"#), 2.0);
    assert_eq!(metric(&registry, r#"obsbox_slo_notifications_total{outcome="failed",receiver_type="webhook"}"#), 0.0);
    assert_eq!(metric(&registry, r#"obsbox_slo_notification_queue{receiver_type="webhook"}"#), 0.0);
}

#[tokio::test]
async fn webhook_4xx_is_not_retried() {
    let (hook, base) = Hook::start(vec![400]).await;
    let registry = Registry::new();
    let notifier = Notifier::start(&config(vec![format!("{base}/strict")], vec![]), &registry).unwrap();
    let t = now_ms();
    notifier.deliver(&[alert(AlertState::Firing, t, None)], &[transition(AlertState::Pending, AlertState::Firing, t)]);
    notifier.close(Duration::from_secs(5)).await;
    assert_eq!(hook.attempts("strict"), vec![400], "a 4xx answer is final");
    assert_eq!(metric(&registry, r#"obsbox_slo_notifications_total{outcome="failed",receiver_type="webhook"}"#), 1.0);
}

#[tokio::test]
async fn only_redirects_that_keep_the_post_are_followed() {
    let (hook, base) = Hook::start(vec![308, 200, 302]).await; // old, moved, old
    let registry = Registry::new();
    let notifier = Notifier::start(&config(vec![format!("{base}/old")], vec![]), &registry).unwrap();
    let t = now_ms();
    for _ in 0..2 {
        notifier
            .deliver(&[alert(AlertState::Firing, t, None)], &[transition(AlertState::Pending, AlertState::Firing, t)]);
    }
    notifier.close(Duration::from_secs(5)).await;
    assert_eq!(hook.attempts("old"), vec![308, 302]);
    assert_eq!(hook.accepted("moved").len(), 1, "308 is followed with the same POST body");
    assert_eq!(hook.accepted("moved")[0]["version"], "4");
    let failed = r#"obsbox_slo_notifications_total{outcome="failed",receiver_type="webhook"}"#;
    assert_eq!(metric(&registry, failed), 1.0, "302 would turn the POST into a GET: not followed");
}

#[tokio::test]
async fn dead_receiver_never_blocks_the_caller_and_drops_the_oldest() {
    // A port nobody listens on: every attempt is refused and retried with backoff.
    let dead = {
        let l = StdListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let registry = Registry::new();
    let notifier = Notifier::start(&config(vec![format!("http://{dead}/hook")], vec![]), &registry).unwrap();
    let t = now_ms();
    let started = Instant::now();
    for i in 0..1_000 {
        let (from, to) = if i % 2 == 0 {
            (AlertState::Pending, AlertState::Firing)
        } else {
            (AlertState::Firing, AlertState::Resolved)
        };
        let a = alert(to, t, (to == AlertState::Resolved).then_some(t + i));
        notifier.deliver(&[a], &[transition(from, to, t + i)]);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "1000 deliveries took {took:?}");
    let queued = metric(&registry, r#"obsbox_slo_notification_queue{receiver_type="webhook"}"#);
    let dropped = metric(&registry, r#"obsbox_slo_notifications_dropped_total{receiver_type="webhook"}"#);
    assert!(queued <= 256.0, "bounded queue: {queued}");
    assert!(dropped >= 1_000.0 - 256.0 - 1.0, "dropped {dropped}");
    let started = Instant::now();
    notifier.close(Duration::from_millis(300)).await;
    assert!(started.elapsed() < Duration::from_secs(2), "close honours its timeout");
}

#[tokio::test]
async fn a_dead_receiver_does_not_delay_the_others() {
    let dead = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (hook, base) = Hook::start(vec![]).await;
    let webhooks = vec![format!("http://{dead}/hook"), format!("{base}/live")];
    let registry = Registry::new();
    let notifier = Notifier::start(&config(webhooks, vec![]), &registry).unwrap();
    let t = now_ms();
    let started = Instant::now();
    for _ in 0..3 {
        notifier
            .deliver(&[alert(AlertState::Firing, t, None)], &[transition(AlertState::Pending, AlertState::Firing, t)]);
    }
    // Behind the dead receiver, the first message would wait for all its retries (0.5 + 1 + 2 + 4
    // + 8 s); with its own queue it arrives at once (10 s: slack for a loaded machine).
    hook.wait_accepted("live", 3, Duration::from_secs(10)).await;
    assert!(started.elapsed() < Duration::from_secs(10), "live receiver waited {:?}", started.elapsed());
    // Counted once the answer is read, a moment after the receiver saw the request.
    let sent = r#"obsbox_slo_notifications_total{outcome="sent",receiver_type="webhook"}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&registry, sent) < 3.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&registry, sent), 3.0);
    notifier.close(Duration::from_millis(100)).await;
}

/// A real Alertmanager on loopback, killed on drop.
struct Alertmanager {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Alertmanager {
    /// Starts Alertmanager routing every alert, grouped by `slo`, to `webhook_url`; `None` only
    /// when the binary is missing and `OBSBOX_SKIP_EXTERNAL=1`.
    async fn start(webhook_url: &str) -> Option<Alertmanager> {
        if !std::path::Path::new(ALERTMANAGER_BIN).exists() {
            if std::env::var("OBSBOX_SKIP_EXTERNAL").as_deref() == Ok("1") {
                eprintln!("skipping: {ALERTMANAGER_BIN} not found and OBSBOX_SKIP_EXTERNAL=1");
                return None;
            }
            panic!(
                "{ALERTMANAGER_BIN} not found: install Debian's prometheus-alertmanager package \
                 (apt-get install prometheus-alertmanager), or set OBSBOX_SKIP_EXTERNAL=1"
            );
        }
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(webhook_url).await {
                Ok(am) => return Some(am),
                Err(e) => last = e,
            }
        }
        panic!("alertmanager did not start: {last}");
    }

    async fn try_start(webhook_url: &str) -> Result<Alertmanager, String> {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "route:\n  receiver: test\n  group_by: ['slo']\n  group_wait: 0s\n  group_interval: 1s\n  \
             repeat_interval: 1h\nreceivers:\n  - name: test\n    webhook_configs:\n      - url: '{webhook_url}'\n        \
             send_resolved: true\n"
        );
        let config_path = dir.path().join("alertmanager.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
        let child = Command::new(ALERTMANAGER_BIN)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("cannot run {ALERTMANAGER_BIN}: {e}"))?;
        let mut am = Alertmanager { child, base: format!("http://127.0.0.1:{port}"), dir };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = am.child.try_wait() {
                return Err(format!("exited with {status}: {}", am.log()));
            }
            if client.get(format!("{}/-/ready", am.base)).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(am);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("not ready after 30 s: {}", am.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    /// `GET /api/v2/alerts`: the active alerts of our SLO.
    async fn alerts(&self) -> Vec<Value> {
        let body = reqwest::get(format!("{}/api/v2/alerts", self.base)).await.unwrap().text().await.unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        v.as_array().unwrap().iter().filter(|a| a["labels"]["slo"] == SLO).cloned().collect()
    }
}

/// The object keys of `v`, recursively, as paths (array elements as `[]`).
fn shape(v: &Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = format!("{prefix}.{k}");
                // Label and annotation names are data, not format.
                if !matches!(
                    k.as_str(),
                    "labels" | "annotations" | "groupLabels" | "commonLabels" | "commonAnnotations"
                ) {
                    shape(v, &p, out);
                }
                out.insert(p);
            }
        }
        Value::Array(a) => {
            for v in a {
                shape(v, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn real_alertmanager_receives_routes_and_resolves_the_alert() {
    let (hook, base) = Hook::start(vec![]).await;
    let Some(am) = Alertmanager::start(&format!("{base}/via-am")).await else { return };
    let registry = Registry::new();
    let notifier = Notifier::start(&config(vec![format!("{base}/direct")], vec![am.base.clone()]), &registry).unwrap();

    let fired = now_ms();
    notifier.deliver(
        &[alert(AlertState::Firing, fired, None)],
        &[transition(AlertState::Pending, AlertState::Firing, fired)],
    );

    // Alertmanager holds the alert, active, with the fingerprint our webhook message computed.
    let direct = hook.wait_accepted("direct", 1, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let active = loop {
        let got = am.alerts().await;
        if !got.is_empty() {
            break got;
        }
        assert!(Instant::now() < deadline, "alert not in alertmanager; its log:\n{}", am.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["status"]["state"], "active");
    assert_eq!(active[0]["labels"]["tier"], "page-fast");
    assert_eq!(active[0]["generatorURL"], format!("http://obsbox.test:16686/slo/{SLO}"));
    assert_eq!(active[0]["fingerprint"], direct[0]["alerts"][0]["fingerprint"], "fingerprints agree");

    // Alertmanager routes it to its webhook receiver: the same format as our direct message.
    let via = hook.wait_accepted("via-am", 1, Duration::from_secs(20)).await;
    assert_eq!(via[0]["status"], "firing", "{:#}", via[0]);
    assert_eq!(via[0]["alerts"][0]["labels"], direct[0]["alerts"][0]["labels"]);
    assert_eq!(via[0]["alerts"][0]["fingerprint"], direct[0]["alerts"][0]["fingerprint"]);
    assert_eq!(via[0]["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    let (mut ours, mut theirs) = (Default::default(), Default::default());
    shape(&direct[0], "", &mut ours);
    shape(&via[0], "", &mut theirs);
    assert_eq!(ours, theirs, "our webhook message has exactly Alertmanager's fields");

    // The next evaluation re-posts it (as Prometheus does); then it resolves.
    notifier.deliver(&[alert(AlertState::Firing, fired, None)], &[]);
    let resolved = now_ms();
    notifier.deliver(
        &[alert(AlertState::Resolved, fired, Some(resolved))],
        &[transition(AlertState::Firing, AlertState::Resolved, resolved)],
    );
    let via = hook.wait_accepted("via-am", 2, Duration::from_secs(20)).await;
    let last = via.last().unwrap();
    assert_eq!(last["status"], "resolved", "{last:#}");
    assert_eq!(last["alerts"][0]["status"], "resolved");
    assert!(am.alerts().await.is_empty(), "resolved alerts leave alertmanager's active list");
    let direct = hook.wait_accepted("direct", 2, Duration::from_secs(20)).await;
    assert_eq!(direct[1]["status"], "resolved");

    notifier.close(Duration::from_secs(5)).await;
    assert_eq!(
        metric(&registry, r#"obsbox_slo_notifications_total{outcome="sent",receiver_type="alertmanager"}"#),
        3.0
    );
    assert_eq!(
        metric(&registry, r#"obsbox_slo_notifications_total{outcome="failed",receiver_type="alertmanager"}"#),
        0.0
    );
}

/// An alert of `slo` / `tier` in `state` whose tier's policy names `webhooks`.
fn alert_to(slo: &str, tier: &str, state: AlertState, t: i64, webhooks: &[String]) -> Alert {
    let mut a = alert(state, t, (state == AlertState::Resolved).then_some(t + 1_000));
    a.slo = slo.into();
    a.tier = tier.into();
    for (k, v) in &mut a.labels {
        match k.as_str() {
            "slo" => *v = slo.into(),
            "tier" => *v = tier.into(),
            _ => {}
        }
    }
    a.webhooks = webhooks.to_vec();
    a
}

fn transition_of(slo: &str, tier: &str, from: AlertState, to: AlertState, at_ms: i64) -> Transition {
    Transition { slo: slo.into(), tier: tier.into(), ..transition(from, to, at_ms) }
}

/// (tier, status) of every alert of a webhook message.
fn tiers(message: &Value) -> Vec<(String, String)> {
    let alerts = message["alerts"].as_array().expect("alerts");
    alerts
        .iter()
        .map(|a| (a["labels"]["tier"].as_str().unwrap().into(), a["status"].as_str().unwrap().into()))
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[tokio::test]
async fn notification_targets_get_their_own_alerts_and_the_global_webhook_all() {
    use AlertState::*;
    let (hook, base) = Hook::start(vec![]).await;
    let registry = Registry::new();
    let notifier = Notifier::start(&config(vec![format!("{base}/all")], vec![]), &registry).unwrap();
    let pager = vec![format!("{base}/pager")];
    // A target that is also the global webhook gets its messages once, from the global receiver.
    let tickets = vec![format!("{base}/tickets"), format!("{base}/all")];
    let t = now_ms();
    notifier.deliver(
        &[
            alert_to(SLO, "page-fast", Firing, t, &pager),
            alert_to(SLO, "ticket-slow", Firing, t, &tickets),
            alert_to("other", "page-fast", Firing, t, &[]),
        ],
        &[
            transition_of(SLO, "page-fast", Pending, Firing, t),
            transition_of(SLO, "ticket-slow", Pending, Firing, t),
            transition_of("other", "page-fast", Pending, Firing, t),
        ],
    );
    // Next evaluation: the page alert resolves, the ticket stays firing.
    notifier.deliver(
        &[
            alert_to(SLO, "page-fast", Resolved, t, &pager),
            alert_to(SLO, "ticket-slow", Firing, t, &tickets),
            alert_to("other", "page-fast", Firing, t, &[]),
        ],
        &[transition_of(SLO, "page-fast", Firing, Resolved, t + 1_000)],
    );
    notifier.close(Duration::from_secs(10)).await;

    let all = hook.accepted("all");
    assert_eq!(all.len(), 3, "per SLO and evaluation, every alert: {all:#?}");
    assert_eq!(all[0]["groupLabels"]["slo"], SLO);
    assert_eq!(tiers(&all[0]), pairs(&[("page-fast", "firing"), ("ticket-slow", "firing")]));
    assert_eq!(all[1]["groupLabels"]["slo"], "other");
    assert_eq!(tiers(&all[2]), pairs(&[("page-fast", "resolved"), ("ticket-slow", "firing")]));

    let pages = hook.accepted("pager");
    assert_eq!(pages.len(), 2, "{pages:#?}");
    assert_eq!(tiers(&pages[0]), pairs(&[("page-fast", "firing")]), "only the pager's tier");
    assert_eq!((pages[0]["status"].as_str(), pages[1]["status"].as_str()), (Some("firing"), Some("resolved")));
    assert_eq!(tiers(&pages[1]), pairs(&[("page-fast", "resolved")]));
    assert_eq!(pages[0]["groupKey"], all[0]["groupKey"], "same group, fewer alerts");
    assert_eq!(pages[0]["commonLabels"]["tier"], "page-fast");

    let tickets = hook.accepted("tickets");
    assert_eq!(tickets.len(), 1, "the page alert's resolution is nothing new for tickets: {tickets:#?}");
    assert_eq!(tiers(&tickets[0]), pairs(&[("ticket-slow", "firing")]));

    assert_eq!(hook.attempts("all").len(), 3, "no second copy for a target that is the global webhook");
    assert_eq!(metric(&registry, "obsbox_slo_notification_targets"), 2.0);
    assert_eq!(metric(&registry, r#"obsbox_slo_notifications_total{outcome="sent",receiver_type="webhook"}"#), 6.0);
    assert_eq!(metric(&registry, r#"obsbox_slo_notification_queue{receiver_type="webhook"}"#), 0.0);
}

#[tokio::test]
async fn notification_targets_with_bad_urls_are_refused_and_counted() {
    use AlertState::*;
    let (hook, base) = Hook::start(vec![]).await;
    let registry = Registry::new();
    let notifier = Notifier::start(&config(vec![], vec![]), &registry).unwrap();
    // The parser refuses such URLs; an alert state file could still hold them.
    let bad = vec!["https://hooks.example.com/x".to_string(), "not a url".to_string(), format!("{base}/good")];
    let t = now_ms();
    notifier.deliver(
        &[alert_to(SLO, "page-fast", Firing, t, &bad)],
        &[transition_of(SLO, "page-fast", Pending, Firing, t)],
    );
    // Still firing: no message, so nothing more refused.
    notifier.deliver(&[alert_to(SLO, "page-fast", Firing, t, &bad)], &[]);
    notifier.close(Duration::from_secs(10)).await;
    assert_eq!(hook.accepted("good").len(), 1, "the good URL of the same alert is notified");
    assert_eq!(metric(&registry, r#"obsbox_slo_notifications_refused_total{reason="invalid_url"}"#), 2.0);
    assert_eq!(metric(&registry, r#"obsbox_slo_notifications_refused_total{reason="too_many_targets"}"#), 0.0);
    assert_eq!(metric(&registry, "obsbox_slo_notification_targets"), 1.0);
}

#[tokio::test]
async fn notification_targets_are_bounded_and_idle_ones_make_room() {
    use AlertState::*;
    const MAX: usize = 64;
    let (hook, base) = Hook::start(vec![]).await;
    let dead = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let registry = Registry::new();
    let notifier = Notifier::start(&config(vec![], vec![]), &registry).unwrap();
    let t = now_ms();
    // One alert (tier) per URL, all firing now.
    let fire = |urls: &[String]| {
        let alerts: Vec<Alert> = urls
            .iter()
            .enumerate()
            .map(|(i, u)| alert_to(SLO, &format!("t{i}"), Firing, t, std::slice::from_ref(u)))
            .collect();
        let transitions: Vec<Transition> =
            (0..urls.len()).map(|i| transition_of(SLO, &format!("t{i}"), Pending, Firing, t)).collect();
        notifier.deliver(&alerts, &transitions);
    };
    let sent = r#"obsbox_slo_notifications_total{outcome="sent",receiver_type="webhook"}"#;
    let too_many = r#"obsbox_slo_notifications_refused_total{reason="too_many_targets"}"#;

    let live: Vec<String> = (0..MAX).map(|i| format!("{base}/live{i}")).collect();
    fire(&live);
    for i in 0..MAX {
        let got = hook.wait_accepted(&format!("live{i}"), 1, Duration::from_secs(20)).await;
        assert_eq!(tiers(&got[0]), pairs(&[(&format!("t{i}"), "firing")]), "each target its own alert");
    }
    // Once `n` are sent, lets the senders go back to waiting for work: then they are idle.
    let settle = |n: usize| {
        let registry = &registry;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while metric(registry, sent) < n as f64 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(metric(registry, sent), n as f64);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    settle(MAX).await;
    assert_eq!(metric(&registry, "obsbox_slo_notification_targets"), MAX as f64);

    // One more target: an idle receiver makes room.
    fire(&[format!("{base}/one-more")]);
    hook.wait_accepted("one-more", 1, Duration::from_secs(20)).await;
    settle(MAX + 1).await;
    assert_eq!(metric(&registry, too_many), 0.0);
    assert_eq!(metric(&registry, "obsbox_slo_notification_targets"), MAX as f64);

    // 64 receivers busy retrying a dead URL take every place; the 65th target is refused.
    let busy: Vec<String> = (0..=MAX).map(|i| format!("http://{dead}/dead{i}")).collect();
    fire(&busy);
    assert_eq!(metric(&registry, too_many), 1.0);
    assert_eq!(metric(&registry, "obsbox_slo_notification_targets"), MAX as f64);
    let started = Instant::now();
    notifier.close(Duration::from_millis(200)).await;
    assert!(started.elapsed() < Duration::from_secs(3), "close honours its timeout with busy targets");
}
