//! The metastore: the list of segments and of live nodes, kept as objects in the object store.
//!
//! Layout under the configured prefix:
//! - `segments/<signal>/<key>/<file>`: a segment's files, written first;
//! - `meta/<signal>/<key>.json`: its [`SegmentEntry`], written last, so a visible entry means
//!   complete files;
//! - `nodes/<role>/<node_id>.json`: a [`NodeInfo`] heartbeat.
//!
//! Every object has exactly one writer (an entry's key embeds its node id), so concurrent writers
//! never race on one object and no conditional write is needed: S3, Garage and MinIO give
//! read-after-write for new keys and a consistent LIST.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use obsbox_storage::api::Signal;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::{ClusterError, Result};

/// The entry format this build writes; entries with a higher one are skipped (written by a newer
/// obsbox).
pub const ENTRY_FORMAT: u32 = 1;

/// How many objects one `list` fetches at once.
const FETCH_CONCURRENCY: usize = 16;

/// One file of a segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentFile {
    /// Name relative to the segment (no `/`).
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// A segment in the object store, as its metastore entry describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentEntry {
    /// `<min_time_ns:020>-<node_id>-<local_id:020>` ([`segment_key`]); unique, sortable by time.
    pub key: String,
    /// The signal it holds.
    pub signal: Signal,
    /// The node that wrote it (an ingester or the compactor).
    pub node_id: String,
    /// Earliest item time.
    pub min_time_ns: u64,
    /// Latest item time.
    pub max_time_ns: u64,
    /// Number of items (spans, log records, points).
    pub items: u64,
    /// Total size of `files`.
    pub bytes: u64,
    /// The segment's files.
    pub files: Vec<SegmentFile>,
    /// When the entry was made (ms since the Unix epoch).
    pub created_ms: u64,
    /// Keys of the segments this one replaces (a compaction's inputs): readers leave those out.
    #[serde(default)]
    pub replaces: Vec<String>,
    /// Traces: a filter of the segment's trace ids ([`crate::TraceFilter`], base64), so a trace
    /// lookup skips segments that cannot hold the trace. Absent: read the segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_filter: Option<String>,
    /// Always [`ENTRY_FORMAT`] when written by this build.
    pub format: u32,
}

/// The key of a segment: sortable by time, unique per node, the same when a node uploads the same
/// local segment again (so upload and registration are idempotent).
pub fn segment_key(min_time_ns: u64, node_id: &str, local_id: u64) -> String {
    format!("{min_time_ns:020}-{node_id}-{local_id:020}")
}

/// The entries of `all` ([`Metastore::list_all`]) that no entry of `all` replaces: what
/// [`Metastore::list`] answers.
pub fn live(all: &[SegmentEntry]) -> Vec<SegmentEntry> {
    let replaced: HashSet<&str> = all.iter().flat_map(|e| e.replaces.iter().map(String::as_str)).collect();
    all.iter().filter(|e| !replaced.contains(e.key.as_str())).cloned().collect()
}

/// A node's heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique node id (no `/`).
    pub node_id: String,
    /// `ingester`, `searcher`, `compactor`.
    pub role: String,
    /// Where other nodes reach it (an ingester's internal read API).
    pub url: String,
    /// When the heartbeat was written (ms since the Unix epoch); set by [`Metastore::heartbeat`].
    pub updated_ms: u64,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A name that becomes one path segment: not empty, no `/`, no `.`/`..`, printable ASCII.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'\\' | b'*' | b'?' | b'#' | b'%'));
    if ok { Ok(()) } else { Err(ClusterError::Invalid { what, message: format!("{name:?}") }) }
}

/// A parsed entry object, kept while the object does not change (entries are immutable).
struct CachedEntry {
    version: (u64, Option<String>, i64),
    entry: Option<SegmentEntry>,
}

fn version_of(meta: &ObjectMeta) -> (u64, Option<String>, i64) {
    (meta.size, meta.e_tag.clone(), meta.last_modified.timestamp_millis())
}

struct Shared {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// Parsed entries by object location; `entry: None` for skipped ones (reported once).
    entries: Mutex<HashMap<String, CachedEntry>>,
    garbled: AtomicU64,
    newer: AtomicU64,
}

