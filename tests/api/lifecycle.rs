//! Each rule of a request's life cycle (`store::Transition`), carried out by the suite's
//! backend: every transition is made through the `Store`, and the row it leaves is read back
//! with plain SQL and checked against what `Transition::status_after` and
//! `Transition::effect` say, field by field. Run on SQLite and on PostgreSQL, this is what
//! keeps the two backends' SQL to one set of rules.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use syncasync::delivery::destinations::{Rooms, destination_of_str};
use syncasync::model::{DeliveryAttempt, Status, WorkResult};
use syncasync::store::{
    ABANDONED_SYNC_ERROR, AttemptOutcome, Cancellation, Change, FinishedWork, IdempotencyKey, Job,
    MadeDue, NewAsyncRequest, NewRequest, Recorded, Redelivery, Store, Submitted, Tally,
    Transition,
};
use tempfile::TempDir;

use crate::helpers::fresh_database;

const OWNER: &str = "lifecycle-test";
const LEASE: Duration = Duration::from_secs(60);
const CALLBACK: &str = "http://127.0.0.1:9/hook";

/// What the rules say about a request's row, read with plain SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    status: Status,
    completed: bool,
    delivered: bool,
    queued: bool,
    leased: bool,
    unrecorded_claims: i64,
    attempts: i64,
    round_start_attempts: i64,
    holds_key: bool,
    error: Option<String>,
}

/// `ROW_SQL`'s columns as PostgreSQL types them.
type PgRowColumns = (
    String,
    bool,
    bool,
    bool,
    bool,
    i32,
    i32,
    i32,
    bool,
    Option<String>,
);

const ROW_SQL: &str = "SELECT status, completed_at IS NOT NULL, delivered_at IS NOT NULL,
        next_attempt_at IS NOT NULL,
        lease_token IS NOT NULL, unrecorded_claims, callback_attempts, round_start_attempts,
        idempotency_key IS NOT NULL, error
     FROM requests WHERE id = ";

/// The store under test and a second way into its database.
struct Bench {
    store: Store,
    url: String,
    _dir: TempDir,
}

impl Bench {
    async fn open() -> Self {
        Self::with_queue_bound(100).await
    }

    async fn with_queue_bound(bound: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = fresh_database(dir.path()).await;
        let store = Store::open(&url, bound, 4).await.expect("open the store");
        Bench {
            store,
            url,
            _dir: dir,
        }
    }

