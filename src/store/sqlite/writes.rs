//! The SQL of each write command, run inside the writer's open transaction.

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::claims::claim;
use super::rows::{millis, parse_status};
use super::writer::{Applied, Op, Reply};
use crate::delivery::destinations::destination_of_str;
use crate::store::{
    KeyHolder, NewAsyncRequest, NewRequest, Redelivery, StoreError, Submitted, Transition,
    sync_outcome,
};

pub(super) fn insert_async(tx: &Transaction<'_>, new: &NewAsyncRequest) -> rusqlite::Result<()> {
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
pub(super) fn apply(
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
            let (status, result, error) = sync_outcome(outcome.as_ref().map_err(String::as_str));
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
                status.as_str(),
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
                queue_delta: Transition::Queued.queue_delta(),
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
                queue_delta: i64::try_from(size)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(Transition::Queued.queue_delta()),
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
            let transition = Transition::Attempted(*outcome);
            let completed_at = transition.finishes().then_some(now);
            let next_attempt_at = transition
                .due_in_secs()
                .map(|secs| now.saturating_add((secs * 1000.0).round() as i64));
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
                queue_delta: transition.queue_delta(),
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
                queue_delta: if updated == 1 {
                    Transition::GivenUp.queue_delta()
                } else {
                    0
                },
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
            let status = parse_status(&status)?;
            if !Transition::Redelivered.applies_to(status) {
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
                queue_delta: Transition::Redelivered.queue_delta(),
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
