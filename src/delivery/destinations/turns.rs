//! How much of the workers' time a destination has had lately: its place in the claims'
//! turns.
//!
//! When more jobs are due than there are free workers, a claim takes the destinations' jobs
//! in turns: a destination's k-th due job (from 0) is in turn `lately + (in_flight + k) ×
//! per_job`, in milliseconds of worker time: what its finished deliveries took lately (this
//! counter), what those in flight and this one are expected to take. A destination that has
//! had little of the workers' time goes before one that has had much, so a healthy
//! receiver's job is not left behind the backlogs of others that each keep a worker busy
//! (first come, first served would deliver every job due before it first), and a quick
//! receiver is not held to the pace of slow ones (turns counted in deliveries would give it
//! as many as each slow one).

use std::time::{Duration, Instant};

/// How long a delivery counts fully toward its destination's turn; older ones count half as
/// much for each such period since.
pub const HALF_LIFE: Duration = Duration::from_secs(1);

/// What a delivery to a destination not seen yet is expected to take, in milliseconds.
pub const FIRST_JOB_MS: u32 = 10;

/// Milliseconds of worker time lately, halved every [`HALF_LIFE`].
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

    /// Adds `amount`, at `now`.
    pub(super) fn add(&mut self, now: Instant, amount: u32) {
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
        self.count = self.count.saturating_add(amount);
    }
}

/// What one delivery to a destination is expected to take, in milliseconds: a moving average
/// of the last ones (at least 1).
pub(super) fn per_job_ms(previous: u32, took: Duration) -> u32 {
    let took = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
    let average = (u64::from(previous) * 3 + u64::from(took)) / 4;
    u32::try_from(average).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_deliveries_and_halves_them_each_period() {
        let start = Instant::now();
        let mut served = Served::new(start);
        assert_eq!(served.at(start), 0);
        for _ in 0..4 {
            served.add(start, 2);
        }
        assert_eq!(served.at(start), 8);
        assert_eq!(served.at(start + HALF_LIFE / 2), 8);
        assert_eq!(served.at(start + HALF_LIFE), 4);
        assert_eq!(served.at(start + HALF_LIFE * 3), 1);
        assert_eq!(served.at(start + HALF_LIFE * 4), 0);
        assert_eq!(served.at(start + HALF_LIFE * 1_000_000), 0, "no overflow");

        // Adds made across periods halve what came before them, once per period.
        served.add(start + HALF_LIFE + HALF_LIFE / 2, 1);
        assert_eq!(served.at(start + HALF_LIFE + HALF_LIFE / 2), 5);
        assert_eq!(served.at(start + HALF_LIFE * 2), 2);
        served.add(start + HALF_LIFE * 2 + HALF_LIFE / 10, 1);
        assert_eq!(served.at(start + HALF_LIFE * 2 + HALF_LIFE / 10), 3);
    }

    #[test]
    fn the_time_per_job_follows_the_last_deliveries() {
        let mut per_job = FIRST_JOB_MS;
        for _ in 0..20 {
            per_job = per_job_ms(per_job, Duration::from_millis(450));
        }
        assert!((440..=450).contains(&per_job), "{per_job}");
        for _ in 0..20 {
            per_job = per_job_ms(per_job, Duration::ZERO);
        }
        assert_eq!(per_job, 1, "never 0: a job always costs something");
        assert_eq!(
            per_job_ms(u32::MAX, Duration::from_secs(u64::MAX)),
            u32::MAX
        );
    }

    #[test]
    fn a_clock_that_goes_back_counts_as_no_time() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut served = Served::new(start);
        served.add(start, 1);
        served.add(start - Duration::from_secs(5), 1);
        assert_eq!(served.at(start - Duration::from_secs(5)), 2);
    }
}
