//! The load generator: simulated users walking through the shop via the gateway.
//!
//! Journeys start at `--rate` per second (exponential inter-arrival times) for a random idle user
//! among `--users`; a user walks one journey at a time, with exponential think times of mean
//! `--think` between steps:
//! - browse (50%): list products, search, view two products;
//! - buy (35%): list, view a product, add one to three products to the cart, view the cart,
//!   check out (`POST /api/orders` `{"user", "items": [{"sku", "quantity", "price_cents"}]}`), empty
//!   the cart, view the order history;
//! - history (15%): view the order history.
//!
//! A user logs in (`POST /login`) before its first step and again when its token is refused. Every
//! request is a CLIENT span with no parent: it starts its trace. Outcomes are counted per step
//! (`demo.loadgen.requests{step, outcome}`) and per journey (`demo.loadgen.journeys{journey,
//! outcome}`), logged every 10 s and printed on stdout when the generator stops.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use parking_lot::Mutex;
use rand::RngExt;
use serde_json::{Value, json};

use crate::services::ServiceContext;
use crate::{Error, Result};

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// 429.
    RateLimited,
    /// Another 4xx.
    ClientError,
    /// 5xx.
    ServerError,
    /// No answer (connection refused, timeout).
    Failed,
}

impl Outcome {
    fn of(status: u16) -> Outcome {
        match status {
            200..=299 => Outcome::Ok,
            429 => Outcome::RateLimited,
            400..=499 => Outcome::ClientError,
            _ => Outcome::ServerError,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::RateLimited => "rate_limited",
            Outcome::ClientError => "client_error",
            Outcome::ServerError => "server_error",
            Outcome::Failed => "failed",
        }
    }
}

/// Outcome counts, by step and by journey.
#[derive(Default)]
pub struct Stats {
    steps: Mutex<BTreeMap<(&'static str, Outcome), u64>>,
    journeys: Mutex<BTreeMap<(&'static str, bool), u64>>,
}

impl Stats {
    /// How many `step` requests ended with `outcome`.
    pub fn count(&self, step: &str, outcome: Outcome) -> u64 {
        self.steps.lock().iter().filter(|((s, o), _)| *s == step && *o == outcome).map(|(_, n)| n).sum()
    }

    /// One line per step and outcome, then per journey.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for ((step, outcome), n) in self.steps.lock().iter() {
            out.push_str(&format!("{step} {}: {n}\n", outcome.as_str()));
        }
        for ((journey, ok), n) in self.journeys.lock().iter() {
            out.push_str(&format!("journey {journey} {}: {n}\n", if *ok { "completed" } else { "abandoned" }));
        }
        out
    }
}

struct Meters {
    requests: Counter<u64>,
    journeys: Counter<u64>,
}

struct Shop {
    ctx: ServiceContext,
    target: String,
    stats: Arc<Stats>,
    meters: Meters,
    think: Duration,
    tokens: Mutex<HashMap<String, String>>,
}

/// A step that did not succeed: the journey stops there.
struct Abandon;

const SEARCH_TERMS: &[&str] = &["shoes", "jacket", "tent", "wool", "water", "bag", "light", "map"];

impl Shop {
    fn record(&self, step: &'static str, outcome: Outcome) {
        *self.stats.steps.lock().entry((step, outcome)).or_default() += 1;
        self.meters.requests.add(1, &[KeyValue::new("step", step), KeyValue::new("outcome", outcome.as_str())]);
    }

    async fn think(&self) {
        let mean = self.think.as_secs_f64();
        if mean > 0.0 {
            let u: f64 = rand::rng().random_range(f64::EPSILON..1.0);
            tokio::time::sleep(Duration::from_secs_f64((-u.ln() * mean).min(mean * 5.0))).await;
        }
    }

    /// Sends one request as the root of a new trace; the JSON answer when it succeeded.
    async fn step(
        &self,
        step: &'static str,
        user: &str,
        method: http::Method,
        path: &str,
        template: &str,
        body: Option<Value>,
    ) -> Result<Value, Abandon> {
        for attempt in 0..2 {
            let token = match self.token(user).await {
                Some(t) => t,
                None => return Err(Abandon),
            };
            let mut req =
                self.ctx.http.raw().request(method.clone(), format!("{}{path}", self.target)).bearer_auth(token);
            if let Some(b) = &body {
                req = req.json(b);
            }
            // Journeys run in tasks without a current span: the client span is the trace's root.
            let result = self.ctx.http.send(req, Some(template)).await;
            match result {
                Ok(resp) if resp.status() == http::StatusCode::UNAUTHORIZED && attempt == 0 => {
                    self.tokens.lock().remove(user);
                    continue;
                }
                Ok(resp) => {
                    let outcome = Outcome::of(resp.status().as_u16());
                    self.record(step, outcome);
                    if outcome != Outcome::Ok {
                        return Err(Abandon);
                    }
                    let bytes = resp.bytes().await.map_err(|_| Abandon)?;
                    return Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
                }
                Err(_) => {
                    self.record(step, Outcome::Failed);
                    return Err(Abandon);
                }
            }
        }
        Err(Abandon)
    }

