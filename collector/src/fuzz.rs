//! Fuzz targets of the ingest path (`docs/fuzzing.md`): one function per target, which panics
//! when a property is broken. Compiled for tests and with the `fuzzing` feature (the
//! cargo-fuzz crate in `fuzz/libfuzzer/`); not part of the crate's API.
//!
//! [`otlp`] takes a request body of one signal in one format and checks:
//! - decoding either succeeds or fails with `InvalidArgument` and a message;
//! - a decoded request survives the other encoding: protobuf -> OTLP/JSON -> the same request,
//!   and OTLP/JSON -> protobuf -> the same request;
//! - validation is idempotent: what it keeps passes it again, and kept + rejected = decoded;
//! - through the real OTLP/HTTP router (plain, gzip-compressed, and the input itself as a gzip
//!   body) the answer is 200 exactly when decoding succeeds, 400/413 otherwise, never a 5xx.

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use flate2::write::GzEncoder;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use obsbox_storage::{Batch, Signal, WriteFuture, WriteReceipt, Writer};
use prost::Message;
use tower::ServiceExt;

use crate::decode::{self, Format};
use crate::error::ErrorCode;
use crate::validate;
use crate::{Collector, Limits, http_router};

/// Limits small enough that fuzzed inputs reach them.
fn limits() -> Limits {
    Limits {
        max_body_bytes: 256 * 1024,
        max_decompressed_bytes: 1024 * 1024,
        max_items_per_request: 64,
        max_attributes_per_item: 8,
        max_attribute_value_bytes: 64,
        max_inflight_bytes: 64 * 1024 * 1024,
        decode_threads: 2,
    }
}

/// Takes every batch and keeps nothing: the fuzzer checks the path to the store, not the store.
struct NullWriter;

impl Writer for NullWriter {
    fn write(&self, _batch: Batch) -> WriteFuture {
        Box::pin(async { Ok(WriteReceipt { seq: 0 }) })
    }
}

/// A runtime and a router per thread, reused across inputs.
struct Harness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

thread_local! {
    static HARNESS: Harness = {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let collector = Collector::new(Arc::new(NullWriter), limits(), &prometheus::Registry::new()).expect("collector");
        Harness { runtime, router: http_router(collector) }
    };
}

/// The fuzz target of one signal's OTLP request body, as protobuf or OTLP/JSON.
pub fn otlp(signal: Signal, json: bool, body: &[u8]) {
    let format = if json { Format::Json } else { Format::Protobuf };
    let limits = limits();
    let decoded = decode::decode(signal, format, body);
    let expected = match &decoded {
        Err(e) => {
            assert_eq!(e.code, ErrorCode::InvalidArgument, "decode error {e:?}");
            assert!(!e.message.is_empty());
            StatusCode::BAD_REQUEST
        }
        Ok(batch) => {
            assert_eq!(batch.signal(), signal);
            round_trips(batch, format);
            validation_is_idempotent(batch, &limits);
            if batch.item_count() > limits.max_items_per_request { StatusCode::BAD_REQUEST } else { StatusCode::OK }
        }
    };
    let too_large = body.len() > limits.max_body_bytes;
    let want = if too_large { StatusCode::PAYLOAD_TOO_LARGE } else { expected };
    let (status, answer) = post(signal, format, false, body.to_vec());
    assert_eq!(status, want, "plain body: {answer}");
    // The same request gzip-compressed decodes the same (when it inflates under the limit).
    if body.len() <= limits.max_decompressed_bytes {
        let (status, answer) = post(signal, format, true, gzip(body));
        let want = if gzip(body).len() > limits.max_body_bytes { StatusCode::PAYLOAD_TOO_LARGE } else { expected };
        assert_eq!(status, want, "gzip body: {answer}");
    }
    // The input itself as a gzip stream: almost always invalid gzip, sometimes a member of one.
    let (status, answer) = post(signal, format, true, body.to_vec());
    assert!(
        matches!(status, StatusCode::OK | StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE),
        "input as gzip: {status} {answer}"
    );
}

