//! What a claim may take, per destination: the rooms the dispatcher hands the store.

use std::time::Duration;

/// What a claim may take, per destination: every destination not in `limited` has room for
/// `default` more deliveries; the jobs of a destination in `held` (its breaker is open) are
/// passed over unless they have been due for longer than `overdue`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rooms {
    pub default: u32,
    pub limited: Vec<(String, u32)>,
    pub held: Vec<String>,
    pub overdue: Duration,
}

impl Rooms {
    /// Uses up one place of `destination`'s room (a job claimed for it).
    pub fn take_one(&mut self, destination: &str) {
        match self.limited.iter_mut().find(|(d, _)| d == destination) {
            Some((_, room)) => *room = room.saturating_sub(1),
            None => self
                .limited
                .push((destination.to_string(), self.default.saturating_sub(1))),
        }
    }

    /// The destinations with no room at all.
    pub fn closed(&self) -> impl Iterator<Item = &str> {
        self.limited
            .iter()
            .filter(|(_, room)| *room == 0)
            .map(|(d, _)| d.as_str())
    }

    /// Whether only the listed destinations can have room (no room by default): a claim then
    /// looks at those destinations' jobs, never at every destination with queued jobs.
    pub fn listed_only(&self) -> bool {
        self.default == 0
    }

    /// The listed destinations with room, for a claim that looks only at those.
    pub fn open(&self) -> impl Iterator<Item = &str> {
        self.limited
            .iter()
            .filter(|(_, room)| *room > 0)
            .map(|(d, _)| d.as_str())
    }

    /// Whether any job could be claimed at all.
    pub fn has_room(&self) -> bool {
        self.default > 0 || self.limited.iter().any(|(_, room)| *room > 0)
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

/// What the dispatcher may claim now: the rooms of the destinations that have earned their
/// share, and of all the others, which share at most `unproven_free` more deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimable {
    /// Destinations that answered recently and have nothing against them: each has its
    /// earned room; every other destination has none here.
    pub proven: Rooms,
    /// Every other destination (new, failing, slow, or held by its breaker): new ones have
    /// room for one delivery, known ones their earned room, proven ones none.
    pub unproven: Rooms,
    /// Deliveries the unproven destinations may start between them.
    pub unproven_free: u32,
}

impl Claimable {
    /// The rooms of both, for the look at when the next job becomes claimable: the unproven
    /// destinations' only while their share has room.
    pub fn either(&self) -> Rooms {
        let open_to_unproven = self.unproven_free > 0;
        let mut limited = self.proven.limited.clone();
        limited.extend(
            self.unproven
                .limited
                .iter()
                .filter(|(d, _)| !self.proven.limited.iter().any(|(p, _)| p == d))
                .map(|(d, room)| (d.clone(), if open_to_unproven { *room } else { 0 })),
        );
        Rooms {
            default: if open_to_unproven {
                self.unproven.default
            } else {
                0
            },
            limited,
            held: self.unproven.held.clone(),
            overdue: self.unproven.overdue,
        }
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
        };
        let json: serde_json::Value = serde_json::from_str(&rooms.to_json()).unwrap();
        assert_eq!(json, serde_json::json!({A: 0, "http://b:1": 3}));
        assert_eq!(rooms.closed().collect::<Vec<_>>(), [A]);
        assert_eq!(rooms.open().collect::<Vec<_>>(), ["http://b:1"]);
    }

    #[test]
    fn either_closes_the_unproven_when_their_share_is_used_up() {
        let claimable = Claimable {
            proven: Rooms {
                default: 0,
                limited: vec![(A.into(), 3)],
                ..Rooms::default()
            },
            unproven: Rooms {
                default: 1,
                limited: vec![(A.into(), 0), ("http://b:1".into(), 1)],
                held: vec!["http://c:2".into()],
                overdue: Duration::from_secs(9),
            },
            unproven_free: 0,
        };
        let either = claimable.either();
        assert_eq!(either.default, 0);
        assert_eq!(
            either.limited,
            vec![(A.to_string(), 3), ("http://b:1".to_string(), 0)]
        );
        assert_eq!(either.held, ["http://c:2"]);
        let open = Claimable {
            unproven_free: 2,
            ..claimable
        }
        .either();
        assert_eq!(open.default, 1);
        assert_eq!(open.limited[1], ("http://b:1".to_string(), 1));
    }
}
