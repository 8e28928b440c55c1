//! One broken input rule, in the shape the original's framework (FastAPI, with pydantic v2)
//! gave it in a 422's `detail`: `{"type","loc","msg","input","ctx","url"}`, with pydantic's
//! error types and messages for the rules the original had, so that a client matching on
//! them sees no difference. Rules the original did not have (batches, filters, headers) use
//! the same shape with types of their own and no `url`.

use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

/// The error types that are pydantic's own, each with its page in pydantic's documentation
/// (version 2.6, which the original used), which the original's 422s linked.
macro_rules! pydantic_types {
    ($($kind:literal),* $(,)?) => {
        &[$(($kind, concat!("https://errors.pydantic.dev/2.6/v/", $kind))),*]
    };
}

const PYDANTIC_TYPES: &[(&str, &str)] = pydantic_types!(
    "missing",
    "string_type",
    "string_too_short",
    "string_too_long",
    "int_type",
    "int_parsing",
    "int_from_float",
    "int_parsing_size",
    "greater_than_equal",
    "less_than_equal",
    "value_error",
    "model_attributes_type",
    "list_type",
    "too_short",
    "too_long",
);

/// One element of an error's location: a field name, or a position in the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Loc {
    Name(String),
    Position(usize),
}

/// Which part of the request an error is about.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    Body,
    Query,
    Header,
    Path,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Body => "body",
            Part::Query => "query",
            Part::Path => "path",
            Part::Header => "header",
        }
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FieldError {
    /// pydantic's error type for the original's rules (`missing`, `int_parsing`,
    /// `greater_than_equal`, …), a type of our own for the others.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Where: `["body", "iterations"]`, `["query", "limit"]`, `["body", 12]` (a JSON syntax
    /// error, by character position), `["body", "requests", 3, "data"]`.
    pub loc: Vec<Loc>,
    pub msg: String,
    /// The value that broke the rule, of any JSON type (for a missing field, the object it
    /// is missing from).
    #[schema(value_type = Value)]
    pub input: Value,
    /// The rule's parameters (`{"ge": 1}`), when it has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub ctx: Option<Box<Value>>,
    /// pydantic's page for its error type.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub url: Option<&'static str>,
}

impl FieldError {
    /// An error of `kind` at `part`/`field` (the part itself when `field` is `None`).
    pub fn new(
        part: Part,
        field: Option<&str>,
        kind: &'static str,
        msg: impl Into<String>,
        input: Value,
    ) -> Self {
        let mut loc = vec![Loc::Name(part.name().to_string())];
        loc.extend(field.map(|f| Loc::Name(f.to_string())));
        Self {
            kind,
            loc,
            msg: msg.into(),
            input,
            ctx: None,
            url: PYDANTIC_TYPES
                .iter()
                .find_map(|(pydantic, url)| (*pydantic == kind).then_some(*url)),
        }
    }

    pub fn body(
        field: Option<&str>,
        kind: &'static str,
        msg: impl Into<String>,
        input: Value,
    ) -> Self {
        Self::new(Part::Body, field, kind, msg, input)
    }

    pub fn query(field: &str, kind: &'static str, msg: impl Into<String>, input: &str) -> Self {
        Self::new(Part::Query, Some(field), kind, msg, Value::from(input))
    }

    pub fn header(name: &str, kind: &'static str, msg: impl Into<String>, input: &str) -> Self {
        Self::new(Part::Header, Some(name), kind, msg, Value::from(input))
    }

    pub(super) fn with_ctx(mut self, ctx: Value) -> Self {
        self.ctx = Some(Box::new(ctx));
        self
    }

    /// A required field that is absent from `object`.
    pub fn missing(part: Part, field: &str, object: &serde_json::Map<String, Value>) -> Self {
        Self::new(
            part,
            Some(field),
            "missing",
            "Field required",
            Value::Object(object.clone()),
        )
    }

    /// A body that is not a JSON object.
    pub fn not_an_object(input: &Value) -> Self {
        Self::new(
            Part::Body,
            None,
            "model_attributes_type",
            "Input should be a valid dictionary or object to extract fields from",
            input.clone(),
        )
    }

