//! All settings, each both a command-line flag and an `APP_*` environment variable.
//!
//! One struct, parsed once at start-up: a bad value stops the process before it binds a port,
//! with a one-line error naming the variable (see `main.rs`), rather than failing later under load.

use std::net::IpAddr;
use std::time::Duration;

use clap::Args;

use crate::delivery::destinations::{BreakerPolicy, DefaultRate, IsolationPolicy};
use crate::delivery::guard::AllowedHosts;
use crate::delivery::signing::Signer;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where `serve` listens. The original (uvicorn) took host names as well as addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenHost {
    Ip(IpAddr),
    /// A host name, resolved at start (the resolver's answer may change; the sockets do not).
    Name(String),
}

impl std::fmt::Display for ListenHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenHost::Ip(ip) => ip.fmt(f),
            ListenHost::Name(name) => f.write_str(name),
        }
    }
}

/// Settings of `syncasync serve`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on: an IP address, or a host name (`localhost`), resolved once at
    /// start; the service listens on every address it resolves to.
    #[arg(long, help_heading = "HTTP server", env = "APP_HOST", default_value = "0.0.0.0", value_parser = listen_host)]
    pub host: ListenHost,

    /// Port to listen on (0 picks a free one).
    #[arg(
        long,
        help_heading = "HTTP server",
        env = "APP_PORT",
        default_value_t = 8000
    )]
    pub port: u16,

    /// Database: `sqlite://PATH` (created on first start; one process per file, held by a
    /// lock on the file itself) or `postgres://USER@HOST/DB` (shared by any number of
    /// instances). Whitespace around it (a secret file's last newline) is ignored.
    #[arg(
        long,
        help_heading = "Storage", env = "APP_DATABASE_URL",
        default_value = "sqlite://requests.db",
        hide_env_values = true,
        value_parser = database_url
    )]
    pub database_url: String,

    /// Size of each of an instance's two PostgreSQL pools (requests; job bookkeeping), plus
    /// one connection for job notifications.
    #[arg(long, help_heading = "Storage", env = "APP_DATABASE_POOL_SIZE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_pool_size: u32,

    /// Seconds a claimed job stays leased without a heartbeat; after an instance dies, others
    /// take its jobs over once this passes. Heartbeats renew it every third of it. Unset: 30,
    /// or twice APP_CALLBACK_TIMEOUT_SECONDS plus 5 if that is longer. Set: at least 1 and at
    /// least twice APP_CALLBACK_TIMEOUT_SECONDS, so that one late heartbeat never lets a
    /// second claim deliver a job whose delivery is still running.
    #[arg(long, help_heading = "Async queue", env = "APP_JOB_LEASE_SECONDS", value_parser = machinery_seconds)]
    pub job_lease_seconds: Option<f64>,

    /// Callback deliveries in flight at once (jobs being worked on or delivered). An
    /// in-flight delivery is a small future and a socket, so the default is sized for async
    /// I/O rather than the original's 10 threads.
    #[arg(long, help_heading = "Async queue", env = "APP_ASYNC_WORKER_COUNT", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub async_worker_count: u32,

    /// Callback deliveries in flight at once to one destination (scheme, host and port): a
    /// slow or hung receiver holds at most this many of the workers, and never more than
    /// half of APP_ASYNC_WORKER_COUNT.
    #[arg(long, help_heading = "Isolation between destinations", env = "APP_CALLBACK_MAX_IN_FLIGHT_PER_DESTINATION", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub callback_max_in_flight_per_destination: u32,

    /// Callback deliveries a second to one destination (scheme, host and port), across every
    /// instance sharing the database: `unlimited`, or a rate with an optional burst after a
    /// slash (`20`, `0.5`, `20/40`; the burst is one second's worth by default). A job held
    /// by the limit waits without a worker. An operator sets a destination's own limit with
    /// PUT /destinations/{key}/limits.
    #[arg(
        long,
        help_heading = "Isolation between destinations",
        env = "APP_CALLBACK_RATE_PER_DESTINATION",
        default_value = "unlimited"
    )]
    pub callback_rate_per_destination: DefaultRate,

    /// Callback deliveries in flight at once to destinations that have not earned a share of
    /// their own (new ones, failing ones, slow ones: any a caller can invent), all together.
    /// The destinations that answered recently keep the rest of the workers. 0: a quarter of
    /// APP_ASYNC_WORKER_COUNT (at least 1).
    #[arg(long, help_heading = "Isolation between destinations", env = "APP_CALLBACK_MAX_IN_FLIGHT_UNPROVEN", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub callback_max_in_flight_unproven: u32,

    /// Seconds after which a delivery still waiting for its receiver gives its worker back
    /// (it finishes in a pool of slow deliveries, as many as the workers) and its destination
    /// loses its reserved share until it answers: receivers that hang cannot hold the workers.
    #[arg(long, help_heading = "Isolation between destinations", env = "APP_CALLBACK_SLOW_AFTER_SECONDS", default_value_t = 2.0,
          value_parser = slow_after_seconds)]
    pub callback_slow_after_seconds: f64,

    /// Destinations whose delivery state (earned room, breaker, recent outcomes) is kept
    /// beyond those with deliveries in flight; past it, the longest idle are forgotten and
    /// start again as new.
    #[arg(long, help_heading = "Isolation between destinations", env = "APP_CALLBACK_TRACKED_DESTINATIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub callback_tracked_destinations: u64,

    /// Consecutive failures that open a destination's circuit breaker: a timeout or a
    /// connection failure counts 1, an HTTP 5xx, 408 or 429 counts ½, a 2xx resets the count.
    /// While open, the destination's jobs wait (no attempt, no worker, no attempt lost).
    #[arg(long, help_heading = "Isolation between destinations", env = "APP_CALLBACK_BREAKER_THRESHOLD", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub callback_breaker_threshold: u32,

    /// Seconds an opened breaker waits before letting one probe delivery through; each
    /// failed probe doubles it, up to APP_CALLBACK_BREAKER_MAX_COOLDOWN_SECONDS.
    #[arg(long, help_heading = "Isolation between destinations", env = "APP_CALLBACK_BREAKER_COOLDOWN_SECONDS", default_value_t = 5.0,
          value_parser = machinery_seconds)]
    pub callback_breaker_cooldown_seconds: f64,

    /// Longest cool-down of a breaker, in seconds.
    #[arg(long, help_heading = "Isolation between destinations", env = "APP_CALLBACK_BREAKER_MAX_COOLDOWN_SECONDS", default_value_t = 300.0,
          value_parser = breaker_max_cooldown_seconds)]
    pub callback_breaker_max_cooldown_seconds: f64,

    /// Unfinished async requests the queue holds; past that, `POST /async` answers 503.
    #[arg(long, help_heading = "Async queue", env = "APP_ASYNC_QUEUE_MAX_SIZE", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=MAX_QUEUE_SIZE))]
    pub async_queue_max_size: u64,

    /// Furthest ahead, in seconds, a request may schedule its work (`run_at`,
    /// `delay_seconds`; default 30 days, at most 10 years). Scheduled requests are in the
    /// queue from their acceptance, so they count against `APP_ASYNC_QUEUE_MAX_SIZE`.
    #[arg(long, help_heading = "Async queue", env = "APP_MAX_SCHEDULE_DELAY_SECONDS", default_value_t = 2_592_000.0,
          value_parser = schedule_delay_seconds)]
    pub max_schedule_delay_seconds: f64,

    /// Waiting, in seconds, that one level of `priority` is worth: a due job is claimed as if
    /// it had been due this much earlier per level, so a job that has waited longer than the
    /// difference goes ahead of newer jobs of a higher priority (none starves). 0 ignores
    /// priorities: due order only. At most a day.
    #[arg(long, help_heading = "Async queue", env = "APP_PRIORITY_STEP_SECONDS", default_value_t = 60.0,
          value_parser = delay_seconds)]
    pub priority_step_seconds: f64,

    /// Timeout of one callback attempt, in seconds (the longest a request may ask for).
    #[arg(long, help_heading = "Callbacks", env = "APP_CALLBACK_TIMEOUT_SECONDS", default_value_t = 10.0,
          value_parser = callback_timeout_seconds)]
    pub callback_timeout_seconds: f64,

    /// Attempts after the first before a callback is given up (`callback_failed`); the most
    /// a request may ask for.
    #[arg(long, help_heading = "Callbacks", env = "APP_CALLBACK_MAX_RETRIES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub callback_max_retries: u32,

    /// Base of the exponential backoff between attempts, in seconds.
    #[arg(long, help_heading = "Callbacks", env = "APP_CALLBACK_RETRY_BASE_DELAY", default_value_t = 1.0,
          value_parser = delay_seconds)]
    pub callback_retry_base_delay: f64,

    /// Longest wait between two attempts, in seconds (also caps a receiver's `Retry-After`).
    #[arg(long, help_heading = "Callbacks", env = "APP_CALLBACK_RETRY_MAX_DELAY", default_value_t = 30.0,
          value_parser = delay_seconds)]
    pub callback_retry_max_delay: f64,

    /// Refuse callback URLs that point at private, loopback, link-local or other
    /// non-public addresses (SSRF protection). Turn off only for local testing.
    #[arg(long, help_heading = "Access and SSRF", env = "APP_CALLBACK_BLOCK_PRIVATE_IPS", default_value_t = true,
          action = clap::ArgAction::Set, value_parser = parse_bool)]
    pub callback_block_private_ips: bool,

    /// Host names (or IP addresses) that bypass SSRF protection, comma-separated: for
    /// callbacks to a known internal service. Anyone who can submit requests can make the
    /// service POST to these hosts. Each entry is a host alone, on every port (IPv6 may be
    /// bracketed); one with a scheme, port, path or user info is refused.
    #[arg(
        long,
        help_heading = "Access and SSRF",
        env = "APP_CALLBACK_ALLOWED_HOSTS"
    )]
    pub callback_allowed_hosts: Option<AllowedHosts>,

    /// Sign callbacks (Standard Webhooks): one or more space-separated `whsec_<base64>` secrets.
    /// Whitespace around the list (a secret file's last newline) is ignored.
    #[arg(long, help_heading = "Access and SSRF", env = "APP_CALLBACK_SIGNING_SECRET", hide_env_values = true,
          value_parser = Signer::from_secrets)]
    pub callback_signing_secret: Option<Signer>,

    /// Finished requests older than this many hours are deleted (at most 10^6, about 114
    /// years: beyond that a cut-off date leaves the database's date range).
    #[arg(long, help_heading = "Storage", env = "APP_REQUEST_RETENTION_HOURS", default_value_t = 24.0,
          value_parser = retention_hours)]
    pub request_retention_hours: f64,

    /// At most this many finished requests are kept; the oldest beyond it are deleted.
    #[arg(
        long,
        help_heading = "Storage",
        env = "APP_MAX_STORED_REQUESTS",
        default_value_t = 100_000
    )]
    pub max_stored_requests: u64,

    /// The most matching requests the `total` of `GET /requests` counts when the list is
    /// filtered beyond mode and status (time range, callback host, id prefix); past it the
    /// answer says `"total_capped": true`. Totals filtered by mode and status only are
    /// always exact, from counts kept as requests change.
    #[arg(long, help_heading = "Storage", env = "APP_LIST_COUNT_LIMIT", default_value_t = crate::store::DEFAULT_COUNT_LIMIT,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub list_count_limit: u64,

    /// `GET /healthz` says `degraded` while a database write has been waiting longer than
    /// this many seconds (a writer stuck behind a slow statement, a database taking its time
    /// over writes while it still answers reads).
    #[arg(long, help_heading = "Storage", env = "APP_HEALTH_WRITE_WAIT_SECONDS", default_value_t = 5.0,
          value_parser = machinery_seconds)]
    pub health_write_wait_seconds: f64,

    /// Seconds between two runs of the retention job (at least 1).
    #[arg(long, help_heading = "Storage", env = "APP_CLEANUP_INTERVAL_SECONDS", default_value_t = 300.0,
          value_parser = cleanup_interval_seconds)]
    pub cleanup_interval_seconds: f64,

    /// Simulated I/O added to every unit of work, in seconds (a sleep that holds no thread).
    #[arg(long, help_heading = "Work", env = "APP_WORK_DURATION_SECONDS", default_value_t = 0.0,
          value_parser = delay_seconds)]
    pub work_duration_seconds: f64,

    /// Threads that run the work function (0: one per CPU core).
    #[arg(long, help_heading = "Work", env = "APP_COMPUTE_THREADS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=1024))]
    pub compute_threads: u64,

    /// Units of work waiting for a compute thread; past that, `POST /sync` answers 503. At
    /// most 10^6: the queue's slots are allocated up front.
    #[arg(long, help_heading = "Work", env = "APP_COMPUTE_QUEUE_SIZE", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub compute_queue_size: u64,

    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, help_heading = "HTTP server", env = "APP_MAX_BODY_BYTES", default_value_t = 256 * 1024,
          value_parser = clap::value_parser!(u64).range(64..=MAX_BODY_BYTES))]
    pub max_body_bytes: u64,

    /// Bearer token for `POST /admin/*`; without it the admin endpoints answer 404.
    /// Whitespace around it (a secret file's last newline) is ignored; whitespace, control or
    /// non-ASCII characters inside it are refused, since no header could carry them.
    #[arg(long, help_heading = "Access and SSRF", env = "APP_ADMIN_TOKEN", hide_env_values = true, value_parser = bearer_token)]
    pub admin_token: Option<String>,

    /// Bearer token every endpoint requires (401 without it) but `GET /healthz` and the
    /// dashboard's pages and assets under `/ui` (which hold no data, and ask for the token);
    /// unset, the API is open, as the original was. `/openapi.json` and `/docs` need it too:
    /// a browser cannot add the header to a page load, so open `/docs` with a client that
    /// sends it (a browser extension that sets request headers, or a proxy that adds it), or
    /// fetch the document with `curl -H "Authorization: Bearer $APP_API_TOKEN"`. Admin
    /// endpoints take the admin token instead. Read as APP_ADMIN_TOKEN is.
    #[arg(long, help_heading = "Access and SSRF", env = "APP_API_TOKEN", hide_env_values = true, value_parser = bearer_token)]
    pub api_token: Option<String>,

    /// Seconds a client has to send a request's headers, counted from when the connection
    /// is ready for a request: it also closes keep-alive connections idle that long.
    #[arg(long, help_heading = "HTTP server", env = "APP_HTTP_HEADER_TIMEOUT_SECONDS", default_value_t = 10.0,
          value_parser = http_timeout_seconds)]
    pub http_header_timeout_seconds: f64,

    /// Seconds a client has to send a whole request body once its headers are in; past
    /// that, 408 and the connection is closed.
    #[arg(long, help_heading = "HTTP server", env = "APP_HTTP_BODY_TIMEOUT_SECONDS", default_value_t = 30.0,
          value_parser = http_timeout_seconds)]
    pub http_body_timeout_seconds: f64,

    /// Seconds a response may wait for a client that stopped reading it (no progress at
    /// all) before the connection is closed.
    #[arg(long, help_heading = "HTTP server", env = "APP_HTTP_SEND_TIMEOUT_SECONDS", default_value_t = 30.0,
          value_parser = http_timeout_seconds)]
    pub http_send_timeout_seconds: f64,

    /// Largest request head (request line and headers), in bytes; larger gets 431.
    #[arg(long, help_heading = "HTTP server", env = "APP_HTTP_MAX_HEADER_BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u32).range(1024..=MAX_HEADER_BYTES_LIMIT))]
    pub http_max_header_bytes: u32,

    /// Client connections served at once; at the cap, new connections wait in the kernel's
    /// accept queue until one closes. 0: as many as the open-file limit leaves after what
    /// deliveries and the database need, at most 10000. A value that does not fit in the
    /// open-file limit is refused at start.
    #[arg(long, help_heading = "HTTP server", env = "APP_HTTP_MAX_CONNECTIONS", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub http_max_connections: u32,

    /// Event streams and waits (`GET /requests/{id}/events`, the dashboard's live stream,
    /// `GET /requests/{id}` with `Prefer: wait`) open at once. Past it a stream is refused
    /// (503, `Retry-After`, connection closed) and a wait answers at once, so that
    /// long-lived requests never take the connections `/healthz` and short requests need.
    /// 0: half of the client connections (APP_HTTP_MAX_CONNECTIONS, as fitted).
    #[arg(long, help_heading = "HTTP server", env = "APP_HTTP_MAX_LONG_LIVED", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub http_max_long_lived: u32,

    /// Seconds an event stream lasts at most; then it ends, and the client resumes it
    /// (`Last-Event-ID`; a browser's EventSource reconnects by itself).
    #[arg(long, help_heading = "HTTP server", env = "APP_HTTP_STREAM_MAX_SECONDS", default_value_t = 300.0,
          value_parser = http_timeout_seconds)]
    pub http_stream_max_seconds: f64,

    /// Bytes of an oversized body read and discarded before the 413, so that a client that
    /// sends its whole body before reading can still read the answer.
    #[arg(long, help_heading = "HTTP server", env = "APP_HTTP_DRAIN_MAX_BYTES", default_value_t = 8 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(0..=1024 * 1024 * 1024))]
    pub http_drain_max_bytes: u64,

    /// Seconds spent at most discarding an oversized body before the 413.
    #[arg(long, help_heading = "HTTP server", env = "APP_HTTP_DRAIN_TIMEOUT_SECONDS", default_value_t = 5.0,
          value_parser = drain_seconds)]
    pub http_drain_timeout_seconds: f64,

    /// Log line format on stderr: `text` for people, `json` (one object per line) for log
    /// pipelines. The level comes from `RUST_LOG` (default `info`).
    #[arg(long, help_heading = "Logs and shutdown", env = "APP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// How times are written in the API, the callback body and events: `naive` as the
    /// original wrote them (UTC without a zone, `2026-12-02T06:19:37.098857`), or `rfc3339`
    /// (`2026-12-02T06:19:37.098857Z`).
    #[arg(long, help_heading = "Logs and shutdown", env = "APP_TIMESTAMP_FORMAT", value_enum,
          default_value_t = crate::timestamps::TimestampFormat::Naive)]
    pub timestamp_format: crate::timestamps::TimestampFormat,

    /// An OpenTelemetry collector's OTLP/HTTP address (`http://collector:4318`): each callback
    /// delivery attempt is exported to it as a span (protobuf, to `/v1/traces` unless the URL
    /// ends with it), with its destination, status and duration. Empty: no export.
    /// `OTEL_EXPORTER_OTLP_HEADERS` adds headers (a collector's API key),
    /// `OTEL_SERVICE_NAME` names the service (default `syncasync`), `OTEL_BSP_*` tune the
    /// batches.
    #[arg(long, help_heading = "Logs and shutdown", env = "APP_OTLP_ENDPOINT", default_value = "",
          hide_default_value = true, value_parser = otlp_endpoint)]
    pub otlp_endpoint: String,

    /// Seconds to let in-flight work finish after SIGTERM/SIGINT before exiting.
    #[arg(long, help_heading = "Logs and shutdown", env = "APP_SHUTDOWN_GRACE_SECONDS", default_value_t = 30.0,
          value_parser = delay_seconds)]
    pub shutdown_grace_seconds: f64,
}

