//! Request parameters as Loki and Prometheus read them: the query string, then, for a POST with
//! an `application/x-www-form-urlencoded` body, the form fields (later values win on lookup).

use axum::extract::Request;
use axum::http::{Method, header};

/// Largest form body read, in bytes.
pub(crate) const MAX_FORM_BYTES: usize = 256 * 1024;

/// Query-string pairs followed by form-body pairs. The error is a message for a 400.
pub(crate) async fn query_and_form(req: Request) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> =
        req.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if req.method() == Method::POST && form {
        let body = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES)
            .await
            .map_err(|_| format!("request body larger than {MAX_FORM_BYTES} bytes"))?;
        out.extend(form_urlencoded::parse(&body).into_owned());
    }
    Ok(out)
}
