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