impl Config {
    /// What a request may ask for beyond the original's fields: the operator's settings are
    /// the caps.
    pub fn control_limits(&self) -> crate::input::ControlLimits {
        crate::input::ControlLimits {
            max_schedule_delay: Duration::from_secs_f64(self.max_schedule_delay_seconds),
            max_retries: self.callback_max_retries,
            max_callback_timeout: self.callback_timeout(),
        }
    }

    pub fn callback_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.callback_timeout_seconds)
    }

    /// The job lease: as set, or derived from the callback timeout (see the setting).
    pub fn job_lease(&self) -> Duration {
        let derived =
            DEFAULT_LEASE_SECONDS.max(2.0 * self.callback_timeout_seconds + LEASE_MARGIN_SECONDS);
        Duration::from_secs_f64(self.job_lease_seconds.unwrap_or(derived))
    }

    pub fn work_duration(&self) -> Duration {
        Duration::from_secs_f64(self.work_duration_seconds)
    }

    pub fn retention(&self) -> Duration {
        Duration::from_secs_f64(self.request_retention_hours * 3600.0)
    }

    pub fn cleanup_interval(&self) -> Duration {
        Duration::from_secs_f64(self.cleanup_interval_seconds)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_grace_seconds)
    }

    pub fn compute_threads(&self) -> usize {
        if self.compute_threads > 0 {
            usize::try_from(self.compute_threads).unwrap_or(1)
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The admin token, treating an empty variable as unset so that `APP_ADMIN_TOKEN=` can
    /// never open the admin endpoints to an empty bearer token.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref().filter(|t| !t.is_empty())
    }

    /// The API token, empty treated as unset, as for [`admin_token`](Self::admin_token).
    pub fn api_token(&self) -> Option<&str> {
        self.api_token.as_deref().filter(|t| !t.is_empty())
    }

    pub fn http_header_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.http_header_timeout_seconds)
    }

    pub fn http_body_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.http_body_timeout_seconds)
    }

    pub fn http_send_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.http_send_timeout_seconds)
    }

    pub fn http_stream_max_lifetime(&self) -> Duration {
        Duration::from_secs_f64(self.http_stream_max_seconds)
    }

    pub fn http_drain_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.http_drain_timeout_seconds)
    }

    /// Deliveries in flight per destination: as set, but at most half the workers, so that
    /// one destination can never take them all.
    pub fn per_destination_cap(&self) -> u32 {
        self.callback_max_in_flight_per_destination
            .min((self.async_worker_count / 2).max(1))
    }

    /// How deliveries are shared out between destinations.
    pub fn isolation_policy(&self) -> IsolationPolicy {
        // As set, but at most half the workers: the proven destinations always keep the rest.
        let unproven_share = match self.callback_max_in_flight_unproven {
            0 => (self.async_worker_count / 4).max(1),
            n => n.min((self.async_worker_count / 2).max(1)),
        };
        IsolationPolicy {
            workers: self.async_worker_count,
            per_destination: self.per_destination_cap(),
            unproven_share,
            tracked: usize::try_from(self.callback_tracked_destinations).unwrap_or(usize::MAX),
            unhurried: self.callback_slow_after() / 4,
            breaker: BreakerPolicy {
                threshold: f64::from(self.callback_breaker_threshold),
                cooldown: Duration::from_secs_f64(self.callback_breaker_cooldown_seconds),
                max_cooldown: Duration::from_secs_f64(self.callback_breaker_max_cooldown_seconds),
            },
            default_rate: self.callback_rate_per_destination.0,
            longest_hold: self.retry_policy().max,
        }
    }

    /// How failed deliveries are retried.
    pub fn retry_policy(&self) -> crate::delivery::retry::RetryPolicy {
        crate::delivery::retry::RetryPolicy {
            max_retries: self.callback_max_retries,
            base: Duration::from_secs_f64(self.callback_retry_base_delay),
            max: Duration::from_secs_f64(self.callback_retry_max_delay),
        }
    }

    pub fn health_write_wait(&self) -> Duration {
        Duration::from_secs_f64(self.health_write_wait_seconds)
    }

    pub fn callback_slow_after(&self) -> Duration {
        Duration::from_secs_f64(self.callback_slow_after_seconds)
    }

    /// Where spans are exported (the collector's traces URL), if anywhere.
    pub fn otlp_traces_endpoint(&self) -> Option<String> {
        let base = self.otlp_endpoint.trim_end_matches('/');
        if base.is_empty() {
            None
        } else if base.ends_with("/v1/traces") {
            Some(base.to_string())
        } else {
            Some(format!("{base}/v1/traces"))
        }
    }

    /// Checks that cross settings; run once at start-up.
    pub fn validate(&self) -> Result<(), String> {
        if self.callback_breaker_cooldown_seconds > self.callback_breaker_max_cooldown_seconds {
            return Err(format!(
                "APP_CALLBACK_BREAKER_COOLDOWN_SECONDS ({}) must not exceed \
                 APP_CALLBACK_BREAKER_MAX_COOLDOWN_SECONDS ({})",
                self.callback_breaker_cooldown_seconds, self.callback_breaker_max_cooldown_seconds
            ));
        }
        // Only a lease set explicitly can be too short: the derived one never is.
        let min_lease = MIN_LEASE_SECONDS.max(2.0 * self.callback_timeout_seconds);
        if let Some(lease) = self.job_lease_seconds.filter(|&lease| lease < min_lease) {
            return Err(format!(
                "APP_JOB_LEASE_SECONDS ({lease}) must be at least {min_lease}: 1 s, and twice \
                 APP_CALLBACK_TIMEOUT_SECONDS ({}), so that a delivery still running is never \
                 claimed again (unset, it follows the timeout)",
                self.callback_timeout_seconds
            ));
        }
        if self.callback_retry_base_delay > self.callback_retry_max_delay {
            return Err(format!(
                "APP_CALLBACK_RETRY_BASE_DELAY ({}) must not exceed APP_CALLBACK_RETRY_MAX_DELAY ({})",
                self.callback_retry_base_delay, self.callback_retry_max_delay
            ));
        }
        Ok(())
    }
}

