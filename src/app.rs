//! Wires the parts into a running service and stops them in order.
//!
//! Start-up: open the store (migrate, recover), start the compute pool, bind the port.
//! Shutdown, on the token: stop accepting connections and stop claiming jobs at once; let
//! in-flight HTTP requests and deliveries finish within the grace period (connections still
//! busy then are closed; deliveries still running are handed back to the queue; sync work
//! still running is stopped and recorded as failed); commit
//! pending writes and close the database.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Config, ListenHost};
use crate::delivery::client::{CallbackClient, GuardedResolver};
use crate::delivery::destinations::Destinations;
use crate::delivery::guard::Guard;
use crate::delivery::lookup::{DnsLookup, NameLookup};
use crate::delivery::{Dispatcher, Wakeup, WorkerStats};
use crate::http::{self, AppState, BodyLimits, ConnectionLimits, LongLived};
use crate::metrics::Metrics;
use crate::open_files;
use crate::retention;
use crate::service::Service;
use crate::store::{Store, StoreError, redact_url};
use crate::trace_context::export::SpanExport;
use crate::work::ComputePool;

/// How long the shutdown waits, once its grace period is over, for the sync requests whose
/// work it abandoned to be recorded as failed.
const ABANDONED_SYNC_RECORDS: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot use the database APP_DATABASE_URL={url}: {source}")]
    Store { url: String, source: StoreError },
    #[error("cannot resolve APP_HOST={host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the compute pool: {0}")]
    Pool(std::io::Error),
    #[error("cannot build the callback client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot export spans to APP_OTLP_ENDPOINT: {0}")]
    SpanExport(#[from] crate::trace_context::export::ExportError),
}

/// The client-connection cap: as configured, or fitted to the open-file limit (raised to
/// its hard limit first), so that clients cannot take the descriptors deliveries need.
fn fit_connections(config: &Config) -> Result<u64, StartError> {
    let limit = open_files::raise_limit()
        .map_err(|e| StartError::Config(format!("cannot read the open-file limit: {e}")))?;
    let database = if config.database_url.starts_with("sqlite:") {
        // The writer, four readers, the queue's and the health check's readers, the lock
        // file and the WAL's two files.
        10
    } else {
        // The pool, its relaxed twin, and the listener's and the health check's connections.
        2 * u64::from(config.database_pool_size) + 2
    };
    let cap = open_files::connection_cap(
        u64::from(config.http_max_connections),
        limit,
        u64::from(config.async_worker_count),
        database,
    )
    .map_err(|e| StartError::Config(e.to_string()))?;
    tracing::info!(
        open_file_limit = limit,
        max_connections = cap,
        "connection cap"
    );
    Ok(cap)
}

/// Says where the service answers (the API, the dashboard and the API's page) and warns of
/// settings that leave it open: reachable beyond loopback with no API token (anyone who
/// reaches the port submits work and reads every request), or SSRF protection off.
fn announce(listeners: &[tokio::net::TcpListener], config: &Config) {
    let addresses: Vec<std::net::SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    if let Some(first) = addresses.first() {
        // An unspecified address answers on every interface; loopback reaches it from here.
        let host = match first.ip() {
            ip if ip.is_unspecified() => "localhost".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let base = format!("http://{host}:{}", first.port());
        tracing::info!(
            api = %base,
            dashboard = %format!("{base}/ui"),
            docs = %format!("{base}/docs"),
            "serving"
        );
    }
    for warning in exposure_warnings(
        &addresses,
        config.api_token.is_some(),
        config.callback_block_private_ips,
    ) {
        tracing::warn!("{warning}");
    }
}

/// What the listening addresses and settings leave open, each said as a warning.
fn exposure_warnings(
    addresses: &[std::net::SocketAddr],
    api_token: bool,
    ssrf_protection: bool,
) -> Vec<&'static str> {
    let mut warnings = Vec::new();
    if addresses.iter().any(|a| !a.ip().is_loopback()) && !api_token {
        warnings.push(
            "listening beyond loopback with no APP_API_TOKEN: anyone who reaches the port can \
             submit work and read every request; set APP_API_TOKEN, or APP_HOST=127.0.0.1 \
             behind a proxy",
        );
    }
    if !ssrf_protection {
        warnings.push(
            "SSRF protection is off (APP_CALLBACK_BLOCK_PRIVATE_IPS=false): callbacks may \
             reach loopback, private and cloud metadata addresses",
        );
    }
    warnings
}

