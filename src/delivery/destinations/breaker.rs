//! A destination's circuit breaker: failures add to a score, at the threshold it opens and
//! the destination's jobs wait; after the cool-down one probe decides.
//!
//! A timeout or a connection failure counts 1 (the destination is unreachable or stuck: each
//! costs a slot for up to the whole timeout), an HTTP 5xx, 408 or 429 counts ½ (the receiver
//! is up and answers fast, but refuses), any other answer counts nothing (a 4xx is the
//! receiver's deliberate verdict on this callback, not a sign of ill health), and a 2xx
//! resets the score. While open, the claim passes the destination's jobs over, so they wait
//! without an attempt and without a slot, losing none of their attempts and keeping their
//! place. After the cool-down it is half-open: room for exactly one delivery, the probe. The
//! probe's success closes it; its failure opens it again for twice the cool-down, up to the
//! maximum.

use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

use crate::delivery::client::AttemptKind;

/// When the breaker opens and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    /// Failure score at which the breaker opens (a timeout or connection failure counts 1).
    pub threshold: f64,
    /// First cool-down; each failed probe doubles it.
    pub cooldown: Duration,
    pub max_cooldown: Duration,
}

/// What an attempt's outcome says about its destination's health.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Answered with 2xx.
    Healthy,
    /// A failure that counts this much towards opening the breaker.
    Failed(f64),
    /// The destination answered, but not in a way that says it is unwell (a 4xx: a wrong
    /// path, a bad signature).
    Neutral,
    /// Says nothing at all about the destination: it was not reached (a blocked address, a
    /// URL that cannot be sent to) or not given the time (a timeout shorter than the
    /// operator's, chosen by the request).
    Unknown,
}

impl Verdict {
    /// The verdict of one attempt (see the module docs for the weights).
    pub fn of(kind: AttemptKind, status_code: Option<u16>) -> Self {
        match kind {
            AttemptKind::Delivered => Verdict::Healthy,
            AttemptKind::Timeout | AttemptKind::Connection => Verdict::Failed(1.0),
            AttemptKind::HttpStatus => match status_code {
                Some(code) if code >= 500 || code == 408 || code == 429 => Verdict::Failed(0.5),
                _ => Verdict::Neutral,
            },
            AttemptKind::Other => Verdict::Failed(0.5),
            AttemptKind::Blocked | AttemptKind::Invalid => Verdict::Unknown,
        }
    }
}

/// A breaker's state, as `GET /destinations` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Breaker {
    Closed {
        score: f64,
    },
    Open {
        until: Instant,
        cooldown: Duration,
    },
    /// After the cool-down: one probe may go; `cooldown` is the one it ended.
    HalfOpen {
        probing: bool,
        cooldown: Duration,
    },
}

impl Breaker {
    pub(super) const CLOSED: Breaker = Breaker::Closed { score: 0.0 };

    /// An open breaker whose cool-down is over becomes half-open.
    pub(super) fn refresh(&mut self, now: Instant) {
        if let Breaker::Open { until, cooldown } = *self
            && now >= until
        {
            *self = Breaker::HalfOpen {
                probing: false,
                cooldown,
            };
        }
    }

    /// Of `free` places, those a claim may fill, and whether the destination's jobs are held
    /// back (open, or a probe already out).
    pub(super) fn room(&self, free: u32) -> (u32, bool) {
        match self {
            Breaker::Closed { .. } => (free, false),
            Breaker::HalfOpen { probing: false, .. } => (free.min(1), false),
            Breaker::Open { .. } | Breaker::HalfOpen { probing: true, .. } => (free, true),
        }
    }

    /// A delivery starting now: in a half-open breaker, the probe. Answers whether it is.
    pub(super) fn start_probe(&mut self) -> bool {
        match self {
            Breaker::HalfOpen { probing, .. } if !*probing => {
                *probing = true;
                true
            }
            _ => false,
        }
    }

    /// A probe abandoned without an outcome leaves room for another.
    pub(super) fn abandon_probe(&mut self) {
        if let Breaker::HalfOpen { probing, .. } = self {
            *probing = false;
        }
    }

    /// The state after a delivery's `verdict` (`probe`: it was the half-open breaker's probe).
    pub(super) fn after(
        self,
        verdict: Verdict,
        probe: bool,
        now: Instant,
        policy: &BreakerPolicy,
    ) -> Self {
        let open = |cooldown: Duration| Breaker::Open {
            until: now + cooldown,
            cooldown,
        };
        match (self, verdict) {
            // The destination answers: whatever the state, it is healthy again.
            (_, Verdict::Healthy) => Breaker::CLOSED,
            (Breaker::Closed { score }, Verdict::Failed(weight)) => {
                let score = score + weight;
                if score >= policy.threshold {
                    open(policy.cooldown)
                } else {
                    Breaker::Closed { score }
                }
            }
            (Breaker::HalfOpen { cooldown, .. }, Verdict::Failed(_)) if probe => {
                open((cooldown * 2).min(policy.max_cooldown))
            }
            // A neutral answer to a probe still shows the destination is up.
            (Breaker::HalfOpen { .. }, Verdict::Neutral) if probe => Breaker::CLOSED,
            // A probe that learnt nothing leaves the turn to the next one.
            (Breaker::HalfOpen { cooldown, .. }, Verdict::Unknown) if probe => Breaker::HalfOpen {
                cooldown,
                probing: false,
            },
            // Late results of deliveries started before the breaker opened change nothing.
            (state, _) => state,
        }
    }

    /// Closed with nothing against it.
    pub(super) fn is_clear(&self) -> bool {
        matches!(self, Breaker::Closed { score } if *score == 0.0)
    }

    pub(super) fn is_open(&self) -> bool {
        matches!(self, Breaker::Open { .. })
    }

    pub(super) fn state(&self) -> BreakerState {
        match self {
            Breaker::Closed { .. } => BreakerState::Closed,
            Breaker::Open { .. } => BreakerState::Open,
            Breaker::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_weigh_timeouts_more_than_refusals() {
        assert_eq!(
            Verdict::of(AttemptKind::Timeout, None),
            Verdict::Failed(1.0)
        );
        assert_eq!(
            Verdict::of(AttemptKind::Connection, None),
            Verdict::Failed(1.0)
        );
        assert_eq!(
            Verdict::of(AttemptKind::HttpStatus, Some(503)),
            Verdict::Failed(0.5)
        );
        assert_eq!(
            Verdict::of(AttemptKind::HttpStatus, Some(429)),
            Verdict::Failed(0.5)
        );
        assert_eq!(
            Verdict::of(AttemptKind::HttpStatus, Some(404)),
            Verdict::Neutral
        );
        assert_eq!(
            Verdict::of(AttemptKind::HttpStatus, Some(302)),
            Verdict::Neutral
        );
        assert_eq!(
            Verdict::of(AttemptKind::Delivered, Some(200)),
            Verdict::Healthy
        );
        assert_eq!(Verdict::of(AttemptKind::Blocked, None), Verdict::Unknown);
    }
}
