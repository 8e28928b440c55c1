//! The async path after acceptance: claim due jobs from the store, do the work, deliver the
//! callback, and record each attempt with what follows it (done, retry at a time, given up).
//!
//! A dispatcher task claims jobs only when a worker slot is free (a semaphore of
//! `APP_ASYNC_WORKER_COUNT` permits), and of each destination only as many as it has room for
//! ([`destinations`]: what it has earned, its breaker, and the share it draws on), so a claimed job
//! always starts at once and leases are never held by jobs waiting in memory. A retry is not a
//! sleeping task: the attempt is recorded with its due time and the slot is freed; the dispatcher
//! claims it again when it is due. A delivery still waiting for its receiver after
//! `APP_CALLBACK_SLOW_AFTER_SECONDS` gives its worker slot back and finishes in a pool of slow
//! deliveries of its own (as many as the workers; when that is full, it moves as soon as a place
//! frees up), so receivers that hang cannot hold the workers. The dispatcher sleeps until the
//! earliest due time of a destination with room, a new submission, a free slot, or an open
//! breaker's next probe.

pub mod client;
pub mod destinations;
pub mod guard;
pub mod lookup;
pub mod retry;
pub mod signing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{self, Metrics};
use crate::model::{DeliveryAttempt, WorkResult};
use crate::store::{
    Announced, AttemptOutcome, ControlChange, FinishedWork, Job, MAX_UNRECORDED_CLAIMS, Pauses,
    Recorded, Store, while_unavailable,
};
use crate::trace_context::export::SpanExport;
use crate::trace_context::{AttemptEnd, AttemptSpan};
use crate::work::{Cancel, ComputePool, PoolError};
use client::{AttemptKind, CallbackClient};
use destinations::{DestinationPermit, Destinations, Share, Verdict};
use retry::RetryPolicy;

/// Longest the dispatcher sleeps without looking at the queue, as a safety net: due times
/// and wake-ups make it prompt; this only bounds the damage of a missed wake-up.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// Shortest sleep between two looks at the queue when nothing was claimed.
const MIN_WAIT: Duration = Duration::from_millis(5);

/// Longest a claim waits for jobs to gather after a short one (see the dispatch loop): a
/// claim slowed by a struggling database must not hold the next one back as long again.
const MAX_GATHER: Duration = Duration::from_millis(50);

/// How often the operators' destination controls are read (a pause made through another
/// instance applies here within this).
pub const CONTROLS_EVERY: Duration = Duration::from_secs(1);

/// How often parked requests whose key nothing unparked are looked for (see
/// `Store::unpark`): the longest a key can wait after a request of it ended where nothing
/// unparked the next (a cancel on another instance, a deletion, a race between instances).
pub const UNPARK_SWEEP_EVERY: Duration = Duration::from_secs(2);

/// How long to wait before retrying a job's work when the compute queue is full.
const COMPUTE_BUSY_BACKOFF: Duration = Duration::from_millis(20);

/// The pause between tries at recording an attempt while the database is unavailable, at
/// first and at most (it doubles). The tries go on for as long as the job's lease (a
/// database restart or a failover takes seconds to tens of seconds): the lease is renewed
/// meanwhile when the database answers, and a record whose claim was taken over is refused
/// by its token, so trying longer never records twice. Past the lease the job is left to it
/// (and counted as a claim without an outcome).
const RECORD_RETRY_PAUSE: Duration = Duration::from_millis(250);
const RECORD_RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// Wakes the dispatcher when a job may have become claimable, and its reader of the
/// destination controls when another instance changed them.
#[derive(Clone, Default)]
pub struct Wakeup(Arc<Notify>, Arc<Notify>);

impl Wakeup {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    pub fn controls_changed(&self) {
        self.1.notify_one();
    }

    /// What another instance announced.
    pub fn heard(&self, announced: Announced) {
        match announced {
            Announced::Jobs => self.wake(),
            Announced::Controls => self.controls_changed(),
        }
    }
}

/// Shared view of the delivery workers, for `/healthz`.
#[derive(Clone, Default)]
pub struct WorkerStats {
    active: Arc<AtomicU64>,
}

impl WorkerStats {
    /// Jobs being worked on or delivered right now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
}

