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
    /// Fills in `held_jobs` of the held-back destinations among `views` from the last round
    /// of counts, taking a new round (of the first [`COUNTED`] of them) when that one is
    /// [`FRESH_FOR`] old. A destination held back since shows none until the next round; a
    /// round that cannot be read leaves them all unset until the next.
    pub async fn fill(&self, store: &Store, views: &mut [DestinationView]) {
        let mut last = self.last.lock().await;
        if last
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= FRESH_FOR)
        {
            let wanted: Vec<String> = views
                .iter()
                .filter(|v| held_back(v))
                .take(COUNTED)
                .map(|v| v.destination.clone())
                .collect();
            let counts = if wanted.is_empty() {
                Ok(Vec::new())
            } else {
                store.due_unclaimed(wanted.clone(), CAP).await
            };
            match counts {
                Ok(counts) => {
                    *last = Some((Instant::now(), wanted.into_iter().zip(counts).collect()))
                }
                Err(err) => {
                    tracing::warn!(error = %err, "counting the held-back destinations' jobs failed");
                    // Tried again in a round's time, not at every scrape.
                    *last = Some((Instant::now(), HashMap::new()));
                }
            }
        }
        fill_from(last.as_ref(), views);
    }

    /// As [`fill`](Self::fill), from the last round only (an operator's change answers at
    /// once, whatever the database is doing).
    pub async fn fill_cached(&self, views: &mut [DestinationView]) {
        fill_from(self.last.lock().await.as_ref(), views);
    }
}

fn fill_from(last: Option<&(Instant, HashMap<String, u64>)>, views: &mut [DestinationView]) {
    let Some((_, counts)) = last else {
        return;
    };
    for view in views.iter_mut().filter(|v| held_back(v)) {
        view.held_jobs = counts.get(&view.destination).copied();
    }
}
