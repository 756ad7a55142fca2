//! What every obsbox listener shares, whatever it serves: TLS, bearer-token authentication,
//! timeouts and connection limits. The OTLP receivers (`obsbox-collector`) and the UI/API
//! server (`obsbox-query-ui`) take their listeners through this crate, so each protection is
//! written once and applies to all three ports.
//!
//! # Where things are
//! - `auth`: bearer-token authentication: [`AuthConfig`] (`[auth]`), [`TokenSet`] (constant-time
//!   checks), [`Guard`] per listener and its tower layer [`RequireTokenLayer`].
//! - `body`: [`discard_body`], draining a refused request so its client reads the refusal.
//! - `error`: [`NetError`].
//! - `tls`: [`TlsConfig`] (`[tls]`), PEM loading ([`Tls::load`]) and one rustls server
//!   configuration per [`Port`] (ALPN, client certificates for the ingest ports).
//! - `serve`: [`ListenConfig`] (`[listen]`: addresses, timeouts, connection limit) and
//!   [`Listener`], the one accept/serve loop all three listeners run.
#![warn(missing_docs)]

mod auth;
mod body;
mod error;
mod serve;
mod tls;

pub use auth::{
    AuthConfig, AuthFailures, Guard, REFUSAL_MESSAGE, RequireToken, RequireTokenLayer, Scheme, Token, TokenSet,
    read_token_file,
};
pub use body::discard_body;
pub use error::NetError;
pub use serve::{BodyTimeout, ListenConfig, Listener, RequestBody};
pub use tls::{Port, Tls, TlsConfig};
