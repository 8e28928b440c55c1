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
//! holds if one process uses the file, so the store takes an exclusive lock on the database
//! file itself (whatever path names it) and refuses to start if another process holds it.

mod claims;
mod clock;
mod controls;
mod list;
mod open;
mod plans;
mod readers;
mod rows;
mod writer;
mod writes;

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::backend::Backend;
use super::{
    AttemptOutcome, Cancellation, ControlChange, Controlled, ControlsRead, FinishedWork, Job,
    KeyHolder, Leases, ListFilter, MadeDue, NewAsyncRequest, NewRequest, PoolStats, Position,
    Recorded, Redelivery, StatementPlan, StatusCounts, StoreError, StoreResult, Submitted, Swept,
    within_ping_timeout,
};
use crate::delivery::destinations::Rooms;
use crate::model::{DeliveryAttempt, RequestList, RequestRecord, Status, WorkResult};

use self::claims::next_due;
use self::clock::{QueueClock, STAMP_EVERY};
use self::controls::ControlDestination;
use self::list::list_on;
use self::open::{
    backfill_destinations, database_path, lock_database, migrate, open_connection, recover,
    wal_path,
};
use self::readers::Readers;
use self::rows::{attempt_from_row, from_millis, parse_status, record_from_row};
use self::writer::{Message, WRITER_QUEUE, Write, Writer};
use self::writes::{
    Cancel, Claim, DeleteExpired, DeleteOverLimit, GiveUp, Heartbeat, MakeDue, Probe,
    RecordAttempt, Redeliver, Release, SaveResult, SubmitAsync, SubmitBatch, SyncFinished,
    SyncStarted, Unpark, holder_of,
};

/// A request's record.
const RECORD_BY_ID: &str = concat!("SELECT ", record_columns!(), " FROM requests WHERE id = ?1");

/// A request's delivery attempts, in order.
const ATTEMPTS_OF: &str = concat!(
    "SELECT ",
    attempt_columns!(),
    " FROM delivery_attempts WHERE request_id = ?1 ORDER BY attempt"
);

/// Where a request stands in the list order.
const POSITION_OF: &str = "SELECT created_at, id FROM requests WHERE id = ?1";

/// The requests in each status, from the kept counts.
const STATUS_COUNTS: &str =
    "SELECT status, sum(n) FROM request_counts GROUP BY status HAVING sum(n) > 0";

/// One destination's (`?1`) jobs due by `?2` (the queue clock) and not claimed, up to `?3`.
const DUE_UNCLAIMED: &str = "SELECT count(*) FROM (SELECT 1 FROM requests
     WHERE destination = ?1 AND next_attempt_at IS NOT NULL AND next_attempt_at <= ?2
       AND (lease_expires_at IS NULL OR lease_expires_at < ?2) LIMIT ?3)";

/// Read connections. Reads are short; more connections than cores buys nothing.
const READERS: usize = 4;

#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<Message>,
    /// Client reads.
    readers: Readers,
    /// The dispatcher's look at the queue (when is the next job due): clients reading long
    /// lists must not hold up deliveries.
    queue_reader: Readers,
    /// `/healthz`'s read: a health check must not queue behind client reads, or a busy but
    /// healthy service would report itself unhealthy.
    health: Readers,
    queue_size: Arc<AtomicU64>,
    /// Due times and leases are on this clock (see `clock`).
    clock: QueueClock,
    // Held for the life of the store; the OS releases the lock when the process dies. Last, so
    // that it is closed after the connections (see `open::lock_database`).
    _lock: Arc<File>,
}

