//! The orders service: the checkout saga, the transactional outbox and the order-history read model.
//!
//! - `POST /orders` `{"user", "items": [{"sku", "quantity", "price_cents"}]}`: writes the order (`pending`), its
//!   `order.placed` event (outbox) and its saga in one transaction, then runs the saga: reserve stock (inventory,
//!   gRPC) -> charge payment (payments) -> schedule shipping (shipping), compensating in reverse when a step
//!   fails. 201 `{"order_id", "status": "confirmed"}`; 409 `{"order_id", "status": "failed", "failed_step",
//!   "reason"}` when the saga compensated; 202 `{"status": "pending"}` when it could not finish (it resumes in
//!   the background); 400 on a bad order.
//! - `GET /orders/{id}`: the order (the write model).
//! - `GET /orders/history?user=`: the CQRS read model, a table maintained from the order events (`order.placed`,
//!   `order.confirmed`, `order.failed`) consumed like any other subscriber's (eventually consistent).
//!
//! The saga's end writes the order status and its `order.confirmed` / `order.failed` event in one transaction and
//! counts `demo.orders.placed` / `demo.orders.failed`. The outbox relay publishes events through the broker
//! (RabbitMQ or HTTP to shipping, notifications and orders itself).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Result;
use crate::broker::{self, Handler, Message, Publisher};
use crate::db::Db;
use crate::patterns::inbox;
use crate::patterns::outbox::{self, Relay};
use crate::patterns::saga::{self, Saga, SagaDefinition, SagaOutcome, StepError};
use crate::services::ServiceContext;
use crate::services::inventory::{InventoryClient, proto};

/// Topics orders publishes.
pub const TOPICS: [&str; 3] = ["order.placed", "order.confirmed", "order.failed"];
/// Services the HTTP fallback delivers order events to.
pub const SUBSCRIBERS: [&str; 3] = ["shipping", "notifications", "orders"];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, items TEXT NOT NULL, total_cents INTEGER NOT NULL,
    status TEXT NOT NULL, failed_step TEXT, reason TEXT, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS order_history (
    order_id TEXT PRIMARY KEY, user TEXT NOT NULL, status TEXT NOT NULL, total_cents INTEGER NOT NULL,
    item_count INTEGER NOT NULL, reason TEXT, updated_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS order_history_user ON order_history (user, updated_ms);";

/// An order line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderItem {
    /// The SKU.
    pub sku: String,
    /// Units (1-99).
    pub quantity: u32,
    /// Unit price in cents.
    pub price_cents: i64,
}

/// A new order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// Who orders.
    pub user: String,
    /// What.
    pub items: Vec<OrderItem>,
}

impl NewOrder {
    fn validate(&self) -> Result<i64, String> {
        if self.user.is_empty() || self.user.len() > 64 {
            return Err("user must be 1-64 characters".into());
        }
        if self.items.is_empty() || self.items.len() > 50 {
            return Err("an order has 1-50 items".into());
        }
        let mut total = 0i64;
        for (i, item) in self.items.iter().enumerate() {
            if item.sku.is_empty() || item.sku.len() > 64 {
                return Err(format!("items[{i}].sku must be 1-64 characters"));
            }
            if !(1..=99).contains(&item.quantity) {
                return Err(format!("items[{i}].quantity must be 1-99"));
            }
            if !(0..=100_000_000).contains(&item.price_cents) {
                return Err(format!("items[{i}].price_cents must be 0-100000000"));
            }
            total += item.price_cents * i64::from(item.quantity);
        }
        Ok(total)
    }
}

fn counter(
    name: &'static str,
    cell: &'static OnceLock<opentelemetry::metrics::Counter<u64>>,
) -> &'static opentelemetry::metrics::Counter<u64> {
    cell.get_or_init(|| crate::telemetry::meter().u64_counter(name).build())
}

/// The checkout saga: reserve stock -> charge payment -> schedule shipping.
pub struct OrderSaga {
    ctx: ServiceContext,
    inventory: InventoryClient,
    relay: OnceLock<Relay>,
}

