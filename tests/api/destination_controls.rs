//! The operator's controls over a destination (SPEC §11): pause, resume, reset its breaker.
//! Stored in the database, so a pause outlives a restart (and, in `scale_out.rs`, holds on
//! every instance). Run on SQLite and, in CI, on PostgreSQL.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Behaviour, Receiver, TestServer, fresh_database, read};

pub const TOKEN: &str = "controls-admin-token";
const WAIT: Duration = Duration::from_secs(20);

/// `METHOD /destinations/{key}/{action}` with the admin token and `body` (JSON), the key
/// percent-encoded.
pub async fn admin_call<P>(
    app: &TestServer<P>,
    method: reqwest::Method,
    destination: &str,
    action: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let key: String = url::form_urlencoded::byte_serialize(destination.as_bytes()).collect();
    let mut request = app
        .client
        .request(method, app.url(&format!("/destinations/{key}/{action}")))
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    read(request.send().await.unwrap()).await
}

/// `POST /destinations/{key}/{action}`.
pub async fn control<P>(app: &TestServer<P>, action: &str, destination: &str) -> (u16, Value) {
    admin_call(app, reqwest::Method::POST, destination, action, None).await
}

/// `destination` as `GET /destinations` shows it, if listed.
pub async fn listed<P>(app: &TestServer<P>, destination: &str) -> Option<Value> {
    crate::helpers::destinations(app, TOKEN)
        .await
        .into_iter()
        .find(|d| d["destination"] == destination)
}

async fn metrics(app: &TestServer) -> String {
    app.get("/metrics").await.text().await.unwrap()
}

/// The destination of a test receiver, as the service writes it.
pub fn destination_of(receiver: &Receiver) -> String {
    format!("http://127.0.0.1:{}", receiver.address.port())
}

async fn submit_to<P>(
    app: &TestServer<P>,
    receiver: &Receiver,
    n: usize,
    tag: &str,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(app.submit(&format!("{tag} {i}"), &receiver.url()).await);
    }
    ids
}

#[tokio::test]
async fn a_paused_destination_holds_its_jobs_and_says_why_while_others_run_then_resumes_them_all() {
    let paused = Receiver::start(Behaviour::accept()).await;
    let other = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .start()
        .await;

    // Named with a trailing slash: the destination as the service writes it.
    let (status, view) = control(&app, "pause", &format!("{}/", destination_of(&paused))).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["destination"], destination_of(&paused), "{view}");
    assert_eq!(view["paused"], true, "{view}");
    let paused_at = view["paused_at"].clone();
    assert!(paused_at.is_string(), "{view}");
    // Pausing again keeps the first pause's time.
    let (status, again) = control(&app, "pause", &destination_of(&paused)).await;
    assert_eq!((status, &again["paused_at"]), (200, &paused_at), "{again}");

    let held = submit_to(&app, &paused, 5, "held").await;
    let free = submit_to(&app, &other, 5, "free").await;
    other.wait_for_deliveries(5, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reached: Vec<Value> = paused.received().into_iter().map(|r| r.body).collect();
    assert!(
        reached.is_empty(),
        "no attempt reaches a paused destination; held {held:?}, reached: {reached:?}"
    );
    for id in &held {
        let record = app.get_json(&format!("/requests/{id}")).await;
        assert_eq!(record["status"], "pending", "{record}");
        assert_eq!(record["waiting_for"], "paused", "{record}");
        assert_eq!(record["callback_attempts"], 0, "{record}");
    }
    let listed_view = listed(&app, &destination_of(&paused)).await.unwrap();
    assert_eq!(listed_view["paused"], true, "{listed_view}");
    assert!(
        metrics(&app)
            .await
            .contains("\nsyncasync_destinations_paused 1\n")
    );
    for id in &free {
        app.wait_for_status(id, "callback_success", WAIT).await;
    }

    let (status, view) = control(&app, "resume", &destination_of(&paused)).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        (view["paused"].clone(), view["paused_at"].clone()),
        (json!(false), Value::Null)
    );
    paused.wait_for_deliveries(5, WAIT).await;
    assert!(
        metrics(&app)
            .await
            .contains("\nsyncasync_destinations_paused 0\n")
    );
    for id in &held {
        let record = app.wait_for_status(id, "callback_success", WAIT).await;
        assert_eq!(
            record["callback_attempts"], 1,
            "each delivered once: {record}"
        );
    }
    let mut delivered = paused.delivered_ids();
    delivered.sort();
    let mut expected = held.clone();
    expected.sort();
    assert_eq!(delivered, expected, "every held job, once");
    // Resuming what is not paused changes nothing.
    let (status, view) = control(&app, "resume", &destination_of(&paused)).await;
    assert_eq!(
        (status, view["paused"].clone()),
        (200, json!(false)),
        "{view}"
    );
    paused.stop().await;
    other.stop().await;
}

