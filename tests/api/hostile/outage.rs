//! The database goes away: PostgreSQL restarts, the disk under SQLite fills up. Requests
//! that need the database get 503 with `Retry-After` (never 500), `/healthz` says why, and
//! the service recovers by itself, losing nothing it acknowledged.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::in_ci;
use crate::helpers::{
    Behaviour, Receiver, TestServer, assert_all_delivered, postgres_admin_url, read, unused_port,
};
use crate::idempotency::post_keyed;

const WAIT: Duration = Duration::from_secs(30);

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs a command to completion; panics with its output if it fails.
fn run(command: &mut Command) {
    let output = command.output().expect("start command");
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Submits async requests until one is refused with 503; returns the ids accepted before.
async fn submit_until_refused(app: &TestServer, callback_url: &str) -> Vec<String> {
    let mut accepted = Vec::new();
    for n in 0..2000 {
        let body = json!({"data": format!("outage {n} {}", "x".repeat(2000)), "iterations": 1, "callback_url": callback_url});
        let response = app.post_async(&body).await;
        let retry_after = response.headers().get("retry-after").cloned();
        let (status, body) = read(response).await;
        match status {
            200 => accepted.push(body["request_id"].as_str().unwrap().to_string()),
            503 => {
                assert!(retry_after.is_some(), "a 503 carries Retry-After");
                assert_eq!(body["status"], "error", "{body}");
                return accepted;
            }
            other => panic!("while the database is failing: {other} {body}"),
        }
    }
    panic!("2000 submissions accepted on a full disk");
}

/// Polls `/healthz` until its status code is `want`; returns the last report.
async fn wait_for_health(app: &TestServer, want: u16) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, report) = read(app.get("/healthz").await).await;
        if status == want {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz stayed {status}: {report}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={megabytes}m"))
            .arg("tmpfs")
            .arg(&path));
        Self { path, _dir: dir }
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test]
async fn a_full_disk_under_sqlite_is_a_503_and_writing_resumes_when_space_returns() {
    if postgres_admin_url().is_some() {
        eprintln!("skipped: a SQLite test (the PostgreSQL run has its own outage test)");
        return;
    }
    if !is_root() {
        assert!(
            !in_ci(),
            "CI runs as root, which mounting a small disk needs"
        );
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let disk = SmallDisk::mount(8);
    let database = format!("sqlite://{}", disk.path.join("full.db").display());
    // A heartbeat every second: the service's own idle writes run often while the disk is full.
    let app = TestServer::builder()
        .database_url(&database)
        .setting("callback-timeout-seconds", "1")
        .setting("job-lease-seconds", "3")
        .start()
        .await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let before = app.submit("before the disk fills", &receiver.url()).await;
    app.wait_for_status(&before, "callback_success", WAIT).await;

    let filler = disk.fill();
    let mut acknowledged = submit_until_refused(&app, &receiver.url()).await;
    let report = wait_for_health(&app, 503).await;
    // For as long as submissions fail, so does /healthz: a probe write the size of one page
    // still fit on this disk, and reported healthy between refusals.
    for n in 0..10 {
        let body = json!({"data": format!("still full {n} {}", "x".repeat(2000)), "iterations": 1, "callback_url": receiver.url()});
        let (status, _) = read(app.post_async(&body).await).await;
        assert_eq!(status, 503, "the disk is still full");
        let (status, report) = read(app.get("/healthz").await).await;
        assert_eq!(status, 503, "healthy while writes fail: {report}");
    }
    assert_eq!(report["status"], "unhealthy", "{report}");
    // With no traffic, the service's own writes that change nothing (heartbeats with nothing
    // in flight, claims with nothing due: they commit on a full disk too) do not make it
    // look healthy.
    for _ in 0..7 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (status, report) = read(app.get("/healthz").await).await;
        assert_eq!(status, 503, "healthy with the disk still full: {report}");
    }
    assert!(
        report["database_error"]
            .as_str()
            .unwrap()
            .contains("disk full"),
        "/healthz says why: {report}"
    );
    // The process lives and reads still work.
    let (status, _) = read(app.get("/requests?limit=1").await).await;
    assert_eq!(status, 200);

    std::fs::remove_file(filler).unwrap();
    // Healthy again with no traffic needed to notice, and writing resumes.
    let report = wait_for_health(&app, 200).await;
    assert_eq!(report["database_ok"], true, "{report}");
    acknowledged.push(app.submit("after space returns", &receiver.url()).await);
    for id in &acknowledged {
        app.wait_for_status(id, "callback_success", WAIT).await;
    }
    acknowledged.push(before);
    assert_all_delivered(&receiver, &acknowledged);
    drop(app);
}

