//! The log index: tantivy schema, documents and queries.
//!
//! Each log record is one document. Indexed: severity number and text, service name, the body as
//! full text (tantivy's default tokenizer, with positions for phrase queries), trace id,
//! and record/resource attributes as typed terms (see [`crate::attrs`]). Time (timestamp, or
//! observed time when 0), observed time and span id are fast fields only (range queries read the
//! column).
//! Stored: the record with its resource and
//! scope as an OTLP `LogsData` message.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, LogsData};
use prost::Message;
use tantivy::query::{
    AllQuery, BooleanQuery, EmptyQuery, EnableScoring, Occur, Query, QueryParser, QueryParserError, RangeQuery,
    TermQuery,
};
use tantivy::query_grammar::{Delimiter, UserInputAst, UserInputLeaf};
use tantivy::schema::{FAST, Field, IndexRecordOption, STORED, Schema};
use tantivy::tokenizer::TokenizerManager;
use tantivy::{TantivyDocument, Term};

use crate::StoreError;
use crate::api::{AttrScope, LogEntry, LogPredicate};
use crate::attrs::{self, Emit};
use crate::envelope;
use crate::memory::log_time;
use crate::segments::{
    FULL_TEXT_TOKENIZER, MAX_KEPT, Stored, full_text, id_query, id_u64, indexed_bytes, indexed_number, keyword,
};

/// Fields of the log schema.
pub(crate) struct LogFields {
    pub time: Field,
    pub observed: Field,
    pub severity: Field,
    pub severity_text: Field,
    pub service: Field,
    pub body: Field,
    pub trace_id: Field,
    pub span_id: Field,
    pub attr: Field,
    pub attr_key: Field,
    pub res: Field,
    /// Only the resource keys without a value term (`attrs::resource_terms`).
    pub res_key: Field,
    pub data: Field,
}

/// Name of the time field (Unix ns).
pub(crate) const TIME_FIELD: &str = "time";
/// Version of [`schema`]; bumped when a change makes older segments unreadable.
/// 2: no fieldnorms.
/// 3: time and observed time left out of the stored bytes ([`strip`]).
/// 4: the span id a fast field, not a term, and left out of the stored bytes.
/// 5: term dictionaries as sstables, not FSTs (tantivy's `quickwit` feature; Cargo.toml).
pub(crate) const SCHEMA_VERSION: u32 = 5;
/// The u64 fast fields read back with every stored record, in the order [`restore`] takes them.
pub(crate) const KEPT_FAST: [&str; 3] = [TIME_FIELD, "observed", "span_id"];
/// The field of a record's trace id.
pub(crate) const TRACE_ID_FIELD: &str = "trace_id";
/// Longest query text accepted.
const MAX_QUERY_LEN: usize = 4096;

/// The log schema and its fields.
pub(crate) fn schema() -> (Schema, LogFields) {
    let mut b = Schema::builder();
    let fields = LogFields {
        time: b.add_u64_field(TIME_FIELD, FAST),
        observed: b.add_u64_field("observed", FAST),
        severity: b.add_u64_field("severity", indexed_number() | FAST),
        severity_text: b.add_text_field("severity_text", keyword() | FAST),
        service: b.add_text_field("service", keyword() | FAST),
        body: b.add_text_field("body", full_text()),
        trace_id: b.add_bytes_field(TRACE_ID_FIELD, indexed_bytes()),
        span_id: b.add_u64_field("span_id", FAST),
        attr: b.add_text_field("attr", keyword()),
        attr_key: b.add_text_field("attr_key", keyword()),
        res: b.add_text_field("res", keyword()),
        res_key: b.add_text_field("res_key", keyword()),
        data: b.add_bytes_field("data", STORED),
    };
    (b.build(), fields)
}

