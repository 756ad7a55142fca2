//! The web UI: server-rendered askama pages with small dependency-free scripts.
//!
//! # Where things are
//! - [`routes`]: every UI route, wrapped in [`security_headers`].
//! - `assets`: the embedded files under `query-ui/assets/`, served at `/static/{name}?v=HASH`.
//! - `trace`: the trace view at `/trace/{id}`.
//! - `explore`: the metrics explorer at `/explore`.
//! - `slo`: the SLO list at `/slos` and one SLO at `/slo/{name}`.
//! - Templates are in `query-ui/templates/`; every page extends `base.html` and carries a
//!   [`Layout`] (title, highlighted nav entry, scripts).
//!
//! # Rules every page follows
//! - State lives in the URL query; forms are plain `GET` forms, so pages work without JavaScript.
//! - askama escapes all text; data for scripts goes in `<script type="application/json">` blocks
//!   through [`ScriptJson`] (which escapes `<`, `>` and `&`), never as inline code. `|safe` is
//!   never used on data.
//! - The Content-Security-Policy forbids inline script and inline style attributes: colours come
//!   from classes ([`svc_class`] for services), sizes from SVG attributes or CSSOM in scripts.

mod assets;
mod explore;
pub(crate) mod fmt;
mod logs;
mod map;
pub(crate) mod range;
mod red;
mod search;
mod services;
mod slo;
pub(crate) mod svg;
pub(crate) mod trace;

use askama::Template;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Serialize;

use crate::AppState;
use crate::query::QueryError;
use obsbox_storage::StoreError;

pub(crate) use assets::url as asset_url;

/// The Content-Security-Policy of every UI response.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Every UI route.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/services") }))
        .route("/static/{name}", get(assets::serve))
        .merge(services::routes())
        .merge(search::routes())
        .merge(logs::routes())
        .merge(map::routes())
        .merge(trace::routes())
        .merge(explore::routes())
        .merge(slo::routes())
        .layer(axum::middleware::map_response(security_headers))
}

/// Adds the CSP and related headers to a UI response.
async fn security_headers(mut resp: Response) -> Response {
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    resp
}

/// The CSP of responses that are not UI pages (JSON, text, metrics): nothing may load or run,
/// nothing may frame them.
const CSP_NOT_A_PAGE: &str = "default-src 'none'; frame-ancestors 'none'";

/// Headers every response of the UI port carries, whichever route (or none) answered: no MIME
/// sniffing (a JSON body holding markup is never rendered as HTML), no framing (clickjacking),
/// no URLs with trace ids or queries leaking to other sites. Pages keep their own CSP.
pub(crate) async fn browser_safety(mut resp: Response) -> Response {
    let headers = resp.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP_NOT_A_PAGE));
    }
    resp
}

/// Any path no route serves: a JSON error under the APIs' prefixes, the error page elsewhere.
pub(crate) async fn not_found(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let api = ["/api/", "/loki/", "/prometheus/"].iter().any(|p| path.starts_with(p));
    if api {
        let body = serde_json::json!({ "error": "no such API endpoint" });
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    }
    security_headers(UiError::not_found("no page at this address").into_response()).await
}

/// The entries of the top navigation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nav {
    Services,
    Traces,
    Logs,
    Map,
    Metrics,
    Slos,
}

/// What `base.html` needs from every page.
pub(crate) struct Layout {
    /// The page title (without the " · obsbox" suffix).
    pub title: String,
    /// The highlighted nav entry.
    pub nav: Nav,
    /// Versioned URLs of the stylesheets (`style.css` first).
    pub styles: Vec<String>,
    /// Versioned URLs of the scripts (`common.js` first), loaded with `defer`.
    pub scripts: Vec<String>,
}

impl Layout {
    /// A layout with the shared stylesheet and script plus the assets named in `extra`
    /// (`.css` files become stylesheets, the others scripts).
    pub(crate) fn new(title: impl Into<String>, nav: Nav, extra: &[&str]) -> Layout {
        let mut styles = vec![asset_url("style.css")];
        let mut scripts = vec![asset_url("common.js")];
        for name in extra {
            if name.ends_with(".css") {
                styles.push(asset_url(name));
            } else {
                scripts.push(asset_url(name));
            }
        }
        Layout { title: title.into(), nav, styles, scripts }
    }

