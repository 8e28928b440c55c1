//! Every kind of write, with the SQL it runs inside the writer's open transaction and what
//! it answers.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::claims::claim;
use super::rows::{from_millis, millis, parse_status};
use super::writer::{Applied, Queue, Write};
use crate::delivery::destinations::{Rooms, destination_host};
use crate::model::{DeliveryAttempt, Mode, Status, WorkResult};
use crate::store::due::millis_of;
use crate::store::{
    AttemptOutcome, Cancellation, FinishedWork, Job, KeyHolder, Leases, MadeDue, NewAsyncRequest,
    NewRequest, Recorded, Redelivery, StoreError, Submitted, Swept, Transition, sync_outcome,
};

/// The `ordering_seq` of a request of key `$key` accepted (or redelivered) now: after every
/// queued one of the key. The writer is alone, so no other can take the same number.
macro_rules! next_ordering_seq {
    ($key:literal) => {
        concat!(
            "CASE WHEN ",
            $key,
            " IS NULL THEN NULL ELSE (SELECT COALESCE(max(queued.ordering_seq), 0) + 1
             FROM requests AS queued WHERE queued.ordering_key = ",
            $key,
            " AND queued.next_attempt_at IS NOT NULL) END"
        )
    };
}

/// `$due`, or parked when a request of key `$key` is queued already (see `parked_ms!`).
macro_rules! due_or_parked {
    ($key:literal, $due:literal) => {
        concat!(
            "CASE WHEN ",
            $key,
            " IS NOT NULL AND EXISTS (SELECT 1 FROM requests AS queued
                 WHERE queued.ordering_key = ",
            $key,
            " AND queued.next_attempt_at IS NOT NULL) THEN ",
            parked_ms!(),
            " ELSE ",
            $due,
            " END"
        )
    };
}

/// A parked request made due at `?1` (the queue's time), or as much later as its `run_at` is
/// ahead of `?2` (the wall clock's), as when it was accepted.
macro_rules! unparked_due {
    () => {
        "?1 + max(0, COALESCE(run_at, 0) - ?2)"
    };
}

/// Key `?3`'s first queued request made due, if it is parked: the one before it ended.
pub(super) const UNPARK_KEY: &str = concat!(
    "UPDATE requests SET next_attempt_at = ",
    unparked_due!(),
    " WHERE next_attempt_at = ",
    parked_ms!(),
    " AND rowid = ",
    key_head!("rowid", "?3")
);

/// See `unpark_stranded!`.
pub(super) const UNPARK_STRANDED: &str =
    unpark_stranded!(parked_ms!(), "rowid", "requests INDEXED BY requests_parked");

/// The expired claims of keyed requests no longer queued (a request cancelled while its
/// attempt was in flight keeps its claim until the attempt ends): an owner that died, or
/// lost the row, would otherwise hold its key's next request back until retention deleted
/// it. Rows of `requests_ordering_claimed`, a handful.
pub(super) const RELEASE_ENDED_CLAIMS: &str =
    "UPDATE requests SET lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL
     WHERE ordering_key IS NOT NULL AND lease_token IS NOT NULL
       AND next_attempt_at IS NULL AND lease_expires_at < ?1";

/// An async request, queued.
pub(super) const INSERT_ASYNC: &str = concat!(
    "INSERT OR FAIL INTO requests (id, mode, status, payload_hash, data, iterations,
                                   callback_url, created_at, next_attempt_at, destination,
                                   callback_host, idempotency_key, idempotency_fingerprint,
                                   run_at, max_retries, callback_timeout_ms, priority,
                                   ordering_key, traceparent, tracestate, ordering_seq,
                                   unfinished)
     VALUES (?1, 'async', 'pending', ?2, ?3, ?4, ?5, ?6, ",
    due_or_parked!("?16", "?11"),
    ", ?7, ?8, ?9, ?10, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ",
    next_ordering_seq!("?16"),
    ", 1)"
);

