//! What an operator decided about a destination (SPEC §11): paused, how many times its
//! circuit breaker was reset, its own rate limit; and (SPEC §12) until when its receiver
//! asked, with a `Retry-After`, to be left alone. Stored, so that every instance sharing the
//! database obeys them and survives a restart with them; each instance reads the whole table
//! every second, and at once when another instance announces a change (it holds at most
//! [`MAX_CONTROLLED_DESTINATIONS`] rows), and applies it to its own per-destination state.

use chrono::{DateTime, Utc};

use crate::delivery::destinations::OwnRate;

/// Most destinations with a stored control. A row with nothing lasting (left by a reset, or a
/// `Retry-After` that is over) is deleted, oldest change first, to make room for a new one; then,
/// for an operator's change, a receiver's hold (the one ending first: it still applies on the
/// instance that got it); with every row paused or limited, a new pause or limit is refused (and a
/// receiver's hold applies on its own instance only). Every instance reads the table every second,
/// and every claim skips the paused destinations: the bound keeps both small.
pub const MAX_CONTROLLED_DESTINATIONS: i64 = 1000;

/// One destination's stored controls.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationControl {
    /// `scheme://host:port`, as [`crate::delivery::destinations::destination_of`] writes it.
    pub destination: String,
    /// Since when its jobs wait, while paused.
    pub paused_at: Option<DateTime<Utc>>,
    /// How many times an operator reset its breaker: an instance that sees the count grow
    /// resets its own breaker for the destination.
    pub breaker_resets: i64,
    /// Its own rate limit; `None`: the default applies.
    pub rate: Option<OwnRate>,
    /// Until when its receiver asked to be left alone (a 429 or 503 with `Retry-After`).
    pub held_until: Option<DateTime<Utc>>,
}

/// The controls as one read finds them, with the instances sharing the database.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ControlsRead {
    pub controls: Vec<DestinationControl>,
    /// The instances that read the controls lately, this one included (1 on SQLite).
    pub instances: u32,
}

impl DestinationControl {
    /// Nothing an instance has to learn: what a missing row means.
    pub fn is_nothing(&self, now: DateTime<Utc>) -> bool {
        self.paused_at.is_none()
            && self.breaker_resets == 0
            && self.rate.is_none()
            && self.held_until.is_none_or(|until| until <= now)
    }

    /// A destination nobody controls.
    fn none(destination: &str) -> Self {
        Self {
            destination: destination.to_string(),
            paused_at: None,
            breaker_resets: 0,
            rate: None,
            held_until: None,
        }
    }
}

/// What an operator (or a receiver, by its `Retry-After`) does to a destination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ControlChange {
    /// Its jobs wait (no claim takes them) until it is resumed. Pausing a paused destination
    /// keeps the first pause's time.
    Pause,
    Resume,
    /// Closes its circuit breaker on every instance, forgetting the failures that opened it.
    ResetBreaker,
    /// Its own rate limit, or (`None`) the default again.
    SetRate(Option<OwnRate>),
    /// Its receiver asked to be left alone until then: a later end replaces an earlier one,
    /// never the other way round.
    HoldUntil(DateTime<Utc>),
}

impl ControlChange {
    /// Whether the change must find a place in the table even when every row is in use: a
    /// receiver's hold gives way (it still applies on the instance that got it).
    pub fn lasts(self) -> bool {
        !matches!(self, Self::HoldUntil(_))
    }
}

impl ControlChange {
    /// The destination's controls after this change at `now`, from those `stored`; `None`
    /// when there is nothing to write (a pause of a paused destination keeps its first
    /// time; a resume of one not paused changes nothing; a hold ending before the stored
    /// one adds nothing).
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
            Self::SetRate(rate) if next.rate == rate => return None,
            Self::SetRate(rate) => next.rate = rate,
            Self::HoldUntil(until) if next.held_until.is_some_and(|held| held >= until) => {
                return None;
            }
            Self::HoldUntil(until) => next.held_until = Some(until),
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
    /// [`MAX_CONTROLLED_DESTINATIONS`] destinations are paused or limited already.
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

    #[test]
    fn a_hold_only_grows_and_a_rate_returns_to_the_default() {
        let t0 = DateTime::from_timestamp(1_000, 0).unwrap_or_default();
        let t1 = DateTime::from_timestamp(2_000, 0).unwrap_or_default();
        let held = ControlChange::HoldUntil(t1).apply(None, D, t0).unwrap();
        assert_eq!(held.held_until, Some(t1));
        assert!(!held.is_nothing(t0));
        assert!(held.is_nothing(t1), "a hold that is over is nothing");
        assert_eq!(ControlChange::HoldUntil(t0).apply(Some(&held), D, t0), None);
        let limited = ControlChange::SetRate(Some(OwnRate::Unlimited))
            .apply(Some(&held), D, t0)
            .unwrap();
        assert_eq!(limited.rate, Some(OwnRate::Unlimited));
        assert_eq!(
            ControlChange::SetRate(Some(OwnRate::Unlimited)).apply(Some(&limited), D, t0),
            None
        );
        let back = ControlChange::SetRate(None)
            .apply(Some(&limited), D, t0)
            .unwrap();
        assert!(back.is_nothing(t1));
    }
}
