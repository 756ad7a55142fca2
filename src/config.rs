//! Configuration: defaults, then an optional TOML file, then `OBSBOX_*` environment variables
//! and command-line flags. Unknown keys and bad values stop start-up with a message naming them.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use obsbox_cluster::ObjectStoreConfig;
use obsbox_collector::{DeriveConfig, Limits, RemoteWriteConfig};
pub use obsbox_net::{AuthConfig, ListenConfig, TlsConfig};
use obsbox_query_ui::QueryLimits;
use obsbox_slo::SloConfig;
use obsbox_storage::StoreConfig;
use serde::{Deserialize, Serialize};

/// The whole configuration. `Default` is the embedded defaults `cargo run` starts with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listen addresses, timeouts and connection limits.
    pub listen: ListenConfig,
    /// TLS on every listener, client certificates for ingest.
    pub tls: TlsConfig,
    /// Bearer tokens for ingest and for the UI/query APIs (off unless set).
    pub auth: AuthConfig,
    /// The embedded store.
    pub storage: StoreConfig,
    /// Limits on OTLP input.
    pub limits: Limits,
    /// Span metrics and service graph derived at ingest.
    pub derive: DeriveConfig,
    /// Prometheus remote-write export of every metric point (received and derived).
    pub remote_write: RemoteWriteConfig,
    /// SLO definitions, evaluation and alert notifications.
    pub slo: SloConfig,
    /// Limits on queries (text, complexity, time range, result size, time budget).
    pub query: QueryLimits,
    /// The node's role and, outside role `all`, how nodes share the object store (DEPLOYMENT.md).
    pub cluster: ClusterConfig,
    /// The object store of roles `ingester`, `searcher` and `compactor`.
    pub object_store: ObjectStoreConfig,
}

/// What this process does (DEPLOYMENT.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything in one process, on the local disk alone (the default).
    #[default]
    All,
    /// Takes OTLP, keeps its WAL and the segments being built, ships sealed segments to the
    /// object store and answers searchers' reads of what it has not shipped yet.
    Ingester,
    /// Serves every query API and the UI from the object store plus the ingesters; stateless
    /// but for its segment cache.
    Searcher,
    /// Merges small segments in the object store and applies retention (run exactly one).
    Compactor,
}

impl Role {
    /// The role's name as in the config and in node heartbeats.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Ingester => "ingester",
            Role::Searcher => "searcher",
            Role::Compactor => "compactor",
        }
    }
}

/// `[cluster]`: the role and its settings. Only `role` matters in role `all`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// What this process does.
    pub role: Role,
    /// This node's name, unique in the cluster and the same across restarts: an ingester's
    /// segments are keyed by it, so a restarted ingester uploads what it had not shipped under the
    /// same keys. Letters, digits, `-`, `_`, `.`.
    pub node_id: Option<String>,
    /// Ingester: the URL of its UI port as searchers reach it (internal read API). Default:
    /// `http://<listen.http>` when that is a specific address.
    pub advertise_url: Option<String>,
    /// Ingester: active segments are sealed (and then shipped) when they are this old.
    #[serde(with = "humantime_serde")]
    pub seal_interval: Duration,
    /// Ingester: how often sealed segments are looked for and shipped.
    #[serde(with = "humantime_serde")]
    pub ship_interval: Duration,
    /// Searcher: how often the segment list is read again.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Every node: how often it writes its heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Searcher: an ingester whose heartbeat is older than this is no longer asked; until then
    /// a query that cannot reach it fails (503) rather than silently missing its data.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
    /// Searcher: time limit of one read call to an ingester.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Searcher, compactor: where fetched segments are kept. Default `<data_dir>/cache`.
    pub cache_dir: Option<PathBuf>,
    /// Searcher, compactor: most bytes of segments kept in the cache (besides those in use).
    pub cache_max_bytes: u64,
    /// Compactor: time between passes.
    #[serde(with = "humantime_serde")]
    pub compaction_interval: Duration,
    /// Compactor: segments smaller than this are merged together.
    pub merge_small_bytes: u64,
    /// Compactor: a merge's inputs are deleted this long after its output is registered; longer
    /// than `poll_interval` plus the longest query.
    #[serde(with = "humantime_serde")]
    pub compaction_grace: Duration,
    /// Compactor: segments registered less than this long ago are left alone.
    #[serde(with = "humantime_serde")]
    pub compaction_min_age: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            role: Role::All,
            node_id: None,
            advertise_url: None,
            seal_interval: Duration::from_secs(30),
            ship_interval: Duration::from_secs(2),
            poll_interval: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(2),
            node_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
            cache_dir: None,
            cache_max_bytes: 4 << 30,
            compaction_interval: Duration::from_secs(60),
            merge_small_bytes: 64 << 20,
            compaction_grace: Duration::from_secs(300),
            compaction_min_age: Duration::from_secs(120),
        }
    }
}

