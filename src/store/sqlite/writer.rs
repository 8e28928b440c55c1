//! The writer thread and its command protocol: every write is a command; the thread applies
//! whatever commands are waiting in one transaction, commits once, then answers each.
//!
//! Each kind of write is a type of its own (`writes.rs`) that names what it answers
//! ([`Write::Output`]), and its caller waits on a channel of exactly that type. A command's
//! answer therefore cannot be of another kind: the compiler checks it, so no caller has to.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::clock::{QueueClock, STAMP, STAMP_EVERY};
use super::open::BUSY_TIMEOUT;
use crate::store::{StoreError, StoreResult};

/// Most commands in one transaction: bounds how long a write waits for the batch ahead of it.
pub(super) const MAX_BATCH: usize = 512;

/// Commands waiting for the writer; senders wait when it is full (backpressure).
pub(super) const WRITER_QUEUE: usize = 8192;

/// What applying a write gives: `Err` is a database error, which aborts the whole batch;
/// `Ok(Err(_))` refuses this write alone (the queue is full), which writes nothing and commits
/// with the rest.
pub(super) type Applied<T> = rusqlite::Result<StoreResult<T>>;

/// One kind of write.
pub(super) trait Write: Send + 'static {
    /// What its caller is answered once the write is committed.
    type Output: Send + 'static;

    /// Applies the write inside the writer's open transaction.
    fn apply(&self, tx: &Transaction<'_>, queue: &mut Queue) -> Applied<Self::Output>;
}

/// The queue as a batch sees it: the number of unfinished async requests, which every write
/// that queues or finishes one keeps exact (writes in one batch see each other's changes),
/// the bound on it, and the time on the queue's clock when the batch began.
pub(super) struct Queue {
    pub(super) size: u64,
    pub(super) capacity: u64,
    pub(super) now: i64,
    /// Where the claims' walk over the destinations with queued jobs goes on from.
    pub(super) walk_from: String,
}

impl Queue {
    /// Whether `places` more requests fit.
    pub(super) fn has_room(&self, places: u64) -> bool {
        self.size.saturating_add(places) <= self.capacity
    }

    pub(super) fn change(&mut self, delta: i64) {
        self.size = self.size.saturating_add_signed(delta);
    }
}

/// What the writer's queue carries.
pub(super) enum Message {
    Write(Box<dyn Pending>),
    /// A second has passed: the writer stamps the queue's time if it has not lately (when it
    /// is idle, nothing else would).
    Tick,
    /// Commit what came before, checkpoint the WAL, and stop; later writes are refused.
    Close(oneshot::Sender<()>),
}

impl Message {
    /// A write whose caller waits on `reply` for its answer.
    pub(super) fn write<W: Write>(
        write: W,
        reply: oneshot::Sender<StoreResult<W::Output>>,
    ) -> Self {
        Message::Write(Box::new(Command {
            write,
            reply: Some(reply),
            answer: None,
        }))
    }

    /// A write nobody waits for: a failure is logged.
    pub(super) fn background<W: Write>(write: W) -> Self {
        Message::Write(Box::new(Command {
            write,
            reply: None,
            answer: None,
        }))
    }
}

/// A write waiting in the writer's queue, what it answers hidden, so that writes of every
/// kind share one queue.
pub(super) trait Pending: Send {
    /// Applies it (again, after a failed batch) inside the open transaction.
    fn apply(&mut self, tx: &Transaction<'_>, queue: &mut Queue) -> rusqlite::Result<()>;
    /// The transaction it was applied in is committed: answer the caller.
    fn committed(self: Box<Self>);
    /// It could not be written.
    fn failed(self: Box<Self>, err: StoreError);
}

struct Command<W: Write> {
    write: W,
    reply: Option<oneshot::Sender<StoreResult<W::Output>>>,
    /// Its answer, from the last time it was applied, until the commit.
    answer: Option<StoreResult<W::Output>>,
}

impl<W: Write> Pending for Command<W> {
    fn apply(&mut self, tx: &Transaction<'_>, queue: &mut Queue) -> rusqlite::Result<()> {
        self.answer = Some(self.write.apply(tx, queue)?);
        Ok(())
    }

    fn committed(self: Box<Self>) {
        let answer = self.answer.unwrap_or(Err(StoreError::WrongReply {
            expected: "an answer",
            got: "none",
        }));
        respond(self.reply, answer);
    }

    fn failed(self: Box<Self>, err: StoreError) {
        respond(self.reply, Err(err));
    }
}

fn respond<T>(reply: Option<oneshot::Sender<StoreResult<T>>>, answer: StoreResult<T>) {
    match reply {
        // The caller may have gone (client disconnected); the write stands regardless.
        Some(reply) => {
            let _ = reply.send(answer);
        }
        None => {
            if let Err(err) = answer {
                tracing::warn!(error = %err, "background write failed");
            }
        }
    }
}

pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) queue_size: Arc<AtomicU64>,
    pub(super) queue_capacity: u64,
    /// The write-ahead log's file, and when its size was last looked at.
    pub(super) wal: PathBuf,
    pub(super) wal_looked_at: Instant,
    pub(super) clock: QueueClock,
    /// When the queue's time was last stamped into the database.
    pub(super) stamped_at: Option<Instant>,
    /// Where the claims' walk over the destinations goes on from (see `Queue`).
    pub(super) walk_from: String,
}

