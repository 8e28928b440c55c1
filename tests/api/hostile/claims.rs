//! Review of the per-destination claim (store/due.rs, the loose index scans of both
//! backends): rows the per-destination look cannot see, and rows whose recorded destination
//! is not the one their deliveries count against.

use std::time::Duration;

use syncasync::delivery::destinations::Rooms;
use syncasync::store::Store;

use super::store::queue_for;

use crate::helpers::fresh_database;

/// A lease that outlives the test.
const HELD: Duration = Duration::from_secs(600);

/// Runs `sql` on the test's database behind the store's back (what an older version of the
/// service left in it).
async fn raw_sql(url: &str, sql: &str) {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let conn = rusqlite::Connection::open(path).expect("open sqlite");
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute_batch(sql).expect(sql);
    } else {
        use sqlx::Connection;
        let mut conn = sqlx::postgres::PgConnection::connect(url)
            .await
            .expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .expect(sql);
        conn.close().await.unwrap();
    }
}

async fn open(dir: &std::path::Path) -> (String, Store) {
    let url = fresh_database(dir).await;
    let store = Store::open(&url, 1000, 4).await.expect("store opens");
    (url, store)
}

const BACKLOG: &str = "http://127.0.0.1:1";
const OLD: &str = "http://127.0.0.1:2";

/// A request that finished (callback_failed) before the destination column existed has a
/// NULL destination; an operator's redelivery puts it back in the queue as it is. Behind a
/// backlog of a full destination longer than a claim's window, the claim looks destination by
/// destination, and that look (FIRST_DESTINATION / NEXT_DESTINATION, the recursive CTE on
/// PostgreSQL) skips NULL: the job is never claimed while the backlog lasts, even though the
/// dispatcher's look for the next due time (whose window reaches it) says it is due now, so
/// the dispatcher wakes every 5 ms to claim nothing.
#[tokio::test]
async fn a_redelivered_row_from_before_destinations_is_claimed_behind_a_full_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = open(dir.path()).await;
    queue_for(&store, "old", OLD).await;
    // As a request that finished before migration 0004 (destinations) left it.
    raw_sql(
        &url,
        "UPDATE requests SET destination = NULL, next_attempt_at = NULL,
                status = 'callback_failed' WHERE id = 'old'",
    )
    .await;
    // 40 due jobs of a full destination: more than a claim of one looks at in due order (32),
    // fewer than the next-due look's window (64).
    for n in 0..40 {
        queue_for(&store, &format!("backlog-{n}"), BACKLOG).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        store.redeliver("old").await.unwrap(),
        syncasync::store::Redelivery::Queued
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let full = Rooms {
        default: 10,
        limited: vec![(BACKLOG.into(), 0)],
        ..Rooms::default()
    };
    let next = store.next_due_at(&full).await.unwrap();
    let claimed = store.claim_due("a", 1, HELD, &full).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(
        ids,
        ["old"],
        "the only job with room was not claimed, while the next due time is {next:?} (now {})",
        chrono::Utc::now()
    );
    store.close().await;
}

/// Jobs queued by a version that did not record destinations (their column is NULL) get the
/// destination of their callback URL when the store opens, the same the dispatcher counts
/// their deliveries against: a full destination, or one whose breaker is open, does not get
/// its old jobs claimed past its cap and its breaker.
#[tokio::test]
async fn jobs_queued_before_destinations_count_against_their_own_destination() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = open(dir.path()).await;
    for n in 0..3 {
        queue_for(&store, &format!("old-{n}"), OLD).await;
    }
    store.close().await;
    drop(store);
    // As a version before destinations (migration 0004) left them.
    raw_sql(
        &url,
        "UPDATE requests SET destination = NULL WHERE id LIKE 'old-%'",
    )
    .await;
    let store = Store::open(&url, 1000, 4).await.expect("store opens again");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let full_and_held = Rooms {
        default: 10,
        limited: vec![(OLD.into(), 0)],
        held: vec![OLD.into()],
        overdue: Duration::from_secs(3600),
    };
    let claimed = store
        .claim_due("a", 10, HELD, &full_and_held)
        .await
        .unwrap();
    let taken: Vec<(&str, &str)> = claimed
        .iter()
        .map(|j| (j.id.as_str(), j.destination.as_str()))
        .collect();
    assert!(
        taken.is_empty(),
        "claimed for a destination with no room and an open breaker: {taken:?}"
    );
    let two = Rooms {
        default: 10,
        limited: vec![(OLD.into(), 2)],
        ..Rooms::default()
    };
    let claimed = store.claim_due("a", 10, HELD, &two).await.unwrap();
    assert_eq!(claimed.len(), 2, "its room, not the default");
    assert!(claimed.iter().all(|j| j.destination == OLD));
    store.close().await;
}

/// On PostgreSQL a claim whose first look (the due window) leaves it short runs a second
/// statement, per destination, and that statement takes any row whose lease has run out by
/// its own `now()`, the rows the first statement just leased included. With a short lease
/// (the smallest APP_JOB_LEASE_SECONDS allowed is 0.001) one claim hands back the same job
/// twice, under two tokens: the dispatcher starts two deliveries of it at once.
#[tokio::test]
async fn one_claim_never_returns_the_same_job_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (_url, store) = open(dir.path()).await;
    queue_for(&store, "first", OLD).await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    // A full destination's backlog fills the rest of a claim of two's window (32 rows).
    for n in 0..40 {
        queue_for(&store, &format!("backlog-{n}"), BACKLOG).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let full = Rooms {
        default: 10,
        limited: vec![(BACKLOG.into(), 0)],
        ..Rooms::default()
    };
    let claimed = store
        .claim_due("a", 2, Duration::from_millis(1), &full)
        .await
        .unwrap();
    let ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["first"], "one claim, one delivery per job");
    store.close().await;
}
