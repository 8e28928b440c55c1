//! The HTTP layer: one file per resource, each exposing a `router()`; [`router`] merges them
//! and adds what every route shares (JSON 404/405, request ids, metrics, the API token);
//! [`serve`] runs it on a listener under the connection limits.
//!
//! Each route is registered together with its OpenAPI description (`utoipa_axum::routes!`),
//! so `GET /openapi.json` lists exactly the routes the router serves: the document cannot
//! drift from the code. `GET /docs` is an interactive page for it, with its assets built
//! into the binary. Both need the API token when one is set, as the API does.

mod admin;
mod auth;
mod batch;
mod callback_doc;
mod control;
mod destinations;
mod error;
mod events;
mod extract;
mod health;
mod idempotency;
mod metrics;
mod request_id;
mod requests;
mod server;
mod submit;
mod sync;
mod wait;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware;
use axum::response::IntoResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::input::ControlLimits;
pub use crate::long_lived::LongLived;
use crate::service::Service;
pub(crate) use auth::require_api_token;
pub use error::ApiError;
pub use extract::BodyLimits;
pub use server::{ConnectionLimits, serve};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Behind one `Arc`: the state is cloned for every request (extractors, middleware), and
    /// a `Service` clone is a dozen reference counts.
    pub service: Arc<Service>,
    /// `APP_ADMIN_TOKEN`; `None` hides the admin endpoints.
    pub admin_token: Option<Arc<str>>,
    /// `APP_API_TOKEN`; `None` leaves the API open.
    pub api_token: Option<Arc<str>>,
    pub body_limits: BodyLimits,
    /// The cap and lifetime of event streams and waits.
    pub long_lived: LongLived,
    /// The operator dashboard's last 15 minutes (`/ui`).
    pub dashboard: Arc<crate::ui::History>,
}

impl FromRef<AppState> for BodyLimits {
    fn from_ref(state: &AppState) -> Self {
        state.body_limits
    }
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
    modifiers(&BearerTokens),
    tags(
        (name = "work", description = "Submit work"),
        (name = "requests", description = "The record of every request"),
        (name = "operations", description = "Health, metrics and operator actions"),
    )
)]
struct ApiDoc;

/// The bearer tokens, as security schemes. Operations name the one they need: admin
/// operations always, the others only when `APP_API_TOKEN` is set (see [`api`]).
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "admin_token",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
            components.add_security_scheme(
                "api_token",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// The API's routes with their OpenAPI document. `/healthz` is open to all (load balancers
/// do not hold tokens), admin routes (mounted only with an admin token) check the admin
/// token themselves, and every other route needs the API token when one is set.
fn api(state: &AppState) -> OpenApiRouter<AppState> {
    let mut protected = OpenApiRouter::new()
        .merge(sync::router())
        .merge(submit::router())
        .merge(batch::router())
        .merge(requests::router())
        .merge(control::router())
        .merge(events::router())
        .merge(metrics::router());
    if let Some(token) = state.api_token.clone() {
        protected = protected.route_layer(middleware::from_fn_with_state(
            token,
            auth::require_api_token,
        ));
        require_api_token_in_doc(protected.get_openapi_mut());
    }
    let api = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(protected)
        .merge(health::router());
    if state.admin_token.is_some() {
        api.merge(admin::router()).merge(destinations::router())
    } else {
        api
    }
}

/// Marks every operation of `doc` as needing the API token, with its 401 answer.
fn require_api_token_in_doc(doc: &mut utoipa::openapi::OpenApi) {
    let unauthorized = Response::builder()
        .description("Missing or wrong bearer token (APP_API_TOKEN)")
        .content(
            "application/json",
            Content::new(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody")))),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            operation.security = Some(vec![SecurityRequirement::new(
                "api_token",
                Vec::<String>::new(),
            )]);
            operation
                .responses
                .responses
                .insert("401".into(), RefOr::T(unauthorized.clone()));
        }
    }
}

/// `doc` with the operator's caps on what a request may ask for (SPEC §11) as the maxima of
/// those fields: the settings are read at start-up, after the document is derived, and a
/// client (or a fuzzer) that trusts the document must not be refused.
fn with_operator_caps(
    mut doc: utoipa::openapi::OpenApi,
    limits: &ControlLimits,
) -> utoipa::openapi::OpenApi {
    use utoipa::Number;
    use utoipa::openapi::schema::Schema;
    let maxima = [
        (
            "delay_seconds",
            Number::Float(limits.max_schedule_delay.as_secs_f64()),
        ),
        (
            "callback_max_retries",
            Number::UInt(limits.max_retries as usize),
        ),
        (
            "callback_timeout_seconds",
            Number::Float(limits.max_callback_timeout.as_secs_f64()),
        ),
    ];
    let Some(components) = doc.components.as_mut() else {
        return doc;
    };
    // `AsyncRequest` is an `allOf` of the work fields and its own (a flattened struct).
    let Some(RefOr::T(Schema::AllOf(all_of))) = components.schemas.get_mut("AsyncRequest") else {
        return doc;
    };
    for part in &mut all_of.items {
        let RefOr::T(Schema::Object(object)) = part else {
            continue;
        };
        for (name, maximum) in &maxima {
            if let Some(RefOr::T(Schema::Object(field))) = object.properties.get_mut(*name) {
                field.maximum = Some(maximum.clone());
            }
        }
    }
    doc
}

