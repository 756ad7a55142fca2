//! The accept/serve loop of every listener: TLS, timeouts and a connection limit around any
//! tower HTTP service (an axum `Router`, tonic's `Routes`).
//!
//! Per connection, in order: the connection limit (over it, the socket is closed at once), the
//! TLS handshake under `tls_handshake_timeout`, then hyper (HTTP/1.1 and HTTP/2, or HTTP/2 only
//! for gRPC) with `header_read_timeout` for HTTP/1 request heads and keep-alive pings for
//! HTTP/2. Each request body must arrive within `request_body_timeout` of the request's start
//! ([`RequestBody`]). A connection with no request in flight for `idle_timeout` (counted from
//! the end of its last response, or from its start) is shut down gracefully, whatever bytes
//! still trickle in: this is what closes idle and slow-header connections on HTTP/2 too, where
//! hyper has no header timeout, and on connections that never send a byte.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;
use tracing::{debug, warn};

use crate::NetError;
use crate::tls::{Port, Tls};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `[listen]`: the three listen addresses and the timeouts and limits every listener applies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// OTLP/gRPC.
    pub otlp_grpc: String,
    /// OTLP/HTTP.
    pub otlp_http: String,
    /// Web UI, query APIs, `/metrics`, `/healthz`, `/readyz`.
    pub http: String,
    /// How long a client may take to complete the TLS handshake.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// How long an HTTP/1 client may take to send a request's head (line and headers).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a request body may take to arrive, from the start of the request.
    #[serde(with = "humantime_serde")]
    pub request_body_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP/2 connections are pinged this often; a peer that does not answer within
    /// `http2_keepalive_timeout` is disconnected.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// See `http2_keepalive_interval`.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// Open connections per listener; connections beyond it are closed at once.
    pub max_connections: usize,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            otlp_grpc: "0.0.0.0:4317".into(),
            otlp_http: "0.0.0.0:4318".into(),
            http: "0.0.0.0:16686".into(),
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            request_body_timeout: Duration::from_secs(60),
            // Above the usual client pool idle times (Go and reqwest 90 s), so clients close
            // first and do not race a server close with a new request.
            idle_timeout: Duration::from_secs(120),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            // An idle connection costs ~10 KiB (tests/e2e/slowloris.rs): 20 MiB per full listener.
            max_connections: 2048,
        }
    }
}

/// The most connections a listener may allow (each costs a file descriptor and memory).
const MAX_CONNECTIONS: usize = 1_000_000;

impl ListenConfig {
    /// Checks every value; the error names the key (`listen.KEY`).
    pub fn validate(&self) -> Result<(), NetError> {
        for (key, addr) in
            [("listen.otlp_grpc", &self.otlp_grpc), ("listen.otlp_http", &self.otlp_http), ("listen.http", &self.http)]
        {
            if addr.parse::<SocketAddr>().is_err() {
                return Err(NetError::InvalidSetting { key, reason: format!("{addr:?} is not an IP:port address") });
            }
        }
        for (key, value) in [
            ("listen.tls_handshake_timeout", self.tls_handshake_timeout),
            ("listen.header_read_timeout", self.header_read_timeout),
            ("listen.request_body_timeout", self.request_body_timeout),
            ("listen.idle_timeout", self.idle_timeout),
            ("listen.http2_keepalive_interval", self.http2_keepalive_interval),
            ("listen.http2_keepalive_timeout", self.http2_keepalive_timeout),
        ] {
            if !(Duration::from_millis(100)..=Duration::from_secs(24 * 3600)).contains(&value) {
                return Err(NetError::InvalidSetting {
                    key,
                    reason: format!("{} is outside 100ms..24h", humantime::format_duration(value)),
                });
            }
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(NetError::InvalidSetting {
                key: "listen.max_connections",
                reason: format!("{} is outside 1..={MAX_CONNECTIONS}", self.max_connections),
            });
        }
        Ok(())
    }
}

/// The timeouts and limits of one listener.
#[derive(Clone, Debug)]
struct Options {
    tls_handshake_timeout: Duration,
    header_read_timeout: Duration,
    request_body_timeout: Duration,
    idle_timeout: Duration,
    http2_keepalive_interval: Duration,
    http2_keepalive_timeout: Duration,
    max_connections: usize,
}

impl From<&ListenConfig> for Options {
    fn from(c: &ListenConfig) -> Self {
        Options {
            tls_handshake_timeout: c.tls_handshake_timeout,
            header_read_timeout: c.header_read_timeout,
            request_body_timeout: c.request_body_timeout,
            idle_timeout: c.idle_timeout,
            http2_keepalive_interval: c.http2_keepalive_interval,
            http2_keepalive_timeout: c.http2_keepalive_timeout,
            max_connections: c.max_connections,
        }
    }
}

