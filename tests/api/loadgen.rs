//! `syncasync loadgen`: its numbers checked against scripted servers whose behaviour is
//! known (a fixed delay, a one-second stall, scripted callbacks, failures of each kind), then
//! one run against the real service, and the command line's errors and Ctrl-C.
//!
//! Everything listens on 127.0.0.1 port 0 (callback receivers too: `--callback-port 0`),
//! so tests can run in parallel.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener as StdTcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde_json::{Value, json};
use syncasync::loadgen::{LoadgenArgs, ModeReport, Report, Wait, run};
use syncasync::model::Mode;
use syncasync::shutdown::CancellationToken;

use crate::helpers::{TestServer, client, unused_port};

#[derive(Parser)]
#[command(args_override_self = true)]
struct Cli {
    #[command(flatten)]
    args: LoadgenArgs,
}

/// Loadgen flags for a test: no progress bar, a callback receiver on any free port, then
/// `flags` (which override those).
fn args(flags: &[&str]) -> LoadgenArgs {
    let mut argv = vec!["loadgen", "--no-progress", "--callback-port", "0"];
    argv.extend_from_slice(flags);
    Cli::try_parse_from(argv).expect("loadgen flags").args
}

async fn loadgen(flags: &[&str]) -> Report {
    run(args(flags), CancellationToken::new())
        .await
        .expect("the run starts")
}