/// A PostgreSQL server of the test's own, on a free loopback port: a test may stop and
/// restart it without touching the server other tests use.
struct OwnPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl OwnPostgres {
    /// `None` where PostgreSQL's server binaries are not installed.
    async fn start() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|bin| bin.join("initdb").exists())?;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let port = unused_port().await.port();
        let this = Self {
            bin,
            data,
            port,
            _dir: dir,
        };
        if is_root() {
            // initdb refuses to run as root: the server runs as the postgres user.
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(this._dir.path()));
        }
        run(this
            .as_owner("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&this.data));
        this.pg_ctl_start();
        Some(this)
    }

    fn as_owner(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.data.display()
        );
        run(self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-l"])
            .arg(self.data.join("server.log"))
            .args(["-o", &options, "start"]));
    }

    fn stop(&self) {
        run(self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", "fast", "stop"]));
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// A PostgreSQL of the test's own; `None` (said why) outside the PostgreSQL suite or without
/// PostgreSQL's server binaries.
async fn own_postgresql() -> Option<OwnPostgres> {
    if postgres_admin_url().is_none() {
        eprintln!("skipped: runs with the PostgreSQL suite (SYNCASYNC_TEST_POSTGRES_URL)");
        return None;
    }
    let server = OwnPostgres::start().await;
    if server.is_none() {
        assert!(!in_ci(), "CI has PostgreSQL's server binaries");
        eprintln!("skipped: PostgreSQL's server binaries (initdb, pg_ctl) are not installed");
    }
    server
}

/// A PostgreSQL of the test's own, the service on it and a receiver; `None` (said why) outside
/// the PostgreSQL suite or without PostgreSQL's server binaries.
async fn service_on_its_own_postgresql() -> Option<(OwnPostgres, TestServer, Receiver)> {
    let server = own_postgresql().await?;
    let app = TestServer::builder()
        .database_url(&server.url())
        .start()
        .await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    Some((server, app, receiver))
}

#[tokio::test]
async fn postgresql_going_away_is_a_503_and_the_service_reconnects_by_itself() {
    let Some((server, app, receiver)) = service_on_its_own_postgresql().await else {
        return;
    };
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        acknowledged.push(app.submit(&format!("before {n}"), &receiver.url()).await);
    }

    server.stop();
    // Every endpoint that needs the database answers 503 with Retry-After, never 500.
    let response = app
        .post_async(&json!({"data": "while down", "iterations": 1, "callback_url": receiver.url()}))
        .await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    for path in ["/requests", &format!("/requests/{}", acknowledged[0])] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 503, "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}");
    }
    let (status, _) = read(
        app.post_sync(&json!({"data": "while down", "iterations": 1}))
            .await,
    )
    .await;
    assert_eq!(status, 503);
    let report = wait_for_health(&app, 503).await;
    assert_eq!(report["database_ok"], false, "{report}");

    server.pg_ctl_start();
    wait_for_health(&app, 200).await;
    acknowledged.push(app.submit("after the restart", &receiver.url()).await);
    for id in &acknowledged {
        app.wait_for_status(id, "callback_success", WAIT).await;
    }
    assert_all_delivered(&receiver, &acknowledged);
    drop(app);
}

