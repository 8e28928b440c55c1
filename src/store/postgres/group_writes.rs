//! The writes every async request makes, and a sync request's last, as multi-row statements for
//! group commit ([`crate::store::group_commit`]): accepting it, storing its work result, recording
//! each delivery attempt. One statement (`UNNEST` of one array per column) and one commit serve a
//! whole batch; each write's answer is read from what the statement returns.
//!
//! Concurrent batches never wait for each other's rows: a job's result and its attempt are
//! written one after the other by the one worker holding its claim, and the lease heartbeat
//! skips rows a batch has locked. So batches cannot deadlock; should one fail all the same,
//! its writes are retried one by one.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sqlx::postgres::PgPool;

use super::{JOBS_CHANNEL, NOTIFY_INTERVAL};
use crate::delivery::destinations::destination_host;
use crate::model::WorkResult;
use crate::model::{DeliveryAttempt, Status};
use crate::store::group_commit::RunBatch;
use crate::store::{
    AttemptOutcome, FinishedWork, NewAsyncRequest, NewRequest, Recorded, StoreResult, Transition,
    sync_outcome,
};

/// Queued requests (`POST /async`, one by one or a batch) inserted in one statement; each
/// answer is whether that row was inserted (false: its idempotency key is taken). Commits
/// durably: every acceptance follows its row's commit.
pub(super) const INSERT_QUEUED: &str = concat!(
    "
     WITH inserted AS (
         INSERT INTO requests (id, mode, status, payload_hash, data, iterations, callback_url,
                               created_at, next_attempt_at, destination, callback_host,
                               idempotency_key, idempotency_fingerprint, run_at, max_retries,
                               callback_timeout_ms, priority, ordering_key, traceparent,
                               tracestate, ordering_seq)
         -- Due now on the database's clock, or a scheduled request as much later as its
         -- run_at was ahead of the instance's clock when bound (starts_in), and never
         -- before its run_at on the database's clock (an instance whose clock runs ahead
         -- would otherwise start it early). Parked, when a request of its ordering key is
         -- queued already or comes before it in the batch.
         SELECT id, 'async', 'pending', payload_hash, data, iterations, callback_url,
                created_at,
                CASE WHEN ordering_key IS NOT NULL
                          AND (earlier_in_batch > 0
                               OR EXISTS (SELECT 1 FROM requests AS q
                                          WHERE q.ordering_key = queued.ordering_key
                                            AND q.next_attempt_at IS NOT NULL))
                     THEN ",
    parked_at!(),
    "::timestamptz
                     ELSE GREATEST(now() + make_interval(secs => starts_in),
                                   COALESCE(run_at, now())) END,
                destination,
                callback_host, idempotency_key, idempotency_fingerprint, run_at, max_retries,
                callback_timeout_ms, priority, ordering_key, traceparent, tracestate,
                -- In the batch's order within each key: the window below hands its rows on
                -- sorted by key, then place in the batch.
                CASE WHEN ordering_key IS NOT NULL THEN nextval('requests_ordering_seq') END
         FROM (SELECT queued.*,
                      count(*) OVER (PARTITION BY ordering_key ORDER BY place
                                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                          AS earlier_in_batch
               FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::bigint[], $5::text[],
                           $6::timestamptz[], $7::text[], $8::text[], $9::text[], $12::text[],
                           $13::float8[], $14::timestamptz[], $15::int[], $16::int[],
                           $17::smallint[], $18::text[], $19::text[], $20::text[])
                    WITH ORDINALITY
                    AS queued(id, payload_hash, data, iterations, callback_url, created_at,
                              destination, idempotency_key, idempotency_fingerprint,
                              callback_host, starts_in, run_at, max_retries,
                              callback_timeout_ms, priority, ordering_key, traceparent,
                              tracestate, place)) AS queued
         -- No conflict target: a taken key (or a retried write's taken id) inserts nothing.
         ON CONFLICT DO NOTHING
         RETURNING id),
     -- The rows and their announcement commit together (a NOTIFY is delivered at commit,
     -- never before). Only when $11: PostgreSQL serialises the commits of notifying
     -- transactions, so an instance announces at most once per NOTIFY_INTERVAL; the jobs of
     -- the others are found by the instance that accepted them (woken locally) or by
     -- whoever the last announcement woke. (A CTE without side effects runs only where it
     -- is read: the scalar subquery below reads it once, when a row was inserted.)
     announced AS (
         SELECT pg_notify($10, '') WHERE $11)
     SELECT id FROM inserted WHERE (SELECT count(*) FROM announced) >= 0"
);

