//! The `obsbox` binary's library: configuration and the composition of the crates into one
//! running process.
//!
//! # Where things are
//! - `config`: [`Config`], loaded from defaults, an optional TOML file, `OBSBOX_*` environment
//!   variables and flags (in that order), validated once at start.
//! - [`Obsbox`]: binds the three listeners, opens the store and runs the OTLP receivers
//!   (`obsbox-collector`), the UI/API server (`obsbox-query-ui`) and, with `[slo] dir`, SLO
//!   evaluation and notifications (`obsbox-slo`) until shut down.
//! - `fuzz` (tests and the `fuzzing` feature only): the fuzz target of the config file
//!   (`docs/fuzzing.md`).
//! - `main.rs`: the command line.

mod config;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{AuthConfig, Config, ListenConfig, TlsConfig};
pub use obsbox_collector as collector;
pub use obsbox_storage as storage;
use obsbox_storage::DiskStore;

/// A running obsbox: listeners bound, store open, servers running.
pub struct Obsbox {
    otlp_grpc_addr: SocketAddr,
    otlp_http_addr: SocketAddr,
    http_addr: SocketAddr,
    store: Arc<DiskStore>,
    deriver: Option<obsbox_collector::Deriver>,
    remote_write: Option<obsbox_collector::RemoteWrite>,
    slo: Option<Slo>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
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
        let tls = obsbox_net::Tls::load(&config.tls).context("invalid [tls] settings")?;
        let ingest_tokens = config.auth.ingest_tokens().context("invalid [auth] settings")?;
        let query_tokens = config.auth.query_tokens().context("invalid [auth] settings")?;
        tracing::info!(ingest = ingest_tokens.is_some(), query = query_tokens.is_some(), "listeners requiring a token");
        let registry = prometheus::Registry::new();
        let auth_failures = obsbox_net::AuthFailures::register(&registry).context("registering self-metrics")?;
        let storage_config = config.storage.clone();
        let store = tokio::task::spawn_blocking(move || DiskStore::open(storage_config))
            .await
            .context("store open task failed")?
            .with_context(|| format!("cannot open the store in {}", config.storage.data_dir.display()))?;
        let store = Arc::new(store);

        raise_open_files_limit(config.listen.max_connections);
        let listener = |tcp, port| {
            obsbox_net::Listener::new(tcp, &config.listen, tls.as_ref(), port).context("cannot set up a listener")
        };
        let grpc = listener(bind(&config.listen.otlp_grpc, "listen.otlp_grpc").await?, obsbox_net::Port::OtlpGrpc)?;
        let http = listener(bind(&config.listen.otlp_http, "listen.otlp_http").await?, obsbox_net::Port::OtlpHttp)?;
        let ui = listener(bind(&config.listen.http, "listen.http").await?, obsbox_net::Port::Ui)?;
        let (otlp_grpc_addr, otlp_http_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?, ui.local_addr()?);

        let remote_write = match config.remote_write.enabled() {
            true => Some(
                obsbox_collector::RemoteWrite::start(&config.remote_write, &registry)
                    .context("cannot start remote write")?,
            ),
            false => None,
        };
        let deriver = match config.derive.enabled {
            true => Some(
                obsbox_collector::Deriver::start(&config.derive, store.clone(), &registry, remote_write.clone())
                    .context("cannot start metric derivation")?,
            ),
            false => None,
        };
        let taps = obsbox_collector::Taps { deriver: deriver.clone(), remote_write: remote_write.clone() };
        let mut collector =
            obsbox_collector::Collector::with_taps(store.clone(), config.limits.clone(), &registry, taps)
                .context("invalid limits")?;
        if let Some(tokens) = ingest_tokens {
            collector = collector.with_auth(tokens, &auth_failures);
        }
        let slo = match &config.slo.dir {
            Some(dir) => {
                let notifier = Arc::new(
                    obsbox_slo::Notifier::start(&config.slo.notify, &registry)
                        .context("cannot start SLO notifications")?,
                );
                let engine = obsbox_slo::SloEngine::start(
                    &config.slo,
                    &config.storage.data_dir,
                    store.clone(),
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
        let mut state = obsbox_query_ui::AppState::new(store.clone(), registry, ready.clone())
            .context("registering self-metrics")?
            .with_limits(config.query.clone());
        if let Some(slo) = &slo {
            state = state.with_slos(slo.engine.clone());
        }
        if let Some(tokens) = query_tokens {
            state = state.with_auth(tokens, &auth_failures);
        }

        let (stop, stop_rx) = watch::channel(false);
        let signal = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let tasks = vec![
            tokio::spawn({
                let c = collector.clone();
                let s = signal(stop_rx.clone());
                async move { obsbox_collector::serve_grpc(grpc, c, s).await.context("otlp grpc server") }
            }),
            tokio::spawn({
                let s = signal(stop_rx.clone());
                async move { obsbox_collector::serve_http(http, collector, s).await.context("otlp http server") }
            }),
            tokio::spawn({
                let s = signal(stop_rx.clone());
                async move { obsbox_query_ui::serve(ui, state, s).await.context("ui server") }
            }),
        ];
        ready.store(true, Ordering::SeqCst);
        Ok(Obsbox { otlp_grpc_addr, otlp_http_addr, http_addr, store, deriver, remote_write, slo, stop, tasks })
    }

    /// Address of the OTLP/gRPC listener.
    pub fn otlp_grpc_addr(&self) -> SocketAddr {
        self.otlp_grpc_addr
    }

    /// Address of the OTLP/HTTP listener.
    pub fn otlp_http_addr(&self) -> SocketAddr {
        self.otlp_http_addr
    }

    /// Address of the UI and query API listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The store (implements [`obsbox_storage::Reader`] and [`obsbox_storage::Writer`]).
    pub fn store(&self) -> Arc<DiskStore> {
        self.store.clone()
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
        let (result, _, rest) = futures_select_all(std::mem::take(&mut self.tasks)).await;
        self.tasks = rest;
        result
    }

    /// Stops accepting connections, finishes requests in flight, stops SLO evaluation and sends
    /// its queued notifications (for at most 5 s), writes the last derived points, sends what
    /// remote write has queued (for at most 5 s), then closes the store (committing everything
    /// acknowledged).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
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
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.close()).await.context("store close task failed")?;
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
