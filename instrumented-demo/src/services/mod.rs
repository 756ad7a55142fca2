//! What every service is built on, and the dispatch from a [`ServiceName`] to its `run`.
//!
//! A service's `run(ctx: ServiceContext) -> Result<()>` builds its routes and hands them to
//! [`serve`], which adds the server spans, fault injection, `/admin/faults` and `/healthz`, binds,
//! prints `listening http://ADDR` on stdout (the launcher reads it), registers with the registry,
//! and serves until SIGINT/SIGTERM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use parking_lot::Mutex;
use tokio::net::TcpListener;

use crate::db::Db;
use crate::faults::{self, Faults};
use crate::http::HttpClient;
use crate::registry::{Registration, RegistryClient};
use crate::{Error, Result, ServiceConfig, ServiceName};

pub mod inventory;
pub mod notifications;
pub mod orders;
pub mod payments;
pub mod provider;
pub mod shipping;

/// Runs `service` until SIGINT or SIGTERM, with the OpenTelemetry SDK set up for it.
pub async fn run(service: ServiceName, cfg: ServiceConfig) -> Result<()> {
    let ctx = ServiceContext::new(service, cfg)?;
    let guard = crate::telemetry::init(service.as_str(), &ctx.instance_id, &ctx.cfg.environment)?;
    tracing::info!(service = %service, instance_id = %ctx.instance_id, "starting");
    let result = match service {
        ServiceName::Registry => crate::registry::run(ctx).await,
        ServiceName::Gateway => crate::gateway::run(ctx).await,
        ServiceName::Catalog => crate::catalog::run(ctx).await,
        ServiceName::Orders => orders::run(ctx).await,
        ServiceName::Inventory => inventory::run(ctx).await,
        ServiceName::Payments => payments::run(ctx).await,
        ServiceName::Provider => provider::run(ctx).await,
        ServiceName::Shipping => shipping::run(ctx).await,
        ServiceName::Notifications => notifications::run(ctx).await,
        ServiceName::Loadgen => crate::loadgen::run(ctx).await,
    };
    match &result {
        Ok(()) => tracing::info!(service = %service, "stopped"),
        Err(e) => tracing::error!(service = %service, error = %e, "service failed"),
    }
    guard.shutdown().await;
    result
}

/// A service's identity, settings and shared clients.
#[derive(Clone)]
pub struct ServiceContext {
    /// Which service this is.
    pub name: ServiceName,
    /// `service.instance.id`, also the id registered with the registry.
    pub instance_id: String,
    /// Its settings.
    pub cfg: ServiceConfig,
    /// Its fault-injection settings (changed at run time through `/admin/faults`).
    pub faults: Faults,
    /// The instrumented HTTP client.
    pub http: HttpClient,
    /// The registry client, when a registry URL is configured.
    pub registry: Option<RegistryClient>,
    peers: Arc<Mutex<HashMap<String, String>>>,
}

impl ServiceContext {
    /// The context of `name` with `cfg`; fails on invalid fault flags.
    pub fn new(name: ServiceName, cfg: ServiceConfig) -> Result<ServiceContext> {
        let faults = Faults::new(cfg.faults.settings().map_err(Error::Config)?);
        let http = HttpClient::default();
        let registry = cfg.registry_url.as_deref().map(|u| RegistryClient::new(u, http.clone()));
        Ok(ServiceContext {
            name,
            instance_id: cfg.instance_id(name),
            cfg,
            faults,
            http,
            registry,
            peers: Arc::default(),
        })
    }

    /// Pins the base URL of `service` (tests without a registry); takes precedence over the registry.
    pub fn set_peer(&self, service: &str, url: &str) {
        self.peers.lock().insert(service.to_owned(), url.trim_end_matches('/').to_owned());
    }

    /// The base URL of an instance of `service`: a pinned peer, else the next instance from the
    /// registry (round-robin).
    pub async fn url_of(&self, service: &str) -> Result<String> {
        if let Some(url) = self.peers.lock().get(service) {
            return Ok(url.clone());
        }
        match &self.registry {
            Some(r) => Ok(r.pick(service).await?.url),
            None => Err(Error::NoInstance(service.to_owned())),
        }
    }

    /// Opens this service's database, `<data_dir>/<instance or service>.sqlite` (stable across
    /// restarts unless the instance id is left to default to the pid).
    pub fn db(&self) -> Result<Db> {
        let stem = self.cfg.instance.clone().unwrap_or_else(|| self.name.as_str().to_owned());
        Db::open(&self.cfg.data_dir.join(format!("{stem}.sqlite")))
    }
}

/// `routes` instrumented: fault injection on them, then `/admin/faults` and `/healthz`, all in
/// server spans.
pub fn app(ctx: &ServiceContext, routes: Router) -> Router {
    routes
        .route_layer(axum::middleware::from_fn_with_state(ctx.faults.clone(), faults::inject))
        .merge(faults::admin_routes(ctx.faults.clone()))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route_layer(axum::middleware::from_fn(crate::http::server_span))
}

/// Binds `cfg.host:cfg.port` and serves [`app`]`(routes)` until SIGINT or SIGTERM; registers with
/// the registry while serving when one is configured.
pub async fn serve(ctx: &ServiceContext, routes: Router) -> Result<()> {
    let listener = bind(ctx).await?;
    serve_on(ctx, listener, routes, shutdown_signal()).await
}

/// Binds the service's listener and prints `listening http://ADDR` on stdout.
pub async fn bind(ctx: &ServiceContext) -> Result<TcpListener> {
    let addr = format!("{}:{}", ctx.cfg.host, ctx.cfg.port);
    let listener = TcpListener::bind(&addr).await.map_err(|source| Error::Bind { addr, source })?;
    let local = listener.local_addr()?;
    announce(local);
    Ok(listener)
}

fn announce(addr: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening http://{addr}");
    let _ = out.flush();
}

/// Serves [`app`]`(routes)` on `listener` until `shutdown` resolves, registered meanwhile.
pub async fn serve_on(
    ctx: &ServiceContext,
    listener: TcpListener,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let local = listener.local_addr()?;
    let url = ctx.cfg.advertise_url.clone().unwrap_or_else(|| format!("http://{local}"));
    let registration = ctx.registry.as_ref().map(|r| {
        let reg = Registration { service: ctx.name.as_str().to_owned(), instance_id: ctx.instance_id.clone(), url };
        (r.clone(), r.keep_registered(reg))
    });
    tracing::info!(addr = %local, "listening");
    let service = app(ctx, routes).into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, service).with_graceful_shutdown(shutdown).await;
    if let Some((client, heartbeat)) = registration {
        heartbeat.abort();
        client.deregister(ctx.name.as_str(), &ctx.instance_id).await;
    }
    Ok(result?)
}

/// Resolves on SIGINT or SIGTERM (the launcher sends SIGTERM; a dead parent too, through
/// `PR_SET_PDEATHSIG`).
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
