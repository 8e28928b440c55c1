//! The test server: the real service on an ephemeral port of 127.0.0.1, started by one
//! builder, with typed helpers. The `Application` runs on the test's own runtime: quick to
//! start, stopped the way SIGTERM stops the binary, and it may resolve callback host names
//! with a test resolver ([`StaticLookup`]).
//!
//! ```ignore
//! let app = TestServer::builder()
//!     .setting("callback-max-retries", "1")
//!     .start()
//!     .await;
//! ```
//!
//! Settings are named as the service's flags, without the dashes; the builder checks each
//! name against the service's own configuration.
//!
//! Each server starts on a fresh database of the suite's backend (a SQLite file in the
//! server's own temporary directory, or a new PostgreSQL database when
//! `SYNCASYNC_TEST_POSTGRES_URL` is set) unless it is given one: several servers sharing a
//! database, or a restart on the same one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use serde_json::{Value, json};
use syncasync::app::Application;
use syncasync::config::Config;
use syncasync::delivery::client::{NameLookup, SystemLookup};
use syncasync::shutdown::CancellationToken;
use tempfile::TempDir;
use tokio::task::JoinHandle;

use super::{StaticLookup, client, fresh_database, read};

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

/// Settings the builder sets itself, each with the method that chooses it.
const OWN_SETTINGS: &[(&str, &str)] = &[
    ("host", "the server listens on 127.0.0.1"),
    ("port", "the server picks a free port"),
    ("database-url", "use .database_url()"),
];

#[derive(Parser)]
#[command(args_override_self = true)]
struct TestCli {
    #[command(flatten)]
    config: Config,
}

/// The service's setting `name` (its flag without the dashes). Panics on a name the service
/// does not know, or one the builder sets itself.
#[track_caller]
fn known_setting(name: &str) -> String {
    if let Some((_, why)) = OWN_SETTINGS.iter().find(|(own, _)| *own == name) {
        panic!("the test server sets {name:?} itself: {why}");
    }
    let cli = TestCli::command();
    assert!(
        cli.get_arguments().any(|arg| arg.get_long() == Some(name)),
        "the service has no setting --{name}"
    );
    name.to_string()
}

/// One setting as a test gave it.
#[derive(Clone)]
struct Setting {
    /// The flag's name, without the dashes.
    name: String,
    value: String,
}

/// Chooses how to start a [`TestServer`]: its kind's options (`K`), on which database, with
/// which settings. Start with [`TestServer::builder`].
#[must_use = "a builder starts nothing until .start() is awaited"]
pub struct TestServerBuilder<K> {
    database_url: Option<String>,
    settings: Vec<Setting>,
    kind: K,
}

/// What only an in-process server can have.
#[derive(Default)]
pub struct InProcessOptions {
    lookup: Option<StaticLookup>,
}

impl TestServer {
    /// A builder for an in-process server on a fresh database, with the harness's settings.
    pub fn builder() -> TestServerBuilder<InProcessOptions> {
        TestServerBuilder {
            database_url: None,
            settings: Vec::new(),
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
        let name = known_setting(name);
        self.settings.retain(|s| s.name != name);
        self.settings.push(Setting {
            name,
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

    /// The settings to start with: the harness's `defaults`, each replaced by the test's own
    /// value if it gave one, then the test's other settings.
    fn resolved(&self, defaults: &[(&str, &str)]) -> Vec<Setting> {
        let mut settings: Vec<Setting> = defaults
            .iter()
            .filter(|(name, _)| !self.settings.iter().any(|s| s.name == *name))
            .map(|(name, value)| Setting {
                name: known_setting(name),
                value: value.to_string(),
            })
            .collect();
        settings.extend(self.settings.iter().cloned());
        settings
    }

    /// The database to start on, and the server's own directory (which holds the fresh
    /// SQLite database, if that is the one).
    async fn database(&self) -> (String, TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = match &self.database_url {
            Some(url) => url.clone(),
            None => fresh_database(dir.path()).await,
        };
        (url, dir)
    }
}

impl TestServerBuilder<InProcessOptions> {
    /// Resolves callback host names with `lookup` instead of the system's resolver.
    pub fn lookup(mut self, lookup: StaticLookup) -> Self {
        self.kind.lookup = Some(lookup);
        self
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
            None => Arc::new(SystemLookup),
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

/// A running service, with a client for it and typed helpers. `P` is how it runs:
/// [`InProcess`].
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
