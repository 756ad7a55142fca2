//! docker-compose.yml and the files it mounts, read as the tests need them, and the rewriting that
//! runs a compose service outside Docker: service host names become 127.0.0.1, every port a
//! service listens on a free loopback port, mounted files their (rewritten) repository copies,
//! the containers' writable directories temporary ones.
//!
//! YAML is read with saphyr (the YAML crate `obsbox-slo` uses) into `serde_json::Value`, with the
//! `<<` merge keys Compose files use resolved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use saphyr::{LoadableYamlNode, Scalar, Yaml};
use serde_json::{Map, Value};

/// Parses the first YAML document of `text` into JSON values, resolving `<<` merge keys.
pub fn yaml(text: &str) -> Result<Value, String> {
    let docs = Yaml::load_from_str(text).map_err(|e| e.to_string())?;
    let doc = docs.into_iter().next().ok_or("empty YAML document")?;
    to_json(&doc)
}

/// Reads and parses a YAML file, failing the test with the file name.
pub fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    yaml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn scalar(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::from(*i),
        Scalar::FloatingPoint(f) => Value::from(f.into_inner()),
        Scalar::String(s) => Value::String(s.to_string()),
    }
}

fn to_json(y: &Yaml<'_>) -> Result<Value, String> {
    Ok(match y {
        Yaml::Value(s) => scalar(s),
        Yaml::Representation(text, _, _) => Value::String(text.to_string()),
        Yaml::Sequence(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Yaml::Mapping(m) => {
            let mut out = Map::new();
            let mut merged = Vec::new();
            for (k, v) in m {
                let key = match to_json(k)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                if key == "<<" {
                    match to_json(v)? {
                        Value::Object(o) => merged.push(o),
                        Value::Array(list) => {
                            for o in list {
                                match o {
                                    Value::Object(o) => merged.push(o),
                                    other => return Err(format!("merge key with a non-mapping {other}")),
                                }
                            }
                        }
                        other => return Err(format!("merge key with a non-mapping {other}")),
                    }
                } else {
                    out.insert(key, to_json(v)?);
                }
            }
            // Explicit keys win over merged ones; earlier merged mappings over later ones.
            for o in merged {
                for (k, v) in o {
                    out.entry(k).or_insert(v);
                }
            }
            Value::Object(out)
        }
        Yaml::Tagged(_, inner) => to_json(inner)?,
        Yaml::Alias(_) => return Err("unresolved YAML alias".into()),
        Yaml::BadValue => return Err("bad YAML value".into()),
    })
}

/// A bind mount or named volume of a service.
#[derive(Clone, Debug)]
pub struct Mount {
    /// `./path` (bind mount, relative to the compose file) or a named volume.
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// `:ro`.
    pub read_only: bool,
}

impl Mount {
    /// Whether this is a bind mount of a repository path.
    pub fn is_bind(&self) -> bool {
        self.source.starts_with("./") || self.source.starts_with('/')
    }
}

/// One compose service.
#[derive(Clone, Debug)]
pub struct Service {
    /// Its name (also its host name on the compose network).
    pub name: String,
    /// The raw definition.
    pub raw: Value,
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(value_string).collect(),
        Value::Null => Vec::new(),
        other => vec![value_string(other)],
    }
}

