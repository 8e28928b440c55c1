//! What each endpoint does, below HTTP: the service's operations on the store, the compute
//! pool and the delivery queue. Handlers parse and map; the rules live here.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delivery::destinations::{
    BreakerState, DestinationView, Destinations, destination_of, destination_of_str,
};
use crate::delivery::guard::Guard;
use crate::delivery::{Running, Wakeup, WorkerStats};
use crate::input::{AsyncInput, WorkInput};
use crate::metrics::{ConnectionLabels, DestinationLabels, Metrics, TOP_DESTINATIONS};
use crate::model::{
    Health, HealthReport, Mode, RequestList, RequestRecord, Status, WorkResult, payload_hash,
};
use crate::store::{
    ABANDONED_SYNC_ERROR, Cancellation, CleanupReport, ControlChange, Controlled, IdempotencyKey,
    KeyHolder, ListFilter, MadeDue, NewAsyncRequest, NewRequest, Pauses, Position, Redelivery,
    StatusCounts, Store, StoreError, Submitted, while_unavailable,
};
use crate::trace_context::RequestTrace;
use crate::work::{Cancel, ComputePool, PoolError};

mod fingerprint;
use fingerprint::Fingerprint;

/// Whether `id` could name a request: ids are UUIDs, so anything longer than one or holding
/// control characters (a NUL, which PostgreSQL cannot even compare with TEXT) names none, and
/// the database is not asked.
fn is_plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && !id.chars().any(char::is_control)
}

/// Cancels the work of a sync request if the request's future is dropped before it is
/// disarmed, that is, if the client hangs up before the answer is ready.
struct CancelOnDrop(Option<Cancel>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            cancel.set();
        }
    }
}

/// A sync request still `processing` this long after its work's own wait
/// (`APP_WORK_DURATION_SECONDS`) lost its instance: no hashing takes nearly so long.
const STALE_SYNC: std::time::Duration = std::time::Duration::from_secs(3600);

/// What a sync request records when its client hung up before the result was ready.
const CLIENT_GONE: &str =
    "the client disconnected before the work finished; the work was cancelled";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("the service is overloaded")]
    Overloaded,
    /// The database cannot take the request now; it may later.
    #[error(transparent)]
    Unavailable(StoreError),
    #[error(transparent)]
    Store(StoreError),
    #[error("the work could not be completed: {0}")]
    Work(String),
    /// The idempotency key names a stored request that asked for something else.
    #[error("Idempotency-Key `{0}` was already used for a different request")]
    KeyReused(String),
    /// The idempotency key names a request still being worked on, after waiting for it.
    #[error("the request with Idempotency-Key `{0}` is still being processed")]
    KeyInProgress(String),
}

/// How long a repeated sync request waits for the first of its key to finish before it is
/// told to come back (409): as long as a waiting `GET` may.
const KEY_WAIT: std::time::Duration = MAX_WAIT;

/// The longest a client may ask to wait for a request to finish (`Prefer: wait`).
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a submission answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered<T> {
    pub value: T,
    /// True when the answer is the stored one of an earlier request with the same
    /// idempotency key (nothing new was done).
    pub replayed: bool,
}

impl<T> Answered<T> {
    fn fresh(value: T) -> Self {
        Answered {
            value,
            replayed: false,
        }
    }

    fn replayed(value: T) -> Self {
        Answered {
            value,
            replayed: true,
        }
    }
}

fn new_async_request(
    id: String,
    input: AsyncInput,
    idempotency: Option<IdempotencyKey>,
) -> NewAsyncRequest {
    NewAsyncRequest {
        request: NewRequest {
            id,
            payload_hash: payload_hash(&input.work.data),
            iterations: input.work.iterations,
            created_at: Utc::now(),
            idempotency,
            trace: input.caller_trace.begin(),
        },
        data: input.work.data,
        destination: destination_of(&input.callback_url),
        callback_url: input.callback_url_as_sent,
        controls: input.controls,
        ordering_key: input.ordering_key,
    }
}

/// What doing a sync request's work came to.
enum Worked {
    Done(WorkResult),
    /// Its idempotency key was taken by another request first; nothing was done.
    KeyTaken,
}

/// Rounds of a keyed sync request: a holder that fails frees the key for the next round.
const KEY_ROUNDS: usize = 3;

