//! W3C Trace Context (SPEC §12): a request's place in its caller's distributed trace, kept
//! with the request so that each callback attempt continues it; the attempts' spans are
//! exported over OTLP when a collector is configured (`export`).
//!
//! A request that came with a valid `traceparent` gets a span of its own, a child of the
//! caller's, stored as a `traceparent` value with the caller's `tracestate`. One without (or
//! with one that is not valid, which W3C says to ignore) stores nothing, so that its record
//! and its write stay as they were: its trace is the one its request id names (the UUID's
//! 16 bytes as the trace id), the same on every attempt and after a restart. Each delivery
//! attempt is a span of its own, a child of the request's (a root in the request's trace when
//! it has none): the callback carries the same trace id and flags with the attempt's span id,
//! and the `tracestate` unchanged.
//! Parsing and writing the headers is `opentelemetry_sdk`'s `TraceContextPropagator`, which
//! holds to the W3C rules (lowercase hex, no all-zero ids, version `ff` refused, future
//! versions read by their first four fields, `tracestate` list syntax and size).

pub mod export;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

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
}

/// One delivery attempt's span. A child of the request's span when the request has one (it
/// came with a valid `traceparent`); otherwise a root span in the trace the request's id
/// names: the UUID's 16 bytes as the trace id, so that every attempt, before a restart and
/// after, is in the same trace, sampled.
#[derive(Debug, Clone)]
pub struct AttemptSpan {
    parent: Option<SpanContext>,
    context: SpanContext,
}

/// How an attempt ended, for its exported span.
pub struct AttemptEnd<'a> {
    pub request_id: &'a str,
    pub destination: &'a str,
    pub attempt: u32,
    pub started_at: SystemTime,
    pub duration: Duration,
    pub status_code: Option<u16>,
    /// Why it failed, if it did: the status or the transport error, as the record says.
    pub error: Option<&'a str>,
    /// The request's status once the attempt is recorded: `callback_success`,
    /// `callback_pending` (a retry is due) or `callback_failed`.
    pub request_status: &'static str,
}

impl AttemptSpan {
    /// A new span for an attempt of request `request_id`, whose stored span is `trace`. A
    /// stored value that is not a valid span (none was kept) counts as none.
    pub fn begin(request_id: &str, trace: Option<&RequestTrace>) -> Self {
        let parent = trace
            .map(|t| {
                let fields = Fields {
                    traceparent: Some(&t.traceparent),
                    tracestate: t.tracestate.as_deref(),
                };
                let cx = TraceContextPropagator::new().extract(&fields);
                cx.span().span_context().clone()
            })
            .filter(SpanContext::is_valid);
        let context = match &parent {
            Some(parent) => SpanContext::new(
                parent.trace_id(),
                new_span_id(),
                parent.trace_flags(),
                false,
                parent.trace_state().clone(),
            ),
            None => SpanContext::new(
                trace_id_of(request_id),
                new_span_id(),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
        };
        Self { parent, context }
    }

    /// The `traceparent` and, when there is one, `tracestate` the attempt's callback carries.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = inject(&self.context);
        let mut out = Vec::with_capacity(2);
        out.extend(headers.remove(TRACEPARENT).map(|v| (TRACEPARENT, v)));
        out.extend(
            headers
                .remove(TRACESTATE)
                .filter(|v| !v.is_empty())
                .map(|v| (TRACESTATE, v)),
        );
        out
    }

    pub fn trace_id(&self) -> TraceId {
        self.context.trace_id()
    }