/// Sync requests' ends, each with its whole record: inserted, or over the `processing` row
/// of one that was recorded while it ran. Commits durably: every answer follows its row's
/// commit.
pub(super) const FINISH_SYNC: &str =
    "INSERT INTO requests (id, mode, status, payload_hash, iterations, created_at,
                           completed_at, input_hash, output_hash, processing_time_ms, error,
                           traceparent, tracestate)
     SELECT id, 'sync', status, payload_hash, iterations, created_at, now(), input_hash,
            output_hash, processing_time_ms, error, traceparent, tracestate
     FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::text[],
                 $6::text[], $7::text[], $8::float8[], $9::text[], $10::text[], $11::text[])
          AS f(id, payload_hash, iterations, created_at, status, input_hash, output_hash,
               processing_time_ms, error, traceparent, tracestate)
     ON CONFLICT (id) DO UPDATE SET status = excluded.status, completed_at = excluded.completed_at,
         input_hash = excluded.input_hash, output_hash = excluded.output_hash,
         processing_time_ms = excluded.processing_time_ms, error = excluded.error,
         -- A failed sync request did no work a replay could answer with: its key is
         -- free again, for the client's retry.
         idempotency_key = CASE excluded.status WHEN 'failed' THEN NULL
                           ELSE requests.idempotency_key END
     -- Only a request still working ends so (SyncFinished applies to `processing`):
     -- one already failed as abandoned stays as it is, its key possibly reused.
     WHERE requests.status = 'processing'";

/// Work results stored under their claims (`processing → callback_pending`); returns the id and
/// claim of each stored.
pub(super) const STORE_RESULTS: &str = "UPDATE requests AS r
     SET status = 'callback_pending', input_hash = w.input_hash,
         output_hash = w.output_hash, processing_time_ms = w.processing_time_ms,
         completed_at = w.completed_at, data = NULL
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[],
                 $6::timestamptz[])
          AS w(id, token, input_hash, output_hash, processing_time_ms, completed_at)
     WHERE r.id = w.id AND r.lease_token = w.token
     RETURNING r.id, w.token";

/// Delivery attempts recorded where their claim still holds, each request moved on in the
/// same statement (a cancelled one left cancelled); returns the id, claim and status of each
/// recorded.
pub(super) const RECORD_ATTEMPTS: &str = "WITH attempts AS (
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                              $5::bool[], $6::float8[], $7::int[], $8::text[],
                              $9::timestamptz[], $10::float8[], $11::int[], $12::text[],
                              $13::text[], $14::text[], $15::text[])
              AS a(id, owner, token, status, ends_delivery, due_in, attempt, error,
                   started_at, duration_ms, status_code, response_body, note, last_error,
                   response_headers)),
     moved AS (
         UPDATE requests AS r
         -- Delivery ended with the last attempt: when it ended on the instance's clock, as
         -- the attempt's own times and every other time in a record are.
         -- A request cancelled while the attempt was in flight only records it.
         SET status = CASE r.status WHEN 'cancelled' THEN r.status ELSE a.status END,
             delivered_at = CASE WHEN r.status = 'cancelled' THEN r.delivered_at
                                 WHEN a.ends_delivery
                                 THEN a.started_at + make_interval(secs => a.duration_ms / 1000)
                            END,
             next_attempt_at = CASE WHEN r.status <> 'cancelled'
                                    THEN now() + make_interval(secs => a.due_in) END,
             callback_attempts = a.attempt,
             callback_last_error = COALESCE(a.last_error, r.callback_last_error),
             callback_last_status = a.status_code,
             lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL,
             unrecorded_claims = 0
         FROM attempts AS a
         WHERE r.id = a.id AND r.lease_token = a.token
         RETURNING r.id, a.token, r.status),
     audited AS (
         INSERT INTO delivery_attempts
             (request_id, attempt, started_at, duration_ms, status_code, error,
              response_body, claimed_by, note, response_headers)
         SELECT a.id, a.attempt, a.started_at, a.duration_ms, a.status_code, a.error,
                a.response_body, a.owner, a.note, a.response_headers
         FROM attempts AS a JOIN moved ON moved.id = a.id AND moved.token = a.token
         ON CONFLICT (request_id, attempt) DO NOTHING)
     SELECT id, token, status FROM moved";