    /// An empty body.
    pub fn empty_body() -> Self {
        Self::new(Part::Body, None, "missing", "Field required", Value::Null)
    }

    pub fn not_a_string(part: Part, field: &str, input: &Value) -> Self {
        Self::new(
            part,
            Some(field),
            "string_type",
            "Input should be a valid string",
            input.clone(),
        )
    }

    pub fn too_short(part: Part, field: &str, min_length: usize, input: &Value) -> Self {
        Self::length(
            part,
            field,
            ("string_too_short", "at least", "min_length"),
            min_length,
            input,
        )
    }

    pub fn too_long(part: Part, field: &str, max_length: usize, input: &Value) -> Self {
        Self::length(
            part,
            field,
            ("string_too_long", "at most", "max_length"),
            max_length,
            input,
        )
    }

    /// A string that does not match `pattern` (a regular expression, as the OpenAPI schema
    /// gives it).
    pub fn pattern_mismatch(part: Part, field: &str, pattern: &str, input: &Value) -> Self {
        Self::new(
            part,
            Some(field),
            "string_pattern_mismatch",
            format!("String should match pattern '{pattern}'"),
            input.clone(),
        )
        .with_ctx(json!({ "pattern": pattern }))
    }

    /// A string's length rule, in pydantic's words: `(type, "at least", ctx key)`.
    fn length(
        part: Part,
        field: &str,
        (kind, bound, key): (&'static str, &str, &str),
        limit: usize,
        input: &Value,
    ) -> Self {
        let unit = if limit == 1 {
            "character"
        } else {
            "characters"
        };
        Self::new(
            part,
            Some(field),
            kind,
            format!("String should have {bound} {limit} {unit}"),
            input.clone(),
        )
        .with_ctx(json!({ key: limit }))
    }

    /// A rule of the original's own validators (pydantic reports a `ValueError` so, its
    /// `ctx.error` being the exception, which FastAPI wrote as `{}`).
    pub fn value_error(
        part: Part,
        field: &str,
        rule: impl std::fmt::Display,
        input: &Value,
    ) -> Self {
        Self::new(
            part,
            Some(field),
            "value_error",
            format!("Value error, {rule}"),
            input.clone(),
        )
        .with_ctx(json!({ "error": {} }))
    }

    pub fn at_least(part: Part, field: &str, ge: i64, input: &Value) -> Self {
        Self::new(
            part,
            Some(field),
            "greater_than_equal",
            format!("Input should be greater than or equal to {ge}"),
            input.clone(),
        )
        .with_ctx(json!({ "ge": ge }))
    }

    pub fn at_most(part: Part, field: &str, le: i64, input: &Value) -> Self {
        Self::new(
            part,
            Some(field),
            "less_than_equal",
            format!("Input should be less than or equal to {le}"),
            input.clone(),
        )
        .with_ctx(json!({ "le": le }))
    }

    /// A value that is not an integer, by pydantic's error type for why
    /// ([`super::lax_int::NotAnInt`]).
    pub fn not_an_int(
        part: Part,
        field: &str,
        why: super::lax_int::NotAnInt,
        input: &Value,
    ) -> Self {
        Self::new(part, Some(field), why.kind(), why.msg(), input.clone())
    }

    /// A body that is not valid JSON: located by character position, as the original's
    /// framework did, with the parser's complaint in `ctx.error`.
    pub fn invalid_json(position: usize, complaint: impl Into<String>) -> Self {
        Self {
            kind: "json_invalid",
            loc: vec![Loc::Name("body".to_string()), Loc::Position(position)],
            msg: "JSON decode error".to_string(),
            input: json!({}),
            ctx: Some(Box::new(json!({ "error": complaint.into() }))),
            url: None,
        }
    }

    /// The same error, located in item `index` of a batch's `requests`.
    pub(super) fn within_batch_item(mut self, index: usize) -> Self {
        let rest = self.loc.split_off(1.min(self.loc.len()));
        self.loc = vec![
            Loc::Name("body".to_string()),
            Loc::Name("requests".to_string()),
            Loc::Position(index),
        ];
        self.loc.extend(rest);
        self
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