/// The job lease when neither it nor a long callback timeout says otherwise.
const DEFAULT_LEASE_SECONDS: f64 = 30.0;

/// What a derived lease adds to twice the callback timeout: room for a heartbeat's own
/// database write to be slow without the lease running out under a delivery.
const LEASE_MARGIN_SECONDS: f64 = 5.0;

/// The shortest job lease: heartbeats come every third of it, and a timer of a few
/// milliseconds would renew leases in a busy loop (or not at all, below a nanosecond).
const MIN_LEASE_SECONDS: f64 = 1.0;

/// The largest queue bound: far beyond any real queue, and small enough that arithmetic on
/// it (percentages, signed database counts) cannot overflow.
const MAX_QUEUE_SIZE: u64 = 1 << 40;

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() || v > 1e9 {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(v)
}

fn non_negative_seconds(s: &str) -> Result<f64, String> {
    let v = parse_seconds(s)?;
    if v < 0.0 {
        return Err(format!("`{s}` must not be negative"));
    }
    Ok(v)
}

fn at_least_one_second(s: &str) -> Result<f64, String> {
    let v = parse_seconds(s)?;
    if v < 1.0 {
        return Err(format!("`{s}` must be at least 1"));
    }
    Ok(v)
}

fn schedule_delay_seconds(s: &str) -> Result<f64, String> {
    let v = non_negative_seconds(s)?;
    if v > MAX_SCHEDULE_DELAY_SECONDS {
        return Err(format!(
            "`{s}` is more than {MAX_SCHEDULE_DELAY_SECONDS} seconds (10 years)"
        ));
    }
    Ok(v)
}

