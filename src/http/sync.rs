//! `POST /sync`: do the work now, answer with the result.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};

use super::extract::JsonBody;
use super::{ApiError, AppState};
use crate::input::parse_sync;
use crate::model::SyncResponse;

pub fn router() -> Router<AppState> {
    Router::new().route("/sync", post(run))
}

async fn run(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<SyncResponse>, ApiError> {
    let input = parse_sync(&body).map_err(ApiError::Validation)?;
    let result = state.service.run_sync(input).await?;
    Ok(Json(SyncResponse {
        status: "success".into(),
        result,
    }))
}
