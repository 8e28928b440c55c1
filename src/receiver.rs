//! `syncasync receiver`: a callback receiver for trying the service by hand and rehearsing
//! failures (SPEC §8).
//!
//! It keeps the last `--max-stored` callbacks in memory, and counts duplicates by
//! `webhook-id`/`request_id` among the last `--max-stored` ids it accepted: a sender chooses
//! both, so older ones are forgotten and a long run cannot exhaust memory. It can fail a
//! share of callbacks (`--fail-rate`) or answer slowly (`--delay-ms`) to exercise retries, and
//! with `--secret` verifies Standard Webhooks signatures, refusing bad ones with 401.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::delivery::signing::Signer;

/// How far a `webhook-timestamp` may be from the receiver's clock (Standard Webhooks'
/// recommended tolerance): older signed messages are replays.
const TIMESTAMP_TOLERANCE_SECONDS: i64 = 300;

#[derive(Debug, Clone, clap::Args)]
pub struct ReceiverArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 8001)]
    pub port: u16,
    /// Share of callbacks answered with 500, from 0.0 to 1.0 (to rehearse retries).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub fail_rate: f64,
    /// Milliseconds to wait before answering each callback.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Verify `webhook-signature` with this `whsec_…` secret (several, space-separated);
    /// callbacks with a missing or bad signature get 401.
    #[arg(long, env = "RECEIVER_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Callbacks kept in memory, and ids remembered for duplicate counting; the oldest are
    /// dropped beyond it (a repeat of a forgotten id counts as new). At most 1,000,000: each
    /// kept callback holds its body, so more could take the machine's memory.
    #[arg(long, default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_stored: u64,
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number between 0 and 1")),
    }
}

/// One callback as received.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedCallback {
    pub request_id: Option<String>,
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub received_at: DateTime<Utc>,
    pub attempt: Option<u32>,
    pub webhook_id: Option<String>,
    /// Whether the signature was checked and valid (`null` without `--secret`).
    pub signature_valid: Option<bool>,
    /// What the receiver answered.
    pub status_code: u16,
    pub duplicate: bool,
    pub payload: Value,
}

/// Counters of `GET /stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceiverStats {
    pub total_received: u64,
    pub unique_request_ids: u64,
    pub duplicates: u64,
    pub accepted: u64,
    pub failed_on_purpose: u64,
    pub signature_failures: u64,
    pub stored: u64,
    /// Ids remembered for duplicate counting (at most `--max-stored`).
    #[serde(default)]
    pub tracked_ids: u64,
}

struct Log {
    callbacks: VecDeque<ReceivedCallback>,
    /// Ids that were accepted (2xx) recently: a later delivery of one is a duplicate.
    accepted_ids: RecentIds,
    stats: ReceiverStats,
}

impl Log {
    fn new(max_stored: usize) -> Self {
        Self {
            callbacks: VecDeque::new(),
            accepted_ids: RecentIds::new(max_stored),
            stats: ReceiverStats::default(),
        }
    }
}

/// The last `capacity` distinct ids accepted, the oldest forgotten first. Kept as digests: a
/// sender chooses the ids, and a long one then costs no more memory than a short one.
struct RecentIds {
    capacity: usize,
    oldest_first: VecDeque<IdDigest>,
    remembered: HashSet<IdDigest>,
}

/// 128 bits of SHA-256: distinct ids collide with negligible probability, even ids chosen
/// to collide.
type IdDigest = [u8; 16];

impl RecentIds {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            oldest_first: VecDeque::new(),
            remembered: HashSet::new(),
        }
    }

    /// Records an acceptance of `id`; whether it was accepted before (and not yet forgotten).
    fn accept(&mut self, id: &str) -> bool {
        use sha2::{Digest, Sha256};
        let mut digest = IdDigest::default();
        digest.copy_from_slice(&Sha256::digest(id.as_bytes())[..16]);
        if self.remembered.contains(&digest) {
            return true;
        }
        while self.oldest_first.len() >= self.capacity {
            if let Some(oldest) = self.oldest_first.pop_front() {
                self.remembered.remove(&oldest);
            }
        }
        self.oldest_first.push_back(digest);
        self.remembered.insert(digest);
        false
    }

    fn len(&self) -> usize {
        self.oldest_first.len()
    }
}

