//! The SLO pages in headless Chromium (harness in `tests/e2e/browser/mod.rs`): an in-process obsbox
//! evaluating three of the demo's SLOs (`slos/*.yaml`) in compressed time (`[slo] time_scale =
//! 60`: the 30-day window is 12 hours, the 1 h page window one minute), filled over OTLP/gRPC
//! with 12 hours of history and then a live payment error burst that fires the fast page tier.
//!
//! Screenshots land in `target/ui-screenshots/slos.png` and `slo-page.png` (with
//! `OBSBOX_UPDATE_SCREENSHOTS=1` also in `docs/screenshots/`, for the README). A plain test checks
//! that the screenshots the README shows are committed PNGs the browser tests write.

use crate::browser;
use crate::common;

use std::time::{Duration, Instant};

use browser::{UiTest, span_of};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use serde_json::Value as Json;

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
/// SLO time runs this much faster than the clock.
const TIME_SCALE: u32 = 60;
/// History sent before the SLOs are loaded: the payments SLO's whole 30-day window in SLO time.
const HISTORY_S: u64 = 12 * 3600;
/// The SLOs copied from the repository's `slos/` (alerting.yaml holds the payments alert policy).
const SLO_FILES: [&str; 4] =
    ["alerting.yaml", "payments-availability.yaml", "checkout-latency.yaml", "gateway-availability.yaml"];
const PAYMENTS: &str = "payments-availability";
const CHECKOUT: &str = "checkout-latency";
const GATEWAY: &str = "gateway-availability";
/// The payments policy's fast page tier (alerting.yaml).
const FAST_PAGE: &str = "page-fast-burn";
/// The page width the layout must fit without horizontal scrolling.
const WIDTH: u32 = 1280;

fn charge(id: u64, start_ns: u64, error: bool) -> (String, Span) {
    let mut s = span_of(&common::trace_id(0x5100, id), 1, None, "POST /payments", SpanKind::Server, start_ns, start_ns);
    s.end_time_unix_nano = start_ns + (40 + id % 90) * MS;
    s.attributes = vec![common::str_kv("http.request.method", "POST"), common::str_kv("http.route", "/payments")];
    if error {
        s.status = Some(Status { code: 2, message: "provider declined the charge".into() });
    }
    ("payments".to_string(), s)
}

fn checkout(id: u64, start_ns: u64, slow: bool) -> (String, Span) {
    let ms = if slow { 1400 + id % 300 } else { 150 + id % 400 };
    let s =
        span_of(&common::trace_id(0x0e0e, id), 1, None, "POST /orders", SpanKind::Server, start_ns, start_ns + ms * MS);
    ("orders".to_string(), s)
}

/// 12 hours of traffic ending two minutes ago: a charge every 2 s (1 in 5000 failing, plus four
/// failures in a row seven hours ago), a checkout every 4 s (1 in 1000 over 1 s).
fn history(now: u64) -> Vec<(String, Span)> {
    let start = now - HISTORY_S * S;
    let end = now - 120 * S;
    let mut spans = Vec::new();
    let incident = now - 7 * 3600 * S;
    for (i, t) in (start..end).step_by(2 * S as usize).enumerate() {
        let i = i as u64;
        let error = i % 5000 == 4999 || (t >= incident && t < incident + 8 * S);
        spans.push(charge(i, t, error));
    }
    for (i, t) in (start..end).step_by(4 * S as usize).enumerate() {
        let i = i as u64;
        spans.push(checkout(i, t, i % 1000 == 999));
    }
    spans
}

