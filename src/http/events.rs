//! `GET /requests/{id}/events`: a request's life as server-sent events, for clients that
//! cannot receive callbacks and should not poll.
//!
//! Two kinds of event: `attempt` (one per delivery attempt, the audit entry) and `status`
//! (the record, without attempts, each time its status is seen to change). The stream ends
//! after the status that is final. Statuses are reported as observed: a change that is
//! overtaken before the stream reads it (`processing` for a job claimed and finished in a
//! millisecond) may be skipped, but every attempt and the final status are always sent.
//!
//! Each event's id is the position after it, `ATTEMPTS.STATUS` (attempts sent, last status
//! sent), so a client reconnecting with `Last-Event-ID` gets exactly what it has not seen,
//! however long it was away: the attempts are stored, and the status is the current one.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorBody;
use super::extract::PathId;
use super::{ApiError, AppState};
use crate::model::{RequestRecord, Status};
use crate::service::Service;
use crate::store::Subscription;

/// Comment lines between events keep proxies and clients from timing the stream out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

/// Where a client is in a request's events: what the last event it received had sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Position {
    attempts: u32,
    status: Option<Status>,
}

impl Position {
    fn id(self) -> String {
        format!(
            "{}.{}",
            self.attempts,
            self.status.map_or("", |status| status.as_str())
        )
    }

    /// A `Last-Event-ID` this stream wrote; anything else starts from the beginning.
    fn parse(id: &str) -> Option<Self> {
        let (attempts, status) = id.split_once('.')?;
        Some(Position {
            attempts: attempts.parse().ok()?,
            status: match status {
                "" => None,
                name => Some(Status::parse(name)?),
            },
        })
    }
}

/// Stream a request's status changes and attempts.
///
/// The request's status changes and delivery attempts as they happen, ending after its final
/// status, or after APP_HTTP_STREAM_MAX_SECONDS: `Last-Event-ID` resumes after the event it
/// names.
#[utoipa::path(
    get,
    path = "/requests/{id}/events",
    operation_id = "streamRequestEvents",
    tag = "requests",
    params(
        ("id" = String, Path, description = "The request id"),
        ("Last-Event-ID" = Option<String>, Header,
            description = "The id of the last event received: the stream resumes after it"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `status` events (the record without \
            attempts) and `attempt` events (one audit entry each); each event's id is \
            `ATTEMPTS.STATUS`. Ends after the final status.", content_type = "text/event-stream",
            body = ServerSentEvent),
        (status = 404, description = "No such request", body = ErrorBody),
        (status = 503, description = "Every place for event streams and waits \
            (APP_HTTP_MAX_LONG_LIVED) is taken; `Retry-After`", body = ErrorBody),
    )
)]
async fn events(
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let place = state
        .long_lived
        .try_hold()
        .ok_or(ApiError::TooManyLongLived)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(Position::parse)
        .unwrap_or_default();
    let record = state
        .service
        .get(&id)
        .await?
        .ok_or(ApiError::RequestNotFound)?;
    // Subscribed once the request is known to exist (no watch on junk ids); a change between
    // that read and this subscription is not missed, as the stream reads again before it
    // first waits.
    let subscription = state.service.store.subscribe(&id);
    let mut stream = EventStream {
        service: state.service.clone(),
        subscription,
        progress: Progress {
            id,
            sent: resume,
            pending: VecDeque::new(),
            finished: false,
        },
    };
    stream.progress.catch_up(record);
    let events = futures_util::stream::unfold(stream, |mut stream| async move {
        let event = stream.next().await?;
        Some((Ok::<_, Infallible>(event), stream))
    });
    let events = state.long_lived.bounded(events, place);
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE));
    Ok((super::UNBUFFERED, sse))
}

/// One event of the stream, as the API document shows it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct ServerSentEvent {
    /// `status` or `attempt`.
    #[schema(pattern = "^(status|attempt)$")]
    event: String,
    /// The position after this event (`ATTEMPTS.STATUS`), for `Last-Event-ID`.
    id: String,
    /// JSON: a `RequestRecord` without `attempts` (`status`), or a `DeliveryAttempt`
    /// (`attempt`).
    data: String,
}

struct EventStream {
    service: std::sync::Arc<Service>,
    subscription: Subscription,
    progress: Progress,
}

/// What is sent and what is queued (apart from the subscription, which a wait borrows).
struct Progress {
    id: String,
    sent: Position,
    pending: VecDeque<Event>,
    /// The final status is queued: nothing follows it.
    finished: bool,
}

impl EventStream {
    /// The next event, waiting for the request to change if none is due; `None` once the
    /// final status is sent, or if the request can no longer be read (the client then
    /// reconnects with `Last-Event-ID` and loses nothing).
    async fn next(&mut self) -> Option<Event> {
        let progress = &mut self.progress;
        loop {
            if let Some(event) = progress.pending.pop_front() {
                return Some(event);
            }
            if progress.finished {
                return None;
            }
            let mut change = std::pin::pin!(self.subscription.next_change());
            change.as_mut().enable();
            match self.service.get(&progress.id).await {
                Ok(Some(record)) => progress.catch_up(record),
                Ok(None) => return None,
                Err(err) => {
                    tracing::warn!(request_id = %progress.id, error = %err, "event stream ended: the request could not be read");
                    return None;
                }
            }
            if progress.pending.is_empty() && !progress.finished {
                // At shutdown the stream ends; the client resumes elsewhere or later.
                if self.subscription.is_closed() {
                    return None;
                }
                change.await;
            }
        }
    }
}

impl Progress {
    /// Queues the events that take the client from what it was sent to `record`.
    fn catch_up(&mut self, mut record: RequestRecord) {
        let attempts = record.attempts.take().unwrap_or_default();
        let already_sent = self.sent.attempts;
        for attempt in attempts
            .into_iter()
            .filter(|attempt| attempt.attempt > already_sent)
        {
            self.sent.attempts = attempt.attempt;
            let event = Event::default()
                .event("attempt")
                .id(self.sent.id())
                .json_data(&attempt);
            self.queue(event);
        }
        if self.sent.status != Some(record.status) {
            self.sent.status = Some(record.status);
            self.finished = record.status.is_finished();
            let event = Event::default()
                .event("status")
                .id(self.sent.id())
                .json_data(&record);
            self.queue(event);
        } else if record.status.is_finished() {
            // Resumed after the final status: there is nothing more to send.
            self.finished = true;
        }
    }

    fn queue(&mut self, event: Result<Event, axum::Error>) {
        match event {
            Ok(event) => self.pending.push_back(event),
            Err(err) => {
                tracing::error!(request_id = %self.id, error = %err, "an event could not be encoded")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_names_the_position_after_it() {
        for position in [
            Position::default(),
            Position {
                attempts: 3,
                status: Some(Status::CallbackPending),
            },
        ] {
            assert_eq!(Position::parse(&position.id()), Some(position));
        }
        for foreign in ["", "abc", "1", "x.pending", "1.done", "-1.pending"] {
            assert_eq!(Position::parse(foreign), None, "{foreign:?}");
        }
    }
}
