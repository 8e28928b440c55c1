//! `POST /admin/cleanup` (SPEC §6): hidden without a token, bearer-protected with one, and
//! the retention rules it runs: old and surplus finished requests go, unfinished ones stay.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Behaviour, Receiver, TestServer, ids, read, sync_request, unused_port};

const WAIT: Duration = Duration::from_secs(20);

/// `POST /admin/cleanup` with the given Authorization header (none if `None`).
async fn cleanup(app: &TestServer, authorization: Option<&str>) -> reqwest::Response {
    let mut request = app.client.post(app.url("/admin/cleanup"));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.expect("request sent")
}

/// Runs the cleanup with the right token and returns its report.
async fn cleanup_ok(app: &TestServer, token: &str) -> Value {
    let (status, body) = read(cleanup(app, Some(&format!("Bearer {token}"))).await).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Runs the cleanup and checks its report against what it removed.
///
/// The background retention job also runs once at start-up (and, with retention 0, may
/// already have removed a request that finished before it ran), so the report is compared
/// with the records listed just before the cleanup, not with what the test created.
async fn cleanup_and_compare(app: &TestServer, token: &str) -> (Value, Vec<String>) {
    let before = ids(&app.get_json("/requests?limit=1000").await);
    let report = cleanup_ok(app, token).await;
    let after = ids(&app.get_json("/requests?limit=1000").await);
    let removed = before.iter().filter(|id| !after.contains(id)).count();
    assert_eq!(report["status"], "ok", "{report}");
    assert_eq!(report["deleted"], removed, "{report}");
    assert_eq!(
        report["deleted"].as_u64(),
        Some(report["expired"].as_u64().unwrap() + report["over_limit"].as_u64().unwrap()),
        "{report}"
    );
    (report, after)
}

/// Waits until a delivered request is recorded as `callback_success`, or already deleted by
/// the start-up run of the retention job (possible with retention 0).
async fn wait_until_finished_or_gone(app: &TestServer, id: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let response = app.get(&format!("/requests/{id}")).await;
        if response.status() == 404 {
            return;
        }
        let record: Value = response.json().await.unwrap();
        if record["status"] == "callback_success" {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{id} stuck: {record}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn unauthorized() -> Value {
    json!({"status": "error", "error": "Invalid or missing bearer token"})
}

#[tokio::test]
async fn without_a_configured_token_the_admin_endpoint_does_not_exist() {
    let app = TestServer::builder().start().await;
    for authorization in [None, Some("Bearer "), Some("Bearer s3cret"), Some("Bearer")] {
        let (status, body) = read(cleanup(&app, authorization).await).await;
        assert_eq!(status, 404, "{authorization:?}");
        assert_eq!(body, json!({"detail": "Not Found"}), "{authorization:?}");
    }
}

#[tokio::test]
async fn an_empty_token_setting_does_not_open_the_endpoint() {
    let app = TestServer::builder()
        .setting("admin-token", "")
        .start()
        .await;
    for authorization in [None, Some("Bearer "), Some("Bearer")] {
        let (status, _) = read(cleanup(&app, authorization).await).await;
        assert_eq!(status, 404, "{authorization:?}");
    }
}

#[tokio::test]
async fn with_a_token_cleanup_needs_the_right_bearer_token() {
    let app = TestServer::builder()
        .setting("admin-token", "s3cret")
        .start()
        .await;

    for authorization in [
        None,
        Some(""),
        Some("Bearer"),
        Some("Bearer "),
        Some("Bearer wrong"),
        Some("Bearer s3cre"),
        Some("Bearer s3cret2"),
        Some("Bearer S3CRET"),
        Some("s3cret"),
        Some("Basic czNjcmV0"),
        Some("Token s3cret"),
    ] {
        let response = cleanup(&app, authorization).await;
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{authorization:?}"
        );
        let (status, body) = read(response).await;
        assert_eq!(status, 401, "{authorization:?}");
        assert_eq!(body, unauthorized(), "{authorization:?}");
    }

    let (status, body) = read(cleanup(&app, Some("Bearer s3cret")).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "ok", "deleted": 0, "expired": 0, "over_limit": 0})
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = TestServer::builder()
        .setting("admin-token", "s3cret")
        .start()
        .await;
    for authorization in ["bearer s3cret", "BEARER s3cret"] {
        let (status, body) = read(cleanup(&app, Some(authorization)).await).await;
        assert_eq!(status, 200, "{authorization}: {body}");
    }
}

#[tokio::test]
async fn without_a_token_no_method_reveals_the_admin_endpoint() {
    let app = TestServer::builder().start().await;
    let (status, _) = read(app.get("/admin/cleanup").await).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn cleanup_keeps_only_the_newest_max_stored_requests() {
    let app = TestServer::builder()
        .setting("admin-token", "t")
        .setting("max-stored-requests", "3")
        .start()
        .await;
    let mut submitted = Vec::new();
    for n in 0..5 {
        submitted.push(sync_request(&app, &format!("request {n}")).await);
    }
    assert_eq!(app.get_json("/requests").await["total"], 5);

    let (report, kept) = cleanup_and_compare(&app, "t").await;
    // Normally all five are there before and two go; see `cleanup_and_compare`.
    assert_eq!(report["expired"], 0);
    let newest: Vec<String> = submitted[2..].iter().rev().cloned().collect();
    assert_eq!(kept, newest, "the three newest are kept");
    let list = app.get_json("/requests").await;
    assert_eq!(list["total"], 3);
    for old in &submitted[..2] {
        let response = app.get(&format!("/requests/{old}")).await;
        assert_eq!(response.status(), 404, "{old} was deleted");
    }

    // Running it again finds nothing more to do.
    let report = cleanup_ok(&app, "t").await;
    assert_eq!(report["deleted"], 0);
    assert_eq!(app.get_json("/requests").await["total"], 3);
}

#[tokio::test]
async fn cleanup_never_deletes_an_unfinished_async_request() {
    let app = TestServer::builder()
        .setting("admin-token", "t")
        .setting("request-retention-hours", "0")
        // The receiver of the unfinished request is down; its first retry is >= 15 s away.
        .setting("callback-retry-base-delay", "30")
        .setting("callback-retry-max-delay", "30")
        .start()
        .await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let down = format!("http://{}/callback", unused_port().await);

    let sync_a = sync_request(&app, "sync a").await;
    let delivered = app.submit("delivered", &receiver.url()).await;
    let unfinished = app.submit("unfinished", &down).await;
    let sync_b = sync_request(&app, "sync b").await;
    receiver.wait_for_deliveries(1, WAIT).await;
    wait_until_finished_or_gone(&app, &delivered).await;
    app.wait_for_status(&unfinished, "callback_pending", WAIT)
        .await;
    // Retention 0 deletes what finished before "now", to the millisecond.
    tokio::time::sleep(Duration::from_millis(5)).await;

    // Normally the three finished requests are deleted here; see `cleanup_and_compare`.
    let (report, kept) = cleanup_and_compare(&app, "t").await;
    assert_eq!(report["over_limit"], 0);
    assert_eq!(kept, std::slice::from_ref(&unfinished));
    let list = app.get_json("/requests").await;
    assert_eq!(list["total"], 1);
    assert_eq!(ids(&list), std::slice::from_ref(&unfinished));
    assert_eq!(list["requests"][0]["status"], "callback_pending");
    for gone in [&sync_a, &delivered, &sync_b] {
        assert_eq!(app.get(&format!("/requests/{gone}")).await.status(), 404);
    }

    // However often it runs.
    let report = cleanup_ok(&app, "t").await;
    assert_eq!(report["deleted"], 0);
    let record = app.get_json(&format!("/requests/{unfinished}")).await;
    assert_eq!(record["status"], "callback_pending");
    assert_eq!(app.get_json("/healthz").await["queue_size"], 1);
}

#[tokio::test]
async fn the_stored_request_cap_also_spares_unfinished_requests() {
    let app = TestServer::builder()
        .setting("admin-token", "t")
        .setting("max-stored-requests", "0")
        .setting("callback-retry-base-delay", "30")
        .setting("callback-retry-max-delay", "30")
        .start()
        .await;
    let down = format!("http://{}/callback", unused_port().await);
    let unfinished = app.submit("unfinished", &down).await;
    sync_request(&app, "finished 1").await;
    sync_request(&app, "finished 2").await;
    app.wait_for_status(&unfinished, "callback_pending", WAIT)
        .await;

    let (report, kept) = cleanup_and_compare(&app, "t").await;
    assert_eq!(report["expired"], 0);
    assert_eq!(kept, [unfinished]);
}
