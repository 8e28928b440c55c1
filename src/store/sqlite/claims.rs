//! Claiming due jobs and finding when the next one is due, by the rules of `store::due`.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::job_from_row;
use crate::delivery::destinations::Rooms;
use crate::store::due::{NEXT_DUE_WINDOW, RoomLeft, earliest, millis_of, next_due_in_levels, rank};
use crate::store::{Job, claim_scan};

/// A row `?2` may claim at `?1` (the queue clock): not leased, or its lease ran out and it
/// is another owner's (an owner never takes its own jobs back: its heartbeat releases those
/// it no longer works on).
macro_rules! claimable_lease {
    () => {
        "(lease_expires_at IS NULL OR (lease_expires_at < ?1 AND lease_owner <> ?2))"
    };
}

/// The priority levels with queued jobs, highest first: a seek each (a loose index scan of
/// `requests_due`, which priority leads), at most 21.
pub(super) const TOP_LEVEL: &str = "SELECT priority FROM requests
     WHERE next_attempt_at IS NOT NULL ORDER BY priority DESC LIMIT 1";
pub(super) const NEXT_LEVEL: &str = "SELECT priority FROM requests
     WHERE next_attempt_at IS NOT NULL AND priority < ?1 ORDER BY priority DESC LIMIT 1";

/// One priority level's (`?5`) first due rows in due order, whatever their destination: what
/// a claim (and a look for the next due time, with `?3` in the far future) considers first.
/// Rows by their rowid, which the due index holds: a row passed over (its destination held
/// or full: a backlog that can run to thousands of rows in front of the claimable ones) costs
/// an index entry, not a seek into the table for its id (measured: 0.3 ms instead of 3-5 ms
/// for a window of 1,100 rows held by an open breaker).
pub(super) const DUE_WINDOW: &str = concat!(
    "SELECT rowid, COALESCE(destination, ''), next_attempt_at FROM requests
     WHERE priority = ?5 AND next_attempt_at IS NOT NULL AND next_attempt_at <= ?3 AND ",
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

/// One destination's (`?3`) first jobs of priority `?6` due by `?4` and claimable (by rowid,
/// as above).
pub(super) const DESTINATION_DUE: &str = concat!(
    "SELECT rowid, next_attempt_at FROM requests
     WHERE destination = ?3 AND priority = ?6 AND next_attempt_at IS NOT NULL
       AND next_attempt_at <= ?4 AND ",
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

/// A queued row as a claim orders them: by `rank`, its due time less what its priority is
/// worth (`store::due::rank`), then by due time.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    rank: i64,
    due: i64,
    rowid: i64,
    destination: String,
}

impl Queued {
    /// A row of `DUE_WINDOW` (rowid, destination, due time) of priority `level`.
    fn of_window_row(row: &rusqlite::Row<'_>, level: i64, step: i64) -> rusqlite::Result<Self> {
        let due = row.get(2)?;
        Ok(Self {
            rank: rank(due, level, step),
            due,
            rowid: row.get(0)?,
            destination: row.get(1)?,
        })
    }
}

/// The priority levels with queued jobs, highest first.
pub(super) fn levels(conn: &Connection) -> rusqlite::Result<Vec<i64>> {
    let mut levels = Vec::new();
    let mut next: Option<i64> = conn
        .prepare_cached(TOP_LEVEL)?
        .query_row([], |row| row.get(0))
        .optional()?;
    let mut step = conn.prepare_cached(NEXT_LEVEL)?;
    while let Some(level) = next {
        levels.push(level);
        next = step.query_row([level], |row| row.get(0)).optional()?;
    }
    Ok(levels)
}

/// Visits the first `scan` claimable rows due by `now`, in the claim's order, until `visit`
/// answers false; answers whether more rows may follow those (the window was full). With one
/// level (the common case) the rows are read lazily, only as far as the claim needs; with
/// several, each level's first `scan` are read and merged.
fn visit_due(
    conn: &Connection,
    owner: &str,
    levels: &[i64],
    step: i64,
    now: i64,
    scan: u32,
    mut visit: impl FnMut(&Queued) -> bool,
) -> rusqlite::Result<bool> {
    if let [level] = levels {
        let mut window = conn.prepare_cached(DUE_WINDOW)?;
        let mut rows = window.query(params![now, owner, now, scan, level])?;
        let mut seen = 0;
        while let Some(row) = rows.next()? {
            seen += 1;
            if !visit(&Queued::of_window_row(row, *level, step)?) {
                break;
            }
        }
        return Ok(seen == scan);
    }
    let (window, full) = due_window(conn, owner, levels, step, (now, now), scan)?;
    for row in &window {
        if !visit(row) {
            break;
        }
    }
    Ok(full)
}

/// The first `limit` claimable rows due by `by`, in the claim's order: each level's first
/// `limit` in due order, merged. Also whether more may follow (a level had as many as asked).
fn due_window(
    conn: &Connection,
    owner: &str,
    levels: &[i64],
    step: i64,
    (now, by): (i64, i64),
    limit: u32,
) -> rusqlite::Result<(Vec<Queued>, bool)> {
    let mut window = conn.prepare_cached(DUE_WINDOW)?;
    let mut rows = Vec::new();
    let mut full = false;
    for &level in levels {
        let before = rows.len();
        let mut found = window.query(params![now, owner, by, limit, level])?;
        while let Some(row) = found.next()? {
            rows.push(Queued::of_window_row(row, level, step)?);
        }
        full |= rows.len() - before == limit as usize;
    }
    rows.sort_unstable();
    if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        full = true;
    }
    Ok((rows, full))
}

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