    async fn row(&self, id: &str) -> Option<Row> {
        if let Some(path) = self.url.strip_prefix("sqlite://") {
            let conn = rusqlite::Connection::open(path).expect("open the SQLite file");
            let mut statement = conn
                .prepare(&format!("{ROW_SQL}?1"))
                .expect("prepare the row query");
            let mut rows = statement.query([id]).expect("query the row");
            let row = rows.next().expect("read the row")?;
            let status: String = row.get(0).expect("status");
            Some(Row {
                status: Status::parse(&status).expect("a known status"),
                completed: row.get(1).expect("completed"),
                delivered: row.get(2).expect("delivered"),
                queued: row.get(3).expect("queued"),
                leased: row.get(4).expect("leased"),
                unrecorded_claims: row.get(5).expect("unrecorded_claims"),
                attempts: row.get(6).expect("callback_attempts"),
                round_start_attempts: row.get(7).expect("round_start_attempts"),
                holds_key: row.get(8).expect("holds_key"),
                error: row.get(9).expect("error"),
            })
        } else {
            use sqlx::Connection;
            let mut conn = sqlx::postgres::PgConnection::connect(&self.url)
                .await
                .expect("connect to PostgreSQL");
            let row: Option<PgRowColumns> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("{ROW_SQL}$1")))
                    .bind(id)
                    .fetch_optional(&mut conn)
                    .await
                    .expect("query the row");
            row.map(|r| Row {
                status: Status::parse(&r.0).expect("a known status"),
                completed: r.1,
                delivered: r.2,
                queued: r.3,
                leased: r.4,
                unrecorded_claims: r.5.into(),
                attempts: r.6.into(),
                round_start_attempts: r.7.into(),
                holds_key: r.8,
                error: r.9,
            })
        }
    }

    /// Runs `write` (which makes `transition` happen to request `id`) and checks that the row
    /// it leaves is what the rules say, given the row before. Returns the write's answer.
    async fn step<T>(
        &self,
        id: &str,
        transition: Transition,
        write: impl Future<Output = T>,
    ) -> (T, Row) {
        let before = self.row(id).await;
        let queue_before = self.store.queue_size().await.expect("queue size");
        let answer = write.await;
        let after = self
            .row(id)
            .await
            .unwrap_or_else(|| panic!("{transition:?} left no row for {id}"));
        let queue_after = self.store.queue_size().await.expect("queue size");
        assert_follows(transition, before.as_ref(), &after);
        assert_eq!(
            queue_after as i64 - queue_before as i64,
            transition.queue_delta(),
            "{transition:?}: the queue count"
        );
        (answer, after)
    }

    /// Runs a write made under a claim that is not the job's, which the rules say must be
    /// refused, writing nothing.
    async fn refused_without_claim(&self, id: &str, write: impl Future<Output = bool>) {
        let before = self.row(id).await;
        assert!(!write.await, "a write under a claim not held was accepted");
        assert_eq!(
            self.row(id).await,
            before,
            "a refused write changed the row"
        );
    }

    async fn queue(&self, key: Option<&str>) -> String {
        let new = async_request(key);
        let id = new.request.id.clone();
        let (submitted, _) = self
            .step(&id, Transition::Queued, self.store.submit_async(new))
            .await;
        assert_eq!(submitted.expect("queued"), Submitted::Created);
        id
    }

    /// Claims the job `id` (the only one due), checking the claim against the rules.
    async fn claim(&self, id: &str) -> Job {
        let (jobs, _) = self
            .step(
                id,
                Transition::Claimed,
                self.store.claim_due(OWNER, 10, LEASE, &rooms()),
            )
            .await;
        let mut jobs = jobs.expect("claim");
        assert_eq!(jobs.len(), 1, "one job is due");
        let job = jobs.remove(0);
        assert_eq!(job.id, id);
        job
    }

    /// Stores the job's result, checking the write against the rules; returns what it stored.
    async fn store_result(&self, job: &Job) -> FinishedWork {
        let result = FinishedWork::now(work_result(&job.id));
        self.refused_without_claim(&job.id, async {
            self.store
                .store_result(&job.id, "not-the-claim", &result)
                .await
                .expect("store a result")
        })
        .await;
        let (stored, _) = self
            .step(
                &job.id,
                Transition::ResultStored,
                self.store.store_result(&job.id, &job.token, &result),
            )
            .await;
        assert!(stored.expect("store a result"));
        result
    }

    async fn attempt(&self, job: &Job, outcome: AttemptOutcome) -> Row {
        let attempt = delivery_attempt(job.callback_attempts + 1);
        self.refused_without_claim(&job.id, async {
            self.store
                .record_attempt(&job.id, OWNER, "not-the-claim", &attempt, outcome)
                .await
                .expect("record an attempt")
                .is_recorded()
        })
        .await;
        let (recorded, row) = self
            .step(
                &job.id,
                Transition::Attempted(outcome),
                self.store
                    .record_attempt(&job.id, OWNER, &job.token, &attempt, outcome),
            )
            .await;
        assert_eq!(recorded.expect("record an attempt"), Recorded::MovedOn);
        assert_eq!(row.attempts, i64::from(attempt.attempt));
        row
    }
}

