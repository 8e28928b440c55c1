//! Receivers set the pace (SPEC §12): a destination's rate limit, and the hold a receiver puts
//! on its whole destination with a 429 or 503 and `Retry-After`. Run on SQLite and, in CI, on
//! PostgreSQL.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::destination_controls::{TOKEN, admin_call, destination_of, listed};
use serde_json::{Value, json};

use crate::helpers::{Behaviour, Receiver, TestServer, read};

const WAIT: Duration = Duration::from_secs(30);

/// The most arrivals in any one-second window.
pub fn busiest_second(arrivals: &[DateTime<Utc>]) -> usize {
    arrivals
        .iter()
        .map(|start| {
            arrivals
                .iter()
                .filter(|t| **t >= *start && **t < *start + chrono::Duration::seconds(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Queues `n` jobs for each of `first` and `second`, interleaved, in one batch (so that every
/// job is queued at once); answers the ids of `first`'s.
async fn queue_side_by_side<P>(
    app: &TestServer<P>,
    n: usize,
    first: &Receiver,
    second: &Receiver,
) -> Vec<String> {
    let items: Vec<_> = (0..n)
        .flat_map(|i| {
            [
                json!({"data": format!("first {i}"), "callback_url": first.url()}),
                json!({"data": format!("second {i}"), "callback_url": second.url()}),
            ]
        })
        .collect();
    let (status, answer) = read(
        app.post_json("/async/batch", &json!({ "requests": items }))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .step_by(2)
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn rate_limited_receivers_see_no_second_above_their_limit_and_each_has_its_own() {
    let limited = Receiver::start(Behaviour::accept()).await;
    let free = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .setting("callback-rate-per-destination", "10/5")
        .start()
        .await;
    let ids = queue_side_by_side(&app, 40, &limited, &free).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let record = app.get_json(&format!("/requests/{}", ids[39])).await;
    limited.wait_for_deliveries(40, WAIT).await;
    free.wait_for_deliveries(40, WAIT).await;
    let mut ends = Vec::new();
    for receiver in [&limited, &free] {
        let arrivals: Vec<DateTime<Utc>> =
            receiver.arrivals().into_iter().map(|(_, t)| t).collect();
        let busiest = busiest_second(&arrivals);
        // A burst of 5 on top of 10 a second, and a little slack for timers.
        assert!(
            busiest <= 16,
            "{busiest} callbacks in one second to a destination limited to 10/s with bursts of 5"
        );
        let spread = *arrivals.last().unwrap() - arrivals[0];
        assert!(
            spread >= chrono::Duration::milliseconds(3000),
            "40 callbacks at 10/s after a burst of 5 take 3.5 s, not {spread}"
        );
        ends.push((arrivals[0], *arrivals.last().unwrap()));
    }
    // Each destination has a limit of its own: the two ran side by side, not one after the
    // other (which would take 7 s).
    let took = ends[0].1.max(ends[1].1) - ends[0].0.min(ends[1].0);
    assert!(
        took < chrono::Duration::milliseconds(6000),
        "two destinations limited to 10/s each took {took} for 40 callbacks each"
    );
    assert!(
        record["status"] != "pending" || record["waiting_for"] == "rate_limit",
        "{record}"
    );
    let view = listed(&app, &destination_of(&limited)).await.unwrap();
    assert_eq!(view["rate_limit"]["per_second"], 10.0, "{view}");
    assert_eq!(view["rate_limit"]["burst"], 5, "{view}");
    assert_eq!(view["rate_limit_own"], false, "{view}");
    limited.stop().await;
    free.stop().await;
}

#[tokio::test]
async fn a_429_with_retry_after_holds_every_job_of_its_destination_without_opening_its_breaker() {
    // Refuses everything in its first 100 ms with 429 and Retry-After: 3, then accepts.
    let receiver =
        Receiver::start(Behaviour::down_for(Duration::from_millis(100), 429).retry_after(3)).await;
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        // A breaker that would open at the first refusal, if a slow-down counted.
        .setting("callback-breaker-threshold", "1")
        // The hold is at most the longest retry delay.
        .setting("callback-retry-max-delay", "10")
        .start()
        .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(app.submit(&format!("held {i}"), &receiver.url()).await);
    }
    receiver.wait_for_arrivals(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = app.get_json(&format!("/requests/{}", ids[19])).await;
    assert_eq!(held["waiting_for"], "retry_after", "{held}");
    let view = listed(&app, &destination_of(&receiver)).await.unwrap();
    assert!(view["retry_after_until"].is_string(), "{view}");
    assert_eq!(
        view["breaker"], "closed",
        "a slow-down is no failure: {view}"
    );
    receiver.wait_for_deliveries(20, WAIT).await;
    let arrivals: Vec<DateTime<Utc>> = receiver.arrivals().into_iter().map(|(_, t)| t).collect();
    let refused_at = arrivals[0];
    let early: Vec<_> = arrivals
        .iter()
        .filter(|t| **t > refused_at + chrono::Duration::milliseconds(200))
        .filter(|t| **t < refused_at + chrono::Duration::milliseconds(2900))
        .collect();
    assert!(
        early.is_empty(),
        "no callback within the 3 s the receiver asked for: {early:?} after {refused_at}"
    );
    for id in &ids {
        app.wait_for_status(id, "callback_success", WAIT).await;
    }
    receiver.stop().await;
}

/// `PUT /destinations/{key}/limits` with `body`.
async fn set_limits<P>(app: &TestServer<P>, destination: &str, body: &str) -> (u16, Value) {
    admin_call(app, reqwest::Method::PUT, destination, "limits", Some(body)).await
}

/// `DELETE /destinations/{key}/limits`: the default applies to `destination` again.
async fn default_limits<P>(app: &TestServer<P>, destination: &str) -> (u16, Value) {
    admin_call(app, reqwest::Method::DELETE, destination, "limits", None).await
}

#[tokio::test]
async fn a_destinations_own_limit_holds_it_alone_and_bad_limits_are_refused_with_nothing_stored() {
    let limited = Receiver::start(Behaviour::accept()).await;
    let free = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .start()
        .await;
    let destination = destination_of(&limited);
    for bad in [
        r#"{"per_second": 0}"#,
        r#"{"per_second": -1}"#,
        r#"{"per_second": 1e9}"#,
        r#"{"per_second": "10"}"#,
        r#"{"per_second": 10, "burst": 0}"#,
        r#"{"per_second": 10, "burst": 1.5}"#,
        r#"{"per_second": 10, "burst": 100001}"#,
        r#"{"per_second": 0.0001}"#,
        r#"{"burst": 5}"#,
        r#"{"per_second": 10, "extra": 1}"#,
        r#"[10]"#,
    ] {
        let (status, answer) = set_limits(&app, &destination, bad).await;
        assert_eq!(status, 422, "{bad}: {answer}");
        assert!(answer["detail"].is_array(), "{bad}: {answer}");
    }
    assert!(
        listed(&app, &destination).await.is_none(),
        "nothing stored by a refused limit"
    );
    let (status, view) = set_limits(&app, &destination, r#"{"per_second": 5, "burst": 2}"#).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["rate_limit"], json!({"per_second": 5.0, "burst": 2}));
    assert_eq!(view["rate_limit_own"], true);

    queue_side_by_side(&app, 15, &limited, &free).await;
    let free_arrivals = free.wait_for_deliveries(15, WAIT).await;
    assert_eq!(free_arrivals.len(), 15);
    let limited_early = limited.received().len();
    assert!(
        limited_early < 15,
        "the unlimited destination ran ahead: {limited_early} of 15 limited ones were delivered"
    );
    limited.wait_for_deliveries(15, WAIT).await;
    let arrivals: Vec<DateTime<Utc>> = limited.arrivals().into_iter().map(|(_, t)| t).collect();
    assert!(busiest_second(&arrivals) <= 8, "5/s with bursts of 2");

    let (status, view) = default_limits(&app, &destination).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        (view["rate_limit"].clone(), view["rate_limit_own"].clone()),
        (Value::Null, json!(false))
    );
    limited.stop().await;
    free.stop().await;
}

/// The value of `/metrics` series `name` for `destination`, if it has one.
async fn destination_gauge<P>(app: &TestServer<P>, name: &str, destination: &str) -> Option<f64> {
    let text = app.get("/metrics").await.text().await.unwrap();
    let prefix = format!("{name}{{destination=\"{destination}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.parse().unwrap())
}

/// `destination`'s `held_jobs` in `GET /destinations` once it is at least `n` (it is counted
/// now and then, not at every change).
async fn wait_for_held<P>(app: &TestServer<P>, destination: &str, n: u64) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let view = listed(app, destination).await.unwrap();
        if view["held_jobs"].as_u64().is_some_and(|held| held >= n) {
            return view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} held jobs never shown: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn what_waits_behind_a_limit_or_a_receivers_hold_is_shown_per_destination() {
    let limited = Receiver::start(Behaviour::accept()).await;
    // Answers 503 with Retry-After: 6 for its first 100 ms, then accepts.
    let holding =
        Receiver::start(Behaviour::down_for(Duration::from_millis(100), 503).retry_after(6)).await;
    let free = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .setting("callback-retry-max-delay", "10")
        .start()
        .await;
    let (limited_at, holding_at) = (destination_of(&limited), destination_of(&holding));
    let (status, view) = set_limits(&app, &limited_at, r#"{"per_second": 0.5, "burst": 1}"#).await;
    assert_eq!(status, 200, "{view}");
    for i in 0..12 {
        app.submit(&format!("limited {i}"), &limited.url()).await;
        app.submit(&format!("free {i}"), &free.url()).await;
    }
    for i in 0..10 {
        app.submit(&format!("holding {i}"), &holding.url()).await;
    }
    free.wait_for_deliveries(12, WAIT).await;
    holding.wait_for_arrivals(1, WAIT).await;

    let view = wait_for_held(&app, &limited_at, 8).await;
    assert_eq!(view["rate_limit"]["per_second"], 0.5, "{view}");
    let view = wait_for_held(&app, &holding_at, 5).await;
    assert!(view["retry_after_until"].is_string(), "{view}");
    let free_view = listed(&app, &destination_of(&free)).await.unwrap();
    assert_eq!(
        free_view["held_jobs"],
        Value::Null,
        "nothing holds it back: {free_view}"
    );

    let gauge = |name: &'static str, destination: String| {
        let app = &app;
        async move { destination_gauge(app, name, &destination).await }
    };
    let held = gauge("syncasync_destination_held_jobs", limited_at.clone()).await;
    assert!(held.is_some_and(|n| n >= 8.0), "{held:?}");
    assert_eq!(
        gauge(
            "syncasync_destination_rate_limit_per_second",
            limited_at.clone()
        )
        .await,
        Some(0.5)
    );
    let left = gauge(
        "syncasync_destination_retry_after_seconds",
        holding_at.clone(),
    )
    .await;
    assert!(left.is_some_and(|s| s > 0.0 && s <= 6.0), "{left:?}");
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains("\nsyncasync_destinations_rate_limited 1\n"),
        "{text}"
    );
    assert!(
        text.contains("\nsyncasync_destinations_retry_after 1\n"),
        "{text}"
    );

    // The limit taken off, its jobs go and nothing is shown held any more.
    let (status, _) = default_limits(&app, &limited_at).await;
    assert_eq!(status, 200);
    limited.wait_for_deliveries(12, WAIT).await;
    holding.wait_for_deliveries(10, WAIT).await;
    let view = listed(&app, &limited_at).await.unwrap();
    assert_eq!(view["held_jobs"], Value::Null, "{view}");
    assert_eq!(
        gauge("syncasync_destination_rate_limit_per_second", limited_at).await,
        None
    );
    limited.stop().await;
    holding.stop().await;
    free.stop().await;
}

/// `request` (raw HTTP/1.1) sent to each of `n` destinations, the caller hanging up at once
/// or within a few milliseconds, before the answer.
async fn hang_up_on<P>(app: &TestServer<P>, n: u64, request: impl Fn(u64) -> String) {
    use tokio::io::AsyncWriteExt;
    let address = app.address.trim_start_matches("http://").to_string();
    let mut hangups = Vec::new();
    for i in 0..n {
        let (address, request) = (address.clone(), request(i));
        hangups.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(i % 4)).await;
            drop(stream);
        }));
    }
    for hangup in hangups {
        hangup.await.unwrap();
    }
}

/// Limits set and taken off by callers that hang up mid-request (so the handler may be
/// dropped at any await): each change is stored whole or not at all, and the instance
/// applies exactly what the database holds, as a fresh start on it does.
#[tokio::test]
async fn limits_whose_callers_hang_up_leave_the_instance_agreeing_with_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let database = crate::helpers::fresh_database(dir.path()).await;
    let start = || {
        TestServer::builder()
            .child()
            .database_url(&database)
            .setting("admin-token", TOKEN)
            .start()
    };
    let mut app = start().await;
    let key = |i: u64| format!("http%3A%2F%2Fhung-up-{i}.example%3A80");
    hang_up_on(&app, 60, |i| {
        let body = format!("{{\"per_second\": {}, \"burst\": 2}}", i + 1);
        format!(
            "PUT /destinations/{}/limits HTTP/1.1\r\nHost: test\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            key(i),
            body.len()
        )
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hang_up_on(&app, 60, |i| {
        format!(
            "DELETE /destinations/{}/limits HTTP/1.1\r\nHost: test\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n",
            key(i * 2 % 60)
        )
    })
    .await;
    let limits = |views: Vec<Value>| {
        let mut limits: Vec<(String, f64)> = views
            .into_iter()
            .filter(|v| v["rate_limit_own"] == true)
            .map(|v| {
                (
                    v["destination"].as_str().unwrap().to_string(),
                    v["rate_limit"]["per_second"].as_f64().unwrap(),
                )
            })
            .collect();
        limits.sort_by(|a, b| a.0.cmp(&b.0));
        limits
    };
    // Writes already under way land; then one read of the controls.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let applied = limits(crate::helpers::destinations(&app, TOKEN).await);
    app.kill_9();
    let fresh = start().await;
    let stored = limits(crate::helpers::destinations(&fresh, TOKEN).await);
    assert_eq!(applied, stored, "the instance and the database disagree");
    for (destination, per_second) in &stored {
        let n: u64 = destination
            .trim_start_matches("http://hung-up-")
            .trim_end_matches(".example:80")
            .parse()
            .unwrap();
        assert_eq!(
            *per_second,
            (n + 1) as f64,
            "{destination}: another's limit"
        );
    }
    eprintln!(
        "{} of 60 limits stand after their callers hung up",
        stored.len()
    );
}

/// Stores an hour-long receiver's hold for `n` made-up destinations, straight into the
/// database, as 1,000 receivers answering `Retry-After` would.
async fn store_holds(database: &str, n: u32) {
    if let Some(path) = database.strip_prefix("sqlite://") {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let now = Utc::now().timestamp_millis();
        for i in 0..n {
            conn.execute(
                "INSERT INTO destination_controls (destination, held_until, changed_at)
                 VALUES (?1, ?2, ?3)",
                rusqlite::params![
                    format!("http://held-{i}.example:80"),
                    now + 3_600_000 + i64::from(i),
                    now
                ],
            )
            .unwrap();
        }
    } else {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(database).await.unwrap();
        sqlx::query(
            "INSERT INTO destination_controls (destination, held_until, changed_at)
             SELECT 'http://held-' || g || '.example:80',
                    now() + interval '1 hour' + g * interval '1 millisecond', now()
             FROM generate_series(0, $1 - 1) AS g",
        )
        .bind(i64::from(n))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

/// Receivers' holds on 1,000 destinations (every stored control row) do not lock the
/// operator out: a pause or a limit takes the place of the hold that ends first.
#[tokio::test]
async fn receivers_holds_on_a_thousand_destinations_leave_room_for_an_operators_controls() {
    let dir = tempfile::tempdir().unwrap();
    let database = crate::helpers::fresh_database(dir.path()).await;
    let app = TestServer::builder()
        .database_url(&database)
        .setting("admin-token", TOKEN)
        .setting("callback-retry-max-delay", "7200")
        .start()
        .await;
    store_holds(&database, 1000).await;
    let (status, view) =
        set_limits(&app, "http://fragile.example:80", r#"{"per_second": 2}"#).await;
    assert_eq!(status, 200, "{view}");
    let (status, view) =
        crate::destination_controls::control(&app, "pause", "http://noisy.example:80").await;
    assert_eq!(status, 200, "{view}");
    let views = crate::helpers::destinations(&app, TOKEN).await;
    let held = views
        .iter()
        .filter(|v| {
            v["destination"]
                .as_str()
                .unwrap()
                .starts_with("http://held-")
        })
        .count();
    assert_eq!(held, 998, "the two holds ending first made room");
    for gone in ["http://held-0.example:80", "http://held-1.example:80"] {
        assert!(
            views.iter().all(|v| v["destination"] != gone),
            "{gone} ended first and gave way"
        );
    }
    app.stop().await;
}
