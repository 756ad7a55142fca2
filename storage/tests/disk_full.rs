//! A full disk, for real: the store runs on a small tmpfs, a filler file takes most of it, and
//! spans are written until the file system runs out (`ENOSPC` in the WAL, in tantivy's commit).
//! Every refusal must be retryable, reads keep answering, writes resume by themselves once the
//! filler is deleted, every acknowledged span becomes searchable, and the reopened store finds
//! nothing damaged (the WAL was cut back cleanly) and every acknowledged span.
//!
//! Mounting needs root (CI and this machine run as root); when it fails the test fails, unless
//! `OBSBOX_SKIP_EXTERNAL=1`.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use obsbox_storage::{Batch, DiskStore, Reader, SpanPredicate, SpanQuery, StoreConfig, StoreError, TimeRange, Writer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

/// A tmpfs mounted for the test; unmounted (lazily) on drop.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB; `None` when mounting failed and `OBSBOX_SKIP_EXTERNAL=1`.
    fn mount(mib: u64) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = parent.path().join("mnt");
        std::fs::create_dir(&dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).into_owned();
            if std::env::var("OBSBOX_SKIP_EXTERNAL").as_deref() == Ok("1") {
                eprintln!("skipping: cannot mount a tmpfs ({why}) and OBSBOX_SKIP_EXTERNAL=1");
                return None;
            }
            panic!("cannot mount a tmpfs at {} (the disk-full test needs root): {why}", dir.display());
        }
        Some(Tmpfs { dir, _parent: parent })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Fills the file system holding `dir` with a file until at most `leave` bytes are free.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0x5au8; 1 << 20];
    loop {
        let st = free_bytes(dir);
        if st <= leave {
            break;
        }
        let n = ((st - leave) as usize).min(chunk.len());
        if f.write_all(&chunk[..n]).is_err() {
            break;
        }
    }
    f.sync_all().ok();
    path
}

fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df").args(["-B1", "--output=avail"]).arg(dir).output().expect("df");
    String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df output")
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn trace_id(n: u64) -> Vec<u8> {
    let mut id = vec![0xd1; 8];
    id.extend_from_slice(&n.to_be_bytes());
    id
}

const SPANS: u64 = 50;

