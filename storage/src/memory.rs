//! [`MemStore`]: the in-memory reference implementation of [`Writer`] and [`Reader`].
//!
//! It keeps everything in vectors and answers queries by scanning, so its behaviour is easy to
//! check; the shared [`crate::testsuite`] holds the disk store to the same results.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::api::*;
use crate::attrs;
use crate::metrics::MetricsHead;
use crate::{StoreError, StoreStats};

/// In-memory store: every write is visible at once and nothing survives a restart.
#[derive(Default)]
pub struct MemStore {
    seq: AtomicU64,
    spans: RwLock<Vec<SpanRecord>>,
    logs: RwLock<Vec<LogEntry>>,
    metrics: Mutex<Option<MetricsHead>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Writer for MemStore {
    fn write(&self, batch: Batch) -> WriteFuture {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        match batch {
            Batch::Traces(req) => {
                let mut spans = self.spans.write();
                for rs in req.resource_spans {
                    let resource = Arc::new(rs.resource.unwrap_or_default());
                    for ss in rs.scope_spans {
                        let scope = Arc::new(ss.scope.unwrap_or_default());
                        for span in ss.spans {
                            spans.push(SpanRecord {
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
            Batch::Logs(req) => {
                let mut logs = self.logs.write();
                for rl in req.resource_logs {
                    let resource = Arc::new(rl.resource.unwrap_or_default());
                    for sl in rl.scope_logs {
                        let scope = Arc::new(sl.scope.unwrap_or_default());
                        for record in sl.log_records {
                            logs.push(LogEntry {
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
            Batch::Metrics(req) => {
                self.metrics.lock().get_or_insert_with(MetricsHead::new).append(&req);
            }
        }
        Box::pin(futures::future::ready(Ok(WriteReceipt { seq })))
    }
}

impl Reader for MemStore {
    fn trace(&self, trace_id: &[u8]) -> Result<Vec<SpanRecord>, StoreError> {
        Ok(self.spans.read().iter().filter(|s| s.span.trace_id == trace_id).cloned().collect())
    }

    fn find_spans(&self, query: &SpanQuery) -> Result<Vec<SpanRecord>, StoreError> {
        let spans = self.spans.read();
        let mut out = Vec::new();
        for s in spans.iter() {
            if query.time.contains(s.span.start_time_unix_nano) && span_matches(&query.predicate, s)? {
                out.push(s);
            }
        }
        out.sort_by_key(|s| std::cmp::Reverse(s.span.start_time_unix_nano));
        Ok(out.into_iter().take(query.limit).cloned().collect())
    }

    fn find_logs(&self, query: &LogQuery) -> Result<Vec<LogEntry>, StoreError> {
        let logs = self.logs.read();
        let mut out = Vec::new();
        for l in logs.iter() {
            if query.time.contains(log_time(&l.record)) && log_matches(&query.predicate, l)? {
                out.push(l);
            }
        }
        out.sort_by_key(|l| std::cmp::Reverse(log_time(&l.record)));
        Ok(out.into_iter().take(query.limit).cloned().collect())
    }

    fn find_metrics(
        &self,
        query: &MetricQuery,
    ) -> Result<opentelemetry_proto::tonic::metrics::v1::MetricsData, StoreError> {
        match self.metrics.lock().as_ref() {
            Some(head) => head.query(query),
            None => MetricsHead::new().query(query),
        }
    }

    fn find_trace_ids(&self, query: &SpanQuery) -> Result<Vec<Vec<u8>>, StoreError> {
        Ok(self.find_trace_hits(query)?.into_iter().map(|(id, _)| id).collect())
    }

    fn find_trace_hits(&self, query: &SpanQuery) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let mut q = query.clone();
        q.limit = usize::MAX;
        let mut seen = std::collections::HashSet::new();
        Ok(self
            .find_spans(&q)?
            .into_iter()
            .filter(|s| seen.insert(s.span.trace_id.clone()))
            .map(|s| (s.span.trace_id, s.span.start_time_unix_nano))
            .take(query.limit)
            .collect())
    }

    fn operations(&self, time: TimeRange) -> Result<Vec<Operation>, StoreError> {
        // Keyed by the index term, so the order is the disk store's.
        let set: std::collections::BTreeMap<String, Operation> = self
            .spans
            .read()
            .iter()
            .filter(|s| time.contains(s.span.start_time_unix_nano))
            .map(|s| {
                let service = attrs::service_name(Some(&s.resource));
                let op = Operation { service: service.to_string(), name: s.span.name.clone(), kind: s.span.kind };
                (crate::spans::op_term(service, s.span.kind, &s.span.name), op)
            })
            .collect();
        Ok(set.into_values().collect())
    }

    fn log_field_values(&self, field: LogField, time: TimeRange) -> Result<Vec<String>, StoreError> {
        let set: std::collections::BTreeSet<String> = self
            .logs
            .read()
            .iter()
            .filter(|l| time.contains(log_time(&l.record)))
            .map(|l| match field {
                LogField::Service => attrs::service_name(Some(&l.resource)).to_string(),
                LogField::SeverityText => l.record.severity_text.clone(),
            })
            .collect();
        Ok(set.into_iter().collect())
    }

    fn attribute_keys(&self, signal: Signal, scope: AttrScope, time: TimeRange) -> Result<Vec<String>, StoreError> {
        let mut set = std::collections::BTreeSet::new();
        self.each_attrs(signal, scope, time, &mut |a| {
            attrs::for_each_term(a, &mut |e, k| {
                if e == attrs::Emit::Key {
                    set.insert(k.to_string());
                }
            })
        })?;
        Ok(set.into_iter().collect())
    }

    fn attribute_values(
        &self,
        signal: Signal,
        scope: AttrScope,
        key: &str,
        time: TimeRange,
        limit: usize,
    ) -> Result<Vec<(AttrValue, u64)>, StoreError> {
        let prefix = format!("{key}\0");
        let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
        self.each_attrs(signal, scope, time, &mut |a| {
            let mut terms = std::collections::BTreeSet::new();
            attrs::for_each_term(a, &mut |e, t| {
                if e == attrs::Emit::Term && t.starts_with(&prefix) {
                    terms.insert(t[prefix.len()..].to_string());
                }
            });
            for t in terms {
                *counts.entry(t).or_insert(0) += 1;
            }
        })?;
        let mut values: Vec<(AttrValue, u64)> =
            counts.into_iter().filter_map(|(t, n)| Some((attrs::parse_term_value(&t)?, n))).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.1));
        values.truncate(limit);
        Ok(values)
    }

    fn span_histogram(
        &self,
        predicate: &SpanPredicate,
        time: TimeRange,
        bucket_ns: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let spans = self.spans.read();
        bucket_counts(spans.iter(), time, bucket_ns, |s| s.span.start_time_unix_nano, |s| span_matches(predicate, s))
    }

    fn log_histogram(
        &self,
        predicate: &LogPredicate,
        time: TimeRange,
        bucket_ns: u64,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let logs = self.logs.read();
        bucket_counts(logs.iter(), time, bucket_ns, |l| log_time(&l.record), |l| log_matches(predicate, l))
    }

    fn stats(&self) -> StoreStats {
        StoreStats { pending_items: Signal::ALL.iter().map(|s| (*s, 0)).collect(), ..StoreStats::default() }
    }
}

/// Items per bucket of `bucket_ns` of their time, for the items in `time` that match: the
/// reference the indexes' histograms are tested against.
fn bucket_counts<T>(
    items: impl Iterator<Item = T>,
    time: TimeRange,
    bucket_ns: u64,
    time_of: impl Fn(&T) -> u64,
    matches: impl Fn(&T) -> Result<bool, StoreError>,
) -> Result<Vec<(u64, u64)>, StoreError> {
    check_bucket(bucket_ns)?;
    let mut counts: std::collections::BTreeMap<u64, u64> = Default::default();
    for item in items {
        let t = time_of(&item);
        if time.contains(t) && matches(&item)? {
            *counts.entry(t / bucket_ns * bucket_ns).or_insert(0) += 1;
        }
    }
    Ok(counts.into_iter().collect())
}

impl MemStore {
    fn each_attrs(
        &self,
        signal: Signal,
        scope: AttrScope,
        time: TimeRange,
        f: &mut dyn FnMut(&[opentelemetry_proto::tonic::common::v1::KeyValue]),
    ) -> Result<(), StoreError> {
        match signal {
            Signal::Traces => {
                for s in self.spans.read().iter().filter(|s| time.contains(s.span.start_time_unix_nano)) {
                    f(if scope == AttrScope::Item { &s.span.attributes } else { &s.resource.attributes });
                }
            }
            Signal::Logs => {
                for l in self.logs.read().iter().filter(|l| time.contains(log_time(&l.record))) {
                    f(if scope == AttrScope::Item { &l.record.attributes } else { &l.resource.attributes });
                }
            }
            Signal::Metrics => {
                return Err(StoreError::InvalidQuery("metric attributes are labels: use find_metrics".into()));
            }
        }
        Ok(())
    }
}

/// The time a log record is searched by: its timestamp, or the observed time when that is 0.
pub fn log_time(r: &opentelemetry_proto::tonic::logs::v1::LogRecord) -> u64 {
    if r.time_unix_nano != 0 { r.time_unix_nano } else { r.observed_time_unix_nano }
}

fn span_matches(p: &SpanPredicate, s: &SpanRecord) -> Result<bool, StoreError> {
    let span = &s.span;
    Ok(match p {
        SpanPredicate::All => true,
        SpanPredicate::TraceId(id) => &span.trace_id == id,
        SpanPredicate::SpanId(id) => &span.span_id == id,
        SpanPredicate::ParentSpanId(id) => &span.parent_span_id == id,
        SpanPredicate::Service(name) => attrs::service_name(Some(&s.resource)) == name,
        SpanPredicate::Name(name) => &span.name == name,
        SpanPredicate::Kind(k) => span.kind == *k,
        SpanPredicate::StatusCode(c) => span.status.as_ref().map(|s| s.code).unwrap_or(0) == *c,
        SpanPredicate::Duration { min, max } => {
            let d = span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano);
            d >= *min && d <= *max
        }
        SpanPredicate::Attribute { scope, key, value } => match scope {
            AttrScope::Item => attrs::attrs_match(&span.attributes, key, value),
            AttrScope::Resource => attrs::attrs_match(&s.resource.attributes, key, value),
        },
        SpanPredicate::AttributeExists { scope, key } => match scope {
            AttrScope::Item => attrs::attrs_have_key(&span.attributes, key),
            AttrScope::Resource => attrs::attrs_have_key(&s.resource.attributes, key),
        },
        SpanPredicate::AttributeRegex { scope, key, regex } => {
            let re = attrs::anchored_regex(regex)?;
            match scope {
                AttrScope::Item => attrs::attrs_match_regex(&span.attributes, key, &re),
                AttrScope::Resource => attrs::attrs_match_regex(&s.resource.attributes, key, &re),
            }
        }
        SpanPredicate::And(ps) => {
            for p in ps {
                if !span_matches(p, s)? {
                    return Ok(false);
                }
            }
            true
        }
        SpanPredicate::Or(ps) => {
            for p in ps {
                if span_matches(p, s)? {
                    return Ok(true);
                }
            }
            false
        }
        SpanPredicate::Not(p) => !span_matches(p, s)?,
    })
}

fn log_matches(p: &LogPredicate, l: &LogEntry) -> Result<bool, StoreError> {
    let r = &l.record;
    Ok(match p {
        LogPredicate::All => true,
        LogPredicate::Text(q) => text_matches(q, r)?,
        LogPredicate::Service(name) => attrs::service_name(Some(&l.resource)) == name,
        LogPredicate::MinSeverity(n) => r.severity_number >= *n,
        LogPredicate::SeverityText(t) => &r.severity_text == t,
        LogPredicate::ObservedTime(range) => range.contains(r.observed_time_unix_nano),
        LogPredicate::TraceId(id) => &r.trace_id == id,
        LogPredicate::SpanId(id) => &r.span_id == id,
        LogPredicate::Attribute { scope, key, value } => match scope {
            AttrScope::Item => attrs::attrs_match(&r.attributes, key, value),
            AttrScope::Resource => attrs::attrs_match(&l.resource.attributes, key, value),
        },
        LogPredicate::AttributeExists { scope, key } => match scope {
            AttrScope::Item => attrs::attrs_have_key(&r.attributes, key),
            AttrScope::Resource => attrs::attrs_have_key(&l.resource.attributes, key),
        },
        LogPredicate::And(ps) => {
            for p in ps {
                if !log_matches(p, l)? {
                    return Ok(false);
                }
            }
            true
        }
        LogPredicate::Or(ps) => {
            for p in ps {
                if log_matches(p, l)? {
                    return Ok(true);
                }
            }
            false
        }
        LogPredicate::Not(p) => !log_matches(p, l)?,
    })
}

/// The reference store understands only the plain-words subset of the full-text syntax: every
/// word must occur in the body (case-insensitive).
fn text_matches(q: &str, r: &opentelemetry_proto::tonic::logs::v1::LogRecord) -> Result<bool, StoreError> {
    if q.chars().any(|c| "\"():^~*+-[]{}!".contains(c))
        || q.split_whitespace().any(|w| w == "AND" || w == "OR" || w == "NOT")
    {
        return Err(StoreError::InvalidQuery(format!("the in-memory store supports plain words only: {q:?}")));
    }
    let mut body = String::new();
    if let Some(b) = &r.body {
        attrs::value_text(b, &mut body);
    }
    let tokens: Vec<String> =
        body.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).map(|t| t.to_lowercase()).collect();
    Ok(q.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .all(|w| tokens.iter().any(|t| *t == w.to_lowercase())))
}

#[cfg(test)]
mod tests {
    #[test]
    fn passes_the_store_contract() {
        crate::testsuite::run_all(&super::MemStore::new);
    }
}
