//! Baseline: SQLite FTS5 (rusqlite, bundled) storing and searching the same log records as
//! obsbox, in the same run — what a small team would hand-roll instead of obsbox's store.
//!
//! ```text
//! cargo bench --bench fts5              # 1M log records
//! cargo bench --bench fts5 -- 2         # 2M
//! ```
//!
//! Both stores take the bench payload's log batches (512 records each, ~200 B records) with the
//! same durability: obsbox acknowledges a batch once it is in its fsynced write-ahead log; SQLite
//! runs one transaction per batch in WAL mode with `synchronous = FULL`. SQLite stores and indexes the
//! body, service, severity and attributes as FTS5 columns (the time, trace and span ids as
//! plain columns, the time indexed). Measured for both: records/s until stored and searchable,
//! bytes on disk per record (and against the raw OTLP bytes), the newest 100 records matching a
//! term (p50 / p99) and the count histogram over every record (100 buckets).

mod payload;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use obsbox::storage::{Batch, DiskStore, LogPredicate, LogQuery, Reader, StoreConfig, StoreError, TimeRange, Writer};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use payload::{ITEMS_PER_BATCH, log_batch, now_ns};
use prost::Message;

/// Generated records span this much time, ending now.
const SPREAD_NS: u64 = 6 * 3600 * 1_000_000_000;
const REPEAT: usize = 50;
const TERM: &str = "reset";

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { dir_bytes(&entry.path()) } else { meta.len() };
    }
    total
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn p(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
}

fn timed<F: FnMut() -> anyhow::Result<usize>>(mut f: F) -> anyhow::Result<(f64, f64, usize)> {
    f()?;
    let mut times = Vec::with_capacity(REPEAT);
    let mut n = 0;
    for _ in 0..REPEAT {
        let t = Instant::now();
        n = f()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok((p(&times, 0.5), p(&times, 0.99), n))
}

struct Figures {
    records_per_s: f64,
    bytes_per_record: f64,
    newest: (f64, f64, usize),
    histogram: (f64, f64, usize),
}

fn sqlite(dir: &Path, batches: &[ExportLogsServiceRequest], range: (u64, u64)) -> anyhow::Result<Figures> {
    let db = rusqlite::Connection::open(dir.join("logs.db"))?;
    db.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE logs (id INTEGER PRIMARY KEY, time INTEGER NOT NULL, trace_id BLOB, span_id BLOB);
         CREATE INDEX logs_time ON logs (time);
         CREATE VIRTUAL TABLE logs_fts USING fts5 (body, service, severity, attributes);",
    )?;
    let started = Instant::now();
    let mut records = 0u64;
    for batch in batches {
        let tx = db.unchecked_transaction()?;
        {
            let mut row = tx.prepare_cached("INSERT INTO logs (time, trace_id, span_id) VALUES (?1, ?2, ?3)")?;
            let mut fts = tx.prepare_cached(
                "INSERT INTO logs_fts (rowid, body, service, severity, attributes) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for rl in &batch.resource_logs {
                let service = rl
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .map(|kv| text(&kv.value))
                    .unwrap_or_default();
                for record in rl.scope_logs.iter().flat_map(|s| &s.log_records) {
                    row.execute(rusqlite::params![
                        record.time_unix_nano as i64,
                        record.trace_id.as_slice(),
                        record.span_id.as_slice()
                    ])?;
                    let id = tx.last_insert_rowid();
                    let attrs: Vec<String> =
                        record.attributes.iter().map(|kv| format!("{}={}", kv.key, text(&kv.value))).collect();
                    fts.execute(rusqlite::params![
                        id,
                        text(&record.body),
                        service,
                        record.severity_text,
                        attrs.join(" ")
                    ])?;
                    records += 1;
                }
            }
        }
        tx.commit()?;
    }
    let records_per_s = records as f64 / started.elapsed().as_secs_f64();
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    let bytes_per_record = dir_bytes(dir) as f64 / records as f64;
    let newest = timed(|| {
        let mut q = db.prepare_cached(
            "SELECT logs.time, logs.trace_id FROM logs_fts JOIN logs ON logs.id = logs_fts.rowid
             WHERE logs_fts MATCH ?1 ORDER BY logs_fts.rowid DESC LIMIT 100",
        )?;
        Ok(q.query_map([TERM], |r| r.get::<_, i64>(0))?.count())
    })?;
    let bucket = (range.1 - range.0) / 100;
    let histogram = timed(|| {
        let mut q = db.prepare_cached("SELECT (time - ?1) / ?2, count(*) FROM logs GROUP BY 1")?;
        let counts: Vec<i64> = q.query_map([range.0 as i64, bucket as i64], |r| r.get(1))?.collect::<Result<_, _>>()?;
        Ok(counts.iter().sum::<i64>() as usize)
    })?;
    Ok(Figures { records_per_s, bytes_per_record, newest, histogram })
}

