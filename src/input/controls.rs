//! The optional fields of an async request that control it beyond the original's (SPEC §11): when
//! its work may start (`run_at` or `delay_seconds`), its place among due jobs (`priority`), and its
//! own retry budget and per-attempt timeout (`callback_max_retries`, `callback_timeout_seconds`),
//! which may only tighten the operator's settings. A field sent as `null` is absent. Unlike the
//! original's fields these are read strictly: a number is a JSON number, a time a string.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::{FieldError, Part};

/// Shortest timeout a request may ask for: the millisecond a timeout is kept to (the
/// operator's own setting has the same floor).
const MIN_CALLBACK_TIMEOUT_SECS: f64 = 0.001;

/// The priorities a request may ask for, lowest to highest; 0 when it asks for none.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i8> = -10..=10;

/// What the operator allows a request to ask for: the caps are the operator's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControlLimits {
    /// Furthest ahead a request may be scheduled (`APP_MAX_SCHEDULE_DELAY_SECONDS`).
    pub max_schedule_delay: Duration,
    /// `APP_CALLBACK_MAX_RETRIES`: the default, and the most a request may ask for.
    pub max_retries: u32,
    /// `APP_CALLBACK_TIMEOUT_SECONDS`: the default, and the longest a request may ask for.
    pub max_callback_timeout: Duration,
}

/// What a request asked for; `None` where it asked for nothing (the operator's setting holds).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Controls {
    /// No work before this time (a time already past means at once).
    pub run_at: Option<DateTime<Utc>>,
    /// The delay `run_at` was reckoned from, when the request asked for one rather than a
    /// time: what a replay of it (`Idempotency-Key`) must ask for again.
    pub delay: Option<Duration>,
    /// Among due jobs, a higher one is claimed first (within [`PRIORITY_RANGE`]; see
    /// `APP_PRIORITY_STEP_SECONDS` for how waiting makes up for it).
    pub priority: i8,
    pub max_retries: Option<u32>,
    pub callback_timeout: Option<Duration>,
}

impl Controls {
    /// What was asked, in a canonical form for a request's idempotency fingerprint; empty
    /// when nothing was (so that a plain request's fingerprint is what it always was).
    pub fn fingerprint(&self) -> String {
        if *self == Self::default() {
            return String::new();
        }
        let schedule = match (self.delay, self.run_at) {
            (Some(delay), _) => format!("in {}", delay.as_micros()),
            (None, Some(at)) => format!("at {}", at.timestamp_micros()),
            (None, None) => String::new(),
        };
        // A priority is written only when asked, so that the fingerprints of requests
        // stored before there were priorities still match their replays.
        let priority = match self.priority {
            0 => String::new(),
            level => format!(";priority {level}"),
        };
        format!(
            "{schedule};{:?};{:?}{priority}",
            self.max_retries,
            self.callback_timeout.map(|t| t.as_millis())
        )
    }
}

