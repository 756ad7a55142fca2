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

/// The gateway's routes for `ctx` (its services resolved through `ctx`).
#[cfg(test)]
pub(crate) fn app(ctx: ServiceContext) -> Result<axum::Router> {
    Ok(routes(Arc::new(Gateway::new(ctx)?)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceName;
    use crate::config::ServiceConfig;
    use tower::ServiceExt;

    fn gateway(rate_limit: u32) -> Arc<Gateway> {
        let mut cfg = ServiceConfig::for_test(std::env::temp_dir());
        cfg.rate_limit = rate_limit;
        Arc::new(Gateway::new(ServiceContext::new(ServiceName::Gateway, cfg).unwrap()).unwrap())
    }

    /// A backend answering every request with its name, the path and the forwarded user.
    async fn backend(name: &'static str) -> String {
        let app = axum::Router::new().fallback(move |req: Request| async move {
            let user = req.headers().get("x-user-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            format!("{name} {} {user}", req.uri())
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    async fn call(
        app: &axum::Router,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, Response) {
        let mut req = http::Request::builder().method(method).uri(uri).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = app.clone().oneshot(req.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
        (resp.status(), resp)
    }

    async fn text(resp: Response) -> String {
        String::from_utf8_lossy(&axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap()).into_owned()
    }

    async fn login(app: &axum::Router, user: &str) -> String {
        let (status, resp) =
            call(app, "POST", "/login", None, &format!(r#"{{"user":"{user}","password":"demo"}}"#)).await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn valid_tokens_pass_and_others_are_refused() {
        let gw = gateway(100);
        gw.ctx.set_peer("catalog", &backend("catalog").await);
        let app = routes(gw.clone());
        let token = login(&app, "ann").await;
        let (status, resp) = call(&app, "GET", "/api/products/3?x=1", Some(&token), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text(resp).await, "catalog /products/3?x=1 ann");
        let (_, resp) = call(&app, "POST", "/api/cart/items", Some(&token), "{}").await;
        assert_eq!(text(resp).await, "catalog /carts/ann/items ann");

        assert_eq!(call(&app, "GET", "/api/products", None, "").await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(call(&app, "GET", "/api/products", Some("not.a.jwt"), "").await.0, StatusCode::UNAUTHORIZED);
        // Signed with another secret.
        let other = Gateway::new(
            ServiceContext::new(ServiceName::Gateway, {
                let mut c = ServiceConfig::for_test(std::env::temp_dir());
                c.jwt_secret = "another".into();
                c
            })
            .unwrap(),
        )
        .unwrap();
        let forged = other.issue("ann").unwrap();
        assert_eq!(call(&app, "GET", "/api/products", Some(&forged), "").await.0, StatusCode::UNAUTHORIZED);
        // Expired an hour ago.
        let old = now_secs() - 7200;
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims { sub: "ann".into(), iat: old, exp: old + 60 },
            &gw.encoding,
        )
        .unwrap();
        let (status, resp) = call(&app, "GET", "/api/products", Some(&expired), "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(text(resp).await.contains("ExpiredSignature"));

        let (status, _) = call(&app, "POST", "/login", None, r#"{"user":"ann","password":"guess"}"#).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(call(&app, "POST", "/login", None, "{").await.0, StatusCode::BAD_REQUEST);
        assert_eq!(
            call(&app, "POST", "/login", None, r#"{"user":"a b","password":"demo"}"#).await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(call(&app, "GET", "/api/nothing", Some(&token), "").await.0, StatusCode::NOT_FOUND);
        // No instance of orders: 503, not 500.
        assert_eq!(call(&app, "GET", "/api/orders", Some(&token), "").await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn clients_over_their_rate_get_429_with_retry_after() {
        let gw = gateway(2); // 2/s, burst 4
        gw.ctx.set_peer("catalog", &backend("catalog").await);
        let app = routes(gw);
        let ann = login(&app, "ann").await;
        let bob = login(&app, "bob").await;
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(call(&app, "GET", "/api/products", Some(&ann), "").await.0);
        }
        assert_eq!(&statuses[..4], [StatusCode::OK; 4]);
        let (status, resp) = call(&app, "GET", "/api/products", Some(&ann), "").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = resp.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "{retry}");
        // Limits are per client.
        assert_eq!(call(&app, "GET", "/api/products", Some(&bob), "").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn requests_round_robin_over_registered_instances() {
        let registry = Arc::new(crate::registry::Registry::new(crate::registry::DEFAULT_TTL));
        let now = std::time::Instant::now();
        for (id, name) in [("catalog-1", "one"), ("catalog-2", "two")] {
            let url = backend(name).await;
            registry.register(
                crate::registry::Registration { service: "catalog".into(), instance_id: id.into(), url },
                now,
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let reg_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, crate::registry::routes(registry)).await });
        let mut cfg = ServiceConfig::for_test(std::env::temp_dir());
        cfg.registry_url = Some(reg_url);
        let gw = Arc::new(Gateway::new(ServiceContext::new(ServiceName::Gateway, cfg).unwrap()).unwrap());
        let app = routes(gw);
        let token = login(&app, "ann").await;
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (_, resp) = call(&app, "GET", "/api/products", Some(&token), "").await;
            seen.push(text(resp).await.split(' ').next().unwrap().to_owned());
        }
        assert_eq!(seen, ["one", "two", "one", "two"]);
    }

    #[test]
    fn span_names_hide_ids() {
        assert_eq!(template_of("/products/17"), "/products/{id}");
        assert_eq!(template_of("/carts/ann/items"), "/carts/{id}/items");
        assert_eq!(template_of("/products/search"), "/products/search");
    }
}