/// How often the writer looks at the size of the WAL while it writes (a stat of the file).
/// Under continuous reads a restart succeeds only in a gap between readers: looking once a
/// second let the log reach 15 MiB between successes (the bound test's largest, 12 s of
/// eight writers and fourteen readers), four times a second holds it under 10 MiB.
const WAL_LOOK_EVERY: Duration = Duration::from_millis(250);

/// The WAL size past which the writer checkpoints it itself. SQLite's own checkpoints (after
/// a commit, every 1000 pages: 4 MiB) copy what no reader still needs, but never start the
/// log again from its beginning while readers keep it in use: under continuous reads it grew
/// by megabytes a second. Past this size, a checkpoint that waits (a little) for the readers
/// of the log to move to the database file does; `journal_size_limit` then cuts the file
/// back to 4 MiB. Only then: that checkpoint holds the writer while it waits and copies.
const WAL_RESTART_SIZE: u64 = 8 * 1024 * 1024;

/// How long that checkpoint waits for readers (each holds the log for one short read) before
/// it gives up until the next look: the writer waits with it.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(50);

impl Writer {
    pub(super) fn run(&mut self, mut messages: mpsc::Receiver<Message>) {
        let mut batch: Vec<Box<dyn Pending>> = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = messages.blocking_recv() {
            let mut next = Some(first);
            let mut closer = None;
            while let Some(message) = next.take() {
                match message {
                    Message::Write(write) => batch.push(write),
                    Message::Tick => {}
                    Message::Close(done) => {
                        closer = Some(done);
                        break;
                    }
                }
                if batch.len() < MAX_BATCH {
                    next = messages.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
                if self.wal_looked_at.elapsed() >= WAL_LOOK_EVERY {
                    self.restart_a_large_wal();
                }
            } else if closer.is_some() || self.stamp_due() {
                self.stamp_alone();
            }
            if let Some(done) = closer {
                // Leave the WAL checkpointed so the database file is complete on its own.
                if let Err(err) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                    tracing::warn!(error = %err, "WAL checkpoint at shutdown failed");
                }
                let _ = done.send(());
                return;
            }
        }
    }

    /// When the WAL has grown past [`WAL_RESTART_SIZE`], copies it into the database and,
    /// once no reader uses it, starts it again from its beginning (RESTART), waiting at most
    /// [`CHECKPOINT_WAIT`] for readers.
    fn restart_a_large_wal(&mut self) {
        self.wal_looked_at = Instant::now();
        if std::fs::metadata(&self.wal).map_or(0, |m| m.len()) <= WAL_RESTART_SIZE {
            return;
        }
        let checkpointed = self.conn.busy_timeout(CHECKPOINT_WAIT).and_then(|()| {
            self.conn
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
                    row.get::<_, i64>(0)
                })
        });
        if let Err(err) = self.conn.busy_timeout(BUSY_TIMEOUT) {
            tracing::warn!(error = %err, "restoring the busy timeout failed");
        }
        // 1 (busy): readers still used the log; the next look tries again.
        if let Err(err) = checkpointed {
            tracing::debug!(error = %err, "WAL checkpoint did not complete");
        }
    }

    fn stamp_due(&self) -> bool {
        self.stamped_at.is_none_or(|at| at.elapsed() >= STAMP_EVERY)
    }

    /// Stamps the queue's time in a transaction of its own. A failure (a full disk) waits for
    /// the next tick: the writes that fail then say so to their callers and to `/healthz`.
    fn stamp_alone(&mut self) {
        let stamped = self
            .conn
            .execute(STAMP, [self.clock.now()])
            .map(|_| self.stamped_at = Some(Instant::now()));
        if let Err(err) = stamped {
            tracing::debug!(error = %err, "stamping the queue's time failed");
        }
    }

    /// Applies a batch in one transaction and answers each write after the commit. If the
    /// transaction fails, each write is retried alone, so one bad write cannot fail others.
    pub(super) fn commit_batch(&mut self, batch: &mut Vec<Box<dyn Pending>>) {
        match self.apply_all(batch) {
            Ok(()) => {
                for write in batch.drain(..) {
                    write.committed();
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, size = batch.len(), "batch write failed; retrying writes one by one");
                for mut write in batch.drain(..) {
                    match self.apply_all(std::slice::from_mut(&mut write)) {
                        Ok(()) => write.committed(),
                        Err(err) => write.failed(err),
                    }
                }
            }
        }
    }

    fn apply_all(&mut self, batch: &mut [Box<dyn Pending>]) -> StoreResult<()> {
        let stamp = self.stamp_due();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut queue = Queue {
            size: self.queue_size.load(Ordering::Relaxed),
            capacity: self.queue_capacity,
            now: self.clock.now(),
            walk_from: std::mem::take(&mut self.walk_from),
        };
        for write in batch.iter_mut() {
            write.apply(&tx, &mut queue)?;
        }
        self.walk_from = std::mem::take(&mut queue.walk_from);
        if stamp {
            tx.execute(STAMP, [queue.now])?;
        }
        tx.commit()?;
        if stamp {
            self.stamped_at = Some(Instant::now());
        }
        self.queue_size.store(queue.size, Ordering::Relaxed);
        Ok(())
    }
}
