//! Per-item validation: invalid items are removed from the batch and counted by reason, and
//! resource/scope groups left empty are removed.

use obsbox_storage::{Batch, Signal};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::Limits;
use crate::telemetry::RejectReason;

/// Deeper nesting of array / key-value-list attribute values than this rejects the item.
/// (prost and serde_json stop at about 100 and 128 levels anyway.)
const MAX_VALUE_DEPTH: usize = 64;

/// Why one item was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    SpanTraceIdLength,
    SpanTraceIdZero,
    SpanIdLength,
    SpanIdZero,
    ParentSpanIdLength,
    LogTraceIdLength,
    LogSpanIdLength,
    TooManyAttributes,
    ValueTooLong,
    ValueTooDeep,
    ResourceOverLimits,
    ScopeOverLimits,
}

impl Problem {
    const ALL: [Problem; 12] = [
        Problem::SpanTraceIdLength,
        Problem::SpanTraceIdZero,
        Problem::SpanIdLength,
        Problem::SpanIdZero,
        Problem::ParentSpanIdLength,
        Problem::LogTraceIdLength,
        Problem::LogSpanIdLength,
        Problem::TooManyAttributes,
        Problem::ValueTooLong,
        Problem::ValueTooDeep,
        Problem::ResourceOverLimits,
        Problem::ScopeOverLimits,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn reason(self) -> RejectReason {
        match self {
            Problem::SpanTraceIdLength
            | Problem::SpanTraceIdZero
            | Problem::SpanIdLength
            | Problem::SpanIdZero
            | Problem::ParentSpanIdLength
            | Problem::LogTraceIdLength
            | Problem::LogSpanIdLength => RejectReason::Invalid,
            Problem::TooManyAttributes
            | Problem::ValueTooLong
            | Problem::ValueTooDeep
            | Problem::ResourceOverLimits
            | Problem::ScopeOverLimits => RejectReason::Limit,
        }
    }

    fn message(self, limits: &Limits) -> String {
        match self {
            Problem::SpanTraceIdLength => "trace_id must be 16 bytes".into(),
            Problem::SpanTraceIdZero => "trace_id must not be all zero".into(),
            Problem::SpanIdLength => "span_id must be 8 bytes".into(),
            Problem::SpanIdZero => "span_id must not be all zero".into(),
            Problem::ParentSpanIdLength => "parent_span_id must be empty or 8 bytes".into(),
            Problem::LogTraceIdLength => "trace_id must be empty or 16 bytes".into(),
            Problem::LogSpanIdLength => "span_id must be empty or 8 bytes".into(),
            Problem::TooManyAttributes => {
                format!("more than {} attributes", limits.max_attributes_per_item)
            }
            Problem::ValueTooLong => {
                format!("attribute key or value longer than {} bytes", limits.max_attribute_value_bytes)
            }
            Problem::ValueTooDeep => {
                format!("attribute value nested more than {MAX_VALUE_DEPTH} levels deep")
            }
            Problem::ResourceOverLimits => "resource attributes exceed the attribute limits".into(),
            Problem::ScopeOverLimits => "scope attributes exceed the attribute limits".into(),
        }
    }
}

/// Items rejected by validation, counted by problem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rejections {
    counts: [usize; Problem::ALL.len()],
}

impl Rejections {
    fn add(&mut self, problem: Problem) {
        self.counts[problem.index()] += 1;
    }

    /// Number of rejected items.
    pub(crate) fn total(&self) -> usize {
        self.counts.iter().sum()
    }

