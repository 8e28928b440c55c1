//! The PostgreSQL backend: the scale-out path, where several instances share one database
//! and one queue.
//!
//! The writes every async request makes (acceptance, work result, delivery attempt) are
//! group-committed: concurrent ones become one multi-row statement and one commit
//! (`group_writes`), which is most of the queue's throughput. Every other write is a short
//! transaction of its own. Instances coordinate only through rows:
//! - jobs are claimed with `FOR UPDATE SKIP LOCKED` under a lease (owner, expiry); a live
//!   instance extends its leases by heartbeat, and a dead instance's jobs are taken over by
//!   any other once their lease expires. Every later write of a job checks the lease, so an
//!   instance that lost it cannot overwrite the new owner's work.
//! - a new job is announced with `NOTIFY`, so idle instances wake at once without polling.
//! - migrations run under an advisory lock, so instances starting together apply them once.
//! - the queue bound is checked against a count of unfinished requests at most 100 ms old
//!   (1 s while more than half the queue is free; taken afresh near the bound) plus this
//!   instance's own submissions since, each of which reserves its place before it is
//!   inserted: one instance never exceeds the bound (`queue_count.rs`). Other instances'
//!   submissions since the count are not seen, so with K instances the queue can hold up to
//!   K × the bound in the worst case (each instance filling what it saw as free within one
//!   count's lifetime); an exact shared bound would serialise every submission on one
//!   counter row.
//! - the number of requests in each mode and status is kept by triggers in
//!   `request_counts` (migration 0006), sharded by connection: counts for the dashboard,
//!   `/healthz`, list totals and the queue bound read a few rows, never the table.
//! - time comes from the database (`now()`) wherever instances compare it: due times, lease
//!   expiries and retention are computed in SQL from delays, so a skewed clock on one
//!   instance cannot delay or hurry the cluster.

//!
//! Where to read: `claims.rs` (claims, leases, the next due time), `group_writes.rs` (the
//! batched writes), `writes.rs` (the other writes' SQL), `queue_count.rs` (the queue bound),
//! `list.rs`, `rows.rs`, `open.rs` (migrations), `plans.rs` (the hot statements' plans).

mod claims;
mod controls;
mod group_writes;
mod list;
mod open;
mod plans;
mod queue_count;
mod rows;
mod vacuum;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use crate::store::STATEMENT_TIMEOUT;
use tokio_util::sync::CancellationToken;

use self::group_writes::{
    AttemptWrite, FinishSync, InsertQueued, RecordAttempts, ResultWrite, StoreResults, SyncEnd,
};
use self::open::{DESTINATIONS_RECORDED, backfill_destinations, migrate};
use self::queue_count::QueueCount;
use self::rows::{attempt_from_row, parse_status, position_of, record_from_row};
use self::writes::{
    CANCEL, CANCEL_OF, CLEANUP_LOCK, DELETE_EXPIRED, DELETE_OVER_LIMIT, FAIL_STALE_SYNC, GIVE_UP,
    INSERT_SYNC_STARTED, MAKE_DUE, MAKE_DUE_OF, REDELIVER, REDELIVERY_OF, RELEASE,
    RELEASE_ENDED_CLAIMS, UNPARK_KEY, UNPARK_STRANDED,
};
use super::backend::Backend;
use super::group_commit::GroupCommit;
use super::{
    ABANDONED_SYNC_ERROR, Announced, AttemptOutcome, Cancellation, ControlChange, Controlled,
    ControlsRead, FinishedWork, Job, KeyHolder, Leases, ListFilter, MadeDue, NewAsyncRequest,
    NewRequest, PoolStats, Position, Recorded, Redelivery, StatementPlan, StatusCounts, StoreError,
    StoreResult, Submitted, Swept, Transition, within_ping_timeout,
};
use crate::delivery::destinations::Rooms;
use crate::model::{DeliveryAttempt, Mode, RequestList, RequestRecord, Status, WorkResult};

/// The request holding an idempotency key.
const KEY_HOLDER: &str =
    "SELECT id, idempotency_fingerprint FROM requests WHERE idempotency_key = $1";

/// Status and attempts of watched requests.
const VERSIONS: &str = "SELECT id, status, callback_attempts FROM requests WHERE id = ANY($1)";

