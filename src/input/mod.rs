//! The input rules of SPEC §2: from a JSON body to a validated unit of work, or to the list
//! of every field that breaks a rule.
//!
//! The body is checked field by field from a `serde_json::Value` rather than derived with
//! serde, because a client needs to hear which field broke which rule (all of them at once),
//! in the original's `{"loc": ["body", field], "msg": …}` shape, and not serde's first error.

mod controls;
mod errors;
mod lax_int;

use serde::Deserialize;
use serde_json::{Map, Value};
use url::Url;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

use crate::delivery::guard::Guard;
pub use controls::{CallerTrace, ControlLimits, Controls};
pub use errors::{FieldError, Loc, Part};
pub use lax_int::{NotAnInt, int_in_str, lax_int};

pub const MAX_DATA_CHARS: usize = 10_000;
pub const MAX_ITERATIONS: u32 = 1_000_000;
pub const DEFAULT_ITERATIONS: u32 = 1000;
/// Most requests in one `POST /async/batch`.
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Longest callback URL, in characters.
pub const MAX_CALLBACK_URL_CHARS: usize = 2048;

// The request bodies as the API document shows them. Bodies are checked by `parse_sync` and
// `parse_async`, which report every broken rule at once; these types only describe them
// (their doc comments are the document's descriptions).

/// The body of `POST /sync`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"data": "hello", "iterations": 1000}))]
#[allow(dead_code)]
pub struct SyncRequest {
    #[serde(flatten)]
    work: WorkFields,
}

/// The body of `POST /async/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"requests": [
    {"data": "first", "callback_url": "http://127.0.0.1:8001/callback"},
    {"data": "second", "iterations": 10, "callback_url": "http://127.0.0.1:8001/callback"}
]}))]
#[allow(dead_code)]
pub struct BatchRequest {
    /// 1 to 1000 requests, each an object with the fields of `AsyncRequest`. Items are
    /// checked one by one, as `POST /async` checks its body: an item that breaks a rule is
    /// answered with its errors in `results` and does not refuse the batch, so the document
    /// puts no rule on an item beyond being an object.
    #[schema(min_items = 1, max_items = 1000, value_type = Vec<Object>)]
    requests: Vec<serde_json::Value>,
}

/// Reads a batch: a body-level error (not an object, no `requests` array, too few or too
/// many items, an item that is not an object) refuses the whole batch; otherwise each item
/// is checked on its own, its errors located under `["body", "requests", index, …]`.
#[allow(clippy::type_complexity)]
pub fn parse_batch(
    body: &Value,
    guard: &Guard,
    limits: &ControlLimits,
) -> Result<Vec<Result<AsyncInput, Vec<FieldError>>>, Vec<FieldError>> {
    let object = as_object(body)?;
    let items = match object.get("requests") {
        None => return Err(vec![FieldError::missing(Part::Body, "requests", object)]),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(vec![
                FieldError::new(
                    Part::Body,
                    Some("requests"),
                    "too_short",
                    "List should have at least 1 item after validation, not 0",
                    Value::Array(Vec::new()),
                )
                .with_ctx(
                    serde_json::json!({"field_type": "List", "min_length": 1, "actual_length": 0}),
                ),
            ]);
        }
        Some(Value::Array(items)) if items.len() > MAX_BATCH_ITEMS => {
            return Err(vec![
                FieldError::new(
                    Part::Body,
                    Some("requests"),
                    "too_long",
                    format!(
                        "List should have at most {MAX_BATCH_ITEMS} items after validation, not {}",
                        items.len()
                    ),
                    Value::from(format!("[… {} items]", items.len())),
                )
                .with_ctx(serde_json::json!({
                    "field_type": "List",
                    "max_length": MAX_BATCH_ITEMS,
                    "actual_length": items.len(),
                })),
            ]);
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(vec![FieldError::new(
                Part::Body,
                Some("requests"),
                "list_type",
                "Input should be a valid list",
                other.clone(),
            )]);
        }
    };
    // An item that is not even an object is a malformed batch, not a request to refuse.
    let not_objects: Vec<FieldError> = items
        .iter()
        .enumerate()
        .filter(|(_, item)| !item.is_object())
        .map(|(index, item)| FieldError::not_an_object(item).within_batch_item(index))
        .collect();
    if !not_objects.is_empty() {
        return Err(not_objects);
    }
    Ok(items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            parse_async(item, guard, limits).map_err(|errors| {
                errors
                    .into_iter()
                    .map(|error| error.within_batch_item(index))
                    .collect()
            })
        })
        .collect())
}