    /// Rejected item counts per metric reason label.
    pub(crate) fn by_reason(&self) -> impl Iterator<Item = (RejectReason, usize)> + '_ {
        Problem::ALL.iter().map(|p| (p.reason(), self.counts[p.index()])).filter(|(_, n)| *n > 0)
    }

    /// The `error_message` of a partial success: "2 spans rejected: trace_id must be 16 bytes".
    pub(crate) fn message(&self, signal: Signal, limits: &Limits) -> String {
        let total = self.total();
        let mut parts = Problem::ALL.iter().filter(|p| self.counts[p.index()] > 0).peekable();
        let mut out = format!("{total} {} rejected: ", item_noun(signal, total));
        let single = Problem::ALL.iter().filter(|p| self.counts[p.index()] > 0).count() == 1;
        while let Some(p) = parts.next() {
            out.push_str(&p.message(limits));
            if !single {
                out.push_str(&format!(" ({})", self.counts[p.index()]));
            }
            if parts.peek().is_some() {
                out.push_str("; ");
            }
        }
        out
    }
}

/// "span"/"spans", "log record"/"log records", "data point"/"data points".
pub(crate) fn item_noun(signal: Signal, n: usize) -> &'static str {
    match (signal, n == 1) {
        (Signal::Traces, true) => "span",
        (Signal::Traces, false) => "spans",
        (Signal::Logs, true) => "log record",
        (Signal::Logs, false) => "log records",
        (Signal::Metrics, true) => "data point",
        (Signal::Metrics, false) => "data points",
    }
}

/// Removes invalid items (and groups left empty) from the batch and counts them.
pub(crate) fn validate(batch: &mut Batch, limits: &Limits) -> Rejections {
    let mut rejections = Rejections::default();
    match batch {
        Batch::Traces(r) => traces(r, limits, &mut rejections),
        Batch::Logs(r) => logs(r, limits, &mut rejections),
        Batch::Metrics(r) => metrics(r, limits, &mut rejections),
    }
    rejections
}

fn traces(req: &mut ExportTraceServiceRequest, limits: &Limits, rej: &mut Rejections) {
    req.resource_spans.retain_mut(|rs| {
        let resource_problem = resource_problem(rs.resource.as_ref(), limits);
        rs.scope_spans.retain_mut(|ss| {
            let group_problem = resource_problem.or_else(|| scope_problem(ss.scope.as_ref(), limits));
            ss.spans.retain(|span| keep(group_problem.or_else(|| span_problem(span, limits)), rej));
            !ss.spans.is_empty()
        });
        !rs.scope_spans.is_empty()
    });
}

fn logs(req: &mut ExportLogsServiceRequest, limits: &Limits, rej: &mut Rejections) {
    req.resource_logs.retain_mut(|rl| {
        let resource_problem = resource_problem(rl.resource.as_ref(), limits);
        rl.scope_logs.retain_mut(|sl| {
            let group_problem = resource_problem.or_else(|| scope_problem(sl.scope.as_ref(), limits));
            sl.log_records.retain(|log| keep(group_problem.or_else(|| log_problem(log, limits)), rej));
            !sl.log_records.is_empty()
        });
        !rl.scope_logs.is_empty()
    });
}

fn metrics(req: &mut ExportMetricsServiceRequest, limits: &Limits, rej: &mut Rejections) {
    req.resource_metrics.retain_mut(|rm| {
        let resource_problem = resource_problem(rm.resource.as_ref(), limits);
        rm.scope_metrics.retain_mut(|sm| {
            let group_problem = resource_problem.or_else(|| scope_problem(sm.scope.as_ref(), limits));
            sm.metrics.retain_mut(|metric| {
                let mut check =
                    |attrs: &[KeyValue]| keep(group_problem.or_else(|| attributes_problem(attrs, limits)), rej);
                match &mut metric.data {
                    Some(Data::Gauge(g)) => g.data_points.retain(|p| check(&p.attributes)),
                    Some(Data::Sum(s)) => s.data_points.retain(|p| check(&p.attributes)),
                    Some(Data::Histogram(h)) => h.data_points.retain(|p| check(&p.attributes)),
                    Some(Data::ExponentialHistogram(h)) => h.data_points.retain(|p| check(&p.attributes)),
                    Some(Data::Summary(s)) => s.data_points.retain(|p| check(&p.attributes)),
                    None => {}
                }
                obsbox_storage::metric_point_count(metric) > 0
            });
            !sm.metrics.is_empty()
        });
        !rm.scope_metrics.is_empty()
    });
}

