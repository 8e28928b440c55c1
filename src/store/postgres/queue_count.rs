//! The queue bound on PostgreSQL: this instance's view of how many async requests are
//! unfinished, and the places each submission holds in it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::PgStore;
use crate::store::{StoreError, StoreResult};

/// This instance's view of the number of unfinished async requests. Counting is a round trip
/// (a read of the kept counts), too dear for every submission under load, so a submission
/// relies on a count
/// up to [`COUNT_MAX_AGE`] old ([`COUNT_MAX_AGE_FAR`] while more than half the queue is
/// free) plus every submission this instance made since it was taken
/// (committed, or still in flight: a place is reserved before the insert). Near the bound
/// the count is taken afresh, so a stale count never refuses a request there is room for.
pub(super) struct QueueCount {
    state: std::sync::Mutex<CountState>,
    /// One recount at a time: submissions arriving during a recount wait for its result.
    recount: tokio::sync::Mutex<()>,
}

#[derive(Default)]
pub(super) struct CountState {
    /// Unfinished rows at the last count.
    counted: i64,
    counted_at: Option<Instant>,
    /// Submissions this instance has completed, ever; and as of the start of the last count.
    /// Those completed since the count started may or may not be in it: both are counted,
    /// which can only over-estimate.
    accepted: i64,
    accepted_at_count: i64,
    /// Whether submissions completed while the last count ran: each is counted twice if
    /// it committed before the count's snapshot, so the estimate may be high by that many.
    settling: bool,
    /// Reserved places whose insert has not finished.
    in_flight: i64,
}

impl QueueCount {
    /// A count not taken yet: the first submission takes it.
    pub(super) fn new() -> Self {
        Self {
            state: std::sync::Mutex::new(CountState::default()),
            recount: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, CountState> {
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
        self.settling = self.accepted != accepted_before;
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

/// The unfinished async requests (every job that still has a due time), from the kept
/// counts: a few rows, however long the queue.
pub(super) const COUNT_QUEUE: &str = concat!(
    "SELECT COALESCE(sum(n), 0)::bigint FROM request_counts
     WHERE mode = 'async' AND status IN ",
    unfinished_statuses!()
);

/// How old a queue count a submission may rely on when it would fill more than half the
/// queue. (Only other instances' submissions since the count are missing from the estimate:
/// near the bound, they are what a fresh count is for.)
pub(super) const COUNT_MAX_AGE: Duration = Duration::from_millis(100);

/// How old a queue count a submission may rely on when it leaves more than half the queue
/// free: one round trip a second, whatever the rate of submissions.
pub(super) const COUNT_MAX_AGE_FAR: Duration = Duration::from_secs(1);

/// At the bound, the shortest time between two recounts: refused submissions must not turn
/// into a scan of the queue each.
pub(super) const RECOUNT_AT_BOUND: Duration = Duration::from_millis(10);

/// How many counts one submission may take. A count that raced completing submissions may
/// have counted them twice; the next one counts them once, so a refusal rests on a count no
/// submission completed during, unless submissions keep completing through every count.
const MOST_RECOUNTS: u32 = 3;

/// Places in the queue held for one submission (one request, or a batch). Dropped without
/// [`Reservation::failed`] (committed, or abandoned mid-insert, which may still commit), they
/// count as accepted.
pub(super) struct Reservation {
    count: Arc<QueueCount>,
    places: i64,
    failed: bool,
}

impl Reservation {
    pub(super) fn failed(mut self) {
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
    /// Holds a place in the queue for one submission, or refuses with
    /// [`StoreError::QueueFull`]. The check and the reservation happen under one lock, so
    /// concurrent submissions to this instance cannot all see the same free place.
    pub(super) async fn reserve_place(&self) -> StoreResult<Reservation> {
        self.reserve_places(1).await
    }

    /// Holds `places` places in the queue, all or none.
    pub(super) async fn reserve_places(&self, places: i64) -> StoreResult<Reservation> {
        let mut recounts = 0;
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
                let recent = fresh && age.is_some_and(|age| age < RECOUNT_AT_BOUND);
                if recounts >= MOST_RECOUNTS || ((recounts > 0 || recent) && !state.settling) {
                    return Err(StoreError::QueueFull);
                }
                age
            };
            self.recount(count_age).await?;
            recounts += 1;
        }
    }

    /// Holds one place in the queue after counting it afresh on `conn` (inside the caller's
    /// transaction), which becomes this instance's count; or refuses with
    /// [`StoreError::QueueFull`].
    pub(super) async fn reserve_counted_on(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> StoreResult<Reservation> {
        let accepted_before = self.queue_count.lock().accepted;
        let counted: i64 = sqlx::query_scalar(COUNT_QUEUE).fetch_one(conn).await?;
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

    pub(super) async fn count_queue(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(COUNT_QUEUE)
            .fetch_one(&self.pool)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::CountState;

    #[test]
    fn a_count_that_submissions_completed_during_is_settling_and_high_by_them() {
        let mut state = CountState {
            accepted: 5,
            ..CountState::default()
        };
        state.set_count(5, 5);
        assert!(!state.settling);
        assert_eq!(state.estimate(), 5);
        // Two submissions completed while the count ran: the count may hold them already,
        // and the estimate adds them again.
        state.accepted = 7;
        state.set_count(7, 5);
        assert!(state.settling);
        assert_eq!(state.estimate(), 9);
        // The next count, with nothing completing during it, is exact.
        state.set_count(7, 7);
        assert!(!state.settling);
        assert_eq!(state.estimate(), 7);
    }
}