/// The body of `POST /async`.
// One example for the whole body: the document's tools would otherwise build one from every
// field's, `run_at` and `delay_seconds` together, which is refused. Its callback goes to
// `syncasync receiver` on its default port (8001) on this machine, as in the README's Try it,
// never to a third party's host (with SSRF protection on, loopback is refused unless
// APP_CALLBACK_ALLOWED_HOSTS lets it).
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "data": "hello",
    "iterations": 1000,
    "callback_url": "http://127.0.0.1:8001/callback"
}))]
#[allow(dead_code)]
pub struct AsyncRequest {
    #[serde(flatten)]
    work: WorkFields,
    /// Where the result is POSTed: `http` or `https`, at most 2048 characters; private,
    /// loopback and other non-public destinations are refused (SSRF protection).
    #[schema(
        max_length = 2048,
        format = "uri",
        example = "http://127.0.0.1:8001/callback"
    )]
    callback_url: String,
    /// *Beyond the original*: no work before this time (RFC 3339; without a zone, UTC; a
    /// time already past means at once), at most `APP_MAX_SCHEDULE_DELAY_SECONDS` ahead.
    /// Not with `delay_seconds`.
    #[schema(value_type = Option<String>, format = DateTime)]
    run_at: Option<String>,
    /// *Beyond the original*: no work before this many seconds from acceptance, at most
    /// `APP_MAX_SCHEDULE_DELAY_SECONDS`. Not with `run_at`.
    #[schema(minimum = 0, example = 30)]
    delay_seconds: Option<f64>,
    /// *Beyond the original*: among due jobs, a higher priority is claimed first (-10 to
    /// 10, default 0); each level counts as `APP_PRIORITY_STEP_SECONDS` of waiting, so a job
    /// that waited long enough goes ahead of newer jobs of a higher priority.
    #[schema(minimum = -10, maximum = 10, example = 5)]
    priority: Option<i8>,
    /// *Beyond the original*: this request's retry budget, at most (and by default)
    /// `APP_CALLBACK_MAX_RETRIES`.
    #[schema(minimum = 0)]
    callback_max_retries: Option<u32>,
    /// *Beyond the original*: this request's timeout per delivery attempt, in seconds (kept
    /// to the millisecond), from 0.001 to (and by default) `APP_CALLBACK_TIMEOUT_SECONDS`.
    #[schema(minimum = 0.001)]
    callback_timeout_seconds: Option<f64>,
    /// *Beyond the original*: requests with the same key are delivered one at a time, in
    /// the order they were accepted, on every instance (a request's work starts when the one
    /// before it has ended); other
    /// keys and unkeyed requests are not held up. One that ends `callback_failed` lets the
    /// next through. 1 to 255 visible ASCII characters (letters, digits, punctuation).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]+$",
        example = "order-1234"
    )]
    ordering_key: Option<String>,
    /// *Beyond the original*: the caller's W3C trace context, here rather than in the
    /// `traceparent` header (a batch item's own). The callback continues that trace; an
    /// all-zero id or version `ff` is no parent, and a new trace is started.
    #[schema(
        max_length = 55,
        pattern = "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        example = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    )]
    traceparent: Option<String>,
    /// *Beyond the original*: the `tracestate` that goes with `traceparent` (printable ASCII,
    /// at most 512 characters; one that is not a W3C list is dropped).
    #[schema(max_length = 512, pattern = "^[ -~]*$", example = "vendor=opaque")]
    tracestate: Option<String>,
}

