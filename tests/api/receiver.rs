//! `syncasync receiver`, and signed delivery checked by an independent verifier.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use syncasync::receiver::{ReceiverArgs, router};

use crate::helpers::{Behaviour, Receiver, TestServer, client};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WAIT: Duration = Duration::from_secs(20);

fn args(extra: impl FnOnce(&mut ReceiverArgs)) -> ReceiverArgs {
    let mut args = ReceiverArgs {
        host: [127, 0, 0, 1].into(),
        port: 0,
        fail_rate: 0.0,
        delay_ms: 0,
        secret: None,
        max_stored: 10_000,
    };
    extra(&mut args);
    args
}

/// Serves the receiver on 127.0.0.1 and returns its base URL.
async fn start(args: ReceiverArgs) -> String {
    let app = router(&args).expect("receiver router");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

async fn post_callback(base: &str, id: &str, headers: &[(&str, String)]) -> u16 {
    let body = json!({"request_id": id, "status": "success", "result": null, "error": null, "timestamp": "t"});
    let mut request = client().post(format!("{base}/callback")).json(&body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.unwrap().status().as_u16()
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    let response = client().get(format!("{base}{path}")).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn records_callbacks_counts_duplicates_and_lists_them() {
    let base = start(args(|_| {})).await;
    assert_eq!(
        post_callback(
            &base,
            "a",
            &[("webhook-id", "a".into()), ("x-attempt", "1".into())]
        )
        .await,
        200
    );
    assert_eq!(post_callback(&base, "b", &[]).await, 200);
    assert_eq!(
        post_callback(
            &base,
            "a",
            &[("webhook-id", "a".into()), ("x-attempt", "2".into())]
        )
        .await,
        200
    );

    let (_, stats) = get(&base, "/stats").await;
    assert_eq!(stats["total_received"], 3);
    assert_eq!(stats["unique_request_ids"], 2);
    // The original receiver's name for the same count.
    assert_eq!(stats["unique_requests"], 2);
    assert_eq!(stats["duplicates"], 1);
    assert_eq!(stats["signature_failures"], 0);

    let (_, list) = get(&base, "/callbacks?limit=2").await;
    assert_eq!(list["total"], 3);
    let callbacks = list["callbacks"].as_array().unwrap();
    assert_eq!(callbacks.len(), 2, "limit applies");
    assert_eq!(callbacks[0]["request_id"], "a", "newest first");
    assert_eq!(callbacks[0]["duplicate"], true);
    assert_eq!(callbacks[0]["attempt"], 2);

    let (status, by_id) = get(&base, "/callbacks/a").await;
    assert_eq!(status, 200);
    assert_eq!(by_id["callbacks"].as_array().unwrap().len(), 2);
    assert_eq!(get(&base, "/callbacks/nope").await.0, 404);

    let cleared: Value = client()
        .delete(format!("{base}/callbacks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["cleared"], 3);
    let (_, stats) = get(&base, "/stats").await;
    assert_eq!(stats["total_received"], 0);
    assert_eq!(stats["unique_request_ids"], 0);
    assert_eq!(stats["unique_requests"], 0);
}

#[tokio::test]
async fn memory_is_bounded_to_the_last_n_callbacks() {
    let base = start(args(|a| a.max_stored = 3)).await;
    for n in 0..10 {
        post_callback(&base, &format!("id-{n}"), &[]).await;
    }
    let (_, list) = get(&base, "/callbacks?limit=100").await;
    assert_eq!(list["total"], 3);
    let ids: Vec<&str> = list["callbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["id-9", "id-8", "id-7"]);
    assert_eq!(
        get(&base, "/stats").await.1["total_received"],
        10,
        "counters cover everything"
    );
}

/// A sender chooses its `webhook-id`s: the receiver remembers the last `--max-stored` of them
/// for duplicate counting, not every one it ever saw.
#[tokio::test]
async fn duplicate_counting_remembers_only_the_last_n_ids() {
    let base = start(args(|a| a.max_stored = 5)).await;
    let long = "x".repeat(4096);
    for n in 0..200 {
        let id = format!("msg-{n}-{long}");
        assert_eq!(
            post_callback(&base, &format!("id-{n}"), &[("webhook-id", id)]).await,
            200
        );
    }
    // Without a webhook-id, the request id is the key: bounded the same way.
    for n in 0..20 {
        post_callback(&base, &format!("no-header-{n}"), &[]).await;
    }
    let (_, stats) = get(&base, "/stats").await;
    assert_eq!(stats["tracked_ids"], 5, "{stats}");
    assert_eq!(stats["stored"], 5, "{stats}");
    assert_eq!(stats["unique_request_ids"], 220, "{stats}");
    assert_eq!(stats["duplicates"], 0, "{stats}");

    // Repeats of recent ids are still duplicates ...
    for n in [19, 17, 19] {
        post_callback(&base, &format!("no-header-{n}"), &[]).await;
    }
    let (_, stats) = get(&base, "/stats").await;
    assert_eq!(stats["duplicates"], 3, "{stats}");
    assert_eq!(stats["tracked_ids"], 5, "{stats}");
    // ... and one forgotten long ago counts as new.
    post_callback(&base, "id-0", &[("webhook-id", format!("msg-0-{long}"))]).await;
    let (_, stats) = get(&base, "/stats").await;
    assert_eq!(stats["duplicates"], 3, "{stats}");
    assert_eq!(stats["unique_request_ids"], 221, "{stats}");
    assert_eq!(stats["tracked_ids"], 5, "{stats}");

    client()
        .delete(format!("{base}/callbacks"))
        .send()
        .await
        .unwrap();
    let (_, stats) = get(&base, "/stats").await;
    assert_eq!(stats["tracked_ids"], 0, "{stats}");
}

#[tokio::test]
async fn fail_rate_one_fails_every_callback() {
    let base = start(args(|a| a.fail_rate = 1.0)).await;
    for _ in 0..5 {
        assert_eq!(post_callback(&base, "x", &[]).await, 500);
    }
    let (_, stats) = get(&base, "/stats").await;
    assert_eq!(stats["failed_on_purpose"], 5);
    assert_eq!(stats["accepted"], 0);
}

#[tokio::test]
async fn with_a_secret_bad_or_missing_signatures_get_401() {
    let base = start(args(|a| a.secret = Some(SECRET.into()))).await;
    assert_eq!(post_callback(&base, "unsigned", &[]).await, 401);
    let now = chrono::Utc::now().timestamp();
    let forged = [
        ("webhook-id", "forged".to_string()),
        ("webhook-timestamp", now.to_string()),
        (
            "webhook-signature",
            "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string(),
        ),
    ];
    assert_eq!(post_callback(&base, "forged", &forged).await, 401);
    let (_, stats) = get(&base, "/stats").await;
    assert_eq!(stats["signature_failures"], 2);
    assert_eq!(stats["accepted"], 0);
}

#[tokio::test]
async fn the_service_and_the_receiver_agree_on_signatures_end_to_end() {
    let receiver_base = start(args(|a| a.secret = Some(SECRET.into()))).await;
    let app = TestServer::builder()
        .setting("callback-signing-secret", SECRET)
        .start()
        .await;
    let id = app
        .submit("signed", &format!("{receiver_base}/callback"))
        .await;
    app.wait_for_status(&id, "callback_success", WAIT).await;
    let (_, stats) = get(&receiver_base, "/stats").await;
    assert_eq!(stats["accepted"], 1);
    assert_eq!(stats["signature_failures"], 0);
    let (_, list) = get(&receiver_base, &format!("/callbacks/{id}")).await;
    assert_eq!(list["callbacks"][0]["signature_valid"], true);
}

#[tokio::test]
async fn rotated_secrets_sign_with_each_and_old_receivers_still_verify() {
    let new_secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let old_receiver = start(args(|a| a.secret = Some(SECRET.into()))).await;
    let new_receiver = start(args(|a| a.secret = Some(new_secret.into()))).await;
    let both = format!("{new_secret} {SECRET}");
    let app = TestServer::builder()
        .setting("callback-signing-secret", &both)
        .start()
        .await;
    for base in [&old_receiver, &new_receiver] {
        let id = app.submit("rotating", &format!("{base}/callback")).await;
        app.wait_for_status(&id, "callback_success", WAIT).await;
    }
}

/// Verifies a real signed delivery with the `standardwebhooks` Python package: an
/// implementation of the specification that shares no code with ours.
#[tokio::test]
async fn a_real_delivery_verifies_with_the_reference_python_library() {
    let available = Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the standardwebhooks Python package (.ci/run does)"
        );
        eprintln!(
            "skipped: python3 with the standardwebhooks package is not installed (pip install standardwebhooks)"
        );
        return;
    }
    let app = TestServer::builder()
        .setting("callback-signing-secret", SECRET)
        .start()
        .await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    app.submit("verify me", &receiver.url()).await;
    let callback = receiver.wait_for_deliveries(1, WAIT).await.remove(0);

    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body");
    std::fs::write(&body_path, &callback.raw).unwrap();
    let header = |name: &str| callback.headers[name].to_str().unwrap().to_string();
    let script = r#"
import sys
from standardwebhooks.webhooks import Webhook
secret, body_path, msg_id, timestamp, signature = sys.argv[1:]
body = open(body_path, "rb").read()
headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
Webhook(secret).verify(body, headers)
try:
    Webhook(secret).verify(body + b" ", headers)
except Exception:
    print("verified")
else:
    sys.exit("a tampered body verified")
"#;
    let output = Command::new("python3")
        .args(["-c", script, SECRET])
        .arg(&body_path)
        .args([
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "standardwebhooks rejected our signature: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "verified");
}

/// The receiver tool, run as a user runs it, lists its endpoints at start and logs a line
/// per callback: its request id, attempt and the status it answered.
#[tokio::test]
async fn the_receiver_says_what_it_serves_and_logs_each_callback() {
    let port = crate::helpers::unused_port().await.port();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("receiver.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_syncasync"))
        .args([
            "receiver",
            "--port",
            &port.to_string(),
            "--host",
            "127.0.0.1",
        ])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the receiver");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + WAIT;
    while client().get(format!("{base}/stats")).send().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the receiver never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = post_callback(&base, "logged-id-1", &[("x-attempt", "2".into())]).await;
    assert_eq!(status, 200);
    // Written by a background thread: wait for the line, then stop the receiver.
    let deadline = std::time::Instant::now() + WAIT;
    let mut log = std::fs::read_to_string(&log_path).unwrap_or_default();
    while !log.contains("logged-id-1") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = std::fs::read_to_string(&log_path).unwrap_or_default();
    }
    let _ = child.kill();
    let _ = child.wait();
    for endpoint in [
        "POST /callback",
        "GET /callbacks/{request_id}",
        "DELETE /callbacks",
        "GET /stats",
    ] {
        assert!(log.contains(endpoint), "{endpoint} not listed: {log}");
    }
    let line = log
        .lines()
        .find(|l| l.contains("logged-id-1"))
        .unwrap_or_else(|| panic!("no line for the callback: {log}"));
    assert!(
        line.contains("attempt=2") && line.contains("status=200"),
        "{line}"
    );
}
