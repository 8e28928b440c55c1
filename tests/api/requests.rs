//! `GET /requests`, `GET /requests/{id}`, `GET /healthz`, the JSON 404/405, and the bounded
//! queue's 503 (SPEC §3, §4).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Behaviour, Receiver, TestServer, ids, read, sync_request, unused_port};

const WAIT: Duration = Duration::from_secs(20);

/// Flags that keep an async request whose receiver is down in `callback_pending`: the first
/// retry comes no sooner than 15 s (half the 30 s nominal delay).
const SLOW_RETRIES: &[(&str, &str)] = &[
    ("callback-retry-base-delay", "30"),
    ("callback-retry-max-delay", "30"),
];

/// The exact 422 body for one bad query parameter.
/// The 422 for one query parameter: its `type` and `msg`, the value sent as `input`, and for
/// pydantic's own types (the original's `limit` and `offset`) the rule's `ctx` and `url`.
fn query_error(param: &str, kind: &str, msg: &str, input: &str, ctx: Option<Value>) -> Value {
    let mut item = json!({"type": kind, "loc": ["query", param], "msg": msg, "input": input});
    if let Some(ctx) = ctx {
        item["ctx"] = ctx;
    }
    if !matches!(kind, "enum") {
        item["url"] = json!(format!("https://errors.pydantic.dev/2.6/v/{kind}"));
    }
    json!({"status": "error", "error": format!("{param}: {msg}"), "detail": [item]})
}

/// Four sync and three async requests, interleaved; returns the ids in submission order
/// and which of them are async. Every async request has been delivered on return.
async fn mixed_history(app: &TestServer, receiver: &Receiver) -> (Vec<String>, HashSet<String>) {
    let mut all = Vec::new();
    let mut asyncs = HashSet::new();
    for n in 0..7 {
        if n % 2 == 1 {
            let id = app.submit(&format!("async {n}"), &receiver.url()).await;
            asyncs.insert(id.clone());
            all.push(id);
        } else {
            all.push(sync_request(app, &format!("sync {n}")).await);
        }
    }
    for id in &asyncs {
        app.wait_for_status(id, "callback_success", WAIT).await;
    }
    (all, asyncs)
}

#[tokio::test]
async fn requests_are_listed_newest_first_with_their_total() {
    let app = TestServer::builder().start().await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let (submitted, asyncs) = mixed_history(&app, &receiver).await;

    let list = app.get_json("/requests").await;
    assert_eq!(list["total"], 7);
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();
    assert_eq!(ids(&list), newest_first);

    let records = list["requests"].as_array().unwrap();
    let created: Vec<&str> = records
        .iter()
        .map(|r| r["created_at"].as_str().unwrap())
        .collect();
    for pair in created.windows(2) {
        let (newer, older) = (
            syncasync::timestamps::parse(pair[0]).unwrap(),
            syncasync::timestamps::parse(pair[1]).unwrap(),
        );
        assert!(newer >= older, "created_at not descending: {created:?}");
    }

    // Every record has exactly the RequestRecord fields; the attempt list is only on the
    // single-request view.
    let expected_keys: HashSet<&str> = [
        "id",
        "mode",
        "status",
        "payload_hash",
        "created_at",
        "completed_at",
        "callback_url",
        "callback_attempts",
        "callback_last_error",
        "result",
    ]
    .into();
    for record in records {
        let keys: HashSet<&str> = record
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let id = record["id"].as_str().unwrap();
        // An async request whose delivery ended adds when it did, and what its receiver last
        // answered (beyond the original).
        let mut expected = expected_keys.clone();
        if asyncs.contains(id) {
            expected.insert("delivered_at");
            expected.insert("callback_last_status");
        }
        assert_eq!(keys, expected, "{record}");
        if asyncs.contains(id) {
            assert_eq!(record["mode"], "async");
            assert_eq!(record["status"], "callback_success");
            assert_eq!(record["callback_url"], receiver.url());
            assert_eq!(record["callback_attempts"], 1);
        } else {
            assert_eq!(record["mode"], "sync");
            assert_eq!(record["status"], "completed");
            assert_eq!(record["callback_url"], Value::Null);
            assert_eq!(record["callback_attempts"], 0);
        }
        assert_eq!(record["result"]["request_id"], id);
        crate::helpers::parse_time(&record["created_at"]);
        crate::helpers::parse_time(&record["completed_at"]);
        assert_eq!(record["payload_hash"].as_str().unwrap().len(), 16);

        let single = app.get_json(&format!("/requests/{id}")).await;
        assert!(single["attempts"].is_array(), "{single}");
        let mut without_attempts = single.clone();
        without_attempts.as_object_mut().unwrap().remove("attempts");
        assert_eq!(&without_attempts, record, "list and single view agree");
    }
}

