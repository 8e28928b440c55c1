//! A destination's successes and failures over the last few minutes, in buckets.

use std::time::Duration;

/// The window of the recent success and failure counts.
pub const RECENT_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Width of one bucket of the recent counts.
pub(super) const BUCKET: Duration = Duration::from_secs(30);
const BUCKETS: usize = (RECENT_WINDOW.as_secs() / BUCKET.as_secs()) as usize;

/// Recent successes and failures in buckets of [`BUCKET`].
#[derive(Debug, Clone, Default)]
pub(super) struct Recent {
    /// (bucket number since `Destinations::epoch`, successes, failures)
    buckets: [(u64, u64, u64); BUCKETS],
}

impl Recent {
    pub(super) fn add(&mut self, bucket: u64, success: bool) {
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

    /// (successes, failures) in the window ending with `bucket`.
    pub(super) fn totals(&self, bucket: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|(b, _, _)| bucket.saturating_sub(*b) < BUCKETS as u64)
            .fold((0, 0), |(s, f), (_, bs, bf)| (s + bs, f + bf))
    }
}
