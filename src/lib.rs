//! The `obsbox` binary's library: configuration and the composition of the crates into one
//! running process.
//!
//! # Where things are
//! - `config`: [`Config`], loaded from defaults, an optional TOML file, `OBSBOX_*` environment
//!   variables and flags (in that order), validated once at start.
//! - [`Obsbox`]: binds the three listeners, opens the store and runs the OTLP receivers
//!   (`obsbox-collector`), the UI/API server (`obsbox-query-ui`) and, with `[slo] dir`, SLO
//!   evaluation and notifications (`obsbox-slo`) until shut down. Outside role `all`
//!   (`[cluster] role`, DEPLOYMENT.md) it composes `obsbox-cluster` instead: an ingester ships
//!   sealed segments and serves the internal read API, a searcher reads through a
//!   `ClusterReader` and opens no store or OTLP listener, a compactor runs the `Compactor`.
//! - `fuzz` (tests and the `fuzzing` feature only): the fuzz target of the config file
//!   (`docs/fuzzing.md`).
//! - `main.rs`: the command line.

mod config;

// mimalloc rather than glibc malloc: at full ingest load glibc's malloc, free, realloc and
// consolidation took ~22% of all CPU (many small short-lived allocations across threads).
// Declared here, not in main.rs, so the benchmarks and end-to-end tests run the allocator the
// binary runs. Not under the cargo-fuzz build, whose sanitizers bring their own.
#[cfg(not(feature = "fuzzing"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc returns freed pages to the OS only after `purge_delay` (1 s by default in v3). At
/// full ingest load that kept ~150 MiB more resident than glibc; 25 ms brings RSS back under
/// the 256 MiB target for ~4% of the throughput (BENCHMARKS.md, tuning log). The option is read
/// at every purge, so setting it after start takes effect.
fn tune_allocator() {
    #[cfg(not(feature = "fuzzing"))]
    {
        // mimalloc.h, `mi_option_e`: `mi_option_purge_delay` (the same value in v2 and v3).
        const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: sets one integer option; the value is valid (milliseconds, >= -1).
        ONCE.call_once(|| unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 25) });
    }
}

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{AuthConfig, ClusterConfig, Config, ListenConfig, ObjectStoreConfig, Role, TlsConfig};
use obsbox_cluster::{ClusterReader, Compactor, Heartbeat, Metastore, NodeInfo, SegmentCache, Shipper};
pub use obsbox_collector as collector;
use obsbox_query_ui::internal::InternalApi;
pub use obsbox_storage as storage;
use obsbox_storage::{DiskStore, Reader};

/// A running obsbox: listeners bound, store open, servers running.
pub struct Obsbox {
    otlp_grpc_addr: Option<SocketAddr>,
    otlp_http_addr: Option<SocketAddr>,
    http_addr: SocketAddr,
    store: Option<Arc<DiskStore>>,
    reader: Arc<dyn Reader>,
    cluster: ClusterParts,
    deriver: Option<obsbox_collector::Deriver>,
    remote_write: Option<obsbox_collector::RemoteWrite>,
    slo: Option<Slo>,
    /// Stops the OTLP servers.
    stop_ingest: watch::Sender<bool>,
    /// Stops the UI server.
    stop: watch::Sender<bool>,
    /// The OTLP servers' tasks.
    ingest_tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    /// The UI server's task (and, after [`Obsbox::wait`], whatever else still runs).
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// What a role other than `all` runs besides the servers.
#[derive(Default)]
struct ClusterParts {
    heartbeat: Option<Heartbeat>,
    shipper: Option<Arc<Shipper>>,
    compactor: Option<Compactor>,
}

/// SLO evaluation and its notifier, when `[slo] dir` is set.
struct Slo {
    engine: Arc<obsbox_slo::SloEngine>,
    notifier: Arc<obsbox_slo::Notifier>,
}

/// Raises this process's soft limit on open files to the hard limit: each connection is one, and
/// distributions start services with a soft limit of 1024. Warns when the result cannot hold
/// three full listeners plus the store's files.
fn raise_open_files_limit(max_connections: usize) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        limit.rlim_cur
    };
    let wanted = 3 * max_connections as u64 + 512;
    if soft < wanted {
        tracing::warn!(
            open_files_limit = soft,
            wanted,
            "the open files limit is below 3 x listen.max_connections + 512; raise it (ulimit -n, LimitNOFILE=)"
        );
    }
}

async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} ({what})"))
}

