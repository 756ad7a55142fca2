//! The notifications service: one notification per order event, idempotently through the inbox.
//!
//! - Consumes `order.placed`, `order.confirmed`, `order.failed` (RabbitMQ queue `notifications`, or
//!   `POST /events`) and records the message a user would get.
//! - `GET /notifications?user=`: a user's notifications, newest first.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Result;
use crate::broker::{self, Handler, Message};
use crate::db::Db;
use crate::patterns::inbox;
use crate::services::ServiceContext;

/// Topics notifications consumes.
pub const TOPICS: [&str; 3] = ["order.placed", "order.confirmed", "order.failed"];

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS notifications (
    message_id TEXT PRIMARY KEY, user TEXT NOT NULL, order_id TEXT NOT NULL, text TEXT NOT NULL,
    created_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS notifications_user ON notifications (user, created_ms);";

fn text_of(message: &Message) -> String {
    let order = message.payload.get("order_id").and_then(Value::as_str).unwrap_or("?");
    match message.topic.as_str() {
        "order.placed" => format!("we received your order {order}"),
        "order.confirmed" => format!("your order {order} is confirmed and will ship soon"),
        _ => format!(
            "your order {order} could not be completed: {}",
            message.payload.get("reason").and_then(Value::as_str).unwrap_or("unknown reason")
        ),
    }
}

/// The handler: one notification row per message, through the inbox.
pub fn handler(db: Db) -> Handler {
    Arc::new(move |message: Message| {
        let db = db.clone();
        Box::pin(async move {
            inbox::process_once(&db, &message, |tx, m| {
                tx.execute(
                    "INSERT INTO notifications (message_id, user, order_id, text, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                    rusqlite::params![
                        m.id,
                        m.payload.get("user").and_then(Value::as_str).unwrap_or_default(),
                        m.payload.get("order_id").and_then(Value::as_str).unwrap_or_default(),
                        text_of(m),
                        crate::patterns::now_ms()
                    ],
                )
            })
            .await
            .map(drop)
            .map_err(|e| e.to_string())
        })
    })
}

#[derive(Deserialize)]
struct UserQuery {
    user: Option<String>,
}

async fn list(State(db): State<Db>, Query(q): Query<UserQuery>) -> Response {
    let Some(user) = q.user.filter(|u| !u.is_empty() && u.len() <= 64) else {
        return (StatusCode::BAD_REQUEST, "user (1-64 characters) is required").into_response();
    };
    const SQL: &str =
        "SELECT order_id, text, created_ms FROM notifications WHERE user = ?1 ORDER BY created_ms DESC LIMIT 100";
    let rows = db
        .call("SELECT", "notifications", SQL, move |c| {
            let mut stmt = c.prepare_cached(SQL)?;
            let rows = stmt.query_map([&user], |r| {
                Ok(json!({ "order_id": r.get::<_, String>(0)?, "text": r.get::<_, String>(1)?, "created_ms": r.get::<_, i64>(2)? }))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .await;
    match rows {
        Ok(rows) => Json(json!({ "notifications": rows })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("notifications lookup failed: {e}")).into_response(),
    }
}

/// The notifications routes over `db`, plus the event subscription.
pub fn start(
    ctx: &ServiceContext,
    db: Db,
    shutdown: impl Future<Output = ()> + Send + Clone + 'static,
) -> Result<axum::Router> {
    db.migrate(SCHEMA)?;
    db.migrate(inbox::SCHEMA)?;
    let consumer = broker::subscribe(ctx, "notifications", &TOPICS, handler(db.clone()), shutdown);
    Ok(axum::Router::new().route("/notifications", axum::routing::get(list)).with_state(db).merge(consumer))
}

/// Runs the notifications service.
pub async fn run(ctx: ServiceContext) -> Result<()> {
    let shutdown = futures::FutureExt::shared(Box::pin(crate::services::shutdown_signal()));
    let routes = start(&ctx, ctx.db()?, shutdown)?;
    crate::services::serve(&ctx, routes).await
}
