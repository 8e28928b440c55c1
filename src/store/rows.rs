//! What a stored row means, once for both backends: each backend reads its columns into these
//! plain structs (its own column types, no rules), and the rules that turn them into the
//! model live here. A result is there only when the work finished (all three of its columns);
//! the retry budget counts the attempts of the current round; the destination is derived
//! from the callback URL; unknown mode or status names are errors, never a default; a row
//! finished before `delivered_at` was recorded reads its `completed_at` as the end of
//! delivery, which is what it was then.

use chrono::{DateTime, Utc};

use super::{FinishedWork, Job};
use crate::delivery::destinations::destination_of_str;
use crate::model::{Mode, RequestRecord, Status, WorkResult};

/// A stored mode or status that the model does not know: a row written by a newer version,
/// or damaged. Each backend reports it as its own decoding error.
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {value:?} in a stored request")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

/// The work-result columns of a row.
#[derive(Debug, Default)]
pub(crate) struct ResultColumns {
    pub input_hash: Option<String>,
    pub output_hash: Option<String>,
    pub processing_time_ms: Option<f64>,
    pub iterations: u32,
}

impl ResultColumns {
    /// The result, if the work finished: all three of its columns are written together.
    pub fn into_result(self, id: &str) -> Option<WorkResult> {
        match (self.input_hash, self.output_hash, self.processing_time_ms) {
            (Some(input_hash), Some(output_hash), Some(processing_time_ms)) => Some(WorkResult {
                request_id: id.to_string(),
                input_hash,
                output_hash,
                iterations: self.iterations,
                processing_time_ms,
            }),
            _ => None,
        }
    }
}

