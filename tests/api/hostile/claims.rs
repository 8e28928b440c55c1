//! Review of the per-destination claim (store/due.rs, the loose index scans of both
//! backends): rows the per-destination look cannot see, and rows whose recorded destination
//! is not the one their deliveries count against.

use std::time::Duration;

use syncasync::delivery::destinations::Rooms;
use syncasync::store::Store;

use super::store::queue_for;

use crate::helpers::{fresh_database, raw_sql};

/// A lease that outlives the test.
const HELD: Duration = Duration::from_secs(600);

async fn open(dir: &std::path::Path) -> (String, Store) {
    let url = fresh_database(dir).await;
    let store = Store::open(&url, 1000, 4).await.expect("store opens");
    (url, store)
}

const BACKLOG: &str = "http://127.0.0.1:1";
const OLD: &str = "http://127.0.0.1:2";

/// A database as the last version before destinations (SQLite schema 3, PostgreSQL schema 2)
/// left it, holding `requests`: `(id, status, next_attempt_at set)`, all to `OLD`.
async fn database_from_before_destinations(
    dir: &std::path::Path,
    requests: &[(&str, &str, bool)],
) -> String {
    let url = fresh_database(dir).await;
    let (schema, record_version) = if url.starts_with("sqlite://") {
        (
            [
                include_str!("../../../migrations/sqlite/0001_requests.sql"),
                include_str!("../../../migrations/sqlite/0002_attempt_instance.sql"),
                include_str!("../../../migrations/sqlite/0003_claims.sql"),
            ]
            .join("\n"),
            "PRAGMA user_version = 3;",
        )
    } else {
        (
            [
                include_str!("../../../migrations/postgres/0001_requests.sql"),
                include_str!("../../../migrations/postgres/0002_claims.sql"),
            ]
            .join("\n"),
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,
                                             applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
             INSERT INTO schema_migrations (version) VALUES (1), (2);",
        )
    };
    let (now, due) = if url.starts_with("sqlite://") {
        (
            "CAST(strftime('%s','now') AS INTEGER) * 1000",
            "CAST(strftime('%s','now') AS INTEGER) * 1000 - 1000",
        )
    } else {
        ("now()", "now() - interval '1 second'")
    };
    let rows: Vec<String> = requests
        .iter()
        .map(|(id, status, queued)| {
            let next = if *queued { due } else { "NULL" };
            format!(
                "INSERT INTO requests (id, mode, status, payload_hash, data, iterations,
                                       callback_url, created_at, next_attempt_at)
                 VALUES ('{id}', 'async', '{status}', '0000000000000000', NULL, 1,
                         '{OLD}/callback', {now}, {next});"
            )
        })
        .collect();
    raw_sql(
        &url,
        &format!("{schema}\n{record_version}\n{}", rows.join("\n")),
    )
    .await;
    url
}