/// An attempt that ends while PostgreSQL is away is recorded once it is back, for as long as
/// the job's lease lasts: the callback is delivered once, and not again when the lease runs
/// out (tried for 2.5 s only, its record was given up and the job delivered a second time).
#[tokio::test]
async fn an_attempt_that_ends_while_postgresql_is_away_is_recorded_once_it_is_back() {
    let Some(server) = own_postgresql().await else {
        return;
    };
    let app = TestServer::builder()
        .database_url(&server.url())
        .setting("callback-timeout-seconds", "5")
        .setting("job-lease-seconds", "10")
        .start()
        .await;
    // Answers after 1.5 s: the database goes away while the callback is in the receiver's
    // hands, and comes back 4 s later.
    let receiver = Receiver::start(Behaviour::hang_after(0, Duration::from_millis(1_500))).await;
    let id = app.submit("in flight", &receiver.url()).await;
    receiver.wait_for_arrivals(1, WAIT).await;
    server.stop();
    tokio::time::sleep(Duration::from_secs(4)).await;
    server.pg_ctl_start();
    app.wait_for_status(&id, "callback_success", WAIT).await;
    // Past the lease: a record given up would have the job delivered again by now.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        receiver.delivered_ids(),
        std::slice::from_ref(&id),
        "delivered once"
    );
    let record = app.get_json(&format!("/requests/{id}")).await;
    assert_eq!(record["callback_attempts"], 1, "{record}");
    drop(app);
}

