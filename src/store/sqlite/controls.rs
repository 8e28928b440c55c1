//! Destination controls (see `store::destination_controls`): the operator's write, and the
//! read every dispatcher tick makes.

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::rows::{from_millis, millis};
use super::writer::{Applied, Queue, Write};
use crate::store::{ControlChange, Controlled, DestinationControl, MAX_CONTROLLED_DESTINATIONS};

pub(super) const CONTROLS: &str =
    "SELECT destination, paused_at, breaker_resets FROM destination_controls";

const CONTROL_OF: &str = "SELECT destination, paused_at, breaker_resets FROM destination_controls
     WHERE destination = ?1";

const CONTROLLED: &str = "SELECT count(*) FROM destination_controls";

/// A row without a pause (left by a breaker reset), deleted to make room: the oldest of
/// those unchanged for [`FORGET_AFTER_MS`] (every instance has read its reset by then), else
/// the oldest.
const FORGET_UNPAUSED: &str = "DELETE FROM destination_controls WHERE destination IN (
         SELECT destination FROM destination_controls WHERE paused_at IS NULL
         ORDER BY changed_at >= ?1, changed_at LIMIT 1)";

const FORGET_AFTER_MS: i64 = 10_000;

const DELETE: &str = "DELETE FROM destination_controls WHERE destination = ?1";

const UPSERT: &str =
    "INSERT INTO destination_controls (destination, paused_at, breaker_resets, changed_at)
     VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (destination) DO UPDATE SET paused_at = excluded.paused_at,
         breaker_resets = excluded.breaker_resets, changed_at = excluded.changed_at";

fn control_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DestinationControl> {
    Ok(DestinationControl {
        destination: row.get(0)?,
        paused_at: row.get::<_, Option<i64>>(1)?.map(from_millis),
        breaker_resets: row.get(2)?,
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
        if next.is_nothing() {
            // Resumed and never reset: nothing left for any instance to learn.
            tx.prepare_cached(DELETE)?.execute([&next.destination])?;
            return Ok(Ok(Controlled::Done));
        }
        if stored.is_none() {
            let rows: i64 = tx.query_row(CONTROLLED, [], |row| row.get(0))?;
            if rows >= MAX_CONTROLLED_DESTINATIONS
                && tx
                    .prepare_cached(FORGET_UNPAUSED)?
                    .execute([millis(now) - FORGET_AFTER_MS])?
                    == 0
            {
                return Ok(Ok(Controlled::TooMany));
            }
        }
        tx.prepare_cached(UPSERT)?.execute(params![
            next.destination,
            next.paused_at.map(millis),
            next.breaker_resets,
            millis(now)
        ])?;
        Ok(Ok(Controlled::Done))
    }
}
