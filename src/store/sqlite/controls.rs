//! Destination controls (see `store::destination_controls`): the operator's write, and the
//! read every dispatcher tick makes.

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::rows::{from_millis, millis};
use super::writer::{Applied, Queue, Write};
use crate::delivery::destinations::{OwnRate, RateLimit};
use crate::store::{ControlChange, Controlled, DestinationControl, MAX_CONTROLLED_DESTINATIONS};

pub(super) const CONTROLS: &str = "SELECT destination, paused_at, breaker_resets, rate_set,
         rate_per_second, rate_burst, held_until
     FROM destination_controls";

const CONTROL_OF: &str = "SELECT destination, paused_at, breaker_resets, rate_set,
         rate_per_second, rate_burst, held_until
     FROM destination_controls WHERE destination = ?1";

const CONTROLLED: &str = "SELECT count(*) FROM destination_controls";

/// A row with nothing lasting (no pause, no limit of its own: left by a breaker reset or a
/// receiver's hold that is over), deleted to make room: the oldest of those unchanged for
/// [`FORGET_AFTER_MS`] (every instance has read its reset by then), else the oldest.
const FORGET_PASSING: &str = "DELETE FROM destination_controls WHERE destination IN (
         SELECT destination FROM destination_controls
         WHERE paused_at IS NULL AND rate_set = 0 AND (held_until IS NULL OR held_until <= ?2)
         ORDER BY changed_at >= ?1, changed_at LIMIT 1)";

const FORGET_AFTER_MS: i64 = 10_000;

/// When the rows left are all paused, limited or held: the receiver's hold that ends first,
/// deleted to make room for an operator's pause or limit (the hold still applies on the
/// instance that got it). Without it, receivers answering `Retry-After` on 1,000
/// destinations would lock the operator out.
const FORGET_HOLD: &str = "DELETE FROM destination_controls WHERE destination IN (
         SELECT destination FROM destination_controls
         WHERE paused_at IS NULL AND rate_set = 0 ORDER BY held_until LIMIT 1)";

const DELETE: &str = "DELETE FROM destination_controls WHERE destination = ?1";

const UPSERT: &str = "INSERT INTO destination_controls (destination, paused_at, breaker_resets,
         rate_set, rate_per_second, rate_burst, held_until, changed_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
     ON CONFLICT (destination) DO UPDATE SET paused_at = excluded.paused_at,
         breaker_resets = excluded.breaker_resets, rate_set = excluded.rate_set,
         rate_per_second = excluded.rate_per_second, rate_burst = excluded.rate_burst,
         held_until = excluded.held_until, changed_at = excluded.changed_at";

fn control_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DestinationControl> {
    let rate = match (row.get::<_, bool>(3)?, row.get(4)?, row.get(5)?) {
        (false, _, _) => None,
        (true, Some(per_second), Some(burst)) => {
            Some(OwnRate::Limited(RateLimit { per_second, burst }))
        }
        (true, _, _) => Some(OwnRate::Unlimited),
    };
    Ok(DestinationControl {
        destination: row.get(0)?,
        paused_at: row.get::<_, Option<i64>>(1)?.map(from_millis),
        breaker_resets: row.get(2)?,
        rate,
        held_until: row.get::<_, Option<i64>>(6)?.map(from_millis),
    })
}

pub(super) fn controls(conn: &Connection) -> rusqlite::Result<Vec<DestinationControl>> {
    conn.prepare_cached(CONTROLS)?
        .query_map([], control_from_row)?
        .collect()
}

/// An operator's change to a destination's controls.
pub(super) struct ControlDestination {
    pub destination: String,
    pub change: ControlChange,
}

impl Write for ControlDestination {
    type Output = Controlled;

    fn apply(&self, tx: &Transaction<'_>, _: &mut Queue) -> Applied<Controlled> {
        let stored = tx
            .prepare_cached(CONTROL_OF)?
            .query_row([&self.destination], control_from_row)
            .optional()?;
        let now = Utc::now();
        let Some(next) = self.change.apply(stored.as_ref(), &self.destination, now) else {
            return Ok(Ok(Controlled::Done));
        };
        if next.is_nothing(now) {
            // Nothing left for any instance to learn.
            tx.prepare_cached(DELETE)?.execute([&next.destination])?;
            return Ok(Ok(Controlled::Done));
        }
        if stored.is_none() {
            let rows: i64 = tx.query_row(CONTROLLED, [], |row| row.get(0))?;
            if rows >= MAX_CONTROLLED_DESTINATIONS
                && tx
                    .prepare_cached(FORGET_PASSING)?
                    .execute([millis(now) - FORGET_AFTER_MS, millis(now)])?
                    == 0
                && !(self.change.lasts() && tx.prepare_cached(FORGET_HOLD)?.execute([])? > 0)
            {
                // A receiver's hold still applies on the instance that got it.
                return Ok(Ok(if self.change.lasts() {
                    Controlled::TooMany
                } else {
                    Controlled::Done
                }));
            }
        }
        let limit = next.rate.and_then(OwnRate::limit);
        tx.prepare_cached(UPSERT)?.execute(params![
            next.destination,
            next.paused_at.map(millis),
            next.breaker_resets,
            next.rate.is_some(),
            limit.map(|l| l.per_second),
            limit.map(|l| l.burst),
            next.held_until.map(millis),
            millis(now)
        ])?;
        Ok(Ok(Controlled::Done))
    }
}
