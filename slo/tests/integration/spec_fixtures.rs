//! Good and bad OpenSLO fixtures (`tests/fixtures/`). Each bad fixture's first line is
//! `# expect: <line>: <field>: <start of the message>`; the error must name that file, line and
//! field exactly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use obsbox_slo::spec::{self, parse_slos};
use obsbox_slo::{Budgeting, CalendarUnit, Severity, Sli, SloError, SpanGood, SpanSelector, Window};
use obsbox_storage::AttrValue;

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

#[test]
fn every_bad_fixture_names_file_line_and_field() {
    let mut failures = Vec::new();
    let files = fixtures("bad");
    assert!(files.len() >= 40, "{} bad fixtures", files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).expect("# expect: header");
        let (line, rest) = expect.split_once(": ").unwrap();
        let (field, message) = rest.split_once(": ").unwrap();
        let line: usize = line.parse().unwrap();
        match parse_slos(&path, &text) {
            Ok(slos) => failures.push(format!("{}: accepted ({} SLOs)", path.display(), slos.len())),
            Err(SloError::Spec { file, line: l, field: f, message: m }) => {
                if file != path || l != line || f != field || !m.starts_with(message) {
                    failures.push(format!(
                        "{}:\n  want {line}: {field}: {message}\n  got  {l}: {f}: {m}",
                        path.file_name().unwrap().to_string_lossy()
                    ));
                }
            }
            Err(other) => failures.push(format!("{}: not a spec error: {other}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn error_display_is_file_line_field_message() {
    let path = Path::new("slos/x.yaml");
    let e =
        parse_slos(path, "apiVersion: openslo/v1\nkind: SLO\nmetadata: {name: x}\nspec: {servce: a}\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "slos/x.yaml:4: spec.servce: unknown field `servce` (expected: description, service, indicator, \
         indicatorRef, timeWindow, budgetingMethod, objectives, alertPolicies)"
    );
}

#[test]
fn the_full_good_fixture_maps_every_field() {
    let path = fixtures("good").into_iter().find(|p| p.ends_with("full.yaml")).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let docs = spec::parse(&path, &text).unwrap();
    let kinds: Vec<_> = docs.iter().map(|d| (d.kind(), d.name(), d.line())).collect();
    assert_eq!(
        kinds,
        vec![
            ("Service", "payments", 2),
            ("SLI", "charges-fast", 10),
            ("AlertNotificationTarget", "oncall", 36),
            ("AlertCondition", "slow-burn", 44),
            ("AlertPolicy", "payments-policy", 57),
            ("SLO", "payments-fast", 83),
            ("SLO", "api-errors", 112),
        ]
    );
    let slos = parse_slos(&path, &text).unwrap();
    assert_eq!(slos.len(), 2);

    let p = &slos[0];
    assert_eq!(p.name, "payments-fast");
    assert_eq!(p.display_name, "Fast payments");
    assert_eq!(p.description, "Charges within 300 ms");
    assert_eq!(p.service, "payments");
    assert_eq!(p.objective_name, "fast enough");
    assert!((p.target - 0.995).abs() < 1e-12);
    assert_eq!(p.min_events, 50);
    assert_eq!(p.labels, vec![("plan".into(), "gold,silver".into()), ("team".into(), "payments".into())], "sorted");
    assert_eq!(p.source.file, path);
    assert_eq!(p.source.line, 83);
    assert_eq!(
        p.sli,
        Sli::Spans {
            selector: SpanSelector {
                service: Some("payments".into()),
                operation: Some("POST /payments".into()),
                kind: Some(2),
                attributes: vec![
                    ("http.request.method".into(), AttrValue::Str("POST".into())),
                    ("retry".into(), AttrValue::Int(0)),
                    ("sampled".into(), AttrValue::Bool(true)),
                    ("weight".into(), AttrValue::Float(0.5)),
                ],
            },
            good: SpanGood { no_error: true, max_duration: Some(Duration::from_millis(300)) },
        }
    );
    // 2024-01-01 00:00 in New York is 05:00 UTC.
    assert_eq!(
        p.window,
        Window::Calendar {
            count: 1,
            unit: CalendarUnit::Month,
            time_zone: "America/New_York".into(),
            start_unix_s: 1_704_085_200
        }
    );
    assert_eq!(p.budgeting, Budgeting::RatioTimeslices { slice: Duration::from_secs(300) });
    let tiers: Vec<_> = p
        .tiers
        .iter()
        .map(|t| (t.name.as_str(), t.severity, t.burn_rate, t.long, t.short, t.alert_after, t.webhooks.clone()))
        .collect();
    let hooks = vec!["http://hooks.example.com/oncall".to_string(), "http://127.0.0.1:9000/hook".to_string()];
    let h = |n: u64| Duration::from_secs(n * 3600);
    let m = |n: u64| Duration::from_secs(n * 60);
    assert_eq!(
        tiers,
        vec![
            ("fast-burn", Severity::Page, 10.0, h(2), m(15), Duration::ZERO, hooks.clone()),
            ("slow-burn", Severity::Ticket, 2.0, h(24), h(2), m(10), hooks),
        ],
        "highest burn rate first; default short window = long / 12"
    );

    let a = &slos[1];
    assert_eq!(a.display_name, "api-errors", "displayName defaults to the name");
    assert_eq!(
        a.sli,
        Sli::Metrics {
            numerator: r#"http_requests_total{job="api", code=~"5.."}"#.into(),
            numerator_is_bad: true,
            total: r#"http_requests_total{job="api"}"#.into(),
        }
    );
    assert_eq!(a.window, Window::Rolling(Duration::from_secs(28 * 86400)));
    assert_eq!(a.budgeting, Budgeting::Timeslices { slice: Duration::from_secs(3600), slice_target: 0.9 });
    assert_eq!(a.min_events, spec::DEFAULT_MIN_EVENTS);
    assert_eq!(a.tiers, obsbox_slo::Tier::workbook(Duration::from_secs(28 * 86400)), "no policies: the Workbook tiers");
}

#[test]
fn the_example_slos_of_the_demo_all_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../slos");
    let mut defs = obsbox_slo::Definitions::new(&dir);
    let report = defs.reload();
    assert!(report.errors.is_empty(), "{:?}", defs.errors());
    let names: Vec<String> = defs.slos().into_iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        ["catalog-latency", "checkout-latency", "gateway-availability", "payments-availability"].map(String::from)
    );
    let payments = defs.slos().into_iter().find(|s| s.name == "payments-availability").unwrap();
    assert_eq!(payments.tiers.len(), 3);
    assert_eq!(payments.min_events, 20);
    assert!((payments.target - 0.999).abs() < 1e-12);
    let catalog = defs.slos().into_iter().find(|s| s.name == "catalog-latency").unwrap();
    assert!(matches!(catalog.budgeting, Budgeting::Timeslices { .. }));
    assert!(matches!(catalog.sli, Sli::Metrics { .. }));
}
