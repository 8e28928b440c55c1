//! `GET /requests` below HTTP: its filters, and the `WHERE` clause both backends build from
//! them.

use chrono::{DateTime, Utc};

use super::Position;
use super::lifecycle::statuses_of;
use crate::model::{Mode, Status};

/// Filters of `GET /requests`.
#[derive(Debug, Clone)]
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
    /// The HTTP status of the last callback attempt: one code, or a class.
    pub last_status: Option<LastStatus>,
    /// Text the last error contains (a sync failure, or the last callback error), any case.
    pub error_contains: Option<String>,
    /// Ids that start with this, lower-case.
    pub id_prefix: Option<String>,
    /// Keyset paging: only requests past this one in the list's order. Unlike `offset`,
    /// page N costs what page 1 costs, however deep it is.
    pub cursor: Option<Position>,
    /// Oldest first instead of newest first.
    pub oldest_first: bool,
    pub limit: u32,
    pub offset: u64,
    /// The most matching rows a `total` counts, for a filter the kept counts cannot answer
    /// (`APP_LIST_COUNT_LIMIT`): past it, the total says "at least this many".
    pub count_limit: u64,
}

/// The `last_status` filter: one HTTP status, or every status of a class (`4` for 4xx), of
/// an answer that is not a success (the HTTP layer takes no other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastStatus {
    Code(u16),
    Class(u8),
}

/// The least status the `last_status` indexes hold (migration 0012 on SQLite, 0011 on
/// PostgreSQL): the answers that are not a success.
const INDEXED_STATUSES_FROM: u16 = 300;

impl LastStatus {
    /// Whether every status it matches is in the indexes of answers that are not a success.
    fn indexed(self) -> bool {
        let least = match self {
            LastStatus::Code(code) => code,
            LastStatus::Class(class) => u16::from(class) * 100,
        };
        least >= INDEXED_STATUSES_FROM
    }
}

/// `APP_LIST_COUNT_LIMIT`'s default: a count that stops here takes milliseconds, and a
/// person paging through a list needs no more precise a number.
pub const DEFAULT_COUNT_LIMIT: u64 = 10_000;

impl Default for ListFilter {
    fn default() -> Self {
        Self {
            mode: None,
            status: None,
            created_from: None,
            created_to: None,
            callback_host: None,
            last_status: None,
            error_contains: None,
            id_prefix: None,
            cursor: None,
            oldest_first: false,
            limit: 100,
            offset: 0,
            count_limit: DEFAULT_COUNT_LIMIT,
        }
    }
}

impl ListFilter {
    /// Whether the filter uses no more than the original's (mode and status, and paging):
    /// its `total` is then the sum of the kept counts, exact and at no cost. A filter beyond
    /// those counts its matching rows, up to [`ListFilter::count_limit`].
    pub(crate) fn counted_by_status(&self) -> bool {
        self.created_from.is_none()
            && self.created_to.is_none()
            && self.callback_host.is_none()
            && self.last_status.is_none()
            && self.error_contains.is_none()
            && self.id_prefix.is_none()
    }

    /// Whether no request can match: a mode with a status it never has, or sync requests
    /// by callback host or callback status (they have no callback).
    pub(crate) fn matches_nothing(&self) -> bool {
        self.mode.is_some_and(|mode| {
            self.status
                .is_some_and(|status| !statuses_of(mode).contains(&status))
                || (mode == Mode::Sync && self.about_callbacks())
        })
    }

    /// Whether it filters on something only async requests have: a callback host or status.
    fn about_callbacks(&self) -> bool {
        self.callback_host.is_some() || self.last_status.is_some()
    }

    /// Whether an index of failed answers serves the filter: it then leads (see
    /// [`ListFilter::newest_first_order`]), and the other filters are checked on its rows.
    pub(crate) fn by_last_status(&self) -> bool {
        self.last_status.is_some_and(LastStatus::indexed)
    }

