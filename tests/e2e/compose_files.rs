//! docker-compose.yml, the Dockerfile and the configuration files they mount, checked without
//! Docker (none runs here): every service the issue names is there and wired to the others,
//! every mounted file exists, the Dockerfile builds what compose runs, Prometheus' rules pass
//! promtool and a real Alertmanager runs with the compose configuration.
//! tests/e2e/compose_stack.rs starts the services' commands themselves.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::compose::{Compose, OBSBOX_IMAGE, require_external, yaml_file};
use obsbox_demo::ServiceName;

/// Bind-mount sources that only exist once the SLO work is merged (checked from then on).
fn root() -> std::path::PathBuf {
    common::workspace_root()
}

#[test]
fn every_piece_of_the_stack_is_a_service() {
    let compose = Compose::load(&root());
    for name in ["obsbox", "rabbitmq", "prometheus", "alertmanager", "grafana", "loadgen"] {
        compose.service(name);
    }
    // Every demo service, run as `obsbox demo-service <name>` from the obsbox image.
    for s in ServiceName::ALL {
        let runs = compose
            .obsbox_services()
            .iter()
            .filter(|c| c.command().get(1).map(String::as_str) == Some(s.cli_name()))
            .count();
        let want = if s == ServiceName::Catalog { 2 } else { 1 };
        assert_eq!(runs, want, "services running `demo-service {}`", s.cli_name());
    }
    let obsbox = compose.service("obsbox");
    assert_eq!(obsbox.raw["build"], ".", "obsbox is built from the repository's Dockerfile");
    assert_eq!(obsbox.image(), Some(OBSBOX_IMAGE));
    let published: Vec<u16> = obsbox.ports().iter().map(|p| p.1).collect();
    assert_eq!(published, [4317, 4318, 16686]);
    for s in compose.obsbox_services() {
        let cmd = s.command();
        let env = s.environment();
        if s.name == "obsbox" {
            continue;
        }
        assert_eq!(cmd[0], "demo-service", "{}: {cmd:?}", s.name);
        assert_eq!(env["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://obsbox:4317", "{}", s.name);
        let arg = |flag: &str| cmd.windows(2).find(|w| w[0] == flag).map(|w| w[1].clone());
        assert_eq!(arg("--instance").as_deref(), Some(s.name.as_str()), "{}: instance id = service name", s.name);
        if cmd[1] != "registry" {
            assert_eq!(arg("--registry-url").as_deref(), Some("http://registry:8081"), "{}", s.name);
            assert!(s.depends_on().contains(&"registry".to_string()), "{} waits for the registry", s.name);
        }
        // Advertised URLs are what the other containers reach, on the port the service binds.
        if let (Some(port), Some(url)) = (arg("--port"), env.get("OBSBOX_DEMO_ADVERTISE_URL")) {
            assert_eq!(url, &format!("http://{}:{port}", s.name), "{}", s.name);
        }
        let amqp = arg("--amqp-url").unwrap_or_else(|| panic!("{}: events go through RabbitMQ", s.name));
        let rabbit = compose.service("rabbitmq").environment();
        let credentials = format!("{}:{}@", rabbit["RABBITMQ_DEFAULT_USER"], rabbit["RABBITMQ_DEFAULT_PASS"]);
        assert!(amqp.starts_with(&format!("amqp://{credentials}rabbitmq:5672/")), "{}: {amqp}", s.name);
        assert!(s.healthcheck().is_some() || s.healthcheck_disabled(), "{}: healthcheck", s.name);
    }
    assert_eq!(compose.service("api-gateway").ports(), [(8080, 8080)]);
    let grafana = compose.service("grafana");
    assert_eq!(grafana.ports(), [(3000, 3000)]);
}

#[test]
fn every_mounted_file_exists() {
    let compose = Compose::load(&root());
    let named: Vec<String> =
        compose.raw["volumes"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    for s in compose.services.values() {
        for m in s.mounts() {
            if !m.is_bind() {
                assert!(named.contains(&m.source), "{}: volume {} is not declared under volumes:", s.name, m.source);
                continue;
            }
            let path = compose.host_path(&m.source);
            assert!(path.exists(), "{}: mounted {} does not exist", s.name, path.display());
            assert!(m.read_only, "{}: configuration {} should be mounted read-only", s.name, m.source);
        }
    }
}

#[test]
fn obsbox_config_of_the_stack_is_accepted() {
    let compose = Compose::load(&root());
    let obsbox = compose.service("obsbox");
    let cmd = obsbox.command();
    assert_eq!(cmd[..2], ["--config".to_string(), "/etc/obsbox/obsbox.toml".to_string()]);
    let mount = obsbox.mounts().into_iter().find(|m| m.target == cmd[1]).expect("the config file is mounted");
    let config = obsbox::Config::from_file(&compose.host_path(&mount.source)).expect("obsbox reads the config");
    config.validate().expect("valid config");
    let slos = config.slo.dir.expect("[slo] dir");
    assert!(
        obsbox.mounts().iter().any(|m| std::path::Path::new(&m.target) == slos),
        "slo dir {} is mounted",
        slos.display()
    );
    assert_eq!(config.slo.notify.alertmanagers, ["http://alertmanager:9093"]);
    assert!(compose.services.contains_key("alertmanager"));
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') || (l.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = l.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(l);
        let (op, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((op.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_builds_the_binary_compose_runs_in_a_small_non_root_image() {
    let root = root();
    let steps = dockerfile();
    let froms: Vec<&String> = steps.iter().filter(|(op, _)| op == "FROM").map(|(_, a)| a).collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage: {froms:?}");
    assert!(froms[0].starts_with("rust:") && froms[0].ends_with(" AS builder"), "{}", froms[0]);
    let runtime = froms[1];
    assert!(runtime.starts_with("debian:") && runtime.ends_with("-slim"), "runtime image {runtime}");
    // The same Debian release in both stages: the binary links against the runtime's glibc.
    let release = runtime.trim_start_matches("debian:").trim_end_matches("-slim");
    assert!(froms[0].contains(&format!("-slim-{release} ")), "builder on {release}: {}", froms[0]);
    let runtime_at = steps.iter().position(|(op, a)| op == "FROM" && a == runtime).expect("runtime stage");

    for (i, (op, args)) in steps.iter().enumerate() {
        if op != "COPY" || args.starts_with("--from") {
            continue;
        }
        assert!(i < runtime_at, "the runtime stage copies only from the builder: COPY {args}");
        let parts: Vec<&str> = args.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(root.join(src).exists(), "COPY source {src} does not exist");
        }
    }
    // Every workspace member is in the build context the builder copies.
    let manifest: toml::Value = toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let copied: Vec<String> = steps.iter().filter(|(op, _)| op == "COPY").map(|(_, a)| a.clone()).collect();
    for member in manifest["workspace"]["members"].as_array().unwrap() {
        let m = member.as_str().unwrap();
        if m != "." {
            assert!(copied.iter().any(|c| c.split_whitespace().next() == Some(m)), "workspace member {m} not copied");
        }
    }
    let build = steps.iter().find(|(op, a)| op == "RUN" && a.contains("cargo build")).expect("a cargo build step");
    assert!(
        build.1.contains("--release") && build.1.contains("--locked") && build.1.contains("--bin obsbox"),
        "{}",
        build.1
    );
    assert!(build.1.contains("--mount=type=cache"), "cargo's registry and target/ in cache mounts");
    let from_builder: Vec<&String> =
        steps.iter().filter(|(op, a)| op == "COPY" && a.starts_with("--from=builder")).map(|(_, a)| a).collect();
    assert_eq!(from_builder.len(), 1, "only the binary goes into the runtime image: {from_builder:?}");
    assert!(from_builder[0].ends_with("/usr/local/bin/obsbox /usr/local/bin/obsbox"), "{}", from_builder[0]);

    let last = |op: &str| steps.iter().rev().find(|(o, _)| o == op).map(|(_, a)| a.clone()).unwrap_or_default();
    let user = last("USER");
    assert!(!user.is_empty() && user != "root" && user != "0", "runs as a non-root user, not {user:?}");
    assert_eq!(last("ENTRYPOINT"), r#"["obsbox"]"#, "compose's commands are obsbox's arguments");
    let exposed = last("EXPOSE");
    for port in ["4317", "4318", "16686", "8080-8089"] {
        assert!(exposed.split_whitespace().any(|p| p == port), "EXPOSE {port}: {exposed}");
    }
    assert!(last("HEALTHCHECK").contains("/readyz"), "HEALTHCHECK on /readyz");

    // Compose runs this image and nothing else for obsbox and the demo services; the data
    // directory it sets is the volume compose mounts.
    let compose = Compose::load(&root);
    assert_eq!(compose.obsbox_services().len(), 12, "obsbox, registry, 2 catalogs, 7 services, loadgen");
    let obsbox = compose.service("obsbox");
    let data_dir = &obsbox.environment()["OBSBOX_DATA_DIR"];
    assert!(obsbox.mounts().iter().any(|m| &m.target == data_dir && !m.is_bind()), "{data_dir} is a named volume");
    let env = last("ENV");
    assert!(env.contains(&format!("OBSBOX_DATA_DIR={data_dir}")), "the image's data dir is compose's: {env}");
    // The runtime user owns what the services write to.
    let run = steps.iter().skip(runtime_at).find(|(op, _)| op == "RUN").expect("runtime RUN").1.clone();
    assert!(run.contains("useradd") && run.contains(&format!("chown -R {user}:{user} /var/lib/obsbox")), "{run}");
    for s in compose.obsbox_services() {
        for (k, v) in s.environment() {
            if k.ends_with("_DATA_DIR") {
                assert!(v.starts_with("/var/lib/obsbox/"), "{}: {k}={v} must be writable by {user}", s.name);
            }
        }
    }
}

/// The target triple of the rustc next to the cargo running the tests.
fn host_triple() -> String {
    let rustc = std::path::Path::new(env!("CARGO")).with_file_name("rustc");
    let out = Command::new(rustc).arg("-vV").output().expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

/// What the builder stage copies is a whole workspace: cargo resolves it from the lock file
/// alone (every member and declared target present, Cargo.lock current), as `cargo build
/// --locked` in the image will.
#[test]
fn dockerfile_copies_a_complete_workspace() {
    let root = root();
    let tmp = tempfile::tempdir().unwrap();
    for (op, args) in dockerfile() {
        if op != "COPY" || args.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        let dest = parts[parts.len() - 1];
        for src in &parts[..parts.len() - 1] {
            let to = if dest.ends_with('/') || dest == "." { tmp.path().join(src) } else { tmp.path().join(dest) };
            copy_tree(&root.join(src), &to);
        }
    }
    // Filtered to this host's platform: unfiltered, cargo metadata wants the sources of every
    // locked package, including those for other platforms that no build here downloads.
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--locked", "--offline", "--format-version", "1", "--filter-platform", &host_triple()])
        .current_dir(tmp.path())
        .env("CARGO_TARGET_DIR", tmp.path().join("target"))
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata in the build context: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = meta["workspace_members"].as_array().unwrap();
    let bins: Vec<&str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| members.contains(&p["id"]))
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(bins, ["obsbox"], "the one binary the image runs");
}

/// Copies a file or a directory tree, leaving out what .dockerignore excludes from the context.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let name = from.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if matches!(name, "target" | "data" | ".git" | ".venv" | "__pycache__") {
        return;
    }
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

#[test]
fn dockerignore_keeps_build_output_and_data_out_of_the_context() {
    let text = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    let entries: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    for want in ["target/", "data/", ".git/", ".venv/"] {
        assert!(entries.contains(&want), ".dockerignore lacks {want}");
    }
}

#[test]
fn prometheus_rules_pass_promtool() {
    if !require_external("/usr/bin/promtool", "prometheus") {
        return;
    }
    let dir = root().join("dashboards/prometheus/rules");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(!files.is_empty());
    for f in files {
        let out = Command::new("/usr/bin/promtool").arg("check").arg("rules").arg(&f).output().expect("run promtool");
        assert!(
            out.status.success(),
            "promtool check rules {}: {}{}",
            f.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The rules `obsbox slo rules` writes for slos/ are the ones committed for Prometheus.
#[test]
fn slo_rules_file_is_what_obsbox_slo_rules_writes() {
    let root = root();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("slo.rules.yml");
    let status = Command::new(env!("CARGO_BIN_EXE_obsbox"))
        .args(["slo", "rules", "--dir"])
        .arg(root.join("slos"))
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run obsbox slo rules");
    assert!(status.success());
    let committed = std::fs::read_to_string(root.join("dashboards/prometheus/rules/slo.rules.yml"))
        .expect("dashboards/prometheus/rules/slo.rules.yml is committed");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        committed,
        "regenerate: obsbox slo rules --dir slos --out dashboards/prometheus/rules/slo.rules.yml"
    );
}

#[test]
fn alertmanager_runs_with_the_compose_config_and_takes_alerts() {
    if !require_external("/usr/bin/prometheus-alertmanager", "prometheus-alertmanager") {
        return;
    }
    let root = root();
    let config = root.join("dashboards/alertmanager/alertmanager.yml");
    let compose = Compose::load(&root);
    let am = compose.service("alertmanager");
    assert!(am.mounts().iter().any(|m| m.source == "./dashboards/alertmanager/alertmanager.yml"
        && am.command().contains(&format!("--config.file={}", m.target))));
    if std::path::Path::new("/usr/bin/amtool").exists() {
        let out = Command::new("/usr/bin/amtool").arg("check-config").arg(&config).output().expect("amtool");
        assert!(out.status.success(), "amtool check-config: {}", String::from_utf8_lossy(&out.stdout));
    }
    let doc = yaml_file(&config);
    let receivers: Vec<&str> = doc["receivers"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(receivers.contains(&doc["route"]["receiver"].as_str().unwrap()));
    // Every receiver delivers to obsbox's webhook route, on the OTLP/HTTP port obsbox listens on.
    let obsbox = compose.service("obsbox");
    let mount = obsbox.mounts().into_iter().find(|m| m.target == obsbox.command()[1]).expect("obsbox's config");
    let otlp_http = obsbox::Config::from_file(&compose.host_path(&mount.source)).unwrap().listen.otlp_http;
    let port = otlp_http.rsplit(':').next().unwrap();
    assert!(obsbox.ports().iter().any(|p| p.1.to_string() == port), "obsbox exposes {port}");
    for r in doc["receivers"].as_array().unwrap() {
        let urls: Vec<&str> =
            r["webhook_configs"].as_array().into_iter().flatten().filter_map(|w| w["url"].as_str()).collect();
        assert_eq!(urls, [format!("http://obsbox:{port}/v1/alertmanager")], "receiver {}", r["name"]);
    }

    let tmp = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let log = std::fs::File::create(tmp.path().join("alertmanager.log")).unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(
        Command::new("/usr/bin/prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", tmp.path().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start alertmanager"),
    );
    let client = reqwest::blocking::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if client.get(format!("{base}/-/ready")).send().is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "alertmanager exited with {status}: {}",
                std::fs::read_to_string(tmp.path().join("alertmanager.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "alertmanager not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    // An SLO page alert as obsbox and the generated rules label it.
    let alert = serde_json::json!([{
        "labels": {"alertname": "SLOBurnRate", "slo": "checkout-availability", "service": "orders", "severity": "page", "tier": "page-1h"},
        "annotations": {"summary": "burning"},
        "generatorURL": "http://localhost:16686/slos/checkout-availability"
    }]);
    let r = client.post(format!("{base}/api/v2/alerts")).json(&alert).send().expect("post alert");
    assert!(r.status().is_success(), "{}", r.status());
    let alerts: serde_json::Value = client.get(format!("{base}/api/v2/alerts")).send().unwrap().json().unwrap();
    let got = alerts.as_array().unwrap();
    assert_eq!(got.len(), 1, "{alerts}");
    assert_eq!(got[0]["labels"]["slo"], "checkout-availability");
    assert!(got[0]["receivers"].as_array().unwrap().iter().any(|r| r["name"] == doc["route"]["receiver"]));
}
