//! Arbitrary and mutated LogQL and parameters against every Loki endpoint: the answer is a 200
//! or a 400, never a server error or a panic.

use crate::loki_common;

use loki_common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Realistic queries touching every supported construct (and some unsupported ones).
const TEMPLATES: &[&str] = &[
    r#"{service_name="checkout"}"#,
    r#"{service_namespace="shop", level=~"ERROR|warn"} |= "failed" != "timeout""#,
    r#"{service_name=~".+"} |~ "(?i)tick \\d+" !~ "ok$""#,
    r#"{service_name="checkout"} | json | latency_ms > 100 and user_tier="gold" | drop __error__"#,
    r#"{service_name="checkout"} | logfmt --strict | duration >= 1s or status == 503 | keep level, status"#,
    r#"{service_name="checkout"} | json m="user.id", p="path" | m=~"u.*""#,
    r#"{deployment_environment!="staging", service_name=~"t.*"} | http_method="GET""#,
    r#"sum by (level) (count_over_time({service_name="ticker"}[10s]))"#,
    r#"sum by (level, detected_level) (count_over_time({service_name=~".+"} | drop __error__[1m]))"#,
    r#"sum(rate({service_name="ticker"} |= "failed" [1m])) / sum(rate({service_name="ticker"}[1m])) * 100"#,
    r#"topk(2, sum by (service_name) (bytes_rate({service_name=~".+"}[30s])))"#,
    r#"count_over_time({service_name="checkout"} | json [1m])"#,
    r#"avg without (level) (count_over_time({service_namespace="shop"}[1m])) > 0"#,
    r#"sum by (deployment_environment) (count_over_time({k8s_pod_name=~".+"}[5m]))"#,
    "vector(1)+vector(1)",
    r#"{a="b"} | line_format "{{.x}}""#,
    r#"rate({a="b"}[1m] offset 1h)"#,
];

const FRAGMENTS: &[&str] = &[
    "{", "}", "(", ")", "[", "]", ",", "|", "|=", "!=", "|~", "!~", "=", "=~", "==", ">", "<=", "+", "/", "^", "\"a\"",
    "`(`", "5m", "0", "-1", "1e308", "sum", "by", "rate", "json", "logfmt", "or", "and", "level", "# x\n", "\\", "\"",
    "`", "é", "\u{0}",
];

fn query() -> impl Strategy<Value = String> {
    let mutated = (prop::sample::select(TEMPLATES), prop::sample::select(FRAGMENTS), 0usize..200, any::<bool>())
        .prop_map(|(t, f, at, delete)| {
            let mut q = t.to_string();
            let idx = q.char_indices().map(|(i, _)| i).nth(at % q.chars().count().max(1)).unwrap_or(0);
            if delete {
                q.remove(idx);
            } else {
                q.insert_str(idx, f);
            }
            q
        });
    let soup = prop::collection::vec(prop::sample::select(FRAGMENTS), 0..25).prop_map(|v| v.join(" "));
    prop_oneof![
        2 => prop::sample::select(TEMPLATES).prop_map(str::to_string),
        4 => mutated,
        2 => soup,
        1 => ".{0,80}",
    ]
}

/// Mostly valid values, sometimes not.
fn mostly(valid: &[&'static str], invalid: &[&'static str]) -> impl Strategy<Value = &'static str> {
    prop_oneof![8 => prop::sample::select(valid.to_vec()), 1 => prop::sample::select(invalid.to_vec())]
}

/// A time `from..to` seconds after `T0` in one of Loki's formats, or something odd.
fn time(from: u64, to: u64) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (from..to).prop_map(|s| (T0 + s * SEC).to_string()),
        2 => (from..to).prop_map(|s| format!("{}.5", T0 / SEC + s)),
        1 => prop::sample::select(vec!["2023-11-14T22:14:00Z", "", "0", "99999999999999999999", "yesterday"])
            .prop_map(str::to_string),
    ]
}

const CASES: u32 = 1000;

#[test]
fn arbitrary_queries_and_parameters_never_get_a_server_error() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let h = rt.block_on(memory());
    let mut runner = TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() });
    let steps = mostly(&["", "10s", "1", "0.5", "1e5", "1h", "250ms"], &["0", "-1", "abc"]);
    let limits = mostly(&["", "1", "100", "5000"], &["5001", "0", "x"]);
    let dirs = mostly(&["", "backward", "FORWARD"], &["up"]);
    let strategy = (query(), time(0, 200), time(150, 400), steps, limits, dirs);
    let answered = std::cell::Cell::new(0usize);
    runner
        .run(&strategy, |(q, start, end, step, limit, dir)| {
            let q = q.as_str();
            let uris = [
                url(
                    "/loki/api/v1/query_range",
                    &[
                        ("query", q),
                        ("start", &start),
                        ("end", &end),
                        ("step", step),
                        ("limit", limit),
                        ("direction", dir),
                    ],
                ),
                url("/loki/api/v1/query", &[("query", q), ("time", &end), ("limit", limit)]),
                url("/loki/api/v1/labels", &[("query", q), ("start", &start), ("end", &end)]),
                url("/loki/api/v1/label/service_name/values", &[("query", q), ("start", &start), ("end", &end)]),
                url("/loki/api/v1/series", &[("match[]", q), ("start", &start), ("end", &end)]),
                url("/loki/api/v1/index/stats", &[("query", q), ("start", &start), ("end", &end)]),
                url("/loki/api/v1/index/volume", &[("query", q), ("start", &start), ("end", &end)]),
                url(
                    "/loki/api/v1/index/volume_range",
                    &[("query", q), ("start", &start), ("end", &end), ("step", step)],
                ),
                url("/loki/api/v1/detected_fields", &[("query", q), ("start", &start), ("end", &end)]),
                url("/loki/api/v1/detected_labels", &[("query", q), ("start", &start), ("end", &end)]),
                url("/loki/api/v1/format_query", &[("query", q)]),
            ];
            for uri in uris {
                let (status, _, body) = rt.block_on(get(&h.app, &uri));
                if status == 200 && uri.starts_with("/loki/api/v1/query_range") {
                    answered.set(answered.get() + 1);
                }
                prop_assert!(status == 200 || status == 400, "{uri}: {status}: {}", String::from_utf8_lossy(&body));
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // The inputs reach evaluation, not only the parser.
    assert!(answered.get() > CASES as usize / 10, "only {} query_range requests succeeded", answered.get());
    eprintln!("{} of {CASES} query_range requests answered with data", answered.get());
}
