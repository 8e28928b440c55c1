//! One phase of a run: `--concurrency` workers send one mode's requests (sync or async) on
//! the shared schedule, and each counts what it saw in its own [`Tally`].
//!
//! A worker takes a ticket, waits for its due time (open loop), sends, reads the whole
//! answer (so the connection goes back to the pool and the latency includes the body), and
//! records the latency from the due time. Workers share only the HTTP client's connection
//! pool, the schedule's counter and a progress counter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::error::describe;
use super::payload::Payloads;
use super::schedule::{Pace, Schedule};
use super::tally::{Cause, Tally, record};
use crate::model::Mode;

/// What one phase needs to send its requests.
pub struct PhasePlan {
    pub mode: Mode,
    /// `{url}/sync` or `{url}/async`.
    pub endpoint: reqwest::Url,
    pub payloads: Payloads,
    pub schedule: Schedule,
    pub concurrency: usize,
    pub timeout: Duration,
}

/// What one phase measured.
pub struct PhaseOutcome {
    pub tally: Tally,
    /// From the schedule's start to the last answer.
    pub elapsed: Duration,
    /// Stopped by the stop token before the schedule ran out.
    pub interrupted: bool,
}

/// Runs the phase to the end of its schedule, or until `stop` is cancelled (requests in
/// flight then are abandoned and not counted). `completed` counts finished requests, for
/// the progress display.
pub async fn run(
    client: &reqwest::Client,
    plan: PhasePlan,
    stop: &CancellationToken,
    completed: Arc<AtomicU64>,
) -> PhaseOutcome {
    let plan = Arc::new(plan);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..plan.concurrency {
        workers.spawn(worker(
            client.clone(),
            Arc::clone(&plan),
            stop.clone(),
            Arc::clone(&completed),
        ));
    }
    let mut tally = Tally::default();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(worker_tally) => tally.merge(worker_tally),
            Err(err) => tracing::error!(error = %err, "load worker failed"),
        }
    }
    let start = plan.schedule.start();
    let elapsed = tally
        .last_done
        .map_or(Duration::ZERO, |done| done.saturating_duration_since(start));
    PhaseOutcome {
        tally,
        elapsed,
        interrupted: stop.is_cancelled(),
    }
}

async fn worker(
    client: reqwest::Client,
    plan: Arc<PhasePlan>,
    stop: CancellationToken,
    completed: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally::default();
    let content_type = HeaderValue::from_static("application/json");
    loop {
        if stop.is_cancelled() {
            break;
        }
        let Some(ticket) = plan.schedule.next(Instant::now()) else {
            break;
        };
        if let Pace::Open { .. } = plan.schedule.pace() {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(ticket.due.into()) => {}
            }
        }
        let request = client
            .post(plan.endpoint.clone())
            .header(CONTENT_TYPE, content_type.clone())
            .timeout(plan.timeout)
            .body(plan.payloads.body(ticket.index));
        let answer = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            answer = send(request) => answer,
        };
        let done = Instant::now();
        let latency = done.saturating_duration_since(ticket.due);
        match answer {
            Ok((status, body)) => {
                record(&mut tally.latency, latency);
                judge(&mut tally, plan.mode, status, &body, ticket.due, done);
            }
            Err(err) => {
                let cause = if err.is_timeout() {
                    Cause::Timeout
                } else if is_connection_error(&err) {
                    Cause::Connection
                } else {
                    Cause::Other
                };
                tally.failure(cause, describe(&err), done);
            }
        }
        completed.fetch_add(1, Ordering::Relaxed);
    }
    tally
}

/// Sends and reads the whole body: the request is done when its answer is.
async fn send(
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, Bytes), reqwest::Error> {
    let response = request.send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    Ok((status, body))
}

#[derive(Deserialize)]
struct Accepted<'a> {
    #[serde(borrow)]
    request_id: std::borrow::Cow<'a, str>,
}

/// Records an HTTP answer as a success or a failure. Sync: any 2xx is a success. Async: a
/// 2xx whose body names a `request_id`, which then awaits its callback.
fn judge(
    tally: &mut Tally,
    mode: Mode,
    status: reqwest::StatusCode,
    body: &[u8],
    due: Instant,
    done: Instant,
) {
    if !status.is_success() {
        let message = match status.canonical_reason() {
            Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
            None => format!("HTTP {}", status.as_u16()),
        };
        tally.failure(Cause::Status(status.as_u16()), message, done);
        return;
    }
    match mode {
        Mode::Sync => tally.success(done),
        Mode::Async => match serde_json::from_slice::<Accepted>(body) {
            Ok(accepted) => {
                tally.accepted.push((accepted.request_id.into_owned(), due));
                tally.success(done);
            }
            Err(_) => tally.failure(
                Cause::Other,
                format!("HTTP {} without a request_id", status.as_u16()),
                done,
            ),
        },
    }
}

/// Whether the connection failed: refused, reset, or closed before the answer was whole.
fn is_connection_error(err: &reqwest::Error) -> bool {
    if err.is_connect() {
        return true;
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>()
            && (hyper.is_incomplete_message() || hyper.is_closed() || hyper.is_canceled())
        {
            return true;
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            // An I/O error under a request is the socket's: reset, broken pipe, EOF.
            return true;
        }
        source = cause.source();
    }
    false
}