/// Serves `router` (plus `GET /healthz`, which the preflight asks) on 127.0.0.1; returns
/// its base URL.
async fn serve(router: Router) -> String {
    let router = router.route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

fn only(report: &Report, mode: Mode) -> &ModeReport {
    let found: Vec<&ModeReport> = report.modes.iter().filter(|m| m.mode == mode).collect();
    assert_eq!(found.len(), 1, "one {mode:?} phase: {report:?}");
    found[0]
}

fn ok_sync() -> Json<Value> {
    Json(json!({"status": "success", "result": {}}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_matches_a_server_that_answers_in_20_ms() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let router = Router::new()
        .route(
            "/sync",
            post(
                |State(seen): State<Arc<Mutex<Vec<String>>>>, Json(body): Json<Value>| async move {
                    seen.lock()
                        .unwrap()
                        .push(body["data"].as_str().unwrap().to_string());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    ok_sync()
                },
            ),
        )
        .with_state(Arc::clone(&seen));
    let base = serve(router).await;

    let report = loadgen(&[
        "--url",
        &base,
        "--mode",
        "sync",
        "-n",
        "100",
        "-c",
        "10",
        "--data-size",
        "40",
        "--threads",
        "3",
    ])
    .await;

    assert!(!report.interrupted);
    let sync = only(&report, Mode::Sync);
    assert_eq!((sync.total, sync.success, sync.failed), (100, 100, 0));
    assert_eq!(sync.failures, Default::default());
    assert!(sync.top_errors.is_empty());
    assert!(sync.callbacks.is_none());
    let latency = sync.latency_ms.as_ref().expect("latencies");
    assert_eq!(latency.count, 100);
    assert!(
        latency.min >= 20.0,
        "nothing is faster than the server: {latency:?}"
    );
    assert!(
        (20.0..=30.0).contains(&latency.p50),
        "p50 {} ms for a 20 ms server",
        latency.p50
    );
    // 10 workers, each request at least 20 ms: at most 500 req/s.
    assert!(
        (200.0..=505.0).contains(&sync.throughput_rps),
        "throughput {}",
        sync.throughput_rps
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 100);
    assert!(
        seen.iter().all(|d| d.len() == 40),
        "data is --data-size long"
    );
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        100,
        "data is unique"
    );
}

/// A server that, one time only, holds every request arriving between 0.5 s and 1.5 s after
/// its first request until 1.5 s.
fn stalling_server() -> Router {
    let first: Arc<OnceLock<Instant>> = Arc::default();
    Router::new()
        .route(
            "/sync",
            post(|State(first): State<Arc<OnceLock<Instant>>>| async move {
                let now = Instant::now();
                let start = *first.get_or_init(|| now);
                let (from, to) = (
                    start + Duration::from_millis(500),
                    start + Duration::from_millis(1500),
                );
                if now >= from && now < to {
                    tokio::time::sleep_until(to.into()).await;
                }
                ok_sync()
            }),
        )
        .with_state(first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_shows_a_stall_that_a_closed_loop_hides() {
    let open_base = serve(stalling_server()).await;
    let open = loadgen(&[
        "--url",
        &open_base,
        "--mode",
        "sync",
        "--rate",
        "100",
        "--duration",
        "3s",
        "-c",
        "10",
    ])
    .await;
    let closed_base = serve(stalling_server()).await;
    let closed = loadgen(&[
        "--url",
        &closed_base,
        "--mode",
        "sync",
        "--duration",
        "3s",
        "-c",
        "10",
    ])
    .await;

    let open = only(&open, Mode::Sync);
    assert_eq!((open.total, open.success), (300, 300), "100 req/s for 3 s");
    assert!(
        open.elapsed_s >= 2.9,
        "the schedule spans 3 s: {}",
        open.elapsed_s
    );
    let open_latency = open.latency_ms.as_ref().expect("latencies");
    let closed = only(&closed, Mode::Sync);
    let closed_latency = closed.latency_ms.as_ref().expect("latencies");
    let summary = format!("open {open_latency:?}\nclosed {closed_latency:?}");

    // Both runs met the same stall: their slowest request waited about a second.
    assert!(open_latency.max >= 900.0, "{summary}");
    assert!(closed_latency.max >= 900.0, "{summary}");
    // Open loop: about a third of the requests were due during the stall and waited for
    // it, from their scheduled time: the tail shows it.
    assert!(open_latency.p99 >= 500.0, "{summary}");
    assert!(open_latency.p90 >= 300.0, "{summary}");
    // Closed loop: the stall held only the 10 requests in flight, then nothing was sent;
    // hundreds of fast requests bury them below p90.
    assert!(closed.total > 200, "{summary}");
    assert!(closed_latency.p90 < 100.0, "{summary}");
    assert!(open_latency.p90 > 3.0 * closed_latency.p90, "{summary}");
}

/// A scripted async service: for request number i it answers `accepted` with id `req-i`
/// and POSTs callbacks to the URL it was given. Every 5th request (i = 0, 5, …) gets its
/// callback twice, both before the 200 (so they arrive before the loadgen knows the id);
/// requests i = 1, 11, 21, … are preceded by a callback for an id never returned; request 2
/// is preceded by a callback without an id; every other callback comes after the 200.
/// With `call_back_odd` false, odd requests get no callback at all.
fn scripted_async_service(call_back_odd: bool) -> Router {
    #[derive(Clone)]
    struct Script {
        next: Arc<AtomicU64>,
        call_back_odd: bool,
    }
    async fn post_callback(url: &str, body: Value) {
        let status = client()
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success() || status == 400, "{status}");
    }
    fn callback(id: &str) -> Value {
        json!({"request_id": id, "status": "success", "result": {}, "error": null, "timestamp": "t"})
    }
    Router::new()
        .route(
            "/async",
            post(
                |State(script): State<Script>, Json(body): Json<Value>| async move {
                    let url = body["callback_url"].as_str().unwrap().to_string();
                    let i = script.next.fetch_add(1, Ordering::SeqCst);
                    let id = format!("req-{i}");
                    if i % 5 == 0 {
                        post_callback(&url, callback(&id)).await;
                        post_callback(&url, callback(&id)).await;
                    } else {
                        if i % 10 == 1 {
                            post_callback(&url, callback(&format!("ghost-{i}"))).await;
                        }
                        if i == 2 {
                            post_callback(&url, json!({"status": "success"})).await;
                        }
                        if script.call_back_odd || i % 2 == 0 {
                            let id = id.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                post_callback(&url, callback(&id)).await;
                            });
                        }
                    }
                    Json(json!({"status": "accepted", "request_id": id,
                            "message": "Request accepted and queued for processing"}))
                },
            ),
        )
        .with_state(Script {
            next: Arc::default(),
            call_back_odd,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_matched_by_id_with_duplicates_unknown_ids_and_early_arrivals() {
    let base = serve(scripted_async_service(true)).await;
    let report = loadgen(&["--url", &base, "--mode", "async", "-n", "50", "-c", "5"]).await;

    let phase = only(&report, Mode::Async);
    assert_eq!((phase.total, phase.success, phase.failed), (50, 50, 0));
    let callbacks = phase.callbacks.as_ref().expect("callback report");
    assert_eq!(callbacks.expected, 50);
    assert_eq!(callbacks.received, 50);
    assert_eq!(callbacks.missing, 0);
    assert_eq!(
        callbacks.duplicates, 10,
        "i = 0, 5, …, 45 were called back twice"
    );
    assert_eq!(callbacks.unknown_ids, 5, "ghost-1, ghost-11, …, ghost-41");
    assert_eq!(callbacks.malformed, 1);
    assert_eq!(callbacks.wait, Wait::AllArrived);
    let ttc = callbacks
        .time_to_callback_ms
        .as_ref()
        .expect("time to callback");
    assert_eq!(
        ttc.count, 50,
        "one time-to-callback per request, early arrivals included"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_callbacks_are_waited_for_up_to_the_callback_timeout() {
    let base = serve(scripted_async_service(false)).await;
    let started = Instant::now();
    let report = loadgen(&[
        "--url",
        &base,
        "--mode",
        "async",
        "-n",
        "20",
        "-c",
        "4",
        "--callback-timeout",
        "400ms",
    ])
    .await;

    let callbacks = only(&report, Mode::Async)
        .callbacks
        .clone()
        .expect("callbacks");
    assert_eq!(callbacks.expected, 20);
    // Even requests are called back; odd ones are not, except those called back early
    // (i = 5, 15, twice each).
    assert_eq!(callbacks.received, 12);
    assert_eq!(callbacks.missing, 8);
    assert_eq!(callbacks.wait, Wait::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(400));
    let text = report.render_text();
    assert!(text.contains("12 received of 20 expected ("), "{text}");
    assert!(text.contains(" delivered/s in "), "{text}");
    assert!(text.contains("), 8 missing"), "{text}");
    assert!(text.contains("--callback-timeout"), "{text}");
}

/// A scripted async service that accepts request i as `req-i` and POSTs its one callback
/// `delay` after accepting it.
fn delayed_callback_service(delay: Duration) -> Router {
    Router::new()
        .route(
            "/async",
            post(
                move |State(next): State<Arc<AtomicU64>>, Json(body): Json<Value>| async move {
                    let url = body["callback_url"].as_str().unwrap().to_string();
                    let id = format!("req-{}", next.fetch_add(1, Ordering::SeqCst));
                    tokio::spawn({
                        let id = id.clone();
                        async move {
                            tokio::time::sleep(delay).await;
                            let callback = json!({"request_id": id, "status": "success",
                                "result": {}, "error": null, "timestamp": "t"});
                            let sent = client().post(&url).json(&callback).send().await;
                            assert!(sent.unwrap().status().is_success());
                        }
                    });
                    Json(json!({"status": "accepted", "request_id": id,
                            "message": "Request accepted and queued for processing"}))
                },
            ),
        )
        .with_state(Arc::new(AtomicU64::new(0)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_rps_is_callbacks_received_over_the_span_to_the_last_one() {
    let base = serve(delayed_callback_service(Duration::from_millis(100))).await;
    let report = loadgen(&["--url", &base, "--mode", "async", "-n", "20", "-c", "4"]).await;

    let phase = only(&report, Mode::Async);
    assert_eq!((phase.total, phase.success), (20, 20));
    let callbacks = phase.callbacks.as_ref().expect("callbacks");
    assert_eq!((callbacks.received, callbacks.missing), (20, 0));
    let span = callbacks.delivery_span_s.expect("a span");
    let rps = callbacks.delivered_rps.expect("a rate");
    let summary = format!("{phase:?}");
    // Every callback leaves 100 ms after its accept, so the last one arrives at least
    // 100 ms after the phase started, and after the last 200 was read.
    assert!(span >= 0.100, "{summary}");
    assert!(span >= phase.elapsed_s, "{summary}");
    // ...and no sooner than the slowest time-to-callback (within the histogram's 0.1%).
    let ttc = callbacks.time_to_callback_ms.as_ref().expect("ttc");
    assert!(span * 1000.0 >= ttc.max * 0.999, "{summary}");
    // The rate is the report's own received / span.
    let recomputed = callbacks.received as f64 / span;
    assert!((rps - recomputed).abs() <= 1e-9 * recomputed, "{summary}");
    // Loose: 20 callbacks over at least 100 ms, and over less than 2 s on any machine.
    assert!((10.0..=200.0).contains(&rps), "{summary}");
    let text = report.render_text();
    assert!(
        text.contains(&format!(
            "20 received of 20 expected ({rps:.1} delivered/s in "
        )),
        "{text}"
    );
}

/// A sync server that answers `status` after 2 ms and counts the requests it got.
async fn counting_server(status: StatusCode) -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let router = Router::new()
        .route(
            "/sync",
            post(move |State(count): State<Arc<AtomicU64>>| async move {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                (status, ok_sync())
            }),
        )
        .with_state(Arc::clone(&count));
    (serve(router).await, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_urls_share_the_load_round_robin() {
    // The same speed, told apart by their answers: A's are successes, B's are 503s.
    let (a, a_count) = counting_server(StatusCode::OK).await;
    let (b, b_count) = counting_server(StatusCode::SERVICE_UNAVAILABLE).await;
    let report = loadgen(&[
        "--url", &a, "--url", &b, "--mode", "sync", "-n", "200", "-c", "4",
    ])
    .await;

    assert_eq!(report.urls, [a.clone(), b.clone()]);
    let sync = only(&report, Mode::Sync);
    let (a_count, b_count) = (
        a_count.load(Ordering::SeqCst),
        b_count.load(Ordering::SeqCst),
    );
    assert_eq!(a_count + b_count, 200, "every request went to one of them");
    assert_eq!((sync.total, sync.success), (200, a_count), "{sync:?}");
    assert_eq!(sync.failures.http.get("503"), Some(&b_count), "{sync:?}");
    // Two workers each, at the same speed: about half each.
    assert!(a_count >= 50 && b_count >= 50, "A {a_count}, B {b_count}");
    let text = report.render_text();
    assert!(
        text.starts_with(&format!(
            "syncasync loadgen: 2 URLs, workers assigned round-robin\n  {a}\n  {b}\n"
        )),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_second_url_fails_the_run_in_one_line_naming_it() {
    let (a, a_count) = counting_server(StatusCode::OK).await;
    let port = unused_port().await.port();
    let b = format!("http://127.0.0.1:{port}");
    let err = run(
        args(&["--url", &a, "--url", &b, "--mode", "sync"]),
        CancellationToken::new(),
    )
    .await
    .expect_err("nothing listens at the second URL");
    assert_eq!(
        err.to_string(),
        format!("cannot reach {b}: connection refused")
    );
    assert_eq!(a_count.load(Ordering::SeqCst), 0, "no load was sent");

    let err = run(
        args(&["--url", &a, "--url", &a, "--mode", "sync", "-c", "1"]),
        CancellationToken::new(),
    )
    .await
    .expect_err("one worker cannot serve two URLs");
    assert_eq!(
        err.to_string(),
        "-c 1 is fewer than the 2 --url values: each URL needs a worker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_counted_by_status() {
    let next = Arc::new(AtomicU64::new(0));
    let router = Router::new()
        .route(
            "/sync",
            post(|State(next): State<Arc<AtomicU64>>| async move {
                if next.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
                    (StatusCode::INTERNAL_SERVER_ERROR, ok_sync())
                } else {
                    (StatusCode::OK, ok_sync())
                }
            }),
        )
        .with_state(next);
    let base = serve(router).await;
    let report = loadgen(&["--url", &base, "--mode", "sync", "-n", "30", "-c", "3"]).await;

    let sync = only(&report, Mode::Sync);
    assert_eq!((sync.total, sync.success, sync.failed), (30, 20, 10));
    assert_eq!(sync.failures.http.get("500"), Some(&10));
    assert_eq!(
        (
            sync.failures.timeout,
            sync.failures.connection,
            sync.failures.other
        ),
        (0, 0, 0)
    );
    assert_eq!(sync.top_errors.len(), 1);
    assert_eq!(sync.top_errors[0].message, "HTTP 500 Internal Server Error");
    assert_eq!(sync.top_errors[0].count, 10);
    assert_eq!(
        sync.latency_ms.as_ref().expect("latencies").count,
        30,
        "an error answer is still an answer with a latency"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slower_than_the_timeout_is_a_timeout() {
    let router = Router::new().route(
        "/sync",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            ok_sync()
        }),
    );
    let base = serve(router).await;
    let started = Instant::now();
    let report = loadgen(&[
        "--url",
        &base,
        "--mode",
        "sync",
        "-n",
        "4",
        "-c",
        "4",
        "--timeout",
        "100ms",
    ])
    .await;

    assert!(
        started.elapsed() < Duration::from_millis(900),
        "did not wait for the server"
    );
    let sync = only(&report, Mode::Sync);
    assert_eq!((sync.total, sync.success, sync.failed), (4, 0, 4));
    assert_eq!(sync.failures.timeout, 4);
    assert!(sync.failures.http.is_empty());
    assert!(sync.latency_ms.is_none(), "no answer, no latency");
    assert_eq!(sync.top_errors[0].message, "timed out");
}

/// A raw HTTP server that answers `GET /healthz` and closes the connection on anything
/// else without answering.
fn closing_server() -> String {
    let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    // Skip the headers; GET /healthz has no body.
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                        line.clear();
                    }
                    if !request_line.starts_with("GET /healthz ") {
                        return; // closes the connection, answering nothing
                    }
                    let _ = reader
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                }
            });
        }
    });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_without_an_answer_is_a_connection_error() {
    let base = closing_server();
    let report = loadgen(&["--url", &base, "--mode", "sync", "-n", "6", "-c", "2"]).await;

    let sync = only(&report, Mode::Sync);
    assert_eq!((sync.total, sync.success, sync.failed), (6, 0, 6));
    assert_eq!(sync.failures.connection, 6, "{sync:?}");
    assert!(sync.latency_ms.is_none());
    assert!(
        sync.top_errors[0].message.contains("closed"),
        "{:?}",
        sync.top_errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_closes_every_connection_after_answering_gets_every_request() {
    let router = Router::new().route(
        "/sync",
        post(|| async { ([(axum::http::header::CONNECTION, "close")], ok_sync()) }),
    );
    let base = serve(router).await;
    let report = loadgen(&["--url", &base, "--mode", "sync", "-n", "60", "-c", "3"]).await;

    let sync = only(&report, Mode::Sync);
    assert_eq!(
        (sync.total, sync.success, sync.failed),
        (60, 60, 0),
        "{sync:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_url_fails_the_run_in_one_line() {
    let port = unused_port().await.port();
    let url = format!("http://127.0.0.1:{port}");
    let err = run(
        args(&["--url", &url, "--mode", "sync"]),
        CancellationToken::new(),
    )
    .await
    .expect_err("nothing listens there");
    assert_eq!(
        err.to_string(),
        format!("cannot reach {url}: connection refused")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_port_in_use_fails_the_run_in_one_line() {
    let base = serve(Router::new()).await;
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = run(
        args(&["--url", &base, "--mode", "async", "--callback-port", &port]),
        CancellationToken::new(),
    )
    .await
    .expect_err("the port is taken");
    assert_eq!(
        err.to_string(),
        format!("cannot listen for callbacks on 127.0.0.1:{port}: address in use")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_the_run_with_what_was_measured() {
    let router = Router::new()
        .route(
            "/sync",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                ok_sync()
            }),
        )
        .route(
            "/async",
            post(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        );
    let base = serve(router).await;
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(550)).await;
            stop.cancel();
        }
    });
    let started = Instant::now();
    let report = run(
        args(&["--url", &base, "--mode", "both", "-n", "1000", "-c", "5"]),
        stop,
    )
    .await
    .expect("the run starts");

    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stopped promptly"
    );
    assert!(report.interrupted);
    assert_eq!(report.modes.len(), 1, "the async phase never started");
    let sync = only(&report, Mode::Sync);
    assert!(sync.interrupted);
    // About 5 workers × 5 rounds of 100 ms; requests in flight at the stop are not counted.
    assert!((10..=40).contains(&sync.total), "{}", sync.total);
    assert_eq!(sync.success, sync.total);
    assert!(report.render_text().contains("INTERRUPTED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_modes_against_the_real_service() {
    let app = TestServer::builder().start().await;
    let report = loadgen(&[
        "--url",
        &app.address,
        "--mode",
        "both",
        "-n",
        "50",
        "-c",
        "5",
        "--iterations",
        "10",
    ])
    .await;

    assert!(!report.interrupted);
    assert_eq!(report.modes.len(), 2);
    assert_eq!(report.modes[0].mode, Mode::Sync);
    assert_eq!(report.modes[1].mode, Mode::Async);
    let sync = only(&report, Mode::Sync);
    assert_eq!(
        (sync.total, sync.success, sync.failed),
        (50, 50, 0),
        "{sync:?}"
    );
    assert!(sync.callbacks.is_none());
    let async_ = only(&report, Mode::Async);
    assert_eq!(
        (async_.total, async_.success, async_.failed),
        (50, 50, 0),
        "{async_:?}"
    );
    let callbacks = async_.callbacks.as_ref().expect("callbacks");
    assert_eq!(
        (callbacks.expected, callbacks.received),
        (50, 50),
        "{callbacks:?}"
    );
    assert_eq!(
        (
            callbacks.duplicates,
            callbacks.unknown_ids,
            callbacks.malformed
        ),
        (0, 0, 0)
    );
    assert_eq!(callbacks.wait, Wait::AllArrived);
    assert_eq!(
        callbacks.time_to_callback_ms.as_ref().expect("ttc").count,
        50
    );
    // The service records each success just after the receiver's 200: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = app
            .get_json("/requests?mode=async&status=callback_success&limit=1")
            .await;
        if records["total"] == 50 {
            break;
        }
        assert!(Instant::now() < deadline, "the service agrees: {records}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- the command line

fn loadgen_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_syncasync"));
    command
        .arg("loadgen")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_prints_the_report_writes_json_and_draws_nothing_when_piped() {
    let base = serve(Router::new().route("/sync", post(|| async { ok_sync() }))).await;
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("report.json");
    let output = tokio::task::spawn_blocking({
        let mut command = loadgen_command();
        command.args([
            "--url", &base, "--mode", "sync", "-n", "20", "-c", "2", "--json",
        ]);
        command.arg(&json_path);
        move || command.output().unwrap()
    })
    .await
    .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        stderr, "",
        "no progress bar and no noise when stderr is piped"
    );
    assert!(
        stdout.contains("20 total, 20 success, 0 failed"),
        "{stdout}"
    );
    let json: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(json["modes"][0]["mode"], "sync");
    assert_eq!(json["modes"][0]["success"], 20);
    assert_eq!(json["modes"][0]["latency_ms"]["count"], 20);
    assert_eq!(json["settings"]["requests"], 20);
}

/// Against the real service with SSRF protection on (its default), every async request is
/// refused for its loopback callback: the report shows what the service answered and how to
/// fix it, and the command exits non-zero instead of printing a measurement of nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_where_everything_fails_says_why_and_exits_non_zero() {
    let app = TestServer::builder()
        .setting("callback-block-private-ips", "true")
        .start()
        .await;
    let output = tokio::task::spawn_blocking({
        let mut command = loadgen_command();
        command.args([
            "--url",
            &app.address,
            "--mode",
            "async",
            "-n",
            "5",
            "-c",
            "1",
        ]);
        command.args(["--callback-port", "0"]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("answers (a sample)"), "{stdout}");
    assert!(
        stdout.contains("HTTP 422: {"),
        "the service's own words: {stdout}"
    );
    assert!(stdout.contains("every request failed"), "{stdout}");
    assert!(
        stdout.contains("APP_CALLBACK_BLOCK_PRIVATE_IPS=false"),
        "{stdout}"
    );
    assert!(stderr.contains("every async request failed"), "{stderr}");
}

/// `--max-failure-rate` fails a run above it (a CI threshold); an unwritable `--json` path
/// is refused before any request is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_threshold_and_an_unwritable_report_path_fail_the_command() {
    let next = Arc::new(AtomicU64::new(0));
    // Every other answer a 500.
    let router = Router::new()
        .route(
            "/sync",
            post(|State(next): State<Arc<AtomicU64>>| async move {
                if next.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
                    (StatusCode::INTERNAL_SERVER_ERROR, "broken").into_response()
                } else {
                    ok_sync().into_response()
                }
            }),
        )
        .with_state(Arc::clone(&next));
    let base = serve(router).await;
    let run = |extra: Vec<String>| {
        let mut command = loadgen_command();
        command.args(["--url", &base, "--mode", "sync", "-n", "20", "-c", "1"]);
        command.args(extra);
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let lenient = run(vec!["--max-failure-rate".into(), "0.6".into()])
        .await
        .unwrap();
    assert!(
        lenient.status.success(),
        "{}",
        String::from_utf8_lossy(&lenient.stderr)
    );
    let strict = run(vec!["--max-failure-rate".into(), "0.1".into()])
        .await
        .unwrap();
    assert_eq!(strict.status.code(), Some(1));
    let said = String::from_utf8_lossy(&strict.stderr);
    assert!(
        said.contains("50.0% of sync requests failed, more than --max-failure-rate 0.1"),
        "{said}"
    );

    let before = next.load(Ordering::Relaxed);
    let nowhere = "/nonexistent-directory/report.json".to_string();
    let refused = run(vec!["--json".into(), nowhere]).await.unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("cannot write the JSON report to /nonexistent-directory/report.json"),
        "{said}"
    );
    assert_eq!(next.load(Ordering::Relaxed), before, "no request was sent");
}

#[tokio::test]
async fn the_command_fails_in_one_line_on_an_unreachable_url_or_a_bad_flag() {
    let port = unused_port().await.port();
    let url = format!("http://127.0.0.1:{port}");
    let output = loadgen_command()
        .args(["--url", &url, "--mode", "sync"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!("error: cannot reach {url}: connection refused\n")
    );
    assert!(output.stdout.is_empty());

    for bad in [
        &["--mode", "sideways"][..],
        &["-c", "0"],
        &["--duration", "soon"],
        &["--rate", "-5"],
        &["-n", "5", "--duration", "1s"],
    ] {
        let output = loadgen_command().args(bad).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{bad:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_command_with_a_report() {
    let router = Router::new().route(
        "/sync",
        post(|| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ok_sync()
        }),
    );
    let base = serve(router).await;
    // With the logging a user gets (no RUST_LOG), so that a stray log line would show.
    let child = loadgen_command()
        .env_remove("RUST_LOG")
        .args([
            "--url",
            &base,
            "--mode",
            "both",
            "--duration",
            "60s",
            "-c",
            "2",
        ])
        .args(["--callback-port", "0"])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("INTERRUPTED"), "{stdout}");
    // The report says it was interrupted; nothing is written beside it.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.trim().is_empty(), "stray output on Ctrl-C: {stderr}");
    assert!(stdout.contains("== sync"), "{stdout}");
    assert!(!stdout.contains("== async"), "{stdout}");
}

#[tokio::test]
async fn batches_against_the_real_service_are_matched_request_by_request() {
    let app = TestServer::builder().start().await;
    // 95 is not a multiple of the batch: the last batch is short.
    let report = loadgen(&[
        "--url",
        &app.address,
        "--mode",
        "async",
        "--batch",
        "10",
        "-n",
        "95",
        "-c",
        "3",
        "--iterations",
        "10",
    ])
    .await;
    let async_ = only(&report, Mode::Async);
    assert_eq!(
        (async_.total, async_.success, async_.failed),
        (95, 95, 0),
        "{async_:?}"
    );
    let callbacks = async_.callbacks.as_ref().expect("callbacks");
    assert_eq!(
        (callbacks.expected, callbacks.received),
        (95, 95),
        "{callbacks:?}"
    );
    assert_eq!((callbacks.duplicates, callbacks.unknown_ids), (0, 0));
    assert_eq!(report.settings.batch, 10);
    assert!(report.render_text().contains("10 per POST /async/batch"));
    assert_eq!(app.get_json("/requests?mode=async").await["total"], 95);
}

#[tokio::test]
async fn a_batch_with_sync_is_refused_before_any_request() {
    for mode in ["sync", "both"] {
        let err = run(
            args(&[
                "--url",
                "http://127.0.0.1:9",
                "--mode",
                mode,
                "--batch",
                "5",
            ]),
            CancellationToken::new(),
        )
        .await
        .expect_err("refused");
        assert!(
            err.to_string().contains("--batch needs --mode async"),
            "{err}"
        );
    }
}
