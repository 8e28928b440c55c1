//! `Idempotency-Key` on `POST /async` and `POST /sync`: a repeated key with the same body is
//! answered with the first request's answer and does nothing new; with another body it is a
//! 422. On both backends, across a restart, and (PostgreSQL) across instances.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{Behaviour, Receiver, TestServer, fresh_database, read, sql_text};

async fn post_with_key(app: &TestServer, path: &str, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Posts, and returns the status, the body, and the `Idempotent-Replayed` and `X-Request-ID`
/// headers.
pub(crate) async fn post_keyed(
    app: &TestServer,
    path: &str,
    key: &str,
    body: &Value,
) -> (u16, Value, bool, String) {
    let response = post_with_key(app, path, key, body).await;
    let replayed = header(&response, "idempotent-replayed") == Some("true");
    let request_id = header(&response, "x-request-id")
        .unwrap_or_default()
        .to_string();
    let (status, body) = read(response).await;
    (status, body, replayed, request_id)
}

#[tokio::test]
async fn a_repeated_async_key_answers_the_first_request_and_calls_back_once() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder().start().await;
    let body = json!({"data": "pay invoice 7", "iterations": 10, "callback_url": receiver.url()});

    let (status, first, replayed, header_id) = post_keyed(&app, "/async", "order-7", &body).await;
    assert_eq!(status, 200, "{first}");
    assert!(!replayed, "a first request is not a replay");
    let id = first["request_id"]
        .as_str()
        .expect("request_id")
        .to_string();
    assert_eq!(header_id, id);

    // The same body spelled differently (key order, iterations as a string) is the same
    // request.
    let respelled =
        json!({"callback_url": receiver.url(), "iterations": "10", "data": "pay invoice 7"});
    for again in [&body, &respelled] {
        let (status, answer, replayed, header_id) =
            post_keyed(&app, "/async", "order-7", again).await;
        assert_eq!(status, 200, "{answer}");
        assert!(replayed, "a repeat says it is a replay");
        assert_eq!(answer, first, "the first request's answer, unchanged");
        assert_eq!(header_id, id, "X-Request-ID names the first request");
    }

    app.wait_for_status(&id, "callback_success", Duration::from_secs(10))
        .await;
    // Time for a (wrong) second callback to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "one callback, not one per POST"
    );
    let list = app.get_json("/requests").await;
    assert_eq!(list["total"], 1, "one request stored: {list}");

    // Without a key, the same body is a new request, as always.
    let fresh = app.submit("pay invoice 7", &receiver.url()).await;
    assert_ne!(fresh, id);
}

#[tokio::test]
async fn a_key_reused_for_another_body_or_mode_is_refused_and_names_the_key() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder().start().await;
    let body = json!({"data": "a", "iterations": 10, "callback_url": receiver.url()});
    assert_eq!(post_keyed(&app, "/async", "k-1", &body).await.0, 200);

    let other_data = json!({"data": "b", "iterations": 10, "callback_url": receiver.url()});
    let other_url =
        json!({"data": "a", "iterations": 10, "callback_url": format!("{}/x", receiver.url())});
    let other_iterations = json!({"data": "a", "iterations": 11, "callback_url": receiver.url()});
    for (path, different) in [
        ("/async", &other_data),
        ("/async", &other_url),
        ("/async", &other_iterations),
        ("/sync", &json!({"data": "a", "iterations": 10})),
    ] {
        let (status, answer, _, _) = post_keyed(&app, path, "k-1", different).await;
        assert_eq!(status, 422, "{path} {different}: {answer}");
        assert_eq!(
            answer["detail"][0]["loc"],
            json!(["header", "Idempotency-Key"])
        );
        assert_eq!(answer["detail"][0]["type"], "idempotency_key_reused");
        assert!(
            answer["error"].as_str().unwrap_or_default().contains("k-1"),
            "{answer}"
        );
    }
    let list = app.get_json("/requests").await;
    assert_eq!(list["total"], 1, "a refused repeat writes nothing: {list}");
}