    /// The filter without a mode the other filters already imply (a status only one mode has,
    /// or a callback's host or status, which only async requests have): each statement then
    /// filters on one index's column and reads only rows that match, instead of walking one
    /// index and checking the mode on every row (`mode=sync&status=callback_success` would
    /// otherwise read every delivered request).
    pub(crate) fn without_implied_mode(mut self) -> Self {
        let implied = |mode: Mode| {
            self.about_callbacks()
                || self.status.is_some_and(|status| {
                    Mode::ALL
                        .iter()
                        .filter(|m| statuses_of(**m).contains(&status))
                        .eq([&mode])
                })
        };
        if self.mode.is_some_and(implied) {
            self.mode = None;
        }
        self
    }

    /// The order of a page, newest first (or oldest first, each column the other way, which
    /// the same index serves walked from its other end): by creation time, or, for an id
    /// prefix, by id
    /// (ids are UUIDv7, which begin with their creation time in milliseconds): the prefix's
    /// requests are then one range of the primary key, walked from its end, however many
    /// the prefix matches.
    ///
    /// The columns filtered by equality lead the order, as they lead the index that serves
    /// the filter. Fixed by the filter, they change nothing in the order, but they leave the
    /// planner one index that gives the order without a sort: PostgreSQL would otherwise
    /// walk the creation-time index and check each row (its generic plan guesses any status
    /// matches half the rows), reading the whole history for a status few requests have.
    pub(crate) fn order_by(&self) -> String {
        let order = self.newest_first_order();
        if self.oldest_first {
            order.replace(" DESC", " ASC")
        } else {
            order
        }
    }

    /// The newest-first order, whatever the list's.
    pub(crate) fn newest_first_order(&self) -> String {
        if self.id_prefix.is_some() {
            return "id DESC".into();
        }
        // A failed answer's index first: it holds only the requests whose last callback
        // failed with an answer, few beside a status's. (Beside a host, either index gives
        // this order, both columns being fixed: each backend's statistics pick the
        // narrower.) A class leads with nothing: SQLite does not see that an index's
        // expression fixed by the filter orders nothing (it sorts), and orders by time alone
        // from that index's walk.
        let leading = if let Some(last) = self.last_status.filter(|_| self.by_last_status()) {
            match last {
                LastStatus::Code(_) => "callback_last_status DESC, ",
                LastStatus::Class(_) => "",
            }
        } else if self.callback_host.is_some() {
            if self.status.is_some() {
                "callback_host DESC, status DESC, "
            } else {
                "callback_host DESC, "
            }
        } else if self.status.is_some() {
            "status DESC, "
        } else if self.mode.is_some() {
            "mode DESC, "
        } else {
            ""
        };
        format!("{leading}created_at DESC, id DESC")
    }

    /// The total a page of this filter already gives: a first page (no cursor, no offset)
    /// shorter than the page size holds every match, and counting them again would read the
    /// same rows twice (all of them, for a text search that matches nothing). `None` when
    /// the total must be counted (or is kept: see [`ListFilter::counted_by_status`]).
    pub(crate) fn total_of_page(&self, rows: usize) -> Option<Total> {
        let whole = self.cursor.is_none() && self.offset == 0;
        let short = u32::try_from(rows).is_ok_and(|rows| rows < self.limit);
        let rows = u64::try_from(rows).unwrap_or(u64::MAX);
        (whole && short && !self.counted_by_status()).then_some(Total {
            n: rows.min(self.count_limit),
            capped: rows > self.count_limit,
        })
    }
}

/// A list's `total`: counted exactly, or counted until it passed the count limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Total {
    pub n: u64,
    pub capped: bool,
}

impl Total {
    /// The total of a count of matching rows that stopped after `limit + 1`.
    pub(crate) fn of_count(counted: i64, limit: u64) -> Self {
        let counted = u64::try_from(counted).unwrap_or(0);
        if counted > limit {
            Total {
                n: limit,
                capped: true,
            }
        } else {
            Total {
                n: counted,
                capped: false,
            }
        }
    }
}

