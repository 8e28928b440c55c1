//! Opening a database: its file and lock, the connection settings, migrations, and the
//! recovery after a crash.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use rusqlite::{Connection, OpenFlags, TransactionBehavior, config::DbConfig, params};

use crate::delivery::destinations::{destination_host, destination_of_str};
use crate::store::{ABANDONED_SYNC_ERROR, StoreError, StoreResult, applied_migrations};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/sqlite/0001_requests.sql"),
    include_str!("../../../migrations/sqlite/0002_attempt_instance.sql"),
    include_str!("../../../migrations/sqlite/0003_claims.sql"),
    include_str!("../../../migrations/sqlite/0004_destinations.sql"),
    include_str!("../../../migrations/sqlite/0005_destination_index.sql"),
    include_str!("../../../migrations/sqlite/0006_idempotency.sql"),
    include_str!("../../../migrations/sqlite/0007_history.sql"),
    include_str!("../../../migrations/sqlite/0008_delivered_at.sql"),
    include_str!("../../../migrations/sqlite/0009_control.sql"),
    include_str!("../../../migrations/sqlite/0010_destination_controls.sql"),
    include_str!("../../../migrations/sqlite/0011_priority.sql"),
    include_str!("../../../migrations/sqlite/0012_answers.sql"),
    include_str!("../../../migrations/sqlite/0013_pacing.sql"),
    include_str!("../../../migrations/sqlite/0014_ordering.sql"),
    include_str!("../../../migrations/sqlite/0015_trace_context.sql"),
    include_str!("../../../migrations/sqlite/0016_count_triggers.sql"),
    include_str!("../../../migrations/sqlite/0017_lease_index.sql"),
    include_str!("../../../migrations/sqlite/0018_final_status_indexes.sql"),
];

/// The first schema version whose requests record their destination (0004).
const DESTINATIONS_RECORDED: usize = 4;

pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The size the WAL file is cut back to, in bytes: a second's worth of busy writing.
const JOURNAL_SIZE_LIMIT: i64 = 4 * 1024 * 1024;

/// The file a `sqlite://PATH` (or `sqlite:PATH`) URL names; query parameters are ignored.
pub(super) fn database_path(url: &str) -> StoreResult<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::Open(format!("`{url}` is not a sqlite:// URL")))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") {
        return Err(StoreError::Open(
            "an in-memory SQLite database cannot be shared by the writer and readers; use sqlite://PATH".into(),
        ));
    }
    Ok(PathBuf::from(path))
}

/// The write-ahead log of the database at `path`.
pub(super) fn wal_path(path: &Path) -> PathBuf {
    let mut wal = PathBuf::from(path);
    wal.as_mut_os_string().push("-wal");
    wal
}

pub(super) fn open_connection(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(32);
    // Without the planner stability guarantee, a statement whose plan could depend on a bound
    // value (a `LIMIT ?`, with this build's STAT4) is parsed and planned again whenever that
    // value changes: measured, a third of the writer's CPU went to re-preparing the claim.
    // Our statements are written for one plan.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit survives power loss, not only a process crash. Group commit keeps
        // the cost to one fsync per batch.
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Each time the log starts again from its beginning (see the writer's checkpoints),
        // a file grown past this is cut back to it.
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
        // A statement that may fail halfway (a claim's update of many rows, a write under a
        // trigger or a foreign key) first copies each page it changes to a statement journal,
        // which SQLite spills past 64 KiB to a temporary file of its own: measured under
        // async load, two writes a job to a file created anew every few batches, nine times
        // the writes to the WAL. In memory it is a few pages a statement, dropped at its end.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Takes the exclusive lock that makes this the one process using the database: a lock on
/// the database file itself (`flock`), so every path that names it (a symlink, a hard link,
/// `./` or not) meets the same lock. Creates the file if it does not exist yet (SQLite takes
/// an empty file as an empty database).
///
/// The descriptor stays open for as long as the store lives and is closed after SQLite's
/// connections (it is the store's last field): closing any descriptor of a file drops the
/// POSIX locks SQLite's own connections hold on it, so it must not be closed while they work.
pub(super) fn lock_database(path: &Path) -> StoreResult<File> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::Open(format!("{}: {e}", path.display())))
        }
    }
}

