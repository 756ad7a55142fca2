//! The searcher's [`Reader`]: the object store's segments plus every live ingester's data that is
//! not uploaded yet, answered as one store holding all of it would answer.
//!
//! Per call ([`Answer::answer`]):
//! 1. ask every live ingester at once over the internal read API (`obsbox_query_ui::internal`)
//!    for its part, with the keys of the local segments that answered (`served`) and of those it
//!    released lately (`released`); an ingester that does not answer fails the call (retryable)
//!    until its heartbeat expires, rather than leaving its data out silently;
//! 2. refresh the segment list when a `released` key is not in it yet;
//! 3. fetch the segments of the call's signals and time range that no ingester served into the
//!    [`SegmentCache`] (at most [`FETCH_CONCURRENCY`] at once) and read them with a
//!    [`SegmentSet`];
//! 4. [`merge`] the object-store part first, then the ingesters' parts.
//!
//! Every item is counted once: an ingester releases a segment only after registering it, under a
//! lock its reads hold, so each sealed segment is either served by its ingester (and left out
//! here) or in the list (after step 2).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use obsbox_query_ui::internal::{InternalClient, InternalError, ask_all};
use obsbox_storage::call::{Answer, ReadCall, ReadResult, merge, run};
use obsbox_storage::{OpenSegment, SegmentSet, StoreError, StoreStats, TraceFilter};
use parking_lot::{Mutex, RwLock};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::cache::{PinnedSegment, SegmentCache};
use crate::metastore::{Metastore, SegmentEntry};
use crate::view::MetastoreView;

/// Segments one call downloads at once.
pub const FETCH_CONCURRENCY: usize = 8;

/// How a searcher finds and calls ingesters.
#[derive(Clone, Debug)]
pub struct SearcherSettings {
    /// How often the segment list and the live ingesters are read again.
    pub poll_interval: Duration,
    /// An ingester whose heartbeat is older than this is no longer asked.
    pub node_timeout: Duration,
    /// Time limit of one internal read call.
    pub call_timeout: Duration,
    /// Bearer token for the ingesters' UI port (their `[auth] query_token`).
    pub token: Option<String>,
}

struct Ingesters {
    clients: RwLock<Vec<InternalClient>>,
    /// Clients by URL, kept so their connection pools are reused.
    known: Mutex<HashMap<String, InternalClient>>,
    metastore: Metastore,
    settings: SearcherSettings,
}

impl Ingesters {
    /// Reads the live ingesters from their heartbeats; returns whether the list changed. When an
    /// ingester left, the segment list is read again *before* the new list is used: a stopping
    /// ingester ships its last segments and then removes its heartbeat, so a searcher that stopped
    /// asking it with a segment list from before those uploads would miss them until its next poll.
    async fn refresh(&self, view: &MetastoreView) -> bool {
        let nodes = match self.metastore.live_nodes("ingester", self.settings.node_timeout).await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list live ingesters; keeping the last list");
                return false;
            }
        };
        let mut clients = Vec::with_capacity(nodes.len());
        let live: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
        {
            let mut known = self.known.lock();
            for node in nodes {
                if let Some(c) = known.get(&node.url) {
                    clients.push(c.clone());
                    continue;
                }
                match InternalClient::new(&node.url, self.settings.token.clone(), self.settings.call_timeout) {
                    Ok(c) => {
                        known.insert(node.url.clone(), c.clone());
                        clients.push(c);
                    }
                    Err(e) => tracing::warn!(node = %node.node_id, url = %node.url, error = %e, "cannot call ingester"),
                }
            }
        }
        let (changed, someone_left) = {
            let current = self.clients.read();
            let changed = current.iter().map(|c| c.url()).ne(clients.iter().map(|c| c.url()));
            let left = current.iter().any(|c| !clients.iter().any(|n| n.url() == c.url()));
            (changed, left)
        };
        if someone_left && let Err(e) = view.refresh_now().await {
            // Keep asking the old list: its calls fail (retryably) rather than miss data.
            tracing::warn!(error = %e, "cannot read the segment list after an ingester left; keeping the old ingester list");
            return false;
        }
        // Forget the clients of ingesters that left: one that comes back gets a new one.
        self.known.lock().retain(|url, _| live.contains(url));
        *self.clients.write() = clients;
        changed
    }
}

