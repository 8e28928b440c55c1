//! Hostile clients: slow ones (headers or body trickled, connections left idle or piled up),
//! ones that send a whole oversized body before reading, ones that make up methods and
//! paths to grow metrics and logs, ones that send bytes no URL allows, and ones without the
//! API token.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    Outcome, RawResponse, assert_still_serving, connect, exchange, read_response, wait_closed,
};
use crate::helpers::{TestServer, client, read};

const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";

/// Long enough for any answer the service gives at once, on a busy machine.
const ANSWER: Duration = Duration::from_secs(10);

/// The API's error shape, or the framework's (`{"detail": "Not Found"}`) that the original
/// answered an unknown path or method with.
fn assert_error_shape(response: &RawResponse) {
    let body = response.json();
    let framework = body.as_object().is_some_and(|o| o.len() == 1) && body["detail"].is_string();
    assert!(
        framework || (body["status"] == "error" && body["error"].is_string()),
        "{body}"
    );
}

// --- Slow clients ---------------------------------------------------------------------

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_at_the_header_timeout() {
    let app = TestServer::builder()
        .setting("http-header-timeout-seconds", "1")
        .start()
        .await;
    let stream = connect(&app).await;
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    // Slowloris: a request line, then one more header line every 200 ms, never the blank line
    // that ends the head. Each line arrives well within any per-read timeout.
    let trickle = tokio::spawn(async move {
        writer.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
        for n in 0.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer
                .write_all(format!("X-Slow-{n}: y\r\n").as_bytes())
                .await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let closed_after = wait_closed(&mut reader, Duration::from_secs(8)).await;
    trickle.abort();
    assert!(
        closed_after >= Duration::from_millis(800),
        "closed too early, after {closed_after:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the header timeout is 1 s, the connection lived {:?}",
        started.elapsed()
    );

    // A connection that sends nothing at all is closed the same way.
    let mut silent = connect(&app).await;
    let closed_after = wait_closed(&mut silent, Duration::from_secs(8)).await;
    assert!(closed_after < Duration::from_secs(5), "{closed_after:?}");
    assert_still_serving(&app).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let app = TestServer::builder()
        .setting("http-header-timeout-seconds", "1")
        .start()
        .await;
    let mut stream = connect(&app).await;
    // Keep-alive works: two requests on one connection...
    for _ in 0..2 {
        stream.write_all(GET_HEALTHZ).await.unwrap();
        let response = read_response(&mut stream, ANSWER).await.response();
        assert_eq!(response.status, 200);
        assert_ne!(response.header("connection"), Some("close"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // ...but a connection left idle is closed once the header timeout passes.
    let closed_after = wait_closed(&mut stream, Duration::from_secs(8)).await;
    assert!(closed_after < Duration::from_secs(5), "{closed_after:?}");
    assert_still_serving(&app).await;
}

#[tokio::test]
async fn at_the_connection_cap_a_new_connection_waits_until_one_closes() {
    // No other client may touch the service before the raw connections are open: the test
    // client's pooled connection would hold one of the two permits.
    let app = TestServer::builder()
        .setting("http-max-connections", "2")
        .start()
        .await;
    let mut first = connect(&app).await;
    let mut second = connect(&app).await;
    for stream in [&mut first, &mut second] {
        stream.write_all(GET_HEALTHZ).await.unwrap();
        assert_eq!(read_response(stream, ANSWER).await.response().status, 200);
    }

    // The third connection completes its handshake in the kernel's backlog, but nobody
    // reads its request.
    let mut third = connect(&app).await;
    third.write_all(GET_HEALTHZ).await.unwrap();
    match read_response(&mut third, Duration::from_secs(1)).await {
        Outcome::TimedOut { bytes } if bytes.is_empty() => {}
        other => panic!("a connection over the cap was served: {other:?}"),
    }

    // A client hanging up gives its place back, and the waiting connection is served.
    drop(first);
    let response = read_response(&mut third, ANSWER).await.response();
    assert_eq!(response.status, 200);
    // The connections at the cap still work, and once they close the service serves others.
    second.write_all(GET_HEALTHZ).await.unwrap();
    assert_eq!(
        read_response(&mut second, ANSWER).await.response().status,
        200
    );
    drop(second);
    drop(third);
    for _ in 0..5 {
        assert_still_serving(&app).await;
    }
}

#[tokio::test]
async fn a_body_trickled_slower_than_the_body_timeout_gets_408() {
    let app = TestServer::builder()
        .setting("http-body-timeout-seconds", "1")
        .start()
        .await;
    let stream = connect(&app).await;
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    // The head at once, then the announced 1000-byte body one byte every 100 ms (it would
    // take 100 s).
    let trickle = tokio::spawn(async move {
        writer
            .write_all(
                b"POST /sync HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
                  Content-Length: 1000\r\n\r\n{",
            )
            .await?;
        for _ in 0..999 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            writer.write_all(b" ").await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let outcome = read_response(&mut reader, Duration::from_secs(8)).await;
    trickle.abort();
    let response = outcome.response();
    assert_eq!(response.status, 408);
    assert_eq!(
        response.json(),
        json!({"status": "error", "error": "Request body not received in time"})
    );
    assert_eq!(response.header("connection"), Some("close"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    wait_closed(&mut reader, ANSWER).await;
    assert_still_serving(&app).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_its_responses_is_cut_off_at_the_send_timeout() {
    let app = TestServer::builder()
        .setting("http-send-timeout-seconds", "1")
        .start()
        .await;
    let asset = app
        .get("/docs/swagger-ui-bundle.js")
        .await
        .bytes()
        .await
        .unwrap();
    // A small receive window, and requests for far more than the socket buffers hold
    // (about 1.5 MB each, 16 of them, pipelined), never read while the server writes.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(super::socket_address(&app)).await.unwrap();
    let requests = 16;
    let request = b"GET /docs/swagger-ui-bundle.js HTTP/1.1\r\nHost: test\r\n\r\n";
    stream.write_all(&request.repeat(requests)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;

    // The server gave up on the stalled connection: what it had written is there, then the
    // end of the connection, long before all the responses.
    let mut received = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    let reading = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Err(_) => panic!("the stalled connection is still open, {received} bytes read"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received += n,
        }
    }
    assert!(
        received < asset.len() * requests,
        "all {requests} responses were sent ({received} bytes): the connection was never cut"
    );
    assert!(
        reading.elapsed() < Duration::from_secs(5),
        "{:?}",
        reading.elapsed()
    );
    assert_still_serving(&app).await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once() {
    let app = TestServer::builder()
        .setting("http-header-timeout-seconds", "30")
        .start()
        .await;
    let mut kept_alive = connect(&app).await;
    kept_alive.write_all(GET_HEALTHZ).await.unwrap();
    assert_eq!(
        read_response(&mut kept_alive, ANSWER)
            .await
            .response()
            .status,
        200
    );
    let mut silent = connect(&app).await;
    // Let the service take the silent connection in before stopping.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stopping = Instant::now();
    let _dir = app.stop().await;
    // Neither the grace period (5 s in tests) nor the header timeout is waited for.
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "{:?}",
        stopping.elapsed()
    );
    wait_closed(&mut kept_alive, Duration::from_secs(1)).await;
    wait_closed(&mut silent, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_client_stuck_mid_request_does_not_hold_the_shutdown_past_the_grace_period() {
    let app = TestServer::builder()
        .setting("http-header-timeout-seconds", "60")
        .setting("http-body-timeout-seconds", "60")
        .setting("shutdown-grace-seconds", "1")
        .start()
        .await;
    let mut mid_head = connect(&app).await;
    mid_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    let mut mid_body = connect(&app).await;
    mid_body
        .write_all(b"POST /sync HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stopping = Instant::now();
    let _dir = app.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "{:?}",
        stopping.elapsed()
    );
    wait_closed(&mut mid_head, Duration::from_secs(1)).await;
    wait_closed(&mut mid_body, Duration::from_secs(1)).await;
}

// --- Oversized bodies -----------------------------------------------------------------

/// A JSON body of `size` bytes.
fn big_body(size: usize) -> Vec<u8> {
    let mut body = b"{\"data\":\"".to_vec();
    body.resize(size - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

/// `body` in chunked transfer coding, 64 KiB a chunk.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(64 * 1024) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn assert_readable_413(response: &RawResponse) {
    assert_eq!(response.status, 413);
    assert_eq!(
        response.json(),
        json!({"status": "error", "error": "Request body too large (limit 262144 bytes)"})
    );
    assert_eq!(response.header("connection"), Some("close"));
}

#[tokio::test]
async fn an_oversized_body_sent_whole_before_reading_gets_a_readable_413() {
    // As Python's urllib and requests do: write the whole request, only then read.
    let app = TestServer::builder().start().await;
    let body = big_body(2 * 1024 * 1024);
    let length_head = format!(
        "POST /sync HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let chunked_head = "POST /async HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
                        Transfer-Encoding: chunked\r\n\r\n"
        .to_string();
    for (framing, head, payload) in [
        ("content-length", length_head, body.clone()),
        ("chunked", chunked_head, chunked(&body)),
    ] {
        let mut stream = connect(&app).await;
        let mut request = head.into_bytes();
        request.extend_from_slice(&payload);
        tokio::time::timeout(ANSWER, stream.write_all(&request))
            .await
            .unwrap_or_else(|_| panic!("{framing}: the service stopped reading the body"))
            .unwrap_or_else(|err| panic!("{framing}: writing the body failed: {err}"));
        let outcome = read_response(&mut stream, ANSWER).await;
        let Outcome::Response(response) = outcome else {
            panic!("{framing}: no readable answer: {outcome:?}");
        };
        assert_readable_413(&response);
    }
    assert_still_serving(&app).await;
}

#[tokio::test]
async fn a_body_announced_beyond_the_drain_bound_gets_its_413_at_once() {
    let app = TestServer::builder().start().await;
    // 100 MiB announced, 64 KiB sent: reading the rest is not worth it, and not needed for
    // a client that reads while it writes.
    let mut stream = connect(&app).await;
    let mut request = b"POST /sync HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
                        Content-Length: 104857600\r\n\r\n"
        .to_vec();
    request.extend_from_slice(&big_body(64 * 1024));
    stream.write_all(&request).await.unwrap();
    let response = read_response(&mut stream, ANSWER).await.response();
    assert_readable_413(&response);

    // A client that asks before sending (`Expect: 100-continue`) is answered 413 without
    // being invited to send.
    let mut stream = connect(&app).await;
    stream
        .write_all(
            b"POST /sync HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 2097152\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let response = read_response(&mut stream, ANSWER).await.response();
    assert_readable_413(&response);
    assert_still_serving(&app).await;
}

// --- Metric labels and log fields -------------------------------------------------------

#[tokio::test]
async fn made_up_methods_and_long_paths_keep_metrics_small() {
    let app = TestServer::builder().start().await;
    for n in 0..200 {
        let method = Method::from_bytes(format!("{}{n}", "M".repeat(20_000)).as_bytes()).unwrap();
        let response = app
            .client
            .request(method, app.url("/sync"))
            .send()
            .await
            .unwrap();
        let (status, body) = read(response).await;
        assert_eq!(status, 405, "{body}");
    }
    for n in 0..200 {
        let path = format!(
            "/requests/{}{n}/%2e%2e/{}",
            "%F0%9F".repeat(1000),
            "~!$&'()*+,;=:@".repeat(100)
        );
        let (status, body) = read(app.get(&path).await).await;
        assert!(status == 404 || status == 405, "{status} {body}");
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.len() < 64 * 1024,
        "GET /metrics grew to {} bytes",
        metrics.len()
    );
    assert!(
        metrics.contains(
            r#"syncasync_http_requests_total{method="other",endpoint="/sync",status="405"} 200"#
        ),
        "{metrics}"
    );
    assert_still_serving(&app).await;
}

#[tokio::test]
async fn logged_methods_and_paths_are_capped() {
    let mut server = TestServer::builder()
        .child()
        .setting("log-format", "json")
        .start()
        .await;
    let client = client();
    let method = Method::from_bytes("M".repeat(20_000).as_bytes()).unwrap();
    let response = client
        .request(method, format!("{}/sync", server.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let path = format!("/requests/{}", "p".repeat(20_000));
    let response = client
        .get(format!("{}{path}", server.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.sigterm();
    server.wait_exit(Duration::from_secs(10)).await;

    let log = server.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| {
            assert!(line.len() < 2048, "a log line of {} bytes", line.len());
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line}"))
        })
        .collect();
    let access = |status: u64| {
        lines
            .iter()
            .find(|l| l["message"] == "request" && l["status"] == status)
            .unwrap_or_else(|| panic!("no access line with status {status}: {log}"))
    };
    let method = access(405)["method"].as_str().unwrap();
    assert!(method.starts_with("MMMM"), "{method}");
    assert!(method.ends_with("…[cut, 20000 bytes]"), "{method}");
    let path = access(404)["path"].as_str().unwrap();
    assert!(path.starts_with("/requests/pppp"), "{path}");
    assert!(path.ends_with("…[cut, 20010 bytes]"), "{path}");
}

// --- Paths and junk -------------------------------------------------------------------

#[tokio::test]
async fn an_id_that_is_not_utf8_gets_the_json_404_on_every_route_with_an_id() {
    let app = TestServer::builder()
        .setting("admin-token", "t")
        .start()
        .await;
    let (status, unknown) = read(app.get("/requests/no-such-id").await).await;
    assert_eq!(status, 404);
    for id in ["%FF", "%C3%28", "abc%FFdef", "%ED%A0%80", "%F0%9F"] {
        let (status, body) = read(app.get(&format!("/requests/{id}")).await).await;
        assert_eq!((status, &body), (404, &unknown), "GET /requests/{id}");

        let redeliver = app.url(&format!("/requests/{id}/redeliver"));
        let response = app
            .client
            .post(&redeliver)
            .bearer_auth("t")
            .send()
            .await
            .unwrap();
        let (status, body) = read(response).await;
        assert_eq!((status, &body), (404, &unknown), "POST {redeliver}");
        // The token is checked before anything else about the request.
        let (status, body) = read(app.client.post(&redeliver).send().await.unwrap()).await;
        assert_eq!(status, 401, "{body}");

        // The docs page's assets are found by path too; its own errors get the shape.
        let (status, body) = read(app.get(&format!("/docs/{id}")).await).await;
        assert!((400..500).contains(&status), "/docs/{id}: {status}");
        assert_eq!(body["status"], "error", "/docs/{id}: {body}");
    }
    let (status, body) = read(app.get("/docs/no-such-asset.js").await).await;
    assert_eq!((status, body), (404, json!({"detail": "Not Found"})));
}

#[tokio::test]
async fn junk_requests_get_a_4xx_never_a_500_or_a_hang() {
    let app = TestServer::builder().start().await;
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\nX-Huge: {}\r\n\r\n",
        "h".repeat(300 * 1024)
    );
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nHost: test\r\n{}\r\n",
        (0..200)
            .map(|n| format!("X-{n}: v\r\n"))
            .collect::<String>()
    );
    let long_method = format!(
        "{} /sync HTTP/1.1\r\nHost: test\r\n\r\n",
        "M".repeat(20_000)
    );
    // (what, request, the status expected; 0: any 4xx)
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a made-up method", b"FROB /sync HTTP/1.1\r\nHost: test\r\n\r\n".to_vec(), 405),
        ("a 20 kB method", long_method.into_bytes(), 405),
        ("a control byte in the method", b"G\x01T /healthz HTTP/1.1\r\nHost: test\r\n\r\n".to_vec(), 400),
        ("raw non-UTF-8 bytes in the path", b"GET /requests/\xff\xfe HTTP/1.1\r\nHost: test\r\n\r\n".to_vec(), 0),
        ("raw non-UTF-8 bytes in the query", b"GET /requests?mode=\xff HTTP/1.1\r\nHost: test\r\n\r\n".to_vec(), 0),
        ("percent-encoded non-UTF-8 in the query", b"GET /requests?mode=%FF&status=%C3%28 HTTP/1.1\r\nHost: test\r\n\r\n".to_vec(), 422),
        ("a NUL in the path", b"GET /requests/a\x00b HTTP/1.1\r\nHost: test\r\n\r\n".to_vec(), 0),
        ("a 300 KiB header", huge_header.into_bytes(), 431),
        ("200 headers", many_headers.into_bytes(), 431),
        ("a header without a colon", b"GET /healthz HTTP/1.1\r\nHost: test\r\nnonsense\r\n\r\n".to_vec(), 400),
        ("a negative Content-Length", b"POST /sync HTTP/1.1\r\nHost: test\r\nContent-Length: -1\r\n\r\n".to_vec(), 400),
        ("two different Content-Lengths", b"POST /sync HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(), 400),
        ("a bad chunk size", b"POST /sync HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec(), 400),
        ("an unknown HTTP version", b"GET /healthz HTTP/7.1\r\nHost: test\r\n\r\n".to_vec(), 400),
        ("a TLS handshake", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(), 400),
    ];
    for (what, request, expected) in cases {
        let outcome = exchange(&app, &request, ANSWER).await;
        let Outcome::Response(response) = outcome else {
            panic!("{what}: no answer: {outcome:?}");
        };
        if expected == 0 {
            assert!(
                (400..500).contains(&response.status),
                "{what}: {response:?}"
            );
        } else {
            assert_eq!(response.status, expected, "{what}: {response:?}");
        }
        // What our code answers is in the API's error shape; hyper answers what it cannot
        // parse with an empty body.
        if response.header("content-type") == Some("application/json") {
            assert_error_shape(&response);
        } else {
            assert!(response.body.is_empty(), "{what}: {response:?}");
        }
    }

    // An HTTP/2 client cannot be answered in HTTP/1: the connection is closed, at once.
    let outcome = exchange(&app, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", ANSWER).await;
    assert!(
        matches!(outcome, Outcome::Closed { ref bytes } if bytes.is_empty()),
        "HTTP/2 preface: {outcome:?}"
    );
    assert_still_serving(&app).await;
}

// --- The API token ----------------------------------------------------------------------

const API_TOKEN: &str = "api-token-that-must-not-leak";

/// Sends `method path` with the given bearer token (none if `None`).
async fn call(
    app: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client.request(
        Method::from_bytes(method.as_bytes()).unwrap(),
        app.url(path),
    );
    if method == "POST" {
        request = request
            .json(&json!({"data": "x", "iterations": 1, "callback_url": "http://127.0.0.1:9/cb"}));
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

const PROTECTED: &[(&str, &str)] = &[
    ("POST", "/sync"),
    ("POST", "/async"),
    ("GET", "/requests"),
    ("GET", "/requests/no-such-id"),
    ("GET", "/metrics"),
    // The document and its page describe the API: who may not call it need not read them.
    ("GET", "/openapi.json"),
    ("GET", "/docs/"),
    ("GET", "/docs/swagger-ui-bundle.js"),
    // The dashboard's data.
    ("GET", "/ui/api/overview"),
];

#[tokio::test]
async fn with_an_api_token_every_endpoint_but_healthz_and_the_dashboard_shell_needs_it() {
    let app = TestServer::builder()
        .setting("api-token", API_TOKEN)
        .start()
        .await;
    for (method, path) in PROTECTED {
        for token in [None, Some("wrong"), Some(&API_TOKEN[1..]), Some("")] {
            let response = call(&app, method, path, token).await;
            assert_eq!(
                response
                    .headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer"),
                "{method} {path} with {token:?}"
            );
            let (status, body) = read(response).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
            assert_eq!(
                body,
                json!({"status": "error", "error": "Invalid or missing bearer token"})
            );
        }
        let response = call(&app, method, path, Some(API_TOKEN)).await;
        let expected = if path.ends_with("no-such-id") {
            404
        } else {
            200
        };
        assert_eq!(
            response.status(),
            expected,
            "{method} {path} with the token"
        );
    }
    // `/docs` only redirects to the page, which needs the token.
    let redirect = call(&app, "GET", "/docs", None).await;
    assert_eq!(redirect.status(), 401, "GET /docs");
    // What holds no data stays open: health for load balancers, the dashboard's shell and
    // assets (which ask for the token and send it with every call for data).
    let shell = app.get("/ui").await;
    assert_eq!(shell.status(), 200);
    let html = shell.text().await.unwrap();
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .filter(|part| part.starts_with("/ui/assets/"))
        .collect();
    assert_eq!(assets.len(), 2, "{html}");
    for open in ["/healthz", "/ui/requests", "/ui/destinations"]
        .into_iter()
        .chain(assets)
    {
        assert_eq!(app.get(open).await.status(), 200, "{open}");
    }
}

#[tokio::test]
async fn admin_endpoints_take_the_admin_token_and_only_it() {
    let app = TestServer::builder()
        .setting("api-token", API_TOKEN)
        .setting("admin-token", "admin-t")
        .start()
        .await;
    for path in ["/admin/cleanup", "/requests/no-such-id/redeliver"] {
        let (status, _) = read(call(&app, "PUT", path, Some("admin-t")).await).await;
        assert_eq!(status, 405, "{path}");
        let response = app
            .client
            .post(app.url(path))
            .bearer_auth("admin-t")
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            status == 200 || status == 404,
            "{path} with the admin token: {status}"
        );
        for token in [Some(API_TOKEN), None] {
            let mut request = app.client.post(app.url(path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let (status, _) = read(request.send().await.unwrap()).await;
            assert_eq!(status, 401, "{path} with {token:?}");
        }
    }
}

#[tokio::test]
async fn an_empty_api_token_setting_leaves_the_api_open() {
    let app = TestServer::builder().setting("api-token", "").start().await;
    for (method, path) in PROTECTED {
        let status = call(&app, method, path, None).await.status();
        assert_ne!(status, 401, "{method} {path}");
    }
}

#[tokio::test]
async fn the_document_shows_which_operations_need_the_api_token() {
    let with_token = TestServer::builder()
        .setting("api-token", API_TOKEN)
        .setting("admin-token", "t")
        .start()
        .await;
    let doc: Value = with_token
        .client
        .get(with_token.url("/openapi.json"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["api_token"],
        json!({"type": "http", "scheme": "bearer"})
    );
    for (method, path) in [
        ("post", "/sync"),
        ("post", "/async"),
        ("get", "/requests"),
        ("get", "/requests/{id}"),
        ("get", "/metrics"),
    ] {
        let operation = &doc["paths"][path][method];
        assert_eq!(
            operation["security"],
            json!([{"api_token": []}]),
            "{method} {path}"
        );
        assert!(
            operation["responses"].get("401").is_some(),
            "{method} {path}"
        );
    }
    assert!(doc["paths"]["/healthz"]["get"].get("security").is_none());
    for (method, path) in [
        ("post", "/admin/cleanup"),
        ("post", "/requests/{id}/redeliver"),
    ] {
        assert_eq!(
            doc["paths"][path][method]["security"],
            json!([{"admin_token": []}]),
            "{method} {path}"
        );
    }

    let open = TestServer::builder().start().await;
    let doc = open.get_json("/openapi.json").await;
    assert!(doc["paths"]["/sync"]["post"].get("security").is_none());
    assert!(
        doc["paths"]["/sync"]["post"]["responses"]
            .get("401")
            .is_none()
    );
}

#[tokio::test]
async fn the_api_token_never_appears_in_the_log() {
    let wrong = "a-wrong-guess-that-must-not-leak-either";
    let mut server = TestServer::builder()
        .child()
        .setting("log-format", "json")
        .setting("api-token", API_TOKEN)
        .env("RUST_LOG", "debug")
        .start()
        .await;
    let client = client();
    for token in [API_TOKEN, wrong] {
        for path in ["/requests", "/metrics", "/requests/x"] {
            client
                .get(format!("{}{path}", server.address))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
        }
        client
            .post(format!("{}/sync", server.address))
            .bearer_auth(token)
            .json(&json!({"data": "logged?", "iterations": 1}))
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.sigterm();
    server.wait_exit(Duration::from_secs(10)).await;
    let log = server.log();
    assert!(
        log.contains("\"status\":401"),
        "the wrong token was refused: {log}"
    );
    assert!(!log.contains(API_TOKEN), "the API token leaked");
    assert!(!log.contains(wrong), "a presented token leaked");
}

// --- Settings -----------------------------------------------------------------------------

#[tokio::test]
async fn absurd_http_settings_are_refused_at_start_in_one_line_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("never.db").display());
    for (variable, value) in [
        ("APP_HTTP_HEADER_TIMEOUT_SECONDS", "0"),
        ("APP_HTTP_HEADER_TIMEOUT_SECONDS", "-1"),
        ("APP_HTTP_HEADER_TIMEOUT_SECONDS", "nan"),
        ("APP_HTTP_HEADER_TIMEOUT_SECONDS", "86400"),
        ("APP_HTTP_BODY_TIMEOUT_SECONDS", "0"),
        ("APP_HTTP_SEND_TIMEOUT_SECONDS", "1e12"),
        ("APP_HTTP_MAX_CONNECTIONS", "many"),
        ("APP_HTTP_MAX_CONNECTIONS", "2000000"),
        ("APP_HTTP_MAX_HEADER_BYTES", "10"),
        ("APP_HTTP_MAX_HEADER_BYTES", "100000000"),
        ("APP_HTTP_DRAIN_MAX_BYTES", "-1"),
        ("APP_HTTP_DRAIN_TIMEOUT_SECONDS", "61"),
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_syncasync"))
            .arg("serve")
            .env("APP_HOST", "127.0.0.1")
            .env("APP_PORT", "0")
            .env("APP_DATABASE_URL", &database)
            .env(variable, value)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + ANSWER;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{variable}={value}: the service started");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(2), "{variable}={value}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{variable}={value}: {stderr}"
        );
        assert!(
            stderr.starts_with("error: ") && stderr.contains(variable),
            "{variable}={value}: {stderr}"
        );
    }
}
