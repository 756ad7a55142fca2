//! Every route of the UI port probed with malformed input: bad trace and span ids, invalid
//! UTF-8 percent-escapes in paths and queries, huge and negative numbers, unknown enum values,
//! broken query languages, unknown paths. Each must answer 4xx with a message, never 5xx
//! (and never hang). Also: no redirect leaves the site, whatever the input.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use obsbox_query_ui::{AppState, router};
use obsbox_storage::MemStore;
use tower::ServiceExt;

const ID: &str = "0123456789abcdef0123456789abcdef";
const BIG: &str = "99999999999999999999999999";

fn app() -> Router {
    let state =
        AppState::new(Arc::new(MemStore::new()), prometheus::Registry::new(), Arc::new(AtomicBool::new(true))).unwrap();
    router(state)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, header::HeaderMap, String) {
    let req = Request::get(uri).body(Body::empty()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(req))
        .await
        .unwrap_or_else(|_| panic!("{uri}: no answer within 10 s"))
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

/// Requests that are wrong and must be refused with 4xx and a message.
fn malformed() -> Vec<String> {
    let mut uris: Vec<String> = [
        // The web UI.
        "/trace/zz",
        "/trace/%FF%FE",
        "/trace/0123456789abcdef0123456789abcdef00",
        "/trace/%2e%2e%2fetc%2fpasswd",
        "/trace/ID?span=zz",
        "/trace/ID?span=%FF",
        "/trace/ID?view=sideways",
        "/trace/ID?page=-1",
        "/trace/ID?page=BIG",
        "/trace/ID?page=abc",
        "/trace/ID?compare=zz",
        "/trace/ID?compare=//evil.example",
        "/trace/ID?compare=https://evil.example/",
        "/trace/zz/data",
        "/trace/%FF/data",
        "/trace/ID/compare?with=",
        "/trace/ID/compare?with=//evil.example",
        "/trace/ID/compare?with=%2F%2Fevil.example",
        "/trace/ID/compare?with=https%3A%2F%2Fevil.example",
        "/trace/ID/compare?with=%FF",
        "/trace/zz/compare/ID",
        "/trace/ID/compare/zz",
        "/trace/ID/compare/%FF",
        "/search?limit=abc",
        "/search?limit=-5",
        "/search?limit=BIG",
        "/search?minDuration=soon",
        "/search?maxDuration=-1s",
        "/search?minTraceDuration=BIG",
        "/search?kind=sideways",
        "/search?status=maybe",
        "/search?sort=sideways",
        "/search?filter=(((",
        "/search?filter=a%20%3D%3D%3D%201",
        "/search?range=forever",
        "/search?range=BIGh",
        "/search?from=yesterday",
        "/search?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "/logs?query=(((",
        "/logs?limit=BIG",
        "/logs?limit=-1",
        "/logs?cursor=%FF%FE",
        "/logs?cursor=not-a-cursor",
        "/logs?range=0s",
        "/map?range=BIGd",
        "/map?from=%FF",
        "/services?range=x",
        "/services?sort=sideways",
        "/services?dir=sideways",
        "/explore?expr=sum(",
        "/explore?expr=%FF(",
        "/explore?range=-1h",
        "/slos?sort=sideways",
        "/slo/nope",
        "/slo/%FF",
        "/static/nope.js",
        "/static/..%2F..%2FCargo.toml",
        "/static/%FF",
        // The native API.
        "/api/v1/traces?limit=abc",
        "/api/v1/traces?limit=BIG",
        "/api/v1/traces?limit=-1",
        "/api/v1/traces?start=yesterday",
        "/api/v1/traces?lookback=BIGh",
        "/api/v1/traces?minDuration=soon",
        "/api/v1/traces?kind=sideways",
        "/api/v1/traces?status=maybe",
        "/api/v1/traces?filter=(((",
        "/api/v1/traces/zz",
        "/api/v1/traces/%FF",
        "/api/v1/traces/0123",
        "/api/v1/traces/zz/logs",
        "/api/v1/traces/ID/logs?spanId=zz",
        "/api/v1/traces/ID/logs?limit=BIG",
        "/api/v1/logs?query=(((",
        "/api/v1/logs?limit=BIG",
        "/api/v1/logs?cursor=%FF",
        "/api/v1/logs?start=1&end=0",
        "/api/v1/logs/histogram?start=1&end=0",
        "/api/v1/logs/histogram?query=(((",
        "/api/v1/logs/tail?query=(((",
        "/api/v1/attributes?signal=metrics",
        "/api/v1/attributes?scope=sideways",
        "/api/v1/attributes/k/values?limit=BIG",
        "/api/v1/attributes/k/values?signal=bogus",
        "/api/v1/attributes/%FF/values",
        "/api/v1/services?lookback=soon",
        "/api/v1/services/%FF/operations",
        "/api/v1/services/s/operations?kind=sideways",
        "/api/v1/dependencies?start=yesterday",
        "/api/v1/slos/nope",
        "/api/v1/slos/%FF",
        "/api/v1/nope",
        // The Jaeger API.
        "/api/traces?limit=abc",
        "/api/traces?start=yesterday",
        "/api/traces?minDuration=soon",
        "/api/traces?tags=%7Bnot-json",
        "/api/traces?tags=%FF",
        "/api/traces?lookback=BIGh",
        "/api/traces/zz",
        "/api/traces/%FF",
        "/api/dependencies?endTs=abc",
        "/api/dependencies?lookback=-1",
        "/api/services/%FF/operations",
        "/api/operations?service=s&spanKind=sideways",
        // The Loki API.
        "/loki/api/v1/query_range?query=%7B",
        "/loki/api/v1/query_range?query=%7Bx%3D%22y%22%7D&start=yesterday",
        "/loki/api/v1/query_range?query=%7Bx%3D%22y%22%7D&step=0",
        "/loki/api/v1/query_range?query=%7Bx%3D%22y%22%7D&limit=-1",
        "/loki/api/v1/query_range?query=%7Bx%3D%22y%22%7D&direction=sideways",
        "/loki/api/v1/query_range?query=%FF",
        "/loki/api/v1/query?query=sum(",
        "/loki/api/v1/query?query=%7Bx%3D%22y%22%7D&time=yesterday",
        "/loki/api/v1/label/%FF/values",
        "/loki/api/v1/label/x/values?query=%7B",
        "/loki/api/v1/series?match[]=%7B",
        "/loki/api/v1/index/volume?query=%7B",
        "/loki/api/v1/index/volume_range?query=%7Bx%3D%22y%22%7D&step=0",
        "/loki/api/v1/index/stats?query=%7B",
        "/loki/api/v1/detected_fields?query=%7B",
        "/loki/api/v1/format_query?query=%7B",
        "/loki/api/v1/nope",
        // The Prometheus API.
        "/prometheus/api/v1/query?query=sum(",
        "/prometheus/api/v1/query?query=%FF",
        "/prometheus/api/v1/query?query=up&time=yesterday",
        "/prometheus/api/v1/query_range?query=up&start=0&end=100&step=0",
        "/prometheus/api/v1/query_range?query=up&start=0&end=100&step=-1",
        "/prometheus/api/v1/query_range?query=up&start=100&end=0&step=1",
        "/prometheus/api/v1/query_range?query=up&start=0&end=BIG&step=1",
        "/prometheus/api/v1/query_range?query=up&start=0&end=100000000&step=0.001",
        "/prometheus/api/v1/series?match[]=%7B",
        "/prometheus/api/v1/series",
        "/prometheus/api/v1/label/%FF/values",
        "/prometheus/api/v1/label/x/values?match[]=%7B",
        "/prometheus/api/v1/labels?start=yesterday",
        "/prometheus/api/v1/query_exemplars?query=sum(",
        "/prometheus/api/v1/nope",
        // No route at all.
        "/nope",
        "/%FF",
        "//evil.example",
    ]
    .iter()
    .map(|u| u.replace("ID", ID).replace("BIG", BIG))
    .collect();
    // An over-long query value: refused by a length limit or parsed and answered, never a crash.
    uris.push(format!("/api/v1/traces?filter={}", "(".repeat(10_000)));
    uris.push(format!("/loki/api/v1/query_range?query={}", "%7B".repeat(10_000)));
    uris
}

/// Odd but not wrong input (invalid UTF-8 in a query value decodes lossily to U+FFFD, as
/// browsers' forms do): any answer but a 5xx.
fn odd() -> Vec<String> {
    [
        "/search?service=%FF%FE",
        "/search?filter=%FF%FE%3D1",
        "/logs?query=%FF",
        "/logs?query=service:",
        "/services?service=%FF",
        "/api/v1/traces?service=%FF",
        "/api/v1/logs?query=%C0%AF",
        "/api/services/x/operations?kind=%FF",
        "/api/traces?service=%FF&limit=1",
        "/loki/api/v1/query_range?query=%7Bservice_name%3D%22%FF%22%7D",
        "/prometheus/api/v1/query?query=up%7Bjob%3D%22%FF%22%7D",
        "/trace/ID?page=1&page=2",
        "/search?limit=1&limit=BIG",
    ]
    .iter()
    .map(|u| u.replace("ID", ID).replace("BIG", BIG))
    .collect()
}

#[tokio::test]
async fn odd_input_never_gets_a_5xx() {
    let app = app();
    for uri in odd() {
        let (status, _, body) = get(&app, &uri).await;
        assert!(!status.is_server_error(), "{uri}: {status} {body}");
    }
}

#[tokio::test]
async fn every_route_refuses_malformed_input_with_4xx_and_a_message() {
    let app = app();
    let mut wrong = Vec::new();
    for uri in malformed() {
        let (status, headers, body) = get(&app, &uri).await;
        let short = &uri[..uri.len().min(120)];
        if !status.is_client_error() || body.trim().is_empty() {
            wrong.push(format!("{short}: {status} {:?}", &body[..body.len().min(200)]));
        }
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{short}");
    }
    assert!(wrong.is_empty(), "not a 4xx with a message:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn no_redirect_leaves_the_site() {
    let app = app();
    // The redirects there are: `/` to the services page, and the two compare forms.
    let (status, headers, _) = get(&app, "/").await;
    assert!(status.is_redirection());
    assert_eq!(headers[header::LOCATION], "/services");
    let other = "fedcba9876543210fedcba9876543210";
    for uri in [format!("/trace/{ID}?compare={other}"), format!("/trace/{ID}/compare?with={other}")] {
        let (status, headers, _) = get(&app, &uri).await;
        assert!(status.is_redirection(), "{uri}: {status}");
        assert_eq!(headers[header::LOCATION], format!("/trace/{ID}/compare/{other}").as_str());
    }
    // Whatever the input, a Location is a path on this site: no scheme, no `//host`, no `/\`.
    let hostile = [
        "//evil.example",
        "/%2F%2Fevil.example",
        "https://evil.example",
        "%2F%2Fevil.example",
        "/\\evil.example",
        "%5C%5Cevil.example",
        "%0D%0ALocation:%20https://evil.example",
    ];
    for h in hostile {
        for uri in [
            format!("/{h}"),
            format!("/trace/{ID}?compare={h}"),
            format!("/trace/{ID}/compare?with={h}"),
            format!("/trace/{h}?compare={other}"),
            format!("/trace/{h}/compare?with={other}"),
        ] {
            let Ok(req) = Request::get(&uri).body(Body::empty()) else { continue };
            let resp = app.clone().oneshot(req).await.unwrap();
            if let Some(location) = resp.headers().get(header::LOCATION) {
                let l = location.to_str().unwrap();
                assert!(
                    l.starts_with('/') && !l.starts_with("//") && !l.starts_with("/\\") && !l.contains("evil"),
                    "{uri} redirects to {l}"
                );
            }
            assert!(!resp.status().is_server_error(), "{uri}: {}", resp.status());
        }
    }
}

#[tokio::test]
async fn form_posts_to_the_query_apis_refuse_malformed_bodies() {
    let app = app();
    let cases: [(&str, &str, &[u8]); 8] = [
        ("/prometheus/api/v1/query", "application/x-www-form-urlencoded", b"query=sum("),
        ("/prometheus/api/v1/query", "application/x-www-form-urlencoded", b"query=up&time=yesterday"),
        ("/prometheus/api/v1/query_range", "application/x-www-form-urlencoded", b"query=up&start=0&end=10&step=0"),
        ("/prometheus/api/v1/series", "application/x-www-form-urlencoded", b"match[]=%7B"),
        ("/prometheus/api/v1/query", "application/x-www-form-urlencoded", b"\xff\xfe=\xff"),
        ("/loki/api/v1/query_range", "application/x-www-form-urlencoded", b"query=%7B"),
        ("/loki/api/v1/query", "application/x-www-form-urlencoded", b"query=sum("),
        ("/loki/api/v1/labels", "application/x-www-form-urlencoded", b"start=yesterday"),
    ];
    for (path, content_type, body) in cases {
        let req = Request::post(path).header(header::CONTENT_TYPE, content_type).body(Body::from(body)).unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(status.is_client_error() && !text.is_empty(), "{path} {body:?}: {status} {text:?}");
    }
    // Another content type or a huge body: refused or ignored, never a 5xx.
    for (content_type, body) in
        [("application/json", b"{\"query\":\"up\"}".to_vec()), ("text/plain", vec![b'a'; 8 << 20])]
    {
        let req = Request::post("/prometheus/api/v1/query")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert!(!resp.status().is_server_error(), "{content_type}: {}", resp.status());
    }
}
