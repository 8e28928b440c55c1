//! The storage API the rest of the service sees: requests, the async job queue, and the
//! delivery audit. All SQL lives below this module.
//!
//! Two backends sit behind [`Store`]: SQLite (`sqlite/`, the embedded default, one process
//! per database file) and PostgreSQL (`postgres/`, several instances sharing one database
//! and one queue). Callers never know which one they talk to. Where to read:
//!
//! - [`Store`] (here): the API, and the waiters woken by every change, for both backends.
//! - `backend.rs`: the contract each backend implements, with where they differ in kind.
//! - `lifecycle.rs`: the rules: which status each change applies to and leaves, and what
//!   else it writes. Backends carry them out; `tests/api/lifecycle.rs` holds them to it.
//! - `rows.rs`: what a stored row means, read once for both backends.
//! - `sqlite/`: a writer thread that group-commits, and reader connections.
//! - `postgres/`: instances coordinating through rows, with group commit
//!   (`group_commit.rs`) for the writes of every async request.
//! - `list.rs`, `due.rs`, `changes.rs`: list filters, due times with destination room, and
//!   waiters on a request's changes.

/// Statuses that never change again, in SQL list form for `IN`: shared by both backends'
/// SQL (a macro, so that statements stay `&'static str` literals built with `concat!`).
macro_rules! finished_statuses {
    () => {
        "('completed', 'failed', 'callback_success', 'callback_failed', 'cancelled')"
    };
}

/// Statuses of a request still in the queue, in SQL list form for `IN`.
macro_rules! unfinished_statuses {
    () => {
        "('pending', 'processing', 'callback_pending')"
    };
}

/// Whether a queued row waits for another of its `ordering_key`: one queued and accepted
/// before it (a smaller `ordering_seq`), or one with a delivery under way (a claim holds it:
/// on PostgreSQL a request numbered before another may commit after it, and a cancelled
/// request's attempt may still be in flight). A claim takes a keyed row only when this is
/// false; the probes are seeks in `requests_ordering` and `requests_ordering_claimed`.
macro_rules! behind_earlier {
    () => {
        "(ordering_seq IS NOT NULL AND (
             EXISTS (SELECT 1 FROM requests AS earlier
                     WHERE earlier.ordering_key = requests.ordering_key
                       AND earlier.next_attempt_at IS NOT NULL
                       AND earlier.ordering_seq < requests.ordering_seq)
             OR EXISTS (SELECT 1 FROM requests AS claimed
                        WHERE claimed.ordering_key = requests.ordering_key
                          AND claimed.lease_token IS NOT NULL
                          AND claimed.id <> requests.id)))"
    };
}

/// The first queued request of the key `$key` (an SQL expression), as its `$id` (`rowid` on
/// SQLite, `id` on PostgreSQL): the one an unpark makes due, if it is parked. A seek in
/// `requests_ordering`.
macro_rules! key_head {
    ($id:literal, $key:literal) => {
        concat!(
            "(SELECT head.",
            $id,
            " FROM requests AS head WHERE head.ordering_key = ",
            $key,
            " AND head.next_attempt_at IS NOT NULL ORDER BY head.ordering_seq LIMIT 1)"
        )
    };
}

/// The due time of a parked request: a keyed request queued behind an earlier one of its key
/// waits with it (9999-01-01), past every claim's window, until the one before it ends and
/// makes it due (`Store::unpark`). Parking only keeps a key's backlog out of the claims' way:
/// order is kept by `behind_earlier!` whatever is parked. SQLite's (Unix milliseconds) and
/// PostgreSQL's spelling; `rows::PARKED_MS` is the same time.
macro_rules! parked_ms {
    () => {
        "253370764800000"
    };
}
macro_rules! parked_at {
    () => {
        "'9999-01-01 00:00:00+00'"
    };
}

