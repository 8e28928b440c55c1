//! The dashboard's last 15 minutes: once a second this instance's own counters are read from
//! its metrics and kept in a ring, from which the overview's charts are drawn.
//!
//! The counters are read from the OpenMetrics text that `GET /metrics` serves, not from new
//! hooks in the code that counts: the charts then show exactly what Prometheus would scrape,
//! and counting stays in one place. A histogram's buckets are only public in that text.
//! On PostgreSQL each instance keeps its own history: the charts are this instance's, while
//! the status counts (read from the database) are everyone's.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::service::{Service, ServiceError};
use crate::store::StatusCounts;

/// How far back the charts go.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// How often a sample is taken (and a live update sent).
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Status counts younger than this are shared rather than read again: a little under the
/// stream's interval, so that every update still shows a fresh count.
const COUNTS_MAX_AGE: Duration = Duration::from_millis(900);
/// The time-to-callback quantiles are over this many samples: one second holds too few
/// callbacks for a p99 worth drawing.
const QUANTILE_SPAN: usize = 10;

/// The cumulative counters of one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// Unix milliseconds.
    pub at: i64,
    pub sync_requests: u64,
    pub async_requests: u64,
    /// Calls of `POST /async/batch` (each may hold up to 1000 requests; no counter says how
    /// many were accepted).
    pub batch_calls: u64,
    pub delivered: u64,
    /// Failed delivery attempts by cause (the `outcome` of `delivery_attempts`).
    pub failures: BTreeMap<String, u64>,
    /// `callback_delivery_seconds` buckets: (upper bound in seconds, cumulative count).
    pub time_to_callback: Vec<(f64, u64)>,
    pub queue_size: u64,
    pub queue_capacity: u64,
    pub in_flight: u64,
    pub workers: u64,
}

/// One point of the charts: rates over the second before `at`, and gauges at `at`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    pub at: i64,
    pub sync_per_s: f64,
    pub async_per_s: f64,
    pub batch_calls_per_s: f64,
    pub delivered_per_s: f64,
    /// Over the last [`QUANTILE_SPAN`] seconds; `None` without callbacks in them.
    pub time_to_callback_p50_ms: Option<f64>,
    pub time_to_callback_p99_ms: Option<f64>,
    pub queue_size: u64,
    pub queue_capacity: u64,
    pub in_flight: u64,
    pub workers: u64,
    pub failures_per_s: BTreeMap<String, f64>,
}

/// The ring of samples, the last status counts read, and the signal that ends the live
/// streams at shutdown (an open stream would otherwise hold the server's graceful shutdown
/// for its whole grace period).
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    counts: tokio::sync::Mutex<Option<(Instant, StatusCounts)>>,
    pub stopping: CancellationToken,
}

impl Default for History {
    fn default() -> Self {
        Self {
            samples: Mutex::new(VecDeque::new()),
            counts: tokio::sync::Mutex::new(None),
            stopping: CancellationToken::new(),
        }
    }
}

impl History {
    /// The number of requests in each status, read from the database at most once per
    /// [`COUNTS_MAX_AGE`] however many dashboards are open: each stream asks every second, and
    /// on a large table the count is a scan of an index. Callers that ask while a read is
    /// under way wait for it and share it.
    pub async fn status_counts(&self, service: &Service) -> Result<StatusCounts, ServiceError> {
        let mut cached = self.counts.lock().await;
        if let Some((at, counts)) = cached.as_ref()
            && at.elapsed() < COUNTS_MAX_AGE
        {
            return Ok(counts.clone());
        }
        let counts = service.status_counts().await?;
        *cached = Some((Instant::now(), counts.clone()));
        Ok(counts)
    }