/// The row after `transition` against the rules, given the row before (`None`: no row yet).
#[track_caller]
fn assert_follows(transition: Transition, before: Option<&Row>, after: &Row) {
    let what = |field: &str| format!("{transition:?} from {before:?}: {field}");
    assert_eq!(
        Some(after.status),
        transition.status_after(before.map(|b| b.status)),
        "{}",
        what("status")
    );
    let kept = |field: fn(&Row) -> bool| before.is_some_and(field);
    let effect = transition.effect();
    let expect = |change: Change<()>, field: fn(&Row) -> bool| match change {
        Change::Set(()) => true,
        Change::Cleared => false,
        Change::Kept => kept(field),
    };
    assert_eq!(
        after.completed,
        expect(effect.completed, |r| r.completed),
        "{}",
        what("completed")
    );
    assert_eq!(
        after.delivered,
        expect(effect.delivered, |r| r.delivered),
        "{}",
        what("delivered")
    );
    let due = match effect.due {
        Change::Set(_) => Change::Set(()),
        Change::Cleared => Change::Cleared,
        Change::Kept => Change::Kept,
    };
    assert_eq!(
        after.queued,
        expect(due, |r| r.queued),
        "{}",
        what("queued")
    );
    assert_eq!(
        after.leased,
        expect(effect.lease, |r| r.leased),
        "{}",
        what("leased")
    );
    let claims_before = before.map_or(0, |b| b.unrecorded_claims);
    let claims = match effect.unrecorded_claims {
        Tally::Increment => claims_before + 1,
        Tally::Decrement => (claims_before - 1).max(0),
        Tally::Reset => 0,
        Tally::Kept => claims_before,
    };
    assert_eq!(
        after.unrecorded_claims,
        claims,
        "{}",
        what("unrecorded claims")
    );
    assert_eq!(
        after.error.is_some(),
        expect(effect.error, |r| r.error.is_some()),
        "{}",
        what("error")
    );
    if effect.frees_key {
        assert!(!after.holds_key, "{}", what("key freed"));
    } else if let Some(before) = before {
        assert_eq!(after.holds_key, before.holds_key, "{}", what("key kept"));
    }
    if effect.new_round {
        assert_eq!(
            after.round_start_attempts,
            after.attempts,
            "{}",
            what("a new round")
        );
    } else if let Some(before) = before {
        assert_eq!(
            after.round_start_attempts,
            before.round_start_attempts,
            "{}",
            what("the round")
        );
    }
}

fn rooms() -> Rooms {
    Rooms {
        default: 100,
        ..Rooms::default()
    }
}

fn new_request(key: Option<&str>) -> NewRequest {
    NewRequest {
        id: uuid::Uuid::now_v7().to_string(),
        payload_hash: "0".repeat(64),
        iterations: 1,
        created_at: Utc::now(),
        idempotency: key.map(|key| IdempotencyKey {
            key: key.to_string(),
            fingerprint: "fingerprint".into(),
        }),
        trace: None,
    }
}

fn async_request(key: Option<&str>) -> NewAsyncRequest {
    NewAsyncRequest {
        request: new_request(key),
        data: "data".into(),
        callback_url: CALLBACK.into(),
        destination: destination_of_str(CALLBACK),
        controls: Default::default(),
        ordering_key: None,
    }
}

fn work_result(id: &str) -> WorkResult {
    WorkResult {
        request_id: id.into(),
        input_hash: "1".repeat(64),
        output_hash: "2".repeat(64),
        iterations: 1,
        processing_time_ms: 0.5,
    }
}

fn delivery_attempt(attempt: u32) -> DeliveryAttempt {
    DeliveryAttempt {
        attempt,
        started_at: Utc::now(),
        duration_ms: 1.0,
        status_code: Some(500),
        error: Some("HTTP 500".into()),
        response_body: None,
        response_headers: None,
        instance: None,
        note: None,
    }
}

