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
}
