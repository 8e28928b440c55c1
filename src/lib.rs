//! syncasync: do a unit of work synchronously (`POST /sync`) or asynchronously (`POST /async`,
//! with the result delivered to a callback URL, durably and with retries).
//!
//! Data flows one way: HTTP handler → service → store and compute pool → response; and, for
//! async requests, delivery dispatcher → store → callback client → store.

/// Wires the parts together, runs and stops the service.
pub mod app;
/// Settings: one clap struct, flags and `APP_*` variables.
pub mod config;
/// The async path: job dispatch, callback client, retry policy, SSRF guard, signing.
pub mod delivery;
/// The HTTP layer: router, one module per resource, error mapping.
pub mod http;
/// Input rules of SPEC §2.
pub mod input;
/// `syncasync loadgen`: the load generator (latencies, time-to-callback, open or closed loop).
pub mod loadgen;
/// Log lines on their way to stderr, written many at a time by a thread of their own.
pub mod log_writer;
/// Requests that hold their connection for long (streams, waits): their cap and lifetime.
pub mod long_lived;
/// Prometheus metrics.
pub mod metrics;
/// Wire types and statuses.
pub mod model;
/// The open-file limit, and what fits in it.
pub mod open_files;
/// `syncasync receiver`: a callback receiver for manual tests.
pub mod receiver;
/// The background retention job.
pub mod retention;
/// What each endpoint does, below HTTP.
pub mod service;
/// The shutdown signal.
pub mod shutdown;
/// Persistence: requests, the queue, the delivery audit.
pub mod store;
/// How times are written on the wire.
pub mod timestamps;
/// W3C Trace Context: a request's span in its caller's trace, continued by its callbacks.
pub mod trace_context;
/// The operator dashboard at `/ui`: pages, their script and style, the live overview.
pub mod ui;
/// The work function and its compute pool.
pub mod work;
