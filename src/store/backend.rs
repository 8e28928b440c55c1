//! The contract between the store and a database backend.
//!
//! A backend speaks SQL and nothing else: what each write does to a request is decided by the
//! life cycle ([`super::lifecycle`]), what a row means by [`super::rows`], and waking the
//! waiters of a changed request by [`Store`](super::Store), once for every backend. Where the
//! two backends differ in kind, the difference is a method here, spelled out by each of them
//! (SQLite's is often "nothing to do: one process owns the database"):
//!
//! | | SQLite | PostgreSQL |
//! |---|---|---|
//! | other instances | none (an exclusive lock file) | any number, sharing the queue |
//! | [`listen`](Backend::listen), [`versions`](Backend::versions) | nothing to hear: every change is this process's own | `LISTEN` for new jobs; status and attempts of watched requests |
//! | [`fail_stale_sync`](Backend::fail_stale_sync) | done once, when the database is opened | by age, while other instances live on |
//! | [`queue_size`](Backend::queue_size) | exact, kept by the writer | a count of unfinished rows |
//! | [`sync_started`](Backend::sync_started) | queued for the writer, dropped if it is full | a write of its own, in the background |
//! | group commit | the writer thread's batches | `store::group_commit` for the writes of every async request |

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{
    AttemptOutcome, Cancellation, ControlChange, Controlled, ControlsRead, FinishedWork, Job,
    KeyHolder, Leases, ListFilter, MadeDue, NewAsyncRequest, NewRequest, PoolStats, Position,
    Recorded, Redelivery, StatementPlan, StatusCounts, StoreResult, Submitted, Swept,
};
use crate::delivery::destinations::Rooms;
use crate::model::{DeliveryAttempt, RequestList, RequestRecord, Status, WorkResult};

