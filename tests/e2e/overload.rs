//! Overload: the obsbox binary with small limits (2 MiB of pending data, 1 MiB in flight) is
//! flooded with large concurrent requests over gRPC and HTTP for a bounded time. Some requests
//! must be refused with a retryable status (HTTP 429/503 with Retry-After, gRPC
//! RESOURCE_EXHAUSTED/UNAVAILABLE), none may fail with an internal error, the process' RSS stays
//! bounded, a normal request succeeds afterwards, and every acknowledged item is stored.

use crate::common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{log_record, logs_request, span, str_kv, trace_request};
use obsbox::storage::{DiskStore, StoreConfig};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;

const FLOOD: Duration = Duration::from_secs(8);
const GRPC_CLIENTS: u64 = 6;
const HTTP_CLIENTS: u64 = 6;
/// Items per request and padding per item: requests of about 300 KiB.
const ITEMS: u64 = 256;
const PAD: usize = 1024;
const MAX_REQUESTS_PER_CLIENT: u64 = 2_000;
const RSS_LIMIT: u64 = 256 << 20;
const SERVICE: &str = "overload";

const CONFIG: &str = "\
[storage]
max_pending_bytes = 2097152

[limits]
max_body_bytes = 524288
max_decompressed_bytes = 524288
max_inflight_bytes = 1048576
";

/// Outcome counts of one client, and what it got acknowledged.
#[derive(Default, Debug)]
struct Outcome {
    acked: Vec<u64>,
    refused: u64,
    failures: Vec<String>,
}

fn padded_attribute() -> opentelemetry_proto::tonic::common::v1::KeyValue {
    str_kv("pad", &"p".repeat(PAD))
}

/// gRPC client `c`: spans, trace id (c, seq).
async fn grpc_client(c: u64, addr: SocketAddr, stop: Arc<AtomicBool>) -> Outcome {
    let mut outcome = Outcome::default();
    let mut clients = common::grpc_clients(addr).await;
    for seq in 1..=MAX_REQUESTS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = common::now_ns();
        let trace = common::trace_id(c, seq);
        let spans = (0..ITEMS)
            .map(|i| {
                let mut s = span(&trace, &common::span_id(i + 1), "flood", now);
                s.attributes.push(padded_attribute());
                s
            })
            .collect();
        match clients.traces.export(trace_request(SERVICE, spans)).await {
            Ok(response) => {
                let rejected = response.into_inner().partial_success.map_or(0, |p| p.rejected_spans);
                if rejected != 0 {
                    outcome.failures.push(format!("gRPC: {rejected} valid spans rejected"));
                }
                outcome.acked.push(seq);
            }
            Err(status) => match status.code() {
                tonic::Code::ResourceExhausted | tonic::Code::Unavailable => {
                    outcome.refused += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                _ => outcome.failures.push(format!("gRPC: {:?} {}", status.code(), status.message())),
            },
        }
    }
    outcome
}

/// HTTP client `c`: log records over OTLP/HTTP protobuf, body "flood {c} {seq} {i}".
async fn http_client(c: u64, addr: SocketAddr, stop: Arc<AtomicBool>) -> Outcome {
    let mut outcome = Outcome::default();
    let client = reqwest::Client::new();
    for seq in 1..=MAX_REQUESTS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = common::now_ns();
        let records = (0..ITEMS)
            .map(|i| {
                let mut r = log_record(&format!("flood {c} {seq} {i}"), now);
                r.attributes.push(padded_attribute());
                r
            })
            .collect();
        let body = logs_request(SERVICE, records).encode_to_vec();
        let response = match client
            .post(format!("http://{addr}/v1/logs"))
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(error) => {
                outcome.failures.push(format!("HTTP: request failed: {error}"));
                continue;
            }
        };
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").is_some();
        match status {
            200 => {
                let body = response.bytes().await.unwrap_or_default();
                match ExportLogsServiceResponse::decode(body.as_ref()) {
                    Ok(answer) => {
                        let rejected = answer.partial_success.map_or(0, |p| p.rejected_log_records);
                        if rejected != 0 {
                            outcome.failures.push(format!("HTTP: {rejected} valid log records rejected"));
                        }
                        outcome.acked.push(seq);
                    }
                    Err(error) => outcome.failures.push(format!("HTTP: 200 with undecodable body: {error}")),
                }
            }
            429 | 503 if retry_after => {
                outcome.refused += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            429 | 503 => outcome.failures.push(format!("HTTP {status} without Retry-After")),
            other => {
                let body = response.text().await.unwrap_or_default();
                outcome.failures.push(format!("HTTP {other}: {}", body.chars().take(200).collect::<String>()))
            }
        }
    }
    outcome
}

