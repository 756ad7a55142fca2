//! The provider service (routes and logic to come; for now it serves only the common routes).

use crate::Result;
use crate::services::ServiceContext;

/// Runs the provider service.
pub async fn run(ctx: ServiceContext) -> Result<()> {
    crate::services::serve(&ctx, axum::Router::new()).await
}
