//! Drop-in in every detail: a client of the original service sees the original's answers
//! (issue 21). Input validation is compared case by case with pydantic itself
//! (`tests/compat/pydantic_cases.py`, run here); the framework's answers (unknown paths and
//! methods, a trailing slash, a body that is not JSON) with what FastAPI 0.110 answered,
//! recorded below.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Behaviour, Receiver, TestServer, raw_sql, read};

const WAIT: Duration = Duration::from_secs(10);

/// The cases pydantic answered, or `None` (printed) where no Python has pydantic 2.6.4: the
/// one `SYNCASYNC_COMPAT_PYTHON` names (`.ci/run` makes a virtualenv with it, so that the
/// system's own pydantic is left alone), else `python3`.
fn pydantic_cases() -> Option<Vec<Value>> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/compat/pydantic_cases.py"
    );
    let python = std::env::var("SYNCASYNC_COMPAT_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python).arg(script).output();
    match output {
        Ok(output) if output.status.success() => {
            Some(serde_json::from_slice(&output.stdout).expect("the script's cases"))
        }
        other => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must provide pydantic==2.6.4 (.ci/run makes a virtualenv with it): {other:?}"
            );
            eprintln!(
                "skipped: {python} has no pydantic 2.6.4; set SYNCASYNC_COMPAT_PYTHON to a \
                 Python that has it ({other:?})"
            );
            None
        }
    }
}

#[tokio::test]
async fn every_input_is_answered_as_the_originals_validation_answered_it() {
    let Some(cases) = pydantic_cases() else {
        return;
    };
    assert!(cases.len() > 100, "{} cases", cases.len());
    let app = TestServer::builder()
        .setting("callback-block-private-ips", "false")
        .start()
        .await;
    for case in cases {
        let path = case["path"].as_str().unwrap();
        let response = match case.get("query") {
            Some(query) => {
                let (name, value) = query.as_object().unwrap().iter().next().unwrap();
                let query: String = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair(name, value.as_str().unwrap())
                    .finish();
                app.get(&format!("{path}?{query}")).await
            }
            None => app.post_json(path, &case["body"]).await,
        };
        let (status, body) = read(response).await;
        let expected = case["status"].as_u64().unwrap();
        assert_eq!(u64::from(status), expected, "{case}\nanswered {body}");
        match (expected, path) {
            (200, "/sync") => {
                assert_eq!(body["result"]["iterations"], case["iterations"], "{case}")
            }
            (422, _) => {
                let ours = body["detail"].as_array().expect("detail");
                let theirs = case["detail"].as_array().unwrap();
                assert_eq!(ours.len(), theirs.len(), "{case}\nanswered {body}");
                for (ours, theirs) in ours.iter().zip(theirs) {
                    assert_eq!(ours, theirs, "{case}\nanswered {body}");
                }
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_are_answered_as_the_framework_did() {
    let app = TestServer::builder().start().await;
    let response = app.get("/nowhere").await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"detail": "Not Found"})
    );

    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/sync", "POST"),
        (reqwest::Method::GET, "/async", "POST"),
        (reqwest::Method::PUT, "/requests/anything", "GET"),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert!(
            response.headers()["allow"]
                .to_str()
                .unwrap()
                .contains(allow),
            "{method} {path}: {:?}",
            response.headers().get("allow")
        );
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"detail": "Method Not Allowed"})
        );
    }
}

