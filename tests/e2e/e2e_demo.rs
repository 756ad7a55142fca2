//! `obsbox demo` end to end: the built binary runs obsbox with every demo service as a child
//! process and the load generator; through obsbox's query APIs we find a checkout trace that
//! crosses at least five services including a messaging hop, the logs of that trace, and (in the
//! store) the business and HTTP metrics. SIGINT must stop every child; so must the parent's death.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Process, spawn_binary, wait_until};
use obsbox::storage::{DiskStore, LabelMatcher, MatchOp, MetricQuery, Reader, TimeRange};
use serde_json::Value;

/// Process ids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Whether `pid` is a live process (a zombie waiting for its reaper counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()), Some("Z" | "X")),
        Err(_) => false,
    }
}

fn signal(process: &Process, sig: libc::c_int) {
    // SAFETY: kill(2) on the child process the test spawned and has not reaped.
    unsafe {
        libc::kill(process.pid() as libc::pid_t, sig);
    }
}

fn get_json(client: &reqwest::blocking::Client, url: &str, query: &[(&str, &str)]) -> Value {
    let full = reqwest::Url::parse_with_params(url, query).expect("valid url");
    let resp = client.get(full).send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    resp.json().expect("json answer")
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

/// Services of a checkout trace, when it has a messaging hop (a PRODUCER or CONSUMER span with
/// `messaging.system`) and the order was confirmed.
fn checkout_services(trace: &Value) -> Option<BTreeSet<String>> {
    let spans = trace["spans"].as_array()?;
    let messaging = spans.iter().any(|s| {
        let kind = s["span"]["kind"].as_i64().unwrap_or(0);
        (kind == 4 || kind == 5) && attr(&s["span"], "messaging.system").is_some()
    });
    // A confirmed order (its `order.confirmed` event): then `demo.orders.placed` has counted it.
    let confirmed = spans.iter().any(|s| s["span"]["name"].as_str().is_some_and(|n| n.contains("order.confirmed")));
    if !messaging || !confirmed {
        return None;
    }
    Some(spans.iter().filter_map(|s| s["service"].as_str().map(str::to_owned)).collect())
}

/// Services every checkout trace crosses.
const REQUIRED: [&str; 5] = ["loadgen", "api-gateway", "orders", "payments", "inventory"];

#[test]
fn demo_checkout_trace_spans_services_with_logs_and_metrics_and_sigint_stops_every_child() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut obsbox =
        spawn_binary(&data, &["demo", "--base-port", "0", "--rate", "8", "--users", "10", "--think", "20ms"]);
    let children = children_of(obsbox.pid());
    // Registry, two catalogs, orders, inventory, payments, provider, shipping, notifications,
    // gateway, load generator.
    assert_eq!(children.len(), 11, "children {children:?}; stderr:\n{}", obsbox.stderr_tail());

    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let base = format!("http://{}", obsbox.addrs.http);
    let mut found: Option<(String, BTreeSet<String>, Value)> = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    while found.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        let hits = get_json(
            &client,
            &format!("{base}/api/v1/traces"),
            &[("service", "loadgen"), ("operation", "POST /api/orders"), ("lookback", "1h"), ("limit", "20")],
        );
        for t in hits["traces"].as_array().into_iter().flatten() {
            if t["services"].as_array().map_or(0, Vec::len) < 5 {
                continue;
            }
            let id = t["traceId"].as_str().expect("traceId").to_owned();
            let trace = get_json(&client, &format!("{base}/api/v1/traces/{id}"), &[]);
            // Each service exports on its own schedule: wait until every one has sent its part,
            // and the orders service its server span (it ends, and so is exported, after the
            // spans under it: a trace read in between has the orders service without it).
            let complete = |s: &BTreeSet<String>| s.len() >= 5 && REQUIRED.iter().all(|r| s.contains(*r));
            let has_server_span = trace["spans"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["span"]["kind"] == 2 && s["span"]["name"] == "POST /orders");
            if let Some(services) = checkout_services(&trace).filter(complete).filter(|_| has_server_span) {
                found = Some((id, services, trace));
                break;
            }
        }
    }
    let Some((trace_id, services, trace)) = found else {
        panic!(
            "no checkout trace across {REQUIRED:?} with a messaging hop within 90 s; stderr:\n{}",
            obsbox.stderr_tail()
        );
    };
    assert!(services.len() >= 5, "checkout trace {trace_id}: {services:?}");
    let spans = trace["spans"].as_array().unwrap();
    // The gateway's server span and the orders service's, with the HTTP conventions.
    let server = spans
        .iter()
        .map(|s| &s["span"])
        .find(|s| s["kind"] == 2 && s["name"] == "POST /orders")
        .unwrap_or_else(|| panic!("no server span POST /orders in {trace_id}"));
    assert_eq!(attr(server, "http.route").and_then(|v| v["stringValue"].as_str()), Some("/orders"));
    assert!(attr(server, "http.response.status_code").is_some());
    assert!(
        spans
            .iter()
            .any(|s| attr(&s["span"], "db.system.name").and_then(|v| v["stringValue"].as_str()) == Some("sqlite")),
        "no sqlite span in {trace_id}"
    );

    // Logs emitted inside the trace carry its id.
    let mut logs = Value::Null;
    let logged = wait_until(Duration::from_secs(20), || {
        logs = get_json(&client, &format!("{base}/api/v1/traces/{trace_id}/logs"), &[]);
        logs["logs"].as_array().is_some_and(|l| !l.is_empty())
    });
    assert!(logged, "no logs for checkout trace {trace_id}");
    for l in logs["logs"].as_array().unwrap() {
        assert_eq!(l["traceId"].as_str(), Some(trace_id.as_str()), "{l}");
    }

    // Faults at run time through the CLI: every catalog instance fails, the gateway passes the 503 on.
    let registry_log = std::fs::read_to_string(data.join("demo/logs/registry.log")).expect("registry log");
    let registry = registry_log
        .lines()
        .find_map(|l| l.strip_prefix("listening "))
        .expect("the registry's address in its log")
        .to_owned();
    let faults = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_obsbox"))
            .args(["demo", "faults"])
            .args(args)
            .args(["--registry", &registry])
            .output()
            .expect("run obsbox demo faults");
        assert!(out.status.success(), "faults {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let set = faults(&["set", "catalog", "--fault-endpoint", "/products/{id}", "--error-rate", "1"]);
    assert_eq!(set.lines().count(), 2, "both catalog instances answer: {set}");
    assert!(set.lines().all(|l| l.contains(r#""error_rate":1.0"#)), "{set}");
    assert!(faults(&["get", "catalog"]).contains("/products/{id}"));
    let gateway = format!("http://{}", {
        let log = std::fs::read_to_string(data.join("demo/logs/api-gateway.log")).expect("gateway log");
        log.lines().find_map(|l| l.strip_prefix("listening http://")).expect("gateway address").to_owned()
    });
    let token: Value = client
        .post(format!("{gateway}/login"))
        .json(&serde_json::json!({"user": "tester", "password": "demo"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = token["token"].as_str().expect("token").to_owned();
    let status = |path: &str| client.get(format!("{gateway}{path}")).bearer_auth(&token).send().unwrap().status();
    for _ in 0..4 {
        assert_eq!(status("/api/products/1"), 503, "an injected fault on both instances");
        assert_eq!(status("/api/products"), 200, "other endpoints are untouched");
    }
    assert!(!faults(&["clear", "catalog"]).contains("/products/{id}"));
    assert_eq!(status("/api/products/1"), 200);

    // SIGINT (Ctrl-C) stops every child, then obsbox itself.
    signal(&obsbox, libc::SIGINT);
    assert!(wait_until(Duration::from_secs(60), || !obsbox.is_running()), "obsbox did not stop after SIGINT");
    let left: Vec<u32> = children.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "children left after SIGINT: {left:?}");

    // The business counter and the HTTP duration histogram are in the store (children flush on stop).
    let mut config = obsbox::Config::default();
    config.storage.data_dir = data.clone();
    let store = DiskStore::open(config.storage).expect("reopen the store");
    let metric = |name: &str| {
        let q = MetricQuery {
            matchers: vec![LabelMatcher { name: "__name__".into(), op: MatchOp::Eq, value: name.into() }],
            time: TimeRange::ALL,
        };
        store.find_metrics(&q).expect("metric read")
    };
    let placed = metric("demo.orders.placed");
    let services_with = |data: &opentelemetry_proto::tonic::metrics::v1::MetricsData| -> BTreeSet<String> {
        data.resource_metrics
            .iter()
            .filter(|rm| rm.scope_metrics.iter().any(|sm| !sm.metrics.is_empty()))
            .map(|rm| obsbox::storage::service_name(rm.resource.as_ref()).to_owned())
            .collect()
    };
    assert!(services_with(&placed).contains("orders"), "demo.orders.placed missing: {placed:?}");
    let durations = metric("http.server.request.duration");
    let with_duration = services_with(&durations);
    for s in ["api-gateway", "catalog", "orders"] {
        assert!(with_duration.contains(s), "http.server.request.duration missing for {s}: {with_duration:?}");
    }
}

#[test]
fn demo_children_die_with_a_killed_parent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut obsbox = spawn_binary(&tmp.path().join("data"), &["demo", "--base-port", "0", "--no-load"]);
    let children = children_of(obsbox.pid());
    assert_eq!(children.len(), 10, "children {children:?}; stderr:\n{}", obsbox.stderr_tail());
    obsbox.kill();
    let gone = wait_until(Duration::from_secs(20), || children.iter().all(|p| !alive(*p)));
    assert!(
        gone,
        "children outlived a SIGKILLed parent: {:?}",
        children.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
}