/// What a database backend provides. Every write that names a claim (`token`) must write
/// nothing and answer `false` once another claim holds the job; every write must be
/// committed when its future completes, and must still be made (or not at all, never half)
/// if that future is dropped first.
pub(crate) trait Backend: Clone + Send + Sync + 'static {
    /// Whether other processes may use the same database: if not, every change is this
    /// process's own, and [`listen`](Self::listen) and [`versions`](Self::versions) have
    /// nothing to report.
    fn has_other_instances(&self) -> bool;

    /// Keeps the database in shape for the queue until `stop` (on PostgreSQL, vacuums the
    /// queue's tables when autovacuum is off).
    fn maintain(&self, stop: CancellationToken) -> impl Future<Output = ()> + Send;

    /// Calls `wake` whenever another instance queues a job or changes a destination's
    /// controls, until `stop`.
    fn listen(
        &self,
        wake: impl Fn(super::Announced) + Send + 'static,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send;

    /// Status and attempts of each of `ids` still stored: what a waiter's wake-up depends on.
    fn versions(
        &self,
        ids: &[String],
    ) -> impl Future<Output = StoreResult<Vec<(String, (Status, u32))>>> + Send;

    /// Fails sync requests still `processing` whose instance died mid-request (see
    /// `Store::fail_stale_sync`).
    fn fail_stale_sync(
        &self,
        older_than: Duration,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Records a sync request as `processing` without waiting for the commit.
    fn sync_started(&self, new: NewRequest, owner: &str) -> StoreResult<()>;

    /// Records a sync request as `processing` once it is committed, unless its idempotency
    /// key is taken.
    fn sync_started_with_key(
        &self,
        new: NewRequest,
        owner: &str,
    ) -> impl Future<Output = StoreResult<Submitted>> + Send;

    /// Records a sync request's end (the whole record: its `processing` row may never have
    /// been written).
    fn sync_finished(
        &self,
        new: &NewRequest,
        outcome: Result<&WorkResult, &str>,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    fn key_holder(&self, key: &str) -> impl Future<Output = StoreResult<Option<KeyHolder>>> + Send;

    /// Queues an async request within the queue bound, unless its key is taken.
    fn submit_async(
        &self,
        new: NewAsyncRequest,
    ) -> impl Future<Output = StoreResult<Submitted>> + Send;

    /// Queues every request of `batch` in one transaction, or none.
    fn submit_batch(
        &self,
        batch: &[NewAsyncRequest],
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Claims up to `limit` due jobs, oldest due first, within each destination's room.
    fn claim_due(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
        priority_step: Duration,
        rooms: &Rooms,
    ) -> impl Future<Output = StoreResult<Vec<Job>>> + Send;

    /// Extends the leases of `owner`'s claims named by `tokens`; hands back its other claims
    /// whose lease ran out.
    fn heartbeat(
        &self,
        owner: &str,
        tokens: &[String],
        lease: Duration,
    ) -> impl Future<Output = StoreResult<Leases>> + Send;

    /// How long until the next job `owner` may claim becomes due, measured on the clock the
    /// backend compares due times with.
    fn next_due_in(
        &self,
        owner: &str,
        rooms: &Rooms,
    ) -> impl Future<Output = StoreResult<Option<Duration>>> + Send;

    fn store_result(
        &self,
        id: &str,
        token: &str,
        work: &FinishedWork,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    fn record_attempt(
        &self,
        id: &str,
        owner: &str,
        token: &str,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> impl Future<Output = StoreResult<Recorded>> + Send;

    fn give_up(
        &self,
        id: &str,
        token: &str,
        reason: &str,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Puts a `callback_failed` request back in the queue, within the queue bound.
    fn redeliver(&self, id: &str) -> impl Future<Output = StoreResult<Redelivery>> + Send;

    /// Makes the first queued request of ordering key `key` due if it is parked (the one
    /// before it ended), or with `None`, that of every key whose first is parked. Answers how
    /// many it made due.
    fn unpark(&self, key: Option<&str>) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Makes request `id` due now if it is queued and not claimed (see [`MadeDue`]).
    fn make_due(&self, id: &str) -> impl Future<Output = StoreResult<MadeDue>> + Send;

    /// Cancels request `id` if it is an async one not yet final (see [`Cancellation`]).
    fn cancel(&self, id: &str) -> impl Future<Output = StoreResult<Cancellation>> + Send;

    /// Applies an operator's change to a destination's stored controls.
    fn control_destination(
        &self,
        destination: &str,
        change: ControlChange,
    ) -> impl Future<Output = StoreResult<Controlled>> + Send;

    /// Every destination's stored controls, and the instances that read them lately: `owner`
    /// counts as one of them from this read on.
    fn destination_controls(
        &self,
        owner: &str,
    ) -> impl Future<Output = StoreResult<ControlsRead>> + Send;

    /// Hands `owner`'s claims back to the queue.
    fn release(&self, owner: &str) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Marks `owner` as alive now, for the other instances sharing the database: its sync
    /// requests are theirs to fail once it stops (`Store::fail_stale_sync`).
    fn mark_alive(&self, owner: &str) -> impl Future<Output = StoreResult<()>> + Send;

    fn get(&self, id: &str) -> impl Future<Output = StoreResult<Option<RequestRecord>>> + Send;

    fn list(&self, filter: ListFilter) -> impl Future<Output = StoreResult<RequestList>> + Send;

    fn position(&self, id: &str) -> impl Future<Output = StoreResult<Option<Position>>> + Send;

    fn status_counts(&self) -> impl Future<Output = StoreResult<StatusCounts>> + Send;

    /// Unfinished async requests.
    fn queue_size(&self) -> impl Future<Output = StoreResult<u64>> + Send;

    /// For each of `destinations`, its jobs due now and not claimed, counted up to `cap`.
    fn due_unclaimed(
        &self,
        destinations: Vec<String>,
        cap: u32,
    ) -> impl Future<Output = StoreResult<Vec<u64>>> + Send;

    /// Whether the database answers a read (within `PING_TIMEOUT`); if not, why not.
    fn ping(&self) -> impl Future<Output = Result<(), String>> + Send;

    /// A write that changes nothing anyone reads, as large as a busy batch of writes: does
    /// the database take writes again?
    fn probe_write(&self) -> impl Future<Output = StoreResult<()>> + Send;

    /// Deletes up to `chunk` requests finished more than `retention` ago, oldest first,
    /// created no earlier than `from` (where the pass's last chunk reached).
    fn delete_expired(
        &self,
        retention: Duration,
        chunk: u64,
        from: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Swept>> + Send;

    /// Deletes the oldest finished requests beyond the newest `max_stored` of them, up to
    /// `chunk` at a time, created no earlier than `from`; instances cleaning at once never
    /// delete past the limit together.
    fn delete_over_limit(
        &self,
        max_stored: u64,
        chunk: u64,
        from: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Swept>> + Send;

    /// The plan of every statement on a hot path (see `store::plans`).
    fn explain_hot(&self) -> impl Future<Output = StoreResult<Vec<StatementPlan>>> + Send;

    fn pool_stats(&self) -> PoolStats;

    /// Commits pending writes and closes the database.
    fn close(&self) -> impl Future<Output = ()> + Send;
}
