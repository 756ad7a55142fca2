//! Where the segments live: [`ObjectStoreConfig`] and [`open_store`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};

use crate::error::{ClusterError, Result};
use crate::http::HyperConnector;

/// The kind of object store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A local directory (`path`): one machine, or a shared file system; also what tests use.
    #[default]
    Local,
    /// S3 or an S3-compatible store (Garage, MinIO, RustFS, ...).
    S3,
}

/// A secret string: its `Debug` output is `"***"`, so it never ends up in a log line.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret from its value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value; only for handing it to the store's client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Printed (a config dumped as TOML) as `***`, never the secret.
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// The `[object_store]` section of the config file.
///
/// Validated by [`ObjectStoreConfig::validate`] (which [`open_store`] calls); the credentials fall back
/// to the environment variables `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` when not set here
/// ([`ObjectStoreConfig::with_env`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStoreConfig {
    /// `s3` or `local`.
    pub kind: StoreKind,
    /// S3: the endpoint URL (`http://127.0.0.1:3900` for a local Garage); empty means AWS itself.
    pub endpoint: Option<String>,
    /// S3: other endpoints of the same store (the other nodes of a Garage or MinIO cluster), tried
    /// in turn when connecting to the current one fails; requests stay signed for `endpoint`.
    pub failover_endpoints: Vec<String>,
    /// S3: the region (Garage: `garage`).
    pub region: String,
    /// S3: the bucket.
    pub bucket: Option<String>,
    /// Every object of obsbox is under this prefix (several deployments may share one bucket).
    pub prefix: String,
    /// S3: the access key id (or env `AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// S3: the secret key (or env `AWS_SECRET_ACCESS_KEY`); never printed.
    pub secret_access_key: Option<Secret>,
    /// S3: allow `http://` endpoints (off by default: credentials-signed requests in clear text).
    pub allow_http: bool,
    /// S3 over https: PEM file of extra CA certificates to trust (a private CA), in addition to the
    /// compiled-in Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// S3: address buckets as `<bucket>.<endpoint host>` instead of `<endpoint>/<bucket>`.
    pub virtual_hosted_style: bool,
    /// Local: the directory that holds the objects (created when missing).
    pub path: Option<PathBuf>,
    /// Time limit of one HTTP request (a whole small object; large files go in 8 MiB parts).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Time limit to connect.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often a failed request is retried (with exponential backoff).
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt.
    #[serde(with = "humantime_serde")]
    pub retry_timeout: Duration,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        ObjectStoreConfig {
            kind: StoreKind::Local,
            endpoint: None,
            failover_endpoints: Vec::new(),
            region: "us-east-1".into(),
            bucket: None,
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            ca_file: None,
            virtual_hosted_style: false,
            path: None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
        }
    }
}