#[tokio::test]
async fn pages_do_not_overlap_and_together_cover_everything() {
    let app = TestServer::builder().start().await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let (submitted, _) = mixed_history(&app, &receiver).await;
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();

    let mut paged = Vec::new();
    for (offset, expected_len) in [(0, 3), (3, 3), (6, 1)] {
        let page = app
            .get_json(&format!("/requests?limit=3&offset={offset}"))
            .await;
        assert_eq!(page["total"], 7, "total counts every match, not the page");
        let page_ids = ids(&page);
        assert_eq!(page_ids.len(), expected_len, "offset {offset}");
        paged.extend(page_ids);
    }
    assert_eq!(paged, newest_first);

    // Past the end: an empty page, the same total.
    for offset in [7, 1000] {
        let page = app
            .get_json(&format!("/requests?limit=3&offset={offset}"))
            .await;
        assert_eq!(page, json!({"total": 7, "requests": []}));
    }
    // One at a time, the same order.
    let mut one_by_one = Vec::new();
    for offset in 0..7 {
        let page = app
            .get_json(&format!("/requests?limit=1&offset={offset}"))
            .await;
        one_by_one.extend(ids(&page));
    }
    assert_eq!(one_by_one, newest_first);
}

#[tokio::test]
async fn mode_and_status_filters_select_and_combine() {
    let app = TestServer::builder().start().await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let (submitted, asyncs) = mixed_history(&app, &receiver).await;
    let newest_first = |keep_async: bool| -> Vec<String> {
        submitted
            .iter()
            .rev()
            .filter(|id| asyncs.contains(*id) == keep_async)
            .cloned()
            .collect()
    };

    let sync = app.get_json("/requests?mode=sync").await;
    assert_eq!(sync["total"], 4);
    assert_eq!(ids(&sync), newest_first(false));

    let async_ = app.get_json("/requests?mode=async").await;
    assert_eq!(async_["total"], 3);
    assert_eq!(ids(&async_), newest_first(true));

    let completed = app.get_json("/requests?status=completed").await;
    assert_eq!(completed["total"], 4);
    assert_eq!(ids(&completed), newest_first(false));

    let delivered = app
        .get_json("/requests?mode=async&status=callback_success")
        .await;
    assert_eq!(delivered["total"], 3);
    assert_eq!(ids(&delivered), newest_first(true));

    let sync_completed = app.get_json("/requests?status=completed&mode=sync").await;
    assert_eq!(ids(&sync_completed), newest_first(false));

    // Combinations that match nothing are empty, not an error.
    for query in [
        "mode=async&status=completed",
        "mode=sync&status=callback_success",
        "status=failed",
        "status=pending",
        "status=callback_failed",
    ] {
        let list = app.get_json(&format!("/requests?{query}")).await;
        assert_eq!(list, json!({"total": 0, "requests": []}), "{query}");
    }

    // Filters and paging together; unknown parameters are ignored.
    let page = app
        .get_json("/requests?mode=sync&limit=2&offset=1&sort=asc")
        .await;
    assert_eq!(page["total"], 4);
    assert_eq!(ids(&page), newest_first(false)[1..3]);
}

