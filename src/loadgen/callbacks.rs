//! The loadgen's own callback receiver: it records when each callback arrives, by request
//! id, and afterwards matches arrivals to the requests the service accepted.
//!
//! A callback can arrive *before* the loadgen has read the `200` that carries its id (the
//! service may deliver faster than the client's task is scheduled). So arrivals are kept by
//! id without judging them, and the join with the accepted requests happens once the phase
//! has sent everything: an arrival whose id was accepted is a callback (the first one) or a
//! duplicate (any later one); any other id is unknown. Time-to-callback runs from the
//! request's due time to its first callback's arrival; the delivery span, from the phase's
//! start to the last of those first arrivals.
//!
//! It runs on its own listener and task, independent of the service: while the API is down,
//! callbacks still land here.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::{LoadgenError, describe_io};
use super::tally::{latency_histogram, record};

/// The callback path the receiver serves.
const CALLBACK_PATH: &str = "/callback";

/// How the wait for outstanding callbacks ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    AllArrived,
    TimedOut,
    Interrupted,
}

/// The callbacks of one phase, matched to its accepted requests.
#[derive(Debug, Clone)]
pub struct CallbackTally {
    /// Accepted requests, each of which should get a callback.
    pub expected: u64,
    /// Accepted requests that got at least one callback.
    pub received: u64,
    /// Callbacks beyond the first for an accepted request.
    pub duplicates: u64,
    /// Callbacks for ids the service never returned to this run.
    pub unknown: u64,
    /// Callbacks without a readable `request_id` (nor a `webhook-id` header).
    pub malformed: u64,
    /// From each accepted request's due time to its first callback.
    pub time_to_callback: Histogram<u64>,
    /// From the phase's start to the latest first callback of an accepted request; `None`
    /// if none arrived. Duplicates and unknown ids do not extend it: it measures when the
    /// service had delivered every result that it delivered.
    pub delivery_span: Option<Duration>,
}

#[derive(Default)]
struct Log {
    arrivals: HashMap<String, Vec<Instant>>,
    malformed: u64,
    /// Accepted ids with no callback yet, while a phase waits for them.
    awaited: HashSet<String>,
}

#[derive(Clone)]
struct Shared {
    log: Arc<Mutex<Log>>,
    /// How many awaited ids are still missing; the waiter wakes when it reaches 0.
    remaining: Arc<watch::Sender<usize>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Log> {
        // A handler that panicked mid-update leaves counts that are still counts.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running callback receiver.
pub struct CallbackReceiver {
    url: String,
    local_addr: SocketAddr,
    shared: Shared,
    /// `None` once shut down.
    task: Option<JoinHandle<()>>,
}

impl CallbackReceiver {
    /// Binds `host:port` (port 0: any free port) and starts serving `POST /callback`.
    pub async fn start(host: &str, port: u16) -> Result<Self, LoadgenError> {
        let listener = tokio::net::TcpListener::bind((host, port))
            .await
            .map_err(|err| LoadgenError::CallbackListen {
                addr: join_host_port(host, port),
                reason: describe_io(&err),
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|err| LoadgenError::CallbackListen {
                addr: join_host_port(host, port),
                reason: describe_io(&err),
            })?;
        let (remaining, _) = watch::channel(0);
        let shared = Shared {
            log: Arc::default(),
            remaining: Arc::new(remaining),
        };
        let router = Router::new()
            .route(CALLBACK_PATH, post(receive))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                tracing::error!(error = %err, "callback receiver stopped");
            }
        });
        Ok(Self {
            url: format!(
                "http://{}{CALLBACK_PATH}",
                join_host_port(host, local_addr.port())
            ),
            local_addr,
            shared,
            task: Some(task),
        })
    }

