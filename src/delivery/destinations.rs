//! Per-destination isolation: how many deliveries each destination (scheme, host, port) has in
//! flight, and a circuit breaker per destination, so that no receiver, however slow or dead,
//! delays callbacks to another.
//!
//! - **Cap.** A destination has at most `per_destination` deliveries in flight. The dispatcher
//!   asks [`Destinations::rooms`] before each claim and the store claims no more jobs of a
//!   destination than it has room for, so a job whose destination is full is never claimed:
//!   it holds no worker slot and no lease while it waits, keeps its place in the queue, and
//!   jobs for other destinations behind it are claimed past it.
//! - **Breaker.** Failures add to a destination's score: a timeout or a connection failure
//!   counts 1 (the destination is unreachable or stuck: each costs a slot for up to the whole
//!   timeout), an HTTP 5xx, 408 or 429 counts ½ (the receiver is up and answers fast, but
//!   refuses), any other answer counts nothing (a 4xx is the receiver's deliberate verdict on
//!   this callback, not a sign of ill health), and a 2xx resets the score. At the threshold
//!   the breaker opens: the claim passes the destination's jobs over, so they wait without an
//!   attempt and without a slot, losing none of their attempts and keeping their place.
//!   After the cool-down it is half-open: room for exactly one delivery, the probe. The
//!   probe's success closes it; its failure opens it again for twice the cool-down, up to the
//!   maximum. A job that has waited longer than the maximum cool-down goes anyway (within the
//!   cap): every job's wait is bounded, so the jobs of a destination that never recovers
//!   still end, `callback_failed`, instead of filling the queue one probe at a time.
//! - Breakers are per instance: instances sharing a PostgreSQL database each learn a
//!   destination's health from their own attempts (no extra database round trip per
//!   delivery), so with K instances a dead destination gets up to K probes per cool-down.
//!
//! State is kept only for destinations seen recently: an idle, healthy destination is
//! forgotten after [`FORGET_AFTER`], so the map is bounded by the destinations in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::client::AttemptKind;

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

/// An idle destination with a closed breaker is forgotten after this long.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// The window of the recent success and failure counts.
pub const RECENT_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Width of one bucket of the recent counts.
const BUCKET: Duration = Duration::from_secs(30);
const BUCKETS: usize = (RECENT_WINDOW.as_secs() / BUCKET.as_secs()) as usize;

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

/// When the breaker opens and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    /// Failure score at which the breaker opens (a timeout or connection failure counts 1).
    pub threshold: f64,
    /// First cool-down; each failed probe doubles it.
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

/// What an attempt's outcome says about its destination's health.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Answered with 2xx.
    Healthy,
    /// A failure that counts this much towards opening the breaker.
    Failed(f64),
    /// Says nothing about the destination (a 4xx, a blocked address).
    Neutral,
}

impl Verdict {
    /// The verdict of one attempt (see the module docs for the weights).
    pub fn of(kind: AttemptKind, status_code: Option<u16>) -> Self {
        match kind {
            AttemptKind::Delivered => Verdict::Healthy,
            AttemptKind::Timeout | AttemptKind::Connection => Verdict::Failed(1.0),
            AttemptKind::HttpStatus => match status_code {
                Some(code) if code >= 500 || code == 408 || code == 429 => Verdict::Failed(0.5),
                _ => Verdict::Neutral,
            },
            AttemptKind::Other => Verdict::Failed(0.5),
            AttemptKind::Blocked | AttemptKind::Invalid => Verdict::Neutral,
        }
    }
}

/// A breaker's state, as `GET /destinations` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
enum Breaker {
    Closed {
        score: f64,
    },
    Open {
        until: Instant,
        cooldown: Duration,
    },
    /// After the cool-down: one probe may go; `cooldown` is the one it ended.
    HalfOpen {
        probing: bool,
        cooldown: Duration,
    },
}

/// Recent successes and failures in buckets of [`BUCKET`].
#[derive(Debug, Clone, Default)]
struct Recent {
    /// (bucket number since `Destinations::epoch`, successes, failures)
    buckets: [(u64, u64, u64); BUCKETS],
}