/// The first queued request of every key whose first is parked, made due: the safety net for
/// a key whose request before ended where nothing unparked the next (a cancel, a deletion, or
/// on PostgreSQL a request accepted on one instance while the one before it ended on another).
/// The parked rows' keys are found by a skip scan of `requests_parked` (`$parked_rows`: the
/// table as each dialect names that index for it; a seek per key, however many requests each
/// has parked), then each key's head by a seek. `$parked` and `$id` as for `key_head!`.
macro_rules! unpark_stranded {
    ($parked:expr, $id:literal, $parked_rows:literal) => {
        concat!(
            "UPDATE requests SET next_attempt_at = ",
            unparked_due!(),
            " WHERE next_attempt_at = ",
            $parked,
            " AND ",
            $id,
            " IN (
                 WITH RECURSIVE parked(key) AS (
                     SELECT (SELECT ordering_key FROM ",
            $parked_rows,
            " WHERE next_attempt_at = ",
            $parked,
            " ORDER BY ordering_key LIMIT 1)
                     UNION ALL
                     SELECT (SELECT ordering_key FROM ",
            $parked_rows,
            " WHERE next_attempt_at = ",
            $parked,
            " AND ordering_key > parked.key ORDER BY ordering_key LIMIT 1)
                     FROM parked WHERE parked.key IS NOT NULL)
                 SELECT ",
            key_head!($id, "parked.key"),
            " FROM parked WHERE parked.key IS NOT NULL)"
        )
    };
}

/// The columns both backends read into a `Job` (a claim's `RETURNING` list).
macro_rules! job_columns {
    () => {
        "id, created_at, data, iterations, callback_url, callback_attempts, round_start_attempts,
         input_hash, output_hash, processing_time_ms, completed_at, lease_token,
         unrecorded_claims, next_attempt_at, max_retries, callback_timeout_ms, ordering_key,
         traceparent, tracestate"
    };
}

/// The columns both backends read into a `RequestRecord`.
macro_rules! record_columns {
    () => {
        concat!(
            "id, mode, status, payload_hash, created_at, completed_at, delivered_at, callback_url,
         callback_attempts, callback_last_error, callback_last_status, iterations, input_hash,
         output_hash, processing_time_ms, error, next_attempt_at,
         lease_token IS NOT NULL AS claimed, run_at, max_retries, callback_timeout_ms, priority,
         ordering_key, traceparent, ",
            behind_earlier!(),
            " AS behind_earlier"
        )
    };
}

/// The columns both backends read into a `DeliveryAttempt`.
macro_rules! attempt_columns {
    () => {
        "attempt, started_at, duration_ms, status_code, error, response_body, response_headers,
         claimed_by, note"
    };
}

mod backend;
mod changes;
mod destination_controls;
mod due;
mod error;
mod group_commit;
mod health;
mod lifecycle;
mod list;
mod plans;
mod postgres;
mod retry;
mod rows;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tokio_util::sync::CancellationToken;

use crate::delivery::destinations::Rooms;
use crate::input::Controls;
use crate::model::{DeliveryAttempt, RequestList, RequestRecord, Status, WorkResult};

use backend::Backend;

/// What an instance announces to the others sharing the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// Jobs became due.
    Jobs,
    /// A destination's controls changed.
    Controls,
}
pub use changes::{Changes, Subscription};
pub use destination_controls::{
    ControlChange, Controlled, ControlsRead, DestinationControl, MAX_CONTROLLED_DESTINATIONS,
};
pub use error::{StoreError, StoreResult};
use health::WriteHealth;
pub(crate) use lifecycle::sync_outcome;
pub use lifecycle::{
    ABANDONED_SYNC_ERROR, AttemptOutcome, Cancellation, Change, Due, Effect, MadeDue, Recorded,
    Tally, Transition,
};
pub use list::{DEFAULT_COUNT_LIMIT, LastStatus, ListFilter};
pub(crate) use list::{Dialect, ListParam, Total, UnfinishedIndexes, count_sql, page_sql};
pub use plans::StatementPlan;
use postgres::PgStore;
pub use retry::{Pauses, while_unavailable};
use sqlite::SqliteStore;

/// A request as first recorded.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: String,
    pub payload_hash: String,
    pub iterations: u32,
    pub created_at: DateTime<Utc>,
    /// The client's `Idempotency-Key`, if it sent one.
    pub idempotency: Option<IdempotencyKey>,
    /// Its own span in its caller's trace (or in the trace it started).
    pub trace: Option<crate::trace_context::RequestTrace>,
}

impl NewRequest {
    /// Its row's `idempotency_key` and `idempotency_fingerprint`.
    pub(crate) fn key_columns(&self) -> (Option<&str>, Option<&str>) {
        match &self.idempotency {
            Some(key) => (Some(&key.key), Some(&key.fingerprint)),
            None => (None, None),
        }
    }
}

/// An `Idempotency-Key` and what the request that carried it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    /// A digest of the request's mode and input, in the format it names
    /// (`service::fingerprint`): a replay must ask for the same thing.
    pub fingerprint: String,
}

/// What recording a new request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    Created,
    /// Its idempotency key was taken by another request; nothing was written.
    KeyTaken(KeyHolder),
}

/// The request that holds an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHolder {
    pub id: String,
    /// What it was created with ([`IdempotencyKey::fingerprint`]).
    pub fingerprint: String,
}

/// An async request to be queued.
#[derive(Debug, Clone)]
pub struct NewAsyncRequest {
    pub request: NewRequest,
    pub data: String,
    pub callback_url: String,
    /// `scheme://host:port` of the callback URL (`delivery::destinations::destination_of`).
    pub destination: String,
    /// Its schedule, retry budget and timeout, when it asked for its own.
    pub controls: Controls,
    /// Delivered after every request accepted before it with the same key.
    pub ordering_key: Option<String>,
}

impl NewAsyncRequest {
    /// How long from `now` until its work may start: zero unless it is scheduled later.
    pub(crate) fn starts_in(&self, now: DateTime<Utc>) -> Duration {
        self.controls
            .run_at
            .and_then(|at| (at - now).to_std().ok())
            .unwrap_or(Duration::ZERO)
    }

    /// Its `callback_timeout_ms` column.
    pub(crate) fn timeout_ms(&self) -> Option<i64> {
        self.controls
            .callback_timeout
            .map(|t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX).max(1))
    }
}

