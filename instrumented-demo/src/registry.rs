//! Service discovery: the registry service and its client.
//!
//! API of the registry (JSON):
//! - `POST /v1/instances` `{"service", "instance_id", "url"}`: registers (or re-registers) an instance;
//!   answers `{"ttl_ms"}`.
//! - `PUT /v1/instances/{service}/{instance_id}/heartbeat`: keeps it alive; 404 when the registry
//!   does not know it (expired, or the registry restarted): the client registers again.
//! - `DELETE /v1/instances/{service}/{instance_id}`: deregisters.
//! - `GET /v1/services/{service}`: the live instances, `[{"instance_id", "url"}]`, sorted by id.
//! - `GET /v1/services`: every service with its live instances.
//!
//! An instance not heard from for the TTL (default 10 s, three missed heartbeats) is dropped.
//! The client ([`RegistryClient`]) registers on start, heartbeats every [`HEARTBEAT`], resolves
//! instances through a cache refreshed every [`CACHE_TTL`] and picks them round-robin.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use http::StatusCode;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::http::HttpClient;
use crate::{Error, Result};

/// How often clients heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long the registry keeps an instance it has not heard from.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// How long the client trusts a resolved instance list.
pub const CACHE_TTL: Duration = Duration::from_secs(2);

/// A live instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Its unique id.
    pub instance_id: String,
    /// Its base URL (`http://host:port`).
    pub url: String,
}

/// A registration request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Service name.
    pub service: String,
    /// Instance id.
    pub instance_id: String,
    /// Base URL.
    pub url: String,
}

/// An instance's URL and when the registry last heard from it.
type Entry = (String, Instant);

/// The registry's table: service -> instance id -> (url, last heard from).
pub struct Registry {
    ttl: Duration,
    table: Mutex<HashMap<String, BTreeMap<String, Entry>>>,
}

impl Registry {
    /// An empty registry dropping instances silent for `ttl`.
    pub fn new(ttl: Duration) -> Registry {
        Registry { ttl, table: Mutex::new(HashMap::new()) }
    }

    /// Adds or refreshes an instance as of `now`.
    pub fn register(&self, r: Registration, now: Instant) {
        self.table.lock().entry(r.service).or_default().insert(r.instance_id, (r.url, now));
    }

    /// Refreshes an instance as of `now`; false when unknown (expired or never registered).
    pub fn heartbeat(&self, service: &str, instance_id: &str, now: Instant) -> bool {
        self.expire(now);
        match self.table.lock().get_mut(service).and_then(|s| s.get_mut(instance_id)) {
            Some(entry) => {
                entry.1 = now;
                true
            }
            None => false,
        }
    }

    /// Removes an instance; false when unknown.
    pub fn deregister(&self, service: &str, instance_id: &str) -> bool {
        self.table.lock().get_mut(service).is_some_and(|s| s.remove(instance_id).is_some())
    }

    /// The live instances of `service` as of `now`, sorted by id.
    pub fn instances(&self, service: &str, now: Instant) -> Vec<Instance> {
        self.expire(now);
        self.table
            .lock()
            .get(service)
            .map(|s| s.iter().map(|(id, (url, _))| Instance { instance_id: id.clone(), url: url.clone() }).collect())
            .unwrap_or_default()
    }

    /// Every service with live instances as of `now`.
    pub fn services(&self, now: Instant) -> BTreeMap<String, Vec<Instance>> {
        self.expire(now);
        let table = self.table.lock();
        table
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(name, s)| {
                let list =
                    s.iter().map(|(id, (url, _))| Instance { instance_id: id.clone(), url: url.clone() }).collect();
                (name.clone(), list)
            })
            .collect()
    }

    /// Drops instances silent for longer than the TTL as of `now`.
    pub fn expire(&self, now: Instant) {
        let mut table = self.table.lock();
        for (service, instances) in table.iter_mut() {
            instances.retain(|id, (_, seen)| {
                let alive = now.saturating_duration_since(*seen) <= self.ttl;
                if !alive {
                    tracing::warn!(%service, instance_id = %id, "instance expired after missed heartbeats");
                }
                alive
            });
        }
    }
}

fn bad_request(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, msg.into()).into_response()
}

