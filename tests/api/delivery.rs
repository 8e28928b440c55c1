//! The async path end to end: acceptance, the callback's body and headers, retries, give-up,
//! and worker isolation.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Behaviour, Receiver, TestServer, unused_port};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn async_request_is_delivered_with_body_and_headers() {
    let app = TestServer::builder().start().await;
    let receiver = Receiver::start(Behaviour::accept()).await;

    let response = app
        .post_async(
            &json!({"data": "hello world", "iterations": 1000, "callback_url": receiver.url()}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    assert_eq!(
        body["message"],
        "Request accepted and queued for processing"
    );
    let id = body["request_id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/requests/{id}"));

    let callbacks = receiver.wait_for_deliveries(1, WAIT).await;
    let callback = &callbacks[0];
    assert_eq!(callback.body["request_id"], id);
    assert_eq!(callback.body["status"], "success");
    assert_eq!(callback.body["error"], Value::Null);
    assert_eq!(
        callback.body["result"]["output_hash"],
        "fe95811b8cb653eff38837427b8bb5d243daae5920c86cf8f494c8edc7e0b744"
    );
    assert_eq!(callback.body["result"]["request_id"], id);
    crate::helpers::parse_time(&callback.body["timestamp"]);
    let header = |name: &str| callback.headers[name].to_str().unwrap().to_string();
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("x-request-id"), id);
    assert_eq!(header("x-attempt"), "1");
    assert_eq!(header("webhook-id"), id);
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() < 60);
    assert!(
        callback.headers.get("webhook-signature").is_none(),
        "no secret, no signature"
    );

    let record = app.wait_for_status(&id, "callback_success", WAIT).await;
    assert_eq!(record["mode"], "async");
    assert_eq!(record["callback_attempts"], 1);
    assert_eq!(record["callback_last_error"], Value::Null);
    assert_eq!(record["callback_url"], receiver.url());
    assert_eq!(record["result"], callback.body["result"]);
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["status_code"], 200);
    assert_eq!(attempts[0]["error"], Value::Null);
}

#[tokio::test]
async fn receiver_failing_twice_gets_three_attempts_then_success() {
    let app = TestServer::builder().start().await;
    let receiver = Receiver::start(Behaviour::fail_first(2)).await;
    let id = app.submit("retry me", &receiver.url()).await;

    let record = app.wait_for_status(&id, "callback_success", WAIT).await;
    assert_eq!(record["callback_attempts"], 3);
    assert_eq!(record["callback_last_error"], "HTTP 500");
    let attempts = record["attempts"].as_array().unwrap();
    let codes: Vec<&Value> = attempts.iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [&json!(500), &json!(500), &json!(200)]);
    let numbers: Vec<&Value> = attempts.iter().map(|a| &a["attempt"]).collect();
    assert_eq!(numbers, [&json!(1), &json!(2), &json!(3)]);

    // Each attempt carried its number, and the same webhook-id for de-duplication.
    let received = receiver.received();
    let x_attempts: Vec<&str> = received
        .iter()
        .map(|r| r.headers["x-attempt"].to_str().unwrap())
        .collect();
    assert_eq!(x_attempts, ["1", "2", "3"]);
    assert!(
        received
            .iter()
            .all(|r| r.headers["webhook-id"] == id.as_str())
    );
    // The result was computed once: every attempt carries the identical result.
    assert!(
        received
            .iter()
            .all(|r| r.body["result"] == received[0].body["result"])
    );
}

#[tokio::test]
async fn receiver_that_is_down_ends_callback_failed_after_max_retries() {
    let app = TestServer::builder()
        .setting("callback-max-retries", "3")
        .start()
        .await;
    let down = format!("http://{}/callback", unused_port().await);
    let id = app.submit("nobody home", &down).await;

    let record = app.wait_for_status(&id, "callback_failed", WAIT).await;
    assert_eq!(
        record["callback_attempts"], 4,
        "the first attempt and 3 retries"
    );
    // As the original wrote it, with the last attempt's cause after the colon.
    let error = record["callback_last_error"].as_str().unwrap();
    assert!(
        error.starts_with("Max retries exceeded: ") && error.contains("connection"),
        "{error}"
    );
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 4);
    assert_eq!(
        format!(
            "Max retries exceeded: {}",
            attempts[3]["error"].as_str().unwrap()
        ),
        error,
        "the attempt itself keeps its own error"
    );
    assert!(
        attempts
            .iter()
            .all(|a| a["status_code"].is_null() && a["error"].is_string())
    );
    assert!(record["completed_at"].is_string());
    assert!(
        record["result"]["output_hash"].is_string(),
        "the work result is kept"
    );

    let health = app.get_json("/healthz").await;
    assert_eq!(health["queue_size"], 0, "a failed request leaves the queue");
}

