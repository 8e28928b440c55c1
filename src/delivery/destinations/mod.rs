//! Per-destination isolation: how many deliveries each destination (scheme, host, port) may
//! have in flight, and which share of the workers it draws on, so that no receiver, nor any
//! set of receivers, however slow, dead or numerous, delays callbacks to the others.
//!
//! - **Earned concurrency.** A destination starts with room for one delivery in flight. Each
//!   success of a delivery that used its whole room adds one (so a busy, healthy destination
//!   doubles its room every round trip, up to `per_destination`); each failure halves it. A
//!   receiver that hangs keeps only what it had earned.
//! - **Fair share of the workers.** Once busy a destination takes its room, but with n
//!   proven destinations busy at most `(workers - u) / (n + 1)`, u being the deliveries in
//!   flight in the unproven share: a few destinations that turn slow, however long they
//!   take, leave workers free for the others. A destination with nothing in flight that
//!   answered in the last [`RECENT_WINDOW`] takes its room at once, counted as busy beside
//!   the busy ones (a quick receiver seldom has a delivery in flight when the next claim
//!   runs, and one delivery per claim would hold it to the claim rate); any other idle
//!   destination starts with one delivery, so that one claim never starts many unknown
//!   destinations at once.
//! - **Reserved share.** A destination that answered with a 2xx in the last
//!   [`RECENT_WINDOW`], has no failure since, no delivery gone slow and no answer in that
//!   window that took longer than `unhurried` (a quarter of the slow threshold) is
//!   *proven*: it draws on every worker. All the others (new, failing, slow, unhurried, or
//!   held by their breaker: anything a caller can invent by the thousand) share at most
//!   `unproven_share` deliveries in flight between them, so the proven ones always keep the
//!   rest. The dispatcher asks for [`Destinations::rooms`] before each claim; the store
//!   claims no more jobs of a destination than its room, and of the unproven ones no more
//!   than their share, so a job that must wait holds no worker slot and no lease, keeps its
//!   place in the queue, and jobs behind it are claimed past it.
//! - **Unhurried answers.** The fair share gives each busy destination at least one
//!   delivery, so more of them than workers could take every worker, for as long as their
//!   backlogs last if answering just under the slow threshold kept them proven. An answer
//!   that takes longer than `unhurried` therefore sends its destination to the unproven
//!   share for [`RECENT_WINDOW`]: n destinations that answered at once and then all take
//!   their time hold the proven part's workers for one delivery each (each at most the slow
//!   threshold), and then share the unproven part.
//! - **Turns** (`turns.rs`). When more jobs are due than a claim can take, destinations
//!   take turns counted in the workers' time: a destination's next job waits for those of
//!   destinations that had less of it lately. Backlogs due earlier do not hold back another
//!   destination's jobs, and a quick receiver is not held to the pace of slow ones; within a
//!   destination, jobs keep the claim's order.
//! - **Slow deliveries.** A delivery still waiting for its receiver after the slow threshold
//!   makes its destination unproven until it ends, and (the dispatcher's part) leaves the
//!   workers and the unproven share for a pool of slow deliveries of its own, so a
//!   destination that hangs after earning a large room gives the workers back within that
//!   threshold, not the callback timeout. While that pool is full, the delivery keeps its
//!   worker and counts against the unproven share (whichever share it was claimed in), so
//!   proven destinations that all hang at once cannot, together with the unproven ones,
//!   take every worker.
//! - **Breaker** (`breaker.rs`). Failures open a destination's circuit breaker: its jobs wait
//!   without an attempt and without a slot until a probe succeeds. A job that has waited
//!   longer than the maximum cool-down goes anyway (within its room): every job's wait is
//!   bounded, so the jobs of a destination that never recovers still end, `callback_failed`,
//!   instead of filling the queue one probe at a time.
//! - All of it is per instance: instances sharing a PostgreSQL database each learn a
//!   destination's health from their own attempts (no extra database round trip per
//!   delivery), so with K instances a dead destination gets up to K probes per cool-down.
//!
//! State is kept only for destinations seen recently: one idle for [`FORGET_AFTER`] is
//! forgotten whatever its breaker, and past `tracked` destinations the longest idle are
//! forgotten first (those with failures against them last), so the map is bounded however
//! many destinations callers name (a forgotten destination starts again as a new one, in the
//! unproven share).

mod breaker;
mod controls;
pub mod held;
mod pace;
mod recent;
mod rooms;
mod turns;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use breaker::Breaker;
pub use breaker::{BreakerPolicy, BreakerState, Verdict};
use controls::Operated;
use pace::Bucket;
pub use pace::{DefaultRate, OwnRate, RateError, RateLimit};
pub use recent::RECENT_WINDOW;
use recent::{BUCKET, Recent};
pub use rooms::{Rooms, TURN_LOOKUPS, Turn};
use turns::{FIRST_JOB_MS, Served, per_job_ms};

/// Destinations whose callbacks keep their connections alive between deliveries: the busiest
/// by recent successes, each with as many idle connections as its cap of deliveries in
/// flight (fewer would close and reopen connections under load: measured, half of all
/// callbacks then paid a new connection). Every other destination gets a connection per
/// delivery, closed after it. Idle keep-alive connections are file descriptors, and callers
/// choose destinations: pooling for every destination would let a caller naming thousands
/// of them exhaust the descriptors, while the busiest few are where keeping connections
/// alive pays. With the cap at most half the workers, idle callback connections number at
/// most twice the workers.
pub const KEEP_ALIVE_DESTINATIONS: usize = 4;

/// How often the busiest destinations are worked out again.
const KEEP_ALIVE_REFRESH: Duration = Duration::from_secs(1);

/// A destination idle this long (nothing in flight) is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// The room a destination starts with, and has while it is unknown.
pub const INITIAL_ROOM: u32 = 1;

