//! The compactor: merges small segments into bigger ones and applies retention, over the
//! metastore alone (there is exactly one compactor; running two only wastes work: a merge's
//! inputs are left out of every list once its output is registered).
//!
//! A pass:
//! 1. retention: entries whose newest item is older than `retention` are removed (entry, then files);
//! 2. cleanup: inputs of a merge registered more than `grace` ago are removed, once no searcher
//!    can still be reading them from a list taken before the merge;
//! 3. merge: per signal and hour of their oldest item, live segments smaller than
//!    `target_bytes` and older than `min_age` are merged, at least `min_inputs` and at most
//!    `max_inputs` at a time, into one segment registered with `replaces` naming them.
//!
//! `min_age` keeps the compactor away from segments whose ingester may not have released them
//! yet (an ingester that crashed between registration and release uploads the segment again
//! after its restart, under the same key).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use obsbox_storage::api::Signal;
use obsbox_storage::{OpenSegment, merge_segments};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cache::SegmentCache;
use crate::compaction::{MergePolicy, expired, garbage, merge_id, plan_merges};
use crate::error::{ClusterError, Result};
use crate::metastore::{Metastore, SegmentEntry, live};
use crate::upload::{LocalSegment, upload_segment_replacing};

const SIGNALS: [Signal; 3] = [Signal::Traces, Signal::Logs, Signal::Metrics];

/// What the compactor does and how often.
#[derive(Clone, Debug)]
pub struct CompactorSettings {
    /// Time between passes.
    pub interval: Duration,
    /// Data whose newest item is older than this is deleted.
    pub retention: Duration,
    /// A merge's inputs are deleted this long after its output was registered.
    pub grace: Duration,
    /// Segments registered less than this long ago are not merged.
    pub min_age: Duration,
    /// Which segments are merged together.
    pub policy: MergePolicy,
    /// Where merges are written before upload (emptied at start).
    pub work_dir: PathBuf,
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Entries removed by retention.
    pub expired: usize,
    /// Replaced entries removed after the grace period.
    pub collected: usize,
    /// Merges registered.
    pub merges: usize,
    /// Segments those merges replaced.
    pub merged_inputs: usize,
}

struct State {
    /// One pass at a time: `run_once` and the timer share the work directory and the merge keys.
    passing: tokio::sync::Mutex<()>,
    metastore: Metastore,
    cache: SegmentCache,
    node_id: String,
    settings: CompactorSettings,
}

/// The compactor's background task.
pub struct Compactor {
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Compactor {
    /// Starts passes every `settings.interval`, the first at once, as node `node_id`, reading
    /// inputs through `cache`. Must be called inside a tokio runtime.
    pub fn start(metastore: Metastore, cache: SegmentCache, node_id: &str, settings: CompactorSettings) -> Compactor {
        let _ = std::fs::remove_dir_all(&settings.work_dir);
        let state = Arc::new(State {
            passing: tokio::sync::Mutex::new(()),
            metastore,
            cache,
            node_id: node_id.to_string(),
            settings,
        });
        let (stop, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                let mut tick = tokio::time::interval(state.settings.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop_rx.wait_for(|s| *s) => return,
                    }
                    match pass(&state).await {
                        Ok(r) if r != PassReport::default() => tracing::info!(?r, "compaction pass"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "compaction pass failed; retrying next interval"),
                    }
                }
            }
        });
        Compactor { state, stop, task: Mutex::new(Some(task)) }
    }

    /// Runs one pass now (tests, and an operator's `compact` command).
    pub async fn run_once(&self) -> Result<PassReport> {
        pass(&self.state).await
    }

    /// Stops the background task after the pass in progress.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn pass(st: &Arc<State>) -> Result<PassReport> {
    let _one_at_a_time = st.passing.lock().await;
    let mut report = PassReport::default();
    let s = &st.settings;
    let now = now_ms();
    // One listing per pass; removals are applied to it rather than listing again.
    let mut all = st.metastore.list_all(None).await?;
    let cutoff_ns = (now.saturating_sub(s.retention.as_millis() as u64)).saturating_mul(1_000_000);
    let mut removed = HashSet::new();
    for e in expired(&all, cutoff_ns).into_iter().chain(garbage(&all, now, s.grace)) {
        if !removed.insert(e.key.clone()) {
            continue;
        }
        st.metastore.remove(&e).await?;
        if e.max_time_ns < cutoff_ns {
            report.expired += 1;
        } else {
            report.collected += 1;
        }
    }
    all.retain(|e| !removed.contains(&e.key));
    let old_enough = now.saturating_sub(s.min_age.as_millis() as u64);
    let live: Vec<SegmentEntry> = live(&all).into_iter().filter(|e| e.created_ms <= old_enough).collect();
    for signal in SIGNALS {
        for group in plan_merges(&live, signal, &s.policy) {
            merge_group(st, signal, &group).await?;
            report.merges += 1;
            report.merged_inputs += group.len();
        }
    }
    Ok(report)
}

/// Downloads `group`, merges it into one segment and registers that as replacing the group.
async fn merge_group(st: &Arc<State>, signal: Signal, group: &[SegmentEntry]) -> Result<SegmentEntry> {
    let mut pinned = Vec::with_capacity(group.len());
    for e in group {
        pinned.push(st.cache.get(e).await?);
    }
    let id = merge_id(group);
    let dir = st.settings.work_dir.join(format!("{}-{id:016x}", signal.as_str()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| ClusterError::io("create merge directory", &dir, e))?;
    let out = match signal {
        Signal::Metrics => dir.join(format!("block-merged-{id:016x}.obm")),
        _ => dir.join("segment"),
    };
    let inputs: Vec<(PathBuf, SegmentEntry)> =
        pinned.iter().zip(group).map(|(p, e)| (p.to_path_buf(), e.clone())).collect();
    let out2 = out.clone();
    let sealed = tokio::task::spawn_blocking(move || {
        let opened = inputs
            .iter()
            .map(|(path, e)| OpenSegment::open(signal, path, e.min_time_ns, e.max_time_ns, e.items))
            .collect::<Result<Vec<_>, _>>()?;
        merge_segments(signal, &opened, &out2)
    })
    .await
    .map_err(|_| ClusterError::Task("merge"))??;
    drop(pinned);
    let mut local = LocalSegment::from(&sealed);
    local.id = id;
    let keys = group.iter().map(|e| e.key.clone()).collect();
    let entry = upload_segment_replacing(&st.metastore, &local, &st.node_id, keys).await;
    let _ = std::fs::remove_dir_all(&dir);
    entry
}
