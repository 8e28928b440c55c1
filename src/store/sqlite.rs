//! The SQLite backend: one writer thread that group-commits, and a small pool of readers.
//!
//! SQLite allows one writer at a time. Instead of letting every request contend for the write
//! lock (and pay a commit each), all writes are commands sent to a single writer thread. It
//! takes whatever commands are waiting, applies them in one transaction, commits once, and
//! only then answers each caller: a burst of N writes costs one commit, and no caller hears
//! "done" before its write is durable. Readers use their own connections; WAL lets them read
//! while the writer writes.
//!
//! The writer is a plain OS thread running synchronous SQLite calls with cached prepared
//! statements: a whole batch costs one thread wake-up, where an async driver would hop
//! between threads for every statement (measured: that hop, not SQLite, was the bottleneck).
//!
//! Because every write passes through the writer, it also owns the exact count of unfinished
//! async requests, so the queue bound is enforced with no race and no extra query. That only
//! holds if one process uses the file, so the store takes an exclusive lock file beside the
//! database and refuses to start if another process holds it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior,
    config::DbConfig, params, params_from_iter,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::due::{NEXT_DUE_WINDOW, RoomLeft, earliest, millis_of, next_due_in_window};
use super::{
    AttemptOutcome, Dialect, Job, KeyHolder, ListFilter, ListParam, NewAsyncRequest, NewRequest,
    PoolStats, Position, Redelivery, StatusCounts, StoreError, StoreResult, Submitted, claim_scan,
    list_conditions,
};
use crate::delivery::destinations::{Rooms, destination_of_str};
use crate::model::{DeliveryAttempt, Mode, RequestList, RequestRecord, Status, WorkResult};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_requests.sql"),
    include_str!("../../migrations/sqlite/0002_attempt_instance.sql"),
    include_str!("../../migrations/sqlite/0003_claims.sql"),
    include_str!("../../migrations/sqlite/0004_destinations.sql"),
    include_str!("../../migrations/sqlite/0005_destination_index.sql"),
    include_str!("../../migrations/sqlite/0006_idempotency.sql"),
];

/// Most commands folded into one transaction: bounds the latency a command waits for the
/// batch ahead of it.
const MAX_BATCH: usize = 512;

/// Commands waiting for the writer; senders wait when it is full (backpressure).
const WRITER_QUEUE: usize = 8192;

/// Read connections. Reads are short; more connections than cores buys nothing.
const READERS: usize = 4;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<Command>,
    readers: Arc<Readers>,
    queue_size: Arc<AtomicU64>,
    /// Why the last write failed for a reason outside any one request (disk full, I/O
    /// error), until a write succeeds again: `/healthz` reports it.
    write_failure: Arc<Mutex<Option<String>>>,
    /// A read connection of `/healthz`'s own: a health check must not queue behind client
    /// reads, or a busy but healthy service would report itself unhealthy.
    health: Arc<Mutex<Connection>>,
    // Held for the life of the store; the OS releases the lock when the process dies.
    _lock: Arc<File>,
}

