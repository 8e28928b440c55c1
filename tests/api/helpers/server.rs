//! The test server: the real service on an ephemeral port of 127.0.0.1, started by one
//! builder in one of two ways, with the same typed helpers either way.
//!
//! - **In process** (the default): the `Application` runs on the test's own runtime. Quick to
//!   start, stopped the way SIGTERM stops the binary, and it may resolve callback host names
//!   with a test resolver ([`StaticLookup`]).
//! - **As a child process** ([`TestServerBuilder::child`]): the built binary, for what only a
//!   process shows: `kill -9`, SIGTERM and the exit code, the log, a preloaded library, an
//!   open-file limit. The child is the server binary itself, never a wrapper that forks it
//!   (such as the `faketime` command): killing the child must kill the server. Dropping the
//!   handle kills it.
//!
//! ```ignore
//! let app = TestServer::builder()
//!     .setting("callback-max-retries", "1")
//!     .start()
//!     .await;
//! let mut server = TestServer::builder()
//!     .child()
//!     .database_url(&database)
//!     .env("RUST_LOG", "debug")
//!     .start()
//!     .await;
//! server.kill_9();
//! ```
//!
//! Settings are named as the service's flags, without the dashes. The builder checks each name
//! against the service's own configuration and hands it over as that flag in process, and as
//! the flag's `APP_*` variable to a child.
//!
//! Each server starts on a fresh database of the suite's backend (a SQLite file in the
//! server's own temporary directory, or a new PostgreSQL database when
//! `SYNCASYNC_TEST_POSTGRES_URL` is set) unless it is given one: several servers sharing a
//! database, or a restart on the same one.

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use serde_json::{Value, json};
use syncasync::app::Application;
use syncasync::config::Config;
use syncasync::delivery::lookup::{DnsLookup, NameLookup};
use syncasync::shutdown::CancellationToken;
use tempfile::TempDir;
use tokio::task::JoinHandle;

use super::{StaticLookup, client, fresh_database, read, unused_port};

/// What every in-process server runs with unless its test says otherwise: loopback callbacks
/// allowed, fast retries, a short grace period, and short leases (at least twice the callback
/// timeout), so that takeover after a stop is quick on a shared database.
const IN_PROCESS_SETTINGS: &[(&str, &str)] = &[
    ("callback-block-private-ips", "false"),
    ("callback-retry-base-delay", "0.05"),
    ("callback-retry-max-delay", "0.2"),
    ("callback-timeout-seconds", "2"),
    ("shutdown-grace-seconds", "5"),
    ("job-lease-seconds", "4"),
    ("database-pool-size", "4"),
];

/// What every child server runs with unless its test says otherwise: as in process, with
/// leases shorter still (a lease must be at least twice the callback timeout), so that a
/// restart after `kill -9` takes the dead process's jobs over within two seconds; the
/// service's own grace period and pool size.
const CHILD_SETTINGS: &[(&str, &str)] = &[
    ("callback-block-private-ips", "false"),
    ("callback-retry-base-delay", "0.05"),
    ("callback-retry-max-delay", "0.2"),
    ("callback-timeout-seconds", "1"),
    ("job-lease-seconds", "2"),
];

/// The environment every child server runs with unless its test says otherwise.
const CHILD_ENV: &[(&str, &str)] = &[("RUST_LOG", "info")];

/// Settings the builder sets itself, each with the method that chooses it.
const OWN_SETTINGS: &[(&str, &str)] = &[
    ("host", "the server listens on 127.0.0.1"),
    ("port", "the server picks a free port"),
    ("database-url", "use .database_url()"),
];

/// How long a server may take to answer its first `/healthz`.
const STARTUP: Duration = Duration::from_secs(20);

#[derive(Parser)]
#[command(args_override_self = true)]
struct TestCli {
    #[command(flatten)]
    config: Config,
}

/// The service's setting `name` (its flag without the dashes): the name and its `APP_*`
/// variable. Panics on a name the service does not know, or one the builder sets itself.
#[track_caller]
fn known_setting(name: &str) -> (String, String) {
    if let Some((_, why)) = OWN_SETTINGS.iter().find(|(own, _)| *own == name) {
        panic!("the test server sets {name:?} itself: {why}");
    }
    let cli = TestCli::command();
    let arg = cli
        .get_arguments()
        .find(|arg| arg.get_long() == Some(name))
        .unwrap_or_else(|| panic!("the service has no setting --{name}"));
    let variable = arg
        .get_env()
        .unwrap_or_else(|| panic!("--{name} has no environment variable"))
        .to_string_lossy()
        .into_owned();
    (name.to_string(), variable)
}

