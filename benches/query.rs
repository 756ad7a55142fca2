//! Query benchmark: a store filled with N million spans and N million log records (generated once
//! from fixed seeds and kept under `target/bench-data/`, reused by later runs), then the query
//! latencies of the brief's targets, through the same query service the APIs use.
//!
//! ```text
//! cargo bench --bench query                 # 10M spans + 10M logs (fills once: ~10 min here)
//! cargo bench --bench query -- 1 1          # 1M + 1M, for a quick look
//! BENCH_DATA_DIR=/path cargo bench --bench query
//! ```
//!
//! Measured (each repeated, p50 / p99): trace by id; trace search by service + operation +
//! minimum duration; trace search by attribute; the newest 100 log lines matching a term; the
//! log count histogram over the whole range (all 10M records); then trace by id again, and as the
//! baseline on the store reopened without trace-id filters (`storage.trace_filter_bytes = 0`).

mod payload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use obsbox::storage::{
    AttrScope, AttrValue, Batch, DiskStore, LogPredicate, LogQuery, Reader, SpanPredicate, StoreConfig, StoreError,
    TimeRange, Writer,
};
use obsbox_query_ui::{QueryService, TraceSearch};
use payload::{ITEMS_PER_BATCH, log_batch, now_ns, span_batch};

/// Generated data spans this much time, ending at the fill time.
const SPREAD_NS: u64 = 6 * 3600 * 1_000_000_000;
const REPEAT: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Row {
    what: String,
    p50: Duration,
    p99: Duration,
    target: &'static str,
    note: String,
}

async fn measure<F, Fut>(what: &str, target: &'static str, n: usize, mut f: F) -> anyhow::Result<Row>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    // Warm-up: the first runs fault in the index files; the first one's time is reported (on a
    // cold page cache, what a scan costs when read from the disk).
    let t = Instant::now();
    f(0).await?;
    let first = t.elapsed();
    for i in 1..3 {
        f(i).await?;
    }
    let mut times = Vec::with_capacity(n);
    let mut results = 0;
    let before = disk_reads();
    for i in 0..n {
        let t = Instant::now();
        results += f(i + 3).await?;
        times.push(t.elapsed());
    }
    let after = disk_reads();
    times.sort();
    let per_query = |a: u64, b: u64| a.saturating_sub(b) as f64 / n as f64;
    Ok(Row {
        what: what.into(),
        p50: percentile(&times, 0.5),
        p99: percentile(&times, 0.99),
        target,
        note: format!(
            "{:.1} results, {:.1} major faults, {:.0} KiB read from disk per query; first query {:.1} ms",
            results as f64 / n as f64,
            per_query(after.0, before.0),
            per_query(after.1, before.1) / 1024.0,
            first.as_secs_f64() * 1e3
        ),
    })
}

/// `read_ahead_kb` of the block device holding `path` (of its disk, for a partition).
fn read_ahead_kib(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff), (dev & 0xff) | ((dev >> 12) & !0xff));
    let base = format!("/sys/dev/block/{major}:{minor}");
    [format!("{base}/queue/read_ahead_kb"), format!("{base}/../queue/read_ahead_kb")]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
}

/// The process's major page faults and bytes read from the block device so far: what a query
/// on a cold page cache costs beyond its CPU (0 when /proc cannot be read).
fn disk_reads() -> (u64, u64) {
    // Field 12 of /proc/self/stat, counted after the parenthesised command name.
    let faults = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(9)?.parse().ok()))
        .unwrap_or(0);
    let bytes = std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("read_bytes: ")?.trim().parse().ok()))
        .unwrap_or(0);
    (faults, bytes)
}

/// The trace by id row: each query asks for the next of `ids`.
async fn trace_by_id(what: &str, target: &'static str, query: &QueryService, ids: &[Vec<u8>]) -> anyhow::Result<Row> {
    measure(what, target, REPEAT, |i| {
        let q = query.clone();
        let id = ids[i % ids.len()].clone();
        async move { Ok(q.trace(&id).await?.map(|t| t.spans.len()).unwrap_or(0)) }
    })
    .await
}

fn store_config(dir: PathBuf) -> StoreConfig {
    StoreConfig {
        data_dir: dir,
        // The data is generated once and reused for weeks: keep it.
        retention: Duration::from_secs(10 * 365 * 24 * 3600),
        ..StoreConfig::default()
    }
}

