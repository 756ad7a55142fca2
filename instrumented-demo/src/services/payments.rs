//! The payments service: charges and refunds through the external provider, behind the resilience patterns.
//!
//! - `POST /payments` `{"order_id", "amount_cents"}`: 201 `{"order_id", "charge_id"}`; 402 declined; 503 when
//!   the bulkhead is full or the breaker open (fail fast); 502 when the provider kept failing.
//! - `POST /payments/{order_id}/refund`: 200 `{"refunded"}` (false when nothing was charged: compensations are
//!   idempotent).
//!
//! The provider call: a [`Bulkhead`] slot, then a [`RetryPolicy`] loop (the charge is idempotent by order id, so
//! transport errors, timeouts and 5xx are retried; a decline is not), each attempt asking the [`CircuitBreaker`]
//! and bounded by a per-attempt timeout. Each attempt is its own CLIENT span with `http.request.resend_count`.
//! Breaker transitions are logged and counted (`demo.payments.breaker.transitions`); the state is the gauge
//! `demo.payments.breaker.state` (0 closed, 1 half-open, 2 open).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use opentelemetry::KeyValue;
use serde::Deserialize;
use tracing::Instrument;

use crate::Result;
use crate::db::Db;
use crate::patterns::breaker::{BreakerConfig, BreakerOpen, CircuitBreaker, Transition};
use crate::patterns::bulkhead::{Bulkhead, BulkheadFull};
use crate::patterns::retry::{RetryConfig, RetryError, RetryPolicy, Retryable};
use crate::patterns::timeout::with_timeout;
use crate::services::ServiceContext;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS payments (
    order_id TEXT PRIMARY KEY, charge_id TEXT NOT NULL, amount_cents INTEGER NOT NULL,
    status TEXT NOT NULL, updated_ms INTEGER NOT NULL);";

