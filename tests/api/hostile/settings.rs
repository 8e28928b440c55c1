//! A careless operator: every setting that is accepted works, and one that would break
//! something is refused at start with one line naming it.

use std::time::Duration;

use serde_json::{Value, json};
use syncasync::delivery::signing::Signer;

use super::assert_refused_in_one_line;
use crate::helpers::{Behaviour, Receiver, TestServer, read};

#[test]
fn settings_that_would_break_something_are_refused_in_one_line_naming_them() {
    for (env, variable) in [
        (
            vec![("APP_JOB_LEASE_SECONDS", "1e-10")],
            "APP_JOB_LEASE_SECONDS",
        ),
        (
            vec![("APP_JOB_LEASE_SECONDS", "0.5")],
            "APP_JOB_LEASE_SECONDS",
        ),
        (
            vec![
                ("APP_JOB_LEASE_SECONDS", "15"),
                ("APP_CALLBACK_TIMEOUT_SECONDS", "10"),
            ],
            "APP_JOB_LEASE_SECONDS",
        ),
        (
            vec![("APP_ASYNC_QUEUE_MAX_SIZE", "18446744073709551615")],
            "APP_ASYNC_QUEUE_MAX_SIZE",
        ),
        (
            vec![("APP_COMPUTE_THREADS", "100000")],
            "APP_COMPUTE_THREADS",
        ),
        (
            vec![("APP_DATABASE_POOL_SIZE", "0")],
            "APP_DATABASE_POOL_SIZE",
        ),
        (
            vec![("APP_CALLBACK_TIMEOUT_SECONDS", "nan")],
            "APP_CALLBACK_TIMEOUT_SECONDS",
        ),
        (
            vec![("APP_CALLBACK_SLOW_AFTER_SECONDS", "0.01")],
            "APP_CALLBACK_SLOW_AFTER_SECONDS",
        ),
        (
            vec![
                ("APP_CALLBACK_BREAKER_COOLDOWN_SECONDS", "0.001"),
                ("APP_CALLBACK_BREAKER_MAX_COOLDOWN_SECONDS", "0.001"),
            ],
            "APP_CALLBACK_BREAKER_MAX_COOLDOWN_SECONDS",
        ),
        (
            vec![("APP_CLEANUP_INTERVAL_SECONDS", "0")],
            "APP_CLEANUP_INTERVAL_SECONDS",
        ),
        (
            vec![("APP_MAX_SCHEDULE_DELAY_SECONDS", "1e12")],
            "APP_MAX_SCHEDULE_DELAY_SECONDS",
        ),
        (
            vec![("APP_MAX_SCHEDULE_DELAY_SECONDS", "-1")],
            "APP_MAX_SCHEDULE_DELAY_SECONDS",
        ),
        (
            vec![("APP_MAX_SCHEDULE_DELAY_SECONDS", "nan")],
            "APP_MAX_SCHEDULE_DELAY_SECONDS",
        ),
        (
            vec![("APP_MAX_BODY_BYTES", "18446744073709551615")],
            "APP_MAX_BODY_BYTES",
        ),
        (vec![("APP_DATABASE_URL", " \n")], "APP_DATABASE_URL"),
        (
            vec![("APP_DATABASE_URL", "sqlite://a\u{7}b.db")],
            "APP_DATABASE_URL",
        ),
    ] {
        assert_refused_in_one_line(&env, variable);
    }
}

