//! The query service: every API (native, Jaeger, Loki, UI) reads the store through it.
//!
//! It runs store reads on a bounded blocking pool, assembles traces and applies the query-time
//! fixes that do not belong in storage (as jaeger-query's adjusters do): clock skew (a child
//! outside its parent is shifted into it and flagged), duplicate span ids, missing parents.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use obsbox_storage::{
    AttrScope, AttrValue, LogEntry, LogField, LogPredicate, LogQuery, Operation, Reader, Signal, SpanPredicate,
    SpanQuery, SpanRecord, StoreError, TimeRange,
};
use tokio::sync::Semaphore;

use crate::limits::QueryLimits;

/// Store reads running at once; more wait their turn.
const READ_CONCURRENCY: usize = 8;
/// Most spans scanned to compute dependencies.
const DEPENDENCY_SPAN_LIMIT: usize = 200_000;
/// Most traces fetched when trace-level predicates filter candidates.
const TRACE_CANDIDATE_FACTOR: usize = 5;

/// A query failure, mapped to a status by each API.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The request is wrong; the message says how. (400)
    #[error("{0}")]
    BadRequest(String),
    /// Retry later. (503)
    #[error("{0}")]
    Unavailable(String),
    /// Something broke inside; details are logged, not returned. (500)
    #[error("internal error")]
    Internal(String),
}

impl QueryError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            QueryError::BadRequest(_) => StatusCode::BAD_REQUEST,
            QueryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for QueryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::InvalidQuery(m) => QueryError::BadRequest(m),
            e if e.is_retryable() => QueryError::Unavailable(e.to_string()),
            e => {
                tracing::error!(error = %e, "store read failed");
                QueryError::Internal(e.to_string())
            }
        }
    }
}

impl IntoResponse for QueryError {
    /// The native API's error body: `{"error": "..."}`.
    fn into_response(self) -> Response {
        (self.status(), axum::Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

/// A warning the adjusters attach to a span.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanWarning {
    /// The span concerned.
    pub span_id: Vec<u8>,
    /// What was wrong and what was done.
    pub message: String,
}

/// A whole trace, adjusted.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// The trace id (16 bytes).
    pub trace_id: Vec<u8>,
    /// Every span, ordered by start time.
    pub spans: Vec<SpanRecord>,
    /// What the adjusters changed or found.
    pub warnings: Vec<SpanWarning>,
}

/// One line of a trace search result.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TraceSummary {
    /// Hex trace id.
    pub trace_id: String,
    /// Service of the root span (or of the earliest span when the root is missing).
    pub root_service: String,
    /// Name of the root span.
    pub root_name: String,
    /// Earliest span start, Unix ns.
    pub start_ns: u64,
    /// Latest span end minus earliest start.
    pub duration_ns: u64,
    /// Number of spans.
    pub span_count: usize,
    /// Spans per service, most first.
    pub services: Vec<(String, usize)>,
    /// Spans with status error.
    pub error_count: usize,
}

/// A trace search: traces with at least one span matching `span`, then trace-level predicates.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSearch {
    /// What one span of the trace must match (service, operation, kind, attributes, duration, status).
    pub span: SpanPredicate,
    /// Start time of the matching span.
    pub time: TimeRange,
    /// Service of the root span.
    pub root_service: Option<String>,
    /// Name of the root span.
    pub root_operation: Option<String>,
    /// Minimum trace duration (ns).
    pub min_trace_duration_ns: Option<u64>,
    /// Maximum trace duration (ns).
    pub max_trace_duration_ns: Option<u64>,
    /// Most traces returned (at most `[query] max_traces`).
    pub limit: usize,
}

impl TraceSearch {
    fn has_trace_predicates(&self) -> bool {
        self.root_service.is_some()
            || self.root_operation.is_some()
            || self.min_trace_duration_ns.is_some()
            || self.max_trace_duration_ns.is_some()
    }

