//! Span metrics (RED): calls and a duration histogram per (service, span name, span kind,
//! status code), as the OpenTelemetry Collector's `spanmetrics` connector with its defaults.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{Histogram, Metric, ResourceMetrics, ScopeMetrics, Sum, metric};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

use super::facts::SpanFacts;
use super::series::{CUMULATIVE, Hist, counter_point, overflow_attributes, string_kv};

/// Scope name of the span metrics.
pub(crate) const SCOPE: &str = "obsbox.spanmetrics";
/// Calls metric name.
pub(crate) const CALLS: &str = "traces.span.metrics.calls";
/// Duration histogram name.
pub(crate) const DURATION: &str = "traces.span.metrics.duration";
/// The connector's default bounds, in milliseconds.
pub(crate) const DURATION_BOUNDS_MS: [f64; 16] =
    [2.0, 4.0, 6.0, 8.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1000.0, 1400.0, 2000.0, 5000.0, 10000.0, 15000.0];

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    service: Arc<str>,
    name: String,
    kind: SpanKind,
    status: StatusCode,
}

#[derive(Debug)]
struct Series {
    start_ns: u64,
    calls: u64,
    duration: Hist,
}

impl Series {
    fn new(start_ns: u64) -> Self {
        Series { start_ns, calls: 0, duration: Hist::new(&DURATION_BOUNDS_MS) }
    }

    fn record(&mut self, f: &SpanFacts) {
        self.calls += 1;
        let ms = f.duration_ns as f64 / 1e6;
        self.duration.observe(&DURATION_BOUNDS_MS, ms, Some((f.trace_id, f.span_id, f.end_ns)));
    }
}

/// The cumulative span metrics of this process, with at most `max_series` series (more go to
/// one overflow series).
#[derive(Debug)]
pub(crate) struct SpanMetrics {
    series: HashMap<Key, Series>,
    overflow: Option<Series>,
    max_series: usize,
}

impl SpanMetrics {
    pub(crate) fn new(max_series: usize) -> Self {
        SpanMetrics { series: HashMap::new(), overflow: None, max_series }
    }

    /// Records one span seen at `now_ns`; returns `false` when it went to the overflow series.
    pub(crate) fn record(&mut self, f: &SpanFacts, now_ns: u64) -> bool {
        let key = Key { service: f.service.clone(), name: f.name.clone(), kind: f.kind, status: f.status };
        let full = self.series.len() >= self.max_series;
        match self.series.get_mut(&key) {
            Some(s) => s.record(f),
            None if full => {
                self.overflow.get_or_insert_with(|| Series::new(now_ns)).record(f);
                return false;
            }
            None => self.series.entry(key).or_insert_with(|| Series::new(now_ns)).record(f),
        }
        true
    }

    /// Number of series (the overflow series included).
    pub(crate) fn len(&self) -> usize {
        self.series.len() + usize::from(self.overflow.is_some())
    }

    /// One point per series at `now_ns`, one `ResourceMetrics` per service (sorted, so output is
    /// deterministic), the overflow series under a resource without attributes.
    pub(crate) fn emit(&mut self, now_ns: u64) -> Vec<ResourceMetrics> {
        let mut by_service: HashMap<Arc<str>, Vec<(&Key, &mut Series)>> = HashMap::new();
        for (k, s) in &mut self.series {
            by_service.entry(k.service.clone()).or_default().push((k, s));
        }
        let mut services: Vec<_> = by_service.into_iter().collect();
        services.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::with_capacity(services.len() + 1);
        for (service, mut series) in services {
            series.sort_by(|a, b| {
                (&a.0.name, a.0.kind as i32, a.0.status as i32).cmp(&(&b.0.name, b.0.kind as i32, b.0.status as i32))
            });
            let points = series.into_iter().map(|(k, s)| (attributes(k), s));
            out.push(resource_metrics(vec![string_kv("service.name", &service)], points, now_ns));
        }
        if let Some(s) = &mut self.overflow {
            out.push(resource_metrics(Vec::new(), std::iter::once((overflow_attributes(), s)), now_ns));
        }
        out
    }
}

fn attributes(k: &Key) -> Vec<KeyValue> {
    vec![
        string_kv("service.name", &k.service),
        string_kv("span.name", &k.name),
        string_kv("span.kind", k.kind.as_str_name()),
        string_kv("status.code", k.status.as_str_name()),
    ]
}

fn resource_metrics<'a>(
    resource: Vec<KeyValue>,
    series: impl Iterator<Item = (Vec<KeyValue>, &'a mut Series)>,
    now_ns: u64,
) -> ResourceMetrics {
    let (mut calls, mut durations) = (Vec::new(), Vec::new());
    for (attrs, s) in series {
        calls.push(counter_point(attrs.clone(), s.calls, s.start_ns, now_ns));
        durations.push(s.duration.point(&DURATION_BOUNDS_MS, attrs, s.start_ns, now_ns));
    }
    ResourceMetrics {
        resource: Some(Resource { attributes: resource, dropped_attributes_count: 0, entity_refs: Vec::new() }),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(InstrumentationScope { name: SCOPE.to_owned(), ..Default::default() }),
            metrics: vec![
                Metric {
                    name: CALLS.to_owned(),
                    description: "Number of spans, by service, span name, kind and status.".to_owned(),
                    unit: "{call}".to_owned(),
                    metadata: Vec::new(),
                    data: Some(metric::Data::Sum(Sum {
                        data_points: calls,
                        aggregation_temporality: CUMULATIVE,
                        is_monotonic: true,
                    })),
                },
                Metric {
                    name: DURATION.to_owned(),
                    description: "Span durations, by service, span name, kind and status.".to_owned(),
                    unit: "ms".to_owned(),
                    metadata: Vec::new(),
                    data: Some(metric::Data::Histogram(Histogram {
                        data_points: durations,
                        aggregation_temporality: CUMULATIVE,
                    })),
                },
            ],
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}
