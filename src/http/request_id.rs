//! `X-Request-ID` on every response, and one log line per request.
//!
//! Every call is given a fresh UUIDv7, minted here. A request the call creates (`POST /sync`,
//! `POST /async`) is named by it: the handler takes it with [`NewRequestId`] and hands it
//! back with [`CreatedRequest`], and the response's `X-Request-ID` is then that request's
//! `request_id`, so that one id ties the response, the log lines, the stored record and the
//! callback. The created id is always the server's, never a client's: it is the primary key
//! of the record and the name every later call uses for it, so it must be unique and not
//! chosen by whoever sends the request.
//!
//! The call's own id, for the access line and every event logged while the request is
//! handled (through the request's span), is the caller's `X-Request-ID` when it sent a usable
//! one (so a client's correlation id runs through our logs), else the minted one. Other
//! endpoints answer with it. When a call created a request, the access line also gives its
//! `request_id`; without a client id the two are the same.
//!
//! What a client chose is bounded before it reaches a log line or a metric: the method and
//! path are logged cut to [`MAX_LOGGED_LEN`] bytes (a client can send kilobytes of either),
//! and metric labels come from fixed sets (see `crate::metrics`).

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponseParts, Response, ResponseParts};
use tracing::Instrument;

use crate::metrics::{EndpointLabels, HttpLabels, MethodLabel, Metrics};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-supplied id we adopt; anything longer or odder is replaced.
const MAX_LEN: usize = 128;

/// Longest method or path logged as sent; longer ones are cut (and say so).
const MAX_LOGGED_LEN: usize = 256;

/// The id a request created by this call takes: minted by [`middleware`] for every call.
#[derive(Clone, Debug)]
pub struct NewRequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for NewRequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        // Outside the middleware (a router assembled without it) a fresh id still names the
        // request; only the tie to the response header is lost.
        Ok(parts
            .extensions
            .get::<NewRequestId>()
            .cloned()
            .unwrap_or_else(|| NewRequestId(uuid::Uuid::now_v7().to_string())))
    }
}

/// Part of a response: the call created the request with this id (a [`NewRequestId`]);
/// [`middleware`] makes it the response's `X-Request-ID` and logs it.
#[derive(Clone, Debug)]
pub struct CreatedRequest(pub String);

impl IntoResponseParts for CreatedRequest {
    type Error = Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Infallible> {
        res.extensions_mut().insert(self);
        Ok(res)
    }
}

pub async fn middleware(
    State(metrics): State<Arc<Metrics>>,
    mut req: Request,
    next: Next,
) -> Response {
    let mut buffer = uuid::Uuid::encode_buffer();
    let minted: &str = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buffer);
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| is_usable(v.as_bytes()))
        .cloned()
        .unwrap_or_else(|| header_value(minted));
    req.extensions_mut().insert(NewRequestId(minted.to_owned()));
    let method = req.method().clone();
    let path = capped(req.uri().path(), MAX_LOGGED_LEN).into_owned();
    // The route template, so that ids in paths do not become metric labels.
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let span = tracing::info_span!("http", x_request_id = %id.to_str().unwrap_or_default());
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed().as_secs_f64();
    let latency_ms = elapsed * 1000.0;
    let status = response.status().as_u16();
    let method_label = MethodLabel::from(&method);
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method: method_label,
            endpoint: endpoint.clone(),
            status,
        })
        .inc();
    // A wait the client asked for (`Prefer: wait`) is not the service's latency: counted,
    // it would make a route's percentiles say how patient its clients are.
    if !response.headers().contains_key("preference-applied") {
        metrics
            .http_request_duration
            .get_or_create(&EndpointLabels {
                method: method_label,
                endpoint: endpoint.clone(),
            })
            .observe(elapsed);
    }
    let created = response
        .extensions_mut()
        .remove::<CreatedRequest>()
        .map(|CreatedRequest(id)| id);
    // A refused destination key may be a callback URL pasted whole, secret and all: its
    // route's template is logged instead.
    let path = if status == 422 && endpoint.contains("{key}") {
        endpoint.clone()
    } else {
        path
    };
    span.in_scope(|| {
        tracing::info!(
            target: "syncasync::access",
            method = %capped(method.as_str(), MAX_LOGGED_LEN),
            path = %path,
            status,
            latency_ms = (latency_ms * 1000.0).round() / 1000.0,
            request_id = created.as_deref(),
            "request"
        );
    });
    let header = created.as_deref().map_or(id, header_value);
    response.headers_mut().insert(X_REQUEST_ID.clone(), header);
    response
}

/// `text` cut to at most `max` bytes (on a character boundary) plus a marker that says how
/// long it was, or `text` itself when it fits.
fn capped(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…[cut, {} bytes]", &text[..end], text.len()))
}

/// An id of ours as a header value (a UUID always is one).
fn header_value(id: &str) -> HeaderValue {
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Visible ASCII without spaces, at most [`MAX_LEN`] bytes: safe to echo and to log.
fn is_usable(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
        })
}

#[cfg(test)]
mod tests {
    use super::{capped, is_usable};

    #[test]
    fn logged_fields_are_capped() {
        assert_eq!(capped("/requests", 256), "/requests");
        let long = "/x".repeat(1000);
        let cut = capped(&long, 256);
        assert!(cut.starts_with(&long[..256]));
        assert!(cut.ends_with("…[cut, 2000 bytes]"), "{cut}");
        // Never splits a character.
        assert_eq!(capped("ééé", 3), "é…[cut, 6 bytes]");
    }

    #[test]
    fn usable_ids() {
        for ok in [
            "abc",
            "01a21c45-b493-7656-a2d7-95926e6d892b",
            "req_1:2/3+4=",
            &"x".repeat(128),
        ] {
            assert!(is_usable(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "has space",
            "new\nline",
            "quote\"",
            &"x".repeat(129),
            "é",
        ] {
            assert!(!is_usable(bad.as_bytes()), "{bad:?}");
        }
    }
}
