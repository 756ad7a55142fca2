//! docker-compose.yml run outside Docker (no Docker engine here): every service's command and
//! environment from the compose file, host names rewritten to 127.0.0.1, ports to free ones,
//! mounted files to rewritten copies. RabbitMQ, obsbox, every demo service and the load
//! generator (the built `obsbox` binary, as the image runs it), Alertmanager and Prometheus
//! (Debian's) with the compose configurations. Each must come up and pass its compose
//! healthcheck; then every query of every Grafana dashboard panel, template variables expanded as
//! Grafana does, must return data from the datasource the panel names: the Prometheus of the
//! stack, obsbox's Prometheus API, obsbox's Loki API.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::compose::{Compose, OBSBOX_IMAGE, Rewriter, Service, require_external};
use common::dashboards::{datasources, expand, load_dashboards, parse_label_values, queries};
use common::rabbitmq::Rabbit;
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
/// The obsbox image's writable directory (its WORKDIR, owned by its user; see the Dockerfile).
const IMAGE_HOME: &str = "/var/lib/obsbox";

/// A started service; killed when dropped.
struct Running {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn log_tail(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(4000)..]).into_owned()
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited with {status}; its log:\n{}", self.name, self.log_tail());
        }
    }
}

/// The Dockerfile's HEALTHCHECK command (exec form).
fn image_healthcheck(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    let joined = text.replace("\\\n", " ");
    let line = joined.lines().find(|l| l.trim_start().starts_with("HEALTHCHECK")).expect("a HEALTHCHECK");
    let json = &line[line.find("CMD [").expect("HEALTHCHECK ... CMD [...]") + 4..];
    serde_json::from_str(json.trim()).expect("HEALTHCHECK CMD in exec form")
}

fn run_healthcheck(cmd: &[String]) -> bool {
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts a service of the obsbox image: the binary with the compose command (the image's
/// ENTRYPOINT is `obsbox`) and environment, rewritten; waits for its `listening` line unless it
/// serves nothing (the load generator).
fn start_obsbox_image(compose: &Compose, rw: &Rewriter, s: &Service, tmp: &Path) -> Running {
    let paths = rw.paths(compose, s, &[IMAGE_HOME]);
    let args = rw.args(&s.name, &s.command(), &paths);
    let log = tmp.join(format!("{}.log", s.name));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_obsbox"));
    cmd.args(&args);
    for (k, _) in std::env::vars() {
        if k.starts_with("OBSBOX_") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    let mut env = Vec::new();
    for (k, v) in s.environment() {
        env.push((k.clone(), rw.env_value(&s.name, &v, &paths)));
    }
    // Nothing may still name a container: it would not resolve here, nor be what the test runs.
    for other in compose.services.keys() {
        let host_port = regex::Regex::new(&format!(r"[/@]{}:\d", regex::escape(other))).expect("regex");
        for text in args.iter().chain(env.iter().map(|(_, v)| v)) {
            assert!(!host_port.is_match(text), "{}: {text:?} names {other}", s.name);
        }
        for (k, v) in &env {
            assert_ne!(v, other, "{}: {k} names {other}", s.name);
        }
    }
    cmd.envs(env);
    let home = paths.iter().find(|(c, _)| c == IMAGE_HOME).expect("image home").1.clone();
    cmd.current_dir(home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {}: {e}", s.name));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("listening ") {
                let _ = tx.send(line);
            }
        }
    });
    let mut running = Running { name: s.name.clone(), child, log };
    if s.healthcheck_disabled() {
        return running;
    }
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => eprintln!("{}: {line}", s.name),
        Err(_) => {
            running.assert_alive();
            panic!("{} did not print `listening` within 60 s: {args:?}\n{}", s.name, running.log_tail());
        }
    }
    running
}