/// A request that finished (callback_failed) before destinations were recorded gets its
/// destination when the upgrade migrates the database, so an operator's redelivery of it is
/// found by the per-destination look: behind a backlog of a full destination longer than a
/// claim's window, the claim looks destination by destination, and a job without a
/// destination would never be claimed while the backlog lasts.
#[tokio::test]
async fn a_redelivered_row_from_before_destinations_is_claimed_behind_a_full_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let url =
        database_from_before_destinations(dir.path(), &[("old", "callback_failed", false)]).await;
    let store = Store::open(&url, 1000, 4).await.expect("store opens");
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
    let next = store.next_due_in("a", &full).await.unwrap();
    let claimed = store.claim_due("a", 1, HELD, &full).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(
        ids,
        ["old"],
        "the only job with room was not claimed, while the next due time is {next:?} (now {})",
        chrono::Utc::now()
    );
    // And the upgrade gave it its host too: the `callback_host` filter finds it.
    let listed = store
        .list(syncasync::store::ListFilter {
            callback_host: Some("127.0.0.1:2".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.total, 1);
    store.close().await;
}

/// Jobs queued by a version that did not record destinations get the destination of their
/// callback URL when the upgrade migrates the database, the same the dispatcher counts their
/// deliveries against: a full destination, or one whose breaker is open, does not get its
/// old jobs claimed past its cap and its breaker.
#[tokio::test]
async fn jobs_queued_before_destinations_count_against_their_own_destination() {
    let dir = tempfile::tempdir().unwrap();
    let url = database_from_before_destinations(
        dir.path(),
        &[
            ("old-0", "pending", true),
            ("old-1", "pending", true),
            ("old-2", "callback_pending", true),
        ],
    )
    .await;
    let store = Store::open(&url, 1000, 4).await.expect("store opens");
    let full_and_held = Rooms {
        default: 10,
        limited: vec![(OLD.into(), 0)],
        held: vec![OLD.into()],
        overdue: Duration::from_secs(3600),
        ..Rooms::default()
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
    // The kept counts began with the upgrade's own count of the rows.
    let counts = store.status_counts().await.unwrap();
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 3, "{counts:?}");
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

/// A claim for the proven destinations alone (no room by default, room for the listed ones)
/// takes only their jobs, and finds them behind a backlog of others' jobs longer than its
/// window without a look at each of the others.
#[tokio::test]
async fn a_claim_with_no_room_by_default_takes_only_listed_destinations_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let (_url, store) = open(dir.path()).await;
    for n in 0..40 {
        queue_for(
            &store,
            &format!("other-{n}"),
            &format!("http://127.0.0.1:{}", 1000 + n),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(2)).await;
    queue_for(&store, "listed", OLD).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let listed_only = Rooms {
        default: 0,
        limited: vec![(OLD.into(), 1), (BACKLOG.into(), 0)],
        ..Rooms::default()
    };
    let next = store.next_due_in("a", &listed_only).await.unwrap();
    assert!(next.is_some(), "the listed destination's job is due");
    let claimed = store.claim_due("a", 5, HELD, &listed_only).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["listed"]);
    let nothing = Rooms {
        default: 0,
        limited: vec![(OLD.into(), 0)],
        ..Rooms::default()
    };
    assert!(
        store
            .claim_due("a", 5, HELD, &nothing)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_due_in("a", &nothing).await.unwrap(), None);
    store.close().await;
}

/// The destinations not reserved share one budget however the claim finds their jobs: in the
/// first due rows, or destination by destination behind a full destination's backlog.
#[tokio::test]
async fn unreserved_destinations_share_one_budget_in_every_claim() {
    const RESERVED: &str = "http://127.0.0.1:3";
    for backlog in [0, 40] {
        let dir = tempfile::tempdir().unwrap();
        let (_url, store) = open(dir.path()).await;
        for n in 0..backlog {
            queue_for(&store, &format!("backlog-{n}"), BACKLOG).await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        for n in 0..3 {
            queue_for(&store, &format!("reserved-{n}"), RESERVED).await;
            queue_for(&store, &format!("b-{n}"), "http://127.0.0.1:4").await;
            queue_for(&store, &format!("c-{n}"), "http://127.0.0.1:5").await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let rooms = Rooms {
            default: 5,
            limited: vec![(BACKLOG.into(), 0)],
            reserved: vec![RESERVED.into()],
            shared: 2,
            ..Rooms::default()
        };
        let claimed = store.claim_due("a", 8, HELD, &rooms).await.unwrap();
        let reserved = claimed.iter().filter(|j| j.destination == RESERVED).count();
        let others = claimed.len() - reserved;
        assert_eq!(
            (reserved, others),
            (3, 2),
            "backlog {backlog}: {:?}",
            claimed.iter().map(|j| &j.id).collect::<Vec<_>>()
        );
        store.close().await;
    }
}

/// On PostgreSQL a claim locks only the rows it could take. A held destination's backlog
/// (a receiver that hangs, its breaker open) sits at the head of the queue for as long as the
/// destination is held: a claim that locked it only to leave it would write a row lock into
/// each of those rows, and flush it, on every claim of every instance.
#[tokio::test]
async fn a_claim_leaves_held_and_full_destinations_rows_unlocked() {
    let dir = tempfile::tempdir().unwrap();
    let (url, store) = open(dir.path()).await;
    if url.starts_with("sqlite://") {
        println!("skipped: SQLite has no row locks (one writer claims at a time)");
        store.close().await;
        return;
    }
    const FULL: &str = "http://127.0.0.1:4";
    for n in 0..40 {
        queue_for(&store, &format!("held-{n}"), BACKLOG).await;
        queue_for(&store, &format!("full-{n}"), FULL).await;
    }
    tokio::time::sleep(Duration::from_millis(2)).await;
    queue_for(&store, "free", OLD).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let rooms = Rooms {
        default: 10,
        limited: vec![(FULL.into(), 0)],
        held: vec![BACKLOG.into()],
        overdue: Duration::from_secs(3600),
        ..Rooms::default()
    };
    let claimed = store.claim_due("a", 2, HELD, &rooms).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["free"]);

    use sqlx::Connection;
    let mut conn = sqlx::postgres::PgConnection::connect(&url)
        .await
        .expect("connect");
    // A row lock stays in the row (its xmax) after the claim's transaction ends.
    let locked: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM requests WHERE id <> 'free' AND xmax::text <> '0' ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(locked.is_empty(), "rows locked and left: {locked:?}");
    conn.close().await.unwrap();
    store.close().await;
}