/// A claimed unit of the async queue. The claimant holds its lease until it records the
/// outcome or releases it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    /// When the request was accepted.
    pub created_at: DateTime<Utc>,
    pub data: Option<String>,
    pub iterations: u32,
    pub callback_url: String,
    /// `scheme://host:port` of `callback_url`: whose cap and breaker the delivery counts on.
    pub destination: String,
    /// When the job became due: how long it waited is `now - due_at`.
    pub due_at: DateTime<Utc>,
    /// Attempts made so far, over every round.
    pub callback_attempts: u32,
    /// Attempts made in the current round (the retry budget is per round).
    pub round_attempts: u32,
    /// Present when the work was already done (a retry never recomputes it).
    pub work: Option<FinishedWork>,
    /// This claim's own token. Every later write of the job names it and is refused once
    /// another claim has taken the job over, so a worker whose lease ran out can never
    /// overwrite a later claim's outcome.
    pub token: String,
    /// Claims of this job since an outcome was last recorded, this one included. Each claim
    /// may have delivered the callback; a job that keeps being claimed without its outcome
    /// ever being recorded is given up after [`MAX_UNRECORDED_CLAIMS`] instead of being
    /// delivered again without bound.
    pub unrecorded_claims: u32,
    /// Its own retry budget, when it asked for one.
    pub max_retries: Option<u32>,
    /// Its own timeout per attempt, when it asked for one.
    pub callback_timeout: Option<Duration>,
    /// Its `ordering_key`: the next request of the key may be claimed once this one is final.
    pub ordering_key: Option<String>,
    /// Its span: each attempt is sent as a child of it.
    pub trace: Option<crate::trace_context::RequestTrace>,
}

/// A job's work result and when the work finished (its `completed_at`, to the millisecond
/// both backends keep): the callback's `timestamp`, so the body is the same on every attempt,
/// before a restart and after.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedWork {
    pub result: WorkResult,
    pub completed_at: DateTime<Utc>,
}

impl FinishedWork {
    /// `result`, finished now.
    pub fn now(result: WorkResult) -> Self {
        Self {
            result,
            completed_at: Utc::now().trunc_subsecs(3),
        }
    }
}

/// Claims of a job without a recorded outcome after which it is given up (`callback_failed`).
/// A crash or a lost lease costs one; only a job that cannot be recorded, or that takes the
/// process down, reaches this many.
pub const MAX_UNRECORDED_CLAIMS: u32 = 5;

/// The number of migrations a database reports having applied, checked against the `known`
/// ones of this build: a database migrated by a newer build is refused rather than used.
pub(crate) fn applied_migrations(applied: i64, known: usize) -> StoreResult<usize> {
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > known {
        return Err(StoreError::Open(format!(
            "the database schema is version {applied}, newer than this build knows ({known}); upgrade syncasync"
        )));
    }
    Ok(applied)
}

/// What a heartbeat did to its owner's leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leases {
    /// Leases of jobs in flight, extended.
    pub renewed: u64,
    /// The owner's other leases that had run out (jobs whose worker gave up without an
    /// outcome), handed back to the queue.
    pub released: u64,
    /// Of the claims named, those no row holds any more: the request was cancelled (or the
    /// job taken over). Their work can stop; no write of theirs will be taken.
    pub lost: Vec<String>,
}

/// What `redeliver` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    Queued,
    NotFound,
    /// Only a `callback_failed` request can be redelivered.
    WrongStatus(Status),
}

/// How many requests are in each status.
pub type StatusCounts = Vec<(Status, u64)>;

/// How the database connections are used right now.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub in_use: u64,
    pub idle: u64,
    /// Writes waiting for the SQLite writer; 0 on PostgreSQL, which has no writer queue.
    pub writer_queue: u64,
    /// Bytes the database engine holds in this process: SQLite's page caches (bounded per
    /// connection) and prepared statements; 0 on PostgreSQL, whose memory is the server's.
    pub engine_memory: u64,
}

/// Due rows a claim of `limit` jobs looks at: enough that destinations with little room do
/// not starve the claim, few enough that a claim stays cheap with a long queue.
pub(crate) fn claim_scan(limit: u32) -> u32 {
    limit.saturating_mul(4).max(32)
}

/// Rows deleted per retention transaction: small enough that a chunk holds the SQLite writer
/// for only a few milliseconds (measured: about 13 ms for 500 rows), so requests keep flowing
/// between chunks during a large cleanup.
pub const CLEANUP_CHUNK: u64 = 500;

/// A position in the newest-first order of requests: `(created_at, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub created_at: DateTime<Utc>,
    pub id: String,
}

/// One chunk of a retention pass: how many requests it deleted, and the creation time of the
/// newest of them. The next chunk starts there: the rows created before it that are left are
/// unfinished (or another instance's chunk has them), and walking them again with every
/// chunk would cost each one more the more of them there are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub deleted: u64,
    pub reached: Option<DateTime<Utc>>,
}

impl Swept {
    /// A chunk that deleted the requests created at `created`.
    pub(crate) fn of(created: impl IntoIterator<Item = DateTime<Utc>>) -> Self {
        created.into_iter().fold(Self::default(), |swept, at| Self {
            deleted: swept.deleted + 1,
            reached: Some(swept.reached.map_or(at, |reached| reached.max(at))),
        })
    }
}

/// What one run of the retention job removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CleanupReport {
    pub expired: u64,
    pub over_limit: u64,
}

