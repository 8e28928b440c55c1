//! What an operator decided about a destination (SPEC §11): paused, and how many times its
//! circuit breaker was reset. Stored, so that every instance sharing the database obeys a
//! pause and survives a restart with it; each instance reads the whole table every second
//! (it holds at most [`MAX_CONTROLLED_DESTINATIONS`] rows) and applies it to its own
//! per-destination state.

use chrono::{DateTime, Utc};

/// Most destinations with a stored control. A row with no pause (left by a resume or a reset)
/// is deleted, oldest change first, to make room for a new one; with every row paused, a new
/// pause is refused. Every instance reads the table every second, and every claim skips the
/// paused destinations: the bound keeps both small.
pub const MAX_CONTROLLED_DESTINATIONS: i64 = 1000;

/// One destination's stored controls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationControl {
    /// `scheme://host:port`, as [`crate::delivery::destinations::destination_of`] writes it.
    pub destination: String,
    /// Since when its jobs wait, while paused.
    pub paused_at: Option<DateTime<Utc>>,
    /// How many times an operator reset its breaker: an instance that sees the count grow
    /// resets its own breaker for the destination.
    pub breaker_resets: i64,
}

impl DestinationControl {
    /// Neither paused nor ever reset: what a missing row means.
    pub fn is_nothing(&self) -> bool {
        self.paused_at.is_none() && self.breaker_resets == 0
    }

    /// A destination nobody controls.
    fn none(destination: &str) -> Self {
        Self {
            destination: destination.to_string(),
            paused_at: None,
            breaker_resets: 0,
        }
    }
}

/// What an operator does to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlChange {
    /// Its jobs wait (no claim takes them) until it is resumed. Pausing a paused destination
    /// keeps the first pause's time.
    Pause,
    Resume,
    /// Closes its circuit breaker on every instance, forgetting the failures that opened it.
    ResetBreaker,
}

impl ControlChange {
    /// The destination's controls after this change at `now`, from those `stored`; `None`
    /// when there is nothing to write (a pause of a paused destination keeps its first
    /// time; a resume of one not paused changes nothing).
    pub fn apply(
        self,
        stored: Option<&DestinationControl>,
        destination: &str,
        now: DateTime<Utc>,
    ) -> Option<DestinationControl> {
        let mut next = stored
            .cloned()
            .unwrap_or_else(|| DestinationControl::none(destination));
        match self {
            Self::Pause if next.paused_at.is_some() => return None,
            Self::Pause => next.paused_at = Some(now),
            Self::Resume if next.paused_at.is_none() => return None,
            Self::Resume => next.paused_at = None,
            Self::ResetBreaker => next.breaker_resets = next.breaker_resets.saturating_add(1),
        }
        Some(next)
    }
}

/// The answer to a [`ControlChange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Controlled {
    /// Applied, or nothing to do. (The answer is the destination as this instance sees it
    /// once the controls are read again, not the stored row.)
    Done,
    /// [`MAX_CONTROLLED_DESTINATIONS`] destinations are paused already.
    TooMany,
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "http://a.example:80";

    #[test]
    fn pauses_keep_their_first_time_and_resets_count_up() {
        let t0 = DateTime::from_timestamp(1_000, 0).unwrap_or_default();
        let t1 = DateTime::from_timestamp(2_000, 0).unwrap_or_default();
        let paused = ControlChange::Pause.apply(None, D, t0).unwrap();
        assert_eq!(paused.paused_at, Some(t0));
        assert_eq!(ControlChange::Pause.apply(Some(&paused), D, t1), None);
        let reset = ControlChange::ResetBreaker
            .apply(Some(&paused), D, t1)
            .unwrap();
        assert_eq!((reset.paused_at, reset.breaker_resets), (Some(t0), 1));
        let resumed = ControlChange::Resume.apply(Some(&reset), D, t1).unwrap();
        assert_eq!((resumed.paused_at, resumed.breaker_resets), (None, 1));
        assert_eq!(ControlChange::Resume.apply(Some(&resumed), D, t1), None);
        assert_eq!(ControlChange::Resume.apply(None, D, t1), None);
    }
}
