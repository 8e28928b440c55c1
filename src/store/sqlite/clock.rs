//! The clock of the queue on SQLite: due times and lease expiries are compared within one
//! process (the only one using the database), so they follow the monotonic clock, anchored
//! to the wall clock once, when the process first reads it. A step of the wall clock while
//! the service runs (an NTP correction, an operator's `date -s`) then neither expires a
//! lease early, which would let the job be delivered twice at once, nor postpones a retry
//! due in a second by the size of the step. Times shown to people (`created_at`, the attempts)
//! stay on the wall clock.

use std::sync::OnceLock;
use std::time::Instant;

use chrono::Utc;

static ANCHOR: OnceLock<(i64, Instant)> = OnceLock::new();

/// Now on the queue's clock, in Unix milliseconds.
pub(super) fn queue_now() -> i64 {
    let (wall, at) = *ANCHOR.get_or_init(|| (Utc::now().timestamp_millis(), Instant::now()));
    wall.saturating_add(i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_queue_clock_moves_with_the_monotonic_clock() {
        let before = super::queue_now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let after = super::queue_now();
        assert!((20..200).contains(&(after - before)), "{before} → {after}");
        let wall = chrono::Utc::now().timestamp_millis();
        assert!((wall - after).abs() < 60_000, "anchored to the wall clock");
    }
}
