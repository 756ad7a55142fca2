//! SLO definitions reload on SIGHUP: obsbox (the real binary) evaluates every 5 minutes, so only
//! the signal can make a new file show up within seconds; a broken file is reported with its
//! file, line and field while the SLOs it held before stay in force.

use crate::common;

use std::time::Duration;

use common::{spawn_binary, wait_until};
use serde_json::Value;

const SLO: &str = r#"apiVersion: openslo/v1
kind: SLO
metadata:
  name: NAME
spec:
  service: checkout
  indicator:
    metadata:
      name: NAME-sli
    spec:
      ratioMetric:
        counter: true
        good:
          metricSource:
            type: obsbox.spans
            spec:
              service: checkout
              status: not_error
        total:
          metricSource:
            type: obsbox.spans
            spec:
              service: checkout
  timeWindow:
    - duration: 28d
      isRolling: true
  budgetingMethod: Occurrences
  objectives:
    - target: 0.99
"#;

fn hup(pid: u32) {
    // SAFETY: kill(2) on the child process this test spawned and still owns.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGHUP);
    }
}

#[test]
fn sighup_reloads_the_slo_directory_and_a_bad_file_keeps_its_previous_slos() {
    let tmp = tempfile::tempdir().unwrap();
    let slos = tmp.path().join("slos");
    std::fs::create_dir(&slos).unwrap();
    std::fs::write(slos.join("a.yaml"), SLO.replace("NAME", "first")).unwrap();
    let config = tmp.path().join("obsbox.toml");
    std::fs::write(&config, format!("[slo]\ndir = {:?}\nevaluation_interval = \"5m\"\n", slos)).unwrap();
    let obsbox = spawn_binary(&tmp.path().join("data"), &["--config", config.to_str().unwrap()]);
    let client = reqwest::blocking::Client::new();
    let url = format!("http://{}/api/v1/slos", obsbox.addrs.http);
    let get = || -> Value { client.get(&url).send().unwrap().json().unwrap() };
    let names = |v: &Value| -> Vec<String> {
        v["slos"].as_array().into_iter().flatten().filter_map(|s| s["name"].as_str().map(str::to_owned)).collect()
    };
    assert!(wait_until(Duration::from_secs(20), || names(&get()) == ["first"]), "{}", get());

    std::fs::write(slos.join("b.yaml"), SLO.replace("NAME", "second")).unwrap();
    hup(obsbox.pid());
    assert!(
        wait_until(Duration::from_secs(10), || names(&get()) == ["first", "second"]),
        "the new file is in force after SIGHUP: {}; stderr:\n{}",
        get(),
        obsbox.stderr_tail()
    );

    std::fs::write(slos.join("b.yaml"), SLO.replace("NAME", "second").replace("target: 0.99", "target: 1.5")).unwrap();
    hup(obsbox.pid());
    let mut last = Value::Null;
    let reported = wait_until(Duration::from_secs(10), || {
        last = get();
        last["errors"].as_array().is_some_and(|e| !e.is_empty())
    });
    assert!(reported, "the broken file is reported: {last}");
    let error = last["errors"][0].as_str().unwrap();
    assert!(error.contains("b.yaml:") && error.contains("spec.objectives[0].target"), "file, line, field: {error}");
    assert_eq!(names(&last), ["first", "second"], "the broken file's previous SLO stays in force");
}
