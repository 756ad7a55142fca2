//! The API gateway: the shop's single entry point.
//!
//! - `POST /login` `{"user", "password"}` issues a demo JWT (HS256, one hour) for any user whose
//!   password is `demo`; 401 otherwise.
//! - Every `/api/...` request needs `Authorization: Bearer <jwt>` (401 without a valid one), is
//!   rate limited per user (429 with `Retry-After`), and is forwarded, with `x-user-id` set to the
//!   token's subject, to an instance of the owning service resolved through the registry
//!   (round-robin):
//!
//! | gateway path | service | service path |
//! |---|---|---|
//! | `/api/products...` | catalog | `/products...` |
//! | `/api/cart...` | catalog | `/carts/{user}...` |
//! | `/api/orders...` | orders | `/orders...` |
//!
//! Each hop is a span: the gateway's server span, its client span to the service, the service's
//! server span. The request id (`x-request-id`) travels with the request.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Body;
use axum::extract::FromRequest;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderValue, StatusCode, header};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::services::ServiceContext;
use crate::{Error, Result};

/// Largest request body forwarded.
const MAX_BODY: usize = 1 << 20;
/// How long an issued token is valid.
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The demo password.
pub const DEMO_PASSWORD: &str = "demo";

/// The claims of a demo token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
}

struct Gateway {
    ctx: ServiceContext,
    encoding: EncodingKey,
    decoding: DecodingKey,
    limiter: DefaultKeyedRateLimiter<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: String,
    password: String,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Gateway {
    fn new(ctx: ServiceContext) -> Result<Gateway> {
        let per_second = NonZeroU32::new(ctx.cfg.rate_limit)
            .ok_or_else(|| Error::Config("rate limit must be at least 1 request per second".into()))?;
        let burst = per_second.saturating_mul(NonZeroU32::new(2).expect("2 is not zero"));
        let secret = ctx.cfg.jwt_secret.as_bytes();
        Ok(Gateway {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            ctx,
        })
    }

    fn issue(&self, user: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = now_secs();
        let claims = Claims { sub: user.to_owned(), iat, exp: iat + TOKEN_TTL.as_secs() };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// The user of a valid bearer token, or the 401 to answer.
    #[allow(clippy::result_large_err)] // the error is the response to send, built at most once per request
    fn authenticate(&self, req: &Request) -> Result<String, Response> {
        let Some(value) = req.headers().get(header::AUTHORIZATION) else {
            return Err(error(StatusCode::UNAUTHORIZED, "missing bearer token"));
        };
        let token = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation) {
            Ok(data) => Ok(data.claims.sub),
            Err(e) => {
                tracing::info!(error = %e, "token rejected");
                Err(error(StatusCode::UNAUTHORIZED, format!("invalid token: {e}")))
            }
        }
    }

    /// `Ok` or the 429 to answer, with `Retry-After` in whole seconds (at least 1).
    #[allow(clippy::result_large_err)] // as above
    fn admit(&self, client: &str) -> Result<(), Response> {
        match self.limiter.check_key(&client.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                tracing::info!(client, retry_after_s = secs.max(1), "rate limited");
                let mut resp = error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                Err(resp)
            }
        }
    }
}

/// The service and path a gateway path maps to, if any.
fn route(path: &str, user: &str) -> Option<(&'static str, String)> {
    let rest = path.strip_prefix("/api")?;
    let prefix_of = |p: &str| rest == p || rest.starts_with(&format!("{p}/")) || rest.starts_with(&format!("{p}?"));
    if prefix_of("/products") {
        Some(("catalog", rest.to_owned()))
    } else if prefix_of("/cart") {
        Some(("catalog", format!("/carts/{user}{}", &rest["/cart".len()..])))
    } else if prefix_of("/orders") {
        Some(("orders", rest.to_owned()))
    } else {
        None
    }
}

