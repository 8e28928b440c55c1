//! Claiming due jobs, renewing their leases, and finding when the next one is due, by the
//! rules of `store::due`.

use std::time::Duration;

use sqlx::Row;

use super::rows::job_from_row;
use super::{JOBS_CHANNEL, PgStore};
use crate::delivery::destinations::Rooms;
use crate::store::due::{NEXT_DUE_WINDOW, RoomLeft, earliest, next_due_in_levels};
use crate::store::{Job, Leases, StoreResult, claim_scan};

/// `dests (dest)`: each destination with queued jobs, one index seek each (a loose index scan
/// of `requests_destination_due`), ending in a NULL row. For a `WITH RECURSIVE`.
macro_rules! destinations_cte {
    () => {
        "dests AS (
             (SELECT destination AS dest FROM requests
              WHERE next_attempt_at IS NOT NULL AND destination IS NOT NULL
              ORDER BY destination LIMIT 1)
             UNION ALL
             SELECT (SELECT destination FROM requests
                     WHERE next_attempt_at IS NOT NULL AND destination > d.dest
                     ORDER BY destination LIMIT 1)
             FROM dests AS d WHERE d.dest IS NOT NULL)"
    };
}

/// `levels (level)`: the priority levels with queued jobs, highest first, one index seek each
/// (a loose index scan of `requests_due`, which priority leads), ending in a NULL row. For a
/// `WITH RECURSIVE`.
macro_rules! levels_cte {
    () => {
        "levels AS (
             (SELECT priority AS level FROM requests
              WHERE next_attempt_at IS NOT NULL ORDER BY priority DESC LIMIT 1)
             UNION ALL
             SELECT (SELECT priority FROM requests
                     WHERE next_attempt_at IS NOT NULL AND priority < l.level
                     ORDER BY priority DESC LIMIT 1)
             FROM levels AS l WHERE l.level IS NOT NULL)"
    };
}

/// A row's place in a claim's order: its due time less what its priority (`level`) is worth,
/// `$11` seconds a level (`store::due::rank`).
macro_rules! rank_at {
    ($level:literal) => {
        concat!(
            "next_attempt_at - make_interval(secs => ",
            $level,
            " * $11)"
        )
    };
}

/// `room_map (map, turns)`: the rooms of `$4` and the turns of `$12` (JSON objects keyed by
/// destination, see `Rooms::turns_json`) read once. Cast in place, `$4::jsonb`
/// is parsed again for every row a generic plan looks at (measured: with 1,000 paused
/// destinations in it, 86 deliveries/s instead of 2,800).
macro_rules! room_map_cte {
    () => {
        "room_map AS MATERIALIZED (SELECT $4::jsonb AS map, $12::jsonb AS turns)"
    };
}

/// Leases the rows of `picked (picked_id)` to owner `$1` for `$2` seconds, each with a token of
/// its own, and returns them (the job columns follow).
macro_rules! claim_picked {
    () => {
        "UPDATE requests AS r
         SET status = CASE r.status WHEN 'pending' THEN 'processing' ELSE r.status END,
             lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2),
             lease_token = gen_random_uuid()::text,
             unrecorded_claims = r.unrecorded_claims + 1
         FROM picked WHERE r.id = picked.picked_id
         RETURNING "
    };
}

/// A row the claim of owner `$1` may take: not leased, or its lease ran out (on the
/// database's clock) and it is another instance's. An instance never takes its own jobs
/// back: its heartbeat releases those it no longer works on, so a job it is still
/// delivering is never claimed by it again, whatever happens to the clock. Written as a
/// `CASE`, which the planner takes as a filter: from the equivalent `OR` it derives index
/// conditions on `lease_expires_at IS NULL` and `lease_owner IS NOT NULL`, and for a generic
/// plan may then read every due row through a bitmap and sort them, instead of walking
/// `requests_due` in order and stopping at the limit.
macro_rules! claimable_lease {
    ($owner:literal) => {
        concat!(
            "(CASE WHEN lease_expires_at IS NULL THEN true
                   ELSE lease_expires_at < now() AND lease_owner <> ",
            $owner,
            " END)"
        )
    };
}