    async fn token(&self, user: &str) -> Option<String> {
        if let Some(t) = self.tokens.lock().get(user) {
            return Some(t.clone());
        }
        let req = self
            .ctx
            .http
            .raw()
            .post(format!("{}/login", self.target))
            .json(&json!({ "user": user, "password": crate::gateway::DEMO_PASSWORD }));
        let resp = self.ctx.http.send(req, Some("/login")).await;
        let resp = match resp {
            Ok(r) => r,
            Err(_) => {
                self.record("login", Outcome::Failed);
                return None;
            }
        };
        let outcome = Outcome::of(resp.status().as_u16());
        self.record("login", outcome);
        if outcome != Outcome::Ok {
            return None;
        }
        let v: Value = resp.json().await.ok()?;
        let token = v["token"].as_str()?.to_owned();
        self.tokens.lock().insert(user.to_owned(), token.clone());
        Some(token)
    }

    async fn products(&self, user: &str) -> Result<Vec<Value>, Abandon> {
        let list = self.step("list_products", user, http::Method::GET, "/api/products", "/api/products", None).await?;
        Ok(list.as_array().cloned().unwrap_or_default())
    }

    async fn view(&self, user: &str, products: &[Value]) -> Result<Option<Value>, Abandon> {
        let Some(p) = pick(products) else { return Ok(None) };
        let id = p["id"].as_i64().unwrap_or(1);
        let path = format!("/api/products/{id}");
        Ok(Some(self.step("view_product", user, http::Method::GET, &path, "/api/products/{id}", None).await?))
    }

    async fn browse(&self, user: &str) -> Result<(), Abandon> {
        let products = self.products(user).await?;
        self.think().await;
        let term = SEARCH_TERMS[rand::rng().random_range(0..SEARCH_TERMS.len())];
        let path = format!("/api/products/search?q={term}");
        self.step("search", user, http::Method::GET, &path, "/api/products/search", None).await?;
        for _ in 0..2 {
            self.think().await;
            self.view(user, &products).await?;
        }
        Ok(())
    }

    async fn buy(&self, user: &str) -> Result<(), Abandon> {
        let products = self.products(user).await?;
        self.think().await;
        self.view(user, &products).await?;
        let lines = rand::rng().random_range(1..=3);
        for _ in 0..lines {
            self.think().await;
            let Some(p) = pick(&products) else { break };
            let body = json!({ "product_id": p["id"], "quantity": rand::rng().random_range(1..=2) });
            self.step("add_to_cart", user, http::Method::POST, "/api/cart/items", "/api/cart/items", Some(body))
                .await?;
        }
        self.think().await;
        let cart = self.step("view_cart", user, http::Method::GET, "/api/cart", "/api/cart", None).await?;
        let items: Vec<Value> = cart["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| json!({ "sku": i["sku"], "quantity": i["quantity"], "price_cents": i["price_cents"] }))
            .collect();
        if items.is_empty() {
            return Err(Abandon);
        }
        self.think().await;
        let order = json!({ "user": user, "items": items });
        self.step("checkout", user, http::Method::POST, "/api/orders", "/api/orders", Some(order)).await?;
        self.step("clear_cart", user, http::Method::DELETE, "/api/cart", "/api/cart", None).await?;
        self.think().await;
        self.history(user).await
    }

    async fn history(&self, user: &str) -> Result<(), Abandon> {
        let path = format!("/api/orders/history?user={user}");
        self.step("order_history", user, http::Method::GET, &path, "/api/orders/history", None).await.map(drop)
    }

    async fn journey(&self, user: &str) {
        let roll: f64 = rand::rng().random();
        let (name, result) = if roll < 0.5 {
            ("browse", self.browse(user).await)
        } else if roll < 0.85 {
            ("buy", self.buy(user).await)
        } else {
            ("history", self.history(user).await)
        };
        let ok = result.is_ok();
        *self.stats.journeys.lock().entry((name, ok)).or_default() += 1;
        let outcome = if ok { "completed" } else { "abandoned" };
        self.meters.journeys.add(1, &[KeyValue::new("journey", name), KeyValue::new("outcome", outcome)]);
    }
}

fn pick(items: &[Value]) -> Option<&Value> {
    if items.is_empty() { None } else { items.get(rand::rng().random_range(0..items.len())) }
}

/// Finds the gateway: `--target`, else the registry (waiting up to a minute for it to appear).
async fn target(ctx: &ServiceContext) -> Result<String> {
    if let Some(t) = &ctx.cfg.load.target {
        return Ok(t.trim_end_matches('/').to_owned());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ctx.url_of(crate::ServiceName::Gateway.as_str()).await {
            Ok(url) => return Ok(url),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Runs journeys until SIGINT/SIGTERM or `--duration`; returns the counts.
pub async fn generate(ctx: ServiceContext) -> Result<Arc<Stats>> {
    let load = ctx.cfg.load.clone();
    if !(load.rate > 0.0 && load.rate <= 10_000.0) {
        return Err(Error::Config(format!("rate must be in (0, 10000] journeys per second, got {}", load.rate)));
    }
    if load.users == 0 {
        return Err(Error::Config("users must be at least 1".into()));
    }
    let target = target(&ctx).await?;
    tracing::info!(%target, rate = load.rate, users = load.users, "generating load");
    let meter = crate::telemetry::meter();
    let shop = Arc::new(Shop {
        target,
        stats: Arc::default(),
        meters: Meters {
            requests: meter
                .u64_counter("demo.loadgen.requests")
                .with_description("Load generator requests by step and outcome")
                .build(),
            journeys: meter
                .u64_counter("demo.loadgen.journeys")
                .with_description("User journeys by kind and outcome")
                .build(),
        },
        think: load.think,
        tokens: Mutex::default(),
        ctx,
    });
    let busy: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(vec![false; load.users as usize]));
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let stop = crate::services::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let u: f64 = rand::rng().random_range(f64::EPSILON..1.0);
        let gap = Duration::from_secs_f64(-u.ln() / load.rate);
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(gap) => {}
        }
        if load.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        while tasks.try_join_next().is_some() {}
        let idle: Vec<usize> = busy.lock().iter().enumerate().filter(|(_, b)| !**b).map(|(i, _)| i).collect();
        if let Some(&i) = idle.get(rand::rng().random_range(0..idle.len().max(1))) {
            busy.lock()[i] = true;
            let (shop, busy) = (shop.clone(), busy.clone());
            tasks.spawn(async move {
                shop.journey(&format!("user-{i}")).await;
                busy.lock()[i] = false;
            });
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            tracing::info!(summary = %shop.stats.summary().replace('\n', "; "), "load so far");
        }
    }
    // Journeys in flight get a moment to finish, then are dropped.
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} }).await;
    Ok(shop.stats.clone())
}

