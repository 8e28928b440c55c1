//! When each request is due: closed loop (send when a worker is free) or open loop (send at
//! a fixed rate), and when a phase stops issuing requests (after a count or a duration).
//!
//! Latency is measured from a request's *due* time, not from when it actually left. In a
//! closed loop the two are the same instant. In an open loop, request `i` is due at
//! `t0 + i / rate` whether or not a worker is free then: when the server stalls, every
//! worker waits on it, requests fall behind their schedule, and the time they spend behind
//! is counted in their latency. This is wrk2's correction for *coordinated omission*:
//! without it, a tool that waits for the server before sending the next request sends
//! nothing during a stall, and the stall shows up as one slow request instead of the
//! hundreds of users who would have waited through it.
//!
//! Workers share one atomic counter of issued requests, so taking a ticket takes no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Each worker sends its next request as soon as the previous one is answered.
    Closed,
    /// Requests are due at a fixed rate (per second), whatever the server does.
    Open { rate: f64 },
}

/// When a phase stops issuing requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// After this many requests.
    Count(u64),
    /// Requests due after `t0 + duration` are not sent.
    Duration(Duration),
}

/// One request to send: its number in the phase and when it is due.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    pub index: u64,
    pub due: Instant,
}

/// The shared schedule of one phase.
#[derive(Debug)]
pub struct Schedule {
    pace: Pace,
    limit: Limit,
    t0: Instant,
    issued: AtomicU64,
}

impl Schedule {
    /// A schedule starting now.
    pub fn new(pace: Pace, limit: Limit) -> Self {
        Self::starting_at(pace, limit, Instant::now())
    }

    pub fn starting_at(pace: Pace, limit: Limit, t0: Instant) -> Self {
        Self {
            pace,
            limit,
            t0,
            issued: AtomicU64::new(0),
        }
    }

    pub fn start(&self) -> Instant {
        self.t0
    }

    pub fn pace(&self) -> Pace {
        self.pace
    }

    /// How many requests the phase will send, when that is known in advance.
    pub fn planned(&self) -> Option<u64> {
        match (self.limit, self.pace) {
            (Limit::Count(n), _) => Some(n),
            (Limit::Duration(d), Pace::Open { rate }) => {
                // Due times t0 + i/rate with i/rate < d: i < d·rate.
                Some((d.as_secs_f64() * rate).ceil() as u64)
            }
            (Limit::Duration(_), Pace::Closed) => None,
        }
    }

    /// The next request to send, or `None` when the phase has issued all it should. In a
    /// closed loop, `now` is the due time; in an open loop the ticket may be due in the
    /// future (the caller waits for it) or in the past (the caller is behind: send at once).
    pub fn next(&self, now: Instant) -> Option<Ticket> {
        let index = self.issued.fetch_add(1, Ordering::Relaxed);
        let due = match self.pace {
            Pace::Closed => now,
            Pace::Open { rate } => self.t0 + Duration::from_secs_f64(index as f64 / rate),
        };
        let within = match self.limit {
            Limit::Count(n) => index < n,
            Limit::Duration(d) => due < self.t0 + d,
        };
        if within {
            Some(Ticket { index, due })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_loop_with_a_count_issues_exactly_n_tickets_due_now() {
        let schedule = Schedule::new(Pace::Closed, Limit::Count(3));
        let now = Instant::now();
        let tickets: Vec<Ticket> = std::iter::from_fn(|| schedule.next(now)).collect();
        assert_eq!(
            tickets.iter().map(|t| t.index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(tickets.iter().all(|t| t.due == now));
        assert!(schedule.next(now).is_none(), "stays finished");
        assert_eq!(schedule.planned(), Some(3));
    }

    #[test]
    fn closed_loop_with_a_duration_stops_at_the_deadline() {
        let t0 = Instant::now();
        let schedule =
            Schedule::starting_at(Pace::Closed, Limit::Duration(Duration::from_secs(1)), t0);
        assert!(schedule.next(t0 + Duration::from_millis(999)).is_some());
        assert!(schedule.next(t0 + Duration::from_secs(1)).is_none());
        assert_eq!(schedule.planned(), None);
    }

    #[test]
    fn open_loop_due_times_follow_the_rate_not_the_caller() {
        let t0 = Instant::now();
        let schedule = Schedule::starting_at(
            Pace::Open { rate: 100.0 },
            Limit::Duration(Duration::from_secs(1)),
            t0,
        );
        // However late the caller asks, ticket i is due at t0 + i/100 s.
        let late = t0 + Duration::from_secs(5);
        let tickets: Vec<Ticket> = std::iter::from_fn(|| schedule.next(late)).collect();
        assert_eq!(tickets.len(), 100);
        assert_eq!(tickets[0].due, t0);
        assert_eq!(tickets[50].due - t0, Duration::from_millis(500));
        assert_eq!(schedule.planned(), Some(100));
    }

    #[test]
    fn open_loop_with_a_count_sends_n_at_the_rate() {
        let t0 = Instant::now();
        let schedule = Schedule::starting_at(Pace::Open { rate: 4.0 }, Limit::Count(2), t0);
        let tickets: Vec<Ticket> = std::iter::from_fn(|| schedule.next(t0)).collect();
        assert_eq!(tickets.len(), 2);
        assert_eq!(tickets[1].due - t0, Duration::from_millis(250));
    }
}
