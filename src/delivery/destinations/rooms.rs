//! What a claim may take, per destination: the rooms the dispatcher hands the store.

use std::collections::HashMap;
use std::time::Duration;

/// What a claim may take, per destination: every destination not in `limited` has room for
/// `default` more deliveries; the jobs of a destination in `held` (its breaker is open) are
/// passed over unless they have been due for longer than `overdue`. The destinations in
/// `reserved` (proven) draw on every worker; the jobs of all the others count against one
/// `shared` budget, together. A claim takes the jobs of earlier `turns` first (a destination
/// not listed has the default [`Turn`]), and looks up the destinations of `look_up` on their
/// own when more jobs are due than it reads in due order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rooms {
    pub default: u32,
    pub limited: Vec<(String, u32)>,
    pub held: Vec<String>,
    pub overdue: Duration,
    pub reserved: Vec<String>,
    pub shared: u32,
    pub turns: Vec<(String, Turn)>,
    pub look_up: Vec<String>,
}

/// A destination's place in the claims' turns, in milliseconds of the workers' time (see
/// `turns.rs`): its k-th due job (from 0) is in turn `first + k × per_job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// What its deliveries took lately, and those in flight are expected to take.
    pub first: u64,
    /// What one delivery is expected to take.
    pub per_job: u64,
}

impl Default for Turn {
    /// A destination that had nothing lately.
    fn default() -> Self {
        Self {
            first: 0,
            per_job: u64::from(super::turns::FIRST_JOB_MS),
        }
    }
}

impl Turn {
    /// The turn of the destination's `place`-th due job (from 0).
    pub fn of(&self, place: u64) -> u64 {
        self.first
            .saturating_add(place.saturating_mul(self.per_job))
    }
}

/// The most destinations a claim looks up on their own for their turn (see
/// [`Rooms::look_up`]): a seek per priority level present each.
pub const TURN_LOOKUPS: usize = 64;

impl Default for Rooms {
    /// No room anywhere, and no budget shared beyond each destination's room.
    fn default() -> Self {
        Self {
            default: 0,
            limited: Vec::new(),
            held: Vec::new(),
            overdue: Duration::ZERO,
            reserved: Vec::new(),
            shared: u32::MAX,
            turns: Vec::new(),
            look_up: Vec::new(),
        }
    }
}

impl Rooms {
    /// Uses up one place of `destination`'s room (a job claimed for it), and of the shared
    /// budget if it draws on that.
    pub fn take_one(&mut self, destination: &str) {
        match self.limited.iter_mut().find(|(d, _)| d == destination) {
            Some((_, room)) => *room = room.saturating_sub(1),
            None => self
                .limited
                .push((destination.to_string(), self.default.saturating_sub(1))),
        }
        if !self.is_reserved(destination) {
            self.shared = self.shared.saturating_sub(1);
        }
        // Its next job's turn is one job later.
        if !self.turns.iter().any(|(d, _)| d == destination) {
            self.turns.push((destination.to_string(), Turn::default()));
        }
        if let Some((_, turn)) = self.turns.iter_mut().find(|(d, _)| d == destination) {
            turn.first = turn.of(1);
        }
    }

    /// Whether `destination` draws on every worker rather than the shared budget.
    pub fn is_reserved(&self, destination: &str) -> bool {
        self.reserved.iter().any(|d| d == destination)
    }

    /// The destinations with no room at all.
    pub fn closed(&self) -> impl Iterator<Item = &str> {
        self.limited
            .iter()
            .filter(|(_, room)| *room == 0)
            .map(|(d, _)| d.as_str())
    }

    /// The only destinations whose jobs can be claimed, when they are few enough to list: with
    /// the shared budget used up, the reserved ones with room; with no room by default, the
    /// listed ones with room. `None`: any destination with queued jobs may have room. A
    /// claim that looks destination by destination then looks at these, never at every
    /// destination with queued jobs (a caller may have queued jobs for thousands).
    pub fn only(&self) -> Option<Vec<&str>> {
        let open = self.limited.iter().filter(|(_, room)| *room > 0);
        if self.shared == 0 {
            Some(
                open.filter(|(d, _)| self.is_reserved(d))
                    .map(|(d, _)| d.as_str())
                    .collect(),
            )
        } else if self.default == 0 {
            Some(open.map(|(d, _)| d.as_str()).collect())
        } else {
            None
        }
    }

    /// The destinations a claim looks up on their own, past the first due rows it reads, so
    /// that their turn comes even when other destinations' backlogs fill those rows: of
    /// `look_up`, those with room left.
    pub fn due_turns(&self) -> Vec<&str> {
        if self.look_up.is_empty() {
            return Vec::new();
        }
        let rooms: HashMap<&str, u32> = self
            .limited
            .iter()
            .map(|(d, room)| (d.as_str(), *room))
            .collect();
        self.look_up
            .iter()
            .map(String::as_str)
            .filter(|d| rooms.get(d).copied().unwrap_or(self.default) > 0)
            .collect()
    }

    /// `turns` as a JSON object `{"destination": [first, per_job], …}`, for PostgreSQL.
    pub fn turns_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .turns
            .iter()
            .map(|(d, turn)| (d.clone(), serde_json::json!([turn.first, turn.per_job])))
            .collect();
        serde_json::Value::Object(map).to_string()
    }

    /// The limited destinations as a JSON object `{"destination": room, …}`, the form
    /// PostgreSQL's claim statements read.
    pub fn to_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .limited
            .iter()
            .map(|(d, room)| (d.clone(), serde_json::Value::from(*room)))
            .collect();
        serde_json::Value::Object(map).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "http://a.example:80";

    #[test]
    fn rooms_serialise_for_the_claim() {
        let rooms = Rooms {
            default: 5,
            limited: vec![(A.into(), 0), ("http://b:1".into(), 3)],
            held: vec!["http://c:2".into()],
            overdue: Duration::from_secs(1),
            ..Rooms::default()
        };
        let json: serde_json::Value = serde_json::from_str(&rooms.to_json()).unwrap();
        assert_eq!(json, serde_json::json!({A: 0, "http://b:1": 3}));
        assert_eq!(rooms.closed().collect::<Vec<_>>(), [A]);
    }

    #[test]
    fn only_lists_the_destinations_that_can_be_claimed_when_few() {
        let mut rooms = Rooms {
            default: 1,
            limited: vec![
                (A.into(), 3),
                ("http://b:1".into(), 2),
                ("http://c:2".into(), 0),
            ],
            reserved: vec![A.into()],
            shared: 2,
            ..Rooms::default()
        };
        assert_eq!(rooms.only(), None, "any new destination may have room");
        rooms.take_one("http://b:1");
        rooms.take_one(A);
        assert_eq!(rooms.shared, 1, "only the unreserved one counts against it");
        rooms.take_one("http://new:9");
        assert_eq!(rooms.shared, 0);
        let turn_of = |d: &str| rooms.turns.iter().find(|(x, _)| x == d).map(|(_, t)| *t);
        let per_job = Turn::default().per_job;
        assert_eq!(
            turn_of("http://new:9").map(|t| t.first),
            Some(per_job),
            "a job taken moves its destination's turn on by one job"
        );
        assert_eq!(rooms.only(), Some(vec![A]), "the shared budget is used up");
        let listed = Rooms {
            default: 0,
            shared: 5,
            ..rooms
        };
        assert_eq!(listed.only(), Some(vec![A, "http://b:1"]));
    }
}