async fn post_json(
    ctx: &ServiceContext,
    service: &str,
    path: &str,
    template: &str,
    body: &Value,
) -> Result<Value, StepError> {
    let base = ctx.url_of(service).await.map_err(StepError::new)?;
    let request = ctx.http.raw().post(format!("{base}{path}")).json(body);
    let response = ctx.http.send(request, Some(template)).await.map_err(StepError::new)?;
    let status = response.status();
    let text = response.text().await.map_err(StepError::new)?;
    if !status.is_success() {
        return Err(StepError(format!("{service} answered {status}: {}", text.chars().take(200).collect::<String>())));
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl SagaDefinition for OrderSaga {
    const KIND: &'static str = "checkout";
    const STEPS: &'static [&'static str] = &["reserve_stock", "charge_payment", "schedule_shipping"];

    async fn execute(&self, saga_id: &str, step: usize, input: &Value, _outputs: &[Value]) -> Result<Value, StepError> {
        let order: NewOrder = serde_json::from_value(input.clone()).map_err(StepError::new)?;
        match step {
            0 => {
                let items =
                    order.items.iter().map(|i| proto::Item { sku: i.sku.clone(), quantity: i.quantity }).collect();
                let reply = self
                    .inventory
                    .reserve(saga_id, items)
                    .await
                    .map_err(|s| StepError(format!("inventory: {}", s.message())))?;
                Ok(json!({ "reserved": reply.reserved }))
            }
            1 => {
                let total: i64 = order.items.iter().map(|i| i.price_cents * i64::from(i.quantity)).sum();
                post_json(
                    &self.ctx,
                    "payments",
                    "/payments",
                    "/payments",
                    &json!({ "order_id": saga_id, "amount_cents": total.max(1) }),
                )
                .await
            }
            _ => {
                post_json(
                    &self.ctx,
                    "shipping",
                    "/shipments",
                    "/shipments",
                    &json!({ "order_id": saga_id, "user": order.user }),
                )
                .await
            }
        }
    }

    async fn compensate(
        &self,
        saga_id: &str,
        step: usize,
        _input: &Value,
        _output: Option<&Value>,
    ) -> Result<(), StepError> {
        match step {
            0 => self
                .inventory
                .release(saga_id)
                .await
                .map(drop)
                .map_err(|s| StepError(format!("inventory: {}", s.message()))),
            1 => post_json(
                &self.ctx,
                "payments",
                &format!("/payments/{saga_id}/refund"),
                "/payments/{order_id}/refund",
                &json!({}),
            )
            .await
            .map(drop),
            _ => post_json(
                &self.ctx,
                "shipping",
                &format!("/shipments/{saga_id}/cancel"),
                "/shipments/{order_id}/cancel",
                &json!({}),
            )
            .await
            .map(drop),
        }
    }

    fn finish(
        &self,
        tx: &rusqlite::Transaction<'_>,
        saga_id: &str,
        input: &Value,
        outcome: &SagaOutcome,
    ) -> rusqlite::Result<()> {
        static PLACED: OnceLock<opentelemetry::metrics::Counter<u64>> = OnceLock::new();
        static FAILED: OnceLock<opentelemetry::metrics::Counter<u64>> = OnceLock::new();
        let user = input.get("user").and_then(Value::as_str).unwrap_or_default();
        let headers: BTreeMap<String, String> = tx
            .query_row("SELECT headers FROM sagas WHERE id = ?1", [saga_id], |r| r.get::<_, String>(0))
            .map(|h| serde_json::from_str(&h).unwrap_or_default())?;
        let now = crate::patterns::now_ms();
        match outcome {
            SagaOutcome::Completed => {
                tx.execute(
                    "UPDATE orders SET status = 'confirmed', updated_ms = ?2 WHERE id = ?1",
                    rusqlite::params![saga_id, now],
                )?;
                outbox::enqueue(tx, "order.confirmed", &json!({ "order_id": saga_id, "user": user }), &headers)?;
                counter("demo.orders.placed", &PLACED).add(1, &[]);
            }
            SagaOutcome::Compensated { failed_step, error } => {
                tx.execute(
                    "UPDATE orders SET status = 'failed', failed_step = ?2, reason = ?3, updated_ms = ?4 WHERE id = ?1",
                    rusqlite::params![saga_id, failed_step, error, now],
                )?;
                outbox::enqueue(
                    tx,
                    "order.failed",
                    &json!({ "order_id": saga_id, "user": user, "failed_step": failed_step, "reason": error }),
                    &headers,
                )?;
                counter("demo.orders.failed", &FAILED)
                    .add(1, &[opentelemetry::KeyValue::new("failed_step", failed_step.clone())]);
            }
        }
        if let Some(relay) = self.relay.get() {
            relay.wake();
        }
        Ok(())
    }
}

/// The orders service's state: its database, saga orchestrator and outbox relay.
#[derive(Clone)]
pub struct Orders {
    db: Db,
    saga: Saga<OrderSaga>,
    relay: Relay,
}

impl Orders {
    /// Opens the orders tables in `db` and builds the saga (calling services through `ctx`) and the relay
    /// (publishing through `publisher`).
    pub fn new(ctx: ServiceContext, db: Db, publisher: Publisher) -> Result<Orders> {
        db.migrate(SCHEMA)?;
        db.migrate(outbox::SCHEMA)?;
        db.migrate(saga::SCHEMA)?;
        db.migrate(inbox::SCHEMA)?;
        let relay = Relay::new(db.clone(), publisher, Duration::from_millis(500));
        let def = Arc::new(OrderSaga { inventory: InventoryClient::new(ctx.clone()), ctx, relay: OnceLock::new() });
        let _ = def.relay.set(relay.clone());
        Ok(Orders { saga: Saga::new(db.clone(), def), db, relay })
    }

    /// The relay (run it with [`Relay::run`]).
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Resumes sagas left pending (at start, and periodically for compensations that failed).
    pub async fn resume_pending(&self) -> usize {
        self.saga.resume_pending().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "pending sagas not resumed");
            0
        })
    }

    /// The read-model projector: applies one order event to `order_history` (idempotently, through the inbox).
    pub fn projector(&self) -> Handler {
        let db = self.db.clone();
        Arc::new(move |message: Message| {
            let db = db.clone();
            Box::pin(async move {
                if !TOPICS.contains(&message.topic.as_str()) {
                    return Ok(());
                }
                inbox::process_once(&db, &message, project).await.map(drop).map_err(|e| e.to_string())
            })
        })
    }
}

