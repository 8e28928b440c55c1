//! `GET /requests` and `GET /requests/{id}`: the record of every request.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::PathId;
use super::wait::{Applied, Wait};
use super::{ApiError, AppState};
use crate::input::{FieldError, Part, bounded_int};
use crate::model::{Mode, RequestList, RequestRecord, Status};
use crate::store::{LastStatus, ListFilter};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
}

/// The filters of `GET /requests`, for the API document. The query is read by
/// [`parse_filter`], so that a bad value is a 422 that names it.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListQuery {
    /// Only requests of this mode.
    mode: Option<Mode>,
    /// Only requests in this status.
    status: Option<Status>,
    /// Only requests created at or after this instant (RFC 3339).
    #[param(format = DateTime)]
    created_from: Option<String>,
    /// Only requests created before this instant (RFC 3339).
    #[param(format = DateTime)]
    created_to: Option<String>,
    /// Only async requests whose callback goes to this host (`host`, any port) or
    /// `host:port`; IPv6 hosts in brackets. Case-insensitive.
    #[param(
        min_length = 1,
        max_length = 262,
        pattern = r"^[A-Za-z0-9._:\[\]-]+$",
        example = "hooks.example.com"
    )]
    callback_host: Option<String>,
    /// Only async requests whose last callback attempt was answered with this HTTP status,
    /// one that is not a success (`404`, 300 to 599), or a status of this class (`3xx`, `4xx`,
    /// `5xx`). A request whose last attempt got no answer has none: search its error with
    /// `error_contains`; a success is `status=callback_success`.
    #[param(pattern = "^([3-5][0-9][0-9]|[3-5][xX][xX])$", example = "404")]
    last_status: Option<String>,
    /// Only requests whose last error (a sync request's failure, an async request's last
    /// callback error) contains this text, in any case (ASCII letters only on SQLite). It
    /// reads the requests that have an error, newest first, until it has a page: narrow it
    /// with `created_from`/`created_to` on a long history where it matches little.
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]+$",
        example = "connection refused"
    )]
    error_contains: Option<String>,
    /// Only requests whose id starts with this (hex digits and `-`, case-insensitive). A
    /// lookup by id: it takes no other filter (mode, status, created_from, created_to,
    /// callback_host, last_status, error_contains), only paging.
    #[param(
        min_length = 1,
        max_length = 36,
        pattern = "^[0-9A-Fa-f-]+$",
        example = "0193a5"
    )]
    id_prefix: Option<String>,
    /// `newest` (the default) or `oldest` first: `oldest` with `status=pending` lists the
    /// requests that have waited longest.
    #[param(inline)]
    order: Option<ListOrder>,
    /// Keyset paging of a newest-first list: only requests after this one (a request id,
    /// usually the last of the previous page). Every page is as fast as the first. An id of
    /// no request (deleted since) is a 404: start again from the first page.
    #[param(min_length = 1, max_length = 64)]
    before: Option<String>,
    /// Keyset paging of an oldest-first list (`order=oldest`), as `before` is of a newest-first
    /// one: only requests after this one.
    #[param(min_length = 1, max_length = 64)]
    after: Option<String>,
    /// Page size.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// Requests to skip. Deep offsets are slow on large tables: prefer `before` (or
    /// `after`).
    #[param(minimum = 0, default = 0)]
    offset: Option<u64>,
}

/// The order of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum ListOrder {
    Newest,
    Oldest,
}

/// The list filters as read from a query: the cursor (`before` or `after`) names a
/// request, which the handler looks up.
#[derive(Debug)]
pub(super) struct ListParams {
    pub filter: ListFilter,
    pub cursor: Option<String>,
}

