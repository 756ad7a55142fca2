//! [`SpanFacts`]: the few fields of a span that derivation needs, taken on the decode pool so the
//! derive thread never sees (or clones) whole requests.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

/// Service name used when a resource has no `service.name` (as the SDKs default to).
pub(crate) const UNKNOWN_SERVICE: &str = "unknown_service";

/// What span metrics and the service graph read from one span.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SpanFacts {
    /// `service.name` of the resource.
    pub(crate) service: Arc<str>,
    pub(crate) name: String,
    pub(crate) kind: SpanKind,
    pub(crate) status: StatusCode,
    pub(crate) duration_ns: u64,
    /// End time (Unix ns), the time of exemplars.
    pub(crate) end_ns: u64,
    pub(crate) trace_id: [u8; 16],
    pub(crate) span_id: [u8; 8],
    /// `None` for a root span.
    pub(crate) parent_span_id: Option<[u8; 8]>,
    /// Links of consumer spans without a parent (a consumer's producer may be a link).
    pub(crate) links: Vec<([u8; 16], [u8; 8])>,
    /// For client spans: `db.system.name` or `db.system`, else `db.namespace` when a system is set.
    pub(crate) db_system: Option<String>,
}

/// The facts of every span of a (validated) request, in order.
pub(crate) fn extract(req: &ExportTraceServiceRequest) -> Vec<SpanFacts> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let service = match obsbox_storage::service_name(rs.resource.as_ref()) {
            "" => UNKNOWN_SERVICE,
            s => s,
        };
        let service: Arc<str> = Arc::from(service);
        for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            let (Ok(trace_id), Ok(span_id)) =
                (<[u8; 16]>::try_from(span.trace_id.as_slice()), <[u8; 8]>::try_from(span.span_id.as_slice()))
            else {
                continue; // validation removed these already; never derive from malformed ids
            };
            let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
            let status =
                span.status.as_ref().and_then(|s| StatusCode::try_from(s.code).ok()).unwrap_or(StatusCode::Unset);
            let parent_span_id = <[u8; 8]>::try_from(span.parent_span_id.as_slice()).ok().filter(|p| *p != [0; 8]);
            let links = if kind == SpanKind::Consumer && parent_span_id.is_none() {
                span.links
                    .iter()
                    .filter_map(|l| {
                        Some((
                            <[u8; 16]>::try_from(l.trace_id.as_slice()).ok()?,
                            <[u8; 8]>::try_from(l.span_id.as_slice()).ok()?,
                        ))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let db_system = (kind == SpanKind::Client)
                .then(|| {
                    string_attr(&span.attributes, "db.system.name")
                        .or_else(|| string_attr(&span.attributes, "db.system"))
                        .map(|system| {
                            string_attr(&span.attributes, "db.namespace")
                                .filter(|_| system.is_empty())
                                .unwrap_or(system)
                        })
                })
                .flatten()
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
            out.push(SpanFacts {
                service: service.clone(),
                name: span.name.clone(),
                kind,
                status,
                duration_ns: span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano),
                end_ns: span.end_time_unix_nano,
                trace_id,
                span_id,
                parent_span_id,
                links,
                db_system,
            });
        }
    }
    out
}

fn string_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.as_str()),
        _ => None,
    })
}
