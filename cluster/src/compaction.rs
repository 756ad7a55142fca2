//! The compactor's decisions over metastore entries, as pure functions: which small segments to
//! merge, which replaced entries may go, which entries retention drops. The compactor itself (merge
//! with the store's `merge_segments`, upload with [`crate::upload_segment_replacing`], delete with
//! [`crate::Metastore::remove`]) is composed by the binary.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use obsbox_storage::api::Signal;

use crate::metastore::SegmentEntry;

/// Limits of one merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergePolicy {
    /// Segments smaller than this are merge candidates.
    pub small_bytes: u64,
    /// At most this many inputs per merge.
    pub max_inputs: usize,
    /// A merge's inputs add up to at most this.
    pub max_output_bytes: u64,
}

impl Default for MergePolicy {
    fn default() -> Self {
        MergePolicy { small_bytes: 64 << 20, max_inputs: 10, max_output_bytes: 256 << 20 }
    }
}

/// Groups of live `signal` segments to merge, each of 2 to `max_inputs` small segments taken in key
/// (time) order, oldest first; a lone leftover waits for the next round. `live` is
/// [`crate::Metastore::list`]'s answer.
pub fn plan_merges(live: &[SegmentEntry], signal: Signal, policy: &MergePolicy) -> Vec<Vec<SegmentEntry>> {
    let mut small: Vec<&SegmentEntry> =
        live.iter().filter(|e| e.signal == signal && e.bytes < policy.small_bytes).collect();
    small.sort_by(|a, b| a.key.cmp(&b.key));
    let mut groups = Vec::new();
    let mut current: Vec<SegmentEntry> = Vec::new();
    let mut bytes = 0u64;
    for e in small {
        if !current.is_empty() && (current.len() >= policy.max_inputs || bytes + e.bytes > policy.max_output_bytes) {
            groups.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += e.bytes;
        current.push(e.clone());
    }
    groups.push(current);
    groups.retain(|g| g.len() >= 2);
    groups
}

/// A local id for the merge of `inputs` that depends only on their keys, so a compactor that
/// crashes and merges the same inputs again uploads under the same key (FNV-1a of the sorted keys).
pub fn merge_id(inputs: &[SegmentEntry]) -> u64 {
    let mut keys: Vec<&str> = inputs.iter().map(|e| e.key.as_str()).collect();
    keys.sort_unstable();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for k in keys {
        for b in k.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Entries (from [`crate::Metastore::list_all`]) replaced by a visible entry created at least
/// `grace` before `now_ms`: no searcher still reads them, so they can be removed. `grace` must be
/// longer than a searcher's poll interval plus the longest query.
pub fn garbage(all: &[SegmentEntry], now_ms: u64, grace: Duration) -> Vec<SegmentEntry> {
    let cutoff = now_ms.saturating_sub(grace.as_millis() as u64);
    let old_replaced: HashSet<&str> =
        all.iter().filter(|e| e.created_ms <= cutoff).flat_map(|e| e.replaces.iter().map(String::as_str)).collect();
    all.iter().filter(|e| old_replaced.contains(e.key.as_str())).cloned().collect()
}

/// Entries (from [`crate::Metastore::list_all`]) whose data ends before `cutoff_ns`, in the order
/// to remove them: an entry after every entry it replaces, so removing one never makes replaced
/// data visible again.
pub fn expired(all: &[SegmentEntry], cutoff_ns: u64) -> Vec<SegmentEntry> {
    let by_key: HashMap<&str, &SegmentEntry> = all.iter().map(|e| (e.key.as_str(), e)).collect();
    let mut out: Vec<&SegmentEntry> = all.iter().filter(|e| e.max_time_ns < cutoff_ns).collect();
    // Height in the replacement tree: an entry sorts after everything it replaces.
    fn depth(e: &SegmentEntry, by_key: &HashMap<&str, &SegmentEntry>, budget: usize) -> usize {
        if budget == 0 {
            return 0;
        }
        e.replaces
            .iter()
            .filter_map(|k| by_key.get(k.as_str()))
            .map(|r| 1 + depth(r, by_key, budget - 1))
            .max()
            .unwrap_or(0)
    }
    out.sort_by_key(|e| (depth(e, &by_key, 16), e.key.clone()));
    out.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metastore::{ENTRY_FORMAT, SegmentFile, segment_key};

    fn e(id: u64, bytes: u64) -> SegmentEntry {
        SegmentEntry {
            key: segment_key(id * 100, "n1", id),
            signal: Signal::Logs,
            node_id: "n1".into(),
            min_time_ns: id * 100,
            max_time_ns: id * 100 + 50,
            items: 1,
            bytes,
            files: vec![SegmentFile { name: "f".into(), bytes }],
            created_ms: 0,
            replaces: vec![],
            trace_filter: None,
            format: ENTRY_FORMAT,
        }
    }

    #[test]
    fn merges_small_neighbours_within_limits() {
        let policy = MergePolicy { small_bytes: 100, max_inputs: 3, max_output_bytes: 100 };
        let sizes = [(1, 10), (2, 10), (3, 500), (4, 10), (5, 10), (6, 60), (7, 90), (8, 5), (9, 150), (10, 99)];
        let live: Vec<SegmentEntry> = sizes.iter().map(|&(id, bytes)| e(id, bytes)).collect();
        let groups = plan_merges(&live, Signal::Logs, &policy);
        let ids: Vec<Vec<u64>> = groups.iter().map(|g| g.iter().map(|x| x.min_time_ns / 100).collect()).collect();
        // Big ones are no candidates; 3 inputs at most; 100 bytes at most; a lone leftover waits.
        assert_eq!(ids, vec![vec![1, 2, 4], vec![5, 6], vec![7, 8]]);
        assert!(plan_merges(&live, Signal::Traces, &policy).is_empty());
    }

    #[test]
    fn merge_id_depends_only_on_the_inputs() {
        let (a, b, c) = (e(1, 1), e(2, 1), e(3, 1));
        assert_eq!(merge_id(&[a.clone(), b.clone()]), merge_id(&[b.clone(), a.clone()]));
        assert_ne!(merge_id(&[a.clone(), b.clone()]), merge_id(&[a, c]));
    }

    #[test]
    fn replaced_entries_are_garbage_after_the_grace_period() {
        let (a, b) = (e(1, 1), e(2, 1));
        let mut merged = e(3, 2);
        merged.replaces = vec![a.key.clone(), b.key.clone()];
        merged.created_ms = 10_000;
        let all = vec![a.clone(), b.clone(), merged.clone()];
        assert!(garbage(&all, 10_000 + 59_000, Duration::from_secs(60)).is_empty());
        assert_eq!(garbage(&all, 10_000 + 60_000, Duration::from_secs(60)), vec![a, b]);
    }

    #[test]
    fn expired_inputs_go_before_what_replaces_them() {
        let (a, b, live) = (e(1, 1), e(2, 1), e(50, 1));
        let mut merged = e(0, 2);
        merged.max_time_ns = 250;
        merged.replaces = vec![a.key.clone(), b.key.clone()];
        let all = vec![merged.clone(), a.clone(), b.clone(), live];
        let out: Vec<String> = expired(&all, 1000).into_iter().map(|x| x.key).collect();
        assert_eq!(out, vec![a.key, b.key, merged.key]);
    }
}
