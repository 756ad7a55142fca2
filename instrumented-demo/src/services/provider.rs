//! The simulated external payment provider: a flaky HTTP service of its own.
//!
//! - `POST /v1/charges` `{"idempotency_key", "amount_cents"}`: charges once per key (a repeated key returns the
//!   first charge, so callers may retry); 201 `{"charge_id", "status"}`; 402 when declined (amounts above
//!   [`DECLINE_ABOVE_CENTS`]); 400 on a bad body.
//! - `POST /v1/refunds` `{"idempotency_key"}`: refunds the charge of that key; 200 `{"refunded"}` (false when
//!   there was no charge or it was refunded before).
//!
//! Flakiness comes from fault injection: per-endpoint latency and error rate (`/admin/faults` rules), and the
//! `provider_outage` switch, which answers 503 to every call.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;

use crate::Result;
use crate::db::Db;
use crate::faults::Faults;
use crate::services::ServiceContext;

/// Charges above this many cents are declined.
pub const DECLINE_ABOVE_CENTS: i64 = 1_000_000;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS charges (
    idempotency_key TEXT PRIMARY KEY, charge_id TEXT NOT NULL, amount_cents INTEGER NOT NULL,
    refunded INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL);";

#[derive(Clone)]
struct AppState {
    db: Db,
    faults: Faults,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChargeRequest {
    idempotency_key: String,
    amount_cents: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefundRequest {
    idempotency_key: String,
}

fn outage(state: &AppState) -> Option<Response> {
    state
        .faults
        .provider_outage()
        .then(|| (StatusCode::SERVICE_UNAVAILABLE, "provider outage (fault injection)").into_response())
}

async fn charge(
    State(state): State<AppState>,
    body: Result<Json<ChargeRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(r) = outage(&state) {
        return r;
    }
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return (e.status(), format!("bad charge: {}", e.body_text())).into_response(),
    };
    if req.idempotency_key.is_empty() || req.idempotency_key.len() > 128 || req.amount_cents <= 0 {
        return (StatusCode::BAD_REQUEST, "idempotency_key (1-128 chars) and a positive amount_cents are required")
            .into_response();
    }
    if req.amount_cents > DECLINE_ABOVE_CENTS {
        return (StatusCode::PAYMENT_REQUIRED, Json(serde_json::json!({ "status": "declined" }))).into_response();
    }
    const SQL: &str = "INSERT OR IGNORE INTO charges (idempotency_key, charge_id, amount_cents, created_ms) \
                       VALUES (?1, ?2, ?3, ?4); SELECT charge_id FROM charges WHERE idempotency_key = ?1";
    let result = state
        .db
        .call("INSERT", "charges", SQL, move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO charges (idempotency_key, charge_id, amount_cents, created_ms) \
                 VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    req.idempotency_key,
                    format!("ch_{}", crate::patterns::new_id()),
                    req.amount_cents,
                    crate::patterns::now_ms()
                ],
            )?;
            conn.query_row("SELECT charge_id FROM charges WHERE idempotency_key = ?1", [&req.idempotency_key], |r| {
                r.get::<_, String>(0)
            })
        })
        .await;
    match result {
        Ok(charge_id) => {
            (StatusCode::CREATED, Json(serde_json::json!({ "charge_id": charge_id, "status": "succeeded" })))
                .into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("charge not stored: {e}")).into_response(),
    }
}

async fn refund(
    State(state): State<AppState>,
    body: Result<Json<RefundRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(r) = outage(&state) {
        return r;
    }
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return (e.status(), format!("bad refund: {}", e.body_text())).into_response(),
    };
    const SQL: &str = "UPDATE charges SET refunded = 1 WHERE idempotency_key = ?1 AND refunded = 0";
    match state.db.call("UPDATE", "charges", SQL, move |conn| conn.execute(SQL, [&req.idempotency_key])).await {
        Ok(n) => Json(serde_json::json!({ "refunded": n > 0 })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("refund not stored: {e}")).into_response(),
    }
}

/// The provider's routes over `db`; `faults` supplies the outage switch.
pub fn routes(db: Db, faults: Faults) -> Result<axum::Router> {
    db.migrate(SCHEMA)?;
    Ok(axum::Router::new()
        .route("/v1/charges", axum::routing::post(charge))
        .route("/v1/refunds", axum::routing::post(refund))
        .with_state(AppState { db, faults }))
}

/// Runs the payment provider.
pub async fn run(ctx: ServiceContext) -> Result<()> {
    let routes = routes(ctx.db()?, ctx.faults.clone())?;
    crate::services::serve(&ctx, routes).await
}