/// The one line says what is wrong, not only where: a database nobody listens for is
/// "connection refused" at once (not a pool's timeout after seconds), and a value outside a
/// fixed set lists the set.
#[tokio::test]
async fn refusals_say_why() {
    let address = crate::helpers::unused_port().await;
    let url = format!("postgres://postgres@{address}/syncasync");
    for (env, why) in [
        (
            vec![("APP_DATABASE_URL", url.as_str())],
            "Connection refused",
        ),
        (
            vec![("APP_LOG_FORMAT", "xml")],
            "must be one of: text, json",
        ),
    ] {
        let started = std::time::Instant::now();
        let (code, stderr) = super::start_binary_with(&env, Duration::from_secs(10));
        assert!(
            matches!(code, Some(1 | 2)),
            "{env:?}: exit {code:?}: {stderr}"
        );
        assert!(stderr.contains(why), "{env:?}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{env:?}: took {:?}",
            started.elapsed()
        );
    }
    // A database host that takes the connection and never answers: the start gives up
    // after ten seconds, saying so, instead of waiting for ever.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "postgres://postgres@{}/syncasync",
        silent.local_addr().unwrap()
    );
    let started = std::time::Instant::now();
    let (code, stderr) = super::start_binary_with(
        &[("APP_DATABASE_URL", url.as_str())],
        Duration::from_secs(30),
    );
    assert!(matches!(code, Some(1 | 2)), "exit {code:?}: {stderr}");
    assert!(stderr.contains("no answer from the database"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

/// Scheduling turned off (`0`, written with the newline a settings file leaves): a request
/// asking for a later start is refused, one asking for a time already past is taken, and so
/// is a delay of zero.
#[tokio::test]
async fn no_scheduling_at_all_refuses_any_later_start() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder()
        .setting("max-schedule-delay-seconds", "0\n")
        .start()
        .await;
    let body = |extra: Value| {
        let mut body = json!({"data": "x", "callback_url": receiver.url()});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let (status, answer) = read(app.post_async(&body(json!({"delay_seconds": 1}))).await).await;
    assert_eq!(status, 422, "{answer}");
    let later = (chrono::Utc::now() + chrono::Duration::seconds(5)).to_rfc3339();
    let (status, answer) = read(app.post_async(&body(json!({"run_at": later}))).await).await;
    assert_eq!(status, 422, "{answer}");
    for accepted in [
        json!({"delay_seconds": 0}),
        json!({"run_at": "2020-01-01T00:00:00Z"}),
    ] {
        let (status, answer) = read(app.post_async(&body(accepted)).await).await;
        assert_eq!(status, 200, "{answer}");
        let id = answer["request_id"].as_str().unwrap();
        app.wait_for_status(id, "callback_success", Duration::from_secs(20))
            .await;
    }
}

#[tokio::test]
async fn extreme_but_accepted_settings_work() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    // The largest queue bound, the smallest pool (on PostgreSQL, one connection per pool: the
    // job listener must not take it), the shortest lease.
    // (The retention cut-off is computed by the database on PostgreSQL: the longest accepted
    // retention must stay within its date range, which the cleanup below exercises.)
    let app = TestServer::builder()
        .setting("admin-token", "t")
        .setting("async-queue-max-size", "1099511627776")
        .setting("database-pool-size", "1")
        .setting("job-lease-seconds", "1")
        .setting("callback-timeout-seconds", "0.5")
        .setting("max-stored-requests", "18446744073709551615")
        .setting("request-retention-hours", "1000000")
        .start()
        .await;
    let (status, health) = read(app.get("/healthz").await).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["queue_capacity"], 1_099_511_627_776u64);
    let (status, _) = read(app.post_sync(&json!({"data": "x", "iterations": 1})).await).await;
    assert_eq!(status, 200);
    let id = app.submit("tiny pool", &receiver.url()).await;
    app.wait_for_status(&id, "callback_success", Duration::from_secs(20))
        .await;
    let (status, _) = read(app.get("/requests").await).await;
    assert_eq!(status, 200);
    assert_eq!(app.get("/metrics").await.status(), 200);
    let cleanup = app
        .client
        .post(app.url("/admin/cleanup"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(cleanup.status(), 200);
}

/// No grace period at all and the longest work duration accepted: the stale-sync sweep,
/// whose threshold the work duration stretches, still runs; and a sync request in flight at
/// shutdown is abandoned at once and recorded as failed, the stop prompt instead of waiting
/// on a day of work.
#[tokio::test]
async fn no_grace_and_the_longest_work_duration_stop_promptly_and_record_the_abandoned() {
    let dir = tempfile::tempdir().unwrap();
    let database = crate::helpers::fresh_database(dir.path()).await;
    let app = TestServer::builder()
        .database_url(&database)
        .setting("admin-token", "t")
        .setting("shutdown-grace-seconds", "0")
        .setting("work-duration-seconds", "86400")
        .start()
        .await;
    let cleanup = app
        .client
        .post(app.url("/admin/cleanup"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(cleanup.status(), 200);

    let request = super::json_post(
        "/sync",
        "Idempotency-Key: works-for-ever\r\n",
        &json!({"data": "for ever", "iterations": 1}),
    );
    let mut stream = super::connect(&app).await;
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    app.stop().await;
    let took = started.elapsed();
    drop(stream);
    assert!(
        took < Duration::from_millis(1800),
        "no grace period, and the shutdown took {took:?}"
    );

    let app = TestServer::builder().database_url(&database).start().await;
    let list = app.get_json("/requests?mode=sync").await;
    let records = list["requests"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{list}");
    assert_eq!(records[0]["status"], "failed", "{list}");
}

/// Secrets are often read from a file, which ends with a newline: the newline is not part of
/// the secret, and the service authenticates with the token as written without it.
#[tokio::test]
async fn secrets_with_a_trailing_newline_work_as_written_without_it() {
    let receiver = Receiver::start(Behaviour::accept()).await;
    let app = TestServer::builder()
        .child()
        .setting("api-token", "api-s3cret\n")
        .setting("admin-token", " admin-s3cret\r\n")
        .setting(
            "callback-signing-secret",
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n",
        )
        .start()
        .await;
    let list = app
        .client
        .get(app.url("/requests"))
        .bearer_auth("api-s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    let cleanup = app
        .client
        .post(app.url("/admin/cleanup"))
        .bearer_auth("admin-s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(cleanup.status(), 200);
    let submitted = app
        .client
        .post(app.url("/async"))
        .bearer_auth("api-s3cret")
        .json(&json!({"data": "signed", "iterations": 1, "callback_url": receiver.url()}))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 200);
    let callback = &receiver
        .wait_for_deliveries(1, Duration::from_secs(20))
        .await[0];
    let header = |name: &str| callback.headers[name].to_str().unwrap().to_string();
    let signer = Signer::from_secrets("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
    assert!(
        signer.verify(
            &header("webhook-id"),
            header("webhook-timestamp").parse().unwrap(),
            &callback.raw,
            &header("webhook-signature"),
        ),
        "the callback is signed with the secret as written without its newline"
    );
}

/// A token that is nothing but whitespace, or that holds whitespace or control characters no
/// client could send, would lock everyone out: refused at start, naming the variable and
/// never quoting the secret. So is a signing secret that is not a list of `whsec_` secrets.
#[test]
fn secrets_nobody_could_use_are_refused_in_one_line_without_quoting_them() {
    for (variable, value) in [
        ("APP_API_TOKEN", "\n"),
        ("APP_API_TOKEN", "leaky secret"),
        ("APP_API_TOKEN", "leaky\tsecret"),
        ("APP_ADMIN_TOKEN", "\r\n"),
        ("APP_ADMIN_TOKEN", "leaky\u{7}secret"),
        ("APP_ADMIN_TOKEN", "leaky-sécret"),
        ("APP_CALLBACK_SIGNING_SECRET", " \n"),
        ("APP_CALLBACK_SIGNING_SECRET", "leaky-secret"),
        (
            "APP_CALLBACK_SIGNING_SECRET",
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\nwhsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ),
    ] {
        assert_refused_in_one_line(&[(variable, value)], variable);
        let (_, stderr) = super::start_binary_with(&[(variable, value)], Duration::from_secs(5));
        assert!(!stderr.contains("leaky"), "{variable}={value:?}: {stderr}");
        assert!(
            !stderr.contains("C2FVsBQIhrscChlQIMV"),
            "{variable}={value:?}: {stderr}"
        );
    }
}

/// The original service accepted callback timeouts of 20 s and more with no lease setting at
/// all (it had none): without an explicit APP_JOB_LEASE_SECONDS the lease follows the
/// timeout instead of refusing to start.
#[test]
fn long_callback_timeouts_start_without_a_lease_setting() {
    for timeout in ["10", "20", "60"] {
        let (code, stderr) = super::start_binary_with(
            &[("APP_CALLBACK_TIMEOUT_SECONDS", timeout)],
            Duration::from_secs(3),
        );
        assert_eq!(
            code, None,
            "APP_CALLBACK_TIMEOUT_SECONDS={timeout} alone was refused:\n{stderr}"
        );
    }
    // A lease set explicitly too short for the timeout is still refused.
    assert_refused_in_one_line(
        &[
            ("APP_CALLBACK_TIMEOUT_SECONDS", "20"),
            ("APP_JOB_LEASE_SECONDS", "30"),
        ],
        "APP_JOB_LEASE_SECONDS",
    );
}

/// Starts the binary with `env` (APP_PORT set to a free port) and returns it once it answers
/// `GET /healthz` on `loopback` (`127.0.0.1` or `[::1]`), with its base URL there; fails the
/// test if it exits or does not answer in time.
async fn start_listening_on(
    env: &[(&str, &str)],
    loopback: &str,
    database: &std::path::Path,
) -> (std::process::Child, String) {
    let port = crate::helpers::unused_port().await.port().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_syncasync"))
        .env("APP_PORT", &port)
        .env(
            "APP_DATABASE_URL",
            format!("sqlite://{}", database.display()),
        )
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let address = format!("http://{loopback}:{port}");
    let client = crate::helpers::client();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = client.get(format!("{address}/healthz")).send().await
            && response.status() == 200
        {
            return (child, address);
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            panic!("{env:?}: exited at start ({status}):\n{stderr}");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{env:?}: not answering on {address}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The original took host names for APP_HOST (`localhost`): the name is resolved at start and
/// the service listens on what it resolves to. IP literals work as before, IPv6 bracketed or
/// not.
#[tokio::test]
async fn a_host_name_is_resolved_at_start_and_listened_on() {
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    for (host, loopback) in [
        ("localhost", "127.0.0.1"),
        ("LocalHost", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1"),
        ("[::1]", "[::1]"),
        ("::1", "[::1]"),
    ] {
        if loopback == "[::1]" && !ipv6 {
            eprintln!("no IPv6 loopback here: APP_HOST={host} not tried");
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let (mut child, address) =
            start_listening_on(&[("APP_HOST", host)], loopback, &dir.path().join("s.db")).await;
        let (status, _) = read(
            crate::helpers::client()
                .post(format!("{address}/sync"))
                .json(&json!({"data": host, "iterations": 1}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(status, 200, "APP_HOST={host}");
    }
}

/// A host name that does not resolve, or that is not a host name at all, is refused at start.
#[test]
fn a_host_that_cannot_be_listened_on_is_refused_in_one_line() {
    for host in [
        "no-such-host.invalid",
        "not a host",
        "0.0.0.0:8000",
        "http://localhost",
    ] {
        assert_refused_in_one_line(&[("APP_HOST", host)], "APP_HOST");
    }
}

/// Entries of APP_CALLBACK_ALLOWED_HOSTS are compared with the host of a callback URL: one
/// written with a scheme, a port or a path would never match, so it is refused at start,
/// naming the entry.
#[test]
fn allowed_hosts_that_could_never_match_are_refused_naming_the_entry() {
    for entry in [
        "hooks.internal:8443",
        "https://hooks.internal",
        "hooks.internal/callback",
        "user@hooks.internal",
        "[fd00::1]:8443",
        "hooks internal",
        "*.internal",
        "[fd00::1",
    ] {
        let list = format!("billing.internal, {entry}");
        let (code, stderr) = super::start_binary_with(
            &[("APP_CALLBACK_ALLOWED_HOSTS", &list)],
            Duration::from_secs(5),
        );
        assert!(matches!(code, Some(1 | 2)), "{entry:?} accepted: {stderr}");
        assert_refused_in_one_line(
            &[("APP_CALLBACK_ALLOWED_HOSTS", &list)],
            "APP_CALLBACK_ALLOWED_HOSTS",
        );
        assert!(
            stderr.contains(&format!("`{entry}`")),
            "{entry:?} not named: {stderr}"
        );
    }
    // Spaces around entries, any case, IPv6 with or without brackets and a trailing comma
    // are fine.
    let (code, stderr) = super::start_binary_with(
        &[(
            "APP_CALLBACK_ALLOWED_HOSTS",
            " Hooks.Internal , 10.0.0.7,[fd00::1], fd00::2, billing.internal.,",
        )],
        Duration::from_secs(3),
    );
    assert_eq!(code, None, "refused: {stderr}");
}

/// A database URL read from a file ends with a newline: the service opens (and locks) the
/// file as written without it, never a new empty file whose name ends in a newline.
#[tokio::test]
async fn a_database_url_with_a_trailing_newline_opens_the_file_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("queue.db");
    let url = format!("sqlite://{}\n", file.display());
    let (mut child, _) = start_listening_on(
        &[("APP_DATABASE_URL", &url)],
        "127.0.0.1",
        &dir.path().join("unused.db"),
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(file.exists(), "the file as written without its newline");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|name| !name.contains('\n')), "{names:?}");
}