#[tokio::test]
async fn the_default_limit_is_100() {
    let app = TestServer::builder().start().await;
    let mut submitted = Vec::new();
    for n in 0..101 {
        submitted.push(sync_request(&app, &format!("request {n}")).await);
    }
    let newest_first: Vec<String> = submitted.iter().rev().cloned().collect();

    let list = app.get_json("/requests").await;
    assert_eq!(list["total"], 101);
    assert_eq!(ids(&list), newest_first[..100]);

    let all = app.get_json("/requests?limit=1000").await;
    assert_eq!(ids(&all), newest_first);
    let rest = app.get_json("/requests?offset=100").await;
    assert_eq!(ids(&rest), newest_first[100..]);
}

#[tokio::test]
async fn invalid_query_values_get_422_naming_the_parameter() {
    let app = TestServer::builder().start().await;
    let mode =
        |input: &str| query_error("mode", "enum", "must be one of: sync, async", input, None);
    let status = |input: &str| {
        query_error(
            "status",
            "enum",
            "must be one of: pending, processing, completed, failed, callback_pending, \
             callback_success, callback_failed, cancelled",
            input,
            None,
        )
    };
    // `limit` and `offset` as the original's pydantic read them.
    let parsing = "Input should be a valid integer, unable to parse string as an integer";
    let cases = [
        ("mode=batch", mode("batch")),
        ("mode=", mode("")),
        ("mode=SYNC", mode("SYNC")),
        ("status=done", status("done")),
        ("status=", status("")),
        ("status=Completed", status("Completed")),
        (
            "limit=0",
            query_error(
                "limit",
                "greater_than_equal",
                "Input should be greater than or equal to 1",
                "0",
                Some(json!({"ge": 1})),
            ),
        ),
        (
            "limit=1001",
            query_error(
                "limit",
                "less_than_equal",
                "Input should be less than or equal to 1000",
                "1001",
                Some(json!({"le": 1000})),
            ),
        ),
        (
            "limit=abc",
            query_error("limit", "int_parsing", parsing, "abc", None),
        ),
        (
            "limit=-1",
            query_error(
                "limit",
                "greater_than_equal",
                "Input should be greater than or equal to 1",
                "-1",
                Some(json!({"ge": 1})),
            ),
        ),
        (
            "limit=1.5",
            query_error("limit", "int_parsing", parsing, "1.5", None),
        ),
        (
            "limit=",
            query_error("limit", "int_parsing", parsing, "", None),
        ),
        (
            "offset=-1",
            query_error(
                "offset",
                "greater_than_equal",
                "Input should be greater than or equal to 0",
                "-1",
                Some(json!({"ge": 0})),
            ),
        ),
        (
            "offset=abc",
            query_error("offset", "int_parsing", parsing, "abc", None),
        ),
        (
            "offset=99999999999999999999",
            query_error(
                "offset",
                "less_than_equal",
                "Input should be less than or equal to 9223372036854775807",
                "99999999999999999999",
                Some(json!({"le": i64::MAX})),
            ),
        ),
    ];
    for (query, expected) in cases {
        let (code, body) = read(app.get(&format!("/requests?{query}")).await).await;
        assert_eq!(code, 422, "{query}: {body}");
        assert_eq!(body, expected, "{query}");
    }

    // Every bad parameter is named at once.
    let (code, body) = read(app.get("/requests?mode=batch&limit=0").await).await;
    assert_eq!(code, 422);
    let named: Vec<&Value> = body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["loc"])
        .collect();
    assert_eq!(
        named,
        [&json!(["query", "mode"]), &json!(["query", "limit"])]
    );
    assert_eq!(
        body["error"],
        "mode: must be one of: sync, async; limit: Input should be greater than or equal to 1"
    );

    // The original read `limit=1.0` as 1.
    let (code, body) = read(app.get("/requests?limit=1.0").await).await;
    assert_eq!(code, 200, "{body}");

    // The bounds themselves are fine.
    for query in ["limit=1", "limit=1000", "offset=0"] {
        let (code, body) = read(app.get(&format!("/requests?{query}")).await).await;
        assert_eq!(code, 200, "{query}");
        assert_eq!(body, json!({"total": 0, "requests": []}), "{query}");
    }
}

