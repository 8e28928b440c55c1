//! `GET /requests`: a page of a filter and its total.

use rusqlite::{Connection, params_from_iter};

use super::rows::record_from_row;
use crate::model::RequestList;
use crate::store::{Dialect, ListFilter, ListParam, Total, UnfinishedIndexes, count_sql, page_sql};

/// The kept count of the requests of a mode and a status (either may be `NULL`: any).
pub(super) const COUNT_BY_STATUS: &str = "SELECT COALESCE(sum(n), 0) FROM request_counts
     WHERE (?1 IS NULL OR mode = ?1) AND (?2 IS NULL OR status = ?2)";

/// A page of `filter` and the total that match, on `conn`.
pub(super) fn list_on(conn: &Connection, filter: &ListFilter) -> rusqlite::Result<RequestList> {
    // The page and its total from one snapshot, so that they agree.
    let snapshot = conn.unchecked_transaction()?;
    let (sql, params) = page_sql(filter, &DIALECT);
    let requests = snapshot
        .prepare_cached(&sql)?
        .query_map(
            params_from_iter(params.iter().map(sql_value)),
            record_from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let total = match filter.total_of_page(requests.len()) {
        Some(total) => total,
        None => total_of(&snapshot, filter)?,
    };
    snapshot.commit()?;
    Ok(RequestList {
        total: total.n,
        total_capped: total.capped,
        requests,
    })
}

/// How many requests match `filter`: the kept count for the original's filters, else a
/// count of matching rows that stops past the filter's count limit.
fn total_of(conn: &Connection, filter: &ListFilter) -> rusqlite::Result<Total> {
    if filter.counted_by_status() {
        let n: i64 = conn.prepare_cached(COUNT_BY_STATUS)?.query_row(
            (
                filter.mode.map(|m| m.as_str()),
                filter.status.map(|s| s.as_str()),
            ),
            |row| row.get(0),
        )?;
        return Ok(Total {
            n: u64::try_from(n).unwrap_or(0),
            capped: false,
        });
    }
    let (sql, params) = count_sql(filter, &DIALECT);
    let counted: i64 = conn
        .prepare_cached(&sql)?
        .query_row(params_from_iter(params.iter().map(sql_value)), |row| {
            row.get(0)
        })?;
    Ok(Total::of_count(counted, filter.count_limit))
}

/// A list parameter as SQLite stores it (times as Unix milliseconds).
pub(super) fn sql_value(param: &ListParam) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match param {
        ListParam::Text(text) => Value::Text(text.clone()),
        ListParam::Time(at) => Value::Integer(at.timestamp_millis()),
        ListParam::Int(n) => Value::Integer(*n),
    }
}

/// This backend's spelling of list conditions.
pub(super) const DIALECT: Dialect = Dialect {
    placeholder: |n| format!("?{n}"),
    like: "LIKE",
    indexes_hold_id: false,
    unfinished_apart: Some(UnfinishedIndexes {
        by_time: "requests_unfinished",
        by_host: "requests_callback_host_unfinished",
    }),
};
