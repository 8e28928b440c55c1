//! Attacks on what the service keeps: connections, queue places, leases, stored text.

use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use syncasync::delivery::destinations::Rooms;
use syncasync::model::DeliveryAttempt;
use syncasync::store::{AttemptOutcome, MAX_UNRECORDED_CLAIMS, NewAsyncRequest, NewRequest, Store};
use tokio::io::AsyncWriteExt;

use crate::helpers::{Behaviour, Receiver, TestServer, fresh_database, postgres_admin_url, read};

const WAIT: Duration = Duration::from_secs(20);

/// How a client hangs up.
#[derive(Clone, Copy)]
enum HangUp {
    /// A FIN after the request: the server reads it all, then sees the client gone.
    Close,
    /// A reset: whatever the server has not read yet is lost, and its handler is dropped
    /// wherever it is.
    Reset,
}

/// Sends `request` on a raw socket and hangs up at once, before any answer.
async fn send_and_hang_up(app: &TestServer, request: &str, how: HangUp) {
    let mut stream = super::connect(app).await;
    stream.write_all(request.as_bytes()).await.expect("write");
    if let HangUp::Reset = how {
        // A zero linger does not block on drop, which is what the deprecation warns of.
        #[allow(deprecated)]
        let _ = stream.set_linger(Some(Duration::ZERO));
    }
    drop(stream);
}