/// A request's record.
const RECORD_BY_ID: &str = concat!("SELECT ", record_columns!(), " FROM requests WHERE id = $1");

/// A request's delivery attempts, in order.
const ATTEMPTS_OF: &str = concat!(
    "SELECT ",
    attempt_columns!(),
    " FROM delivery_attempts WHERE request_id = $1 ORDER BY attempt"
);

/// Begins a read-only transaction whose statements all see one snapshot, for an answer
/// built from more than one (in `READ COMMITTED` each statement sees its own).
const READ_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// Where a request stands in the list order.
const POSITION_OF: &str = "SELECT created_at, id FROM requests WHERE id = $1";

/// The requests in each status, from the kept counts.
const STATUS_COUNTS: &str =
    "SELECT status, sum(n)::bigint FROM request_counts GROUP BY status HAVING sum(n) > 0";

/// Each destination's (`$1`) jobs due now and not claimed, up to `$2` each: a walk of its
/// part of `requests_destination_due` per destination, stopped at the cap.
const DUE_UNCLAIMED: &str = "SELECT (SELECT count(*) FROM (SELECT 1 FROM requests
         WHERE destination = d AND next_attempt_at IS NOT NULL AND next_attempt_at <= now()
           AND (lease_expires_at IS NULL OR lease_expires_at < now()) LIMIT $2) due)
     FROM unnest($1::text[]) WITH ORDINALITY AS asked(d, n) ORDER BY n";

/// An instance not seen this long (each marks itself in `instances` every second) is gone:
/// the sync requests it left `processing` are failed, and their idempotency keys freed, by
/// the next cleanup. Long enough that a live instance's missed marks (a slow database) do
/// not count it out; an instance that stalls longer finds its request failed when its work
/// ends, and answers its client all the same.
const SYNC_OWNER_GONE_AFTER: Duration = Duration::from_secs(30);

/// Beyond [`SYNC_OWNER_GONE_AFTER`] of this instance's own marks succeeding, before it takes
/// another's old mark as a sign it is gone: time for every live instance to have marked
/// itself since the database came back (they mark every second).
const MARKS_SETTLE: Duration = Duration::from_secs(5);

/// The most time since this instance's last successful mark for the owner rule to apply:
/// marks that stopped answering (a database cut off without an error) leave it stale.
const MARK_FRESH: Duration = Duration::from_secs(3);

/// This instance alive now (see [`SYNC_OWNER_GONE_AFTER`]). Not `seen_at`, which says it
/// shares the rate limits (it delivers): a mark alone leaves that -infinity.
const MARK_ALIVE: &str = "INSERT INTO instances (owner, seen_at, alive_at)
     VALUES ($1, '-infinity', now())
     ON CONFLICT (owner) DO UPDATE SET alive_at = excluded.alive_at";

/// This instance's marks of itself as alive, as far as they tell whether others' marks can
/// be trusted.
#[derive(Debug, Default)]
struct Marks {
    /// The first of the marks that have all succeeded since; `None` after a failed one.
    since: Option<std::time::Instant>,
    last: Option<std::time::Instant>,
}

impl Marks {
    fn record(&mut self, succeeded: bool) {
        let now = std::time::Instant::now();
        if succeeded {
            self.since.get_or_insert(now);
            self.last = Some(now);
        } else {
            self.since = None;
        }
    }

    /// Whether this instance has been marking itself long enough, and lately enough, that
    /// every live instance has marked itself since the database last went away.
    fn trusted(&self) -> bool {
        let (Some(since), Some(last)) = (self.since, self.last) else {
            return false;
        };
        since.elapsed() > SYNC_OWNER_GONE_AFTER + MARKS_SETTLE && last.elapsed() < MARK_FRESH
    }
}