#[tokio::test]
async fn an_async_request_moves_through_retries_failure_and_redelivery_as_the_rules_say() {
    let bench = Bench::open().await;
    let id = bench.queue(Some("async-key")).await;

    let job = bench.claim(&id).await;
    assert_eq!(job.unrecorded_claims, 1);
    let stored = bench.store_result(&job).await;
    bench
        .attempt(&job, AttemptOutcome::RetryAfter(Duration::ZERO))
        .await;

    // The retry is due at once: claimed again, its work kept, the round going on. When the
    // work finished is read back exactly: it is the callback's `timestamp` on every attempt.
    let job = bench.claim(&id).await;
    assert_eq!(job.work, Some(stored), "a retry does not redo the work");
    assert_eq!((job.callback_attempts, job.round_attempts), (1, 1));
    bench.attempt(&job, AttemptOutcome::GaveUp).await;

    let (redelivered, _) = bench
        .step(
            &id,
            Transition::Redelivered { work_done: true },
            bench.store.redeliver(&id),
        )
        .await;
    assert_eq!(redelivered.expect("redeliver"), Redelivery::Queued);
    let job = bench.claim(&id).await;
    assert_eq!(
        (job.callback_attempts, job.round_attempts),
        (2, 0),
        "a redelivery's round counts from the attempts made so far"
    );
    let row = bench.attempt(&job, AttemptOutcome::Delivered).await;
    assert_eq!(row.status, Status::CallbackSuccess);

    // A finished request only moves by redelivery of a failed callback.
    assert_eq!(
        bench.store.redeliver(&id).await.expect("redeliver"),
        Redelivery::WrongStatus(Status::CallbackSuccess)
    );
    assert!(!Transition::Redelivered { work_done: true }.applies_to(Status::CallbackSuccess));
    assert_eq!(bench.row(&id).await, Some(row));
    bench.store.close().await;
}

#[tokio::test]
async fn a_retry_is_due_after_its_delay_on_the_databases_clock() {
    let bench = Bench::open().await;
    let id = bench.queue(None).await;
    let job = bench.claim(&id).await;
    bench.store_result(&job).await;
    let delay = Duration::from_secs(3600);
    bench.attempt(&job, AttemptOutcome::RetryAfter(delay)).await;
    let claimed = bench
        .store
        .claim_due(OWNER, 10, LEASE, &rooms())
        .await
        .expect("claim");
    assert!(claimed.is_empty(), "a job due in an hour was claimed now");
    let due = bench
        .store
        .next_due_in(OWNER, &rooms())
        .await
        .expect("next due")
        .expect("the job is queued");
    let in_secs = due.as_secs();
    assert!((3590..=3600).contains(&in_secs), "due in {in_secs} s");
    bench.store.close().await;
}

#[tokio::test]
async fn a_job_given_up_or_handed_back_follows_the_rules() {
    let bench = Bench::open().await;
    let id = bench.queue(None).await;
    let job = bench.claim(&id).await;

    // Handed back untouched: the claim is not counted, and the job is due again at once.
    let (released, _) = bench
        .step(&id, Transition::Released, bench.store.release(OWNER))
        .await;
    assert_eq!(released.expect("release"), 1);
    let job_again = bench.claim(&id).await;
    assert_ne!(job_again.token, job.token, "each claim has its own token");
    assert_eq!(job_again.unrecorded_claims, 1);

    // The first claim's token no longer holds the job.
    bench
        .refused_without_claim(&id, async {
            bench
                .store
                .give_up(&id, &job.token, "stale claim")
                .await
                .expect("give up")
        })
        .await;
    let (given_up, row) = bench
        .step(
            &id,
            Transition::GivenUp,
            bench
                .store
                .give_up(&id, &job_again.token, "cannot be worked"),
        )
        .await;
    assert!(given_up.expect("give up"));
    assert_eq!(row.error.as_deref(), Some("cannot be worked"));
    bench.store.close().await;
}

