//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format.
//!
//! Counters and histograms are updated where things happen (the HTTP middleware, the
//! delivery dispatcher); gauges that describe state (queue depth, pool use) are read when
//! scraped, so they are never stale and cost nothing between scrapes. Labels come from fixed
//! sets, whatever a client sends: endpoints are route templates (`/requests/{id}`) or
//! `unmatched`, never raw paths; methods are the standard ones or `other`.

use std::fmt::Write;
use std::sync::atomic::AtomicU64;

use axum::http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry, Unit};

/// The content type of the text `GET /metrics` returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: MethodLabel,
    pub endpoint: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub method: MethodLabel,
    pub endpoint: String,
}

/// An HTTP method as a label: one of the nine standard methods, or `other` for any token a
/// client made up (each would otherwise be a new series, and a method can be kilobytes long).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct MethodLabel(&'static str);

impl MethodLabel {
    /// RFC 9110's methods and PATCH (RFC 5789); methods are case-sensitive.
    const STANDARD: [&'static str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl From<&Method> for MethodLabel {
    fn from(method: &Method) -> Self {
        let name = Self::STANDARD
            .into_iter()
            .find(|standard| *standard == method.as_str());
        MethodLabel(name.unwrap_or("other"))
    }
}

impl EncodeLabelValue for MethodLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0)
    }
}

/// How a delivery attempt ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum AttemptOutcome {
    success,
    http_error,
    timeout,
    connection_error,
    blocked,
    other,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub outcome: AttemptOutcome,
}

/// The final state of an async request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum FinalStatus {
    callback_success,
    callback_failed,
    cancelled,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinalLabels {
    pub status: FinalStatus,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    pub state: &'static str,
}

/// A callback destination: one of the [`TOP_DESTINATIONS`] busiest, or `other` for the rest,
/// so that the number of series stays bounded however many destinations callers name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination: String,
}

/// Destinations given series of their own in `/metrics`.
pub const TOP_DESTINATIONS: usize = 10;

/// Longest destination label: a host name may run to 253 characters, which a caller chooses.
const MAX_DESTINATION_LABEL: usize = 100;

impl DestinationLabels {
    /// `destination`'s series: its name, cut to [`MAX_DESTINATION_LABEL`] characters with
    /// `…` (two names cut to the same share a series).
    pub fn of(destination: &str) -> Self {
        let destination = match destination.char_indices().nth(MAX_DESTINATION_LABEL) {
            Some((cut, _)) => format!("{}…", &destination[..cut]),
            None => destination.to_string(),
        };
        Self { destination }
    }

