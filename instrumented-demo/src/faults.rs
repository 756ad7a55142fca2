//! Run-time fault injection: latency and error rate per endpoint, payment-provider outage, broker down.
//!
//! Every service holds a [`Faults`] (settings from its start flags, then replaced through
//! `POST /admin/faults`, shown by `GET /admin/faults`). [`inject`] is the axum middleware that applies
//! the per-endpoint rules to the service's own routes; the payment provider reads
//! [`Faults::provider_outage`] and the outbox relay [`Faults::broker_down`].

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// Longest latency a rule may inject.
pub const MAX_LATENCY: Duration = Duration::from_secs(60);

/// One rule: requests to `endpoint` (every endpoint when absent) are delayed by `latency_ms` and
/// fail with 503 with probability `error_rate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// `"/route"` or `"METHOD /route"` as the route is declared (e.g. `"POST /charges"`,
    /// `"/products/{id}"`); absent: every endpoint except `/admin/*` and `/healthz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Added latency in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Probability in [0, 1] that a request fails with 503.
    #[serde(default)]
    pub error_rate: f64,
}

/// Every fault of a service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {
    /// Per-endpoint latency and errors; the first rule matching a request applies.
    #[serde(default)]
    pub rules: Vec<FaultRule>,
    /// The external payment provider is unreachable (read by the payment provider).
    #[serde(default)]
    pub provider_outage: bool,
    /// The message broker is unreachable (read by the outbox relay).
    #[serde(default)]
    pub broker_down: bool,
}

impl FaultSettings {
    /// Checks ranges; the message names the offending rule.
    pub fn validate(&self) -> Result<(), String> {
        for (i, r) in self.rules.iter().enumerate() {
            if !(0.0..=1.0).contains(&r.error_rate) {
                return Err(format!("rules[{i}].error_rate must be in [0, 1], got {}", r.error_rate));
            }
            if Duration::from_millis(r.latency_ms) > MAX_LATENCY {
                return Err(format!("rules[{i}].latency_ms must be at most {}", MAX_LATENCY.as_millis()));
            }
            if let Some(e) = &r.endpoint
                && !e.contains('/')
            {
                return Err(format!("rules[{i}].endpoint must be \"/route\" or \"METHOD /route\", got {e:?}"));
            }
        }
        Ok(())
    }

    /// The first rule that applies to `method` `route`, if any.
    pub fn rule_for(&self, method: &str, route: &str) -> Option<&FaultRule> {
        if route.starts_with("/admin/") || route == "/healthz" {
            return None;
        }
        self.rules.iter().find(|r| match &r.endpoint {
            None => true,
            Some(e) => match e.split_once(' ') {
                Some((m, path)) => m.eq_ignore_ascii_case(method) && path == route,
                None => e == route,
            },
        })
    }
}

/// Fault flags: at service start (`obsbox demo-service <name> --error-rate 0.2`) and in
/// `obsbox demo faults set <service> ...`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FaultArgs {
    /// Endpoint the latency and error rate apply to (`/route` or `METHOD /route`); default: all.
    #[arg(long = "fault-endpoint", env = "OBSBOX_DEMO_FAULT_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Latency added to each request (e.g. 200ms).
    #[arg(long = "latency", env = "OBSBOX_DEMO_FAULT_LATENCY", value_parser = humantime::parse_duration)]
    pub latency: Option<Duration>,
    /// Probability in [0, 1] that a request fails with 503.
    #[arg(long = "error-rate", env = "OBSBOX_DEMO_FAULT_ERROR_RATE")]
    pub error_rate: Option<f64>,
    /// The external payment provider is down.
    #[arg(long = "provider-outage", env = "OBSBOX_DEMO_PROVIDER_OUTAGE")]
    pub provider_outage: bool,
    /// The message broker is down.
    #[arg(long = "broker-down", env = "OBSBOX_DEMO_BROKER_DOWN")]
    pub broker_down: bool,
}

