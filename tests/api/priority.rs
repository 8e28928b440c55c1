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

/// Jobs queued behind a paused destination, then let go to one worker: priority 5 first,
/// then priority 0 in acceptance order, then priority 2 jobs accepted 2.5 s later (two levels
/// are worth only 2 s of waiting), then priority -3. The same order from a batch.
#[tokio::test]
async fn higher_priorities_go_first_and_waiting_makes_up_for_priority() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .setting("async-worker-count", "1")
        .setting("priority-step-seconds", "1")
        .start()
        .await;
    let destination = destination_of(&receiver);
    let (status, paused) = control(&app, "pause", &destination).await;
    assert_eq!(status, 200, "{paused}");

    let low = submit_n(&app, &receiver, "low", 2, -3).await;
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

/// A flood of priority 10 jobs, more than the one worker delivers, does not hold a priority
/// -10 job for longer than the 20 levels between them are worth (2 s here): every flood job
/// accepted more than that after it is delivered after it, while the flood is still queued.
#[tokio::test]
async fn a_flood_of_higher_priorities_does_not_starve_a_lower_one() {
    // 20 ms a callback: about 50 deliveries a second, against a flood of about 100.
    let receiver = Receiver::start(Behaviour::hang(Duration::from_millis(20))).await;
    let app = TestServer::builder()
        .setting("async-worker-count", "1")
        .setting("priority-step-seconds", "0.1")
        .start()
        .await;
    let flooding = Instant::now();
    let mut flood = submit_n(&app, &receiver, "before", 20, 10).await;
    let lowest = submit(&app, &receiver, "lowest", -10).await;
    while flooding.elapsed() < Duration::from_secs(5) {
        let batch: Vec<Value> = (0..10)
            .map(|i| json!({"data": format!("flood {i}"), "callback_url": receiver.url(), "priority": 10}))
            .collect();
        flood.extend(submit_batch(&app, batch).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lowest_record = app.wait_for_status(&lowest, "callback_success", WAIT).await;
    let accepted = parse_time(&lowest_record["created_at"]);
    let arrived: Vec<String> = receiver.arrivals().into_iter().map(|(id, _)| id).collect();
    let place = arrived.iter().position(|id| *id == lowest).unwrap();
    let mut latest_ahead = i64::MIN;
    for id in &arrived[..place] {
        let record = app.get_json(&format!("/requests/{id}")).await;
        let after = (parse_time(&record["created_at"]) - accepted).num_milliseconds();
        assert!(
            after < 2_300,
            "a job accepted {after} ms after the lowest went first (place {place})"
        );
        latest_ahead = latest_ahead.max(after);
    }
    assert!(
        latest_ahead > 1_000,
        "priority counted: newer jobs went first, the latest accepted {latest_ahead} ms after"
    );
    // Not a queue that happened to drain: most of the flood was still to go.
    assert!(
        place < flood.len() * 3 / 4,
        "went {place}th of a flood of {}",
        flood.len()
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
    let doc = app.get_json("/openapi.json").await;
    let text = doc.to_string();
    assert!(text.contains("\"priority\""), "the document names priority");
}