/// Longest wait, at shutdown, for each pool's connections to come back.
const POOL_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Longest wait for a pooled connection (see `open`).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest wait at start for the database to answer a first connection (TLS and
/// authentication included).
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The channel new jobs are announced on, and changed destination controls.
const JOBS_CHANNEL: &str = "syncasync_jobs";

/// The payload of an announcement that a destination's controls changed (new jobs have none).
const CONTROLS_CHANGED: &str = "controls";

#[derive(Clone)]
pub struct PgStore {
    /// For writes that must be durable when they return: acceptance, sync records, admin.
    pool: PgPool,
    /// For the job life cycle (claim, heartbeat, result, attempt, release), with
    /// `synchronous_commit = off`: such a commit may be lost if PostgreSQL itself crashes
    /// (never if this process does), and losing one only repeats work or a delivery, which
    /// at-least-once delivery allows. Not waiting for the WAL flush on the three or four
    /// writes of every job is most of the queue's throughput.
    relaxed: PgPool,
    /// One connection of its own for LISTEN, which holds it for as long as it listens: taken
    /// from `pool`, it would leave a pool of one with nothing for requests.
    listen_pool: PgPool,
    /// One connection of its own for `/healthz`'s ping and write probe: behind clients
    /// reading long lists in `pool`, a busy but healthy service would report itself unhealthy.
    health_pool: PgPool,
    /// One connection of its own for vacuuming the queue's tables when autovacuum is off
    /// (`vacuum`): a vacuum takes seconds, which no request should wait behind.
    maintenance_pool: PgPool,
    /// Places for list pages in `pool`, half of it: clients paging deep into a long history
    /// take a while each, and however many of them there are, acceptance and every other
    /// write still find a connection.
    list_slots: Arc<tokio::sync::Semaphore>,
    queue_capacity: i64,
    queue_count: Arc<QueueCount>,
    /// The writes every async request makes, group-committed (see `group_writes`).
    queued: GroupCommit<NewAsyncRequest, bool>,
    results: GroupCommit<ResultWrite, bool>,
    attempts: GroupCommit<AttemptWrite, Recorded>,
    /// The last write of every sync request, group-committed as well.
    sync_ends: GroupCommit<SyncEnd, ()>,
    /// This instance's marks of itself as alive: only while they have succeeded for a
    /// while, and lately, are other instances' old marks a sign they are gone.
    marks: Arc<std::sync::Mutex<Marks>>,
}

/// Most writes in one group-committed statement: bounds the latency a write waits for the
/// batch ahead of it, and the size of one statement's parameters.
const MAX_GROUP: usize = 256;

/// Group-committed statements of one kind running at once. One: the next batch gathers while
/// it runs, so batches grow with the load, and a commit's fixed cost (a transaction, a WAL
/// flush, the counting trigger) is shared by as many writes as waited. A second batch in
/// flight halved the batches and cost PostgreSQL a third more CPU a sync request
/// (bench/results/pg-group-commits.md).
const GROUPS_IN_FLIGHT: usize = 1;

/// Shortest time between two announcements of new jobs by one instance.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(20);

/// `/healthz`'s write probe: one row, written again.
pub(super) const PROBE_WRITE: &str = "INSERT INTO write_probe (id, at) VALUES (1, now())
     ON CONFLICT (id) DO UPDATE SET at = excluded.at";

impl PgStore {
    pub async fn open(url: &str, queue_capacity: u64, pool_size: u32) -> StoreResult<Self> {
        // No JIT: every statement here is short, and the planner's estimates for the claims'
        // recursive CTEs (levels × destinations) pass `jit_above_cost`, so a claim that runs
        // in a millisecond was compiled for 650 ms each time (measured on PostgreSQL 15:
        // delivery fell from 1,270/s to 240/s). And no statement runs past
        // STATEMENT_TIMEOUT (migrations and vacuum lift it for their own). Appended to any
        // options the URL sets.
        let timeout = STATEMENT_TIMEOUT.as_millis().to_string();
        let options = url
            .parse::<PgConnectOptions>()?
            .options([("jit", "off"), ("statement_timeout", timeout.as_str())]);
        let pool_options = || {
            PgPoolOptions::new()
                .max_connections(pool_size)
                // A request waits this long for a connection before it is answered 503: long
                // enough for a busy pool, short enough that a client whose database has gone
                // away hears so promptly instead of hanging.
                .acquire_timeout(ACQUIRE_TIMEOUT)
        };
        // One connection first, on its own: a pool retries until its acquire timeout and then
        // says only that it timed out, where this says why (connection refused, no such
        // database, authentication failed). Bounded: a host that drops packets, or accepts
        // and never answers, would otherwise hold the start for minutes, or for ever.
        let first = <sqlx::PgConnection as sqlx::Connection>::connect_with(&options);
        match tokio::time::timeout(FIRST_CONNECT_TIMEOUT, first).await {
            Ok(connection) => sqlx::Connection::close(connection?).await?,
            Err(_) => {
                return Err(StoreError::Open(format!(
                    "no answer from the database at {}:{} within {} s",
                    options.get_host(),
                    options.get_port(),
                    FIRST_CONNECT_TIMEOUT.as_secs()
                )));
            }
        }
        let pool = pool_options().connect_with(options.clone()).await?;
        let relaxed = pool_options()
            .connect_with(options.clone().options([("synchronous_commit", "off")]))
            .await?;
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options.clone());
        let health_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        let maintenance_pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(vacuum::session(options));
        let schema_before = migrate(&pool).await?;
        if schema_before > 0 && schema_before < DESTINATIONS_RECORDED {
            backfill_destinations(&pool).await?;
        }
        let queued = GroupCommit::start(
            InsertQueued {
                pool: pool.clone(),
                last_notify: Arc::new(std::sync::Mutex::new(None)),
            },
            MAX_GROUP,
            GROUPS_IN_FLIGHT,
        );
        let results = GroupCommit::start(
            StoreResults {
                pool: relaxed.clone(),
            },
            MAX_GROUP,
            GROUPS_IN_FLIGHT,
        );
        let attempts = GroupCommit::start(
            RecordAttempts {
                pool: relaxed.clone(),
            },
            MAX_GROUP,
            GROUPS_IN_FLIGHT,
        );
        let sync_ends = GroupCommit::start(
            FinishSync { pool: pool.clone() },
            MAX_GROUP,
            GROUPS_IN_FLIGHT,
        );
        Ok(Self {
            pool,
            relaxed,
            listen_pool,
            health_pool,
            maintenance_pool,
            list_slots: Arc::new(tokio::sync::Semaphore::new((pool_size as usize / 2).max(1))),
            queued,
            results,
            attempts,
            sync_ends,
            queue_capacity: i64::try_from(queue_capacity).unwrap_or(i64::MAX),
            queue_count: Arc::new(QueueCount::new()),
            marks: Arc::default(),
        })
    }

    async fn try_listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.listen_pool).await?;
        listener.listen(JOBS_CHANNEL).await?;
        Ok(listener)
    }

    /// Records a sync request as `processing`; false if nothing was written (its id or its
    /// idempotency key is taken).
    async fn insert_sync_started(&self, new: &NewRequest, owner: &str) -> StoreResult<bool> {
        let (key, fingerprint) = new.key_columns();
        // No conflict target: a taken id (a retried write) or a taken key both insert nothing.
        let inserted = sqlx::query(INSERT_SYNC_STARTED)
            .bind(&new.id)
            .bind(&new.payload_hash)
            .bind(i64::from(new.iterations))
            .bind(new.created_at)
            .bind(key)
            .bind(fingerprint)
            .bind(new.trace.as_ref().map(|t| t.traceparent.as_str()))
            .bind(new.trace.as_ref().and_then(|t| t.tracestate.as_deref()))
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        Ok(inserted.is_some())
    }

    /// The request holding `new`'s idempotency key, other than `new` itself.
    async fn key_taken(&self, new: &NewRequest) -> StoreResult<Option<Submitted>> {
        let Some(idempotency) = &new.idempotency else {
            return Ok(None);
        };
        Ok(self
            .key_holder(&idempotency.key)
            .await?
            .filter(|holder| holder.id != new.id)
            .map(Submitted::KeyTaken))
    }
}

