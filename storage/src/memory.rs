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
        let mut out: Vec<&SpanRecord> = spans
            .iter()
            .filter(|s| query.time.contains(s.span.start_time_unix_nano) && span_matches(&query.predicate, s))
            .collect();
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

    fn stats(&self) -> StoreStats {
        StoreStats { pending_items: Signal::ALL.iter().map(|s| (*s, 0)).collect(), ..StoreStats::default() }
    }
}

/// The time a log record is searched by: its timestamp, or the observed time when that is 0.
pub(crate) fn log_time(r: &opentelemetry_proto::tonic::logs::v1::LogRecord) -> u64 {
    if r.time_unix_nano != 0 { r.time_unix_nano } else { r.observed_time_unix_nano }
}

fn span_matches(p: &SpanPredicate, s: &SpanRecord) -> bool {
    let span = &s.span;
    match p {
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
        SpanPredicate::And(ps) => ps.iter().all(|p| span_matches(p, s)),
        SpanPredicate::Or(ps) => ps.iter().any(|p| span_matches(p, s)),
        SpanPredicate::Not(p) => !span_matches(p, s),
    }
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
