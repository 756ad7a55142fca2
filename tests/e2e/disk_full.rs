//! A full disk under the obsbox binary: its data directory is a 64 MiB tmpfs, a filler file
//! takes most of it, and OTLP traffic (spans over gRPC, log records over HTTP) fills the rest
//! until the file system runs out (`storage.min_free_bytes = 0`, so every writer meets a real
//! `ENOSPC`). Checked: refusals are retryable and say the disk is full (gRPC `UNAVAILABLE` with
//! `RetryInfo`, HTTP 503 with `Retry-After`), never an internal error; searches, trace by id and
//! `/metrics` keep answering; after `kill -9` while the disk is full the binary starts again and
//! serves reads; once the filler is deleted, writes succeed again without a restart; after
//! another `kill -9` it restarts, finds nothing damaged, and every acknowledged span and log
//! record is in the store.
//!
//! Mounting a tmpfs needs root (CI and this machine run as root); when it fails the test fails,
//! unless `OBSBOX_SKIP_EXTERNAL=1`.

use crate::common;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{log_record, logs_request, span, str_kv, trace_request};
use obsbox::storage::{DiskStore, StoreConfig};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;

const SERVICE: &str = "disk-full";
const ITEMS: u64 = 50;
const CONFIG: &str = "\
[storage]
min_free_bytes = 0
wal_file_bytes = 1048576
";

/// A tmpfs mounted at a directory of the test's temporary directory; unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB at `dir`; `None` when that fails and `OBSBOX_SKIP_EXTERNAL=1`.
    fn mount(dir: &Path, mib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).into_owned();
            if std::env::var("OBSBOX_SKIP_EXTERNAL").as_deref() == Ok("1") {
                eprintln!("skipping: cannot mount a tmpfs ({why}) and OBSBOX_SKIP_EXTERNAL=1");
                return None;
            }
            panic!("cannot mount a tmpfs at {} (this test needs root): {why}", dir.display());
        }
        Some(Tmpfs { dir: dir.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df").args(["-B1", "--output=avail"]).arg(dir).output().expect("df");
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df output")
}

/// Writes a file in `dir` until at most `leave` bytes are free.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0x5au8; 1 << 20];
    loop {
        let free = free_bytes(dir);
        if free <= leave {
            break;
        }
        let n = ((free - leave) as usize).min(chunk.len());
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
    }
    path
}

fn pad(n: u64, i: u64) -> opentelemetry_proto::tonic::common::v1::KeyValue {
    str_kv("pad", &format!("{n}-{i}-{}", "p".repeat(1024)))
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    acked_spans: Vec<u64>,
    acked_logs: Vec<u64>,
    grpc_refusals: Vec<String>,
    http_refusals: Vec<String>,
    failures: Vec<String>,
}

impl Seen {
    fn refusals(&self) -> usize {
        self.grpc_refusals.len() + self.http_refusals.len()
    }
}

/// One gRPC trace export and one HTTP log export, batch `n`.
async fn send(
    clients: &mut common::GrpcClients,
    http: &reqwest::Client,
    addrs: common::Addrs,
    n: u64,
    seen: &mut Seen,
) {
    let now = common::now_ns();
    let spans = (0..ITEMS)
        .map(|i| {
            let mut s = span(&common::trace_id(7, n), &common::span_id(i + 1), "fill", now);
            s.attributes.push(pad(n, i));
            s
        })
        .collect();
    match clients.traces.export(trace_request(SERVICE, spans)).await {
        Ok(_) => seen.acked_spans.push(n),
        Err(status) => match status.code() {
            tonic::Code::Unavailable | tonic::Code::ResourceExhausted if !status.details().is_empty() => {
                seen.grpc_refusals.push(status.message().to_string())
            }
            code => {
                seen.failures.push(format!("gRPC {code:?} (details: {}): {}", status.details().len(), status.message()))
            }
        },
    }
    let records = (0..ITEMS)
        .map(|i| {
            let mut r = log_record(&format!("disk full {n} {i}"), now);
            r.attributes.push(pad(n, i));
            r
        })
        .collect();
    let body = logs_request(SERVICE, records).encode_to_vec();
    match common::try_post(http, addrs.otlp_http, "/v1/logs", "application/x-protobuf", body, false).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").is_some();
            let text = String::from_utf8_lossy(&response.bytes().await.unwrap_or_default()).into_owned();
            match status {
                200 => seen.acked_logs.push(n),
                429 | 503 if retry_after => seen.http_refusals.push(text),
                other => seen.failures.push(format!("HTTP {other} (Retry-After: {retry_after}): {text}")),
            }
        }
        Err(e) => seen.failures.push(format!("HTTP request failed: {e}")),
    }
}

