//! `GET /metrics`: Prometheus metrics (see `crate::metrics` for the series).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::metrics::CONTENT_TYPE as OPENMETRICS;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Prometheus metrics.
///
/// Prometheus metrics (OpenMetrics text format).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "getMetrics",
    tag = "operations",
    responses(
        (status = 200, description = "Every series, with state gauges read now",
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
    )
)]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state
        .service
        .metrics
        .long_lived_requests
        .set(i64::try_from(state.long_lived.in_use()).unwrap_or(i64::MAX));
    (
        [(CONTENT_TYPE, OPENMETRICS)],
        state.service.metrics_text().await,
    )
}
