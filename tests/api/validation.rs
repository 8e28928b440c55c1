//! SPEC §2 over HTTP: every input rule, on both `POST /sync` and `POST /async`, with the
//! exact status code and the original service's error shape; and no input, however
//! malformed, gets a 500.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Behaviour, Receiver, TestServer, read};

const PATHS: [&str; 2] = ["/sync", "/async"];
const DEFAULT_BODY_LIMIT: usize = 256 * 1024;

/// A service and a receiver that accepts every callback, so that valid async submissions
/// have somewhere to go.
struct Setup {
    app: TestServer,
    receiver: Receiver,
}

impl Setup {
    async fn start(settings: &[(&str, &str)]) -> Self {
        Self {
            app: TestServer::builder().settings(settings).start().await,
            receiver: Receiver::start(Behaviour::accept()).await,
        }
    }

    /// `body` with a valid `callback_url` added when posting to `/async` (unless the test
    /// set one, or the body is not an object).
    fn body_for(&self, path: &str, body: &Value) -> Value {
        let mut body = body.clone();
        if path == "/async"
            && let Some(object) = body.as_object_mut()
        {
            object
                .entry("callback_url")
                .or_insert_with(|| json!(self.receiver.url()));
        }
        body
    }

    /// POSTs a JSON value (as `application/json`) and returns the status and JSON body.
    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.app.post_json(path, &self.body_for(path, body)).await;
        read(response).await
    }

    /// POSTs raw bytes with the given Content-Type (none if `None`).
    async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&[u8]>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        read(post_raw(&self.app, path, content_type, body).await).await
    }
}

async fn post_raw(
    app: &TestServer,
    path: &str,
    content_type: Option<&[u8]>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = app.client.post(app.url(path)).body(body);
    if let Some(content_type) = content_type {
        request = request.header(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_bytes(content_type).expect("header value"),
        );
    }
    request.send().await.expect("request sent")
}

/// The exact 422 body for one broken rule of one body field, in the original's shape:
/// pydantic's error type and message, the input, the rule's parameters, pydantic's page.
fn field_error(field: &str, kind: &str, msg: &str, input: Value, ctx: Option<Value>) -> Value {
    let mut item = json!({
        "type": kind,
        "loc": ["body", field],
        "msg": msg,
        "input": input,
        "url": format!("https://errors.pydantic.dev/2.6/v/{kind}"),
    });
    if let Some(ctx) = ctx {
        item["ctx"] = ctx;
    }
    json!({"status": "error", "error": format!("{field}: {msg}"), "detail": [item]})
}

/// The exact 422 body for a body that is valid JSON but not an object (`null` is a missing
/// body, as FastAPI had it).
fn not_an_object(body: &Value) -> Value {
    let (kind, msg) = if body.is_null() {
        ("missing", "Field required")
    } else {
        (
            "model_attributes_type",
            "Input should be a valid dictionary or object to extract fields from",
        )
    };
    json!({
        "status": "error",
        "error": format!("body: {msg}"),
        "detail": [{
            "type": kind, "loc": ["body"], "msg": msg, "input": body,
            "url": format!("https://errors.pydantic.dev/2.6/v/{kind}"),
        }],
    })
}

const WHITESPACE_ONLY: &str = "Value error, data must not be whitespace only";
const NOT_A_STRING: &str = "Input should be a valid string";

fn sha256_hex(data: &str) -> String {
    hex::encode(Sha256::digest(data.as_bytes()))
}

/// Asserts a 200 from either endpoint: the result on `/sync`, the acceptance on `/async`.
fn assert_accepted(path: &str, status: u16, body: &Value, context: &str) {
    assert_eq!(status, 200, "{path} {context}: {body}");
    if path == "/sync" {
        assert_eq!(body["status"], "success", "{path} {context}");
    } else {
        assert_eq!(body["status"], "accepted", "{path} {context}");
    }
}

