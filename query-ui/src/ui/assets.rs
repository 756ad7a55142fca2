//! Static assets embedded in the binary and served at `/static/{name}`.
//!
//! Pages link to [`url`], which appends `?v=` and a hash of the file's bytes (computed at compile
//! time): a request carrying the current hash is cached for a year (`immutable`), any other
//! request is revalidated, so a new binary never serves stale scripts.

use axum::extract::{Path, Query};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// One embedded file.
pub(crate) struct Asset {
    /// File name under `/static/`.
    pub name: &'static str,
    /// `Content-Type` it is served with.
    pub content_type: &'static str,
    /// The bytes.
    pub body: &'static [u8],
    /// FNV-1a 64 of `body`, the cache-busting `?v=`.
    pub hash: u64,
}

impl Asset {
    const fn new(name: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
        Asset { name, content_type, body, hash: fnv1a(body) }
    }
}

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Every embedded asset. Add a line here for each new file under `query-ui/assets/`.
static ASSETS: &[Asset] = &[
    Asset::new("style.css", CSS, include_bytes!("../../assets/style.css")),
    Asset::new("common.js", JS, include_bytes!("../../assets/common.js")),
    Asset::new("search.js", JS, include_bytes!("../../assets/search.js")),
    Asset::new("logs.js", JS, include_bytes!("../../assets/logs.js")),
    Asset::new("trace.css", CSS, include_bytes!("../../assets/trace.css")),
    Asset::new("explore.css", CSS, include_bytes!("../../assets/explore.css")),
    Asset::new("explore.js", JS, include_bytes!("../../assets/explore.js")),
    Asset::new("trace.js", JS, include_bytes!("../../assets/trace.js")),
];

fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The versioned URL of asset `name`.
///
/// # Panics
/// If `name` is not in the table: a programming error caught by every page test.
pub(crate) fn url(name: &str) -> String {
    let asset = find(name).unwrap_or_else(|| panic!("no embedded asset {name}"));
    format!("/static/{}?v={:016x}", asset.name, asset.hash)
}

#[derive(Deserialize)]
pub(crate) struct Version {
    v: Option<String>,
}

/// `GET /static/{name}`.
pub(crate) async fn serve(Path(name): Path<String>, Query(version): Query<Version>) -> Response {
    let Some(asset) = find(&name) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let current = format!("{:016x}", asset.hash);
    let cache =
        if version.v.as_deref() == Some(current.as_str()) { "public, max-age=31536000, immutable" } else { "no-cache" };
    let mut resp = asset.body.into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{current}\"")) {
        headers.insert(header::ETAG, etag);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_the_content_hash() {
        let u = url("style.css");
        assert!(u.starts_with("/static/style.css?v="), "{u}");
        assert_eq!(u.len(), "/static/style.css?v=".len() + 16);
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}