/// For each `d.dest` and `l.level` of the query it joins: that destination's first jobs of that
/// level due by `$due_by` and claimable (and `$also`), locked, as many as its room (`$4`,
/// else `$default_room`) within the claim's limit (`$3`).
macro_rules! destination_due_locked {
    ($due_by:literal, $also:literal, $default_room:literal) => {
        concat!(
            "CROSS JOIN LATERAL (
                 SELECT id, next_attempt_at, ",
            rank_at!("l.level"),
            " AS rank_at FROM requests
                 WHERE destination = d.dest AND priority = l.level
                   AND next_attempt_at IS NOT NULL AND next_attempt_at <= ",
            $due_by,
            "
                   AND ",
            claimable_lease!("$1"),
            " AND NOT ",
            behind_earlier!(),
            $also,
            "
                 ORDER BY next_attempt_at
                 LIMIT LEAST(COALESCE(((SELECT map FROM room_map) ->> d.dest)::int, ",
            $default_room,
            "), $3)
                 FOR UPDATE SKIP LOCKED)"
        )
    };
}

/// `dests (dest)`: the destinations of `$13`, for a claim that may only take jobs of a few
/// destinations (see `Rooms::only`).
macro_rules! listed_destinations_cte {
    () => {
        "dests AS (SELECT unnest($13::text[]) AS dest)"
    };
}

/// `candidates (id, next_attempt_at, rank_at, dest, turn)`: of `$rows` (the first four
/// columns), each destination's first in the claim's order, as many as its room (`$4`, else
/// `$default`), each in its turn (`Turn::of` its place; 10 is `turns::FIRST_JOB_MS`, the
/// time per job of a destination not listed).
macro_rules! within_rooms {
    ($rows:literal, $default:literal) => {
        concat!(
            "candidates AS MATERIALIZED (
                 SELECT id, next_attempt_at, rank_at, dest,
                        COALESCE(((SELECT turns FROM room_map) -> dest ->> 0)::bigint, 0)
                            + (place - 1)
                              * COALESCE(((SELECT turns FROM room_map) -> dest ->> 1)::bigint, 10)
                            AS turn
                 FROM (
                     SELECT id, next_attempt_at, rank_at, dest,
                            ROW_NUMBER() OVER (PARTITION BY dest
                                               ORDER BY rank_at, next_attempt_at, id) AS place,
                            COALESCE(((SELECT map FROM room_map) ->> dest)::int, ",
            $default,
            ") AS room
                     FROM ",
            $rows,
            ") AS ranked
                 WHERE place <= room)"
        )
    };
}

/// Of `candidates`, already within each destination's room, those the shared budget admits
/// (`$10` in all of the destinations not reserved in `$9`), in the claim's order (turns
/// first): a running count of the unreserved ones.
macro_rules! within_shared_budget {
    () => {
        "SELECT id, next_attempt_at, rank_at, turn FROM (
             SELECT id, next_attempt_at, rank_at, turn, dest = ANY($9) AS reserved,
                    count(*) FILTER (WHERE NOT (dest = ANY($9)))
                        OVER (ORDER BY turn, rank_at, next_attempt_at, id) AS shared_rank
             FROM candidates) AS budgeted
         WHERE reserved OR shared_rank <= $10"
    };
}

/// Due jobs claimed destination by destination (a seek per level present, for each
/// destination of `$dests`), within each one's room and the shared budget.
macro_rules! claim_per_destination {
    ($dests:expr) => {
        concat!(
            "WITH RECURSIVE ",
            $dests,
            ", ",
            levels_cte!(),
            ", ",
            room_map_cte!(),
            ",
             locked AS MATERIALIZED (
                 SELECT c.id, c.next_attempt_at, c.rank_at, d.dest FROM dests AS d
                 CROSS JOIN levels AS l ",
            destination_due_locked!(
                "CASE WHEN d.dest = ANY($5) THEN now() - make_interval(secs => $6)
                      ELSE now() END",
                " AND NOT (id = ANY($8))",
                "$7"
            ),
            " AS c
                 WHERE d.dest IS NOT NULL AND l.level IS NOT NULL), ",
            within_rooms!("locked", "$7"),
            ",
             picked AS MATERIALIZED (
                 SELECT id AS picked_id FROM (",
            within_shared_budget!(),
            ") AS admitted ORDER BY turn, rank_at, next_attempt_at, id LIMIT $3)
             ",
            claim_picked!(),
            job_columns!()
        )
    };
}

/// Due jobs claimed destination by destination, of every destination with queued jobs.
pub(super) const CLAIM_PER_DESTINATION: &str = claim_per_destination!(destinations_cte!());

/// Due jobs claimed destination by destination, of the destinations listed in `$13` only.
pub(super) const CLAIM_PER_LISTED_DESTINATION: &str =
    claim_per_destination!(listed_destinations_cte!());

/// Due jobs claimed from the first `$5` due rows in the claim's order (the window), within
/// each destination's room and the shared budget; and whether the window was full (as many
/// due rows as it can hold: the claim may have left some out).
///
/// The window is found first, without locks: its last place in the claim's order is the
/// horizon (each priority level's first `$5` due rows, merged). Then, of each level's rows
/// up to the horizon, only those the claim could take are locked: not a held destination's
/// (unless overdue) nor a destination's without room. A held destination's backlog at the
/// head of the queue is walked, at most a window of it, but never locked, so a claim costs
/// the same with a hung receiver's thousands of jobs in front as without them. When the
/// window is full, the destinations of `$13` missing from it (proven ones with room,
/// `Rooms::due_turns`) are looked up on their own, a seek per level each, so that their turn
/// comes however long the others' backlogs. All are taken in turns (`$12`, see `Rooms`).
pub(super) const CLAIM_WINDOW: &str = concat!(
    "WITH RECURSIVE ",
    levels_cte!(),
    ", ",
    room_map_cte!(),
    ",
     first_due AS MATERIALIZED (
         SELECT f.rank_at FROM levels AS l
         CROSS JOIN LATERAL (
             SELECT ",
    rank_at!("l.level"),
    " AS rank_at FROM requests
             WHERE priority = l.level AND next_attempt_at IS NOT NULL
               AND next_attempt_at <= now() AND ",
    claimable_lease!("$1"),
    " AND NOT ",
    behind_earlier!(),
    "
             ORDER BY next_attempt_at LIMIT $5) AS f
         WHERE l.level IS NOT NULL
         ORDER BY f.rank_at LIMIT $5),
     horizon AS MATERIALIZED (
         SELECT max(rank_at) AS at, count(*) AS due_rows FROM first_due),
     scanned AS MATERIALIZED (
         SELECT s.id, s.next_attempt_at, s.rank_at, s.dest FROM levels AS l
         CROSS JOIN LATERAL (
             SELECT id, next_attempt_at, ",
    rank_at!("l.level"),
    " AS rank_at, COALESCE(destination, '') AS dest
             FROM requests
             WHERE priority = l.level AND next_attempt_at IS NOT NULL
               AND next_attempt_at <= LEAST(now(), (SELECT at FROM horizon)
                                                   + make_interval(secs => l.level * $11))
               AND ",
    claimable_lease!("$1"),
    " AND NOT ",
    behind_earlier!(),
    "
               AND (NOT (COALESCE(destination, '') = ANY($7))
                    OR next_attempt_at <= now() - make_interval(secs => $8))
               AND COALESCE(((SELECT map FROM room_map) ->> COALESCE(destination, ''))::int, $6)
                   > 0
             ORDER BY next_attempt_at
             LIMIT $5
             FOR UPDATE SKIP LOCKED) AS s
         WHERE l.level IS NOT NULL),
     heads AS MATERIALIZED (
         SELECT h.id, h.next_attempt_at, h.rank_at, d.dest
         FROM unnest($13::text[]) AS d(dest)
         CROSS JOIN levels AS l ",
    destination_due_locked!("now()", "", "$6"),
    " AS h
         WHERE l.level IS NOT NULL AND (SELECT due_rows >= $5 FROM horizon)
           AND NOT EXISTS (SELECT 1 FROM scanned WHERE scanned.dest = d.dest)), ",
    within_rooms!(
        "(SELECT id, next_attempt_at, rank_at, dest FROM scanned
          UNION ALL SELECT id, next_attempt_at, rank_at, dest FROM heads) AS window_rows",
        "$6"
    ),
    ",
     picked AS MATERIALIZED (
         SELECT id AS picked_id FROM (",
    within_shared_budget!(),
    ") AS admitted ORDER BY turn, rank_at, next_attempt_at, id LIMIT $3),
     claimed AS (",
    claim_picked!(),
    job_columns!(),
    ")
     SELECT (SELECT due_rows >= $5 FROM horizon) AS window_full, claimed.*
     FROM (SELECT 1) AS one LEFT JOIN claimed ON true"
);

/// An owner's (`$1`) leases named by their tokens (`$3`), renewed for `$2` seconds; its other
/// leases that ran out, released (their worker gave up without an outcome). A row a
/// group-committed write has locked is skipped, not waited for: that write is ending the
/// claim anyway, and a heartbeat that waited could deadlock with a batch locking the same
/// rows in another order. A skipped lease is renewed on the next beat, a third of the lease
/// later. Also answers the tokens of `$3` that no row holds any more (a cancel ended the
/// claim, or another claim took the job over): a locked row still holds its token.
pub(super) const RENEW_LEASES: &str = "WITH renewed AS (
         UPDATE requests SET lease_expires_at = now() + make_interval(secs => $2)
         WHERE id IN (SELECT id FROM requests
                      WHERE lease_owner = $1 AND lease_token = ANY($3)
                      FOR UPDATE SKIP LOCKED)
         RETURNING 1),
     released AS (
         UPDATE requests SET lease_owner = NULL, lease_expires_at = NULL, lease_token = NULL
         WHERE id IN (SELECT id FROM requests
                      WHERE lease_owner = $1 AND NOT (lease_token = ANY($3))
                        AND lease_expires_at < now()
                      FOR UPDATE SKIP LOCKED)
         RETURNING 1)
     SELECT (SELECT count(*) FROM renewed), (SELECT count(*) FROM released),
            ARRAY(SELECT t FROM unnest($3::text[]) AS t
                  WHERE NOT EXISTS (SELECT 1 FROM requests
                                    WHERE lease_owner = $1 AND lease_token = t))";

/// Each priority level's first due rows not leased, in due order, with the database's clock.
pub(super) const NEXT_DUE_WINDOW_ROWS: &str = concat!(
    "WITH RECURSIVE ",
    levels_cte!(),
    "
     SELECT l.level, f.dest, f.due, (extract(epoch FROM now()) * 1000)::bigint AS db_now
     FROM levels AS l
     CROSS JOIN LATERAL (
         SELECT COALESCE(destination, '') AS dest,
                (extract(epoch FROM next_attempt_at) * 1000)::bigint AS due
         FROM requests
         WHERE priority = l.level AND next_attempt_at < ",
    parked_at!(),
    " AND ",
    claimable_lease!("$2"),
    " AND NOT ",
    behind_earlier!(),
    " ORDER BY next_attempt_at LIMIT $1) AS f
     WHERE l.level IS NOT NULL
     ORDER BY l.level DESC, f.due"
);

/// Each destination's first due job not leased, whatever its priority (a seek per level
/// present), of every destination of `$dests` not in `$1`.
macro_rules! first_due_per_destination {
    ($dests:expr) => {
        concat!(
            "WITH RECURSIVE ",
            $dests,
            ", ",
            levels_cte!(),
            "
             SELECT d.dest,
                    (SELECT min(f.due) FROM levels AS l
                     CROSS JOIN LATERAL (
                         SELECT (extract(epoch FROM next_attempt_at) * 1000)::bigint AS due
                         FROM requests
                         WHERE destination = d.dest AND priority = l.level
                           AND next_attempt_at < ",
            parked_at!(),
            " AND ",
            claimable_lease!("$2"),
            " AND NOT ",
            behind_earlier!(),
            "
                         ORDER BY next_attempt_at LIMIT 1) AS f
                     WHERE l.level IS NOT NULL) AS due
             FROM dests AS d WHERE d.dest IS NOT NULL AND NOT (d.dest = ANY($1))"
        )
    };
}

/// Each destination's first due job not leased, of every destination with queued jobs.
pub(super) const FIRST_DUE_PER_DESTINATION: &str = first_due_per_destination!(destinations_cte!());

/// Each destination's first due job not leased, of the destinations listed in `$3` only.
pub(super) const FIRST_DUE_PER_LISTED_DESTINATION: &str =
    first_due_per_destination!("dests AS (SELECT unnest($3::text[]) AS dest)");

impl PgStore {
    /// Claims as [`claim_due`](Self::claim_due) does, but looking at each destination's due
    /// jobs on their own (a seek per destination, through `requests_destination_due`), past
    /// `already` (this claim's first statement's jobs: their lease may have run out by this
    /// statement's clock if it is very short, and a claim must not hand a job out twice).
    async fn claim_per_destination(
        &self,
        owner: &str,
        limit: u32,
        (lease, priority_step): (Duration, Duration),
        rooms: &Rooms,
        already: &[&str],
    ) -> StoreResult<Vec<Job>> {
        // When only a few destinations can have room, those are looked at, not every
        // destination with queued jobs (a caller may have queued jobs for thousands).
        let only = rooms.only();
        let statement = if only.is_some() {
            CLAIM_PER_LISTED_DESTINATION
        } else {
            CLAIM_PER_DESTINATION
        };
        let query = sqlx::query(statement)
            .bind(owner)
            .bind(lease.as_secs_f64())
            .bind(i64::from(limit))
            .bind(rooms.to_json())
            .bind(&rooms.held)
            .bind(rooms.overdue.as_secs_f64())
            .bind(i64::from(rooms.default))
            .bind(already)
            .bind(&rooms.reserved)
            .bind(i64::from(rooms.shared))
            .bind(priority_step.as_secs_f64())
            .bind(rooms.turns_json());
        let query = match only {
            Some(only) => query.bind(only),
            None => query,
        };
        let rows = query.fetch_all(&self.relaxed).await?;
        Ok(rows
            .iter()
            .map(job_from_row)
            .collect::<Result<Vec<_>, _>>()?)
    }

    pub(super) async fn claim(
        &self,
        owner: &str,
        limit: u32,
        lease: Duration,
        priority_step: Duration,
        rooms: &Rooms,
    ) -> StoreResult<Vec<Job>> {
        // Each step is a materialised CTE, evaluated once: with `WHERE id IN (SELECT … LIMIT n
        // FOR UPDATE SKIP LOCKED)` the planner may run the subquery more than once and claim
        // more than n rows. (Locking and ranking are separate steps: PostgreSQL does not allow
        // FOR UPDATE with window functions. Rows locked but not picked are unlocked at
        // commit.) The outer select always yields a row, so whether the window was full is
        // known even when nothing was claimed.
        let scan = claim_scan(limit);
        let rows = sqlx::query(CLAIM_WINDOW)
            .bind(owner)
            .bind(lease.as_secs_f64())
            .bind(i64::from(limit))
            .bind(rooms.to_json())
            .bind(i64::from(scan))
            .bind(i64::from(rooms.default))
            .bind(&rooms.held)
            .bind(rooms.overdue.as_secs_f64())
            .bind(&rooms.reserved)
            .bind(i64::from(rooms.shared))
            .bind(priority_step.as_secs_f64())
            .bind(rooms.turns_json())
            .bind(rooms.due_turns())
            .fetch_all(&self.relaxed)
            .await?;
        let window_full = match rows.first() {
            Some(row) => row
                .try_get::<Option<bool>, _>("window_full")?
                .unwrap_or(false),
            None => false,
        };
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<String>, _>("id")?.is_some() {
                jobs.push(job_from_row(row)?);
            }
        }
        let short = jobs.len() < limit as usize;
        if short && window_full {
            // The window was full and left the claim short: destinations without room (a
            // full or held destination's backlog) in front. Look destination by destination.
            let mut rest = rooms.clone();
            for job in &jobs {
                rest.take_one(&job.destination);
            }
            let claimed: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
            let more = self
                .claim_per_destination(
                    owner,
                    limit - jobs.len() as u32,
                    (lease, priority_step),
                    &rest,
                    &claimed,
                )
                .await?;
            jobs.extend(more);
        }
        Ok(jobs)
    }

    pub(super) async fn renew_leases(
        &self,
        owner: &str,
        tokens: &[String],
        lease: Duration,
    ) -> StoreResult<Leases> {
        let (renewed, released, lost): (i64, i64, Vec<String>) = sqlx::query_as(RENEW_LEASES)
            .bind(owner)
            .bind(lease.as_secs_f64())
            .bind(tokens)
            .fetch_one(&self.relaxed)
            .await?;
        if released > 0 {
            // Due now, for any instance: wake them (this one included, through LISTEN).
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(JOBS_CHANNEL)
                .execute(&self.relaxed)
                .await?;
        }
        Ok(Leases {
            renewed: u64::try_from(renewed).unwrap_or(0),
            released: u64::try_from(released).unwrap_or(0),
            lost,
        })
    }

    pub(super) async fn next_due(
        &self,
        owner: &str,
        rooms: &Rooms,
    ) -> StoreResult<Option<Duration>> {
        // Due times are compared with the database's clock, in milliseconds; the answer is
        // how long from the database's now.
        let window = sqlx::query(NEXT_DUE_WINDOW_ROWS)
            .bind(i64::from(NEXT_DUE_WINDOW))
            .bind(owner)
            .fetch_all(&self.pool)
            .await?;
        let mut db_now = None;
        let mut levels: Vec<(i16, Vec<(String, i64)>)> = Vec::new();
        for row in &window {
            db_now = Some(row.try_get::<i64, _>("db_now")?);
            let level: i16 = row.try_get("level")?;
            let due = (row.try_get("dest")?, row.try_get("due")?);
            match levels.last_mut() {
                Some((last, rows)) if *last == level => rows.push(due),
                _ => levels.push((level, vec![due])),
            }
        }
        let room = RoomLeft::new(rooms);
        // Each level on its own: within one, due order is the window's order.
        let windows = levels.iter().map(|(_, rows)| rows.as_slice());
        let answered = next_due_in_levels(windows, NEXT_DUE_WINDOW, &room);
        let mut earliest_due = answered.unwrap_or_else(|so_far| so_far);
        if answered.is_err() {
            let closed: Vec<&str> = rooms.closed().collect();
            let firsts = if let Some(only) = rooms.only() {
                sqlx::query(FIRST_DUE_PER_LISTED_DESTINATION)
                    .bind(closed)
                    .bind(owner)
                    .bind(only)
                    .fetch_all(&self.pool)
                    .await?
            } else {
                sqlx::query(FIRST_DUE_PER_DESTINATION)
                    .bind(closed)
                    .bind(owner)
                    .fetch_all(&self.pool)
                    .await?
            };
            for row in &firsts {
                let destination: String = row.try_get("dest")?;
                if let Some(due) = row.try_get::<Option<i64>, _>("due")? {
                    earliest_due = earliest(earliest_due, room.claimable_at(&destination, due));
                }
            }
        }
        Ok(earliest_due.map(|due| {
            let wait = due.saturating_sub(db_now.unwrap_or(due));
            Duration::from_millis(u64::try_from(wait).unwrap_or(0))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::destinations::Turn;

    /// The statements write the time per job of a destination not listed as a literal.
    #[test]
    fn a_destination_not_listed_takes_turns_as_a_new_one() {
        let unlisted = format!("->> 1)::bigint, {})", Turn::default().per_job);
        for statement in [
            CLAIM_WINDOW,
            CLAIM_PER_DESTINATION,
            CLAIM_PER_LISTED_DESTINATION,
        ] {
            assert!(statement.contains(&unlisted), "{statement}");
        }
    }
}