impl Obsbox {
    /// Validates `config`, opens the store (replaying its write-ahead log), binds the listeners
    /// and starts serving. Port 0 binds a free port; the `*_addr` methods tell which.
    pub async fn start(config: Config) -> anyhow::Result<Obsbox> {
        config.validate()?;
        tune_allocator();
        let role = config.cluster.role;
        let tls = obsbox_net::Tls::load(&config.tls).context("invalid [tls] settings")?;
        let ingest_tokens = config.auth.ingest_tokens().context("invalid [auth] settings")?;
        let query_tokens = config.auth.query_tokens().context("invalid [auth] settings")?;
        tracing::info!(
            role = role.as_str(),
            ingest = ingest_tokens.is_some(),
            query = query_tokens.is_some(),
            "listeners requiring a token"
        );
        let registry = prometheus::Registry::new();
        let auth_failures = obsbox_net::AuthFailures::register(&registry).context("registering self-metrics")?;
        let ingests = matches!(role, Role::All | Role::Ingester);
        let store = match ingests {
            true => {
                let mut storage_config = config.storage.clone();
                if role == Role::Ingester {
                    // Segments are the unit shipped: seal them often, so the object store is behind
                    // by at most seal_interval (searchers ask the ingester for the rest).
                    storage_config.segment_max_age = storage_config.segment_max_age.min(config.cluster.seal_interval);
                }
                // A crash's WAL records replay in the indexers: OTLP is taken at once, and
                // `/readyz` waits until they are visible.
                let store =
                    tokio::task::spawn_blocking(move || DiskStore::open_replaying_in_background(storage_config))
                        .await
                        .context("store open task failed")?
                        .with_context(|| format!("cannot open the store in {}", config.storage.data_dir.display()))?;
                Some(Arc::new(store))
            }
            false => None,
        };
        let metastore = match role {
            Role::All => None,
            _ => {
                let objects =
                    obsbox_cluster::open_store(&config.object_store).context("invalid [object_store] settings")?;
                Some(Metastore::new(objects, &config.object_store.prefix))
            }
        };

        raise_open_files_limit(config.listen.max_connections);
        let listener = |tcp, port| {
            obsbox_net::Listener::new(tcp, &config.listen, tls.as_ref(), port).context("cannot set up a listener")
        };
        let ui = listener(bind(&config.listen.http, "listen.http").await?, obsbox_net::Port::Ui)?;
        let http_addr = ui.local_addr()?;
        let (grpc, http) = match ingests {
            true => (
                Some(listener(bind(&config.listen.otlp_grpc, "listen.otlp_grpc").await?, obsbox_net::Port::OtlpGrpc)?),
                Some(listener(bind(&config.listen.otlp_http, "listen.otlp_http").await?, obsbox_net::Port::OtlpHttp)?),
            ),
            false => (None, None),
        };
        let otlp_grpc_addr = grpc.as_ref().map(|l| l.local_addr()).transpose()?;
        let otlp_http_addr = http.as_ref().map(|l| l.local_addr()).transpose()?;

        let mut cluster = ClusterParts::default();
        let node_id = config.cluster.node_id.clone().unwrap_or_default();
        let cache = |metastore: &Metastore| {
            let dir = config.cluster.cache_dir.clone().unwrap_or_else(|| config.storage.data_dir.join("cache"));
            SegmentCache::open(metastore.clone(), &dir, config.cluster.cache_max_bytes)
                .with_context(|| format!("cannot open the segment cache in {}", dir.display()))
        };
        let reader: Arc<dyn Reader> = match (&store, role, &metastore) {
            (Some(store), _, _) => store.clone(),
            (None, Role::Searcher, Some(metastore)) => {
                let settings = obsbox_cluster::SearcherSettings {
                    poll_interval: config.cluster.poll_interval,
                    node_timeout: config.cluster.node_timeout,
                    call_timeout: config.cluster.call_timeout,
                    token: config.auth.peer_query_token().context("invalid [auth] settings")?,
                };
                let cache = tokio::task::block_in_place(|| cache(metastore))?;
                let reader = ClusterReader::start(metastore.clone(), cache, settings);
                if !reader.wait_ready(Duration::from_secs(30)).await {
                    tracing::warn!("no segment list from the object store yet; queries wait for it");
                }
                Arc::new(reader)
            }
            // A compactor answers no queries: its UI port is for health and metrics.
            _ => Arc::new(obsbox_storage::FederatedReader::new(Vec::new())),
        };
        if let (Role::Compactor, Some(metastore)) = (role, &metastore) {
            let settings = obsbox_cluster::CompactorSettings {
                interval: config.cluster.compaction_interval,
                retention: config.storage.retention,
                grace: config.cluster.compaction_grace,
                min_age: config.cluster.compaction_min_age,
                policy: obsbox_cluster::MergePolicy {
                    small_bytes: config.cluster.merge_small_bytes,
                    ..Default::default()
                },
                work_dir: config.storage.data_dir.join("compaction"),
            };
            let cache = tokio::task::block_in_place(|| cache(metastore))?;
            cluster.compactor = Some(Compactor::start(metastore.clone(), cache, &node_id, settings));
        }
        if let (Role::Ingester, Some(metastore), Some(store)) = (role, &metastore, &store) {
            cluster.shipper = Some(Arc::new(Shipper::start(
                store.clone(),
                metastore.clone(),
                &node_id,
                config.cluster.ship_interval,
            )));
        }
        if let Some(metastore) = &metastore {
            let url = match &config.cluster.advertise_url {
                Some(url) => url.clone(),
                None if http_addr.ip().is_unspecified() && role == Role::Ingester => anyhow::bail!(
                    "cluster.advertise_url: required when listen.http ({}) listens on every address",
                    config.listen.http
                ),
                None => format!("{}://{http_addr}", if tls.is_some() { "https" } else { "http" }),
            };
            let node = NodeInfo { node_id: node_id.clone(), role: role.as_str().to_string(), url, updated_ms: 0 };
            cluster.heartbeat = Some(Heartbeat::start(metastore.clone(), node, config.cluster.heartbeat_interval));
        }

        let remote_write = match (ingests, config.remote_write.enabled()) {
            (true, true) => Some(
                obsbox_collector::RemoteWrite::start(&config.remote_write, &registry)
                    .context("cannot start remote write")?,
            ),
            _ => None,
        };
        let deriver = match (&store, config.derive.enabled) {
            (Some(store), true) => Some(
                obsbox_collector::Deriver::start(&config.derive, store.clone(), &registry, remote_write.clone())
                    .context("cannot start metric derivation")?,
            ),
            _ => None,
        };
        let collector = match &store {
            Some(store) => {
                let taps = obsbox_collector::Taps { deriver: deriver.clone(), remote_write: remote_write.clone() };
                let mut collector =
                    obsbox_collector::Collector::with_taps(store.clone(), config.limits.clone(), &registry, taps)
                        .context("invalid limits")?;
                if let Some(tokens) = ingest_tokens {
                    collector = collector.with_auth(tokens, &auth_failures);
                }
                Some(collector)
            }
            None => None,
        };
        let slo = match &config.slo.dir {
            Some(dir) => {
                let notifier = Arc::new(
                    obsbox_slo::Notifier::start(&config.slo.notify, &registry)
                        .context("cannot start SLO notifications")?,
                );
                let engine = obsbox_slo::SloEngine::start(
                    &config.slo,
                    &config.storage.data_dir,
                    reader.clone(),
                    &registry,
                    Box::new(notifier.clone()),
                    Box::new(obsbox_slo::Definitions::new(dir)),
                )
                .context("cannot start SLO evaluation")?;
                Some(Slo { engine: Arc::new(engine), notifier })
            }
            None => None,
        };
        let ready = Arc::new(AtomicBool::new(false));
        let mut state = obsbox_query_ui::AppState::new(reader.clone(), registry, ready.clone())
            .context("registering self-metrics")?
            .with_limits(config.query.clone());
        if let Some(slo) = &slo {
            state = state.with_slos(slo.engine.clone());
        }
        if let Some(tokens) = query_tokens {
            state = state.with_auth(tokens, &auth_failures);
        }
        let mut app = obsbox_query_ui::router(state.clone());
        if let Some(shipper) = &cluster.shipper {
            app = app.merge(InternalApi::new(shipper.clone()).router(&state));
        }

        let (stop, stop_rx) = watch::channel(false);
        let (stop_ingest, stop_ingest_rx) = watch::channel(false);
        let signal = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let mut ingest_tasks = Vec::new();
        if let (Some(grpc), Some(http), Some(collector)) = (grpc, http, collector) {
            ingest_tasks.push(tokio::spawn({
                let c = collector.clone();
                let s = signal(stop_ingest_rx.clone());
                async move { obsbox_collector::serve_grpc(grpc, c, s).await.context("otlp grpc server") }
            }));
            ingest_tasks.push(tokio::spawn({
                let s = signal(stop_ingest_rx.clone());
                async move { obsbox_collector::serve_http(http, collector, s).await.context("otlp http server") }
            }));
        }
        let tasks = vec![tokio::spawn({
            let s = signal(stop_rx.clone());
            async move { ui.serve(app, s).await.context("ui server") }
        })];
        match store.clone().filter(|s| s.replaying()) {
            None => ready.store(true, Ordering::SeqCst),
            Some(store) => {
                let ready = ready.clone();
                tokio::spawn(async move {
                    while store.replaying() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    ready.store(true, Ordering::SeqCst);
                });
            }
        }
        Ok(Obsbox {
            otlp_grpc_addr,
            otlp_http_addr,
            http_addr,
            store,
            reader,
            cluster,
            deriver,
            remote_write,
            slo,
            stop_ingest,
            stop,
            ingest_tasks,
            tasks,
        })
    }