/// The unit of work, in both bodies.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
struct WorkFields {
    /// The input to hash: 1 to 10000 characters, not whitespace only.
    #[schema(
        min_length = 1,
        max_length = 10000,
        // A character that is not whitespace as the service reads it (see
        // `is_python_whitespace`): the information separators count as whitespace there.
        pattern = r"[^\s\x1C-\x1F]",
        example = "hello world"
    )]
    data: String,
    /// Rounds of SHA-256 after the first.
    #[serde(default = "default_iterations")]
    #[schema(schema_with = iterations_schema)]
    iterations: u32,
}

/// `iterations` as the API document shows it: an integer from 1 to 1000000, or the same
/// integer written as a string (`"100"`, `"1_000"`, `"100.0"`: accepted as the original
/// did). The string's pattern admits only strings that [`int_in_str`] reads as an integer in
/// range, so that a client (or a fuzzer) that trusts the document is never refused.
fn iterations_schema() -> Schema {
    let integer = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(1))
        .maximum(Some(MAX_ITERATIONS));
    let in_a_string = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(ITERATIONS_STRING_PATTERN));
    Schema::OneOf(
        OneOfBuilder::new()
            .item(integer)
            .item(in_a_string)
            .description(Some(
                "Rounds of SHA-256 after the first: an integer from 1 to 1000000, or that \
                 integer in a string as Python writes one (`\"100\"`, `\"+1_000\"`) or \
                 followed by a point and zeros (`\"100.0\"`). `true` counts as 1, as it did \
                 in the original.",
            ))
            .default(Some(DEFAULT_ITERATIONS.into()))
            .build(),
    )
}

/// 1..=1000000 in a string, as [`int_in_str`] reads it: an optional `+`, then either digits
/// with single `_` between them (leading zeros allowed), or digits without `_` followed by
/// `.` and zeros, never over the 4300 characters a string may have (zeros repeated a bounded
/// number of times: the proptest below generates from the pattern, and reads no lookahead).
/// ECMA-262, as JSON Schema reads it; `[0-9]` rather than `\d`, which other
/// dialects read as any Unicode digit.
const ITERATIONS_STRING_PATTERN: &str = concat!(
    r"^\+?(?:(?:0_?){0,2000}(?:[1-9](?:_?[0-9]){0,5}|1(?:_?0){6})",
    r"|0{0,4000}(?:[1-9][0-9]{0,5}|1000000)\.0{0,250})$"
);

fn default_iterations() -> u32 {
    DEFAULT_ITERATIONS
}

/// A unit of work that passed every rule.
#[derive(Debug, Clone)]
pub struct WorkInput {
    pub data: String,
    pub iterations: u32,
}

/// An async submission that passed every rule.
#[derive(Debug, Clone)]
pub struct AsyncInput {
    pub work: WorkInput,
    /// Where deliveries go.
    pub callback_url: Url,
    /// The URL exactly as the client wrote it: what the record shows, as the original did
    /// (`Url` would have written a space as `%20`).
    pub callback_url_as_sent: String,
    /// What it asked for beyond the original's fields.
    pub controls: Controls,
    /// Delivered after every request accepted before it with the same key.
    pub ordering_key: Option<String>,
    /// The trace context the caller sent (the body's; the HTTP layer adds the headers').
    pub caller_trace: CallerTrace,
}

/// Validates a `POST /sync` body.
pub fn parse_sync(body: &Value) -> Result<WorkInput, Vec<FieldError>> {
    let object = as_object(body)?;
    let mut errors = Vec::new();
    let work = work_fields(object, &mut errors);
    match work {
        Some(work) if errors.is_empty() => Ok(work),
        _ => Err(errors),
    }
}

