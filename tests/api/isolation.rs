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

async fn destination(app: &TestServer, port: u16) -> Option<Value> {
    let suffix = format!(":{port}");
    crate::helpers::destinations(app, TOKEN)
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
    // The hung destination holds only what it earned, one delivery (it never answered); the
    // dead one's breaker is open.
    let view = destination(&app, hung.address.port())
        .await
        .expect("hung destination");
    assert_eq!(view["in_flight"], 1, "{view}");
    assert_eq!(view["proven"], false, "{view}");
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
            "syncasync_destination_in_flight{{destination=\"http://127.0.0.1:{}\"}} 1",
            hung.address.port()
        )),
        "{metrics}"
    );
}

/// A receiver answering 404 (a wrong path) or 401 (a bad signature), the commonest mistakes,
/// shows as failing: each such answer counts among its recent failures, on the destinations
/// view and in /metrics, though not against its breaker.
#[tokio::test]
async fn a_receiver_answering_4xx_shows_as_failing() {
    let app = TestServer::builder()
        .settings(DEFAULTS)
        .setting("callback-max-retries", "0")
        .start()
        .await;
    let wrong_path = Receiver::start(Behaviour::always_fail(404)).await;
    let ids = submit_many(&app, 3, &wrong_path.url(), "wrong path").await;
    for id in &ids {
        app.wait_for_status(id, "callback_failed", Duration::from_secs(10))
            .await;
    }
    let view = destination(&app, wrong_path.address.port())
        .await
        .expect("the 404 destination");
    assert_eq!(view["recent_failures"], 3, "{view}");
    assert_eq!(view["recent_successes"], 0, "{view}");
    assert_eq!(view["breaker"], "closed", "{view}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let line = format!(
        "syncasync_destination_recent_failures{{destination=\"http://127.0.0.1:{}\"}} 3",
        wrong_path.address.port()
    );
    assert!(metrics.contains(&line), "{metrics}");
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
    // A destination that never answers has earned room for one delivery at a time: its five
    // requests take ten attempts of a second each, one after the other.
    let (hung_ids, dead_ids) = tokio::join!(
        submit_many(&app, 5, &hung_url, "hung"),
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

/// Delivers `n` callbacks to `receiver` one after the other: a destination that answers
/// earns its share of the workers.
async fn prove(app: &TestServer, receiver: &Receiver, n: usize) {
    let before = receiver.delivered_ids().len();
    for i in 0..n {
        app.submit(&format!("proving {i}"), &receiver.url()).await;
    }
    receiver
        .wait_for_deliveries(before + n, Duration::from_secs(10))
        .await;
}

/// Delivers `n` callbacks to each of `receivers`, which answer them at once and so earn
/// room, and checks that each earned room for `limit` deliveries in flight.
async fn earn(app: &TestServer, receivers: &[Receiver], n: usize, limit: u64) {
    for receiver in receivers {
        submit_many(app, n, &receiver.url(), "earning").await;
        receiver
            .wait_for_deliveries(n, Duration::from_secs(10))
            .await;
        let view = destination(app, receiver.address.port()).await.unwrap();
        assert_eq!(view["in_flight_limit"], limit, "{view}");
    }
}

/// Times `n` callbacks to `receiver`, one at a time; each must take less than `within`.
async fn each_delivered_within(app: &TestServer, receiver: &Receiver, n: usize, within: Duration) {
    let before = receiver.delivered_ids().len();
    for i in 1..=n {
        let took = time_one_delivery(app, receiver, before + i).await;
        if took >= within {
            panic!(
                "callback {i} to the healthy destination took {took:?}; destinations: {:#?}",
                crate::helpers::destinations(app, TOKEN).await
            );
        }
    }
}

/// A service with the service's defaults but ten workers (the original's count), and a
/// receiver that answers at once and has proven itself.
async fn ten_workers_and_a_healthy_receiver() -> (TestServer, Receiver) {
    let app = TestServer::builder()
        .settings(DEFAULTS)
        .setting("async-worker-count", "10")
        .start()
        .await;
    let healthy = Receiver::start(Behaviour::accept()).await;
    prove(&app, &healthy, 3).await;
    (app, healthy)
}

/// Two, then fifty, destinations that accept and never answer, each with a backlog, beside a
/// destination that answers: the healthy one keeps its share of the workers, with the
/// service's default worker count and with the original's 10.
async fn hung_destinations_beside_a_healthy_one(workers: Option<&str>) {
    let mut builder = TestServer::builder().settings(DEFAULTS);
    if let Some(workers) = workers {
        builder = builder.setting("async-worker-count", workers);
    }
    let app = builder.start().await;
    let healthy = Receiver::start(Behaviour::accept()).await;
    prove(&app, &healthy, 3).await;
    let mut hung = Vec::new();
    for count in [2, 50] {
        while hung.len() < count {
            hung.push(Receiver::start(Behaviour::hang(Duration::from_secs(120))).await);
        }
        for receiver in &hung {
            submit_many(&app, 5, &receiver.url(), "hung").await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        each_delivered_within(&app, &healthy, 5, Duration::from_secs(1)).await;
        // However many hang, together they hold at most their share.
        let holding: u64 = crate::helpers::destinations(&app, TOKEN)
            .await
            .iter()
            .filter(|d| d["proven"] == false)
            .map(|d| d["in_flight"].as_u64().unwrap())
            .sum();
        let workers: u64 = workers.map_or(512, |w| w.parse().unwrap());
        assert!(
            holding <= (workers / 4).max(1) + workers,
            "{count} hung destinations hold {holding} deliveries"
        );
        let view = destination(&app, healthy.address.port()).await.unwrap();
        assert_eq!(view["proven"], true, "{view}");
    }
}

#[tokio::test]
async fn hung_destinations_leave_a_healthy_one_its_share_with_default_workers() {
    hung_destinations_beside_a_healthy_one(None).await;
}

#[tokio::test]
async fn hung_destinations_leave_a_healthy_one_its_share_with_ten_workers() {
    hung_destinations_beside_a_healthy_one(Some("10")).await;
}

/// A caller naming a new destination with every request (any host:port is one) gets them
/// all the unproven share and no more: with ten workers and three hundred never-seen names
/// that all lead to a receiver that never answers, a healthy destination's callbacks arrive
/// at once.
#[tokio::test]
async fn a_stream_of_new_destinations_that_hang_cannot_take_the_workers() {
    let hung = Receiver::start(Behaviour::hang(Duration::from_secs(120))).await;
    let mut lookup = crate::helpers::StaticLookup::default();
    let names: Vec<String> = (0..300).map(|n| format!("new-{n}.test")).collect();
    for name in &names {
        lookup = lookup.with(name, &["127.0.0.1"]);
    }
    let app = TestServer::builder()
        .settings(DEFAULTS)
        .setting("async-worker-count", "10")
        .lookup(lookup)
        .start()
        .await;
    let healthy = Receiver::start(Behaviour::accept()).await;
    prove(&app, &healthy, 3).await;
    let port = hung.address.port();
    join_all(names.iter().map(|name| {
        app.submit_owned(
            format!("new {name}"),
            format!("http://{name}:{port}/callback"),
        )
    }))
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    each_delivered_within(&app, &healthy, 5, Duration::from_secs(1)).await;
    let tracked = crate::helpers::destinations(&app, TOKEN).await;
    let new_in_flight: u64 = tracked
        .iter()
        .filter(|d| d["destination"].as_str().unwrap().contains(".test:"))
        .map(|d| d["in_flight"].as_u64().unwrap())
        .sum();
    assert!(
        new_in_flight <= 2 + 10,
        "new destinations hold {new_in_flight} deliveries (share 2, slow pool 10)"
    );
}

/// Destinations that earned a large share and then hang give the workers back once their
/// deliveries go slow: with ten workers, two such destinations hold at most two thirds of
/// them (a third each, with two busy), and those only for APP_CALLBACK_SLOW_AFTER_SECONDS;
/// a third, healthy one is served at once throughout.
#[tokio::test]
async fn destinations_that_hang_after_earning_a_share_give_the_workers_back() {
    let app = TestServer::builder()
        .settings(DEFAULTS)
        .setting("async-worker-count", "10")
        .setting("callback-slow-after-seconds", "1")
        .start()
        .await;
    let healthy = Receiver::start(Behaviour::accept()).await;
    prove(&app, &healthy, 3).await;
    // Each answers its first 40 callbacks at once (earning room for five, half the
    // workers), then hangs.
    let turning = [
        Receiver::start(Behaviour::hang_after(40, Duration::from_secs(120))).await,
        Receiver::start(Behaviour::hang_after(40, Duration::from_secs(120))).await,
    ];
    earn(&app, &turning, 40, 5).await;
    for receiver in &turning {
        submit_many(&app, 20, &receiver.url(), "hanging").await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    each_delivered_within(&app, &healthy, 8, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for receiver in &turning {
        let view = destination(&app, receiver.address.port()).await.unwrap();
        assert_eq!(view["proven"], false, "{view}");
        assert!(view["slow"].as_u64().unwrap() >= 1, "{view}");
    }
}

/// Two destinations that answer every callback, but each in 1.2 s (under the slow threshold:
/// no delivery goes slow), with a backlog: busy destinations share the workers so that some
/// are always free (ten workers, two busy: a third each while proven, and once they have
/// answered unhurriedly, the unproven part), and a healthy receiver's callback, due after
/// both backlogs, goes at once instead of waiting for them.
#[tokio::test]
async fn two_slow_but_answering_destinations_cannot_delay_a_healthy_one() {
    let (app, healthy) = ten_workers_and_a_healthy_receiver().await;
    // Each answers its first 40 callbacks at once (earning room for five, the cap with ten
    // workers), then takes 1.2 s over each, and always answers 200.
    let slow = [
        Receiver::start(Behaviour::hang_after(40, Duration::from_millis(1200))).await,
        Receiver::start(Behaviour::hang_after(40, Duration::from_millis(1200))).await,
    ];
    earn(&app, &slow, 40, 5).await;
    for receiver in &slow {
        submit_many(&app, 30, &receiver.url(), "backlog").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    each_delivered_within(&app, &healthy, 3, Duration::from_secs(1)).await;
    let in_flight: Vec<u64> = join_all(
        slow.iter()
            .map(|receiver| destination(&app, receiver.address.port())),
    )
    .await
    .into_iter()
    .map(|view| view.unwrap()["in_flight"].as_u64().unwrap())
    .collect();
    // The first to get busy may have half the workers, the second a third: never all.
    assert!(
        in_flight.iter().sum::<u64>() <= 8,
        "two busy destinations hold {in_flight:?} of ten workers"
    );
}

/// Twenty destinations that answered their first callback at once and then take 1.5 s
/// over each (under the slow threshold: no delivery ever goes slow), each with a backlog,
/// beside a healthy one, with ten workers. Kept proven, each would keep a room of one and
/// together they would hold every worker for as long as their backlogs last (50 s); once
/// each has answered unhurriedly it shares the unproven part, and the healthy one's
/// callbacks go at once while theirs still move.
#[tokio::test]
async fn many_destinations_answering_just_under_the_slow_threshold_cannot_take_the_workers() {
    let (app, healthy) = ten_workers_and_a_healthy_receiver().await;
    let slow = join_all(
        (0..20).map(|_| Receiver::start(Behaviour::hang_after(1, Duration::from_millis(1500)))),
    )
    .await;
    for receiver in &slow {
        prove(&app, receiver, 1).await;
    }
    for receiver in &slow {
        submit_many(&app, 5, &receiver.url(), "unhurried").await;
    }
    // Each answers one callback of its backlog in its own time, as a proven destination:
    // twenty of them on ten workers, two rounds of 1.5 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let views = join_all(slow.iter().map(|r| destination(&app, r.address.port()))).await;
        if views.iter().flatten().all(|view| view["proven"] == false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "destinations answering in 1.5 s are still proven: {views:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before: usize = slow.iter().map(|r| r.delivered_ids().len()).sum();
    each_delivered_within(&app, &healthy, 5, Duration::from_secs(1)).await;
    // Those started while they were proven have ended by now; the rest share two workers.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let views = join_all(slow.iter().map(|r| destination(&app, r.address.port()))).await;
    let holding: u64 = views
        .iter()
        .flatten()
        .map(|view| view["in_flight"].as_u64().unwrap())
        .sum();
    assert!(
        holding <= 2,
        "they hold {holding} of ten workers: {views:#?}"
    );
    let after: usize = slow.iter().map(|r| r.delivered_ids().len()).sum();
    assert!(
        after > before,
        "their callbacks still move: {before} then {after}"
    );
}

/// Twenty destinations that answer every callback in 0.3 s (quick enough to stay proven),
/// each with a backlog of twenty, beside a healthy one, with ten workers: destinations take
/// turns, so the healthy one's callbacks, due after every backlog, go at the next free
/// worker instead of after the backlogs (400 callbacks at 0.3 s on ten workers: 12 s),
/// while the backlogs keep moving. Turns are counted in the workers' time, not in
/// deliveries: a backlog of a hundred for the healthy one, which answers at once, goes in
/// well under the time the others take for two each.
#[tokio::test]
async fn destinations_take_turns_so_backlogs_due_first_do_not_delay_a_healthy_one() {
    let (app, healthy) = ten_workers_and_a_healthy_receiver().await;
    let busy = join_all(
        (0..20).map(|_| Receiver::start(Behaviour::hang_after(0, Duration::from_millis(300)))),
    )
    .await;
    for receiver in &busy {
        prove(&app, receiver, 1).await;
    }
    for receiver in &busy {
        submit_many(&app, 20, &receiver.url(), "backlog").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: usize = busy.iter().map(|r| r.delivered_ids().len()).sum();
    each_delivered_within(&app, &healthy, 5, Duration::from_secs(1)).await;
    let views = join_all(busy.iter().map(|r| destination(&app, r.address.port()))).await;
    assert!(
        views.iter().flatten().all(|view| view["proven"] == true),
        "answering in 0.3 s keeps them proven: {views:#?}"
    );
    // Moving, not at a rate: the healthy callbacks may all have gone in less time than the
    // backlogs take for ten (ten workers, 0.3 s each), so they get a few seconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after: usize = busy.iter().map(|r| r.delivered_ids().len()).sum();
    while after <= before + 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = busy.iter().map(|r| r.delivered_ids().len()).sum();
    }
    assert!(
        after > before + 10,
        "their callbacks kept moving meanwhile: {before} then {after}"
    );

    let delivered = healthy.delivered_ids().len();
    let started = Instant::now();
    submit_many(&app, 100, &healthy.url(), "quick backlog").await;
    healthy
        .wait_for_deliveries(delivered + 100, Duration::from_secs(30))
        .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "a hundred quick callbacks took {took:?} beside the slow backlogs"
    );
}

/// Once the pool of slow deliveries is full, a delivery that goes slow keeps its worker only
/// until a place in the pool frees up, never for the whole callback timeout: four workers,
/// four destinations that earned room for two each and then hang (two fill the slow pool,
/// the other two go slow behind them), and a healthy receiver's callbacks still go at once.
#[tokio::test]
async fn hung_destinations_cannot_keep_the_workers_once_the_slow_pool_is_full() {
    let app = TestServer::builder()
        .settings(DEFAULTS)
        .setting("async-worker-count", "4")
        .start()
        .await;
    let healthy = Receiver::start(Behaviour::accept()).await;
    prove(&app, &healthy, 3).await;
    let mut turning = Vec::new();
    for _ in 0..4 {
        turning.push(Receiver::start(Behaviour::hang_after(10, Duration::from_secs(60))).await);
    }
    earn(&app, &turning, 10, 2).await;
    for receiver in &turning {
        submit_many(&app, 2, &receiver.url(), "hanging").await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    each_delivered_within(&app, &healthy, 3, Duration::from_secs(2)).await;
}

/// A request may choose a shorter callback timeout than the operator's, but the attempts
/// that run out of it are the request's doing, not its destination's: a caller sending six
/// requests with a 10 ms timeout to a receiver that answers in 100 ms neither opens its
/// breaker nor takes it out of the proven share, and its own callbacks still go at once.
#[tokio::test]
async fn requests_with_a_timeout_of_their_own_cannot_open_another_destinations_breaker() {
    let app = TestServer::builder()
        .settings(DEFAULTS)
        .setting("callback-breaker-threshold", "2")
        .start()
        .await;
    let receiver = Receiver::start(Behaviour::hang(Duration::from_millis(100))).await;
    prove(&app, &receiver, 2).await;
    let (app, url) = (&app, &receiver.url());
    let ids = join_all((0..6).map(|n| async move {
        let response = app
            .post_async(&serde_json::json!({
                "data": format!("impatient {n}"),
                "callback_url": url,
                "callback_timeout_seconds": 0.01,
                "callback_max_retries": 0,
            }))
            .await;
        let (status, body) = crate::helpers::read(response).await;
        assert_eq!(status, 200, "{body}");
        body["request_id"].as_str().unwrap().to_string()
    }))
    .await;
    for id in &ids {
        app.wait_for_status(id, "callback_failed", Duration::from_secs(10))
            .await;
    }
    let view = destination(app, receiver.address.port()).await.unwrap();
    assert_eq!(view["breaker"], "closed", "{view}");
    assert_eq!(view["proven"], true, "{view}");
    assert!(
        view["recent_failures"].as_u64().unwrap() >= 6,
        "shown as failed: {view}"
    );
    each_delivered_within(app, &receiver, 3, Duration::from_secs(1)).await;
}
