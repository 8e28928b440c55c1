//! The filters the dashboard's list uses, on `GET /requests` for every client: creation time,
//! callback host, id prefix, and keyset paging (`before`); and `POST /admin/redeliver`,
//! which redelivers every `callback_failed` request that matches them.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{Behaviour, Receiver, TestServer, ids, read, sync_request};

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
