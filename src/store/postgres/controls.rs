//! Destination controls (see `store::destination_controls`): the operator's write, and the
//! read every instance's dispatcher makes each second.

use chrono::{DateTime, Utc};

use super::PgStore;
use crate::store::{
    ControlChange, Controlled, DestinationControl, MAX_CONTROLLED_DESTINATIONS, StoreResult,
};

pub(super) const CONTROLS: &str =
    "SELECT destination, paused_at, breaker_resets FROM destination_controls";

const CONTROL_OF: &str = "SELECT destination, paused_at, breaker_resets FROM destination_controls
     WHERE destination = $1";

/// A row without a pause (left by a breaker reset), deleted to make room: the oldest of
/// those unchanged for ten seconds (every instance has read its reset by then), else the
/// oldest.
const FORGET_UNPAUSED: &str = "DELETE FROM destination_controls WHERE destination IN (
         SELECT destination FROM destination_controls WHERE paused_at IS NULL
         ORDER BY changed_at >= now() - interval '10 seconds', changed_at LIMIT 1)";

const DELETE: &str = "DELETE FROM destination_controls WHERE destination = $1";

const UPSERT: &str =
    "INSERT INTO destination_controls (destination, paused_at, breaker_resets, changed_at)
     VALUES ($1, $2, $3, now())
     ON CONFLICT (destination) DO UPDATE SET paused_at = excluded.paused_at,
         breaker_resets = excluded.breaker_resets, changed_at = excluded.changed_at";

type ControlRow = (String, Option<DateTime<Utc>>, i64);

fn control_of((destination, paused_at, breaker_resets): ControlRow) -> DestinationControl {
    DestinationControl {
        destination,
        paused_at,
        breaker_resets,
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
        if next.is_nothing() {
            // Resumed and never reset: nothing left for any instance to learn.
            sqlx::query(DELETE)
                .bind(&next.destination)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            return Ok(Controlled::Done);
        }
        if stored.is_none() {
            let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM destination_controls")
                .fetch_one(&mut *tx)
                .await?;
            if rows >= MAX_CONTROLLED_DESTINATIONS
                && sqlx::query(FORGET_UNPAUSED)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 0
            {
                return Ok(Controlled::TooMany);
            }
        }
        sqlx::query(UPSERT)
            .bind(&next.destination)
            .bind(paused_at)
            .bind(next.breaker_resets)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Controlled::Done)
    }

    pub(super) async fn controls(&self) -> StoreResult<Vec<DestinationControl>> {
        Ok(sqlx::query_as::<_, ControlRow>(CONTROLS)
            .fetch_all(&self.relaxed)
            .await?
            .into_iter()
            .map(control_of)
            .collect())
    }
}