/// Protobuf -> OTLP/JSON -> the same request, and OTLP/JSON -> protobuf -> the same request.
fn round_trips(batch: &Batch, format: Format) {
    let (proto, json) = encodings(batch);
    let signal = batch.signal();
    let from_proto = decode::decode(signal, Format::Protobuf, &proto).expect("re-encoded protobuf decodes");
    assert_eq!(encodings(&from_proto).0, proto, "protobuf round trip differs");
    // Non-finite doubles have no form in this OTLP/JSON (serde writes `null`): the request must
    // still decode or be refused, but cannot come back the same.
    let lossy = has_non_finite(batch);
    match decode::decode(signal, Format::Json, &json) {
        Ok(from_json) if lossy => assert_eq!(from_json.item_count(), batch.item_count()),
        Ok(from_json) => assert_eq!(
            encodings(&from_json).0,
            proto,
            "OTLP/JSON round trip ({format:?} input) differs: {}",
            String::from_utf8_lossy(&json)
        ),
        Err(e) => assert!(lossy, "re-encoded OTLP/JSON does not decode: {e:?}: {}", String::from_utf8_lossy(&json)),
    }
}

fn encodings(batch: &Batch) -> (Vec<u8>, Vec<u8>) {
    let json = |r: Result<Vec<u8>, serde_json::Error>| r.expect("a decoded request serializes to JSON");
    match batch {
        Batch::Traces(r) => (r.encode_to_vec(), json(serde_json::to_vec(r))),
        Batch::Logs(r) => (r.encode_to_vec(), json(serde_json::to_vec(r))),
        Batch::Metrics(r) => (r.encode_to_vec(), json(serde_json::to_vec(r))),
    }
}

/// Whether any double in the request (attribute values, log bodies, metric values, bounds,
/// sums, quantiles) is NaN or infinite.
fn has_non_finite(batch: &Batch) -> bool {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::{Exemplar, exemplar, number_data_point};

    fn value(v: &AnyValue) -> bool {
        match &v.value {
            Some(V::DoubleValue(d)) => !d.is_finite(),
            Some(V::ArrayValue(a)) => a.values.iter().any(value),
            Some(V::KvlistValue(l)) => attrs(&l.values),
            _ => false,
        }
    }
    fn attrs(kvs: &[KeyValue]) -> bool {
        kvs.iter().any(|kv| kv.value.as_ref().is_some_and(value))
    }
    fn exemplars(es: &[Exemplar]) -> bool {
        es.iter().any(|e| {
            attrs(&e.filtered_attributes) || matches!(e.value, Some(exemplar::Value::AsDouble(d)) if !d.is_finite())
        })
    }
    let bad = |d: f64| !d.is_finite();
    let bad_opt = |d: Option<f64>| d.is_some_and(bad);
    match batch {
        Batch::Traces(r) => r.resource_spans.iter().any(|rs| {
            rs.resource.as_ref().is_some_and(|res| attrs(&res.attributes))
                || rs.scope_spans.iter().any(|ss| {
                    ss.scope.as_ref().is_some_and(|s| attrs(&s.attributes))
                        || ss.spans.iter().any(|s| {
                            attrs(&s.attributes)
                                || s.events.iter().any(|e| attrs(&e.attributes))
                                || s.links.iter().any(|l| attrs(&l.attributes))
                        })
                })
        }),
        Batch::Logs(r) => r.resource_logs.iter().any(|rl| {
            rl.resource.as_ref().is_some_and(|res| attrs(&res.attributes))
                || rl.scope_logs.iter().any(|sl| {
                    sl.scope.as_ref().is_some_and(|s| attrs(&s.attributes))
                        || sl.log_records.iter().any(|l| attrs(&l.attributes) || l.body.as_ref().is_some_and(value))
                })
        }),
        Batch::Metrics(r) => r.resource_metrics.iter().any(|rm| {
            rm.resource.as_ref().is_some_and(|res| attrs(&res.attributes))
                || rm.scope_metrics.iter().any(|sm| {
                    sm.scope.as_ref().is_some_and(|s| attrs(&s.attributes))
                        || sm.metrics.iter().any(|m| {
                            attrs(&m.metadata)
                                || match &m.data {
                                    Some(Data::Gauge(g)) => g.data_points.iter().any(|p| {
                                        attrs(&p.attributes)
                                            || exemplars(&p.exemplars)
                                            || matches!(p.value, Some(number_data_point::Value::AsDouble(d)) if bad(d))
                                    }),
                                    Some(Data::Sum(g)) => g.data_points.iter().any(|p| {
                                        attrs(&p.attributes)
                                            || exemplars(&p.exemplars)
                                            || matches!(p.value, Some(number_data_point::Value::AsDouble(d)) if bad(d))
                                    }),
                                    Some(Data::Histogram(h)) => h.data_points.iter().any(|p| {
                                        attrs(&p.attributes)
                                            || exemplars(&p.exemplars)
                                            || bad_opt(p.sum)
                                            || bad_opt(p.min)
                                            || bad_opt(p.max)
                                            || p.explicit_bounds.iter().any(|b| bad(*b))
                                    }),
                                    Some(Data::ExponentialHistogram(h)) => h.data_points.iter().any(|p| {
                                        attrs(&p.attributes)
                                            || exemplars(&p.exemplars)
                                            || bad_opt(p.sum)
                                            || bad_opt(p.min)
                                            || bad_opt(p.max)
                                            || bad(p.zero_threshold)
                                    }),
                                    Some(Data::Summary(s)) => s.data_points.iter().any(|p| {
                                        attrs(&p.attributes)
                                            || bad(p.sum)
                                            || p.quantile_values.iter().any(|q| bad(q.quantile) || bad(q.value))
                                    }),
                                    None => false,
                                }
                        })
                })
        }),
    }
}