async fn get(http: &reqwest::Client, addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = http.get(format!("http://{addr}{path}")).send().await.expect("UI request completes");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_retryably_serves_reads_and_recovers_by_itself() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    // The data directory is the mount point, so the binary's stderr log lies outside it.
    let Some(fs) = Tmpfs::mount(&data, 64) else { return };
    let config = tmp.path().join("obsbox.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let config = config.to_str().expect("utf-8 path").to_string();
    let mut process = common::spawn_binary(&data, &["--config", &config]);
    let addrs = process.addrs;
    let http = reqwest::Client::new();
    let mut clients = common::grpc_clients(addrs.otlp_grpc).await;
    let mut seen = Seen::default();

    // Some data first, searchable, then the filler.
    for n in 1..=5 {
        send(&mut clients, &http, addrs, n, &mut seen).await;
    }
    assert_eq!((seen.acked_spans.len(), seen.acked_logs.len()), (5, 5), "failures: {:?}", seen.failures);
    let first_trace = hex::encode(common::trace_id(7, 1));
    assert!(
        common::wait_until_async(common::SEARCHABLE, {
            let (http, addr, path) = (http.clone(), addrs.http, format!("/api/v1/traces/{first_trace}"));
            move || {
                futures::executor::block_on(async { http.get(format!("http://{addr}{path}")).send().await })
                    .is_ok_and(|r| r.status() == 200)
            }
        })
        .await,
        "the first trace became searchable"
    );
    let filler = fill(&data, 8 << 20);

    // Fill the rest with traffic until both receivers refuse, for a while.
    let mut n = 5;
    let started = Instant::now();
    while seen.grpc_refusals.len() < 10 || seen.http_refusals.len() < 10 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "refusals after 90 s: {} gRPC, {} HTTP; {} acked; stderr:\n{}",
            seen.grpc_refusals.len(),
            seen.http_refusals.len(),
            seen.acked_spans.len(),
            process.stderr_tail()
        );
        n += 1;
        send(&mut clients, &http, addrs, n, &mut seen).await;
    }
    assert!(seen.failures.is_empty(), "non-retryable failures: {:?}", &seen.failures[..seen.failures.len().min(10)]);
    assert!(
        seen.grpc_refusals.iter().any(|m| m.contains("disk is full")),
        "a gRPC refusal says the disk is full: {:?}",
        &seen.grpc_refusals[..5]
    );
    assert!(
        seen.http_refusals.iter().any(|m| m.contains("disk is full")),
        "an HTTP refusal says the disk is full: {:?}",
        &seen.http_refusals[..5]
    );

    // Reads keep answering while the disk is full.
    let (status, body) = get(&http, addrs.http, &format!("/api/v1/traces/{first_trace}")).await;
    assert_eq!(status, 200, "trace by id while the disk is full: {body}");
    let (status, body) = get(&http, addrs.http, &format!("/api/v1/traces?service={SERVICE}&limit=5")).await;
    assert_eq!(status, 200, "trace search while the disk is full: {body}");
    assert!(body.contains(&first_trace) || body.contains("traceId") || body.contains("trace_id"), "{body}");
    let (status, body) = get(&http, addrs.http, &format!("/api/v1/logs?query=service:{SERVICE}&limit=5")).await;
    assert_eq!(status, 200, "log search while the disk is full: {body}");
    let (status, metrics) = get(&http, addrs.http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("obsbox_store_disk_full 1"), "/metrics shows the full disk");

    // kill -9 while the disk is full: it starts again (no crash loop) and serves reads.
    process.kill();
    let mut process = common::spawn_binary(&data, &["--config", &config]);
    let addrs = process.addrs;
    let mut clients = common::grpc_clients(addrs.otlp_grpc).await;
    let (status, body) = get(&http, addrs.http, &format!("/api/v1/traces/{first_trace}")).await;
    assert_eq!(status, 200, "trace by id after a restart on the full disk: {body}");
    let (_, metrics) = get(&http, addrs.http, "/metrics").await;
    assert!(metrics.contains("obsbox_store_disk_full 1"), "still full after the restart");
    assert!(metrics.contains("obsbox_store_damaged_files_total 0"), "a full disk is not damage: nothing set aside");
    n += 1;
    send(&mut clients, &http, addrs, n, &mut seen).await;
    assert!(seen.failures.is_empty(), "after the restart on the full disk: {:?}", seen.failures);

    // Space returns: writes succeed again by themselves.
    std::fs::remove_file(&filler).expect("delete the filler");
    let freed = Instant::now();
    let refusals_before = seen.refusals();
    loop {
        n += 1;
        let (spans, logs) = (seen.acked_spans.len(), seen.acked_logs.len());
        send(&mut clients, &http, addrs, n, &mut seen).await;
        if seen.acked_spans.len() > spans && seen.acked_logs.len() > logs {
            break;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(30),
            "writes still refused 30 s after space returned: {:?} {:?}; stderr:\n{}",
            seen.grpc_refusals.last(),
            seen.http_refusals.last(),
            process.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen.failures.is_empty(), "non-retryable failures: {:?}", seen.failures);
    eprintln!(
        "disk full: {} span and {} log batches acked, {} refusals while full, {} while recovering ({:?})",
        seen.acked_spans.len(),
        seen.acked_logs.len(),
        refusals_before,
        seen.refusals() - refusals_before,
        freed.elapsed()
    );

    // kill -9 and restart: it starts, and nothing was damaged.
    process.kill();
    let mut process = common::spawn_binary(&data, &["--config", &config]);
    let (status, metrics) = get(&http, process.addrs.http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("obsbox_store_damaged_files_total 0"),
        "no file was damaged; stderr:\n{}",
        process.stderr_tail()
    );
    process.kill();

    // Every acknowledged item is in the store.
    let (spans, logs) = (seen.acked_spans.clone(), seen.acked_logs.clone());
    let dir = data.clone();
    let (missing_spans, missing_logs) = common::blocking(move || {
        let store = DiskStore::open(StoreConfig { data_dir: dir, min_free_bytes: 0, ..StoreConfig::default() })
            .expect("open the store");
        let have: HashSet<(Vec<u8>, Vec<u8>)> =
            common::spans_of_service(&store, SERVICE).into_iter().map(|r| (r.span.trace_id, r.span.span_id)).collect();
        let missing_spans = spans
            .iter()
            .flat_map(|n| (0..ITEMS).map(move |i| (common::trace_id(7, *n), common::span_id(i + 1))))
            .filter(|k| !have.contains(k))
            .count();
        let bodies: HashSet<String> = common::logs_of_service(&store, SERVICE)
            .into_iter()
            .filter_map(|e| match e.record.body.and_then(|b| b.value) {
                Some(any_value::Value::StringValue(s)) => Some(s),
                _ => None,
            })
            .collect();
        let missing_logs = logs
            .iter()
            .flat_map(|n| (0..ITEMS).map(move |i| format!("disk full {n} {i}")))
            .filter(|b| !bodies.contains(b))
            .count();
        (missing_spans, missing_logs)
    })
    .await;
    assert_eq!(
        (missing_spans, missing_logs),
        (0, 0),
        "acknowledged spans and log records missing after kill -9 and restart"
    );
    drop(fs);
}
