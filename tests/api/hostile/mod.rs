//! The adversarial suite (SPEC §9): each test attacks a running server the way a hostile
//! client, receiver or careless operator would, mostly over raw TCP sockets where a
//! well-behaved HTTP client cannot (trickle headers, lie about a body's length, hang up
//! mid-request), and checks that the service keeps answering, loses nothing and holds nothing
//! without bound. Every way in that is found gets a test here.

mod claims;
mod clients;
mod clock;
mod dashboard;
mod input;
mod leaks;
mod long_lived;
mod maintenance;
mod outage;
mod reliable;
mod review;
mod settings;
mod sqlite_files;
mod store;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::TestServer;

/// The service's socket address.
pub fn socket_address(app: &TestServer) -> SocketAddr {
    app.address
        .trim_start_matches("http://")
        .parse()
        .expect("socket address")
}

pub async fn connect(app: &TestServer) -> TcpStream {
    TcpStream::connect(socket_address(app))
        .await
        .expect("connect to the service")
}

/// A `POST` of JSON `body` to `path` as it goes on the wire, with `extra` header lines
/// (each ending in `\r\n`).
pub fn json_post(path: &str, extra: &str, body: &Value) -> String {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; a body that is not JSON fails the test.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "status {}: body is not JSON ({err}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// What came back on a connection within a time limit.
#[derive(Debug)]
pub enum Outcome {
    Response(RawResponse),
    /// The server closed (or reset) the connection without a complete response.
    Closed {
        bytes: Vec<u8>,
    },
    /// Nothing complete arrived and the connection is still open.
    TimedOut {
        bytes: Vec<u8>,
    },
}

impl Outcome {
    pub fn response(self) -> RawResponse {
        match self {
            Outcome::Response(response) => response,
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

/// Reads one response (with a Content-Length body, as the service sends them) within
/// `timeout`.
pub async fn read_response(stream: &mut (impl AsyncRead + Unpin), timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(response) = parse_response(&bytes) {
            return Outcome::Response(response);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Err(_) => return Outcome::TimedOut { bytes },
            Ok(Ok(0)) | Ok(Err(_)) => {
                return match parse_response(&bytes) {
                    Some(response) => Outcome::Response(response),
                    None => Outcome::Closed { bytes },
                };
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A complete response at the start of `bytes`, if there is one.
fn parse_response(bytes: &[u8]) -> Option<RawResponse> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..head_end]).expect("response head is text");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()?
        .split(' ')
        .nth(1)?
        .parse()
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().expect("content-length"));
    let body = bytes.get(head_end + 4..head_end + 4 + length)?.to_vec();
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// Sends `request` as is on a new connection and reads the answer.
pub async fn exchange(app: &TestServer, request: &[u8], timeout: Duration) -> Outcome {
    let mut stream = connect(app).await;
    stream.write_all(request).await.expect("request written");
    read_response(&mut stream, timeout).await
}

/// Waits until the server closes `stream`, and returns how long that took; fails the test if
/// it is still open after `timeout` or if the server answers anything.
pub async fn wait_closed(stream: &mut (impl AsyncRead + Unpin), timeout: Duration) -> Duration {
    let started = Instant::now();
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(timeout, stream.read(&mut chunk)).await {
        Err(_) => panic!("the connection is still open after {timeout:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => started.elapsed(),
        Ok(Ok(n)) => panic!(
            "expected the connection to be closed, got {:?}",
            String::from_utf8_lossy(&chunk[..n])
        ),
    }
}

/// The service still answers a plain request.
pub async fn assert_still_serving(app: &TestServer) {
    let response = tokio::time::timeout(Duration::from_secs(10), app.get("/healthz"))
        .await
        .expect("GET /healthz answered in time");
    assert_eq!(response.status(), 200);
}

/// Starts the binary with `env` on a throwaway SQLite database; returns its exit code and
/// stderr, or `None` if it was still running after `patience` (it accepted the settings).
pub fn start_binary_with(env: &[(&str, &str)], patience: Duration) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_syncasync"));
    command
        .env("APP_HOST", "127.0.0.1")
        .env("APP_PORT", "0")
        .env(
            "APP_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("s.db").display()),
        )
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + patience;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            // A signal (an abort) has no exit code: report it as -1, a failure.
            break Some(status.code().unwrap_or(-1));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    {
        use std::io::Read;
        let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    }
    (code, stderr)
}

/// Fails unless the binary, started with `env`, stops at once with exit code 2 (as clap's
/// own refusals do) or 1 and one line on stderr that names `variable`.
pub fn assert_refused_in_one_line(env: &[(&str, &str)], variable: &str) {
    let (code, stderr) = start_binary_with(env, Duration::from_secs(5));
    assert!(
        matches!(code, Some(1 | 2)),
        "{env:?}: expected a clean refusal at start, got exit {code:?} with stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        // Log lines written before the refusal (migrations) are not the error.
        .filter(|l| !l.contains(" INFO "))
        .collect();
    assert_eq!(lines.len(), 1, "{env:?}: not one line:\n{stderr}");
    assert!(lines[0].contains(variable), "{env:?}: {stderr}");
}

/// Whether this run must not skip what it cannot set up (CI=true).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}