    fn trace_matches(&self, t: &Trace) -> bool {
        let root = t.root();
        let root_service = root.map(service_name).unwrap_or("");
        let root_name = root.map(|r| r.span.name.as_str()).unwrap_or("");
        let d = t.duration_ns();
        self.root_service.as_deref().is_none_or(|s| s == root_service)
            && self.root_operation.as_deref().is_none_or(|s| s == root_name)
            && self.min_trace_duration_ns.is_none_or(|m| d >= m)
            && self.max_trace_duration_ns.is_none_or(|m| d <= m)
    }
}

/// A caller -> callee edge of the service graph.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Dependency {
    /// Calling service.
    pub parent: String,
    /// Called service.
    pub child: String,
    /// Calls observed.
    pub call_count: u64,
    /// Calls whose callee span has status error.
    pub error_count: u64,
}

/// `service.name` of a span's resource, or `""`.
pub fn service_name(s: &SpanRecord) -> &str {
    obsbox_storage::service_name(Some(&s.resource))
}

fn is_error(s: &SpanRecord) -> bool {
    s.span.status.as_ref().is_some_and(|st| st.code == 2)
}

impl Trace {
    /// The root span: the earliest span without a parent in the trace.
    pub fn root(&self) -> Option<&SpanRecord> {
        let ids: HashSet<&[u8]> = self.spans.iter().map(|s| s.span.span_id.as_slice()).collect();
        self.spans
            .iter()
            .filter(|s| s.span.parent_span_id.is_empty() || !ids.contains(s.span.parent_span_id.as_slice()))
            .min_by_key(|s| (!s.span.parent_span_id.is_empty(), s.span.start_time_unix_nano))
    }

    /// Earliest span start.
    pub fn start_ns(&self) -> u64 {
        self.spans.iter().map(|s| s.span.start_time_unix_nano).min().unwrap_or(0)
    }

    /// Latest span end minus earliest span start.
    pub fn duration_ns(&self) -> u64 {
        let end = self.spans.iter().map(|s| s.span.end_time_unix_nano).max().unwrap_or(0);
        end.saturating_sub(self.start_ns())
    }

    /// The search-result line of this trace.
    pub fn summary(&self) -> TraceSummary {
        let root = self.root();
        let mut per_service: HashMap<&str, usize> = HashMap::new();
        for s in &self.spans {
            *per_service.entry(service_name(s)).or_insert(0) += 1;
        }
        let mut services: Vec<(String, usize)> = per_service.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        services.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        TraceSummary {
            trace_id: hex::encode(&self.trace_id),
            root_service: root.map(service_name).unwrap_or("").to_string(),
            root_name: root.map(|r| r.span.name.clone()).unwrap_or_default(),
            start_ns: self.start_ns(),
            duration_ns: self.duration_ns(),
            span_count: self.spans.len(),
            services,
            error_count: self.spans.iter().filter(|s| is_error(s)).count(),
        }
    }

    /// Builds a trace from stored spans and runs the adjusters.
    pub fn assemble(trace_id: Vec<u8>, spans: Vec<SpanRecord>) -> Trace {
        let mut t = Trace { trace_id, spans, warnings: Vec::new() };
        t.dedupe_span_ids();
        t.flag_missing_parents();
        t.adjust_clock_skew();
        t.spans.sort_by_key(|s| (s.span.start_time_unix_nano, s.span.span_id.clone()));
        t
    }

