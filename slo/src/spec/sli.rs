//! SLI specs: `ratioMetric` over obsbox's spans (`obsbox.spans`) or over Prometheus-style
//! metrics (`prometheus`), to [`Sli`].

use obsbox_storage::AttrValue;
use promql_parser::label::MatchOp;
use promql_parser::parser::Expr;

use super::time;
use super::yaml::{Cx, Field, Map};
use crate::SloError;
use crate::model::{Sli, SpanGood, SpanSelector};

const SUPPORTED: &str = "obsbox evaluates ratioMetric SLIs: good (or bad) and total counts from \
                         `obsbox.spans` or `prometheus` metric sources";

/// An SLI `spec` (`description`, `ratioMetric`; `thresholdMetric` is refused with a hint).
pub(super) fn sli_spec(cx: Cx<'_>, spec: &Field<'_, '_>) -> Result<Sli, SloError> {
    let m = spec.map(cx, &["description", "ratioMetric", "thresholdMetric"])?;
    if let Some(t) = m.get("thresholdMetric") {
        return Err(t.err(
            cx,
            format!(
                "thresholdMetric SLIs are not supported: {SUPPORTED}; for latency count good = spans under \
                 maxDuration or a histogram bucket (`..._bucket{{le=\"0.5\"}}`) over total"
            ),
        ));
    }
    if let Some(d) = m.get("description") {
        d.str(cx)?;
    }
    ratio(cx, m.req(cx, "ratioMetric")?)
}

enum Side {
    Spans { selector: SpanSelector, status: Option<bool>, duration: Option<std::time::Duration> },
    Metric(String),
}

