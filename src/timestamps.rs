//! How times are written on the wire, and read back from query parameters.
//!
//! By default as the original wrote them (Python's `datetime.utcnow().isoformat()`): naive
//! UTC, ISO 8601, with microseconds (`2026-12-02T06:19:37.098857`). Clients of the original
//! compute with them as naive datetimes (`datetime.utcnow() - datetime.fromisoformat(…)`),
//! which an offset would break. `APP_TIMESTAMP_FORMAT=rfc3339` writes RFC 3339 with `Z`
//! instead, for clients that want the zone spelled out.
//!
//! The choice is one per process, made once as `serve` starts (like the log format): every
//! place that writes a time (records, attempts, the callback body, events, the admin API)
//! reads it here rather than being handed it, so no writer can disagree with another.
//! A process that never chooses (the tools, tests of the library) writes the default.

use std::sync::OnceLock;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::Serializer;

/// How times are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TimestampFormat {
    /// `2026-12-02T06:19:37.098857`: UTC without a zone, as the original wrote them.
    #[default]
    Naive,
    /// `2026-12-02T06:19:37.098857Z`.
    Rfc3339,
}

static FORMAT: OnceLock<TimestampFormat> = OnceLock::new();

/// Chooses the format for this process; the first choice stands.
pub fn choose(format: TimestampFormat) {
    let _ = FORMAT.set(format);
}

fn chosen() -> TimestampFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// `t` in the chosen format, with microseconds.
pub fn format(t: &DateTime<Utc>) -> String {
    format_as(chosen(), t)
}

fn format_as(format: TimestampFormat, t: &DateTime<Utc>) -> String {
    match format {
        TimestampFormat::Naive => t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        TimestampFormat::Rfc3339 => t.to_rfc3339_opts(SecondsFormat::Micros, true),
    }
}

/// For `#[serde(serialize_with)]`.
pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(t))
}

/// For `#[serde(serialize_with)]` on an optional time.
pub fn serialize_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => serialize(t, s),
        None => s.serialize_none(),
    }
}

/// A time a client sent: RFC 3339 (any offset), or ISO 8601 without a zone, read as UTC (as
/// the service writes them by default, so that a client can send a time back as it got it),
/// its seconds optional (a browser's `datetime-local` field leaves out `:00`).
pub fn parse(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|pattern| NaiveDateTime::parse_from_str(text, pattern).ok())
    .map(|naive| naive.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn written_as_the_original_wrote_them_or_as_rfc3339() {
        let t = Utc.with_ymd_and_hms(2026, 12, 2, 6, 19, 37).unwrap()
            + chrono::Duration::microseconds(98_857);
        assert_eq!(
            format_as(TimestampFormat::Naive, &t),
            "2026-12-02T06:19:37.098857"
        );
        assert_eq!(
            format_as(TimestampFormat::Rfc3339, &t),
            "2026-12-02T06:19:37.098857Z"
        );
        // Always six digits, even on a whole second (Python leaves them out then; a client
        // parsing a fixed format is better served by one format).
        let whole = Utc.with_ymd_and_hms(2026, 12, 2, 6, 19, 37).unwrap();
        assert_eq!(
            format_as(TimestampFormat::Naive, &whole),
            "2026-12-02T06:19:37.000000"
        );
    }

    #[test]
    fn read_back_in_either_form() {
        let t = Utc.with_ymd_and_hms(2026, 1, 31, 12, 0, 0).unwrap();
        for text in [
            "2026-01-31T12:00:00Z",
            "2026-01-31T13:00:00+01:00",
            "2026-01-31T12:00:00",
            "2026-01-31T12:00:00.000000",
            "2026-01-31 12:00:00",
            "2026-01-31T12:00",
        ] {
            assert_eq!(parse(text), Some(t), "{text}");
        }
        for text in [
            "2026-01-31",
            "yesterday",
            "",
            "2026-01-31T25:00:00",
            "2026-01-31T12",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }
}
