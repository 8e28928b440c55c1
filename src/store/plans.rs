//! The statements on hot paths, and how the database runs each: a statement whose cost grows
//! with the history (a scan of every stored request or attempt) stays fast on a fresh
//! database and collapses in production, so each backend lists its hot statements and has
//! its planner explain them; `tests/api/history.rs` fails if any scans `requests` or
//! `delivery_attempts` on a database with a history.

use chrono::{Duration, Utc};

use super::{Dialect, LastStatus, ListFilter, ListParam, Position, count_sql, page_sql};
use crate::model::{Mode, Status};

/// One hot statement and its plan.
#[derive(Debug, Clone)]
pub struct StatementPlan {
    /// What it is for (`claim: due window`, `list page: callback_host`, …).
    pub statement: String,
    /// The planner's plan, one step per line.
    pub plan: String,
    /// Whether the plan reads every row of `requests` or `delivery_attempts`.
    pub scans_table: bool,
    /// Whether the plan sorts the rows it finds: a list page's order, or any order of another
    /// statement, not given by an index.
    pub sorts: bool,
    /// Whether it is a list page, whose order must come from an index.
    pub is_list_page: bool,
    /// Columns the statement filters on by equality that the index it walks does not
    /// constrain: each row of the walk is read and checked against them, so a combination
    /// that matches little reads every row the index holds.
    pub unserved: Vec<String>,
}

impl StatementPlan {
    /// The plan of `hot`, from the planner's `steps`: `scans_table` and `sorts` as the
    /// backend reads them, and the equality filters missing from `index_conditions` (the
    /// steps, or parts of steps, that say what the index walk is constrained by).
    pub(crate) fn of(
        hot: HotStatement,
        steps: &[String],
        scans_table: bool,
        sorts: bool,
        index_conditions: &str,
        constrains: impl Fn(&str, &str) -> bool,
    ) -> Self {
        let unserved = hot
            .equalities
            .iter()
            .filter(|column| !constrains(index_conditions, column))
            .map(|column| (*column).to_string())
            .collect();
        StatementPlan {
            statement: hot.name,
            plan: steps.join("\n"),
            scans_table,
            sorts,
            is_list_page: hot.is_list_page,
            unserved,
        }
    }
}

/// A statement to explain.
pub(crate) struct HotStatement {
    pub name: String,
    pub sql: String,
    pub is_list_page: bool,
    /// The columns it filters on by equality (a list statement's mode, status and host).
    pub equalities: Vec<&'static str>,
    /// A list statement's parameters, for a backend that plans each list statement with its
    /// values (PostgreSQL: see `ListFilter::order_by`); empty for the others.
    pub params: Vec<ListParam>,
}

/// A backend's `fixed` statements (named by what they are for), then for each of
/// [`list_filters`] its page and, where it is counted row by row, its total, in `dialect`.
pub(crate) fn hot_statements(fixed: &[(&str, &str)], dialect: &Dialect) -> Vec<HotStatement> {
    let mut statements: Vec<HotStatement> = fixed
        .iter()
        .map(|(name, sql)| HotStatement {
            name: (*name).to_string(),
            sql: (*sql).to_string(),
            is_list_page: false,
            equalities: Vec::new(),
            params: Vec::new(),
        })
        .collect();
    for (name, filter) in list_filters() {
        // As `Store::list` runs it.
        let filter = filter.without_implied_mode();
        // The equalities an index must serve: the failed answer's when its index leads (a
        // class's is an expression, which the plans do not name), else the host's, the
        // status's, the mode's.
        let equalities: Vec<&'static str> = if dialect.walks_unfinished(&filter) {
            // The open requests' own index: the status and the mode are checked on each of
            // its rows, no more than the queue's bound; only a host narrows it.
            filter
                .callback_host
                .as_ref()
                .map(|_| "callback_host")
                .into_iter()
                .collect()
        } else if filter.by_last_status() {
            matches!(filter.last_status, Some(LastStatus::Code(_)))
                .then_some("callback_last_status")
                .into_iter()
                .collect()
        } else {
            [
                filter.mode.map(|_| "mode"),
                filter.status.map(|_| "status"),
                filter.callback_host.as_ref().map(|_| "callback_host"),
            ]
            .into_iter()
            .flatten()
            .collect()
        };
        let (sql, params) = page_sql(&filter, dialect);
        statements.push(HotStatement {
            name: format!("list page: {name}"),
            sql,
            is_list_page: true,
            equalities: equalities.clone(),
            params,
        });
        if !filter.counted_by_status() {
            let (sql, params) = count_sql(&filter, dialect);
            statements.push(HotStatement {
                name: format!("list total: {name}"),
                sql,
                is_list_page: false,
                equalities,
                params,
            });
        }
    }
    statements
}