/// Ten years: a due time further ahead is a mistake, not a plan.
const MAX_SCHEDULE_DELAY_SECONDS: f64 = 315_360_000.0;

fn retention_hours(s: &str) -> Result<f64, String> {
    let v = non_negative_seconds(s)?;
    if v > 1e6 {
        return Err(format!("`{s}` is out of range (at most 1000000 hours)"));
    }
    Ok(v)
}

/// A time that must pass before something happens: at least a millisecond, since shorter
/// ones round to zero in timers (which then fire at once, or refuse a zero period).
fn positive_seconds(s: &str) -> Result<f64, String> {
    let v = parse_seconds(s)?;
    if v < 0.001 {
        return Err(format!("`{s}` must be at least 0.001"));
    }
    Ok(v)
}

/// Longest time of the service's own machinery (a lease, a cool-down, a delay, an
/// interval): beyond a day a value is a mistake, not a plan, and one of years would leave
/// work stuck for years (a dead instance's jobs under a lease of 1e9 seconds).
const DAY_SECONDS: f64 = 86_400.0;

fn at_most(s: &str, v: f64, max: f64, what: &str) -> Result<f64, String> {
    if v > max {
        return Err(format!("`{s}` is more than {max} seconds ({what})"));
    }
    Ok(v)
}

