//! The internal read API between obsbox nodes: a searcher asks an ingester for its data that is
//! not in the object store yet.
//!
//! `POST /internal/v1/read` ([`READ_PATH`]) takes one [`ReadCall`] as JSON (at most
//! [`MAX_CALL_BYTES`]), runs it on the blocking pool over the node's local store, through
//! [`ServedSegments`], and answers [`InternalAnswer`]: `{"result", "served", "released"}`, the
//! call's part ([`obsbox_storage::call::run`]) and the segment key lists of the cluster design
//! (`served`: sealed segments the answer includes, which the searcher leaves out of its
//! object-store part; `released`: segments released lately, so that a searcher whose metastore
//! snapshot lacks one refreshes it first). The searcher merges the parts
//! ([`obsbox_storage::call::merge`]).
//!
//! Errors, as `{"error": "..."}`: a malformed or invalid call ([`StoreError::InvalidQuery`],
//! [`ReadCall::check`]) is 400 with the reason; a body over the bound 413; more calls than the
//! node runs at once (after a short wait), or a retryable store error, 503 with `Retry-After`;
//! only a failure inside the store is 500.
//!
//! [`InternalClient`] is the searcher's side; a searcher answers a call ([`obsbox_storage::call::Answer`])
//! by: [`ask_all`] live ingesters; refresh its metastore snapshot if a `released` key is not in
//! it; pick the entries of [`ReadCall::signals`] overlapping [`ReadCall::time`] whose keys are
//! not `served`; `run` the call on a `SegmentSet` of them (blocking pool); `merge` the object-store
//! part first, then the ingesters' parts.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use obsbox_storage::call::{ReadCall, ReadResult, run};
use obsbox_storage::{Reader, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// Path of the read call.
pub const READ_PATH: &str = "/internal/v1/read";
/// Largest request body: a call is a query, not data.
pub const MAX_CALL_BYTES: usize = 1 << 20;
/// Calls one node runs at once by default.
const DEFAULT_CONCURRENCY: usize = 8;
/// How long a call waits for a free slot before it is refused with 503, by default.
const DEFAULT_QUEUE_WAIT: Duration = Duration::from_secs(1);
/// `Retry-After` of a refusal for lack of a slot.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The segment key lists that go with an answer (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentLists {
    /// Keys of the sealed, not yet released segments the reader answered from.
    pub served: Vec<String>,
    /// Keys of the segments released in the last minute.
    pub released: Vec<String>,
}

/// The node's local store as the internal API reads it; the binary implements it over its
/// store and uploader.
pub trait ServedSegments: Send + Sync + 'static {
    /// Calls `f` once with the local reader, while no segment can be released (the uploader's
    /// release waits), and returns the keys of the sealed segments `f` read from and of those
    /// released lately. Blocking: called on the blocking pool.
    fn read(&self, f: &mut dyn FnMut(&dyn Reader)) -> SegmentLists;
}

/// A store that uploads nothing: every answer comes from it, with empty key lists.
pub struct WholeStore(pub Arc<dyn Reader>);

impl ServedSegments for WholeStore {
    fn read(&self, f: &mut dyn FnMut(&dyn Reader)) -> SegmentLists {
        f(&*self.0);
        SegmentLists::default()
    }
}

/// The body of a successful answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InternalAnswer {
    /// The call's part, to merge with the other sources'.
    pub result: ReadResult,
    /// [`SegmentLists::served`].
    pub served: Vec<String>,
    /// [`SegmentLists::released`].
    pub released: Vec<String>,
}

/// The server side: [`InternalApi::router`] serves [`READ_PATH`].
#[derive(Clone)]
pub struct InternalApi {
    source: Arc<dyn ServedSegments>,
    permits: Arc<Semaphore>,
    queue_wait: Duration,
}

impl InternalApi {
    /// Serves calls over `source`, 8 at once, a call waiting at most 1 s for its turn.
    pub fn new(source: Arc<dyn ServedSegments>) -> Self {
        Self::with_limits(source, DEFAULT_CONCURRENCY, DEFAULT_QUEUE_WAIT)
    }

