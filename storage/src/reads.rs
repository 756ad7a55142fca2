//! The span and log [`crate::Reader`] calls over snapshots of segments ([`Snapshot`]), written
//! once for every reader of tantivy segments: [`crate::SegmentSet`] answers with these over
//! shipped segments, and `DiskStore` over its own (`DiskStore::with_indexes`).

use std::sync::{Arc, LazyLock};

use tantivy::schema::Field;

use crate::StoreError;
use crate::api::*;
use crate::logs::{self, LogFields};
use crate::segments::{Layout, Snapshot};
use crate::spans::{self, SpanFields};

/// Most terms a term listing (operations, field values, attribute keys and values) collects.
pub(crate) const MAX_TERMS: usize = 100_000;
/// Most spans `find_trace_hits` fetches to find its distinct traces.
const MAX_TRACE_HIT_FETCH: usize = 1 << 20;

/// The span and log layouts and fields, the same for every segment of this obsbox version.
pub(crate) struct Schemas {
    pub spans: Arc<Layout>,
    pub span_fields: SpanFields,
    pub logs: Arc<Layout>,
    pub log_fields: LogFields,
}

pub(crate) static SCHEMAS: LazyLock<Schemas> = LazyLock::new(|| {
    let (span_schema, span_fields) = spans::schema();
    let (log_schema, log_fields) = logs::schema();
    Schemas {
        spans: Arc::new(Layout::new(
            Signal::Traces,
            span_schema,
            spans::SCHEMA_VERSION,
            spans::TIME_FIELD,
            span_fields.data,
        )),
        logs: Arc::new(Layout::new(Signal::Logs, log_schema, logs::SCHEMA_VERSION, logs::TIME_FIELD, log_fields.data)),
        span_fields,
        log_fields,
    }
});

/// Terms as strings (those that are UTF-8), in term order.
pub(crate) fn terms_to_strings(terms: std::collections::BTreeMap<Vec<u8>, u64>) -> Vec<String> {
    terms.into_keys().filter_map(|k| String::from_utf8(k).ok()).collect()
}

/// The span and log segments one read looks at. Each method answers as the
/// [`crate::Reader`] method of the same name does.
pub(crate) struct Indexes<'a> {
    spans: &'a Snapshot,
    logs: &'a Snapshot,
}

impl<'a> Indexes<'a> {
    /// Reads over these span and log segments.
    pub fn of(spans: &'a Snapshot, logs: &'a Snapshot) -> Self {
        Indexes { spans, logs }
    }

    pub fn trace(&self, trace_id: &[u8]) -> Result<Vec<SpanRecord>, StoreError> {
        let q = spans::query(&SCHEMAS.span_fields, &SpanPredicate::TraceId(trace_id.to_vec()))?;
        let q = self.spans.for_trace(q, trace_id);
        // Every hit has this trace id: no need to look it up in the column's dictionary.
        spans::decode(self.spans.search_all(q, spans::ORD_FIELD, Some(trace_id))?)
    }

    pub fn find_spans(&self, query: &SpanQuery) -> Result<Vec<SpanRecord>, StoreError> {
        let mut q = spans::query(&SCHEMAS.span_fields, &query.predicate)?;
        if let Some(id) = spans::pinned_trace_id(&query.predicate) {
            q = self.spans.for_trace(q, id);
        }
        spans::decode(self.spans.search_newest(q, query.time, query.limit)?)
    }

    pub fn find_logs(&self, query: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
        let mut q = logs::query(self.logs.schema(), &SCHEMAS.log_fields, &query.predicate)?;
        if let Some(id) = logs::pinned_trace_id(&query.predicate) {
            q = self.logs.for_trace(q, id);
        }
        logs::decode(self.logs.search_newest(q, query.time, query.limit)?)
    }

