//! What an operator sees: metrics that move with traffic, request ids on every response, and
//! logs that trace each request without leaking secrets.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Behaviour, Receiver, TestServer, client, unused_port};

const WAIT: Duration = Duration::from_secs(20);

/// Every sample of the scrape, by its series (name with labels).
async fn scrape(app: &crate::helpers::TestServer) -> HashMap<String, f64> {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    assert!(
        text.trim_end().ends_with("# EOF"),
        "an OpenMetrics exposition ends with # EOF"
    );
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            (
                series.to_string(),
                value.parse::<f64>().expect("sample value"),
            )
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let app = TestServer::builder()
        .setting("callback-max-retries", "1")
        .setting("async-queue-max-size", "50")
        .start()
        .await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let down = format!("http://{}/callback", unused_port().await);
    let before = scrape(&app).await;

    for n in 0..3 {
        let response = app
            .post_sync(&json!({"data": format!("m{n}"), "iterations": 10}))
            .await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(app.post_sync(&json!({"data": ""})).await.status(), 422);
    assert_eq!(app.get("/requests/no-such-id").await.status(), 404);
    let good = app.submit("delivered", &receiver.url()).await;
    let bad = app.submit("undeliverable", &down).await;
    app.wait_for_status(&good, "callback_success", WAIT).await;
    app.wait_for_status(&bad, "callback_failed", WAIT).await;

    let after = scrape(&app).await;
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        moved(r#"syncasync_http_requests_total{method="POST",endpoint="/sync",status="200"}"#),
        3.0
    );
    assert_eq!(
        moved(r#"syncasync_http_requests_total{method="POST",endpoint="/sync",status="422"}"#),
        1.0
    );
    assert_eq!(
        moved(
            r#"syncasync_http_requests_total{method="GET",endpoint="/requests/{id}",status="404"}"#
        ),
        1.0
    );
    assert_eq!(
        moved(r#"syncasync_http_requests_total{method="POST",endpoint="/async",status="200"}"#),
        2.0
    );
    assert_eq!(
        moved(r#"syncasync_http_request_duration_seconds_count{method="POST",endpoint="/sync"}"#),
        4.0
    );
    assert_eq!(
        moved(r#"syncasync_jobs_finished_total{status="callback_success"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"syncasync_jobs_finished_total{status="callback_failed"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"syncasync_delivery_attempts_total{outcome="success"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"syncasync_delivery_attempts_total{outcome="connection_error"}"#),
        2.0
    );
    assert_eq!(
        moved("syncasync_delivery_attempt_duration_seconds_count"),
        3.0
    );
    assert_eq!(moved("syncasync_callback_delivery_seconds_count"), 1.0);
    // The undeliverable one was claimed twice (first attempt, one retry).
    assert_eq!(moved("syncasync_jobs_claimed_total"), 3.0);
    assert_eq!(sample(&after, "syncasync_async_queue_size"), 0.0);
    assert_eq!(sample(&after, "syncasync_async_queue_capacity"), 50.0);
    assert_eq!(sample(&after, "syncasync_delivery_workers"), 512.0);
    assert!(sample(&after, "syncasync_compute_threads") >= 1.0);
    assert_eq!(sample(&after, "syncasync_compute_queue_capacity"), 1024.0);
    assert!(sample(&after, r#"syncasync_db_connections{state="in_use"}"#) >= 1.0);
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_a_valid_one_is_echoed() {
    let app = TestServer::builder().start().await;
    let mine = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(mine.headers()["x-request-id"], "client-chosen-42");

    // Errors too, and a fresh id for each request without one.
    let mut seen = Vec::new();
    for path in ["/healthz", "/nope", "/requests/unknown"] {
        let response = app.get(path).await;
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{path}: {id}");
        seen.push(id);
    }
    let oversized = app
        .client
        .post(app.url("/sync"))
        .header("content-type", "application/json")
        .body(vec![b' '; 300 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    assert!(oversized.headers().contains_key("x-request-id"));
    seen.dedup();
    assert_eq!(seen.len(), 3, "ids are unique");

    // An unusable id (too long, or with spaces) is replaced, not echoed.
    for bad in ["has space", &"x".repeat(200)] {
        let response = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", bad)
            .send()
            .await
            .unwrap();
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, bad);
        assert!(uuid::Uuid::parse_str(id).is_ok());
    }
}

#[tokio::test]
async fn sync_and_async_answer_with_the_created_request_id_as_x_request_id() {
    // SPEC §3: one id for the response, the record and the callback. A client's own
    // X-Request-ID does not name the request (it is not ours to make unique), so it is not
    // echoed by these two; the request's id is.
    let app = TestServer::builder().start().await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let mut async_ids = Vec::new();
    for client_id in [None, Some("client-chosen-7")] {
        for path in ["/sync", "/async"] {
            let mut request = app
                .client
                .post(app.url(path))
                .json(&json!({"data": "one id", "iterations": 10, "callback_url": receiver.url()}));
            if let Some(client_id) = client_id {
                request = request.header("x-request-id", client_id);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "{path} {client_id:?}");
            let header = response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_string();
            let body: Value = response.json().await.unwrap();
            let id = match path {
                "/sync" => &body["result"]["request_id"],
                _ => &body["request_id"],
            };
            assert_eq!(header, id.as_str().unwrap(), "{path} {client_id:?}: {body}");
            assert!(uuid::Uuid::parse_str(&header).is_ok(), "{header}");
            // The record is found by it.
            let record = app.get_json(&format!("/requests/{header}")).await;
            assert_eq!(record["id"], header);
            if path == "/async" {
                async_ids.push(header);
            }
        }
    }
    assert_ne!(async_ids[0], async_ids[1]);
    // The callback carries the same id.
    let delivered = receiver.wait_for_deliveries(2, WAIT).await;
    for id in &async_ids {
        let callback = delivered
            .iter()
            .find(|c| c.body["request_id"] == id.as_str())
            .expect("a callback for each");
        assert_eq!(callback.headers["x-request-id"], id.as_str());
    }

    // A call that creates nothing answers with its own id: the client's, when it sent one.
    for path in ["/sync", "/async"] {
        let response = app
            .client
            .post(app.url(path))
            .header("x-request-id", "client-chosen-8")
            .json(&json!({"data": ""}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422);
        assert_eq!(response.headers()["x-request-id"], "client-chosen-8");
    }
}

/// At start the log says where the API, the dashboard and the API's page answer, and warns
/// that SSRF protection is off when it is.
#[tokio::test]
async fn the_start_says_where_to_go_and_what_is_left_open() {
    let server = TestServer::builder()
        .child()
        .setting("callback-block-private-ips", "false")
        .start()
        .await;
    // Logs are written by a background thread: wait for the lines rather than assume them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut log = server.log();
    while !(log.contains("dashboard=") && log.contains("SSRF protection is off")) {
        assert!(std::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = server.log();
    }
    let port = server.address.rsplit(':').next().unwrap().to_string();
    let ready = log
        .lines()
        .find(|l| l.contains("serving") && l.contains("dashboard="))
        .expect("a line saying where it serves");
    for url in ["", "/ui", "/docs"] {
        let expected = format!("http://127.0.0.1:{port}{url}");
        assert!(ready.contains(&expected), "{expected} in {ready}");
    }
    assert!(log.contains("SSRF protection is off"), "{log}");
    assert!(!log.contains("no APP_API_TOKEN"), "loopback only: {log}");
}

#[tokio::test]
async fn json_logs_trace_a_request_through_its_life_and_never_show_secrets() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let token = "admin-token-that-must-not-leak";
    let receiver = Receiver::start(Behaviour::fail_first(1)).await;
    let mut server = TestServer::builder()
        .child()
        .setting("log-format", "json")
        .setting("callback-signing-secret", secret)
        .setting("admin-token", token)
        .start()
        .await;
    let client = client();
    let response = client
        .post(format!("{}/async", server.address))
        .header("x-request-id", "trace-me-1")
        .json(&json!({"data": "traced", "iterations": 10, "callback_url": receiver.url()}))
        .send()
        .await
        .unwrap();
    let id = response.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Without a client id, the call's id is the request's.
    let sync_id = client
        .post(format!("{}/sync", server.address))
        .json(&json!({"data": "traced too", "iterations": 10}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["result"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    receiver.wait_for_deliveries(1, WAIT).await;
    let cleanup = client
        .post(format!("{}/admin/cleanup", server.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(cleanup.status(), 200);
    // Let the last events reach the log, then stop so that the writer flushes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.sigterm();
    server.wait_exit(Duration::from_secs(10)).await;

    let log = server.log();
    assert!(
        !log.contains(secret) && !log.contains(&secret[6..]),
        "the signing secret leaked"
    );
    assert!(!log.contains(token), "the admin token leaked");
    let lines: Vec<Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line}"))
        })
        .collect();
    let access = lines
        .iter()
        .find(|l| l["message"] == "request" && l["path"] == "/async")
        .expect("an access line for POST /async");
    assert_eq!(access["method"], "POST");
    assert_eq!(access["status"], 200);
    assert!(access["latency_ms"].as_f64().is_some());
    // The client's id traces the call; the access line also names the request it created.
    assert_eq!(access["span"]["x_request_id"], "trace-me-1");
    assert_eq!(access["request_id"], id.as_str());
    let access = lines
        .iter()
        .find(|l| l["message"] == "request" && l["path"] == "/sync")
        .expect("an access line for POST /sync");
    assert_eq!(access["span"]["x_request_id"], sync_id.as_str());
    assert_eq!(access["request_id"], sync_id.as_str());

    // The async request's life, by its id: accepted, each attempt, the final state (the
    // access line, logged when the answer is sent, may come before or after an attempt).
    let life: Vec<&str> = lines
        .iter()
        .filter(|l| l["request_id"] == id.as_str() && l["message"] != "request")
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        life,
        [
            "async request accepted",
            "callback attempt",
            "callback attempt",
            "async request finished"
        ],
        "{log}"
    );
    let attempts: Vec<&Value> = lines
        .iter()
        .filter(|l| l["request_id"] == id.as_str() && l["message"] == "callback attempt")
        .collect();
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["status_code"], 500);
    assert_eq!(attempts[1]["attempt"], 2);
    assert_eq!(attempts[1]["status_code"], 200);
}
