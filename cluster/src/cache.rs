//! The searcher's local copy of segments: [`SegmentCache`], bounded in bytes, whole segments only.
//!
//! Layout of the cache directory:
//! - `<signal>/<key>/`: a complete segment: its files plus `.entry.json` (its metastore entry, for
//!   the size checks at open);
//! - `.tmp/`: downloads in progress, renamed into place when complete, so a crash never leaves a
//!   half segment that looks whole; emptied at open;
//! - `.trash/`: evicted segments being deleted; emptied at open.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use object_store::ObjectStoreExt;
use obsbox_storage::api::Signal;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

use crate::error::{ClusterError, Result};
use crate::metastore::{Metastore, SegmentEntry, check_name};

const MANIFEST: &str = ".entry.json";
/// Files of one segment downloaded at once.
const FILE_CONCURRENCY: usize = 4;

/// Counters of a [`SegmentCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Segments held now.
    pub segments: usize,
    /// Their total size.
    pub bytes: u64,
    /// Segments downloaded since open.
    pub downloads: u64,
    /// `get`s answered from the cache.
    pub hits: u64,
    /// Segments evicted since open.
    pub evictions: u64,
}

struct Cached {
    bytes: u64,
    path: PathBuf,
    pins: usize,
    last_use: u64,
}

#[derive(Default)]
struct State {
    segments: HashMap<String, Cached>,
    bytes: u64,
    tick: u64,
    /// One lock per segment being downloaded: concurrent `get`s of it wait for one download.
    downloading: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

struct Inner {
    metastore: Metastore,
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    downloads: AtomicU64,
    hits: AtomicU64,
    evictions: AtomicU64,
    tmp_seq: AtomicU64,
}

/// A bounded local cache of whole segments, least recently used evicted first. Cheap to clone.
///
/// Contract: a segment returned by [`SegmentCache::get`] stays on disk until its
/// [`PinnedSegment`] is dropped; the cache holds at most `max_bytes` of unpinned segments plus the
/// pinned ones (a segment bigger than the budget is still served, and evicted once unpinned).
#[derive(Clone)]
pub struct SegmentCache {
    inner: Arc<Inner>,
}

/// A segment on local disk, kept there while this value lives. Derefs to the path to open it
/// with: the index directory (traces, logs) or the block file (metrics), like the store's
/// `SealedSegment::path`.
pub struct PinnedSegment {
    inner: Arc<Inner>,
    key: String,
    path: PathBuf,
}

impl Deref for PinnedSegment {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for PinnedSegment {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for PinnedSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedSegment").field("key", &self.key).field("path", &self.path).finish()
    }
}

impl Drop for PinnedSegment {
    fn drop(&mut self) {
        let trash = {
            let mut st = self.inner.state.lock();
            if let Some(c) = st.segments.get_mut(&self.key) {
                c.pins -= 1;
            }
            self.inner.evict(&mut st)
        };
        self.inner.delete_later(trash);
    }
}

/// The path to open a segment with, inside its cache directory.
fn open_path(dir: &Path, entry: &SegmentEntry) -> PathBuf {
    match (entry.signal, entry.files.as_slice()) {
        (Signal::Metrics, [only]) => dir.join(&only.name),
        _ => dir.to_path_buf(),
    }
}

impl std::fmt::Debug for SegmentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentCache")
            .field("dir", &self.inner.dir)
            .field("max_bytes", &self.inner.max_bytes)
            .field("stats", &self.stats())
            .finish()
    }
}

