//! `GET /destinations` and the operator's controls over one destination (SPEC §11): `POST
//! /destinations/{key}/pause`, `/resume` and `/reset` (its breaker). Behind `Authorization: Bearer
//! $APP_ADMIN_TOKEN`, mounted only with an admin token, as the other operator routes are.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Admin;
use super::error::ErrorBody;
use super::extract::JsonBody;
use super::{ApiError, AppState};
use crate::delivery::destinations::{DestinationView, OwnRate, RateLimit, destination_of};
use crate::input::{FieldError, Part};
use crate::store::{ControlChange, MAX_CONTROLLED_DESTINATIONS};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(destinations))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(reset_breaker))
        .routes(routes!(set_limits, default_limits))
}

/// `GET /destinations` → 200.
#[derive(Serialize, ToSchema)]
pub struct DestinationList {
    /// Busiest first: most deliveries in flight, then most recent failures; paused
    /// destinations not delivered to recently last.
    destinations: Vec<DestinationView>,
}

/// Callback destinations and their health.
///
/// Every callback destination (scheme, host, port) this instance delivered to recently, and
/// every paused one: its deliveries in flight, its successes and failures of the last five
/// minutes, its circuit breaker (breakers are per instance) and whether it is paused.
#[utoipa::path(
    get,
    path = "/destinations",
    operation_id = "listDestinations",
    tag = "operations",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Destinations seen recently, and the paused ones", body = DestinationList),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    )
)]
async fn destinations(_: Admin, State(state): State<AppState>) -> Json<DestinationList> {
    Json(DestinationList {
        destinations: state.service.destinations().await,
    })
}

/// The `{key}` of `/destinations/{key}/…`: the destination as `GET /destinations` names it
/// (`scheme://host:port`), percent-encoded; a missing port is the scheme's default. A path,
/// query or credentials are refused rather than ignored: taking them would invite callback
/// URLs pasted whole, and the access log, which logs request paths, would keep their
/// secrets.
#[derive(utoipa::IntoParams)]
#[into_params(names("key"), parameter_in = Path)]
pub struct DestinationKey(
    /// The destination as `GET /destinations` names it (`scheme://host:port`),
    /// percent-encoded. The pattern shows the usual names; an IPv6 address in brackets and a
    /// host name with underscores are taken too, as `GET /destinations` lists them.
    #[param(
        pattern = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$",
        example = "https://hooks.example.com:443"
    )]
    String,
);

/// Longest key taken, as for a callback URL.
const MAX_KEY_LEN: usize = 2048;

impl<S: Send + Sync> FromRequestParts<S> for DestinationKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let invalid = |msg: &str, input: &str| {
            ApiError::Validation(vec![FieldError::new(
                Part::Path,
                Some("key"),
                "url_parsing",
                msg,
                Value::from(input),
            )])
        };
        let key = match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(key)) => key,
            Err(_) => {
                return Err(invalid(
                    "Input should be a percent-encoded UTF-8 destination",
                    "",
                ));
            }
        };
        if key.len() > MAX_KEY_LEN {
            // Not echoed, as below.
            return Err(invalid("Input should have at most 2048 characters", ""));
        }
        let origin_only = |url: &url::Url| {
            url.path() == "/"
                && url.query().is_none()
                && url.fragment().is_none()
                && url.username().is_empty()
                && url.password().is_none()
        };
        match url::Url::parse(&key) {
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.host_str().is_some()
                    && origin_only(&url) =>
            {
                Ok(Self(destination_of(&url)))
            }
            // Not echoed: it may be a callback URL with a secret in it.
            _ => Err(invalid(
                "Input should be a destination such as https://host:443 (no path, query or \
                 credentials), percent-encoded",
                "",
            )),
        }
    }
}

async fn control(
    state: &AppState,
    destination: &str,
    change: ControlChange,
) -> Result<Json<DestinationView>, ApiError> {
    match state
        .service
        .control_destination(destination, change)
        .await?
    {
        Some(view) => Ok(Json(view)),
        None => Err(ApiError::Conflict(format!(
            "{MAX_CONTROLLED_DESTINATIONS} destinations are paused or limited already: resume one or take its limit off first"
        ))),
    }
}

/// Pause deliveries to a destination.
///
/// Pause a destination: none of its jobs is claimed (no work starts, no delivery attempt) until it
/// is resumed, on every instance at once (PostgreSQL announces each change; every instance also
/// reads them each second) and across restarts. Jobs already under way finish (the answer's
/// `in_flight` counts them on this instance); none is lost, and a paused job's `waiting_for` is
/// `paused`. Pausing a paused destination changes nothing.
#[utoipa::path(
    post,
    path = "/destinations/{key}/pause",
    operation_id = "pauseDestination",
    tag = "operations",
    params(DestinationKey),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Paused: the destination now", body = DestinationView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "1,000 destinations are paused or limited already", body = ErrorBody),
        (status = 422, description = "`key` is not a destination", body = ErrorBody),
    )
)]
async fn pause(
    _: Admin,
    State(state): State<AppState>,
    DestinationKey(destination): DestinationKey,
) -> Result<Json<DestinationView>, ApiError> {
    control(&state, &destination, ControlChange::Pause).await
}

/// Resume deliveries to a destination.
///
/// Resume a paused destination: its jobs are claimed again in due order, the overdue ones
/// first. Resuming a destination that is not paused changes nothing.
#[utoipa::path(
    post,
    path = "/destinations/{key}/resume",
    operation_id = "resumeDestination",
    tag = "operations",
    params(DestinationKey),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Resumed: the destination now", body = DestinationView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 422, description = "`key` is not a destination", body = ErrorBody),
    )
)]
async fn resume(
    _: Admin,
    State(state): State<AppState>,
    DestinationKey(destination): DestinationKey,
) -> Result<Json<DestinationView>, ApiError> {
    control(&state, &destination, ControlChange::Resume).await
}

