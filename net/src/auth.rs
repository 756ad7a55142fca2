//! Bearer-token authentication, off unless tokens are configured (`[auth]`).
//!
//! - [`AuthConfig`]: the `[auth]` section: tokens inline or in files (one per line, so a token
//!   can be rotated by listing old and new for a while). Files are read once, at start.
//! - [`Token`]: a secret whose `Debug` and serialized form are redacted, so printing a config
//!   never shows one.
//! - [`TokenSet`]: the accepted tokens, kept only as SHA-256 digests. A presented token is
//!   hashed and compared with every digest in constant time (`subtle`), without stopping at a
//!   match: neither the token's content nor its length shows in the time a check takes.
//! - [`Guard`]: one listener's check (`Authorization: Bearer`, and on the UI port also HTTP
//!   Basic with the token as password), counting refusals in
//!   `obsbox_auth_failures_total{listener}` ([`AuthFailures`]).
//! - [`RequireTokenLayer`]: the tower layer HTTP routers take: a refused request gets 401 with a
//!   `WWW-Authenticate` challenge and a body that never says whether a token was missing or
//!   wrong. The gRPC receiver calls [`Guard::admits`] itself and answers `UNAUTHENTICATED`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use futures::future::{BoxFuture, Either};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::NetError;

/// What a refused HTTP request reads: the same whatever was wrong with its credentials.
pub const REFUSAL_MESSAGE: &str = "authentication required: send a valid token";

/// The `[auth]` section. Every field is optional; a listener requires a token when its token or
/// token file is set. Inline token and file together: both are accepted.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Token the OTLP receivers (gRPC and HTTP, Alertmanager's webhook too) require.
    pub ingest_token: Option<Token>,
    /// File of ingest tokens, one per line (empty lines and `#` comments ignored).
    pub ingest_token_file: Option<PathBuf>,
    /// Token the UI, the query APIs and `/metrics` require (`/healthz`, `/readyz` stay open).
    pub query_token: Option<Token>,
    /// File of query tokens, one per line.
    pub query_token_file: Option<PathBuf>,
}

impl AuthConfig {
    /// Checks the inline tokens (files are read by [`AuthConfig::ingest_tokens`] and
    /// [`AuthConfig::query_tokens`]); the error names the key, never the token.
    pub fn validate(&self) -> Result<(), NetError> {
        for (key, token) in [("auth.ingest_token", &self.ingest_token), ("auth.query_token", &self.query_token)] {
            if let Some(t) = token {
                check_token(t.expose()).map_err(|reason| NetError::InvalidSetting { key, reason })?;
            }
        }
        Ok(())
    }

    /// The ingest tokens, reading the token file; `None` when ingest is open.
    pub fn ingest_tokens(&self) -> Result<Option<TokenSet>, NetError> {
        load("auth.ingest_token", self.ingest_token.as_ref(), self.ingest_token_file.as_deref())
    }

    /// The UI and query API tokens, reading the token file; `None` when the UI port is open.
    pub fn query_tokens(&self) -> Result<Option<TokenSet>, NetError> {
        load("auth.query_token", self.query_token.as_ref(), self.query_token_file.as_deref())
    }

    /// The token this node presents to other obsbox nodes' UI ports (a searcher reading from
    /// ingesters, which share the cluster's query tokens): `query_token`, else the first token of
    /// `query_token_file`; `None` when neither is set.
    pub fn peer_query_token(&self) -> Result<Option<String>, NetError> {
        if let Some(t) = &self.query_token {
            return Ok(Some(t.expose().to_string()));
        }
        match &self.query_token_file {
            Some(path) => Ok(read_token_file(path)?.first().map(|t| t.expose().to_string())),
            None => Ok(None),
        }
    }
}

fn load(key: &'static str, inline: Option<&Token>, file: Option<&Path>) -> Result<Option<TokenSet>, NetError> {
    let mut tokens = Vec::new();
    if let Some(t) = inline {
        check_token(t.expose()).map_err(|reason| NetError::InvalidSetting { key, reason })?;
        tokens.push(t.clone());
    }
    if let Some(path) = file {
        tokens.extend(read_token_file(path)?);
    }
    Ok((!tokens.is_empty()).then(|| TokenSet::new(&tokens)))
}

