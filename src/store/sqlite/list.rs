//! `GET /requests`: a page of a filter and its total.

use rusqlite::{Connection, params_from_iter};

use super::rows::record_from_row;
use crate::model::RequestList;
use crate::store::{Dialect, ListFilter, ListParam, list_conditions};

/// A page of `filter` and the total that match, on `conn`.
pub(super) fn list_on(conn: &Connection, filter: &ListFilter) -> rusqlite::Result<RequestList> {
    let (total_where, total_params) = list_conditions(filter, false, &DIALECT);
    let (page_sql, page_params) = list_page_sql(filter);
    let total: i64 = conn
        .prepare_cached(&format!(
            "SELECT COUNT(*) FROM requests WHERE {total_where}"
        ))?
        .query_row(
            params_from_iter(total_params.iter().map(sql_value)),
            |row| row.get(0),
        )?;
    let requests = conn
        .prepare_cached(&page_sql)?
        .query_map(
            params_from_iter(page_params.iter().map(sql_value)),
            record_from_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RequestList {
        total: u64::try_from(total).unwrap_or(0),
        requests,
    })
}

/// The statement of one page of `filter`, newest first, and its parameters.
pub(super) fn list_page_sql(filter: &ListFilter) -> (String, Vec<ListParam>) {
    let (page_where, mut params) = list_conditions(filter, true, &DIALECT);
    let n = params.len();
    let sql = format!(
        concat!(
            "SELECT ",
            record_columns!(),
            " FROM requests WHERE {} ORDER BY created_at DESC, id DESC LIMIT ?{} OFFSET ?{}"
        ),
        page_where,
        n + 1,
        n + 2
    );
    params.push(ListParam::Int(i64::from(filter.limit)));
    params.push(ListParam::Int(
        i64::try_from(filter.offset).unwrap_or(i64::MAX),
    ));
    (sql, params)
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
    bytewise_text: true,
};
