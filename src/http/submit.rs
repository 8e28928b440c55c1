//! `POST /async`: record the request durably, answer at once; the callback follows.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::JsonBody;
use super::idempotency::{IdempotencyKey, KeyHeader, Replayed};
use super::request_id::{CreatedRequest, NewRequestId};
use super::{ApiError, AppState};
use crate::input::{AsyncRequest, parse_async};
use crate::model::AcceptedResponse;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(submit))
}

/// Submit work; the result is POSTed to callback_url.
///
/// Record the request durably and answer at once; the result is POSTed to `callback_url`
/// (body `CallbackPayload`), retried with backoff until accepted or retries run out.
#[utoipa::path(
    post,
    path = "/async",
    operation_id = "submitAsync",
    tag = "work",
    request_body = AsyncRequest,
    params(KeyHeader),
    responses(
        (status = 200, description = "Committed and queued (or, for a repeated Idempotency-Key, \
            the first request's answer)", body = AcceptedResponse,
            headers(
                ("Location" = String, description = "`/requests/{id}` of the new request"),
                ("X-Request-ID" = String, description = "The new request's `request_id`"),
                ("Idempotent-Replayed" = String, description = "`true` when the answer is an \
                    earlier request's, replayed for its Idempotency-Key"),
            )),
        (status = 413, description = "Body over APP_MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "A rule is broken (including a refused callback URL, a \
            malformed Idempotency-Key, or one already used for another body); `detail` lists each", body = ErrorBody),
        (status = 503, description = "The async queue is full; nothing was written", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn submit(
    State(state): State<AppState>,
    NewRequestId(id): NewRequestId,
    IdempotencyKey(key): IdempotencyKey,
    request_headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(CreatedRequest, Replayed, HeaderMap, Json<AcceptedResponse>), ApiError> {
    let mut input = parse_async(&body, &state.service.guard, &state.service.control_limits)
        .map_err(ApiError::Validation)?;
    input.caller_trace = input.caller_trace.or_headers(&request_headers);
    let answered = state.service.submit_async(id, input, key).await?;
    let request_id = answered.value;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/requests/{request_id}")) {
        headers.insert(header::LOCATION, location);
    }
    Ok((
        CreatedRequest(request_id.clone()),
        Replayed(answered.replayed),
        headers,
        Json(AcceptedResponse {
            status: "accepted".into(),
            request_id,
            message: "Request accepted and queued for processing".into(),
        }),
    ))
}
