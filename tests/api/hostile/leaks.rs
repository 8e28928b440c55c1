//! What the public list and the logs must never show: the addresses a blocked name resolved
//! to (tested in `guard`), and a callback URL's query string, where receivers keep tokens.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestServer, client, unused_port};

#[tokio::test]
async fn a_callback_urls_query_string_is_neither_stored_in_errors_nor_logged() {
    let mut server = TestServer::builder()
        .child()
        .setting("log-format", "json")
        .setting("callback-max-retries", "1")
        .start()
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
    let record = server
        .wait_for_status(&id, "callback_failed", Duration::from_secs(20))
        .await;
    let error = record["callback_last_error"].as_str().unwrap();
    assert!(error.contains("connection"), "{error}");
    for attempt in record["attempts"].as_array().unwrap() {
        assert!(!attempt.to_string().contains(secret), "{attempt}");
    }
    assert!(!error.contains(secret), "{error}");

    server.sigterm();
    server.wait_exit(Duration::from_secs(10)).await;
    let log = server.log();
    assert!(log.contains(&id), "the request's life is logged");
    assert!(
        !log.contains(secret),
        "a callback query string reached the log:\n{log}"
    );
}
