//! Harness of the browser tests: headless Chromium driven over WebDriver (fantoccini) against an
//! in-process obsbox filled over real OTLP/gRPC.
//!
//! A root test file uses it with `mod common; mod browser;` (this module builds on
//! `tests/e2e/common`).
//!
//! # Where things are
//! - [`UiTest`]: obsbox + chromedriver + a Chromium session ([`UiTest::start_without_javascript`]
//!   for one with scripts off); [`UiTest::start`] fails with a clear
//!   message when `/usr/bin/chromium` or `/usr/bin/chromedriver` is missing (unless
//!   `OBSBOX_SKIP_EXTERNAL=1`, then it returns `None` and the test returns early).
//! - Page helpers: [`UiTest::goto`], [`UiTest::wait_for`], [`UiTest::wait_gone`],
//!   [`UiTest::js`], [`UiTest::screenshot`] (PNG in `target/ui-screenshots/<name>.png`; the
//!   ones named in [`DOC_SCREENSHOTS`] are also copied to `docs/screenshots/` for the README when
//!   `OBSBOX_UPDATE_SCREENSHOTS=1`), [`UiTest::console_errors`].
//! - Configuration: [`UiTest::start_configured`] changes obsbox's test configuration first.
//! - Data: [`UiTest::send_spans`], [`UiTest::send_logs`], [`UiTest::wait_for_trace`],
//!   [`UiTest::wait_for_logs`] and the known fixtures [`ShopTrace`] and [`big_trace`].
//! - Process hygiene: chromedriver runs in its own process group; dropping [`UiTest`] kills the
//!   group (chromedriver and the Chromium it started) and removes the profile directory.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use obsbox::storage::{LogPredicate, LogQuery, Reader, TimeRange};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link, SpanKind};
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use serde_json::{Value as Json, json};

use crate::common;

/// Where Debian installs the browser and its WebDriver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's `chromium-driver`.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Default wait for an element.
pub const WAIT: Duration = Duration::from_secs(10);
/// Spans per OTLP request when filling the store (well under the 8 MiB body limit).
const SPANS_PER_REQUEST: usize = 2000;

/// Chromium's flags: headless, no network chatter of its own, a fixed window.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1400,900",
];

/// Whether external programs may be missing (`OBSBOX_SKIP_EXTERNAL=1`).
pub fn skip_external() -> bool {
    std::env::var("OBSBOX_SKIP_EXTERNAL").is_ok_and(|v| v == "1")
}

/// `target/ui-screenshots` of the workspace: where screenshots go.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::workspace_root().join("target"));
    target.join("ui-screenshots")
}

/// Screenshots the README shows: `UiTest::screenshot` copies these to `docs/screenshots/<name>.png`
/// when `OBSBOX_UPDATE_SCREENSHOTS=1` (only then, so that test runs and CI leave the committed
/// files alone).
pub const DOC_SCREENSHOTS: &[&str] =
    &["trace-detail", "pages-services", "pages-logs", "pages-map", "slos", "slo-page", "slo-alerts"];

/// Whether screenshots for the README are to be rewritten (`OBSBOX_UPDATE_SCREENSHOTS=1`).
pub fn update_doc_screenshots() -> bool {
    std::env::var("OBSBOX_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1")
}

/// chromedriver in its own process group, killed with everything it started when dropped.
struct Driver {
    child: Child,
    port: u16,
    log_path: PathBuf,
}

