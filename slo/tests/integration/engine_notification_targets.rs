//! OpenSLO notification targets end to end: a definition directory ([`Definitions`]) whose alert
//! policies name `AlertNotificationTarget`s, the [`Evaluator`] over a real store implementation
//! (`MemStore`) with errors written into it, and the [`Notifier`] posting to a webhook receiver
//! (an axum server on a free port). Each target hears of its own tier only, the `[slo.notify]`
//! webhook of every tier, and the target of an SLO that does not burn of nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::post;
use obsbox_slo::{AlertState, Definitions, Evaluator, Notifier, NotifyConfig, SloConfig};
use obsbox_storage::{Batch, MemStore, Reader, Writer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::Value;

const BASE_S: u64 = 1_800_000_000;

/// Every body posted, by path.
#[derive(Clone, Default)]
struct Hook(Arc<Mutex<Vec<(String, Value)>>>);

impl Hook {
    async fn start() -> (Hook, String) {
        let hook = Hook::default();
        let app = Router::new().route("/{path}", post(receive)).with_state(hook.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (hook, format!("http://{addr}"))
    }

    fn got(&self, path: &str) -> Vec<Value> {
        self.0.lock().unwrap().iter().filter(|(p, _)| p == path).map(|(_, v)| v.clone()).collect()
    }

    /// Waits (from outside the runtime) until `path` has `n` bodies.
    fn wait(&self, path: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.got(path);
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{path}: {} bodies, want {n}", got.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

async fn receive(State(hook): State<Hook>, Path(path): Path<String>, body: String) -> &'static str {
    hook.0.lock().unwrap().push((path, serde_json::from_str(&body).unwrap_or(Value::String(body))));
    "ok"
}

/// `per_s` spans a second of `service` over `[from_s, to_s)`, the first `bad` of each second
/// failing.
fn traffic(
    rt: &tokio::runtime::Runtime,
    store: &MemStore,
    service: &str,
    from_s: u64,
    to_s: u64,
    per_s: u64,
    bad: u64,
) {
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
        ..Default::default()
    };
    let mut spans = Vec::new();
    for s in from_s..to_s {
        for i in 0..per_s {
            let start = s * 1_000_000_000 + i * 1_000_000;
            spans.push(Span {
                trace_id: (u128::from(start) << 8 | 1).to_be_bytes().to_vec(),
                span_id: (start | 1).to_be_bytes().to_vec(),
                name: "charge".into(),
                kind: 2,
                start_time_unix_nano: start,
                end_time_unix_nano: start + 10_000_000,
                status: Some(Status { code: if i < bad { 2 } else { 1 }, ..Default::default() }),
                ..Default::default()
            });
        }
    }
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![kv("service.name", service)], ..Default::default() }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    };
    rt.block_on(store.write(Batch::Traces(req))).expect("write");
}

fn at(s: u64, ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(s * 1000 + ms)
}

/// A span SLO of `service` at 99.9% over 30 days with the given alert policies.
fn slo(name: &str, service: &str, policies: &[&str]) -> String {
    let refs: String = policies.iter().map(|p| format!("    - alertPolicyRef: {p}\n")).collect();
    format!(
        "apiVersion: openslo/v1
kind: SLO
metadata:
  name: {name}
spec:
  service: {service}
  indicator:
    metadata: {{name: {name}-ok}}
    spec:
      ratioMetric:
        good:
          metricSource:
            type: obsbox.spans
            spec: {{service: {service}, status: not_error}}
        total:
          metricSource:
            type: obsbox.spans
            spec: {{service: {service}}}
  timeWindow:
    - duration: 30d
      isRolling: true
  budgetingMethod: Occurrences
  objectives:
    - target: 0.999
  alertPolicies:
{refs}"
    )
}