impl ListParams {
    /// The filter with its cursor resolved, or a 404 if that request does not exist (any
    /// more): the cursor names a resource, and any well-formed id is valid input.
    pub async fn resolve(self, state: &AppState) -> Result<ListFilter, ApiError> {
        let mut filter = self.filter;
        if let Some(id) = self.cursor {
            let position = state.service.position(&id).await?;
            filter.cursor = Some(position.ok_or(ApiError::RequestNotFound)?);
        }
        Ok(filter)
    }
}

/// List requests, newest or oldest first.
///
/// Requests, newest first, optionally filtered, a page at a time.
#[utoipa::path(
    get,
    path = "/requests",
    operation_id = "listRequests",
    tag = "requests",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of requests and the total that match", body = RequestList),
        (status = 404, description = "The `before` request does not exist (any more)", body = ErrorBody),
        (status = 422, description = "A filter value is invalid; `detail` names it", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<RequestList>, ApiError> {
    let params =
        parse_filter(query.as_deref().unwrap_or_default()).map_err(ApiError::Validation)?;
    let filter = params.resolve(&state).await?;
    Ok(Json(state.service.list(filter).await?))
}

/// One request with its delivery attempts.
///
/// One request, with every callback delivery attempt; optionally waiting for it to finish.
#[utoipa::path(
    get,
    path = "/requests/{id}",
    operation_id = "getRequest",
    tag = "requests",
    params(
        ("id" = String, Path, description = "The request id"),
        ("wait" = Option<u32>, Query, minimum = 0, maximum = 60,
            description = "Seconds to wait for the request to finish before answering (as \
            `Prefer: wait=N`)"),
        ("Prefer" = Option<String>, Header,
            description = "`wait=N` (RFC 7240): answer as soon as the request is finished, or \
            after N seconds (at most 60) with its state then. No query runs while it waits."),
    ),
    responses(
        (status = 200, description = "The request and its `attempts`", body = RequestRecord,
            headers(("Preference-Applied" = String, description = "`wait=N` when the answer waited (up to N seconds)"))),
        (status = 404, description = "No such request", body = ErrorBody),
        (status = 422, description = "`wait` is not a whole number of seconds from 0 to 60", body = ErrorBody),
    )
)]
async fn show(
    State(state): State<AppState>,
    PathId(id): PathId,
    Wait(wait): Wait,
) -> Result<(Applied, Json<RequestRecord>), ApiError> {
    // A wait holds a place among the long-lived requests; with none free, the answer is the
    // request as it is now (a preference the server may decline, RFC 7240).
    let place = wait
        .filter(|wait| !wait.is_zero())
        .and_then(|_| state.long_lived.try_hold());
    let (record, applied) = match (wait, place) {
        (Some(wait), Some(_place)) => (
            state.service.wait_until_finished(&id, wait).await?,
            Some(wait),
        ),
        _ => (state.service.get(&id).await?, None),
    };
    record
        .map(|record| (Applied(applied), Json(record)))
        .ok_or(ApiError::RequestNotFound)
}

/// Longest `callback_host`: a DNS name (253) and a port.
const MAX_HOST_LEN: usize = 262;

/// Longest `error_contains`, in characters: longer than any error worth searching for.
const MAX_SEARCH_CHARS: usize = 200;

/// A `last_status`: `404`, or a class, `4xx`.
/// Only answers that are not a success: the ones an operator looks for, and the ones the
/// indexes hold (a success is `status=callback_success`).
fn parse_last_status(value: &str) -> Option<LastStatus> {
    let lower = value.to_ascii_lowercase();
    match lower.as_bytes() {
        [class @ b'3'..=b'5', b'x', b'x'] => Some(LastStatus::Class(class - b'0')),
        [b'3'..=b'5', b'0'..=b'9', b'0'..=b'9'] => lower.parse().ok().map(LastStatus::Code),
        _ => None,
    }
}

/// The parameters [`parse_filter`] reads.
pub(super) const FILTER_NAMES: &[&str] = &[
    "mode",
    "status",
    "limit",
    "offset",
    "created_from",
    "created_to",
    "callback_host",
    "last_status",
    "error_contains",
    "order",
    "after",
    "id_prefix",
    "before",
];

