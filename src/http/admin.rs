//! `POST /admin/cleanup`, `POST /requests/{id}/redeliver`, `POST /requests/{id}/retry` and
//! `POST /admin/redeliver`: operator actions, behind `Authorization: Bearer $APP_ADMIN_TOKEN`
//! (the destinations' views and controls are in `destinations.rs`).
//! Without a configured token the routes are not mounted at all (404 for every method), so
//! an unconfigured service does not even reveal them.

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::error::ErrorBody;
use super::extract::PathId;
use super::{ApiError, AppState};
use crate::input::{FieldError, Loc};
use crate::model::{AcceptedResponse, Status};
use crate::store::{MadeDue, Redelivery};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(cleanup))
        .routes(routes!(redeliver))
        .routes(routes!(retry_now))
        .routes(routes!(redeliver_matching))
}

/// `POST /admin/cleanup` → 200.
#[derive(Serialize, ToSchema)]
pub struct CleanupResponse {
    #[schema(example = "ok")]
    status: &'static str,
    /// `expired + over_limit`.
    deleted: u64,
    /// Finished requests older than the retention period.
    expired: u64,
    /// The oldest finished requests beyond APP_MAX_STORED_REQUESTS.
    over_limit: u64,
}

/// Deliver a finished request's callback again.
///
/// Put a `callback_failed` request back in the queue for a fresh round of attempts; earlier
/// attempts stay in the audit.
#[utoipa::path(
    post,
    path = "/requests/{id}/redeliver",
    operation_id = "redeliverRequest",
    tag = "operations",
    params(("id" = String, Path, description = "The request id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Queued for redelivery", body = AcceptedResponse),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such request", body = ErrorBody),
        (status = 409, description = "The request is not `callback_failed`", body = ErrorBody),
        (status = 503, description = "The async queue is full", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
async fn redeliver(
    _: Admin,
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<AcceptedResponse>, ApiError> {
    match state.service.redeliver(&id).await? {
        Redelivery::Queued => Ok(Json(AcceptedResponse {
            status: "accepted".into(),
            request_id: id,
            message: "Request queued for redelivery".into(),
        })),
        Redelivery::NotFound => Err(ApiError::RequestNotFound),
        Redelivery::WrongStatus(status) => Err(ApiError::Conflict(format!(
            "Only a request in callback_failed can be redelivered; this one is {}",
            status.as_str()
        ))),
    }
}

/// Make a request waiting for a retry due now.
///
/// Make a queued request due now: a retry waiting for its backoff (or work waiting for its
/// schedule) is tried at once, its attempt count kept. An open circuit breaker still holds
/// it, as it holds every job of its destination.
#[utoipa::path(
    post,
    path = "/requests/{id}/retry",
    operation_id = "retryRequest",
    tag = "operations",
    params(("id" = String, Path, description = "The request id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Due now", body = AcceptedResponse),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such request", body = ErrorBody),
        (status = 409, description = "Not queued (sync, or final), waiting for an earlier request of its ordering key, or an attempt is under way", body = ErrorBody),
    )
)]
async fn retry_now(
    _: Admin,
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<AcceptedResponse>, ApiError> {
    match state.service.make_due(&id).await? {
        MadeDue::Due => Ok(Json(AcceptedResponse {
            status: "accepted".into(),
            request_id: id,
            message: "Request due now".into(),
        })),
        MadeDue::NotFound => Err(ApiError::RequestNotFound),
        MadeDue::UnderWay => Err(ApiError::Conflict(
            "An attempt is under way; its outcome decides what comes next".into(),
        )),
        MadeDue::Sync => Err(ApiError::Conflict(
            "A sync request is never queued: its client waits for its work".into(),
        )),
        MadeDue::BehindEarlier => Err(ApiError::Conflict(
            "It waits for an earlier request of its ordering key to end; it is due once that \
             one has ended"
                .into(),
        )),
        MadeDue::WrongStatus(status) => Err(ApiError::Conflict(format!(
            "Only a queued request can be retried now; this one is {} (redeliver a \
             callback_failed one)",
            status.as_str()
        ))),
    }
}

/// Run the retention cleanup now.
///
/// Run the retention rules now.
#[utoipa::path(
    post,
    path = "/admin/cleanup",
    operation_id = "runCleanup",
    tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "What was deleted", body = CleanupResponse),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    )
)]
async fn cleanup(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<CleanupResponse>, ApiError> {
    let report = state.service.cleanup().await?;
    Ok(Json(CleanupResponse {
        status: "ok",
        deleted: report.expired + report.over_limit,
        expired: report.expired,
        over_limit: report.over_limit,
    }))
}

/// Most requests one `POST /admin/redeliver` queues: each is its own short write, and this
/// bounds how long one call (one click in the dashboard) keeps the writer busy.
const MAX_BULK_REDELIVER: u32 = 1000;
const DEFAULT_BULK_REDELIVER: u32 = 100;

/// The query of `POST /admin/redeliver`, for the API document: the filters of
/// `GET /requests` (read by the same parser) and these. `status` is left out of the
/// document (only `callback_failed` is allowed, and it is implied), and so is `id_prefix`
/// (refused: one request is redelivered with `POST /requests/{id}/redeliver`).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct BulkQuery {
    /// Only count the matching requests; change nothing.
    #[param(default = false)]
    dry_run: Option<bool>,
    /// Most requests redelivered by this call (newest first); call again for the rest.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<u32>,
    /// Only requests of this mode.
    mode: Option<crate::model::Mode>,
    /// Only requests created at or after this instant (RFC 3339).
    #[param(format = DateTime)]
    created_from: Option<String>,
    /// Only requests created before this instant (RFC 3339).
    #[param(format = DateTime)]
    created_to: Option<String>,
    /// Only requests whose callback goes to this host (`host` or `host:port`).
    #[param(min_length = 1, max_length = 262, pattern = r"^[A-Za-z0-9._:\[\]-]+$")]
    callback_host: Option<String>,
}