    /// Serves calls over `source`, `concurrency` at once (at least 1), a call waiting at most
    /// `queue_wait` for its turn before it is refused with 503.
    pub fn with_limits(source: Arc<dyn ServedSegments>, concurrency: usize, queue_wait: Duration) -> Self {
        InternalApi { source, permits: Arc::new(Semaphore::new(concurrency.max(1))), queue_wait }
    }

    /// The route, behind the token check of `state` ([`crate::AppState::with_auth`]) when it has
    /// one. Merge it into the UI port's router; it is not under the query APIs' time budget and
    /// response size limit (an answer may be large; the searcher has its own timeout).
    pub fn router(self, state: &crate::AppState) -> Router {
        Router::new()
            .route(READ_PATH, axum::routing::post(read))
            .layer(DefaultBodyLimit::max(MAX_CALL_BYTES))
            .layer(obsbox_net::RequireTokenLayer::optional(state.auth.clone()))
            .with_state(self)
    }
}

/// A refusal, in the native API's error shape.
fn refuse(status: StatusCode, message: impl Into<String>, retry_after: Option<Duration>) -> Response {
    let mut resp = (status, axum::Json(serde_json::json!({ "error": message.into() }))).into_response();
    if let Some(after) = retry_after {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    resp
}

fn store_refusal(e: StoreError) -> Response {
    match e {
        StoreError::InvalidQuery(m) => refuse(StatusCode::BAD_REQUEST, m, None),
        StoreError::Overloaded { retry_after } => {
            refuse(StatusCode::SERVICE_UNAVAILABLE, "store overloaded", Some(retry_after))
        }
        e if e.is_retryable() => refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), Some(BUSY_RETRY_AFTER)),
        e => {
            tracing::error!(error = %e, "internal read failed");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal error", None)
        }
    }
}

async fn read(State(api): State<InternalApi>, body: Bytes) -> Response {
    let call: ReadCall = match serde_json::from_slice(&body) {
        Ok(call) => call,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("bad read call: {e}"), None),
    };
    if let Err(e) = call.check() {
        return store_refusal(e);
    }
    let permit = match tokio::time::timeout(api.queue_wait, api.permits.clone().acquire_owned()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) | Err(_) => {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "too many internal reads at once", Some(BUSY_RETRY_AFTER));
        }
    };
    let source = api.source.clone();
    // The read and the encoding of a possibly large answer both stay off the async threads; the
    // permit is held until they end, even when the caller has gone.
    let answer = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut out = None;
        let lists = source.read(&mut |reader| out = Some(run(reader, &call)));
        let result =
            out.unwrap_or_else(|| Err(StoreError::Unavailable("the local store did not run the call".into())))?;
        let answer = InternalAnswer { result, served: lists.served, released: lists.released };
        serde_json::to_vec(&answer).map_err(|e| StoreError::Index(format!("encoding the answer: {e}")))
    })
    .await;
    match answer {
        Ok(Ok(json)) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Ok(Err(e)) => store_refusal(e),
        Err(e) => {
            tracing::error!(error = %e, "internal read task failed");
            refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal error", None)
        }
    }
}

/// Why a call through [`InternalClient`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    /// The node refused the call as invalid (400); the message says why.
    #[error("{0}")]
    BadRequest(String),
    /// The node is busy or its store unavailable (503); retry after the delay when given.
    #[error("node busy: {message}")]
    Busy {
        /// The node's message.
        message: String,
        /// Its `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// No answer (connection, timeout), another status, or an answer that does not decode.
    #[error("internal read from {url} failed: {message}")]
    Failed {
        /// The node's read URL.
        url: String,
        /// What went wrong.
        message: String,
    },
}

impl From<InternalError> for StoreError {
    /// For a searcher's reader: a refused call is the query's fault, everything else retryable.
    fn from(e: InternalError) -> Self {
        match e {
            InternalError::BadRequest(m) => StoreError::InvalidQuery(m),
            InternalError::Busy { retry_after: Some(retry_after), .. } => StoreError::Overloaded { retry_after },
            e => StoreError::Unavailable(e.to_string()),
        }
    }
}

