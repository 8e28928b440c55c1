//! The SQLite backend: one writer connection that group-commits, and a pool of readers.
//!
//! SQLite allows one writer at a time. Instead of letting every request contend for the write
//! lock (and pay a commit each), all writes are commands sent to a single writer task. It
//! takes whatever commands are waiting, applies them in one transaction, commits once, and
//! only then answers each caller: a burst of N writes costs one commit, and no caller hears
//! "done" before its write is durable. Readers use their own connections; WAL lets them read
//! while the writer writes.
//!
//! Because every write passes through the writer, it also owns the exact count of unfinished
//! async requests, so the queue bound is checked and enforced with no race and no extra query.
//! That only holds if one process uses the file, so the store takes an exclusive lock file
//! beside the database and refuses to start if another process holds it.

use std::fs::File;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::{mpsc, oneshot};

use super::{
    AttemptOutcome, CleanupReport, Job, ListFilter, NewAsyncRequest, NewRequest, StoreError,
    StoreResult,
};
use crate::model::{DeliveryAttempt, Mode, RequestList, RequestRecord, Status, WorkResult};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[include_str!("../../migrations/sqlite/0001_requests.sql")];

/// Most commands folded into one transaction: bounds the latency a command waits for the
/// batch ahead of it.
const MAX_BATCH: usize = 512;

/// Commands waiting for the writer; senders wait when it is full (backpressure).
const WRITER_QUEUE: usize = 8192;

/// Rows deleted per retention transaction, so a large cleanup never holds the write lock
/// long enough to stall submissions.
const CLEANUP_CHUNK: i64 = 2000;

const READERS: u32 = 8;

/// Statuses that never change again (SQL list form, for `IN`).
macro_rules! finished_statuses {
    () => {
        "('completed', 'failed', 'callback_success', 'callback_failed')"
    };
}

/// The columns [`record_from_row`] reads. A macro, so that every statement stays a
/// `&'static str` that sqlx can prepare once and cache.
macro_rules! record_columns {
    () => {
        "id, mode, status, payload_hash, created_at, completed_at, callback_url, callback_attempts,
         callback_last_error, iterations, input_hash, output_hash, processing_time_ms"
    };
}

#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<Command>,
    readers: SqlitePool,
    queue_size: Arc<AtomicU64>,
    // Held for the life of the store; the OS releases the lock when the process dies.
    _lock: Arc<File>,
}