/// The searcher's reader. Its methods block (call them from a blocking pool, never from a
/// runtime thread), as every [`obsbox_storage::Reader`]'s do.
pub struct ClusterReader {
    rt: Handle,
    view: Arc<MetastoreView>,
    cache: SegmentCache,
    /// Opened segments by key; an entry goes when the cache no longer holds its files.
    opened: Mutex<HashMap<String, Arc<OpenSegment>>>,
    /// Decoded trace filters by segment key (`None`: unreadable); pruned to the listed segments.
    filters: Mutex<HashMap<String, Option<Arc<TraceFilter>>>>,
    ingesters: Arc<Ingesters>,
    poller: JoinHandle<()>,
}

impl Drop for ClusterReader {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl ClusterReader {
    /// Starts following `metastore` (segment list and live ingesters), reading segments through
    /// `cache`. Must be called inside a tokio runtime.
    pub fn start(metastore: Metastore, cache: SegmentCache, settings: SearcherSettings) -> ClusterReader {
        let view = Arc::new(MetastoreView::start(metastore.clone(), None, settings.poll_interval));
        let poll = settings.poll_interval.min(Duration::from_secs(2));
        let ingesters = Arc::new(Ingesters {
            clients: RwLock::new(Vec::new()),
            known: Mutex::new(HashMap::new()),
            metastore,
            settings,
        });
        let poller = tokio::spawn({
            let (ingesters, view) = (ingesters.clone(), view.clone());
            async move {
                let mut tick = tokio::time::interval(poll);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    ingesters.refresh(&view).await;
                }
            }
        });
        ClusterReader {
            rt: Handle::current(),
            view,
            cache,
            opened: Mutex::new(HashMap::new()),
            filters: Mutex::new(HashMap::new()),
            ingesters,
            poller,
        }
    }

    /// The segment cache's counters (downloads, hits, evictions).
    pub fn cache_stats(&self) -> crate::CacheStats {
        self.cache.stats()
    }