/// One setting as a test gave it.
#[derive(Clone)]
struct Setting {
    /// The flag's name, without the dashes.
    name: String,
    /// The flag's environment variable (`APP_…`), for a child.
    variable: String,
    value: String,
}

/// Chooses how to start a [`TestServer`]: in process or as a child (`K`), on which database,
/// with which settings. Start with [`TestServer::builder`].
#[must_use = "a builder starts nothing until .start() is awaited"]
pub struct TestServerBuilder<K> {
    database_url: Option<String>,
    settings: Vec<Setting>,
    harness_settings: bool,
    kind: K,
}

/// What only an in-process server can have.
#[derive(Default)]
pub struct InProcessOptions {
    lookup: Option<StaticLookup>,
}

/// What only a child server can have.
pub struct ChildOptions {
    env: Vec<(String, String)>,
    open_file_limit: Option<u32>,
}

impl TestServer {
    /// A builder for an in-process server on a fresh database, with the harness's settings.
    pub fn builder() -> TestServerBuilder<InProcessOptions> {
        TestServerBuilder {
            database_url: None,
            settings: Vec::new(),
            harness_settings: true,
            kind: InProcessOptions::default(),
        }
    }
}

impl<K> TestServerBuilder<K> {
    /// Runs on this database instead of a fresh one: several servers sharing one database, or
    /// a restart on the same one.
    pub fn database_url(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_string());
        self
    }

    /// Sets the service's setting `name` (its flag without the dashes, e.g.
    /// `"callback-max-retries"`) to `value`, over the harness's value if it has one.
    #[track_caller]
    pub fn setting(mut self, name: &str, value: impl Into<String>) -> Self {
        let (name, variable) = known_setting(name);
        self.settings.retain(|s| s.name != name);
        self.settings.push(Setting {
            name,
            variable,
            value: value.into(),
        });
        self
    }

    /// [`setting`](Self::setting) for each `(name, value)`, in order.
    #[track_caller]
    pub fn settings(mut self, settings: &[(&str, &str)]) -> Self {
        for (name, value) in settings {
            self = self.setting(name, *value);
        }
        self
    }

    /// Starts from the service's own defaults (what an operator gets) instead of the
    /// harness's fast settings; only the test's own settings are added.
    pub fn service_defaults(mut self) -> Self {
        self.harness_settings = false;
        self
    }

    /// The settings to start with: the harness's `defaults` (unless turned off), each
    /// replaced by the test's own value if it gave one, then the test's other settings.
    fn resolved(&self, defaults: &[(&str, &str)]) -> Vec<Setting> {
        let defaults = if self.harness_settings { defaults } else { &[] };
        let mut settings: Vec<Setting> = defaults
            .iter()
            .filter(|(name, _)| !self.settings.iter().any(|s| s.name == *name))
            .map(|(name, value)| {
                let (name, variable) = known_setting(name);
                Setting {
                    name,
                    variable,
                    value: value.to_string(),
                }
            })
            .collect();
        settings.extend(self.settings.iter().cloned());
        settings
    }

    /// The database to start on, and the server's own directory (which holds the fresh
    /// SQLite database, if that is the one, and a child's log).
    async fn database(&self) -> (String, TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = match &self.database_url {
            Some(url) => url.clone(),
            None => fresh_database(dir.path()).await,
        };
        (url, dir)
    }

    fn with_kind<L>(self, kind: L) -> TestServerBuilder<L> {
        TestServerBuilder {
            database_url: self.database_url,
            settings: self.settings,
            harness_settings: self.harness_settings,
            kind,
        }
    }
}

impl TestServerBuilder<InProcessOptions> {
    /// Resolves callback host names with `lookup` instead of the system's resolver.
    pub fn lookup(mut self, lookup: StaticLookup) -> Self {
        self.kind.lookup = Some(lookup);
        self
    }

    /// Runs the built binary as a child process instead.
    #[track_caller]
    pub fn child(self) -> TestServerBuilder<ChildOptions> {
        assert!(
            self.kind.lookup.is_none(),
            "a child server cannot use a test resolver: the resolver answers inside the test \
             process, and a child resolves names with the system's"
        );
        self.with_kind(ChildOptions {
            env: Vec::new(),
            open_file_limit: None,
        })
    }

