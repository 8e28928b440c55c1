//! Speed does not depend on history: on a database holding many finished requests, no
//! statement on a hot path reads every stored request or attempt, and the counts kept for the
//! dashboard, `/healthz` and list totals stay exact. (An empty database hides every missing
//! index: the SQLite heartbeat once scanned the whole table per job in flight, and nothing
//! noticed until a history of 858k rows made delivery five times slower.)

use std::time::{Duration, Instant};

use serde_json::json;
use syncasync::store::{ListFilter, Store};
use tempfile::TempDir;

use crate::helpers::{Behaviour, Receiver, TestServer, fresh_database, read};

/// Finished requests written into the history: enough that a planner with statistics prefers
/// an index wherever one serves, few enough to write in a second or two.
const HISTORY: u64 = 100_000;

/// Writes `n` finished requests (the history `bench/history.sh` writes too:
/// `bench/lib/history-*.sql`) straight into the database at `url`, then refreshes the
/// planner's statistics.
pub async fn fill_history(url: &str, n: u64) {
    let history = |sql: &str| {
        sql.replace("{n}", &n.to_string())
            .replace("{last}", &(n - 1).to_string())
    };
    if let Some(path) = url.strip_prefix("sqlite://") {
        let mut conn = rusqlite::Connection::open(path).expect("open the SQLite file");
        let tx = conn.transaction().expect("begin");
        tx.execute_batch(&history(include_str!("../../bench/lib/history-sqlite.sql")))
            .expect("write the history");
        tx.commit().expect("commit the history");
        conn.execute_batch("ANALYZE").expect("analyze");
    } else {
        use sqlx::Connection;
        let mut conn = sqlx::postgres::PgConnection::connect(url)
            .await
            .expect("connect to PostgreSQL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(history(include_str!(
            "../../bench/lib/history-postgres.sql"
        ))))
        .execute(&mut conn)
        .await
        .expect("write the history");
        sqlx::raw_sql("ANALYZE requests; ANALYZE delivery_attempts; ANALYZE request_counts;")
            .execute(&mut conn)
            .await
            .expect("analyze");
    }
}

async fn store_with_history() -> (Store, String, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = fresh_database(dir.path()).await;
    let store = Store::open(&url, 10_000, 4).await.expect("open the store");
    fill_history(&url, HISTORY).await;
    (store, url, dir)
}

