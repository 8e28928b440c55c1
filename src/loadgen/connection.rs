//! The loadgen's HTTP client: each worker owns one keep-alive HTTP/1.1 connection and drives
//! it in its own task, as wrk does with its connections.
//!
//! Why not a pooled client (reqwest)? A load generator shares the machine with what it
//! measures, so every microsecond it spends per request is taken from the server. Measured
//! on `POST /sync` with `iterations=1` (bench/loadgen_overhead.sh): with one shared reqwest
//! client the loadgen spent about 16 µs of CPU per request against wrk's 9 µs (URL parsing,
//! the pool's lock, a channel hop and a wake-up between the worker's task and the
//! connection's task) and reached 0.75 of wrk's rate on the same server. Here the request
//! head is prepared once, the connection is polled by the task that sends on it (no hop, no
//! wake-up of another task), and nothing is looked up per request.
//!
//! A connection that breaks, times out or is closed by the server is dropped and the next
//! request opens a new one; a request that finds its idle connection closed before sending
//! anything is retried once on a new one (it never left, so nothing is sent twice).
//!
//! Plain `http://` only: the service serves plain HTTP, and a TLS layer in front of it
//! would be measured along with it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

type Driver = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// Why an exchange failed. (A timeout is the caller's: it drops the exchange.)
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// No TCP connection could be opened.
    #[error("{0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed: connection closed or reset mid-way, unparsable answer.
    #[error("{0}")]
    Http(#[source] hyper::Error),
}

/// Where requests go: the resolved addresses and the prepared parts of every request.
#[derive(Debug, Clone)]
pub struct Target {
    addrs: Vec<SocketAddr>,
    host: HeaderValue,
    user_agent: HeaderValue,
    content_type: HeaderValue,
}

/// The parts of an `http://` URL a [`Target`] needs, checked.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("only http:// URLs are supported")]
    Scheme,
    #[error("the URL has no host")]
    NoHost,
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("invalid Host header {0:?}")]
    HostHeader(String),
}

impl Target {
    /// Resolves `url`'s host once: a load run should not measure DNS, nor depend on it
    /// after it has started.
    pub async fn resolve(url: &url::Url) -> Result<Self, TargetError> {
        if url.scheme() != "http" {
            return Err(TargetError::Scheme);
        }
        let host = url.host_str().ok_or(TargetError::NoHost)?;
        let port = url.port_or_known_default().unwrap_or(80);
        // `host_str` keeps IPv6 brackets, which the resolver does not want.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|source| TargetError::Resolve {
                host: host.to_string(),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            return Err(TargetError::NoAddress {
                host: host.to_string(),
            });
        }
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        let host = HeaderValue::from_str(&authority)
            .map_err(|_| TargetError::HostHeader(authority.clone()))?;
        Ok(Self {
            addrs,
            host,
            user_agent: HeaderValue::from_static(concat!(
                "syncasync-loadgen/",
                env!("CARGO_PKG_VERSION")
            )),
            content_type: HeaderValue::from_static("application/json"),
        })
    }

    /// Opens a TCP connection to the first address that accepts one.
    async fn connect(&self) -> Result<TcpStream, std::io::Error> {
        let mut last = None;
        for addr in &self.addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Requests are small and latency is what we measure: no Nagle delay.
                    stream.set_nodelay(true)?;
                    return Ok(stream);
                }
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
    }

    fn request(&self, method: Method, path: &Uri, body: Bytes) -> Request<Full<Bytes>> {
        let has_body = !body.is_empty();
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = path.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(USER_AGENT, self.user_agent.clone());
        if has_body {
            headers.insert(CONTENT_TYPE, self.content_type.clone());
        }
        request
    }
}

/// An open connection: the handle to send on and the future that does its I/O.
struct Live {
    sender: SendRequest<Full<Bytes>>,
    driver: Pin<Box<Driver>>,
    /// The driver has finished (the connection is closed); it must not be polled again.
    closed: bool,
}

/// One worker's connection, opened on first use and reopened after a failure.
pub struct Connection {
    target: std::sync::Arc<Target>,
    live: Option<Live>,
}

impl Connection {
    pub fn new(target: std::sync::Arc<Target>) -> Self {
        Self { target, live: None }
    }

    /// `POST path` with a JSON `body`; the status and the whole answer's body.
    pub async fn post(
        &mut self,
        path: &Uri,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ExchangeError> {
        self.exchange(Method::POST, path, body).await
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &Uri) -> Result<(StatusCode, Bytes), ExchangeError> {
        self.exchange(Method::GET, path, Bytes::new()).await
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &Uri,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), ExchangeError> {
        // The connection is taken out for the exchange and put back only if it ends well:
        // an exchange that fails, or is dropped by the caller's timeout, leaves no
        // connection in an unknown state behind.
        let mut live = loop {
            let reused = self.live.is_some();
            let mut live = match self.live.take() {
                Some(live) => live,
                None => self.open().await?,
            };
            // A reused connection may have been closed by the server while idle; that
            // shows here, before anything is sent, so one retry on a fresh connection is
            // safe. A fresh connection gets no second chance.
            match drive(live.sender.ready(), &mut live.driver, &mut live.closed).await {
                Ok(()) => break live,
                Err(err) if !reused => return Err(ExchangeError::Http(err)),
                Err(_) => continue,
            }
        };
        let request = self.target.request(method, path, body);
        let sender = &mut live.sender;
        let exchange = async move {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let result = drive(exchange, &mut live.driver, &mut live.closed).await;
        if result.is_ok() && !live.closed {
            self.live = Some(live);
        }
        result.map_err(ExchangeError::Http)
    }

    async fn open(&self) -> Result<Live, ExchangeError> {
        let stream = self
            .target
            .connect()
            .await
            .map_err(ExchangeError::Connect)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ExchangeError::Http)?;
        Ok(Live {
            sender,
            driver: Box::pin(driver),
            closed: false,
        })
    }
}

/// Awaits `work` while polling the connection's driver, which does the socket I/O that
/// `work` waits for. Once the driver finishes (connection closed), `work` is awaited alone:
/// it then ends with the error hyper hands it.
async fn drive<F: Future>(work: F, driver: &mut Pin<Box<Driver>>, closed: &mut bool) -> F::Output {
    let mut work = pin!(work);
    loop {
        if *closed {
            return work.await;
        }
        tokio::select! {
            biased;
            output = &mut work => return output,
            _ = driver.as_mut() => *closed = true,
        }
    }
}