impl SqliteStore {
    pub async fn open(url: &str, queue_capacity: u64) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit survives power loss, not only a process crash. Group commit keeps
            // the cost to one fsync per batch.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let path = options.get_filename().to_path_buf();
        if path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:") {
            return Err(StoreError::Open(
                "an in-memory SQLite database cannot be shared by the writer and readers; use sqlite://PATH".into(),
            ));
        }
        let lock = lock_database(&path)?;

        let mut conn = SqliteConnection::connect_with(&options).await?;
        migrate(&mut conn).await?;
        let queue_size = recover(&mut conn).await?;

        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.pragma("query_only", "ON"))
            .await?;

        let queue_size = Arc::new(AtomicU64::new(queue_size));
        let (writer, commands) = mpsc::channel(WRITER_QUEUE);
        tokio::spawn(
            Writer {
                conn,
                queue_size: Arc::clone(&queue_size),
                queue_capacity,
            }
            .run(commands),
        );
        Ok(Self {
            writer,
            readers,
            queue_size,
            _lock: Arc::new(lock),
        })
    }

    async fn send(&self, op: Op) -> StoreResult<Reply> {
        let (reply, response) = oneshot::channel();
        self.writer
            .send(Command {
                op,
                reply: Some(reply),
            })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        response.await.map_err(|_| StoreError::WriterGone)?
    }

    pub fn sync_started(&self, new: NewRequest) -> StoreResult<()> {
        // try_send: a full writer queue means the database is the bottleneck; the row is then
        // written by sync_finished's upsert instead, which waits its turn.
        match self.writer.try_send(Command {
            op: Op::SyncStarted(new),
            reply: None,
        }) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::WriterGone),
        }
    }

    pub async fn sync_finished(
        &self,
        id: &str,
        outcome: Result<&WorkResult, &str>,
    ) -> StoreResult<()> {
        let op = Op::SyncFinished {
            id: id.to_string(),
            outcome: outcome.cloned().map_err(str::to_string),
            at: Utc::now(),
        };
        self.send(op).await.map(|_| ())
    }

    pub async fn submit_async(&self, new: NewAsyncRequest) -> StoreResult<()> {
        self.send(Op::SubmitAsync(new)).await.map(|_| ())
    }

    pub async fn claim_due(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
    ) -> StoreResult<Vec<Job>> {
        match self
            .send(Op::Claim {
                owner: owner.to_string(),
                limit,
                lease,
            })
            .await?
        {
            Reply::Jobs(jobs) => Ok(jobs),
            _ => Ok(Vec::new()),
        }
    }

    pub async fn next_due_at(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let now = Utc::now().timestamp_millis();
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM requests
             WHERE next_attempt_at IS NOT NULL AND (lease_expires_at IS NULL OR lease_expires_at < ?1)",
        )
        .bind(now)
        .fetch_one(&self.readers)
        .await?;
        Ok(next.map(from_millis))
    }

    pub async fn store_result(
        &self,
        id: &str,
        owner: &str,
        result: &WorkResult,
    ) -> StoreResult<bool> {
        let op = Op::StoreResult {
            id: id.to_string(),
            owner: owner.to_string(),
            result: result.clone(),
        };
        Ok(matches!(self.send(op).await?, Reply::Updated(true)))
    }

    pub async fn record_attempt(
        &self,
        id: &str,
        owner: &str,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> StoreResult<bool> {
        let op = Op::RecordAttempt {
            id: id.to_string(),
            owner: owner.to_string(),
            attempt: attempt.clone(),
            outcome,
        };
        Ok(matches!(self.send(op).await?, Reply::Updated(true)))
    }

    pub async fn release(&self, owner: &str) -> StoreResult<u64> {
        match self
            .send(Op::Release {
                owner: owner.to_string(),
            })
            .await?
        {
            Reply::Count(n) => Ok(n),
            _ => Ok(0),
        }
    }

    pub async fn get(&self, id: &str) -> StoreResult<Option<RequestRecord>> {
        let Some(row) = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM requests WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.readers)
        .await?
        else {
            return Ok(None);
        };
        let mut record = record_from_row(&row)?;
        let attempts = sqlx::query(
            "SELECT attempt, started_at, duration_ms, status_code, error, response_body
             FROM delivery_attempts WHERE request_id = ?1 ORDER BY attempt",
        )
        .bind(id)
        .fetch_all(&self.readers)
        .await?
        .iter()
        .map(attempt_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        record.attempts = Some(attempts);
        Ok(Some(record))
    }

    pub async fn list(&self, filter: ListFilter) -> StoreResult<RequestList> {
        // Unused filters compare a NULL parameter, so one statement (prepared once and cached)
        // serves every combination.
        macro_rules! condition {
            () => {
                "(?1 IS NULL OR mode = ?1) AND (?2 IS NULL OR status = ?2)"
            };
        }
        let mode = filter.mode.map(Mode::as_str);
        let status = filter.status.map(Status::as_str);
        let total: i64 = sqlx::query_scalar(concat!(
            "SELECT COUNT(*) FROM requests WHERE ",
            condition!()
        ))
        .bind(mode)
        .bind(status)
        .fetch_one(&self.readers)
        .await?;
        let requests = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM requests WHERE ",
            condition!(),
            " ORDER BY created_at DESC, id DESC LIMIT ?3 OFFSET ?4"
        ))
        .bind(mode)
        .bind(status)
        .bind(i64::from(filter.limit))
        .bind(i64::try_from(filter.offset).unwrap_or(i64::MAX))
        .fetch_all(&self.readers)
        .await?
        .iter()
        .map(record_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        Ok(RequestList {
            total: u64::try_from(total).unwrap_or(0),
            requests,
        })
    }

    pub fn queue_size(&self) -> u64 {
        self.queue_size.load(Ordering::Relaxed)
    }

    pub async fn ping(&self) -> bool {
        let ping = sqlx::query_scalar::<_, i64>("SELECT 1").fetch_one(&self.readers);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), ping).await,
            Ok(Ok(1))
        )
    }

    pub async fn cleanup(
        &self,
        cutoff: DateTime<Utc>,
        max_stored: u64,
    ) -> StoreResult<CleanupReport> {
        let mut report = CleanupReport::default();
        loop {
            let op = Op::Cleanup { cutoff, max_stored };
            let Reply::Cleaned(chunk) = self.send(op).await? else {
                break;
            };
            report.expired += chunk.expired;
            report.over_limit += chunk.over_limit;
            if chunk.expired + chunk.over_limit < CLEANUP_CHUNK as u64 {
                break;
            }
        }
        Ok(report)
    }

    pub async fn close(&self) {
        // Writes queued before this one are committed first; later ones get WriterGone.
        let _ = self.send(Op::Close).await;
        self.readers.close().await;
    }
}

