//! Property: whatever bytes a client sends as a body, `POST /sync` and `POST /async` answer
//! a 2xx or a 4xx with the JSON error shape, never a 5xx, a panic or a dropped connection.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use crate::helpers::TestServer;

/// Bodies worth trying: raw bytes, JSON text of any shape, and objects with the right field
/// names holding values of every type (strings with NULs, huge and negative numbers, …).
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let scalar = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[0-9]{0,30}".prop_map(Value::from),
        Just(json!("http://127.0.0.1:9/cb")),
        Just(json!("http://[::ffff:127.0.0.1]/x")),
    ];
    let value = scalar.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::hash_map(any::<String>(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let shaped = (value.clone(), value.clone(), value.clone()).prop_map(|(d, i, c)| {
        json!({"data": d, "iterations": i, "callback_url": c})
            .to_string()
            .into_bytes()
    });
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        value.prop_map(|v| v.to_string().into_bytes()),
        shaped,
        // Valid JSON text with invalid UTF-8 spliced into a string.
        prop::collection::vec(any::<u8>(), 0..16).prop_map(|junk| {
            let mut body = b"{\"data\":\"".to_vec();
            body.extend(junk);
            body.extend(b"\",\"iterations\":1}");
            body
        }),
    ]
}

#[test]
fn any_body_gets_a_2xx_or_a_json_4xx() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(TestServer::builder().start());
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(bodies(), any::<bool>()), |(body, sync)| {
            let path = if sync { "/sync" } else { "/async" };
            let (status, answer) = runtime.block_on(async {
                let response = app
                    .client
                    .post(app.url(path))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("an answer, not a dropped connection");
                let status = response.status().as_u16();
                (status, response.bytes().await.expect("a whole body"))
            });
            prop_assert!(
                status < 500,
                "{path} {:?} -> {status}",
                String::from_utf8_lossy(&body)
            );
            if status >= 400 {
                let error: Value = serde_json::from_slice(&answer).expect("a JSON error body");
                prop_assert_eq!(&error["status"], "error");
                prop_assert!(error["error"].is_string());
            }
            Ok(())
        })
        .unwrap();
    drop(app);
    runtime.shutdown_background();
}
