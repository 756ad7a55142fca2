//! `Definitions` over a real directory: cross-file references, reload reports, a failing file
//! keeping its previous good SLOs, duplicate names, change detection.

use std::path::Path;

use obsbox_slo::{Definitions, Sli, SloError};

fn slo(name: &str, indicator: &str, target: f64) -> String {
    format!(
        "apiVersion: openslo/v1
kind: SLO
metadata:
  name: {name}
spec:
  service: shop
  indicatorRef: {indicator}
  timeWindow: [{{duration: 7d, isRolling: true}}]
  budgetingMethod: Occurrences
  objectives: [{{target: {target}}}]
"
    )
}

fn sli(name: &str, service: &str) -> String {
    format!(
        "apiVersion: openslo/v1
kind: SLI
metadata:
  name: {name}
spec:
  ratioMetric:
    good: {{metricSource: {{type: obsbox.spans, spec: {{service: {service}, status: not_error}}}}}}
    total: {{metricSource: {{type: obsbox.spans, spec: {{service: {service}}}}}}}
"
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn names(d: &Definitions) -> Vec<String> {
    d.slos().into_iter().map(|s| s.name).collect()
}

fn service_of(d: &Definitions, name: &str) -> Option<String> {
    d.slos().into_iter().find(|s| s.name == name).and_then(|s| match s.sli {
        Sli::Spans { selector, .. } => selector.service,
        Sli::Metrics { .. } => None,
    })
}

#[test]
fn missing_or_empty_directory_means_no_slos_and_no_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Definitions::new(tmp.path().join("absent"));
    assert!(d.changed_on_disk(), "never loaded");
    let r = d.reload();
    assert!(r.errors.is_empty() && !r.any_change());
    assert!(d.slos().is_empty() && d.errors().is_empty());
    assert!(!d.changed_on_disk());

    let mut d = Definitions::new(tmp.path());
    write(tmp.path(), "notes.txt", "not yaml at all: [");
    write(tmp.path(), ".hidden.yaml", "garbage: [");
    let r = d.reload();
    assert!(r.errors.is_empty(), "{:?}", d.errors());
    assert!(d.slos().is_empty());
}

#[test]
fn references_resolve_across_files_and_reloads_report_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(dir, "a-slos.yaml", &format!("{}---\n{}", slo("shop-b", "shop-ok", 0.99), slo("shop-a", "shop-ok", 0.99)));
    write(dir, "b-slis.yml", &sli("shop-ok", "shop"));
    let mut d = Definitions::new(dir);
    let r = d.reload();
    assert!(r.errors.is_empty(), "{:?}", d.errors());
    assert_eq!(r.added, ["shop-a", "shop-b"]);
    assert_eq!(names(&d), ["shop-a", "shop-b"], "sorted by name");
    assert_eq!(service_of(&d, "shop-a").as_deref(), Some("shop"));
    assert!(!d.changed_on_disk());

    // Change one SLO's target, drop the other.
    write(dir, "a-slos.yaml", &slo("shop-a", "shop-ok", 0.995));
    assert!(d.changed_on_disk());
    let r = d.reload();
    assert!(r.errors.is_empty(), "{:?}", d.errors());
    assert_eq!(
        (r.added.len(), r.changed.clone(), r.removed.clone()),
        (0, vec!["shop-a".into()], vec!["shop-b".into()])
    );
    assert!((d.slos()[0].target - 0.995).abs() < 1e-12);

    // A reload with nothing changed reports nothing.
    let r = d.reload();
    assert!(!r.any_change() && r.errors.is_empty());

    // Removing the file removes its SLOs.
    std::fs::remove_file(dir.join("a-slos.yaml")).unwrap();
    assert!(d.changed_on_disk());
    let r = d.reload();
    assert_eq!(r.removed, ["shop-a"]);
    assert!(d.slos().is_empty());
}