/// The list filters whose pages and totals are explained: each filter on its own, the
/// combinations an operator uses, and the cursor with and without one. (An id prefix is
/// never combined with another filter: see `http::requests`.) Their statuses are ones the
/// history has few of, the case an index must serve: a status most requests have is found
/// as well by walking the newest requests.
fn list_filters() -> Vec<(&'static str, ListFilter)> {
    let base = ListFilter {
        limit: 100,
        ..ListFilter::default()
    };
    let cursor = Some(Position {
        created_at: Utc::now(),
        id: "0190a000-0000-7000-8000-000000000000".into(),
    });
    vec![
        ("no filter", base.clone()),
        (
            "mode",
            ListFilter {
                mode: Some(Mode::Async),
                ..base.clone()
            },
        ),
        (
            "status",
            ListFilter {
                status: Some(Status::Pending),
                ..base.clone()
            },
        ),
        (
            "mode and status",
            ListFilter {
                mode: Some(Mode::Sync),
                status: Some(Status::Failed),
                ..base.clone()
            },
        ),
        (
            "sync and an open status",
            ListFilter {
                mode: Some(Mode::Sync),
                status: Some(Status::Processing),
                ..base.clone()
            },
        ),
        (
            "a finished status",
            ListFilter {
                status: Some(Status::Cancelled),
                ..base.clone()
            },
        ),
        (
            "callback_host and a finished status",
            ListFilter {
                callback_host: Some("hooks.example.com".into()),
                status: Some(Status::CallbackFailed),
                ..base.clone()
            },
        ),
        (
            "async and status",
            ListFilter {
                mode: Some(Mode::Async),
                status: Some(Status::CallbackPending),
                ..base.clone()
            },
        ),
        (
            "callback_host and status",
            ListFilter {
                callback_host: Some("hooks.example.com".into()),
                status: Some(Status::CallbackPending),
                ..base.clone()
            },
        ),
        (
            "async, callback_host and status",
            ListFilter {
                mode: Some(Mode::Async),
                callback_host: Some("hooks.example.com:8443".into()),
                status: Some(Status::CallbackPending),
                ..base.clone()
            },
        ),
        (
            "status and created range",
            ListFilter {
                status: Some(Status::Pending),
                created_from: Some(Utc::now() - Duration::hours(1)),
                ..base.clone()
            },
        ),
        (
            "callback_host and created range",
            ListFilter {
                callback_host: Some("hooks.example.com".into()),
                created_to: Some(Utc::now()),
                ..base.clone()
            },
        ),
        (
            "created range",
            ListFilter {
                created_from: Some(Utc::now() - Duration::hours(1)),
                created_to: Some(Utc::now()),
                ..base.clone()
            },
        ),
        (
            "callback_host",
            ListFilter {
                callback_host: Some("hooks.example.com".into()),
                ..base.clone()
            },
        ),
        (
            "callback_host with port",
            ListFilter {
                callback_host: Some("hooks.example.com:8443".into()),
                ..base.clone()
            },
        ),
        (
            "id_prefix",
            ListFilter {
                id_prefix: Some("0190a".into()),
                ..base.clone()
            },
        ),
        (
            "cursor",
            ListFilter {
                cursor: cursor.clone(),
                ..base.clone()
            },
        ),
        (
            "status and cursor",
            ListFilter {
                status: Some(Status::Processing),
                cursor: cursor.clone(),
                ..base.clone()
            },
        ),
        (
            "id_prefix and cursor",
            ListFilter {
                id_prefix: Some("0190a".into()),
                cursor: cursor.clone(),
                ..base.clone()
            },
        ),
        (
            "oldest first",
            ListFilter {
                oldest_first: true,
                ..base.clone()
            },
        ),
        (
            "status, oldest first, cursor",
            ListFilter {
                status: Some(Status::Pending),
                oldest_first: true,
                cursor: cursor.clone(),
                ..base.clone()
            },
        ),
        (
            "callback_host and status, oldest first",
            ListFilter {
                callback_host: Some("hooks.example.com".into()),
                status: Some(Status::CallbackPending),
                oldest_first: true,
                ..base.clone()
            },
        ),
        (
            "last_status",
            ListFilter {
                last_status: Some(LastStatus::Code(404)),
                ..base.clone()
            },
        ),
        (
            "last_status class and status",
            ListFilter {
                last_status: Some(LastStatus::Class(5)),
                status: Some(Status::CallbackFailed),
                ..base.clone()
            },
        ),
        (
            "last_status, oldest first, cursor",
            ListFilter {
                last_status: Some(LastStatus::Code(503)),
                oldest_first: true,
                cursor: cursor.clone(),
                ..base.clone()
            },
        ),
        (
            "error_contains",
            ListFilter {
                error_contains: Some("refused".into()),
                ..base.clone()
            },
        ),
        (
            "error_contains and created range",
            ListFilter {
                error_contains: Some("timed out".into()),
                created_from: Some(Utc::now() - Duration::hours(1)),
                ..base.clone()
            },
        ),
        (
            "id_prefix, oldest first, cursor",
            ListFilter {
                id_prefix: Some("0190a".into()),
                oldest_first: true,
                cursor,
                ..base
            },
        ),
    ]
}
