//! Attribute helpers shared by the indexes and the in-memory store, so both match alike.
//!
//! An attribute is indexed as the term `key \0 type-tag value` (tags: `s` string, `i` integer,
//! `f` double, `b` bool, `x` bytes as hex), so `http.status_code = 200` and `= "200"` differ as in
//! OTLP. Array elements are indexed under the array's key; map entries under `key.subkey`.
//! Values longer than [`MAX_INDEXED_VALUE`] bytes are indexed by their prefix.

use std::ops::Bound;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tantivy::Term;
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{Field, IndexRecordOption};

use crate::api::AttrValue;

/// Longest value prefix that goes into a term.
pub(crate) const MAX_INDEXED_VALUE: usize = 512;
/// Array and map nesting deeper than this is not indexed (it is still stored).
const MAX_DEPTH: usize = 4;

fn truncate(s: &str) -> &str {
    if s.len() <= MAX_INDEXED_VALUE {
        return s;
    }
    let mut end = MAX_INDEXED_VALUE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The term of an attribute predicate.
pub(crate) fn predicate_term(key: &str, value: &AttrValue) -> String {
    match value {
        AttrValue::Str(s) => format!("{key}\0s{}", truncate(s)),
        AttrValue::Int(i) => format!("{key}\0i{i}"),
        AttrValue::Float(f) => format!("{key}\0f{f}"),
        AttrValue::Bool(b) => format!("{key}\0b{b}"),
    }
}

/// What [`for_each_term`] emits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Emit {
    /// A `key\0value` term.
    Term,
    /// An attribute key.
    Key,
}

/// Calls `emit(Emit::Term, term)` for each term of the attributes and `emit(Emit::Key, key)` for
/// each key.
pub(crate) fn for_each_term(attrs: &[KeyValue], emit: &mut dyn FnMut(Emit, &str)) {
    let mut buf = String::new();
    for kv in attrs {
        emit(Emit::Key, &kv.key);
        if let Some(v) = &kv.value {
            value_terms(&kv.key, v, 0, &mut buf, emit);
        }
    }
}

fn value_terms(key: &str, v: &AnyValue, depth: usize, buf: &mut String, emit: &mut dyn FnMut(Emit, &str)) {
    use std::fmt::Write;
    let Some(value) = &v.value else { return };
    buf.clear();
    buf.push_str(key);
    buf.push('\0');
    match value {
        Value::StringValue(s) => {
            buf.push('s');
            buf.push_str(truncate(s));
        }
        Value::IntValue(i) => {
            let _ = write!(buf, "i{i}");
        }
        Value::DoubleValue(f) => {
            let _ = write!(buf, "f{f}");
        }
        Value::BoolValue(b) => {
            let _ = write!(buf, "b{b}");
        }
        Value::BytesValue(b) => {
            buf.push('x');
            let n = b.len().min(MAX_INDEXED_VALUE / 2);
            buf.push_str(&hex::encode(&b[..n]));
        }
        Value::ArrayValue(a) => {
            if depth < MAX_DEPTH {
                for e in &a.values {
                    value_terms(key, e, depth + 1, buf, emit);
                }
            }
            return;
        }
        Value::KvlistValue(l) => {
            if depth < MAX_DEPTH {
                for kv in &l.values {
                    let sub = format!("{key}.{}", kv.key);
                    emit(Emit::Key, &sub);
                    if let Some(v) = &kv.value {
                        value_terms(&sub, v, depth + 1, buf, emit);
                    }
                }
            }
            return;
        }
        // Only meaningful with a profiles dictionary; not indexed.
        Value::StringValueStrindex(_) => return,
    }
    emit(Emit::Term, buf);
}

