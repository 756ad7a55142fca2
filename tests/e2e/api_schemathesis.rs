//! schemathesis (PyPI, from the test venv) against the native API's OpenAPI document at
//! `/api/v1/openapi.json`, served by an in-process obsbox holding traces (with errors, several
//! services, parent/child spans), logs linked to them, metrics and the repository's SLOs.
//!
//! Every check runs (`--checks all`: no server errors, declared status codes and content types,
//! response schemas, schema-valid requests accepted, schema-invalid ones rejected, ...) with a
//! fixed seed and a bounded number of examples per operation; the exceptions, each with its
//! reason, are in `tests/schemathesis/schemathesis.toml`. A failure prints schemathesis' report,
//! with a `curl` line reproducing each failing request.

use crate::common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{
    SEARCHABLE, grpc_clients, int_kv, log_record, logs_request, span, span_id, str_kv, trace_id, trace_request,
};
use opentelemetry_proto::tonic::trace::v1::Status;

/// Examples per operation and phase: enough to reach every parameter's edge cases (~30 s here).
const EXAMPLES: &str = "30";
const SEED: &str = "1";

/// The `st` command next to the test venv's Python; `None` (skip) only when it is missing and
/// `OBSBOX_SKIP_EXTERNAL=1`.
fn schemathesis() -> Option<PathBuf> {
    let st = common::python().parent().expect("the venv's bin directory").join("st");
    if st.exists() {
        return Some(st);
    }
    if std::env::var("OBSBOX_SKIP_EXTERNAL").is_ok_and(|v| v == "1") {
        eprintln!("skipped: {} is missing and OBSBOX_SKIP_EXTERNAL=1", st.display());
        return None;
    }
    panic!(
        "schemathesis is not installed: {} is missing; run scripts/test.sh (it builds the venv from \
         tests/python/requirements.txt)",
        st.display()
    );
}

/// Traces, logs and metrics for the API to answer from: a checkout trace across three services
/// with one failing span, its log lines, and a gauge.
async fn fill(obsbox: &obsbox::Obsbox) {
    let mut clients = grpc_clients(obsbox.otlp_grpc_addr().expect("an OTLP listener")).await;
    let now = common::now_ns();
    for t in 0..5u64 {
        let tid = trace_id(0xa11, t);
        let start = now - (60 - t * 5) * 1_000_000_000;
        let mut root = span(&tid, &span_id(1), "POST /checkout", start);
        root.end_time_unix_nano = start + 80_000_000;
        let mut charge = span(&tid, &span_id(2), "POST /payments", start + 10_000_000);
        charge.parent_span_id = span_id(1);
        charge.kind = 3;
        charge.attributes.push(int_kv("retry", t as i64));
        if t == 3 {
            charge.status = Some(Status { code: 2, message: "card declined".into() });
        }
        let mut stock = span(&tid, &span_id(3), "reserve", start + 20_000_000);
        stock.parent_span_id = span_id(1);
        clients.traces.export(trace_request("frontend", vec![root])).await.expect("export frontend");
        clients.traces.export(trace_request("payments", vec![charge])).await.expect("export payments");
        clients.traces.export(trace_request("inventory", vec![stock])).await.expect("export inventory");
        let mut line = log_record(&format!("charge {t} done"), start + 15_000_000);
        line.trace_id = tid.clone();
        line.span_id = span_id(2);
        line.attributes.push(str_kv("user.id", "42"));
        clients.logs.export(logs_request("payments", vec![line])).await.expect("export logs");
    }
    let points = (0..10).map(|i| common::gauge_point(i as f64, now - i * 10_000_000_000, vec![])).collect();
    clients.metrics.export(common::gauge_request("payments", "queue_depth", points)).await.expect("export metrics");
    let store = obsbox.store().expect("a local store");
    let searchable =
        common::wait_until_async(SEARCHABLE, move || common::logs_of_service(&store, "payments").len() == 5).await;
    assert!(searchable, "the logs became searchable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_api_matches_its_openapi_document_under_schemathesis() {
    let Some(st) = schemathesis() else { return };
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut config = common::test_config(&tmp.path().join("data"));
    config.slo.dir = Some(common::workspace_root().join("slos"));
    let obsbox = common::start_obsbox_with(config).await;
    fill(&obsbox).await;

    let schema = format!("http://{}/api/v1/openapi.json", obsbox.http_addr());
    let settings = common::workspace_root().join("tests/schemathesis/schemathesis.toml");
    let work = tmp.path().to_path_buf();
    let output = common::blocking(move || {
        Command::new(&st)
            .arg("--config-file")
            .arg(&settings)
            .arg("--no-color")
            .args(["run", &schema, "--checks", "all", "--max-examples", EXAMPLES, "--seed", SEED])
            .args(["--workers", "2", "--request-timeout", "10", "--suppress-health-check", "too_slow"])
            // schemathesis keeps its example database and reports in the working directory.
            .current_dir(&work)
            .output()
            .expect("run schemathesis")
    })
    .await;
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "schemathesis found failures:\n{report}");
    // Every operation but the live tail (see schemathesis.toml) was exercised.
    assert!(report.contains("Selected: 13/14") && report.contains("Tested: 13"), "{report}");
    eprintln!("{}", report.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"));
    tokio::time::timeout(Duration::from_secs(30), obsbox.shutdown()).await.expect("shutdown in time").unwrap();
}
