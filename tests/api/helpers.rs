//! The shared harness: start the real service on an ephemeral port with a fresh database
//! ([`TestServer`], in `server.rs`), talk HTTP to it, and run callback receivers on 127.0.0.1
//! whose behaviour a test scripts.

mod server;

pub use server::{ChildProcess, TestServer};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use syncasync::delivery::lookup::{LookupFuture, NameLookup};
use tokio::task::JoinHandle;

/// The environment variable that switches the suite to PostgreSQL: the URL of a database the
/// tests may connect to in order to create one fresh database per test.
pub const POSTGRES_URL_VAR: &str = "SYNCASYNC_TEST_POSTGRES_URL";

/// The PostgreSQL admin URL when the suite runs on PostgreSQL.
pub fn postgres_admin_url() -> Option<String> {
    std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|u| !u.is_empty())
}

/// Runs `sql` on the test's database behind the store's back (what an older version of the
/// service left in it).
pub async fn raw_sql(url: &str, sql: &str) {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let conn = rusqlite::Connection::open(path).expect("open sqlite");
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute_batch(sql).expect(sql);
    } else {
        use sqlx::Connection;
        let mut conn = sqlx::postgres::PgConnection::connect(url)
            .await
            .expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut conn)
            .await
            .expect(sql);
        conn.close().await.unwrap();
    }
}

/// The first column of the first row `sql` reads from the test's database behind the store's
/// back, as text (`None` for no row or NULL).
pub async fn sql_text(url: &str, sql: &str) -> Option<String> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        use rusqlite::OptionalExtension;
        let conn = rusqlite::Connection::open(path).expect("open sqlite");
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.query_row(sql, [], |row| row.get::<_, Option<String>>(0))
            .optional()
            .expect(sql)
            .flatten()
    } else {
        use sqlx::Connection;
        let mut conn = sqlx::postgres::PgConnection::connect(url)
            .await
            .expect("connect");
        let text: Option<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_optional(&mut conn)
            .await
            .expect(sql);
        conn.close().await.unwrap();
        text.flatten()
    }
}

/// A new, empty database for one test: a SQLite file in `dir`, or, when the suite runs on
/// PostgreSQL, a new database on that server (named `syncasync_test_…`; CI drops them).
pub async fn fresh_database(dir: &Path) -> String {
    match postgres_admin_url() {
        None => format!("sqlite://{}", dir.join("test.db").display()),
        Some(admin) => create_postgres_database(&admin).await,
    }
}

/// Creates a database named `syncasync_test_<random>` and returns its URL.
pub async fn create_postgres_database(admin_url: &str) -> String {
    use sqlx::Connection;
    let name = format!("syncasync_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::postgres::PgConnection::connect(admin_url)
        .await
        .expect("connect to the PostgreSQL admin database");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let mut url = url::Url::parse(admin_url).expect("PostgreSQL URL");
    url.set_path(&name);
    url.to_string()
}

/// A resolver for made-up names: tests map names to chosen (loopback) addresses, and no
/// DNS server is asked anything.
#[derive(Clone, Default)]
pub struct StaticLookup(pub HashMap<String, Vec<IpAddr>>);

impl StaticLookup {
    pub fn with(mut self, name: &str, addresses: &[&str]) -> Self {
        let ips = addresses
            .iter()
            .map(|a| a.parse().expect("IP address"))
            .collect();
        self.0.insert(name.to_string(), ips);
        self
    }
}

impl NameLookup for StaticLookup {
    fn lookup(&self, host: String) -> LookupFuture {
        let found = self.0.get(&host).cloned();
        Box::pin(async move {
            found.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("no such test host {host}"),
                )
            })
        })
    }
}

/// A time the service wrote (naive UTC by default, or RFC 3339), as a UTC instant.
pub fn parse_time(value: &Value) -> chrono::DateTime<chrono::Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp: {value}"));
    syncasync::timestamps::parse(text).unwrap_or_else(|| panic!("a timestamp: {text}"))
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("test client")
}

