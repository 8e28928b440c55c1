//! Clocks that are wrong or jump. On a shared database, due times and leases are computed by
//! PostgreSQL from delays, so an instance an hour ahead neither hides its jobs from the
//! cluster for an hour nor delays their retries. Within one process (SQLite), leases and due
//! times follow the monotonic clock: a step of the wall clock while it runs (libfaketime,
//! re-reading its offset from a file) neither lets the job being delivered be claimed and
//! delivered again, nor postpones a retry by the size of the step. And on either backend, an
//! instance never claims back a job it holds, however its lease looks.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use super::in_ci;
use crate::helpers::{Behaviour, ChildProcess, Receiver, TestServer, client, postgres_admin_url};

#[tokio::test]
async fn an_instance_an_hour_ahead_still_gets_its_jobs_delivered_on_time() {
    let Some(_) = postgres_admin_url() else {
        eprintln!("skipped: clocks matter where instances share a database (PostgreSQL)");
        return;
    };
    let Some(libfaketime) = libfaketime() else {
        assert!(!in_ci(), "CI installs faketime (.ci/run does)");
        eprintln!("skipped: libfaketime is not installed (apt-get install faketime)");
        return;
    };
    // The instance's wall clock runs an hour ahead; its timers (the monotonic clock) do not.
    // The library is preloaded into the server itself: the `faketime` command would fork it,
    // and killing the command would leave the server running.
    let server = TestServer::builder()
        .child()
        .env("LD_PRELOAD", libfaketime)
        .env("FAKETIME", "+1h")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .start()
        .await;
    // The first attempt fails, so the job is also rescheduled (a retry due 50-100 ms later).
    let receiver = Receiver::start(Behaviour::fail_first(1)).await;
    let client = client();
    let response = client
        .post(format!("{}/async", server.address))
        .json(&json!({"data": "skewed", "iterations": 1, "callback_url": receiver.url()}))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let id = body["request_id"].as_str().unwrap();
    let record = server
        .wait_for_status(id, "callback_success", Duration::from_secs(15))
        .await;
    assert_eq!(record["callback_attempts"], 2, "{record}");
    // The skew was real: the instance stamped the request an hour ahead.
    let created = stamped_at(&record);
    assert!(
        created > chrono::Utc::now() + chrono::Duration::minutes(50),
        "the instance's clock was not skewed: {record}"
    );
}

/// When the service says `record` was created (its clock, skewed or not).
fn stamped_at(record: &Value) -> chrono::DateTime<chrono::Utc> {
    crate::helpers::parse_time(&record["created_at"])
}

/// Where Debian's `libfaketime` package puts the library: `/usr/lib/<multiarch>/faketime/`
/// (or `/usr/lib/faketime/` on a distribution without multiarch directories).
fn libfaketime() -> Option<String> {
    let lib = PathBuf::from("/usr/lib");
    let multiarch = std::fs::read_dir(&lib)
        .ok()?
        .flatten()
        .map(|entry| entry.path());
    std::iter::once(lib.clone())
        .chain(multiarch)
        .map(|dir| dir.join("faketime/libfaketime.so.1"))
        .find(|candidate| candidate.is_file())
        .map(|path| path.to_string_lossy().into_owned())
}

