//! Control over a request after it was accepted (SPEC §11): its schedule, its own retries and
//! timeout, when it next moves and why, and cancelling it, racing everything a delivery does.
//! Run on SQLite and, in CI, on PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Behaviour, Receiver, TestServer, fresh_database, parse_time, read};

const WAIT: Duration = Duration::from_secs(20);

async fn submit<P>(app: &TestServer<P>, body: Value) -> String {
    let (status, answer) = read(app.post_async(&body).await).await;
    assert_eq!(status, 200, "{answer}");
    answer["request_id"].as_str().unwrap().to_string()
}

/// Queues `items` with one `POST /async/batch`; answers their ids, in order.
pub async fn submit_batch<P>(app: &TestServer<P>, items: Vec<Value>) -> Vec<String> {
    let (status, batch) = read(
        app.post_json("/async/batch", &json!({"requests": items}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect()
}

pub(crate) async fn cancel(app: &TestServer, id: &str) -> (u16, Value) {
    read(
        app.client
            .post(app.url(&format!("/requests/{id}/cancel")))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// What racing cancels answered: the requests cancelled, and when each cancel that promised
/// no callback (no delivery in flight) answered.
struct CancelOutcomes {
    cancelled: HashSet<String>,
    promised_nothing: HashMap<String, chrono::DateTime<chrono::Utc>>,
}

type CancelTask = tokio::task::JoinHandle<(String, u16, Value, chrono::DateTime<chrono::Utc>)>;

/// Gathers cancels' answers: each is a 200 (cancelled) or a 409 for a request already
/// delivered, nothing else.
async fn gather_cancels(tasks: Vec<CancelTask>) -> CancelOutcomes {
    let mut outcomes = CancelOutcomes {
        cancelled: HashSet::new(),
        promised_nothing: HashMap::new(),
    };
    for task in tasks {
        let (id, status, answer, answered_at) = task.await.unwrap();
        match status {
            200 => {
                if answer["delivery_in_flight"] == false {
                    outcomes.promised_nothing.insert(id.clone(), answered_at);
                }
                outcomes.cancelled.insert(id);
            }
            409 => assert!(
                answer["error"]
                    .as_str()
                    .unwrap()
                    .contains("callback_success"),
                "{answer}"
            ),
            other => panic!("cancel answered {other}: {answer}"),
        }
    }
    outcomes
}

/// Waits for every request of `ids` to settle, final with nothing due, and checks it ended
/// `cancelled` exactly when its cancel said so, else delivered.
async fn assert_settled<P>(app: &TestServer<P>, ids: &[String], cancelled: &HashSet<String>) {
    for id in ids {
        let deadline = Instant::now() + WAIT;
        let record = loop {
            let record = app.get_json(&format!("/requests/{id}")).await;
            let settled = matches!(
                record["status"].as_str(),
                Some("cancelled" | "callback_success")
            ) && record.get("next_attempt_at").is_none();
            if settled {
                break record;
            }
            assert!(Instant::now() < deadline, "never settled: {record}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let expected = if cancelled.contains(id) {
            "cancelled"
        } else {
            "callback_success"
        };
        assert_eq!(record["status"], expected, "{record}");
    }
}

#[tokio::test]
async fn a_scheduled_request_waits_for_its_time_says_so_and_is_never_early() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder().start().await;
    let asked_at = chrono::Utc::now();
    let id = submit(
        &app,
        json!({"data": "later", "callback_url": receiver.url(), "delay_seconds": 2}),
    )
    .await;
    let record = app.get_json(&format!("/requests/{id}")).await;
    assert_eq!(record["status"], "pending", "{record}");
    assert_eq!(record["waiting_for"], "schedule", "{record}");
    let run_at = parse_time(&record["run_at"]);
    let ahead = (run_at - asked_at).num_milliseconds();
    assert!(
        (1900..=2600).contains(&ahead),
        "run_at {ahead} ms ahead: {record}"
    );
    let next = parse_time(&record["next_attempt_at"]);
    assert!((next - run_at).num_milliseconds().abs() < 500, "{record}");

    let record = app.wait_for_status(&id, "callback_success", WAIT).await;
    assert!(record.get("next_attempt_at").is_none(), "final: {record}");
    assert!(record.get("waiting_for").is_none(), "{record}");
    let first = parse_time(&record["attempts"][0]["started_at"]);
    assert!(
        first >= run_at,
        "delivered at {first}, before its run_at {run_at}"
    );

    // A time already past is due at once; a time with an offset is read as that instant.
    let past = submit(
        &app,
        json!({"data": "past", "callback_url": receiver.url(),
               "run_at": "2020-01-01T00:00:00+02:00"}),
    )
    .await;
    let record = app.wait_for_status(&past, "callback_success", WAIT).await;
    assert_eq!(
        record["run_at"],
        app.get_json(&format!("/requests/{past}")).await["run_at"]
    );
    assert!(
        record["run_at"]
            .as_str()
            .unwrap()
            .starts_with("2019-12-31T22:00:00"),
        "{record}"
    );
    receiver.stop().await;
}

/// A scheduled request is durable from its acceptance: killed (SIGKILL) while it waits, the
/// service delivers it after a restart, and not before its time.
#[tokio::test]
async fn a_scheduled_request_survives_a_kill_9_and_is_neither_early_nor_lost() {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database(dir.path()).await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let mut server = TestServer::builder()
        .child()
        .database_url(&database)
        .start()
        .await;
    let id = submit(
        &server,
        json!({"data": "durable", "callback_url": receiver.url(), "delay_seconds": 3}),
    )
    .await;
    let run_at = parse_time(&server.get_json(&format!("/requests/{id}")).await["run_at"]);
    server.kill_9();
    let server = TestServer::builder()
        .child()
        .database_url(&database)
        .start()
        .await;
    let record = server.wait_for_status(&id, "callback_success", WAIT).await;
    let first = parse_time(&record["attempts"][0]["started_at"]);
    assert!(
        first >= run_at,
        "delivered at {first}, before its run_at {run_at}"
    );
    assert_eq!(receiver.delivered_ids(), [id]);
    receiver.stop().await;
}

#[tokio::test]
async fn bad_controls_are_refused_with_every_reason_and_nothing_is_stored() {
    let app = TestServer::builder()
        .setting("max-schedule-delay-seconds", "60")
        .setting("callback-max-retries", "2")
        .setting("callback-timeout-seconds", "2")
        .start()
        .await;
    let url = "http://127.0.0.1:9/callback";
    for (body, field, kind) in [
        (json!({"delay_seconds": 61}), "delay_seconds", "value_error"),
        (
            json!({"delay_seconds": -1}),
            "delay_seconds",
            "greater_than_equal",
        ),
        (json!({"delay_seconds": "5"}), "delay_seconds", "float_type"),
        (
            json!({"run_at": "2999-01-01T00:00:00Z"}),
            "run_at",
            "value_error",
        ),
        (json!({"run_at": "soon"}), "run_at", "datetime_parsing"),
        (
            json!({"run_at": "2020-01-01T00:00:00Z", "delay_seconds": 1}),
            "delay_seconds",
            "value_error",
        ),
        (
            json!({"callback_max_retries": 3}),
            "callback_max_retries",
            "less_than_equal",
        ),
        (
            json!({"callback_max_retries": -1}),
            "callback_max_retries",
            "greater_than_equal",
        ),
        (
            json!({"callback_timeout_seconds": 2.5}),
            "callback_timeout_seconds",
            "less_than_equal",
        ),
        (
            json!({"callback_timeout_seconds": 0}),
            "callback_timeout_seconds",
            "greater_than_equal",
        ),
    ] {
        let mut request = json!({"data": "x", "callback_url": url});
        request
            .as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let (status, answer) = read(app.post_async(&request).await).await;
        assert_eq!(status, 422, "{request}: {answer}");
        let detail = &answer["detail"][0];
        assert_eq!(detail["loc"], json!(["body", field]), "{request}: {answer}");
        assert_eq!(detail["type"], kind, "{request}: {answer}");
        // In a batch, the item is refused and the others are not.
        let batch = json!({"requests": [request, {"data": "y", "callback_url": url}]});
        let (status, answer) = read(app.post_json("/async/batch", &batch).await).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["results"][0]["status"], "rejected", "{answer}");
        assert_eq!(answer["results"][1]["status"], "accepted", "{answer}");
    }
    let list = app.get_json("/requests?limit=1000").await;
    assert_eq!(
        list["total"], 10,
        "only the good batch items are stored: {list}"
    );
}

#[tokio::test]
async fn its_own_retries_and_timeout_hold_and_are_shown() {
    let failing = Receiver::start(Behaviour::always_fail(500)).await;
    let slow = Receiver::start(Behaviour::hang(Duration::from_millis(1500))).await;
    let app = TestServer::builder()
        .setting("callback-max-retries", "3")
        .start()
        .await;
    let fewer = submit(
        &app,
        json!({"data": "a", "callback_url": failing.url(), "callback_max_retries": 1}),
    )
    .await;
    let record = app.wait_for_status(&fewer, "callback_failed", WAIT).await;
    assert_eq!(record["callback_attempts"], 2, "one retry: {record}");
    assert_eq!(record["callback_max_retries"], 1, "{record}");

    let none = submit(
        &app,
        json!({"data": "b", "callback_url": failing.url(), "callback_max_retries": 0}),
    )
    .await;
    let record = app.wait_for_status(&none, "callback_failed", WAIT).await;
    assert_eq!(record["callback_attempts"], 1, "{record}");

    let quick = submit(
        &app,
        json!({"data": "c", "callback_url": slow.url(), "callback_max_retries": 0,
               "callback_timeout_seconds": 0.3}),
    )
    .await;
    let record = app.wait_for_status(&quick, "callback_failed", WAIT).await;
    assert_eq!(record["callback_timeout_seconds"], 0.3, "{record}");
    let attempt = &record["attempts"][0];
    assert!(
        attempt["duration_ms"].as_f64().unwrap() < 1200.0,
        "{attempt}"
    );
    assert!(
        attempt["error"].as_str().unwrap().contains("timeout"),
        "{attempt}"
    );

    // A request that asked for nothing shows nothing new.
    let plain = submit(&app, json!({"data": "d", "callback_url": failing.url()})).await;
    let record = app.get_json(&format!("/requests/{plain}")).await;
    for field in ["run_at", "callback_max_retries", "callback_timeout_seconds"] {
        assert!(record.get(field).is_none(), "{field}: {record}");
    }
    failing.stop().await;
    slow.stop().await;
}

#[tokio::test]
async fn a_cancelled_request_gets_no_callback_and_a_repeat_answers_the_same() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder().start().await;
    let id = submit(
        &app,
        json!({"data": "never", "callback_url": receiver.url(), "delay_seconds": 1}),
    )
    .await;
    let (status, answer) = cancel(&app, &id).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "cancelled");
    assert_eq!(answer["delivery_in_flight"], false, "{answer}");
    assert_eq!(
        cancel(&app, &id).await,
        (200, answer),
        "a repeat answers the same"
    );

    let record = app.get_json(&format!("/requests/{id}")).await;
    assert_eq!(record["status"], "cancelled", "{record}");
    assert!(record.get("next_attempt_at").is_none(), "{record}");
    assert!(
        record.get("delivered_at").is_some(),
        "when it ended: {record}"
    );
    let cancelled = app.get_json("/requests?status=cancelled").await;
    assert_eq!(cancelled["total"], 1, "{cancelled}");

    // Well past its schedule: nothing came.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(
        receiver.received().is_empty(),
        "a callback after the cancel"
    );
    let record = app.get_json(&format!("/requests/{id}")).await;
    assert_eq!(record["status"], "cancelled", "{record}");
    assert_eq!(record["callback_attempts"], 0, "{record}");

    // Final requests, sync requests and unknown ids are not cancelled.
    let done = submit(
        &app,
        json!({"data": "done", "callback_url": receiver.url()}),
    )
    .await;
    app.wait_for_status(&done, "callback_success", WAIT).await;
    let (status, answer) = cancel(&app, &done).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("callback_success"),
        "{answer}"
    );
    let sync = crate::helpers::sync_request(&app, "sync").await;
    let (status, answer) = cancel(&app, &sync).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("sync"),
        "{answer}"
    );
    let (status, _) = cancel(&app, "0190e7e0-0000-7000-8000-000000000000").await;
    assert_eq!(status, 404);
    let (status, _) = cancel(&app, "not-an-id").await;
    assert_eq!(status, 404);
    receiver.stop().await;
}

