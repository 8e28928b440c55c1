//! Claiming due jobs and finding when the next one is due, by the rules of `store::due`.

use std::collections::HashSet;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::job_from_row;
use crate::delivery::destinations::{Rooms, Turn};
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
    " AND NOT ",
    behind_earlier!(),
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
    " AND NOT ",
    behind_earlier!(),
    " ORDER BY next_attempt_at LIMIT ?5"
);

/// One job leased (`?1` its rowid) to owner `?2` until `?3` under token `?4`.
pub(super) const CLAIM_ONE: &str = concat!(
    "UPDATE OR FAIL requests
     SET status = CASE status WHEN 'pending' THEN 'processing' ELSE status END,
         lease_owner = ?2, lease_expires_at = ?3, lease_token = ?4,
         unrecorded_claims = unrecorded_claims + 1
     WHERE rowid = ?1
     RETURNING ",
    job_columns!()
);

/// A queued row as a claim orders them: by its destination's turn (see `Rooms`), then by
/// `rank`, its due time less what its priority is worth (`store::due::rank`), then by due
/// time.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    turn: u64,
    rank: i64,
    due: i64,
    rowid: i64,
    destination: String,
}

impl Queued {
    /// A row of `DUE_WINDOW` (rowid, destination, due time) of priority `level`, its turn
    /// not yet known.
    fn of_window_row(row: &rusqlite::Row<'_>, level: i64, step: i64) -> rusqlite::Result<Self> {
        let due = row.get(2)?;
        Ok(Self {
            turn: 0,
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

/// The most destinations with queued jobs a claim walks, when it looks destination by
/// destination: about 1.5 ms of the writer's time (measured: 10,000 destinations with
/// scheduled retries behind a held backlog took 55-72 ms a claim). The next claim goes on
/// from where it stopped.
pub(super) const DESTINATIONS_WALKED: usize = 256;

/// Where a walk over the destinations with queued jobs starts, and how far it goes.
pub(super) enum Walk<'a> {
    /// At most [`DESTINATIONS_WALKED`], from the first in name order.
    First,
    /// At most [`DESTINATIONS_WALKED`], in name order after the one named (from the first
    /// after the last), and the name is moved on to the last one visited.
    From(&'a mut String),
}

/// Calls `f` with each destination that may have room: the few `rooms` names when only
/// they can (a caller may have queued jobs for thousands of others), else the destinations
/// that have queued jobs, as `walk` says. Answers whether the walk stopped short of the
/// last.
pub(super) fn each_destination(
    conn: &Connection,
    rooms: &Rooms,
    walk: Walk<'_>,
    mut f: impl FnMut(&str) -> rusqlite::Result<()>,
) -> rusqlite::Result<bool> {
    if let Some(only) = rooms.only() {
        for destination in only {
            f(destination)?;
        }
        return Ok(false);
    }
    let mut first = conn.prepare_cached(FIRST_DESTINATION)?;
    let mut step = conn.prepare_cached(NEXT_DESTINATION)?;
    let (mut next, mut left, mut cursor) = match walk {
        Walk::First => (
            first.query_row([], |row| row.get(0)).optional()?,
            DESTINATIONS_WALKED,
            None,
        ),
        Walk::From(cursor) => {
            let after: Option<String> = if cursor.is_empty() {
                None
            } else {
                step.query_row([&*cursor], |row| row.get(0)).optional()?
            };
            let after = match after {
                Some(after) => Some(after),
                None => first.query_row([], |row| row.get(0)).optional()?,
            };
            (after, DESTINATIONS_WALKED, Some(cursor))
        }
    };
    let start = next.clone();
    let mut wrapped = false;
    while let Some(destination) = next.take() {
        f(&destination)?;
        left -= 1;
        if let Some(cursor) = cursor.as_deref_mut() {
            cursor.clone_from(&destination);
        }
        if left == 0 {
            return Ok(true);
        }
        next = step
            .query_row([&destination], |row| row.get(0))
            .optional()?;
        if next.is_none() && !wrapped && cursor.is_some() {
            // Past the last: on from the first, up to where this walk started.
            wrapped = true;
            next = first.query_row([], |row| row.get(0)).optional()?;
        }
        if wrapped && next.is_some() && next >= start {
            break;
        }
    }
    Ok(false)
}

/// The latest due time a look for the next due job considers: parked requests (see
/// `parked_ms!`) are due when the request before them ends, not at their stored time, and a
/// key's parked backlog must not be walked.
const BEFORE_PARKED: i64 = crate::store::rows::PARKED_MS - 1;

/// How soon a look for the next due time that walked only some of the destinations says to
/// look again (ms): one past them may have a job due sooner, which a claim's walk, going on
/// from where the last stopped, will reach.
const LOOK_AGAIN_AFTER_WALK: i64 = 100;

/// What a claim reads and decides with: its owner, the queue's time, the priority step (ms),
/// the priority levels with queued jobs and the most jobs it takes.
struct Claim<'a> {
    conn: &'a Connection,
    owner: &'a str,
    now: i64,
    step: i64,
    levels: Vec<i64>,
    limit: u32,
}

impl Claim<'_> {
    /// Adds `destination`'s first claimable jobs of each level to `rows`, as many as its
    /// room (within the claim's limit).
    fn destination_rows(
        &self,
        destination: &str,
        room: &RoomLeft<'_>,
        rows: &mut Vec<Queued>,
    ) -> rusqlite::Result<()> {
        let left = room.left(destination).min(self.limit);
        if left == 0 {
            return Ok(());
        }
        let until = room.due_by(destination, self.now);
        let mut due_rows = self.conn.prepare_cached(DESTINATION_DUE)?;
        for &level in &self.levels {
            let found = due_rows.query_map(
                params![self.now, self.owner, destination, until, left, level],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            for row in found {
                let (rowid, due) = row?;
                rows.push(Queued {
                    turn: 0,
                    rank: rank(due, level, self.step),
                    due,
                    rowid,
                    destination: destination.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Of `rows`, the rowids the rooms admit, in turns (see [`in_turns`]); and whether any
    /// row was passed over.
    fn pick(&self, mut rows: Vec<Queued>, rooms: &Rooms) -> (Vec<i64>, bool) {
        let mut room = RoomLeft::new(rooms);
        in_turns(&mut rows, &room);
        let mut picked = Vec::new();
        let mut passed_over = false;
        for row in rows {
            if picked.len() == self.limit as usize {
                break;
            }
            if room.admits(&row.destination, row.due, self.now) {
                room.take(&row.destination);
                picked.push(row.rowid);
            } else {
                passed_over = true;
            }
        }
        (picked, passed_over)
    }
}

/// Puts `rows` in the claim's order: by turn (see `Rooms`), that of the row's place among its
/// destination's rows in rank order, then by rank.
fn in_turns(rows: &mut [Queued], room: &RoomLeft<'_>) {
    rows.sort_unstable_by(|a, b| {
        (&a.destination, a.rank, a.due, a.rowid).cmp(&(&b.destination, b.rank, b.due, b.rowid))
    });
    let mut turn = Turn::default();
    let mut place = 0;
    for i in 0..rows.len() {
        if i == 0 || rows[i].destination != rows[i - 1].destination {
            turn = room.turn(&rows[i].destination);
            place = 0;
        }
        rows[i].turn = turn.of(place);
        place += 1;
    }
    rows.sort_unstable();
}

/// Claims up to `limit` jobs due by `now` (the queue's time) in turns between destinations,
/// and within a turn in the claim's order (due time less what each job's priority is worth,
/// `priority_step` a level), taking of each destination at most its room and none of a held
/// one unless overdue.
///
/// First the first due rows in the claim's order (`claim_scan(limit)` of them): the common
/// case, a cost of the jobs claimed. When more are due than those, the proven destinations
/// missing from them are looked up too (`Rooms::due_turns`: a seek per level each), so that
/// their turn comes however long the others' backlogs. When those rows belong to
/// destinations without room (a full or held destination's backlog in front) and leave the
/// claim short, it looks destination by destination instead, so jobs behind that backlog
/// are found with a seek per destination and level rather than a walk over the backlog: at
/// most [`DESTINATIONS_WALKED`] of them, from `walk_from` on (which it moves on).
pub(super) fn claim(
    conn: &Connection,
    owner: &str,
    limit: u32,
    (lease, priority_step): (Duration, Duration),
    rooms: &Rooms,
    (now, walk_from): (i64, &mut String),
) -> rusqlite::Result<Vec<Job>> {
    let lease_until = now.saturating_add(millis_of(lease));
    if limit == 0 {
        return Ok(Vec::new());
    }
    let claim = Claim {
        conn,
        owner,
        now,
        step: millis_of(priority_step),
        levels: levels(conn)?,
        limit,
    };

    let (mut rows, full) = due_window(
        conn,
        owner,
        &claim.levels,
        claim.step,
        (now, now),
        claim_scan(limit),
    )?;
    if full {
        let room = RoomLeft::new(rooms);
        let seen: HashSet<String> = rows.iter().map(|row| row.destination.clone()).collect();
        for destination in rooms.due_turns() {
            if !seen.contains(destination) {
                claim.destination_rows(destination, &room, &mut rows)?;
            }
        }
    }
    let (mut picked, passed_over) = claim.pick(rows, rooms);

    if picked.len() < limit as usize && passed_over && full {
        // Each destination's first jobs of each level within its room, then those the
        // rooms and the shared budget admit together.
        let room = RoomLeft::new(rooms);
        let mut rows = Vec::new();
        each_destination(conn, rooms, Walk::From(walk_from), |destination| {
            claim.destination_rows(destination, &room, &mut rows)
        })?;
        picked = claim.pick(rows, rooms).0;
    }

    let mut claim_one = conn.prepare_cached(CLAIM_ONE)?;
    picked
        .iter()
        .map(|id| {
            // The token is made here: `randomblob()` in the update made SQLite keep a
            // statement journal for it (see migration 0016).
            let token = uuid::Uuid::new_v4().simple().to_string();
            claim_one.query_row(params![id, owner, lease_until, token], job_from_row)
        })
        .collect()
}

/// The earliest time (on the queue clock) a claim of `owner` could take a job: of the
/// destinations with room, the first due job it may claim (a held destination's once it is
/// overdue), whatever its priority. `None` with nothing queued. When it has to look
/// destination by destination and there are more than [`DESTINATIONS_WALKED`], it looks at
/// that many and answers no later than [`LOOK_AGAIN_AFTER_WALK`] from now.
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
        let (window, _) = due_window(
            conn,
            owner,
            &[level],
            0,
            (now, BEFORE_PARKED),
            NEXT_DUE_WINDOW,
        )?;
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
    let walked_some = each_destination(conn, rooms, Walk::First, |destination| {
        if room.left(destination) == 0 {
            return Ok(());
        }
        for &level in &levels {
            let due: Option<i64> = first_due
                .query_row(
                    params![now, owner, destination, BEFORE_PARKED, 1, level],
                    |row| row.get(1),
                )
                .optional()?;
            if let Some(due) = due {
                earliest_seen = earliest(earliest_seen, room.claimable_at(destination, due));
            }
        }
        Ok(())
    })?;
    if walked_some {
        earliest_seen = earliest(earliest_seen, now.saturating_add(LOOK_AGAIN_AFTER_WALK));
    }
    Ok(earliest_seen)
}