/// Reads a token file: one token per line, empty lines and lines starting with `#` skipped.
/// Errors name the file (and line), never a token.
pub fn read_token_file(path: &Path) -> Result<Vec<Token>, NetError> {
    let err = |reason: String| NetError::TokenFile { path: path.to_owned(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        check_token(line).map_err(|reason| err(format!("line {}: {reason}", i + 1)))?;
        tokens.push(Token(line.to_owned()));
    }
    if tokens.is_empty() {
        return Err(err("no token in the file".into()));
    }
    Ok(tokens)
}

/// A token must travel in an HTTP header and in Basic credentials: visible ASCII, no spaces.
fn check_token(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("the token is empty".into());
    }
    if !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token may hold only visible ASCII characters (no spaces)".into());
    }
    Ok(())
}

/// A secret token. `Debug`, `Display`-free, and serializes as `"<redacted>"`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A token from its text (checked when the configuration is validated).
    pub fn new(text: impl Into<String>) -> Token {
        Token(text.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Serialize for Token {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Token, D::Error> {
        String::deserialize(d).map(Token)
    }
}

/// The tokens a listener accepts, as SHA-256 digests.
#[derive(Clone)]
pub struct TokenSet {
    digests: Arc<[[u8; 32]]>,
}

impl TokenSet {
    /// The set of `tokens`.
    pub fn new(tokens: &[Token]) -> TokenSet {
        TokenSet { digests: tokens.iter().map(|t| digest(t.expose().as_bytes())).collect() }
    }

    /// Whether `presented` is one of the tokens. Takes the same time whatever `presented` is
    /// and whichever token it matches: fixed-length digests, compared in constant time, all of
    /// them.
    pub fn contains(&self, presented: &[u8]) -> bool {
        let d = digest(presented);
        let mut found = Choice::from(0);
        for known in self.digests.iter() {
            found |= known.ct_eq(&d);
        }
        found.into()
    }
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet").field("tokens", &self.digests.len()).finish()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Which credentials a listener takes, and the challenge it sends on 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer <token>` only (the OTLP ports: SDKs send a configured header).
    Bearer,
    /// Bearer, or HTTP Basic with the token as password and any user name (the UI port: a
    /// browser shows its login prompt, Grafana datasources use basic auth).
    BearerOrBasic,
}

/// `obsbox_auth_failures_total{listener}`: requests refused for want of a valid token.
#[derive(Clone, Debug)]
pub struct AuthFailures(prometheus::IntCounterVec);

impl AuthFailures {
    /// Registers the counter in `registry`.
    pub fn register(registry: &prometheus::Registry) -> Result<AuthFailures, prometheus::Error> {
        let c = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "obsbox_auth_failures_total",
                "Requests refused because they carried no valid token, by listener.",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(c.clone()))?;
        Ok(AuthFailures(c))
    }

    /// A guard for `listener` (the counter's label) accepting `tokens`.
    pub fn guard(&self, tokens: TokenSet, listener: &str, scheme: Scheme) -> Guard {
        Guard(Arc::new(GuardInner {
            tokens,
            scheme,
            listener: listener.to_owned(),
            failures: self.0.with_label_values(&[listener]),
            open_paths: Vec::new(),
        }))
    }
}

/// One listener's token check.
#[derive(Clone)]
pub struct Guard(Arc<GuardInner>);

struct GuardInner {
    tokens: TokenSet,
    scheme: Scheme,
    listener: String,
    failures: prometheus::IntCounter,
    open_paths: Vec<&'static str>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("listener", &self.0.listener)
            .field("scheme", &self.0.scheme)
            .field("tokens", &self.0.tokens)
            .field("open_paths", &self.0.open_paths)
            .finish()
    }
}

impl Guard {
    /// The same guard letting these exact paths through without credentials (health checks).
    pub fn with_open_paths(self, paths: &[&'static str]) -> Guard {
        let inner = &self.0;
        Guard(Arc::new(GuardInner {
            tokens: inner.tokens.clone(),
            scheme: inner.scheme,
            listener: inner.listener.clone(),
            failures: inner.failures.clone(),
            open_paths: paths.to_vec(),
        }))
    }

    /// Whether the request's `Authorization` header carries an accepted token; a refusal is
    /// counted (and logged at debug level, without the credentials).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let ok = headers.get(AUTHORIZATION).and_then(|v| self.presented(v)).is_some_and(|t| self.0.tokens.contains(&t));
        if !ok {
            self.0.failures.inc();
            tracing::debug!(listener = %self.0.listener, "request refused: no valid token");
        }
        ok
    }