impl FaultArgs {
    /// The settings these flags describe (validated).
    pub fn settings(&self) -> Result<FaultSettings, String> {
        let mut s = FaultSettings {
            provider_outage: self.provider_outage,
            broker_down: self.broker_down,
            ..FaultSettings::default()
        };
        if self.latency.is_some() || self.error_rate.is_some() || self.endpoint.is_some() {
            s.rules.push(FaultRule {
                endpoint: self.endpoint.clone(),
                latency_ms: self.latency.map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64),
                error_rate: self.error_rate.unwrap_or(0.0),
            });
        }
        s.validate()?;
        Ok(s)
    }

    /// The flags that reproduce these settings' first rule and switches, for a child process.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(e) = &self.endpoint {
            a.extend(["--fault-endpoint".to_owned(), e.clone()]);
        }
        if let Some(l) = self.latency {
            a.extend(["--latency".to_owned(), humantime::format_duration(l).to_string()]);
        }
        if let Some(r) = self.error_rate {
            a.extend(["--error-rate".to_owned(), r.to_string()]);
        }
        if self.provider_outage {
            a.push("--provider-outage".to_owned());
        }
        if self.broker_down {
            a.push("--broker-down".to_owned());
        }
        a
    }
}

/// A service's current faults, shared by its handlers.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<RwLock<FaultSettings>>);

impl Faults {
    /// Faults starting from `settings`.
    pub fn new(settings: FaultSettings) -> Faults {
        Faults(Arc::new(RwLock::new(settings)))
    }

    /// A copy of the current settings.
    pub fn get(&self) -> FaultSettings {
        self.0.read().clone()
    }

    /// Replaces the settings after validating them.
    pub fn set(&self, settings: FaultSettings) -> Result<(), String> {
        settings.validate()?;
        *self.0.write() = settings;
        Ok(())
    }

    /// Whether the external payment provider is down.
    pub fn provider_outage(&self) -> bool {
        self.0.read().provider_outage
    }

    /// Whether the message broker is down.
    pub fn broker_down(&self) -> bool {
        self.0.read().broker_down
    }

    /// What to do with a request: the latency to add and whether to fail it.
    pub fn decide(&self, method: &str, route: &str) -> (Duration, bool) {
        let s = self.0.read();
        match s.rule_for(method, route) {
            None => (Duration::ZERO, false),
            Some(r) => {
                (Duration::from_millis(r.latency_ms), r.error_rate > 0.0 && rand::random::<f64>() < r.error_rate)
            }
        }
    }
}

/// axum middleware (`route_layer(from_fn_with_state(faults, inject))`) applying the rules to the
/// matched route: sleeps the latency, then fails with 503 `injected fault` when the dice say so.
pub async fn inject(State(faults): State<Faults>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let route = route.as_deref().unwrap_or(req.uri().path());
    let (latency, fail) = faults.decide(req.method().as_str(), route);
    if !latency.is_zero() {
        tracing::debug!(latency_ms = latency.as_millis() as u64, "injecting latency");
        tokio::time::sleep(latency).await;
    }
    if fail {
        tracing::warn!(route, "injecting an error");
        return (StatusCode::SERVICE_UNAVAILABLE, "injected fault").into_response();
    }
    next.run(req).await
}

/// `GET /admin/faults`: the current settings.
pub async fn get_faults(State(faults): State<Faults>) -> Json<FaultSettings> {
    Json(faults.get())
}

