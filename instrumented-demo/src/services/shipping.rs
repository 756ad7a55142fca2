//! The shipping service: shipments scheduled by the checkout saga, dispatched when the order is confirmed.
//!
//! - `POST /shipments` `{"order_id", "user"}`: schedules a shipment (idempotent per order); 201.
//! - `POST /shipments/{order_id}/cancel`: the saga's compensation; 200 `{"cancelled"}` (false when there was
//!   nothing to cancel).
//! - `GET /shipments/{order_id}`: the shipment and its dispatch count.
//! - Consumes `order.confirmed` (RabbitMQ queue `shipping`, or `POST /events`): records one dispatch per order,
//!   idempotently through the inbox.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Result;
use crate::broker::{self, Handler, Message};
use crate::db::Db;
use crate::patterns::inbox;
use crate::services::ServiceContext;

/// Topics shipping consumes.
pub const TOPICS: [&str; 1] = ["order.confirmed"];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS shipments (
    order_id TEXT PRIMARY KEY, user TEXT NOT NULL, status TEXT NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dispatches (
    message_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, dispatched_ms INTEGER NOT NULL);";

/// Opens the shipping tables (and the inbox) in `db`.
pub fn migrate(db: &Db) -> Result<()> {
    db.migrate(SCHEMA)?;
    db.migrate(inbox::SCHEMA)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewShipment {
    order_id: String,
    user: String,
}

async fn schedule(
    State(db): State<Db>,
    body: Result<Json<NewShipment>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(s) = match body {
        Ok(b) => b,
        Err(e) => return (e.status(), format!("bad shipment: {}", e.body_text())).into_response(),
    };
    if s.order_id.is_empty() || s.order_id.len() > 128 {
        return (StatusCode::BAD_REQUEST, "order_id must be 1-128 characters").into_response();
    }
    const SQL: &str = "INSERT INTO shipments (order_id, user, status, updated_ms) VALUES (?1, ?2, 'scheduled', ?3) \
                       ON CONFLICT (order_id) DO NOTHING";
    let id = s.order_id.clone();
    match db
        .call("INSERT", "shipments", SQL, move |c| {
            c.execute(SQL, rusqlite::params![id, s.user, crate::patterns::now_ms()])
        })
        .await
    {
        Ok(_) => (StatusCode::CREATED, Json(json!({ "order_id": s.order_id, "status": "scheduled" }))).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("shipment not stored: {e}")).into_response(),
    }
}

async fn cancel(State(db): State<Db>, Path(order_id): Path<String>) -> Response {
    const SQL: &str =
        "UPDATE shipments SET status = 'cancelled', updated_ms = ?2 WHERE order_id = ?1 AND status != 'cancelled'";
    let id = order_id.clone();
    match db
        .call("UPDATE", "shipments", SQL, move |c| c.execute(SQL, rusqlite::params![id, crate::patterns::now_ms()]))
        .await
    {
        Ok(n) => Json(json!({ "order_id": order_id, "cancelled": n > 0 })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("cancel not stored: {e}")).into_response(),
    }
}

async fn get_shipment(State(db): State<Db>, Path(order_id): Path<String>) -> Response {
    const SQL: &str =
        "SELECT status, (SELECT COUNT(*) FROM dispatches WHERE order_id = ?1) FROM shipments WHERE order_id = ?1";
    let id = order_id.clone();
    let found = db
        .call("SELECT", "shipments", SQL, move |c| {
            use rusqlite::OptionalExtension;
            c.query_row(SQL, [&id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).optional()
        })
        .await;
    match found {
        Ok(Some((status, dispatches))) => {
            Json(json!({ "order_id": order_id, "status": status, "dispatches": dispatches })).into_response()
        }
        Ok(None) => (StatusCode::NOT_FOUND, "no such shipment").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("shipment lookup failed: {e}")).into_response(),
    }
}

/// Dispatches: the number of times an order was dispatched (the consumer's effect; one per order).
pub async fn dispatch_count(db: &Db, order_id: &str) -> Result<i64> {
    const SQL: &str = "SELECT COUNT(*) FROM dispatches WHERE order_id = ?1";
    let id = order_id.to_owned();
    db.call("SELECT", "dispatches", SQL, move |c| c.query_row(SQL, [&id], |r| r.get(0))).await
}

/// The `order.confirmed` handler: one dispatch per message, through the inbox.
pub fn handler(db: Db) -> Handler {
    Arc::new(move |message: Message| {
        let db = db.clone();
        Box::pin(async move {
            let outcome = inbox::process_once(&db, &message, |tx, m| {
                let order_id = m.payload.get("order_id").and_then(Value::as_str).unwrap_or_default();
                tx.execute(
                    "UPDATE shipments SET status = 'dispatched', updated_ms = ?2 WHERE order_id = ?1 AND status = 'scheduled'",
                    rusqlite::params![order_id, crate::patterns::now_ms()],
                )?;
                tx.execute(
                    "INSERT INTO dispatches (message_id, order_id, dispatched_ms) VALUES (?1, ?2, ?3)",
                    rusqlite::params![m.id, order_id, crate::patterns::now_ms()],
                )
            })
            .await
            .map_err(|e| e.to_string())?;
            if let inbox::Outcome::Processed(_) = outcome {
                let order_id = message.payload.get("order_id").and_then(Value::as_str).unwrap_or_default();
                tracing::info!(order.id = %order_id, "order dispatched");
            }
            Ok(())
        })
    })
}

/// The shipping routes over `db`, plus the event subscription (HTTP route or background AMQP consumer until
/// `shutdown`).
pub fn start(
    ctx: &ServiceContext,
    db: Db,
    shutdown: impl Future<Output = ()> + Send + Clone + 'static,
) -> Result<axum::Router> {
    migrate(&db)?;
    let consumer = broker::subscribe(ctx, "shipping", &TOPICS, handler(db.clone()), shutdown);
    Ok(axum::Router::new()
        .route("/shipments", axum::routing::post(schedule))
        .route("/shipments/{order_id}", axum::routing::get(get_shipment))
        .route("/shipments/{order_id}/cancel", axum::routing::post(cancel))
        .with_state(db)
        .merge(consumer))
}

/// Runs the shipping service.
pub async fn run(ctx: ServiceContext) -> Result<()> {
    let shutdown = futures::FutureExt::shared(Box::pin(crate::services::shutdown_signal()));
    let routes = start(&ctx, ctx.db()?, shutdown)?;
    crate::services::serve(&ctx, routes).await
}