/// The identity of a destination: `scheme://host:port`, lower-case, with the scheme's default
/// port written out, so every spelling of one endpoint shares one cap and one breaker.
pub fn destination_of(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port_or_known_default() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// The host of a destination (`scheme://host:port` → `host`, an IPv6 host with its
/// brackets): what the `callback_host` list filter matches. (Migrations that fill it for
/// older rows compute the same in SQL.)
pub fn destination_host(destination: &str) -> &str {
    let authority = destination
        .split_once("://")
        .map_or(destination, |(_, rest)| rest);
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// As [`destination_of`], from a stored URL; a URL that no longer parses is its own
/// destination (its delivery fails at once anyway).
pub fn destination_of_str(url: &str) -> String {
    url::Url::parse(url).map_or_else(|_| url.to_string(), |u| destination_of(&u))
}

/// How deliveries are shared out between destinations.
#[derive(Debug, Clone, Copy)]
pub struct IsolationPolicy {
    /// The delivery workers: with deliveries in flight to n proven destinations, each may
    /// have at most `workers / (n + 1)`, so the busy ones together always leave a share free.
    pub workers: u32,
    /// The most deliveries in flight to one destination, however much it has earned.
    pub per_destination: u32,
    /// The most deliveries in flight to unproven destinations, all together.
    pub unproven_share: u32,
    /// Destinations tracked beyond those with deliveries in flight.
    pub tracked: usize,
    /// An answer that took longer than this makes its destination unproven for
    /// [`RECENT_WINDOW`] (a quarter of APP_CALLBACK_SLOW_AFTER_SECONDS).
    pub unhurried: Duration,
    pub breaker: BreakerPolicy,
    /// Every destination's rate limit, unless an operator set its own
    /// (APP_CALLBACK_RATE_PER_DESTINATION).
    pub default_rate: Option<RateLimit>,
    /// The longest a receiver's hold lasts from now (APP_CALLBACK_RETRY_MAX_DELAY): a stored
    /// hold's end is a wall-clock time, and a clock stepped back must not stretch it.
    pub longest_hold: Duration,
}

/// Which share a delivery was started in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// Its destination is proven: it draws on every worker.
    Proven,
    /// It counts against the unproven share.
    Unproven,
}

#[derive(Debug, Clone)]
struct Entry {
    in_flight: u32,
    /// Deliveries in flight past the slow threshold.
    slow: u32,
    /// The deliveries it may have in flight, as earned (before the cap).
    room: u32,
    last_success: Option<Instant>,
    /// The last answer that took longer than the policy's `unhurried`.
    last_unhurried: Option<Instant>,
    breaker: Breaker,
    recent: Recent,
    last_active: Instant,
    /// The workers' time its deliveries took lately, in milliseconds, and what one is
    /// expected to take: its place in the claims' turns.
    served: Served,
    per_job_ms: u32,
    /// When a claim last looked it up on its own for its turn.
    looked_up_at: Option<Instant>,
    /// When the breaker last opened and last closed, and when the destination was last
    /// full: to tell an attempt's audit why it waited.
    last_opened: Option<DateTime<Utc>>,
    last_closed: Option<DateTime<Utc>>,
    last_full: Option<DateTime<Utc>>,
    /// Its rate limit's tokens on this instance, from the first claim under a limit.
    bucket: Option<Bucket>,
    /// Until when its receiver asked to be left alone, as answered to this instance.
    held_until: Option<Instant>,
    /// When its rate limit, and when its receiver's hold, last kept its jobs waiting.
    last_rate_limited: Option<DateTime<Utc>>,
    last_held: Option<DateTime<Utc>>,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            in_flight: 0,
            slow: 0,
            room: INITIAL_ROOM,
            last_success: None,
            last_unhurried: None,
            breaker: Breaker::CLOSED,
            recent: Recent::default(),
            last_active: now,
            served: Served::new(now),
            per_job_ms: FIRST_JOB_MS,
            looked_up_at: None,
            last_opened: None,
            last_closed: None,
            last_full: None,
            bucket: None,
            held_until: None,
            last_rate_limited: None,
            last_held: None,
        }
    }

    /// Deliveries its rate limit lets start now on this instance (`u32::MAX` without one).
    fn tokens(&mut self, limit: Option<RateLimit>, now: Instant) -> u32 {
        let Some(limit) = limit else {
            return u32::MAX;
        };
        let bucket = self.bucket.get_or_insert_with(|| Bucket::full(limit, now));
        bucket.refill(limit, now);
        bucket.available()
    }

    /// Takes a token from its rate limit, if it has one.
    fn take_token(&mut self, limit: Option<RateLimit>, now: Instant) {
        if let Some(limit) = limit {
            let bucket = self.bucket.get_or_insert_with(|| Bucket::full(limit, now));
            bucket.refill(limit, now);
            bucket.take();
        }
    }

    /// When its rate limit next lets a delivery start, if none may now.
    fn next_token_at(&self, limit: Option<RateLimit>) -> Option<Instant> {
        let (limit, bucket) = (limit?, self.bucket?);
        let wait = bucket.next_token_in(limit);
        (!wait.is_zero()).then(|| bucket.at() + wait)
    }

    /// Answered with a 2xx recently, nothing against it since, nothing in flight gone slow,
    /// and no answer in the last [`RECENT_WINDOW`] that took its time.
    fn is_proven(&self, now: Instant) -> bool {
        self.slow == 0
            && self.breaker.is_clear()
            && self.answered_recently(now)
            && !self.answered_unhurriedly(now)
    }

    /// Took longer than the policy's `unhurried` over an answer in the last
    /// [`RECENT_WINDOW`].
    fn answered_unhurriedly(&self, now: Instant) -> bool {
        self.last_unhurried
            .is_some_and(|at| now.duration_since(at) <= RECENT_WINDOW)
    }

    /// Answered with a 2xx in the last [`RECENT_WINDOW`], whatever came since.
    fn answered_recently(&self, now: Instant) -> bool {
        self.last_success
            .is_some_and(|at| now.duration_since(at) <= RECENT_WINDOW)
    }

    /// The most it may have in flight now.
    fn allowed(&self, cap: u32) -> u32 {
        self.room.min(cap)
    }

    /// Room for more deliveries, and whether the breaker holds the destination's jobs back.
    fn room_left(&self, cap: u32) -> (u32, bool) {
        self.breaker
            .room(self.allowed(cap).saturating_sub(self.in_flight))
    }

    /// Whether the breaker was open (or half-open) at any time since `since`.
    fn was_open_since(&self, since: DateTime<Utc>) -> bool {
        let Some(opened) = self.last_opened else {
            return false;
        };
        let closed = self.last_closed.filter(|closed| *closed >= opened);
        closed.is_none_or(|closed| closed >= since)
    }

    fn is_forgettable(&self, now: Instant) -> bool {
        self.in_flight == 0 && now.duration_since(self.last_active) > FORGET_AFTER
    }
}

/// The rate limit this instance applies to `destination`: its share of the destination's own
/// limit, or of the default.
fn limit_of(
    operated: &Operated,
    destination: &str,
    default: Option<RateLimit>,
) -> Option<RateLimit> {
    operated
        .rate(destination)
        .map_or(default, OwnRate::limit)
        .map(|limit| limit.share(operated.instances()))
}

/// Until when `destination`'s receiver asked to be left alone, if it still is: as it answered
/// this instance (`entry`), or any instance (the stored hold).
fn receiver_hold(
    operated: &Operated,
    entry: Option<&Entry>,
    destination: &str,
    now: Instant,
) -> Option<Instant> {
    let stored = operated.held_until(destination);
    entry
        .and_then(|e| e.held_until)
        .into_iter()
        .chain(stored)
        .filter(|until| *until > now)
        .max()
}

/// `at` (after `now`) on the wall clock, to show it.
fn wall_clock(at: Instant, now: Instant) -> Option<DateTime<Utc>> {
    let left = chrono::Duration::from_std(at.checked_duration_since(now)?).ok()?;
    Some(Utc::now() + left)
}

/// One destination as `GET /destinations` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DestinationView {
    /// `scheme://host:port`.
    pub destination: String,
    pub in_flight: u32,
    /// The deliveries it may have in flight now, as earned by its successes (at most
    /// APP_CALLBACK_MAX_IN_FLIGHT_PER_DESTINATION).
    pub in_flight_limit: u32,
    /// Whether it draws on every worker (it answered recently, nothing against it since), or
    /// shares the unproven destinations' part (APP_CALLBACK_MAX_IN_FLIGHT_UNPROVEN).
    pub proven: bool,
    /// Deliveries in flight past APP_CALLBACK_SLOW_AFTER_SECONDS.
    pub slow: u32,
    /// Whether an answer in the last five minutes took longer than a quarter of
    /// APP_CALLBACK_SLOW_AFTER_SECONDS (it is unproven until five minutes after the last).
    pub answered_slowly: bool,
    /// Delivered attempts in the last five minutes.
    pub recent_successes: u64,
    /// Failed attempts in the last five minutes: every answer but a 2xx (a 4xx too, though
    /// it does not count towards the breaker), and no answer.
    pub recent_failures: u64,
    pub breaker: BreakerState,
    /// When an open breaker lets its next probe through (RFC 3339), if it is open.
    pub next_probe_at: Option<String>,
    /// Whether an operator paused it: its jobs wait, on every instance, until it is resumed.
    pub paused: bool,
    /// Since when (RFC 3339), while paused.
    pub paused_at: Option<String>,
    /// Its rate limit across every instance (null: none), its own or the default
    /// (APP_CALLBACK_RATE_PER_DESTINATION). Each of the instances sharing the database
    /// delivers its share of it.
    pub rate_limit: Option<RateLimit>,
    /// Whether an operator set this destination's own limit (`PUT /destinations/{key}/limits`)
    /// rather than the default applying.
    pub rate_limit_own: bool,
    /// Until when (RFC 3339) its receiver asked to be left alone, with a 429 or 503 and
    /// `Retry-After`: no instance starts a delivery to it before then.
    pub retry_after_until: Option<String>,
    /// While something holds it back (a pause, a rate limit, a `Retry-After`, its breaker):
    /// its jobs due now that no instance has claimed, counted in the database up to 10,000.
    /// Null when nothing holds it back, and beyond the first 100 held-back destinations
    /// listed.
    pub held_jobs: Option<u64>,
    /// What is left of the `Retry-After` hold, for `/metrics`.
    #[serde(skip)]
    pub retry_after_left: Option<Duration>,
}

