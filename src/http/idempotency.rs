//! The `Idempotency-Key` request header (draft-ietf-httpapi-idempotency-key-header) of
//! `POST /sync` and `POST /async`, and the `Idempotent-Replayed` header of a replayed answer.
//!
//! The draft defines the value as a Structured Field string (`"8e03978e-…"`, quoted); most
//! clients (Stripe's among them) send it bare. Both are accepted and mean the same key.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponseParts, ResponseParts};
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiError;
use crate::input::FieldError;

/// The header's name, as a 422's `loc` names it.
pub const HEADER: &str = "Idempotency-Key";

static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Longest key accepted, in bytes as sent (a quoted key's quotes included).
pub const MAX_KEY_LEN: usize = 255;

/// The header as the API document shows it on `POST /sync` and `POST /async`; read by
/// [`IdempotencyKey`]. The pattern is exactly what [`parse`] accepts.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct KeyHeader {
    /// 1 to 255 printable ASCII characters, bare or as a quoted string (`"…"`, with `\"`
    /// and `\\` escapes). Sent again with the same request while the first is stored, the
    /// answer is the first request's (`Idempotent-Replayed: true`) and nothing new is done;
    /// with another request, 422.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = r#"^(?:[\x21\x23-\x7E](?:[\x20-\x7E]*[\x21-\x7E])?|"(?:[\x20\x21\x23-\x5B\x5D-\x7E]|\\["\\])+")$"#
    )]
    idempotency_key: Option<String>,
}

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
            return Err(invalid("must be sent once", value.as_bytes()));
        }
        parse(value.as_bytes())
            .map(|key| IdempotencyKey(Some(key)))
            .map_err(|msg| invalid(msg, value.as_bytes()))
    }
}

fn invalid(msg: &str, raw: &[u8]) -> ApiError {
    ApiError::Validation(vec![FieldError::header(
        HEADER,
        "idempotency_key_invalid",
        msg,
        &String::from_utf8_lossy(raw),
    )])
}

/// A key: 1 to [`MAX_KEY_LEN`] printable ASCII characters, bare or as a quoted string.
fn parse(raw: &[u8]) -> Result<String, &'static str> {
    const RULE: &str = "must be 1 to 255 printable ASCII characters, bare or \"quoted\"";
    if raw.len() > MAX_KEY_LEN {
        return Err(RULE);
    }
    let key = match raw {
        [b'"', inner @ .., b'"'] => unquote(inner).ok_or(RULE)?,
        [b'"', ..] => return Err(RULE),
        // HTTP strips a field value's outer whitespace before it gets here; the rule says so
        // too, so that the document's pattern and this parser accept the same keys.
        [b' ', ..] | [.., b' '] => return Err(RULE),
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
    use super::{KeyHeader, parse};

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
        let quoted = format!("\"{}\"", "k".repeat(254));
        assert!(parse(quoted.as_bytes()).is_err(), "the quotes count");
    }

    /// The pattern the API document gives is the rule `parse` applies.
    #[test]
    fn the_documented_pattern_is_the_rule() {
        use utoipa::IntoParams;
        let params = KeyHeader::into_params(|| None);
        let json = serde_json::to_value(&params[0]).expect("param as JSON");
        let pattern = json["schema"]["pattern"]
            .as_str()
            .expect("a pattern")
            .to_string();
        let re = regex::Regex::new(&pattern).expect("the pattern compiles");
        for key in [
            "abc",
            "a b",
            "a\"b",
            "\"q\"",
            "\"a\\\"b\"",
            "\"\"",
            "\"x",
            " lead",
            "trail ",
            "\"a\"b\"",
            "tab\t",
            "~!",
            "\"sp ace\"",
        ] {
            assert_eq!(
                re.is_match(key),
                parse(key.as_bytes()).is_ok(),
                "{key:?}: the document and the parser disagree"
            );
        }
    }
}