/// Close a destination's circuit breaker.
///
/// Close the destination's circuit breaker on every instance (at once, as a pause),
/// forgetting the failures that opened it: its held jobs are tried at once. If the
/// receiver still fails, the breaker opens again as before.
#[utoipa::path(
    post,
    path = "/destinations/{key}/reset",
    operation_id = "resetDestinationBreaker",
    tag = "operations",
    params(DestinationKey),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Reset: the destination now", body = DestinationView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "1,000 destinations are paused or limited already (a \
            reset is stored beside the pauses)", body = ErrorBody),
        (status = 422, description = "`key` is not a destination", body = ErrorBody),
    )
)]
async fn reset_breaker(
    _: Admin,
    State(state): State<AppState>,
    DestinationKey(destination): DestinationKey,
) -> Result<Json<DestinationView>, ApiError> {
    control(&state, &destination, ControlChange::ResetBreaker).await
}

/// `PUT /destinations/{key}/limits`: the destination's own rate limit.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // The schema of a body read field by field.
struct LimitsBody {
    /// Deliveries a second across every instance (0.001 to 100,000; a fraction is allowed),
    /// or null for no limit at all, whatever the default.
    #[schema(required = true, minimum = 0.001, maximum = 100000)]
    per_second: Option<f64>,
    /// Deliveries that may start at once after a quiet spell (one second's worth by
    /// default). Checked even without a limit, which leaves it no use.
    #[schema(minimum = 1, maximum = 100000)]
    burst: Option<u32>,
}

/// The limit a `PUT /destinations/{key}/limits` body asks for, or every field error in it.
fn own_rate(body: &Value) -> Result<OwnRate, ApiError> {
    let invalid = |field: &str, msg: String, input: &Value| {
        ApiError::Validation(vec![FieldError::new(
            Part::Body,
            Some(field),
            "value_error",
            &msg,
            input.clone(),
        )])
    };
    let Some(fields) = body.as_object() else {
        return Err(invalid(
            "per_second",
            "Input should be an object with per_second and, optionally, burst".into(),
            body,
        ));
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "per_second" | "burst"))
    {
        return Err(invalid(
            unknown,
            "Unknown field: the limits are per_second and burst".into(),
            &Value::Null,
        ));
    }
    let per_second = match fields.get("per_second") {
        None => {
            return Err(invalid(
                "per_second",
                "Field required (null for no limit)".into(),
                &Value::Null,
            ));
        }
        Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_f64().is_some() => n.as_f64(),
        Some(other) => {
            return Err(invalid(
                "per_second",
                "Input should be a number or null".into(),
                other,
            ));
        }
    };
    let burst = match fields.get("burst") {
        None | Some(Value::Null) => None,
        // A whole number, written as JSON Schema counts integers (`5` or `5.0`).
        Some(value) => match value
            .as_u64()
            .or_else(|| {
                value
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f))
                    .map(|f| f as u64)
            })
            .and_then(|b| u32::try_from(b).ok())
            .filter(|b| (1..=RateLimit::MAX_BURST).contains(b))
        {
            Some(burst) => Some(burst),
            None => {
                return Err(invalid(
                    "burst",
                    format!(
                        "Input should be a whole number from 1 to {}",
                        RateLimit::MAX_BURST
                    ),
                    value,
                ));
            }
        },
    };
    match per_second {
        None => Ok(OwnRate::Unlimited),
        Some(per_second) => RateLimit::new(per_second, burst)
            .map(OwnRate::Limited)
            .map_err(|err| {
                let field = match err {
                    crate::delivery::destinations::RateError::PerSecond => "per_second",
                    crate::delivery::destinations::RateError::Burst => "burst",
                };
                invalid(field, err.to_string(), &fields[field])
            }),
    }
}

/// Set a destination's own rate limit.
///
/// Set the deliveries a second (and the burst) to one destination, across every instance,
/// over APP_CALLBACK_RATE_PER_DESTINATION; `{"per_second": null}` takes the limit off it.
/// Stored in the database: every instance applies it at once (each delivering its share
/// when several share the database), and after a restart. Jobs held by it wait without a
/// worker, their `waiting_for` is `rate_limit`.
#[utoipa::path(
    put,
    path = "/destinations/{key}/limits",
    operation_id = "setDestinationLimits",
    tag = "operations",
    params(DestinationKey),
    request_body = LimitsBody,
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Set: the destination now", body = DestinationView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "1,000 destinations are paused or limited already", body = ErrorBody),
        (status = 422, description = "`key` is not a destination, or a limit is out of range", body = ErrorBody),
    )
)]
async fn set_limits(
    _: Admin,
    State(state): State<AppState>,
    DestinationKey(destination): DestinationKey,
    JsonBody(body): JsonBody,
) -> Result<Json<DestinationView>, ApiError> {
    let rate = own_rate(&body)?;
    control(&state, &destination, ControlChange::SetRate(Some(rate))).await
}

/// Return a destination to the default rate limit.
///
/// Forget the destination's own rate limit: APP_CALLBACK_RATE_PER_DESTINATION applies to it
/// again, on every instance.
#[utoipa::path(
    delete,
    path = "/destinations/{key}/limits",
    operation_id = "defaultDestinationLimits",
    tag = "operations",
    params(DestinationKey),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The default applies: the destination now", body = DestinationView),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 422, description = "`key` is not a destination", body = ErrorBody),
    )
)]
async fn default_limits(
    _: Admin,
    State(state): State<AppState>,
    DestinationKey(destination): DestinationKey,
) -> Result<Json<DestinationView>, ApiError> {
    control(&state, &destination, ControlChange::SetRate(None)).await
}
