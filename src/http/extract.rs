//! The JSON body extractor: content type, size limit and syntax, each with the status code
//! the spec gives it (415, 413, 422) instead of axum's defaults.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde_json::Value;

use super::error::ApiError;
use crate::input::FieldError;

/// A request body parsed as JSON, not yet validated.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // A missing Content-Type is read as JSON, as the original (FastAPI) did; a different
        // one is refused.
        if let Some(content_type) = req.headers().get(CONTENT_TYPE)
            && !is_json(content_type.to_str().unwrap_or_default())
        {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(usize::MAX, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::BadBody(rejection.body_text())
            }
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|err| {
            let offset = byte_offset(&bytes, err.line(), err.column());
            ApiError::Validation(vec![FieldError::invalid_json(
                offset,
                format!("invalid JSON: {err}"),
            )])
        })
    }
}

/// Turns serde_json's 1-based line and column into a byte offset into the body.
fn byte_offset(body: &[u8], line: usize, column: usize) -> usize {
    let line_start: usize = body
        .split(|&b| b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    (line_start + column.saturating_sub(1)).min(body.len())
}

/// The configured body limit, put in request extensions so that the 413 can name it.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_error_positions_are_byte_offsets() {
        use super::byte_offset;
        let body = b"{\"data\":\n  \"x\",}";
        let err = serde_json::from_slice::<serde_json::Value>(body).unwrap_err();
        assert_eq!(byte_offset(body, err.line(), err.column()), body.len() - 1);
        assert_eq!(byte_offset(b"", 1, 0), 0);
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/problem+json",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "json",
            "",
            "application/jsonx",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }
}
