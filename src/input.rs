//! The input rules of SPEC §2: from a JSON body to a validated unit of work, or to the list
//! of every field that breaks a rule.
//!
//! The body is checked field by field from a `serde_json::Value` rather than derived with
//! serde, because a client needs to hear which field broke which rule (all of them at once),
//! in the original's `{"loc": ["body", field], "msg": …}` shape, and not serde's first error.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;
use utoipa::ToSchema;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

use crate::delivery::guard::Guard;

pub const MAX_DATA_CHARS: usize = 10_000;
pub const MAX_ITERATIONS: u32 = 1_000_000;
pub const DEFAULT_ITERATIONS: u32 = 1000;
/// Most requests in one `POST /async/batch`.
pub const MAX_BATCH_ITEMS: usize = 1000;

/// One element of an error's location: a field name, or a position in the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Loc {
    Name(String),
    Position(usize),
}

/// One broken rule, as FastAPI reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub loc: Vec<Loc>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

impl FieldError {
    pub fn body(field: Option<&str>, kind: &'static str, msg: impl Into<String>) -> Self {
        let mut loc = vec![Loc::Name("body".to_string())];
        loc.extend(field.map(|f| Loc::Name(f.to_string())));
        Self {
            loc,
            msg: msg.into(),
            kind,
        }
    }

    pub fn query(field: &str, kind: &'static str, msg: impl Into<String>) -> Self {
        Self {
            loc: vec![Loc::Name("query".to_string()), Loc::Name(field.to_string())],
            msg: msg.into(),
            kind,
        }
    }

    pub fn header(name: &str, kind: &'static str, msg: impl Into<String>) -> Self {
        Self {
            loc: vec![Loc::Name("header".to_string()), Loc::Name(name.to_string())],
            msg: msg.into(),
            kind,
        }
    }

    /// The same error, located in item `index` of a batch's `requests`.
    fn within_batch_item(mut self, index: usize) -> Self {
        let rest = self.loc.split_off(1.min(self.loc.len()));
        self.loc = vec![
            Loc::Name("body".to_string()),
            Loc::Name("requests".to_string()),
            Loc::Position(index),
        ];
        self.loc.extend(rest);
        self
    }

    /// A body that is not valid JSON, located by byte offset as FastAPI did.
    pub fn invalid_json(offset: usize, msg: impl Into<String>) -> Self {
        Self {
            loc: vec![Loc::Name("body".to_string()), Loc::Position(offset)],
            msg: msg.into(),
            kind: "json_invalid",
        }
    }

    /// The field the error is about, for the one-line summary (`"iterations: …"`).
    pub fn field(&self) -> &str {
        self.loc
            .iter()
            .rev()
            .find_map(|part| match part {
                Loc::Name(name) => Some(name.as_str()),
                Loc::Position(_) => None,
            })
            .unwrap_or("body")
    }
}

// The request bodies as the API document shows them. Bodies are checked by `parse_sync` and
// `parse_async`, which report every broken rule at once; these types only describe them
// (their doc comments are the document's descriptions).

/// The body of `POST /sync`.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct SyncRequest {
    #[serde(flatten)]
    work: WorkFields,
}

/// The body of `POST /async/batch`.
#[derive(Debug, Deserialize, ToSchema)]
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
) -> Result<Vec<Result<AsyncInput, Vec<FieldError>>>, Vec<FieldError>> {
    let object = as_object(body)?;
    let rule = format!("must be an array of 1 to {MAX_BATCH_ITEMS} requests");
    let items = match object.get("requests") {
        None | Some(Value::Null) => {
            return Err(vec![FieldError::body(
                Some("requests"),
                "missing",
                "field required",
            )]);
        }
        Some(Value::Array(items)) if (1..=MAX_BATCH_ITEMS).contains(&items.len()) => items,
        Some(Value::Array(_)) => {
            return Err(vec![FieldError::body(Some("requests"), "length", rule)]);
        }
        Some(_) => return Err(vec![FieldError::body(Some("requests"), "list_type", rule)]),
    };
    // An item that is not even an object is a malformed batch, not a request to refuse.
    let not_objects: Vec<FieldError> = items
        .iter()
        .enumerate()
        .filter(|(_, item)| !item.is_object())
        .map(|(index, _)| {
            FieldError::body(None, "dict_type", "must be a JSON object").within_batch_item(index)
        })
        .collect();
    if !not_objects.is_empty() {
        return Err(not_objects);
    }
    Ok(items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            parse_async(item, guard).map_err(|errors| {
                errors
                    .into_iter()
                    .map(|error| error.within_batch_item(index))
                    .collect()
            })
        })
        .collect())
}