#[tokio::test]
async fn cancels_and_retry_now_follow_the_rules() {
    let bench = Bench::open().await;
    // Queued, not claimed: cancelled, out of the queue, delivery ended.
    let waiting = bench.queue(None).await;
    let (answer, _) = bench
        .step(
            &waiting,
            Transition::Cancelled { in_flight: false },
            bench.store.cancel(&waiting),
        )
        .await;
    assert_eq!(
        answer.expect("cancel"),
        Cancellation::Cancelled {
            in_flight: false,
            by_this_call: true
        }
    );
    assert_eq!(
        bench.store.cancel(&waiting).await.expect("cancel"),
        Cancellation::Cancelled {
            in_flight: false,
            by_this_call: false
        },
        "a repeat answers as the first did, and writes nothing"
    );

    // Its work under way: the claim is ended, so its result is never stored.
    let working = bench.queue(None).await;
    let job = bench.claim(&working).await;
    let (answer, _) = bench
        .step(
            &working,
            Transition::Cancelled { in_flight: false },
            bench.store.cancel(&working),
        )
        .await;
    answer.expect("cancel");
    let result = FinishedWork::now(work_result(&working));
    bench
        .refused_without_claim(&working, async {
            bench
                .store
                .store_result(&working, &job.token, &result)
                .await
                .expect("store a result")
        })
        .await;

    // Its delivery may be under way: the claim is kept, the attempt lands in the audit, and
    // the request stays cancelled.
    let delivering = bench.queue(None).await;
    let job = bench.claim(&delivering).await;
    bench.store_result(&job).await;
    let (answer, _) = bench
        .step(
            &delivering,
            Transition::Cancelled { in_flight: true },
            bench.store.cancel(&delivering),
        )
        .await;
    assert!(matches!(
        answer.expect("cancel"),
        Cancellation::Cancelled {
            in_flight: true,
            ..
        }
    ));
    let attempt = delivery_attempt(1);
    let (recorded, row) = bench
        .step(
            &delivering,
            Transition::AttemptLanded,
            bench.store.record_attempt(
                &delivering,
                OWNER,
                &job.token,
                &attempt,
                AttemptOutcome::Delivered,
            ),
        )
        .await;
    assert_eq!(recorded.expect("record"), Recorded::Landed);
    assert_eq!(row.attempts, 1);

    // Retry now: a job in its backoff is due again, its attempts kept; a final one is not.
    let retrying = bench.queue(None).await;
    let job = bench.claim(&retrying).await;
    bench.store_result(&job).await;
    bench
        .attempt(&job, AttemptOutcome::RetryAfter(Duration::from_secs(3600)))
        .await;
    let (made_due, row) = bench
        .step(
            &retrying,
            Transition::MadeDue,
            bench.store.make_due(&retrying),
        )
        .await;
    assert_eq!(made_due.expect("retry now"), MadeDue::Due);
    assert_eq!(row.attempts, 1);
    let again = bench.claim(&retrying).await;
    assert_eq!(again.callback_attempts, 1, "the attempt count stays");
    assert_eq!(
        bench.store.make_due(&retrying).await.expect("retry now"),
        MadeDue::UnderWay
    );
    assert_eq!(
        bench.store.make_due(&waiting).await.expect("retry now"),
        MadeDue::WrongStatus(Status::Cancelled)
    );
    bench.store.close().await;
}

#[tokio::test]
async fn a_sync_request_is_recorded_as_the_rules_say() {
    let bench = Bench::open().await;

    // Fast: written once, finished.
    let fast = new_request(None);
    let result = work_result(&fast.id);
    let (finished, _) = bench
        .step(
            &fast.id,
            Transition::SyncFinished { succeeded: true },
            bench.store.sync_finished(&fast, Ok(&result)),
        )
        .await;
    finished.expect("record a sync request");

    // Slow, holding a key, then failing: the key is free again for the client's retry.
    let slow = new_request(Some("sync-key"));
    let (started, row) = bench
        .step(
            &slow.id,
            Transition::SyncStarted,
            bench.store.sync_started_with_key(slow.clone(), OWNER),
        )
        .await;
    assert_eq!(started.expect("start"), Submitted::Created);
    assert!(row.holds_key);
    let (finished, _) = bench
        .step(
            &slow.id,
            Transition::SyncFinished { succeeded: false },
            bench.store.sync_finished(&slow, Err("the work failed")),
        )
        .await;
    finished.expect("record a failure");
    assert_eq!(bench.store.key_holder("sync-key").await.expect("key"), None);
    bench.store.close().await;
}

