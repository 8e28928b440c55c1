//! The operator dashboard at `/ui`: served by the service itself, every asset compiled into
//! the binary (no CDN, no build step besides `cargo build`).
//!
//! Pages are server-rendered shells ([`pages`]); a small script fills them from the same JSON API
//! any client uses (`GET /requests`, `GET /requests/{id}`, the admin endpoints), so the dashboard
//! shows exactly what the API shows and asks for the same tokens, which it sends as bearer headers.
//! Three endpoints are its own: `GET /ui/api/overview` (the last 15 minutes and the status counts),
//! `GET /ui/api/stream` (server-sent events, one overview update a second, which also tells open
//! pages to refresh) and `GET /ui/api/callback/{id}` (a request's callback as sent). They need the
//! API token when one is set. The stream is read with `fetch` rather than `EventSource`, which
//! cannot send headers: a token never goes in an address.
//!
//! Nothing here is in the OpenAPI document: it is a user interface, not API.
//! Everything is sent with a strict Content-Security-Policy (scripts and styles only from
//! files of this origin, nothing inline), so even a receiver's answer that slipped past
//! escaping could not run script.

pub mod history;
mod pages;

use std::convert::Infallible;
use std::sync::LazyLock;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::http::{ApiError, AppState, require_api_token};
use crate::model::Status;
pub use history::History;
use history::Point;
use pages::Shell;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A file served under `/ui/assets/`, named by a hash of its content so that it can be
/// cached for good: a new build with a changed file has a new name.
struct Asset {
    path: String,
    content_type: &'static str,
    body: &'static str,
}

impl Asset {
    fn new(stem: &str, extension: &str, content_type: &'static str, body: &'static str) -> Self {
        use sha2::{Digest, Sha256};
        let hash = hex::encode(&Sha256::digest(body.as_bytes())[..6]);
        Self {
            path: format!("/ui/assets/{stem}.{hash}.{extension}"),
            content_type,
            body,
        }
    }
}

static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "app",
        "js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
});
static STYLESHEET: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "app",
        "css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    )
});

/// The dashboard's routes; `/ui/api/*` behind the API token when one is set.
pub fn router(state: &AppState) -> Router<AppState> {
    let mut api = Router::new()
        .route("/ui/api/overview", get(overview_json))
        .route("/ui/api/callback/{id}", get(callback_as_sent))
        .route("/ui/api/stream", get(stream));
    if let Some(token) = state.api_token.clone() {
        api = api.route_layer(middleware::from_fn_with_state(token, require_api_token));
    }
    Router::new()
        .route("/ui", get(overview_page))
        .route("/ui/", get(overview_page))
        .route("/ui/requests", get(requests_page))
        .route("/ui/requests/{id}", get(request_page))
        .route("/ui/destinations", get(destinations_page))
        .route("/ui/assets/{file}", get(asset))
        .merge(api)
        .layer(middleware::from_fn(security_headers))
}

