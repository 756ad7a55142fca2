//! Limits on every query (the `[query]` section of the configuration): query text length,
//! complexity, time range, result size and a time budget.
//!
//! # Where things are
//! - [`QueryLimits`]: the settings, their defaults and their validation.
//! - the checks each API runs on its input: `check_text` (every query language), `check_range`
//!   (time windows), `check_limit` (`limit` parameters), `check_promql` (PromQL nesting and
//!   selectors, after `prometheus::prescan` bounded the text's nesting and operators). The trace
//!   filter and log query parsers (`filters.rs`) and the LogQL parser (`loki/logql.rs`, `shape`)
//!   count their own nesting and clauses against these limits.
//! - `guard`: the router layer that answers a request still running after `timeout` with a 503
//!   (Loki: 504) in the API's own error shape, and refuses a response larger than
//!   `max_response_bytes` with a 4xx.
//!
//! Each API refuses in its own error shape: Prometheus `bad_data` (400) or `execution` (422),
//! Loki plain text, Jaeger `errors[]`, the native API `{"error": ...}`, the UI the form with the
//! reason. The message names the `[query]` key to raise.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use obsbox_storage::TimeRange;
use promql_parser::parser::Expr;
use serde::{Deserialize, Serialize};

use crate::AppState;

/// Upper bound of `max_query_bytes` (the parsers are linear, but a query is not a document).
const MAX_QUERY_BYTES_CEILING: usize = 1 << 20;
/// Upper bound of `max_query_depth`: the parsers and evaluators recurse once per level, and each
/// level must fit on a thread's stack with room to spare.
const MAX_QUERY_DEPTH_CEILING: usize = 256;

/// Limits on queries, the `[query]` section. The defaults stay out of the way of a Grafana user;
/// each refusal names the key to raise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryLimits {
    /// Longest query text in bytes, for every language: trace filter, log query, LogQL, PromQL
    /// (also each `match[]` selector).
    pub max_query_bytes: usize,
    /// Deepest nesting of a query: parentheses, `NOT`, function calls, aggregations, binary
    /// operations (at most 256).
    pub max_query_depth: usize,
    /// Most conditions in one trace filter or log query, pipeline stages and line filters in one
    /// LogQL query, and operators in one PromQL expression.
    pub max_query_clauses: usize,
    /// Most series selectors in one PromQL or LogQL query.
    pub max_selectors: usize,
    /// Longest time window of a search, a log histogram or a range query; zero: no limit (the
    /// cost of a wide window is bounded by the other limits: points, lines, traces, buckets).
    #[serde(with = "humantime_serde")]
    pub max_time_range: Duration,
    /// Most points per series of a Prometheus or Loki range query (Prometheus' 11,000).
    pub max_points_per_series: usize,
    /// Most series one PromQL selector may read.
    pub max_series: usize,
    /// Most samples one PromQL query may read from the store, and points it may return.
    pub max_samples: usize,
    /// Most traces one trace search returns (`limit`), and trace ids one Jaeger request names.
    pub max_traces: usize,
    /// Most log lines one log query returns (`limit`, native and Loki APIs).
    pub max_log_lines: usize,
    /// Largest response body in bytes; a larger answer is refused (narrow the query).
    pub max_response_bytes: usize,
    /// Time budget of one request: past it, the API answers 503 (Loki: 504) and the request is
    /// abandoned.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_query_bytes: 64 * 1024,
            max_query_depth: 64,
            max_query_clauses: 256,
            max_selectors: 64,
            max_time_range: Duration::ZERO,
            max_points_per_series: 11_000,
            max_series: 100_000,
            max_samples: 20_000_000,
            max_traces: 1000,
            max_log_lines: 5000,
            max_response_bytes: 128 << 20,
            timeout: Duration::from_secs(60),
        }
    }
}