/// The terms of a resource's attributes, and the keys among them that have no value term (an
/// empty value, an empty array or map, a value kind not indexed). Only those keys go into the
/// key field: the presence of any other resource key is the presence of a `key\0` term
/// ([`key_exists_query`]), a cheap prefix walk as a resource key has few values. That keeps ~10
/// key terms per span or record out of the index, which every item of the resource repeated.
pub(crate) fn resource_terms(attrs: &[KeyValue]) -> (Vec<String>, Vec<String>) {
    let (mut terms, mut keys) = (Vec::new(), Vec::new());
    for_each_term(attrs, &mut |e, t| match e {
        Emit::Term => terms.push(t.to_string()),
        Emit::Key => keys.push(t.to_string()),
    });
    keys.retain(|k| {
        !terms.iter().any(|t| t.len() > k.len() && t.starts_with(k.as_str()) && t.as_bytes()[k.len()] == 0)
    });
    (terms, keys)
}

/// Documents having attribute `key`, in an index whose `keys` field holds only the keys without
/// a value term ([`resource_terms`]): the key term, or any term of `terms` in the range
/// `key\0 ..< key\x01`, which holds every `key\0value` and nothing else (a range, not a regex:
/// a regex of a long key exceeds the regex size limit). A key holding a NUL is as ambiguous here
/// as in every `key\0value` term.
pub(crate) fn key_exists_query(terms: Field, keys: Field, key: &str) -> Box<dyn Query> {
    let values = RangeQuery::new(
        Bound::Included(Term::from_field_text(terms, &format!("{key}\0"))),
        Bound::Excluded(Term::from_field_text(terms, &format!("{key}\x01"))),
    );
    Box::new(BooleanQuery::new(vec![
        (
            Occur::Should,
            Box::new(TermQuery::new(Term::from_field_text(keys, key), IndexRecordOption::Basic)) as Box<dyn Query>,
        ),
        (Occur::Should, Box::new(values)),
    ]))
}

/// Parses the value part of an indexed term (`<tag>value`); bytes values give `None`.
pub(crate) fn parse_term_value(tagged: &str) -> Option<AttrValue> {
    let mut chars = tagged.chars();
    let tag = chars.next()?;
    let v = chars.as_str();
    match tag {
        's' => Some(AttrValue::Str(v.to_string())),
        'i' => v.parse().ok().map(AttrValue::Int),
        'f' => v.parse().ok().map(AttrValue::Float),
        'b' => v.parse().ok().map(AttrValue::Bool),
        _ => None,
    }
}

/// Whether the attributes satisfy `key = value` the way the index does.
pub(crate) fn attrs_match(attrs: &[KeyValue], key: &str, value: &AttrValue) -> bool {
    let want = predicate_term(key, value);
    let mut found = false;
    for_each_term(attrs, &mut |e, t| found |= e == Emit::Term && t == want);
    found
}

/// Whether a string value (or array element) of `key` fully matches `re` (the index's view:
/// values are seen through their indexed prefix).
pub(crate) fn attrs_match_regex(attrs: &[KeyValue], key: &str, re: &regex::Regex) -> bool {
    let prefix = format!("{key}\0s");
    let mut found = false;
    for_each_term(attrs, &mut |e, t| {
        if e == Emit::Term
            && !found
            && let Some(v) = t.strip_prefix(&prefix)
        {
            found = re.is_match(v);
        }
    });
    found
}

/// The regular expression, compiled anchored, or an invalid-query error naming it.
pub(crate) fn anchored_regex(re: &str) -> Result<regex::Regex, crate::StoreError> {
    regex::Regex::new(&format!("^(?:{re})$"))
        .map_err(|e| crate::StoreError::InvalidQuery(format!("bad regular expression {re:?}: {e}")))
}