/// The status and JSON body of a response; a body that is not JSON fails the test.
pub async fn read(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("response body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("status {status}: body is not JSON ({err}): {text:?}"));
    (status, body)
}

/// Makes a sync request (1 iteration) and returns its id.
pub async fn sync_request<P>(app: &TestServer<P>, data: &str) -> String {
    let (status, body) = read(app.post_sync(&json!({"data": data, "iterations": 1})).await).await;
    assert_eq!(status, 200, "{body}");
    body["result"]["request_id"].as_str().unwrap().to_string()
}

/// The ids of a `GET /requests` answer, in order.
pub fn ids(list: &Value) -> Vec<String> {
    list["requests"]
        .as_array()
        .expect("requests array")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

/// `GET /destinations` with the admin token `token`: the destinations it lists.
pub async fn destinations<P>(app: &TestServer<P>, token: &str) -> Vec<Value> {
    let response = app
        .client
        .get(app.url("/destinations"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, 200, "{body}");
    body["destinations"].as_array().unwrap().clone()
}

/// Fails the test unless every acknowledged id was delivered to `receiver` (with a 2xx).
pub fn assert_all_delivered(receiver: &Receiver, acknowledged: &[String]) {
    let delivered: std::collections::HashSet<String> =
        receiver.delivered_ids().into_iter().collect();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !delivered.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "callbacks never received for {missing:?}"
    );
}

/// What a receiver does with each callback.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Answer the first N attempts for each request with `fail_status`.
    pub fail_first: u32,
    pub fail_status: u16,
    /// Wait this long before answering.
    pub delay: Duration,
    /// The body of a 2xx answer.
    pub answer: &'static [u8],
    /// Answer every callback received within this long of the first one, whatever its
    /// request, with `fail_status`: a destination that is down for a while, then recovers.
    pub down_for: Duration,
    /// Callbacks answered at once before `delay` applies: a destination that is healthy for
    /// a while, then hangs.
    pub prompt_first: usize,
    /// Sent as `Retry-After` (seconds) with every refusal.
    pub retry_after: Option<u32>,
    /// Refuse this share (0 to 1) of callbacks with `fail_status`, at random.
    pub fail_at_random: f64,
}

impl Behaviour {
    pub fn accept() -> Self {
        Self {
            fail_first: 0,
            fail_status: 500,
            delay: Duration::ZERO,
            answer: b"ok",
            down_for: Duration::ZERO,
            prompt_first: 0,
            retry_after: None,
            fail_at_random: 0.0,
        }
    }

    /// Refuses `share` (0 to 1) of the callbacks with a 500, at random.
    pub fn fail_at_random(share: f64) -> Self {
        Self {
            fail_at_random: share,
            ..Self::accept()
        }
    }

    /// As `self`, with `Retry-After: seconds` on every refusal.
    pub fn retry_after(self, seconds: u32) -> Self {
        Self {
            retry_after: Some(seconds),
            ..self
        }
    }

    /// Answers the first `n` callbacks at once, then takes `delay` over each.
    pub fn hang_after(n: usize, delay: Duration) -> Self {
        Self {
            delay,
            prompt_first: n,
            ..Self::accept()
        }
    }

    /// Refuses with `status` every callback within `down_for` of the first, then accepts.
    pub fn down_for(down_for: Duration, status: u16) -> Self {
        Self {
            down_for,
            fail_status: status,
            ..Self::accept()
        }
    }

    /// Accepts every callback, answering with `answer` as the body.
    pub fn answering(answer: &'static [u8]) -> Self {
        Self {
            answer,
            ..Self::accept()
        }
    }

    pub fn fail_first(n: u32) -> Self {
        Self {
            fail_first: n,
            ..Self::accept()
        }
    }

    pub fn always_fail(status: u16) -> Self {
        Self {
            fail_first: u32::MAX,
            fail_status: status,
            ..Self::accept()
        }
    }

    pub fn hang(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::accept()
        }
    }
}

/// One callback as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Bytes,
    pub status_sent: u16,
}