#[tokio::test]
async fn clients_that_hang_up_mid_read_do_not_take_reads_down() {
    let app = TestServer::builder().start().await;
    for n in 0..60 {
        let path = if n % 2 == 0 { "/healthz" } else { "/requests" };
        send_and_hang_up(
            &app,
            &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"),
            if n % 3 == 0 {
                HangUp::Reset
            } else {
                HangUp::Close
            },
        )
        .await;
    }
    // Every read connection must have come back: a run of reads longer than the pool works.
    for _ in 0..20 {
        let (status, health) = read(app.get("/healthz").await).await;
        assert_eq!(status, 200, "{health}");
        assert_eq!(health["database_ok"], true, "{health}");
        let (status, list) = read(app.get("/requests").await).await;
        assert_eq!(status, 200, "{list}");
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[tokio::test]
async fn nul_and_odd_characters_are_stored_and_worked_on_every_backend() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder().start().await;
    for data in [
        "a\u{0}b",
        "\u{0}",
        "line\nbreak\ttab\u{1}\u{7f}",
        "\u{fffd}\u{10ffff}",
    ] {
        let response = app
            .post_async(&json!({"data": data, "iterations": 3, "callback_url": receiver.url()}))
            .await;
        let (status, body) = read(response).await;
        assert_eq!(status, 200, "{data:?}: {body}");
        let id = body["request_id"].as_str().unwrap().to_string();
        let record = app.wait_for_status(&id, "callback_success", WAIT).await;
        assert_eq!(
            record["result"]["input_hash"],
            sha256_hex(data.as_bytes()),
            "{data:?}"
        );
        let expected = syncasync::work::compute(data, 3);
        assert_eq!(record["result"]["output_hash"], expected.output_hash);

        let (status, body) =
            read(app.post_sync(&json!({"data": data, "iterations": 3})).await).await;
        assert_eq!(status, 200, "{data:?}: {body}");
        assert_eq!(body["result"]["output_hash"], expected.output_hash);
    }
}

#[tokio::test]
async fn a_receiver_answering_a_nul_byte_is_recorded_once_and_not_delivered_again() {
    let receiver = Receiver::start(Behaviour::answering(b"{\"ok\":true}\0\x01\xff")).await;
    let app = TestServer::builder().start().await;
    let id = app.submit("nul answer", &receiver.url()).await;
    let record = app.wait_for_status(&id, "callback_success", WAIT).await;
    assert_eq!(record["callback_attempts"], 1, "{record}");
    let body = record["attempts"][0]["response_body"].as_str().unwrap();
    assert!(body.starts_with("{\"ok\":true}"), "{body:?}");
    assert!(!body.contains('\0') && !body.contains('\u{1}'), "{body:?}");
    // Time for a second delivery, were the record lost.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), 1, "delivered exactly once");
}

/// Submits `n` async requests at once; returns how many were accepted.
async fn submit_concurrently(address: &str, n: usize, callback_url: &str) -> usize {
    let client = crate::helpers::client();
    let submissions = (0..n).map(|i| {
        let client = client.clone();
        let url = format!("{address}/async");
        let body =
            json!({"data": format!("burst {i}"), "iterations": 1, "callback_url": callback_url});
        async move {
            let response = client.post(url).json(&body).send().await.expect("send");
            match response.status().as_u16() {
                200 => true,
                503 => {
                    assert!(response.headers().contains_key("retry-after"));
                    false
                }
                other => panic!("unexpected {other}: {:?}", response.text().await),
            }
        }
    });
    futures_util::future::join_all(submissions)
        .await
        .into_iter()
        .filter(|accepted| *accepted)
        .count()
}

#[tokio::test]
async fn the_queue_bound_holds_under_concurrent_submissions() {
    // The receiver hangs, so nothing accepted finishes while the burst arrives.
    let receiver = Receiver::start(Behaviour::hang(Duration::from_secs(5))).await;
    let app = TestServer::builder()
        .setting("async-queue-max-size", "4")
        .start()
        .await;
    let accepted = submit_concurrently(&app.address, 16, &receiver.url()).await;
    assert_eq!(accepted, 4, "exactly the bound is accepted");
    let health = app.get_json("/healthz").await;
    assert_eq!(health["queue_size"], 4, "{health}");
}

#[tokio::test]
async fn two_instances_overshoot_the_bound_by_at_most_the_bound_each() {
    let Some(_) = postgres_admin_url() else {
        eprintln!("skipped: two instances share a queue only on PostgreSQL");
        return;
    };
    let receiver = Receiver::start(Behaviour::hang(Duration::from_secs(5))).await;
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database(dir.path()).await;
    let instance = || {
        TestServer::builder()
            .database_url(&database)
            .setting("async-queue-max-size", "4")
            .start()
    };
    let a = instance().await;
    let b = instance().await;
    let url = receiver.url();
    let (on_a, on_b) = tokio::join!(
        submit_concurrently(&a.address, 16, &url),
        submit_concurrently(&b.address, 16, &url),
    );
    assert!(
        on_a <= 4 && on_b <= 4,
        "one instance never exceeds the bound: {on_a}, {on_b}"
    );
    assert!(on_a + on_b >= 4, "the bound is reached: {on_a} + {on_b}");
    // Once each instance has counted the other's submissions, neither accepts more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(submit_concurrently(&a.address, 4, &receiver.url()).await, 0);
    assert_eq!(submit_concurrently(&b.address, 4, &receiver.url()).await, 0);
}

#[tokio::test]
async fn a_job_held_longer_than_its_lease_is_delivered_once() {
    // 3 s of (simulated) work before each delivery, three times the 1 s lease: only the
    // heartbeat keeps a second claim of the same process from delivering it again.
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder()
        .setting("job-lease-seconds", "1")
        .setting("callback-timeout-seconds", "0.5")
        .setting("work-duration-seconds", "3")
        .start()
        .await;
    let url = receiver.url();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(app.submit(&format!("slow {n}"), &url).await);
    }
    for id in &ids {
        let record = app.wait_for_status(id, "callback_success", WAIT).await;
        assert_eq!(record["callback_attempts"], 1, "{record}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().len(),
        3,
        "each job delivered exactly once"
    );
}

/// The store of a fresh database of the backend under test, for attacks below HTTP.
async fn open_store(dir: &std::path::Path) -> Store {
    let url = fresh_database(dir).await;
    Store::open(&url, 100, 4).await.expect("store opens")
}

async fn queue_one(store: &Store, id: &str) {
    queue_for(store, id, "http://127.0.0.1:9").await;
}

pub(super) async fn queue_for(store: &Store, id: &str, destination: &str) {
    store
        .submit_async(NewAsyncRequest {
            request: NewRequest {
                id: id.to_string(),
                payload_hash: "0".repeat(16),
                iterations: 1,
                created_at: chrono::Utc::now(),
                idempotency: None,
                trace: None,
            },
            data: "x".into(),
            callback_url: format!("{destination}/callback"),
            destination: destination.into(),
            controls: Default::default(),
            ordering_key: None,
        })
        .await
        .expect("queued");
}

fn attempt(n: u32) -> DeliveryAttempt {
    DeliveryAttempt {
        attempt: n,
        started_at: chrono::Utc::now(),
        duration_ms: 1.0,
        status_code: Some(200),
        error: None,
        response_body: None,
        response_headers: None,
        instance: None,
        note: None,
    }
}

/// A lease that outlives the test.
const HELD: Duration = Duration::from_secs(600);

/// Room for every job of every destination.
fn roomy() -> Rooms {
    Rooms {
        default: 1000,
        ..Rooms::default()
    }
}

/// Waits out a lease of `LEASE`.
const LEASE: Duration = Duration::from_millis(50);

async fn claim_after_expiry(store: &Store, owner: &str) -> Vec<syncasync::store::Job> {
    tokio::time::sleep(LEASE * 3).await;
    store
        .claim_due(owner, 10, LEASE, &roomy())
        .await
        .expect("claim")
}

/// An instance never claims back a job it holds, even once the lease has run out (a clock
/// stepped forward, a heartbeat that could not run): it may still be delivering it. Its
/// heartbeat renews the leases of what it works on and hands back the others, which it (or
/// anyone) then claims.
#[tokio::test]
async fn an_instance_never_claims_back_a_job_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    queue_one(&store, "working").await;
    queue_one(&store, "dropped").await;
    let first = store.claim_due("a", 10, LEASE, &roomy()).await.unwrap();
    assert_eq!(first.len(), 2);
    let again = claim_after_expiry(&store, "a").await;
    assert!(
        again.is_empty(),
        "claimed back by its own holder: {again:?}"
    );
    assert_eq!(
        store.next_due_in("a", &roomy()).await.unwrap(),
        None,
        "its own jobs are not due for it"
    );
    // One is still worked on, the other's worker gave up without an outcome.
    let working = first.iter().find(|j| j.id == "working").unwrap();
    let leases = store
        .heartbeat("a", std::slice::from_ref(&working.token), LEASE)
        .await
        .unwrap();
    assert_eq!((leases.renewed, leases.released), (1, 1));
    let claimed = store
        .claim_due("a", 10, Duration::from_secs(60), &roomy())
        .await
        .unwrap();
    let ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["dropped"], "handed back, it is claimed again");
    store.close().await;
}