fn lock_database(path: &std::path::Path) -> StoreResult<File> {
    let mut lock_path = PathBuf::from(path);
    lock_path.as_mut_os_string().push(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Open(format!("{}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::Open(format!("{}: {e}", lock_path.display())))
        }
    }
}

async fn migrate(conn: &mut SqliteConnection) -> StoreResult<()> {
    let applied: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await?;
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Open(format!(
            "the database schema is version {applied}, newer than this build knows ({}); upgrade syncasync",
            MIGRATIONS.len()
        )));
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        // PRAGMA takes no parameters; the value is our own integer.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PRAGMA user_version = {}",
            n + 1
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(version = n + 1, "applied schema migration");
    }
    Ok(())
}

/// Puts the database back in a consistent state after the previous process ended, however it
/// ended. This process holds the lock, so no lease can belong to a live worker: every leased
/// job goes back to the queue at once instead of waiting for its lease to run out. A sync
/// request still `processing` lost its client with the old process, so it is `failed`.
/// Returns the number of unfinished async requests.
async fn recover(conn: &mut SqliteConnection) -> StoreResult<u64> {
    let mut tx = conn.begin().await?;
    let released = sqlx::query(
        "UPDATE requests SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner IS NOT NULL",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let failed = sqlx::query(
        "UPDATE requests SET status = 'failed', completed_at = ?1
         WHERE mode = 'sync' AND status = 'processing'",
    )
    .bind(Utc::now().timestamp_millis())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let queued: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE next_attempt_at IS NOT NULL")
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    if released + failed + u64::try_from(queued).unwrap_or(0) > 0 {
        tracing::info!(
            released_jobs = released,
            failed_sync = failed,
            queued,
            "recovered state from the previous run"
        );
    }
    Ok(u64::try_from(queued).unwrap_or(0))
}

/// One write, with the caller waiting for its commit (or not, for fire-and-forget writes).
struct Command {
    op: Op,
    reply: Option<oneshot::Sender<StoreResult<Reply>>>,
}

enum Op {
    SyncStarted(NewRequest),
    SyncFinished {
        id: String,
        outcome: Result<WorkResult, String>,
        at: DateTime<Utc>,
    },
    SubmitAsync(NewAsyncRequest),
    Claim {
        owner: String,
        limit: u32,
        lease: Duration,
    },
    StoreResult {
        id: String,
        owner: String,
        result: WorkResult,
    },
    RecordAttempt {
        id: String,
        owner: String,
        attempt: DeliveryAttempt,
        outcome: AttemptOutcome,
    },
    Release {
        owner: String,
    },
    Cleanup {
        cutoff: DateTime<Utc>,
        max_stored: u64,
    },
    /// Commit what came before it, then close the connection (handled by the writer loop).
    Close,
}

enum Reply {
    Done,
    Updated(bool),
    Count(u64),
    Jobs(Vec<Job>),
    Cleaned(CleanupReport),
}

/// What a command did besides its reply: how it changed the number of queued requests.
struct Applied {
    reply: StoreResult<Reply>,
    queue_delta: i64,
}

struct Writer {
    conn: SqliteConnection,
    queue_size: Arc<AtomicU64>,
    queue_capacity: u64,
}

impl Writer {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while commands.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let closer = batch
                .iter()
                .position(|c| matches!(c.op, Op::Close))
                .map(|i| batch.remove(i));
            if !batch.is_empty() {
                self.commit_batch(&mut batch).await;
            }
            batch.clear();
            if let Some(closer) = closer {
                // Leave the WAL checkpointed so the database file is complete on its own.
                let _ = sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                    .execute(&mut self.conn)
                    .await;
                let _ = self.conn.close().await;
                respond(closer, Ok(Reply::Done));
                return;
            }
        }
    }

    /// Applies a batch in one transaction and answers each command after the commit. If the
    /// transaction fails, each command is retried alone, so one bad write cannot fail others.
    async fn commit_batch(&mut self, batch: &mut Vec<Command>) {
        match self.apply_all(batch).await {
            Ok(results) => {
                for (command, applied) in batch.drain(..).zip(results) {
                    respond(command, applied.reply);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, size = batch.len(), "batch write failed; retrying writes one by one");
                for command in batch.drain(..) {
                    let mut single = vec![command];
                    let reply = match self.apply_all(&single).await {
                        Ok(mut results) => results.pop().map_or(Ok(Reply::Done), |a| a.reply),
                        Err(err) => Err(err),
                    };
                    if let Some(command) = single.pop() {
                        respond(command, reply);
                    }
                }
            }
        }
    }

    async fn apply_all(&mut self, batch: &[Command]) -> StoreResult<Vec<Applied>> {
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut results = Vec::with_capacity(batch.len());
        // Commands in one batch see each other's effect on the queue bound.
        let mut queue_size = self.queue_size.load(Ordering::Relaxed);
        for command in batch {
            let applied = apply(&mut tx, &command.op, queue_size, self.queue_capacity).await?;
            queue_size = queue_size.saturating_add_signed(applied.queue_delta);
            results.push(applied);
        }
        tx.commit().await?;
        self.queue_size.store(queue_size, Ordering::Relaxed);
        Ok(results)
    }
}