#[derive(Default)]
struct Log {
    received: Vec<Received>,
    attempts_by_id: HashMap<String, u32>,
    first_at: Option<Instant>,
    /// Callbacks that arrived, answered or not.
    arrived: usize,
    /// Each arrival's request id and wall-clock time, before any answer.
    arrivals: Vec<(String, chrono::DateTime<chrono::Utc>)>,
}

/// A callback receiver on 127.0.0.1.
pub struct Receiver {
    pub address: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct ReceiverState {
    behaviour: Behaviour,
    log: Arc<Mutex<Log>>,
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        Self::serve(listener, behaviour)
    }

    /// A receiver on a given port (to bring a "down" receiver back up).
    pub async fn start_on(address: SocketAddr, behaviour: Behaviour) -> Self {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .expect("bind receiver");
        Self::serve(listener, behaviour)
    }

    fn serve(listener: tokio::net::TcpListener, behaviour: Behaviour) -> Self {
        let address = listener.local_addr().expect("receiver address");
        let log = Arc::new(Mutex::new(Log::default()));
        let state = ReceiverState {
            behaviour,
            log: Arc::clone(&log),
        };
        let router = Router::new()
            .route("/callback", post(receive))
            .with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { address, log, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/callback", self.address)
    }

    pub fn received(&self) -> Vec<Received> {
        self.log.lock().expect("log").received.clone()
    }

    /// Callbacks answered with 2xx, by request id.
    pub fn delivered_ids(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status_sent))
            .filter_map(|r| r.body["request_id"].as_str().map(str::to_string))
            .collect()
    }

    /// Waits until `n` callbacks were answered with 2xx.
    pub async fn wait_for_deliveries(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let delivered: Vec<Received> = self
                .received()
                .into_iter()
                .filter(|r| (200..300).contains(&r.status_sent))
                .collect();
            if delivered.len() >= n {
                return delivered;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} callbacks delivered within {timeout:?}",
                delivered.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` callbacks arrived, before any is answered (a receiver with a delay is
    /// still holding them).
    pub async fn wait_for_arrivals(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let arrived = || self.log.lock().expect("log").arrived;
        while arrived() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} callbacks arrived within {timeout:?}",
                arrived()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every callback that arrived (answered or not yet): its request id and when.
    pub fn arrivals(&self) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
        self.log.lock().expect("log").arrivals.clone()
    }

    /// Waits until `n` callbacks were answered, whatever the answer.
    pub async fn wait_for_attempts(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.received().len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} callbacks arrived within {timeout:?}",
                self.received().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops listening; returns once the port is free again.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    raw: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let arrived = {
        let id = serde_json::from_slice::<Value>(&raw)
            .ok()
            .and_then(|body| body["request_id"].as_str().map(str::to_string))
            .unwrap_or_default();
        let mut log = state.log.lock().expect("log");
        log.arrived += 1;
        log.arrivals.push((id, chrono::Utc::now()));
        log.arrived
    };
    if !state.behaviour.delay.is_zero() && arrived > state.behaviour.prompt_first {
        tokio::time::sleep(state.behaviour.delay).await;
    }
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let id = body["request_id"].as_str().unwrap_or_default().to_string();
    let mut log = state.log.lock().expect("log");
    let seen = {
        let seen = log.attempts_by_id.entry(id).or_insert(0);
        *seen += 1;
        *seen
    };
    let first_at = *log.first_at.get_or_insert_with(Instant::now);
    let down = first_at.elapsed() < state.behaviour.down_for;
    let unlucky = rand::random::<f64>() < state.behaviour.fail_at_random;
    let status = if down || unlucky || seen <= state.behaviour.fail_first {
        state.behaviour.fail_status
    } else {
        200
    };
    log.received.push(Received {
        headers,
        body,
        raw,
        status_sent: status,
    });
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if code.is_success() {
        return (code, state.behaviour.answer).into_response();
    }
    match state.behaviour.retry_after {
        Some(seconds) => (
            code,
            [("retry-after", seconds.to_string())],
            &b"receiver says no"[..],
        )
            .into_response(),
        None => (code, &b"receiver says no"[..]).into_response(),
    }
}

/// A port on 127.0.0.1 with nothing listening (bound, then released).
pub async fn unused_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("address")
}
