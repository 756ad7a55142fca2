//! Background tasks over the metastore: a searcher's polled view of the segment list
//! ([`MetastoreView`]) and a node's heartbeat ([`Heartbeat`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use obsbox_storage::api::Signal;
use parking_lot::RwLock;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::error::Result;
use crate::metastore::{Metastore, NodeInfo, SegmentEntry};

/// The segment list as of one `list`.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Live entries (replaced ones left out), sorted by key.
    pub entries: Vec<SegmentEntry>,
    /// When the list was taken; `None` before the first successful one.
    pub taken: Option<Instant>,
}

impl Snapshot {
    /// Entries of `signal` whose time range overlaps `[start_ns, end_ns]`.
    pub fn overlapping(&self, signal: Signal, start_ns: u64, end_ns: u64) -> impl Iterator<Item = &SegmentEntry> {
        self.entries.iter().filter(move |e| e.signal == signal && e.max_time_ns >= start_ns && e.min_time_ns <= end_ns)
    }

    /// Whether an entry with this key is in the snapshot.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.binary_search_by(|e| e.key.as_str().cmp(key)).is_ok()
    }
}

struct ViewShared {
    metastore: Metastore,
    signal: Option<Signal>,
    snapshot: RwLock<Arc<Snapshot>>,
    /// Serialises refreshes: a `refresh_now` waits for one that is running, then lists again.
    refreshing: tokio::sync::Mutex<()>,
}

impl ViewShared {
    async fn refresh(&self) -> Result<Arc<Snapshot>> {
        let _one_at_a_time = self.refreshing.lock().await;
        let entries = self.metastore.list(self.signal).await?;
        let snap = Arc::new(Snapshot { entries, taken: Some(Instant::now()) });
        *self.snapshot.write() = snap.clone();
        Ok(snap)
    }
}

/// The metastore's segment list, refreshed every `poll_interval` by a background task (stopped
/// when the view is dropped). Reading it ([`MetastoreView::snapshot`]) is a pointer copy.
pub struct MetastoreView {
    shared: Arc<ViewShared>,
    task: JoinHandle<()>,
}

impl MetastoreView {
    /// Starts polling `signal`'s entries (all signals when `None`); the first list runs at once.
    /// A failed list is logged and the previous snapshot kept. Must be called within a tokio runtime.
    pub fn start(metastore: Metastore, signal: Option<Signal>, poll_interval: Duration) -> Self {
        let shared = Arc::new(ViewShared {
            metastore,
            signal,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            refreshing: tokio::sync::Mutex::new(()),
        });
        let poller = shared.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(error) = poller.refresh().await {
                    warn!(%error, "cannot refresh the segment list");
                }
            }
        });
        MetastoreView { shared, task }
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.read().clone()
    }

    /// Lists now (after a refresh already running, if any) and returns the new snapshot.
    pub async fn refresh_now(&self) -> Result<Arc<Snapshot>> {
        self.shared.refresh().await
    }
}

impl std::fmt::Debug for MetastoreView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let snap = self.snapshot();
        f.debug_struct("MetastoreView")
            .field("signal", &self.shared.signal)
            .field("entries", &snap.entries.len())
            .finish()
    }
}

