//! The one shutdown signal every long-running task listens to.
//!
//! A [`CancellationToken`] is cancelled once, when SIGTERM or SIGINT arrives (or a test asks);
//! each task holds a clone and stops at its next safe point. Order of the stop is decided in
//! `app.rs`: stop accepting, drain HTTP, stop claiming jobs, drain deliveries, close the store.

pub use tokio_util::sync::CancellationToken;

/// Waits for SIGTERM or SIGINT (Ctrl-C).
pub async fn terminate_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT, shutting down"),
        () = terminate => tracing::info!("received SIGTERM, shutting down"),
    }
}
