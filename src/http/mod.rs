//! The HTTP layer: one file per resource, each exposing a `router()`; [`router`] merges them
//! and adds what every route shares (body limit, JSON 404/405, request ids, metrics).
//!
//! Each route is registered together with its OpenAPI description (`utoipa_axum::routes!`),
//! so `GET /openapi.json` lists exactly the routes the router serves: the document cannot
//! drift from the code. `GET /docs` is an interactive page for it, with its assets built
//! into the binary.

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
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

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

#[derive(OpenApi)]
#[openapi(
    info(
        title = "syncasync",
        description = "Do a unit of work synchronously, or asynchronously with the result \
            delivered to a callback URL (durably, retried, optionally signed per Standard Webhooks).",
        license(name = "MIT OR Apache-2.0"),
    ),
    components(schemas(crate::model::CallbackPayload)),
    modifiers(&AdminToken),
    tags(
        (name = "work", description = "Submit work"),
        (name = "requests", description = "The record of every request"),
        (name = "operations", description = "Health, metrics and operator actions"),
    )
)]
struct ApiDoc;

/// The bearer token of the admin endpoints, as a security scheme.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "admin_token",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// The API's routes with their OpenAPI document (admin routes only with a token).
fn api(with_admin: bool) -> OpenApiRouter<AppState> {
    let api = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(sync::router())
        .merge(submit::router())
        .merge(requests::router())
        .merge(health::router())
        .merge(metrics::router());
    if with_admin {
        api.merge(admin::router())
    } else {
        api
    }
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let (routes, openapi) = api(state.admin_token.is_some()).split_for_parts();
    routes
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
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