impl QueryLimits {
    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_query_bytes", self.max_query_bytes),
            ("max_query_depth", self.max_query_depth),
            ("max_query_clauses", self.max_query_clauses),
            ("max_selectors", self.max_selectors),
            ("max_points_per_series", self.max_points_per_series),
            ("max_series", self.max_series),
            ("max_samples", self.max_samples),
            ("max_traces", self.max_traces),
            ("max_log_lines", self.max_log_lines),
            ("max_response_bytes", self.max_response_bytes),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!("{key}: must be at least 1"));
            }
        }
        if self.max_query_bytes > MAX_QUERY_BYTES_CEILING {
            return Err(format!("max_query_bytes: at most {MAX_QUERY_BYTES_CEILING}"));
        }
        if self.max_query_depth > MAX_QUERY_DEPTH_CEILING {
            return Err(format!("max_query_depth: at most {MAX_QUERY_DEPTH_CEILING} (deeper queries risk the stack)"));
        }
        if !self.max_time_range.is_zero() && self.max_time_range < Duration::from_secs(60) {
            return Err("max_time_range: at least 1m, or 0s for no limit".into());
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(3600) {
            return Err("timeout: between 100ms and 1h".into());
        }
        Ok(())
    }

    /// A query text of `what` (e.g. "query", "filter") no longer than `max_query_bytes`.
    pub(crate) fn check_text(&self, what: &str, text: &str) -> Result<(), String> {
        if text.len() > self.max_query_bytes {
            return Err(format!(
                "{what} is {} bytes, more than the limit of {} ([query] max_query_bytes)",
                text.len(),
                self.max_query_bytes
            ));
        }
        Ok(())
    }

    /// A time window no longer than `max_time_range` (when set).
    pub(crate) fn check_range(&self, range: TimeRange) -> Result<(), String> {
        let len = range.end_ns.saturating_sub(range.start_ns);
        if !self.max_time_range.is_zero() && len as u128 > self.max_time_range.as_nanos() {
            return Err(format!(
                "the time range is {}, longer than the limit of {} ([query] max_time_range)",
                humantime::format_duration(Duration::from_secs(len / 1_000_000_000)),
                humantime::format_duration(self.max_time_range)
            ));
        }
        Ok(())
    }

    /// `default` shrunk to fit `max_time_range` (a window the caller did not choose), in ns.
    pub(crate) fn default_window_ns(&self, default: u64) -> u64 {
        match self.max_time_range.as_nanos() {
            0 => default,
            max => default.min(max.min(u64::MAX as u128) as u64),
        }
    }

    /// A `limit` parameter between 1 and `max` (the key named in the message).
    pub(crate) fn check_limit(name: &str, n: usize, max: usize, key: &str) -> Result<usize, String> {
        if n == 0 || n > max {
            return Err(format!("{name} must be between 1 and {max} ([query] {key})"));
        }
        Ok(n)
    }

    /// A parsed PromQL expression within `max_query_depth` and `max_selectors`.
    pub(crate) fn check_promql(&self, expr: &Expr) -> Result<(), String> {
        let (depth, selectors) = promql_shape(expr, self.max_query_depth);
        if depth > self.max_query_depth {
            return Err(format!(
                "the expression is nested more than {} levels deep ([query] max_query_depth)",
                self.max_query_depth
            ));
        }
        if selectors > self.max_selectors {
            return Err(format!(
                "the expression has {selectors} series selectors, more than the limit of {} ([query] max_selectors)",
                self.max_selectors
            ));
        }
        Ok(())
    }
}