/// The connections event streams and waits may hold at once: as configured, or half the
/// client connections; never all of them, which would leave none for `/healthz` and short
/// requests.
fn long_lived_cap(configured: u32, max_connections: u64) -> Result<usize, StartError> {
    let cap = match configured {
        0 => (max_connections / 2).max(1),
        n => u64::from(n),
    };
    if max_connections < 2 {
        return Err(StartError::Config(format!(
            "APP_HTTP_MAX_CONNECTIONS ({max_connections}) leaves no connection for /healthz \
             and short requests beside one event stream or wait; it must be at least 2"
        )));
    }
    if cap >= max_connections {
        return Err(StartError::Config(format!(
            "APP_HTTP_MAX_LONG_LIVED ({cap}) leaves too few of the {max_connections} client \
             connections (APP_HTTP_MAX_CONNECTIONS) for /healthz and short requests; lower it \
             (or 0 for half of them)"
        )));
    }
    Ok(usize::try_from(cap).unwrap_or(usize::MAX))
}

/// The addresses `host` stands for: an IP address as is, a host name as the system resolves
/// it (once, at start), without repeats.
async fn listen_addresses(host: &ListenHost, port: u16) -> Result<Vec<SocketAddr>, StartError> {
    let name = match host {
        ListenHost::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, port)]),
        ListenHost::Name(name) => name,
    };
    let unresolved = |source| StartError::Resolve {
        host: name.clone(),
        source,
    };
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for address in tokio::net::lookup_host((name.as_str(), port))
        .await
        .map_err(unresolved)?
    {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    if addresses.is_empty() {
        return Err(unresolved(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no address",
        )));
    }
    tracing::info!(host = %name, addresses = ?addresses, "APP_HOST resolved");
    Ok(addresses)
}

/// Listens on every address. With port 0, the first address bound picks the port and the
/// others take the same one, so that the service has one port whichever address a client
/// reaches. Among several addresses, one of a kind this machine cannot listen on (`::1`
/// where IPv6 is off, though `localhost` names it) is skipped with a warning as long as
/// another is bound; any other failure stops the start. Returns the listeners and the first
/// one's address.
async fn bind(addresses: &[SocketAddr]) -> Result<(Vec<TcpListener>, SocketAddr), StartError> {
    let mut listeners = Vec::new();
    let mut first: Option<SocketAddr> = None;
    let mut skipped = None;
    for mut addr in addresses.iter().copied() {
        if let Some(first) = first {
            addr.set_port(first.port());
        }
        let bound = match TcpListener::bind(addr).await {
            Ok(listener) => listener.local_addr().map(|local| (listener, local)),
            Err(err) => Err(err),
        };
        match bound {
            Ok((listener, local)) => {
                first.get_or_insert(local);
                listeners.push(listener);
            }
            Err(source) if addresses.len() > 1 && cannot_listen_here(&source) => {
                tracing::warn!(address = %addr, error = %source, "cannot listen on this address of APP_HOST; skipped");
                skipped = Some(StartError::Bind { addr, source });
            }
            Err(source) => return Err(StartError::Bind { addr, source }),
        }
    }
    match (first, skipped) {
        (Some(first), _) => Ok((listeners, first)),
        (None, Some(err)) => Err(err),
        (None, None) => Err(StartError::Config(
            "APP_HOST gave no address to listen on".to_string(),
        )),
    }
}

