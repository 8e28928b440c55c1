//! `GET /requests` and `GET /requests/{id}`: the record of every request.

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
use crate::input::FieldError;
use crate::model::{Mode, RequestList, RequestRecord, Status};
use crate::store::ListFilter;

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
    /// Page size.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// Requests to skip (newest first).
    #[param(minimum = 0, default = 0)]
    offset: Option<u64>,
}

/// Requests, newest first, optionally filtered, a page at a time.
#[utoipa::path(
    get,
    path = "/requests",
    tag = "requests",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of requests and the total that match", body = RequestList),
        (status = 422, description = "A filter value is invalid; `detail` names it", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<RequestList>, ApiError> {
    let filter =
        parse_filter(query.as_deref().unwrap_or_default()).map_err(ApiError::Validation)?;
    Ok(Json(state.service.list(filter).await?))
}

/// One request, with every callback delivery attempt; optionally waiting for it to finish.
#[utoipa::path(
    get,
    path = "/requests/{id}",
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
    let record = match wait {
        Some(wait) if !wait.is_zero() => state.service.wait_until_finished(&id, wait).await?,
        _ => state.service.get(&id).await?,
    };
    record
        .map(|record| (Applied(wait), Json(record)))
        .ok_or(ApiError::RequestNotFound)
}

/// Reads the list filters; an unknown value is an error, never a silently empty list.
fn parse_filter(query: &str) -> Result<ListFilter, Vec<FieldError>> {
    let mut filter = ListFilter {
        limit: DEFAULT_LIMIT,
        ..ListFilter::default()
    };
    let mut errors = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "mode" => match Mode::parse(&value) {
                Some(mode) => filter.mode = Some(mode),
                None => errors.push(FieldError::query(
                    "mode",
                    "enum",
                    "must be one of: sync, async",
                )),
            },
            "status" => match Status::parse(&value) {
                Some(status) => filter.status = Some(status),
                None => {
                    let allowed: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                    errors.push(FieldError::query(
                        "status",
                        "enum",
                        format!("must be one of: {}", allowed.join(", ")),
                    ));
                }
            },
            "limit" => match value.parse::<u32>() {
                Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => filter.limit = limit,
                _ => errors.push(FieldError::query(
                    "limit",
                    "range",
                    format!("must be an integer between 1 and {MAX_LIMIT}"),
                )),
            },
            "offset" => match value.parse::<u64>() {
                Ok(offset) if i64::try_from(offset).is_ok() => filter.offset = offset,
                _ => errors.push(FieldError::query(
                    "offset",
                    "range",
                    "must be a non-negative integer",
                )),
            },
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok(filter)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_valid_filters() {
        let f = parse_filter("").unwrap();
        assert_eq!((f.mode, f.status, f.limit, f.offset), (None, None, 100, 0));
        let f = parse_filter("mode=async&status=callback_failed&limit=1000&offset=5&x=y").unwrap();
        assert_eq!(f.mode, Some(Mode::Async));
        assert_eq!(f.status, Some(Status::CallbackFailed));
        assert_eq!((f.limit, f.offset), (1000, 5));
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
