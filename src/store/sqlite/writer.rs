//! The writer thread and its command protocol: every write is a command; the thread applies
//! whatever commands are waiting in one transaction, commits once, then answers each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::writes::apply;
use super::{describe_failure, is_unavailable};
use crate::delivery::destinations::Rooms;
use crate::model::{DeliveryAttempt, WorkResult};
use crate::store::{
    AttemptOutcome, Job, NewAsyncRequest, NewRequest, Position, Redelivery, StoreError,
    StoreResult, Submitted,
};

/// batch ahead of it.
pub(super) const MAX_BATCH: usize = 512;

/// Commands waiting for the writer; senders wait when it is full (backpressure).
pub(super) const WRITER_QUEUE: usize = 8192;

/// One write, with the caller waiting for its commit (or not, for fire-and-forget writes).
pub(super) struct Command {
    pub(super) op: Op,
    pub(super) reply: Option<oneshot::Sender<StoreResult<Reply>>>,
}

pub(super) enum Op {
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
pub(super) enum Reply {
    Done,
    Updated(bool),
    Count(u64),
    Jobs(Vec<Job>),
    Redelivery(Redelivery),
    Submitted(Submitted),
}

impl Reply {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Reply::Done => "done",
            Reply::Updated(_) => "updated",
            Reply::Count(_) => "count",
            Reply::Jobs(_) => "jobs",
            Reply::Redelivery(_) => "redelivery",
            Reply::Submitted(_) => "submitted",
        }
    }

    pub(super) fn mismatch(&self, expected: &'static str) -> StoreError {
        StoreError::WrongReply {
            expected,
            got: self.kind(),
        }
    }

    pub(super) fn done(self) -> StoreResult<()> {
        match self {
            Reply::Done => Ok(()),
            other => Err(other.mismatch("done")),
        }
    }

    pub(super) fn updated(self) -> StoreResult<bool> {
        match self {
            Reply::Updated(updated) => Ok(updated),
            other => Err(other.mismatch("updated")),
        }
    }

    pub(super) fn count(self) -> StoreResult<u64> {
        match self {
            Reply::Count(n) => Ok(n),
            other => Err(other.mismatch("count")),
        }
    }

    pub(super) fn jobs(self) -> StoreResult<Vec<Job>> {
        match self {
            Reply::Jobs(jobs) => Ok(jobs),
            other => Err(other.mismatch("jobs")),
        }
    }

    pub(super) fn submitted(self) -> StoreResult<Submitted> {
        match self {
            Reply::Submitted(outcome) => Ok(outcome),
            other => Err(other.mismatch("submitted")),
        }
    }

    pub(super) fn redelivery(self) -> StoreResult<Redelivery> {
        match self {
            Reply::Redelivery(outcome) => Ok(outcome),
            other => Err(other.mismatch("redelivery")),
        }
    }
}

/// What a command did besides its reply: how it changed the number of queued requests.
pub(super) struct Applied {
    pub(super) reply: StoreResult<Reply>,
    pub(super) queue_delta: i64,
}

pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) queue_size: Arc<AtomicU64>,
    pub(super) queue_capacity: u64,
    pub(super) write_failure: Arc<Mutex<Option<String>>>,
}

impl Writer {
    pub(super) fn run(&mut self, mut commands: mpsc::Receiver<Command>) {
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
    pub(super) fn commit_batch(&mut self, batch: &mut Vec<Command>) {
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
    pub(super) fn note_write_health<T>(&self, outcome: &StoreResult<T>) {
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

    pub(super) fn apply_all(&mut self, batch: &[Command]) -> StoreResult<Vec<Applied>> {
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

pub(super) fn respond(command: Command, reply: StoreResult<Reply>) {
    if let Some(sender) = command.reply {
        // The caller may have gone (client disconnected); the write stands regardless.
        let _ = sender.send(reply);
    } else if let Err(err) = reply {
        tracing::warn!(error = %err, "background write failed");
    }
}