/// Binds `INSERT_QUEUED`'s parameters for `queued`.
pub(super) fn insert_queued(
    queued: &[NewAsyncRequest],
    announce: bool,
) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let text = |value: fn(&NewAsyncRequest) -> &str| column(queued, |n| value(n).to_owned());
    let key = |n: &NewAsyncRequest| n.request.key_columns().0.map(str::to_owned);
    let fingerprint = |n: &NewAsyncRequest| n.request.key_columns().1.map(str::to_owned);
    let now = chrono::Utc::now();
    sqlx::query(INSERT_QUEUED)
        .bind(text(|n| &n.request.id))
        .bind(text(|n| &n.request.payload_hash))
        .bind(column(queued, |n| n.data.as_bytes().to_vec()))
        .bind(column(queued, |n| i64::from(n.request.iterations)))
        .bind(text(|n| &n.callback_url))
        .bind(column(queued, |n| n.request.created_at))
        .bind(text(|n| &n.destination))
        .bind(column(queued, key))
        .bind(column(queued, fingerprint))
        .bind(JOBS_CHANNEL)
        .bind(announce)
        .bind(text(|n| destination_host(&n.destination)))
        .bind(column(queued, |n| n.starts_in(now).as_secs_f64()))
        .bind(column(queued, |n| n.controls.run_at))
        .bind(column(queued, |n| {
            n.controls
                .max_retries
                .map(|r| i32::try_from(r).unwrap_or(i32::MAX))
        }))
        .bind(column(queued, |n| {
            n.timeout_ms()
                .map(|ms| i32::try_from(ms).unwrap_or(i32::MAX))
        }))
        .bind(column(queued, |n| i16::from(n.controls.priority)))
        .bind(column(queued, |n| n.ordering_key.clone()))
        .bind(column(queued, |n| {
            n.request.trace.as_ref().map(|t| t.traceparent.clone())
        }))
        .bind(column(queued, |n| {
            n.request.trace.as_ref().and_then(|t| t.tracestate.clone())
        }))
}

/// Inserts submissions of `POST /async`, batched.
pub(super) struct InsertQueued {
    pub pool: PgPool,
    pub last_notify: Arc<Mutex<Option<Instant>>>,
}

