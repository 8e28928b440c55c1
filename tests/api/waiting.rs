//! Waiting without polling: `GET /requests/{id}` with `Prefer: wait=N` or `?wait=N`, and the
//! server-sent events of `GET /requests/{id}/events`.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{Behaviour, Receiver, TestServer, read};

async fn get_waiting(app: &TestServer, id: &str, prefer: &str) -> (u16, Value, Option<String>) {
    let response = app
        .client
        .get(app.url(&format!("/requests/{id}")))
        .header("Prefer", prefer)
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .expect("sent");
    let applied = response
        .headers()
        .get("preference-applied")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (status, body) = read(response).await;
    (status, body, applied)
}

#[tokio::test]
async fn a_waiting_get_answers_when_the_request_finishes() {
    // The receiver takes a second: the request is unfinished when the wait starts.
    let receiver = Receiver::start(Behaviour::hang(Duration::from_secs(1))).await;
    let app = TestServer::builder().start().await;
    let id = app.submit("wait for me", &receiver.url()).await;

    let started = Instant::now();
    let (status, record, applied) = get_waiting(&app, &id, "wait=30").await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["status"], "callback_success", "{record}");
    assert_eq!(applied.as_deref(), Some("wait=30"));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered when the request finished, not when the wait ran out"
    );
    assert_eq!(record["attempts"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_wait_that_runs_out_answers_the_current_state() {
    // Never answers within the callback timeout (2 s in tests): the request stays unfinished.
    let receiver = Receiver::start(Behaviour::hang(Duration::from_secs(30))).await;
    let app = TestServer::builder()
        .setting("callback-max-retries", "5")
        .start()
        .await;
    let id = app.submit("slow receiver", &receiver.url()).await;
    let (status, record, applied) = get_waiting(&app, &id, "respond-async, wait=1").await;
    assert_eq!(status, 200);
    assert_ne!(record["status"], "callback_success");
    assert_ne!(record["status"], "callback_failed");
    assert_eq!(applied.as_deref(), Some("wait=1"));

    // The query form, too.
    let response = app.get(&format!("/requests/{id}?wait=1")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("preference-applied")
            .map(|v| v.as_bytes()),
        Some(&b"wait=1"[..])
    );

    // Waits the clients chose are not the route's latency.
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    let waited: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("syncasync_http_request_duration_seconds_count"))
        .filter(|l| l.contains("endpoint=\"/requests/{id}\""))
        .collect();
    assert!(waited.is_empty(), "{waited:?}");
    // (A plain GET is counted, under the name looked for above.)
    app.get(&format!("/requests/{id}")).await;
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("syncasync_http_request_duration_seconds_count")
                && l.contains("endpoint=\"/requests/{id}\"")
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn wait_values_are_checked_or_bounded() {
    let app = TestServer::builder().start().await;
    let id = crate::helpers::sync_request(&app, "done already").await;
    for bad in ["61", "-1", "soon", "1.5"] {
        let (status, body) = read(app.get(&format!("/requests/{id}?wait={bad}")).await).await;
        assert_eq!(status, 422, "wait={bad}: {body}");
        assert_eq!(body["detail"][0]["loc"], json!(["query", "wait"]));
    }
    // A preference over the maximum is cut to it; a finished request answers at once.
    let started = Instant::now();
    let (status, _, applied) = get_waiting(&app, &id, "wait=100000").await;
    assert_eq!((status, applied.as_deref()), (200, Some("wait=60")));
    assert!(started.elapsed() < Duration::from_secs(10));
    // A preference the server cannot read is ignored, as RFC 7240 asks.
    let (status, _, applied) = get_waiting(&app, &id, "wait=later").await;
    assert_eq!((status, applied), (200, None));
    // An unknown request is a 404 at once, waiting or not.
    let (status, _, _) = get_waiting(&app, "0198a7c2-0000-7000-8000-000000000000", "wait=30").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_thousand_waiters_are_released_by_one_completion() {
    let receiver = Receiver::start(Behaviour::hang(Duration::from_secs(3))).await;
    let app = TestServer::builder()
        .setting("http-max-connections", "4096")
        .setting("callback-timeout-seconds", "10")
        .setting("job-lease-seconds", "30")
        .start()
        .await;
    let id = app.submit("awaited by many", &receiver.url()).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let waiters = join_all((0..1000).map(|_| {
        let client = client.clone();
        let url = app.url(&format!("/requests/{id}"));
        async move {
            let response = client
                .get(url)
                .header("Prefer", "wait=60")
                .send()
                .await
                .expect("sent");
            let body: Value = response.json().await.expect("JSON");
            body["status"].as_str().unwrap_or_default().to_string()
        }
    }));
    let watched = async {
        // While they wait, they are one watched request, not a thousand polling loops.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = app.get("/metrics").await.text().await.expect("metrics");
            if metrics.contains("syncasync_waited_on_requests 1") {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (statuses, was_watched) = tokio::join!(waiters, watched);
    assert!(
        was_watched,
        "the waiting request was never shown as watched"
    );
    assert_eq!(statuses.len(), 1000);
    assert!(
        statuses.iter().all(|s| s == "callback_success"),
        "every waiter saw the final status: {:?}",
        statuses.iter().find(|s| *s != "callback_success")
    );
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains("syncasync_waited_on_requests 0"),
        "waiters that answered leave nothing behind"
    );
}

/// Events of an SSE stream: (event, id, data).
fn parse_events(text: &str) -> Vec<(String, String, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = None;
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str(v.trim()).ok();
                }
            }
            Some((event?, id?, data?))
        })
        .collect()
}

