//! One client opening event streams and waits by the hundred: they have a cap of their own,
//! below the connection cap, so `/healthz` and short requests keep answering; refused streams
//! are closed, waits past the cap answer at once, a stream ends after its maximum lifetime,
//! and a client that goes away gives its place back.

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::helpers::{Behaviour, Receiver, TestServer, read};

/// A server whose long-lived requests are capped at `cap`, and a request that stays
/// unfinished (its receiver hangs), for streams and waits to hold on to.
async fn server_with_an_unfinished_request(
    cap: &str,
    stream_seconds: &str,
) -> (TestServer, Receiver, String) {
    let app = TestServer::builder()
        .setting("http-max-connections", "64")
        .setting("http-max-long-lived", cap)
        .setting("http-stream-max-seconds", stream_seconds)
        .setting("callback-timeout-seconds", "60")
        .setting("job-lease-seconds", "130")
        .start()
        .await;
    let hung = Receiver::start(Behaviour::hang(Duration::from_secs(120))).await;
    let id = app.submit("never finishes", &hung.url()).await;
    (app, hung, id)
}

/// A client with its own connections, one per request.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

#[tokio::test]
async fn streams_past_the_cap_are_refused_and_health_keeps_answering() {
    let (app, _hung, id) = server_with_an_unfinished_request("0", "300").await;
    let client = fresh_client();
    // 64 connections, so by default 32 long-lived places; a client asks for 50 streams.
    let responses = join_all((0..50).map(|_| {
        client
            .get(app.url(&format!("/requests/{id}/events")))
            .send()
    }))
    .await;
    let mut open = Vec::new();
    let mut refused = 0;
    for response in responses {
        let response = response.expect("answered");
        match response.status().as_u16() {
            200 => open.push(response),
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                assert_eq!(response.headers()["connection"], "close");
                refused += 1;
            }
            other => panic!("stream answered {other}"),
        }
    }
    assert_eq!((open.len(), refused), (32, 18));
    // The rest of the connections serve everything else, at once.
    for path in ["/healthz", "/requests?limit=1", &format!("/requests/{id}")] {
        let started = Instant::now();
        let (status, body) = read(app.get(path).await).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(started.elapsed() < Duration::from_secs(1), "{path}");
    }
    // A wait with every place taken answers at once, without saying it waited.
    let started = Instant::now();
    let response = client
        .get(app.url(&format!("/requests/{id}")))
        .header("Prefer", "wait=30")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("preference-applied"));
    assert!(started.elapsed() < Duration::from_secs(2));
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("syncasync_http_long_lived_requests 32"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("long_lived"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Closing streams gives their places back.
    open.truncate(10);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = client
            .get(app.url(&format!("/requests/{id}/events")))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no place came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_stream_ends_after_its_maximum_lifetime_and_frees_its_place() {
    let (app, _hung, id) = server_with_an_unfinished_request("1", "1").await;
    let client = fresh_client();
    let started = Instant::now();
    let first = client
        .get(app.url(&format!("/requests/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = client
        .get(app.url(&format!("/requests/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 503, "one place, taken");
    // The stream sends what there is, then ends after a second: the body completes.
    let body = tokio::time::timeout(Duration::from_secs(5), first.text())
        .await
        .expect("the stream ended")
        .unwrap();
    assert!(body.contains("event: status"), "{body}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let third = client
        .get(app.url(&format!("/requests/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 200, "its place came back");
}

/// The one line on stderr of a server started with `settings` (which must refuse them).
fn refusal(settings: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_syncasync"))
        .arg("serve")
        .env("APP_HOST", "127.0.0.1")
        .env("APP_PORT", "0")
        .env(
            "APP_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("s.db").display()),
        )
        .envs(settings.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(" INFO "))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_string()
}

#[test]
fn a_long_lived_cap_that_leaves_no_room_for_short_requests_is_refused_in_one_line() {
    let line = refusal(&[
        ("APP_HTTP_MAX_CONNECTIONS", "64"),
        ("APP_HTTP_MAX_LONG_LIVED", "64"),
    ]);
    assert!(line.contains("APP_HTTP_MAX_LONG_LIVED"), "{line}");
    // One connection leaves none beside a stream whatever the cap: the line says what to
    // raise, not to set the cap to the 0 it already is.
    let line = refusal(&[("APP_HTTP_MAX_CONNECTIONS", "1")]);
    assert!(line.contains("APP_HTTP_MAX_CONNECTIONS (1)"), "{line}");
    assert!(line.contains("at least 2"), "{line}");
}

/// Repeats of a sync request with its idempotency key wait for the first as a wait does, so
/// each takes a long-lived place: with every place taken they answer 409 at once (the key
/// is in use) instead of each holding a connection for up to a minute; with a place free,
/// a repeat waits for the first and answers its result.
#[tokio::test]
async fn repeats_of_a_sync_key_waiting_for_the_first_take_long_lived_places() {
    use crate::idempotency::post_keyed;
    // Each request's work takes two seconds, so that the repeats surely arrive while the
    // first is working, however slow or fast the machine.
    let app = TestServer::builder()
        .setting("http-max-connections", "64")
        .setting("http-max-long-lived", "1")
        .setting("work-duration-seconds", "2")
        .start()
        .await;
    let hung = Receiver::start(Behaviour::hang(Duration::from_secs(120))).await;
    let id = app.submit("never finishes", &hung.url()).await;
    let client = fresh_client();
    let stream = client
        .get(app.url(&format!("/requests/{id}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200, "the only place, taken");
    let body = serde_json::json!({"data": "long work"});
    let first = post_keyed(&app, "/sync", "one-key", &body);
    let repeats = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while app.get_json("/requests?mode=sync&status=processing").await["total"] != 1 {
            assert!(Instant::now() < deadline, "the first never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        let refused = join_all((0..3).map(|_| post_keyed(&app, "/sync", "one-key", &body))).await;
        (refused, started.elapsed())
    };
    let ((status, result, _, _), (refused, took)) = tokio::join!(first, repeats);
    assert_eq!(status, 200, "{result}");
    for (status, answer, replayed, _) in &refused {
        assert_eq!((*status, *replayed), (409, false), "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("one-key"),
            "{answer}"
        );
    }
    assert!(took < Duration::from_secs(2), "answered at once: {took:?}");
    drop(stream);
    let (status, again, replayed, _) = post_keyed(&app, "/sync", "one-key", &body).await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again, result);
}