/// The segment and node lists in an object store. Cheap to clone.
#[derive(Clone)]
pub struct Metastore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Metastore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metastore")
            .field("store", &self.shared.store.to_string())
            .field("prefix", &self.shared.prefix)
            .finish()
    }
}

impl Metastore {
    /// A metastore over `store`, every object under `prefix` (empty: the store's root).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        let prefix = prefix.trim_matches('/').to_string();
        Metastore {
            shared: Arc::new(Shared {
                store,
                prefix,
                entries: Mutex::new(HashMap::new()),
                garbled: AtomicU64::new(0),
                newer: AtomicU64::new(0),
            }),
        }
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.shared.store
    }

    /// Entry objects that could not be parsed (each counted once while it stays unchanged).
    pub fn garbled_entries(&self) -> u64 {
        self.shared.garbled.load(Ordering::Relaxed)
    }

    /// Entry objects skipped because a newer obsbox wrote them in a format this one does not know.
    pub fn newer_format_entries(&self) -> u64 {
        self.shared.newer.load(Ordering::Relaxed)
    }

    fn path(&self, rest: &str) -> Path {
        if self.shared.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.shared.prefix))
        }
    }

    fn meta_dir(&self, signal: Option<Signal>) -> Path {
        match signal {
            Some(s) => self.path(&format!("meta/{}", s.as_str())),
            None => self.path("meta"),
        }
    }

    pub(crate) fn entry_path(&self, signal: Signal, key: &str) -> Path {
        self.path(&format!("meta/{}/{key}.json", signal.as_str()))
    }

    /// Where a segment's file lives in the store.
    pub fn file_path(&self, signal: Signal, key: &str, file: &str) -> Path {
        self.path(&format!("segments/{}/{key}/{file}", signal.as_str()))
    }

    fn node_path(&self, role: &str, node_id: &str) -> Path {
        self.path(&format!("nodes/{role}/{node_id}.json"))
    }

    /// Writes `entry` (with `format` set to [`ENTRY_FORMAT`]). Idempotent: registering the same entry
    /// again overwrites it with the same content. Call it only once every file of the segment is in
    /// the store: a visible entry promises complete files.
    pub async fn register(&self, entry: &SegmentEntry) -> Result<()> {
        check_name("segment key", &entry.key)?;
        for f in &entry.files {
            check_name("segment file name", &f.name)?;
        }
        let mut entry = entry.clone();
        entry.format = ENTRY_FORMAT;
        let body =
            serde_json::to_vec(&entry).map_err(|source| ClusterError::Encode { what: "segment entry", source })?;
        self.shared.store.put(&self.entry_path(entry.signal, &entry.key), PutPayload::from(body)).await?;
        Ok(())
    }

    /// Every live entry of `signal` (all signals when `None`), sorted by key: entries named in
    /// another visible entry's `replaces` are left out, and so are entries that cannot be parsed
    /// (logged once and counted in [`Metastore::garbled_entries`]) and entries of a newer format.
    pub async fn list(&self, signal: Option<Signal>) -> Result<Vec<SegmentEntry>> {
        Ok(live(&self.list_all(signal).await?))
    }

    /// Every readable entry, replaced ones included (what the compactor needs to delete them).
    pub async fn list_all(&self, signal: Option<Signal>) -> Result<Vec<SegmentEntry>> {
        let metas: Vec<ObjectMeta> = self
            .shared
            .store
            .list(Some(&self.meta_dir(signal)))
            .try_filter(|m| futures::future::ready(m.location.as_ref().ends_with(".json")))
            .try_collect()
            .await?;
        let listed: HashSet<String> = metas.iter().map(|m| m.location.to_string()).collect();
        let missing: Vec<ObjectMeta> = {
            let cache = self.shared.entries.lock();
            metas
                .iter()
                .filter(|m| cache.get(m.location.as_ref()).is_none_or(|c| c.version != version_of(m)))
                .cloned()
                .collect()
        };
        let fetched: Vec<Option<(String, CachedEntry)>> = futures::stream::iter(missing)
            .map(|meta| async move { self.fetch_entry(meta).await })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        let mut cache = self.shared.entries.lock();
        for (location, cached) in fetched.into_iter().flatten() {
            cache.insert(location, cached);
        }
        // Forget removed entries, but only under the part of the tree just listed.
        let listed_dir = format!("{}/", self.meta_dir(signal));
        cache.retain(|location, _| !location.starts_with(&listed_dir) || listed.contains(location));
        let mut out: Vec<SegmentEntry> =
            metas.iter().filter_map(|m| cache.get(m.location.as_ref()).and_then(|c| c.entry.clone())).collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    /// Reads and parses one entry object; `None` when it vanished in between (removed).
    async fn fetch_entry(&self, meta: ObjectMeta) -> Result<Option<(String, CachedEntry)>> {
        let location = meta.location.to_string();
        let bytes = match self.shared.store.get(&meta.location).await {
            Ok(get) => get.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let entry = match parse_entry(&bytes) {
            Parsed::Entry(entry) => Some(entry),
            Parsed::Newer(format) => {
                self.shared.newer.fetch_add(1, Ordering::Relaxed);
                warn!(%location, format, known = ENTRY_FORMAT, "skipping a segment entry of a newer format");
                None
            }
            Parsed::Garbled(error) => {
                self.shared.garbled.fetch_add(1, Ordering::Relaxed);
                warn!(%location, %error, "skipping a garbled segment entry");
                None
            }
        };
        Ok(Some((location, CachedEntry { version: version_of(&meta), entry })))
    }

    /// Deletes `entry` from the metastore, then its files. A missing object is not an error, so an
    /// interrupted removal can be run again.
    pub async fn remove(&self, entry: &SegmentEntry) -> Result<()> {
        check_name("segment key", &entry.key)?;
        ignore_not_found(self.shared.store.delete(&self.entry_path(entry.signal, &entry.key)).await)?;
        self.shared.entries.lock().remove(self.entry_path(entry.signal, &entry.key).as_ref());
        // Everything under the segment's directory, not just the listed files: a crashed upload
        // may have left others.
        let dir = self.path(&format!("segments/{}/{}", entry.signal.as_str(), entry.key));
        let files: Vec<Path> = self.shared.store.list(Some(&dir)).map_ok(|m| m.location).try_collect().await?;
        for file in files {
            ignore_not_found(self.shared.store.delete(&file).await)?;
        }
        Ok(())
    }

    /// Writes `node`'s heartbeat with `updated_ms` set to now.
    pub async fn heartbeat(&self, node: &NodeInfo) -> Result<()> {
        check_name("node role", &node.role)?;
        check_name("node id", &node.node_id)?;
        let node = NodeInfo { updated_ms: now_ms(), ..node.clone() };
        let body = serde_json::to_vec(&node).map_err(|source| ClusterError::Encode { what: "node info", source })?;
        self.shared.store.put(&self.node_path(&node.role, &node.node_id), PutPayload::from(body)).await?;
        Ok(())
    }

    /// Deletes a node's heartbeat (on clean shutdown), so others stop asking it at once.
    pub async fn remove_node(&self, role: &str, node_id: &str) -> Result<()> {
        check_name("node role", role)?;
        check_name("node id", node_id)?;
        ignore_not_found(self.shared.store.delete(&self.node_path(role, node_id)).await)
    }

    /// Nodes of `role` whose last heartbeat is at most `max_age` old, sorted by id. Unreadable
    /// heartbeats are logged and left out.
    pub async fn live_nodes(&self, role: &str, max_age: Duration) -> Result<Vec<NodeInfo>> {
        check_name("node role", role)?;
        let dir = self.path(&format!("nodes/{role}"));
        let metas: Vec<ObjectMeta> = self.shared.store.list(Some(&dir)).try_collect().await?;
        let oldest = now_ms().saturating_sub(max_age.as_millis() as u64);
        let mut nodes: Vec<NodeInfo> = futures::stream::iter(metas)
            .map(|meta| async move {
                match self.shared.store.get(&meta.location).await {
                    Ok(get) => {
                        let bytes = get.bytes().await?;
                        match serde_json::from_slice::<NodeInfo>(&bytes) {
                            Ok(node) => Ok(Some(node)),
                            Err(error) => {
                                warn!(location = %meta.location, %error, "skipping a garbled node heartbeat");
                                Ok(None)
                            }
                        }
                    }
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(ClusterError::from(e)),
                }
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .try_filter_map(|n| futures::future::ready(Ok(n)))
            .try_collect()
            .await?;
        nodes.retain(|n| n.updated_ms >= oldest && n.role == role);
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(nodes)
    }
}

fn ignore_not_found(r: object_store::Result<()>) -> Result<()> {
    match r {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

enum Parsed {
    Entry(SegmentEntry),
    Newer(u64),
    Garbled(String),
}

fn parse_entry(bytes: &[u8]) -> Parsed {
    #[derive(Deserialize)]
    struct Format {
        format: Option<u64>,
    }
    match serde_json::from_slice::<Format>(bytes) {
        Ok(Format { format: Some(f) }) if f > u64::from(ENTRY_FORMAT) => return Parsed::Newer(f),
        Ok(Format { format: Some(_) }) => {}
        Ok(Format { format: None }) => return Parsed::Garbled("no `format` field".into()),
        Err(e) => return Parsed::Garbled(e.to_string()),
    }
    match serde_json::from_slice::<SegmentEntry>(bytes) {
        Ok(e) if check_name("key", &e.key).is_ok() && e.files.iter().all(|f| check_name("file", &f.name).is_ok()) => {
            Parsed::Entry(e)
        }
        Ok(e) => Parsed::Garbled(format!("invalid key or file name in entry {:?}", e.key)),
        Err(e) => Parsed::Garbled(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    pub(crate) fn entry(signal: Signal, min: u64, node: &str, id: u64) -> SegmentEntry {
        SegmentEntry {
            key: segment_key(min, node, id),
            signal,
            node_id: node.into(),
            min_time_ns: min,
            max_time_ns: min + 10,
            items: 3,
            bytes: 7,
            files: vec![SegmentFile { name: "a".into(), bytes: 7 }],
            created_ms: 1,
            replaces: vec![],
            trace_filter: None,
            format: ENTRY_FORMAT,
        }
    }

    fn metastore() -> Metastore {
        Metastore::new(Arc::new(InMemory::new()), "deploy/one")
    }

    #[test]
    fn keys_sort_by_time() {
        assert_eq!(segment_key(5, "ing-1", 7), "00000000000000000005-ing-1-00000000000000000007");
        assert!(segment_key(9, "z", 1) < segment_key(10, "a", 0));
    }

    #[tokio::test]
    async fn register_list_remove() {
        let m = metastore();
        let a = entry(Signal::Traces, 20, "n1", 1);
        let b = entry(Signal::Traces, 10, "n2", 1);
        let c = entry(Signal::Logs, 10, "n1", 2);
        for e in [&a, &b, &c] {
            m.register(e).await.unwrap();
        }
        m.register(&a).await.unwrap(); // idempotent
        assert_eq!(m.list(Some(Signal::Traces)).await.unwrap(), vec![b.clone(), a.clone()]);
        assert_eq!(m.list(None).await.unwrap().len(), 3);
        assert_eq!(m.list(Some(Signal::Metrics)).await.unwrap(), vec![]);

        let file = m.file_path(Signal::Traces, &a.key, "a");
        m.store().put(&file, PutPayload::from_static(b"1234567")).await.unwrap();
        m.remove(&a).await.unwrap();
        assert!(matches!(m.store().head(&file).await, Err(object_store::Error::NotFound { .. })));
        assert_eq!(m.list(Some(Signal::Traces)).await.unwrap(), vec![b.clone()]);
        m.remove(&a).await.unwrap(); // again: nothing left, still fine
        // Objects are under the prefix.
        let all: Vec<ObjectMeta> = m.store().list(None).try_collect().await.unwrap();
        assert!(all.iter().all(|o| o.location.as_ref().starts_with("deploy/one/meta/")), "{all:?}");
    }

    #[tokio::test]
    async fn replaced_entries_are_left_out() {
        let m = metastore();
        let a = entry(Signal::Logs, 1, "n1", 1);
        let b = entry(Signal::Logs, 2, "n1", 2);
        let mut merged = entry(Signal::Logs, 1, "compactor", 1);
        merged.replaces = vec![a.key.clone(), b.key.clone()];
        for e in [&a, &b, &merged] {
            m.register(e).await.unwrap();
        }
        assert_eq!(m.list(Some(Signal::Logs)).await.unwrap(), vec![merged.clone()]);
        assert_eq!(m.list_all(Some(Signal::Logs)).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn garbled_and_newer_entries_are_skipped_and_counted() {
        let m = metastore();
        let good = entry(Signal::Traces, 1, "n1", 1);
        m.register(&good).await.unwrap();
        let put = |name: &str, body: &'static [u8]| {
            let path = m.path(&format!("meta/traces/{name}.json"));
            let store = m.store().clone();
            async move { store.put(&path, PutPayload::from_static(body)).await.unwrap() }
        };
        put("garbled", b"{not json").await;
        put("no-format", b"{\"key\":\"x\"}").await;
        put("wrong-shape", b"{\"format\":1,\"key\":7}").await;
        put("newer", b"{\"format\":2,\"something\":\"else\"}").await;
        put("bad-key", b"{\"format\":1,\"key\":\"../x\",\"signal\":\"traces\",\"node_id\":\"n\",\"min_time_ns\":0,\"max_time_ns\":0,\"items\":0,\"bytes\":0,\"files\":[],\"created_ms\":0}").await;
        for _ in 0..2 {
            assert_eq!(m.list(Some(Signal::Traces)).await.unwrap(), vec![good.clone()]);
        }
        // Counted once each, not once per list.
        assert_eq!(m.garbled_entries(), 4);
        assert_eq!(m.newer_format_entries(), 1);
        // A rewritten (fixed) object is read again.
        let mut fixed = entry(Signal::Traces, 2, "n1", 2);
        fixed.key = "garbled".into();
        m.register(&fixed).await.unwrap();
        assert_eq!(m.list(Some(Signal::Traces)).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn bad_names_are_refused() {
        let m = metastore();
        let mut e = entry(Signal::Traces, 1, "n1", 1);
        e.key = "a/b".into();
        assert!(matches!(m.register(&e).await, Err(ClusterError::Invalid { .. })));
        let mut e = entry(Signal::Traces, 1, "n1", 1);
        e.files[0].name = "..".into();
        assert!(matches!(m.register(&e).await, Err(ClusterError::Invalid { .. })));
        let node = NodeInfo { node_id: "x/y".into(), role: "ingester".into(), url: String::new(), updated_ms: 0 };
        assert!(m.heartbeat(&node).await.is_err());
    }

    #[tokio::test]
    async fn live_nodes_by_role_and_age() {
        let m = metastore();
        let node = |id: &str, role: &str| NodeInfo {
            node_id: id.into(),
            role: role.into(),
            url: format!("http://{id}:16686"),
            updated_ms: 0,
        };
        m.heartbeat(&node("i1", "ingester")).await.unwrap();
        m.heartbeat(&node("i2", "ingester")).await.unwrap();
        m.heartbeat(&node("s1", "searcher")).await.unwrap();
        // A stale heartbeat, written directly with an old time.
        let stale = NodeInfo { updated_ms: now_ms() - 60_000, ..node("i3", "ingester") };
        m.store()
            .put(&m.node_path("ingester", "i3"), PutPayload::from(serde_json::to_vec(&stale).unwrap()))
            .await
            .unwrap();
        let live = m.live_nodes("ingester", Duration::from_secs(10)).await.unwrap();
        let ids: Vec<&str> = live.iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["i1", "i2"]);
        assert_eq!(live[0].url, "http://i1:16686");
        assert!(live[0].updated_ms > 0);
        m.remove_node("ingester", "i1").await.unwrap();
        assert_eq!(m.live_nodes("ingester", Duration::from_secs(10)).await.unwrap().len(), 1);
        assert_eq!(m.live_nodes("searcher", Duration::from_secs(10)).await.unwrap().len(), 1);
        assert_eq!(m.live_nodes("compactor", Duration::from_secs(10)).await.unwrap().len(), 0);
    }
}
