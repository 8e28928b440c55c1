//! Opening a database: its migrations, and the one-time backfill of older requests.

use sqlx::postgres::PgPool;

use crate::delivery::destinations::{destination_host, destination_of_str};
use crate::store::{StoreResult, applied_migrations};

/// Schema migrations, applied in order and recorded in `schema_migrations`.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/postgres/0001_requests.sql"),
    include_str!("../../../migrations/postgres/0002_claims.sql"),
    include_str!("../../../migrations/postgres/0003_destinations.sql"),
    include_str!("../../../migrations/postgres/0004_destination_index.sql"),
    include_str!("../../../migrations/postgres/0005_idempotency.sql"),
    include_str!("../../../migrations/postgres/0006_history.sql"),
    include_str!("../../../migrations/postgres/0007_delivered_at.sql"),
    include_str!("../../../migrations/postgres/0008_control.sql"),
    include_str!("../../../migrations/postgres/0009_destination_controls.sql"),
    include_str!("../../../migrations/postgres/0010_priority.sql"),
    include_str!("../../../migrations/postgres/0011_answers.sql"),
    include_str!("../../../migrations/postgres/0012_pacing.sql"),
    include_str!("../../../migrations/postgres/0013_ordering.sql"),
    include_str!("../../../migrations/postgres/0014_trace_context.sql"),
    include_str!("../../../migrations/postgres/0015_sync_owner.sql"),
];

/// The first schema version whose requests record their destination (0003).
pub(super) const DESTINATIONS_RECORDED: usize = 3;

/// Any constant shared by all instances: the advisory lock that serialises migrations.
const MIGRATION_LOCK: i64 = 0x5359_4e43_4153_594e; // "SYNCASYN"

/// Gives requests recorded before destinations were (schema version 3) the destination of
/// their callback URL, and its host: claims count each destination's room by it, and the
/// `callback_host` filter finds it. Parsed here, as the dispatcher parses it, so both count
/// the same destination. Run only by the instance that migrated such a database: a read of
/// every request, done once.
pub(super) async fn backfill_destinations(pool: &PgPool) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    // A walk of the whole history: longer than a request's statement may take.
    sqlx::query("SET LOCAL statement_timeout = 0")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, callback_url FROM requests
         WHERE destination IS NULL AND callback_url IS NOT NULL",
    )
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let (ids, destinations): (Vec<&str>, Vec<String>) = rows
        .iter()
        .map(|(id, url)| (id.as_str(), destination_of_str(url)))
        .unzip();
    let hosts: Vec<&str> = destinations.iter().map(|d| destination_host(d)).collect();
    sqlx::query(
        "UPDATE requests SET destination = d.destination, callback_host = d.host
         FROM unnest($1::text[], $2::text[], $3::text[]) AS d (id, destination, host)
         WHERE requests.id = d.id AND requests.destination IS NULL",
    )
    .bind(&ids)
    .bind(&destinations)
    .bind(&hosts)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(
        requests = rows.len(),
        "recorded the destinations of older requests"
    );
    Ok(())
}

/// Applies the migrations the database has not had yet; answers the schema version it had.
pub(super) async fn migrate(pool: &PgPool) -> StoreResult<usize> {
    let mut tx = pool.begin().await?;
    // An index build over a long history may take longer than a request's statement.
    sqlx::query("SET LOCAL statement_timeout = 0")
        .execute(&mut *tx)
        .await?;
    // Instances starting together queue here; the first applies, the rest find nothing to do.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await?;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM schema_migrations")
        .fetch_one(&mut *tx)
        .await?;
    let applied = applied_migrations(applied, MIGRATIONS.len())?;
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(i32::try_from(n + 1).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
        tracing::info!(version = n + 1, "applied schema migration");
    }
    tx.commit().await?;
    Ok(applied)
}
