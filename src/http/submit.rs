//! `POST /async`: record the request durably, answer at once; the callback follows.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::routing::post;
use axum::{Json, Router};

use super::extract::JsonBody;
use super::{ApiError, AppState};
use crate::input::parse_async;
use crate::model::AcceptedResponse;

pub fn router() -> Router<AppState> {
    Router::new().route("/async", post(submit))
}

async fn submit(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<(HeaderMap, Json<AcceptedResponse>), ApiError> {
    let input = parse_async(&body, &state.service.guard).map_err(ApiError::Validation)?;
    let request_id = state.service.submit_async(input).await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/requests/{request_id}")) {
        headers.insert(header::LOCATION, location);
    }
    Ok((
        headers,
        Json(AcceptedResponse {
            status: "accepted".into(),
            request_id,
            message: "Request accepted and queued for processing".into(),
        }),
    ))
}