    /// The URL to put in `callback_url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until every id in `accepted` has had a callback, `timeout` has passed, or
    /// `stop` is cancelled, whichever comes first.
    pub async fn wait_for(
        &self,
        accepted: &[(String, Instant)],
        timeout: Duration,
        stop: &CancellationToken,
        arrived: &AtomicU64,
    ) -> WaitOutcome {
        let mut remaining = self.shared.remaining.subscribe();
        let expected = u64::try_from(accepted.len()).unwrap_or(u64::MAX);
        {
            let mut log = self.shared.lock();
            let missing: HashSet<String> = accepted
                .iter()
                .filter(|(id, _)| !log.arrivals.contains_key(id))
                .map(|(id, _)| id.clone())
                .collect();
            self.shared.remaining.send_replace(missing.len());
            log.awaited = missing;
        }
        let outcome = tokio::select! {
            biased;
            () = stop.cancelled() => WaitOutcome::Interrupted,
            // Runs at each change: the progress display shows how many have arrived.
            done = remaining.wait_for(|n| {
                let missing = u64::try_from(*n).unwrap_or(u64::MAX);
                arrived.store(expected.saturating_sub(missing), Ordering::Relaxed);
                *n == 0
            }) => match done {
                Ok(_) => WaitOutcome::AllArrived,
                // The sender lives as long as `self`: cannot happen while we hold it.
                Err(_) => WaitOutcome::TimedOut,
            },
            () = tokio::time::sleep(timeout) => WaitOutcome::TimedOut,
        };
        self.shared.lock().awaited.clear();
        outcome
    }

    /// Matches the callbacks received so far with `accepted` (requests of the phase that
    /// started at `phase_start`), and forgets them (a later phase starts from nothing).
    pub fn take_tally(
        &self,
        accepted: &[(String, Instant)],
        phase_start: Instant,
    ) -> CallbackTally {
        let (arrivals, malformed) = {
            let mut log = self.shared.lock();
            (
                std::mem::take(&mut log.arrivals),
                std::mem::take(&mut log.malformed),
            )
        };
        let mut tally = CallbackTally {
            expected: 0,
            received: 0,
            duplicates: 0,
            unknown: 0,
            malformed,
            time_to_callback: latency_histogram(),
            delivery_span: None,
        };
        let mut last_first: Option<Instant> = None;
        let mut due_by_id: HashMap<&str, Instant> = HashMap::with_capacity(accepted.len());
        for (id, due) in accepted {
            due_by_id.insert(id.as_str(), *due);
        }
        tally.expected = due_by_id.len() as u64;
        for (id, times) in &arrivals {
            let count = times.len() as u64;
            match due_by_id.get(id.as_str()) {
                Some(due) => {
                    tally.received += 1;
                    tally.duplicates += count - 1;
                    if let Some(&first) = times.iter().min() {
                        record(
                            &mut tally.time_to_callback,
                            first.saturating_duration_since(*due),
                        );
                        last_first = Some(last_first.map_or(first, |last| last.max(first)));
                    }
                }
                None => tally.unknown += count,
            }
        }
        tally.delivery_span = last_first.map(|last| last.saturating_duration_since(phase_start));
        tally
    }

    /// Stops listening.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            // Not a graceful stop: connections the service keeps alive would hold it open,
            // and what has arrived is already recorded.
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for CallbackReceiver {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// `host:port`, with an IPv6 literal in brackets as URLs and socket addresses write it.
fn join_host_port(host: &str, port: u16) -> String {
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[derive(Deserialize)]
struct CallbackId<'a> {
    #[serde(borrow)]
    request_id: Option<std::borrow::Cow<'a, str>>,
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    // Taken first: the time the callback arrived, not the time it was processed.
    let now = Instant::now();
    let id = serde_json::from_slice::<CallbackId>(&body)
        .ok()
        .and_then(|c| c.request_id.map(|id| id.into_owned()))
        .or_else(|| {
            headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
    let mut log = shared.lock();
    let Some(id) = id else {
        log.malformed += 1;
        return StatusCode::BAD_REQUEST;
    };
    if log.awaited.remove(&id) {
        shared.remaining.send_replace(log.awaited.len());
    }
    log.arrivals.entry(id).or_default().push(now);
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(join_host_port("::1", 9), "[::1]:9");
        assert_eq!(join_host_port("127.0.0.1", 9), "127.0.0.1:9");
        assert_eq!(join_host_port("localhost", 9), "localhost:9");
    }
}