/// Reads the control fields of `object` at `now`, adding an error to `errors` for each one
/// that breaks a rule.
pub(super) fn controls(
    object: &Map<String, Value>,
    limits: &ControlLimits,
    now: DateTime<Utc>,
    errors: &mut Vec<FieldError>,
) -> Controls {
    let field = |name: &str| object.get(name).filter(|value| !value.is_null());
    let max_delay_secs = limits.max_schedule_delay.as_secs_f64();
    let mut asked_delay = None;

    let run_at = match (field("run_at"), field("delay_seconds")) {
        (Some(_), Some(delay)) => take(
            errors,
            Err(FieldError::value_error(
                Part::Body,
                "delay_seconds",
                "give run_at or delay_seconds, not both",
                delay,
            )),
        ),
        (Some(at), None) => take(
            errors,
            time(at).and_then(|at| {
                let ahead = (at - now).num_milliseconds() as f64 / 1000.0;
                if ahead > max_delay_secs {
                    Err(too_far("run_at", max_delay_secs, at_value(at)))
                } else {
                    Ok(at)
                }
            }),
        ),
        (None, Some(delay)) => {
            asked_delay = take(errors, seconds("delay_seconds", delay, 0.0, max_delay_secs))
                .map(Duration::from_secs_f64);
            asked_delay
                .and_then(|delay| chrono::Duration::from_std(delay).ok())
                .map(|delay| now + delay)
        }
        (None, None) => None,
    };
    let priority = field("priority")
        .and_then(|value| {
            let (low, high) = (*PRIORITY_RANGE.start(), *PRIORITY_RANGE.end());
            let level = integer("priority", value, i64::from(low), i64::from(high), None);
            take(errors, level)
        })
        .and_then(|level| i8::try_from(level).ok())
        .unwrap_or(0);
    let max_retries = field("callback_max_retries").and_then(|value| {
        let setting = "APP_CALLBACK_MAX_RETRIES";
        let n = integer(
            "callback_max_retries",
            value,
            0,
            i64::from(limits.max_retries),
            Some(setting),
        );
        take(errors, n).and_then(|n| u32::try_from(n).ok())
    });
    let max_timeout = limits.max_callback_timeout.as_secs_f64();
    let callback_timeout = field("callback_timeout_seconds").and_then(|value| {
        take(
            errors,
            seconds(
                "callback_timeout_seconds",
                value,
                MIN_CALLBACK_TIMEOUT_SECS,
                max_timeout,
            )
            // Kept to the millisecond, as it is stored.
            .map(|secs| Duration::from_millis((secs * 1000.0).round() as u64)),
        )
    });
    Controls {
        run_at,
        delay: asked_delay,
        priority,
        max_retries,
        callback_timeout,
    }
}

/// Longest `ordering_key`.
pub const MAX_ORDERING_KEY_LEN: usize = 255;

/// What an `ordering_key` is made of: visible ASCII (letters, digits, punctuation; no space),
/// as an SQS FIFO queue's message group id. One byte a character, so its length is the same
/// counted either way, and no two spellings of one key (Unicode normalisation) differ.
pub const ORDERING_KEY_PATTERN: &str = "^[!-~]+$";

/// The request's `ordering_key`, if it has one: requests with the same key are delivered one
/// at a time, in acceptance order.
pub(super) fn ordering_key(
    object: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let name = "ordering_key";
    let key = match object.get(name).filter(|value| !value.is_null())? {
        Value::String(key) => key,
        other => {
            errors.push(FieldError::not_a_string(Part::Body, name, other));
            return None;
        }
    };
    let error = if key.is_empty() {
        FieldError::too_short(Part::Body, name, 1, &Value::from(""))
    } else if key.chars().count() > MAX_ORDERING_KEY_LEN {
        // Not echoed whole: the answer need not grow with the caller's input.
        let start: String = key.chars().take(32).collect();
        FieldError::too_long(Part::Body, name, MAX_ORDERING_KEY_LEN, &Value::from(start))
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        FieldError::pattern_mismatch(
            Part::Body,
            name,
            ORDERING_KEY_PATTERN,
            &Value::from(key.as_str()),
        )
    } else {
        return Some(key.clone());
    };
    errors.push(error);
    None
}

/// A `traceparent` as W3C writes one: version, trace id, parent id, flags, in lowercase hex.
/// (An all-zero id, or version `ff`, fits it but is no parent: W3C says to start a new trace
/// then, and so does the service.)
pub const TRACEPARENT_PATTERN: &str = "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$";

/// What a `tracestate` may hold: printable ASCII (its list syntax is checked when it is read:
/// one that breaks it is dropped, as W3C says, rather than refused).
pub const TRACESTATE_PATTERN: &str = "^[ -~]*$";