fn start_external(name: &str, bin: &str, args: Vec<String>, tmp: &Path) -> Running {
    let log = tmp.join(format!("{name}.log"));
    let child = Command::new(bin)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    Running { name: name.to_string(), child, log }
}

fn wait_healthy(r: &mut Running, check: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run_healthcheck(check) {
        r.assert_alive();
        assert!(Instant::now() < deadline, "{}: healthcheck {check:?} never passed\n{}", r.name, r.log_tail());
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn get(client: &reqwest::blocking::Client, url: &str, params: &[(&str, &str)]) -> Result<Value, String> {
    let url = reqwest::Url::parse_with_params(url, params).map_err(|e| e.to_string())?;
    let resp = client.get(url.clone()).send().map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let text = resp.text().map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("GET {url}: {e}: {text}"))
}

#[test]
fn compose_stack_runs_outside_docker_and_every_dashboard_query_returns_data() {
    for (bin, package) in [
        (PROMETHEUS, "prometheus"),
        (PROMTOOL, "prometheus"),
        (ALERTMANAGER, "prometheus-alertmanager"),
        ("/usr/sbin/rabbitmq-server", "rabbitmq-server"),
    ] {
        if !require_external(bin, package) {
            return;
        }
    }
    let root = common::workspace_root();
    let compose = Compose::load(&root);
    let tmp = tempfile::tempdir().expect("temp dir");
    let rw = Rewriter::new(&compose, &tmp.path().join("containers"));
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(20)).build().expect("client");

    let started = Instant::now();
    let mut rabbit: Option<Rabbit> = None;
    let mut running: Vec<Running> = Vec::new();
    for name in compose.start_order() {
        let s = compose.service(&name);
        match name.as_str() {
            "rabbitmq" => {
                let env = s.environment();
                let (user, pass) = (&env["RABBITMQ_DEFAULT_USER"], &env["RABBITMQ_DEFAULT_PASS"]);
                rabbit = Rabbit::start(tmp.path().join("rabbitmq"), rw.port("rabbitmq", 5672), user, pass);
                assert!(rabbit.is_some(), "rabbitmq");
            }
            "alertmanager" => {
                // /alertmanager: the image's data directory (a VOLUME of prom/alertmanager).
                let paths = rw.paths(&compose, s, &["/alertmanager"]);
                let mut args = rw.args(&name, &s.command(), &paths);
                args.push(format!("--web.listen-address=127.0.0.1:{}", rw.port(&name, 9093)));
                args.push("--cluster.listen-address=".into());
                let mut r = start_external(&name, ALERTMANAGER, args, tmp.path());
                wait_healthy(
                    &mut r,
                    &["bash".into(), "-c".into(), format!("exec 3<>/dev/tcp/127.0.0.1/{}", rw.port(&name, 9093))],
                );
                running.push(r);
            }
            "prometheus" => {
                let paths = rw.paths(&compose, s, &[]);
                let mut args = rw.args(&name, &s.command(), &paths);
                let config =
                    args.iter().find_map(|a| a.strip_prefix("--config.file=")).expect("--config.file").to_string();
                // promtool also checks that the rule files exist and parse.
                let out = Command::new(PROMTOOL).args(["check", "config", &config]).output().expect("promtool");
                assert!(
                    out.status.success(),
                    "promtool check config: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                args.push(format!("--web.listen-address=127.0.0.1:{}", rw.port(&name, 9090)));
                let mut r = start_external(&name, PROMETHEUS, args, tmp.path());
                wait_healthy(
                    &mut r,
                    &["bash".into(), "-c".into(), format!("exec 3<>/dev/tcp/127.0.0.1/{}", rw.port(&name, 9090))],
                );
                running.push(r);
            }
            // Grafana is not installed here: its provisioning is checked in
            // tests/e2e/dashboards_model.rs and its datasources' URLs below.
            "grafana" => {}
            _ => {
                assert_eq!(s.image(), Some(OBSBOX_IMAGE), "{name}: unknown service to run");
                let mut r = start_obsbox_image(&compose, &rw, s, tmp.path());
                let check = if name == "obsbox" { Some(image_healthcheck(&root)) } else { s.healthcheck() };
                if let Some(check) = check {
                    let paths = rw.paths(&compose, s, &[IMAGE_HOME]);
                    let check: Vec<String> = check.iter().map(|c| rw.text(&name, c, &paths)).collect();
                    wait_healthy(&mut r, &check);
                }
                running.push(r);
            }
        }
    }
    let obsbox = format!("http://127.0.0.1:{}", rw.port("obsbox", 16686));
    eprintln!("stack up and healthy after {:?}", started.elapsed());

    // Every demo service and the load generator send traces to obsbox.
    let want: Vec<&str> = obsbox_demo::ServiceName::ALL.iter().map(|s| s.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let services = get(&client, &format!("{obsbox}/api/services"), &[]).unwrap_or(Value::Null);
        let have: Vec<String> = services["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        let missing: Vec<&&str> = want.iter().filter(|w| !have.iter().any(|h| h == **w)).collect();
        if missing.is_empty() {
            break;
        }
        for r in &mut running {
            r.assert_alive();
        }
        assert!(Instant::now() < deadline, "no traces from {missing:?} in obsbox (has {have:?})");
        std::thread::sleep(Duration::from_secs(1));
    }

    // The datasources Grafana is provisioned with, at their rewritten URLs.
    let ds = datasources(&root);
    let grafana = compose.service("grafana");
    let base: BTreeMap<String, (String, String)> = ds
        .iter()
        .map(|(uid, d)| {
            let url = rw.text(&grafana.name, d["url"].as_str().expect("url"), &[]);
            (uid.clone(), (d["type"].as_str().unwrap_or("").to_string(), url))
        })
        .collect();
    for (uid, (kind, url)) in &base {
        // What Grafana's "save & test" asks of each.
        let probe = match kind.as_str() {
            "prometheus" => get(&client, &format!("{url}/api/v1/query"), &[("query", "1+1")]),
            "jaeger" => get(&client, &format!("{url}/api/services"), &[]),
            "loki" => get(&client, &format!("{url}/loki/api/v1/labels"), &[]),
            "alertmanager" => get(&client, &format!("{url}/api/v2/status"), &[]),
            other => panic!("datasource {uid}: no probe for type {other}"),
        };
        probe.unwrap_or_else(|e| panic!("datasource {uid} at {url}: {e}"));
    }

    // Trace to logs and back, as the provisioned links do it: the Jaeger datasource's
    // tracesToLogsV2 query with a real trace id finds that trace's log records in the Loki
    // datasource, and the trace_id label of a record (the derived field) opens its trace.
    let jaeger = base.values().find(|(k, _)| k == "jaeger").expect("a jaeger datasource").1.clone();
    let loki = base.values().find(|(k, _)| k == "loki").expect("a loki datasource").1.clone();
    let t2l = ds.values().find(|d| d["type"] == "jaeger").unwrap()["jsonData"]["tracesToLogsV2"]["query"]
        .as_str()
        .expect("trace to logs query")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (trace_id, record_trace) = loop {
        let traces = get(
            &client,
            &format!("{jaeger}/api/traces"),
            &[("service", "orders"), ("limit", "20"), ("lookback", "1h")],
        )
        .expect("jaeger search");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let start = (now - 600).to_string();
        let mut found = None;
        for t in traces["data"].as_array().cloned().unwrap_or_default() {
            let id = t["traceID"].as_str().unwrap_or("").to_string();
            let logql = t2l.replace("$${__trace.traceId}", &id);
            let logs = get(
                &client,
                &format!("{loki}/loki/api/v1/query_range"),
                &[("query", &logql), ("start", &start), ("limit", "10")],
            )
            .unwrap_or_else(|e| panic!("trace-to-logs query {logql}: {e}"));
            if let Some(stream) = logs["data"]["result"].as_array().and_then(|r| r.first().cloned()) {
                found = Some((id, stream["stream"]["trace_id"].as_str().unwrap_or("").to_string()));
                break;
            }
        }
        if let Some(f) = found {
            break f;
        }
        assert!(Instant::now() < deadline, "no orders trace with logs through the trace-to-logs query {t2l}");
        std::thread::sleep(Duration::from_secs(2));
    };
    assert_eq!(record_trace, trace_id, "the record's trace_id label is the trace's id");
    let trace = get(&client, &format!("{jaeger}/api/traces/{record_trace}"), &[]).expect("logs to trace");
    assert_eq!(trace["data"][0]["traceID"].as_str(), Some(trace_id.as_str()));

    // Exemplar links: the latency panels ask for exemplars; Prometheus scraped them from obsbox
    // with a trace_id label (the name exemplarTraceIdDestinations uses) of a trace obsbox has.
    for (uid, (kind, url)) in base.iter().filter(|(_, (k, _))| k == "prometheus") {
        let deadline = Instant::now() + Duration::from_secs(120);
        let trace_id = loop {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let answer = get(
                &client,
                &format!("{url}/api/v1/query_exemplars"),
                &[
                    ("query", "traces_span_metrics_duration_milliseconds_bucket"),
                    ("start", &(now - 600).to_string()),
                    ("end", &now.to_string()),
                ],
            )
            .unwrap_or_else(|e| panic!("datasource {uid} ({kind}): exemplars: {e}"));
            let id = answer["data"].as_array().and_then(|series| {
                series
                    .iter()
                    .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default())
                    .find_map(|e| e["labels"]["trace_id"].as_str().map(String::from))
            });
            if let Some(id) = id {
                break id;
            }
            assert!(Instant::now() < deadline, "datasource {uid}: no exemplar with a trace_id: {answer}");
            std::thread::sleep(Duration::from_secs(2));
        };
        let trace = get(&client, &format!("{jaeger}/api/traces/{trace_id}"), &[]).expect("exemplar's trace");
        assert_eq!(trace["data"][0]["traceID"].as_str(), Some(trace_id.as_str()), "datasource {uid}");
    }

    // Every panel query returns data. Prometheus scrapes every 15 s and rates need two scrapes,
    // so each query is retried until the deadline.
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut checked = 0;
    for (file, d) in load_dashboards(&root) {
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for v in d["templating"]["list"].as_array().cloned().unwrap_or_default() {
            let name = v["name"].as_str().expect("variable name").to_string();
            let vals: Vec<String> = match v["type"].as_str() {
                Some("custom") => v["options"]
                    .as_array()
                    .expect("options")
                    .iter()
                    .map(|o| o["value"].as_str().unwrap().to_string())
                    .collect(),
                Some("query") => {
                    let q = v["query"]["query"].as_str().or(v["query"].as_str()).expect("variable query");
                    let (metric, label) = parse_label_values(q).expect("label_values");
                    let url = &base[v["datasource"]["uid"].as_str().expect("variable datasource")].1;
                    let mut found = Vec::new();
                    while found.is_empty() {
                        let mut params = vec![];
                        if !metric.is_empty() {
                            params.push(("match[]", metric.as_str()));
                        }
                        let r = get(&client, &format!("{url}/api/v1/label/{label}/values"), &params);
                        found = r
                            .map(|r| r["data"].as_array().cloned().unwrap_or_default())
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect();
                        if found.is_empty() {
                            assert!(Instant::now() < deadline, "{file}: variable {name} ({q}) has no values");
                            std::thread::sleep(Duration::from_secs(2));
                        }
                    }
                    found
                }
                other => panic!("{file}: variable {name} of type {other:?}"),
            };
            values.insert(name, vals);
        }
        for q in queries(&file, &d) {
            let expr = expand(&q.expr, &values);
            let (kind, url) = &base[&q.datasource];
            loop {
                // The last 5 minutes as of now: data that arrives while waiting counts.
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                let (start, end) = ((now - 300).to_string(), now.to_string());
                let (end_ms, range_ms) = ((now * 1000).to_string(), "300000".to_string());
                let (path, params): (String, Vec<(&str, &str)>) = match (kind.as_str(), q.instant) {
                    ("prometheus", true) => (format!("{url}/api/v1/query"), vec![("query", &expr)]),
                    ("prometheus", false) => (
                        format!("{url}/api/v1/query_range"),
                        vec![("query", &expr), ("start", &start), ("end", &end), ("step", "15")],
                    ),
                    ("jaeger", _) => match q.query_type.as_deref() {
                        // What Grafana's Jaeger datasource asks for a dependency graph.
                        Some("dependencyGraph") => {
                            (format!("{url}/api/dependencies"), vec![("endTs", &end_ms), ("lookback", &range_ms)])
                        }
                        other => panic!("{}: no check for Jaeger query type {other:?}", q.context),
                    },
                    ("loki", _) => (
                        format!("{url}/loki/api/v1/query_range"),
                        vec![("query", &expr), ("start", &start), ("end", &end), ("limit", "100")],
                    ),
                    (other, _) => panic!("{}: no query check for datasource type {other}", q.context),
                };
                let answer = get(&client, &path, &params).unwrap_or_else(|e| panic!("{}: {expr}: {e}", q.context));
                let result = match kind.as_str() {
                    "jaeger" => answer["data"].as_array().cloned().unwrap_or_default(),
                    _ => answer["data"]["result"].as_array().cloned().unwrap_or_default(),
                };
                if !result.is_empty() {
                    break;
                }
                for r in &mut running {
                    r.assert_alive();
                }
                assert!(Instant::now() < deadline, "{}: {expr} returned no data from {url}", q.context);
                std::thread::sleep(Duration::from_secs(2));
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} queries checked");
    eprintln!("{checked} dashboard queries answered after {:?}", started.elapsed());
    // Prometheus has loaded the rules and sees its Alertmanager.
    let prom = &base["prometheus"].1;
    let rules = get(&client, &format!("{prom}/api/v1/rules"), &[]).expect("rules");
    let groups = rules["data"]["groups"].as_array().cloned().unwrap_or_default();
    assert!(groups.iter().any(|g| g["name"] == "obsbox"), "rule groups: {groups:?}");
    let ams = get(&client, &format!("{prom}/api/v1/alertmanagers"), &[]).expect("alertmanagers");
    assert_eq!(ams["data"]["activeAlertmanagers"].as_array().map(Vec::len), Some(1), "{ams}");
    // Alertmanager notifies obsbox's webhook: an alert fired into it becomes a log record.
    let am = format!("http://127.0.0.1:{}", rw.port("alertmanager", 9093));
    let summary = format!("compose stack alert path {}", std::process::id());
    let alert = serde_json::json!([{
        "labels": {"alertname": "ComposeStackCheck", "severity": "page", "slo": "compose-check", "tier": "page-1h"},
        "annotations": {"summary": summary},
    }]);
    let r = client.post(format!("{am}/api/v2/alerts")).json(&alert).send().expect("post alert to alertmanager");
    assert!(r.status().is_success(), "alertmanager took no alert: {}", r.status());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs =
            get(&client, &format!("{obsbox}/api/v1/logs"), &[("query", "service:alertmanager"), ("lookback", "1h")])
                .expect("obsbox logs");
        let bodies: Vec<&str> = logs["logs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["record"]["body"]["stringValue"].as_str())
            .collect();
        if bodies.contains(&summary.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the alert never reached obsbox's webhook; alertmanager's records: {bodies:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for r in &mut running {
        r.assert_alive();
    }
    drop(running);
    drop(rabbit);
}
