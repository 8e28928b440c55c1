//! Who is waiting for which request to change, and waking them when it does.
//!
//! Clients that wait (`Prefer: wait`, the event stream of a request, a repeated sync request
//! whose first is still running) subscribe to one request id and sleep; every write that
//! changes a request's status or adds an attempt passes through [`super::Store`], which calls
//! [`Changes::changed`] for it. A waiter costs a task and a map entry, never a query per tick:
//! it reads the database again only when its own request changed.
//!
//! Changes made by another instance (PostgreSQL) are not seen by this process's writes; for
//! them [`super::Store::watch_remote_changes`] reads the status of every watched request in
//! one query per tick and wakes the waiters of those that moved.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

#[derive(Default)]
pub struct Changes {
    watched: Mutex<HashMap<String, Watched>>,
    /// Entries in `watched`: lets [`Changes::changed`] skip the lock when nobody waits, the
    /// common case on the delivery path.
    len: AtomicUsize,
    /// Set at shutdown: every waiter is woken and answers with what it has.
    closed: AtomicBool,
}

struct Watched {
    notify: Arc<Notify>,
    subscribers: usize,
}

impl Changes {
    /// Starts watching request `id` until the returned subscription is dropped.
    pub fn subscribe(self: &Arc<Self>, id: &str) -> Subscription {
        let mut watched = self.lock();
        let entry = watched.entry(id.to_string()).or_insert_with(|| {
            self.len.fetch_add(1, Ordering::Relaxed);
            Watched {
                notify: Arc::new(Notify::new()),
                subscribers: 0,
            }
        });
        entry.subscribers += 1;
        Subscription {
            notify: Arc::clone(&entry.notify),
            changes: Arc::clone(self),
            id: id.to_string(),
        }
    }

    /// Wakes everyone waiting for request `id`.
    pub fn changed(&self, id: &str) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(entry) = self.lock().get(id) {
            entry.notify.notify_waiters();
        }
    }

    /// Wakes every waiter for good (shutdown): waits end at once with the state they have,
    /// so that no client holds the graceful shutdown for the rest of its wait.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for entry in self.lock().values() {
            entry.notify.notify_waiters();
        }
    }

    /// The requests someone waits for (for the remote-change watch).
    pub fn watched(&self) -> Vec<String> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        self.lock().keys().cloned().collect()
    }

    /// Requests with at least one subscriber (for `/metrics` and tests).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        // The map stays consistent under a panic (each update is one map operation).
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A watch on one request; dropping it (a client that hung up included) ends the watch.
pub struct Subscription {
    notify: Arc<Notify>,
    changes: Arc<Changes>,
    id: String,
}

impl Subscription {
    /// A future that completes at the next change of the request. Call
    /// [`Notified::enable`] on it *before* reading the request's state, then await it, so
    /// that a change landing between the read and the wait is not missed.
    pub fn next_change(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// Whether the service is shutting down: waiting is over.
    pub fn is_closed(&self) -> bool {
        self.changes.closed.load(Ordering::SeqCst)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut watched = self.changes.lock();
        if let Some(entry) = watched.get_mut(&self.id) {
            entry.subscribers -= 1;
            if entry.subscribers == 0 {
                watched.remove(&self.id);
                self.changes.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_change_wakes_every_subscriber_of_that_request_only() {
        let changes = Arc::new(Changes::default());
        let a1 = changes.subscribe("a");
        let a2 = changes.subscribe("a");
        let b = changes.subscribe("b");
        assert_eq!(changes.len(), 2);

        let mut w1 = std::pin::pin!(a1.next_change());
        let mut w2 = std::pin::pin!(a2.next_change());
        let mut wb = std::pin::pin!(b.next_change());
        w1.as_mut().enable();
        w2.as_mut().enable();
        wb.as_mut().enable();
        changes.changed("a");
        changes.changed("unwatched");
        tokio::time::timeout(Duration::from_secs(1), w1)
            .await
            .expect("first subscriber woken");
        tokio::time::timeout(Duration::from_secs(1), w2)
            .await
            .expect("second subscriber woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wb)
                .await
                .is_err(),
            "another request's subscriber slept on"
        );
    }

    #[tokio::test]
    async fn closing_wakes_every_waiter_and_later_ones_see_it_closed() {
        let changes = Arc::new(Changes::default());
        let a = changes.subscribe("a");
        let mut wait = std::pin::pin!(a.next_change());
        wait.as_mut().enable();
        assert!(!a.is_closed());
        changes.close();
        tokio::time::timeout(Duration::from_secs(1), wait)
            .await
            .expect("woken by the close");
        assert!(a.is_closed());
        assert!(changes.subscribe("b").is_closed());
    }

    #[test]
    fn the_last_subscription_dropped_ends_the_watch() {
        let changes = Arc::new(Changes::default());
        let first = changes.subscribe("a");
        let second = changes.subscribe("a");
        drop(first);
        assert_eq!(changes.watched(), vec!["a".to_string()]);
        drop(second);
        assert!(changes.is_empty());
        assert!(changes.watched().is_empty());
    }
}