impl ObjectStoreConfig {
    /// Fills unset credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub fn with_env(mut self) -> Self {
        self.fill_from(|name| std::env::var(name).ok());
        self
    }

    fn fill_from(&mut self, env: impl Fn(&str) -> Option<String>) {
        if self.access_key_id.is_none() {
            self.access_key_id = env("AWS_ACCESS_KEY_ID").filter(|v| !v.is_empty());
        }
        if self.secret_access_key.is_none() {
            self.secret_access_key = env("AWS_SECRET_ACCESS_KEY").filter(|v| !v.is_empty()).map(Secret);
        }
    }

    /// Checks the values for the chosen kind; the error names the offending key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key, message: &str| Err(ClusterError::Config { key, message: message.to_string() });
        if self.prefix.starts_with('/') || self.prefix.ends_with('/') || self.prefix.contains("//") {
            return bad("object_store.prefix", "must not start or end with `/` nor contain `//`");
        }
        if self.request_timeout.is_zero() {
            return bad("object_store.request_timeout", "must be more than 0");
        }
        if self.connect_timeout.is_zero() {
            return bad("object_store.connect_timeout", "must be more than 0");
        }
        match self.kind {
            StoreKind::Local => {
                if self.path.as_deref().is_none_or(|p| p.as_os_str().is_empty()) {
                    return bad("object_store.path", "required when kind = \"local\"");
                }
            }
            StoreKind::S3 => {
                if self.bucket.as_deref().is_none_or(str::is_empty) {
                    return bad("object_store.bucket", "required when kind = \"s3\"");
                }
                if self.region.is_empty() {
                    return bad("object_store.region", "must not be empty");
                }
                if self.access_key_id.as_deref().is_none_or(str::is_empty) {
                    return bad("object_store.access_key_id", "required when kind = \"s3\" (or set AWS_ACCESS_KEY_ID)");
                }
                if self.secret_access_key.as_ref().is_none_or(|s| s.0.is_empty()) {
                    return bad(
                        "object_store.secret_access_key",
                        "required when kind = \"s3\" (or set AWS_SECRET_ACCESS_KEY)",
                    );
                }
                if let Some(endpoint) = &self.endpoint {
                    if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                        return bad("object_store.endpoint", "must start with http:// or https://");
                    }
                    if endpoint.starts_with("http://") && !self.allow_http {
                        return bad("object_store.endpoint", "is http://: set allow_http = true to allow it");
                    }
                }
                for e in &self.failover_endpoints {
                    if !e.starts_with("http://") && !e.starts_with("https://") || e.parse::<http::Uri>().is_err() {
                        return bad("object_store.failover_endpoints", "each must be an http:// or https:// URL");
                    }
                    if e.starts_with("http://") && !self.allow_http {
                        return bad("object_store.failover_endpoints", "has an http:// one: set allow_http = true");
                    }
                }
                if !self.failover_endpoints.is_empty() && self.endpoint.is_none() {
                    return bad("object_store.failover_endpoints", "needs `endpoint` too");
                }
                if self.ca_file.as_deref().is_some_and(|p| !p.is_file()) {
                    return bad("object_store.ca_file", "is not a readable file");
                }
            }
        }
        Ok(())
    }
}

