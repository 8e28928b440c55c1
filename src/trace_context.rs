//! W3C Trace Context (SPEC §12): a request's place in its caller's distributed trace, kept
//! with the request so that each callback attempt continues it.
//!
//! A request that came with a valid `traceparent` gets a span of its own, a child of the
//! caller's, stored as a `traceparent` value with the caller's `tracestate`. One without (or
//! with one that is not valid, which W3C says to ignore) stores nothing, so that its record
//! and its write stay as they were: its trace is the one its request id names (the UUID's
//! 16 bytes as the trace id), the same on every attempt and after a restart. Each delivery
//! attempt is a child span of it: the callback carries the same
//! trace id and flags with a span id of the attempt's own, and the `tracestate` unchanged.
//! Parsing and writing the headers is `opentelemetry_sdk`'s `TraceContextPropagator`, which
//! holds to the W3C rules (lowercase hex, no all-zero ids, version `ff` refused, future
//! versions read by their first four fields, `tracestate` list syntax and size).

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The header (and batch item field) names.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Longest `tracestate` kept: W3C asks that at least 512 characters be propagated; a longer
/// one is dropped whole rather than cut (a cut list could end mid-member).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// A request's own span, as stored: its `traceparent` value and its caller's `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTrace {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

/// Reads headers, or a batch item's fields, for the propagator.
struct Fields<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for Fields<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent,
            TRACESTATE => self.tracestate.filter(|s| s.len() <= MAX_TRACESTATE_LEN),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

impl RequestTrace {
    /// The span of a request whose caller sent `traceparent` and `tracestate` (as headers or
    /// a batch item's fields): a child of the caller's span; `None` without a valid parent
    /// (its `tracestate` then goes too: it belonged to that parent).
    pub fn begin(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let fields = Fields {
            traceparent: traceparent.map(str::trim),
            tracestate,
        };
        let parent = TraceContextPropagator::new().extract(&fields);
        let parent = parent.span().span_context().clone();
        if !parent.is_valid() {
            return None;
        }
        let own = SpanContext::new(
            parent.trace_id(),
            new_span_id(),
            parent.trace_flags(),
            false,
            parent.trace_state().clone(),
        );
        Some(Self::of(&own))
    }

    /// The root span of the trace request `request_id` started, having come without one: the
    /// trace id is the request id's 16 bytes when it is a UUID (a hash of it otherwise), so
    /// every attempt, before a restart and after, is in the same trace; sampled.
    pub fn started_by(request_id: &str) -> Self {
        let bytes: [u8; 16] = match uuid::Uuid::parse_str(request_id) {
            Ok(id) if !id.is_nil() => *id.as_bytes(),
            _ => {
                use sha2::{Digest, Sha256};
                let digest = Sha256::digest(request_id.as_bytes());
                let mut bytes = [0u8; 16];
                bytes.copy_from_slice(&digest[..16]);
                bytes
            }
        };
        let trace_id = match TraceId::from_bytes(bytes) {
            TraceId::INVALID => new_trace_id(),
            id => id,
        };
        let root = SpanContext::new(
            trace_id,
            new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        Self::of(&root)
    }

    fn of(span: &SpanContext) -> Self {
        let headers = inject(span);
        Self {
            traceparent: headers.get(TRACEPARENT).cloned().unwrap_or_default(),
            tracestate: headers.get(TRACESTATE).cloned().filter(|s| !s.is_empty()),
        }
    }

    /// The trace id, for records and logs.
    pub fn trace_id(traceparent: &str) -> Option<&str> {
        traceparent.split('-').nth(1).filter(|id| id.len() == 32)
    }

    /// The `traceparent` and `tracestate` of one delivery attempt: a new span, a child of the
    /// request's. `None` when what is stored is not a valid span (a row written before traces
    /// were kept has none).
    pub fn attempt_headers(
        traceparent: &str,
        tracestate: Option<&str>,
    ) -> Option<Vec<(&'static str, String)>> {
        let fields = Fields {
            traceparent: Some(traceparent),
            tracestate,
        };
        let request = TraceContextPropagator::new().extract(&fields);
        let request = request.span().span_context().clone();
        if !request.is_valid() {
            return None;
        }
        let attempt = SpanContext::new(
            request.trace_id(),
            new_span_id(),
            request.trace_flags(),
            false,
            request.trace_state().clone(),
        );
        let mut headers = inject(&attempt);
        let mut out = Vec::with_capacity(2);
        out.extend(headers.remove(TRACEPARENT).map(|v| (TRACEPARENT, v)));
        out.extend(
            headers
                .remove(TRACESTATE)
                .filter(|v| !v.is_empty())
                .map(|v| (TRACESTATE, v)),
        );
        Some(out)
    }
}

/// `span` written as W3C headers.
fn inject(span: &SpanContext) -> HashMap<String, String> {
    struct Headers(HashMap<String, String>);
    impl Injector for Headers {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_string(), value);
        }
    }
    let cx = Context::new().with_remote_span_context(span.clone());
    let mut headers = Headers(HashMap::with_capacity(2));
    TraceContextPropagator::new().inject_context(&cx, &mut headers);
    headers.0
}