impl InsertQueued {
    /// Whether this batch should announce itself: the first after NOTIFY_INTERVAL.
    fn take_notify_turn(&self) -> bool {
        let Ok(mut last) = self.last_notify.lock() else {
            return true;
        };
        if last.is_some_and(|at| at.elapsed() < NOTIFY_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

impl RunBatch<NewAsyncRequest> for InsertQueued {
    type Output = bool;

    async fn run(&self, batch: &[NewAsyncRequest]) -> StoreResult<Vec<bool>> {
        let inserted: Vec<String> = insert_queued(batch, self.take_notify_turn())
            .try_map(|row: sqlx::postgres::PgRow| sqlx::Row::try_get(&row, 0))
            .fetch_all(&self.pool)
            .await?;
        Ok(answered(
            batch.iter().map(|n| n.request.id.as_str()),
            inserted.iter().map(String::as_str),
        ))
    }
}

/// A sync request's end: the request and how its work ended.
pub(crate) struct SyncEnd {
    pub request: NewRequest,
    pub outcome: Result<WorkResult, String>,
}

impl SyncEnd {
    /// Its status, result and error, as stored.
    fn stored(&self) -> (Status, Option<&WorkResult>, Option<&str>) {
        sync_outcome(self.outcome.as_ref().map_err(String::as_str))
    }
}

/// Records the ends of sync requests, batched.
pub(super) struct FinishSync {
    pub pool: PgPool,
}

impl RunBatch<SyncEnd> for FinishSync {
    type Output = ();

    async fn run(&self, batch: &[SyncEnd]) -> StoreResult<Vec<()>> {
        let stored: Vec<_> = batch.iter().map(SyncEnd::stored).collect();
        sqlx::query(FINISH_SYNC)
            .bind(column(batch, |e| e.request.id.as_str()))
            .bind(column(batch, |e| e.request.payload_hash.as_str()))
            .bind(column(batch, |e| i64::from(e.request.iterations)))
            .bind(column(batch, |e| e.request.created_at))
            .bind(column(&stored, |s| s.0.as_str()))
            .bind(column(&stored, |s| s.1.map(|r| r.input_hash.as_str())))
            .bind(column(&stored, |s| s.1.map(|r| r.output_hash.as_str())))
            .bind(column(&stored, |s| s.1.map(|r| r.processing_time_ms)))
            .bind(column(&stored, |s| s.2))
            .bind(column(batch, |e| {
                e.request.trace.as_ref().map(|t| t.traceparent.as_str())
            }))
            .bind(column(batch, |e| {
                e.request
                    .trace
                    .as_ref()
                    .and_then(|t| t.tracestate.as_deref())
            }))
            .execute(&self.pool)
            .await?;
        // A request no longer `processing` (failed as abandoned meanwhile) is left as it is,
        // as each write alone would leave it: every write is answered alike.
        Ok(vec![(); batch.len()])
    }
}

/// A claimed job's work result, to be stored under its claim.
pub(crate) struct ResultWrite {
    pub id: String,
    pub token: String,
    pub work: FinishedWork,
}

/// Stores work results (`processing → callback_pending`), batched; each answer is whether
/// the claim still held the job.
pub(super) struct StoreResults {
    pub pool: PgPool,
}

impl RunBatch<ResultWrite> for StoreResults {
    type Output = bool;

    async fn run(&self, batch: &[ResultWrite]) -> StoreResult<Vec<bool>> {
        // Answered by id and claim: a stale claim's write may share the batch with the
        // write of the claim that took the job over, and only the latter stored anything.
        let updated: Vec<(String, String)> = sqlx::query_as(STORE_RESULTS)
            .bind(column(batch, |w| w.id.as_str()))
            .bind(column(batch, |w| w.token.as_str()))
            .bind(column(batch, |w| w.work.result.input_hash.as_str()))
            .bind(column(batch, |w| w.work.result.output_hash.as_str()))
            .bind(column(batch, |w| w.work.result.processing_time_ms))
            .bind(column(batch, |w| w.work.completed_at))
            .fetch_all(&self.pool)
            .await?;
        Ok(answered(
            batch.iter().map(|w| (w.id.as_str(), w.token.as_str())),
            updated
                .iter()
                .map(|(id, token)| (id.as_str(), token.as_str())),
        ))
    }
}

/// A delivery attempt made under a claim, and what follows it.
pub(crate) struct AttemptWrite {
    pub id: String,
    pub owner: String,
    pub token: String,
    pub attempt: DeliveryAttempt,
    pub outcome: AttemptOutcome,
}

/// Records delivery attempts and moves their requests on (releasing the claims), batched;
/// each answer says whether the claim still held the job (if not, nothing is recorded) and
/// whether its request had been cancelled meanwhile.
pub(super) struct RecordAttempts {
    pub pool: PgPool,
}

impl RunBatch<AttemptWrite> for RecordAttempts {
    type Output = Recorded;

    async fn run(&self, batch: &[AttemptWrite]) -> StoreResult<Vec<Recorded>> {
        let transition = |w: &AttemptWrite| Transition::Attempted(w.outcome);
        // The attempt is recorded only where the claim still holds, and its request moves on
        // in the same statement. Each write is answered by its id and claim (a stale claim's
        // attempt may share the batch with the current claim's, and must neither enter the
        // audit nor be acknowledged), and by whether its request moved on, as on SQLite: an
        // attempt number already in the audit does not make a held claim look lost.
        let recorded: Vec<(String, String, String)> = sqlx::query_as(RECORD_ATTEMPTS)
            .bind(column(batch, |w| w.id.as_str()))
            .bind(column(batch, |w| w.owner.as_str()))
            .bind(column(batch, |w| w.token.as_str()))
            .bind(column(batch, |w| w.outcome.status().as_str()))
            .bind(column(batch, |w| transition(w).ends_delivery()))
            .bind(column(batch, |w| transition(w).due_in_secs()))
            .bind(column(batch, |w| {
                i32::try_from(w.attempt.attempt).unwrap_or(i32::MAX)
            }))
            .bind(column(batch, |w| w.attempt.error.as_deref()))
            .bind(column(batch, |w| w.attempt.started_at))
            .bind(column(batch, |w| w.attempt.duration_ms))
            .bind(column(batch, |w| w.attempt.status_code.map(i32::from)))
            .bind(column(batch, |w| w.attempt.response_body.as_deref()))
            .bind(column(batch, |w| w.attempt.note.as_deref()))
            .bind(column(batch, |w| {
                w.outcome.last_error(w.attempt.error.as_deref())
            }))
            .bind(column(batch, |w| w.attempt.response_headers.as_deref()))
            .fetch_all(&self.pool)
            .await?;
        let left_in: std::collections::HashMap<(&str, &str), &str> = recorded
            .iter()
            .map(|(id, token, status)| ((id.as_str(), token.as_str()), status.as_str()))
            .collect();
        Ok(batch
            .iter()
            .map(|w| match left_in.get(&(w.id.as_str(), w.token.as_str())) {
                None => Recorded::ClaimLost,
                Some(&status) if status == Status::Cancelled.as_str() => Recorded::Landed,
                Some(_) => Recorded::MovedOn,
            })
            .collect())
    }
}

/// One column of a batch: the array `UNNEST` turns back into rows.
fn column<'a, T, V>(batch: &'a [T], value: impl Fn(&'a T) -> V) -> Vec<V> {
    batch.iter().map(value).collect()
}

/// For each write's key, in order: whether the statement returned it (an id, or an id and
/// the claim it was made under).
fn answered<K: Eq + std::hash::Hash>(
    keys: impl Iterator<Item = K>,
    returned: impl IntoIterator<Item = K>,
) -> Vec<bool> {
    let returned: std::collections::HashSet<K> = returned.into_iter().collect();
    keys.map(|key| returned.contains(&key)).collect()
}