fn respond(command: Command, reply: StoreResult<Reply>) {
    if let Some(sender) = command.reply {
        // The caller may have gone (client disconnected); the write stands regardless.
        let _ = sender.send(reply);
    } else if let Err(err) = reply {
        tracing::warn!(error = %err, "background write failed");
    }
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Runs one command inside the open transaction. A database error aborts the whole batch;
/// a refusal (queue full) is a reply, not an error.
async fn apply(
    conn: &mut SqliteConnection,
    op: &Op,
    queue_size: u64,
    queue_capacity: u64,
) -> Result<Applied, sqlx::Error> {
    let done = |reply| Applied {
        reply: Ok(reply),
        queue_delta: 0,
    };
    match op {
        Op::SyncStarted(new) => {
            sqlx::query(
                "INSERT INTO requests (id, mode, status, payload_hash, iterations, created_at)
                 VALUES (?1, 'sync', 'processing', ?2, ?3, ?4) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&new.id)
            .bind(&new.payload_hash)
            .bind(new.iterations)
            .bind(millis(new.created_at))
            .execute(&mut *conn)
            .await?;
            Ok(done(Reply::Done))
        }
        Op::SyncFinished { id, outcome, at } => {
            let (status, result) = match outcome {
                Ok(result) => ("completed", Some(result)),
                Err(_) => ("failed", None),
            };
            let updated = sqlx::query(
                "UPDATE requests SET status = ?2, completed_at = ?3, input_hash = ?4, output_hash = ?5,
                        processing_time_ms = ?6
                 WHERE id = ?1",
            )
            .bind(id)
            .bind(status)
            .bind(millis(*at))
            .bind(result.map(|r| &r.input_hash))
            .bind(result.map(|r| &r.output_hash))
            .bind(result.map(|r| r.processing_time_ms))
            .execute(&mut *conn)
            .await?;
            Ok(done(Reply::Updated(updated.rows_affected() == 1)))
        }
        Op::SubmitAsync(new) => {
            if queue_size >= queue_capacity {
                return Ok(Applied {
                    reply: Err(StoreError::QueueFull),
                    queue_delta: 0,
                });
            }
            let created = millis(new.request.created_at);
            sqlx::query(
                "INSERT INTO requests (id, mode, status, payload_hash, data, iterations, callback_url,
                                       created_at, next_attempt_at)
                 VALUES (?1, 'async', 'pending', ?2, ?3, ?4, ?5, ?6, ?6)",
            )
            .bind(&new.request.id)
            .bind(&new.request.payload_hash)
            .bind(&new.data)
            .bind(new.request.iterations)
            .bind(&new.callback_url)
            .bind(created)
            .execute(&mut *conn)
            .await?;
            Ok(Applied {
                reply: Ok(Reply::Done),
                queue_delta: 1,
            })
        }
        Op::Claim {
            owner,
            limit,
            lease,
        } => {
            let now = Utc::now();
            let lease_until =
                now + chrono::Duration::from_std(*lease).unwrap_or(chrono::Duration::MAX);
            let rows = sqlx::query(
                "UPDATE requests
                 SET status = CASE status WHEN 'pending' THEN 'processing' ELSE status END,
                     lease_owner = ?1, lease_expires_at = ?2
                 WHERE id IN (
                     SELECT id FROM requests
                     WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ?3
                       AND (lease_expires_at IS NULL OR lease_expires_at < ?3)
                     ORDER BY next_attempt_at LIMIT ?4)
                 RETURNING id, data, iterations, callback_url, callback_attempts, round_start_attempts,
                           input_hash, output_hash, processing_time_ms",
            )
            .bind(owner)
            .bind(millis(lease_until))
            .bind(millis(now))
            .bind(i64::from(*limit))
            .fetch_all(&mut *conn)
            .await?;
            let jobs = rows
                .iter()
                .map(job_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(done(Reply::Jobs(jobs)))
        }
        Op::StoreResult { id, owner, result } => {
            let updated = sqlx::query(
                "UPDATE requests SET status = 'callback_pending', input_hash = ?3, output_hash = ?4,
                        processing_time_ms = ?5, data = NULL
                 WHERE id = ?1 AND lease_owner = ?2",
            )
            .bind(id)
            .bind(owner)
            .bind(&result.input_hash)
            .bind(&result.output_hash)
            .bind(result.processing_time_ms)
            .execute(&mut *conn)
            .await?;
            Ok(done(Reply::Updated(updated.rows_affected() == 1)))
        }
        Op::RecordAttempt {
            id,
            owner,
            attempt,
            outcome,
        } => {
            let (status, completed_at, next_attempt_at) = match outcome {
                AttemptOutcome::Delivered => ("callback_success", Some(millis(Utc::now())), None),
                AttemptOutcome::GaveUp => ("callback_failed", Some(millis(Utc::now())), None),
                AttemptOutcome::RetryAt(at) => ("callback_pending", None, Some(millis(*at))),
            };
            let updated = sqlx::query(
                "UPDATE requests SET status = ?3, completed_at = ?4, next_attempt_at = ?5,
                        callback_attempts = ?6, callback_last_error = COALESCE(?7, callback_last_error),
                        lease_owner = NULL, lease_expires_at = NULL
                 WHERE id = ?1 AND lease_owner = ?2",
            )
            .bind(id)
            .bind(owner)
            .bind(status)
            .bind(completed_at)
            .bind(next_attempt_at)
            .bind(attempt.attempt)
            .bind(&attempt.error)
            .execute(&mut *conn)
            .await?;
            if updated.rows_affected() == 0 {
                // The lease was lost: the job belongs to someone else now; record nothing.
                return Ok(done(Reply::Updated(false)));
            }
            sqlx::query(
                "INSERT INTO delivery_attempts
                     (request_id, attempt, started_at, duration_ms, status_code, error, response_body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (request_id, attempt) DO NOTHING",
            )
            .bind(id)
            .bind(attempt.attempt)
            .bind(millis(attempt.started_at))
            .bind(attempt.duration_ms)
            .bind(attempt.status_code)
            .bind(&attempt.error)
            .bind(&attempt.response_body)
            .execute(&mut *conn)
            .await?;
            let finished = !matches!(outcome, AttemptOutcome::RetryAt(_));
            Ok(Applied {
                reply: Ok(Reply::Updated(true)),
                queue_delta: if finished { -1 } else { 0 },
            })
        }
        Op::Release { owner } => {
            let released = sqlx::query(
                "UPDATE requests SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = ?1",
            )
            .bind(owner)
            .execute(&mut *conn)
            .await?;
            Ok(done(Reply::Count(released.rows_affected())))
        }
        Op::Cleanup { cutoff, max_stored } => {
            let expired = sqlx::query(concat!(
                "DELETE FROM requests WHERE id IN (
                     SELECT id FROM requests WHERE status IN ",
                finished_statuses!(),
                " AND COALESCE(completed_at, created_at) < ?1 LIMIT ?2)"
            ))
            .bind(millis(*cutoff))
            .bind(CLEANUP_CHUNK)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            let room = CLEANUP_CHUNK - i64::try_from(expired).unwrap_or(CLEANUP_CHUNK);
            let over_limit = if room > 0 {
                sqlx::query(concat!(
                    "DELETE FROM requests WHERE id IN (
                         SELECT id FROM requests WHERE status IN ",
                    finished_statuses!(),
                    " ORDER BY created_at DESC, id DESC LIMIT ?2 OFFSET ?1)"
                ))
                .bind(i64::try_from(*max_stored).unwrap_or(i64::MAX))
                .bind(room)
                .execute(&mut *conn)
                .await?
                .rows_affected()
            } else {
                0
            };
            Ok(done(Reply::Cleaned(CleanupReport {
                expired,
                over_limit,
            })))
        }
        Op::Close => Ok(done(Reply::Done)),
    }
}

fn record_from_row(row: &SqliteRow) -> Result<RequestRecord, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let mode: String = row.try_get("mode")?;
    let status: String = row.try_get("status")?;
    let decode = |column: &str, value: &str| sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source: format!("unknown value {value:?}").into(),
    };
    Ok(RequestRecord {
        result: result_from_row(row, &id)?,
        mode: Mode::parse(&mode).ok_or_else(|| decode("mode", &mode))?,
        status: Status::parse(&status).ok_or_else(|| decode("status", &status))?,
        payload_hash: row.try_get("payload_hash")?,
        created_at: from_millis(row.try_get("created_at")?),
        completed_at: row
            .try_get::<Option<i64>, _>("completed_at")?
            .map(from_millis),
        callback_url: row.try_get("callback_url")?,
        callback_attempts: row.try_get("callback_attempts")?,
        callback_last_error: row.try_get("callback_last_error")?,
        attempts: None,
        id,
    })
}

