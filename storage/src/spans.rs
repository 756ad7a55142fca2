//! The span index: tantivy schema, documents and queries.
//!
//! Each span is one document. Indexed: trace id, a root flag, service name, span name, kind,
//! status code, and span/resource attributes as typed `key\0value` terms (see [`crate::attrs`])
//! with their keys for existence. Span id, parent span id, start time and duration are fast
//! fields only: tantivy answers range (and equality) queries on them from the column, while
//! indexing them would add nearly unique terms per span, the costliest part of building the
//! term dictionary at each commit and merge. Stored: the span
//! with its resource and scope as an OTLP `TracesData` message, so a read returns exactly what
//! was written.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{Span, TracesData};
use prost::Message;
use tantivy::query::{AllQuery, BooleanQuery, EmptyQuery, Occur, Query, RangeQuery, RegexQuery, TermQuery};
use tantivy::schema::{FAST, Field, IndexRecordOption, STORED, Schema};
use tantivy::{TantivyDocument, Term};

use crate::StoreError;
use crate::api::{AttrScope, SpanPredicate, SpanRecord};
use crate::attrs::{self, Emit};
use crate::envelope;
use crate::segments::{MAX_KEPT, Stored, id_query, id_u64, indexed_bytes, indexed_number, keyword};

/// Fields of the span schema.
pub(crate) struct SpanFields {
    pub trace_id: Field,
    pub span_id: Field,
    pub parent_id: Field,
    pub root: Field,
    pub service: Field,
    pub name: Field,
    pub kind: Field,
    pub status: Field,
    pub start: Field,
    pub duration: Field,
    pub attr: Field,
    pub attr_key: Field,
    pub res: Field,
    /// Only the resource keys without a value term (`attrs::resource_terms`).
    pub res_key: Field,
    pub ord: Field,
    pub op: Field,
    pub data: Field,
}

/// Version of [`schema`]; bumped when a change makes older segments unreadable.
/// 2: span and parent ids became u64 fast fields instead of indexed bytes.
/// 3: no fieldnorms.
/// 4: trace id, span id, parent span id, start and end left out of the stored bytes ([`strip`]).
/// 5: term dictionaries as sstables, not FSTs (tantivy's `quickwit` feature; Cargo.toml).
pub(crate) const SCHEMA_VERSION: u32 = 5;
/// Name of the time field (span start, Unix ns).
pub(crate) const TIME_FIELD: &str = "start";
/// Name of the trace id field.
pub(crate) const TRACE_ID_FIELD: &str = "trace_id";
/// Name of the write-order field.
pub(crate) const ORD_FIELD: &str = "ord";
/// The u64 fast fields read back with every stored span, in the order [`restore`] takes them.
pub(crate) const KEPT_FAST: [&str; 4] = ["span_id", "parent_id", TIME_FIELD, "duration"];

/// The span schema and its fields.
pub(crate) fn schema() -> (Schema, SpanFields) {
    let mut b = Schema::builder();
    let fields = SpanFields {
        trace_id: b.add_bytes_field(TRACE_ID_FIELD, indexed_bytes() | FAST),
        span_id: b.add_u64_field("span_id", FAST),
        parent_id: b.add_u64_field("parent_id", FAST),
        root: b.add_bool_field("root", indexed_number()),
        service: b.add_text_field("service", keyword() | FAST),
        name: b.add_text_field("name", keyword() | FAST),
        kind: b.add_u64_field("kind", indexed_number() | FAST),
        status: b.add_u64_field("status", indexed_number() | FAST),
        start: b.add_u64_field(TIME_FIELD, FAST),
        duration: b.add_u64_field("duration", FAST),
        attr: b.add_text_field("attr", keyword()),
        attr_key: b.add_text_field("attr_key", keyword()),
        res: b.add_text_field("res", keyword()),
        res_key: b.add_text_field("res_key", keyword()),
        ord: b.add_u64_field(ORD_FIELD, FAST),
        op: b.add_text_field("op", keyword()),
        data: b.add_bytes_field("data", STORED),
    };
    (b.build(), fields)
}

