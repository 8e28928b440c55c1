//! Attacks on Idempotency-Key, waiting GETs, event streams and batches (break13): a client that
//! hangs up and retries with its key, duplicates racing a hang-up, replays under overload.
//! Each test names the behaviour it expects; each failed before its fix.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::connect;
use crate::helpers::{TestServer, read};

/// Sends `POST {path}` with `body` and an `Idempotency-Key` on a raw connection, and hangs up
/// after `hang_up_after` without reading the answer.
async fn post_and_hang_up(
    app: &TestServer,
    path: &str,
    key: &str,
    body: &Value,
    hang_up_after: Duration,
) {
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nIdempotency-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = connect(app).await;
    stream
        .write_all(request.as_bytes())
        .await
        .expect("request written");
    tokio::time::sleep(hang_up_after).await;
    drop(stream);
}

async fn post_keyed(app: &TestServer, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let response = app
        .client
        .post(app.url(path))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("request sent");
    read(response).await
}

/// A sync request (no key) that keeps the only compute thread busy for a while (about a
/// second or more of hashing in the dev profile).
async fn occupy_the_compute_thread(app: &TestServer) -> tokio::task::JoinHandle<u16> {
    let client = app.client.clone();
    let url = app.url("/sync");
    let handle = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"data": "blocker", "iterations": 1_000_000}))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    });
    // Let it reach the pool first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    handle
}

