//! The accept loop: our own, on hyper's HTTP/1 connection, so that no client can hold the
//! service's connections or file descriptors without bound.
//!
//! - **Connection cap.** A permit of a semaphore is taken *before* `accept`: at the cap the
//!   loop stops accepting, and further connections wait in the kernel's accept queue (the
//!   listen backlog), which completes their TCP handshakes but gives them no file
//!   descriptor of ours; past the backlog the kernel drops SYNs and clients retry. A permit
//!   lives as long as its connection's task, and comes back when the task ends or is dropped.
//! - **Header read timeout.** hyper 1.12 starts the header-read timer as soon as a connection
//!   is ready for its next request, not at the first byte of it: the same timer that cuts off
//!   a client trickling its headers (slowloris) also closes a keep-alive connection left idle
//!   that long. There is no separate idle timeout, and no need for one.
//! - **Send timeout.** A client that stops reading its responses stalls our writes once the
//!   socket buffers are full; hyper has no write timeout, so [`SendTimeout`] fails a write
//!   that makes no progress for that long, and the connection is closed.
//! - **Body timeout** is not here but in the body extractor (`extract.rs`), which knows when a
//!   handler starts reading and can answer 408 in the API's error shape.
//! - **Several addresses.** A host name may stand for several addresses (`localhost`: 127.0.0.1
//!   and ::1); one loop accepts from every listener, under the one connection cap, starting
//!   each search after the listener it last served so that a busy address cannot starve
//!   another.
//! - **Shutdown.** On the token, the loop stops and drops the listeners at once (new connections
//!   are refused); every connection is told to finish its in-flight request and close (idle
//!   ones close now). Connections still busy when the grace period ends are dropped, which
//!   drops their handlers too.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the loop pauses after an accept error that is about this process (out of file
/// descriptors or memory), instead of spinning on it; the pending connections stay queued.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(250);

/// The bounds every connection is held to.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Time to receive a request's head; also the keep-alive idle timeout (module docs).
    pub header_timeout: Duration,
    /// Longest a write to the client may make no progress before the connection is closed.
    pub send_timeout: Duration,
    /// Largest request line plus headers; hyper answers 431 beyond it.
    pub max_header_bytes: usize,
    /// Connections served at once.
    pub max_connections: usize,
}

/// Serves `router` on `listeners` until `shutdown` is cancelled, then lets in-flight requests
/// finish for at most `grace` (see the module docs). Returns when every connection is closed.
pub async fn serve(
    listeners: Vec<TcpListener>,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes);
    let http = Arc::new(http);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    // Cancelled when the grace period is over: connections still open are dropped.
    let abort = CancellationToken::new();
    let mut next_listener = 0;

    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                // Never closed; if it were, serving without a cap would be worse than stopping.
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = accept_any(&listeners, &mut next_listener) => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) if is_per_connection(&err) => continue,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot accept a connection; pausing");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                    }
                }
            },
        };
        connections.spawn(serve_connection(
            stream,
            router.clone(),
            Arc::clone(&http),
            limits.send_timeout,
            shutdown.clone(),
            abort.clone(),
            permit,
        ));
    }
    // New connections are refused from here on, not left to wait in the backlog.
    drop(listeners);
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            "grace period over with HTTP requests still in flight; closing their connections"
        );
        abort.cancel();
        connections.wait().await;
    }
}

/// The next connection waiting on any of `listeners`, searched from `next` on (see the module
/// docs); `next` moves past the listener it came from.
async fn accept_any(
    listeners: &[TcpListener],
    next: &mut usize,
) -> io::Result<(TcpStream, std::net::SocketAddr)> {
    std::future::poll_fn(|cx| {
        let count = listeners.len();
        for offset in 0..count {
            let index = (*next + offset) % count;
            if let Poll::Ready(accepted) = listeners[index].poll_accept(cx) {
                *next = (index + 1) % count;
                return Poll::Ready(accepted);
            }
        }
        Poll::Pending
    })
    .await
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    http: Arc<http1::Builder>,
    send_timeout: Duration,
    shutdown: CancellationToken,
    abort: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    // Responses are written whole; Nagle's algorithm would only delay the last segment.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
    let io = TokioIo::new(SendTimeout::new(stream, send_timeout));
    let connection = http.serve_connection(io, TowerToHyperService::new(router));
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                () = abort.cancelled() => Ok(()),
            }
        }
    };
    // A client's own misbehaviour (timeouts, resets, malformed requests) is routine here
    // and logged at debug level only, so that a hostile client cannot flood the log.
    if let Err(err) = result {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// Errors about one incoming connection (it was reset before we took it), not about us.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A socket whose writes fail once they have made no progress for `timeout` (a client that
/// stopped reading), instead of waiting forever. Reads pass through: the header and body
/// timeouts bound them.
struct SendTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Running while a write (or flush, or shutdown) is pending; reset by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> SendTimeout<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}
