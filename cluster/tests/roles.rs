//! The three roles' loops composed as the binary composes them, without the binary: an ingester
//! (`DiskStore` + `Shipper` + the internal read API on a loopback port + its heartbeat) and a
//! searcher (`ClusterReader`) over one object store (a local directory). The store's shared
//! contract suite (`obsbox_storage::testsuite::run_all`) runs with the ingester as the `Writer`
//! and the searcher as the `Reader`, while a background thread keeps sealing, so every check
//! reads a mix of shipped segments and the ingester's unshipped data; a compactor pass over the
//! result must change no answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use obsbox_cluster::{
    ClusterReader, Compactor, CompactorSettings, Heartbeat, Metastore, NodeInfo, ObjectStoreConfig, SearcherSettings,
    SegmentCache, Shipper, StoreKind, open_store,
};
use obsbox_query_ui::internal::InternalApi;
use obsbox_storage::api::{Batch, Reader, Signal, WriteFuture, Writer};
use obsbox_storage::call::{Answer, ReadCall, ReadResult};
use obsbox_storage::{DiskStore, StoreConfig, StoreError};

/// An ingester and a searcher over one object store.
struct Cluster {
    rt: tokio::runtime::Runtime,
    ingester: Arc<DiskStore>,
    shipper: Arc<Shipper>,
    searcher: Option<ClusterReader>,
    metastore: Metastore,
    heartbeat: Option<Heartbeat>,
    sealing: Arc<AtomicBool>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        Self::start_with(Duration::from_millis(100), true)
    }

    /// `sealing`: whether a background thread seals every 150 ms.
    fn start_with(ship_interval: Duration, sealing: bool) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let _guard = rt.enter();
        std::fs::create_dir_all(dir.path().join("bucket")).unwrap();
        let config =
            ObjectStoreConfig { kind: StoreKind::Local, path: Some(dir.path().join("bucket")), ..Default::default() };
        let metastore = Metastore::new(open_store(&config).unwrap(), "t");
        let store_config = StoreConfig { data_dir: dir.path().join("ingester"), ..Default::default() };
        let ingester = Arc::new(DiskStore::open(store_config).unwrap());
        let shipper = Arc::new(Shipper::start(ingester.clone(), metastore.clone(), "ingester-1", ship_interval));

        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = obsbox_query_ui::AppState::new(
            ingester.clone(),
            prometheus::Registry::new(),
            Arc::new(AtomicBool::new(true)),
        )
        .unwrap();
        let app = InternalApi::new(shipper.clone()).router(&state);
        rt.spawn(async move { axum::serve(listener, app).await });
        let node = NodeInfo { node_id: "ingester-1".into(), role: "ingester".into(), url, updated_ms: 0 };
        let heartbeat = Heartbeat::start(metastore.clone(), node, Duration::from_millis(200));

        let cache = SegmentCache::open(metastore.clone(), dir.path().join("cache"), 1 << 30).unwrap();
        let settings = SearcherSettings {
            poll_interval: Duration::from_millis(200),
            node_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            token: None,
        };
        let searcher = ClusterReader::start(metastore.clone(), cache, settings);
        // The searcher knows the ingester before the first read.
        std::thread::sleep(Duration::from_millis(600));

        let sealing = Arc::new(AtomicBool::new(sealing));
        std::thread::spawn({
            let (ingester, sealing) = (ingester.clone(), sealing.clone());
            move || {
                while sealing.load(Ordering::SeqCst) {
                    ingester.seal_now().unwrap();
                    std::thread::sleep(Duration::from_millis(150));
                }
            }
        });
        Cluster { rt, ingester, shipper, searcher: Some(searcher), metastore, heartbeat: Some(heartbeat), sealing, dir }
    }

    fn shipped_items(&self, signal: Signal) -> u64 {
        let entries = self.rt.block_on(self.metastore.list(Some(signal))).unwrap();
        entries.iter().map(|e| e.items).sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.sealing.store(false, Ordering::SeqCst);
        let _guard = self.rt.enter();
        self.searcher.take();
        self.heartbeat.take();
        self.rt.block_on(self.shipper.stop());
        self.ingester.close();
    }
}

