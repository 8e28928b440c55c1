//! `GET /metrics`: Prometheus metrics (see `crate::metrics` for the series).

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;
use crate::metrics::CONTENT_TYPE as OPENMETRICS;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, OPENMETRICS)],
        state.service.metrics_text().await,
    )
}