    /// The token a header value presents under the accepted schemes.
    fn presented(&self, value: &HeaderValue) -> Option<Vec<u8>> {
        let value = value.as_bytes();
        let (scheme, rest) = split_scheme(value)?;
        if scheme.eq_ignore_ascii_case(b"bearer") {
            return Some(trim(rest).to_vec());
        }
        if self.0.scheme == Scheme::BearerOrBasic && scheme.eq_ignore_ascii_case(b"basic") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(trim(rest)).ok()?;
            let colon = decoded.iter().position(|&b| b == b':')?;
            return Some(decoded[colon + 1..].to_vec());
        }
        None
    }

    fn is_open(&self, path: &str) -> bool {
        self.0.open_paths.contains(&path)
    }

    /// The 401 answer: a challenge for the accepted scheme and a body without detail.
    fn refusal<B: From<&'static str>>(&self) -> Response<B> {
        let challenge = match self.0.scheme {
            Scheme::Bearer => "Bearer",
            Scheme::BearerOrBasic => "Basic realm=\"obsbox\", charset=\"UTF-8\"",
        };
        let mut resp = Response::new(B::from(REFUSAL_MESSAGE));
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        resp.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        resp
    }

    /// A tower layer applying this guard to an HTTP service.
    pub fn layer(&self) -> RequireTokenLayer {
        RequireTokenLayer { guard: Some(self.clone()) }
    }
}

fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let value = trim(value);
    let space = value.iter().position(|&b| b == b' ')?;
    Some((&value[..space], &value[space + 1..]))
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b
        && first.is_ascii_whitespace()
    {
        b = rest;
    }
    while let [rest @ .., last] = b
        && last.is_ascii_whitespace()
    {
        b = rest;
    }
    b
}

/// A tower layer that refuses requests without an accepted token (401), or passes everything
/// when built without a guard ([`RequireTokenLayer::optional`] with `None`).
#[derive(Clone, Debug, Default)]
pub struct RequireTokenLayer {
    guard: Option<Guard>,
}

impl RequireTokenLayer {
    /// The layer of `guard`, or one that lets everything through.
    pub fn optional(guard: Option<Guard>) -> RequireTokenLayer {
        RequireTokenLayer { guard }
    }
}

impl<S> tower::Layer<S> for RequireTokenLayer {
    type Service = RequireToken<S>;

    fn layer(&self, inner: S) -> RequireToken<S> {
        RequireToken { inner, guard: self.guard.clone() }
    }
}

/// The service [`RequireTokenLayer`] wraps around an HTTP service.
#[derive(Clone, Debug)]
pub struct RequireToken<S> {
    inner: S,
    guard: Option<Guard>,
}