fn value_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Service {
    /// `image`.
    pub fn image(&self) -> Option<&str> {
        self.raw["image"].as_str()
    }

    /// `command` as a list (the compose file writes every command in exec form).
    pub fn command(&self) -> Vec<String> {
        assert!(
            !self.raw["command"].is_string(),
            "service {}: write `command` as a list (exec form), not a shell string",
            self.name
        );
        strings(&self.raw["command"])
    }

    /// `environment` (mapping form).
    pub fn environment(&self) -> BTreeMap<String, String> {
        match &self.raw["environment"] {
            Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), value_string(v))).collect(),
            Value::Null => BTreeMap::new(),
            other => panic!("service {}: environment must be a mapping, not {other}", self.name),
        }
    }

    /// `ports` as (host port, container port).
    pub fn ports(&self) -> Vec<(u16, u16)> {
        strings(&self.raw["ports"])
            .iter()
            .map(|p| {
                let (host, container) = p
                    .rsplit_once(':')
                    .unwrap_or_else(|| panic!("service {}: port {p:?} is not HOST:CONTAINER", self.name));
                let host = host.rsplit(':').next().unwrap_or(host);
                (
                    host.parse().unwrap_or_else(|_| panic!("service {}: bad host port in {p:?}", self.name)),
                    container.parse().unwrap_or_else(|_| panic!("service {}: bad container port in {p:?}", self.name)),
                )
            })
            .collect()
    }

    /// `volumes` (short syntax `source:target[:ro]`).
    pub fn mounts(&self) -> Vec<Mount> {
        strings(&self.raw["volumes"])
            .iter()
            .map(|v| {
                let parts: Vec<&str> = v.split(':').collect();
                assert!(parts.len() >= 2, "service {}: volume {v:?} is not SOURCE:TARGET[:ro]", self.name);
                Mount {
                    source: parts[0].to_string(),
                    target: parts[1].to_string(),
                    read_only: parts.get(2) == Some(&"ro"),
                }
            })
            .collect()
    }

    /// The healthcheck's `test` (exec form, `CMD` stripped); `None` when there is none or it is
    /// disabled.
    pub fn healthcheck(&self) -> Option<Vec<String>> {
        let h = &self.raw["healthcheck"];
        if h["disable"] == Value::Bool(true) {
            return None;
        }
        let test = strings(&h["test"]);
        match test.first().map(String::as_str) {
            Some("CMD") => Some(test[1..].to_vec()),
            Some("CMD-SHELL") => Some(vec!["sh".into(), "-c".into(), test[1..].join(" ")]),
            _ => None,
        }
    }

    /// Whether the healthcheck is explicitly disabled.
    pub fn healthcheck_disabled(&self) -> bool {
        self.raw["healthcheck"]["disable"] == Value::Bool(true)
    }

    /// Services this one waits for.
    pub fn depends_on(&self) -> Vec<String> {
        match &self.raw["depends_on"] {
            Value::Object(m) => m.keys().cloned().collect(),
            other => strings(other),
        }
    }
}

/// docker-compose.yml.
pub struct Compose {
    /// The repository root (the compose file's directory).
    pub root: PathBuf,
    /// The parsed file.
    pub raw: Value,
    /// Its services by name.
    pub services: BTreeMap<String, Service>,
}

impl Compose {
    /// Reads `<root>/docker-compose.yml`.
    pub fn load(root: &Path) -> Compose {
        let raw = yaml_file(&root.join("docker-compose.yml"));
        let services = raw["services"]
            .as_object()
            .expect("docker-compose.yml has services")
            .iter()
            .map(|(name, def)| (name.clone(), Service { name: name.clone(), raw: def.clone() }))
            .collect();
        Compose { root: root.to_path_buf(), raw, services }
    }

    /// The service `name`.
    pub fn service(&self, name: &str) -> &Service {
        self.services.get(name).unwrap_or_else(|| panic!("docker-compose.yml has no service {name:?}"))
    }

    /// Services that run the obsbox image (obsbox itself and the demo services).
    pub fn obsbox_services(&self) -> Vec<&Service> {
        self.services.values().filter(|s| s.image() == Some(OBSBOX_IMAGE)).collect()
    }

    /// The repository path of a bind-mount source.
    pub fn host_path(&self, source: &str) -> PathBuf {
        self.root.join(source.trim_start_matches("./"))
    }

    /// Services in an order that starts each after what it depends on.
    pub fn start_order(&self) -> Vec<String> {
        let mut done: Vec<String> = Vec::new();
        let mut seen = BTreeSet::new();
        fn visit(c: &Compose, name: &str, done: &mut Vec<String>, seen: &mut BTreeSet<String>) {
            if !seen.insert(name.to_string()) {
                return;
            }
            for d in c.service(name).depends_on() {
                visit(c, &d, done, seen);
            }
            done.push(name.to_string());
        }
        for name in self.services.keys() {
            visit(self, name, &mut done, &mut seen);
        }
        done
    }
}

/// The image `docker compose build` tags for obsbox and every demo service.
pub const OBSBOX_IMAGE: &str = "obsbox:local";

/// How the compose network and the containers' file systems map onto this machine.
pub struct Rewriter {
    /// (service, container port) -> loopback port.
    pub ports: BTreeMap<(String, u16), u16>,
    /// Service names (host names on the compose network).
    names: Vec<String>,
    /// Writable container directories per service (a temporary directory each).
    scratch: PathBuf,
    host_port: regex::Regex,
    dev_tcp: regex::Regex,
}

