//! What a worker counts while it sends: successes, failures by cause, the latency
//! histogram, error messages, and (async) the ids the service accepted.
//!
//! Each worker owns its tally and the phase merges them when the workers are done, so the
//! hot path takes no lock and shares no cache line with another worker.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds up to an hour, with 3 significant digits: the
/// resolution HdrHistogram users expect (a value is off by at most 0.1%).
const HIGHEST_MICROS: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Distinct failed answers a tally keeps, and how much of each.
pub const SAMPLE_ANSWERS: usize = 3;
pub const SAMPLE_BYTES: usize = 400;

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// An HTTP answer that is not a success (for async: not a 2xx with a `request_id`).
    Status(u16),
    /// No complete answer within `--timeout`.
    Timeout,
    /// Could not connect, or the connection broke before the answer was complete.
    Connection,
    /// Anything else: an unreadable body, a 2xx without the expected fields.
    Other,
}

/// An empty latency histogram with the loadgen's bounds.
pub fn latency_histogram() -> Histogram<u64> {
    // HdrHistogram refuses only a lowest value below 1, a highest below twice the lowest,
    // or more than 5 significant digits; the bounds are constants that pass.
    Histogram::new_with_bounds(1, HIGHEST_MICROS, SIGNIFICANT_DIGITS)
        .unwrap_or_else(|err| unreachable!("constant histogram bounds refused: {err}"))
}

/// Records `latency` in microseconds (values past an hour count as an hour).
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// One worker's counts, or a phase's once merged.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Every request that got an HTTP answer, whatever its status.
    pub latency: Histogram<u64>,
    pub success: u64,
    /// Failed requests by HTTP status.
    pub http: BTreeMap<u16, u64>,
    pub timeout: u64,
    pub connection: u64,
    pub other: u64,
    /// Failure messages with their counts.
    pub errors: HashMap<String, u64>,
    /// The first few distinct bodies of answers that were not a success (cut to
    /// [`SAMPLE_BYTES`]): what the service said, for the report when requests fail.
    pub answers: Vec<String>,
    /// Async: each accepted request's id and due time (time-to-callback starts there).
    pub accepted: Vec<(String, Instant)>,
    /// When the last request of this tally finished.
    pub last_done: Option<Instant>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            latency: latency_histogram(),
            success: 0,
            http: BTreeMap::new(),
            timeout: 0,
            connection: 0,
            other: 0,
            errors: HashMap::new(),
            answers: Vec::new(),
            accepted: Vec::new(),
            last_done: None,
        }
    }
}

impl Tally {
    pub fn failed(&self) -> u64 {
        self.http.values().sum::<u64>() + self.timeout + self.connection + self.other
    }

    pub fn total(&self) -> u64 {
        self.success + self.failed()
    }

    pub fn success(&mut self, done: Instant) {
        self.success += 1;
        self.finished(done);
    }

    pub fn failure(&mut self, cause: Cause, message: String, done: Instant) {
        match cause {
            Cause::Status(code) => *self.http.entry(code).or_default() += 1,
            Cause::Timeout => self.timeout += 1,
            Cause::Connection => self.connection += 1,
            Cause::Other => self.other += 1,
        }
        *self.errors.entry(message).or_default() += 1;
        self.finished(done);
    }

    /// Keeps `body` (of an answer with `status` that was not a success) among the samples,
    /// if there is room and it is not one of them already.
    pub fn sample_answer(&mut self, status: u16, body: &[u8]) {
        if self.answers.len() >= SAMPLE_ANSWERS {
            return;
        }
        let cut = &body[..body.len().min(SAMPLE_BYTES)];
        self.keep_answer(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(cut).trim()
        ));
    }

    /// Keeps `answer` among the samples if there is room and it is not one of them already.
    fn keep_answer(&mut self, answer: String) {
        if self.answers.len() < SAMPLE_ANSWERS && !self.answers.contains(&answer) {
            self.answers.push(answer);
        }
    }

    fn finished(&mut self, done: Instant) {
        self.last_done = Some(self.last_done.map_or(done, |last| last.max(done)));
    }

    /// Adds `other`'s counts to this one.
    pub fn merge(&mut self, other: Tally) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.success += other.success;
        for (code, n) in other.http {
            *self.http.entry(code).or_default() += n;
        }
        self.timeout += other.timeout;
        self.connection += other.connection;
        self.other += other.other;
        for (message, n) in other.errors {
            *self.errors.entry(message).or_default() += n;
        }
        for answer in other.answers {
            self.keep_answer(answer);
        }
        self.accepted.extend(other.accepted);
        if let Some(done) = other.last_done {
            self.finished(done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_histograms_and_messages() {
        let now = Instant::now();
        let mut a = Tally::default();
        record(&mut a.latency, Duration::from_millis(10));
        a.success(now);
        a.failure(Cause::Status(500), "HTTP 500".into(), now);
        let mut b = Tally::default();
        record(&mut b.latency, Duration::from_millis(30));
        b.failure(Cause::Status(500), "HTTP 500".into(), now);
        b.failure(
            Cause::Timeout,
            "timed out".into(),
            now + Duration::from_secs(1),
        );
        b.accepted.push(("id".into(), now));
        a.merge(b);
        assert_eq!(a.total(), 4);
        assert_eq!(a.success, 1);
        assert_eq!(a.failed(), 3);
        assert_eq!(a.http[&500], 2);
        assert_eq!(a.timeout, 1);
        assert_eq!(a.errors["HTTP 500"], 2);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.accepted.len(), 1);
        assert_eq!(a.last_done, Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn latency_is_recorded_in_microseconds_and_saturates() {
        let mut h = latency_histogram();
        record(&mut h, Duration::from_micros(1500));
        record(&mut h, Duration::from_secs(100_000));
        assert!(h.min().abs_diff(1500) <= 2);
        assert!(h.max() >= HIGHEST_MICROS);
    }
}