#[test]
fn a_failing_file_keeps_its_previous_good_slos_until_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(dir, "shop.yaml", &format!("{}---\n{}", sli("shop-ok", "shop"), slo("shop-a", "shop-ok", 0.99)));
    let mut d = Definitions::new(dir);
    assert!(d.reload().errors.is_empty());

    // Broken target: the error names file, line and field; the old SLO stays in force.
    write(dir, "shop.yaml", &format!("{}---\n{}", sli("shop-ok", "checkout"), slo("shop-a", "shop-ok", 1.5)));
    let r = d.reload();
    assert!(!r.any_change(), "{r:?}");
    let [SloError::Spec { file, line, field, message }] = r.errors.as_slice() else { panic!("{:?}", r.errors) };
    assert_eq!(file, &dir.join("shop.yaml"));
    assert_eq!((*line, field.as_str()), (19, "spec.objectives[0].target"));
    assert!(message.starts_with("must be between 0 and 1"), "{message}");
    assert_eq!(d.errors().len(), 1);
    assert!(d.errors()[0].contains("shop.yaml:19: spec.objectives[0].target"), "{:?}", d.errors());
    assert_eq!(service_of(&d, "shop-a").as_deref(), Some("shop"), "the whole file's previous version stays");

    // Invalid YAML: same.
    write(dir, "shop.yaml", "apiVersion: [");
    let r = d.reload();
    assert!(!r.any_change() && r.errors.len() == 1);
    assert_eq!(names(&d), ["shop-a"]);

    // Fixed: the new version replaces it and the error is gone.
    write(dir, "shop.yaml", &format!("{}---\n{}", sli("shop-ok", "checkout"), slo("shop-a", "shop-ok", 0.99)));
    let r = d.reload();
    assert!(r.errors.is_empty(), "{:?}", d.errors());
    assert_eq!(r.changed, ["shop-a"]);
    assert_eq!(service_of(&d, "shop-a").as_deref(), Some("checkout"));
    assert!(d.errors().is_empty());
}

#[test]
fn a_broken_or_removed_reference_keeps_the_previous_slo() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(dir, "a.yaml", &slo("shop-a", "shop-ok", 0.99));
    write(dir, "b.yaml", &sli("shop-ok", "shop"));
    let mut d = Definitions::new(dir);
    assert!(d.reload().errors.is_empty(), "{:?}", d.errors());

    // The SLI's file breaks: the SLO still resolves against the SLI's last good version.
    write(dir, "b.yaml", &sli("shop-ok", "Not A Valid: [service"));
    let r = d.reload();
    assert_eq!(r.errors.len(), 1, "{:?}", d.errors());
    assert!(d.errors()[0].contains("b.yaml"), "{:?}", d.errors());
    assert_eq!(service_of(&d, "shop-a").as_deref(), Some("shop"));

    // The SLI's file is removed: the SLO's reference dangles; its file fails and keeps its SLO.
    std::fs::remove_file(dir.join("b.yaml")).unwrap();
    let r = d.reload();
    assert!(!r.any_change());
    let [SloError::Spec { file, line, field, message }] = r.errors.as_slice() else { panic!("{:?}", r.errors) };
    assert_eq!((file, *line, field.as_str()), (&dir.join("a.yaml"), 7, "spec.indicatorRef"));
    assert!(message.contains("no SLI named \"shop-ok\""), "{message}");
    assert_eq!(names(&d), ["shop-a"]);
}

#[test]
fn of_two_slos_with_one_name_the_later_file_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(dir, "a.yaml", &format!("{}---\n{}", sli("one", "first"), slo("dup", "one", 0.99)));
    write(dir, "b.yaml", &format!("{}---\n{}", sli("two", "second"), slo("dup", "two", 0.9)));
    let mut d = Definitions::new(dir);
    let r = d.reload();
    assert_eq!(r.added, ["dup"]);
    assert_eq!(service_of(&d, "dup").as_deref(), Some("first"));
    let [SloError::Spec { file, line, field, message }] = r.errors.as_slice() else { panic!("{:?}", r.errors) };
    assert_eq!((file, *line, field.as_str()), (&dir.join("b.yaml"), 13, "metadata.name"));
    assert!(message.starts_with("another SLO is named \"dup\""), "{message}");
}

#[test]
fn changed_on_disk_sees_new_files_and_rewrites() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut d = Definitions::new(dir);
    d.reload();
    assert!(!d.changed_on_disk());
    write(dir, "a.yaml", &sli("x", "y"));
    assert!(d.changed_on_disk(), "new file");
    d.reload();
    assert!(!d.changed_on_disk());
    write(dir, "a.yaml", &sli("x", "yz"));
    assert!(d.changed_on_disk(), "rewritten");
    d.reload();
    write(dir, "other.txt", "x");
    assert!(!d.changed_on_disk(), "files that are not YAML do not count");
}

#[test]
fn definitions_are_the_engines_slo_source() {
    use obsbox_slo::SloSource;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(dir, "a.yaml", &format!("{}---\n{}", sli("ok", "shop"), slo("shop-a", "ok", 0.99)));
    write(dir, "b.yaml", &slo("shop-b", "missing", 0.99));
    let mut source: Box<dyn SloSource> = Box::new(Definitions::new(dir));
    assert!(source.changed(), "never loaded");
    let (slos, errors) = source.reload();
    assert_eq!(slos.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["shop-a"]);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("b.yaml:7: spec.indicatorRef: no SLI named \"missing\""), "{errors:?}");
    assert!(!source.changed());
    std::fs::remove_file(dir.join("b.yaml")).unwrap();
    assert!(source.changed());
    let (slos, errors) = source.reload();
    assert_eq!((slos.len(), errors.len()), (1, 0));
}
