//! Payload decoding: gzip inflation with a hard output cap, then protobuf (prost) or OTLP/JSON
//! (serde_json into the `opentelemetry-proto` types). Blocking, CPU-bound: called on the decode
//! pool only.

use std::io::Read;

use flate2::read::MultiGzDecoder;
use obsbox_storage::{Batch, Signal};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::error::IngestError;

/// How the payload is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Binary protobuf (`application/x-protobuf`, and gRPC).
    Protobuf,
    /// OTLP/JSON (`application/json`).
    Json,
}

impl Format {
    /// The media type of this format, used for responses too.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

/// How the payload is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    /// Not compressed (or already decompressed by the transport).
    Identity,
    /// gzip.
    Gzip,
}

/// Inflates a gzip body, reading at most `max + 1` bytes of output: a gzip bomb costs no more.
pub(crate) fn inflate(body: &[u8], max: usize) -> Result<Vec<u8>, IngestError> {
    let cap = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(max));
    MultiGzDecoder::new(body)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| IngestError::invalid(format!("invalid gzip body: {e}")))?;
    if out.len() > max {
        return Err(IngestError::too_large(format!("request body inflates to more than the limit of {max} bytes")));
    }
    Ok(out)
}

/// Decodes one export request of `signal`.
pub(crate) fn decode(signal: Signal, format: Format, bytes: &[u8]) -> Result<Batch, IngestError> {
    Ok(match (signal, format) {
        (Signal::Traces, Format::Protobuf) => Batch::Traces(protobuf::<ExportTraceServiceRequest>(bytes)?),
        (Signal::Logs, Format::Protobuf) => Batch::Logs(protobuf::<ExportLogsServiceRequest>(bytes)?),
        (Signal::Metrics, Format::Protobuf) => Batch::Metrics(protobuf::<ExportMetricsServiceRequest>(bytes)?),
        (Signal::Traces, Format::Json) => Batch::Traces(json::<ExportTraceServiceRequest>(bytes)?),
        (Signal::Logs, Format::Json) => Batch::Logs(json::<ExportLogsServiceRequest>(bytes)?),
        (Signal::Metrics, Format::Json) => Batch::Metrics(json::<ExportMetricsServiceRequest>(bytes)?),
    })
}

fn protobuf<M: Message + Default>(bytes: &[u8]) -> Result<M, IngestError> {
    M::decode(bytes).map_err(|e| IngestError::invalid(format!("invalid protobuf: {e}")))
}

fn json<M: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<M, IngestError> {
    serde_json::from_slice(bytes).map_err(|e| IngestError::invalid(json_error_message(&e)))
}

