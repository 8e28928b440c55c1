//! `syncasync loadgen`: measures the service under load, both paths end to end (SPEC §8).
//!
//! A run checks that the service answers (`GET /healthz`, at every `--url`), starts its own
//! callback receiver (async), then runs one phase per mode (`both`: sync, then async), each
//! reported apart. With several `--url`s, worker *i* sends to URL *i mod n* for the whole
//! run: the workers, not the requests, are spread evenly over the instances of the service
//! (a scale-out benchmark), so each instance gets as many requests as its workers get
//! answered.
//! Each worker keeps one keep-alive connection, so the run measures the service and not
//! connection set-up (the original tool opened a session per request); see `connection.rs`
//! for why it is not a pooled client. Latencies go to
//! HdrHistograms in microseconds. With `--rate` the run is an open loop whose latencies
//! count from each request's scheduled send time, so a stalled server cannot hide its stall
//! (see `schedule.rs`). An async phase then waits for outstanding callbacks and matches them
//! to its requests by id (see `callbacks.rs`).
//!
//! Ctrl-C (the stop token) stops sending at once, skips the wait for callbacks, and the
//! report covers what was measured so far.
//!
//! Module map: `schedule` (when requests are due), `payload` (request bodies), `phase` (the
//! workers), `connection` (their HTTP connections), `tally` (what they count), `callbacks` (the
//! receiver and the matching), `report` (percentiles, text, JSON), `progress` (the terminal bar),
//! `error`.

mod callbacks;
mod connection;
mod error;
mod payload;
mod phase;
mod progress;
mod report;
mod schedule;
mod tally;

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;
use tokio_util::sync::CancellationToken;

pub use callbacks::{CallbackReceiver, CallbackTally, WaitOutcome};
pub use error::LoadgenError;
pub use report::{
    CallbackReport, ErrorCount, Failures, Loop, ModeReport, Percentiles, Report, Settings, Wait,
};
pub use schedule::{Limit, Pace, Schedule, Ticket};

use crate::model::Mode;
use connection::{Connection, Target};
use payload::Payloads;
use phase::{Destination, PhasePlan};
use progress::Progress;

/// How long the preflight `GET /healthz` may take: it asks "is anything there?", and a
/// server that cannot answer that in 5 s will not be measured meaningfully either.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which paths to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeChoice {
    Sync,
    Async,
    /// The sync phase, then the async phase.
    Both,
}

