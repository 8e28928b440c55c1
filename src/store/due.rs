//! Which queued jobs a claim may take and when the next one can be taken: the rules both
//! backends apply to the rows their indexes give them, times in milliseconds of the
//! database's clock.
//!
//! Both look at the first due rows in due order first (the common case costs what is
//! claimed), and destination by destination only when those rows belong to destinations
//! without room (a full or held destination's backlog in front): a seek per destination
//! instead of a walk over that backlog.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::delivery::destinations::{Rooms, Turn};

/// How many due rows a look for the next due time considers before it looks destination by
/// destination.
pub(crate) const NEXT_DUE_WINDOW: u32 = 64;

/// A queued job's place in a claim's order: its due time less what its priority `level` is
/// worth, `step` (ms) a level. A job that has waited longer than the difference between two
/// levels goes ahead of a newer one of the higher level, so none waits forever behind a
/// flood of higher priority.
pub(crate) fn rank(due: i64, level: i64, step: i64) -> i64 {
    due.saturating_sub(level.saturating_mul(step))
}

pub(crate) fn millis_of(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The room each destination has for a claim, and the shared budget of the destinations not
/// reserved, used up as the claim picks jobs.
pub(crate) struct RoomLeft<'a> {
    default: u32,
    limited: HashMap<&'a str, u32>,
    held: HashSet<&'a str>,
    reserved: HashSet<&'a str>,
    shared: u32,
    taken: HashMap<String, u32>,
    overdue: i64,
    turns: HashMap<&'a str, Turn>,
}

impl<'a> RoomLeft<'a> {
    pub(crate) fn new(rooms: &'a Rooms) -> Self {
        Self {
            default: rooms.default,
            limited: rooms
                .limited
                .iter()
                .map(|(d, room)| (d.as_str(), *room))
                .collect(),
            held: rooms.held.iter().map(String::as_str).collect(),
            reserved: rooms.reserved.iter().map(String::as_str).collect(),
            shared: rooms.shared,
            taken: HashMap::new(),
            overdue: millis_of(rooms.overdue),
            turns: rooms
                .turns
                .iter()
                .map(|(d, turn)| (d.as_str(), *turn))
                .collect(),
        }
    }

    /// `destination`'s place in the claims' turns.
    pub(crate) fn turn(&self, destination: &str) -> Turn {
        self.turns.get(destination).copied().unwrap_or_default()
    }

    /// Jobs of `destination` a claim may still take: its room, and for a destination that is
    /// not reserved, no more than what is left of the shared budget.
    pub(crate) fn left(&self, destination: &str) -> u32 {
        let room = self
            .limited
            .get(destination)
            .copied()
            .unwrap_or(self.default);
        let left = room.saturating_sub(self.taken.get(destination).copied().unwrap_or(0));
        if self.reserved.contains(destination) {
            left
        } else {
            left.min(self.shared)
        }
    }

    pub(crate) fn is_held(&self, destination: &str) -> bool {
        self.held.contains(destination)
    }

    /// The latest due time of `destination`'s jobs that a claim at `now` may take: now, or
    /// for a held destination, only jobs overdue by the longest cool-down.
    pub(crate) fn due_by(&self, destination: &str, now: i64) -> i64 {
        if self.is_held(destination) {
            now.saturating_sub(self.overdue)
        } else {
            now
        }
    }

    /// When a job of `destination` due at `due` becomes claimable (room permitting).
    pub(crate) fn claimable_at(&self, destination: &str, due: i64) -> i64 {
        if self.is_held(destination) {
            due.saturating_add(self.overdue)
        } else {
            due
        }
    }

    /// Whether a job of `destination` due at `due` may be claimed at `now`.
    pub(crate) fn admits(&self, destination: &str, due: i64, now: i64) -> bool {
        self.left(destination) > 0 && due <= self.due_by(destination, now)
    }

    pub(crate) fn take(&mut self, destination: &str) {
        *self.taken.entry(destination.to_string()).or_default() += 1;
        if !self.reserved.contains(destination) {
            self.shared = self.shared.saturating_sub(1);
        }
    }
}

/// What the first due rows (`window`, in due order, at most `window_limit`, none leased)
/// say about the next due time: `Ok` with the answer, or `Err` with the earliest time seen so
/// far when every row belonged to a destination without room and more rows may follow (then
/// the backend asks destination by destination and folds the answers in with [`earliest`]).
pub(crate) fn next_due_in_window(
    window: &[(String, i64)],
    window_limit: u32,
    room: &RoomLeft<'_>,
) -> Result<Option<i64>, Option<i64>> {
    let mut so_far: Option<i64> = None;
    for (destination, due) in window {
        if room.left(destination) == 0 {
            continue;
        }
        so_far = earliest(so_far, room.claimable_at(destination, *due));
        if !room.is_held(destination) {
            // Every later row is due no sooner than this one.
            return Ok(so_far);
        }
    }
    if window.len() < window_limit as usize {
        Ok(so_far)
    } else {
        Err(so_far)
    }
}

