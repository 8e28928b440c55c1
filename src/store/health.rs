//! What `/healthz` learns from the writes themselves: whether the last one failed for a
//! reason that is the database's (a full disk, a read-only or unreachable server), and how
//! long the oldest write still in progress has waited. A read that succeeds proves neither:
//! a full disk, a demoted primary and a writer stuck behind a slow statement all still
//! answer reads.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{
    Cancellation, Job, Leases, MadeDue, Recorded, Redelivery, StoreError, StoreResult, Submitted,
    Swept,
};

/// Whether a write that succeeded wrote anything. Only one that did proves the database takes
/// writes: on a full disk, a transaction that changes nothing (a heartbeat with nothing in
/// flight, a claim with nothing due, a cleanup with nothing expired) still commits.
pub(crate) trait Wrote {
    fn wrote(&self) -> bool;
}

impl Wrote for () {
    fn wrote(&self) -> bool {
        true
    }
}

/// Rows changed, or whether the one named was.
impl Wrote for bool {
    fn wrote(&self) -> bool {
        *self
    }
}

/// Rows changed.
impl Wrote for u64 {
    fn wrote(&self) -> bool {
        *self > 0
    }
}

impl Wrote for Swept {
    fn wrote(&self) -> bool {
        self.deleted > 0
    }
}

impl Wrote for Leases {
    fn wrote(&self) -> bool {
        self.renewed + self.released > 0
    }
}

impl Wrote for Vec<Job> {
    fn wrote(&self) -> bool {
        !self.is_empty()
    }
}

impl Wrote for Submitted {
    fn wrote(&self) -> bool {
        matches!(self, Submitted::Created)
    }
}

impl Wrote for Redelivery {
    fn wrote(&self) -> bool {
        matches!(self, Redelivery::Queued)
    }
}

impl Wrote for Recorded {
    fn wrote(&self) -> bool {
        self.is_recorded()
    }
}

impl Wrote for MadeDue {
    fn wrote(&self) -> bool {
        matches!(self, MadeDue::Due)
    }
}

impl Wrote for Cancellation {
    fn wrote(&self) -> bool {
        matches!(
            self,
            Cancellation::Cancelled {
                by_this_call: true,
                ..
            }
        )
    }
}

/// An operator's destination control may have changed nothing (a pause of a paused
/// destination), and is too rare to matter: it never counts as proof.
impl Wrote for super::Controlled {
    fn wrote(&self) -> bool {
        false
    }
}

#[derive(Default)]
pub(crate) struct WriteHealth {
    /// Why the last write failed, until one succeeds again.
    failure: Mutex<Option<String>>,
    /// The writes in progress, by a sequence number, with when each started.
    in_flight: Mutex<BTreeMap<u64, Instant>>,
    next: AtomicU64,
}

impl WriteHealth {
    /// Runs `write`, timed while it is in progress, and notes how it ended.
    pub(crate) async fn watch<T: Wrote>(
        &self,
        write: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let _timed = self.start();
        let result = write.await;
        self.note(&result);
        result
    }

    fn start(&self) -> Timed<'_> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.in_flight).insert(n, Instant::now());
        Timed { health: self, n }
    }

    /// A write that failed because of the database marks it failing; one that wrote something
    /// clears that. A write refused for a reason of its own (a full queue, a taken key), or
    /// one that had nothing to write, says nothing about the database.
    fn note<T: Wrote>(&self, result: &StoreResult<T>) {
        match result {
            Ok(done) if done.wrote() => self.clear(),
            Ok(_) => {}
            Err(err) if err.is_unavailable() => {
                let reason = err.unavailable_reason();
                let mut failure = lock(&self.failure);
                if failure.is_none() {
                    tracing::error!(reason = %reason, "database writes are failing");
                }
                *failure = Some(reason);
            }
            Err(_) => {}
        }
    }

    pub(crate) fn clear(&self) {
        if lock(&self.failure).take().is_some() {
            tracing::info!("database writes succeed again");
        }
    }

    /// Why writes are failing, if the last one did.
    pub(crate) fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// How long the oldest write in progress has waited, if any is.
    pub(crate) fn oldest_wait(&self) -> Option<Duration> {
        lock(&self.in_flight)
            .first_key_value()
            .map(|(_, started)| started.elapsed())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A write in progress, until dropped (completed, failed, or its caller gone).
struct Timed<'a> {
    health: &'a WriteHealth,
    n: u64,
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        lock(&self.health.in_flight).remove(&self.n);
    }
}

impl StoreError {
    /// What `/healthz` says about a failure of the database.
    pub(crate) fn unavailable_reason(&self) -> String {
        match self {
            StoreError::Sqlite(err)
                if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) =>
            {
                "disk full: the database cannot grow".into()
            }
            StoreError::Postgres(sqlx::Error::Database(db))
                if db.code().as_deref() == Some("25006") =>
            {
                "the database is read-only (a standby, or a demoted primary)".into()
            }
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_of_the_database_mark_it_until_a_write_succeeds() {
        let health = WriteHealth::default();
        let _ = health
            .watch(async { Err::<(), _>(StoreError::QueueFull) })
            .await;
        assert_eq!(
            health.failure(),
            None,
            "a full queue is the request's affair"
        );
        let _ = health
            .watch(async { Err::<(), _>(StoreError::Unavailable("gone".into())) })
            .await;
        assert!(health.failure().unwrap().contains("gone"));
        let _ = health.watch(async { Ok(0_u64) }).await;
        let _ = health.watch(async { Ok(Vec::<Job>::new()) }).await;
        let _ = health.watch(async { Ok(Leases::default()) }).await;
        assert!(
            health.failure().is_some(),
            "a write that changed nothing commits on a full disk too"
        );
        let _ = health.watch(async { Ok(()) }).await;
        assert_eq!(health.failure(), None);
    }

    #[tokio::test]
    async fn the_oldest_write_in_progress_is_timed() {
        let health = WriteHealth::default();
        assert_eq!(health.oldest_wait(), None);
        let slow = health.watch(tokio::time::sleep(Duration::from_millis(50)).then_ok());
        tokio::pin!(slow);
        assert!(futures_util::poll!(slow.as_mut()).is_pending());
        std::thread::sleep(Duration::from_millis(20));
        assert!(health.oldest_wait().unwrap() >= Duration::from_millis(20));
        slow.await.unwrap();
        assert_eq!(health.oldest_wait(), None, "ended, it is no longer timed");
    }

    trait ThenOk: Future<Output = ()> + Sized {
        async fn then_ok(self) -> StoreResult<()> {
            self.await;
            Ok(())
        }
    }

    impl<F: Future<Output = ()>> ThenOk for F {}
}