#[tokio::test]
async fn data_is_required_and_must_be_a_non_blank_string() {
    let setup = Setup::start(&[]).await;
    let value_error = Some(json!({"error": {}}));
    for path in PATHS {
        let cases = [
            (json!({"iterations": 1}), "missing", "Field required", None),
            (
                json!({"data": null, "iterations": 1}),
                "string_type",
                NOT_A_STRING,
                None,
            ),
            (
                json!({"data": "", "iterations": 1}),
                "string_too_short",
                "String should have at least 1 character",
                Some(json!({"min_length": 1})),
            ),
            (
                json!({"data": " \t\r\n ", "iterations": 1}),
                "value_error",
                WHITESPACE_ONLY,
                value_error.clone(),
            ),
            (
                // Unicode white space counts as white space too.
                json!({"data": "\u{a0}\u{3000}\u{2003}", "iterations": 1}),
                "value_error",
                WHITESPACE_ONLY,
                value_error.clone(),
            ),
            (
                json!({"data": 5, "iterations": 1}),
                "string_type",
                NOT_A_STRING,
                None,
            ),
            (
                json!({"data": true, "iterations": 1}),
                "string_type",
                NOT_A_STRING,
                None,
            ),
            (
                json!({"data": ["a"], "iterations": 1}),
                "string_type",
                NOT_A_STRING,
                None,
            ),
            (
                json!({"data": {"a": 1}, "iterations": 1}),
                "string_type",
                NOT_A_STRING,
                None,
            ),
        ];
        for (body, kind, msg, ctx) in cases {
            let sent = setup.body_for(path, &body);
            // A missing field's input is the whole object it is missing from.
            let input = if kind == "missing" {
                sent.clone()
            } else {
                sent["data"].clone()
            };
            let (status, answer) = setup.post(path, &body).await;
            assert_eq!(status, 422, "{path} {body}: {answer}");
            assert_eq!(
                answer,
                field_error("data", kind, msg, input, ctx),
                "{path} {body}"
            );
        }
    }
}