    /// Records the attempt as a client span with `tracer` (the exporter's), timed as the
    /// delivery measured it. A span its trace did not sample is not recorded.
    pub fn export(&self, tracer: &opentelemetry_sdk::trace::SdkTracer, end: &AttemptEnd<'_>) {
        use opentelemetry::KeyValue;
        use opentelemetry::trace::{SpanKind, Status, Tracer};

        let mut attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("syncasync.destination", end.destination.to_string()),
            KeyValue::new("syncasync.request_id", end.request_id.to_string()),
            KeyValue::new("syncasync.attempt", i64::from(end.attempt)),
            KeyValue::new("syncasync.request_status", end.request_status),
        ];
        // The destination, not the callback URL: its path and query may hold a secret.
        if let Ok(url) = url::Url::parse(end.destination) {
            attributes.push(KeyValue::new("url.scheme", url.scheme().to_string()));
            if let Some(host) = url.host_str() {
                attributes.push(KeyValue::new("server.address", host.to_string()));
            }
            if let Some(port) = url.port_or_known_default() {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        if let Some(code) = end.status_code {
            attributes.push(KeyValue::new("http.response.status_code", i64::from(code)));
        }
        let status = match end.error {
            None => Status::Ok,
            Some(error) => {
                let kind = end
                    .status_code
                    .map_or_else(|| "transport".to_string(), |c| c.to_string());
                attributes.push(KeyValue::new("error.type", kind));
                Status::error(error.to_string())
            }
        };
        let mut builder = tracer
            .span_builder("POST")
            .with_kind(SpanKind::Client)
            .with_span_id(self.context.span_id())
            .with_start_time(end.started_at)
            .with_attributes(attributes)
            .with_status(status);
        let parent = match &self.parent {
            Some(parent) => Context::new().with_remote_span_context(parent.clone()),
            None => {
                builder = builder.with_trace_id(self.context.trace_id());
                Context::new()
            }
        };
        let mut span = tracer.build_with_context(builder, &parent);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, end.started_at + end.duration);
    }
}

/// The trace a request that came without one is in: its id's 16 bytes when it is a UUID (a
/// hash of it otherwise).
fn trace_id_of(request_id: &str) -> TraceId {
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
    match TraceId::from_bytes(bytes) {
        TraceId::INVALID => new_trace_id(),
        id => id,
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

    fn traceparent(span: &AttemptSpan) -> String {
        span.headers()[0].1.clone()
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

        let first = AttemptSpan::begin("any", Some(&request));
        let second = AttemptSpan::begin("any", Some(&request));
        assert_eq!(
            first
                .parent
                .as_ref()
                .map(|p| p.span_id().to_string())
                .as_deref(),
            Some(own[2])
        );
        let headers = first.headers();
        let (a, b) = (traceparent(&first), traceparent(&second));
        let (a, b) = (parts(&a), parts(&b));
        assert_eq!(headers[0].0, "traceparent");
        assert_eq!(a[1], own[1]);
        assert_ne!(a[2], own[2], "an attempt is a span of its own");
        assert_ne!(a[2], b[2], "each attempt another");
        assert_eq!(
            headers[1],
            ("tracestate", "vendor=opaque,other=1".to_string())
        );
    }

    #[test]
    fn a_parent_that_did_not_sample_is_followed() {
        let request = RequestTrace::begin(
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            None,
        )
        .unwrap();
        let attempt = AttemptSpan::begin("any", Some(&request));
        assert_eq!(parts(&traceparent(&attempt))[3], "00");
        assert_eq!(attempt.headers().len(), 1, "no tracestate to carry");
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
        // Then the request id names the trace, sampled, on every attempt, each a root.
        let id = "01a24185-6806-728d-9611-381a47f80193";
        let (a, b) = (AttemptSpan::begin(id, None), AttemptSpan::begin(id, None));
        assert!(a.parent.is_none());
        let (a, b) = (traceparent(&a), traceparent(&b));
        assert_eq!(parts(&a)[1], "01a241856806728d9611381a47f80193");
        assert_eq!(parts(&a)[1], parts(&b)[1]);
        assert_ne!(parts(&a)[2], parts(&b)[2]);
        assert_eq!(parts(&a)[3], "01");
        let other = traceparent(&AttemptSpan::begin("not-a-uuid", None));
        assert_eq!(parts(&other)[1].len(), 32);
        assert_ne!(parts(&other)[1], "0".repeat(32));
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
    fn a_stored_value_that_is_not_a_span_starts_the_requests_own_trace() {
        let id = "01a24185-6806-728d-9611-381a47f80193";
        for stored in ["", "nonsense"] {
            let trace = RequestTrace {
                traceparent: stored.to_string(),
                tracestate: Some("a=b".into()),
            };
            let attempt = AttemptSpan::begin(id, Some(&trace));
            assert!(attempt.parent.is_none());
            let headers = attempt.headers();
            assert_eq!(
                headers.len(),
                1,
                "the stored tracestate was not that trace's"
            );
            assert_eq!(parts(&headers[0].1)[1], "01a241856806728d9611381a47f80193");
        }
    }
}