/// The canonical use of an idempotency key: the client's first POST /sync timed out (it hung
/// up), so it retries with the same key. The retry must get the result (the work done now, or
/// replayed), not an error for ever: today the first request is recorded `failed` ("the client
/// disconnected"), and every retry with that key replays that failure as a 500.
#[tokio::test]
async fn a_sync_retry_after_the_first_client_hung_up_gets_the_result() {
    let app = TestServer::builder()
        .setting("compute-threads", "1")
        .start()
        .await;
    let blocker = occupy_the_compute_thread(&app).await;
    // Too big to be done in place: it waits in the pool's queue.
    let body = json!({"data": "charge card 42", "iterations": 1000});
    // Queued behind the blocker when its client gives up.
    post_and_hang_up(
        &app,
        "/sync",
        "retry-after-timeout",
        &body,
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(blocker.await.expect("blocker"), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (status, answer) = post_keyed(&app, "/sync", "retry-after-timeout", &body).await;
    assert_eq!(
        status, 200,
        "the retry of a request nobody got an answer for gets the result: {answer}"
    );
    assert_eq!(answer["status"], "success", "{answer}");
}

/// Two clients send the same keyed POST /sync; the second waits for the first. When the first
/// client hangs up, the second (still connected, still wanting the result) must get it: today
/// the first's cancellation is replayed to it as a 500.
#[tokio::test]
async fn a_waiting_duplicate_still_gets_the_result_when_the_first_client_hangs_up() {
    let app = TestServer::builder()
        .setting("compute-threads", "1")
        .start()
        .await;
    let blocker = occupy_the_compute_thread(&app).await;
    // Too big to be done in place: it waits in the pool's queue.
    let body = json!({"data": "duplicate", "iterations": 1000});
    let first = post_and_hang_up(&app, "/sync", "dup-key", &body, Duration::from_millis(500));
    let second = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        post_keyed(&app, "/sync", "dup-key", &body).await
    };
    let ((), (status, answer)) = tokio::join!(first, second);
    assert_eq!(blocker.await.expect("blocker"), 200);
    assert_eq!(
        status, 200,
        "a connected duplicate is not failed by another client's hang-up: {answer}"
    );
}

/// A keyed POST /sync commits its `processing` row and then awaits; a hang-up at that instant
/// drops the future after the commit and before the task that completes the record is
/// spawned. The row stays `processing` for ever (SQLite: until a restart; PostgreSQL: an
/// hour), and every retry with the key waits 60 s and gets 409. SPEC §9: a client that hangs up
/// at any instant releases everything its request held.
#[tokio::test]
async fn no_keyed_sync_request_is_left_processing_when_its_client_hangs_up() {
    let app = TestServer::builder().start().await;
    let hang_ups = (0..200u32).map(|i| {
        let app = &app;
        async move {
            // Half too big to be done in place: a hang-up can cancel them mid-work too.
            let iterations = if i % 2 == 0 { 1 } else { 1000 };
            let body = json!({"data": format!("hang {i}"), "iterations": iterations});
            // Spread over the first few milliseconds: some land while the key's row commits.
            let after = Duration::from_micros(u64::from(i % 40) * 100);
            post_and_hang_up(app, "/sync", &format!("hang-{i}"), &body, after).await;
        }
    });
    futures_util::future::join_all(hang_ups).await;
    // Everything started is finished (or cancelled) well within this.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stuck = app
        .get_json("/requests?mode=sync&status=processing&limit=5")
        .await;
    assert_eq!(
        stuck["total"], 0,
        "sync requests left processing after their clients hung up: {stuck}"
    );
}

/// A replay asks for nothing new; POST /async answers it "whatever the queue". POST /sync
/// asks the compute pool for a slot before looking at the key, so a client retrying a
/// finished keyed request under overload is refused 503 although its result is stored.
#[tokio::test]
async fn a_finished_sync_key_is_replayed_even_when_the_compute_queue_is_full() {
    let app = TestServer::builder()
        .setting("compute-threads", "1")
        .setting("compute-queue-size", "1")
        .start()
        .await;
    // Too big to be done in place: without a stored result it would need the full pool.
    let body = json!({"data": "already done", "iterations": 1000});
    let (status, first) = post_keyed(&app, "/sync", "done-key", &body).await;
    assert_eq!(status, 200, "{first}");

    // One job running, one queued: the pool is full.
    let blocker = occupy_the_compute_thread(&app).await;
    let queued = {
        let client = app.client.clone();
        let url = app.url("/sync");
        tokio::spawn(async move {
            client
                .post(url)
                // Work too big to be done in place: it waits in the pool's queue.
                .json(&json!({"data": "queued", "iterations": 1000}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (status, again) = post_keyed(&app, "/sync", "done-key", &body).await;
    let still_full = !blocker.is_finished();
    assert!(
        still_full,
        "the pool was no longer full: the test proves nothing"
    );
    assert_eq!(
        status,
        200,
        "a stored result is replayed without compute (after {:?}): {again}",
        started.elapsed()
    );
    assert_eq!(again["result"], first["result"]);
    let _ = blocker.await;
    let _ = queued.await;
}

/// Clients that hang up while they wait (`Prefer: wait`) or while they follow a request's
/// events leave nothing behind: no watch on the request, and the service keeps answering.
#[tokio::test]
async fn waiters_and_event_streams_that_hang_up_leave_no_watch_behind() {
    let receiver =
        crate::helpers::Receiver::start(crate::helpers::Behaviour::hang(Duration::from_secs(30)))
            .await;
    let app = TestServer::builder()
        .setting("callback-max-retries", "5")
        .start()
        .await;
    let id = app.submit("never final in time", &receiver.url()).await;
    let mut streams = Vec::new();
    for n in 0..40 {
        let path = if n % 2 == 0 {
            format!("/requests/{id}")
        } else {
            format!("/requests/{id}/events")
        };
        let mut stream = connect(&app).await;
        stream
            .write_all(
                format!("GET {path} HTTP/1.1\r\nHost: test\r\nPrefer: wait=60\r\n\r\n").as_bytes(),
            )
            .await
            .expect("request written");
        streams.push(stream);
    }
    let gauge = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("syncasync_waited_on_requests "))
            .map(|v| v.trim().to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = app.get("/metrics").await.text().await.expect("metrics");
        if gauge(&metrics).as_deref() == Some("1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the waits never started: {:?}",
            gauge(&metrics)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every client hangs up mid-wait, without reading a byte.
    drop(streams);
    loop {
        let metrics = app.get("/metrics").await.text().await.expect("metrics");
        if gauge(&metrics).as_deref() == Some("0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hung-up waiters still watch the request: {:?}",
            gauge(&metrics)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = read(app.get(&format!("/requests/{id}")).await).await;
    assert_eq!(status, 200);
}
