//! Errors: [`CollectorError`] for the crate's API, and the internal [`IngestError`] one request
//! fails with, whose [`ErrorCode`] maps to both an HTTP status and a gRPC code in one place.

use std::time::Duration;

use bytes::Bytes;
use obsbox_storage::StoreError;
use prost::Message;

/// Errors of the collector's API: bad configuration, metric registration, a server that fails.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    /// A [`Limits`](crate::Limits) value is out of range.
    #[error("invalid limit `{key}`: {reason}")]
    InvalidLimits {
        /// The configuration key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A configuration value (derived metrics, remote write) is out of range.
    #[error("invalid setting `{key}`: {reason}")]
    InvalidConfig {
        /// The configuration key, relative to its section.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A remote-write request failed.
    #[error("remote write failed: {0}")]
    RemoteWrite(String),
    /// The self-telemetry metrics could not be registered (e.g. registered twice).
    #[error("cannot register collector metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The OTLP/gRPC server failed.
    #[error("otlp/grpc server failed: {0}")]
    Grpc(#[source] std::io::Error),
    /// The OTLP/HTTP server failed.
    #[error("otlp/http server failed: {0}")]
    Http(#[source] std::io::Error),
}

/// Why a request failed, independent of the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    /// The payload cannot be decoded, or breaks a whole-request limit.
    InvalidArgument,
    /// The body (or its decompressed form) is larger than allowed.
    TooLarge,
    /// Content type or content encoding not supported.
    UnsupportedMediaType,
    /// The collector or the store is busy; retry later.
    Overloaded,
    /// The store cannot accept writes now; retry later.
    Unavailable,
    /// Anything else; details are logged, not returned.
    Internal,
}

impl ErrorCode {
    /// THE mapping from an error to the HTTP status and the gRPC code reporting it.
    pub(crate) fn statuses(self) -> (http::StatusCode, tonic::Code) {
        use http::StatusCode as H;
        use tonic::Code as G;
        match self {
            ErrorCode::InvalidArgument => (H::BAD_REQUEST, G::InvalidArgument),
            ErrorCode::TooLarge => (H::PAYLOAD_TOO_LARGE, G::ResourceExhausted),
            ErrorCode::UnsupportedMediaType => (H::UNSUPPORTED_MEDIA_TYPE, G::InvalidArgument),
            ErrorCode::Overloaded => (H::TOO_MANY_REQUESTS, G::ResourceExhausted),
            ErrorCode::Unavailable => (H::SERVICE_UNAVAILABLE, G::Unavailable),
            ErrorCode::Internal => (H::INTERNAL_SERVER_ERROR, G::Internal),
        }
    }

    /// HTTP status for this error.
    pub(crate) fn http_status(self) -> http::StatusCode {
        self.statuses().0
    }

    /// gRPC code for this error.
    pub(crate) fn grpc_code(self) -> tonic::Code {
        self.statuses().1
    }

    /// The `outcome` label of `obsbox_ingest_requests_total`.
    pub(crate) fn outcome(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedMediaType => "unsupported",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "error",
        }
    }
}

/// One request's failure: a code, a message safe to return to the client, and for retryable
/// failures the delay to suggest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IngestError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) retry_after: Option<Duration>,
}

/// Delay suggested when the collector's own in-flight budget is exhausted.
pub(crate) const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Delay suggested while the store's disk is full: freeing space takes an operator or retention.
pub(crate) const DISK_FULL_RETRY_AFTER: Duration = Duration::from_secs(5);

