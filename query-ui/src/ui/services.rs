//! The Services page at `/services`: per service and operation, request rate, error rate and
//! latency quantiles over the chosen range.

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;

use super::range::{RangeParams, UiRange, url};
use super::{Layout, Nav, UiError, render, svc_class};
use crate::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/services", get(page))
}

#[derive(Deserialize)]
struct Params {
    #[serde(flatten)]
    range: RangeParams,
}

struct OpRow {
    name: String,
    href: String,
}

struct ServiceRow {
    name: String,
    class: String,
    href: String,
    operations: Vec<OpRow>,
}

#[derive(Template)]
#[template(path = "services.html")]
struct ServicesPage {
    layout: Layout,
    range: UiRange,
    problem: Option<String>,
    services: Vec<ServiceRow>,
}

async fn page(State(state): State<AppState>, Query(params): Query<Params>) -> Result<Response, UiError> {
    let range = params.range.parse("1h").map_err(UiError::bad_request)?;
    let ops = state.query.operations(None, None, range.time).await?;
    let mut services: Vec<ServiceRow> = Vec::new();
    for op in ops {
        if services.last().is_none_or(|s| s.name != op.service) {
            services.push(ServiceRow {
                class: svc_class(&op.service),
                href: url("/search", [("service", op.service.as_str())]),
                name: op.service.clone(),
                operations: Vec::new(),
            });
        }
        let row = services.last_mut().expect("pushed above");
        if row.operations.last().is_none_or(|o| o.name != op.name) {
            let href = url("/search", [("service", op.service.as_str()), ("operation", op.name.as_str())]);
            row.operations.push(OpRow { name: op.name, href });
        }
    }
    let layout = Layout::new("Services", Nav::Services, &[]);
    Ok(render(&ServicesPage { layout, range, problem: None, services }))
}