/// `11000` as `11,000`, as Prometheus and Loki write their resolution limit.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Nesting depth (stopping below `cap`: deeper is refused anyway) and series selectors of a
/// PromQL expression.
pub(crate) fn promql_shape(expr: &Expr, cap: usize) -> (usize, usize) {
    fn walk(e: &Expr, depth: usize, cap: usize, max: &mut usize, selectors: &mut usize) {
        *max = (*max).max(depth);
        if depth > cap {
            return;
        }
        let mut next = |e: &Expr| walk(e, depth + 1, cap, max, selectors);
        match e {
            Expr::VectorSelector(_) | Expr::MatrixSelector(_) => *selectors += 1,
            Expr::Paren(p) => next(&p.expr),
            Expr::Unary(u) => next(&u.expr),
            Expr::Subquery(s) => next(&s.expr),
            Expr::Aggregate(a) => {
                if let Some(p) = &a.param {
                    next(p);
                }
                next(&a.expr);
            }
            Expr::Binary(b) => {
                next(&b.lhs);
                next(&b.rhs);
            }
            Expr::Call(c) => c.args.args.iter().for_each(|a| next(a)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
    let (mut max, mut selectors) = (0, 0);
    walk(expr, 1, cap, &mut max, &mut selectors);
    (max, selectors)
}

/// The router layer applying `timeout` and `max_response_bytes` to every request on the UI
/// port, answering in the error shape of the API the path belongs to.
pub(crate) async fn guard(State(state): State<AppState>, request: Request, next: axum::middleware::Next) -> Response {
    let limits = state.query.limits().clone();
    let api = crate::api_of(request.uri().path());
    let response = match tokio::time::timeout(limits.timeout, next.run(request)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!(api, timeout = ?limits.timeout, "query abandoned after its time budget");
            let msg =
                format!("the query took longer than {} ([query] timeout)", humantime::format_duration(limits.timeout));
            return refusal(api, Refusal::Timeout, &msg);
        }
    };
    // A streamed body (the live tail's events) has no exact size and is not limited here; an
    // error is small and says more than a refusal would.
    match axum::body::HttpBody::size_hint(response.body()).exact() {
        Some(n) if n as usize > limits.max_response_bytes && response.status().is_success() => {
            let msg = format!(
                "the response would be {n} bytes, more than the limit of {} ([query] max_response_bytes): narrow \
                 the query or lower its limit",
                limits.max_response_bytes
            );
            refusal(api, Refusal::TooLarge, &msg)
        }
        _ => response,
    }
}

#[derive(Clone, Copy)]
enum Refusal {
    Timeout,
    TooLarge,
}

/// An error in the shape of `api`.
fn refusal(api: &str, kind: Refusal, msg: &str) -> Response {
    let json = |status: StatusCode, body: serde_json::Value| {
        (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    };
    match (api, kind) {
        ("prometheus", Refusal::Timeout) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "error", "errorType": "timeout", "error": msg}),
        ),
        ("prometheus", Refusal::TooLarge) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"status": "error", "errorType": "execution", "error": msg}),
        ),
        ("jaeger", _) => {
            let status = match kind {
                Refusal::Timeout => StatusCode::SERVICE_UNAVAILABLE,
                Refusal::TooLarge => StatusCode::BAD_REQUEST,
            };
            json(
                status,
                serde_json::json!({"data": null, "total": 0, "limit": 0, "offset": 0, "errors": [
                    {"code": status.as_u16(), "msg": msg}
                ]}),
            )
        }
        ("native", Refusal::Timeout) => json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "error": msg })),
        ("native", Refusal::TooLarge) => json(StatusCode::BAD_REQUEST, serde_json::json!({ "error": msg })),
        (_, kind) => {
            let status = match (api, kind) {
                ("loki", Refusal::Timeout) => StatusCode::GATEWAY_TIMEOUT,
                (_, Refusal::Timeout) => StatusCode::SERVICE_UNAVAILABLE,
                (_, Refusal::TooLarge) => StatusCode::BAD_REQUEST,
            };
            (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{msg}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        QueryLimits::default().validate().unwrap();
        for (toml, key) in [
            (QueryLimits { max_traces: 0, ..Default::default() }, "max_traces"),
            (QueryLimits { max_query_depth: 10_000, ..Default::default() }, "max_query_depth"),
            (QueryLimits { max_query_bytes: 100 << 20, ..Default::default() }, "max_query_bytes"),
            (QueryLimits { timeout: Duration::from_millis(1), ..Default::default() }, "timeout"),
            (QueryLimits { max_time_range: Duration::from_secs(1), ..Default::default() }, "max_time_range"),
        ] {
            assert!(toml.validate().unwrap_err().starts_with(key), "{key}");
        }
    }

    #[test]
    fn text_and_range_limits_name_their_key() {
        let l = QueryLimits { max_query_bytes: 10, max_time_range: Duration::from_secs(3600), ..Default::default() };
        assert!(l.check_text("query", "0123456789").is_ok());
        let e = l.check_text("query", "0123456789a").unwrap_err();
        assert!(e.contains("11 bytes") && e.contains("max_query_bytes"), "{e}");
        assert!(l.check_range(TimeRange { start_ns: 0, end_ns: 3600 * 1_000_000_000 }).is_ok());
        let e = l.check_range(TimeRange { start_ns: 0, end_ns: 7200 * 1_000_000_000 }).unwrap_err();
        assert!(e.contains("2h") && e.contains("max_time_range"), "{e}");
        let unlimited = QueryLimits::default();
        unlimited.check_range(TimeRange::ALL).unwrap();
        assert_eq!(unlimited.default_window_ns(7), 7);
        assert_eq!(l.default_window_ns(u64::MAX), 3600 * 1_000_000_000);
        assert_eq!(QueryLimits::check_limit("limit", 5, 5, "max_traces"), Ok(5));
        assert!(QueryLimits::check_limit("limit", 6, 5, "max_traces").unwrap_err().contains("between 1 and 5"));
        assert!(QueryLimits::check_limit("limit", 0, 5, "max_traces").is_err());
    }

    #[test]
    fn resolution_limits_read_like_prometheus() {
        assert_eq!(thousands(11_000), "11,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn promql_depth_and_selectors_are_counted() {
        let l = QueryLimits { max_query_depth: 5, max_selectors: 2, ..Default::default() };
        let e = promql_parser::parser::parse("sum(rate(a[5m])) / sum(rate(b[5m]))").unwrap();
        assert_eq!(promql_shape(&e, 100), (4, 2));
        l.check_promql(&e).unwrap();
        let e = promql_parser::parser::parse("a + b + c").unwrap();
        assert!(l.check_promql(&e).unwrap_err().contains("3 series selectors"));
        let e = promql_parser::parser::parse("((((((1))))))").unwrap();
        assert!(l.check_promql(&e).unwrap_err().contains("max_query_depth"));
    }
}
