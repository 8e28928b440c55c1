//! `GET /healthz`: queue, workers and database, for load balancers and operators.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use crate::model::{Health, HealthReport};

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(health))
}

async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthReport>) {
    let report = state.service.health().await;
    // Degraded still serves traffic, so a load balancer should keep sending it some.
    let code = match report.status {
        Health::Healthy | Health::Degraded => StatusCode::OK,
        Health::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(report))
}
