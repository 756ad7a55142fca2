//! Damaged files in a real data directory of the obsbox binary: it ingests spans (two sealed
//! segments), log records and metric points and stops cleanly; restarted, it ingests more (the
//! active segment's spans, log records) and is killed with SIGKILL, so that its write-ahead logs
//! hold records (a clean stop empties them). Then its files are damaged as a bad disk or a crash
//! would: a sealed segment's file cut in half, the active
//! segment's `meta.json` overwritten, the logs metastore replaced by garbage, a bit flipped in a
//! logs WAL record, the metrics WAL header overwritten, a metrics block replaced by garbage.
//!
//! The binary must start anyway, log one line per damaged file naming it, count them in
//! `obsbox_store_damaged_files_total`, move what it cannot use into `quarantine/`, and serve the
//! rest; a second restart finds nothing left to repair (no crash loop, no repair loop).

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Addrs, gauge_point, gauge_request, log_record, logs_request, span, trace_request};

const SERVICE: &str = "corrupt-files";
/// Segments are sealed at this many documents, so each 150-span batch ends up sealed.
const CONFIG: &str = "\
[storage]
segment_max_docs = 100
";

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.expect("UI request completes");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

fn trace_hex(n: u64) -> String {
    hex::encode(common::trace_id(11, n))
}

async fn send_trace(clients: &mut common::GrpcClients, n: u64, spans: u64) {
    let now = common::now_ns();
    let spans = (0..spans).map(|i| span(&common::trace_id(11, n), &common::span_id(i + 1), "op", now)).collect();
    clients.traces.export(trace_request(SERVICE, spans)).await.expect("trace export");
}

/// Batch `b`: 20 log records and 20 gauge points.
async fn send_logs_and_points(clients: &mut common::GrpcClients, b: u64, now: u64) {
    let records = (0..20).map(|i| log_record(&format!("corrupt files {b} {i}"), now)).collect();
    clients.logs.export(logs_request(SERVICE, records)).await.expect("log export");
    let points = (0..20).map(|i| gauge_point(i as f64, now + b * 100 + i, vec![])).collect();
    clients.metrics.export(gauge_request(SERVICE, "corrupt_gauge", points)).await.expect("metrics export");
}

/// Waits until `path` on the UI port answers 200 and its body contains `needle`.
async fn wait_for(addrs: Addrs, path: &str, needle: &str) {
    for _ in 0..200 {
        let (status, body) = get(addrs.http, path).await;
        if status == 200 && body.contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never showed {needle:?}");
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.expect("dir entry").path()).filter(|p| p.extension().is_some_and(|e| e == ext)).collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn seg_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("signal dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seg-")))
        .collect();
    v.sort();
    v
}

