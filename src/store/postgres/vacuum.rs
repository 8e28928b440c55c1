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

use std::time::{Duration, Instant};

use sqlx::postgres::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store::StoreResult;

/// How often the dead rows are counted.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Each table's live and dead rows (the statistics' estimates), and whether autovacuum is on
/// for it: on for the server (with the counts it needs) and not turned off for the table.
const TABLE_STATS: &str = "SELECT s.relname::text, s.n_live_tup, s.n_dead_tup,
            current_setting('autovacuum')::bool AND current_setting('track_counts')::bool
            AND COALESCE((SELECT option_value::bool FROM pg_options_to_table(c.reloptions)
                          WHERE option_name = 'autovacuum_enabled'), true) AS autovacuum
     FROM pg_stat_user_tables AS s JOIN pg_class AS c ON c.oid = s.relid
     WHERE s.relid IN ('requests'::regclass, 'delivery_attempts'::regclass)
     ORDER BY s.relname";

/// Whether a table with `live` rows and `dead` dead ones is due a vacuum: past 2% of the
/// table, the share the schema sets for autovacuum on these tables (`0006_history.sql`), and
/// never for a handful (a vacuum reads every page not yet known clean).
pub(super) fn needs_vacuum(live: i64, dead: i64) -> bool {
    dead > 1000 + live.max(0) / 50
}

/// Until `stop`, vacuums each table whose autovacuum is off once it needs it. Another instance
/// vacuuming the same table is skipped, not waited for (`SKIP_LOCKED`).
pub(super) async fn keep_vacuumed(pool: PgPool, stop: CancellationToken) {
    let mut warned = false;
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let pass = tokio::select! {
            pass = vacuum_pass(&pool, &mut warned) => pass,
            () = stop.cancelled() => return,
        };
        if let Err(err) = pass {
            tracing::warn!(error = %err, "vacuuming the queue's tables failed");
        }
    }
}

/// One look at the tables, and a vacuum of each that needs one.
async fn vacuum_pass(pool: &PgPool, warned: &mut bool) -> StoreResult<()> {
    let tables: Vec<(String, i64, i64, bool)> = sqlx::query_as(TABLE_STATS).fetch_all(pool).await?;
    for (table, live, dead, autovacuum) in tables {
        if autovacuum {
            continue;
        }
        if !*warned {
            *warned = true;
            tracing::warn!(
                table,
                "autovacuum is off for the queue's tables: the service vacuums them itself \
                 when their dead rows pass 2%; turning autovacuum on does this better"
            );
        }
        if !needs_vacuum(live, dead) {
            continue;
        }
        let started = Instant::now();
        // The table's name comes from the catalogue query above, which names only these two.
        let statement = match table.as_str() {
            "requests" => "VACUUM (ANALYZE, SKIP_LOCKED) requests",
            "delivery_attempts" => "VACUUM (ANALYZE, SKIP_LOCKED) delivery_attempts",
            _ => continue,
        };
        // A simple query: VACUUM cannot run inside a transaction, nor as a prepared statement.
        sqlx::raw_sql(statement).execute(pool).await?;
        tracing::info!(
            table,
            dead_rows = dead,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "vacuumed"
        );
    }
    Ok(())
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