    /// The destinations beyond the busiest, summed.
    pub fn other() -> Self {
        Self {
            destination: "other".into(),
        }
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies from 0.5 ms to about 33 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_request_duration: HistogramFamily<EndpointLabels>,
    pub jobs_claimed: Counter,
    pub jobs_finished: Family<FinalLabels, Counter>,
    pub delivery_attempts: Family<AttemptLabels, Counter>,
    pub delivery_attempt_duration: Histogram,
    pub callback_delivery: Histogram,
    pub queue_size: Gauge,
    pub queue_capacity: Gauge,
    pub delivery_workers_active: Gauge,
    pub delivery_workers: Gauge,
    pub compute_queue_size: Gauge,
    pub compute_queue_capacity: Gauge,
    pub compute_busy_threads: Gauge,
    pub compute_threads: Gauge,
    pub db_connections: Family<ConnectionLabels, Gauge>,
    pub db_writer_queue: Gauge,
    pub db_engine_memory: Gauge,
    pub waited_on_requests: Gauge,
    pub long_lived_requests: Gauge,
    pub destination_in_flight: Family<DestinationLabels, Gauge>,
    pub destination_recent_failures: Family<DestinationLabels, Gauge>,
    pub destination_breaker_open: Family<DestinationLabels, Gauge>,
    pub destinations_paused: Gauge,
    pub destination_held_jobs: Family<DestinationLabels, Gauge>,
    pub destination_rate_limit: Family<DestinationLabels, Gauge<f64, AtomicU64>>,
    pub destination_retry_after: Family<DestinationLabels, Gauge<f64, AtomicU64>>,
    pub destinations_rate_limited: Gauge,
    pub destinations_retry_after: Gauge,
}

/// Registers `metric` under `name` and hands it back, to be kept where the service updates it.
fn add<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// As [`add`], for a metric measured in `unit`.
fn with_unit<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    unit: Unit,
    metric: M,
) -> M {
    registry.register_with_unit(name, help, unit, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("syncasync");
        Self {
            http_requests: add(
                registry,
                "http_requests",
                "HTTP requests answered, by method, endpoint (route template) and status code",
                Family::default(),
            ),
            http_request_duration: add(
                registry,
                "http_request_duration_seconds",
                "Time to answer an HTTP request, by method and endpoint",
                Family::new_with_constructor(latency_histogram),
            ),
            queue_size: add(
                registry,
                "async_queue_size",
                "Unfinished async requests (the whole queue, on a shared database)",
                Gauge::default(),
            ),
            queue_capacity: add(
                registry,
                "async_queue_capacity",
                "Unfinished async requests allowed before POST /async answers 503",
                Gauge::default(),
            ),
            jobs_claimed: add(
                registry,
                "jobs_claimed",
                "Async jobs claimed from the queue by this instance (a retry is claimed again)",
                Counter::default(),
            ),
            jobs_finished: add(
                registry,
                "jobs_finished",
                "Async requests this instance brought to a final state, by status",
                Family::default(),
            ),
            delivery_attempts: add(
                registry,
                "delivery_attempts",
                "Callback delivery attempts, by outcome",
                Family::default(),
            ),
            delivery_attempt_duration: add(
                registry,
                "delivery_attempt_duration_seconds",
                "Duration of one callback delivery attempt",
                latency_histogram(),
            ),
            callback_delivery: add(
                registry,
                "callback_delivery_seconds",
                "Time from an async request's acceptance to its delivered callback",
                latency_histogram(),
            ),
            delivery_workers_active: add(
                registry,
                "delivery_workers_active",
                "Jobs being worked on or delivered right now",
                Gauge::default(),
            ),
            delivery_workers: add(
                registry,
                "delivery_workers",
                "Jobs that may be in flight at once (APP_ASYNC_WORKER_COUNT)",
                Gauge::default(),
            ),
            waited_on_requests: add(
                registry,
                "waited_on_requests",
                "Requests that clients are waiting on (Prefer: wait, event streams, repeated keys)",
                Gauge::default(),
            ),
            long_lived_requests: add(
                registry,
                "http_long_lived_requests",
                "Event streams and waits open now (at most APP_HTTP_MAX_LONG_LIVED)",
                Gauge::default(),
            ),
            compute_queue_size: add(
                registry,
                "compute_queue_size",
                "Units of work waiting for a compute thread",
                Gauge::default(),
            ),
            compute_queue_capacity: add(
                registry,
                "compute_queue_capacity",
                "Units of work that may wait before POST /sync answers 503",
                Gauge::default(),
            ),
            compute_busy_threads: add(
                registry,
                "compute_busy_threads",
                "Compute threads hashing right now",
                Gauge::default(),
            ),
            compute_threads: add(
                registry,
                "compute_threads",
                "Compute threads",
                Gauge::default(),
            ),
            db_connections: add(
                registry,
                "db_connections",
                "Database connections of this instance, by state (in_use, idle)",
                Family::default(),
            ),
            db_writer_queue: add(
                registry,
                "db_writer_queue",
                "Writes waiting for the SQLite writer (0 on PostgreSQL)",
                Gauge::default(),
            ),
            db_engine_memory: with_unit(
                registry,
                "db_engine_memory",
                "Memory SQLite holds in this process, its page caches included (0 on PostgreSQL)",
                Unit::Bytes,
                Gauge::default(),
            ),
            destination_in_flight: add(
                registry,
                "destination_in_flight",
                "Callback deliveries in flight, by destination (the busiest ten, the rest as other)",
                Family::default(),
            ),
            destination_recent_failures: add(
                registry,
                "destination_recent_failures",
                "Failed delivery attempts in the last five minutes (any answer but 2xx, or none), by destination",
                Family::default(),
            ),
            destination_breaker_open: add(
                registry,
                "destination_breaker_open",
                "Destinations whose circuit breaker is open or half-open (1), by destination",
                Family::default(),
            ),
            destinations_paused: add(
                registry,
                "destinations_paused",
                "Destinations an operator paused (their jobs wait until resumed)",
                Gauge::default(),
            ),
            destination_held_jobs: add(
                registry,
                "destination_held_jobs",
                "Jobs due now and not claimed, on every instance, of destinations held back by a \
                pause, a rate limit, a Retry-After or their breaker (counted up to 10,000 each), \
                by destination",
                Family::default(),
            ),
            destination_rate_limit: add(
                registry,
                "destination_rate_limit_per_second",
                "The rate limit of each of the ten busiest destinations that has one, across every \
                instance",
                Family::default(),
            ),
            destination_retry_after: with_unit(
                registry,
                "destination_retry_after",
                "What is left of the Retry-After hold of each of the ten busiest destinations held",
                Unit::Seconds,
                Family::default(),
            ),
            destinations_rate_limited: add(
                registry,
                "destinations_rate_limited",
                "Destinations with a rate limit (their own, or APP_CALLBACK_RATE_PER_DESTINATION)",
                Gauge::default(),
            ),
            destinations_retry_after: add(
                registry,
                "destinations_retry_after",
                "Destinations whose receiver asked to be left alone (a 429 or 503 with Retry-After) \
                and are held now",
                Gauge::default(),
            ),
            registry: root,
        }
    }

    /// The registry as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::{DestinationLabels, MethodLabel};

    #[test]
    fn a_destination_label_is_cut_to_its_length() {
        let short = "https://hooks.example:443";
        assert_eq!(DestinationLabels::of(short).destination, short);
        let long = format!("http://{}.example:80", "é".repeat(300));
        let label = DestinationLabels::of(&long).destination;
        assert_eq!(label.chars().count(), 101);
        assert!(label.starts_with("http://éé") && label.ends_with('…'));
    }

    #[test]
    fn method_labels_come_from_a_fixed_set() {
        assert_eq!(MethodLabel::from(&Method::GET).as_str(), "GET");
        assert_eq!(MethodLabel::from(&Method::PATCH).as_str(), "PATCH");
        let made_up = Method::from_bytes("X".repeat(20_000).as_bytes()).unwrap();
        assert_eq!(MethodLabel::from(&made_up).as_str(), "other");
        let lowercase = Method::from_bytes(b"get").unwrap();
        assert_eq!(MethodLabel::from(&lowercase).as_str(), "other");
    }
}
