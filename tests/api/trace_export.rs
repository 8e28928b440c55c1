//! Span export over OTLP/HTTP (SPEC §12): with APP_OTLP_ENDPOINT set, each delivery attempt
//! reaches the collector as a client span of the request's trace, timed and labelled as the
//! attempt went; a collector that is down or hangs costs spans, never callbacks. The
//! collector is the test's own, on loopback, decoding what it gets as the OTLP protobuf.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span, status};
use prost::Message;
use serde_json::json;
use tokio::net::TcpListener;

use crate::destination_controls::destination_of;
use crate::helpers::{Behaviour, ChildProcess, Receiver, TestServer};
use crate::trace_context::post_traced;

const WAIT: Duration = Duration::from_secs(30);
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A span as the collector got it, with its resource's `service.name`.
#[derive(Clone)]
struct Exported {
    service: Option<String>,
    span: Span,
}

/// An OTLP/HTTP collector on loopback that keeps every span sent to `/v1/traces`.
struct Collector {
    address: SocketAddr,
    spans: Arc<Mutex<Vec<Exported>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(collect))
            .with_state(Arc::clone(&spans));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            address,
            spans,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    fn spans_of(&self, request_id: &str) -> Vec<Exported> {
        let mut spans: Vec<Exported> = self
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|e| text(&e.span, "syncasync.request_id").as_deref() == Some(request_id))
            .cloned()
            .collect();
        spans.sort_by_key(|e| int(&e.span, "syncasync.attempt"));
        spans
    }

    async fn wait_for_spans(&self, request_id: &str, n: usize) -> Vec<Exported> {
        let deadline = Instant::now() + WAIT;
        loop {
            let spans = self.spans_of(request_id);
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} spans of {request_id} exported",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn collect(State(spans): State<Arc<Mutex<Vec<Exported>>>>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut spans = spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .as_ref()
            .and_then(|r| attribute(&r.attributes, "service.name"))
            .and_then(|v| match v {
                any_value::Value::StringValue(s) => Some(s),
                _ => None,
            });
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(Exported {
                    service: service.clone(),
                    span,
                });
            }
        }
    }
    ""
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
        .and_then(|AnyValue { value }| value)
}

fn text(span: &Span, key: &str) -> Option<String> {
    match attribute(&span.attributes, key)? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attribute(&span.attributes, key)? {
        any_value::Value::IntValue(n) => Some(n),
        _ => None,
    }
}

/// The span id each callback for `id` carried in its `traceparent`, in arrival order.
fn callback_span_ids(receiver: &Receiver, id: &str) -> Vec<String> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.body["request_id"] == id)
        .map(|r| {
            let header = r.headers.get("traceparent").expect("a traceparent");
            header
                .to_str()
                .unwrap()
                .split('-')
                .nth(2)
                .unwrap()
                .to_string()
        })
        .collect()
}

/// A server exporting to `collector`, sending a batch every 100 ms rather than 5 s.
async fn exporting_to(endpoint: &str) -> TestServer<ChildProcess> {
    TestServer::builder()
        .setting("otlp-endpoint", endpoint)
        .child()
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await
}

/// Stops `app` with SIGTERM and answers how long it took to exit, cleanly.
async fn stop(mut app: TestServer<ChildProcess>) -> Duration {
    let stopping = Instant::now();
    app.sigterm();
    let status = app.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}: {}", app.log());
    stopping.elapsed()
}

