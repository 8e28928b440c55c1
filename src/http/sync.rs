//! `POST /sync`: do the work now, answer with the result.

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::JsonBody;
use super::request_id::{CreatedRequest, NewRequestId};
use super::{ApiError, AppState};
use crate::input::{SyncRequest, parse_sync};
use crate::model::SyncResponse;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(run))
}

/// Do the work now and answer with its result.
#[utoipa::path(
    post,
    path = "/sync",
    tag = "work",
    request_body = SyncRequest,
    responses(
        (status = 200, description = "The work's result", body = SyncResponse,
            headers(("X-Request-ID" = String, description = "The request's `request_id`"))),
        (status = 413, description = "Body over APP_MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "A rule is broken; `detail` lists each", body = ErrorBody),
        (status = 503, description = "The compute queue is full", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn run(
    State(state): State<AppState>,
    NewRequestId(id): NewRequestId,
    JsonBody(body): JsonBody,
) -> Result<(CreatedRequest, Json<SyncResponse>), ApiError> {
    let input = parse_sync(&body).map_err(ApiError::Validation)?;
    let result = state.service.run_sync(id, input).await?;
    Ok((
        CreatedRequest(result.request_id.clone()),
        Json(SyncResponse {
            status: "success".into(),
            result,
        }),
    ))
}