#[tokio::test]
async fn an_attempt_in_flight_at_the_cancel_is_announced_audited_and_changes_nothing() {
    let receiver = Receiver::start(Behaviour::hang(Duration::from_millis(1500))).await;
    let app = TestServer::builder().start().await;
    let id = submit(
        &app,
        json!({"data": "racing", "callback_url": receiver.url()}),
    )
    .await;
    receiver.wait_for_arrivals(1, WAIT).await;
    let (status, answer) = cancel(&app, &id).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivery_in_flight"], true, "{answer}");

    // The attempt lands, is recorded, and the request stays cancelled.
    let deadline = Instant::now() + WAIT;
    let record = loop {
        let record = app.get_json(&format!("/requests/{id}")).await;
        if record["attempts"].as_array().is_some_and(|a| !a.is_empty()) {
            break record;
        }
        assert!(
            Instant::now() < deadline,
            "the attempt was never recorded: {record}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(record["status"], "cancelled", "{record}");
    assert_eq!(record["callback_attempts"], 1, "{record}");
    assert_eq!(record["attempts"][0]["status_code"], 200, "{record}");
    assert_eq!(
        cancel(&app, &id).await,
        (200, answer),
        "a repeat answers as the first"
    );
    receiver.stop().await;
}

/// Cancels racing claims, work, attempts and retries: a cancel that said no callback would
/// come is never followed by one, nothing is lost, and nothing is both cancelled and
/// delivered.
#[tokio::test]
async fn cancels_racing_every_step_of_delivery_keep_their_word() {
    let receiver = Receiver::start(Behaviour {
        fail_first: 1,
        delay: Duration::from_millis(15),
        ..Behaviour::accept()
    })
    .await;
    // Every first attempt fails: the breaker must not open over it (it would hold them all).
    let app = TestServer::builder()
        .setting("callback-breaker-threshold", "100000")
        .start()
        .await;
    let items: Vec<Value> = (0..120)
        .map(|n| json!({"data": format!("race {n}"), "callback_url": receiver.url()}))
        .collect();
    let all = submit_batch(&app, items).await;
    let mut tasks = Vec::new();
    for (n, id) in all.iter().enumerate() {
        let id = id.clone();
        let client = app.client.clone();
        let url = app.url(&format!("/requests/{id}/cancel"));
        tasks.push(tokio::spawn(async move {
            // Spread over acceptance, work, the first (failed) attempt, the backoff and the
            // second attempt of the batch's requests, all under way together.
            tokio::time::sleep(Duration::from_millis((n as u64 * 37) % 3000)).await;
            let (status, answer) = read(client.post(url).send().await.unwrap()).await;
            (id, status, answer, chrono::Utc::now())
        }));
    }
    let CancelOutcomes {
        cancelled,
        promised_nothing,
    } = gather_cancels(tasks).await;
    let in_flight = cancelled.len() - promised_nothing.len();
    eprintln!(
        "{} cancelled ({in_flight} with an attempt in flight), {} delivered first",
        cancelled.len(),
        all.len() - cancelled.len()
    );
    assert!(
        !cancelled.is_empty() && cancelled.len() < all.len(),
        "the race never raced: {} of {} cancelled",
        cancelled.len(),
        all.len()
    );
    assert_settled(&app, &all, &cancelled).await;
    // Attempts still in flight at their cancel have landed by now (the receiver answers in
    // 15 ms); give them a moment more and read what the receiver saw.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut seen = std::collections::HashMap::<String, u64>::new();
    for callback in receiver.received() {
        if let Some(id) = callback.body["request_id"].as_str() {
            *seen.entry(id.to_string()).or_default() += 1;
        }
    }
    for (id, answered_at) in &promised_nothing {
        // Attempts made before the cancel (a failed first one) are in the audit; a callback
        // sent after it would be missing from the audit (its claim was gone) or start late.
        let record = app.get_json(&format!("/requests/{id}")).await;
        let attempts = record["attempts"].as_array().unwrap();
        assert_eq!(
            seen.get(id).copied().unwrap_or(0),
            attempts.len() as u64,
            "{id}: the receiver saw a callback the audit does not have: {record}"
        );
        for attempt in attempts {
            assert!(
                parse_time(&attempt["started_at"]) < *answered_at,
                "{id}: an attempt after a cancel that promised none: {record}"
            );
        }
    }
    receiver.stop().await;
}

/// Cancels racing a crash and the lease takeover after it: an instance killed (SIGKILL) with
/// deliveries in flight, another started on its database that takes the jobs over as their
/// leases run out, and every request cancelled through the new one meanwhile. A cancel that
/// promised no callback is never followed by one arriving, every request settles, and none
/// is both cancelled and delivered.
#[tokio::test]
async fn cancels_racing_a_crash_and_the_lease_takeover_keep_their_word() {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database(dir.path()).await;
    let receiver = Receiver::start(Behaviour::hang(Duration::from_millis(300))).await;
    let start = || {
        TestServer::builder()
            .child()
            .database_url(&database)
            .setting("job-lease-seconds", "2")
            .start()
    };
    let mut crashed = start().await;
    let items: Vec<Value> = (0..40)
        .map(|n| json!({"data": format!("crash {n}"), "callback_url": receiver.url()}))
        .collect();
    let ids = submit_batch(&crashed, items).await;
    receiver.wait_for_arrivals(3, WAIT).await;
    crashed.kill_9();
    let app = start().await;

    let mut tasks = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let client = app.client.clone();
        let url = app.url(&format!("/requests/{id}/cancel"));
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            // Before, during and after the takeover (leases of 2 s).
            tokio::time::sleep(Duration::from_millis((n as u64 * 97) % 4000)).await;
            let (status, answer) = read(client.post(url).send().await.unwrap()).await;
            (id, status, answer, chrono::Utc::now())
        }));
    }
    let CancelOutcomes {
        cancelled,
        promised_nothing,
    } = gather_cancels(tasks).await;
    assert!(!cancelled.is_empty(), "nothing was cancelled: no race");
    assert_settled(&app, &ids, &cancelled).await;
    // Deliveries in flight at a cancel that said so have landed by now (300 ms each).
    tokio::time::sleep(Duration::from_millis(800)).await;
    for (id, arrived_at) in receiver.arrivals() {
        if let Some(answered_at) = promised_nothing.get(&id) {
            assert!(
                arrived_at < *answered_at,
                "{id}: a callback arrived at {arrived_at}, after a cancel at {answered_at} that \
                 promised none"
            );
        }
    }
    eprintln!(
        "{} of {} cancelled, {} with no delivery in flight",
        cancelled.len(),
        ids.len(),
        promised_nothing.len()
    );
    receiver.stop().await;
}

