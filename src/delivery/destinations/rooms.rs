//! What a claim may take, per destination: the rooms the dispatcher hands the store.

use std::time::Duration;

/// What a claim may take, per destination: every destination not in `limited` has room for
/// `default` more deliveries; the jobs of a destination in `held` (its breaker is open) are
/// passed over unless they have been due for longer than `overdue`. The destinations in
/// `reserved` (proven) draw on every worker; the jobs of all the others count against one
/// `shared` budget, together. `served` is how many deliveries each destination had lately
/// (none when not listed): a destination's k-th due job (from 0) is in turn `served + k`,
/// and a claim takes the jobs of earlier turns first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rooms {
    pub default: u32,
    pub limited: Vec<(String, u32)>,
    pub held: Vec<String>,
    pub overdue: Duration,
    pub reserved: Vec<String>,
    pub shared: u32,
    pub served: Vec<(String, u32)>,
}

/// The most destinations a claim looks up on their own for their turn (see
/// [`Rooms::due_turns`]): a seek or two each.
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
            served: Vec::new(),
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

    /// The proven destinations with room that a claim looks up on their own, past the first
    /// due rows it reads, so that their turn comes even when other destinations' backlogs
    /// fill those rows: at most [`TURN_LOOKUPS`], those with fewest deliveries lately first.
    /// (Other destinations wait for their turn until their jobs are among the first due
    /// rows, or the claim looks destination by destination for want of any other job.)
    pub fn due_turns(&self) -> Vec<&str> {
        let room_of = |d: &str| {
            self.limited
                .iter()
                .find(|(l, _)| l == d)
                .map_or(self.default, |(_, room)| *room)
        };
        let mut turns: Vec<(u32, &str)> = self
            .reserved
            .iter()
            .map(String::as_str)
            .filter(|d| room_of(d) > 0)
            .map(|d| (self.served_of(d), d))
            .collect();
        turns.sort_unstable();
        turns.truncate(TURN_LOOKUPS);
        turns.into_iter().map(|(_, d)| d).collect()
    }

    /// How many deliveries `destination` had lately.
    pub fn served_of(&self, destination: &str) -> u32 {
        self.served
            .iter()
            .find(|(d, _)| d == destination)
            .map_or(0, |(_, served)| *served)
    }

    /// `served` as a JSON object `{"destination": deliveries, …}`, for PostgreSQL.
    pub fn served_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> = self
            .served
            .iter()
            .map(|(d, served)| (d.clone(), serde_json::Value::from(*served)))
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
        assert_eq!(rooms.only(), Some(vec![A]), "the shared budget is used up");
        let listed = Rooms {
            default: 0,
            shared: 5,
            ..rooms
        };
        assert_eq!(listed.only(), Some(vec![A, "http://b:1"]));
    }
}
