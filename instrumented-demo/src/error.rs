//! The crate's error type.

/// What can go wrong running a demo service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A SQLite statement failed.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// An HTTP call to another service failed (connection, timeout or body).
    #[error("http call: {0}")]
    Http(#[from] reqwest::Error),
    /// Another service answered with an error status.
    #[error("{service} answered {status}: {body}")]
    Upstream {
        /// The service called.
        service: String,
        /// Its status code.
        status: u16,
        /// The start of its answer.
        body: String,
    },
    /// The registry knows no live instance of a service.
    #[error("no live instance of {0}")]
    NoInstance(String),
    /// Reading or writing a file, or serving.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The OpenTelemetry SDK could not be set up.
    #[error("telemetry setup: {0}")]
    Telemetry(String),
    /// A setting is invalid.
    #[error("invalid setting: {0}")]
    Config(String),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
