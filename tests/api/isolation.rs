//! No receiver can starve another: deliveries are capped per destination, and a destination
//! that keeps failing is cut off by its circuit breaker until a probe succeeds.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;

use crate::helpers::{Behaviour, Receiver, TestServer, unused_port};

const TOKEN: &str = "isolation-admin-token";

/// The service's own defaults for everything delivery does (the harness shortens some).
const DEFAULTS: &[(&str, &str)] = &[
    ("callback-timeout-seconds", "10"),
    ("job-lease-seconds", "30"),
    ("callback-retry-base-delay", "1"),
    ("callback-retry-max-delay", "30"),
    ("admin-token", TOKEN),
];

async fn destinations(app: &TestServer) -> Vec<Value> {
    let response = app
        .client
        .get(app.url("/destinations"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["destinations"].as_array().unwrap().clone()
}

async fn destination(app: &TestServer, port: u16) -> Option<Value> {
    let suffix = format!(":{port}");
    destinations(app)
        .await
        .into_iter()
        .find(|d| d["destination"].as_str().unwrap().ends_with(&suffix))
}

/// Submits `n` requests to `url` at once.
async fn submit_many(app: &TestServer, n: usize, url: &str, tag: &str) -> Vec<String> {
    join_all((0..n).map(|i| app.submit_owned(format!("{tag} {i}"), url.to_string()))).await
}

/// Submits one request to `receiver` and returns how long its callback took to arrive.
async fn time_one_delivery(app: &TestServer, receiver: &Receiver, n: usize) -> Duration {
    let started = Instant::now();
    app.submit(&format!("healthy {n}"), &receiver.url()).await;
    receiver
        .wait_for_deliveries(n, Duration::from_secs(10))
        .await;
    started.elapsed()
}

#[tokio::test]
async fn with_default_settings_hung_and_dead_receivers_do_not_delay_a_healthy_one() {
    let app = TestServer::builder().settings(DEFAULTS).start().await;
    let hung = Receiver::start(Behaviour::hang(Duration::from_secs(120))).await;
    let dead = format!("http://{}/callback", unused_port().await);
    let healthy = Receiver::start(Behaviour::accept()).await;

    let hung_url = hung.url();
    let (hung_ids, dead_ids) = tokio::join!(
        submit_many(&app, 50, &hung_url, "hung"),
        submit_many(&app, 50, &dead, "dead"),
    );
    assert_eq!(hung_ids.len() + dead_ids.len(), 100);
    // Let the hundred reach their receivers (or fail to) first.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for n in 1..=5 {
        let took = time_one_delivery(&app, &healthy, n).await;
        assert!(
            took < Duration::from_secs(1),
            "healthy callback {n} took {took:?} behind hung and dead receivers"
        );
    }
    // The hung destination holds its deliveries in flight; the dead one's breaker is open.
    let view = destination(&app, hung.address.port())
        .await
        .expect("hung destination");
    assert_eq!(view["in_flight"], 50, "{view}");
    let dead_port = dead.split(':').nth(2).unwrap().split('/').next().unwrap();
    let view = destination(&app, dead_port.parse().unwrap())
        .await
        .expect("dead destination");
    assert_eq!(view["breaker"], "open", "{view}");
    assert!(view["next_probe_at"].is_string(), "{view}");
    assert!(view["recent_failures"].as_u64().unwrap() >= 5, "{view}");
    let view = destination(&app, healthy.address.port())
        .await
        .expect("healthy");
    assert_eq!(view["breaker"], "closed");
    assert_eq!(view["recent_successes"], 5);
    // The same, bounded, in /metrics.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "syncasync_destination_in_flight{{destination=\"http://127.0.0.1:{}\"}} 50",
            hung.address.port()
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn every_request_ends_final_while_receivers_hang_or_refuse() {
    // A short timeout and short cool-downs: the dead destination's breaker opens, and its
    // jobs wait no longer than the longest cool-down for each attempt.
    let app = TestServer::builder()
        .setting("callback-timeout-seconds", "1")
        .setting("callback-max-retries", "1")
        .setting("callback-breaker-cooldown-seconds", "0.5")
        .setting("callback-breaker-max-cooldown-seconds", "1")
        .start()
        .await;
    let hung = Receiver::start(Behaviour::hang(Duration::from_secs(120))).await;
    let dead = format!("http://{}/callback", unused_port().await);
    let healthy = Receiver::start(Behaviour::accept()).await;
    let hung_url = hung.url();
    let (hung_ids, dead_ids) = tokio::join!(
        submit_many(&app, 50, &hung_url, "hung"),
        submit_many(&app, 50, &dead, "dead"),
    );
    let healthy_id = app.submit("healthy", &healthy.url()).await;
    let deadline = Duration::from_secs(30);
    app.wait_for_status(&healthy_id, "callback_success", deadline)
        .await;
    for id in hung_ids.iter().chain(&dead_ids) {
        let record = app.wait_for_status(id, "callback_failed", deadline).await;
        assert_eq!(record["callback_attempts"], 2, "no attempt lost: {record}");
    }
}

#[tokio::test]
async fn a_destination_that_recovers_is_closed_again_after_its_probe_succeeds() {
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .setting("callback-max-retries", "10")
        .setting("callback-breaker-threshold", "5")
        .setting("callback-breaker-cooldown-seconds", "1.5")
        .start()
        .await;
    // Down (503) for a second after the first callback, then up: the breaker opens within
    // that second, and its probe after the 1.5 s cool-down succeeds.
    let receiver = Receiver::start(Behaviour::down_for(Duration::from_secs(1), 503)).await;
    let ids = submit_many(&app, 12, &receiver.url(), "recovering").await;
    // Ten 503s (½ each) open the breaker.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = destination(&app, receiver.address.port()).await;
        if view.as_ref().is_some_and(|v| v["breaker"] == "open") {
            break;
        }
        assert!(Instant::now() < deadline, "breaker never opened: {view:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &ids {
        app.wait_for_status(id, "callback_success", Duration::from_secs(20))
            .await;
    }
    let view = destination(&app, receiver.address.port()).await.unwrap();
    assert_eq!(view["breaker"], "closed", "{view}");
    // The audit says why the jobs that waited for the probe waited.
    let mut notes = Vec::new();
    for id in &ids {
        let record = app.get_json(&format!("/requests/{id}")).await;
        for attempt in record["attempts"].as_array().unwrap() {
            if let Some(note) = attempt["note"].as_str() {
                notes.push(note.to_string());
            }
        }
    }
    assert!(
        notes.iter().any(|n| n.contains("circuit breaker was open")),
        "{notes:?}"
    );
}

#[tokio::test]
async fn while_a_breaker_is_open_no_attempt_reaches_the_destination() {
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .setting("callback-max-retries", "20")
        .setting("callback-breaker-threshold", "2")
        .setting("callback-breaker-cooldown-seconds", "2")
        .start()
        .await;
    let receiver = Receiver::start(Behaviour::always_fail(503)).await;
    submit_many(&app, 10, &receiver.url(), "refused").await;
    // Four 503s (½ each) open it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let opened = loop {
        let view = destination(&app, receiver.address.port()).await;
        if view.as_ref().is_some_and(|v| v["breaker"] == "open") {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "breaker never opened: {view:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Deliveries that were already in flight when it opened may still land; then nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_open = receiver.received().len();
    tokio::time::sleep(Duration::from_millis(1400)).await;
    assert!(
        opened.elapsed() < Duration::from_secs(2),
        "the check ran within the cool-down"
    );
    assert_eq!(
        receiver.received().len(),
        at_open,
        "no attempt reaches a destination whose breaker is open"
    );
    // After the cool-down, exactly one probe; it fails, so the breaker opens again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), at_open + 1, "one probe");
    let view = destination(&app, receiver.address.port()).await.unwrap();
    assert_eq!(view["breaker"], "open", "{view}");
}