/// GET of a JSON API path of the running obsbox.
async fn api(ui: &UiTest, path: &str) -> Json {
    let url = ui.url(path);
    common::blocking(move || {
        let resp = reqwest::blocking::get(&url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
        serde_json::from_str(&resp.text().expect("body")).expect("JSON")
    })
    .await
}

/// Status and body of a GET of `path` on the running obsbox.
async fn get(ui: &UiTest, path: &str) -> (u16, String) {
    let url = ui.url(path);
    common::blocking(move || {
        let resp = reqwest::blocking::get(&url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
        (resp.status().as_u16(), resp.text().unwrap_or_default())
    })
    .await
}

/// The summary of `name` in `/api/v1/slos`.
async fn summary(ui: &UiTest, name: &str) -> Json {
    let list = api(ui, "/api/v1/slos").await;
    list["slos"].as_array().into_iter().flatten().find(|s| s["name"] == name).cloned().unwrap_or(Json::Null)
}

/// Polls `/api/v1/slos` until `ok` holds for `name`'s summary.
async fn wait_summary(ui: &UiTest, name: &str, what: &str, timeout: Duration, ok: impl Fn(&Json) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let s = summary(ui, name).await;
        if ok(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} within {timeout:?}; last summary: {s}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The text of every cell of each row of `css` (a table).
async fn table(ui: &UiTest, css: &str) -> Vec<Vec<String>> {
    let script = format!(
        "return [...document.querySelectorAll({css:?} + ' tbody tr')].map(r => [...r.cells].map(c => c.textContent.trim()))"
    );
    serde_json::from_value(ui.js(&script, vec![]).await).expect("rows of cells")
}

async fn assert_fits(ui: &UiTest, page: &str) {
    let overflow = ui.horizontal_overflow().await;
    assert!(overflow <= 0, "{page} overflows a {WIDTH} px window by {overflow} px");
}

/// The list shows each SLO's objective, SLI, budget and status and sorts by a header click; the
/// page of the payments SLO shows budget cards, both charts, the fast page tier firing, its
/// history and the worst traces, whose links open the trace view. Neither page scrolls
/// sideways at 1280 px.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slo_list_and_page_show_a_firing_page_alert_and_link_to_the_worst_traces() {
    let slo_dir = tempfile::tempdir().expect("temp SLO dir");
    let dir = slo_dir.path().to_path_buf();
    let Some(ui) = UiTest::start_configured(|c| {
        c.slo.dir = Some(dir);
        c.slo.time_scale = TIME_SCALE;
    })
    .await
    else {
        return;
    };

    // History first, then the SLOs: a new SLO is backfilled from what the store holds.
    let now = common::now_ns();
    let spans = history(now);
    let last_charge = spans.iter().rev().find(|(svc, _)| svc == "payments").map(|(_, s)| s.trace_id.clone()).unwrap();
    ui.send_spans(spans).await;
    ui.wait_for_trace(&last_charge, 1).await;
    for file in SLO_FILES {
        std::fs::copy(common::workspace_root().join("slos").join(file), slo_dir.path().join(file)).expect("copy SLO");
    }
    ui.obsbox.as_ref().expect("running").reload_slos();
    wait_summary(&ui, CHECKOUT, "the checkout SLO is backfilled", Duration::from_secs(30), |s| {
        s["health"] == "healthy"
    })
    .await;
    wait_summary(&ui, PAYMENTS, "the payments SLO is backfilled", Duration::from_secs(30), |s| {
        s["health"] != "no_data" && s["firing"].as_array().is_some_and(|f| f.is_empty())
    })
    .await;

    // A live error burst: four charges a second, one in eight failing (burn rate ~125 against
    // the fast page tier's 14.4), until the end of the test.
    let addr = ui.obsbox.as_ref().expect("running").otlp_grpc_addr().expect("an OTLP listener");
    let burst = tokio::spawn(async move {
        let mut traces = common::grpc_clients(addr).await.traces;
        for i in 0u64.. {
            let (service, span) = charge(1_000_000 + i, common::now_ns() - 100 * MS, i % 8 == 0);
            let _ = traces.export(common::trace_request(&service, vec![span])).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    wait_summary(&ui, PAYMENTS, "the fast page tier fires", Duration::from_secs(60), |s| {
        s["firing"].as_array().is_some_and(|f| f.iter().any(|t| t == FAST_PAGE))
    })
    .await;

    ui.client().set_window_size(WIDTH, 900).await.expect("resize the window");

    // --- the list -----------------------------------------------------------------------------
    ui.goto("/slos").await;
    ui.wait_for("table.slos tbody tr").await;
    ui.assert_no_console_errors("SLO list").await;
    let rows = table(&ui, "table.slos").await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let by_name = |name: &str| rows.iter().find(|r| r[0].contains(name)).cloned().unwrap_or_default();
    // Columns: SLO, service, objective, window, SLI, budget, status, alerts.
    let payments = by_name("Payments availability");
    assert_eq!(payments[1], "payments");
    assert_eq!(payments[2], "99.9%", "{payments:?}");
    assert_eq!(payments[3], "30d rolling", "{payments:?}");
    assert!(payments[4].ends_with('%') && payments[4].starts_with("99."), "SLI {payments:?}");
    assert!(payments[5].ends_with('%'), "budget {payments:?}");
    assert_eq!(payments[6], "firing", "{payments:?}");
    assert!(payments[7].contains(FAST_PAGE), "{payments:?}");
    let checkout = by_name("Checkout latency");
    assert_eq!((checkout[2].as_str(), checkout[6].as_str()), ("99%", "healthy"), "{checkout:?}");
    assert!(checkout[4].starts_with("99.9"), "SLI of 1 slow in 1000: {checkout:?}");
    let gateway = by_name("Gateway availability");
    assert_eq!((gateway[2].as_str(), gateway[6].as_str()), ("99.5%", "no data"), "{gateway:?}");
    ui.wait_for(&format!("table.slos a[href='/slo/{GATEWAY}']")).await;
    assert_fits(&ui, "the SLO list").await;
    // A short window for the picture: the list is three rows.
    ui.client().set_window_size(WIDTH, 420).await.expect("resize the window");
    ui.screenshot("slos").await;
    ui.client().set_window_size(WIDTH, 900).await.expect("resize the window");

    // Sort by budget: no data first, then payments (burning), then checkout; again: reversed.
    let names = |rows: Vec<Vec<String>>| rows.into_iter().map(|r| r[0].clone()).collect::<Vec<_>>();
    ui.wait_for("table.slos th a[href*='sort=budget']").await.click().await.unwrap();
    ui.wait_url("sort=budget&dir=asc").await;
    ui.wait_for("table.slos th a.sorted[href*='sort=budget']").await;
    let asc = names(table(&ui, "table.slos").await);
    assert!(
        asc[0].contains("Gateway") && asc[1].contains("Payments") && asc[2].contains("Checkout"),
        "ascending budget: {asc:?}"
    );
    ui.wait_for("table.slos th a[href*='sort=budget&dir=desc']").await.click().await.unwrap();
    ui.wait_url("sort=budget&dir=desc").await;
    let desc = names(table(&ui, "table.slos").await);
    assert_eq!(desc, asc.iter().rev().cloned().collect::<Vec<_>>(), "descending is the reverse");

    // --- one SLO ------------------------------------------------------------------------------
    ui.wait_for(&format!("table.slos a[href='/slo/{PAYMENTS}']")).await.click().await.unwrap();
    ui.wait_url(&format!("/slo/{PAYMENTS}")).await;
    ui.wait_for(".cards .card").await;
    ui.assert_no_console_errors("SLO page").await;
    let cards = ui.find_all(".cards .card").await;
    assert_eq!(cards.len(), 4, "SLI, budget, time-to-exhaustion and window cards");
    let budget = cards[1].text().await.unwrap();
    assert!(budget.contains('%') && budget.contains("bad events left"), "budget card: {budget}");
    let exhaustion = cards[2].text().await.unwrap();
    assert!(
        exhaustion.contains("of clock time") || exhaustion.contains("budget spent"),
        "burning: SLO time and clock time: {exhaustion}"
    );
    assert_eq!(ui.find_all("svg.chart polyline").await.len(), 2, "burn-down and SLI charts, each a line");
    let tiers = table(&ui, "table.tiers").await;
    assert_eq!(tiers.len(), 3, "three tiers in alerting.yaml: {tiers:?}");
    let fast = tiers.iter().find(|r| r[0] == FAST_PAGE).expect("the fast page tier");
    assert_eq!((fast[1].as_str(), fast[2].as_str()), ("page", "14.4×"), "{fast:?}");
    assert_eq!((fast[8].as_str(), fast[9].as_str()), ("met", "firing"), "{fast:?}");
    let history = table(&ui, "table.history").await;
    assert!(
        history.iter().any(|r| r[1] == FAST_PAGE && r[2] == "pending" && r[3] == "firing"),
        "history has the pending -> firing transition: {history:?}"
    );
    let worst = ui.find_all("table.worst tbody a[href^='/trace/']").await;
    assert!(!worst.is_empty(), "worst traces listed");
    let first = worst[0].attr("href").await.unwrap().unwrap_or_default();
    let worst_rows = table(&ui, "table.worst").await;
    assert!(worst_rows[0][1] == "POST /payments" && worst_rows[0][3] == "error", "errors first: {worst_rows:?}");
    assert_fits(&ui, "the SLO page").await;
    ui.screenshot("slo-page").await;
    ui.js(
        "document.querySelector('table.tiers').closest('.table-wrap').previousElementSibling.scrollIntoView()",
        vec![],
    )
    .await;
    ui.screenshot("slo-alerts").await;

    // A worst trace opens in the trace view.
    worst[0].click().await.unwrap();
    ui.wait_url(&first).await;
    ui.wait_for(".row").await;
    ui.assert_no_console_errors("trace view from the SLO page").await;

    // Bad addresses get a clear 4xx, not a 500.
    let (status, body) = get(&ui, "/slos?sort=nonsense").await;
    assert!(status == 400 && body.contains("unknown sort"), "{status} {body}");
    let (status, body) = get(&ui, "/slo/no-such-slo").await;
    assert!(status == 404 && body.contains("no SLO named"), "{status} {body}");

    burst.abort();
    ui.finish().await;
}

/// Every screenshot the README shows is a committed file the browser tests write (one of
/// [`browser::DOC_SCREENSHOTS`]), a PNG and small enough for a repository (under 300 KB).
#[test]
fn readme_screenshots_are_committed_pngs_the_browser_tests_take() {
    let root = common::workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let shown: Vec<&str> = readme
        .split("](docs/screenshots/")
        .skip(1)
        .map(|rest| rest.split(".png)").next().expect("a .png link"))
        .collect();
    assert!(!shown.is_empty(), "the README shows screenshots");
    for name in &shown {
        assert!(browser::DOC_SCREENSHOTS.contains(name), "{name}.png is not one the browser tests write");
        let path = root.join(format!("docs/screenshots/{name}.png"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is a PNG", path.display());
        assert!(bytes.len() < 300 * 1024, "{} is {} bytes", path.display(), bytes.len());
    }
    for name in browser::DOC_SCREENSHOTS {
        assert!(shown.contains(name), "docs/screenshots/{name}.png is written but the README does not show it");
    }
}