#[tokio::test]
async fn a_trailing_slash_is_redirected_to_the_path_without_it() {
    let app = TestServer::builder().start().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (method, path, location) in [
        (reqwest::Method::POST, "/sync/", "/sync"),
        (reqwest::Method::POST, "/async/", "/async"),
        (
            reqwest::Method::GET,
            "/requests/?limit=5",
            "/requests?limit=5",
        ),
        (
            reqwest::Method::GET,
            "/requests/some-id/",
            "/requests/some-id",
        ),
        (reqwest::Method::GET, "/healthz/", "/healthz"),
    ] {
        let response = client
            .request(method.clone(), app.url(path))
            .json(&json!({"data": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 307, "{method} {path}");
        assert_eq!(response.headers()["location"], location, "{method} {path}");
    }
    // Not an API path with or without the slash: a plain 404.
    for path in ["/nowhere/", "/", "/requests/a/b/"] {
        let response = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    // Followed, as the original's clients follow it, the request arrives whole.
    let (status, body) = read(app.post_json("/sync/", &json!({"data": "x"})).await).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn bodies_are_read_as_the_original_read_them() {
    let app = TestServer::builder().start().await;
    let post = |body: &'static [u8]| {
        app.client
            .post(app.url("/sync"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // A UTF-8 byte order mark before the JSON.
    let (status, body) = read(post(b"\xef\xbb\xbf{\"data\": \"x\"}").await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    // Nothing at all: the body is missing.
    let (status, body) = read(post(b"").await.unwrap()).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["detail"],
        json!([{"type": "missing", "loc": ["body"], "msg": "Field required", "input": null,
                "url": "https://errors.pydantic.dev/2.6/v/missing"}])
    );
    // Not JSON: located in the body, FastAPI's message, the parser's complaint in ctx.
    let (status, body) = read(post(b"{\"data\": \"x\",").await.unwrap()).await;
    assert_eq!(status, 422);
    let detail = &body["detail"][0];
    assert_eq!(detail["type"], "json_invalid");
    assert_eq!(detail["loc"][0], "body");
    assert!(detail["loc"][1].is_u64(), "{detail}");
    assert_eq!(detail["msg"], "JSON decode error");
    assert_eq!(detail["input"], json!({}));
    assert!(detail["ctx"]["error"].is_string(), "{detail}");
    // Our summary stays beside the original's detail.
    assert_eq!(body["status"], "error");
    assert!(
        body["error"].as_str().unwrap().starts_with("body: "),
        "{body}"
    );
}

/// A naive UTC timestamp with microseconds, as Python's `datetime.isoformat()` writes one.
fn assert_naive_micros(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp: {value}"));
    assert!(
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.6f").is_ok()
            && text.len() == "2026-12-02T06:19:37.098857".len(),
        "{text}"
    );
}

#[tokio::test]
async fn records_and_callbacks_read_as_the_originals() {
    let app = TestServer::builder().start().await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    // Kept exactly as sent: the space is not written `%20` in the record (the request on
    // the wire encodes it, as any HTTP client must).
    let url = format!("{}?tag=a b", receiver.url());
    let id = app.submit("as the original", &url).await;
    let callback = receiver.wait_for_deliveries(1, WAIT).await.remove(0);
    let record = app.wait_for_status(&id, "callback_success", WAIT).await;
    assert_eq!(record["callback_url"], url.as_str());
    assert_naive_micros(&record["created_at"]);
    assert_naive_micros(&record["completed_at"]);
    assert_naive_micros(&record["attempts"][0]["started_at"]);
    assert_naive_micros(&callback.body["timestamp"]);
    // Three decimals at most, as the original rounded it.
    for ms in [
        &record["result"]["processing_time_ms"],
        &callback.body["result"]["processing_time_ms"],
    ] {
        let ms = ms.as_f64().unwrap();
        assert_eq!((ms * 1000.0).round() / 1000.0, ms, "{ms}");
    }

    let sync = app.post_json("/sync", &json!({"data": "x"})).await;
    let (_, sync) = read(sync).await;
    let ms = sync["result"]["processing_time_ms"].as_f64().unwrap();
    assert_eq!((ms * 1000.0).round() / 1000.0, ms, "{ms}");
    let record = app
        .get_json(&format!(
            "/requests/{}",
            sync["result"]["request_id"].as_str().unwrap()
        ))
        .await;
    assert_naive_micros(&record["created_at"]);
    assert_naive_micros(&record["completed_at"]);
    // A time sent back as the service wrote it filters the list.
    let created = record["created_at"].as_str().unwrap();
    let list = app
        .get_json(&format!("/requests?created_from={created}"))
        .await;
    assert!(list["total"].as_u64().unwrap() >= 1, "{list}");
}

#[tokio::test]
async fn an_async_requests_completed_at_is_when_its_work_finished_and_every_attempt_sends_the_same_body()
 {
    let app = TestServer::builder().start().await;
    let receiver = Receiver::start(Behaviour::fail_first(2)).await;
    let id = app.submit("the same body", &receiver.url()).await;
    let record = app.wait_for_status(&id, "callback_success", WAIT).await;
    let received = receiver.received();
    assert_eq!(received.len(), 3, "two failures, then the success");

    // As the original: the body, its `timestamp` included, is built once, when the work
    // finished; only the Standard Webhooks headers say when each attempt was made.
    for other in &received[1..] {
        assert_eq!(
            other.raw, received[0].raw,
            "the body changed between attempts"
        );
    }
    let stamps: Vec<&str> = received
        .iter()
        .map(|r| r.headers["webhook-timestamp"].to_str().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    assert_eq!(record["completed_at"], received[0].body["timestamp"]);

    // `completed_at` is when the work finished, before the first attempt; `delivered_at`
    // (beyond the original) when the delivery ended, at the last.
    let completed = crate::helpers::parse_time(&record["completed_at"]);
    let delivered = crate::helpers::parse_time(&record["delivered_at"]);
    let attempts = record["attempts"].as_array().unwrap();
    let first = crate::helpers::parse_time(&attempts[0]["started_at"]);
    let last = crate::helpers::parse_time(&attempts[2]["started_at"]);
    assert!(completed <= first, "{record}");
    assert!(last <= delivered, "{record}");

    // A sync record has no delivery, and no `delivered_at`, as the original's.
    let sync = crate::helpers::sync_request(&app, "sync").await;
    let sync = app.get_json(&format!("/requests/{sync}")).await;
    assert!(sync.get("delivered_at").is_none(), "{sync}");
}

#[tokio::test]
async fn timestamps_can_be_written_as_rfc3339() {
    let app = TestServer::builder()
        .setting("timestamp-format", "rfc3339")
        .child()
        .start()
        .await;
    let (_, sync) = read(app.post_json("/sync", &json!({"data": "x"})).await).await;
    let record = app
        .get_json(&format!(
            "/requests/{}",
            sync["result"]["request_id"].as_str().unwrap()
        ))
        .await;
    let created = record["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z'), "{created}");
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{created}"
    );
}

/// A database as the last version before `delivered_at` left it: `completed_at` was written
/// at the end of delivery. A request finished then reads it as when its delivery ended; one
/// still being delivered gets, as its work's end, the start of its first attempt, and its
/// callback carries that time on every attempt after the upgrade. Both get the status of
/// their last attempt, which the audit held before the record did.
#[tokio::test]
async fn an_upgrade_reads_completed_at_as_the_version_before_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = crate::helpers::fresh_database(dir.path()).await;
    let sqlite = url.starts_with("sqlite://");
    let (schema, version, time) = if sqlite {
        let files = [
            include_str!("../../migrations/sqlite/0001_requests.sql"),
            include_str!("../../migrations/sqlite/0002_attempt_instance.sql"),
            include_str!("../../migrations/sqlite/0003_claims.sql"),
            include_str!("../../migrations/sqlite/0004_destinations.sql"),
            include_str!("../../migrations/sqlite/0005_destination_index.sql"),
            include_str!("../../migrations/sqlite/0006_idempotency.sql"),
            include_str!("../../migrations/sqlite/0007_history.sql"),
        ];
        (
            files.join("\n"),
            "PRAGMA user_version = 7;".to_string(),
            (|secs: i64| (secs * 1000).to_string()) as fn(i64) -> String,
        )
    } else {
        let files = [
            include_str!("../../migrations/postgres/0001_requests.sql"),
            include_str!("../../migrations/postgres/0002_claims.sql"),
            include_str!("../../migrations/postgres/0003_destinations.sql"),
            include_str!("../../migrations/postgres/0004_destination_index.sql"),
            include_str!("../../migrations/postgres/0005_idempotency.sql"),
            include_str!("../../migrations/postgres/0006_history.sql"),
        ];
        (
            files.join("\n"),
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,
                                             applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
             INSERT INTO schema_migrations (version) VALUES (1), (2), (3), (4), (5), (6);"
                .to_string(),
            (|secs: i64| format!("to_timestamp({secs})")) as fn(i64) -> String,
        )
    };
    let row = |id: &str, status: &str, completed: &str| {
        format!(
            "INSERT INTO requests (id, mode, status, payload_hash, iterations, callback_url,
                                   destination, callback_host, created_at, completed_at,
                                   input_hash, output_hash, processing_time_ms,
                                   callback_attempts)
             VALUES ('{id}', 'async', '{status}', 'h', 1, 'http://127.0.0.1:9/cb',
                     'http://127.0.0.1:9', '127.0.0.1', {}, {completed}, 'i', 'o', 0.5, 1);
             INSERT INTO delivery_attempts (request_id, attempt, started_at, duration_ms,
                                            status_code)
             VALUES ('{id}', 1, {}, 1.0, 500);",
            time(1_000),
            time(1_010),
        )
    };
    raw_sql(
        &url,
        &format!(
            "{schema}\n{version}\n{}\n{}",
            row("finished", "callback_failed", &time(1_020)),
            row("delivering", "callback_pending", "NULL")
        ),
    )
    .await;

    let app = TestServer::builder().database_url(&url).start().await;
    let finished = app.get_json("/requests/finished").await;
    assert_eq!(
        finished["completed_at"], finished["delivered_at"],
        "{finished}"
    );
    let delivering = app.get_json("/requests/delivering").await;
    assert_eq!(
        delivering["completed_at"], delivering["attempts"][0]["started_at"],
        "{delivering}"
    );
    assert!(delivering.get("delivered_at").is_none(), "{delivering}");
    // The last attempt's status is read from the audit, and the filter finds both.
    assert_eq!(finished["callback_last_status"], 500, "{finished}");
    let by_status = app.get_json("/requests?last_status=5xx").await;
    assert_eq!(by_status["total"], 2, "{by_status}");
}

/// Details of how the original's framework read a request: an empty Content-Type is no
/// Content-Type (read as JSON); a query parameter given twice counts once, with its last
/// value; an id with a `/` once decoded is a path no route has.
#[tokio::test]
async fn the_frameworks_reading_of_headers_queries_and_paths() {
    let app = TestServer::builder().start().await;
    let response = app
        .client
        .post(app.url("/sync"))
        .header("content-type", "")
        .body(r#"{"data":"x","iterations":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    for (query, status) in [("limit=abc&limit=5", 200), ("limit=5&limit=abc", 422)] {
        let response = app.get(&format!("/requests?{query}")).await;
        assert_eq!(response.status().as_u16(), status, "{query}");
    }
    let list = app.get_json("/requests?limit=7&limit=1").await;
    assert_eq!(list["requests"].as_array().unwrap().len(), 1, "{list}");

    for path in ["/requests/abc%2Fdef", "/requests/abc%2Fdef/redeliver"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 404, "{path}");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"detail": "Not Found"}),
            "{path}"
        );
    }
}