impl Recent {
    fn add(&mut self, bucket: u64, success: bool) {
        let slot = &mut self.buckets[(bucket % BUCKETS as u64) as usize];
        if slot.0 != bucket {
            *slot = (bucket, 0, 0);
        }
        if success {
            slot.1 += 1;
        } else {
            slot.2 += 1;
        }
    }

    fn totals(&self, bucket: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|(b, _, _)| bucket.saturating_sub(*b) < BUCKETS as u64)
            .fold((0, 0), |(s, f), (_, bs, bf)| (s + bs, f + bf))
    }
}

#[derive(Debug, Clone)]
struct Entry {
    in_flight: u32,
    breaker: Breaker,
    recent: Recent,
    last_active: Instant,
    /// When the breaker last opened and last closed, and when the destination was last
    /// full: to tell an attempt's audit why it waited.
    last_opened: Option<DateTime<Utc>>,
    last_closed: Option<DateTime<Utc>>,
    last_full: Option<DateTime<Utc>>,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self {
            in_flight: 0,
            breaker: Breaker::Closed { score: 0.0 },
            recent: Recent::default(),
            last_active: now,
            last_opened: None,
            last_closed: None,
            last_full: None,
        }
    }

    /// Moves an open breaker whose cool-down is over to half-open.
    fn refresh(&mut self, now: Instant) {
        if let Breaker::Open { until, cooldown } = self.breaker
            && now >= until
        {
            self.breaker = Breaker::HalfOpen {
                probing: false,
                cooldown,
            };
        }
    }

    /// Room for more deliveries, and whether the breaker holds the destination's jobs back.
    fn room(&self, cap: u32) -> (u32, bool) {
        let free = cap.saturating_sub(self.in_flight);
        match self.breaker {
            Breaker::Closed { .. } => (free, false),
            Breaker::HalfOpen { probing: false, .. } => (free.min(1), false),
            Breaker::Open { .. } | Breaker::HalfOpen { probing: true, .. } => (free, true),
        }
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
        self.in_flight == 0
            && matches!(self.breaker, Breaker::Closed { score } if score == 0.0)
            && now.duration_since(self.last_active) > FORGET_AFTER
    }
}

/// What a claim may take, per destination: every destination not in `limited` has room for
/// `default` more deliveries; the jobs of a destination in `held` (its breaker is open) are
/// passed over unless they have been due for longer than `overdue`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rooms {
    pub default: u32,
    pub limited: Vec<(String, u32)>,
    pub held: Vec<String>,
    pub overdue: Duration,
}

impl Rooms {
    /// Uses up one place of `destination`'s room (a job claimed for it).
    pub fn take_one(&mut self, destination: &str) {
        match self.limited.iter_mut().find(|(d, _)| d == destination) {
            Some((_, room)) => *room = room.saturating_sub(1),
            None => self
                .limited
                .push((destination.to_string(), self.default.saturating_sub(1))),
        }
    }

    /// The destinations with no room at all.
    pub fn closed(&self) -> impl Iterator<Item = &str> {
        self.limited
            .iter()
            .filter(|(_, room)| *room == 0)
            .map(|(d, _)| d.as_str())
    }

    /// The limited destinations as a JSON object `{"destination": room, …}`, the form
    /// PostgreSQL's claim statements read.
    pub fn to_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .limited
            .iter()
            .map(|(d, room)| (d.clone(), serde_json::Value::from(*room)))
            .collect();
        serde_json::Value::Object(map).to_string()
    }
}

/// One destination as `GET /destinations` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DestinationView {
    /// `scheme://host:port`.
    pub destination: String,
    pub in_flight: u32,
    /// Delivered attempts in the last five minutes.
    pub recent_successes: u64,
    /// Failed attempts in the last five minutes.
    pub recent_failures: u64,
    pub breaker: BreakerState,
    /// When an open breaker lets its next probe through (RFC 3339), if it is open.
    pub next_probe_at: Option<String>,
}