impl ModeChoice {
    /// Parses `sync`, `async` or `both`. A parser of our own rather than clap's `ValueEnum`,
    /// so that the one-line error names the values it accepts.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(ModeChoice::Sync),
            "async" => Ok(ModeChoice::Async),
            "both" => Ok(ModeChoice::Both),
            _ => Err("expected sync, async or both".to_string()),
        }
    }

    pub fn modes(self) -> &'static [Mode] {
        match self {
            ModeChoice::Sync => &[Mode::Sync],
            ModeChoice::Async => &[Mode::Async],
            ModeChoice::Both => &[Mode::Sync, Mode::Async],
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Base URL of the service. Repeat it to spread the load over several instances: worker
    /// i sends to URL i mod n, so -c must be at least the number of URLs.
    #[arg(help_heading = "Target", long = "url", value_name = "URL", default_value = "http://localhost:8000",
          value_parser = base_url)]
    pub urls: Vec<String>,
    /// Requests per mode.
    #[arg(help_heading = "Load", short = 'n', long, default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: u64,
    /// Requests in flight at once (workers, and keep-alive connections).
    #[arg(help_heading = "Load", short = 'c', long, default_value_t = 10,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub concurrency: usize,
    /// Which paths to measure: sync, async, or both (sync, then async, reported apart).
    #[arg(help_heading = "Target", long, default_value = "both", value_parser = ModeChoice::parse)]
    pub mode: ModeChoice,
    /// Port of the loadgen's own callback receiver (0: any free port).
    #[arg(help_heading = "Callbacks", long, default_value_t = 9999)]
    pub callback_port: u16,
    /// Host the callback receiver binds and puts in callback URLs: the service must reach it
    /// there.
    #[arg(help_heading = "Callbacks", long, default_value = "127.0.0.1")]
    pub callback_host: String,
    /// Send async requests' callbacks to URL instead of the loadgen's own receiver (which is
    /// then not started): only acceptance is measured. For load aimed at another receiver,
    /// for example a hung one beside a measured run.
    #[arg(help_heading = "Callbacks", long, value_name = "URL")]
    pub callback_url: Option<String>,
    /// `iterations` of each request's work.
    #[arg(help_heading = "Load", long, default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub iterations: u32,
    /// Bytes of `data` in each request (every request's data differs).
    #[arg(help_heading = "Load", long, default_value_t = 64,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub data_size: usize,
    /// Run each mode for this long instead of `-n` requests (`10s`, `500ms`, `2m`).
    #[arg(help_heading = "Load", long, value_parser = positive_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Open loop: send R requests per second on a fixed schedule, latency measured from each
    /// request's scheduled send time (no coordinated omission). `-c` caps requests in flight.
    #[arg(help_heading = "Load", long, value_name = "R", value_parser = positive_rate, allow_negative_numbers = true)]
    pub rate: Option<f64>,
    /// Threads that send requests, each running its share of the workers (like wrk's -t).
    #[arg(help_heading = "Load", long, default_value_t = 2,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub threads: usize,
    /// Timeout of each request.
    #[arg(help_heading = "Load", long, default_value = "30s", value_parser = positive_duration)]
    pub timeout: Duration,
    /// How long to wait for outstanding callbacks after the last request.
    #[arg(help_heading = "Callbacks", long, default_value = "30s", value_parser = any_duration)]
    pub callback_timeout: Duration,
    /// Also write the report as JSON to FILE.
    #[arg(help_heading = "Report", long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Send async requests N at a time in one `POST /async/batch` (1: each alone to
    /// `POST /async`). Each request's latency is its batch's.
    #[arg(help_heading = "Load", long, value_name = "N", default_value_t = 1,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub batch: usize,
    /// Give async requests an `ordering_key`, one of N round robin (keys of this run's own):
    /// each key's requests are then delivered one at a time, in order.
    #[arg(help_heading = "Load", long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ordering_keys: Option<u64>,
    /// Never draw the progress bar (it is drawn only when stderr is a terminal anyway).
    #[arg(help_heading = "Report", long)]
    pub no_progress: bool,
    /// Exit non-zero when more than this share of a mode's requests failed (0 to 1), for CI;
    /// a callback that never came counts as a failure. Whatever it is, a run in which every
    /// request of a mode failed exits non-zero.
    #[arg(help_heading = "Report", long, value_name = "SHARE", value_parser = share)]
    pub max_failure_rate: Option<f64>,
}

/// A share from 0 to 1.
fn share(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number from 0 to 1")),
    }
}

/// An http URL with a host, without a trailing slash (paths are appended to it).
fn base_url(s: &str) -> Result<String, String> {
    // `127.0.0.1:8000` does not parse and `localhost:8000` parses as a scheme: either way the
    // scheme is missing, and saying which URL was meant is the help.
    let missing_scheme = || format!("needs its scheme: did you mean http://{s}?");
    let url = match url::Url::parse(s) {
        Ok(url) => url,
        Err(url::ParseError::RelativeUrlWithoutBase) => return Err(missing_scheme()),
        Err(err) => return Err(err.to_string()),
    };
    if !s.contains("://") {
        return Err(missing_scheme());
    }
    if url.scheme() != "http" {
        return Err("must be an http:// URL (the service serves plain HTTP)".into());
    }
    if url.host().is_none() {
        return Err("must have a host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or a fragment".into());
    }
    Ok(s.trim_end_matches('/').to_string())
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(s)
        .map_err(|err| format!("{err} (write a duration such as 10s, 500ms or 2m)"))?;
    if duration.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(duration)
}

fn any_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|err| format!("{err} (write a duration such as 10s, 500ms or 2m)"))
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "`{s}` is not a number of requests per second above 0"
        )),
    }
}

impl LoadgenArgs {
    fn settings(&self) -> Settings {
        Settings {
            requests: self.duration.is_none().then_some(self.requests),
            duration_s: self.duration.map(|d| d.as_secs_f64()),
            concurrency: self.concurrency,
            threads: self.threads,
            rate: self.rate,
            iterations: self.iterations,
            data_size: self.data_size,
            timeout_s: self.timeout.as_secs_f64(),
            callback_timeout_s: self.callback_timeout.as_secs_f64(),
            batch: self.batch,
        }
    }

    fn pace(&self) -> Pace {
        match self.rate {
            Some(rate) => Pace::Open { rate },
            None => Pace::Closed,
        }
    }

    fn limit(&self) -> Limit {
        match self.duration {
            Some(duration) => Limit::Duration(duration),
            None => Limit::Count(self.requests),
        }
    }
}