/// A pause is stored: killed (SIGKILL) and started again, the service still holds the
/// destination's jobs, old and new, until an operator resumes it.
#[tokio::test]
async fn a_pause_outlives_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database(dir.path()).await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let mut server = TestServer::builder()
        .child()
        .database_url(&database)
        .setting("admin-token", TOKEN)
        .start()
        .await;
    let (status, view) = control(&server, "pause", &destination_of(&receiver)).await;
    assert_eq!(status, 200, "{view}");
    let before = submit_to(&server, &receiver, 3, "before").await;
    server.kill_9();
    let server = TestServer::builder()
        .child()
        .database_url(&database)
        .setting("admin-token", TOKEN)
        .start()
        .await;
    let after = submit_to(&server, &receiver, 3, "after").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(receiver.received().is_empty(), "held across the restart");
    for id in before.iter().chain(&after) {
        let record = server.get_json(&format!("/requests/{id}")).await;
        assert_eq!(record["waiting_for"], "paused", "{record}");
    }
    assert_eq!(
        listed(&server, &destination_of(&receiver)).await.unwrap()["paused"],
        true
    );
    let (status, _) = control(&server, "resume", &destination_of(&receiver)).await;
    assert_eq!(status, 200);
    receiver.wait_for_deliveries(6, WAIT).await;
    receiver.stop().await;
}