/// "invalid OTLP/JSON at line 1 column 57: <what serde_json says>".
fn json_error_message(e: &serde_json::Error) -> String {
    let full = e.to_string();
    if e.line() == 0 {
        return format!("invalid OTLP/JSON: {full}");
    }
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let detail = full.strip_suffix(&suffix).unwrap_or(&full);
    format!("invalid OTLP/JSON at line {} column {}: {detail}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression as Level;
    use flate2::write::GzEncoder;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point;

    use super::*;
    use crate::error::ErrorCode;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Level::fast());
        enc.write_all(data).expect("write to vec");
        enc.finish().expect("finish gzip")
    }

    #[test]
    fn inflate_round_trips_and_stops_at_the_limit() {
        assert_eq!(inflate(&gzip(b"hello"), 5).expect("fits"), b"hello");
        let err = inflate(&gzip(b"hello!"), 5).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
        let err = inflate(b"not gzip at all", 100).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.starts_with("invalid gzip body"), "{}", err.message);
    }

    #[test]
    fn gzip_bomb_stops_at_the_limit() {
        // 64 MiB of zeros, about 64 KiB compressed; inflating stops after 1 MiB + 1 byte.
        let mut enc = GzEncoder::new(Vec::new(), Level::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).expect("write to vec");
        }
        let bomb = enc.finish().expect("finish gzip");
        assert!(bomb.len() < 128 * 1024, "bomb is {} bytes", bomb.len());
        let err = inflate(&bomb, 1 << 20).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
    }

    #[test]
    fn json_as_sdks_send_it() {
        let body = br#"{
          "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
            "scopeSpans": [{
              "scope": {"name": "js-sdk", "version": "1.0"},
              "spans": [{
                "traceId": "5B8EFFF798038103D269B633813FC60C",
                "spanId": "eee19b7ec3c1b174",
                "parentSpanId": "",
                "name": "GET /cart",
                "kind": 2,
                "startTimeUnixNano": "1700000000000000000",
                "endTimeUnixNano": 1700000000500000000,
                "attributes": [
                  {"key": "a", "value": {"intValue": "42"}},
                  {"key": "b", "value": {"intValue": 42}},
                  {"key": "c", "value": {"doubleValue": 1.5}},
                  {"key": "d", "value": {"boolValue": true}},
                  {"key": "e", "value": {"arrayValue": {"values": [{"stringValue": "x"}]}}},
                  {"key": "f", "value": {"bytesValue": "AQID"}}
                ],
                "events": [{"timeUnixNano": "1700000000100000000", "name": "ev"}],
                "status": {"code": 2, "message": "boom"},
                "unknownFieldFromTheFuture": {"ignored": true}
              }]
            }]
          }]
        }"#;
        let Batch::Traces(req) = decode(Signal::Traces, Format::Json, body).expect("decodes") else {
            panic!("wrong signal")
        };
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id, hex_bytes("5b8efff798038103d269b633813fc60c"));
        assert_eq!(span.span_id, hex_bytes("eee19b7ec3c1b174"));
        assert_eq!(span.kind, 2);
        assert_eq!(span.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_700_000_000_500_000_000);
        let values: Vec<_> = span.attributes.iter().map(|kv| kv.value.clone().and_then(|v| v.value)).collect();
        assert_eq!(values[0], Some(Value::IntValue(42)));
        assert_eq!(values[1], Some(Value::IntValue(42)));
        assert_eq!(values[5], Some(Value::BytesValue(vec![1, 2, 3])));
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(2));
    }

    #[test]
    fn json_logs_and_metrics() {
        let logs = br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{
            "timeUnixNano":"1700000000000000000","severityNumber":9,"severityText":"INFO",
            "body":{"stringValue":"hello"},"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"}]}]}]}"#;
        let Batch::Logs(req) = decode(Signal::Logs, Format::Json, logs).expect("decodes") else { panic!() };
        assert_eq!(req.resource_logs[0].scope_logs[0].log_records[0].severity_number, 9);

        let metrics = br#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[
            {"name":"requests","sum":{"aggregationTemporality":2,"isMonotonic":true,
              "dataPoints":[{"asInt":"42","timeUnixNano":"1700000000000000000"}]}},
            {"name":"temp","gauge":{"dataPoints":[{"asDouble":21.5,"timeUnixNano":1700000000000000000}]}}]}]}]}"#;
        let Batch::Metrics(req) = decode(Signal::Metrics, Format::Json, metrics).expect("decodes") else { panic!() };
        let ms = &req.resource_metrics[0].scope_metrics[0].metrics;
        let Some(Data::Sum(sum)) = &ms[0].data else { panic!("sum expected") };
        assert_eq!(sum.data_points[0].value, Some(number_data_point::Value::AsInt(42)));
        assert!(matches!(&ms[1].data, Some(Data::Gauge(_))));
    }

    #[test]
    fn empty_json_object_and_empty_protobuf_are_valid() {
        for signal in [Signal::Traces, Signal::Logs, Signal::Metrics] {
            let b = decode(signal, Format::Json, b"{}").expect("json {} decodes");
            assert_eq!(b.signal(), signal);
            assert_eq!(b.item_count(), 0);
            decode(signal, Format::Protobuf, b"").expect("empty protobuf decodes");
        }
    }

    #[test]
    fn decode_errors_say_what_failed() {
        let err = decode(
            Signal::Traces,
            Format::Json,
            br#"{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.starts_with("invalid OTLP/JSON at line 1 column "), "{}", err.message);

        let err = decode(Signal::Logs, Format::Json, b"{").unwrap_err();
        assert!(err.message.starts_with("invalid OTLP/JSON at line 1 column 1: "), "{}", err.message);

        let good = ExportTraceServiceRequest { resource_spans: vec![Default::default()] }.encode_to_vec();
        let mut truncated = good.clone();
        truncated.push(0x0a);
        truncated.push(0x10);
        let err = decode(Signal::Traces, Format::Protobuf, &truncated).unwrap_err();
        assert!(err.message.starts_with("invalid protobuf: "), "{}", err.message);
    }

    #[test]
    fn json_doubles_decode_to_exactly_the_double_written() {
        // The shortest text of a double must read back as that double (serde_json needs its
        // `float_roundtrip` feature for this; found by fuzzing).
        for text in ["0.0009999813735485077", "21.5", "1e-300", "1.7976931348623157e308", "5e-324"] {
            let body = format!(
                r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{{"name":"m","gauge":{{"dataPoints":[{{"asDouble":{text}}}]}}}}]}}]}}]}}"#
            );
            let Batch::Metrics(req) = decode(Signal::Metrics, Format::Json, body.as_bytes()).expect("decodes") else {
                panic!()
            };
            let Some(Data::Gauge(g)) = &req.resource_metrics[0].scope_metrics[0].metrics[0].data else { panic!() };
            let want: f64 = text.parse().expect("a double");
            assert_eq!(g.data_points[0].value, Some(number_data_point::Value::AsDouble(want)), "{text}");
        }
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }
}