/// A request body's own trace context: a batch item's, or an async request's that would
/// rather not use headers. Each, when present, is a string of the W3C form.
pub(super) fn caller_trace(
    object: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> CallerTrace {
    let mut field = |name: &str, pattern: &str, max: usize, fits: fn(&str) -> bool| {
        let value = match object.get(name).filter(|value| !value.is_null())? {
            Value::String(value) => value,
            other => {
                errors.push(FieldError::not_a_string(Part::Body, name, other));
                return None;
            }
        };
        if value.len() > max {
            let start: String = value.chars().take(32).collect();
            errors.push(FieldError::too_long(
                Part::Body,
                name,
                max,
                &Value::from(start),
            ));
            None
        } else if !fits(value) {
            errors.push(FieldError::pattern_mismatch(
                Part::Body,
                name,
                pattern,
                &Value::from(value.as_str()),
            ));
            None
        } else {
            Some(value.clone())
        }
    };
    CallerTrace {
        traceparent: field("traceparent", TRACEPARENT_PATTERN, 55, is_traceparent_form),
        tracestate: field(
            "tracestate",
            TRACESTATE_PATTERN,
            crate::trace_context::MAX_TRACESTATE_LEN,
            |s| s.bytes().all(|b| (b' '..=b'~').contains(&b)),
        ),
    }
}

/// Whether `s` matches [`TRACEPARENT_PATTERN`].
fn is_traceparent_form(s: &str) -> bool {
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let parts: Vec<&str> = s.split('-').collect();
    matches!(parts.as_slice(), [v, t, p, f] if hex(v, 2) && hex(t, 32) && hex(p, 16) && hex(f, 2))
}

/// The trace context a caller sent with a request: its `traceparent` and `tracestate`, from
/// the body's fields or else the request's headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerTrace {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl CallerTrace {
    /// These fields, or where the body had none, `headers`' (a body's `tracestate` goes with
    /// its own `traceparent` only).
    pub fn or_headers(self, headers: &axum::http::HeaderMap) -> Self {
        if self.traceparent.is_some() {
            return self;
        }
        Self::from_headers(headers)
    }

    pub fn from_headers(headers: &axum::http::HeaderMap) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Self {
            traceparent: header(crate::trace_context::TRACEPARENT),
            tracestate: header(crate::trace_context::TRACESTATE),
        }
    }

    /// The request's own span in the caller's trace; `None` without a valid parent.
    pub fn begin(&self) -> Option<crate::trace_context::RequestTrace> {
        crate::trace_context::RequestTrace::begin(
            self.traceparent.as_deref(),
            self.tracestate.as_deref(),
        )
    }
}

/// The value of a field that passed, or `None` with its error added to `errors`.
fn take<T>(errors: &mut Vec<FieldError>, result: Result<T, FieldError>) -> Option<T> {
    result.map_err(|error| errors.push(error)).ok()
}

fn at_value(at: DateTime<Utc>) -> Value {
    Value::from(at.to_rfc3339())
}

fn too_far(field: &str, max_secs: f64, input: Value) -> FieldError {
    FieldError::value_error(
        Part::Body,
        field,
        format!("at most {max_secs} seconds ahead (APP_MAX_SCHEDULE_DELAY_SECONDS)"),
        &input,
    )
}

/// A time: RFC 3339, or ISO 8601 without a zone read as UTC (as the API writes times).
fn time(value: &Value) -> Result<DateTime<Utc>, FieldError> {
    let parsed = value.as_str().and_then(crate::timestamps::parse);
    parsed.ok_or_else(|| {
        FieldError::new(
            Part::Body,
            Some("run_at"),
            "datetime_parsing",
            "Input should be a valid datetime: RFC 3339 (2026-01-31T12:00:00Z), or without a \
             zone in UTC",
            value.clone(),
        )
    })
}

/// A finite JSON number of seconds within `min..=max`.
fn seconds(field: &str, value: &Value, min: f64, max: f64) -> Result<f64, FieldError> {
    let Some(secs) = value.as_f64().filter(|s| s.is_finite()) else {
        return Err(FieldError::new(
            Part::Body,
            Some(field),
            "float_type",
            "Input should be a valid number",
            value.clone(),
        ));
    };
    if secs < min {
        return Err(FieldError::new(
            Part::Body,
            Some(field),
            "greater_than_equal",
            format!("Input should be greater than or equal to {min}"),
            value.clone(),
        )
        .with_ctx(json!({ "ge": min })));
    }
    if secs > max {
        return Err(if field == "delay_seconds" {
            too_far(field, max, value.clone())
        } else {
            FieldError::new(
                Part::Body,
                Some(field),
                "less_than_equal",
                format!(
                    "Input should be less than or equal to {max} (APP_CALLBACK_TIMEOUT_SECONDS)"
                ),
                value.clone(),
            )
            .with_ctx(json!({ "le": max }))
        });
    }
    Ok(secs)
}