fn project(tx: &rusqlite::Transaction<'_>, message: &Message) -> rusqlite::Result<()> {
    let order_id = message.payload.get("order_id").and_then(Value::as_str).unwrap_or_default();
    let status = match message.topic.as_str() {
        "order.placed" => "pending",
        "order.confirmed" => "confirmed",
        _ => "failed",
    };
    let reason = message.payload.get("reason").and_then(Value::as_str);
    let now = crate::patterns::now_ms();
    // The placed event carries user, total and items; later events only move the status forward.
    tx.execute(
        "INSERT INTO order_history (order_id, user, status, total_cents, item_count, reason, updated_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (order_id) DO UPDATE SET \
         status = CASE WHEN excluded.status = 'pending' THEN order_history.status ELSE excluded.status END, \
         reason = COALESCE(excluded.reason, order_history.reason), \
         total_cents = MAX(order_history.total_cents, excluded.total_cents), \
         item_count = MAX(order_history.item_count, excluded.item_count), updated_ms = excluded.updated_ms",
        rusqlite::params![
            order_id,
            message.payload.get("user").and_then(Value::as_str).unwrap_or_default(),
            status,
            message.payload.get("total_cents").and_then(Value::as_i64).unwrap_or(0),
            message.payload.get("item_count").and_then(Value::as_i64).unwrap_or(0),
            reason,
            now
        ],
    )?;
    Ok(())
}

async fn place(
    State(orders): State<Orders>,
    body: Result<Json<NewOrder>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(order) = match body {
        Ok(b) => b,
        Err(e) => return (e.status(), format!("bad order: {}", e.body_text())).into_response(),
    };
    let total = match order.validate() {
        Ok(t) => t,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let id = format!("ord_{}", crate::patterns::new_id());
    let headers = broker::current_trace_headers();
    let input = serde_json::to_value(&order).unwrap_or(Value::Null);
    const SQL: &str = "INSERT INTO orders (...) VALUES (...); INSERT INTO outbox (...) VALUES (...); INSERT INTO sagas (...) VALUES (...)";
    let (oid, placed) = (
        id.clone(),
        json!({ "order_id": id, "user": order.user, "total_cents": total, "item_count": order.items.len() }),
    );
    let created = orders
        .db
        .call("INSERT", "orders", SQL, move |conn| {
            let tx = conn.transaction()?;
            let now = crate::patterns::now_ms();
            tx.execute(
                "INSERT INTO orders (id, user, items, total_cents, status, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
                rusqlite::params![oid, order.user, input["items"].to_string(), total, now],
            )?;
            outbox::enqueue(&tx, "order.placed", &placed, &headers)?;
            saga::begin(&tx, OrderSaga::KIND, &oid, &input, &headers)?;
            tx.commit()
        })
        .await;
    if let Err(e) = created {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("order not stored: {e}")).into_response();
    }
    orders.relay.wake();
    tracing::info!(order.id = %id, total_cents = total, "order placed, running the checkout saga");
    match orders.saga.run(&id).await {
        Ok(SagaOutcome::Completed) => {
            (StatusCode::CREATED, Json(json!({ "order_id": id, "status": "confirmed" }))).into_response()
        }
        Ok(SagaOutcome::Compensated { failed_step, error }) => (
            StatusCode::CONFLICT,
            Json(json!({ "order_id": id, "status": "failed", "failed_step": failed_step, "reason": error })),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(order.id = %id, error = %e, "checkout saga pending");
            (StatusCode::ACCEPTED, Json(json!({ "order_id": id, "status": "pending" }))).into_response()
        }
    }
}

