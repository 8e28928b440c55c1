//! The HTTP layer: one file per resource, each exposing a `router()`; [`router`] merges them
//! and adds what every route shares (body limit, JSON 404/405).

mod admin;
mod error;
mod extract;
mod health;
mod metrics;
mod request_id;
mod requests;
mod submit;
mod sync;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};

use crate::service::Service;
pub use error::ApiError;
use extract::BodyLimit;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub service: Service,
    /// `APP_ADMIN_TOKEN`; `None` hides the admin endpoints.
    pub admin_token: Option<Arc<str>>,
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let mut routes = Router::new()
        .merge(sync::router())
        .merge(submit::router())
        .merge(requests::router())
        .merge(health::router())
        .merge(metrics::router());
    if state.admin_token.is_some() {
        routes = routes.merge(admin::router());
    }
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(
            move |mut req: Request, next: Next| async move {
                req.extensions_mut().insert(BodyLimit(max_body_bytes));
                next.run(req).await
            },
        ))
        // Outermost, so that every response (404s and 413s included) carries the id and is
        // logged.
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.service.metrics),
            request_id::middleware,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
