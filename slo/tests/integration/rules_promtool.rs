//! The generated Prometheus rules and their fixtures through the real `promtool` (Debian
//! package `prometheus`): `promtool check rules` and `promtool test rules` must pass for a set
//! of SLOs covering span and metric SLIs, good and bad numerators, 7d/28d/30d rolling and
//! calendar windows, time slices, default and custom tiers, labels, a tier that cannot fire, and
//! two SLOs on one counter.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use obsbox_slo::{
    Budgeting, CalendarUnit, Severity, Sli, Slo, Source, SpanGood, SpanSelector, Tier, Window, prometheus_rules,
    promtool_tests,
};

const PROMTOOL: &str = "/usr/bin/promtool";

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

fn slo(name: &str, sli: Sli, window: Window) -> Slo {
    let tiers = Tier::workbook(window.nominal());
    Slo {
        name: name.into(),
        display_name: name.into(),
        description: String::new(),
        service: "shop".into(),
        sli,
        target: 0.999,
        objective_name: String::new(),
        window,
        budgeting: Budgeting::Occurrences,
        tiers,
        min_events: 20,
        labels: vec![],
        source: Source { file: PathBuf::from("slos/shop.yaml"), line: 1 },
    }
}

fn metrics(numerator: &str, numerator_is_bad: bool, total: &str) -> Sli {
    Sli::Metrics { numerator: numerator.into(), numerator_is_bad, total: total.into() }
}

fn spans() -> Sli {
    Sli::Spans {
        selector: SpanSelector { service: Some("checkout".into()), ..Default::default() },
        good: SpanGood { no_error: true, max_duration: Some(Duration::from_millis(300)) },
    }
}

/// The SLO set every test here runs on.
pub fn slos() -> Vec<Slo> {
    let mut checkout = slo("checkout-availability", spans(), Window::Rolling(days(30)));
    checkout.labels = vec![("team".into(), "payments".into()), ("app.kubernetes.io/part-of".into(), "shop".into())];
    checkout.display_name = "Checkout {{ availability }}".into();

    let api = slo(
        "api-errors",
        metrics(r#"http_requests_total{job="api",code=~"5.."}"#, true, r#"http_requests_total{job="api"}"#),
        Window::Rolling(days(28)),
    );
    let mut api_99 = api.clone();
    api_99.name = "api-errors-99".into();
    api_99.target = 0.99;
    api_99.min_events = 0;

    let latency = slo(
        "api-latency",
        metrics(
            r#"http_request_duration_seconds_bucket{job="api",le="0.3"}"#,
            false,
            r#"http_request_duration_seconds_count{job="api"}"#,
        ),
        Window::Rolling(days(7)),
    );

    let mut search = slo(
        "search-monthly",
        metrics(r#"search_requests_total{status!~"5..|429"}"#, false, "search_requests_total"),
        Window::Calendar { count: 1, unit: CalendarUnit::Month, time_zone: "Europe/Paris".into(), start_unix_s: 0 },
    );
    search.target = 0.995;

    let mut slices = slo("payments-slices", spans(), Window::Rolling(days(30)));
    slices.budgeting = Budgeting::Timeslices { slice: Duration::from_secs(300), slice_target: 0.95 };
    slices.target = 0.99;
    slices.tiers = vec![
        Tier {
            name: "page".into(),
            severity: Severity::Page,
            burn_rate: 10.0,
            long: Duration::from_secs(7200),
            short: Duration::from_secs(600),
            alert_after: Duration::from_secs(300),
            webhooks: Vec::new(),
        },
        Tier {
            name: "ticket".into(),
            severity: Severity::Ticket,
            burn_rate: 2.0,
            long: days(1),
            short: Duration::from_secs(7200),
            alert_after: Duration::ZERO,
            webhooks: Vec::new(),
        },
    ];
    // A loose target: the page-fast tier's threshold error ratio (1.44) cannot be reached.
    let mut batch = slo(
        "batch-jobs",
        metrics(r#"jobs_total{result="failed"}"#, true, r#"jobs_total{result=~"ok|failed"}"#),
        Window::Rolling(days(14)),
    );
    batch.target = 0.9;
    batch.min_events = 1;
    vec![checkout, api, api_99, latency, search, slices, batch]
}

fn promtool() -> Option<&'static str> {
    if Path::new(PROMTOOL).exists() {
        return Some(PROMTOOL);
    }
    if std::env::var("OBSBOX_SKIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!("skipping: {PROMTOOL} missing and OBSBOX_SKIP_EXTERNAL=1");
        return None;
    }
    panic!("{PROMTOOL} is missing: install the Debian package `prometheus` (or set OBSBOX_SKIP_EXTERNAL=1)");
}

fn promtool_run(args: &[&str], dir: &Path) -> std::process::Output {
    let started = Instant::now();
    let out = Command::new(PROMTOOL).args(args).current_dir(dir).output().expect("running promtool");
    eprintln!("promtool {} took {:.1?}", args.join(" "), started.elapsed());
    out
}

fn run(args: &[&str], dir: &Path) {
    let out = promtool_run(args, dir);
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(dir: &Path, slos: &[Slo]) {
    std::fs::write(dir.join("slo-rules.yaml"), prometheus_rules(slos)).unwrap();
    std::fs::write(dir.join("slo-rules.test.yaml"), promtool_tests(slos, "slo-rules.yaml").unwrap()).unwrap();
}

#[test]
fn promtool_checks_the_generated_rules() {
    if promtool().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &slos());
    run(&["check", "rules", "slo-rules.yaml"], dir.path());
}

/// One rule file and one test file per SLO (promtool evaluates every rule of the file at every
/// step, so this is how a long list of SLOs stays fast to test).
#[test]
fn promtool_tests_pass_for_every_tier() {
    if promtool().is_none() {
        return;
    }
    let keep = std::env::var("OBSBOX_RULES_KEEP").ok();
    for slo in slos() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), std::slice::from_ref(&slo));
        if let Some(keep) = &keep {
            let keep = Path::new(keep).join(&slo.name);
            std::fs::create_dir_all(&keep).unwrap();
            write(&keep, std::slice::from_ref(&slo));
        }
        run(&["test", "rules", "slo-rules.test.yaml"], dir.path());
    }
}