impl SqliteStore {
    /// Moves a record's `next_attempt_at` from the queue's clock, on which it is stored, to
    /// the wall clock every other time in a record is on (they differ only once the wall
    /// clock has been stepped while the service ran: see `clock`).
    fn queue_to_wall_clock(&self) -> impl Fn(&mut RequestRecord) + Send + 'static {
        let offset = chrono::Duration::milliseconds(
            Utc::now()
                .timestamp_millis()
                .saturating_sub(self.clock.now()),
        );
        move |record| {
            if let Some(at) = record.next_attempt_at.as_mut() {
                *at += offset;
            }
        }
    }

    pub async fn open(url: &str, queue_capacity: u64) -> StoreResult<Self> {
        let path = database_path(url)?;
        let lock = lock_database(&path)?;
        let (conn, queued, clock) = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> StoreResult<(Connection, u64, QueueClock)> {
                let mut conn = open_connection(&path, false)?;
                let schema_before = migrate(&mut conn)?;
                backfill_destinations(&mut conn, schema_before)?;
                let queued = recover(&mut conn)?;
                let clock = QueueClock::resume(&conn)?;
                Ok((conn, queued, clock))
            }
        })
        .await
        .map_err(|e| StoreError::Open(e.to_string()))??;

        let (readers, queue_reader, health) = tokio::task::spawn_blocking({
            let path = path.clone();
            move || -> rusqlite::Result<_> {
                let open = |n| {
                    (0..n)
                        .map(|_| open_connection(&path, true))
                        .collect::<Result<Vec<_>, _>>()
                };
                Ok((open(READERS)?, open(1)?, open(1)?))
            }
        })
        .await
        .map_err(|e| StoreError::Open(e.to_string()))??;
        let lock = Arc::new(lock);

        let queue_size = Arc::new(AtomicU64::new(queued));
        let (writer, commands) = mpsc::channel(WRITER_QUEUE);
        let mut writer_state = Writer {
            conn,
            queue_size: Arc::clone(&queue_size),
            queue_capacity,
            wal: wal_path(&path),
            wal_looked_at: std::time::Instant::now(),
            clock,
            stamped_at: None,
            walk_from: String::new(),
        };
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_state.run(commands))
            .map_err(|e| StoreError::Open(format!("cannot start the writer thread: {e}")))?;
        tokio::spawn(tick(writer.downgrade()));

        Ok(Self {
            writer,
            readers: Readers::start("sqlite-reader", readers, &lock)?,
            queue_reader: Readers::start("sqlite-queue", queue_reader, &lock)?,
            health: Readers::start("sqlite-health", health, &lock)?,
            queue_size,
            clock,
            _lock: lock,
        })
    }

    /// Hands `write` to the writer and waits for its commit.
    async fn send<W: Write>(&self, write: W) -> StoreResult<W::Output> {
        let (reply, response) = oneshot::channel();
        self.writer
            .send(Message::write(write, reply))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        response.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Runs a client's read on the first idle reader connection.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.readers.run(f).await
    }
}

/// Reminds the writer every second that time goes by, so that it stamps the queue's time
/// while idle too; ends with the store. A writer busy enough to have a full queue stamps in
/// its batches.
async fn tick(writer: mpsc::WeakSender<Message>) {
    let mut ticks = tokio::time::interval(STAMP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(writer) = writer.upgrade() else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Closed(_)) = writer.try_send(Message::Tick) {
            return;
        }
    }
}

impl Backend for SqliteStore {
    /// The lock on the database file keeps every other process out.
    fn has_other_instances(&self) -> bool {
        false
    }

    /// The writer checkpoints the WAL as it goes; there is nothing else to keep.
    async fn maintain(&self, _stop: CancellationToken) {}

    /// Every job is queued by this process, which wakes its dispatcher itself.
    async fn listen(
        &self,
        _wake: impl Fn(crate::store::Announced) + Send + 'static,
        _stop: CancellationToken,
    ) {
    }

    /// Every change is this process's own, and wakes its waiters as it is made.
    async fn versions(&self, _ids: &[String]) -> StoreResult<Vec<(String, (Status, u32))>> {
        Ok(Vec::new())
    }

    /// Done when the database is opened (`open::recover`): with one process per database,
    /// a sync request still `processing` then is one whose process died.
    async fn fail_stale_sync(&self, _older_than: Duration) -> StoreResult<u64> {
        Ok(0)
    }

