//! What every obsbox listener shares, whatever it serves: TLS, bearer-token authentication,
//! timeouts and connection limits. The OTLP receivers (`obsbox-collector`) and the UI/API
//! server (`obsbox-query-ui`) take their listeners through this crate, so each protection is
//! written once and applies to all three ports.
//!
//! # Where things are
//! - `error`: [`NetError`].
#![warn(missing_docs)]

mod error;

pub use error::NetError;