fn ratio(cx: Cx<'_>, f: &Field<'_, '_>) -> Result<Sli, SloError> {
    let m = f.map(cx, &["counter", "good", "bad", "total", "rawType", "raw"])?;
    for key in ["rawType", "raw"] {
        if let Some(r) = m.get(key) {
            return Err(r.err(cx, format!("raw ratio SLIs are not supported: {SUPPORTED}")));
        }
    }
    if let Some(c) = m.get("counter") {
        c.bool(cx)?;
    }
    let (num_field, is_bad) = match (m.get("good"), m.get("bad")) {
        (Some(_), Some(b)) => return Err(b.err(cx, "give either good or bad, not both")),
        (Some(g), None) => (g, false),
        (None, Some(b)) => (b, true),
        (None, None) => return Err(m.err(cx, "missing field `good` (or `bad`)")),
    };
    let total_field = m.req(cx, "total")?;
    let num = side(cx, num_field, if is_bad { Role::Bad } else { Role::Good })?;
    let total = side(cx, total_field, Role::Total)?;
    match (num, total) {
        (Side::Spans { selector, status, duration }, Side::Spans { selector: total_sel, .. }) => {
            if !same_selection(&selector, &total_sel) {
                return Err(num_field.err(
                    cx,
                    format!(
                        "{} selects different spans than total ({}; total: {}): repeat total's service, \
                         operation, kind and attributes",
                        if is_bad { "bad" } else { "good" },
                        describe(&selector),
                        describe(&total_sel)
                    ),
                ));
            }
            // A bad side counts spans that are errors or slower than minDuration: its complement
            // is a span that is neither, which is exactly `SpanGood`.
            let good = SpanGood { no_error: status.is_some(), max_duration: duration };
            Ok(Sli::Spans { selector: total_sel, good })
        }
        (Side::Metric(numerator), Side::Metric(total)) => {
            Ok(Sli::Metrics { numerator, numerator_is_bad: is_bad, total })
        }
        _ => Err(num_field.err(cx, "good (or bad) and total must use the same metric source type")),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    Good,
    Bad,
    Total,
}

fn side(cx: Cx<'_>, f: &Field<'_, '_>, role: Role) -> Result<Side, SloError> {
    let m = f.map(cx, &["metricSource"])?;
    let src = m.req(cx, "metricSource")?.map(cx, &["type", "spec", "metricSourceRef"])?;
    if let Some(r) = src.get("metricSourceRef") {
        return Err(r.err(cx, "DataSource references are not supported: give `type` and `spec` inline"));
    }
    let ty_field = src.req(cx, "type")?;
    let ty = ty_field.str(cx)?;
    let spec = src.req(cx, "spec")?;
    if ty.eq_ignore_ascii_case("obsbox.spans") {
        spans(cx, spec, role)
    } else if ty.eq_ignore_ascii_case("prometheus") {
        prometheus(cx, spec, role).map(Side::Metric)
    } else {
        Err(ty_field.err(cx, format!("unsupported metric source type {ty:?}: use obsbox.spans or prometheus")))
    }
}

const SELECTION: [&str; 4] = ["service", "operation", "kind", "attributes"];

fn spans(cx: Cx<'_>, f: &Field<'_, '_>, role: Role) -> Result<Side, SloError> {
    let allowed: &[&str] = match role {
        Role::Total => &SELECTION,
        Role::Good => &["service", "operation", "kind", "attributes", "status", "maxDuration"],
        Role::Bad => &["service", "operation", "kind", "attributes", "status", "minDuration"],
    };
    let m = f.map(cx, allowed).map_err(|e| match (role, e) {
        (Role::Total, SloError::Spec { file, line, field, message }) if message.starts_with("unknown field") => {
            let message =
                format!("{message}; total counts every selected span, status and durations belong on good or bad");
            SloError::Spec { file, line, field, message }
        }
        (_, e) => e,
    })?;
    let selector = selector(cx, &m)?;
    if role == Role::Total && m.present(&SELECTION).is_empty() {
        return Err(m.err(cx, "select spans with at least one of service, operation, kind, attributes"));
    }
    let (status, duration) = match role {
        Role::Total => (None, None),
        Role::Good => (status(cx, &m, "not_error")?, m.get("maxDuration").map(|d| time::duration(cx, d)).transpose()?),
        Role::Bad => (status(cx, &m, "error")?, m.get("minDuration").map(|d| time::duration(cx, d)).transpose()?),
    };
    if role != Role::Total && status.is_none() && duration.is_none() {
        return Err(m.err(
            cx,
            if role == Role::Good {
                "good needs `status: not_error` and/or `maxDuration` (e.g. 300ms)"
            } else {
                "bad needs `status: error` and/or `minDuration` (e.g. 300ms)"
            },
        ));
    }
    Ok(Side::Spans { selector, status, duration })
}

fn status(cx: Cx<'_>, m: &Map<'_, '_>, want: &str) -> Result<Option<bool>, SloError> {
    let Some(s) = m.get("status") else { return Ok(None) };
    let v = s.str(cx)?;
    if v != want {
        return Err(s.err(cx, format!("status here must be {want}, got {v:?}")));
    }
    Ok(Some(true))
}

fn selector(cx: Cx<'_>, m: &Map<'_, '_>) -> Result<SpanSelector, SloError> {
    let text = |key: &str| -> Result<Option<String>, SloError> {
        match m.get(key) {
            None => Ok(None),
            Some(f) => {
                let s = f.str(cx)?;
                if s.is_empty() {
                    return Err(f.err(cx, "must not be empty"));
                }
                Ok(Some(s.to_owned()))
            }
        }
    };
    let kind = match m.get("kind") {
        None => None,
        Some(k) => Some(match k.str(cx)? {
            "internal" => 1,
            "server" => 2,
            "client" => 3,
            "producer" => 4,
            "consumer" => 5,
            other => {
                return Err(
                    k.err(cx, format!("unknown span kind {other:?} (server, client, producer, consumer, internal)"))
                );
            }
        }),
    };
    let mut attributes = Vec::new();
    if let Some(a) = m.get("attributes") {
        for (key, v) in a.open_map(cx)?.entries() {
            if key.is_empty() {
                return Err(v.err(cx, "attribute names must not be empty"));
            }
            attributes.push((key.to_owned(), v.typed_scalar(cx)?));
        }
        attributes.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok(SpanSelector { service: text("service")?, operation: text("operation")?, kind, attributes })
}

fn same_selection(a: &SpanSelector, b: &SpanSelector) -> bool {
    a == b
}

fn describe(s: &SpanSelector) -> String {
    let mut parts = Vec::new();
    if let Some(v) = &s.service {
        parts.push(format!("service {v:?}"));
    }
    if let Some(v) = &s.operation {
        parts.push(format!("operation {v:?}"));
    }
    if let Some(k) = s.kind {
        let name = ["unspecified", "internal", "server", "client", "producer", "consumer"].get(k as usize).copied();
        parts.push(format!("kind {}", name.unwrap_or("?")));
    }
    for (k, v) in &s.attributes {
        let v = match v {
            AttrValue::Str(s) => format!("{s:?}"),
            AttrValue::Int(i) => i.to_string(),
            AttrValue::Float(f) => f.to_string(),
            AttrValue::Bool(b) => b.to_string(),
        };
        parts.push(format!("{k}={v}"));
    }
    if parts.is_empty() { "every span".to_owned() } else { parts.join(", ") }
}

/// `spec.query`: one PromQL instant-vector selector with a metric name, no modifiers.
fn prometheus(cx: Cx<'_>, f: &Field<'_, '_>, role: Role) -> Result<String, SloError> {
    let m = f.map(cx, &["query"])?;
    let q = m.req(cx, "query")?;
    let text = q.str(cx)?.trim();
    let expr = promql_parser::parser::parse(text).map_err(|e| q.err(cx, format!("invalid PromQL {text:?}: {e}")))?;
    let hint = "obsbox counts the increase of the selected counters itself: write a plain selector such as \
                `http_requests_total{job=\"api\"}`";
    let Expr::VectorSelector(vs) = expr else {
        return Err(q.err(cx, format!("{text:?} is not an instant-vector selector; {hint}")));
    };
    if vs.offset.is_some() || vs.at.is_some() {
        return Err(q.err(cx, format!("offset and @ modifiers are not supported; {hint}")));
    }
    let name = vs.name.clone().or_else(|| {
        vs.matchers.matchers.iter().find(|m| m.name == "__name__" && m.op == MatchOp::Equal).map(|m| m.value.clone())
    });
    let Some(name) = name else {
        return Err(q.err(cx, format!("the selector needs a metric name; {hint}")));
    };
    if role != Role::Total && name.ends_with("_bucket") && !vs.matchers.matchers.iter().any(|m| m.name == "le") {
        return Err(q.err(cx, "a histogram bucket selector needs its bound, e.g. `le=\"0.5\"`"));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use saphyr::{LoadableYamlNode, MarkedYaml};

    use super::*;

    fn sli(yaml: &str) -> Result<Sli, String> {
        let docs = MarkedYaml::load_from_str(yaml).unwrap();
        let cx = Cx { file: Path::new("s.yaml") };
        sli_spec(cx, &Field::root(&docs[0])).map_err(|e| e.to_string())
    }

    #[test]
    fn spans_good_and_bad_sides() {
        let good = sli("ratioMetric:
  good:
    metricSource:
      type: obsbox.spans
      spec: {service: payments, kind: server, attributes: {http.route: /payments, retry: 1}, status: not_error}
  total:
    metricSource:
      type: obsbox.spans
      spec: {service: payments, kind: server, attributes: {retry: 1, http.route: /payments}}
")
        .unwrap();
        let selector = SpanSelector {
            service: Some("payments".into()),
            operation: None,
            kind: Some(2),
            attributes: vec![
                ("http.route".into(), AttrValue::Str("/payments".into())),
                ("retry".into(), AttrValue::Int(1)),
            ],
        };
        assert_eq!(
            good,
            Sli::Spans { selector: selector.clone(), good: SpanGood { no_error: true, max_duration: None } }
        );
        let bad = sli("ratioMetric:
  bad: {metricSource: {type: obsbox.spans, spec: {service: a, minDuration: 250ms, status: error}}}
  total: {metricSource: {type: obsbox.spans, spec: {service: a}}}
")
        .unwrap();
        let Sli::Spans { good, .. } = bad else { panic!("{bad:?}") };
        assert_eq!(good, SpanGood { no_error: true, max_duration: Some(Duration::from_millis(250)) });
    }

    #[test]
    fn spans_errors_name_the_field() {
        let e = sli("ratioMetric:
  good: {metricSource: {type: obsbox.spans, spec: {service: a, status: not_error}}}
  total: {metricSource: {type: obsbox.spans, spec: {service: b}}}
")
        .unwrap_err();
        assert!(e.starts_with("s.yaml:2: ratioMetric.good: good selects different spans than total"), "{e}");
        let e = sli("ratioMetric:
  good: {metricSource: {type: obsbox.spans, spec: {service: a}}}
  total: {metricSource: {type: obsbox.spans, spec: {service: a}}}
")
        .unwrap_err();
        assert!(e.contains("good needs `status: not_error`"), "{e}");
        let e = sli("ratioMetric:
  good: {metricSource: {type: obsbox.spans, spec: {service: a, status: ok}}}
  total: {metricSource: {type: obsbox.spans, spec: {service: a}}}
")
        .unwrap_err();
        assert!(
            e.starts_with("s.yaml:2: ratioMetric.good.metricSource.spec.status: status here must be not_error"),
            "{e}"
        );
        let e = sli("ratioMetric:
  good: {metricSource: {type: obsbox.spans, spec: {service: a, status: not_error}}}
  total: {metricSource: {type: obsbox.spans, spec: {service: a, maxDuration: 1s}}}
")
        .unwrap_err();
        assert!(e.starts_with("s.yaml:3: ratioMetric.total.metricSource.spec.maxDuration: unknown field"), "{e}");
        let e = sli("ratioMetric:
  good: {metricSource: {type: obsbox.spans, spec: {kind: sever, status: not_error}}}
  total: {metricSource: {type: obsbox.spans, spec: {kind: server}}}
")
        .unwrap_err();
        assert!(e.contains("unknown span kind \"sever\""), "{e}");
        let e = sli("ratioMetric:
  good: {metricSource: {type: obsbox.spans, spec: {status: not_error}}}
  total: {metricSource: {type: obsbox.spans, spec: {}}}
")
        .unwrap_err();
        assert!(e.contains("at least one of service"), "{e}");
        let e = sli("thresholdMetric: {metricSource: {type: prometheus, spec: {query: x}}}").unwrap_err();
        assert!(e.starts_with("s.yaml:1: thresholdMetric: thresholdMetric SLIs are not supported"), "{e}");
        let e = sli("ratioMetric: {rawType: success, raw: {}}").unwrap_err();
        assert!(e.contains("raw ratio SLIs are not supported"), "{e}");
    }

    #[test]
    fn prometheus_selectors_only() {
        let ok = sli(
            r#"ratioMetric:
  counter: true
  good: {metricSource: {type: Prometheus, spec: {query: 'http_server_request_duration_seconds_bucket{job="orders",le="0.5"}'}}}
  total: {metricSource: {type: prometheus, spec: {query: 'http_server_request_duration_seconds_count{job="orders"}'}}}
"#,
        )
        .unwrap();
        assert_eq!(
            ok,
            Sli::Metrics {
                numerator: r#"http_server_request_duration_seconds_bucket{job="orders",le="0.5"}"#.into(),
                numerator_is_bad: false,
                total: r#"http_server_request_duration_seconds_count{job="orders"}"#.into()
            }
        );
        let q = |good: &str| {
            sli(&format!(
                "ratioMetric:\n  bad: {{metricSource: {{type: prometheus, spec: {{query: '{good}'}}}}}}\n  total: {{metricSource: {{type: prometheus, spec: {{query: 'req_total'}}}}}}\n"
            ))
        };
        assert!(matches!(q("errors_total{code=~\"5..\"}"), Ok(Sli::Metrics { numerator_is_bad: true, .. })));
        for (query, want) in [
            ("rate(errors_total[5m])", "not an instant-vector selector"),
            ("errors_total[5m]", "not an instant-vector selector"),
            ("errors_total offset 5m", "offset"),
            ("{code=\"500\"}", "needs a metric name"),
            ("lat_bucket{job=\"a\"}", "needs its bound"),
            ("errors_total{", "invalid PromQL"),
        ] {
            let e = q(query).unwrap_err();
            assert!(e.starts_with("s.yaml:2: ratioMetric.bad.metricSource.spec.query: "), "{e}");
            assert!(e.contains(want), "{query}: {e}");
        }
        let e = sli("ratioMetric:
  good: {metricSource: {type: obsbox.spans, spec: {service: a, status: not_error}}}
  total: {metricSource: {type: prometheus, spec: {query: x_total}}}
")
        .unwrap_err();
        assert!(e.contains("same metric source type"), "{e}");
        let e = sli("ratioMetric:
  good: {metricSource: {type: datadog, spec: {query: x}}}
  total: {metricSource: {type: prometheus, spec: {query: x_total}}}
")
        .unwrap_err();
        assert!(e.starts_with("s.yaml:2: ratioMetric.good.metricSource.type: unsupported metric source type"), "{e}");
    }
}
