//! The statements on hot paths, and how the database runs each: a statement whose cost grows
//! with the history (a scan of every stored request or attempt) stays fast on a fresh
//! database and collapses in production, so each backend lists its hot statements and has
//! its planner explain them; `tests/api/history.rs` fails if any scans `requests` or
//! `delivery_attempts` on a database with a history.

use chrono::{Duration, Utc};

use super::{Dialect, ListFilter, Position, count_sql, page_sql};
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
    /// Whether the plan sorts every row it finds (a list page's order not given by an index).
    pub sorts: bool,
    /// Whether it is a list page, whose order must come from an index.
    pub is_list_page: bool,
}

/// A statement to explain.
pub(crate) struct HotStatement {
    pub name: String,
    pub sql: String,
    pub is_list_page: bool,
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
        })
        .collect();
    for (name, filter) in list_filters() {
        statements.push(HotStatement {
            name: format!("list page: {name}"),
            sql: page_sql(&filter, dialect).0,
            is_list_page: true,
        });
        if !filter.counted_by_status() {
            statements.push(HotStatement {
                name: format!("list total: {name}"),
                sql: count_sql(&filter, dialect).0,
                is_list_page: false,
            });
        }
    }
    statements
}

/// The list filters whose pages and totals are explained: each filter on its own, and the
/// cursor with and without one.
fn list_filters() -> Vec<(&'static str, ListFilter)> {
    let base = ListFilter {
        limit: 100,
        ..ListFilter::default()
    };
    let before = Some(Position {
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
                status: Some(Status::CallbackFailed),
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
            "before",
            ListFilter {
                before: before.clone(),
                ..base.clone()
            },
        ),
        (
            "status and before",
            ListFilter {
                status: Some(Status::Completed),
                before: before.clone(),
                ..base.clone()
            },
        ),
        (
            "id_prefix and before",
            ListFilter {
                id_prefix: Some("0190a".into()),
                before,
                ..base
            },
        ),
    ]
}