/// A reset closes an open breaker at once: the jobs it held are tried within a moment, not
/// after the cool-down.
#[tokio::test]
async fn resetting_an_open_breaker_lets_its_held_jobs_through_at_once() {
    // Refuses for its first second, which opens the breaker; healthy by the time of the reset.
    let receiver = Receiver::start(Behaviour::down_for(Duration::from_secs(1), 500)).await;
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .setting("callback-max-retries", "20")
        .setting("callback-retry-base-delay", "0.05")
        .setting("callback-retry-max-delay", "0.1")
        .setting("callback-breaker-threshold", "2")
        .setting("callback-breaker-cooldown-seconds", "120")
        .start()
        .await;
    let ids = submit_to(&app, &receiver, 6, "held by a breaker").await;
    let destination = destination_of(&receiver);
    let deadline = Instant::now() + WAIT;
    loop {
        let view = listed(&app, &destination).await;
        if view.as_ref().is_some_and(|v| v["breaker"] == "open") {
            break;
        }
        assert!(Instant::now() < deadline, "breaker never opened: {view:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let record = app.get_json(&format!("/requests/{}", ids[5])).await;
    assert_eq!(record["waiting_for"], "breaker_open", "{record}");

    let reset_at = Instant::now();
    let (status, view) = control(&app, "reset", &destination).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["breaker"], "closed", "{view}");
    for id in &ids {
        app.wait_for_status(id, "callback_success", WAIT).await;
    }
    assert!(
        reset_at.elapsed() < Duration::from_secs(15),
        "delivered after the reset, not the two-minute cool-down: {:?}",
        reset_at.elapsed()
    );
    receiver.stop().await;
}

#[tokio::test]
async fn destination_controls_refuse_bad_names_and_callers_without_the_admin_token() {
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .start()
        .await;
    for key in [
        "not%20a%20url",
        "ftp%3A%2F%2Ffiles.example%3A21",
        "http%3A%2F%2F",
        "%FF%FE",
        // A callback URL pasted whole: refused, never echoed (its query may be a secret).
        "http%3A%2F%2F127.0.0.1%3A9%2Fhook%3Ftoken%3Ds3cret",
        "http%3A%2F%2F127.0.0.1%3A9%2Fhook",
        "http%3A%2F%2Fuser%3Apw%40127.0.0.1%3A9",
        &format!("http%3A%2F%2F{}.example", "a".repeat(2100)),
    ] {
        for action in ["pause", "resume", "reset"] {
            let response = app
                .client
                .post(app.url(&format!("/destinations/{key}/{action}")))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let (status, answer) = read(response).await;
            assert_eq!(status, 422, "{action} {key}: {answer}");
            assert_eq!(
                answer["detail"][0]["loc"],
                json!(["path", "key"]),
                "{answer}"
            );
        }
    }
    // Unencoded, the key's slashes make a path no route has.
    let response = app
        .client
        .post(app.url("/destinations/http://127.0.0.1:9/pause"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    for token in [None, Some("wrong")] {
        let mut request = app
            .client
            .post(app.url("/destinations/http%3A%2F%2F127.0.0.1%3A9/pause"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        assert_eq!(request.send().await.unwrap().status(), 401);
    }
    assert!(
        listed(&app, "http://127.0.0.1:9").await.is_none(),
        "nothing paused by a refused call"
    );

    // Without an admin token the routes do not exist.
    let open = TestServer::builder().start().await;
    let response = open
        .client
        .post(open.url("/destinations/http%3A%2F%2F127.0.0.1%3A9/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

/// Controls are bounded: at most 1,000 destinations paused; beyond, a pause is refused with a
/// 409 until one is resumed. Rows left by resumes make room for new ones.
#[tokio::test]
async fn at_most_a_thousand_destinations_are_paused() {
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .start()
        .await;
    let name = |n: usize| format!("http://paused-{n}.example:80");
    for n in 0..1000 {
        let (status, view) = control(&app, "pause", &name(n)).await;
        assert_eq!(status, 200, "pause {n}: {view}");
    }
    let (status, answer) = control(&app, "pause", &name(1000)).await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("1000"),
        "{answer}"
    );
    let (status, _) = control(&app, "reset", &name(1001)).await;
    assert_eq!(status, 409, "a reset needs a row too");
    let (status, _) = control(&app, "pause", &name(5)).await;
    assert_eq!(status, 200, "a paused one again: no new row");
    let (status, _) = control(&app, "resume", &name(7)).await;
    assert_eq!(status, 200);
    let (status, view) = control(&app, "pause", &name(1000)).await;
    assert_eq!(status, 200, "a resumed row made room: {view}");
    let (status, _) = control(&app, "pause", &name(1002)).await;
    assert_eq!(status, 409);
}

/// Operators whose pause calls hang up at once, or a few milliseconds in (the handler
/// dropped at any of its awaits: the write, the read of the controls, the turn between
/// claims): each pause is stored whole or not at all, and within a read interval the
/// instance holds exactly what the database holds, as a fresh start on it does.
#[tokio::test]
async fn pauses_whose_callers_hang_up_leave_the_instance_agreeing_with_the_database() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database(dir.path()).await;
    let start = || {
        TestServer::builder()
            .child()
            .database_url(&database)
            .setting("admin-token", TOKEN)
            .start()
    };
    let mut app = start().await;
    let address = app.address.trim_start_matches("http://").to_string();
    let mut hangups = Vec::new();
    for n in 0..60u64 {
        let address = address.clone();
        let request = format!(
            "POST /destinations/http%3A%2F%2Fhung-up-{n}.example%3A80/pause HTTP/1.1\r\n\
             Host: test\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
        );
        hangups.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(n % 4)).await;
            drop(stream);
        }));
    }
    for hangup in hangups {
        hangup.await.unwrap();
    }
    let paused = |views: Vec<Value>| {
        let mut names: Vec<String> = views
            .into_iter()
            .filter(|v| v["paused"] == true)
            .map(|v| v["destination"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    // Writes already under way land; then one read of the controls.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let held = paused(crate::helpers::destinations(&app, TOKEN).await);
    app.kill_9();
    let fresh = start().await;
    let stored = paused(crate::helpers::destinations(&fresh, TOKEN).await);
    assert_eq!(held, stored, "the instance and the database disagree");
    eprintln!(
        "{} of 60 pauses landed before their callers hung up",
        stored.len()
    );
}