#[tokio::test]
async fn non_2xx_answers_are_retried_and_recorded() {
    let app = TestServer::builder()
        .setting("callback-max-retries", "1")
        .start()
        .await;
    let receiver = Receiver::start(Behaviour::always_fail(404)).await;
    let id = app.submit("not found", &receiver.url()).await;
    let record = app.wait_for_status(&id, "callback_failed", WAIT).await;
    assert_eq!(record["callback_attempts"], 2);
    assert_eq!(
        record["callback_last_error"],
        "Max retries exceeded: HTTP 404"
    );
}

#[tokio::test]
async fn hanging_and_failing_receivers_do_not_delay_a_working_one() {
    // The default 10 workers; retries that wait hold no worker.
    let app = TestServer::builder()
        .setting("callback-timeout-seconds", "5")
        .setting("job-lease-seconds", "10")
        .setting("callback-retry-base-delay", "1")
        .setting("callback-retry-max-delay", "2")
        .start()
        .await;
    let hanging = Receiver::start(Behaviour::hang(Duration::from_secs(4))).await;
    let failing = Receiver::start(Behaviour::always_fail(503)).await;
    let good = Receiver::start(Behaviour::accept()).await;

    for n in 0..10 {
        let url = if n % 2 == 0 {
            hanging.url()
        } else {
            failing.url()
        };
        app.submit(&format!("slow {n}"), &url).await;
    }
    // Let the ten reach their receivers first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let id = app.submit("the eleventh", &good.url()).await;
    good.wait_for_deliveries(1, Duration::from_secs(10)).await;
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "the eleventh callback waited {waited:?} behind hanging receivers"
    );
    app.wait_for_status(&id, "callback_success", WAIT).await;
}

#[tokio::test]
async fn callbacks_are_signed_over_the_exact_bytes_sent() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, Mac};

    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let app = TestServer::builder()
        .setting("callback-signing-secret", secret)
        .start()
        .await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let id = app.submit("sign me", &receiver.url()).await;
    let callback = receiver.wait_for_deliveries(1, WAIT).await.remove(0);

    let header = |name: &str| callback.headers[name].to_str().unwrap().to_string();
    assert_eq!(header("webhook-id"), id);
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(&callback.raw);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(header("webhook-signature"), expected);
}