/// The storage API: one backend, chosen by the database URL, and the waiters on changes
/// of its requests (every write that changes a request wakes them, here, once for both
/// backends).
#[derive(Clone)]
pub struct Store {
    backend: Chosen,
    changes: Arc<Changes>,
    health: Arc<WriteHealth>,
    /// The waiting one level of priority is worth in a claim's order.
    priority_step: Duration,
    /// Text searches of the list (`error_contains`) run one at a time: each may read every
    /// request with an error, and any client may ask for one, so a flood of them waits here
    /// instead of taking every connection the other lists and the dashboard read with.
    searches: Arc<tokio::sync::Semaphore>,
}

/// Longest a statement on the database may run (a read on SQLite, any statement on
/// PostgreSQL, but migrations and vacuum): a client's page a million rows deep, or a plan gone
/// wrong, fails as unavailable (503) instead of holding a connection for minutes.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// `APP_PRIORITY_STEP_SECONDS`'s default: a job of priority 10 goes ahead of jobs of
/// priority 0 that have waited less than ten minutes longer.
pub const DEFAULT_PRIORITY_STEP: Duration = Duration::from_secs(60);

/// The backend in use. An enum, not a `dyn Backend`: the contract's methods are generic and
/// return `impl Future`, which a trait object cannot, and two variants cost one match.
#[derive(Clone)]
enum Chosen {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Calls the same [`Backend`] method on whichever backend is in use.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match &$self.backend {
            Chosen::Sqlite($s) => $call,
            Chosen::Postgres($s) => $call,
        }
    };
}

/// Longest a health check waits for the database.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// `check`'s outcome if the database answered within [`PING_TIMEOUT`], else why not.
pub(crate) async fn within_ping_timeout<T>(check: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(PING_TIMEOUT, check)
        .await
        .map_err(|_| {
            format!(
                "the database did not answer within {} s",
                PING_TIMEOUT.as_secs()
            )
        })
}

/// How often another instance's changes to watched requests are looked for (PostgreSQL).
const REMOTE_CHANGES_INTERVAL: Duration = Duration::from_millis(250);

/// How often an instance sharing the database marks itself alive. Far below the 30 s out of
/// sight after which its sync requests count as abandoned (PostgreSQL's
/// `SYNC_OWNER_GONE_AFTER`).
const MARK_ALIVE_EVERY: Duration = Duration::from_secs(1);

impl Store {
    /// Opens the database named by `url`, runs migrations, and recovers after a crash.
    pub async fn open(url: &str, queue_capacity: u64, pool_size: u32) -> StoreResult<Self> {
        let backend = if url.starts_with("sqlite:") {
            Chosen::Sqlite(SqliteStore::open(url, queue_capacity).await?)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Chosen::Postgres(PgStore::open(url, queue_capacity, pool_size).await?)
        } else {
            return Err(StoreError::Open(format!(
                "unsupported database URL `{}` (expected sqlite://PATH or postgres://…)",
                redact_url(url)
            )));
        };
        Ok(Store {
            backend,
            changes: Arc::new(Changes::default()),
            health: Arc::default(),
            priority_step: DEFAULT_PRIORITY_STEP,
            searches: Arc::new(tokio::sync::Semaphore::new(1)),
        })
    }

    /// Claims order due jobs as if each level of priority had waited `step` longer
    /// (`APP_PRIORITY_STEP_SECONDS`).
    pub fn with_priority_step(mut self, step: Duration) -> Self {
        self.priority_step = step;
        self
    }

    /// Starts watching request `id` for changes (status, attempts) until the subscription
    /// is dropped.
    pub fn subscribe(&self, id: &str) -> Subscription {
        self.changes.subscribe(id)
    }

    /// Wakes the waiters of request `id` when dropped, at the end of a write that changes it:
    /// whether the write completed, failed, or its caller went away mid-way (it may still be
    /// committed then). A waiter woken for nothing reads the request once more. (A caller
    /// gone while its write is still in flight wakes the waiters before the commit; they then
    /// see it at their next wake, or on PostgreSQL at the next look for remote changes. So a
    /// client's control of a request is run to its end apart from the client: see
    /// `Service::to_the_end`.)
    fn wake_when_done<'a>(&'a self, id: &'a str) -> WakeWhenDone<'a> {
        WakeWhenDone {
            changes: &self.changes,
            id,
        }
    }

    /// Requests someone is waiting on.
    pub fn waited_on(&self) -> usize {
        self.changes.len()
    }

    /// Ends every wait on a request now and later (shutdown).
    pub fn end_waits(&self) {
        self.changes.close();
    }

    /// Keeps the database in shape for the queue until `stop`: on PostgreSQL with autovacuum
    /// off, vacuums the queue's tables as their dead rows build up.
    pub async fn maintain(&self, stop: CancellationToken) {
        dispatch!(self, s => s.maintain(stop).await)
    }

    /// Calls `wake` whenever another instance queues a job or changes a destination's
    /// controls, until `stop`. Only a shared database has other instances; with SQLite this
    /// returns at once.
    pub async fn listen(&self, wake: impl Fn(Announced) + Send + 'static, stop: CancellationToken) {
        dispatch!(self, s => s.listen(wake, stop).await)
    }