/// How much of a refused request's body is read and dropped, and for how long, so a client still
/// sending gets the 401 instead of a connection reset.
const REFUSED_BODY_DRAIN: (usize, std::time::Duration) = (16 << 20, std::time::Duration::from_secs(5));

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for RequireToken<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Send + 'static,
    ReqB: http_body::Body + Send + 'static,
    ResB: From<&'static str> + Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = Either<BoxFuture<'static, Result<Response<ResB>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match &self.guard {
            Some(g) if !g.is_open(req.uri().path()) && !g.admits(req.headers()) => {
                let refusal = g.refusal();
                let body = req.into_body();
                Either::Left(Box::pin(async move {
                    crate::discard_body(body, REFUSED_BODY_DRAIN.0, REFUSED_BODY_DRAIN.1).await;
                    Ok(refusal)
                }))
            }
            _ => Either::Right(self.inner.call(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{Layer, Service, ServiceExt};

    use super::*;

    fn guard(scheme: Scheme, tokens: &[&str]) -> (Guard, prometheus::Registry) {
        let registry = prometheus::Registry::new();
        let failures = AuthFailures::register(&registry).unwrap();
        let set = TokenSet::new(&tokens.iter().map(|t| Token::new(*t)).collect::<Vec<_>>());
        (failures.guard(set, "test", scheme), registry)
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    fn basic(user_pass: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass))
    }

    fn failures(registry: &prometheus::Registry) -> u64 {
        let families = registry.gather();
        let family = families.iter().find(|f| f.name() == "obsbox_auth_failures_total").unwrap();
        family.get_metric()[0].get_counter().get_value() as u64
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let (g, registry) = guard(Scheme::Bearer, &["s3cret-one", "s3cret-two"]);
        assert!(g.admits(&headers(Some("Bearer s3cret-one"))));
        assert!(g.admits(&headers(Some("bearer  s3cret-two "))), "scheme is case-insensitive, spaces trimmed");
        for bad in [None, Some("Bearer"), Some("Bearer "), Some("Bearer s3cret"), Some("Bearer s3cret-one2")] {
            assert!(!g.admits(&headers(bad)), "{bad:?}");
        }
        assert!(!g.admits(&headers(Some("s3cret-one"))), "a bare token is no credential");
        assert!(!g.admits(&headers(Some(&basic("u:s3cret-one")))), "the ingest ports take no Basic");
        assert_eq!(failures(&registry), 7);
    }

    #[test]
    fn basic_takes_the_token_as_password_with_any_user() {
        let (g, _) = guard(Scheme::BearerOrBasic, &["tok:en-with-colon"]);
        assert!(g.admits(&headers(Some(&basic("grafana:tok:en-with-colon")))));
        assert!(g.admits(&headers(Some(&basic(":tok:en-with-colon")))));
        assert!(g.admits(&headers(Some("Bearer tok:en-with-colon"))));
        assert!(!g.admits(&headers(Some(&basic("tok:en-with-colon")))), "the first colon ends the user name");
        assert!(!g.admits(&headers(Some(&basic("grafana")))));
        assert!(!g.admits(&headers(Some("Basic %%%not-base64"))));
    }

    #[test]
    fn tokens_never_show_in_debug_or_serialized_config() {
        let c = AuthConfig {
            ingest_token: Some(Token::new("hunter2-ingest")),
            query_token: Some(Token::new("hunter2-query")),
            ..Default::default()
        };
        let (g, _) = guard(Scheme::Bearer, &["hunter2-guard"]);
        let printed = format!("{c:?} {c:#?} {:?} {g:?} {:?}", serde_json::to_string(&c).unwrap(), c.query_tokens());
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("redacted"), "{printed}");
    }

    #[test]
    fn token_files_hold_one_token_per_line_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# rotated 2026-11\nold-token\n\n  new-token  \n").unwrap();
        let c = AuthConfig { ingest_token_file: Some(path.clone()), ..Default::default() };
        let set = c.ingest_tokens().unwrap().unwrap();
        assert!(set.contains(b"old-token") && set.contains(b"new-token"));
        assert!(!set.contains(b"# rotated 2026-11") && !set.contains(b""));
        assert!(c.query_tokens().unwrap().is_none(), "no query token: the UI port is open");

        std::fs::write(&path, "good\nbad token\n").unwrap();
        let err = c.ingest_tokens().unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("line 2"), "{err}");
        assert!(!err.contains("bad token"), "{err}");
        std::fs::write(&path, "# nothing\n").unwrap();
        let err = c.ingest_tokens().unwrap_err().to_string();
        assert!(err.contains("no token"), "{err}");
        let missing = AuthConfig { query_token_file: Some(dir.path().join("nope")), ..Default::default() };
        let err = missing.query_tokens().unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn inline_tokens_are_validated_without_echoing_them() {
        let c = AuthConfig { query_token: Some(Token::new("two words")), ..Default::default() };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("auth.query_token") && !err.contains("two words"), "{err}");
        let c = AuthConfig { ingest_token: Some(Token::new("")), ..Default::default() };
        assert!(c.validate().unwrap_err().to_string().contains("auth.ingest_token"));
        let c: AuthConfig = toml::from_str("ingest_token = \"abc\"\nquery_token_file = \"/t\"\n").unwrap();
        c.validate().unwrap();
        assert!(toml::from_str::<AuthConfig>("ingest_tokens = \"abc\"\n").is_err());
    }

    #[tokio::test]
    async fn the_layer_answers_401_with_a_challenge_and_no_detail() {
        let ok =
            tower::service_fn(|_req: Request<String>| async { Ok::<_, Infallible>(Response::new(String::from("ok"))) });
        let (g, _) = guard(Scheme::BearerOrBasic, &["t0ken"]);
        let mut svc = g.with_open_paths(&["/healthz"]).layer().layer(ok);
        let call = |path: &str, auth: Option<&str>| {
            let mut req = Request::get(path).body(String::new()).unwrap();
            *req.headers_mut() = headers(auth);
            req
        };
        let mut bodies = Vec::new();
        for auth in [None, Some("Bearer wrong")] {
            let resp = svc.ready().await.unwrap().call(call("/api", auth)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Basic realm=\"obsbox\", charset=\"UTF-8\"");
            bodies.push(resp.into_body());
        }
        assert_eq!(bodies[0], bodies[1], "missing and wrong tokens get the same answer");
        let resp = svc.ready().await.unwrap().call(call("/api", Some("Bearer t0ken"))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = svc.ready().await.unwrap().call(call("/healthz", None)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = svc.ready().await.unwrap().call(call("/healthz/x", None)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "open paths match exactly");

        let (g, _) = guard(Scheme::Bearer, &["t0ken"]);
        let resp = g.layer().layer(ok).oneshot(call("/v1/traces", None)).await.unwrap();
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer");
        let resp = RequireTokenLayer::optional(None).layer(ok).oneshot(call("/v1/traces", None)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "no guard: open");
    }
}