fn new_trace_id() -> TraceId {
    loop {
        let id = TraceId::from_bytes(rand::random());
        if id != TraceId::INVALID {
            return id;
        }
    }
}

fn new_span_id() -> SpanId {
    loop {
        let id = SpanId::from_bytes(rand::random());
        if id != SpanId::INVALID {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn parts(traceparent: &str) -> Vec<&str> {
        traceparent.split('-').collect()
    }

    #[test]
    fn a_request_with_a_parent_is_its_child_and_each_attempt_the_requests() {
        let request = RequestTrace::begin(Some(PARENT), Some("vendor=opaque,other=1")).unwrap();
        let own = parts(&request.traceparent);
        assert_eq!(own[0], "00");
        assert_eq!(own[1], "0af7651916cd43dd8448eb211c80319c", "same trace");
        assert_ne!(own[2], "b7ad6b7169203331", "a span of its own");
        assert_eq!(own[3], "01", "the caller's sampling decision kept");
        assert_eq!(request.tracestate.as_deref(), Some("vendor=opaque,other=1"));
        assert_eq!(
            RequestTrace::trace_id(&request.traceparent),
            Some("0af7651916cd43dd8448eb211c80319c")
        );

        let first =
            RequestTrace::attempt_headers(&request.traceparent, request.tracestate.as_deref())
                .unwrap();
        let second =
            RequestTrace::attempt_headers(&request.traceparent, request.tracestate.as_deref())
                .unwrap();
        let (a, b) = (parts(&first[0].1), parts(&second[0].1));
        assert_eq!(first[0].0, "traceparent");
        assert_eq!(a[1], own[1]);
        assert_ne!(a[2], own[2], "an attempt is a span of its own");
        assert_ne!(a[2], b[2], "each attempt another");
        assert_eq!(
            first[1],
            ("tracestate", "vendor=opaque,other=1".to_string())
        );
    }

    #[test]
    fn without_a_valid_parent_a_request_starts_a_trace() {
        for bad in [
            None,
            Some(""),
            Some("garbage"),
            Some("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
            Some("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"),
            Some("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"),
        ] {
            assert_eq!(RequestTrace::begin(bad, Some("vendor=x")), None, "{bad:?}");
        }
        // Then the request id names the trace, sampled, on every attempt.
        let id = "01a24185-6806-728d-9611-381a47f80193";
        let (a, b) = (RequestTrace::started_by(id), RequestTrace::started_by(id));
        assert_eq!(parts(&a.traceparent)[1], "01a241856806728d9611381a47f80193");
        assert_eq!(parts(&a.traceparent)[1], parts(&b.traceparent)[1]);
        assert_eq!(parts(&a.traceparent)[3], "01");
        assert_eq!(a.tracestate, None);
        let other = RequestTrace::started_by("not-a-uuid");
        assert_eq!(parts(&other.traceparent)[1].len(), 32);
        assert_ne!(parts(&other.traceparent)[1], "0".repeat(32));
    }

    #[test]
    fn a_bad_or_oversized_tracestate_is_dropped_and_the_parent_kept() {
        for state in ["not a list", &format!("k={}", "v".repeat(600))] {
            let request = RequestTrace::begin(Some(PARENT), Some(state)).unwrap();
            assert_eq!(
                RequestTrace::trace_id(&request.traceparent),
                Some("0af7651916cd43dd8448eb211c80319c")
            );
            assert_eq!(request.tracestate, None, "{state}");
        }
    }

    #[test]
    fn a_stored_value_that_is_not_a_span_gives_no_headers() {
        assert_eq!(RequestTrace::attempt_headers("", None), None);
        assert_eq!(RequestTrace::attempt_headers("nonsense", Some("a=b")), None);
    }
}