    /// Waits for the first segment list (at most `timeout`); a searcher is ready after it.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.view.snapshot().taken.is_some() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The object-store segments `call` must read: of its signals, overlapping its time, not
    /// `served` by an ingester.
    async fn entries(
        &self,
        call: &ReadCall,
        served: &std::collections::BTreeSet<String>,
        released: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<SegmentEntry>, StoreError> {
        let mut snapshot = self.view.snapshot();
        if snapshot.taken.is_none() || released.iter().any(|k| !snapshot.contains(k)) {
            snapshot = self.view.refresh_now().await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        {
            let mut filters = self.filters.lock();
            if filters.len() > snapshot.entries.len() {
                filters.retain(|k, _| snapshot.contains(k));
            }
        }
        let time = call.time();
        // A trace lookup reads only the segments whose trace-id filter may hold one of its ids.
        let ids: &[Vec<u8>] = match call {
            ReadCall::Trace { trace_id } => std::slice::from_ref(trace_id),
            ReadCall::Traces { trace_ids } => trace_ids,
            _ => &[],
        };
        let may_hold = |e: &SegmentEntry| {
            ids.is_empty()
                || match e.trace_filter.as_deref().and_then(|f| self.filter(&e.key, f)) {
                    Some(filter) => ids.iter().any(|id| filter.may_contain(id)),
                    None => true,
                }
        };
        Ok(snapshot
            .entries
            .iter()
            .filter(|e| call.signals().contains(&e.signal))
            .filter(|e| time.overlaps(e.min_time_ns, e.max_time_ns))
            .filter(|e| !served.contains(&e.key))
            .filter(|e| may_hold(e))
            .cloned()
            .collect())
    }

    /// The decoded trace filter of segment `key` (decoded once, kept while the segment is listed).
    fn filter(&self, key: &str, text: &str) -> Option<Arc<TraceFilter>> {
        let mut filters = self.filters.lock();
        if let Some(f) = filters.get(key) {
            return f.clone();
        }
        let decoded = TraceFilter::decode(text).map(Arc::new);
        if decoded.is_none() {
            tracing::warn!(key, "unreadable trace filter; the segment is read for every trace lookup");
        }
        filters.insert(key.to_string(), decoded.clone());
        decoded
    }

    /// Opens (or reuses) the downloaded segments.
    fn open(&self, pinned: &[(SegmentEntry, PinnedSegment)]) -> Result<Vec<Arc<OpenSegment>>, StoreError> {
        let mut opened = self.opened.lock();
        opened.retain(|key, _| self.cache.contains(key));
        pinned
            .iter()
            .map(|(e, p)| match opened.get(&e.key) {
                Some(s) => Ok(s.clone()),
                None => {
                    let s = OpenSegment::open(e.signal, p, e.min_time_ns, e.max_time_ns, e.items)?;
                    opened.insert(e.key.clone(), s.clone());
                    Ok(s)
                }
            })
            .collect()
    }

    fn stats(&self) -> StoreStats {
        let snapshot = self.view.snapshot();
        let mut stats = StoreStats::default();
        for signal in obsbox_storage::Signal::ALL {
            let of = snapshot.entries.iter().filter(|e| e.signal == signal);
            stats.index_bytes.push((signal, of.clone().map(|e| e.bytes).sum()));
            stats.segments.push((signal, of.count() as u64));
        }
        stats
    }
}

impl Answer for ClusterReader {
    fn answer(&self, call: &ReadCall) -> Result<ReadResult, StoreError> {
        call.check()?;
        if matches!(call, ReadCall::Stats) {
            return Ok(ReadResult::Stats(self.stats()));
        }
        let (pinned, ingesters) = self.rt.block_on(async {
            let clients = self.ingesters.clients.read().clone();
            let ingesters = match ask_all(&clients, call).await {
                Ok(parts) => parts,
                // An ingester that stopped (its heartbeat is gone) or one that moved: read the
                // list again and retry once; one that is only silent stays until node_timeout.
                Err(InternalError::Failed { .. }) if self.ingesters.refresh(&self.view).await => {
                    let clients = self.ingesters.clients.read().clone();
                    ask_all(&clients, call).await.map_err(StoreError::from)?
                }
                Err(e) => return Err(StoreError::from(e)),
            };
            let entries = self.entries(call, &ingesters.served, &ingesters.released).await?;
            let pinned: Vec<(SegmentEntry, PinnedSegment)> = futures::stream::iter(entries)
                .map(|e| async move {
                    let p = self.cache.get(&e).await?;
                    Ok::<_, crate::ClusterError>((e, p))
                })
                .buffer_unordered(FETCH_CONCURRENCY)
                .try_collect()
                .await
                .map_err(|e| StoreError::Unavailable(format!("fetching segments: {e}")))?;
            Ok::<_, StoreError>((pinned, ingesters))
        })?;
        let set = SegmentSet::new(self.open(&pinned)?);
        let mut parts = Vec::with_capacity(1 + ingesters.parts.len());
        parts.push(run(&set, call)?);
        parts.extend(ingesters.parts);
        drop(pinned);
        merge(call, parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metastore::NodeInfo;

    #[tokio::test]
    async fn clients_of_ingesters_that_left_are_forgotten() {
        let metastore = Metastore::new(Arc::new(object_store::memory::InMemory::new()), "t");
        let node = |n: u32| NodeInfo {
            node_id: format!("ingester-{n}"),
            role: "ingester".into(),
            url: format!("http://127.0.0.1:{}", 9000 + n),
            updated_ms: 0,
        };
        for n in 1..=2 {
            metastore.heartbeat(&node(n)).await.unwrap();
        }
        let view = MetastoreView::start(metastore.clone(), None, Duration::from_secs(60));
        let settings = SearcherSettings {
            poll_interval: Duration::from_secs(60),
            node_timeout: Duration::from_secs(60),
            call_timeout: Duration::from_secs(1),
            token: None,
        };
        let ingesters =
            Ingesters { clients: RwLock::new(Vec::new()), known: Mutex::new(HashMap::new()), metastore, settings };
        assert!(ingesters.refresh(&view).await);
        assert_eq!(ingesters.known.lock().len(), 2);
        ingesters.metastore.remove_node("ingester", "ingester-1").await.unwrap();
        assert!(ingesters.refresh(&view).await);
        let urls = |m: &HashMap<String, InternalClient>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(urls(&ingesters.known.lock()), vec![node(2).url]);
        assert_eq!(ingesters.clients.read().len(), 1);
        assert!(!ingesters.refresh(&view).await, "nothing changed");
    }
}