impl SqliteStore {
    pub async fn open(url: &str, queue_capacity: u64) -> StoreResult<Self> {
        let path = database_path(url)?;
        let lock = lock_database(&path)?;
        let (conn, queued) = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> StoreResult<(Connection, u64)> {
                let mut conn = open_connection(&path, false)?;
                migrate(&mut conn)?;
                backfill_destinations(&mut conn)?;
                let queued = recover(&mut conn)?;
                Ok((conn, queued))
            }
        })
        .await
        .map_err(|e| StoreError::Open(e.to_string()))??;

        let (readers, health) = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> rusqlite::Result<_> {
                let readers = (0..READERS)
                    .map(|_| open_connection(&path, true))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((readers, open_connection(&path, true)?))
            }
        })
        .await
        .map_err(|e| StoreError::Open(e.to_string()))??;

        let queue_size = Arc::new(AtomicU64::new(queued));
        let write_failure = Arc::new(Mutex::new(None));
        let (writer, commands) = mpsc::channel(WRITER_QUEUE);
        let mut writer_state = Writer {
            conn,
            queue_size: Arc::clone(&queue_size),
            queue_capacity,
            write_failure: Arc::clone(&write_failure),
        };
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_state.run(commands))
            .map_err(|e| StoreError::Open(format!("cannot start the writer thread: {e}")))?;

        Ok(Self {
            writer,
            readers: Arc::new(Readers {
                idle: Mutex::new(readers),
                available: Arc::new(Semaphore::new(READERS)),
            }),
            queue_size,
            write_failure,
            health: Arc::new(Mutex::new(health)),
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
        new: &NewRequest,
        outcome: Result<&WorkResult, &str>,
    ) -> StoreResult<()> {
        let op = Op::SyncFinished {
            new: new.clone(),
            outcome: outcome.cloned().map_err(str::to_string),
            at: Utc::now(),
        };
        self.send(op).await?.done()
    }

    pub async fn key_holder(&self, key: &str) -> StoreResult<Option<KeyHolder>> {
        let key = key.to_string();
        self.read(move |conn| holder_of(conn, &key)).await
    }

    pub async fn sync_started_with_key(&self, new: NewRequest) -> StoreResult<Submitted> {
        self.send(Op::SyncStarted(new)).await?.submitted()
    }

    pub async fn submit_async(&self, new: NewAsyncRequest) -> StoreResult<Submitted> {
        self.send(Op::SubmitAsync(new)).await?.submitted()
    }

    pub async fn submit_batch(&self, batch: &[NewAsyncRequest]) -> StoreResult<()> {
        self.send(Op::SubmitBatch(batch.to_vec())).await?.done()
    }

    pub async fn claim_due(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
        rooms: &Rooms,
    ) -> StoreResult<Vec<Job>> {
        let op = Op::Claim {
            owner: owner.to_string(),
            limit,
            lease,
            rooms: rooms.clone(),
        };
        self.send(op).await?.jobs()
    }

    pub async fn heartbeat(
        &self,
        owner: &str,
        tokens: &[String],
        lease: Duration,
    ) -> StoreResult<u64> {
        let op = Op::Heartbeat {
            owner: owner.to_string(),
            tokens: tokens.to_vec(),
            lease,
        };
        self.send(op).await?.count()
    }

    pub async fn next_due_at(&self, rooms: &Rooms) -> StoreResult<Option<DateTime<Utc>>> {
        let now = Utc::now().timestamp_millis();
        let rooms = rooms.clone();
        let next = self.read(move |conn| next_due(conn, &rooms, now)).await?;
        Ok(next.map(from_millis))
    }

    pub async fn store_result(
        &self,
        id: &str,
        token: &str,
        result: &WorkResult,
    ) -> StoreResult<bool> {
        let op = Op::StoreResult {
            id: id.to_string(),
            token: token.to_string(),
            result: result.clone(),
        };
        self.send(op).await?.updated()
    }

    pub async fn record_attempt(
        &self,
        id: &str,
        owner: &str,
        token: &str,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> StoreResult<bool> {
        let op = Op::RecordAttempt {
            id: id.to_string(),
            owner: owner.to_string(),
            token: token.to_string(),
            attempt: attempt.clone(),
            outcome,
        };
        self.send(op).await?.updated()
    }

    pub async fn give_up(&self, id: &str, token: &str, reason: &str) -> StoreResult<bool> {
        let op = Op::GiveUp {
            id: id.to_string(),
            token: token.to_string(),
            reason: reason.to_string(),
        };
        self.send(op).await?.updated()
    }

    pub async fn redeliver(&self, id: &str) -> StoreResult<Redelivery> {
        self.send(Op::Redeliver { id: id.to_string() })
            .await?
            .redelivery()
    }

    pub async fn release(&self, owner: &str) -> StoreResult<u64> {
        self.send(Op::Release {
            owner: owner.to_string(),
        })
        .await?
        .count()
    }

    pub async fn get(&self, id: &str) -> StoreResult<Option<RequestRecord>> {
        let id = id.to_string();
        self.read(move |conn| {
            let Some(mut record) = conn
                .prepare_cached(concat!(
                    "SELECT ",
                    record_columns!(),
                    " FROM requests WHERE id = ?1"
                ))?
                .query_row([&id], record_from_row)
                .optional()?
            else {
                return Ok(None);
            };
            let attempts = conn
                .prepare_cached(concat!(
                    "SELECT ",
                    attempt_columns!(),
                    " FROM delivery_attempts WHERE request_id = ?1 ORDER BY attempt"
                ))?
                .query_map([&id], attempt_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            record.attempts = Some(attempts);
            Ok(Some(record))
        })
        .await
    }

    pub async fn list(&self, filter: ListFilter) -> StoreResult<RequestList> {
        self.read(move |conn| list_on(conn, &filter)).await
    }

    pub async fn position(&self, id: &str) -> StoreResult<Option<Position>> {
        let id = id.to_string();
        self.read(move |conn| {
            conn.prepare_cached("SELECT created_at, id FROM requests WHERE id = ?1")?
                .query_row([&id], |row| {
                    Ok(Position {
                        created_at: from_millis(row.get(0)?),
                        id: row.get(1)?,
                    })
                })
                .optional()
        })
        .await
    }

    pub async fn status_counts(&self) -> StoreResult<StatusCounts> {
        self.read(|conn| {
            conn.prepare_cached("SELECT status, COUNT(*) FROM requests GROUP BY status")?
                .query_map([], |row| {
                    let status: String = row.get(0)?;
                    let n: i64 = row.get(1)?;
                    let status = Status::parse(&status).ok_or_else(|| decode_error(0, &status))?;
                    Ok((status, u64::try_from(n).unwrap_or(0)))
                })?
                .collect()
        })
        .await
    }

    pub fn pool_stats(&self) -> PoolStats {
        let idle = self.readers.available.available_permits() as u64;
        PoolStats {
            // The writer's connection is always in use.
            in_use: READERS as u64 - idle + 1,
            idle,
            writer_queue: (WRITER_QUEUE - self.writer.capacity()) as u64,
        }
    }

    pub fn queue_size(&self) -> u64 {
        self.queue_size.load(Ordering::Relaxed)
    }

    /// Whether the database answers, and if not, why. While writes are failing (a full disk),
    /// a read is not proof of health: a probe write decides, so that `/healthz` turns healthy
    /// again by itself once space returns, even if no traffic arrives to try.
    pub async fn ping(&self) -> Result<(), String> {
        let failing = self.write_failure().is_some();
        let check = async {
            if failing {
                self.send(Op::Probe).await.map(|_| ())
            } else {
                let health = Arc::clone(&self.health);
                tokio::task::spawn_blocking(move || {
                    health
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
                })
                .await
                .map_err(|e| StoreError::Open(e.to_string()))?
                .map(|_| ())
                .map_err(StoreError::from)
            }
        };
        match tokio::time::timeout(Duration::from_secs(2), check).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(self.write_failure().unwrap_or_else(|| err.to_string())),
            Err(_) => Err("the database did not answer within 2 s".into()),
        }
    }

    fn write_failure(&self) -> Option<String> {
        self.write_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub async fn delete_expired(&self, retention: Duration, chunk: u64) -> StoreResult<u64> {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        self.send(Op::DeleteExpired { cutoff, chunk })
            .await?
            .count()
    }

    pub async fn nth_newest_finished(&self, n: u64) -> StoreResult<Option<Position>> {
        let offset = i64::try_from(n).unwrap_or(i64::MAX);
        self.read(move |conn| {
            conn.prepare_cached(concat!(
                "SELECT created_at, id FROM requests WHERE status IN ",
                finished_statuses!(),
                " ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET ?1"
            ))?
            .query_row([offset], |row| {
                Ok(Position {
                    created_at: from_millis(row.get(0)?),
                    id: row.get(1)?,
                })
            })
            .optional()
        })
        .await
    }

    pub async fn delete_finished_through(
        &self,
        boundary: &Position,
        chunk: u64,
    ) -> StoreResult<u64> {
        let op = Op::DeleteFinishedThrough {
            boundary: boundary.clone(),
            chunk,
        };
        self.send(op).await?.count()
    }

    pub async fn close(&self) {
        // Writes queued before this one are committed first; later ones get WriterGone.
        let _ = self.send(Op::Close).await;
    }

    /// Runs a read on an idle reader connection, on a blocking thread.
    ///
    /// The connection and its permit travel into the blocking task and are handed back there,
    /// not after the `.await`: if the caller's future is dropped (a client hung up, a timeout
    /// fired), the read still finishes on its thread and the connection still returns to the
    /// pool. Returning it after the `.await` leaked one connection per dropped caller.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.readers.available)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::WriterGone)?;
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = readers.take()?;
            let result = f(&conn);
            readers.put_back(conn);
            Ok(result?)
        })
        .await
        .map_err(|e| StoreError::Open(e.to_string()))?
    }
}

/// The read connections. A permit of `available` entitles its holder to one connection of
/// `idle`; both are given back together by the blocking task that used them.
struct Readers {
    idle: Mutex<Vec<Connection>>,
    available: Arc<Semaphore>,
}

impl Readers {
    fn take(&self) -> StoreResult<Connection> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .ok_or(StoreError::WriterGone)
    }

    fn put_back(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(conn);
    }
}

/// The file a `sqlite://PATH` (or `sqlite:PATH`) URL names; query parameters are ignored.
fn database_path(url: &str) -> StoreResult<PathBuf> {
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

fn open_connection(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
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
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn lock_database(path: &Path) -> StoreResult<File> {
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

/// Gives requests recorded before destinations were (schema version 4) the destination of
/// their callback URL: claims count each destination's room by it. Parsed here, as the
/// dispatcher parses it, so both count the same destination.
fn backfill_destinations(conn: &mut Connection) -> StoreResult<()> {
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
        let mut update = tx.prepare("UPDATE requests SET destination = ?2 WHERE id = ?1")?;
        for (id, url) in &rows {
            update.execute(params![id, destination_of_str(url)])?;
        }
    }
    tx.commit()?;
    tracing::info!(
        requests = rows.len(),
        "recorded the destinations of older requests"
    );
    Ok(())
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Open(format!(
            "the database schema is version {applied}, newer than this build knows ({}); upgrade syncasync",
            MIGRATIONS.len()
        )));
    }
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
    Ok(())
}