async fn read_stream(app: &TestServer, id: &str, last_event_id: Option<&str>) -> String {
    let mut request = app
        .client
        .get(app.url(&format!("/requests/{id}/events")))
        .timeout(Duration::from_secs(30));
    if let Some(last) = last_event_id {
        request = request.header("Last-Event-ID", last);
    }
    let response = request.send().await.expect("sent");
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    );
    // The stream ends by itself after the final status.
    response.text().await.expect("stream read to its end")
}

#[tokio::test]
async fn the_event_stream_tells_every_attempt_and_ends_with_the_final_status() {
    let receiver = Receiver::start(Behaviour::fail_first(2)).await;
    let app = TestServer::builder().start().await;
    let id = app.submit("followed", &receiver.url()).await;
    let events = parse_events(&read_stream(&app, &id, None).await);

    let attempts: Vec<u64> = events
        .iter()
        .filter(|(kind, _, _)| kind == "attempt")
        .map(|(_, _, data)| data["attempt"].as_u64().expect("attempt number"))
        .collect();
    assert_eq!(attempts, vec![1, 2, 3], "{events:?}");
    let statuses: Vec<&str> = events
        .iter()
        .filter(|(kind, _, _)| kind == "status")
        .map(|(_, _, data)| data["status"].as_str().expect("status"))
        .collect();
    assert_eq!(statuses.last(), Some(&"callback_success"), "{events:?}");
    assert_eq!(
        events.last().map(|(kind, _, _)| kind.as_str()),
        Some("status"),
        "the final status is the last event"
    );
    // Each status differs from the one before it.
    assert!(statuses.windows(2).all(|w| w[0] != w[1]), "{statuses:?}");

    // Resuming after any event gives exactly the events after it.
    for (i, (_, event_id, _)) in events.iter().enumerate() {
        let rest = parse_events(&read_stream(&app, &id, Some(event_id)).await);
        let after_attempts: Vec<&Value> = events[i + 1..]
            .iter()
            .filter(|(kind, _, _)| kind == "attempt")
            .map(|(_, _, data)| data)
            .collect();
        let resumed_attempts: Vec<&Value> = rest
            .iter()
            .filter(|(kind, _, _)| kind == "attempt")
            .map(|(_, _, data)| data)
            .collect();
        assert_eq!(resumed_attempts, after_attempts, "after {event_id}");
        if i + 1 < events.len() {
            assert_eq!(
                rest.last().map(|(_, _, data)| data["status"].clone()),
                Some(json!("callback_success")),
                "after {event_id}: {rest:?}"
            );
        } else {
            assert!(rest.is_empty(), "nothing after the last event: {rest:?}");
        }
    }
}