/// Gives requests recorded before destinations were (schema version 4) the destination of
/// their callback URL, and its host: claims count each destination's room by it, and the
/// `callback_host` filter finds it. Parsed here, as the dispatcher parses it, so both count
/// the same destination. Only for a database that was older than that when it was opened
/// (`schema_before`): a read of every request, done once, not at every start.
pub(super) fn backfill_destinations(
    conn: &mut Connection,
    schema_before: usize,
) -> StoreResult<()> {
    if schema_before == 0 || schema_before >= DESTINATIONS_RECORDED {
        return Ok(());
    }
    let rows = conn
        .prepare(
            "SELECT id, callback_url FROM requests
             WHERE destination IS NULL AND callback_url IS NOT NULL",
        )?
        .query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    if rows.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    {
        let mut update =
            tx.prepare("UPDATE requests SET destination = ?2, callback_host = ?3 WHERE id = ?1")?;
        for (id, url) in &rows {
            let destination = destination_of_str(url);
            update.execute(params![id, destination, destination_host(&destination)])?;
        }
    }
    tx.commit()?;
    tracing::info!(
        requests = rows.len(),
        "recorded the destinations of older requests"
    );
    Ok(())
}

/// Applies the migrations the database has not had yet; answers the schema version it had.
pub(super) fn migrate(conn: &mut Connection) -> StoreResult<usize> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied = applied_migrations(applied, MIGRATIONS.len())?;
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(n + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
        tracing::info!(version = n + 1, "applied schema migration");
    }
    Ok(applied)
}

/// Every lease, handed back (by the lease index: only leased jobs are in it).
pub(super) const RELEASE_ALL: &str =
    "UPDATE requests SET lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL
     WHERE lease_owner IS NOT NULL";

/// Sync requests left `processing` by a process that died, read from the unfinished
/// requests' index: left to choose, the planner (which has no statistics) would walk every
/// sync request by the mode's index.
pub(super) const FAIL_ABANDONED_SYNC: &str = "UPDATE requests INDEXED BY requests_unfinished
     SET status = 'failed', completed_at = ?1, error = ?2, idempotency_key = NULL,
         unfinished = NULL
     WHERE unfinished IS NOT NULL AND mode = 'sync' AND status = 'processing'";

/// The unfinished async requests (by the queue's index: only they have a due time).
pub(super) const COUNT_QUEUED: &str =
    "SELECT COUNT(*) FROM requests WHERE next_attempt_at IS NOT NULL";

/// Puts the database back in a consistent state after the previous process ended, however it
/// ended. This process holds the lock, so no lease can belong to a live worker: every leased
/// job goes back to the queue at once instead of waiting for its lease to run out. A sync
/// request still `processing` lost its client with the old process, so it is `failed`.
/// Returns the number of unfinished async requests.
pub(super) fn recover(conn: &mut Connection) -> StoreResult<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let released = tx.execute(RELEASE_ALL, [])?;
    let failed = tx.execute(
        FAIL_ABANDONED_SYNC,
        params![Utc::now().timestamp_millis(), ABANDONED_SYNC_ERROR],
    )?;
    let queued: i64 = tx.query_row(COUNT_QUEUED, [], |row| row.get(0))?;
    tx.commit()?;
    let queued = u64::try_from(queued).unwrap_or(0);
    if released + failed > 0 || queued > 0 {
        tracing::info!(
            released_jobs = released,
            failed_sync = failed,
            queued,
            "recovered state from the previous run"
        );
    }
    Ok(queued)
}
