//! Extractors that answer every failure in the API's error shape, with the status code the
//! spec gives it, instead of axum's plain-text defaults.
//!
//! [`JsonBody`] reads a request body under three bounds: its size (413), the time the
//! client takes to send it (408), and, for an oversized one, how much of it is read and
//! thrown away before answering. That last one is for clients that send a whole body before
//! reading anything (Python's urllib and requests do): closing the socket on unread data
//! makes the kernel reset the connection, and the client sees a broken pipe instead of the
//! 413. Reading the rest first, within a bound, lets it read the answer (nginx calls this a
//! lingering close). Both 413 and 408 close the connection.

use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Request};
use axum::http::header::{CONTENT_TYPE, EXPECT};
use axum::http::request::Parts;
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde_json::Value;

use super::error::ApiError;
use crate::input::FieldError;

/// The bounds on reading a request body.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// Largest body accepted (413 beyond).
    pub max_bytes: usize,
    /// Time to receive the whole body once the handler starts reading it (408 beyond).
    pub read_timeout: Duration,
    /// Most bytes of an oversized body read and discarded before the 413.
    pub drain_max_bytes: u64,
    /// Most time spent discarding them.
    pub drain_timeout: Duration,
}

/// A request body parsed as JSON, not yet validated.
pub struct JsonBody(pub Value);

impl<S> FromRequest<S> for JsonBody
where
    S: Send + Sync,
    BodyLimits: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // A missing or empty Content-Type is read as JSON, as the original (FastAPI) did; a
        // different one is refused.
        if let Some(content_type) = req.headers().get(CONTENT_TYPE)
            && !content_type.is_empty()
            && !is_json(content_type.to_str().unwrap_or_default())
        {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = read_body(req, &BodyLimits::from_ref(state)).await?;
        parse_json(&bytes)
            .map(JsonBody)
            .map_err(ApiError::Validation)
    }
}

/// A body as the original's framework read it: nothing at all is a missing body; a leading
/// UTF-8 byte order mark is skipped (Python's `json.loads` skips it); a syntax error is
/// located by character position.
fn parse_json(bytes: &[u8]) -> Result<Value, Vec<FieldError>> {
    if bytes.is_empty() {
        return Err(vec![FieldError::empty_body()]);
    }
    let text = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    serde_json::from_slice(text).map_err(|err| {
        let offset = byte_offset(text, err.line(), err.column());
        let position = String::from_utf8_lossy(&text[..offset]).chars().count();
        vec![FieldError::invalid_json(position, complaint(&err))]
    })
}

/// What serde_json found wrong, without its "at line 1 column 5" (the position is in `loc`).
fn complaint(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Reads the whole body within the limits (see the module docs).
async fn read_body(req: Request, limits: &BodyLimits) -> Result<Bytes, ApiError> {
    let too_large = ApiError::PayloadTooLarge(limits.max_bytes);
    let waits_for_continue = req
        .headers()
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = req.into_body();
    // A Content-Length over the limit is refused before reading. A client that asked for
    // `100 Continue` has not sent its body and will not: hyper sends the 100 only once the
    // body is read, so there is nothing to drain.
    if usize::try_from(body.size_hint().lower()).map_or(true, |n| n > limits.max_bytes) {
        if !waits_for_continue {
            drain(body, limits).await;
        }
        return Err(too_large);
    }
    let mut collected = BytesMut::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| ApiError::BadBody(err.to_string()))?;
            if let Some(data) = frame.data_ref() {
                if collected.len() + data.len() > limits.max_bytes {
                    return Ok(false);
                }
                collected.extend_from_slice(data);
            }
        }
        Ok(true)
    };
    match tokio::time::timeout(limits.read_timeout, read).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Err(err)) => Err(err),
        Ok(Ok(true)) => Ok(collected.freeze()),
        Ok(Ok(false)) => {
            drain(body, limits).await;
            Err(too_large)
        }
    }
}

/// Reads and discards what is left of an oversized body, within the drain bounds, so that
/// the client can read the 413 (module docs). A body announced larger than the bound is not
/// read at all: the client would be cut off mid-body all the same.
async fn drain(mut body: Body, limits: &BodyLimits) {
    if body
        .size_hint()
        .upper()
        .is_some_and(|n| n > limits.drain_max_bytes)
    {
        return;
    }
    let mut left = limits.drain_max_bytes;
    let discard = async {
        while left > 0 {
            let Some(Ok(frame)) = body.frame().await else {
                return;
            };
            let read = frame.data_ref().map_or(0, |d| d.len() as u64);
            left = left.saturating_sub(read);
        }
    };
    let _ = tokio::time::timeout(limits.drain_timeout, discard).await;
}

/// The `{id}` of `/requests/{id}…`. An id that is not UTF-8 once percent-decoded names no
/// request (ids are ASCII), so it is a 404 like any other unknown id. One with a `/` once
/// decoded (`abc%2Fdef`) is a path no route has, as the original's framework, which routes
/// the decoded path, answered it.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) if id.contains('/') => Err(ApiError::NotFound),
            Ok(Path(id)) => Ok(PathId(id)),
            Err(PathRejection::FailedToDeserializePathParams(err))
                if matches!(err.kind(), ErrorKind::InvalidUtf8InPathParam { .. }) =>
            {
                Err(ApiError::RequestNotFound)
            }
            Err(other) => Err(ApiError::BadPath(other.body_text())),
        }
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
    fn bodies_are_read_as_the_original_read_them() {
        use super::parse_json;
        use serde_json::json;
        assert_eq!(
            parse_json(b"\xef\xbb\xbf{\"a\":1}").unwrap(),
            json!({"a": 1})
        );
        let empty = serde_json::to_value(parse_json(b"").unwrap_err()).unwrap();
        assert_eq!(empty[0]["type"], "missing");
        assert_eq!(empty[0]["loc"], json!(["body"]));
        assert_eq!(empty[0]["input"], json!(null));
        // Positions count characters, as Python's do: "é" is one.
        let broken =
            serde_json::to_value(parse_json("{\"é\": 1,}".as_bytes()).unwrap_err()).unwrap();
        assert_eq!(broken[0]["type"], "json_invalid");
        assert_eq!(broken[0]["loc"], json!(["body", 8]), "where Python puts it");
        assert_eq!(broken[0]["msg"], "JSON decode error");
        assert_eq!(broken[0]["input"], json!({}));
        assert!(broken[0]["ctx"]["error"].is_string());
    }

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
