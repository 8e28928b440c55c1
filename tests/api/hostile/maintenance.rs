//! PostgreSQL with autovacuum off (a server configured so, or the tables): nothing clears
//! the dead rows every async request leaves, and the queue slows down by the minute. The
//! service then vacuums its tables itself, but not again and again while an old transaction
//! keeps the dead rows from going.

use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use syncasync::store::Store;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::helpers::fresh_database;

/// Dead rows made: past the bound (1,000 plus 2% of the live rows) with room to spare.
const ROWS: i64 = 3000;

/// A store on a fresh PostgreSQL database whose tables autovacuum leaves alone, its
/// maintenance running; `None` (printed) on SQLite.
struct Bench {
    url: String,
    store: Store,
    stop: CancellationToken,
    maintenance: JoinHandle<()>,
    _dir: TempDir,
}

impl Bench {
    async fn open() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let url = fresh_database(dir.path()).await;
        if url.starts_with("sqlite://") {
            println!("skipped: SQLite has no dead rows to vacuum (it reuses freed pages)");
            return None;
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
        conn.close().await.unwrap();
        let stop = CancellationToken::new();
        let maintenance = tokio::spawn({
            let store = store.clone();
            let stop = stop.clone();
            async move { store.maintain(stop).await }
        });
        Some(Bench {
            url,
            store,
            stop,
            maintenance,
            _dir: dir,
        })
    }

    /// Rows written and rewritten twice, as the queue does: two dead versions of each.
    async fn make_dead_rows(&self) {
        let mut conn = PgConnection::connect(&self.url).await.expect("connect");
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
    }

    /// Manual vacuums of `requests` so far, and its dead rows.
    async fn vacuums(&self) -> (i64, i64) {
        let mut conn = PgConnection::connect(&self.url).await.expect("connect");
        let counts = sqlx::query_as(
            "SELECT vacuum_count, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'requests'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        counts
    }

    /// Waits (30 s at most) for a first vacuum of `requests`; its dead rows then.
    async fn first_vacuum(&self) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (vacuums, dead) = self.vacuums().await;
            if vacuums > 0 {
                return dead;
            }
            assert!(
                Instant::now() < deadline,
                "not vacuumed within 30 s with {dead} dead rows"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn close(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.maintenance)
            .await
            .expect("maintenance stops when told to")
            .unwrap();
        self.store.close().await;
    }
}

#[tokio::test]
async fn the_queue_tables_are_vacuumed_when_autovacuum_is_off_for_them() {
    let Some(bench) = Bench::open().await else {
        return;
    };
    bench.make_dead_rows().await;
    let left = bench.first_vacuum().await;
    assert!(
        left < ROWS,
        "the vacuum removed nothing: {left} dead rows left"
    );
    bench.close().await;
}

/// A transaction older than the dead rows (a long report, a pg_dump, a session left idle in a
/// transaction) keeps a vacuum from removing them: the count stays over the bound, and a
/// keeper going by it alone would vacuum the whole table every few seconds, unthrottled by
/// anything autovacuum has, for as long as the transaction lasts.
#[tokio::test]
async fn rows_an_old_transaction_still_sees_are_not_vacuumed_again_and_again() {
    let Some(bench) = Bench::open().await else {
        return;
    };
    let mut old = PgConnection::connect(&bench.url).await.expect("connect");
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM requests;")
        .execute(&mut old)
        .await
        .unwrap();
    bench.make_dead_rows().await;
    let left = bench.first_vacuum().await;
    assert!(
        left >= ROWS,
        "the old transaction should keep them: {left} left"
    );
    // Three more looks at the table (one every 5 s), none of which may vacuum it again.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let (vacuums, _) = bench.vacuums().await;
    assert_eq!(vacuums, 1, "vacuumed again with nothing more to remove");
    sqlx::raw_sql("ROLLBACK").execute(&mut old).await.unwrap();
    old.close().await.unwrap();
    bench.close().await;
}