/// Retries one small span (gRPC) and one small log record (HTTP) until both are accepted.
async fn normal_request_succeeds(addrs: common::Addrs, deadline: Duration) -> Result<(), String> {
    let started = Instant::now();
    let now = common::now_ns();
    let mut clients = common::grpc_clients(addrs.otlp_grpc).await;
    let mut last = String::new();
    let mut span_done = false;
    let mut log_done = false;
    let http = reqwest::Client::new();
    while started.elapsed() < deadline {
        if !span_done {
            let request = trace_request(
                "overload-after",
                vec![span(&common::trace_id(999, 1), &common::span_id(1), "after", now)],
            );
            match clients.traces.export(request).await {
                Ok(_) => span_done = true,
                Err(status) => last = format!("gRPC {:?}: {}", status.code(), status.message()),
            }
        }
        if !log_done {
            let body = logs_request("overload-after", vec![log_record("after the flood", now)]).encode_to_vec();
            let response =
                common::post(&http, addrs.otlp_http, "/v1/logs", "application/x-protobuf", body, false).await;
            if response.status() == 200 {
                log_done = true;
            } else {
                last = format!("HTTP {}", response.status());
            }
        }
        if span_done && log_done {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("a normal request still fails {deadline:?} after the flood: {last}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_retryably_with_bounded_memory() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let config_path = tmp.path().join("obsbox.toml");
    std::fs::write(&config_path, CONFIG).expect("write config");
    let data_dir = tmp.path().join("data");
    let mut process = common::spawn_binary(&data_dir, &["--config", config_path.to_str().expect("utf-8 path")]);
    let addrs = process.addrs;
    let pid = process.pid();

    // Sample the RSS while flooding.
    let sampling = Arc::new(AtomicBool::new(true));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = std::thread::spawn({
        let sampling = sampling.clone();
        let max_rss = max_rss.clone();
        move || {
            while sampling.load(Ordering::Relaxed) {
                if let Some(rss) = common::rss_bytes(pid) {
                    max_rss.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let grpc: Vec<_> = (0..GRPC_CLIENTS).map(|c| tokio::spawn(grpc_client(c, addrs.otlp_grpc, stop.clone()))).collect();
    let http: Vec<_> = (0..HTTP_CLIENTS).map(|c| tokio::spawn(http_client(c, addrs.otlp_http, stop.clone()))).collect();
    tokio::time::sleep(FLOOD).await;
    stop.store(true, Ordering::Relaxed);
    let mut grpc_outcomes = Vec::new();
    for task in grpc {
        grpc_outcomes.push(task.await.expect("gRPC client task"));
    }
    let mut http_outcomes = Vec::new();
    for task in http {
        http_outcomes.push(task.await.expect("HTTP client task"));
    }
    let after = normal_request_succeeds(addrs, Duration::from_secs(15)).await;
    sampling.store(false, Ordering::Relaxed);
    sampler.join().expect("RSS sampler");
    let max_rss = max_rss.load(Ordering::Relaxed);
    let running = process.is_running();
    let log_tail = process.stderr_tail();

    let all = || grpc_outcomes.iter().chain(http_outcomes.iter());
    let failures: Vec<&String> = all().flat_map(|o| &o.failures).collect();
    let refused: u64 = all().map(|o| o.refused).sum();
    let acked: usize = all().map(|o| o.acked.len()).sum();
    eprintln!(
        "overload: {acked} requests acknowledged, {refused} refused retryably, {} failed, max RSS {} MiB",
        failures.len(),
        max_rss >> 20
    );
    assert!(running, "obsbox died during the flood; stderr:\n{log_tail}");
    assert!(failures.is_empty(), "non-retryable failures: {:?}", &failures[..failures.len().min(20)]);
    assert!(refused > 0, "no request was refused: the flood did not exceed the limits ({acked} acknowledged)");
    assert!(acked > 0, "no request was acknowledged during the flood");
    assert!(max_rss > 0, "RSS was sampled");
    assert!(max_rss < RSS_LIMIT, "RSS reached {} MiB (limit {} MiB)", max_rss >> 20, RSS_LIMIT >> 20);
    after.unwrap_or_else(|message| panic!("{message}; stderr:\n{log_tail}"));

    // Stop the server and check every acknowledged item in the store.
    let clean = process.terminate(Duration::from_secs(20));
    let grpc_acked: Vec<(u64, Vec<u64>)> =
        grpc_outcomes.into_iter().enumerate().map(|(c, o)| (c as u64, o.acked)).collect();
    let http_acked: Vec<(u64, Vec<u64>)> =
        http_outcomes.into_iter().enumerate().map(|(c, o)| (c as u64, o.acked)).collect();
    let result = common::blocking(move || {
        let store = DiskStore::open(StoreConfig { data_dir, ..StoreConfig::default() }).expect("open the store");
        let spans: HashSet<(Vec<u8>, Vec<u8>)> =
            common::spans_of_service(&store, SERVICE).into_iter().map(|r| (r.span.trace_id, r.span.span_id)).collect();
        let mut missing_spans = 0;
        let mut acked_spans = 0;
        for (c, seqs) in &grpc_acked {
            for seq in seqs {
                for i in 0..ITEMS {
                    acked_spans += 1;
                    if !spans.contains(&(common::trace_id(*c, *seq), common::span_id(i + 1))) {
                        missing_spans += 1;
                    }
                }
            }
        }
        let logs: HashSet<String> = common::logs_of_service(&store, SERVICE)
            .into_iter()
            .filter_map(|e| match e.record.body.and_then(|b| b.value) {
                Some(any_value::Value::StringValue(s)) => Some(s),
                _ => None,
            })
            .collect();
        let mut missing_logs = 0;
        let mut acked_logs = 0;
        for (c, seqs) in &http_acked {
            for seq in seqs {
                for i in 0..ITEMS {
                    acked_logs += 1;
                    if !logs.contains(&format!("flood {c} {seq} {i}")) {
                        missing_logs += 1;
                    }
                }
            }
        }
        let after_span = !common::spans_of_service(&store, "overload-after").is_empty();
        let after_log = !common::logs_of_service(&store, "overload-after").is_empty();
        (missing_spans, acked_spans, missing_logs, acked_logs, after_span && after_log)
    })
    .await;
    let (missing_spans, acked_spans, missing_logs, acked_logs, after_stored) = result;
    assert_eq!(
        (missing_spans, missing_logs),
        (0, 0),
        "missing {missing_spans} of {acked_spans} acknowledged spans and {missing_logs} of {acked_logs} \
         acknowledged log records (clean exit on SIGTERM: {clean})"
    );
    assert!(after_stored, "the request sent after the flood is stored");
}
