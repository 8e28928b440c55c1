//! `POST /admin/cleanup`, `POST /requests/{id}/redeliver` and `GET /destinations`: operator
//! actions and views, behind `Authorization: Bearer $APP_ADMIN_TOKEN`.
//! Without a configured token the routes are not mounted at all (404 for every method), so
//! an unconfigured service does not even reveal them.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::error::ErrorBody;
use super::extract::PathId;
use super::{ApiError, AppState};
use crate::delivery::destinations::DestinationView;
use crate::model::AcceptedResponse;
use crate::store::Redelivery;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(cleanup))
        .routes(routes!(redeliver))
        .routes(routes!(destinations))
}

/// `GET /destinations` → 200.
#[derive(Serialize, ToSchema)]
pub struct DestinationList {
    /// Busiest first: most deliveries in flight, then most recent failures.
    destinations: Vec<DestinationView>,
}

/// Every callback destination (scheme, host, port) this instance delivered to recently: its
/// deliveries in flight, its successes and failures of the last five minutes, and its
/// circuit breaker. Breakers are per instance.
#[utoipa::path(
    get,
    path = "/destinations",
    tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Destinations seen recently", body = DestinationList),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    )
)]
async fn destinations(_: Admin, State(state): State<AppState>) -> Json<DestinationList> {
    Json(DestinationList {
        destinations: state.service.destinations(),
    })
}

/// `POST /admin/cleanup` → 200.
#[derive(Serialize, ToSchema)]
pub struct CleanupResponse {
    #[schema(example = "ok")]
    status: &'static str,
    /// `expired + over_limit`.
    deleted: u64,
    /// Finished requests older than the retention period.
    expired: u64,
    /// The oldest finished requests beyond APP_MAX_STORED_REQUESTS.
    over_limit: u64,
}

/// Put a `callback_failed` request back in the queue for a fresh round of attempts; earlier
/// attempts stay in the audit.
#[utoipa::path(
    post,
    path = "/requests/{id}/redeliver",
    tag = "operations",
    params(("id" = String, Path, description = "The request id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Queued for redelivery", body = AcceptedResponse),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such request", body = ErrorBody),
        (status = 409, description = "The request is not `callback_failed`", body = ErrorBody),
        (status = 503, description = "The async queue is full", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn redeliver(
    _: Admin,
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<AcceptedResponse>, ApiError> {
    match state.service.redeliver(&id).await? {
        Redelivery::Queued => Ok(Json(AcceptedResponse {
            status: "accepted".into(),
            request_id: id,
            message: "Request queued for redelivery".into(),
        })),
        Redelivery::NotFound => Err(ApiError::RequestNotFound),
        Redelivery::WrongStatus(status) => Err(ApiError::Conflict(format!(
            "Only a request in callback_failed can be redelivered; this one is {}",
            status.as_str()
        ))),
    }
}

/// Run the retention rules now.
#[utoipa::path(
    post,
    path = "/admin/cleanup",
    tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "What was deleted", body = CleanupResponse),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    )
)]
async fn cleanup(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<CleanupResponse>, ApiError> {
    let report = state.service.cleanup().await?;
    Ok(Json(CleanupResponse {
        status: "ok",
        deleted: report.expired + report.over_limit,
        expired: report.expired,
        over_limit: report.over_limit,
    }))
}