impl Rewriter {
    /// Finds every (service, port) the stack uses: `host:port` references to a service in the
    /// compose file and the files it mounts, each service's published container ports and its
    /// `--port`, and gives each a free loopback port. Writable paths go under `scratch`.
    pub fn new(compose: &Compose, scratch: &Path) -> Rewriter {
        let names: Vec<String> = compose.services.keys().cloned().collect();
        let alternation = names.iter().map(|n| regex::escape(n)).collect::<Vec<_>>().join("|");
        let host_port = regex::Regex::new(&format!(r"\b({alternation}|0\.0\.0\.0|localhost|127\.0\.0\.1):(\d+)\b"))
            .expect("valid regex");
        let dev_tcp = regex::Regex::new(r"/dev/tcp/([A-Za-z0-9.-]+)/(\d+)").expect("valid regex");
        let mut r = Rewriter { ports: BTreeMap::new(), names, scratch: scratch.to_path_buf(), host_port, dev_tcp };
        let mut wanted: BTreeSet<(String, u16)> = BTreeSet::new();
        for s in compose.services.values() {
            for (_, container) in s.ports() {
                wanted.insert((s.name.clone(), container));
            }
            let command = s.command();
            for w in command.windows(2) {
                if w[0] == "--port" {
                    let p: u16 = w[1].parse().expect("--port takes a number");
                    if p != 0 {
                        wanted.insert((s.name.clone(), p));
                    }
                }
            }
            let mut texts: Vec<String> = command;
            texts.extend(s.environment().into_values());
            texts.extend(s.healthcheck().unwrap_or_default());
            for m in s.mounts().iter().filter(|m| m.is_bind()) {
                let path = compose.host_path(&m.source);
                if path.is_file() {
                    texts.push(std::fs::read_to_string(&path).unwrap_or_default());
                }
            }
            for t in &texts {
                for c in r.host_port.captures_iter(t) {
                    let host = &c[1];
                    let port: u16 = c[2].parse().expect("port number");
                    let owner = if r.names.iter().any(|n| n == host) { host.to_string() } else { s.name.clone() };
                    wanted.insert((owner, port));
                }
                for c in r.dev_tcp.captures_iter(t) {
                    let host = &c[1];
                    let owner = if r.names.iter().any(|n| n == host) { host.to_string() } else { s.name.clone() };
                    wanted.insert((owner, c[2].parse().expect("port number")));
                }
            }
        }
        for key in wanted {
            r.ports.insert(key, super::free_port());
        }
        r
    }

    /// The loopback port standing for `service`'s container port `port`.
    pub fn port(&self, service: &str, port: u16) -> u16 {
        *self.ports.get(&(service.to_string(), port)).unwrap_or_else(|| panic!("no port {port} known for {service}"))
    }

    /// The directory standing for `service`'s writable container paths.
    pub fn scratch_of(&self, service: &str) -> PathBuf {
        self.scratch.join(service)
    }