/// Puts the database back in a consistent state after the previous process ended, however it
/// ended. This process holds the lock, so no lease can belong to a live worker: every leased
/// job goes back to the queue at once instead of waiting for its lease to run out. A sync
/// request still `processing` lost its client with the old process, so it is `failed`.
/// Returns the number of unfinished async requests.
fn recover(conn: &mut Connection) -> StoreResult<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let released = tx.execute(
        "UPDATE requests SET lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL
         WHERE lease_owner IS NOT NULL",
        [],
    )?;
    let failed = tx.execute(
        "UPDATE requests SET status = 'failed', completed_at = ?1,
                error = 'the service stopped before the work finished', idempotency_key = NULL
         WHERE mode = 'sync' AND status = 'processing'",
        [Utc::now().timestamp_millis()],
    )?;
    let queued: i64 = tx.query_row(
        "SELECT COUNT(*) FROM requests WHERE next_attempt_at IS NOT NULL",
        [],
        |row| row.get(0),
    )?;
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

/// One write, with the caller waiting for its commit (or not, for fire-and-forget writes).
struct Command {
    op: Op,
    reply: Option<oneshot::Sender<StoreResult<Reply>>>,
}

enum Op {
    SyncStarted(NewRequest),
    SyncFinished {
        new: NewRequest,
        outcome: Result<WorkResult, String>,
        at: DateTime<Utc>,
    },
    SubmitAsync(NewAsyncRequest),
    /// All of them, or none when they do not all fit in the queue.
    SubmitBatch(Vec<NewAsyncRequest>),
    Claim {
        owner: String,
        limit: u32,
        lease: Duration,
        rooms: Rooms,
    },
    Heartbeat {
        owner: String,
        tokens: Vec<String>,
        lease: Duration,
    },
    StoreResult {
        id: String,
        token: String,
        result: WorkResult,
    },
    RecordAttempt {
        id: String,
        owner: String,
        token: String,
        attempt: DeliveryAttempt,
        outcome: AttemptOutcome,
    },
    GiveUp {
        id: String,
        token: String,
        reason: String,
    },
    /// A write that changes nothing anyone reads: does the database take writes again?
    Probe,
    Redeliver {
        id: String,
    },
    Release {
        owner: String,
    },
    /// Up to `chunk` finished requests that finished before `cutoff`.
    DeleteExpired {
        cutoff: DateTime<Utc>,
        chunk: u64,
    },
    /// Up to `chunk` of the oldest finished requests, at or before `boundary`.
    DeleteFinishedThrough {
        boundary: Position,
        chunk: u64,
    },
    /// Commit what came before it, then close the connection (handled by the writer loop).
    Close,
}

/// What the writer answers. Each caller takes the kind it expects through one of the methods
/// below: an answer of another kind is an error (a bug), never a default value.
#[derive(Debug)]
enum Reply {
    Done,
    Updated(bool),
    Count(u64),
    Jobs(Vec<Job>),
    Redelivery(Redelivery),
    Submitted(Submitted),
}

impl Reply {
    fn kind(&self) -> &'static str {
        match self {
            Reply::Done => "done",
            Reply::Updated(_) => "updated",
            Reply::Count(_) => "count",
            Reply::Jobs(_) => "jobs",
            Reply::Redelivery(_) => "redelivery",
            Reply::Submitted(_) => "submitted",
        }
    }

    fn mismatch(&self, expected: &'static str) -> StoreError {
        StoreError::WrongReply {
            expected,
            got: self.kind(),
        }
    }

    fn done(self) -> StoreResult<()> {
        match self {
            Reply::Done => Ok(()),
            other => Err(other.mismatch("done")),
        }
    }

    fn updated(self) -> StoreResult<bool> {
        match self {
            Reply::Updated(updated) => Ok(updated),
            other => Err(other.mismatch("updated")),
        }
    }

    fn count(self) -> StoreResult<u64> {
        match self {
            Reply::Count(n) => Ok(n),
            other => Err(other.mismatch("count")),
        }
    }

    fn jobs(self) -> StoreResult<Vec<Job>> {
        match self {
            Reply::Jobs(jobs) => Ok(jobs),
            other => Err(other.mismatch("jobs")),
        }
    }

    fn submitted(self) -> StoreResult<Submitted> {
        match self {
            Reply::Submitted(outcome) => Ok(outcome),
            other => Err(other.mismatch("submitted")),
        }
    }

    fn redelivery(self) -> StoreResult<Redelivery> {
        match self {
            Reply::Redelivery(outcome) => Ok(outcome),
            other => Err(other.mismatch("redelivery")),
        }
    }
}

/// What a command did besides its reply: how it changed the number of queued requests.
struct Applied {
    reply: StoreResult<Reply>,
    queue_delta: i64,
}

struct Writer {
    conn: Connection,
    queue_size: Arc<AtomicU64>,
    queue_capacity: u64,
    write_failure: Arc<Mutex<Option<String>>>,
}

impl Writer {
    fn run(&mut self, mut commands: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = commands.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match commands.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            let closer = batch
                .iter()
                .position(|c| matches!(c.op, Op::Close))
                .map(|i| batch.remove(i));
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
            if let Some(closer) = closer {
                // Leave the WAL checkpointed so the database file is complete on its own.
                if let Err(err) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                    tracing::warn!(error = %err, "WAL checkpoint at shutdown failed");
                }
                respond(closer, Ok(Reply::Done));
                return;
            }
        }
    }

    /// Applies a batch in one transaction and answers each command after the commit. If the
    /// transaction fails, each command is retried alone, so one bad write cannot fail others.
    fn commit_batch(&mut self, batch: &mut Vec<Command>) {
        let outcome = self.apply_all(batch);
        self.note_write_health(&outcome);
        match outcome {
            Ok(results) => {
                for (command, applied) in batch.drain(..).zip(results) {
                    respond(command, applied.reply);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, size = batch.len(), "batch write failed; retrying writes one by one");
                for command in batch.drain(..) {
                    let single = std::slice::from_ref(&command);
                    let reply = match self.apply_all(single) {
                        Ok(mut results) => results.pop().map_or(
                            Err(StoreError::WrongReply {
                                expected: "an answer",
                                got: "none",
                            }),
                            |a| a.reply,
                        ),
                        Err(err) => Err(err),
                    };
                    respond(command, reply);
                }
            }
        }
    }

    /// Remembers a failure that is the database's, not a request's (disk full, I/O error),
    /// until a batch commits again.
    fn note_write_health<T>(&self, outcome: &StoreResult<T>) {
        let failure = match outcome {
            Ok(_) => None,
            Err(StoreError::Sqlite(err)) if is_unavailable(err) => Some(describe_failure(err)),
            Err(_) => return,
        };
        let mut state = self
            .write_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.is_some() != failure.is_some() {
            match &failure {
                Some(reason) => tracing::error!(reason = %reason, "database writes are failing"),
                None => tracing::info!("database writes succeed again"),
            }
        }
        *state = failure;
    }

    fn apply_all(&mut self, batch: &[Command]) -> StoreResult<Vec<Applied>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(batch.len());
        // Commands in one batch see each other's effect on the queue bound.
        let mut queue_size = self.queue_size.load(Ordering::Relaxed);
        for command in batch {
            let applied = apply(&tx, &command.op, queue_size, self.queue_capacity)?;
            queue_size = queue_size.saturating_add_signed(applied.queue_delta);
            results.push(applied);
        }
        tx.commit()?;
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