/// The path of `endpoint` (`sync`, `async`, `healthz`) under `base_url`'s path (a base URL
/// `http://host/api` sends to `/api/sync`).
fn endpoint_path(base_url: &str, endpoint: &str) -> Result<Uri, LoadgenError> {
    let bad = |reason: String| LoadgenError::BadUrl {
        url: base_url.to_string(),
        reason,
    };
    let url =
        url::Url::parse(&format!("{base_url}/{endpoint}")).map_err(|err| bad(err.to_string()))?;
    Uri::try_from(url.path()).map_err(|err| bad(err.to_string()))
}

/// One instance of the service, as given by a `--url` and found by the preflight.
struct Instance {
    url: String,
    target: Arc<Target>,
}

impl Instance {
    /// Where a phase of `mode` sends its requests on this instance.
    fn destination(&self, mode: Mode, batch: usize) -> Result<Destination, LoadgenError> {
        let endpoint = match mode {
            Mode::Async if batch > 1 => "async/batch",
            mode => mode.as_str(),
        };
        Ok(Destination {
            target: Arc::clone(&self.target),
            path: endpoint_path(&self.url, endpoint)?,
        })
    }
}

/// Runs the load test and returns its report; `stop` ends it early (the report then covers
/// what was measured). Fails only if the run cannot start: fewer workers than URLs, a
/// service that does not answer at all, or a callback receiver that cannot listen.
pub async fn run(args: LoadgenArgs, stop: CancellationToken) -> Result<Report, LoadgenError> {
    if args.urls.is_empty() {
        return Err(LoadgenError::NoUrl);
    }
    // A URL without a worker would pass its preflight and then get no request at all: the
    // report would claim a spread it did not make.
    if args.concurrency < args.urls.len() {
        return Err(LoadgenError::FewerWorkersThanUrls {
            workers: args.concurrency,
            urls: args.urls.len(),
        });
    }
    if args.batch > 1 && args.mode != ModeChoice::Async {
        return Err(LoadgenError::BatchNeedsAsync);
    }
    let modes = args.mode.modes();
    // Before any request: a callback may come back faster than its 200.
    let receiver = if modes.contains(&Mode::Async) && args.callback_url.is_none() {
        Some(CallbackReceiver::start(&args.callback_host, args.callback_port).await?)
    } else {
        None
    };
    let mut report = Report {
        urls: args.urls.clone(),
        interrupted: false,
        settings: args.settings(),
        modes: Vec::new(),
    };
    let instances = tokio::select! {
        biased;
        () = stop.cancelled() => {
            report.interrupted = true;
            return Ok(report);
        }
        reached = preflight_all(&args.urls) => reached?,
    };
    let draw_progress = !args.no_progress && std::io::stderr().is_terminal();
    let tag: u32 = rand::random();
    for &mode in modes {
        if stop.is_cancelled() {
            break;
        }
        let callback_url = match (mode, &receiver, &args.callback_url) {
            (Mode::Async, _, Some(url)) => Some(url.clone()),
            (Mode::Async, Some(receiver), None) => Some(receiver.url().to_string()),
            _ => None,
        };
        let plan = PhasePlan {
            mode,
            destinations: instances
                .iter()
                .map(|instance| instance.destination(mode, args.batch))
                .collect::<Result<_, _>>()?,
            payloads: Payloads::new(
                args.data_size,
                args.iterations,
                callback_url.as_deref(),
                tag,
            )
            .with_ordering_keys(args.ordering_keys.filter(|_| mode == Mode::Async)),
            schedule: Schedule::new(args.pace(), args.limit()),
            concurrency: args.concurrency,
            threads: args.threads,
            timeout: args.timeout,
            batch: args.batch,
        };
        let started = plan.schedule.start();
        let progress = Progress::start(draw_progress, mode.as_str(), plan.schedule.planned());
        let outcome = phase::run(plan, &stop, progress.counter())
            .await
            .map_err(LoadgenError::Threads)?;
        progress.finish();

        let callbacks = match (mode, &receiver) {
            (Mode::Async, Some(receiver)) => {
                let accepted = &outcome.tally.accepted;
                let wait = if stop.is_cancelled() {
                    WaitOutcome::Interrupted
                } else {
                    let waiting = Progress::start(
                        draw_progress,
                        "callbacks",
                        Some(u64::try_from(accepted.len()).unwrap_or(u64::MAX)),
                    );
                    let wait = receiver
                        .wait_for(accepted, args.callback_timeout, &stop, &waiting.counter())
                        .await;
                    waiting.finish();
                    wait
                };
                Some(CallbackReport::new(
                    &receiver.take_tally(accepted, started),
                    wait,
                ))
            }
            _ => None,
        };
        let pace = match args.pace() {
            Pace::Closed => Loop::Closed,
            Pace::Open { .. } => Loop::Open,
        };
        report.modes.push(ModeReport::new(
            mode,
            pace,
            &outcome.tally,
            outcome.elapsed.as_secs_f64(),
            outcome.interrupted,
            callbacks,
        ));
    }
    if let Some(receiver) = receiver {
        receiver.shutdown().await;
    }
    report.interrupted = stop.is_cancelled();
    Ok(report)
}