    fn samples(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn push(&self, sample: Sample) {
        let capacity = (WINDOW.as_secs() / INTERVAL.as_secs()) as usize + QUANTILE_SPAN + 1;
        let mut samples = self.samples();
        while samples.len() >= capacity {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Every point of the window, oldest first.
    pub fn points(&self) -> Vec<Point> {
        let samples = self.samples();
        let samples: Vec<&Sample> = samples.iter().collect();
        let skip = samples.len().saturating_sub(WINDOW.as_secs() as usize + 1);
        (skip.max(1)..samples.len())
            .map(|i| point(&samples, i))
            .collect()
    }

    /// The newest point, once there are two samples.
    pub fn latest(&self) -> Option<Point> {
        let samples = self.samples();
        let samples: Vec<&Sample> = samples.iter().collect();
        (samples.len() >= 2).then(|| point(&samples, samples.len() - 1))
    }
}

fn point(samples: &[&Sample], i: usize) -> Point {
    let (now, before) = (samples[i], samples[i - 1]);
    let seconds = ((now.at - before.at) as f64 / 1000.0).max(0.001);
    let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / seconds;
    let span_start = samples[i.saturating_sub(QUANTILE_SPAN)];
    let callbacks = bucket_delta(&now.time_to_callback, &span_start.time_to_callback);
    Point {
        at: now.at,
        sync_per_s: rate(now.sync_requests, before.sync_requests),
        async_per_s: rate(now.async_requests, before.async_requests),
        batch_calls_per_s: rate(now.batch_calls, before.batch_calls),
        delivered_per_s: rate(now.delivered, before.delivered),
        time_to_callback_p50_ms: quantile(&callbacks, 0.5).map(|s| s * 1000.0),
        time_to_callback_p99_ms: quantile(&callbacks, 0.99).map(|s| s * 1000.0),
        queue_size: now.queue_size,
        queue_capacity: now.queue_capacity,
        in_flight: now.in_flight,
        workers: now.workers,
        failures_per_s: now
            .failures
            .iter()
            .map(|(cause, n)| {
                let was = before.failures.get(cause).copied().unwrap_or(0);
                (cause.clone(), rate(*n, was))
            })
            .collect(),
    }
}

/// Cumulative bucket counts of `now` minus those of `before` (same bounds).
fn bucket_delta(now: &[(f64, u64)], before: &[(f64, u64)]) -> Vec<(f64, u64)> {
    now.iter()
        .map(|&(bound, n)| {
            let was = before
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0, |(_, n)| *n);
            (bound, n.saturating_sub(was))
        })
        .collect()
}

/// The `q` quantile of cumulative buckets, interpolated linearly within its bucket as
/// Prometheus' `histogram_quantile` does; `None` when the buckets are empty. A quantile in the
/// `+Inf` bucket is reported as the highest finite bound.
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for &(bound, count) in buckets {
        if count as f64 >= rank {
            if bound.is_infinite() {
                return Some(lower.0);
            }
            let within = (count - lower.1) as f64;
            let fraction = if within > 0.0 {
                (rank - lower.1 as f64) / within
            } else {
                1.0
            };
            return Some(lower.0 + (bound - lower.0) * fraction);
        }
        lower = (bound, count);
    }
    Some(lower.0)
}

/// Reads the counters the dashboard draws from the OpenMetrics text of `GET /metrics`.
pub fn parse_metrics(text: &str) -> Sample {
    let mut sample = Sample::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let label = |key: &str| {
            labels.split(',').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                (k == key).then(|| v.trim_matches('"'))
            })
        };
        let count = value.parse::<f64>().map_or(0, |v| v as u64);
        match name {
            "syncasync_http_requests_total" if label("method") == Some("POST") => {
                match label("endpoint") {
                    Some("/sync") => sample.sync_requests += count,
                    Some("/async") => sample.async_requests += count,
                    Some("/async/batch") => sample.batch_calls += count,
                    _ => {}
                }
            }
            "syncasync_jobs_finished_total" if label("status") == Some("callback_success") => {
                sample.delivered += count;
            }
            "syncasync_delivery_attempts_total" => {
                if let Some(outcome) = label("outcome").filter(|o| *o != "success") {
                    *sample.failures.entry(outcome.to_string()).or_default() += count;
                }
            }
            "syncasync_callback_delivery_seconds_bucket" => {
                let bound = match label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => le.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                sample.time_to_callback.push((bound, count));
            }
            _ => {}
        }
    }
    sample
}

/// Takes a sample every [`INTERVAL`] until `shutdown`, then stops the live streams.
pub async fn run(service: Service, history: std::sync::Arc<History>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        // The metrics' own encoding, not `Service::metrics_text`: that one also resets the
        // per-destination gauges, which a concurrent scrape would see half rebuilt.
        let mut sample = parse_metrics(&service.metrics.encode());
        sample.at = Utc::now().timestamp_millis();
        sample.queue_size = service.store.queue_size().await.unwrap_or(0);
        sample.queue_capacity = service.queue_capacity;
        sample.in_flight = service.workers.active();
        sample.workers = u64::from(service.worker_count);
        history.push(sample);
    }
    history.stopping.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP syncasync_http_requests HTTP requests
syncasync_http_requests_total{method="POST",endpoint="/async",status="202"} 7
syncasync_http_requests_total{method="POST",endpoint="/async",status="503"} 1
syncasync_http_requests_total{method="POST",endpoint="/sync",status="200"} 3
syncasync_http_requests_total{method="POST",endpoint="/async/batch",status="200"} 2
syncasync_http_requests_total{method="GET",endpoint="/requests",status="200"} 9
syncasync_jobs_finished_total{status="callback_success"} 5
syncasync_jobs_finished_total{status="callback_failed"} 2
syncasync_delivery_attempts_total{outcome="success"} 5
syncasync_delivery_attempts_total{outcome="http_error"} 4
syncasync_callback_delivery_seconds_bucket{le="0.1"} 1
syncasync_callback_delivery_seconds_bucket{le="0.2"} 5
syncasync_callback_delivery_seconds_bucket{le="+Inf"} 5
"#;

    #[test]
    fn reads_the_counters_it_draws() {
        let s = parse_metrics(TEXT);
        assert_eq!((s.sync_requests, s.async_requests, s.delivered), (3, 8, 5));
        assert_eq!(s.batch_calls, 2);
        assert_eq!(s.failures.get("http_error"), Some(&4));
        assert!(!s.failures.contains_key("success"));
        assert_eq!(s.time_to_callback.len(), 3);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let buckets = [(0.1, 1), (0.2, 5), (f64::INFINITY, 5)];
        let p50 = quantile(&buckets, 0.5).unwrap();
        // Rank 2.5 of 5: 1.5 of the 4 in (0.1, 0.2].
        assert!((p50 - 0.1375).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(&[(0.1, 0), (f64::INFINITY, 0)], 0.5), None);
        assert_eq!(quantile(&[(0.1, 0), (f64::INFINITY, 3)], 0.99), Some(0.1));
    }

    #[test]
    fn points_are_rates_between_samples() {
        let history = History::default();
        let mut first = parse_metrics(TEXT);
        first.at = 1_000;
        let mut second = first.clone();
        second.at = 3_000;
        second.async_requests += 4;
        second.failures.insert("timeout".into(), 2);
        history.push(first);
        assert_eq!(history.latest(), None);
        history.push(second);
        let point = history.latest().unwrap();
        assert_eq!(point.async_per_s, 2.0);
        assert_eq!(point.sync_per_s, 0.0);
        assert_eq!(point.failures_per_s.get("timeout"), Some(&1.0));
        assert_eq!(history.points().len(), 1);
    }
}
