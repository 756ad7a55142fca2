//! Configuration: defaults, then an optional TOML file, then `OBSBOX_*` environment variables
//! and command-line flags. Unknown keys and bad values stop start-up with a message naming them.

use std::path::Path;

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
    fn printing_the_config_never_shows_a_token() {
        let c =
            Config::from_toml("[auth]\ningest_token = \"ingest-s3cret\"\nquery_token = \"query-s3cret\"\n").unwrap();
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
    }
}
