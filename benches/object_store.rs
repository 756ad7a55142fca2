//! Object-storage benchmark: ingest through an ingester that ships its segments to a real 3-node
//! Garage cluster (replication 3) against the single node, then the same queries through a
//! searcher reading those segments against the single node holding the same data. One run.
//!
//! ```text
//! cargo bench --bench object_store                # 500k spans + 500k log records
//! cargo bench --bench object_store -- 200 200     # thousands of spans, thousands of log records
//! ```
//!
//! 1. Ingest. The same deterministic batches (`benches/payload`, 512 items each, spread over one
//!    hour) are written in process into a `DiskStore` by `IN_FLIGHT` concurrent writers, spans
//!    first, then log records; a signal's rate is items / (load time + time until nothing is
//!    pending, i.e. durable and searchable). Once into a plain store (the single node, default
//!    configuration), once into an ingester's store: `segment_max_age` `SEAL_EVERY`, a
//!    `Shipper` checking every `SHIP_INTERVAL`. After the load the ingester's `Shipper::flush`
//!    runs and the metastore's item counts are read until they hold every item: "shipped after
//!    the load". Upload MB/s: the single node's segments, sealed, uploaded one after the other by
//!    `upload_segment` (what the shipper does per segment) under their own prefix.
//! 2. Queries, each from a blocking thread as the query service calls a reader: the single node
//!    (`DiskStore`, page cache warm) against a `ClusterReader` over the shipped segments (no
//!    ingester left: everything is in the bucket). Cold: a new reader with an empty cache
//!    directory for every repetition (its first segment list is read before the clock starts;
//!    the download of every segment the query needs is timed). Warm: one reader whose cache
//!    already holds the segments. Every answer of the searcher is checked against the single
//!    node's.
//!
//! Garage runs on the same 2 cores as obsbox: the figures include its CPU.

#[path = "../cluster/tests/support/garage.rs"]
mod garage;
mod payload;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use obsbox::storage::{
    Batch, DiskStore, LogPredicate, LogQuery, Reader, Signal, SpanPredicate, SpanQuery, StoreConfig, StoreError,
    TimeRange, Writer,
};
use obsbox_cluster::{
    ClusterReader, LocalSegment, Metastore, ObjectStoreConfig, SearcherSettings, SegmentCache, Shipper, open_store,
    upload_segment,
};
use payload::{ITEMS_PER_BATCH, log_batch, now_ns, span_batch};

/// The generated data spans this much time, ending at the start of the run.
const SPREAD_NS: u64 = 3600 * 1_000_000_000;
/// Batches written at once (as `benches/query.rs` and `benches/fts5.rs` fill their stores).
const IN_FLIGHT: usize = 8;
/// The ingester seals its active segments this often (the design's ~30 s, shortened so that a
/// load of a few seconds ships several segments while it runs).
const SEAL_EVERY: Duration = Duration::from_secs(5);
const SHIP_INTERVAL: Duration = Duration::from_millis(500);
const COLD_REPEAT: usize = 5;
const WARM_REPEAT: usize = 20;
const SHIP_TIMEOUT: Duration = Duration::from_secs(120);
const SERVICE: &str = "checkout";
const TERM: &str = "reset";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if !std::env::args().any(|a| a == "--bench") {
        println!("object store benchmark: not run (start it with `cargo bench --bench object_store`)");
        return Ok(());
    }
    let span_k: u64 = args.first().map(|a| a.parse()).transpose().context("thousands of spans")?.unwrap_or(500);
    let log_k: u64 = args.get(1).map(|a| a.parse()).transpose().context("thousands of log records")?.unwrap_or(500);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(span_k * 1000 / ITEMS_PER_BATCH as u64, log_k * 1000 / ITEMS_PER_BATCH as u64))
}

// --- ingest --------------------------------------------------------------------------------

/// The batches of one signal, generated before the clock starts (the writes consume them).
fn batches(signal: Signal, n: u64, end_ns: u64) -> Vec<Batch> {
    (0..n)
        .map(|b| {
            let now = end_ns - SPREAD_NS + SPREAD_NS / n * b;
            match signal {
                Signal::Logs => Batch::Logs(log_batch(0x10_0000 + b, now)),
                _ => Batch::Traces(span_batch(0x20_0000 + b, now)),
            }
        })
        .collect()
}

