//! Why a load run could not start or finish, and how a transport failure is put in words.
//!
//! A load generator that cannot reach its target must say so in one line and exit non-zero:
//! a report full of connection errors would look like a measurement of a broken server. So
//! the preflight and the callback listener fail the run with a [`LoadgenError`], while
//! failures of measured requests are counted in the report instead.

use std::error::Error as StdError;
use std::path::PathBuf;

/// A run that could not start, or a report that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The preflight `GET /healthz` got no HTTP answer at all.
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The callback receiver could not bind its address (port in use, host not local).
    #[error("cannot listen for callbacks on {addr}: {reason}")]
    CallbackListen { addr: String, reason: String },
    /// No `--url` at all (the flag has a default; only a caller building the args can).
    #[error("no --url given")]
    NoUrl,
    /// Only async requests can be batched.
    #[error("--batch needs --mode async (sync requests have no batch endpoint)")]
    BatchNeedsAsync,
    /// More `--url`s than workers: some URL would get no request.
    #[error("-c {workers} is fewer than the {urls} --url values: each URL needs a worker")]
    FewerWorkersThanUrls { workers: usize, urls: usize },
    /// `--url` cannot be used (not http://, a host that does not resolve).
    #[error("cannot use {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot write the JSON report to {}: {source}", path.display())]
    WriteJson {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the load threads: {0}")]
    Threads(#[source] std::io::Error),
    #[error("cannot write the report: {0}")]
    WriteReport(#[source] std::io::Error),
    #[error("cannot encode the JSON report: {0}")]
    EncodeJson(#[from] serde_json::Error),
    /// The run measured nothing working: every request of a mode failed.
    #[error("every {mode} request failed (the report above shows what the service answered)")]
    AllFailed { mode: &'static str },
    /// More failures than `--max-failure-rate` allows.
    #[error("{:.1}% of {mode} requests failed, more than --max-failure-rate {max}", rate * 100.0)]
    TooManyFailures {
        mode: &'static str,
        rate: f64,
        max: f64,
    },
}

/// The cause of a failure in a few words, from the innermost error that says something:
/// the I/O error at the bottom of a chain names the cause ("connection refused") better
/// than the layers above it.
pub fn describe(err: &(dyn StdError + 'static)) -> String {
    let mut innermost = err;
    let mut current = Some(err);
    while let Some(cause) = current {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return describe_io(io);
        }
        innermost = cause;
        current = cause.source();
    }
    innermost.to_string()
}

/// An I/O error by its kind ("connection refused", "address in use") when the kind names
/// the cause; otherwise its own message, which carries the detail.
pub fn describe_io(err: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match err.kind() {
        kind @ (ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected
        | AddrInUse | AddrNotAvailable | BrokenPipe | TimedOut | UnexpectedEof
        | PermissionDenied | HostUnreachable | NetworkUnreachable) => kind.to_string(),
        _ => err.to_string(),
    }
}
