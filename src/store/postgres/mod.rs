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
//! - the queue bound is checked against a count of unfinished rows at most 100 ms old (1 s
//!   while more than half the queue is free; taken afresh near the bound) plus this instance's own submissions since, each of which
//!   reserves its place before it is inserted: one instance never exceeds the bound. Other
//!   instances' submissions since the count are not seen, so with K instances the queue can
//!   hold up to K × the bound in the worst case (each instance filling what it saw as free
//!   within one count's lifetime); an exact shared bound would serialise every submission on
//!   one counter row, and a count per submission scans the whole queue each time.
//! - time comes from the database (`now()`) wherever instances compare it: due times, lease
//!   expiries and retention are computed in SQL from delays, so a skewed clock on one
//!   instance cannot delay or hurry the cluster.

mod group_writes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use tokio_util::sync::CancellationToken;

use self::group_writes::{AttemptWrite, InsertQueued, RecordAttempts, ResultWrite, StoreResults};
use super::backend::Backend;
use super::due::{NEXT_DUE_WINDOW, RoomLeft, earliest, next_due_in_window};
use super::group_commit::GroupCommit;
use super::rows::{self, JobColumns, RecordColumns, ResultColumns};
use super::{
    ABANDONED_SYNC_ERROR, AttemptOutcome, Dialect, Job, KeyHolder, ListFilter, ListParam,
    NewAsyncRequest, NewRequest, PoolStats, Position, Redelivery, StatusCounts, StoreError,
    StoreResult, Submitted, Transition, applied_migrations, claim_scan, list_conditions,
    sync_outcome,
};
use crate::delivery::destinations::{Rooms, destination_of_str};
use crate::model::{DeliveryAttempt, RequestList, RequestRecord, Status, WorkResult};

/// Schema migrations, applied in order and recorded in `schema_migrations`.
/// `dests (dest)`: each destination with queued jobs, one index seek each (a loose index scan
/// of `requests_destination_due`), ending in a NULL row. For a `WITH RECURSIVE`.
macro_rules! destinations_cte {
    () => {
        "dests AS (
             (SELECT destination AS dest FROM requests
              WHERE next_attempt_at IS NOT NULL AND destination IS NOT NULL
              ORDER BY destination LIMIT 1)
             UNION ALL
             SELECT (SELECT destination FROM requests
                     WHERE next_attempt_at IS NOT NULL AND destination > d.dest
                     ORDER BY destination LIMIT 1)
             FROM dests AS d WHERE d.dest IS NOT NULL)"
    };
}

/// Leases the rows of `picked (picked_id)` to owner `$1` for `$2` seconds, each with a token of
/// its own, and returns them (the job columns follow).
macro_rules! claim_picked {
    () => {
        "UPDATE requests AS r
         SET status = CASE r.status WHEN 'pending' THEN 'processing' ELSE r.status END,
             lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2),
             lease_token = gen_random_uuid()::text,
             unrecorded_claims = r.unrecorded_claims + 1
         FROM picked WHERE r.id = picked.picked_id
         RETURNING "
    };
}

const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/postgres/0001_requests.sql"),
    include_str!("../../../migrations/postgres/0002_claims.sql"),
    include_str!("../../../migrations/postgres/0003_destinations.sql"),
    include_str!("../../../migrations/postgres/0004_destination_index.sql"),
    include_str!("../../../migrations/postgres/0005_idempotency.sql"),
];

/// Any constant shared by all instances: the advisory lock that serialises migrations.
const MIGRATION_LOCK: i64 = 0x5359_4e43_4153_594e; // "SYNCASYN"

/// Longest wait for a pooled connection (see `open`).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The channel new jobs are announced on.
const JOBS_CHANNEL: &str = "syncasync_jobs";

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
    queue_capacity: i64,
    queue_count: Arc<QueueCount>,
    /// The writes every async request makes, group-committed (see `group_writes`).
    queued: GroupCommit<NewAsyncRequest, bool>,
    results: GroupCommit<ResultWrite, bool>,
    attempts: GroupCommit<AttemptWrite, bool>,
}

/// Most writes in one group-committed statement: bounds the latency a write waits for the
/// batch ahead of it, and the size of one statement's parameters.
const MAX_GROUP: usize = 256;

/// Group-committed statements of one kind running at once, each on a connection of its own:
/// two keep the database busy while a batch gathers, and leave the pool to everything else.
const GROUPS_IN_FLIGHT: usize = 2;

/// Shortest time between two announcements of new jobs by one instance.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(20);

