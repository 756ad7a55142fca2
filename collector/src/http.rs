//! The OTLP/HTTP receiver: `POST /v1/traces`, `/v1/logs`, `/v1/metrics`, protobuf or JSON,
//! gzip or not, with CORS for browser SDKs. Reads the body under the limits and hands it to
//! [`Collector::export`]; it decodes nothing itself. `POST /v1/alertmanager` is routed to
//! `alertmanager.rs`, which reads its body with the same [`read_body`].

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use obsbox_storage::Signal;
use prost::Message;
use tower_http::cors::{Any, CorsLayer};

use crate::CollectorError;
use crate::alertmanager;
use crate::decode::{Compression, Format};
use crate::error::IngestError;
use crate::service::{Collector, Exported, InflightPermit};
use crate::telemetry::Transport;

/// The OTLP/HTTP router: `POST /v1/traces`, `/v1/logs`, `/v1/metrics` (and CORS preflight), and
/// `POST /v1/alertmanager`, Alertmanager's webhook (`docs/alertmanager.md`).
///
/// Other methods on those paths get 405, other paths 404. With [`Collector::with_auth`], requests
/// without a valid `Authorization: Bearer` token get 401 (CORS preflights pass).
pub fn http_router(collector: Collector) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/logs", post(logs))
        .route("/v1/metrics", post(metrics))
        .route("/v1/alertmanager", post(alertmanager::receive))
        // Inside CORS: a preflight (which carries no credentials) is answered before the token
        // check, and a 401 still carries the CORS headers a browser needs to read it.
        .layer(obsbox_net::RequireTokenLayer::optional(collector.http_guard().cloned()))
        .layer(cors())
        .with_state(collector)
}

/// Serves [`http_router`] on `listener` until `shutdown` resolves, then drains open requests.
pub async fn serve_http(
    listener: impl Into<obsbox_net::Listener>,
    collector: Collector,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CollectorError> {
    listener.into().serve(http_router(collector), shutdown).await.map_err(CollectorError::Http)
}

/// Browsers may post OTLP from any origin; they send these headers (the OpenTelemetry JS
/// exporters add `traceparent`-style propagation headers and user-configured auth).
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            header::AUTHORIZATION,
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("tracestate"),
            HeaderName::from_static("baggage"),
            HeaderName::from_static("x-requested-with"),
        ])
        .expose_headers([header::RETRY_AFTER])
        .max_age(Duration::from_secs(3600))
}

async fn traces(State(c): State<Collector>, req: Request) -> Response {
    handle(c, Signal::Traces, req).await
}

async fn logs(State(c): State<Collector>, req: Request) -> Response {
    handle(c, Signal::Logs, req).await
}

async fn metrics(State(c): State<Collector>, req: Request) -> Response {
    handle(c, Signal::Metrics, req).await
}

async fn handle(collector: Collector, signal: Signal, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let format = match content_type(&parts.headers) {
        Ok(format) => format,
        Err(e) => {
            // No usable format to answer in: JSON is the readable choice.
            collector.finish(signal, Transport::Http, &Err(e.clone()));
            return error_response(&e, Format::Json);
        }
    };
    let result = receive(&collector, signal, format, &parts.headers, body).await;
    collector.finish(signal, Transport::Http, &result);
    match result {
        Ok(exported) => ok_response(format, exported.response),
        Err(e) => error_response(&e, format),
    }
}

/// Checks headers, takes the in-flight budget, reads the body under the size limit, exports.
async fn receive(
    collector: &Collector,
    signal: Signal,
    format: Format,
    headers: &HeaderMap,
    body: Body,
) -> Result<Exported, IngestError> {
    let compression = content_encoding(headers)?;
    let (bytes, permit) = read_body(collector, headers, body).await?;
    collector.export(signal, Transport::Http, format, compression, bytes, permit).await
}

/// Takes the in-flight budget for the body and reads it under `max_body_bytes`: 413 when
/// larger, 429 when the budget cannot hold it. The permit covers the bytes returned.
pub(crate) async fn read_body(
    collector: &Collector,
    headers: &HeaderMap,
    mut body: Body,
) -> Result<(Bytes, InflightPermit), IngestError> {
    let max = collector.limits().max_body_bytes;
    let content_length = content_length(headers)?;
    if let Some(len) = content_length
        && len > max
    {
        discard(body, max).await;
        return Err(body_too_large(max));
    }
    // Known length: reserve exactly that before reading. Unknown (chunked): reserve the most
    // the body may be, and give back the rest once it is read.
    let mut permit = match collector.reserve(content_length.unwrap_or(max)) {
        Ok(p) => p,
        Err(e) => {
            discard(body, max).await;
            return Err(e);
        }
    };
    let bytes: Bytes = match Limited::new(&mut body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            discard(body, max).await;
            return Err(body_too_large(max));
        }
        Err(e) => {
            tracing::debug!(error = %e, "failed to read otlp/http request body");
            return Err(IngestError::invalid("failed to read the request body"));
        }
    };
    permit.shrink_to(bytes.len());
    Ok((bytes, permit))
}

/// Reads and drops what is left of a refused body (at most a few times `max`, for at most a few
/// seconds), so that the client, still sending, gets the error response instead of a connection
/// reset.
async fn discard(body: Body, max: usize) {
    obsbox_net::discard_body(body, max.saturating_mul(4).max(16 << 20), Duration::from_secs(5)).await;
}

fn body_too_large(max: usize) -> IngestError {
    IngestError::too_large(format!("request body is larger than the limit of {max} bytes"))
}

