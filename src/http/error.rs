//! Every way a request can fail, and the one place that maps each to a status code and the original
//! service's JSON error shape: `{"status":"error","error":"…"}` (plus `detail` for validation, and
//! `"request_id":null` on a 404 or 503). Internal errors are logged in full and answered without
//! their details. [`json_error_shape`] gives the same shape to the errors a library answers on its
//! own.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};

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
    /// Every place for event streams and waits is taken.
    #[error("Too many open event streams and waits, please retry later")]
    TooManyLongLived,
    /// The database cannot be reached or written now; the request changed nothing.
    #[error("Service temporarily unavailable (database), please retry later")]
    Unavailable(#[source] ServiceError),
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
    /// 404 and 503 only: `null`, as in the original's error bodies.
    /// (`Some(())` is written as `null`; `None` leaves the field out.)
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = always_null)]
    request_id: Option<()>,
}

impl ErrorBody {
    fn new(status: StatusCode, error: String, detail: Option<Vec<FieldError>>) -> Self {
        // The original's 404 and 503 bodies carried `"request_id": null` (SPEC §3), and
        // clients written for it may read the field. Other statuses never had it.
        let carries_request_id = matches!(
            status,
            StatusCode::NOT_FOUND | StatusCode::SERVICE_UNAVAILABLE
        );
        Self {
            status: "error",
            error,
            detail,
            request_id: carries_request_id.then_some(()),
        }
    }
}

/// The schema of a field that is always `null` when present.
fn always_null() -> Object {
    ObjectBuilder::new().schema_type(Type::Null).build()
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
            err @ ServiceError::Unavailable(_) => ApiError::Unavailable(err),
            ServiceError::KeyReused(key) => ApiError::Validation(vec![FieldError::header(
                super::idempotency::HEADER,
                "idempotency_key_reused",
                ServiceError::KeyReused(key.clone()).to_string(),
                &key,
            )]),
            err @ ServiceError::KeyInProgress(_) => ApiError::Conflict(err.to_string()),
            other => ApiError::Internal(other),
        }
    }
}

/// The body the original's framework (Starlette) gave an unknown path or method:
/// `{"detail":"Not Found"}`. Clients of the original match on it.
#[derive(Serialize, ToSchema)]
pub struct FrameworkErrorBody {
    #[schema(example = "Not Found")]
    detail: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::NotFound => {
                let body = FrameworkErrorBody {
                    detail: "Not Found",
                };
                return (StatusCode::NOT_FOUND, Json(body)).into_response();
            }
            ApiError::MethodNotAllowed => {
                let body = FrameworkErrorBody {
                    detail: "Method Not Allowed",
                };
                return (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response();
            }
            _ => {}
        }
        let status = match &self {
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RequestNotFound | ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Overloaded | ApiError::TooManyLongLived => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unavailable(err) => {
                tracing::warn!(error = %err, "request refused: database unavailable");
                StatusCode::SERVICE_UNAVAILABLE
            }
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
        let detail = match &self {
            ApiError::Validation(errors) => Some(errors.clone()),
            _ => None,
        };
        let body = ErrorBody::new(status, self.to_string(), detail);
        let mut response = (status, Json(body)).into_response();
        match self {
            ApiError::Overloaded | ApiError::Unavailable(_) => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECONDS),
                );
            }
            // Closed after the answer: a client opening streams by the thousand must not keep
            // the connections the refused ones came on.
            ApiError::TooManyLongLived => {
                let headers = response.headers_mut();
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECONDS),
                );
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
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

/// Middleware: an error answered outside our handlers (the docs page's bare 404 for an
/// unknown asset, axum's plain-text 400 for a path it cannot decode) is given the API's error
/// shape, with the status kept and the standard reason phrase as the message (a 404 or 405
/// the framework's, as for any unknown path). Our own errors are JSON already and pass
/// untouched.
pub async fn json_error_shape(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let mut response = match status {
        StatusCode::NOT_FOUND => ApiError::NotFound.into_response(),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed.into_response(),
        _ => {
            let body = ErrorBody::new(
                status,
                status.canonical_reason().unwrap_or("Error").to_owned(),
                None,
            );
            (status, Json(body)).into_response()
        }
    };
    // Headers the library set (Allow, WWW-Authenticate, …) still apply.
    for (name, value) in &parts.headers {
        response.headers_mut().insert(name, value.clone());
    }
    response
}