    /// Address of the OTLP/gRPC listener; `None` in the roles that take no OTLP (searcher,
    /// compactor).
    pub fn otlp_grpc_addr(&self) -> Option<SocketAddr> {
        self.otlp_grpc_addr
    }

    /// Address of the OTLP/HTTP listener; `None` in the roles that take no OTLP.
    pub fn otlp_http_addr(&self) -> Option<SocketAddr> {
        self.otlp_http_addr
    }

    /// Address of the UI and query API listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The local store (implements [`obsbox_storage::Reader`] and [`obsbox_storage::Writer`]);
    /// `None` in the roles that keep none (searcher, compactor).
    pub fn store(&self) -> Option<Arc<DiskStore>> {
        self.store.clone()
    }

    /// What the query APIs read: the local store, or a searcher's view of the cluster.
    pub fn reader(&self) -> Arc<dyn Reader> {
        self.reader.clone()
    }

    /// Re-reads the SLO definitions and evaluates at once (what SIGHUP does); without an SLO
    /// directory, nothing.
    pub fn reload_slos(&self) {
        if let Some(slo) = &self.slo {
            slo.engine.reload();
        }
    }

    /// Resolves when a server stops on its own (an error); the error says which.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        let mut all = std::mem::take(&mut self.ingest_tasks);
        all.append(&mut self.tasks);
        let (result, _, rest) = futures_select_all(all).await;
        self.tasks = rest;
        result
    }

    /// Stops accepting OTLP, finishes requests in flight, stops SLO evaluation and sends its
    /// queued notifications (for at most 5 s), writes the last derived points, sends what remote
    /// write has queued (for at most 5 s); an ingester then ships every segment and removes its
    /// heartbeat while its UI port still answers searchers (so they learn of the last segments
    /// before they stop asking it); then the UI port stops and the store closes (committing
    /// everything acknowledged).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop_ingest.send(true);
        for t in self.ingest_tasks.drain(..) {
            t.await.context("server task panicked")??;
        }
        if let Some(slo) = self.slo.take() {
            slo.engine.close().await;
            slo.notifier.close(std::time::Duration::from_secs(5)).await;
        }
        if let Some(deriver) = self.deriver.take() {
            tokio::task::spawn_blocking(move || deriver.stop()).await.context("derive stop task failed")?;
        }
        if let Some(rw) = self.remote_write.take() {
            rw.close(std::time::Duration::from_secs(5)).await;
        }
        if let Some(compactor) = self.cluster.compactor.take() {
            compactor.stop().await;
        }
        if let Some(shipper) = self.cluster.shipper.take() {
            shipper.stop().await;
            // Everything acknowledged goes to the object store before the ingester leaves; what
            // cannot (the store unreachable) stays in the WAL and local segments for the restart.
            if let Err(e) = shipper.flush().await {
                tracing::warn!(error = %e, "cannot ship every segment before stopping; they ship after the restart");
            }
        }
        if let Some(heartbeat) = self.cluster.heartbeat.take()
            && let Err(e) = heartbeat.stop().await
        {
            tracing::warn!(error = %e, "cannot remove this node's heartbeat");
        }
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            t.await.context("server task panicked")??;
        }
        if let Some(store) = self.store.clone() {
            tokio::task::spawn_blocking(move || store.close()).await.context("store close task failed")?;
        }
        Ok(())
    }
}

async fn futures_select_all(
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
) -> (anyhow::Result<()>, usize, Vec<JoinHandle<anyhow::Result<()>>>) {
    if tasks.is_empty() {
        std::future::pending::<()>().await;
    }
    let (r, i, rest) = futures::future::select_all(tasks).await;
    let r = match r {
        Ok(r) => r.and_then(|()| Err(anyhow::anyhow!("a server stopped unexpectedly"))),
        Err(e) => Err(anyhow::anyhow!("a server task panicked: {e}")),
    };
    (r, i, rest)
}
