//! What every obsbox listener shares, whatever it serves: TLS, bearer-token authentication,
//! timeouts and connection limits. The OTLP receivers (`obsbox-collector`) and the UI/API
//! server (`obsbox-query-ui`) take their listeners through this crate, so each protection is
//! written once and applies to all three ports.
//!
//! # Where things are
//! - `error`: [`NetError`].
//! - `tls`: [`TlsConfig`] (`[tls]`), PEM loading ([`Tls::load`]) and one rustls server
//!   configuration per [`Port`] (ALPN, client certificates for the ingest ports).
//! - `serve`: [`ListenConfig`] (`[listen]`: addresses, timeouts, connection limit) and
//!   [`Listener`], the one accept/serve loop all three listeners run.
#![warn(missing_docs)]

mod error;
mod serve;
mod tls;

pub use error::NetError;
pub use serve::{BodyTimeout, ListenConfig, Listener, RequestBody};
pub use tls::{Port, Tls, TlsConfig};