#[tokio::test]
async fn an_unknown_request_id_gets_404_request_not_found() {
    let app = TestServer::builder().start().await;
    sync_request(&app, "something on record").await;
    for id in [
        "00000000-0000-0000-0000-000000000000",
        "not-a-uuid",
        "'%20OR%201=1",
        "%E2%9C%93",
    ] {
        let (code, body) = read(app.get(&format!("/requests/{id}")).await).await;
        assert_eq!(code, 404, "{id}");
        assert_eq!(
            body,
            json!({"status": "error", "error": "Request not found", "request_id": null}),
            "{id}"
        );
    }
}

/// A record read while its attempts are being written counts exactly the attempts it lists:
/// the request and its audit are read in one snapshot, never an attempt between the two.
#[tokio::test]
async fn a_record_read_during_retries_counts_every_attempt_it_lists() {
    const ATTEMPTS: u32 = 20;
    let receiver = Receiver::start(Behaviour::fail_first(ATTEMPTS - 1)).await;
    let app = TestServer::builder()
        .setting("callback-max-retries", (ATTEMPTS - 1).to_string())
        .setting("callback-retry-base-delay", "0.01")
        .setting("callback-retry-max-delay", "0.01")
        .setting("callback-breaker-threshold", "100000")
        .start()
        .await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(app.submit(&format!("retried {n}"), &receiver.url()).await);
    }
    let deadline = std::time::Instant::now() + WAIT;
    let poll = |start: usize| {
        let (app, ids) = (&app, &ids);
        async move {
            let mut reads = 0_u32;
            let mut delivered = HashSet::new();
            for id in ids.iter().cycle().skip(start) {
                if delivered.len() == ids.len() {
                    break;
                }
                let record = app.get_json(&format!("/requests/{id}")).await;
                let listed = record["attempts"].as_array().map_or(0, Vec::len);
                assert_eq!(
                    record["callback_attempts"], listed,
                    "read {reads}: the count disagrees with the attempts listed: {record}"
                );
                reads += 1;
                if record["status"] == "callback_success" {
                    delivered.insert(id.clone());
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "not delivered in time: {record}"
                );
            }
            reads
        }
    };
    let reads: u32 = futures_util::future::join_all((0..8).map(|n| poll(n * 3)))
        .await
        .into_iter()
        .sum();
    for id in &ids {
        let record = app.get_json(&format!("/requests/{id}")).await;
        assert_eq!(record["callback_attempts"], ATTEMPTS, "{record}");
    }
    eprintln!("{reads} records read during the retries");
    receiver.stop().await;
}

/// A page read while its requests move between statuses holds no more requests than the
/// total it reports: the page and its total are read in one snapshot.
#[tokio::test]
async fn a_list_read_while_requests_move_never_holds_more_than_its_total() {
    const BATCHES: u64 = 5;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder().start().await;
    for batch in 0..BATCHES {
        let items: Vec<Value> = (0..400)
            .map(|n| json!({"data": format!("moving {batch}.{n}"), "iterations": 1000, "callback_url": receiver.url()}))
            .collect();
        let (code, answer) = read(
            app.post_json("/async/batch", &json!({"requests": items}))
                .await,
        )
        .await;
        assert_eq!(code, 200, "{answer}");
    }
    let deadline = std::time::Instant::now() + WAIT;
    let read_lists = |status: &'static str| {
        let app = &app;
        async move {
            let mut reads = 0_u32;
            loop {
                // The kept counts give the total of a status alone; a callback host makes it
                // a count of rows.
                for query in [
                    format!("status={status}&limit=3"),
                    format!("status={status}&callback_host=127.0.0.1&limit=3"),
                ] {
                    let list = app.get_json(&format!("/requests?{query}")).await;
                    let held = list["requests"].as_array().map_or(0, Vec::len);
                    assert!(
                        list["total"]
                            .as_u64()
                            .is_some_and(|total| total >= held as u64),
                        "read {reads} of {query}: {held} requests on a page of {list}"
                    );
                    reads += 1;
                }
                let delivered = app
                    .get_json("/requests?status=callback_success&limit=1")
                    .await["total"]
                    .as_u64();
                if delivered == Some(BATCHES * 400) {
                    return reads;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "not delivered in time"
                );
            }
        }
    };
    let (pending, processing, callback_pending) = tokio::join!(
        read_lists("pending"),
        read_lists("processing"),
        read_lists("callback_pending")
    );
    eprintln!("{pending} + {processing} + {callback_pending} lists read while the requests moved");
    receiver.stop().await;
}

