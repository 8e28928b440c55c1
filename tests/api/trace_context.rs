//! W3C Trace Context (SPEC §12): a `traceparent` sent with a request (as a header, or a batch
//! item's field) is continued by its callbacks, each attempt a span of its own in the same
//! trace; a request without one starts a trace. Run on SQLite and, in CI, on PostgreSQL.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Behaviour, Receiver, TestServer, read};

const WAIT: Duration = Duration::from_secs(30);
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The parts of the `traceparent` each callback the receiver got for `id` carried.
fn callback_spans(receiver: &Receiver, id: &str) -> Vec<Vec<String>> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.body["request_id"] == id)
        .map(|r| {
            let header = r
                .headers
                .get("traceparent")
                .expect("a traceparent on every callback");
            header
                .to_str()
                .unwrap()
                .split('-')
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// `POST /async` with `body`, and `traceparent` (and `tracestate`) headers; answers the
/// request id.
pub async fn post_traced<P>(
    app: &TestServer<P>,
    body: &Value,
    traceparent: &str,
    tracestate: Option<&str>,
) -> String {
    let mut request = app
        .client
        .post(app.url("/async"))
        .header("traceparent", traceparent)
        .json(body);
    if let Some(tracestate) = tracestate {
        request = request.header("tracestate", tracestate);
    }
    let (status, answer) = read(request.send().await.unwrap()).await;
    assert_eq!(status, 200, "{answer}");
    answer["request_id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_callback_continues_the_trace_its_request_came_with_one_span_per_attempt() {
    let receiver = Receiver::start(Behaviour::fail_first(1)).await;
    let app = TestServer::builder().start().await;
    let body = json!({"data": "traced", "iterations": 1, "callback_url": receiver.url()});
    let id = post_traced(&app, &body, PARENT, Some("vendor=opaque")).await;
    receiver.wait_for_deliveries(1, WAIT).await;
    let spans = callback_spans(&receiver, &id);
    assert_eq!(spans.len(), 2, "a refused attempt, then the delivery");
    for span in &spans {
        assert_eq!(span[0], "00");
        assert_eq!(span[1], TRACE, "the caller's trace");
        assert_ne!(
            span[2], "b7ad6b7169203331",
            "a span of the service's, not the caller's"
        );
        assert_eq!(span[3], "01", "the caller's sampling decision");
    }
    assert_ne!(spans[0][2], spans[1][2], "each attempt a span of its own");
    let states: Vec<_> = receiver
        .received()
        .iter()
        .map(|r| {
            r.headers
                .get("tracestate")
                .map(|v| v.to_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(states, vec![Some("vendor=opaque".to_string()); 2]);
    let record = app.get_json(&format!("/requests/{id}")).await;
    assert_eq!(record["trace_id"], TRACE, "{record}");
    receiver.stop().await;
}

#[tokio::test]
async fn without_a_valid_traceparent_each_request_starts_a_trace_of_its_own() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder().start().await;
    let body = json!({"data": "untraced", "iterations": 1, "callback_url": receiver.url()});
    let mut ids = Vec::new();
    for header in [
        None,
        Some("garbage"),
        Some("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
    ] {
        let mut request = app.client.post(app.url("/async")).json(&body);
        if let Some(header) = header {
            request = request
                .header("traceparent", header)
                .header("tracestate", "a=b");
        }
        let (status, answer) = read(request.send().await.unwrap()).await;
        assert_eq!(
            status, 200,
            "W3C: a bad traceparent is ignored, not refused: {answer}"
        );
        ids.push(answer["request_id"].as_str().unwrap().to_string());
    }
    receiver.wait_for_deliveries(3, WAIT).await;
    let mut traces = Vec::new();
    for id in &ids {
        let span = callback_spans(&receiver, id).remove(0);
        assert_eq!(span[1].len(), 32);
        assert_ne!(span[1], "0".repeat(32));
        assert_eq!(
            span[1],
            id.replace('-', ""),
            "the trace its request id names"
        );
        let record = app.get_json(&format!("/requests/{id}")).await;
        assert!(
            record.get("trace_id").is_none(),
            "a record of the original's shape gains no field: {record}"
        );
        traces.push(span[1].clone());
    }
    traces.dedup();
    assert_eq!(traces.len(), 3, "three traces: {traces:?}");
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.headers.get("tracestate").is_none()),
        "a tracestate without its traceparent is dropped"
    );
    receiver.stop().await;
}

#[tokio::test]
async fn a_batch_items_own_traceparent_wins_over_the_batchs_header() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder().start().await;
    let own = "00-11111111111111111111111111111111-2222222222222222-00";
    let items = json!({"requests": [
        {"data": "own", "iterations": 1, "callback_url": receiver.url(), "traceparent": own},
        {"data": "batch's", "iterations": 1, "callback_url": receiver.url()},
    ]});
    let (status, answer) = read(
        app.client
            .post(app.url("/async/batch"))
            .header("traceparent", PARENT)
            .json(&items)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let ids: Vec<String> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    receiver.wait_for_deliveries(2, WAIT).await;
    let first = callback_spans(&receiver, &ids[0]).remove(0);
    assert_eq!(first[1], "11111111111111111111111111111111");
    assert_eq!(first[3], "00", "not sampled, as its caller decided");
    let second = callback_spans(&receiver, &ids[1]).remove(0);
    assert_eq!(second[1], TRACE);
    receiver.stop().await;
}

#[tokio::test]
async fn a_sync_request_keeps_its_trace() {
    let app = TestServer::builder().start().await;
    let (status, answer) = read(
        app.client
            .post(app.url("/sync"))
            .header("traceparent", PARENT)
            .json(&json!({"data": "traced sync", "iterations": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["result"]["request_id"].as_str().unwrap();
    let record = app.get_json(&format!("/requests/{id}")).await;
    assert_eq!(record["trace_id"], TRACE, "{record}");
}

#[tokio::test]
async fn bad_trace_fields_are_refused_with_their_place_and_nothing_stored() {
    let app = TestServer::builder().start().await;
    let url = "https://example.com/hook";
    for (field, bad) in [
        ("traceparent", json!(5)),
        ("traceparent", json!("not a traceparent")),
        (
            "traceparent",
            json!("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"),
        ),
        ("traceparent", json!(format!("{PARENT}-00"))),
        ("traceparent", json!(format!("{PARENT}\n"))),
        ("tracestate", json!(["a=b"])),
        ("tracestate", json!("vendor=é")),
        ("tracestate", json!(format!("k={}", "v".repeat(600)))),
    ] {
        let mut body = json!({"data": "x", "callback_url": url, "traceparent": PARENT});
        body[field] = bad.clone();
        let (status, answer) = read(app.post_async(&body).await).await;
        assert_eq!(status, 422, "{field} {bad}: {answer}");
        assert_eq!(
            answer["detail"][0]["loc"],
            json!(["body", field]),
            "{answer}"
        );
    }
    let listed = app.get_json("/requests").await;
    assert_eq!(listed["total"], 0, "nothing refused was stored: {listed}");
    let doc = app.get_json("/openapi.json").await;
    let parts = doc["components"]["schemas"]["AsyncRequest"]["allOf"]
        .as_array()
        .unwrap();
    let field: &Value = parts
        .iter()
        .find_map(|part| part["properties"].get("traceparent"))
        .expect("the document names traceparent");
    assert_eq!(field["maxLength"], 55, "{field}");
}