impl ClusterConfig {
    /// Checks the settings the role uses; the error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.role == Role::All {
            return Ok(());
        }
        match self.node_id.as_deref() {
            None => anyhow::bail!("cluster.node_id: required when role = \"{}\"", self.role.as_str()),
            Some(id)
                if id.is_empty()
                    || id.len() > 64
                    || !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                    || id.starts_with('.') =>
            {
                anyhow::bail!("cluster.node_id: {id:?} must be 1 to 64 letters, digits, `-`, `_` or `.`")
            }
            Some(_) => {}
        }
        if let Some(url) = &self.advertise_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            anyhow::bail!("cluster.advertise_url: {url:?} must start with http:// or https://");
        }
        let positive = [
            ("seal_interval", self.seal_interval),
            ("ship_interval", self.ship_interval),
            ("poll_interval", self.poll_interval),
            ("heartbeat_interval", self.heartbeat_interval),
            ("call_timeout", self.call_timeout),
            ("compaction_interval", self.compaction_interval),
        ];
        for (key, value) in positive {
            if value < Duration::from_millis(100) {
                anyhow::bail!("cluster.{key}: must be at least 100ms");
            }
        }
        if self.node_timeout < 2 * self.heartbeat_interval {
            anyhow::bail!("cluster.node_timeout: must be at least twice cluster.heartbeat_interval");
        }
        if self.compaction_grace <= self.poll_interval + self.call_timeout {
            anyhow::bail!("cluster.compaction_grace: must be longer than cluster.poll_interval + cluster.call_timeout");
        }
        Ok(())
    }
}