/// Opens the configured store (after [`ObjectStoreConfig::validate`]). Does not contact it: the first
/// request does.
pub fn open_store(cfg: &ObjectStoreConfig) -> Result<Arc<dyn ObjectStore>> {
    cfg.validate()?;
    match cfg.kind {
        StoreKind::Local => {
            let path = cfg.path.as_ref().expect("validated");
            std::fs::create_dir_all(path).map_err(|e| ClusterError::io("create object store directory", path, e))?;
            Ok(Arc::new(LocalFileSystem::new_with_prefix(path)?))
        }
        StoreKind::S3 => {
            let client = ClientOptions::new()
                .with_timeout(cfg.request_timeout)
                .with_connect_timeout(cfg.connect_timeout)
                .with_allow_http(cfg.allow_http);
            let failover = cfg.failover_endpoints.iter().map(|e| e.parse().expect("validated")).collect();
            let connector =
                HyperConnector::new(cfg.ca_file.as_deref(), cfg.request_timeout, cfg.connect_timeout, failover)?;
            let retry = RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: cfg.max_retries,
                retry_timeout: cfg.retry_timeout,
            };
            let mut builder = AmazonS3Builder::new()
                .with_region(&cfg.region)
                .with_bucket_name(cfg.bucket.as_deref().expect("validated"))
                .with_access_key_id(cfg.access_key_id.as_deref().expect("validated"))
                .with_secret_access_key(cfg.secret_access_key.as_ref().expect("validated").expose())
                .with_allow_http(cfg.allow_http)
                .with_virtual_hosted_style_request(cfg.virtual_hosted_style)
                .with_client_options(client)
                .with_retry(retry)
                .with_http_connector(connector);
            if let Some(endpoint) = &cfg.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            Ok(Arc::new(builder.build()?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ObjectStoreConfig, toml::de::Error> {
        toml::from_str(text)
    }

    fn s3() -> ObjectStoreConfig {
        parse(
            r#"
            kind = "s3"
            endpoint = "http://127.0.0.1:3900"
            region = "garage"
            bucket = "obsbox"
            access_key_id = "GK123"
            secret_access_key = "very-secret"
            allow_http = true
            request_timeout = "10s"
            "#,
        )
        .unwrap()
    }

    fn invalid_key(cfg: &ObjectStoreConfig) -> &'static str {
        match cfg.validate() {
            Err(ClusterError::Config { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn parses_s3_with_defaults() {
        let cfg = s3();
        cfg.validate().unwrap();
        assert_eq!(cfg.kind, StoreKind::S3);
        assert_eq!(cfg.request_timeout, Duration::from_secs(10));
        assert_eq!(cfg.connect_timeout, Duration::from_secs(5));
        assert_eq!(cfg.max_retries, 5);
        assert_eq!(cfg.prefix, "");
        open_store(&cfg).unwrap();
    }

    #[test]
    fn secret_never_in_debug_output() {
        let cfg = s3();
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(debug.contains("***"), "{debug}");
        let store = open_store(&cfg).unwrap();
        let debug = format!("{store:?} {store}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert_eq!(cfg.secret_access_key.unwrap().expose(), "very-secret");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse("kind = \"s3\"\nbukket = \"x\"").unwrap_err().to_string();
        assert!(err.contains("bukket"), "{err}");
        assert!(parse("kind = \"gcs\"").is_err());
    }

    #[test]
    fn missing_values_name_their_key() {
        let mut cfg = s3();
        cfg.bucket = None;
        assert_eq!(invalid_key(&cfg), "object_store.bucket");
        let mut cfg = s3();
        cfg.secret_access_key = None;
        assert_eq!(invalid_key(&cfg), "object_store.secret_access_key");
        let mut cfg = s3();
        cfg.access_key_id = None;
        assert_eq!(invalid_key(&cfg), "object_store.access_key_id");
        let mut cfg = s3();
        cfg.allow_http = false;
        assert_eq!(invalid_key(&cfg), "object_store.endpoint");
        let mut cfg = s3();
        cfg.endpoint = Some("s3.example.com".into());
        assert_eq!(invalid_key(&cfg), "object_store.endpoint");
        let mut cfg = s3();
        cfg.endpoint = Some("https://s3.example.com".into());
        cfg.allow_http = false;
        cfg.validate().unwrap();
        cfg.ca_file = Some("/nonexistent/ca.pem".into());
        assert_eq!(invalid_key(&cfg), "object_store.ca_file");
        let mut cfg = s3();
        cfg.failover_endpoints = vec!["127.0.0.1:3901".into()];
        assert_eq!(invalid_key(&cfg), "object_store.failover_endpoints");
        let mut cfg = s3();
        cfg.prefix = "/a".into();
        assert_eq!(invalid_key(&cfg), "object_store.prefix");
        let mut cfg = s3();
        cfg.request_timeout = Duration::ZERO;
        assert_eq!(invalid_key(&cfg), "object_store.request_timeout");
        assert_eq!(invalid_key(&ObjectStoreConfig::default()), "object_store.path");
    }

    #[test]
    fn credentials_come_from_the_environment_when_not_set() {
        let mut cfg = s3();
        cfg.access_key_id = None;
        cfg.secret_access_key = None;
        cfg.fill_from(|name| match name {
            "AWS_ACCESS_KEY_ID" => Some("GKenv".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("env-secret".into()),
            _ => None,
        });
        assert_eq!(cfg.access_key_id.as_deref(), Some("GKenv"));
        assert_eq!(cfg.secret_access_key.as_ref().unwrap().expose(), "env-secret");
        cfg.validate().unwrap();
        // Values in the file win over the environment.
        let mut cfg = s3();
        cfg.fill_from(|_| Some("other".into()));
        assert_eq!(cfg.access_key_id.as_deref(), Some("GK123"));
    }

    #[test]
    fn local_store_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let cfg: ObjectStoreConfig =
            parse(&format!("kind = \"local\"\npath = {:?}", dir.path().join("objects").display().to_string())).unwrap();
        open_store(&cfg).unwrap();
        assert!(dir.path().join("objects").is_dir());
    }
}