/// `re` without a leading `^` (after an optional flag group such as `(?i)`) and a trailing
/// unescaped `$`: the attribute regexes match whole values anyway, and tantivy's regex queries
/// refuse anchors ("empty match operators"), so `^(GET|HEAD)$` would fail only on disk.
pub(crate) fn without_outer_anchors(re: &str) -> String {
    let flags_end = re
        .strip_prefix("(?")
        .and_then(|rest| rest.find(')').filter(|&i| rest[..i].chars().all(|c| c.is_ascii_alphabetic() || c == '-')))
        .map_or(0, |i| i + 3);
    let (flags, mut body) = re.split_at(flags_end);
    body = body.strip_prefix('^').unwrap_or(body);
    if let Some(rest) = body.strip_suffix('$') {
        let escapes = rest.chars().rev().take_while(|c| *c == '\\').count();
        if escapes % 2 == 0 {
            body = rest;
        }
    }
    format!("{flags}{body}")
}

/// Whether the attributes have `key` (map entries count as `key.subkey`).
pub(crate) fn attrs_have_key(attrs: &[KeyValue], key: &str) -> bool {
    let mut found = false;
    for_each_term(attrs, &mut |e, k| found |= e == Emit::Key && k == key);
    found
}

/// The `service.name` resource attribute, or `""`.
pub fn service_name(resource: Option<&Resource>) -> &str {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("")
}

/// A value as the log index reads it (a body's full text): strings as they are, other values in
/// a JSON-like rendering (`{key: value, ...}`, `[a, b]`).
pub fn any_value_text(v: &AnyValue) -> String {
    let mut out = String::new();
    value_text(v, &mut out);
    out
}

/// Appends [`any_value_text`] of `v` to `out`.
pub(crate) fn value_text(v: &AnyValue, out: &mut String) {
    use std::fmt::Write;
    match &v.value {
        None => {}
        Some(Value::StringValue(s)) => out.push_str(s),
        Some(Value::IntValue(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(Value::DoubleValue(f)) => {
            let _ = write!(out, "{f}");
        }
        Some(Value::BoolValue(b)) => {
            let _ = write!(out, "{b}");
        }
        Some(Value::BytesValue(b)) => out.push_str(&hex::encode(b)),
        Some(Value::StringValueStrindex(i)) => {
            let _ = write!(out, "strindex:{i}");
        }
        Some(Value::ArrayValue(a)) => {
            out.push('[');
            for (i, e) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                value_text(e, out);
            }
            out.push(']');
        }
        Some(Value::KvlistValue(l)) => {
            out.push('{');
            for (i, kv) in l.values.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&kv.key);
                out.push_str(": ");
                if let Some(v) = &kv.value {
                    value_text(v, out);
                }
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    #[test]
    fn typed_terms_differ() {
        let attrs = vec![kv("code", Value::IntValue(200)), kv("name", Value::StringValue("200".into()))];
        assert!(attrs_match(&attrs, "code", &AttrValue::Int(200)));
        assert!(!attrs_match(&attrs, "code", &AttrValue::Str("200".into())));
        assert!(attrs_match(&attrs, "name", &AttrValue::Str("200".into())));
    }

    #[test]
    fn arrays_and_maps() {
        let arr = Value::ArrayValue(ArrayValue {
            values: vec![
                AnyValue { value: Some(Value::StringValue("a".into())) },
                AnyValue { value: Some(Value::StringValue("b".into())) },
            ],
        });
        let map = Value::KvlistValue(KeyValueList { values: vec![kv("inner", Value::BoolValue(true))] });
        let attrs = vec![kv("tags", arr), kv("m", map)];
        assert!(attrs_match(&attrs, "tags", &AttrValue::Str("b".into())));
        assert!(attrs_match(&attrs, "m.inner", &AttrValue::Bool(true)));
        assert!(attrs_have_key(&attrs, "m.inner"));
        assert!(attrs_have_key(&attrs, "tags"));
        assert!(!attrs_have_key(&attrs, "nope"));
    }

    #[test]
    fn long_values_match_by_prefix_without_panicking_on_char_boundaries() {
        let long = "é".repeat(1000);
        let attrs = vec![kv("k", Value::StringValue(long.clone()))];
        assert!(attrs_match(&attrs, "k", &AttrValue::Str(long)));
    }
}