async fn login(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    // Before a token there is no user: logins are limited per client address.
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map_or("unknown".to_owned(), |c| c.0.ip().to_string());
    if let Err(r) = gw.admit(&format!("login:{peer}")) {
        return r;
    }
    let Json(login) = match Json::<Login>::from_request(req, &()).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if login.user.is_empty()
        || login.user.len() > 64
        || !login.user.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return error(StatusCode::BAD_REQUEST, "user must be 1-64 letters, digits, '-' or '_'");
    }
    if login.password != DEMO_PASSWORD {
        tracing::info!(user = %login.user, "login refused");
        return error(StatusCode::UNAUTHORIZED, "wrong user or password");
    }
    match gw.issue(&login.user) {
        Ok(token) => {
            tracing::info!(user = %login.user, "token issued");
            Json(serde_json::json!({ "token": token, "expires_in": TOKEN_TTL.as_secs() })).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot sign token: {e}")),
    }
}

async fn proxy(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    let user = match gw.authenticate(&req) {
        Ok(u) => u,
        Err(r) => return r,
    };
    if let Err(r) = gw.admit(&user) {
        return r;
    }
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let (path, query) = path_and_query.split_once('?').map_or((path_and_query.as_str(), None), |(p, q)| (p, Some(q)));
    let Some((service, target_path)) = route(path, &user) else {
        return error(StatusCode::NOT_FOUND, format!("no route for {path}"));
    };
    tracing::Span::current().record("enduser.id", user.as_str());
    let base = match gw.ctx.url_of(service).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(service, error = %e, "cannot resolve service");
            return error(StatusCode::SERVICE_UNAVAILABLE, format!("{service} unavailable"));
        }
    };
    let url = match query {
        Some(q) => format!("{base}{target_path}?{q}"),
        None => format!("{base}{target_path}"),
    };
    let method = req.method().clone();
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, format!("body larger than {MAX_BODY} bytes")),
    };
    let mut out = gw.ctx.http.raw().request(method, &url).header("x-user-id", &user).body(body);
    if let Some(ct) = content_type {
        out = out.header(header::CONTENT_TYPE, ct);
    }
    let template = target_path.split('?').next().unwrap_or("").to_owned();
    match gw.ctx.http.send(out, Some(&template_of(&template))).await {
        Ok(resp) => {
            let status = resp.status();
            let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => return error(StatusCode::BAD_GATEWAY, format!("{service} answer cut short: {e}")),
            };
            let mut r = Response::new(Body::from(bytes));
            *r.status_mut() = status;
            if let Some(ct) = ct {
                r.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            r
        }
        Err(e) => {
            if e.is_connect()
                && let Some(reg) = &gw.ctx.registry
            {
                reg.invalidate(service);
            }
            tracing::warn!(service, error = %e, "upstream call failed");
            let status = if e.is_timeout() { StatusCode::GATEWAY_TIMEOUT } else { StatusCode::BAD_GATEWAY };
            error(status, format!("{service} did not answer"))
        }
    }
}

/// A low-cardinality span name for a forwarded path: numeric segments and the user become `{id}`.
fn template_of(path: &str) -> String {
    let mut segs: Vec<&str> = path.split('/').collect();
    let carts = segs.get(1) == Some(&"carts");
    for (i, s) in segs.iter_mut().enumerate() {
        if (carts && i == 2)
            || (!s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '-') && s.len() < 40)
            || s.len() >= 32
        {
            *s = "{id}";
        }
    }
    segs.join("/")
}

fn routes(gw: Arc<Gateway>) -> axum::Router {
    axum::Router::new().route("/login", post(login)).route("/api/{*path}", any(proxy)).with_state(gw)
}

/// Runs the gateway.
pub async fn run(ctx: ServiceContext) -> Result<()> {
    let gw = Arc::new(Gateway::new(ctx.clone())?);
    let cleaner = {
        let gw = gw.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                gw.limiter.retain_recent();
            }
        })
    };
    let result = crate::services::serve(&ctx, routes(gw)).await;
    cleaner.abort();
    result
}
