//! `GET /requests` below HTTP: its filters, and the `WHERE` clause both backends build from
//! them.

use chrono::{DateTime, Utc};

use super::Position;
use crate::model::{Mode, Status};

/// Filters of `GET /requests`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub mode: Option<Mode>,
    pub status: Option<Status>,
    /// Created at or after this instant.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before this instant.
    pub created_to: Option<DateTime<Utc>>,
    /// The callback's destination host, lower-case: `host` (any scheme and port) or
    /// `host:port` (any scheme).
    pub callback_host: Option<String>,
    /// Ids that start with this, lower-case.
    pub id_prefix: Option<String>,
    /// Keyset paging: only requests after this one in the newest-first order. Unlike
    /// `offset`, page N costs what page 1 costs, however deep it is.
    pub before: Option<Position>,
    pub limit: u32,
    pub offset: u64,
}

impl ListFilter {
    /// The `LIKE` pattern (escape character `\`) that matches `callback_host` in the
    /// `destination` column (`scheme://host:port`).
    fn destination_pattern(&self) -> Option<String> {
        let host = self.callback_host.as_deref()?;
        let escaped = host
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        // An IPv6 host is bracketed, so a colon after `]`, or any colon without brackets, is
        // a port.
        let has_port = match host.rfind(']') {
            Some(end) => host[end..].contains(':'),
            None => host.contains(':'),
        };
        Some(if has_port {
            format!("%://{escaped}")
        } else {
            format!("%://{escaped}:%")
        })
    }
}

/// A parameter of a list statement, in the order of its placeholders.
pub(crate) enum ListParam {
    Text(String),
    Time(DateTime<Utc>),
    /// Page size and offset, which the backends add after the conditions.
    Int(i64),
}

/// How a backend's `WHERE` clause spells what differs between them.
pub(crate) struct Dialect {
    /// Spells the n-th parameter (1-based).
    pub placeholder: fn(usize) -> String,
    /// Text compares byte by byte (SQLite's `BINARY`), so an id prefix can be a range on the
    /// primary key's index; under a locale's collation (PostgreSQL's default) it cannot.
    pub bytewise_text: bool,
}

/// The `WHERE` clause of a list statement for `filter` and its parameters, with only the
/// filters in use (so each combination is its own statement, and the planner sees plain
/// `status = ?` and `created_at <= ?` it can take to an index, never `? IS NULL OR …`).
/// The SQL text is built from fixed fragments only; every value is a parameter.
/// `with_cursor` adds the keyset condition of `before` (the total of a list leaves it out).
pub(crate) fn list_conditions(
    filter: &ListFilter,
    with_cursor: bool,
    dialect: &Dialect,
) -> (String, Vec<ListParam>) {
    let placeholder = dialect.placeholder;
    let mut conditions: Vec<String> = Vec::new();
    let mut params = Vec::new();
    let next = |value: ListParam, params: &mut Vec<ListParam>| {
        params.push(value);
        placeholder(params.len())
    };
    if let Some(mode) = filter.mode {
        let p = next(ListParam::Text(mode.as_str().into()), &mut params);
        conditions.push(format!("mode = {p}"));
    }
    if let Some(status) = filter.status {
        let p = next(ListParam::Text(status.as_str().into()), &mut params);
        conditions.push(format!("status = {p}"));
    }
    if let Some(from) = filter.created_from {
        let p = next(ListParam::Time(from), &mut params);
        conditions.push(format!("created_at >= {p}"));
    }
    if let Some(to) = filter.created_to {
        let p = next(ListParam::Time(to), &mut params);
        conditions.push(format!("created_at < {p}"));
    }
    if let Some(pattern) = filter.destination_pattern() {
        let p = next(ListParam::Text(pattern), &mut params);
        conditions.push(format!("destination LIKE {p} ESCAPE '\\'"));
    }
    if let Some(prefix) = &filter.id_prefix {
        // A range on the primary key finds the few ids of a long prefix at once, but the
        // rows it finds must then be sorted: for a short prefix, which may match every row
        // (ids are UUIDv7, so they share their leading, time-based digits), walking the
        // newest-first index and testing each row stops after one page instead. Eight hex
        // digits narrow a UUIDv7 to about a minute. Measured at 100k rows: a 13-digit prefix
        // 41 ms by the walk, 2.4 ms by the range; a 1-digit one 3 ms by the walk, 145 ms by
        // the range.
        if dialect.bytewise_text && prefix.len() >= 8 {
            // Ids are lower-case hex and `-`, all below DEL: every id that starts with the
            // prefix sorts between it and the prefix followed by DEL.
            let from = next(ListParam::Text(prefix.clone()), &mut params);
            let to = next(ListParam::Text(format!("{prefix}\u{7f}")), &mut params);
            conditions.push(format!("id >= {from} AND id < {to}"));
        } else {
            let length = prefix.chars().count();
            let p = next(ListParam::Text(prefix.clone()), &mut params);
            conditions.push(format!("substr(id, 1, {length}) = {p}"));
        }
    }
    if let (true, Some(before)) = (with_cursor, &filter.before) {
        // `created_at <= t` is the range an index on `created_at` serves; the rest only
        // sorts out the requests created in the same instant as the cursor.
        let at = next(ListParam::Time(before.created_at), &mut params);
        let id = next(ListParam::Text(before.id.clone()), &mut params);
        conditions.push(format!(
            "created_at <= {at} AND (created_at < {at} OR id < {id})"
        ));
    }
    if conditions.is_empty() {
        ("1 = 1".into(), params)
    } else {
        (conditions.join(" AND "), params)
    }
}