#[derive(Clone)]
struct ReceiverState {
    log: Arc<Mutex<Log>>,
    signer: Option<Signer>,
    fail_rate: f64,
    delay: Duration,
    max_stored: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("--secret: {0}")]
    Secret(#[from] crate::delivery::signing::SecretError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

/// Builds the receiver's router.
pub fn router(args: &ReceiverArgs) -> Result<Router, ReceiverError> {
    let signer = args
        .secret
        .as_deref()
        .map(Signer::from_secrets)
        .transpose()?;
    let max_stored = usize::try_from(args.max_stored).unwrap_or(usize::MAX);
    let state = ReceiverState {
        log: Arc::new(Mutex::new(Log::new(max_stored))),
        signer,
        fail_rate: args.fail_rate,
        delay: Duration::from_millis(args.delay_ms),
        max_stored,
    };
    Ok(Router::new()
        .route("/callback", post(receive))
        .route("/callbacks", get(list).delete(clear))
        .route("/callbacks/{request_id}", get(by_request))
        .route("/stats", get(stats))
        .with_state(state))
}

/// Runs the receiver until `stop` is cancelled.
pub async fn run(args: ReceiverArgs, stop: CancellationToken) -> Result<(), ReceiverError> {
    let router = router(&args)?;
    let addr = SocketAddr::new(args.host, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ReceiverError::Bind { addr, source })?;
    tracing::info!(
        address = %addr,
        "receiver listening: POST /callback (the callback URL: http://{addr}/callback), \
         GET /callbacks?limit=N, GET /callbacks/{{request_id}}, DELETE /callbacks, GET /stats"
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .map_err(ReceiverError::Serve)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let request_id = payload["request_id"].as_str().map(str::to_string);
    let webhook_id = header(&headers, "webhook-id").map(str::to_string);
    let attempt = header(&headers, "x-attempt").and_then(|v| v.parse().ok());
    let logged_id = request_id.clone().or_else(|| webhook_id.clone());

    let signature_valid = state
        .signer
        .as_ref()
        .map(|signer| verify(signer, &headers, &body));
    let fail_on_purpose = state.fail_rate > 0.0 && rand::rng().random_bool(state.fail_rate);
    let status = match signature_valid {
        Some(false) => StatusCode::UNAUTHORIZED,
        _ if fail_on_purpose => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    };

    let mut log = match state.log.lock() {
        Ok(log) => log,
        Err(poisoned) => poisoned.into_inner(),
    };
    let key = webhook_id.clone().or_else(|| request_id.clone());
    let mut duplicate = false;
    log.stats.total_received += 1;
    match status {
        StatusCode::UNAUTHORIZED => log.stats.signature_failures += 1,
        StatusCode::OK => {
            log.stats.accepted += 1;
            if let Some(key) = key {
                duplicate = log.accepted_ids.accept(&key);
                if duplicate {
                    log.stats.duplicates += 1;
                } else {
                    log.stats.unique_request_ids += 1;
                }
                log.stats.tracked_ids = log.accepted_ids.len() as u64;
            }
        }
        _ => log.stats.failed_on_purpose += 1,
    }
    log.callbacks.push_back(ReceivedCallback {
        request_id,
        received_at: Utc::now(),
        attempt,
        webhook_id,
        signature_valid,
        status_code: status.as_u16(),
        duplicate,
        payload,
    });
    while log.callbacks.len() > state.max_stored {
        log.callbacks.pop_front();
    }
    log.stats.stored = log.callbacks.len() as u64;
    drop(log);
    tracing::info!(
        request_id = logged_id.as_deref().unwrap_or("-"),
        attempt,
        status = status.as_u16(),
        duplicate,
        "callback"
    );

    let body = match status {
        StatusCode::OK => json!({"status": "received"}),
        StatusCode::UNAUTHORIZED => json!({"status": "error", "error": "invalid signature"}),
        _ => json!({"status": "error", "error": "failing on purpose (--fail-rate)"}),
    };
    (status, Json(body))
}

/// Checks `webhook-signature` against every configured secret, and that the timestamp is
/// recent (an old, validly signed message is a replay).
fn verify(signer: &Signer, headers: &HeaderMap, body: &[u8]) -> bool {
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header(headers, "webhook-id"),
        header(headers, "webhook-timestamp").and_then(|t| t.parse::<i64>().ok()),
        header(headers, "webhook-signature"),
    ) else {
        return false;
    };
    if (Utc::now().timestamp() - timestamp).abs() > TIMESTAMP_TOLERANCE_SECONDS {
        return false;
    }
    signer.verify(id, timestamp, body, signatures)
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list(State(state): State<ReceiverState>, Query(query): Query<ListQuery>) -> Json<Value> {
    let log = match state.log.lock() {
        Ok(log) => log,
        Err(poisoned) => poisoned.into_inner(),
    };
    let limit = query.limit.unwrap_or(100).min(state.max_stored);
    let callbacks: Vec<&ReceivedCallback> = log.callbacks.iter().rev().take(limit).collect();
    Json(json!({"total": log.callbacks.len(), "callbacks": callbacks}))
}

async fn by_request(
    State(state): State<ReceiverState>,
    Path(request_id): Path<String>,
) -> impl IntoResponse {
    let log = match state.log.lock() {
        Ok(log) => log,
        Err(poisoned) => poisoned.into_inner(),
    };
    let callbacks: Vec<&ReceivedCallback> = log
        .callbacks
        .iter()
        .filter(|c| c.request_id.as_deref() == Some(request_id.as_str()))
        .collect();
    if callbacks.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"status": "error", "error": "No callback received for this request"})),
        );
    }
    (
        StatusCode::OK,
        Json(json!({"request_id": request_id, "callbacks": callbacks})),
    )
}

async fn clear(State(state): State<ReceiverState>) -> Json<Value> {
    let mut log = match state.log.lock() {
        Ok(log) => log,
        Err(poisoned) => poisoned.into_inner(),
    };
    let cleared = log.callbacks.len();
    *log = Log::new(state.max_stored);
    Json(json!({"status": "cleared", "cleared": cleared}))
}

/// The body of `GET /stats`: the counters, and the count of unique request ids also under
/// `unique_requests`, the original receiver's name for it, so that its scripts read it.
#[derive(Serialize)]
struct StatsBody {
    #[serde(flatten)]
    stats: ReceiverStats,
    unique_requests: u64,
}

async fn stats(State(state): State<ReceiverState>) -> Json<StatsBody> {
    let log = match state.log.lock() {
        Ok(log) => log,
        Err(poisoned) => poisoned.into_inner(),
    };
    Json(StatsBody {
        stats: log.stats.clone(),
        unique_requests: log.stats.unique_request_ids,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::ReceiverArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReceiverArgs,
    }

    #[test]
    fn what_it_keeps_in_memory_is_bounded() {
        let parse = |n: &str| Cli::try_parse_from(["receiver", "--max-stored", n]).map(|c| c.args);
        assert_eq!(parse("1000000").unwrap().max_stored, 1_000_000);
        for absurd in ["0", "1000001", "18446744073709551615"] {
            assert!(parse(absurd).is_err(), "{absurd}");
        }
    }
}
