//! Bearer-token authentication with real clients: the Python OpenTelemetry SDK's OTLP/gRPC and
//! OTLP/HTTP exporters configured the standard way (`OTEL_EXPORTER_OTLP_HEADERS`, driving
//! `tests/python/export_tls.py` over plain text), tonic and reqwest for the exact status codes
//! and challenges, and the `obsbox` binary itself for what it prints.
//!
//! Python comes from `$OBSBOX_TEST_PYTHON`, else `<workspace>/.venv/bin/python`.

use crate::browser;
use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{SEARCHABLE, blocking, logs_of_service, spans_of_service, wait_until_async};
use reqwest::StatusCode;
use reqwest::header::WWW_AUTHENTICATE;

/// Ingest tokens: two lines of one file, as while rotating from the old to the new one.
const OLD_INGEST: &str = "ingest-old-6c1f0e2b9a";
const NEW_INGEST: &str = "ingest-new-d93e55a017";
const QUERY: &str = "query-5b0d7c31e8f4";

fn token_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn start(dir: &Path) -> obsbox::Obsbox {
    let mut config = common::test_config(&dir.join("data"));
    config.auth.ingest_token_file = Some(token_file(
        dir,
        "ingest-tokens",
        &format!("# old one, remove once every client has the new one\n{OLD_INGEST}\n{NEW_INGEST}\n"),
    ));
    config.auth.query_token = Some(obsbox_net::Token::new(QUERY));
    common::start_obsbox_with(config).await
}

/// The SDK exporting a span and a log record over gRPC and HTTP; `header` is the value of
/// `OTEL_EXPORTER_OTLP_HEADERS` (none: no header at all).
fn sdk(obsbox: &obsbox::Obsbox, service: &str, header: Option<&str>) -> Child {
    let script = common::workspace_root().join("tests/python/export_tls.py");
    let mut cmd = Command::new(common::python());
    cmd.arg(script)
        .args(["--grpc", &obsbox.otlp_grpc_addr().expect("an OTLP listener").to_string()])
        .args(["--http", &obsbox.otlp_http_addr().expect("an OTLP listener").to_string()])
        .args(["--service", service, "--scheme", "http"])
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "5")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("OTEL_EXPORTER_OTLP_HEADERS")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        .env_remove("OTEL_EXPORTER_OTLP_LOGS_HEADERS")
        .env_remove("OTEL_EXPORTER_OTLP_CERTIFICATE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(h) = header {
        cmd.env("OTEL_EXPORTER_OTLP_HEADERS", h);
    }
    cmd.spawn().expect("run tests/python/export_tls.py")
}

