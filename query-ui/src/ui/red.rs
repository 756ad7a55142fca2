//! Rates, error rates and latency quantiles from cumulative OTLP metrics (the derived span
//! metrics and service graph of `docs` / the collector), computed the way PromQL's `increase`
//! and `histogram_quantile` do.
//!
//! A series' samples are turned into *running totals* that only grow: each sample adds its
//! difference to the previous one, or, after a reset (a value that dropped or a new
//! `start_time_unix_nano`), its whole value, since the counter restarted from zero. The increase
//! over `(a, b]` is then `total(b) - total(a)`, where `total(t)` is the running total of the last
//! sample at or before `t`. The first sample counts in full when the series started inside the
//! fetched window (its counter began at zero there), otherwise it is the baseline.
//!
//! Histograms are handled as vectors `[count, bucket_0, ..., bucket_n]` with the same rules.

use std::collections::BTreeMap;

use obsbox_storage::any_value_text;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
use opentelemetry_proto::tonic::metrics::v1::{AggregationTemporality, MetricsData};

/// One sample of a cumulative series: a counter (one value) or a histogram
/// (`[count, bucket counts...]`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    /// `time_unix_nano`.
    pub t_ns: u64,
    /// `start_time_unix_nano`: when the counter last started from zero.
    pub start_ns: u64,
    /// The cumulative values.
    pub values: Vec<f64>,
}

/// A cumulative series read from the store.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Series {
    /// Metric name.
    pub name: String,
    /// Data point attributes, with resource attributes the point does not have.
    pub labels: BTreeMap<String, String>,
    /// Histogram bucket bounds (empty for counters).
    pub bounds: Vec<f64>,
    /// Samples, oldest first.
    pub samples: Vec<Sample>,
}

impl Series {
    /// The label `key`, `""` when absent.
    pub(crate) fn label(&self, key: &str) -> &str {
        self.labels.get(key).map(String::as_str).unwrap_or("")
    }
}

fn labels(resource: &[KeyValue], point: &[KeyValue]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for kv in resource.iter().chain(point) {
        out.insert(kv.key.clone(), kv.value.as_ref().map(any_value_text).unwrap_or_default());
    }
    out
}