/// A sync request still working after this long is recorded as `processing` while it works:
/// it shows in lists and on the dashboard, and is marked failed if the process dies before
/// it finishes. One that finishes sooner, most of them, is written once, finished: half the
/// writes, where nobody could have seen the difference (its id reaches the client with the
/// answer).
const RECORD_PROCESSING_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

fn new_sync_request(
    id: String,
    input: &WorkInput,
    idempotency: Option<IdempotencyKey>,
    trace: Option<&RequestTrace>,
) -> NewRequest {
    NewRequest {
        id,
        payload_hash: payload_hash(&input.data),
        iterations: input.iterations,
        created_at: Utc::now(),
        idempotency,
        trace: trace.cloned(),
    }
}

/// What an async request asked for beyond the original's fields, for its fingerprint: empty
/// when nothing (the fingerprints of plain requests stay as they always were).
fn asked_beyond(input: &AsyncInput) -> String {
    let controls = input.controls.fingerprint();
    match &input.ordering_key {
        Some(key) => format!("{controls};ordering_key {key}"),
        None => controls,
    }
}

impl From<StoreError> for ServiceError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::QueueFull => ServiceError::Overloaded,
            err if err.is_unavailable() => ServiceError::Unavailable(err),
            err => ServiceError::Store(err),
        }
    }
}

/// What [`Service::redeliver_matching`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkRedelivery {
    /// `callback_failed` requests that match the filter (before this call).
    pub matched: u64,
    /// `matched` stopped at the list count limit: at least that many match.
    pub matched_capped: bool,
    /// Queued again by this call.
    pub redelivered: u64,
    /// The queue filled up before every request of this call could be queued.
    pub queue_full: bool,
}

#[derive(Clone)]
pub struct Service {
    /// This instance, as its leases and the instances sharing the rate limits name it.
    pub owner: String,
    pub store: Store,
    pub pool: ComputePool,
    pub wakeup: Wakeup,
    pub workers: WorkerStats,
    pub queue_capacity: u64,
    /// The SSRF policy, shared with the callback client.
    pub guard: Guard,
    /// What a request may ask for beyond the original's fields (the operator's caps).
    pub control_limits: crate::input::ControlLimits,
    pub retention: std::time::Duration,
    pub max_stored_requests: u64,
    /// The most rows a list's `total` counts for a filter beyond mode and status.
    pub list_count_limit: u64,
    /// `/healthz` says degraded while a database write has waited longer than this.
    pub health_write_wait: std::time::Duration,
    pub worker_count: u32,
    pub metrics: Arc<Metrics>,
    pub destinations: Arc<Destinations>,
    /// The async jobs this instance is working on (a cancel stops their work).
    pub running: Running,
    /// The tasks that finish sync requests' records, which outlive a client that hung up:
    /// shutdown waits for them before it closes the store.
    pub sync_records: tokio_util::task::TaskTracker,
    /// Cancelled when the shutdown's grace period is over: sync work still running stops, and
    /// its request is recorded as failed ([`ABANDONED_SYNC_ERROR`]) rather than left
    /// `processing` by a store that closes under it.
    pub sync_abandon: tokio_util::sync::CancellationToken,
    /// The places of requests that hold their connection for long: a repeated sync request
    /// waiting for the first takes one.
    pub long_lived: crate::long_lived::LongLived,
    /// The jobs waiting behind held-back destinations, counted now and then.
    pub held_jobs: Arc<crate::delivery::destinations::held::HeldJobs>,
    /// Places for clients' controls of requests run apart from their clients (see
    /// [`Service::to_the_end`]), [`CONTROLS_IN_FLIGHT`] of them.
    pub controls: Arc<tokio::sync::Semaphore>,
}

/// Clients' controls of requests (cancel, retry now, redeliver) under way at once. Each runs
/// on after its client hangs up; without a bound, a client sending controls and hanging up
/// faster than the database takes them would leave a task behind with each.
pub const CONTROLS_IN_FLIGHT: usize = 256;

/// The answer to a control the runtime stopped (it is shutting down).
fn shutting_down() -> ServiceError {
    ServiceError::Unavailable(StoreError::Unavailable(
        "the service is shutting down".into(),
    ))
}