impl Driver {
    fn start(log_path: PathBuf) -> Driver {
        let port = crate::common::free_port();
        let log = std::fs::File::create(&log_path).expect("create the chromedriver log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            // Its own group, so that the browser it spawns can be killed with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let mut driver = Driver { child, port, log_path };
        let ready =
            common::wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        if !ready {
            let tail = std::fs::read_to_string(&driver.log_path).unwrap_or_default();
            driver.kill();
            panic!("chromedriver did not listen on port {port} within 20 s; its log:\n{tail}");
        }
        driver
    }

    fn kill(&mut self) {
        if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group we created (its leader is our child, not
            // reaped yet, so the id cannot have been reused).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The legacy `POST /session/{id}/se/log` command chromedriver keeps for the browser console.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_string()))
    }
}

/// obsbox, chromedriver and one Chromium session.
pub struct UiTest {
    client: Client,
    /// The running obsbox (in-process, every listener on a free port).
    pub obsbox: Option<obsbox::Obsbox>,
    /// `http://127.0.0.1:PORT` of the UI.
    pub base_url: String,
    driver: Driver,
    grpc: common::GrpcClients,
    // Declared last: removed after the processes using them are gone.
    profile: tempfile::TempDir,
    data: tempfile::TempDir,
    _one_at_a_time: tokio::sync::OwnedMutexGuard<()>,
}

/// Browser tests run one at a time: several Chromiums at once on a small machine make the
/// timings they assert meaningless.
fn browser_lock() -> Arc<tokio::sync::Mutex<()>> {
    static LOCK: OnceLock<Arc<tokio::sync::Mutex<()>>> = OnceLock::new();
    LOCK.get_or_init(|| Arc::new(tokio::sync::Mutex::new(()))).clone()
}

impl UiTest {
    /// Starts an empty obsbox and a headless Chromium. Panics with a clear message when
    /// Chromium or chromedriver is missing, unless `OBSBOX_SKIP_EXTERNAL=1` (then `None`).
    pub async fn start() -> Option<UiTest> {
        Self::start_with(true, |_| {}).await
    }

    /// [`UiTest::start`] with JavaScript switched off in the browser (pages must still read).
    pub async fn start_without_javascript() -> Option<UiTest> {
        Self::start_with(false, |_| {}).await
    }

    /// [`UiTest::start`] with obsbox's test configuration ([`common::test_config`]) changed by
    /// `configure` first (an SLO directory, a time scale, ...).
    pub async fn start_configured(configure: impl FnOnce(&mut obsbox::Config)) -> Option<UiTest> {
        Self::start_with(true, configure).await
    }

    async fn start_with(javascript: bool, configure: impl FnOnce(&mut obsbox::Config)) -> Option<UiTest> {
        for program in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(program).exists() {
                if skip_external() {
                    eprintln!("skipped: {program} is missing and OBSBOX_SKIP_EXTERNAL=1");
                    return None;
                }
                panic!(
                    "{program} is missing: the browser tests need Debian's chromium and chromium-driver \
                     (scripts/test.sh installs them: apt-get install chromium chromium-driver); set \
                     OBSBOX_SKIP_EXTERNAL=1 to skip tests that need external programs"
                );
            }
        }
        let one_at_a_time = browser_lock().lock_owned().await;
        let data = tempfile::tempdir().expect("temp data dir");
        let mut config = common::test_config(data.path());
        configure(&mut config);
        let obsbox = common::start_obsbox_with(config).await;
        let base_url = format!("http://{}", obsbox.http_addr());
        let grpc = common::grpc_clients(obsbox.otlp_grpc_addr().expect("an OTLP listener")).await;

        let profile = tempfile::tempdir().expect("temp browser profile");
        let driver = common::blocking({
            let log = profile.path().join("chromedriver.log");
            move || Driver::start(log)
        })
        .await;
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().join("chromium").display()));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": args,
                // 2 = block: the content setting behind chrome://settings/content/javascript.
                "prefs": { "profile.managed_default_content_settings.javascript": if javascript { 1 } else { 2 } },
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Json::Object(capabilities) = capabilities else { unreachable!("an object literal") };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = match ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
        {
            Ok(client) => client,
            Err(e) => {
                let log = std::fs::read_to_string(&driver.log_path).unwrap_or_default();
                let tail = &log[log.len().saturating_sub(4000)..];
                panic!("cannot start a Chromium session through chromedriver: {e}; chromedriver log tail:\n{tail}");
            }
        };
        Some(UiTest {
            client,
            obsbox: Some(obsbox),
            base_url,
            driver,
            grpc,
            profile,
            data,
            _one_at_a_time: one_at_a_time,
        })
    }

    /// The WebDriver client, for what the helpers below do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The store of the running obsbox.
    pub fn store(&self) -> Arc<obsbox::storage::DiskStore> {
        self.obsbox.as_ref().expect("obsbox running").store().expect("a local store")
    }

    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Opens `path` (relative to the UI's root) and waits for the page's load event.
    pub async fn goto(&self, path: &str) {
        let url = self.url(path);
        self.client.goto(&url).await.unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// The current URL's path and query.
    pub async fn current_path(&self) -> String {
        let url = self.client.current_url().await.expect("current url");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        }
    }

    /// Waits up to 10 s for the current path and query to contain `part`; returns them.
    pub async fn wait_url(&self, part: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.current_path().await;
            if url.contains(part) {
                return url;
            }
            assert!(Instant::now() < deadline, "the URL {url} never contained {part}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `timeout` for an element matching `css`; panics (with a screenshot named
    /// `failed-wait`) when none appears.
    pub async fn wait_for_within(&self, css: &str, timeout: Duration) -> Element {
        match self.client.wait().at_most(timeout).every(Duration::from_millis(20)).for_element(Locator::Css(css)).await
        {
            Ok(e) => e,
            Err(e) => {
                self.screenshot("failed-wait").await;
                let path = self.current_path().await;
                panic!("no element matches {css:?} on {path} after {timeout:?}: {e}");
            }
        }
    }

    /// [`UiTest::wait_for_within`] with the default [`WAIT`].
    pub async fn wait_for(&self, css: &str) -> Element {
        self.wait_for_within(css, WAIT).await
    }

    /// Waits until no element matches `css`.
    pub async fn wait_gone(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.client.find_all(Locator::Css(css)).await.expect("find_all");
            if found.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                self.screenshot("failed-wait-gone").await;
                panic!("{} elements still match {css:?} after {WAIT:?}", found.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the JavaScript expression `condition` is truthy; panics with `what` when it
    /// is not within [`WAIT`].
    pub async fn wait_js(&self, condition: &str, what: &str) {
        let script = format!("return !!({condition});");
        let deadline = Instant::now() + WAIT;
        loop {
            if self.js(&script, vec![]).await == Json::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                self.screenshot("failed-wait-js").await;
                panic!("timed out waiting for {what} ({condition})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every element matching `css`.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client.find_all(Locator::Css(css)).await.expect("find_all")
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page.
    pub async fn js(&self, script: &str, args: Vec<Json>) -> Json {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Saves a PNG of the viewport to `target/ui-screenshots/<name>.png` and returns its path;
    /// with `OBSBOX_UPDATE_SCREENSHOTS=1`, one named in [`DOC_SCREENSHOTS`] is also written to
    /// `docs/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("create target/ui-screenshots");
        let path = dir.join(format!("{name}.png"));
        match self.client.screenshot().await {
            Ok(png) => {
                std::fs::write(&path, &png).expect("write screenshot");
                if update_doc_screenshots() && DOC_SCREENSHOTS.contains(&name) {
                    let docs = common::workspace_root().join("docs/screenshots");
                    std::fs::create_dir_all(&docs).expect("create docs/screenshots");
                    std::fs::write(docs.join(format!("{name}.png")), &png).expect("write the README's screenshot");
                }
            }
            Err(e) => eprintln!("screenshot {name} failed: {e}"),
        }
        path
    }

    /// `document.documentElement.scrollWidth - clientWidth`: how far the page overflows
    /// horizontally (0 when it fits the window).
    pub async fn horizontal_overflow(&self) -> i64 {
        let script = "const d = document.documentElement; return d.scrollWidth - d.clientWidth;";
        self.js(script, vec![]).await.as_i64().expect("a number")
    }

    /// Browser console messages of level SEVERE since the last call (JavaScript errors, CSP
    /// violations, failed loads).
    pub async fn console_errors(&self) -> Vec<String> {
        let entries = self.client.issue_cmd(BrowserLog).await.expect("read the browser console");
        entries
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            // Chromium asks for /favicon.ico on its own; the UI does not link one.
            .filter(|e| !e["message"].as_str().unwrap_or_default().contains("/favicon.ico"))
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Panics when the console shows errors (listing them).
    pub async fn assert_no_console_errors(&self, context: &str) {
        let errors = self.console_errors().await;
        assert!(errors.is_empty(), "{context}: browser console errors:\n{}", errors.join("\n"));
    }

    /// Sends `spans` over OTLP/gRPC, one resource per service, in requests of at most
    /// [`SPANS_PER_REQUEST`] spans.
    pub async fn send_spans(&self, spans: Vec<(String, Span)>) {
        let mut by_service: BTreeMap<String, Vec<Span>> = BTreeMap::new();
        for (service, span) in spans {
            by_service.entry(service).or_default().push(span);
        }
        let mut requests = Vec::new();
        for (service, spans) in by_service {
            let mut spans = spans.into_iter().peekable();
            while spans.peek().is_some() {
                let chunk: Vec<Span> = spans.by_ref().take(SPANS_PER_REQUEST).collect();
                requests.push(common::trace_request(&service, chunk));
            }
        }
        for request in requests {
            self.export_traces(request).await;
        }
    }

    /// Sends one OTLP trace request, retrying while the store says it is overloaded (as SDKs
    /// do); panics when it is not accepted.
    pub async fn export_traces(&self, request: ExportTraceServiceRequest) {
        let mut client = self.grpc.traces.clone();
        let mut backoff = Duration::from_millis(50);
        let deadline = Instant::now() + Duration::from_secs(60);
        let response = loop {
            match client.export(request.clone()).await {
                Err(status)
                    if matches!(status.code(), tonic::Code::ResourceExhausted | tonic::Code::Unavailable)
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                other => break other.expect("trace export accepted"),
            }
        };
        let partial = response.into_inner().partial_success;
        assert!(partial.as_ref().is_none_or(|p| p.rejected_spans == 0), "spans rejected: {partial:?}");
    }

    /// Sends log records over OTLP/gRPC, one resource per service.
    pub async fn send_logs(&self, records: Vec<(String, LogRecord)>) {
        let mut by_service: BTreeMap<String, Vec<LogRecord>> = BTreeMap::new();
        for (service, r) in records {
            by_service.entry(service).or_default().push(r);
        }
        for (service, records) in by_service {
            let request = ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: Some(common::resource(&service)),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(common::scope()),
                        log_records: records,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            let mut client = self.grpc.logs.clone();
            let response = client.export(request).await.expect("log export accepted");
            let partial = response.into_inner().partial_success;
            assert!(partial.as_ref().is_none_or(|p| p.rejected_log_records == 0), "logs rejected: {partial:?}");
        }
    }

    /// Waits until the store returns `spans` spans for `trace_id`.
    pub async fn wait_for_trace(&self, trace_id: &[u8], spans: usize) {
        let store = self.store();
        let id = trace_id.to_vec();
        let found = common::wait_until_async(common::SEARCHABLE * 3, move || {
            store.trace(&id).map(|s| s.len() >= spans).unwrap_or(false)
        })
        .await;
        assert!(found, "trace {} did not reach {spans} searchable spans", hex::encode(trace_id));
    }

    /// Waits until the store returns at least `count` log records of `trace_id`.
    pub async fn wait_for_logs(&self, trace_id: &[u8], count: usize) {
        let store = self.store();
        let id = trace_id.to_vec();
        let found = common::wait_until_async(common::SEARCHABLE, move || {
            let query = LogQuery { predicate: LogPredicate::TraceId(id.clone()), time: TimeRange::ALL, limit: count };
            store.find_logs(&query).map(|l| l.len() >= count).unwrap_or(false)
        })
        .await;
        assert!(found, "the logs of trace {} did not become searchable", hex::encode(trace_id));
    }

    /// Ends the browser session, stops chromedriver and shuts obsbox down cleanly.
    pub async fn finish(mut self) {
        let _ = self.client.clone().close().await;
        self.driver.kill();
        if let Some(obsbox) = self.obsbox.take() {
            obsbox.shutdown().await.expect("obsbox shuts down cleanly");
        }
    }
}

// --- known data ----------------------------------------------------------------------------

/// A span of `service` with the given times, kind and parent.
pub fn span_of(
    trace_id: &[u8],
    id: u64,
    parent: Option<u64>,
    name: &str,
    kind: SpanKind,
    start_ns: u64,
    end_ns: u64,
) -> Span {
    Span {
        trace_id: trace_id.to_vec(),
        span_id: common::span_id(id),
        parent_span_id: parent.map(common::span_id).unwrap_or_default(),
        name: name.to_string(),
        kind: kind as i32,
        start_time_unix_nano: start_ns,
        end_time_unix_nano: end_ns,
        status: Some(Status::default()),
        ..Default::default()
    }
}

const MS: u64 = 1_000_000;

/// A checkout through four services with everything the trace view shows: an error with an
/// exception event, a link to another trace, attributes with markup in them, and logs tied to
/// spans. Variant `b` is the same request after a change: one span added (`apply coupon`), one
/// removed (`redis GET`) and `POST /pay` three times slower (for the compare view).
pub struct ShopTrace {
    /// The trace id.
    pub trace_id: Vec<u8>,
    /// Start of the root span, Unix ns.
    pub start_ns: u64,
    /// `(service, span)` of every span.
    pub spans: Vec<(String, Span)>,
    /// `(service, record)` of every log record.
    pub logs: Vec<(String, LogRecord)>,
}

impl ShopTrace {
    /// Root `GET /checkout` (frontend).
    pub const ROOT: u64 = 0x10;
    /// `POST cart` (frontend, client).
    pub const CART_CLIENT: u64 = 0x11;
    /// `POST /cart` (cart, server): has attribute `cart.items = 3`.
    pub const CART: u64 = 0x12;
    /// `redis GET` (cart, client); only in variant a.
    pub const REDIS: u64 = 0x13;
    /// The span named `<script>alert(1)</script>` (cart, internal).
    pub const XSS: u64 = 0x14;
    /// `POST payment` (frontend, client).
    pub const PAY_CLIENT: u64 = 0x15;
    /// `POST /pay` (payment, server): status error "card declined", an exception event, a link.
    pub const PAY: u64 = 0x16;
    /// `fraud check` (payment, internal).
    pub const FRAUD: u64 = 0x17;
    /// `apply coupon` (cart, internal); only in variant b.
    pub const COUPON: u64 = 0x18;
    /// The span name that must come out escaped.
    pub const XSS_NAME: &'static str = "<script>alert(1)</script>";

    /// Variant a (`b == false`) or b, with trace id `trace_id`, starting at `start_ns`.
    pub fn new(trace_id: Vec<u8>, start_ns: u64, b: bool) -> ShopTrace {
        let t = |ms: u64| start_ns + ms * MS;
        let id = trace_id.as_slice();
        let mut spans = Vec::new();
        let mut push = |service: &str, span: Span| spans.push((service.to_string(), span));

        let mut root = span_of(id, Self::ROOT, None, "GET /checkout", SpanKind::Server, t(0), t(100));
        root.attributes = vec![common::str_kv("http.request.method", "GET"), common::str_kv("http.route", "/checkout")];
        push("frontend", root);
        push("frontend", span_of(id, Self::CART_CLIENT, Some(Self::ROOT), "POST cart", SpanKind::Client, t(5), t(40)));
        let mut cart = span_of(id, Self::CART, Some(Self::CART_CLIENT), "POST /cart", SpanKind::Server, t(7), t(38));
        cart.attributes = vec![common::int_kv("cart.items", 3), common::str_kv("http.route", "/cart")];
        push("cart", cart);
        if b {
            push("cart", span_of(id, Self::COUPON, Some(Self::CART), "apply coupon", SpanKind::Internal, t(10), t(15)));
        } else {
            let mut redis = span_of(id, Self::REDIS, Some(Self::CART), "redis GET", SpanKind::Client, t(10), t(15));
            redis.attributes = vec![common::str_kv("db.system", "redis")];
            push("cart", redis);
        }
        let mut xss = span_of(id, Self::XSS, Some(Self::CART), Self::XSS_NAME, SpanKind::Internal, t(16), t(20));
        xss.attributes = vec![common::str_kv("note", "</script><script>alert(2)</script><img src=x onerror=alert(3)>")];
        push("cart", xss);
        push(
            "frontend",
            span_of(id, Self::PAY_CLIENT, Some(Self::ROOT), "POST payment", SpanKind::Client, t(45), t(95)),
        );
        let pay_end = if b { 93 + 92 } else { 93 };
        let mut pay = span_of(id, Self::PAY, Some(Self::PAY_CLIENT), "POST /pay", SpanKind::Server, t(47), t(pay_end));
        pay.attributes = vec![common::str_kv("payment.method", "card"), common::int_kv("order.id", 42)];
        pay.status = Some(Status { code: 2, message: "card declined".to_string() });
        pay.events = vec![Event {
            time_unix_nano: t(90),
            name: "exception".to_string(),
            attributes: vec![
                common::str_kv("exception.type", "CardDeclined"),
                common::str_kv("exception.message", "card declined by issuer"),
            ],
            dropped_attributes_count: 0,
        }];
        pay.links = vec![Link {
            trace_id: common::trace_id(0xfeed, 0xbeef),
            span_id: common::span_id(0x99),
            attributes: vec![common::str_kv("link.reason", "retry of")],
            ..Default::default()
        }];
        push("payment", pay);
        push("payment", span_of(id, Self::FRAUD, Some(Self::PAY), "fraud check", SpanKind::Internal, t(50), t(80)));

        let log = |body: &str, at: u64, span: u64, severity: i32, text: &str| {
            let mut r = common::log_record(body, t(at));
            r.trace_id = trace_id.clone();
            r.span_id = common::span_id(span);
            r.severity_number = severity;
            r.severity_text = text.to_string();
            r
        };
        let logs = vec![
            ("frontend".to_string(), log("checkout started", 1, Self::ROOT, 9, "INFO")),
            ("cart".to_string(), log("cart loaded with 3 items", 12, Self::CART, 9, "INFO")),
            ("payment".to_string(), log("card declined for order 42", 90, Self::PAY, 17, "ERROR")),
        ];
        ShopTrace { trace_id, start_ns, spans, logs }
    }

    /// Hex id of the trace.
    pub fn hex(&self) -> String {
        hex::encode(&self.trace_id)
    }

    /// Sends the spans and logs and waits until they are searchable.
    pub async fn send(&self, ui: &UiTest) {
        ui.send_spans(self.spans.clone()).await;
        ui.send_logs(self.logs.clone()).await;
        ui.wait_for_trace(&self.trace_id, self.spans.len()).await;
        ui.wait_for_logs(&self.trace_id, self.logs.len()).await;
    }
}

/// 16 hex digits of a span id made by [`common::span_id`].
pub fn span_hex(id: u64) -> String {
    hex::encode(common::span_id(id))
}

/// A trace of `n` spans over 8 services: a root, then each span the child of an earlier one
/// (a bushy tree about 8-12 levels deep), children inside their parents' time, every 97th span
/// an error. Deterministic for given arguments. Span ids are `1..=n`.
pub fn big_trace(trace_id: &[u8], n: usize, start_ns: u64) -> Vec<(String, Span)> {
    const SERVICES: [&str; 8] = ["gateway", "auth", "orders", "inventory", "pricing", "search", "users", "billing"];
    const OPS: [&str; 6] = ["GET /items", "SELECT rows", "cache lookup", "POST /orders", "render", "rpc call"];
    let mut out: Vec<(String, Span)> = Vec::with_capacity(n);
    // (start, end, depth) of each span so far, to place children inside their parent.
    let mut times: Vec<(u64, u64, u32)> = Vec::with_capacity(n);
    let total = 10_000 * MS;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..n {
        let id = i as u64 + 1;
        let (parent, start, end, depth) = if i == 0 {
            (None, start_ns, start_ns + total, 0)
        } else {
            // Prefer recent spans as parents (locality, depth), sometimes any earlier one.
            let r = next();
            let back = if r % 4 == 0 { (r >> 8) as usize % i } else { (r >> 8) as usize % i.min(16) };
            let mut p = i - 1 - back;
            if times[p].2 >= 11 {
                p = 0;
            }
            let (ps, pe, pd) = times[p];
            let len = pe - ps;
            let off = next() % (len / 2).max(1);
            let dur = (next() % (len - off).max(1)).max(1000);
            (Some(p as u64 + 1), ps + off, (ps + off + dur).min(pe), pd + 1)
        };
        times.push((start, end, depth));
        let service = SERVICES[(next() % SERVICES.len() as u64) as usize];
        let op = OPS[(next() % OPS.len() as u64) as usize];
        let kind = if parent.is_none() { SpanKind::Server } else { SpanKind::Internal };
        let mut span = span_of(trace_id, id, parent, op, kind, start, end);
        span.attributes = vec![common::int_kv("index", id as i64), common::str_kv("component", op)];
        if id.is_multiple_of(97) {
            span.status = Some(Status { code: 2, message: format!("failure {id}") });
        }
        out.push((service.to_string(), span));
    }
    out
}

/// A key-value attribute list as `key=value` lines, for messages.
pub fn describe(attributes: &[KeyValue]) -> String {
    attributes.iter().map(|kv| format!("{}={:?}", kv.key, kv.value)).collect::<Vec<_>>().join("\n")
}