async fn obsbox(dir: &Path, batches: &[ExportLogsServiceRequest], range: (u64, u64)) -> anyhow::Result<Figures> {
    let store = Arc::new(DiskStore::open(StoreConfig { data_dir: dir.to_path_buf(), ..StoreConfig::default() })?);
    let time = TimeRange { start_ns: range.0, end_ns: range.1 + 1 };
    let started = Instant::now();
    let mut in_flight = Vec::new();
    let mut records = 0u64;
    for batch in batches {
        records +=
            batch.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len() as u64).sum::<u64>();
        let (s, batch) = (store.clone(), Batch::Logs(batch.clone()));
        in_flight.push(tokio::spawn(async move {
            loop {
                match s.write(batch.clone()).await {
                    Ok(_) => return Ok(()),
                    Err(StoreError::Overloaded { .. } | StoreError::Unavailable(_)) => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    Err(e) => return Err(anyhow::Error::from(e)),
                }
            }
        }));
        if in_flight.len() >= 8 {
            in_flight.remove(0).await??;
        }
    }
    for h in in_flight {
        h.await??;
    }
    // Searchable: every record counted by the index.
    let reader = store.clone();
    loop {
        let counted: u64 =
            tokio::task::block_in_place(|| reader.log_histogram(&LogPredicate::All, time, range.1 - range.0))?
                .iter()
                .map(|b| b.1)
                .sum();
        if counted >= records {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let records_per_s = records as f64 / started.elapsed().as_secs_f64();
    drop(reader);
    // Closed and reopened: the size on disk without the write-ahead log's unindexed tail, and the
    // queries on a store as it starts.
    let store = Arc::into_inner(store).context("the store is still shared")?;
    tokio::task::spawn_blocking(move || store.close()).await?;
    let bytes_per_record = dir_bytes(dir) as f64 / records as f64;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let b = dir_bytes(&entry.path());
        println!("  obsbox {}: {:.1} B per record", entry.file_name().to_string_lossy(), b as f64 / records as f64);
    }
    let store = DiskStore::open(StoreConfig { data_dir: dir.to_path_buf(), ..StoreConfig::default() })?;
    let newest = timed(|| {
        Ok(store.find_logs(&LogQuery { predicate: LogPredicate::Text(TERM.into()), time, limit: 100 })?.len())
    })?;
    let bucket = (range.1 - range.0) / 100;
    let histogram =
        timed(|| Ok(store.log_histogram(&LogPredicate::All, time, bucket)?.iter().map(|b| b.1 as usize).sum()))?;
    Ok(Figures { records_per_s, bytes_per_record, newest, histogram })
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("fts5 baseline: not run (start it with `cargo bench --bench fts5`)");
        return Ok(());
    }
    let millions: f64 =
        std::env::args().skip(1).find(|a| !a.starts_with("--")).map_or(Ok(1.0), |a| a.parse()).context("millions")?;
    let n = (millions * 1_000_000.0 / ITEMS_PER_BATCH as f64) as u64;
    let end = now_ns();
    let batches: Vec<ExportLogsServiceRequest> =
        (0..n).map(|b| log_batch(0x10_0000 + b, end - SPREAD_NS + SPREAD_NS / n * b)).collect();
    let raw: usize = batches.iter().map(|b| b.encoded_len()).sum();
    let records = n * ITEMS_PER_BATCH as u64;
    // Record times jitter around their batch's time: an hour of margin on both sides.
    let range = (end - SPREAD_NS - 3_600_000_000_000, end + 3_600_000_000_000);
    println!("{records} log records, {:.0} B of OTLP protobuf each", raw as f64 / records as f64);
    let raw_per_record = raw as f64 / records as f64;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = tempfile::tempdir()?;
    let ob = runtime.block_on(obsbox(&dir.path().join("obsbox"), &batches, range))?;
    let sq = {
        let d = dir.path().join("sqlite");
        std::fs::create_dir_all(&d)?;
        sqlite(&d, &batches, range)?
    };
    println!("| measure | obsbox | SQLite FTS5 | obsbox / SQLite |");
    println!("|---|---|---|---|");
    let row = |what: &str, o: f64, s: f64, unit: &str| {
        println!("| {what} | {o:.1} {unit} | {s:.1} {unit} | {:.2} |", o / s);
    };
    row("ingest, durable and searchable", ob.records_per_s, sq.records_per_s, "records/s");
    row("bytes on disk per record", ob.bytes_per_record, sq.bytes_per_record, "B");
    println!(
        "| bytes on disk / raw OTLP | {:.2} | {:.2} | |",
        ob.bytes_per_record / raw_per_record,
        sq.bytes_per_record / raw_per_record
    );
    row("newest 100 matching a term, p50", ob.newest.0, sq.newest.0, "ms");
    row("newest 100 matching a term, p99", ob.newest.1, sq.newest.1, "ms");
    row("count histogram, every record, p50", ob.histogram.0, sq.histogram.0, "ms");
    println!(
        "(results: obsbox {} / {} lines and {} / {} counted)",
        ob.newest.2, sq.newest.2, ob.histogram.2, sq.histogram.2
    );
    Ok(())
}
