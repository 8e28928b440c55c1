//! A careless operator: every setting that is accepted works, and one that would break
//! something is refused at start with one line naming it.

use std::time::Duration;

use serde_json::json;

use super::assert_refused_in_one_line;
use crate::helpers::{Behaviour, Receiver, TestServer, read};

#[test]
fn settings_that_would_break_something_are_refused_in_one_line_naming_them() {
    for (env, variable) in [
        (
            vec![("APP_JOB_LEASE_SECONDS", "1e-10")],
            "APP_JOB_LEASE_SECONDS",
        ),
        (
            vec![("APP_JOB_LEASE_SECONDS", "0.5")],
            "APP_JOB_LEASE_SECONDS",
        ),
        (
            vec![
                ("APP_JOB_LEASE_SECONDS", "15"),
                ("APP_CALLBACK_TIMEOUT_SECONDS", "10"),
            ],
            "APP_JOB_LEASE_SECONDS",
        ),
        (
            vec![("APP_ASYNC_QUEUE_MAX_SIZE", "18446744073709551615")],
            "APP_ASYNC_QUEUE_MAX_SIZE",
        ),
        (
            vec![("APP_COMPUTE_THREADS", "100000")],
            "APP_COMPUTE_THREADS",
        ),
        (
            vec![("APP_DATABASE_POOL_SIZE", "0")],
            "APP_DATABASE_POOL_SIZE",
        ),
        (
            vec![("APP_CALLBACK_TIMEOUT_SECONDS", "nan")],
            "APP_CALLBACK_TIMEOUT_SECONDS",
        ),
        (
            vec![("APP_CLEANUP_INTERVAL_SECONDS", "0")],
            "APP_CLEANUP_INTERVAL_SECONDS",
        ),
    ] {
        assert_refused_in_one_line(&env, variable);
    }
}

#[tokio::test]
async fn extreme_but_accepted_settings_work() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    // The largest queue bound, the smallest pool (on PostgreSQL, one connection per pool: the
    // job listener must not take it), the shortest lease.
    // (The retention cut-off is computed by the database on PostgreSQL: the longest accepted
    // retention must stay within its date range, which the cleanup below exercises.)
    let app = TestServer::builder()
        .setting("admin-token", "t")
        .setting("async-queue-max-size", "1099511627776")
        .setting("database-pool-size", "1")
        .setting("job-lease-seconds", "1")
        .setting("callback-timeout-seconds", "0.5")
        .setting("max-stored-requests", "18446744073709551615")
        .setting("request-retention-hours", "1000000")
        .start()
        .await;
    let (status, health) = read(app.get("/healthz").await).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["queue_capacity"], 1_099_511_627_776u64);
    let (status, _) = read(app.post_sync(&json!({"data": "x", "iterations": 1})).await).await;
    assert_eq!(status, 200);
    let id = app.submit("tiny pool", &receiver.url()).await;
    app.wait_for_status(&id, "callback_success", Duration::from_secs(20))
        .await;
    let (status, _) = read(app.get("/requests").await).await;
    assert_eq!(status, 200);
    assert_eq!(app.get("/metrics").await.status(), 200);
    let cleanup = app
        .client
        .post(app.url("/admin/cleanup"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(cleanup.status(), 200);
}

/// No grace period at all and the longest work duration accepted: the stale-sync sweep,
/// whose threshold the work duration stretches, still runs; and a sync request in flight at
/// shutdown is abandoned at once and recorded as failed, the stop prompt instead of waiting
/// on 31 years of work.
#[tokio::test]
async fn no_grace_and_the_longest_work_duration_stop_promptly_and_record_the_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let database = crate::helpers::fresh_database(dir.path()).await;
    let app = TestServer::builder()
        .database_url(&database)
        .setting("admin-token", "t")
        .setting("shutdown-grace-seconds", "0")
        .setting("work-duration-seconds", "1000000000")
        .start()
        .await;
    let cleanup = app
        .client
        .post(app.url("/admin/cleanup"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(cleanup.status(), 200);

    let request = super::json_post(
        "/sync",
        "Idempotency-Key: works-for-ever\r\n",
        &json!({"data": "for ever", "iterations": 1}),
    );
    let mut stream = super::connect(&app).await;
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    app.stop().await;
    let took = started.elapsed();
    drop(stream);
    assert!(
        took < Duration::from_millis(1800),
        "no grace period, and the shutdown took {took:?}"
    );

    let app = TestServer::builder().database_url(&database).start().await;
    let list = app.get_json("/requests?mode=sync").await;
    let records = list["requests"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{list}");
    assert_eq!(records[0]["status"], "failed", "{list}");
}
