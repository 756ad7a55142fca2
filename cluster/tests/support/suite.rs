//! Checks every object store must pass (in memory, local directory, a Garage cluster).
#![allow(dead_code)]

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;

use obsbox_cluster::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use obsbox_cluster::{
    ClusterError, ENTRY_FORMAT, LocalSegment, Metastore, SegmentCache, SegmentEntry, SegmentFile, segment_key,
    upload_segment,
};
use obsbox_storage::api::Signal;

pub const WRITERS: u64 = 16;
pub const ENTRIES_PER_WRITER: u64 = 50;

pub fn entry(signal: Signal, node: &str, id: u64, replaces: Vec<String>) -> SegmentEntry {
    let min = 1_700_000_000_000_000_000 + id * 1_000;
    SegmentEntry {
        key: segment_key(min, node, id),
        signal,
        node_id: node.into(),
        min_time_ns: min,
        max_time_ns: min + 999,
        items: 10,
        bytes: 100,
        files: vec![SegmentFile { name: "meta.json".into(), bytes: 100 }],
        created_ms: 1,
        replaces,
        trace_filter: None,
        format: ENTRY_FORMAT,
    }
}

/// 16 writers register 50 entries each at once while a compactor-like task keeps replacing pairs
/// of listed entries by merged ones; then every entry is listed exactly once and no replaced one.
pub async fn concurrent_writers(m: Metastore) {
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            let node = format!("ingester-{w}");
            for i in 0..ENTRIES_PER_WRITER {
                m.register(&entry(Signal::Logs, &node, i, vec![])).await.expect("register");
            }
        }));
    }
    let compactor = {
        let m = m.clone();
        tokio::spawn(async move {
            let mut merged = Vec::new();
            let mut replaced = HashSet::new();
            for _round in 0..40 {
                let live = m.list(Some(Signal::Logs)).await.expect("list while writing");
                let keys: Vec<&SegmentEntry> = live.iter().filter(|e| e.node_id.starts_with("ingester-")).collect();
                for pair in keys.chunks_exact(2).take(2) {
                    let inputs = vec![pair[0].key.clone(), pair[1].key.clone()];
                    let out = entry(Signal::Logs, "compactor", merged.len() as u64, inputs.clone());
                    m.register(&out).await.expect("register merged");
                    replaced.extend(inputs);
                    merged.push(out.key);
                }
                tokio::task::yield_now().await;
            }
            (merged, replaced)
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    let (merged, replaced) = compactor.await.unwrap();
    assert!(!replaced.is_empty(), "the compactor replaced nothing: the test proves nothing");

    let listed = m.list(Some(Signal::Logs)).await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|e| e.key.as_str()).collect();
    let unique: BTreeSet<&str> = keys.iter().copied().collect();
    assert_eq!(unique.len(), keys.len(), "an entry listed twice");
    let mut want: BTreeSet<String> = (0..WRITERS)
        .flat_map(|w| {
            (0..ENTRIES_PER_WRITER).map(move |i| entry(Signal::Logs, &format!("ingester-{w}"), i, vec![]).key)
        })
        .collect();
    want.extend(merged.iter().cloned());
    for r in &replaced {
        assert!(!unique.contains(r.as_str()), "replaced entry {r} still listed");
        want.remove(r);
    }
    let got: BTreeSet<String> = unique.iter().map(|k| k.to_string()).collect();
    assert_eq!(got, want);
    // Every one written is there when replaced ones are counted too.
    let all = m.list_all(Some(Signal::Logs)).await.unwrap();
    assert_eq!(all.len() as u64, WRITERS * ENTRIES_PER_WRITER + merged.len() as u64);
    assert_eq!(m.garbled_entries(), 0);
}

fn write(path: &Path, len: usize, seed: u8) {
    let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    std::fs::write(path, data).unwrap();
}

/// A tantivy-like segment directory with a few files, one of them `big_bytes` long.
pub fn index_segment(dir: &Path, id: u64, big_bytes: usize) -> LocalSegment {
    let path = dir.join(format!("seg-{id}"));
    std::fs::create_dir_all(&path).unwrap();
    let mut files = Vec::new();
    for (name, len) in [("meta.json", 300usize), ("a.idx", 4096), ("a.store", big_bytes), ("empty.del", 0)] {
        write(&path.join(name), len, id as u8);
        files.push((name.to_string(), len as u64));
    }
    LocalSegment {
        signal: Signal::Traces,
        id,
        path,
        bytes: files.iter().map(|(_, b)| b).sum(),
        files,
        min_time_ns: 1_000 + id,
        max_time_ns: 2_000 + id,
        items: 42,
    }
}

/// A metrics block: one file, `path` is the file.
pub fn block_segment(dir: &Path, id: u64) -> LocalSegment {
    let name = format!("block-{id:08}.blk");
    let path = dir.join(&name);
    write(&path, 10_000, 7);
    LocalSegment {
        signal: Signal::Metrics,
        id,
        path,
        files: vec![(name, 10_000)],
        min_time_ns: 5,
        max_time_ns: 6,
        items: 9,
        bytes: 10_000,
    }
}

fn same_files(local: &LocalSegment, cached: &Path) {
    for (name, len) in &local.files {
        let (src, dst) = if local.path.is_dir() {
            (local.path.join(name), cached.join(name))
        } else {
            assert_eq!(cached.file_name().unwrap().to_str().unwrap(), name, "a block opens by its file");
            (local.path.clone(), cached.to_path_buf())
        };
        let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert_eq!(a.len() as u64, *len);
        assert!(a == b, "{name} differs after the round trip");
    }
}

/// Upload (multipart for the big file), list, download into the cache, byte-for-byte equal;
/// uploading again is idempotent.
pub async fn upload_and_download(m: Metastore, work: &Path, big_bytes: usize) {
    let local = index_segment(work, 1, big_bytes);
    let entry = upload_segment(&m, &local, "ingester-a").await.unwrap();
    assert_eq!(entry.key, segment_key(local.min_time_ns, "ingester-a", 1));
    assert_eq!(entry.bytes, local.bytes);
    assert_eq!(entry.files.len(), 4);
    let again = upload_segment(&m, &local, "ingester-a").await.unwrap();
    assert_eq!(again.key, entry.key);
    let listed = m.list(Some(Signal::Traces)).await.unwrap();
    assert_eq!(listed.iter().filter(|e| e.key == entry.key).count(), 1);

    let block = block_segment(work, 2);
    let block_entry = upload_segment(&m, &block, "ingester-a").await.unwrap();

    let cache = SegmentCache::open(m.clone(), work.join("cache"), 1 << 40).unwrap();
    let listed = m.list(None).await.unwrap();
    let e = listed.iter().find(|e| e.key == entry.key).unwrap();
    let pinned = cache.get(e).await.unwrap();
    same_files(&local, &pinned);
    let b = listed.iter().find(|e| e.key == block_entry.key).unwrap();
    let pinned_block = cache.get(b).await.unwrap();
    same_files(&block, &pinned_block);
    assert_eq!(cache.stats().downloads, 2);

    // Removal deletes the entry and every file.
    drop((pinned, pinned_block));
    m.remove(&entry).await.unwrap();
    assert!(!m.list(None).await.unwrap().iter().any(|x| x.key == entry.key));
    let file = m.file_path(Signal::Traces, &entry.key, "a.store");
    assert!(matches!(m.store().head(&file).await, Err(obsbox_cluster::object_store::Error::NotFound { .. })));
}

/// Concurrent `get`s of one segment download it once; size mismatches are refused.
pub async fn cache_single_flight_and_checks(m: Metastore, work: &Path) {
    let local = index_segment(work, 3, 200_000);
    let entry = upload_segment(&m, &local, "n").await.unwrap();
    let cache = SegmentCache::open(m.clone(), work.join("cache-sf"), 1 << 30).unwrap();
    let gets: Vec<_> = (0..8)
        .map(|_| {
            let (cache, entry) = (cache.clone(), entry.clone());
            tokio::spawn(async move { cache.get(&entry).await.map(|p| p.to_path_buf()) })
        })
        .collect();
    let mut paths = HashSet::new();
    for g in gets {
        paths.insert(g.await.unwrap().unwrap());
    }
    assert_eq!(paths.len(), 1);
    assert_eq!(cache.stats().downloads, 1, "one download for 8 concurrent gets");
    assert_eq!(cache.stats().hits, 7);

    // An entry that lies about a size: refused, nothing kept.
    let mut lying = entry.clone();
    lying.key = segment_key(1, "n", 99);
    for f in &local.files {
        let p = m.file_path(Signal::Traces, &lying.key, &f.0);
        m.store().put(&p, PutPayload::from(std::fs::read(local.path.join(&f.0)).unwrap())).await.unwrap();
    }
    lying.files[1].bytes += 1;
    lying.bytes += 1;
    let err = cache.get(&lying).await.unwrap_err();
    assert!(matches!(err, ClusterError::Mismatch { .. }), "{err}");
    assert!(!cache.contains(&lying.key));
    // A missing file: an error, nothing kept.
    let mut missing = entry.clone();
    missing.key = segment_key(1, "n", 98);
    assert!(cache.get(&missing).await.is_err());
    assert!(!cache.contains(&missing.key));
    assert_eq!(std::fs::read_dir(work.join("cache-sf/.tmp")).unwrap().count(), 0, "no download leftovers");
}

pub fn store_of(m: &Metastore) -> Arc<dyn ObjectStore> {
    m.store().clone()
}