/// The jobs this instance is working on, by claim token: the leases the heartbeat renews,
/// and the work a cancel stops (of a request cancelled here, or, found by the heartbeat, one
/// whose claim another instance's cancel ended).
#[derive(Clone, Default)]
pub struct Running(Arc<Mutex<HashMap<String, RunningJob>>>);

struct RunningJob {
    id: String,
    stop: Cancel,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunningJob>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tokens(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Stops the work of request `id`, if this instance is doing it; answers whether it was.
    /// A delivery already under way is not stopped: it may land, and is audited.
    pub fn stop_request(&self, id: &str) -> bool {
        let running = self.lock();
        let job = running.values().find(|job| job.id == id);
        job.inspect(|job| job.stop.set()).is_some()
    }

    /// Stops the work of the jobs whose claims (`tokens`) no row holds any more.
    fn stop_claims(&self, tokens: &[String]) {
        let running = self.lock();
        for token in tokens {
            if let Some(job) = running.get(token) {
                job.stop.set();
            }
        }
    }
}

/// One job in flight: counted in [`WorkerStats`] and in [`Running`], for exactly as long as
/// this value lives, however the job's task ends (finished, abandoned at shutdown, or dropped
/// with the runtime).
struct InFlight {
    stats: WorkerStats,
    running: Running,
    token: String,
    stop: Cancel,
}

impl InFlight {
    fn start(stats: &WorkerStats, running: &Running, job: &Job) -> Self {
        stats.active.fetch_add(1, Ordering::Relaxed);
        let stop = Cancel::default();
        running.lock().insert(
            job.token.clone(),
            RunningJob {
                id: job.id.clone(),
                stop: stop.clone(),
            },
        );
        Self {
            stats: stats.clone(),
            running: running.clone(),
            token: job.token.clone(),
            stop,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.running.lock().remove(&self.token);
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A delivery's place: a worker slot, or once the delivery has gone slow and the slow pool
/// had room, a slot of that pool instead.
struct Slot {
    worker: Option<OwnedSemaphorePermit>,
    slow_pool: Arc<Semaphore>,
    slow: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// Moves to the slow pool if it has room, giving the worker slot back; answers whether
    /// it moved.
    fn leave_workers(&mut self) -> bool {
        if self.slow.is_some() {
            return true;
        }
        match Arc::clone(&self.slow_pool).try_acquire_owned() {
            Ok(slow) => {
                self.move_to(slow);
                true
            }
            Err(_) => false,
        }
    }

    /// A place in the slow pool, once one frees up (in turn: the pool is first come, first
    /// served).
    fn place_in_slow_pool(&self) -> impl Future<Output = Option<OwnedSemaphorePermit>> + use<> {
        let pool = Arc::clone(&self.slow_pool);
        async move { pool.acquire_owned().await.ok() }
    }

    fn move_to(&mut self, slow: OwnedSemaphorePermit) {
        self.slow = Some(slow);
        self.worker = None;
    }
}

pub struct Dispatcher {
    pub store: Store,
    pub pool: ComputePool,
    pub client: CallbackClient,
    pub policy: RetryPolicy,
    pub workers: u32,
    /// Identifies this process's leases.
    pub owner: String,
    /// How long a claim is good for before another claimant may take the job.
    pub lease: Duration,
    pub wakeup: Wakeup,
    pub stats: WorkerStats,
    pub metrics: Arc<Metrics>,
    /// In-flight counts and breakers per destination, shared with `GET /destinations`.
    pub destinations: Arc<Destinations>,
    /// A delivery still waiting for its receiver after this long leaves the workers.
    pub slow_after: Duration,
    /// The jobs being worked on, shared with the service (a cancel stops their work).
    pub running: Running,
    /// Where delivery attempts' spans go, when a collector is configured.
    pub spans: Option<SpanExport>,
}

impl Dispatcher {
    /// Runs until `stop` is cancelled, then lets in-flight jobs finish for up to `grace`; jobs
    /// still running then are abandoned and their leases handed back to the queue.
    pub async fn run(self, stop: CancellationToken, grace: Duration) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(this.workers as usize));
        // Deliveries gone slow leave `slots` for this pool, as large: the workers go on with
        // other destinations while receivers that hang hold only these.
        let slow_slots = Arc::new(Semaphore::new(this.workers as usize));
        // Only the leases of the jobs in `running` are renewed. A job whose worker gave up
        // without recording an outcome (a database error) is not there, so its lease runs out
        // and another claim picks it up.
        let jobs = TaskTracker::new();
        let abandon = CancellationToken::new();
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(Arc::clone(&this).heartbeat(heartbeat_stop.clone()));
        // A paused destination's jobs must not be claimed after a restart: the controls are
        // read before the first claim, then every second.
        while !stop.is_cancelled() && !this.read_controls().await {
            tokio::select! {
                () = tokio::time::sleep(CONTROLS_EVERY) => {}
                () = stop.cancelled() => {}
            }
        }
        let controls = tokio::spawn(Arc::clone(&this).watch_controls(heartbeat_stop.clone()));
        let sweep = tokio::spawn(Arc::clone(&this).sweep_parked(heartbeat_stop.clone()));

        // With other instances live on the same queue, a claim that came back short was mostly
        // racing them (each woken by every announcement) for the same few jobs: the next waits,
        // from its end, as long as it took, so that jobs gather for it. Measured with two instances
        // on one PostgreSQL: claim scans per job fell from 0.44 to 0.08 (as one instance makes),
        // commits per job from 0.75 to 0.49, and bench/floor.sh's coordination cost from 1.25 to
        // 1.00-1.26 (noisy). It delays a claim by at most one claim's duration, a millisecond or
        // two. Alone on its queue (SQLite, or the only live instance), a short claim means the
        // queue was empty: no wait.
        let mut last_short: Option<(std::time::Instant, Duration)> = None;
        while !stop.is_cancelled() {
            let free = slots.available_permits();
            let mut claimed = 0;
            let mut filled = false;
            if free > 0 {
                if let Some((ended, took)) = last_short {
                    let gather = took.min(MAX_GATHER).saturating_sub(ended.elapsed());
                    tokio::select! {
                        () = tokio::time::sleep(gather) => {}
                        () = stop.cancelled() => {}
                    }
                }
                let started = std::time::Instant::now();
                // A pause applied while this claim is under way waits for its jobs to count
                // as in flight (see `Destinations::claim_turn`).
                let turn = this.destinations.claim_turn().await;
                let (batch, all_taken) = this.claim(free).await;
                claimed = batch.len();
                filled = all_taken;
                this.metrics.jobs_claimed.inc_by(claimed as u64);
                for (job, share) in batch {
                    let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                        break;
                    };
                    let mut slot = Slot {
                        worker: Some(permit),
                        slow_pool: Arc::clone(&slow_slots),
                        slow: None,
                    };
                    let worker = Arc::clone(&this);
                    let abandon = abandon.clone();
                    let in_flight = InFlight::start(&this.stats, &this.running, &job);
                    let destination = this.destinations.start(&job.destination, share);
                    jobs.spawn(async move {
                        let stop = in_flight.stop.clone();
                        tokio::select! {
                            () = worker.process(job, destination, &mut slot, stop) => {}
                            () = abandon.cancelled() => {}
                        }
                        drop(in_flight);
                        drop(slot);
                        worker.wakeup.wake();
                    });
                }
                drop(turn);
                let racing = this.destinations.instances() > 1;
                last_short =
                    (racing && !filled).then(|| (std::time::Instant::now(), started.elapsed()));
            }
            // With every slot busy, or every place a claim could fill just filled (more may be
            // due), the next look comes when a job finishes: a destination reopening meanwhile
            // (its breaker, its receiver's hold, its rate limit) has no worker to take it.
            // Otherwise sleep until the earliest due time of a destination with room (the
            // others' jobs wait for a delivery to finish, which wakes this loop) or until a
            // held destination reopens.
            let wait = if free == 0 || filled {
                IDLE_POLL
            } else {
                let rooms = this.destinations.rooms();
                let due = match this.store.next_due_in(&this.owner, &rooms).await {
                    Ok(Some(wait)) => wait.min(IDLE_POLL),
                    Ok(None) => IDLE_POLL,
                    Err(err) => {
                        tracing::error!(error = %err, "reading the queue failed");
                        IDLE_POLL
                    }
                };
                match this.destinations.next_reopening() {
                    Some(at) => due.min(at.saturating_duration_since(std::time::Instant::now())),
                    None => due,
                }
            };
            if wait.is_zero() && claimed > 0 {
                continue;
            }
            // A due time already past with nothing claimed means the clock and the queue
            // disagree by a hair: a short pause instead of a spin.
            let wait = wait.max(MIN_WAIT);
            tokio::select! {
                () = this.wakeup.0.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => {}
            }
        }

        jobs.close();
        let in_flight = jobs.len();
        if in_flight > 0 {
            tracing::info!(in_flight, "waiting for in-flight deliveries");
        }
        if tokio::time::timeout(grace, jobs.wait()).await.is_err() {
            tracing::warn!("grace period over; handing unfinished deliveries back to the queue");
            abandon.cancel();
            jobs.wait().await;
        }
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
        let _ = controls.await;
        let _ = sweep.await;
        match this.store.release(&this.owner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "handed claimed jobs back to the queue"),
            Err(err) => {
                tracing::error!(error = %err, "releasing claimed jobs failed; they return when their lease expires")
            }
        }
        if let Some(spans) = this.spans.clone() {
            spans.shutdown().await;
        }
    }

