//! What the public list and the logs must never show: the addresses a blocked name resolved
//! to (tested in `guard`), and a callback URL's query string, where receivers keep tokens.

use std::time::Duration;

use serde_json::{Value, json};

use crate::durability::ChildServer;
use crate::helpers::{client, fresh_database, unused_port, wait_for_status_at};

#[tokio::test]
async fn a_callback_urls_query_string_is_neither_stored_in_errors_nor_logged() {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database(dir.path()).await;
    let mut server = ChildServer::start(
        dir.path(),
        &database,
        &[
            ("APP_LOG_FORMAT", "json"),
            ("APP_CALLBACK_MAX_RETRIES", "1"),
        ],
    )
    .await;
    let secret = "query-secret-7f3a";
    // Nothing listens there: every attempt fails with a connection error.
    let callback = format!("http://{}/cb?token={secret}", unused_port().await);
    let client = client();
    let response = client
        .post(format!("{}/async", server.address))
        .json(&json!({"data": "leak?", "iterations": 1, "callback_url": callback}))
        .send()
        .await
        .unwrap();
    let id = response.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let record = wait_for_status_at(
        &client,
        &server.address,
        &id,
        "callback_failed",
        std::time::Instant::now() + Duration::from_secs(20),
    )
    .await;
    let error = record["callback_last_error"].as_str().unwrap();
    assert!(error.contains("connection"), "{error}");
    for attempt in record["attempts"].as_array().unwrap() {
        assert!(!attempt.to_string().contains(secret), "{attempt}");
    }
    assert!(!error.contains(secret), "{error}");

    server.sigterm();
    server.wait_exit(Duration::from_secs(10)).await;
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(log.contains(&id), "the request's life is logged");
    assert!(
        !log.contains(secret),
        "a callback query string reached the log:\n{log}"
    );
}
