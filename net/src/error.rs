//! [`NetError`]: what can go wrong setting up a listener.

/// Errors of listener setup: bad TLS material, unreadable token files, bad settings.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A setting is invalid; `key` names it.
    #[error("invalid setting `{key}`: {reason}")]
    InvalidSetting {
        /// The configuration key.
        key: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A TLS file (certificate, key or CA) is missing or unusable.
    #[error("tls file {}: {reason}", path.display())]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A token file cannot be read or holds no valid token.
    #[error("token file {}: {reason}", path.display())]
    TokenFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong (never the token itself).
        reason: String,
    },
}