/// The cumulative sums and histograms of `data` as series, grouped by name and labels
/// (points of one series may arrive spread over several messages). Delta and gauge metrics
/// are skipped: the contract writes cumulative ones only.
pub(crate) fn read_series(data: &MetricsData) -> Vec<Series> {
    let mut by_key: BTreeMap<(String, BTreeMap<String, String>), Series> = BTreeMap::new();
    let cumulative = AggregationTemporality::Cumulative as i32;
    for rm in &data.resource_metrics {
        let resource = rm.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or(&[]);
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let mut add = |attrs: &[KeyValue], bounds: Vec<f64>, sample: Sample| {
                    let labels = labels(resource, attrs);
                    let s = by_key.entry((m.name.clone(), labels.clone())).or_insert_with(|| Series {
                        name: m.name.clone(),
                        labels,
                        bounds: bounds.clone(),
                        samples: Vec::new(),
                    });
                    if s.bounds == bounds {
                        s.samples.push(sample);
                    }
                };
                match &m.data {
                    Some(Data::Sum(sum)) if sum.aggregation_temporality == cumulative => {
                        for p in &sum.data_points {
                            let v = match p.value {
                                Some(Value::AsDouble(d)) => d,
                                Some(Value::AsInt(i)) => i as f64,
                                None => continue,
                            };
                            let sample =
                                Sample { t_ns: p.time_unix_nano, start_ns: p.start_time_unix_nano, values: vec![v] };
                            add(&p.attributes, Vec::new(), sample);
                        }
                    }
                    Some(Data::Histogram(h)) if h.aggregation_temporality == cumulative => {
                        for p in &h.data_points {
                            if p.bucket_counts.len() != p.explicit_bounds.len() + 1 {
                                continue;
                            }
                            let mut values = Vec::with_capacity(p.bucket_counts.len() + 1);
                            values.push(p.count as f64);
                            values.extend(p.bucket_counts.iter().map(|&c| c as f64));
                            let sample = Sample { t_ns: p.time_unix_nano, start_ns: p.start_time_unix_nano, values };
                            add(&p.attributes, p.explicit_bounds.clone(), sample);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let mut out: Vec<Series> = by_key.into_values().collect();
    for s in &mut out {
        s.samples.sort_by_key(|p| p.t_ns);
        s.samples.dedup_by_key(|p| p.t_ns);
    }
    out
}

/// Reset-corrected running totals of one series.
#[derive(Clone, Debug)]
pub(crate) struct Running {
    times: Vec<u64>,
    totals: Vec<Vec<f64>>,
    width: usize,
}

impl Running {
    /// The running totals of `samples` (oldest first), fetched from `window_start_ns` on.
    pub(crate) fn new(samples: &[Sample], window_start_ns: u64) -> Running {
        let width = samples.first().map(|s| s.values.len()).unwrap_or(0);
        let mut times = Vec::with_capacity(samples.len());
        let mut totals: Vec<Vec<f64>> = Vec::with_capacity(samples.len());
        let mut prev: Option<&Sample> = None;
        for s in samples {
            if s.values.len() != width {
                continue;
            }
            let mut total = totals.last().cloned().unwrap_or_else(|| vec![0.0; width]);
            match prev {
                None => {
                    // A series that started inside the window counted from zero there.
                    if s.start_ns >= window_start_ns && s.start_ns > 0 && s.start_ns <= s.t_ns {
                        total.clone_from(&s.values);
                    }
                }
                Some(p) => {
                    let reset = s.start_ns != p.start_ns || s.values.iter().zip(&p.values).any(|(v, pv)| v < pv);
                    for (i, t) in total.iter_mut().enumerate() {
                        *t += if reset { s.values[i] } else { s.values[i] - p.values[i] };
                    }
                }
            }
            times.push(s.t_ns);
            totals.push(total);
            prev = Some(s);
        }
        Running { times, totals, width }
    }

    /// The running total at `t`: that of the last sample at or before `t` (zeros before any).
    fn at(&self, t_ns: u64) -> Option<&[f64]> {
        let i = self.times.partition_point(|&x| x <= t_ns);
        if i == 0 { None } else { Some(&self.totals[i - 1]) }
    }

    /// The increase over `(a, b]`, added into `out` (which grows to this series' width).
    pub(crate) fn add_increase(&self, a_ns: u64, b_ns: u64, out: &mut Vec<f64>) {
        if out.len() < self.width {
            out.resize(self.width, 0.0);
        }
        let Some(end) = self.at(b_ns) else { return };
        let start = self.at(a_ns);
        for (i, o) in out.iter_mut().enumerate().take(self.width) {
            *o += end[i] - start.map(|s| s[i]).unwrap_or(0.0);
        }
    }

    /// The increase over `(a, b]` of a counter.
    pub(crate) fn increase(&self, a_ns: u64, b_ns: u64) -> f64 {
        let mut out = Vec::new();
        self.add_increase(a_ns, b_ns, &mut out);
        out.first().copied().unwrap_or(0.0)
    }
}

/// The `q` quantile (0..=1) of a histogram given as bucket `bounds` and per-bucket `counts`
/// (one more than the bounds, the last for `+Inf`), interpolating linearly inside the bucket as
/// `histogram_quantile` does, with 0 as the lower edge of the first bucket. A rank falling in
/// the `+Inf` bucket gives the highest finite bound. `None` without observations.
pub(crate) fn quantile(q: f64, bounds: &[f64], counts: &[f64]) -> Option<f64> {
    let total: f64 = counts.iter().sum();
    if total <= 0.0 || counts.len() != bounds.len() + 1 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let mut cum = 0.0;
    for (i, &c) in counts.iter().enumerate() {
        let before = cum;
        cum += c;
        if cum >= rank && c > 0.0 {
            let Some(&upper) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lower = if i == 0 { 0.0_f64.min(upper) } else { bounds[i - 1] };
            return Some(lower + (upper - lower) * ((rank - before) / c));
        }
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: u64, start: u64, v: &[f64]) -> Sample {
        Sample { t_ns: t, start_ns: start, values: v.to_vec() }
    }

    #[test]
    fn increase_is_last_minus_first_without_resets() {
        let r = Running::new(&[s(10, 1, &[5.0]), s(20, 1, &[8.0]), s(30, 1, &[12.0])], 5);
        assert_eq!(r.increase(10, 30), 7.0);
        assert_eq!(r.increase(0, 30), 7.0, "the series started before the window: the first sample is the baseline");
        assert_eq!(r.increase(15, 25), 3.0);
        assert_eq!(r.increase(30, 40), 0.0);
        assert_eq!(r.increase(0, 5), 0.0);
    }

    #[test]
    fn a_series_started_in_the_window_counts_its_first_value() {
        let r = Running::new(&[s(10, 8, &[5.0]), s(20, 8, &[8.0])], 5);
        assert_eq!(r.increase(0, 20), 8.0);
        assert_eq!(r.increase(10, 20), 3.0);
    }

    #[test]
    fn drops_and_new_start_times_are_resets() {
        // 5 -> 8 (+3), drop to 2 (+2), 4 (+2), new start with 10 (+10), 11 (+1)
        let r = Running::new(
            &[
                s(10, 1, &[5.0]),
                s(20, 1, &[8.0]),
                s(30, 1, &[2.0]),
                s(40, 1, &[4.0]),
                s(50, 45, &[10.0]),
                s(60, 45, &[11.0]),
            ],
            5,
        );
        assert_eq!(r.increase(0, 60), 18.0);
        assert_eq!(r.increase(40, 50), 10.0);
    }

    #[test]
    fn histograms_are_vectors_with_the_same_rules() {
        let r =
            Running::new(&[s(10, 1, &[4.0, 1.0, 3.0]), s(20, 1, &[10.0, 3.0, 7.0]), s(30, 25, &[2.0, 2.0, 0.0])], 5);
        let mut out = Vec::new();
        r.add_increase(0, 30, &mut out);
        assert_eq!(out, vec![8.0, 4.0, 4.0]);
        r.add_increase(0, 20, &mut out);
        assert_eq!(out, vec![14.0, 6.0, 8.0], "increases add up");
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let bounds = [10.0, 20.0, 40.0];
        // 10 in (0,10], 10 in (10,20], 0 in (20,40], 0 above
        let counts = [10.0, 10.0, 0.0, 0.0];
        assert_eq!(quantile(0.5, &bounds, &counts), Some(10.0));
        assert_eq!(quantile(0.25, &bounds, &counts), Some(5.0));
        assert_eq!(quantile(0.75, &bounds, &counts), Some(15.0));
        assert_eq!(quantile(1.0, &bounds, &counts), Some(20.0));
        // ranks in the +Inf bucket give the highest finite bound
        assert_eq!(quantile(0.99, &bounds, &[0.0, 0.0, 1.0, 9.0]), Some(40.0));
        assert_eq!(quantile(0.5, &bounds, &[0.0; 4]), None);
        assert_eq!(quantile(0.5, &bounds, &[1.0]), None);
    }

    #[test]
    fn series_are_read_from_otlp_grouped_by_labels() {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
        use opentelemetry_proto::tonic::metrics::v1::{
            Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
        };
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
            ..Default::default()
        };
        let num = |t: u64, v: i64, op: &str| NumberDataPoint {
            attributes: vec![kv("span.name", op)],
            start_time_unix_nano: 1,
            time_unix_nano: t,
            value: Some(Value::AsInt(v)),
            ..Default::default()
        };
        let data = MetricsData {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: vec![kv("service.name", "api")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        Metric {
                            name: "calls".into(),
                            data: Some(Data::Sum(Sum {
                                data_points: vec![num(20, 5, "a"), num(10, 3, "a"), num(10, 7, "b")],
                                aggregation_temporality: 2,
                                is_monotonic: true,
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "dur".into(),
                            data: Some(Data::Histogram(Histogram {
                                data_points: vec![HistogramDataPoint {
                                    time_unix_nano: 10,
                                    count: 3,
                                    bucket_counts: vec![1, 2],
                                    explicit_bounds: vec![5.0],
                                    ..Default::default()
                                }],
                                aggregation_temporality: 2,
                            })),
                            ..Default::default()
                        },
                        Metric {
                            name: "delta".into(),
                            data: Some(Data::Sum(Sum {
                                data_points: vec![num(20, 5, "a")],
                                aggregation_temporality: 1,
                                is_monotonic: true,
                            })),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let series = read_series(&data);
        assert_eq!(series.len(), 3);
        let a = series.iter().find(|s| s.name == "calls" && s.label("span.name") == "a").unwrap();
        assert_eq!(a.label("service.name"), "api");
        assert_eq!(a.samples, vec![s(10, 1, &[3.0]), s(20, 1, &[5.0])]);
        let h = series.iter().find(|s| s.name == "dur").unwrap();
        assert_eq!((h.bounds.clone(), h.samples[0].values.clone()), (vec![5.0], vec![3.0, 1.0, 2.0]));
    }
}
