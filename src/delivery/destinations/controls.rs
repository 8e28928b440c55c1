//! The operator's controls over destinations (`store::destination_controls`), as this
//! instance last read them: which are paused, and the breaker resets it has applied.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::store::DestinationControl;

#[derive(Debug, Default)]
pub(super) struct Operated {
    paused: HashMap<String, DateTime<Utc>>,
    /// Each controlled destination's count of breaker resets, as last read.
    resets_seen: HashMap<String, i64>,
}

/// What reading the stored controls again changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Update {
    /// Destinations whose breaker an operator reset since the last read.
    pub(super) reset: Vec<String>,
    /// Some pause ended (or a breaker was reset): held jobs may be claimable now.
    pub(super) released: bool,
}

impl Operated {
    /// Takes `controls` (the whole table) as the state of things. Both maps are rebuilt from
    /// it, so they hold no more than the table's bounded rows.
    pub(super) fn update(&mut self, controls: &[DestinationControl]) -> Update {
        let paused: HashMap<String, DateTime<Utc>> = controls
            .iter()
            .filter_map(|c| c.paused_at.map(|at| (c.destination.clone(), at)))
            .collect();
        // A count that moved at all is a reset: one that went back means the row was
        // deleted and made again between two reads, by a reset (a pause alone leaves 0).
        let reset: Vec<String> = controls
            .iter()
            .filter(|c| {
                c.breaker_resets > 0
                    && c.breaker_resets
                        != self.resets_seen.get(&c.destination).copied().unwrap_or(0)
            })
            .map(|c| c.destination.clone())
            .collect();
        let resumed = self.paused.keys().any(|d| !paused.contains_key(d));
        self.resets_seen = controls
            .iter()
            .map(|c| (c.destination.clone(), c.breaker_resets))
            .collect();
        self.paused = paused;
        Update {
            released: resumed || !reset.is_empty(),
            reset,
        }
    }

    pub(super) fn paused_at(&self, destination: &str) -> Option<DateTime<Utc>> {
        self.paused.get(destination).copied()
    }

    pub(super) fn paused(&self) -> impl Iterator<Item = (&String, &DateTime<Utc>)> {
        self.paused.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(destination: &str, paused: bool, resets: i64) -> DestinationControl {
        DestinationControl {
            destination: destination.into(),
            paused_at: paused.then(Utc::now),
            breaker_resets: resets,
        }
    }

    #[test]
    fn a_reset_is_applied_once_and_a_resume_releases() {
        let mut operated = Operated::default();
        let first = operated.update(&[control("a", true, 0), control("b", false, 2)]);
        assert_eq!(
            first.reset,
            ["b"],
            "a count never seen: reset (a fresh breaker anyway)"
        );
        assert!(operated.paused_at("a").is_some());
        let same = operated.update(&[control("a", true, 0), control("b", false, 2)]);
        assert_eq!(same, Update::default(), "nothing new");
        let next = operated.update(&[control("a", false, 0), control("b", false, 3)]);
        assert_eq!(next.reset, ["b"]);
        assert!(next.released);
        assert!(operated.paused_at("a").is_none());
        let gone = operated.update(&[]);
        assert_eq!(gone, Update::default(), "rows deleted: nothing to release");
        assert_eq!(operated.paused().count(), 0);
    }
}