impl SegmentCache {
    /// Opens the cache in `dir` (created when missing), keeping at most `max_bytes` of unpinned
    /// segments. Deletes leftovers of interrupted downloads and evictions, and keeps the complete
    /// segments it finds whose file sizes match their entry (the others are deleted). Blocking: call
    /// it at startup or on a blocking thread.
    pub fn open(metastore: Metastore, dir: impl Into<PathBuf>, max_bytes: u64) -> Result<Self> {
        let dir = dir.into();
        for sub in [".tmp", ".trash"] {
            let p = dir.join(sub);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| ClusterError::io("clean cache directory", &p, e))?;
            }
            std::fs::create_dir_all(&p).map_err(|e| ClusterError::io("create cache directory", &p, e))?;
        }
        let inner = Arc::new(Inner {
            metastore,
            dir,
            max_bytes,
            state: Mutex::new(State::default()),
            downloads: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            tmp_seq: AtomicU64::new(0),
        });
        let mut found = Vec::new();
        for signal in Signal::ALL {
            let sdir = inner.dir.join(signal.as_str());
            std::fs::create_dir_all(&sdir).map_err(|e| ClusterError::io("create cache directory", &sdir, e))?;
            let list = std::fs::read_dir(&sdir).map_err(|e| ClusterError::io("read cache directory", &sdir, e))?;
            for item in list {
                let item = item.map_err(|e| ClusterError::io("read cache directory", &sdir, e))?;
                let path = item.path();
                match check_cached(&path, signal) {
                    Some(entry) => {
                        let modified = item.metadata().and_then(|m| m.modified()).ok();
                        found.push((modified, entry, path));
                    }
                    None => {
                        warn!(path = %path.display(), "deleting an incomplete or unknown segment from the cache");
                        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                    }
                }
            }
        }
        // Least recently written first, so they are evicted first.
        found.sort_by_key(|(modified, _, _)| *modified);
        let trash = {
            let mut st = inner.state.lock();
            for (_, entry, dir) in found {
                st.tick += 1;
                st.bytes += entry.bytes;
                let cached = Cached { bytes: entry.bytes, path: open_path(&dir, &entry), pins: 0, last_use: st.tick };
                st.segments.insert(entry.key, cached);
            }
            inner.evict(&mut st)
        };
        inner.delete_now(trash);
        Ok(SegmentCache { inner })
    }

    /// The segment of `entry` on local disk, downloaded first when not cached. Concurrent calls for
    /// one segment download it once. Every file's size is checked against the entry; a mismatch is
    /// an error and nothing is kept.
    pub async fn get(&self, entry: &SegmentEntry) -> Result<PinnedSegment> {
        check_name("segment key", &entry.key)?;
        for f in &entry.files {
            check_name("segment file name", &f.name)?;
        }
        loop {
            let lock = {
                let mut st = self.inner.state.lock();
                if let Some(p) = self.inner.pin(&mut st, &entry.key) {
                    self.inner.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(p);
                }
                st.downloading.entry(entry.key.clone()).or_default().clone()
            };
            let _guard = lock.lock().await;
            {
                let mut st = self.inner.state.lock();
                if let Some(p) = self.inner.pin(&mut st, &entry.key) {
                    self.inner.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(p);
                }
                // A previous downloader failed or was cancelled and dropped its lock: take over.
                match st.downloading.get(&entry.key) {
                    Some(current) if Arc::ptr_eq(current, &lock) => {}
                    _ => continue,
                }
            }
            let result = self.inner.download(entry).await;
            let mut st = self.inner.state.lock();
            st.downloading.remove(&entry.key);
            let tmp = result?;
            return self.inner.commit(st, entry, tmp);
        }
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let st = self.inner.state.lock();
        CacheStats {
            segments: st.segments.len(),
            bytes: st.bytes,
            downloads: self.inner.downloads.load(Ordering::Relaxed),
            hits: self.inner.hits.load(Ordering::Relaxed),
            evictions: self.inner.evictions.load(Ordering::Relaxed),
        }
    }

    /// Whether the segment with `key` is in the cache now.
    pub fn contains(&self, key: &str) -> bool {
        self.inner.state.lock().segments.contains_key(key)
    }
}

/// A complete segment directory: its manifest parses, names it, and every file has its size.
fn check_cached(dir: &Path, signal: Signal) -> Option<SegmentEntry> {
    let name = dir.file_name()?.to_str()?;
    let text = std::fs::read(dir.join(MANIFEST)).ok()?;
    let entry: SegmentEntry = serde_json::from_slice(&text).ok()?;
    if entry.key != name || entry.signal != signal {
        return None;
    }
    for f in &entry.files {
        check_name("file", &f.name).ok()?;
        if std::fs::metadata(dir.join(&f.name)).ok()?.len() != f.bytes {
            return None;
        }
    }
    Some(entry)
}

/// A download directory, deleted on drop unless committed (a cancelled `get` leaves nothing).
struct TmpDir(Option<PathBuf>);

impl Drop for TmpDir {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

impl Inner {
    fn pin(self: &Arc<Self>, st: &mut State, key: &str) -> Option<PinnedSegment> {
        st.tick += 1;
        let tick = st.tick;
        let c = st.segments.get_mut(key)?;
        c.pins += 1;
        c.last_use = tick;
        Some(PinnedSegment { inner: self.clone(), key: key.to_string(), path: c.path.clone() })
    }

    async fn download(&self, entry: &SegmentEntry) -> Result<TmpDir> {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(".tmp").join(format!("{}-{seq}", entry.key));
        tokio::fs::create_dir_all(&path).await.map_err(|e| ClusterError::io("create download directory", &path, e))?;
        let tmp = TmpDir(Some(path.clone()));
        debug!(key = %entry.key, files = entry.files.len(), bytes = entry.bytes, "downloading segment");
        // Owned futures (no borrow of `entry` in the closure): keeps `get` Send for tokio::spawn.
        let files: Vec<_> = entry
            .files
            .iter()
            .map(|f| {
                let remote = self.metastore.file_path(entry.signal, &entry.key, &f.name);
                let local = path.join(&f.name);
                let (metastore, key, bytes) = (self.metastore.clone(), entry.key.clone(), f.bytes);
                async move { download_file(&metastore, &remote, &local, bytes, &key).await }
            })
            .collect();
        // Every file's download runs to its end, failed or not, before an error is returned:
        // a file still being written while the directory is deleted would leave it behind.
        let results: Vec<Result<u64>> = futures::stream::iter(files).buffer_unordered(FILE_CONCURRENCY).collect().await;
        let total: u64 = results.into_iter().sum::<Result<u64>>()?;
        if total != entry.bytes {
            return Err(ClusterError::Mismatch {
                key: entry.key.clone(),
                message: format!("files add up to {total} bytes, the entry says {}", entry.bytes),
            });
        }
        let manifest =
            serde_json::to_vec(entry).map_err(|source| ClusterError::Encode { what: "cache manifest", source })?;
        let m = path.join(MANIFEST);
        tokio::fs::write(&m, manifest).await.map_err(|e| ClusterError::io("write cache manifest", &m, e))?;
        self.downloads.fetch_add(1, Ordering::Relaxed);
        Ok(tmp)
    }