#[tokio::test]
async fn malformed_keys_are_refused_before_anything_is_written() {
    let app = TestServer::builder().start().await;
    let body = json!({"data": "a", "iterations": 1});
    let long = "k".repeat(256);
    let bad: Vec<reqwest::header::HeaderValue> = vec![
        reqwest::header::HeaderValue::from_static(""),
        reqwest::header::HeaderValue::from_str(&long).expect("header"),
        reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9")
            .expect("obs-text is a header value"),
        reqwest::header::HeaderValue::from_static("\"unterminated"),
    ];
    for value in bad {
        let response = app
            .client
            .post(app.url("/sync"))
            .header("Idempotency-Key", value.clone())
            .json(&body)
            .send()
            .await
            .expect("sent");
        let (status, answer) = read(response).await;
        assert_eq!(status, 422, "{value:?}: {answer}");
        assert_eq!(
            answer["detail"][0]["loc"],
            json!(["header", "Idempotency-Key"])
        );
    }
    // Two keys on one request.
    let response = app
        .client
        .post(app.url("/sync"))
        .header("Idempotency-Key", "a")
        .header("Idempotency-Key", "b")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 422);
    // A key of exactly 255 characters is fine; quoted and bare are one key (the quotes
    // count against the 255).
    let edge = "e".repeat(255);
    assert_eq!(post_keyed(&app, "/sync", &edge, &body).await.0, 200);
    let inner = "q".repeat(253);
    assert_eq!(post_keyed(&app, "/sync", &inner, &body).await.0, 200);
    let (status, _, replayed, _) = post_keyed(&app, "/sync", &format!("\"{inner}\""), &body).await;
    assert_eq!((status, replayed), (200, true));
    let (status, _, _, _) = post_keyed(&app, "/sync", &format!("\"{edge}\""), &body).await;
    assert_eq!(status, 422, "a quoted key of 257 characters in all");
    let list = app.get_json("/requests").await;
    assert_eq!(list["total"], 2, "{list}");
}

#[tokio::test]
async fn concurrent_duplicates_of_one_key_create_exactly_one_request() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder().start().await;
    let body = json!({"data": "once", "iterations": 10, "callback_url": receiver.url()});
    let answers = join_all((0..40).map(|_| post_keyed(&app, "/async", "burst", &body))).await;
    let ids: Vec<&str> = answers
        .iter()
        .map(|(status, answer, _, _)| {
            assert_eq!(*status, 200, "{answer}");
            answer["request_id"].as_str().expect("request_id")
        })
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one id for all: {ids:?}"
    );
    let fresh = answers
        .iter()
        .filter(|(_, _, replayed, _)| !replayed)
        .count();
    assert_eq!(fresh, 1, "exactly one answer is the original");
    receiver
        .wait_for_deliveries(1, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(app.get_json("/requests").await["total"], 1);
}

#[tokio::test]
async fn a_repeated_sync_key_answers_the_stored_result_without_working_again() {
    let app = TestServer::builder().start().await;
    let body = json!({"data": "slow one", "iterations": 20000});
    // Concurrent: the repeats arrive while the first is working, wait for it, and answer its
    // result.
    let answers = join_all((0..5).map(|_| post_keyed(&app, "/sync", "sync-key", &body))).await;
    let first = &answers[0].1;
    for (status, answer, _, header_id) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer, first, "the same result for every repeat");
        assert_eq!(
            header_id,
            first["result"]["request_id"].as_str().unwrap_or_default()
        );
    }
    assert_eq!(answers.iter().filter(|a| !a.2).count(), 1, "one original");
    // Later, too.
    let (status, later, replayed, _) = post_keyed(&app, "/sync", "sync-key", &body).await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(&later, first);
    let list = app.get_json("/requests?mode=sync").await;
    assert_eq!(list["total"], 1, "the work was done once: {list}");
}