impl DestinationView {
    /// A destination with nothing recent to show, and its controls.
    fn idle(destination: &str, operated: &Operated, policy: &IsolationPolicy) -> Self {
        let now = Instant::now();
        let hold = receiver_hold(operated, None, destination, now);
        let paused_at = operated.paused_at(destination);
        let own = operated.rate(destination);
        Self {
            destination: destination.to_string(),
            in_flight: 0,
            in_flight_limit: INITIAL_ROOM,
            proven: false,
            slow: 0,
            answered_slowly: false,
            recent_successes: 0,
            recent_failures: 0,
            breaker: BreakerState::Closed,
            next_probe_at: None,
            paused: paused_at.is_some(),
            paused_at: paused_at.as_ref().map(crate::timestamps::format),
            rate_limit: own.map_or(policy.default_rate, OwnRate::limit),
            rate_limit_own: own.is_some(),
            retry_after_until: hold
                .and_then(|until| wall_clock(until, now))
                .as_ref()
                .map(crate::timestamps::format),
            retry_after_left: hold.map(|until| until.saturating_duration_since(now)),
            held_jobs: None,
        }
    }
}

/// The destinations of one instance, and the deliveries in the unproven share.
struct State {
    entries: HashMap<String, Entry>,
    unproven_in_flight: u32,
    /// What operators decided (pauses, breaker resets), read from the database.
    operated: Operated,
}

/// The per-destination state of one instance.
pub struct Destinations {
    state: Mutex<State>,
    /// The destinations whose connections are kept alive, and when they were worked out.
    keep_alive: Mutex<(Option<Instant>, Vec<String>)>,
    policy: IsolationPolicy,
    epoch: Instant,
    /// Reads of the operators' controls take turns, so that an older read is never applied
    /// after a newer one (an operator's pause undone for a second by the periodic read).
    controls_read: tokio::sync::Mutex<()>,
    /// Held (shared) by a claim from the rooms it is given until its jobs count as in
    /// flight, and (alone) by the applying of controls: a pause applies between claims, so
    /// that once it is applied no claim made with the rooms from before it is still to come.
    claims: tokio::sync::RwLock<()>,
}

