//! The OTLP/gRPC receiver: the three `opentelemetry.proto.collector.{trace,logs,metrics}.v1`
//! `Export` services.
//!
//! Not the generated `*ServiceServer`s: those decode with prost on the runtime thread. Here a
//! [`RawCodec`] hands the message bytes (after tonic's gzip handling, bounded by
//! `max_decompressed_bytes`) to [`Collector::export`], which decodes them on the decode pool,
//! and sends back the response bytes it encoded.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use obsbox_storage::Signal;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::service::Routes;
use tonic::{Status, body::Body};

use crate::CollectorError;
use crate::decode::{Compression, Format};
use crate::error::IngestError;
use crate::service::Collector;
use crate::telemetry::Transport;

/// Length of the gRPC message prefix (compressed flag + length) counted in the body limit.
const GRPC_HEADER_BYTES: usize = 5;

/// Serves the three OTLP `Export` services on `listener` (HTTP/2 only; a bare `TcpListener`
/// converts to a plain-text listener with the default limits) until `shutdown` resolves.
///
/// The services run on `obsbox-net`'s accept loop rather than tonic's `Server`: TLS with
/// client certificates, the handshake, idle and body timeouts and the connection limit are then
/// the same code on all three ports, and tonic's `Server` has no connection limit or handshake
/// timeout of its own.
pub async fn serve_grpc(
    listener: impl Into<obsbox_net::Listener>,
    collector: Collector,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CollectorError> {
    let routes = Routes::new(ExportService::<TraceService>::new(collector.clone()))
        .add_service(ExportService::<LogsService>::new(collector.clone()))
        .add_service(ExportService::<MetricsService>::new(collector))
        .prepare();
    listener.into().serve(routes, shutdown).await.map_err(CollectorError::Grpc)
}

/// The static description of one OTLP export service.
trait OtlpService: Send + Sync + 'static {
    const NAME: &'static str;
    const EXPORT_PATH: &'static str;
    const SIGNAL: Signal;
}

struct TraceService;
struct LogsService;
struct MetricsService;

impl OtlpService for TraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const EXPORT_PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    const SIGNAL: Signal = Signal::Traces;
}

impl OtlpService for LogsService {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const EXPORT_PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const SIGNAL: Signal = Signal::Logs;
}

impl OtlpService for MetricsService {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const EXPORT_PATH: &'static str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
    const SIGNAL: Signal = Signal::Metrics;
}

/// One OTLP export service as a tower service tonic's router can serve.
struct ExportService<S> {
    collector: Collector,
    _service: PhantomData<fn() -> S>,
}

impl<S> ExportService<S> {
    fn new(collector: Collector) -> Self {
        ExportService { collector, _service: PhantomData }
    }
}

impl<S> Clone for ExportService<S> {
    fn clone(&self) -> Self {
        ExportService::new(self.collector.clone())
    }
}

impl<S: OtlpService> NamedService for ExportService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: OtlpService> tower::Service<http::Request<Body>> for ExportService<S> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // Before anything else, so an unauthenticated peer learns nothing, not even the methods.
        if let Some(guard) = self.collector.grpc_guard()
            && !guard.admits(req.headers())
        {
            return Box::pin(async { Ok(Status::unauthenticated(obsbox_net::REFUSAL_MESSAGE).into_http()) });
        }
        if req.uri().path() != S::EXPORT_PATH {
            return Box::pin(async { Ok(Status::unimplemented("unknown method").into_http()) });
        }
        let collector = self.collector.clone();
        Box::pin(async move {
            let limits = collector.limits().clone();
            // The message as received (compressed or not) may be at most max_body_bytes.
            let telemetry = collector.telemetry().clone();
            let req = req.map(|body| {
                Limited::new(body, limits.max_body_bytes.saturating_add(GRPC_HEADER_BYTES)).map_err(move |e| {
                    if e.downcast_ref::<LengthLimitError>().is_some() {
                        telemetry.request_finished(S::SIGNAL, Transport::Grpc, "too_large");
                        Status::resource_exhausted(format!(
                            "request message is larger than the limit of {} bytes",
                            limits.max_body_bytes
                        ))
                    } else {
                        Status::from_error(e)
                    }
                })
            });
            let mut grpc = Grpc::new(RawCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(collector.limits().max_decompressed_bytes);
            let call = ExportCall { collector, signal: S::SIGNAL };
            Ok(grpc.unary(call, req).await)
        })
    }
}

/// The unary call: message bytes in, response bytes out, through the shared ingest path.
struct ExportCall {
    collector: Collector,
    signal: Signal,
}

impl UnaryService<Bytes> for ExportCall {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<tonic::Response<Bytes>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let collector = self.collector.clone();
        let signal = self.signal;
        Box::pin(async move {
            let message = request.into_inner();
            let result = match collector.reserve(message.len()) {
                Ok(permit) => {
                    collector
                        .export(signal, Transport::Grpc, Format::Protobuf, Compression::Identity, message, permit)
                        .await
                }
                Err(e) => Err(e),
            };
            collector.finish(signal, Transport::Grpc, &result);
            result.map(|exported| tonic::Response::new(exported.response)).map_err(|e: IngestError| e.to_grpc_status())
        })
    }
}

/// A codec that does no (de)serialization: messages are passed through as bytes.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}
