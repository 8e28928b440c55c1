//! Receivers set the pace on two instances sharing one PostgreSQL (SPEC §12): a rate limit
//! holds across both, a receiver's `Retry-After` holds its destination on both, and one
//! ordering key is delivered in acceptance order whichever instance accepted or claims its
//! requests. Without PostgreSQL these say so and pass, except in CI.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::postgres_database;
use crate::control::submit_batch;
use crate::destination_controls::{TOKEN, destination_of, listed};
use crate::helpers::{Behaviour, Receiver, TestServer, assert_all_delivered, read};
use crate::ordering::assert_arrived_in_order_per_key;
use crate::pacing::busiest_second;

const WAIT: Duration = Duration::from_secs(60);

/// Two instances on `database` with `settings` (CLI names) and the admin token, each seen by
/// the other (an instance counts the others it saw in the last 5 s, marking itself every
/// second).
async fn two_instances(database: &str, settings: &[(&str, &str)]) -> (TestServer, TestServer) {
    let start = || {
        let mut builder = TestServer::builder()
            .database_url(database)
            .setting("admin-token", TOKEN);
        for &(name, value) in settings {
            builder = builder.setting(name, value);
        }
        builder.start()
    };
    let pair = (start().await, start().await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    pair
}

fn jobs(n: usize, tag: &str, url: &str) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"data": format!("{tag} {i}"), "iterations": 1, "callback_url": url}))
        .collect()
}