    /// One process holds the database: no owner is recorded (its requests left `processing`
    /// are failed when the database is opened again).
    fn sync_started(&self, new: NewRequest, _owner: &str) -> StoreResult<()> {
        // try_send: a full writer queue means the database is the bottleneck; the row is then
        // written whole by sync_finished instead, which waits its turn.
        match self.writer.try_send(Message::background(SyncStarted(new))) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::WriterGone),
        }
    }

    async fn sync_finished(
        &self,
        new: &NewRequest,
        outcome: Result<&WorkResult, &str>,
    ) -> StoreResult<()> {
        self.send(SyncFinished {
            new: new.clone(),
            outcome: outcome.cloned().map_err(str::to_string),
            at: Utc::now(),
        })
        .await
    }

    async fn key_holder(&self, key: &str) -> StoreResult<Option<KeyHolder>> {
        let key = key.to_string();
        self.read(move |conn| holder_of(conn, &key)).await
    }

    async fn sync_started_with_key(&self, new: NewRequest, _owner: &str) -> StoreResult<Submitted> {
        self.send(SyncStarted(new)).await
    }

    async fn submit_async(&self, new: NewAsyncRequest) -> StoreResult<Submitted> {
        self.send(SubmitAsync(new)).await
    }

    async fn submit_batch(&self, batch: &[NewAsyncRequest]) -> StoreResult<()> {
        self.send(SubmitBatch(batch.to_vec())).await
    }

    async fn claim_due(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
        priority_step: Duration,
        rooms: &Rooms,
    ) -> StoreResult<Vec<Job>> {
        self.send(Claim {
            owner: owner.to_string(),
            limit,
            lease,
            priority_step,
            rooms: rooms.clone(),
        })
        .await
    }

    async fn heartbeat(
        &self,
        owner: &str,
        tokens: &[String],
        lease: Duration,
    ) -> StoreResult<Leases> {
        self.send(Heartbeat {
            owner: owner.to_string(),
            tokens: tokens.to_vec(),
            lease,
        })
        .await
    }

    async fn next_due_in(&self, owner: &str, rooms: &Rooms) -> StoreResult<Option<Duration>> {
        let now = self.clock.now();
        let rooms = rooms.clone();
        let owner = owner.to_string();
        let next = self
            .queue_reader
            .run(move |conn| next_due(conn, &owner, &rooms, now))
            .await?;
        Ok(next.map(|due| Duration::from_millis(u64::try_from(due - now).unwrap_or(0))))
    }

    async fn store_result(&self, id: &str, token: &str, work: &FinishedWork) -> StoreResult<bool> {
        self.send(SaveResult {
            id: id.to_string(),
            token: token.to_string(),
            work: work.clone(),
        })
        .await
    }

    async fn record_attempt(
        &self,
        id: &str,
        owner: &str,
        token: &str,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> StoreResult<Recorded> {
        self.send(RecordAttempt {
            id: id.to_string(),
            owner: owner.to_string(),
            token: token.to_string(),
            attempt: attempt.clone(),
            outcome,
        })
        .await
    }

    async fn give_up(&self, id: &str, token: &str, reason: &str) -> StoreResult<bool> {
        self.send(GiveUp {
            id: id.to_string(),
            token: token.to_string(),
            reason: reason.to_string(),
        })
        .await
    }

    async fn redeliver(&self, id: &str) -> StoreResult<Redelivery> {
        self.send(Redeliver { id: id.to_string() }).await
    }

    async fn cancel(&self, id: &str) -> StoreResult<Cancellation> {
        self.send(Cancel { id: id.to_string() }).await
    }

    async fn make_due(&self, id: &str) -> StoreResult<MadeDue> {
        self.send(MakeDue { id: id.to_string() }).await
    }

    async fn unpark(&self, key: Option<&str>) -> StoreResult<u64> {
        self.send(Unpark {
            key: key.map(str::to_string),
        })
        .await
    }

    async fn control_destination(
        &self,
        destination: &str,
        change: ControlChange,
    ) -> StoreResult<Controlled> {
        self.send(ControlDestination {
            destination: destination.to_string(),
            change,
        })
        .await
    }

    /// One process owns the database: it is the only instance.
    async fn destination_controls(&self, _owner: &str) -> StoreResult<ControlsRead> {
        let controls = self.read(controls::controls).await?;
        Ok(ControlsRead {
            controls,
            instances: 1,
        })
    }

    /// No other instance shares the database.
    async fn mark_alive(&self, _owner: &str) -> StoreResult<()> {
        Ok(())
    }

    async fn release(&self, owner: &str) -> StoreResult<u64> {
        self.send(Release {
            owner: owner.to_string(),
        })
        .await
    }

    async fn get(&self, id: &str) -> StoreResult<Option<RequestRecord>> {
        let id = id.to_string();
        let to_wall = self.queue_to_wall_clock();
        self.read(move |conn| {
            // One snapshot for the request and its attempts: read apart, an attempt recorded
            // between the two would be listed without being counted in `callback_attempts`.
            let snapshot = conn.unchecked_transaction()?;
            let Some(mut record) = snapshot
                .prepare_cached(RECORD_BY_ID)?
                .query_row([&id], record_from_row)
                .optional()?
            else {
                return Ok(None);
            };
            to_wall(&mut record);
            let attempts = snapshot
                .prepare_cached(ATTEMPTS_OF)?
                .query_map([&id], attempt_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            snapshot.commit()?;
            record.attempts = Some(attempts);
            Ok(Some(record))
        })
        .await
    }

    async fn list(&self, filter: ListFilter) -> StoreResult<RequestList> {
        let to_wall = self.queue_to_wall_clock();
        let mut list = self.read(move |conn| list_on(conn, &filter)).await?;
        list.requests.iter_mut().for_each(to_wall);
        Ok(list)
    }

    async fn position(&self, id: &str) -> StoreResult<Option<Position>> {
        let id = id.to_string();
        self.read(move |conn| {
            conn.prepare_cached(POSITION_OF)?
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

    async fn status_counts(&self) -> StoreResult<StatusCounts> {
        self.read(|conn| {
            conn.prepare_cached(STATUS_COUNTS)?
                .query_map([], |row| {
                    let status: String = row.get(0)?;
                    let n: i64 = row.get(1)?;
                    let status = parse_status(&status)?;
                    Ok((status, u64::try_from(n).unwrap_or(0)))
                })?
                .collect()
        })
        .await
    }

    fn pool_stats(&self) -> PoolStats {
        let (busy, idle) = self.readers.usage();
        PoolStats {
            // The writer's connection is always in use.
            in_use: busy as u64 + 1,
            idle: idle as u64,
            writer_queue: (WRITER_QUEUE - self.writer.capacity()) as u64,
            engine_memory: memory_used(),
        }
    }

    async fn queue_size(&self) -> StoreResult<u64> {
        Ok(self.queue_size.load(Ordering::Relaxed))
    }

    async fn due_unclaimed(&self, destinations: Vec<String>, cap: u32) -> StoreResult<Vec<u64>> {
        let now = self.clock.now();
        self.read(move |conn| {
            let mut count = conn.prepare_cached(DUE_UNCLAIMED)?;
            destinations
                .iter()
                .map(|destination| {
                    count
                        .query_row(params![destination, now, cap], |row| row.get::<_, i64>(0))
                        .map(|n| u64::try_from(n).unwrap_or(0))
                })
                .collect()
        })
        .await
    }

    async fn ping(&self) -> Result<(), String> {
        let read = self
            .health
            .run(|conn| conn.query_row("SELECT 1", [], |row| row.get::<_, i64>(0)));
        within_ping_timeout(read)
            .await?
            .map(|_| ())
            .map_err(|err| err.unavailable_reason())
    }

    async fn probe_write(&self) -> StoreResult<()> {
        self.send(Probe).await
    }

    async fn delete_expired(
        &self,
        retention: Duration,
        chunk: u64,
        from: DateTime<Utc>,
    ) -> StoreResult<Swept> {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        self.send(DeleteExpired {
            cutoff,
            chunk,
            from,
        })
        .await
    }

    async fn explain_hot(&self) -> StoreResult<Vec<StatementPlan>> {
        self.read(plans::explain_hot).await
    }

    async fn delete_over_limit(
        &self,
        max_stored: u64,
        chunk: u64,
        from: DateTime<Utc>,
    ) -> StoreResult<Swept> {
        self.send(DeleteOverLimit {
            max_stored,
            chunk,
            from,
        })
        .await
    }

    async fn close(&self) {
        // The readers let go first, so the writer's connection is the last to close (SQLite
        // checkpoints the WAL then).
        for readers in [&self.readers, &self.queue_reader, &self.health] {
            readers.close().await;
        }
        // Writes queued before this are committed first; later ones get WriterGone.
        let (done, closed) = oneshot::channel();
        if self.writer.send(Message::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }
}

/// Bytes SQLite holds in this process, over every connection: mostly page caches, each
/// bounded by its connection's `cache_size` (SQLite's default, 2 MiB), so the total levels off
/// once the caches are full, however large the database grows.
fn memory_used() -> u64 {
    // SAFETY: `sqlite3_memory_used` takes no arguments and reads a counter SQLite keeps under
    // its own mutex (the bundled build is threadsafe); any thread may call it at any time.
    let used = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    u64::try_from(used).unwrap_or(0)
}

/// Failures that are the database's rather than a request's: the disk is full or failing,
/// the file cannot be opened, or the database stayed locked past the busy timeout.
pub(super) fn is_unavailable(err: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        err.sqlite_error_code(),
        Some(
            DiskFull
                | OperationInterrupted
                | SystemIoFailure
                | DatabaseBusy
                | DatabaseLocked
                | CannotOpen
                | ReadOnly
                | OutOfMemory
        )
    )
}

#[cfg(test)]
mod tests;