/// The per-destination state of one instance.
pub struct Destinations {
    state: Mutex<HashMap<String, Entry>>,
    /// The destinations whose connections are kept alive, and when they were worked out.
    keep_alive: Mutex<(Option<Instant>, Vec<String>)>,
    per_destination: u32,
    policy: BreakerPolicy,
    epoch: Instant,
}

impl Destinations {
    pub fn new(per_destination: u32, policy: BreakerPolicy) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(HashMap::new()),
            keep_alive: Mutex::new((None, Vec::new())),
            per_destination,
            policy,
            epoch: Instant::now(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Room for more deliveries now, per destination. Also forgets idle destinations.
    pub fn rooms(&self) -> Rooms {
        let now = Instant::now();
        let mut state = self.lock();
        state.retain(|_, entry| !entry.is_forgettable(now));
        let mut limited = Vec::new();
        let mut held = Vec::new();
        for (destination, entry) in state.iter_mut() {
            entry.refresh(now);
            let (room, is_held) = entry.room(self.per_destination);
            if room < self.per_destination {
                limited.push((destination.clone(), room));
            }
            if is_held {
                held.push(destination.clone());
            }
        }
        Rooms {
            default: self.per_destination,
            limited,
            held,
            overdue: self.policy.max_cooldown,
        }
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
                .iter()
                .map(|(d, e)| ((e.recent.totals(bucket).0, e.in_flight), d.clone()))
                .collect();
            busiest.sort_unstable_by_key(|(activity, _)| std::cmp::Reverse(*activity));
            busiest.truncate(KEEP_ALIVE_DESTINATIONS);
            *cached = (Some(now), busiest.into_iter().map(|(_, d)| d).collect());
        }
        member(&cached.1)
    }

    /// When an open breaker next lets a probe through, if any is open: the dispatcher looks
    /// at the queue again then.
    pub fn next_reopening(&self) -> Option<Instant> {
        self.lock()
            .values()
            .filter_map(|entry| match entry.breaker {
                Breaker::Open { until, .. } => Some(until),
                _ => None,
            })
            .min()
    }