/// The registry's routes.
pub fn routes(registry: Arc<Registry>) -> axum::Router {
    async fn register(
        State(reg): State<Arc<Registry>>,
        body: Result<Json<Registration>, axum::extract::rejection::JsonRejection>,
    ) -> Response {
        let Json(r) = match body {
            Ok(b) => b,
            Err(e) => return bad_request(e.body_text()),
        };
        if r.service.is_empty() || r.instance_id.is_empty() {
            return bad_request("service and instance_id must not be empty");
        }
        if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
            return bad_request(format!("url must be an http(s) URL, got {:?}", r.url));
        }
        tracing::info!(service = %r.service, instance_id = %r.instance_id, url = %r.url, "instance registered");
        let ttl = reg.ttl;
        reg.register(r, Instant::now());
        Json(serde_json::json!({ "ttl_ms": ttl.as_millis() as u64 })).into_response()
    }
    async fn heartbeat(State(reg): State<Arc<Registry>>, Path((service, id)): Path<(String, String)>) -> StatusCode {
        if reg.heartbeat(&service, &id, Instant::now()) { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND }
    }
    async fn deregister(State(reg): State<Arc<Registry>>, Path((service, id)): Path<(String, String)>) -> StatusCode {
        if reg.deregister(&service, &id) {
            tracing::info!(%service, instance_id = %id, "instance deregistered");
            StatusCode::NO_CONTENT
        } else {
            StatusCode::NOT_FOUND
        }
    }
    async fn instances(State(reg): State<Arc<Registry>>, Path(service): Path<String>) -> Json<Vec<Instance>> {
        Json(reg.instances(&service, Instant::now()))
    }
    async fn services(State(reg): State<Arc<Registry>>) -> Json<BTreeMap<String, Vec<Instance>>> {
        Json(reg.services(Instant::now()))
    }
    axum::Router::new()
        .route("/v1/instances", post(register))
        .route("/v1/instances/{service}/{instance_id}/heartbeat", put(heartbeat))
        .route("/v1/instances/{service}/{instance_id}", axum::routing::delete(deregister))
        .route("/v1/services", get(services))
        .route("/v1/services/{service}", get(instances))
        .with_state(registry)
}

/// Runs the registry service.
pub async fn run(ctx: crate::services::ServiceContext) -> Result<()> {
    let registry = Arc::new(Registry::new(DEFAULT_TTL));
    let sweeper = {
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                registry.expire(Instant::now());
            }
        })
    };
    let result = crate::services::serve(&ctx, routes(registry)).await;
    sweeper.abort();
    result
}

/// Instances resolved at a time.
type Resolved = (Instant, Vec<Instance>);

/// The client side: registration with heartbeats, and cached, round-robin resolution.
#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    http: HttpClient,
    cache: Arc<Mutex<HashMap<String, Resolved>>>,
    next: Arc<Mutex<HashMap<String, Arc<AtomicUsize>>>>,
}

impl RegistryClient {
    /// A client of the registry at `base` (e.g. `http://127.0.0.1:8081`).
    pub fn new(base: &str, http: HttpClient) -> RegistryClient {
        RegistryClient {
            base: base.trim_end_matches('/').to_owned(),
            http,
            cache: Arc::default(),
            next: Arc::default(),
        }
    }

    /// Registers once.
    pub async fn register(&self, r: &Registration) -> Result<()> {
        let resp = self.http.raw().post(format!("{}/v1/instances", self.base)).json(r).send().await?;
        check(resp, "registry").await.map(drop)
    }

    /// Registers, retrying until the registry answers, then heartbeats every [`HEARTBEAT`] for as
    /// long as the returned task runs (re-registering when the registry forgot the instance).
    /// Abort the task and call [`RegistryClient::deregister`] on shutdown.
    pub fn keep_registered(&self, r: Registration) -> tokio::task::JoinHandle<()> {
        let client = self.clone();
        tokio::spawn(async move {
            let mut registered = false;
            loop {
                if registered {
                    let url = format!("{}/v1/instances/{}/{}/heartbeat", client.base, r.service, r.instance_id);
                    match client.http.raw().put(url).send().await {
                        Ok(resp) if resp.status() == StatusCode::NOT_FOUND => {
                            tracing::warn!(service = %r.service, "registry forgot this instance, registering again");
                            registered = false;
                            continue;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                    }
                } else {
                    match client.register(&r).await {
                        Ok(()) => {
                            tracing::info!(service = %r.service, instance_id = %r.instance_id, "registered");
                            registered = true;
                        }
                        Err(e) => tracing::warn!(error = %e, "registration failed, retrying"),
                    }
                }
                tokio::time::sleep(if registered { HEARTBEAT } else { Duration::from_millis(300) }).await;
            }
        })
    }

    /// Deregisters (best effort: the registry expires the instance anyway).
    pub async fn deregister(&self, service: &str, instance_id: &str) {
        let url = format!("{}/v1/instances/{service}/{instance_id}", self.base);
        if let Err(e) = self.http.raw().delete(url).send().await {
            tracing::warn!(error = %e, "deregistration failed");
        }
    }

    /// The live instances of `service`, from the cache when it is fresher than [`CACHE_TTL`].
    pub async fn resolve(&self, service: &str) -> Result<Vec<Instance>> {
        if let Some((at, list)) = self.cache.lock().get(service)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(list.clone());
        }
        let req = self.http.raw().get(format!("{}/v1/services/{service}", self.base));
        let resp = self.http.send(req, Some("/v1/services/{service}")).await?;
        let list: Vec<Instance> = check(resp, "registry").await?.json().await?;
        self.cache.lock().insert(service.to_owned(), (Instant::now(), list.clone()));
        Ok(list)
    }

    /// Forgets the cached instances of `service` (after a call to one of them failed to connect).
    pub fn invalidate(&self, service: &str) {
        self.cache.lock().remove(service);
    }