/// Runs the load generator (see the module doc); prints the counts on stdout when it stops.
pub async fn run(ctx: ServiceContext) -> Result<()> {
    let stats = generate(ctx).await?;
    let summary = stats.summary();
    tracing::info!(summary = %summary.replace('\n', "; "), "load generator stopped");
    println!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceName;
    use crate::config::ServiceConfig;
    use crate::services::orders::NewOrder;

    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// Journeys through the real gateway and catalog; orders is replaced by a recorder that only
    /// accepts the orders service's own request type, so the checkout body must match it.
    #[tokio::test]
    async fn journeys_run_through_the_gateway_and_checkouts_match_the_orders_api() {
        let db = crate::db::Db::in_memory("catalog").unwrap();
        crate::catalog::prepare(&db).unwrap();
        let catalog = serve(crate::catalog::routes(db)).await;
        let placed: Arc<Mutex<Vec<NewOrder>>> = Arc::default();
        let orders = serve(
            axum::Router::new()
                .route(
                    "/orders",
                    axum::routing::post({
                        let placed = placed.clone();
                        move |axum::Json(order): axum::Json<NewOrder>| async move {
                            placed.lock().push(order);
                            (http::StatusCode::CREATED, axum::Json(json!({ "status": "confirmed" })))
                        }
                    }),
                )
                .route("/orders/history", axum::routing::get(|| async { axum::Json(json!([])) })),
        )
        .await;
        let gw_ctx = ServiceContext::new(ServiceName::Gateway, ServiceConfig::for_test(std::env::temp_dir())).unwrap();
        gw_ctx.set_peer("catalog", &catalog);
        gw_ctx.set_peer("orders", &orders);
        let gateway = serve(crate::gateway::app(gw_ctx).unwrap()).await;

        let mut cfg = ServiceConfig::for_test(std::env::temp_dir());
        cfg.load = crate::config::LoadArgs {
            target: Some(gateway),
            rate: 40.0,
            users: 4,
            think: Duration::ZERO,
            duration: Some(Duration::from_secs(3)),
        };
        let stats = generate(ServiceContext::new(ServiceName::Loadgen, cfg).unwrap()).await.unwrap();
        let summary = stats.summary();
        assert!(stats.count("checkout", Outcome::Ok) > 0, "{summary}");
        assert!(stats.count("search", Outcome::Ok) > 0, "{summary}");
        assert!(stats.count("order_history", Outcome::Ok) > 0, "{summary}");
        assert!(!summary.contains("client_error") && !summary.contains("server_error"), "{summary}");
        let placed = placed.lock();
        assert_eq!(placed.len() as u64, stats.count("checkout", Outcome::Ok));
        for order in placed.iter() {
            assert!(order.user.starts_with("user-"), "{order:?}");
            assert!(!order.items.is_empty() && order.items.iter().all(|i| i.sku.starts_with("SKU-")), "{order:?}");
        }
    }
}