/// `application/x-protobuf` or `application/json`, parameters (`; charset=utf-8`) allowed.
fn content_type(headers: &HeaderMap) -> Result<Format, IngestError> {
    const EXPECTED: &str = "expected application/x-protobuf or application/json";
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(IngestError::unsupported(format!("missing Content-Type, {EXPECTED}")));
    };
    let media_type = value.to_str().ok().and_then(|v| v.split(';').next()).map(str::trim);
    match media_type {
        Some(t) if t.eq_ignore_ascii_case("application/x-protobuf") => Ok(Format::Protobuf),
        Some(t) if t.eq_ignore_ascii_case("application/json") => Ok(Format::Json),
        _ => {
            Err(IngestError::unsupported(format!("unsupported Content-Type{}, {EXPECTED}", quoted_for_message(value))))
        }
    }
}

/// `gzip`, `identity` or none.
fn content_encoding(headers: &HeaderMap) -> Result<Compression, IngestError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Compression::Identity);
    };
    match value.to_str().map(str::trim) {
        Ok(v) if v.eq_ignore_ascii_case("gzip") => Ok(Compression::Gzip),
        Ok(v) if v.eq_ignore_ascii_case("identity") || v.is_empty() => Ok(Compression::Identity),
        _ => Err(IngestError::unsupported(format!(
            "unsupported Content-Encoding{}, expected gzip or identity",
            quoted_for_message(value)
        ))),
    }
}

fn content_length(headers: &HeaderMap) -> Result<Option<usize>, IngestError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .ok_or_else(|| IngestError::invalid("invalid Content-Length"))
        })
        .transpose()
}

/// ` "value"` for short printable header values, nothing otherwise.
fn quoted_for_message(value: &HeaderValue) -> String {
    match value.to_str() {
        Ok(v) if v.len() <= 64 => format!(" \"{v}\""),
        _ => String::new(),
    }
}

fn ok_response(format: Format, body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()))], body).into_response()
}

/// The error as a `google.rpc.Status` in the request's format, with `Retry-After` when
/// retryable.
fn error_response(e: &IngestError, format: Format) -> Response {
    let body = match format {
        Format::Protobuf => Bytes::from(e.rpc_status().encode_to_vec()),
        Format::Json => {
            Bytes::from(serde_json::json!({ "code": e.code.grpc_code() as i32, "message": e.message }).to_string())
        }
    };
    let mut response =
        (e.code.http_status(), [(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()))], body)
            .into_response();
    if let Some(secs) = e.retry_after_secs() {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.clone(), HeaderValue::from_str(v).expect("header value"))).collect()
    }

    #[test]
    fn content_types() {
        let ct = |v: &str| content_type(&headers(&[(header::CONTENT_TYPE, v)]));
        assert_eq!(ct("application/x-protobuf"), Ok(Format::Protobuf));
        assert_eq!(ct("application/json"), Ok(Format::Json));
        assert_eq!(ct("Application/JSON; charset=utf-8"), Ok(Format::Json));
        let err = ct("text/plain").unwrap_err();
        assert_eq!(err.code.http_status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(err.message.contains("text/plain"), "{}", err.message);
        assert!(content_type(&HeaderMap::new()).is_err());
    }

    #[test]
    fn content_encodings() {
        let ce = |v: &str| content_encoding(&headers(&[(header::CONTENT_ENCODING, v)]));
        assert_eq!(content_encoding(&HeaderMap::new()), Ok(Compression::Identity));
        assert_eq!(ce("gzip"), Ok(Compression::Gzip));
        assert_eq!(ce("identity"), Ok(Compression::Identity));
        let err = ce("br").unwrap_err();
        assert_eq!(err.code.http_status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(err.message, "unsupported Content-Encoding \"br\", expected gzip or identity");
    }

    #[tokio::test]
    async fn with_auth_every_route_wants_a_bearer_token_but_preflights_pass() {
        use tower::ServiceExt;

        let registry = prometheus::Registry::new();
        let failures = obsbox_net::AuthFailures::register(&registry).unwrap();
        let tokens = obsbox_net::TokenSet::new(&[obsbox_net::Token::new("ingest-t0ken")]);
        let store = std::sync::Arc::new(obsbox_storage::MemStore::new());
        let collector =
            Collector::new(store, crate::Limits::default(), &registry).unwrap().with_auth(tokens, &failures);
        let router = http_router(collector);
        let post = |path: &str, auth: Option<&str>| {
            let mut req = http::Request::post(path)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ORIGIN, "https://app.example")
                .body(Body::from("{}"))
                .unwrap();
            if let Some(a) = auth {
                req.headers_mut().insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
            }
            req
        };
        for path in ["/v1/traces", "/v1/logs", "/v1/metrics", "/v1/alertmanager"] {
            for auth in [None, Some("Bearer wrong"), Some("Basic aW5nZXN0LXQwa2Vu")] {
                let resp = router.clone().oneshot(post(path, auth)).await.unwrap();
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path} {auth:?}");
                assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
                assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*", "a browser can read the 401");
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, obsbox_net::REFUSAL_MESSAGE, "no detail on what was wrong");
            }
        }
        let resp = router.clone().oneshot(post("/v1/traces", Some("Bearer ingest-t0ken"))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let preflight = http::Request::options("/v1/traces")
            .header(header::ORIGIN, "https://app.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization,content-type")
            .body(Body::empty())
            .unwrap();
        let resp = router.oneshot(preflight).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().contains("authorization"));
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        assert!(text.contains("obsbox_auth_failures_total{listener=\"otlp_http\"} 12"), "{text}");
    }
}