/// Builds the documents of one WAL record. `seq` orders spans across records.
pub(crate) fn documents(
    f: &SpanFields,
    seq: u64,
    req: ExportTraceServiceRequest,
    out: &mut Vec<(TantivyDocument, u64)>,
) {
    documents_with_ord(f, req, |i| (seq << 24) | i.min((1 << 24) - 1), out)
}

/// Builds the documents of a request whose `i`-th span has the write-order value `ord(i)`
/// (re-indexing a stored span keeps the value it was given when written).
pub(crate) fn documents_with_ord(
    f: &SpanFields,
    req: ExportTraceServiceRequest,
    mut ord: impl FnMut(u64) -> u64,
    out: &mut Vec<(TantivyDocument, u64)>,
) {
    let mut i: u64 = 0;
    let mut stored = Vec::new();
    for rs in req.resource_spans {
        let service = attrs::service_name(rs.resource.as_ref()).to_string();
        let (res_terms, res_keys) =
            rs.resource.as_ref().map(|r| attrs::resource_terms(&r.attributes)).unwrap_or_default();
        let resource = rs.resource.as_ref().map(Message::encode_to_vec);
        for ss in rs.scope_spans {
            let scope = ss.scope.as_ref().map(Message::encode_to_vec);
            let parts = envelope::Parts {
                resource: resource.as_deref(),
                resource_schema_url: &rs.schema_url,
                scope: scope.as_deref(),
                scope_schema_url: &ss.schema_url,
            };
            for mut span in ss.spans {
                let mut doc = TantivyDocument::new();
                doc.add_bytes(f.trace_id, &span.trace_id);
                if let Some(id) = id_u64(&span.span_id) {
                    doc.add_u64(f.span_id, id);
                }
                if span.parent_span_id.is_empty() {
                    doc.add_bool(f.root, true);
                } else if let Some(id) = id_u64(&span.parent_span_id) {
                    doc.add_u64(f.parent_id, id);
                }
                doc.add_text(f.service, &service);
                doc.add_text(f.name, &span.name);
                doc.add_text(f.op, op_term(&service, span.kind, &span.name));
                doc.add_u64(f.kind, span.kind as u64);
                doc.add_u64(f.status, span.status.as_ref().map(|s| s.code as u64).unwrap_or(0));
                doc.add_u64(f.start, span.start_time_unix_nano);
                doc.add_u64(f.duration, span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano));
                attrs::for_each_term(&span.attributes, &mut |e, t| match e {
                    Emit::Term => doc.add_text(f.attr, t),
                    Emit::Key => doc.add_text(f.attr_key, t),
                });
                for t in &res_terms {
                    doc.add_text(f.res, t);
                }
                for k in &res_keys {
                    doc.add_text(f.res_key, k);
                }
                doc.add_u64(f.ord, ord(i));
                i += 1;
                let start = span.start_time_unix_nano;
                strip(&mut span);
                envelope::encode(&parts, &span, &mut stored);
                doc.add_bytes(f.data, &stored);
                out.push((doc, start));
            }
        }
    }
}

/// Leaves out of a span's stored bytes what the fast fields of its document hold exactly
/// ([`KEPT_FAST`] and the trace id field): the trace id, an 8-byte span id and parent span id,
/// and start and end when the end is not before the start (the duration field is the end minus
/// the start, saturating). Those are nearly random bytes that zstd cannot shrink: 96 -> 60 B of
/// docstore per span.
fn strip(span: &mut Span) {
    span.trace_id.clear();
    if id_u64(&span.span_id).is_some() {
        span.span_id.clear();
    }
    if id_u64(&span.parent_span_id).is_some() {
        span.parent_span_id.clear();
    }
    if span.end_time_unix_nano >= span.start_time_unix_nano {
        span.start_time_unix_nano = 0;
        span.end_time_unix_nano = 0;
    }
}