/// This instance's view of the number of unfinished async requests. Counting is a scan of the
/// whole queue, too dear for every submission under load, so a submission relies on a count
/// up to [`COUNT_MAX_AGE`] old ([`COUNT_MAX_AGE_FAR`] while more than half the queue is
/// free) plus every submission this instance made since it was taken
/// (committed, or still in flight: a place is reserved before the insert). Near the bound
/// the count is taken afresh, so a stale count never refuses a request there is room for.
struct QueueCount {
    state: std::sync::Mutex<CountState>,
    /// One recount at a time: submissions arriving during a recount wait for its result.
    recount: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct CountState {
    /// Unfinished rows at the last count.
    counted: i64,
    counted_at: Option<Instant>,
    /// Submissions this instance has completed, ever; and as of the start of the last count.
    /// Those completed since the count started may or may not be in it: both are counted,
    /// which can only over-estimate.
    accepted: i64,
    accepted_at_count: i64,
    /// Reserved places whose insert has not finished.
    in_flight: i64,
}

impl QueueCount {
    fn lock(&self) -> std::sync::MutexGuard<'_, CountState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CountState {
    fn estimate(&self) -> i64 {
        self.counted + (self.accepted - self.accepted_at_count) + self.in_flight
    }

    /// Takes `counted`, a count of the queue that started when this instance had accepted
    /// `accepted_before` submissions, as the count from now on.
    fn set_count(&mut self, counted: i64, accepted_before: i64) {
        self.counted = counted;
        self.accepted_at_count = accepted_before;
        self.counted_at = Some(Instant::now());
    }
}

impl QueueCount {
    /// Holds `places` places, under the lock that checked there is room for them.
    fn hold(self: &Arc<Self>, state: &mut CountState, places: i64) -> Reservation {
        state.in_flight += places;
        Reservation {
            count: Arc::clone(self),
            places,
            failed: false,
        }
    }
}

/// The unfinished async requests: every job that still has a due time.
const COUNT_QUEUE: &str = "SELECT count(*) FROM requests WHERE next_attempt_at IS NOT NULL";

/// How old a queue count a submission may rely on when it would fill more than half the
/// queue. (Only other instances' submissions since the count are missing from the estimate:
/// near the bound, they are what a fresh count is for.)
const COUNT_MAX_AGE: Duration = Duration::from_millis(100);

/// How old a queue count a submission may rely on when it leaves more than half the queue
/// free. A count is a scan of the queue: taken ten times a second, it cost an instance a
/// tenth of a core under load (measured: 13 ms per count with 50k rows not yet vacuumed).
const COUNT_MAX_AGE_FAR: Duration = Duration::from_secs(1);

/// At the bound, the shortest time between two recounts: refused submissions must not turn
/// into a scan of the queue each.
const RECOUNT_AT_BOUND: Duration = Duration::from_millis(10);

/// Places in the queue held for one submission (one request, or a batch). Dropped without
/// [`Reservation::failed`] (committed, or abandoned mid-insert, which may still commit), they
/// count as accepted.
struct Reservation {
    count: Arc<QueueCount>,
    places: i64,
    failed: bool,
}

impl Reservation {
    fn failed(mut self) {
        self.failed = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut state = self.count.lock();
        state.in_flight -= self.places;
        if !self.failed {
            state.accepted += self.places;
        }
    }
}

impl PgStore {
    pub async fn open(url: &str, queue_capacity: u64, pool_size: u32) -> StoreResult<Self> {
        let options: PgConnectOptions = url.parse()?;
        let pool_options = || {
            PgPoolOptions::new()
                .max_connections(pool_size)
                // A request waits this long for a connection before it is answered 503: long
                // enough for a busy pool, short enough that a client whose database has gone
                // away hears so promptly instead of hanging.
                .acquire_timeout(ACQUIRE_TIMEOUT)
        };
        let pool = pool_options().connect_with(options.clone()).await?;
        let relaxed = pool_options()
            .connect_with(options.clone().options([("synchronous_commit", "off")]))
            .await?;
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        migrate(&pool).await?;
        backfill_destinations(&pool).await?;
        let in_flight = GROUPS_IN_FLIGHT.min(pool_size as usize / 2).max(1);
        let queued = GroupCommit::start(
            InsertQueued {
                pool: pool.clone(),
                last_notify: Arc::new(std::sync::Mutex::new(None)),
            },
            MAX_GROUP,
            in_flight,
        );
        let results = GroupCommit::start(
            StoreResults {
                pool: relaxed.clone(),
            },
            MAX_GROUP,
            in_flight,
        );
        let attempts = GroupCommit::start(
            RecordAttempts {
                pool: relaxed.clone(),
            },
            MAX_GROUP,
            in_flight,
        );
        Ok(Self {
            pool,
            relaxed,
            listen_pool,
            queued,
            results,
            attempts,
            queue_capacity: i64::try_from(queue_capacity).unwrap_or(i64::MAX),
            queue_count: Arc::new(QueueCount {
                state: std::sync::Mutex::new(CountState::default()),
                recount: tokio::sync::Mutex::new(()),
            }),
        })
    }