async fn expect(child: Child, expected: [&str; 2], what: &str) -> String {
    let out = blocking(move || child.wait_with_output().unwrap()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{what}; the SDK's log:\n{stderr}");
    stderr
}

async fn assert_stored(obsbox: &obsbox::Obsbox, service: &str) {
    let store = obsbox.store().expect("a local store");
    let s = service.to_string();
    let found = wait_until_async(SEARCHABLE, move || {
        !spans_of_service(&store, &s).is_empty() && !logs_of_service(&store, &s).is_empty()
    })
    .await;
    assert!(found, "{service}: spans and logs sent with a valid token are stored");
}

fn assert_nothing_stored(obsbox: &obsbox::Obsbox, service: &str) {
    let store = obsbox.store().expect("a local store");
    assert!(spans_of_service(&store, service).is_empty(), "{service}: refused spans were stored");
    assert!(logs_of_service(&store, service).is_empty(), "{service}: refused logs were stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_with_either_rotated_token_is_stored_without_a_valid_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let obsbox = start(dir.path()).await;

    let old = sdk(&obsbox, "auth-old", Some(&format!("authorization=Bearer%20{OLD_INGEST}")));
    let new = sdk(&obsbox, "auth-new", Some(&format!("Authorization=Bearer%20{NEW_INGEST}")));
    let none = sdk(&obsbox, "auth-none", None);
    let wrong = sdk(&obsbox, "auth-wrong", Some(&format!("authorization=Bearer%20{OLD_INGEST}x")));
    let query_token = sdk(&obsbox, "auth-querytoken", Some(&format!("authorization=Bearer%20{QUERY}")));
    expect(old, ["grpc ok", "http ok"], "the old token of the file").await;
    expect(new, ["grpc ok", "http ok"], "the new token of the file").await;
    let log = expect(none, ["grpc failed", "http failed"], "no token").await;
    assert!(log.contains("UNAUTHENTICATED") || log.contains("401"), "the SDK says why: {log}");
    expect(wrong, ["grpc failed", "http failed"], "a wrong token").await;
    expect(query_token, ["grpc failed", "http failed"], "the query token is no ingest token").await;

    for service in ["auth-old-grpc", "auth-old-http", "auth-new-grpc", "auth-new-http"] {
        assert_stored(&obsbox, service).await;
    }
    for service in ["auth-none", "auth-wrong", "auth-querytoken"] {
        assert_nothing_stored(&obsbox, &format!("{service}-grpc"));
        assert_nothing_stored(&obsbox, &format!("{service}-http"));
    }

    let metrics = reqwest::Client::new()
        .get(format!("http://{}/metrics", obsbox.http_addr()))
        .bearer_auth(QUERY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for listener in ["otlp_grpc", "otlp_http"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("obsbox_auth_failures_total{{listener=\"{listener}\"}}")))
            .unwrap_or_else(|| panic!("no failure count for {listener}:\n{metrics}"));
        let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= 3.0, "three refused clients, each refused at least once: {line}");
    }
    obsbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_nothing_about_what_was_wrong() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let obsbox = start(dir.path()).await;
    let request = common::trace_request(
        "auth-raw",
        vec![common::span(&common::trace_id(1, 2), &common::span_id(3), "op", common::now_ns())],
    );

    // gRPC: UNAUTHENTICATED with one message, whether the metadata is missing or wrong.
    let mut clients = common::grpc_clients(obsbox.otlp_grpc_addr().expect("an OTLP listener")).await;
    let mut messages = Vec::new();
    for auth in [None, Some("Bearer nope".to_string()), Some(format!("Basic {OLD_INGEST}"))] {
        let mut req = tonic::Request::new(request.clone());
        if let Some(a) = auth {
            req.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        let status = clients.traces.export(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        messages.push(status.message().to_string());
    }
    assert!(messages.iter().all(|m| m == &messages[0]), "{messages:?}");
    // A big batch with a wrong token: the refusal, not a reset stream.
    let mut big = request.clone();
    big.resource_spans[0].scope_spans[0].spans[0].name = "x".repeat(3 << 20);
    let mut req = tonic::Request::new(big);
    req.metadata_mut().insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(clients.traces.export(req).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(request.clone());
    req.metadata_mut().insert("authorization", format!("Bearer {NEW_INGEST}").parse().unwrap());
    clients.traces.export(req).await.expect("a valid token is accepted");

    // HTTP: 401, a Bearer challenge, one body.
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/traces", obsbox.otlp_http_addr().expect("an OTLP listener"));
    let body = ExportTraceServiceRequest::encode_to_vec(&request);
    let mut bodies = Vec::new();
    for auth in [None, Some("Bearer nope"), Some("Bearer "), Some("Token x")] {
        let mut req = client.post(&url).header("content-type", "application/x-protobuf").body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer");
        bodies.push(resp.text().await.unwrap());
    }
    assert!(bodies.iter().all(|b| b == &bodies[0]), "{bodies:?}");
    // A big batch with a wrong token still reads the 401, not a reset connection.
    for _ in 0..3 {
        let big = vec![b'x'; 3 << 20];
        let resp = client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .bearer_auth("nope")
            .body(big)
            .send()
            .await
            .expect("the refusal arrives");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    // Alertmanager's webhook is ingest too.
    let resp = client
        .post(format!("http://{}/v1/alertmanager", obsbox.otlp_http_addr().expect("an OTLP listener")))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A browser's CORS preflight carries no credentials and passes.
    let resp = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    obsbox.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_port_takes_bearer_or_basic_and_keeps_health_checks_open() {
    let dir = tempfile::tempdir().unwrap();
    let obsbox = start(dir.path()).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", obsbox.http_addr());

    #[derive(Clone, Copy, Debug)]
    enum Cred {
        None,
        Bearer(&'static str),
        Basic(&'static str, &'static str),
    }
    let refused = [
        Cred::None,
        Cred::Bearer("wrong"),
        Cred::Bearer(OLD_INGEST),
        Cred::Basic("admin", "wrong"),
        Cred::Basic(QUERY, ""),
    ];
    let accepted = [Cred::Bearer(QUERY), Cred::Basic("grafana", QUERY), Cred::Basic("", QUERY)];
    let get = |path: &str, cred: Cred| {
        let req = client.get(format!("{base}{path}"));
        match cred {
            Cred::None => req,
            Cred::Bearer(t) => req.bearer_auth(t),
            Cred::Basic(u, p) => req.basic_auth(u, Some(p)),
        }
        .send()
    };
    let guarded = [
        "/services",
        "/search",
        "/api/v1/services",
        "/api/services",
        "/loki/api/v1/labels",
        "/prometheus/api/v1/labels",
        "/metrics",
        "/static/style.css",
        "/api/v1/openapi.json",
    ];
    for path in guarded {
        for cred in refused {
            let resp = get(path, cred).await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path} {cred:?}");
            assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Basic realm=\"obsbox\", charset=\"UTF-8\"");
            assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
            assert_eq!(resp.text().await.unwrap(), obsbox_net::REFUSAL_MESSAGE, "{path} {cred:?}");
        }
        for cred in accepted {
            let resp = get(path, cred).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{path} {cred:?}");
        }
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(path, Cred::None).await.unwrap().status(), StatusCode::OK, "{path} is open");
        assert_eq!(get(path, Cred::Bearer("wrong")).await.unwrap().status(), StatusCode::OK, "{path} ignores creds");
    }
    let metrics = get("/metrics", Cred::Bearer(QUERY)).await.unwrap().text().await.unwrap();
    let expected = format!("obsbox_auth_failures_total{{listener=\"http\"}} {}", guarded.len() * refused.len());
    assert!(metrics.contains(&expected), "{expected} in:\n{metrics}");
    obsbox.shutdown().await.unwrap();
}

/// The `obsbox` binary as a child process with its stdout and stderr in files; killed on drop.
struct Binary {
    child: Child,
    output: PathBuf,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Binary {
        let output = dir.join("obsbox.out");
        let out = std::fs::File::create(&output).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_obsbox"));
        cmd.arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--otlp-grpc-addr", "127.0.0.1:0", "--otlp-http-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for var in ["OBSBOX_CONFIG", "OBSBOX_INGEST_TOKEN", "OBSBOX_QUERY_TOKEN", "OBSBOX_INGEST_TOKEN_FILE"] {
            cmd.env_remove(var);
        }
        cmd.env_remove("OBSBOX_QUERY_TOKEN_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Binary { child: cmd.spawn().expect("spawn obsbox"), output }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Waits for the `listening ...` line.
    fn addrs(&mut self) -> common::Addrs {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let file = std::fs::File::open(&self.output).unwrap();
            if let Some(addrs) = BufReader::new(file).lines().map_while(Result::ok).find_map(|l| {
                let at = l.find("listening ")?;
                common::Addrs::parse_listening_line(&l[at..])
            }) {
                return addrs;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("obsbox exited ({status}):\n{}", self.output());
            }
            assert!(Instant::now() < deadline, "no listening line:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself; its status and output.
    fn exit(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status, self.output());
            }
            assert!(Instant::now() < deadline, "obsbox did not exit:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_the_debug_log() {
    use base64::Engine as _;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    let dir = tempfile::tempdir().unwrap();
    let file_token = "leak-file-4a7d91c2e3";
    let env_ingest = "leak-ingest-0f3b8e61a9";
    let env_query = "leak-query-93c2d07b5e";
    let wrong = "leak-wrong-7e21c49f0d";
    let tokens = token_file(dir.path(), "ingest-tokens", &format!("{file_token}\n"));
    let mut obsbox = Binary::start(
        dir.path(),
        &["--ingest-token-file", tokens.to_str().unwrap()],
        &[
            ("OBSBOX_LOG", "debug"),
            ("RUST_LOG", "debug"),
            ("OBSBOX_INGEST_TOKEN", env_ingest),
            ("OBSBOX_QUERY_TOKEN", env_query),
        ],
    );
    // The wait is short and blocking; this test's runtime has threads to spare.
    let addrs = tokio::task::block_in_place(|| obsbox.addrs());

    let request = common::trace_request(
        "leak",
        vec![common::span(&common::trace_id(7, 7), &common::span_id(7), "op", common::now_ns())],
    );
    let mut clients = common::grpc_clients(addrs.otlp_grpc).await;
    for (token, ok) in [(file_token, true), (env_ingest, true), (wrong, false), (env_query, false)] {
        let mut req = tonic::Request::new(request.clone());
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        assert_eq!(clients.traces.export(req).await.is_ok(), ok, "grpc {token}");
    }
    let client = reqwest::Client::new();
    let body = ExportTraceServiceRequest::encode_to_vec(&request);
    for (token, status) in [(file_token, 200), (env_ingest, 200), (wrong, 401)] {
        let resp = client
            .post(format!("http://{}/v1/traces", addrs.otlp_http))
            .header("content-type", "application/x-protobuf")
            .bearer_auth(token)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "http {token}");
    }
    for (token, status) in [(env_query, 200), (wrong, 401)] {
        let url = format!("http://{}/api/v1/services", addrs.http);
        let resp = client.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "ui bearer {token}");
        let resp = client.get(&url).basic_auth("someone", Some(token)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "ui basic {token}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let output = obsbox.output();
    assert!(output.contains("DEBUG"), "the log is at debug level:\n{output}");
    assert!(output.contains("request refused"), "refusals are logged:\n{output}");
    for secret in [file_token, env_ingest, env_query, wrong] {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("someone:{secret}"));
        for form in [secret.to_string(), basic] {
            assert!(!output.contains(&form), "{form} appears in obsbox's output:\n{output}");
        }
    }
}

#[test]
fn bad_token_settings_stop_start_up_with_a_message_that_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-tokens");
    let (status, out) =
        Binary::start(dir.path(), &["--query-token-file", missing.to_str().unwrap()], &[("OBSBOX_LOG", "warn")]).exit();
    assert!(!status.success());
    assert!(out.contains("no-such-tokens"), "{out}");

    let (status, out) = Binary::start(dir.path(), &[], &[("OBSBOX_INGEST_TOKEN", "")]).exit();
    assert!(!status.success());
    assert!(out.contains("OBSBOX_INGEST_TOKEN is set but empty"), "an empty token never means no token: {out}");

    let (status, out) = Binary::start(dir.path(), &[], &[("OBSBOX_QUERY_TOKEN", "two words")]).exit();
    assert!(!status.success());
    assert!(out.contains("auth.query_token") && !out.contains("two words"), "{out}");
}

/// The scrape settings `docs/security.md` gives, in a real Prometheus: `authorization` with a
/// credentials file, and `basic_auth` with the token as password, scrape `/metrics`; a job
/// without either is refused (its `up` is 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_metrics_with_the_documented_settings() {
    use common::prometheus::Prometheus;

    let dir = tempfile::tempdir().unwrap();
    let obsbox = start(dir.path()).await;
    let credentials = token_file(dir.path(), "prometheus-token", QUERY);
    let target = obsbox.http_addr();
    let job = |name: &str, auth: &str| {
        format!(
            "  - job_name: '{name}'\n    scrape_interval: 500ms\n    scrape_timeout: 500ms\n    \
             static_configs:\n      - targets: ['{target}']\n{auth}"
        )
    };
    let configs = [
        job("bearer", &format!("    authorization:\n      credentials_file: '{}'\n", credentials.display())),
        job(
            "basic",
            &format!("    basic_auth:\n      username: prometheus\n      password_file: '{}'\n", credentials.display()),
        ),
        job("anonymous", ""),
    ]
    .concat();
    // Prometheus's blocking HTTP client lives (and is dropped) off the async context.
    tokio::task::block_in_place(|| {
        let Some(prometheus) = Prometheus::start_with_scrape_configs(&configs, &[]) else { return };
        let ups = |r: &[serde_json::Value]| {
            let mut v: Vec<(String, String)> = r
                .iter()
                .map(|s| (s["metric"]["job"].as_str().unwrap().into(), s["value"][1].as_str().unwrap().into()))
                .collect();
            v.sort();
            v
        };
        let want = vec![("anonymous".into(), "0".into()), ("basic".into(), "1".into()), ("bearer".into(), "1".into())];
        prometheus.wait_for("up", Duration::from_secs(20), |r| ups(r) == want);
        prometheus.wait_for(
            "obsbox_auth_failures_total{job=\"bearer\",listener=\"http\"}",
            Duration::from_secs(20),
            |r| r.first().is_some_and(|s| s["value"][1].as_str().unwrap().parse::<f64>().unwrap() >= 1.0),
        );
    });
    obsbox.shutdown().await.unwrap();
}

/// What a user does at the browser's login prompt (any user name, the token as password):
/// headless Chromium has no prompt, so the credentials go in the URL of a first page, which
/// Chromium then keeps for the site like typed ones. The trace view's scripts, styles and its
/// data fetch all pass with them; without them the page is the 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logged_in_with_basic_auth_uses_the_trace_view() {
    use browser::{ShopTrace, UiTest, span_hex};

    let Some(ui) = UiTest::start_configured(|c| c.auth.query_token = Some(obsbox_net::Token::new(QUERY))).await else {
        return;
    };
    let shop = ShopTrace::new(common::trace_id(9, 9), common::now_ns() - 60_000_000_000, false);
    shop.send(&ui).await;
    let path = format!("/trace/{}", shop.hex());

    ui.goto(&path).await;
    // Chromium answers a Basic challenge with its prompt; headless, that is an empty page.
    let body = ui.wait_for("body").await.text().await.unwrap();
    assert!(!body.contains("GET /checkout") && ui.find_all(".row").await.is_empty(), "no credentials: {body}");

    let refused = ui.console_errors().await;
    assert!(refused.iter().any(|e| e.contains("401")), "{refused:?}");

    // Log in on one page; credentials in a document's URL would also end up in the URLs its
    // scripts fetch (which `fetch` refuses), so the trace view is opened afterwards without
    // them, as after a login prompt.
    let login = format!("http://someone:{QUERY}@{}/services", ui.obsbox.as_ref().unwrap().http_addr());
    ui.client().goto(&login).await.unwrap();
    ui.wait_for("nav").await;
    ui.goto(&path).await;
    let row = |id: u64| format!(".row[data-span=\"{}\"]", span_hex(id));
    ui.wait_for(&row(ShopTrace::FRAUD)).await;
    assert_eq!(ui.find_all(".row").await.len(), shop.spans.len(), "every span rendered by the page's script");
    ui.assert_no_console_errors("trace view with basic auth").await;
    // The live tail and the search form of another page use the same login.
    ui.goto("/logs").await;
    ui.wait_for("form").await;
    ui.assert_no_console_errors("logs page with basic auth").await;
}
