//! The filters the dashboard's list uses, on `GET /requests` for every client: creation time,
//! callback host, the last callback's HTTP status, the last error's text, id prefix, and
//! keyset paging (`before`); and `POST /admin/redeliver`, which redelivers every
//! `callback_failed` request that matches them.

use std::time::Duration;

use serde_json::{Value, json};

use crate::control;
use crate::destination_controls::{self, destination_of};
use crate::helpers::{
    Behaviour, Receiver, TestServer, fresh_database, ids, read, sync_request, unused_port,
};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "bulk-admin";

async fn list(app: &TestServer, query: &str) -> Vec<String> {
    ids(&app.get_json(&format!("/requests?{query}")).await)
}

async fn bulk(app: &TestServer, query: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = app
        .client
        .post(app.url(&format!("/admin/redeliver?{query}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    read(request.send().await.expect("sent")).await
}

/// Every page of the list `query` names, each after the last of the one before by `cursor`.
async fn walk(app: &TestServer, query: &str, cursor: &str) -> Vec<String> {
    let mut walked = Vec::new();
    let mut next = query.to_string();
    loop {
        let page = list(app, &next).await;
        let Some(last) = page.last() else {
            return walked;
        };
        next = format!("{query}&{cursor}={last}");
        walked.extend(page);
    }
}

#[tokio::test]
async fn keyset_pages_walk_the_whole_list_in_order() {
    let app = TestServer::builder().start().await;
    for n in 0..7 {
        sync_request(&app, &format!("page {n}")).await;
        // Creation times are kept to the millisecond, and the range checks below need each
        // request's to be its own (a fast request can follow another within one).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let everything = list(&app, "limit=1000").await;
    assert_eq!(everything.len(), 7);
    assert_eq!(walk(&app, "limit=3", "before").await, everything);
    // The total is of the whole filter, not of what is left after the cursor.
    let body = app
        .get_json(&format!("/requests?limit=3&before={}", everything[2]))
        .await;
    assert_eq!(body["total"], 7);
    assert_eq!(ids(&body), everything[3..6]);
    // Oldest first, paged by `after`: the same requests the other way round, and an id
    // prefix's too.
    let oldest: Vec<String> = everything.iter().rev().cloned().collect();
    assert_eq!(list(&app, "order=oldest&limit=1000").await, oldest);
    assert_eq!(walk(&app, "order=oldest&limit=2", "after").await, oldest);
    let prefix = &oldest[0][..8];
    let by_prefix = list(&app, &format!("id_prefix={prefix}&order=oldest&limit=1000")).await;
    assert_eq!(by_prefix.first(), Some(&oldest[0]));
    // A cursor of the other order is refused, naming it.
    for (query, field) in [
        (format!("order=oldest&before={}", oldest[0]), "before"),
        (format!("after={}", oldest[0]), "after"),
    ] {
        let (status, body) =
            crate::helpers::read(app.get(&format!("/requests?{query}")).await).await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["detail"][0]["loc"][1], field, "{body}");
    }
    // The id prefix and the creation-time range.
    let newest = &everything[0];
    assert!(
        list(&app, &format!("id_prefix={}", newest.to_uppercase()))
            .await
            .contains(newest)
    );
    let record = app.get_json(&format!("/requests/{newest}")).await;
    let created = record["created_at"].as_str().unwrap().to_string();
    let from_newest = list(&app, &format!("created_from={created}")).await;
    assert_eq!(from_newest, std::slice::from_ref(newest));
    let before_newest = list(&app, &format!("created_to={created}&limit=1000")).await;
    assert_eq!(before_newest, everything[1..]);
    app.stop().await;
}

#[tokio::test]
async fn junk_filters_are_422s_that_name_them() {
    let app = TestServer::builder().start().await;
    for (query, field) in [
        ("created_from=last%20week", "created_from"),
        ("created_to=1", "created_to"),
        ("callback_host=%3Cscript%3E", "callback_host"),
        ("id_prefix=%22%3E%3Cimg", "id_prefix"),
        ("before=", "before"),
    ] {
        let (status, body) = read(app.get(&format!("/requests?{query}")).await).await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["detail"][0]["loc"][1], field, "{query}: {body}");
    }
    // A cursor that names no request (deleted since): the client must start again.
    let (status, body) = read(
        app.get("/requests?before=0193a5a0-0000-7000-8000-000000000000")
            .await,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "Request not found", "{body}");
    app.stop().await;
}

#[tokio::test]
async fn bulk_redelivery_is_hidden_without_a_token_and_closed_without_the_bearer() {
    let app = TestServer::builder().start().await;
    let (status, _) = bulk(&app, "dry_run=true", None).await;
    assert_eq!(status, 404);
    app.stop().await;
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .start()
        .await;
    let (status, _) = bulk(&app, "dry_run=true", None).await;
    assert_eq!(status, 401);
    let (status, _) = bulk(&app, "dry_run=true", Some("wrong")).await;
    assert_eq!(status, 401);
    for (query, field) in [
        ("status=completed", "status"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("dry_run=maybe", "dry_run"),
        ("before=x", "before"),
        ("order=oldest", "order"),
        ("after=x", "after"),
        ("callback_host=a%20b", "callback_host"),
    ] {
        let (status, body) = bulk(&app, query, Some(TOKEN)).await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["detail"][0]["loc"][1], field, "{query}: {body}");
        assert_eq!(
            body["detail"].as_array().unwrap().len(),
            1,
            "{query}: {body}"
        );
    }
    app.stop().await;
}

/// Two receivers that refuse, on the two loopback names of this machine: the callback host
/// filter picks the requests of one of them.
#[tokio::test]
async fn bulk_redelivery_takes_exactly_the_failed_requests_that_match() {
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .setting("callback-max-retries", "0")
        .start()
        .await;
    let refusing = Receiver::start(Behaviour::always_fail(500)).await;
    let other = Receiver::start(Behaviour::always_fail(500)).await;
    let here = refusing.url();
    let there = other.url().replace("127.0.0.1", "localhost");
    let ours = [app.submit("a", &here).await, app.submit("b", &here).await];
    let theirs = app.submit("c", &there).await;
    for id in ours.iter().chain([&theirs]) {
        app.wait_for_status(id, "callback_failed", WAIT).await;
    }
    let done = sync_request(&app, "not failed").await;

    let host = list(&app, "callback_host=localhost").await;
    assert_eq!(host, std::slice::from_ref(&theirs));
    let port = refusing.address.port();
    let mut by_port = list(&app, &format!("callback_host=127.0.0.1:{port}")).await;
    by_port.sort();
    let mut expected = ours.to_vec();
    expected.sort();
    assert_eq!(by_port, expected);

    let (status, body) = bulk(&app, "callback_host=127.0.0.1&dry_run=true", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["matched"].as_u64(), body["redelivered"].as_u64()),
        (Some(2), Some(0))
    );
    // Nothing moved on a dry run.
    for id in &ours {
        assert_eq!(
            app.get_json(&format!("/requests/{id}")).await["status"],
            "callback_failed"
        );
    }
    // One per call, then the rest.
    let (_, body) = bulk(&app, "callback_host=127.0.0.1&limit=1", Some(TOKEN)).await;
    assert_eq!(
        (
            body["matched"].as_u64(),
            body["redelivered"].as_u64(),
            body["remaining"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{body}"
    );
    // The one redelivered above may already have failed again (one attempt, the receiver
    // still refuses), and then matches again: one or two this time.
    let (_, body) = bulk(&app, "callback_host=127.0.0.1", Some(TOKEN)).await;
    assert!(
        matches!(body["redelivered"].as_u64(), Some(1 | 2)),
        "{body}"
    );
    // Each was attempted again (and failed again: the receiver still refuses).
    for id in &ours {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let record = app.get_json(&format!("/requests/{id}")).await;
            if record["callback_attempts"].as_u64() >= Some(2)
                && record["status"] == "callback_failed"
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{record}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let record = app.get_json(&format!("/requests/{theirs}")).await;
    assert_eq!(record["callback_attempts"], 1, "{record}");
    assert_eq!(
        app.get_json(&format!("/requests/{done}")).await["status"],
        "completed"
    );
    refusing.stop().await;
    other.stop().await;
    app.stop().await;
}

/// Receivers answering 404 and 503, one that takes its callbacks, and a port nobody listens
/// on: each filter finds exactly its own, on either backend.
#[tokio::test]
async fn the_last_answer_and_the_error_text_find_what_failed_and_how() {
    let app = TestServer::builder()
        .setting("admin-token", TOKEN)
        .setting("callback-max-retries", "0")
        .start()
        .await;
    let not_found = Receiver::start(Behaviour::always_fail(404)).await;
    let unavailable = Receiver::start(Behaviour::always_fail(503)).await;
    let taking = Receiver::start(Behaviour::accept()).await;
    let closed = format!("http://{}/callback", unused_port().await);
    let lost = app.submit("lost", &not_found.url()).await;
    let busy = app.submit("busy", &unavailable.url()).await;
    let taken = app.submit("taken", &taking.url()).await;
    let refused = app.submit("refused", &closed).await;
    for (id, status) in [
        (&lost, "callback_failed"),
        (&busy, "callback_failed"),
        (&taken, "callback_success"),
        (&refused, "callback_failed"),
    ] {
        app.wait_for_status(id, status, WAIT).await;
    }
    let worked = sync_request(&app, "no callback").await;

    assert_eq!(record(&app, &lost).await["callback_last_status"], 404);
    assert_eq!(record(&app, &taken).await["callback_last_status"], 200);
    // No answer, no status: its error says why.
    let no_answer = record(&app, &refused).await;
    assert!(
        no_answer.get("callback_last_status").is_none(),
        "{no_answer}"
    );
    assert!(
        record(&app, &worked)
            .await
            .get("callback_last_status")
            .is_none()
    );

    for (query, expected) in [
        ("last_status=404", vec![&lost]),
        ("last_status=4xx", vec![&lost]),
        ("last_status=5XX", vec![&busy]),
        ("last_status=503&status=callback_failed", vec![&busy]),
        ("last_status=503&order=oldest", vec![&busy]),
        ("last_status=500", vec![]),
        ("last_status=404&status=callback_success", vec![]),
        ("mode=sync&last_status=404", vec![]),
        ("error_contains=HTTP%20404", vec![&lost]),
        ("error_contains=http%20503", vec![&busy]),
        ("error_contains=CONNECTION", vec![&refused]),
        ("error_contains=connection&last_status=5xx", vec![]),
        // Wildcards are text: no error holds a `%`, a `_` or a `!` (the escape).
        ("error_contains=%25", vec![]),
        ("error_contains=_", vec![]),
        ("error_contains=!", vec![]),
        ("error_contains=%5C", vec![]),
    ] {
        let body = app.get_json(&format!("/requests?{query}")).await;
        let expected: Vec<String> = expected.into_iter().cloned().collect();
        assert_eq!(ids(&body), expected, "{query}: {body}");
        assert_eq!(body["total"], expected.len(), "{query}: {body}");
    }
    let mut with_errors = list(&app, "error_contains=%20").await;
    with_errors.sort();
    let mut failed = vec![lost.clone(), busy.clone(), refused.clone()];
    failed.sort();
    assert_eq!(
        with_errors, failed,
        "every error holds a space; no success does"
    );

    // Bad values are named, and nothing is listed.
    for (query, field) in [
        ("last_status=600", "last_status"),
        ("last_status=200", "last_status"),
        ("last_status=4XXX", "last_status"),
        ("last_status=404%0A", "last_status"),
        ("last_status=", "last_status"),
        ("error_contains=", "error_contains"),
        ("error_contains=%00", "error_contains"),
        ("error_contains=%1B%5B31m", "error_contains"),
        (
            &*format!("error_contains={}", "x".repeat(201)),
            "error_contains",
        ),
        (
            &*format!("id_prefix={}&last_status=404", &lost[..4]),
            "id_prefix",
        ),
    ] {
        let (status, body) = read(app.get(&format!("/requests?{query}")).await).await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["detail"][0]["loc"][1], field, "{query}: {body}");
    }

    // The operator's "redeliver what the receiver turned away while it was down".
    let (status, body) = bulk(&app, "last_status=503&dry_run=true", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["matched"], 1, "{body}");
    let (_, body) = bulk(&app, "error_contains=connection", Some(TOKEN)).await;
    assert_eq!(body["redelivered"], 1, "{body}");
    app.wait_for_status(&refused, "callback_failed", WAIT).await;
    assert_eq!(record(&app, &refused).await["callback_attempts"], 2);
    assert_eq!(record(&app, &lost).await["callback_attempts"], 1);

    not_found.stop().await;
    unavailable.stop().await;
    taking.stop().await;
    app.stop().await;
}

async fn record(app: &TestServer, id: &str) -> Value {
    app.get_json(&format!("/requests/{id}")).await
}

/// A list by status holds exactly the requests in that status, open or finished, alone and
/// with a mode or a callback host: each lifecycle write keeps a request in the indexes its
/// status is listed from (on SQLite, open and finished requests have indexes of their own,
/// and only the writes that end or reopen a request move it between them).
#[tokio::test]
async fn every_status_lists_exactly_its_requests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = fresh_database(dir.path()).await;
    let app = TestServer::builder()
        .database_url(&url)
        .setting("admin-token", destination_controls::TOKEN)
        .setting("work-duration-seconds", "6")
        .setting("callback-retry-base-delay", "60")
        .setting("callback-retry-max-delay", "120")
        .start()
        .await;
    let ok = Receiver::start(Behaviour::accept()).await;
    let failing = Receiver::start(Behaviour::always_fail(500)).await;
    let hanging = Receiver::start(Behaviour::hang(Duration::from_secs(60))).await;
    let submit = |body: Value| {
        let app = &app;
        async move {
            let (status, answer) = read(app.post_async(&body).await).await;
            assert_eq!(status, 200, "{answer}");
            answer["request_id"].as_str().expect("an id").to_string()
        }
    };
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();

    // Finished first: delivered, failed (then redelivered, and failed again), cancelled.
    let delivered = submit(json!({"data": "ok", "callback_url": ok.url()})).await;
    let failed = submit(json!({"data": "bad", "callback_url": failing.url(),
        "callback_max_retries": 0}))
    .await;
    let cancelled = submit(json!({"data": "off", "callback_url": ok.url(), "run_at": later})).await;
    let (status, _) = control::cancel(&app, &cancelled).await;
    assert_eq!(status, 200);
    let completed = sync_request(&app, "done").await;
    app.wait_for_status(&delivered, "callback_success", WAIT)
        .await;
    app.wait_for_status(&failed, "callback_failed", WAIT).await;
    let redeliver = |id: String| {
        let app = &app;
        async move {
            let (status, body) = read(
                app.client
                    .post(app.url(&format!("/requests/{id}/redeliver")))
                    .bearer_auth(destination_controls::TOKEN)
                    .send()
                    .await
                    .expect("redeliver"),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    redeliver(failed.clone()).await;
    failing.wait_for_attempts(2, WAIT).await;
    app.wait_for_status(&failed, "callback_failed", WAIT).await;

    // Then open: waiting for its time, its callback in flight, its retry waiting, and work
    // under way (async and sync), which the lists below must see within the work's 6 s.
    let pending = submit(json!({"data": "wait", "callback_url": ok.url(), "run_at": later})).await;
    // Failed, then redelivered to a paused destination: open again, and held there.
    let held = Receiver::start(Behaviour::always_fail(500)).await;
    let reopened = submit(json!({"data": "again", "callback_url": held.url(),
        "callback_max_retries": 0}))
    .await;
    app.wait_for_status(&reopened, "callback_failed", WAIT)
        .await;
    let (status, view) = destination_controls::control(&app, "pause", &destination_of(&held)).await;
    assert_eq!(status, 200, "{view}");
    redeliver(reopened.clone()).await;
    app.wait_for_status(&reopened, "callback_pending", WAIT)
        .await;
    let in_flight = submit(json!({"data": "hang", "callback_url": hanging.url()})).await;
    let retrying = submit(json!({"data": "retry", "callback_url": failing.url()})).await;
    app.wait_for_status(&in_flight, "callback_pending", WAIT)
        .await;
    app.wait_for_status(&retrying, "callback_pending", WAIT)
        .await;
    let working = submit(json!({"data": "work", "callback_url": ok.url()})).await;
    let sync_app = app.address.clone();
    let sync_working = tokio::spawn(async move {
        crate::helpers::client()
            .post(format!("{sync_app}/sync"))
            .json(&json!({"data": "sync work"}))
            .send()
            .await
            .expect("sync")
    });
    let sync_id = loop {
        let page = list(&app, "mode=sync&status=processing").await;
        if let [id] = page.as_slice() {
            break id.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    app.wait_for_status(&working, "processing", WAIT).await;

    let host = "127.0.0.1";
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    let expected: [(String, Vec<&String>); 12] = [
        ("status=pending".into(), vec![&pending]),
        ("status=processing".into(), vec![&working, &sync_id]),
        ("mode=async&status=processing".into(), vec![&working]),
        ("mode=sync&status=processing".into(), vec![&sync_id]),
        (
            "status=callback_pending".into(),
            vec![&in_flight, &retrying, &reopened],
        ),
        (
            format!("callback_host={host}&status=callback_pending"),
            vec![&in_flight, &retrying, &reopened],
        ),
        (
            format!("callback_host={host}&status=processing"),
            vec![&working],
        ),
        ("status=callback_success".into(), vec![&delivered]),
        (
            format!("callback_host={host}&status=callback_failed"),
            vec![&failed],
        ),
        ("status=cancelled".into(), vec![&cancelled]),
        ("status=completed".into(), vec![&completed]),
        ("status=failed".into(), vec![]),
    ];
    for (query, ids) in expected {
        let want = sorted(ids.into_iter().cloned().collect());
        assert_eq!(sorted(list(&app, &query).await), want, "{query}");
        // Oldest first too: the same rows, walked from the index's other end.
        let oldest = list(&app, &format!("{query}&order=oldest")).await;
        assert_eq!(sorted(oldest), want, "{query}, oldest first");
    }
    assert_eq!(sync_working.await.expect("joined").status(), 200);

    // On SQLite the flag the indexes are split by matches every status, whatever wrote it.
    if let Some(path) = url.strip_prefix("sqlite://") {
        let conn = rusqlite::Connection::open(path).expect("open the SQLite file");
        let mismatched: i64 = conn
            .query_row(
                "SELECT count(*) FROM requests
                 WHERE (unfinished IS NOT NULL)
                       <> (status IN ('pending', 'processing', 'callback_pending'))",
                [],
                |row| row.get(0),
            )
            .expect("count");
        assert_eq!(mismatched, 0);
    }
    app.stop().await;
    hanging.stop().await;
}