/// [`positive_seconds`], at most a day.
fn machinery_seconds(s: &str) -> Result<f64, String> {
    at_most(s, positive_seconds(s)?, DAY_SECONDS, "a day")
}

/// The slow threshold: at least 0.1 s, since a quarter of it is the longest answer that keeps
/// a destination proven (below that, every receiver would lose its reserved share, however
/// healthy), and at most a day.
fn slow_after_seconds(s: &str) -> Result<f64, String> {
    let v = machinery_seconds(s)?;
    if v < 0.1 {
        return Err(format!(
            "`{s}` must be at least 0.1: an answer slower than a quarter of it sends a receiver \
             to the unproven share"
        ));
    }
    Ok(v)
}

/// [`non_negative_seconds`], at most a day.
fn delay_seconds(s: &str) -> Result<f64, String> {
    at_most(s, non_negative_seconds(s)?, DAY_SECONDS, "a day")
}

/// A callback attempt's timeout: at most an hour (a receiver that takes longer has failed).
fn callback_timeout_seconds(s: &str) -> Result<f64, String> {
    at_most(s, positive_seconds(s)?, 3600.0, "an hour")
}

/// A breaker's longest cool-down: at least a second, since held jobs go anyway once overdue by
/// this long (below it, an open breaker would hold nothing), and at most a day.
fn breaker_max_cooldown_seconds(s: &str) -> Result<f64, String> {
    let v = machinery_seconds(s)?;
    if v < 1.0 {
        return Err(format!(
            "`{s}` must be at least 1: jobs an open breaker holds go anyway once overdue by \
             this long"
        ));
    }
    Ok(v)
}