/// A client of another node's internal read API. Cheap to clone (one connection pool).
#[derive(Clone, Debug)]
pub struct InternalClient {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl InternalClient {
    /// A client of the node whose UI port is at `base_url` (`http://host:16686`), sending
    /// `Authorization: Bearer <token>` when `token` is set; each call fails after `timeout`.
    pub fn new(base_url: &str, token: Option<String>, timeout: Duration) -> Result<Self, InternalError> {
        let url = format!("{}{READ_PATH}", base_url.trim_end_matches('/'));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| InternalError::Failed { url: url.clone(), message: e.to_string() })?;
        Ok(InternalClient { http, url, token })
    }

    /// The URL calls go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `call` on the node.
    pub async fn call(&self, call: &ReadCall) -> Result<InternalAnswer, InternalError> {
        let failed = |message: String| InternalError::Failed { url: self.url.clone(), message };
        let body = serde_json::to_vec(call).map_err(|e| failed(format!("encoding the call: {e}")))?;
        let mut req = self.http.post(&self.url).header(header::CONTENT_TYPE, "application/json").body(body);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| failed(e.to_string()))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_secs);
        let bytes = resp.bytes().await.map_err(|e| failed(format!("reading the answer: {e}")))?;
        match status {
            StatusCode::OK => {
                // A large answer is decoded off the async threads.
                tokio::task::spawn_blocking(move || serde_json::from_slice::<InternalAnswer>(&bytes))
                    .await
                    .map_err(|e| failed(format!("decoding task: {e}")))?
                    .map_err(|e| failed(format!("bad answer: {e}")))
            }
            StatusCode::BAD_REQUEST => Err(InternalError::BadRequest(error_message(&bytes))),
            StatusCode::SERVICE_UNAVAILABLE => Err(InternalError::Busy { message: error_message(&bytes), retry_after }),
            other => Err(failed(format!("status {other}: {}", error_message(&bytes)))),
        }
    }
}

/// What every live ingester answered to one call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IngesterParts {
    /// Their parts, in the clients' order.
    pub parts: Vec<ReadResult>,
    /// Keys some ingester served: leave these segments out of the object-store part.
    pub served: BTreeSet<String>,
    /// Keys released lately: when one is missing from the metastore snapshot, refresh the
    /// snapshot before choosing segments.
    pub released: BTreeSet<String>,
}

/// Asks every ingester at once. Any failure fails the whole (the first in the clients' order):
/// a missing ingester's acknowledged data would be missing from the answer.
pub async fn ask_all(clients: &[InternalClient], call: &ReadCall) -> Result<IngesterParts, InternalError> {
    let answers = futures::future::join_all(clients.iter().map(|c| c.call(call))).await;
    let mut out = IngesterParts::default();
    for answer in answers {
        let answer = answer?;
        out.parts.push(answer.result);
        out.served.extend(answer.served);
        out.released.extend(answer.released);
    }
    Ok(out)
}