/// `POST /admin/faults`: replaces the settings (JSON [`FaultSettings`]); 400 with the reason when invalid.
pub async fn set_faults(
    State(faults): State<Faults>,
    body: Result<Json<FaultSettings>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(settings) = match body {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    match faults.set(settings.clone()) {
        Ok(()) => {
            tracing::info!(?settings, "fault settings changed");
            Json(settings).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

/// The admin routes: `GET`/`POST /admin/faults`.
pub fn admin_routes(faults: Faults) -> axum::Router {
    axum::Router::new().route("/admin/faults", axum::routing::get(get_faults).post(set_faults)).with_state(faults)
}

/// Reads (`settings` none) or replaces the faults of every live instance of `service`, found
/// through the registry at `registry_url`; returns each instance with its settings afterwards.
pub async fn remote(
    registry_url: &str,
    service: &str,
    settings: Option<&FaultSettings>,
) -> crate::Result<Vec<(crate::registry::Instance, FaultSettings)>> {
    let http = crate::http::HttpClient::default();
    let registry = crate::registry::RegistryClient::new(registry_url, http.clone());
    let instances = registry.resolve(service).await?;
    if instances.is_empty() {
        return Err(crate::Error::NoInstance(service.to_owned()));
    }
    let mut out = Vec::new();
    for instance in instances {
        let url = format!("{}/admin/faults", instance.url);
        let req = match settings {
            Some(s) => http.raw().post(url).json(s),
            None => http.raw().get(url),
        };
        let resp = crate::registry::check(req.send().await?, service).await?;
        out.push((instance, resp.json().await?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    fn app(faults: Faults) -> axum::Router {
        axum::Router::new()
            .route("/charges", post(|| async { "charged" }))
            .route("/products/{id}", get(|| async { "product" }))
            .route_layer(axum::middleware::from_fn_with_state(faults.clone(), inject))
            .merge(admin_routes(faults))
    }

    async fn call(app: &axum::Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn faults_apply_only_to_their_endpoint() {
        let faults = Faults::default();
        let app = app(faults.clone());
        let rules = r#"{"rules":[{"endpoint":"POST /charges","error_rate":1.0}]}"#;
        assert_eq!(call(&app, "POST", "/admin/faults", rules).await.0, StatusCode::OK);
        for _ in 0..5 {
            assert_eq!(
                call(&app, "POST", "/charges", "").await,
                (StatusCode::SERVICE_UNAVAILABLE, "injected fault".into())
            );
            assert_eq!(call(&app, "GET", "/products/7", "").await.0, StatusCode::OK);
        }
        let (status, body) = call(&app, "GET", "/admin/faults", "").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("POST /charges"), "{body}");

        // A route-template rule, with latency: the product route is slowed, not failed.
        let rules = r#"{"rules":[{"endpoint":"/products/{id}","latency_ms":150}]}"#;
        assert_eq!(call(&app, "POST", "/admin/faults", rules).await.0, StatusCode::OK);
        let t = std::time::Instant::now();
        assert_eq!(call(&app, "GET", "/products/1", "").await.0, StatusCode::OK);
        assert!(t.elapsed() >= Duration::from_millis(150));
        let t = std::time::Instant::now();
        assert_eq!(call(&app, "POST", "/charges", "").await.0, StatusCode::OK);
        assert!(t.elapsed() < Duration::from_millis(150));
    }

    #[tokio::test]
    async fn error_rate_is_a_probability() {
        let faults = Faults::new(FaultSettings {
            rules: vec![FaultRule { endpoint: None, latency_ms: 0, error_rate: 0.5 }],
            ..Default::default()
        });
        let failed = (0..2000).filter(|_| faults.decide("GET", "/x").1).count();
        assert!((800..1200).contains(&failed), "{failed} of 2000 failed at rate 0.5");
        for _ in 0..100 {
            assert!(!faults.decide("POST", "/admin/faults").1 && !faults.decide("GET", "/healthz").1);
        }
    }

    #[tokio::test]
    async fn bad_settings_are_refused_with_a_reason() {
        let app = app(Faults::default());
        let (status, body) = call(&app, "POST", "/admin/faults", r#"{"rules":[{"error_rate":1.5}]}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("error_rate"), "{body}");
        let (status, _) = call(&app, "POST", "/admin/faults", r#"{"rulez":[]}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = call(&app, "POST", "/admin/faults", "not json").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(call(&app, "GET", "/products/1", "").await.0, StatusCode::OK);
    }

    #[test]
    fn flags_make_settings() {
        let args = FaultArgs {
            endpoint: Some("POST /charges".into()),
            latency: Some(Duration::from_millis(200)),
            error_rate: Some(0.25),
            provider_outage: true,
            broker_down: false,
        };
        let s = args.settings().unwrap();
        assert!(s.provider_outage && !s.broker_down);
        assert_eq!(
            s.rules,
            vec![FaultRule { endpoint: Some("POST /charges".into()), latency_ms: 200, error_rate: 0.25 }]
        );
        assert!(FaultArgs { error_rate: Some(2.0), ..Default::default() }.settings().is_err());
    }
}
