//! Who may call what: the optional API token (`APP_API_TOKEN`) on every endpoint but the
//! public ones, and the admin token (`APP_ADMIN_TOKEN`) on operator actions.
//!
//! Both are bearer tokens compared in constant time. The two are independent: an admin
//! endpoint asks for the admin token only (an operator need not hold the API token too), and
//! the API token never opens an admin endpoint. Tokens are never logged: the access log has
//! method, path and status, never headers.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// Middleware on the protected routes: 401 unless the request bears the API token.
pub async fn require_api_token(
    State(token): State<Arc<str>>,
    req: Request,
    next: Next,
) -> Response {
    if bears(req.headers(), &token) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// An extractor that lets a request through only with the admin token. Put it first among a
/// handler's arguments, so that nothing about the request is looked at before it passes.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = state.admin_token.as_deref() else {
            // Not reachable: the routes are mounted only with a token. Fail closed regardless.
            return Err(ApiError::NotFound);
        };
        if bears(&parts.headers, expected) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// Whether `Authorization: Bearer <token>` carries `expected`.
fn bears(headers: &HeaderMap, expected: &str) -> bool {
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token.trim());
    constant_time_eq(presented.as_bytes(), expected.as_bytes())
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
    use axum::http::{HeaderMap, HeaderValue};

    use super::{bears, constant_time_eq};

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn reads_bearer_tokens() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", HeaderValue::from_str(value).unwrap());
            headers
        };
        assert!(bears(&with("Bearer s3cret"), "s3cret"));
        assert!(bears(&with("bearer  s3cret "), "s3cret"));
        assert!(!bears(&with("Basic s3cret"), "s3cret"));
        assert!(!bears(&with("Bearer"), "s3cret"));
        assert!(!bears(&HeaderMap::new(), "s3cret"));
    }
}
