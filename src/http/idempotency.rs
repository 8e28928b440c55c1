//! The `Idempotency-Key` request header (draft-ietf-httpapi-idempotency-key-header) of
//! `POST /sync` and `POST /async`, and the `Idempotent-Replayed` header of a replayed answer.
//!
//! The draft defines the value as a Structured Field string (`"8e03978e-…"`, quoted); most
//! clients (Stripe's among them) send it bare. Both are accepted and mean the same key.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponseParts, ResponseParts};

use super::ApiError;
use crate::input::FieldError;

/// The header's name, as a 422's `loc` names it.
pub const HEADER: &str = "Idempotency-Key";

static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// The request's idempotency key, if it sent one; a malformed one is a 422.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(IdempotencyKey(None));
        };
        // Two keys on one request: which one would the client expect to be used?
        if values.next().is_some() {
            return Err(invalid("must be sent once"));
        }
        parse(value.as_bytes())
            .map(|key| IdempotencyKey(Some(key)))
            .map_err(invalid)
    }
}

fn invalid(msg: &str) -> ApiError {
    ApiError::Validation(vec![FieldError::header(
        HEADER,
        "idempotency_key_invalid",
        msg,
    )])
}

/// A key: 1 to [`MAX_KEY_LEN`] printable ASCII characters, bare or as a quoted string.
fn parse(raw: &[u8]) -> Result<String, &'static str> {
    const RULE: &str = "must be 1 to 255 printable ASCII characters, bare or \"quoted\"";
    let key = match raw {
        [b'"', inner @ .., b'"'] => unquote(inner).ok_or(RULE)?,
        [b'"', ..] => return Err(RULE),
        bare => bare.to_vec(),
    };
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(RULE);
    }
    // Only printable ASCII is left, which is UTF-8.
    String::from_utf8(key).map_err(|_| RULE)
}

/// The content of a Structured Field string: `\"` and `\\` are escapes, nothing else is.
fn unquote(inner: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => out.push(escaped),
                _ => return None,
            },
            b'"' => return None,
            other => out.push(other),
        }
    }
    Some(out)
}

/// `Idempotent-Replayed: true` on an answer that is an earlier request's, replayed.
pub struct Replayed(pub bool);

impl IntoResponseParts for Replayed {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        if self.0 {
            res.headers_mut().insert(
                IDEMPOTENT_REPLAYED.clone(),
                HeaderValue::from_static("true"),
            );
        }
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn bare_and_quoted_keys_are_the_same_key() {
        assert_eq!(parse(b"abc-123").as_deref(), Ok("abc-123"));
        assert_eq!(parse(b"\"abc-123\"").as_deref(), Ok("abc-123"));
        assert_eq!(parse(br#""a\"b\\c""#).as_deref(), Ok(r#"a"b\c"#));
        assert_eq!(parse(b"with space").as_deref(), Ok("with space"));
    }

    #[test]
    fn keys_outside_the_rule_are_refused() {
        let long = vec![b'k'; 256];
        for bad in [
            &b""[..],
            b"\"\"",
            b"\"unterminated",
            b"\"bad\\escape\"",
            b"\"inner\"quote\"",
            b"tab\there",
            b"nul\0",
            "caf\u{e9}".as_bytes(),
            &long,
        ] {
            assert!(
                parse(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse(&long[..255]).is_ok(), "255 bytes is within the limit");
    }
}