#[tokio::test]
async fn a_sync_request_left_processing_by_a_dead_instance_fails_and_frees_its_key() {
    let bench = Bench::open().await;
    let abandoned = new_request(Some("abandoned-key"));
    bench
        .store
        .sync_started_with_key(abandoned.clone(), OWNER)
        .await
        .expect("start");
    // An instance that dies mid-request leaves it `processing`; SQLite fails such requests
    // when it opens the database again, PostgreSQL (whose other instances live on) once they
    // are older than any request could run.
    let before = bench.row(&abandoned.id).await;
    let bench = if bench.url.starts_with("sqlite:") {
        let Bench { store, url, _dir } = bench;
        store.close().await;
        drop(store);
        let store = Store::open(&url, 100, 4).await.expect("reopen");
        Bench { store, url, _dir }
    } else {
        let failed = bench
            .store
            .fail_stale_sync(Duration::ZERO)
            .await
            .expect("fail stale sync requests");
        assert_eq!(failed, 1);
        bench
    };
    let row = bench.row(&abandoned.id).await.expect("the request's row");
    assert_follows(Transition::SyncAbandoned, before.as_ref(), &row);
    assert_eq!(row.error.as_deref(), Some(ABANDONED_SYNC_ERROR));
    assert_eq!(
        bench.store.key_holder("abandoned-key").await.expect("key"),
        None
    );
    bench.store.close().await;
}

/// `OWNER` marking itself alive, as a running instance does, until stopped.
struct Marking {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Marking {
    fn start(store: &Store) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let store = store.clone();
            let stop = stop.clone();
            async move { store.keep_marked_alive(OWNER, stop).await }
        });
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("marks stop");
    }
}

/// On PostgreSQL, a sync request is failed as abandoned once its instance has been out of
/// sight for 30 s, but only by an instance whose own marks have succeeded for longer than
/// that: just after the database comes back (or the instance starts), every other
/// instance's mark is old too, and their requests are alive. (The rule itself is run by
/// `scale_out`'s killed instance, which takes the time it needs.)
#[tokio::test]
async fn an_instance_just_connected_fails_no_sync_request_by_its_instances_marks() {
    let bench = Bench::open().await;
    if bench.url.starts_with("sqlite:") {
        // One process holds a SQLite database: its requests are failed when it opens it.
        bench.store.close().await;
        return;
    }
    let marks = Marking::start(&bench.store);
    let a_minute_ago = Utc::now() - chrono::Duration::seconds(60);
    let orphan = NewRequest {
        created_at: a_minute_ago,
        ..new_request(Some("orphan-key"))
    };
    let started = bench
        .store
        .sync_started_with_key(orphan.clone(), "gone")
        .await;
    assert_eq!(started.expect("start"), Submitted::Created);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failed = bench
        .store
        .fail_stale_sync(Duration::from_secs(3600))
        .await
        .expect("fail stale sync requests");
    assert_eq!(failed, 0, "failed by marks this instance cannot yet trust");
    let row = bench.row(&orphan.id).await.expect("row");
    assert_eq!(row.status, Status::Processing);
    // Marking itself alive is not reading the controls: an instance that only marks (its
    // dispatcher drained at shutdown, its sync requests still under way) takes no share of
    // the destinations' rate limits.
    let read = bench
        .store
        .destination_controls("reader")
        .await
        .expect("read the controls");
    assert_eq!(read.instances, 1, "only the reader shares the rate limits");
    marks.stop().await;
    bench.store.close().await;
}