/// What the first due rows of each priority level (`windows`, each in due order, at most
/// `window_limit`) say about the next due time: `Ok` with the answer, or `Err` with the
/// earliest seen so far when a row past a full window (due no earlier than that window's
/// last, and claimable no earlier than due) could come sooner; then the backend looks
/// destination by destination and folds the answers in with [`earliest`].
pub(crate) fn next_due_in_levels<'w>(
    windows: impl IntoIterator<Item = &'w [(String, i64)]>,
    window_limit: u32,
    room: &RoomLeft<'_>,
) -> Result<Option<i64>, Option<i64>> {
    let mut seen = None;
    let mut unread_from = None;
    for window in windows {
        let so_far = match next_due_in_window(window, window_limit, room) {
            Ok(answer) => answer,
            Err(so_far) => {
                if let Some((_, last)) = window.last() {
                    unread_from = earliest(unread_from, *last);
                }
                so_far
            }
        };
        if let Some(at) = so_far {
            seen = earliest(seen, at);
        }
    }
    match (seen, unread_from) {
        (_, None) => Ok(seen),
        (Some(at), Some(from)) if at <= from => Ok(seen),
        _ => Err(seen),
    }
}

pub(crate) fn earliest(so_far: Option<i64>, at: i64) -> Option<i64> {
    Some(so_far.map_or(at, |e| e.min(at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "http://a:1";
    const B: &str = "http://b:2";

    fn rooms(limited: &[(&str, u32)], held: &[&str]) -> Rooms {
        Rooms {
            default: 2,
            limited: limited.iter().map(|(d, r)| (d.to_string(), *r)).collect(),
            held: held.iter().map(|d| d.to_string()).collect(),
            overdue: Duration::from_millis(100),
            ..Rooms::default()
        }
    }

    #[test]
    fn a_full_window_needs_a_closer_look_only_when_its_rest_could_come_sooner() {
        let rooms = rooms(&[(A, 0)], &[]);
        let room = RoomLeft::new(&rooms);
        let full_of_a = vec![(A.to_string(), 50), (A.to_string(), 60)];
        let b_at = |due: i64| vec![(B.to_string(), due)];
        let answer = |windows: &[Vec<(String, i64)>]| {
            next_due_in_levels(windows.iter().map(Vec::as_slice), 2, &room)
        };
        assert_eq!(answer(&[]), Ok(None), "nothing queued");
        assert_eq!(answer(&[b_at(70)]), Ok(Some(70)), "no window was full");
        assert_eq!(
            answer(&[full_of_a.clone(), b_at(40)]),
            Ok(Some(40)),
            "the rest of the full level is due no sooner than 60"
        );
        assert_eq!(
            answer(&[full_of_a.clone(), b_at(70)]),
            Err(Some(70)),
            "the rest may be due sooner"
        );
        assert_eq!(
            answer(&[full_of_a]),
            Err(None),
            "only the rest may be claimable"
        );
    }

    #[test]
    fn a_priority_is_worth_its_steps_of_waiting() {
        assert_eq!(rank(10_000, 0, 60_000), 10_000);
        assert_eq!(rank(10_000, 10, 1_000), 0);
        assert_eq!(rank(10_000, -10, 1_000), 20_000);
        assert_eq!(rank(i64::MIN + 5, 10, i64::MAX), i64::MIN, "saturates");
        assert_eq!(rank(i64::MAX - 5, -10, i64::MAX), i64::MAX, "saturates");
    }

    #[test]
    fn destinations_not_reserved_share_one_budget() {
        let rooms = Rooms {
            reserved: vec![A.into()],
            shared: 2,
            ..rooms(&[(A, 5)], &[])
        };
        let mut room = RoomLeft::new(&rooms);
        for _ in 0..5 {
            assert!(room.admits(A, 1, 1), "reserved: its own room only");
            room.take(A);
        }
        assert!(!room.admits(A, 1, 1));
        assert!(room.admits(B, 1, 1));
        room.take(B);
        assert!(room.admits("http://c:3", 1, 1));
        room.take("http://c:3");
        assert!(!room.admits(B, 1, 1), "the shared budget is used up");
        assert!(!room.admits("http://d:4", 1, 1));
        assert_eq!(room.left(B), 0);
    }

    #[test]
    fn room_is_used_up_and_held_destinations_admit_only_overdue_jobs() {
        let rooms = rooms(&[(A, 1)], &[B]);
        let mut room = RoomLeft::new(&rooms);
        assert!(room.admits(A, 1_000, 1_000));
        room.take(A);
        assert!(!room.admits(A, 1_000, 1_000), "A's one place is taken");
        assert!(!room.admits(B, 950, 1_000), "held, not yet overdue");
        assert!(room.admits(B, 900, 1_000), "held and overdue");
        assert!(
            room.admits("http://c:3", 1_000, 1_000),
            "unknown: the default"
        );
        assert!(!room.admits("http://c:3", 1_001, 1_000), "not yet due");
    }

    #[test]
    fn the_next_due_time_skips_full_destinations_and_waits_out_held_ones() {
        let rooms = rooms(&[(A, 0)], &[B]);
        let room = RoomLeft::new(&rooms);
        let window = vec![(A.to_string(), 1), (B.to_string(), 2), ("c".into(), 500)];
        assert_eq!(next_due_in_window(&window, 64, &room), Ok(Some(102)));
        let window = vec![(A.to_string(), 1), (A.to_string(), 2)];
        assert_eq!(next_due_in_window(&window, 64, &room), Ok(None));
        assert_eq!(
            next_due_in_window(&window, 2, &room),
            Err(None),
            "a full window of full destinations: look further"
        );
    }
}