/// Resource groups, scope groups and (for metrics) metrics in `batch`. With no item rejected,
/// [`validate`] changed the batch only if it dropped an empty one of these, which shows here.
pub(crate) fn containers(batch: &Batch) -> usize {
    match batch {
        Batch::Traces(r) => {
            r.resource_spans.len() + r.resource_spans.iter().map(|rs| rs.scope_spans.len()).sum::<usize>()
        }
        Batch::Logs(r) => r.resource_logs.len() + r.resource_logs.iter().map(|rl| rl.scope_logs.len()).sum::<usize>(),
        Batch::Metrics(r) => {
            let scopes = r.resource_metrics.iter().flat_map(|rm| &rm.scope_metrics);
            r.resource_metrics.len() + scopes.map(|sm| 1 + sm.metrics.len()).sum::<usize>()
        }
    }
}

/// Counts the problem, if any; returns whether to keep the item.
fn keep(problem: Option<Problem>, rej: &mut Rejections) -> bool {
    match problem {
        Some(p) => {
            rej.add(p);
            false
        }
        None => true,
    }
}

fn resource_problem(resource: Option<&Resource>, limits: &Limits) -> Option<Problem> {
    let resource = resource?;
    attributes_problem(&resource.attributes, limits).map(|_| Problem::ResourceOverLimits)
}

fn scope_problem(scope: Option<&InstrumentationScope>, limits: &Limits) -> Option<Problem> {
    let scope = scope?;
    attributes_problem(&scope.attributes, limits).map(|_| Problem::ScopeOverLimits)
}

fn span_problem(span: &Span, limits: &Limits) -> Option<Problem> {
    if span.trace_id.len() != 16 {
        return Some(Problem::SpanTraceIdLength);
    }
    if all_zero(&span.trace_id) {
        return Some(Problem::SpanTraceIdZero);
    }
    if span.span_id.len() != 8 {
        return Some(Problem::SpanIdLength);
    }
    if all_zero(&span.span_id) {
        return Some(Problem::SpanIdZero);
    }
    if !(span.parent_span_id.is_empty() || span.parent_span_id.len() == 8) {
        return Some(Problem::ParentSpanIdLength);
    }
    attributes_problem(&span.attributes, limits)
        .or_else(|| span.events.iter().find_map(|e| values_problem(&e.attributes, limits)))
        .or_else(|| span.links.iter().find_map(|l| values_problem(&l.attributes, limits)))
}

fn log_problem(log: &LogRecord, limits: &Limits) -> Option<Problem> {
    if !(log.trace_id.is_empty() || log.trace_id.len() == 16) {
        return Some(Problem::LogTraceIdLength);
    }
    if !(log.span_id.is_empty() || log.span_id.len() == 8) {
        return Some(Problem::LogSpanIdLength);
    }
    attributes_problem(&log.attributes, limits)
}

fn all_zero(id: &[u8]) -> bool {
    id.iter().all(|b| *b == 0)
}

/// An item's own attributes: their number and the size of every key and value.
fn attributes_problem(attrs: &[KeyValue], limits: &Limits) -> Option<Problem> {
    if attrs.len() > limits.max_attributes_per_item {
        return Some(Problem::TooManyAttributes);
    }
    values_problem(attrs, limits)
}

/// The size of every key and value (nested ones too), not their number.
fn values_problem(attrs: &[KeyValue], limits: &Limits) -> Option<Problem> {
    attrs.iter().find_map(|kv| key_value_problem(kv, limits.max_attribute_value_bytes, 0))
}

fn key_value_problem(kv: &KeyValue, max: usize, depth: usize) -> Option<Problem> {
    if kv.key.len() > max {
        return Some(Problem::ValueTooLong);
    }
    kv.value.as_ref().and_then(|v| value_problem(v, max, depth))
}

