//! The pace a receiver sets (SPEC §12): a rate limit per destination, kept as a token bucket
//! on each instance, and the hold a receiver's `Retry-After` puts on its whole destination.
//!
//! A limit is shared out between the instances: each of the K instances that read the
//! controls in the last few seconds delivers at most `per_second / K` a second, with bursts
//! of `burst / K` (at least one). No instance waits on another for a token, so a limit costs
//! no database round trip per delivery; the price is that a destination whose jobs all go to
//! one instance gets only that instance's share until the others claim some too (they claim
//! from the same queue, so they do as soon as they have free workers).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Deliveries a second and the burst allowed above that pace.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RateLimit {
    /// Deliveries a second, on average (a fraction is allowed: 0.5 is one every two seconds).
    pub per_second: f64,
    /// Deliveries that may start at once after a quiet spell.
    pub burst: u32,
}

/// A destination's own limit, set by an operator over the default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OwnRate {
    /// No limit for this destination, whatever the default.
    Unlimited,
    Limited(RateLimit),
}

impl OwnRate {
    pub fn limit(self) -> Option<RateLimit> {
        match self {
            Self::Unlimited => None,
            Self::Limited(limit) => Some(limit),
        }
    }
}

/// Why a rate limit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("deliveries per second must be a number from {min} to {max}", min = RateLimit::MIN_PER_SECOND, max = RateLimit::MAX_PER_SECOND)]
    PerSecond,
    #[error("the burst must be a whole number from 1 to {max}", max = RateLimit::MAX_BURST)]
    Burst,
}

impl RateLimit {
    /// Above this a limit protects nobody: no delivery path here goes that fast.
    pub const MAX_PER_SECOND: f64 = 100_000.0;
    /// One delivery in about 17 minutes: slower is a pause, which says so.
    pub const MIN_PER_SECOND: f64 = 0.001;
    pub const MAX_BURST: u32 = 100_000;

    /// A limit of `per_second` with bursts of `burst`, by default one second's worth (at
    /// least one delivery).
    pub fn new(per_second: f64, burst: Option<u32>) -> Result<Self, RateError> {
        if !(Self::MIN_PER_SECOND..=Self::MAX_PER_SECOND).contains(&per_second) {
            return Err(RateError::PerSecond);
        }
        let burst = match burst {
            Some(burst) if (1..=Self::MAX_BURST).contains(&burst) => burst,
            Some(_) => return Err(RateError::Burst),
            // In range: per_second is at most MAX_PER_SECOND.
            None => per_second.ceil().max(1.0) as u32,
        };
        Ok(Self { per_second, burst })
    }

    /// One instance's part of the limit when `instances` share it.
    pub fn share(self, instances: u32) -> Self {
        let k = instances.max(1);
        Self {
            per_second: self.per_second / f64::from(k),
            burst: (self.burst / k).max(1),
        }
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.per_second, self.burst)
    }
}

/// The setting APP_CALLBACK_RATE_PER_DESTINATION: `unlimited`, or deliveries a second with
/// an optional burst after a slash (`20`, `0.5`, `20/40`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DefaultRate(pub Option<RateLimit>);

impl FromStr for DefaultRate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "unlimited" {
            return Ok(Self(None));
        }
        let (rate, burst) = match s.split_once('/') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (s, None),
        };
        let per_second: f64 = rate
            .parse()
            .map_err(|_| format!("{s:?} is not a rate: write `unlimited`, `20` or `20/40`"))?;
        let burst = burst
            .map(|b| b.parse::<u32>().map_err(|_| RateError::Burst.to_string()))
            .transpose()?;
        RateLimit::new(per_second, burst)
            .map(|limit| Self(Some(limit)))
            .map_err(|err| err.to_string())
    }
}

impl fmt::Display for DefaultRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("unlimited"),
            Some(limit) => limit.fmt(f),
        }
    }
}

/// One destination's tokens on this instance: each delivery takes one, and they come back at
/// the limit's pace up to its burst.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn full(limit: RateLimit, now: Instant) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    /// Adds the tokens earned since the last look (a limit lowered meanwhile cuts them to its
    /// burst).
    pub(super) fn refill(&mut self, limit: RateLimit, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * limit.per_second;
        self.tokens = (self.tokens + earned).min(f64::from(limit.burst));
        self.at = now;
    }

    /// Deliveries that may start now.
    pub(super) fn available(&self) -> u32 {
        // Non-negative and at most a burst (≤ MAX_BURST): the cast keeps the whole part.
        self.tokens.max(0.0).floor() as u32
    }

    pub(super) fn take(&mut self) {
        self.tokens -= 1.0;
    }

    /// How long until the next delivery may start, as of the last refill.
    pub(super) fn next_token_in(&self, limit: RateLimit) -> Duration {
        if self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        // Bounded: at most a burst's worth of tokens short, at the slowest rate.
        Duration::try_from_secs_f64((1.0 - self.tokens) / limit.per_second)
            .unwrap_or(Duration::from_secs(86_400 * 365))
    }

    pub(super) fn at(&self) -> Instant {
        self.at
    }

    /// Whether it has not earned back its whole burst by `now`: forgetting it would hand its
    /// destination a burst it has not earned.
    pub(super) fn is_short(&self, limit: RateLimit, now: Instant) -> bool {
        let mut refilled = *self;
        refilled.refill(limit, now);
        refilled.tokens < f64::from(limit.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_takes_a_rate_and_a_burst_and_refuses_the_rest() {
        let parse = |s: &str| s.parse::<DefaultRate>();
        assert_eq!(parse("unlimited"), Ok(DefaultRate(None)));
        assert_eq!(
            parse("20"),
            Ok(DefaultRate(Some(RateLimit {
                per_second: 20.0,
                burst: 20
            })))
        );
        assert_eq!(
            parse("0.5"),
            Ok(DefaultRate(Some(RateLimit {
                per_second: 0.5,
                burst: 1
            })))
        );
        assert_eq!(parse("20/40").map(|r| r.0.map(|l| l.burst)), Ok(Some(40)));
        for bad in [
            "", "0", "0.0001", "-1", "NaN", "inf", "1e9", "20/0", "20/", "20/x", "20\n", " 20",
            "20/40/2",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn a_share_never_drops_below_one_delivery_of_burst() {
        let limit = RateLimit::new(20.0, Some(3)).unwrap();
        assert_eq!(
            limit.share(2),
            RateLimit {
                per_second: 10.0,
                burst: 1
            }
        );
        assert_eq!(limit.share(0), limit, "no instance seen yet: this one");
    }

    #[test]
    fn a_bucket_refills_at_the_pace_up_to_the_burst() {
        let limit = RateLimit::new(10.0, Some(5)).unwrap();
        let t0 = Instant::now();
        let mut bucket = Bucket::full(limit, t0);
        assert_eq!(bucket.available(), 5);
        (0..5).for_each(|_| bucket.take());
        assert_eq!(bucket.available(), 0);
        assert_eq!(bucket.next_token_in(limit), Duration::from_millis(100));
        bucket.refill(limit, t0 + Duration::from_millis(250));
        assert_eq!(bucket.available(), 2);
        bucket.refill(limit, t0 + Duration::from_secs(60));
        assert_eq!(bucket.available(), 5, "never above the burst");
    }
}