    async fn try_listen(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.listen_pool).await?;
        listener.listen(JOBS_CHANNEL).await?;
        Ok(listener)
    }

    /// Records a sync request as `processing`; false if nothing was written (its id or its
    /// idempotency key is taken).
    async fn insert_sync_started(&self, new: &NewRequest) -> StoreResult<bool> {
        let (key, fingerprint) = new.key_columns();
        // No conflict target: a taken id (a retried write) or a taken key both insert nothing.
        let inserted = sqlx::query(
            "INSERT INTO requests (id, mode, status, payload_hash, iterations, created_at,
                                   idempotency_key, idempotency_fingerprint)
             VALUES ($1, 'sync', 'processing', $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING
             RETURNING id",
        )
        .bind(&new.id)
        .bind(&new.payload_hash)
        .bind(i64::from(new.iterations))
        .bind(new.created_at)
        .bind(key)
        .bind(fingerprint)
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

    /// Holds a place in the queue for one submission, or refuses with
    /// [`StoreError::QueueFull`]. The check and the reservation happen under one lock, so
    /// concurrent submissions to this instance cannot all see the same free place.
    async fn reserve_place(&self) -> StoreResult<Reservation> {
        self.reserve_places(1).await
    }

    /// Holds `places` places in the queue, all or none.
    async fn reserve_places(&self, places: i64) -> StoreResult<Reservation> {
        let mut recounted = false;
        loop {
            let count_age = {
                let mut state = self.queue_count.lock();
                let age = state.counted_at.map(|at| at.elapsed());
                let after = state.estimate().saturating_add(places);
                let max_age = if after <= self.queue_capacity / 2 {
                    COUNT_MAX_AGE_FAR
                } else {
                    COUNT_MAX_AGE
                };
                let fresh = age.is_some_and(|age| age <= max_age);
                if fresh && after <= self.queue_capacity {
                    return Ok(self.queue_count.hold(&mut state, places));
                }
                if recounted || (fresh && age.is_some_and(|age| age < RECOUNT_AT_BOUND)) {
                    return Err(StoreError::QueueFull);
                }
                age
            };
            self.recount(count_age).await?;
            recounted = true;
        }
    }

    /// Holds one place in the queue given `counted`, a count of the queue just taken (with
    /// `accepted_before` this instance's acceptances as it started), which becomes this
    /// instance's count; or refuses with [`StoreError::QueueFull`].
    fn reserve_after_count(&self, counted: i64, accepted_before: i64) -> StoreResult<Reservation> {
        let mut state = self.queue_count.lock();
        state.set_count(counted, accepted_before);
        if state.estimate().saturating_add(1) > self.queue_capacity {
            return Err(StoreError::QueueFull);
        }
        Ok(self.queue_count.hold(&mut state, 1))
    }

    /// Counts the queue again, unless another submission did so while this one waited.
    async fn recount(&self, seen_age: Option<Duration>) -> StoreResult<()> {
        let _one_at_a_time = self.queue_count.recount.lock().await;
        let accepted_before = {
            let state = self.queue_count.lock();
            let age = state.counted_at.map(|at| at.elapsed());
            if age < seen_age || (seen_age.is_none() && age.is_some()) {
                return Ok(());
            }
            state.accepted
        };
        let counted = self.count_queue().await?;
        self.queue_count.lock().set_count(counted, accepted_before);
        Ok(())
    }

    async fn count_queue(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(COUNT_QUEUE)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Claims as [`claim_due`](Self::claim_due) does, but looking at each destination's due
    /// jobs on their own (a seek per destination, through `requests_destination_due`), past
    /// `already` (this claim's first statement's jobs: their lease may have run out by this
    /// statement's clock if it is very short, and a claim must not hand a job out twice).
    async fn claim_per_destination(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
        rooms: &Rooms,
        already: &[&str],
    ) -> StoreResult<Vec<Job>> {
        let rows = sqlx::query(concat!(
            "WITH RECURSIVE ",
            destinations_cte!(),
            ",
             candidates AS MATERIALIZED (
                 SELECT c.id, c.next_attempt_at FROM dests AS d
                 CROSS JOIN LATERAL (
                     SELECT id, next_attempt_at FROM requests
                     WHERE destination = d.dest AND next_attempt_at IS NOT NULL
                       AND next_attempt_at <= CASE WHEN d.dest = ANY($5)
                                                   THEN now() - make_interval(secs => $6)
                                                   ELSE now() END
                       AND (lease_expires_at IS NULL OR lease_expires_at < now())
                       AND NOT (id = ANY($8))
                     ORDER BY next_attempt_at
                     LIMIT LEAST(COALESCE(($4::jsonb ->> d.dest)::int, $7), $3)
                     FOR UPDATE SKIP LOCKED) AS c
                 WHERE d.dest IS NOT NULL),
             picked AS MATERIALIZED (
                 SELECT id AS picked_id FROM candidates ORDER BY next_attempt_at LIMIT $3)
             ",
            claim_picked!(),
            job_columns!()
        ))
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(i64::from(limit))
        .bind(rooms.to_json())
        .bind(&rooms.held)
        .bind(rooms.overdue.as_secs_f64())
        .bind(i64::from(rooms.default))
        .bind(already)
        .fetch_all(&self.relaxed)
        .await?;
        Ok(rows
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()?)
    }
}

impl Backend for PgStore {
    /// Any number of instances may share the database and its queue.
    fn has_other_instances(&self) -> bool {
        true
    }

    fn sync_started(&self, new: NewRequest) -> StoreResult<()> {
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(err) = store.insert_sync_started(&new).await {
                tracing::warn!(error = %err, "recording a sync request as processing failed");
            }
        });
        Ok(())
    }

