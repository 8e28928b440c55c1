//! Nothing acknowledged is lost: the service as a child process, killed with SIGKILL
//! mid-burst or stopped with SIGTERM, then restarted on the same database.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{
    Behaviour, Receiver, TestServer, assert_all_delivered, client, fresh_database, unused_port,
};

#[tokio::test]
async fn kill_9_mid_burst_loses_no_acknowledged_request() {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database(dir.path()).await;
    // A receiver that takes a moment, so that deliveries are in flight at the kill.
    let receiver = Receiver::start(Behaviour::hang(Duration::from_millis(30))).await;
    let mut server = TestServer::builder()
        .child()
        .database_url(&database)
        .start()
        .await;

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut submitters = Vec::new();
    for worker in 0..8 {
        let address = server.address.clone();
        let callback = receiver.url();
        let acknowledged = Arc::clone(&acknowledged);
        submitters.push(tokio::spawn(async move {
            let client = client();
            for n in 0..200 {
                let body = json!({"data": format!("burst {worker}-{n}"), "iterations": 5000, "callback_url": callback});
                let Ok(response) = client.post(format!("{address}/async")).json(&body).send().await else {
                    return; // the server is gone
                };
                if response.status() != 200 {
                    continue;
                }
                let Ok(body) = response.json::<Value>().await else {
                    return;
                };
                if let Some(id) = body["request_id"].as_str() {
                    acknowledged.lock().unwrap().push(id.to_string());
                }
            }
        }));
    }
    // Kill mid-burst: some requests acknowledged, some delivered, many still queued.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 150 {
        assert!(Instant::now() < deadline, "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill_9();
    for submitter in submitters {
        submitter.await.unwrap();
    }
    let acknowledged: Vec<String> = acknowledged.lock().unwrap().clone();
    let delivered_before = receiver.delivered_ids().len();
    assert!(
        delivered_before < acknowledged.len(),
        "the kill should leave work unfinished ({delivered_before} of {} delivered)",
        acknowledged.len()
    );

    let server = TestServer::builder()
        .child()
        .database_url(&database)
        .start()
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &acknowledged {
        server
            .wait_for_status_until(id, "callback_success", deadline)
            .await;
    }
    assert_all_delivered(&receiver, &acknowledged);

    // Nothing is left behind in an unfinished state: requests committed but not yet
    // acknowledged when the process died finish too.
    let deadline = Instant::now() + Duration::from_secs(30);
    for status in ["pending", "processing", "callback_pending"] {
        loop {
            let list = server.get_json(&format!("/requests?status={status}")).await;
            if list["total"] == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "requests left {status}: {list}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_sync_requests_finish_and_exits_0() {
    // Each unit of work takes a second of simulated I/O, so the requests are surely in flight.
    let mut server = TestServer::builder()
        .child()
        .setting("work-duration-seconds", "1")
        .start()
        .await;
    let mut in_flight = Vec::new();
    for n in 0..4 {
        let url = format!("{}/sync", server.address);
        in_flight.push(tokio::spawn(async move {
            client()
                .post(url)
                .json(&json!({"data": format!("in flight {n}"), "iterations": 10}))
                .send()
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.sigterm();

    for request in in_flight {
        let response = request.await.unwrap().expect("in-flight request answered");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "success");
    }
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
}

#[tokio::test]
async fn sigterm_hands_unfinished_deliveries_back_and_restart_delivers_them() {
    let dir = tempfile::tempdir().unwrap();
    let database = fresh_database(dir.path()).await;
    let hanging = Receiver::start(Behaviour::hang(Duration::from_secs(30))).await;
    let address = hanging.address;
    let mut server = TestServer::builder()
        .child()
        .database_url(&database)
        .setting("shutdown-grace-seconds", "1")
        .setting("callback-timeout-seconds", "60")
        .setting("job-lease-seconds", "120")
        .start()
        .await;
    let client = client();
    let response = client
        .post(format!("{}/async", server.address))
        .json(
            &json!({"data": "stuck in delivery", "iterations": 10, "callback_url": hanging.url()}),
        )
        .send()
        .await
        .unwrap();
    let id = response.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Wait until the delivery is in flight to the hanging receiver.
    server
        .wait_for_active_workers(1, Duration::from_secs(10))
        .await;
    let stopping = Instant::now();
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the grace period bounds the stop, took {:?}",
        stopping.elapsed()
    );

    // The request is still owed its callback: a restarted service delivers it once the
    // receiver works.
    hanging.stop().await;
    let good = Receiver::start_on(address, Behaviour::accept()).await;
    let server = TestServer::builder()
        .child()
        .database_url(&database)
        .start()
        .await;
    good.wait_for_deliveries(1, Duration::from_secs(30)).await;
    server
        .wait_for_status(&id, "callback_success", Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn a_stopped_service_delivers_what_it_had_queued_after_restart() {
    // Accepted while the receiver is down; the first attempt fails and a retry is scheduled;
    // the service stops; after a restart (receiver up) the retry is delivered.
    let port = unused_port().await;
    let settings = [
        ("callback-max-retries", "5"),
        ("callback-retry-base-delay", "1"),
        ("callback-retry-max-delay", "1"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database(dir.path()).await;
    let app = TestServer::builder()
        .database_url(&database_url)
        .settings(&settings)
        .start()
        .await;
    let url = format!("http://{port}/callback");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.submit(&format!("queued {i}"), &url).await);
    }
    app.stop().await;

    let receiver = Receiver::start_on(port, Behaviour::accept()).await;
    let app = TestServer::builder()
        .database_url(&database_url)
        .settings(&settings)
        .start()
        .await;
    receiver
        .wait_for_deliveries(ids.len(), Duration::from_secs(30))
        .await;
    for id in &ids {
        app.wait_for_status(id, "callback_success", Duration::from_secs(10))
            .await;
    }
}

/// The backup command docs/deployment.md gives for SQLite, run as written while the service
/// serves: a service started on the copy has every request acknowledged before it.
#[tokio::test]
async fn the_documented_sqlite_backup_is_whole_while_the_service_runs() {
    if std::process::Command::new("sqlite3")
        .arg("-version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the sqlite3 command (.ci/run does)"
        );
        eprintln!("skipped: the sqlite3 command is not installed (apt-get install sqlite3)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("requests.db");
    let backup = dir.path().join("requests-backup.db");
    let app = TestServer::builder()
        .database_url(&format!("sqlite://{}", live.display()))
        .start()
        .await;
    for n in 0..20 {
        crate::helpers::sync_request(&app, &format!("kept {n}")).await;
    }
    let copied = std::process::Command::new("sqlite3")
        .arg(&live)
        .arg(format!(".backup '{}'", backup.display()))
        .output()
        .unwrap();
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    app.stop().await;

    let restored = TestServer::builder()
        .database_url(&format!("sqlite://{}", backup.display()))
        .start()
        .await;
    let list = restored.get_json("/requests?limit=100").await;
    assert_eq!(list["total"], 20, "{list}");
}
