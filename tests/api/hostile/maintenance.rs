//! PostgreSQL with autovacuum off (a server configured so, or the tables): nothing clears
//! the dead rows every async request leaves, and the queue slows down by the minute. The
//! service then vacuums its tables itself.

use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use syncasync::store::Store;
use tokio_util::sync::CancellationToken;

use crate::helpers::fresh_database;

/// Dead rows made: past the bound (1,000 plus 2% of the live rows) with room to spare.
const ROWS: i64 = 3000;

#[tokio::test]
async fn the_queue_tables_are_vacuumed_when_autovacuum_is_off_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database(dir.path()).await;
    if url.starts_with("sqlite://") {
        println!("skipped: SQLite has no dead rows to vacuum (it reuses freed pages)");
        return;
    }
    let store = Store::open(&url, 1000, 4).await.expect("store opens");
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    sqlx::raw_sql(
        "ALTER TABLE requests SET (autovacuum_enabled = false);
         ALTER TABLE delivery_attempts SET (autovacuum_enabled = false);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let maintenance = tokio::spawn({
        let store = store.clone();
        let stop = stop.clone();
        async move { store.maintain(stop).await }
    });

    // Rows written and rewritten twice, as the queue does: two dead versions of each.
    sqlx::query(
        "INSERT INTO requests (id, mode, status, payload_hash, iterations, created_at)
         SELECT 'dead-' || n, 'sync', 'processing', 'h', 1, now()
         FROM generate_series(1, $1) AS n",
    )
    .bind(ROWS)
    .execute(&mut conn)
    .await
    .unwrap();
    for status in ["completed", "failed"] {
        sqlx::query("UPDATE requests SET status = $1 WHERE id LIKE 'dead-%'")
            .bind(status)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    // A backend's table statistics reach the server when it ends.
    conn.close().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let (vacuums, dead) = loop {
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        let (vacuums, dead): (i64, i64) = sqlx::query_as(
            "SELECT vacuum_count, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'requests'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        if vacuums > 0 || Instant::now() > deadline {
            break (vacuums, dead);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        vacuums > 0,
        "not vacuumed within 30 s with {dead} dead rows"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), maintenance)
        .await
        .expect("maintenance stops when told to")
        .unwrap();
    store.close().await;
}
