//! The crate's one error type.

use std::path::PathBuf;

/// Errors of SLO loading, evaluation and state files.
#[derive(Debug, thiserror::Error)]
pub enum SloError {
    /// An SLO file is invalid: names the file, the 1-based line and the field (a path such as
    /// `spec.objectives[0].target`).
    #[error("{}:{line}: {field}: {message}", file.display())]
    Spec {
        /// The file.
        file: PathBuf,
        /// 1-based line (of the field when known, else of the document).
        line: usize,
        /// Path of the offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A state file obsbox wrote is unreadable.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A store read failed.
    #[error("store: {0}")]
    Store(#[from] obsbox_storage::StoreError),
    /// A configuration value is out of range.
    #[error("invalid setting `{key}`: {reason}")]
    InvalidConfig {
        /// The key, without the `slo.` prefix.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// Self-metrics could not be registered (e.g. registered twice in one registry).
    #[error("metrics: {0}")]
    Metrics(String),
}