impl Destinations {
    pub fn new(policy: IsolationPolicy) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                entries: HashMap::new(),
                unproven_in_flight: 0,
                operated: Operated::default(),
            }),
            keep_alive: Mutex::new((None, Vec::new())),
            policy,
            epoch: Instant::now(),
            controls_read: tokio::sync::Mutex::new(()),
            claims: tokio::sync::RwLock::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What a claim may take now: each destination's room, the proven ones reserved, the
    /// others sharing what is left of the unproven share. Also forgets destinations idle too
    /// long.
    pub fn rooms(&self) -> Rooms {
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        state.entries.retain(|_, entry| !entry.is_forgettable(now));
        let busy = state
            .entries
            .values()
            .filter(|entry| entry.in_flight > 0 && entry.is_proven(now))
            .count();
        let cap = self.fair_cap(busy, state.unproven_in_flight);
        let waking = state
            .entries
            .values()
            .filter(|entry| entry.in_flight == 0 && entry.answered_recently(now))
            .count();
        let waking_cap = self.fair_cap(busy + waking, state.unproven_in_flight);
        let mut rooms = Rooms {
            default: INITIAL_ROOM.min(cap),
            overdue: self.policy.breaker.max_cooldown,
            shared: self
                .policy
                .unproven_share
                .saturating_sub(state.unproven_in_flight),
            ..Rooms::default()
        };
        let mut look_up: Vec<(Option<Instant>, String)> = Vec::new();
        for (destination, entry) in state.entries.iter_mut() {
            entry.breaker.refresh(now);
            // An idle destination that answered recently takes its room at once, as if busy
            // beside the busy ones; any other idle one starts with one delivery and takes the
            // rest of its room once busy (the next claim): one claim never starts many idle
            // destinations at a room that together could take every worker before any of
            // them counted as busy.
            let cap = match (entry.in_flight, entry.answered_recently(now)) {
                (0, true) => waking_cap,
                (0, false) => INITIAL_ROOM.min(cap),
                _ => cap,
            };
            let (mut room, held) = entry.room_left(cap);
            // The receiver's pace: what its rate limit lets start, nothing while it asked to
            // be left alone.
            let tokens = entry.tokens(
                limit_of(&state.operated, destination, self.policy.default_rate),
                now,
            );
            if tokens < room {
                room = tokens;
                if room == 0 {
                    entry.last_rate_limited = Some(Utc::now());
                }
            }
            if receiver_hold(&state.operated, Some(entry), destination, now).is_some() {
                room = 0;
                entry.last_held = Some(Utc::now());
            }
            let proven = entry.is_proven(now);
            // A destination the claim would treat as unknown need not be listed.
            if proven || held || room != rooms.default {
                rooms.limited.push((destination.clone(), room));
            }
            if held {
                rooms.held.push(destination.clone());
            }
            if proven {
                rooms.reserved.push(destination.clone());
            }
            let turn = Turn {
                first: u64::from(entry.served.at(now))
                    + u64::from(entry.in_flight) * u64::from(entry.per_job_ms),
                per_job: u64::from(entry.per_job_ms),
            };
            if turn != Turn::default() {
                rooms.turns.push((destination.clone(), turn));
            }
            if proven && room > 0 {
                look_up.push((entry.looked_up_at, destination.clone()));
            }
        }
        // The proven destinations with room looked up least lately: each gets its turn
        // within a few claims however many there are.
        look_up.sort_unstable();
        look_up.truncate(TURN_LOOKUPS);
        for (_, destination) in &look_up {
            if let Some(entry) = state.entries.get_mut(destination) {
                entry.looked_up_at = Some(now);
            }
        }
        rooms.look_up = look_up.into_iter().map(|(_, d)| d).collect();
        // A paused destination, or one whose receiver asked another instance to leave it
        // alone, has no room at all, not even for overdue jobs (and a claim takes a
        // destination it does not list as one with the default room).
        let closed: std::collections::BTreeSet<String> = state
            .operated
            .paused()
            .map(|(d, _)| d)
            .chain(
                state
                    .operated
                    .held()
                    .filter(|(_, ends)| *ends > now)
                    .map(|(d, _)| d),
            )
            .cloned()
            .collect();
        let is_closed = |d: &String| closed.contains(d.as_str());
        rooms.limited.retain(|(d, _)| !is_closed(d));
        rooms.held.retain(|d| !is_closed(d));
        rooms.reserved.retain(|d| !is_closed(d));
        rooms.look_up.retain(|d| !is_closed(d));
        rooms
            .limited
            .extend(closed.into_iter().map(|destination| (destination, 0)));
        rooms
    }

    /// Reads the operators' controls with `read` and applies them (see
    /// [`apply_controls`](Self::apply_controls)), one read at a time.
    pub async fn refresh_controls(
        &self,
        read: impl Future<Output = crate::store::StoreResult<crate::store::ControlsRead>>,
    ) -> crate::store::StoreResult<bool> {
        let _turn = self.controls_read.lock().await;
        let controls = read.await?;
        let _between_claims = self.claims.write().await;
        Ok(self.apply_controls(&controls))
    }

    /// A claim's turn: hold it from asking for [`rooms`](Self::rooms) until the claimed
    /// jobs are [`start`](Self::start)ed.
    pub async fn claim_turn(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.claims.read().await
    }

    /// Takes the operators' controls as read from the database (the whole table): pauses
    /// apply from the next claim on, and a breaker reset since the last read closes this
    /// instance's breaker for the destination. Answers whether held jobs may have become
    /// claimable (a pause ended, a breaker was reset).
    pub fn apply_controls(&self, controls: &crate::store::ControlsRead) -> bool {
        let mut state = self.lock();
        let update = state.operated.update(controls, self.policy.longest_hold);
        for destination in &update.reset {
            if let Some(entry) = state.entries.get_mut(destination) {
                if !matches!(entry.breaker, Breaker::Closed { .. }) {
                    entry.last_closed = Some(Utc::now());
                }
                entry.breaker = Breaker::CLOSED;
                tracing::info!(destination, "circuit breaker reset by an operator");
            }
        }
        update.released
    }

    /// The most deliveries one destination may have in flight while `busy` proven
    /// destinations have some and `unproven` deliveries hold workers in the unproven share:
    /// its part of the other workers with room left for one more destination, and never
    /// more than `per_destination`. One busy destination may take half of them, two a third
    /// each, and so on: however many answer slowly but surely, or turn slow all at once, a
    /// healthy one's callbacks find a free worker.
    fn fair_cap(&self, busy: usize, unproven: u32) -> u32 {
        let parts = u32::try_from(busy).unwrap_or(u32::MAX).saturating_add(1);
        (self.policy.workers.saturating_sub(unproven) / parts)
            .max(1)
            .min(self.policy.per_destination)
    }

    /// Whether deliveries to `destination` should keep their connection alive: it is one of
    /// the [`KEEP_ALIVE_DESTINATIONS`] with the most successes in the recent window.
    pub fn keeps_alive(&self, destination: &str) -> bool {
        let now = Instant::now();
        let mut cached = self
            .keep_alive
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let member = |set: &[String]| set.iter().any(|d| d == destination);
        // Worked out again every second, and at once for a new destination while there are
        // places left (so the first destinations keep their connections from the start).
        let stale = cached
            .0
            .is_none_or(|at| now.duration_since(at) >= KEEP_ALIVE_REFRESH);
        let room_for_it = cached.1.len() < KEEP_ALIVE_DESTINATIONS && !member(&cached.1);
        if stale || room_for_it {
            let bucket = self.bucket(now);
            let mut busiest: Vec<((u64, u32), String)> = self
                .lock()
                .entries
                .iter()
                .map(|(d, e)| ((e.recent.totals(bucket).0, e.in_flight), d.clone()))
                .collect();
            busiest.sort_unstable_by_key(|(activity, _)| std::cmp::Reverse(*activity));
            busiest.truncate(KEEP_ALIVE_DESTINATIONS);
            *cached = (Some(now), busiest.into_iter().map(|(_, d)| d).collect());
        }
        member(&cached.1)
    }

    /// What holds a due job of `destination` back right now, as this instance sees it: an
    /// open breaker, or the destination's deliveries in flight at its cap.
    pub fn holding(&self, destination: &str) -> Option<crate::model::WaitingFor> {
        let now = Instant::now();
        let cap = self.policy.per_destination;
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.operated.paused_at(destination).is_some() {
            return Some(crate::model::WaitingFor::Paused);
        }
        if receiver_hold(
            &state.operated,
            state.entries.get(destination),
            destination,
            now,
        )
        .is_some()
        {
            return Some(crate::model::WaitingFor::RetryAfter);
        }
        let limit = limit_of(&state.operated, destination, self.policy.default_rate);
        let entry = state.entries.get_mut(destination)?;
        entry.breaker.refresh(now);
        if entry.breaker.is_open() {
            Some(crate::model::WaitingFor::BreakerOpen)
        } else if entry.tokens(limit, now) == 0
            || entry
                .last_rate_limited
                .is_some_and(|at| Utc::now() - at < chrono::Duration::seconds(1))
        {
            // Out of tokens, or was at the last claims: a due job waits for the next one.
            Some(crate::model::WaitingFor::RateLimit)
        } else if entry.in_flight >= entry.allowed(cap) {
            Some(crate::model::WaitingFor::DestinationFull)
        } else {
            None
        }
    }

    /// Holds every job of `destination` on this instance for `wait`, as its receiver asked
    /// (a later end replaces an earlier one, never the other way round). Answers whether
    /// that is news worth telling the other instances: the hold is new, or ends more than a
    /// second later than the one already here (every delivery in flight to a receiver that
    /// asks for time tends to be told so at once).
    pub fn hold(&self, destination: &str, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        let mut state = self.lock();
        let Some(entry) = state.entries.get_mut(destination) else {
            // Not tracked here: the stored hold is the only one.
            return true;
        };
        let before = entry.held_until.filter(|held| *held > Instant::now());
        entry.held_until = Some(before.map_or(until, |held| held.max(until)));
        before.is_none_or(|held| until > held + Duration::from_secs(1))
    }

    /// When a destination held back now may take a job again, the soonest of them: an open
    /// breaker's next probe, a receiver's hold ending, a rate limit's next token. The
    /// dispatcher looks at the queue again then.
    pub fn next_reopening(&self) -> Option<Instant> {
        let now = Instant::now();
        let state = self.lock();
        let entries = state.entries.iter().filter_map(|(destination, entry)| {
            let breaker = match entry.breaker {
                Breaker::Open { until, .. } => Some(until),
                _ => None,
            };
            let limit = limit_of(&state.operated, destination, self.policy.default_rate);
            [
                breaker,
                receiver_hold(&state.operated, Some(entry), destination, now),
                entry.next_token_at(limit),
            ]
            .into_iter()
            .flatten()
            .min()
        });
        let held_elsewhere = state
            .operated
            .held()
            .filter_map(|(destination, _)| receiver_hold(&state.operated, None, destination, now));
        entries.chain(held_elsewhere).min()
    }

    /// Counts a delivery to `destination`, claimed in `share`, as in flight until the
    /// returned permit is dropped. In a half-open breaker, this delivery is the probe.
    pub fn start(self: &Arc<Self>, destination: &str, share: Share) -> DestinationPermit {
        let now = Instant::now();
        let cap = self.policy.per_destination;
        let mut state = self.lock();
        if !state.entries.contains_key(destination) {
            self.make_room(&mut state);
        }
        if share == Share::Unproven {
            state.unproven_in_flight += 1;
        }
        let limit = limit_of(&state.operated, destination, self.policy.default_rate);
        let entry = state
            .entries
            .entry(destination.to_string())
            .or_insert_with(|| Entry::new(now));
        entry.breaker.refresh(now);
        entry.take_token(limit, now);
        entry.in_flight += 1;
        entry.last_active = now;
        let probe = entry.breaker.start_probe();
        if entry.in_flight >= cap {
            entry.last_full = Some(Utc::now());
        }
        DestinationPermit {
            destinations: Arc::clone(self),
            destination: destination.to_string(),
            probe,
            share: Some(share),
            slow: false,
            verdict: None,
            took: None,
            started: now,
        }
    }

    /// Before a new destination is added to a full map: forgets the longest idle eighth of
    /// the tracked destinations (those with nothing in flight), so that a caller naming a new
    /// destination with every request costs one sort per eighth, not one per request. Those
    /// with failures against them (an open breaker above all) go last: forgotten, a dead
    /// receiver would start again as new, and its jobs would spend their attempts on it
    /// instead of waiting for a probe, whenever a caller floods the map with new names.
    fn make_room(&self, state: &mut State) {
        if state.entries.len() < self.policy.tracked {
            return;
        }
        // Those that hold something back go last: an open breaker, a receiver's hold, or a
        // rate limit's bucket not yet full again (forgotten, it would start full: a caller
        // naming new destinations could buy a limited one an extra burst each time).
        let now = Instant::now();
        let mut idle: Vec<((bool, Instant), String)> = state
            .entries
            .iter()
            .filter(|(_, e)| e.in_flight == 0)
            .map(|(d, e)| {
                let limit = limit_of(&state.operated, d, self.policy.default_rate);
                let holds = !e.breaker.is_clear()
                    || e.held_until.is_some_and(|until| until > now)
                    || limit
                        .zip(e.bucket)
                        .is_some_and(|(limit, bucket)| bucket.is_short(limit, now));
                ((holds, e.last_active), d.clone())
            })
            .collect();
        idle.sort_unstable();
        let forget = (self.policy.tracked / 8).max(1);
        for (_, destination) in idle.into_iter().take(forget) {
            state.entries.remove(&destination);
        }
    }

    /// Why a job due at `due_at` waited until now, if it waited long enough to say (more than
    /// a second): the destination's breaker was open, or the destination was full, or every
    /// worker was busy.
    pub fn why_waited(&self, destination: &str, due_at: DateTime<Utc>) -> Option<String> {
        let waited = (Utc::now() - due_at).to_std().ok()?;
        if waited < Duration::from_secs(1) {
            return None;
        }
        let state = self.lock();
        let entry = state.entries.get(destination);
        let since = |at: Option<DateTime<Utc>>| at.is_some_and(|t| t >= due_at);
        let reason = if entry.is_some_and(|e| since(e.last_held)) {
            "the destination's receiver asked to wait (Retry-After)"
        } else if entry.is_some_and(|e| e.was_open_since(due_at)) {
            "the destination's circuit breaker was open"
        } else if entry.is_some_and(|e| since(e.last_rate_limited)) {
            "the destination's rate limit"
        } else if entry.and_then(|e| e.last_full).is_some_and(|t| t >= due_at) {
            "the destination had its most deliveries in flight"
        } else {
            "every delivery worker was busy"
        };
        Some(format!("waited {:.1} s: {reason}", waited.as_secs_f64()))
    }

    fn slowed(&self, permit: &mut DestinationPermit, leaves_share: bool) {
        let mut state = self.lock();
        if leaves_share {
            if permit.share.take() == Some(Share::Unproven) {
                state.unproven_in_flight = state.unproven_in_flight.saturating_sub(1);
            }
        } else if permit.share == Some(Share::Proven) {
            // Still on a worker, now for an unproven destination: it counts where those do.
            // Claimed while its destination was proven, it counted in no share until now.
            permit.share = Some(Share::Unproven);
            state.unproven_in_flight += 1;
        }
        if !permit.slow {
            permit.slow = true;
            if let Some(entry) = state.entries.get_mut(&permit.destination) {
                entry.slow += 1;
                tracing::info!(
                    destination = permit.destination,
                    "a delivery went slow: the destination shares the unproven part until it answers"
                );
            }
        }
    }

    fn finish(&self, permit: &DestinationPermit) {
        let now = Instant::now();
        let bucket = self.bucket(now);
        let cap = self.policy.per_destination;
        let mut state = self.lock();
        if permit.share == Some(Share::Unproven) {
            state.unproven_in_flight = state.unproven_in_flight.saturating_sub(1);
        }
        let Some(entry) = state.entries.get_mut(&permit.destination) else {
            return;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        if permit.slow {
            entry.slow = entry.slow.saturating_sub(1);
        }
        entry.last_active = now;
        let held = now.saturating_duration_since(permit.started);
        entry
            .served
            .add(now, u32::try_from(held.as_millis()).unwrap_or(u32::MAX));
        entry.per_job_ms = per_job_ms(entry.per_job_ms, held);
        entry.breaker.refresh(now);
        if permit.took.is_some_and(|took| took > self.policy.unhurried) {
            if !entry.answered_unhurriedly(now) {
                tracing::info!(
                    destination = permit.destination,
                    "an answer took its time: the destination shares the unproven part for five minutes"
                );
            }
            entry.last_unhurried = Some(now);
        }
        let Some(verdict) = permit.verdict else {
            // Abandoned (shutdown) without an outcome: a probe that never reported leaves
            // room for another.
            if permit.probe {
                entry.breaker.abandon_probe();
            }
            return;
        };
        match verdict {
            Verdict::Healthy => {
                entry.recent.add(bucket, true);
                entry.last_success = Some(now);
                // Each success while at least half the room is in use adds one: a busy
                // destination's room doubles every round trip, an idle one's stays.
                if (entry.in_flight + 1).saturating_mul(2) >= entry.allowed(cap) {
                    entry.room = entry.room.saturating_add(1).min(cap);
                }
            }
            Verdict::Failed(_) => {
                entry.recent.add(bucket, false);
                entry.room = (entry.room / 2).max(INITIAL_ROOM);
            }
            // Not against its breaker, but a failed delivery all the same (a 404 from a wrong
            // path, a 401 from a bad signature: the commonest mistakes; a request's own short
            // timeout), so counted with the failures an operator sees.
            Verdict::Neutral | Verdict::Unknown => entry.recent.add(bucket, false),
        }
        let next = entry
            .breaker
            .after(verdict, permit.probe, now, &self.policy.breaker);
        let destination = permit.destination.as_str();
        if next.is_open() && !entry.breaker.is_open() {
            entry.last_opened = Some(Utc::now());
            tracing::warn!(destination, "circuit breaker opened: deliveries to it wait");
        }
        if matches!(next, Breaker::Closed { .. })
            && !matches!(entry.breaker, Breaker::Closed { .. })
        {
            entry.last_closed = Some(Utc::now());
            tracing::info!(destination, "circuit breaker closed: deliveries resume");
        }
        entry.breaker = next;
    }

    fn bucket(&self, now: Instant) -> u64 {
        now.duration_since(self.epoch).as_secs() / BUCKET.as_secs()
    }

    /// Deliveries in flight in the unproven share.
    pub fn unproven_in_flight(&self) -> u32 {
        self.lock().unproven_in_flight
    }

    /// Every destination seen recently, busiest first.
    pub fn snapshot(&self) -> Vec<DestinationView> {
        let now = Instant::now();
        let bucket = self.bucket(now);
        let cap = self.policy.per_destination;
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut views: Vec<DestinationView> = state
            .entries
            .iter_mut()
            .map(|(destination, entry)| {
                entry.breaker.refresh(now);
                let (recent_successes, recent_failures) = entry.recent.totals(bucket);
                let next_probe_at = match entry.breaker {
                    Breaker::Open { until, .. } => {
                        wall_clock(until, now).map(|at| crate::timestamps::format(&at))
                    }
                    _ => None,
                };
                let paused_at = state.operated.paused_at(destination);
                let own = state.operated.rate(destination);
                let hold = receiver_hold(&state.operated, Some(entry), destination, now);
                let retry_after_until = hold.and_then(|until| wall_clock(until, now));
                DestinationView {
                    destination: destination.clone(),
                    in_flight: entry.in_flight,
                    in_flight_limit: entry.allowed(cap),
                    proven: entry.is_proven(now),
                    slow: entry.slow,
                    answered_slowly: entry.answered_unhurriedly(now),
                    recent_successes,
                    recent_failures,
                    breaker: entry.breaker.state(),
                    next_probe_at,
                    paused: paused_at.is_some(),
                    paused_at: paused_at.as_ref().map(crate::timestamps::format),
                    rate_limit: own.map_or(self.policy.default_rate, OwnRate::limit),
                    rate_limit_own: own.is_some(),
                    retry_after_until: retry_after_until.as_ref().map(crate::timestamps::format),
                    retry_after_left: hold.map(|until| until.saturating_duration_since(now)),
                    held_jobs: None,
                }
            })
            .collect();

        views.sort_by(|a, b| {
            (b.in_flight, b.recent_failures, b.recent_successes)
                .cmp(&(a.in_flight, a.recent_failures, a.recent_successes))
                .then_with(|| a.destination.cmp(&b.destination))
        });
        // Controlled destinations (paused, limited, held) this instance has not delivered
        // to recently are listed too, last, in name order: an operator must find what they
        // paused or limited.
        views.extend(
            state
                .operated
                .controlled()
                .filter(|destination| !state.entries.contains_key(*destination))
                .map(|destination| {
                    DestinationView::idle(destination, &state.operated, &self.policy)
                }),
        );
        views
    }

    /// `destination` as this instance sees it, whether or not it delivered to it lately.
    pub fn view(&self, destination: &str) -> DestinationView {
        self.snapshot()
            .into_iter()
            .find(|view| view.destination == destination)
            .unwrap_or_else(|| {
                DestinationView::idle(destination, &self.lock().operated, &self.policy)
            })
    }

    /// The instances sharing the rate limits, this one included.
    pub fn instances(&self) -> u32 {
        self.lock().operated.instances()
    }
}

