//! The background retention job (SPEC §6): every `APP_CLEANUP_INTERVAL_SECONDS`, delete
//! finished requests past their retention and the oldest beyond the stored-request cap.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::service::Service;

pub async fn run(service: Service, interval: Duration, stop: CancellationToken) {
    // The first run is one interval after start, not at start: a restart loop must not turn
    // into a cleanup loop.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        // Each chunk is its own transaction, so dropping the cleanup at shutdown between
        // chunks loses nothing; the next run carries on.
        tokio::select! {
            result = service.cleanup() => {
                if let Err(err) = result {
                    tracing::error!(error = %err, "retention cleanup failed");
                }
            }
            () = stop.cancelled() => return,
        }
    }
}
