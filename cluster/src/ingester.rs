//! The ingester's side: ship each sealed local segment to the object store, and tell searchers
//! exactly which local segments answered a read.
//!
//! A sealed segment is uploaded (files, then its metastore entry) and only then released from the
//! local store, so an acknowledged item is always in the WAL, a local segment or a registered
//! one. A crash between registration and release uploads the same segment again under the same
//! key after the restart (idempotent). Reads of the internal read API hold the shipper's gate
//! shared while they list the local segments and run; a release holds it exclusively, so the
//! `served` list a read returns is exactly the set of sealed segments it read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use obsbox_query_ui::internal::{SegmentLists, ServedSegments};
use obsbox_storage::api::{Reader, Signal};
use obsbox_storage::{DiskStore, SealedSegment, StoreError};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{ClusterError, Result};
use crate::metastore::{Metastore, segment_key};
use crate::upload::{LocalSegment, upload_segment};

/// How long a released segment's key is reported in `released`: longer than any searcher's
/// poll interval, so a searcher whose segment list predates the release refreshes it.
const RELEASED_MEMORY: Duration = Duration::from_secs(120);

const SIGNALS: [Signal; 3] = [Signal::Traces, Signal::Logs, Signal::Metrics];

struct State {
    store: Arc<DiskStore>,
    metastore: Metastore,
    node_id: String,
    gate: RwLock<()>,
    released: Mutex<VecDeque<(Instant, String)>>,
}

/// Ships sealed segments every `interval` until stopped.
pub struct Shipper {
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl From<&SealedSegment> for LocalSegment {
    fn from(s: &SealedSegment) -> Self {
        LocalSegment {
            signal: s.signal,
            id: s.id,
            path: s.path.clone(),
            files: s.files.clone(),
            min_time_ns: s.min_time_ns,
            max_time_ns: s.max_time_ns,
            items: s.items,
            bytes: s.bytes,
        }
    }
}

impl Shipper {
    /// Starts shipping `store`'s sealed segments as node `node_id`, checking every `interval`.
    /// Must be called inside a tokio runtime.
    pub fn start(store: Arc<DiskStore>, metastore: Metastore, node_id: &str, interval: Duration) -> Shipper {
        let state = Arc::new(State {
            store,
            metastore,
            node_id: node_id.to_string(),
            gate: RwLock::new(()),
            released: Mutex::new(VecDeque::new()),
        });
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop_rx.wait_for(|s| *s) => return,
                    }
                    if let Err(e) = ship(&state).await {
                        // The segment stays local and keeps being served to searchers; next tick retries.
                        tracing::warn!(error = %e, "cannot ship sealed segments to the object store; retrying");
                    }
                }
            }
        });
        Shipper { state, stop, task: Mutex::new(Some(task)) }
    }

    /// Seals what is active and ships every sealed segment now (an ingester's shutdown): after
    /// `Ok`, everything acknowledged before the call is in the object store.
    pub async fn flush(&self) -> Result<()> {
        let store = self.state.store.clone();
        tokio::task::spawn_blocking(move || store.seal_now()).await.map_err(|_| ClusterError::Task("seal"))??;
        ship(&self.state).await
    }

    /// Stops the background task (a ship in progress finishes first).
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The internal read API's view of the ingester's store: each read runs under the shared side of
/// the gate, with the keys of the sealed local segments it read (`served`) and of those released
/// in the last two minutes (`released`).
impl ServedSegments for Shipper {
    fn read(&self, f: &mut dyn FnMut(&dyn Reader)) -> SegmentLists {
        let st = &self.state;
        let _shared = st.gate.read();
        let served = SIGNALS
            .iter()
            .flat_map(|&s| st.store.sealed_ids(s))
            .map(|(id, min_time_ns)| segment_key(min_time_ns, &st.node_id, id))
            .collect();
        f(&*st.store);
        let released = {
            let mut r = st.released.lock();
            while r.front().is_some_and(|(t, _)| t.elapsed() > RELEASED_MEMORY) {
                r.pop_front();
            }
            r.iter().map(|(_, k)| k.clone()).collect()
        };
        SegmentLists { served, released }
    }
}

/// Uploads and registers every sealed local segment, releasing each once registered.
async fn ship(st: &Arc<State>) -> Result<()> {
    for signal in SIGNALS {
        let store = st.store.clone();
        let sealed = tokio::task::spawn_blocking(move || store.sealed_segments(signal))
            .await
            .map_err(|_| ClusterError::Task("segment listing"))?;
        for segment in sealed {
            let entry = match upload_segment(&st.metastore, &LocalSegment::from(&segment), &st.node_id).await {
                Ok(entry) => entry,
                // Retention deleted it after the listing: nothing left to ship.
                Err(ClusterError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let st2 = st.clone();
            tokio::task::spawn_blocking(move || {
                let _exclusive = st2.gate.write();
                match st2.store.release_segment(signal, segment.id) {
                    // Retention dropped it since the upload; the object store still has it.
                    Err(StoreError::InvalidQuery(_)) if !segment.path.exists() => {}
                    other => other?,
                }
                st2.released.lock().push_back((Instant::now(), entry.key.clone()));
                tracing::debug!(key = %entry.key, bytes = entry.bytes, "segment shipped and released");
                Ok::<_, ClusterError>(())
            })
            .await
            .map_err(|_| ClusterError::Task("segment release"))??;
        }
    }
    Ok(())
}