/// Claims up to `limit` jobs due by `now` (the queue's time) in the claim's order (due time
/// less what each job's priority is worth, `priority_step` a level), taking of each
/// destination at most its room and none of a held one unless overdue.
///
/// First the first due rows in that order (`claim_scan(limit)` of them): the common case, a
/// cost of the jobs claimed. When those rows belong to destinations without room (a full or
/// held destination's backlog in front) and leave the claim short, it looks destination by
/// destination instead, so jobs behind that backlog are found with a seek per destination
/// and level rather than a walk over the backlog.
pub(super) fn claim(
    conn: &Connection,
    owner: &str,
    limit: u32,
    (lease, priority_step): (Duration, Duration),
    rooms: &Rooms,
    now: i64,
) -> rusqlite::Result<Vec<Job>> {
    let lease_until = now.saturating_add(millis_of(lease));
    let step = millis_of(priority_step);
    let wanted = limit as usize;
    if wanted == 0 {
        return Ok(Vec::new());
    }
    let levels = levels(conn)?;

    let mut room = RoomLeft::new(rooms);
    let mut picked = Vec::new();
    let mut passed_over = false;
    let full = visit_due(conn, owner, &levels, step, now, claim_scan(limit), |row| {
        if room.admits(&row.destination, row.due, now) {
            room.take(&row.destination);
            picked.push(row.rowid);
        } else {
            passed_over = true;
        }
        picked.len() < wanted
    })?;

    if picked.len() < wanted && passed_over && full {
        // Each destination's first jobs of each level within its room, then, in the
        // claim's order, those the rooms and the shared budget admit together.
        let room = RoomLeft::new(rooms);
        let mut candidates = Vec::new();
        let mut due_rows = conn.prepare_cached(DESTINATION_DUE)?;
        each_destination(conn, rooms, |destination| {
            let left = room.left(destination).min(limit);
            if left == 0 {
                return Ok(());
            }
            let until = room.due_by(destination, now);
            for &level in &levels {
                let rows = due_rows.query_map(
                    params![now, owner, destination, until, left, level],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
                for row in rows {
                    let (rowid, due) = row?;
                    candidates.push(Queued {
                        rank: rank(due, level, step),
                        due,
                        rowid,
                        destination: destination.to_string(),
                    });
                }
            }
            Ok(())
        })?;
        candidates.sort_unstable();
        let mut room = RoomLeft::new(rooms);
        picked.clear();
        for row in candidates {
            if picked.len() == wanted {
                break;
            }
            if room.admits(&row.destination, row.due, now) {
                room.take(&row.destination);
                picked.push(row.rowid);
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
/// overdue), whatever its priority. `None` with nothing queued.
pub(super) fn next_due(
    conn: &Connection,
    owner: &str,
    rooms: &Rooms,
    now: i64,
) -> rusqlite::Result<Option<i64>> {
    let room = RoomLeft::new(rooms);
    let levels = levels(conn)?;
    // Each level on its own: within one, due order is the window's order.
    let mut windows = Vec::with_capacity(levels.len());
    for &level in &levels {
        let (window, _) = due_window(conn, owner, &[level], 0, (now, i64::MAX), NEXT_DUE_WINDOW)?;
        let window: Vec<(String, i64)> = window
            .into_iter()
            .map(|row| (row.destination, row.due))
            .collect();
        windows.push(window);
    }
    let mut earliest_seen =
        match next_due_in_levels(windows.iter().map(Vec::as_slice), NEXT_DUE_WINDOW, &room) {
            Ok(answer) => return Ok(answer),
            Err(so_far) => so_far,
        };
    let mut first_due = conn.prepare_cached(DESTINATION_DUE)?;
    each_destination(conn, rooms, |destination| {
        if room.left(destination) == 0 {
            return Ok(());
        }
        for &level in &levels {
            let due: Option<i64> = first_due
                .query_row(
                    params![now, owner, destination, i64::MAX, 1, level],
                    |row| row.get(1),
                )
                .optional()?;
            if let Some(due) = due {
                earliest_seen = earliest(earliest_seen, room.claimable_at(destination, due));
            }
        }
        Ok(())
    })?;
    Ok(earliest_seen)
}
