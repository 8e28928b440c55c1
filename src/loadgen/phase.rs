//! One phase of a run: `--concurrency` workers send one mode's requests (sync or async) on
//! the shared schedule, and each counts what it saw in its own [`Tally`]. Worker *i* sends
//! to destination *i mod n* (one per `--url`) for the whole phase.
//!
//! A worker takes a ticket, waits for its due time (open loop), sends on its own keep-alive
//! connection, reads the whole answer (the latency includes the body), and records the
//! latency from the due time. Workers share only the schedule's counter and a progress
//! counter.
//!
//! The workers run on `--threads` threads, each with its own single-threaded tokio runtime,
//! not on the process's work-stealing runtime: a worker's connection then always wakes the
//! thread it lives on, with no stealing and no cross-thread wake-up. Measured against the
//! release service on the 2-core machine, this took the loadgen from 0.78 to 0.95–0.99 of
//! wrk's request rate (see bench/README.md).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{StatusCode, Uri};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::connection::{Connection, ExchangeError, Target};
use super::error::describe;
use super::payload::{Payloads, batch_body};
use super::schedule::{Pace, Schedule, Ticket};
use super::tally::{Cause, Tally, record};
use crate::model::Mode;

/// One instance of the service a phase sends to.
pub struct Destination {
    pub target: Arc<Target>,
    /// `/sync` or `/async`, under that instance's base URL's path.
    pub path: Uri,
}

/// What one phase needs to send its requests.
pub struct PhasePlan {
    pub mode: Mode,
    /// One per `--url`, in the order given; never empty, and no longer than `concurrency`
    /// (so every destination has a worker).
    pub destinations: Vec<Destination>,
    pub payloads: Payloads,
    pub schedule: Schedule,
    pub concurrency: usize,
    /// Threads the workers run on, each with its own single-threaded runtime.
    pub threads: usize,
    pub timeout: Duration,
    /// Requests per exchange: above 1, async requests go together to `POST /async/batch`.
    pub batch: usize,
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
    plan: PhasePlan,
    stop: &CancellationToken,
    completed: Arc<AtomicU64>,
) -> Result<PhaseOutcome, std::io::Error> {
    let plan = Arc::new(plan);
    let threads = plan.threads.clamp(1, plan.concurrency.max(1));
    let mut results = Vec::with_capacity(threads);
    // Workers are numbered across threads, so that the round-robin over destinations is
    // over all workers and not restarted on each thread.
    let mut first_worker = 0;
    for t in 0..threads {
        // Workers spread evenly: the first `concurrency % threads` threads take one more.
        let workers = plan.concurrency / threads + usize::from(t < plan.concurrency % threads);
        let numbers = first_worker..first_worker + workers;
        first_worker += workers;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let plan = Arc::clone(&plan);
        let stop = stop.clone();
        let completed = Arc::clone(&completed);
        std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || {
                let tally = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|runtime| runtime.block_on(run_workers(numbers, plan, stop, completed)));
                let _ = sender.send(tally);
            })?;
        results.push(receiver);
    }
    let mut tally = Tally::default();
    for result in results {
        match result.await {
            Ok(Ok(thread_tally)) => tally.merge(thread_tally),
            Ok(Err(err)) => return Err(err),
            Err(_) => tracing::error!("a load thread ended without its counts"),
        }
    }
    let start = plan.schedule.start();
    let elapsed = tally
        .last_done
        .map_or(Duration::ZERO, |done| done.saturating_duration_since(start));
    Ok(PhaseOutcome {
        tally,
        elapsed,
        interrupted: stop.is_cancelled(),
    })
}

