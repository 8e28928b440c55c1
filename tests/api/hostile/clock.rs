//! An instance whose clock is wrong: on a shared database, due times and leases are computed
//! by PostgreSQL from delays, so an instance an hour ahead neither hides its jobs from the
//! cluster for an hour nor delays their retries.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::in_ci;
use crate::durability::ChildServer;
use crate::helpers::{Behaviour, Receiver, client, postgres_admin_url, wait_for_status_at};

#[tokio::test]
async fn an_instance_an_hour_ahead_still_gets_its_jobs_delivered_on_time() {
    let Some(_) = postgres_admin_url() else {
        eprintln!("skipped: clocks matter where instances share a database (PostgreSQL)");
        return;
    };
    if Command::new("faketime").arg("--version").output().is_err() {
        assert!(!in_ci(), "CI installs faketime (.ci/run does)");
        eprintln!("skipped: faketime is not installed (apt-get install faketime)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let database = crate::helpers::fresh_database(dir.path()).await;
    // The instance's wall clock runs an hour ahead; its timers (the monotonic clock) do not.
    let server = ChildServer::start_under(
        &[
            "env",
            "FAKETIME_DONT_FAKE_MONOTONIC=1",
            "faketime",
            "-f",
            "+1h",
        ],
        dir.path(),
        &database,
        &[],
    )
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
    let record = wait_for_status_at(
        &client,
        &server.address,
        id,
        "callback_success",
        Instant::now() + Duration::from_secs(15),
    )
    .await;
    assert_eq!(record["callback_attempts"], 2, "{record}");
    // The skew was real: the instance stamped the request an hour ahead.
    let created: chrono::DateTime<chrono::Utc> =
        record["created_at"].as_str().unwrap().parse().unwrap();
    assert!(
        created > chrono::Utc::now() + chrono::Duration::minutes(50),
        "the instance's clock was not skewed: {record}"
    );
}
