//! Wire types and status enums (SPEC §3), shared by the server and the tools that talk to it.
//!
//! Field names and status strings are the original service's: clients written for it must
//! keep working, so nothing here is renamed without a spec change.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a request was submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Sync,
    Async,
}

/// Every state a request can be in. Sync: `processing → completed | failed`.
/// Async: `pending → processing → callback_pending → callback_success | callback_failed`,
/// and (*beyond*) `cancelled` from any of the first three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Processing,
    Completed,
    Failed,
    CallbackPending,
    CallbackSuccess,
    CallbackFailed,
    Cancelled,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Sync, Mode::Async];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Pending,
        Status::Processing,
        Status::Completed,
        Status::Failed,
        Status::CallbackPending,
        Status::CallbackSuccess,
        Status::CallbackFailed,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processing => "processing",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::CallbackPending => "callback_pending",
            Status::CallbackSuccess => "callback_success",
            Status::CallbackFailed => "callback_failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// A finished request changes no more (but for an operator's redelivery of a failed
    /// callback); only finished requests may be deleted.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Status::Completed
                | Status::Failed
                | Status::CallbackSuccess
                | Status::CallbackFailed
                | Status::Cancelled
        )
    }
}

/// A time, in UTC, as the API writes one: ISO 8601 without a zone, with microseconds, as
/// the original wrote them (`2026-12-02T06:19:37.098857`), or with `Z` under
/// `APP_TIMESTAMP_FORMAT=rfc3339`. (Not the document's `date-time` format, which requires
/// the zone.) Only describes the field in the API document.
#[derive(ToSchema)]
#[schema(
    value_type = String,
    example = "2026-12-02T06:19:37.098857",
    pattern = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z?$"
)]
#[allow(dead_code)]
pub struct Timestamp(String);

/// The outcome of one unit of work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkResult {
    pub request_id: String,
    pub input_hash: String,
    pub output_hash: String,
    pub iterations: u32,
    pub processing_time_ms: f64,
}

/// `POST /sync` → 200.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SyncResponse {
    pub status: String,
    pub result: WorkResult,
}

/// `POST /async` → 200.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AcceptedResponse {
    pub status: String,
    pub request_id: String,
    pub message: String,
}

