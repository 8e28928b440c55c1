//! Destination controls (see `store::destination_controls`): the operator's write (and a
//! receiver's hold), announced to every instance, and the read every instance's dispatcher
//! makes each second, which also counts the instances sharing the database.

use chrono::{DateTime, Utc};

use super::{CONTROLS_CHANGED, JOBS_CHANNEL, PgStore};
use crate::delivery::destinations::{OwnRate, RateLimit};
use crate::store::{
    ControlChange, Controlled, ControlsRead, DestinationControl, MAX_CONTROLLED_DESTINATIONS,
    StoreResult,
};

pub(super) const CONTROLS: &str = "SELECT destination, paused_at, breaker_resets, rate_set,
         rate_per_second, rate_burst, held_until
     FROM destination_controls";

const CONTROL_OF: &str = "SELECT destination, paused_at, breaker_resets, rate_set,
         rate_per_second, rate_burst, held_until
     FROM destination_controls WHERE destination = $1";

/// An instance that read the controls this recently shares a destination's rate limit (it
/// reads them every second: a few missed reads do not take it out).
const LIVE_WITHIN_SECONDS: f64 = 5.0;

/// Marks `$1` as seen now, forgets instances gone for a minute, and counts the others seen
/// within `$2` seconds (the statement's snapshot does not see its own upsert).
pub(super) const SEEN: &str = "WITH seen AS (
         INSERT INTO instances (owner, seen_at) VALUES ($1, now())
         ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at),
     gone AS (DELETE FROM instances WHERE seen_at < now() - interval '1 minute'
                  AND (alive_at IS NULL OR alive_at < now() - interval '1 minute'))
     SELECT count(*) FROM instances
     WHERE owner <> $1 AND seen_at >= now() - make_interval(secs => $2)";

/// A row with nothing lasting (no pause, no limit of its own: left by a breaker reset or a
/// receiver's hold that is over), deleted to make room: the oldest of those unchanged for ten
/// seconds (every instance has read its reset by then), else the oldest.
const FORGET_PASSING: &str = "DELETE FROM destination_controls WHERE destination IN (
         SELECT destination FROM destination_controls
         WHERE paused_at IS NULL AND NOT rate_set AND (held_until IS NULL OR held_until <= now())
         ORDER BY changed_at >= now() - interval '10 seconds', changed_at LIMIT 1)";

/// When the rows left are all paused, limited or held: the receiver's hold that ends first,
/// deleted to make room for an operator's pause or limit (the hold still applies on the
/// instance that got it). Without it, receivers answering `Retry-After` on 1,000
/// destinations would lock the operator out.
const FORGET_HOLD: &str = "DELETE FROM destination_controls WHERE destination IN (
         SELECT destination FROM destination_controls
         WHERE paused_at IS NULL AND NOT rate_set ORDER BY held_until LIMIT 1)";

const DELETE: &str = "DELETE FROM destination_controls WHERE destination = $1";

const UPSERT: &str = "INSERT INTO destination_controls (destination, paused_at, breaker_resets,
         rate_set, rate_per_second, rate_burst, held_until, changed_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, now())
     ON CONFLICT (destination) DO UPDATE SET paused_at = excluded.paused_at,
         breaker_resets = excluded.breaker_resets, rate_set = excluded.rate_set,
         rate_per_second = excluded.rate_per_second, rate_burst = excluded.rate_burst,
         held_until = excluded.held_until, changed_at = excluded.changed_at";

type ControlRow = (
    String,
    Option<DateTime<Utc>>,
    i64,
    bool,
    Option<f64>,
    Option<i32>,
    Option<DateTime<Utc>>,
);

