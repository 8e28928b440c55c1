//! Turning callback host names into addresses.
//!
//! Callers choose the names, so a lookup must cost next to nothing however long it waits:
//! [`DnsLookup`] asks the name servers of the system's configuration (`/etc/resolv.conf`,
//! after `/etc/hosts`) asynchronously, so a name whose servers never answer costs a timer
//! until the resolver's timeout, not a thread. (The C library's `getaddrinfo` blocks a
//! thread of tokio's blocking pool per lookup: a caller inventing names under a domain whose
//! servers never answer held all 512 of them, and every other lookup waited behind.)

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// What a [`NameLookup`] returns: every address of the name.
pub type LookupFuture = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;

/// Turns a name into addresses. A seam so that tests can map made-up names to chosen
/// addresses without a DNS server.
pub trait NameLookup: Send + Sync + 'static {
    fn lookup(&self, host: String) -> LookupFuture;
}

/// Queries in flight at once per name-server connection. Each delivery to a name not in the
/// cache is one; the resolver's default (32) would refuse the rest of a burst of deliveries
/// to new names outright.
const MAX_ACTIVE_QUERIES: usize = 1024;

/// Asynchronous lookups, as the system is configured, with a cache (bounded, by TTL).
pub struct DnsLookup(TokioResolver);

impl DnsLookup {
    /// The system's configuration, or `getaddrinfo` where it cannot be read (a container
    /// without `/etc/resolv.conf`).
    pub fn system() -> Arc<dyn NameLookup> {
        let built = TokioResolver::builder_tokio().and_then(|mut builder| {
            builder.options_mut().max_active_requests = MAX_ACTIVE_QUERIES;
            builder.build()
        });
        match built {
            Ok(resolver) => Arc::new(Self(resolver)),
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    "cannot read the system's DNS configuration: callback host names are \
                     looked up with getaddrinfo, a blocking thread each"
                );
                Arc::new(SystemLookup)
            }
        }
    }

    /// Lookups with `config` and `options` (the system's are read by [`DnsLookup::system`]).
    pub fn with_config(config: ResolverConfig, mut options: ResolverOpts) -> std::io::Result<Self> {
        options.max_active_requests = MAX_ACTIVE_QUERIES;
        TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .map(Self)
            .map_err(std::io::Error::other)
    }
}

impl NameLookup for DnsLookup {
    fn lookup(&self, host: String) -> LookupFuture {
        let resolver = self.0.clone();
        Box::pin(async move {
            let found = resolver
                .lookup_ip(host.as_str())
                .await
                .map_err(std::io::Error::other)?;
            Ok(found.iter().collect())
        })
    }
}

/// The C library's resolver (`getaddrinfo`), on a blocking thread per lookup.
pub struct SystemLookup;

impl NameLookup for SystemLookup {
    fn lookup(&self, host: String) -> LookupFuture {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::{Duration, Instant};

    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts};

    use super::*;

    /// A resolver whose only name server is a UDP socket on loopback that takes every query
    /// and never answers.
    fn lookup_with_a_silent_name_server(silent: SocketAddr, timeout: Duration) -> DnsLookup {
        let mut udp = ConnectionConfig::udp();
        udp.port = silent.port();
        let server = NameServerConfig::new(silent.ip(), true, vec![udp]);
        let mut options = ResolverOpts::default();
        options.timeout = timeout;
        options.attempts = 1;
        options.use_hosts_file = ResolveHosts::Always;
        DnsLookup::with_config(ResolverConfig::from_name_servers(vec![server]), options).unwrap()
    }

    /// A thousand lookups of invented names whose server never answers (more than tokio's
    /// 512 blocking threads) leave every other lookup, and the blocking pool, free: a name in
    /// the hosts file answers at once, and the hung lookups end as errors at their timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lookups_that_never_get_an_answer_hold_no_thread() {
        let silent = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let timeout = Duration::from_secs(3);
        let lookup = Arc::new(lookup_with_a_silent_name_server(
            silent.local_addr().unwrap(),
            timeout,
        ));
        let hung: Vec<_> = (0..1000)
            .map(|n| tokio::spawn(lookup.lookup(format!("invented-{n}.example.com"))))
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;

        let started = Instant::now();
        let local = lookup.lookup("localhost".into()).await.unwrap();
        assert!(
            local.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{local:?}"
        );
        tokio::task::spawn_blocking(|| ()).await.unwrap();
        assert!(
            started.elapsed() < timeout / 3,
            "waited {:?} behind the hung lookups",
            started.elapsed()
        );
        for lookup in hung {
            assert!(lookup.await.unwrap().is_err(), "the silent server answered");
        }
    }
}