async fn write_retrying(store: &DiskStore, batch: Batch) -> anyhow::Result<()> {
    loop {
        match store.write(batch.clone()).await {
            Ok(_) => return Ok(()),
            Err(e @ (StoreError::Overloaded { .. } | StoreError::Unavailable(_))) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn fill(store: Arc<DiskStore>, millions: u64, end_ns: u64, logs: bool) -> anyhow::Result<()> {
    let batches = millions * 1_000_000 / ITEMS_PER_BATCH as u64;
    let started = Instant::now();
    let mut in_flight = Vec::new();
    for b in 0..batches {
        let now = end_ns - SPREAD_NS + SPREAD_NS / batches * b;
        let batch = if logs {
            Batch::Logs(log_batch(0x10_0000 + b, now))
        } else {
            Batch::Traces(span_batch(0x20_0000 + b, now))
        };
        let s = store.clone();
        in_flight.push(tokio::spawn(async move { write_retrying(&s, batch).await }));
        if in_flight.len() >= 8 {
            in_flight.remove(0).await??;
        }
        if b % 2000 == 0 && b > 0 {
            let rate = (b * ITEMS_PER_BATCH as u64) as f64 / started.elapsed().as_secs_f64();
            eprintln!("  {} {b}/{batches} batches, {rate:.0} items/s", if logs { "logs" } else { "spans" });
        }
    }
    for h in in_flight {
        h.await??;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if !std::env::args().any(|a| a == "--bench") {
        println!("query benchmark: not run (start it with `cargo bench --bench query`)");
        return Ok(());
    }
    let span_m: u64 = args.first().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let log_m: u64 = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(span_m);
    let dir = std::env::var_os("BENCH_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| {
        // The schema versions in the name: a store of another version is refused, so a new
        // schema fills a new directory instead of failing.
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench-data/query-s4-l4-{span_m}m-{log_m}m"))
    });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(dir, span_m, log_m))
}

async fn run(dir: PathBuf, span_m: u64, log_m: u64) -> anyhow::Result<()> {
    let marker = dir.join("bench-filled");
    let store = {
        let d = dir.clone();
        Arc::new(tokio::task::spawn_blocking(move || DiskStore::open(store_config(d))).await??)
    };
    let end_ns: u64 = match std::fs::read_to_string(&marker) {
        Ok(s) => s.trim().parse().context("bench-filled marker")?,
        Err(_) => {
            let end = now_ns();
            println!("filling {} with {span_m}M spans and {log_m}M log records (once)", dir.display());
            let t = Instant::now();
            fill(store.clone(), span_m, end, false).await?;
            println!("  spans written in {:.0} s", t.elapsed().as_secs_f64());
            let t = Instant::now();
            fill(store.clone(), log_m, end, true).await?;
            println!("  logs written in {:.0} s", t.elapsed().as_secs_f64());
            while store.stats().pending_items.iter().any(|(_, n)| *n > 0) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            std::fs::write(&marker, end.to_string())?;
            end
        }
    };
    // The trace-id filters are built in the background after the open, as for a user after a
    // restart: measure once they are (no new ones for 2 s).
    let t = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        let bytes = store.stats().trace_filter_bytes;
        if bytes != last.0 {
            last = (bytes, Instant::now());
        } else if bytes > 0 && last.1.elapsed() >= Duration::from_secs(2) {
            break;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(120), "no trace filters after 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "trace filters: {:.1} MiB, built {:.2} s after the store was ready",
        last.0 as f64 / (1 << 20) as f64,
        last.1.duration_since(t).as_secs_f64()
    );
    let stats = store.stats();
    let range = TimeRange { start_ns: end_ns - SPREAD_NS - 60_000_000_000, end_ns: end_ns + 60_000_000_000 };
    let query = QueryService::new(store.clone());

    // Known trace ids and a real operation name, from the same generator.
    let batches = span_m * 1_000_000 / ITEMS_PER_BATCH as u64;
    let mut ids = Vec::new();
    let mut op = None;
    for i in 0..REPEAT as u64 + 3 {
        let b = i * (batches / (REPEAT as u64 + 3)).max(1);
        let req = span_batch(0x20_0000 + b, end_ns - SPREAD_NS + SPREAD_NS / batches * b);
        let rs = &req.resource_spans[0];
        ids.push(rs.scope_spans[0].spans[0].trace_id.clone());
        for rs in &req.resource_spans {
            let svc = rs.resource.as_ref().and_then(|r| r.attributes.first()).and_then(|kv| kv.value.clone());
            let is_checkout = matches!(svc.and_then(|v| v.value), Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) if s == "checkout");
            if is_checkout && op.is_none() {
                op = rs.scope_spans[0].spans.iter().find(|s| s.kind == 2).map(|s| s.name.clone());
            }
        }
    }
    let op = op.context("no checkout server span in the generated data")?;

    let mut rows = Vec::new();
    rows.push(trace_by_id("trace by id", "p50 <= 5 ms, p99 <= 20 ms", &query, &ids).await?);
    let search = |span: SpanPredicate| TraceSearch {
        span,
        time: range,
        root_service: None,
        root_operation: None,
        min_trace_duration_ns: None,
        max_trace_duration_ns: None,
        limit: 20,
    };
    let by_op = search(SpanPredicate::And(vec![
        SpanPredicate::Service("checkout".into()),
        SpanPredicate::Name(op.clone()),
        SpanPredicate::Duration { min: 50_000_000, max: u64::MAX },
    ]));
    rows.push(
        measure("trace search: service + operation + duration >= 50ms, limit 20", "p50 <= 30 ms", REPEAT / 4, |_| {
            let (q, s) = (query.clone(), by_op.clone());
            async move { Ok(q.search_traces(&s).await?.len()) }
        })
        .await?,
    );
    let by_attr = search(SpanPredicate::Attribute {
        scope: AttrScope::Item,
        key: "http.response.status_code".into(),
        value: AttrValue::Int(500),
    });
    rows.push(
        measure("trace search: attribute http.response.status_code = 500, limit 20", "<= 50 ms", REPEAT / 4, |_| {
            let (q, s) = (query.clone(), by_attr.clone());
            async move { Ok(q.search_traces(&s).await?.len()) }
        })
        .await?,
    );
    // A regular expression is matched against the attribute's terms in the term dictionary: of
    // the store's high-cardinality attributes, so it shows what walking the dictionary costs.
    let by_regex = search(SpanPredicate::AttributeRegex {
        scope: AttrScope::Item,
        key: "url.path".into(),
        regex: "/api/products/1[0-9]{3}".into(),
    });
    rows.push(
        measure("trace search: attribute url.path =~ /api/products/1[0-9]{3}, limit 20", "-", REPEAT / 4, |_| {
            let (q, s) = (query.clone(), by_regex.clone());
            async move { Ok(q.search_traces(&s).await?.len()) }
        })
        .await?,
    );
    rows.push(
        measure("newest 100 log lines matching \"reset\"", "p50 <= 30 ms", REPEAT / 2, |_| {
            let q = query.clone();
            async move {
                Ok(q.find_logs(LogQuery { predicate: LogPredicate::Text("reset".into()), time: range, limit: 100 })
                    .await?
                    .len())
            }
        })
        .await?,
    );
    // A phrase of two common words (one record in eight has them, next to each other), answered
    // from the body's positions.
    rows.push(
        measure("newest 100 log lines matching the phrase \"connection reset\"", "-", REPEAT / 8, |_| {
            let q = query.clone();
            async move {
                let predicate = LogPredicate::Text("\"connection reset\"".into());
                Ok(q.find_logs(LogQuery { predicate, time: range, limit: 100 }).await?.len())
            }
        })
        .await?,
    );
    // Span ids of log records from the same generator: a lookup by span id alone (a `span_id:`
    // filter) scans the span id column, as no term holds it.
    let log_batches = log_m * 1_000_000 / ITEMS_PER_BATCH as u64;
    let span_ids: Vec<Vec<u8>> = (0..REPEAT as u64 / 4)
        .filter_map(|i| {
            let b = i * (log_batches / (REPEAT as u64 / 4)).max(1);
            let req = log_batch(0x10_0000 + b, end_ns - SPREAD_NS + SPREAD_NS / log_batches * b);
            let records = req.resource_logs.into_iter().flat_map(|r| r.scope_logs).flat_map(|s| s.log_records);
            records.map(|r| r.span_id).find(|id| !id.is_empty())
        })
        .collect();
    rows.push(
        measure("log lines of one span, by span id alone", "-", span_ids.len(), |i| {
            let (q, id) = (query.clone(), span_ids[i % span_ids.len()].clone());
            async move {
                Ok(q.find_logs(LogQuery { predicate: LogPredicate::SpanId(id), time: range, limit: 100 }).await?.len())
            }
        })
        .await?,
    );
    let bucket = (range.end_ns - range.start_ns) / 100;
    rows.push(
        measure("log count histogram, whole range (100 buckets, every record)", "<= 150 ms", 20, |_| {
            let q = query.clone();
            async move { Ok(q.log_histogram(LogPredicate::All, range, bucket).await?.iter().map(|b| b.1 as usize).sum()) }
        })
        .await?,
    );

    // The first row ran first in the process (first touches of the mapped files, the thread
    // pool): measured again here, it compares with the baseline, which also runs after others.
    rows.push(
        trace_by_id("trace by id, again after the other queries (as the baseline below runs)", "-", &query, &ids)
            .await?,
    );
    // Baseline in the same run: the same lookups on the store reopened without trace filters,
    // each trace id looked up in every tantivy segment.
    drop(query);
    let store = Arc::into_inner(store).context("the store is still shared")?;
    tokio::task::spawn_blocking(move || store.close()).await?;
    let store = {
        let d = dir.clone();
        let config = StoreConfig { trace_filter_bytes: 0, ..store_config(d) };
        Arc::new(tokio::task::spawn_blocking(move || DiskStore::open(config)).await??)
    };
    let query = QueryService::new(store.clone());
    rows.push(trace_by_id("trace by id, baseline: no trace filters (store reopened)", "-", &query, &ids).await?);

    println!();
    println!("store: {span_m}M spans, {log_m}M log records in {}", dir.display());
    // Cold reads depend on it: a fault in a mapped file reads this much around it.
    match read_ahead_kib(&dir) {
        Some(kib) => println!("readahead of the device holding it: {kib} KiB"),
        None => println!("readahead of the device holding it: unknown"),
    }
    println!("stats: {stats:?}");
    println!("| query | p50 | p99 | target | note |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} | {} |", r.what, ms(r.p50), ms(r.p99), r.target, r.note);
    }
    Ok(())
}