/// A JSON integer within `min..=max`; `max` is the operator's setting `setting` when named.
fn integer(
    field: &str,
    value: &Value,
    min: i64,
    max: i64,
    setting: Option<&str>,
) -> Result<i64, FieldError> {
    // A number with no fractional part is an integer (`2.0`, and `-0`, which JSON parsers
    // read as a float); one too large for i64 is out of any range.
    let integral = value
        .as_f64()
        .filter(|n| n.fract() == 0.0)
        .map(|n| match n {
            n if n.abs() < 9.0e18 => n as i64,
            n if n > 0.0 => i64::MAX,
            _ => i64::MIN,
        });
    let Some(n) = value.as_i64().or(integral) else {
        return Err(FieldError::new(
            Part::Body,
            Some(field),
            "int_type",
            "Input should be a valid integer",
            value.clone(),
        ));
    };
    if n < min {
        return Err(FieldError::at_least(Part::Body, field, min, value));
    }
    if n > max {
        let because = setting.map(|s| format!(" ({s})")).unwrap_or_default();
        return Err(FieldError::new(
            Part::Body,
            Some(field),
            "less_than_equal",
            format!("Input should be less than or equal to {max}{because}"),
            value.clone(),
        )
        .with_ctx(json!({ "le": max })));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ControlLimits {
        ControlLimits {
            max_schedule_delay: Duration::from_secs(3600),
            max_retries: 3,
            max_callback_timeout: Duration::from_secs(10),
        }
    }

    fn read(body: Value) -> Result<Controls, Vec<String>> {
        let now = DateTime::parse_from_rfc3339("2026-12-03T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut errors = Vec::new();
        let controls = controls(body.as_object().unwrap(), &limits(), now, &mut errors);
        if errors.is_empty() {
            Ok(controls)
        } else {
            Err(errors
                .iter()
                .map(|e| format!("{}: {}", e.field(), e.kind))
                .collect())
        }
    }

    #[test]
    fn nothing_asked_is_the_operators_settings() {
        assert_eq!(read(json!({})).unwrap(), Controls::default());
        let nulls = json!({"run_at": null, "delay_seconds": null, "callback_max_retries": null,
                           "callback_timeout_seconds": null, "priority": null});
        assert_eq!(read(nulls).unwrap(), Controls::default());
    }

    #[test]
    fn a_schedule_is_a_time_or_a_delay_within_the_bound() {
        let at = read(json!({"run_at": "2026-12-03T08:30:00Z"}))
            .unwrap()
            .run_at;
        assert_eq!(at.unwrap().to_rfc3339(), "2026-12-03T08:30:00+00:00");
        let zoned = read(json!({"run_at": "2026-12-03T09:30:00+01:00"}))
            .unwrap()
            .run_at;
        assert_eq!(zoned, at, "any offset, read as UTC");
        let naive = read(json!({"run_at": "2026-12-03T08:30:00"}))
            .unwrap()
            .run_at;
        assert_eq!(naive, at, "no zone is UTC, as the API writes times");
        let past = read(json!({"run_at": "2020-01-01T00:00:00Z"}))
            .unwrap()
            .run_at;
        assert!(past.is_some(), "a time already past is kept (due at once)");
        let delayed = read(json!({"delay_seconds": 1800})).unwrap().run_at;
        assert_eq!(delayed, at);
        let fraction = read(json!({"delay_seconds": 0.5})).unwrap().run_at.unwrap();
        assert_eq!(fraction.timestamp_subsec_millis(), 500);

        for (body, error) in [
            (
                json!({"run_at": "2026-12-03T09:00:01Z"}),
                "run_at: value_error",
            ),
            (json!({"run_at": "tomorrow"}), "run_at: datetime_parsing"),
            (json!({"run_at": 1_800_000_000}), "run_at: datetime_parsing"),
            (json!({"delay_seconds": 3601}), "delay_seconds: value_error"),
            (
                json!({"delay_seconds": -1}),
                "delay_seconds: greater_than_equal",
            ),
            (json!({"delay_seconds": "10"}), "delay_seconds: float_type"),
            (
                json!({"delay_seconds": 1e308}),
                "delay_seconds: value_error",
            ),
            (
                json!({"run_at": "2026-12-03T08:30:00Z", "delay_seconds": 1}),
                "delay_seconds: value_error",
            ),
        ] {
            assert_eq!(read(body.clone()).unwrap_err(), [error], "{body}");
        }
    }

    #[test]
    fn a_priority_is_an_integer_from_minus_ten_to_ten() {
        for (asked, level) in [
            (json!(10), 10),
            (json!(-10), -10),
            (json!(3.0), 3),
            (json!(0), 0),
        ] {
            let body = json!({ "priority": asked });
            assert_eq!(read(body).unwrap().priority, level, "{asked}");
        }
        for (asked, error) in [
            (json!(11), "priority: less_than_equal"),
            (json!(-11), "priority: greater_than_equal"),
            (json!(i64::MIN), "priority: greater_than_equal"),
            (json!(1e300), "priority: less_than_equal"),
            (json!(1.5), "priority: int_type"),
            (json!("5"), "priority: int_type"),
            (json!(true), "priority: int_type"),
        ] {
            let body = json!({ "priority": asked });
            assert_eq!(read(body).unwrap_err(), [error], "{asked}");
        }
    }

    #[test]
    fn a_fingerprint_names_a_priority_only_when_one_was_asked() {
        let plain = read(json!({"priority": 0})).unwrap();
        assert_eq!(plain.fingerprint(), "", "as a request that asked nothing");
        let retries = read(json!({"callback_max_retries": 1})).unwrap();
        assert_eq!(
            retries.fingerprint(),
            ";Some(1);None",
            "as stored before priorities"
        );
        let high = read(json!({"callback_max_retries": 1, "priority": 5})).unwrap();
        assert_eq!(high.fingerprint(), ";Some(1);None;priority 5");
        let low = read(json!({"priority": -5})).unwrap();
        assert_ne!(low.fingerprint(), high.fingerprint());
    }

    #[test]
    fn its_own_retries_and_timeout_never_above_the_operators() {
        let asked = read(json!({"callback_max_retries": 0, "callback_timeout_seconds": 2.5}));
        let asked = asked.unwrap();
        assert_eq!(asked.max_retries, Some(0));
        assert_eq!(asked.callback_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(
            read(json!({"callback_max_retries": 3}))
                .unwrap()
                .max_retries,
            Some(3)
        );
        for (integral, n) in [(json!(2.0), 2), (json!(-0.0), 0)] {
            let body = json!({ "callback_max_retries": integral });
            assert_eq!(read(body).unwrap().max_retries, Some(n), "{integral}");
        }
        let millisecond = read(json!({"callback_timeout_seconds": 0.0016})).unwrap();
        assert_eq!(millisecond.callback_timeout, Some(Duration::from_millis(2)));
        for (body, error) in [
            (
                json!({"callback_max_retries": 4}),
                "callback_max_retries: less_than_equal",
            ),
            (
                json!({"callback_max_retries": u64::MAX}),
                "callback_max_retries: less_than_equal",
            ),
            (
                json!({"callback_max_retries": -1}),
                "callback_max_retries: greater_than_equal",
            ),
            (
                json!({"callback_max_retries": 1.5}),
                "callback_max_retries: int_type",
            ),
            (
                json!({"callback_max_retries": "2"}),
                "callback_max_retries: int_type",
            ),
            (
                json!({"callback_timeout_seconds": 0}),
                "callback_timeout_seconds: greater_than_equal",
            ),
            (
                json!({"callback_timeout_seconds": 0.0004}),
                "callback_timeout_seconds: greater_than_equal",
            ),
            (
                json!({"callback_timeout_seconds": 10.5}),
                "callback_timeout_seconds: less_than_equal",
            ),
            (
                json!({"callback_timeout_seconds": true}),
                "callback_timeout_seconds: float_type",
            ),
        ] {
            assert_eq!(read(body.clone()).unwrap_err(), [error], "{body}");
        }
    }
}
