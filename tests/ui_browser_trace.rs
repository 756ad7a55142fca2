//! The trace view in headless Chromium (see `tests/browser/mod.rs` for the harness), against an
//! in-process obsbox filled over OTLP/gRPC with known traces and logs.

mod browser;
mod common;

use browser::{ShopTrace, UiTest};

/// The harness itself: the browser reaches obsbox, screenshots are written, the console is
/// readable and data sent over OTLP becomes searchable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_drives_chromium_against_obsbox() {
    let Some(ui) = UiTest::start().await else { return };
    let shop = ShopTrace::new(common::trace_id(1, 1), common::now_ns() - 60_000_000_000, false);
    shop.send(&ui).await;
    ui.goto(&format!("/api/v1/traces/{}", shop.hex())).await;
    let body = ui.wait_for("body").await.text().await.expect("body text");
    assert!(body.contains("card declined"), "the browser shows the trace JSON: {body:.200}");
    ui.js("console.error('harness check')", vec![]).await;
    let errors = ui.console_errors().await;
    assert!(errors.iter().any(|e| e.contains("harness check")), "console errors are readable: {errors:?}");
    let shot = ui.screenshot("harness").await;
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000), "a PNG was written to {}", shot.display());
    ui.finish().await;
}