async fn write_retrying(store: &DiskStore, batch: Batch) -> anyhow::Result<()> {
    loop {
        match store.write(batch.clone()).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Overloaded { .. } | StoreError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes `batches` with `IN_FLIGHT` writers and waits until nothing is pending: items/s.
async fn load(store: &Arc<DiskStore>, signal: Signal, batches: Vec<Batch>) -> anyhow::Result<f64> {
    let items: usize = batches.iter().map(Batch::item_count).sum();
    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    for batch in batches {
        let s = store.clone();
        in_flight.push_back(tokio::spawn(async move { write_retrying(&s, batch).await }));
        if in_flight.len() >= IN_FLIGHT {
            in_flight.pop_front().expect("in flight").await??;
        }
    }
    for h in in_flight {
        h.await??;
    }
    while store.stats().pending_items.iter().any(|(s, n)| *s == signal && *n > 0) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(items as f64 / started.elapsed().as_secs_f64())
}

async fn open(config: StoreConfig) -> anyhow::Result<Arc<DiskStore>> {
    Ok(Arc::new(tokio::task::spawn_blocking(move || DiskStore::open(config)).await??))
}

/// Items per signal registered in the metastore, and their bytes.
async fn registered(metastore: &Metastore) -> anyhow::Result<[(u64, u64); 2]> {
    let mut out = [(0, 0); 2];
    for e in metastore.list(None).await? {
        let i = match e.signal {
            Signal::Traces => 0,
            Signal::Logs => 1,
            _ => continue,
        };
        out[i].0 += e.items;
        out[i].1 += e.bytes;
    }
    Ok(out)
}

// --- queries -------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Query {
    TraceById,
    SearchByService,
    NewestLogs,
    LogHistogram,
}

impl Query {
    const ALL: [Query; 4] = [Query::TraceById, Query::SearchByService, Query::NewestLogs, Query::LogHistogram];

    fn what(self) -> String {
        match self {
            Query::TraceById => "trace by id".into(),
            Query::SearchByService => format!("trace search: service = {SERVICE}, 20 traces (ids + traces)"),
            Query::NewestLogs => format!("newest 100 log lines matching \"{TERM}\""),
            Query::LogHistogram => "log count histogram, whole range, 100 buckets".into(),
        }
    }
}

struct Data {
    range: TimeRange,
    trace_ids: Vec<Vec<u8>>,
}

/// Runs query `q` (its `i`th variant) on `reader`; blocking. Returns what the answer holds
/// (spans, log records, counted records), to compare the two readers.
fn ask(reader: &dyn Reader, q: Query, i: usize, data: &Data) -> Result<usize, StoreError> {
    let range = data.range;
    Ok(match q {
        Query::TraceById => reader.trace(&data.trace_ids[i % data.trace_ids.len()])?.len(),
        Query::SearchByService => {
            let query = SpanQuery { predicate: SpanPredicate::Service(SERVICE.into()), time: range, limit: 20 };
            let ids = reader.find_trace_ids(&query)?;
            reader.traces(&ids)?.iter().map(Vec::len).sum()
        }
        Query::NewestLogs => {
            reader.find_logs(&LogQuery { predicate: LogPredicate::Text(TERM.into()), time: range, limit: 100 })?.len()
        }
        Query::LogHistogram => {
            let bucket = (range.end_ns - range.start_ns).div_ceil(100);
            reader.log_histogram(&LogPredicate::All, range, bucket)?.iter().map(|b| b.1 as usize).sum()
        }
    })
}

/// One timed query from a blocking thread: (time, answer size).
async fn timed(reader: Arc<dyn Reader>, q: Query, i: usize, data: Arc<Data>) -> anyhow::Result<(Duration, usize)> {
    Ok(tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let n = ask(&*reader, q, i, &data)?;
        Ok::<_, StoreError>((t.elapsed(), n))
    })
    .await??)
}

struct Times(Vec<Duration>);

impl Times {
    fn at(&self, p: f64) -> Duration {
        let mut v = self.0.clone();
        v.sort();
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
    fn cell(&self) -> String {
        format!("{} / {}", ms(self.at(0.5)), ms(self.at(0.9)))
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 { format!("{ms:.0} ms") } else { format!("{ms:.1} ms") }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match entry.metadata() {
            Ok(m) if m.is_dir() => total += dir_bytes(&entry.path()),
            Ok(m) => total += m.len(),
            Err(_) => {}
        }
    }
    total
}

fn settings() -> SearcherSettings {
    SearcherSettings {
        poll_interval: Duration::from_secs(5),
        node_timeout: Duration::from_secs(15),
        call_timeout: Duration::from_secs(30),
        token: None,
    }
}

async fn searcher(metastore: &Metastore, cache_dir: &Path) -> anyhow::Result<Arc<ClusterReader>> {
    let cache = SegmentCache::open(metastore.clone(), cache_dir, 16 << 30)?;
    let reader = ClusterReader::start(metastore.clone(), cache, settings());
    anyhow::ensure!(reader.wait_ready(Duration::from_secs(30)).await, "no segment list from garage in 30 s");
    Ok(Arc::new(reader))
}

// --- the run -------------------------------------------------------------------------------

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string()
}