#[tokio::test]
async fn no_hot_statement_reads_the_whole_history() {
    let (store, _url, _dir) = store_with_history().await;
    let plans = store
        .explain_hot_statements()
        .await
        .expect("explain the hot statements");
    assert!(
        plans.len() > 30,
        "only {} statements explained",
        plans.len()
    );
    let mut failures = Vec::new();
    for plan in &plans {
        if plan.scans_table {
            failures.push(format!("{} scans a table:\n{}", plan.statement, plan.plan));
        }
        if !plan.unserved.is_empty() {
            failures.push(format!(
                "{} checks {:?} on every row its index walk reads:\n{}",
                plan.statement, plan.unserved, plan.plan
            ));
        }
        // A text search reads only the requests with an error (their own index), however
        // long the history: PostgreSQL, expecting few matches, reads them all and sorts them
        // rather than walk them in order, which is its estimate of the cheaper.
        let bounded_search =
            plan.statement.contains("error_contains") && plan.plan.contains("requests_with_error");
        if plan.sorts && !bounded_search {
            failures.push(format!(
                "{} sorts what it finds instead of walking an index:\n{}",
                plan.statement, plan.plan
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    store.close().await;
}

/// The check above can fail: without the index that serves the heartbeat, it finds the scan.
#[tokio::test]
async fn a_missing_index_is_found() {
    let (store, url, _dir) = store_with_history().await;
    let drop_index =
        "DROP INDEX IF EXISTS requests_leases; DROP INDEX IF EXISTS requests_lease_owner;";
    if let Some(path) = url.strip_prefix("sqlite://") {
        rusqlite::Connection::open(path)
            .expect("open the SQLite file")
            .execute_batch(drop_index)
            .expect("drop the lease indexes");
    } else {
        use sqlx::Connection;
        let mut conn = sqlx::postgres::PgConnection::connect(&url)
            .await
            .expect("connect to PostgreSQL");
        sqlx::raw_sql(drop_index)
            .execute(&mut conn)
            .await
            .expect("drop the lease indexes");
    }
    // SQLite names the index it was told to use: the heartbeat no longer prepares at all.
    let found = match store.explain_hot_statements().await {
        Ok(plans) => plans
            .iter()
            .any(|plan| plan.statement == "release at shutdown" && plan.scans_table),
        Err(err) => err.to_string().contains("requests_leases"),
    };
    assert!(found, "the scan of the whole table went unnoticed");
    store.close().await;
}

/// The counts kept as requests change agree with the rows, through submissions, deliveries,
/// failures, redelivery and retention.
#[tokio::test]
async fn kept_counts_match_the_rows_after_every_kind_of_change() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = fresh_database(dir.path()).await;
    Store::open(&url, 100, 2)
        .await
        .expect("migrate")
        .close()
        .await;
    fill_history(&url, 1_000).await;
    let app = TestServer::builder()
        .database_url(&url)
        .settings(&[
            ("callback-block-private-ips", "false"),
            ("callback-max-retries", "0"),
            ("max-stored-requests", "900"),
            ("admin-token", "admin"),
        ])
        .start()
        .await;
    let ok = Receiver::start(Behaviour::accept()).await;
    let failing = Receiver::start(Behaviour::always_fail(500)).await;
    let mut failed = Vec::new();
    for i in 0..10 {
        app.submit(&format!("ok {i}"), &ok.url()).await;
        failed.push(app.submit(&format!("bad {i}"), &failing.url()).await);
        let (status, _) = read(app.post_sync(&json!({"data": format!("s {i}")})).await).await;
        assert_eq!(status, 200);
    }
    for id in &failed {
        app.wait_for_status(id, "callback_failed", Duration::from_secs(20))
            .await;
    }
    let redelivered = app
        .client
        .post(app.url(&format!("/requests/{}/redeliver", failed[0])))
        .bearer_auth("admin")
        .send()
        .await
        .expect("redeliver");
    assert_eq!(redelivered.status(), 200);
    app.wait_for_status(&failed[0], "callback_failed", Duration::from_secs(20))
        .await;
    ok.wait_for_deliveries(10, Duration::from_secs(20)).await;
    let cleanup = app
        .client
        .post(app.url("/admin/cleanup"))
        .bearer_auth("admin")
        .send()
        .await
        .expect("cleanup");
    assert_eq!(cleanup.status(), 200);

    let listed = app.get_json("/requests?limit=1").await;
    let by_status = app
        .get_json("/requests?status=callback_failed&limit=1")
        .await;
    let by_both = app
        .get_json("/requests?mode=sync&status=completed&limit=1")
        .await;
    app.stop().await;

    let counted = counts_by_status(&url).await;
    let total: u64 = counted.iter().map(|(_, _, n)| n).sum();
    assert_eq!(total, 900, "retention keeps 900 finished requests");
    let of = |mode: Option<&str>, status: &str| -> u64 {
        counted
            .iter()
            .filter(|(m, s, _)| mode.is_none_or(|mode| m == mode) && s == status)
            .map(|(_, _, n)| n)
            .sum()
    };
    assert_eq!(listed["total"], total);
    assert_eq!(by_status["total"], of(None, "callback_failed"));
    assert_eq!(by_both["total"], of(Some("sync"), "completed"));
    assert!(listed.get("total_capped").is_none(), "{listed}");
    assert_eq!(
        kept_counts(&url).await,
        counted,
        "the kept counts differ from the rows"
    );
}

/// A total beyond the original's filters stops counting at the limit, and says so.
#[tokio::test]
async fn a_total_beyond_mode_and_status_is_capped_and_says_so() {
    let (store, _url, _dir) = store_with_history().await;
    let filter = ListFilter {
        callback_host: Some("hooks7.example".into()),
        count_limit: 500,
        limit: 3,
        ..ListFilter::default()
    };
    let page = store.list(filter.clone()).await.expect("list");
    assert_eq!((page.total, page.total_capped), (500, true));
    assert_eq!(page.requests.len(), 3);
    let all = store
        .list(ListFilter {
            count_limit: 1_000_000,
            ..filter
        })
        .await
        .expect("list");
    assert!(!all.total_capped);
    // Every third request is sync; hosts cycle through 50.
    let expected = (0..HISTORY).filter(|x| x % 3 != 0 && x % 50 == 7).count() as u64;
    assert_eq!(all.total, expected);
    store.close().await;
}

/// `(mode, status, n)` counted from the rows, in order.
async fn counts_by_status(url: &str) -> Vec<(String, String, u64)> {
    counted(
        url,
        "SELECT mode, status, count(*) FROM requests GROUP BY mode, status ORDER BY mode, status",
    )
    .await
}

/// `(mode, status, n)` from the kept counts, in order, leaving out zeros.
async fn kept_counts(url: &str) -> Vec<(String, String, u64)> {
    counted(
        url,
        "SELECT mode, status, sum(n) FROM request_counts GROUP BY mode, status
         HAVING sum(n) <> 0 ORDER BY mode, status",
    )
    .await
}

async fn counted(url: &str, sql: &str) -> Vec<(String, String, u64)> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let conn = rusqlite::Connection::open(path).expect("open the SQLite file");
        let mut statement = conn.prepare(sql).expect("prepare");
        statement
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    } else {
        use sqlx::Connection;
        let mut conn = sqlx::postgres::PgConnection::connect(url)
            .await
            .expect("connect to PostgreSQL");
        let rows: Vec<(String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT mode, status, n::bigint FROM ({sql}) AS c (mode, status, n)
             ORDER BY mode, status"
        )))
        .fetch_all(&mut conn)
        .await
        .expect("query");
        rows.into_iter().map(|(m, s, n)| (m, s, n as u64)).collect()
    }
}

