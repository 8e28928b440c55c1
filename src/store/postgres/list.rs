//! `GET /requests`: a page of a filter and its total.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::rows::record_from_row;
use super::{PgStore, READ_SNAPSHOT};
use crate::model::RequestList;
use crate::store::{
    Dialect, ListFilter, ListParam, StoreError, StoreResult, Total, count_sql, page_sql,
};

/// The kept count of the requests of a mode and a status (either may be `NULL`: any).
pub(super) const COUNT_BY_STATUS: &str = "SELECT COALESCE(sum(n), 0)::bigint FROM request_counts
     WHERE ($1::text IS NULL OR mode = $1) AND ($2::text IS NULL OR status = $2)";

/// This backend's spelling of list conditions.
pub(super) const DIALECT: Dialect = Dialect {
    placeholder: |n| format!("${n}"),
    like: "ILIKE",
    indexes_hold_id: true,
    unfinished_apart: None,
};

/// Something that takes bind parameters: a query, or a scalar query.
pub(super) trait Bind: Sized {
    fn bind_text(self, text: String) -> Self;
    fn bind_time(self, at: DateTime<Utc>) -> Self;
    fn bind_int(self, n: i64) -> Self;
}

impl<'q> Bind for sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn bind_text(self, text: String) -> Self {
        self.bind(text)
    }
    fn bind_time(self, at: DateTime<Utc>) -> Self {
        self.bind(at)
    }
    fn bind_int(self, n: i64) -> Self {
        self.bind(n)
    }
}

impl<'q, O> Bind for sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    fn bind_text(self, text: String) -> Self {
        self.bind(text)
    }
    fn bind_time(self, at: DateTime<Utc>) -> Self {
        self.bind(at)
    }
    fn bind_int(self, n: i64) -> Self {
        self.bind(n)
    }
}

/// Binds a list statement's parameters, in order.
pub(super) fn bind_list_params<Q: Bind>(query: Q, params: Vec<ListParam>) -> Q {
    params.into_iter().fold(query, |query, param| match param {
        ListParam::Text(text) => query.bind_text(text),
        ListParam::Time(at) => query.bind_time(at),
        ListParam::Int(n) => query.bind_int(n),
    })
}

// List statements are never prepared for reuse (`persistent(false)`): PostgreSQL then plans
// each with its values. A statement prepared once and run again and again gets a generic plan
// after five runs, one that guesses any status or host matches a large part of the table:
// for a status few requests have, it walks the creation-time index and checks every row of
// the history. Planned with the value, it takes the status's index when the status is rare
// and walks by time when it is common, and planning costs a fraction of a millisecond.
/// How many requests match `filter`: the kept count for the original's filters, else a
/// count of matching rows that stops past the filter's count limit.
async fn total_of(conn: &mut PgConnection, filter: &ListFilter) -> StoreResult<Total> {
    if filter.counted_by_status() {
        let n: i64 = sqlx::query_scalar(COUNT_BY_STATUS)
            .bind(filter.mode.map(|m| m.as_str()))
            .bind(filter.status.map(|s| s.as_str()))
            .fetch_one(conn)
            .await?;
        return Ok(Total {
            n: u64::try_from(n).unwrap_or(0),
            capped: false,
        });
    }
    let (sql, params) = count_sql(filter, &DIALECT);
    let count = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).persistent(false);
    let counted: i64 = bind_list_params(count, params).fetch_one(conn).await?;
    Ok(Total::of_count(counted, filter.count_limit))
}

impl PgStore {
    /// A page of `filter` and the total that match.
    pub(super) async fn list_page(&self, filter: ListFilter) -> StoreResult<RequestList> {
        let _slot = self
            .list_slots
            .acquire()
            .await
            .map_err(|_| StoreError::WriterGone)?;
        // The page and its total from one snapshot, so that they agree.
        let mut tx = self.pool.begin_with(READ_SNAPSHOT).await?;
        let (sql, params) = page_sql(&filter, &DIALECT);
        let page = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        let rows = bind_list_params(page, params).fetch_all(&mut *tx).await?;
        let total = match filter.total_of_page(rows.len()) {
            Some(total) => total,
            None => total_of(&mut tx, &filter).await?,
        };
        tx.commit().await?;
        Ok(RequestList {
            total: total.n,
            total_capped: total.capped,
            requests: rows
                .iter()
                .map(record_from_row)
                .collect::<Result<Vec<_>, _>>()?,
        })
    }
}