/// Headers on every `/ui` answer, errors included.
async fn security_headers(req: axum::extract::Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn shell(state: &AppState) -> Shell {
    Shell {
        api_token: state.api_token.is_some(),
        admin: state.admin_token.is_some(),
        script: &SCRIPT.path,
        stylesheet: &STYLESHEET.path,
    }
}

/// A request's callback as its attempts sent it: the body (byte for byte) and each attempt's
/// headers, made by the code that sends them. The signature is not kept (nor shown: it would
/// let whoever reads this replay the callback within the receiver's tolerance).
#[derive(Serialize)]
struct CallbackAsSent {
    url: String,
    body: String,
    attempts: Vec<AttemptHeaders>,
}

#[derive(Serialize)]
struct AttemptHeaders {
    attempt: u32,
    headers: Vec<(&'static str, String)>,
}

async fn callback_as_sent(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CallbackAsSent>, ApiError> {
    use crate::delivery::client::{USER_AGENT, callback_body, callback_headers};
    let record = state
        .service
        .get(&id)
        .await?
        .ok_or(ApiError::RequestNotFound)?;
    let (Some(url), Some(result), Some(completed_at)) =
        (record.callback_url, record.result, record.completed_at)
    else {
        // No callback has a body yet (sync, or its work not done).
        return Err(ApiError::RequestNotFound);
    };
    let work = crate::store::FinishedWork {
        result,
        completed_at,
    };
    let body = callback_body(&work);
    let attempts = record
        .attempts
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let mut headers = vec![("User-Agent", USER_AGENT.to_string())];
            headers.extend(callback_headers(&id, a.attempt, a.started_at.timestamp()));
            AttemptHeaders {
                attempt: a.attempt,
                headers,
            }
        })
        .collect();
    Ok(Json(CallbackAsSent {
        url,
        body: String::from_utf8_lossy(&body).into_owned(),
        attempts,
    }))
}

async fn overview_page(State(state): State<AppState>) -> Html<String> {
    Html(pages::overview(shell(&state)).into_string())
}

async fn requests_page(State(state): State<AppState>) -> Html<String> {
    Html(pages::requests(shell(&state)).into_string())
}

async fn request_page(State(state): State<AppState>, Path(id): Path<String>) -> Html<String> {
    Html(pages::request(shell(&state), &id).into_string())
}

async fn destinations_page(State(state): State<AppState>) -> Html<String> {
    Html(pages::destinations(shell(&state)).into_string())
}

async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let asset = [&*SCRIPT, &*STYLESHEET]
        .into_iter()
        .find(|a| a.path.rsplit('/').next() == Some(file.as_str()))
        .ok_or(ApiError::NotFound)?;
    Ok((
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        asset.body,
    )
        .into_response())
}

/// `GET /ui/api/overview`.
#[derive(Serialize)]
struct Overview {
    /// Every status, with 0 for those without requests.
    status_counts: Vec<StatusCount>,
    /// Oldest first, one a second.
    points: Vec<Point>,
}

/// One live update of the stream: the counts and the newest point.
#[derive(Serialize)]
struct Update {
    status_counts: Vec<StatusCount>,
    point: Option<Point>,
}

#[derive(Serialize)]
struct StatusCount {
    status: Status,
    count: u64,
}

async fn status_counts(state: &AppState) -> Result<Vec<StatusCount>, ApiError> {
    let counts = state.dashboard.status_counts(&state.service).await?;
    Ok(Status::ALL
        .iter()
        .map(|&status| StatusCount {
            status,
            count: counts
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n),
        })
        .collect())
}

async fn overview_json(State(state): State<AppState>) -> Result<Json<Overview>, ApiError> {
    Ok(Json(Overview {
        status_counts: status_counts(&state).await?,
        points: state.dashboard.points(),
    }))
}

/// An `overview` event every second until the client goes away or the service stops. The
/// status counts are read from the database (not this instance's memory), which is what
/// shows other instances' changes; at most once a second, shared by every open dashboard.
async fn stream(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let long_lived = state.long_lived.clone();
    let place = long_lived.try_hold().ok_or(ApiError::TooManyLongLived)?;
    let updates = futures_util::stream::unfold(
        (state, tokio::time::interval(history::INTERVAL)),
        |(state, mut ticks)| async move {
            tokio::select! {
                _ = state.dashboard.stopping.cancelled() => return None,
                _ = ticks.tick() => {}
            }
            let event = match status_counts(&state).await {
                Ok(counts) => Event::default()
                    .event("overview")
                    .json_data(Update {
                        status_counts: counts,
                        point: state.dashboard.latest(),
                    })
                    .unwrap_or_else(|_| Event::default().event("error")),
                // Said in the stream, which stays open: the database may come back.
                Err(err) => Event::default().event("error").data(err.to_string()),
            };
            Some((Ok::<_, Infallible>(event), (state, ticks)))
        },
    );
    let updates = long_lived.bounded(updates, place);
    let sse = Sse::new(updates).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)));
    Ok((crate::http::UNBUFFERED, sse))
}