impl Drop for MetastoreView {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes a node's heartbeat every `interval` in a background task; stopped when dropped.
#[derive(Debug)]
pub struct Heartbeat {
    metastore: Metastore,
    node: NodeInfo,
    task: JoinHandle<()>,
    /// Ends the beating between two beats, never during one (see [`Heartbeat::stop`]).
    quit: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Heartbeat {
    /// Starts the heartbeat; the first one is written at once. Failures are logged and retried at
    /// the next beat. Readers should treat a node as gone after a few missed beats
    /// ([`Metastore::live_nodes`] with `max_age` = 3 × `interval`, say).
    pub fn start(metastore: Metastore, node: NodeInfo, interval: Duration) -> Self {
        let (m, n) = (metastore.clone(), node.clone());
        let (quit, mut quitting) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut quitting => return,
                }
                if let Err(error) = m.heartbeat(&n).await {
                    warn!(%error, node_id = %n.node_id, "cannot write the node heartbeat");
                }
            }
        });
        Heartbeat { metastore, node, task, quit: Some(quit) }
    }

    /// Stops beating and deletes the heartbeat, so other nodes stop using this one at once.
    ///
    /// A beat under way is finished first: aborted instead, its write could already be on its
    /// way to the object store and land after the delete, leaving the node listed as live until
    /// the heartbeat ages out. The delete is tried a few times, since the object store may be
    /// briefly unavailable (a node restarting).
    pub async fn stop(mut self) -> Result<()> {
        if let Some(quit) = self.quit.take() {
            let _ = quit.send(());
        }
        let _ = (&mut self.task).await;
        let mut attempt = 0;
        loop {
            match self.metastore.remove_node(&self.node.role, &self.node.node_id).await {
                Err(e) if attempt < 3 => {
                    warn!(error = %e, node_id = %self.node.node_id, "cannot delete the node heartbeat; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                result => return result,
            }
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metastore::{ENTRY_FORMAT, SegmentFile, segment_key};
    use object_store::memory::InMemory;

    fn entry(min: u64, id: u64) -> SegmentEntry {
        SegmentEntry {
            key: segment_key(min, "n1", id),
            signal: Signal::Logs,
            node_id: "n1".into(),
            min_time_ns: min,
            max_time_ns: min + 100,
            items: 1,
            bytes: 1,
            files: vec![SegmentFile { name: "f".into(), bytes: 1 }],
            created_ms: 0,
            replaces: vec![],
            trace_filter: None,
            format: ENTRY_FORMAT,
        }
    }

    #[tokio::test]
    async fn view_polls_and_refreshes() {
        let m = Metastore::new(Arc::new(InMemory::new()), "");
        m.register(&entry(1000, 1)).await.unwrap();
        let view = MetastoreView::start(m.clone(), Some(Signal::Logs), Duration::from_millis(50));
        let snap = view.refresh_now().await.unwrap();
        assert_eq!(snap.entries.len(), 1);
        assert!(snap.contains(&entry(1000, 1).key));
        assert_eq!(snap.overlapping(Signal::Logs, 0, 999).count(), 0);
        assert_eq!(snap.overlapping(Signal::Logs, 1050, 5000).count(), 1);
        assert_eq!(snap.overlapping(Signal::Traces, 0, u64::MAX).count(), 0);

        m.register(&entry(2000, 2)).await.unwrap();
        // The poller picks it up by itself.
        let deadline = Instant::now() + Duration::from_secs(5);
        while view.snapshot().entries.len() < 2 {
            assert!(Instant::now() < deadline, "the poller never saw the new entry");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // refresh_now sees a write made just before it.
        m.register(&entry(3000, 3)).await.unwrap();
        assert_eq!(view.refresh_now().await.unwrap().entries.len(), 3);
        assert_eq!(view.snapshot().entries.len(), 3);
    }

    /// An object store whose writes land `delay` after they are made, whether or not the caller
    /// still waits for them: a request already on its way.
    #[derive(Debug)]
    struct LateWrites {
        inner: Arc<InMemory>,
        delay: Duration,
    }

    impl std::fmt::Display for LateWrites {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "LateWrites({})", self.inner)
        }
    }

    #[async_trait::async_trait]
    impl object_store::ObjectStore for LateWrites {
        async fn put_opts(
            &self,
            location: &object_store::path::Path,
            payload: object_store::PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            let (inner, location, delay) = (self.inner.clone(), location.clone(), self.delay);
            let write = tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                inner.put_opts(&location, payload, opts).await
            });
            write.await.expect("write task")
        }

        async fn put_multipart_opts(
            &self,
            location: &object_store::path::Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &object_store::path::Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &object_store::path::Path,
            to: &object_store::path::Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn a_stopped_heartbeat_stays_deleted_when_a_beat_was_under_way() {
        let inner = Arc::new(InMemory::new());
        let m = Metastore::new(Arc::new(LateWrites { inner, delay: Duration::from_millis(200) }), "p");
        let node = NodeInfo { node_id: "ing-1".into(), role: "ingester".into(), url: "http://x".into(), updated_ms: 0 };
        // The first beat starts at once and is still on its way when the heartbeat stops.
        let hb = Heartbeat::start(m.clone(), node, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
        hb.stop().await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(m.live_nodes("ingester", Duration::from_secs(60)).await.unwrap().is_empty(), "listed after its stop");
    }

    #[tokio::test]
    async fn heartbeat_beats_and_stops() {
        let m = Metastore::new(Arc::new(InMemory::new()), "p");
        let node = NodeInfo { node_id: "ing-1".into(), role: "ingester".into(), url: "http://x".into(), updated_ms: 0 };
        let hb = Heartbeat::start(m.clone(), node, Duration::from_millis(20));
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = loop {
            if let Some(n) = m.live_nodes("ingester", Duration::from_secs(5)).await.unwrap().pop() {
                break n.updated_ms;
            }
            assert!(Instant::now() < deadline, "no heartbeat");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        loop {
            let n = m.live_nodes("ingester", Duration::from_secs(5)).await.unwrap().pop().unwrap();
            if n.updated_ms > first {
                break;
            }
            assert!(Instant::now() < deadline, "heartbeat not renewed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        hb.stop().await.unwrap();
        assert!(m.live_nodes("ingester", Duration::from_secs(5)).await.unwrap().is_empty());
    }
}