impl Backend for PgStore {
    /// Any number of instances may share the database and its queue.
    fn has_other_instances(&self) -> bool {
        true
    }

    fn sync_started(&self, new: NewRequest, owner: &str) -> StoreResult<()> {
        let store = self.clone();
        let owner = owner.to_owned();
        tokio::spawn(async move {
            if let Err(err) = store.insert_sync_started(&new, &owner).await {
                tracing::warn!(error = %err, "recording a sync request as processing failed");
            }
        });
        Ok(())
    }

    /// Listens for new-job announcements from every instance and calls `wake` for each,
    /// until `stop`. Reconnects if the connection drops (sqlx's listener does that itself).
    async fn maintain(&self, stop: CancellationToken) {
        vacuum::keep_vacuumed(self.maintenance_pool.clone(), self.pool.clone(), stop).await;
    }

    async fn listen(&self, wake: impl Fn(Announced) + Send + 'static, stop: CancellationToken) {
        let mut listener = loop {
            match self.try_listen().await {
                Ok(listener) => break listener,
                Err(err) => {
                    tracing::error!(error = %err, "cannot LISTEN for new jobs; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        };
        loop {
            tokio::select! {
                notification = listener.recv() => match notification {
                    Ok(heard) if heard.payload() == CONTROLS_CHANGED => wake(Announced::Controls),
                    Ok(_) => wake(Announced::Jobs),
                    Err(err) => {
                        tracing::warn!(error = %err, "job notifications interrupted");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                () = stop.cancelled() => return,
            }
        }
    }

    async fn sync_started_with_key(&self, new: NewRequest, owner: &str) -> StoreResult<Submitted> {
        // The request holding the key may be deleted (retention) between the insert that
        // found the key taken and the read of its holder: then the key is free; try again.
        for _ in 0..3 {
            if self.insert_sync_started(&new, owner).await? {
                return Ok(Submitted::Created);
            }
            if let Some(taken) = self.key_taken(&new).await? {
                return Ok(taken);
            }
        }
        Err(StoreError::Unavailable(
            "an idempotency key kept changing hands".into(),
        ))
    }

    async fn key_holder(&self, key: &str) -> StoreResult<Option<KeyHolder>> {
        let holder: Option<(String, Option<String>)> = sqlx::query_as(KEY_HOLDER)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(holder.map(|(id, fingerprint)| KeyHolder {
            id,
            fingerprint: fingerprint.unwrap_or_default(),
        }))
    }

    /// Status and attempts of each of `ids` still stored: what a waiter's wake-up depends on.
    async fn versions(&self, ids: &[String]) -> StoreResult<Vec<(String, (Status, u32))>> {
        let mut versions = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            let rows: Vec<(String, String, i32)> = sqlx::query_as(VERSIONS)
                .bind(chunk)
                .fetch_all(&self.pool)
                .await?;
            for (id, status, attempts) in rows {
                if let Some(status) = Status::parse(&status) {
                    versions.push((id, (status, u32::try_from(attempts).unwrap_or(0))));
                }
            }
        }
        Ok(versions)
    }

    async fn sync_finished(
        &self,
        new: &NewRequest,
        outcome: Result<&WorkResult, &str>,
    ) -> StoreResult<()> {
        self.sync_ends
            .write(SyncEnd {
                request: new.clone(),
                outcome: outcome.cloned().map_err(str::to_string),
            })
            .await
    }

    async fn submit_async(&self, new: NewAsyncRequest) -> StoreResult<Submitted> {
        // A replay is answered whatever the queue: it asks for nothing new.
        if let Some(taken) = self.key_taken(&new.request).await? {
            return Ok(taken);
        }
        // As for sync requests, a key's holder may vanish between the conflict and its read.
        for _ in 0..3 {
            let reservation = self.reserve_place().await?;
            match self.queued.write(new.clone()).await {
                Ok(true) => return Ok(Submitted::Created),
                Ok(false) => {
                    reservation.failed();
                    if let Some(taken) = self.key_taken(&new.request).await? {
                        return Ok(taken);
                    }
                }
                Err(err) => {
                    reservation.failed();
                    return Err(err);
                }
            }
        }
        Err(StoreError::Unavailable(
            "an idempotency key kept changing hands".into(),
        ))
    }

    /// Queues every request of `batch` in one statement (one transaction), or none of them
    /// ([`StoreError::QueueFull`]) when they do not all fit. Not group-committed: it is a
    /// group already, and all-or-nothing.
    async fn submit_batch(&self, batch: &[NewAsyncRequest]) -> StoreResult<()> {
        let places = i64::try_from(batch.len()).unwrap_or(i64::MAX);
        let reservation = self.reserve_places(places).await?;
        // Batch items carry no idempotency keys, so every row is inserted; one announcement
        // for the whole batch.
        if let Err(err) = group_writes::insert_queued(batch, true)
            .execute(&self.pool)
            .await
        {
            reservation.failed();
            return Err(err.into());
        }
        Ok(())
    }

    async fn claim_due(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
        priority_step: Duration,
        rooms: &Rooms,
    ) -> StoreResult<Vec<Job>> {
        self.claim(owner, limit, lease, priority_step, rooms).await
    }

    async fn heartbeat(
        &self,
        owner: &str,
        tokens: &[String],
        lease: Duration,
    ) -> StoreResult<Leases> {
        self.renew_leases(owner, tokens, lease).await
    }

    async fn next_due_in(&self, owner: &str, rooms: &Rooms) -> StoreResult<Option<Duration>> {
        self.next_due(owner, rooms).await
    }

    async fn store_result(&self, id: &str, token: &str, work: &FinishedWork) -> StoreResult<bool> {
        self.results
            .write(ResultWrite {
                id: id.to_owned(),
                token: token.to_owned(),
                work: work.clone(),
            })
            .await
    }

    async fn record_attempt(
        &self,
        id: &str,
        owner: &str,
        token: &str,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> StoreResult<Recorded> {
        self.attempts
            .write(AttemptWrite {
                id: id.to_owned(),
                owner: owner.to_owned(),
                token: token.to_owned(),
                attempt: attempt.clone(),
                outcome,
            })
            .await
    }

    async fn give_up(&self, id: &str, token: &str, reason: &str) -> StoreResult<bool> {
        let updated = sqlx::query(GIVE_UP)
            .bind(id)
            .bind(token)
            .bind(reason)
            .bind(Utc::now())
            .execute(&self.pool)
            .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn redeliver(&self, id: &str) -> StoreResult<Redelivery> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, bool)> = sqlx::query_as(REDELIVERY_OF)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((status, work_done)) = row else {
            return Ok(Redelivery::NotFound);
        };
        let status = parse_status(&status)?;
        let Some(next) = Transition::Redelivered { work_done }.status_after(Some(status)) else {
            return Ok(Redelivery::WrongStatus(status));
        };
        // The place is held as a submission's is, so that this instance's submissions that
        // follow (or run alongside) count it; the count taken here becomes the instance's.
        let reservation = self.reserve_counted_on(&mut tx).await?;
        // A new round: the retry budget counts from the attempts made so far.
        sqlx::query(REDELIVER)
            .bind(id)
            .bind(next.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(JOBS_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        drop(reservation);
        Ok(Redelivery::Queued)
    }

    async fn unpark(&self, key: Option<&str>) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        if key.is_none() {
            sqlx::query(RELEASE_ENDED_CLAIMS).execute(&mut *tx).await?;
        }
        let unparked = match key {
            Some(key) => sqlx::query(UNPARK_KEY).bind(key),
            None => sqlx::query(UNPARK_STRANDED),
        }
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if unparked > 0 {
            // Another instance may be the one with free workers.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(JOBS_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(unparked)
    }

    async fn make_due(&self, id: &str) -> StoreResult<MadeDue> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, String, bool, bool)> = sqlx::query_as(MAKE_DUE_OF)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((mode, status, claimed, behind_earlier)) = row else {
            return Ok(MadeDue::NotFound);
        };
        // The mode column admits only the model's modes.
        let mode = Mode::parse(&mode).unwrap_or(Mode::Sync);
        if let Err(answer) = MadeDue::decide(mode, parse_status(&status)?, claimed, behind_earlier)
        {
            return Ok(answer);
        }
        sqlx::query(MAKE_DUE).bind(id).execute(&mut *tx).await?;
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(JOBS_CHANNEL)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(MadeDue::Due)
    }

    async fn cancel(&self, id: &str) -> StoreResult<Cancellation> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, String, bool, bool)> = sqlx::query_as(CANCEL_OF)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((mode, status, claimed, was_in_flight)) = row else {
            return Ok(Cancellation::NotFound);
        };
        // The mode column admits only the model's modes.
        let mode = Mode::parse(&mode).unwrap_or(Mode::Sync);
        let in_flight = match Cancellation::decide(mode, parse_status(&status)?, claimed) {
            Ok(in_flight) => in_flight,
            Err(answer) => return Ok(answer.repeated(was_in_flight)),
        };
        sqlx::query(CANCEL)
            .bind(id)
            .bind(Utc::now())
            .bind(in_flight)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Cancellation::Cancelled {
            in_flight,
            by_this_call: true,
        })
    }

    async fn control_destination(
        &self,
        destination: &str,
        change: ControlChange,
    ) -> StoreResult<Controlled> {
        self.control(destination, change).await
    }

    async fn destination_controls(&self, owner: &str) -> StoreResult<ControlsRead> {
        self.controls(owner).await
    }

    async fn release(&self, owner: &str) -> StoreResult<u64> {
        // A job handed back untouched does not count as a claim without an outcome.
        let released = sqlx::query(RELEASE)
            .bind(owner)
            .execute(&self.relaxed)
            .await?;
        if released.rows_affected() > 0 {
            // Wake the other instances: the released jobs are due now.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(JOBS_CHANNEL)
                .execute(&self.relaxed)
                .await?;
        }
        Ok(released.rows_affected())
    }

    async fn get(&self, id: &str) -> StoreResult<Option<RequestRecord>> {
        // Read apart, an attempt recorded between the two would be listed without being
        // counted in `callback_attempts`.
        let mut tx = self.pool.begin_with(READ_SNAPSHOT).await?;
        let Some(row) = sqlx::query(RECORD_BY_ID)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let mut record = record_from_row(&row)?;
        let attempts = sqlx::query(ATTEMPTS_OF)
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        record.attempts = Some(
            attempts
                .iter()
                .map(attempt_from_row)
                .collect::<Result<Vec<_>, _>>()?,
        );
        Ok(Some(record))
    }

    async fn list(&self, filter: ListFilter) -> StoreResult<RequestList> {
        self.list_page(filter).await
    }

    async fn position(&self, id: &str) -> StoreResult<Option<Position>> {
        let row = sqlx::query(POSITION_OF)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| position_of(&row)).transpose()
    }

    async fn status_counts(&self) -> StoreResult<StatusCounts> {
        let rows: Vec<(String, i64)> = sqlx::query_as(STATUS_COUNTS).fetch_all(&self.pool).await?;
        let mut counts = Vec::with_capacity(rows.len());
        for (status, n) in rows {
            counts.push((parse_status(&status)?, u64::try_from(n).unwrap_or(0)));
        }
        Ok(counts)
    }

    async fn explain_hot(&self) -> StoreResult<Vec<StatementPlan>> {
        plans::explain_hot(&self.pool).await
    }

    fn pool_stats(&self) -> PoolStats {
        let idle = (self.pool.num_idle() + self.relaxed.num_idle()) as u64;
        PoolStats {
            in_use: u64::from(self.pool.size() + self.relaxed.size()).saturating_sub(idle),
            idle,
            writer_queue: 0,
            engine_memory: 0,
        }
    }

    async fn queue_size(&self) -> StoreResult<u64> {
        Ok(u64::try_from(self.count_queue().await?).unwrap_or(0))
    }

    async fn due_unclaimed(&self, destinations: Vec<String>, cap: u32) -> StoreResult<Vec<u64>> {
        let counts: Vec<i64> = sqlx::query_scalar(DUE_UNCLAIMED)
            .bind(&destinations)
            .bind(i64::from(cap))
            .fetch_all(&self.pool)
            .await?;
        Ok(counts
            .into_iter()
            .map(|n| u64::try_from(n).unwrap_or(0))
            .collect())
    }

    async fn probe_write(&self) -> StoreResult<()> {
        sqlx::query(PROBE_WRITE).execute(&self.health_pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), String> {
        let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.health_pool);
        within_ping_timeout(ping)
            .await?
            .map(|_| ())
            .map_err(|err| err.to_string())
    }

    // SKIP LOCKED: instances cleaning at the same time take different rows instead of
    // waiting on each other. The rows are picked once (a materialised CTE), as in a claim.
    async fn delete_expired(
        &self,
        retention: Duration,
        chunk: u64,
        from: DateTime<Utc>,
    ) -> StoreResult<Swept> {
        let created: Vec<DateTime<Utc>> = sqlx::query_scalar(DELETE_EXPIRED)
            .bind(retention.as_secs_f64())
            .bind(i64::try_from(chunk).unwrap_or(i64::MAX))
            .bind(from)
            .fetch_all(&self.pool)
            .await?;
        Ok(Swept::of(created))
    }

    /// One instance at a time (an advisory lock held by each chunk's transaction): the
    /// count of finished requests read in the chunk then includes every other chunk's
    /// deletions, so instances cleaning together never delete past the limit.
    async fn delete_over_limit(
        &self,
        max_stored: u64,
        chunk: u64,
        from: DateTime<Utc>,
    ) -> StoreResult<Swept> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CLEANUP_LOCK)
            .execute(&mut *tx)
            .await?;
        let created: Vec<DateTime<Utc>> = sqlx::query_scalar(DELETE_OVER_LIMIT)
            .bind(i64::try_from(max_stored).unwrap_or(i64::MAX))
            .bind(i64::try_from(chunk).unwrap_or(i64::MAX))
            .bind(from)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Swept::of(created))
    }

    /// Sync requests left `processing` by an instance that died mid-request.
    async fn fail_stale_sync(&self, older_than: Duration) -> StoreResult<u64> {
        let owners_known = self.marks.lock().is_ok_and(|marks| marks.trusted());
        let failed = sqlx::query(FAIL_STALE_SYNC)
            .bind(older_than.as_secs_f64())
            .bind(ABANDONED_SYNC_ERROR)
            .bind(SYNC_OWNER_GONE_AFTER.as_secs_f64())
            .bind(owners_known)
            .execute(&self.pool)
            .await?;
        Ok(failed.rows_affected())
    }

    async fn mark_alive(&self, owner: &str) -> StoreResult<()> {
        // Its own connection, as `/healthz`'s: not behind clients' long reads in `pool`. A
        // mark that does not answer in time failed: the database may be cut off.
        let mark = sqlx::query(MARK_ALIVE)
            .bind(owner)
            .execute(&self.health_pool);
        let marked = match within_ping_timeout(mark).await {
            Ok(done) => done.map(|_| ()).map_err(StoreError::from),
            Err(reason) => Err(StoreError::Unavailable(reason)),
        };
        if let Ok(mut marks) = self.marks.lock() {
            marks.record(marked.is_ok());
        }
        marked
    }

    async fn close(&self) {
        // A pool closes once every connection is back, and one whose query was dropped
        // mid-flight (a vacuum cancelled at shutdown) may never come back: the shutdown
        // does not wait on it past `POOL_CLOSE_WAIT`; the process's exit closes its socket.
        for (name, pool) in [
            ("listen", &self.listen_pool),
            ("health", &self.health_pool),
            ("maintenance", &self.maintenance_pool),
            ("main", &self.pool),
            ("relaxed", &self.relaxed),
        ] {
            if tokio::time::timeout(POOL_CLOSE_WAIT, pool.close())
                .await
                .is_err()
            {
                tracing::warn!(
                    pool = name,
                    "a database connection was still in use at shutdown; left to the exit to close"
                );
            }
        }
    }
}