/// A bound listener with its TLS configuration, timeouts and connection limit.
///
/// `From<TcpListener>` gives plain text, the default limits, HTTP/1.1 and HTTP/2.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    http2_only: bool,
    options: Options,
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Self {
        Listener { tcp, tls: None, http2_only: false, options: Options::from(&ListenConfig::default()) }
    }
}

impl Listener {
    /// A listener for `port` with `config`'s timeouts and limits, over TLS when `tls` is set.
    /// The gRPC port serves HTTP/2 only.
    pub fn new(tcp: TcpListener, config: &ListenConfig, tls: Option<&Tls>, port: Port) -> Result<Listener, NetError> {
        config.validate()?;
        let tls = match tls {
            Some(tls) => Some(TlsAcceptor::from(tls.server_config(port).map_err(|e| NetError::InvalidSetting {
                key: "tls",
                reason: format!("cannot build the TLS configuration: {e}"),
            })?)),
            None => None,
        };
        Ok(Listener { tcp, tls, http2_only: port == Port::OtlpGrpc, options: Options::from(config) })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Serves `service` until `shutdown` resolves; then stops accepting, lets requests in flight
    /// finish and closes idle connections, and returns once every connection is closed.
    pub async fn serve<S, B>(self, service: S, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()>
    where
        S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(self.options.header_read_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(self.options.http2_keepalive_interval)
            .keep_alive_timeout(self.options.http2_keepalive_timeout);
        if self.http2_only {
            builder = builder.http2_only();
        }
        let shared = Arc::new(Shared { builder, tls: self.tls, options: self.options });
        let max = shared.options.max_connections;
        let permits = Arc::new(Semaphore::new(max));
        let (stop, stopped) = watch::channel(false);
        let mut refused = Refused::default();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.tcp.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to be freed.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                // Closing at once costs the served connections nothing.
                drop(tcp);
                refused.count(max);
                continue;
            };
            let (shared, service, stopped) = (shared.clone(), service.clone(), stopped.clone());
            tokio::spawn(async move {
                connection(tcp, peer, &shared, service, stopped).await;
                drop(permit);
            });
        }
        drop(self.tcp);
        let _ = stop.send(true);
        // Every connection task holds a permit until it ends.
        let _ = permits.acquire_many(max as u32).await;
        Ok(())
    }
}

/// Rate-limited warning for connections refused over the limit.
#[derive(Default)]
struct Refused {
    since_warning: u64,
    last_warning: Option<Instant>,
}

impl Refused {
    fn count(&mut self, max: usize) {
        self.since_warning += 1;
        if self.last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            warn!(
                refused = self.since_warning,
                max_connections = max,
                "connection limit reached, closing new connections"
            );
            self.since_warning = 0;
            self.last_warning = Some(Instant::now());
        }
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

struct Shared {
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    options: Options,
}

async fn connection<S, B>(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    service: S,
    mut stopped: watch::Receiver<bool>,
) where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let _ = tcp.set_nodelay(true);
    match &shared.tls {
        None => serve_connection(TokioIo::new(tcp), shared, service, stopped).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                r = tokio::time::timeout(shared.options.tls_handshake_timeout, acceptor.accept(tcp)) => r,
                _ = stopped.wait_for(|s| *s) => return,
            };
            match handshake {
                Ok(Ok(tls)) => serve_connection(TokioIo::new(tls), shared, service, stopped).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "tls handshake failed"),
                Err(_) => debug!(%peer, "tls handshake timed out"),
            }
        }
    }
}

async fn serve_connection<I, S, B>(io: I, shared: &Shared, service: S, mut stopped: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let activity = Arc::new(Activity::new());
    let service =
        ConnService { inner: service, activity: activity.clone(), body_timeout: shared.options.request_body_timeout };
    let conn = shared.builder.serve_connection(io, service);
    tokio::pin!(conn);
    let idle_timeout = shared.options.idle_timeout;
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = activity.idle_for(idle_timeout), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = stopped.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            // Closing: requests in flight finish; a connection with none (a half-sent head, a
            // peer ignoring GOAWAY) is dropped after a short grace.
            () = tokio::time::sleep(Duration::from_secs(1)), if closing => {
                if activity.in_flight() == 0 {
                    return;
                }
            }
        }
    }
}