#[tokio::test]
async fn a_stale_claim_cannot_overwrite_a_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    queue_one(&store, "job-1").await;
    let first = store.claim_due("a", 10, LEASE, &roomy()).await.unwrap();
    assert_eq!(first.len(), 1);
    // The first claim's lease runs out; a second claim takes the job over.
    let second = claim_after_expiry(&store, "b").await;
    assert_eq!(second.len(), 1);
    assert_ne!(
        first[0].token, second[0].token,
        "each claim has its own token"
    );

    // The stale worker's writes are all refused, even under the same instance id.
    let stale = &first[0].token;
    assert_eq!(
        store
            .heartbeat("a", std::slice::from_ref(stale), LEASE)
            .await
            .unwrap()
            .renewed,
        0
    );
    let result = syncasync::store::FinishedWork::now(syncasync::model::WorkResult {
        request_id: "job-1".into(),
        input_hash: "i".into(),
        output_hash: "o".into(),
        iterations: 1,
        processing_time_ms: 1.0,
    });
    assert!(!store.store_result("job-1", stale, &result).await.unwrap());
    assert!(
        !store
            .record_attempt("job-1", "a", stale, &attempt(1), AttemptOutcome::GaveUp)
            .await
            .unwrap()
            .is_recorded()
    );
    assert!(!store.give_up("job-1", stale, "stale").await.unwrap());
    // The live claim's are not.
    let live = &second[0].token;
    assert_eq!(
        store
            .heartbeat("b", std::slice::from_ref(live), Duration::from_secs(30))
            .await
            .unwrap()
            .renewed,
        1
    );
    assert!(
        store
            .record_attempt("job-1", "b", live, &attempt(1), AttemptOutcome::Delivered)
            .await
            .unwrap()
            .is_recorded()
    );
    let record = store.get("job-1").await.unwrap().unwrap();
    assert_eq!(record.status.as_str(), "callback_success");
    assert_eq!(record.attempts.unwrap().len(), 1);
    store.close().await;
}