    /// Wakes the waiters of watched requests that another instance changed, until `stop`:
    /// one query per tick for all of them, and none while nobody waits. With SQLite (one
    /// process per database) every change is this process's own and this returns at once.
    pub async fn watch_remote_changes(&self, stop: CancellationToken) {
        if !dispatch!(self, s => s.has_other_instances()) {
            return;
        }
        let mut seen: std::collections::HashMap<String, (Status, u32)> = Default::default();
        let mut tick = tokio::time::interval(REMOTE_CHANGES_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let watched = self.changes.watched();
            let still_watched: std::collections::HashSet<&String> = watched.iter().collect();
            seen.retain(|id, _| still_watched.contains(id));
            if watched.is_empty() {
                continue;
            }
            let versions = match dispatch!(self, s => s.versions(&watched).await) {
                Ok(versions) => versions,
                Err(err) => {
                    tracing::debug!(error = %err, "looking for other instances' changes failed");
                    continue;
                }
            };
            for (id, version) in versions {
                // A first sighting wakes too: the change may have landed between the
                // waiter's read and this one. A spurious wake costs the waiter one read.
                if seen.insert(id.clone(), version) != Some(version) {
                    self.changes.changed(&id);
                }
            }
        }
    }

    /// Extends the leases of the claims named by `tokens` (held by `owner`) by `lease` from
    /// now: a slow but live worker keeps the jobs it is working on. Hands back `owner`'s
    /// other claims whose lease ran out: no claim of `owner` takes its own jobs back, so those
    /// (their worker gave up without recording an outcome) would otherwise wait for another
    /// instance, or for ever.
    pub async fn heartbeat(
        &self,
        owner: &str,
        tokens: &[String],
        lease: Duration,
    ) -> StoreResult<Leases> {
        dispatch!(self, s => self.health.watch(s.heartbeat(owner, tokens, lease)).await)
    }

    /// Fails sync requests still `processing` whose instance died mid-request: on
    /// PostgreSQL, those whose instance has not marked itself alive for 30 s (and that are
    /// at least that old, on the database's clock), once this instance's own marks have
    /// succeeded for longer than that (after an outage, every instance's marks are old
    /// until each marks again); and any created more than `older_than` ago (rows written
    /// before their instance was recorded). SQLite does this at start-up, its only chance,
    /// and here does nothing.
    pub async fn fail_stale_sync(&self, older_than: Duration) -> StoreResult<u64> {
        dispatch!(self, s => self.health.watch(s.fail_stale_sync(older_than)).await)
    }

    /// Records a sync request as `processing`. Not awaited by design: the commit rides along
    /// with the request's completion, which is. (With an idempotency key, see
    /// [`Store::sync_started_with_key`].) `owner` is the instance working on it (see
    /// [`Store::fail_stale_sync`]).
    pub fn sync_started(&self, new: NewRequest, owner: &str) -> StoreResult<()> {
        dispatch!(self, s => s.sync_started(new, owner))
    }

    /// Records the end of a sync request (with the whole record, in case the `processing`
    /// row was never written); returns once it is committed.
    pub async fn sync_finished(
        &self,
        new: &NewRequest,
        outcome: Result<&WorkResult, &str>,
    ) -> StoreResult<()> {
        let _wake = self.wake_when_done(&new.id);
        dispatch!(self, s => self.health.watch(s.sync_finished(new, outcome)).await)
    }

    /// The request holding idempotency key `key`, if one is stored. A sync request that
    /// failed no longer holds its key (nothing it did can be replayed).
    pub async fn key_holder(&self, key: &str) -> StoreResult<Option<KeyHolder>> {
        dispatch!(self, s => s.key_holder(key).await)
    }

    /// Records a sync request that carries an idempotency key as `processing`, and returns
    /// once it is committed: the committed key is what makes a concurrent duplicate find it
    /// taken ([`Submitted::KeyTaken`], nothing written) rather than do the work twice.
    pub async fn sync_started_with_key(
        &self,
        new: NewRequest,
        owner: &str,
    ) -> StoreResult<Submitted> {
        dispatch!(self, s => self.health.watch(s.sync_started_with_key(new, owner)).await)
    }

    /// Queues an async request; returns once it is committed, or [`StoreError::QueueFull`]
    /// with nothing written, or [`Submitted::KeyTaken`] (nothing written, whatever the queue)
    /// if its idempotency key names a stored request.
    pub async fn submit_async(&self, new: NewAsyncRequest) -> StoreResult<Submitted> {
        dispatch!(self, s => self.health.watch(s.submit_async(new)).await)
    }

    /// Queues every request of `batch` in one transaction, or none of them
    /// ([`StoreError::QueueFull`]) when they do not all fit in the queue. Batches carry no
    /// idempotency keys.
    pub async fn submit_batch(&self, batch: &[NewAsyncRequest]) -> StoreResult<()> {
        dispatch!(self, s => self.health.watch(s.submit_batch(batch)).await)
    }

    /// Claims up to `limit` due jobs for `owner`, leased for `lease`, oldest due first (a job's
    /// due time counted earlier by its priority times the priority step), and
    /// of each destination at most its room in `rooms` (none of a destination without room:
    /// those jobs are passed over, keeping their place, for jobs of other destinations).
    /// A job leased by `owner` is never claimed by it again, even once its lease has run out
    /// (a clock stepped forward, a stalled heartbeat): its heartbeat hands those back.
    pub async fn claim_due(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
        rooms: &Rooms,
    ) -> StoreResult<Vec<Job>> {
        let step = self.priority_step;
        let jobs = dispatch!(self, s => self.health.watch(s.claim_due(owner, limit, lease, step, rooms)).await)?;
        for job in &jobs {
            self.changes.changed(&job.id);
        }
        Ok(jobs)
    }