async fn get_order(State(orders): State<Orders>, Path(id): Path<String>) -> Response {
    const SQL: &str = "SELECT id, user, items, total_cents, status, failed_step, reason FROM orders WHERE id = ?1";
    let found = orders
        .db
        .call("SELECT", "orders", SQL, move |conn| {
            use rusqlite::OptionalExtension;
            conn.query_row(SQL, [&id], |r| {
                Ok(json!({
                    "order_id": r.get::<_, String>(0)?,
                    "user": r.get::<_, String>(1)?,
                    "items": serde_json::from_str::<Value>(&r.get::<_, String>(2)?).unwrap_or(Value::Null),
                    "total_cents": r.get::<_, i64>(3)?,
                    "status": r.get::<_, String>(4)?,
                    "failed_step": r.get::<_, Option<String>>(5)?,
                    "reason": r.get::<_, Option<String>>(6)?,
                }))
            })
            .optional()
        })
        .await;
    match found {
        Ok(Some(order)) => Json(order).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such order").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("order lookup failed: {e}")).into_response(),
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    user: Option<String>,
}

async fn history(State(orders): State<Orders>, Query(q): Query<HistoryQuery>) -> Response {
    let Some(user) = q.user.filter(|u| !u.is_empty() && u.len() <= 64) else {
        return (StatusCode::BAD_REQUEST, "user (1-64 characters) is required").into_response();
    };
    const SQL: &str = "SELECT order_id, status, total_cents, item_count, reason, updated_ms FROM order_history \
                       WHERE user = ?1 ORDER BY updated_ms DESC LIMIT 100";
    let rows = orders
        .db
        .call("SELECT", "order_history", SQL, move |conn| {
            let mut stmt = conn.prepare_cached(SQL)?;
            let rows = stmt.query_map([&user], |r| {
                Ok(json!({
                    "order_id": r.get::<_, String>(0)?,
                    "status": r.get::<_, String>(1)?,
                    "total_cents": r.get::<_, i64>(2)?,
                    "item_count": r.get::<_, i64>(3)?,
                    "reason": r.get::<_, Option<String>>(4)?,
                    "updated_ms": r.get::<_, i64>(5)?,
                }))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .await;
    match rows {
        Ok(rows) => Json(json!({ "orders": rows })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("history lookup failed: {e}")).into_response(),
    }
}

/// The orders routes.
pub fn routes(orders: Orders) -> axum::Router {
    axum::Router::new()
        .route("/orders", axum::routing::post(place))
        .route("/orders/history", axum::routing::get(history))
        .route("/orders/{id}", axum::routing::get(get_order))
        .with_state(orders)
}

/// Builds the orders service on `ctx` and starts its background work (relay, saga resumer, read-model
/// consumer), which runs until `shutdown` resolves; returns the routes to serve.
pub async fn start(
    ctx: &ServiceContext,
    db: Db,
    shutdown: impl Future<Output = ()> + Send + Clone + 'static,
) -> Result<axum::Router> {
    let publisher = Publisher::for_service(ctx, &SUBSCRIBERS);
    let orders = Orders::new(ctx.clone(), db, publisher)?;
    tokio::spawn(orders.relay().clone().run(shutdown.clone()));
    let resumer = orders.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            resumer.resume_pending().await;
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
    });
    let consumer = broker::subscribe(ctx, "orders.history", &TOPICS, orders.projector(), shutdown);
    Ok(routes(orders).merge(consumer))
}

/// Runs the orders service.
pub async fn run(ctx: ServiceContext) -> Result<()> {
    let shutdown = futures::FutureExt::shared(Box::pin(crate::services::shutdown_signal()));
    let routes = start(&ctx, ctx.db()?, shutdown).await?;
    crate::services::serve(&ctx, routes).await
}
