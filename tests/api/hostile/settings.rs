//! A careless operator: every setting that is accepted works, and one that would break
//! something is refused at start with one line naming it.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Behaviour, Receiver, read, spawn_app};

/// Starts the binary with `env` on a throwaway database; returns its exit code and stderr,
/// or `None` if it was still running (and so accepted the settings) after a moment.
fn start_with(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_syncasync"));
    command
        .env("APP_HOST", "127.0.0.1")
        .env("APP_PORT", "0")
        .env(
            "APP_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("s.db").display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if code.is_some() {
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
    }
    (code, stderr)
}

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
        let (code, stderr) = start_with(&env);
        assert!(matches!(code, Some(c) if c != 0), "{env:?} was accepted");
        assert_eq!(stderr.trim().lines().count(), 1, "{env:?}: {stderr}");
        assert!(stderr.contains(variable), "{env:?}: {stderr}");
    }
}

#[tokio::test]
async fn extreme_but_accepted_settings_work() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    // The largest queue bound, the smallest pool (on PostgreSQL, one connection per pool: the
    // job listener must not take it), the shortest lease.
    // (The retention cut-off is computed by the database on PostgreSQL: the longest accepted
    // retention must stay within its date range, which the cleanup below exercises.)
    let app = spawn_app(&[
        "--admin-token",
        "t",
        "--async-queue-max-size",
        "1099511627776",
        "--database-pool-size",
        "1",
        "--job-lease-seconds",
        "1",
        "--callback-timeout-seconds",
        "0.5",
        "--max-stored-requests",
        "18446744073709551615",
        "--request-retention-hours",
        "1000000",
    ])
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
