//! obsbox on object storage: where segments live when obsbox runs as ingesters, searchers and a
//! compactor over an S3-compatible bucket (Garage, MinIO, AWS S3) or a local directory.
//!
//! Ingesters [`upload_segment`] each sealed segment (files first, then its metastore entry);
//! searchers follow the segment list with a [`MetastoreView`] and fetch what a query needs into a
//! bounded [`SegmentCache`]; the compactor uploads merged segments with
//! [`upload_segment_replacing`] and later [`Metastore::remove`]s the inputs. Every node writes a
//! [`Heartbeat`]; searchers find ingesters with [`Metastore::live_nodes`].
//!
//! # Where things are
//! - `config`: [`ObjectStoreConfig`] (the `[object_store]` config section) and [`open_store`].
//! - `metastore`: [`Metastore`], [`SegmentEntry`], [`NodeInfo`]: the object layout and why no
//!   conditional writes are needed.
//! - `upload`: [`LocalSegment`] (a sealed local segment) and [`upload_segment`].
//! - `cache`: [`SegmentCache`] and [`PinnedSegment`].
//! - `view`: [`MetastoreView`] (the polled segment list) and [`Heartbeat`].
//! - `compaction`: the compactor's decisions ([`plan_merges`], [`merge_id`], [`garbage`],
//!   [`expired`]) as pure functions over entries.
//!
//! - `http`: the S3 client's transport, hyper + rustls (ring), http and https.
//!
//! # TLS
//! `object_store`'s own transport (reqwest) is not used: reqwest's rustls backends either pull
//! aws-lc-rs or make every reqwest client of the process panic unless a default crypto provider was
//! installed first. The `http` module's connector is used instead: https with the ring provider,
//! the compiled-in Mozilla roots plus an optional `ca_file`.
#![warn(missing_docs)]

mod cache;
mod compaction;
mod config;
mod error;
mod http;
mod metastore;
mod upload;
mod view;

pub use cache::{CacheStats, PinnedSegment, SegmentCache};
pub use compaction::{MergePolicy, expired, garbage, merge_id, plan_merges};
pub use config::{ObjectStoreConfig, Secret, StoreKind, open_store};
pub use error::{ClusterError, Result};
pub use metastore::{ENTRY_FORMAT, Metastore, NodeInfo, SegmentEntry, SegmentFile, segment_key};
pub use upload::{LocalSegment, MULTIPART_PART_BYTES, upload_segment, upload_segment_replacing};
pub use view::{Heartbeat, MetastoreView, Snapshot};

/// Re-exported so callers name the same `ObjectStore` trait and stores this crate uses.
pub use object_store;
