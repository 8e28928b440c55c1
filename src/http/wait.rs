//! How long a `GET /requests/{id}` may wait for its request to finish: `Prefer: wait=N`
//! (RFC 7240 §4.3) or `?wait=N`, at most [`MAX_WAIT`].
//!
//! The header is a preference: one the server cannot read is ignored, as the RFC asks, and a
//! wait over the maximum is cut to it (`Preference-Applied` says how long was applied). The
//! query parameter is the client's explicit request: a malformed or out-of-range value is a
//! 422 that names it.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponseParts, ResponseParts};

use super::ApiError;
use super::requests::query_int;
pub use crate::service::MAX_WAIT;

static PREFER: HeaderName = HeaderName::from_static("prefer");
static PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// The wait a request asked for; `None` (or zero) answers at once.
pub struct Wait(pub Option<Duration>);

impl<S: Send + Sync> FromRequestParts<S> for Wait {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        // Given more than once, the last counts, as for every other query parameter.
        let from_query = url::form_urlencoded::parse(query.as_bytes())
            .filter(|(key, _)| key == "wait")
            .last()
            .map(|(_, value)| parse_query(&value))
            .transpose()?;
        let from_header = parts
            .headers
            .get_all(&PREFER)
            .iter()
            .find_map(|value| preferred_wait(value.to_str().ok()?));
        Ok(Wait(
            from_query.or(from_header).map(|wait| wait.min(MAX_WAIT)),
        ))
    }
}

/// An integer query parameter, read by the rules of every other (`wait=5.0` is 5).
fn parse_query(value: &str) -> Result<Duration, ApiError> {
    let max = i64::try_from(MAX_WAIT.as_secs()).unwrap_or(i64::MAX);
    let seconds =
        query_int("wait", value, 0, max).map_err(|err| ApiError::Validation(vec![err]))?;
    Ok(Duration::from_secs(seconds.unsigned_abs()))
}

/// The `wait` preference of one `Prefer` header value (`respond-async, wait=10`), in
/// seconds; `None` if absent or not a number.
fn preferred_wait(value: &str) -> Option<Duration> {
    value.split(',').find_map(|preference| {
        // Parameters after `;` do not belong to the preference's value.
        let token = preference.split(';').next()?.trim();
        let (name, value) = token.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("wait") {
            return None;
        }
        // RFC 7240's delta-seconds: digits only. Too many for a number is longer than any
        // wait, cut to the maximum as any other long one.
        let digits = value.trim().trim_matches('"');
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(digits.parse().map_or(Duration::MAX, Duration::from_secs))
    })
}

/// `Preference-Applied: wait=N` once a wait of N seconds was honoured; `Vary: Prefer`
/// always, since the answer depends on it.
pub struct Applied(pub Option<Duration>);

impl IntoResponseParts for Applied {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        if let Some(wait) = self.0.filter(|wait| !wait.is_zero())
            && let Ok(value) = HeaderValue::from_str(&format!("wait={}", wait.as_secs()))
        {
            res.headers_mut().insert(PREFERENCE_APPLIED.clone(), value);
        }
        res.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("prefer"));
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_preference_is_found_among_others() {
        let secs = |v| preferred_wait(v).map(|d| d.as_secs());
        assert_eq!(secs("wait=10"), Some(10));
        assert_eq!(secs("respond-async, wait=5"), Some(5));
        assert_eq!(secs("WAIT = 7 ; x=y"), Some(7));
        assert_eq!(secs("wait=\"3\""), Some(3));
        assert_eq!(secs("return=minimal"), None);
        assert_eq!(secs("wait=soon"), None);
        assert_eq!(secs("wait=-1"), None);
        assert_eq!(secs("wait="), None);
        assert_eq!(secs("wait=+5"), None);
        assert_eq!(
            secs("wait=99999999999999999999999"),
            Some(u64::MAX),
            "longer than any wait, not unreadable"
        );
    }

    #[test]
    fn the_query_value_is_checked() {
        let secs = |v| parse_query(v).map(|d| d.as_secs()).ok();
        assert_eq!(secs("0"), Some(0));
        assert_eq!(secs("60"), Some(60));
        assert_eq!(secs("5.0"), Some(5), "as `limit=1.0` is 1");
        assert_eq!(secs("1_0"), Some(10));
        for bad in ["61", "-1", "1.5", "", "ten", "99999999999999999999999"] {
            assert!(parse_query(bad).is_err(), "{bad:?} accepted");
        }
    }
}
