//! A real 3-node Garage cluster on loopback for tests: replication factor 3, every node's config
//! listing the other two in `bootstrap_peers`, one bucket and one key with read/write on it.
//!
//! Include it from any test crate with
//! `#[path = "<relative path to>/cluster/tests/support/garage.rs"] mod garage;` (it uses only std
//! and serde_json). The `garage` binary is `$OBSBOX_GARAGE` or `~/.cargo/bin/garage`; when absent
//! [`GarageCluster::start`] panics with the command that installs it, unless
//! `OBSBOX_SKIP_EXTERNAL=1`, where it returns `None`. Every node is killed when the cluster is
//! dropped; the data lives in a temp dir deleted with it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The version `scripts/test.sh` installs.
pub const GARAGE_VERSION: &str = "2.5.0";
/// The S3 region of the cluster.
pub const REGION: &str = "garage";
/// The bucket created for the tests.
pub const BUCKET: &str = "obsbox";

const RPC_SECRET: &str = "5c1915fa04d0b6739675c61bf5907eb0fe3d9c69850c83820f51b4d25d13868c";
const START_TIMEOUT: Duration = Duration::from_secs(60);

struct Node {
    dir: PathBuf,
    config: PathBuf,
    rpc_port: u16,
    s3_port: u16,
    admin_port: u16,
    id: String,
    child: Option<Child>,
}

/// A running 3-node cluster.
pub struct GarageCluster {
    bin: PathBuf,
    _dir: TempDir,
    nodes: Vec<Node>,
    /// The access key id with read/write on [`BUCKET`].
    pub key_id: String,
    /// Its secret.
    pub secret: String,
}

/// The `garage` binary, or `None` when it is absent and `OBSBOX_SKIP_EXTERNAL=1`.
pub fn garage_binary() -> Option<PathBuf> {
    let path = match std::env::var_os("OBSBOX_GARAGE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo/bin/garage"),
    };
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("OBSBOX_SKIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!("skipping: no garage at {} (OBSBOX_SKIP_EXTERNAL=1)", path.display());
        return None;
    }
    panic!(
        "garage not found at {} (set OBSBOX_GARAGE to use another): install it with \
         `cargo install garage --locked --version {GARAGE_VERSION}` (scripts/test.sh does), \
         or set OBSBOX_SKIP_EXTERNAL=1 to skip the tests that need it",
        path.display()
    );
}

