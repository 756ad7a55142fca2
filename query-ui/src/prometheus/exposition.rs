//! `GET /prometheus/metrics`: every metric in the store (received over OTLP or derived from
//! spans), the latest point of each series written within [`FRESHNESS`], in the Prometheus text
//! format 0.0.4, or in OpenMetrics 1.0 with exemplars (trace and span ids) when the scraper's
//! `Accept` header asks for `application/openmetrics-text`.
//!
//! The mapping from OTLP to Prometheus (names, units, `_total`, labels, `target_info` with the
//! resource attributes, histograms, exemplars) is the store's [`prometheus_view`]; exponential
//! histograms use its classic-bucket fallback, as neither text format carries native histograms.
//! Both formats are written here by hand: the `prometheus` and `prometheus-client` crates render
//! only metrics registered in their own registries, not arbitrary families with exemplars.
//! Samples carry no timestamp (as the OpenTelemetry Collector's Prometheus exporter by default),
//! so Prometheus' staleness handling works; a series whose newest point is older than
//! [`FRESHNESS`] disappears.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use obsbox_storage::prometheus::{Exemplar, Family, PromType, ViewOptions, format_float, prometheus_view};
use obsbox_storage::{MetricQuery, TimeRange};

use crate::{AppState, QueryError};

/// Series whose newest point is older than this are left out.
pub(crate) const FRESHNESS: Duration = Duration::from_secs(5 * 60);

const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// OpenMetrics' limit on the characters of an exemplar's label set.
const MAX_EXEMPLAR_LABEL_CHARS: usize = 128;

/// The exposition route (merged into the Prometheus API's router).
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/prometheus/metrics", get(exposition))
}

/// Whether the `Accept` header asks for OpenMetrics (Prometheus sends it first when it can
/// parse it, with text/plain as a fallback).
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|part| {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or_default();
        let q_zero = params.any(|p| p.replace(' ', "") == "q=0");
        media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
    })
}

async fn exposition(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, QueryError> {
    let openmetrics = wants_openmetrics(&headers);
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let time = TimeRange { start_ns: now_ns.saturating_sub(FRESHNESS.as_nanos() as u64), end_ns: u64::MAX };
    let body = state
        .query
        .read(move |reader| {
            let data = reader.find_metrics(&MetricQuery { matchers: Vec::new(), time })?;
            // Rendering is CPU work too: it stays on the blocking thread.
            let view = prometheus_view(&data, &ViewOptions { native_histograms: false, target_info: true });
            Ok(render(&view.families, openmetrics))
        })
        .await?;
    let content_type = if openmetrics { OPENMETRICS_CONTENT_TYPE } else { TEXT_CONTENT_TYPE };
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response())
}

/// Renders the families (latest sample of each series) in either format.
pub(crate) fn render(families: &[Family], openmetrics: bool) -> String {
    let mut out = String::new();
    for f in families {
        let latest: Vec<_> = f.series.iter().filter_map(|s| Some((s, s.samples.last()?))).collect();
        if latest.is_empty() {
            continue;
        }
        let name = if openmetrics { f.openmetrics_name() } else { f.name.as_str() };
        if !f.help.is_empty() {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&f.help, openmetrics));
        }
        let kind = f.kind.as_str();
        let _ = writeln!(out, "# TYPE {name} {kind}");
        // OpenMetrics allows a unit only when the family name ends with it.
        if openmetrics && !f.unit.is_empty() && name.ends_with(&format!("_{}", f.unit)) {
            let _ = writeln!(out, "# UNIT {name} {}", f.unit);
        }
        for (series, sample) in latest {
            let sample_name = series.labels.iter().find(|(k, _)| k == "__name__").map_or("", |(_, v)| v.as_str());
            out.push_str(sample_name);
            write_labels(&mut out, series.labels.iter().filter(|(k, _)| k != "__name__"));
            out.push(' ');
            out.push_str(&format_float(sample.value));
            if openmetrics
                && let Some(e) = series.exemplars.last()
                && exemplar_allowed(f.kind, sample_name)
            {
                write_exemplar(&mut out, e);
            }
            out.push('\n');
        }
    }
    if openmetrics {
        out.push_str("# EOF\n");
    }
    out
}

/// OpenMetrics puts exemplars on counters' `_total` and histograms' `_bucket` samples only.
fn exemplar_allowed(kind: PromType, sample_name: &str) -> bool {
    match kind {
        PromType::Counter => sample_name.ends_with("_total"),
        PromType::Histogram => sample_name.ends_with("_bucket"),
        _ => false,
    }
}

fn write_labels<'a>(out: &mut String, labels: impl Iterator<Item = &'a (String, String)>) {
    let mut first = true;
    for (k, v) in labels {
        out.push(if first { '{' } else { ',' });
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
    }
    if !first {
        out.push('}');
    }
}