/// Validates a `POST /async` body, including the submit-time SSRF check of the callback URL
/// and the control fields within `limits`.
pub fn parse_async(
    body: &Value,
    guard: &Guard,
    limits: &ControlLimits,
) -> Result<AsyncInput, Vec<FieldError>> {
    let object = as_object(body)?;
    let mut errors = Vec::new();
    let work = work_fields(object, &mut errors);
    let callback_url = match object.get("callback_url") {
        None => {
            errors.push(FieldError::missing(Part::Body, "callback_url", object));
            None
        }
        Some(Value::String(raw)) => match callback_url(raw, guard) {
            Ok(url) => Some((url, raw.clone())),
            Err(error) => {
                errors.push(error);
                None
            }
        },
        Some(other) => {
            errors.push(FieldError::not_a_string(Part::Body, "callback_url", other));
            None
        }
    };
    let controls = controls::controls(object, limits, chrono::Utc::now(), &mut errors);
    let ordering_key = controls::ordering_key(object, &mut errors);
    let caller_trace = controls::caller_trace(object, &mut errors);
    match (work, callback_url) {
        (Some(work), Some((callback_url, as_sent))) if errors.is_empty() => Ok(AsyncInput {
            work,
            callback_url,
            callback_url_as_sent: as_sent,
            controls,
            ordering_key,
            caller_trace,
        }),
        _ => Err(errors),
    }
}

/// A callback URL by the original's rules (a string of at most 2048 characters starting
/// `http://` or `https://`, exactly so: `HTTP://` was refused) and then by ours (a host,
/// the submit-time SSRF check).
fn callback_url(raw: &str, guard: &Guard) -> Result<Url, FieldError> {
    let input = || Value::from(raw);
    if raw.chars().count() > MAX_CALLBACK_URL_CHARS {
        return Err(FieldError::too_long(
            Part::Body,
            "callback_url",
            MAX_CALLBACK_URL_CHARS,
            &input(),
        ));
    }
    if !(raw.starts_with("http://") || raw.starts_with("https://")) {
        return Err(FieldError::value_error(
            Part::Body,
            "callback_url",
            "callback_url must start with http:// or https://",
            &input(),
        ));
    }
    guard
        .check_url(raw)
        .map_err(|err| FieldError::value_error(Part::Body, "callback_url", err, &input()))
}

/// The body's object; `null` is a missing body, as the original's framework had it.
fn as_object(body: &Value) -> Result<&Map<String, Value>, Vec<FieldError>> {
    match body {
        Value::Object(object) => Ok(object),
        Value::Null => Err(vec![FieldError::empty_body()]),
        other => Err(vec![FieldError::not_an_object(other)]),
    }
}