/// The first due rows in due order, whatever their destination: what a claim (and a look
/// for the next due time, with `?1` in the far future) considers first.
const DUE_WINDOW: &str = "SELECT id, COALESCE(destination, ''), next_attempt_at FROM requests
     WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ?1
       AND (lease_expires_at IS NULL OR lease_expires_at < ?2)
     ORDER BY next_attempt_at LIMIT ?3";

/// The destinations with queued jobs, one index seek each (a loose index scan).
const FIRST_DESTINATION: &str = "SELECT destination FROM requests
     WHERE next_attempt_at IS NOT NULL AND destination IS NOT NULL
     ORDER BY destination LIMIT 1";
const NEXT_DESTINATION: &str = "SELECT destination FROM requests
     WHERE next_attempt_at IS NOT NULL AND destination > ?1
     ORDER BY destination LIMIT 1";

/// One destination's first jobs due by `?2` and not leased.
const DESTINATION_DUE: &str = "SELECT id, next_attempt_at FROM requests
     WHERE destination = ?1 AND next_attempt_at IS NOT NULL AND next_attempt_at <= ?2
       AND (lease_expires_at IS NULL OR lease_expires_at < ?3)
     ORDER BY next_attempt_at LIMIT ?4";

const CLAIM_ONE: &str = concat!(
    "UPDATE requests
     SET status = CASE status WHEN 'pending' THEN 'processing' ELSE status END,
         lease_owner = ?2, lease_expires_at = ?3, lease_token = lower(hex(randomblob(16))),
         unrecorded_claims = unrecorded_claims + 1
     WHERE id = ?1
     RETURNING ",
    job_columns!()
);

/// Calls `f` with each destination that has queued jobs, in name order.
fn each_destination(
    conn: &Connection,
    mut f: impl FnMut(&str) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let mut next: Option<String> = conn
        .prepare_cached(FIRST_DESTINATION)?
        .query_row([], |row| row.get(0))
        .optional()?;
    let mut step = conn.prepare_cached(NEXT_DESTINATION)?;
    while let Some(destination) = next {
        f(&destination)?;
        next = step
            .query_row([&destination], |row| row.get(0))
            .optional()?;
    }
    Ok(())
}

/// Claims up to `limit` due jobs, in due order, taking of each destination at most its room
/// and none of a held one unless overdue.
///
/// First the due rows in due order (`claim_scan(limit)` of them): the common case, a cost of
/// the jobs claimed. When those rows belong to destinations without room (a full or held
/// destination's backlog in front) and leave the claim short, it looks destination by
/// destination instead, so jobs behind that backlog are found with a seek per destination
/// rather than a walk over the backlog.
fn claim(
    conn: &Connection,
    owner: &str,
    limit: u32,
    lease: Duration,
    rooms: &Rooms,
) -> rusqlite::Result<Vec<Job>> {
    let now = millis(Utc::now());
    let lease_until = now.saturating_add(millis_of(lease));
    let wanted = limit as usize;
    let scan = claim_scan(limit);

    // Read lazily: the window is read only as far as the claim needs.
    let mut room = RoomLeft::new(rooms);
    let mut picked = Vec::new();
    let mut passed_over = false;
    let mut seen = 0;
    let mut window = conn.prepare_cached(DUE_WINDOW)?;
    let mut rows = window.query(params![now, now, scan])?;
    while picked.len() < wanted {
        let Some(row) = rows.next()? else { break };
        seen += 1;
        let destination: String = row.get(1)?;
        if room.admits(&destination, row.get(2)?, now) {
            room.take(&destination);
            picked.push(row.get::<_, String>(0)?);
        } else {
            passed_over = true;
        }
    }
    drop(rows);

    if picked.len() < wanted && passed_over && seen == scan {
        let room = RoomLeft::new(rooms);
        let mut candidates: Vec<(i64, String)> = Vec::new();
        let mut due_rows = conn.prepare_cached(DESTINATION_DUE)?;
        each_destination(conn, |destination| {
            let left = room.left(destination).min(limit);
            if left == 0 {
                return Ok(());
            }
            let until = room.due_by(destination, now);
            let rows = due_rows.query_map(params![destination, until, now, left], |row| {
                Ok((row.get(1)?, row.get(0)?))
            })?;
            for row in rows {
                candidates.push(row?);
            }
            Ok(())
        })?;
        candidates.sort_unstable();
        candidates.truncate(wanted);
        picked = candidates.into_iter().map(|(_, id)| id).collect();
    }

    let mut claim_one = conn.prepare_cached(CLAIM_ONE)?;
    picked
        .iter()
        .map(|id| claim_one.query_row(params![id, owner, lease_until], job_from_row))
        .collect()
}