#[tokio::test]
async fn two_instances_keep_a_destination_under_its_limit_while_another_runs_free() {
    let Some(database) = postgres_database().await else {
        return;
    };
    let limited = Receiver::start(Behaviour::accept()).await;
    let free = Receiver::start(Behaviour::accept()).await;
    let (a, b) = two_instances(&database, &[]).await;
    // 20 a second with bursts of 5, across both: each instance delivers 10 a second.
    let key: String =
        url::form_urlencoded::byte_serialize(destination_of(&limited).as_bytes()).collect();
    let (status, view) = read(
        a.client
            .put(a.url(&format!("/destinations/{key}/limits")))
            .bearer_auth(TOKEN)
            .json(&json!({"per_second": 20, "burst": 5}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    let mut ids = Vec::new();
    for app in [&a, &b] {
        let mut items = jobs(50, "limited", &limited.url());
        items.extend(jobs(50, "free", &free.url()));
        ids.extend(submit_batch(app, items).await);
    }
    free.wait_for_deliveries(100, WAIT).await;
    let limited_by_then = limited.received().len();
    assert!(
        limited_by_then < 80,
        "the free destination was not held up by the limited one: {limited_by_then} limited \
         deliveries by the time all 100 free ones were in"
    );
    limited.wait_for_deliveries(100, WAIT).await;
    let arrivals: Vec<DateTime<Utc>> = limited.arrivals().into_iter().map(|(_, t)| t).collect();
    let busiest = busiest_second(&arrivals);
    // A second's worth (20) and the two instances' bursts (2 + 2), sent; stamped on arrival,
    // where the whole suite's load on two cores delays some by up to a tenth of a second
    // (two deliveries' worth at 20 a second: seen once as 26). Unshared, it would be 40.
    assert!(busiest <= 26, "{busiest} deliveries in one second");
    let span = *arrivals.iter().max().unwrap() - *arrivals.iter().min().unwrap();
    assert!(
        span >= chrono::Duration::milliseconds(4000),
        "100 deliveries at 20 a second take over 4 s, not {span}: the limit was not shared"
    );
    let view = listed(&b, &destination_of(&limited)).await.unwrap();
    assert_eq!(view["rate_limit"]["per_second"], 20.0, "{view}");
    limited.stop().await;
    free.stop().await;
}

#[tokio::test]
async fn a_retry_after_holds_the_destinations_queued_jobs_on_both_instances() {
    let Some(database) = postgres_database().await else {
        return;
    };
    // Refuses everything in its first 100 ms with 429 and Retry-After: 3, then accepts.
    let receiver =
        Receiver::start(Behaviour::down_for(Duration::from_millis(100), 429).retry_after(3)).await;
    let (a, b) = two_instances(
        &database,
        &[
            ("callback-breaker-threshold", "1"),
            ("callback-retry-max-delay", "10"),
        ],
    )
    .await;
    let mut ids = submit_batch(&a, jobs(25, "held a", &receiver.url())).await;
    ids.extend(submit_batch(&b, jobs(25, "held b", &receiver.url())).await);
    receiver.wait_for_arrivals(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    for app in [&a, &b] {
        let view = listed(app, &destination_of(&receiver)).await.unwrap();
        assert!(view["retry_after_until"].is_string(), "{view}");
        assert_eq!(
            view["breaker"], "closed",
            "a slow-down is no failure: {view}"
        );
    }
    receiver.wait_for_deliveries(50, WAIT).await;
    assert_all_delivered(&receiver, &ids);
    let arrivals: Vec<DateTime<Utc>> = receiver.arrivals().into_iter().map(|(_, t)| t).collect();
    let refused_at = arrivals[0];
    let early: Vec<_> = arrivals
        .iter()
        .filter(|t| **t > refused_at + chrono::Duration::milliseconds(300))
        .filter(|t| **t < refused_at + chrono::Duration::milliseconds(2900))
        .collect();
    assert!(
        early.is_empty(),
        "no callback from either instance within the 3 s asked for: {early:?} after {refused_at}"
    );
    receiver.stop().await;
}

#[tokio::test]
async fn keyed_requests_through_two_instances_arrive_in_acceptance_order_per_key() {
    let Some(database) = postgres_database().await else {
        return;
    };
    let receiver = Receiver::start(Behaviour::fail_at_random(0.3)).await;
    let (a, b) = two_instances(&database, &[("callback-max-retries", "30")]).await;
    let keys = ["k0", "k1", "k2", "k3", "k4"];
    let mut accepted = Vec::new();
    for i in 0..100 {
        let app = if i % 2 == 0 { &a } else { &b };
        let key = keys[(i / 2) % 5];
        let body = json!({"data": format!("keyed {i}"), "iterations": 1,
                          "callback_url": receiver.url(), "ordering_key": key});
        let (status, answer) = read(app.post_async(&body).await).await;
        assert_eq!(status, 200, "{answer}");
        accepted.push((
            answer["request_id"].as_str().unwrap().to_string(),
            key.to_string(),
        ));
    }
    receiver.wait_for_deliveries(100, WAIT).await;
    assert!(
        receiver.received().len() > 100,
        "some attempts were refused"
    );
    assert_arrived_in_order_per_key(&receiver, &accepted);
    let instances: std::collections::HashSet<String> = {
        let mut seen = std::collections::HashSet::new();
        for (id, _) in accepted.iter().take(20) {
            let record = a.get_json(&format!("/requests/{id}")).await;
            for attempt in record["attempts"].as_array().unwrap() {
                seen.insert(attempt["instance"].as_str().unwrap_or_default().to_string());
            }
        }
        seen
    };
    assert_eq!(
        instances.len(),
        2,
        "both instances delivered: {instances:?}"
    );
    receiver.stop().await;
}

/// A keyed request cancelled while its attempt was in flight keeps its claim until that
/// attempt ends; if its instance dies first, the claim's lease runs out and the key's next
/// request, on the other instance, is delivered then (not when retention deletes the row).
#[tokio::test]
async fn a_key_whose_cancelled_head_died_in_flight_goes_on_once_its_lease_runs_out() {
    let Some(database) = postgres_database().await else {
        return;
    };
    let hanging = Receiver::start(Behaviour::hang(Duration::from_secs(60))).await;
    let good = Receiver::start(Behaviour::accept()).await;
    let start = || {
        TestServer::builder()
            .child()
            .database_url(&database)
            .setting("job-lease-seconds", "3")
            .setting("callback-timeout-seconds", "1")
            .start()
    };
    let mut dying = start().await;
    let body = json!({"data": "head", "iterations": 1, "callback_url": hanging.url(),
                      "ordering_key": "k"});
    let (status, answer) = read(dying.post_async(&body).await).await;
    assert_eq!(status, 200, "{answer}");
    let head = answer["request_id"].as_str().unwrap().to_string();
    hanging.wait_for_arrivals(1, WAIT).await;
    let (status, answer) = read(
        dying
            .client
            .post(dying.url(&format!("/requests/{head}/cancel")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivery_in_flight"], true, "{answer}");
    dying.kill_9();

    let survivor = start().await;
    let body = json!({"data": "next", "iterations": 1, "callback_url": good.url(),
                      "ordering_key": "k"});
    let (status, answer) = read(survivor.post_async(&body).await).await;
    assert_eq!(status, 200, "{answer}");
    let next = answer["request_id"].as_str().unwrap().to_string();
    let record = survivor
        .wait_for_status(&next, "callback_success", Duration::from_secs(20))
        .await;
    assert_eq!(record["callback_attempts"], 1, "{record}");
    hanging.stop().await;
    good.stop().await;
}
