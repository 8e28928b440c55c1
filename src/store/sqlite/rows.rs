//! Rows into records, jobs and attempts; times as the Unix milliseconds SQLite stores.

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::Row;

use crate::delivery::destinations::destination_of_str;
use crate::model::{DeliveryAttempt, Mode, RequestRecord, Status, WorkResult};
use crate::store::Job;

pub(super) fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

pub(super) fn decode_error(column: usize, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        format!("unknown value {value:?}").into(),
    )
}

pub(super) fn record_from_row(row: &Row<'_>) -> rusqlite::Result<RequestRecord> {
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

pub(super) fn result_from_row(row: &Row<'_>, id: &str) -> rusqlite::Result<Option<WorkResult>> {
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

pub(super) fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
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

pub(super) fn attempt_from_row(row: &Row<'_>) -> rusqlite::Result<DeliveryAttempt> {
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
