use std::path::PathBuf;
use std::time::Duration;

use saphyr::{LoadableYamlNode, YamlOwned};

use super::*;
use crate::model::{CalendarUnit, Source, SpanGood, SpanSelector, Tier};

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

fn slo(name: &str, sli: Sli, window: Duration) -> Slo {
    Slo {
        name: name.into(),
        display_name: name.into(),
        description: String::new(),
        service: "checkout".into(),
        sli,
        target: 0.999,
        objective_name: String::new(),
        window: Window::Rolling(window),
        budgeting: Budgeting::Occurrences,
        tiers: Tier::workbook(window),
        min_events: 10,
        labels: vec![("team".into(), "payments".into())],
        source: Source { file: PathBuf::from("slos/x.yaml"), line: 1 },
    }
}

fn spans() -> Sli {
    Sli::Spans {
        selector: SpanSelector { service: Some("checkout".into()), ..Default::default() },
        good: SpanGood { no_error: true, max_duration: None },
    }
}

fn metrics(numerator: &str, numerator_is_bad: bool, total: &str) -> Sli {
    Sli::Metrics { numerator: numerator.into(), numerator_is_bad, total: total.into() }
}

fn load(text: &str) -> YamlOwned {
    let mut docs = YamlOwned::load_from_str(text).expect("valid YAML");
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

fn strs(node: &YamlOwned, key: &str) -> Vec<String> {
    node.as_vec().unwrap().iter().filter_map(|r| r.as_mapping_get(key)?.as_str().map(String::from)).collect()
}

#[test]
fn durations_use_the_largest_exact_unit_and_round_up_to_seconds() {
    assert_eq!(prom_duration(300), "5m");
    assert_eq!(prom_duration(3600), "1h");
    assert_eq!(prom_duration(3 * 86_400), "3d");
    assert_eq!(prom_duration(5400), "90m");
    assert_eq!(prom_duration(70), "70s");
    assert_eq!(prom_duration(0), "0s");
    assert_eq!(whole_seconds(Duration::from_millis(70_001)), 71);
    assert_eq!(whole_seconds(Duration::from_secs(840)), 840);
}

#[test]
fn label_names_are_made_valid() {
    assert_eq!(label_name("team"), "team");
    assert_eq!(label_name("app.kubernetes.io/name"), "app_kubernetes_io_name");
    assert_eq!(label_name("9lives"), "_9lives");
}

#[test]
fn a_span_slo_records_every_window_and_alerts_per_tier() {
    let doc = load(&prometheus_rules(&[slo("checkout", spans(), days(30))]));
    let groups = &doc["groups"];
    assert_eq!(strs(groups, "name"), ["slo-checkout", "slo-checkout:period"]);
    let rules = &groups[0]["rules"];
    let records = strs(rules, "record");
    let windows = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"].map(|w| format!("slo:sli_error:ratio_rate{w}"));
    let increases = ["1h", "6h", "1d", "3d"].map(|w| format!("slo:sli_total:increase{w}"));
    let mut want: Vec<String> = windows.into_iter().chain(increases).collect();
    want.extend(["slo:objective:ratio".into(), "slo:error_budget:ratio".into()]);
    assert_eq!(records, want);
    let rules = rules.as_vec().unwrap();
    let ratio5m = &rules[0];
    assert_eq!(
        ratio5m["expr"].as_str().unwrap(),
        "1 - (sum(rate(obsbox_slo_events_total{slo=\"checkout\",kind=\"good\"}[5m])) or vector(0))\n/\n\
         sum(rate(obsbox_slo_events_total{slo=\"checkout\",kind=\"total\"}[5m]))"
    );
    for r in rules.iter().filter(|r| r.contains_mapping_key("record")) {
        assert_eq!(r["labels"]["slo"].as_str(), Some("checkout"));
        assert_eq!(r["labels"]["service"].as_str(), Some("checkout"));
        assert_eq!(r["labels"]["team"].as_str(), Some("payments"));
    }
    let alerts: Vec<&YamlOwned> = rules.iter().filter(|r| r.contains_mapping_key("alert")).collect();
    assert_eq!(alerts.len(), 4);
    let tiers: Vec<(&str, &str)> = alerts
        .iter()
        .map(|a| (a["labels"]["severity"].as_str().unwrap(), a["labels"]["tier"].as_str().unwrap()))
        .collect();
    assert_eq!(
        tiers,
        [("page", "page-fast"), ("page", "page-slow"), ("ticket", "ticket-fast"), ("ticket", "ticket-slow")]
    );
    let fast = alerts[0];
    assert_eq!(fast["alert"].as_str(), Some("SLOBurnRate"));
    assert_eq!(fast["for"].as_str(), Some("0s"));
    assert_eq!(
        fast["expr"].as_str().unwrap(),
        "(slo:sli_error:ratio_rate1h{slo=\"checkout\"} >= (14.4 * (1 - 0.999)))\nand\n\
         (slo:sli_error:ratio_rate5m{slo=\"checkout\"} >= (14.4 * (1 - 0.999)))\nand\n\
         (slo:sli_total:increase1h{slo=\"checkout\"} >= 10)"
    );
    let summary = fast["annotations"]["summary"].as_str().unwrap();
    assert!(summary.contains("14.4x"), "{summary}");
    let description = fast["annotations"]["description"].as_str().unwrap();
    assert!(
        description.contains("1.44% of events") && description.contains("last 1h and the last 5m"),
        "{description}"
    );

    let period = &groups[1];
    assert_eq!(period["interval"].as_str(), Some(PERIOD_GROUP_INTERVAL));
    assert_eq!(strs(&period["rules"], "record"), ["slo:sli_error:ratio_rate30d", "slo:error_budget_remaining:ratio"]);
    assert_eq!(
        period["rules"][1]["expr"].as_str(),
        Some("1 - slo:sli_error:ratio_rate30d{slo=\"checkout\"} / (1 - 0.999)")
    );
}

#[test]
fn metric_slis_read_their_selectors_bad_or_good() {
    let bad = slo("api", metrics(r#"http_requests_total{code=~"5.."}"#, true, "http_requests_total"), days(28));
    let mut good =
        slo("api-good", metrics(r#"http_requests_total{code!~"5.."}"#, false, "http_requests_total"), days(28));
    good.min_events = 0;
    let doc = load(&prometheus_rules(&[bad, good]));
    assert_eq!(
        doc["groups"][0]["rules"][0]["expr"].as_str(),
        Some(
            "(sum(rate(http_requests_total{code=~\"5..\"}[280s])) or vector(0))\n/\nsum(rate(http_requests_total[280s]))"
        )
    );
    assert_eq!(
        doc["groups"][2]["rules"][0]["expr"].as_str(),
        Some(
            "1 - (sum(rate(http_requests_total{code!~\"5..\"}[280s])) or vector(0))\n/\nsum(rate(http_requests_total[280s]))"
        )
    );
    // No guard without min_events.
    let alerts: Vec<&YamlOwned> =
        doc["groups"][2]["rules"].as_vec().unwrap().iter().filter(|r| r.contains_mapping_key("alert")).collect();
    assert!(alerts.iter().all(|a| !a["expr"].as_str().unwrap().contains("increase")));
    assert!(!strs(&doc["groups"][2]["rules"], "record").iter().any(|r| r.contains("increase")));
}

#[test]
fn scaled_windows_are_named_in_seconds() {
    let doc = load(&prometheus_rules(&[slo("weekly", spans(), days(7))]));
    let records = strs(&doc["groups"][0]["rules"], "record");
    // 5m, 30m, 1h, 2h, 6h, 1d, 3d scaled by 7/30.
    for w in ["70s", "7m", "14m", "28m", "84m", "336m", "1008m"] {
        assert!(records.contains(&format!("slo:sli_error:ratio_rate{w}")), "{w} in {records:?}");
    }
}

#[test]
fn time_slices_and_calendar_windows_are_said_in_comments() {
    let mut slices = slo("slices", spans(), days(30));
    slices.budgeting = Budgeting::Timeslices { slice: Duration::from_secs(60), slice_target: 0.9 };
    let mut calendar = slo("monthly", spans(), days(30));
    calendar.window =
        Window::Calendar { count: 1, unit: CalendarUnit::Month, time_zone: "UTC".into(), start_unix_s: 0 };
    let text = prometheus_rules(&[slices, calendar]);
    assert!(text.contains("# SLO slices: budgeted by time slices"), "{text}");
    assert!(text.contains("# SLO monthly: calendar window"), "{text}");
    let doc = load(&text);
    // Neither gets a period group: Prometheus cannot compute their budget exactly.
    assert_eq!(strs(&doc["groups"], "name"), ["slo-slices", "slo-monthly"]);
}

#[test]
fn reserved_and_invalid_label_names() {
    let mut s = slo("x", spans(), days(30));
    s.labels = vec![
        ("severity".into(), "low".into()),
        ("app.kubernetes.io/name".into(), "shop".into()),
        ("team".into(), "a".into()),
    ];
    let plan = Plan::new(&s);
    let names: Vec<&str> = plan.labels.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["slo", "service", "app_kubernetes_io_name", "team"]);
}

#[test]
fn promtool_tests_cover_every_tier_with_five_cases() {
    let s = slo("checkout", spans(), days(30));
    let doc = load(&promtool_tests(&[s], "rules.yaml").unwrap());
    assert_eq!(doc["rule_files"][0].as_str(), Some("rules.yaml"));
    let tests = doc["tests"].as_vec().unwrap();
    assert_eq!(tests.len(), 20, "per tier: quiet below, fires above, recovers, spike, low traffic");
    let names = strs(&doc["tests"], "name");
    for tier in ["page-fast", "page-slow", "ticket-fast", "ticket-slow"] {
        let mine: Vec<&String> = names.iter().filter(|n| n.starts_with(&format!("checkout {tier}:"))).collect();
        assert_eq!(mine.len(), 5, "{mine:?}");
    }
    for t in tests {
        let series = strs(&t["input_series"], "series");
        assert_eq!(
            series,
            [
                "obsbox_slo_events_total{kind=\"good\",slo=\"checkout\"}",
                "obsbox_slo_events_total{kind=\"total\",slo=\"checkout\"}"
            ]
        );
    }
    // The recovery case of page-fast expects page-fast firing, then not.
    let fires = tests
        .iter()
        .find(|t| {
            t["name"].as_str().unwrap().starts_with("checkout page-fast: fires")
                && t["name"].as_str().unwrap().contains("resolves")
        })
        .unwrap();
    let checks = fires["alert_rule_test"].as_vec().unwrap();
    let tiers = |c: &YamlOwned| -> Vec<String> {
        c["exp_alerts"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|a| a["exp_labels"]["tier"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(tiers(&checks[0]).contains(&"page-fast".to_string()));
    assert!(!tiers(&checks[1]).contains(&"page-fast".to_string()));
}

#[test]
fn metric_series_are_made_up_to_fit_the_selectors() {
    let s = slo(
        "api",
        metrics(r#"http_requests_total{job="api",code=~"5..|429"}"#, true, r#"http_requests_total{job="api"}"#),
        days(30),
    );
    let doc = load(&promtool_tests(&[s], "rules.yaml").unwrap());
    let series = strs(&doc["tests"][0]["input_series"], "series");
    assert_eq!(series, ["http_requests_total{code=\"500\",job=\"api\"}", "http_requests_total{job=\"api\"}"]);
}

#[test]
fn selectors_no_series_can_tell_apart_are_an_error() {
    let s = slo("same", metrics("requests_total", true, "requests_total"), days(30));
    let err = promtool_tests(&[s], "rules.yaml").unwrap_err().to_string();
    assert!(err.starts_with("slo same: no series"), "{err}");
    let s = slo("broken", metrics("rate(x[5m])", true, "x"), days(30));
    let err = promtool_tests(&[s], "rules.yaml").unwrap_err().to_string();
    assert!(err.contains("not an instant-vector selector"), "{err}");
}

#[test]
fn fixtures_are_found_for_common_targets_windows_and_guards() {
    for target in [0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999] {
        for window in [7, 14, 28, 30, 90] {
            for min_events in [0, 1, 100, 100_000] {
                let mut s = slo("x", spans(), days(window));
                s.target = target;
                s.min_events = min_events;
                s.tiers[1].alert_after = Duration::from_secs(300);
                let text = promtool_tests(&[s], "rules.yaml")
                    .unwrap_or_else(|e| panic!("target {target}, {window}d, min_events {min_events}: {e}"));
                load(&text);
            }
        }
    }
}