/// `syncasync loadgen`: runs, prints the text report on stdout, writes `--json`.
pub async fn run_and_report(
    args: LoadgenArgs,
    stop: CancellationToken,
) -> Result<(), LoadgenError> {
    let json = args.json.clone();
    let max_failure_rate = args.max_failure_rate;
    // Found out before the run, not after minutes of load.
    if let Some(path) = &json {
        check_writable(path)?;
    }
    let report = run(args, stop).await?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(report.render_text().as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(LoadgenError::WriteReport)?;
    if let Some(path) = json {
        report.write_json(&path)?;
    }
    for mode in report
        .modes
        .iter()
        .filter(|m| !m.interrupted && m.total > 0)
    {
        if mode.all_failed() {
            return Err(LoadgenError::AllFailed {
                mode: mode.mode.as_str(),
            });
        }
        let rate = mode.failure_rate();
        if max_failure_rate.is_some_and(|max| rate > max) {
            return Err(LoadgenError::TooManyFailures {
                mode: mode.mode.as_str(),
                rate,
                max: max_failure_rate.unwrap_or(1.0),
            });
        }
    }
    Ok(())
}

/// Whether the JSON report can be written at `path`: a file this call creates (and removes
/// again), or one already there that opens for writing (left as it was).
fn check_writable(path: &std::path::Path) -> Result<(), LoadgenError> {
    let refused = |source| LoadgenError::WriteJson {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(refused),
        Err(err) => Err(refused(err)),
    }
}

/// Preflights every URL, in the order given; the first that fails fails the run with its
/// own line. One after the other: only a URL that never answers costs time (up to
/// [`PREFLIGHT_TIMEOUT`]), and the run stops at the first such URL anyway.
async fn preflight_all(urls: &[String]) -> Result<Vec<Instance>, LoadgenError> {
    let mut instances = Vec::with_capacity(urls.len());
    for url in urls {
        instances.push(Instance {
            url: url.clone(),
            target: Arc::new(preflight(url).await?),
        });
    }
    Ok(instances)
}

/// Resolves one base URL and fails with one clear line naming it when nothing answers HTTP
/// there. Any HTTP answer passes: the question is whether there is a server, not whether
/// it is healthy.
async fn preflight(base_url: &str) -> Result<Target, LoadgenError> {
    let unreachable = |reason: String| LoadgenError::Unreachable {
        url: base_url.to_string(),
        reason,
    };
    let url = url::Url::parse(base_url).map_err(|err| LoadgenError::BadUrl {
        url: base_url.to_string(),
        reason: err.to_string(),
    })?;
    let target = Target::resolve(&url)
        .await
        .map_err(|err| unreachable(err.to_string()))?;
    let mut connection = Connection::new(Arc::new(target.clone()));
    let healthz = endpoint_path(base_url, "healthz")?;
    let answer = tokio::time::timeout(PREFLIGHT_TIMEOUT, connection.get(&healthz));
    match answer.await {
        Ok(Ok(_)) => Ok(target),
        Ok(Err(err)) => Err(unreachable(error::describe(&err))),
        Err(_elapsed) => Err(unreachable(format!(
            "no answer to GET /healthz within {} s",
            PREFLIGHT_TIMEOUT.as_secs()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::base_url;

    #[test]
    fn a_url_without_its_scheme_is_refused_with_the_one_meant() {
        for given in ["127.0.0.1:8000", "localhost:8000", "[::1]:8000"] {
            let err = base_url(given).unwrap_err();
            assert!(err.contains(&format!("http://{given}")), "{given}: {err}");
        }
        assert_eq!(
            base_url("http://127.0.0.1:8000/").unwrap(),
            "http://127.0.0.1:8000"
        );
        assert!(
            base_url("https://example.com")
                .unwrap_err()
                .contains("http://")
        );
    }
}
