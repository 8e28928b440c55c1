//! `X-Request-ID` on every response, and one log line per request.
//!
//! The id is the caller's when it sent a usable one (so a client's own correlation id runs
//! through our logs), or a fresh UUIDv7. Every event logged while the request is handled
//! carries it, through the request's span; the access line at the end gives method, path,
//! status and latency. It identifies the HTTP exchange; the id of an async request's work
//! (`request_id` in the body) is logged beside it when the request is accepted.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::metrics::{EndpointLabels, HttpLabels, Metrics};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest caller-supplied id we adopt; anything longer or odder is replaced.
const MAX_LEN: usize = 128;

pub async fn middleware(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .filter(|v| is_usable(v.as_bytes()))
        .cloned()
        .unwrap_or_else(fresh_id);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
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
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method: method.to_string(),
            endpoint: endpoint.clone(),
            status,
        })
        .inc();
    metrics
        .http_request_duration
        .get_or_create(&EndpointLabels {
            method: method.to_string(),
            endpoint,
        })
        .observe(elapsed);
    span.in_scope(|| {
        tracing::info!(
            target: "syncasync::access",
            method = %method,
            path = %path,
            status,
            latency_ms = (latency_ms * 1000.0).round() / 1000.0,
            "request"
        );
    });
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    response
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
    use super::is_usable;

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
