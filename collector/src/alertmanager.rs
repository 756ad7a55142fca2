//! Alertmanager's webhook receiver: `POST /v1/alertmanager` on the OTLP/HTTP port takes the JSON
//! a `webhook_configs` receiver sends (payload version 4) and stores each alert as an OTLP log
//! record, so alerts are searchable next to the telemetry they are about. The mapping and the
//! answers are documented in `docs/alertmanager.md`.
//!
//! The request takes the OTLP path: the body is read under the same limits and in-flight budget
//! (`http::read_body`), parsed and converted on the decode pool, then handed to
//! [`Collector::export`] as an OTLP logs request, so validation, the store's acknowledgement
//! and its backpressure are the OTLP receivers' own. The answer is 200 only once the store has
//! acknowledged the records (durable).
//!
//! Alertmanager retries a notification only on a 5xx answer (its `notify.Retrier`): a 4xx one
//! is dropped. So when the collector or the store refuses for now, this route answers 503 with
//! `Retry-After` (OTLP receivers answer 429 for the same overload).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use jiff::Timestamp;
use obsbox_storage::Signal;
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use serde::Deserialize;

use crate::decode::{Compression, Format};
use crate::error::{BUSY_RETRY_AFTER, ErrorCode, IngestError};
use crate::service::{Collector, Exported};
use crate::telemetry::Transport;

/// The only payload version Alertmanager has sent since 0.16 (`notify/webhook/webhook.go`).
const VERSION: &str = "4";
/// `service.name` of every record this receiver writes.
const SERVICE_NAME: &str = "alertmanager";
/// The instrumentation scope of the records.
const SCOPE_NAME: &str = "obsbox.alertmanager_webhook";

/// Alertmanager's webhook payload: `webhook.Message`, which embeds `template.Data`.
///
/// Unknown fields are ignored (a later Alertmanager may add some); the version is checked.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    version: String,
    group_key: String,
    #[serde(default)]
    truncated_alerts: u64,
    status: Status,
    receiver: String,
    #[serde(rename = "externalURL", default)]
    external_url: String,
    alerts: Vec<Alert>,
}

/// One alert of the group (`template.Alert`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Alert {
    status: Status,
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    starts_at: String,
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(rename = "generatorURL", default)]
    generator_url: String,
    #[serde(default)]
    fingerprint: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Firing,
    Resolved,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// `POST /v1/alertmanager`.
pub(crate) async fn receive(State(collector): State<Collector>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (result, alerts) = match deliver(&collector, &parts.headers, body).await {
        Ok((exported, alerts)) => (Ok(exported), alerts),
        Err(e) => (Err(e), 0),
    };
    collector.finish(Signal::Logs, Transport::Http, &result);
    match result {
        Ok(exported) => ok_response(&exported, alerts),
        Err(e) => error_response(&e),
    }
}

/// Reads, parses and stores one notification; returns the export's outcome and the number of
/// alerts in it.
async fn deliver(
    collector: &Collector,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<(Exported, usize), IngestError> {
    check_headers(headers)?;
    let (bytes, mut permit) = crate::http::read_body(collector, headers, body).await?;
    let now = now_ns();
    let (alerts, encoded) = collector
        .on_decode_pool(move || {
            let message = parse(&bytes)?;
            drop(bytes);
            if message.truncated_alerts > 0 {
                tracing::warn!(
                    truncated = message.truncated_alerts,
                    receiver = %message.receiver,
                    "alertmanager truncated the notification (max_alerts), those alerts are not stored"
                );
            }
            let logs = to_logs(&message, now);
            Ok::<_, IngestError>((message.alerts.len(), Bytes::from(logs.encode_to_vec())))
        })
        .await??;
    // The JSON is gone; the budget now holds the encoded request instead.
    if !permit.try_grow(encoded.len()) {
        return Err(IngestError::overloaded(
            "the collector is busy (in-flight byte budget exhausted), retry later",
            BUSY_RETRY_AFTER,
        ));
    }
    permit.shrink_to(encoded.len());
    let exported = collector
        .export(Signal::Logs, Transport::Http, Format::Protobuf, Compression::Identity, encoded, permit)
        .await?;
    Ok((exported, alerts))
}

/// `Content-Type: application/json` (what Alertmanager sends), not compressed.
fn check_headers(headers: &HeaderMap) -> Result<(), IngestError> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    match media_type {
        Some(t) if t.eq_ignore_ascii_case("application/json") => {}
        Some(t) => {
            return Err(IngestError::unsupported(format!(
                "unsupported Content-Type \"{}\", expected application/json (Alertmanager's webhook payload)",
                t.chars().take(64).collect::<String>()
            )));
        }
        None => {
            return Err(IngestError::unsupported(
                "missing Content-Type, expected application/json (Alertmanager's webhook payload)",
            ));
        }
    }
    match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().map(str::trim)) {
        None => Ok(()),
        Some(Ok(v)) if v.is_empty() || v.eq_ignore_ascii_case("identity") => Ok(()),
        Some(_) => Err(IngestError::unsupported(
            "unsupported Content-Encoding, Alertmanager's webhook payload is taken uncompressed",
        )),
    }
}

