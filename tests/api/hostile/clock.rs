//! An instance whose clock is wrong: on a shared database, due times and leases are computed
//! by PostgreSQL from delays, so an instance an hour ahead neither hides its jobs from the
//! cluster for an hour nor delays their retries.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use super::in_ci;
use crate::helpers::{Behaviour, Receiver, TestServer, client, postgres_admin_url};

#[tokio::test]
async fn an_instance_an_hour_ahead_still_gets_its_jobs_delivered_on_time() {
    let Some(_) = postgres_admin_url() else {
        eprintln!("skipped: clocks matter where instances share a database (PostgreSQL)");
        return;
    };
    let Some(libfaketime) = libfaketime() else {
        assert!(!in_ci(), "CI installs faketime (.ci/run does)");
        eprintln!("skipped: libfaketime is not installed (apt-get install faketime)");
        return;
    };
    // The instance's wall clock runs an hour ahead; its timers (the monotonic clock) do not.
    // The library is preloaded into the server itself: the `faketime` command would fork it,
    // and killing the command would leave the server running.
    let server = TestServer::builder()
        .child()
        .env("LD_PRELOAD", libfaketime)
        .env("FAKETIME", "+1h")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .start()
        .await;
    // The first attempt fails, so the job is also rescheduled (a retry due 50-100 ms later).
    let receiver = Receiver::start(Behaviour::fail_first(1)).await;
    let client = client();
    let response = client
        .post(format!("{}/async", server.address))
        .json(&json!({"data": "skewed", "iterations": 1, "callback_url": receiver.url()}))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let id = body["request_id"].as_str().unwrap();
    let record = server
        .wait_for_status(id, "callback_success", Duration::from_secs(15))
        .await;
    assert_eq!(record["callback_attempts"], 2, "{record}");
    // The skew was real: the instance stamped the request an hour ahead.
    let created: chrono::DateTime<chrono::Utc> =
        record["created_at"].as_str().unwrap().parse().unwrap();
    assert!(
        created > chrono::Utc::now() + chrono::Duration::minutes(50),
        "the instance's clock was not skewed: {record}"
    );
}

/// Where Debian's `libfaketime` package puts the library: `/usr/lib/<multiarch>/faketime/`
/// (or `/usr/lib/faketime/` on a distribution without multiarch directories).
fn libfaketime() -> Option<String> {
    let lib = PathBuf::from("/usr/lib");
    let multiarch = std::fs::read_dir(&lib)
        .ok()?
        .flatten()
        .map(|entry| entry.path());
    std::iter::once(lib.clone())
        .chain(multiarch)
        .map(|dir| dir.join("faketime/libfaketime.so.1"))
        .find(|candidate| candidate.is_file())
        .map(|path| path.to_string_lossy().into_owned())
}
