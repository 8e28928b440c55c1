//! `POST /admin/cleanup` and `POST /requests/{id}/redeliver`: operator actions, behind `Authorization: Bearer $APP_ADMIN_TOKEN`.
//! Without a configured token the routes are not mounted at all (404 for every method), so
//! an unconfigured service does not even reveal them.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{ApiError, AppState};
use crate::store::Redelivery;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/cleanup", post(cleanup))
        .route("/requests/{id}/redeliver", post(redeliver))
}

/// Puts a `callback_failed` request back in the queue for a fresh round of attempts.
async fn redeliver(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    match state.service.redeliver(&id).await? {
        Redelivery::Queued => Ok(Json(json!({
            "status": "accepted",
            "request_id": id,
            "message": "Request queued for redelivery",
        }))),
        Redelivery::NotFound => Err(ApiError::RequestNotFound),
        Redelivery::WrongStatus(status) => Err(ApiError::Conflict(format!(
            "Only a request in callback_failed can be redelivered; this one is {}",
            status.as_str()
        ))),
    }
}

async fn cleanup(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let report = state.service.cleanup().await?;
    Ok(Json(json!({
        "status": "ok",
        "deleted": report.expired + report.over_limit,
        "expired": report.expired,
        "over_limit": report.over_limit,
    })))
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.admin_token.as_deref() else {
        // Not reachable: the routes are mounted only with a token. Fail closed regardless.
        return Err(ApiError::NotFound);
    };
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim());
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Compares without an early exit, so response time does not reveal how much of a guessed
/// token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
