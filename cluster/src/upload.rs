//! Uploading a sealed local segment: its files, then its metastore entry.

use std::path::{Path as FsPath, PathBuf};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use obsbox_storage::api::Signal;
use obsbox_storage::{OpenSegment, TraceFilter};
use tokio::io::AsyncReadExt;

use crate::error::{ClusterError, Result};
use crate::metastore::{ENTRY_FORMAT, Metastore, SegmentEntry, SegmentFile, check_name, now_ms, segment_key};

/// Files of one segment uploaded at once.
const FILE_CONCURRENCY: usize = 8;

/// Files up to this size go in one PUT; larger ones by multipart upload in parts of this size.
pub const MULTIPART_PART_BYTES: usize = 8 << 20;

/// A sealed segment on local disk, as the store describes it (the fields of
/// `obsbox_storage::SealedSegment`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSegment {
    /// The signal it holds.
    pub signal: Signal,
    /// Local id, unique within the node's store and signal.
    pub id: u64,
    /// Traces/logs: the index directory; metrics: the block file.
    pub path: PathBuf,
    /// File names relative to `path` (metrics: the file's own name) and sizes.
    pub files: Vec<(String, u64)>,
    /// Earliest item time.
    pub min_time_ns: u64,
    /// Latest item time.
    pub max_time_ns: u64,
    /// Number of items.
    pub items: u64,
    /// Total size.
    pub bytes: u64,
}

impl LocalSegment {
    fn file_path(&self, name: &str) -> PathBuf {
        if self.path.is_dir() { self.path.join(name) } else { self.path.with_file_name(name) }
    }
}

/// Uploads `segment`'s files, then registers its entry (key [`segment_key`]`(min_time_ns, node_id, id)`),
/// and returns the entry. Large files go by multipart upload. Idempotent: after a crash or an
/// error, calling it again for the same segment writes the same objects under the same key. The
/// file sizes are checked against `segment.files` before anything is registered.
pub async fn upload_segment(metastore: &Metastore, segment: &LocalSegment, node_id: &str) -> Result<SegmentEntry> {
    upload_segment_replacing(metastore, segment, node_id, Vec::new()).await
}

/// [`upload_segment`] for a compaction's output: the entry's `replaces` names the inputs.
pub async fn upload_segment_replacing(
    metastore: &Metastore,
    segment: &LocalSegment,
    node_id: &str,
    replaces: Vec<String>,
) -> Result<SegmentEntry> {
    check_name("node id", node_id)?;
    let key = segment_key(segment.min_time_ns, node_id, segment.id);
    for (name, _) in &segment.files {
        check_name("segment file name", name)?;
    }
    // A tantivy segment is many small files: send several at once, as one PUT each is mostly
    // waiting (one at a time: 15-21 MB/s against Garage on loopback, BENCHMARKS.md).
    let uploads: Vec<_> = segment
        .files
        .iter()
        .map(|(name, bytes)| {
            (segment.file_path(name), metastore.file_path(segment.signal, &key, name), *bytes, key.clone())
        })
        .collect();
    futures::stream::iter(uploads)
        .map(|(local, remote, bytes, key)| {
            let metastore = metastore.clone();
            async move { upload_file(&metastore, &local, &remote, bytes, &key).await }
        })
        .buffer_unordered(FILE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let trace_filter = match segment.signal {
        // Without a filter searchers read the segment for every trace lookup: slower, still right.
        Signal::Traces => match trace_filter(segment).await {
            Ok(filter) => Some(filter),
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot read the segment's trace ids; shipping it without a trace filter");
                None
            }
        },
        _ => None,
    };
    let entry = SegmentEntry {
        key,
        signal: segment.signal,
        node_id: node_id.to_string(),
        min_time_ns: segment.min_time_ns,
        max_time_ns: segment.max_time_ns,
        items: segment.items,
        bytes: segment.files.iter().map(|(_, b)| b).sum(),
        files: segment.files.iter().map(|(name, bytes)| SegmentFile { name: name.clone(), bytes: *bytes }).collect(),
        created_ms: now_ms(),
        replaces,
        trace_filter,
        format: ENTRY_FORMAT,
    };
    metastore.register(&entry).await?;
    Ok(entry)
}

/// The [`TraceFilter`] of a traces segment, read from its index (opened read-only).
async fn trace_filter(segment: &LocalSegment) -> Result<String> {
    let s = segment.clone();
    tokio::task::spawn_blocking(move || {
        let open = OpenSegment::open(s.signal, &s.path, s.min_time_ns, s.max_time_ns, s.items)?;
        let ids = open.trace_ids()?;
        Ok(TraceFilter::build(ids.iter().map(Vec::as_slice)).encode())
    })
    .await
    .map_err(|_| ClusterError::Task("trace filter"))?
}

async fn upload_file(
    metastore: &Metastore,
    local: &FsPath,
    remote: &object_store::path::Path,
    expected: u64,
    key: &str,
) -> Result<()> {
    let mut file = tokio::fs::File::open(local).await.map_err(|e| ClusterError::io("open segment file", local, e))?;
    let len = file.metadata().await.map_err(|e| ClusterError::io("stat segment file", local, e))?.len();
    if len != expected {
        return Err(ClusterError::Mismatch {
            key: key.to_string(),
            message: format!("{} is {len} bytes, the segment says {expected}", local.display()),
        });
    }
    let store = metastore.store();
    if len <= MULTIPART_PART_BYTES as u64 {
        let mut buf = Vec::with_capacity(len as usize);
        file.read_to_end(&mut buf).await.map_err(|e| ClusterError::io("read segment file", local, e))?;
        check_len(key, local, buf.len() as u64, expected)?;
        store.put(remote, PutPayload::from(buf)).await?;
        return Ok(());
    }
    let upload = store.put_multipart(remote).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART_BYTES);
    let mut sent = 0u64;
    let result: Result<()> = async {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await.map_err(|e| ClusterError::io("read segment file", local, e))?;
            if n == 0 {
                break;
            }
            // At most two parts in flight: bounded memory whatever the file size.
            writer.wait_for_capacity(2).await?;
            writer.write(&buf[..n]);
            sent += n as u64;
        }
        check_len(key, local, sent, expected)
    }
    .await;
    match result {
        Ok(()) => {
            writer.finish().await?;
            Ok(())
        }
        Err(e) => {
            // Best effort: a leftover incomplete upload costs space until the bucket's lifecycle rule
            // (or the next attempt, which writes the same key) clears it.
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

fn check_len(key: &str, local: &FsPath, got: u64, expected: u64) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(ClusterError::Mismatch {
            key: key.to_string(),
            message: format!("{} changed while uploading: read {got} bytes, expected {expected}", local.display()),
        })
    }
}
