//! `POST /async/batch`: many async requests in one call and one transaction.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::JsonBody;
use super::idempotency::{HEADER, IdempotencyKey};
use super::{ApiError, AppState};
use crate::input::{BatchRequest, FieldError, parse_batch};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(submit_batch))
}

/// `POST /async/batch` → 200.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// Items queued (committed together).
    accepted: usize,
    /// Items refused for their content; nothing of theirs was written.
    rejected: usize,
    /// One per item, in the order sent.
    results: Vec<BatchItem>,
}

/// What became of one item of a batch.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum BatchItem {
    /// Queued, as `POST /async` queues a request: its callback follows.
    Accepted { index: usize, request_id: String },
    /// A rule is broken; `detail` lists each, located under `["body", "requests", index]`.
    Rejected {
        index: usize,
        detail: Vec<FieldError>,
    },
}

/// Submit up to 1000 async requests at once.
///
/// Queue up to 1000 async requests at once: each item is checked as `POST /async` checks its
/// body; the valid ones are committed in one transaction and answered with their ids, the
/// invalid ones with their errors, by index. The queue bound applies to the batch as a whole:
/// if the valid items do not all fit, none is queued (503).
#[utoipa::path(
    post,
    path = "/async/batch",
    operation_id = "submitAsyncBatch",
    tag = "work",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "Every valid item committed and queued; every invalid \
            one refused with its errors", body = BatchResponse),
        (status = 413, description = "Body over APP_MAX_BODY_BYTES", body = ErrorBody),
        (status = 415, description = "Content-Type is not JSON", body = ErrorBody),
        (status = 422, description = "The body is not an object with `requests`, an array of \
            1 to 1000 items (or an Idempotency-Key was sent: batches take none)", body = ErrorBody),
        (status = 503, description = "The valid items do not all fit in the async queue; \
            nothing was written", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn submit_batch(
    State(state): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    headers: axum::http::HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Json<BatchResponse>, ApiError> {
    // Silently ignoring a key would let a client believe its retries are safe.
    if let Some(key) = key {
        return Err(ApiError::Validation(vec![FieldError::header(
            HEADER,
            "idempotency_key_unsupported",
            "batches take no Idempotency-Key; send requests that need one to POST /async",
            &key,
        )]));
    }
    let items = parse_batch(&body, &state.service.guard, &state.service.control_limits)
        .map_err(ApiError::Validation)?;
    let mut valid = Vec::new();
    let mut refused = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Ok(mut input) => {
                // An item without a trace of its own is part of the batch's.
                input.caller_trace = input.caller_trace.or_headers(&headers);
                valid.push((index, input));
            }
            Err(detail) => refused.push(BatchItem::Rejected { index, detail }),
        }
    }
    let (indexes, inputs): (Vec<usize>, Vec<_>) = valid.into_iter().unzip();
    let ids = state.service.submit_batch(inputs).await?;
    let mut results: Vec<BatchItem> = indexes
        .into_iter()
        .zip(ids)
        .map(|(index, request_id)| BatchItem::Accepted { index, request_id })
        .chain(refused)
        .collect();
    results.sort_by_key(|item| match item {
        BatchItem::Accepted { index, .. } | BatchItem::Rejected { index, .. } => *index,
    });
    let rejected = results
        .iter()
        .filter(|item| matches!(item, BatchItem::Rejected { .. }))
        .count();
    Ok(Json(BatchResponse {
        accepted: results.len() - rejected,
        rejected,
        results,
    }))
}
