//! Nothing acknowledged is lost on `kill -9`: the obsbox binary ingests spans, log records and
//! metric points from four concurrent gRPC clients, is SIGKILLed mid-ingest, and the store opened
//! in-process on the same data directory returns every acknowledged item. Three rounds on the
//! same directory, killed at different moments (so later rounds also replay earlier crashes).

use crate::common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Process, gauge_point, gauge_request, int_kv, log_record, logs_request, span, str_kv, trace_request};
use obsbox::storage::{DiskStore, StoreConfig};
use opentelemetry_proto::tonic::common::v1::any_value;

const CLIENTS: u64 = 4;
const PER_REQUEST: u64 = 50;
const METRIC: &str = "crash_points";

/// What the server acknowledged: (client, request seq) per signal, per round.
#[derive(Default)]
struct Acked {
    spans: Vec<(u64, u64)>,
    logs: Vec<(u64, u64)>,
    points: Vec<(u64, u64)>,
}

fn service(round: u64) -> String {
    format!("crash-round-{round}")
}

/// Unique ids: trace id = (round, client, seq), span id = item index + 1.
fn ids(round: u64, client: u64, seq: u64) -> Vec<u8> {
    common::trace_id(round << 32 | client, seq)
}

/// Runs one client until `stop` or until the server goes away; returns what was acknowledged.
async fn client(round: u64, client: u64, process_addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Acked {
    let mut acked = Acked::default();
    let mut clients = common::grpc_clients(process_addr).await;
    let service = service(round);
    let mut seq = 0u64;
    let base = common::now_ns();
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let now = common::now_ns();
        let trace = ids(round, client, seq);
        let signal = seq % 3;
        let result = match signal {
            0 => {
                let spans = (0..PER_REQUEST)
                    .map(|i| {
                        let mut s = span(&trace, &common::span_id(i + 1), "crash-span", now);
                        s.attributes.push(int_kv("client", client as i64));
                        s.attributes.push(int_kv("seq", seq as i64));
                        s
                    })
                    .collect();
                clients.traces.export(trace_request(&service, spans)).await.map(|_| ())
            }
            1 => {
                let records = (0..PER_REQUEST)
                    .map(|i| {
                        let mut r = log_record(&format!("crash log {round} {client} {seq} {i}"), now);
                        r.trace_id = trace.clone();
                        r.span_id = common::span_id(i + 1);
                        r
                    })
                    .collect();
                clients.logs.export(logs_request(&service, records)).await.map(|_| ())
            }
            _ => {
                // One series per client; points distinct by time: seq * PER_REQUEST + i ns past
                // the client's start (recent, so that retention keeps them).
                let points = (0..PER_REQUEST)
                    .map(|i| {
                        gauge_point(
                            (seq * PER_REQUEST + i) as f64,
                            base + seq * PER_REQUEST + i,
                            vec![str_kv("client", &client.to_string())],
                        )
                    })
                    .collect();
                clients.metrics.export(gauge_request(&service, METRIC, points)).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => match signal {
                0 => acked.spans.push((client, seq)),
                1 => acked.logs.push((client, seq)),
                _ => acked.points.push((client, seq)),
            },
            Err(status) => {
                // Retryable refusals may happen under load; anything else means the server is
                // gone (killed): stop.
                if !matches!(status.code(), tonic::Code::ResourceExhausted | tonic::Code::Unavailable)
                    || stop.load(Ordering::Relaxed)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    acked
}

/// Checks that every acknowledged item of `round` is in the store.
fn verify(store: &DiskStore, round: u64, acked: &Acked) -> Result<(), String> {
    let service = service(round);
    let spans: HashSet<(Vec<u8>, Vec<u8>)> =
        common::spans_of_service(store, &service).into_iter().map(|r| (r.span.trace_id, r.span.span_id)).collect();
    let mut missing_spans = 0;
    for &(client, seq) in &acked.spans {
        for i in 0..PER_REQUEST {
            if !spans.contains(&(ids(round, client, seq), common::span_id(i + 1))) {
                missing_spans += 1;
            }
        }
    }
    let logs: HashSet<String> = common::logs_of_service(store, &service)
        .into_iter()
        .filter_map(|e| match e.record.body.and_then(|b| b.value) {
            Some(any_value::Value::StringValue(s)) => Some(s),
            _ => None,
        })
        .collect();
    let mut missing_logs = 0;
    for &(client, seq) in &acked.logs {
        for i in 0..PER_REQUEST {
            if !logs.contains(&format!("crash log {round} {client} {seq} {i}")) {
                missing_logs += 1;
            }
        }
    }
    let points: HashSet<(String, u64)> =
        common::metric_points(&common::metrics_of_service(store, METRIC, &service).resource_metrics)
            .into_iter()
            .filter_map(|p| {
                let client = p.attributes().iter().find(|kv| kv.key == "client")?.value.clone()?.value?;
                let any_value::Value::StringValue(client) = client else {
                    return None;
                };
                Some((client, p.number()? as u64))
            })
            .collect();
    let mut missing_points = 0;
    for &(client, seq) in &acked.points {
        for i in 0..PER_REQUEST {
            if !points.contains(&(client.to_string(), seq * PER_REQUEST + i)) {
                missing_points += 1;
            }
        }
    }
    if missing_spans + missing_logs + missing_points == 0 {
        Ok(())
    } else {
        Err(format!(
            "round {round}: missing {missing_spans} of {} acked spans, {missing_logs} of {} acked log \
             records, {missing_points} of {} acked metric points",
            acked.spans.len() as u64 * PER_REQUEST,
            acked.logs.len() as u64 * PER_REQUEST,
            acked.points.len() as u64 * PER_REQUEST,
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_acknowledged() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("temp dir");
    let data_dir = tmp.path().join("data");
    let mut all_acked: Vec<(u64, Acked)> = Vec::new();
    // Kill moments after the clients start: early (WAL barely started), during steady ingest,
    // and later (after at least one index commit).
    for (round, kill_after_ms) in [(1u64, 300u64), (2, 1_100), (3, 2_300)] {
        let mut process: Process = common::spawn_binary(&data_dir, &[]);
        let addr = process.addrs.otlp_grpc;
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..CLIENTS).map(|c| tokio::spawn(client(round, c, addr, stop.clone()))).collect();
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        let pid = process.pid();
        let log_tail = process.stderr_tail();
        process.kill();
        stop.store(true, Ordering::Relaxed);
        let mut acked = Acked::default();
        for task in tasks {
            let a = task.await.expect("client task");
            acked.spans.extend(a.spans);
            acked.logs.extend(a.logs);
            acked.points.extend(a.points);
        }
        let total = acked.spans.len() + acked.logs.len() + acked.points.len();
        assert!(
            total >= 3,
            "round {round}: obsbox (pid {pid}) acknowledged only {total} requests in {kill_after_ms} ms; \
             stderr:\n{log_tail}"
        );
        all_acked.push((round, acked));

        // Open the crashed store in-process and check every round so far.
        let dir = data_dir.clone();
        let rounds = std::mem::take(&mut all_acked);
        let (rounds, result) = common::blocking(move || {
            let store = DiskStore::open(StoreConfig { data_dir: dir, ..StoreConfig::default() })
                .expect("reopen the store after kill -9");
            let check = |store: &DiskStore| {
                rounds.iter().map(|(round, acked)| verify(store, *round, acked)).collect::<Result<Vec<_>, _>>()
            };
            let result = match check(&store) {
                Ok(_) => Ok(()),
                Err(first) => {
                    // Tell "late" apart from "lost".
                    std::thread::sleep(Duration::from_secs(3));
                    match check(&store) {
                        Ok(_) => Err(format!("{first}; all present 3 s later: not visible when open returned")),
                        Err(again) => Err(format!("{first}; 3 s later still: {again}")),
                    }
                }
            };
            drop(store);
            (rounds, result)
        })
        .await;
        all_acked = rounds;
        if let Err(message) = result {
            panic!("after kill -9 #{round} ({kill_after_ms} ms into ingest): {message}");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}
