//! `POST /sync`: do the work now, answer with the result.

use axum::Json;
use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::JsonBody;
use super::idempotency::{IdempotencyKey, KeyHeader, Replayed};
use super::request_id::{CreatedRequest, NewRequestId};
use super::{ApiError, AppState};
use crate::input::{CallerTrace, SyncRequest, parse_sync};
use crate::model::SyncResponse;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(run))
}

/// Do the work now and answer with its result.
#[utoipa::path(
    post,
    path = "/sync",
    operation_id = "runSync",
    tag = "work",
    request_body = SyncRequest,
    params(KeyHeader),
    responses(
        (status = 200, description = "The work's result", body = SyncResponse,
            headers(
                ("X-Request-ID" = String, description = "The request's `request_id`"),
                ("Idempotent-Replayed" = String, description = "`true` when the answer is an \
                    earlier request's, replayed for its Idempotency-Key"),
            )),
        (status = 409, description = "The request holding this Idempotency-Key is still \
            running after a minute's wait; retry later", body = ErrorBody),
        (status = 413, description = "Body over APP_MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "A rule is broken (including a malformed Idempotency-Key, \
            or one already used for another body); `detail` lists each", body = ErrorBody),
        (status = 503, description = "The compute queue is full", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn run(
    State(state): State<AppState>,
    NewRequestId(id): NewRequestId,
    IdempotencyKey(key): IdempotencyKey,
    headers: axum::http::HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(CreatedRequest, Replayed, Json<SyncResponse>), ApiError> {
    let input = parse_sync(&body).map_err(ApiError::Validation)?;
    let trace = CallerTrace::from_headers(&headers).begin();
    let answered = state.service.run_sync(id, input, key, trace).await?;
    let result = answered.value;
    Ok((
        CreatedRequest(result.request_id.clone()),
        Replayed(answered.replayed),
        Json(SyncResponse {
            status: "success".into(),
            result,
        }),
    ))
}