#[tokio::test]
async fn a_claim_takes_at_most_its_limit_and_claims_without_outcome_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    for n in 0..10 {
        queue_one(&store, &format!("job-{n}")).await;
    }
    let claimed = store.claim_due("a", 3, LEASE, &roomy()).await.unwrap();
    assert_eq!(claimed.len(), 3, "a claim never takes more than its limit");
    assert!(claimed.iter().all(|job| job.unrecorded_claims == 1));
    // Handing a job back untouched does not count against it.
    assert_eq!(store.release("a").await.unwrap(), 3);
    let again = store.claim_due("a", 10, LEASE, &roomy()).await.unwrap();
    assert_eq!(again.len(), 10);
    assert!(
        again.iter().all(|job| job.unrecorded_claims == 1),
        "{again:?}"
    );
    // Claims whose lease ran out without an outcome add up, to past the limit: each taken
    // over by another instance (its holder never claims it back).
    let mut job = None;
    for n in 0..MAX_UNRECORDED_CLAIMS {
        job = claim_after_expiry(&store, &format!("instance-{n}"))
            .await
            .into_iter()
            .find(|job| job.id == "job-0");
    }
    let job = job.expect("job-0 claimed again");
    assert_eq!(job.unrecorded_claims, MAX_UNRECORDED_CLAIMS + 1);
    assert!(
        store
            .give_up(&job.id, &job.token, "given up")
            .await
            .unwrap()
    );
    let record = store.get("job-0").await.unwrap().unwrap();
    assert_eq!(record.status.as_str(), "callback_failed");
    assert_eq!(record.callback_last_error.as_deref(), Some("given up"));
    // A recorded outcome resets the count.
    let job = claim_after_expiry(&store, "another")
        .await
        .into_iter()
        .find(|job| job.id == "job-1")
        .unwrap();
    assert!(
        store
            .record_attempt(
                &job.id,
                "a",
                &job.token,
                &attempt(1),
                AttemptOutcome::RetryAfter(Duration::ZERO)
            )
            .await
            .unwrap()
            .is_recorded()
    );
    let job = store
        .claim_due("a", 10, LEASE, &roomy())
        .await
        .unwrap()
        .into_iter()
        .find(|job| job.id == "job-1")
        .unwrap();
    assert_eq!(job.unrecorded_claims, 1);
    store.close().await;
}

#[tokio::test]
async fn a_sync_client_that_hangs_up_cancels_its_work() {
    // One compute thread: the million-iteration requests queue behind each other, so all but
    // the first are cancelled before they start, and the first between rounds.
    let app = TestServer::builder()
        .setting("compute-threads", "1")
        .start()
        .await;
    let body = json!({"data": "nobody waits for this", "iterations": 1_000_000}).to_string();
    for _ in 0..6 {
        send_and_hang_up(
            &app,
            &format!(
                "POST /sync HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            HangUp::Close,
        )
        .await;
    }
    // A request the server saw whole before the hang-up may or may not reach its handler;
    // every one that did is recorded, and none is left to run.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let list = app.get_json("/requests?mode=sync").await;
        let records = list["requests"].as_array().unwrap();
        if !records.is_empty() && records.iter().all(|r| r["status"] != "processing") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let list = app.get_json("/requests?mode=sync").await;
    for record in list["requests"].as_array().unwrap() {
        assert_eq!(record["status"], "failed", "{record}");
        assert!(
            record["error"]
                .as_str()
                .unwrap()
                .contains("client disconnected"),
            "{record}"
        );
        assert!(record["result"].is_null());
    }
    // Nothing is left hashing for nobody: uncancelled, the six would keep the one compute
    // thread busy for seconds.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for series in [
        "syncasync_compute_busy_threads ",
        "syncasync_compute_queue_size ",
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(series))
            .expect(series);
        assert!(line.ends_with(" 0"), "{line}");
    }
    // The pool is free for the next client at once.
    let (status, _) = read(
        app.post_sync(&json!({"data": "next", "iterations": 1}))
            .await,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_claim_takes_no_more_of_a_destination_than_its_room_and_passes_full_ones_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    // Due in this order: four of a hung destination, two of a busy one, two of a healthy one.
    for (n, destination) in ["http://127.0.0.1:1"; 4]
        .into_iter()
        .chain(["http://127.0.0.1:2"; 2])
        .chain(["http://127.0.0.1:3"; 2])
        .enumerate()
    {
        queue_for(&store, &format!("job-{n}"), destination).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rooms = Rooms {
        default: 10,
        limited: vec![
            ("http://127.0.0.1:1".into(), 0),
            ("http://127.0.0.1:2".into(), 1),
        ],
        ..Rooms::default()
    };
    let claimed = store.claim_due("a", 10, HELD, &rooms).await.unwrap();
    let mut ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["job-4", "job-6", "job-7"],
        "none of the full destination, one of the busy one"
    );
    assert!(
        claimed
            .iter()
            .all(|j| j.destination != "http://127.0.0.1:1")
    );
    // The full destination's jobs kept their place: with room, its first comes first, and
    // the busy one's next in the same turn (destinations take turns) before its second.
    let claimed = store.claim_due("a", 2, HELD, &roomy()).await.unwrap();
    let mut ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["job-0", "job-5"]);
    // When only full destinations have due jobs, nothing is due for the dispatcher either.
    let full = Rooms {
        default: 10,
        limited: vec![
            ("http://127.0.0.1:1".into(), 0),
            ("http://127.0.0.1:2".into(), 0),
        ],
        ..Rooms::default()
    };
    assert!(store.next_due_in("a", &full).await.unwrap().is_none());
    assert!(store.next_due_in("a", &roomy()).await.unwrap().is_some());
    store.close().await;
}