    /// Starts the service on the test's runtime and returns once it listens.
    pub async fn start(self) -> TestServer<InProcess> {
        let (database_url, dir) = self.database().await;
        let mut args = vec![
            "test".to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "0".into(),
            "--database-url".into(),
            database_url,
        ];
        for setting in self.resolved(IN_PROCESS_SETTINGS) {
            args.push(format!("--{}", setting.name));
            args.push(setting.value);
        }
        let config = TestCli::try_parse_from(args).expect("test config").config;
        let lookup: Arc<dyn NameLookup> = match self.kind.lookup {
            Some(lookup) => Arc::new(lookup),
            None => DnsLookup::system(),
        };
        let app = Application::build_with_lookup(config, lookup)
            .await
            .expect("application starts");
        let address = format!("http://{}", app.local_addr());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                app.run(shutdown).await.expect("application runs");
            }
        });
        TestServer {
            address,
            client: client(),
            process: InProcess {
                shutdown,
                handle: Some(handle),
            },
            _dir: dir,
        }
    }
}

impl TestServerBuilder<ChildOptions> {
    /// Sets an environment variable of the child that is not a setting (`RUST_LOG`, an
    /// `LD_PRELOAD`): what a wrapper command would otherwise do. Settings go through
    /// [`setting`](Self::setting).
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        assert!(
            !key.starts_with("APP_"),
            "{key} is a setting: use .setting() with its flag's name"
        );
        self.kind.env.push((key.to_string(), value.into()));
        self
    }

    /// Runs the child under an open-file limit of `limit` (`ulimit -n`).
    pub fn open_file_limit(mut self, limit: u32) -> Self {
        self.kind.open_file_limit = Some(limit);
        self
    }

    /// Starts the binary and returns once it answers `GET /healthz` with 200.
    pub async fn start(self) -> TestServer<ChildProcess> {
        let (database_url, dir) = self.database().await;
        let port = unused_port().await.port().to_string();
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let binary = env!("CARGO_BIN_EXE_syncasync");
        let mut command = match self.kind.open_file_limit {
            None => {
                let mut command = Command::new(binary);
                command.arg("serve");
                command
            }
            // The shell sets the limit, then `exec` replaces it with the server: the child is
            // still the server itself.
            Some(limit) => {
                let mut command = Command::new("sh");
                command
                    .arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" serve"))
                    .arg(binary);
                command
            }
        };
        command
            .env("APP_HOST", "127.0.0.1")
            .env("APP_PORT", &port)
            .env("APP_DATABASE_URL", &database_url);
        for setting in self.resolved(CHILD_SETTINGS) {
            command.env(setting.variable, setting.value);
        }
        let env = if self.harness_settings {
            CHILD_ENV
        } else {
            &[]
        };
        for (key, value) in env {
            command.env(key, value);
        }
        for (key, value) in &self.kind.env {
            command.env(key, value);
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        let child = command.spawn().expect("start the server binary");
        let mut server = TestServer {
            address: format!("http://127.0.0.1:{port}"),
            client: client(),
            process: ChildProcess {
                child,
                log: log_path,
            },
            _dir: dir,
        };
        server.wait_until_healthy().await;
        server
    }
}

/// A running service, with a client for it and typed helpers. `P` is how it runs:
/// [`InProcess`] (the default) or [`ChildProcess`].
pub struct TestServer<P = InProcess> {
    /// `http://127.0.0.1:<port>`
    pub address: String,
    pub client: reqwest::Client,
    process: P,
    /// The server's own directory; declared after `process`, so that it outlives the server.
    _dir: TempDir,
}

