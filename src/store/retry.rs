//! Trying a write again while the database cannot take it (PostgreSQL restarting or failing
//! over, a full disk): pauses that double up to a ceiling, bounded by a number of tries or a
//! deadline, and cut short by a stop.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::StoreResult;

/// The pauses between tries: each twice the last, up to `max`; none once the tries are spent,
/// the deadline would pass during the pause, or `stop` is cancelled.
#[derive(Debug)]
pub struct Pauses {
    next: Duration,
    max: Duration,
    tries_left: Option<u32>,
    deadline: Option<Instant>,
    stop: Option<CancellationToken>,
}

impl Pauses {
    pub fn doubling(first: Duration, max: Duration) -> Self {
        Pauses {
            next: first,
            max,
            tries_left: None,
            deadline: None,
            stop: None,
        }
    }

    /// At most `tries` more tries.
    pub fn tries(mut self, tries: u32) -> Self {
        self.tries_left = Some(tries);
        self
    }

    /// No pause that would end after `deadline`.
    pub fn until(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// No pause once `stop` is cancelled, and the one under way ends with it.
    pub fn stopped_by(mut self, stop: CancellationToken) -> Self {
        self.stop = Some(stop);
        self
    }

    /// Waits out the next pause; false, at once or when `stop` cuts it short, if there is
    /// none left.
    pub async fn wait(&mut self) -> bool {
        let pause = self.next;
        if self.tries_left == Some(0)
            || self.deadline.is_some_and(|at| Instant::now() + pause > at)
            || self.stop.as_ref().is_some_and(|s| s.is_cancelled())
        {
            return false;
        }
        if let Some(left) = &mut self.tries_left {
            *left -= 1;
        }
        self.next = (pause * 2).min(self.max);
        match &self.stop {
            Some(stop) => tokio::select! {
                () = tokio::time::sleep(pause) => true,
                () = stop.cancelled() => false,
            },
            None => {
                tokio::time::sleep(pause).await;
                true
            }
        }
    }
}

/// Runs `write` until it succeeds, fails for a reason other than the database being
/// unavailable, or `pauses` run out; returns its last answer.
pub async fn while_unavailable<T, Fut>(
    pauses: &mut Pauses,
    mut write: impl FnMut() -> Fut,
) -> StoreResult<T>
where
    Fut: Future<Output = StoreResult<T>>,
{
    loop {
        match write().await {
            Err(err) if err.is_unavailable() && pauses.wait().await => {}
            answer => return answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::store::StoreError;

    fn unavailable() -> StoreError {
        StoreError::Unavailable("restarting".into())
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_double_up_to_their_ceiling_and_stop_after_their_tries() {
        let started = Instant::now();
        let mut pauses =
            Pauses::doubling(Duration::from_millis(250), Duration::from_secs(1)).tries(4);
        let mut waited = Vec::new();
        while pauses.wait().await {
            waited.push(started.elapsed().as_millis());
        }
        assert_eq!(waited, [250, 750, 1750, 2750]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_pause_ends_past_the_deadline() {
        let deadline = Instant::now() + Duration::from_millis(1000);
        let mut pauses =
            Pauses::doubling(Duration::from_millis(250), Duration::from_secs(2)).until(deadline);
        assert!(pauses.wait().await);
        assert!(pauses.wait().await);
        // 750 ms gone; the next pause (1 s) would end at 1750 ms.
        assert!(!pauses.wait().await);
        assert_eq!(Instant::now(), deadline - Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_pause_under_way() {
        let stop = CancellationToken::new();
        let mut pauses = Pauses::doubling(Duration::from_secs(30), Duration::from_secs(30))
            .stopped_by(stop.clone());
        let started = Instant::now();
        let canceller = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                stop.cancel();
            })
        };
        assert!(!pauses.wait().await);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        canceller.await.unwrap();
        assert!(!pauses.wait().await);
    }

    #[tokio::test(start_paused = true)]
    async fn only_unavailability_is_tried_again() {
        let calls = AtomicU32::new(0);
        let mut pauses = Pauses::doubling(Duration::from_millis(10), Duration::from_millis(10));
        let answer = while_unavailable(&mut pauses, || async {
            match calls.fetch_add(1, Ordering::Relaxed) {
                0 | 1 => Err(unavailable()),
                2 => Err(StoreError::QueueFull),
                _ => Ok(()),
            }
        })
        .await;
        assert!(matches!(answer, Err(StoreError::QueueFull)));
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_unavailability_is_returned_when_the_tries_run_out() {
        let calls = AtomicU32::new(0);
        let mut pauses =
            Pauses::doubling(Duration::from_millis(10), Duration::from_millis(10)).tries(2);
        let answer: StoreResult<()> = while_unavailable(&mut pauses, || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(unavailable())
        })
        .await;
        assert!(answer.is_err_and(|err| err.is_unavailable()));
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }
}