/// One delivery in flight to a destination. Report its verdict with [`record`]; dropped
/// without one (the delivery was abandoned), it only frees its place.
///
/// [`record`]: DestinationPermit::record
pub struct DestinationPermit {
    destinations: Arc<Destinations>,
    destination: String,
    probe: bool,
    /// The share it counts against, until it leaves it (gone slow).
    share: Option<Share>,
    slow: bool,
    verdict: Option<Verdict>,
    /// How long the receiver took over its answer, when known.
    took: Option<Duration>,
    /// When it started: the workers' time it took counts toward its destination's turn.
    started: Instant,
}

impl DestinationPermit {
    /// The delivery has run past the slow threshold: its destination is unproven until it
    /// ends. When `leaves_share` (the dispatcher moved it to the slow pool), it no longer
    /// counts against the unproven share; otherwise (it keeps its worker) it does, whichever
    /// share it was claimed in.
    pub fn went_slow(&mut self, leaves_share: bool) {
        let destinations = Arc::clone(&self.destinations);
        destinations.slowed(self, leaves_share);
    }

    pub fn record(mut self, verdict: Verdict) {
        self.verdict = Some(verdict);
    }

    /// As [`record`](Self::record), for an attempt that took `took`: an answer slower than
    /// the policy's `unhurried` makes the destination unproven for a while.
    pub fn record_after(mut self, verdict: Verdict, took: Duration) {
        self.took = Some(took);
        self.record(verdict);
    }
}