/// The earliest time a claim could take a job: of the destinations with room, the first due
/// job not leased (a held destination's once it is overdue). `None` with nothing queued.
fn next_due(conn: &Connection, rooms: &Rooms, now: i64) -> rusqlite::Result<Option<i64>> {
    let room = RoomLeft::new(rooms);
    let window = conn
        .prepare_cached(DUE_WINDOW)?
        .query_map(params![i64::MAX, now, NEXT_DUE_WINDOW], |row| {
            Ok((row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut earliest_seen = match next_due_in_window(&window, NEXT_DUE_WINDOW, &room) {
        Ok(answer) => return Ok(answer),
        Err(so_far) => so_far,
    };
    let mut first_due = conn.prepare_cached(DESTINATION_DUE)?;
    each_destination(conn, |destination| {
        if room.left(destination) == 0 {
            return Ok(());
        }
        let due: Option<i64> = first_due
            .query_row(params![destination, i64::MAX, now, 1], |row| row.get(1))
            .optional()?;
        if let Some(due) = due {
            earliest_seen = earliest(earliest_seen, room.claimable_at(destination, due));
        }
        Ok(())
    })?;
    Ok(earliest_seen)
}

fn insert_async(tx: &Transaction<'_>, new: &NewAsyncRequest) -> rusqlite::Result<()> {
    let (key, fingerprint) = new.request.key_columns();
    tx.prepare_cached(
        "INSERT INTO requests (id, mode, status, payload_hash, data, iterations, callback_url,
                               created_at, next_attempt_at, destination,
                               idempotency_key, idempotency_fingerprint)
         VALUES (?1, 'async', 'pending', ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        new.request.id,
        new.request.payload_hash,
        new.data,
        new.request.iterations,
        new.callback_url,
        millis(new.request.created_at),
        new.destination,
        key,
        fingerprint,
    ])?;
    Ok(())
}

/// The request already holding `new`'s idempotency key, if it has one and it is taken. The
/// writer is the only one writing, so nothing can take the key between this read and the
/// insert that follows it in the same transaction.
fn key_taken(tx: &Transaction<'_>, new: &NewRequest) -> rusqlite::Result<Option<Submitted>> {
    let Some(idempotency) = &new.idempotency else {
        return Ok(None);
    };
    Ok(holder_of(tx, &idempotency.key)?.map(Submitted::KeyTaken))
}

fn holder_of(conn: &Connection, key: &str) -> rusqlite::Result<Option<KeyHolder>> {
    conn.prepare_cached(
        "SELECT id, COALESCE(idempotency_fingerprint, '') FROM requests WHERE idempotency_key = ?1",
    )?
    .query_row([key], |row| {
        Ok(KeyHolder {
            id: row.get(0)?,
            fingerprint: row.get(1)?,
        })
    })
    .optional()
}

/// Runs one command inside the open transaction. A database error aborts the whole batch;
/// a refusal (queue full) is a reply, not an error.
fn apply(
    tx: &Transaction<'_>,
    op: &Op,
    queue_size: u64,
    queue_capacity: u64,
) -> rusqlite::Result<Applied> {
    let done = |reply| Applied {
        reply: Ok(reply),
        queue_delta: 0,
    };
    match op {
        Op::SyncStarted(new) => {
            if let Some(taken) = key_taken(tx, new)? {
                return Ok(done(Reply::Submitted(taken)));
            }
            let (key, fingerprint) = new.key_columns();
            tx.prepare_cached(
                "INSERT INTO requests (id, mode, status, payload_hash, iterations, created_at,
                                       idempotency_key, idempotency_fingerprint)
                 VALUES (?1, 'sync', 'processing', ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                new.id,
                new.payload_hash,
                new.iterations,
                millis(new.created_at),
                key,
                fingerprint,
            ])?;
            Ok(done(Reply::Submitted(Submitted::Created)))
        }
        Op::SyncFinished { new, outcome, at } => {
            let (status, result, error) = match outcome {
                Ok(result) => ("completed", Some(result), None),
                Err(reason) => ("failed", None, Some(reason)),
            };
            // An upsert: the `processing` insert is fire-and-forget and may have been skipped
            // when the writer queue was full.
            tx.prepare_cached(
                "INSERT INTO requests (id, mode, status, payload_hash, iterations, created_at,
                                       completed_at, input_hash, output_hash, processing_time_ms, error)
                 VALUES (?1, 'sync', ?5, ?2, ?3, ?4, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, completed_at = excluded.completed_at,
                     input_hash = excluded.input_hash, output_hash = excluded.output_hash,
                     processing_time_ms = excluded.processing_time_ms, error = excluded.error,
                     -- A failed sync request did no work a replay could answer with: its key
                     -- is free again, for the client's retry.
                     idempotency_key = CASE excluded.status WHEN 'failed' THEN NULL
                                       ELSE requests.idempotency_key END",
            )?
            .execute(params![
                new.id,
                new.payload_hash,
                new.iterations,
                millis(new.created_at),
                status,
                millis(*at),
                result.map(|r| &r.input_hash),
                result.map(|r| &r.output_hash),
                result.map(|r| r.processing_time_ms),
                error,
            ])?;
            Ok(done(Reply::Done))
        }
        Op::SubmitAsync(new) => {
            // A replay is answered whatever the queue: it asks for nothing new.
            if let Some(taken) = key_taken(tx, &new.request)? {
                return Ok(done(Reply::Submitted(taken)));
            }
            if queue_size >= queue_capacity {
                return Ok(Applied {
                    reply: Err(StoreError::QueueFull),
                    queue_delta: 0,
                });
            }
            insert_async(tx, new)?;
            Ok(Applied {
                reply: Ok(Reply::Submitted(Submitted::Created)),
                queue_delta: 1,
            })
        }
        Op::SubmitBatch(batch) => {
            let size = batch.len() as u64;
            if queue_size.saturating_add(size) > queue_capacity {
                return Ok(Applied {
                    reply: Err(StoreError::QueueFull),
                    queue_delta: 0,
                });
            }
            for new in batch {
                insert_async(tx, new)?;
            }
            Ok(Applied {
                reply: Ok(Reply::Done),
                queue_delta: i64::try_from(size).unwrap_or(i64::MAX),
            })
        }
        Op::Claim {
            owner,
            limit,
            lease,
            rooms,
        } => {
            let jobs = claim(tx, owner, *limit, *lease, rooms)?;
            Ok(done(Reply::Jobs(jobs)))
        }
        Op::Heartbeat {
            owner,
            tokens,
            lease,
        } => {
            let lease_until = millis(Utc::now())
                .saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
            let mut renew = tx.prepare_cached(
                "UPDATE requests SET lease_expires_at = ?3 WHERE lease_token = ?2 AND lease_owner = ?1",
            )?;
            let mut renewed = 0;
            for token in tokens {
                renewed += renew.execute(params![owner, token, lease_until])?;
            }
            Ok(done(Reply::Count(renewed as u64)))
        }
        Op::StoreResult { id, token, result } => {
            let updated = tx
                .prepare_cached(
                    "UPDATE requests SET status = 'callback_pending', input_hash = ?3, output_hash = ?4,
                            processing_time_ms = ?5, data = NULL
                     WHERE id = ?1 AND lease_token = ?2",
                )?
                .execute(params![
                    id,
                    token,
                    result.input_hash,
                    result.output_hash,
                    result.processing_time_ms
                ])?;
            Ok(done(Reply::Updated(updated == 1)))
        }
        Op::RecordAttempt {
            id,
            owner,
            token,
            attempt,
            outcome,
        } => {
            let now = millis(Utc::now());
            let (completed_at, next_attempt_at) = match outcome {
                AttemptOutcome::Delivered | AttemptOutcome::GaveUp => (Some(now), None),
                AttemptOutcome::RetryAfter(delay) => (
                    None,
                    Some(now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))),
                ),
            };
            let updated = tx
                .prepare_cached(
                    "UPDATE requests SET status = ?3, completed_at = ?4, next_attempt_at = ?5,
                            callback_attempts = ?6, callback_last_error = COALESCE(?7, callback_last_error),
                            lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL,
                            unrecorded_claims = 0
                     WHERE id = ?1 AND lease_token = ?2",
                )?
                .execute(params![
                    id,
                    token,
                    outcome.status().as_str(),
                    completed_at,
                    next_attempt_at,
                    attempt.attempt,
                    attempt.error
                ])?;
            if updated == 0 {
                // The lease was lost: the job belongs to someone else now; record nothing.
                return Ok(done(Reply::Updated(false)));
            }
            tx.prepare_cached(
                "INSERT INTO delivery_attempts
                     (request_id, attempt, started_at, duration_ms, status_code, error, response_body,
                      claimed_by, note)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (request_id, attempt) DO NOTHING",
            )?
            .execute(params![
                id,
                attempt.attempt,
                millis(attempt.started_at),
                attempt.duration_ms,
                attempt.status_code,
                attempt.error,
                attempt.response_body,
                owner,
                attempt.note,
            ])?;
            Ok(Applied {
                reply: Ok(Reply::Updated(true)),
                queue_delta: if outcome.is_final() { -1 } else { 0 },
            })
        }
        Op::GiveUp { id, token, reason } => {
            let updated = tx
                .prepare_cached(
                    "UPDATE requests SET status = 'callback_failed', completed_at = ?3,
                            next_attempt_at = NULL, callback_last_error = ?4, error = ?4,
                            lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL
                     WHERE id = ?1 AND lease_token = ?2",
                )?
                .execute(params![id, token, millis(Utc::now()), reason])?;
            Ok(Applied {
                reply: Ok(Reply::Updated(updated == 1)),
                queue_delta: if updated == 1 { -1 } else { 0 },
            })
        }
        Op::Probe => {
            // Rewriting the schema version with its own value dirties page 1, so the commit
            // must append to the WAL: it fails exactly when real writes would.
            let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
            tx.pragma_update(None, "user_version", version)?;
            Ok(done(Reply::Done))
        }
        Op::Redeliver { id } => {
            let row: Option<(String, Option<String>)> = tx
                .prepare_cached("SELECT status, callback_url FROM requests WHERE id = ?1")?
                .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let Some((status, callback_url)) = row else {
                return Ok(done(Reply::Redelivery(Redelivery::NotFound)));
            };
            let status = Status::parse(&status).ok_or_else(|| decode_error(0, &status))?;
            if status != Status::CallbackFailed {
                return Ok(done(Reply::Redelivery(Redelivery::WrongStatus(status))));
            }
            if queue_size >= queue_capacity {
                return Ok(Applied {
                    reply: Err(StoreError::QueueFull),
                    queue_delta: 0,
                });
            }
            // A new round: the retry budget counts from the attempts made so far. The
            // destination is written again: a request finished before destinations were
            // recorded has none, and claims count room by it.
            let destination = destination_of_str(callback_url.as_deref().unwrap_or_default());
            tx.prepare_cached(
                "UPDATE requests SET status = 'callback_pending', completed_at = NULL,
                        next_attempt_at = ?2, round_start_attempts = callback_attempts,
                        unrecorded_claims = 0, destination = ?3
                 WHERE id = ?1",
            )?
            .execute(params![id, millis(Utc::now()), destination])?;
            Ok(Applied {
                reply: Ok(Reply::Redelivery(Redelivery::Queued)),
                queue_delta: 1,
            })
        }
        Op::Release { owner } => {
            let released = tx
                // A job handed back untouched does not count as a claim without an outcome.
                .prepare_cached(
                    "UPDATE requests SET lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL,
                            unrecorded_claims = max(unrecorded_claims - 1, 0)
                     WHERE lease_owner = ?1",
                )?
                .execute([owner])?;
            Ok(done(Reply::Count(released as u64)))
        }
        Op::DeleteExpired { cutoff, chunk } => {
            // Finished before the cutoff implies created before it: the created_at index
            // bounds the scan, oldest first.
            let deleted = tx
                .prepare_cached(concat!(
                    "DELETE FROM requests WHERE id IN (
                         SELECT id FROM requests
                         WHERE created_at < ?1 AND status IN ",
                    finished_statuses!(),
                    " AND COALESCE(completed_at, created_at) < ?1
                         ORDER BY created_at LIMIT ?2)"
                ))?
                .execute(params![
                    millis(*cutoff),
                    i64::try_from(*chunk).unwrap_or(i64::MAX)
                ])?;
            Ok(done(Reply::Count(deleted as u64)))
        }
        Op::DeleteFinishedThrough { boundary, chunk } => {
            let deleted = tx
                .prepare_cached(concat!(
                    "DELETE FROM requests WHERE id IN (
                         SELECT id FROM requests
                         WHERE (created_at < ?1 OR (created_at = ?1 AND id <= ?2)) AND status IN ",
                    finished_statuses!(),
                    " ORDER BY created_at LIMIT ?3)"
                ))?
                .execute(params![
                    millis(boundary.created_at),
                    boundary.id,
                    i64::try_from(*chunk).unwrap_or(i64::MAX)
                ])?;
            Ok(done(Reply::Count(deleted as u64)))
        }
        Op::Close => Ok(done(Reply::Done)),
    }
}