fn validation_is_idempotent(batch: &Batch, limits: &Limits) {
    let mut kept = batch.clone();
    let rejected = validate::validate(&mut kept, limits);
    assert_eq!(kept.item_count() + rejected.total(), batch.item_count(), "items lost or invented by validation");
    if rejected.total() > 0 {
        assert!(!rejected.message(batch.signal(), limits).is_empty());
    }
    let mut again = kept.clone();
    let second = validate::validate(&mut again, limits);
    assert_eq!(second.total(), 0, "validation is not idempotent: {:?}", second);
    assert_eq!(again, kept);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("write to vec");
    enc.finish().expect("finish gzip")
}

/// Posts `body` to the OTLP/HTTP router; the status and the answer as text.
fn post(signal: Signal, format: Format, gzip: bool, body: Vec<u8>) -> (StatusCode, String) {
    let path = match signal {
        Signal::Traces => "/v1/traces",
        Signal::Logs => "/v1/logs",
        Signal::Metrics => "/v1/metrics",
    };
    let mut req = Request::post(path).header(header::CONTENT_TYPE, format.content_type());
    if gzip {
        req = req.header(header::CONTENT_ENCODING, "gzip");
    }
    let req = req.body(Body::from(body)).expect("request");
    HARNESS.with(|h| {
        h.runtime.block_on(async {
            let resp = h.router.clone().oneshot(req).await.expect("infallible");
            let status = resp.status();
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        })
    })
}

#[cfg(test)]
mod tests {
    use obsbox_fuzz::Replay;

    use super::*;

    #[test]
    fn fuzz_otlp_protobuf_traces() {
        Replay::new("otlp_protobuf_traces").dict("otlp_protobuf").run(|b| otlp(Signal::Traces, false, b));
    }

    #[test]
    fn fuzz_otlp_protobuf_logs() {
        Replay::new("otlp_protobuf_logs").dict("otlp_protobuf").run(|b| otlp(Signal::Logs, false, b));
    }

    #[test]
    fn fuzz_otlp_protobuf_metrics() {
        Replay::new("otlp_protobuf_metrics").dict("otlp_protobuf").run(|b| otlp(Signal::Metrics, false, b));
    }

    #[test]
    fn fuzz_otlp_json_traces() {
        Replay::new("otlp_json_traces").dict("otlp_json").run(|b| otlp(Signal::Traces, true, b));
    }

    #[test]
    fn fuzz_otlp_json_logs() {
        Replay::new("otlp_json_logs").dict("otlp_json").run(|b| otlp(Signal::Logs, true, b));
    }

    #[test]
    fn fuzz_otlp_json_metrics() {
        Replay::new("otlp_json_metrics").dict("otlp_json").run(|b| otlp(Signal::Metrics, true, b));
    }

    /// serde_json's default float parser was one ulp off for some doubles, so OTLP/JSON metric
    /// values differed from the same request in protobuf (fixed with `float_roundtrip`).
    #[test]
    fn regression_json_double_off_by_one_ulp() {
        let input = obsbox_fuzz::regression("otlp_protobuf_metrics", "json-double-off-by-one-ulp");
        otlp(Signal::Metrics, false, &input);
    }
}
