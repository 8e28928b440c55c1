//! Ordered delivery (SPEC §12): requests with the same `ordering_key` are delivered one at a
//! time, in acceptance order; other keys and unkeyed requests are not held up; a request that
//! ends `callback_failed` lets the next through, and redelivering it queues it behind the
//! key's queued requests. Run on SQLite and, in CI, on PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::control::{cancel, submit_batch};
use crate::delivery::redeliver;
use crate::helpers::{Behaviour, Receiver, TestServer, read};

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "ordering-admin";

async fn submit_keyed<P>(app: &TestServer<P>, tag: &str, url: &str, key: Option<&str>) -> String {
    let body = json!({"data": tag, "iterations": 1, "callback_url": url, "ordering_key": key});
    let (status, answer) = read(app.post_async(&body).await).await;
    assert_eq!(status, 200, "{answer}");
    answer["request_id"].as_str().unwrap().to_string()
}

/// Fails the test unless, for each key, the receiver's arrivals (every attempt, failed ones
/// included) never go back in acceptance order: one request at a time, each after the ones
/// accepted before it. `accepted` is every keyed request in acceptance order, with its key.
pub fn assert_arrived_in_order_per_key(receiver: &Receiver, accepted: &[(String, String)]) {
    let place: HashMap<&str, (usize, &str)> = accepted
        .iter()
        .enumerate()
        .map(|(i, (id, key))| (id.as_str(), (i, key.as_str())))
        .collect();
    let mut last: HashMap<&str, (usize, String)> = HashMap::new();
    for (id, at) in receiver.arrivals() {
        let Some(&(i, key)) = place.get(id.as_str()) else {
            continue;
        };
        if let Some((before, before_id)) = last.get(key) {
            assert!(
                i >= *before,
                "key {key}: {id} (accepted #{i}) arrived at {at} after {before_id} (accepted #{before})"
            );
        }
        last.insert(key, (i, id));
    }
}

#[tokio::test]
async fn a_keys_requests_arrive_one_at_a_time_in_acceptance_order_through_random_failures() {
    // About a third of all attempts refused: each key's requests are retried in place.
    let receiver = Receiver::start(Behaviour::fail_at_random(0.3)).await;
    let app = TestServer::builder()
        .setting("callback-max-retries", "30")
        .start()
        .await;
    let keys = ["k0", "k1", "k2", "k3", "k4"];
    // Half in one batch (acceptance order is the batch's), half one by one.
    let items: Vec<Value> = (0..50)
        .map(|i| {
            json!({"data": format!("batch {i}"), "iterations": 1, "callback_url": receiver.url(),
                   "ordering_key": keys[i % 5]})
        })
        .collect();
    let mut accepted: Vec<(String, String)> = submit_batch(&app, items)
        .await
        .into_iter()
        .zip((0..50).map(|i| keys[i % 5].to_string()))
        .collect();
    for i in 50..100 {
        let key = keys[i % 5];
        let id = submit_keyed(&app, &format!("single {i}"), &receiver.url(), Some(key)).await;
        accepted.push((id, key.to_string()));
    }
    receiver.wait_for_deliveries(100, WAIT).await;
    assert!(
        receiver.received().len() > 100,
        "some attempts were refused, or the test proves little"
    );
    assert_arrived_in_order_per_key(&receiver, &accepted);
    let record = app.get_json(&format!("/requests/{}", accepted[0].0)).await;
    assert_eq!(record["ordering_key"], "k0", "{record}");
    receiver.stop().await;
}