/// The retention pass's period: at least a second, at most a day.
fn cleanup_interval_seconds(s: &str) -> Result<f64, String> {
    at_most(s, at_least_one_second(s)?, DAY_SECONDS, "a day")
}

/// hyper reads a request head into a buffer of about 400 KiB at most, so a larger header
/// limit could never be reached.
const MAX_HEADER_BYTES_LIMIT: i64 = 256 * 1024;

/// An HTTP timeout: more than 0 (0 would close every connection at once) and at most an
/// hour (longer is no longer a protection).
fn http_timeout_seconds(s: &str) -> Result<f64, String> {
    let v = positive_seconds(s)?;
    if v > 3600.0 {
        return Err(format!("`{s}` is more than 3600 seconds"));
    }
    Ok(v)
}

/// 0 answers an oversized body at once (no draining); at most a minute, since a draining
/// request holds its connection.
fn drain_seconds(s: &str) -> Result<f64, String> {
    let v = non_negative_seconds(s)?;
    if v > 60.0 {
        return Err(format!("`{s}` is more than 60 seconds"));
    }
    Ok(v)
}

/// An IP address (IPv6 with or without brackets) or a host name. A port or a scheme is not
/// part of it, and is refused here rather than sent to the resolver, which would only say
/// that the name is unknown.
fn listen_host(s: &str) -> Result<ListenHost, String> {
    let host = s.trim_ascii();
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse() {
        return Ok(ListenHost::Ip(ip));
    }
    if is_host_name(host) {
        return Ok(ListenHost::Name(host.to_ascii_lowercase()));
    }
    Err(if host.contains([':', '/']) {
        "is not an IP address or a host name (the port is APP_PORT)".to_string()
    } else {
        "is not an IP address or a host name".to_string()
    })
}

