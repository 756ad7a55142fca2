//! The storage crate's error type.

use std::time::Duration;

/// Errors the store returns. Each maps to a retryable or a final status at the API edge.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's queues are full; retry after the given delay.
    #[error("store overloaded, retry after {retry_after:?}")]
    Overloaded {
        /// Suggested delay before retrying.
        retry_after: Duration,
    },
    /// The store cannot accept writes now (disk full, shutting down); retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The data directory's disk is full (or below `storage.min_free_bytes`); retryable: writes
    /// are admitted again by themselves once space is freed.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// A configuration value is out of range; the message names the key.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The query is malformed; the message says where.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The data directory holds something this version cannot read.
    #[error("corrupt or incompatible store file {path}: {reason}")]
    Corrupt {
        /// File that failed to read.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// A store file was written by a newer obsbox; it is refused, never repaired or set aside.
    #[error("incompatible store file: {0}")]
    Incompatible(String),
    /// An I/O error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// An error of the tantivy index.
    #[error("index error: {0}")]
    Index(String),
}

impl StoreError {
    /// Whether a client should retry the same request later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Overloaded { .. } | StoreError::Unavailable(_) | StoreError::DiskFull(_))
    }

    pub(crate) fn corrupt(path: impl AsRef<std::path::Path>, reason: impl Into<String>) -> Self {
        StoreError::Corrupt { path: path.as_ref().display().to_string(), reason: reason.into() }
    }
}

impl From<tantivy::TantivyError> for StoreError {
    fn from(e: tantivy::TantivyError) -> Self {
        StoreError::Index(e.to_string())
    }
}

impl From<tantivy::query::QueryParserError> for StoreError {
    fn from(e: tantivy::query::QueryParserError) -> Self {
        StoreError::InvalidQuery(e.to_string())
    }
}
