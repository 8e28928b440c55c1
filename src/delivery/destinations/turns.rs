//! How many deliveries a destination has had lately: its place in the claims' turns.
//!
//! When more jobs are due than there are free workers, a claim takes each destination's jobs
//! in turns: a destination's k-th due job (from 0) is in turn `served + k`, `served` being
//! this counter. A destination that has had few deliveries lately goes before one that has
//! had many, so a healthy receiver's single job is not left behind the backlogs of others
//! that each keep a worker busy (first come, first served would deliver every job due
//! before it first).

use std::time::{Duration, Instant};

/// How long a delivery counts fully toward its destination's turn; older ones count half as
/// much for each such period since.
pub const HALF_LIFE: Duration = Duration::from_secs(1);

/// Deliveries started lately, halved every [`HALF_LIFE`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Served {
    count: u32,
    /// When `count` was last brought up to date.
    at: Instant,
}

impl Served {
    pub(super) fn new(now: Instant) -> Self {
        Self { count: 0, at: now }
    }

    /// The count at `now`.
    pub(super) fn at(&self, now: Instant) -> u32 {
        let halvings = now.saturating_duration_since(self.at).as_millis() / HALF_LIFE.as_millis();
        u32::try_from(halvings)
            .ok()
            .and_then(|h| self.count.checked_shr(h))
            .unwrap_or(0)
    }

    /// Counts a delivery started at `now`.
    pub(super) fn add(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at);
        let periods = elapsed.as_millis() / HALF_LIFE.as_millis();
        if periods > 0 {
            self.count = self.at(now);
            // Whole periods only, so a count read often still halves once a period.
            self.at += HALF_LIFE * u32::try_from(periods).unwrap_or(u32::MAX);
            if self.count == 0 {
                self.at = now;
            }
        }
        self.count = self.count.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_deliveries_and_halves_them_each_period() {
        let start = Instant::now();
        let mut served = Served::new(start);
        assert_eq!(served.at(start), 0);
        for _ in 0..8 {
            served.add(start);
        }
        assert_eq!(served.at(start), 8);
        assert_eq!(served.at(start + HALF_LIFE / 2), 8);
        assert_eq!(served.at(start + HALF_LIFE), 4);
        assert_eq!(served.at(start + HALF_LIFE * 3), 1);
        assert_eq!(served.at(start + HALF_LIFE * 4), 0);
        assert_eq!(served.at(start + HALF_LIFE * 1_000_000), 0, "no overflow");

        // Adds made across periods halve what came before them, once per period.
        served.add(start + HALF_LIFE + HALF_LIFE / 2);
        assert_eq!(served.at(start + HALF_LIFE + HALF_LIFE / 2), 5);
        assert_eq!(served.at(start + HALF_LIFE * 2), 2);
        served.add(start + HALF_LIFE * 2 + HALF_LIFE / 10);
        assert_eq!(served.at(start + HALF_LIFE * 2 + HALF_LIFE / 10), 3);
    }

    #[test]
    fn a_clock_that_goes_back_counts_as_no_time() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut served = Served::new(start);
        served.add(start);
        served.add(start - Duration::from_secs(5));
        assert_eq!(served.at(start - Duration::from_secs(5)), 2);
    }
}