fn value_problem(value: &AnyValue, max: usize, depth: usize) -> Option<Problem> {
    if depth > MAX_VALUE_DEPTH {
        return Some(Problem::ValueTooDeep);
    }
    match value.value.as_ref()? {
        Value::StringValue(s) if s.len() > max => Some(Problem::ValueTooLong),
        Value::BytesValue(b) if b.len() > max => Some(Problem::ValueTooLong),
        Value::ArrayValue(a) => a.values.iter().find_map(|v| value_problem(v, max, depth + 1)),
        Value::KvlistValue(l) => l.values.iter().find_map(|kv| key_value_problem(kv, max, depth + 1)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::metrics::v1::{Gauge, NumberDataPoint, ResourceMetrics, ScopeMetrics};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    use super::*;

    fn limits() -> Limits {
        Limits { max_attributes_per_item: 2, max_attribute_value_bytes: 8, ..Limits::default() }
    }

    fn span(trace_id: Vec<u8>, span_id: Vec<u8>) -> Span {
        Span { trace_id, span_id, name: "op".into(), ..Default::default() }
    }

    fn good_span() -> Span {
        span(vec![1; 16], vec![2; 8])
    }

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    fn traces_batch(groups: Vec<Vec<Span>>) -> Batch {
        Batch::Traces(ExportTraceServiceRequest {
            resource_spans: groups
                .into_iter()
                .map(|spans| ResourceSpans {
                    scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                    ..Default::default()
                })
                .collect(),
        })
    }

    #[test]
    fn invalid_span_ids_are_rejected_and_empty_groups_removed() {
        let mut zero_trace = good_span();
        zero_trace.trace_id = vec![0; 16];
        let mut bad_parent = good_span();
        bad_parent.parent_span_id = vec![1; 3];
        let mut batch = traces_batch(vec![
            vec![good_span(), span(vec![1; 15], vec![2; 8])],
            vec![span(vec![1; 16], vec![0; 8]), zero_trace, bad_parent, span(vec![1; 16], vec![])],
        ]);
        assert_eq!(batch.item_count(), 6);
        let rej = validate(&mut batch, &limits());
        assert_eq!(rej.total(), 5);
        assert_eq!(batch.item_count(), 1);
        let Batch::Traces(req) = &batch else { unreachable!() };
        assert_eq!(req.resource_spans.len(), 1, "the group left empty is removed");
        let msg = rej.message(Signal::Traces, &limits());
        assert!(msg.starts_with("5 spans rejected: "), "{msg}");
        assert!(msg.contains("trace_id must be 16 bytes (1)"), "{msg}");
        assert!(msg.contains("span_id must be 8 bytes (1)"), "{msg}");
        assert!(msg.contains("parent_span_id must be empty or 8 bytes (1)"), "{msg}");
    }

    #[test]
    fn single_reason_message_has_no_counts() {
        let mut batch = traces_batch(vec![vec![span(vec![1; 4], vec![2; 8]), span(vec![1; 4], vec![2; 8])]]);
        let rej = validate(&mut batch, &limits());
        assert_eq!(rej.message(Signal::Traces, &limits()), "2 spans rejected: trace_id must be 16 bytes");
        assert_eq!(rej.by_reason().collect::<Vec<_>>(), vec![(RejectReason::Invalid, 2)]);
    }

    #[test]
    fn attribute_limits_apply_to_own_attributes_and_nested_values() {
        let mut too_many = good_span();
        too_many.attributes = (0..3).map(|i| kv(&format!("k{i}"), Value::IntValue(i))).collect();
        let mut long_nested = good_span();
        long_nested.attributes = vec![kv(
            "k",
            Value::KvlistValue(KeyValueList {
                values: vec![kv(
                    "inner",
                    Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue { value: Some(Value::StringValue("123456789".into())) }],
                    }),
                )],
            }),
        )];
        let mut long_bytes = good_span();
        long_bytes.attributes = vec![kv("b", Value::BytesValue(vec![0; 9]))];
        let mut exactly_at_limits = good_span();
        exactly_at_limits.attributes =
            vec![kv("a", Value::StringValue("12345678".into())), kv("b", Value::BoolValue(true))];
        let mut event_attrs_do_not_count = good_span();
        event_attrs_do_not_count.events = vec![opentelemetry_proto::tonic::trace::v1::span::Event {
            attributes: (0..5).map(|i| kv(&format!("k{i}"), Value::IntValue(i))).collect(),
            ..Default::default()
        }];
        let mut batch =
            traces_batch(vec![vec![too_many, long_nested, long_bytes, exactly_at_limits, event_attrs_do_not_count]]);
        let rej = validate(&mut batch, &limits());
        assert_eq!(rej.total(), 3);
        assert_eq!(batch.item_count(), 2);
        assert_eq!(rej.by_reason().map(|(_, n)| n).sum::<usize>(), 3);
        assert!(rej.by_reason().all(|(r, _)| r == RejectReason::Limit));
    }

    #[test]
    fn deeply_nested_values_are_rejected() {
        let mut value = AnyValue { value: Some(Value::IntValue(1)) };
        for _ in 0..(MAX_VALUE_DEPTH + 2) {
            value = AnyValue { value: Some(Value::ArrayValue(ArrayValue { values: vec![value] })) };
        }
        let mut s = good_span();
        s.attributes = vec![KeyValue { key: "deep".into(), value: Some(value), ..Default::default() }];
        let mut batch = traces_batch(vec![vec![s]]);
        let rej = validate(&mut batch, &limits());
        assert_eq!(rej.total(), 1);
        assert!(rej.message(Signal::Traces, &limits()).contains("nested"));
    }

    #[test]
    fn log_ids_may_be_empty() {
        use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
        let records = vec![
            LogRecord::default(),
            LogRecord { trace_id: vec![1; 16], span_id: vec![1; 8], ..Default::default() },
            LogRecord { trace_id: vec![1; 15], ..Default::default() },
            LogRecord { span_id: vec![1; 7], ..Default::default() },
        ];
        let mut batch = Batch::Logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs { log_records: records, ..Default::default() }],
                ..Default::default()
            }],
        });
        let rej = validate(&mut batch, &limits());
        assert_eq!(rej.total(), 2);
        assert_eq!(batch.item_count(), 2);
        let msg = rej.message(Signal::Logs, &limits());
        assert!(msg.starts_with("2 log records rejected: trace_id must be empty or 16 bytes (1); "), "{msg}");
    }

    #[test]
    fn metric_points_are_validated_and_resource_limits_reject_the_group() {
        let point = |attrs: Vec<KeyValue>| NumberDataPoint { attributes: attrs, ..Default::default() };
        let gauge = |points| opentelemetry_proto::tonic::metrics::v1::Metric {
            name: "m".into(),
            data: Some(Data::Gauge(Gauge { data_points: points })),
            ..Default::default()
        };
        let long = || vec![kv("k", Value::StringValue("way too long".into()))];
        let mut batch = Batch::Metrics(ExportMetricsServiceRequest {
            resource_metrics: vec![
                ResourceMetrics {
                    scope_metrics: vec![ScopeMetrics {
                        metrics: vec![gauge(vec![point(vec![]), point(long())]), gauge(vec![point(long())])],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                ResourceMetrics {
                    resource: Some(Resource { attributes: long(), ..Default::default() }),
                    scope_metrics: vec![ScopeMetrics {
                        metrics: vec![gauge(vec![point(vec![]), point(vec![])])],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        });
        assert_eq!(batch.item_count(), 5);
        let rej = validate(&mut batch, &limits());
        assert_eq!(rej.total(), 4);
        assert_eq!(batch.item_count(), 1);
        let Batch::Metrics(req) = &batch else { unreachable!() };
        assert_eq!(req.resource_metrics.len(), 1);
        assert_eq!(req.resource_metrics[0].scope_metrics[0].metrics.len(), 1, "emptied metric removed");
        let msg = rej.message(Signal::Metrics, &limits());
        assert!(msg.contains("resource attributes exceed the attribute limits (2)"), "{msg}");
    }
}
