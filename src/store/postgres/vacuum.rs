//! Vacuuming the queue's tables when PostgreSQL's autovacuum will not.
//!
//! Every async request leaves three or four dead row versions behind (accepted, claimed, its
//! result, its attempt), and the claim walks the head of the due index, where they pile up.
//! Autovacuum clears them; where it is off (for the server, or for these tables) nothing
//! does, and the queue slows down by the minute: at 500 requests a second, 526,000 dead rows
//! after six minutes had delivery falling behind acceptance and the time to callback at 3 s
//! (p50), back to 15 ms within a minute of one `VACUUM`. So while autovacuum is off for one
//! of them, the service vacuums that table itself once its dead rows pass a bound, and says
//! so once in its log. With autovacuum on it does nothing: autovacuum does this better.
//!
//! What a manual vacuum does not do by itself, the keeper does:
//! - it is throttled as autovacuum is (`vacuum_cost_delay`), runs no parallel workers, and
//!   analyses a table at most every ten minutes (the statistics of a queue change slowly);
//! - it is not repeated while the dead rows it could not remove (an old transaction still
//!   sees them) are what keeps the count over the bound: only rows dead since count;
//! - it is cancelled at shutdown, which otherwise waits for it;
//! - a table this role does not own, or a server that keeps no counts, is said once and left
//!   alone (PostgreSQL would skip it with a warning on every try);
//! - a failing pass is retried later and later, up to every five minutes, not every check.
//!
//! Not done: a manual vacuum does not give way to a conflicting lock as autovacuum does, so a
//! migration's `ALTER TABLE` on an upgrade waits for a pass in progress (seconds, throttled).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool};
use tokio_util::sync::CancellationToken;

use crate::store::StoreResult;

/// How often the dead rows are counted.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The longest wait between two tries after failures.
const MOST_BACKOFF: Duration = Duration::from_secs(300);

/// How often a table vacuumed by the keeper is analysed too: the planner's statistics of a
/// queue change slowly, and an ANALYZE reads a sample of the whole table.
const ANALYZE_EVERY: Duration = Duration::from_secs(600);

/// The maintenance connection: throttled as autovacuum is by default (2 ms after each 200
/// units of page work), no time limit of the role's, and a vacuum's seconds not logged as a
/// slow statement (each pass is logged once, by the keeper).
pub(super) fn session(options: PgConnectOptions) -> PgConnectOptions {
    options
        .options([("vacuum_cost_delay", "2"), ("statement_timeout", "0")])
        .disable_statement_logging()
}

/// Each table's live and dead rows (the statistics' estimates), whether autovacuum is on for
/// it (on for the server and not turned off for the table), whether the server keeps the
/// counts at all, and whether this role may vacuum it (owns it).
const TABLE_STATS: &str = "SELECT s.relname::text, s.n_live_tup, s.n_dead_tup,
            current_setting('autovacuum')::bool
            AND COALESCE((SELECT option_value::bool FROM pg_options_to_table(c.reloptions)
                          WHERE option_name = 'autovacuum_enabled'), true) AS autovacuum,
            current_setting('track_counts')::bool AS counted,
            pg_has_role(c.relowner, 'USAGE') AS owned
     FROM pg_stat_user_tables AS s JOIN pg_class AS c ON c.oid = s.relid
     WHERE s.relid IN ('requests'::regclass, 'delivery_attempts'::regclass)
     ORDER BY s.relname";

/// One row of [`TABLE_STATS`].
struct TableStats {
    relname: String,
    n_live_tup: i64,
    n_dead_tup: i64,
    autovacuum: bool,
    counted: bool,
    owned: bool,
}

/// Whether a table with `live` rows and `dead` rows dead since its last vacuum is due another:
/// past 2% of the table, the share the schema sets for autovacuum on these tables
/// (`0006_history.sql`), and never for a handful (a vacuum reads every page not yet known
/// clean).
pub(super) fn needs_vacuum(live: i64, dead: i64) -> bool {
    dead > 1000 + live.max(0) / 50
}

/// Until `stop`, vacuums each table whose autovacuum is off once it needs it, on a connection
/// of `maintenance` (of one connection); `pool` cancels a vacuum running at `stop`. Another
/// instance vacuuming the same table is skipped, not waited for (`SKIP_LOCKED`).
pub(super) async fn keep_vacuumed(maintenance: PgPool, pool: PgPool, stop: CancellationToken) {
    let mut keeper = Keeper::default();
    let running = Arc::new(AtomicI32::new(0));
    let mut wait = CHECK_EVERY;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        let pass = tokio::select! {
            pass = keeper.pass(&maintenance, &running) => pass,
            () = stop.cancelled() => {
                cancel_running(&pool, &running).await;
                return;
            }
        };
        wait = match pass {
            Ok(()) => CHECK_EVERY,
            Err(err) => {
                tracing::warn!(error = %err, retry_in_s = (wait * 2).min(MOST_BACKOFF).as_secs(),
                    "vacuuming the queue's tables failed");
                (wait * 2).min(MOST_BACKOFF)
            }
        };
    }
}

