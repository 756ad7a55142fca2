//! The object-store layer against a real 3-node Garage cluster (replication factor 3): the same
//! suite as tests/local.rs, then with one node killed (quorum 2 of 3 still answers), then after
//! restarting it. Needs `garage` (see tests/support/garage.rs; scripts/test.sh installs it).

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use obsbox_cluster::object_store::{ObjectStoreExt, PutPayload};
use obsbox_cluster::{Metastore, ObjectStoreConfig, SegmentCache, open_store, upload_segment};
use obsbox_storage::api::Signal;
use support::garage::GarageCluster;
use support::suite;

fn metastore(garage: &GarageCluster, node: usize, prefix: &str) -> Metastore {
    let cfg: ObjectStoreConfig = toml::from_str(&garage.object_store_toml(node, prefix)).unwrap();
    Metastore::new(open_store(&cfg).unwrap(), &cfg.prefix)
}

/// Garage answers S3 requests once the layout has spread; until then (a second or two) it refuses.
async fn wait_ready(m: &Metastore) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let probe = obsbox_cluster::object_store::path::Path::from("ready-probe");
    loop {
        match m.store().put(&probe, PutPayload::from_static(b"1")).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("garage not ready yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("garage never became ready: {e}"),
        }
    }
}

async fn keys(m: &Metastore) -> BTreeSet<String> {
    m.list(None).await.unwrap().into_iter().map(|e| e.key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garage_cluster_survives_one_node_down() {
    let t0 = Instant::now();
    let phase = |name: &str| eprintln!("[{:>6.1?}] {name}", t0.elapsed());
    let Some(mut garage) = tokio::task::spawn_blocking(GarageCluster::start).await.unwrap() else {
        return;
    };
    phase("cluster started");
    let work = tempfile::tempdir().unwrap();
    let m = metastore(&garage, 0, "all-up");
    wait_ready(&m).await;
    phase("ready");

    // Everything with the three nodes up; the big file (17 MiB) goes by multipart upload.
    let started = Instant::now();
    suite::upload_and_download(m.clone(), &work.path().join("a"), 17 << 20).await;
    eprintln!("upload + download round trip (17 MiB segment): {:?}", started.elapsed());
    suite::cache_single_flight_and_checks(m.clone(), &work.path().join("b")).await;
    let started = Instant::now();
    suite::concurrent_writers(metastore(&garage, 1, "writers-all-up")).await;
    eprintln!("concurrent writers (800 entries + merges): {:?}", started.elapsed());
    let before = keys(&metastore(&garage, 0, "writers-all-up")).await;
    let mut kept = suite::index_segment(&work.path().join("c"), 7, 3 << 20);
    kept.signal = Signal::Logs;
    let kept = upload_segment(&m, &kept, "ingester-k").await.unwrap();

    // One node down: writes and reads go on through the others.
    phase("all-up checks done");
    garage.kill_node(2);
    let down = metastore(&garage, 0, "one-down");
    suite::upload_and_download(down.clone(), &work.path().join("d"), 9 << 20).await;
    suite::concurrent_writers(metastore(&garage, 1, "writers-one-down")).await;
    assert_eq!(keys(&metastore(&garage, 1, "writers-all-up")).await, before, "earlier entries still listed");
    let cache = SegmentCache::open(m.clone(), work.path().join("cache-down"), 1 << 30).unwrap();
    let listed = m.list(Some(Signal::Logs)).await.unwrap();
    let entry = listed.iter().find(|e| e.key == kept.key).expect("listed with a node down");
    assert!(cache.get(entry).await.unwrap().join("a.store").is_file(), "downloaded with a node down");
    phase("one-down checks done");
    let during = keys(&metastore(&garage, 0, "writers-one-down")).await;
    // A client whose own endpoint is the dead node goes on through the failover endpoints.
    let via_dead = metastore(&garage, 2, "writers-one-down");
    assert_eq!(keys(&via_dead).await, during);
    let mut seg = suite::index_segment(&work.path().join("e"), 8, 1 << 20);
    seg.signal = Signal::Logs;
    let through_failover = upload_segment(&via_dead, &seg, "ingester-f").await.unwrap();
    let during = keys(&metastore(&garage, 1, "writers-one-down")).await;
    assert!(during.contains(&through_failover.key));

    // Back up: everything is still listed, also through the restarted node itself.
    garage.restart_node(2);
    phase("node restarted");
    let via_restarted = metastore(&garage, 2, "writers-all-up");
    wait_ready(&via_restarted).await;
    assert_eq!(keys(&via_restarted).await, before);
    assert_eq!(keys(&metastore(&garage, 2, "writers-one-down")).await, during);
    let m2 = metastore(&garage, 2, "all-up");
    assert!(keys(&m2).await.contains(&kept.key));
    let cache2 = SegmentCache::open(m2.clone(), work.path().join("cache-restarted"), 1 << 30).unwrap();
    let entry = m2.list(Some(Signal::Logs)).await.unwrap().into_iter().find(|e| e.key == kept.key).unwrap();
    let pinned = cache2.get(&entry).await.unwrap();
    assert_eq!(std::fs::metadata(pinned.join("a.store")).unwrap().len(), 3 << 20);
    phase("after-restart checks done");
}