pub(crate) async fn redeliver(
    app: &crate::helpers::TestServer,
    id: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = app
        .client
        .post(app.url(&format!("/requests/{id}/redeliver")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_failed_request_can_be_redelivered_with_a_fresh_round_and_its_history_kept() {
    let app = TestServer::builder()
        .setting("admin-token", "t")
        .setting("callback-max-retries", "1")
        .start()
        .await;
    let address = unused_port().await;
    let id = app
        .submit("redeliver me", &format!("http://{address}/callback"))
        .await;
    let failed = app.wait_for_status(&id, "callback_failed", WAIT).await;
    assert_eq!(failed["callback_attempts"], 2);

    // Still down: a redelivery gets a whole new budget (2 more attempts), then fails again.
    let (status, body) = redeliver(&app, &id, Some("t")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["request_id"], id);
    app.wait_for_status(&id, "callback_pending", WAIT).await;
    let failed = app.wait_for_status(&id, "callback_failed", WAIT).await;
    assert_eq!(failed["callback_attempts"], 4);

    // Up now: the next redelivery succeeds, and the audit keeps every attempt.
    let receiver = Receiver::start_on(address, Behaviour::accept()).await;
    let (status, _) = redeliver(&app, &id, Some("t")).await;
    assert_eq!(status, 200);
    let record = app.wait_for_status(&id, "callback_success", WAIT).await;
    assert_eq!(record["callback_attempts"], 5);
    let numbers: Vec<u64> = record["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
    let callbacks = receiver.wait_for_deliveries(1, WAIT).await;
    assert_eq!(callbacks[0].headers["x-attempt"], "5");
    assert!(record["completed_at"].is_string());
    assert_eq!(app.get_json("/healthz").await["queue_size"], 0);
}

#[tokio::test]
async fn redelivery_is_refused_for_other_statuses_unknown_ids_and_without_the_token() {
    let app = TestServer::builder()
        .setting("admin-token", "t")
        .start()
        .await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let id = app.submit("delivered", &receiver.url()).await;
    app.wait_for_status(&id, "callback_success", WAIT).await;

    let (status, body) = redeliver(&app, &id, Some("t")).await;
    assert_eq!(status, 409);
    assert_eq!(body["status"], "error");
    assert!(
        body["error"].as_str().unwrap().contains("callback_success"),
        "{body}"
    );

    let sync: Value = app
        .post_sync(&json!({"data": "sync"}))
        .await
        .json()
        .await
        .unwrap();
    let sync_id = sync["result"]["request_id"].as_str().unwrap();
    assert_eq!(redeliver(&app, sync_id, Some("t")).await.0, 409);

    let (status, body) = redeliver(&app, "no-such-id", Some("t")).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"status": "error", "error": "Request not found", "request_id": null})
    );

    assert_eq!(redeliver(&app, &id, None).await.0, 401);
    assert_eq!(redeliver(&app, &id, Some("wrong")).await.0, 401);

    // Without a configured token the endpoint does not exist.
    let open = TestServer::builder().start().await;
    assert_eq!(redeliver(&open, &id, Some("t")).await.0, 404);
}

#[tokio::test]
async fn attempts_record_the_start_of_the_receivers_answer() {
    let app = TestServer::builder()
        .setting("callback-max-retries", "0")
        .start()
        .await;
    let receiver = Receiver::start(Behaviour::always_fail(500)).await;
    let id = app.submit("what did it say", &receiver.url()).await;
    let record = app.wait_for_status(&id, "callback_failed", WAIT).await;
    let attempt = &record["attempts"][0];
    assert_eq!(attempt["status_code"], 500);
    assert!(attempt["duration_ms"].as_f64().unwrap() > 0.0);
    crate::helpers::parse_time(&attempt["started_at"]);
    assert_eq!(attempt["response_body"], "receiver says no");
    // Its headers beside it, as received, one per line.
    let headers = attempt["response_headers"].as_str().unwrap_or_default();
    assert!(
        headers.lines().any(|line| line == "content-length: 16"),
        "{headers:?}"
    );
}

#[tokio::test]
async fn a_retry_after_from_the_receiver_is_honoured() {
    use axum::http::{StatusCode, header};
    use std::sync::atomic::{AtomicU32, Ordering};

    // 503 with `Retry-After: 1` once, then 200. The backoff alone would wait ~50 ms.
    let calls = std::sync::Arc::new(AtomicU32::new(0));
    let router = axum::Router::new().route(
        "/callback",
        axum::routing::post({
            let calls = std::sync::Arc::clone(&calls);
            move || {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [(header::RETRY_AFTER, "1")],
                        )
                            .into_response()
                    } else {
                        StatusCode::OK.into_response()
                    }
                }
            }
        }),
    );
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/callback", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let app = TestServer::builder()
        .setting("callback-retry-base-delay", "0.05")
        .setting("callback-retry-max-delay", "5")
        .start()
        .await;
    let id = app.submit("come back later", &url).await;
    let record = app.wait_for_status(&id, "callback_success", WAIT).await;
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    let at = |i: usize| crate::helpers::parse_time(&attempts[i]["started_at"]);
    let gap = at(1) - at(0);
    assert!(
        gap >= chrono::Duration::milliseconds(1000),
        "retried after {gap} despite Retry-After: 1"
    );
}

/// The dashboard shows each attempt's callback as sent (`GET /ui/api/callback/{id}`): the
/// body byte for byte and the headers the service sets but the signature (HTTP's own, Host,
/// Content-Length, Accept, are not shown), made by the code that sends them, for a first
/// attempt refused and a retry delivered.
#[tokio::test]
async fn the_callback_as_shown_is_the_callback_as_received() {
    let app = TestServer::builder()
        .setting(
            "callback-signing-secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .start()
        .await;
    let receiver = Receiver::start(Behaviour::fail_first(1)).await;
    let id = app.submit("shown as sent", &receiver.url()).await;
    app.wait_for_status(&id, "callback_success", Duration::from_secs(15))
        .await;
    let (status, shown) =
        crate::helpers::read(app.get(&format!("/ui/api/callback/{id}")).await).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["url"], receiver.url());
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    for (n, got) in received.iter().enumerate() {
        assert_eq!(
            shown["body"].as_str().unwrap().as_bytes(),
            &got.raw[..],
            "attempt {}",
            n + 1
        );
        let headers = shown["attempts"][n]["headers"].as_array().unwrap();
        assert_eq!(headers.len(), 6, "{shown}");
        for header in headers {
            let (name, value) = (header[0].as_str().unwrap(), header[1].as_str().unwrap());
            assert_eq!(
                got.headers.get(name).and_then(|v| v.to_str().ok()),
                Some(value),
                "attempt {}: {name}",
                n + 1
            );
        }
        assert!(got.headers.contains_key("webhook-signature"));
        assert!(
            !shown.to_string().contains("v1,"),
            "no signature is shown: {shown}"
        );
    }
    // A request whose work is not done has no callback to show, nor has a sync request.
    let sync = app.post_sync(&json!({"data": "sync"})).await;
    let sync_id = sync.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(
        app.get(&format!("/ui/api/callback/{sync_id}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get("/ui/api/callback/no-such-request").await.status(),
        404
    );
}