async fn run(span_batches: u64, log_batches: u64) -> anyhow::Result<()> {
    println!("load average before the run: {}", loadavg());
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1} s] {what}", t0.elapsed().as_secs_f64());
    let garage = tokio::task::spawn_blocking(garage::GarageCluster::start)
        .await?
        .context("garage is needed (OBSBOX_SKIP_EXTERNAL=1 is set)")?;
    let metastore_at = |node: usize, prefix: &str| -> anyhow::Result<Metastore> {
        let cfg: ObjectStoreConfig = toml::from_str(&garage.object_store_toml(node, prefix))?;
        Ok(Metastore::new(open_store(&cfg)?, &cfg.prefix))
    };
    let metastore = metastore_at(0, "bench")?;
    // Garage refuses requests until its layout has spread (a second or two).
    let ready = Instant::now();
    while let Err(e) = metastore.list(None).await {
        anyhow::ensure!(ready.elapsed() < Duration::from_secs(60), "garage never became ready: {e}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    phase("garage cluster up");

    let work = tempfile::tempdir()?;
    let end_ns = now_ns();
    let span_items = span_batches * ITEMS_PER_BATCH as u64;
    let log_items = log_batches * ITEMS_PER_BATCH as u64;

    // Single node.
    let node = open(StoreConfig { data_dir: work.path().join("node"), ..StoreConfig::default() }).await?;
    let node_spans = load(&node, Signal::Traces, batches(Signal::Traces, span_batches, end_ns)).await?;
    let node_logs = load(&node, Signal::Logs, batches(Signal::Logs, log_batches, end_ns)).await?;
    phase("single node loaded");

    // Upload rate: the single node's segments, sealed, one after the other as the shipper does.
    {
        let n = node.clone();
        tokio::task::spawn_blocking(move || n.seal_now()).await??;
    }
    let probe = metastore_at(1, "upload-probe")?;
    let (mut uploaded, mut files) = (0u64, 0usize);
    let started = Instant::now();
    for signal in [Signal::Traces, Signal::Logs] {
        for segment in node.sealed_segments(signal) {
            files += segment.files.len();
            uploaded += upload_segment(&probe, &LocalSegment::from(&segment), "probe").await?.bytes;
        }
    }
    let upload_s = started.elapsed().as_secs_f64();
    phase("upload probe done");

    // Ingester.
    let ingester = open(StoreConfig {
        data_dir: work.path().join("ingester"),
        segment_max_age: SEAL_EVERY,
        ..StoreConfig::default()
    })
    .await?;
    let shipper = Shipper::start(ingester.clone(), metastore.clone(), "ingester-1", SHIP_INTERVAL);
    let ing_spans = load(&ingester, Signal::Traces, batches(Signal::Traces, span_batches, end_ns)).await?;
    let ing_logs = load(&ingester, Signal::Logs, batches(Signal::Logs, log_batches, end_ns)).await?;
    let before_flush = registered(&metastore).await?;
    let started = Instant::now();
    shipper.flush().await?;
    let in_bucket = loop {
        let r = registered(&metastore).await?;
        if r[0].0 >= span_items && r[1].0 >= log_items {
            break r;
        }
        anyhow::ensure!(started.elapsed() < SHIP_TIMEOUT, "not everything shipped after {SHIP_TIMEOUT:?}: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ship_s = started.elapsed().as_secs_f64();
    shipper.stop().await;
    anyhow::ensure!(in_bucket[0].0 == span_items && in_bucket[1].0 == log_items, "items counted twice: {in_bucket:?}");
    let segments = metastore.list(None).await?.len();
    let left = ingester.sealed_segments(Signal::Traces).len() + ingester.sealed_segments(Signal::Logs).len();
    {
        let i = ingester.clone();
        tokio::task::spawn_blocking(move || i.close()).await?;
    }
    drop(ingester);
    phase("ingester loaded and shipped");

    // Queries.
    let data = {
        let mut trace_ids = Vec::new();
        for b in (0..span_batches).step_by((span_batches as usize / 50).max(1)) {
            let req = span_batch(0x20_0000 + b, end_ns - SPREAD_NS + SPREAD_NS / span_batches * b);
            trace_ids.push(req.resource_spans[0].scope_spans[0].spans[0].trace_id.clone());
        }
        let range = TimeRange { start_ns: end_ns - SPREAD_NS - 60_000_000_000, end_ns: end_ns + 60_000_000_000 };
        Arc::new(Data { range, trace_ids })
    };
    let node_reader: Arc<dyn Reader> = node.clone();
    let warm_dir = work.path().join("cache-warm");
    let warm: Arc<dyn Reader> = searcher(&metastore, &warm_dir).await?;
    let mut rows = Vec::new();
    for q in Query::ALL {
        let mut node_t = Vec::new();
        let mut warm_t = Vec::new();
        let mut answers = 0;
        // The first call of each fills the page cache / the searcher's cache.
        for i in 0..WARM_REPEAT + 1 {
            let (t, n) = timed(node_reader.clone(), q, i, data.clone()).await?;
            let (tw, nw) = timed(warm.clone(), q, i, data.clone()).await?;
            anyhow::ensure!(n == nw, "{q:?} #{i}: the single node answered {n} items, the searcher {nw}");
            if i > 0 {
                node_t.push(t);
                warm_t.push(tw);
                answers += n;
            }
        }
        let mut cold_t = Vec::new();
        let mut fetched = 0;
        for i in 0..COLD_REPEAT {
            let dir = work.path().join(format!("cache-cold-{q:?}-{i}"));
            let cold: Arc<dyn Reader> = searcher(&metastore, &dir).await?;
            let (t, n) = timed(cold, q, i + 1, data.clone()).await?;
            let (_, want) = timed(node_reader.clone(), q, i + 1, data.clone()).await?;
            anyhow::ensure!(n == want, "{q:?} cold #{i}: the single node answered {want} items, the searcher {n}");
            cold_t.push(t);
            fetched += dir_bytes(&dir);
            std::fs::remove_dir_all(&dir)?;
        }
        rows.push((
            q,
            Times(node_t),
            Times(warm_t),
            Times(cold_t),
            answers / WARM_REPEAT,
            fetched / COLD_REPEAT as u64,
        ));
        phase(&format!("{q:?} measured"));
    }
    drop(warm);

    // Report.
    let mb = |b: u64| b as f64 / 1e6;
    println!();
    println!(
        "data: {span_items} spans, {log_items} log records over 1 h; {IN_FLIGHT} writers in process; garage: 3 nodes, \
         replication 3, on this machine"
    );
    println!(
        "ingester: segments sealed every {SEAL_EVERY:?}, shipped every {SHIP_INTERVAL:?}; {segments} segments in the \
         bucket; {left} sealed segments left locally after the flush"
    );
    println!();
    println!("| what | single node | ingester + object store | ingester / single node |");
    println!("|---|---|---|---|");
    println!(
        "| span ingest, durable + searchable | {node_spans:.0} spans/s | {ing_spans:.0} spans/s | {:.2} |",
        ing_spans / node_spans
    );
    println!(
        "| log ingest, durable + searchable | {node_logs:.0} records/s | {ing_logs:.0} records/s | {:.2} |",
        ing_logs / node_logs
    );
    println!(
        "| end of load until the bucket holds every item (flush + metastore count) | - | {ship_s:.2} s (at the end of \
         the load {:.0}% of spans, {:.0}% of log records were already registered) | - |",
        100.0 * before_flush[0].0 as f64 / span_items as f64,
        100.0 * before_flush[1].0 as f64 / log_items as f64
    );
    println!(
        "| upload, one segment after the other (upload_segment) | - | {:.1} MB/s ({:.0} MB, {files} files, in \
         {upload_s:.1} s) | - |",
        mb(uploaded) / upload_s,
        mb(uploaded)
    );
    println!(
        "| bytes in the bucket per span / per log record (one copy; garage keeps 3) | - | {:.0} B / {:.0} B | - |",
        in_bucket[0].1 as f64 / span_items as f64,
        in_bucket[1].1 as f64 / log_items as f64
    );
    println!();
    println!(
        "| query | single node p50 / p90 | searcher warm p50 / p90 | searcher cold p50 / p90 | warm / node (p50) | cold \
         fetched | answer |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (q, node_t, warm_t, cold_t, answer, fetched) in rows {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.0} MB ({:.0} MB/s) | {answer} items |",
            q.what(),
            node_t.cell(),
            warm_t.cell(),
            cold_t.cell(),
            warm_t.at(0.5).as_secs_f64() / node_t.at(0.5).as_secs_f64(),
            mb(fetched),
            mb(fetched) / cold_t.at(0.5).as_secs_f64()
        );
    }
    println!();
    println!("single node: {WARM_REPEAT} runs after one warm-up; searcher warm: same; cold: {COLD_REPEAT} new readers");
    println!("load average after the run: {}", loadavg());
    drop(garage);
    Ok(())
}