/// The binary on SQLite with its wall clock offset by what `offset_file` says (`start` to
/// begin with, such as `+0`; rewriting the file steps the clock within a second), its
/// monotonic clock untouched, as a real step (NTP, `date -s`) leaves it. `None` without
/// libfaketime (outside CI).
async fn server_with_a_steppable_clock(
    offset_file: &std::path::Path,
    start: &str,
    settings: &[(&str, &str)],
) -> Option<TestServer<ChildProcess>> {
    let Some(libfaketime) = libfaketime() else {
        assert!(!in_ci(), "CI installs faketime (.ci/run does)");
        eprintln!("skipped: libfaketime is not installed (apt-get install faketime)");
        return None;
    };
    // The variant for threaded programs: the offset changes under the service's threads.
    let libfaketime = libfaketime.replace("libfaketime.so.1", "libfaketimeMT.so.1");
    std::fs::write(offset_file, start).unwrap();
    let dir = offset_file.parent().unwrap();
    Some(
        TestServer::builder()
            .child()
            .database_url(&format!("sqlite://{}", dir.join("clock.db").display()))
            .env("LD_PRELOAD", libfaketime)
            .env("FAKETIME_TIMESTAMP_FILE", offset_file.to_string_lossy())
            .env("FAKETIME_CACHE_DURATION", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .settings(settings)
            .start()
            .await,
    )
}

/// Waits (up to 3 s) until the service stamps a new sync request `by` away from now: the
/// step has reached it.
async fn wait_for_the_step(server: &TestServer<ChildProcess>, by: chrono::Duration) {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let response = client()
            .post(format!("{}/sync", server.address))
            .json(&json!({"data": "what time is it", "iterations": 1}))
            .send()
            .await
            .unwrap();
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let record = server.get_json(&format!("/requests/{id}")).await;
        let created = stamped_at(&record);
        let offset = created - chrono::Utc::now();
        if (by > chrono::Duration::zero() && offset > by)
            || (by < chrono::Duration::zero() && offset < by)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the service's clock did not step: {offset}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn submit(server: &TestServer<ChildProcess>, data: &str, callback: &str) -> String {
    let response = client()
        .post(format!("{}/async", server.address))
        .json(&json!({"data": data, "iterations": 1, "callback_url": callback}))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    body["request_id"].as_str().unwrap().to_string()
}

/// The wall clock jumps two minutes ahead while a callback is being delivered (the
/// receiver takes 4 s): the job's 30 s lease has not run out, and nothing claims it again.
/// (With leases on the wall clock, the next claim found it expired and delivered it a
/// second time, at once.)
#[tokio::test]
async fn a_clock_stepped_forward_does_not_deliver_a_job_twice() {
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    let Some(server) = server_with_a_steppable_clock(
        &offset,
        "+0",
        &[
            ("job-lease-seconds", "30"),
            ("callback-timeout-seconds", "10"),
        ],
    )
    .await
    else {
        return;
    };
    let slow = Receiver::start(Behaviour::hang(Duration::from_secs(4))).await;
    let quick = Receiver::start(Behaviour::accept()).await;
    let id = submit(&server, "stepped", &slow.url()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(&offset, "+120").unwrap();
    wait_for_the_step(&server, chrono::Duration::seconds(100)).await;
    // Other submissions make the dispatcher claim again while the first is in flight.
    let mut after = String::new();
    for n in 0..5 {
        after = submit(&server, &format!("after the step {n}"), &quick.url()).await;
    }
    quick.wait_for_deliveries(5, Duration::from_secs(10)).await;
    // The step was real: the service stamps requests two minutes ahead now.
    let stamped = server.get_json(&format!("/requests/{after}")).await;
    let created = stamped_at(&stamped);
    assert!(
        created > chrono::Utc::now() + chrono::Duration::seconds(100),
        "the clock did not step: {stamped}"
    );
    let record = server
        .wait_for_status(&id, "callback_success", Duration::from_secs(15))
        .await;
    assert_eq!(record["callback_attempts"], 1, "{record}");
    let deliveries = slow
        .received()
        .iter()
        .filter(|r| r.body["request_id"] == id.as_str())
        .count();
    assert_eq!(deliveries, 1, "the job was delivered again while in flight");
}

/// A request scheduled 4 s ahead, then the wall clock jumps two minutes ahead: the work
/// still starts 4 s after acceptance (the schedule is on the queue's monotonic clock), not
/// at once; and one scheduled after a jump ten minutes back is not postponed by it.
#[tokio::test]
async fn a_clock_step_neither_hurries_nor_postpones_a_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    let Some(server) = server_with_a_steppable_clock(&offset, "+0", &[]).await else {
        return;
    };
    let receiver = Receiver::start(Behaviour::accept()).await;
    let schedule = |data: &str| {
        client()
            .post(format!("{}/async", server.address))
            .json(
                &json!({"data": data, "iterations": 1, "callback_url": receiver.url(),
                          "delay_seconds": 4}),
            )
            .send()
    };
    let accepted = std::time::Instant::now();
    let ahead: Value = schedule("ahead").await.unwrap().json().await.unwrap();
    let ahead = ahead["request_id"].as_str().unwrap().to_string();
    std::fs::write(&offset, "+120").unwrap();
    wait_for_the_step(&server, chrono::Duration::seconds(100)).await;
    receiver
        .wait_for_deliveries(1, Duration::from_secs(15))
        .await;
    assert!(
        accepted.elapsed() >= Duration::from_millis(3_900),
        "delivered {:?} after acceptance, before its schedule",
        accepted.elapsed()
    );
    assert_eq!(receiver.delivered_ids(), [ahead]);

    std::fs::write(&offset, "-600").unwrap();
    wait_for_the_step(&server, chrono::Duration::seconds(-500)).await;
    let accepted = std::time::Instant::now();
    let back: Value = schedule("back").await.unwrap().json().await.unwrap();
    let back = back["request_id"].as_str().unwrap();
    server
        .wait_for_status(back, "callback_success", Duration::from_secs(15))
        .await;
    assert!(accepted.elapsed() >= Duration::from_millis(3_900));
}

/// The wall clock jumps ten minutes back right after a failed attempt: its retry, due six or
/// seven seconds later, comes then, not ten minutes later.
#[tokio::test]
async fn a_clock_stepped_back_does_not_postpone_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    let Some(server) = server_with_a_steppable_clock(
        &offset,
        "+0",
        &[
            ("callback-retry-base-delay", "6"),
            ("callback-retry-max-delay", "7"),
        ],
    )
    .await
    else {
        return;
    };
    let receiver = Receiver::start(Behaviour::fail_first(1)).await;
    let id = submit(&server, "stepped back", &receiver.url()).await;
    receiver.wait_for_attempts(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(&offset, "-600").unwrap();
    wait_for_the_step(&server, chrono::Duration::seconds(-500)).await;
    let record = server
        .wait_for_status(&id, "callback_success", Duration::from_secs(15))
        .await;
    assert_eq!(record["callback_attempts"], 2, "{record}");
    // The step was real: the retry was stamped ten minutes back.
    let retried = crate::helpers::parse_time(&record["attempts"][1]["started_at"]);
    assert!(
        retried < chrono::Utc::now() - chrono::Duration::seconds(500),
        "the clock did not step: {record}"
    );
}

/// A service whose wall clock ran an hour ahead queues a retry, dies (SIGKILL), and starts
/// again with the clock corrected: the retry is still due within seconds (the queue's time
/// goes on from where the dead process left it), not in an hour.
#[tokio::test]
async fn a_restart_after_the_clock_was_corrected_does_not_postpone_queued_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    let settings = [
        ("callback-retry-base-delay", "6"),
        ("callback-retry-max-delay", "7"),
    ];
    let Some(mut ahead) = server_with_a_steppable_clock(&offset, "+3600", &settings).await else {
        return;
    };
    let receiver = Receiver::start(Behaviour::fail_first(1)).await;
    let id = submit(&ahead, "queued an hour ahead", &receiver.url()).await;
    receiver.wait_for_attempts(1, Duration::from_secs(10)).await;
    let first = ahead.get_json(&format!("/requests/{id}")).await;
    let created = stamped_at(&first);
    assert!(
        created > chrono::Utc::now() + chrono::Duration::minutes(50),
        "the clock was not an hour ahead: {first}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ahead.kill_9();

    let corrected = TestServer::builder()
        .child()
        .database_url(&format!(
            "sqlite://{}",
            dir.path().join("clock.db").display()
        ))
        .settings(&settings)
        .start()
        .await;
    let record = corrected
        .wait_for_status(&id, "callback_success", Duration::from_secs(20))
        .await;
    assert_eq!(record["callback_attempts"], 2, "{record}");
}

/// A receiver's `Retry-After: 3` holds its destination for 3 s whichever way the wall clock
/// steps meanwhile: stepped an hour ahead, the hold is not over at once (its end was fixed
/// on the monotonic clock); stepped an hour back, it does not last an hour (a stored end
/// read after the step is at most APP_CALLBACK_RETRY_MAX_DELAY away).
#[tokio::test]
async fn a_clock_step_neither_ends_nor_stretches_a_receivers_hold() {
    for step in ["+3600", "-3600"] {
        let dir = tempfile::tempdir().unwrap();
        let offset = dir.path().join("offset");
        let Some(server) = server_with_a_steppable_clock(
            &offset,
            "+0",
            &[
                ("callback-retry-max-delay", "10"),
                ("callback-breaker-threshold", "1"),
            ],
        )
        .await
        else {
            return;
        };
        let receiver =
            Receiver::start(Behaviour::down_for(Duration::from_millis(100), 429).retry_after(3))
                .await;
        let mut ids = Vec::new();
        for n in 0..10 {
            ids.push(submit(&server, &format!("held {n}"), &receiver.url()).await);
        }
        receiver.wait_for_arrivals(1, Duration::from_secs(10)).await;
        std::fs::write(&offset, step).unwrap();
        let by = chrono::Duration::seconds(if step.starts_with('+') { 3000 } else { -3000 });
        wait_for_the_step(&server, by).await;
        receiver
            .wait_for_deliveries(10, Duration::from_secs(20))
            .await;
        let arrivals: Vec<_> = receiver.arrivals().into_iter().map(|(_, t)| t).collect();
        let refused_at = arrivals[0];
        let during: Vec<_> = arrivals
            .iter()
            .filter(|t| **t > refused_at + chrono::Duration::milliseconds(300))
            .filter(|t| **t < refused_at + chrono::Duration::milliseconds(2900))
            .collect();
        assert!(
            during.is_empty(),
            "{step}: callbacks during the 3 s the receiver asked for: {during:?} after {refused_at}"
        );
        let last = *arrivals.last().unwrap();
        assert!(
            last < refused_at + chrono::Duration::seconds(12),
            "{step}: the hold outlasted its bound: {refused_at} to {last}"
        );
        for id in &ids {
            server
                .wait_for_status(id, "callback_success", Duration::from_secs(10))
                .await;
        }
        receiver.stop().await;
    }
}