/// Settings of the provider call.
#[derive(Debug, Clone)]
pub struct ResilienceConfig {
    /// The breaker.
    pub breaker: BreakerConfig,
    /// The retries.
    pub retry: RetryConfig,
    /// Concurrent provider calls.
    pub max_concurrent: usize,
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        ResilienceConfig {
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            max_concurrent: 16,
            attempt_timeout: Duration::from_millis(800),
        }
    }
}

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The breaker refused the call.
    #[error(transparent)]
    Open(#[from] BreakerOpen),
    /// The bulkhead was full.
    #[error(transparent)]
    Full(#[from] BulkheadFull),
    /// The attempt ran past its deadline.
    #[error("provider call timed out after {0:?}")]
    Timeout(Duration),
    /// Connection or protocol failure.
    #[error("provider unreachable: {0}")]
    Transport(String),
    /// The provider answered 5xx.
    #[error("provider answered {0}")]
    Unavailable(u16),
    /// The provider declined (402) or rejected the request (other 4xx): a definitive answer.
    #[error("provider refused with {status}: {body}")]
    Refused {
        /// The status.
        status: u16,
        /// Its answer.
        body: String,
    },
}

impl Retryable for ProviderError {
    fn is_retryable(&self) -> bool {
        // The provider calls carry an idempotency key, so a call that may have taken effect can be repeated.
        matches!(self, ProviderError::Timeout(_) | ProviderError::Transport(_) | ProviderError::Unavailable(_))
    }
}

/// The provider client with its breaker, retries, timeouts and bulkhead. Cheap to clone.
#[derive(Clone)]
pub struct ProviderClient {
    ctx: Arc<ServiceContext>,
    breaker: CircuitBreaker,
    retry: RetryPolicy,
    bulkhead: Bulkhead,
    attempt_timeout: Duration,
}

fn on_transition(t: Transition) {
    static COUNTER: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> = std::sync::OnceLock::new();
    let counter = COUNTER.get_or_init(|| {
        crate::telemetry::meter()
            .u64_counter("demo.payments.breaker.transitions")
            .with_description("Circuit breaker state changes of the payment provider call")
            .build()
    });
    counter.add(
        1,
        &[
            KeyValue::new("from", t.from.as_str()),
            KeyValue::new("to", t.to.as_str()),
            KeyValue::new("reason", t.reason.as_str()),
        ],
    );
    tracing::warn!(
        breaker.from = t.from.as_str(),
        breaker.to = t.to.as_str(),
        breaker.reason = t.reason.as_str(),
        "payment provider circuit breaker {} -> {}",
        t.from,
        t.to
    );
}

impl ProviderClient {
    /// A client of the `payment-provider` service resolved through `ctx`.
    pub fn new(ctx: ServiceContext, config: ResilienceConfig) -> ProviderClient {
        let breaker = CircuitBreaker::new(config.breaker, on_transition);
        let observed = breaker.clone();
        // The callback stays registered with the meter provider; the handle itself is not needed.
        let _gauge = crate::telemetry::meter()
            .i64_observable_gauge("demo.payments.breaker.state")
            .with_description("Payment provider circuit breaker state: 0 closed, 1 half-open, 2 open")
            .with_callback(move |o| o.observe(observed.state().gauge_value(), &[]))
            .build();
        ProviderClient {
            ctx: Arc::new(ctx),
            breaker,
            retry: RetryPolicy::new(config.retry),
            bulkhead: Bulkhead::new(config.max_concurrent),
            attempt_timeout: config.attempt_timeout,
        }
    }

    /// The breaker (tests read its state).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// `POST path` with `body` to the provider, through bulkhead, retries, breaker and timeouts.
    pub async fn call(&self, path: &'static str, body: serde_json::Value) -> Result<serde_json::Value, ProviderError> {
        let _slot = self.bulkhead.try_enter()?;
        let result = self
            .retry
            .run(|resend_count| {
                let body = body.clone();
                async move {
                    let permit = self.breaker.try_acquire()?;
                    let outcome = self.attempt(path, &body, resend_count).await;
                    match &outcome {
                        Ok(_) | Err(ProviderError::Refused { .. }) => permit.success(),
                        Err(_) => permit.failure(),
                    }
                    outcome
                }
            })
            .await;
        result.map_err(|RetryError { error, attempts, gave_up }| {
            tracing::warn!(attempts, gave_up = ?gave_up, error = %error, "payment provider call failed");
            error
        })
    }

    async fn attempt(
        &self,
        path: &'static str,
        body: &serde_json::Value,
        resend_count: u32,
    ) -> Result<serde_json::Value, ProviderError> {
        let base = self
            .ctx
            .url_of(crate::ServiceName::Provider.as_str())
            .await
            .map_err(|e| ProviderError::Transport(e.to_string()))?;
        let url = format!("{base}{path}");
        let parsed = reqwest::Url::parse(&url).map_err(|e| ProviderError::Transport(e.to_string()))?;
        let span = tracing::info_span!(
            "http.client",
            otel.name = %format!("POST {path}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            url.full = %url,
            url.template = path,
            server.address = parsed.host_str().unwrap_or(""),
            server.port = parsed.port_or_known_default().unwrap_or(0),
            http.response.status_code = tracing::field::Empty,
            http.request.resend_count = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        // Semantic conventions: set on retries only (absent on the first attempt).
        if resend_count > 0 {
            span.record("http.request.resend_count", resend_count);
        }
        let fut = async {
            let mut request = self
                .ctx
                .http
                .raw()
                .post(&url)
                .json(body)
                .build()
                .map_err(|e| ProviderError::Transport(e.to_string()))?;
            crate::http::inject_context(request.headers_mut());
            let response = with_timeout(self.attempt_timeout, self.ctx.http.raw().execute(request))
                .await
                .map_err(|t| ProviderError::Timeout(t.0))?
                .map_err(|e| ProviderError::Transport(e.to_string()))?;
            let status = response.status().as_u16();
            tracing::Span::current().record("http.response.status_code", status);
            let text = response.text().await.map_err(|e| ProviderError::Transport(e.to_string()))?;
            match status {
                200..=299 => Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)),
                500..=599 => Err(ProviderError::Unavailable(status)),
                _ => Err(ProviderError::Refused { status, body: text.chars().take(200).collect() }),
            }
        };
        let result = fut.instrument(span.clone()).await;
        if let Err(e) = &result {
            let kind = match e {
                ProviderError::Timeout(_) => "timeout".to_owned(),
                ProviderError::Transport(_) => "transport".to_owned(),
                ProviderError::Unavailable(s) | ProviderError::Refused { status: s, .. } => s.to_string(),
                _ => "other".to_owned(),
            };
            if !matches!(e, ProviderError::Refused { .. }) {
                span.record("otel.status_code", "ERROR");
            }
            span.record("error.type", kind);
        }
        result
    }
}

#[derive(Clone)]
struct AppState {
    db: Db,
    provider: ProviderClient,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayRequest {
    order_id: String,
    amount_cents: i64,
}

fn error_response(e: &ProviderError) -> Response {
    let status = match e {
        ProviderError::Open(_) | ProviderError::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
        ProviderError::Refused { status: 402, .. } => StatusCode::PAYMENT_REQUIRED,
        ProviderError::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ProviderError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        ProviderError::Transport(_) | ProviderError::Unavailable(_) => StatusCode::BAD_GATEWAY,
    };
    (status, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

async fn pay(
    State(state): State<AppState>,
    body: Result<Json<PayRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return (e.status(), format!("bad payment: {}", e.body_text())).into_response(),
    };
    if req.order_id.is_empty() || req.order_id.len() > 128 || req.amount_cents <= 0 {
        return (StatusCode::BAD_REQUEST, "order_id (1-128 chars) and a positive amount_cents are required")
            .into_response();
    }
    let body = serde_json::json!({ "idempotency_key": req.order_id, "amount_cents": req.amount_cents });
    let charge = match state.provider.call("/v1/charges", body).await {
        Ok(c) => c,
        Err(e) => return error_response(&e),
    };
    let charge_id = charge.get("charge_id").and_then(|c| c.as_str()).unwrap_or_default().to_owned();
    const SQL: &str = "INSERT INTO payments (order_id, charge_id, amount_cents, status, updated_ms) \
                       VALUES (?1, ?2, ?3, 'charged', ?4) ON CONFLICT (order_id) DO UPDATE SET \
                       charge_id = excluded.charge_id, status = 'charged', updated_ms = excluded.updated_ms";
    let (order_id, cid) = (req.order_id.clone(), charge_id.clone());
    let stored = state
        .db
        .call("UPSERT", "payments", SQL, move |conn| {
            conn.execute(SQL, rusqlite::params![order_id, cid, req.amount_cents, crate::patterns::now_ms()])
        })
        .await;
    match stored {
        Ok(_) => (StatusCode::CREATED, Json(serde_json::json!({ "order_id": req.order_id, "charge_id": charge_id })))
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("payment not stored: {e}")).into_response(),
    }
}

async fn refund(State(state): State<AppState>, Path(order_id): Path<String>) -> Response {
    let body = serde_json::json!({ "idempotency_key": order_id });
    let refunded = match state.provider.call("/v1/refunds", body).await {
        Ok(r) => r.get("refunded").and_then(|v| v.as_bool()).unwrap_or(false),
        Err(e) => return error_response(&e),
    };
    const SQL: &str = "UPDATE payments SET status = 'refunded', updated_ms = ?2 WHERE order_id = ?1";
    let id = order_id.clone();
    if let Err(e) = state
        .db
        .call("UPDATE", "payments", SQL, move |c| c.execute(SQL, rusqlite::params![id, crate::patterns::now_ms()]))
        .await
    {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("refund not stored: {e}")).into_response();
    }
    Json(serde_json::json!({ "order_id": order_id, "refunded": refunded })).into_response()
}

/// The payments routes over `db`, calling the provider through `provider`.
pub fn routes(db: Db, provider: ProviderClient) -> Result<axum::Router> {
    db.migrate(SCHEMA)?;
    Ok(axum::Router::new()
        .route("/payments", axum::routing::post(pay))
        .route("/payments/{order_id}/refund", axum::routing::post(refund))
        .with_state(AppState { db, provider }))
}

/// Runs the payments service.
pub async fn run(ctx: ServiceContext) -> Result<()> {
    let provider = ProviderClient::new(ctx.clone(), ResilienceConfig::default());
    let routes = routes(ctx.db()?, provider)?;
    crate::services::serve(&ctx, routes).await
}
