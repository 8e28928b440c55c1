//! The report of a run: per mode, counts, failures by cause, throughput, latency and
//! time-to-callback percentiles, callback matching and the top errors; rendered as text
//! for a person and serialised as JSON (`--json FILE`) for a machine.
//!
//! The JSON shape is documented in docs/operations.md ("Load testing"); field names are part of it,
//! so rename nothing without updating both. Durations are milliseconds (floats, from
//! microsecond histograms) unless a name says otherwise (`elapsed_s`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::callbacks::{CallbackTally, WaitOutcome};
use super::error::LoadgenError;
use super::tally::Tally;
use crate::model::Mode;

/// How many distinct error messages the report lists.
const TOP_ERRORS: usize = 5;

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Base URLs of the service, in the order given; worker i sent to `urls[i mod n]`.
    pub urls: Vec<String>,
    /// Stopped by Ctrl-C (or the stop token): the numbers cover what was measured so far.
    pub interrupted: bool,
    pub settings: Settings,
    /// In the order they ran (`both`: sync, then async).
    pub modes: Vec<ModeReport>,
}

/// The settings the run used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Requests per mode; `null` with `--duration`.
    pub requests: Option<u64>,
    pub duration_s: Option<f64>,
    pub concurrency: usize,
    pub threads: usize,
    /// Requests per second in an open loop; `null` in a closed loop.
    pub rate: Option<f64>,
    pub iterations: u32,
    pub data_size: usize,
    pub timeout_s: f64,
    pub callback_timeout_s: f64,
    /// Async requests per `POST /async/batch` (1: each sent alone to `POST /async`).
    #[serde(default = "one")]
    pub batch: usize,
}

fn one() -> usize {
    1
}

/// How requests were paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loop {
    Closed,
    Open,
}

/// One mode's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModeReport {
    pub mode: Mode,
    #[serde(rename = "loop")]
    pub pace: Loop,
    /// This phase was cut short by the stop token.
    pub interrupted: bool,
    /// Requests that finished, successfully or not (abandoned ones are not counted).
    pub total: u64,
    pub success: u64,
    pub failed: u64,
    pub failures: Failures,
    /// From the phase's start to its last answer.
    pub elapsed_s: f64,
    /// `total / elapsed_s`.
    pub throughput_rps: f64,
    /// Every request that got an HTTP answer, whatever its status; `null` if none did.
    pub latency_ms: Option<Percentiles>,
    /// Async only.
    pub callbacks: Option<CallbackReport>,
    pub top_errors: Vec<ErrorCount>,
    /// A few distinct answers that were not a success, as the service wrote them (cut).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sample_answers: Vec<String>,
}

/// Failed requests by cause.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failures {
    /// By HTTP status code (as a string key, `"500"`).
    pub http: BTreeMap<String, u64>,
    pub timeout: u64,
    pub connection: u64,
    pub other: u64,
}

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

/// Callbacks of an async phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallbackReport {
    /// Requests accepted by the service (a 2xx with a `request_id`).
    pub expected: u64,
    /// Accepted requests that got at least one callback.
    pub received: u64,
    /// From the phase's start to the arrival of the last first callback (of an accepted
    /// request); `null` if none arrived.
    pub delivery_span_s: Option<f64>,
    /// `received / delivery_span_s`: the rate at which results reached the client, to set
    /// against `throughput_rps`, the rate at which requests were accepted; `null` if no
    /// callback arrived.
    pub delivered_rps: Option<f64>,
    pub missing: u64,
    /// Callbacks beyond the first for one request.
    pub duplicates: u64,
    /// Callbacks for ids the service never returned to this run.
    pub unknown_ids: u64,
    /// Callbacks without a `request_id` (nor a `webhook-id` header).
    pub malformed: u64,
    /// How the wait for outstanding callbacks ended.
    pub wait: Wait,
    /// From each request's (scheduled) send time to its first callback.
    pub time_to_callback_ms: Option<Percentiles>,
}

/// How the wait for outstanding callbacks ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wait {
    AllArrived,
    TimedOut,
    Interrupted,
}

impl From<WaitOutcome> for Wait {
    fn from(outcome: WaitOutcome) -> Self {
        match outcome {
            WaitOutcome::AllArrived => Wait::AllArrived,
            WaitOutcome::TimedOut => Wait::TimedOut,
            WaitOutcome::Interrupted => Wait::Interrupted,
        }
    }
}

/// An error message and how many requests failed with it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorCount {
    pub message: String,
    pub count: u64,
}

