//! `GET /destinations` and the operator's controls over one destination (SPEC §11):
//! `POST /destinations/{key}/pause`, `/resume` and `/reset` (its breaker). Behind `Authorization: Bearer $APP_ADMIN_TOKEN`, mounted only
//! with an admin token, as the other operator routes are.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::delivery::destinations::{DestinationView, destination_of};
use crate::input::{FieldError, Part};
use crate::store::{ControlChange, MAX_CONTROLLED_DESTINATIONS};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(destinations))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(reset_breaker))
}

/// `GET /destinations` → 200.
#[derive(Serialize, ToSchema)]
pub struct DestinationList {
    /// Busiest first: most deliveries in flight, then most recent failures; paused
    /// destinations not delivered to recently last.
    destinations: Vec<DestinationView>,
}

/// Callback destinations and their health.
///
/// Every callback destination (scheme, host, port) this instance delivered to recently, and
/// every paused one: its deliveries in flight, its successes and failures of the last five
/// minutes, its circuit breaker (breakers are per instance) and whether it is paused.
#[utoipa::path(
    get,
    path = "/destinations",
    operation_id = "listDestinations",
    tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Destinations seen recently, and the paused ones", body = DestinationList),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    )
)]
async fn destinations(_: Admin, State(state): State<AppState>) -> Json<DestinationList> {
    Json(DestinationList {
        destinations: state.service.destinations(),
    })
}

/// The `{key}` of `/destinations/{key}/…`: the destination as `GET /destinations` names it
/// (`scheme://host:port`), percent-encoded; a missing port is the scheme's default. A path,
/// query or credentials are refused rather than ignored: taking them would invite callback
/// URLs pasted whole, and the access log, which logs request paths, would keep their
/// secrets.
pub struct DestinationKey(String);

/// Longest key taken, as for a callback URL.
const MAX_KEY_LEN: usize = 2048;

impl<S: Send + Sync> FromRequestParts<S> for DestinationKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let invalid = |msg: &str, input: &str| {
            ApiError::Validation(vec![FieldError::new(
                Part::Path,
                Some("key"),
                "url_parsing",
                msg,
                Value::from(input),
            )])
        };
        let key = match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(key)) => key,
            Err(_) => {
                return Err(invalid(
                    "Input should be a percent-encoded UTF-8 destination",
                    "",
                ));
            }
        };
        if key.len() > MAX_KEY_LEN {
            // Not echoed, as below.
            return Err(invalid("Input should have at most 2048 characters", ""));
        }
        let origin_only = |url: &url::Url| {
            url.path() == "/"
                && url.query().is_none()
                && url.fragment().is_none()
                && url.username().is_empty()
                && url.password().is_none()
        };
        match url::Url::parse(&key) {
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.host_str().is_some()
                    && origin_only(&url) =>
            {
                Ok(Self(destination_of(&url)))
            }
            // Not echoed: it may be a callback URL with a secret in it.
            _ => Err(invalid(
                "Input should be a destination such as https://host:443 (no path, query or \
                 credentials), percent-encoded",
                "",
            )),
        }
    }
}

async fn control(
    state: &AppState,
    destination: &str,
    change: ControlChange,
) -> Result<Json<DestinationView>, ApiError> {
    match state
        .service
        .control_destination(destination, change)
        .await?
    {
        Some(view) => Ok(Json(view)),
        None => Err(ApiError::Conflict(format!(
            "{MAX_CONTROLLED_DESTINATIONS} destinations are paused already: resume one first"
        ))),
    }
}

/// Pause deliveries to a destination.
///
/// Pause a destination: none of its jobs is claimed (no work starts, no delivery attempt)
/// until it is resumed, on every instance (within a second on the others) and across
/// restarts. Jobs already under way finish (the answer's `in_flight` counts them on this
/// instance); none is lost, and a paused job's `waiting_for` is `paused`. Pausing a paused
/// destination changes nothing.
#[utoipa::path(
    post,
    path = "/destinations/{key}/pause",
    operation_id = "pauseDestination",
    tag = "operations",
    params(("key" = String, Path, description = "The destination as `GET /destinations` \
        names it (`scheme://host:port`), percent-encoded",
        pattern = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$", example = "https://hooks.example.com:443")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Paused: the destination now", body = DestinationView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "1,000 destinations are paused already", body = ErrorBody),
        (status = 422, description = "`key` is not a destination", body = ErrorBody),
    )
)]
async fn pause(
    _: Admin,
    State(state): State<AppState>,
    DestinationKey(destination): DestinationKey,
) -> Result<Json<DestinationView>, ApiError> {
    control(&state, &destination, ControlChange::Pause).await
}

/// Resume deliveries to a destination.
///
/// Resume a paused destination: its jobs are claimed again in due order, the overdue ones
/// first. Resuming a destination that is not paused changes nothing.
#[utoipa::path(
    post,
    path = "/destinations/{key}/resume",
    operation_id = "resumeDestination",
    tag = "operations",
    params(("key" = String, Path, description = "The destination as `GET /destinations` \
        names it (`scheme://host:port`), percent-encoded",
        pattern = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$", example = "https://hooks.example.com:443")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Resumed: the destination now", body = DestinationView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 422, description = "`key` is not a destination", body = ErrorBody),
    )
)]
async fn resume(
    _: Admin,
    State(state): State<AppState>,
    DestinationKey(destination): DestinationKey,
) -> Result<Json<DestinationView>, ApiError> {
    control(&state, &destination, ControlChange::Resume).await
}

/// Close a destination's circuit breaker.
///
/// Close the destination's circuit breaker on every instance (within a second on the
/// others), forgetting the failures that opened it: its held jobs are tried at once. If the
/// receiver still fails, the breaker opens again as before.
#[utoipa::path(
    post,
    path = "/destinations/{key}/reset",
    operation_id = "resetDestinationBreaker",
    tag = "operations",
    params(("key" = String, Path, description = "The destination as `GET /destinations` \
        names it (`scheme://host:port`), percent-encoded",
        pattern = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$", example = "https://hooks.example.com:443")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Reset: the destination now", body = DestinationView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "1,000 destinations are paused already (a reset is \
            stored beside the pauses)", body = ErrorBody),
        (status = 422, description = "`key` is not a destination", body = ErrorBody),
    )
)]
async fn reset_breaker(
    _: Admin,
    State(state): State<AppState>,
    DestinationKey(destination): DestinationKey,
) -> Result<Json<DestinationView>, ApiError> {
    control(&state, &destination, ControlChange::ResetBreaker).await
}