impl Writer for Cluster {
    fn write(&self, batch: Batch) -> WriteFuture {
        self.ingester.write(batch)
    }
}

impl Answer for Cluster {
    fn answer(&self, call: &ReadCall) -> Result<ReadResult, StoreError> {
        self.searcher.as_ref().expect("running").answer(call)
    }
}

#[test]
fn an_ingester_and_a_searcher_pass_the_store_contract() {
    let made = std::sync::atomic::AtomicUsize::new(0);
    obsbox_storage::testsuite::run_all(&|| {
        made.fetch_add(1, Ordering::SeqCst);
        Cluster::start()
    });
    assert!(made.load(Ordering::SeqCst) >= 5, "the suite made a cluster per check");
}

fn spans_request(spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>) -> Batch {
    Batch::Traces(opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
            scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    })
}

/// The window between an ingester registering a segment and releasing it (a crash there leaves
/// it so until the restart): the segment is in the bucket and still served by the ingester, and
/// the searcher must count its items once.
#[test]
fn a_registered_segment_the_ingester_still_serves_is_counted_once() {
    let cluster = Cluster::start_with(Duration::from_secs(3600), false);
    let spans: Vec<_> = (0..12u8).map(|n| obsbox_storage::testsuite::full_span(n / 4, n, None)).collect();
    futures::executor::block_on(cluster.write(spans_request(spans))).unwrap();
    let ids: Vec<Vec<u8>> = (0..3u8).map(|t| obsbox_storage::testsuite::full_span(t, 0, None).trace_id).collect();
    let count = || cluster.traces(&ids).unwrap().iter().map(Vec::len).sum::<usize>();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count() < 12 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.ingester.seal_now().unwrap();
    let sealed = cluster.ingester.sealed_segments(Signal::Traces);
    assert_eq!(sealed.len(), 1);
    let local = obsbox_cluster::LocalSegment::from(&sealed[0]);
    cluster.rt.block_on(obsbox_cluster::upload_segment(&cluster.metastore, &local, "ingester-1")).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(cluster.shipped_items(Signal::Traces), 12, "registered");
    assert_eq!(count(), 12, "each span once, though both the bucket and the ingester have it");
    let histogram =
        cluster.span_histogram(&obsbox_storage::SpanPredicate::All, obsbox_storage::TimeRange::ALL, 1 << 62).unwrap();
    assert_eq!(histogram.iter().map(|(_, n)| n).sum::<u64>(), 12, "{histogram:?}");
    // Shipping now only releases it (same key); still once.
    cluster.rt.block_on(cluster.shipper.flush()).unwrap();
    assert!(cluster.ingester.sealed_segments(Signal::Traces).is_empty());
    assert_eq!(cluster.shipped_items(Signal::Traces), 12, "the same key: no second copy");
    assert_eq!(count(), 12);
}

/// Each shipped traces segment carries a filter of its trace ids: a trace lookup downloads only the
/// segment that holds the trace, not every traces segment in the bucket.
#[test]
fn a_trace_lookup_downloads_only_the_segments_that_hold_the_trace() {
    let cluster = Cluster::start_with(Duration::from_secs(3600), false);
    for trace in 0..6u8 {
        let spans: Vec<_> =
            (0..3u8).map(|n| obsbox_storage::testsuite::full_span(trace, trace * 3 + n, None)).collect();
        futures::executor::block_on(cluster.write(spans_request(spans))).unwrap();
        // Sealing waits for what was written to be indexed: one trace per segment.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cluster.ingester.stats().pending_items.iter().any(|(_, n)| *n > 0) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(1100));
        cluster.ingester.seal_now().unwrap();
    }
    cluster.rt.block_on(cluster.shipper.flush()).unwrap();
    let entries = cluster.rt.block_on(cluster.metastore.list(Some(Signal::Traces))).unwrap();
    assert!(entries.len() >= 4, "{} traces segments", entries.len());
    assert!(entries.iter().all(|e| e.trace_filter.is_some()), "every traces segment has a filter");
    std::thread::sleep(Duration::from_millis(600));
    let searcher = cluster.searcher.as_ref().unwrap();
    let before = searcher.cache_stats().downloads;
    let id = obsbox_storage::testsuite::full_span(4, 0, None).trace_id;
    assert_eq!(cluster.trace(&id).unwrap().len(), 3);
    let downloads = searcher.cache_stats().downloads - before;
    assert_eq!(downloads, 1, "downloaded {downloads} of {} segments for one trace", entries.len());
    assert!(cluster.trace(&[0x42; 16]).unwrap().is_empty());
    assert!(searcher.cache_stats().downloads - before <= 2, "an unknown trace downloads (almost) nothing");
}

