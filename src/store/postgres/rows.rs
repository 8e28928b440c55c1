//! Reading this backend's rows into the store's types (what a row means is `store::rows`).

use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::model::{DeliveryAttempt, RequestRecord, Status};
use crate::store::rows::{self, JobColumns, RecordColumns, ResultColumns};
use crate::store::{Job, Position, StoreResult};

pub(super) fn parse_status(value: &str) -> Result<Status, sqlx::Error> {
    rows::parse_status(value).map_err(|err| sqlx::Error::Decode(Box::new(err)))
}

pub(super) fn record_from_row(row: &PgRow) -> Result<RequestRecord, sqlx::Error> {
    RecordColumns {
        id: row.try_get("id")?,
        mode: row.try_get("mode")?,
        status: row.try_get("status")?,
        payload_hash: row.try_get("payload_hash")?,
        created_at: row.try_get("created_at")?,
        completed_at: row.try_get("completed_at")?,
        delivered_at: row.try_get("delivered_at")?,
        callback_url: row.try_get("callback_url")?,
        callback_attempts: count(row, "callback_attempts")?,
        callback_last_error: row.try_get("callback_last_error")?,
        callback_last_status: row
            .try_get::<Option<i16>, _>("callback_last_status")?
            .and_then(|code| u16::try_from(code).ok()),
        error: row.try_get("error")?,
        result: result_columns(row)?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        claimed: row.try_get("claimed")?,
        run_at: row.try_get("run_at")?,
        max_retries: optional_count(row, "max_retries")?,
        callback_timeout_ms: optional_count(row, "callback_timeout_ms")?,
        priority: priority_of(row)?,
        ordering_key: row.try_get("ordering_key")?,
        behind_earlier: row.try_get("behind_earlier")?,
        traceparent: row.try_get("traceparent")?,
    }
    .into_record()
    .map_err(|err| sqlx::Error::Decode(Box::new(err)))
}

/// A stored priority: a `smallint` within the range a request may ask for.
fn priority_of(row: &PgRow) -> Result<i8, sqlx::Error> {
    let stored: i16 = row.try_get("priority")?;
    i8::try_from(stored).map_err(|err| sqlx::Error::Decode(Box::new(err)))
}

pub(super) fn result_columns(row: &PgRow) -> Result<ResultColumns, sqlx::Error> {
    Ok(ResultColumns {
        input_hash: row.try_get("input_hash")?,
        output_hash: row.try_get("output_hash")?,
        processing_time_ms: row.try_get("processing_time_ms")?,
        iterations: count(row, "iterations")?,
    })
}

pub(super) fn job_from_row(row: &PgRow) -> Result<Job, sqlx::Error> {
    // `data` is stored as the bytes it arrived as (TEXT cannot hold a NUL); it was valid
    // UTF-8 then.
    let data = row
        .try_get::<Option<Vec<u8>>, _>("data")?
        .map(|bytes| String::from_utf8(bytes).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .transpose()?;
    Ok(JobColumns {
        id: row.try_get("id")?,
        created_at: row.try_get("created_at")?,
        data,
        callback_url: row.try_get("callback_url")?,
        callback_attempts: count(row, "callback_attempts")?,
        round_start_attempts: count(row, "round_start_attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        lease_token: row.try_get("lease_token")?,
        unrecorded_claims: count(row, "unrecorded_claims")?,
        result: result_columns(row)?,
        completed_at: row.try_get("completed_at")?,
        max_retries: optional_count(row, "max_retries")?,
        callback_timeout_ms: optional_count(row, "callback_timeout_ms")?,
        ordering_key: row.try_get("ordering_key")?,
        traceparent: row.try_get("traceparent")?,
        tracestate: row.try_get("tracestate")?,
    }
    .into_job())
}

/// A non-negative `INTEGER` column as a count.
pub(super) fn count(row: &PgRow, column: &str) -> Result<u32, sqlx::Error> {
    Ok(u32::try_from(row.try_get::<i32, _>(column)?).unwrap_or(0))
}

fn optional_count(row: &PgRow, column: &str) -> Result<Option<u32>, sqlx::Error> {
    Ok(row
        .try_get::<Option<i32>, _>(column)?
        .map(|n| u32::try_from(n).unwrap_or(0)))
}

pub(super) fn attempt_from_row(row: &PgRow) -> Result<DeliveryAttempt, sqlx::Error> {
    Ok(DeliveryAttempt {
        attempt: u32::try_from(row.try_get::<i32, _>("attempt")?).unwrap_or(0),
        started_at: row.try_get("started_at")?,
        duration_ms: row.try_get("duration_ms")?,
        status_code: row
            .try_get::<Option<i32>, _>("status_code")?
            .and_then(|c| u16::try_from(c).ok()),
        error: row.try_get("error")?,
        response_body: row.try_get("response_body")?,
        response_headers: row.try_get("response_headers")?,
        instance: row.try_get("claimed_by")?,
        note: row.try_get("note")?,
    })
}

/// The `(created_at, id)` of a row that selected both.
pub(super) fn position_of(row: &sqlx::postgres::PgRow) -> StoreResult<Position> {
    Ok(Position {
        created_at: row.try_get("created_at")?,
        id: row.try_get("id")?,
    })
}
