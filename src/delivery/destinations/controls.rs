//! The controls over destinations (`store::destination_controls`), as this instance last
//! read them: which are paused, the breaker resets it has applied, the destinations' own rate
//! limits, the holds their receivers asked for, and how many instances share the limits.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::OwnRate;
use crate::store::ControlsRead;

#[derive(Debug)]
pub(super) struct Operated {
    paused: HashMap<String, DateTime<Utc>>,
    /// Each controlled destination's count of breaker resets, as last read.
    resets_seen: HashMap<String, i64>,
    rates: HashMap<String, OwnRate>,
    held: HashMap<String, Hold>,
    instances: u32,
}

/// A receiver's hold as stored, and when it ends on this instance's monotonic clock: fixed
/// when first read, so a wall clock stepped either way afterwards neither ends nor stretches
/// it, and never more than the longest retry wait away (the instance that stored it may
/// have a clock ahead of this one's).
#[derive(Debug, Clone, Copy)]
struct Hold {
    stored: DateTime<Utc>,
    ends: Instant,
}

impl Default for Operated {
    /// Nothing read yet: this instance alone, with nothing controlled.
    fn default() -> Self {
        Self {
            paused: HashMap::new(),
            resets_seen: HashMap::new(),
            rates: HashMap::new(),
            held: HashMap::new(),
            instances: 1,
        }
    }
}

/// What reading the stored controls again changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Update {
    /// Destinations whose breaker an operator reset since the last read.
    pub(super) reset: Vec<String>,
    /// Some pause ended, a breaker was reset, a limit or the instances sharing it changed:
    /// held jobs may be claimable now.
    pub(super) released: bool,
}

impl Operated {
    /// Takes `read` (the whole table) as the state of things. Every map is rebuilt from it,
    /// so they hold no more than the table's bounded rows. A stored hold lasts at most
    /// `longest` from when it is first read.
    pub(super) fn update(&mut self, read: &ControlsRead, longest: Duration) -> Update {
        let controls = &read.controls;
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
        let rates: HashMap<String, OwnRate> = controls
            .iter()
            .filter_map(|c| c.rate.map(|rate| (c.destination.clone(), rate)))
            .collect();
        let paced = rates != self.rates || read.instances != self.instances;
        self.rates = rates;
        self.instances = read.instances.max(1);
        let (wall, now) = (Utc::now(), Instant::now());
        self.held = controls
            .iter()
            .filter_map(|c| {
                let stored = c.held_until?;
                let known = self
                    .held
                    .get(&c.destination)
                    .filter(|hold| hold.stored == stored);
                let ends = match known {
                    Some(hold) => hold.ends,
                    None => now + (stored - wall).to_std().ok()?.min(longest),
                };
                Some((c.destination.clone(), Hold { stored, ends }))
            })
            // Kept once over, while the same hold is stored: read again, it would look new.
            .collect();
        Update {
            released: resumed || paced || !reset.is_empty(),
            reset,
        }
    }

    /// A destination's own rate limit, if an operator set one.
    pub(super) fn rate(&self, destination: &str) -> Option<OwnRate> {
        self.rates.get(destination).copied()
    }

    /// Until when its receiver asked (on any instance) to be left alone, as last read; it
    /// may be over.
    pub(super) fn held_until(&self, destination: &str) -> Option<Instant> {
        self.held
            .get(destination)
            .map(|hold| hold.ends)
            .filter(|ends| *ends > Instant::now())
    }

    /// The holds not over yet.
    pub(super) fn held(&self) -> impl Iterator<Item = (&String, Instant)> {
        let now = Instant::now();
        self.held
            .iter()
            .map(|(d, hold)| (d, hold.ends))
            .filter(move |(_, ends)| *ends > now)
    }

    /// Every destination with a control worth listing: paused, limited or held.
    pub(super) fn controlled(&self) -> impl Iterator<Item = &String> {
        let mut all: Vec<&String> = self
            .paused
            .keys()
            .chain(self.rates.keys())
            .chain(self.held().map(|(d, _)| d))
            .collect();
        all.sort_unstable();
        all.dedup();
        all.into_iter()
    }

    /// The instances sharing the rate limits, this one included.
    pub(super) fn instances(&self) -> u32 {
        self.instances
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

    fn control(destination: &str, paused: bool, resets: i64) -> crate::store::DestinationControl {
        crate::store::DestinationControl {
            destination: destination.into(),
            paused_at: paused.then(Utc::now),
            breaker_resets: resets,
            rate: None,
            held_until: None,
        }
    }

    fn read(controls: Vec<crate::store::DestinationControl>) -> ControlsRead {
        ControlsRead {
            controls,
            instances: 1,
        }
    }

    const LONGEST: Duration = Duration::from_secs(10);

    #[test]
    fn a_reset_is_applied_once_and_a_resume_releases() {
        let mut operated = Operated::default();
        let first = operated.update(
            &read(vec![control("a", true, 0), control("b", false, 2)]),
            LONGEST,
        );
        assert_eq!(
            first.reset,
            ["b"],
            "a count never seen: reset (a fresh breaker anyway)"
        );
        assert!(operated.paused_at("a").is_some());
        let same = operated.update(
            &read(vec![control("a", true, 0), control("b", false, 2)]),
            LONGEST,
        );
        assert_eq!(same, Update::default(), "nothing new");
        let next = operated.update(
            &read(vec![control("a", false, 0), control("b", false, 3)]),
            LONGEST,
        );
        assert_eq!(next.reset, ["b"]);
        assert!(next.released);
        assert!(operated.paused_at("a").is_none());
        let gone = operated.update(&read(vec![]), LONGEST);
        assert_eq!(gone, Update::default(), "rows deleted: nothing to release");
        assert_eq!(operated.paused().count(), 0);
    }
}
