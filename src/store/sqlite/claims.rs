//! Claiming due jobs and finding when the next one is due, by the rules of `store::due`.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::job_from_row;
use crate::delivery::destinations::Rooms;
use crate::store::due::{NEXT_DUE_WINDOW, RoomLeft, earliest, millis_of, next_due_in_window};
use crate::store::{Job, claim_scan};

/// A row `?2` may claim at `?1` (the queue clock): not leased, or its lease ran out and it
/// is another owner's (an owner never takes its own jobs back: its heartbeat releases those
/// it no longer works on).
macro_rules! claimable_lease {
    () => {
        "(lease_expires_at IS NULL OR (lease_expires_at < ?1 AND lease_owner <> ?2))"
    };
}

/// The first due rows in due order, whatever their destination: what a claim (and a look
/// for the next due time, with `?3` in the far future) considers first. Rows by their rowid,
/// which the due index holds: a row passed over (its destination held or full: a backlog
/// that can run to thousands of rows in front of the claimable ones) costs an index entry,
/// not a seek into the table for its id (measured: 0.3 ms instead of 3-5 ms for a window of
/// 1,100 rows held by an open breaker).
pub(super) const DUE_WINDOW: &str = concat!(
    "SELECT rowid, COALESCE(destination, ''), next_attempt_at FROM requests
     WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ?3 AND ",
    claimable_lease!(),
    " ORDER BY next_attempt_at LIMIT ?4"
);

/// The destinations with queued jobs, one index seek each (a loose index scan).
pub(super) const FIRST_DESTINATION: &str = "SELECT destination FROM requests
     WHERE next_attempt_at IS NOT NULL AND destination IS NOT NULL
     ORDER BY destination LIMIT 1";
pub(super) const NEXT_DESTINATION: &str = "SELECT destination FROM requests
     WHERE next_attempt_at IS NOT NULL AND destination > ?1
     ORDER BY destination LIMIT 1";

/// One destination's (`?3`) first jobs due by `?4` and claimable (by rowid, as above).
pub(super) const DESTINATION_DUE: &str = concat!(
    "SELECT rowid, next_attempt_at FROM requests
     WHERE destination = ?3 AND next_attempt_at IS NOT NULL AND next_attempt_at <= ?4 AND ",
    claimable_lease!(),
    " ORDER BY next_attempt_at LIMIT ?5"
);

pub(super) const CLAIM_ONE: &str = concat!(
    "UPDATE requests
     SET status = CASE status WHEN 'pending' THEN 'processing' ELSE status END,
         lease_owner = ?2, lease_expires_at = ?3, lease_token = lower(hex(randomblob(16))),
         unrecorded_claims = unrecorded_claims + 1
     WHERE rowid = ?1
     RETURNING ",
    job_columns!()
);

/// Calls `f` with each destination that may have room: the few `rooms` names when only
/// they can (a caller may have queued jobs for thousands of others), else each destination
/// that has queued jobs, in name order.
pub(super) fn each_destination(
    conn: &Connection,
    rooms: &Rooms,
    mut f: impl FnMut(&str) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    if let Some(only) = rooms.only() {
        for destination in only {
            f(destination)?;
        }
        return Ok(());
    }
    let mut next: Option<String> = conn
        .prepare_cached(FIRST_DESTINATION)?
        .query_row([], |row| row.get(0))
        .optional()?;
    let mut step = conn.prepare_cached(NEXT_DESTINATION)?;
    while let Some(destination) = next {
        f(&destination)?;
        next = step
            .query_row([&destination], |row| row.get(0))
            .optional()?;
    }
    Ok(())
}

