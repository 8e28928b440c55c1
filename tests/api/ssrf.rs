//! SSRF protection at submit (SPEC §5), over HTTP.
//!
//! Safety: a running server is only ever given loopback or unspecified destinations
//! (127.0.0.0/8, ::1, ::, 0.0.0.0, localhost), so that even a broken guard could not make a
//! test reach another network. The other blocked ranges are unit-tested on the guard itself
//! (`src/delivery/guard.rs`).

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Behaviour, Receiver, TestServer, read};

const WAIT: Duration = Duration::from_secs(20);

const PROTECTION_ON: &[(&str, &str)] = &[("callback-block-private-ips", "true")];

/// Every spelling of a loopback or unspecified host, with the host as the service reports
/// it once the URL standard has normalised it.
const LOOPBACK_SPELLINGS: &[(&str, &str)] = &[
    ("localhost", "localhost"),
    ("LOCALHOST.", "localhost."),
    ("LocalHost", "localhost"),
    ("foo.localhost", "foo.localhost"),
    ("a.b.LOCALHOST", "a.b.localhost"),
    ("api.localhost.", "api.localhost."),
    ("%6c%6f%63%61%6c%68%6f%73%74", "localhost"),
    ("127.0.0.1", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("127.255.255.254", "127.255.255.254"),
    ("127.42.0.7", "127.42.0.7"),
    ("2130706433", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0x7F.0x0.0x0.0x1", "127.0.0.1"),
    ("0.0.0.0", "0.0.0.0"),
    ("0", "0.0.0.0"),
    ("0x0", "0.0.0.0"),
    ("[::1]", "[::1]"),
    ("[0:0:0:0:0:0:0:1]", "[::1]"),
    ("[::]", "[::]"),
    ("[::0]", "[::]"),
    ("[0:0:0:0:0:0:0:0]", "[::]"),
    ("[::ffff:127.0.0.1]", "[::ffff:7f00:1]"),
    ("[::ffff:7f00:1]", "[::ffff:7f00:1]"),
    ("[::FFFF:127.1.2.3]", "[::ffff:7f01:203]"),
    ("[::ffff:0.0.0.0]", "[::ffff:0:0]"),
];

/// The 422 for a callback URL `url` whose host is blocked: a rule the original did not have,
/// reported as its own validators' were (pydantic's `value_error`).
fn blocked(host: &str, url: &str) -> Value {
    let msg =
        format!("Value error, host {host} is not allowed (private, loopback or reserved address)");
    json!({
        "status": "error",
        "error": format!("callback_url: {msg}"),
        "detail": [{
            "type": "value_error", "loc": ["body", "callback_url"], "msg": msg, "input": url,
            "ctx": {"error": {}}, "url": "https://errors.pydantic.dev/2.6/v/value_error",
        }],
    })
}

async fn assert_nothing_written(app: &TestServer) {
    let list = app.get_json("/requests?mode=async").await;
    assert_eq!(list, json!({"total": 0, "requests": []}));
    assert_eq!(app.get_json("/healthz").await["queue_size"], 0);
}

#[tokio::test]
async fn every_spelling_of_loopback_is_refused_at_submit() {
    let app = TestServer::builder().settings(PROTECTION_ON).start().await;
    for &(spelling, host) in LOOPBACK_SPELLINGS {
        for scheme in ["http", "https"] {
            for rest in [
                "",
                "/",
                ":8080/",
                ":1/cb",
                "/callback?x=1",
                ":65535/a/b#frag",
            ] {
                let url = format!("{scheme}://{spelling}{rest}");
                let (status, body) = read(
                    app.post_async(&json!({"data": "x", "iterations": 1, "callback_url": url}))
                        .await,
                )
                .await;
                assert_eq!(status, 422, "{url} must be refused: {body}");
                assert_eq!(body, blocked(host, &url), "{url}");
            }
        }
    }
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn credentials_in_the_url_do_not_hide_a_loopback_host() {
    let app = TestServer::builder().settings(PROTECTION_ON).start().await;
    for (url, host) in [
        ("http://user:pass@127.0.0.1:9999/cb", "127.0.0.1"),
        ("http://trusted.localhost@127.0.0.1/", "127.0.0.1"),
        ("http://user@localhost/", "localhost"),
        ("http://a:b@[::1]:80/", "[::1]"),
    ] {
        let (status, body) = read(
            app.post_async(&json!({"data": "x", "callback_url": url}))
                .await,
        )
        .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body, blocked(host, url), "{url}");
    }
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn a_refused_callback_is_reported_with_the_other_broken_fields() {
    let app = TestServer::builder().settings(PROTECTION_ON).start().await;
    let (status, body) = read(
        app.post_async(&json!({"data": " ", "callback_url": "http://127.1:8080/"}))
            .await,
    )
    .await;
    assert_eq!(status, 422);
    let fields: Vec<&Value> = body["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["loc"][1])
        .collect();
    assert_eq!(fields, [&json!("data"), &json!("callback_url")]);
    assert_nothing_written(&app).await;

    // Sync requests have no callback and are not affected by the protection.
    let response = app.post_sync(&json!({"data": "x", "iterations": 1})).await;
    assert_eq!(response.status(), 200);
}

#[test]
fn the_protection_is_on_unless_turned_off() {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        config: syncasync::config::Config,
    }
    let config = |args: &[&str]| {
        <Cli as clap::Parser>::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .expect("valid flags")
            .config
    };
    assert!(config(&[]).callback_block_private_ips, "on by default");
    for value in ["true", "TRUE", "1", "yes", "on"] {
        assert!(config(&["--callback-block-private-ips", value]).callback_block_private_ips);
    }
    for value in ["false", "0", "no", "off"] {
        assert!(!config(&["--callback-block-private-ips", value]).callback_block_private_ips);
    }
}

#[tokio::test]
async fn every_spelling_of_true_turns_the_protection_on() {
    for value in ["TRUE", "1", "yes", "on"] {
        let app = TestServer::builder()
            .setting("callback-block-private-ips", value)
            .start()
            .await;
        let (status, body) = read(
            app.post_async(&json!({"data": "x", "callback_url": "http://127.0.0.1/"}))
                .await,
        )
        .await;
        assert_eq!(status, 422, "--callback-block-private-ips {value}");
        assert_eq!(body, blocked("127.0.0.1", "http://127.0.0.1/"));
    }
}

#[tokio::test]
async fn with_protection_off_loopback_callbacks_are_accepted_and_delivered() {
    // The harness default: --callback-block-private-ips false.
    let app = TestServer::builder().start().await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let port = receiver.address.port();

    // Each spelling reaches the receiver, and the record keeps the URL as it was sent.
    for url in [
        receiver.url(),
        format!("http://2130706433:{port}/callback"),
        format!("http://0x7f.1:{port}/callback"),
    ] {
        let id = app.submit(&format!("to {url}"), &url).await;
        let record = app.wait_for_status(&id, "callback_success", WAIT).await;
        assert_eq!(record["callback_url"], url.as_str(), "{url}");
        assert_eq!(record["callback_attempts"], 1, "{url}");
        assert_eq!(record["callback_last_error"], Value::Null, "{url}");
        assert_eq!(record["attempts"][0]["status_code"], 200, "{url}");
    }
    assert_eq!(receiver.delivered_ids().len(), 3);
}

#[tokio::test]
async fn with_protection_off_localhost_is_resolved_and_delivered() {
    let app = TestServer::builder().start().await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let url = format!("http://localhost:{}/callback", receiver.address.port());
    let id = app.submit("by name", &url).await;
    let record = app.wait_for_status(&id, "callback_success", WAIT).await;
    assert_eq!(record["callback_url"], url);
    assert_eq!(receiver.delivered_ids(), [id]);
}
