//! `POST /requests/{id}/cancel`: control over a request after it was accepted (SPEC §11).
//! Behind the API token, as submitting is: whoever may submit a request may cancel it.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::PathId;
use super::{ApiError, AppState};
use crate::model::{Mode, Status};
use crate::store::Cancellation;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(cancel))
}

/// `POST /requests/{id}/cancel` → 200.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelResponse {
    pub request_id: String,
    #[schema(example = "cancelled")]
    pub status: Status,
    /// Whether a delivery attempt was under way when the request was cancelled: it may
    /// still reach the receiver (it is recorded in the request's attempts). When `false`, no
    /// callback is sent after this answer.
    pub delivery_in_flight: bool,
    pub message: String,
}

/// Cancel an async request.
///
/// Cancel an async request that is not final: no work starts and no callback is sent after
/// the answer, but for a delivery attempt already under way (the answer says so). Repeating
/// a cancel answers as the first did.
#[utoipa::path(
    post,
    path = "/requests/{id}/cancel",
    operation_id = "cancelRequest",
    tag = "work",
    params(("id" = String, Path, description = "The request id")),
    responses(
        (status = 200, description = "Cancelled (now or by an earlier call)", body = CancelResponse),
        (status = 404, description = "No such request", body = ErrorBody),
        (status = 409, description = "The request is final, or a sync request (its client \
            cancels by hanging up)", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
async fn cancel(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<CancelResponse>, ApiError> {
    match state.service.cancel(&id).await? {
        Cancellation::Cancelled { in_flight, .. } => Ok(Json(CancelResponse {
            request_id: id,
            status: Status::Cancelled,
            delivery_in_flight: in_flight,
            message: if in_flight {
                "Request cancelled; a delivery attempt was under way and may still land"
            } else {
                "Request cancelled; no callback will be sent"
            }
            .into(),
        })),
        Cancellation::NotFound => Err(ApiError::RequestNotFound),
        Cancellation::Refused {
            mode: Mode::Sync, ..
        } => Err(ApiError::Conflict(
            "A sync request cannot be cancelled: its client cancels it by hanging up".into(),
        )),
        Cancellation::Refused { status, .. } => Err(ApiError::Conflict(format!(
            "Only an async request that is not final can be cancelled; this one is {}",
            status.as_str()
        ))),
    }
}