/// The columns of a row that make a [`RequestRecord`].
#[derive(Debug)]
pub(crate) struct RecordColumns {
    pub id: String,
    pub mode: String,
    pub status: String,
    pub payload_hash: String,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub callback_url: Option<String>,
    pub callback_attempts: u32,
    pub callback_last_error: Option<String>,
    pub callback_last_status: Option<u16>,
    pub error: Option<String>,
    pub result: ResultColumns,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Whether a claim holds it (an attempt is under way, or its claimant died and its lease
    /// has yet to run out).
    pub claimed: bool,
    pub run_at: Option<DateTime<Utc>>,
    pub max_retries: Option<u32>,
    pub callback_timeout_ms: Option<u32>,
    pub priority: i8,
    pub ordering_key: Option<String>,
    /// Queued behind an earlier request of its `ordering_key`.
    pub behind_earlier: bool,
    pub traceparent: Option<String>,
}

impl RecordColumns {
    pub fn into_record(self) -> Result<RequestRecord, UnknownValue> {
        let mode = Mode::parse(&self.mode).ok_or_else(|| UnknownValue {
            what: "mode",
            value: self.mode.clone(),
        })?;
        let status = parse_status(&self.status)?;
        // A final async row without `delivered_at` was finished by a version that wrote the
        // end of delivery as `completed_at` (and nothing for the end of the work).
        let delivered_at = match self.delivered_at {
            None if mode == Mode::Async && status.is_finished() => self.completed_at,
            recorded => recorded,
        };
        // While a claim holds it, its next move is the attempt under way; while parked, the
        // end of the request before it in its key (no time anyone can know).
        let parked = self.next_attempt_at.is_some_and(is_parked);
        let next_attempt_at = self
            .next_attempt_at
            .filter(|at| !self.claimed && !is_parked(*at));
        Ok(RequestRecord {
            mode,
            status,
            result: self.result.into_result(&self.id),
            payload_hash: self.payload_hash,
            created_at: self.created_at,
            completed_at: self.completed_at,
            delivered_at,
            callback_url: self.callback_url,
            callback_attempts: self.callback_attempts,
            callback_last_error: self.callback_last_error,
            callback_last_status: self.callback_last_status,
            next_attempt_at,
            // What it waits for depends on the time of reading and on the destination's
            // state: `RequestRecord::waiting_for` works it out for whoever shows the record.
            waiting_for: None,
            run_at: self.run_at,
            priority: self.priority,
            ordering_key: self.ordering_key,
            behind_earlier: self.behind_earlier && (next_attempt_at.is_some() || parked),
            trace_id: self
                .traceparent
                .as_deref()
                .and_then(crate::trace_context::RequestTrace::trace_id)
                .map(str::to_string),
            callback_max_retries: self.max_retries,
            callback_timeout_seconds: self.callback_timeout_ms.map(|ms| f64::from(ms) / 1000.0),
            error: self.error,
            attempts: None,
            id: self.id,
        })
    }
}

/// The due time of a parked request, in Unix milliseconds (see `parked_ms!`).
pub(crate) const PARKED_MS: i64 = 253_370_764_800_000;

/// Whether a due time is a parked request's.
pub(crate) fn is_parked(due: DateTime<Utc>) -> bool {
    due.timestamp_millis() >= PARKED_MS
}

/// A stored status name as the model's.
pub(crate) fn parse_status(value: &str) -> Result<Status, UnknownValue> {
    Status::parse(value).ok_or_else(|| UnknownValue {
        what: "status",
        value: value.to_string(),
    })
}

/// The columns of a claimed row that make a [`Job`].
#[derive(Debug)]
pub(crate) struct JobColumns {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub data: Option<String>,
    pub callback_url: Option<String>,
    pub callback_attempts: u32,
    /// `callback_attempts` when the current round of attempts began.
    pub round_start_attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub lease_token: Option<String>,
    pub unrecorded_claims: u32,
    pub result: ResultColumns,
    pub completed_at: Option<DateTime<Utc>>,
    pub max_retries: Option<u32>,
    pub callback_timeout_ms: Option<u32>,
    pub ordering_key: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl JobColumns {
    pub fn into_job(self) -> Job {
        let callback_url = self.callback_url.unwrap_or_default();
        let iterations = self.result.iterations;
        // A result stored by a version that did not record when the work finished: its
        // acceptance is the one time known for it, and keeps its callback the same on every
        // attempt.
        let completed_at = self.completed_at.unwrap_or(self.created_at);
        Job {
            work: self
                .result
                .into_result(&self.id)
                .map(|result| FinishedWork {
                    result,
                    completed_at,
                }),
            iterations,
            created_at: self.created_at,
            data: self.data,
            destination: destination_of_str(&callback_url),
            due_at: self.next_attempt_at.unwrap_or_default(),
            callback_url,
            callback_attempts: self.callback_attempts,
            round_attempts: self
                .callback_attempts
                .saturating_sub(self.round_start_attempts),
            token: self.lease_token.unwrap_or_default(),
            unrecorded_claims: self.unrecorded_claims,
            max_retries: self.max_retries,
            callback_timeout: self
                .callback_timeout_ms
                .map(|ms| std::time::Duration::from_millis(u64::from(ms))),
            ordering_key: self.ordering_key,
            trace: self
                .traceparent
                .map(|traceparent| crate::trace_context::RequestTrace {
                    traceparent,
                    tracestate: self.tracestate,
                }),
            id: self.id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_spell_the_parked_time_as_parked_ms() {
        assert_eq!(parked_ms!().parse::<i64>().unwrap(), PARKED_MS);
        let pg = parked_at!().trim_matches('\'');
        let pg = DateTime::parse_from_str(pg, "%Y-%m-%d %H:%M:%S%#z").unwrap();
        assert_eq!(pg.timestamp_millis(), PARKED_MS);
        assert!(is_parked(pg.to_utc()));
        assert!(!is_parked(Utc::now() + chrono::Duration::days(365 * 100)));
    }

    fn result(complete: bool) -> ResultColumns {
        ResultColumns {
            input_hash: Some("in".into()),
            output_hash: complete.then(|| "out".into()),
            processing_time_ms: Some(1.5),
            iterations: 7,
        }
    }

    fn record(mode: &str, status: &str) -> RecordColumns {
        RecordColumns {
            id: "r".into(),
            mode: mode.into(),
            status: status.into(),
            payload_hash: "h".into(),
            created_at: DateTime::default(),
            completed_at: None,
            delivered_at: None,
            callback_url: None,
            callback_attempts: 0,
            callback_last_error: None,
            callback_last_status: None,
            error: None,
            result: result(true),
            next_attempt_at: None,
            claimed: false,
            run_at: None,
            max_retries: None,
            callback_timeout_ms: None,
            priority: 0,
            ordering_key: None,
            behind_earlier: false,
            traceparent: None,
        }
    }

    #[test]
    fn a_queued_request_shows_when_it_next_moves() {
        let ahead = Utc::now() + chrono::Duration::seconds(60);
        let scheduled = RecordColumns {
            next_attempt_at: Some(ahead),
            run_at: Some(ahead),
            ..record("async", "pending")
        };
        let read = scheduled.into_record().unwrap();
        assert_eq!(
            (read.next_attempt_at, read.run_at),
            (Some(ahead), Some(ahead))
        );
        let backing_off = RecordColumns {
            next_attempt_at: Some(ahead),
            ..record("async", "callback_pending")
        };
        assert_eq!(
            backing_off.into_record().unwrap().next_attempt_at,
            Some(ahead)
        );
        let in_flight = RecordColumns {
            next_attempt_at: Some(at(5)),
            claimed: true,
            ..record("async", "callback_pending")
        };
        assert_eq!(in_flight.into_record().unwrap().next_attempt_at, None);
    }

    #[test]
    fn a_result_is_there_only_when_all_its_columns_are() {
        let whole = result(true).into_result("r").unwrap();
        assert_eq!(
            (whole.request_id.as_str(), whole.iterations),
            ("r", 7),
            "{whole:?}"
        );
        assert!(result(false).into_result("r").is_none());
        assert!(ResultColumns::default().into_result("r").is_none());
    }

    #[test]
    fn every_stored_status_and_mode_reads_back_and_an_unknown_one_is_an_error() {
        for status in Status::ALL {
            for mode in Mode::ALL {
                let read = record(mode.as_str(), status.as_str())
                    .into_record()
                    .unwrap();
                assert_eq!((read.mode, read.status), (mode, status));
            }
        }
        let err = record("async", "done").into_record().unwrap_err();
        assert_eq!((err.what, err.value.as_str()), ("status", "done"));
        let err = record("batch", "pending").into_record().unwrap_err();
        assert_eq!(err.what, "mode");
    }

    #[test]
    fn a_job_counts_the_attempts_of_its_round_and_knows_its_destination() {
        let job = JobColumns {
            id: "j".into(),
            created_at: DateTime::default(),
            data: None,
            callback_url: Some("https://Example.com/hook?x=1".into()),
            callback_attempts: 7,
            round_start_attempts: 5,
            next_attempt_at: None,
            lease_token: Some("t".into()),
            unrecorded_claims: 1,
            result: result(true),
            completed_at: Some(at(5)),
            max_retries: Some(1),
            callback_timeout_ms: Some(2500),
            ordering_key: None,
            traceparent: None,
            tracestate: None,
        }
        .into_job();
        assert_eq!((job.callback_attempts, job.round_attempts), (7, 2));
        assert_eq!(job.destination, "https://example.com:443");
        assert_eq!(job.iterations, 7);
        assert_eq!(job.work.map(|w| w.completed_at), Some(at(5)));
        assert_eq!(job.max_retries, Some(1));
        assert_eq!(
            job.callback_timeout,
            Some(std::time::Duration::from_millis(2500))
        );
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn a_row_finished_before_delivered_at_was_recorded_reads_completed_at_as_its_delivery() {
        let legacy = |mode: &str, status: &str| RecordColumns {
            completed_at: Some(at(9)),
            ..record(mode, status)
        };
        let read = legacy("async", "callback_failed").into_record().unwrap();
        assert_eq!(
            (read.completed_at, read.delivered_at),
            (Some(at(9)), Some(at(9)))
        );
        let unfinished = legacy("async", "callback_pending").into_record().unwrap();
        assert_eq!(unfinished.delivered_at, None, "its delivery has not ended");
        let sync = legacy("sync", "completed").into_record().unwrap();
        assert_eq!(sync.delivered_at, None, "a sync request is not delivered");
        let recorded = RecordColumns {
            delivered_at: Some(at(12)),
            ..legacy("async", "callback_success")
        }
        .into_record()
        .unwrap();
        assert_eq!(
            (recorded.completed_at, recorded.delivered_at),
            (Some(at(9)), Some(at(12)))
        );
    }
}