/// One delivery attempt, as recorded in the audit.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryAttempt {
    /// 1-based, counting every attempt the request has had.
    pub attempt: u32,
    /// UTC (see [`Timestamp`]).
    #[serde(serialize_with = "crate::timestamps::serialize")]
    #[schema(value_type = Timestamp)]
    pub started_at: DateTime<Utc>,
    pub duration_ms: f64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// The start of the receiver's answer, for debugging a refusal.
    pub response_body: Option<String>,
    /// The receiver's answer headers, one `name: value` per line, the first 1 KiB of them
    /// (*beyond*), when it answered with anything but a 2xx; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<String>,
    /// The service instance that made the attempt (its lease-owner id).
    pub instance: Option<String>,
    /// Why the attempt started well after it was due, when it did (for example, the
    /// destination's circuit breaker was open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A request as `GET /requests` and `GET /requests/{id}` show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RequestRecord {
    pub id: String,
    pub mode: Mode,
    pub status: Status,
    pub payload_hash: String,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    #[schema(value_type = Timestamp)]
    pub created_at: DateTime<Utc>,
    /// When the work finished: a sync request's end; an async request's result, before its
    /// delivery (as in the original). `null` until then.
    #[serde(serialize_with = "crate::timestamps::serialize_opt")]
    #[schema(value_type = Option<Timestamp>)]
    pub completed_at: Option<DateTime<Utc>>,
    /// When an async request's delivery ended (its last attempt, or given up): *beyond* the
    /// original, whose `completed_at` is when the work finished, as here. Absent until then,
    /// and on sync requests.
    #[serde(
        serialize_with = "crate::timestamps::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Timestamp>)]
    pub delivered_at: Option<DateTime<Utc>>,
    pub callback_url: Option<String>,
    pub callback_attempts: u32,
    pub callback_last_error: Option<String>,
    /// The HTTP status its receiver answered the last callback attempt with (*beyond*);
    /// absent before the first attempt and when that attempt got no answer (its error says
    /// why).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_last_status: Option<u16>,
    /// When its next work or delivery attempt is due (*beyond*): present while it waits in
    /// the queue, absent while an attempt is under way, while it waits behind an earlier
    /// request of its `ordering_key` (it is due when that one ends), and once it is final.
    #[serde(
        serialize_with = "crate::timestamps::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Timestamp>)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Why it waits past `next_attempt_at`, or before it for a reason other than its own
    /// backoff (*beyond*); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<WaitingFor>,
    /// The time its work was scheduled for, when it asked for one (`run_at` or
    /// `delay_seconds`; *beyond*).
    #[serde(
        serialize_with = "crate::timestamps::serialize_opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Timestamp>)]
    pub run_at: Option<DateTime<Utc>>,
    /// Its priority among due jobs, from -10 to 10, when it asked for one other than 0
    /// (*beyond*).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i8,
    /// Its `ordering_key`, when it has one (*beyond*): delivered after every request
    /// accepted before it with the same key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    /// Whether an earlier request of its `ordering_key` is still queued: it waits for that one
    /// to end (shown as `waiting_for`).
    #[serde(skip)]
    pub behind_earlier: bool,
    /// The id of its caller's W3C trace, when it came with a `traceparent` (*beyond*): each
    /// callback attempt is a span of it. Absent otherwise: its trace id is then its own id's
    /// 16 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Its own retry budget, when it asked for one (*beyond*).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_max_retries: Option<u32>,
    /// Its own timeout per attempt, in seconds, when it asked for one (*beyond*).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_timeout_seconds: Option<f64>,
    pub result: Option<WorkResult>,
    /// Why a request ended `failed` (or `callback_failed` without a delivery attempt), when
    /// the reason is not a callback's: for example a sync request whose client hung up.
    /// Absent otherwise, so that records look exactly like the original service's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Present only on `GET /requests/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<DeliveryAttempt>>,
}

impl RequestRecord {
    /// What the request waits for at `now`, if anything but its own backoff: its
    /// destination's pause; an earlier request of its ordering key; its schedule, while that
    /// is ahead; once due, what `held` (its destination's state, from its callback URL) says
    /// holds it back.
    pub fn waiting_for(
        &self,
        now: DateTime<Utc>,
        held: impl FnOnce(&str) -> Option<WaitingFor>,
    ) -> Option<WaitingFor> {
        if self.next_attempt_at.is_none() && !self.behind_earlier {
            return None;
        }
        let holder = self.callback_url.as_deref().and_then(held);
        if holder == Some(WaitingFor::Paused) {
            // Whatever its due time, nothing moves until the destination is resumed.
            return holder;
        }
        if self.behind_earlier {
            return Some(WaitingFor::OrderingKey);
        }
        let due = self.next_attempt_at?;
        if due > now {
            (self.status == Status::Pending && self.run_at.is_some())
                .then_some(WaitingFor::Schedule)
        } else {
            holder
        }
    }
}

/// Why a queued request is not being worked on although it is due, or why it is not due yet
/// when that is not its own retry backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaitingFor {
    /// Its `run_at` has not come.
    Schedule,
    /// Its destination's circuit breaker is open (as this instance sees it): no attempt
    /// until a probe succeeds.
    BreakerOpen,
    /// Its destination has its most deliveries in flight.
    DestinationFull,
    /// An operator paused its destination: no attempt until it is resumed.
    Paused,
    /// Its destination's rate limit lets no delivery start yet (as this instance sees it).
    RateLimit,
    /// Its destination's receiver answered a delivery with a 429 or 503 and `Retry-After`:
    /// no delivery to it starts, on any instance, until then.
    RetryAfter,
    /// A request accepted before it with the same `ordering_key` is not final yet: it is
    /// delivered after that one.
    OrderingKey,
}

