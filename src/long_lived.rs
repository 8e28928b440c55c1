//! Requests that hold their connection for long: event streams (`/requests/{id}/events`,
//! the dashboard's live stream) and waits (`GET /requests/{id}` with `Prefer: wait`, a
//! repeated sync request waiting for the first with its idempotency key). Each
//! takes a place of their own cap (`APP_HTTP_MAX_LONG_LIVED`, by default half the client
//! connections) for as long as it lasts, so however many a client opens, the connections
//! `/healthz` and short requests need stay free; a stream also ends after
//! `APP_HTTP_STREAM_MAX_SECONDS` (a client resumes with `Last-Event-ID`, an `EventSource`
//! reconnects by itself), so none is held for ever.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The cap and the lifetime of long-lived requests.
#[derive(Clone)]
pub struct LongLived {
    places: Arc<Semaphore>,
    cap: usize,
    /// The longest an event stream lasts.
    pub max_lifetime: Duration,
}

impl LongLived {
    pub fn new(cap: usize, max_lifetime: Duration) -> Self {
        Self {
            places: Arc::new(Semaphore::new(cap)),
            cap,
            max_lifetime,
        }
    }

    /// A place for one long-lived request, held until the permit is dropped; `None` when
    /// every place is taken.
    pub fn try_hold(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.places).try_acquire_owned().ok()
    }

    /// Places taken (for `/metrics`).
    pub fn in_use(&self) -> usize {
        self.cap.saturating_sub(self.places.available_permits())
    }

    /// `stream`, ended after the maximum lifetime, holding `place` for as long as it lives
    /// (it is dropped with the response body when the client goes away).
    pub fn bounded<S: Stream + Send + 'static>(
        &self,
        stream: S,
        place: OwnedSemaphorePermit,
    ) -> impl Stream<Item = S::Item> + Send + use<S> {
        stream
            .take_until(tokio::time::sleep(self.max_lifetime))
            .map(move |item| {
                let _held = &place;
                item
            })
    }
}
