//! When to try a failed callback again (SPEC §4): exponential backoff with jitter, capped,
//! honouring the receiver's `Retry-After`.

use std::time::{Duration, SystemTime};

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts allowed after the first, per round of delivery.
    pub max_retries: u32,
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// This policy with a request's own retry budget, when it asked for one (never above
    /// the operator's: input checking sees to that, and this caps it again).
    pub fn with_max_retries(self, asked: Option<u32>) -> Self {
        Self {
            max_retries: asked.map_or(self.max_retries, |n| n.min(self.max_retries)),
            ..self
        }
    }

    /// How long to wait after the `attempt`-th failed attempt of a round (1-based), or `None`
    /// when the retries are used up.
    ///
    /// The wait is `min(base·2^(attempt-1), max)`, drawn uniformly from its upper half so that
    /// receivers recovering from an outage are not hit by every retry at the same instant,
    /// while no retry comes sooner than half the nominal delay. A `Retry-After` from the
    /// receiver lengthens the wait (never beyond `max`) but never shortens it.
    pub fn delay_after(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if attempt > self.max_retries {
            return None;
        }
        let nominal = self.nominal(attempt);
        let jittered = if nominal.is_zero() {
            nominal
        } else {
            rand::rng().random_range(nominal / 2..=nominal)
        };
        let asked = retry_after.map_or(Duration::ZERO, |d| d.min(self.max));
        Some(jittered.max(asked))
    }

    /// The delay before jitter.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        self.base
            .checked_mul(1u32 << exponent.min(31))
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// Reads a `Retry-After` header: delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }

    #[test]
    fn nominal_delay_doubles_from_base_and_stops_at_max() {
        let p = RetryPolicy {
            max_retries: 100,
            ..policy()
        };
        let secs: Vec<u64> = (1..=7).map(|n| p.nominal(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(
            p.nominal(100),
            Duration::from_secs(30),
            "no overflow on huge attempt numbers"
        );
    }

    #[test]
    fn jitter_stays_within_the_upper_half_of_the_nominal_delay() {
        let p = policy();
        for attempt in 1..=3 {
            let nominal = p.nominal(attempt);
            for _ in 0..200 {
                let d = p.delay_after(attempt, None).unwrap();
                assert!(d >= nominal / 2 && d <= nominal, "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn retries_run_out_after_max_retries() {
        let p = policy();
        assert!(p.delay_after(3, None).is_some());
        assert_eq!(p.delay_after(4, None), None);
        let none = RetryPolicy {
            max_retries: 0,
            ..policy()
        };
        assert_eq!(none.delay_after(1, None), None);
    }

    #[test]
    fn retry_after_lengthens_but_is_capped_and_never_shortens() {
        let p = policy();
        assert_eq!(
            p.delay_after(1, Some(Duration::from_secs(10))),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            p.delay_after(1, Some(Duration::from_secs(3600))),
            Some(Duration::from_secs(30))
        );
        let d = p.delay_after(3, Some(Duration::ZERO)).unwrap();
        assert!(
            d >= Duration::from_secs(2),
            "a Retry-After of 0 does not cut the backoff: {d:?}"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 5 ", now), Some(Duration::from_secs(5)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(42))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(42));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
