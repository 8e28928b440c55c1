//! Every way a request can fail, and the one place that maps each to a status code and the
//! original service's JSON error shape: `{"status":"error","error":"…"}` (plus `detail` for
//! validation). Internal errors are logged in full and answered without their details.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::input::FieldError;
use crate::service::ServiceError;

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_SECONDS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{}", summary(.0))]
    Validation(Vec<FieldError>),
    #[error("Request not found")]
    RequestNotFound,
    #[error("Not Found")]
    NotFound,
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    #[error("Server overloaded, please retry later")]
    Overloaded,
    #[error("Request body too large (limit {0} bytes)")]
    PayloadTooLarge(usize),
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    Conflict(String),
    #[error("Invalid or missing bearer token")]
    Unauthorized,
    #[error("Cannot read the request body: {0}")]
    BadBody(String),
    #[error("Request body not received in time")]
    BodyTimeout,
    #[error("Invalid path: {0}")]
    BadPath(String),
    #[error("Internal server error")]
    Internal(#[source] ServiceError),
}

/// The error shape of every non-2xx answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `error`.
    #[schema(example = "error")]
    status: &'static str,
    /// What went wrong, in one line (for 422: every broken rule, `field: rule; …`).
    error: String,
    /// 422 only: each broken rule, with where it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    detail: Option<Vec<FieldError>>,
}

fn summary(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field(), e.msg))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::Overloaded => ApiError::Overloaded,
            other => ApiError::Internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RequestNotFound | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadBody(_) | ApiError::BadPath(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(err) => {
                tracing::error!(error = %err, "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let body = ErrorBody {
            status: "error",
            error: self.to_string(),
            detail: match &self {
                ApiError::Validation(errors) => Some(errors.clone()),
                _ => None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        match self {
            ApiError::Overloaded => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECONDS),
                );
            }
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The body was not read to its end (or was drained only within a bound): the
            // connection cannot carry another request.
            ApiError::PayloadTooLarge(_) | ApiError::BodyTimeout => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