    /// Identical copies (a retried export) are dropped; different spans sharing an id get a new
    /// id derived from the old one (as jaeger's span-id deduper does), with a warning.
    fn dedupe_span_ids(&mut self) {
        let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut keep = Vec::with_capacity(self.spans.len());
        let mut taken: HashSet<Vec<u8>> = self.spans.iter().map(|s| s.span.span_id.clone()).collect();
        for mut s in std::mem::take(&mut self.spans) {
            match seen.get(&s.span.span_id) {
                None => {
                    seen.insert(s.span.span_id.clone(), keep.len());
                    keep.push(s);
                }
                Some(&i) if keep[i] == s => {}
                Some(_) => {
                    let old = s.span.span_id.clone();
                    let mut new = old.clone();
                    let mut n: u8 = 1;
                    while taken.contains(&new) {
                        if let Some(last) = new.last_mut() {
                            *last = last.wrapping_add(n);
                        }
                        n = n.wrapping_add(1);
                    }
                    taken.insert(new.clone());
                    self.warnings.push(SpanWarning {
                        span_id: new.clone(),
                        message: format!(
                            "duplicate span id {}; this span was given id {}",
                            hex::encode(&old),
                            hex::encode(&new)
                        ),
                    });
                    s.span.span_id = new;
                    keep.push(s);
                }
            }
        }
        self.spans = keep;
    }

    fn flag_missing_parents(&mut self) {
        let ids: HashSet<Vec<u8>> = self.spans.iter().map(|s| s.span.span_id.clone()).collect();
        for s in &self.spans {
            if !s.span.parent_span_id.is_empty() && !ids.contains(&s.span.parent_span_id) {
                self.warnings.push(SpanWarning {
                    span_id: s.span.span_id.clone(),
                    message: format!("parent span {} is not in the trace (yet)", hex::encode(&s.span.parent_span_id)),
                });
            }
        }
    }

    /// A child that starts before its parent or ends after it, across services (different
    /// clocks), is shifted by the smallest amount that puts it inside the parent; its own
    /// children move with it. Durations are never changed.
    fn adjust_clock_skew(&mut self) {
        let index: HashMap<Vec<u8>, usize> =
            self.spans.iter().enumerate().map(|(i, s)| (s.span.span_id.clone(), i)).collect();
        let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut roots = Vec::new();
        for (i, s) in self.spans.iter().enumerate() {
            match index.get(&s.span.parent_span_id) {
                Some(&p) if p != i => children.entry(p).or_default().push(i),
                _ => roots.push(i),
            }
        }
        // Depth-first from the roots, carrying the shift applied to each parent.
        let mut stack: Vec<(usize, i128)> = roots.into_iter().map(|r| (r, 0)).collect();
        let mut visited = vec![false; self.spans.len()];
        while let Some((i, inherited)) = stack.pop() {
            if std::mem::replace(&mut visited[i], true) {
                continue;
            }
            shift(&mut self.spans[i], inherited);
            let (p_start, p_end) = (self.spans[i].span.start_time_unix_nano, self.spans[i].span.end_time_unix_nano);
            let p_service = service_name(&self.spans[i]).to_string();
            let p_producer = self.spans[i].span.kind == 4;
            for &c in children.get(&i).map(|v| v.as_slice()).unwrap_or(&[]) {
                let mut delta = inherited;
                let child = &self.spans[c];
                let (start, end) = (
                    (child.span.start_time_unix_nano as i128 + inherited),
                    (child.span.end_time_unix_nano as i128 + inherited),
                );
                let (ps, pe) = (p_start as i128, p_end as i128);
                // A consumer may legitimately run after its producer has ended: only a start
                // before the parent's is skew there.
                let asynchronous = p_producer || child.span.kind == 5;
                let outside = start < ps || (!asynchronous && end > pe);
                if service_name(child) != p_service && outside {
                    // Too long to fit, or starting early: align the starts; else align the ends.
                    let extra = if end - start > pe - ps || start < ps { ps - start } else { pe - end };
                    delta += extra;
                    self.warnings.push(SpanWarning {
                        span_id: child.span.span_id.clone(),
                        message: format!("clock skew: span shifted by {extra} ns to fit inside its parent"),
                    });
                }
                stack.push((c, delta));
            }
        }
    }
}

