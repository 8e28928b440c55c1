//! Priority (SPEC §11): among due jobs a higher priority is delivered first, each level worth
//! `APP_PRIORITY_STEP_SECONDS` of waiting, so that no flood of higher priorities holds a
//! lower one forever. On both backends, through the API, with one worker so that the order
//! of claims is the order of arrivals.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::control::submit_batch;
use crate::destination_controls::{TOKEN, control, destination_of};
use crate::helpers::{Behaviour, Receiver, TestServer, parse_time, read};

const WAIT: Duration = Duration::from_secs(30);

async fn submit(app: &TestServer, receiver: &Receiver, tag: &str, priority: i64) -> String {
    let body = json!({"data": tag, "iterations": 1, "callback_url": receiver.url(),
                      "priority": priority});
    let (status, answer) = read(app.post_async(&body).await).await;
    assert_eq!(status, 200, "{answer}");
    answer["request_id"].as_str().unwrap().to_string()
}

async fn submit_n(
    app: &TestServer,
    receiver: &Receiver,
    tag: &str,
    n: usize,
    priority: i64,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(submit(app, receiver, &format!("{tag} {i}"), priority).await);
    }
    ids
}

/// A receiver, and a service with one worker (the order of claims is the order of arrivals)
/// whose priority levels are each worth `step` seconds, with the receiver's destination
/// paused so that jobs queue behind it.
async fn paused_with_one_worker(step: &str) -> (Receiver, TestServer, String) {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .setting("async-worker-count", "1")
        .setting("priority-step-seconds", step)
        .start()
        .await;
    let destination = destination_of(&receiver);
    let (status, paused) = control(&app, "pause", &destination).await;
    assert_eq!(status, 200, "{paused}");
    (receiver, app, destination)
}

/// Jobs queued behind a paused destination, then let go to one worker: priority 5 first,
/// then priority 0 in acceptance order, then priority 2 jobs accepted 2.5 s later (two levels
/// are worth only 2 s of waiting), then priority -10. The same order from a batch.
#[tokio::test]
async fn higher_priorities_go_first_and_waiting_makes_up_for_priority() {
    let (receiver, app, destination) = paused_with_one_worker("1").await;

    let low = submit_n(&app, &receiver, "low", 2, -10).await;
    let plain = submit_n(&app, &receiver, "plain", 3, 0).await;
    let items = (0..3)
        .map(
            |i| json!({"data": format!("high {i}"), "callback_url": receiver.url(), "priority": 5}),
        )
        .collect();
    let high = submit_batch(&app, items).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let later = submit_n(&app, &receiver, "later", 3, 2).await;

    let record = app.get_json(&format!("/requests/{}", high[0])).await;
    assert_eq!(record["priority"], 5, "{record}");
    assert_eq!(record["waiting_for"], "paused", "{record}");
    let record = app.get_json(&format!("/requests/{}", plain[0])).await;
    assert!(record.get("priority").is_none(), "0 is not shown: {record}");

    let (status, resumed) = control(&app, "resume", &destination).await;
    assert_eq!(status, 200, "{resumed}");
    let expected: Vec<String> = [high, plain, later, low].concat();
    receiver.wait_for_arrivals(expected.len(), WAIT).await;
    let arrived: Vec<String> = receiver.arrivals().into_iter().map(|(id, _)| id).collect();
    assert_eq!(arrived, expected, "high, plain, later (waited less), low");
    receiver.stop().await;
}

/// A flood of priority 10 jobs does not hold a priority -10 job for longer than the 20
/// levels between them are worth (2 s here): with the flood and the low job queued behind a
/// paused destination for 3.5 s and then let go to one worker, the flood jobs accepted
/// within 2 s after the low one go first and those accepted later go after it: arrivals
/// follow each job's due time less what its priority is worth, whatever the machine's speed.
#[tokio::test]
async fn a_flood_of_higher_priorities_does_not_starve_a_lower_one() {
    let (receiver, app, destination) = paused_with_one_worker("0.1").await;
    let mut queued = vec![(submit(&app, &receiver, "lowest", -10).await, -10)];
    let flooding = Instant::now();
    while flooding.elapsed() < Duration::from_millis(3_500) {
        let batch: Vec<Value> = (0..10)
            .map(|i| json!({"data": format!("flood {i}"), "callback_url": receiver.url(), "priority": 10}))
            .collect();
        queued.extend(
            submit_batch(&app, batch)
                .await
                .into_iter()
                .map(|id| (id, 10)),
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each job's place in the claims' order, from its due time as stored.
    let mut rank = std::collections::HashMap::new();
    for (id, priority) in &queued {
        let record = app.get_json(&format!("/requests/{id}")).await;
        let due = parse_time(&record["next_attempt_at"]);
        rank.insert(
            id.clone(),
            due - chrono::Duration::milliseconds(100 * priority),
        );
    }
    let (status, resumed) = control(&app, "resume", &destination).await;
    assert_eq!(status, 200, "{resumed}");
    receiver.wait_for_arrivals(queued.len(), WAIT).await;
    let arrived: Vec<String> = receiver.arrivals().into_iter().map(|(id, _)| id).collect();
    // SQLite shows due times moved from its queue clock to the wall clock: within 2 ms.
    let slack = chrono::Duration::milliseconds(2);
    for pair in arrived.windows(2) {
        let (first, then) = (rank[&pair[0]], rank[&pair[1]]);
        assert!(
            first <= then + slack,
            "out of order: {pair:?} ({first} > {then})"
        );
    }
    let lowest = &queued[0].0;
    let place = arrived.iter().position(|id| id == lowest).unwrap();
    assert!(
        place > 0 && place < arrived.len() - 1,
        "newer jobs of priority 10 went first, and later ones after it: {place} of {}",
        arrived.len()
    );
    receiver.stop().await;
}

/// A priority is an integer from -10 to 10, in a request and in a batch item; the API
/// document says so.
#[tokio::test]
async fn a_priority_out_of_range_is_refused_with_its_place() {
    let app = TestServer::builder().start().await;
    for bad in [json!(11), json!(-11), json!(1.5), json!("1")] {
        let body = json!({"data": "x", "callback_url": "https://example.com/h", "priority": bad});
        let (status, answer) = read(app.post_async(&body).await).await;
        assert_eq!(status, 422, "{bad}: {answer}");
        assert_eq!(
            answer["detail"][0]["loc"],
            json!(["body", "priority"]),
            "{answer}"
        );
    }
    let item = json!({"data": "x", "callback_url": "https://example.com/h", "priority": 99});
    let (status, answer) = read(
        app.post_json("/async/batch", &json!({"requests": [item]}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "a batch answers each item: {answer}");
    assert_eq!(answer["results"][0]["status"], "rejected", "{answer}");
    assert_eq!(
        answer["results"][0]["detail"][0]["loc"],
        json!(["body", "requests", 0, "priority"]),
        "{answer}"
    );
    let listed = app.get_json("/requests").await;
    assert_eq!(listed["total"], 0, "nothing refused was stored: {listed}");
    let doc = app.get_json("/openapi.json").await;
    let parts = doc["components"]["schemas"]["AsyncRequest"]["allOf"]
        .as_array()
        .unwrap();
    let field = parts
        .iter()
        .find_map(|part| part["properties"].get("priority"))
        .expect("the document names priority");
    assert_eq!(
        (&field["minimum"], &field["maximum"]),
        (&json!(-10), &json!(10)),
        "{field}"
    );
}