/// The request holding an idempotency key.
pub(super) const KEY_HOLDER: &str =
    "SELECT id, COALESCE(idempotency_fingerprint, '') FROM requests WHERE idempotency_key = ?1";

/// A sync request, `processing`.
pub(super) const INSERT_SYNC_STARTED: &str =
    "INSERT OR FAIL INTO requests (id, mode, status, payload_hash, iterations, created_at,
                                   idempotency_key, idempotency_fingerprint, traceparent,
                                   tracestate, unfinished)
     VALUES (?1, 'sync', 'processing', ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1)
     ON CONFLICT (id) DO NOTHING";

/// A sync request's end, with the whole record, unless its `processing` row was written.
pub(super) const INSERT_SYNC_FINISHED: &str =
    "INSERT OR FAIL INTO requests (id, mode, status, payload_hash, iterations, created_at,
                                   completed_at, input_hash, output_hash, processing_time_ms,
                                   error, traceparent, tracestate)
     VALUES (?1, 'sync', ?5, ?2, ?3, ?4, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
     ON CONFLICT (id) DO NOTHING";

/// A sync request's end, on its `processing` row. Only a request still working ends so:
/// one already failed as abandoned stays as it is, its key possibly reused. Its parameters
/// are numbered as [`INSERT_SYNC_FINISHED`]'s, whose first ten values it is given.
pub(super) const FINISH_SYNC_STARTED: &str =
    "UPDATE OR FAIL requests SET status = ?5, completed_at = ?6, input_hash = ?7,
            output_hash = ?8, processing_time_ms = ?9, error = ?10, unfinished = NULL,
            -- A failed sync request did no work a replay could answer with: its key
            -- is free again, for the client's retry.
            idempotency_key = CASE ?5 WHEN 'failed' THEN NULL ELSE idempotency_key END
     WHERE id = ?1 AND status = 'processing'";

/// How many of [`INSERT_SYNC_FINISHED`]'s values [`FINISH_SYNC_STARTED`] numbers.
const FINISH_SYNC_STARTED_VALUES: usize = 10;

/// One claim's lease, renewed, found by its owner and token (not by its owner alone, whose
/// other leases would be walked for every token renewed).
pub(super) const RENEW_LEASE: &str = "UPDATE requests INDEXED BY requests_leases
     SET lease_expires_at = ?3 WHERE lease_token = ?2 AND lease_owner = ?1";

/// An owner's claims whose lease ran out (by the lease index, which leads with the owner).
pub(super) const EXPIRED_LEASES_OF: &str = "SELECT id, lease_token FROM requests
     WHERE lease_owner = ?1 AND lease_expires_at < ?2";

/// One claim handed back, its lease gone (it still counts as a claim without an outcome).
pub(super) const RELEASE_CLAIM: &str =
    "UPDATE requests SET lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL
     WHERE id = ?1 AND lease_token = ?2";

/// A claimed job's work result.
pub(super) const SAVE_RESULT: &str =
    "UPDATE OR FAIL requests SET status = 'callback_pending', input_hash = ?3, output_hash = ?4,
            processing_time_ms = ?5, completed_at = ?6, data = NULL
     WHERE id = ?1 AND lease_token = ?2";

/// A delivery attempt's effect on its request; a request cancelled while the attempt was
/// in flight only records it (`AttemptLanded`). Answers the status it is left in.
pub(super) const RECORD_ATTEMPT: &str =
    "UPDATE OR FAIL requests SET status = CASE status WHEN 'cancelled' THEN status ELSE ?3 END,
            delivered_at = CASE status WHEN 'cancelled' THEN delivered_at ELSE ?4 END,
            next_attempt_at = CASE status WHEN 'cancelled' THEN NULL ELSE ?5 END,
            callback_attempts = ?6, callback_last_error = COALESCE(?7, callback_last_error),
            callback_last_status = ?8,
            -- NULL once ended. A retry sets 1 again, which moves its entries in the
            -- unfinished indexes (SQLite rewrites them for any value set): retries are few.
            unfinished = CASE WHEN status <> 'cancelled' AND ?3 = 'callback_pending' THEN 1 END,
            lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL,
            unrecorded_claims = 0
     WHERE id = ?1 AND lease_token = ?2
     RETURNING status";

/// A delivery attempt, in the audit.
pub(super) const INSERT_ATTEMPT: &str = "INSERT INTO delivery_attempts
         (request_id, attempt, started_at, duration_ms, status_code, error, response_body,
          claimed_by, note, response_headers)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
     ON CONFLICT (request_id, attempt) DO NOTHING";

/// A claimed job ended without an attempt (unless it was cancelled meanwhile).
pub(super) const GIVE_UP: &str =
    "UPDATE requests SET status = 'callback_failed', delivered_at = ?3, unfinished = NULL,
            next_attempt_at = NULL, callback_last_error = ?4, error = ?4,
            lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL
     WHERE id = ?1 AND lease_token = ?2 AND status <> 'cancelled'";

/// What making a request due needs to know of it.
pub(super) const MAKE_DUE_OF: &str = concat!(
    "SELECT mode, status, lease_token IS NOT NULL, ",
    behind_earlier!(),
    " FROM requests WHERE id = ?1"
);

/// A queued request due at `?2` at the latest.
pub(super) const MAKE_DUE: &str =
    "UPDATE requests SET next_attempt_at = min(next_attempt_at, ?2) WHERE id = ?1";

/// What a cancel needs to know of a request.
pub(super) const CANCEL_OF: &str =
    "SELECT mode, status, lease_token IS NOT NULL, COALESCE(cancelled_in_flight, 0)
     FROM requests WHERE id = ?1";

/// A request cancelled at `?2`; its claim kept only when `?3` (an attempt may be in flight,
/// and is recorded under it if it lands). Its input is no longer needed.
pub(super) const CANCEL: &str =
    "UPDATE requests SET status = 'cancelled', delivered_at = ?2, next_attempt_at = NULL,
            unfinished = NULL, data = NULL, cancelled_in_flight = ?3,
            lease_owner = CASE WHEN ?3 THEN lease_owner END,
            lease_expires_at = CASE WHEN ?3 THEN lease_expires_at END,
            lease_token = CASE WHEN ?3 THEN lease_token END
     WHERE id = ?1";

/// What a redelivery needs to know of a request.
pub(super) const REDELIVERY_OF: &str =
    "SELECT status, output_hash IS NOT NULL FROM requests WHERE id = ?1";

/// A request put back in the queue for a new round.
/// Queued again behind the queued requests of its `ordering_key`, if it has one: those
/// delivered since it ended stay delivered before it.
pub(super) const REDELIVER: &str = concat!(
    "UPDATE requests SET status = ?3, delivered_at = NULL, error = NULL, unfinished = 1,
            next_attempt_at = ",
    due_or_parked!("requests.ordering_key", "?2"),
    ", round_start_attempts = callback_attempts, unrecorded_claims = 0,
            ordering_seq = ",
    next_ordering_seq!("requests.ordering_key"),
    "
     WHERE id = ?1"
);

/// An owner's claims handed back (by owner: the lease index).
pub(super) const RELEASE: &str =
    "UPDATE requests SET lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL,
            unrecorded_claims = max(unrecorded_claims - 1, 0)
     WHERE lease_owner = ?1";

/// A write's answer, when nothing refuses it.
fn done<T>(answer: T) -> Applied<T> {
    Ok(Ok(answer))
}

/// A write refused because the queue is full: nothing is written.
fn queue_full<T>() -> Applied<T> {
    Ok(Err(StoreError::QueueFull))
}

/// Inserts `new`, due at `now` (the queue's time) or, when scheduled, as much later as its
/// `run_at` is ahead of the wall clock now.
pub(super) fn insert_async(
    tx: &Transaction<'_>,
    new: &NewAsyncRequest,
    now: i64,
) -> rusqlite::Result<()> {
    let (key, fingerprint) = new.request.key_columns();
    let due = now.saturating_add(millis_of(new.starts_in(Utc::now())));
    tx.prepare_cached(INSERT_ASYNC)?.execute(params![
        new.request.id,
        new.request.payload_hash,
        new.data,
        new.request.iterations,
        new.callback_url,
        millis(new.request.created_at),
        new.destination,
        destination_host(&new.destination),
        key,
        fingerprint,
        due,
        new.controls.run_at.map(millis),
        new.controls.max_retries,
        new.timeout_ms(),
        new.controls.priority,
        new.ordering_key,
        new.request.trace.as_ref().map(|t| &t.traceparent),
        new.request
            .trace
            .as_ref()
            .and_then(|t| t.tracestate.as_ref()),
    ])?;
    Ok(())
}

/// The request already holding `new`'s idempotency key, if it has one and it is taken. The
/// writer is the only one writing, so nothing can take the key between this read and the
/// insert that follows it in the same transaction.
pub(super) fn key_taken(
    tx: &Transaction<'_>,
    new: &NewRequest,
) -> rusqlite::Result<Option<Submitted>> {
    let Some(idempotency) = &new.idempotency else {
        return Ok(None);
    };
    Ok(holder_of(tx, &idempotency.key)?.map(Submitted::KeyTaken))
}

pub(super) fn holder_of(conn: &Connection, key: &str) -> rusqlite::Result<Option<KeyHolder>> {
    conn.prepare_cached(KEY_HOLDER)?
        .query_row([key], |row| {
            Ok(KeyHolder {
                id: row.get(0)?,
                fingerprint: row.get(1)?,
            })
        })
        .optional()
}

/// A sync request recorded as `processing` (in the background, or holding a key).
pub(super) struct SyncStarted(pub NewRequest);

impl Write for SyncStarted {
    type Output = Submitted;

    fn apply(&self, tx: &Transaction<'_>, _queue: &mut Queue) -> Applied<Submitted> {
        let new = &self.0;
        if let Some(taken) = key_taken(tx, new)? {
            return done(taken);
        }
        let (key, fingerprint) = new.key_columns();
        tx.prepare_cached(INSERT_SYNC_STARTED)?.execute(params![
            new.id,
            new.payload_hash,
            new.iterations,
            millis(new.created_at),
            key,
            fingerprint,
            new.trace.as_ref().map(|t| &t.traceparent),
            new.trace.as_ref().and_then(|t| t.tracestate.as_ref()),
        ])?;
        done(Submitted::Created)
    }
}

/// A sync request's end, with the whole record.
pub(super) struct SyncFinished {
    pub new: NewRequest,
    pub outcome: Result<WorkResult, String>,
    pub at: DateTime<Utc>,
}

impl Write for SyncFinished {
    type Output = ();

    fn apply(&self, tx: &Transaction<'_>, _queue: &mut Queue) -> Applied<()> {
        let new = &self.new;
        let (status, result, error) = sync_outcome(self.outcome.as_ref().map_err(String::as_str));
        // The `processing` row is written only for a slow request, and its background
        // write may have been skipped when the writer queue was full: most sync requests
        // end with an insert. Not an upsert, whose update would need a statement journal
        // (migration 0016).
        // In `INSERT_SYNC_FINISHED`'s numbering, which `FINISH_SYNC_STARTED`'s follows.
        let values = params![
            new.id,
            new.payload_hash,
            new.iterations,
            millis(new.created_at),
            status.as_str(),
            millis(self.at),
            result.map(|r| &r.input_hash),
            result.map(|r| &r.output_hash),
            result.map(|r| r.processing_time_ms),
            error,
            new.trace.as_ref().map(|t| &t.traceparent),
            new.trace.as_ref().and_then(|t| t.tracestate.as_ref()),
        ];
        let inserted = tx.prepare_cached(INSERT_SYNC_FINISHED)?.execute(values)?;
        if inserted == 0 {
            tx.prepare_cached(FINISH_SYNC_STARTED)?
                .execute(&values[..FINISH_SYNC_STARTED_VALUES])?;
        }
        done(())
    }
}

/// An async request queued, within the bound, unless its key is taken.
pub(super) struct SubmitAsync(pub NewAsyncRequest);

impl Write for SubmitAsync {
    type Output = Submitted;

    fn apply(&self, tx: &Transaction<'_>, queue: &mut Queue) -> Applied<Submitted> {
        // A replay is answered whatever the queue: it asks for nothing new.
        if let Some(taken) = key_taken(tx, &self.0.request)? {
            return done(taken);
        }
        if !queue.has_room(1) {
            return queue_full();
        }
        insert_async(tx, &self.0, queue.now)?;
        queue.change(Transition::Queued.queue_delta());
        done(Submitted::Created)
    }
}

/// Async requests queued all together, or none when they do not all fit.
pub(super) struct SubmitBatch(pub Vec<NewAsyncRequest>);

impl Write for SubmitBatch {
    type Output = ();

    fn apply(&self, tx: &Transaction<'_>, queue: &mut Queue) -> Applied<()> {
        if !queue.has_room(self.0.len() as u64) {
            return queue_full();
        }
        for new in &self.0 {
            insert_async(tx, new, queue.now)?;
            queue.change(Transition::Queued.queue_delta());
        }
        done(())
    }
}

/// Due jobs claimed for `owner`.
pub(super) struct Claim {
    pub owner: String,
    pub limit: u32,
    pub lease: Duration,
    pub priority_step: Duration,
    pub rooms: Rooms,
}

impl Write for Claim {
    type Output = Vec<Job>;

    fn apply(&self, tx: &Transaction<'_>, queue: &mut Queue) -> Applied<Vec<Job>> {
        done(claim(
            tx,
            &self.owner,
            self.limit,
            (self.lease, self.priority_step),
            &self.rooms,
            (queue.now, &mut queue.walk_from),
        )?)
    }
}

/// The leases of `owner`'s claims named by `tokens` extended; its other claims whose lease
/// ran out released (their worker gave up without an outcome, and no claim of this owner may
/// take them over: it never takes its own leased jobs).
pub(super) struct Heartbeat {
    pub owner: String,
    pub tokens: Vec<String>,
    pub lease: Duration,
}

impl Write for Heartbeat {
    type Output = Leases;

    fn apply(&self, tx: &Transaction<'_>, queue: &mut Queue) -> Applied<Leases> {
        let now = queue.now;
        let lease_until = now.saturating_add(millis_of(self.lease));
        let mut renew = tx.prepare_cached(RENEW_LEASE)?;
        let mut renewed = 0;
        let mut lost = Vec::new();
        for token in &self.tokens {
            match renew.execute(params![self.owner, token, lease_until])? {
                0 => lost.push(token.clone()),
                n => renewed += n,
            }
        }
        let expired: Vec<(String, String)> = tx
            .prepare_cached(EXPIRED_LEASES_OF)?
            .query_map(params![self.owner, now], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut release = tx.prepare_cached(RELEASE_CLAIM)?;
        let mut released = 0;
        for (id, token) in expired {
            if !self.tokens.contains(&token) {
                released += release.execute(params![id, token])?;
            }
        }
        done(Leases {
            renewed: renewed as u64,
            released: released as u64,
            lost,
        })
    }
}

/// A claimed job's work result; answers whether the claim still held it.
pub(super) struct SaveResult {
    pub id: String,
    pub token: String,
    pub work: FinishedWork,
}

impl Write for SaveResult {
    type Output = bool;

    fn apply(&self, tx: &Transaction<'_>, _queue: &mut Queue) -> Applied<bool> {
        let updated = tx.prepare_cached(SAVE_RESULT)?.execute(params![
            self.id,
            self.token,
            self.work.result.input_hash,
            self.work.result.output_hash,
            self.work.result.processing_time_ms,
            millis(self.work.completed_at)
        ])?;
        done(updated == 1)
    }
}

/// A delivery attempt and what follows it; answers whether the claim still held the job.
pub(super) struct RecordAttempt {
    pub id: String,
    pub owner: String,
    pub token: String,
    pub attempt: DeliveryAttempt,
    pub outcome: AttemptOutcome,
}

impl Write for RecordAttempt {
    type Output = Recorded;

    fn apply(&self, tx: &Transaction<'_>, queue: &mut Queue) -> Applied<Recorded> {
        let transition = Transition::Attempted(self.outcome);
        let attempt = &self.attempt;
        // Delivery ended with the last attempt: when that attempt ended.
        let delivered_at = transition
            .ends_delivery()
            .then(|| millis(attempt.started_at) + attempt.duration_ms.round() as i64);
        let next_attempt_at = transition
            .due_in_secs()
            .map(|secs| queue.now.saturating_add((secs * 1000.0).round() as i64));
        let left_in: Option<String> = tx
            .prepare_cached(RECORD_ATTEMPT)?
            .query_row(
                params![
                    self.id,
                    self.token,
                    self.outcome.status().as_str(),
                    delivered_at,
                    next_attempt_at,
                    attempt.attempt,
                    self.outcome.last_error(attempt.error.as_deref()),
                    attempt.status_code,
                ],
                |row| row.get(0),
            )
            .optional()?;
        let Some(left_in) = left_in else {
            // The lease was lost: the job belongs to someone else now; record nothing.
            return done(Recorded::ClaimLost);
        };
        let (transition, recorded) = if parse_status(&left_in)? == Status::Cancelled {
            (Transition::AttemptLanded, Recorded::Landed)
        } else {
            (transition, Recorded::MovedOn)
        };
        tx.prepare_cached(INSERT_ATTEMPT)?.execute(params![
            self.id,
            attempt.attempt,
            millis(attempt.started_at),
            attempt.duration_ms,
            attempt.status_code,
            attempt.error,
            attempt.response_body,
            self.owner,
            attempt.note,
            attempt.response_headers,
        ])?;
        queue.change(transition.queue_delta());
        done(recorded)
    }
}

/// A claimed job ended without an attempt; answers whether the claim still held it.
pub(super) struct GiveUp {
    pub id: String,
    pub token: String,
    pub reason: String,
}

impl Write for GiveUp {
    type Output = bool;

    fn apply(&self, tx: &Transaction<'_>, queue: &mut Queue) -> Applied<bool> {
        let updated = tx.prepare_cached(GIVE_UP)?.execute(params![
            self.id,
            self.token,
            millis(Utc::now()),
            self.reason
        ])?;
        if updated == 1 {
            queue.change(Transition::GivenUp.queue_delta());
        }
        done(updated == 1)
    }
}

/// A write that changes nothing anyone reads: does the database take writes again?
pub(super) struct Probe;

/// The write probe's row, and its removal.
pub(super) const PROBE_INSERT: &str = "INSERT INTO write_probe (filler) VALUES (zeroblob(?1))";
pub(super) const PROBE_DELETE: &str = "DELETE FROM write_probe";

/// What a probe writes and takes back: a busy batch of writes fills this much of the WAL,
/// and a full disk can still take a page or two (a probe that rewrote one page passed while
/// every submission failed).
const PROBE_BYTES: i64 = 1 << 20;

impl Write for Probe {
    type Output = ();

    fn apply(&self, tx: &Transaction<'_>, _queue: &mut Queue) -> Applied<()> {
        // Written and deleted in one transaction: the commit still appends every page the
        // row took to the WAL (and grows the file, if it must), which is what fails on a full
        // disk; the table is left empty.
        tx.prepare_cached(PROBE_INSERT)?.execute([PROBE_BYTES])?;
        tx.prepare_cached(PROBE_DELETE)?.execute([])?;
        done(())
    }
}

/// A failed delivery put back in the queue for a new round, within the bound.
pub(super) struct Redeliver {
    pub id: String,
}

impl Write for Redeliver {
    type Output = Redelivery;

    fn apply(&self, tx: &Transaction<'_>, queue: &mut Queue) -> Applied<Redelivery> {
        let row: Option<(String, bool)> = tx
            .prepare_cached(REDELIVERY_OF)?
            .query_row([&self.id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let Some((status, work_done)) = row else {
            return done(Redelivery::NotFound);
        };
        let status = parse_status(&status)?;
        let transition = Transition::Redelivered { work_done };
        let Some(next) = transition.status_after(Some(status)) else {
            return done(Redelivery::WrongStatus(status));
        };
        if !queue.has_room(1) {
            return queue_full();
        }
        // A new round: the retry budget counts from the attempts made so far.
        tx.prepare_cached(REDELIVER)?
            .execute(params![self.id, queue.now, next.as_str()])?;
        queue.change(transition.queue_delta());
        done(Redelivery::Queued)
    }
}

/// The next request of an ordering key unparked (`Some`), or of every key whose first queued
/// request is parked (`None`); answers how many.
pub(super) struct Unpark {
    pub key: Option<String>,
}

impl Write for Unpark {
    type Output = u64;

    fn apply(&self, tx: &Transaction<'_>, queue: &mut Queue) -> Applied<u64> {
        let wall = millis(Utc::now());
        let changed = match &self.key {
            Some(key) => tx
                .prepare_cached(UNPARK_KEY)?
                .execute(params![queue.now, wall, key])?,
            None => {
                tx.prepare_cached(RELEASE_ENDED_CLAIMS)?
                    .execute([queue.now])?;
                tx.prepare_cached(UNPARK_STRANDED)?
                    .execute(params![queue.now, wall])?
            }
        };
        done(changed as u64)
    }
}

/// A queued request made due now, if no claim holds it.
pub(super) struct MakeDue {
    pub id: String,
}

impl Write for MakeDue {
    type Output = MadeDue;

    fn apply(&self, tx: &Transaction<'_>, queue: &mut Queue) -> Applied<MadeDue> {
        let row: Option<(String, String, bool, bool)> = tx
            .prepare_cached(MAKE_DUE_OF)?
            .query_row([&self.id], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .optional()?;
        let Some((mode, status, claimed, behind_earlier)) = row else {
            return done(MadeDue::NotFound);
        };
        // The mode column admits only the model's modes.
        let mode = Mode::parse(&mode).unwrap_or(Mode::Sync);
        if let Err(answer) = MadeDue::decide(mode, parse_status(&status)?, claimed, behind_earlier)
        {
            return done(answer);
        }
        tx.prepare_cached(MAKE_DUE)?
            .execute(params![self.id, queue.now])?;
        done(MadeDue::Due)
    }
}

/// A request cancelled, if it is an async one not yet final.
pub(super) struct Cancel {
    pub id: String,
}

impl Write for Cancel {
    type Output = Cancellation;

    fn apply(&self, tx: &Transaction<'_>, queue: &mut Queue) -> Applied<Cancellation> {
        let row: Option<(String, String, bool, bool)> = tx
            .prepare_cached(CANCEL_OF)?
            .query_row([&self.id], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .optional()?;
        let Some((mode, status, claimed, was_in_flight)) = row else {
            return done(Cancellation::NotFound);
        };
        // The mode column admits only the model's modes.
        let mode = Mode::parse(&mode).unwrap_or(Mode::Sync);
        let in_flight = match Cancellation::decide(mode, parse_status(&status)?, claimed) {
            Ok(in_flight) => in_flight,
            Err(answer) => return done(answer.repeated(was_in_flight)),
        };
        tx.prepare_cached(CANCEL)?
            .execute(params![self.id, millis(Utc::now()), in_flight])?;
        queue.change(Transition::Cancelled { in_flight }.queue_delta());
        done(Cancellation::Cancelled {
            in_flight,
            by_this_call: true,
        })
    }
}

/// `owner`'s claims handed back untouched; answers how many.
pub(super) struct Release {
    pub owner: String,
}

impl Write for Release {
    type Output = u64;

    fn apply(&self, tx: &Transaction<'_>, _queue: &mut Queue) -> Applied<u64> {
        let released = tx
            // A job handed back untouched does not count as a claim without an outcome.
            .prepare_cached(RELEASE)?
            .execute([&self.owner])?;
        done(released as u64)
    }
}

/// Up to `chunk` requests created from `from` on that finished before `cutoff`.
pub(super) struct DeleteExpired {
    pub cutoff: DateTime<Utc>,
    pub chunk: u64,
    pub from: DateTime<Utc>,
}

impl Write for DeleteExpired {
    type Output = Swept;

    fn apply(&self, tx: &Transaction<'_>, _queue: &mut Queue) -> Applied<Swept> {
        let mut delete = tx.prepare_cached(DELETE_EXPIRED)?;
        let created = delete.query_map(
            params![
                millis(self.cutoff),
                i64::try_from(self.chunk).unwrap_or(i64::MAX),
                millis(self.from)
            ],
            |row| row.get(0),
        )?;
        done(swept(created)?)
    }
}

/// What a retention chunk deleted, from the creation times (ms) of its deleted rows.
fn swept(created: impl Iterator<Item = rusqlite::Result<i64>>) -> rusqlite::Result<Swept> {
    let created: Vec<i64> = created.collect::<rusqlite::Result<_>>()?;
    Ok(Swept::of(created.into_iter().map(from_millis)))
}

/// Up to `chunk` of the oldest finished requests beyond the newest `max_stored` finished
/// ones; answers how many were deleted. How many are beyond comes from the kept counts, read
/// in the same transaction as the delete.
pub(super) struct DeleteOverLimit {
    pub max_stored: u64,
    pub chunk: u64,
    pub from: DateTime<Utc>,
}

impl Write for DeleteOverLimit {
    type Output = Swept;

    fn apply(&self, tx: &Transaction<'_>, _queue: &mut Queue) -> Applied<Swept> {
        let finished: i64 = tx
            .prepare_cached(COUNT_FINISHED)?
            .query_row([], |row| row.get(0))?;
        let excess = u64::try_from(finished)
            .unwrap_or(0)
            .saturating_sub(self.max_stored);
        if excess == 0 {
            return done(Swept::default());
        }
        let mut delete = tx.prepare_cached(DELETE_OLDEST_FINISHED)?;
        let created = delete.query_map(
            params![
                i64::try_from(excess.min(self.chunk)).unwrap_or(i64::MAX),
                millis(self.from)
            ],
            |row| row.get(0),
        )?;
        done(swept(created)?)
    }
}

/// The finished requests, from the kept counts.
pub(super) const COUNT_FINISHED: &str = concat!(
    "SELECT COALESCE(sum(n), 0) FROM request_counts WHERE status IN ",
    finished_statuses!()
);

/// The `?1` oldest finished requests created from `?2` on, found by walking the
/// creation-time index from there (the status index would find every finished request,
/// then sort them); answers their creation times.
pub(super) const DELETE_OLDEST_FINISHED: &str = concat!(
    "DELETE FROM requests WHERE id IN (
         SELECT id FROM requests INDEXED BY requests_created_at
         WHERE created_at >= ?2 AND status IN ",
    finished_statuses!(),
    " ORDER BY created_at LIMIT ?1)
     RETURNING created_at"
);

/// Up to `?2` requests created from `?3` on that finished before `?1`, oldest first, by the
/// creation-time index (finished before the cut-off implies created before it); answers
/// their creation times.
pub(super) const DELETE_EXPIRED: &str = concat!(
    "DELETE FROM requests WHERE id IN (
         SELECT id FROM requests INDEXED BY requests_created_at
         WHERE created_at >= ?3 AND created_at < ?1 AND status IN ",
    finished_statuses!(),
    " AND COALESCE(delivered_at, completed_at, created_at) < ?1
         ORDER BY created_at LIMIT ?2)
     RETURNING created_at"
);