fn decode_error(column: usize, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        format!("unknown value {value:?}").into(),
    )
}

/// A page of `filter` and the total that match, on `conn`.
fn list_on(conn: &Connection, filter: &ListFilter) -> rusqlite::Result<RequestList> {
    let (total_where, total_params) = list_conditions(filter, false, &DIALECT);
    let (page_sql, page_params) = list_page_sql(filter);
    let total: i64 = conn
        .prepare_cached(&format!(
            "SELECT COUNT(*) FROM requests WHERE {total_where}"
        ))?
        .query_row(
            params_from_iter(total_params.iter().map(sql_value)),
            |row| row.get(0),
        )?;
    let requests = conn
        .prepare_cached(&page_sql)?
        .query_map(
            params_from_iter(page_params.iter().map(sql_value)),
            record_from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RequestList {
        total: u64::try_from(total).unwrap_or(0),
        requests,
    })
}

/// The statement of one page of `filter`, newest first, and its parameters.
fn list_page_sql(filter: &ListFilter) -> (String, Vec<ListParam>) {
    let (page_where, mut params) = list_conditions(filter, true, &DIALECT);
    let n = params.len();
    let sql = format!(
        concat!(
            "SELECT ",
            record_columns!(),
            " FROM requests WHERE {} ORDER BY created_at DESC, id DESC LIMIT ?{} OFFSET ?{}"
        ),
        page_where,
        n + 1,
        n + 2
    );
    params.push(ListParam::Int(i64::from(filter.limit)));
    params.push(ListParam::Int(
        i64::try_from(filter.offset).unwrap_or(i64::MAX),
    ));
    (sql, params)
}

/// A list parameter as SQLite stores it (times as Unix milliseconds).
fn sql_value(param: &ListParam) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match param {
        ListParam::Text(text) => Value::Text(text.clone()),
        ListParam::Time(at) => Value::Integer(at.timestamp_millis()),
        ListParam::Int(n) => Value::Integer(*n),
    }
}