/// Builds the documents of one WAL record.
pub(crate) fn documents(f: &LogFields, req: ExportLogsServiceRequest, out: &mut Vec<(TantivyDocument, u64)>) {
    let mut body = String::new();
    let mut stored = Vec::new();
    for rl in req.resource_logs {
        let service = attrs::service_name(rl.resource.as_ref()).to_string();
        let (res_terms, res_keys) =
            rl.resource.as_ref().map(|r| attrs::resource_terms(&r.attributes)).unwrap_or_default();
        let resource = rl.resource.as_ref().map(Message::encode_to_vec);
        for sl in rl.scope_logs {
            let scope = sl.scope.as_ref().map(Message::encode_to_vec);
            let parts = envelope::Parts {
                resource: resource.as_deref(),
                resource_schema_url: &rl.schema_url,
                scope: scope.as_deref(),
                scope_schema_url: &sl.schema_url,
            };
            for mut record in sl.log_records {
                let mut doc = TantivyDocument::new();
                let time = log_time(&record);
                doc.add_u64(f.time, time);
                doc.add_u64(f.observed, record.observed_time_unix_nano);
                doc.add_u64(f.severity, record.severity_number.max(0) as u64);
                doc.add_text(f.severity_text, &record.severity_text);
                doc.add_text(f.service, &service);
                if let Some(b) = &record.body {
                    body.clear();
                    attrs::value_text(b, &mut body);
                    doc.add_text(f.body, &body);
                }
                if !record.trace_id.is_empty() {
                    doc.add_bytes(f.trace_id, &record.trace_id);
                }
                if let Some(id) = id_u64(&record.span_id) {
                    doc.add_u64(f.span_id, id);
                }
                attrs::for_each_term(&record.attributes, &mut |e, t| match e {
                    Emit::Term => doc.add_text(f.attr, t),
                    Emit::Key => doc.add_text(f.attr_key, t),
                });
                for t in &res_terms {
                    doc.add_text(f.res, t);
                }
                for k in &res_keys {
                    doc.add_text(f.res_key, k);
                }
                strip(&mut record);
                envelope::encode(&parts, &record, &mut stored);
                doc.add_bytes(f.data, &stored);
                out.push((doc, time));
            }
        }
    }
}

/// Leaves out of a record's stored bytes what the fast fields of its document hold exactly
/// ([`KEPT_FAST`]): an 8-byte span id, and time and observed time when the record has a time
/// (the time field is the time, or the observed time when the time is 0, so a record without a
/// time keeps its observed time in the bytes).
fn strip(record: &mut LogRecord) {
    if id_u64(&record.span_id).is_some() {
        record.span_id.clear();
    }
    if record.time_unix_nano != 0 {
        record.time_unix_nano = 0;
        record.observed_time_unix_nano = 0;
    }
}

/// Puts back what [`strip`] left out, from the document's [`KEPT_FAST`] values: both times are
/// 0 in the bytes only when they were left out, or when both were 0 (and so are the values); an
/// empty span id has no fast value.
fn restore(record: &mut LogRecord, fast: &[Option<u64>; MAX_KEPT]) {
    let [time, observed, span_id, _] = *fast;
    if record.time_unix_nano == 0 && record.observed_time_unix_nano == 0 {
        record.time_unix_nano = time.unwrap_or(0);
        record.observed_time_unix_nano = observed.unwrap_or(0);
    }
    if let (true, Some(id)) = (record.span_id.is_empty(), span_id) {
        record.span_id = id.to_be_bytes().to_vec();
    }
}

/// The records of a stored document, as written.
pub(crate) fn stored_logs(stored: &Stored) -> Result<LogsData, StoreError> {
    let mut ld = LogsData::decode(stored.data.as_slice()).map_err(|e| StoreError::Index(format!("stored log: {e}")))?;
    for record in ld.resource_logs.iter_mut().flat_map(|r| &mut r.scope_logs).flat_map(|s| &mut s.log_records) {
        restore(record, &stored.fast);
    }
    Ok(ld)
}