/// A server on a database holding `n` finished requests.
async fn server_with_history(dir: &std::path::Path, n: u64) -> TestServer {
    let url = fresh_database(dir).await;
    Store::open(&url, 100, 2)
        .await
        .expect("migrate")
        .close()
        .await;
    fill_history(&url, n).await;
    TestServer::builder().database_url(&url).start().await
}

/// The fastest of five `GET path`s.
async fn fastest_of_five(app: &TestServer, path: &str) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let (status, body) = read(app.get(path).await).await;
        assert_eq!(status, 200, "{path}: {body}");
        best = best.min(started.elapsed());
    }
    best
}

/// Filters that match few requests, alone and combined (a mode with a status it never has, a
/// host with a status, a status few requests have), cost no more on thirty times the
/// history: each reads the rows it returns, never every row one of its filters matches.
/// (The plans above say which index each uses; this says the planner's choice holds for
/// the values that matter.)
#[tokio::test]
async fn list_pages_that_match_little_cost_the_same_on_a_long_history() {
    let small_dir = tempfile::tempdir().expect("temp dir");
    let big_dir = tempfile::tempdir().expect("temp dir");
    let small = server_with_history(small_dir.path(), 10_000).await;
    let big = server_with_history(big_dir.path(), 300_000).await;
    let mut slower = Vec::new();
    for path in [
        "/requests?mode=sync&status=callback_success&limit=100",
        "/requests?mode=async&status=completed&limit=100",
        "/requests?status=pending&limit=100",
        "/requests?mode=sync&status=processing&limit=100",
        "/requests?callback_host=hooks7.example&status=callback_pending&limit=100",
        "/requests?callback_host=hooks7.example:80&status=callback_failed&limit=100",
        "/requests?mode=sync&callback_host=hooks7.example&limit=100",
        "/requests?callback_host=nowhere.example&limit=100",
    ] {
        let with_small = fastest_of_five(&small, path).await;
        let with_big = fastest_of_five(&big, path).await;
        if with_big > with_small * 5 + Duration::from_millis(10) {
            slower.push(format!(
                "{path}: {with_small:?} with 10k requests stored, {with_big:?} with 300k"
            ));
        }
    }
    assert!(
        slower.is_empty(),
        "list pages whose cost grows with the history:\n{}",
        slower.join("\n")
    );
    // A mode with a status it never has matches nothing, at once.
    let (_, body) = read(big.get("/requests?mode=sync&status=callback_success").await).await;
    assert_eq!(
        (
            body["total"].as_u64(),
            body["requests"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0)),
        "{body}"
    );
    // An id prefix is a lookup by id, never combined with a filter it would check row by row.
    let (status, body) = read(big.get("/requests?id_prefix=0&status=pending").await).await;
    assert_eq!(status, 422, "{body}");
}

/// Clients that keep every reader busy (deep `offset` pages walk the rows they skip) delay
/// neither the dispatcher's look at the queue nor `/healthz`: on SQLite each has a connection
/// and a thread of its own; on PostgreSQL the claim and the health check have pools of their
/// own. A callback to a healthy receiver goes at once, and `/healthz` stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reading_deep_pages_delay_neither_deliveries_nor_health() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = server_with_history(dir.path(), 300_000).await;
    let healthy = Receiver::start(Behaviour::accept()).await;
    app.submit("before the readers", &healthy.url()).await;
    healthy
        .wait_for_deliveries(1, Duration::from_secs(10))
        .await;
    let stop = tokio_util::sync::CancellationToken::new();
    let readers: Vec<_> = (0..256)
        .map(|_| {
            let client = app.client.clone();
            let url = app.url("/requests?limit=1000&offset=250000");
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    if let Ok(response) = client.get(&url).send().await {
                        let _ = response.bytes().await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut slowest = Duration::ZERO;
    for n in 2..=4 {
        app.submit("while clients read", &healthy.url()).await;
        let acknowledged = Instant::now();
        healthy
            .wait_for_deliveries(n, Duration::from_secs(30))
            .await;
        slowest = slowest.max(acknowledged.elapsed());
        let (status, body) = read(app.get("/healthz").await).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "healthy", "{body}");
    }
    stop.cancel();
    for reader in readers {
        let _ = reader.await;
    }
    assert!(
        slowest < Duration::from_secs(1),
        "while clients read deep pages, a callback took {slowest:?} after its submission was \
         answered"
    );
}