fn write_exemplar(out: &mut String, e: &Exemplar) {
    // Trace and span id first; other attributes only while the label set stays within the limit.
    let mut labels: Vec<&(String, String)> = Vec::new();
    let mut chars = 0;
    let (mut ids, rest): (Vec<_>, Vec<_>) = e.labels.iter().partition(|(k, _)| k == "trace_id" || k == "span_id");
    ids.sort_by_key(|(k, _)| k != "trace_id");
    for l in ids.into_iter().chain(rest) {
        let n = l.0.chars().count() + l.1.chars().count();
        if chars + n <= MAX_EXEMPLAR_LABEL_CHARS {
            chars += n;
            labels.push(l);
        }
    }
    out.push_str(" # {");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
    }
    let _ = write!(out, "}} {} {}.{:03}", format_float(e.value), e.t_ms.div_euclid(1000), e.t_ms.rem_euclid(1000));
}

fn escape_label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str, openmetrics: bool) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '"' if openmetrics => s.push_str("\\\""),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use obsbox_storage::prometheus::{FloatSeries, Sample};

    use super::*;

    fn labels(l: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<_> = l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        v.sort();
        v
    }

    fn families() -> Vec<Family> {
        let exemplar = Exemplar {
            labels: labels(&[("trace_id", "0af7651916cd43dd8448eb211c80319c"), ("span_id", "b7ad6b7169203331")]),
            value: 0.25,
            t_ms: 1_700_000_000_123,
        };
        vec![
            Family {
                name: "http_requests_total".into(),
                kind: PromType::Counter,
                help: "Requests \"served\"\nby route.".into(),
                unit: String::new(),
                series: vec![FloatSeries {
                    labels: labels(&[("__name__", "http_requests_total"), ("job", "shop"), ("path", "a\"b\\c")]),
                    samples: vec![Sample { t_ms: 1, value: 1.0 }, Sample { t_ms: 2, value: 42.0 }],
                    exemplars: vec![exemplar.clone()],
                }],
                native: Vec::new(),
            },
            Family {
                name: "latency_seconds".into(),
                kind: PromType::Histogram,
                help: String::new(),
                unit: "seconds".into(),
                series: vec![
                    FloatSeries {
                        labels: labels(&[("__name__", "latency_seconds_bucket"), ("le", "0.5")]),
                        samples: vec![Sample { t_ms: 2, value: 3.0 }],
                        exemplars: vec![exemplar],
                    },
                    FloatSeries {
                        labels: labels(&[("__name__", "latency_seconds_bucket"), ("le", "+Inf")]),
                        samples: vec![Sample { t_ms: 2, value: 4.0 }],
                        exemplars: vec![],
                    },
                    FloatSeries {
                        labels: labels(&[("__name__", "latency_seconds_count")]),
                        samples: vec![Sample { t_ms: 2, value: 4.0 }],
                        exemplars: vec![],
                    },
                    FloatSeries {
                        labels: labels(&[("__name__", "latency_seconds_sum")]),
                        samples: vec![Sample { t_ms: 2, value: 1.5 }],
                        exemplars: vec![],
                    },
                ],
                native: Vec::new(),
            },
            Family {
                name: "empty".into(),
                kind: PromType::Gauge,
                help: String::new(),
                unit: String::new(),
                series: vec![],
                native: Vec::new(),
            },
        ]
    }

    #[test]
    fn text_format_has_the_latest_sample_and_no_exemplars() {
        let text = render(&families(), false);
        let want = "# HELP http_requests_total Requests \"served\"\\nby route.\n\
                    # TYPE http_requests_total counter\n\
                    http_requests_total{job=\"shop\",path=\"a\\\"b\\\\c\"} 42\n\
                    # TYPE latency_seconds histogram\n\
                    latency_seconds_bucket{le=\"0.5\"} 3\n\
                    latency_seconds_bucket{le=\"+Inf\"} 4\n\
                    latency_seconds_count 4\n\
                    latency_seconds_sum 1.5\n";
        assert_eq!(text, want);
    }

    #[test]
    fn openmetrics_has_units_exemplars_and_eof() {
        let text = render(&families(), true);
        let want = "# HELP http_requests Requests \\\"served\\\"\\nby route.\n\
                    # TYPE http_requests counter\n\
                    http_requests_total{job=\"shop\",path=\"a\\\"b\\\\c\"} 42 \
                    # {trace_id=\"0af7651916cd43dd8448eb211c80319c\",span_id=\"b7ad6b7169203331\"} 0.25 1700000000.123\n\
                    # TYPE latency_seconds histogram\n\
                    # UNIT latency_seconds seconds\n\
                    latency_seconds_bucket{le=\"0.5\"} 3 \
                    # {trace_id=\"0af7651916cd43dd8448eb211c80319c\",span_id=\"b7ad6b7169203331\"} 0.25 1700000000.123\n\
                    latency_seconds_bucket{le=\"+Inf\"} 4\n\
                    latency_seconds_count 4\n\
                    latency_seconds_sum 1.5\n\
                    # EOF\n";
        assert_eq!(text, want);
    }

    #[test]
    fn accept_header_negotiates_openmetrics() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            m
        };
        // What Prometheus 2.42 sends.
        assert!(wants_openmetrics(&h(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
             text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(!wants_openmetrics(&h("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(&h("application/openmetrics-text; q=0, text/plain")));
        assert!(!wants_openmetrics(&HeaderMap::new()));
    }
}