/// The machine has no such address or address family; unlike "in use" or "permission
/// denied", nothing an operator meant is lost by skipping it.
fn cannot_listen_here(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::AddrNotAvailable
        || err.raw_os_error() == Some(libc::EAFNOSUPPORT)
}

/// A service bound to its port, ready to run.
pub struct Application {
    /// One per address of APP_HOST (at least one).
    listeners: Vec<TcpListener>,
    /// The first listener's address.
    address: SocketAddr,
    router: axum::Router,
    connection_limits: ConnectionLimits,
    service: Service,
    dispatcher: Dispatcher,
    config: Config,
    dashboard: Arc<crate::ui::History>,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        Self::build_with_lookup(config, DnsLookup::system()).await
    }

    /// As [`build`](Self::build), resolving callback host names through `lookup`: the seam
    /// that lets tests map made-up names to chosen addresses without a DNS server.
    pub async fn build_with_lookup(
        config: Config,
        lookup: Arc<dyn NameLookup>,
    ) -> Result<Self, StartError> {
        config.validate().map_err(StartError::Config)?;
        // Resolved before anything else is opened: a name that does not resolve is a setting
        // to fix, found before the database is touched.
        let listen_addresses = listen_addresses(&config.host, config.port).await?;
        let max_connections = fit_connections(&config)?;
        let signer = config.callback_signing_secret.clone().unwrap_or_default();

        let store = Store::open(
            &config.database_url,
            config.async_queue_max_size,
            config.database_pool_size,
        )
        .await
        .map_err(|source| StartError::Store {
            url: redact_url(&config.database_url),
            source,
        })?
        .with_priority_step(Duration::from_secs_f64(config.priority_step_seconds));
        tracing::info!(database = %redact_url(&config.database_url), "database ready");

        let pool = ComputePool::new(
            config.compute_threads(),
            usize::try_from(config.compute_queue_size).unwrap_or(usize::MAX),
            config.work_duration(),
        )
        .map_err(StartError::Pool)?;

        let guard = Guard::new(
            config.callback_block_private_ips,
            config.callback_allowed_hosts.clone().unwrap_or_default(),
        );
        let resolver = GuardedResolver::new(lookup, guard.clone());
        let client = CallbackClient::new(
            config.callback_timeout(),
            signer,
            resolver,
            usize::try_from(config.per_destination_cap()).unwrap_or(usize::MAX),
        )?;

        let wakeup = Wakeup::default();
        // Identifies this process's leases, and this instance among those sharing the rate
        // limits.
        let owner = Uuid::new_v4().to_string();
        let spans = match config.otlp_traces_endpoint() {
            Some(endpoint) => {
                let export = SpanExport::start(&endpoint, &owner)?;
                tracing::info!(endpoint = %redact_url(&endpoint), "exporting delivery spans over OTLP");
                Some(export)
            }
            None => None,
        };
        let workers = WorkerStats::default();
        let metrics = Arc::new(Metrics::new());
        let destinations = Destinations::new(config.isolation_policy());
        let running = crate::delivery::Running::default();
        let long_lived = LongLived::new(
            long_lived_cap(config.http_max_long_lived, max_connections)?,
            config.http_stream_max_lifetime(),
        );
        let service = Service {
            owner: owner.clone(),
            store: store.clone(),
            pool: pool.clone(),
            wakeup: wakeup.clone(),
            workers: workers.clone(),
            queue_capacity: config.async_queue_max_size,
            guard,
            control_limits: config.control_limits(),
            retention: config.retention(),
            max_stored_requests: config.max_stored_requests,
            list_count_limit: config.list_count_limit,
            health_write_wait: config.health_write_wait(),
            worker_count: config.async_worker_count,
            metrics: Arc::clone(&metrics),
            destinations: Arc::clone(&destinations),
            running: running.clone(),
            sync_records: tokio_util::task::TaskTracker::new(),
            sync_abandon: CancellationToken::new(),
            long_lived: long_lived.clone(),
            held_jobs: Arc::default(),
            controls: Arc::new(tokio::sync::Semaphore::new(
                crate::service::CONTROLS_IN_FLIGHT,
            )),
        };
        let dispatcher = Dispatcher {
            store,
            pool,
            client,
            policy: config.retry_policy(),
            workers: config.async_worker_count,
            owner,
            lease: config.job_lease(),
            wakeup,
            stats: workers,
            metrics,
            destinations,
            slow_after: config.callback_slow_after(),
            running,
            spans,
        };
        let dashboard = Arc::new(crate::ui::History::default());
        let state = AppState {
            long_lived,
            dashboard: Arc::clone(&dashboard),
            service: Arc::new(service.clone()),
            admin_token: config.admin_token().map(Arc::from),
            api_token: config.api_token().map(Arc::from),
            body_limits: BodyLimits {
                max_bytes: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
                read_timeout: config.http_body_timeout(),
                drain_max_bytes: config.http_drain_max_bytes,
                drain_timeout: config.http_drain_timeout(),
            },
        };
        let router = http::router(state);
        let connection_limits = ConnectionLimits {
            header_timeout: config.http_header_timeout(),
            send_timeout: config.http_send_timeout(),
            max_header_bytes: config.http_max_header_bytes as usize,
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        };

        let (listeners, address) = bind(&listen_addresses).await?;
        Ok(Self {
            listeners,
            address,
            router,
            connection_limits,
            service,
            dispatcher,
            config,
            dashboard,
        })
    }

    /// The address the service listens on (the first, if APP_HOST named several).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` is cancelled, then stops in order (see the module docs).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let Self {
            listeners,
            address: _,
            router,
            connection_limits,
            service,
            dispatcher,
            config,
            dashboard,
        } = self;
        let grace = config.shutdown_grace();
        for address in listeners.iter().filter_map(|l| l.local_addr().ok()) {
            tracing::info!(%address, "listening");
        }
        announce(&listeners, &config);

        let background = CancellationToken::new();
        // The grace period runs from the signal, for sync work as for HTTP and deliveries:
        // sync work still running when it ends is abandoned (and recorded as failed).
        let mut sync_deadline = tokio::spawn({
            let shutdown = shutdown.clone();
            let abandon = service.sync_abandon.clone();
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
                abandon.cancel();
            }
        });
        // Until the last sync request is recorded, which may be after the dispatcher has
        // drained: other instances fail the sync requests of an instance that stops marking.
        let alive = tokio::spawn({
            let store = service.store.clone();
            let owner = service.owner.clone();
            let stop = background.clone();
            async move { store.keep_marked_alive(&owner, stop).await }
        });
        let delivery = tokio::spawn(dispatcher.run(shutdown.clone(), grace));
        let notifications = tokio::spawn({
            let store = service.store.clone();
            let wakeup = service.wakeup.clone();
            let stop = background.clone();
            async move { store.listen(move |heard| wakeup.heard(heard), stop).await }
        });
        let maintenance = tokio::spawn({
            let store = service.store.clone();
            let stop = background.clone();
            async move { store.maintain(stop).await }
        });
        let remote_changes = tokio::spawn({
            let store = service.store.clone();
            let stop = background.clone();
            async move { store.watch_remote_changes(stop).await }
        });
        // Clients waiting on a request must not hold the graceful shutdown for their whole
        // wait: at the signal they are answered with what there is.
        tokio::spawn({
            let store = service.store.clone();
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                store.end_waits();
            }
        });
        // Stops (and ends the dashboard's live streams) as soon as shutdown begins, so that an
        // open dashboard does not hold the graceful shutdown for its whole grace period.
        let sampler = tokio::spawn(crate::ui::history::run(
            service.clone(),
            dashboard,
            shutdown.clone(),
        ));
        let cleanup = tokio::spawn(retention::run(
            service.clone(),
            config.cleanup_interval(),
            background.clone(),
        ));

        // Returns once every connection is closed, within the grace period of the shutdown.
        http::serve(
            listeners,
            router,
            connection_limits,
            shutdown.clone(),
            grace,
        )
        .await;
        // The dispatcher bounds its own drain by the same grace period.
        if let Err(err) = delivery.await {
            tracing::error!(error = %err, "delivery task failed");
        }
        // A sync request whose client hung up is still being recorded (its work cancelled):
        // the record must reach the store before it closes, or the request stays
        // `processing` (and on PostgreSQL holds its idempotency key) until found stale.
        // Waited for until the grace period ends; then the work still running is abandoned,
        // and its requests are recorded as failed (a write each, bounded on its own).
        service.sync_records.close();
        let records = service.sync_records.wait();
        tokio::pin!(records);
        let recorded = tokio::select! {
            () = &mut records => true,
            _ = &mut sync_deadline => {
                tokio::time::timeout(ABANDONED_SYNC_RECORDS, records).await.is_ok()
            }
        };
        sync_deadline.abort();
        if !recorded {
            tracing::warn!("sync requests still being recorded at shutdown were abandoned");
        }
        background.cancel();
        let _ = alive.await;
        let _ = cleanup.await;
        let _ = sampler.await;
        let _ = notifications.await;
        let _ = remote_changes.await;
        let _ = maintenance.await;
        service.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::{bind, exposure_warnings};

    #[test]
    fn an_open_service_is_warned_of() {
        let loopback: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let v6_loopback: SocketAddr = "[::1]:8000".parse().unwrap();
        let every: SocketAddr = "0.0.0.0:8000".parse().unwrap();
        let public: SocketAddr = "192.0.2.10:8000".parse().unwrap();
        assert!(exposure_warnings(&[loopback, v6_loopback], false, true).is_empty());
        assert!(
            exposure_warnings(&[every], true, true).is_empty(),
            "a token guards it"
        );
        for open in [every, public] {
            let warnings = exposure_warnings(&[loopback, open], false, true);
            assert_eq!(warnings.len(), 1, "{open}");
            assert!(warnings[0].contains("no APP_API_TOKEN"), "{open}");
        }
        let warnings = exposure_warnings(&[loopback], true, false);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("SSRF protection is off"));
    }

    #[tokio::test]
    async fn every_address_of_a_name_is_listened_on_at_one_port() {
        let v4: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let v6: SocketAddr = "[::1]:0".parse().unwrap();
        if std::net::TcpListener::bind(v6).is_err() {
            eprintln!("no IPv6 loopback here: not tried");
            return;
        }
        let (listeners, first) = bind(&[v4, v6]).await.unwrap();
        let addresses: Vec<SocketAddr> =
            listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        assert_eq!(addresses.len(), 2);
        assert_eq!(first, addresses[0]);
        assert!(addresses[0].is_ipv4() && addresses[1].is_ipv6());
        assert_ne!(first.port(), 0);
        assert_eq!(addresses[0].port(), addresses[1].port());
    }

    #[tokio::test]
    async fn an_address_this_machine_does_not_have_is_skipped_only_beside_others() {
        // TEST-NET-1: documentation only, never an address of this machine.
        let absent: SocketAddr = "192.0.2.1:0".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (listeners, first) = bind(&[absent, loopback]).await.unwrap();
        assert_eq!(listeners.len(), 1);
        assert!(first.ip().is_loopback());
        assert!(bind(&[absent]).await.is_err());
        // Taken is not absent: that stops the start.
        let holder = std::net::TcpListener::bind(loopback).unwrap();
        let taken = holder.local_addr().unwrap();
        let beside: SocketAddr = SocketAddr::new([127, 0, 0, 2].into(), taken.port());
        assert!(bind(&[beside, taken]).await.is_err());
    }
}