impl Drop for DestinationPermit {
    fn drop(&mut self) {
        self.destinations.finish(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> IsolationPolicy {
        IsolationPolicy {
            workers: 20,
            per_destination: 10,
            unproven_share: 3,
            tracked: 64,
            unhurried: Duration::from_millis(500),
            breaker: BreakerPolicy {
                threshold: 2.0,
                cooldown: Duration::from_millis(50),
                max_cooldown: Duration::from_millis(120),
            },
            default_rate: None,
            longest_hold: Duration::from_secs(10),
        }
    }

    fn read(controls: Vec<crate::store::DestinationControl>) -> crate::store::ControlsRead {
        crate::store::ControlsRead {
            controls,
            instances: 1,
        }
    }

    fn control(destination: &str) -> crate::store::DestinationControl {
        crate::store::DestinationControl {
            destination: destination.into(),
            paused_at: None,
            breaker_resets: 0,
            rate: None,
            held_until: None,
        }
    }

    #[test]
    fn a_rate_limit_gives_room_for_its_tokens_and_is_shared_between_instances() {
        let d = Destinations::new(IsolationPolicy {
            default_rate: Some(RateLimit::new(10.0, Some(4)).unwrap()),
            ..policy()
        });
        // Proven with room to spare: the limit is what holds it.
        d.start(A, Share::Unproven).record(Verdict::Healthy);
        for _ in 0..3 {
            drop(d.start(A, Share::Proven));
        }
        assert_eq!(room(&d, A), 0, "a burst of 4, all taken");
        assert_eq!(d.holding(A), Some(crate::model::WaitingFor::RateLimit));
        let next = d.next_reopening().expect("a token comes back");
        assert!(next <= Instant::now() + Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(room(&d, A), 1, "one token a tenth of a second");
        // Its own limit: unlimited, whatever the default.
        let mut own = control(A);
        own.rate = Some(OwnRate::Unlimited);
        assert!(d.apply_controls(&read(vec![own])));
        assert!(room(&d, A) > 1);
        let mut own = control(A);
        own.rate = Some(OwnRate::Limited(RateLimit::new(2.0, Some(2)).unwrap()));
        let shared = crate::store::ControlsRead {
            controls: vec![own],
            instances: 2,
        };
        assert!(d.apply_controls(&shared));
        let view = d.view(A);
        assert!(view.rate_limit_own);
        assert_eq!(view.rate_limit.map(|l| l.burst), Some(2));
        assert_eq!(
            room(&d, A),
            1,
            "half the burst of 2 on each of two instances"
        );
    }

    #[test]
    fn a_receivers_hold_closes_its_destination_here_and_from_another_instance() {
        let d = Destinations::new(policy());
        d.start(A, Share::Unproven).record(Verdict::Healthy);
        assert!(d.hold(A, Duration::from_millis(80)), "news for the others");
        assert!(!d.hold(A, Duration::from_millis(70)), "already held here");
        assert_eq!(room(&d, A), 0);
        assert_eq!(d.holding(A), Some(crate::model::WaitingFor::RetryAfter));
        assert!(d.view(A).retry_after_until.is_some());
        std::thread::sleep(Duration::from_millis(100));
        assert!(room(&d, A) > 0, "the hold is over");
        // Never seen here, held by another instance's receiver.
        let mut held = control("http://other:1");
        held.held_until = Some(Utc::now() + chrono::Duration::seconds(30));
        d.apply_controls(&read(vec![held]));
        assert!(d.rooms().limited.contains(&("http://other:1".into(), 0)));
        assert_eq!(
            d.holding("http://other:1"),
            Some(crate::model::WaitingFor::RetryAfter)
        );
        assert!(
            d.snapshot()
                .iter()
                .any(|v| v.destination == "http://other:1" && v.retry_after_until.is_some())
        );
    }

    #[test]
    fn a_stored_hold_lasts_no_longer_than_the_longest_retry_wait_whatever_the_clocks_say() {
        // An hour ahead: another instance's clock is fast, or this one's was stepped back.
        let d = Destinations::new(IsolationPolicy {
            longest_hold: Duration::from_millis(60),
            ..policy()
        });
        let mut held = control("http://other:1");
        held.held_until = Some(Utc::now() + chrono::Duration::hours(1));
        d.apply_controls(&read(vec![held.clone()]));
        let reopens = d.next_reopening().expect("held");
        assert!(reopens <= Instant::now() + Duration::from_millis(60));
        let shown = d
            .snapshot()
            .into_iter()
            .find_map(|v| v.retry_after_until)
            .expect("shown as held");
        // Naive UTC, as the original wrote times.
        let shown = chrono::NaiveDateTime::parse_from_str(&shown, "%Y-%m-%dT%H:%M:%S%.f")
            .unwrap()
            .and_utc();
        assert!(
            shown <= Utc::now() + chrono::Duration::seconds(1),
            "{shown}"
        );
        assert_eq!(
            d.holding("http://other:1"),
            Some(crate::model::WaitingFor::RetryAfter)
        );
        std::thread::sleep(Duration::from_millis(80));
        // Read again (as each second, and again): the same stored hold is the one already over.
        for _ in 0..3 {
            d.apply_controls(&read(vec![held.clone()]));
            assert_eq!(d.holding("http://other:1"), None);
        }
        assert!(!d.rooms().limited.contains(&("http://other:1".into(), 0)));
        // A new hold stored is a new wait.
        held.held_until = Some(Utc::now() + chrono::Duration::hours(2));
        d.apply_controls(&read(vec![held]));
        assert_eq!(
            d.holding("http://other:1"),
            Some(crate::model::WaitingFor::RetryAfter)
        );
    }

    /// Room for jobs of `dest` that are not overdue, in whichever share it is in: none while
    /// its breaker holds them back.
    fn room(d: &Destinations, dest: &str) -> u32 {
        let rooms = d.rooms();
        if rooms.held.iter().any(|h| h == dest) {
            return 0;
        }
        rooms
            .limited
            .iter()
            .find(|(x, _)| x == dest)
            .map_or(rooms.default, |(_, r)| *r)
    }

    /// The room `dest` has earned (what it may have in flight once busy).
    fn earned(d: &Destinations, dest: &str) -> u32 {
        d.snapshot()
            .into_iter()
            .find(|v| v.destination == dest)
            .map_or(INITIAL_ROOM, |v| v.in_flight_limit)
    }

    /// Starts as many deliveries to `dest` as it has room for, claim after claim.
    fn fill(d: &Arc<Destinations>, dest: &str, share: Share) -> Vec<DestinationPermit> {
        let mut held = Vec::new();
        while room(d, dest) > 0 {
            held.push(d.start(dest, share));
        }
        held
    }

    fn is_proven(d: &Destinations, dest: &str) -> bool {
        d.rooms().is_reserved(dest)
    }

    const A: &str = "http://a.example:80";

    #[test]
    fn destinations_are_scheme_host_and_port() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(destination_of(&url("http://A.Example/x?y")), A);
        assert_eq!(destination_of(&url("http://a.example:80/other")), A);
        assert_eq!(
            destination_of(&url("https://a.example/")),
            "https://a.example:443"
        );
        assert_eq!(destination_of(&url("http://[::1]:9/cb")), "http://[::1]:9");
        assert_eq!(destination_of_str("not a url"), "not a url");
    }

    #[test]
    fn a_destinations_host_drops_scheme_and_port() {
        assert_eq!(destination_host(A), "a.example");
        assert_eq!(destination_host("https://a.example:443"), "a.example");
        assert_eq!(destination_host("http://[::1]:9"), "[::1]");
        assert_eq!(destination_host("http://1.2.3.4:8080"), "1.2.3.4");
        assert_eq!(destination_host("not a url"), "not a url");
    }

    #[test]
    fn a_new_destination_earns_its_room_by_succeeding_at_it() {
        let d = Destinations::new(policy());
        assert_eq!(room(&d, A), INITIAL_ROOM, "unknown: one delivery");
        assert!(!is_proven(&d, A));
        let first = d.start(A, Share::Unproven);
        assert_eq!(room(&d, A), 0);
        first.record(Verdict::Healthy);
        assert!(is_proven(&d, A), "a 2xx proves it");
        assert_eq!(
            earned(&d, A),
            2,
            "a success that used the whole room adds one"
        );
        // Two at once, both succeed: three.
        let both = fill(&d, A, Share::Proven);
        assert_eq!(both.len(), 2);
        both.into_iter().for_each(|p| p.record(Verdict::Healthy));
        assert_eq!(
            earned(&d, A),
            3,
            "only the one that filled the room earns more"
        );
        // Unused room earns nothing: one at a time, however many succeed.
        for _ in 0..20 {
            d.start(A, Share::Proven).record(Verdict::Healthy);
        }
        assert_eq!(earned(&d, A), 3);
        // Used, it grows up to the cap and no further.
        for _ in 0..20 {
            for permit in fill(&d, A, Share::Proven) {
                permit.record(Verdict::Healthy);
            }
        }
        assert_eq!(earned(&d, A), 10, "the per-destination cap");
        // A failure halves it and takes the destination out of the reserved share.
        d.start(A, Share::Proven).record(Verdict::Failed(0.5));
        assert!(!is_proven(&d, A));
        assert_eq!(earned(&d, A), 5);
        d.start(A, Share::Unproven).record(Verdict::Healthy);
        assert!(is_proven(&d, A), "answering again proves it again");
    }

    #[test]
    fn an_idle_destination_that_answered_takes_its_room_at_once() {
        let d = Destinations::new(policy());
        d.start(A, Share::Unproven).record(Verdict::Healthy);
        for _ in 0..20 {
            fill(&d, A, Share::Proven)
                .into_iter()
                .for_each(|p| p.record(Verdict::Healthy));
        }
        assert_eq!(
            (earned(&d, A), room(&d, A)),
            (10, 10),
            "idle, answered: its room"
        );
        // A failure since does not send it back to one at a time: a receiver that fails one
        // callback in five and answers at once still gets more than one per claim.
        d.start(A, Share::Proven).record(Verdict::Failed(0.5));
        assert_eq!((earned(&d, A), room(&d, A)), (5, 5));
    }

    #[test]
    fn idle_destinations_that_answered_share_the_workers_as_if_busy() {
        // Twenty workers, per-destination cap ten: three idle destinations with a room of
        // ten each may start five each (20 / (3 + 1)), so together they leave a quarter.
        let d = Destinations::new(policy());
        let dests = [
            "http://a.example:80",
            "http://b.example:80",
            "http://c.example:80",
        ];
        for dest in dests {
            d.start(dest, Share::Unproven).record(Verdict::Healthy);
            for _ in 0..20 {
                fill(&d, dest, Share::Proven)
                    .into_iter()
                    .for_each(|p| p.record(Verdict::Healthy));
            }
        }
        for dest in dests {
            assert_eq!((earned(&d, dest), room(&d, dest)), (10, 5), "{dest}");
        }
    }

    #[test]
    fn an_idle_destination_that_never_answered_starts_with_one_delivery() {
        let d = Destinations::new(policy());
        d.start(A, Share::Unproven).record(Verdict::Failed(0.5));
        assert_eq!(room(&d, A), 1, "idle, never answered: one");
        let first = d.start(A, Share::Unproven);
        assert_eq!(room(&d, A), 0, "busy: its room, which is one");
        drop(first);
    }

    #[test]
    fn busy_proven_destinations_leave_some_workers_free() {
        let d = Destinations::new(policy());
        let (a, b) = (A, "http://b.example:80");
        for destination in [a, b] {
            d.start(destination, Share::Unproven)
                .record(Verdict::Healthy);
            for _ in 0..20 {
                fill(&d, destination, Share::Proven)
                    .into_iter()
                    .for_each(|p| p.record(Verdict::Healthy));
            }
        }
        let first = d.start(a, Share::Proven);
        assert_eq!(
            room(&d, a),
            9,
            "one busy destination may have half of twenty"
        );
        let second = d.start(b, Share::Proven);
        assert_eq!(
            (room(&d, a), room(&d, b)),
            (5, 5),
            "two busy: a third of the workers each"
        );
        let third = d.start("http://c.example:80", Share::Unproven);
        let fourth = d.start("http://d.example:80", Share::Unproven);
        assert_eq!(
            room(&d, a),
            5,
            "two unproven deliveries leave 18 workers: still 6 each, one in flight"
        );
        let fifth = d.start("http://e.example:80", Share::Unproven);
        assert_eq!(room(&d, a), 4, "three leave 17: 5 each");
        drop((first, third, fourth, fifth));
        assert_eq!(room(&d, b), 9, "b alone: half again");
        drop(second);
    }

    #[test]
    fn unproven_destinations_share_their_part_and_slow_ones_can_leave_it() {
        let d = Destinations::new(policy());
        assert_eq!(d.rooms().shared, 3);
        let mut hung: Vec<_> = (0..3)
            .map(|n| d.start(&format!("http://hung-{n}:80"), Share::Unproven))
            .collect();
        assert_eq!(d.rooms().shared, 0, "three destinations, one share");
        // A proven destination's deliveries do not count against it.
        d.start(A, Share::Unproven).record(Verdict::Healthy);
        let proven = d.start(A, Share::Proven);
        assert_eq!(d.rooms().shared, 0);
        drop(proven);
        // Gone slow and moved to the slow pool, a delivery leaves the share.
        hung[0].went_slow(true);
        assert_eq!(d.rooms().shared, 1);
        // Gone slow without a place in the slow pool, it stays in it.
        hung[1].went_slow(false);
        assert_eq!(d.rooms().shared, 1);
        // Marking twice changes nothing, and ending frees exactly what was held.
        hung[0].went_slow(true);
        assert_eq!(d.rooms().shared, 1);
        // A delivery claimed while its destination was proven that goes slow and keeps its
        // worker joins the share, and leaves it again once it moves.
        let mut turned = d.start(A, Share::Proven);
        turned.went_slow(false);
        assert_eq!(d.rooms().shared, 0);
        turned.went_slow(true);
        assert_eq!(d.rooms().shared, 1);
        let mut turned_again = d.start(A, Share::Proven);
        turned_again.went_slow(false);
        assert_eq!(d.rooms().shared, 0);
        drop((turned, turned_again));
        hung.clear();
        assert_eq!(d.rooms().shared, 3);
        assert_eq!(d.unproven_in_flight(), 0);
    }

    #[test]
    fn a_proven_destination_with_a_slow_delivery_is_unproven_until_it_ends() {
        let d = Destinations::new(policy());
        d.start(A, Share::Unproven).record(Verdict::Healthy);
        assert!(is_proven(&d, A));
        let mut slow = d.start(A, Share::Proven);
        slow.went_slow(true);
        assert!(!is_proven(&d, A));
        let view = d
            .snapshot()
            .into_iter()
            .find(|v| v.destination == A)
            .unwrap();
        assert_eq!((view.slow, view.proven), (1, false));
        slow.record(Verdict::Healthy);
        assert!(is_proven(&d, A));
    }

    /// Many proven destinations answering just under the slow threshold would each keep a
    /// room of one in the reserved share and together hold every worker; one answer slower
    /// than `unhurried` sends a destination to the unproven share, quick answers after it
    /// notwithstanding, until the recent window has passed.
    #[test]
    fn an_unhurried_answer_makes_a_destination_unproven_for_the_recent_window() {
        let d = Destinations::new(policy());
        d.start(A, Share::Unproven)
            .record_after(Verdict::Healthy, Duration::from_millis(5));
        assert!(is_proven(&d, A), "a quick answer proves it");
        d.start(A, Share::Proven)
            .record_after(Verdict::Healthy, Duration::from_millis(400));
        assert!(is_proven(&d, A), "under the threshold it stays proven");
        d.start(A, Share::Proven)
            .record_after(Verdict::Healthy, Duration::from_millis(1900));
        assert!(!is_proven(&d, A));
        for _ in 0..10 {
            d.start(A, Share::Unproven)
                .record_after(Verdict::Healthy, Duration::from_millis(5));
        }
        assert!(
            !is_proven(&d, A),
            "quick answers since do not prove it again"
        );
        let view = d
            .snapshot()
            .into_iter()
            .find(|v| v.destination == A)
            .unwrap();
        assert_eq!((view.answered_slowly, view.proven), (true, false));
        let rooms = d.rooms();
        assert!(
            !rooms.is_reserved(A),
            "its jobs count against the shared budget"
        );

        // Once the window has passed, its recent quick answers prove it again (on a
        // machine whose monotonic clock has run that long).
        if let Some(long_ago) = Instant::now().checked_sub(RECENT_WINDOW + Duration::from_secs(1)) {
            d.lock().entries.get_mut(A).unwrap().last_unhurried = Some(long_ago);
            assert!(is_proven(&d, A));
        }
    }

    #[test]
    fn failures_open_the_breaker_and_a_probe_decides() {
        let d = Destinations::new(policy());
        // 5xx count half: three of them stay below the threshold of 2.
        for _ in 0..3 {
            d.start(A, Share::Unproven).record(Verdict::Failed(0.5));
        }
        assert_eq!(room(&d, A), 1);
        // A 2xx resets the score.
        d.start(A, Share::Unproven).record(Verdict::Healthy);
        d.start(A, Share::Unproven).record(Verdict::Failed(1.0));
        assert_eq!(room(&d, A), 1);
        d.start(A, Share::Unproven).record(Verdict::Failed(1.0));
        assert_eq!(room(&d, A), 0, "two timeouts open it");
        assert!(d.next_reopening().is_some());
        assert_eq!(d.snapshot()[0].breaker, BreakerState::Open);

        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(room(&d, A), 1, "half-open: room for one probe");
        let probe = d.start(A, Share::Unproven);
        assert_eq!(room(&d, A), 0, "only one probe");
        probe.record(Verdict::Failed(1.0));
        assert_eq!(room(&d, A), 0, "a failed probe opens it again");
        // For twice the cool-down: still open after the first cool-down.
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(room(&d, A), 0);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(room(&d, A), 1);
        d.start(A, Share::Unproven).record(Verdict::Healthy);
        assert_eq!(earned(&d, A), 2, "a successful probe closes it");
        assert_eq!(d.snapshot()[0].breaker, BreakerState::Closed);
    }

    #[test]
    fn neutral_answers_do_not_count_and_an_abandoned_probe_frees_the_turn() {
        let d = Destinations::new(policy());
        for _ in 0..10 {
            d.start(A, Share::Unproven).record(Verdict::Neutral);
        }
        assert_eq!(room(&d, A), 1);
        assert!(!is_proven(&d, A), "a 4xx proves nothing");
        let view = &d.snapshot()[0];
        assert_eq!(view.breaker, BreakerState::Closed, "nor counts against it");
        assert_eq!(
            view.recent_failures, 10,
            "but each is a failed delivery to show"
        );
        d.start(A, Share::Unproven).record(Verdict::Failed(1.0));
        d.start(A, Share::Unproven).record(Verdict::Failed(1.0));
        std::thread::sleep(Duration::from_millis(60));
        drop(d.start(A, Share::Unproven));
        assert_eq!(room(&d, A), 1, "the next probe may go");
        d.start(A, Share::Unproven).record(Verdict::Unknown);
        assert_eq!(
            d.snapshot()[0].breaker,
            BreakerState::HalfOpen,
            "a probe that learnt nothing (its own short timeout) closes nothing"
        );
        assert_eq!(room(&d, A), 1, "and leaves the turn to the next probe");
        d.start(A, Share::Unproven).record(Verdict::Neutral);
        assert_eq!(
            d.snapshot()[0].breaker,
            BreakerState::Closed,
            "a probe answered with a 4xx shows the destination up"
        );
    }

    #[test]
    fn the_map_stays_bounded_however_many_destinations_are_named() {
        let d = Destinations::new(IsolationPolicy {
            tracked: 16,
            ..policy()
        });
        let busy = d.start(A, Share::Unproven);
        for n in 0..1000 {
            d.start(&format!("http://invented-{n}:80"), Share::Unproven)
                .record(Verdict::Failed(1.0));
        }
        let tracked = d.snapshot();
        assert!(
            tracked.len() <= 16,
            "{} destinations tracked",
            tracked.len()
        );
        assert!(
            tracked.iter().any(|v| v.destination == A),
            "a destination with a delivery in flight is never forgotten"
        );
        drop(busy);
        assert_eq!(d.unproven_in_flight(), 0);
    }

    /// A flood of new names that answer at once forgets quiet healthy destinations before a
    /// failing one, whose breaker would otherwise start again closed.
    #[test]
    fn a_flood_of_new_names_forgets_failing_destinations_last() {
        let d = Destinations::new(IsolationPolicy {
            tracked: 16,
            ..policy()
        });
        d.start(A, Share::Unproven).record(Verdict::Failed(1.0));
        d.start(A, Share::Unproven).record(Verdict::Failed(1.0));
        assert_eq!(d.snapshot()[0].breaker, BreakerState::Open);
        for n in 0..1000 {
            d.start(&format!("http://invented-{n}:80"), Share::Unproven)
                .record(Verdict::Healthy);
        }
        let view = d.snapshot().into_iter().find(|v| v.destination == A);
        assert!(view.is_some(), "the failing destination is still tracked");
    }

    #[test]
    fn only_the_busiest_destinations_keep_connections_alive() {
        let d = Destinations::new(policy());
        // The first destinations keep theirs from their first delivery.
        let first = d.start(A, Share::Unproven);
        assert!(d.keeps_alive(A));
        first.record(Verdict::Healthy);
        // Of many, only the busiest few.
        for n in 0..KEEP_ALIVE_DESTINATIONS + 3 {
            let destination = format!("http://busy-{n}:80");
            for _ in 0..=n {
                d.start(&destination, Share::Unproven)
                    .record(Verdict::Healthy);
            }
        }
        std::thread::sleep(KEEP_ALIVE_REFRESH);
        let keeping: Vec<usize> = (0..KEEP_ALIVE_DESTINATIONS + 3)
            .filter(|n| d.keeps_alive(&format!("http://busy-{n}:80")))
            .collect();
        assert_eq!(keeping, [3, 4, 5, 6], "the four with the most successes");
        assert!(!d.keeps_alive(A));
    }

    #[test]
    fn a_paused_destination_has_no_room_whatever_this_instance_knows_of_it() {
        let d = Destinations::new(policy());
        let paused = |destination: &str| crate::store::DestinationControl {
            destination: destination.into(),
            paused_at: Some(Utc::now()),
            ..control(destination)
        };
        // Known and idle (claimed with the default room, so not listed), known and proven
        // (reserved), and never seen.
        drop(d.start("http://idle:1", Share::Unproven));
        d.start(A, Share::Unproven).record(Verdict::Healthy);
        assert!(is_proven(&d, A));
        assert!(!d.rooms().limited.iter().any(|(x, _)| x == "http://idle:1"));
        let released = d.apply_controls(&read(vec![
            paused("http://idle:1"),
            paused(A),
            paused("http://new:2"),
        ]));
        assert!(!released);
        let rooms = d.rooms();
        for destination in ["http://idle:1", A, "http://new:2"] {
            let listed: Vec<u32> = rooms
                .limited
                .iter()
                .filter(|(x, _)| x == destination)
                .map(|(_, room)| *room)
                .collect();
            assert_eq!(listed, [0], "{destination}: {rooms:?}");
            assert_eq!(
                d.holding(destination),
                Some(crate::model::WaitingFor::Paused)
            );
        }
        assert!(!rooms.is_reserved(A), "paused: not in the reserved share");
        assert!(d.apply_controls(&read(vec![])), "resumed: held jobs may go");
        assert_eq!(room(&d, "http://idle:1"), 1);
        assert!(is_proven(&d, A));
    }

    /// A destination's turn is the workers' time its deliveries took lately plus what those
    /// in flight are expected to take; one that had none is not listed.
    #[test]
    fn turns_count_the_workers_time() {
        let d = Destinations::new(policy());
        let first = d.start(A, Share::Proven);
        std::thread::sleep(Duration::from_millis(40));
        first.record(Verdict::Healthy);
        let in_flight = d.start(A, Share::Proven);
        let rooms = d.rooms();
        let (_, turn) = rooms.turns.iter().find(|(x, _)| x == A).unwrap();
        // 40 ms lately, and one in flight expected to take a quarter of 40 ms more than the
        // first guess.
        assert!((40..200).contains(&turn.first), "{turn:?}");
        assert!(
            turn.per_job >= 17 && turn.first >= 40 + turn.per_job,
            "{turn:?}"
        );
        assert!(rooms.turns.iter().all(|(x, _)| x == A), "{:?}", rooms.turns);
        drop(in_flight);
    }

    /// With more proven destinations than a claim looks up, each claim looks up those looked
    /// up least lately: every one has its turn within a few claims.
    #[test]
    fn look_ups_go_round_the_proven_destinations() {
        let d = Destinations::new(IsolationPolicy {
            tracked: 1_000,
            ..policy()
        });
        let proven: Vec<String> = (0..100).map(|i| format!("http://p{i}:1")).collect();
        for destination in &proven {
            d.start(destination, Share::Proven).record(Verdict::Healthy);
        }
        let first = d.rooms().look_up;
        let second = d.rooms().look_up;
        assert_eq!((first.len(), second.len()), (TURN_LOOKUPS, TURN_LOOKUPS));
        let mut seen: Vec<&String> = first.iter().chain(&second).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), proven.len(), "two claims look up all of them");
    }
}