/// Dot-separated labels of letters, digits, hyphens (and underscores, which host files
/// hold), none empty or longer than 63 bytes, 253 bytes in all, with an optional final dot.
fn is_host_name(s: &str) -> bool {
    let name = s.strip_suffix('.').unwrap_or(s);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The largest `APP_MAX_BODY_BYTES`: a body is held in memory whole, and a bound a client
/// could fill with one request must leave the process room.
const MAX_BODY_BYTES: u64 = 1 << 30;

/// A database URL with whitespace around it (a secret file's last newline) taken off: left
/// on, `sqlite://requests.db\n` would open, and lock, a new empty file of that name.
fn database_url(s: &str) -> Result<String, String> {
    let url = s.trim();
    if url.is_empty() {
        return Err("is empty".to_string());
    }
    if url.chars().any(char::is_control) {
        return Err("must not contain control characters".to_string());
    }
    Ok(url.to_string())
}

/// A collector's address: http(s), with a host, and no query or fragment (the traces path is
/// appended to it). Whitespace around it is trimmed; empty means no export.
fn otlp_endpoint(s: &str) -> Result<String, String> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let url = url::Url::parse(trimmed).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".to_string());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or a fragment".to_string());
    }
    Ok(trimmed.to_string())
}

/// A bearer token as written in a variable, often read from a file that ends with a newline:
/// the whitespace around it is trimmed. What is left must be a token a client can send
/// (visible ASCII, as a header value carries it), or nobody could authenticate; an empty
/// value stays empty, which means unset. The reasons never quote the token: it is a secret.
fn bearer_token(s: &str) -> Result<String, String> {
    let token = s.trim_ascii();
    if token.is_empty() && !s.is_empty() {
        return Err("is only whitespace".to_string());
    }
    if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(if c.is_whitespace() || c.is_control() {
            "must not contain whitespace or control characters".to_string()
        } else {
            "must hold only visible ASCII characters".to_string()
        });
    }
    Ok(token.to_string())
}

/// Accepts the spellings Python's original accepted through pydantic (`true/false`, `1/0`,
/// `yes/no`, `on/off`), case-insensitively.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("`{s}` is not a boolean (true/false)")),
    }
}