    /// Whether `entry` (`services`, `traces`, `logs`, `map`, `metrics`, `slos`) is the current page.
    pub(crate) fn is(&self, entry: &str) -> bool {
        let current = match self.nav {
            Nav::Services => "services",
            Nav::Traces => "traces",
            Nav::Logs => "logs",
            Nav::Map => "map",
            Nav::Metrics => "metrics",
            Nav::Slos => "slos",
        };
        current == entry
    }
}

/// Renders `page` as an HTML response with `status`.
pub(crate) fn render_with(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template rendering failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// Renders `page` as a `200 OK` HTML response.
pub(crate) fn render(page: &impl Template) -> Response {
    render_with(StatusCode::OK, page)
}

/// An error shown as a full page with the layout (4xx for bad input, with the reason).
#[derive(Debug)]
pub(crate) struct UiError {
    /// The status sent.
    pub status: StatusCode,
    /// What is shown to the user.
    pub message: String,
}

impl UiError {
    /// A `400 Bad Request` with `message`.
    pub(crate) fn bad_request(message: impl Into<String>) -> UiError {
        UiError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    /// A `404 Not Found` with `message`.
    pub(crate) fn not_found(message: impl Into<String>) -> UiError {
        UiError { status: StatusCode::NOT_FOUND, message: message.into() }
    }
}

impl From<QueryError> for UiError {
    fn from(e: QueryError) -> Self {
        UiError { status: e.status(), message: e.to_string() }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    layout: Layout,
    status: StatusCode,
    message: &'a str,
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let layout = Layout::new(format!("Error {}", self.status.as_u16()), Nav::Services, &[]);
        render_with(self.status, &ErrorPage { layout, status: self.status, message: &self.message })
    }
}

/// Runs a store read on the blocking pool (store reads must not block the runtime's threads).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, UiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| UiError::from(QueryError::from(e))),
        Err(e) => {
            tracing::error!(error = %e, "store read task failed");
            Err(UiError { status: StatusCode::INTERNAL_SERVER_ERROR, message: "internal error".into() })
        }
    }
}

/// Number of service colour classes (`sc0`..`sc19` in `style.css`).
const SERVICE_COLOURS: u32 = 20;

/// The colour class of service `name`: `sc` + FNV-1a 32 of its UTF-8 bytes modulo 20.
/// `common.js` (`obsbox.svcClass`) computes the same, so server and scripts agree.
pub(crate) fn svc_class(name: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("sc{}", h % SERVICE_COLOURS)
}

/// JSON for a `<script type="application/json">` block: `<`, `>`, `&`, U+2028 and U+2029 are
/// written as `\uXXXX` escapes, so the text can neither end the block nor open a comment, and
/// askama leaves it unescaped (it is [`askama::filters::HtmlSafe`]).
pub(crate) struct ScriptJson(String);

impl ScriptJson {
    /// `value` serialised and escaped.
    pub(crate) fn new(value: &impl Serialize) -> ScriptJson {
        let raw = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
        let mut out = String::with_capacity(raw.len());
        for c in raw.chars() {
            match c {
                '<' => out.push_str("\\u003c"),
                '>' => out.push_str("\\u003e"),
                '&' => out.push_str("\\u0026"),
                '\u{2028}' => out.push_str("\\u2028"),
                '\u{2029}' => out.push_str("\\u2029"),
                c => out.push(c),
            }
        }
        ScriptJson(out)
    }
}

impl std::fmt::Display for ScriptJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl askama::filters::HtmlSafe for ScriptJson {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_json_cannot_end_its_block() {
        let j = ScriptJson::new(&serde_json::json!({"name": "</script><script>alert(1)</script>&"}));
        let s = j.to_string();
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('&'), "{s}");
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back["name"], "</script><script>alert(1)</script>&");
    }

    #[test]
    fn service_classes_are_stable() {
        assert_eq!(svc_class(""), format!("sc{}", 0x811c_9dc5u32 % 20));
        assert_eq!(svc_class("frontend"), svc_class("frontend"));
    }
}