#[tokio::test]
async fn a_request_whose_data_spells_another_requests_controls_is_not_its_replay() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder().start().await;
    let asked = json!({"data": "x", "iterations": 10, "callback_url": receiver.url(),
                       "callback_max_retries": 1});
    assert_eq!(post_keyed(&app, "/async", "crafted", &asked).await.0, 200);

    // Without controls, but with `data` holding the bytes a digest without lengths would
    // have read for the controls: the controls' length (8 bytes, big-endian) and their
    // canonical form.
    let controls = ";Some(1);None";
    let mut data = String::new();
    for byte in (controls.len() as u64).to_be_bytes() {
        data.push(char::from(byte));
    }
    data.push_str(controls);
    data.push('x');
    let crafted = json!({"data": data, "iterations": 10, "callback_url": receiver.url()});
    let (status, answer, replayed, _) = post_keyed(&app, "/async", "crafted", &crafted).await;
    assert_eq!((status, replayed), (422, false), "{answer}");
    assert_eq!(answer["detail"][0]["type"], "idempotency_key_reused");
}

/// A key outlives a restart. Keys are stored in the format earlier releases wrote, but for
/// the requests that format cannot tell apart (no controls, `data` starting with a NUL
/// character), which name a second format.
#[tokio::test]
async fn keys_outlive_a_restart_stored_as_earlier_releases_wrote_them() {
    use sha2::{Digest, Sha256};

    let receiver = Receiver::start(Behaviour::accept()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let database_url = fresh_database(dir.path()).await;
    let app = TestServer::builder()
        .database_url(&database_url)
        .start()
        .await;
    let url = receiver.url();
    let plain = json!({"data": "upgraded", "iterations": 10, "callback_url": url});
    let ambiguous = json!({"data": "\u{0}upgraded", "iterations": 10, "callback_url": url});
    let sync = json!({"data": "upgraded", "iterations": 10});
    let mut first = Vec::new();
    for (path, key, body) in [
        ("/async", "plain", &plain),
        ("/async", "ambiguous", &ambiguous),
        ("/sync", "sync", &sync),
    ] {
        let (status, answer, _, _) = post_keyed(&app, path, key, body).await;
        assert_eq!(status, 200, "{answer}");
        first.push(answer);
    }
    app.stop().await;

    // The first format: mode, iterations, the URL after its length, then data.
    let first_format = |mode: &str, url: &str| {
        let mut digest = Sha256::new();
        digest.update(mode.as_bytes());
        digest.update(10u32.to_be_bytes());
        digest.update((url.len() as u64).to_be_bytes());
        digest.update(url.as_bytes());
        digest.update(b"upgraded");
        hex::encode(digest.finalize())
    };
    let stored = |key: &'static str| {
        let url = database_url.clone();
        async move {
            sql_text(
                &url,
                &format!(
                    "SELECT idempotency_fingerprint FROM requests WHERE idempotency_key = '{key}'"
                ),
            )
            .await
            .expect("a stored fingerprint")
        }
    };
    assert_eq!(stored("plain").await, first_format("async", &url));
    assert_eq!(stored("sync").await, first_format("sync", ""));
    assert!(stored("ambiguous").await.starts_with("2:"));

    let app = TestServer::builder()
        .database_url(&database_url)
        .start()
        .await;
    for ((path, key, body), first) in [
        ("/async", "plain", &plain),
        ("/async", "ambiguous", &ambiguous),
        ("/sync", "sync", &sync),
    ]
    .into_iter()
    .zip(&first)
    {
        let (status, again, replayed, _) = post_keyed(&app, path, key, body).await;
        assert_eq!((status, replayed), (200, true), "{key}: {again}");
        assert_eq!(&again, first, "{key}");
    }
    let other = json!({"data": "upgraded", "iterations": 11, "callback_url": url});
    assert_eq!(post_keyed(&app, "/async", "plain", &other).await.0, 422);
    assert_eq!(app.get_json("/requests").await["total"], 3);
}