    /// Counts a delivery to `destination` as in flight until the returned permit is dropped.
    /// In a half-open breaker, this delivery is the probe.
    pub fn start(self: &Arc<Self>, destination: &str) -> DestinationPermit {
        let now = Instant::now();
        let mut state = self.lock();
        let entry = state
            .entry(destination.to_string())
            .or_insert_with(|| Entry::new(now));
        entry.refresh(now);
        entry.in_flight += 1;
        entry.last_active = now;
        let probe = match &mut entry.breaker {
            Breaker::HalfOpen { probing, .. } if !*probing => {
                *probing = true;
                true
            }
            _ => false,
        };
        if entry.in_flight >= self.per_destination {
            entry.last_full = Some(Utc::now());
        }
        DestinationPermit {
            destinations: Arc::clone(self),
            destination: destination.to_string(),
            probe,
            verdict: None,
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
        let entry = state.get(destination);
        let reason = if entry.is_some_and(|e| e.was_open_since(due_at)) {
            "the destination's circuit breaker was open"
        } else if entry.and_then(|e| e.last_full).is_some_and(|t| t >= due_at) {
            "the destination had its most deliveries in flight"
        } else {
            "every delivery worker was busy"
        };
        Some(format!("waited {:.1} s: {reason}", waited.as_secs_f64()))
    }

    fn finish(&self, destination: &str, probe: bool, verdict: Option<Verdict>) {
        let now = Instant::now();
        let bucket = self.bucket(now);
        let mut state = self.lock();
        let Some(entry) = state.get_mut(destination) else {
            return;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        entry.last_active = now;
        entry.refresh(now);
        let Some(verdict) = verdict else {
            // Abandoned (shutdown) without an outcome: a probe that never reported leaves
            // room for another.
            if let Breaker::HalfOpen { probing, .. } = &mut entry.breaker
                && probe
            {
                *probing = false;
            }
            return;
        };
        match verdict {
            Verdict::Healthy => entry.recent.add(bucket, true),
            Verdict::Failed(_) => entry.recent.add(bucket, false),
            Verdict::Neutral => {}
        }
        let policy = self.policy;
        let open = |cooldown: Duration| Breaker::Open {
            until: now + cooldown,
            cooldown,
        };
        let next = match (entry.breaker, verdict) {
            // The destination answers: whatever the state, it is healthy again.
            (_, Verdict::Healthy) => Breaker::Closed { score: 0.0 },
            (Breaker::Closed { score }, Verdict::Failed(weight)) => {
                let score = score + weight;
                if score >= policy.threshold {
                    open(policy.cooldown)
                } else {
                    Breaker::Closed { score }
                }
            }
            (Breaker::HalfOpen { cooldown, .. }, Verdict::Failed(_)) if probe => {
                open((cooldown * 2).min(policy.max_cooldown))
            }
            // A neutral answer to a probe still shows the destination is up.
            (Breaker::HalfOpen { .. }, Verdict::Neutral) if probe => Breaker::Closed { score: 0.0 },
            // Late results of deliveries started before the breaker opened change nothing.
            (state, _) => state,
        };
        if matches!(next, Breaker::Open { .. }) && !matches!(entry.breaker, Breaker::Open { .. }) {
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

    /// Every destination seen recently, busiest first.
    pub fn snapshot(&self) -> Vec<DestinationView> {
        let now = Instant::now();
        let bucket = self.bucket(now);
        let mut state = self.lock();
        let mut views: Vec<DestinationView> = state
            .iter_mut()
            .map(|(destination, entry)| {
                entry.refresh(now);
                let (recent_successes, recent_failures) = entry.recent.totals(bucket);
                let (breaker, next_probe_at) = match entry.breaker {
                    Breaker::Closed { .. } => (BreakerState::Closed, None),
                    Breaker::Open { until, .. } => {
                        let at = Utc::now()
                            + chrono::Duration::from_std(until.saturating_duration_since(now))
                                .unwrap_or_default();
                        (
                            BreakerState::Open,
                            Some(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                        )
                    }
                    Breaker::HalfOpen { .. } => (BreakerState::HalfOpen, None),
                };
                DestinationView {
                    destination: destination.clone(),
                    in_flight: entry.in_flight,
                    recent_successes,
                    recent_failures,
                    breaker,
                    next_probe_at,
                }
            })
            .collect();
        views.sort_by(|a, b| {
            (b.in_flight, b.recent_failures, b.recent_successes)
                .cmp(&(a.in_flight, a.recent_failures, a.recent_successes))
                .then_with(|| a.destination.cmp(&b.destination))
        });
        views
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
    verdict: Option<Verdict>,
}

impl DestinationPermit {
    pub fn record(mut self, verdict: Verdict) {
        self.verdict = Some(verdict);
    }
}

impl Drop for DestinationPermit {
    fn drop(&mut self) {
        self.destinations
            .finish(&self.destination, self.probe, self.verdict);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            threshold: 2.0,
            cooldown: Duration::from_millis(50),
            max_cooldown: Duration::from_millis(120),
        }
    }

    /// Room for jobs that are not overdue: none while the breaker holds them back.
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
    fn the_cap_bounds_deliveries_in_flight_per_destination() {
        let d = Destinations::new(2, policy());
        assert_eq!(room(&d, A), 2);
        let first = d.start(A);
        assert_eq!(room(&d, A), 1);
        let second = d.start(A);
        assert_eq!(room(&d, A), 0);
        assert_eq!(d.rooms().closed().collect::<Vec<_>>(), [A]);
        assert!(d.rooms().held.is_empty(), "full is not held");
        assert_eq!(
            room(&d, "http://b.example:80"),
            2,
            "others are not affected"
        );
        first.record(Verdict::Healthy);
        assert_eq!(room(&d, A), 1);
        drop(second);
        assert_eq!(room(&d, A), 2, "an abandoned delivery frees its place");
    }

    #[test]
    fn failures_open_the_breaker_and_a_probe_decides() {
        let d = Destinations::new(10, policy());
        // 5xx count half: three of them stay below the threshold of 2.
        for _ in 0..3 {
            d.start(A).record(Verdict::Failed(0.5));
        }
        assert_eq!(room(&d, A), 10);
        // A 2xx resets the score.
        d.start(A).record(Verdict::Healthy);
        d.start(A).record(Verdict::Failed(1.0));
        assert_eq!(room(&d, A), 10);
        d.start(A).record(Verdict::Failed(1.0));
        assert_eq!(room(&d, A), 0, "two timeouts open it");
        assert!(d.next_reopening().is_some());
        assert_eq!(d.snapshot()[0].breaker, BreakerState::Open);

        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(room(&d, A), 1, "half-open: room for one probe");
        let probe = d.start(A);
        assert_eq!(room(&d, A), 0, "only one probe");
        probe.record(Verdict::Failed(1.0));
        assert_eq!(room(&d, A), 0, "a failed probe opens it again");
        // For twice the cool-down: still open after the first cool-down.
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(room(&d, A), 0);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(room(&d, A), 1);
        d.start(A).record(Verdict::Healthy);
        assert_eq!(room(&d, A), 10, "a successful probe closes it");
        assert_eq!(d.snapshot()[0].breaker, BreakerState::Closed);
    }

    #[test]
    fn neutral_answers_do_not_count_and_an_abandoned_probe_frees_the_turn() {
        let d = Destinations::new(10, policy());
        for _ in 0..10 {
            d.start(A).record(Verdict::Neutral);
        }
        assert_eq!(room(&d, A), 10);
        d.start(A).record(Verdict::Failed(1.0));
        d.start(A).record(Verdict::Failed(1.0));
        std::thread::sleep(Duration::from_millis(60));
        drop(d.start(A));
        assert_eq!(room(&d, A), 1, "the next probe may go");
        d.start(A).record(Verdict::Neutral);
        assert_eq!(
            room(&d, A),
            10,
            "a probe answered with a 4xx shows the destination up"
        );
    }

    #[test]
    fn only_the_busiest_destinations_keep_connections_alive() {
        let d = Destinations::new(10, policy());
        // The first destinations keep theirs from their first delivery.
        let first = d.start(A);
        assert!(d.keeps_alive(A));
        first.record(Verdict::Healthy);
        // Of many, only the busiest few.
        for n in 0..KEEP_ALIVE_DESTINATIONS + 3 {
            let destination = format!("http://busy-{n}:80");
            for _ in 0..=n {
                d.start(&destination).record(Verdict::Healthy);
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
    fn verdicts_weigh_timeouts_more_than_refusals() {
        assert_eq!(
            Verdict::of(AttemptKind::Timeout, None),
            Verdict::Failed(1.0)
        );
        assert_eq!(
            Verdict::of(AttemptKind::Connection, None),
            Verdict::Failed(1.0)
        );
        assert_eq!(
            Verdict::of(AttemptKind::HttpStatus, Some(503)),
            Verdict::Failed(0.5)
        );
        assert_eq!(
            Verdict::of(AttemptKind::HttpStatus, Some(429)),
            Verdict::Failed(0.5)
        );
        assert_eq!(
            Verdict::of(AttemptKind::HttpStatus, Some(404)),
            Verdict::Neutral
        );
        assert_eq!(
            Verdict::of(AttemptKind::HttpStatus, Some(302)),
            Verdict::Neutral
        );
        assert_eq!(
            Verdict::of(AttemptKind::Delivered, Some(200)),
            Verdict::Healthy
        );
        assert_eq!(Verdict::of(AttemptKind::Blocked, None), Verdict::Neutral);
    }

    #[test]
    fn rooms_serialise_for_the_claim() {
        let rooms = Rooms {
            default: 5,
            limited: vec![(A.into(), 0), ("http://b:1".into(), 3)],
            held: vec!["http://c:2".into()],
            overdue: Duration::from_secs(1),
        };
        let json: serde_json::Value = serde_json::from_str(&rooms.to_json()).unwrap();
        assert_eq!(json, serde_json::json!({A: 0, "http://b:1": 3}));
        assert_eq!(rooms.closed().collect::<Vec<_>>(), [A]);
    }
}
