//! The crate's error type.

/// What can go wrong in the object-store layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A configuration value is missing or invalid; `key` names it as written in the config file.
    #[error("invalid config `{key}`: {message}")]
    Config {
        /// The key, e.g. `object_store.bucket`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The object store failed (after its own retries).
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// A local file or directory could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done, e.g. `read segment file`.
        what: &'static str,
        /// The local path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Downloaded or uploaded data does not match what its metastore entry says.
    #[error("segment {key}: {message}")]
    Mismatch {
        /// The segment key.
        key: String,
        /// What does not match.
        message: String,
    },
    /// A value given to this crate cannot be used (e.g. a segment key or node id with a `/`).
    #[error("invalid {what}: {message}")]
    Invalid {
        /// What is invalid.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The node's local store refused or failed.
    #[error("local store: {0}")]
    Local(#[from] obsbox_storage::StoreError),
    /// A background task of this crate panicked or was cancelled.
    #[error("{0} task failed")]
    Task(&'static str),
    /// An entry could not be encoded.
    #[error("encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The cause.
        source: serde_json::Error,
    },
}

impl ClusterError {
    pub(crate) fn io(what: &'static str, path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        ClusterError::Io { what, path: path.into(), source }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;