/// A backlog of a destination without room, longer than any claim looks at in due order,
/// in front of another destination's jobs: a claim still finds those (the store then looks
/// destination by destination), and so does the dispatcher's look for the next due time.
#[tokio::test]
async fn jobs_behind_a_backlog_longer_than_a_claims_window_are_still_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    let backlog = "http://127.0.0.1:1";
    // A claim of one looks at 32 due rows first; the queue holds 100.
    for n in 0..90 {
        queue_for(&store, &format!("backlog-{n}"), backlog).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    queue_for(&store, "behind-0", "http://127.0.0.1:2").await;
    queue_for(&store, "behind-1", "http://127.0.0.1:2").await;
    let full = Rooms {
        default: 10,
        limited: vec![(backlog.into(), 0)],
        ..Rooms::default()
    };
    let held = Rooms {
        default: 10,
        held: vec![backlog.into()],
        overdue: Duration::from_secs(600),
        ..Rooms::default()
    };
    for rooms in [&full, &held] {
        assert!(store.next_due_in("a", rooms).await.unwrap().is_some());
    }
    let claimed = store.claim_due("a", 1, HELD, &full).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["behind-0"]);
    let claimed = store.claim_due("a", 4, HELD, &held).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["behind-1"]);
    // Nothing left but the backlog, which has no room: nothing due for the dispatcher.
    assert!(store.next_due_in("a", &full).await.unwrap().is_none());
    // With room, the backlog goes first, in its order.
    let claimed = store.claim_due("a", 2, HELD, &roomy()).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["backlog-0", "backlog-1"]);
    store.close().await;
}

#[tokio::test]
async fn a_held_destinations_jobs_wait_until_overdue() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path()).await;
    queue_for(&store, "held-1", "http://127.0.0.1:1").await;
    queue_for(&store, "free-1", "http://127.0.0.1:2").await;
    let held = |overdue: Duration| Rooms {
        default: 10,
        held: vec!["http://127.0.0.1:1".into()],
        overdue,
        ..Rooms::default()
    };
    let long = held(Duration::from_secs(3600));
    let claimed = store.claim_due("a", 10, HELD, &long).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["free-1"], "a held destination's jobs are passed over");
    // Its job is due again only once overdue.
    let next = store.next_due_in("a", &long).await.unwrap().unwrap();
    assert!(next > Duration::from_secs(59 * 60), "{next:?}");
    // Once a job has waited longer than `overdue`, it goes anyway.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let claimed = store
        .claim_due("a", 10, HELD, &held(Duration::from_millis(50)))
        .await
        .unwrap();
    let ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["held-1"]);
    store.close().await;
}