/// A temp dir removed on drop (no dependency on the tempfile crate, so any test crate can include
/// this file).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "obsbox-garage-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create garage temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Ports from the OS, all held at once so they differ, then released for garage to bind.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0")).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "garage: timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Node {
    fn write_config(&self, peers: &[String]) {
        let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
        let text = format!(
            r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "lmdb"
replication_factor = 3
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{RPC_SECRET}"
bootstrap_peers = [{peers}]

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "obsbox-test-admin-token"
"#,
            dir = self.dir.display(),
            rpc = self.rpc_port,
            s3 = self.s3_port,
            admin = self.admin_port,
            peers = peers.join(", "),
        );
        std::fs::write(&self.config, text).expect("write garage config");
    }

    fn start(&mut self, bin: &Path) {
        assert!(self.child.is_none(), "node already running");
        let log = |name: &str| std::fs::File::create(self.dir.join(name)).expect("garage log file");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .stdout(log("stdout.log"))
            .stderr(log("stderr.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Also when `start` fails half-way: no garage process outlives the test.
impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl GarageCluster {
    /// Starts the cluster and sets it up (layout, bucket, key); `None` when garage is absent and
    /// `OBSBOX_SKIP_EXTERNAL=1`. Takes a few seconds.
    pub fn start() -> Option<GarageCluster> {
        let bin = garage_binary()?;
        let dir = TempDir::new();
        let ports = free_ports(9);
        let mut nodes: Vec<Node> = (0..3)
            .map(|i| {
                let ndir = dir.0.join(format!("node{i}"));
                std::fs::create_dir_all(&ndir).unwrap();
                Node {
                    config: ndir.join("garage.toml"),
                    dir: ndir,
                    rpc_port: ports[3 * i],
                    s3_port: ports[3 * i + 1],
                    admin_port: ports[3 * i + 2],
                    id: String::new(),
                    child: None,
                }
            })
            .collect();
        // A node's id is its key pair's public half, made at its first start: start each alone
        // once to learn the ids, then write the real configs with bootstrap_peers.
        for node in &mut nodes {
            node.write_config(&[]);
            node.start(&bin);
        }
        for node in &mut nodes {
            let config = node.config.clone();
            node.id = wait_until("node id", START_TIMEOUT, || {
                let out = Command::new(&bin).arg("-c").arg(&config).args(["node", "id", "-q"]).output().ok()?;
                let id = String::from_utf8(out.stdout).ok()?.trim().to_string();
                (out.status.success() && id.contains('@')).then_some(id)
            });
        }
        for node in &mut nodes {
            node.kill();
        }
        let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            let peers: Vec<String> =
                ids.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, id)| id.clone()).collect();
            node.write_config(&peers);
            node.start(&bin);
        }
        let mut cluster = GarageCluster { bin, _dir: dir, nodes, key_id: String::new(), secret: String::new() };
        cluster.wait_all_up(0);
        for (i, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap();
            cluster.cli(0, &["layout", "assign", "-z", &format!("zone{i}"), "-c", "1G", short]);
        }
        cluster.cli(0, &["layout", "apply", "--version", "1"]);
        let bucket = cluster.json_api(0, "CreateBucket", &format!(r#"{{"globalAlias":"{BUCKET}"}}"#));
        let bucket_id = bucket["id"].as_str().expect("bucket id").to_string();
        let key = cluster.json_api(0, "CreateKey", r#"{"name":"obsbox-test"}"#);
        cluster.key_id = key["accessKeyId"].as_str().expect("accessKeyId").to_string();
        cluster.secret = key["secretAccessKey"].as_str().expect("secretAccessKey").to_string();
        cluster.json_api(
            0,
            "AllowBucketKey",
            &format!(
                r#"{{"bucketId":"{bucket_id}","accessKeyId":"{}","permissions":{{"read":true,"write":true,"owner":true}}}}"#,
                cluster.key_id
            ),
        );
        for i in 0..3 {
            cluster.wait_s3(i);
        }
        cluster.wait_healthy(0);
        Some(cluster)
    }

    /// The S3 endpoint of node `i` (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    /// Every node's S3 endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.endpoint(i)).collect()
    }

    /// An `[object_store]` config section (TOML) for obsbox against node `i`'s endpoint, with the
    /// other nodes as `failover_endpoints` (so it goes on when node `i` is down).
    pub fn object_store_toml(&self, i: usize, prefix: &str) -> String {
        let failover: Vec<String> =
            (0..self.nodes.len()).filter(|&j| j != i).map(|j| format!("\"{}\"", self.endpoint(j))).collect();
        format!(
            "kind = \"s3\"\nendpoint = \"{}\"\nfailover_endpoints = [{}]\nregion = \"{REGION}\"\n\
             bucket = \"{BUCKET}\"\nprefix = \"{prefix}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n\
             allow_http = true\n",
            self.endpoint(i),
            failover.join(", "),
            self.key_id,
            self.secret
        )
    }

    /// Kills node `i` (SIGKILL, no clean shutdown).
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Restarts node `i` with its data and waits until it sees every running node up.
    pub fn restart_node(&mut self, i: usize) {
        let bin = self.bin.clone();
        self.nodes[i].start(&bin);
        self.wait_all_up(i);
        self.wait_s3(i);
        self.wait_healthy(i);
    }

    /// Whether node `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    fn command(&self, node: usize) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(&self.nodes[node].config).env("RUST_LOG", "garage=warn");
        cmd
    }

    fn cli(&self, node: usize, args: &[&str]) -> String {
        let out = self.command(node).args(args).output().expect("run garage");
        assert!(
            out.status.success(),
            "garage {args:?} failed: {}\n{}\nnode log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.nodes[node].stderr_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Calls the admin API through the CLI (`garage json-api`), returns its JSON answer.
    fn json_api(&self, node: usize, endpoint: &str, payload: &str) -> serde_json::Value {
        let out = self.cli(node, &["json-api", endpoint, payload]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("garage json-api {endpoint}: {e}: {out}"))
    }

    /// Waits until node `via` sees every running node up.
    fn wait_all_up(&self, via: usize) {
        let want = self.nodes.iter().filter(|n| n.child.is_some()).count();
        wait_until("every node up", START_TIMEOUT, || {
            let out = self.command(via).args(["json-api", "GetClusterStatus"]).output().ok()?;
            if !out.status.success() {
                return None;
            }
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let up = status["nodes"].as_array()?.iter().filter(|n| n["isUp"] == true).count();
            (up >= want).then_some(())
        });
    }

    /// Waits until node `via` reports the cluster healthy: the layout applied and every partition
    /// with all its nodes up (so S3 answers at once, with no "layout not ready" refusals).
    fn wait_healthy(&self, via: usize) {
        wait_until("a healthy cluster", START_TIMEOUT, || {
            let out = self.command(via).args(["json-api", "GetClusterHealth"]).output().ok()?;
            let health: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let all_ok = health["partitions"].as_u64()? > 0 && health["partitionsAllOk"] == health["partitions"];
            (health["status"] == "healthy" && all_ok).then_some(())
        });
    }

    /// Waits until node `i`'s S3 port accepts connections.
    fn wait_s3(&self, i: usize) {
        let addr = format!("127.0.0.1:{}", self.nodes[i].s3_port);
        wait_until("the S3 api", START_TIMEOUT, || std::net::TcpStream::connect(&addr).ok().map(|_| ()));
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}