/// A parameter of a list statement, in the order of its placeholders.
#[derive(Clone)]
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
    /// The case-insensitive `LIKE`.
    pub like: &'static str,
    /// Whether the list indexes end with `id` (PostgreSQL's do; SQLite's end with the rowid),
    /// so that a count in the page's order, `id` included, still walks one of them.
    pub indexes_hold_id: bool,
    /// Indexes for the requests in an open status and for the finished ones by status, set
    /// apart by the `unfinished` column (SQLite; see migration 0018), where the other
    /// backend keys one index by every status.
    pub unfinished_apart: Option<UnfinishedIndexes>,
}

/// The indexes of a backend that keeps its open requests apart (see
/// [`Dialect::unfinished_apart`]): a request is in them while its status is open.
pub(crate) struct UnfinishedIndexes {
    /// The open requests by creation time.
    pub by_time: &'static str,
    /// The open async requests by callback host, then creation time.
    pub by_host: &'static str,
}

impl Dialect {
    /// The table a list statement of `filter` reads, with the index it must walk when the
    /// filter's status is open and the backend keeps those requests apart: the planner
    /// would otherwise prefer an index the mode or the host constrains (one equality,
    /// which it guesses matches ten rows) and walk that mode's or host's whole history to
    /// find the few requests still open. Not when a failed answer's index or the id's range
    /// serves the filter: those are bounded already (see [`ListFilter::order_by`]).
    pub(crate) fn table(&self, filter: &ListFilter) -> String {
        match (&self.unfinished_apart, self.walks_unfinished(filter)) {
            (Some(indexes), true) => {
                let index = if filter.callback_host.is_some() {
                    indexes.by_host
                } else {
                    indexes.by_time
                };
                format!("requests INDEXED BY {index}")
            }
            _ => "requests".into(),
        }
    }

    /// Whether a list statement of `filter` walks the open requests' own index, which
    /// holds no more than the queue's bound and the sync requests in flight: its status,
    /// and its mode, are checked on each of those rows.
    pub(crate) fn walks_unfinished(&self, filter: &ListFilter) -> bool {
        self.unfinished_apart.is_some()
            && filter.status.is_some_and(|status| !status.is_finished())
            && !filter.by_last_status()
            && filter.id_prefix.is_none()
    }
}

