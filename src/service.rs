//! What each endpoint does, below HTTP: the service's operations on the store, the compute
//! pool and the delivery queue. Handlers parse and map; the rules live here.

use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;

use crate::delivery::guard::Guard;
use crate::delivery::{Wakeup, WorkerStats};
use crate::input::{AsyncInput, WorkInput};
use crate::metrics::{ConnectionLabels, Metrics};
use crate::model::{Health, HealthReport, RequestList, RequestRecord, WorkResult, payload_hash};
use crate::store::{
    CleanupReport, ListFilter, NewAsyncRequest, NewRequest, Redelivery, Store, StoreError,
};
use crate::work::{ComputePool, PoolError};

/// A sync request still `processing` after this long lost its instance: no unit of work
/// takes nearly so long.
const STALE_SYNC: chrono::Duration = chrono::Duration::hours(1);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("the service is overloaded")]
    Overloaded,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the work could not be completed: {0}")]
    Work(String),
}

#[derive(Clone)]
pub struct Service {
    pub store: Store,
    pub pool: ComputePool,
    pub wakeup: Wakeup,
    pub workers: WorkerStats,
    pub queue_capacity: u64,
    /// The SSRF policy, shared with the callback client.
    pub guard: Guard,
    pub retention: std::time::Duration,
    pub max_stored_requests: u64,
    pub worker_count: u32,
    pub metrics: Arc<Metrics>,
}

impl Service {
    /// Does the work now and records it (`processing → completed`).
    pub async fn run_sync(&self, input: WorkInput) -> Result<WorkResult, ServiceError> {
        let id = Uuid::now_v7().to_string();
        let new = NewRequest {
            id: id.clone(),
            payload_hash: payload_hash(&input.data),
            iterations: input.iterations,
            created_at: Utc::now(),
        };
        // Ask the pool first: under overload nothing is written for a request that is refused.
        let work = self
            .pool
            .submit(input.data, input.iterations)
            .map_err(|err| match err {
                PoolError::Busy => ServiceError::Overloaded,
                PoolError::Closed => ServiceError::Work(err.to_string()),
            })?;
        self.store.sync_started(new.clone())?;
        let store = self.store.clone();
        let iterations = input.iterations;
        // The rest runs in its own task so that the record is completed even if the client
        // hangs up mid-request: a sync request is never left `processing`.
        let finish = tokio::spawn(async move {
            match work.wait().await {
                Ok(output) => {
                    let result = WorkResult {
                        request_id: id.clone(),
                        input_hash: output.hashes.input_hash,
                        output_hash: output.hashes.output_hash,
                        iterations,
                        processing_time_ms: output.processing_time.as_secs_f64() * 1000.0,
                    };
                    store.sync_finished(&new, Ok(&result)).await?;
                    Ok(result)
                }
                Err(err) => {
                    store.sync_finished(&new, Err(&err.to_string())).await?;
                    Err(ServiceError::Work(err.to_string()))
                }
            }
        });
        finish
            .await
            .map_err(|err| ServiceError::Work(err.to_string()))?
    }

    /// Records an async request durably and queues it; returns its id once committed.
    pub async fn submit_async(&self, input: AsyncInput) -> Result<String, ServiceError> {
        let id = Uuid::now_v7().to_string();
        let new = NewAsyncRequest {
            request: NewRequest {
                id: id.clone(),
                payload_hash: payload_hash(&input.work.data),
                iterations: input.work.iterations,
                created_at: Utc::now(),
            },
            data: input.work.data,
            callback_url: input.callback_url.into(),
        };
        match self.store.submit_async(new).await {
            Ok(()) => {
                tracing::info!(request_id = %id, "async request accepted");
                self.wakeup.wake();
                Ok(id)
            }
            Err(StoreError::QueueFull) => Err(ServiceError::Overloaded),
            Err(err) => Err(err.into()),
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<RequestRecord>, ServiceError> {
        Ok(self.store.get(id).await?)
    }

    pub async fn list(&self, filter: ListFilter) -> Result<RequestList, ServiceError> {
        Ok(self.store.list(filter).await?)
    }

    pub async fn health(&self) -> HealthReport {
        let database_ok = self.store.ping().await;
        let queue_size = self.store.queue_size().await.unwrap_or(0);
        let status = if !database_ok {
            Health::Unhealthy
        } else if queue_size * 10 > self.queue_capacity * 9 {
            Health::Degraded
        } else {
            Health::Healthy
        };
        HealthReport {
            status,
            version: env!("CARGO_PKG_VERSION"),
            queue_size,
            queue_capacity: self.queue_capacity,
            active_workers: self.workers.active(),
            database_ok,
        }
    }

    /// The metrics as OpenMetrics text, with the state gauges read now.
    pub async fn metrics_text(&self) -> String {
        let m = &self.metrics;
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        if let Ok(size) = self.store.queue_size().await {
            m.queue_size.set(gauge(size));
        }
        m.queue_capacity.set(gauge(self.queue_capacity));
        m.delivery_workers_active.set(gauge(self.workers.active()));
        m.delivery_workers.set(i64::from(self.worker_count));
        m.compute_queue_size.set(gauge(self.pool.queued() as u64));
        m.compute_queue_capacity
            .set(gauge(self.pool.queue_capacity() as u64));
        m.compute_busy_threads.set(gauge(self.pool.busy() as u64));
        m.compute_threads.set(gauge(self.pool.threads() as u64));
        let db = self.store.pool_stats();
        m.db_connections
            .get_or_create(&ConnectionLabels { state: "in_use" })
            .set(gauge(db.in_use));
        m.db_connections
            .get_or_create(&ConnectionLabels { state: "idle" })
            .set(gauge(db.idle));
        m.db_writer_queue.set(gauge(db.writer_queue));
        m.encode()
    }

    /// Queues a `callback_failed` request for a fresh round of delivery attempts.
    pub async fn redeliver(&self, id: &str) -> Result<Redelivery, ServiceError> {
        match self.store.redeliver(id).await {
            Ok(outcome) => {
                if outcome == Redelivery::Queued {
                    self.wakeup.wake();
                }
                Ok(outcome)
            }
            Err(StoreError::QueueFull) => Err(ServiceError::Overloaded),
            Err(err) => Err(err.into()),
        }
    }

    /// Runs the retention rules now (SPEC §6).
    pub async fn cleanup(&self) -> Result<CleanupReport, ServiceError> {
        let cutoff = Utc::now()
            - chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        let report = self.store.cleanup(cutoff, self.max_stored_requests).await?;
        let failed = self.store.fail_stale_sync(Utc::now() - STALE_SYNC).await?;
        if failed > 0 {
            tracing::warn!(
                failed,
                "failed sync requests left processing by a stopped instance"
            );
        }
        if report.expired + report.over_limit > 0 {
            tracing::info!(
                expired = report.expired,
                over_limit = report.over_limit,
                "retention cleanup"
            );
        }
        Ok(report)
    }
}