/// Two SLOs over the same counters in one file: each one's fixtures expect the other's alerts
/// too (the 99.9% SLO's page inputs burn the 99% SLO's budget as well).
#[test]
fn slos_reading_the_same_series_expect_each_others_alerts() {
    if promtool().is_none() {
        return;
    }
    let pair: Vec<Slo> = slos().into_iter().filter(|s| s.name.starts_with("api-errors")).collect();
    assert_eq!(pair.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &pair);
    let tests = std::fs::read_to_string(dir.path().join("slo-rules.test.yaml")).unwrap();
    // A test of api-errors expects an alert of api-errors-99.
    assert!(
        tests.split("\n  - name: ").any(|t| t.starts_with("\"api-errors ") && t.contains("slo: api-errors-99")),
        "no api-errors test expects an api-errors-99 alert"
    );
    run(&["test", "rules", "slo-rules.test.yaml"], dir.path());
}

/// The fixtures are not vacuous: rules that alert at a wrong threshold, without the short window
/// or without the guard fail them.
#[test]
fn promtool_tests_fail_on_rules_that_alert_wrongly() {
    if promtool().is_none() {
        return;
    }
    let s = slo("weekly", spans(), Window::Rolling(days(7)));
    let dir = tempfile::tempdir().unwrap();
    let rules = prometheus_rules(std::slice::from_ref(&s));
    std::fs::write(dir.path().join("slo-rules.test.yaml"), promtool_tests(&[s], "slo-rules.yaml").unwrap()).unwrap();
    std::fs::write(dir.path().join("slo-rules.yaml"), &rules).unwrap();
    run(&["test", "rules", "slo-rules.test.yaml"], dir.path());
    let short = r#"ratio_rate70s{slo="weekly"} >="#;
    for (what, from, to) in [
        ("a page threshold 4% too high", "(14.4 * (1 - 0.999))", "(15 * (1 - 0.999))"),
        ("a page threshold 3% too low", "(14.4 * (1 - 0.999))", "(14 * (1 - 0.999))"),
        ("the long window in place of the short one", short, r#"ratio_rate14m{slo="weekly"} >="#),
        ("no low-traffic guard", ">= 20)", ">= 0)"),
    ] {
        assert!(rules.contains(from), "{from} in\n{rules}");
        std::fs::write(dir.path().join("slo-rules.yaml"), rules.replace(from, to)).unwrap();
        let out = promtool_run(&["test", "rules", "slo-rules.test.yaml"], dir.path());
        assert!(
            !out.status.success(),
            "promtool test passed rules with {what}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// The SLOs shipped in `slos/` (the demo's, several with the same tier names): their rules pass
/// `promtool check rules`, lint included, and their fixtures pass `promtool test rules`.
#[test]
fn the_repositorys_slos_pass_promtool() {
    if promtool().is_none() {
        return;
    }
    let mut defs = obsbox_slo::Definitions::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../slos"));
    defs.reload();
    assert!(defs.errors().is_empty(), "{:?}", defs.errors());
    let slos = defs.slos();
    assert!(slos.len() >= 4, "{} SLOs", slos.len());
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &slos);
    run(&["check", "rules", "slo-rules.yaml"], dir.path());
    run(&["test", "rules", "slo-rules.test.yaml"], dir.path());
}
