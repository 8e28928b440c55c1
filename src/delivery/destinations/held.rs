//! How many jobs wait behind each held-back destination: read from the queue (so across
//! every instance), for the destinations `GET /destinations` and `/metrics` show.
//!
//! A count walks the destination's part of the queue index, so it is bounded three ways:
//! at most [`COUNTED`] destinations, each counted up to [`CAP`], and the counts are kept for
//! [`FRESH_FOR`] and taken by one caller at a time, so that scrapes and page reloads, however
//! many, cost the database at most one round of counts every [`FRESH_FOR`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{BreakerState, DestinationView};
use crate::store::Store;

/// Most held-back destinations counted, the first in the list's order.
pub const COUNTED: usize = 100;

/// Most jobs counted for one destination.
pub const CAP: u32 = 10_000;

/// How long a round of counts is shown before it is taken again.
const FRESH_FOR: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct HeldJobs {
    last: tokio::sync::Mutex<Option<(Instant, HashMap<String, u64>)>>,
}

/// Whether something other than its own room keeps `view`'s jobs waiting.
fn held_back(view: &DestinationView) -> bool {
    view.paused
        || view.rate_limit.is_some()
        || view.retry_after_until.is_some()
        || view.breaker != BreakerState::Closed
}

impl HeldJobs {
    /// Fills in `held_jobs` of the held-back destinations among `views` (the first
    /// [`COUNTED`] of them). A count that cannot be read leaves them unset.
    pub async fn fill(&self, store: &Store, views: &mut [DestinationView]) {
        let wanted: Vec<String> = views
            .iter()
            .filter(|v| held_back(v))
            .take(COUNTED)
            .map(|v| v.destination.clone())
            .collect();
        if wanted.is_empty() {
            return;
        }
        let mut last = self.last.lock().await;
        let fresh = last.as_ref().is_some_and(|(at, counts)| {
            at.elapsed() < FRESH_FOR && wanted.iter().all(|d| counts.contains_key(d))
        });
        if !fresh {
            match store.due_unclaimed(wanted.clone(), CAP).await {
                Ok(counts) => {
                    *last = Some((Instant::now(), wanted.into_iter().zip(counts).collect()))
                }
                Err(err) => {
                    tracing::warn!(error = %err, "counting the held-back destinations' jobs failed");
                    return;
                }
            }
        }
        let Some((_, counts)) = last.as_ref() else {
            return;
        };
        for view in views.iter_mut() {
            if held_back(view) {
                view.held_jobs = counts.get(&view.destination).copied();
            }
        }
    }
}