/// This backend's spelling of list conditions.
const DIALECT: Dialect = Dialect {
    placeholder: |n| format!("?{n}"),
    bytewise_text: true,
};

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<RequestRecord> {
    let id: String = row.get("id")?;
    let mode: String = row.get("mode")?;
    let status: String = row.get("status")?;
    Ok(RequestRecord {
        result: result_from_row(row, &id)?,
        mode: Mode::parse(&mode).ok_or_else(|| decode_error(1, &mode))?,
        status: Status::parse(&status).ok_or_else(|| decode_error(2, &status))?,
        payload_hash: row.get("payload_hash")?,
        created_at: from_millis(row.get("created_at")?),
        completed_at: row.get::<_, Option<i64>>("completed_at")?.map(from_millis),
        callback_url: row.get("callback_url")?,
        callback_attempts: row.get("callback_attempts")?,
        callback_last_error: row.get("callback_last_error")?,
        error: row.get("error")?,
        attempts: None,
        id,
    })
}

fn result_from_row(row: &Row<'_>, id: &str) -> rusqlite::Result<Option<WorkResult>> {
    let input_hash: Option<String> = row.get("input_hash")?;
    let output_hash: Option<String> = row.get("output_hash")?;
    let processing_time_ms: Option<f64> = row.get("processing_time_ms")?;
    Ok(match (input_hash, output_hash, processing_time_ms) {
        (Some(input_hash), Some(output_hash), Some(processing_time_ms)) => Some(WorkResult {
            request_id: id.to_string(),
            input_hash,
            output_hash,
            iterations: row.get("iterations")?,
            processing_time_ms,
        }),
        _ => None,
    })
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let id: String = row.get("id")?;
    let callback_url: String = row
        .get::<_, Option<String>>("callback_url")?
        .unwrap_or_default();
    let callback_attempts: u32 = row.get("callback_attempts")?;
    let round_start: u32 = row.get("round_start_attempts")?;
    Ok(Job {
        created_at: from_millis(row.get("created_at")?),
        result: result_from_row(row, &id)?,
        data: row.get("data")?,
        iterations: row.get("iterations")?,
        destination: destination_of_str(&callback_url),
        due_at: from_millis(
            row.get::<_, Option<i64>>("next_attempt_at")?
                .unwrap_or_default(),
        ),
        callback_url,
        callback_attempts,
        round_attempts: callback_attempts.saturating_sub(round_start),
        token: row.get("lease_token")?,
        unrecorded_claims: row.get("unrecorded_claims")?,
        id,
    })
}

fn attempt_from_row(row: &Row<'_>) -> rusqlite::Result<DeliveryAttempt> {
    Ok(DeliveryAttempt {
        attempt: row.get("attempt")?,
        started_at: from_millis(row.get("started_at")?),
        duration_ms: row.get("duration_ms")?,
        status_code: row.get("status_code")?,
        error: row.get("error")?,
        response_body: row.get("response_body")?,
        instance: row.get("claimed_by")?,
        note: row.get("note")?,
    })
}

/// Failures that are the database's rather than a request's: the disk is full or failing,
/// the file cannot be opened, or the database stayed locked past the busy timeout.
pub(super) fn is_unavailable(err: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        err.sqlite_error_code(),
        Some(
            DiskFull
                | SystemIoFailure
                | DatabaseBusy
                | DatabaseLocked
                | CannotOpen
                | ReadOnly
                | OutOfMemory
        )
    )
}

