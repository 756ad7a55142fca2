//! obsbox on object storage, end to end (issue 11, DEPLOYMENT.md): a real 3-node Garage cluster
//! (replication factor 3), two ingesters behind nginx (`deploy/cluster/nginx.conf`), two
//! searchers and the compactor, each the obsbox binary run with its file from `deploy/cluster/`.
//! The Python OpenTelemetry SDK sends traces (OTLP/gRPC) and logs (OTLP/HTTP) through nginx and
//! records what was acknowledged (`tests/python/cluster_load.py`). Mid-load one Garage node and
//! one ingester are killed (SIGKILL); the ingester is restarted on its data. Then:
//! - both searchers return every acknowledged span and log record within 4 s of the load's end,
//!   while the last 10 s (`seal_interval`) are not shipped yet: they come from the ingesters;
//! - a searcher killed and restarted returns all of it again;
//! - once both ingesters have stopped (shipping what they held) and the compactor has merged,
//!   the object store alone holds all of it.
//!
//! Needs `garage` (`scripts/test.sh` installs it: `cargo install garage --locked`), nginx (Debian
//! `nginx-light`) and the Python SDK; each missing one fails the test with the way to install it,
//! unless `OBSBOX_SKIP_EXTERNAL=1`.

#[path = "../../cluster/tests/support/garage.rs"]
mod garage;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use garage::GarageCluster;

use crate::common::{self, free_port};

const SERVICE: &str = "cluster-e2e";
const NGINX: &str = "/usr/sbin/nginx";

/// Intervals short enough for a test; the files in `deploy/cluster/` keep production values.
const FAST: &str = r#"
seal_interval = "10s"
ship_interval = "500ms"
poll_interval = "1s"
heartbeat_interval = "500ms"
node_timeout = "3s"
call_timeout = "5s"
compaction_interval = "2s"
compaction_grace = "8s"
compaction_min_age = "2s"
"#;

/// One obsbox node: the binary with a config file from `deploy/cluster/`, rewritten.
struct Node {
    name: String,
    args: Vec<String>,
    child: Option<Child>,
    http: SocketAddr,
    log: PathBuf,
}