/// Runs the workers numbered `numbers` on the current thread's runtime and merges their
/// counts.
async fn run_workers(
    numbers: Range<usize>,
    plan: Arc<PhasePlan>,
    stop: CancellationToken,
    completed: Arc<AtomicU64>,
) -> Tally {
    let mut workers = tokio::task::JoinSet::new();
    for number in numbers {
        workers.spawn(worker(
            Arc::clone(&plan),
            number,
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
    tally
}

/// Worker number `number`: sends to destination `number mod n` until the schedule runs out.
async fn worker(
    plan: Arc<PhasePlan>,
    number: usize,
    stop: CancellationToken,
    completed: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally::default();
    let destination = &plan.destinations[number % plan.destinations.len()];
    let mut connection = Connection::new(Arc::clone(&destination.target));
    let mut tickets: Vec<Ticket> = Vec::with_capacity(plan.batch);
    loop {
        if stop.is_cancelled() {
            break;
        }
        tickets.clear();
        while tickets.len() < plan.batch.max(1) {
            match plan.schedule.next(Instant::now()) {
                Some(ticket) => tickets.push(ticket),
                None => break,
            }
        }
        // A batch leaves when its last request is due.
        let Some(last) = tickets.last() else {
            break;
        };
        if let Pace::Open { .. } = plan.schedule.pace() {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(last.due.into()) => {}
            }
        }
        let body = if plan.batch > 1 {
            batch_body(&plan.payloads, tickets.iter().map(|t| t.index))
        } else {
            plan.payloads.body(last.index)
        };
        let exchange = tokio::time::timeout(
            plan.timeout,
            connection.post(&destination.path, Bytes::from(body)),
        );
        let answer = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            answer = exchange => answer,
        };
        let done = Instant::now();
        match answer {
            Ok(Ok((status, body))) => {
                for ticket in &tickets {
                    record(
                        &mut tally.latency,
                        done.saturating_duration_since(ticket.due),
                    );
                }
                if plan.batch > 1 {
                    judge_batch(&mut tally, status, &body, &tickets, done);
                } else {
                    judge(&mut tally, plan.mode, status, &body, last.due, done);
                }
            }
            Ok(Err(err)) => {
                for _ in &tickets {
                    tally.failure(cause(&err), describe(&err), done);
                }
            }
            Err(_elapsed) => {
                for _ in &tickets {
                    tally.failure(Cause::Timeout, "timed out".to_string(), done);
                }
            }
        }
        completed.fetch_add(tickets.len() as u64, Ordering::Relaxed);
    }
    tally
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
    status: StatusCode,
    body: &[u8],
    due: Instant,
    done: Instant,
) {
    if !status.is_success() {
        tally.sample_answer(status.as_u16(), body);
        tally.failure(Cause::Status(status.as_u16()), http_status(status), done);
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

fn http_status(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

#[derive(Deserialize)]
struct BatchAnswer {
    results: Vec<BatchResult>,
}

#[derive(Deserialize)]
struct BatchResult {
    status: String,
    request_id: Option<String>,
}

/// Records a `POST /async/batch` answer: each item accepted with a `request_id` awaits its
/// callback; a refused item, or every item of a refused batch, is a failure.
fn judge_batch(
    tally: &mut Tally,
    status: StatusCode,
    body: &[u8],
    tickets: &[Ticket],
    done: Instant,
) {
    if !status.is_success() {
        tally.sample_answer(status.as_u16(), body);
        for _ in tickets {
            tally.failure(Cause::Status(status.as_u16()), http_status(status), done);
        }
        return;
    }
    let results = match serde_json::from_slice::<BatchAnswer>(body) {
        Ok(answer) if answer.results.len() == tickets.len() => answer.results,
        _ => {
            for _ in tickets {
                tally.failure(
                    Cause::Other,
                    format!("HTTP {} without one result per request", status.as_u16()),
                    done,
                );
            }
            return;
        }
    };
    for (ticket, result) in tickets.iter().zip(results) {
        match result.request_id {
            Some(id) if result.status == "accepted" => {
                tally.accepted.push((id, ticket.due));
                tally.success(done);
            }
            _ => tally.failure(Cause::Other, "refused within its batch".to_string(), done),
        }
    }
}

/// Why an exchange failed: the connection (refused, reset, closed before the answer was
/// whole), or something else (an answer that is not HTTP).
fn cause(err: &ExchangeError) -> Cause {
    match err {
        ExchangeError::Connect(_) => Cause::Connection,
        ExchangeError::Http(err) if err.is_parse() || err.is_parse_status() || err.is_user() => {
            Cause::Other
        }
        ExchangeError::Http(_) => Cause::Connection,
    }
}