/// The title of the `/docs` page (Swagger UI's own page says only "Swagger UI", which tells a
/// reader with several tabs open nothing).
const DOCS_TITLE: &str = concat!(
    "<title>syncasync ",
    env!("CARGO_PKG_VERSION"),
    " API</title>"
);

/// Gives Swagger UI's page (the one HTML file of `/docs`) the service's title.
async fn docs_page_title(req: Request, next: middleware::Next) -> axum::response::Response {
    let response = next.run(req).await;
    let is_html = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    let encoded = response
        .headers()
        .contains_key(axum::http::header::CONTENT_ENCODING);
    if !is_html || encoded {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // The page is under a kilobyte, built into the binary.
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let page = String::from_utf8_lossy(&bytes).replace("<title>Swagger UI</title>", DOCS_TITLE);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, axum::body::Body::from(page))
}

pub fn router(state: AppState) -> Router {
    let (routes, openapi) = api(&state).split_for_parts();
    let mut openapi = with_operator_caps(openapi, &state.service.control_limits);
    openapi.webhooks = Some(callback_doc::webhooks());
    let api_paths = Arc::new(PathMatcher::new(openapi.paths.paths.keys()));
    let max_body_bytes = state.body_limits.max_bytes;
    // No online validator: Swagger UI would send the document's address to swagger.io from
    // every browser that opens /docs.
    let swagger = SwaggerUi::new("/docs")
        .url("/openapi.json", openapi)
        .config(utoipa_swagger_ui::Config::default().validator_url("none"));
    let mut docs = Router::from(swagger).layer(middleware::from_fn(docs_page_title));
    if let Some(token) = state.api_token.clone() {
        // The document maps every operation: whoever may not call the API need not read it
        // (SPEC §9). A browser cannot add the header to a page load, so the page is opened
        // with a client that sends it (see APP_API_TOKEN's help).
        docs = docs.route_layer(middleware::from_fn_with_state(
            token,
            auth::require_api_token,
        ));
    }
    routes
        .merge(docs)
        // The dashboard: not API, so not in the document.
        .merge(crate::ui::router(&state))
        .fallback(move |req: Request| not_found(Arc::clone(&api_paths), req))
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(error::json_error_shape))
        // Bodies are read by `extract::JsonBody` under its own limits; this one holds any
        // other body extractor a route may come to use to the same size.
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // Outermost, so that every response (401s, 404s and 413s included) carries the id
        // and is logged.
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.service.metrics),
            request_id::middleware,
        ))
        .with_state(state)
}

/// The API's paths (`/requests/{id}`), to tell whether a path is one of them.
struct PathMatcher(matchit::Router<()>);

impl PathMatcher {
    fn new<'a>(paths: impl Iterator<Item = &'a String>) -> Self {
        let mut router = matchit::Router::new();
        for path in paths {
            // The document's paths are the router's, so each is a valid, distinct route.
            let _ = router.insert(path.as_str(), ());
        }
        Self(router)
    }

    fn matches(&self, path: &str) -> bool {
        self.0.at(path).is_ok()
    }
}

/// An unknown path. One that is an API path but for a trailing slash (`POST /sync/`) is
/// redirected to it with a 307, which keeps the method and body, as the original's framework
/// did (Starlette's `redirect_slashes`); the Location is relative, so that it holds behind a
/// proxy that terminates TLS.
async fn not_found(api_paths: Arc<PathMatcher>, req: Request) -> axum::response::Response {
    let path = req.uri().path();
    // A browser opening the service's address lands on the dashboard; any other client gets
    // the original's 404, as its clients and monitors expect.
    if path == "/" && req.method() == Method::GET && asks_for_html(&req) {
        return (
            StatusCode::FOUND,
            [(header::LOCATION, HeaderValue::from_static("/ui"))],
        )
            .into_response();
    }
    if let Some(trimmed) = path.strip_suffix('/').filter(|p| !p.is_empty())
        && api_paths.matches(trimmed)
    {
        let location = match req.uri().query() {
            Some(query) => format!("{trimmed}?{query}"),
            None => trimmed.to_string(),
        };
        if let Ok(location) = HeaderValue::from_str(&location) {
            return (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
            )
                .into_response();
        }
    }
    ApiError::NotFound.into_response()
}

/// On an event stream: tells a proxy in front (nginx reads this header) to pass each event
/// on as it is written, whatever its own buffering is set to.
pub const UNBUFFERED: [(header::HeaderName, &str); 1] =
    [(header::HeaderName::from_static("x-accel-buffering"), "no")];

/// Whether the request's `Accept` names HTML, as a browser's page load does.
fn asks_for_html(req: &Request) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("text/html"))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