    /// Listens for new-job announcements from every instance and calls `wake` for each,
    /// until `stop`. Reconnects if the connection drops (sqlx's listener does that itself).
    async fn listen(&self, wake: impl Fn() + Send + 'static, stop: CancellationToken) {
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
                    Ok(_) => wake(),
                    Err(err) => {
                        tracing::warn!(error = %err, "job notifications interrupted");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                () = stop.cancelled() => return,
            }
        }
    }

    async fn sync_started_with_key(&self, new: NewRequest) -> StoreResult<Submitted> {
        // The request holding the key may be deleted (retention) between the insert that
        // found the key taken and the read of its holder: then the key is free; try again.
        for _ in 0..3 {
            if self.insert_sync_started(&new).await? {
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
        let holder: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT id, idempotency_fingerprint FROM requests WHERE idempotency_key = $1",
        )
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
            let rows: Vec<(String, String, i32)> = sqlx::query_as(
                "SELECT id, status, callback_attempts FROM requests WHERE id = ANY($1)",
            )
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
        let (status, result, error) = sync_outcome(outcome);
        sqlx::query(
            "INSERT INTO requests (id, mode, status, payload_hash, iterations, created_at,
                                   completed_at, input_hash, output_hash, processing_time_ms, error)
             VALUES ($1, 'sync', $5, $2, $3, $4, now(), $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET status = excluded.status, completed_at = excluded.completed_at,
                 input_hash = excluded.input_hash, output_hash = excluded.output_hash,
                 processing_time_ms = excluded.processing_time_ms, error = excluded.error,
                 -- A failed sync request did no work a replay could answer with: its key is
                 -- free again, for the client's retry.
                 idempotency_key = CASE excluded.status WHEN 'failed' THEN NULL
                                   ELSE requests.idempotency_key END
             -- Only a request still working ends so (SyncFinished applies to `processing`):
             -- one already failed as abandoned stays as it is, its key possibly reused.
             WHERE requests.status = 'processing'",
        )
        .bind(&new.id)
        .bind(&new.payload_hash)
        .bind(i64::from(new.iterations))
        .bind(new.created_at)
        .bind(status.as_str())
        .bind(result.map(|r| r.input_hash.as_str()))
        .bind(result.map(|r| r.output_hash.as_str()))
        .bind(result.map(|r| r.processing_time_ms))
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
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
        rooms: &Rooms,
    ) -> StoreResult<Vec<Job>> {
        // The first `scan` due rows in due order, locked, whatever their destination; of
        // those, held destinations' only when overdue; ranked within their destination; of
        // each destination at most its room. Each step is a materialised CTE, evaluated once:
        // with `WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` the planner may run the
        // subquery more than once and claim more than n rows. (Locking and ranking are
        // separate steps: PostgreSQL does not allow FOR UPDATE with window functions. Rows
        // scanned but not picked are unlocked at commit.) The outer select always yields a
        // row, so the size of the window is known even when nothing was claimed.
        let scan = claim_scan(limit);
        let rows = sqlx::query(concat!(
            "WITH scanned AS MATERIALIZED (
                 SELECT id, next_attempt_at, COALESCE(destination, '') AS dest FROM requests
                 WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= now()
                   AND (lease_expires_at IS NULL OR lease_expires_at < now())
                 ORDER BY next_attempt_at
                 LIMIT $5
                 FOR UPDATE SKIP LOCKED),
             picked AS MATERIALIZED (
                 SELECT id AS picked_id FROM (
                     SELECT id, next_attempt_at,
                            ROW_NUMBER() OVER (PARTITION BY dest ORDER BY next_attempt_at) AS rank,
                            COALESCE(($4::jsonb ->> dest)::int, $6) AS room
                     FROM scanned
                     WHERE NOT (dest = ANY($7))
                        OR next_attempt_at <= now() - make_interval(secs => $8)) AS ranked
                 WHERE rank <= room
                 ORDER BY next_attempt_at
                 LIMIT $3),
             claimed AS (",
            claim_picked!(),
            job_columns!(),
            ")
             SELECT (SELECT count(*) FROM scanned) AS window_rows, claimed.*
             FROM (SELECT 1) AS one LEFT JOIN claimed ON true"
        ))
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(i64::from(limit))
        .bind(rooms.to_json())
        .bind(i64::from(scan))
        .bind(i64::from(rooms.default))
        .bind(&rooms.held)
        .bind(rooms.overdue.as_secs_f64())
        .fetch_all(&self.relaxed)
        .await?;
        let window_rows: i64 = match rows.first() {
            Some(row) => row.try_get("window_rows")?,
            None => 0,
        };
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<String>, _>("id")?.is_some() {
                jobs.push(job_from_row(row)?);
            }
        }
        let short = jobs.len() < limit as usize;
        if short && window_rows >= i64::from(scan) {
            // The window was full and left the claim short: destinations without room (a
            // full or held destination's backlog) in front. Look destination by destination.
            let mut rest = rooms.clone();
            for job in &jobs {
                rest.take_one(&job.destination);
            }
            let claimed: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
            let more = self
                .claim_per_destination(owner, limit - jobs.len() as u32, lease, &rest, &claimed)
                .await?;
            jobs.extend(more);
        }
        Ok(jobs)
    }

    async fn heartbeat(&self, owner: &str, tokens: &[String], lease: Duration) -> StoreResult<u64> {
        let extended = sqlx::query(
            // A row a group-committed write has locked is skipped, not waited for: that write
            // is ending the claim anyway, and a heartbeat that waited could deadlock with a
            // batch locking the same rows in another order. A skipped lease is renewed on the
            // next beat, a third of the lease later.
            "UPDATE requests SET lease_expires_at = now() + make_interval(secs => $2)
             WHERE id IN (SELECT id FROM requests
                          WHERE lease_owner = $1 AND lease_token = ANY($3)
                          FOR UPDATE SKIP LOCKED)",
        )
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(tokens)
        .execute(&self.relaxed)
        .await?;
        Ok(extended.rows_affected())
    }

    async fn next_due_at(&self, rooms: &Rooms) -> StoreResult<Option<DateTime<Utc>>> {
        // Due times are compared with the database's clock, in milliseconds; the answer is
        // translated to ours.
        let window = sqlx::query(
            "SELECT COALESCE(destination, '') AS dest,
                    (extract(epoch FROM next_attempt_at) * 1000)::bigint AS due,
                    (extract(epoch FROM now()) * 1000)::bigint AS db_now
             FROM requests
             WHERE next_attempt_at IS NOT NULL
               AND (lease_expires_at IS NULL OR lease_expires_at < now())
             ORDER BY next_attempt_at LIMIT $1",
        )
        .bind(i64::from(NEXT_DUE_WINDOW))
        .fetch_all(&self.pool)
        .await?;
        let mut db_now = None;
        let mut rows = Vec::with_capacity(window.len());
        for row in &window {
            db_now = Some(row.try_get::<i64, _>("db_now")?);
            rows.push((row.try_get("dest")?, row.try_get("due")?));
        }
        let room = RoomLeft::new(rooms);
        let earliest_due = match next_due_in_window(&rows, NEXT_DUE_WINDOW, &room) {
            Ok(answer) => answer,
            Err(mut so_far) => {
                let firsts = sqlx::query(concat!(
                    "WITH RECURSIVE ",
                    destinations_cte!(),
                    "
                     SELECT d.dest,
                            (SELECT (extract(epoch FROM next_attempt_at) * 1000)::bigint
                             FROM requests
                             WHERE destination = d.dest AND next_attempt_at IS NOT NULL
                               AND (lease_expires_at IS NULL OR lease_expires_at < now())
                             ORDER BY next_attempt_at LIMIT 1) AS due
                     FROM dests AS d WHERE d.dest IS NOT NULL AND NOT (d.dest = ANY($1))"
                ))
                .bind(rooms.closed().collect::<Vec<_>>())
                .fetch_all(&self.pool)
                .await?;
                for row in &firsts {
                    let destination: String = row.try_get("dest")?;
                    if let Some(due) = row.try_get::<Option<i64>, _>("due")? {
                        so_far = earliest(so_far, room.claimable_at(&destination, due));
                    }
                }
                so_far
            }
        };
        Ok(earliest_due.map(|due| {
            let wait = due.saturating_sub(db_now.unwrap_or(due));
            Utc::now() + chrono::Duration::milliseconds(wait)
        }))
    }

    async fn store_result(&self, id: &str, token: &str, result: &WorkResult) -> StoreResult<bool> {
        self.results
            .write(ResultWrite {
                id: id.to_owned(),
                token: token.to_owned(),
                result: result.clone(),
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
    ) -> StoreResult<bool> {
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
        let updated = sqlx::query(
            "UPDATE requests SET status = 'callback_failed', completed_at = now(),
                    next_attempt_at = NULL, callback_last_error = $3, error = $3,
                    lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL
             WHERE id = $1 AND lease_token = $2",
        )
        .bind(id)
        .bind(token)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    async fn redeliver(&self, id: &str) -> StoreResult<Redelivery> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, Option<String>, bool)> = sqlx::query_as(
            "SELECT status, callback_url, output_hash IS NOT NULL FROM requests
             WHERE id = $1 FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((status, callback_url, work_done)) = row else {
            return Ok(Redelivery::NotFound);
        };
        let status = parse_status(&status)?;
        let Some(next) = Transition::Redelivered { work_done }.status_after(Some(status)) else {
            return Ok(Redelivery::WrongStatus(status));
        };
        // The place is held as a submission's is, so that this instance's submissions that
        // follow (or run alongside) count it; the count taken here becomes the instance's.
        let accepted_before = self.queue_count.lock().accepted;
        let queued: i64 = sqlx::query_scalar(COUNT_QUEUE).fetch_one(&mut *tx).await?;
        let reservation = self.reserve_after_count(queued, accepted_before)?;
        // A new round: the retry budget counts from the attempts made so far. The destination
        // is written again: a request finished before destinations were recorded has none,
        // and claims count room by it.
        sqlx::query(
            "UPDATE requests SET status = $3, completed_at = NULL, error = NULL,
                    next_attempt_at = now(), round_start_attempts = callback_attempts,
                    unrecorded_claims = 0, destination = $2
             WHERE id = $1",
        )
        .bind(id)
        .bind(destination_of_str(
            callback_url.as_deref().unwrap_or_default(),
        ))
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

    async fn release(&self, owner: &str) -> StoreResult<u64> {
        // A job handed back untouched does not count as a claim without an outcome.
        let released = sqlx::query(
            "UPDATE requests SET lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL,
                    unrecorded_claims = greatest(unrecorded_claims - 1, 0)
             WHERE lease_owner = $1",
        )
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
        let Some(row) = sqlx::query(concat!(
            "SELECT ",
            record_columns!(),
            " FROM requests WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let mut record = record_from_row(&row)?;
        let attempts = sqlx::query(concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM delivery_attempts WHERE request_id = $1 ORDER BY attempt"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        record.attempts = Some(
            attempts
                .iter()
                .map(attempt_from_row)
                .collect::<Result<Vec<_>, _>>()?,
        );
        Ok(Some(record))
    }

    async fn list(&self, filter: ListFilter) -> StoreResult<RequestList> {
        let (total_where, total_params) = list_conditions(&filter, false, &DIALECT);
        let (page_where, page_params) = list_conditions(&filter, true, &DIALECT);
        let n = page_params.len();
        // Built from the fixed fragments of `list_conditions` only; values are parameters.
        let total_sql = format!("SELECT count(*) FROM requests WHERE {total_where}");
        let page_sql = format!(
            concat!(
                "SELECT ",
                record_columns!(),
                " FROM requests WHERE {} ORDER BY created_at DESC, id DESC LIMIT ${} OFFSET ${}"
            ),
            page_where,
            n + 1,
            n + 2
        );
        let mut total = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(total_sql));
        for param in total_params {
            total = match param {
                ListParam::Text(text) => total.bind(text),
                ListParam::Time(at) => total.bind(at),
                ListParam::Int(n) => total.bind(n),
            };
        }
        let total = total.fetch_one(&self.pool).await?;
        let mut page = sqlx::query(sqlx::AssertSqlSafe(page_sql));
        for param in page_params {
            page = match param {
                ListParam::Text(text) => page.bind(text),
                ListParam::Time(at) => page.bind(at),
                ListParam::Int(n) => page.bind(n),
            };
        }
        let rows = page
            .bind(i64::from(filter.limit))
            .bind(i64::try_from(filter.offset).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        Ok(RequestList {
            total: u64::try_from(total).unwrap_or(0),
            requests: rows
                .iter()
                .map(record_from_row)
                .collect::<Result<Vec<_>, _>>()?,
        })
    }

    async fn position(&self, id: &str) -> StoreResult<Option<Position>> {
        let row = sqlx::query("SELECT created_at, id FROM requests WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| position_of(&row)).transpose()
    }

    async fn status_counts(&self) -> StoreResult<StatusCounts> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM requests GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        let mut counts = Vec::with_capacity(rows.len());
        for (status, n) in rows {
            counts.push((parse_status(&status)?, u64::try_from(n).unwrap_or(0)));
        }
        Ok(counts)
    }

    fn pool_stats(&self) -> PoolStats {
        let idle = (self.pool.num_idle() + self.relaxed.num_idle()) as u64;
        PoolStats {
            in_use: u64::from(self.pool.size() + self.relaxed.size()).saturating_sub(idle),
            idle,
            writer_queue: 0,
        }
    }

    async fn queue_size(&self) -> StoreResult<u64> {
        Ok(u64::try_from(self.count_queue().await?).unwrap_or(0))
    }

    async fn ping(&self) -> Result<(), String> {
        let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.pool);
        match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("the database did not answer within 2 s".into()),
        }
    }

    // SKIP LOCKED: instances cleaning at the same time take different rows instead of
    // waiting on each other. The rows are picked once (a materialised CTE), as in a claim.
    async fn delete_expired(&self, retention: Duration, chunk: u64) -> StoreResult<u64> {
        let deleted = sqlx::query(concat!(
            "WITH picked AS MATERIALIZED (
                 SELECT id FROM requests
                 WHERE created_at < now() - make_interval(secs => $1) AND status IN ",
            finished_statuses!(),
            " AND COALESCE(completed_at, created_at) < now() - make_interval(secs => $1)
                 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             DELETE FROM requests AS r USING picked WHERE r.id = picked.id"
        ))
        .bind(retention.as_secs_f64())
        .bind(i64::try_from(chunk).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    async fn nth_newest_finished(&self, n: u64) -> StoreResult<Option<Position>> {
        let row = sqlx::query(concat!(
            "SELECT created_at, id FROM requests WHERE status IN ",
            finished_statuses!(),
            " ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET $1"
        ))
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| position_of(&row)).transpose()
    }

    async fn delete_finished_through(&self, boundary: &Position, chunk: u64) -> StoreResult<u64> {
        let deleted = sqlx::query(concat!(
            "WITH picked AS MATERIALIZED (
                 SELECT id FROM requests
                 WHERE (created_at, id) <= ($1, $2) AND status IN ",
            finished_statuses!(),
            " ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED)
             DELETE FROM requests AS r USING picked WHERE r.id = picked.id"
        ))
        .bind(boundary.created_at)
        .bind(&boundary.id)
        .bind(i64::try_from(chunk).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    /// Sync requests left `processing` by an instance that died mid-request.
    async fn fail_stale_sync(&self, older_than: Duration) -> StoreResult<u64> {
        let failed = sqlx::query(
            "UPDATE requests SET status = 'failed', completed_at = now(),
                    error = $2, idempotency_key = NULL
             WHERE mode = 'sync' AND status = 'processing'
               AND created_at < now() - make_interval(secs => $1)",
        )
        .bind(older_than.as_secs_f64())
        .bind(ABANDONED_SYNC_ERROR)
        .execute(&self.pool)
        .await?;
        Ok(failed.rows_affected())
    }

    async fn close(&self) {
        self.listen_pool.close().await;
        self.pool.close().await;
        self.relaxed.close().await;
    }
}

/// Gives requests recorded before destinations were (schema version 3) the destination of
/// their callback URL: claims count each destination's room by it. Parsed here, as the
/// dispatcher parses it, so both count the same destination. Instances starting together may
/// both do it; the writes agree.
async fn backfill_destinations(pool: &PgPool) -> StoreResult<()> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, callback_url FROM requests
         WHERE destination IS NULL AND callback_url IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let (ids, destinations): (Vec<&str>, Vec<String>) = rows
        .iter()
        .map(|(id, url)| (id.as_str(), destination_of_str(url)))
        .unzip();
    sqlx::query(
        "UPDATE requests SET destination = d.destination
         FROM unnest($1::text[], $2::text[]) AS d (id, destination)
         WHERE requests.id = d.id AND requests.destination IS NULL",
    )
    .bind(&ids)
    .bind(&destinations)
    .execute(pool)
    .await?;
    tracing::info!(
        requests = rows.len(),
        "recorded the destinations of older requests"
    );
    Ok(())
}

async fn migrate(pool: &PgPool) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    // Instances starting together queue here; the first applies, the rest find nothing to do.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await?;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM schema_migrations")
        .fetch_one(&mut *tx)
        .await?;
    let applied = applied_migrations(applied, MIGRATIONS.len())?;
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(i32::try_from(n + 1).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await?;
        tracing::info!(version = n + 1, "applied schema migration");
    }
    tx.commit().await?;
    Ok(())
}

fn parse_status(value: &str) -> Result<Status, sqlx::Error> {
    rows::parse_status(value).map_err(|err| sqlx::Error::Decode(Box::new(err)))
}

/// This backend's spelling of list conditions.
const DIALECT: Dialect = Dialect {
    placeholder: |n| format!("${n}"),
    bytewise_text: false,
};

fn record_from_row(row: &PgRow) -> Result<RequestRecord, sqlx::Error> {
    RecordColumns {
        id: row.try_get("id")?,
        mode: row.try_get("mode")?,
        status: row.try_get("status")?,
        payload_hash: row.try_get("payload_hash")?,
        created_at: row.try_get("created_at")?,
        completed_at: row.try_get("completed_at")?,
        callback_url: row.try_get("callback_url")?,
        callback_attempts: count(row, "callback_attempts")?,
        callback_last_error: row.try_get("callback_last_error")?,
        error: row.try_get("error")?,
        result: result_columns(row)?,
    }
    .into_record()
    .map_err(|err| sqlx::Error::Decode(Box::new(err)))
}

fn result_columns(row: &PgRow) -> Result<ResultColumns, sqlx::Error> {
    Ok(ResultColumns {
        input_hash: row.try_get("input_hash")?,
        output_hash: row.try_get("output_hash")?,
        processing_time_ms: row.try_get("processing_time_ms")?,
        iterations: count(row, "iterations")?,
    })
}

fn job_from_row(row: &PgRow) -> Result<Job, sqlx::Error> {
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
    }
    .into_job())
}

/// A non-negative `INTEGER` column as a count.
fn count(row: &PgRow, column: &str) -> Result<u32, sqlx::Error> {
    Ok(u32::try_from(row.try_get::<i32, _>(column)?).unwrap_or(0))
}

fn attempt_from_row(row: &PgRow) -> Result<DeliveryAttempt, sqlx::Error> {
    Ok(DeliveryAttempt {
        attempt: u32::try_from(row.try_get::<i32, _>("attempt")?).unwrap_or(0),
        started_at: row.try_get("started_at")?,
        duration_ms: row.try_get("duration_ms")?,
        status_code: row
            .try_get::<Option<i32>, _>("status_code")?
            .and_then(|c| u16::try_from(c).ok()),
        error: row.try_get("error")?,
        response_body: row.try_get("response_body")?,
        instance: row.try_get("claimed_by")?,
        note: row.try_get("note")?,
    })
}

/// Failures that are the database's rather than a request's: it cannot be reached, it is
/// shutting down or starting (class 57P), the connection broke (class 08), it ran out of
/// resources such as disk or connections (class 53), or the pool found no connection in time.
pub(super) fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "53", "57P", "58"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

/// The `(created_at, id)` of a row that selected both.
fn position_of(row: &sqlx::postgres::PgRow) -> StoreResult<Position> {
    Ok(Position {
        created_at: row.try_get("created_at")?,
        id: row.try_get("id")?,
    })
}