fn result_from_row(row: &SqliteRow, id: &str) -> Result<Option<WorkResult>, sqlx::Error> {
    let input_hash: Option<String> = row.try_get("input_hash")?;
    let output_hash: Option<String> = row.try_get("output_hash")?;
    let processing_time_ms: Option<f64> = row.try_get("processing_time_ms")?;
    Ok(match (input_hash, output_hash, processing_time_ms) {
        (Some(input_hash), Some(output_hash), Some(processing_time_ms)) => Some(WorkResult {
            request_id: id.to_string(),
            input_hash,
            output_hash,
            iterations: row.try_get("iterations")?,
            processing_time_ms,
        }),
        _ => None,
    })
}

fn job_from_row(row: &SqliteRow) -> Result<Job, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let callback_attempts: u32 = row.try_get("callback_attempts")?;
    let round_start: u32 = row.try_get("round_start_attempts")?;
    Ok(Job {
        result: result_from_row(row, &id)?,
        data: row.try_get("data")?,
        iterations: row.try_get("iterations")?,
        callback_url: row
            .try_get::<Option<String>, _>("callback_url")?
            .unwrap_or_default(),
        callback_attempts,
        round_attempts: callback_attempts.saturating_sub(round_start),
        id,
    })
}

fn attempt_from_row(row: &SqliteRow) -> Result<DeliveryAttempt, sqlx::Error> {
    Ok(DeliveryAttempt {
        attempt: row.try_get("attempt")?,
        started_at: from_millis(row.try_get("started_at")?),
        duration_ms: row.try_get("duration_ms")?,
        status_code: row.try_get("status_code")?,
        error: row.try_get("error")?,
        response_body: row.try_get("response_body")?,
    })
}
