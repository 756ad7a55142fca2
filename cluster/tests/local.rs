//! The object-store layer against the in-memory store and a local directory (tests/garage.rs runs
//! the same suite against a real Garage cluster), the cache's budget and restart behaviour, and the
//! S3 transport over https.

mod support;

use std::sync::Arc;

use obsbox_cluster::object_store::memory::InMemory;
use obsbox_cluster::object_store::throttle::{ThrottleConfig, ThrottledStore};
use obsbox_cluster::object_store::{ObjectStoreExt, PutPayload};
use obsbox_cluster::{Metastore, ObjectStoreConfig, SegmentCache, StoreKind, open_store, upload_segment};
use obsbox_storage::api::Signal;
use support::suite;

fn in_memory() -> Metastore {
    Metastore::new(Arc::new(InMemory::new()), "obsbox")
}

fn local_dir(dir: &std::path::Path) -> Metastore {
    let cfg = ObjectStoreConfig { kind: StoreKind::Local, path: Some(dir.join("objects")), ..Default::default() };
    Metastore::new(open_store(&cfg).unwrap(), "obsbox")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_in_memory() {
    suite::concurrent_writers(in_memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_local_dir() {
    let dir = tempfile::tempdir().unwrap();
    suite::concurrent_writers(local_dir(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    suite::upload_and_download(in_memory(), dir.path(), 9 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_local_dir() {
    let dir = tempfile::tempdir().unwrap();
    suite::upload_and_download(local_dir(dir.path()), dir.path(), 17 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_single_flight_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    suite::cache_single_flight_and_checks(local_dir(dir.path()), dir.path()).await;
}

/// Three 10 kB segments uploaded; returns their entries (oldest first).
async fn three_segments(m: &Metastore, work: &std::path::Path) -> Vec<obsbox_cluster::SegmentEntry> {
    let mut out = Vec::new();
    for id in 10..13 {
        let mut seg = suite::index_segment(work, id, 10_000);
        seg.signal = Signal::Logs;
        out.push(upload_segment(m, &seg, "n1").await.unwrap());
    }
    out
}

#[tokio::test]
async fn cache_evicts_least_recently_used_never_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let m = in_memory();
    let e = three_segments(&m, dir.path()).await;
    let size = e[0].bytes;
    // Room for two segments.
    let cache = SegmentCache::open(m.clone(), dir.path().join("cache"), 2 * size + 1).unwrap();
    drop(cache.get(&e[0]).await.unwrap());
    drop(cache.get(&e[1]).await.unwrap());
    drop(cache.get(&e[0]).await.unwrap()); // e[1] is now the least recently used
    drop(cache.get(&e[2]).await.unwrap());
    assert!(cache.contains(&e[0].key) && cache.contains(&e[2].key));
    assert!(!cache.contains(&e[1].key), "the least recently used one goes");
    assert_eq!(cache.stats().evictions, 1);
    assert!(cache.stats().bytes <= 2 * size + 1);

    // Pinned segments stay, even over budget; they go once unpinned.
    let p0 = cache.get(&e[0]).await.unwrap();
    let p2 = cache.get(&e[2]).await.unwrap();
    let p1 = cache.get(&e[1]).await.unwrap();
    assert_eq!(cache.stats().segments, 3);
    for p in [&p0, &p1, &p2] {
        assert!(p.join("a.store").is_file(), "a pinned segment is on disk");
    }
    drop(p1);
    drop(p2);
    assert_eq!(cache.stats().segments, 2);
    assert!(cache.contains(&e[0].key), "still pinned");
    assert!(p0.join("a.store").is_file());
    drop(p0);
}

#[tokio::test]
async fn segment_bigger_than_the_budget_is_served_then_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let m = in_memory();
    let e = three_segments(&m, dir.path()).await;
    let cache = SegmentCache::open(m.clone(), dir.path().join("cache"), 100).unwrap();
    let pinned = cache.get(&e[0]).await.unwrap();
    let path = pinned.to_path_buf();
    assert!(path.join("a.store").is_file());
    drop(pinned);
    assert!(!cache.contains(&e[0].key));
    assert_eq!(cache.stats().bytes, 0);
    // Deleted off the async threads: give the blocking pool a moment.
    for _ in 0..100 {
        if !path.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!path.exists());
}

#[tokio::test]
async fn reopened_cache_reuses_complete_segments_and_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let m = in_memory();
    let e = three_segments(&m, dir.path()).await;
    let cache_dir = dir.path().join("cache");
    let cache = SegmentCache::open(m.clone(), &cache_dir, 1 << 30).unwrap();
    let paths: Vec<_> = {
        let mut v = Vec::new();
        for x in &e {
            v.push(cache.get(x).await.unwrap().to_path_buf());
        }
        v
    };
    drop(cache);
    // A crash mid-download, a truncated file, and a directory with no manifest.
    std::fs::create_dir_all(cache_dir.join(".tmp/half-done")).unwrap();
    std::fs::write(cache_dir.join(".tmp/half-done/a.store"), b"xx").unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(paths[1].join("a.store")).unwrap();
    f.set_len(10).unwrap();
    std::fs::create_dir_all(cache_dir.join("logs/stray")).unwrap();

    let cache = SegmentCache::open(m.clone(), &cache_dir, 1 << 30).unwrap();
    assert!(cache.contains(&e[0].key) && cache.contains(&e[2].key));
    assert!(!cache.contains(&e[1].key), "a truncated segment is not reused");
    assert!(!paths[1].exists());
    assert!(!cache_dir.join("logs/stray").exists());
    assert_eq!(std::fs::read_dir(cache_dir.join(".tmp")).unwrap().count(), 0);
    let reused = cache.get(&e[0]).await.unwrap();
    assert_eq!(*reused, *paths[0]);
    assert_eq!(cache.stats().downloads, 0, "reused, not downloaded again");
    drop(cache.get(&e[1]).await.unwrap());
    assert_eq!(cache.stats().downloads, 1);

    // Over budget at open: the excess is evicted at once.
    drop(reused);
    drop(cache);
    let small = SegmentCache::open(m, &cache_dir, e[0].bytes).unwrap();
    assert_eq!(small.stats().segments, 1);
}

#[tokio::test]
async fn cancelled_download_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Arc::new(InMemory::new());
    let mut seg = suite::index_segment(dir.path(), 20, 4 << 20);
    seg.signal = Signal::Logs;
    let entry = upload_segment(&Metastore::new(mem.clone(), "obsbox"), &seg, "n1").await.unwrap();
    // Reads are slowed per byte so that small files arrive and the big one is still on its way
    // when the download is dropped, however fast or loaded the machine is.
    let total: u64 = entry.files.iter().map(|f| f.bytes).sum();
    let per_byte = std::time::Duration::from_secs(1) / u32::try_from(total).unwrap();
    let slow = ThrottledStore::new(mem, ThrottleConfig { wait_get_per_byte: per_byte, ..Default::default() });
    let cache =
        SegmentCache::open(Metastore::new(Arc::new(slow), "obsbox"), dir.path().join("cache"), 1 << 30).unwrap();
    {
        let fut = cache.get(&entry);
        tokio::pin!(fut);
        let cut = tokio::time::timeout(std::time::Duration::from_millis(100), &mut fut).await;
        assert!(cut.is_err(), "the download cannot finish in 100 ms");
        let partial: usize = std::fs::read_dir(dir.path().join("cache/.tmp"))
            .unwrap()
            .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum();
        assert!(partial > 0, "cut mid-download, with some files written");
    }
    assert!(!cache.contains(&entry.key));
    assert_eq!(std::fs::read_dir(dir.path().join("cache/.tmp")).unwrap().count(), 0);
    // The next get works.
    let p = cache.get(&entry).await.unwrap();
    assert!(p.join("a.store").is_file());
}

#[tokio::test]
async fn interrupted_upload_is_invisible_and_redone_under_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let m = local_dir(dir.path());
    let seg = suite::index_segment(dir.path(), 30, 50_000);
    // A crash after one (garbled) file and before the entry: nothing is listed.
    let key = obsbox_cluster::segment_key(seg.min_time_ns, "n1", seg.id);
    let half = m.file_path(Signal::Traces, &key, "a.store");
    m.store().put(&half, PutPayload::from_static(b"garbage")).await.unwrap();
    assert!(m.list(None).await.unwrap().is_empty());
    // The retry writes every file again and then the entry.
    let entry = upload_segment(&m, &seg, "n1").await.unwrap();
    assert_eq!(entry.key, key);
    assert_eq!(m.list(None).await.unwrap(), vec![entry.clone()]);
    let cache = SegmentCache::open(m, dir.path().join("cache"), 1 << 30).unwrap();
    let p = cache.get(&entry).await.unwrap();
    assert_eq!(std::fs::read(p.join("a.store")).unwrap(), std::fs::read(seg.path.join("a.store")).unwrap());
}

#[tokio::test]
async fn upload_refuses_a_segment_whose_files_changed() {
    let dir = tempfile::tempdir().unwrap();
    let m = in_memory();
    let mut seg = suite::index_segment(dir.path(), 31, 1000);
    seg.files[1].1 += 1;
    let err = upload_segment(&m, &seg, "n1").await.unwrap_err();
    assert!(matches!(err, obsbox_cluster::ClusterError::Mismatch { .. }), "{err}");
    assert!(m.list(None).await.unwrap().is_empty(), "nothing registered");
    let mut seg = suite::index_segment(dir.path(), 32, 1000);
    seg.files.push(("missing.idx".into(), 5));
    assert!(matches!(upload_segment(&m, &seg, "n1").await, Err(obsbox_cluster::ClusterError::Io { .. })));
    assert!(upload_segment(&m, &suite::index_segment(dir.path(), 33, 10), "bad/node").await.is_err());
    assert!(m.list(None).await.unwrap().is_empty());
}