impl IngestError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        IngestError { code: ErrorCode::InvalidArgument, message: message.into(), retry_after: None }
    }

    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        IngestError { code: ErrorCode::TooLarge, message: message.into(), retry_after: None }
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        IngestError { code: ErrorCode::UnsupportedMediaType, message: message.into(), retry_after: None }
    }

    pub(crate) fn overloaded(message: impl Into<String>, retry_after: Duration) -> Self {
        IngestError { code: ErrorCode::Overloaded, message: message.into(), retry_after: Some(retry_after) }
    }

    /// An internal failure; the message returned to the client is generic on purpose.
    pub(crate) fn internal() -> Self {
        IngestError { code: ErrorCode::Internal, message: "internal error".into(), retry_after: None }
    }

    /// Maps a store error; the details of non-retryable ones are logged here, not returned.
    pub(crate) fn from_store(err: StoreError) -> Self {
        match err {
            StoreError::Overloaded { retry_after } => IngestError::overloaded(
                "the store is overloaded, retry later",
                retry_after.max(Duration::from_millis(1)),
            ),
            StoreError::Unavailable(reason) => {
                tracing::debug!(%reason, "store unavailable, refusing export");
                IngestError {
                    code: ErrorCode::Unavailable,
                    message: "the store is unavailable, retry later".into(),
                    retry_after: Some(BUSY_RETRY_AFTER),
                }
            }
            StoreError::DiskFull(reason) => {
                tracing::debug!(%reason, "store disk full, refusing export");
                IngestError {
                    code: ErrorCode::Unavailable,
                    message: "the store's disk is full, retry later".into(),
                    retry_after: Some(DISK_FULL_RETRY_AFTER),
                }
            }
            other => {
                tracing::error!(error = %other, "store write failed");
                IngestError::internal()
            }
        }
    }

    /// Whole seconds for the HTTP `Retry-After` header (at least 1).
    pub(crate) fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)).map(|s| s.max(1))
    }

    /// The `google.rpc.Status` describing this error; retryable errors carry a
    /// `google.rpc.RetryInfo` detail, which OTLP clients need to retry `RESOURCE_EXHAUSTED`.
    pub(crate) fn rpc_status(&self) -> RpcStatus {
        let details = self
            .retry_after
            .map(|delay| ProtoAny {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: RetryInfo {
                    retry_delay: Some(ProtoDuration {
                        seconds: i64::try_from(delay.as_secs()).unwrap_or(i64::MAX),
                        nanos: i32::try_from(delay.subsec_nanos()).unwrap_or(0),
                    }),
                }
                .encode_to_vec(),
            })
            .into_iter()
            .collect();
        RpcStatus { code: self.code.grpc_code() as i32, message: self.message.clone(), details }
    }

    /// This error as a gRPC status.
    pub(crate) fn to_grpc_status(&self) -> tonic::Status {
        let code = self.code.grpc_code();
        if self.retry_after.is_some() {
            let details = Bytes::from(self.rpc_status().encode_to_vec());
            tonic::Status::with_details(code, self.message.clone(), details)
        } else {
            tonic::Status::new(code, self.message.clone())
        }
    }
}

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub(crate) code: i32,
    #[prost(string, tag = "2")]
    pub(crate) message: String,
    #[prost(message, repeated, tag = "3")]
    pub(crate) details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ProtoAny {
    #[prost(string, tag = "1")]
    pub(crate) type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub(crate) retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub(crate) seconds: i64,
    #[prost(int32, tag = "2")]
    pub(crate) nanos: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_retryable_or_generic_statuses() {
        let e = IngestError::from_store(StoreError::Overloaded { retry_after: Duration::from_millis(1500) });
        assert_eq!(e.code.statuses(), (http::StatusCode::TOO_MANY_REQUESTS, tonic::Code::ResourceExhausted));
        assert_eq!(e.retry_after_secs(), Some(2));

        let e = IngestError::from_store(StoreError::Unavailable("disk full at /secret/path".into()));
        assert_eq!(e.code.statuses(), (http::StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable));
        assert!(!e.message.contains("/secret/path"));
        assert_eq!(e.retry_after_secs(), Some(1));

        let e = IngestError::from_store(StoreError::DiskFull("3 MiB free under /secret/path".into()));
        assert_eq!(e.code.statuses(), (http::StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable));
        assert!(e.message.contains("disk is full") && !e.message.contains("/secret/path"), "{}", e.message);
        assert_eq!(e.retry_after_secs(), Some(5));
        assert!(!RpcStatus::decode(e.to_grpc_status().details()).expect("details").details.is_empty());

        let e = IngestError::from_store(StoreError::Index("tantivy exploded in /secret".into()));
        assert_eq!(e.code.statuses(), (http::StatusCode::INTERNAL_SERVER_ERROR, tonic::Code::Internal));
        assert_eq!(e.message, "internal error");
        assert_eq!(e.retry_after_secs(), None);
    }

    #[test]
    fn retryable_grpc_status_carries_retry_info() {
        let status = IngestError::overloaded("busy", Duration::from_secs(3)).to_grpc_status();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let rpc = RpcStatus::decode(status.details()).expect("details decode");
        assert_eq!(rpc.details.len(), 1);
        assert_eq!(rpc.details[0].type_url, "type.googleapis.com/google.rpc.RetryInfo");
        let info = RetryInfo::decode(rpc.details[0].value.as_slice()).expect("retry info decodes");
        assert_eq!(info.retry_delay, Some(ProtoDuration { seconds: 3, nanos: 0 }));

        let status = IngestError::invalid("bad").to_grpc_status();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.details().is_empty());
    }
}