fn damaged_count(metrics: &str) -> Option<u64> {
    metrics.lines().find_map(|l| l.strip_prefix("obsbox_store_damaged_files_total ")?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_data_directory_starts_serves_the_rest_and_says_what_it_set_aside() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    let config = tmp.path().join("obsbox.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let config = config.to_str().expect("utf-8 path").to_string();

    // Ingest: traces 1 and 2 sealed (150 spans each); logs and metrics; a clean stop (which
    // writes a metrics block).
    let mut process = common::spawn_binary(&data, &["--config", &config]);
    let addrs = process.addrs;
    let mut clients = common::grpc_clients(addrs.otlp_grpc).await;
    for (n, spans, segments) in [(1, 150, 2), (2, 150, 3)] {
        send_trace(&mut clients, n, spans).await;
        wait_for(addrs, &format!("/api/v1/traces/{}", trace_hex(n)), &trace_hex(n)).await;
        wait_for(addrs, "/metrics", &format!("obsbox_store_segments{{signal=\"traces\"}} {segments}")).await;
    }
    let now = common::now_ns();
    for b in 0..3 {
        send_logs_and_points(&mut clients, b, now).await;
    }
    assert!(process.terminate(Duration::from_secs(20)), "clean shutdown; stderr:\n{}", process.stderr_tail());

    // Restarted: trace 3 in the active segment, more logs and points, then SIGKILL.
    let mut process = common::spawn_binary(&data, &["--config", &config]);
    let addrs = process.addrs;
    let mut clients = common::grpc_clients(addrs.otlp_grpc).await;
    send_trace(&mut clients, 3, 50).await;
    wait_for(addrs, &format!("/api/v1/traces/{}", trace_hex(3)), &trace_hex(3)).await;
    wait_for(addrs, "/metrics", "obsbox_store_segments{signal=\"traces\"} 3").await;
    for b in 3..6 {
        send_logs_and_points(&mut clients, b, now).await;
    }
    process.kill();

    // Damage.
    let traces = seg_dirs(&data.join("traces"));
    assert_eq!(traces.len(), 3, "two sealed segments and the active one: {traces:?}");
    let store_file = files(&traces[0], "store").pop().expect("a .store file in the first sealed segment");
    let len = std::fs::metadata(&store_file).expect("store file").len();
    std::fs::OpenOptions::new().write(true).open(&store_file).expect("open").set_len(len / 2).expect("truncate");
    std::fs::write(traces[2].join("meta.json"), b"{ \"segments\": [ damaged").expect("damage active segment");
    std::fs::write(data.join("logs/metastore"), b"OBXMETA\0garbage that is not a metastore").expect("damage metastore");
    let log_wal = files(&data.join("wal/logs"), "wal").pop().expect("a logs WAL file");
    let mut wal = std::fs::read(&log_wal).expect("read WAL");
    let first_len = u32::from_le_bytes(wal[12..16].try_into().expect("4 bytes")) as usize;
    let second = 12 + 16 + first_len;
    assert!(wal.len() > second + 30, "the logs WAL holds at least two records");
    wal[second + 16 + 5] ^= 0x40;
    std::fs::write(&log_wal, &wal).expect("write WAL");
    let metric_wal = files(&data.join("wal/metrics"), "wal").pop().expect("a metrics WAL file");
    let mut wal = std::fs::read(&metric_wal).expect("read WAL");
    wal[..8].copy_from_slice(b"\xde\xad\xbe\xef\xde\xad\xbe\xef");
    std::fs::write(&metric_wal, &wal).expect("write WAL");
    let block = files(&data.join("metrics"), "obm").pop().expect("a metrics block");
    std::fs::write(&block, b"OBXMETB1 but then nothing a block holds").expect("damage block");
    let damaged = [&traces[0], &traces[2], &data.join("logs/metastore"), &log_wal, &metric_wal, &block];

    // Restart: it starts, names every damaged file once, counts them, serves the rest.
    let process = common::spawn_binary(&data, &["--config", &config]);
    let addrs = process.addrs;
    let (status, metrics) = get(addrs.http, "/metrics").await;
    assert_eq!(status, 200);
    let log = process.stderr_tail();
    assert_eq!(damaged_count(&metrics), Some(6), "six damaged files counted; stderr:\n{log}");
    for path in damaged {
        let name = path.display().to_string();
        assert!(log.lines().filter(|l| l.contains(&name)).count() >= 1, "a log line names {name}; stderr:\n{log}");
    }
    for dir in ["traces", "logs", "wal/logs", "wal/metrics", "metrics"] {
        assert!(data.join(dir).join("quarantine").is_dir(), "{dir}/quarantine holds what was set aside");
    }
    assert_eq!(get(addrs.http, &format!("/api/v1/traces/{}", trace_hex(1))).await.0, 404, "trace 1 was set aside");
    wait_for(addrs, &format!("/api/v1/traces/{}", trace_hex(2)), &trace_hex(2)).await;
    // Trace 3 was in the damaged active segment; the WAL still held it and it replayed.
    wait_for(addrs, &format!("/api/v1/traces/{}", trace_hex(3)), &trace_hex(3)).await;
    wait_for(addrs, &format!("/api/v1/logs?query=service:{SERVICE}&limit=100"), "corrupt files 2 19").await;
    // New data is taken.
    let mut clients = common::grpc_clients(addrs.otlp_grpc).await;
    send_trace(&mut clients, 4, 10).await;
    wait_for(addrs, &format!("/api/v1/traces/{}", trace_hex(4)), &trace_hex(4)).await;
    drop(process);

    // A second restart has nothing left to repair.
    let process = common::spawn_binary(&data, &["--config", &config]);
    let (_, metrics) = get(process.addrs.http, "/metrics").await;
    assert_eq!(damaged_count(&metrics), Some(0), "repairs hold; stderr:\n{}", process.stderr_tail());
    wait_for(process.addrs, &format!("/api/v1/traces/{}", trace_hex(4)), &trace_hex(4)).await;
}