/// Claims up to `limit` jobs due by `now` (the queue's time), in due order, taking of each destination at most its room
/// and none of a held one unless overdue.
///
/// First the due rows in due order (`claim_scan(limit)` of them): the common case, a cost of
/// the jobs claimed. When those rows belong to destinations without room (a full or held
/// destination's backlog in front) and leave the claim short, it looks destination by
/// destination instead, so jobs behind that backlog are found with a seek per destination
/// rather than a walk over the backlog.
pub(super) fn claim(
    conn: &Connection,
    owner: &str,
    limit: u32,
    lease: Duration,
    rooms: &Rooms,
    now: i64,
) -> rusqlite::Result<Vec<Job>> {
    let lease_until = now.saturating_add(millis_of(lease));
    let wanted = limit as usize;
    let scan = claim_scan(limit);

    // Read lazily: the window is read only as far as the claim needs.
    let mut room = RoomLeft::new(rooms);
    let mut picked = Vec::new();
    let mut passed_over = false;
    let mut seen = 0;
    let mut window = conn.prepare_cached(DUE_WINDOW)?;
    let mut rows = window.query(params![now, owner, now, scan])?;
    while picked.len() < wanted {
        let Some(row) = rows.next()? else { break };
        seen += 1;
        let destination: String = row.get(1)?;
        if room.admits(&destination, row.get(2)?, now) {
            room.take(&destination);
            picked.push(row.get::<_, i64>(0)?);
        } else {
            passed_over = true;
        }
    }
    drop(rows);

    if picked.len() < wanted && passed_over && seen == scan {
        // Each destination's first jobs within its room, then, in due order, those the
        // rooms and the shared budget admit together.
        let room = RoomLeft::new(rooms);
        let mut candidates: Vec<(i64, i64, String)> = Vec::new();
        let mut due_rows = conn.prepare_cached(DESTINATION_DUE)?;
        each_destination(conn, rooms, |destination| {
            let left = room.left(destination).min(limit);
            if left == 0 {
                return Ok(());
            }
            let until = room.due_by(destination, now);
            let rows = due_rows
                .query_map(params![now, owner, destination, until, left], |row| {
                    Ok((row.get(1)?, row.get(0)?, destination.to_string()))
                })?;
            for row in rows {
                candidates.push(row?);
            }
            Ok(())
        })?;
        candidates.sort_unstable();
        let mut room = RoomLeft::new(rooms);
        picked.clear();
        for (due, id, destination) in candidates {
            if picked.len() == wanted {
                break;
            }
            if room.admits(&destination, due, now) {
                room.take(&destination);
                picked.push(id);
            }
        }
    }

    let mut claim_one = conn.prepare_cached(CLAIM_ONE)?;
    picked
        .iter()
        .map(|id| claim_one.query_row(params![id, owner, lease_until], job_from_row))
        .collect()
}

/// The earliest time (on the queue clock) a claim of `owner` could take a job: of the
/// destinations with room, the first due job it may claim (a held destination's once it is
/// overdue). `None` with nothing queued.
pub(super) fn next_due(
    conn: &Connection,
    owner: &str,
    rooms: &Rooms,
    now: i64,
) -> rusqlite::Result<Option<i64>> {
    let room = RoomLeft::new(rooms);
    let window = conn
        .prepare_cached(DUE_WINDOW)?
        .query_map(params![now, owner, i64::MAX, NEXT_DUE_WINDOW], |row| {
            Ok((row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut earliest_seen = match next_due_in_window(&window, NEXT_DUE_WINDOW, &room) {
        Ok(answer) => return Ok(answer),
        Err(so_far) => so_far,
    };
    let mut first_due = conn.prepare_cached(DESTINATION_DUE)?;
    each_destination(conn, rooms, |destination| {
        if room.left(destination) == 0 {
            return Ok(());
        }
        let due: Option<i64> = first_due
            .query_row(params![now, owner, destination, i64::MAX, 1], |row| {
                row.get(1)
            })
            .optional()?;
        if let Some(due) = due {
            earliest_seen = earliest(earliest_seen, room.claimable_at(destination, due));
        }
        Ok(())
    })?;
    Ok(earliest_seen)
}