/// Clients that hang up right after sending `POST /async` (their write may already be in a
/// group-committed batch other callers wait on) leave no request stuck and no queue place
/// held: every request that was stored is delivered, and the whole bound takes new
/// submissions afterwards.
#[tokio::test]
async fn clients_that_hang_up_mid_submission_leave_nothing_stuck_and_no_place_held() {
    const BOUND: usize = 30;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder()
        .setting("async-queue-max-size", BOUND.to_string())
        .start()
        .await;
    let request = super::json_post(
        "/async",
        "",
        &json!({"data": "gone", "iterations": 1, "callback_url": receiver.url()}),
    );
    // One patient client first: on PostgreSQL the first submission counts the queue, and
    // clients hanging up during that count never reach the write this test is about.
    let first = app
        .post_async(&json!({"data": "first", "iterations": 1, "callback_url": receiver.url()}))
        .await;
    assert_eq!(first.status(), 200);
    for n in 0..40 {
        let how = if n % 2 == 0 {
            HangUp::Reset
        } else {
            HangUp::Close
        };
        send_and_hang_up(&app, &request, how).await;
    }
    // Whatever was stored ends delivered: nothing is left pending or processing.
    let deadline = std::time::Instant::now() + WAIT;
    let stored = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let list = app.get_json("/requests?mode=async&limit=1000").await;
        let records = list["requests"].as_array().unwrap().clone();
        if records.iter().all(|r| r["status"] == "callback_success") {
            break records;
        }
        assert!(std::time::Instant::now() < deadline, "{list}");
    };
    assert!(
        stored.len() > 1,
        "no hung-up submission reached the store: nothing was tested"
    );
    let delivered = receiver.delivered_ids();
    for record in &stored {
        assert!(delivered.iter().any(|id| *id == record["id"]), "{record}");
    }
    // No place is held by a submission whose client went away: the whole bound takes new
    // submissions, kept unfinished by a receiver that hangs. One refused while a hung-up
    // submission's write is still landing (its request is delivered at once) is tried again;
    // a place held for good is never given back, and the retries run out.
    let hanging = Receiver::start(Behaviour::hang(Duration::from_secs(30))).await;
    let bodies: Vec<_> = (0..BOUND)
        .map(|n| json!({"data": format!("after {n}"), "iterations": 1, "callback_url": hanging.url()}))
        .collect();
    let mut waiting: Vec<_> = bodies.iter().collect();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let answers =
            futures_util::future::join_all(waiting.iter().map(|body| app.post_async(body))).await;
        let mut refused = Vec::new();
        for (body, answer) in waiting.into_iter().zip(answers) {
            match answer.status().as_u16() {
                200 => {}
                503 => refused.push(body),
                other => panic!("{other} for {body}"),
            }
        }
        if refused.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {BOUND} places stay held",
            refused.len()
        );
        waiting = refused;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A sync request whose client hangs up just before a shutdown is still being recorded (its
/// work ends a second later): the shutdown waits for that record before closing the store,
/// so the request is found finished after a restart, never left `processing` (which SQLite
/// would fail as abandoned at start-up, and PostgreSQL only after an hour, holding its
/// idempotency key until then).
#[tokio::test]
async fn a_sync_request_whose_client_left_is_recorded_before_shutdown_closes_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database(dir.path()).await;
    let app = TestServer::builder()
        .database_url(&database)
        .setting("work-duration-seconds", "1")
        .start()
        .await;
    let request = super::json_post(
        "/sync",
        "Idempotency-Key: left-at-shutdown\r\n",
        &json!({"data": "left at shutdown", "iterations": 1}),
    );
    let mut stream = super::connect(&app).await;
    stream.write_all(request.as_bytes()).await.expect("write");
    // Long enough for the request to be recorded as processing and its work to start.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(50)).await;
    app.stop().await;

    let app = TestServer::builder().database_url(&database).start().await;
    let list = app.get_json("/requests?mode=sync").await;
    let records = list["requests"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{list}");
    assert_eq!(records[0]["status"], "completed", "{list}");
}

/// A sync request whose work outlives the grace period (its client still waiting when the
/// shutdown begins): the shutdown ends within the grace period, not a second one after the
/// HTTP drain, and the request is recorded as failed before the store closes, never left
/// `processing` (on PostgreSQL, its idempotency key held for an hour).
#[tokio::test]
async fn a_sync_request_outliving_the_grace_period_is_failed_within_it() {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database(dir.path()).await;
    let app = TestServer::builder()
        .database_url(&database)
        .setting("shutdown-grace-seconds", "1")
        .setting("work-duration-seconds", "6")
        .start()
        .await;
    let request = super::json_post(
        "/sync",
        "Idempotency-Key: outlives-the-grace\r\n",
        &json!({"data": "outlives the grace", "iterations": 1}),
    );
    // The client stays connected: its request is in flight when the shutdown begins.
    let mut stream = super::connect(&app).await;
    stream.write_all(request.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    app.stop().await;
    let took = started.elapsed();
    drop(stream);
    assert!(
        took < Duration::from_millis(1800),
        "a 1 s grace period, and the shutdown took {took:?}"
    );

    let app = TestServer::builder().database_url(&database).start().await;
    let list = app.get_json("/requests?mode=sync").await;
    let records = list["requests"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{list}");
    assert_eq!(records[0]["status"], "failed", "{list}");
}