    /// Renames a complete download into place and pins it.
    fn commit(
        self: &Arc<Self>,
        mut st: parking_lot::MutexGuard<'_, State>,
        entry: &SegmentEntry,
        mut tmp: TmpDir,
    ) -> Result<PinnedSegment> {
        if let Some(p) = self.pin(&mut st, &entry.key) {
            return Ok(p); // a concurrent download of the same segment won; ours is deleted on drop
        }
        let final_dir = self.dir.join(entry.signal.as_str()).join(&entry.key);
        let from = tmp.0.clone().expect("not committed yet");
        if final_dir.exists() {
            // Not in the map, so not ours: a stale leftover.
            let _ = std::fs::remove_dir_all(&final_dir);
        }
        std::fs::rename(&from, &final_dir)
            .map_err(|e| ClusterError::io("move segment into the cache", &final_dir, e))?;
        tmp.0 = None;
        st.bytes += entry.bytes;
        let cached = Cached { bytes: entry.bytes, path: open_path(&final_dir, entry), pins: 0, last_use: 0 };
        st.segments.insert(entry.key.clone(), cached);
        let pinned = self.pin(&mut st, &entry.key).expect("just inserted");
        let trash = self.evict(&mut st);
        drop(st);
        self.delete_later(trash);
        Ok(pinned)
    }

    /// Drops unpinned segments, least recently used first, until within budget; moves their
    /// directories to `.trash` (fast, under the lock, so the key's place is free at once) and
    /// returns them for deletion outside the lock.
    fn evict(&self, st: &mut State) -> Vec<PathBuf> {
        let mut trash = Vec::new();
        while st.bytes > self.max_bytes {
            let victim =
                st.segments.iter().filter(|(_, c)| c.pins == 0).min_by_key(|(_, c)| c.last_use).map(|(k, _)| k.clone());
            let Some(key) = victim else { break };
            let c = st.segments.remove(&key).expect("listed");
            st.bytes -= c.bytes;
            self.evictions.fetch_add(1, Ordering::Relaxed);
            let dir = self.segment_dir(&c.path, &key);
            let to = self.dir.join(".trash").join(format!("{key}-{}", self.tmp_seq.fetch_add(1, Ordering::Relaxed)));
            match std::fs::rename(&dir, &to) {
                Ok(()) => trash.push(to),
                Err(error) => {
                    warn!(path = %dir.display(), %error, "cannot move an evicted segment to the trash");
                    trash.push(dir);
                }
            }
            debug!(%key, bytes = c.bytes, "evicted segment from the cache");
        }
        trash
    }

    /// The segment's directory from the path it is opened with.
    fn segment_dir(&self, open: &Path, key: &str) -> PathBuf {
        if open.file_name().and_then(|n| n.to_str()) == Some(key) {
            open.to_path_buf()
        } else {
            open.parent().map(Path::to_path_buf).unwrap_or_else(|| open.to_path_buf())
        }
    }

    fn delete_now(&self, trash: Vec<PathBuf>) {
        for p in trash {
            if let Err(error) = std::fs::remove_dir_all(&p) {
                warn!(path = %p.display(), %error, "cannot delete an evicted segment");
            }
        }
    }

    /// Deletes on the blocking pool when in a runtime (off the async threads), else now.
    fn delete_later(self: &Arc<Self>, trash: Vec<PathBuf>) {
        if trash.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let inner = self.clone();
                handle.spawn_blocking(move || inner.delete_now(trash));
            }
            Err(_) => self.delete_now(trash),
        }
    }
}

async fn download_file(
    metastore: &Metastore,
    remote: &object_store::path::Path,
    local: &Path,
    expected: u64,
    key: &str,
) -> Result<u64> {
    let mismatch = |got: u64| ClusterError::Mismatch {
        key: key.to_string(),
        message: format!("{remote} is {got} bytes or more, the entry says {expected}"),
    };
    let get = metastore.store().get(remote).await?;
    if get.meta.size != expected {
        return Err(mismatch(get.meta.size));
    }
    let mut file = tokio::fs::File::create(local).await.map_err(|e| ClusterError::io("create cache file", local, e))?;
    let mut stream = get.into_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        if n > expected {
            return Err(mismatch(n));
        }
        file.write_all(&chunk).await.map_err(|e| ClusterError::io("write cache file", local, e))?;
    }
    file.flush().await.map_err(|e| ClusterError::io("write cache file", local, e))?;
    if n != expected {
        return Err(ClusterError::Mismatch {
            key: key.to_string(),
            message: format!("{remote}: got {n} bytes, the entry says {expected}"),
        });
    }
    Ok(n)
}