    /// The next instance of `service`, round-robin over the live ones.
    pub async fn pick(&self, service: &str) -> Result<Instance> {
        let list = self.resolve(service).await?;
        let counter = self.next.lock().entry(service.to_owned()).or_default().clone();
        pick_round_robin(&list, &counter).ok_or_else(|| Error::NoInstance(service.to_owned()))
    }
}

/// The instance after the last one `counter` handed out.
pub fn pick_round_robin(list: &[Instance], counter: &AtomicUsize) -> Option<Instance> {
    if list.is_empty() {
        return None;
    }
    Some(list[counter.fetch_add(1, Ordering::Relaxed) % list.len()].clone())
}

/// `resp` when its status is a success, else [`Error::Upstream`] with the start of its body.
pub async fn check(resp: reqwest::Response, service: &str) -> Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let mut body = resp.text().await.unwrap_or_default();
    body.truncate(200);
    Err(Error::Upstream { service: service.to_owned(), status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str) -> Registration {
        Registration { service: "catalog".into(), instance_id: id.into(), url: format!("http://{id}") }
    }

    #[test]
    fn instances_expire_after_missed_heartbeats() {
        let r = Registry::new(Duration::from_secs(10));
        let t0 = Instant::now();
        r.register(reg("a"), t0);
        r.register(reg("b"), t0);
        assert_eq!(r.instances("catalog", t0 + Duration::from_secs(5)).len(), 2);
        assert!(r.heartbeat("catalog", "a", t0 + Duration::from_secs(8)));
        // b missed its heartbeats: gone at 11 s; a heartbeat at 8 s keeps a until 18 s.
        let live = r.instances("catalog", t0 + Duration::from_secs(11));
        assert_eq!(live, vec![Instance { instance_id: "a".into(), url: "http://a".into() }]);
        assert!(!r.heartbeat("catalog", "b", t0 + Duration::from_secs(12)), "an expired instance must re-register");
        assert!(r.instances("catalog", t0 + Duration::from_secs(19)).is_empty());
        assert!(r.services(t0 + Duration::from_secs(19)).is_empty());
    }

    #[test]
    fn deregistered_instances_are_gone_at_once() {
        let r = Registry::new(DEFAULT_TTL);
        let now = Instant::now();
        r.register(reg("a"), now);
        assert!(r.deregister("catalog", "a"));
        assert!(!r.deregister("catalog", "a"));
        assert!(r.instances("catalog", now).is_empty());
    }

    #[test]
    fn round_robin_visits_every_instance_in_turn() {
        let list = vec![
            Instance { instance_id: "a".into(), url: "http://a".into() },
            Instance { instance_id: "b".into(), url: "http://b".into() },
        ];
        let counter = AtomicUsize::new(0);
        let picked: Vec<String> = (0..6).map(|_| pick_round_robin(&list, &counter).unwrap().instance_id).collect();
        assert_eq!(picked, ["a", "b", "a", "b", "a", "b"]);
        assert!(pick_round_robin(&[], &counter).is_none());
    }

    #[tokio::test]
    async fn a_forgotten_instance_registers_again_on_its_next_heartbeat() {
        let registry = Arc::new(Registry::new(DEFAULT_TTL));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn({
            let registry = registry.clone();
            async move { axum::serve(listener, routes(registry)).await }
        });
        let client = RegistryClient::new(&format!("http://{addr}"), HttpClient::default());
        let task = client.keep_registered(reg("a"));
        let listed = |r: &Registry| r.instances("catalog", Instant::now()).len();
        let wait_for = |want: usize| {
            let registry = registry.clone();
            async move {
                for _ in 0..100 {
                    if listed(&registry) == want {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                false
            }
        };
        assert!(wait_for(1).await, "registered on start");
        // The registry forgets it (as after a restart): the next heartbeat gets 404 and re-registers.
        assert!(registry.deregister("catalog", "a"));
        assert_eq!(listed(&registry), 0);
        assert!(wait_for(1).await, "registered again within a heartbeat");
        task.abort();
        client.deregister("catalog", "a").await;
        assert_eq!(listed(&registry), 0);
        server.abort();
    }

    #[tokio::test]
    async fn client_registers_resolves_and_round_robins_over_http() {
        let registry = Arc::new(Registry::new(DEFAULT_TTL));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, routes(registry)).await });
        let client = RegistryClient::new(&format!("http://{addr}"), HttpClient::default());
        client.register(&reg("a")).await.unwrap();
        client.register(&reg("b")).await.unwrap();
        let picks: Vec<String> = futures::future::join_all((0..4).map(|_| client.pick("catalog")))
            .await
            .into_iter()
            .map(|i| i.unwrap().instance_id)
            .collect();
        assert_eq!(picks.iter().filter(|i| *i == "a").count(), 2, "{picks:?}");
        assert!(matches!(client.pick("nothing").await, Err(Error::NoInstance(_))));
        let bad = client
            .register(&Registration { service: "x".into(), instance_id: "y".into(), url: "ftp://z".into() })
            .await;
        assert!(matches!(bad, Err(Error::Upstream { status: 400, .. })), "{bad:?}");
        server.abort();
    }
}