    pub fn find_trace_hits(&self, query: &SpanQuery) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let q = spans::query(&SCHEMAS.span_fields, &query.predicate)?;
        // Spans of one trace cluster in time: fetch a few spans per wanted trace, more if needed.
        let mut fetch = query.limit.saturating_mul(4).max(16);
        loop {
            let hits = self.spans.newest_bytes(&*q, query.time, fetch, spans::TRACE_ID_FIELD)?;
            let exhausted = hits.len() < fetch;
            let mut seen = std::collections::HashSet::new();
            let ids: Vec<(Vec<u8>, u64)> = hits
                .into_iter()
                .filter(|(_, id)| seen.insert(id.clone()))
                .map(|(start, id)| (id, start))
                .take(query.limit)
                .collect();
            if ids.len() >= query.limit || exhausted || fetch >= MAX_TRACE_HIT_FETCH {
                return Ok(ids);
            }
            fetch = fetch.saturating_mul(4).min(MAX_TRACE_HIT_FETCH);
        }
    }

    pub fn find_trace_ids(&self, query: &SpanQuery) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.find_trace_hits(query)?.into_iter().map(|(id, _)| id).collect())
    }

    pub fn operations(&self, time: TimeRange) -> Result<Vec<Operation>, StoreError> {
        let terms = self.spans.terms(SCHEMAS.span_fields.op, b"", time, MAX_TERMS)?;
        Ok(terms.keys().filter_map(|k| spans::parse_op_term(k)).collect())
    }

    pub fn log_field_values(&self, field: LogField, time: TimeRange) -> Result<Vec<String>, StoreError> {
        let f = match field {
            LogField::Service => SCHEMAS.log_fields.service,
            LogField::SeverityText => SCHEMAS.log_fields.severity_text,
        };
        Ok(terms_to_strings(self.logs.terms(f, b"", time, MAX_TERMS)?))
    }

    fn attr_fields(&self, signal: Signal, scope: AttrScope) -> Result<(&Snapshot, Field, Field), StoreError> {
        let (sf, lf) = (&SCHEMAS.span_fields, &SCHEMAS.log_fields);
        Ok(match (signal, scope) {
            (Signal::Traces, AttrScope::Item) => (self.spans, sf.attr, sf.attr_key),
            (Signal::Traces, AttrScope::Resource) => (self.spans, sf.res, sf.res_key),
            (Signal::Logs, AttrScope::Item) => (self.logs, lf.attr, lf.attr_key),
            (Signal::Logs, AttrScope::Resource) => (self.logs, lf.res, lf.res_key),
            (Signal::Metrics, _) => {
                return Err(StoreError::InvalidQuery("metric attributes are labels: use find_metrics".into()));
            }
        })
    }

    pub fn attribute_keys(&self, signal: Signal, scope: AttrScope, time: TimeRange) -> Result<Vec<String>, StoreError> {
        let (index, terms, keys) = self.attr_fields(signal, scope)?;
        let mut out = terms_to_strings(index.terms(keys, b"", time, MAX_TERMS)?);
        if scope == AttrScope::Resource {
            // The key field holds only the resource keys without a value term
            // (`attrs::resource_terms`); the others are the keys of the value terms.
            let with_values = index.term_keys(terms, time, MAX_TERMS)?;
            out.extend(with_values.into_iter().filter_map(|k| String::from_utf8(k).ok()));
            out.sort();
            out.dedup();
            out.truncate(MAX_TERMS);
        }
        Ok(out)
    }

    pub fn attribute_values(
        &self,
        signal: Signal,
        scope: AttrScope,
        key: &str,
        time: TimeRange,
        limit: usize,
    ) -> Result<Vec<(AttrValue, u64)>, StoreError> {
        let (index, field, _) = self.attr_fields(signal, scope)?;
        let prefix = format!("{key}\0");
        let terms = index.terms(field, prefix.as_bytes(), time, MAX_TERMS)?;
        let mut values: Vec<(AttrValue, u64)> = terms
            .into_iter()
            .filter_map(|(k, n)| {
                let s = String::from_utf8(k).ok()?;
                Some((crate::attrs::parse_term_value(&s[prefix.len()..])?, n))
            })
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.1));
        values.truncate(limit);
        Ok(values)
    }

    pub fn span_histogram(
        &self,
        predicate: &SpanPredicate,
        time: TimeRange,
        bucket_ns: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        check_bucket(bucket_ns)?;
        let q = spans::query(&SCHEMAS.span_fields, predicate)?;
        Ok(self.spans.histogram(q, time, bucket_ns)?.into_iter().collect())
    }

    pub fn log_histogram(
        &self,
        predicate: &LogPredicate,
        time: TimeRange,
        bucket_ns: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        check_bucket(bucket_ns)?;
        let q = logs::query(self.logs.schema(), &SCHEMAS.log_fields, predicate)?;
        Ok(self.logs.histogram(q, time, bucket_ns)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing is scored, so no field may pay a byte per document for norms (see
    /// `segments::keyword`); a field added with tantivy's `STRING`, `TEXT` or `INDEXED` would.
    #[test]
    fn no_field_writes_fieldnorms() {
        let (spans, _) = spans::schema();
        let (logs, _) = logs::schema();
        for schema in [spans, logs] {
            for (_, entry) in schema.fields() {
                assert!(!entry.has_fieldnorms(), "{} has fieldnorms", entry.name());
            }
        }
    }
}