    /// `text` as seen from outside Docker, in the context of `service`: `name:port` of any
    /// service, and this service's own `0.0.0.0:port` / `localhost:port`, become
    /// `127.0.0.1:<its loopback port>`; `/dev/tcp/host/port` likewise; `paths` (container path ->
    /// host path, longest first) are replaced.
    pub fn text(&self, service: &str, text: &str, paths: &[(String, PathBuf)]) -> String {
        let out = self.host_port.replace_all(text, |c: &regex::Captures<'_>| {
            let host = &c[1];
            let port: u16 = c[2].parse().expect("port number");
            let owner = if self.names.iter().any(|n| n == host) { host } else { service };
            match self.ports.get(&(owner.to_string(), port)) {
                Some(p) => format!("127.0.0.1:{p}"),
                None => c[0].to_string(),
            }
        });
        let out = self.dev_tcp.replace_all(&out, |c: &regex::Captures<'_>| {
            let host = &c[1];
            let port: u16 = c[2].parse().expect("port number");
            let owner = if self.names.iter().any(|n| n == host) { host } else { service };
            match self.ports.get(&(owner.to_string(), port)) {
                Some(p) => format!("/dev/tcp/127.0.0.1/{p}"),
                None => c[0].to_string(),
            }
        });
        replace_paths(&out, paths)
    }

    /// An environment value: a bare host name (a service name or 0.0.0.0) becomes 127.0.0.1,
    /// anything else goes through [`Rewriter::text`].
    pub fn env_value(&self, service: &str, value: &str, paths: &[(String, PathBuf)]) -> String {
        if value == "0.0.0.0" || self.names.iter().any(|n| n == value) {
            return "127.0.0.1".into();
        }
        self.text(service, value, paths)
    }

    /// A command line: `--port N` gets the loopback port of (service, N), the rest goes through
    /// [`Rewriter::text`].
    pub fn args(&self, service: &str, args: &[String], paths: &[(String, PathBuf)]) -> Vec<String> {
        let mut out = Vec::with_capacity(args.len());
        let mut port_next = false;
        for a in args {
            if port_next {
                let p: u16 = a.parse().expect("--port takes a number");
                out.push(if p == 0 { "0".into() } else { self.port(service, p).to_string() });
                port_next = false;
                continue;
            }
            port_next = a == "--port";
            out.push(self.text(service, a, paths));
        }
        out
    }

    /// Container path -> host path for `service`: bind-mounted files as rewritten copies (under
    /// its scratch directory), bind-mounted directories as the repository's, named volumes and
    /// `writable` (the image's writable directories) as scratch directories. Longest first.
    pub fn paths(&self, compose: &Compose, service: &Service, writable: &[&str]) -> Vec<(String, PathBuf)> {
        let scratch = self.scratch_of(&service.name);
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        let mut paths: Vec<(String, PathBuf)> = Vec::new();
        for w in writable {
            let dir = scratch.join(w.trim_start_matches('/'));
            std::fs::create_dir_all(&dir).expect("writable dir");
            paths.push((w.to_string(), dir));
        }
        let mut files = Vec::new();
        for m in service.mounts() {
            if !m.is_bind() {
                let dir = scratch.join("volumes").join(&m.source);
                std::fs::create_dir_all(&dir).expect("volume dir");
                paths.push((m.target.clone(), dir));
                continue;
            }
            let host = compose.host_path(&m.source);
            if host.is_file() {
                let copy = scratch.join("mounts").join(m.target.trim_start_matches('/'));
                files.push((host, copy.clone()));
                paths.push((m.target.clone(), copy));
            } else {
                paths.push((m.target.clone(), host));
            }
        }
        paths.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        // Inside mounted files only the bind mounts are paths: `/prometheus` (a volume) is also
        // the start of `/prometheus/metrics` (a URL path) in prometheus.yml.
        let binds: Vec<(String, PathBuf)> = paths
            .iter()
            .filter(|(c, _)| service.mounts().iter().any(|m| m.is_bind() && &m.target == c))
            .cloned()
            .collect();
        for (host, copy) in files {
            let text = std::fs::read_to_string(&host).unwrap_or_else(|e| panic!("read {}: {e}", host.display()));
            std::fs::create_dir_all(copy.parent().expect("parent")).expect("mount dir");
            std::fs::write(&copy, self.text(&service.name, &text, &binds)).expect("write rewritten copy");
        }
        paths
    }
}

/// Replaces whole container paths (`paths`: container -> host, longest first) in one pass, so
/// a replaced path is never matched again.
fn replace_paths(text: &str, paths: &[(String, PathBuf)]) -> String {
    if paths.is_empty() {
        return text.to_string();
    }
    let alternation = paths.iter().map(|(c, _)| regex::escape(c)).collect::<Vec<_>>().join("|");
    let re = regex::Regex::new(&format!(r"({alternation})(/|$|[^A-Za-z0-9._-])")).expect("valid regex");
    re.replace_all(text, |c: &regex::Captures<'_>| {
        let host = &paths.iter().find(|(p, _)| p == &c[1]).expect("matched a path").1;
        format!("{}{}", host.display(), &c[2])
    })
    .into_owned()
}

/// Fails the test unless `bin` exists, or returns false (skip) when `OBSBOX_SKIP_EXTERNAL=1`.
pub fn require_external(bin: &str, package: &str) -> bool {
    if Path::new(bin).exists() {
        return true;
    }
    if std::env::var("OBSBOX_SKIP_EXTERNAL").as_deref() == Ok("1") {
        eprintln!("skipping: {bin} not found and OBSBOX_SKIP_EXTERNAL=1");
        return false;
    }
    panic!("{bin} not found: install Debian's {package} package (apt-get install {package})");
}