/// On PostgreSQL, once an instance has marked itself alive for long enough to trust the
/// others' marks, it fails the old sync request of an instance out of sight, and keeps the
/// one of a live instance however old it looks (an instance whose clock runs behind the
/// database's writes requests that look old) and a young one of the instance out of sight.
#[tokio::test]
async fn a_sync_request_is_failed_by_its_instances_marks_not_by_its_age() {
    let bench = Bench::open().await;
    if bench.url.starts_with("sqlite:") {
        // One process holds a SQLite database: its requests are failed when it opens it.
        bench.store.close().await;
        return;
    }
    let marks = Marking::start(&bench.store);
    let two_minutes_ago = Utc::now() - chrono::Duration::seconds(120);
    let old = |key: &str| NewRequest {
        created_at: two_minutes_ago,
        ..new_request(Some(key))
    };
    let (of_gone, of_live) = (old("gone-key"), old("live-key"));
    for (new, owner) in [(&of_gone, "gone"), (&of_live, OWNER)] {
        let started = bench.store.sync_started_with_key(new.clone(), owner).await;
        assert_eq!(started.expect("start"), Submitted::Created);
    }
    let before = bench.row(&of_gone.id).await;
    // This instance's marks are trusted after 35 s of them (30 s out of sight, and time for
    // every live instance to mark itself again after an outage).
    tokio::time::sleep(Duration::from_secs(37)).await;
    // Started just now by the instance out of sight (one starting up, not marked yet).
    let young = new_request(Some("young-key"));
    let started = bench
        .store
        .sync_started_with_key(young.clone(), "gone")
        .await;
    assert_eq!(started.expect("start"), Submitted::Created);
    let failed = bench
        .store
        .fail_stale_sync(Duration::from_secs(3600))
        .await
        .expect("fail stale sync requests");
    assert_eq!(failed, 1, "the old request of the instance out of sight");
    let row = bench.row(&of_gone.id).await.expect("the request's row");
    assert_follows(Transition::SyncAbandoned, before.as_ref(), &row);
    assert_eq!(bench.store.key_holder("gone-key").await.expect("key"), None);
    for (kept, why) in [(&of_live, "a live instance's"), (&young, "a young")] {
        let row = bench.row(&kept.id).await.expect("row");
        assert_eq!(row.status, Status::Processing, "{why} request");
    }
    marks.stop().await;
    bench.store.close().await;
}

