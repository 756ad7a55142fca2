//! The store's configuration.

use std::path::PathBuf;
use std::time::Duration;

/// When the write-ahead log is fsynced relative to the acknowledgement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Group commit: concurrent writes share one `fdatasync`, and every write is acknowledged
    /// only after the fsync that covers it. Nothing acknowledged is lost on a crash or power loss.
    #[default]
    Group,
    /// Acknowledge after `write(2)` and fsync in the background every `fsync_interval`: survives
    /// a process crash (`kill -9`), loses up to one interval on power loss.
    Interval,
}

/// Store settings. Validated by [`StoreConfig::validate`] before the store opens.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory holding the WAL, indexes and metastore.
    pub data_dir: PathBuf,
    /// fsync policy of the write-ahead log.
    pub fsync: FsyncPolicy,
    /// With [`FsyncPolicy::Interval`]: time between background fsyncs.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Time between index commits; bounds the delay from acknowledgement to searchable.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Data older than this is deleted (whole segments at a time).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// When the store exceeds this many bytes on disk, the oldest segments are deleted. 0: no limit.
    pub max_disk_bytes: u64,
    /// Bytes of acknowledged-but-not-yet-indexed data held in memory before writes are refused.
    pub max_pending_bytes: u64,
    /// Memory budget of each tantivy index writer (shared by its two indexing threads). At 32 MiB
    /// a thread fills its share before the 1 s commit at full span load and flushes small
    /// segments (ingest -25% on 2 cores); 128 MiB gained nothing over 48 (BENCHMARKS.md).
    pub index_memory_bytes: u64,
    /// An active segment is sealed once it covers this much time.
    #[serde(with = "humantime_serde")]
    pub segment_max_age: Duration,
    /// An active segment is sealed once it holds this many documents.
    pub segment_max_docs: u64,
    /// Writes are refused (retryably) while the data directory's file system has less than this
    /// many bytes free, so that commits, merges and metastore rewrites of data already
    /// acknowledged still have room. 0: refuse only when a write fails with `ENOSPC`.
    pub min_free_bytes: u64,
    /// A WAL file is closed and a new one started at this size.
    pub wal_file_bytes: u64,
    /// Memory for the trace-id filters of each of the span and log indexes (a Bloom filter per
    /// large index segment, 10 bits per trace id, ~1.25 B per trace and segment), with which a
    /// trace lookup skips the segments that cannot hold the trace. Newest segments first; the
    /// older ones of a store past the budget go without and are searched. 0: no filters.
    pub trace_filter_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("./data"),
            fsync: FsyncPolicy::Group,
            fsync_interval: Duration::from_millis(100),
            commit_interval: Duration::from_secs(1),
            retention: Duration::from_secs(7 * 24 * 3600),
            max_disk_bytes: 0,
            max_pending_bytes: 16 << 20,
            index_memory_bytes: 48 << 20,
            segment_max_age: Duration::from_secs(3600),
            segment_max_docs: 10_000_000,
            wal_file_bytes: 64 << 20,
            min_free_bytes: 256 << 20,
            trace_filter_bytes: 64 << 20,
        }
    }
}

impl StoreConfig {
    /// Checks value ranges; the error names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if self.commit_interval.is_zero() || self.commit_interval > Duration::from_secs(2) {
            return Err("storage.commit_interval must be between 1ms and 2s (the searchable-after-ack bound)".into());
        }
        if self.fsync == FsyncPolicy::Interval && self.fsync_interval.is_zero() {
            return Err("storage.fsync_interval must be positive".into());
        }
        if self.retention < Duration::from_secs(60) {
            return Err("storage.retention must be at least 1m".into());
        }
        if self.max_pending_bytes < 1 << 20 {
            return Err("storage.max_pending_bytes must be at least 1 MiB".into());
        }
        if self.index_memory_bytes < 32 << 20 {
            return Err(
                "storage.index_memory_bytes must be at least 32 MiB (two indexing threads, 15 MB each at least)".into(),
            );
        }
        if self.segment_max_docs == 0 || self.segment_max_age.is_zero() {
            return Err("storage.segment_max_docs and storage.segment_max_age must be positive".into());
        }
        if self.wal_file_bytes < 1 << 20 {
            return Err("storage.wal_file_bytes must be at least 1 MiB".into());
        }
        Ok(())
    }
}