/// `POST /admin/redeliver` → 200.
#[derive(Serialize, ToSchema)]
pub struct BulkRedeliverResponse {
    /// `callback_failed` requests that matched the filter before this call.
    matched: u64,
    /// Present, `true`, when `matched` stopped at `APP_LIST_COUNT_LIMIT` (a filter beyond
    /// mode and status): at least that many match.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(value_type = Option<bool>)]
    matched_capped: bool,
    /// Queued again by this call (0 for a dry run).
    redelivered: u64,
    /// Matching requests this call left `callback_failed` (over its limit, or the queue
    /// was full): call again to redeliver them.
    remaining: u64,
    /// The async queue filled up during this call.
    queue_full: bool,
    dry_run: bool,
}

/// Deliver again every request whose callbacks failed.
///
/// Put every `callback_failed` request that matches the filters of `GET /requests` back in
/// the queue, up to `limit` per call, newest first. With `dry_run=true`, only count them (for
/// a confirmation).
#[utoipa::path(
    post,
    path = "/admin/redeliver",
    operation_id = "redeliverFailed",
    tag = "operations",
    params(BulkQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "How many matched and how many were queued", body = BulkRedeliverResponse),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 422, description = "A filter value is invalid; `detail` names it", body = ErrorBody),
    )
)]
async fn redeliver_matching(
    _: Admin,
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<BulkRedeliverResponse>, ApiError> {
    let query = query.unwrap_or_default();
    let (params, dry_run, at_most) = parse_bulk(&query).map_err(ApiError::Validation)?;
    let report = state
        .service
        .redeliver_matching(params.filter, at_most, dry_run)
        .await?;
    Ok(Json(BulkRedeliverResponse {
        matched: report.matched,
        matched_capped: report.matched_capped,
        redelivered: report.redelivered,
        remaining: report.matched.saturating_sub(report.redelivered),
        queue_full: report.queue_full,
        dry_run,
    }))
}

/// The filters, `dry_run` and the per-call bound of a bulk redelivery.
fn parse_bulk(query: &str) -> Result<(super::requests::ListParams, bool, u32), Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut dry_run = false;
    let mut at_most = DEFAULT_BULK_REDELIVER;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "dry_run" => match value.as_ref() {
                "true" | "1" => dry_run = true,
                "false" | "0" => dry_run = false,
                _ => errors.push(FieldError::query(
                    "dry_run",
                    "bool",
                    "must be true or false",
                    &value,
                )),
            },
            "limit" => {
                match super::requests::query_int("limit", &value, 1, i64::from(MAX_BULK_REDELIVER))
                {
                    Ok(n) => at_most = u32::try_from(n).unwrap_or(DEFAULT_BULK_REDELIVER),
                    Err(error) => errors.push(error),
                }
            }
            "before" | "after" | "offset" | "order" => errors.push(FieldError::query(
                key.as_ref(),
                "not_allowed",
                "a bulk redelivery takes every matching request, newest first, not a page",
                &value,
            )),
            // It filters on `callback_failed` too, and an id prefix is never combined with
            // another filter (see `requests::parse_filter`).
            "id_prefix" => errors.push(FieldError::query(
                "id_prefix",
                "not_allowed",
                "a bulk redelivery takes no id prefix: redeliver one request with \
                 POST /requests/{id}/redeliver",
                &value,
            )),
            // A list ignores a parameter it does not know; an action that changes every
            // matching request must not: a misspelt filter would widen it to all of them.
            name if !super::requests::FILTER_NAMES.contains(&name) => {
                errors.push(FieldError::query(
                    name,
                    "unknown",
                    format!(
                        "is not a filter; the filters are: {}",
                        super::requests::FILTER_NAMES.join(", ")
                    ),
                    &value,
                ))
            }
            _ => {}
        }
    }
    match super::requests::parse_filter(query) {
        Ok(params) => {
            if params
                .filter
                .status
                .is_some_and(|s| s != Status::CallbackFailed)
            {
                errors.push(FieldError::query(
                    "status",
                    "enum",
                    "only callback_failed requests can be redelivered",
                    params.filter.status.map_or("", |s| s.as_str()),
                ));
            }
            if errors.is_empty() {
                return Ok((params, dry_run, at_most));
            }
        }
        // The list parser also reads `limit`, with a wider range, and the cursors, refused
        // here already: keep only its other errors.
        Err(list_errors) => {
            let read_here = ["limit", "after", "before"].map(|name| Loc::Name(name.into()));
            errors.extend(
                list_errors
                    .into_iter()
                    .filter(|e| e.loc.last().is_none_or(|loc| !read_here.contains(loc))),
            );
        }
    }
    Err(errors)
}