fn shift(s: &mut SpanRecord, delta: i128) {
    if delta == 0 {
        return;
    }
    let mv = |t: u64| (t as i128 + delta).clamp(0, u64::MAX as i128) as u64;
    s.span.start_time_unix_nano = mv(s.span.start_time_unix_nano);
    s.span.end_time_unix_nano = mv(s.span.end_time_unix_nano);
    for e in &mut s.span.events {
        e.time_unix_nano = mv(e.time_unix_nano);
    }
}

/// The query service. Cheap to clone.
#[derive(Clone)]
pub struct QueryService {
    reader: Arc<dyn Reader>,
    permits: Arc<Semaphore>,
    limits: Arc<QueryLimits>,
}

impl QueryService {
    /// A service over `reader` with the default limits.
    pub fn new(reader: Arc<dyn Reader>) -> QueryService {
        Self::with_limits(reader, QueryLimits::default())
    }

    /// A service over `reader` applying `limits` to every query.
    pub fn with_limits(reader: Arc<dyn Reader>, limits: QueryLimits) -> QueryService {
        QueryService { reader, permits: Arc::new(Semaphore::new(READ_CONCURRENCY)), limits: Arc::new(limits) }
    }

    /// The limits every API applies.
    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// The underlying store.
    pub fn reader(&self) -> &Arc<dyn Reader> {
        &self.reader
    }