/// Parses and checks the payload; errors say where in the document the problem is.
fn parse(bytes: &[u8]) -> Result<Message, IngestError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(IngestError::invalid(
            "expected Alertmanager's webhook payload (a JSON object with \"version\": \"4\"), got an array; \
             alerts themselves are posted to Alertmanager's /api/v2/alerts",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let message: Message = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = if inner.line() == 0 {
            String::new()
        } else {
            format!(" (line {} column {})", inner.line(), inner.column())
        };
        let detail = strip_position(&inner);
        match inner.classify() {
            serde_json::error::Category::Data => {
                IngestError::invalid(format!("invalid Alertmanager webhook payload at `{path}`: {detail}{at}"))
            }
            _ => IngestError::invalid(format!("invalid JSON{at}: {detail}")),
        }
    })?;
    de.end().map_err(|e| IngestError::invalid(format!("invalid JSON: {}", strip_position(&e))))?;
    if message.version != VERSION {
        return Err(IngestError::invalid(format!(
            "unsupported webhook payload version \"{}\", expected \"{VERSION}\"",
            message.version.chars().take(16).collect::<String>()
        )));
    }
    for (i, alert) in message.alerts.iter().enumerate() {
        timestamp(&alert.starts_at).map_err(|e| IngestError::invalid(format!("alerts[{i}].startsAt: {e}")))?;
        if let Some(ends_at) = &alert.ends_at {
            timestamp(ends_at).map_err(|e| IngestError::invalid(format!("alerts[{i}].endsAt: {e}")))?;
        }
    }
    Ok(message)
}

/// serde_json's message without its " at line L column C" suffix.
fn strip_position(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    full.strip_suffix(&suffix).unwrap_or(&full).to_string()
}

/// An RFC 3339 time as Go encodes `time.Time`; `None` for Go's zero time (no time known).
fn timestamp(text: &str) -> Result<Option<Timestamp>, String> {
    let ts: Timestamp = text
        .parse()
        .map_err(|_| format!("\"{}\" is not an RFC 3339 time", text.chars().take(64).collect::<String>()))?;
    Ok((ts > Timestamp::UNIX_EPOCH).then_some(ts))
}

/// `severity` label to the record's severity: page/critical/error -> ERROR, ticket/warning/warn
/// -> WARN, anything else (or none) -> INFO.
fn severity(labels: &BTreeMap<String, String>) -> (SeverityNumber, &'static str) {
    let label = labels.get("severity").map(|s| s.to_ascii_lowercase());
    match label.as_deref() {
        Some("page" | "critical" | "error") => (SeverityNumber::Error, "ERROR"),
        Some("ticket" | "warning" | "warn") => (SeverityNumber::Warn, "WARN"),
        _ => (SeverityNumber::Info, "INFO"),
    }
}