/// The `WHERE` clause of a list statement for `filter` and its parameters, with only the
/// filters in use (so each combination is its own statement, and the planner sees plain
/// `status = ?` and `created_at <= ?` it can take to an index, never `? IS NULL OR …`).
/// The SQL text is built from fixed fragments only; every value is a parameter.
/// `with_cursor` adds the keyset condition of the cursor (the total of a list leaves it out).
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
        if dialect.unfinished_apart.is_some() {
            // The condition of the indexes that hold the status, word for word as SQLite
            // needs to see it to use a partial index.
            conditions.push(
                if status.is_finished() {
                    "unfinished IS NULL"
                } else {
                    "unfinished IS NOT NULL"
                }
                .into(),
            );
        }
    }
    if let Some(from) = filter.created_from {
        let p = next(ListParam::Time(from), &mut params);
        conditions.push(format!("created_at >= {p}"));
    }
    if let Some(to) = filter.created_to {
        let p = next(ListParam::Time(to), &mut params);
        conditions.push(format!("created_at < {p}"));
    }
    if let Some(host) = &filter.callback_host {
        // `host:port` (an IPv6 host is bracketed, so a colon after `]`, or any colon without
        // brackets, starts a port): the host, then the destination, by either scheme.
        let port_at = match host.rfind(']') {
            Some(end) => host[end..].find(':').map(|i| end + i),
            None => host.find(':'),
        };
        let (name, port) = match port_at {
            Some(at) => (&host[..at], Some(&host[at + 1..])),
            None => (host.as_str(), None),
        };
        let p = next(ListParam::Text(name.to_string()), &mut params);
        conditions.push(format!("callback_host = {p}"));
        if let Some(port) = port {
            let http = next(
                ListParam::Text(format!("http://{name}:{port}")),
                &mut params,
            );
            let https = next(
                ListParam::Text(format!("https://{name}:{port}")),
                &mut params,
            );
            conditions.push(format!("destination IN ({http}, {https})"));
        }
    }
    if let Some(last) = filter.last_status {
        if last.indexed() {
            // Spelled as the index's own condition, which SQLite needs to see word for word
            // (and PostgreSQL's generic plan cannot prove from a parameter).
            conditions.push(format!("callback_last_status >= {INDEXED_STATUSES_FROM}"));
        }
        // Each by the expression its index holds.
        match last {
            LastStatus::Code(code) => {
                let p = next(ListParam::Int(i64::from(code)), &mut params);
                conditions.push(format!("callback_last_status = {p}"));
            }
            LastStatus::Class(class) => {
                let p = next(ListParam::Int(i64::from(class)), &mut params);
                conditions.push(format!("callback_last_status / 100 = {p}"));
            }
        }
    }
    if let Some(text) = &filter.error_contains {
        // Only requests with an error can match: the condition of the index that holds just
        // them, spelled as it is there.
        conditions.push("(callback_last_error IS NOT NULL OR error IS NOT NULL)".into());
        // Each column on its own, not their `COALESCE`: PostgreSQL estimates how many rows
        // a pattern matches from a column's statistics (its common values), and with a fair
        // estimate walks the index newest first and stops at the page, where a guess of "one
        // row" had it read every request with an error and sort them.
        let p = next(ListParam::Text(like_pattern(text)), &mut params);
        let like = dialect.like;
        conditions.push(format!(
            "(callback_last_error {like} {p} ESCAPE '!' OR error {like} {p} ESCAPE '!')"
        ));
    }
    if let Some(prefix) = &filter.id_prefix {
        // Ids are lower-case hex and `-`, all below DEL, and compare byte by byte on both
        // backends: every id that starts with the prefix sorts between it and the prefix
        // followed by DEL.
        let from = next(ListParam::Text(prefix.clone()), &mut params);
        let to = next(ListParam::Text(format!("{prefix}\u{7f}")), &mut params);
        conditions.push(format!("id >= {from} AND id < {to}"));
    }
    if let (true, Some(cursor)) = (with_cursor, &filter.cursor) {
        // Past the cursor: below it newest first, above it oldest first.
        let (past, or_same) = if filter.oldest_first {
            (">", ">=")
        } else {
            ("<", "<=")
        };
        if filter.id_prefix.is_some() {
            // In id order (see `ListFilter::order_by`).
            let id = next(ListParam::Text(cursor.id.clone()), &mut params);
            conditions.push(format!("id {past} {id}"));
        } else {
            // `created_at <= t` is the range an index on `created_at` serves; the rest only
            // sorts out the requests created in the same instant as the cursor.
            let at = next(ListParam::Time(cursor.created_at), &mut params);
            let id = next(ListParam::Text(cursor.id.clone()), &mut params);
            conditions.push(format!(
                "created_at {or_same} {at} AND (created_at {past} {at} OR id {past} {id})"
            ));
        }
    }
    if conditions.is_empty() {
        ("1 = 1".into(), params)
    } else {
        (conditions.join(" AND "), params)
    }
}