    /// Runs a store read on the blocking pool, at most [`READ_CONCURRENCY`] at once. The read
    /// holds its permit until it ends, even when the request that started it was abandoned (its
    /// time budget spent): runaway reads keep counting against the concurrency.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Reader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, QueryError> {
        let permit =
            self.permits.clone().acquire_owned().await.map_err(|_| QueryError::Unavailable("shutting down".into()))?;
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&*reader)
        })
        .await
        .map_err(|e| QueryError::Internal(format!("read task failed: {e}")))?
        .map_err(QueryError::from)
    }

    /// Services with spans in `time`, sorted.
    pub async fn services(&self, time: TimeRange) -> Result<Vec<String>, QueryError> {
        let ops = self.read(move |r| r.operations(time)).await?;
        let mut services: Vec<String> = ops.into_iter().map(|o| o.service).collect();
        services.dedup();
        Ok(services)
    }

    /// Operations, optionally of one service and one span kind, sorted.
    pub async fn operations(
        &self,
        service: Option<&str>,
        kind: Option<i32>,
        time: TimeRange,
    ) -> Result<Vec<Operation>, QueryError> {
        let ops = self.read(move |r| r.operations(time)).await?;
        Ok(ops
            .into_iter()
            .filter(|o| service.is_none_or(|s| o.service == s) && kind.is_none_or(|k| o.kind == k))
            .collect())
    }

    /// One trace, adjusted; `None` when no span of it is stored.
    pub async fn trace(&self, trace_id: &[u8]) -> Result<Option<Trace>, QueryError> {
        if trace_id.len() != 16 {
            return Err(QueryError::BadRequest("trace id must be 32 hex digits".into()));
        }
        let id = trace_id.to_vec();
        let spans = self.read(move |r| r.trace(&id)).await?;
        Ok((!spans.is_empty()).then(|| Trace::assemble(trace_id.to_vec(), spans)))
    }

    /// Traces with a span matching `search.span` in `search.time` and matching the trace-level
    /// predicates, newest first.
    pub async fn search_traces(&self, search: &TraceSearch) -> Result<Vec<Trace>, QueryError> {
        QueryLimits::check_limit("limit", search.limit, self.limits.max_traces, "max_traces")
            .map_err(QueryError::BadRequest)?;
        if search.time.start_ns >= search.time.end_ns {
            return Err(QueryError::BadRequest("end must be after start".into()));
        }
        self.limits.check_range(search.time).map_err(QueryError::BadRequest)?;
        let candidates =
            if search.has_trace_predicates() { search.limit * TRACE_CANDIDATE_FACTOR } else { search.limit };
        let query = SpanQuery { predicate: search.span.clone(), time: search.time, limit: candidates };
        let ids = self.read(move |r| r.find_trace_ids(&query)).await?;
        let fetched = self
            .read(move |r| {
                let traces = r.traces(&ids)?;
                Ok::<_, StoreError>(ids.into_iter().zip(traces).collect::<Vec<_>>())
            })
            .await?;
        Ok(fetched
            .into_iter()
            .filter(|(_, spans)| !spans.is_empty())
            .map(|(id, spans)| Trace::assemble(id, spans))
            .filter(|t| search.trace_matches(t))
            .take(search.limit)
            .collect())
    }

    /// Caller -> callee edges between services from the parent/child spans starting in `time`
    /// (messaging producer -> consumer hops included: a consumer span's parent or link).
    pub async fn dependencies(&self, time: TimeRange) -> Result<Vec<Dependency>, QueryError> {
        let query = SpanQuery { predicate: SpanPredicate::All, time, limit: DEPENDENCY_SPAN_LIMIT };
        let spans = self.read(move |r| r.find_spans(&query)).await?;
        let by_id: HashMap<(&[u8], &[u8]), &SpanRecord> =
            spans.iter().map(|s| ((s.span.trace_id.as_slice(), s.span.span_id.as_slice()), s)).collect();
        let mut edges: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for s in &spans {
            let mut parents: Vec<(&[u8], &[u8])> = Vec::new();
            if !s.span.parent_span_id.is_empty() {
                parents.push((s.span.trace_id.as_slice(), s.span.parent_span_id.as_slice()));
            }
            // A consumer linked to its producer (batch receive) is a hop too.
            if s.span.kind == 5 {
                parents.extend(s.span.links.iter().map(|l| (l.trace_id.as_slice(), l.span_id.as_slice())));
            }
            for key in parents {
                let Some(parent) = by_id.get(&key) else { continue };
                let (from, to) = (service_name(parent), service_name(s));
                if from != to {
                    let e = edges.entry((from.to_string(), to.to_string())).or_insert((0, 0));
                    e.0 += 1;
                    e.1 += is_error(s) as u64;
                }
            }
        }
        Ok(edges
            .into_iter()
            .map(|((parent, child), (call_count, error_count))| Dependency { parent, child, call_count, error_count })
            .collect())
    }

    /// Log records, newest first.
    pub async fn find_logs(&self, query: LogQuery) -> Result<Vec<LogEntry>, QueryError> {
        if query.time.start_ns >= query.time.end_ns {
            return Err(QueryError::BadRequest("end must be after start".into()));
        }
        self.read(move |r| r.find_logs(&query)).await
    }

    /// Matching log records per time bucket.
    pub async fn log_histogram(
        &self,
        predicate: LogPredicate,
        time: TimeRange,
        bucket_ns: u64,
    ) -> Result<Vec<(u64, u64)>, QueryError> {
        if bucket_ns == 0 || (time.end_ns.saturating_sub(time.start_ns)) / bucket_ns > 10_000 {
            return Err(QueryError::BadRequest("the histogram would have more than 10000 buckets".into()));
        }
        self.read(move |r| r.log_histogram(&predicate, time, bucket_ns)).await
    }

    /// Distinct values of a log field.
    pub async fn log_field_values(&self, field: LogField, time: TimeRange) -> Result<Vec<String>, QueryError> {
        self.read(move |r| r.log_field_values(field, time)).await
    }

    /// Attribute keys for autocomplete.
    pub async fn attribute_keys(
        &self,
        signal: Signal,
        scope: AttrScope,
        time: TimeRange,
    ) -> Result<Vec<String>, QueryError> {
        self.read(move |r| r.attribute_keys(signal, scope, time)).await
    }

    /// Most frequent values of an attribute.
    pub async fn attribute_values(
        &self,
        signal: Signal,
        scope: AttrScope,
        key: String,
        time: TimeRange,
        limit: usize,
    ) -> Result<Vec<(AttrValue, u64)>, QueryError> {
        self.read(move |r| r.attribute_values(signal, scope, &key, time, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{Span, Status};

    fn rec(service: &str, id: u8, parent: Option<u8>, start: u64, end: u64) -> SpanRecord {
        SpanRecord {
            resource: Arc::new(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue { value: Some(Value::StringValue(service.into())) }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            resource_schema_url: String::new(),
            scope: Arc::new(InstrumentationScope::default()),
            scope_schema_url: String::new(),
            span: Span {
                trace_id: vec![1; 16],
                span_id: vec![0, 0, 0, 0, 0, 0, 0, id],
                parent_span_id: parent.map(|p| vec![0, 0, 0, 0, 0, 0, 0, p]).unwrap_or_default(),
                name: format!("op{id}"),
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                status: Some(Status { code: if id == 3 { 2 } else { 0 }, message: String::new() }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn clock_skew_shifts_a_child_from_another_service_into_its_parent() {
        let t = Trace::assemble(
            vec![1; 16],
            vec![rec("a", 1, None, 1000, 2000), rec("b", 2, Some(1), 500, 700), rec("b", 3, Some(2), 550, 600)],
        );
        let child = t.spans.iter().find(|s| s.span.span_id[7] == 2).unwrap();
        assert_eq!((child.span.start_time_unix_nano, child.span.end_time_unix_nano), (1000, 1200));
        let grandchild = t.spans.iter().find(|s| s.span.span_id[7] == 3).unwrap();
        assert_eq!(grandchild.span.start_time_unix_nano, 1050, "children move with their parent");
        assert_eq!(t.warnings.len(), 1);
        assert!(t.warnings[0].message.contains("clock skew"));
    }

    #[test]
    fn a_consumer_may_outlive_its_producer() {
        let mut producer = rec("a", 1, None, 1000, 1100);
        producer.span.kind = 4;
        let mut consumer = rec("b", 2, Some(1), 1200, 5000);
        consumer.span.kind = 5;
        let t = Trace::assemble(vec![1; 16], vec![producer, consumer]);
        assert_eq!(t.spans[1].span.start_time_unix_nano, 1200);
        assert!(t.warnings.is_empty());
    }

    #[test]
    fn same_service_children_are_not_moved() {
        let t = Trace::assemble(vec![1; 16], vec![rec("a", 1, None, 1000, 2000), rec("a", 2, Some(1), 1500, 2500)]);
        assert_eq!(t.spans[1].span.end_time_unix_nano, 2500);
        assert!(t.warnings.is_empty());
    }

    #[test]
    fn duplicates_and_missing_parents() {
        let a = rec("a", 1, None, 1000, 2000);
        let mut other = rec("a", 1, None, 1100, 1200);
        other.span.name = "different".into();
        let orphan = rec("a", 5, Some(9), 1300, 1400);
        let t = Trace::assemble(vec![1; 16], vec![a.clone(), a.clone(), other, orphan]);
        assert_eq!(t.spans.len(), 3, "identical copy dropped");
        let ids: HashSet<_> = t.spans.iter().map(|s| s.span.span_id.clone()).collect();
        assert_eq!(ids.len(), 3, "clashing id replaced");
        assert!(t.warnings.iter().any(|w| w.message.contains("duplicate span id")));
        assert!(t.warnings.iter().any(|w| w.message.contains("not in the trace")));
    }

    #[test]
    fn summary() {
        let t = Trace::assemble(
            vec![1; 16],
            vec![rec("a", 1, None, 1000, 2000), rec("b", 2, Some(1), 1100, 1900), rec("b", 3, Some(2), 1200, 2100)],
        );
        let s = t.summary();
        assert_eq!(s.root_service, "a");
        assert_eq!(s.root_name, "op1");
        assert_eq!(s.start_ns, 1000);
        assert_eq!(s.duration_ns, 1100);
        assert_eq!(s.span_count, 3);
        assert_eq!(s.services, vec![("b".to_string(), 2), ("a".to_string(), 1)]);
        assert_eq!(s.error_count, 1);
    }
}
