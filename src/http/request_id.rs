//! `X-Request-ID` on every response, and one log line per request.
//!
//! The id is the caller's when it sent a usable one (so a client's own correlation id runs
//! through our logs), or a fresh UUIDv7. Every event logged while the request is handled
//! carries it, through the request's span; the access line at the end gives method, path,
//! status and latency. It identifies the HTTP exchange; the id of an async request's work
//! (`request_id` in the body) is logged beside it when the request is accepted.
//!
//! What a client chose is bounded before it reaches a log line or a metric: the method and
//! path are logged cut to [`MAX_LOGGED_LEN`] bytes (a client can send kilobytes of either),
//! and metric labels come from fixed sets (see `crate::metrics`).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::metrics::{EndpointLabels, HttpLabels, MethodLabel, Metrics};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-supplied id we adopt; anything longer or odder is replaced.
const MAX_LEN: usize = 128;

/// Longest method or path logged as sent; longer ones are cut (and say so).
const MAX_LOGGED_LEN: usize = 256;

pub async fn middleware(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| is_usable(v.as_bytes()))
        .cloned()
        .unwrap_or_else(fresh_id);
    let method = req.method().clone();
    let path = capped(req.uri().path(), MAX_LOGGED_LEN).into_owned();
    // The route template, so that ids in paths do not become metric labels.
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let id_text = id.to_str().unwrap_or_default().to_owned();
    let span = tracing::info_span!("http", x_request_id = %id_text);
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
    metrics
        .http_request_duration
        .get_or_create(&EndpointLabels {
            method: method_label,
            endpoint,
        })
        .observe(elapsed);
    span.in_scope(|| {
        tracing::info!(
            target: "syncasync::access",
            method = %capped(method.as_str(), MAX_LOGGED_LEN),
            path = %path,
            status,
            latency_ms = (latency_ms * 1000.0).round() / 1000.0,
            "request"
        );
    });
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
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

fn fresh_id() -> HeaderValue {
    let id = uuid::Uuid::now_v7().to_string();
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
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