/// Puts back what [`strip`] left out, from the document's [`KEPT_FAST`] values. A field that
/// was kept (an id of another length, an end before the start) is left as it is: an empty id
/// has no fast value, and a kept start is never 0 as it is after an end.
fn restore(span: &mut Span, fast: &[Option<u64>; MAX_KEPT], trace_id: Option<&[u8]>) {
    // Every document has a trace id value (empty when the span's is).
    if let (true, Some(id)) = (span.trace_id.is_empty(), trace_id) {
        span.trace_id = id.to_vec();
    }
    let [span_id, parent_id, start, duration] = *fast;
    if let (true, Some(id)) = (span.span_id.is_empty(), span_id) {
        span.span_id = id.to_be_bytes().to_vec();
    }
    if let (true, Some(id)) = (span.parent_span_id.is_empty(), parent_id) {
        span.parent_span_id = id.to_be_bytes().to_vec();
    }
    if span.start_time_unix_nano == 0 && span.end_time_unix_nano == 0 {
        span.start_time_unix_nano = start.unwrap_or(0);
        span.end_time_unix_nano = span.start_time_unix_nano.saturating_add(duration.unwrap_or(0));
    }
}

/// The `op` term of an operation: `service \0 kind \0 name`.
pub(crate) fn op_term(service: &str, kind: i32, name: &str) -> String {
    format!("{service}\0{kind}\0{name}")
}

/// Parses an `op` term.
pub(crate) fn parse_op_term(term: &[u8]) -> Option<crate::api::Operation> {
    let s = std::str::from_utf8(term).ok()?;
    let mut parts = s.splitn(3, '\0');
    let service = parts.next()?.to_string();
    let kind = parts.next()?.parse().ok()?;
    let name = parts.next()?.to_string();
    Some(crate::api::Operation { service, name, kind })
}

/// The span of a stored document, as written.
pub(crate) fn stored_traces(stored: &Stored) -> Result<TracesData, StoreError> {
    let mut td =
        TracesData::decode(stored.data.as_slice()).map_err(|e| StoreError::Index(format!("stored span: {e}")))?;
    for span in td.resource_spans.iter_mut().flat_map(|r| &mut r.scope_spans).flat_map(|s| &mut s.spans) {
        restore(span, &stored.fast, stored.bytes.as_deref());
    }
    Ok(td)
}

/// Decodes stored documents, sharing equal resources and scopes.
pub(crate) fn decode(data: Vec<Stored>) -> Result<Vec<SpanRecord>, StoreError> {
    let mut resources = HashMap::new();
    let mut scopes = HashMap::new();
    let mut out = Vec::with_capacity(data.len());
    for stored in data {
        let td = stored_traces(&stored)?;
        for rs in td.resource_spans {
            let r = rs.resource.unwrap_or_default();
            let resource = resources.entry(r.encode_to_vec()).or_insert_with(|| Arc::new(r)).clone();
            for ss in rs.scope_spans {
                let s = ss.scope.unwrap_or_default();
                let scope = scopes.entry(s.encode_to_vec()).or_insert_with(|| Arc::new(s)).clone();
                for span in ss.spans {
                    out.push(SpanRecord {
                        resource: resource.clone(),
                        resource_schema_url: rs.schema_url.clone(),
                        scope: scope.clone(),
                        scope_schema_url: ss.schema_url.clone(),
                        span,
                    });
                }
            }
        }
    }
    Ok(out)
}

fn term_query(term: Term) -> Box<dyn Query> {
    Box::new(TermQuery::new(term, IndexRecordOption::Basic))
}

/// The trace id every span matching `p` carries, when `p` requires one.
pub(crate) fn pinned_trace_id(p: &SpanPredicate) -> Option<&[u8]> {
    match p {
        SpanPredicate::TraceId(id) => Some(id),
        SpanPredicate::And(ps) => ps.iter().find_map(pinned_trace_id),
        _ => None,
    }
}