/// Records how a sync request ended.
struct SyncRecord<'a> {
    store: &'a Store,
    new: &'a NewRequest,
    /// Set when the request holds an idempotency key (its `processing` row is committed):
    /// where to keep writing its end, and what stops that, should the database not take it
    /// now. A request without a key whose end is refused leaves no row or, if it ran long
    /// enough to be listed, a `processing` one that the next start fails.
    retry: Option<(&'a TaskTracker, &'a CancellationToken)>,
}

/// When a sync request's end could not be written because the database could not take it
/// then, how long after it is tried again: each wait doubles, up to about two minutes in all.
const SYNC_END_RETRY_FIRST: Duration = Duration::from_millis(250);
const SYNC_END_RETRY_LAST: Duration = Duration::from_secs(30);
const SYNC_END_RETRIES: u32 = 10;

impl SyncRecord<'_> {
    /// Writes the end and returns once it is committed. If the database cannot take it now,
    /// the caller hears so at once; a keyed request has its end written again in the
    /// background until it lands (or the service stops), so that its row does not show it
    /// working, nor hold its key against the client's retry, until the next start fails it.
    async fn record(&self, outcome: Result<&WorkResult, &str>) -> Result<(), StoreError> {
        let err = match self.store.sync_finished(self.new, outcome).await {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        if let Some((records, stop)) = self.retry.filter(|_| err.is_unavailable()) {
            let store = self.store.clone();
            let new = self.new.clone();
            let outcome = outcome.cloned().map_err(str::to_owned);
            let mut pauses = Pauses::doubling(SYNC_END_RETRY_FIRST, SYNC_END_RETRY_LAST)
                .tries(SYNC_END_RETRIES)
                .stopped_by(stop.clone());
            let stop = stop.clone();
            records.spawn(async move {
                // The first try was the client's own.
                if !pauses.wait().await {
                    return;
                }
                let written = while_unavailable(&mut pauses, || {
                    store.sync_finished(&new, outcome.as_ref().map_err(String::as_str))
                })
                .await;
                match written {
                    Ok(()) => {}
                    // Shutting down with the database away: the next start fails the
                    // request, as it does every request left processing.
                    Err(_) if stop.is_cancelled() => {}
                    Err(err) => {
                        tracing::warn!(request_id = %new.id, error = %err, "a sync request's end could not be written; if the database was unavailable throughout, it stays processing until the next start");
                    }
                }
            });
        }
        Err(err)
    }
}

impl Service {
    /// Does the work now and records it (`processing → completed`) as request `id`: a fresh
    /// UUIDv7, minted by the HTTP layer so that its response and log lines carry it too.
    ///
    /// With an idempotency `key` whose request is stored, nothing is done: the answer is that
    /// request's (once it finishes, if it is still running).
    pub async fn run_sync(
        &self,
        id: String,
        input: WorkInput,
        key: Option<String>,
        trace: Option<RequestTrace>,
    ) -> Result<Answered<WorkResult>, ServiceError> {
        let Some(key) = key else {
            let new = new_sync_request(id, &input, None, trace.as_ref());
            return match self.work_sync(new, input).await? {
                Worked::Done(result) => Ok(Answered::fresh(result)),
                Worked::KeyTaken => Err(ServiceError::Store(StoreError::WrongReply {
                    expected: "created",
                    got: "key taken",
                })),
            };
        };
        let asked = Fingerprint::of(Mode::Sync, input.iterations, None, "", &input.data);
        let idempotency = IdempotencyKey {
            fingerprint: asked.stored().to_owned(),
            key,
        };
        // A request that failed frees its key (it did no work anyone can reuse), so each
        // round either answers or finds the key freed by a failure and takes it.
        for _ in 0..KEY_ROUNDS {
            // Looked up before the compute pool is asked, so that a replay is answered even
            // while the pool is full, and takes no place in it.
            if let Some(holder) = self.store.key_holder(&idempotency.key).await? {
                match self.replay_sync(&idempotency, &asked, holder).await? {
                    Some(answer) => return Ok(answer),
                    None => continue,
                }
            }
            let new = new_sync_request(
                id.clone(),
                &input,
                Some(idempotency.clone()),
                trace.as_ref(),
            );
            match self.work_sync(new, input.clone()).await? {
                Worked::Done(result) => return Ok(Answered::fresh(result)),
                // A concurrent duplicate took the key first: replay it, next round.
                Worked::KeyTaken => continue,
            }
        }
        Err(ServiceError::KeyInProgress(idempotency.key))
    }