#[test]
fn what_was_read_from_ingesters_and_segments_is_read_from_segments_alone_after_shipping_and_compaction() {
    let cluster = Cluster::start();
    let spans: Vec<_> = (0..60u8).map(|n| obsbox_storage::testsuite::full_span(n / 6, n, None)).collect();
    for chunk in spans.chunks(7) {
        let req = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
            resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
                scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                    spans: chunk.to_vec(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        futures::executor::block_on(cluster.write(Batch::Traces(req))).unwrap();
        // The background sealer cuts a segment now and then: spread the spans over several.
        std::thread::sleep(Duration::from_millis(300));
    }
    let ids: Vec<Vec<u8>> = (0..10u8).map(|t| obsbox_storage::testsuite::full_span(t, 0, None).trace_id).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let before = loop {
        let got = cluster.traces(&ids).unwrap();
        if got.iter().map(Vec::len).sum::<usize>() == 60 || std::time::Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(before.iter().map(Vec::len).sum::<usize>(), 60, "every span found");
    // Everything shipped: the ingester holds nothing sealed, the bucket holds every span.
    cluster.rt.block_on(cluster.shipper.flush()).unwrap();
    assert_eq!(cluster.shipped_items(Signal::Traces), 60);
    assert!(cluster.ingester.sealed_segments(Signal::Traces).is_empty());
    assert_eq!(cluster.traces(&ids).unwrap(), before, "the same answer from the object store alone");
    // A compactor merges the small segments into one; the answer does not change.
    let segments = cluster.rt.block_on(cluster.metastore.list(Some(Signal::Traces))).unwrap().len();
    assert!(segments >= 2, "several segments to merge: {segments}");
    let _guard = cluster.rt.enter();
    let cache = SegmentCache::open(cluster.metastore.clone(), cluster.dir.path().join("compactor"), 1 << 30).unwrap();
    let settings = CompactorSettings {
        interval: Duration::from_secs(3600),
        retention: Duration::from_secs(3650 * 24 * 3600),
        grace: Duration::from_millis(0),
        min_age: Duration::from_millis(0),
        policy: Default::default(),
        work_dir: cluster.dir.path().join("merges"),
    };
    let compactor = Compactor::start(cluster.metastore.clone(), cache, "compactor", settings);
    // Its first pass starts at once; run_once waits for it and runs another.
    cluster.rt.block_on(compactor.run_once()).unwrap();
    let live = cluster.rt.block_on(cluster.metastore.list(Some(Signal::Traces))).unwrap();
    assert!(live.len() < segments, "{} segments after merging {segments}", live.len());
    assert!(live.iter().any(|e| e.node_id == "compactor" && !e.replaces.is_empty()), "{live:?}");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(cluster.traces(&ids).unwrap(), before, "the same answer after the merge");
    // With grace 0 a pass deletes the replaced inputs; still the same answer.
    cluster.rt.block_on(compactor.run_once()).unwrap();
    let all = cluster.rt.block_on(cluster.metastore.list_all(Some(Signal::Traces))).unwrap();
    let replaced: Vec<&String> = all.iter().flat_map(|e| &e.replaces).collect();
    assert!(all.iter().all(|e| !replaced.contains(&&e.key)), "replaced inputs left: {all:?}");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(cluster.traces(&ids).unwrap(), before, "the same answer once the inputs are gone");
    cluster.rt.block_on(compactor.stop());
}