impl Percentiles {
    /// The distribution of a microsecond histogram, or `None` if it is empty.
    pub fn from_micros(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(Self {
            count: histogram.len(),
            min: ms(histogram.min()),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p95: ms(histogram.value_at_quantile(0.95)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p99_9: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        })
    }
}

impl CallbackReport {
    pub fn new(tally: &CallbackTally, wait: WaitOutcome) -> Self {
        let delivery_span_s = tally.delivery_span.map(|span| span.as_secs_f64());
        Self {
            expected: tally.expected,
            received: tally.received,
            delivery_span_s,
            delivered_rps: delivery_span_s
                .filter(|&span| span > 0.0)
                .map(|span| tally.received as f64 / span),
            missing: tally.expected.saturating_sub(tally.received),
            duplicates: tally.duplicates,
            unknown_ids: tally.unknown,
            malformed: tally.malformed,
            wait: wait.into(),
            time_to_callback_ms: Percentiles::from_micros(&tally.time_to_callback),
        }
    }
}

impl ModeReport {
    pub fn new(
        mode: Mode,
        pace: Loop,
        tally: &Tally,
        elapsed_s: f64,
        interrupted: bool,
        callbacks: Option<CallbackReport>,
    ) -> Self {
        let total = tally.total();
        let mut top_errors: Vec<ErrorCount> = tally
            .errors
            .iter()
            .map(|(message, count)| ErrorCount {
                message: message.clone(),
                count: *count,
            })
            .collect();
        // Most frequent first; ties by message so the order is stable between runs.
        top_errors.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.message.cmp(&b.message))
        });
        top_errors.truncate(TOP_ERRORS);
        Self {
            mode,
            pace,
            interrupted,
            total,
            success: tally.success,
            failed: tally.failed(),
            failures: Failures {
                http: tally
                    .http
                    .iter()
                    .map(|(code, n)| (code.to_string(), *n))
                    .collect(),
                timeout: tally.timeout,
                connection: tally.connection,
                other: tally.other,
            },
            elapsed_s,
            throughput_rps: if elapsed_s > 0.0 {
                total as f64 / elapsed_s
            } else {
                0.0
            },
            latency_ms: Percentiles::from_micros(&tally.latency),
            callbacks,
            top_errors,
            sample_answers: tally.answers.clone(),
        }
    }

    /// Every request that finished failed (none was measured working).
    pub fn all_failed(&self) -> bool {
        self.total > 0 && self.success == 0
    }

    /// The share of requests that failed, a missing callback counting as a failure.
    pub fn failure_rate(&self) -> f64 {
        let missing = self.callbacks.as_ref().map_or(0, |c| c.missing);
        if self.total == 0 {
            return 0.0;
        }
        (self.failed + missing.min(self.success)) as f64 / self.total as f64
    }

    /// What to try when every request failed, from what the service answered.
    pub fn hint(&self) -> Option<&'static str> {
        if !self.all_failed() {
            return None;
        }
        let said = |needle: &str| self.sample_answers.iter().any(|a| a.contains(needle));
        // The SSRF guard's own words: a callback URL refused for another reason (a scheme, a
        // length) is not a matter of protection.
        if said("HTTP 422") && said("(private, loopback or reserved address)") {
            Some(
                "the service refused the callback URL's address (SSRF protection refuses \
                 loopback callbacks): to run it and the load generator on one machine, allow \
                 the address (APP_CALLBACK_ALLOWED_HOSTS=127.0.0.1) or turn the protection \
                 off for the test (APP_CALLBACK_BLOCK_PRIVATE_IPS=false)",
            )
        } else if said("HTTP 401") {
            Some("the service wants a bearer token (APP_API_TOKEN): the load generator sends none")
        } else if said("HTTP 503") {
            Some(
                "the service answered 503: overloaded, its queue full, or its database unavailable (see its /healthz and log)",
            )
        } else if self.failures.connection > 0 || self.failures.timeout > 0 {
            Some("the service stopped answering: is it still running, and reachable at --url?")
        } else {
            None
        }
    }
}