/// The `error` of a refusal's JSON body, or the body as text.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Refusal {
        error: String,
    }
    match serde_json::from_slice::<Refusal>(body) {
        Ok(r) => r.error,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Mutex, mpsc};

    use axum::body::Body;
    use axum::http::{Method, Request};
    use http_body_util::BodyExt;
    use obsbox_storage::api::{Batch, Writer};
    use obsbox_storage::call::ReadCall;
    use obsbox_storage::{MemStore, SpanPredicate, SpanQuery, TimeRange};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    use tower::ServiceExt;

    use super::*;

    fn store_with_spans() -> Arc<MemStore> {
        let store = Arc::new(MemStore::new());
        let spans = (0..5).map(|n| obsbox_storage::testsuite::full_span(1, n, None)).collect();
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans { scope: None, spans, schema_url: String::new() }],
                schema_url: String::new(),
            }],
        };
        futures::executor::block_on(store.write(Batch::Traces(req))).unwrap();
        store
    }

    /// A source that says which segments it served, and can be made to wait (to fill the slots).
    struct Segments {
        store: Arc<MemStore>,
        gate: Mutex<Option<mpsc::Receiver<()>>>,
    }

    impl ServedSegments for Segments {
        fn read(&self, f: &mut dyn FnMut(&dyn Reader)) -> SegmentLists {
            if let Some(gate) = self.gate.lock().unwrap().take() {
                let _ = gate.recv();
            }
            f(&*self.store);
            SegmentLists { served: vec!["seg-1".into(), "seg-2".into()], released: vec!["seg-0".into()] }
        }
    }

    fn state(token: Option<&str>) -> crate::AppState {
        let registry = ::prometheus::Registry::new();
        let state =
            crate::AppState::new(Arc::new(MemStore::new()), registry.clone(), Arc::new(AtomicBool::new(true))).unwrap();
        match token {
            None => state,
            Some(t) => {
                let failures = obsbox_net::AuthFailures::register(&registry).unwrap();
                state.with_auth(obsbox_net::TokenSet::new(&[obsbox_net::Token::new(t)]), &failures)
            }
        }
    }

    fn app(source: Arc<dyn ServedSegments>) -> Router {
        InternalApi::new(source).router(&state(None))
    }

    fn all_spans(limit: usize) -> ReadCall {
        ReadCall::FindSpans(SpanQuery { predicate: SpanPredicate::All, time: TimeRange::ALL, limit })
    }

    async fn post(app: &Router, body: impl Into<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
        let req = Request::post(READ_PATH).body(body.into()).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
        (parts.status, parts.headers, body)
    }

    #[tokio::test]
    async fn a_call_is_answered_with_its_part_and_the_segment_lists() {
        let store = store_with_spans();
        let source = Arc::new(Segments { store: store.clone(), gate: Mutex::new(None) });
        let app = app(source);
        for call in [all_spans(3), ReadCall::Stats, ReadCall::Operations { time: TimeRange::ALL }] {
            let (status, headers, body) = post(&app, serde_json::to_vec(&call).unwrap()).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
            let answer: InternalAnswer = serde_json::from_str(&body).unwrap();
            assert_eq!(answer.result, run(&*store, &call).unwrap());
            assert_eq!(answer.served, vec!["seg-1", "seg-2"]);
            assert_eq!(answer.released, vec!["seg-0"]);
        }
        let (_, _, body) = post(&app, serde_json::to_vec(&all_spans(3)).unwrap()).await;
        let answer: InternalAnswer = serde_json::from_str(&body).unwrap();
        assert_eq!(answer.result.into_spans().unwrap().len(), 3);
        // Without segments: empty lists.
        let plain = self::app(Arc::new(WholeStore(store)));
        let (status, _, body) = post(&plain, serde_json::to_vec(&ReadCall::Stats).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.ends_with(r#""served":[],"released":[]}"#), "{body}");
    }

    #[tokio::test]
    async fn bad_input_is_a_4xx_with_the_reason() {
        let app = app(Arc::new(WholeStore(store_with_spans())));
        let regex = ReadCall::FindSpans(SpanQuery {
            predicate: SpanPredicate::AttributeRegex {
                scope: obsbox_storage::AttrScope::Item,
                key: "str".into(),
                regex: "(".into(),
            },
            time: TimeRange::ALL,
            limit: 1,
        });
        let bucket = ReadCall::SpanHistogram { predicate: SpanPredicate::All, time: TimeRange::ALL, bucket_ns: 0 };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{".to_vec(), "bad read call"),
            (b"".to_vec(), "bad read call"),
            (br#"{"drop_everything":{}}"#.to_vec(), "unknown variant"),
            (br#"{"trace":{"trace_id":"xyz"}}"#.to_vec(), "hex"),
            (br#"{"find_spans":{"predicate":"all","time":{"start_ns":0,"end_ns":1},"limit":-1}}"#.to_vec(), "bad read"),
            (format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes(), "bad read call"),
            (serde_json::to_vec(&regex).unwrap(), "regular expression"),
            (serde_json::to_vec(&bucket).unwrap(), "bucket"),
            (serde_json::to_vec(&all_spans(usize::MAX)).unwrap(), "limit"),
        ];
        for (body, reason) in cases {
            let (status, _, text) = post(&app, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
            let error: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(error["error"].as_str().unwrap().contains(reason), "{text} should say {reason}");
        }
        let (status, _, _) = post(&app, vec![b' '; MAX_CALL_BYTES + 1]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let req = Request::builder().method(Method::GET).uri(READ_PATH).body(Body::empty()).unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_calls_than_slots_are_refused_with_503_and_retry_after() {
        let (open, gate) = mpsc::channel();
        let source = Arc::new(Segments { store: store_with_spans(), gate: Mutex::new(Some(gate)) });
        let app = InternalApi::with_limits(source, 1, Duration::from_millis(100)).router(&state(None));
        let call = serde_json::to_vec(&ReadCall::Stats).unwrap();
        let first = tokio::spawn({
            let (app, call) = (app.clone(), call.clone());
            async move { post(&app, call).await }
        });
        // The first call holds the only slot until the gate opens.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, headers, body) = post(&app, call.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(headers[header::RETRY_AFTER], "1");
        assert!(body.contains("too many internal reads"), "{body}");
        open.send(()).unwrap();
        assert_eq!(first.await.unwrap().0, StatusCode::OK);
        assert_eq!(post(&app, call).await.0, StatusCode::OK, "the slot is free again");
    }

    /// A source that never runs the call (a bug in the binary's implementation).
    struct Skips;

    impl ServedSegments for Skips {
        fn read(&self, _: &mut dyn FnMut(&dyn Reader)) -> SegmentLists {
            SegmentLists::default()
        }
    }

    #[tokio::test]
    async fn store_errors_map_to_statuses() {
        for (error, status, retry) in [
            (
                (|| StoreError::Overloaded { retry_after: Duration::from_millis(2500) }) as fn() -> StoreError,
                StatusCode::SERVICE_UNAVAILABLE,
                Some("3"),
            ),
            (|| StoreError::Unavailable("closing".into()), StatusCode::SERVICE_UNAVAILABLE, Some("1")),
            (|| StoreError::Index("broken".into()), StatusCode::INTERNAL_SERVER_ERROR, None),
        ] {
            let app = app(Arc::new(ErrorSource(error)));
            let (got, headers, body) = post(&app, serde_json::to_vec(&all_spans(1)).unwrap()).await;
            assert_eq!(got, status, "{body}");
            assert_eq!(headers.get(header::RETRY_AFTER).map(|v| v.to_str().unwrap()), retry);
            assert!(!body.contains("broken"), "internal details stay in the log: {body}");
        }
        // A source that never runs the call is a retryable refusal, not a hang or a panic.
        let app = app(Arc::new(Skips));
        assert_eq!(post(&app, serde_json::to_vec(&ReadCall::Stats).unwrap()).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    /// A reader whose every call fails with the given error.
    struct ErrorSource(fn() -> StoreError);

    impl ServedSegments for ErrorSource {
        fn read(&self, f: &mut dyn FnMut(&dyn Reader)) -> SegmentLists {
            f(&ErrReader(self.0));
            SegmentLists::default()
        }
    }

    struct ErrReader(fn() -> StoreError);

    impl Reader for ErrReader {
        fn trace(&self, _: &[u8]) -> Result<Vec<obsbox_storage::SpanRecord>, StoreError> {
            Err((self.0)())
        }
        fn find_spans(&self, _: &SpanQuery) -> Result<Vec<obsbox_storage::SpanRecord>, StoreError> {
            Err((self.0)())
        }
        fn find_logs(&self, _: &obsbox_storage::LogQuery) -> Result<Vec<obsbox_storage::LogEntry>, StoreError> {
            Err((self.0)())
        }
        fn find_metrics(
            &self,
            _: &obsbox_storage::MetricQuery,
        ) -> Result<opentelemetry_proto::tonic::metrics::v1::MetricsData, StoreError> {
            Err((self.0)())
        }
        fn stats(&self) -> obsbox_storage::StoreStats {
            obsbox_storage::StoreStats::default()
        }
        fn find_trace_ids(&self, _: &SpanQuery) -> Result<Vec<Vec<u8>>, StoreError> {
            Err((self.0)())
        }
        fn operations(&self, _: TimeRange) -> Result<Vec<obsbox_storage::Operation>, StoreError> {
            Err((self.0)())
        }
        fn log_field_values(&self, _: obsbox_storage::LogField, _: TimeRange) -> Result<Vec<String>, StoreError> {
            Err((self.0)())
        }
        fn attribute_keys(
            &self,
            _: obsbox_storage::Signal,
            _: obsbox_storage::AttrScope,
            _: TimeRange,
        ) -> Result<Vec<String>, StoreError> {
            Err((self.0)())
        }
        fn attribute_values(
            &self,
            _: obsbox_storage::Signal,
            _: obsbox_storage::AttrScope,
            _: &str,
            _: TimeRange,
            _: usize,
        ) -> Result<Vec<(obsbox_storage::AttrValue, u64)>, StoreError> {
            Err((self.0)())
        }
        fn span_histogram(&self, _: &SpanPredicate, _: TimeRange, _: u64) -> Result<Vec<(u64, u64)>, StoreError> {
            Err((self.0)())
        }
        fn log_histogram(
            &self,
            _: &obsbox_storage::LogPredicate,
            _: TimeRange,
            _: u64,
        ) -> Result<Vec<(u64, u64)>, StoreError> {
            Err((self.0)())
        }
    }

    #[tokio::test]
    async fn the_route_merges_into_the_ui_ports_router() {
        let state = state(Some("s3cret"));
        let app = crate::router(state.clone())
            .merge(InternalApi::new(Arc::new(WholeStore(store_with_spans()))).router(&state));
        let call = serde_json::to_vec(&ReadCall::Stats).unwrap();
        let req =
            Request::post(READ_PATH).header(header::AUTHORIZATION, "Bearer s3cret").body(Body::from(call)).unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), StatusCode::OK);
        let req = Request::get("/healthz").body(Body::empty()).unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), StatusCode::OK, "the UI port's routes stay");
        let req = Request::get("/internal/v1/nope").header(header::AUTHORIZATION, "Bearer s3cret").body(Body::empty());
        assert_eq!(app.oneshot(req.unwrap()).await.unwrap().status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn with_a_token_the_read_needs_it() {
        let app = InternalApi::new(Arc::new(WholeStore(store_with_spans()))).router(&state(Some("s3cret")));
        let call = serde_json::to_vec(&ReadCall::Stats).unwrap();
        assert_eq!(post(&app, call.clone()).await.0, StatusCode::UNAUTHORIZED);
        let req =
            Request::post(READ_PATH).header(header::AUTHORIZATION, "Bearer s3cret").body(Body::from(call)).unwrap();
        assert_eq!(app.oneshot(req).await.unwrap().status(), StatusCode::OK);
    }

    /// Serves `router` on a free loopback port until the returned sender is dropped.
    async fn serve(router: Router) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        (format!("http://{addr}/"), stop)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_client_calls_a_node_over_http() {
        let store = store_with_spans();
        let source = Arc::new(Segments { store: store.clone(), gate: Mutex::new(None) });
        let (url, _stop) = serve(InternalApi::new(source).router(&state(Some("s3cret")))).await;
        let client = InternalClient::new(&url, Some("s3cret".into()), Duration::from_secs(5)).unwrap();
        assert!(client.url().ends_with("/internal/v1/read") && !client.url().contains("//internal"));
        for call in
            [all_spans(10), ReadCall::Trace { trace_id: obsbox_storage::testsuite::full_span(1, 0, None).trace_id }]
        {
            let answer = client.call(&call).await.unwrap();
            assert_eq!(answer.result, run(&*store, &call).unwrap(), "every field survives the trip");
            assert_eq!((answer.served.len(), answer.released.len()), (2, 1));
        }
        // A refused call is the query's fault; a wrong token is a failure.
        let err = client.call(&all_spans(usize::MAX)).await.unwrap_err();
        assert!(matches!(&err, InternalError::BadRequest(m) if m.contains("limit")), "{err}");
        assert!(matches!(StoreError::from(err), StoreError::InvalidQuery(_)));
        let stranger = InternalClient::new(&url, Some("wrong".into()), Duration::from_secs(5)).unwrap();
        let err = stranger.call(&ReadCall::Stats).await.unwrap_err();
        assert!(matches!(&err, InternalError::Failed { message, .. } if message.contains("401")), "{err}");
    }

    /// Writes round-robin to three memory stores, each behind its own internal read API; reads
    /// ask all three over HTTP and merge, as a searcher does.
    struct OverHttp {
        runtime: Arc<tokio::runtime::Runtime>,
        stores: Vec<Arc<MemStore>>,
        clients: Vec<InternalClient>,
        next: std::sync::atomic::AtomicUsize,
        _stops: Vec<tokio::sync::oneshot::Sender<()>>,
    }

    impl OverHttp {
        fn new(runtime: Arc<tokio::runtime::Runtime>) -> OverHttp {
            let stores: Vec<Arc<MemStore>> = (0..3).map(|_| Arc::new(MemStore::new())).collect();
            let (mut clients, mut stops) = (Vec::new(), Vec::new());
            for store in &stores {
                let api = InternalApi::new(Arc::new(WholeStore(store.clone())));
                let (url, stop) = runtime.block_on(async { serve(api.router(&state(None))).await });
                clients.push(InternalClient::new(&url, None, Duration::from_secs(10)).unwrap());
                stops.push(stop);
            }
            OverHttp { runtime, stores, clients, next: Default::default(), _stops: stops }
        }
    }

    impl Writer for OverHttp {
        fn write(&self, batch: Batch) -> obsbox_storage::WriteFuture {
            // The position in this store's order of writes, whichever node takes the batch.
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let written = self.stores[i % self.stores.len()].write(batch);
            Box::pin(async move { written.await.map(|_| obsbox_storage::WriteReceipt { seq: i as u64 + 1 }) })
        }
    }

    impl obsbox_storage::call::Answer for OverHttp {
        fn answer(&self, call: &ReadCall) -> Result<ReadResult, StoreError> {
            let parts = self.runtime.block_on(ask_all(&self.clients, call))?;
            obsbox_storage::call::merge(call, parts.parts)
        }
    }

    #[test]
    fn the_store_contract_holds_over_three_nodes_read_over_http() {
        let runtime =
            Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap());
        obsbox_storage::testsuite::run_all(&|| OverHttp::new(runtime.clone()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ask_all_gathers_every_ingesters_part_and_keys() {
        let (a, b) = (store_with_spans(), Arc::new(MemStore::new()));
        let (url_a, _stop_a) = serve(
            InternalApi::new(Arc::new(Segments { store: a.clone(), gate: Mutex::new(None) })).router(&state(None)),
        )
        .await;
        let (url_b, stop_b) = serve(InternalApi::new(Arc::new(WholeStore(b.clone()))).router(&state(None))).await;
        let clients: Vec<InternalClient> =
            [&url_a, &url_b].iter().map(|u| InternalClient::new(u, None, Duration::from_secs(5)).unwrap()).collect();
        let call = all_spans(100);
        let got = ask_all(&clients, &call).await.unwrap();
        assert_eq!(got.parts, vec![run(&*a, &call).unwrap(), run(&*b, &call).unwrap()]);
        assert_eq!(got.served.iter().collect::<Vec<_>>(), ["seg-1", "seg-2"]);
        assert_eq!(got.released.iter().collect::<Vec<_>>(), ["seg-0"]);
        let merged = obsbox_storage::call::merge(&call, got.parts).unwrap();
        assert_eq!(merged.into_spans().unwrap().len(), 5);
        assert!(ask_all(&[], &call).await.unwrap().parts.is_empty());
        // One ingester gone: the read fails rather than answer without its data.
        drop(stop_b);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let clients = vec![clients[0].clone(), InternalClient::new(&gone, None, Duration::from_secs(5)).unwrap()];
        let err = ask_all(&clients, &call).await.unwrap_err();
        assert!(matches!(&err, InternalError::Failed { url, .. } if url.starts_with(&gone)), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_client_gives_up_after_its_timeout_and_reports_busy_nodes() {
        let (open, gate) = mpsc::channel();
        let source = Arc::new(Segments { store: store_with_spans(), gate: Mutex::new(Some(gate)) });
        let (url, _stop) =
            serve(InternalApi::with_limits(source, 1, Duration::from_millis(50)).router(&state(None))).await;
        let slow = InternalClient::new(&url, None, Duration::from_millis(300)).unwrap();
        let started = std::time::Instant::now();
        let err = slow.call(&ReadCall::Stats).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert!(matches!(err, InternalError::Failed { .. }), "{err}");
        // The abandoned read still holds the only slot: the next call is refused as busy.
        let err = slow.call(&ReadCall::Stats).await.unwrap_err();
        assert!(
            matches!(&err, InternalError::Busy { retry_after: Some(d), .. } if *d == Duration::from_secs(1)),
            "{err}"
        );
        assert!(matches!(StoreError::from(err), StoreError::Overloaded { .. }));
        open.send(()).unwrap();
    }
}