#[tokio::test]
async fn data_length_is_counted_in_characters_up_to_10000() {
    let setup = Setup::start(&[]).await;
    let too_long = |data: &str| {
        field_error(
            "data",
            "string_too_long",
            "String should have at most 10000 characters",
            json!(data),
            Some(json!({"max_length": 10000})),
        )
    };
    for path in PATHS {
        // At the limit: accepted, whether one byte or two per character.
        for data in ["a".repeat(10_000), "é".repeat(10_000)] {
            let (status, body) = setup
                .post(path, &json!({"data": data, "iterations": 1}))
                .await;
            assert_accepted(path, status, &body, "10000 characters");
            if path == "/sync" {
                assert_eq!(body["result"]["input_hash"], sha256_hex(&data));
            }
        }
        // One past it: refused, however few bytes a character takes.
        for data in ["a".repeat(10_001), "é".repeat(10_001)] {
            let (status, body) = setup
                .post(path, &json!({"data": data, "iterations": 1}))
                .await;
            assert_eq!(status, 422, "{path} 10001 characters");
            assert_eq!(body, too_long(&data), "{path}");
        }
    }
    // 10000 four-byte characters (40000 bytes) are still 10000 characters.
    let emoji = "😀".repeat(10_000);
    let (status, body) = setup
        .post("/sync", &json!({"data": emoji, "iterations": 1}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["input_hash"], sha256_hex(&emoji));
}

#[tokio::test]
async fn iterations_must_be_an_integer_between_1_and_1000000() {
    // Each case as the original's pydantic answered it (tests/compat has the whole table,
    // checked against pydantic itself).
    let setup = Setup::start(&[]).await;
    let at_least = (
        "greater_than_equal",
        "Input should be greater than or equal to 1",
        Some(json!({"ge": 1})),
    );
    let at_most = (
        "less_than_equal",
        "Input should be less than or equal to 1000000",
        Some(json!({"le": 1000000})),
    );
    let parsing = (
        "int_parsing",
        "Input should be a valid integer, unable to parse string as an integer",
        None,
    );
    let from_float = (
        "int_from_float",
        "Input should be a valid integer, got a number with a fractional part",
        None,
    );
    let not_an_int = ("int_type", "Input should be a valid integer", None);
    let cases = [
        (json!(0), at_least.clone()),
        (json!(-1), at_least.clone()),
        (json!(i64::MIN), at_least.clone()),
        (json!(0.0), at_least.clone()),
        (json!(false), at_least.clone()),
        (json!(1_000_001), at_most.clone()),
        (json!(u64::MAX), at_most.clone()),
        (json!(1e7), at_most.clone()),
        // An integer in a string meets the same range rule as a number.
        (json!("0"), at_least.clone()),
        (json!("-1"), at_least),
        (json!("1000001"), at_most),
        (json!(1.5), from_float.clone()),
        (json!(10.5), from_float),
        // A string that holds no integer is not one.
        (json!("1.5"), parsing.clone()),
        (json!("abc"), parsing.clone()),
        (json!(""), parsing.clone()),
        (json!(" 100 "), parsing.clone()),
        (json!("1e3"), parsing),
        (json!(null), not_an_int.clone()),
        (json!([10]), not_an_int.clone()),
        (json!({"n": 10}), not_an_int),
    ];
    for path in PATHS {
        for (iterations, (kind, msg, ctx)) in &cases {
            let body = json!({"data": "hello", "iterations": iterations});
            let (status, answer) = setup.post(path, &body).await;
            assert_eq!(status, 422, "{path} iterations={iterations}: {answer}");
            let expected = field_error("iterations", kind, msg, iterations.clone(), ctx.clone());
            assert_eq!(answer, expected, "{path} iterations={iterations}");
        }
    }
}

#[tokio::test]
async fn iterations_bounds_are_accepted_and_the_default_is_1000() {
    let setup = Setup::start(&[]).await;
    for iterations in [1, 1_000_000] {
        let (status, body) = setup
            .post("/sync", &json!({"data": "x", "iterations": iterations}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"]["iterations"], iterations);
    }
    // A number with no fractional part is an integer (JSON Schema, and the original's pydantic).
    let (status, body) = setup
        .post("/sync", &json!({"data": "x", "iterations": 10.0}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["iterations"], 10);
    let (status, body) = setup.post("/sync", &json!({"data": "hello world"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"]["iterations"], 1000);
    assert_eq!(
        body["result"]["output_hash"],
        "fe95811b8cb653eff38837427b8bb5d243daae5920c86cf8f494c8edc7e0b744"
    );

    // The same bounds and default on /async, checked on the stored result.
    let mut expected = Vec::new();
    for iterations in [Some(1), Some(1_000_000), None] {
        let mut body = json!({"data": "x"});
        if let Some(n) = iterations {
            body["iterations"] = json!(n);
        }
        let (status, answer) = setup.post("/async", &body).await;
        assert_eq!(status, 200, "{answer}");
        let id = answer["request_id"].as_str().unwrap().to_string();
        expected.push((id, iterations.unwrap_or(1000)));
    }
    for (id, iterations) in expected {
        let record = setup
            .app
            .wait_for_status(&id, "callback_success", Duration::from_secs(30))
            .await;
        assert_eq!(record["result"]["iterations"], iterations, "{id}");
    }
}

#[tokio::test]
async fn iterations_written_as_a_string_count_as_the_integer() {
    // The original's pydantic read `"100"` (and `"1_00"`, `"100.0"`) as 100, and its clients
    // send that.
    let setup = Setup::start(&[]).await;
    let (status, numeric) = setup
        .post("/sync", &json!({"data": "test data", "iterations": 100}))
        .await;
    assert_eq!(status, 200, "{numeric}");
    for iterations in [
        json!("100"),
        json!("+100"),
        json!("0100"),
        json!("1_00"),
        json!("100.0"),
        json!("100."),
        json!(100.0),
    ] {
        let (status, body) = setup
            .post(
                "/sync",
                &json!({"data": "test data", "iterations": iterations}),
            )
            .await;
        assert_eq!(status, 200, "{iterations}: {body}");
        assert_eq!(body["result"]["iterations"], 100, "{iterations}");
        assert_eq!(
            body["result"]["output_hash"], numeric["result"]["output_hash"],
            "{iterations}"
        );
    }
    // `true` is 1, as the original's pydantic read it.
    let (status, body) = setup
        .post("/sync", &json!({"data": "x", "iterations": true}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["iterations"], 1);
    // SPEC §1's test vector.
    assert_eq!(
        numeric["result"]["output_hash"],
        "c05ae8cf2d0157a8276c179394cd8bd61b399cf63b0e0048c869853fa5b865f7"
    );

    // On /async too, checked on the stored result.
    let (status, answer) = setup
        .post("/async", &json!({"data": "test data", "iterations": "100"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["request_id"].as_str().unwrap();
    let record = setup
        .app
        .wait_for_status(id, "callback_success", Duration::from_secs(30))
        .await;
    assert_eq!(record["result"]["iterations"], 100);
    assert_eq!(
        record["result"]["output_hash"],
        numeric["result"]["output_hash"]
    );
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let setup = Setup::start(&[]).await;
    for path in PATHS {
        let body = json!({
            "data": "hello world",
            "iterations": 1000,
            "importance": "high",
            "nested": {"a": [1, 2, 3]},
            "callback": null,
        });
        let (status, answer) = setup.post(path, &body).await;
        assert_accepted(path, status, &answer, "unknown fields");
        if path == "/sync" {
            assert_eq!(
                answer["result"]["output_hash"],
                "fe95811b8cb653eff38837427b8bb5d243daae5920c86cf8f494c8edc7e0b744"
            );
        }
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_gets_422_json_invalid() {
    let setup = Setup::start(&[]).await;
    let bodies: [&[u8]; 5] = [
        b"not json",
        b"{\"data\": \"x\"",
        b"{'data': 'x'}",
        b"{\"data\": \"x\",}",
        b"{\"data\": \"x\"} trailing",
    ];
    for path in PATHS {
        for raw in bodies {
            let shown = String::from_utf8_lossy(raw);
            let (status, body) = setup
                .post_raw(path, Some(b"application/json"), raw.to_vec())
                .await;
            assert_eq!(status, 422, "{path} {shown:?}: {body}");
            assert_eq!(body["status"], "error", "{path} {shown:?}");
            let detail = body["detail"].as_array().expect("detail");
            assert_eq!(detail.len(), 1, "{path} {shown:?}: {body}");
            let error = &detail[0];
            // FastAPI's shape: located by character position in the body, its message,
            // an empty input, and the parser's complaint in ctx.
            assert_eq!(error["type"], "json_invalid", "{path} {shown:?}");
            let loc = error["loc"].as_array().expect("loc");
            assert_eq!(loc.len(), 2, "{path} {shown:?}: {body}");
            assert_eq!(loc[0], "body", "{path} {shown:?}");
            let position = loc[1].as_u64().expect("loc[1] is a position") as usize;
            assert!(position <= raw.len(), "{path} {shown:?}: {position}");
            assert_eq!(error["msg"], "JSON decode error", "{path} {shown:?}");
            assert_eq!(error["input"], json!({}), "{path} {shown:?}");
            assert!(
                error["ctx"]["error"].is_string(),
                "{path} {shown:?}: {body}"
            );
            assert_eq!(body["error"], "body: JSON decode error", "{path} {shown:?}");
        }
        // An empty body is a missing one.
        let (status, body) = setup
            .post_raw(path, Some(b"application/json"), Vec::new())
            .await;
        assert_eq!(status, 422);
        assert_eq!(body, not_an_object(&Value::Null), "{path}");
    }
}

#[tokio::test]
async fn json_that_is_not_an_object_gets_422() {
    let setup = Setup::start(&[]).await;
    for path in PATHS {
        for body in [
            json!([1, 2]),
            json!([{"data": "x"}]),
            json!("data"),
            json!(42),
            json!(true),
            json!(null),
        ] {
            let (status, answer) = setup.post(path, &body).await;
            assert_eq!(status, 422, "{path} {body}");
            assert_eq!(answer, not_an_object(&body), "{path} {body}");
        }
    }
}

#[tokio::test]
async fn a_wrong_content_type_gets_415_and_a_missing_one_is_read_as_json() {
    let setup = Setup::start(&[]).await;
    let unsupported = json!({
        "status": "error",
        "error": "Content-Type must be application/json",
    });
    for path in PATHS {
        let valid = serde_json::to_vec(&setup.body_for(path, &json!({"data": "hello"}))).unwrap();
        for content_type in [
            &b"text/plain"[..],
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=x",
            b"application/xml",
            b"application/jsonx",
        ] {
            let shown = String::from_utf8_lossy(content_type);
            let (status, body) = setup
                .post_raw(path, Some(content_type), valid.clone())
                .await;
            assert_eq!(status, 415, "{path} {shown}: {body}");
            assert_eq!(body, unsupported, "{path} {shown}");
        }
        for content_type in [
            None,
            Some(&b"application/json"[..]),
            Some(b"application/json; charset=utf-8"),
            Some(b"APPLICATION/JSON"),
        ] {
            let (status, body) = setup.post_raw(path, content_type, valid.clone()).await;
            assert_accepted(path, status, &body, &format!("{content_type:?}"));
        }
    }
}

/// A JSON body of exactly `size` bytes: `prefix` then a `padding` field filled to size.
/// `prefix` is an object's opening and fields, without the closing brace.
fn padded_body(prefix: &str, size: usize) -> Vec<u8> {
    let opening = format!("{prefix},\"padding\":\"");
    let closing = "\"}";
    let room = size
        .checked_sub(opening.len() + closing.len())
        .expect("prefix fits");
    let body = format!("{opening}{}{closing}", "p".repeat(room));
    assert_eq!(body.len(), size);
    serde_json::from_str::<Value>(&body).expect("padded body is valid JSON");
    body.into_bytes()
}

/// The opening of a body for `path` with `data` already JSON-encoded (escapes and all).
fn prefix_for(setup: &Setup, path: &str, encoded_data: &str) -> String {
    let mut prefix = format!("{{\"data\":\"{encoded_data}\",\"iterations\":1");
    if path == "/async" {
        prefix.push_str(&format!(",\"callback_url\":\"{}\"", setup.receiver.url()));
    }
    prefix
}

#[tokio::test]
async fn a_body_over_the_size_limit_gets_413() {
    let setup = Setup::start(&[("max-body-bytes", "1024")]).await;
    let too_large = json!({
        "status": "error",
        "error": "Request body too large (limit 1024 bytes)",
    });
    for path in PATHS {
        let prefix = prefix_for(&setup, path, "hello");
        // Exactly at the limit: accepted.
        let (status, body) = setup
            .post_raw(path, Some(b"application/json"), padded_body(&prefix, 1024))
            .await;
        assert_accepted(path, status, &body, "1024 bytes");
        // One byte over, and 2 KB: refused before parsing, with a JSON body.
        for size in [1025, 2048] {
            let (status, body) = setup
                .post_raw(path, Some(b"application/json"), padded_body(&prefix, size))
                .await;
            assert_eq!(status, 413, "{path} {size} bytes: {body}");
            assert_eq!(body, too_large, "{path} {size} bytes");
        }
        // Too large is too large even when the JSON would have been invalid anyway.
        let (status, body) = setup
            .post_raw(path, Some(b"application/json"), vec![b'['; 2048])
            .await;
        assert_eq!(status, 413, "{path}: {body}");
        assert_eq!(body, too_large);
    }
    // The service is still fine afterwards.
    assert_eq!(setup.app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn a_body_of_exactly_256_kib_with_10000_escaped_characters_is_accepted() {
    let setup = Setup::start(&[]).await;
    // Every character written as a JSON escape: "\u00e9" is 6 bytes for one character, and
    // a character outside the BMP is a 12-byte surrogate pair.
    for (escape, character) in [(r"\u00e9", "é"), (r"\ud83d\ude00", "😀")] {
        let encoded = escape.repeat(10_000);
        let data = character.repeat(10_000);
        for path in PATHS {
            let prefix = prefix_for(&setup, path, &encoded);
            let body = padded_body(&prefix, DEFAULT_BODY_LIMIT);
            let (status, answer) = setup.post_raw(path, Some(b"application/json"), body).await;
            assert_accepted(path, status, &answer, escape);
            if path == "/sync" {
                assert_eq!(
                    answer["result"]["input_hash"],
                    sha256_hex(&data),
                    "{escape}"
                );
            }
            // One byte more is over the limit.
            let body = padded_body(&prefix, DEFAULT_BODY_LIMIT + 1);
            let (status, answer) = setup.post_raw(path, Some(b"application/json"), body).await;
            assert_eq!(status, 413, "{path} {escape}: {answer}");
        }
        // And 10001 escaped characters are one too many, however they are spelled.
        let encoded = escape.repeat(10_001);
        let prefix = prefix_for(&setup, "/sync", &encoded);
        let (status, answer) = setup
            .post_raw(
                "/sync",
                Some(b"application/json"),
                padded_body(&prefix, 200_000),
            )
            .await;
        assert_eq!(status, 422, "{escape}");
        assert_eq!(
            answer,
            field_error(
                "data",
                "string_too_long",
                "String should have at most 10000 characters",
                json!(character.repeat(10_001)),
                Some(json!({"max_length": 10000})),
            )
        );
    }
}

#[tokio::test]
async fn several_broken_fields_are_all_listed() {
    let setup = Setup::start(&[]).await;
    let (status, body) = setup
        .post("/sync", &json!({"data": "", "iterations": 0}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        body,
        json!({
            "status": "error",
            "error": "data: String should have at least 1 character; \
                      iterations: Input should be greater than or equal to 1",
            "detail": [
                {"type": "string_too_short", "loc": ["body", "data"],
                 "msg": "String should have at least 1 character", "input": "",
                 "ctx": {"min_length": 1},
                 "url": "https://errors.pydantic.dev/2.6/v/string_too_short"},
                {"type": "greater_than_equal", "loc": ["body", "iterations"],
                 "msg": "Input should be greater than or equal to 1", "input": 0,
                 "ctx": {"ge": 1},
                 "url": "https://errors.pydantic.dev/2.6/v/greater_than_equal"},
            ],
        })
    );

    let (status, body) = setup
        .post(
            "/async",
            &json!({"data": 7, "iterations": "many", "callback_url": "ftp://127.0.0.1/cb"}),
        )
        .await;
    assert_eq!(status, 422);
    let kinds: Vec<(&str, &str)> = body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["loc"][1].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("data", "string_type"),
            ("iterations", "int_parsing"),
            ("callback_url", "value_error")
        ]
    );
    assert_eq!(
        body["error"],
        "data: Input should be a valid string; iterations: Input should be a valid integer, \
         unable to parse string as an integer; callback_url: Value error, callback_url must \
         start with http:// or https://"
    );

    // Nothing was recorded for any refused request.
    let list = setup.app.get_json("/requests").await;
    assert_eq!(list["total"], 0);
}

#[tokio::test]
async fn callback_url_rules_on_async() {
    let setup = Setup::start(&[]).await;
    let value_error = |input: &str, rule: &str| {
        field_error(
            "callback_url",
            "value_error",
            &format!("Value error, {rule}"),
            json!(input),
            Some(json!({"error": {}})),
        )
    };
    let scheme = "callback_url must start with http:// or https://";
    let not_a_string =
        |input: Value| field_error("callback_url", "string_type", NOT_A_STRING, input, None);
    let too_long = |input: &str| {
        field_error(
            "callback_url",
            "string_too_long",
            "String should have at most 2048 characters",
            json!(input),
            Some(json!({"max_length": 2048})),
        )
    };
    let long = format!("http://127.0.0.1/{}", "a".repeat(2048));
    let cases = [
        (
            json!({"data": "x"}),
            field_error(
                "callback_url",
                "missing",
                "Field required",
                json!({"data": "x"}),
                None,
            ),
        ),
        (
            json!({"data": "x", "callback_url": null}),
            not_a_string(json!(null)),
        ),
        (
            json!({"data": "x", "callback_url": 42}),
            not_a_string(json!(42)),
        ),
        (
            json!({"data": "x", "callback_url": true}),
            not_a_string(json!(true)),
        ),
        (
            json!({"data": "x", "callback_url": ["http://127.0.0.1/"]}),
            not_a_string(json!(["http://127.0.0.1/"])),
        ),
        (
            json!({"data": "x", "callback_url": {"url": "http://127.0.0.1/"}}),
            not_a_string(json!({"url": "http://127.0.0.1/"})),
        ),
        (
            json!({"data": "x", "callback_url": "ftp://127.0.0.1/cb"}),
            value_error("ftp://127.0.0.1/cb", scheme),
        ),
        (
            json!({"data": "x", "callback_url": "file:///etc/passwd"}),
            value_error("file:///etc/passwd", scheme),
        ),
        (
            json!({"data": "x", "callback_url": "gopher://localhost/"}),
            value_error("gopher://localhost/", scheme),
        ),
        // The original compared the scheme as written: upper case was refused.
        (
            json!({"data": "x", "callback_url": "HTTP://127.0.0.1/cb"}),
            value_error("HTTP://127.0.0.1/cb", scheme),
        ),
        (
            json!({"data": "x", "callback_url": "http://"}),
            value_error("http://", "is not a valid URL: empty host"),
        ),
        (
            json!({"data": "x", "callback_url": "https://"}),
            value_error("https://", "is not a valid URL: empty host"),
        ),
        (
            json!({"data": "x", "callback_url": "not a url"}),
            value_error("not a url", scheme),
        ),
        (
            json!({"data": "x", "callback_url": ""}),
            value_error("", scheme),
        ),
        (json!({"data": "x", "callback_url": long}), too_long(&long)),
    ];
    for (body, expected) in &cases {
        let (status, answer) = read(setup.app.post_async(body).await).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer, *expected, "{body}");
    }
    assert_eq!(setup.app.get_json("/requests").await["total"], 0);

    // Exactly 2048 characters is accepted (and delivered).
    let base = format!("{}?pad=", setup.receiver.url());
    let exact = format!("{base}{}", "a".repeat(2048 - base.len()));
    assert_eq!(exact.chars().count(), 2048);
    let (status, answer) = setup
        .post("/async", &json!({"data": "x", "callback_url": exact}))
        .await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["request_id"].as_str().unwrap();
    let record = setup
        .app
        .wait_for_status(id, "callback_success", Duration::from_secs(20))
        .await;
    assert_eq!(record["callback_url"], exact);
    // 2049 is one too many.
    let over = format!("{exact}a");
    let (status, answer) = setup
        .post("/async", &json!({"data": "x", "callback_url": over}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(answer, too_long(&over));
}

#[tokio::test]
async fn malformed_input_never_gets_a_500_and_the_service_keeps_answering() {
    let setup = Setup::start(&[]).await;
    let deep_open = "[".repeat(100_000);
    let deep_balanced = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let deep_objects = format!("{}1{}", "{\"a\":".repeat(20_000), "}".repeat(20_000));
    let deep_data = format!(
        "{{\"data\":{}\"x\"{},\"iterations\":1}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b" ".to_vec(),
        b"null".to_vec(),
        b"{}".to_vec(),
        b"[]".to_vec(),
        b"\"\"".to_vec(),
        deep_open.into_bytes(),
        deep_balanced.into_bytes(),
        deep_objects.into_bytes(),
        deep_data.into_bytes(),
        b"1e400".to_vec(),
        b"-1e400".to_vec(),
        b"{\"data\":\"x\",\"iterations\":1e400}".to_vec(),
        b"{\"data\":1e400}".to_vec(),
        b"{\"data\":\"x\",\"iterations\":18446744073709551616}".to_vec(),
        b"{\"data\":\"x\",\"iterations\":-9223372036854775809}".to_vec(),
        b"{\"data\":\"x\",\"iterations\":NaN}".to_vec(),
        b"{\"data\":\"x\",\"iterations\":Infinity}".to_vec(),
        b"{\"data\":\"\xff\xfe\"}".to_vec(),
        b"\xff\xfe\xfd\xfc".to_vec(),
        b"\xef\xbb\xbf{\"data\":\"x\"}".to_vec(),
        b"{\"data\":\"\\ud800\"}".to_vec(),
        b"{\"data\":\"\\udfff\\ud800\"}".to_vec(),
        b"{\"data\":\"\\u0000\"}".to_vec(),
        b"{\"data\":\"a\\u0000b\",\"iterations\":1}".to_vec(),
        b"{\"data\":\"\x00\"}".to_vec(),
        b"{\"data\":\"a\",\"data\":\"b\",\"iterations\":1}".to_vec(),
        b"{\"data\":\"x\",\"callback_url\":\"http://[::1\"}".to_vec(),
        b"{\"data\":\"x\",\"callback_url\":\"http://a b/\"}".to_vec(),
        b"{\"data\":\"x\",\"callback_url\":\"http://%zz/\"}".to_vec(),
        b"{\"data\":\"x\",\"callback_url\":\"http://127.0.0.1:99999/\"}".to_vec(),
        b"{\"data\":\"x\",\"callback_url\":\"http://[::ffff:999.0.0.1]/\"}".to_vec(),
        vec![b' '; 300 * 1024],
        vec![0; 1000],
    ];
    let content_types: [Option<&[u8]>; 3] = [
        Some(b"application/json"),
        None,
        Some(b"application/json\xff"),
    ];
    for path in PATHS {
        for raw in &bodies {
            for content_type in content_types {
                let shown: String = String::from_utf8_lossy(raw).chars().take(60).collect();
                let response = post_raw(&setup.app, path, content_type, raw.clone()).await;
                let status = response.status().as_u16();
                let text = response.text().await.expect("response body");
                // A body that happens to be valid is accepted; anything else is refused
                // with a client error and a JSON body.
                if status != 200 {
                    assert!(
                        (400..500).contains(&status),
                        "{path} {shown:?} ({content_type:?}): {status} {text}"
                    );
                    let body: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|_| panic!("{path} {shown:?}: not JSON: {text:?}"));
                    assert_eq!(body["status"], "error", "{path} {shown:?}");
                }
            }
        }
    }
    let health = setup.app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["database_ok"], true);
}
