//! `GET /healthz`: queue, workers and database, for load balancers and operators.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::model::{Health, HealthReport};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// Health of the queue, workers and database.
///
/// Queue, workers and database. `degraded`: the async queue is over 90% full, or a database
/// write has waited longer than APP_HEALTH_WRITE_WAIT_SECONDS. `unhealthy` (503): the
/// database does not answer, or writes fail (disk full, a read-only server) until a write
/// succeeds again. `reason` says why when it is not healthy.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "getHealth",
    tag = "operations",
    responses(
        (status = 200, description = "Healthy or degraded", body = HealthReport),
        (status = 503, description = "Unhealthy: the database does not answer or takes no writes", body = HealthReport),
    )
)]
async fn health(State(state): State<AppState>) -> (StatusCode, Json<HealthReport>) {
    let report = state.service.health().await;
    // Degraded still serves traffic, so a load balancer should keep sending it some.
    let code = match report.status {
        Health::Healthy | Health::Degraded => StatusCode::OK,
        Health::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(report))
}