/// An in-process server's run: stopped (as SIGTERM stops the binary) when its handle is
/// dropped or [stopped](TestServer::stop).
pub struct InProcess {
    shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A child server's process: killed when its handle is dropped.
pub struct ChildProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl<P> TestServer<P> {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|err| panic!("POST {path}: {err}"))
    }

    pub async fn post_sync(&self, body: &Value) -> reqwest::Response {
        self.post_json("/sync", body).await
    }

    pub async fn post_async(&self, body: &Value) -> reqwest::Response {
        self.post_json("/async", body).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {path}: {err}"))
    }

    /// `GET path` as JSON; a body that is not JSON fails the test.
    pub async fn get_json(&self, path: &str) -> Value {
        read(self.get(path).await).await.1
    }

    /// Submits an async request (10 iterations) and returns its id.
    pub async fn submit(&self, data: &str, callback_url: &str) -> String {
        let response = self
            .post_async(&json!({"data": data, "iterations": 10, "callback_url": callback_url}))
            .await;
        assert_eq!(
            response.status(),
            200,
            "submit: {:?}",
            response.text().await
        );
        let body: Value = response.json().await.expect("JSON body");
        body["request_id"].as_str().expect("request_id").to_string()
    }

    /// As [`submit`](Self::submit), with owned arguments (for many submissions at once).
    pub async fn submit_owned(&self, data: String, callback_url: String) -> String {
        self.submit(&data, &callback_url).await
    }

    /// Polls `GET /requests/{id}` until its status is `status`; fails the test after
    /// `timeout`.
    pub async fn wait_for_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        self.wait_for_status_until(id, status, Instant::now() + timeout)
            .await
    }

    /// Polls `GET /requests/{id}` until its status is `status`; fails the test at
    /// `deadline` (one deadline for many requests).
    pub async fn wait_for_status_until(&self, id: &str, status: &str, deadline: Instant) -> Value {
        loop {
            let record = self.get_json(&format!("/requests/{id}")).await;
            if record["status"] == status {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "request {id} did not reach {status} in time; last: {record}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `GET /healthz` until `active_workers` is `n`.
    pub async fn wait_for_active_workers(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let health = self.get_json("/healthz").await;
            if health["active_workers"] == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "active_workers never reached {n}: {health}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl TestServer<InProcess> {
    /// Stops the service the way SIGTERM does and waits for it to finish.
    pub async fn stop(mut self) {
        self.process.shutdown.cancel();
        if let Some(handle) = self.process.handle.take() {
            handle.await.expect("application stopped cleanly");
        }
    }
}

impl TestServer<ChildProcess> {
    /// Kills the server with SIGKILL (no handler runs, nothing is flushed) and reaps it.
    pub fn kill_9(&mut self) {
        // Child::kill is SIGKILL on Unix.
        self.process.child.kill().expect("SIGKILL");
        self.process.child.wait().expect("reaped");
    }

    /// Sends SIGTERM; [`wait_exit`](Self::wait_exit) waits for the server to stop.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Waits for the server to exit; fails the test after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's process id (the binary's own: it is not behind a wrapper).
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.process.log).expect("server log")
    }

    async fn wait_until_healthy(&mut self) {
        // A client of its own, so that the probe leaves no connection open in the server's
        // count of descriptors or connections.
        let client = client();
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if let Ok(response) = client.get(self.url("/healthz")).send().await
                && response.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.process.child.try_wait() {
                panic!("server exited at start ({status}); log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server did not become healthy; log:\n{}", self.log());
    }
}

/// The builder's own rules, checked without starting anything.
mod checks {
    use super::{CHILD_SETTINGS, StaticLookup, TestServer, known_setting};

    #[test]
    #[should_panic(expected = "the service has no setting --callback-max-retry")]
    fn a_misspelt_setting_is_refused() {
        let _ = TestServer::builder().setting("callback-max-retry", "1");
    }

    #[test]
    #[should_panic(expected = "use .database_url()")]
    fn the_database_is_chosen_with_its_own_method() {
        let _ = TestServer::builder().setting("database-url", "sqlite://elsewhere.db");
    }

    #[test]
    #[should_panic(expected = "a child server cannot use a test resolver")]
    fn a_child_cannot_use_a_test_resolver() {
        let _ = TestServer::builder()
            .lookup(StaticLookup::default())
            .child();
    }

    #[test]
    fn a_setting_reaches_a_child_as_its_variable_over_the_harness_value() {
        assert_eq!(
            known_setting("callback-max-retries").1,
            "APP_CALLBACK_MAX_RETRIES"
        );
        let builder = TestServer::builder()
            .child()
            .setting("job-lease-seconds", "9");
        let leases: Vec<(String, String)> = builder
            .resolved(CHILD_SETTINGS)
            .into_iter()
            .filter(|s| s.name == "job-lease-seconds")
            .map(|s| (s.variable, s.value))
            .collect();
        assert_eq!(
            leases,
            [("APP_JOB_LEASE_SECONDS".to_string(), "9".to_string())]
        );
    }
}
