//! Cumulative state shared by span metrics and the service graph: counters, explicit-bucket
//! histograms, and the OTLP points they are written as.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar, HistogramDataPoint, NumberDataPoint, exemplar, number_data_point,
};

/// Attribute marking the series that takes every new series beyond the cardinality limit, as the
/// OpenTelemetry Collector's connectors do.
pub(crate) const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";

pub(crate) const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;

/// A cumulative explicit-bucket histogram. `counts[i]` counts values in `(bounds[i-1], bounds[i]]`,
/// the last bucket everything above the last bound (OTLP's convention).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Hist {
    counts: Vec<u64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    /// The latest observation since the last emission with its span, as an exemplar.
    exemplar: Option<(f64, [u8; 16], [u8; 8], u64)>,
}

impl Hist {
    pub(crate) fn new(bounds: &[f64]) -> Self {
        Hist {
            counts: vec![0; bounds.len() + 1],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            exemplar: None,
        }
    }

    /// Records `v`; `span` (trace id, span id, time) becomes the exemplar of the next point.
    pub(crate) fn observe(&mut self, bounds: &[f64], v: f64, span: Option<([u8; 16], [u8; 8], u64)>) {
        self.counts[bounds.partition_point(|b| *b < v)] += 1;
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if let Some((trace_id, span_id, time)) = span {
            self.exemplar = Some((v, trace_id, span_id, time));
        }
    }

    /// The cumulative point; takes the exemplar (each is written once).
    pub(crate) fn point(
        &mut self,
        bounds: &[f64],
        attributes: Vec<KeyValue>,
        start_ns: u64,
        now_ns: u64,
    ) -> HistogramDataPoint {
        let exemplars = self
            .exemplar
            .take()
            .map(|(v, trace_id, span_id, time)| Exemplar {
                filtered_attributes: Vec::new(),
                time_unix_nano: time,
                span_id: span_id.to_vec(),
                trace_id: trace_id.to_vec(),
                value: Some(exemplar::Value::AsDouble(v)),
            })
            .into_iter()
            .collect();
        HistogramDataPoint {
            attributes,
            start_time_unix_nano: start_ns,
            time_unix_nano: now_ns,
            count: self.count,
            sum: Some(self.sum),
            bucket_counts: self.counts.clone(),
            explicit_bounds: bounds.to_vec(),
            exemplars,
            flags: 0,
            min: (self.count > 0).then_some(self.min),
            max: (self.count > 0).then_some(self.max),
        }
    }
}

/// A cumulative monotonic counter point.
pub(crate) fn counter_point(attributes: Vec<KeyValue>, value: u64, start_ns: u64, now_ns: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start_ns,
        time_unix_nano: now_ns,
        exemplars: Vec::new(),
        flags: 0,
        value: Some(number_data_point::Value::AsInt(i64::try_from(value).unwrap_or(i64::MAX))),
    }
}

pub(crate) fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_owned())) }),
        ..Default::default()
    }
}

/// The attributes of an overflow series.
pub(crate) fn overflow_attributes() -> Vec<KeyValue> {
    vec![KeyValue {
        key: OVERFLOW_ATTRIBUTE.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue("true".to_owned())) }),
        ..Default::default()
    }]
}