/// Failures that are the database's rather than a request's: it cannot be reached, it is
/// shutting down or starting (class 57P), the connection broke (class 08), it ran out of
/// resources such as disk or connections (class 53), it takes no writes (25006), or the pool
/// found no connection in time.
pub(super) fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        // And a read-only server (25006: a standby, a demoted primary after a failover):
        // writes fail until the service reaches a primary again.
        // And a statement cancelled past its `statement_timeout` (57014): the database is
        // too slow to answer now.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code == "25006"
                || code == "57014"
                || ["08", "53", "57P", "58"]
                    .iter()
                    .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{MARK_FRESH, MARKS_SETTLE, Marks, SYNC_OWNER_GONE_AFTER};

    fn ago(seconds: u64) -> Option<Instant> {
        Instant::now().checked_sub(Duration::from_secs(seconds))
    }

    #[test]
    fn others_marks_are_trusted_only_after_a_long_and_recent_run_of_ones_own() {
        let long = (SYNC_OWNER_GONE_AFTER + MARKS_SETTLE).as_secs() + 1;
        assert!(!Marks::default().trusted(), "no mark yet");
        let run = |since, last| Marks { since, last }.trusted();
        assert!(run(ago(long), ago(0)));
        assert!(!run(ago(long - 2), ago(0)), "a run too short");
        assert!(
            !run(ago(long), ago(MARK_FRESH.as_secs() + 1)),
            "marks that stopped answering"
        );

        let mut marks = Marks {
            since: ago(long),
            last: ago(0),
        };
        marks.record(false);
        assert!(!marks.trusted(), "a failed mark starts the run again");
        marks.record(true);
        assert!(!marks.trusted());
        assert!(
            marks
                .since
                .is_some_and(|since| since.elapsed() < Duration::from_secs(1))
        );
    }
}
