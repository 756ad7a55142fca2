//! The HTTP transport of the S3 client: hyper + rustls with the ring provider (http and https).
//!
//! `object_store`'s own transport is reqwest, which needs reqwest's TLS; its rustls backends either
//! pull aws-lc-rs or make every reqwest client of the process panic unless a default crypto
//! provider was installed first. This one is handed to the S3 builder instead
//! (`with_http_connector`), so TLS is configured here, for this client only.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body::{Body, Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as HyperHttpConnector;
use hyper_util::rt::TokioExecutor;
use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse, HttpResponseBody,
    HttpService,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::{ClusterError, Result};

/// Builds the hyper client for the S3 store; `ClientOptions` are not used (the timeouts are ours).
#[derive(Debug)]
pub(crate) struct HyperConnector {
    tls: Arc<rustls::ClientConfig>,
    request_timeout: Duration,
    connect_timeout: Duration,
    failover: Arc<Vec<Uri>>,
}

impl HyperConnector {
    /// TLS trusts the Mozilla roots (compiled in: no system certificate store needed) plus the
    /// PEM certificates of `ca_file`, if any.
    /// `failover`: other endpoints (scheme and authority) of the same store, tried in turn when
    /// connecting fails.
    pub(crate) fn new(
        ca_file: Option<&std::path::Path>,
        request_timeout: Duration,
        connect_timeout: Duration,
        failover: Vec<Uri>,
    ) -> Result<Self> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(path) = ca_file {
            let bad = |message: String| ClusterError::Config { key: "object_store.ca_file", message };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(bad(format!("{}: no PEM certificate in it", path.display())));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| bad(format!("{}: {e}", path.display())))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClusterError::Config { key: "object_store.endpoint", message: format!("tls: {e}") })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(HyperConnector { tls: Arc::new(tls), request_timeout, connect_timeout, failover: Arc::new(failover) })
    }
}

impl HttpConnector for HyperConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let mut http = HyperHttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(60)).build(https);
        Ok(HttpClient::new(HyperService {
            client,
            timeout: self.request_timeout,
            failover: self.failover.clone(),
            preferred: AtomicUsize::new(0),
        }))
    }
}

#[derive(Debug)]
struct HyperService {
    client: Client<HttpsConnector<HyperHttpConnector>, HttpRequestBody>,
    /// Until the response headers, and then again as the longest pause between body chunks.
    timeout: Duration,
    /// Other endpoints of the same store, tried when connecting fails (see `call`).
    failover: Arc<Vec<Uri>>,
    /// The target that answered last: 0 is the request's own endpoint, i > 0 is `failover[i - 1]`.
    preferred: AtomicUsize,
}

impl HyperService {
    async fn send(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let response = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => return Err(HttpError::new(HttpErrorKind::Timeout, TimedOut(self.timeout))),
            Ok(Err(e)) if e.is_connect() => return Err(HttpError::new(HttpErrorKind::Connect, Chain::of(&e))),
            Ok(Err(e)) => return Err(HttpError::new(HttpErrorKind::Request, Chain::of(&e))),
            Ok(Ok(r)) => r,
        };
        let (parts, body) = response.into_parts();
        let body = IdleTimeout { inner: body, sleep: tokio::time::sleep(self.timeout), idle: self.timeout };
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

/// `req` sent to `target`'s scheme and authority instead of its own, keeping its own `Host`: the
/// request is signed for that host (SigV4 signs `host`), and the nodes of one store accept any.
fn redirect(parts: &http::request::Parts, body: &HttpRequestBody, target: Option<&Uri>) -> HttpRequest {
    let mut uri = parts.uri.clone();
    let mut headers = parts.headers.clone();
    if let Some(target) = target {
        if let Some(value) = parts.uri.authority().and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()) {
            headers.insert(http::header::HOST, value);
        }
        let mut p = uri.into_parts();
        p.scheme = target.scheme().cloned();
        p.authority = target.authority().cloned();
        uri = Uri::from_parts(p).unwrap_or_else(|_| parts.uri.clone());
    }
    let mut req = http::Request::new(body.clone());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = parts.version;
    *req.headers_mut() = headers;
    req
}

#[derive(Debug, thiserror::Error)]
#[error("request timed out after {0:?}")]
struct TimedOut(Duration);

/// An error with its whole source chain in the message: hyper-util's own says only
/// `client error (Connect)`, the cause (refused, certificate unknown) is in its sources.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Chain(String);

impl Chain {
    fn of(e: &(dyn std::error::Error + 'static)) -> Chain {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        Chain(text)
    }
}

#[async_trait::async_trait]
impl HttpService for HyperService {
    /// With failover endpoints: starts at the one that answered last and moves on to the next only
    /// when connecting fails (nothing was sent, so any request, idempotent or not, may go again).
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        if self.failover.is_empty() {
            return self.send(req).await;
        }
        let (parts, body) = req.into_parts();
        let targets = self.failover.len() + 1;
        let first = self.preferred.load(Ordering::Relaxed) % targets;
        let mut last = None;
        for step in 0..targets {
            let i = (first + step) % targets;
            let target = if i == 0 { None } else { Some(&self.failover[i - 1]) };
            match self.send(redirect(&parts, &body, target)).await {
                Err(e) if e.kind() == HttpErrorKind::Connect => {
                    tracing::debug!(target = ?target.map(|t| t.to_string()), error = %e, "object store endpoint unreachable, trying the next");
                    last = Some(e);
                }
                other => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return other;
                }
            }
        }
        Err(last.expect("at least one target"))
    }
}

pin_project_lite::pin_project! {
    /// A response body that fails when no chunk arrives for `idle`.
    struct IdleTimeout {
        #[pin]
        inner: hyper::body::Incoming,
        #[pin]
        sleep: tokio::time::Sleep,
        idle: Duration,
    }
}

impl Body for IdleTimeout {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep.as_mut().reset(tokio::time::Instant::now() + *this.idle);
                Poll::Ready(frame.map(|f| f.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e))))
            }
            Poll::Pending => match this.sleep.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::new(HttpErrorKind::Timeout, TimedOut(*this.idle))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
