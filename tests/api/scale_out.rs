//! Several instances on one PostgreSQL: one queue, nothing lost, no job worked twice at once.
//! These tests need PostgreSQL (`SYNCASYNC_TEST_POSTGRES_URL`); without it they say so and
//! pass, except in CI, where they must run.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use futures_util::future::join_all;

use crate::helpers::{
    Behaviour, Receiver, TestServer, assert_all_delivered, client, create_postgres_database,
    postgres_admin_url, read,
};
use crate::idempotency::post_keyed;

/// Receivers setting the pace across instances: rate limits, Retry-After, ordering keys.
mod pace;

/// A fresh PostgreSQL database, or `None` (with the reason printed) when none is configured.
async fn postgres_database() -> Option<String> {
    match postgres_admin_url() {
        Some(admin) => Some(create_postgres_database(&admin).await),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the scale-out tests: set SYNCASYNC_TEST_POSTGRES_URL"
            );
            eprintln!(
                "skipped: needs PostgreSQL; set SYNCASYNC_TEST_POSTGRES_URL=postgres://…/postgres"
            );
            None
        }
    }
}

#[tokio::test]
async fn three_instances_one_killed_mid_burst_lose_nothing_and_never_overlap() {
    let Some(database) = postgres_database().await else {
        return;
    };
    let receiver = Receiver::start(Behaviour::hang(Duration::from_millis(20))).await;
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(
            TestServer::builder()
                .child()
                .database_url(&database)
                .setting("database-pool-size", "4")
                .start()
                .await,
        );
    }
    let addresses: Vec<String> = servers.iter().map(|s| s.address.clone()).collect();

    // Eight submitters spread requests over the three instances.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut submitters = Vec::new();
    for worker in 0..8 {
        let addresses = addresses.clone();
        let callback = receiver.url();
        let acknowledged = Arc::clone(&acknowledged);
        submitters.push(tokio::spawn(async move {
            let client = client();
            for n in 0..60 {
                let address = &addresses[(worker + n) % addresses.len()];
                let body = json!({"data": format!("scale {worker}-{n}"), "iterations": 2000, "callback_url": callback});
                let Ok(response) = client.post(format!("{address}/async")).json(&body).send().await else {
                    continue; // that instance is gone; the others go on
                };
                if response.status() != 200 {
                    continue;
                }
                if let Some(id) = response.json::<Value>().await.ok().and_then(|b| b["request_id"].as_str().map(str::to_string)) {
                    acknowledged.lock().unwrap().push(id);
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 120 {
        assert!(Instant::now() < deadline, "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    servers[0].kill_9();
    for submitter in submitters {
        submitter.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 300,
        "most of the burst was acknowledged: {}",
        acknowledged.len()
    );

    // Every acknowledged request ends delivered; the dead instance's jobs are taken over
    // once their leases expire.
    let survivor = &servers[1];
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut records = HashMap::new();
    for id in &acknowledged {
        let record = survivor
            .wait_for_status_until(id, "callback_success", deadline)
            .await;
        records.insert(id.clone(), record);
    }
    assert_all_delivered(&receiver, &acknowledged);

    // The audit: the instances shared the work, and no two ever worked one job at the same
    // time.
    let mut instances = HashSet::new();
    for (id, record) in &records {
        let mut spans: Vec<(String, f64, f64)> = record["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let start = crate::helpers::parse_time(&a["started_at"]);
                let start_ms = start.timestamp_millis() as f64;
                let instance = a["instance"].as_str().unwrap().to_string();
                (
                    instance,
                    start_ms,
                    start_ms + a["duration_ms"].as_f64().unwrap(),
                )
            })
            .collect();
        spans.sort_by(|a, b| a.1.total_cmp(&b.1));
        for pair in spans.windows(2) {
            let (first, second) = (&pair[0], &pair[1]);
            // Timestamps are stored to the millisecond: allow that much.
            assert!(
                first.0 == second.0 || second.1 + 1.0 >= first.2,
                "{id}: attempts by {} and {} overlap: {spans:?}",
                first.0,
                second.0
            );
        }
        instances.extend(spans.into_iter().map(|s| s.0));
    }
    assert!(instances.len() >= 2, "the work was shared: {instances:?}");
}

#[tokio::test]
async fn an_idle_instance_wakes_at_once_for_a_job_queued_by_another() {
    let Some(database) = postgres_database().await else {
        return;
    };
    let hanging = Receiver::start(Behaviour::hang(Duration::from_secs(20))).await;
    let good = Receiver::start(Behaviour::accept()).await;
    // Instance A has one worker, and it will be stuck on a hanging receiver.
    let a = TestServer::builder()
        .child()
        .database_url(&database)
        .setting("async-worker-count", "1")
        .setting("callback-timeout-seconds", "30")
        .setting("job-lease-seconds", "60")
        .setting("shutdown-grace-seconds", "1")
        .start()
        .await;
    let client = client();
    let submit = |address: String, url: String| {
        let client = client.clone();
        async move {
            let response = client
                .post(format!("{address}/async"))
                .json(&json!({"data": "wake", "iterations": 10, "callback_url": url}))
                .send()
                .await
                .unwrap();
            response.json::<Value>().await.unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    submit(a.address.clone(), hanging.url()).await;
    a.wait_for_active_workers(1, Duration::from_secs(10)).await;
    // B starts idle; give it time to fall asleep on the queue.
    let b = TestServer::builder()
        .child()
        .database_url(&database)
        .start()
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let id = submit(a.address.clone(), good.url()).await;
    good.wait_for_deliveries(1, Duration::from_secs(10)).await;
    let waited = started.elapsed();
    // B's idle poll is 5 s; only the notification gets it there sooner.
    assert!(
        waited < Duration::from_secs(2),
        "the idle instance took {waited:?} to wake"
    );
    // A's only worker is still stuck, so B made the delivery. (The receiver can see the
    // callback a moment before B records the attempt.)
    let record = b
        .wait_for_status(&id, "callback_success", Duration::from_secs(10))
        .await;
    assert_eq!(record["callback_attempts"], 1);
}

#[tokio::test]
async fn a_slow_but_live_instance_keeps_its_jobs() {
    let Some(database) = postgres_database().await else {
        return;
    };
    // Each job takes 3 s of (simulated) work before its delivery, three times the 1 s lease:
    // without heartbeats the other instance would take the jobs over and deliver them a
    // second time.
    let slow = Receiver::start(Behaviour::accept()).await;
    let instance = || {
        TestServer::builder()
            .child()
            .database_url(&database)
            .setting("job-lease-seconds", "1")
            .setting("callback-timeout-seconds", "0.5")
            .setting("work-duration-seconds", "3")
            .start()
    };
    let a = instance().await;
    let b = instance().await;
    let client = client();
    let mut ids = Vec::new();
    for n in 0..4 {
        let address = if n % 2 == 0 { &a.address } else { &b.address };
        let response = client
            .post(format!("{address}/async"))
            .json(
                &json!({"data": format!("slow {n}"), "iterations": 10, "callback_url": slow.url()}),
            )
            .send()
            .await
            .unwrap();
        ids.push(
            response.json::<Value>().await.unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    slow.wait_for_deliveries(4, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        slow.received().len(),
        4,
        "each job delivered exactly once: no takeover of a live lease"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in &ids {
        let record = a
            .wait_for_status_until(id, "callback_success", deadline)
            .await;
        assert_eq!(record["callback_attempts"], 1);
    }
}

#[tokio::test]
async fn instances_starting_together_on_an_empty_database_migrate_it_once() {
    let Some(database) = postgres_database().await else {
        return;
    };
    let instance = || {
        TestServer::builder()
            .child()
            .database_url(&database)
            .start()
    };
    let (a, b, c) = tokio::join!(instance(), instance(), instance());
    for server in [&a, &b, &c] {
        let health = server.get_json("/healthz").await;
        assert_eq!(health["database_ok"], true);
    }
    // Each migration ran exactly once.
    use sqlx::Connection;
    let mut conn = sqlx::postgres::PgConnection::connect(&database)
        .await
        .unwrap();
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count();
    let expected: Vec<i32> = (1..=i32::try_from(migrations).unwrap()).collect();
    assert_eq!(versions, expected);
}

// Idempotency keys across instances (see idempotency.rs for the rest of their rules).

/// Two in-process instances with the harness's settings, sharing the database `url`.
async fn two_instances(url: &str) -> (TestServer, TestServer) {
    let instance = || TestServer::builder().database_url(url).start();
    (instance().await, instance().await)
}

#[tokio::test]
async fn instances_sharing_postgres_create_one_request_per_key() {
    let Some(database_url) = postgres_database().await else {
        return;
    };
    let receiver = Receiver::start(Behaviour::accept()).await;
    let (a, b) = two_instances(&database_url).await;
    let body = json!({"data": "shared", "iterations": 10, "callback_url": receiver.url()});
    let answers = join_all((0..20).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        post_keyed(app, "/async", "shared-key", &body)
    }))
    .await;
    let first = &answers[0].1["request_id"];
    assert!(
        answers
            .iter()
            .all(|(s, answer, _, _)| *s == 200 && answer["request_id"] == *first),
        "{answers:?}"
    );
    assert_eq!(answers.iter().filter(|a| !a.2).count(), 1);
    receiver
        .wait_for_deliveries(1, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "one callback from two instances"
    );
}

#[tokio::test]
async fn a_repeat_on_another_instance_waits_for_the_first_and_answers_its_result() {
    let Some(database_url) = postgres_database().await else {
        return;
    };
    // Each request's work takes two seconds, so that the repeat surely arrives on B while A
    // is still working, even when each look B takes at the list costs a loaded machine
    // hundreds of milliseconds.
    let instance = || {
        TestServer::builder()
            .database_url(&database_url)
            .setting("work-duration-seconds", "2")
            .start()
    };
    let (a, b) = (instance().await, instance().await);
    let body = json!({"data": "long work"});
    let first = post_keyed(&a, "/sync", "cross-instance", &body);
    let repeat = async {
        // Sent once A's request is committed and still working, as B sees the database.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let list = b.get_json("/requests?mode=sync&status=processing").await;
            if list["total"] == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "B never saw A's request working (not committed, or done before B looked)"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        post_keyed(&b, "/sync", "cross-instance", &body).await
    };
    let ((status_a, answer_a, replayed_a, _), (status_b, answer_b, replayed_b, _)) =
        tokio::join!(first, repeat);
    assert_eq!((status_a, replayed_a), (200, false), "{answer_a}");
    // B learns of A's commit from the database (another instance's change), not by polling
    // per request.
    assert_eq!((status_b, replayed_b), (200, true), "{answer_b}");
    assert_eq!(answer_a, answer_b);
}

/// An instance killed mid-request leaves its keyed sync request `processing`, holding the
/// key; another instance fails it and frees the key once the killed one has not been seen
/// for 30 s, where it used to wait out the hour any request may run. A repeat sent to the
/// live instance meanwhile waits for the key and then does the work itself.
#[tokio::test]
async fn a_key_held_by_a_killed_instances_sync_request_is_freed_within_a_minute() {
    let Some(database_url) = postgres_database().await else {
        return;
    };
    // A's work would take ten minutes; B cleans up every second.
    let mut a = TestServer::builder()
        .child()
        .database_url(&database_url)
        .setting("work-duration-seconds", "600")
        .start()
        .await;
    let b = TestServer::builder()
        .database_url(&database_url)
        .setting("cleanup-interval-seconds", "1")
        .start()
        .await;
    let body = json!({"data": "killed mid-request", "iterations": 5});
    let first = tokio::spawn({
        let client = a.client.clone();
        let url = a.url("/sync");
        let body = body.clone();
        async move {
            let _ = client
                .post(url)
                .header("Idempotency-Key", "orphaned")
                .json(&body)
                .send()
                .await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.get_json("/requests?mode=sync&status=processing").await["total"] != 1 {
        assert!(
            Instant::now() < deadline,
            "A's request never showed as processing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill_9();
    first.abort();
    let killed_at = Instant::now();

    // The repeat waits for the holder (up to a minute) and does the work once the key is
    // free: after A's 30 s out of sight, a cleanup, and the wait's own polling.
    let patient = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .expect("client");
    let response = patient
        .post(b.url("/sync"))
        .header("Idempotency-Key", "orphaned")
        .json(&body)
        .send()
        .await
        .expect("the repeat answered");
    let replayed = response.headers().contains_key("idempotent-replayed");
    let (status, answer) = read(response).await;
    assert_eq!(status, 200, "the key was never freed: {answer}");
    assert!(!replayed, "the work was done again, not replayed: {answer}");
    assert_eq!(
        answer["result"]["output_hash"],
        syncasync::work::compute("killed mid-request", 5).output_hash
    );
    let elapsed = killed_at.elapsed();
    assert!(
        elapsed >= Duration::from_secs(25),
        "freed before A was out of sight: {elapsed:?}"
    );
    let failed = b.get_json("/requests?mode=sync&status=failed").await;
    assert_eq!(
        failed["total"], 1,
        "the orphaned request ends failed: {failed}"
    );
}

/// A pause made through one instance holds the destination's jobs on the other too (it
/// reads the controls every second), and a resume through the other releases them.
#[tokio::test]
async fn a_pause_through_one_instance_holds_the_destination_on_another() {
    use crate::destination_controls::{control, destination_of, listed};
    let Some(database) = postgres_database().await else {
        return;
    };
    let receiver = Receiver::start(Behaviour::accept()).await;
    let start = || {
        TestServer::builder()
            .database_url(&database)
            .setting("admin-token", "controls-admin-token")
            .start()
    };
    let (a, b) = (start().await, start().await);
    let destination = destination_of(&receiver);
    let (status, view) = control(&a, "pause", &destination).await;
    assert_eq!(status, 200, "{view}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while listed(&b, &destination)
        .await
        .is_none_or(|view| view["paused"] != true)
    {
        assert!(
            Instant::now() < deadline,
            "the other instance never saw the pause"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ids = Vec::new();
    for n in 0..10 {
        let app = if n % 2 == 0 { &a } else { &b };
        ids.push(app.submit(&format!("paused {n}"), &receiver.url()).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(receiver.received().is_empty(), "neither instance delivered");
    for id in &ids {
        let record = b.get_json(&format!("/requests/{id}")).await;
        assert_eq!(record["waiting_for"], "paused", "{record}");
    }
    let (status, view) = control(&b, "resume", &destination).await;
    assert_eq!(status, 200, "{view}");
    receiver
        .wait_for_deliveries(10, Duration::from_secs(20))
        .await;
    assert_all_delivered(&receiver, &ids);
    receiver.stop().await;
}
