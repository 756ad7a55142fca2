//! obsbox on object storage: where segments live when obsbox runs as ingesters, searchers and a
//! compactor over an S3-compatible bucket (Garage, MinIO, AWS S3) or a local directory.
//!
//! Ingesters [`upload_segment`] each sealed segment (files first, then its metastore entry) from
//! a [`Shipper`]; searchers answer every read with a [`ClusterReader`], which follows the segment
//! list with a [`MetastoreView`], asks the live ingesters for what they have not shipped and
//! fetches what a query needs into a bounded [`SegmentCache`]; the [`Compactor`] uploads merged
//! segments with [`upload_segment_replacing`] and later [`Metastore::remove`]s the inputs. Every
//! node writes a [`Heartbeat`]; searchers find ingesters with [`Metastore::live_nodes`]. The binary
//! composes these per role (`src/lib.rs`; DEPLOYMENT.md).
//!
//! # Where things are
//! - `config`: [`ObjectStoreConfig`] (the `[object_store]` config section) and [`open_store`].
//! - `metastore`: [`Metastore`], [`SegmentEntry`], [`NodeInfo`]: the object layout and why no
//!   conditional writes are needed.
//! - `upload`: [`LocalSegment`] (a sealed local segment) and [`upload_segment`].
//! - `cache`: [`SegmentCache`] and [`PinnedSegment`].
//! - `view`: [`MetastoreView`] (the polled segment list) and [`Heartbeat`].
//! - `ingester`: [`Shipper`]: ship, register, release; it is the internal read API's
//!   `ServedSegments` on an ingester.
//! - `searcher`: [`ClusterReader`], the searcher's `Reader` (the read step by step in its doc).
//! - `compactor`: [`Compactor`], the merge and retention loop.
//! - [`TraceFilter`] (from `obsbox-storage`): the per-segment trace-id filter in traces entries.
//! - `compaction`: the compactor's decisions ([`plan_merges`], [`merge_id`], [`garbage`],
//!   [`expired`]) as pure functions over entries.
//! - `http`: the S3 client's transport, hyper + rustls (ring), http and https, with
//!   `failover_endpoints` (the other nodes of a Garage/MinIO cluster) tried when one is unreachable.
//! - `tests/support/garage.rs`: a real 3-node Garage cluster for tests, includable by other test
//!   crates with `#[path]`; `tests/support/suite.rs`: the checks every store passes.
//!
//! # Use
//! ```text
//! let store = open_store(&cfg.with_env())?;                  // cfg: ObjectStoreConfig from the config file
//! let metastore = Metastore::new(store, &cfg.prefix);
//! // ingester, per sealed segment (LocalSegment from the store's SealedSegment), then release it:
//! let entry = upload_segment(&metastore, &segment, node_id).await?;
//! // searcher:
//! let view = MetastoreView::start(metastore.clone(), None, Duration::from_secs(5));
//! let cache = SegmentCache::open(metastore.clone(), cache_dir, max_bytes)?;
//! for e in view.snapshot().overlapping(signal, start_ns, end_ns) { let local = cache.get(e).await?; /* open *local */ }
//! // every node:
//! let beat = Heartbeat::start(metastore.clone(), NodeInfo { node_id, role, url, updated_ms: 0 }, interval);
//! let ingesters = metastore.live_nodes("ingester", 3 * interval).await?;
//! ```
//!
//! # TLS
//! `object_store`'s own transport (reqwest) is not used: reqwest's rustls backends either pull
//! aws-lc-rs or make every reqwest client of the process panic unless a default crypto provider was
//! installed first. The `http` module's connector is used instead: https with the ring provider,
//! the compiled-in Mozilla roots plus an optional `ca_file`.
#![warn(missing_docs)]

mod cache;
mod compaction;
mod compactor;
mod config;
mod error;
mod http;
mod ingester;
mod metastore;
mod searcher;
mod upload;
mod view;

pub use cache::{CacheStats, PinnedSegment, SegmentCache};
pub use compaction::{MergePolicy, expired, garbage, merge_id, plan_merges};
pub use compactor::{Compactor, CompactorSettings, PassReport};
pub use config::{ObjectStoreConfig, Secret, StoreKind, open_store};
pub use error::{ClusterError, Result};
pub use ingester::Shipper;
pub use metastore::{ENTRY_FORMAT, Metastore, NodeInfo, SegmentEntry, SegmentFile, segment_key};
pub use obsbox_storage::TraceFilter;
pub use searcher::{ClusterReader, FETCH_CONCURRENCY, SearcherSettings};
pub use upload::{LocalSegment, MULTIPART_PART_BYTES, upload_segment, upload_segment_replacing};
pub use view::{Heartbeat, MetastoreView, Snapshot};

/// Re-exported so callers name the same `ObjectStore` trait and stores this crate uses.
pub use object_store;