#[tokio::test]
async fn each_attempt_is_exported_as_a_client_span_of_the_requests_trace() {
    let collector = Collector::start().await;
    let receiver = Receiver::start(Behaviour::fail_first(1)).await;
    let app = exporting_to(&collector.url()).await;
    let body = json!({"data": "exported", "iterations": 1, "callback_url": receiver.url()});
    let id = post_traced(&app, &body, PARENT, Some("vendor=opaque")).await;
    receiver.wait_for_deliveries(1, WAIT).await;

    let spans = collector.wait_for_spans(&id, 2).await;
    assert_eq!(spans.len(), 2, "one span per attempt");
    let sent = callback_span_ids(&receiver, &id);
    let parents: Vec<String> = spans
        .iter()
        .map(|e| hex::encode(&e.span.parent_span_id))
        .collect();
    for (n, Exported { service, span }) in spans.iter().enumerate() {
        assert_eq!(service.as_deref(), Some("syncasync"));
        assert_eq!(hex::encode(&span.trace_id), TRACE, "the caller's trace");
        assert_eq!(
            hex::encode(&span.span_id),
            sent[n],
            "the span the callback named as its parent"
        );
        assert_eq!(span.kind, span::SpanKind::Client as i32);
        assert_eq!(span.name, "POST");
        assert_eq!(int(span, "syncasync.attempt"), Some(n as i64 + 1));
        assert_eq!(
            text(span, "syncasync.destination"),
            Some(destination_of(&receiver))
        );
        assert_eq!(text(span, "server.address").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            int(span, "server.port"),
            Some(i64::from(receiver.address.port()))
        );
        assert!(
            span.end_time_unix_nano > span.start_time_unix_nano,
            "a duration"
        );
        assert!(
            span.attributes.iter().all(|kv| kv.key != "url.full"),
            "the callback URL, which may hold a secret, is not exported"
        );
    }
    assert_ne!(
        parents[0], "b7ad6b7169203331",
        "a child of the request's span"
    );
    assert_eq!(parents[0].len(), 16);
    assert_eq!(
        parents[0], parents[1],
        "both attempts children of the request"
    );

    let (refused, delivered) = (&spans[0].span, &spans[1].span);
    assert_eq!(int(refused, "http.response.status_code"), Some(500));
    assert_eq!(text(refused, "error.type").as_deref(), Some("500"));
    assert_eq!(
        text(refused, "syncasync.request_status").as_deref(),
        Some("callback_pending")
    );
    assert_eq!(
        refused.status.as_ref().map(|s| s.code),
        Some(status::StatusCode::Error as i32)
    );
    assert_eq!(int(delivered, "http.response.status_code"), Some(200));
    assert_eq!(text(delivered, "error.type"), None);
    assert_eq!(
        text(delivered, "syncasync.request_status").as_deref(),
        Some("callback_success")
    );
    assert_eq!(
        delivered.status.as_ref().map(|s| s.code),
        Some(status::StatusCode::Ok as i32)
    );
    stop(app).await;
    receiver.stop().await;
}

#[tokio::test]
async fn an_untraced_requests_attempts_are_roots_of_the_trace_its_id_names() {
    let collector = Collector::start().await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = exporting_to(&format!("{}/v1/traces", collector.url())).await;
    let id = app.submit("untraced", &receiver.url()).await;
    receiver.wait_for_deliveries(1, WAIT).await;
    let spans = collector.wait_for_spans(&id, 1).await;
    let span = &spans[0].span;
    assert_eq!(hex::encode(&span.trace_id), id.replace('-', ""));
    assert!(span.parent_span_id.is_empty(), "a root span");
    assert_eq!(
        hex::encode(&span.span_id),
        callback_span_ids(&receiver, &id)[0]
    );
    stop(app).await;
    receiver.stop().await;
}

#[tokio::test]
async fn a_trace_its_caller_did_not_sample_is_not_exported() {
    let collector = Collector::start().await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = exporting_to(&collector.url()).await;
    let body = json!({"data": "unsampled", "iterations": 1, "callback_url": receiver.url()});
    let unsampled = post_traced(
        &app,
        &body,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        None,
    )
    .await;
    // One sampled request after it: once its span is in, the other's would be too.
    let sampled = app.submit("sampled", &receiver.url()).await;
    receiver.wait_for_deliveries(2, WAIT).await;
    collector.wait_for_spans(&sampled, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(collector.spans_of(&unsampled).is_empty());
    let header = receiver
        .received()
        .into_iter()
        .find(|r| r.body["request_id"] == unsampled.as_str())
        .unwrap()
        .headers
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        header.ends_with("-00"),
        "the callback says so too: {header}"
    );
    stop(app).await;
    receiver.stop().await;
}

/// A collector that accepts connections and never answers, and one that is not there: the
/// callbacks go out as quickly as without one, and the service still stops.
#[tokio::test]
async fn a_collector_that_hangs_or_is_down_costs_spans_not_callbacks() {
    let hanging = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_url = format!("http://{}", hanging.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            connections.push(socket);
        }
    });
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);

    for endpoint in [hanging_url, closed_url] {
        let receiver = Receiver::start(Behaviour::accept()).await;
        let app = exporting_to(&endpoint).await;
        let mut ids = Vec::new();
        for n in 0..40 {
            ids.push(app.submit(&format!("job {n}"), &receiver.url()).await);
        }
        receiver.wait_for_deliveries(40, WAIT).await;
        for id in &ids {
            app.wait_for_status(id, "callback_success", WAIT).await;
        }
        let took = stop(app).await;
        assert!(
            took < Duration::from_secs(20),
            "{endpoint}: the last export is given up on: {took:?}"
        );
        receiver.stop().await;
    }
    held.abort();
}