#[tokio::test]
async fn the_event_stream_of_an_unknown_request_is_a_404() {
    let app = TestServer::builder().start().await;
    let (status, body) = read(
        app.get("/requests/0198a7c2-0000-7000-8000-000000000000/events")
            .await,
    )
    .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn waiting_clients_are_answered_at_shutdown_not_cut_off() {
    let receiver = Receiver::start(Behaviour::hang(Duration::from_secs(30))).await;
    let app = TestServer::builder()
        .setting("callback-max-retries", "5")
        .start()
        .await;
    let id = app.submit("never finishes in time", &receiver.url()).await;
    let url = app.url(&format!("/requests/{id}"));
    let client = app.client.clone();
    let waiter = tokio::spawn(async move {
        client
            .get(url)
            .header("Prefer", "wait=60")
            .send()
            .await
            .expect("answered, not cut off")
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.stop().await;
    let response = waiter.await.expect("waiter");
    assert_eq!(response.status(), 200);
    let (_, record) = read(response).await;
    assert_ne!(record["status"], "callback_success", "{record}");
}

/// A cancel whose client hangs up at any instant still wakes the request's waiters once it
/// has committed: a waiter of a request that ends cancelled answers with it at once, never at
/// its deadline (the cancel's wake came before its commit, and found nothing changed).
#[tokio::test]
async fn a_cancel_whose_client_hangs_up_still_wakes_the_waiters() {
    use tokio::io::AsyncWriteExt;
    const REQUESTS: u64 = 30;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder().start().await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let mut ids = Vec::new();
    for n in 0..REQUESTS {
        let body = json!({"data": format!("waited on {n}"), "callback_url": receiver.url(),
                          "run_at": later});
        let (status, answer) = read(app.post_async(&body).await).await;
        assert_eq!(status, 200, "{answer}");
        ids.push(answer["request_id"].as_str().unwrap().to_string());
    }
    let address = app.address.trim_start_matches("http://").to_string();
    let waiters = join_all(ids.iter().map(|id| async {
        let (status, record, applied) = get_waiting(&app, id, "wait=30").await;
        (status, record, applied, Instant::now())
    }));
    let cancels = join_all(ids.iter().enumerate().map(|(n, id)| {
        let address = address.clone();
        async move {
            // Every waiter is waiting by now.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
            let request = format!(
                "POST /requests/{id}/cancel HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            // Hang up at once, or a few milliseconds later: the cancel is mid-way.
            tokio::time::sleep(Duration::from_millis(n as u64 % 4)).await;
            drop(stream);
            Instant::now()
        }
    }));
    let (answers, sent) = tokio::join!(waiters, cancels);

    let mut cancelled = 0;
    for ((id, (status, answer, applied, answered)), sent) in ids.iter().zip(answers).zip(sent) {
        assert_eq!(status, 200, "{answer}");
        assert_eq!(applied.as_deref(), Some("wait=30"), "{answer}");
        let record = app.get_json(&format!("/requests/{id}")).await;
        if record["status"] != "cancelled" {
            // The client hung up before its cancel was made.
            assert_eq!(record["status"], "pending", "{record}");
            continue;
        }
        cancelled += 1;
        assert_eq!(
            answer["status"], "cancelled",
            "the waiter missed it: {answer}"
        );
        let late = answered.saturating_duration_since(sent);
        assert!(
            late < Duration::from_secs(10),
            "answered {late:?} after the cancel"
        );
    }
    assert!(cancelled > 0, "no cancel was made: the test tried nothing");
    receiver.stop().await;
}
