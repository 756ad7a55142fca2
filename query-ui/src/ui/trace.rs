//! The trace view at `/trace/{id}`.

use axum::Router;

use crate::AppState;

/// The trace view's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
}