/// Decodes stored documents, sharing equal resources and scopes.
pub(crate) fn decode(data: Vec<Stored>) -> Result<Vec<LogEntry>, StoreError> {
    let mut resources = HashMap::new();
    let mut scopes = HashMap::new();
    let mut out = Vec::with_capacity(data.len());
    for stored in data {
        let ld = stored_logs(&stored)?;
        for rl in ld.resource_logs {
            let r = rl.resource.unwrap_or_default();
            let resource = resources.entry(r.encode_to_vec()).or_insert_with(|| Arc::new(r)).clone();
            for sl in rl.scope_logs {
                let s = sl.scope.unwrap_or_default();
                let scope = scopes.entry(s.encode_to_vec()).or_insert_with(|| Arc::new(s)).clone();
                for record in sl.log_records {
                    out.push(LogEntry {
                        resource: resource.clone(),
                        resource_schema_url: rl.schema_url.clone(),
                        scope: scope.clone(),
                        scope_schema_url: sl.schema_url.clone(),
                        record,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Shortest word prefix (`pay*`) searched: a shorter one would walk most of the dictionary.
const MIN_PREFIX_LEN: usize = 3;

/// Makes each word prefix of the body (`pay*`) a walk over the body's terms that begin with it.
/// tantivy's query grammar keeps the `*` of an unquoted word in the word, and its tokenizer then
/// drops it: `pay*` found "pay" but not "payment". Prefixes of several tokens (`u-4*`,
/// `"cache mi"*`) become tantivy's phrase prefix queries.
fn word_prefixes(ast: UserInputAst) -> Result<UserInputAst, QueryParserError> {
    Ok(match ast {
        UserInputAst::Clause(clauses) => UserInputAst::Clause(
            clauses.into_iter().map(|(o, a)| Ok((o, word_prefixes(a)?))).collect::<Result<_, QueryParserError>>()?,
        ),
        UserInputAst::Boost(a, boost) => UserInputAst::Boost(Box::new(word_prefixes(*a)?), boost),
        UserInputAst::Leaf(leaf) => match *leaf {
            UserInputLeaf::Literal(mut l) if l.field_name.as_deref().is_none_or(|f| f == "body") => {
                // `"cache mi"*` (a phrase prefix), or `pay*` but not `*pay*` or `pay-*`: the star ends a word.
                let unquoted = l.phrase.strip_suffix('*').filter(|stem| {
                    l.delimiter == Delimiter::None
                        && !stem.contains('*')
                        && stem.chars().last().is_some_and(char::is_alphanumeric)
                });
                let stem = match (l.prefix, unquoted) {
                    (true, _) => l.phrase.clone(),
                    (false, Some(stem)) => stem.to_string(),
                    (false, None) => return Ok(UserInputAst::Leaf(Box::new(UserInputLeaf::Literal(l)))),
                };
                let mut words = Vec::new();
                if let Some(mut analyzer) = TokenizerManager::default().get(FULL_TEXT_TOKENIZER) {
                    analyzer.token_stream(&stem).process(&mut |t| words.push(t.text.clone()));
                }
                match words.as_slice() {
                    [word] if word.chars().count() < MIN_PREFIX_LEN => {
                        return Err(QueryParserError::UnsupportedQuery(format!(
                            "word prefix {word:?}*: at least {MIN_PREFIX_LEN} characters"
                        )));
                    }
                    [word] => UserInputAst::Leaf(Box::new(UserInputLeaf::Regex {
                        field: Some("body".into()),
                        pattern: format!("{}.*", regex::escape(word)),
                    })),
                    _ => {
                        (l.phrase, l.prefix) = (stem, true);
                        UserInputAst::Leaf(Box::new(UserInputLeaf::Literal(l)))
                    }
                }
            }
            // The parser is let make regex queries for the prefixes, not for the query's own
            // `/.../` (a regex over every term of the body).
            UserInputLeaf::Regex { .. } => {
                return Err(QueryParserError::UnsupportedQuery("regular expressions are not supported".into()));
            }
            leaf => UserInputAst::Leaf(Box::new(leaf)),
        },
    })
}

fn term_query(term: Term) -> Box<dyn Query> {
    Box::new(TermQuery::new(term, IndexRecordOption::Basic))
}

/// The trace id every record matching `p` carries, when `p` requires one.
pub(crate) fn pinned_trace_id(p: &LogPredicate) -> Option<&[u8]> {
    match p {
        LogPredicate::TraceId(id) => Some(id),
        LogPredicate::And(ps) => ps.iter().find_map(pinned_trace_id),
        _ => None,
    }
}

/// Translates a predicate into a tantivy query; full-text parts use tantivy's query syntax over
/// the body, with AND between words by default.
pub(crate) fn query(schema: &Schema, f: &LogFields, p: &LogPredicate) -> Result<Box<dyn Query>, StoreError> {
    Ok(match p {
        LogPredicate::All => Box::new(AllQuery),
        LogPredicate::Text(text) => {
            if text.len() > MAX_QUERY_LEN {
                return Err(StoreError::InvalidQuery(format!("query longer than {MAX_QUERY_LEN} bytes")));
            }
            let mut parser = QueryParser::new(schema.clone(), vec![f.body], TokenizerManager::default());
            parser.set_conjunction_by_default();
            parser.allow_regexes();
            let parse = |text: &str| {
                let ast = tantivy::query_grammar::parse_query(text)
                    .map_err(|_| QueryParserError::SyntaxError(text.to_string()))?;
                parser.build_query_from_user_input_ast(word_prefixes(ast)?)
            };
            let query = match parse(text) {
                // tantivy refuses a query of exclusions only (`-debug`): it means "all but".
                Err(QueryParserError::AllButQueryForbidden) => parse(&format!("* {text}"))?,
                other => other?,
            };
            // tantivy checks the field of `field:*` only when searching: an unknown or unfit
            // field is a bad query, refused here, not an index error of the search (found by
            // fuzzing the log query).
            query
                .weight(EnableScoring::disabled_from_schema(schema))
                .map_err(|e| StoreError::InvalidQuery(e.to_string()))?;
            query
        }
        LogPredicate::Service(s) => term_query(Term::from_field_text(f.service, s)),
        LogPredicate::MinSeverity(n) => Box::new(RangeQuery::new(
            std::ops::Bound::Included(Term::from_field_u64(f.severity, (*n).max(0) as u64)),
            std::ops::Bound::Unbounded,
        )),
        LogPredicate::SeverityText(s) => term_query(Term::from_field_text(f.severity_text, s)),
        LogPredicate::ObservedTime(range) => Box::new(RangeQuery::new(
            std::ops::Bound::Included(Term::from_field_u64(f.observed, range.start_ns)),
            std::ops::Bound::Excluded(Term::from_field_u64(f.observed, range.end_ns)),
        )),
        LogPredicate::TraceId(id) => term_query(Term::from_field_bytes(f.trace_id, id)),
        LogPredicate::SpanId(id) => id_query(f.span_id, id),
        LogPredicate::Attribute { scope, key, value } => {
            let field = if *scope == AttrScope::Item { f.attr } else { f.res };
            term_query(Term::from_field_text(field, &attrs::predicate_term(key, value)))
        }
        LogPredicate::AttributeExists { scope, key } => {
            if *scope == AttrScope::Item {
                term_query(Term::from_field_text(f.attr_key, key))
            } else {
                attrs::key_exists_query(f.res, f.res_key, key)
            }
        }
        LogPredicate::And(ps) if ps.is_empty() => Box::new(AllQuery),
        LogPredicate::Or(ps) if ps.is_empty() => Box::new(EmptyQuery),
        LogPredicate::And(ps) => Box::new(BooleanQuery::new(
            ps.iter().map(|p| Ok((Occur::Must, query(schema, f, p)?))).collect::<Result<_, StoreError>>()?,
        )),
        LogPredicate::Or(ps) => Box::new(BooleanQuery::new(
            ps.iter().map(|p| Ok((Occur::Should, query(schema, f, p)?))).collect::<Result<_, StoreError>>()?,
        )),
        LogPredicate::Not(p) => Box::new(BooleanQuery::new(vec![
            (Occur::Must, Box::new(AllQuery) as Box<dyn Query>),
            (Occur::MustNot, query(schema, f, p)?),
        ])),
    })
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use tantivy::schema::Value;

    use super::*;

    /// The stored bytes hold no span id, time or observed time; the document's fast values put
    /// them back. (The store contract checks the round trip of every time combination.)
    #[test]
    fn stored_bytes_leave_out_what_the_fast_fields_hold() {
        let (_, f) = schema();
        let record = crate::testsuite::log(2, "with span");
        assert!(record.span_id.len() == 8 && record.time_unix_nano != 0);
        let req = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs { log_records: vec![record.clone()], ..Default::default() }],
                ..Default::default()
            }],
        };
        let mut docs = Vec::new();
        documents(&f, req, &mut docs);
        let doc = &docs[0].0;
        let data = doc.get_first(f.data).and_then(|v| v.as_bytes()).unwrap().to_vec();
        let stored = LogsData::decode(data.as_slice()).unwrap().resource_logs[0].scope_logs[0].log_records[0].clone();
        assert!(stored.span_id.is_empty());
        assert_eq!((stored.time_unix_nano, stored.observed_time_unix_nano), (0, 0));
        assert_eq!(stored.trace_id, record.trace_id, "the trace id stays in the bytes");
        let fast = |field| doc.get_first(field).and_then(|v| v.as_u64());
        let kept = [fast(f.time), fast(f.observed), fast(f.span_id), None];
        let ld = stored_logs(&Stored { data, fast: kept, bytes: None }).unwrap();
        assert_eq!(ld.resource_logs[0].scope_logs[0].log_records[0], record);
    }

    #[test]
    fn field_syntax_in_the_text_is_a_bad_query_not_an_index_error() {
        let (schema, fields) = schema();
        for text in ["a-b:*", "(body:*)", "x\u{f}_id:*", "payment nope:*"] {
            let err = query(&schema, &fields, &LogPredicate::Text(text.into())).err();
            assert!(matches!(err, Some(StoreError::InvalidQuery(_))), "{text:?}: {err:?}");
        }
        for text in ["payment", "\"cache miss\" OR tick", "-debug", "pay*"] {
            query(&schema, &fields, &LogPredicate::Text(text.into())).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        }
    }
}