/// A browser opening the service's address lands on the dashboard; an API client or a
/// monitor gets the original's 404 for `/`.
#[tokio::test]
async fn a_browser_at_the_root_is_sent_to_the_dashboard() {
    let app = TestServer::builder().start().await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page_load = no_redirects
        .get(app.url("/"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(page_load.status(), 302);
    assert_eq!(page_load.headers()["location"], "/ui");
    let api = no_redirects
        .get(app.url("/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 404);
    let head = no_redirects
        .head(app.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_ne!(head.status(), 302, "only a page load is sent on");
}

#[tokio::test]
async fn unknown_routes_get_404_and_wrong_methods_get_405_in_json() {
    let app = TestServer::builder().start().await;
    for path in ["/", "/nope", "/requests/a/b", "/sync/extra", "/admin"] {
        let (code, body) = read(app.get(path).await).await;
        assert_eq!(code, 404, "{path}");
        // As the original's framework answered an unknown path.
        assert_eq!(body, json!({"detail": "Not Found"}), "{path}");
    }
    let method_not_allowed = json!({"detail": "Method Not Allowed"});
    let attempts = [
        (app.client.get(app.url("/sync")), "POST"),
        (app.client.get(app.url("/async")), "POST"),
        (app.client.put(app.url("/sync")), "POST"),
        (app.client.delete(app.url("/requests")), "GET"),
        (app.client.post(app.url("/requests")), "GET"),
        (app.client.post(app.url("/healthz")), "GET"),
    ];
    for (request, allowed) in attempts {
        let request = request.build().unwrap();
        let shown = format!("{} {}", request.method(), request.url().path());
        let response = app.client.execute(request).await.unwrap();
        // RFC 9110: a 405 lists the methods the resource does support.
        let allow = response
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(
            allow.split(',').any(|m| m.trim() == allowed),
            "{shown}: Allow: {allow:?}"
        );
        let (code, body) = read(response).await;
        assert_eq!(code, 405, "{shown}");
        assert_eq!(body, method_not_allowed, "{shown}");
    }
}

#[tokio::test]
async fn healthz_reports_its_fields_with_their_types() {
    let app = TestServer::builder()
        .setting("async-queue-max-size", "50")
        .start()
        .await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
    let health: Value = response.json().await.unwrap();
    assert_eq!(
        health,
        json!({
            "status": "healthy",
            "version": env!("CARGO_PKG_VERSION"),
            "queue_size": 0,
            "queue_capacity": 50,
            "active_workers": 0,
            "database_ok": true,
        })
    );
    assert!(health["queue_size"].is_u64());
    assert!(health["active_workers"].is_u64());
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_writes_nothing() {
    let app = TestServer::builder()
        .setting("async-queue-max-size", "2")
        .settings(SLOW_RETRIES)
        .start()
        .await;
    let down = format!("http://{}/callback", unused_port().await);

    // Two requests whose receiver is down stay unfinished and fill the queue.
    let first = app.submit("one", &down).await;
    let second = app.submit("two", &down).await;

    let response = app
        .post_async(&json!({"data": "three", "callback_url": down}))
        .await;
    assert_eq!(response.status(), 503);
    let retry_after = response
        .headers()
        .get("retry-after")
        .expect("Retry-After header")
        .to_str()
        .unwrap();
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After: {retry_after}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "error", "error": "Server overloaded, please retry later", "request_id": null})
    );

    // Nothing was written for the refused request.
    let list = app.get_json("/requests?mode=async").await;
    assert_eq!(list["total"], 2);
    let mut listed = ids(&list);
    listed.sort();
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(app.get_json("/requests").await["total"], 2);

    // Sync requests do not use the async queue and still work.
    sync_request(&app, "sync still works").await;

    // The two are really still unfinished (their first attempt failed, the retry is far off).
    for id in [&first, &second] {
        app.wait_for_status(id, "callback_pending", WAIT).await;
    }
    let response = app
        .post_async(&json!({"data": "four", "callback_url": down}))
        .await;
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn a_full_compute_queue_answers_sync_with_the_same_503() {
    // One compute thread and one waiting slot: of sixteen million-round requests sent at
    // once, all but the first two (each takes at least tens of milliseconds) are refused.
    let app = TestServer::builder()
        .setting("compute-threads", "1")
        .setting("compute-queue-size", "1")
        .start()
        .await;
    let app = &app;
    let answers = futures_util::future::join_all((0..16).map(|i| async move {
        let body = json!({"data": format!("heavy {i}"), "iterations": 1_000_000});
        let response = app.post_sync(&body).await;
        let retry_after = response.headers().get("retry-after").cloned();
        let (status, body) = read(response).await;
        (status, body, retry_after)
    }))
    .await;
    let refused: Vec<_> = answers
        .iter()
        .filter(|(status, ..)| *status == 503)
        .collect();
    assert!(!refused.is_empty(), "{answers:?}");
    for (_, body, retry_after) in refused {
        assert!(retry_after.is_some(), "a 503 carries Retry-After");
        assert_eq!(
            *body,
            json!({"status": "error", "error": "Server overloaded, please retry later", "request_id": null})
        );
    }
    for (status, body, _) in &answers {
        assert!(*status == 200 || *status == 503, "{status}: {body}");
    }
}

#[tokio::test]
async fn healthz_is_degraded_over_90_percent_full_and_still_200() {
    let app = TestServer::builder()
        .setting("async-queue-max-size", "2")
        .settings(SLOW_RETRIES)
        .start()
        .await;
    let down = format!("http://{}/callback", unused_port().await);

    let health = app.get_json("/healthz").await;
    assert_eq!(health["status"], "healthy");

    // 1 of 2 is 50%: still healthy.
    let first = app.submit("one", &down).await;
    let health = app.get_json("/healthz").await;
    assert_eq!(health["queue_size"], 1);
    assert_eq!(health["status"], "healthy");

    // 2 of 2 is over 90%: degraded, still served with 200.
    app.submit("two", &down).await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
    let health: Value = response.json().await.unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["queue_size"], 2);
    assert_eq!(health["queue_capacity"], 2);
    assert_eq!(health["database_ok"], true);

    // Still degraded once the first attempts have failed and the retries wait.
    app.wait_for_status(&first, "callback_pending", WAIT).await;
    assert_eq!(app.get_json("/healthz").await["status"], "degraded");
}

#[tokio::test]
async fn healthz_is_healthy_at_exactly_90_percent() {
    let app = TestServer::builder()
        .setting("async-queue-max-size", "10")
        .settings(SLOW_RETRIES)
        .start()
        .await;
    let down = format!("http://{}/callback", unused_port().await);
    for n in 0..9 {
        app.submit(&format!("request {n}"), &down).await;
    }
    let health = app.get_json("/healthz").await;
    assert_eq!(health["queue_size"], 9);
    assert_eq!(health["status"], "healthy", "90% is not over 90%");
    app.submit("the tenth", &down).await;
    assert_eq!(app.get_json("/healthz").await["status"], "degraded");
}