    /// Claims up to `free` due jobs within the destinations' rooms: the proven destinations'
    /// from every free slot, the others' within what is left of their share. Answers each
    /// job with the share it counts against, and whether the claim took all it asked for
    /// (more may be due).
    async fn claim(&self, free: usize) -> (Vec<(Job, Share)>, bool) {
        let rooms = self.destinations.rooms();
        match self
            .store
            .claim_due(&self.owner, free as u32, self.lease, &rooms)
            .await
        {
            Ok(jobs) => {
                let filled = jobs.len() == free;
                let jobs = jobs
                    .into_iter()
                    .map(|job| {
                        let share = if rooms.is_reserved(&job.destination) {
                            Share::Proven
                        } else {
                            Share::Unproven
                        };
                        (job, share)
                    })
                    .collect();
                (jobs, filled)
            }
            Err(err) => {
                tracing::error!(error = %err, "claiming jobs failed");
                (Vec::new(), false)
            }
        }
    }

    /// Renews the leases of the jobs in flight every third of the lease, so a slow job is not
    /// taken over by another instance while this one works on it (on the monotonic clock: a
    /// step of the wall clock neither hurries nor delays it).
    async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.lease / 3);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            let tokens = self.running.tokens();
            // Run with nothing in flight too: it also hands back this instance's jobs whose
            // worker gave up without an outcome, which no claim of its own takes back.
            match self.store.heartbeat(&self.owner, &tokens, self.lease).await {
                Ok(leases) => {
                    // Cancelled (on any instance) while their work runs: stop it.
                    self.running.stop_claims(&leases.lost);
                    if leases.released > 0 {
                        tracing::warn!(
                            released = leases.released,
                            "handed back jobs whose worker gave up without an outcome"
                        );
                        self.wakeup.wake();
                    }
                }
                Err(err) => tracing::error!(error = %err, "renewing job leases failed"),
            }
        }
    }

    /// Unparks, every [`UNPARK_SWEEP_EVERY`] until `stop`, the next request of every ordering
    /// key whose request before ended where nothing unparked it.
    async fn sweep_parked(self: Arc<Self>, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(UNPARK_SWEEP_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            match self.store.unpark(None).await {
                Ok(0) => {}
                Ok(unparked) => {
                    tracing::debug!(unparked, "unparked the next requests of ordering keys");
                    self.wakeup.wake();
                }
                Err(err) => tracing::warn!(error = %err, "unparking ordering keys failed"),
            }
        }
    }

    /// Reads the operators' destination controls every [`CONTROLS_EVERY`] until `stop`, so
    /// that a pause or a breaker reset made through any instance applies here too.
    async fn watch_controls(self: Arc<Self>, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(CONTROLS_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.wakeup.1.notified() => {}
                () = stop.cancelled() => return,
            }
            self.read_controls().await;
        }
    }

    /// Reads the destination controls and applies them; wakes the claim loop when held jobs
    /// may have become claimable. Answers whether the read succeeded.
    async fn read_controls(&self) -> bool {
        match self
            .destinations
            .refresh_controls(self.store.destination_controls(&self.owner))
            .await
        {
            Ok(released) => {
                if released {
                    self.wakeup.wake();
                }
                true
            }
            Err(err) => {
                tracing::error!(error = %err, "reading the destination controls failed");
                false
            }
        }
    }

    /// Works one claimed job through to its next state, its delivery counted in flight to its
    /// destination by `destination`, holding `slot`.
    async fn process(
        &self,
        job: Job,
        mut destination: DestinationPermit,
        slot: &mut Slot,
        stop: Cancel,
    ) {
        tracing::debug!(request_id = %job.id, attempts = job.callback_attempts, "job claimed");
        if job.unrecorded_claims > MAX_UNRECORDED_CLAIMS {
            self.give_up_unrecordable(&job).await;
            return;
        }
        let work = match job.work.clone() {
            Some(work) => work,
            None => match self.compute(&job, stop).await {
                Some(work) => work,
                None => return,
            },
        };
        let attempt = job.callback_attempts + 1;
        let note = self.destinations.why_waited(&job.destination, job.due_at);
        let keep_alive = self.destinations.keeps_alive(&job.destination);
        let span = AttemptSpan::begin(&job.id, job.trace.as_ref());
        let delivery = self.client.deliver_on(
            &job.callback_url,
            &work,
            attempt,
            keep_alive,
            job.callback_timeout,
            Some(&span),
        );
        tokio::pin!(delivery);
        let report = tokio::select! {
            report = &mut delivery => report,
            () = tokio::time::sleep(self.slow_after) => {
                let moved = slot.leave_workers();
                destination.went_slow(moved);
                if moved {
                    // A worker slot, and perhaps a place in the unproven share, came free.
                    self.wakeup.wake();
                    delivery.await
                } else {
                    // The slow pool is full: keep the worker slot only until a place in it
                    // frees up, not for the rest of the callback timeout.
                    let place = slot.place_in_slow_pool();
                    tokio::select! {
                        report = &mut delivery => report,
                        Some(place) = place => {
                            slot.move_to(place);
                            destination.went_slow(true);
                            self.wakeup.wake();
                            delivery.await
                        }
                    }
                }
            }
        };
        // A timeout shorter than the operator's, chosen by the request, says nothing about
        // the destination's health: counted against it, any caller could open another's
        // breaker (and take it out of the proven share) with requests of a millisecond; as a
        // probe's answer, close it.
        //
        // A receiver that asks for time (a 429 or 503 with `Retry-After`) is slowing its
        // senders down, not failing: its whole destination waits, on every instance, and its
        // breaker does not count it.
        let slow_down = report.slow_down();
        let verdict = match (report.kind, job.callback_timeout) {
            _ if slow_down.is_some() => Verdict::Neutral,
            (AttemptKind::Timeout, Some(own)) if own < self.client.timeout() => Verdict::Unknown,
            _ => Verdict::of(report.kind, report.status_code),
        };
        destination.record_after(verdict, report.duration);
        if let Some(asked) = slow_down {
            self.hold_destination(&job.destination, asked.min(self.policy.max));
        }
        let round_attempt = job.round_attempts + 1;
        let outcome = if report.delivered() {
            AttemptOutcome::Delivered
        } else if report.permanent() {
            AttemptOutcome::GaveUp
        } else {
            let policy = self.policy.with_max_retries(job.max_retries);
            match policy.delay_after(round_attempt, report.retry_after) {
                Some(delay) => AttemptOutcome::RetryAfter(delay),
                None => AttemptOutcome::RetriesExhausted,
            }
        };
        tracing::info!(
            request_id = %job.id,
            trace_id = %span.trace_id(),
            attempt,
            status_code = report.status_code,
            error = report.error.as_deref(),
            outcome = ?outcome,
            "callback attempt"
        );
        self.observe_attempt(&report);
        if let Some(export) = &self.spans {
            span.export(
                export.tracer(),
                &AttemptEnd {
                    request_id: &job.id,
                    destination: &job.destination,
                    attempt,
                    started_at: report.started_at.into(),
                    duration: report.duration,
                    status_code: report.status_code,
                    error: report.error.as_deref(),
                    request_status: outcome.status().as_str(),
                },
            );
        }
        let since_accepted = (Utc::now() - job.created_at)
            .to_std()
            .unwrap_or(Duration::ZERO);
        let record = DeliveryAttempt {
            attempt,
            started_at: report.started_at,
            // To the microsecond, as `processing_time_ms`: no float noise in the record.
            duration_ms: (report.duration.as_secs_f64() * 1_000_000.0).round() / 1000.0,
            status_code: report.status_code,
            error: report.error,
            response_body: report.response_body,
            response_headers: report.response_headers,
            instance: Some(self.owner.clone()),
            note,
        };
        match self.record(&job, record, outcome).await {
            Ok(Recorded::MovedOn) => self.finished(&job, attempt, outcome, since_accepted),
            Ok(Recorded::Landed) => tracing::info!(
                request_id = %job.id,
                attempt,
                "attempt recorded; the request was cancelled while it was in flight and stays cancelled"
            ),
            Ok(Recorded::ClaimLost) => {
                tracing::warn!(request_id = %job.id, "lease lost before the attempt was recorded")
            }
            Err(err) => {
                tracing::error!(request_id = %job.id, error = %err, "recording the attempt failed; the job will be retried")
            }
        }
    }

    /// Holds every job of `destination` for `wait`: at once on this instance, and, once
    /// stored, on every other (a hold that cannot be stored still applies here). The write
    /// goes on in the background: the worker's slot is not held for it.
    fn hold_destination(&self, destination: &str, wait: Duration) {
        if !self.destinations.hold(destination, wait) {
            return;
        }
        tracing::info!(
            destination,
            seconds = wait.as_secs_f64(),
            "the receiver asked to be left alone: its destination waits"
        );
        let until = Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
        let (store, destination) = (self.store.clone(), destination.to_string());
        tokio::spawn(async move {
            if let Err(err) = store
                .control_destination(&destination, ControlChange::HoldUntil(until))
                .await
            {
                tracing::warn!(destination, error = %err, "storing a receiver's hold failed; it applies on this instance only");
            }
        });
    }

    /// What follows an attempt recorded with `outcome`, `since_accepted` after the request
    /// was: a retry wakes the dispatcher; a final outcome is logged and counted, and wakes the
    /// dispatcher when the next request of its ordering key may be claimed now.
    fn finished(&self, job: &Job, attempt: u32, outcome: AttemptOutcome, since_accepted: Duration) {
        use crate::metrics::{FinalLabels, FinalStatus};
        if let Some(key) = job
            .ordering_key
            .clone()
            .filter(|_| !matches!(outcome, AttemptOutcome::RetryAfter(_)))
        {
            self.unpark_next(key);
        }
        let status = match outcome {
            AttemptOutcome::RetryAfter(_) => {
                self.wakeup.wake();
                return;
            }
            AttemptOutcome::Delivered => {
                tracing::info!(
                    request_id = %job.id,
                    status = "callback_success",
                    attempts = attempt,
                    "async request finished"
                );
                self.metrics
                    .callback_delivery
                    .observe(since_accepted.as_secs_f64());
                FinalStatus::callback_success
            }
            AttemptOutcome::GaveUp | AttemptOutcome::RetriesExhausted => {
                tracing::warn!(
                    request_id = %job.id,
                    status = "callback_failed",
                    attempts = attempt,
                    "async request finished"
                );
                FinalStatus::callback_failed
            }
        };
        self.metrics
            .jobs_finished
            .get_or_create(&FinalLabels { status })
            .inc();
    }

    /// Lets the next request of ordering key `key` be claimed, in the background (the worker's
    /// slot is not held for it); if that write fails, the sweep does it.
    fn unpark_next(&self, key: String) {
        let (store, wakeup) = (self.store.clone(), self.wakeup.clone());
        tokio::spawn(async move {
            match store.unpark(Some(&key)).await {
                Ok(0) => {}
                Ok(_) => wakeup.wake(),
                Err(err) => {
                    tracing::warn!(ordering_key = %key, error = %err, "unparking the next request of an ordering key failed; the sweep will")
                }
            }
        });
    }

    /// Records an attempt. While the database is unavailable the record is tried again (the
    /// lease is still renewed, so nobody delivers the job meanwhile). A record refused for
    /// any other reason is tried once more without what came from the receiver (its answer,
    /// the error text): a receiver must not be able to make its attempts unrecordable and so
    /// have the job delivered again and again.
    async fn record(
        &self,
        job: &Job,
        mut record: DeliveryAttempt,
        outcome: AttemptOutcome,
    ) -> Result<Recorded, crate::store::StoreError> {
        let mut pauses = Pauses::doubling(RECORD_RETRY_PAUSE, RECORD_RETRY_PAUSE_MAX)
            .until(tokio::time::Instant::now() + self.lease);
        let store = &self.store;
        let first = while_unavailable(&mut pauses, || {
            store.record_attempt(&job.id, &self.owner, &job.token, &record, outcome)
        })
        .await;
        match first {
            Err(err) if !err.is_unavailable() => {
                tracing::warn!(request_id = %job.id, error = %err, "recording the attempt failed; recording it without the receiver's answer");
                record.response_body = None;
                record.response_headers = None;
                record.error = record
                    .error
                    .map(|_| "the error could not be recorded".into());
                while_unavailable(&mut pauses, || {
                    store.record_attempt(&job.id, &self.owner, &job.token, &record, outcome)
                })
                .await
            }
            answer => answer,
        }
    }

    /// Ends a job that has been claimed again and again without an outcome being recorded:
    /// delivering it once more could only repeat that without bound.
    async fn give_up_unrecordable(&self, job: &Job) {
        let reason = format!(
            "given up: claimed {} times without an outcome being recorded",
            job.unrecorded_claims - 1
        );
        match self.store.give_up(&job.id, &job.token, &reason).await {
            Ok(true) => {
                tracing::error!(request_id = %job.id, "{reason}");
                self.metrics
                    .jobs_finished
                    .get_or_create(&crate::metrics::FinalLabels {
                        status: crate::metrics::FinalStatus::callback_failed,
                    })
                    .inc();
            }
            Ok(false) => tracing::warn!(request_id = %job.id, "lease lost before giving up"),
            Err(err) => {
                tracing::error!(request_id = %job.id, error = %err, "giving up a job failed")
            }
        }
    }

    /// Counts an attempt made, whatever comes of its record.
    fn observe_attempt(&self, report: &client::AttemptReport) {
        let metrics = &self.metrics;
        let kind = match report.kind {
            AttemptKind::Delivered => metrics::AttemptOutcome::success,
            AttemptKind::HttpStatus => metrics::AttemptOutcome::http_error,
            AttemptKind::Timeout => metrics::AttemptOutcome::timeout,
            AttemptKind::Connection => metrics::AttemptOutcome::connection_error,
            AttemptKind::Blocked => metrics::AttemptOutcome::blocked,
            AttemptKind::Invalid | AttemptKind::Other => metrics::AttemptOutcome::other,
        };
        metrics
            .delivery_attempts
            .get_or_create(&metrics::AttemptLabels { outcome: kind })
            .inc();
        metrics
            .delivery_attempt_duration
            .observe(report.duration.as_secs_f64());
    }

    /// Does the work of a job and stores the result before any delivery, so a retry never
    /// recomputes it. Returns `None` if the job must be left to the queue.
    async fn compute(&self, job: &Job, stop: Cancel) -> Option<FinishedWork> {
        let Some(data) = job.data.clone() else {
            tracing::error!(request_id = %job.id, "job has neither a result nor its input");
            return None;
        };
        let output = loop {
            let done =
                match self
                    .pool
                    .submit_cancellable(data.clone(), job.iterations, stop.clone())
                {
                    Ok(pending) => pending.wait().await,
                    Err(err) => Err(err),
                };
            match done {
                Ok(output) => break output,
                // Sync traffic has filled the compute queue: async work waits its turn.
                Err(PoolError::Busy) if !stop.is_set() => {
                    tokio::time::sleep(COMPUTE_BUSY_BACKOFF).await
                }
                Err(PoolError::Cancelled) => {
                    tracing::info!(request_id = %job.id, "work stopped: the request was cancelled");
                    return None;
                }
                Err(PoolError::Busy | PoolError::Closed) => return None,
            }
        };
        let processing_time_ms = output.processing_time_ms();
        let work = FinishedWork::now(WorkResult {
            request_id: job.id.clone(),
            input_hash: output.hashes.input_hash,
            output_hash: output.hashes.output_hash,
            iterations: job.iterations,
            processing_time_ms,
        });
        match self.store.store_result(&job.id, &job.token, &work).await {
            Ok(true) => Some(work),
            Ok(false) => {
                tracing::info!(request_id = %job.id, "claim ended while computing (cancelled, or its lease lost)");
                None
            }
            Err(err) => {
                tracing::error!(request_id = %job.id, error = %err, "storing the result failed");
                None
            }
        }
    }
}
