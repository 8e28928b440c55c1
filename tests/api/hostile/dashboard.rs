//! Attacks on the operator dashboard's API (`/ui/api/*`, the list filters it drives, and
//! `POST /admin/redeliver`): what a careless operator, a hostile client or a large table do.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{Behaviour, Receiver, TestApp, read, spawn_app, spawn_app_on};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN: &str = "hostile-dashboard-admin";

async fn bulk(app: &TestApp, query: &str) -> (u16, Value) {
    let request = app
        .client
        .post(app.url(&format!("/admin/redeliver?{query}")))
        .bearer_auth(TOKEN);
    read(request.send().await.expect("sent")).await
}

/// Two callback_failed requests to a refusing receiver.
async fn two_failed(app: &TestApp, receiver: &Receiver) -> Vec<String> {
    let ids = vec![
        app.submit("one", &receiver.url()).await,
        app.submit("two", &receiver.url()).await,
    ];
    for id in &ids {
        app.wait_for_status(id, "callback_failed", WAIT).await;
    }
    ids
}

/// A destructive bulk action must not widen to "everything" because a filter's name was
/// mistyped: `GET /requests` may ignore unknown parameters, but `POST /admin/redeliver`
/// silently drops `callback-host=…` (or `host=`, `id=`) and redelivers every failed request.
#[tokio::test]
#[ignore = "BUG: POST /admin/redeliver ignores unknown filter names (typo) and redelivers every callback_failed request"]
async fn bulk_redelivery_refuses_a_filter_name_it_does_not_know() {
    let app = spawn_app(&["--admin-token", TOKEN, "--callback-max-retries", "0"]).await;
    let refusing = Receiver::start(Behaviour::always_fail(500)).await;
    let failed = two_failed(&app, &refusing).await;
    for query in [
        "callback-host=nowhere.example",
        "host=nowhere.example",
        "id=0000",
        "callback_host=nowhere.example&idprefix=0000",
    ] {
        let (status, body) = bulk(&app, query).await;
        assert_eq!(
            status, 422,
            "{query}: a filter the endpoint does not know was dropped: {body}"
        );
    }
    for id in &failed {
        let record = app.get_json(&format!("/requests/{id}")).await;
        assert_eq!(record["callback_attempts"], 1, "redelivered: {record}");
    }
    refusing.stop().await;
    app.stop().await;
}

/// Writes `rows` finished async requests straight into a fresh SQLite database (as the
/// service would have after a busy day), all to one destination except every 10 000th.
fn prefill(path: &std::path::Path, rows: i64) {
    let conn = rusqlite::Connection::open(path).expect("open the database");
    conn.execute_batch("BEGIN").unwrap();
    {
        let mut insert = conn
            .prepare(
                "INSERT INTO requests (id, mode, status, payload_hash, iterations, callback_url,
                     created_at, completed_at, callback_attempts, destination)
                 VALUES (?1, 'async', ?2, 'h', 1, ?3, ?4, ?4, 1, ?5)",
            )
            .unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        for i in 0..rows {
            let rare = i % 10_000 == 0;
            let host = if rare { "rare.example" } else { "busy.example" };
            let status = if i % 3 == 0 {
                "callback_failed"
            } else {
                "callback_success"
            };
            // Ids in creation order, as UUIDv7s are.
            let id = format!(
                "0193{:04x}-{:04x}-7000-8000-{:012x}",
                i >> 16,
                i & 0xffff,
                i
            );
            insert
                .execute(rusqlite::params![
                    id,
                    status,
                    format!("http://{host}/hook"),
                    now - 3_600_000 + i / 10,
                    format!("http://{host}:80"),
                ])
                .unwrap();
        }
    }
    conn.execute_batch("COMMIT").unwrap();
}

async fn timed(app: &TestApp, path: &str) -> (Duration, Value) {
    // Best of three: a busy machine slows one call, not all three.
    let mut best = Duration::MAX;
    let mut body = Value::Null;
    for _ in 0..3 {
        let started = Instant::now();
        let response = app
            .client
            .get(app.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        body = response.json().await.unwrap();
        best = best.min(started.elapsed());
    }
    (best, body)
}

/// The list the dashboard refreshes every second, in every open tab, "stays fast at 100k+
/// rows": a page of a filter costs about what an unfiltered page costs. The page itself is
/// found by an index, but every page also counts the whole filter (`total`), and the callback
/// host filter (a `LIKE '%://host:%'` on a column whose only index is partial, for queued
/// rows) and a short id prefix (`substr(id, 1, n)`) count by scanning every row.
#[tokio::test]
#[ignore = "BUG: GET /requests counts every filtered page by a full table scan (callback_host, short id_prefix): slow at 200k rows, every second per dashboard tab"]
async fn filtered_pages_cost_what_an_unfiltered_page_costs_at_200k_rows() {
    const ROWS: i64 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    let url = format!("sqlite://{}", path.display());
    // The schema, then the rows, then the service on them.
    let app = spawn_app_on(tempfile::tempdir().unwrap(), &url, &[]).await;
    app.stop().await;
    prefill(&path, ROWS);
    let flags = ["--max-stored-requests", "1000000", "--admin-token", TOKEN];
    let app = spawn_app_on(dir, &url, &flags).await;

    let (plain, body) = timed(&app, "/requests?limit=50").await;
    assert_eq!(body["total"], ROWS);
    let mut report = vec![format!("unfiltered: {plain:?}")];
    let mut slow = Vec::new();
    for (query, total) in [
        ("callback_host=rare.example", ROWS / 10_000),
        ("callback_host=busy.example:80", ROWS - ROWS / 10_000),
        ("id_prefix=0193", ROWS),
        ("status=callback_failed&callback_host=rare.example", 7),
    ] {
        let (took, body) = timed(&app, &format!("/requests?limit=50&{query}")).await;
        assert_eq!(body["total"], total, "{query}");
        report.push(format!("{query}: {took:?}"));
        if took > plain * 3 + Duration::from_millis(20) {
            slow.push(query);
        }
    }
    // The bulk action's count is the same scan.
    let started = Instant::now();
    let (status, body) = bulk(&app, "callback_host=rare.example&dry_run=true").await;
    assert_eq!(status, 200, "{body}");
    report.push(format!("bulk dry run: {:?}", started.elapsed()));
    eprintln!("{report:#?}");
    assert!(slow.is_empty(), "slow filters {slow:?}: {report:#?}");
    app.stop().await;
}