/// What `/healthz` says about a write failure.
fn describe_failure(err: &rusqlite::Error) -> String {
    match err.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => "disk full: the database cannot grow".into(),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    const FULL: &str = "http://full:1";
    const OTHER: &str = "http://other:2";

    fn database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_connection(&dir.path().join("claims.db"), false).unwrap();
        migrate(&mut conn).unwrap();
        (dir, conn)
    }

    /// Queues `count` jobs for `destination`, due at `first_due`, `first_due + 1`, … (ms).
    fn queue(conn: &Connection, destination: &str, count: i64, first_due: i64) {
        let mut insert = conn
            .prepare(
                "INSERT INTO requests (id, mode, status, payload_hash, data, iterations,
                                       callback_url, created_at, next_attempt_at, destination)
                 VALUES (?1, 'async', 'pending', 'h', 'x', 1, ?2, 0, ?3, ?2)",
            )
            .unwrap();
        for i in 0..count {
            insert
                .execute(params![
                    format!("{destination}/{}", first_due + i),
                    destination,
                    first_due + i
                ])
                .unwrap();
        }
    }

    /// SQLite's plan for one page of `filter`, a line per step.
    fn query_plan(conn: &Connection, filter: &ListFilter) -> Vec<String> {
        let (sql, params) = list_page_sql(filter);
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map(params_from_iter(params.iter().map(sql_value)), |row| {
                row.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Runs one page of `filter` and returns its ids and the virtual-machine steps it took.
    fn page_steps(conn: &Connection, filter: &ListFilter) -> (Vec<String>, i32) {
        let (sql, params) = list_page_sql(filter);
        let mut statement = conn.prepare(&sql).unwrap();
        let ids = statement
            .query_map(params_from_iter(params.iter().map(sql_value)), |row| {
                row.get::<_, String>("id")
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        (ids, statement.get_status(StatementStatus::VmStep))
    }

    /// A page deep in 100k requests (by the `before` cursor) costs what the first page costs,
    /// counted in SQLite's virtual-machine steps, not in wall-clock time; and the statement
    /// searches an index rather than scanning the table, with or without a status filter.
    #[test]
    fn a_deep_keyset_page_costs_what_the_first_costs() {
        let (_dir, conn) = database();
        const ROWS: i64 = 100_000;
        conn.execute_batch("BEGIN").unwrap();
        {
            let mut insert = conn
                .prepare(
                    "INSERT INTO requests (id, mode, status, payload_hash, iterations, created_at)
                     VALUES (?1, 'sync', ?2, 'h', 1, ?3)",
                )
                .unwrap();
            for i in 0..ROWS {
                // Pairs share a millisecond, so the cursor's tie-break on id is exercised.
                let status = if i % 10 == 0 { "failed" } else { "completed" };
                insert
                    .execute(params![format!("{i:08}"), status, i / 2])
                    .unwrap();
            }
        }
        conn.execute_batch("COMMIT; ANALYZE").unwrap();
        let first = ListFilter {
            limit: 50,
            ..ListFilter::default()
        };
        let (first_ids, first_steps) = page_steps(&conn, &first);
        assert_eq!(first_ids[0], format!("{:08}", ROWS - 1));
        // After the 99 000th newest, 00001000, which shares created_at 500 with 00001001
        // (newer, so not on the page).
        let deep = ListFilter {
            before: Some(Position {
                created_at: from_millis(500),
                id: "00001000".into(),
            }),
            ..first.clone()
        };
        let (deep_ids, deep_steps) = page_steps(&conn, &deep);
        let expected: Vec<String> = (950..1000).rev().map(|i| format!("{i:08}")).collect();
        assert_eq!(deep_ids, expected);
        assert!(
            deep_steps <= first_steps * 2,
            "deep page: {deep_steps} steps, first page: {first_steps}"
        );
        // The measure means something: the same depth by offset walks every row before it.
        let by_offset = ListFilter {
            offset: 99_000,
            ..first.clone()
        };
        let (offset_ids, offset_steps) = page_steps(&conn, &by_offset);
        assert_eq!(offset_ids, expected);
        assert!(
            offset_steps > deep_steps * 100,
            "{offset_steps} vs {deep_steps}"
        );

        // A long id prefix is a range on the primary key; a short one walks the index.
        for (prefix, index) in [
            ("00001", "requests_created_at"),
            ("000012", "requests_created_at"),
            ("00001234", "sqlite_autoindex_requests_1"),
        ] {
            let filter = ListFilter {
                id_prefix: Some(prefix.into()),
                ..first.clone()
            };
            let plan = query_plan(&conn, &filter);
            assert!(plan.join("; ").contains(index), "{prefix}: {plan:?}");
            let (ids, _) = page_steps(&conn, &filter);
            assert!(
                !ids.is_empty() && ids.iter().all(|id| id.starts_with(prefix)),
                "{prefix}: {ids:?}"
            );
        }

        for status in [None, Some(Status::Failed)] {
            let filter = ListFilter {
                status,
                ..deep.clone()
            };
            let plan = query_plan(&conn, &filter).join("; ");
            assert!(
                plan.contains("SEARCH requests USING INDEX") && plan.contains("created_at<"),
                "{status:?}: {plan}"
            );
            let (ids, steps) = page_steps(&conn, &filter);
            assert_eq!(ids.len(), 50);
            assert!(steps <= first_steps * 2, "{status:?}: {steps} steps");
        }
    }

    fn rooms(limited: &[(&str, u32)], held: &[&str]) -> Rooms {
        Rooms {
            default: 10,
            limited: limited.iter().map(|(d, r)| (d.to_string(), *r)).collect(),
            held: held.iter().map(|d| d.to_string()).collect(),
            overdue: Duration::from_secs(60),
        }
    }

    fn claimed_ids(conn: &Connection, limit: u32, rooms: &Rooms) -> Vec<String> {
        claim(conn, "test", limit, Duration::from_secs(30), rooms)
            .unwrap()
            .into_iter()
            .map(|job| job.id)
            .collect()
    }

    /// Virtual-machine steps spent so far by every statement a claim or a look for the next
    /// due time runs: a count of the work done that does not depend on the machine's speed.
    fn steps(conn: &Connection) -> i32 {
        [
            DUE_WINDOW,
            FIRST_DESTINATION,
            NEXT_DESTINATION,
            DESTINATION_DUE,
            CLAIM_ONE,
        ]
        .iter()
        .map(|sql| {
            conn.prepare_cached(sql)
                .unwrap()
                .get_status(StatementStatus::VmStep)
        })
        .sum()
    }

    /// A writer answer of another kind than the caller expects is an error naming both,
    /// never an empty list, a 0 or a `false`.
    #[test]
    fn a_reply_of_the_wrong_kind_is_an_error_not_a_default() {
        let err = Reply::Count(0).jobs().unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::WrongReply {
                    expected: "jobs",
                    got: "count"
                }
            ),
            "{err}"
        );
        assert!(Reply::Jobs(Vec::new()).count().is_err());
        assert!(Reply::Done.updated().is_err());
        assert!(Reply::Updated(true).redelivery().is_err());
        assert!(Reply::Redelivery(Redelivery::Queued).done().is_err());
        assert!(!Reply::Updated(false).updated().unwrap());
        assert_eq!(Reply::Count(3).count().unwrap(), 3);
    }

    /// A claim's limit changes with every claim (the free slots); each change must not cost a
    /// parse and a plan (it once took a third of the writer's CPU).
    #[test]
    fn a_claim_is_not_prepared_again_when_its_limit_changes() {
        let (_dir, conn) = database();
        queue(&conn, OTHER, 30, 1);
        for limit in 1..=20 {
            claim(&conn, "test", limit, Duration::ZERO, &rooms(&[], &[])).unwrap();
        }
        for sql in [DUE_WINDOW, CLAIM_ONE] {
            let statement = conn.prepare_cached(sql).unwrap();
            assert_eq!(statement.get_status(StatementStatus::RePrepare), 0, "{sql}");
        }
    }

    #[test]
    fn a_claim_takes_due_jobs_in_due_order_within_each_destinations_room() {
        let (_dir, conn) = database();
        queue(&conn, FULL, 5, 1);
        queue(&conn, OTHER, 2, 2);
        let ids = claimed_ids(&conn, 10, &rooms(&[(FULL, 2)], &[]));
        assert_eq!(
            ids,
            [
                "http://full:1/1",
                "http://full:1/2",
                "http://other:2/2",
                "http://other:2/3"
            ]
        );
        // Leased now: the next claim passes them over.
        let ids = claimed_ids(&conn, 1, &rooms(&[(FULL, 1)], &[]));
        assert_eq!(ids, ["http://full:1/3"]);
    }

    #[test]
    fn a_held_destination_gives_only_jobs_overdue_by_the_longest_cool_down() {
        let (_dir, conn) = database();
        let now = millis(Utc::now());
        queue(&conn, FULL, 1, now - 120_000);
        queue(&conn, FULL, 1, now - 1_000);
        let ids = claimed_ids(&conn, 10, &rooms(&[], &[FULL]));
        assert_eq!(ids, [format!("http://full:1/{}", now - 120_000)]);
    }

    #[test]
    fn jobs_behind_a_full_destinations_backlog_are_found_without_walking_it() {
        for (limited, held) in [(vec![(FULL, 0)], vec![]), (vec![], vec![FULL])] {
            let (_dir, conn) = database();
            let now = millis(Utc::now());
            let backlog = 3_000;
            queue(&conn, FULL, backlog, now - 10_000);
            queue(&conn, OTHER, 2, now - 1_000);
            let rooms = rooms(&limited, &held);
            let before = steps(&conn);
            let ids = claimed_ids(&conn, 4, &rooms);
            assert_eq!(
                ids,
                [
                    format!("http://other:2/{}", now - 1_000),
                    format!("http://other:2/{}", now - 999)
                ]
            );
            let spent = steps(&conn) - before;
            assert!(
                spent < 3_000,
                "{spent} steps to claim past a backlog of {backlog}"
            );
        }
    }

    #[test]
    fn the_next_due_time_is_that_of_a_destination_with_room() {
        let (_dir, conn) = database();
        let now = millis(Utc::now());
        queue(&conn, FULL, 3_000, 1);
        assert_eq!(
            next_due(&conn, &rooms(&[(FULL, 0)], &[]), now).unwrap(),
            None
        );
        queue(&conn, OTHER, 1, now + 5_000);
        let before = steps(&conn);
        assert_eq!(
            next_due(&conn, &rooms(&[(FULL, 0)], &[]), now).unwrap(),
            Some(now + 5_000)
        );
        let spent = steps(&conn) - before;
        assert!(
            spent < 3_000,
            "{spent} steps to look past a backlog of 3000"
        );
        // Held, the backlog counts from when it is overdue.
        assert_eq!(
            next_due(&conn, &rooms(&[], &[FULL]), now).unwrap(),
            Some(1 + 60_000)
        );
        // With room and not held, its first job is due now.
        assert_eq!(next_due(&conn, &rooms(&[], &[]), now).unwrap(), Some(1));
    }
}