impl Node {
    /// `template` is `ingester`, `searcher` or `compactor`; `ports` = (grpc, http) for ingesters.
    fn new(dir: &Path, template: &str, name: &str, garage: &GarageCluster, endpoint: usize) -> Node {
        let root = common::workspace_root();
        let text =
            std::fs::read_to_string(root.join(format!("deploy/cluster/{template}.toml"))).expect("read template");
        let mut config: toml::Table = toml::from_str(&text).expect("deploy/cluster template parses");
        let http_port = free_port();
        {
            let cluster = config.get_mut("cluster").and_then(|c| c.as_table_mut()).expect("[cluster]");
            cluster.insert("node_id".into(), name.into());
            cluster.remove("advertise_url");
            for (k, v) in toml::from_str::<toml::Table>(FAST).expect("fast settings") {
                cluster.insert(k, v);
            }
        }
        let object_store: toml::Table =
            toml::from_str(&garage.object_store_toml(endpoint, "e2e")).expect("garage toml");
        config.insert("object_store".into(), object_store.into());
        config.remove("listen");
        let data_dir = dir.join(name);
        {
            let storage = config.get_mut("storage").and_then(|c| c.as_table_mut()).expect("[storage]");
            storage.insert("data_dir".into(), data_dir.display().to_string().into());
        }
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(&config).expect("config to toml")).expect("write config");
        let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().expect("addr");
        let mut args = vec!["--config".to_string(), path.display().to_string(), "--http-addr".into(), http.to_string()];
        if template == "ingester" {
            args.extend(["--otlp-grpc-addr".into(), format!("127.0.0.1:{}", free_port())]);
            args.extend(["--otlp-http-addr".into(), format!("127.0.0.1:{}", free_port())]);
        }
        Node { name: name.to_string(), args, child: None, http, log: dir.join(format!("{name}.log")) }
    }

    fn arg(&self, flag: &str) -> Option<SocketAddr> {
        let i = self.args.iter().position(|a| a == flag)?;
        self.args.get(i + 1)?.parse().ok()
    }

    fn otlp_grpc(&self) -> SocketAddr {
        self.arg("--otlp-grpc-addr").expect("an ingester")
    }

    fn otlp_http(&self) -> SocketAddr {
        self.arg("--otlp-http-addr").expect("an ingester")
    }

    fn start(&mut self) {
        let log = OpenOptions::new().create(true).append(true).open(&self.log).expect("open log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_obsbox"))
            .args(&self.args)
            .env_remove("OBSBOX_DATA_DIR")
            .env_remove("OBSBOX_HTTP_ADDR")
            .env_remove("OBSBOX_OTLP_GRPC_ADDR")
            .env_remove("OBSBOX_OTLP_HTTP_ADDR")
            .env("OBSBOX_LOG", "info,tantivy=warn,object_store=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn obsbox");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("listening ") {
                    let _ = tx.send(());
                }
            }
        });
        self.child = Some(child);
        if rx.recv_timeout(Duration::from_secs(90)).is_err() {
            self.kill();
            panic!("{} did not start:\n{}", self.name, self.log_tail());
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit (an ingester ships everything first).
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        // SAFETY: kill(2) on a child we own and have not reaped.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                assert!(status.success(), "{} exited with {status}:\n{}", self.name, self.log_tail());
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        panic!("{} did not stop within 60 s:\n{}", self.name, self.log_tail());
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text[text.len().saturating_sub(6000)..].to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// nginx with `deploy/cluster/nginx.conf`, its addresses and paths rewritten to loopback and a
/// temp dir.
struct Nginx {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nginx(dir: &Path, ingesters: &[&Node]) -> Nginx {
    let root = common::workspace_root();
    let text = std::fs::read_to_string(root.join("deploy/cluster/nginx.conf")).expect("read nginx.conf");
    let dir = dir.join("nginx");
    std::fs::create_dir_all(&dir).expect("nginx dir");
    // Worker processes may run as another user: they only need the temp paths.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (grpc, http) = (free_port(), free_port());
    let mut conf = String::new();
    for line in text.lines() {
        let t = line.trim();
        let indent = &line[..line.len() - line.trim_start().len()];
        let rewritten = if t.starts_with("error_log ") {
            format!("error_log {}/error.log warn;", dir.display())
        } else if t.starts_with("pid ") {
            format!("pid {}/nginx.pid;", dir.display())
        } else if t == "access_log off;" {
            format!(
                "access_log off;\n{indent}client_body_temp_path {d}/body;\n{indent}proxy_temp_path {d}/proxy;\n\
                 {indent}fastcgi_temp_path {d}/fastcgi;\n{indent}uwsgi_temp_path {d}/uwsgi;\n{indent}scgi_temp_path {d}/scgi;",
                d = dir.display()
            )
        } else if let Some(rest) = t.strip_prefix("server ingester-") {
            // `server ingester-N:PORT ...;`
            let (n, rest) = rest.split_once(':').expect("server ingester-N:PORT");
            let (port, tail) = rest.split_once(' ').expect("server options");
            let node = ingesters[n.parse::<usize>().expect("ingester number") - 1];
            let addr = if port == "4317" { node.otlp_grpc() } else { node.otlp_http() };
            format!("server {addr} {tail}")
        } else if t == "listen 4317 http2;" {
            format!("listen 127.0.0.1:{grpc} http2;")
        } else if t == "listen 4318;" {
            format!("listen 127.0.0.1:{http};")
        } else {
            t.to_string()
        };
        conf.push_str(indent);
        conf.push_str(&rewritten);
        conf.push('\n');
    }
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("write nginx.conf");
    let child = Command::new(NGINX)
        .args(["-c", &path.display().to_string(), "-p", &dir.display().to_string(), "-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nginx");
    let nginx = Nginx {
        child,
        grpc: format!("127.0.0.1:{grpc}").parse().expect("addr"),
        http: format!("127.0.0.1:{http}").parse().expect("addr"),
    };
    let up = common::wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(nginx.grpc).is_ok() && std::net::TcpStream::connect(nginx.http).is_ok()
    });
    assert!(up, "nginx did not listen; {}", std::fs::read_to_string(dir.join("error.log")).unwrap_or_default());
    nginx
}

/// What the SDK got acknowledged.
struct Acked {
    spans: BTreeMap<String, BTreeSet<String>>,
    logs: BTreeSet<i64>,
    failed_spans: usize,
    failed_logs: usize,
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

fn acked(out: &Path) -> Acked {
    let mut spans: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in read_lines(&out.join("acked_spans.txt")) {
        let (trace, span) = line.split_once(' ').expect("trace span");
        spans.entry(trace.to_string()).or_default().insert(span.to_string());
    }
    let logs = read_lines(&out.join("acked_logs.txt")).iter().map(|l| l.parse().expect("seq")).collect();
    Acked {
        spans,
        logs,
        failed_spans: read_lines(&out.join("failed_spans.txt")).len(),
        failed_logs: read_lines(&out.join("failed_logs.txt")).len(),
    }
}

fn get_json(http: &reqwest::blocking::Client, url: &str) -> Result<serde_json::Value, String> {
    let resp = http.get(url).send().map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let body = resp.text().map_err(|e| format!("GET {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET {url}: {e}: {body}"))
}

fn int_attr(record: &serde_json::Value, key: &str) -> Option<i64> {
    record["attributes"].as_array()?.iter().find(|kv| kv["key"] == key).and_then(|kv| {
        let v = &kv["value"]["intValue"];
        v.as_i64().or_else(|| v.as_str()?.parse().ok())
    })
}

/// What a searcher is missing of `acked` (empty: nothing).
fn missing(searcher: SocketAddr, acked: &Acked) -> Result<Vec<String>, String> {
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    let base = format!("http://{searcher}");
    let mut problems = Vec::new();
    // Every acknowledged trace, with at least as many spans as were acknowledged.
    let traces = get_json(&http, &format!("{base}/api/v1/traces?service={SERVICE}&limit=1000&lookback=1h"))?;
    let found: HashMap<String, u64> = traces["traces"]
        .as_array()
        .ok_or("no traces array")?
        .iter()
        .map(|t| (t["traceId"].as_str().unwrap_or_default().to_string(), t["spanCount"].as_u64().unwrap_or(0)))
        .collect();
    for (trace, spans) in &acked.spans {
        match found.get(trace) {
            None => problems.push(format!("trace {trace} not found")),
            Some(&n) if n < spans.len() as u64 => problems.push(format!("trace {trace}: {n} of {} spans", spans.len())),
            Some(_) => {}
        }
    }
    // Span by span, for a sample of traces.
    for (trace, spans) in acked.spans.iter().step_by((acked.spans.len() / 25).max(1)) {
        let t = get_json(&http, &format!("{base}/api/v1/traces/{trace}"))?;
        let ids: BTreeSet<String> = t["spans"]
            .as_array()
            .ok_or("no spans array")?
            .iter()
            .filter_map(|s| s["span"]["spanId"].as_str().map(str::to_lowercase))
            .collect();
        for span in spans.difference(&ids) {
            problems.push(format!("span {trace}/{span} not in its trace"));
        }
    }
    // Every acknowledged log record, paging through the newest-first list.
    let mut seqs = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/v1/logs?query=service:{SERVICE}&limit=5000&lookback=1h");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = get_json(&http, &url)?;
        for log in page["logs"].as_array().ok_or("no logs array")? {
            if let Some(seq) = int_attr(&log["record"], "log.seq") {
                seqs.insert(seq);
            }
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let lost: Vec<_> = acked.logs.difference(&seqs).collect();
    if !lost.is_empty() {
        problems.push(format!(
            "{} acknowledged log records missing, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        ));
    }
    Ok(problems)
}

/// Waits at most `within` until `searcher` returns everything acknowledged; panics with what is
/// missing.
fn assert_complete(what: &str, searcher: &Node, acked: &Acked, within: Duration) {
    let mut last = Ok(Vec::new());
    let started = Instant::now();
    let mut first = None;
    let done = common::wait_until(within, || {
        last = missing(searcher.http, acked);
        if first.is_none() {
            first = Some(format!("{:?}", last.as_ref().map(|p| p.iter().take(5).collect::<Vec<_>>())));
        }
        matches!(&last, Ok(p) if p.is_empty())
    });
    assert!(
        done,
        "{what}: {} misses acknowledged data: {:?}\n--- its log:\n{}",
        searcher.name,
        last.map(|p| p.into_iter().take(20).collect::<Vec<_>>()),
        searcher.log_tail()
    );
    eprintln!(
        "{what}: {} complete after {:?}; first check: {}",
        searcher.name,
        started.elapsed(),
        first.unwrap_or_default()
    );
}

fn segment_entries(garage: &GarageCluster) -> Vec<obsbox_cluster::SegmentEntry> {
    let config: obsbox_cluster::ObjectStoreConfig =
        toml::from_str(&garage.object_store_toml(1, "e2e")).expect("object store toml");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let store = obsbox_cluster::open_store(&config).expect("open the object store");
        obsbox_cluster::Metastore::new(store, "e2e").list_all(None).await.expect("list the metastore")
    })
}

#[test]
fn ingesters_searchers_and_compactor_on_garage_lose_nothing_acknowledged() {
    if !common::compose::require_external(NGINX, "nginx-light") {
        return;
    }
    let Some(mut garage) = GarageCluster::start() else { return };
    let python = common::python();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();

    let mut ingesters =
        [Node::new(dir, "ingester", "ingester-1", &garage, 0), Node::new(dir, "ingester", "ingester-2", &garage, 1)];
    let mut searchers =
        [Node::new(dir, "searcher", "searcher-1", &garage, 2), Node::new(dir, "searcher", "searcher-2", &garage, 1)];
    let mut compactor = Node::new(dir, "compactor", "compactor", &garage, 2);
    for node in ingesters.iter_mut().chain(searchers.iter_mut()).chain([&mut compactor]) {
        node.start();
    }
    let nginx = start_nginx(dir, &[&ingesters[0], &ingesters[1]]);

    // 30 s of load; one Garage node and one ingester die on the way.
    let out = dir.join("sent");
    let mut load = Command::new(&python)
        .arg(common::workspace_root().join("tests/python/cluster_load.py"))
        .arg(&out)
        .args(["--grpc", &nginx.grpc.to_string(), "--http", &nginx.http.to_string()])
        .args(["--service", SERVICE, "--seconds", "30", "--rate", "20"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(OpenOptions::new().create(true).append(true).open(dir.join("load.log")).expect("log")))
        .spawn()
        .expect("start the load");
    std::thread::sleep(Duration::from_secs(8));
    garage.kill_node(0);
    std::thread::sleep(Duration::from_secs(6));
    ingesters[0].kill();
    std::thread::sleep(Duration::from_secs(4));
    ingesters[0].start();
    let status = load.wait().expect("load exits");
    assert!(status.success(), "the load failed: {}", std::fs::read_to_string(dir.join("load.log")).unwrap_or_default());
    let acked = acked(&out);
    let sent_spans: usize = acked.spans.values().map(BTreeSet::len).sum();
    eprintln!(
        "acknowledged {sent_spans} spans in {} traces and {} log records; {} spans and {} records not acknowledged",
        acked.spans.len(),
        acked.logs.len(),
        acked.failed_spans,
        acked.failed_logs
    );
    assert!(sent_spans >= 1000 && acked.logs.len() >= 300, "too little got through: see {}", dir.display());

    // Searchable within the 2 s target (plus the check's own time): the last 10 s were not
    // shipped yet (seal_interval), so this needs the ingesters' answers, not only the bucket.
    for searcher in &searchers {
        assert_complete("right after the load", searcher, &acked, Duration::from_secs(4));
    }
    // A searcher keeps nothing that matters: killed and restarted, it answers the same.
    searchers[1].kill();
    searchers[1].start();
    assert_complete("after a searcher restart", &searchers[1], &acked, Duration::from_secs(30));

    // Stopped ingesters ship what they hold; then the object store alone has everything.
    garage.restart_node(0);
    for ingester in &mut ingesters {
        ingester.stop();
    }
    // A stopped ingester removed its heartbeat: a searcher that still had it in its list reads the
    // list again instead of failing the query.
    if let Err(e) = missing(searchers[0].http, &acked) {
        panic!("the first query after the ingesters stopped failed: {e}\n{}", searchers[0].log_tail());
    }
    let entries = segment_entries(&garage);
    for node in ["ingester-1", "ingester-2"] {
        assert!(entries.iter().any(|e| e.node_id == node), "no segment of {node} in the object store: {entries:?}");
    }
    // The compactor merges the small segments (and their inputs go after the grace period).
    let merged = common::wait_until(Duration::from_secs(60), || {
        segment_entries(&garage).iter().any(|e| e.node_id == "compactor" && !e.replaces.is_empty())
    });
    assert!(merged, "the compactor merged nothing:\n{}", compactor.log_tail());
    for searcher in &searchers {
        assert_complete("from the object store alone, after compaction", searcher, &acked, Duration::from_secs(30));
    }
    let collected = common::wait_until(Duration::from_secs(40), || {
        let all = segment_entries(&garage);
        let old_replaced: BTreeSet<String> =
            all.iter().filter(|e| e.created_ms + 12_000 < now_ms()).flat_map(|e| e.replaces.clone()).collect();
        !all.iter().any(|e| old_replaced.contains(&e.key))
    });
    assert!(collected, "merge inputs replaced longer ago than the grace period are still listed");
    assert_complete("after the merge inputs were deleted", &searchers[0], &acked, Duration::from_secs(30));
    compactor.stop();
    for searcher in &mut searchers {
        searcher.stop();
    }
}

fn now_ms() -> u64 {
    common::now_ns() / 1_000_000
}
