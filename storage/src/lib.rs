//! obsbox's embedded telemetry store.
//!
//! Data flows one way: [`Writer::write`] appends a batch to the write-ahead log and acknowledges it
//! once durable; background indexers then add it to the per-signal indexes, where [`Reader`]
//! finds it.
//!
//! # Where things are
//! - [`api`]: the [`Writer`] / [`Reader`] traits with their contracts, and the query types.
//! - `wal`: the write-ahead log (segmented files, CRC-checked records, group commit).
//! - `segments`: a signal's index as a list of tantivy segments (one active, the rest sealed and
//!   immutable) recorded in a small metastore, with retention by age and size.
//! - `spans` / `logs`: the tantivy schemas and queries of spans and log records.
//! - `read_advice`: the tantivy directory wrapper that makes point reads (docstore blocks, a
//!   few fast-field values) read what they need and not the device's readahead window around
//!   it, while scans keep that readahead (cold trace by id on disks with a large
//!   `read_ahead_kb`).
//! - `queued`: a request's documents handed to tantivy as one batch (so they land in one
//!   tantivy segment), with a cap on the documents queued to its indexing threads.
//! - `trace_filter`: [`TraceFilter`], the Bloom filter of a segment's trace ids, which trace
//!   lookups use to skip tantivy segments here and shipped segments in a cluster.
//! - `envelope`: the stored bytes of one span or log record (a one-item `TracesData` /
//!   `LogsData`), encoded from its group's resource and scope encoded once.
//! - `metrics`: the compressed time-series store for metric points.
//! - [`prometheus`]: the Prometheus view of OTLP metrics (names, units, labels, histograms) and
//!   the name index that maps a Prometheus metric name back to OTLP names.
//! - `disk`: [`DiskStore`], which composes the above and runs the background threads; it lists
//!   its sealed segments ([`DiskStore::sealed_segments`]) and releases them once shipped.
//! - `segment_set`: sealed segments away from their store: [`OpenSegment`] (opened read-only
//!   from a directory or block file), [`SegmentSet`] (a [`Reader`] over them) and
//!   [`merge_segments`].
//! - `reads`: the span and log reads over a snapshot of tantivy segments, shared by readers.
//! - `memory`: [`MemStore`], the in-memory reference implementation.
//! - [`call`]: [`Reader`] calls as data ([`call::ReadCall`], [`call::ReadResult`]), run on one
//!   store and merged over disjoint stores; `federated`: [`FederatedReader`], a reader over
//!   several disjoint readers by that run + merge.
//! - [`testsuite`]: the contract tests every implementation runs.
//! - `format`: the magic number + version header every file of ours starts with.
//! - `space`: free disk space and the refusal of writes when the disk is full.
//! - `quarantine`: damaged files are moved aside (and counted) so that the store still opens.
#![warn(missing_docs)]

pub mod api;
mod attrs;
pub mod call;
mod config;
mod disk;
mod envelope;
mod error;
mod federated;
mod format;
mod logs;
mod memory;
pub(crate) mod metrics;
pub mod prometheus;
mod quarantine;
mod queued;
mod read_advice;
mod reads;
mod segment_set;
mod segments;
mod space;
mod spans;
pub mod testsuite;
mod trace_filter;
mod wal;

pub use api::{
    AttrScope, AttrValue, Batch, LabelMatcher, LogEntry, LogField, LogPredicate, LogQuery, MatchOp, MetricQuery,
    Operation, Reader, Signal, SpanPredicate, SpanQuery, SpanRecord, StoreStats, TimeRange, WriteFuture, WriteReceipt,
    Writer,
};
pub use config::{FsyncPolicy, StoreConfig};
pub use disk::DiskStore;
pub use error::StoreError;
pub use federated::FederatedReader;
pub use memory::MemStore;
pub use trace_filter::TraceFilter;

pub use attrs::{any_value_text, service_name};
pub use memory::log_time;
pub use metrics::point_count as metric_point_count;
pub use segment_set::{OpenSegment, SealedSegment, SegmentSet, merge_segments};