#[tokio::test]
async fn a_key_waits_for_its_failing_head_while_other_keys_go_on_and_callback_failed_releases_it() {
    let failing = Receiver::start(Behaviour::always_fail(500)).await;
    let good = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        // The failing head takes about two seconds to give up.
        .setting("callback-max-retries", "2")
        .setting("callback-retry-base-delay", "1")
        .setting("callback-retry-max-delay", "1")
        .start()
        .await;
    let head = submit_keyed(&app, "a head", &failing.url(), Some("a")).await;
    let a2 = submit_keyed(&app, "a 2", &good.url(), Some("a")).await;
    let a3 = submit_keyed(&app, "a 3", &good.url(), Some("a")).await;
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(submit_keyed(&app, &format!("b {i}"), &good.url(), Some("b")).await);
    }
    for i in 0..3 {
        others.push(submit_keyed(&app, &format!("plain {i}"), &good.url(), None).await);
    }
    for id in &others {
        app.wait_for_status(id, "callback_success", WAIT).await;
    }
    let waiting = app.get_json(&format!("/requests/{a3}")).await;
    assert_eq!(waiting["status"], "pending", "{waiting}");
    assert_eq!(waiting["waiting_for"], "ordering_key", "{waiting}");
    assert!(
        !good.delivered_ids().contains(&a2),
        "a2 went before its key's head ended"
    );
    app.wait_for_status(&head, "callback_failed", WAIT).await;
    app.wait_for_status(&a3, "callback_success", WAIT).await;
    let delivered = good.delivered_ids();
    let place = |id: &String| delivered.iter().position(|d| d == id).unwrap();
    assert!(place(&a2) < place(&a3), "a2 before a3: {delivered:?}");

    // Redelivered, the head goes behind the key's queued requests: a4, accepted after the
    // redelivery, waits for it; a2 and a3 stay delivered.
    let (status, answer) = redeliver(&app, &head, Some(TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    let a4 = submit_keyed(&app, "a 4", &good.url(), Some("a")).await;
    let behind = app.get_json(&format!("/requests/{a4}")).await;
    assert_eq!(behind["waiting_for"], "ordering_key", "{behind}");
    app.wait_for_status(&head, "callback_failed", WAIT).await;
    app.wait_for_status(&a4, "callback_success", WAIT).await;
    for id in [&a2, &a3] {
        let record = app.get_json(&format!("/requests/{id}")).await;
        assert_eq!(record["status"], "callback_success", "{record}");
        assert_eq!(record["callback_attempts"], 1, "{record}");
    }
    failing.stop().await;
    good.stop().await;
}

#[tokio::test]
async fn a_cancelled_head_lets_its_key_go_on() {
    let good = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder().start().await;
    // Scheduled an hour ahead: the key's next request waits behind it.
    let body = json!({"data": "later", "iterations": 1, "callback_url": good.url(),
                      "ordering_key": "c", "delay_seconds": 3600});
    let (status, answer) = read(app.post_async(&body).await).await;
    assert_eq!(status, 200, "{answer}");
    let head = answer["request_id"].as_str().unwrap().to_string();
    let next = submit_keyed(&app, "next", &good.url(), Some("c")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = app.get_json(&format!("/requests/{next}")).await;
    assert_eq!(waiting["waiting_for"], "ordering_key", "{waiting}");
    let (status, answer) = cancel(&app, &head).await;
    assert_eq!(status, 200, "{answer}");
    app.wait_for_status(&next, "callback_success", Duration::from_secs(5))
        .await;
    good.stop().await;
}

#[tokio::test]
async fn bad_ordering_keys_are_refused_with_their_place_and_nothing_stored() {
    let app = TestServer::builder().start().await;
    let url = "https://example.com/hook";
    for bad in [
        json!(""),
        json!("a".repeat(256)),
        json!("with space"),
        json!("é"),
        json!("tab\there"),
        json!("line\n"),
        json!(5),
        json!(true),
        json!(["a"]),
        json!({"k": 1}),
    ] {
        let body = json!({"data": "x", "callback_url": url, "ordering_key": bad});
        let (status, answer) = read(app.post_async(&body).await).await;
        assert_eq!(status, 422, "{bad}: {answer}");
        assert_eq!(
            answer["detail"][0]["loc"],
            json!(["body", "ordering_key"]),
            "{bad}: {answer}"
        );
        let item = json!({"data": "x", "callback_url": url, "ordering_key": bad});
        let (status, answer) = read(
            app.post_json("/async/batch", &json!({"requests": [item]}))
                .await,
        )
        .await;
        assert_eq!(status, 200, "a batch answers each item: {answer}");
        assert_eq!(answer["results"][0]["status"], "rejected", "{answer}");
        assert_eq!(
            answer["results"][0]["detail"][0]["loc"],
            json!(["body", "requests", 0, "ordering_key"]),
            "{answer}"
        );
    }
    let long = app.get_json("/requests").await;
    assert_eq!(long["total"], 0, "nothing refused was stored: {long}");
    // The longest, of every character allowed; null is no key.
    for good in [
        json!("~".repeat(255)),
        json!("!#$%&'()*+,-./:;<=>?@[]^_`{|}~"),
        Value::Null,
    ] {
        let body = json!({"data": "x", "callback_url": url, "ordering_key": good});
        let (status, answer) = read(app.post_async(&body).await).await;
        assert_eq!(status, 200, "{good}: {answer}");
    }
    // A replay of an idempotent request must ask for the same key.
    let send = |key: &'static str| {
        let body = json!({"data": "x", "callback_url": url, "ordering_key": key});
        app.client
            .post(app.url("/async"))
            .header("Idempotency-Key", "ordering-replay")
            .json(&body)
            .send()
    };
    let (first, answer) = read(send("one").await.unwrap()).await;
    assert_eq!(first, 200, "{answer}");
    let (replay, answer) = read(send("two").await.unwrap()).await;
    assert_eq!(replay, 422, "another key is another request: {answer}");
    let doc = app.get_json("/openapi.json").await;
    let parts = doc["components"]["schemas"]["AsyncRequest"]["allOf"]
        .as_array()
        .unwrap();
    let field = parts
        .iter()
        .find_map(|part| part["properties"].get("ordering_key"))
        .expect("the document names ordering_key");
    assert_eq!(field["maxLength"], 255, "{field}");
    assert_eq!(field["pattern"], "^[!-~]+$", "{field}");
}

/// The key's next request accepted before the cancel, and after it (when nothing else of the
/// key is queued: on SQLite it is numbered as the cancelled one was).
#[tokio::test]
async fn a_head_cancelled_in_flight_holds_its_key_until_its_attempt_ends() {
    let app = TestServer::builder()
        .setting("callback-timeout-seconds", "5")
        .setting("job-lease-seconds", "10")
        .start()
        .await;
    for (key, accepted_after_cancel) in [("d", false), ("e", true)] {
        // Longer than the sweep's period: the sweep alone would let the next one go.
        let slow = Receiver::start(Behaviour::hang(Duration::from_millis(3000))).await;
        let good = Receiver::start(Behaviour::accept()).await;
        let head = submit_keyed(&app, "slow head", &slow.url(), Some(key)).await;
        let mut next = None;
        if !accepted_after_cancel {
            next = Some(submit_keyed(&app, "next", &good.url(), Some(key)).await);
        }
        slow.wait_for_arrivals(1, WAIT).await;
        let (status, answer) = cancel(&app, &head).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["delivery_in_flight"], true, "{answer}");
        let next = match next {
            Some(next) => next,
            None => submit_keyed(&app, "next", &good.url(), Some(key)).await,
        };
        app.wait_for_status(&next, "callback_success", WAIT).await;
        let head_at = slow.arrivals()[0].1;
        let next_at = good.arrivals()[0].1;
        assert!(
            next_at >= head_at + chrono::Duration::milliseconds(2900),
            "accepted after the cancel: {accepted_after_cancel}: the next request went while \
             the cancelled one's attempt was in flight: {head_at} then {next_at}"
        );
        slow.stop().await;
        good.stop().await;
    }
}