    /// How long until the next job `owner` may claim, whose destination has room, becomes
    /// due (zero if one is due already); `None` if none is queued.
    pub async fn next_due_in(&self, owner: &str, rooms: &Rooms) -> StoreResult<Option<Duration>> {
        dispatch!(self, s => s.next_due_in(owner, rooms).await)
    }

    /// Stores the work result of a claimed job (`processing → callback_pending`).
    /// Returns false if the claim named by `token` no longer holds the job.
    pub async fn store_result(
        &self,
        id: &str,
        token: &str,
        work: &FinishedWork,
    ) -> StoreResult<bool> {
        let _wake = self.wake_when_done(id);
        dispatch!(self, s => self.health.watch(s.store_result(id, token, work)).await)
    }

    /// Records a delivery attempt made by `owner` under the claim `token`, and what follows
    /// it, releasing the lease; records nothing if the claim was lost. A request cancelled
    /// while the attempt was in flight only has the attempt added to its audit.
    pub async fn record_attempt(
        &self,
        id: &str,
        owner: &str,
        token: &str,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> StoreResult<Recorded> {
        let _wake = self.wake_when_done(id);
        dispatch!(self, s => self.health.watch(s.record_attempt(id, owner, token, attempt, outcome)).await)
    }

    /// Ends a claimed job as `callback_failed` without an attempt, with `reason` as its
    /// last error: for a job that cannot be worked (see [`MAX_UNRECORDED_CLAIMS`]).
    pub async fn give_up(&self, id: &str, token: &str, reason: &str) -> StoreResult<bool> {
        let _wake = self.wake_when_done(id);
        dispatch!(self, s => self.health.watch(s.give_up(id, token, reason)).await)
    }

    /// Puts a `callback_failed` request back in the queue for a fresh round of attempts,
    /// keeping its earlier attempts in the audit. [`StoreError::QueueFull`] if there is no room.
    pub async fn redeliver(&self, id: &str) -> StoreResult<Redelivery> {
        let _wake = self.wake_when_done(id);
        dispatch!(self, s => self.health.watch(s.redeliver(id)).await)
    }

    /// Lets the next request of ordering key `key` be claimed, now that the one before it
    /// ended; with `None`, that of every key whose next is still parked (a sweep, for keys
    /// whose request before ended where nothing unparked the next). Answers how many.
    pub async fn unpark(&self, key: Option<&str>) -> StoreResult<u64> {
        dispatch!(self, s => self.health.watch(s.unpark(key)).await)
    }

    /// Makes a queued request that is not claimed due now (an operator's retry now): a
    /// backoff or a schedule cut short, its attempt count kept.
    pub async fn make_due(&self, id: &str) -> StoreResult<MadeDue> {
        let _wake = self.wake_when_done(id);
        dispatch!(self, s => self.health.watch(s.make_due(id)).await)
    }

    /// Pauses, resumes or resets the breaker of `destination` (SPEC §11), for every instance.
    pub async fn control_destination(
        &self,
        destination: &str,
        change: ControlChange,
    ) -> StoreResult<Controlled> {
        dispatch!(self, s => self.health.watch(s.control_destination(destination, change)).await)
    }

    /// Every destination's stored controls (at most [`MAX_CONTROLLED_DESTINATIONS`]), and
    /// how many instances share the database, `owner` seen among them from now on.
    pub async fn destination_controls(&self, owner: &str) -> StoreResult<ControlsRead> {
        dispatch!(self, s => s.destination_controls(owner).await)
    }

    /// Ends an async request that is not final as `cancelled`: no work starts and no
    /// attempt begins after this; one already in flight may land, and is recorded.
    pub async fn cancel(&self, id: &str) -> StoreResult<Cancellation> {
        let _wake = self.wake_when_done(id);
        dispatch!(self, s => self.health.watch(s.cancel(id)).await)
    }

    /// Marks `owner` alive every [`MARK_ALIVE_EVERY`] until `stop`, where other instances
    /// share the database (on SQLite it returns at once). Runs for the whole life of the
    /// instance's sync requests, apart from the dispatcher, whose claims must not delay it.
    pub async fn keep_marked_alive(&self, owner: &str, stop: CancellationToken) {
        if !dispatch!(self, s => s.has_other_instances()) {
            return;
        }
        let mut ticker = tokio::time::interval(MARK_ALIVE_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            let marked = tokio::select! {
                marked = self.mark_alive(owner) => marked,
                () = stop.cancelled() => return,
            };
            // Said once when marks start failing and once when they succeed again, not every
            // second of an outage.
            match marked {
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(error = %err, "marking this instance alive failed");
                }
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("marking this instance alive again");
                }
                _ => {}
            }
        }
    }

    async fn mark_alive(&self, owner: &str) -> StoreResult<()> {
        dispatch!(self, s => s.mark_alive(owner).await)
    }

    /// Hands claimed jobs back to the queue untouched (at shutdown).
    pub async fn release(&self, owner: &str) -> StoreResult<u64> {
        dispatch!(self, s => self.health.watch(s.release(owner)).await)
    }

    pub async fn get(&self, id: &str) -> StoreResult<Option<RequestRecord>> {
        dispatch!(self, s => s.get(id).await)
    }

    pub async fn list(&self, filter: ListFilter) -> StoreResult<RequestList> {
        if filter.matches_nothing() {
            return Ok(RequestList {
                total: 0,
                total_capped: false,
                requests: Vec::new(),
            });
        }
        let filter = filter.without_implied_mode();
        let _search = match filter.error_contains {
            Some(_) => Some(
                self.searches
                    .acquire()
                    .await
                    .map_err(|_| StoreError::WriterGone)?,
            ),
            None => None,
        };
        dispatch!(self, s => s.list(filter).await)
    }

    /// Where request `id` stands in the newest-first order (a `before` cursor), if it exists.
    pub async fn position(&self, id: &str) -> StoreResult<Option<Position>> {
        dispatch!(self, s => s.position(id).await)
    }

    /// The number of requests in each status (statuses with none are left out).
    pub async fn status_counts(&self) -> StoreResult<StatusCounts> {
        dispatch!(self, s => s.status_counts().await)
    }

    /// Unfinished async requests.
    pub async fn queue_size(&self) -> StoreResult<u64> {
        dispatch!(self, s => s.queue_size().await)
    }

    /// For each of `destinations`, its jobs due now that no one has claimed (those its pause,
    /// rate limit, `Retry-After` hold, breaker or room keeps waiting), counted up to `cap`:
    /// a walk of the destination's part of the queue index, stopped there.
    pub async fn due_unclaimed(
        &self,
        destinations: Vec<String>,
        cap: u32,
    ) -> StoreResult<Vec<u64>> {
        dispatch!(self, s => s.due_unclaimed(destinations, cap).await)
    }

    /// Whether the database answers, and while writes have been failing, whether it takes a
    /// write again (a probe as large as a busy batch of writes: a full disk still takes a
    /// tiny one); if not, why not. The probe lets the service turn healthy by itself once
    /// the database recovers, even if no traffic arrives to try.
    pub async fn ping(&self) -> Result<(), String> {
        let Some(failing) = self.health.failure() else {
            return dispatch!(self, s => s.ping().await);
        };
        let probe = async { dispatch!(self, s => s.probe_write().await) };
        match tokio::time::timeout(PING_TIMEOUT, probe).await {
            Ok(Ok(())) => {
                self.health.clear();
                Ok(())
            }
            Ok(Err(err)) if err.is_unavailable() => Err(err.unavailable_reason()),
            Ok(Err(_)) => Err(failing),
            Err(_) => Err(format!(
                "{failing} (a probe write did not finish within {} s)",
                PING_TIMEOUT.as_secs()
            )),
        }
    }

    /// How long the oldest write in progress has waited, if any is: a database that answers
    /// reads but takes long over writes (a writer behind a slow statement, locks) is not
    /// healthy either.
    pub fn write_wait(&self) -> Option<Duration> {
        self.health.oldest_wait()
    }

    /// Deletes finished requests that finished more than `retention` ago, then the oldest finished
    /// beyond `max_stored`. Unfinished requests are never touched.
    ///
    /// Deletion goes in chunks of [`CLEANUP_CHUNK`] rows, each a short transaction found
    /// through the `created_at` index, oldest first, each chunk from where the last one
    /// reached, so that a backlog of millions neither holds the write lock for long nor
    /// rescans the table (nor the unfinished requests at its start) per chunk; other writes
    /// interleave between chunks. How many are over the limit is read from the kept counts.
    pub async fn cleanup(
        &self,
        retention: Duration,
        max_stored: u64,
    ) -> StoreResult<CleanupReport> {
        let mut report = CleanupReport::default();
        // From before any request; then from where the last chunk reached.
        let mut from = DateTime::UNIX_EPOCH;
        loop {
            let swept = dispatch!(self, s => self.health.watch(s.delete_expired(retention, CLEANUP_CHUNK, from)).await)?;
            report.expired += swept.deleted;
            if swept.deleted < CLEANUP_CHUNK {
                break;
            }
            from = swept.reached.unwrap_or(from);
        }
        let mut from = DateTime::UNIX_EPOCH;
        loop {
            let swept = dispatch!(self, s => self.health.watch(s.delete_over_limit(max_stored, CLEANUP_CHUNK, from)).await)?;
            report.over_limit += swept.deleted;
            if swept.deleted < CLEANUP_CHUNK {
                break;
            }
            from = swept.reached.unwrap_or(from);
        }
        Ok(report)
    }

    /// How the database runs each statement on a hot path (see `plans.rs`): for tests, and
    /// for an operator checking a database with a history.
    pub async fn explain_hot_statements(&self) -> StoreResult<Vec<StatementPlan>> {
        dispatch!(self, s => s.explain_hot().await)
    }

    /// Connections in use and idle, and writes waiting (for `/metrics`).
    pub fn pool_stats(&self) -> PoolStats {
        dispatch!(self, s => s.pool_stats())
    }

    /// Flushes pending writes and closes the database.
    pub async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }
}