/// A `LIKE` pattern matching any text that contains `text`, its wildcards escaped with `!`
/// (not a backslash, which PostgreSQL reads as an escape inside the string itself when
/// `standard_conforming_strings` is off).
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '!') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The statement of one page of `filter`, in its order, and its parameters (the page's size
/// and offset last).
pub(crate) fn page_sql(filter: &ListFilter, dialect: &Dialect) -> (String, Vec<ListParam>) {
    let (conditions, mut params) = list_conditions(filter, true, dialect);
    let limit = (dialect.placeholder)(params.len() + 1);
    let offset = (dialect.placeholder)(params.len() + 2);
    // Built from the fixed fragments of `list_conditions` only; values are parameters.
    let sql = format!(
        concat!(
            "SELECT ",
            record_columns!(),
            " FROM {} WHERE {} ORDER BY {} LIMIT {} OFFSET {}"
        ),
        dialect.table(filter),
        conditions,
        filter.order_by(),
        limit,
        offset
    );
    params.push(ListParam::Int(i64::from(filter.limit)));
    params.push(ListParam::Int(
        i64::try_from(filter.offset).unwrap_or(i64::MAX),
    ));
    (sql, params)
}

/// The statement counting the rows of `filter` up to one past its count limit, and its
/// parameters.
pub(crate) fn count_sql(filter: &ListFilter, dialect: &Dialect) -> (String, Vec<ListParam>) {
    let (conditions, mut params) = list_conditions(filter, false, dialect);
    let limit = (dialect.placeholder)(params.len() + 1);
    params.push(ListParam::Int(
        i64::try_from(filter.count_limit.saturating_add(1)).unwrap_or(i64::MAX),
    ));
    // In the order of a newest-first page (whichever order the list is in: the count is the
    // same), so that the planner walks the same index (see `ListFilter::order_by`) and stops
    // after the limit, rather than reading the table; on SQLite without the page's tie-break
    // on `id`, which its indexes do not hold (sorting each run of equal times made a capped
    // count 40 times slower).
    let order = filter.newest_first_order();
    let order = match order.strip_suffix(", id DESC") {
        Some(without_id) if !dialect.indexes_hold_id => without_id,
        _ => &order,
    };
    let table = dialect.table(filter);
    (
        format!(
            "SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {conditions} ORDER BY {order} \
             LIMIT {limit}) AS matching"
        ),
        params,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(mode: Option<Mode>, status: Option<Status>, host: Option<&str>) -> ListFilter {
        ListFilter {
            mode,
            status,
            callback_host: host.map(str::to_string),
            ..ListFilter::default()
        }
    }

    #[test]
    fn a_mode_with_a_status_it_never_has_matches_nothing() {
        let sync = Some(Mode::Sync);
        let asynchronous = Some(Mode::Async);
        assert!(filter(sync, Some(Status::CallbackSuccess), None).matches_nothing());
        assert!(filter(asynchronous, Some(Status::Completed), None).matches_nothing());
        assert!(filter(sync, None, Some("hooks.example")).matches_nothing());
        assert!(!filter(sync, Some(Status::Processing), None).matches_nothing());
        assert!(!filter(asynchronous, Some(Status::Processing), None).matches_nothing());
        assert!(!filter(None, Some(Status::Failed), Some("h")).matches_nothing());
    }

    #[test]
    fn a_search_pattern_holds_its_text_literally() {
        assert_eq!(like_pattern("50%_off!"), "%50!%!_off!!%");
        assert_eq!(like_pattern("a\\b"), "%a\\b%");
    }

    #[test]
    fn only_a_short_whole_first_page_is_its_own_total() {
        let search = ListFilter {
            error_contains: Some("refused".into()),
            limit: 50,
            ..ListFilter::default()
        };
        assert_eq!(
            search.total_of_page(3),
            Some(Total {
                n: 3,
                capped: false
            })
        );
        assert_eq!(search.total_of_page(50), None, "a full page may have more");
        let later = ListFilter {
            offset: 50,
            ..search.clone()
        };
        assert_eq!(later.total_of_page(3), None, "the total is of every page");
        let low_limit = ListFilter {
            count_limit: 2,
            ..search.clone()
        };
        assert_eq!(
            low_limit.total_of_page(3),
            Some(Total { n: 2, capped: true }),
            "as a count that stopped at the limit"
        );
        let kept = ListFilter {
            status: Some(Status::Failed),
            ..ListFilter::default()
        };
        assert_eq!(kept.total_of_page(0), None, "kept counts cost nothing");
    }

    #[test]
    fn a_mode_the_other_filters_imply_is_dropped() {
        let implied = |f: ListFilter| f.without_implied_mode().mode;
        assert_eq!(
            implied(filter(Some(Mode::Sync), Some(Status::Failed), None)),
            None
        );
        assert_eq!(
            implied(filter(
                Some(Mode::Async),
                Some(Status::CallbackPending),
                None
            )),
            None
        );
        assert_eq!(implied(filter(Some(Mode::Async), None, Some("h"))), None);
        assert_eq!(
            implied(filter(Some(Mode::Sync), Some(Status::Processing), None)),
            Some(Mode::Sync),
            "both modes pass through processing"
        );
        assert_eq!(
            implied(filter(Some(Mode::Async), None, None)),
            Some(Mode::Async)
        );
    }
}