/// Cancels the vacuum in progress, if one is: dropping its future leaves it running on the
/// server, and the pool closing at shutdown would wait for it to end.
async fn cancel_running(pool: &PgPool, running: &AtomicI32) {
    let pid = running.load(Ordering::Acquire);
    if pid == 0 {
        return;
    }
    let cancel = sqlx::query("SELECT pg_cancel_backend($1)")
        .bind(pid)
        .execute(pool);
    match tokio::time::timeout(Duration::from_secs(2), cancel).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "cancelling the vacuum in progress failed"),
        Err(_) => tracing::warn!("cancelling the vacuum in progress timed out"),
    }
}

/// What the keeper remembers between passes.
#[derive(Default)]
struct Keeper {
    /// What was said once (`autovacuum off`, `not owned: requests`, …).
    said: std::collections::HashSet<String>,
    /// Dead rows each table still had after its last vacuum: rows an old transaction still
    /// sees, which no vacuum removes until it ends.
    left_dead: HashMap<String, i64>,
    /// When each table was last analysed by the keeper.
    analysed: HashMap<String, Instant>,
}

impl Keeper {
    /// Logs `message` about `table` the first time only.
    fn say_once(&mut self, key: String, table: &str, message: &str) {
        if self.said.insert(key) {
            tracing::warn!(table, "{message}");
        }
    }

    /// One look at the tables, and a vacuum of each that needs one.
    async fn pass(&mut self, maintenance: &PgPool, running: &AtomicI32) -> StoreResult<()> {
        let rows: Vec<(String, i64, i64, bool, bool, bool)> =
            sqlx::query_as(TABLE_STATS).fetch_all(maintenance).await?;
        let tables = rows.into_iter().map(
            |(relname, n_live_tup, n_dead_tup, autovacuum, counted, owned)| TableStats {
                relname,
                n_live_tup,
                n_dead_tup,
                autovacuum,
                counted,
                owned,
            },
        );
        for table in tables {
            let name = table.relname.as_str();
            if table.autovacuum {
                continue;
            }
            if !table.counted {
                self.say_once(
                    "uncounted".into(),
                    name,
                    "autovacuum and track_counts are off: nothing counts the dead rows the \
                     queue leaves, so nothing clears them; turn autovacuum on",
                );
                continue;
            }
            if !table.owned {
                self.say_once(
                    format!("not owned: {name}"),
                    name,
                    "autovacuum is off and this role does not own the table, so it cannot \
                     vacuum it; turn autovacuum on, or vacuum it as its owner",
                );
                continue;
            }
            self.say_once(
                "off".into(),
                name,
                "autovacuum is off for the queue's tables: the service vacuums them itself \
                 when their dead rows pass 2%; turning autovacuum on does this better",
            );
            let left = self
                .left_dead
                .get(name)
                .copied()
                .unwrap_or(0)
                .min(table.n_dead_tup);
            if !needs_vacuum(table.n_live_tup, table.n_dead_tup - left) {
                continue;
            }
            // The table's name comes from the catalogue query above, which names only these.
            let analyse = self
                .analysed
                .get(name)
                .is_none_or(|at| at.elapsed() >= ANALYZE_EVERY);
            let statement = match (name, analyse) {
                ("requests", true) => "VACUUM (ANALYZE, SKIP_LOCKED, PARALLEL 0) requests",
                ("requests", false) => "VACUUM (SKIP_LOCKED, PARALLEL 0) requests",
                ("delivery_attempts", true) => {
                    "VACUUM (ANALYZE, SKIP_LOCKED, PARALLEL 0) delivery_attempts"
                }
                ("delivery_attempts", false) => {
                    "VACUUM (SKIP_LOCKED, PARALLEL 0) delivery_attempts"
                }
                _ => continue,
            };
            let started = Instant::now();
            let mut conn = maintenance.acquire().await?;
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut *conn)
                .await?;
            running.store(pid, Ordering::Release);
            // A simple query: VACUUM cannot run inside a transaction, nor prepared.
            let vacuumed = sqlx::raw_sql(statement).execute(&mut *conn).await;
            running.store(0, Ordering::Release);
            vacuumed?;
            if analyse {
                self.analysed.insert(name.to_owned(), Instant::now());
            }
            // The vacuum's own counts are in the statistics as it ends.
            let after: i64 =
                sqlx::query_scalar("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = $1")
                    .bind(name)
                    .fetch_optional(&mut *conn)
                    .await?
                    .unwrap_or(0);
            self.left_dead.insert(name.to_owned(), after);
            if after < table.n_dead_tup {
                tracing::info!(
                    table = name,
                    dead_rows = table.n_dead_tup,
                    left = after,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "vacuumed"
                );
            } else {
                // Another instance was vacuuming it (skipped), or an old transaction still
                // sees every dead row; not tried again until more rows die.
                tracing::debug!(table = name, dead_rows = after, "vacuum removed nothing");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_vacuumed_past_two_percent_dead_and_never_for_a_handful() {
        assert!(!needs_vacuum(0, 1000), "a thousand dead rows is a handful");
        assert!(needs_vacuum(0, 1001));
        assert!(!needs_vacuum(1_000_000, 21_000));
        assert!(needs_vacuum(1_000_000, 21_001));
        assert!(
            !needs_vacuum(-1, 1000),
            "an estimate below zero counts as none"
        );
    }
}