/// See [`Store::wake_when_done`].
struct WakeWhenDone<'a> {
    changes: &'a Changes,
    id: &'a str,
}

impl Drop for WakeWhenDone<'_> {
    fn drop(&mut self) {
        self.changes.changed(self.id);
    }
}

/// A database URL fit for logs and error messages: any password, in the user-info part or as
/// a `password`/`sslpassword` query parameter (libpq accepts both), is replaced.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    let secret =
        |key: &str| key.eq_ignore_ascii_case("password") || key.eq_ignore_ascii_case("sslpassword");
    if parsed.query_pairs().any(|(key, _)| secret(&key)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if secret(&key) {
                    "***".into()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::redact_url;
    use crate::model::{Mode, Status};

    /// Every quoted word in the store's SQL (both backends, their migrations), outside test
    /// code: status and mode names are spelled in SQL, so each must be one of the model's.
    #[test]
    fn every_status_spelled_in_sql_is_one_of_the_models() {
        let sources = [
            include_str!("sqlite/mod.rs"),
            include_str!("sqlite/claims.rs"),
            include_str!("sqlite/list.rs"),
            include_str!("sqlite/open.rs"),
            include_str!("sqlite/writes.rs"),
            include_str!("postgres/mod.rs"),
            include_str!("postgres/group_writes.rs"),
            include_str!("mod.rs"),
            include_str!("due.rs"),
            include_str!("../../migrations/sqlite/0001_requests.sql"),
            include_str!("../../migrations/postgres/0001_requests.sql"),
        ];
        let known: Vec<&str> = Status::ALL
            .iter()
            .map(|s| s.as_str())
            .chain(Mode::ALL.iter().map(|m| m.as_str()))
            // The one other name quoted in SQL: `nextval`'s sequence.
            .chain(["requests_ordering_seq"])
            .collect();
        let mut seen = Vec::new();
        for source in sources {
            let code = source.split("#[cfg(test)]").next().unwrap_or(source);
            for word in quoted_words(code) {
                assert!(
                    known.contains(&word),
                    "'{word}' in the store's SQL is not a status or mode of the model"
                );
                seen.push(word);
            }
        }
        for status in Status::ALL {
            assert!(
                seen.contains(&status.as_str()),
                "{status:?} is never spelled in SQL: is this test still reading the statements?"
            );
        }
        // The finished statuses are exactly the model's final ones.
        let finished: Vec<&str> = finished_statuses!()
            .trim_matches(|c| c == '(' || c == ')')
            .split(", ")
            .map(|s| s.trim_matches('\''))
            .collect();
        let fin = [
            Status::Completed,
            Status::Failed,
            Status::CallbackSuccess,
            Status::CallbackFailed,
            Status::Cancelled,
        ]
        .map(Status::as_str);
        assert_eq!(finished, fin);
    }

    /// The words written between single quotes (`'pending'`), lowercase letters and `_`.
    fn quoted_words(code: &str) -> Vec<&str> {
        let bytes = code.as_bytes();
        let mut words = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'\'' && bytes.get(i + 1).is_some_and(u8::is_ascii_lowercase) {
                let start = i + 1;
                let mut end = start;
                while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
                    end += 1;
                }
                if bytes.get(end) == Some(&b'\'') && end - start > 1 {
                    words.push(&code[start..end]);
                    i = end + 1;
                    continue;
                }
            }
            i += 1;
        }
        words
    }

    #[test]
    fn a_schema_newer_than_this_build_is_refused() {
        assert_eq!(super::applied_migrations(3, 6).unwrap(), 3);
        assert_eq!(super::applied_migrations(6, 6).unwrap(), 6);
        let err = super::applied_migrations(7, 6).unwrap_err();
        assert!(
            err.to_string().contains("newer than this build knows (6)"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_sqlite_database_migrated_by_a_newer_build_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("newer.db");
        rusqlite::Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 999)
            .unwrap();
        let url = format!("sqlite://{}", path.display());
        let Err(err) = super::Store::open(&url, 10, 1).await else {
            panic!("a database of schema version 999 was opened");
        };
        assert!(err.to_string().contains("version 999"), "{err}");
    }

    /// A write whose caller stops polling it once it is handed to the database, and drops
    /// it after the commit (a client that hung up, a delivery abandoned at shutdown), still
    /// wakes the request's waiters.
    #[tokio::test]
    async fn a_write_dropped_after_its_commit_still_wakes_the_waiters() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("wake.db").display());
        let store = super::Store::open(&url, 10, 1).await.unwrap();
        let new = super::NewRequest {
            id: "dropped-writer".into(),
            payload_hash: "0".repeat(16),
            iterations: 1,
            created_at: chrono::Utc::now(),
            idempotency: None,
            trace: None,
        };
        let subscription = store.subscribe(&new.id);
        let woken = subscription.next_change();
        tokio::pin!(woken);
        woken.as_mut().enable();
        {
            let write = store.sync_finished(&new, Err("failed"));
            tokio::pin!(write);
            assert!(futures_util::poll!(write.as_mut()).is_pending());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while store.get(&new.id).await.unwrap().is_none() {
                assert!(std::time::Instant::now() < deadline, "never committed");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), woken)
            .await
            .expect("the waiter was not woken");
        store.close().await;
    }

    #[test]
    fn passwords_are_redacted_wherever_they_are() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        let redacted =
            redact_url("postgres://u@h/db?sslmode=require&password=secret&SSLPassword=x");
        assert!(
            !redacted.contains("secret") && !redacted.contains("=x"),
            "{redacted}"
        );
        assert!(redacted.contains("sslmode=require"), "{redacted}");
        assert_eq!(redact_url("sqlite://requests.db"), "sqlite://requests.db");
    }
}