/// Rewrites clap's error for a bad value as one line that names the environment variable
/// (the usual way to configure a service) and the flag. Other errors keep clap's own text.
pub fn one_line_error(command: &clap::Command, err: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let ContextValue::String(arg_text) = err.get(ContextKind::InvalidArg)? else {
        return None;
    };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => String::new(),
    };
    // The argument may belong to the top level or to a subcommand.
    let commands = std::iter::once(command).chain(command.get_subcommands());
    let arg = commands
        .flat_map(|c| c.get_arguments())
        .find(|a| a.to_string() == *arg_text)?;
    let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
    let flag = arg
        .get_long()
        .map(|l| format!("--{l}"))
        .unwrap_or_else(|| arg_text.clone());
    // A value parser says why; a value of a fixed set (no parser's reason) lists the set.
    let reason = std::error::Error::source(err)
        .map(|s| s.to_string())
        .or_else(|| match err.get(ContextKind::ValidValue) {
            Some(ContextValue::Strings(valid)) => {
                Some(format!("must be one of: {}", valid.join(", ")))
            }
            _ => None,
        })
        .unwrap_or_else(|| "invalid value".to_string());
    // A secret's value is never echoed, not even a wrong one: stderr ends up in logs.
    let value = if arg.is_hide_env_values_set() {
        String::new()
    } else {
        format!(" {value:?}")
    };
    Some(match env {
        Some(env) => format!("invalid value{value} for {env} ({flag}): {reason}"),
        None => format!("invalid value{value} for {flag}: {reason}"),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::{Config, bearer_token};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Config {
        let args = std::iter::once("test").chain(args.iter().copied());
        Cli::try_parse_from(args).expect("settings").config
    }

    #[test]
    fn a_value_outside_a_fixed_set_is_refused_listing_the_set() {
        use clap::CommandFactory;
        let err = Cli::try_parse_from(["test", "--log-format", "xml"])
            .err()
            .expect("refused");
        let mut command = Cli::command();
        command.build();
        let line = super::one_line_error(&command, &err).expect("one line");
        assert_eq!(
            line,
            "invalid value \"xml\" for APP_LOG_FORMAT (--log-format): must be one of: text, json"
        );
    }

    #[test]
    fn the_host_is_an_ip_address_or_a_host_name() {
        use super::{ListenHost, listen_host};
        let ip = |s: &str| ListenHost::Ip(s.parse().unwrap());
        let name = |s: &str| ListenHost::Name(s.to_string());
        assert_eq!(listen_host("0.0.0.0"), Ok(ip("0.0.0.0")));
        assert_eq!(listen_host("::"), Ok(ip("::")));
        assert_eq!(listen_host("[::1]"), Ok(ip("::1")));
        assert_eq!(listen_host("localhost"), Ok(name("localhost")));
        assert_eq!(listen_host(" Api.Internal\n"), Ok(name("api.internal")));
        assert_eq!(listen_host("my_service"), Ok(name("my_service")));
        for bad in [
            "",
            "0.0.0.0:8000",
            "localhost:8000",
            "http://localhost",
            "not a host",
            "-leading.hyphen",
            "a..b",
            "[::1",
            &"a".repeat(64),
        ] {
            assert!(listen_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_time_of_the_machinery_is_longer_than_a_day() {
        for (flag, longest) in [
            ("--job-lease-seconds", 86_400.0),
            ("--callback-slow-after-seconds", 86_400.0),
            ("--callback-breaker-cooldown-seconds", 86_400.0),
            ("--callback-breaker-max-cooldown-seconds", 86_400.0),
            ("--callback-timeout-seconds", 3_600.0),
            ("--callback-retry-base-delay", 86_400.0),
            ("--callback-retry-max-delay", 86_400.0),
            ("--health-write-wait-seconds", 86_400.0),
            ("--cleanup-interval-seconds", 86_400.0),
            ("--work-duration-seconds", 86_400.0),
            ("--shutdown-grace-seconds", 86_400.0),
        ] {
            let at = format!("{longest}\n");
            assert!(
                Cli::try_parse_from(["test", flag, &at]).is_ok(),
                "{flag} {at:?}"
            );
            for absurd in [longest + 1.0, 1e9] {
                let absurd = absurd.to_string();
                let refused = Cli::try_parse_from(["test", flag, &absurd]).err();
                let message = refused.map(|e| e.to_string()).unwrap_or_default();
                assert!(
                    message.contains("is more than"),
                    "{flag} {absurd}: {message}"
                );
            }
        }
    }

    #[test]
    fn the_priority_step_is_zero_to_a_day() {
        assert_eq!(parse(&[]).priority_step_seconds, 60.0);
        for (value, secs) in [("0", 0.0), ("0.25\n", 0.25), ("86400", 86_400.0)] {
            let config = parse(&["--priority-step-seconds", value]);
            assert_eq!(config.priority_step_seconds, secs, "{value:?}");
        }
        for bad in ["-1", "86401", "1e300", "NaN", "inf", "", "a minute"] {
            let args = ["test", "--priority-step-seconds", bad];
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unset_lease_follows_the_callback_timeout() {
        for (timeout, lease) in [("10", 30.0), ("12.5", 30.0), ("20", 45.0), ("60", 125.0)] {
            let config = parse(&["--callback-timeout-seconds", timeout]);
            assert_eq!(config.validate(), Ok(()), "timeout {timeout}");
            assert_eq!(
                config.job_lease(),
                Duration::from_secs_f64(lease),
                "timeout {timeout}"
            );
        }
    }

    #[test]
    fn a_lease_set_explicitly_is_kept_or_refused() {
        let config = parse(&[
            "--job-lease-seconds",
            "4",
            "--callback-timeout-seconds",
            "2",
        ]);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.job_lease(), Duration::from_secs(4));
        let config = parse(&[
            "--job-lease-seconds",
            "30",
            "--callback-timeout-seconds",
            "20",
        ]);
        let err = config.validate().unwrap_err();
        assert!(
            err.starts_with("APP_JOB_LEASE_SECONDS (30) must be at least 40"),
            "{err}"
        );
    }

    #[test]
    fn spans_go_to_the_collectors_traces_path_or_nowhere() {
        assert_eq!(parse(&[]).otlp_traces_endpoint(), None);
        for (value, endpoint) in [
            ("", None),
            ("  \n", None),
            (
                "http://collector:4318",
                Some("http://collector:4318/v1/traces"),
            ),
            (
                "http://collector:4318/\n",
                Some("http://collector:4318/v1/traces"),
            ),
            (
                "https://otel.example/v1/traces",
                Some("https://otel.example/v1/traces"),
            ),
            (
                "https://gw.example/otlp",
                Some("https://gw.example/otlp/v1/traces"),
            ),
        ] {
            let config = parse(&["--otlp-endpoint", value]);
            assert_eq!(
                config.otlp_traces_endpoint().as_deref(),
                endpoint,
                "{value:?}"
            );
        }
        for bad in [
            "collector:4318",
            "grpc://collector:4317",
            "http://",
            "http://collector:4318/?key=1",
            "file:///tmp/spans",
        ] {
            let args = ["test", "--otlp-endpoint", bad];
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_token_is_trimmed_of_the_whitespace_around_it() {
        assert_eq!(bearer_token("s3cret\n").unwrap(), "s3cret");
        assert_eq!(bearer_token(" \ts3cret\r\n").unwrap(), "s3cret");
        assert_eq!(bearer_token("a-b.c_d~e+f/g=").unwrap(), "a-b.c_d~e+f/g=");
        // Empty is unset, as before.
        assert_eq!(bearer_token("").unwrap(), "");
    }

    #[test]
    fn a_token_no_client_could_send_is_refused_without_being_quoted() {
        for (value, reason) in [
            ("\n", "is only whitespace"),
            ("  ", "is only whitespace"),
            (
                "two words",
                "must not contain whitespace or control characters",
            ),
            (
                "tab\there",
                "must not contain whitespace or control characters",
            ),
            (
                "bell\u{7}",
                "must not contain whitespace or control characters",
            ),
            (
                "line\nbreak",
                "must not contain whitespace or control characters",
            ),
            ("pässword", "must hold only visible ASCII characters"),
        ] {
            assert_eq!(bearer_token(value).unwrap_err(), reason, "{value:?}");
        }
    }
}