    /// Does the work of `new` and records it. With an idempotency key, the key is taken (the
    /// `processing` row committed) before the work starts, or the work is cancelled and
    /// [`Worked::KeyTaken`] returned.
    async fn work_sync(&self, new: NewRequest, input: WorkInput) -> Result<Worked, ServiceError> {
        // If this future is dropped (the client hung up), the work is cancelled: skipped if it
        // has not started, stopped between rounds if it has. Nobody would read its result.
        let cancel = Cancel::default();
        let on_drop = CancelOnDrop(Some(cancel.clone()));
        // Ask the pool first: under overload nothing is written for a request that is refused.
        let work = self
            .pool
            .submit_cancellable(input.data, input.iterations, cancel.clone())
            .map_err(|err| match err {
                PoolError::Busy => ServiceError::Overloaded,
                PoolError::Closed | PoolError::Cancelled => ServiceError::Work(err.to_string()),
            })?;
        let keyed = new.idempotency.is_some();
        let store = self.store.clone();
        let iterations = input.iterations;
        let abandon = self.sync_abandon.clone();
        let records = self.sync_records.clone();
        let owner = self.owner.clone();
        // The rest runs in its own task so that the record is completed even if the client
        // hangs up mid-request, the key's commit included: a sync request is never left
        // `processing`, and a key is never left held by a request nobody works on.
        let finish = self.sync_records.spawn(async move {
            if keyed {
                let taken = store.sync_started_with_key(new.clone(), &owner).await;
                if !matches!(taken, Ok(Submitted::Created)) {
                    cancel.set();
                    return match taken {
                        Err(err) => Err(err.into()),
                        Ok(_) => Ok(Worked::KeyTaken),
                    };
                }
            }
            // `None`: the grace period of a shutdown ended first.
            let worked = async {
                tokio::select! {
                    outcome = work.wait() => Some(outcome),
                    () = abandon.cancelled() => None,
                }
            };
            tokio::pin!(worked);
            let outcome = if keyed {
                // Already recorded as processing: the committed key is the record.
                worked.await
            } else {
                match tokio::time::timeout(RECORD_PROCESSING_AFTER, &mut worked).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        if let Err(err) = store.sync_started(new.clone(), &owner) {
                            cancel.set();
                            return Err(err.into());
                        }
                        worked.await
                    }
                }
            };
            let end = SyncRecord {
                store: &store,
                new: &new,
                retry: keyed.then_some((&records, &abandon)),
            };
            let Some(outcome) = outcome else {
                cancel.set();
                end.record(Err(ABANDONED_SYNC_ERROR)).await?;
                return Err(ServiceError::Work(ABANDONED_SYNC_ERROR.to_string()));
            };
            match outcome {
                Ok(output) => {
                    let processing_time_ms = output.processing_time_ms();
                    let result = WorkResult {
                        request_id: new.id.clone(),
                        input_hash: output.hashes.input_hash,
                        output_hash: output.hashes.output_hash,
                        iterations,
                        processing_time_ms,
                    };
                    end.record(Ok(&result)).await?;
                    Ok(Worked::Done(result))
                }
                Err(err) => {
                    let reason = match err {
                        PoolError::Cancelled => CLIENT_GONE.to_string(),
                        other => other.to_string(),
                    };
                    end.record(Err(&reason)).await?;
                    Err(ServiceError::Work(reason))
                }
            }
        });
        let outcome = finish
            .await
            .map_err(|err| ServiceError::Work(err.to_string()))?;
        on_drop.disarm();
        outcome
    }

    /// The answer of `holder`, the sync request that holds the idempotency key: its result
    /// once it has finished; `None` if it failed or is gone (either frees the key).
    async fn replay_sync(
        &self,
        idempotency: &IdempotencyKey,
        asked: &Fingerprint,
        holder: KeyHolder,
    ) -> Result<Option<Answered<WorkResult>>, ServiceError> {
        if !asked.matches(&holder.fingerprint) {
            return Err(ServiceError::KeyReused(idempotency.key.clone()));
        }
        // Waiting for the first holds the connection as a wait does, so it takes a place
        // among the long-lived requests: repeats of one slow request, however many, leave
        // the connections `/healthz` and short requests need. With none free, the answer
        // is the first's state now.
        let place = self.long_lived.try_hold();
        let wait = if place.is_some() {
            KEY_WAIT
        } else {
            std::time::Duration::ZERO
        };
        let Some(record) = self.wait_until_finished(&holder.id, wait).await? else {
            return Ok(None);
        };
        drop(place);
        match (record.status, record.result) {
            (Status::Completed, Some(result)) => Ok(Some(Answered::replayed(result))),
            (Status::Failed, _) => Ok(None),
            _ => Err(ServiceError::KeyInProgress(idempotency.key.clone())),
        }
    }

    /// The record of request `id` as soon as it is finished, or as it is after `timeout`;
    /// `None` if there is no such request. Sleeps between changes of the request: no query
    /// runs while it does not change.
    pub async fn wait_until_finished(
        &self,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<Option<RequestRecord>, ServiceError> {
        if !is_plausible_id(id) {
            return Ok(None);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let subscription = self.store.subscribe(id);
        loop {
            let mut change = std::pin::pin!(subscription.next_change());
            // Registered before the read, so that a change landing after it still wakes us.
            change.as_mut().enable();
            let record = self.get(id).await?;
            match &record {
                Some(r)
                    if !r.status.is_finished()
                        && tokio::time::Instant::now() < deadline
                        && !subscription.is_closed() => {}
                _ => return Ok(record),
            }
            tokio::select! {
                () = change => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Records an async request durably as request `id` (a fresh UUIDv7, as for
    /// [`Service::run_sync`]) and queues it; returns the id once committed.
    ///
    /// With an idempotency `key` whose request is stored, nothing is written: the answer is
    /// that request's id.
    pub async fn submit_async(
        &self,
        id: String,
        input: AsyncInput,
        key: Option<String>,
    ) -> Result<Answered<String>, ServiceError> {
        let asked = key.map(|key| {
            let fingerprint = Fingerprint::of(
                Mode::Async,
                input.work.iterations,
                Some(input.callback_url_as_sent.as_str()),
                &asked_beyond(&input),
                &input.work.data,
            );
            (key, fingerprint)
        });
        let idempotency = asked.as_ref().map(|(key, fingerprint)| IdempotencyKey {
            key: key.clone(),
            fingerprint: fingerprint.stored().to_owned(),
        });
        let new = new_async_request(id.clone(), input, idempotency);
        match self.store.submit_async(new).await? {
            Submitted::Created => {
                tracing::info!(request_id = %id, "async request accepted");
                self.wakeup.wake();
                Ok(Answered::fresh(id))
            }
            Submitted::KeyTaken(KeyHolder { id, fingerprint }) => match asked {
                Some((_, asked)) if asked.matches(&fingerprint) => {
                    tracing::info!(request_id = %id, "async request replayed by its idempotency key");
                    Ok(Answered::replayed(id))
                }
                Some((key, _)) => Err(ServiceError::KeyReused(key)),
                None => Err(ServiceError::Store(StoreError::WrongReply {
                    expected: "created",
                    got: "key taken",
                })),
            },
        }
    }

    /// Records every request of a batch durably in one transaction, or none (overloaded)
    /// when they do not all fit in the queue; returns their ids, in order, once committed.
    pub async fn submit_batch(&self, inputs: Vec<AsyncInput>) -> Result<Vec<String>, ServiceError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let batch: Vec<NewAsyncRequest> = inputs
            .into_iter()
            .map(|input| new_async_request(uuid::Uuid::now_v7().to_string(), input, None))
            .collect();
        self.store.submit_batch(&batch).await?;
        tracing::info!(size = batch.len(), first = %batch[0].request.id, "async batch accepted");
        self.wakeup.wake();
        Ok(batch.into_iter().map(|new| new.request.id).collect())
    }

    pub async fn get(&self, id: &str) -> Result<Option<RequestRecord>, ServiceError> {
        if !is_plausible_id(id) {
            return Ok(None);
        }
        Ok(self
            .store
            .get(id)
            .await?
            .map(|record| self.with_hold(record)))
    }

    pub async fn list(&self, mut filter: ListFilter) -> Result<RequestList, ServiceError> {
        filter.count_limit = self.list_count_limit;
        let mut list = self.store.list(filter).await?;
        list.requests = list
            .requests
            .into_iter()
            .map(|record| self.with_hold(record))
            .collect();
        Ok(list)
    }

    /// `record` with what it waits for now: its schedule, or its destination's breaker or cap
    /// (as this instance sees them).
    fn with_hold(&self, mut record: RequestRecord) -> RequestRecord {
        record.waiting_for = record.waiting_for(Utc::now(), |url| {
            self.destinations.holding(&destination_of_str(url))
        });
        record
    }

    /// Where request `id` stands in the list order, for a `before` cursor; `None` if there is
    /// no such request (any more).
    pub async fn position(&self, id: &str) -> Result<Option<Position>, ServiceError> {
        if !is_plausible_id(id) {
            return Ok(None);
        }
        Ok(self.store.position(id).await?)
    }

    /// How many requests are in each status, over the whole database.
    pub async fn status_counts(&self) -> Result<StatusCounts, ServiceError> {
        Ok(self.store.status_counts().await?)
    }

    /// Redelivers up to `at_most` `callback_failed` requests that match `filter` (its status
    /// is ignored), newest first, one store call each: every redelivery is its own short
    /// write, so a large batch never holds the SQLite writer for long, and other writes
    /// interleave. With `dry_run` nothing is changed and only `matched` is reported.
    pub async fn redeliver_matching(
        &self,
        mut filter: ListFilter,
        at_most: u32,
        dry_run: bool,
    ) -> Result<BulkRedelivery, ServiceError> {
        filter.status = Some(Status::CallbackFailed);
        filter.limit = if dry_run { 1 } else { at_most.max(1) };
        filter.offset = 0;
        filter.count_limit = self.list_count_limit;
        let oldest_first = filter.oldest_first;
        let page = self.store.list(filter).await?;
        let mut report = BulkRedelivery {
            matched: page.total,
            matched_capped: page.total_capped,
            redelivered: 0,
            queue_full: false,
        };
        if dry_run {
            return Ok(report);
        }
        // Oldest first, whichever way the page was listed: requests of one ordering key are
        // queued again in the order they were accepted (each redelivery goes behind its
        // key's queued requests).
        let mut page = page.requests;
        if !oldest_first {
            page.reverse();
        }
        for record in page {
            match self.store.redeliver(&record.id).await {
                Ok(Redelivery::Queued) => {
                    report.redelivered += 1;
                    // At once, not after the loop: a client hanging up or a store error
                    // mid-loop must not leave the jobs already queued waiting for the
                    // dispatcher's idle poll. Wakes coalesce.
                    self.wakeup.wake();
                }
                // Redelivered or deleted by someone else since it was listed.
                Ok(Redelivery::NotFound | Redelivery::WrongStatus(_)) => {}
                Err(StoreError::QueueFull) => {
                    report.queue_full = true;
                    break;
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(report)
    }

    pub async fn health(&self) -> HealthReport {
        let database = self.store.ping().await;
        let queue_size = if database.is_ok() {
            self.store.queue_size().await.unwrap_or(0)
        } else {
            0
        };
        // In u128: a queue capacity near u64::MAX must not overflow the comparison.
        let over_90_percent = u128::from(queue_size) * 10 > u128::from(self.queue_capacity) * 9;
        let write_wait = self
            .store
            .write_wait()
            .filter(|waited| *waited > self.health_write_wait);
        let (status, reason) = if let Err(err) = &database {
            (Health::Unhealthy, Some(err.clone()))
        } else if let Some(waited) = write_wait {
            (
                Health::Degraded,
                Some(format!(
                    "a database write has waited {:.1} s",
                    waited.as_secs_f64()
                )),
            )
        } else if over_90_percent {
            (
                Health::Degraded,
                Some("the async queue is over 90% full".into()),
            )
        } else {
            (Health::Healthy, None)
        };
        HealthReport {
            status,
            version: env!("CARGO_PKG_VERSION"),
            queue_size,
            queue_capacity: self.queue_capacity,
            active_workers: self.workers.active(),
            database_ok: database.is_ok(),
            database_error: database.err(),
            reason,
        }
    }

    /// The metrics as OpenMetrics text, with the state gauges read now.
    pub async fn metrics_text(&self) -> String {
        let m = &self.metrics;
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        if let Ok(size) = self.store.queue_size().await {
            m.queue_size.set(gauge(size));
        }
        m.queue_capacity.set(gauge(self.queue_capacity));
        m.delivery_workers_active.set(gauge(self.workers.active()));
        m.delivery_workers.set(i64::from(self.worker_count));
        m.compute_queue_size.set(gauge(self.pool.queued() as u64));
        m.compute_queue_capacity
            .set(gauge(self.pool.queue_capacity() as u64));
        m.compute_busy_threads.set(gauge(self.pool.busy() as u64));
        m.compute_threads.set(gauge(self.pool.threads() as u64));
        let db = self.store.pool_stats();
        m.db_connections
            .get_or_create(&ConnectionLabels { state: "in_use" })
            .set(gauge(db.in_use));
        m.db_connections
            .get_or_create(&ConnectionLabels { state: "idle" })
            .set(gauge(db.idle));
        m.db_writer_queue.set(gauge(db.writer_queue));
        m.db_engine_memory.set(gauge(db.engine_memory));
        m.waited_on_requests
            .set(gauge(self.store.waited_on() as u64));
        self.destination_gauges().await;
        m.encode()
    }

    /// Sets the per-destination gauges afresh: the busiest destinations by name, the rest
    /// summed as `other` (a limit or a hold, which do not sum, only by name), and none of
    /// those that have gone quiet.
    async fn destination_gauges(&self) {
        let m = &self.metrics;
        m.destination_in_flight.clear();
        m.destination_recent_failures.clear();
        m.destination_breaker_open.clear();
        m.destination_held_jobs.clear();
        m.destination_rate_limit.clear();
        m.destination_retry_after.clear();
        let views = self.destinations().await;
        let count = |f: fn(&DestinationView) -> bool| {
            i64::try_from(views.iter().filter(|v| f(v)).count()).unwrap_or(i64::MAX)
        };
        m.destinations_paused.set(count(|v| v.paused));
        m.destinations_rate_limited
            .set(count(|v| v.rate_limit.is_some()));
        m.destinations_retry_after
            .set(count(|v| v.retry_after_left.is_some()));
        for (n, view) in views.into_iter().enumerate() {
            let named = n < TOP_DESTINATIONS;
            let labels = if named {
                DestinationLabels::of(&view.destination)
            } else {
                DestinationLabels::other()
            };
            m.destination_in_flight
                .get_or_create(&labels)
                .inc_by(i64::from(view.in_flight));
            m.destination_recent_failures
                .get_or_create(&labels)
                .inc_by(i64::try_from(view.recent_failures).unwrap_or(i64::MAX));
            m.destination_breaker_open
                .get_or_create(&labels)
                .inc_by(i64::from(view.breaker != BreakerState::Closed));
            if let Some(held) = view.held_jobs {
                m.destination_held_jobs
                    .get_or_create(&labels)
                    .inc_by(i64::try_from(held).unwrap_or(i64::MAX));
            }
            if !named {
                continue;
            }
            if let Some(limit) = view.rate_limit {
                m.destination_rate_limit
                    .get_or_create(&labels)
                    .set(limit.per_second);
            }
            if let Some(left) = view.retry_after_left {
                m.destination_retry_after
                    .get_or_create(&labels)
                    .set(left.as_secs_f64());
            }
        }
    }

    /// Every destination this instance delivered to recently, busiest first, with the jobs
    /// waiting behind those held back.
    pub async fn destinations(&self) -> Vec<DestinationView> {
        let mut views = self.destinations.snapshot();
        self.held_jobs.fill(&self.store, &mut views).await;
        views
    }

    /// Runs a client's control of request `id` to its end even if the client hangs up
    /// meanwhile. Once sent, its write may commit after the caller is gone, and what follows
    /// the commit must not go with the caller's future: the request's waiters are woken
    /// after it (a wake before it would find nothing changed, and leave them asleep until
    /// their deadline), a cancelled request's work is stopped, the dispatcher is woken. A
    /// control waits for one of [`CONTROLS_IN_FLIGHT`] places before it starts (a client
    /// gone while it waits leaves nothing behind), and holds it to its end.
    async fn to_the_end<T, F, Fut>(&self, id: &str, control: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(Service, String) -> Fut,
        Fut: Future<Output = Result<T, ServiceError>> + Send + 'static,
    {
        let Ok(place) = Arc::clone(&self.controls).acquire_owned().await else {
            return Err(shutting_down());
        };
        let control = control(self.clone(), id.to_owned());
        let run = tokio::spawn(async move {
            let outcome = control.await;
            drop(place);
            outcome
        });
        match run.await {
            Ok(outcome) => outcome,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => Err(shutting_down()),
        }
    }

    /// Cancels an async request that is not final (SPEC §11), and stops its work if this
    /// instance is doing it (another instance's worker finds out at its next heartbeat).
    pub async fn cancel(&self, id: &str) -> Result<Cancellation, ServiceError> {
        if !is_plausible_id(id) {
            return Ok(Cancellation::NotFound);
        }
        self.to_the_end(
            id,
            |service, id| async move { service.cancel_now(&id).await },
        )
        .await
    }

    async fn cancel_now(&self, id: &str) -> Result<Cancellation, ServiceError> {
        let outcome = self.store.cancel(id).await?;
        if let Cancellation::Cancelled {
            in_flight,
            by_this_call: true,
        } = outcome
        {
            let stopped = self.running.stop_request(id);
            tracing::info!(request_id = %id, delivery_in_flight = in_flight, work_stopped = stopped, "async request cancelled");
            // The next request of its ordering key, if it had one, is unparked by the sweep
            // (within `UNPARK_SWEEP_EVERY`): a sweep per cancel would let a client that
            // cancels in bulk make every parked key be read each time.
            self.metrics
                .jobs_finished
                .get_or_create(&crate::metrics::FinalLabels {
                    status: crate::metrics::FinalStatus::cancelled,
                })
                .inc();
        }
        Ok(outcome)
    }

    /// Makes a queued request due now (an operator's retry now, SPEC §11).
    pub async fn make_due(&self, id: &str) -> Result<MadeDue, ServiceError> {
        if !is_plausible_id(id) {
            return Ok(MadeDue::NotFound);
        }
        self.to_the_end(id, |service, id| async move {
            let outcome = service.store.make_due(&id).await?;
            if outcome == MadeDue::Due {
                tracing::info!(request_id = %id, "request made due now");
                service.wakeup.wake();
            }
            Ok(outcome)
        })
        .await
    }

    /// Pauses, resumes, resets the breaker of or sets the rate limit of `destination` (SPEC
    /// §11), stored for every instance and applied on this one before the answer (the others
    /// hear of it at once, and read it within [`CONTROLS_EVERY`](crate::delivery::CONTROLS_EVERY)
    /// anyway). Answers the destination as `GET /destinations` shows it, or `None` when
    /// [`MAX_CONTROLLED_DESTINATIONS`] destinations are paused or limited already.
    ///
    /// [`MAX_CONTROLLED_DESTINATIONS`]: crate::store::MAX_CONTROLLED_DESTINATIONS
    pub async fn control_destination(
        &self,
        destination: &str,
        change: ControlChange,
    ) -> Result<Option<DestinationView>, ServiceError> {
        if self.store.control_destination(destination, change).await? == Controlled::TooMany {
            return Ok(None);
        }
        if self
            .destinations
            .refresh_controls(self.store.destination_controls(&self.owner))
            .await?
        {
            self.wakeup.wake();
        }
        tracing::info!(destination, change = ?change, "destination control changed by an operator");
        let mut view = [self.destinations.view(destination)];
        self.held_jobs.fill_cached(&mut view).await;
        let [view] = view;
        Ok(Some(view))
    }

    /// Queues a `callback_failed` request for a fresh round of delivery attempts.
    pub async fn redeliver(&self, id: &str) -> Result<Redelivery, ServiceError> {
        if !is_plausible_id(id) {
            return Ok(Redelivery::NotFound);
        }
        self.to_the_end(id, |service, id| async move {
            let outcome = service.store.redeliver(&id).await?;
            if outcome == Redelivery::Queued {
                service.wakeup.wake();
            }
            Ok(outcome)
        })
        .await
    }

    /// Runs the retention rules now (SPEC §6).
    pub async fn cleanup(&self) -> Result<CleanupReport, ServiceError> {
        let report = self
            .store
            .cleanup(self.retention, self.max_stored_requests)
            .await?;
        // A live request is never failed: however long the configured wait, it is added.
        let stale = STALE_SYNC.saturating_add(self.pool.simulated_io());
        let failed = self.store.fail_stale_sync(stale).await?;
        if failed > 0 {
            tracing::warn!(
                failed,
                "failed sync requests left processing by a stopped instance"
            );
        }
        if report.expired + report.over_limit > 0 {
            tracing::info!(
                expired = report.expired,
                over_limit = report.over_limit,
                "retention cleanup"
            );
        }
        Ok(report)
    }
}
