//! The clock of the queue on SQLite: due times and lease expiries are compared within one
//! process (the only one using the database), so they follow the monotonic clock, anchored
//! to the wall clock when the store opens. A step of the wall clock while the service runs
//! (an NTP correction, an operator's `date -s`) then neither expires a lease early, which
//! would let the job be delivered twice at once, nor postpones a retry due in a second by the
//! size of the step.
//!
//! Across a restart the queue's time goes on from where the previous process left it (the
//! writer stamps it into the database every second), if that is later than the wall clock:
//! a wall clock that was ahead and has been set back since would otherwise postpone every
//! queued job by the size of the correction. Times shown to people (`created_at`, the
//! attempts) stay on the wall clock.

use std::time::{Duration, Instant};

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension};

/// How often the writer stamps the queue's time into the database.
pub(super) const STAMP_EVERY: Duration = Duration::from_secs(1);

/// The queue's time as last stamped.
pub(super) const LAST_STAMP: &str = "SELECT at FROM queue_clock WHERE id = 1";

/// Stamps the queue's time (`?1`).
pub(super) const STAMP: &str = "INSERT INTO queue_clock (id, at) VALUES (1, ?1)
     ON CONFLICT (id) DO UPDATE SET at = excluded.at";

/// A store's queue clock: Unix milliseconds, moving with the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub(super) struct QueueClock {
    start: i64,
    at: Instant,
}

impl QueueClock {
    /// Starts at the wall clock's time, or at the queue's time the previous process last
    /// stamped if that is later.
    pub(super) fn resume(conn: &Connection) -> rusqlite::Result<Self> {
        let last: Option<i64> = conn
            .query_row(LAST_STAMP, [], |row| row.get(0))
            .optional()?;
        let wall = Utc::now().timestamp_millis();
        let start = match last {
            Some(last) if last > wall => {
                tracing::warn!(
                    ahead_ms = last - wall,
                    "the wall clock is behind the queue's last time (it was set back while \
                     the service was down): due times go on from the queue's time"
                );
                last
            }
            _ => wall,
        };
        Ok(Self::starting_at(start))
    }

    pub(super) fn starting_at(start: i64) -> Self {
        Self {
            start,
            at: Instant::now(),
        }
    }

    /// Now on the queue's clock, in Unix milliseconds.
    pub(super) fn now(&self) -> i64 {
        self.start
            .saturating_add(i64::try_from(self.at.elapsed().as_millis()).unwrap_or(i64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn =
            super::super::open::open_connection(&dir.path().join("clock.db"), false).unwrap();
        super::super::open::migrate(&mut conn).unwrap();
        (dir, conn)
    }

    #[test]
    fn the_queue_clock_moves_with_the_monotonic_clock_from_the_wall_clock() {
        let (_dir, conn) = database();
        let clock = QueueClock::resume(&conn).unwrap();
        let before = clock.now();
        std::thread::sleep(Duration::from_millis(20));
        let after = clock.now();
        assert!((20..200).contains(&(after - before)), "{before} → {after}");
        let wall = Utc::now().timestamp_millis();
        assert!((wall - after).abs() < 1_000, "anchored to the wall clock");
    }

    #[test]
    fn the_queue_clock_goes_on_from_a_later_stamp_and_never_from_an_earlier_one() {
        let (_dir, conn) = database();
        let wall = Utc::now().timestamp_millis();
        let ahead = wall + 3_600_000;
        conn.execute(STAMP, [ahead]).unwrap();
        let resumed = QueueClock::resume(&conn).unwrap().now();
        assert!(
            (ahead..ahead + 1_000).contains(&resumed),
            "{resumed} vs {ahead}"
        );

        conn.execute(STAMP, [wall - 3_600_000]).unwrap();
        let resumed = QueueClock::resume(&conn).unwrap().now();
        assert!(
            (wall..wall + 1_000).contains(&resumed),
            "{resumed} vs {wall}"
        );
    }
}
