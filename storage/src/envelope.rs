//! The stored form of one span or log record: a one-item `TracesData` / `LogsData` carrying its
//! resource and scope, encoded from parts. A request's resource and scope are encoded once per
//! group and copied into each item's bytes, instead of cloned into a message and encoded again
//! for every item.
//!
//! Both messages have the same shape, which is what lets one encoder serve both: the outer
//! message holds one group (field 1) of resource (1), scope group (2) and schema URL (3); the
//! scope group holds scope (1), the item (2) and schema URL (3). Fields go out in field order and
//! empty ones are left out, as prost does, so the bytes equal prost's encoding of the message
//! (tested below).

use prost::Message;

/// Keys of the length-delimited fields 1, 2 and 3 (`tag << 3 | 2`).
const FIELD_1: u8 = 0x0a;
const FIELD_2: u8 = 0x12;
const FIELD_3: u8 = 0x1a;

/// The encoded resource and scope shared by the items of one group, and their schema URLs.
pub(crate) struct Parts<'a> {
    pub resource: Option<&'a [u8]>,
    pub resource_schema_url: &'a str,
    pub scope: Option<&'a [u8]>,
    pub scope_schema_url: &'a str,
}

/// Bytes a length-delimited field of `len` bytes takes (one-byte key).
fn field_len(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}

fn put_field(key: u8, len: usize, out: &mut Vec<u8>) {
    out.push(key);
    prost::encode_length_delimiter(len, out).expect("a Vec grows");
}

fn put_bytes(key: u8, bytes: &[u8], out: &mut Vec<u8>) {
    put_field(key, bytes.len(), out);
    out.extend_from_slice(bytes);
}

/// Replaces `out` with the stored bytes of `item` in the group `parts` describes.
pub(crate) fn encode(parts: &Parts<'_>, item: &impl Message, out: &mut Vec<u8>) {
    let opt = |b: Option<&[u8]>| b.map_or(0, |b| field_len(b.len()));
    let text = |s: &str| if s.is_empty() { 0 } else { field_len(s.len()) };
    let item_len = item.encoded_len();
    let group = opt(parts.scope) + field_len(item_len) + text(parts.scope_schema_url);
    let outer = opt(parts.resource) + field_len(group) + text(parts.resource_schema_url);
    out.clear();
    out.reserve(field_len(outer));
    put_field(FIELD_1, outer, out);
    if let Some(r) = parts.resource {
        put_bytes(FIELD_1, r, out);
    }
    put_field(FIELD_2, group, out);
    if let Some(s) = parts.scope {
        put_bytes(FIELD_1, s, out);
    }
    put_field(FIELD_2, item_len, out);
    item.encode_raw(out);
    if !parts.scope_schema_url.is_empty() {
        put_bytes(FIELD_3, parts.scope_schema_url.as_bytes(), out);
    }
    if !parts.resource_schema_url.is_empty() {
        put_bytes(FIELD_3, parts.resource_schema_url.as_bytes(), out);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, LogsData, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, TracesData};

    use super::*;

    fn check(resource: Option<Resource>, res_url: &str, scope: Option<InstrumentationScope>, scope_url: &str) {
        let res_bytes = resource.as_ref().map(Message::encode_to_vec);
        let scope_bytes = scope.as_ref().map(Message::encode_to_vec);
        let parts = Parts {
            resource: res_bytes.as_deref(),
            resource_schema_url: res_url,
            scope: scope_bytes.as_deref(),
            scope_schema_url: scope_url,
        };
        let mut out = vec![1, 2, 3];
        for mut span in [crate::testsuite::full_span(7, 3, Some(1)), Default::default()] {
            // Long enough that lengths take two-byte varints.
            span.name = "n".repeat(300);
            encode(&parts, &span, &mut out);
            let want = TracesData {
                resource_spans: vec![ResourceSpans {
                    resource: resource.clone(),
                    schema_url: res_url.into(),
                    scope_spans: vec![ScopeSpans {
                        scope: scope.clone(),
                        schema_url: scope_url.into(),
                        spans: vec![span],
                    }],
                }],
            };
            assert_eq!(out, want.encode_to_vec());
        }
        let record = LogRecord { severity_text: "WARN".into(), ..Default::default() };
        encode(&parts, &record, &mut out);
        let want = LogsData {
            resource_logs: vec![ResourceLogs {
                resource,
                schema_url: res_url.into(),
                scope_logs: vec![ScopeLogs { scope, schema_url: scope_url.into(), log_records: vec![record] }],
            }],
        };
        assert_eq!(out, want.encode_to_vec());
    }

    #[test]
    fn bytes_equal_the_messages_encoding() {
        let resource =
            Resource { attributes: crate::testsuite::full_span(1, 1, None).attributes, ..Default::default() };
        let scope = InstrumentationScope { name: "lib".into(), version: "1.0".into(), ..Default::default() };
        check(Some(resource.clone()), "https://opentelemetry.io/schemas/1.26.0", Some(scope.clone()), "s");
        check(None, "", None, "");
        check(Some(Resource::default()), "", Some(InstrumentationScope::default()), "");
        check(None, "r", Some(scope), "");
        check(Some(resource), "", None, "u");
    }
}