/// The body of `POST /async`.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct AsyncRequest {
    #[serde(flatten)]
    work: WorkFields,
    /// Where the result is POSTed: `http` or `https`, at most 2048 characters; private,
    /// loopback and other non-public destinations are refused (SSRF protection).
    #[schema(
        max_length = 2048,
        format = "uri",
        example = "https://example.com/webhooks/syncasync"
    )]
    callback_url: String,
}

/// The unit of work, in both bodies.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
struct WorkFields {
    /// The input to hash: 1 to 10000 characters, not whitespace only.
    #[schema(
        min_length = 1,
        max_length = 10000,
        pattern = r"\S",
        example = "hello world"
    )]
    data: String,
    /// Rounds of SHA-256 after the first.
    #[serde(default = "default_iterations")]
    #[schema(schema_with = iterations_schema)]
    iterations: u32,
}

/// `iterations` as the API document shows it: an integer from 1 to 1000000, or the same
/// integer written as a string (`"100"`, accepted as the original did). The string's pattern
/// admits exactly the strings that [`integer_in_string`] reads as an integer in range, so that
/// a client (or a fuzzer) that trusts the document is never refused, and never accepted
/// outside it.
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
                 integer in a string (`\"100\"`, optionally signed `+` and surrounded by ASCII \
                 whitespace).",
            ))
            .default(Some(DEFAULT_ITERATIONS.into()))
            .build(),
    )
}

/// 1..=1000000 in decimal, with leading zeros, an optional `+` and surrounding ASCII
/// whitespace (`-` only ever precedes an integer below 1). ECMA-262, as JSON Schema reads it;
/// `[0-9]` rather than `\d`, which other dialects read as any Unicode digit.
const ITERATIONS_STRING_PATTERN: &str =
    r"^[ \t\n\r\v\f]*\+?0*([1-9][0-9]{0,5}|1000000)[ \t\n\r\v\f]*$";

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
    pub callback_url: Url,
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

/// Validates a `POST /async` body, including the submit-time SSRF check of the callback URL.
pub fn parse_async(body: &Value, guard: &Guard) -> Result<AsyncInput, Vec<FieldError>> {
    let object = as_object(body)?;
    let mut errors = Vec::new();
    let work = work_fields(object, &mut errors);
    let callback_url = match object.get("callback_url") {
        None | Some(Value::Null) => {
            errors.push(FieldError::body(
                Some("callback_url"),
                "missing",
                "field required",
            ));
            None
        }
        Some(Value::String(raw)) => match guard.check_url(raw) {
            Ok(url) => Some(url),
            Err(err) => {
                errors.push(FieldError::body(
                    Some("callback_url"),
                    "url",
                    err.to_string(),
                ));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::body(
                Some("callback_url"),
                "string_type",
                "must be a string",
            ));
            None
        }
    };
    match (work, callback_url) {
        (Some(work), Some(callback_url)) if errors.is_empty() => {
            Ok(AsyncInput { work, callback_url })
        }
        _ => Err(errors),
    }
}

fn as_object(body: &Value) -> Result<&Map<String, Value>, Vec<FieldError>> {
    body.as_object()
        .ok_or_else(|| vec![FieldError::body(None, "dict_type", "must be a JSON object")])
}

