//! Store cost per item: the CPU the store spends (WAL, indexing, commits, merges) to make a fixed
//! number of spans or log records durable and searchable, without the network and decode in
//! front of it. Process CPU time, not wall time, so that it stays comparable when the machine is
//! busy, and small enough to run under `valgrind --tool=callgrind` for exact instruction counts.
//!
//! ```text
//! cargo bench --bench index_cost -- spans 200     # 200 batches of 512 spans
//! cargo bench --bench index_cost -- logs 200
//! ```
//!
//! Batches come from the same generator as the ingest benchmark and are built before the clock
//! starts. The store is a `DiskStore` with the default configuration in a temp dir.

mod payload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use obsbox::storage::{Batch, DiskStore, Reader, StoreConfig, StoreError, Writer};
use payload::{ITEMS_PER_BATCH, log_batch, now_ns, span_batch};

/// User + system CPU time of the whole process.
fn cpu_time() -> Duration {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() { dir_bytes(&e.path()) } else { m.len() };
    }
    total
}

/// Bytes under `dir` by file extension (tantivy's `.store`, `.idx`, `.term`, `.fast`, ...), so a
/// change to the schema or the docstore shows where its bytes went.
fn bytes_by_extension(dir: &std::path::Path, out: &mut std::collections::BTreeMap<String, u64>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            bytes_by_extension(&e.path(), out);
        } else {
            let p = e.path();
            let ext = p.extension().map_or_else(|| "(none)".to_string(), |x| x.to_string_lossy().into_owned());
            *out.entry(ext).or_default() += m.len();
        }
    }
}

fn main() -> anyhow::Result<()> {
    let Some((logs, batches)) = payload::signal_and_batches("index_cost")? else { return Ok(()) };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(run(logs, batches))
}

async fn run(logs: bool, batches: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let now = now_ns();
    let work: Vec<(Batch, Batch)> = (0..batches)
        .map(|b| {
            let t = now - (batches - b) * 10_000_000;
            let batch = if logs {
                Batch::Logs(log_batch(0x30_0000 + b, t))
            } else {
                Batch::Traces(span_batch(0x40_0000 + b, t))
            };
            (batch.clone(), batch)
        })
        .collect();
    let raw: usize = work
        .iter()
        .map(|(b, _)| match b {
            Batch::Logs(r) => prost::Message::encoded_len(r),
            Batch::Traces(r) => prost::Message::encoded_len(r),
            Batch::Metrics(r) => prost::Message::encoded_len(r),
        })
        .sum();
    let items = batches * ITEMS_PER_BATCH as u64;
    let store =
        Arc::new(DiskStore::open(StoreConfig { data_dir: dir.path().to_path_buf(), ..StoreConfig::default() })?);

    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let mut in_flight = Vec::new();
    for (batch, spare) in work {
        let s = store.clone();
        in_flight.push(tokio::spawn(async move {
            // A refused write waits for the indexer to drain, so that refusals cost little and the
            // figure is the store's work, not retry traffic; the spare copy was made before the clock.
            let mut next = Some(spare);
            let mut attempt = batch;
            loop {
                match s.write(attempt).await {
                    Ok(_) => return Ok::<_, StoreError>(()),
                    Err(StoreError::Overloaded { .. } | StoreError::Unavailable(_)) => {
                        while s.stats().pending_items.iter().any(|(_, n)| *n > 0) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        let b = next.take().expect("spare copy");
                        next = Some(b.clone());
                        attempt = b;
                    }
                    Err(e) => return Err(e),
                }
            }
        }));
        if in_flight.len() >= 4 {
            in_flight.remove(0).await??;
        }
    }
    for h in in_flight {
        h.await??;
    }
    while store.stats().pending_items.iter().any(|(_, n)| *n > 0) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wall = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    store.close();
    let cpu_closed = cpu_time() - cpu0;
    drop(store);
    let bytes = dir_bytes(dir.path());
    let wal = dir_bytes(&dir.path().join("wal"));

    let mut parts = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir.path())?.flatten() {
        if e.path().is_dir() && e.file_name() != "wal" {
            bytes_by_extension(&e.path(), &mut parts);
        }
    }
    let what = if logs { "log records" } else { "spans" };
    println!("{items} {what} ({:.0} B raw OTLP each), store with default config", raw as f64 / items as f64);
    println!(
        "until searchable: {:.2} s wall, {:.2} CPU-s = {:.1} us CPU per item ({:.0} items per CPU-second)",
        wall.as_secs_f64(),
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / items as f64,
        items as f64 / cpu.as_secs_f64()
    );
    println!(
        "including close (final commit, merges): {:.2} CPU-s = {:.1} us per item; on disk after close {:.0} B per item \
         ({:.0} B excluding the WAL)",
        cpu_closed.as_secs_f64(),
        cpu_closed.as_secs_f64() * 1e6 / items as f64,
        bytes as f64 / items as f64,
        (bytes - wal) as f64 / items as f64
    );
    println!(
        "index bytes per item by file: {}",
        parts
            .iter()
            .filter(|(_, b)| **b * 100 >= bytes - wal)
            .map(|(ext, b)| format!("{ext} {:.1}", *b as f64 / items as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