/// A keyed sync request whose work ends while PostgreSQL is away: its client hears 503 at
/// once, and its end is written once the database is back, so that its row does not stay
/// `processing` (until the next start) and its key answers the client's retry with the
/// result instead of holding it.
#[tokio::test]
async fn a_sync_request_that_ends_while_postgresql_is_away_is_recorded_once_it_is_back() {
    let Some(server) = own_postgresql().await else {
        return;
    };
    let app = TestServer::builder()
        .database_url(&server.url())
        .setting("compute-threads", "1")
        .start()
        .await;
    // The one compute thread is busy for a while: the keyed request, its key committed,
    // waits behind this work while the database goes away.
    let blockers: Vec<_> = (0..8)
        .map(|n| {
            let client = app.client.clone();
            let url = app.url("/sync");
            tokio::spawn(async move {
                let body = json!({"data": format!("blocker {n}"), "iterations": 1_000_000});
                client.post(url).json(&body).send().await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = json!({"data": "ends while away", "iterations": 1000});
    let keyed = app
        .client
        .post(app.url("/sync"))
        .header("Idempotency-Key", "end-while-away")
        .json(&body)
        .send();
    let keyed = tokio::spawn(async move { read(keyed.await.expect("request sent")).await });
    let payload_hash = hex::encode(Sha256::digest("ends while away"))[..16].to_owned();
    let deadline = Instant::now() + WAIT;
    let id = loop {
        let list = app.get_json("/requests?mode=sync&status=processing").await;
        let found = list["requests"].as_array().and_then(|rows| {
            rows.iter()
                .find(|row| row["payload_hash"] == payload_hash.as_str())
                .and_then(|row| row["id"].as_str())
                .map(str::to_owned)
        });
        if let Some(id) = found {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "the keyed request never showed as processing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    server.stop();
    let (status, answer) = keyed.await.unwrap();
    assert_eq!(status, 503, "its end could not be written: {answer}");
    server.pg_ctl_start();
    wait_for_health(&app, 200).await;

    let record = app.wait_for_status(&id, "completed", WAIT).await;
    let (status, answer, replayed, _) = post_keyed(&app, "/sync", "end-while-away", &body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        replayed,
        "the retry is answered with the first request's result"
    );
    assert_eq!(answer["result"]["request_id"], json!(id), "{answer}");
    assert_eq!(answer["result"], record["result"], "{answer} {record}");
    for blocker in blockers {
        let _ = blocker.await;
    }
    drop(app);
}

/// A PostgreSQL that takes no writes (a standby promoted away from, a primary demoted by a
/// failover: SQLSTATE 25006) while it still answers reads: submissions get 503 with
/// Retry-After, never 500, `/healthz` is unhealthy and says why, and both recover by
/// themselves once the server takes writes again.
#[tokio::test]
async fn a_read_only_postgresql_is_a_503_and_unhealthy_until_it_takes_writes() {
    let Some((server, app, receiver)) = service_on_its_own_postgresql().await else {
        return;
    };
    let mut acknowledged = vec![app.submit("before", &receiver.url()).await];
    let read_only = |on: bool| {
        let url = server.url();
        async move {
            use sqlx::Connection;
            let mut conn = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "ALTER SYSTEM SET default_transaction_read_only = {on}"
            )))
            .execute(&mut conn)
            .await
            .unwrap();
            sqlx::raw_sql("SELECT pg_reload_conf()")
                .execute(&mut conn)
                .await
                .unwrap();
        }
    };
    read_only(true).await;
    // Submissions are refused as the server's sessions take the new default.
    let deadline = Instant::now() + WAIT;
    loop {
        let response = app
            .post_async(
                &json!({"data": "read-only", "iterations": 1, "callback_url": receiver.url()}),
            )
            .await;
        let retry_after = response.headers().contains_key("retry-after");
        let (status, body) = read(response).await;
        if status == 200 {
            acknowledged.push(body["request_id"].as_str().unwrap().to_string());
            assert!(Instant::now() < deadline, "still taking writes");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(status, 503, "{body}");
        assert!(retry_after, "a 503 carries Retry-After");
        break;
    }
    let report = wait_for_health(&app, 503).await;
    assert_eq!(report["status"], "unhealthy", "{report}");
    // With no traffic, the service's own writes that change nothing (heartbeats with nothing
    // in flight, claims with nothing due: they commit on a full disk too) do not make it
    // look healthy.
    for _ in 0..7 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (status, report) = read(app.get("/healthz").await).await;
        assert_eq!(status, 503, "healthy with the disk still full: {report}");
    }
    assert!(
        report["database_error"]
            .as_str()
            .unwrap()
            .contains("read-only"),
        "/healthz says why: {report}"
    );
    // Reads still work.
    let (status, _) = read(app.get("/requests?limit=1").await).await;
    assert_eq!(status, 200);

    read_only(false).await;
    let report = wait_for_health(&app, 200).await;
    assert_eq!(report["status"], "healthy", "{report}");
    acknowledged.push(app.submit("after", &receiver.url()).await);
    for id in &acknowledged {
        app.wait_for_status(id, "callback_success", WAIT).await;
    }
    assert_all_delivered(&receiver, &acknowledged);
}

/// A database that answers reads but keeps a write waiting (here another connection holds
/// SQLite's write lock for a while) makes `/healthz` degraded, and says why, while the write
/// waits; healthy again once it went through.
#[tokio::test]
async fn a_write_that_waits_makes_health_degraded() {
    if postgres_admin_url().is_some() {
        eprintln!("skipped: a SQLite test (holding the write lock from outside)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.db");
    let app = TestServer::builder()
        .database_url(&format!("sqlite://{}", path.display()))
        .setting("health-write-wait-seconds", "0.5")
        .start()
        .await;
    let receiver = Receiver::start(Behaviour::accept()).await;
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        std::thread::sleep(Duration::from_secs(3));
        conn.execute_batch("COMMIT").unwrap();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let submission = {
        let client = app.client.clone();
        let url = app.url("/async");
        let callback = receiver.url();
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"data": "waiting", "iterations": 1, "callback_url": callback}))
                .send()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, report) = read(app.get("/healthz").await).await;
    assert_eq!(status, 200, "degraded still serves: {report}");
    assert_eq!(report["status"], "degraded", "{report}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("write has waited"),
        "{report}"
    );
    holder.join().unwrap();
    let (status, body) = read(submission.await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    // Healthy once the writes queued behind the lock (the submission's, a claim) went
    // through.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, report) = read(app.get("/healthz").await).await;
        if report["status"] == "healthy" {
            break;
        }
        assert!(Instant::now() < deadline, "still not healthy: {report}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