impl Report {
    /// Writes the report as pretty-printed JSON to `path`.
    pub fn write_json(&self, path: &Path) -> Result<(), LoadgenError> {
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        std::fs::write(path, json).map_err(|source| LoadgenError::WriteJson {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The report as a person reads it.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let amount = match (s.requests, s.duration_s) {
            (_, Some(d)) => format!("for {}", seconds(d)),
            (Some(n), None) => format!("{n} requests per mode"),
            (None, None) => String::new(),
        };
        let pacing = match s.rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".to_string(),
        };
        match self.urls.as_slice() {
            [url] => {
                let _ = writeln!(out, "syncasync loadgen: {url}");
            }
            urls => {
                let _ = writeln!(
                    out,
                    "syncasync loadgen: {} URLs, workers assigned round-robin",
                    urls.len()
                );
                for url in urls {
                    let _ = writeln!(out, "  {url}");
                }
            }
        }
        let _ = writeln!(
            out,
            "{amount}, concurrency {}, {pacing}, iterations {}, data {} B, timeout {}",
            s.concurrency,
            s.iterations,
            s.data_size,
            seconds(s.timeout_s)
        );
        if s.batch > 1 {
            let _ = writeln!(
                out,
                "async requests sent {} per POST /async/batch (latency: each request's batch)",
                s.batch
            );
        }
        if self.interrupted {
            let _ = writeln!(
                out,
                "INTERRUPTED: the numbers cover what was measured so far"
            );
        }
        for mode in &self.modes {
            out.push('\n');
            mode.render_text(&mut out);
        }
        out
    }
}

impl ModeReport {
    fn render_text(&self, out: &mut String) {
        let pace = match self.pace {
            Loop::Closed => "closed loop",
            Loop::Open => "open loop, latency from the scheduled send time",
        };
        let cut = if self.interrupted {
            ", interrupted"
        } else {
            ""
        };
        let _ = writeln!(out, "== {} ({pace}{cut})", self.mode.as_str());
        let _ = writeln!(
            out,
            "  requests      {} total, {} success, {} failed",
            self.total, self.success, self.failed
        );
        let _ = writeln!(
            out,
            "  throughput    {:.1} req/s ({} in {})",
            self.throughput_rps,
            self.total,
            seconds(self.elapsed_s)
        );
        let _ = writeln!(
            out,
            "  {:<14}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
            "latency ms", "min", "p50", "p90", "p95", "p99", "p99.9", "max", "mean"
        );
        percentile_row(out, "response", self.latency_ms.as_ref());
        if let Some(callbacks) = &self.callbacks {
            percentile_row(out, "to callback", callbacks.time_to_callback_ms.as_ref());
            let wait = match callbacks.wait {
                Wait::AllArrived => "",
                Wait::TimedOut => " (stopped waiting: --callback-timeout)",
                Wait::Interrupted => " (stopped waiting: interrupted)",
            };
            let delivered = match (callbacks.delivered_rps, callbacks.delivery_span_s) {
                (Some(rps), Some(span)) => format!(" ({rps:.1} delivered/s in {})", seconds(span)),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  callbacks     {} received of {} expected{delivered}, {} missing, {} duplicates, {} unknown ids{}{wait}",
                callbacks.received,
                callbacks.expected,
                callbacks.missing,
                callbacks.duplicates,
                callbacks.unknown_ids,
                if callbacks.malformed > 0 {
                    format!(", {} malformed", callbacks.malformed)
                } else {
                    String::new()
                },
            );
        }
        if self.failed > 0 {
            let mut causes: Vec<String> = self
                .failures
                .http
                .iter()
                .map(|(code, n)| format!("HTTP {code}: {n}"))
                .collect();
            for (name, n) in [
                ("timeout", self.failures.timeout),
                ("connection", self.failures.connection),
                ("other", self.failures.other),
            ] {
                if n > 0 {
                    causes.push(format!("{name}: {n}"));
                }
            }
            let _ = writeln!(out, "  failures      {}", causes.join(", "));
            let _ = writeln!(out, "  top errors");
            for error in &self.top_errors {
                let _ = writeln!(out, "  {:>12}  {}", error.count, error.message);
            }
            if !self.sample_answers.is_empty() {
                let _ = writeln!(out, "  answers (a sample)");
                for answer in &self.sample_answers {
                    let _ = writeln!(out, "                {answer}");
                }
            }
            if self.all_failed() {
                let _ = writeln!(out, "  every request failed");
            }
            if let Some(hint) = self.hint() {
                let _ = writeln!(out, "  hint          {hint}");
            }
        }
    }
}

fn percentile_row(out: &mut String, label: &str, p: Option<&Percentiles>) {
    let Some(p) = p else {
        let _ = writeln!(out, "  {label:<14}{:>9}", "-");
        return;
    };
    let _ = write!(out, "  {label:<14}");
    for value in [p.min, p.p50, p.p90, p.p95, p.p99, p.p99_9, p.max, p.mean] {
        let _ = write!(out, "{:>9}", millis(value));
    }
    out.push('\n');
}

/// Milliseconds with three significant digits after the point where they matter.
fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.3}")
    } else if ms < 1000.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.0}")
    }
}