fn work_fields(object: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<WorkInput> {
    let data = match object.get("data") {
        None => {
            errors.push(FieldError::missing(Part::Body, "data", object));
            None
        }
        Some(value @ Value::String(data)) => {
            let chars = data.chars().count();
            if chars == 0 {
                errors.push(FieldError::too_short(Part::Body, "data", 1, value));
                None
            } else if chars > MAX_DATA_CHARS {
                errors.push(FieldError::too_long(
                    Part::Body,
                    "data",
                    MAX_DATA_CHARS,
                    value,
                ));
                None
            } else if data.chars().all(is_python_whitespace) {
                errors.push(FieldError::value_error(
                    Part::Body,
                    "data",
                    "data must not be whitespace only",
                    value,
                ));
                None
            } else {
                Some(data.clone())
            }
        }
        Some(other) => {
            errors.push(FieldError::not_a_string(Part::Body, "data", other));
            None
        }
    };
    let iterations = match object.get("iterations") {
        None => Some(DEFAULT_ITERATIONS),
        Some(value) => match bounded_int(
            Part::Body,
            "iterations",
            value,
            1,
            i64::from(MAX_ITERATIONS),
        ) {
            Ok(n) => u32::try_from(n).ok(),
            Err(error) => {
                errors.push(error);
                None
            }
        },
    };
    Some(WorkInput {
        data: data?,
        iterations: iterations?,
    })
}

/// An integer field or parameter read as the original read it ([`lax_int`]), within
/// `min..=max` (pydantic's `ge` and `le`).
pub fn bounded_int(
    part: Part,
    field: &str,
    value: &Value,
    min: i64,
    max: i64,
) -> Result<i64, FieldError> {
    let n = lax_int(value).map_err(|why| FieldError::not_an_int(part, field, why, value))?;
    if n < i128::from(min) {
        Err(FieldError::at_least(part, field, min, value))
    } else if n > i128::from(max) {
        Err(FieldError::at_most(part, field, max, value))
    } else {
        i64::try_from(n).map_err(|_| FieldError::at_most(part, field, max, value))
    }
}

/// Whitespace as the original's `str.strip()` saw it: Unicode White_Space plus the ASCII
/// information separators U+001C..U+001F, which Python also strips.
fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `field: type` of each error, in order.
    fn sync_errors(body: Value) -> Vec<String> {
        parse_sync(&body)
            .unwrap_err()
            .into_iter()
            .map(|e| format!("{}: {}", e.field(), e.kind))
            .collect()
    }

    fn iterations(value: Value) -> Result<u32, String> {
        parse_sync(&json!({"data": "a", "iterations": value}))
            .map(|input| input.iterations)
            .map_err(|errors| errors[0].kind.to_string())
    }

    #[test]
    fn accepts_valid_input_with_default_iterations() {
        let input = parse_sync(&json!({"data": "hello", "extra": 1})).unwrap();
        assert_eq!(input.data, "hello");
        assert_eq!(input.iterations, DEFAULT_ITERATIONS);
        let input = parse_sync(&json!({"data": "x", "iterations": 1_000_000})).unwrap();
        assert_eq!(input.iterations, 1_000_000);
    }

    #[test]
    fn data_rules() {
        assert_eq!(sync_errors(json!({})), ["data: missing"]);
        assert_eq!(sync_errors(json!({"data": null})), ["data: string_type"]);
        assert_eq!(sync_errors(json!({"data": ""})), ["data: string_too_short"]);
        assert_eq!(sync_errors(json!({"data": " \t\n"})), ["data: value_error"]);
        // What Python's str.strip() removes: Unicode spaces and the information separators.
        assert_eq!(
            sync_errors(json!({"data": "\u{3000}\u{a0}\u{1c}\u{1f}"})),
            ["data: value_error"]
        );
        assert!(
            parse_sync(&json!({"data": "\u{200b}"})).is_ok(),
            "a zero-width space is not whitespace"
        );
        assert_eq!(sync_errors(json!({"data": 5})), ["data: string_type"]);
        let too_long = "é".repeat(MAX_DATA_CHARS + 1);
        assert_eq!(
            sync_errors(json!({ "data": too_long })),
            ["data: string_too_long"]
        );
        // The limit counts characters, not bytes.
        assert!(parse_sync(&json!({ "data": "é".repeat(MAX_DATA_CHARS) })).is_ok());
    }

    #[test]
    fn errors_carry_what_the_originals_did() {
        // (Two broken rules at once, over HTTP: tests/api/validation.rs.)
        let errors = parse_sync(&json!({"iterations": "1e3"})).unwrap_err();
        assert_eq!(
            serde_json::to_value(&errors).unwrap(),
            json!([
                {"type": "missing", "loc": ["body", "data"], "msg": "Field required",
                 "input": {"iterations": "1e3"},
                 "url": "https://errors.pydantic.dev/2.6/v/missing"},
                {"type": "int_parsing", "loc": ["body", "iterations"],
                 "msg": "Input should be a valid integer, unable to parse string as an integer",
                 "input": "1e3", "url": "https://errors.pydantic.dev/2.6/v/int_parsing"},
            ])
        );
    }

    #[test]
    fn iterations_as_the_original_coerced_them() {
        for (value, n) in [
            (json!(10.0), 10),
            (json!(1e3), 1000),
            (json!(true), 1),
            (json!("100"), 100),
            (json!("100.0"), 100),
            (json!("100."), 100),
            (json!("1_000"), 1000),
            (json!("+0100"), 100),
            (json!("1000000"), 1_000_000),
        ] {
            assert_eq!(iterations(value.clone()), Ok(n), "{value}");
        }
        for (value, kind) in [
            (json!(0), "greater_than_equal"),
            (json!(false), "greater_than_equal"),
            (json!(-0.0), "greater_than_equal"),
            (json!("-5"), "greater_than_equal"),
            (json!(1_000_001), "less_than_equal"),
            (json!(u64::MAX), "less_than_equal"),
            (json!("99999999999999999999999"), "less_than_equal"),
            (json!(1.5), "int_from_float"),
            (json!(1e300), "int_parsing_size"),
            (json!(" 100 "), "int_parsing"),
            (json!("100\n"), "int_parsing"),
            (json!("1e3"), "int_parsing"),
            (json!("１０"), "int_parsing"),
            (json!(null), "int_type"),
            (json!([1]), "int_type"),
        ] {
            assert_eq!(iterations(value.clone()), Err(kind.to_string()), "{value}");
        }
    }

    mod iterations_pattern {
        //! Property: every string the API document's pattern for `iterations` admits is
        //! accepted, so a client that trusts the document is never refused.

        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn every_string_the_document_admits_is_accepted(
                // proptest generates from a pattern without anchors; the anchors only say
                // that the whole string matches, which generation gives anyway.
                text in proptest::string::string_regex(
                    ITERATIONS_STRING_PATTERN.trim_start_matches('^').trim_end_matches('$'),
                ).unwrap(),
            ) {
                let input = parse_sync(&json!({"data": "a", "iterations": text}));
                prop_assert!(input.is_ok(), "{:?}", text);
            }
        }
    }

    fn test_limits() -> ControlLimits {
        ControlLimits {
            max_schedule_delay: std::time::Duration::from_secs(3600),
            max_retries: 3,
            max_callback_timeout: std::time::Duration::from_secs(10),
        }
    }

    #[test]
    fn reports_every_broken_rule_at_once() {
        let errors = parse_async(
            &json!({"data": "", "iterations": 0, "callback_url": "ftp://x"}),
            &Guard::new(true, []),
            &test_limits(),
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(FieldError::field).collect();
        assert_eq!(fields, ["data", "iterations", "callback_url"]);
    }

    #[test]
    fn body_must_be_an_object() {
        assert_eq!(sync_errors(json!([1, 2])), ["body: model_attributes_type"]);
        assert_eq!(sync_errors(json!("data")), ["body: model_attributes_type"]);
    }

    #[test]
    fn callback_url_rules() {
        let err = |url: Value| {
            parse_async(
                &json!({"data": "a", "callback_url": url}),
                &Guard::new(true, []),
                &test_limits(),
            )
            .unwrap_err()
            .into_iter()
            .map(|e| format!("{}: {}", e.kind, e.msg))
            .collect::<Vec<_>>()
        };
        assert_eq!(
            err(json!(null)),
            ["string_type: Input should be a valid string"]
        );
        assert_eq!(
            err(json!(42)),
            ["string_type: Input should be a valid string"]
        );
        let scheme = "value_error: Value error, callback_url must start with http:// or https://";
        for refused in [
            "gopher://example.com",
            "HTTP://example.com",
            " http://example.com",
            "http:example.com",
        ] {
            assert_eq!(err(json!(refused)), [scheme], "{refused}");
        }
        assert_eq!(
            err(json!(format!("http://example.com/{}", "a".repeat(2048)))),
            ["string_too_long: String should have at most 2048 characters"]
        );
        assert!(err(json!("http://127.0.0.1:9/cb"))[0].contains("not allowed"));
        // Kept as sent: the record shows what the client wrote; deliveries go to the URL.
        let ok = parse_async(
            &json!({"data": "a", "callback_url": "https://example.com/a hook"}),
            &Guard::new(true, []),
            &test_limits(),
        )
        .unwrap();
        assert_eq!(ok.callback_url_as_sent, "https://example.com/a hook");
        assert_eq!(ok.callback_url.as_str(), "https://example.com/a%20hook");
    }
}