/// The definitions: payments pages its on-call (a named target) on a fast burn and files a
/// ticket (an inline target) on a slow one; catalog pages its own on-call.
fn definitions(base: &str) -> String {
    format!(
        "apiVersion: openslo/v1
kind: AlertNotificationTarget
metadata:
  name: payments-oncall
spec:
  description: the payments pager
  target: {base}/oncall
---
apiVersion: openslo/v1
kind: AlertPolicy
metadata:
  name: payments-page
spec:
  conditions:
    - kind: AlertCondition
      metadata: {{name: page-fast}}
      spec:
        severity: page
        condition: {{kind: burnrate, op: gte, threshold: 14.4, lookbackWindow: 1h, shortWindow: 5m}}
  notificationTargets:
    - targetRef: payments-oncall
---
apiVersion: openslo/v1
kind: AlertPolicy
metadata:
  name: payments-ticket
spec:
  conditions:
    - kind: AlertCondition
      metadata: {{name: ticket-slow}}
      spec:
        severity: ticket
        condition: {{kind: burnrate, op: gte, threshold: 1, lookbackWindow: 3d, shortWindow: 6h}}
  notificationTargets:
    - kind: AlertNotificationTarget
      metadata: {{name: payments-tickets}}
      spec: {{target: '{base}/tickets'}}
---
apiVersion: openslo/v1
kind: AlertPolicy
metadata:
  name: catalog-page
spec:
  conditions:
    - conditionRef: catalog-fast
  notificationTargets:
    - kind: AlertNotificationTarget
      metadata: {{name: catalog-oncall}}
      spec: {{target: '{base}/catalog'}}
---
apiVersion: openslo/v1
kind: AlertCondition
metadata:
  name: catalog-fast
spec:
  severity: page
  condition: {{kind: burnrate, op: gte, threshold: 14.4, lookbackWindow: 1h}}
---
{}---
{}",
        slo("payments", "payment", &["payments-page", "payments-ticket"]),
        slo("catalog", "catalog", &["catalog-page"]),
    )
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

#[test]
fn an_alert_policys_notification_targets_receive_its_alerts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (hook, base) = rt.block_on(Hook::start());
    let tmp = tempfile::tempdir().unwrap();
    let slos = tmp.path().join("slos");
    std::fs::create_dir(&slos).unwrap();
    std::fs::write(slos.join("shop.yaml"), definitions(&base)).unwrap();

    let notify = NotifyConfig { webhooks: vec![format!("{base}/all")], ..Default::default() };
    let notifier = Arc::new(rt.block_on(async { Notifier::start(&notify, &prometheus::Registry::new()) }).unwrap());
    let store = Arc::new(MemStore::new());
    let reader: Arc<dyn Reader> = store.clone();
    // Time scale 60: the page tier's 1 h / 5 min windows are 60 s / 5 s of real time, the
    // ticket tier's 3 d / 6 h are 72 min / 6 min.
    let config = SloConfig { time_scale: 60, notify: notify.clone(), ..Default::default() };
    let mut ev = Evaluator::new(
        &config,
        &tmp.path().join("data"),
        reader,
        &prometheus::Registry::new(),
        Box::new(notifier.clone()),
        Box::new(Definitions::new(&slos)),
    )
    .unwrap();

    // An hour of good traffic for both services, then a minute of 50% payment errors.
    traffic(&rt, &store, "payment", BASE_S - 3600, BASE_S, 10, 0);
    traffic(&rt, &store, "catalog", BASE_S - 3600, BASE_S + 80, 10, 0);
    ev.evaluate(at(BASE_S, 500));
    assert!(ev.errors().is_empty(), "{:?}", ev.errors());
    traffic(&rt, &store, "payment", BASE_S, BASE_S + 60, 10, 5);
    ev.evaluate(at(BASE_S + 60, 500));
    ev.evaluate(at(BASE_S + 61, 500));
    let state = |ev: &Evaluator, tier: &str| {
        ev.alerts().iter().find(|a| a.slo == "payments" && a.tier == tier).map(|a| a.state)
    };
    assert_eq!(
        (state(&ev, "page-fast"), state(&ev, "ticket-slow")),
        (Some(AlertState::Firing), Some(AlertState::Firing))
    );

    let pages = hook.wait("oncall", 1);
    assert_eq!(tiers(&pages[0]), pairs(&[("page-fast", "firing")]), "the pager hears of its tier only");
    assert_eq!(pages[0]["groupLabels"]["slo"], "payments");
    let tickets = hook.wait("tickets", 1);
    assert_eq!(tiers(&tickets[0]), pairs(&[("ticket-slow", "firing")]));
    let all = hook.wait("all", 1);
    assert_eq!(tiers(&all[0]), pairs(&[("page-fast", "firing"), ("ticket-slow", "firing")]), "the global webhook all");

    // Good traffic again: the page tier's 5 s short window clears first; the ticket tier's
    // 6 min one still holds the errors.
    traffic(&rt, &store, "payment", BASE_S + 62, BASE_S + 80, 10, 0);
    ev.evaluate(at(BASE_S + 70, 500));
    assert_eq!(
        (state(&ev, "page-fast"), state(&ev, "ticket-slow")),
        (Some(AlertState::Resolved), Some(AlertState::Firing))
    );
    let pages = hook.wait("oncall", 2);
    assert_eq!(tiers(&pages[1]), pairs(&[("page-fast", "resolved")]));
    assert_eq!(pages[1]["status"], "resolved");
    let all = hook.wait("all", 2);
    assert_eq!(tiers(&all[1]), pairs(&[("page-fast", "resolved"), ("ticket-slow", "firing")]));

    rt.block_on(notifier.close(Duration::from_secs(10)));
    assert_eq!(hook.got("tickets").len(), 1, "nothing new for the ticket target");
    assert_eq!(hook.got("oncall").len(), 2);
    assert!(hook.got("catalog").is_empty(), "catalog does not burn: its target hears nothing");
    assert_eq!(hook.got("all").len(), 2);
    let api = serde_json::to_string(&ev.alerts()).unwrap();
    assert!(!api.contains(&base), "target URLs stay out of the alerts' JSON: {api}");
}

#[test]
fn target_urls_are_checked_and_normalized_at_load() {
    use obsbox_slo::SloError;
    use obsbox_slo::spec::parse_slos;
    let path = std::path::Path::new("slos/shop.yaml");
    let text = |target: &str| definitions("http://unused").replace("http://unused/oncall", target);
    // Host case and the default port are normalized: one URL, one receiver.
    let slos = parse_slos(path, &text("http://Pager.Internal:80/oncall")).unwrap();
    let payments = slos.iter().find(|s| s.name == "payments").unwrap();
    let page = payments.tiers.iter().find(|t| t.name == "page-fast").unwrap();
    assert_eq!(page.webhooks, vec!["http://pager.internal/oncall".to_string()]);
    let ticket = payments.tiers.iter().find(|t| t.name == "ticket-slow").unwrap();
    assert_eq!(ticket.webhooks, vec!["http://unused/tickets".to_string()], "each tier its own policy's targets");
    for (target, reason) in [
        ("https://hooks.example.com/x", "https is not supported by this build (no TLS); use http"),
        ("ftp://files.example.com/x", "unsupported scheme \"ftp\""),
        ("pager.internal/oncall", "relative URL without a base"),
    ] {
        match parse_slos(path, &text(target)) {
            Err(SloError::Spec { file, line, field, message }) => {
                assert_eq!((file.as_path(), line, field.as_str()), (path, 7, "spec.target"), "{target}");
                assert!(message.starts_with("target must be a webhook URL") && message.ends_with(reason), "{message}");
            }
            other => panic!("{target}: {other:?}"),
        }
    }
}
