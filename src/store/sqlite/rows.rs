//! Reading SQLite's columns into the rows `store::rows` gives meaning to; times as the Unix
//! milliseconds SQLite stores.

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::Row;
use rusqlite::types::Type;

use crate::model::{DeliveryAttempt, RequestRecord, Status};
use crate::store::Job;
use crate::store::rows::{self, JobColumns, RecordColumns, ResultColumns, UnknownValue};

pub(super) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// A stored status name as the model's.
pub(super) fn parse_status(value: &str) -> rusqlite::Result<Status> {
    rows::parse_status(value).map_err(unknown_value)
}

fn unknown_value(err: UnknownValue) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, Type::Text, Box::new(err))
}

pub(super) fn record_from_row(row: &Row<'_>) -> rusqlite::Result<RequestRecord> {
    RecordColumns {
        id: row.get("id")?,
        mode: row.get("mode")?,
        status: row.get("status")?,
        payload_hash: row.get("payload_hash")?,
        created_at: from_millis(row.get("created_at")?),
        completed_at: row.get::<_, Option<i64>>("completed_at")?.map(from_millis),
        delivered_at: row.get::<_, Option<i64>>("delivered_at")?.map(from_millis),
        callback_url: row.get("callback_url")?,
        callback_attempts: row.get("callback_attempts")?,
        callback_last_error: row.get("callback_last_error")?,
        callback_last_status: row.get("callback_last_status")?,
        error: row.get("error")?,
        result: result_columns(row)?,
        next_attempt_at: row
            .get::<_, Option<i64>>("next_attempt_at")?
            .map(from_millis),
        claimed: row.get("claimed")?,
        run_at: row.get::<_, Option<i64>>("run_at")?.map(from_millis),
        max_retries: row.get("max_retries")?,
        callback_timeout_ms: row.get("callback_timeout_ms")?,
        priority: row.get("priority")?,
        ordering_key: row.get("ordering_key")?,
        behind_earlier: row.get("behind_earlier")?,
        traceparent: row.get("traceparent")?,
    }
    .into_record()
    .map_err(unknown_value)
}

fn result_columns(row: &Row<'_>) -> rusqlite::Result<ResultColumns> {
    Ok(ResultColumns {
        input_hash: row.get("input_hash")?,
        output_hash: row.get("output_hash")?,
        processing_time_ms: row.get("processing_time_ms")?,
        iterations: row.get("iterations")?,
    })
}

pub(super) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    Ok(JobColumns {
        id: row.get("id")?,
        created_at: from_millis(row.get("created_at")?),
        data: row.get("data")?,
        callback_url: row.get("callback_url")?,
        callback_attempts: row.get("callback_attempts")?,
        round_start_attempts: row.get("round_start_attempts")?,
        next_attempt_at: row
            .get::<_, Option<i64>>("next_attempt_at")?
            .map(from_millis),
        lease_token: row.get("lease_token")?,
        unrecorded_claims: row.get("unrecorded_claims")?,
        result: result_columns(row)?,
        completed_at: row.get::<_, Option<i64>>("completed_at")?.map(from_millis),
        max_retries: row.get("max_retries")?,
        callback_timeout_ms: row.get("callback_timeout_ms")?,
        ordering_key: row.get("ordering_key")?,
        traceparent: row.get("traceparent")?,
        tracestate: row.get("tracestate")?,
    }
    .into_job())
}

pub(super) fn attempt_from_row(row: &Row<'_>) -> rusqlite::Result<DeliveryAttempt> {
    Ok(DeliveryAttempt {
        attempt: row.get("attempt")?,
        started_at: from_millis(row.get("started_at")?),
        duration_ms: row.get("duration_ms")?,
        status_code: row.get("status_code")?,
        error: row.get("error")?,
        response_body: row.get("response_body")?,
        response_headers: row.get("response_headers")?,
        instance: row.get("claimed_by")?,
        note: row.get("note")?,
    })
}