#[tokio::test]
async fn retry_now_cuts_a_backoff_short_and_keeps_the_attempt_count() {
    let receiver = Receiver::start(Behaviour::fail_first(1)).await;
    let app = TestServer::builder()
        .setting("admin-token", "s3cret")
        .setting("callback-retry-base-delay", "60")
        .setting("callback-retry-max-delay", "120")
        .start()
        .await;
    let id = submit(
        &app,
        json!({"data": "again", "callback_url": receiver.url()}),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    let record = loop {
        let record = app.get_json(&format!("/requests/{id}")).await;
        if record["callback_attempts"] == 1 && record.get("next_attempt_at").is_some() {
            break record;
        }
        assert!(Instant::now() < deadline, "no first attempt: {record}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let backoff = parse_time(&record["next_attempt_at"]) - chrono::Utc::now();
    assert!(backoff.num_seconds() >= 20, "waiting its backoff: {record}");
    assert!(
        record.get("waiting_for").is_none(),
        "its own backoff is no hold: {record}"
    );

    let retry = |token: Option<&str>| {
        let mut request = app.client.post(app.url(&format!("/requests/{id}/retry")));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { read(request.send().await.unwrap()).await }
    };
    assert_eq!(retry(None).await.0, 401);
    assert_eq!(retry(Some("wrong")).await.0, 401);
    let (status, answer) = retry(Some("s3cret")).await;
    assert_eq!(status, 200, "{answer}");
    let record = app
        .wait_for_status(&id, "callback_success", Duration::from_secs(10))
        .await;
    assert_eq!(record["callback_attempts"], 2, "{record}");
    let (status, answer) = retry(Some("s3cret")).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("callback_success"),
        "{answer}"
    );
    receiver.stop().await;
}

/// `POST /requests/{id}/retry` with the admin token.
async fn retry_now(app: &TestServer, id: &str) -> (u16, Value) {
    let request = app
        .client
        .post(app.url(&format!("/requests/{id}/retry")))
        .bearer_auth("s3cret");
    read(request.send().await.unwrap()).await
}

/// Retry now takes only queued async requests: a sync request at work (stored as
/// `processing` from its start, under an idempotency key) is a 409 naming it sync, and is
/// left to its client: it ends `completed`, never queued, claimed or called back.
#[tokio::test]
async fn retry_now_refuses_a_sync_request_at_work() {
    let app = TestServer::builder()
        .setting("admin-token", "s3cret")
        .start()
        .await;
    let slow = app
        .client
        .post(app.url("/sync"))
        .header("Idempotency-Key", "a slow sync request")
        .json(&json!({"data": "slow", "iterations": 1_000_000}));
    let sync = tokio::spawn(async move { read(slow.send().await.unwrap()).await });
    let deadline = Instant::now() + WAIT;
    let id = loop {
        let list = app.get_json("/requests?mode=sync&status=processing").await;
        if let Some(id) = list["requests"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "never stored at work: {list}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (status, answer) = retry_now(&app, &id).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("sync"),
        "{answer}"
    );

    let (status, body) = sync.await.unwrap();
    assert_eq!(status, 200, "{body}");
    // Room for a worker to claim it, had it been queued.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let record = app.get_json(&format!("/requests/{id}")).await;
    assert_eq!(record["status"], "completed", "{record}");
    assert_eq!(record["callback_attempts"], 0, "{record}");
    assert!(record["next_attempt_at"].is_null(), "{record}");
    let (status, answer) = retry_now(&app, &id).await;
    assert_eq!(status, 409, "{answer}");
}

/// A request waiting for an earlier one of its ordering key is not made due (409): it is
/// due once that one ends, and is delivered after it.
#[tokio::test]
async fn retry_now_refuses_a_request_behind_its_ordering_key() {
    let receiver = Receiver::start(Behaviour::hang(Duration::from_millis(1500))).await;
    let app = TestServer::builder()
        .setting("admin-token", "s3cret")
        .start()
        .await;
    let keyed =
        |data: &str| json!({"data": data, "callback_url": receiver.url(), "ordering_key": "k"});
    let head = submit(&app, keyed("head")).await;
    receiver.wait_for_arrivals(1, WAIT).await;
    let next = submit(&app, keyed("next")).await;
    let waiting = app.get_json(&format!("/requests/{next}")).await;
    assert_eq!(waiting["waiting_for"], "ordering_key", "{waiting}");

    let (status, answer) = retry_now(&app, &next).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("ordering key"),
        "{answer}"
    );
    let still = app.get_json(&format!("/requests/{next}")).await;
    assert_eq!(still["waiting_for"], "ordering_key", "{still}");
    assert!(still["next_attempt_at"].is_null(), "{still}");

    app.wait_for_status(&head, "callback_success", WAIT).await;
    app.wait_for_status(&next, "callback_success", WAIT).await;
    receiver.stop().await;
}

/// Clients that send a cancel and hang up at once, or a moment later (the answer never read,
/// the handler possibly dropped at any of its awaits): every request still ends one way or
/// the other, never both, never stuck, and a cancel that took effect means no callback.
#[tokio::test]
async fn cancels_whose_clients_hang_up_leave_each_request_cancelled_or_delivered() {
    use tokio::io::AsyncWriteExt;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder().start().await;
    let items: Vec<Value> = (0..60)
        .map(|n| {
            json!({"data": format!("hung up {n}"), "callback_url": receiver.url(),
                   "delay_seconds": 1})
        })
        .collect();
    let ids = submit_batch(&app, items).await;
    let address = app.address.trim_start_matches("http://").to_string();
    let mut hangups = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let address = address.clone();
        let request = format!(
            "POST /requests/{id}/cancel HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n"
        );
        hangups.push(tokio::spawn(async move {
            // Spread over the schedule, so that some cancels meet the work or the attempt.
            tokio::time::sleep(Duration::from_millis((n as u64 * 29) % 1300)).await;
            let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            // Hang up at once, or after a few milliseconds: the handler is mid-way.
            tokio::time::sleep(Duration::from_millis(n as u64 % 4)).await;
            drop(stream);
        }));
    }
    for hangup in hangups {
        hangup.await.unwrap();
    }
    let delivered: std::collections::HashSet<String> = {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut settled = 0;
            for id in &ids {
                let record = app.get_json(&format!("/requests/{id}")).await;
                if matches!(
                    record["status"].as_str(),
                    Some("cancelled" | "callback_success")
                ) && record.get("next_attempt_at").is_none()
                {
                    settled += 1;
                }
            }
            if settled == ids.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} settled",
                settled,
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        receiver.delivered_ids().into_iter().collect()
    };
    let mut cancelled = 0;
    for id in &ids {
        let record = app.get_json(&format!("/requests/{id}")).await;
        match record["status"].as_str() {
            Some("cancelled") => {
                cancelled += 1;
                let attempts = record["attempts"].as_array().unwrap().len();
                assert_eq!(
                    usize::from(delivered.contains(id)),
                    attempts,
                    "a cancelled request's callback is in its audit, or never sent: {record}"
                );
            }
            Some("callback_success") => assert!(delivered.contains(id), "{record}"),
            other => panic!("{id} ended {other:?}"),
        }
    }
    assert!(cancelled > 0, "no cancel took effect");
    receiver.stop().await;
}