/// An integer query parameter, read as the original read one ([`crate::input::lax_int`]:
/// `limit=1.0` is 1), within `min..=max`.
pub(super) fn query_int(field: &str, value: &str, min: i64, max: i64) -> Result<i64, FieldError> {
    bounded_int(
        Part::Query,
        field,
        &serde_json::Value::from(value),
        min,
        max,
    )
}

/// Reads the list filters; an unknown value is an error, never a silently empty list.
/// Parameters of other names are ignored.
pub(super) fn parse_filter(query: &str) -> Result<ListParams, Vec<FieldError>> {
    let mut filter = ListFilter {
        limit: DEFAULT_LIMIT,
        ..ListFilter::default()
    };
    let mut cursors: [Option<String>; 2] = [None, None];
    let mut errors = Vec::new();
    let timestamp =
        |field: &str, value: &str, errors: &mut Vec<FieldError>| match crate::timestamps::parse(
            value,
        ) {
            Some(at) => Some(at),
            None => {
                errors.push(FieldError::query(
                    field,
                    "datetime",
                    "must be a timestamp, e.g. 2026-01-31T12:00:00 (UTC) or 2026-01-31T12:00:00Z",
                    value,
                ));
                None
            }
        };
    // A parameter given more than once is read once, with its last value, as the original's
    // framework (Starlette) read it.
    let pairs: Vec<_> = url::form_urlencoded::parse(query.as_bytes()).collect();
    let last: HashMap<&str, usize> = pairs
        .iter()
        .enumerate()
        .map(|(i, (key, _))| (key.as_ref(), i))
        .collect();
    let read_once = pairs
        .iter()
        .enumerate()
        .filter(|(i, (key, _))| last.get(key.as_ref()) == Some(i))
        .map(|(_, pair)| pair);
    for (key, value) in read_once {
        match key.as_ref() {
            "mode" => match Mode::parse(value) {
                Some(mode) => filter.mode = Some(mode),
                None => errors.push(FieldError::query(
                    "mode",
                    "enum",
                    "must be one of: sync, async",
                    value,
                )),
            },
            "status" => match Status::parse(value) {
                Some(status) => filter.status = Some(status),
                None => {
                    let allowed: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                    errors.push(FieldError::query(
                        "status",
                        "enum",
                        format!("must be one of: {}", allowed.join(", ")),
                        value,
                    ));
                }
            },
            // Read as the original read them (`limit=1.0` is 1).
            "limit" => match query_int("limit", value, 1, i64::from(MAX_LIMIT)) {
                Ok(limit) => filter.limit = u32::try_from(limit).unwrap_or(DEFAULT_LIMIT),
                Err(error) => errors.push(error),
            },
            "offset" => match query_int("offset", value, 0, i64::MAX) {
                Ok(offset) => filter.offset = offset.unsigned_abs(),
                Err(error) => errors.push(error),
            },
            "created_from" => filter.created_from = timestamp("created_from", value, &mut errors),
            "created_to" => filter.created_to = timestamp("created_to", value, &mut errors),
            "callback_host" => {
                let host = value.to_ascii_lowercase();
                let allowed = |c: char| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']')
                };
                if !host.is_empty() && host.len() <= MAX_HOST_LEN && host.chars().all(allowed) {
                    filter.callback_host = Some(host);
                } else {
                    errors.push(FieldError::query(
                        "callback_host",
                        "host",
                        "must be a host name or address, optionally with :port",
                        value,
                    ));
                }
            }
            "last_status" => match parse_last_status(value) {
                Some(last) => filter.last_status = Some(last),
                None => errors.push(FieldError::query(
                    "last_status",
                    "http_status",
                    "must be an HTTP status that is not a success, from 300 to 599, or a \
                     class: 3xx, 4xx, 5xx (a success is status=callback_success)",
                    value,
                )),
            },
            "error_contains" => {
                // No control character: PostgreSQL refuses a NUL in text (a 500), and SQLite's
                // LIKE stops at one (a pattern that matched every error).
                if (1..=MAX_SEARCH_CHARS).contains(&value.chars().count())
                    && !value.chars().any(char::is_control)
                {
                    filter.error_contains = Some(value.to_string());
                } else {
                    errors.push(FieldError::query(
                        "error_contains",
                        "text",
                        format!(
                            "must be 1 to {MAX_SEARCH_CHARS} characters, none a control character"
                        ),
                        value,
                    ));
                }
            }
            "id_prefix" => {
                let prefix = value.to_ascii_lowercase();
                if (1..=36).contains(&prefix.len())
                    && prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
                {
                    filter.id_prefix = Some(prefix);
                } else {
                    errors.push(FieldError::query(
                        "id_prefix",
                        "id_prefix",
                        "must be 1 to 36 hex digits or '-'",
                        value,
                    ));
                }
            }
            "order" => match value.as_ref() {
                "newest" => filter.oldest_first = false,
                "oldest" => filter.oldest_first = true,
                _ => errors.push(FieldError::query(
                    "order",
                    "enum",
                    "must be one of: newest, oldest",
                    value,
                )),
            },
            name @ ("before" | "after") => {
                // Any id of up to 64 characters: one that names no request (control characters
                // included) is answered as such, a 404.
                if !value.is_empty() && value.chars().count() <= 64 {
                    cursors[usize::from(name == "after")] = Some(value.to_string());
                } else {
                    errors.push(FieldError::query(
                        name,
                        "request_id",
                        "must be a request id (1 to 64 characters)",
                        value,
                    ));
                }
            }
            _ => {}
        }
    }
    let narrowed = filter.mode.is_some()
        || filter.status.is_some()
        || filter.created_from.is_some()
        || filter.created_to.is_some()
        || filter.callback_host.is_some()
        || filter.last_status.is_some()
        || filter.error_contains.is_some();
    if filter.id_prefix.is_some() && narrowed {
        // A prefix is a range of the primary key and every other filter a range of its own
        // index: together, no index serves both, and a short prefix with a filter that
        // matches little would read the whole history.
        errors.push(FieldError::query(
            "id_prefix",
            "id_prefix",
            "finds requests by id and takes no other filter (mode, status, created_from, \
             created_to, callback_host, last_status, error_contains): use it alone, with \
             paging only",
            filter.id_prefix.as_deref().unwrap_or_default(),
        ));
    }
    // Each cursor pages its own order: `before` a newest-first list, `after` an oldest-first.
    let [before, after] = cursors;
    let (cursor, misplaced) = if filter.oldest_first {
        (
            after,
            before.map(|id| {
                (
                    "before",
                    id,
                    "pages a newest-first list: with order=oldest, use after",
                )
            }),
        )
    } else {
        (
            before,
            after.map(|id| {
                (
                    "after",
                    id,
                    "pages an oldest-first list: use it with order=oldest, or use before",
                )
            }),
        )
    };
    if let Some((name, id, why)) = misplaced {
        errors.push(FieldError::query(name, "cursor", why, &id));
    }
    if errors.is_empty() {
        Ok(ListParams { filter, cursor })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_valid_filters() {
        let f = parse_filter("").unwrap().filter;
        assert_eq!((f.mode, f.status, f.limit, f.offset), (None, None, 100, 0));
        let f = parse_filter("mode=async&status=callback_failed&limit=1000&offset=5&x=y")
            .unwrap()
            .filter;
        assert_eq!(f.mode, Some(Mode::Async));
        assert_eq!(f.status, Some(Status::CallbackFailed));
        assert_eq!((f.limit, f.offset), (1000, 5));
    }

    #[test]
    fn new_filters_are_read_and_normalised() {
        let p = parse_filter(
            "created_from=2026-01-01T00:00:00Z&created_to=2026-01-02T01:00:00%2B01:00\
             &callback_host=Hooks.Example.com:8443&before=0193a5-x",
        )
        .unwrap();
        let f = p.filter;
        assert_eq!(
            f.created_from.map(|t| t.to_rfc3339()),
            Some("2026-01-01T00:00:00+00:00".into())
        );
        assert_eq!(
            f.created_to.map(|t| t.to_rfc3339()),
            Some("2026-01-02T00:00:00+00:00".into())
        );
        assert_eq!(f.callback_host.as_deref(), Some("hooks.example.com:8443"));
        assert_eq!(p.cursor.as_deref(), Some("0193a5-x"));
        let p = parse_filter("id_prefix=0193A5&before=0193a5-x&limit=5").unwrap();
        assert_eq!(p.filter.id_prefix.as_deref(), Some("0193a5"));
        let p = parse_filter("order=oldest&after=0193a5-x&status=pending").unwrap();
        assert!(p.filter.oldest_first);
        assert_eq!(p.cursor.as_deref(), Some("0193a5-x"));
        assert!(!parse_filter("order=newest").unwrap().filter.oldest_first);
        let f = parse_filter("last_status=404&error_contains=50%25_off")
            .unwrap()
            .filter;
        assert_eq!(f.last_status, Some(LastStatus::Code(404)));
        assert_eq!(f.error_contains.as_deref(), Some("50%_off"));
        let f = parse_filter("last_status=5XX").unwrap().filter;
        assert_eq!(f.last_status, Some(LastStatus::Class(5)));
    }

    #[test]
    fn invalid_filters_name_the_parameter() {
        for (query, field) in [
            ("mode=batch", "mode"),
            ("status=done", "status"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=ten", "limit"),
            ("offset=-1", "offset"),
            ("offset=99999999999999999999", "offset"),
            ("created_from=yesterday", "created_from"),
            ("created_to=2026-13-01T00:00:00Z", "created_to"),
            ("callback_host=", "callback_host"),
            ("callback_host=%3Cscript%3E", "callback_host"),
            ("callback_host=a%25b", "callback_host"),
            ("id_prefix=xyz", "id_prefix"),
            ("id_prefix=0&status=pending", "id_prefix"),
            ("id_prefix=0193&mode=sync", "id_prefix"),
            ("id_prefix=0193&callback_host=a.example", "id_prefix"),
            (
                "id_prefix=0193&created_from=2026-01-01T00:00:00Z",
                "id_prefix",
            ),
            ("id_prefix=", "id_prefix"),
            (
                "id_prefix=0123456789abcdef0123456789abcdef01234",
                "id_prefix",
            ),
            ("last_status=600", "last_status"),
            ("last_status=99", "last_status"),
            ("last_status=200", "last_status"),
            ("last_status=2xx", "last_status"),
            ("last_status=6xx", "last_status"),
            ("last_status=4x", "last_status"),
            ("last_status=+404", "last_status"),
            ("last_status=404%0A", "last_status"),
            ("error_contains=", "error_contains"),
            ("error_contains=a%00b", "error_contains"),
            ("error_contains=line%0A", "error_contains"),
            ("id_prefix=0193&last_status=404", "id_prefix"),
            ("id_prefix=0193&error_contains=refused", "id_prefix"),
            ("before=", "before"),
            ("order=asc", "order"),
            ("order=oldest&before=0193a5-x", "before"),
            ("after=0193a5-x", "after"),
            ("order=oldest&after=", "after"),
            (
                "before=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                "before",
            ),
        ] {
            let errors = parse_filter(query).unwrap_err();
            assert_eq!(
                serde_json::to_value(&errors[0].loc).unwrap(),
                serde_json::json!(["query", field]),
                "{query}"
            );
        }
    }
}