/// Batch `n`: SPANS spans of trace `n`, each with 1 KiB of attribute.
fn batch(n: u64) -> Batch {
    let now = now_ns();
    let spans = (0..SPANS)
        .map(|i| Span {
            trace_id: trace_id(n),
            span_id: (i + 1).to_be_bytes().to_vec(),
            name: "fill".into(),
            start_time_unix_nano: now,
            end_time_unix_nano: now + 1000,
            attributes: vec![KeyValue {
                key: "pad".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(format!("{n}-{i}-{}", "x".repeat(1024)))),
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    Batch::Traces(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue { value: Some(any_value::Value::StringValue("disk-full".into())) }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    })
}

fn config(data_dir: &Path) -> StoreConfig {
    StoreConfig {
        data_dir: data_dir.to_path_buf(),
        commit_interval: Duration::from_millis(200),
        index_memory_bytes: 32 << 20,
        wal_file_bytes: 1 << 20,
        // Seal often, so that sealing (a new segment, the metastore rewrite) meets the full disk too.
        segment_max_docs: 500,
        min_free_bytes: 0,
        ..StoreConfig::default()
    }
}

/// (trace id, span id) of a stored span.
type SpanKey = (Vec<u8>, Vec<u8>);

fn all_spans(store: &DiskStore) -> Result<HashSet<SpanKey>, StoreError> {
    let q = SpanQuery { predicate: SpanPredicate::All, time: TimeRange::ALL, limit: 10_000_000 };
    Ok(store.find_spans(&q)?.into_iter().map(|r| (r.span.trace_id, r.span.span_id)).collect())
}

fn missing(store: &DiskStore, acked: &[u64]) -> usize {
    let have = all_spans(store).expect("search answers");
    acked
        .iter()
        .flat_map(|n| (0..SPANS).map(move |i| (trace_id(*n), (i + 1).to_be_bytes().to_vec())))
        .filter(|k| !have.contains(k))
        .count()
}

#[test]
fn a_full_disk_refuses_writes_retryably_and_they_resume_when_space_returns() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let Some(fs) = Tmpfs::mount(48) else { return };
    let data = fs.dir.join("data");
    let store = DiskStore::open(config(&data)).expect("open");
    // Some data committed (and sealed) before the disk fills.
    let mut acked: Vec<u64> = (1..=25).collect();
    for n in &acked {
        futures::executor::block_on(store.write(batch(*n))).expect("write before the disk fills");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while missing(&store, &acked) > 0 {
        assert!(Instant::now() < deadline, "the first batches became searchable");
        std::thread::sleep(Duration::from_millis(50));
    }
    let filler = fill(&fs.dir, 6 << 20);

    // Write until the disk is full (and a little longer, so every writer meets ENOSPC).
    let mut refusals: Vec<StoreError> = Vec::new();
    let mut n = 25u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while refusals.len() < 30 {
        assert!(Instant::now() < deadline, "no refusal after {} acked batches", acked.len());
        n += 1;
        match futures::executor::block_on(store.write(batch(n))) {
            Ok(_) => acked.push(n),
            Err(StoreError::Overloaded { .. }) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                refusals.push(e);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    assert!(!acked.is_empty(), "some batches were acknowledged before the disk filled");
    for e in &refusals {
        assert!(e.is_retryable(), "refusal is not retryable: {e}");
    }
    assert!(
        refusals.iter().any(|e| matches!(e, StoreError::DiskFull(_))),
        "refusals say the disk is full: {refusals:?}"
    );
    assert!(store.stats().disk_full, "stats report the full disk");
    // Reads keep answering while the disk is full.
    all_spans(&store).expect("search while the disk is full");
    let first = store.trace(&trace_id(acked[0])).expect("trace by id while the disk is full");
    assert_eq!(first.len(), SPANS as usize, "trace by id while the disk is full");

    // Free the space: writes resume by themselves.
    std::fs::remove_file(&filler).expect("delete filler");
    let resumed = Instant::now();
    loop {
        n += 1;
        match futures::executor::block_on(store.write(batch(n))) {
            Ok(_) => {
                acked.push(n);
                break;
            }
            Err(e) => {
                assert!(e.is_retryable(), "refusal is not retryable: {e}");
                assert!(resumed.elapsed() < Duration::from_secs(20), "writes did not resume: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // Everything acknowledged becomes searchable (after the index is rebuilt from the WAL).
    let deadline = Instant::now() + Duration::from_secs(20);
    while missing(&store, &acked) > 0 {
        assert!(Instant::now() < deadline, "{} acknowledged spans not searchable", missing(&store, &acked));
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(store);

    // The files are intact: the reopened store repairs nothing and has every acked span.
    let store = DiskStore::open(config(&data)).expect("reopen");
    assert_eq!(store.stats().damaged_files, 0, "nothing was damaged");
    assert_eq!(missing(&store, &acked), 0, "every acknowledged span after reopening");
    eprintln!("disk full: {} batches acked, {} refusals: {:?}", acked.len(), refusals.len(), &refusals[..3]);
}

#[test]
fn the_store_opens_on_a_full_disk_and_serves_what_it_holds() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let Some(fs) = Tmpfs::mount(48) else { return };
    let data = fs.dir.join("data");
    let slow_commits = StoreConfig { commit_interval: Duration::from_secs(2), ..config(&data) };
    let mut acked = Vec::new();
    {
        let store = DiskStore::open(slow_commits.clone()).expect("open");
        for n in 1..=20 {
            futures::executor::block_on(store.write(batch(n))).expect("write");
            acked.push(n);
        }
        // A torn record at the end of the log, as a crash in the middle of a write leaves it:
        // on the full disk there is no room to keep a copy of it, and the open must not care.
        let mut wals: Vec<PathBuf> = std::fs::read_dir(data.join("wal/traces"))
            .expect("wal dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        wals.sort();
        let last = wals.pop().expect("a WAL file");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&last)
            .expect("open WAL")
            .write_all(&[200, 0, 0, 0, 1, 2, 3])
            .unwrap();
        // The disk fills up before the next commit; closing cannot commit either.
        let _filler = fill(&fs.dir, 0);
    }
    // A restart on the full disk: the WAL records replay, the commit fails, the store opens.
    let store = DiskStore::open(slow_commits).expect("opens on a full disk");
    assert!(store.stats().disk_full);
    assert_eq!(store.stats().damaged_files, 0, "a full disk is not damage: nothing set aside");
    assert!(matches!(futures::executor::block_on(store.write(batch(99))), Err(StoreError::DiskFull(_))));
    std::fs::remove_file(fs.dir.join("filler")).expect("delete filler");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 20;
    loop {
        n += 1;
        match futures::executor::block_on(store.write(batch(n))) {
            Ok(_) => {
                acked.push(n);
                break;
            }
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(Instant::now() < deadline, "writes did not resume: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while missing(&store, &acked) > 0 {
        assert!(Instant::now() < deadline, "{} acknowledged spans not searchable", missing(&store, &acked));
        std::thread::sleep(Duration::from_millis(100));
    }
}