fn control_of(
    (destination, paused_at, breaker_resets, rate_set, per_second, burst, held_until): ControlRow,
) -> DestinationControl {
    let rate = match (
        rate_set,
        per_second,
        burst.and_then(|b| u32::try_from(b).ok()),
    ) {
        (false, _, _) => None,
        (true, Some(per_second), Some(burst)) => {
            Some(OwnRate::Limited(RateLimit { per_second, burst }))
        }
        (true, _, _) => Some(OwnRate::Unlimited),
    };
    DestinationControl {
        destination,
        paused_at,
        breaker_resets,
        rate,
        held_until,
    }
}

impl PgStore {
    pub(super) async fn control(
        &self,
        destination: &str,
        change: ControlChange,
    ) -> StoreResult<Controlled> {
        let mut tx = self.pool.begin().await?;
        // Operators' changes take turns (they are rare), so that two instances adding rows
        // at once cannot both pass the bound, nor two resets count as one; the dispatchers'
        // reads are not held up.
        sqlx::query("LOCK TABLE destination_controls IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let stored: Option<DestinationControl> = sqlx::query_as::<_, ControlRow>(CONTROL_OF)
            .bind(destination)
            .fetch_optional(&mut *tx)
            .await?
            .map(control_of);
        let Some(next) = change.apply(stored.as_ref(), destination, Utc::now()) else {
            return Ok(Controlled::Done);
        };
        // The database's clock for the pause's time, as for every time instances compare.
        let paused_at = if change == ControlChange::Pause {
            Some(
                sqlx::query_scalar::<_, DateTime<Utc>>("SELECT now()")
                    .fetch_one(&mut *tx)
                    .await?,
            )
        } else {
            next.paused_at
        };
        if next.is_nothing(Utc::now()) {
            // Nothing left for any instance to learn.
            sqlx::query(DELETE)
                .bind(&next.destination)
                .execute(&mut *tx)
                .await?;
            announce(&mut tx).await?;
            tx.commit().await?;
            return Ok(Controlled::Done);
        }
        if stored.is_none() {
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM destination_controls")
                .fetch_one(&mut *tx)
                .await?;
            if rows >= MAX_CONTROLLED_DESTINATIONS
                && sqlx::query(FORGET_PASSING)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 0
                && !(change.lasts()
                    && sqlx::query(FORGET_HOLD)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        > 0)
            {
                // A receiver's hold still applies on the instance that got it.
                return Ok(if change.lasts() {
                    Controlled::TooMany
                } else {
                    Controlled::Done
                });
            }
        }
        let limit = next.rate.and_then(OwnRate::limit);
        sqlx::query(UPSERT)
            .bind(&next.destination)
            .bind(paused_at)
            .bind(next.breaker_resets)
            .bind(next.rate.is_some())
            .bind(limit.map(|l| l.per_second))
            .bind(limit.map(|l| i32::try_from(l.burst).unwrap_or(i32::MAX)))
            .bind(next.held_until)
            .execute(&mut *tx)
            .await?;
        announce(&mut tx).await?;
        tx.commit().await?;
        Ok(Controlled::Done)
    }

    pub(super) async fn controls(&self, owner: &str) -> StoreResult<ControlsRead> {
        let others: i64 = sqlx::query_scalar(SEEN)
            .bind(owner)
            .bind(LIVE_WITHIN_SECONDS)
            .fetch_one(&self.relaxed)
            .await?;
        let controls = sqlx::query_as::<_, ControlRow>(CONTROLS)
            .fetch_all(&self.relaxed)
            .await?
            .into_iter()
            .map(control_of)
            .collect();
        Ok(ControlsRead {
            controls,
            instances: u32::try_from(others).unwrap_or(u32::MAX).saturating_add(1),
        })
    }
}

/// Tells every instance, at commit, to read the controls again: a pause or a receiver's hold
/// applies everywhere within a round trip, not at the next second's read.
async fn announce(tx: &mut sqlx::PgConnection) -> StoreResult<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(JOBS_CHANNEL)
        .bind(CONTROLS_CHANGED)
        .execute(tx)
        .await?;
    Ok(())
}