/// Translates a predicate into a tantivy query.
pub(crate) fn query(f: &SpanFields, p: &SpanPredicate) -> Result<Box<dyn Query>, StoreError> {
    Ok(match p {
        SpanPredicate::All => Box::new(AllQuery),
        SpanPredicate::TraceId(id) => term_query(Term::from_field_bytes(f.trace_id, id)),
        SpanPredicate::SpanId(id) => id_query(f.span_id, id),
        SpanPredicate::ParentSpanId(id) if id.is_empty() => term_query(Term::from_field_bool(f.root, true)),
        SpanPredicate::ParentSpanId(id) => id_query(f.parent_id, id),
        SpanPredicate::Service(s) => term_query(Term::from_field_text(f.service, s)),
        SpanPredicate::Name(s) => term_query(Term::from_field_text(f.name, s)),
        SpanPredicate::Kind(k) => term_query(Term::from_field_u64(f.kind, (*k).max(0) as u64)),
        SpanPredicate::StatusCode(c) => term_query(Term::from_field_u64(f.status, (*c).max(0) as u64)),
        SpanPredicate::Duration { min, max } => Box::new(RangeQuery::new(
            std::ops::Bound::Included(Term::from_field_u64(f.duration, *min)),
            std::ops::Bound::Included(Term::from_field_u64(f.duration, *max)),
        )),
        SpanPredicate::Attribute { scope, key, value } => {
            let field = if *scope == AttrScope::Item { f.attr } else { f.res };
            term_query(Term::from_field_text(field, &attrs::predicate_term(key, value)))
        }
        SpanPredicate::AttributeExists { scope, key } => {
            if *scope == AttrScope::Item {
                term_query(Term::from_field_text(f.attr_key, key))
            } else {
                attrs::key_exists_query(f.res, f.res_key, key)
            }
        }
        SpanPredicate::And(ps) if ps.is_empty() => Box::new(AllQuery),
        SpanPredicate::Or(ps) if ps.is_empty() => Box::new(EmptyQuery),
        SpanPredicate::AttributeRegex { scope, key, regex } => {
            // Validate with the regex crate first, for the same errors as the in-memory store.
            crate::attrs::anchored_regex(regex)?;
            let field = if *scope == AttrScope::Item { f.attr } else { f.res };
            let pattern = format!("{}\\x00s(?:{})", regex::escape(key), crate::attrs::without_outer_anchors(regex));
            Box::new(
                RegexQuery::from_pattern(&pattern, field)
                    .map_err(|e| StoreError::InvalidQuery(format!("bad regular expression {regex:?}: {e}")))?,
            )
        }
        SpanPredicate::And(ps) => Box::new(BooleanQuery::new(
            ps.iter().map(|p| Ok((Occur::Must, query(f, p)?))).collect::<Result<_, StoreError>>()?,
        )),
        SpanPredicate::Or(ps) => Box::new(BooleanQuery::new(
            ps.iter().map(|p| Ok((Occur::Should, query(f, p)?))).collect::<Result<_, StoreError>>()?,
        )),
        SpanPredicate::Not(p) => Box::new(BooleanQuery::new(vec![
            (Occur::Must, Box::new(AllQuery) as Box<dyn Query>),
            (Occur::MustNot, query(f, p)?),
        ])),
    })
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    use tantivy::schema::Value;

    use super::*;

    /// The stored bytes hold no trace id, span id, parent id, start or end; the document's fast values put
    /// them back. (The store contract checks the round trip of every case end to end.)
    #[test]
    fn stored_bytes_leave_out_what_the_fast_fields_hold() {
        let (_, f) = schema();
        let span = crate::testsuite::full_span(1, 2, Some(1));
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![span.clone()], ..Default::default() }],
                ..Default::default()
            }],
        };
        let mut docs = Vec::new();
        documents(&f, 1, req, &mut docs);
        let doc = &docs[0].0;
        let data = doc.get_first(f.data).and_then(|v| v.as_bytes()).unwrap().to_vec();
        let stored = TracesData::decode(data.as_slice()).unwrap().resource_spans[0].scope_spans[0].spans[0].clone();
        assert!(stored.span_id.is_empty() && stored.parent_span_id.is_empty());
        assert_eq!((stored.start_time_unix_nano, stored.end_time_unix_nano), (0, 0));
        let fast = |field| doc.get_first(field).and_then(|v| v.as_u64());
        assert!(stored.trace_id.is_empty());
        let kept = [fast(f.span_id), fast(f.parent_id), fast(f.start), fast(f.duration)];
        let trace_id = doc.get_first(f.trace_id).and_then(|v| v.as_bytes()).map(<[u8]>::to_vec);
        let td = stored_traces(&Stored { data, fast: kept, bytes: trace_id }).unwrap();
        assert_eq!(td.resource_spans[0].scope_spans[0].spans[0], span);
    }
}