fn work_fields(object: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<WorkInput> {
    let data = match object.get("data") {
        None | Some(Value::Null) => {
            errors.push(FieldError::body(Some("data"), "missing", "field required"));
            None
        }
        Some(Value::String(data)) => {
            let chars = data.chars().count();
            if chars == 0 {
                errors.push(FieldError::body(
                    Some("data"),
                    "string_too_short",
                    "must not be empty",
                ));
                None
            } else if chars > MAX_DATA_CHARS {
                errors.push(FieldError::body(
                    Some("data"),
                    "string_too_long",
                    format!("must be at most {MAX_DATA_CHARS} characters"),
                ));
                None
            } else if data.chars().all(is_python_whitespace) {
                errors.push(FieldError::body(
                    Some("data"),
                    "value_error",
                    "must not be whitespace only",
                ));
                None
            } else {
                Some(data.clone())
            }
        }
        Some(_) => {
            errors.push(FieldError::body(
                Some("data"),
                "string_type",
                "must be a string",
            ));
            None
        }
    };
    // A number with no fractional part is an integer to JSON Schema (and to pydantic, which
    // the original used, in its lax mode): `10.0` is 10. So is an integer written as a
    // string (`"10"`), which pydantic also read as one and clients of the original send.
    // Either then meets the same range rule. Booleans are not integers here (SPEC §2).
    let integer = match object.get("iterations") {
        None => Some(i128::from(DEFAULT_ITERATIONS)),
        Some(Value::Number(n)) => as_integer(n),
        Some(Value::String(s)) => integer_in_string(s),
        Some(_) => None,
    };
    let iterations = match integer {
        Some(n) => match u32::try_from(n) {
            Ok(n) if (1..=MAX_ITERATIONS).contains(&n) => Some(n),
            _ => {
                errors.push(range_error());
                None
            }
        },
        None => {
            errors.push(FieldError::body(
                Some("iterations"),
                "int_type",
                "must be an integer",
            ));
            None
        }
    };
    Some(WorkInput {
        data: data?,
        iterations: iterations?,
    })
}

/// Whitespace as the original's `str.strip()` saw it: Unicode White_Space plus the ASCII
/// information separators U+001C..U+001F, which Python also strips.
fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The integer a JSON number stands for, if it is one (`10`, `10.0`, `-3`, `1e3`).
fn as_integer(n: &serde_json::Number) -> Option<i128> {
    if let Some(i) = n.as_i64() {
        return Some(i128::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Some(i128::from(u));
    }
    let f = n.as_f64()?;
    // Beyond i64 the exact value does not matter: it is out of range either way.
    (f.is_finite() && f.fract() == 0.0).then(|| f.clamp(i64::MIN as f64, i64::MAX as f64) as i128)
}

/// The integer a string holds, read as pydantic's lax mode read `"100"` for an `int` field
/// (kept strict): optional surrounding ASCII whitespace, an optional sign, then decimal
/// digits only (no `_`, no `.`, no exponent). Digits beyond what an `i128` holds read as the
/// largest one: out of range either way.
fn integer_in_string(text: &str) -> Option<i128> {
    let text = text.trim_matches(is_ascii_space);
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = digits.bytes().fold(0i128, |n, digit| {
        n.saturating_mul(10)
            .saturating_add(i128::from(digit - b'0'))
    });
    Some(if negative { -magnitude } else { magnitude })
}

/// ASCII whitespace, as Python's `string.whitespace` lists it.
fn is_ascii_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

fn range_error() -> FieldError {
    FieldError::body(
        Some("iterations"),
        "range",
        format!("must be between 1 and {MAX_ITERATIONS}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sync_errors(body: Value) -> Vec<String> {
        parse_sync(&body)
            .unwrap_err()
            .into_iter()
            .map(|e| format!("{}: {}", e.field(), e.msg))
            .collect()
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
        assert_eq!(sync_errors(json!({})), ["data: field required"]);
        assert_eq!(sync_errors(json!({"data": null})), ["data: field required"]);
        assert_eq!(
            sync_errors(json!({"data": ""})),
            ["data: must not be empty"]
        );
        assert_eq!(
            sync_errors(json!({"data": " \t\n"})),
            ["data: must not be whitespace only"]
        );
        // What Python's str.strip() removes: Unicode spaces and the information separators.
        assert_eq!(
            sync_errors(json!({"data": "\u{3000}\u{a0}\u{1c}\u{1f}"})),
            ["data: must not be whitespace only"]
        );
        assert!(
            parse_sync(&json!({"data": "\u{200b}"})).is_ok(),
            "a zero-width space is not whitespace"
        );
        assert_eq!(sync_errors(json!({"data": 5})), ["data: must be a string"]);
        let too_long = "é".repeat(MAX_DATA_CHARS + 1);
        assert_eq!(
            sync_errors(json!({ "data": too_long })),
            ["data: must be at most 10000 characters"]
        );
        // The limit counts characters, not bytes.
        assert!(parse_sync(&json!({ "data": "é".repeat(MAX_DATA_CHARS) })).is_ok());
    }

    #[test]
    fn iterations_rules() {
        let range = "iterations: must be between 1 and 1000000";
        for bad in [json!(0), json!(-1), json!(1_000_001), json!(u64::MAX)] {
            assert_eq!(
                sync_errors(json!({"data": "a", "iterations": bad})),
                [range]
            );
        }
        for bad in [json!(-0.0), json!(1e300), json!(1000000.5e1)] {
            assert_eq!(
                sync_errors(json!({"data": "a", "iterations": bad})),
                [range]
            );
        }
        // Integral floats are integers, as in JSON Schema and pydantic.
        for (good, n) in [
            (json!(10.0), 10),
            (json!(1e3), 1000),
            (json!(1000000.0), 1_000_000),
        ] {
            let input = parse_sync(&json!({"data": "a", "iterations": good})).unwrap();
            assert_eq!(input.iterations, n);
        }
        for bad in [
            json!(1.5),
            json!(true),
            json!(false),
            json!(null),
            json!([1]),
        ] {
            assert_eq!(
                sync_errors(json!({"data": "a", "iterations": bad})),
                ["iterations: must be an integer"]
            );
        }
    }

    #[test]
    fn iterations_in_a_string() {
        // Decimal digits, an optional sign, surrounding ASCII whitespace: the integer.
        for (good, n) in [
            ("10", 10),
            ("1", 1),
            ("1000000", 1_000_000),
            ("+42", 42),
            ("007", 7),
            (" \t42\n\r\u{b}\u{c}", 42),
        ] {
            let input = parse_sync(&json!({"data": "a", "iterations": good})).unwrap();
            assert_eq!(input.iterations, n, "{good:?}");
        }
        // Then the same range rule as a number.
        let range = "iterations: must be between 1 and 1000000";
        for bad in [
            "0",
            "-0",
            "-5",
            "1000001",
            "99999999999999999999999999999999999999999999999999",
            "-99999999999999999999999999999999999999999999999999",
        ] {
            assert_eq!(
                sync_errors(json!({"data": "a", "iterations": bad})),
                [range],
                "{bad:?}"
            );
        }
        // Anything else in a string is not an integer.
        for bad in [
            "",
            " ",
            "+",
            "-",
            "1.5",
            "10.0",
            "1e3",
            "abc",
            "1_000",
            "0x10",
            "1 0",
            "--1",
            "+-1",
            "１０",
            "\u{a0}10",
            "10\u{3000}",
            "true",
            "NaN",
        ] {
            assert_eq!(
                sync_errors(json!({"data": "a", "iterations": bad})),
                ["iterations: must be an integer"],
                "{bad:?}"
            );
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

    #[test]
    fn reports_every_broken_rule_at_once() {
        let errors = parse_async(
            &json!({"data": "", "iterations": 0, "callback_url": "ftp://x"}),
            &Guard::new(true, []),
        )
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(FieldError::field).collect();
        assert_eq!(fields, ["data", "iterations", "callback_url"]);
    }

    #[test]
    fn body_must_be_an_object() {
        assert_eq!(sync_errors(json!([1, 2])), ["body: must be a JSON object"]);
        assert_eq!(sync_errors(json!("data")), ["body: must be a JSON object"]);
    }

    #[test]
    fn callback_url_rules() {
        let err = |url: Value| {
            parse_async(
                &json!({"data": "a", "callback_url": url}),
                &Guard::new(true, []),
            )
            .unwrap_err()
            .into_iter()
            .map(|e| e.msg)
            .collect::<Vec<_>>()
        };
        assert_eq!(err(Value::Null), ["field required"]);
        assert_eq!(err(json!(42)), ["must be a string"]);
        assert_eq!(
            err(json!("gopher://example.com")),
            ["scheme must be http or https"]
        );
        assert!(err(json!("http://127.0.0.1:9/cb"))[0].contains("not allowed"));
        let ok = parse_async(
            &json!({"data": "a", "callback_url": "https://example.com/hook"}),
            &Guard::new(true, []),
        )
        .unwrap();
        assert_eq!(ok.callback_url.as_str(), "https://example.com/hook");
    }
}
