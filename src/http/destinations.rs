//! `GET /destinations` and the operator's controls over one destination (SPEC §11): pause,
//! resume, reset its breaker. Behind `Authorization: Bearer $APP_ADMIN_TOKEN`, mounted only
//! with an admin token, as the other operator routes are.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::error::ErrorBody;
use super::extract::JsonBody;
use super::{ApiError, AppState};
use crate::delivery::destinations::{DestinationView, destination_of};
use crate::input::FieldError;
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

/// Every callback destination (scheme, host, port) this instance delivered to recently, and
/// every paused one: its deliveries in flight, its successes and failures of the last five
/// minutes, its circuit breaker (breakers are per instance) and whether it is paused.
#[utoipa::path(
    get,
    path = "/destinations",
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

/// The body of the destination controls.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
struct DestinationRef {
    /// The destination, `scheme://host:port`, or any callback URL of it (its path is
    /// ignored; a missing port is the scheme's default).
    #[schema(example = "https://hooks.example.com:443", max_length = 2048)]
    destination: String,
}

/// Longest `destination` taken, as for a callback URL.
const MAX_DESTINATION_LEN: usize = 2048;

/// The destination a control's body names, as `scheme://host:port`.
fn destination_in(body: &Value) -> Result<String, ApiError> {
    let invalid = |kind, msg: &str, input: &Value| {
        ApiError::Validation(vec![FieldError::body(
            Some("destination"),
            kind,
            msg,
            input.clone(),
        )])
    };
    let Some(given) = body.get("destination") else {
        return Err(ApiError::Validation(vec![FieldError::body(
            Some("destination"),
            "missing",
            "Field required",
            body.clone(),
        )]));
    };
    let Some(text) = given.as_str() else {
        return Err(invalid(
            "string_type",
            "Input should be a valid string",
            given,
        ));
    };
    if text.len() > MAX_DESTINATION_LEN {
        return Err(invalid(
            "string_too_long",
            "String should have at most 2048 characters",
            given,
        ));
    }
    match url::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
            Ok(destination_of(&url))
        }
        _ => Err(invalid(
            "url_parsing",
            "Input should be a destination such as https://host:port (or a callback URL)",
            given,
        )),
    }
}

async fn control(
    state: &AppState,
    body: &Value,
    change: ControlChange,
) -> Result<Json<DestinationView>, ApiError> {
    let destination = destination_in(body)?;
    match state
        .service
        .control_destination(&destination, change)
        .await?
    {
        Some(view) => Ok(Json(view)),
        None => Err(ApiError::Conflict(format!(
            "{MAX_CONTROLLED_DESTINATIONS} destinations are paused already: resume one first"
        ))),
    }
}

/// Pause a destination: none of its jobs is claimed (no work starts, no delivery attempt)
/// until it is resumed, on every instance (within a second on the others) and across
/// restarts. Attempts already under way finish; no attempt is lost, and a paused job's
/// `waiting_for` is `paused`. Pausing a paused destination changes nothing.
#[utoipa::path(
    post,
    path = "/destinations/pause",
    tag = "operations",
    request_body = DestinationRef,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Paused: the destination now", body = DestinationView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "1,000 destinations are paused already", body = ErrorBody),
        (status = 422, description = "`destination` is missing or not a destination", body = ErrorBody),
    )
)]
async fn pause(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<DestinationView>, ApiError> {
    control(&state, &body, ControlChange::Pause).await
}

/// Resume a paused destination: its jobs are claimed again in due order, the overdue ones
/// first. Resuming a destination that is not paused changes nothing.
#[utoipa::path(
    post,
    path = "/destinations/resume",
    tag = "operations",
    request_body = DestinationRef,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Resumed: the destination now", body = DestinationView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 422, description = "`destination` is missing or not a destination", body = ErrorBody),
    )
)]
async fn resume(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<DestinationView>, ApiError> {
    control(&state, &body, ControlChange::Resume).await
}

/// Close the destination's circuit breaker on every instance (within a second on the
/// others), forgetting the failures that opened it: its held jobs are tried at once. If the
/// receiver still fails, the breaker opens again as before.
#[utoipa::path(
    post,
    path = "/destinations/reset-breaker",
    tag = "operations",
    request_body = DestinationRef,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Reset: the destination now", body = DestinationView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "1,000 destinations are paused already (a reset is \
            stored beside the pauses)", body = ErrorBody),
        (status = 422, description = "`destination` is missing or not a destination", body = ErrorBody),
    )
)]
async fn reset_breaker(
    _: Admin,
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<DestinationView>, ApiError> {
    control(&state, &body, ControlChange::ResetBreaker).await
}