/// The record's body: the `summary` annotation, else the `alertname` label, else the labels as
/// Alertmanager shows them (`{a="b", ...}`).
fn body_text(alert: &Alert) -> String {
    if let Some(s) = alert.annotations.get("summary").filter(|s| !s.trim().is_empty()) {
        return s.clone();
    }
    if let Some(name) = alert.labels.get("alertname").filter(|s| !s.is_empty()) {
        return name.clone();
    }
    let pairs: Vec<String> = alert.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

fn string_kv(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

/// One log record per alert, all under one resource (`service.name` = `alertmanager`) and
/// scope; `now_ns` is the records' time (the notification's arrival).
fn to_logs(message: &Message, now_ns: u64) -> ExportLogsServiceRequest {
    let records = message
        .alerts
        .iter()
        .map(|alert| {
            let (number, text) = severity(&alert.labels);
            let mut attributes = Vec::with_capacity(alert.labels.len() + alert.annotations.len() + 7);
            for (k, v) in &alert.labels {
                attributes.push(string_kv(format!("alert.label.{k}"), v.as_str()));
            }
            for (k, v) in &alert.annotations {
                attributes.push(string_kv(format!("alert.annotation.{k}"), v.as_str()));
            }
            attributes.push(string_kv("alert.status", alert.status.as_str()));
            if !alert.fingerprint.is_empty() {
                attributes.push(string_kv("alert.fingerprint", alert.fingerprint.as_str()));
            }
            // Checked in `parse`; normalised to UTC.
            if let Ok(Some(t)) = timestamp(&alert.starts_at) {
                attributes.push(string_kv("alert.starts_at", t.to_string()));
            }
            if let Some(Ok(Some(t))) = alert.ends_at.as_deref().map(timestamp) {
                attributes.push(string_kv("alert.ends_at", t.to_string()));
            }
            if !alert.generator_url.is_empty() {
                attributes.push(string_kv("alert.generator_url", alert.generator_url.as_str()));
            }
            attributes.push(string_kv("alert.receiver", message.receiver.as_str()));
            attributes.push(string_kv("alert.group_key", message.group_key.as_str()));
            attributes.push(string_kv("alert.group_status", message.status.as_str()));
            LogRecord {
                time_unix_nano: now_ns,
                observed_time_unix_nano: now_ns,
                severity_number: number as i32,
                severity_text: text.to_string(),
                body: Some(AnyValue { value: Some(any_value::Value::StringValue(body_text(alert))) }),
                attributes,
                ..Default::default()
            }
        })
        .collect();
    let mut resource = vec![string_kv("service.name", SERVICE_NAME)];
    if !message.external_url.is_empty() {
        resource.push(string_kv("alertmanager.external_url", message.external_url.as_str()));
    }
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource { attributes: resource, ..Default::default() }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// 200 with what was stored; alerts rejected by validation (too many labels, a label too
/// long) are counted and named, as an OTLP partial success is.
fn ok_response(exported: &Exported, alerts: usize) -> Response {
    let mut body = serde_json::json!({ "alerts": alerts, "stored": alerts.saturating_sub(exported.rejected) });
    if exported.rejected > 0 {
        let message = ExportLogsServiceResponse::decode(exported.response.clone())
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.error_message)
            .unwrap_or_default();
        tracing::warn!(rejected = exported.rejected, %message, "alerts from alertmanager not stored");
        body["rejected"] = exported.rejected.into();
        body["message"] = message.into();
    }
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `{"error": "..."}`; refusals for now are 503 with `Retry-After` (see the module doc).
fn error_response(e: &IngestError) -> Response {
    let status = match e.code {
        ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        code => code.http_status(),
    };
    let mut response = (status, axum::Json(serde_json::json!({ "error": e.message }))).into_response();
    if let Some(secs) = e.retry_after_secs() {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::body::Body;
    use http_body_util::BodyExt;
    use obsbox_storage::{Batch, StoreError, WriteFuture, WriteReceipt, Writer};
    use tower::ServiceExt;

    use super::*;
    use crate::Limits;

    /// A notification as Alertmanager 0.25 sends it for an SLO page (`template.Data` fields in
    /// its order, then version, groupKey, truncatedAlerts).
    const PAGE: &str = r#"{
        "receiver": "obsbox",
        "status": "firing",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "SLOBurnRate", "service": "orders", "severity": "page",
                       "slo": "checkout-availability", "tier": "page-1h"},
            "annotations": {"summary": "checkout-availability burns its budget 14.4x", "runbook_url": "http://r"},
            "startsAt": "2026-11-22T07:00:00.5+01:00",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://obsbox:16686/slos/checkout-availability",
            "fingerprint": "c4b5d5c5e3c2b1a0"
        }],
        "groupLabels": {"alertname": "SLOBurnRate"},
        "commonLabels": {"alertname": "SLOBurnRate"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": "{}/{severity=\"page\"}:{alertname=\"SLOBurnRate\"}",
        "truncatedAlerts": 0
    }"#;

    /// What Debian's Alertmanager 0.25 sent a webhook for an alert posted to its
    /// `/api/v2/alerts` without times (captured; `Content-Type: application/json`).
    const CAPTURED_0_25: &str = r#"{"receiver":"cap","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"SLOBurnRate","service":"orders","severity":"page"},"annotations":{"summary":"burning"},"startsAt":"2026-11-22T06:38:24.451583423Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prom/graph","fingerprint":"f0ce64e45e6ff54f"}],"groupLabels":{},"commonLabels":{"alertname":"SLOBurnRate","service":"orders","severity":"page"},"commonAnnotations":{"summary":"burning"},"externalURL":"http://vm:39182","version":"4","groupKey":"{}:{}","truncatedAlerts":0}"#;

    #[test]
    fn a_notification_alertmanager_sent_is_mapped() {
        let logs = to_logs(&parse(CAPTURED_0_25.as_bytes()).expect("what alertmanager sends parses"), 7);
        let r = &logs.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(body(r), "burning");
        let a = attrs(r);
        assert_eq!(a["alert.starts_at"], "2026-11-22T06:38:24.451583423Z");
        assert!(!a.contains_key("alert.ends_at"), "Go's zero time means no end: {a:?}");
        assert_eq!(a["alert.fingerprint"], "f0ce64e45e6ff54f");
        assert_eq!(a["alert.group_key"], "{}:{}");
        assert_eq!(a["alert.receiver"], "cap");
    }

    fn attrs(record: &LogRecord) -> BTreeMap<String, String> {
        record
            .attributes
            .iter()
            .map(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => (kv.key.clone(), s.clone()),
                other => panic!("{}: not a string: {other:?}", kv.key),
            })
            .collect()
    }

    fn body(record: &LogRecord) -> &str {
        match record.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s,
            other => panic!("body {other:?}"),
        }
    }

    fn alert(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Alert {
        Alert {
            status: Status::Resolved,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            starts_at: "2026-11-22T06:00:00Z".into(),
            ends_at: None,
            generator_url: String::new(),
            fingerprint: String::new(),
        }
    }

    #[test]
    fn every_field_of_an_alert_is_mapped() {
        let message = parse(PAGE.as_bytes()).expect("valid payload");
        let logs = to_logs(&message, 42);
        let rl = &logs.resource_logs[0];
        let resource = rl.resource.as_ref().unwrap();
        assert_eq!(resource.attributes[0], string_kv("service.name", "alertmanager"));
        assert_eq!(resource.attributes[1], string_kv("alertmanager.external_url", "http://alertmanager:9093"));
        assert_eq!(rl.scope_logs[0].scope.as_ref().unwrap().name, SCOPE_NAME);
        let records = &rl.scope_logs[0].log_records;
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!((r.time_unix_nano, r.observed_time_unix_nano), (42, 42));
        assert_eq!((r.severity_number, r.severity_text.as_str()), (SeverityNumber::Error as i32, "ERROR"));
        assert_eq!(body(r), "checkout-availability burns its budget 14.4x");
        assert!(r.trace_id.is_empty() && r.span_id.is_empty());
        let want: BTreeMap<String, String> = [
            ("alert.label.alertname", "SLOBurnRate"),
            ("alert.label.service", "orders"),
            ("alert.label.severity", "page"),
            ("alert.label.slo", "checkout-availability"),
            ("alert.label.tier", "page-1h"),
            ("alert.annotation.summary", "checkout-availability burns its budget 14.4x"),
            ("alert.annotation.runbook_url", "http://r"),
            ("alert.status", "firing"),
            ("alert.fingerprint", "c4b5d5c5e3c2b1a0"),
            // In UTC; Go's zero endsAt (no end known) is left out.
            ("alert.starts_at", "2026-11-22T06:00:00.5Z"),
            ("alert.generator_url", "http://obsbox:16686/slos/checkout-availability"),
            ("alert.receiver", "obsbox"),
            ("alert.group_key", "{}/{severity=\"page\"}:{alertname=\"SLOBurnRate\"}"),
            ("alert.group_status", "firing"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(attrs(r), want);
    }

    #[test]
    fn resolved_alerts_carry_their_end() {
        let text = PAGE
            .replace(r#""status": "firing","#, r#""status": "resolved","#)
            .replace("0001-01-01T00:00:00Z", "2026-11-22T08:30:00+02:00");
        let message = parse(text.as_bytes()).unwrap();
        let a = attrs(&to_logs(&message, 1).resource_logs[0].scope_logs[0].log_records[0]);
        assert_eq!(a["alert.status"], "resolved");
        assert_eq!(a["alert.group_status"], "resolved");
        assert_eq!(a["alert.ends_at"], "2026-11-22T06:30:00Z");
    }

    #[test]
    fn severity_comes_from_the_severity_label() {
        for (label, want) in [
            (Some("page"), SeverityNumber::Error),
            (Some("critical"), SeverityNumber::Error),
            (Some("CRITICAL"), SeverityNumber::Error),
            (Some("error"), SeverityNumber::Error),
            (Some("ticket"), SeverityNumber::Warn),
            (Some("warning"), SeverityNumber::Warn),
            (Some("info"), SeverityNumber::Info),
            (Some("none"), SeverityNumber::Info),
            (None, SeverityNumber::Info),
        ] {
            let labels: BTreeMap<String, String> =
                label.map(|l| ("severity".to_string(), l.to_string())).into_iter().collect();
            let (number, text) = severity(&labels);
            assert_eq!(number, want, "{label:?}");
            assert_eq!(text, want.as_str_name().trim_start_matches("SEVERITY_NUMBER_"), "{label:?}");
        }
    }

    #[test]
    fn body_is_the_summary_else_the_alertname_else_the_labels() {
        assert_eq!(body_text(&alert(&[("alertname", "A")], &[("summary", "s")])), "s");
        assert_eq!(body_text(&alert(&[("alertname", "A")], &[("summary", " ")])), "A");
        assert_eq!(body_text(&alert(&[("alertname", "A")], &[("description", "d")])), "A");
        assert_eq!(body_text(&alert(&[("job", "api"), ("x", "\"q\"")], &[])), r#"{job="api", x="\"q\""}"#);
    }

    #[test]
    fn bad_payloads_get_a_message_that_says_where() {
        let err = |text: &str| parse(text.as_bytes()).unwrap_err();
        let e = err("{\"version\": ");
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.starts_with("invalid JSON (line 1 column 12): EOF while parsing"), "{}", e.message);
        let e = err(&PAGE.replace(r#""severity": "page""#, r#""severity": 3"#));
        assert!(
            e.message.starts_with(
                "invalid Alertmanager webhook payload at `alerts[0].labels.severity`: invalid type: integer `3`, \
                 expected a string (line"
            ),
            "{}",
            e.message
        );
        let e = err(&PAGE.replace(r#""receiver": "obsbox","#, ""));
        assert!(e.message.contains("missing field `receiver`"), "{}", e.message);
        let e = err(&PAGE.replace(r#""status": "firing","#, r#""status": "burning","#));
        assert!(
            e.message.contains("at `status`: unknown variant `burning`, expected `firing` or `resolved`"),
            "{}",
            e.message
        );
        let e = err(&PAGE.replace(r#""version": "4""#, r#""version": "3""#));
        assert_eq!(e.message, "unsupported webhook payload version \"3\", expected \"4\"");
        let e = err(&PAGE.replace("2026-11-22T07:00:00.5+01:00", "yesterday"));
        assert_eq!(e.message, "alerts[0].startsAt: \"yesterday\" is not an RFC 3339 time");
        let e = err(r#" [{"labels": {"alertname": "A"}}]"#);
        assert!(e.message.contains("got an array") && e.message.contains("/api/v2/alerts"), "{}", e.message);
        let e = err(&format!("{PAGE} x"));
        assert!(e.message.starts_with("invalid JSON: trailing characters"), "{}", e.message);
        let e = err("");
        assert!(e.message.starts_with("invalid JSON"), "{}", e.message);
    }

    /// Stores log batches; holds each write until `release` is notified (when gated), or
    /// refuses them all.
    #[derive(Default)]
    struct Store {
        batches: Mutex<Vec<ExportLogsServiceRequest>>,
        gate: Option<Arc<tokio::sync::Notify>>,
        refuse: Option<StoreError>,
    }

    impl Writer for Store {
        fn write(&self, batch: Batch) -> WriteFuture {
            if let Some(e) = &self.refuse {
                let e = match e {
                    StoreError::Overloaded { retry_after } => StoreError::Overloaded { retry_after: *retry_after },
                    _ => StoreError::Unavailable("read-only".into()),
                };
                return Box::pin(async move { Err(e) });
            }
            let Batch::Logs(logs) = batch else { panic!("not logs") };
            self.batches.lock().unwrap().push(logs);
            let gate = self.gate.clone();
            Box::pin(async move {
                if let Some(g) = gate {
                    g.notified().await;
                }
                Ok(WriteReceipt { seq: 1 })
            })
        }
    }

    fn router(store: Arc<Store>, limits: Limits) -> axum::Router {
        let collector = Collector::new(store, limits, &prometheus::Registry::new()).unwrap();
        crate::http_router(collector)
    }

    fn post(body: impl Into<Body>, content_type: &str) -> Request {
        Request::post("/v1/alertmanager").header(header::CONTENT_TYPE, content_type).body(body.into()).unwrap()
    }

    async fn answer(router: axum::Router, req: Request) -> (StatusCode, HeaderMap, serde_json::Value) {
        let resp = router.oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("json: {bytes:?}"));
        (parts.status, parts.headers, value)
    }

    #[tokio::test]
    async fn answers_200_only_once_the_store_has_acknowledged() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let store = Arc::new(Store { gate: Some(gate.clone()), ..Default::default() });
        let request = tokio::spawn(answer(router(store.clone(), Limits::default()), post(PAGE, "application/json")));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!request.is_finished(), "answered before the write was acknowledged");
        assert_eq!(store.batches.lock().unwrap().len(), 1, "the write was started");
        gate.notify_one();
        let (status, _, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, serde_json::json!({"alerts": 1, "stored": 1}));
        let stored = &store.batches.lock().unwrap()[0];
        assert_eq!(body_of_first(stored), "checkout-availability burns its budget 14.4x");
    }

    fn body_of_first(logs: &ExportLogsServiceRequest) -> String {
        body(&logs.resource_logs[0].scope_logs[0].log_records[0]).to_string()
    }

    #[tokio::test]
    async fn refusals_of_the_store_are_503_with_retry_after() {
        for refuse in
            [StoreError::Overloaded { retry_after: Duration::from_millis(1500) }, StoreError::Unavailable("x".into())]
        {
            let store = Arc::new(Store { refuse: Some(refuse), ..Default::default() });
            let (status, headers, body) =
                answer(router(store, Limits::default()), post(PAGE, "application/json")).await;
            // 503, not 429: Alertmanager retries 5xx answers only.
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert!(headers.get(header::RETRY_AFTER).is_some());
            assert!(body["error"].as_str().unwrap().contains("retry later"), "{body}");
        }
    }

    #[tokio::test]
    async fn bad_requests_are_4xx_with_a_message() {
        let store = Arc::new(Store::default());
        let limits = Limits { max_body_bytes: 4096, ..Limits::default() };
        let app = router(store.clone(), limits);

        let (status, _, body) = answer(app.clone(), post("{\"version\": \"4\"", "application/json")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body["error"].as_str().unwrap().starts_with("invalid JSON"), "{body}");

        let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(5000));
        let (status, _, body) = answer(app.clone(), post(big, "application/json")).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"], "request body is larger than the limit of 4096 bytes");

        let (status, _, body) = answer(app.clone(), post(PAGE, "text/plain")).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(body["error"].as_str().unwrap().contains("expected application/json"), "{body}");

        let mut req = post(PAGE, "application/json");
        req.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let (status, _, _) = answer(app.clone(), req).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(store.batches.lock().unwrap().is_empty(), "nothing stored from bad requests");

        // An empty group is a valid notification with nothing to store.
        let empty = PAGE.replace(&PAGE[PAGE.find("[{").unwrap()..PAGE.find("}],").unwrap() + 2], "[]");
        let (status, _, body) = answer(app, post(empty, "application/json")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({"alerts": 0, "stored": 0}));
    }

    #[tokio::test]
    async fn alerts_breaking_a_limit_are_counted_not_stored() {
        let store = Arc::new(Store::default());
        let limits = Limits { max_attribute_value_bytes: 40, ..Limits::default() };
        let (status, _, body) = answer(router(store, limits), post(PAGE, "application/json")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["stored"], 0);
        assert_eq!(body["rejected"], 1);
        assert!(body["message"].as_str().unwrap().contains("1 log record rejected"), "{body}");
    }
}