/// A worker whose lease ran out (another claim took the job over) finishes at the same
/// moment as the new claimant, so both writes reach the store together (on PostgreSQL, one
/// group-committed statement). The stale claim's writes must be refused and write nothing,
/// whatever they share a batch with: a stale `store_result` answered `true` lets its worker
/// deliver the job alongside the new claimant, and a stale attempt must not enter the audit.
#[tokio::test]
async fn a_stale_claims_writes_are_refused_even_when_they_share_a_batch_with_the_claims() {
    let bench = Bench::open().await;
    let id = bench.queue(None).await;
    let short = Duration::from_millis(200);
    let stale = bench
        .store
        .claim_due("stale-worker", 10, short, &rooms())
        .await
        .expect("claim")
        .remove(0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let current = bench.claim(&id).await;
    assert_ne!(stale.token, current.token);

    let result = FinishedWork::now(work_result(&id));
    let (stale_stored, current_stored) = tokio::join!(
        bench.store.store_result(&id, &stale.token, &result),
        bench.store.store_result(&id, &current.token, &result),
    );
    assert!(current_stored.expect("store the result"));
    assert!(
        !stale_stored.expect("store the result"),
        "a result stored under a claim that no longer holds the job was acknowledged"
    );

    let mut stale_attempt = delivery_attempt(1);
    stale_attempt.error = Some("stale worker's attempt".into());
    let mut current_attempt = delivery_attempt(1);
    current_attempt.status_code = Some(200);
    current_attempt.error = None;
    let (stale_recorded, current_recorded) = tokio::join!(
        bench.store.record_attempt(
            &id,
            "stale-worker",
            &stale.token,
            &stale_attempt,
            AttemptOutcome::GaveUp
        ),
        bench.store.record_attempt(
            &id,
            OWNER,
            &current.token,
            &current_attempt,
            AttemptOutcome::Delivered
        ),
    );
    assert_eq!(
        current_recorded.expect("record an attempt"),
        Recorded::MovedOn
    );
    assert_eq!(
        stale_recorded.expect("record an attempt"),
        Recorded::ClaimLost,
        "an attempt under a claim that no longer holds the job was acknowledged"
    );
    let record = bench.store.get(&id).await.expect("get").expect("stored");
    assert_eq!(record.status, Status::CallbackSuccess);
    let attempts = record.attempts.expect("attempts");
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(
        attempts[0].instance.as_deref(),
        Some(OWNER),
        "the audit holds the stale claim's attempt: {attempts:?}"
    );
    assert_eq!(attempts[0].status_code, Some(200));
    bench.store.close().await;
}

/// A redelivery takes a place in the queue as a submission does, and a submission that
/// follows it on the same instance counts it: with a bound of 2, one queued request and one
/// redelivered, a third is refused and the queue never holds more than the bound.
#[tokio::test]
async fn a_redelivery_counts_against_the_queue_bound_for_the_submissions_after_it() {
    let bench = Bench::with_queue_bound(2).await;
    let failed = bench.queue(None).await;
    let job = bench.claim(&failed).await;
    bench.store_result(&job).await;
    bench.attempt(&job, AttemptOutcome::GaveUp).await;

    // Past any count of the queue the store may rely on, so the next submission counts it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let first = bench.store.submit_async(async_request(None)).await;
    assert_eq!(first.expect("room for one"), Submitted::Created);
    assert_eq!(
        bench.store.redeliver(&failed).await.expect("redeliver"),
        Redelivery::Queued
    );
    let over = bench.store.submit_async(async_request(None)).await;
    let queued = bench.store.queue_size().await.expect("queue size");
    assert!(
        queued <= 2,
        "the queue holds {queued} requests with a bound of 2 (the last submission: {over:?})"
    );
    assert!(
        matches!(over, Err(syncasync::store::StoreError::QueueFull)),
        "{over:?}"
    );
    bench.store.close().await;
}

/// A job given up before its work was done (claimed again and again while `processing`)
/// and then redelivered has no result: it waits as `pending`, as a new job does, and the
/// claim of its new round does the work and stores it; it is then delivered as any other.
#[tokio::test]
async fn a_job_given_up_before_its_work_and_redelivered_has_its_work_done_by_the_rules() {
    let bench = Bench::open().await;
    let id = bench.queue(None).await;
    let job = bench.claim(&id).await;
    let (given_up, row) = bench
        .step(
            &id,
            Transition::GivenUp,
            bench.store.give_up(&id, &job.token, "cannot be worked"),
        )
        .await;
    assert!(given_up.expect("give up"));
    assert_eq!(row.status, Status::CallbackFailed);
    let (redelivered, row) = bench
        .step(
            &id,
            Transition::Redelivered { work_done: false },
            bench.store.redeliver(&id),
        )
        .await;
    assert_eq!(redelivered.expect("redeliver"), Redelivery::Queued);
    assert_eq!(row.status, Status::Pending);
    let job = bench.claim(&id).await;
    assert!(job.work.is_none(), "the work was never done");
    assert!(job.data.is_some(), "its input is still kept");
    bench.store_result(&job).await;
    let row = bench.attempt(&job, AttemptOutcome::Delivered).await;
    assert_eq!(row.status, Status::CallbackSuccess);
    bench.store.close().await;
}

/// A sync request declared abandoned (PostgreSQL fails a `processing` sync request by its
/// age, which a live one reaches when `APP_WORK_DURATION_SECONDS` passes the hour, or when
/// its instance's clock runs an hour behind the database's) is finished: when its work then
/// ends, the rules say `SyncFinished` no longer applies, and the row must stay as it is
/// (its key was freed, and may already be another request's).
#[tokio::test]
async fn a_sync_request_failed_as_abandoned_is_not_rewritten_when_its_work_ends() {
    let bench = Bench::open().await;
    let slow = new_request(Some("slow-key"));
    bench
        .store
        .sync_started_with_key(slow.clone(), OWNER)
        .await
        .expect("start");
    let failed = bench
        .store
        .fail_stale_sync(Duration::ZERO)
        .await
        .expect("fail stale sync requests");
    let before = bench.row(&slow.id).await.expect("the row");
    if failed == 0 {
        // SQLite fails them only when it opens the database: nothing to check here.
        assert_eq!(before.status, Status::Processing);
        bench.store.close().await;
        return;
    }
    assert_eq!(before.status, Status::Failed);
    let transition = Transition::SyncFinished { succeeded: true };
    assert_eq!(transition.status_after(Some(Status::Failed)), None);
    let result = work_result(&slow.id);
    bench
        .store
        .sync_finished(&slow, Ok(&result))
        .await
        .expect("record the end");
    assert_eq!(
        bench.row(&slow.id).await,
        Some(before),
        "a finished (failed) sync request was rewritten"
    );
    bench.store.close().await;
}