fn seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.3} s")
    } else {
        format!("{s:.1} s")
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::loadgen::tally::{Cause, record};

    fn sample() -> Report {
        let now = Instant::now();
        let mut tally = Tally::default();
        for ms in 1..=100 {
            record(&mut tally.latency, Duration::from_millis(ms));
            tally.success(now);
        }
        for i in 0..7 {
            tally.failure(
                Cause::Status(500),
                "HTTP 500 Internal Server Error".into(),
                now,
            );
            tally.failure(Cause::Other, format!("odd {}", i % 6), now);
        }
        tally.failure(Cause::Timeout, "timed out".into(), now);
        Report {
            urls: vec!["http://127.0.0.1:8000".into()],
            interrupted: false,
            settings: Settings {
                requests: Some(115),
                duration_s: None,
                concurrency: 10,
                threads: 2,
                rate: None,
                iterations: 1000,
                data_size: 64,
                timeout_s: 30.0,
                callback_timeout_s: 30.0,
                batch: 1,
            },
            modes: vec![ModeReport::new(
                Mode::Sync,
                Loop::Closed,
                &tally,
                2.0,
                false,
                None,
            )],
        }
    }

    #[test]
    fn percentiles_counts_and_top_errors() {
        let report = sample();
        let sync = &report.modes[0];
        assert_eq!((sync.total, sync.success, sync.failed), (115, 100, 15));
        assert_eq!(sync.failures.http["500"], 7);
        assert_eq!(sync.failures.timeout, 1);
        assert_eq!(sync.failures.other, 7);
        assert!((sync.throughput_rps - 57.5).abs() < 1e-9);
        let latency = sync.latency_ms.as_ref().expect("latency");
        assert!((latency.p50 - 50.0).abs() < 0.1, "{latency:?}");
        assert!((latency.p99 - 99.0).abs() < 0.1, "{latency:?}");
        assert!((latency.min - 1.0).abs() < 0.01);
        assert!((latency.max - 100.0).abs() < 0.1);
        assert_eq!(sync.top_errors.len(), 5);
        assert_eq!(
            sync.top_errors[0],
            ErrorCount {
                message: "HTTP 500 Internal Server Error".into(),
                count: 7
            }
        );
        assert_eq!(sync.top_errors[1].message, "odd 0");
        assert_eq!(sync.top_errors[1].count, 2);
    }

    #[test]
    fn text_and_json_say_the_same() {
        let report = sample();
        let text = report.render_text();
        assert!(text.contains("115 total, 100 success, 15 failed"), "{text}");
        assert!(text.contains("HTTP 500: 7, timeout: 1, other: 7"), "{text}");
        assert!(text.contains("7  HTTP 500 Internal Server Error"), "{text}");
        let json = serde_json::to_value(&report).expect("serialises");
        assert_eq!(json["modes"][0]["mode"], "sync");
        assert_eq!(json["modes"][0]["loop"], "closed");
        assert_eq!(json["modes"][0]["failures"]["http"]["500"], 7);
        assert!(json["modes"][0]["callbacks"].is_null());
        let back: Report = serde_json::from_value(json).expect("reads back");
        assert_eq!(back.modes[0].total, 115);
    }

    #[test]
    fn several_urls_are_listed_in_text_and_json() {
        let mut report = sample();
        assert!(
            report
                .render_text()
                .starts_with("syncasync loadgen: http://127.0.0.1:8000\n"),
            "one URL stays on the first line"
        );
        report.urls.push("http://127.0.0.1:8001".into());
        let text = report.render_text();
        assert!(
            text.starts_with(
                "syncasync loadgen: 2 URLs, workers assigned round-robin\n  \
                 http://127.0.0.1:8000\n  http://127.0.0.1:8001\n"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&report).expect("serialises");
        assert_eq!(
            json["urls"],
            serde_json::json!(["http://127.0.0.1:8000", "http://127.0.0.1:8001"])
        );
        assert!(json.get("url").is_none());
    }

    fn callback_tally(received: u64, delivery_span: Option<Duration>) -> CallbackTally {
        CallbackTally {
            expected: 20,
            received,
            duplicates: 0,
            unknown: 0,
            malformed: 0,
            time_to_callback: crate::loadgen::tally::latency_histogram(),
            delivery_span,
        }
    }

    #[test]
    fn delivered_rps_is_received_over_the_delivery_span() {
        let tally = callback_tally(20, Some(Duration::from_millis(250)));
        let callbacks = CallbackReport::new(&tally, WaitOutcome::AllArrived);
        assert_eq!(callbacks.delivery_span_s, Some(0.25));
        assert_eq!(callbacks.delivered_rps, Some(80.0));

        let mut report = sample();
        report.modes[0].callbacks = Some(callbacks);
        let text = report.render_text();
        assert!(
            text.contains("20 received of 20 expected (80.0 delivered/s in 0.250 s), 0 missing"),
            "{text}"
        );

        let none = CallbackReport::new(&callback_tally(0, None), WaitOutcome::TimedOut);
        assert_eq!((none.delivery_span_s, none.delivered_rps), (None, None));
        let json = serde_json::to_value(&none).expect("serialises");
        assert!(json["delivered_rps"].is_null() && json["delivery_span_s"].is_null());
    }
}