impl Config {
    /// Reads a TOML file. The error names the file, the line and the offending key.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.listen.validate()?;
        self.tls.validate().map_err(|e| anyhow::anyhow!("tls: {e}"))?;
        self.auth.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        self.storage.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        self.limits.validate().map_err(|e| anyhow::anyhow!("limits.{e}"))?;
        self.derive.validate().map_err(|e| anyhow::anyhow!("derive: {e}"))?;
        self.remote_write.validate().map_err(|e| anyhow::anyhow!("remote_write: {e}"))?;
        self.slo.validate().map_err(|e| anyhow::anyhow!("slo: {e}"))?;
        self.query.validate().map_err(|e| anyhow::anyhow!("query.{e}"))?;
        self.cluster.validate()?;
        if self.cluster.role != Role::All {
            self.object_store.validate()?;
            if self.slo.dir.is_some() && self.cluster.role != Role::Searcher {
                anyhow::bail!(
                    "slo.dir: SLOs are evaluated by a searcher (role = \"searcher\"), not a {}",
                    self.cluster.role.as_str()
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[storage]\nretention = \"3d\"\nretension = \"1d\"\n").unwrap_err().to_string();
        assert!(err.contains("retension"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        let err = Config::from_toml("[nope]\n").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::from_toml("[storage]\nretention = \"soon\"\n").unwrap_err().to_string();
        assert!(err.contains("retention"), "{err}");
        let mut c = Config::from_toml("[storage]\ncommit_interval = \"10s\"\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("storage.commit_interval"));
        c = Config::from_toml("[listen]\nhttp = \"localhost\"\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("listen.http"));
        c = Config::from_toml("[limits]\nmax_body_bytes = 0\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("max_body_bytes"));
        c = Config::from_toml("[derive]\ninterval = \"100ms\"\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("derive: invalid setting `interval`"));
        let err = Config::from_toml("[derive]\nintervall = \"15s\"\n").unwrap_err().to_string();
        assert!(err.contains("intervall"), "{err}");
        c = Config::from_toml("[remote_write]\nurl = \"prometheus:9090\"\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("remote_write: invalid setting `url`"));
        c = Config::from_toml("[slo]\ntime_scale = 7\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("slo: invalid setting `time_scale`"));
        c = Config::from_toml("[listen]\nidle_timeout = \"10ms\"\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("`listen.idle_timeout`"));
        c = Config::from_toml("[tls]\ncert = \"chain.pem\"\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("tls: invalid setting `key`"));
        let err = Config::from_toml("[tls]\ncertificate = \"chain.pem\"\n").unwrap_err().to_string();
        assert!(err.contains("certificate"), "{err}");
        let err = Config::from_toml("[slo.notify]\nwebhook = []\n").unwrap_err().to_string();
        assert!(err.contains("webhook"), "{err}");
        c = Config::from_toml("[query]\nmax_traces = 0\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("query.max_traces"));
        c = Config::from_toml("[query]\ntimeout = \"2h\"\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("query.timeout"));
        let err = Config::from_toml("[query]\nmax_trace = 10\n").unwrap_err().to_string();
        assert!(err.contains("max_trace"), "{err}");
        let err = Config::from_toml("[query]\ntimeout = \"soon\"\n").unwrap_err().to_string();
        assert!(err.contains("timeout"), "{err}");
        c = Config::from_toml("[auth]\nquery_token = \"has space\"\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("`auth.query_token`") && !err.contains("has space"), "{err}");
        let err = Config::from_toml("[auth]\ningest_tokens = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("ingest_tokens"), "{err}");
    }

    #[test]
    fn cluster_settings_are_checked_for_the_role() {
        let err = |text: &str| Config::from_toml(text).unwrap().validate().unwrap_err().to_string();
        assert!(err("[cluster]\nrole = \"ingester\"\n").contains("cluster.node_id"));
        assert!(err("[cluster]\nrole = \"searcher\"\nnode_id = \"a/b\"\n").contains("cluster.node_id"));
        let e = err("[cluster]\nrole = \"compactor\"\nnode_id = \"c\"\n");
        assert!(e.contains("object_store.path"), "{e}");
        let e = err(
            "[cluster]\nrole = \"ingester\"\nnode_id = \"i\"\n[object_store]\npath = \"/x\"\n[slo]\ndir = \"slos\"\n",
        );
        assert!(e.contains("slo.dir"), "{e}");
        let e = err("[cluster]\nrole = \"searcher\"\nnode_id = \"s\"\nheartbeat_interval = \"9s\"\n");
        assert!(e.contains("cluster.node_timeout"), "{e}");
        let e = Config::from_toml("[cluster]\nrole = \"leader\"\n").unwrap_err().to_string();
        assert!(e.contains("leader"), "{e}");
        let e = Config::from_toml("[object_store]\nbuckit = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("buckit"), "{e}");
        let ok = "[cluster]\nrole = \"searcher\"\nnode_id = \"s-1\"\n[object_store]\nkind = \"local\"\npath = \"/x\"\n";
        Config::from_toml(ok).unwrap().validate().unwrap();
        // All nodes by default: none of it is checked.
        Config::from_toml("[cluster]\nnode_id = \"a/b\"\n").unwrap().validate().unwrap();
    }

    #[test]
    fn printing_the_config_never_shows_a_token() {
        let c = Config::from_toml(
            "[auth]\ningest_token = \"ingest-s3cret\"\nquery_token = \"query-s3cret\"\n\
             [object_store]\nsecret_access_key = \"store-s3cret\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let printed = format!("{c:?} {c:#?} {}", toml::to_string(&c).unwrap());
        assert!(!printed.contains("s3cret"), "{printed}");
    }

    #[test]
    fn sample_config_parses() {
        let text = include_str!("../obsbox.example.toml");
        let c = Config::from_toml(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.storage.retention, std::time::Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.derive, DeriveConfig::default());
        assert_eq!(c.listen, ListenConfig::default(), "the sample lists the listener defaults");
        assert_eq!(c.tls, TlsConfig::default());
        assert_eq!(c.remote_write, RemoteWriteConfig::default());
        assert_eq!(c.slo.evaluation_interval, SloConfig::default().evaluation_interval);
        assert_eq!(c.query, QueryLimits::default(), "the sample file states the defaults");
        assert_eq!(c.cluster, ClusterConfig::default(), "the sample file states the defaults");
        assert_eq!(c.object_store, ObjectStoreConfig::default(), "the sample file states the defaults");
    }
}