/// `GET /requests` → 200.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestList {
    /// The requests that match. Exact when the list is filtered by mode and status at most;
    /// a filter beyond those stops counting at `APP_LIST_COUNT_LIMIT` (then `total_capped`).
    pub total: u64,
    /// Present, `true`, when `total` stopped at `APP_LIST_COUNT_LIMIT`: at least that many
    /// match.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(value_type = Option<bool>)]
    pub total_capped: bool,
    pub requests: Vec<RequestRecord>,
}

/// Overall health as `GET /healthz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Degraded,
    Unhealthy,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthReport {
    pub status: Health,
    pub version: &'static str,
    pub queue_size: u64,
    pub queue_capacity: u64,
    pub active_workers: u64,
    pub database_ok: bool,
    /// Why the database is not OK (unreachable, disk full, read-only), when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_error: Option<String>,
    /// Why the status is not `healthy`, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The body POSTed to a callback URL.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CallbackPayload {
    pub request_id: String,
    pub status: String,
    pub result: WorkResult,
    pub error: Option<String>,
    pub timestamp: String,
}

fn is_zero(n: &i8) -> bool {
    *n == 0
}

/// The first 16 hex characters of SHA-256 of the input: enough to spot repeats without
/// keeping the payload.
pub fn payload_hash(data: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(data.as_bytes());
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(status: Status, due: DateTime<Utc>, run_at: Option<DateTime<Utc>>) -> RequestRecord {
        RequestRecord {
            id: "r".into(),
            mode: Mode::Async,
            status,
            payload_hash: "h".into(),
            created_at: DateTime::default(),
            completed_at: None,
            delivered_at: None,
            callback_url: Some("https://hooks.example.com/a".into()),
            callback_attempts: 0,
            callback_last_error: None,
            callback_last_status: None,
            next_attempt_at: Some(due),
            waiting_for: None,
            run_at,
            priority: 0,
            ordering_key: None,
            behind_earlier: false,
            trace_id: None,
            callback_max_retries: None,
            callback_timeout_seconds: None,
            result: None,
            error: None,
            attempts: None,
        }
    }

    #[test]
    fn a_queued_request_waits_for_its_schedule_then_for_what_holds_its_destination() {
        let now = Utc::now();
        let ahead = now + chrono::Duration::seconds(60);
        let past = now - chrono::Duration::seconds(5);
        let free = |_: &str| None;
        let open = |url: &str| {
            assert_eq!(url, "https://hooks.example.com/a");
            Some(WaitingFor::BreakerOpen)
        };
        let scheduled = queued(Status::Pending, ahead, Some(ahead));
        assert_eq!(scheduled.waiting_for(now, free), Some(WaitingFor::Schedule));
        let due = queued(Status::Pending, past, Some(past));
        assert_eq!(due.waiting_for(now, free), None, "its time has come");
        assert_eq!(due.waiting_for(now, open), Some(WaitingFor::BreakerOpen));
        let backing_off = queued(Status::CallbackPending, ahead, None);
        assert_eq!(
            backing_off.waiting_for(now, open),
            None,
            "its own backoff is no hold"
        );
        let paused = |_: &str| Some(WaitingFor::Paused);
        assert_eq!(
            backing_off.waiting_for(now, paused),
            Some(WaitingFor::Paused),
            "a paused destination holds even a job not yet due"
        );
        assert_eq!(scheduled.waiting_for(now, paused), Some(WaitingFor::Paused));
        let mut in_flight = queued(Status::CallbackPending, past, None);
        in_flight.next_attempt_at = None;
        assert_eq!(in_flight.waiting_for(now, open), None);
        assert_eq!(
            in_flight.waiting_for(now, paused),
            None,
            "under way: not held"
        );
    }
}