/// Requests in flight on one connection and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity { in_flight: AtomicUsize::new(0), idle_since: Mutex::new(Instant::now()) }
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let since = *self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
            let deadline = match self.in_flight() {
                0 if since.elapsed() >= timeout => return,
                0 => since + timeout,
                _ => Instant::now() + timeout,
            };
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A request in flight, from the call until its response body is dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut since = self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        *since = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Adapts a tower service to hyper for one connection: bodies get their deadline, requests are
/// counted as activity until their response body is done.
#[derive(Clone)]
struct ConnService<S> {
    inner: S,
    activity: Arc<Activity>,
    body_timeout: Duration,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ResponseBody<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let in_flight = self.activity.start();
        let req = req.map(|body| RequestBody::new(body, self.body_timeout));
        let mut inner = self.inner.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            let response = inner.call(req).await?;
            Ok(response.map(|body| ResponseBody { inner: body, _in_flight: in_flight }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A request body that fails once `request_body_timeout` has passed since the request
    /// started and the body is not complete.
    pub struct RequestBody {
        #[pin]
        inner: Incoming,
        started: Instant,
        limit: Duration,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl RequestBody {
    fn new(inner: Incoming, limit: Duration) -> RequestBody {
        RequestBody { inner, started: Instant::now(), limit, deadline: None }
    }
}

/// The error of a [`RequestBody`] that took longer than `request_body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {}", humantime::format_duration(*.0))]
pub struct BodyTimeout(Duration);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        // The timer is only armed for bodies that are not already buffered.
        let deadline =
            this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(*this.started + *this.limit)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(*this.limit).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it is dropped.
    struct ResponseBody<B> {
        #[pin]
        inner: B,
        _in_flight: InFlight,
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ListenConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let check = |edit: &dyn Fn(&mut ListenConfig), key: &str| {
            let mut c = ListenConfig::default();
            edit(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{e}");
        };
        check(&|c| c.http = "localhost".into(), "listen.http");
        check(&|c| c.otlp_grpc = ":4317".into(), "listen.otlp_grpc");
        check(&|c| c.tls_handshake_timeout = Duration::ZERO, "listen.tls_handshake_timeout");
        check(&|c| c.header_read_timeout = Duration::from_millis(10), "listen.header_read_timeout");
        check(&|c| c.request_body_timeout = Duration::from_secs(2 * 24 * 3600), "listen.request_body_timeout");
        check(&|c| c.idle_timeout = Duration::ZERO, "listen.idle_timeout");
        check(&|c| c.http2_keepalive_interval = Duration::ZERO, "listen.http2_keepalive_interval");
        check(&|c| c.http2_keepalive_timeout = Duration::ZERO, "listen.http2_keepalive_timeout");
        check(&|c| c.max_connections = 0, "listen.max_connections");
    }

    /// A response body streamed for longer than `idle_timeout` is in flight and not cut; once
    /// it is done, the connection is closed after `idle_timeout`.
    #[tokio::test]
    async fn streaming_responses_are_in_flight_and_idle_connections_close() {
        use http_body_util::BodyExt;

        let config = ListenConfig { idle_timeout: Duration::from_millis(300), ..ListenConfig::default() };
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = Listener::new(tcp, &config, None, Port::Ui).unwrap();
        let addr = listener.local_addr().unwrap();
        let service = tower::service_fn(|_req: Request<RequestBody>| async {
            let chunks = futures::stream::unfold(0, |i| async move {
                if i == 12 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"chunk "))), i + 1))
            });
            Ok::<_, Infallible>(Response::new(http_body_util::StreamBody::new(chunks)))
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(listener.serve(service, async {
            let _ = stopped.await;
        }));

        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        let conn = tokio::spawn(conn);
        let req = Request::get("/").body(http_body_util::Empty::<Bytes>::new()).unwrap();
        let body = sender.send_request(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "chunk ".repeat(12), "1.8 s of streaming outlives the 300 ms idle timeout");
        let closed = tokio::time::timeout(Duration::from_secs(3), conn).await;
        assert!(closed.is_ok(), "the idle keep-alive connection is closed");
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    /// An HTTP/2 peer that stops answering pings is disconnected after the keep-alive interval
    /// and timeout, long before the idle timeout.
    #[tokio::test]
    async fn http2_peers_that_do_not_answer_pings_are_disconnected() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let config = ListenConfig {
            http2_keepalive_interval: Duration::from_millis(200),
            http2_keepalive_timeout: Duration::from_millis(300),
            ..ListenConfig::default()
        };
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = Listener::new(tcp, &config, None, Port::OtlpGrpc).unwrap();
        let addr = listener.local_addr().unwrap();
        let service = tower::service_fn(|_req: Request<RequestBody>| async {
            Ok::<_, Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
        });
        tokio::spawn(listener.serve(service, std::future::pending()));

        let mut stream = TcpStream::connect(addr).await.unwrap();
        // The preface and an empty SETTINGS frame; then read everything and answer nothing.
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
        let started = std::time::Instant::now();
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
        assert!(read.is_ok(), "still connected after 5 s without answering pings");
        // A PING frame header: payload length 8, type 6.
        assert!(received.windows(4).any(|w| w == [0, 0, 8, 6]), "the server pinged");
        assert!(started.elapsed() >= Duration::from_millis(400), "closed after {:?}", started.elapsed());
    }

    #[test]
    fn durations_are_human_readable_and_unknown_keys_refused() {
        let c: ListenConfig = toml::from_str("idle_timeout = \"5s\"\nmax_connections = 10\n").unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.max_connections, 10);
        let e = toml::from_str::<ListenConfig>("idle_timout = \"5s\"\n").unwrap_err().to_string();
        assert!(e.contains("idle_timout"), "{e}");
    }
}
